/*
 * shard.h — start, message and stop per-core event loops.
 */
#ifndef TOLLGATE_SHARD_H
#define TOLLGATE_SHARD_H

#include "core/shard_types.h"

/* Prepares shard `id` (ring, listeners, pools, TLS) on the calling thread;
 * cfg gets one reference taken for the shard; ticket_secret
 * (TLS_TICKET_SECRET bytes) must outlive the shard. 0 or negative errno. */
int shard_init(struct shard *s, int id, int cpu, struct config *cfg,
	       const uint8_t *ticket_secret);
/* Runs the loop on a new thread. */
int shard_start(struct shard *s);
/* Posts a command (main thread). For RELOAD, cfg carries a reference. */
void shard_post(struct shard *s, enum shard_cmd cmd, struct config *cfg);
void shard_join(struct shard *s);
void shard_destroy(struct shard *s);

/* Frees a generation's hold once nothing uses it (net/proxy.c, reload). */
void shard_hold_free(struct cfg_hold *h);

/* Used by net/: a SQE on the shard's ring. */
struct io_uring_sqe *shard_sqe(struct shard *s);
/* Arms a timer `ms` from now. */
void shard_timer_arm(struct shard *s, struct timer *t, uint8_t kind, uint32_t ms);

#endif
