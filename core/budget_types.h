/*
 * budget_types.h — budget scopes split into per-core shards.
 *
 * A scope (a run, key, user, team or org with a limit) has one global
 * cache line of atomics, `struct budget_global`, and one owner-only slot per
 * shard, `struct budget_local`. A shard spends from an allowance ("lease")
 * it took from the global pool; only taking or giving back a lease touches
 * the shared line. See docs/budget.md for the invariant and its proof.
 */
#ifndef TOLLGATE_BUDGET_TYPES_H
#define TOLLGATE_BUDGET_TYPES_H

#include <stdatomic.h>
#include <stdint.h>

#include "core/defs.h"
#include "core/money.h"

#define BUDGET_MAX_SHARDS 64

/* Shared by all shards: what has left the global pool for this scope. */
struct budget_global {
	_Alignas(CACHELINE) _Atomic int64_t used;  /* Σ shards (lease + reserved + committed) */
	_Atomic int64_t limit;                     /* µUSD; changed only by a reload */
};

/*
 * One shard's view of a scope. Written only by its shard; fields are
 * relaxed atomics so that reports may sum them from another thread (a
 * relaxed store is a plain store on x86: no lock, no fence).
 */
struct budget_local {
	_Alignas(CACHELINE) _Atomic int64_t lease;    /* leased, not yet reserved */
	_Atomic int64_t reserved;                     /* held by calls in flight */
	_Atomic int64_t committed;                    /* spent (final) */
};

struct budget_scope {
	struct budget_global global;
	uint32_t n_shards;
	struct budget_local local[];                   /* n_shards entries */
};

/* Totals over all shards, for reports and headers. */
struct budget_totals {
	int64_t limit, committed, reserved, leased, used;
};

#endif
