/*
 * http1.c — http-parser callbacks that compact a head into spans, pause at
 * head end and message end, and hand body bytes to the owner.
 *
 * Pausing is what makes pipelining and raw relaying simple: http1_feed()
 * returns exactly where the head or the message ended, so the caller knows
 * which bytes are head, which are body and which belong to the next message.
 *
 * A chunked body whose owner asked for it (http1_fast_chunks: the metered
 * stream relay) has its whole, usual chunks read here without the parser,
 * which walks every framing byte through its state machine: the parser
 * pauses at the end of each chunk it reads (on_chunk_complete), so both
 * stand at a chunk-size line whenever the reading changes hands.
 */
#include "net/http1.h"

#include <limits.h>
#include <string.h>
#include <strings.h>

#include "core/defs.h"

static struct http_msg *msg_of(http_parser *p)
{
	return container_of(p, struct http_msg, parser);
}

/* Appends data to the head, continuing the span of `part` if it was the
 * last one written (callbacks split elements at read boundaries). */
static int head_append(struct http_msg *m, enum http_head_part part,
		       const char *data, size_t len)
{
	struct http_head *h = &m->head;
	if (h->too_large)
		return -1;
	if (h->len + len > h->cap) {
		h->too_large = true;
		return -1;
	}
	struct http_span *span;
	if (part == PART_URL) {
		span = &h->url;
		if (h->part != PART_URL)
			*span = (struct http_span){ .off = h->len };
	} else if (part == PART_NAME) {
		if (h->part != PART_NAME) {
			if (h->n_fields == HTTP_MAX_FIELDS) {
				h->too_large = true;
				return -1;
			}
			h->fields[h->n_fields++] = (struct http_field){
				.name = { .off = h->len } };
		}
		span = &h->fields[h->n_fields - 1].name;
	} else {
		span = &h->fields[h->n_fields - 1].value;
		if (h->part != PART_VALUE)
			*span = (struct http_span){ .off = h->len };
	}
	memcpy(h->buf + h->len, data, len);
	h->len += (uint32_t)len;
	span->len += (uint32_t)len;
	h->part = (uint8_t)part;
	return 0;
}

static int on_url(http_parser *p, const char *at, size_t len)
{
	return head_append(msg_of(p), PART_URL, at, len);
}

/* Trailer fields arrive through the same two callbacks as head fields.
 * They are dropped, never merged into the head (RFC 9110 6.5.1): the head
 * has been acted on already, and the body goes on re-framed without them. */
static int on_field(http_parser *p, const char *at, size_t len)
{
	struct http_msg *m = msg_of(p);
	return m->in_trailers ? 0 : head_append(m, PART_NAME, at, len);
}

static int on_value(http_parser *p, const char *at, size_t len)
{
	struct http_msg *m = msg_of(p);
	return m->in_trailers ? 0 : head_append(m, PART_VALUE, at, len);
}

/* After the last chunk's size line (size 0) comes the trailer section:
 * pause there so that http1_feed() knows where it starts. */
static int on_chunk_header(http_parser *p)
{
	struct http_msg *m = msg_of(p);
	if (p->content_length == 0) {
		m->in_trailers = true;
		http_parser_pause(p, 1);
	}
	return 0;
}

static int on_headers_complete(http_parser *p)
{
	struct http_msg *m = msg_of(p);
	m->head_done = true;
	m->event = HTTP_HEAD_DONE;
	http_parser_pause(p, 1);
	return 0;
}

static int on_body(http_parser *p, const char *at, size_t len)
{
	struct http_msg *m = msg_of(p);
	if (!m->on_body)
		return 0;
	int status = m->on_body(m, at, len);
	if (status) {
		m->body_status = (uint16_t)status;
		return -1;
	}
	return 0;
}

static int on_message_complete(http_parser *p)
{
	struct http_msg *m = msg_of(p);
	m->event = HTTP_MESSAGE_DONE;
	http_parser_pause(p, 1);
	return 0;
}

/* (fast_chunks only) A chunk ended: the parser stands at the next size
 * line. Pause, so that http1.c reads on from here. (After the trailer
 * section the parser calls this too, at the end of the message: not a
 * size line.) */
static int on_chunk_complete(http_parser *p)
{
	struct http_msg *m = msg_of(p);
	if (m->in_trailers)
		return 0;
	m->chunk_done = true;
	http_parser_pause(p, 1);
	return 0;
}

static const http_parser_settings settings = {
	.on_url = on_url,
	.on_header_field = on_field,
	.on_header_value = on_value,
	.on_headers_complete = on_headers_complete,
	.on_body = on_body,
	.on_message_complete = on_message_complete,
	.on_chunk_header = on_chunk_header,
};

static const http_parser_settings fast_settings = {
	.on_url = on_url,
	.on_header_field = on_field,
	.on_header_value = on_value,
	.on_headers_complete = on_headers_complete,
	.on_body = on_body,
	.on_message_complete = on_message_complete,
	.on_chunk_header = on_chunk_header,
	.on_chunk_complete = on_chunk_complete,
};

void http1_init(struct http_msg *m, enum http_parser_type type, char *buf,
		uint32_t cap, http_body_fn body_fn, void *owner)
{
	http_parser_init(&m->parser, type);
	/* Field slots are not cleared: n_fields says how many are valid. */
	m->head.buf = buf;
	m->head.len = 0;
	m->head.cap = cap;
	m->head.url = (struct http_span){ 0, 0 };
	m->head.n_fields = 0;
	m->head.part = PART_NONE;
	m->head.too_large = false;
	m->on_body = body_fn;
	m->owner = owner;
	m->event = HTTP_NEED_MORE;
	m->head_done = false;
	m->in_trailers = false;
	m->prev_cr = false;
	m->error_status = 0;
	m->body_status = 0;
	m->fast_chunks = false;
	m->at_chunk = false;
	m->chunk_done = false;
}

/* True if data[0..len) holds an LF not preceded by CR. HTTP/1.1 lets a
 * recipient accept bare LF; a gateway in front of other parsers must not,
 * or the two may disagree on where the head ends. */
static bool has_bare_lf(struct http_msg *m, const char *data, size_t len)
{
	const char *p = data, *end = data + len;
	while ((p = memchr(p, '\n', (size_t)(end - p)))) {
		bool cr = p > data ? p[-1] == '\r' : m->prev_cr;
		if (!cr)
			return true;
		p++;
	}
	if (len)
		m->prev_cr = data[len - 1] == '\r';
	return false;
}

static void fail(struct http_msg *m, uint16_t status)
{
	m->event = HTTP_ERROR;
	m->error_status = status;
}

/* http1_feed() through the parser. */
static size_t parse(struct http_msg *m, const char *data, size_t len)
{
	bool in_head = !m->head_done, in_trailers = m->in_trailers;
	m->event = HTTP_NEED_MORE;
	size_t n = http_parser_execute(&m->parser, m->fast_chunks ? &fast_settings : &settings,
				       data, len);
	enum http_errno err = HTTP_PARSER_ERRNO(&m->parser);

	if (in_head) {
		/* Paused at head end, the parser stopped on the final LF. */
		size_t head_bytes = m->head_done ? MIN(n + 1, len) : n;
		if (has_bare_lf(m, data, head_bytes)) {
			fail(m, 400);
			return n;
		}
	}
	if (in_trailers && has_bare_lf(m, data, n)) {
		/* (paused at message end, n includes the final LF) */
		fail(m, 400);
		return n;
	}
	if (!in_trailers && m->in_trailers && err == HPE_PAUSED &&
	    m->event == HTTP_NEED_MORE) {
		/* Paused by on_chunk_header() after the last chunk's size line:
		 * the trailer section starts at data + n. A zero-length feed
		 * would mean EOF to the parser, so stop if nothing is left. */
		http_parser_pause(&m->parser, 0);
		m->prev_cr = false;
		return n == len ? n : n + parse(m, data + n, len - n);
	}
	if (err == HPE_OK || err == HPE_PAUSED)
		return n;
	if (m->head.too_large || err == HPE_HEADER_OVERFLOW)
		fail(m, 431);
	else if (m->body_status)
		fail(m, m->body_status);
	else
		fail(m, 400);
	return n;
}

static const int8_t hex_value[256] = {
	['0'] = 1, ['1'] = 2, ['2'] = 3, ['3'] = 4, ['4'] = 5, ['5'] = 6, ['6'] = 7,
	['7'] = 8, ['8'] = 9, ['9'] = 10, ['a'] = 11, ['b'] = 12, ['c'] = 13, ['d'] = 14,
	['e'] = 15, ['f'] = 16, ['A'] = 11, ['B'] = 12, ['C'] = 13, ['D'] = 14, ['E'] = 15,
	['F'] = 16,
};   /* a hex digit's value + 1; 0: not one */

/*
 * The chunk at data[0..len), if it is whole there and of the usual form:
 * a size line of 1 to 8 hex digits (no overflow possible) and CRLF, for a
 * chunk that is not the last, then its data and CRLF. Returns the chunk's
 * length and its data in data[*at, *at + *size); 0 if it is not one.
 */
static size_t whole_chunk(const char *data, size_t len, size_t *at, size_t *size)
{
	size_t n = 0, i = 0;
	int v;
	while (i < len && i < 8 && (v = hex_value[(unsigned char)data[i]]))
		n = n * 16 + (size_t)(v - 1), i++;
	if (!i || !n || len - i < 2 || data[i] != '\r' || data[i + 1] != '\n')
		return 0;
	i += 2;
	if (len - i < n + 2 || data[i + n] != '\r' || data[i + n + 1] != '\n')
		return 0;
	*at = i;
	*size = n;
	return i + n + 2;
}

/* Reads whole chunks of the usual form from data[0..len), giving their
 * data to on_body; the parser stands at the size line where it stops.
 * Returns the bytes read. */
static size_t read_chunks(struct http_msg *m, const char *data, size_t len)
{
	size_t i = 0, at, size, n;
	while ((n = whole_chunk(data + i, len - i, &at, &size))) {
		int status = m->on_body ? m->on_body(m, data + i + at, size) : 0;
		if (status) {
			m->body_status = (uint16_t)status;
			fail(m, (uint16_t)status);
			return i;
		}
		i += n;
	}
	return i;
}

/* http1_feed() once http1_fast_chunks() was called: whole chunks here,
 * the rest through the parser, which pauses at the end of each chunk it
 * reads so that the next one can be read here. */
static size_t feed_fast(struct http_msg *m, const char *data, size_t len)
{
	size_t done = 0;
	m->event = HTTP_NEED_MORE;
	while (done < len) {
		if (m->at_chunk) {
			done += read_chunks(m, data + done, len - done);
			if (m->event == HTTP_ERROR || done == len)
				return done;
			m->at_chunk = false;   /* the parser reads from this size line */
		}
		m->chunk_done = false;
		done += parse(m, data + done, len - done);
		if (m->event != HTTP_NEED_MORE || !m->chunk_done)
			return done;
		http_parser_pause(&m->parser, 0);
		m->chunk_done = false;
		m->at_chunk = true;
	}
	return done;
}

size_t http1_feed(struct http_msg *m, const char *data, size_t len)
{
	return m->fast_chunks ? feed_fast(m, data, len) : parse(m, data, len);
}

void http1_fast_chunks(struct http_msg *m)
{
	m->fast_chunks = true;
}

void http1_resume(struct http_msg *m)
{
	http_parser_pause(&m->parser, 0);
	m->event = HTTP_NEED_MORE;
}

void http1_feed_eof(struct http_msg *m)
{
	m->event = HTTP_NEED_MORE;
	http_parser_execute(&m->parser, &settings, NULL, 0);
	enum http_errno err = HTTP_PARSER_ERRNO(&m->parser);
	if (err != HPE_OK && err != HPE_PAUSED)
		fail(m, 502);
}

bool http1_field_is(const struct http_head *h, uint16_t i, const char *name)
{
	size_t n = strlen(name);
	return h->fields[i].name.len == n &&
	       !strncasecmp(h->buf + h->fields[i].name.off, name, n);
}

const char *http1_field(const struct http_head *h, const char *name, uint32_t *len)
{
	for (uint16_t i = 0; i < h->n_fields; i++) {
		if (http1_field_is(h, i, name)) {
			*len = h->fields[i].value.len;
			return h->buf + h->fields[i].value.off;
		}
	}
	return NULL;
}

const char *http1_reason(unsigned status)
{
	switch (status) {
	case 100: return "Continue";
	case 200: return "OK";
	case 201: return "Created";
	case 204: return "No Content";
	case 400: return "Bad Request";
	case 401: return "Unauthorized";
	case 402: return "Payment Required";
	case 403: return "Forbidden";
	case 404: return "Not Found";
	case 405: return "Method Not Allowed";
	case 408: return "Request Timeout";
	case 409: return "Conflict";
	case 413: return "Content Too Large";
	case 423: return "Locked";
	case 429: return "Too Many Requests";
	case 431: return "Request Header Fields Too Large";
	case 500: return "Internal Server Error";
	case 502: return "Bad Gateway";
	case 503: return "Service Unavailable";
	case 504: return "Gateway Timeout";
	default: return status < 300 ? "OK" : status < 500 ? "Client Error" : "Server Error";
	}
}

bool http1_body_until_eof(const struct http_msg *m)
{
	const http_parser *p = &m->parser;
	if (p->type != HTTP_RESPONSE || (p->flags & F_CHUNKED))
		return false;
	if (p->status_code / 100 == 1 || p->status_code == 204 || p->status_code == 304)
		return false;
	return p->content_length == ULLONG_MAX;
}
