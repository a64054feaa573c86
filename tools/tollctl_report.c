/*
 * tollctl_report.c — `tollctl report` (tollctl_report.h): the command
 * line, the read of the ledger, and the report in the chosen format.
 *
 * The work is split by job: tollctl_scan.c reads each segment once, whole,
 * into one reused buffer and decodes records in place; tollctl_agg.c adds
 * every record up into hash tables (the hot path: no allocation, no
 * printing per record); tollctl_report_tables.c turns the sums into
 * sorted sections; tollctl_table.c prints a section as text, CSV or JSON.
 * This file only strings them together and owns the exit code.
 *
 * A report over a ledger that cannot be read whole is still worth having
 * when the damage is known: like export, damaged stretches are stepped
 * over with a warning naming the segment, and the exit code is 2. A
 * segment that cannot be read at all (or memory running out) yields no
 * report: its money would be missing without a trace in the numbers.
 */
#include "tools/tollctl_report.h"

#include <errno.h>
#include <getopt.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "core/money.h"
#include "tools/tollctl_agg.h"
#include "tools/tollctl_out.h"
#include "tools/tollctl_report_tables.h"
#include "tools/tollctl_scan.h"
#include "tools/tollctl_table.h"
#include "tools/tollctl_time.h"

#define USAGE "tollctl report --ledger DIR [--by DIM,…] [--from TIME] [--to TIME] " \
	      "[--format table|csv|json] [--json] [--top N]"

enum format { FMT_TABLE, FMT_CSV, FMT_JSON };

struct opts {
	const char *dir;
	enum tollctl_dim by[DIM_COUNT];
	unsigned n_by;
	struct tollctl_range range;
	enum format format;
	size_t top;                  /* 0: every group */
	bool help;
};

/* ---- command line ---- */

void tollctl_report_usage(FILE *f)
{
	fprintf(f, "       %s\n"
		   "         DIM: team user key model provider task app env day "
		   "(default team,model)\n", USAGE);
}

/* "team,model" into o->by. false (reported) on an unknown or repeated
 * dimension. */
static bool parse_by(struct opts *o, const char *arg)
{
	o->n_by = 0;
	for (const char *p = arg;; p++) {
		const char *end = strchr(p, ',');
		size_t len = end ? (size_t)(end - p) : strlen(p);
		enum tollctl_dim d;
		if (!tollctl_dim_parse(p, len, &d)) {
			fprintf(stderr, "tollctl: report: --by: '%.*s' is not one of team, user, "
				"key, model, provider, task, app, env, day\n", (int)len, p);
			return false;
		}
		for (unsigned i = 0; i < o->n_by; i++) {
			if (o->by[i] == d) {
				fprintf(stderr, "tollctl: report: --by names %s twice\n",
					tollctl_dim_name(d));
				return false;
			}
		}
		o->by[o->n_by++] = d;
		if (!end)
			return true;
		p = end;
	}
}

static bool parse_top(struct opts *o, const char *arg)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(arg, &end, 10);
	if (errno || *end || end == arg || arg[0] == '-' || !v) {
		fprintf(stderr, "tollctl: report: --top is a count of rows (1 or more), not "
			"'%s'\n", arg);
		return false;
	}
	o->top = (size_t)v;
	return true;
}

static bool parse_format(struct opts *o, const char *arg)
{
	static const char *const names[] = { [FMT_TABLE] = "table", [FMT_CSV] = "csv",
					     [FMT_JSON] = "json" };
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		if (!strcmp(arg, names[i])) {
			o->format = (enum format)i;
			return true;
		}
	}
	fprintf(stderr, "tollctl: report: --format is table, csv or json, not '%s'\n", arg);
	return false;
}

static const struct option long_opts[] = {
	{ "ledger", required_argument, NULL, 'l' },
	{ "by", required_argument, NULL, 'b' },
	{ "from", required_argument, NULL, 'F' },
	{ "to", required_argument, NULL, 'T' },
	{ "format", required_argument, NULL, 'f' },
	{ "json", no_argument, NULL, 'j' },
	{ "top", required_argument, NULL, 'n' },
	{ "help", no_argument, NULL, 'h' },
	{ NULL, 0, NULL, 0 },
};

static bool set_opt(struct opts *o, int c, const char *arg)
{
	switch (c) {
	case 'l':
		o->dir = arg;
		return true;
	case 'b':
		return parse_by(o, arg);
	case 'F':
	case 'T':
		return tollctl_range_set(&o->range, c == 'T', arg);
	case 'f':
		return parse_format(o, arg);
	case 'j':
		o->format = FMT_JSON;
		return true;
	case 'n':
		return parse_top(o, arg);
	case 'h':
		o->help = true;
		return true;
	}
	return false;
}

/* argv into o. false (reported) on a usage error. */
static bool parse_args(int argc, char **argv, struct opts *o)
{
	opterr = 0;
	optind = 1;
	int c;
	while ((c = getopt_long(argc, argv, "", long_opts, NULL)) != -1) {
		if (c == '?') {
			fprintf(stderr, "tollctl: report: unknown option, or one without its "
				"value: '%s'\n", argv[optind - 1 < argc ? optind - 1 : argc - 1]);
			return false;
		}
		if (!set_opt(o, c, optarg))
			return false;
	}
	if (optind < argc) {
		fprintf(stderr, "tollctl: report: unexpected '%s'\n", argv[optind]);
		return false;
	}
	if (o->help)
		return true;
	if (!o->dir) {
		fprintf(stderr, "tollctl: report: --ledger DIR is required\n");
		return false;
	}
	if (o->range.has_from && o->range.has_to && o->range.from_ms >= o->range.to_ms) {
		fprintf(stderr, "tollctl: report: --from must be before --to\n");
		return false;
	}
	return true;
}

/* ---- reading ---- */

/* Every segment of l into a. 0, 2 when damage was stepped over (warned),
 * 1 when a segment could not be read or memory ran out (reported). */
static int read_ledger(struct tollctl_ledger *l, struct tollctl_agg *a, size_t *damaged)
{
	int status = 0;
	*damaged = 0;
	for (size_t i = 0; i < l->n; i++) {
		struct ledger_scan scan;
		int rc = tollctl_segment_scan(l, i, tollctl_agg_rec, a, &scan);
		if (!rc)
			rc = tollctl_agg_flush(a);   /* before the buffer holds the next one */
		if (rc && a->err) {
			fprintf(stderr, "tollctl: report: out of memory\n");
			return 1;
		}
		if (rc) {
			fprintf(stderr, "tollctl: %s/%s: %s\n", l->dir, l->segs[i].name,
				strerror(-rc));
			return 1;
		}
		if (tollctl_segment_warn(l, i, &scan)) {
			status = 2;
			++*damaged;
		}
	}
	return status;
}

/* ---- printing ---- */

static void print_time(FILE *f, const char *label, bool has, int64_t ms, bool json)
{
	char buf[48];
	tollctl_time_format(ms, buf, sizeof(buf));
	if (json)
		fprintf(f, ",\"%s\":", label);
	if (json && !has)
		fputs("null", f);
	else if (json)
		fprintf(f, "\"%s\"", buf);
	else if (has)
		fprintf(f, ", %s %s", label, buf);
}

static void pad(FILE *f, size_t n)
{
	while (n--)
		putc(' ', f);
}

/* The transfers as aligned "debited → credited: amount (count)" lines:
 * one pass over the rows to measure, one to print. */
static void text_transfers(FILE *f, const struct tollctl_table *t)
{
	fprintf(f, "%s\n", t->title);
	if (!t->rows)
		fprintf(f, "  no chargebacks\n");
	size_t w[3] = { 0 };
	char usd[32];
	struct tollctl_cell c[4];
	for (size_t r = 0; r < t->rows; r++) {
		t->row(t, r, c);
		size_t n[3] = { tollctl_text_width(c[0].p, c[0].len),
				tollctl_text_width(c[1].p, c[1].len),
				money_format(c[2].v, usd, sizeof(usd)) };
		for (size_t i = 0; i < 3; i++)
			w[i] = n[i] > w[i] ? n[i] : w[i];
	}
	for (size_t r = 0; r < t->rows; r++) {
		t->row(t, r, c);
		size_t n = money_format(c[2].v, usd, sizeof(usd));
		fputs("  ", f);
		pad(f, w[0] - tollctl_text_plain(f, c[0].p, c[0].len));
		fputs(" → ", f);
		size_t w1 = tollctl_text_plain(f, c[1].p, c[1].len);
		fputs(":", f);
		pad(f, w[1] - w1 + 1 + w[2] - n);
		fprintf(f, "%s  (%llu chargeback%s)\n", usd, (unsigned long long)c[3].u,
			c[3].u == 1 ? "" : "s");
	}
	putc('\n', f);
}

static void print_text(FILE *f, const struct opts *o, const struct tollctl_report_tables *rt,
		       size_t segments)
{
	fprintf(f, "tollctl report: ledger %s, %zu segment%s", o->dir, segments,
		segments == 1 ? "" : "s");
	print_time(f, "from", o->range.has_from, o->range.from_ms, false);
	print_time(f, "to", o->range.has_to, o->range.to_ms, false);
	fputs("\n\n", f);
	tollctl_table_text(f, &rt->t[SEC_GROUPS], "no calls and no refusals");
	text_transfers(f, &rt->t[SEC_TRANSFERS]);
	if (rt->t[SEC_TRANSFERS].rows)
		tollctl_table_text(f, &rt->t[SEC_TEAMS], "");
	tollctl_table_text(f, &rt->t[SEC_OUTCOMES], "no outcomes");
	tollctl_table_text(f, &rt->t[SEC_OUTLIERS], "none");
	tollctl_table_text(f, &rt->t[SEC_RATIOS], "no calls");
	tollctl_table_text_kv(f, &rt->t[SEC_TOTALS]);
}

static void print_csv(FILE *f, const struct tollctl_report_tables *rt)
{
	for (size_t i = 0; i < SEC_COUNT; i++) {
		if (i)
			putc('\n', f);
		tollctl_table_csv(f, &rt->t[i]);
	}
}

static void print_json(FILE *f, const struct opts *o, const struct tollctl_report_tables *rt)
{
	fputs("{\"ledger\":", f);
	tollctl_json_str(f, o->dir, strlen(o->dir));
	fputs(",\"by\":[", f);
	for (unsigned i = 0; i < o->n_by; i++)
		fprintf(f, "%s\"%s\"", i ? "," : "", tollctl_dim_name(o->by[i]));
	putc(']', f);
	print_time(f, "from", o->range.has_from, o->range.from_ms, true);
	print_time(f, "to", o->range.has_to, o->range.to_ms, true);
	fputs(",\"groups\":", f);
	tollctl_table_json(f, &rt->t[SEC_GROUPS]);
	fputs(",\"chargebacks\":{\"transfers\":", f);
	tollctl_table_json(f, &rt->t[SEC_TRANSFERS]);
	fputs(",\"teams\":", f);
	tollctl_table_json(f, &rt->t[SEC_TEAMS]);
	fputs("},\"outcomes\":", f);
	tollctl_table_json(f, &rt->t[SEC_OUTCOMES]);
	fputs(",\"outliers\":", f);
	tollctl_table_json(f, &rt->t[SEC_OUTLIERS]);
	fputs(",\"token_ratios\":", f);
	tollctl_table_json(f, &rt->t[SEC_RATIOS]);
	fputs(",\"totals\":", f);
	tollctl_table_json_object(f, &rt->t[SEC_TOTALS]);
	fputs("}\n", f);
}

/* The report of a on stdout. 0, or 1 (reported) when out of memory or
 * stdout fails. */
static int print_report(const struct opts *o, const struct tollctl_agg *a, size_t segments,
			size_t damaged, bool *overflow)
{
	struct tollctl_report_opts ro = { o->top, o->format == FMT_TABLE, segments, damaged };
	struct tollctl_report_tables rt;
	if (tollctl_report_tables(&rt, a, &ro)) {
		fprintf(stderr, "tollctl: report: out of memory\n");
		return 1;
	}
	static char obuf[1 << 16];
	setvbuf(stdout, obuf, _IOFBF, sizeof(obuf));
	if (o->format == FMT_TABLE)
		print_text(stdout, o, &rt, segments);
	else if (o->format == FMT_CSV)
		print_csv(stdout, &rt);
	else
		print_json(stdout, o, &rt);
	*overflow = rt.overflow;
	tollctl_report_tables_free(&rt);
	if (fflush(stdout) || ferror(stdout)) {
		fprintf(stderr, "tollctl: writing the report: %s\n", strerror(errno));
		return 1;
	}
	return 0;
}

int tollctl_report_main(int argc, char **argv)
{
	struct opts o = { .by = { DIM_TEAM, DIM_MODEL }, .n_by = 2, .format = FMT_TABLE };
	if (!parse_args(argc, argv, &o)) {
		fprintf(stderr, "usage: %s\n", USAGE);
		return 1;
	}
	if (o.help) {
		printf("usage:\n");
		tollctl_report_usage(stdout);
		return 0;
	}
	struct tollctl_ledger l;
	if (tollctl_ledger_open(&l, o.dir))
		return 1;
	struct tollctl_agg a;
	if (tollctl_agg_init(&a, o.by, o.n_by, &o.range)) {
		fprintf(stderr, "tollctl: report: out of memory\n");
		tollctl_ledger_close(&l);
		return 1;
	}
	size_t damaged;
	bool overflow = false;
	int status = read_ledger(&l, &a, &damaged);
	if (status != 1 && print_report(&o, &a, l.n, damaged, &overflow))
		status = 1;
	if (status != 1 && (a.overflow || overflow)) {
		fprintf(stderr, "tollctl: warning: a money sum overflowed 64 bits and is shown at "
			"its limit\n");
		status = 2;
	}
	tollctl_agg_free(&a);
	tollctl_ledger_close(&l);
	return status;
}
