/*
 * ledger.h — the durable ledger as the daemon starts and stops it: the
 * directory (created, and locked so two daemons never share it), the
 * replay that rebuilds budgets before the first request, and one writer
 * per shard. docs/ledger.md has the format and the guarantees.
 */
#ifndef TOLLGATE_LEDGER_H
#define TOLLGATE_LEDGER_H

#include <stdbool.h>
#include <stdint.h>

#include "core/config_types.h"
#include "ledger/replay.h"
#include "ledger/writer.h"

struct ledger_set {
	int dir_fd;
	uint32_t n;                   /* writers, one per shard */
	struct ledger_writer *writers;
	struct ledger_replay replay;  /* what start-up found */
};

/* Replays cfg->ledger.dir into cfg's budgets as of now_s and opens a
 * writer per shard. 0, or a negative errno (reported on the log). */
int ledger_start(struct ledger_set *ls, struct config *cfg, uint32_t n_shards, int64_t now_s,
		 bool repair);
/* Where shard i's decision counter starts: past any id in the ledger. */
uint64_t ledger_first_decision(const struct ledger_set *ls, uint32_t shard);
/* Writes out and syncs what is buffered, closes everything. */
void ledger_stop(struct ledger_set *ls);

#endif
