/*
 * tollctl_out.c — JSON, CSV and terminal text from ledger bytes
 * (tollctl_out.h).
 *
 * All writers walk the text one UTF-8 sequence at a time (utf8_len), so a
 * bad byte is replaced on its own and the valid text around it is kept.
 * Runs of printable ASCII, by far the common case (ids, names, tags),
 * need no escaping in any format and go out with one fwrite.
 */
#include "tools/tollctl_out.h"

#include <stdbool.h>
#include <stdint.h>

/* The length of the valid UTF-8 sequence at p[0..n), 0 if there is none. */
static size_t utf8_len(const unsigned char *p, size_t n)
{
	uint32_t cp, min;
	size_t len;
	if (p[0] < 0x80)
		return 1;
	if (p[0] >= 0xc2 && p[0] <= 0xdf) {
		len = 2, cp = p[0] & 0x1f, min = 0x80;
	} else if ((p[0] & 0xf0) == 0xe0) {
		len = 3, cp = p[0] & 0x0f, min = 0x800;
	} else if (p[0] >= 0xf0 && p[0] <= 0xf4) {
		len = 4, cp = p[0] & 0x07, min = 0x10000;
	} else {
		return 0;
	}
	if (n < len)
		return 0;
	for (size_t i = 1; i < len; i++) {
		if ((p[i] & 0xc0) != 0x80)
			return 0;
		cp = cp << 6 | (p[i] & 0x3f);
	}
	return cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff) ? 0 : len;
}

/* How many bytes from u[0..n) are printable ASCII other than `a` and `b`. */
static size_t plain_run(const unsigned char *u, size_t n, unsigned char a, unsigned char b)
{
	size_t i = 0;
	while (i < n && u[i] >= 0x20 && u[i] < 0x7f && u[i] != a && u[i] != b)
		i++;
	return i;
}

void tollctl_json_str(FILE *f, const char *p, size_t n)
{
	const unsigned char *u = (const unsigned char *)p;
	putc('"', f);
	for (size_t i = 0; i < n;) {
		size_t run = plain_run(u + i, n - i, '"', '\\');
		if (run) {
			fwrite(u + i, 1, run, f);
			i += run;
			continue;
		}
		size_t k = utf8_len(u + i, n - i);
		if (u[i] == '"' || u[i] == '\\')
			fprintf(f, "\\%c", u[i]);
		else if (u[i] < 0x20)
			fprintf(f, "\\u%04x", u[i]);
		else if (!k)
			fputs("\\ufffd", f);
		else
			fwrite(u + i, 1, k, f);
		i += k ? k : 1;
	}
	putc('"', f);
}

static bool csv_needs_quotes(const char *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (p[i] == ',' || p[i] == '"' || p[i] == '\r' || p[i] == '\n')
			return true;
	return false;
}

/* p[0..n) as UTF-8, bytes that are not UTF-8 as U+FFFD, quotes doubled
 * (a field with a quote is always quoted). */
static void csv_text(FILE *f, const char *p, size_t n)
{
	const unsigned char *u = (const unsigned char *)p;
	for (size_t i = 0; i < n;) {
		size_t run = plain_run(u + i, n - i, '"', '"');
		if (run) {
			fwrite(u + i, 1, run, f);
			i += run;
			continue;
		}
		size_t k = utf8_len(u + i, n - i);
		if (!k)
			fputs("\xef\xbf\xbd", f);
		else if (u[i] == '"')
			fputs("\"\"", f);
		else
			fwrite(u + i, 1, k, f);
		i += k ? k : 1;
	}
}

void tollctl_csv_field(FILE *f, const char *p, size_t n)
{
	bool quoted = csv_needs_quotes(p, n);
	if (quoted)
		putc('"', f);
	csv_text(f, p, n);
	if (quoted)
		putc('"', f);
}

/* The character at p[0..n) for a terminal: how many bytes it takes, and
 * what to print for it (*out, *out_len). */
static size_t plain_char(const unsigned char *p, size_t n, const char **out, size_t *out_len)
{
	size_t k = utf8_len(p, n);
	if (!k) {
		*out = "\xef\xbf\xbd", *out_len = 3;
		return 1;
	}
	if (p[0] < 0x20 || p[0] == 0x7f) {
		*out = "?", *out_len = 1;
		return 1;
	}
	*out = (const char *)p, *out_len = k;
	return k;
}

size_t tollctl_text_plain(FILE *f, const char *p, size_t n)
{
	size_t cols = 0;
	for (size_t i = 0; i < n; cols++) {
		size_t run = plain_run((const unsigned char *)p + i, n - i, 0x7f, 0x7f);
		if (run) {
			fwrite(p + i, 1, run, f);
			i += run;
			cols += run - 1;
			continue;
		}
		const char *o;
		size_t olen;
		i += plain_char((const unsigned char *)p + i, n - i, &o, &olen);
		fwrite(o, 1, olen, f);
	}
	return cols;
}

size_t tollctl_text_width(const char *p, size_t n)
{
	size_t cols = 0;
	for (size_t i = 0; i < n; cols++) {
		const char *o;
		size_t olen;
		i += plain_char((const unsigned char *)p + i, n - i, &o, &olen);
	}
	return cols;
}
