/*
 * proxy.h — the exchange: route a complete request, forward it, relay the
 * reply, or answer locally (net/proxy.c, net/reply.c).
 */
#ifndef TOLLGATE_PROXY_H
#define TOLLGATE_PROXY_H

#include <stddef.h>
#include <stdint.h>

#include "net/conn_types.h"

struct exchange *exchange_get(struct shard *s);   /* NULL: pool exhausted */

/* From the client side. */
void proxy_request_head(struct exchange *ex);     /* head parsed, body follows */
void proxy_request(struct exchange *ex);          /* whole request read */
void proxy_reply_error(struct exchange *ex, unsigned status); /* framing error */
void proxy_client_sent(struct exchange *ex);      /* a client send finished */
void proxy_client_gone(struct exchange *ex);      /* client closed: drop all */

/* From the upstream side. */
void proxy_upstream_ready(struct exchange *ex);   /* connected or pooled */
void proxy_upstream_sent(struct exchange *ex);
void proxy_upstream_data(struct exchange *ex, const char *data, size_t len, int32_t bid);
void proxy_upstream_closed(struct exchange *ex, int err); /* EOF (0) or -errno */
void proxy_upstream_timeout(struct exchange *ex, uint8_t kind);
/* TLS to the provider failed (`when`: handshake, read, write; `why`: one
 * line, e.g. the certificate check that failed): 502 upstream_tls_failed
 * before the reply started, else as a lost connection. */
void proxy_upstream_tls_failed(struct exchange *ex, const char *when, const char *why);

/* Local replies (net/reply.c). */
void reply_problem(struct exchange *ex, unsigned status, const char *code,
		   const char *detail);
/* As reply_problem, with `extra` (",\"member\":...") added to the JSON object. */
void reply_problem_ext(struct exchange *ex, unsigned status, const char *code,
		       const char *detail, const char *extra);
void reply_models(struct exchange *ex);
/* A 200-class JSON reply whose body may live in the exchange's buffers. */
void reply_json(struct exchange *ex, unsigned status, const char *body, size_t len);
/* The same with another Content-Type. */
void reply_typed(struct exchange *ex, unsigned status, const char *type, const char *body,
		 size_t len);
/* The largest body a local reply can carry (the out buffer, less a head). */
size_t reply_room(const struct exchange *ex);

#endif
