/*
 * shard_tls.h — a shard's TLS configurations: one per TLS listener, one
 * per https provider, rebuilt from each config generation's PEM bytes.
 */
#ifndef TOLLGATE_SHARD_TLS_H
#define TOLLGATE_SHARD_TLS_H

#include "core/shard_types.h"

/* Builds the listeners' server configurations (main thread, before the
 * shard starts; s->tls is set up). 0 or negative errno. */
int shard_tls_listeners(struct shard *s);
/* New listener configurations from `next` (on reload); connections
 * already open keep theirs. A listener that fails keeps its old one. */
void shard_tls_reload(struct shard *s, const struct config *next);
/* Builds h->provider_tls for the https providers of h->cfg. 0, or
 * negative errno (logged; nothing is left allocated). */
int shard_tls_hold(struct shard *s, struct cfg_hold *h);
/* Retires them (connections still using one keep it alive). */
void shard_tls_unhold(struct cfg_hold *h);
void shard_tls_free(struct shard *s);

#endif
