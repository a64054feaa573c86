/*
 * budget.h — reserve, commit and release against sharded budget scopes.
 *
 * All amounts are integer micro-USD. Every function that takes `shard` must
 * be called by that shard's thread only.
 */
#ifndef TOLLGATE_BUDGET_H
#define TOLLGATE_BUDGET_H

#include <stdbool.h>

#include "core/budget_types.h"

/* A scope with `limit` that never goes past it (hard_gate) and a total
 * window; budget_set_window() and budget_set_limit() change either. */
struct budget_scope *budget_scope_new(int64_t limit, uint32_t n_shards);
/* Bytes for a scope with n slots, and setting one up in caller's memory
 * (CACHELINE-aligned). A scope with one slot is private to one shard,
 * whichever shard index is passed to it. */
#define BUDGET_SCOPE_SIZE(n) (sizeof(struct budget_scope) + sizeof(struct budget_local) * (n))
struct budget_scope *budget_scope_init(void *mem, int64_t limit, uint32_t n_shards);
void budget_scope_free(struct budget_scope *s);
/* A reload changed the limit or the slack past it. Lowering it below what
 * is used refuses new reservations until spend falls under it; nothing
 * already reserved is lost. */
void budget_set_limit(struct budget_scope *s, int64_t limit, int64_t slack);
/* Before the scope is shared: its window (enum budget_window). */
void budget_set_window(struct budget_scope *s, uint8_t window);

/* The window numbers of UTC time now_s (weeks start on Monday). */
void budget_clock_set(struct budget_clock *c, int64_t now_s);

/*
 * Reserves `amount` on every scope of scopes[0..n) for `shard`, or on none.
 * Returns -1 on success, or the index of the first scope that could not
 * cover it within its limit and slack (nothing is left reserved anywhere in
 * that case). On success, bit i of *over is set when scope i went past its
 * limit (into its slack). A scope whose window rolled over since this
 * shard last touched it starts its spend again from zero.
 */
int budget_reserve(struct budget_scope *const *scopes, int n, uint32_t shard,
		   int64_t amount, const struct budget_clock *clk, uint32_t *over);
/* Turns a reservation of `reserved` into a spend of `actual` (≤ reserved
 * is refunded; more than reserved is charged too, never refused: it was
 * already spent). */
void budget_commit(struct budget_scope *const *scopes, int n, uint32_t shard,
		   int64_t reserved, int64_t actual, const struct budget_clock *clk);
void budget_release(struct budget_scope *const *scopes, int n, uint32_t shard,
		    int64_t reserved, const struct budget_clock *clk);
/* Start-up only, before any shard runs: adds `amount` already spent in the
 * current window of clk (the ledger's replay) to the scope. */
void budget_restore(struct budget_scope *s, int64_t amount, const struct budget_clock *clk);
/* Gives this shard's unused lease on s back to the global pool. */
void budget_return_lease(struct budget_scope *s, uint32_t shard);
/* Housekeeping, once a second per shard: rolls its slot of s into the
 * current window and hands its whole lease back, so that budget it sits
 * on is never out of other shards' reach for longer than that. */
void budget_tidy(struct budget_scope *s, uint32_t shard, const struct budget_clock *clk);

/* Sums every shard's slots (racy but each field is read atomically);
 * committed counts only the current window of clk. */
void budget_totals(const struct budget_scope *s, const struct budget_clock *clk,
		   struct budget_totals *out);

#endif
