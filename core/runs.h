/*
 * runs.h — agent runs (X-Run-Id): each run is a budget scope of its own,
 * bound to the key that opened it, visible to every shard, and forgotten
 * once it has been idle for its key's run.ttl_s.
 *
 * Lookups and opens take no lock: runs live in open-addressing tables
 * whose slots are published by CAS. Expiry is generational: a sweeper
 * thread starts a fresh "current" table every RUNS_ROTATE_MS; a run used
 * since is in the current table (a lookup that finds it only in the
 * previous one copies it forward), and a run left behind in the table
 * before that, idle past its TTL and with no call in flight, is freed once
 * every shard has been seen between two loop turns (so none still holds
 * it). A full table refuses new runs with 503, never overwrites.
 */
#ifndef TOLLGATE_RUNS_H
#define TOLLGATE_RUNS_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "core/budget.h"
#include "core/defs.h"

#define RUN_ID_MAX 64
#define RUNS_ROTATE_MS 1000

/* One shard's use of a run: written by that shard only. */
struct run_use {
	_Alignas(CACHELINE) _Atomic uint32_t inflight;  /* its calls not yet settled */
	_Atomic int64_t last_used_s;                    /* budget clock, UTC seconds */
};

struct run {
	char id[RUN_ID_MAX + 1];
	uint8_t id_len;
	uint8_t mode;                  /* enum budget_mode */
	char key_id[RUN_ID_MAX + 1];   /* the key that opened it (ids survive reloads) */
	struct budget_scope *scope;
	int64_t limit;
	uint32_t ttl_s;                /* idle this long: expired */
	_Atomic uint32_t *key_runs;    /* the key's count of live runs, or NULL */
	struct run_use *use;           /* one per shard */
};

struct run_table;

struct run_table *runs_new(uint32_t capacity, uint32_t n_shards);
void runs_free(struct run_table *t);

/* True when id[0..len) is a usable run id: 1..64 of [A-Za-z0-9._:-]. */
bool runs_valid_id(const char *id, size_t len);

/* The run named id, or NULL. Valid until the caller's loop turn ends,
 * unless runs_begin() holds it. */
struct run *runs_find(struct run_table *t, const char *id, size_t len);

/* What a new run is opened with. */
struct run_spec {
	const char *key_id;
	int64_t limit, slack;          /* budget.h */
	uint8_t mode;
	uint32_t ttl_s;
	_Atomic uint32_t *key_runs;    /* decremented when the run expires */
};

/*
 * The run named id, opened per spec if it does not exist. *created says
 * which. NULL: the table is full or out of memory. Two shards opening the
 * same id at once get the same run.
 */
struct run *runs_open(struct run_table *t, const char *id, size_t len,
		      const struct run_spec *spec, bool *created);

/* A call of `shard` starts or ends using r: a run with calls in flight
 * never expires. */
void runs_begin(struct run *r, uint32_t shard, int64_t now_s);
void runs_end(struct run *r, uint32_t shard);

/* budget_tidy() on every run for `shard` (its periodic housekeeping). */
void runs_tidy(struct run_table *t, uint32_t shard, const struct budget_clock *clk);

/*
 * The sweeper's step (one thread only): expire what has been idle past its
 * TTL as of now_s. quiesce(arg) returns true only after every shard has
 * finished the loop turn it was in when called; false when it was cut
 * short (shutdown): nothing is freed then, the expired runs wait. Returns
 * how many runs were freed.
 */
uint32_t runs_rotate(struct run_table *t, int64_t now_s, bool (*quiesce)(void *), void *arg);

/* Live runs (opened, not yet expired). */
uint32_t runs_live(const struct run_table *t);

#endif
