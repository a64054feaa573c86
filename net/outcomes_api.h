/*
 * outcomes_api.h — POST /v1/budget/outcomes (SPEC §7).
 */
#ifndef TOLLGATE_OUTCOMES_API_H
#define TOLLGATE_OUTCOMES_API_H

#include "net/conn_types.h"

void outcomes_api_post(struct exchange *ex);

#endif
