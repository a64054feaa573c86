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

/* How long a scope's spend counts before it starts again from zero. A
 * `run` window lasts as long as the run, so it never rolls, like `total`;
 * hour, day, week (from Monday) and month roll on UTC boundaries. */
enum budget_window {
	WINDOW_RUN, WINDOW_HOUR, WINDOW_DAY, WINDOW_WEEK, WINDOW_MONTH, WINDOW_TOTAL,
	WINDOW_KINDS
};

/* Each shard's view of the wall clock as window numbers, so a reservation
 * finds its window with one load. Set by budget_clock_set(). */
struct budget_clock {
	int64_t now_s;                       /* UTC seconds since the epoch */
	int64_t epoch[WINDOW_KINDS];         /* window number now, per kind */
};

/* slack: how far past its limit a scope may reserve (soft_gate's margin);
 * BUDGET_UNBOUNDED never refuses (advisory_estimate, actuals_only). */
#define BUDGET_UNBOUNDED (-1)

/* Shared by all shards: what has left the global pool for this scope. */
struct budget_global {
	_Alignas(CACHELINE) _Atomic int64_t used;  /* Σ shards (lease + reserved + committed) */
	_Atomic int64_t limit;                     /* µUSD; changed only by a reload */
	_Atomic int64_t slack;                     /* µUSD past limit, or BUDGET_UNBOUNDED */
};

/*
 * One shard's view of a scope. Written only by its shard; fields are
 * relaxed atomics so that reports may sum them from another thread (a
 * relaxed store is a plain store on x86: no lock, no fence).
 */
struct budget_local {
	_Alignas(CACHELINE) _Atomic int64_t lease;    /* leased, not yet reserved */
	_Atomic int64_t reserved;                     /* held by calls in flight */
	_Atomic int64_t committed;                    /* spent (final) in window `epoch` */
	_Atomic int64_t epoch;                        /* the window `committed` belongs to */
};

struct budget_scope {
	struct budget_global global;
	uint32_t n_shards;
	uint8_t window;                                /* enum budget_window; fixed */
	struct budget_local local[];                   /* n_shards entries */
};

/* Totals over all shards, for reports and headers. `committed` is the
 * current window's; reservations count whichever window they began in. */
struct budget_totals {
	int64_t limit, committed, reserved, leased, used;
};

#endif
