/*
 * timer.c — the binary min-heap behind timer.h.
 */
#include "core/timer.h"

#include <errno.h>
#include <stdlib.h>

int timer_heap_init(struct timer_heap *h, uint32_t cap)
{
	h->slots = calloc(cap, sizeof(*h->slots));
	h->len = 0;
	h->cap = cap;
	return h->slots ? 0 : -ENOMEM;
}

int timer_heap_grow(struct timer_heap *h)
{
	uint32_t cap = h->cap ? h->cap * 2 : 256;
	struct timer **slots = realloc(h->slots, cap * sizeof(*slots));
	if (!slots)
		return -ENOMEM;
	h->slots = slots;
	h->cap = cap;
	return 0;
}

void timer_heap_free(struct timer_heap *h)
{
	free(h->slots);
	h->slots = NULL;
	h->len = h->cap = 0;
}

static void place(struct timer_heap *h, uint32_t i, struct timer *t)
{
	h->slots[i] = t;
	t->heap_index = i + 1;
}

static void sift_up(struct timer_heap *h, uint32_t i)
{
	struct timer *t = h->slots[i];
	while (i > 0) {
		uint32_t parent = (i - 1) / 2;
		if (h->slots[parent]->deadline <= t->deadline)
			break;
		place(h, i, h->slots[parent]);
		i = parent;
	}
	place(h, i, t);
}

static void sift_down(struct timer_heap *h, uint32_t i)
{
	struct timer *t = h->slots[i];
	for (;;) {
		uint32_t child = 2 * i + 1;
		if (child >= h->len)
			break;
		if (child + 1 < h->len &&
		    h->slots[child + 1]->deadline < h->slots[child]->deadline)
			child++;
		if (t->deadline <= h->slots[child]->deadline)
			break;
		place(h, i, h->slots[child]);
		i = child;
	}
	place(h, i, t);
}

int timer_arm(struct timer_heap *h, struct timer *t, uint64_t deadline)
{
	if (t->heap_index) {
		uint64_t old = t->deadline;
		t->deadline = deadline;
		if (deadline < old)
			sift_up(h, t->heap_index - 1);
		else if (deadline > old)
			sift_down(h, t->heap_index - 1);
		return 0;
	}
	if (h->len == h->cap)
		return -ENOSPC;
	t->deadline = deadline;
	h->slots[h->len] = t;
	sift_up(h, h->len++);
	return 0;
}

void timer_cancel(struct timer_heap *h, struct timer *t)
{
	if (!t->heap_index)
		return;
	uint32_t i = t->heap_index - 1;
	t->heap_index = 0;
	struct timer *last = h->slots[--h->len];
	if (i == h->len)
		return;
	place(h, i, last);
	if (i > 0 && h->slots[(i - 1) / 2]->deadline > last->deadline)
		sift_up(h, i);
	else
		sift_down(h, i);
}

struct timer *timer_pop_due(struct timer_heap *h, uint64_t now)
{
	if (!h->len || h->slots[0]->deadline > now)
		return NULL;
	struct timer *t = h->slots[0];
	timer_cancel(h, t);
	return t;
}

uint64_t timer_next(const struct timer_heap *h)
{
	return h->len ? h->slots[0]->deadline : UINT64_MAX;
}
