/*
 * record.c — encoding and decoding ledger records (record.h).
 */
#include "ledger/record.h"

#include <string.h>

#include "ledger/crc32c.h"

static void put16(char *p, uint16_t v) { memcpy(p, &v, 2); }
static void put32(char *p, uint32_t v) { memcpy(p, &v, 4); }
static void put64(char *p, uint64_t v) { memcpy(p, &v, 8); }
static uint16_t get16(const char *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static uint32_t get32(const char *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint64_t get64(const char *p) { uint64_t v; memcpy(&v, p, 8); return v; }

static uint16_t field_len(struct ledger_text t)
{
	return t.p ? (t.len > LEDGER_MAX_FIELD ? LEDGER_MAX_FIELD : t.len) : 0;
}

size_t ledger_rec_size(const struct ledger_rec *rec)
{
	size_t n = LEDGER_HEADER;
	for (int i = 0; i < LF_COUNT; i++)
		n += 2 + field_len(rec->f[i]);
	return n;
}

size_t ledger_encode(const struct ledger_rec *rec, char *out)
{
	out[8] = LEDGER_VERSION;
	out[9] = (char)rec->kind;
	put16(out + 10, rec->flags);
	put16(out + 12, rec->status);
	out[14] = (char)rec->mode;
	out[15] = LF_COUNT;
	put64(out + 16, (uint64_t)rec->time_ms);
	put64(out + 24, rec->decision);
	put64(out + 32, (uint64_t)rec->usd);
	put64(out + 40, (uint64_t)rec->reserved);
	put64(out + 48, (uint64_t)rec->run_limit);
	put64(out + 56, rec->input);
	put64(out + 64, rec->output);
	put64(out + 72, rec->cached);
	char *p = out + LEDGER_HEADER;
	for (int i = 0; i < LF_COUNT; i++) {
		uint16_t n = field_len(rec->f[i]);
		put16(p, n);
		if (n)
			memcpy(p + 2, rec->f[i].p, n);
		p += 2 + n;
	}
	uint32_t len = (uint32_t)(p - out);
	put32(out, len);
	put32(out + 4, crc32c(0, out + 8, len - 8));
	return len;
}

enum ledger_decode_rc ledger_decode(const char *buf, size_t avail, struct ledger_rec *rec,
				    size_t *size)
{
	if (avail < 10)
		return LEDGER_SHORT;
	uint32_t len = get32(buf);
	/* cheap checks first: damage scans call this at every offset */
	if (len < LEDGER_HEADER || len > LEDGER_MAX_RECORD || buf[8] == 0 ||
	    buf[9] == 0 || (uint8_t)buf[9] >= LEDGER_KINDS)
		return LEDGER_BAD;
	if (avail < len)
		return LEDGER_SHORT;
	if (crc32c(0, buf + 8, len - 8) != get32(buf + 4))
		return LEDGER_BAD;
	memset(rec, 0, sizeof(*rec));
	rec->version = (uint8_t)buf[8];
	rec->kind = (uint8_t)buf[9];
	rec->flags = get16(buf + 10);
	rec->status = get16(buf + 12);
	rec->mode = (uint8_t)buf[14];
	unsigned n_fields = (uint8_t)buf[15];
	rec->time_ms = (int64_t)get64(buf + 16);
	rec->decision = get64(buf + 24);
	rec->usd = (int64_t)get64(buf + 32);
	rec->reserved = (int64_t)get64(buf + 40);
	rec->run_limit = (int64_t)get64(buf + 48);
	rec->input = get64(buf + 56);
	rec->output = get64(buf + 64);
	rec->cached = get64(buf + 72);
	const char *p = buf + LEDGER_HEADER, *end = buf + len;
	for (unsigned i = 0; i < n_fields; i++) {
		if (end - p < 2)
			return LEDGER_BAD;
		uint16_t n = get16(p);
		if (n > end - p - 2 || n > LEDGER_MAX_FIELD)   /* never written */
			return LEDGER_BAD;
		if (i < LF_COUNT)
			rec->f[i] = (struct ledger_text){ p + 2, n };
		p += 2 + n;
	}
	if (p != end)
		return LEDGER_BAD;
	*size = len;
	return LEDGER_OK;
}

const char *ledger_kind_name(unsigned kind)
{
	static const char *const names[LEDGER_KINDS] = {
		[LEDGER_SEGMENT] = "segment", [LEDGER_RESERVE] = "reserve",
		[LEDGER_REFUSE] = "refuse", [LEDGER_COMMIT] = "commit",
		[LEDGER_RELEASE] = "release", [LEDGER_EXPIRE] = "expire",
		[LEDGER_GRANT_OPEN] = "grant_open", [LEDGER_GRANT_CLOSE] = "grant_close",
		[LEDGER_CHARGEBACK] = "chargeback", [LEDGER_FREEZE] = "freeze",
		[LEDGER_UNFREEZE] = "unfreeze", [LEDGER_OUTCOME] = "outcome",
	};
	return kind < LEDGER_KINDS ? names[kind] : NULL;
}

const char *ledger_field_name(unsigned field)
{
	static const char *const names[LF_COUNT] = {
		"run", "key", "user", "team", "org", "provider", "model", "requested_model",
		"prices_version", "tags", "code", "peer_team", "grant", "grantee_key",
	};
	return field < LF_COUNT ? names[field] : NULL;
}

const char *ledger_text_cstr(struct ledger_text t, char *out, size_t cap)
{
	if (!cap)
		return out;
	size_t n = t.len < cap - 1 ? t.len : cap - 1;
	if (n)
		memcpy(out, t.p, n);
	out[n] = '\0';
	return out;
}
