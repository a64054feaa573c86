/*
 * replay.h — rebuilding budget state from the ledger at start-up, before
 * the first request is accepted (SPEC §7).
 *
 * Every segment is read in order, shard by shard. What was spent (commit
 * and expire records) is added back to each scope the record names — key,
 * user, team, org by name in the current config — if it falls in that
 * scope's current window; runs that were kept in the run table and have
 * not idled past their key's run.ttl_s are opened again with what they
 * spent. A reservation with no outcome (the process died while its call
 * was in flight) is charged in full: an `expire` record is booked for it,
 * since tokens may have been generated and a budget authority must not
 * guess low. Grants still open are opened again (their parent run holds
 * their amount again, their spend so far restored); one that expired while
 * tollgate was down is closed, its spend charged to its parent run.
 *
 * Damage: a torn tail of a shard's last segment (a crash mid-write) is
 * reported and truncated to the last whole record. Anything else that is
 * damaged stops start-up, unless `repair` is set: then the damaged
 * stretches are cut out of their segment (it is rewritten) and reported.
 */
#ifndef TOLLGATE_LEDGER_REPLAY_H
#define TOLLGATE_LEDGER_REPLAY_H

#include <stdbool.h>
#include <stdint.h>

#include "core/budget_types.h"
#include "core/config_types.h"
#include "ledger/writer.h"

/* A freeze or unfreeze record (the kill switch), for the caller to apply
 * in order: `scope` is the first of run, key, user, team, org (0..4) the
 * record names. */
struct ledger_freeze_event {
	int64_t time_ms;
	uint64_t seq;                              /* the freeze table's order of changes */
	uint8_t scope;
	bool frozen;
	char id[129];
	char reason[257];
};

struct ledger_replay {
	uint64_t segments, records, commits;
	uint64_t expired;                          /* orphan reservations charged */
	int64_t restored_usd;                      /* spend put back in open windows */
	uint32_t runs_restored;
	uint32_t grants_restored, grants_closed;   /* open ones; expired while down */
	uint64_t truncated_bytes, repaired_bytes;
	uint64_t next_seq[BUDGET_MAX_SHARDS];      /* each shard's next segment number */
	uint64_t next_decision[BUDGET_MAX_SHARDS]; /* its next decision counter */
	char *pending;                             /* encoded records to book at start: */
	size_t pending_len, pending_cap;           /* expire and grant_close */
	struct ledger_freeze_event *freezes;       /* sorted by time */
	size_t n_freezes, cap_freezes;
};

/*
 * Replays the ledger in dir_fd into cfg's bound budgets and run table, as
 * of now_s (UTC seconds). 0, or -EBADMSG on damage that needs `repair`
 * (reported on the log), or another negative errno.
 */
int ledger_replay(int dir_fd, struct config *cfg, uint32_t n_shards, int64_t now_s,
		  bool repair, struct ledger_replay *out);
/* Books the records replay decided on (an expire per orphan reservation,
 * dated like it so that it counts in the same window; a grant_close per
 * grant that expired while tollgate was down) into writers[their shard]
 * (writers[0] when that shard no longer runs). 0 or a negative errno. */
int ledger_replay_book_pending(struct ledger_replay *rp, struct ledger_writer *writers,
			       uint32_t n);
/* Frees the booked records (the freeze events stay for the caller). */
void ledger_replay_free_pending(struct ledger_replay *rp);
void ledger_replay_free(struct ledger_replay *rp);

#endif
