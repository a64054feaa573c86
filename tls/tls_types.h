/*
 * tls_types.h — TLS objects of a shard: its random generator and ticket
 * keys, the server contexts of its TLS listeners, the client contexts of
 * its https providers, and the per-connection session.
 *
 * Every object here belongs to one shard and is touched by that shard's
 * thread only: mbedTLS runs without locks (the shard's DRBG is called
 * through a wrapper that skips the library's mutex).
 */
#ifndef TOLLGATE_TLS_TYPES_H
#define TOLLGATE_TLS_TYPES_H

#include <stdbool.h>
#include <stdint.h>

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/gcm.h>
#include <mbedtls/pk.h>
#include <mbedtls/ssl.h>
#include <mbedtls/x509_crt.h>

#define TLS_TICKET_SECRET 32
#define TLS_TICKET_EPOCH_S 3600      /* a ticket key's life; the previous one is still accepted */

/*
 * Session tickets that any shard can open: each shard derives the key of
 * the current hour from one secret the main thread drew at start
 * (HKDF-SHA256), so a resumed connection may land on another shard, and
 * no key is shared between threads at run time.
 */
struct tls_tickets {
	const uint8_t *secret;           /* TLS_TICKET_SECRET bytes, read-only */
	int64_t epoch[2];                /* [0] current, [1] previous; -1: none */
	mbedtls_gcm_context gcm[2];
	mbedtls_ctr_drbg_context *drbg;
};

/* The per-shard state every TLS context of the shard shares. */
struct tls_shard {
	mbedtls_ctr_drbg_context drbg;
	struct tls_tickets tickets;
	bool ready;
};

/*
 * One TLS configuration: a listener's server side, or a provider's client
 * side. Connections hold a reference (`users`) because a reload replaces
 * the configuration while they still run on it; it is freed when it has
 * been retired and its last connection is gone.
 */
struct tls_conf {
	mbedtls_ssl_config ssl;
	mbedtls_x509_crt chain;          /* server: our certificate chain; client: CA bundle */
	mbedtls_pk_context key;          /* server: our private key */
	const char *hostname;            /* client: SNI and name check, NULL for servers */
	bool is_server;
	bool retired;
	uint32_t users;
};

enum tls_phase {
	TLS_HANDSHAKE,                   /* mbedtls_ssl_handshake() until it returns 0 */
	TLS_OPEN,                        /* application data */
	TLS_DEAD,                        /* error or close: nothing more is read or written */
};

/*
 * A connection's TLS session. The shard's io_uring moves the bytes:
 * ciphertext that a recv brought is offered to mbedTLS (`cin`); a record
 * mbedTLS wants to send is left in its own output buffer and handed to the
 * owner to post as one send (`out`), whose result comes back through
 * tls_conn_sent(). No bytes are copied on our side.
 */
struct tls_conn {
	mbedtls_ssl_context ssl;
	struct tls_conf *conf;
	uint8_t phase;                   /* enum tls_phase */
	bool want_write;                 /* the last call stopped for a send in flight */
	bool send_posted;                /* `out` is being sent */
	bool send_done;                  /* a send completed: its result is `sent` */
	int sent;
	const unsigned char *cin;        /* ciphertext not yet read by mbedTLS */
	size_t cin_len;
	const unsigned char *out;        /* a send to post: mbedTLS's own buffer */
	size_t out_len;
	int error;                       /* the mbedTLS error that ended it, for logs */
};

#endif
