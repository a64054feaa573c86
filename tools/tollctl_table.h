/*
 * tollctl_table.h — a report section as rows of typed cells, and the
 * three ways tollctl prints one: an aligned text table for people, a CSV
 * block, a JSON array of objects (or one object).
 *
 * A table does not hold its rows: it has a count and a function that
 * fills row r's cells on demand, so a report grouped into millions of
 * rows costs no copy of them (the text format asks for each row twice:
 * once to measure the columns, once to print them).
 *
 * A cell holds a value and its kind, not text: each format spells the
 * kind its own way (a share is "12.34%" in a table and 0.1234 in CSV and
 * JSON; money is always money_format()'s decimal string, a JSON string).
 * Text cells point at bytes that outlive the printing (intern arenas,
 * string literals).
 */
#ifndef TOLLGATE_TOLLCTL_TABLE_H
#define TOLLGATE_TOLLCTL_TABLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

enum tollctl_cell_kind {
	TC_TEXT,      /* p[0..len): left-aligned; a JSON string */
	TC_COUNT,     /* u: a JSON number */
	TC_MONEY,     /* v micro-USD: a decimal string, as money_format() */
	TC_SHARE,     /* v basis points of a whole: "12.34%" / 0.1234 */
	TC_RATIO,     /* v hundredths of x in "x:1" ("3.42:1"); < 0: none ("-", null) */
	TC_DAY,       /* v days since 1970-01-01: "2026-11-23" */
};

struct tollctl_cell {
	enum tollctl_cell_kind kind;
	uint32_t len;
	union {
		const char *p;
		uint64_t u;
		int64_t v;
	};
};

#define TOLLCTL_TABLE_MAX_COLS 24

struct tollctl_table {
	const char *name;               /* CSV "# name" line, JSON key */
	const char *title;              /* heading in the text format */
	const char *const *cols;        /* column names (CSV header, JSON keys) */
	size_t ncols;                   /* at most TOLLCTL_TABLE_MAX_COLS */
	size_t rows;
	size_t footer;                  /* last rows set off by a rule (text only) */
	/* Fills row r (< rows) into out[0..ncols), which comes as empty
	 * texts. */
	void (*row)(const struct tollctl_table *t, size_t r, struct tollctl_cell *out);
	const void *ctx;                /* for row() */
};

static inline void tollctl_cell_text(struct tollctl_cell *c, const char *p, size_t len)
{
	c->kind = TC_TEXT, c->p = p, c->len = (uint32_t)len;
}

static inline void tollctl_cell_num(struct tollctl_cell *c, enum tollctl_cell_kind kind,
				    int64_t v)
{
	c->kind = kind, c->v = v;
}

static inline void tollctl_cell_count(struct tollctl_cell *c, uint64_t u)
{
	c->kind = TC_COUNT, c->u = u;
}

/* The text format: the title, then the columns aligned under a header
 * (text left, numbers right), or `empty` when there are no rows. */
void tollctl_table_text(FILE *f, const struct tollctl_table *t, const char *empty);
/* The text format for a one-row table: "name: value" per column. */
void tollctl_table_text_kv(FILE *f, const struct tollctl_table *t);
/* "# name", the header line, a line per row. */
void tollctl_table_csv(FILE *f, const struct tollctl_table *t);
/* [{"col": value, …}, …] */
void tollctl_table_json(FILE *f, const struct tollctl_table *t);
/* {"col": value, …} of row 0 (null values without one). */
void tollctl_table_json_object(FILE *f, const struct tollctl_table *t);

#endif
