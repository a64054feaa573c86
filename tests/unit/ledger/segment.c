/*
 * Unit tests for ledger/segment.c: segment names both ways, and the
 * damage a scan tells apart — a clean run of records, a tail torn at
 * every byte of the last record, a bit flipped in a middle record (with
 * and without skipping it), garbage after whole records — plus the
 * listing of a directory and a torn tail outside a shard's last segment.
 */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ledger/segment.h"
#include "tests/unit/check.h"

#define N_RECS 6

static char buf[8192];
static size_t ends[N_RECS];          /* where each record of buf ends */
static size_t len;

/* N_RECS records of different sizes, decision i for record i. */
static void build(void)
{
	static const char *const runs[N_RECS] = { "a", "run-22", "", "x,y", "long run id 44", "z" };
	len = 0;
	for (int i = 0; i < N_RECS; i++) {
		struct ledger_rec r = { .kind = i ? LEDGER_COMMIT : LEDGER_SEGMENT,
					.decision = (uint64_t)i, .usd = i * 1000 };
		r.f[LF_RUN] = (struct ledger_text){ runs[i], (uint16_t)strlen(runs[i]) };
		len += ledger_encode(&r, buf + len);
		ends[i] = len;
	}
}

struct seen {
	int n;
	uint64_t decision[N_RECS * 2];
	size_t off[N_RECS * 2];
};

static int collect(const struct ledger_rec *rec, size_t off, void *arg)
{
	struct seen *s = arg;
	if (s->n < N_RECS * 2) {
		s->decision[s->n] = rec->decision;
		s->off[s->n] = off;
	}
	s->n++;
	return 0;
}

static int stop_at_two(const struct ledger_rec *rec, size_t off, void *arg)
{
	return rec->decision == 2 ? 42 : 0;
}

static void test_names(void)
{
	char name[LEDGER_SEGMENT_NAME_MAX];
	uint32_t shard;
	uint64_t seq;
	CHECK(ledger_segment_name(name, sizeof(name), 3, 17));
	CHECK(!strcmp(name, "s003-0000000017.tgl"));
	CHECK(ledger_segment_parse_name(name, &shard, &seq) && shard == 3 && seq == 17);
	CHECK(ledger_segment_name(name, sizeof(name), 999, 9999999999ull));
	CHECK(ledger_segment_parse_name(name, &shard, &seq) && shard == 999 &&
	      seq == 9999999999ull);
	CHECK(ledger_segment_name(name, sizeof(name), 0, 0));
	CHECK(ledger_segment_parse_name(name, &shard, &seq) && shard == 0 && seq == 0);
	CHECK(!ledger_segment_name(name, 10, 1, 1));          /* does not fit */

	static const char *const bad[] = {
		"", "s000-0000000001.tg", "s000-0000000001.tgl.repair", "x000-0000000001.tgl",
		"s000_0000000001.tgl", "s00a-0000000001.tgl", "s000-00000000x1.tgl",
		"s0000-000000001.tgl", "s000-0000000001.TGL", "s000-000000001.tgl",
		"s000-00000000001.tgl", "s-00-0000000001.tgl", "s000--000000001.tgl",
		"s000-+000000001.tgl", ".", "..",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		CHECK(!ledger_segment_parse_name(bad[i], &shard, &seq));
}

static void test_clean(void)
{
	struct seen s = { 0 };
	struct ledger_scan scan;
	CHECK(ledger_scan_buf(buf, len, false, collect, &s, &scan) == 0);
	CHECK(scan.damage == LEDGER_CLEAN && scan.records == N_RECS && s.n == N_RECS);
	CHECK(scan.good_end == len && scan.size == len && scan.skipped == 0);
	for (int i = 0; i < N_RECS; i++)
		CHECK(s.decision[i] == (uint64_t)i && s.off[i] == (i ? ends[i - 1] : 0));

	CHECK(ledger_scan_buf(buf, 0, false, collect, &s, &scan) == 0);
	CHECK(scan.damage == LEDGER_CLEAN && scan.records == 0);
	/* a non-zero return from each() stops the scan and is returned */
	CHECK(ledger_scan_buf(buf, len, false, stop_at_two, NULL, &scan) == 42);
	CHECK(scan.records == 3);
	CHECK(ledger_scan_buf(buf, len, true, NULL, NULL, &scan) == 0 && scan.records == N_RECS);
}

static void test_torn_tail(void)
{
	size_t last = ends[N_RECS - 2];
	int wrong = 0;
	for (size_t cut = last + 1; cut < len; cut++)
		for (int skip = 0; skip < 2; skip++) {
			struct ledger_scan scan;
			ledger_scan_buf(buf, cut, skip, NULL, NULL, &scan);
			wrong += scan.damage != LEDGER_TORN_TAIL || scan.good_end != last ||
				 scan.bad_offset != last || scan.records != N_RECS - 1 ||
				 scan.size != cut;
		}
	CHECK(wrong == 0);
	/* cut exactly between records: clean */
	struct ledger_scan scan;
	ledger_scan_buf(buf, last, false, NULL, NULL, &scan);
	CHECK(scan.damage == LEDGER_CLEAN && scan.good_end == last);
	/* a tail of only the first bytes of the very first record */
	ledger_scan_buf(buf, 5, false, NULL, NULL, &scan);
	CHECK(scan.damage == LEDGER_TORN_TAIL && scan.good_end == 0 && scan.records == 0);
}

static void test_bit_flip(void)
{
	static char copy[sizeof(buf)];
	int bad = 2;                                        /* a middle record */
	size_t at = ends[bad - 1] + 30;
	memcpy(copy, buf, len);
	copy[at] ^= 0x04;

	struct seen s = { 0 };
	struct ledger_scan scan;
	ledger_scan_buf(copy, len, false, collect, &s, &scan);
	CHECK(scan.damage == LEDGER_CORRUPT && scan.bad_offset == ends[bad - 1]);
	CHECK(scan.records == (uint64_t)bad && s.n == bad);
	CHECK(scan.good_end == ends[bad - 1]);

	memset(&s, 0, sizeof(s));
	ledger_scan_buf(copy, len, true, collect, &s, &scan);
	CHECK(scan.damage == LEDGER_CORRUPT && scan.bad_offset == ends[bad - 1]);
	CHECK(scan.records == N_RECS - 1 && s.n == N_RECS - 1);
	CHECK(scan.skipped == ends[bad] - ends[bad - 1]);
	CHECK(scan.good_end == ends[bad - 1]);
	for (int i = bad; i < N_RECS - 1; i++)
		CHECK(s.decision[i] == (uint64_t)i + 1 && s.off[i] == ends[i]);

	/* two damaged stretches: bad_offset stays at the first */
	copy[ends[3] + 12] ^= 0x80;
	memset(&s, 0, sizeof(s));
	ledger_scan_buf(copy, len, true, collect, &s, &scan);
	CHECK(scan.damage == LEDGER_CORRUPT && scan.bad_offset == ends[bad - 1]);
	CHECK(s.n == N_RECS - 2 && s.decision[s.n - 1] == N_RECS - 1);

	/* a flip in the last record has nothing whole after it: a torn tail */
	memcpy(copy, buf, len);
	copy[len - 3] ^= 1;
	ledger_scan_buf(copy, len, true, NULL, NULL, &scan);
	CHECK(scan.damage == LEDGER_TORN_TAIL && scan.good_end == ends[N_RECS - 2]);
}

static void test_garbage_tail(void)
{
	static char copy[sizeof(buf) + 512];
	static const size_t sizes[] = { 1, 9, 10, 79, 80, 81, 300 };
	for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++)
		for (int fill = 0; fill < 3; fill++) {
			memcpy(copy, buf, len);
			for (size_t i = 0; i < sizes[k]; i++)
				copy[len + i] = (char)(fill == 0 ? 0 : fill == 1 ? 0xff : i * 31);
			struct ledger_scan scan;
			ledger_scan_buf(copy, len + sizes[k], true, NULL, NULL, &scan);
			CHECK(scan.damage == LEDGER_TORN_TAIL && scan.good_end == len &&
			      scan.bad_offset == len && scan.records == N_RECS);
		}
}

/* Writes buf[0..n) as `name` in dir_fd. */
static void put_file(int dir_fd, const char *name, const char *p, size_t n)
{
	int fd = openat(dir_fd, name, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	CHECK(fd >= 0 && write(fd, p, n) == (ssize_t)n);
	close(fd);
}

static void test_directory(void)
{
	char dir[] = "/tmp/tollgate-segment-test-XXXXXX";
	CHECK(mkdtemp(dir) != NULL);
	int dir_fd = open(dir, O_RDONLY | O_DIRECTORY);
	CHECK(dir_fd >= 0);
	static const char *const names[] = {
		"s001-0000000002.tgl", "s000-0000000010.tgl", "s001-0000000001.tgl",
		"s000-0000000009.tgl", "s000-0000000002.tgl.repair", "notes.txt",
	};
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		put_file(dir_fd, names[i], buf, ends[N_RECS - 2] + 7);   /* torn tails */

	struct ledger_segment *segs = NULL;
	size_t n = 0;
	CHECK(ledger_segments_list(dir_fd, &segs, &n) == 0 && n == 4);
	static const uint32_t shards[] = { 0, 0, 1, 1 };
	static const uint64_t seqs[] = { 9, 10, 1, 2 };
	static const bool lasts[] = { false, true, false, true };
	for (size_t i = 0; i < n && i < 4; i++) {
		CHECK(segs[i].shard == shards[i] && segs[i].seq == seqs[i]);
		CHECK(segs[i].last == lasts[i]);
		/* a torn tail is a crash's only in the shard's last segment */
		struct ledger_scan scan;
		CHECK(ledger_scan_file(dir_fd, &segs[i], false, NULL, NULL, &scan) == 0);
		CHECK(scan.damage == (lasts[i] ? LEDGER_TORN_TAIL : LEDGER_CORRUPT));
		CHECK(scan.records == N_RECS - 1 && scan.good_end == ends[N_RECS - 2]);
	}

	/* an empty segment reads as clean and empty */
	put_file(dir_fd, "s002-0000000001.tgl", buf, 0);
	struct ledger_segment empty = { .shard = 2, .seq = 1, .last = true,
					.name = "s002-0000000001.tgl" };
	struct ledger_scan scan;
	CHECK(ledger_scan_file(dir_fd, &empty, false, NULL, NULL, &scan) == 0);
	CHECK(scan.damage == LEDGER_CLEAN && scan.records == 0 && scan.size == 0);
	struct ledger_segment gone = { .name = "s009-0000000001.tgl" };
	CHECK(ledger_scan_file(dir_fd, &gone, false, NULL, NULL, &scan) < 0);

	free(segs);
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		unlinkat(dir_fd, names[i], 0);
	unlinkat(dir_fd, "s002-0000000001.tgl", 0);
	close(dir_fd);
	CHECK(rmdir(dir) == 0);
}

int main(void)
{
	build();
	test_names();
	test_clean();
	test_torn_tail();
	test_bit_flip();
	test_garbage_tail();
	test_directory();
	return check_report("ledger/segment");
}
