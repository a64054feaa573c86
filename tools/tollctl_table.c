/*
 * tollctl_table.c — printing report sections (tollctl_table.h).
 *
 * Every format goes through cell_spell(), which turns a cell into its
 * text for either people (TEXT) or machines (CSV, JSON); the writers only
 * add alignment, quoting and separators. The text format measures every
 * cell first (a second pass over the rows, cheap next to reading a
 * ledger), so columns line up whatever their contents.
 */
#include "tools/tollctl_table.h"

#include <string.h>

#include "core/money.h"
#include "tools/tollctl_out.h"
#include "tools/tollctl_time.h"

enum spelling { FOR_PEOPLE, FOR_MACHINES };

/* Room for any spelled number. */
#define SPELL_MAX 64

/* Row r of t into out[0..ncols). */
static void get_row(const struct tollctl_table *t, size_t r, struct tollctl_cell *out)
{
	for (size_t i = 0; i < t->ncols; i++)
		tollctl_cell_text(&out[i], "", 0);
	t->row(t, r, out);
}

/* v / 10^digits as a decimal with `digits` fraction digits into buf. */
static size_t spell_fixed(char *buf, int64_t v, int64_t scale, int digits)
{
	/* through the magnitude as unsigned: -INT64_MIN does not exist */
	uint64_t m = v < 0 ? 0 - (uint64_t)v : (uint64_t)v;
	int n = snprintf(buf, SPELL_MAX, "%s%llu.%0*llu", v < 0 ? "-" : "",
			 (unsigned long long)(m / (uint64_t)scale), digits,
			 (unsigned long long)(m % (uint64_t)scale));
	return n < 0 ? 0 : (size_t)n;
}

/* The text of c for who into *len; buf (SPELL_MAX bytes) holds it unless
 * it is the cell's own text. */
static const char *cell_spell(const struct tollctl_cell *c, enum spelling who, char *buf,
			      size_t *len)
{
	switch (c->kind) {
	case TC_TEXT:
		*len = c->len;
		return c->p;
	case TC_COUNT:
		*len = (size_t)snprintf(buf, SPELL_MAX, "%llu", (unsigned long long)c->u);
		return buf;
	case TC_MONEY:
		*len = money_format(c->v, buf, SPELL_MAX);
		return buf;
	case TC_SHARE:
		if (who == FOR_MACHINES) {
			*len = spell_fixed(buf, c->v, 10000, 4);
			return buf;
		}
		*len = spell_fixed(buf, c->v, 100, 2);
		buf[(*len)++] = '%';
		buf[*len] = '\0';
		return buf;
	case TC_RATIO:
		if (c->v < 0) {
			*len = who == FOR_MACHINES ? 0 : 1;
			return "-";
		}
		*len = spell_fixed(buf, c->v, 100, 2);
		memcpy(buf + *len, ":1", 3);
		*len += 2;
		return buf;
	case TC_DAY:
		*len = (size_t)tollctl_date_format(c->v, buf, SPELL_MAX);
		return buf;
	}
	*len = 0;
	return "";
}

static bool right_aligned(const struct tollctl_cell *c)
{
	return c->kind != TC_TEXT && c->kind != TC_DAY;
}

static size_t cell_width(const struct tollctl_cell *c)
{
	char buf[SPELL_MAX];
	size_t len;
	const char *p = cell_spell(c, FOR_PEOPLE, buf, &len);
	return c->kind == TC_TEXT ? tollctl_text_width(p, len) : len;
}

static void pad(FILE *f, size_t n)
{
	while (n--)
		putc(' ', f);
}

/* One aligned cell; the last column of a line gets no trailing blanks. */
static void text_cell(FILE *f, const struct tollctl_cell *c, size_t width, bool last)
{
	char buf[SPELL_MAX];
	size_t len, w = cell_width(c);
	const char *p = cell_spell(c, FOR_PEOPLE, buf, &len);
	if (right_aligned(c))
		pad(f, width - w);
	tollctl_text_plain(f, p, len);
	if (!right_aligned(c) && !last)
		pad(f, width - w);
}

/* The header and rule lines; numeric columns (judged by row 0, first)
 * are right-aligned under theirs. */
static void text_header(FILE *f, const struct tollctl_table *t, const size_t *width,
			const struct tollctl_cell *first, char fill)
{
	for (size_t i = 0; i < t->ncols; i++) {
		bool right = right_aligned(&first[i]), last = i + 1 == t->ncols;
		size_t w = fill ? width[i] : strlen(t->cols[i]);
		if (i)
			fputs("  ", f);
		if (right)
			pad(f, width[i] - w);
		for (size_t k = 0; k < w; k++)
			putc(fill ? fill : t->cols[i][k], f);
		if (!right && !last)
			pad(f, width[i] - w);
	}
	putc('\n', f);
}

static void text_row(FILE *f, const struct tollctl_table *t, size_t r, const size_t *width)
{
	struct tollctl_cell row[TOLLCTL_TABLE_MAX_COLS];
	get_row(t, r, row);
	for (size_t i = 0; i < t->ncols; i++) {
		if (i)
			fputs("  ", f);
		text_cell(f, &row[i], width[i], i + 1 == t->ncols);
	}
	putc('\n', f);
}

void tollctl_table_text(FILE *f, const struct tollctl_table *t, const char *empty)
{
	fprintf(f, "%s\n", t->title);
	if (!t->rows) {
		fprintf(f, "  %s\n\n", empty);
		return;
	}
	size_t width[TOLLCTL_TABLE_MAX_COLS];
	struct tollctl_cell first[TOLLCTL_TABLE_MAX_COLS], row[TOLLCTL_TABLE_MAX_COLS];
	for (size_t i = 0; i < t->ncols; i++)
		width[i] = strlen(t->cols[i]);
	for (size_t r = 0; r < t->rows; r++) {
		get_row(t, r, row);
		for (size_t i = 0; i < t->ncols; i++) {
			size_t w = cell_width(&row[i]);
			width[i] = w > width[i] ? w : width[i];
		}
	}
	get_row(t, 0, first);
	text_header(f, t, width, first, 0);
	text_header(f, t, width, first, '-');
	for (size_t r = 0; r < t->rows; r++) {
		if (t->footer && r == t->rows - t->footer)
			text_header(f, t, width, first, '-');
		text_row(f, t, r, width);
	}
	putc('\n', f);
}

void tollctl_table_text_kv(FILE *f, const struct tollctl_table *t)
{
	size_t width = 0;
	for (size_t i = 0; i < t->ncols; i++)
		width = strlen(t->cols[i]) > width ? strlen(t->cols[i]) : width;
	fprintf(f, "%s\n", t->title);
	struct tollctl_cell row[TOLLCTL_TABLE_MAX_COLS];
	if (t->rows)
		get_row(t, 0, row);
	for (size_t i = 0; t->rows && i < t->ncols; i++) {
		char buf[SPELL_MAX];
		size_t len;
		const char *p = cell_spell(&row[i], FOR_PEOPLE, buf, &len);
		fprintf(f, "  %s:", t->cols[i]);
		pad(f, width - strlen(t->cols[i]) + 1);
		tollctl_text_plain(f, p, len);
		putc('\n', f);
	}
}

void tollctl_table_csv(FILE *f, const struct tollctl_table *t)
{
	fprintf(f, "# %s\n", t->name);
	for (size_t i = 0; i < t->ncols; i++)
		fprintf(f, "%s%s", i ? "," : "", t->cols[i]);
	putc('\n', f);
	for (size_t r = 0; r < t->rows; r++) {
		struct tollctl_cell row[TOLLCTL_TABLE_MAX_COLS];
		get_row(t, r, row);
		for (size_t i = 0; i < t->ncols; i++) {
			char buf[SPELL_MAX];
			size_t len;
			const char *p = cell_spell(&row[i], FOR_MACHINES, buf, &len);
			if (i)
				putc(',', f);
			tollctl_csv_field(f, p, len);
		}
		putc('\n', f);
	}
}

static void json_value(FILE *f, const struct tollctl_cell *c)
{
	char buf[SPELL_MAX];
	size_t len;
	const char *p = cell_spell(c, FOR_MACHINES, buf, &len);
	if (c->kind == TC_COUNT || c->kind == TC_SHARE)
		fwrite(p, 1, len, f);
	else if (c->kind == TC_RATIO && c->v < 0)
		fputs("null", f);
	else
		tollctl_json_str(f, p, len);
}

static void json_row(FILE *f, const struct tollctl_table *t, size_t r)
{
	struct tollctl_cell row[TOLLCTL_TABLE_MAX_COLS];
	if (r < t->rows)
		get_row(t, r, row);
	for (size_t i = 0; i < t->ncols; i++) {
		fprintf(f, "%s\"%s\":", i ? "," : "{", t->cols[i]);
		if (r < t->rows)
			json_value(f, &row[i]);
		else
			fputs("null", f);
	}
	putc('}', f);
}

void tollctl_table_json(FILE *f, const struct tollctl_table *t)
{
	putc('[', f);
	for (size_t r = 0; r < t->rows; r++) {
		if (r)
			putc(',', f);
		json_row(f, t, r);
	}
	putc(']', f);
}

void tollctl_table_json_object(FILE *f, const struct tollctl_table *t)
{
	json_row(f, t, 0);
}
