/*
 * runs.c — the lock-free run table (runs.h).
 *
 * Insert: build the run privately, then CAS it into the first empty slot
 * of its probe sequence; a slot that holds the same id on the way (or that
 * another shard filled with it while we raced) wins, and our copy is
 * dropped. Readers see a slot either empty or pointing at a complete run
 * (release on publish, acquire on read).
 */
#include "core/runs.h"

#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

struct run_table {
	uint32_t mask;
	uint32_t n_shards;
	_Atomic uint32_t live;
	_Atomic(struct run *) slots[];
};

struct run_table *runs_new(uint32_t capacity, uint32_t n_shards)
{
	uint32_t slots = 1024;
	while (slots < capacity * 2)   /* at most half full: short probes */
		slots <<= 1;
	struct run_table *t = calloc(1, sizeof(*t) + sizeof(t->slots[0]) * slots);
	if (!t)
		return NULL;
	t->mask = slots - 1;
	t->n_shards = n_shards;
	return t;
}

void runs_free(struct run_table *t)
{
	if (!t)
		return;
	for (uint32_t i = 0; i <= t->mask; i++) {
		struct run *r = atomic_load(&t->slots[i]);
		if (r) {
			budget_scope_free(r->scope);
			free(r);
		}
	}
	free(t);
}

void runs_tidy(struct run_table *t, uint32_t shard, const struct budget_clock *clk)
{
	for (uint32_t i = 0; i <= t->mask; i++) {
		struct run *r = atomic_load_explicit(&t->slots[i], memory_order_acquire);
		if (r)
			budget_tidy(r->scope, shard, clk);
	}
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

struct run *runs_find(struct run_table *t, const char *id, size_t len)
{
	uint32_t s = (uint32_t)XXH3_64bits(id, len) & t->mask;
	for (uint32_t probes = 0; probes <= t->mask; probes++, s = (s + 1) & t->mask) {
		struct run *r = atomic_load_explicit(&t->slots[s], memory_order_acquire);
		if (!r)
			return NULL;
		if (same_id(r, id, len))
			return r;
	}
	return NULL;
}

struct run *runs_open(struct run_table *t, const char *id, size_t len,
		      const char *key_id, int64_t limit, uint8_t mode, int64_t slack,
		      bool *created)
{
	*created = false;
	uint32_t s = (uint32_t)XXH3_64bits(id, len) & t->mask;
	struct run *mine = NULL;
	for (uint32_t probes = 0; probes <= t->mask; probes++, s = (s + 1) & t->mask) {
		struct run *r = atomic_load_explicit(&t->slots[s], memory_order_acquire);
		if (r) {
			if (same_id(r, id, len))
				goto found;
			continue;
		}
		/* keep the table at most half full */
		if (atomic_load_explicit(&t->live, memory_order_relaxed) > t->mask / 2)
			break;
		if (!mine) {
			mine = calloc(1, sizeof(*mine));
			if (!mine || !(mine->scope = budget_scope_new(limit, t->n_shards)))
				break;
			budget_set_limit(mine->scope, limit, slack);
			budget_set_window(mine->scope, WINDOW_RUN);
			mine->mode = mode;
			memcpy(mine->id, id, len);
			mine->id_len = (uint8_t)len;
			strncpy(mine->key_id, key_id, RUN_ID_MAX);
			mine->limit = limit;
		}
		if (atomic_compare_exchange_strong_explicit(&t->slots[s], &r, mine,
							    memory_order_acq_rel,
							    memory_order_acquire)) {
			atomic_fetch_add_explicit(&t->live, 1, memory_order_relaxed);
			*created = true;
			return mine;
		}
		if (same_id(r, id, len))
			goto found;   /* another shard opened it first */
	}
	if (mine) {
		budget_scope_free(mine->scope);
		free(mine);
	}
	return NULL;
found:
	if (mine) {
		budget_scope_free(mine->scope);
		free(mine);
	}
	return atomic_load_explicit(&t->slots[s], memory_order_acquire);
}
