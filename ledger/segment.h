/*
 * segment.h — ledger segment files: their names, listing a directory, and
 * reading one back record by record with damage detection.
 *
 * Each shard writes its own sequence of segments, "s<shard>-<seq>.tgl"
 * (shard as 3 digits, seq as 10), each starting with a LEDGER_SEGMENT
 * record. Reading tells three kinds of damage apart:
 *  - a torn tail: the segment ends inside a record, or in bytes from which
 *    no whole record can be found again (a write cut short by a crash);
 *  - corruption: a bad record (length, CRC) followed later by good ones
 *    (a bit flip, a bad sector), which start-up refuses to guess about;
 *  - a torn tail in a segment that is not its shard's last, which cannot
 *    come from a crash either and counts as corruption.
 */
#ifndef TOLLGATE_LEDGER_SEGMENT_H
#define TOLLGATE_LEDGER_SEGMENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ledger/record.h"

#define LEDGER_SEGMENT_NAME_MAX 32
#define LEDGER_SEGMENT_MAGIC "tollgate ledger"

struct ledger_segment {
	uint32_t shard;
	uint64_t seq;
	bool last;                 /* the shard's newest segment */
	char name[LEDGER_SEGMENT_NAME_MAX];
};

/* "s000-0000000001.tgl" into out; false if it does not fit. */
bool ledger_segment_name(char *out, size_t cap, uint32_t shard, uint64_t seq);
bool ledger_segment_parse_name(const char *name, uint32_t *shard, uint64_t *seq);

/* The segments in dir_fd sorted by shard then seq, with `last` set.
 * 0 or a negative errno; *out is malloc'd (free it). */
int ledger_segments_list(int dir_fd, struct ledger_segment **out, size_t *n);

enum ledger_damage { LEDGER_CLEAN, LEDGER_TORN_TAIL, LEDGER_CORRUPT };

struct ledger_scan {
	uint64_t records;          /* whole records read (and passed on) */
	uint64_t kept;             /* their bytes */
	uint64_t good_end;         /* offset just past the last whole record before damage */
	uint64_t size;             /* file size */
	enum ledger_damage damage;
	uint64_t bad_offset;       /* first damaged byte */
	uint64_t skipped;          /* bytes skipped over in repair mode */
};

/*
 * Reads buf[0..len) record by record, calling each(rec, arg) for every
 * whole record in order (a non-zero return stops the scan and is
 * returned). With `skip_bad`, corrupt stretches are stepped over to the
 * next good record (repair); otherwise the scan stops at the first one.
 */
int ledger_scan_buf(const char *buf, size_t len, bool skip_bad,
		    int (*each)(const struct ledger_rec *rec, size_t off, void *arg), void *arg,
		    struct ledger_scan *out);

/* A whole segment file read into a malloc'd *buf (read, not mapped: a
 * file truncated under a reader must not kill it). 0, or a negative errno
 * (-EINVAL: not a regular file). */
int ledger_read_file(int dir_fd, const char *name, char **buf, size_t *len);

/* ledger_scan_buf over a segment file. 0 or a negative errno (I/O), else
 * what each() returned. */
int ledger_scan_file(int dir_fd, const struct ledger_segment *seg, bool skip_bad,
		     int (*each)(const struct ledger_rec *rec, size_t off, void *arg), void *arg,
		     struct ledger_scan *out);

#endif
