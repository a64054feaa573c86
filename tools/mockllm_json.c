/*
 * mockllm_json.c — the bounded scanner that takes the few top-level fields
 * mockllm needs from a request body: "model", "stream", "max_tokens" (or
 * "max_completion_tokens") and "stream_options": {"include_usage": ...}.
 *
 * It builds nothing and allocates nothing. It walks the top-level object
 * key by key; a key it wants is read in place, every other value is skipped
 * by one iterative loop that only counts brackets and steps over strings,
 * so nesting depth costs no stack and the work is linear in the body. It
 * checks the structure it walks (quotes, colons, commas, balanced
 * brackets), not full JSON grammar inside skipped values: a mock only has
 * to refuse what a real provider would obviously refuse.
 *
 * The model comes back as the raw bytes between its quotes, still escaped,
 * which is exactly what the replies need to echo it inside a JSON string.
 */
#include <errno.h>

#include "mockllm.h"

/* A cursor over the body; every read is checked against `end`. */
struct scan {
	const char *p;
	const char *end;
};

static void skip_ws(struct scan *s)
{
	while (s->p < s->end &&
	       (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r'))
		s->p++;
}

/* True (and consumes it) if the next non-blank byte is `c`. */
static bool take(struct scan *s, char c)
{
	skip_ws(s);
	if (s->p < s->end && *s->p == c) {
		s->p++;
		return true;
	}
	return false;
}

/*
 * At an opening quote: consumes the string and returns the span between
 * the quotes, escapes untouched. Raw control bytes and a missing closing
 * quote are errors.
 */
static int scan_string(struct scan *s, const char **start, size_t *len)
{
	if (!take(s, '"'))
		return -EINVAL;
	const char *from = s->p;
	while (s->p < s->end) {
		unsigned char ch = (unsigned char)*s->p;
		if (ch == '"') {
			*start = from;
			*len = (size_t)(s->p - from);
			s->p++;
			return 0;
		}
		if (ch < 0x20 || (ch == '\\' && s->end - s->p < 2))
			return -EINVAL;
		s->p += ch == '\\' ? 2 : 1;
	}
	return -EINVAL;
}

/* Consumes a number or literal: the run of bytes that can form one. */
static int skip_scalar(struct scan *s)
{
	const char *from = s->p;
	while (s->p < s->end) {
		char ch = *s->p;
		if (!((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') ||
		      (ch >= 'A' && ch <= 'Z') || ch == '-' || ch == '+' || ch == '.'))
			break;
		s->p++;
	}
	return s->p > from ? 0 : -EINVAL;
}

/* Consumes one value of any type, nested or not, without recursion. */
static int skip_value(struct scan *s)
{
	size_t depth = 0;
	do {
		skip_ws(s);
		if (s->p >= s->end)
			return -EINVAL;
		const char *unused;
		size_t unused_len;
		switch (*s->p) {
		case '"':
			if (scan_string(s, &unused, &unused_len) < 0)
				return -EINVAL;
			break;
		case '{':
		case '[':
			depth++;
			s->p++;
			break;
		case '}':
		case ']':
			if (depth == 0)
				return -EINVAL;
			depth--;
			s->p++;
			break;
		case ',':
		case ':':
			if (depth == 0)
				return -EINVAL;
			s->p++;
			break;
		default:
			if (skip_scalar(s) < 0)
				return -EINVAL;
		}
	} while (depth > 0);
	return 0;
}

/* True (and consumes it) if the next bytes are the literal `lit`. */
static bool take_literal(struct scan *s, const char *lit, size_t n)
{
	skip_ws(s);
	if ((size_t)(s->end - s->p) < n || memcmp(s->p, lit, n) != 0)
		return false;
	s->p += n;
	return true;
}

/* true, false or null (null reads as false). */
static int scan_bool(struct scan *s, bool *out)
{
	if (take_literal(s, "true", 4))
		*out = true;
	else if (take_literal(s, "false", 5) || take_literal(s, "null", 4))
		*out = false;
	else
		return -EINVAL;
	return 0;
}

/* A non-negative integer, or null (-1). Clamped to 2^40. */
static int scan_count(struct scan *s, int64_t *out)
{
	if (take_literal(s, "null", 4)) {
		*out = -1;
		return 0;
	}
	int64_t v = 0;
	const char *from = s->p;
	while (s->p < s->end && *s->p >= '0' && *s->p <= '9') {
		if (v < (1ll << 40))
			v = v * 10 + (*s->p - '0');
		s->p++;
	}
	if (s->p == from)
		return -EINVAL;
	if (s->p < s->end && (*s->p == '.' || *s->p == 'e' || *s->p == 'E'))
		return -EINVAL;
	*out = v > (1ll << 40) ? (1ll << 40) : v;
	return 0;
}

static bool key_is(const char *key, size_t len, const char *want)
{
	return strlen(want) == len && memcmp(key, want, len) == 0;
}

/*
 * Walks an object's "key": value pairs, handing each to `field`, which
 * must consume the value. Returns 0 or -EINVAL.
 */
typedef int (*field_fn)(struct scan *s, const char *key, size_t key_len,
			void *ctx, const char **why);

static int scan_object(struct scan *s, field_fn field, void *ctx, const char **why)
{
	if (!take(s, '{'))
		return -EINVAL;
	if (take(s, '}'))
		return 0;
	do {
		const char *key;
		size_t key_len;
		skip_ws(s);
		if (scan_string(s, &key, &key_len) < 0 || !take(s, ':'))
			return -EINVAL;
		skip_ws(s);
		if (field(s, key, key_len, ctx, why) < 0)
			return -EINVAL;
	} while (take(s, ','));
	return take(s, '}') ? 0 : -EINVAL;
}

static int stream_options_field(struct scan *s, const char *key, size_t key_len,
				void *ctx, const char **why)
{
	struct body_fields *out = ctx;
	if (!key_is(key, key_len, "include_usage"))
		return skip_value(s);
	if (scan_bool(s, &out->include_usage) < 0) {
		*why = "stream_options.include_usage must be a boolean";
		return -EINVAL;
	}
	return 0;
}

static int top_field(struct scan *s, const char *key, size_t key_len,
		     void *ctx, const char **why)
{
	struct body_fields *out = ctx;
	if (key_is(key, key_len, "model")) {
		const char *m;
		size_t n;
		if (s->p >= s->end || *s->p != '"' || scan_string(s, &m, &n) < 0) {
			*why = "model must be a string";
			return -EINVAL;
		}
		out->model = m;
		out->model_len = (uint32_t)MOCK_MIN(n, (size_t)UINT32_MAX);
		return 0;
	}
	if (key_is(key, key_len, "stream")) {
		if (scan_bool(s, &out->stream) < 0) {
			*why = "stream must be a boolean";
			return -EINVAL;
		}
		return 0;
	}
	if (key_is(key, key_len, "max_tokens") ||
	    key_is(key, key_len, "max_completion_tokens")) {
		if (scan_count(s, &out->max_tokens) < 0) {
			*why = "max_tokens must be a non-negative integer";
			return -EINVAL;
		}
		return 0;
	}
	if (key_is(key, key_len, "stream_options") && s->p < s->end && *s->p == '{')
		return scan_object(s, stream_options_field, out, why);
	return skip_value(s);
}

int json_scan_request(const char *body, size_t len, struct body_fields *out,
		      const char **why)
{
	struct scan s = { .p = body, .end = body + len };
	*out = (struct body_fields){ .max_tokens = -1 };
	*why = NULL;
	skip_ws(&s);
	if (scan_object(&s, top_field, out, why) < 0) {
		if (!*why)
			*why = "request body is not a valid JSON object";
		return -EINVAL;
	}
	skip_ws(&s);
	if (s.p != s.end) {
		*why = "unexpected bytes after the JSON object";
		return -EINVAL;
	}
	return 0;
}
