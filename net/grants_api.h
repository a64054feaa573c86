/*
 * grants_api.h — the delegation API and the closing of grants (SPEC §5).
 */
#ifndef TOLLGATE_GRANTS_API_H
#define TOLLGATE_GRANTS_API_H

#include <stddef.h>

#include "net/conn_types.h"

struct shard;

void grants_api_open(struct exchange *ex);                          /* POST /v1/budget/grants */
void grants_api_get(struct exchange *ex, const char *id, size_t len);   /* GET .../{id} */
void grants_api_close(struct exchange *ex, const char *id, size_t len); /* DELETE .../{id} */
/* The shard's housekeeping: closes the grants it owns that are due. */
void grants_api_tidy(struct shard *s);

#endif
