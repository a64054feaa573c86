/*
 * tollctl_ledger.c — `tollctl ledger verify` and the command line of the
 * `tollctl ledger …` commands (tollctl_ledger.h): a ledger directory read
 * directly, never modified. `export` is tollctl_export.c.
 *
 * Both open the directory with tollctl_ledger_open() (segments by shard,
 * then seq) and read each with tollctl_segment_scan(), which reads it
 * whole (not mapped) and classifies damage the way the daemon's start-up
 * does (tollctl_scan.h): a torn tail of a shard's last segment (a crash
 * mid-write; the daemon truncates it at its next start) and corruption
 * (whole records after bad bytes, which the daemon refuses without
 * --ledger-repair). Scans step over a damaged stretch, so everything
 * readable is counted or exported; damage is reported, and exits 2 at the
 * end.
 *
 * verify also checks that each segment opens with the LEDGER_SEGMENT
 * record the writer puts there, carrying LEDGER_SEGMENT_MAGIC and the
 * shard and seq of its own name (its decision and run_limit): a renamed
 * or stray file is noticed.
 */
#include "tools/tollctl_ledger.h"

#include <getopt.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ledger/record.h"
#include "ledger/segment.h"
#include "tools/tollctl_export.h"
#include "tools/tollctl_out.h"
#include "tools/tollctl_scan.h"
#include "tools/tollctl_time.h"

enum format { FMT_CSV, FMT_JSONL };

struct opts {
	const char *dir;
	bool json;                   /* verify: one JSON document */
	enum format format;          /* export */
	struct tollctl_range range;  /* export: --from, --to */
};

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

/* The segment scan's callback: judges the record at byte 0. */
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

static void verify_segment(struct tollctl_ledger *l, size_t i, struct seg_result *r)
{
	memset(r, 0, sizeof(*r));
	r->seg = &l->segs[i];
	r->header = HDR_MISSING;
	r->err = tollctl_segment_scan(l, i, check_header, r, &r->scan);
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
		tollctl_describe_damage(stdout, &r->scan);
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
		tollctl_json_str(stdout, strerror(-r->err), strlen(strerror(-r->err)));
		printf("}");
		return;
	}
	printf("\"records\":%llu,\"bytes\":%llu,\"damage\":\"%s\",",
	       (unsigned long long)r->scan.records, (unsigned long long)r->scan.size,
	       tollctl_damage_name(r->scan.damage));
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
	tollctl_json_str(stdout, dir, strlen(dir));
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
	struct tollctl_ledger l;
	if (tollctl_ledger_open(&l, o->dir))
		return 1;
	struct seg_result *res = calloc(l.n ? l.n : 1, sizeof(*res));
	if (!res) {
		fprintf(stderr, "tollctl: out of memory\n");
		tollctl_ledger_close(&l);
		return 1;
	}
	struct totals t = { 0 };
	for (size_t i = 0; i < l.n; i++) {
		verify_segment(&l, i, &res[i]);
		add_totals(&t, &res[i]);
	}
	(o->json ? verify_json : verify_text)(o->dir, res, l.n, &t);
	free(res);
	tollctl_ledger_close(&l);
	if (t.unreadable)
		return 1;
	return t.torn || t.corrupt || t.bad_header ? 2 : 0;
}

/* ---- command line ---- */

static int export(const struct opts *o)
{
	return tollctl_export(o->dir, o->format == FMT_JSONL, &o->range);
}

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
		return tollctl_range_set(&o->range, c == 'T', arg);
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
	if (o->range.has_from && o->range.has_to && o->range.from_ms >= o->range.to_ms) {
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
