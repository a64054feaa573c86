/*
 * decisions.c — per-shard rings of decision records (decisions.h).
 *
 * Writer (the owning shard only): bump the slot's sequence to odd, copy
 * the record, bump it to even. Reader: read the sequence, copy, read it
 * again; an odd or changed sequence means the writer was there, so retry
 * (a few times, then report the record as gone: it is being overwritten).
 */
#include "core/decisions.h"

#include <stdlib.h>
#include <string.h>

#include "core/defs.h"

struct decision_slot {
	_Atomic uint32_t seq;
	struct decision_rec rec;
};

struct decision_log {
	uint32_t n_shards;
	struct decision_slot *slots;    /* n_shards * DECISIONS_PER_SHARD */
};

struct decision_log *decisions_new(uint32_t n_shards)
{
	struct decision_log *l = calloc(1, sizeof(*l));
	if (!l)
		return NULL;
	l->n_shards = n_shards;
	l->slots = calloc((size_t)n_shards * DECISIONS_PER_SHARD, sizeof(*l->slots));
	if (!l->slots) {
		free(l);
		return NULL;
	}
	return l;
}

void decisions_free(struct decision_log *l)
{
	if (l)
		free(l->slots);
	free(l);
}

static struct decision_slot *slot_of(struct decision_log *l, uint64_t id)
{
	uint64_t shard = id >> DECISION_ID_SHARD_SHIFT;
	if (shard >= l->n_shards)
		return NULL;
	uint64_t seq = id & ((1ull << DECISION_ID_SHARD_SHIFT) - 1);
	return &l->slots[shard * DECISIONS_PER_SHARD + seq % DECISIONS_PER_SHARD];
}

void decisions_put(struct decision_log *l, uint32_t shard, const struct decision_rec *rec)
{
	struct decision_slot *s = slot_of(l, rec->id);
	BUG_ON(!s || rec->id >> DECISION_ID_SHARD_SHIFT != shard);
	uint32_t seq = atomic_load_explicit(&s->seq, memory_order_relaxed);
	atomic_store_explicit(&s->seq, seq + 1, memory_order_relaxed);
	atomic_thread_fence(memory_order_release);
	memcpy(&s->rec, rec, sizeof(*rec));
	atomic_store_explicit(&s->seq, seq + 2, memory_order_release);
}

bool decisions_get(struct decision_log *l, uint64_t id, struct decision_rec *out)
{
	struct decision_slot *s = slot_of(l, id);
	if (!s)
		return false;
	for (int tries = 0; tries < 8; tries++) {
		uint32_t before = atomic_load_explicit(&s->seq, memory_order_acquire);
		if (before & 1)
			continue;
		memcpy(out, &s->rec, sizeof(*out));
		atomic_thread_fence(memory_order_acquire);
		if (atomic_load_explicit(&s->seq, memory_order_relaxed) == before)
			return before != 0 && out->id == id;
	}
	return false;
}
