/*
 * tollctl_export.c — `tollctl ledger export` (tollctl_export.h).
 *
 * One row per record, segment records left out. The columns are one
 * table below, shared by both formats, and are a stable contract
 * (docs/ledger.md, "Export columns"): new columns go at the end, none is
 * renamed or reordered. Each column turns a record into a cell (text, or
 * a bare JSON number or boolean); the CSV and JSON Lines writers only
 * escape cells.
 *
 * Segments are read with tollctl_segment_scan(), damaged stretches
 * stepped over with a warning; a write error on stdout stops the export
 * at once (exit 1) rather than produce a silently short file.
 */
#include "tools/tollctl_export.h"

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "core/money.h"
#include "ledger/record.h"
#include "tools/tollctl_out.h"
#include "tools/tollctl_scan.h"

/* ---- export columns ---- */

struct row {
	const struct ledger_rec *rec;
	uint32_t shard;              /* of the segment the record is in */
};

/* One value of a row: text, or a bare JSON number / boolean. */
struct cell {
	const char *p;
	size_t len;
	bool bare;
	char buf[48];
};

__attribute__((format(printf, 3, 4)))
static void cell_printf(struct cell *c, bool bare, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(c->buf, sizeof(c->buf), fmt, ap);
	va_end(ap);
	c->p = c->buf;
	c->len = n < 0 ? 0 : (size_t)n < sizeof(c->buf) ? (size_t)n : sizeof(c->buf) - 1;
	c->bare = bare;
}

static void cell_money(struct cell *c, int64_t usd)
{
	c->len = money_format(usd, c->buf, sizeof(c->buf));
	c->p = c->buf;
	c->bare = false;
}

static void cell_bool(struct cell *c, bool v)
{
	cell_printf(c, true, "%s", v ? "true" : "false");
}

static void col_time(const struct row *r, struct cell *c)
{
	int n = tollctl_time_format(r->rec->time_ms, c->buf, sizeof(c->buf));
	c->p = c->buf;
	c->len = n < 0 ? 0 : (size_t)n < sizeof(c->buf) ? (size_t)n : sizeof(c->buf) - 1;
	c->bare = false;
}

static void col_kind(const struct row *r, struct cell *c)
{
	const char *name = ledger_kind_name(r->rec->kind);
	if (name)
		cell_printf(c, false, "%s", name);
	else
		cell_printf(c, false, "%u", r->rec->kind);
}

static void col_decision(const struct row *r, struct cell *c)
{
	cell_printf(c, false, "d-%012llx", (unsigned long long)r->rec->decision);
}

static void col_shard(const struct row *r, struct cell *c)
{
	cell_printf(c, true, "%u", r->shard);
}

static void col_status(const struct row *r, struct cell *c)
{
	cell_printf(c, true, "%u", r->rec->status);
}

/* The names by index, spelled out here rather than taken from the config
 * module: they are part of the export contract and must not drift. */
static void col_mode(const struct row *r, struct cell *c)
{
	static const char *const modes[] = { "advisory_estimate", "soft_gate", "hard_gate",
					     "actuals_only" };
	if (r->rec->mode < sizeof(modes) / sizeof(modes[0]))
		cell_printf(c, false, "%s", modes[r->rec->mode]);
	else
		cell_printf(c, false, "%u", r->rec->mode);
}

static void col_stream(const struct row *r, struct cell *c)
{
	cell_bool(c, r->rec->flags & LEDGER_F_STREAM);
}

static void col_cut(const struct row *r, struct cell *c)
{
	cell_bool(c, r->rec->flags & LEDGER_F_CUT);
}

static void col_input(const struct row *r, struct cell *c)
{
	cell_printf(c, true, "%llu", (unsigned long long)r->rec->input);
}

static void col_output(const struct row *r, struct cell *c)
{
	cell_printf(c, true, "%llu", (unsigned long long)r->rec->output);
}

static void col_cached(const struct row *r, struct cell *c)
{
	cell_printf(c, true, "%llu", (unsigned long long)r->rec->cached);
}

static void col_usd(const struct row *r, struct cell *c)
{
	cell_money(c, r->rec->usd);
}

static void col_reserved(const struct row *r, struct cell *c)
{
	cell_money(c, r->rec->reserved);
}

static void col_run_limit(const struct row *r, struct cell *c)
{
	cell_money(c, r->rec->run_limit);
}

/* The export columns, in order. `get` NULL: the record's text `field`. */
static const struct column {
	const char *name;
	void (*get)(const struct row *r, struct cell *c);
	enum ledger_field field;
} columns[] = {
	{ "time", col_time, 0 },
	{ "kind", col_kind, 0 },
	{ "decision_id", col_decision, 0 },
	{ "shard", col_shard, 0 },
	{ "run", NULL, LF_RUN },
	{ "key", NULL, LF_KEY },
	{ "user", NULL, LF_USER },
	{ "team", NULL, LF_TEAM },
	{ "org", NULL, LF_ORG },
	{ "provider", NULL, LF_PROVIDER },
	{ "model", NULL, LF_MODEL },
	{ "requested_model", NULL, LF_REQUESTED },
	{ "prices_version", NULL, LF_PRICES },
	{ "tags", NULL, LF_TAGS },
	{ "code", NULL, LF_CODE },
	{ "peer_team", NULL, LF_PEER },
	{ "status", col_status, 0 },
	{ "mode", col_mode, 0 },
	{ "stream", col_stream, 0 },
	{ "cut", col_cut, 0 },
	{ "input_tokens", col_input, 0 },
	{ "output_tokens", col_output, 0 },
	{ "cached_tokens", col_cached, 0 },
	{ "usd", col_usd, 0 },
	{ "reserved_usd", col_reserved, 0 },
	{ "run_limit_usd", col_run_limit, 0 },
	{ "grant", NULL, LF_GRANT },
	{ "grantee_key", NULL, LF_GRANTEE },
};
#define N_COLUMNS (sizeof(columns) / sizeof(columns[0]))

static void column_cell(const struct column *col, const struct row *r, struct cell *c)
{
	if (col->get) {
		col->get(r, c);
		return;
	}
	c->p = r->rec->f[col->field].p;
	c->len = r->rec->f[col->field].len;
	c->bare = false;
}

static void csv_header(FILE *f)
{
	for (size_t i = 0; i < N_COLUMNS; i++)
		fprintf(f, "%s%s", i ? "," : "", columns[i].name);
	putc('\n', f);
}

static void csv_row(FILE *f, const struct row *r)
{
	for (size_t i = 0; i < N_COLUMNS; i++) {
		struct cell c;
		column_cell(&columns[i], r, &c);
		if (i)
			putc(',', f);
		tollctl_csv_field(f, c.p, c.len);
	}
	putc('\n', f);
}

static void json_row(FILE *f, const struct row *r)
{
	for (size_t i = 0; i < N_COLUMNS; i++) {
		struct cell c;
		column_cell(&columns[i], r, &c);
		fprintf(f, "%s\"%s\":", i ? "," : "{", columns[i].name);
		if (c.bare)
			fwrite(c.p, 1, c.len, f);
		else
			tollctl_json_str(f, c.p, c.len);
	}
	fputs("}\n", f);
}


/* ---- the records ---- */

struct export_ctx {
	FILE *out;
	bool jsonl;
	const struct tollctl_range *range;
	uint32_t shard;
};

/* The segment scan's callback: one row; -EIO stops the scan when the
 * output fails (a full disk, a closed pipe). */
static int export_rec(const struct ledger_rec *rec, size_t off, void *arg)
{
	struct export_ctx *x = arg;
	if (rec->kind == LEDGER_SEGMENT || !tollctl_in_range(x->range, rec->time_ms))
		return 0;
	struct row r = { rec, x->shard };
	(x->jsonl ? json_row : csv_row)(x->out, &r);
	return ferror(x->out) ? -EIO : 0;
}

/* One segment exported. 0, 2 when damaged (warned), 1 on an error. */
static int export_segment(struct tollctl_ledger *l, size_t i, struct export_ctx *x)
{
	struct ledger_scan scan;
	x->shard = l->segs[i].shard;
	int rc = tollctl_segment_scan(l, i, export_rec, x, &scan);
	if (rc == -EIO && ferror(x->out)) {
		fprintf(stderr, "tollctl: writing the export: %s\n", strerror(errno));
		return 1;
	}
	if (rc) {
		fprintf(stderr, "tollctl: %s/%s: %s\n", l->dir, l->segs[i].name, strerror(-rc));
		return 1;
	}
	return tollctl_segment_warn(l, i, &scan);
}

int tollctl_export(const char *dir, bool jsonl, const struct tollctl_range *range)
{
	struct tollctl_ledger l;
	if (tollctl_ledger_open(&l, dir))
		return 1;
	static char obuf[1 << 16];
	setvbuf(stdout, obuf, _IOFBF, sizeof(obuf));
	struct export_ctx x = { .out = stdout, .jsonl = jsonl, .range = range };
	if (!jsonl)
		csv_header(stdout);
	int status = 0;
	for (size_t i = 0; i < l.n && status != 1; i++) {
		int rc = export_segment(&l, i, &x);
		status = rc > status ? rc : status;
	}
	if (fflush(stdout) && status != 1) {
		fprintf(stderr, "tollctl: writing the export: %s\n", strerror(errno));
		status = 1;
	}
	tollctl_ledger_close(&l);
	return status;
}

