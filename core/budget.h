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

struct budget_scope *budget_scope_new(int64_t limit, uint32_t n_shards);
/* Bytes for a scope with n slots, and setting one up in caller's memory
 * (CACHELINE-aligned). A scope with one slot is private to one shard,
 * whichever shard index is passed to it. */
#define BUDGET_SCOPE_SIZE(n) (sizeof(struct budget_scope) + sizeof(struct budget_local) * (n))
struct budget_scope *budget_scope_init(void *mem, int64_t limit, uint32_t n_shards);
void budget_scope_free(struct budget_scope *s);
/* A reload changed the limit. Lowering it below what is used refuses new
 * reservations until spend falls under it; nothing already reserved is lost. */
void budget_set_limit(struct budget_scope *s, int64_t limit);

/*
 * Reserves `amount` on every scope of scopes[0..n) for `shard`, or on none.
 * Returns -1 on success, or the index of the first scope that could not
 * cover it (nothing is left reserved anywhere in that case).
 */
int budget_reserve(struct budget_scope *const *scopes, int n, uint32_t shard,
		   int64_t amount);
/* Turns a reservation of `reserved` into a spend of `actual` (≤ reserved
 * is refunded; more than reserved is charged too, never refused: it was
 * already spent). */
void budget_commit(struct budget_scope *const *scopes, int n, uint32_t shard,
		   int64_t reserved, int64_t actual);
void budget_release(struct budget_scope *const *scopes, int n, uint32_t shard,
		    int64_t reserved);
/* Gives this shard's unused lease on s back to the global pool. */
void budget_return_lease(struct budget_scope *s, uint32_t shard);

/* Sums every shard's slots (racy but each field is read atomically). */
void budget_totals(const struct budget_scope *s, struct budget_totals *out);

#endif
