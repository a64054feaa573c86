/*
 * tollctl_out.h — text that tollctl prints from a ledger, made safe for
 * its output format. Ledger text is whatever an agent sent (run ids,
 * tags) and need not be UTF-8; every writer here turns a byte that does
 * not start a valid UTF-8 sequence into U+FFFD, so the output always is.
 */
#ifndef TOLLGATE_TOLLCTL_OUT_H
#define TOLLGATE_TOLLCTL_OUT_H

#include <stddef.h>
#include <stdio.h>

/* p[0..n) as a JSON string, quotes included: `"` and `\` escaped,
 * control characters as \u00XX. */
void tollctl_json_str(FILE *f, const char *p, size_t n);

/* p[0..n) as one RFC 4180 field: in double quotes (its own doubled) only
 * when it holds a comma, a quote, CR or LF; other control characters are
 * written as they are. */
void tollctl_csv_field(FILE *f, const char *p, size_t n);

/* p[0..n) for a human reading a terminal: control characters as '?'.
 * Returns the columns written (one per character). */
size_t tollctl_text_plain(FILE *f, const char *p, size_t n);

/* The columns tollctl_text_plain() would take for p[0..n). */
size_t tollctl_text_width(const char *p, size_t n);

#endif
