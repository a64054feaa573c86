/*
 * money.h — USD amounts as integer micro-USD (1 USD = 1,000,000).
 *
 * The only module that turns text into money and back. No floating point:
 * "0.1" parses to exactly 100000, and a value with more than six decimals,
 * a sign where none is allowed or an overflow is an error, never rounded.
 */
#ifndef TOLLGATE_MONEY_H
#define TOLLGATE_MONEY_H

#include <stddef.h>
#include <stdint.h>

typedef int64_t usd_micros;

#define MONEY_MAX_USD 1000000000000LL   /* 1e12 USD: sanity bound on any amount */

/*
 * Parses a decimal USD amount ("5", "5.00", "0.000001", "+1.5") of exactly
 * `len` bytes into *out. Returns 0, or -EINVAL (not a decimal number, negative,
 * more than six fraction digits) or -ERANGE (above MONEY_MAX_USD).
 */
int money_parse(const char *text, size_t len, usd_micros *out);

/*
 * Formats v as a decimal string with at least two and at most six fraction
 * digits ("1.50", "0.000123", "-2.00"). Returns the length written (< cap),
 * always NUL-terminated; cap of 32 is always enough.
 */
size_t money_format(usd_micros v, char *out, size_t cap);

#endif
