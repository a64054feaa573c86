/*
 * mockllm.h — the functions the mockllm files call across file lines.
 *
 *   mockllm.c        command line, listeners, threads, signals
 *   mockllm_loop.c   the per-thread epoll loop: connections, I/O, timers
 *   mockllm_http.c   request framing (http-parser callbacks), x-mock-* knobs
 *   mockllm_json.c   the bounded scanner for request bodies
 *   mockllm_reply.c  routing decisions and every response and SSE event
 *   mockllm_tls.c    HTTPS (--tls-cert/--tls-key): TLS 1.2 over tls/
 *
 * Return conventions: negative errno for failures; I/O-shaped functions
 * return <0 error, 0 would block, >0 bytes; predicates return bool.
 */
#ifndef MOCKLLM_H
#define MOCKLLM_H

#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

#include "mockllm_types.h"

#define MOCK_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define MOCK_MIN(a, b) ((a) < (b) ? (a) : (b))

/* ---- buffers (inline: they are on every path) ---- */

/* Makes room for `more` bytes after len. Returns 0 or -ENOMEM. */
int buf_reserve_slow(struct buf *b, size_t more);

static inline int buf_reserve(struct buf *b, size_t more)
{
	if (__builtin_expect(b->cap - b->len >= more, 1))
		return 0;
	return buf_reserve_slow(b, more);
}

/* Appends; callers reserve first, so these cannot fail. */
static inline void buf_put(struct buf *b, const void *p, size_t n)
{
	memcpy(b->data + b->len, p, n);
	b->len += n;
}

#define buf_lit(b, s) buf_put((b), (s), sizeof(s) - 1)

void buf_put_u64(struct buf *b, uint64_t v);   /* decimal, needs 20 bytes */
void buf_put_hex(struct buf *b, uint64_t v);   /* lower-case hex, needs 16 bytes */
void buf_free(struct buf *b);
/* Frees the allocation if it grew past MOCK_BUF_KEEP; empties it either way. */
void buf_trim(struct buf *b);

/* ---- mockllm_loop.c ---- */

uint64_t mono_now_ns(void);
/* Prepares a worker's epoll set, timerfd and read buffer. Returns 0 or -errno. */
int worker_init(struct worker *w);
/* The thread body: serves connections until the process exits. */
void *worker_main(void *arg);
/* Sets (or moves) the connection's single timer. Returns 0 or -ENOMEM. */
int conn_timer_set(struct conn *c, uint64_t deadline_ns);
/* Adds one to a counter owned by the calling worker. */
void counter_bump(_Atomic uint64_t *counter);
/*
 * Hands request bytes to the connection (CONN_READING): parsed at once, or
 * kept behind the backlog. Returns 0 or -ENOMEM. The bytes are not kept.
 */
int conn_take_input(struct conn *c, const char *data, size_t n);

/* ---- mockllm_http.c ---- */

/* Sets the parser's header limit; call once before the workers start. */
void request_parser_setup(void);
void request_init(struct conn *c);
/*
 * Feeds bytes to the connection's parser, starting a reply for every
 * complete request, and stops early when a reply is in progress, the
 * output is above its high-water mark, or the connection stops reading.
 * Returns the bytes consumed; the caller keeps the rest for later.
 */
size_t request_parse(struct conn *c, const char *data, size_t len);

/* ---- mockllm_json.c ---- */

/* Scans a request body. Returns 0, or -EINVAL with *why set. */
int json_scan_request(const char *body, size_t len, struct body_fields *out,
		      const char **why);

/* ---- mockllm_reply.c ---- */

/* Decides what to answer for the request in c->req and starts it. */
void reply_begin(struct conn *c);
/* Queues a 400/413/431 for a request the parser refused, and closes after. */
void reply_refuse(struct conn *c, int status);
/*
 * Produces as much of the active reply as the output high-water mark and
 * the reply's delays allow. Returns true if it produced anything or
 * finished the reply.
 */
bool reply_pump(struct conn *c);
/* Builds the read-only text tables; call once before the workers start. */
void reply_tables_init(void);

/* ---- mockllm_tls.c (only on connections with c->tls) ---- */

/* Main thread: reads and checks the PEM files into cfg, draws the ticket
 * secret. Returns 0, or -1 after printing why. */
int mock_tls_load(struct mock_config *cfg, const char *cert_path, const char *key_path);
/* Main thread, before the worker starts: the worker's own TLS shard and
 * server configuration. Returns 0 or -1 after printing why. */
int worker_tls_init(struct worker *w);
/* A session for a new connection. Returns 0 or -ENOMEM. */
int conn_tls_start(struct conn *c);
/* Frees the session (conn_close). */
void conn_tls_end(struct conn *c);
/* True while an mbedTLS call waits for a send of its record. */
bool conn_tls_busy(const struct conn *c);
/* Reads ciphertext once and drives the handshake or decrypts into the
 * parser. Same contract as the plain read: bytes read, 0, -errno. */
ssize_t conn_tls_read(struct conn *c);
/* Sends pending records and encrypts c->out record by record. Bytes sent,
 * 0 if it would block, -errno. */
ssize_t conn_tls_flush(struct conn *c);
/* Starts the close_notify of a closing connection. True while it still
 * waits to be sent (the loop calls conn_tls_flush on EPOLLOUT). */
bool conn_tls_close_notify(struct conn *c);

#endif
