/*
 * client.h — agent-side connections: accept, read and frame requests,
 * send replies, keep-alive and pipelining (net/client.c).
 */
#ifndef TOLLGATE_CLIENT_H
#define TOLLGATE_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#include "net/conn_types.h"

/* A new connection from a listener; tls: its server configuration, or NULL. */
void client_accept(struct shard *s, int fd, struct tls_conf *tls, bool admin);
void client_on_recv(struct client *c, int res, uint32_t cqe_flags);
void client_on_send(struct client *c, int res);
void client_on_timer(struct client *c);
/* Re-posts a recv that failed for lack of buffers. */
void client_retry_recv(struct client *c);

/*
 * Sends a[0..alen) then b[0..blen); `bid` (or -1) is a provided buffer that
 * b points into, returned to the kernel once sent. One send at a time.
 */
void client_send(struct client *c, const void *a, size_t alen,
		 const void *b, size_t blen, int32_t bid);
/* The same with up to SENDQ_MAX_IOV pieces (empty ones skipped). */
/* Posts the send client_sendv() queued and booking held back. */
void client_send_resume(struct client *c);
void client_sendv(struct client *c, const struct iovec *iov, int n, int32_t bid);
/* The exchange has sent its whole reply: keep-alive or close. */
void client_reply_done(struct client *c);
/* Closes at once (reply cannot be completed). */
void client_abort(struct client *c);
/* A scope was frozen: cut the streams of this shard it covers. */
void client_freeze_sweep(struct shard *s);
/* Drain: close connections that are between requests. */
void client_close_idle(struct shard *s);

#endif
