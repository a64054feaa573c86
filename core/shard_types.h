/*
 * shard_types.h — the per-core runtime: one thread, one io_uring, its own
 * listeners, pools, timers and upstream keep-alive pools.
 *
 * Layout follows the rule "owner-only fields first, shared fields on their
 * own cache line": only `mailbox` and `next_cfg` are written by another
 * thread (the main thread posting reload/drain), never on the request path.
 */
#ifndef TOLLGATE_SHARD_TYPES_H
#define TOLLGATE_SHARD_TYPES_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "core/budget_types.h"
#include "core/config_types.h"
#include "core/defs.h"
#include "core/timer.h"
#include "net/conn_types.h"
#include "net/ring.h"
#include "tls/tls_types.h"

/* Counters a shard keeps for itself (read racily for stats only). */
struct shard_stats {
	uint64_t accepted;
	uint64_t requests;
	uint64_t upstream_connects;
	uint64_t upstream_reuses;
	uint64_t errors_4xx, errors_5xx;
	uint64_t refused_no_memory;      /* pool empty: 503 or closed */
	/* metered streams (net/stream.c): the meter's counts against the
	 * provider's own, exported by GET /metrics */
	uint64_t streams_with_usage, streams_without_usage;
	uint64_t stream_tokens_reported;     /* the provider's output count */
	uint64_t stream_tokens_upper;        /* our upper bound, same streams */
	uint64_t stream_tokens_lower;        /* our lower bound, same streams */
	uint64_t stream_bound_misses;        /* reported outside [lower, upper] */
	uint64_t stream_cuts, stream_cuts_frozen;
	uint64_t refused_frozen;             /* calls refused 423 frozen */
};

/* A provider's idle keep-alive connections (LIFO: warmest first). */
struct upstream_pool {
	struct upstream *idle;
	uint32_t n_idle;
};


/* A config generation and how many of this shard's exchanges use it. The
 * head of the list is current; older ones are released at zero users. This
 * keeps per-request reference counting off shared cache lines. */
struct cfg_hold {
	struct config *cfg;
	uint32_t users;
	struct cfg_hold *next;
	struct tls_conf **provider_tls;  /* per provider of cfg: https client side, or NULL */
};

enum shard_cmd {
	SHARD_CMD_RELOAD = 1u << 0,      /* swap to next_cfg */
	SHARD_CMD_DRAIN = 1u << 1,       /* stop accepting, finish, exit */
	SHARD_CMD_FREEZE = 1u << 2,      /* a scope was frozen: cut its streams now */
};

struct freeze_table;

struct shard {
	/* --- owner-only --- */
	int id;
	int cpu;                         /* -1: not pinned */
	struct ring ring;
	struct config *cfg;              /* current generation == holds->cfg */
	struct cfg_hold *holds;          /* current first, then retired ones in use */
	uint64_t now_ms;                 /* CLOCK_MONOTONIC, per loop turn */
	struct budget_clock clock;       /* wall clock as budget windows, per loop turn */
	int64_t wall_ms;                 /* the same wall clock in ms (ledger record times) */
	uint64_t next_tidy_ms;           /* budget housekeeping, once a second */
	const _Atomic int64_t *clock_offset_s; /* tests move the wall clock (main.c) */
	struct timer_heap timers;
	int *listen_fds;
	uint32_t n_listen;
	int admin_listener;              /* index in listen_fds of admin.addr, -1: none */
	struct freeze_table *freeze;     /* the kill switch (core/freeze.h), shared */
	struct shard *all;               /* every shard, for the admin API's totals */
	int n_all;
	struct tls_conf **listen_tls;    /* per listener: server configuration, NULL: plain */
	struct tls_shard tls;            /* DRBG and ticket keys */

	struct client *clients;          /* live list */
	struct client *client_free;
	uint32_t n_clients;              /* live */
	struct exchange *ex_free;
	uint32_t n_exchanges;            /* allocated (live + free) */
	uint32_t ex_live;
	struct upstream *up_free;
	uint32_t n_upstreams;            /* live */
	struct upstream_pool *pools;     /* one per provider of cfg */
	uint32_t n_pools;
	struct client *starved_clients;
	struct upstream *starved_upstreams;

	bool draining;
	uint64_t drain_deadline_ms;
	struct ledger_writer *ledger;    /* this shard's ledger segments, NULL: none */
	uint64_t decisions;              /* decision ids issued by this shard */
	uint64_t runs_issued;            /* server-issued run ids */
	uint32_t run_prefix;             /* random, so issued ids differ across restarts */
	int wake_fd;                     /* eventfd: the main thread's doorbell */
	uint64_t wake_value;
	struct shard_stats stats;
	pthread_t thread;
	int exit_code;
	atomic_int started;              /* 0 pending, 1 running, <0 set-up error */

	/* --- written by this shard, read by the run sweeper --- */
	_Alignas(CACHELINE) _Atomic uint64_t turns;  /* loop turns completed */

	/* --- written by the main thread --- */
	_Alignas(CACHELINE) atomic_uint mailbox;   /* enum shard_cmd bits */
	_Atomic(struct config *) next_cfg;
};

#endif
