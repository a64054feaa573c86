/*
 * tollctl_scan.h — a ledger directory opened for reading by tollctl
 * (verify, export, report): its segments listed in ledger order (shard,
 * then sequence number) and each read whole, then scanned record by
 * record, with damage classified as the daemon's start-up does it.
 *
 * Nothing is ever written: files are opened read-only and read, not
 * mapped, so a segment truncated meanwhile cannot crash the reader.
 */
#ifndef TOLLGATE_TOLLCTL_SCAN_H
#define TOLLGATE_TOLLCTL_SCAN_H

#include <stddef.h>
#include <stdio.h>

#include "ledger/record.h"
#include "ledger/segment.h"

struct tollctl_ledger {
	const char *dir;               /* as given, for messages */
	int dir_fd;
	struct ledger_segment *segs;   /* in ledger order */
	size_t n;
	char *buf;                     /* the segment being scanned; reused */
	size_t cap;
};

/* Opens dir and lists its segments. 0, or 1 after a message on stderr
 * (the exit code for a directory that cannot be read). */
int tollctl_ledger_open(struct tollctl_ledger *l, const char *dir);
void tollctl_ledger_close(struct tollctl_ledger *l);

/*
 * Reads segment i whole (one buffer, reused from segment to segment) and
 * scans it with ledger_scan_buf(), stepping over damaged stretches;
 * each(rec, off, arg) gets every whole record, whose text points into the
 * buffer until the next call. A torn tail in a segment that is not its
 * shard's last is reported as corruption, as ledger_scan_file() does.
 * 0, a negative errno (the file could not be read: -EINVAL if it is not a
 * regular file), or the non-zero value each() stopped the scan with.
 */
int tollctl_segment_scan(struct tollctl_ledger *l, size_t i,
			 int (*each)(const struct ledger_rec *rec, size_t off, void *arg),
			 void *arg, struct ledger_scan *out);

/* "clean", "torn_tail" or "corrupt". */
const char *tollctl_damage_name(enum ledger_damage d);

/* What is wrong with a damaged segment and what the daemon will do about
 * it, on f (no newline). */
void tollctl_describe_damage(FILE *f, const struct ledger_scan *s);

/* After a scan of segment i: 0 when it was clean, else 2 after a warning
 * on stderr naming the segment and its damage. */
int tollctl_segment_warn(const struct tollctl_ledger *l, size_t i, const struct ledger_scan *s);

#endif
