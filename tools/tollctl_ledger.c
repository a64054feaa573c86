/*
 * tollctl_ledger.c — `tollctl ledger verify` and `tollctl ledger export`
 * (tollctl_ledger.h): a ledger directory read directly, never modified.
 *
 * Both list the segments with ledger_segments_list() (by shard, then
 * seq) and read each with ledger_scan_file(), which maps it read-only and
 * classifies damage the way the daemon's start-up does: a torn tail of a
 * shard's last segment (a crash mid-write; the daemon truncates it at its
 * next start) and corruption (whole records after bad bytes, which the
 * daemon refuses without --ledger-repair). Scans run with skip_bad set,
 * so a damaged stretch is stepped over and everything readable counted or
 * exported; damage is reported, and exits 2 at the end.
 *
 * verify also checks that each segment opens with the LEDGER_SEGMENT
 * record the writer puts there, carrying LEDGER_SEGMENT_MAGIC and the
 * shard and seq of its own name (its decision and run_limit): a renamed
 * or stray file is noticed.
 *
 * export writes one row per record, segment records left out. Its columns
 * are one table below, shared by both formats, and are a stable contract
 * (docs/ledger.md, "Export columns"): new columns go at the end, none is
 * renamed or reordered.
 */
#include "tools/tollctl_ledger.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/money.h"
#include "ledger/record.h"
#include "ledger/segment.h"

#define MS_PER_DAY 86400000LL

enum format { FMT_CSV, FMT_JSONL };

struct opts {
	const char *dir;
	bool json;                   /* verify: one JSON document */
	enum format format;          /* export */
	bool has_from, has_to;
	int64_t from_ms, to_ms;      /* export: [from, to) on record time */
};

/* ---- dates: proleptic Gregorian, UTC, no libc time zone involved ---- */

/* Days since 1970-01-01 of y-m-d (H. Hinnant's days_from_civil). */
static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
	y -= m <= 2;
	int64_t era = (y >= 0 ? y : y - 399) / 400;
	unsigned yoe = (unsigned)(y - era * 400);
	unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
	unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
	return era * 146097 + (int64_t)doe - 719468;
}

/* The inverse of days_from_civil, for any int64 day count a record holds. */
static void civil_from_days(int64_t z, int64_t *y, unsigned *m, unsigned *d)
{
	z += 719468;
	int64_t era = (z >= 0 ? z : z - 146096) / 146097;
	unsigned doe = (unsigned)(z - era * 146097);
	unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
	unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
	unsigned mp = (5 * doy + 2) / 153;
	*d = doy - (153 * mp + 2) / 5 + 1;
	*m = mp < 10 ? mp + 3 : mp - 9;
	*y = (int64_t)yoe + era * 400 + (*m <= 2);
}

/* "2026-11-23T16:23:56.232Z" for UTC milliseconds ms; returns the length. */
static int format_time(int64_t ms, char *out, size_t cap)
{
	int64_t days = ms / MS_PER_DAY, rem = ms % MS_PER_DAY, y;
	if (rem < 0) {
		rem += MS_PER_DAY;
		days--;
	}
	unsigned m, d, r = (unsigned)rem;
	civil_from_days(days, &y, &m, &d);
	return snprintf(out, cap, "%04lld-%02u-%02uT%02u:%02u:%02u.%03uZ", (long long)y, m, d,
			r / 3600000, r / 60000 % 60, r / 1000 % 60, r % 1000);
}

static bool leap(unsigned y)
{
	return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

static unsigned month_days(unsigned y, unsigned m)
{
	static const unsigned char days[] = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
	return days[m - 1] + (m == 2 && leap(y));
}

/* Exactly n digits at *s into *v; advances *s only on success. */
static bool digits(const char **s, int n, unsigned *v)
{
	unsigned x = 0;
	for (int i = 0; i < n; i++) {
		if ((*s)[i] < '0' || (*s)[i] > '9')
			return false;
		x = x * 10 + (unsigned)((*s)[i] - '0');
	}
	*s += n;
	*v = x;
	return true;
}

/* The character c at *s, stepped over. */
static bool lit(const char **s, char c)
{
	if (**s != c)
		return false;
	(*s)++;
	return true;
}

/* "HH:MM[:SS[.fff…]]" into milliseconds of the day. */
static bool parse_clock(const char **s, int64_t *ms)
{
	unsigned h, mi, sec = 0, frac = 0;
	if (!digits(s, 2, &h) || !lit(s, ':') || !digits(s, 2, &mi) || h > 23 || mi > 59)
		return false;
	if (lit(s, ':') && (!digits(s, 2, &sec) || sec > 59))
		return false;
	if (lit(s, '.')) {
		int n = 0;
		for (; **s >= '0' && **s <= '9'; (*s)++, n++)
			if (n < 3)
				frac = frac * 10 + (unsigned)(**s - '0');
		if (!n)
			return false;
		for (; n < 3; n++)
			frac *= 10;
	}
	*ms = ((int64_t)h * 3600 + mi * 60 + sec) * 1000 + frac;
	return true;
}

/* "", "Z", "+HH:MM", "-HHMM" or "+HH" into milliseconds east of UTC. */
static bool parse_zone(const char **s, int64_t *ms)
{
	*ms = 0;
	if (!**s || lit(s, 'Z'))
		return true;
	int sign = **s == '+' ? 1 : **s == '-' ? -1 : 0;
	unsigned h, m = 0;
	if (!sign)
		return false;
	(*s)++;
	if (!digits(s, 2, &h))
		return false;
	if (**s) {
		lit(s, ':');
		if (!digits(s, 2, &m))
			return false;
	}
	if (h > 23 || m > 59)
		return false;
	*ms = sign * ((int64_t)h * 3600 + m * 60) * 1000;
	return true;
}

/*
 * An ISO 8601 time into UTC milliseconds: "YYYY-MM-DD", optionally
 * followed by "T" (or a space) and "HH:MM[:SS[.fff]]", then an optional
 * zone ("Z", "+02:00", "-0500"); without one the time is UTC.
 */
static bool parse_time(const char *s, int64_t *out)
{
	unsigned y, m, d;
	int64_t clock = 0, zone;
	if (!digits(&s, 4, &y) || !lit(&s, '-') || !digits(&s, 2, &m) || !lit(&s, '-') ||
	    !digits(&s, 2, &d) || m < 1 || m > 12 || d < 1 || d > month_days(y, m))
		return false;
	if ((lit(&s, 'T') || lit(&s, ' ')) && !parse_clock(&s, &clock))
		return false;
	if (!parse_zone(&s, &zone) || *s)
		return false;
	*out = days_from_civil(y, m, d) * MS_PER_DAY + clock - zone;
	return true;
}

/* ---- JSON and CSV text ---- */

/* The length of the valid UTF-8 sequence at p[0..n), 0 if there is none. */
static size_t utf8_len(const unsigned char *p, size_t n)
{
	uint32_t cp, min;
	size_t len;
	if (p[0] < 0x80)
		return 1;
	if (p[0] >= 0xc2 && p[0] <= 0xdf) {
		len = 2, cp = p[0] & 0x1f, min = 0x80;
	} else if ((p[0] & 0xf0) == 0xe0) {
		len = 3, cp = p[0] & 0x0f, min = 0x800;
	} else if (p[0] >= 0xf0 && p[0] <= 0xf4) {
		len = 4, cp = p[0] & 0x07, min = 0x10000;
	} else {
		return 0;
	}
	if (n < len)
		return 0;
	for (size_t i = 1; i < len; i++) {
		if ((p[i] & 0xc0) != 0x80)
			return 0;
		cp = cp << 6 | (p[i] & 0x3f);
	}
	return cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff) ? 0 : len;
}

/* p[0..n) as a JSON string: quotes and backslashes escaped, control
 * characters as \u00XX, bytes that are not UTF-8 as U+FFFD. */
static void json_str(FILE *f, const char *p, size_t n)
{
	const unsigned char *u = (const unsigned char *)p;
	putc('"', f);
	for (size_t i = 0; i < n;) {
		size_t k = utf8_len(u + i, n - i);
		if (u[i] == '"' || u[i] == '\\')
			fprintf(f, "\\%c", u[i]);
		else if (u[i] < 0x20)
			fprintf(f, "\\u%04x", u[i]);
		else if (!k)
			fputs("\\ufffd", f);
		else
			fwrite(u + i, 1, k, f);
		i += k ? k : 1;
	}
	putc('"', f);
}

static bool csv_needs_quotes(const char *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (p[i] == ',' || p[i] == '"' || p[i] == '\r' || p[i] == '\n')
			return true;
	return false;
}

/* p[0..n) as UTF-8, bytes that are not UTF-8 as U+FFFD, quotes doubled
 * (a field with a quote is always quoted). */
static void csv_text(FILE *f, const char *p, size_t n)
{
	const unsigned char *u = (const unsigned char *)p;
	for (size_t i = 0; i < n;) {
		size_t k = utf8_len(u + i, n - i);
		if (!k)
			fputs("\xef\xbf\xbd", f);
		else if (u[i] == '"')
			fputs("\"\"", f);
		else
			fwrite(u + i, 1, k, f);
		i += k ? k : 1;
	}
}

/* p[0..n) as one RFC 4180 field: quoted only when it holds a comma, a
 * quote, CR or LF. Other control characters are written as they are. */
static void csv_field(FILE *f, const char *p, size_t n)
{
	bool quoted = csv_needs_quotes(p, n);
	if (quoted)
		putc('"', f);
	csv_text(f, p, n);
	if (quoted)
		putc('"', f);
}

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
	int n = format_time(r->rec->time_ms, c->buf, sizeof(c->buf));
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
		csv_field(f, c.p, c.len);
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
			json_str(f, c.p, c.len);
	}
	fputs("}\n", f);
}

/* ---- segments ---- */

static const char *damage_name(enum ledger_damage d)
{
	return d == LEDGER_CLEAN ? "clean" : d == LEDGER_TORN_TAIL ? "torn_tail" : "corrupt";
}

/* What is wrong with a damaged segment and what the daemon will do about
 * it, on f (no newline). A torn tail in a segment that is not its shard's
 * last counts as corruption (no crash leaves one there); it is the only
 * corruption that skips nothing. */
static void describe_damage(FILE *f, const struct ledger_scan *s)
{
	unsigned long long at = s->bad_offset, tail = s->size - s->good_end;
	if (s->damage == LEDGER_TORN_TAIL)
		fprintf(f, "torn tail at byte %llu: %llu bytes after the last whole record (a "
			"write cut short; the daemon truncates a torn tail at its next start)",
			at, tail);
	else if (!s->skipped)
		fprintf(f, "corrupt: torn tail at byte %llu in a segment that is not its shard's "
			"last (the daemon refuses to start without --ledger-repair, which cuts "
			"it off)", at);
	else
		fprintf(f, "corrupt at byte %llu: %llu bytes skipped to the next whole record "
			"(the daemon refuses to start without --ledger-repair, which cuts the "
			"damage out)", at, (unsigned long long)s->skipped);
}

/* Opens dir read-only and lists its segments. 0, or 1 (reported). */
static int open_ledger(const char *dir, int *dir_fd, struct ledger_segment **segs, size_t *n)
{
	*dir_fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (*dir_fd < 0) {
		fprintf(stderr, "tollctl: ledger directory %s: %s\n", dir, strerror(errno));
		return 1;
	}
	int rc = ledger_segments_list(*dir_fd, segs, n);
	if (rc) {
		fprintf(stderr, "tollctl: listing %s: %s\n", dir, strerror(-rc));
		close(*dir_fd);
		return 1;
	}
	return 0;
}

/* ---- verify ---- */

enum header { HDR_OK, HDR_EMPTY, HDR_MISSING, HDR_MAGIC, HDR_MISNAMED };

static const char *const header_names[] = {
	[HDR_OK] = "ok", [HDR_EMPTY] = "empty", [HDR_MISSING] = "missing",
	[HDR_MAGIC] = "bad_magic", [HDR_MISNAMED] = "misnamed",
};

struct seg_result {
	const struct ledger_segment *seg;
	struct ledger_scan scan;
	enum header header;
	uint64_t head_shard, head_seq;  /* what a misnamed segment's record says */
	int err;                         /* negative errno: could not be read */
};

static bool is_magic(struct ledger_text t)
{
	return t.len == sizeof(LEDGER_SEGMENT_MAGIC) - 1 &&
	       !memcmp(t.p, LEDGER_SEGMENT_MAGIC, t.len);
}

/* ledger_scan_file's callback: judges the record at byte 0. */
static int check_header(const struct ledger_rec *rec, size_t off, void *arg)
{
	struct seg_result *r = arg;
	if (off)
		return 0;
	r->head_shard = rec->decision;
	r->head_seq = (uint64_t)rec->run_limit;
	if (rec->kind != LEDGER_SEGMENT)
		r->header = HDR_MISSING;
	else if (!is_magic(rec->f[LF_CODE]))
		r->header = HDR_MAGIC;
	else if (r->head_shard != r->seg->shard || r->head_seq != r->seg->seq)
		r->header = HDR_MISNAMED;
	else
		r->header = HDR_OK;
	return 0;
}

static void verify_segment(int dir_fd, const struct ledger_segment *seg, struct seg_result *r)
{
	memset(r, 0, sizeof(*r));
	r->seg = seg;
	r->header = HDR_MISSING;
	r->err = ledger_scan_file(dir_fd, seg, true, check_header, r, &r->scan);
	if (!r->err && !r->scan.size)
		r->header = HDR_EMPTY;
}

/* An empty segment (a crash between creating it and its first write) has
 * nothing to misread: listed, not counted as damage. Nor is a header lost
 * to damage at byte 0, which is reported as that damage. */
static bool header_bad(const struct seg_result *r)
{
	if (r->err || r->header == HDR_OK || r->header == HDR_EMPTY)
		return false;
	return r->scan.damage == LEDGER_CLEAN || r->scan.bad_offset != 0;
}

static void describe_header(FILE *f, const struct seg_result *r)
{
	if (r->header == HDR_MISSING)
		fprintf(f, "no segment record at byte 0 (not a segment written by tollgate?)");
	else if (r->header == HDR_MAGIC)
		fprintf(f, "segment record without the \"%s\" magic", LEDGER_SEGMENT_MAGIC);
	else
		fprintf(f, "segment record names shard %llu seq %llu (a renamed or copied file?)",
			(unsigned long long)r->head_shard, (unsigned long long)r->head_seq);
}

struct totals {
	uint64_t records, bytes;
	unsigned clean, torn, corrupt, bad_header, unreadable;
};

static void add_totals(struct totals *t, const struct seg_result *r)
{
	if (r->err) {
		t->unreadable++;
		return;
	}
	t->records += r->scan.records;
	t->bytes += r->scan.size;
	t->clean += r->scan.damage == LEDGER_CLEAN;
	t->torn += r->scan.damage == LEDGER_TORN_TAIL;
	t->corrupt += r->scan.damage == LEDGER_CORRUPT;
	t->bad_header += header_bad(r);
}

static void verify_text_segment(const struct seg_result *r)
{
	printf("%-22s %10llu %12llu  ", r->seg->name, (unsigned long long)r->scan.records,
	       (unsigned long long)r->scan.size);
	if (r->err) {
		printf("unreadable: %s\n", strerror(-r->err));
		return;
	}
	if (r->scan.damage == LEDGER_CLEAN)
		printf("%s", r->header == HDR_EMPTY ? "empty (no records)" : "clean");
	else
		describe_damage(stdout, &r->scan);
	printf("\n");
	if (header_bad(r)) {
		printf("%-22s %10s %12s  ", "", "", "");
		describe_header(stdout, r);
		printf("\n");
	}
}

static void verify_text(const char *dir, const struct seg_result *res, size_t n,
			const struct totals *t)
{
	printf("ledger %s: %zu segment%s\n", dir, n, n == 1 ? "" : "s");
	if (n)
		printf("%-22s %10s %12s  %s\n", "SEGMENT", "RECORDS", "BYTES", "STATE");
	for (size_t i = 0; i < n; i++)
		verify_text_segment(&res[i]);
	printf("total: %llu records, %llu bytes; %u clean, %u torn tail, %u corrupt, "
	       "%u bad header, %u unreadable\n", (unsigned long long)t->records,
	       (unsigned long long)t->bytes, t->clean, t->torn, t->corrupt, t->bad_header,
	       t->unreadable);
	if (t->torn || t->corrupt || t->bad_header)
		printf("damage found\n");
	else if (t->unreadable)
		printf("not verified: a segment could not be read\n");
	else
		printf("ledger is clean\n");
}

static void verify_json_segment(const struct seg_result *r)
{
	const struct ledger_segment *s = r->seg;
	printf("{\"name\":\"%s\",\"shard\":%u,\"seq\":%llu,\"last\":%s,", s->name, s->shard,
	       (unsigned long long)s->seq, s->last ? "true" : "false");
	if (r->err) {
		printf("\"error\":");
		json_str(stdout, strerror(-r->err), strlen(strerror(-r->err)));
		printf("}");
		return;
	}
	printf("\"records\":%llu,\"bytes\":%llu,\"damage\":\"%s\",",
	       (unsigned long long)r->scan.records, (unsigned long long)r->scan.size,
	       damage_name(r->scan.damage));
	if (r->scan.damage == LEDGER_CLEAN)
		printf("\"bad_offset\":null,");
	else
		printf("\"bad_offset\":%llu,", (unsigned long long)r->scan.bad_offset);
	printf("\"skipped_bytes\":%llu,\"header\":\"%s\"}", (unsigned long long)r->scan.skipped,
	       header_names[r->header]);
}

static void verify_json(const char *dir, const struct seg_result *res, size_t n,
			const struct totals *t)
{
	printf("{\"ledger\":");
	json_str(stdout, dir, strlen(dir));
	printf(",\"segments\":[");
	for (size_t i = 0; i < n; i++) {
		if (i)
			printf(",");
		verify_json_segment(&res[i]);
	}
	printf("],\"totals\":{\"segments\":%zu,\"records\":%llu,\"bytes\":%llu,\"clean\":%u,"
	       "\"torn_tail\":%u,\"corrupt\":%u,\"bad_header\":%u,\"unreadable\":%u},"
	       "\"clean\":%s}\n", n, (unsigned long long)t->records,
	       (unsigned long long)t->bytes, t->clean, t->torn, t->corrupt, t->bad_header,
	       t->unreadable,
	       t->torn || t->corrupt || t->bad_header || t->unreadable ? "false" : "true");
}

static int verify(const struct opts *o)
{
	int dir_fd;
	struct ledger_segment *segs;
	size_t n;
	if (open_ledger(o->dir, &dir_fd, &segs, &n))
		return 1;
	struct seg_result *res = calloc(n ? n : 1, sizeof(*res));
	if (!res) {
		fprintf(stderr, "tollctl: out of memory\n");
		free(segs);
		close(dir_fd);
		return 1;
	}
	struct totals t = { 0 };
	for (size_t i = 0; i < n; i++) {
		verify_segment(dir_fd, &segs[i], &res[i]);
		add_totals(&t, &res[i]);
	}
	(o->json ? verify_json : verify_text)(o->dir, res, n, &t);
	free(res);
	free(segs);
	close(dir_fd);
	if (t.unreadable)
		return 1;
	return t.torn || t.corrupt || t.bad_header ? 2 : 0;
}

/* ---- export ---- */

struct export_ctx {
	FILE *out;
	const struct opts *o;
	uint32_t shard;
};

static bool in_range(const struct opts *o, int64_t ms)
{
	return (!o->has_from || ms >= o->from_ms) && (!o->has_to || ms < o->to_ms);
}

/* ledger_scan_file's callback: one row; -EIO stops the scan when the
 * output fails (a full disk, a closed pipe). */
static int export_rec(const struct ledger_rec *rec, size_t off, void *arg)
{
	struct export_ctx *x = arg;
	if (rec->kind == LEDGER_SEGMENT || !in_range(x->o, rec->time_ms))
		return 0;
	struct row r = { rec, x->shard };
	(x->o->format == FMT_CSV ? csv_row : json_row)(x->out, &r);
	return ferror(x->out) ? -EIO : 0;
}

/* One segment exported. 0, 2 when damaged (warned), 1 on an error. */
static int export_segment(const char *dir, int dir_fd, const struct ledger_segment *seg,
			  struct export_ctx *x)
{
	struct ledger_scan scan;
	x->shard = seg->shard;
	int rc = ledger_scan_file(dir_fd, seg, true, export_rec, x, &scan);
	if (rc == -EIO && ferror(x->out)) {
		fprintf(stderr, "tollctl: writing the export: %s\n", strerror(errno));
		return 1;
	}
	if (rc) {
		fprintf(stderr, "tollctl: %s/%s: %s\n", dir, seg->name, strerror(-rc));
		return 1;
	}
	if (scan.damage == LEDGER_CLEAN)
		return 0;
	fprintf(stderr, "tollctl: warning: %s/%s: ", dir, seg->name);
	describe_damage(stderr, &scan);
	fprintf(stderr, "\n");
	return 2;
}

static int export(const struct opts *o)
{
	int dir_fd;
	struct ledger_segment *segs;
	size_t n;
	if (open_ledger(o->dir, &dir_fd, &segs, &n))
		return 1;
	static char obuf[1 << 16];
	setvbuf(stdout, obuf, _IOFBF, sizeof(obuf));
	struct export_ctx x = { .out = stdout, .o = o };
	if (o->format == FMT_CSV)
		csv_header(stdout);
	int status = 0;
	for (size_t i = 0; i < n && status != 1; i++) {
		int rc = export_segment(o->dir, dir_fd, &segs[i], &x);
		status = rc > status ? rc : status;
	}
	if (fflush(stdout) && status != 1) {
		fprintf(stderr, "tollctl: writing the export: %s\n", strerror(errno));
		status = 1;
	}
	free(segs);
	close(dir_fd);
	return status;
}

/* ---- command line ---- */

static const struct subcommand {
	const char *name;
	const char *opts;            /* the option letters it takes */
	int (*run)(const struct opts *o);
	const char *usage;
} subcommands[] = {
	{ "verify", "lj", verify, "tollctl ledger verify --ledger DIR [--json]" },
	{ "export", "lfFT", export,
	  "tollctl ledger export --ledger DIR [--format csv|jsonl] [--from TIME] [--to TIME]" },
};
#define N_SUBCOMMANDS (sizeof(subcommands) / sizeof(subcommands[0]))

static const struct option long_opts[] = {
	{ "ledger", required_argument, NULL, 'l' },
	{ "json", no_argument, NULL, 'j' },
	{ "format", required_argument, NULL, 'f' },
	{ "from", required_argument, NULL, 'F' },
	{ "to", required_argument, NULL, 'T' },
	{ NULL, 0, NULL, 0 },
};

void tollctl_ledger_usage(FILE *f)
{
	for (size_t i = 0; i < N_SUBCOMMANDS; i++)
		fprintf(f, "       %s\n", subcommands[i].usage);
}

/* One option into o. false (reported) when it is bad. */
static bool set_opt(struct opts *o, int c, const char *arg)
{
	switch (c) {
	case 'l':
		o->dir = arg;
		return true;
	case 'j':
		o->json = true;
		return true;
	case 'f':
		if (!strcmp(arg, "csv") || !strcmp(arg, "jsonl")) {
			o->format = arg[0] == 'c' ? FMT_CSV : FMT_JSONL;
			return true;
		}
		fprintf(stderr, "tollctl: --format is csv or jsonl, not '%s'\n", arg);
		return false;
	case 'F':
	case 'T':
		if (!parse_time(arg, c == 'F' ? &o->from_ms : &o->to_ms)) {
			fprintf(stderr, "tollctl: --%s: '%s' is not an ISO 8601 time "
				"(2026-11-23, 2026-11-23T16:23:56.232Z, …+02:00)\n",
				c == 'F' ? "from" : "to", arg);
			return false;
		}
		*(c == 'F' ? &o->has_from : &o->has_to) = true;
		return true;
	}
	return false;
}

/* argv[1..] into o for sub. false (reported) on a usage error. */
static bool parse_args(const struct subcommand *sub, int argc, char **argv, struct opts *o)
{
	opterr = 0;
	optind = 1;
	int c, i = 0;
	while ((c = getopt_long(argc, argv, "", long_opts, &i)) != -1) {
		if (c == '?') {
			fprintf(stderr, "tollctl: ledger %s: unknown option, or one without its "
				"value: '%s'\n", sub->name, argv[optind - 1 < argc ? optind - 1 : argc - 1]);
			return false;
		}
		if (!strchr(sub->opts, c)) {
			fprintf(stderr, "tollctl: ledger %s does not take --%s\n", sub->name,
				long_opts[i].name);
			return false;
		}
		if (!set_opt(o, c, optarg))
			return false;
	}
	if (optind < argc) {
		fprintf(stderr, "tollctl: ledger %s: unexpected '%s'\n", sub->name, argv[optind]);
		return false;
	}
	if (!o->dir) {
		fprintf(stderr, "tollctl: ledger %s: --ledger DIR is required\n", sub->name);
		return false;
	}
	if (o->has_from && o->has_to && o->from_ms >= o->to_ms) {
		fprintf(stderr, "tollctl: ledger %s: --from must be before --to\n", sub->name);
		return false;
	}
	return true;
}

int tollctl_ledger_main(int argc, char **argv)
{
	const struct subcommand *sub = NULL;
	for (size_t i = 0; argc >= 1 && i < N_SUBCOMMANDS; i++)
		if (!strcmp(argv[0], subcommands[i].name))
			sub = &subcommands[i];
	if (!sub) {
		if (argc >= 1)
			fprintf(stderr, "tollctl: 'ledger %s' is not a ledger command\n", argv[0]);
		fprintf(stderr, "usage:\n");
		tollctl_ledger_usage(stderr);
		return 1;
	}
	struct opts o = { .format = FMT_CSV };
	if (!parse_args(sub, argc, argv, &o)) {
		fprintf(stderr, "usage: %s\n", sub->usage);
		return 1;
	}
	return sub->run(&o);
}
