/*
 * idempotency.c — the shared idempotency table (idempotency.h).
 *
 * A slot is { tag, state, expires }: tag is the entry's hash, state is
 * decision << 1 | done. A slot is free when its expiry has passed (0:
 * never used). Claiming CASes the expiry of a free slot to CLAIMING, fills
 * tag and state, then publishes the real expiry (release); readers load
 * the expiry first (acquire), so a live expiry means tag and state are
 * whole. Claims for one key are serialized on its home slot (see
 * idem_claim), so one key never holds two slots.
 */
#include "core/idempotency.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "core/defs.h"

#define IDEM_PROBES 16
#define CLAIMING (-1)      /* expires_s while a claimer fills the slot */

struct idem_slot {
	_Atomic uint32_t busy;      /* as a home slot: a claim is looking */
	_Atomic uint64_t tag;
	_Atomic uint64_t state;
	_Atomic int64_t expires_s;
};

struct idem_table {
	uint32_t mask;
	struct idem_slot slots[];
};

struct idem_table *idem_new(uint32_t capacity)
{
	uint32_t n = 1024;
	while (n < capacity)
		n <<= 1;
	struct idem_table *t = calloc(1, sizeof(*t) + sizeof(t->slots[0]) * n);
	if (t)
		t->mask = n - 1;
	return t;
}

void idem_free(struct idem_table *t)
{
	free(t);
}

bool idem_valid_key(const char *key, size_t len)
{
	if (len == 0 || len > IDEM_KEY_MAX)
		return false;
	for (size_t i = 0; i < len; i++)
		if (key[i] < 0x21 || key[i] > 0x7e)
			return false;
	return true;
}

uint64_t idem_hash(const char *key_id, const char *key, size_t len)
{
	uint64_t h = XXH3_64bits_withSeed(key, len, XXH3_64bits(key_id, strlen(key_id)));
	return h ? h : 1;
}

/* The live entry for hash among its probes, or -1. */
static int find_live(struct idem_table *t, uint64_t hash, int64_t now_s)
{
	for (uint32_t i = 0; i < IDEM_PROBES; i++) {
		uint32_t at = (uint32_t)(hash + i) & t->mask;
		struct idem_slot *s = &t->slots[at];
		int64_t expires = atomic_load_explicit(&s->expires_s, memory_order_acquire);
		if (expires > now_s && atomic_load_explicit(&s->tag, memory_order_relaxed) == hash)
			return (int)at;
	}
	return -1;
}

/* Claims the first free slot among hash's probes, or -1. */
static int claim_free(struct idem_table *t, uint64_t hash, uint64_t decision, int64_t now_s)
{
	for (uint32_t i = 0; i < IDEM_PROBES; i++) {
		uint32_t at = (uint32_t)(hash + i) & t->mask;
		struct idem_slot *s = &t->slots[at];
		int64_t expires = atomic_load_explicit(&s->expires_s, memory_order_acquire);
		if (expires == CLAIMING || expires > now_s)
			continue;
		/* a claimer of another home may want it too: one CAS wins */
		if (!atomic_compare_exchange_strong_explicit(&s->expires_s, &expires, CLAIMING,
							     memory_order_acq_rel,
							     memory_order_acquire))
			continue;
		atomic_store_explicit(&s->tag, hash, memory_order_relaxed);
		atomic_store_explicit(&s->state, decision << 1, memory_order_relaxed);
		atomic_store_explicit(&s->expires_s, now_s + IDEM_TTL_S, memory_order_release);
		return (int)at;
	}
	return -1;
}

enum idem_result idem_claim(struct idem_table *t, uint64_t hash, uint64_t decision,
			    int64_t now_s, uint32_t *slot, uint64_t *first)
{
	/* Calls with the same key share a home slot, whose flag makes "look,
	 * then claim" one step for them: two can never both find nothing and
	 * claim two slots. Held for a few loads and stores; only calls that
	 * carry an idempotency key ever take it. */
	_Atomic uint32_t *home = &t->slots[hash & t->mask].busy;
	while (atomic_exchange_explicit(home, 1, memory_order_acquire))
		cpu_relax();
	enum idem_result res = IDEM_FULL;
	int at = find_live(t, hash, now_s);
	if (at >= 0) {
		uint64_t state = atomic_load_explicit(&t->slots[at].state, memory_order_acquire);
		*first = state >> 1;
		res = state & 1 ? IDEM_DONE : IDEM_IN_FLIGHT;
	} else if ((at = claim_free(t, hash, decision, now_s)) >= 0) {
		res = IDEM_NEW;
	}
	atomic_store_explicit(home, 0, memory_order_release);
	if (at >= 0)
		*slot = (uint32_t)at;
	return res;
}

void idem_finish(struct idem_table *t, uint32_t slot, uint64_t decision)
{
	uint64_t want = decision << 1;
	/* a CAS, so a slot reused after expiry is never marked by us */
	atomic_compare_exchange_strong_explicit(&t->slots[slot & t->mask].state, &want,
						want | 1, memory_order_acq_rel,
						memory_order_relaxed);
}

bool idem_retake(struct idem_table *t, uint32_t slot, uint64_t first, uint64_t decision,
		 int64_t now_s)
{
	struct idem_slot *s = &t->slots[slot & t->mask];
	uint64_t want = first << 1 | 1;
	if (!atomic_compare_exchange_strong_explicit(&s->state, &want, decision << 1,
						     memory_order_acq_rel,
						     memory_order_relaxed))
		return false;
	atomic_store_explicit(&s->expires_s, now_s + IDEM_TTL_S, memory_order_release);
	return true;
}
