/*
 * tollctl_time.c — ISO 8601 times and UTC days (tollctl_time.h).
 *
 * Dates go through a day count since 1970-01-01 with H. Hinnant's
 * days_from_civil / civil_from_days, which are exact over the whole int64
 * range a record's time can hold. The parser is strict: every part has
 * its exact digit count and range, and anything left over is an error.
 */
#include "tools/tollctl_time.h"

#include <stdio.h>

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

int64_t tollctl_day_of(int64_t ms)
{
	int64_t days = ms / TOLLCTL_MS_PER_DAY;
	return ms % TOLLCTL_MS_PER_DAY < 0 ? days - 1 : days;
}

/* Through the remainder, not days * TOLLCTL_MS_PER_DAY, which overflows
 * for the earliest times. */
int tollctl_time_format(int64_t ms, char *out, size_t cap)
{
	int64_t days = ms / TOLLCTL_MS_PER_DAY, rem = ms % TOLLCTL_MS_PER_DAY, y;
	if (rem < 0) {
		rem += TOLLCTL_MS_PER_DAY;
		days--;
	}
	unsigned m, d, r = (unsigned)rem;
	civil_from_days(days, &y, &m, &d);
	return snprintf(out, cap, "%04lld-%02u-%02uT%02u:%02u:%02u.%03uZ", (long long)y, m, d,
			r / 3600000, r / 60000 % 60, r / 1000 % 60, r % 1000);
}

int tollctl_date_format(int64_t day, char *out, size_t cap)
{
	int64_t y;
	unsigned m, d;
	civil_from_days(day, &y, &m, &d);
	return snprintf(out, cap, "%04lld-%02u-%02u", (long long)y, m, d);
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

bool tollctl_time_parse(const char *s, int64_t *out)
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
	*out = days_from_civil(y, m, d) * TOLLCTL_MS_PER_DAY + clock - zone;
	return true;
}

bool tollctl_range_set(struct tollctl_range *r, bool to, const char *arg)
{
	if (!tollctl_time_parse(arg, to ? &r->to_ms : &r->from_ms)) {
		fprintf(stderr, "tollctl: --%s: '%s' is not an ISO 8601 time "
			"(2026-11-23, 2026-11-23T16:23:56.232Z, …+02:00)\n",
			to ? "to" : "from", arg);
		return false;
	}
	*(to ? &r->has_to : &r->has_from) = true;
	return true;
}
