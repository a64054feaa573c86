/*
 * json_scan.c — a single-pass RFC 8259 validator (json_scan.h).
 *
 * Recursive descent over an explicit depth counter; each value parser
 * returns the offset just past the value or -1. Only top-level members are
 * matched against the fields of struct json_top.
 */
#include "core/json_scan.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "core/defs.h"

struct scan {
	const char *p;
	size_t len;
	int depth;
	bool too_deep;
};

static size_t skip_ws(const struct scan *s, size_t i)
{
	while (i < s->len && (s->p[i] == ' ' || s->p[i] == '\n' ||
			      s->p[i] == '\r' || s->p[i] == '\t'))
		i++;
	return i;
}

static bool is_hex(char c)
{
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') ||
	       (c >= 'A' && c <= 'F');
}

/* At an opening quote; returns offset past the closing quote or -1. */
static long scan_string(const struct scan *s, size_t i, bool *escaped)
{
	for (i++; i < s->len; i++) {
		unsigned char c = (unsigned char)s->p[i];
		if (c == '"')
			return (long)i + 1;
		if (c < 0x20)
			return -1;
		if (c != '\\')
			continue;
		*escaped = true;
		if (++i >= s->len)
			return -1;
		c = (unsigned char)s->p[i];
		if (c == 'u') {
			if (s->len - i <= 4 || !is_hex(s->p[i + 1]) || !is_hex(s->p[i + 2]) ||
			    !is_hex(s->p[i + 3]) || !is_hex(s->p[i + 4]))
				return -1;
			i += 4;
		} else if (!c || !strchr("\"\\/bfnrt", c)) {
			return -1;
		}
	}
	return -1;
}

static long scan_number(const struct scan *s, size_t i)
{
	size_t start = i;
	if (i < s->len && s->p[i] == '-')
		i++;
	if (i >= s->len)
		return -1;
	if (s->p[i] == '0') {
		i++;
	} else if (s->p[i] >= '1' && s->p[i] <= '9') {
		while (i < s->len && s->p[i] >= '0' && s->p[i] <= '9')
			i++;
	} else {
		return -1;
	}
	if (i < s->len && s->p[i] == '.') {
		size_t d = ++i;
		while (i < s->len && s->p[i] >= '0' && s->p[i] <= '9')
			i++;
		if (i == d)
			return -1;
	}
	if (i < s->len && (s->p[i] == 'e' || s->p[i] == 'E')) {
		i++;
		if (i < s->len && (s->p[i] == '+' || s->p[i] == '-'))
			i++;
		size_t d = i;
		while (i < s->len && s->p[i] >= '0' && s->p[i] <= '9')
			i++;
		if (i == d)
			return -1;
	}
	return i > start ? (long)i : -1;
}

static long scan_literal(const struct scan *s, size_t i, const char *word)
{
	size_t n = strlen(word);
	if (s->len - i < n || memcmp(s->p + i, word, n))
		return -1;
	return (long)(i + n);
}

/* The top-level members a caller wants, and where they were found. */
struct wanted {
	const char *const *names;
	size_t n;
	struct json_span *spans;         /* n of them */
	uint32_t end_of_object;
};

static long scan_value(struct scan *s, size_t i, struct wanted *top);

/* At '{' or '['; `top` is non-NULL only for the outermost object. */
static long scan_container(struct scan *s, size_t i, struct wanted *top)
{
	bool object = s->p[i] == '{';
	char close = object ? '}' : ']';
	if (++s->depth > JSON_MAX_DEPTH) {
		s->too_deep = true;
		return -1;
	}
	i = skip_ws(s, i + 1);
	if (i < s->len && s->p[i] == close) {
		s->depth--;
		if (top)
			top->end_of_object = (uint32_t)i;
		return (long)i + 1;
	}
	for (;;) {
		struct json_span *field = NULL;
		if (object) {
			if (i >= s->len || s->p[i] != '"')
				return -1;
			bool esc = false;
			long k = scan_string(s, i, &esc);
			if (k < 0)
				return -1;
			/* A top-level key spelled with escapes ("mod\u0065l") would
			 * be one key to the provider and another to us. */
			if (top && esc)
				return -1;
			if (top) {
				const char *name = s->p + i + 1;
				size_t nlen = (size_t)k - i - 2;
				for (size_t f = 0; f < top->n && !field; f++)
					if (strlen(top->names[f]) == nlen &&
					    !memcmp(name, top->names[f], nlen))
						field = &top->spans[f];
				if (field && field->present)
					return -1;   /* duplicate key we act on */
			}
			i = skip_ws(s, (size_t)k);
			if (i >= s->len || s->p[i] != ':')
				return -1;
			i = skip_ws(s, i + 1);
		}
		size_t vstart = i;
		long v = scan_value(s, i, NULL);
		if (v < 0)
			return -1;
		if (field) {
			bool str = s->p[vstart] == '"';
			field->present = true;
			field->off = (uint32_t)(vstart + str);
			field->len = (uint32_t)((size_t)v - vstart - 2 * str);
			field->escaped = str && memchr(s->p + vstart + 1, '\\', field->len);
		}
		i = skip_ws(s, (size_t)v);
		if (i >= s->len)
			return -1;
		if (s->p[i] == ',') {
			i = skip_ws(s, i + 1);
			continue;
		}
		if (s->p[i] != close)
			return -1;
		s->depth--;
		if (top)
			top->end_of_object = (uint32_t)i;
		return (long)i + 1;
	}
}

static long scan_value(struct scan *s, size_t i, struct wanted *top)
{
	if (i >= s->len)
		return -1;
	bool esc = false;
	switch (s->p[i]) {
	case '{':
	case '[':
		return scan_container(s, i, top);
	case '"':
		return scan_string(s, i, &esc);
	case 't':
		return scan_literal(s, i, "true");
	case 'f':
		return scan_literal(s, i, "false");
	case 'n':
		return scan_literal(s, i, "null");
	default:
		return scan_number(s, i);
	}
}

static int scan_top(const char *buf, size_t len, struct wanted *w)
{
	memset(w->spans, 0, w->n * sizeof(*w->spans));
	struct scan s = { .p = buf, .len = len };
	size_t i = skip_ws(&s, 0);
	if (i >= len || buf[i] != '{')
		return -EINVAL;
	long end = scan_container(&s, i, w);
	if (end < 0)
		return s.too_deep ? -E2BIG : -EINVAL;
	return skip_ws(&s, (size_t)end) == len ? 0 : -EINVAL;
}

int json_scan_top(const char *buf, size_t len, struct json_top *out)
{
	static const char *const names[] = { "model", "stream", "max_tokens",
					     "max_completion_tokens", "stream_options", "tools",
					     "functions", "response_format" };
	struct json_span spans[ARRAY_SIZE(names)];
	struct wanted w = { names, ARRAY_SIZE(names), spans, 0 };
	int rc = scan_top(buf, len, &w);
	*out = (struct json_top){
		.model = spans[0], .stream = spans[1], .max_tokens = spans[2],
		.max_completion_tokens = spans[3], .stream_options = spans[4], .tools = spans[5],
		.functions = spans[6], .response_format = spans[7],
		.end_of_object = w.end_of_object,
	};
	return rc;
}

int json_scan_fields(const char *buf, size_t len, const char *const *names, size_t n,
		     struct json_span *spans)
{
	struct wanted w = { names, n, spans, 0 };
	return scan_top(buf, len, &w);
}

size_t json_escape(char *out, size_t cap, const char *s)
{
	size_t n = 0;
	for (; *s && n + 7 < cap; s++) {
		unsigned char c = (unsigned char)*s;
		if (c == '"' || c == '\\') {
			out[n++] = '\\';
			out[n++] = (char)c;
		} else if (c < 0x20) {
			n += (size_t)snprintf(out + n, cap - n, "\\u%04x", c);
		} else {
			out[n++] = (char)c;
		}
	}
	if (cap)
		out[n < cap ? n : cap - 1] = '\0';
	return n;
}
