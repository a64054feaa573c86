/*
 * client_tls.h — the TLS side of an agent connection (net/client_tls.c),
 * used by net/client.c only.
 */
#ifndef TOLLGATE_CLIENT_TLS_H
#define TOLLGATE_CLIENT_TLS_H

#include <stdbool.h>
#include <stddef.h>

#include "net/conn_types.h"

/* Starts a session on a new connection; false: out of memory. */
bool client_tls_start(struct client *c, struct tls_conf *conf);
/* Frees the session (nothing in flight any more). */
void client_tls_end(struct client *c);
/* Offers the ciphertext a recv stashed in c->in. */
void client_tls_received(struct client *c);
/* Drives the handshake: true once it is done (go on reading requests);
 * false while it waits for bytes or a send, or after closing the
 * connection on failure. */
bool client_tls_handshake(struct client *c);
/* Plaintext to parse (true), or none until the next recv (false; the
 * connection may have been closed: EOF, close_notify, TLS error). */
bool client_tls_input(struct client *c, const char **data, size_t *len);
void client_tls_consume(struct client *c, size_t n);
/* Pushes the pending reply (c->out) through TLS: true when all of it has
 * been sent, false while a send is in flight (or the connection closed). */
bool client_tls_flush(struct client *c);
/* A TLS send completed with `res`. */
void client_tls_sent(struct client *c, int res);

#endif
