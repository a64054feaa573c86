/*
 * shard.c — a shard's TLS randomness: one CTR-DRBG per shard, seeded from
 * getrandom(), and called without the library's mutex (only this shard's
 * thread ever uses it).
 */
#include "tls/tls.h"

#include <errno.h>
#include <string.h>
#include <sys/random.h>

#include "tls/ticket.h"

static int entropy_getrandom(void *unused, unsigned char *out, size_t len)
{
	(void)unused;
	size_t got = 0;
	while (got < len) {
		ssize_t n = getrandom(out + got, len - got, 0);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return MBEDTLS_ERR_CTR_DRBG_ENTROPY_SOURCE_FAILED;
		}
		got += (size_t)n;
	}
	return 0;
}

int tls_rng(void *drbg, unsigned char *out, size_t len)
{
	/* mbedtls_ctr_drbg_random() would take the context's mutex; the
	 * _with_add variant is the same generator without it. */
	return mbedtls_ctr_drbg_random_with_add(drbg, out, len, NULL, 0);
}

int tls_shard_init(struct tls_shard *ts, const uint8_t *ticket_secret)
{
	memset(ts, 0, sizeof(*ts));
	mbedtls_ctr_drbg_init(&ts->drbg);
	static const unsigned char personal[] = "tollgate shard drbg";
	if (mbedtls_ctr_drbg_seed(&ts->drbg, entropy_getrandom, NULL, personal,
				  sizeof(personal) - 1)) {
		mbedtls_ctr_drbg_free(&ts->drbg);
		return -EIO;
	}
	tls_tickets_init(&ts->tickets, ticket_secret, &ts->drbg);
	ts->ready = true;
	return 0;
}

void tls_shard_free(struct tls_shard *ts)
{
	if (!ts->ready)
		return;
	tls_tickets_free(&ts->tickets);
	mbedtls_ctr_drbg_free(&ts->drbg);
	ts->ready = false;
}
