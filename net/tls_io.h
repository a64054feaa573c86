/*
 * tls_io.h — a TLS session's bytes over the shard's ring, the same for
 * agent connections (net/client_tls.c) and provider connections
 * (net/upstream_tls.c).
 *
 *   in   a recv's provided buffer holds ciphertext (a stash) until mbedTLS
 *        has read all of it; records are decrypted into a BUFS_PLAIN
 *        buffer, which is parsed or relayed like a provided buffer.
 *   out  a sendq's pieces are encrypted a record at a time (small pieces
 *        gathered into one record); each record is one send, straight
 *        from mbedTLS's buffer.
 */
#ifndef TOLLGATE_TLS_IO_H
#define TOLLGATE_TLS_IO_H

#include <stdbool.h>
#include <sys/types.h>

#include "net/conn_types.h"
#include "tls/tls_types.h"

/* Offers the ciphertext stashed in `in` to the session. */
void tls_io_received(struct shard *s, struct tls_conn *t, const struct stash *in);
/* Returns `in`'s buffer once mbedTLS has read all of it. */
void tls_io_drop_read(struct shard *s, struct tls_conn *t, struct stash *in);
/* Posts the send the session asks for, tagged `tag`; true if one was. */
bool tls_io_post_send(struct shard *s, struct tls_conn *t, int fd, uint64_t tag);
/* Decrypts as much as the session has into `plain` (empty on entry; a
 * buffer is taken for it): >0 bytes now in plain, 0 nothing until more
 * ciphertext comes, <0 -ESHUTDOWN (peer closed), -EPROTO, -ENOBUFS. A
 * read that would have to send (a renegotiation attempt) is -EPROTO. */
ssize_t tls_io_decrypt(struct shard *s, struct tls_conn *t, struct stash *plain, struct stash *in);
/* Encrypts q's pieces: 1 all sent, 0 a record waits for its send (post
 * it with tls_io_post_send; call again once it completes), <0 error. */
int tls_io_write(struct shard *s, struct tls_conn *t, struct sendq *q);

#endif
