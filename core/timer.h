/*
 * timer.h — per-shard deadlines in a binary min-heap.
 *
 * Every connection embeds one struct timer; arming, moving and cancelling
 * are O(log n) with no allocation (tollgate sizes the heap at shard start to
 * the connection limit; mockllm grows it). Deadlines are in the owner's
 * unit: tollgate uses milliseconds, mockllm nanoseconds. The owner's loop
 * sleeps until the earliest deadline and then pops everything that is due.
 */
#ifndef TOLLGATE_TIMER_H
#define TOLLGATE_TIMER_H

#include <stdbool.h>
#include <stdint.h>

struct timer {
	uint64_t deadline;      /* CLOCK_MONOTONIC, in the owner's unit */
	uint32_t heap_index;    /* position + 1 in the heap; 0: not armed */
	uint8_t kind;           /* owner's tag: which timeout this is */
};

struct timer_heap {
	struct timer **slots;
	uint32_t len, cap;
};

int timer_heap_init(struct timer_heap *h, uint32_t cap);   /* 0 or -ENOMEM */
void timer_heap_free(struct timer_heap *h);

/* Doubles the capacity. 0 or -ENOMEM. */
int timer_heap_grow(struct timer_heap *h);
/* Arms or moves t to fire at deadline. Returns 0, or -ENOSPC when full. */
int timer_arm(struct timer_heap *h, struct timer *t, uint64_t deadline);
void timer_cancel(struct timer_heap *h, struct timer *t);
static inline bool timer_armed(const struct timer *t) { return t->heap_index != 0; }

/* Removes and returns the earliest timer due at `now`, or NULL. */
struct timer *timer_pop_due(struct timer_heap *h, uint64_t now);
/* Earliest deadline, or UINT64_MAX when empty. */
uint64_t timer_next(const struct timer_heap *h);

#endif
