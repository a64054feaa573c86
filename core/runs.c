/*
 * runs.c — the run tables (runs.h).
 *
 * A generation is a fixed open-addressing table. Insert: build the run
 * privately, then CAS it into the first empty slot of its probe sequence;
 * a slot that holds the same id on the way (or that another shard filled
 * with it while we raced) wins, and our copy is dropped. Slots are never
 * emptied, so probes stop at the first empty one; readers see a slot empty
 * or pointing at a complete run (release on publish, acquire on read).
 *
 * Rotation (runs_rotate, one sweeper thread), with P the previous table, C
 * the current one and N a fresh one:
 *   1. every run of P that must live on (not idle past its TTL, or with a
 *      call in flight) is copied into C;
 *   2. previous := C, then current := N. A shard that read the old pair
 *      still finds everything that lives in C, and copies forward into C;
 *   3. quiesce: every shard has finished the turn it was in, so none holds
 *      P or a run found in it without having copied it into C;
 *   4. each run of P that is not in C has expired. It is freed, unless a
 *      call still uses it (a shard re-opened its id meanwhile, so it could
 *      not be copied): then it waits on the zombie list until that call ends.
 */
#include "core/runs.h"

#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

struct run_gen {
	uint32_t mask;
	_Atomic(struct run *) slots[];
};

struct run_table {
	uint32_t capacity;             /* live runs at most */
	uint32_t n_shards;
	_Atomic(struct run_gen *) current;
	_Atomic(struct run_gen *) previous;   /* NULL before the first rotation */
	_Atomic uint32_t live;
	/* the sweeper's own */
	struct run_gen *spare;         /* P of the last rotation, reused as N */
	struct run **zombies;          /* expired, still in use */
	uint32_t n_zombies, cap_zombies;
};

static struct run_gen *gen_new(uint32_t capacity)
{
	uint32_t slots = 1024;
	while (slots < capacity * 2)   /* at most half full: short probes */
		slots <<= 1;
	struct run_gen *g = calloc(1, sizeof(*g) + sizeof(g->slots[0]) * slots);
	if (g)
		g->mask = slots - 1;
	return g;
}

static void gen_clear(struct run_gen *g)
{
	memset(g->slots, 0, sizeof(g->slots[0]) * ((size_t)g->mask + 1));
}

static void run_free(struct run *r)
{
	budget_scope_free(r->scope);
	free(r->use);
	free(r);
}

struct run_table *runs_new(uint32_t capacity, uint32_t n_shards)
{
	struct run_table *t = calloc(1, sizeof(*t));
	struct run_gen *g = gen_new(capacity);
	if (!t || !g) {
		free(t);
		free(g);
		return NULL;
	}
	t->capacity = capacity;
	t->n_shards = n_shards;
	atomic_init(&t->current, g);
	return t;
}

static struct run *gen_find(struct run_gen *g, const char *id, size_t len);

/* Frees every run once, whichever tables hold it. */
void runs_free(struct run_table *t)
{
	if (!t)
		return;
	struct run_gen *cur = atomic_load(&t->current), *prev = atomic_load(&t->previous);
	for (uint32_t i = 0; prev && i <= prev->mask; i++) {
		struct run *r = atomic_load(&prev->slots[i]);
		/* a run in both tables is freed from the current one */
		if (r && gen_find(cur, r->id, r->id_len) != r)
			run_free(r);
	}
	for (uint32_t i = 0; i <= cur->mask; i++) {
		struct run *r = atomic_load(&cur->slots[i]);
		if (r)
			run_free(r);
	}
	for (uint32_t i = 0; i < t->n_zombies; i++)
		run_free(t->zombies[i]);
	free(t->zombies);
	free(cur);
	free(prev);
	free(t->spare);
	free(t);
}

bool runs_valid_id(const char *id, size_t len)
{
	if (len == 0 || len > RUN_ID_MAX)
		return false;
	for (size_t i = 0; i < len; i++) {
		char c = id[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '.' || c == '_' || c == ':' || c == '-'))
			return false;
	}
	return true;
}

static bool same_id(const struct run *r, const char *id, size_t len)
{
	return r->id_len == len && !memcmp(r->id, id, len);
}

static struct run *gen_find(struct run_gen *g, const char *id, size_t len)
{
	uint32_t s = (uint32_t)XXH3_64bits(id, len) & g->mask;
	for (uint32_t probes = 0; probes <= g->mask; probes++, s = (s + 1) & g->mask) {
		struct run *r = atomic_load_explicit(&g->slots[s], memory_order_acquire);
		if (!r)
			return NULL;
		if (same_id(r, id, len))
			return r;
	}
	return NULL;
}

/* Puts r in g unless a run with its id is there; returns the one that is
 * (r, or the other), or NULL if g has no room. */
static struct run *gen_insert(struct run_gen *g, struct run *r)
{
	uint32_t s = (uint32_t)XXH3_64bits(r->id, r->id_len) & g->mask;
	for (uint32_t probes = 0; probes <= g->mask; probes++, s = (s + 1) & g->mask) {
		struct run *at = atomic_load_explicit(&g->slots[s], memory_order_acquire);
		if (!at && atomic_compare_exchange_strong_explicit(&g->slots[s], &at, r,
								   memory_order_acq_rel,
								   memory_order_acquire))
			return r;
		if (same_id(at, r->id, r->id_len))
			return at;   /* there already, or another shard won the slot */
	}
	return NULL;
}

struct run *runs_find(struct run_table *t, const char *id, size_t len)
{
	struct run_gen *cur = atomic_load_explicit(&t->current, memory_order_acquire);
	struct run *r = gen_find(cur, id, len);
	if (r)
		return r;
	struct run_gen *prev = atomic_load_explicit(&t->previous, memory_order_acquire);
	if (!prev || !(r = gen_find(prev, id, len)))
		return NULL;
	/* used again: it lives on in the current table */
	struct run *kept = gen_insert(cur, r);
	return kept ? kept : r;
}

static struct run *run_new(const char *id, size_t len, const struct run_spec *spec,
			   uint32_t n_shards)
{
	struct run *r = calloc(1, sizeof(*r));
	if (!r)
		return NULL;
	r->scope = budget_scope_new(spec->limit, n_shards);
	r->use = aligned_alloc(CACHELINE, sizeof(*r->use) * n_shards);
	if (!r->scope || !r->use) {
		budget_scope_free(r->scope);
		free(r->use);
		free(r);
		return NULL;
	}
	memset(r->use, 0, sizeof(*r->use) * n_shards);
	budget_set_limit(r->scope, spec->limit, spec->slack);
	budget_set_window(r->scope, WINDOW_RUN);
	memcpy(r->id, id, len);
	r->id_len = (uint8_t)len;
	r->mode = spec->mode;
	strncpy(r->key_id, spec->key_id, RUN_ID_MAX);
	r->limit = spec->limit;
	r->ttl_s = spec->ttl_s;
	r->key_runs = spec->key_runs;
	return r;
}

struct run *runs_open(struct run_table *t, const char *id, size_t len,
		      const struct run_spec *spec, bool *created)
{
	*created = false;
	struct run *r = runs_find(t, id, len);
	if (r)
		return r;
	if (atomic_fetch_add_explicit(&t->live, 1, memory_order_relaxed) >= t->capacity) {
		atomic_fetch_sub_explicit(&t->live, 1, memory_order_relaxed);
		return NULL;
	}
	struct run *mine = run_new(id, len, spec, t->n_shards);
	struct run_gen *cur = atomic_load_explicit(&t->current, memory_order_acquire);
	r = mine ? gen_insert(cur, mine) : NULL;
	if (r != mine) {
		/* another shard opened it first, or no room */
		atomic_fetch_sub_explicit(&t->live, 1, memory_order_relaxed);
		if (mine)
			run_free(mine);
		return r;
	}
	*created = true;
	return r;
}

void runs_begin(struct run *r, uint32_t shard, int64_t now_s)
{
	struct run_use *u = &r->use[shard];
	atomic_store_explicit(&u->inflight,
			      atomic_load_explicit(&u->inflight, memory_order_relaxed) + 1,
			      memory_order_relaxed);
	atomic_store_explicit(&u->last_used_s, now_s, memory_order_relaxed);
}

void runs_end(struct run *r, uint32_t shard)
{
	struct run_use *u = &r->use[shard];
	/* release: the call's last stores to r (its settlement) come before
	 * the sweeper can see it unused and free it */
	atomic_store_explicit(&u->inflight,
			      atomic_load_explicit(&u->inflight, memory_order_relaxed) - 1,
			      memory_order_release);
}

static void gen_tidy(struct run_gen *g, uint32_t shard, const struct budget_clock *clk)
{
	for (uint32_t i = 0; g && i <= g->mask; i++) {
		struct run *r = atomic_load_explicit(&g->slots[i], memory_order_acquire);
		if (r)
			budget_tidy(r->scope, shard, clk);
	}
}

void runs_tidy(struct run_table *t, uint32_t shard, const struct budget_clock *clk)
{
	gen_tidy(atomic_load_explicit(&t->current, memory_order_acquire), shard, clk);
	gen_tidy(atomic_load_explicit(&t->previous, memory_order_acquire), shard, clk);
}

uint32_t runs_live(const struct run_table *t)
{
	return atomic_load_explicit(&((struct run_table *)t)->live, memory_order_relaxed);
}

/* Calls in flight on r, over all shards. */
static uint32_t inflight(const struct run_table *t, struct run *r)
{
	uint32_t n = 0;
	for (uint32_t i = 0; i < t->n_shards; i++)
		n += atomic_load_explicit(&r->use[i].inflight, memory_order_acquire);
	return n;
}

static bool expired(const struct run_table *t, struct run *r, int64_t now_s)
{
	int64_t last = 0;
	for (uint32_t i = 0; i < t->n_shards; i++) {
		int64_t u = atomic_load_explicit(&r->use[i].last_used_s, memory_order_acquire);
		if (u > last)
			last = u;
	}
	return now_s - last >= (int64_t)r->ttl_s && inflight(t, r) == 0;
}

static void expire(struct run_table *t, struct run *r)
{
	if (r->key_runs)
		atomic_fetch_sub_explicit(r->key_runs, 1, memory_order_relaxed);
	atomic_fetch_sub_explicit(&t->live, 1, memory_order_relaxed);
	run_free(r);
}

static void zombie(struct run_table *t, struct run *r)
{
	if (t->n_zombies == t->cap_zombies) {
		uint32_t cap = t->cap_zombies ? t->cap_zombies * 2 : 16;
		struct run **z = realloc(t->zombies, sizeof(*z) * cap);
		if (!z)
			return;   /* leaked rather than freed in use */
		t->zombies = z;
		t->cap_zombies = cap;
	}
	t->zombies[t->n_zombies++] = r;
}

uint32_t runs_rotate(struct run_table *t, int64_t now_s, bool (*quiesce)(void *), void *arg)
{
	struct run_gen *c = atomic_load(&t->current), *p = atomic_load(&t->previous);
	struct run_gen *n = t->spare ? t->spare : gen_new(t->capacity);
	if (!n)
		return 0;
	t->spare = NULL;
	for (uint32_t i = 0; p && i <= p->mask; i++) {            /* 1 */
		struct run *r = atomic_load(&p->slots[i]);
		if (r && !expired(t, r, now_s))
			gen_insert(c, r);
	}
	atomic_store(&t->previous, c);                             /* 2 */
	atomic_store(&t->current, n);
	bool quiet = quiesce(arg);                                 /* 3 */
	uint32_t freed = 0;
	for (uint32_t i = 0; p && i <= p->mask; i++) {            /* 4 */
		struct run *r = atomic_load(&p->slots[i]);
		if (!r || gen_find(c, r->id, r->id_len) == r)
			continue;
		if (inflight(t, r) || !quiet)   /* a shard may still hold it */
			zombie(t, r);
		else {
			expire(t, r);
			freed++;
		}
	}
	for (uint32_t i = 0; i < t->n_zombies;) {
		if (!quiet || inflight(t, t->zombies[i])) {
			i++;
			continue;
		}
		expire(t, t->zombies[i]);
		t->zombies[i] = t->zombies[--t->n_zombies];
		freed++;
	}
	if (p) {
		gen_clear(p);
		t->spare = p;
	}
	return freed;
}
