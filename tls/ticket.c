/*
 * ticket.c — stateless session tickets (RFC 5077) that every shard can
 * open without sharing a key at run time.
 *
 * The main thread draws one secret at start. The key of hour-epoch E is
 * HKDF-SHA256(secret, "tollgate ticket key" || E), so each shard derives
 * the same key on its own when the hour turns. A ticket is
 *
 *     epoch (4, big-endian) | iv (12) | AES-256-GCM(session) | tag (16)
 *
 * with the first 16 bytes as associated data. Tickets of the current and
 * the previous epoch are accepted (a ticket lives 1-2 hours); anything else
 * falls back to a full handshake. Tickets do not survive a restart: the
 * secret is never written down.
 */
#include "tls/ticket.h"

#include <string.h>
#include <time.h>

#include <mbedtls/hkdf.h>
#include <mbedtls/md.h>

#include "tls/tls.h"

#define TICKET_HEAD 16                  /* epoch + iv */
#define TICKET_TAG 16

void tls_tickets_init(struct tls_tickets *tk, const uint8_t *secret,
		      mbedtls_ctr_drbg_context *drbg)
{
	tk->secret = secret;
	tk->drbg = drbg;
	for (int i = 0; i < 2; i++) {
		tk->epoch[i] = -1;
		mbedtls_gcm_init(&tk->gcm[i]);
	}
}

void tls_tickets_free(struct tls_tickets *tk)
{
	for (int i = 0; i < 2; i++)
		mbedtls_gcm_free(&tk->gcm[i]);
}

/* The GCM context keyed for `epoch`, deriving it into the older slot. */
static mbedtls_gcm_context *key_for(struct tls_tickets *tk, int64_t epoch)
{
	for (int i = 0; i < 2; i++)
		if (tk->epoch[i] == epoch)
			return &tk->gcm[i];
	int slot = tk->epoch[0] < tk->epoch[1] ? 0 : 1;
	unsigned char info[19 + 8] = "tollgate ticket key";
	for (int i = 0; i < 8; i++)
		info[19 + i] = (unsigned char)((uint64_t)epoch >> (56 - 8 * i));
	unsigned char key[32];
	const mbedtls_md_info_t *md = mbedtls_md_info_from_type(MBEDTLS_MD_SHA256);
	tk->epoch[slot] = -1;
	if (mbedtls_hkdf(md, NULL, 0, tk->secret, TLS_TICKET_SECRET, info, sizeof(info),
			 key, sizeof(key)) ||
	    mbedtls_gcm_setkey(&tk->gcm[slot], MBEDTLS_CIPHER_ID_AES, key, 256)) {
		memset(key, 0, sizeof(key));
		return NULL;
	}
	memset(key, 0, sizeof(key));
	tk->epoch[slot] = epoch;
	return &tk->gcm[slot];
}

static int64_t epoch_now(void)
{
	return (int64_t)time(NULL) / TLS_TICKET_EPOCH_S;
}

int tls_ticket_write(void *p_ticket, const mbedtls_ssl_session *session,
		     unsigned char *start, const unsigned char *end,
		     size_t *tlen, uint32_t *lifetime)
{
	struct tls_tickets *tk = p_ticket;
	*tlen = 0;
	size_t room = (size_t)(end - start);
	if (room < TICKET_HEAD + TICKET_TAG)
		return MBEDTLS_ERR_SSL_BUFFER_TOO_SMALL;
	int64_t epoch = epoch_now();
	mbedtls_gcm_context *gcm = key_for(tk, epoch);
	if (!gcm)
		return MBEDTLS_ERR_SSL_INTERNAL_ERROR;
	for (int i = 0; i < 4; i++)
		start[i] = (unsigned char)((uint32_t)epoch >> (24 - 8 * i));
	if (tls_rng(tk->drbg, start + 4, 12))
		return MBEDTLS_ERR_SSL_INTERNAL_ERROR;
	unsigned char *body = start + TICKET_HEAD;
	size_t body_len = 0;
	int rc = mbedtls_ssl_session_save(session, body, room - TICKET_HEAD - TICKET_TAG,
					  &body_len);
	if (rc)
		return rc;
	rc = mbedtls_gcm_crypt_and_tag(gcm, MBEDTLS_GCM_ENCRYPT, body_len, start + 4, 12,
				       start, TICKET_HEAD, body, body, TICKET_TAG,
				       body + body_len);
	if (rc)
		return rc;
	*tlen = TICKET_HEAD + body_len + TICKET_TAG;
	*lifetime = TLS_TICKET_EPOCH_S;
	return 0;
}

int tls_ticket_parse(void *p_ticket, mbedtls_ssl_session *session,
		     unsigned char *buf, size_t len)
{
	struct tls_tickets *tk = p_ticket;
	if (len < TICKET_HEAD + TICKET_TAG)
		return MBEDTLS_ERR_SSL_BAD_INPUT_DATA;
	uint32_t e = (uint32_t)buf[0] << 24 | (uint32_t)buf[1] << 16 |
		     (uint32_t)buf[2] << 8 | buf[3];
	int64_t now = epoch_now();
	if ((int64_t)e != now && (int64_t)e != now - 1)
		return MBEDTLS_ERR_SSL_SESSION_TICKET_EXPIRED;
	mbedtls_gcm_context *gcm = key_for(tk, e);
	if (!gcm)
		return MBEDTLS_ERR_SSL_INTERNAL_ERROR;
	size_t body_len = len - TICKET_HEAD - TICKET_TAG;
	unsigned char *body = buf + TICKET_HEAD;
	if (mbedtls_gcm_auth_decrypt(gcm, body_len, buf + 4, 12, buf, TICKET_HEAD,
				     body + body_len, TICKET_TAG, body, body))
		return MBEDTLS_ERR_SSL_INVALID_MAC;
	int rc = mbedtls_ssl_session_load(session, body, body_len);
	return rc ? MBEDTLS_ERR_SSL_BAD_INPUT_DATA : 0;
}
