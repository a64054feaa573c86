/*
 * tollctl_report_tables.c — the sections of `tollctl report`
 * (tollctl_report_tables.h).
 *
 * Everything here runs once, after the ledger is read, over the groups,
 * runs, task types and team pairs it produced. Each section is a sorted
 * array of what its rows show (ids into the agg's tables, or small
 * structs worked out here) and a row function that spells row r as cells
 * when the table is printed; nothing is copied per cell. The group sort
 * compares a compact array of what it sorts by, so that sorting millions
 * of groups chases no pointer per comparison.
 *
 * Money stays int64 micro-USD: a share of total is integer basis points,
 * a cost per outcome is an integer division rounded half away from zero,
 * a p99 is a nearest-rank index computed in integers. The token ratio, a
 * quotient of counts, is kept as integer hundredths.
 *
 * Orders (so that two runs over the same ledger print the same bytes):
 * groups by spend, then calls, then refusals (all descending), then first
 * seen first (ledger order: comparing the key values of millions of tied
 * groups took longer than reading the whole ledger); transfers by amount
 * descending, then team names; teams, outcomes and task types by name;
 * outliers by task type, then cost descending, then run id.
 */
#include "tools/tollctl_report_tables.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A group's place in the order: copies of what it is sorted by. */
struct tollctl_group_order {
	int64_t spend;
	uint32_t calls, refused;   /* held at UINT32_MAX */
	uint32_t id;               /* agg.groups */
};

struct tollctl_team_net {
	uint32_t team;      /* agg.strs */
	bool seen;
	int64_t debited, credited;
};

struct tollctl_outcome_sum {
	uint32_t code;      /* agg.strs */
	uint64_t runs;
	int64_t spend;
};

struct tollctl_run_cost {
	uint32_t task;      /* agg.tasks */
	uint32_t run;       /* agg.runs */
	int64_t cost;
	int64_t p99;        /* of its task type, once known */
};

/* ---- arithmetic ---- */

static void add_usd(struct tollctl_report_tables *rt, int64_t *sum, int64_t v)
{
	if (__builtin_add_overflow(*sum, v, sum)) {
		*sum = v < 0 ? INT64_MIN : INT64_MAX;
		rt->overflow = true;
	}
}

/* n / d rounded half away from zero (d > 0). */
static int64_t div_round(__int128 n, __int128 d)
{
	return (int64_t)(n >= 0 ? (n + d / 2) / d : -((-n + d / 2) / d));
}

/* part of whole in basis points; 0 when whole is not positive. */
static int64_t share_bp(int64_t part, int64_t whole)
{
	return whole > 0 ? div_round((__int128)part * 10000, whole) : 0;
}

/* input:output as hundredths of x in "x:1"; -1 without output tokens. */
static int64_t ratio_hundredths(uint64_t input, uint64_t output)
{
	if (!output)
		return -1;
	unsigned __int128 r = ((unsigned __int128)input * 100 + output / 2) / output;
	return r > INT64_MAX ? INT64_MAX : (int64_t)r;
}

/* ---- names ---- */

static const struct tollctl_report_tables *ctx_of(const struct tollctl_table *t)
{
	return t->ctx;
}

static struct tollctl_intern_key str(const struct tollctl_agg *a, uint32_t id)
{
	return tollctl_intern_key(&a->strs, id);
}

static int key_cmp(struct tollctl_intern_key x, struct tollctl_intern_key y)
{
	int c = memcmp(x.p, y.p, x.len < y.len ? x.len : y.len);
	return c ? c : (x.len > y.len) - (x.len < y.len);
}

static void cell_key(struct tollctl_cell *c, struct tollctl_intern_key k)
{
	tollctl_cell_text(c, k.p, k.len);
}

static void section(struct tollctl_report_tables *rt, enum tollctl_section s,
		    const char *name, const char *title, const char *const *cols, size_t ncols,
		    void (*row)(const struct tollctl_table *, size_t, struct tollctl_cell *))
{
	rt->t[s] = (struct tollctl_table){ .name = name, .title = title, .cols = cols,
					   .ncols = ncols, .row = row, .ctx = rt };
}

/* ---- groups ---- */

static uint64_t group_part(const struct tollctl_agg *a, uint32_t id, unsigned i)
{
	uint64_t v;
	memcpy(&v, tollctl_intern_key(&a->groups, id).p + i * sizeof(v), sizeof(v));
	return v;
}

static int group_cmp(const void *pa, const void *pb)
{
	const struct tollctl_group_order *x = pa, *y = pb;
	if (x->spend != y->spend)
		return x->spend > y->spend ? -1 : 1;
	if (x->calls != y->calls)
		return x->calls > y->calls ? -1 : 1;
	if (x->refused != y->refused)
		return x->refused > y->refused ? -1 : 1;
	return (x->id > y->id) - (x->id < y->id);
}

static uint32_t clamp32(uint64_t v)
{
	return v > UINT32_MAX ? UINT32_MAX : (uint32_t)v;
}

/* The numbers of a group (or the total) from column n_by on. */
static void group_numbers(struct tollctl_cell *c, const struct tollctl_group *g,
			  int64_t total)
{
	tollctl_cell_count(&c[0], g->calls);
	tollctl_cell_num(&c[1], TC_MONEY, g->spend);
	tollctl_cell_count(&c[2], g->input);
	tollctl_cell_count(&c[3], g->output);
	tollctl_cell_count(&c[4], g->cached);
	tollctl_cell_count(&c[5], g->refused);
	tollctl_cell_num(&c[6], TC_SHARE, share_bp(g->spend, total));
}

static void group_row(const struct tollctl_table *t, size_t r, struct tollctl_cell *c)
{
	const struct tollctl_agg *a = ctx_of(t)->a;
	if (t->footer && r == t->rows - 1) {
		struct tollctl_group g = { a->tot.spend, a->tot.calls, a->tot.input,
					   a->tot.output, a->tot.cached, a->tot.refused };
		tollctl_cell_text(&c[0], "total", 5);
		group_numbers(c + a->n_by, &g, a->tot.spend);
		return;
	}
	uint32_t id = ctx_of(t)->groups[r].id;
	for (unsigned i = 0; i < a->n_by; i++) {
		uint64_t v = group_part(a, id, i);
		if (a->by[i] == DIM_DAY)
			tollctl_cell_num(&c[i], TC_DAY, (int64_t)v);
		else
			cell_key(&c[i], str(a, (uint32_t)v));
	}
	group_numbers(c + a->n_by, tollctl_intern_val(&a->groups, id), a->tot.spend);
}

static int make_groups(struct tollctl_report_tables *rt, const struct tollctl_report_opts *o)
{
	static const char *const numbers[] = { "calls", "spend_usd", "input_tokens",
		"output_tokens", "cached_tokens", "refused", "share" };
	const struct tollctl_agg *a = rt->a;
	size_t n = 0, len = 0;
	for (unsigned i = 0; i < a->n_by; i++) {
		rt->group_cols[n++] = tollctl_dim_name(a->by[i]);
		len += (size_t)snprintf(rt->group_title + len, sizeof(rt->group_title) - len,
					"%s%s", i ? ", " : "Spend by ", tollctl_dim_name(a->by[i]));
	}
	for (size_t i = 0; i < sizeof(numbers) / sizeof(numbers[0]); i++)
		rt->group_cols[n++] = numbers[i];
	section(rt, SEC_GROUPS, "groups", rt->group_title, rt->group_cols, n, group_row);

	uint32_t count = a->groups.n;
	rt->groups = malloc((count + 1) * sizeof(*rt->groups));
	if (!rt->groups)
		return -ENOMEM;
	for (uint32_t i = 0; i < count; i++) {
		const struct tollctl_group *g = tollctl_intern_val(&a->groups, i);
		rt->groups[i] = (struct tollctl_group_order){ g->spend, clamp32(g->calls),
							      clamp32(g->refused), i };
	}
	qsort(rt->groups, count, sizeof(*rt->groups), group_cmp);
	struct tollctl_table *t = &rt->t[SEC_GROUPS];
	t->rows = o->top && o->top < count ? o->top : count;
	if (o->total_row && count) {
		t->rows++;
		t->footer = 1;
	}
	return 0;
}

/* ---- chargebacks ---- */

static void transfer_key(const struct tollctl_agg *a, uint32_t id, uint32_t k[2])
{
	memcpy(k, tollctl_intern_key(&a->chargebacks, id).p, 2 * sizeof(k[0]));
}

static int transfer_cmp(const void *pa, const void *pb, void *arg)
{
	const struct tollctl_agg *a = arg;
	uint32_t x = *(const uint32_t *)pa, y = *(const uint32_t *)pb, kx[2], ky[2];
	const struct tollctl_chargeback *cx = tollctl_intern_val(&a->chargebacks, x);
	const struct tollctl_chargeback *cy = tollctl_intern_val(&a->chargebacks, y);
	if (cx->usd != cy->usd)
		return cx->usd > cy->usd ? -1 : 1;
	transfer_key(a, x, kx);
	transfer_key(a, y, ky);
	int c = key_cmp(str(a, kx[0]), str(a, ky[0]));
	return c ? c : key_cmp(str(a, kx[1]), str(a, ky[1]));
}

static void transfer_row(const struct tollctl_table *t, size_t r, struct tollctl_cell *c)
{
	const struct tollctl_agg *a = ctx_of(t)->a;
	uint32_t id = ctx_of(t)->transfers[r], k[2];
	const struct tollctl_chargeback *cb = tollctl_intern_val(&a->chargebacks, id);
	transfer_key(a, id, k);
	cell_key(&c[0], str(a, k[0]));
	cell_key(&c[1], str(a, k[1]));
	tollctl_cell_num(&c[2], TC_MONEY, cb->usd);
	tollctl_cell_count(&c[3], cb->count);
}

static void team_row(const struct tollctl_table *t, size_t r, struct tollctl_cell *c)
{
	const struct tollctl_team_net *tn = &ctx_of(t)->teams[r];
	int64_t net;
	if (__builtin_sub_overflow(tn->credited, tn->debited, &net))
		net = tn->credited < 0 ? INT64_MIN : INT64_MAX;
	cell_key(&c[0], str(ctx_of(t)->a, tn->team));
	tollctl_cell_num(&c[1], TC_MONEY, tn->debited);
	tollctl_cell_num(&c[2], TC_MONEY, tn->credited);
	tollctl_cell_num(&c[3], TC_MONEY, net);
}

static int team_cmp(const void *pa, const void *pb, void *arg)
{
	const struct tollctl_team_net *x = pa, *y = pb;
	return key_cmp(str(arg, x->team), str(arg, y->team));
}

/* What each team was debited and credited, the teams in name order. */
static int net_teams(struct tollctl_report_tables *rt)
{
	const struct tollctl_agg *a = rt->a;
	struct tollctl_team_net *v = calloc(a->strs.n + 1, sizeof(*v));
	if (!v)
		return -ENOMEM;
	for (uint32_t i = 0; i < a->chargebacks.n; i++) {
		uint32_t k[2];
		const struct tollctl_chargeback *cb = tollctl_intern_val(&a->chargebacks, i);
		transfer_key(a, i, k);
		v[k[0]].seen = v[k[1]].seen = true;
		add_usd(rt, &v[k[0]].debited, cb->usd);
		add_usd(rt, &v[k[1]].credited, cb->usd);
	}
	size_t n = 0;
	for (uint32_t i = 0; i < a->strs.n; i++) {
		if (v[i].seen) {
			v[n] = v[i];
			v[n++].team = i;
		}
	}
	qsort_r(v, n, sizeof(*v), team_cmp, (void *)a);
	rt->teams = v;
	rt->t[SEC_TEAMS].rows = n;
	return 0;
}

static int make_chargebacks(struct tollctl_report_tables *rt)
{
	static const char *const tcols[] = { "debit_team", "credit_team", "usd", "count" };
	static const char *const ncols[] = { "team", "debited_usd", "credited_usd", "net_usd" };
	section(rt, SEC_TRANSFERS, "chargebacks",
		"East-west chargebacks (debited team → credited team)", tcols, 4, transfer_row);
	section(rt, SEC_TEAMS, "chargeback_teams",
		"Chargebacks per team (net = credited − debited)", ncols, 4, team_row);
	const struct tollctl_agg *a = rt->a;
	uint32_t count = a->chargebacks.n;
	rt->transfers = malloc((count + 1) * sizeof(*rt->transfers));
	if (!rt->transfers)
		return -ENOMEM;
	for (uint32_t i = 0; i < count; i++)
		rt->transfers[i] = i;
	qsort_r(rt->transfers, count, sizeof(*rt->transfers), transfer_cmp, (void *)a);
	rt->t[SEC_TRANSFERS].rows = count;
	return net_teams(rt);
}

/* ---- outcomes ---- */

static void outcome_row(const struct tollctl_table *t, size_t r, struct tollctl_cell *c)
{
	const struct tollctl_outcome_sum *s = &ctx_of(t)->outcomes[r];
	cell_key(&c[0], str(ctx_of(t)->a, s->code));
	tollctl_cell_count(&c[1], s->runs);
	tollctl_cell_num(&c[2], TC_MONEY, s->spend);
	tollctl_cell_num(&c[3], TC_MONEY, div_round(s->spend, (__int128)s->runs));
}

static int outcome_cmp(const void *pa, const void *pb, void *arg)
{
	const struct tollctl_outcome_sum *x = pa, *y = pb;
	return key_cmp(str(arg, x->code), str(arg, y->code));
}

/* Each run's spend counted for its outcome (the one that won). */
static int make_outcomes(struct tollctl_report_tables *rt)
{
	static const char *const cols[] = { "outcome", "runs", "spend_usd",
					    "cost_per_outcome_usd" };
	section(rt, SEC_OUTCOMES, "outcomes", "Cost per outcome (spend of the runs with it / runs)",
		cols, 4, outcome_row);
	const struct tollctl_agg *a = rt->a;
	struct tollctl_outcome_sum *v = calloc(a->strs.n + 1, sizeof(*v));
	if (!v)
		return -ENOMEM;
	for (uint32_t i = 0; i < a->runs.n; i++) {
		const struct tollctl_run *run = tollctl_intern_val(&a->runs, i);
		if (!run->outcome1)
			continue;
		v[run->outcome1 - 1].runs++;
		add_usd(rt, &v[run->outcome1 - 1].spend, run->spend);
		rt->outcome_runs++;
	}
	size_t n = 0;
	for (uint32_t i = 0; i < a->strs.n; i++) {
		if (v[i].runs) {
			v[n] = v[i];
			v[n++].code = i;
		}
	}
	qsort_r(v, n, sizeof(*v), outcome_cmp, (void *)a);
	rt->outcomes = v;
	rt->t[SEC_OUTCOMES].rows = n;
	return 0;
}

/* ---- outliers ---- */

/* By task type, then cost ascending: each task's runs in rank order. */
static int by_task_cost(const void *pa, const void *pb)
{
	const struct tollctl_run_cost *x = pa, *y = pb;
	if (x->task != y->task)
		return x->task < y->task ? -1 : 1;
	return (x->cost > y->cost) - (x->cost < y->cost);
}

/* The listing order: task name, cost descending, run id. */
static int outlier_cmp(const void *pa, const void *pb, void *arg)
{
	const struct tollctl_agg *a = arg;
	const struct tollctl_run_cost *x = pa, *y = pb;
	int c = key_cmp(tollctl_intern_key(&a->tasks, x->task),
			tollctl_intern_key(&a->tasks, y->task));
	if (c || x->cost != y->cost)
		return c ? c : x->cost > y->cost ? -1 : 1;
	return key_cmp(tollctl_intern_key(&a->runs, x->run), tollctl_intern_key(&a->runs, y->run));
}

/*
 * v[0..n) sorted by_task_cost: the runs above their task type's p99
 * moved to the front; returns how many. The p99 of n runs is the
 * nearest-rank one, the ceil(0.99 n)-th smallest cost, in integers:
 * index (99 n + 99) / 100 - 1. A task type with fewer than two runs has
 * no outliers.
 */
static size_t pick_outliers(struct tollctl_run_cost *v, size_t n)
{
	size_t out = 0;
	for (size_t i = 0, j; i < n; i = j) {
		for (j = i; j < n && v[j].task == v[i].task; j++)
			;
		size_t runs = j - i;
		if (runs < 2)
			continue;
		int64_t p99 = v[i + (99 * runs + 99) / 100 - 1].cost;
		for (size_t k = i; k < j; k++) {
			if (v[k].cost <= p99)
				continue;
			v[out] = v[k];
			v[out++].p99 = p99;
		}
	}
	return out;
}

static void outlier_row(const struct tollctl_table *t, size_t r, struct tollctl_cell *c)
{
	const struct tollctl_agg *a = ctx_of(t)->a;
	const struct tollctl_run_cost *o = &ctx_of(t)->outliers[r];
	const struct tollctl_run *run = tollctl_intern_val(&a->runs, o->run);
	cell_key(&c[0], tollctl_intern_key(&a->runs, o->run));
	cell_key(&c[1], str(a, run->key1 - 1));
	cell_key(&c[2], tollctl_intern_key(&a->tasks, o->task));
	tollctl_cell_num(&c[3], TC_MONEY, o->cost);
	tollctl_cell_num(&c[4], TC_MONEY, o->p99);
}

/* Runs are those with spend records: their task type is their first
 * call's. */
static int make_outliers(struct tollctl_report_tables *rt)
{
	static const char *const cols[] = { "run", "key", "task", "cost_usd", "p99_usd" };
	section(rt, SEC_OUTLIERS, "outliers",
		"Trajectory outliers (runs costing more than the p99 of their task type)",
		cols, 5, outlier_row);
	const struct tollctl_agg *a = rt->a;
	struct tollctl_run_cost *v = malloc((a->runs.n + 1) * sizeof(*v));
	if (!v)
		return -ENOMEM;
	size_t n = 0;
	for (uint32_t i = 0; i < a->runs.n; i++) {
		const struct tollctl_run *run = tollctl_intern_val(&a->runs, i);
		if (run->calls)
			v[n++] = (struct tollctl_run_cost){ run->task1 - 1, i, run->spend, 0 };
	}
	rt->runs = n;
	qsort(v, n, sizeof(*v), by_task_cost);
	n = pick_outliers(v, n);
	qsort_r(v, n, sizeof(*v), outlier_cmp, (void *)a);
	rt->outliers = v;
	rt->t[SEC_OUTLIERS].rows = n;
	return 0;
}

/* ---- token ratios ---- */

static int task_cmp(const void *pa, const void *pb, void *arg)
{
	const struct tollctl_intern *tasks = arg;
	return key_cmp(tollctl_intern_key(tasks, *(const uint32_t *)pa),
		       tollctl_intern_key(tasks, *(const uint32_t *)pb));
}

static void ratio_row(const struct tollctl_table *t, size_t r, struct tollctl_cell *c)
{
	const struct tollctl_agg *a = ctx_of(t)->a;
	uint32_t id = ctx_of(t)->tasks[r];
	const struct tollctl_task *ts = tollctl_intern_val(&a->tasks, id);
	cell_key(&c[0], tollctl_intern_key(&a->tasks, id));
	tollctl_cell_count(&c[1], ts->calls);
	tollctl_cell_count(&c[2], ts->input);
	tollctl_cell_count(&c[3], ts->output);
	tollctl_cell_num(&c[4], TC_RATIO, ratio_hundredths(ts->input, ts->output));
}

static int make_ratios(struct tollctl_report_tables *rt)
{
	static const char *const cols[] = { "task", "calls", "input_tokens", "output_tokens",
					    "ratio" };
	section(rt, SEC_RATIOS, "token_ratios", "Input:output tokens per task type", cols, 5,
		ratio_row);
	const struct tollctl_agg *a = rt->a;
	uint32_t n = a->tasks.n;
	rt->tasks = malloc((n + 1) * sizeof(*rt->tasks));
	if (!rt->tasks)
		return -ENOMEM;
	for (uint32_t i = 0; i < n; i++)
		rt->tasks[i] = i;
	qsort_r(rt->tasks, n, sizeof(*rt->tasks), task_cmp, (void *)&a->tasks);
	rt->t[SEC_RATIOS].rows = n;
	return 0;
}

/* ---- totals ---- */

static void totals_row(const struct tollctl_table *t, size_t r, struct tollctl_cell *c)
{
	const struct tollctl_report_tables *rt = ctx_of(t);
	const struct tollctl_agg_totals *tot = &rt->a->tot;
	const uint64_t counts[] = { tot->records, rt->segments, rt->damaged, tot->calls };
	for (size_t i = 0; i < 4; i++)
		tollctl_cell_count(&c[i], counts[i]);
	tollctl_cell_num(&c[4], TC_MONEY, tot->spend);
	const uint64_t more[] = { tot->input, tot->output, tot->cached, tot->refused,
				  rt->a->groups.n, rt->runs, tot->outcomes, rt->outcome_runs,
				  rt->t[SEC_OUTLIERS].rows, tot->chargebacks };
	size_t n = sizeof(more) / sizeof(more[0]);
	for (size_t i = 0; i < n; i++)
		tollctl_cell_count(&c[5 + i], more[i]);
	tollctl_cell_num(&c[5 + n], TC_MONEY, tot->chargeback_usd);
}

static void make_totals(struct tollctl_report_tables *rt)
{
	static const char *const cols[] = { "records", "segments", "damaged_segments", "calls",
		"spend_usd", "input_tokens", "output_tokens", "cached_tokens", "refused", "groups",
		"runs", "outcomes", "outcome_runs", "outliers", "chargebacks", "chargeback_usd" };
	section(rt, SEC_TOTALS, "totals", "Totals", cols, sizeof(cols) / sizeof(cols[0]),
		totals_row);
	rt->t[SEC_TOTALS].rows = 1;
}

int tollctl_report_tables(struct tollctl_report_tables *rt, const struct tollctl_agg *a,
			  const struct tollctl_report_opts *o)
{
	memset(rt, 0, sizeof(*rt));
	rt->a = a;
	rt->segments = o->segments;
	rt->damaged = o->damaged;
	int rc = make_groups(rt, o);
	rc = rc ? rc : make_chargebacks(rt);
	rc = rc ? rc : make_outcomes(rt);
	rc = rc ? rc : make_outliers(rt);
	rc = rc ? rc : make_ratios(rt);
	if (rc) {
		tollctl_report_tables_free(rt);
		return rc;
	}
	make_totals(rt);
	return 0;
}

void tollctl_report_tables_free(struct tollctl_report_tables *rt)
{
	free(rt->groups);
	free(rt->transfers);
	free(rt->teams);
	free(rt->outcomes);
	free(rt->outliers);
	free(rt->tasks);
	memset(rt, 0, sizeof(*rt));
}
