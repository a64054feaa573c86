/*
 * money.c — exact decimal <-> micro-USD conversion (see money.h).
 */
#include "core/money.h"

#include <errno.h>
#include <stdbool.h>

int money_parse(const char *text, size_t len, usd_micros *out)
{
	size_t i = 0;
	if (i < len && text[i] == '+')
		i++;
	int64_t whole = 0, frac = 0;
	int frac_digits = 0;
	bool any_digit = false, seen_dot = false;
	for (; i < len; i++) {
		char c = text[i];
		if (c == '.' && !seen_dot) {
			seen_dot = true;
			continue;
		}
		if (c < '0' || c > '9')
			return -EINVAL;
		any_digit = true;
		if (seen_dot) {
			if (++frac_digits > 6) {
				if (c != '0')   /* 1.5000000 is exact; 1.0000001 is not */
					return -EINVAL;
				continue;
			}
			frac = frac * 10 + (c - '0');
		} else {
			whole = whole * 10 + (c - '0');
			if (whole > MONEY_MAX_USD)
				return -ERANGE;
		}
	}
	if (!any_digit)
		return -EINVAL;
	for (int d = frac_digits > 6 ? 6 : frac_digits; d < 6; d++)
		frac *= 10;
	*out = whole * 1000000 + frac;
	return 0;
}

size_t money_format(usd_micros v, char *out, size_t cap)
{
	/* by hand, not snprintf: it runs on every budgeted reply */
	char tmp[32];
	size_t n = 0;
	uint64_t mag = v < 0 ? 0 - (uint64_t)v : (uint64_t)v;
	uint64_t frac = mag % 1000000, whole = mag / 1000000;
	int digits = 6;
	while (digits > 2 && frac % 10 == 0) {
		frac /= 10;
		digits--;
	}
	for (int i = 0; i < digits; i++, frac /= 10)
		tmp[n++] = (char)('0' + frac % 10);
	tmp[n++] = '.';
	do {
		tmp[n++] = (char)('0' + whole % 10);
		whole /= 10;
	} while (whole);
	if (v < 0)
		tmp[n++] = '-';
	size_t len = n < cap ? n : cap - 1;
	for (size_t i = 0; i < len; i++)
		out[i] = tmp[n - 1 - i];
	out[len] = '\0';
	return len;
}
