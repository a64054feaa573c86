/*
 * alerts.h — budget alerts (SPEC §2 alert_at, §6): when a scope's spend in
 * its window crosses a fraction of its limit, one JSON log line and one
 * POST to alerts.webhook_url, once per fraction per window.
 *
 * A thread of its own watches every scope with alert_at four times a
 * second, so neither the request path nor a slow webhook ever waits for
 * the other.
 */
#ifndef TOLLGATE_ALERTS_H
#define TOLLGATE_ALERTS_H

#include <stdatomic.h>
#include <stdint.h>

#include "core/config_types.h"

struct alerts;

/* Starts watching cfg (takes a reference). clock_offset_s: see main.c's
 * TOLLGATE_TEST_CLOCK_FILE. NULL on failure. */
struct alerts *alerts_start(struct config *cfg, const _Atomic int64_t *clock_offset_s);
/* A reload: watch the new generation from now on (takes a reference). */
void alerts_reload(struct alerts *a, struct config *cfg);
/* Stops the thread and frees it all. */
void alerts_stop(struct alerts *a);

#endif
