/*
 * tollctl_agg.h — what `tollctl report` adds up while it reads a ledger:
 * spend per group of the --by dimensions, per run, per task type, the
 * chargebacks between teams and the outcome of each run. The report's
 * tables are made from it afterwards (tollctl_report_tables.c).
 *
 * Money is int64 micro-USD. Sums that would overflow are held at the
 * int64 limit and flagged (`overflow`), never wrapped.
 */
#ifndef TOLLGATE_TOLLCTL_AGG_H
#define TOLLGATE_TOLLCTL_AGG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ledger/record.h"
#include "tools/tollctl_intern.h"
#include "tools/tollctl_time.h"

/* The dimensions spend can be grouped by (--by). */
enum tollctl_dim {
	DIM_TEAM, DIM_USER, DIM_KEY, DIM_MODEL, DIM_PROVIDER,
	DIM_TASK, DIM_APP, DIM_ENV,           /* tag values */
	DIM_DAY,                              /* the UTC date of the record */
	DIM_COUNT
};

/* A group's value in agg.groups. */
struct tollctl_group {
	int64_t spend;                        /* commit + expire usd */
	uint64_t calls;                       /* commit + expire records */
	uint64_t input, output, cached;       /* their tokens */
	uint64_t refused;                     /* refuse records */
};

/* A run's value in agg.runs. The ids are 1 + an id, 0 for none. */
struct tollctl_run {
	int64_t spend;                        /* commit + expire usd */
	uint64_t calls;                       /* commit + expire records */
	uint32_t key1;                        /* agg.strs: key of its first call */
	uint32_t task1;                       /* agg.tasks: task of its first call */
	uint32_t outcome1;                    /* agg.strs: its outcome's code */
	int64_t outcome_ms;                   /* that outcome's time */
};

/* A task type's value in agg.tasks. */
struct tollctl_task {
	uint64_t calls, input, output;        /* commit + expire */
};

/* A (debited team, credited team) pair's value in agg.chargebacks. */
struct tollctl_chargeback {
	int64_t usd;
	uint64_t count;
};

struct tollctl_agg_totals {
	uint64_t records;                     /* in range, segment records left out */
	uint64_t calls, input, output, cached, refused;
	int64_t spend;
	uint64_t chargebacks;
	int64_t chargeback_usd;
	uint64_t outcomes;                    /* outcome records (with a run or not) */
};

/* Calls and refusals are added in batches of this many (tollctl_agg.c). */
#define TOLLCTL_AGG_BATCH 32

/* A commit, expire or refuse record waiting in the batch: what adding it
 * needs, its text still in the segment buffer. */
struct tollctl_agg_call {
	bool spend;                           /* commit or expire; else refuse */
	int64_t usd;
	uint64_t input, output, cached;
	uint32_t task;                        /* agg.tasks id (spend only) */
	struct ledger_text run, key;
	uint64_t group_hash, run_hash;
	uint64_t group[DIM_COUNT];            /* the group's key */
};

struct tollctl_agg {
	struct tollctl_range range;
	enum tollctl_dim by[DIM_COUNT];       /* group key, in column order */
	unsigned n_by;
	bool by_tags;                         /* some of by[] is a tag */
	/*
	 * Text seen in the ledger (values of by[], keys, teams, outcome
	 * codes) with no value; the other tables refer to it by id. An empty
	 * field or a missing tag is "-".
	 */
	struct tollctl_intern strs;
	struct tollctl_intern groups;         /* n_by uint64 (strs ids, days) → group */
	struct tollctl_intern runs;           /* run id → run (records with one) */
	struct tollctl_intern tasks;          /* task tag → task */
	struct tollctl_intern chargebacks;    /* 2 uint32 strs ids → chargeback */
	struct tollctl_agg_totals tot;
	bool overflow;                        /* a money sum was held at its limit */
	int err;                              /* -ENOMEM once the tables could not grow */
	struct tollctl_agg_call batch[TOLLCTL_AGG_BATCH];
	unsigned batched;
};

/* An empty aggregate grouping by by[0..n_by). 0 or -ENOMEM. */
int tollctl_agg_init(struct tollctl_agg *a, const enum tollctl_dim *by, unsigned n_by,
		     const struct tollctl_range *range);
void tollctl_agg_free(struct tollctl_agg *a);

/* The scan callback (arg: the agg): adds one record. 0, or -ENOMEM (also
 * left in a->err) to stop the scan. Calls and refusals wait in a batch
 * whose text points into the record's buffer: call tollctl_agg_flush()
 * before that buffer changes (after each segment) and before reading the
 * tables. */
int tollctl_agg_rec(const struct ledger_rec *rec, size_t off, void *arg);

/* Adds the batch. 0 or -ENOMEM (also left in a->err). */
int tollctl_agg_flush(struct tollctl_agg *a);

/* "team", "day"… for d; and back (false when name is none of them). */
const char *tollctl_dim_name(enum tollctl_dim d);
bool tollctl_dim_parse(const char *name, size_t len, enum tollctl_dim *d);

#endif
