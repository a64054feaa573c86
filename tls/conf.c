/*
 * conf.c — TLS configurations: a listener's server side and a provider's
 * client side, each built by a shard for itself from PEM bytes that the
 * config generation holds (so a reload re-reads nothing from disk on the
 * shard threads, and each shard owns its own parsed keys).
 *
 * Policy, the same both ways: TLS 1.2 only (the Debian mbedTLS has no 1.3),
 * ECDHE key exchange, AEAD ciphers (AES-GCM, ChaCha20-Poly1305), no
 * renegotiation. Servers offer ALPN http/1.1 and session tickets.
 */
#include "tls/tls.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mbedtls/error.h>
#include <mbedtls/rsa.h>

#include "core/log.h"
#include "tls/ticket.h"

static const int aead_ecdhe_suites[] = {
	MBEDTLS_TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
	MBEDTLS_TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
	MBEDTLS_TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
	MBEDTLS_TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
	MBEDTLS_TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
	MBEDTLS_TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
	0
};

/* Key exchange groups, fastest first: mbedTLS picks by its own order, and
 * its default order starts at secp521r1, several times slower than X25519
 * or P-256 for no gain a client asked for. */
static const mbedtls_ecp_group_id ecdhe_groups[] = {
	MBEDTLS_ECP_DP_CURVE25519,
	MBEDTLS_ECP_DP_SECP256R1,
	MBEDTLS_ECP_DP_SECP384R1,
	MBEDTLS_ECP_DP_NONE
};

static const char *alpn_http11[] = { "http/1.1", NULL };

static void describe(int rc, const char *what, char *err, size_t errlen)
{
	char msg[160];
	mbedtls_strerror(rc, msg, sizeof(msg));
	snprintf(err, errlen, "%s: %s", what, msg);
}

/* ---- checks at config load (main thread) ---- */

static int parse_pair(mbedtls_x509_crt *chain, mbedtls_pk_context *key,
		      const char *cert_pem, size_t cert_len,
		      const char *key_pem, size_t key_len, char *err, size_t errlen)
{
	int rc = mbedtls_x509_crt_parse(chain, (const unsigned char *)cert_pem, cert_len);
	if (rc) {
		describe(rc, rc > 0 ? "some certificates in the chain do not parse"
				    : "the certificate does not parse", err, errlen);
		return -EINVAL;
	}
	rc = mbedtls_pk_parse_key(key, (const unsigned char *)key_pem, key_len, NULL, 0);
	if (rc) {
		describe(rc, "the key does not parse (encrypted keys are not supported)",
			 err, errlen);
		return -EINVAL;
	}
	rc = mbedtls_pk_check_pair(&chain->pk, key);
	if (rc) {
		describe(rc, "the key does not match the first certificate", err, errlen);
		return -EINVAL;
	}
	mbedtls_pk_type_t type = mbedtls_pk_get_type(key);
	if (type == MBEDTLS_PK_RSA) {
		if (mbedtls_pk_get_bitlen(key) < 2048) {
			snprintf(err, errlen, "RSA keys must have at least 2048 bits");
			return -EINVAL;
		}
	} else if (type != MBEDTLS_PK_ECKEY) {
		snprintf(err, errlen, "the key must be RSA or ECDSA");
		return -EINVAL;
	}
	return 0;
}

int tls_check_server_pem(const char *cert_pem, size_t cert_len,
			 const char *key_pem, size_t key_len, char *err, size_t errlen)
{
	mbedtls_x509_crt chain;
	mbedtls_pk_context key;
	mbedtls_x509_crt_init(&chain);
	mbedtls_pk_init(&key);
	int rc = parse_pair(&chain, &key, cert_pem, cert_len, key_pem, key_len, err, errlen);
	mbedtls_pk_free(&key);
	mbedtls_x509_crt_free(&chain);
	return rc;
}

int tls_check_ca_pem(const char *ca_pem, size_t ca_len, char *err, size_t errlen)
{
	mbedtls_x509_crt chain;
	mbedtls_x509_crt_init(&chain);
	int rc = mbedtls_x509_crt_parse(&chain, (const unsigned char *)ca_pem, ca_len);
	/* A system bundle may hold a few certificates mbedTLS cannot read
	 * (rc > 0 counts them); one usable CA is enough. */
	bool any = chain.version != 0;
	mbedtls_x509_crt_free(&chain);
	if (rc < 0 || !any) {
		describe(rc < 0 ? rc : MBEDTLS_ERR_X509_INVALID_FORMAT,
			 "no CA certificate parses", err, errlen);
		return -EINVAL;
	}
	return 0;
}

/* ---- configurations (shard threads) ---- */

static void conf_free(struct tls_conf *c)
{
	mbedtls_ssl_config_free(&c->ssl);
	mbedtls_pk_free(&c->key);
	mbedtls_x509_crt_free(&c->chain);
	free(c);
}

static struct tls_conf *conf_new(struct tls_shard *ts, int endpoint)
{
	struct tls_conf *c = calloc(1, sizeof(*c));
	if (!c)
		return NULL;
	mbedtls_ssl_config_init(&c->ssl);
	mbedtls_x509_crt_init(&c->chain);
	mbedtls_pk_init(&c->key);
	c->is_server = endpoint == MBEDTLS_SSL_IS_SERVER;
	if (mbedtls_ssl_config_defaults(&c->ssl, endpoint, MBEDTLS_SSL_TRANSPORT_STREAM,
					MBEDTLS_SSL_PRESET_DEFAULT)) {
		conf_free(c);
		return NULL;
	}
	mbedtls_ssl_conf_rng(&c->ssl, tls_rng, &ts->drbg);
	mbedtls_ssl_conf_min_version(&c->ssl, MBEDTLS_SSL_MAJOR_VERSION_3,
				     MBEDTLS_SSL_MINOR_VERSION_3);
	mbedtls_ssl_conf_max_version(&c->ssl, MBEDTLS_SSL_MAJOR_VERSION_3,
				     MBEDTLS_SSL_MINOR_VERSION_3);
	mbedtls_ssl_conf_ciphersuites(&c->ssl, aead_ecdhe_suites);
	mbedtls_ssl_conf_curves(&c->ssl, ecdhe_groups);
	mbedtls_ssl_conf_renegotiation(&c->ssl, MBEDTLS_SSL_RENEGOTIATION_DISABLED);
	return c;
}

struct tls_conf *tls_conf_server(struct tls_shard *ts, const char *cert_pem, size_t cert_len,
				 const char *key_pem, size_t key_len)
{
	struct tls_conf *c = conf_new(ts, MBEDTLS_SSL_IS_SERVER);
	if (!c)
		return NULL;
	char err[200];
	if (parse_pair(&c->chain, &c->key, cert_pem, cert_len, key_pem, key_len,
		       err, sizeof(err)) ||
	    mbedtls_ssl_conf_own_cert(&c->ssl, &c->chain, &c->key) ||
	    mbedtls_ssl_conf_alpn_protocols(&c->ssl, alpn_http11)) {
		log_error("tls: server configuration failed: %s", err);
		conf_free(c);
		return NULL;
	}
	mbedtls_ssl_conf_session_tickets_cb(&c->ssl, tls_ticket_write, tls_ticket_parse,
					    &ts->tickets);
	return c;
}

struct tls_conf *tls_conf_client(struct tls_shard *ts, const char *ca_pem, size_t ca_len,
				 const char *hostname, bool skip_verify)
{
	struct tls_conf *c = conf_new(ts, MBEDTLS_SSL_IS_CLIENT);
	if (!c)
		return NULL;
	c->hostname = hostname;
	if (skip_verify) {
		mbedtls_ssl_conf_authmode(&c->ssl, MBEDTLS_SSL_VERIFY_NONE);
	} else {
		int rc = mbedtls_x509_crt_parse(&c->chain, (const unsigned char *)ca_pem, ca_len);
		if (rc < 0) {
			char err[200];
			describe(rc, "CA bundle", err, sizeof(err));
			log_error("tls: client configuration for %s failed: %s", hostname, err);
			conf_free(c);
			return NULL;
		}
		mbedtls_ssl_conf_authmode(&c->ssl, MBEDTLS_SSL_VERIFY_REQUIRED);
		mbedtls_ssl_conf_ca_chain(&c->ssl, &c->chain, NULL);
	}
	mbedtls_ssl_conf_alpn_protocols(&c->ssl, alpn_http11);
	return c;
}

void tls_conf_retire(struct tls_conf *c)
{
	if (!c)
		return;
	c->retired = true;
	if (c->users == 0)
		conf_free(c);
}

void tls_conf_put(struct tls_conf *c)
{
	if (--c->users == 0 && c->retired)
		conf_free(c);
}
