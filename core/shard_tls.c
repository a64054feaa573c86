/*
 * shard_tls.c — see shard_tls.h. Configurations are built on the shard's
 * own DRBG and hold the shard's own parsed keys, so no mbedTLS object is
 * ever shared between threads.
 */
#include "core/shard_tls.h"

#include <errno.h>
#include <stdlib.h>

#include "core/log.h"
#include "tls/tls.h"

static struct tls_conf *listener_conf(struct shard *s, const struct cfg_listen *l)
{
	if (!l->tls_cert_pem)
		return NULL;
	return tls_conf_server(&s->tls, l->tls_cert_pem, l->tls_cert_len,
			       l->tls_key_pem, l->tls_key_len);
}

int shard_tls_listeners(struct shard *s)
{
	s->listen_tls = calloc(s->n_listen ? s->n_listen : 1, sizeof(*s->listen_tls));
	if (!s->listen_tls)
		return -ENOMEM;
	for (uint32_t i = 0; i < s->n_listen && i < s->cfg->n_listen; i++) {
		const struct cfg_listen *l = &s->cfg->listen[i];
		if (l->tls_cert_pem && !(s->listen_tls[i] = listener_conf(s, l)))
			return -EINVAL;
	}
	return 0;
}

void shard_tls_reload(struct shard *s, const struct config *next)
{
	for (uint32_t i = 0; i < s->n_listen && i < next->n_listen && (int)i != s->admin_listener;
	     i++) {
		const struct cfg_listen *l = &next->listen[i];
		if (!s->listen_tls[i] && !l->tls_cert_pem)
			continue;
		if (!s->listen_tls[i] || !l->tls_cert_pem) {
			/* the socket was opened for one or the other at start */
			log_warn("reload: listener %s cannot switch between TLS and plain "
				 "without a restart", l->addr.text);
			continue;
		}
		struct tls_conf *fresh = listener_conf(s, l);
		if (!fresh) {
			log_error("reload: listener %s keeps its old certificate", l->addr.text);
			continue;
		}
		tls_conf_retire(s->listen_tls[i]);
		s->listen_tls[i] = fresh;
	}
}

int shard_tls_hold(struct shard *s, struct cfg_hold *h)
{
	const struct config *cfg = h->cfg;
	h->provider_tls = calloc(cfg->n_providers ? cfg->n_providers : 1,
				 sizeof(*h->provider_tls));
	if (!h->provider_tls)
		return -ENOMEM;
	for (uint32_t i = 0; i < cfg->n_providers; i++) {
		const struct cfg_provider *p = &cfg->providers[i];
		if (!p->tls)
			continue;
		h->provider_tls[i] = tls_conf_client(&s->tls, p->ca_pem, p->ca_len, p->host,
						     p->insecure_skip_verify);
		if (!h->provider_tls[i]) {
			log_error("provider %s: cannot set up its TLS client side", p->name);
			shard_tls_unhold(h);
			return -EINVAL;
		}
	}
	return 0;
}

void shard_tls_unhold(struct cfg_hold *h)
{
	if (!h->provider_tls)
		return;
	for (uint32_t i = 0; i < h->cfg->n_providers; i++)
		tls_conf_retire(h->provider_tls[i]);
	free(h->provider_tls);
	h->provider_tls = NULL;
}

void shard_tls_free(struct shard *s)
{
	if (s->listen_tls)
		for (uint32_t i = 0; i < s->n_listen; i++)
			tls_conf_retire(s->listen_tls[i]);
	free(s->listen_tls);
	s->listen_tls = NULL;
	tls_shard_free(&s->tls);
}
