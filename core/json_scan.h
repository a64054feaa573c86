/*
 * json_scan.h — validate a request body as JSON and pick out the top-level
 * fields the gateway decides on, in one pass, without building a tree.
 *
 * Bounded: nesting depth at most JSON_MAX_DEPTH; the input length is the
 * caller's (already limited by limits.max_body_bytes). Values are reported
 * as spans into the caller's buffer; nothing is allocated.
 */
#ifndef TOLLGATE_JSON_SCAN_H
#define TOLLGATE_JSON_SCAN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define JSON_MAX_DEPTH 64

struct json_span {
	uint32_t off, len;     /* string contents without quotes / raw token */
	bool present;
	bool escaped;          /* string contains backslash escapes */
};

/* The top-level members the gateway reads. Later stages add rows here. */
struct json_top {
	struct json_span model;      /* string */
	struct json_span stream;     /* literal true/false */
	struct json_span max_tokens; /* number */
	struct json_span max_completion_tokens;
	struct json_span stream_options;  /* object, raw */
	struct json_span tools;           /* raw: the call needs tool support */
	struct json_span functions;       /* raw: legacy OpenAI tools */
	struct json_span response_format; /* raw: json_schema inside needs it */
	uint32_t end_of_object;      /* offset of the final '}' */
};

/*
 * Returns 0 when buf is one JSON object (surrounding whitespace allowed),
 * -EINVAL when it is not valid JSON or not an object, -E2BIG when nested
 * deeper than JSON_MAX_DEPTH. A duplicate top-level key of interest is
 * -EINVAL too: two "model"s must not mean one thing to us and another to
 * the provider. For the same reason a top-level key written with escapes
 * is -EINVAL.
 */
int json_scan_top(const char *buf, size_t len, struct json_top *out);

/* The same for any top-level members: spans[i] for names[i] (n of them). */
int json_scan_fields(const char *buf, size_t len, const char *const *names, size_t n,
		     struct json_span *spans);

/*
 * Writes s as JSON string content (no quotes) into out[0..cap), always
 * NUL-terminated, truncating rather than overflowing; returns the length.
 */
size_t json_escape(char *out, size_t cap, const char *s);

#endif
