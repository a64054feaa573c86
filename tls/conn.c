/*
 * conn.c — one TLS session driven over the shard's io_uring.
 *
 * mbedTLS calls our BIO callbacks:
 *   recv  copies from the ciphertext a completed recv brought (t->cin);
 *         none left: WANT_READ, and the owner posts the next recv.
 *   send  never copies: the first call for a record leaves mbedTLS's own
 *         buffer in t->out for the owner to post as one send and answers
 *         WANT_WRITE; when that send completes (tls_conn_sent), the owner
 *         calls the same mbedTLS function again and the callback reports
 *         the bytes sent. mbedTLS keeps the record in its buffer until
 *         then, so a reply's bytes cross from plaintext to the socket with
 *         mbedTLS's encryption as the only copy.
 */
#include "tls/tls.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <mbedtls/error.h>
#include <mbedtls/net_sockets.h>

static int bio_recv(void *ctx, unsigned char *buf, size_t len)
{
	struct tls_conn *t = ctx;
	if (t->cin_len == 0)
		return MBEDTLS_ERR_SSL_WANT_READ;
	size_t n = len < t->cin_len ? len : t->cin_len;
	memcpy(buf, t->cin, n);
	t->cin += n;
	t->cin_len -= n;
	return (int)n;
}

static int bio_send(void *ctx, const unsigned char *buf, size_t len)
{
	struct tls_conn *t = ctx;
	if (t->send_done) {
		t->send_done = false;
		t->out = NULL;
		t->out_len = 0;
		return t->sent > 0 ? t->sent : MBEDTLS_ERR_NET_SEND_FAILED;
	}
	if (!t->out_len) {
		t->out = buf;
		t->out_len = len;
	}
	return MBEDTLS_ERR_SSL_WANT_WRITE;
}

int tls_conn_init(struct tls_conn *t, struct tls_conf *conf)
{
	memset(t, 0, sizeof(*t));
	mbedtls_ssl_init(&t->ssl);
	if (mbedtls_ssl_setup(&t->ssl, &conf->ssl) ||
	    (conf->hostname && mbedtls_ssl_set_hostname(&t->ssl, conf->hostname))) {
		mbedtls_ssl_free(&t->ssl);
		return -ENOMEM;
	}
	mbedtls_ssl_set_bio(&t->ssl, t, bio_send, bio_recv, NULL);
	t->conf = conf;
	conf->users++;
	t->phase = TLS_HANDSHAKE;
	return 0;
}

void tls_conn_free(struct tls_conn *t)
{
	if (!t->conf)
		return;
	mbedtls_ssl_free(&t->ssl);
	tls_conf_put(t->conf);
	t->conf = NULL;
	t->phase = TLS_DEAD;
}

/* Maps an mbedTLS result onto the I/O convention. */
static int outcome(struct tls_conn *t, int rc)
{
	if (rc >= 0)
		return rc;
	if (rc == MBEDTLS_ERR_SSL_WANT_READ)
		return 0;
	if (rc == MBEDTLS_ERR_SSL_WANT_WRITE) {
		t->want_write = true;
		return 0;
	}
	t->phase = TLS_DEAD;
	t->error = rc;
	if (rc == MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY)
		return -ESHUTDOWN;
	return -EPROTO;
}

int tls_conn_handshake(struct tls_conn *t)
{
	if (t->phase == TLS_OPEN)
		return 1;
	if (t->phase == TLS_DEAD)
		return -EPROTO;
	t->want_write = false;
	int rc = outcome(t, mbedtls_ssl_handshake(&t->ssl));
	if (rc < 0)
		return rc;
	if (t->ssl.state == MBEDTLS_SSL_HANDSHAKE_OVER) {
		t->phase = TLS_OPEN;
		return 1;
	}
	return 0;
}

ssize_t tls_conn_read(struct tls_conn *t, void *buf, size_t cap)
{
	if (t->phase != TLS_OPEN)
		return t->error == MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY ? -ESHUTDOWN : -EPROTO;
	t->want_write = false;
	int rc = mbedtls_ssl_read(&t->ssl, buf, cap);
	if (rc == 0) {
		/* only the transport's EOF (our BIO never reports one) */
		t->phase = TLS_DEAD;
		t->error = MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY;
		return -ESHUTDOWN;
	}
	return outcome(t, rc);
}

ssize_t tls_conn_write(struct tls_conn *t, const void *buf, size_t len)
{
	if (t->phase != TLS_OPEN)
		return -EPROTO;
	t->want_write = false;
	if (len > MBEDTLS_SSL_MAX_CONTENT_LEN)
		len = MBEDTLS_SSL_MAX_CONTENT_LEN;
	return outcome(t, mbedtls_ssl_write(&t->ssl, buf, len));
}

bool tls_conn_out(struct tls_conn *t, const void **buf, size_t *len)
{
	if (!t->out_len || t->send_posted)
		return false;
	t->send_posted = true;
	*buf = t->out;
	*len = t->out_len;
	return true;
}

void tls_conn_sent(struct tls_conn *t, int res)
{
	t->send_posted = false;
	t->send_done = true;
	t->sent = res;
}

const char *tls_conn_alpn(const struct tls_conn *t)
{
	return mbedtls_ssl_get_alpn_protocol(&t->ssl);
}

void tls_conn_strerror(const struct tls_conn *t, char *buf, size_t len)
{
	if (!t->error) {
		snprintf(buf, len, "no error");
		return;
	}
	uint32_t flags = mbedtls_ssl_get_verify_result(&t->ssl);
	if (t->error == MBEDTLS_ERR_X509_CERT_VERIFY_FAILED && flags && flags != (uint32_t)-1) {
		char info[256];
		int n = mbedtls_x509_crt_verify_info(info, sizeof(info), "", flags);
		/* one line: the flags' texts joined */
		for (int i = 0; i < n; i++)
			if (info[i] == '\n')
				info[i] = i == n - 1 ? '\0' : ';';
		snprintf(buf, len, "certificate verification failed: %s", info);
		return;
	}
	mbedtls_strerror(t->error, buf, len);
}
