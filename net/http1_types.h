/*
 * http1_types.h — HTTP/1.1 message parsing state.
 *
 * Framing is done by the Debian-maintained http-parser (strict mode: it
 * rejects Content-Length with Transfer-Encoding, duplicate or invalid
 * Content-Length, bad chunk sizes and a bare LF inside chunked framing).
 * We add what it allows but a gateway must not: a bare LF in the head or
 * in a chunked body's trailer section, and trailer fields merged into the
 * head (they are discarded: the body is re-framed without them).
 */
#ifndef TOLLGATE_HTTP1_TYPES_H
#define TOLLGATE_HTTP1_TYPES_H

#include <http_parser.h>
#include <stdbool.h>
#include <stdint.h>

#define HTTP_MAX_FIELDS 64

struct http_span {
	uint32_t off, len;          /* into http_head.buf */
};

struct http_field {
	struct http_span name, value;
};

/* Which element the parser's callbacks last appended to. */
enum http_head_part { PART_NONE, PART_URL, PART_NAME, PART_VALUE };

/* A message head, compacted out of however many reads it arrived in. */
struct http_head {
	char *buf;                  /* owned by the caller */
	uint32_t len, cap;
	struct http_span url;       /* request target (requests only) */
	struct http_field fields[HTTP_MAX_FIELDS];
	uint16_t n_fields;
	uint8_t part;               /* enum http_head_part */
	bool too_large;             /* cap or HTTP_MAX_FIELDS exceeded -> 431 */
};

/* What the last http1_feed() stopped at. */
enum http_event {
	HTTP_NEED_MORE,     /* consumed everything; feed the next bytes */
	HTTP_HEAD_DONE,     /* head complete; http1_resume() before feeding on */
	HTTP_MESSAGE_DONE,  /* message complete; bytes after it belong to the next */
	HTTP_ERROR,         /* see http_msg.error_status */
};

struct http_msg;
/* Receives body bytes (de-chunked); returns 0 or an HTTP status to fail with. */
typedef int (*http_body_fn)(struct http_msg *m, const char *data, size_t len);

struct http_msg {
	http_parser parser;
	struct http_head head;
	http_body_fn on_body;
	void *owner;
	uint8_t event;              /* enum http_event */
	bool head_done;
	bool in_trailers;           /* past the last chunk: trailer section */
	bool prev_cr;               /* head/trailer scan: previous byte was CR */
	uint16_t error_status;      /* 400, 413, 431 when event == HTTP_ERROR */
	uint16_t body_status;       /* non-zero: on_body refused */
	bool fast_chunks;           /* http1_fast_chunks() was called */
	bool at_chunk;              /* fast_chunks: the parser stands at a chunk-size
				     * line, and http1.c reads the chunks */
	bool chunk_done;            /* the parser paused at a chunk's end */
};

#endif
