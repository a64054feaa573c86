/*
 * grants.c — the grant table and each grant's life (grants.h).
 */
#include "core/grants.h"

#include <stdlib.h>
#include <string.h>

#define SLOTS (2 * GRANTS_MAX)         /* at most half full: short probes */
#define TOMBSTONE ((struct grant *)1)  /* a closed grant's slot */

struct grant_table {
	uint32_t n_shards;
	_Atomic uint32_t live;
	_Atomic uint32_t max_probe;        /* longest distance from home of any insert */
	_Atomic(struct grant *) retired;   /* closed, to be freed after a quiesce */
	struct grant *owned[BUDGET_MAX_SHARDS];   /* each owner's list (owner only) */
	_Atomic(struct grant *) slots[SLOTS];
};

struct grant_table *grants_new(uint32_t n_shards)
{
	struct grant_table *t = calloc(1, sizeof(*t));
	if (t)
		t->n_shards = n_shards;
	return t;
}

static void grant_free(struct grant *g)
{
	budget_scope_free(g->scope);
	free(g->use);
	free(g);
}

void grants_free(struct grant_table *t)
{
	if (!t)
		return;
	for (uint32_t i = 0; i < SLOTS; i++) {
		struct grant *g = atomic_load(&t->slots[i]);
		if (g && g != TOMBSTONE)
			grant_free(g);
	}
	for (struct grant *g = atomic_load(&t->retired), *next; g; g = next) {
		next = g->next_retired;
		grant_free(g);
	}
	free(t);
}

struct grant *grants_alloc(struct grant_table *t)
{
	struct grant *g = calloc(1, sizeof(*g));
	if (!g)
		return NULL;
	g->use = aligned_alloc(CACHELINE, sizeof(*g->use) * t->n_shards);
	g->scope = budget_scope_new(0, t->n_shards);
	if (!g->use || !g->scope) {
		grants_discard(g);
		return NULL;
	}
	memset(g->use, 0, sizeof(*g->use) * t->n_shards);
	return g;
}

void grants_discard(struct grant *g)
{
	if (g)
		grant_free(g);
}

static uint32_t home(const unsigned char sha256[32])
{
	uint32_t h;
	memcpy(&h, sha256, sizeof(h));   /* a hash already */
	return h % SLOTS;
}

bool grants_publish(struct grant_table *t, struct grant *g)
{
	if (atomic_fetch_add(&t->live, 1) >= GRANTS_MAX) {
		atomic_fetch_sub(&t->live, 1);
		return false;
	}
	budget_set_limit(g->scope, g->t.amount, 0);
	for (uint32_t i = home(g->t.token_sha256), n = 0; n < SLOTS; i = (i + 1) % SLOTS, n++) {
		struct grant *cur = atomic_load_explicit(&t->slots[i], memory_order_acquire);
		if (cur && cur != TOMBSTONE)
			continue;
		if (atomic_compare_exchange_strong_explicit(&t->slots[i], &cur, g,
							    memory_order_release,
							    memory_order_relaxed)) {
			uint32_t m = atomic_load(&t->max_probe);
			while (n > m && !atomic_compare_exchange_weak(&t->max_probe, &m, n))
				;
			g->next_owned = t->owned[g->owner];
			t->owned[g->owner] = g;
			return true;
		}
	}
	atomic_fetch_sub(&t->live, 1);
	return false;
}

struct grant *grants_find(struct grant_table *t, const unsigned char sha256[32])
{
	/* Tombstones never turn empty again, so a miss would probe the whole
	 * table once enough grants came and went: no grant sits further from
	 * its home than the longest insert did. (A grant published while we
	 * look may be missed: its token has not been handed out yet.) */
	uint32_t limit = atomic_load_explicit(&t->max_probe, memory_order_acquire) + 1;
	for (uint32_t i = home(sha256), n = 0; n < limit; i = (i + 1) % SLOTS, n++) {
		struct grant *g = atomic_load_explicit(&t->slots[i], memory_order_acquire);
		if (!g)
			return NULL;
		if (g != TOMBSTONE && !memcmp(g->t.token_sha256, sha256, 32))
			return g;
	}
	return NULL;
}

struct grant *grants_find_id(struct grant_table *t, const char *id, size_t len)
{
	if (len > GRANT_ID_MAX)
		return NULL;
	for (uint32_t i = 0; i < SLOTS; i++) {
		struct grant *g = atomic_load_explicit(&t->slots[i], memory_order_acquire);
		if (g && g != TOMBSTONE && strlen(g->t.id) == len && !memcmp(g->t.id, id, len))
			return g;
	}
	return NULL;
}

bool grants_begin(struct grant *g, uint32_t shard)
{
	_Atomic uint32_t *n = &g->use[shard].inflight;
	atomic_store_explicit(n, atomic_load_explicit(n, memory_order_relaxed) + 1,
			      memory_order_seq_cst);
	if (atomic_load_explicit(&g->state, memory_order_seq_cst) == GRANT_OPEN)
		return true;
	atomic_store_explicit(n, atomic_load_explicit(n, memory_order_relaxed) - 1,
			      memory_order_release);
	return false;
}

void grants_end(struct grant *g, uint32_t shard)
{
	_Atomic uint32_t *n = &g->use[shard].inflight;
	/* release: the call's commit on g->scope comes before the owner can
	 * see it gone and read what was spent */
	atomic_store_explicit(n, atomic_load_explicit(n, memory_order_relaxed) - 1,
			      memory_order_release);
}

void grants_ask_close(struct grant *g)
{
	int open = GRANT_OPEN;
	atomic_compare_exchange_strong(&g->state, &open, GRANT_CLOSE_ASKED);
}

static bool in_flight(const struct grant_table *t, struct grant *g)
{
	for (uint32_t i = 0; i < t->n_shards; i++)
		if (atomic_load_explicit(&g->use[i].inflight, memory_order_seq_cst))
			return true;
	return false;
}

/* Takes g out of the table; the sweeper frees it after a quiesce. */
static void retire(struct grant_table *t, struct grant *g)
{
	for (uint32_t i = home(g->t.token_sha256), n = 0; n < SLOTS; i = (i + 1) % SLOTS, n++) {
		if (atomic_load_explicit(&t->slots[i], memory_order_relaxed) == g) {
			atomic_store_explicit(&t->slots[i], TOMBSTONE, memory_order_release);
			break;
		}
	}
	atomic_fetch_sub(&t->live, 1);
	struct grant *head = atomic_load(&t->retired);
	do
		g->next_retired = head;
	while (!atomic_compare_exchange_weak(&t->retired, &head, g));
}

void grants_withdraw(struct grant_table *t, struct grant *g)
{
	for (struct grant **pp = &t->owned[g->owner]; *pp; pp = &(*pp)->next_owned)
		if (*pp == g) {
			*pp = g->next_owned;
			break;
		}
	atomic_store(&g->state, GRANT_CLOSED);
	retire(t, g);
}

uint32_t grants_tidy(struct grant_table *t, uint32_t shard, int64_t now_s,
		     void (*close)(struct grant *g, int64_t spent, void *arg), void *arg)
{
	uint32_t closed = 0;
	for (struct grant **pp = &t->owned[shard]; *pp;) {
		struct grant *g = *pp;
		int state = atomic_load(&g->state);
		if (state == GRANT_OPEN && now_s < g->t.expires_s) {
			pp = &g->next_owned;
			continue;
		}
		if (state != GRANT_CLOSING)
			atomic_store_explicit(&g->state, GRANT_CLOSING, memory_order_seq_cst);
		if (in_flight(t, g)) {
			pp = &g->next_owned;
			continue;
		}
		struct budget_clock clk;
		budget_clock_set(&clk, now_s);
		struct budget_totals tot;
		budget_totals(g->scope, &clk, &tot);
		close(g, tot.committed, arg);
		atomic_store(&g->state, GRANT_CLOSED);
		if (g->grantor_count)
			atomic_fetch_sub(g->grantor_count, 1);
		*pp = g->next_owned;
		retire(t, g);
		closed++;
	}
	return closed;
}

void grants_tidy_leases(struct grant_table *t, uint32_t shard, const struct budget_clock *clk)
{
	if (!atomic_load_explicit(&t->live, memory_order_relaxed))
		return;
	for (uint32_t i = 0; i < SLOTS; i++) {
		struct grant *g = atomic_load_explicit(&t->slots[i], memory_order_acquire);
		if (g && g != TOMBSTONE)
			budget_tidy(g->scope, shard, clk);
	}
}

void grants_reclaim(struct grant_table *t, bool (*quiesce)(void *), void *arg)
{
	struct grant *batch = atomic_exchange(&t->retired, NULL);
	if (!batch)
		return;
	if (!quiesce(arg)) {
		struct grant *last = batch;
		while (last->next_retired)
			last = last->next_retired;
		struct grant *head = atomic_load(&t->retired);
		do
			last->next_retired = head;
		while (!atomic_compare_exchange_weak(&t->retired, &head, batch));
		return;
	}
	for (struct grant *g = batch, *next; g; g = next) {
		next = g->next_retired;
		grant_free(g);
	}
}

uint32_t grants_live(const struct grant_table *t)
{
	return atomic_load_explicit(&t->live, memory_order_relaxed);
}
