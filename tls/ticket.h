/*
 * ticket.h — stateless session tickets (RFC 5077) any shard can open.
 */
#ifndef TOLLGATE_TLS_TICKET_H
#define TOLLGATE_TLS_TICKET_H

#include "tls/tls_types.h"

void tls_tickets_init(struct tls_tickets *tk, const uint8_t *secret,
		      mbedtls_ctr_drbg_context *drbg);
void tls_tickets_free(struct tls_tickets *tk);

/* mbedTLS callbacks (mbedtls_ssl_conf_session_tickets_cb), p_ticket is a
 * struct tls_tickets. */
mbedtls_ssl_ticket_write_t tls_ticket_write;
mbedtls_ssl_ticket_parse_t tls_ticket_parse;

#endif
