/*
 * sse.h — an incremental parser for text/event-stream (the WHATWG
 * server-sent events grammar), as providers stream LLM replies.
 *
 * Bytes may arrive split anywhere — inside a field name, a UTF-8
 * sequence, between CR and LF — and the parser resumes at any byte. Lines
 * end with CRLF, LF or CR; ':' lines are comments; data lines of one
 * event are joined with '\n'; a blank line dispatches the event. An event
 * whose data would pass SSE_MAX_EVENT bytes is an error, never truncated:
 * metering must see all of it or refuse the stream.
 */
#ifndef TOLLGATE_SSE_H
#define TOLLGATE_SSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SSE_MAX_EVENT 16384
#define SSE_MAX_TYPE 32

enum sse_state {
	SSE_LINE_START,     /* at the start of a line */
	SSE_NAME,           /* in a field name */
	SSE_SPACE,          /* just after the ':', one space may be skipped */
	SSE_VALUE,          /* in a field value */
	SSE_COMMENT,        /* in a comment line */
	SSE_AFTER_CR,       /* a CR ended the line: an LF may follow */
};

enum sse_field { SSE_FIELD_OTHER, SSE_FIELD_DATA, SSE_FIELD_EVENT };

struct sse_event {
	const char *type;           /* "event:" value, "" when absent */
	uint32_t type_len;
	const char *data;           /* the data lines joined by '\n': in the
				     * parser, or, when they are one run of
				     * the buffer being fed, in that buffer */
	uint32_t data_len;
	bool has_data;              /* false: a block with no data line (a
				     * comment, an id), no event to dispatch
				     * but a boundary a relay may pass on */
};

struct sse_parser {
	uint8_t state;              /* enum sse_state */
	uint8_t field;              /* enum sse_field of the current line */
	uint8_t name_len;
	char name[6];               /* the field name so far (only data/event matter) */
	bool name_long;             /* longer than any field we act on */
	bool has_data;              /* a data line was seen in this event */
	uint8_t type_len;
	char type[SSE_MAX_TYPE];
	uint32_t data_len;
	/* NULL, or the event's data so far is run[0..data_len), a run of the
	 * buffer being fed that was not copied into `data`: most events are
	 * one data line read whole, and are never copied. A second piece, or
	 * the end of the buffer, copies the run into `data` first. */
	const char *run;
	char data[SSE_MAX_EVENT];
};

/* Called per complete event, and per blank line that ends a block with no
 * data (has_data false); returns 0 to go on, non-zero to stop right after
 * it. The event's memory is the parser's, valid during the call. */
typedef int (*sse_event_fn)(void *arg, const struct sse_event *ev);

void sse_init(struct sse_parser *p);

/*
 * Parses buf[0..len). Returns the bytes consumed: len, or fewer when fn
 * asked to stop (the count then ends just past that event's blank line),
 * or -E2BIG when an event is larger than SSE_MAX_EVENT.
 */
long sse_feed(struct sse_parser *p, const char *buf, size_t len, sse_event_fn fn, void *arg);

#endif
