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
 *
 * Modes are slack past the limit: hard_gate has none, soft_gate its margin,
 * advisory and actuals-only scopes are never refused here (the caller warns
 * or gates on committed spend). Leases are only ever held under the limit
 * itself, so a reservation served from a lease is within it; one that needs
 * the slack is an exact CAS and is reported as "over".
 *
 * Windows: each shard slot remembers which window its `committed` is for.
 * The first touch in a new window (or the shard's periodic tidy) moves the
 * slot to it and gives the old window's spend back to the pool: no pause,
 * no coordination, and until every shard has rolled the pool only looks
 * fuller than it is, which errs towards refusing.
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
	s->window = WINDOW_TOTAL;
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

void budget_set_limit(struct budget_scope *s, int64_t limit, int64_t slack)
{
	st(&s->global.limit, limit);
	st(&s->global.slack, slack);
}

void budget_set_window(struct budget_scope *s, uint8_t window)
{
	s->window = window < WINDOW_KINDS ? window : WINDOW_TOTAL;
}

/* Months since 1970-01 of a day count (proleptic Gregorian, civil calendar
 * from days: eras of 400 years, years starting in March). */
static int64_t month_of_day(int64_t z)
{
	z += 719468;
	int64_t era = (z >= 0 ? z : z - 146096) / 146097;
	int64_t doe = z - era * 146097;
	int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
	int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
	int64_t mp = (5 * doy + 2) / 153;
	int64_t m = mp < 10 ? mp + 3 : mp - 9;
	int64_t y = yoe + era * 400 + (m <= 2);
	return (y - 1970) * 12 + (m - 1);
}

void budget_clock_set(struct budget_clock *c, int64_t now_s)
{
	if (now_s < 0)
		now_s = 0;
	int64_t day = now_s / 86400;
	c->now_s = now_s;
	c->epoch[WINDOW_RUN] = 0;
	c->epoch[WINDOW_HOUR] = now_s / 3600;
	c->epoch[WINDOW_DAY] = day;
	c->epoch[WINDOW_WEEK] = (day + 3) / 7;      /* 1970-01-01 was a Thursday */
	c->epoch[WINDOW_MONTH] = month_of_day(day);
	c->epoch[WINDOW_TOTAL] = 0;
}

/* Moves shard's slot into the window of clk if it is still in an earlier
 * one: its spend there no longer counts, so it leaves the pool. A clock
 * that steps back never reopens a window. */
static inline void roll(struct budget_scope *s, struct budget_local *l,
			const struct budget_clock *clk)
{
	int64_t epoch = clk->epoch[s->window];
	if (likely(ld(&l->epoch) >= epoch))
		return;
	int64_t spent = ld(&l->committed);
	st(&l->committed, 0);
	st(&l->epoch, epoch);
	if (spent)
		atomic_fetch_sub_explicit(&s->global.used, spent, memory_order_acq_rel);
}

void budget_restore(struct budget_scope *s, int64_t amount, const struct budget_clock *clk)
{
	struct budget_local *l = &s->local[0];
	roll(s, l, clk);
	st(&l->committed, ld(&l->committed) + amount);
	atomic_fetch_add_explicit(&s->global.used, amount, memory_order_relaxed);
}

/* Whether `need` more fits when `room` is left under the limit. */
static inline bool fits(int64_t room, int64_t need, int64_t slack)
{
	return need <= room || slack == BUDGET_UNBOUNDED || need - room <= slack;
}

/* Takes at least `need` from the global pool into shard's lease. Under the
 * limit the lease is a share of what is left; past it (the slack) exactly
 * `need`, and *over says so. */
static bool take_lease(struct budget_scope *s, struct budget_local *l, int64_t need, bool *over)
{
	int64_t used = atomic_load_explicit(&s->global.used, memory_order_relaxed);
	int64_t slack = ld(&s->global.slack);
	for (;;) {
		int64_t room = ld(&s->global.limit) - used;
		if (!fits(room, need, slack))
			return false;
		int64_t chunk = need;
		if (room >= need && room / (LEASE_DIVISOR * (int64_t)s->n_shards) > need)
			chunk = room / (LEASE_DIVISOR * (int64_t)s->n_shards);
		if (atomic_compare_exchange_weak_explicit(&s->global.used, &used, used + chunk,
							  memory_order_acq_rel,
							  memory_order_relaxed)) {
			st(&l->lease, ld(&l->lease) + chunk);
			*over = room < need;
			return true;
		}
	}
}

static bool reserve_one(struct budget_scope *s, uint32_t shard, int64_t amount,
			const struct budget_clock *clk, bool *over)
{
	struct budget_local *l = slot(s, shard);
	roll(s, l, clk);
	/* A lease was taken under the limit of its day. Once more has left the
	 * pool than the limit allows (a reload lowered it, a provider billed
	 * past its reservation, a soft or advisory scope went over), leases
	 * are no longer covered: give ours back and ask the pool. Two relaxed
	 * loads of the global line, which only lease traffic writes. */
	if (ld(&s->global.limit) < atomic_load_explicit(&s->global.used, memory_order_relaxed))
		budget_return_lease(s, shard);
	int64_t lease = ld(&l->lease);
	*over = false;
	if (lease < amount && !take_lease(s, l, amount - lease, over)) {
		/* At the edge: what we hold cannot serve this call; it may
		 * complete another shard's. */
		budget_return_lease(s, shard);
		return false;
	}
	st(&l->lease, ld(&l->lease) - amount);
	st(&l->reserved, ld(&l->reserved) + amount);
	return true;
}

/* Near the limit, an idle lease on one shard is budget another shard cannot
 * use: give it back as soon as the pool holds less than we sit on. */
static void return_if_edge(struct budget_scope *s, struct budget_local *l)
{
	int64_t lease = ld(&l->lease);
	int64_t room = ld(&s->global.limit) -
		atomic_load_explicit(&s->global.used, memory_order_relaxed);
	if (lease > 0 && room < lease) {
		st(&l->lease, 0);
		atomic_fetch_sub_explicit(&s->global.used, lease, memory_order_acq_rel);
	}
}

int budget_reserve(struct budget_scope *const *scopes, int n, uint32_t shard,
		   int64_t amount, const struct budget_clock *clk, uint32_t *over)
{
	*over = 0;
	for (int i = 0; i < n; i++) {
		bool past;
		if (reserve_one(scopes[i], shard, amount, clk, &past)) {
			*over |= (uint32_t)past << i;
			continue;
		}
		budget_release(scopes, i, shard, amount, clk);
		*over = 0;
		return i;
	}
	return -1;
}

void budget_commit(struct budget_scope *const *scopes, int n, uint32_t shard,
		   int64_t reserved, int64_t actual, const struct budget_clock *clk)
{
	for (int i = 0; i < n; i++) {
		struct budget_scope *s = scopes[i];
		struct budget_local *l = slot(s, shard);
		roll(s, l, clk);
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
		    int64_t reserved, const struct budget_clock *clk)
{
	for (int i = 0; i < n; i++) {
		struct budget_local *l = slot(scopes[i], shard);
		roll(scopes[i], l, clk);
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

void budget_tidy(struct budget_scope *s, uint32_t shard, const struct budget_clock *clk)
{
	struct budget_local *l = slot(s, shard);
	roll(s, l, clk);
	/* Whatever this shard sits on goes back once a second: a busy shard
	 * takes a new lease with one CAS, and a call on another shard that
	 * needs the last of the budget waits at most that second for it. */
	budget_return_lease(s, shard);
}

void budget_totals(const struct budget_scope *s, const struct budget_clock *clk,
		   struct budget_totals *out)
{
	struct budget_scope *m = (struct budget_scope *)s;
	int64_t epoch = clk->epoch[s->window];
	*out = (struct budget_totals){ .limit = ld(&m->global.limit) };
	for (uint32_t i = 0; i < s->n_shards; i++) {
		if (ld(&m->local[i].epoch) >= epoch)
			out->committed += ld(&m->local[i].committed);
		out->reserved += ld(&m->local[i].reserved);
		out->leased += ld(&m->local[i].lease);
	}
	out->used = atomic_load_explicit(&m->global.used, memory_order_relaxed);
}
