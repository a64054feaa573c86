/*
 * budget_book.h — the live budget counters of every configured scope,
 * kept across config reloads.
 *
 * Counters must outlive a configuration generation (a reload must not
 * forget what was spent), so they live in the book, keyed by scope kind
 * and name. budget_book_bind() runs on the main thread when a generation
 * is loaded, before any shard sees it: it finds or creates each scope's
 * counters, applies the (possibly changed) limit, and stores the pointer in
 * the generation. Shards then reach counters through the read-only config
 * with no lookup and no lock.
 */
#ifndef TOLLGATE_BUDGET_BOOK_H
#define TOLLGATE_BUDGET_BOOK_H

#include "core/budget.h"
#include "core/config_types.h"

struct budget_book;

struct budget_book *budget_book_new(uint32_t n_shards);
void budget_book_free(struct budget_book *b);
/* 0 or -ENOMEM. */
int budget_book_bind(struct budget_book *b, struct config *cfg);

/* What a new run is held to: the key's run limit in the key's mode, and
 * every `window: run` budget of the key and above, each in its own mode. */
struct run_terms {
	int64_t limit;       /* the least limit: past it, calls warn */
	int64_t slack;       /* so that no constraint's ceiling is passed */
	uint8_t mode;        /* of the constraint with the lowest ceiling */
};

/* The terms of a run that key k opens with `limit` (X-Budget-Run-Limit
 * clamped, or the key's default). */
struct run_terms budget_run_terms(const struct config *cfg, const struct cfg_key *k,
				  int64_t limit);

#endif
