/*
 * record.h — one ledger record: its fields, and its bytes on disk.
 *
 * A record is little-endian and self-delimiting:
 *
 *   off  size  field
 *     0     4  length of the whole record, header included
 *     4     4  CRC-32C of bytes [8, length)
 *     8     1  version (LEDGER_VERSION)
 *     9     1  kind (enum ledger_kind)
 *    10     2  flags (LEDGER_F_*)
 *    12     2  HTTP status the agent got (0: none)
 *    14     1  budget mode in force (enum budget_mode)
 *    15     1  number of text fields that follow the numbers (LF_COUNT)
 *    16     8  time, UTC milliseconds
 *    24     8  decision id
 *    32     8  usd: the amount this record books, micro-USD
 *    40     8  reserved: the reservation it settles, micro-USD
 *    48     8  run_limit: the run's limit when the run was kept, micro-USD
 *    56    24  input, output and cached input tokens (3 × u64)
 *    80     …  n text fields, each a u16 length and its bytes (not NUL-ended)
 *
 * grant_open records put the grant's expiry (UTC ms) in `reserved`.
 *
 * The layout above never changes: a later version may only append text
 * fields, so readers accept any version (and more fields than they know,
 * or fewer: absent ones are empty). docs/ledger.md describes what each
 * kind books.
 */
#ifndef TOLLGATE_LEDGER_RECORD_H
#define TOLLGATE_LEDGER_RECORD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define LEDGER_VERSION 1
#define LEDGER_HEADER 80
#define LEDGER_MAX_FIELD 1024        /* bytes per text field */
#define LEDGER_MAX_RECORD 16384      /* whole record, as written and as accepted */

enum ledger_kind {
	LEDGER_SEGMENT = 1,   /* first record of every segment file */
	LEDGER_RESERVE,       /* a call was allowed: usd reserved on all its scopes */
	LEDGER_REFUSE,        /* a call was refused (code says why) */
	LEDGER_COMMIT,        /* usd spent of `reserved`; the rest released */
	LEDGER_RELEASE,       /* the whole reservation given back (no reply came) */
	LEDGER_EXPIRE,        /* a reservation with no outcome found at start-up: usd spent */
	LEDGER_GRANT_OPEN,
	LEDGER_GRANT_CLOSE,
	LEDGER_CHARGEBACK,
	LEDGER_FREEZE,
	LEDGER_UNFREEZE,
	LEDGER_OUTCOME,
	LEDGER_KINDS
};

enum ledger_flag {
	LEDGER_F_RUN_KEPT = 1 << 0,   /* the run is in the run table (X-Run-Id) */
	LEDGER_F_STREAM = 1 << 1,     /* a metered stream */
	LEDGER_F_CUT = 1 << 2,        /* the stream was cut off (code says why) */
	LEDGER_F_DOWNGRADED = 1 << 3, /* model is the alternative chosen for requested */
};

/* Text fields, in their order on disk. */
enum ledger_field {
	LF_RUN, LF_KEY, LF_USER, LF_TEAM, LF_ORG,
	LF_PROVIDER, LF_MODEL, LF_REQUESTED,  /* charged model; the one asked for */
	LF_PRICES,                            /* prices_version */
	LF_TAGS,                              /* X-Budget-Tags as sent */
	LF_CODE,                              /* refusal or cut code, reason, outcome */
	LF_PEER,                              /* the other team of a chargeback */
	LF_GRANT,                             /* the grant spent or opened ("g-...") */
	LF_GRANTEE,                           /* a grant's grantee key */
	LF_COUNT
};

struct ledger_text {
	const char *p;
	uint16_t len;
};

struct ledger_rec {
	uint8_t kind, version, mode;
	uint16_t flags, status;
	int64_t time_ms;
	uint64_t decision;
	int64_t usd, reserved, run_limit;
	uint64_t input, output, cached;
	struct ledger_text f[LF_COUNT];
};

/* Bytes rec takes on disk (fields longer than LEDGER_MAX_FIELD are cut). */
size_t ledger_rec_size(const struct ledger_rec *rec);
/* Writes rec to out (at least ledger_rec_size() bytes); returns its size. */
size_t ledger_encode(const struct ledger_rec *rec, char *out);

enum ledger_decode_rc {
	LEDGER_OK,        /* *rec and *size are set */
	LEDGER_SHORT,     /* buf ends inside the record: a torn tail if at file end */
	LEDGER_BAD,       /* impossible length, CRC mismatch or malformed fields */
};
/* Decodes the record at buf[0..avail); text fields point into buf. */
enum ledger_decode_rc ledger_decode(const char *buf, size_t avail, struct ledger_rec *rec,
				    size_t *size);

/* Names, for tools and logs ("commit", "team"...). NULL when unknown. */
const char *ledger_kind_name(unsigned kind);
const char *ledger_field_name(unsigned field);
/* A field as a NUL-ended copy in out[cap]. */
const char *ledger_text_cstr(struct ledger_text t, char *out, size_t cap);

#endif
