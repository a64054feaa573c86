/*
 * money.c — exact decimal <-> micro-USD conversion (see money.h).
 */
#include "core/money.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>

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
	const char *sign = "";
	uint64_t mag = (uint64_t)v;
	if (v < 0) {
		sign = "-";
		mag = 0 - (uint64_t)v;
	}
	uint64_t whole = mag / 1000000, frac = mag % 1000000;
	int digits = 6;
	while (digits > 2 && frac % 10 == 0) {
		frac /= 10;
		digits--;
	}
	int n = snprintf(out, cap, "%s%llu.%0*llu", sign,
			 (unsigned long long)whole, digits, (unsigned long long)frac);
	return n < 0 ? 0 : (size_t)n < cap ? (size_t)n : cap - 1;
}
