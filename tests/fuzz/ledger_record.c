/*
 * libFuzzer harness: ledger/record.c and ledger/segment.c. Any bytes are
 * scanned as a segment (stopping at damage, and skipping it) and decoded
 * as one record, once as they are and once with the CRC made right, so
 * that the field parsing behind the checksum is reached too. The scans'
 * accounting must hold together, and every record that decodes must
 * encode again to bytes that decode to the same numbers and text — its
 * text cut at LEDGER_MAX_FIELD, the one thing the decoder accepts that
 * the encoder never writes.
 */
#include <string.h>

#include "ledger/crc32c.h"
#include "ledger/record.h"
#include "ledger/segment.h"

#define CHECK(cond) do { if (!(cond)) __builtin_trap(); } while (0)

static bool same_numbers(const struct ledger_rec *a, const struct ledger_rec *b)
{
	/* not the version: any is read, and the encoder writes its own */
	return a->kind == b->kind && a->mode == b->mode &&
	       a->flags == b->flags && a->status == b->status && a->time_ms == b->time_ms &&
	       a->decision == b->decision && a->usd == b->usd && a->reserved == b->reserved &&
	       a->run_limit == b->run_limit && a->input == b->input && a->output == b->output &&
	       a->cached == b->cached;
}

static void check_round_trip(const struct ledger_rec *rec)
{
	static char out[LEDGER_MAX_RECORD];
	size_t n = ledger_rec_size(rec);
	CHECK(n >= LEDGER_HEADER && n <= LEDGER_MAX_RECORD);
	CHECK(ledger_encode(rec, out) == n);
	struct ledger_rec again;
	size_t size = 0;
	CHECK(ledger_decode(out, n, &again, &size) == LEDGER_OK && size == n);
	CHECK(same_numbers(rec, &again));
	for (int i = 0; i < LF_COUNT; i++) {
		size_t want = rec->f[i].len < LEDGER_MAX_FIELD ? rec->f[i].len : LEDGER_MAX_FIELD;
		CHECK(again.f[i].len == want);
		CHECK(!want || !memcmp(again.f[i].p, rec->f[i].p, want));
	}
	char small[8];
	ledger_text_cstr(rec->f[LF_RUN], small, sizeof(small));
	CHECK(strlen(small) <= 7);
}

struct tally {
	uint64_t records;
	size_t next;                 /* records are delivered in offset order */
};

static int each(const struct ledger_rec *rec, size_t off, void *arg)
{
	struct tally *t = arg;
	CHECK(off >= t->next);
	t->next = off + LEDGER_HEADER;
	t->records++;
	CHECK(rec->kind > 0 && rec->kind < LEDGER_KINDS && ledger_kind_name(rec->kind));
	check_round_trip(rec);
	return 0;
}

static void check_scan(const struct ledger_scan *s, const struct tally *t, size_t size)
{
	CHECK(s->records == t->records && s->size == size);
	CHECK(s->good_end <= size && s->skipped <= size);
	if (s->damage == LEDGER_CLEAN)
		CHECK(s->good_end == size && !s->skipped);
	else
		CHECK(s->bad_offset == s->good_end && s->bad_offset < size);
}

static void check_decode(const char *buf, size_t size)
{
	struct ledger_rec rec;
	size_t len = 0;
	enum ledger_decode_rc rc = ledger_decode(buf, size, &rec, &len);
	CHECK(rc == LEDGER_OK || rc == LEDGER_SHORT || rc == LEDGER_BAD);
	if (rc == LEDGER_OK) {
		CHECK(len >= LEDGER_HEADER && len <= size && len <= LEDGER_MAX_RECORD);
		check_round_trip(&rec);
	}
}

/* The input with the CRC its length field asks for, then decoded. */
static void check_decode_fixed_crc(const char *data, size_t size)
{
	static char buf[LEDGER_MAX_RECORD];
	uint32_t len;
	if (size < 8 || size > sizeof(buf))
		return;
	memcpy(buf, data, size);
	memcpy(&len, buf, 4);
	if (len < 8 || len > size)
		return;
	uint32_t crc = crc32c(0, buf + 8, len - 8);
	memcpy(buf + 4, &crc, 4);
	check_decode(buf, size);
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
	const char *buf = (const char *)data;
	struct ledger_scan strict, repair;
	struct tally ts = { 0 }, tr = { 0 };
	CHECK(ledger_scan_buf(buf, size, false, each, &ts, &strict) == 0);
	check_scan(&strict, &ts, size);
	CHECK(ledger_scan_buf(buf, size, true, each, &tr, &repair) == 0);
	check_scan(&repair, &tr, size);
	/* skipping only adds records after the first damage, never changes it */
	CHECK(repair.records >= strict.records && repair.good_end == strict.good_end);
	CHECK(repair.damage == strict.damage && repair.bad_offset == strict.bad_offset);
	if (strict.damage != LEDGER_CORRUPT)
		CHECK(repair.records == strict.records && !repair.skipped);

	check_decode(buf, size);
	check_decode_fixed_crc(buf, size);
	return 0;
}
