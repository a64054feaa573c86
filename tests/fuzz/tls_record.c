/*
 * libFuzzer harness: our code on the TLS record path — the BIO that feeds
 * mbedTLS ciphertext from a recv's buffer and takes its records to send
 * (tls/conn.c), and the session-ticket parser (tls/ticket.c), which reads
 * bytes any client can send.
 *
 * Input: byte 0 picks how the rest is split into "recvs" (1..256 bytes
 * each) and fed to a server session, driven as the shard drives it until
 * it stops moving; every requested send is "completed" whole or in part.
 * The same bytes are then handed to the ticket parser, and a ticket we
 * issued must parse while the same ticket with one byte flipped must not.
 */
#include <string.h>

#include "tls/ticket.h"
#include "tls/tls.h"

/* test-only key material: a self-signed P-256 certificate, CN fuzz.invalid */
static const char cert_pem[] =
	"-----BEGIN CERTIFICATE-----\n"
	"MIIBhjCCASugAwIBAgIUBW8CCi8fgUx0GJ40CN2e+zc8bkswCgYIKoZIzj0EAwIw\n"
	"FzEVMBMGA1UEAwwMZnV6ei5pbnZhbGlkMCAXDTI2MTEyMzE5MTc1M1oYDzIxMjYx\n"
	"MDMwMTkxNzUzWjAXMRUwEwYDVQQDDAxmdXp6LmludmFsaWQwWTATBgcqhkjOPQIB\n"
	"BggqhkjOPQMBBwNCAAT7Fv0vnLh630t6iodEa8FbN2yMX7i9LARuffSbui9z5R/k\n"
	"67okggFqpHN4UzWYgHtFUGVEe9uvGWHdNCfW2JhAo1MwUTAdBgNVHQ4EFgQU+0+0\n"
	"ufwwLRBeBTCUniLQpKvLhqkwHwYDVR0jBBgwFoAU+0+0ufwwLRBeBTCUniLQpKvL\n"
	"hqkwDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNJADBGAiEAiHjcQlgZuYPZ\n"
	"vr8bon61YhW/VG8R1n51SCRoqmNM8IsCIQD9lIpeelNU9PYOdMQftp4C/yBCgKvC\n"
	"PYstdEQyUmjYqQ==\n"
	"-----END CERTIFICATE-----\n";
static const char key_pem[] =
	"-----BEGIN PRIVATE KEY-----\n"
	"MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg4+VVce/RY7snkTV2\n"
	"598PbFZjgMhijx1pcncuH/byyJihRANCAAT7Fv0vnLh630t6iodEa8FbN2yMX7i9\n"
	"LARuffSbui9z5R/k67okggFqpHN4UzWYgHtFUGVEe9uvGWHdNCfW2JhA\n"
	"-----END PRIVATE KEY-----\n";

static struct tls_shard shard;
static struct tls_conf *conf;
static const uint8_t secret[TLS_TICKET_SECRET] = { 1, 2, 3 };

static void init_once(void)
{
	if (conf)
		return;
	if (tls_shard_init(&shard, secret))
		__builtin_trap();
	conf = tls_conf_server(&shard, cert_pem, sizeof(cert_pem), key_pem, sizeof(key_pem));
	if (!conf)
		__builtin_trap();
}

/* Completes whatever send the session asked for: all of it, or (when
 * `partial`) half, as a slow socket would. */
static bool complete_send(struct tls_conn *t, bool partial)
{
	const void *buf;
	size_t len;
	if (!tls_conn_out(t, &buf, &len))
		return false;
	if (len == 0)
		__builtin_trap();
	/* the bytes must be readable: a sanitizer catches it if not */
	volatile unsigned char sink = ((const unsigned char *)buf)[len - 1];
	(void)sink;
	tls_conn_sent(t, (int)(partial && len > 1 ? len / 2 : len));
	return true;
}

static void drive(const unsigned char *data, size_t size)
{
	struct tls_conn t;
	if (tls_conn_init(&t, conf))
		__builtin_trap();
	size_t step = (size_t)data[0] + 1, off = 1;
	unsigned char plain[16384];
	for (int rounds = 0; rounds < 4096 && t.phase != TLS_DEAD; rounds++) {
		if (tls_conn_input_left(&t) == 0) {
			if (off >= size)
				break;
			size_t n = size - off < step ? size - off : step;
			tls_conn_input(&t, data + off, n);
			off += n;
		}
		size_t before = tls_conn_input_left(&t);
		ssize_t r = t.phase == TLS_HANDSHAKE ? tls_conn_handshake(&t)
						     : tls_conn_read(&t, plain, sizeof(plain));
		bool sent = complete_send(&t, rounds & 1);
		if (r < 0)
			break;
		if (r > 0 && t.phase == TLS_OPEN && r > (ssize_t)sizeof(plain))
			__builtin_trap();
		if (r == 0 && !sent && tls_conn_input_left(&t) == before && before)
			__builtin_trap();   /* neither read nor asked to send: stuck */
	}
	tls_conn_free(&t);
}

static void tickets(const unsigned char *data, size_t size)
{
	unsigned char buf[2048];
	if (size > sizeof(buf))
		size = sizeof(buf);
	memcpy(buf, data, size);
	mbedtls_ssl_session s;
	mbedtls_ssl_session_init(&s);
	tls_ticket_parse(&shard.tickets, &s, buf, size);
	mbedtls_ssl_session_free(&s);

	/* a ticket we issue parses; with any one byte changed it does not */
	mbedtls_ssl_session_init(&s);
	size_t tlen;
	uint32_t life;
	if (tls_ticket_write(&shard.tickets, &s, buf, buf + sizeof(buf), &tlen, &life))
		__builtin_trap();
	mbedtls_ssl_session back;
	unsigned char copy[2048];
	memcpy(copy, buf, tlen);
	mbedtls_ssl_session_init(&back);
	if (tls_ticket_parse(&shard.tickets, &back, copy, tlen))
		__builtin_trap();
	mbedtls_ssl_session_free(&back);
	if (size) {
		memcpy(copy, buf, tlen);
		copy[data[0] % tlen] ^= (unsigned char)(size | 1);
		mbedtls_ssl_session_init(&back);
		if (!tls_ticket_parse(&shard.tickets, &back, copy, tlen))
			__builtin_trap();
		mbedtls_ssl_session_free(&back);
	}
	mbedtls_ssl_session_free(&s);
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
	init_once();
	if (size < 1)
		return 0;
	drive(data, size);
	tickets(data, size);
	return 0;
}
