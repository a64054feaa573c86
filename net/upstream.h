/*
 * upstream.h — provider-side connections and per-shard keep-alive pools
 * (net/upstream.c).
 */
#ifndef TOLLGATE_UPSTREAM_H
#define TOLLGATE_UPSTREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/uio.h>

#include "net/conn_types.h"

/* Finds a pooled connection to ex->provider or starts a new one; calls
 * proxy_upstream_ready() when it can take the request (perhaps at once). */
void upstream_acquire(struct exchange *ex);
/* Sends iov[0..n) (copied); proxy_upstream_sent() when all of it is out. */
void upstream_send(struct upstream *u, const struct iovec *iov, int n);
/* Asks for the next bytes of the reply (one read at a time). */
void upstream_recv(struct upstream *u);
/* Done with it: back to the pool when reusable, else closed. */
void upstream_release(struct upstream *u, bool reusable);
void upstream_close(struct upstream *u);
/* Closes every pooled connection (reload, drain). */
void upstream_pools_reset(struct shard *s);

void upstream_on_connect(struct upstream *u, int res);
void upstream_on_send(struct upstream *u, int res);
void upstream_on_recv(struct upstream *u, int res, uint32_t cqe_flags);
void upstream_on_timer(struct upstream *u);
void upstream_retry_recv(struct upstream *u);
/* A TLS session holds bytes still to decrypt (OP_UPSTREAM_TLS). */
void upstream_on_tls_pending(struct upstream *u);
/* The provider ended the connection (EOF, or TLS close_notify). */
void upstream_on_eof(struct upstream *u);

#endif
