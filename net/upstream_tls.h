/*
 * upstream_tls.h — TLS to https providers (net/upstream_tls.c), used by
 * net/upstream.c only.
 */
#ifndef TOLLGATE_UPSTREAM_TLS_H
#define TOLLGATE_UPSTREAM_TLS_H

#include <stdbool.h>

#include "net/conn_types.h"

/* Starts the handshake on a connected socket; false: out of memory. */
bool upstream_tls_start(struct upstream *u, struct tls_conf *conf);
void upstream_tls_end(struct upstream *u);
/* Sends the ClientHello (after upstream_tls_start). */
void upstream_tls_begin(struct upstream *u);
/* Ciphertext arrived in u->in: handshake or decrypt and hand the reply's
 * bytes to the proxy. */
void upstream_tls_received(struct upstream *u);
/* The session still holds bytes to decrypt: deliver them (OP_UPSTREAM_TLS). */
void upstream_tls_pending(struct upstream *u);
/* Encrypts and sends u->out; proxy_upstream_sent() once all of it is out. */
void upstream_tls_flush(struct upstream *u);
/* A TLS send completed with res >= 0. */
void upstream_tls_sent(struct upstream *u, int res);

#endif
