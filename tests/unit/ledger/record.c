/*
 * Unit tests for ledger/record.c: every field survives encode/decode,
 * text fields are cut at LEDGER_MAX_FIELD, every single-bit flip and
 * every truncation of an encoded record is caught, and readers take more
 * text fields than they know (a later version) and fewer (an earlier one).
 */
#include <string.h>

#include "ledger/crc32c.h"
#include "ledger/record.h"
#include "tests/unit/check.h"

static char big[LEDGER_MAX_FIELD + 100];

static void set(struct ledger_rec *r, enum ledger_field f, const char *p, size_t len)
{
	r->f[f] = (struct ledger_text){ p, (uint16_t)len };
}

/* A record with every number at an edge and every field distinct. */
static struct ledger_rec full_record(void)
{
	struct ledger_rec r = {
		.kind = LEDGER_COMMIT, .mode = 3, .flags = 0xffff, .status = 65535,
		.time_ms = INT64_MIN + 1, .decision = UINT64_MAX - 1, .usd = INT64_MAX,
		.reserved = -1, .run_limit = INT64_MIN, .input = UINT64_MAX, .output = 1,
		.cached = 0x0102030405060708ull,
	};
	static const char *const text[LF_COUNT] = {
		"run-1", "k-ops", "alice", "support", "acme", "openai", "gpt-4o-mini",
		"gpt-4o", "2026-11", "app=x,env=y", "budget_exceeded", "", "g-00000001",
		"k-grantee",
	};
	for (int i = 0; i < LF_COUNT; i++)
		set(&r, i, text[i], strlen(text[i]));
	set(&r, LF_TAGS, big, LEDGER_MAX_FIELD);           /* exactly the bound */
	set(&r, LF_PEER, big, sizeof(big));                /* past it: cut */
	return r;
}

static bool text_eq(struct ledger_text a, const char *p, size_t len)
{
	return a.len == len && (!len || !memcmp(a.p, p, len));
}

static bool numbers_eq(const struct ledger_rec *a, const struct ledger_rec *b)
{
	return a->kind == b->kind && a->mode == b->mode && a->flags == b->flags &&
	       a->status == b->status && a->time_ms == b->time_ms &&
	       a->decision == b->decision && a->usd == b->usd && a->reserved == b->reserved &&
	       a->run_limit == b->run_limit && a->input == b->input && a->output == b->output &&
	       a->cached == b->cached;
}

static void test_round_trip(void)
{
	for (size_t i = 0; i < sizeof(big); i++)
		big[i] = (char)(i * 7 + 1);
	struct ledger_rec in = full_record(), out;
	static char buf[LEDGER_MAX_RECORD];
	size_t n = ledger_encode(&in, buf), size = 0;
	CHECK(n == ledger_rec_size(&in));
	CHECK(n <= LEDGER_MAX_RECORD);
	CHECK(ledger_decode(buf, n, &out, &size) == LEDGER_OK && size == n);
	CHECK(numbers_eq(&in, &out));
	CHECK(out.version == LEDGER_VERSION);
	for (int i = 0; i < LF_COUNT; i++) {
		size_t want = in.f[i].len > LEDGER_MAX_FIELD ? LEDGER_MAX_FIELD : in.f[i].len;
		CHECK(text_eq(out.f[i], in.f[i].p, want));
	}
	CHECK(out.f[LF_PEER].len == LEDGER_MAX_FIELD);

	/* every field at the bound: the largest record there is */
	struct ledger_rec max = { .kind = LEDGER_RESERVE };
	for (int i = 0; i < LF_COUNT; i++)
		set(&max, i, big, sizeof(big));
	n = ledger_encode(&max, buf);
	CHECK(n == LEDGER_HEADER + LF_COUNT * (2 + LEDGER_MAX_FIELD));
	CHECK(ledger_decode(buf, n, &out, &size) == LEDGER_OK && size == n);

	/* a NULL field is empty, whatever its len says */
	struct ledger_rec null = { .kind = LEDGER_RELEASE };
	null.f[LF_RUN].len = 40;
	n = ledger_encode(&null, buf);
	CHECK(n == LEDGER_HEADER + 2 * LF_COUNT);
	CHECK(ledger_decode(buf, n, &out, &size) == LEDGER_OK && out.f[LF_RUN].len == 0);

	/* trailing bytes after a record are not part of it */
	CHECK(ledger_decode(buf, n + 5, &out, &size) == LEDGER_OK && size == n);
}

static void test_bit_flips(void)
{
	struct ledger_rec in = { .kind = LEDGER_COMMIT, .time_ms = 1795451036232, .usd = 12345,
				 .decision = 7, .input = 100 };
	set(&in, LF_RUN, "run-1", 5);
	set(&in, LF_MODEL, "gpt-4o", 6);
	char buf[512], copy[512];
	size_t n = ledger_encode(&in, buf), size;
	struct ledger_rec out;
	int missed = 0, flips = 0;
	for (size_t bit = 0; bit < n * 8; bit++) {
		memcpy(copy, buf, n);
		copy[bit / 8] ^= (char)(1 << (bit % 8));
		enum ledger_decode_rc rc = ledger_decode(copy, n, &out, &size);
		missed += rc == LEDGER_OK;
		flips += rc == LEDGER_BAD || rc == LEDGER_SHORT;
	}
	CHECK(missed == 0);
	CHECK(flips == (int)n * 8);
}

static void test_truncated(void)
{
	struct ledger_rec in = { .kind = LEDGER_RESERVE, .usd = 1 };
	set(&in, LF_KEY, "k-ops", 5);
	char buf[256];
	size_t n = ledger_encode(&in, buf), size;
	struct ledger_rec out;
	int wrong = 0;
	for (size_t len = 0; len < n; len++)
		wrong += ledger_decode(buf, len, &out, &size) != LEDGER_SHORT;
	CHECK(wrong == 0);
	CHECK(ledger_decode(buf, n, &out, &size) == LEDGER_OK);
}

/* Rewrites the record in buf with n_fields = count and extra fields
 * appended (or the last ones dropped); fixes length and CRC. */
static size_t refield(char *buf, unsigned count, const char *extra, uint16_t extra_len)
{
	size_t end = LEDGER_HEADER;
	for (unsigned i = 0; i < count && i < LF_COUNT; i++) {
		uint16_t len;
		memcpy(&len, buf + end, 2);
		end += 2 + len;
	}
	for (unsigned i = LF_COUNT; i < count; i++) {
		memcpy(buf + end, &extra_len, 2);
		memcpy(buf + end + 2, extra, extra_len);
		end += 2 + extra_len;
	}
	buf[15] = (char)count;
	uint32_t len32 = (uint32_t)end, crc = crc32c(0, buf + 8, end - 8);
	memcpy(buf, &len32, 4);
	memcpy(buf + 4, &crc, 4);
	return end;
}

static void test_field_counts(void)
{
	struct ledger_rec in = { .kind = LEDGER_OUTCOME, .usd = 5 };
	set(&in, LF_RUN, "run-9", 5);
	set(&in, LF_TEAM, "support", 7);
	set(&in, LF_PEER, "sales", 5);
	char buf[512];
	size_t n = ledger_encode(&in, buf), size;
	struct ledger_rec out;

	/* a later version's two extra fields are skipped */
	size_t m = refield(buf, LF_COUNT + 2, "future", 6);
	CHECK(m == n + 2 * 8);
	CHECK(ledger_decode(buf, m, &out, &size) == LEDGER_OK && size == m);
	CHECK(text_eq(out.f[LF_RUN], "run-9", 5) && text_eq(out.f[LF_PEER], "sales", 5));
	CHECK(out.usd == 5);

	/* an earlier version's missing fields read as empty */
	n = ledger_encode(&in, buf);
	m = refield(buf, LF_TEAM + 1, NULL, 0);
	CHECK(ledger_decode(buf, m, &out, &size) == LEDGER_OK && size == m);
	CHECK(text_eq(out.f[LF_TEAM], "support", 7));
	CHECK(out.f[LF_PEER].len == 0 && out.f[LF_ORG].len == 0);
	m = refield(buf, 0, NULL, 0);
	CHECK(m == LEDGER_HEADER);
	CHECK(ledger_decode(buf, m, &out, &size) == LEDGER_OK && out.f[LF_RUN].len == 0);

	/* n_fields claiming more than the length holds is malformed */
	n = ledger_encode(&in, buf);
	buf[15] = LF_COUNT + 1;
	uint32_t crc = crc32c(0, buf + 8, n - 8);
	memcpy(buf + 4, &crc, 4);
	CHECK(ledger_decode(buf, n, &out, &size) == LEDGER_BAD);
	/* and bytes left over after the last field too */
	n = ledger_encode(&in, buf);
	buf[15] = LF_COUNT - 1;
	crc = crc32c(0, buf + 8, n - 8);
	memcpy(buf + 4, &crc, 4);
	CHECK(ledger_decode(buf, n, &out, &size) == LEDGER_BAD);
}

static void test_bad_headers(void)
{
	struct ledger_rec in = { .kind = LEDGER_COMMIT }, out;
	char buf[256];
	size_t n = ledger_encode(&in, buf), size;
	char c[256];
	memcpy(c, buf, n);
	c[8] = LEDGER_VERSION + 1;                          /* unknown version */
	CHECK(ledger_decode(c, n, &out, &size) == LEDGER_BAD);
	memcpy(c, buf, n);
	c[9] = 0;                                           /* no kind 0 */
	CHECK(ledger_decode(c, n, &out, &size) == LEDGER_BAD);
	c[9] = LEDGER_KINDS;
	CHECK(ledger_decode(c, n, &out, &size) == LEDGER_BAD);
	memcpy(c, buf, n);
	uint32_t len = LEDGER_MAX_RECORD + 1;               /* impossible lengths */
	memcpy(c, &len, 4);
	CHECK(ledger_decode(c, n, &out, &size) == LEDGER_BAD);
	len = LEDGER_HEADER - 1;
	memcpy(c, &len, 4);
	CHECK(ledger_decode(c, n, &out, &size) == LEDGER_BAD);
}

static void test_names(void)
{
	CHECK(!strcmp(ledger_kind_name(LEDGER_SEGMENT), "segment"));
	CHECK(!strcmp(ledger_kind_name(LEDGER_OUTCOME), "outcome"));
	CHECK(ledger_kind_name(0) == NULL && ledger_kind_name(LEDGER_KINDS) == NULL);
	for (unsigned k = 1; k < LEDGER_KINDS; k++)
		CHECK(ledger_kind_name(k) != NULL);
	CHECK(!strcmp(ledger_field_name(LF_REQUESTED), "requested_model"));
	CHECK(ledger_field_name(LF_COUNT) == NULL);
	char out[4];
	CHECK(!strcmp(ledger_text_cstr((struct ledger_text){ "abcdef", 6 }, out, sizeof(out)),
		      "abc"));
	CHECK(!strcmp(ledger_text_cstr((struct ledger_text){ NULL, 0 }, out, sizeof(out)), ""));
}

int main(void)
{
	test_round_trip();
	test_bit_flips();
	test_truncated();
	test_field_counts();
	test_bad_headers();
	test_names();
	return check_report("ledger/record");
}
