/*
 * admin_api.h — the admin listener's routes (SPEC §8), net/admin_api.c.
 */
#ifndef TOLLGATE_ADMIN_API_H
#define TOLLGATE_ADMIN_API_H

#include <stddef.h>

#include "net/conn_types.h"

/* Answers a request that came in on admin.addr (path without the query). */
void admin_route(struct exchange *ex, const char *path, size_t len, unsigned method);

#endif
