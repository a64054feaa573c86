/*
 * runs.h — agent runs (X-Run-Id): each run is a budget scope of its own,
 * bound to the key that opened it, visible to every shard.
 *
 * The table is fixed-size open addressing with slots published by CAS, so
 * any shard finds or opens a run without a lock; runs are never moved or
 * freed while the process lives (a full table refuses new runs with 503,
 * never overwrites). Run TTL, expiry and reclamation come with the ledger.
 */
#ifndef TOLLGATE_RUNS_H
#define TOLLGATE_RUNS_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "core/budget.h"

#define RUN_ID_MAX 64

struct run {
	char id[RUN_ID_MAX + 1];
	uint8_t id_len;
	char key_id[RUN_ID_MAX + 1];   /* the key that opened it (ids survive reloads) */
	struct budget_scope *scope;
	int64_t limit;
	uint8_t mode;                  /* enum budget_mode */
};

struct run_table;

struct run_table *runs_new(uint32_t capacity, uint32_t n_shards);
void runs_free(struct run_table *t);

/* budget_tidy() on every run for `shard` (its periodic housekeeping). */
void runs_tidy(struct run_table *t, uint32_t shard, const struct budget_clock *clk);

/* True when id[0..len) is a usable run id: 1..64 of [A-Za-z0-9._:-]. */
bool runs_valid_id(const char *id, size_t len);

/* The run named id, or NULL. */
struct run *runs_find(struct run_table *t, const char *id, size_t len);

/*
 * The run named id, opened with `limit` for key_id if it does not exist,
 * enforced in `mode` (enum budget_mode) with `slack` (budget.h).
 * *created says which. NULL: the table is full or out of memory.
 * Two shards opening the same id at once get the same run.
 */
struct run *runs_open(struct run_table *t, const char *id, size_t len,
		      const char *key_id, int64_t limit, uint8_t mode, int64_t slack,
		      bool *created);

#endif
