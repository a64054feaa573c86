/*
 * budget.c — the sharded reservation engine (budget.h, docs/budget.md).
 *
 * Fast path: a shard reserves from its own lease and commits back into it
 * with relaxed loads and stores on a cache line no other shard writes.
 * Slow path: when its lease is short, it takes a new one from the global
 * pool with one CAS. Lease size is a fraction of what the pool has left, so
 * leases shrink as the scope nears its limit until they equal the amount
 * asked for: at the edge every reservation is an exact CAS on the global
 * counter, and the limit can be reached to the micro-dollar, never passed.
 */
#include "core/budget.h"

#include <stdlib.h>
#include <string.h>

/* A new lease is remaining / (LEASE_DIVISOR * shards), at least the need. */
#define LEASE_DIVISOR 4

static inline int64_t ld(_Atomic int64_t *x)
{
	return atomic_load_explicit(x, memory_order_relaxed);
}

static inline void st(_Atomic int64_t *x, int64_t v)
{
	atomic_store_explicit(x, v, memory_order_relaxed);
}

struct budget_scope *budget_scope_new(int64_t limit, uint32_t n_shards)
{
	if (n_shards == 0 || n_shards > BUDGET_MAX_SHARDS)
		return NULL;
	void *mem = aligned_alloc(CACHELINE, (BUDGET_SCOPE_SIZE(n_shards) + CACHELINE - 1) &
				  ~(size_t)(CACHELINE - 1));
	return mem ? budget_scope_init(mem, limit, n_shards) : NULL;
}

struct budget_scope *budget_scope_init(void *mem, int64_t limit, uint32_t n_shards)
{
	struct budget_scope *s = mem;
	memset(s, 0, BUDGET_SCOPE_SIZE(n_shards));
	st(&s->global.limit, limit);
	s->n_shards = n_shards;
	return s;
}

/* The slot of `shard` in s (a one-slot scope belongs to one shard). */
static inline struct budget_local *slot(struct budget_scope *s, uint32_t shard)
{
	return &s->local[s->n_shards == 1 ? 0 : shard];
}

void budget_scope_free(struct budget_scope *s)
{
	free(s);
}

void budget_set_limit(struct budget_scope *s, int64_t limit)
{
	st(&s->global.limit, limit);
}

/* Takes at least `need` from the global pool into shard's lease. */
static bool take_lease(struct budget_scope *s, struct budget_local *l, int64_t need)
{
	int64_t used = atomic_load_explicit(&s->global.used, memory_order_relaxed);
	for (;;) {
		int64_t remaining = ld(&s->global.limit) - used;
		if (remaining < need)
			return false;
		int64_t chunk = remaining / (LEASE_DIVISOR * (int64_t)s->n_shards);
		if (chunk < need)
			chunk = need;
		if (atomic_compare_exchange_weak_explicit(&s->global.used, &used, used + chunk,
							  memory_order_acq_rel,
							  memory_order_relaxed)) {
			st(&l->lease, ld(&l->lease) + chunk);
			return true;
		}
	}
}

static bool reserve_one(struct budget_scope *s, uint32_t shard, int64_t amount)
{
	struct budget_local *l = slot(s, shard);
	/* A lease was taken under the limit of its day. Once more has left the
	 * pool than the limit allows (a reload lowered it, or a provider
	 * billed past its reservation), leases are no longer covered: give
	 * ours back and ask the pool, which then refuses. Two relaxed loads of
	 * the global line, which only lease traffic writes. */
	if (ld(&s->global.limit) < atomic_load_explicit(&s->global.used, memory_order_relaxed))
		budget_return_lease(s, shard);
	int64_t lease = ld(&l->lease);
	if (lease < amount && !take_lease(s, l, amount - lease)) {
		/* At the edge: what we hold cannot serve this call; it may
		 * complete another shard's. */
		budget_return_lease(s, shard);
		return false;
	}
	st(&l->lease, ld(&l->lease) - amount);
	st(&l->reserved, ld(&l->reserved) + amount);
	return true;
}

/* At the edge, an idle lease on one shard is budget another shard cannot
 * use: give it back as soon as the pool holds less than we sit on. */
static void return_if_edge(struct budget_scope *s, struct budget_local *l)
{
	int64_t lease = ld(&l->lease);
	int64_t remaining = ld(&s->global.limit) -
		atomic_load_explicit(&s->global.used, memory_order_relaxed);
	if (lease > 0 && remaining < lease) {
		st(&l->lease, 0);
		atomic_fetch_sub_explicit(&s->global.used, lease, memory_order_acq_rel);
	}
}

int budget_reserve(struct budget_scope *const *scopes, int n, uint32_t shard,
		   int64_t amount)
{
	for (int i = 0; i < n; i++) {
		if (reserve_one(scopes[i], shard, amount))
			continue;
		budget_release(scopes, i, shard, amount);
		return i;
	}
	return -1;
}

void budget_commit(struct budget_scope *const *scopes, int n, uint32_t shard,
		   int64_t reserved, int64_t actual)
{
	for (int i = 0; i < n; i++) {
		struct budget_scope *s = scopes[i];
		struct budget_local *l = slot(s, shard);
		st(&l->reserved, ld(&l->reserved) - reserved);
		st(&l->committed, ld(&l->committed) + actual);
		int64_t refund = reserved - actual;
		if (refund >= 0) {
			st(&l->lease, ld(&l->lease) + refund);
		} else {
			/* The provider billed more than we reserved: it is spent, so
			 * book it, from the lease first, then the pool. */
			int64_t over = -refund, lease = ld(&l->lease);
			int64_t from_lease = lease < over ? lease : over;
			st(&l->lease, lease - from_lease);
			if (over > from_lease)
				atomic_fetch_add_explicit(&s->global.used, over - from_lease,
							  memory_order_acq_rel);
		}
		return_if_edge(s, l);
	}
}

void budget_release(struct budget_scope *const *scopes, int n, uint32_t shard,
		    int64_t reserved)
{
	for (int i = 0; i < n; i++) {
		struct budget_local *l = slot(scopes[i], shard);
		st(&l->reserved, ld(&l->reserved) - reserved);
		st(&l->lease, ld(&l->lease) + reserved);
		return_if_edge(scopes[i], l);
	}
}

void budget_return_lease(struct budget_scope *s, uint32_t shard)
{
	struct budget_local *l = slot(s, shard);
	int64_t lease = ld(&l->lease);
	if (lease) {
		st(&l->lease, 0);
		atomic_fetch_sub_explicit(&s->global.used, lease, memory_order_acq_rel);
	}
}

void budget_totals(const struct budget_scope *s, struct budget_totals *out)
{
	struct budget_scope *m = (struct budget_scope *)s;
	*out = (struct budget_totals){ .limit = ld(&m->global.limit) };
	for (uint32_t i = 0; i < s->n_shards; i++) {
		out->committed += ld(&m->local[i].committed);
		out->reserved += ld(&m->local[i].reserved);
		out->leased += ld(&m->local[i].lease);
	}
	out->used = atomic_load_explicit(&m->global.used, memory_order_relaxed);
}
