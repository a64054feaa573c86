/*
 * mockllm_http.c — request framing: the http-parser callbacks that turn a
 * connection's byte stream into `struct request`s, and the table of
 * x-mock-* request headers.
 *
 * http-parser is streaming: it is fed whatever bytes arrived and calls back
 * with pieces (a header name may come in two calls, a body in many). The
 * callbacks copy what mockllm needs into the fixed-size fields of the
 * request — the target, the names and values of the few headers it knows —
 * and append the body, de-chunked, to the connection's body buffer, so the
 * input bytes can be dropped as soon as they are parsed. Everything is
 * bounded: the header block by the parser (64 KiB, then 431), the body by
 * on_body (64 MiB, then 413), our header values by their buffers.
 *
 * On message complete the callback pauses the parser. request_parse() then
 * starts the reply and, if it finished at once, unpauses and goes on with
 * the next pipelined request; a reply that has to wait (delays, streams,
 * stalls) holds the requests behind it until it is done, so pipelined
 * requests are answered in order.
 */
#include <errno.h>
#include <limits.h>
#include <strings.h>

#include "mockllm.h"

static struct conn *conn_of(http_parser *p)
{
	return p->data;
}

/* ---- the x-mock-* knobs ---- */

/*
 * One row per header: where its value goes and its bounds. Out-of-range
 * values are clamped when `clamp` is set and ignored otherwise; values
 * that are not numbers (or true/false for the 0..1 ones) are ignored.
 */
struct knob_row {
	const char *name;       /* lower case */
	uint16_t offset;        /* into struct knobs */
	bool clamp;
	int64_t min, max;
};

#define KNOB(n, field, clamp_, lo, hi) \
	{ n, offsetof(struct knobs, field), clamp_, lo, hi }

static const struct knob_row knob_table[] = {
	KNOB("x-mock-tokens",              tokens,              true,  0, MOCK_MAX_TOKENS),
	KNOB("x-mock-tokens-per-event",    tokens_per_event,    true,  1, MOCK_MAX_TOKENS),
	KNOB("x-mock-token-delay-us",      token_delay_us,      true,  0, 10 * 1000 * 1000),
	KNOB("x-mock-first-byte-delay-ms", first_byte_delay_ms, true,  0, 3600 * 1000),
	KNOB("x-mock-status",              status,              false, 200, 599),
	KNOB("x-mock-reset-after",         reset_after,         true,  0, 1ll << 40),
	KNOB("x-mock-stall-after",         stall_after,         true,  0, MOCK_MAX_TOKENS),
	KNOB("x-mock-chunked",             chunked,             false, 0, 1),
	KNOB("x-mock-tool-call",           tool_call,           false, 0, 1),
	KNOB("x-mock-loop",                loop,                false, 0, 1),
	KNOB("x-mock-garbage",             garbage,             false, 0, 1),
	KNOB("x-mock-stall",               stall,               false, 0, 1),
	KNOB("x-mock-close",               close,               false, 0, 1),
};

static void knobs_defaults(struct knobs *k, const struct mock_config *cfg)
{
	*k = (struct knobs){
		.tokens = cfg->tokens,
		.tokens_per_event = 1,
		.token_delay_us = cfg->token_delay_us,
		.status = -1,
		.reset_after = -1,
		.stall_after = -1,
	};
}

/* Decimal digits, or true/false/yes/no. Returns 0 or -EINVAL. */
static int knob_value(const char *v, size_t n, int64_t *out)
{
	if ((n == 4 && strncasecmp(v, "true", 4) == 0) ||
	    (n == 3 && strncasecmp(v, "yes", 3) == 0)) {
		*out = 1;
		return 0;
	}
	if ((n == 5 && strncasecmp(v, "false", 5) == 0) ||
	    (n == 2 && strncasecmp(v, "no", 2) == 0)) {
		*out = 0;
		return 0;
	}
	if (n == 0 || n > 15)
		return -EINVAL;
	int64_t x = 0;
	for (size_t i = 0; i < n; i++) {
		if (v[i] < '0' || v[i] > '9')
			return -EINVAL;
		x = x * 10 + (v[i] - '0');
	}
	*out = x;
	return 0;
}

static void knob_set(struct knobs *k, const struct knob_row *row,
		     const char *v, size_t n)
{
	int64_t x;
	if (knob_value(v, n, &x) < 0)
		return;
	if (x < row->min || x > row->max) {
		if (!row->clamp)
			return;
		x = x < row->min ? row->min : row->max;
	}
	*(int64_t *)((char *)k + row->offset) = x;
}

/* A complete header name/value pair: keep it if it is one of ours. */
static void header_done(struct request *r)
{
	if (r->hname_overflow || r->hvalue_overflow || r->hname_len == 0)
		goto reset;
	const char *v = r->hvalue;
	size_t n = r->hvalue_len;
	while (n > 0 && (v[n - 1] == ' ' || v[n - 1] == '\t'))
		n--;
	if (r->hname_len == 6 && memcmp(r->hname, "expect", 6) == 0) {
		r->expect_continue = n == 12 && strncasecmp(v, "100-continue", 12) == 0;
	} else if (r->hname_len > 7 && memcmp(r->hname, "x-mock-", 7) == 0) {
		for (size_t i = 0; i < MOCK_ARRAY_SIZE(knob_table); i++) {
			const struct knob_row *row = &knob_table[i];
			if (strlen(row->name) == r->hname_len &&
			    memcmp(row->name, r->hname, r->hname_len) == 0) {
				knob_set(&r->knobs, row, v, n);
				break;
			}
		}
	}
reset:
	r->hname_len = r->hvalue_len = 0;
	r->hname_overflow = r->hvalue_overflow = false;
	r->in_value = false;
}

/* ---- routes ---- */

static bool path_ends_with(const char *path, size_t len, const char *suffix)
{
	size_t n = strlen(suffix);
	return len >= n && memcmp(path + len - n, suffix, n) == 0;
}

/* API routes match any path ending in their suffix (a proxy may prefix it). */
static enum route route_of(unsigned method, const char *path, size_t len, bool overflow)
{
	if (overflow)
		return ROUTE_NOT_FOUND;
	const char *query = memchr(path, '?', len);
	if (query)
		len = (size_t)(query - path);
	if (method == HTTP_GET || method == HTTP_HEAD) {
		if (len == 7 && memcmp(path, "/health", 7) == 0)
			return ROUTE_HEALTH;
		if (len == 11 && memcmp(path, "/mock/stats", 11) == 0)
			return ROUTE_STATS;
		return ROUTE_NOT_FOUND;
	}
	if (method != HTTP_POST)
		return ROUTE_NOT_FOUND;
	if (path_ends_with(path, len, "/v1/chat/completions"))
		return ROUTE_CHAT;
	if (path_ends_with(path, len, "/v1/completions"))
		return ROUTE_COMPLETIONS;
	if (path_ends_with(path, len, "/v1/embeddings"))
		return ROUTE_EMBEDDINGS;
	if (path_ends_with(path, len, "/v1/messages"))
		return ROUTE_MESSAGES;
	return ROUTE_NOT_FOUND;
}

/* ---- parser callbacks ---- */

static int on_message_begin(http_parser *p)
{
	struct conn *c = conn_of(p);
	struct request *r = &c->req;
	r->route = ROUTE_NOT_FOUND;
	r->keep_alive = r->http10 = r->expect_continue = false;
	r->path_overflow = r->in_value = false;
	r->hname_overflow = r->hvalue_overflow = false;
	r->path_len = 0;
	r->hname_len = r->hvalue_len = 0;
	r->too_large = 0;
	r->body_len = 0;
	knobs_defaults(&r->knobs, c->w->cfg);
	buf_trim(&c->body);
	return 0;
}

static int on_url(http_parser *p, const char *at, size_t n)
{
	struct request *r = &conn_of(p)->req;
	if (r->path_len + n > sizeof(r->path)) {
		r->path_overflow = true;
		return 0;
	}
	memcpy(r->path + r->path_len, at, n);
	r->path_len += (uint16_t)n;
	return 0;
}

static int on_header_field(http_parser *p, const char *at, size_t n)
{
	struct request *r = &conn_of(p)->req;
	if (r->in_value)
		header_done(r);
	if (r->hname_len + n > sizeof(r->hname)) {
		r->hname_overflow = true;
		return 0;
	}
	for (size_t i = 0; i < n; i++) {
		char ch = at[i];
		r->hname[r->hname_len++] = (ch >= 'A' && ch <= 'Z') ? (char)(ch + 32) : ch;
	}
	return 0;
}

static int on_header_value(http_parser *p, const char *at, size_t n)
{
	struct request *r = &conn_of(p)->req;
	r->in_value = true;
	if (r->hvalue_len + n > sizeof(r->hvalue)) {
		r->hvalue_overflow = true;
		return 0;
	}
	memcpy(r->hvalue + r->hvalue_len, at, n);
	r->hvalue_len += (uint8_t)n;
	return 0;
}

/*
 * Refuses a declared body over the limit before any of it is read, and
 * answers Expect: 100-continue. A non-zero return stops the parser.
 */
static int on_headers_complete(http_parser *p)
{
	struct conn *c = conn_of(p);
	struct request *r = &c->req;
	if (r->in_value || r->hname_len)
		header_done(r);
	r->http10 = p->http_major == 1 && p->http_minor == 0;
	bool chunked = p->flags & F_CHUNKED;
	bool has_length = !chunked && p->content_length != ULLONG_MAX;
	if (has_length && p->content_length > MOCK_MAX_BODY_BYTES) {
		r->too_large = 413;
		return -1;
	}
	bool has_body = chunked || (has_length && p->content_length > 0);
	if (r->expect_continue && has_body && !r->http10 &&
	    buf_reserve(&c->out, 32) == 0)
		buf_lit(&c->out, "HTTP/1.1 100 Continue\r\n\r\n");
	return 0;
}

static int on_body(http_parser *p, const char *at, size_t n)
{
	struct conn *c = conn_of(p);
	struct request *r = &c->req;
	if (r->body_len + n > MOCK_MAX_BODY_BYTES || buf_reserve(&c->body, n) < 0) {
		r->too_large = 413;
		return -1;
	}
	buf_put(&c->body, at, n);
	r->body_len += n;
	return 0;
}

static int on_message_complete(http_parser *p)
{
	struct conn *c = conn_of(p);
	struct request *r = &c->req;
	r->keep_alive = http_should_keep_alive(p) && !p->upgrade;
	r->route = route_of(p->method, r->path, r->path_len, r->path_overflow);
	http_parser_pause(p, 1);
	return 0;
}

static const http_parser_settings parser_settings = {
	.on_message_begin = on_message_begin,
	.on_url = on_url,
	.on_header_field = on_header_field,
	.on_header_value = on_header_value,
	.on_headers_complete = on_headers_complete,
	.on_body = on_body,
	.on_message_complete = on_message_complete,
};

/* ---- driving the parser ---- */

void request_parser_setup(void)
{
	http_parser_set_max_header_size(MOCK_MAX_HEADER_BYTES);
}

void request_init(struct conn *c)
{
	http_parser_init(&c->parser, HTTP_REQUEST);
	c->parser.data = c;
}

/* True while the connection may take another request off its input. */
static bool request_wanted(const struct conn *c)
{
	return c->state == CONN_READING && c->reply.phase == REPLY_IDLE &&
	       c->out.len - c->out_sent < MOCK_OUT_HIGH_WATER;
}

static int refusal_status(const struct conn *c, enum http_errno err)
{
	if (err == HPE_HEADER_OVERFLOW)
		return 431;
	if (c->req.too_large)
		return c->req.too_large;
	return 400;
}

size_t request_parse(struct conn *c, const char *data, size_t len)
{
	size_t off = 0;
	while (off < len && request_wanted(c)) {
		size_t n = http_parser_execute(&c->parser, &parser_settings,
					       data + off, len - off);
		off += n;
		enum http_errno err = HTTP_PARSER_ERRNO(&c->parser);
		if (err == HPE_PAUSED) {
			http_parser_pause(&c->parser, 0);
			reply_begin(c);
			continue;
		}
		if (err != HPE_OK) {
			reply_refuse(c, refusal_status(c, err));
			return len;
		}
		if (n == 0)     /* after an upgrade: nothing more to frame */
			return len;
	}
	return off;
}
