/*
 * http1.h — incremental HTTP/1.1 request and response heads (http1_types.h).
 */
#ifndef TOLLGATE_HTTP1_H
#define TOLLGATE_HTTP1_H

#include <stddef.h>
#include <sys/types.h>

#include "net/http1_types.h"

/* Starts a message; head bytes are compacted into buf[0..cap). */
void http1_init(struct http_msg *m, enum http_parser_type type, char *buf,
		uint32_t cap, http_body_fn on_body, void *owner);

/*
 * Feeds bytes; returns how many were consumed and sets m->event. Resumes at
 * any byte: a head may arrive split anywhere. After HTTP_HEAD_DONE or
 * HTTP_MESSAGE_DONE call http1_resume() before feeding the rest.
 */
size_t http1_feed(struct http_msg *m, const char *data, size_t len);
void http1_resume(struct http_msg *m);
/*
 * From now on, read a chunked body's chunks without the parser where they
 * are whole in a feed and of the usual form ("<hex>\r\n" data "\r\n");
 * anything else (a chunk split across feeds, extensions, the last chunk
 * and trailers, errors) the parser reads, from the start of its size
 * line, where the parser stands too. on_body gets the same bytes, the
 * events and errors are the same; it costs a few ns per chunk instead of
 * the parser's walk of every framing byte. Called after the head.
 */
void http1_fast_chunks(struct http_msg *m);
/* Signals end of input (a close-delimited response ends here). */
void http1_feed_eof(struct http_msg *m);

/* Field value by case-insensitive name, or NULL; *len gets its length. */
const char *http1_field(const struct http_head *h, const char *name, uint32_t *len);
bool http1_field_is(const struct http_head *h, uint16_t i, const char *name);
static inline const char *http1_str(const struct http_head *h, struct http_span s)
{
	return h->buf + s.off;
}

/* True for a reply whose body ends only when the peer closes. */
bool http1_body_until_eof(const struct http_msg *m);

/* Canonical reason phrase for a status code. */
const char *http1_reason(unsigned status);

#endif
