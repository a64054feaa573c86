/*
 * tls.h — TLS for both sides of the proxy, on mbedTLS.
 *
 * The Debian mbedTLS (2.28) has no TLS 1.3: tollgate speaks TLS 1.2 with
 * ECDHE key exchange and AEAD ciphers only. Where a build has TLS 1.3
 * (mbedTLS 3.x with MBEDTLS_SSL_PROTO_TLS1_3), tls_conf_server() and
 * tls_conf_client() are the one place that sets the version range.
 *
 * Return conventions (STYLE.md): I/O returns >0 bytes, 0 "would block"
 * (t->send_posted or more ciphertext needed), <0 a negative errno:
 * -ESHUTDOWN for the peer's close_notify or a clean EOF, -EPROTO for a TLS
 * failure (t->error keeps the mbedTLS code).
 */
#ifndef TOLLGATE_TLS_H
#define TOLLGATE_TLS_H

#include <stddef.h>
#include <sys/types.h>

#include "tls/tls_types.h"

/* The CA bundle an https provider without ca_file is verified against. */
#define TLS_SYSTEM_CA "/etc/ssl/certs/ca-certificates.crt"

/* ---- per shard ---- */

/* Seeds the shard's DRBG from getrandom() and sets up its ticket keys from
 * `ticket_secret` (TLS_TICKET_SECRET bytes the caller keeps alive). */
int tls_shard_init(struct tls_shard *ts, const uint8_t *ticket_secret);
void tls_shard_free(struct tls_shard *ts);
/* The lock-free RNG callback for mbedTLS over the shard's DRBG. */
int tls_rng(void *drbg, unsigned char *out, size_t len);

/* ---- configurations ---- */

/* Checks a certificate chain and key in PEM (NUL-terminated, as read from
 * files): both parse, the key matches the first certificate, and the key is
 * RSA (>= 2048 bits) or ECDSA. 0, or -EINVAL with a reason in err. */
int tls_check_server_pem(const char *cert_pem, size_t cert_len,
			 const char *key_pem, size_t key_len, char *err, size_t errlen);
/* Checks a CA bundle in PEM: at least one certificate parses. */
int tls_check_ca_pem(const char *ca_pem, size_t ca_len, char *err, size_t errlen);

/* A server configuration for one listener (cert chain + key, already
 * checked), on the shard's DRBG and tickets. NULL on failure (logged). */
struct tls_conf *tls_conf_server(struct tls_shard *ts, const char *cert_pem, size_t cert_len,
				 const char *key_pem, size_t key_len);
/* A client configuration for one provider: verify against `ca_pem` (a
 * bundle; never NULL), check `hostname`, send it as SNI; `skip_verify`
 * turns verification off (insecure_skip_verify). NULL on failure. */
struct tls_conf *tls_conf_client(struct tls_shard *ts, const char *ca_pem, size_t ca_len,
				 const char *hostname, bool skip_verify);
/* Retires a configuration: freed now if no connection uses it, else when
 * the last one lets go (tls_conn_free). */
void tls_conf_retire(struct tls_conf *conf);
/* A connection lets go of its configuration (tls_conn_free). */
void tls_conf_put(struct tls_conf *conf);

/* ---- connections ---- */

/* Starts a session on `conf` (a reference is taken). 0 or -ENOMEM. */
int tls_conn_init(struct tls_conn *t, struct tls_conf *conf);
/* Ends it. The caller must have no send of t->out in flight. */
void tls_conn_free(struct tls_conn *t);

/* Offers ciphertext a recv brought; the bytes must stay put until
 * tls_conn_input_left() is 0 (mbedTLS reads them as it needs them). */
static inline void tls_conn_input(struct tls_conn *t, const void *cipher, size_t len)
{
	t->cin = cipher;
	t->cin_len = len;
}
static inline size_t tls_conn_input_left(const struct tls_conn *t) { return t->cin_len; }
/* Whether a read could return bytes now: ciphertext offered and not yet
 * read, or plaintext mbedTLS holds for want of room in the last read. */
static inline bool tls_conn_pending(const struct tls_conn *t)
{
	return t->cin_len || mbedtls_ssl_get_bytes_avail(&t->ssl);
}

/* Runs the handshake as far as the bytes allow: 1 done, 0 would block,
 * <0 failed. */
int tls_conn_handshake(struct tls_conn *t);
/* Decrypts into buf (cap >= 16384 takes a whole record): >0 bytes,
 * 0 would block, -ESHUTDOWN at the peer's close, else <0. */
ssize_t tls_conn_read(struct tls_conn *t, void *buf, size_t cap);
/* Encrypts up to 16384 bytes of buf as one record: >0 bytes taken, 0 would
 * block (call again with the same bytes once the send is done), <0. */
ssize_t tls_conn_write(struct tls_conn *t, const void *buf, size_t len);

/* A send the session needs posted: true once per send, with its bytes
 * (inside mbedTLS's buffer, stable until tls_conn_sent()). */
bool tls_conn_out(struct tls_conn *t, const void **buf, size_t *len);
/* The result of that send (bytes, or negative errno). */
void tls_conn_sent(struct tls_conn *t, int res);

/* The negotiated ALPN protocol, or NULL. */
const char *tls_conn_alpn(const struct tls_conn *t);
/* A one-line description of t->error, for logs and problem details. */
void tls_conn_strerror(const struct tls_conn *t, char *buf, size_t len);

#endif
