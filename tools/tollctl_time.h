/*
 * tollctl_time.h — times as tollctl reads and prints them: ISO 8601 text
 * to and from UTC milliseconds, and UTC days for reports. Proleptic
 * Gregorian calendar, computed here: no libc time zone is involved, so
 * the output does not depend on TZ or the host's zone files.
 */
#ifndef TOLLGATE_TOLLCTL_TIME_H
#define TOLLGATE_TOLLCTL_TIME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TOLLCTL_MS_PER_DAY 86400000LL

/*
 * An ISO 8601 time into UTC milliseconds: "YYYY-MM-DD", optionally
 * followed by "T" (or a space) and "HH:MM[:SS[.fff]]", then an optional
 * zone ("Z", "+02:00", "-0500"); without one the time is UTC. false when
 * s is anything else (nothing is guessed).
 */
bool tollctl_time_parse(const char *s, int64_t *out);

/* "2026-11-23T16:23:56.232Z" for UTC milliseconds ms, for any int64;
 * returns what snprintf returns (48 bytes of out always suffice). */
int tollctl_time_format(int64_t ms, char *out, size_t cap);

/* The UTC day (days since 1970-01-01, rounded down) of ms. */
int64_t tollctl_day_of(int64_t ms);

/* "2026-11-23" for a day of tollctl_day_of(); as tollctl_time_format. */
int tollctl_date_format(int64_t day, char *out, size_t cap);

/* --from / --to: the records whose time is in [from, to). */
struct tollctl_range {
	bool has_from, has_to;
	int64_t from_ms, to_ms;
};

/* The value of --from (to: false) or --to (to: true) into r. false after
 * a message on stderr when it is not an ISO 8601 time. */
bool tollctl_range_set(struct tollctl_range *r, bool to, const char *arg);

static inline bool tollctl_in_range(const struct tollctl_range *r, int64_t ms)
{
	return (!r->has_from || ms >= r->from_ms) && (!r->has_to || ms < r->to_ms);
}

#endif
