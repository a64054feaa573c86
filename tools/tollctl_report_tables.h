/*
 * tollctl_report_tables.h — the sections of `tollctl report`, made from
 * what tollctl_agg added up: sorted, cut to --top, with shares, costs per
 * outcome, p99s and ratios worked out. Printing them is the table
 * module's job (tollctl_table.h); this decides what is in them.
 */
#ifndef TOLLGATE_TOLLCTL_REPORT_TABLES_H
#define TOLLGATE_TOLLCTL_REPORT_TABLES_H

#include <stdbool.h>
#include <stddef.h>

#include "tools/tollctl_agg.h"
#include "tools/tollctl_table.h"

enum tollctl_section {
	SEC_GROUPS,       /* spend by the --by dimensions */
	SEC_TRANSFERS,    /* chargebacks: debited team → credited team */
	SEC_TEAMS,        /* chargebacks: per team, debited, credited, net */
	SEC_OUTCOMES,     /* cost per outcome */
	SEC_OUTLIERS,     /* runs above their task type's p99 cost */
	SEC_RATIOS,       /* input:output tokens per task type */
	SEC_TOTALS,       /* one row */
	SEC_COUNT
};

struct tollctl_group_order;
struct tollctl_team_net;
struct tollctl_outcome_sum;
struct tollctl_run_cost;

/* The sections, and the sorted rows their tables are printed from. The
 * tables' row functions read this struct: it must not move while they
 * are printed. */
struct tollctl_report_tables {
	struct tollctl_table t[SEC_COUNT];
	const struct tollctl_agg *a;
	const char *group_cols[DIM_COUNT + 7];
	char group_title[128];
	struct tollctl_group_order *groups;       /* the rows, best first */
	uint32_t *transfers;                      /* agg.chargebacks ids */
	struct tollctl_team_net *teams;
	struct tollctl_outcome_sum *outcomes;
	struct tollctl_run_cost *outliers;
	uint32_t *tasks;                          /* agg.tasks ids */
	uint64_t runs, outcome_runs;              /* for the totals */
	size_t segments, damaged;
	bool overflow;    /* a money sum made here was held at its limit */
};

struct tollctl_report_opts {
	size_t top;       /* group rows at most; 0: all */
	bool total_row;   /* the groups end with a total row (the text format) */
	size_t segments, damaged;   /* read, and found damaged (for the totals) */
};

/* Makes every section of rt from a (which must outlive rt: text cells
 * point into its tables). 0 or -ENOMEM (nothing to free then). */
int tollctl_report_tables(struct tollctl_report_tables *rt, const struct tollctl_agg *a,
			  const struct tollctl_report_opts *o);
void tollctl_report_tables_free(struct tollctl_report_tables *rt);

#endif
