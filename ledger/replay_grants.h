/*
 * replay_grants.h — the grants a ledger replay finds (ledger/replay.c):
 * each grant_open record, what was spent under it, and whether it closed.
 */
#ifndef TOLLGATE_LEDGER_REPLAY_GRANTS_H
#define TOLLGATE_LEDGER_REPLAY_GRANTS_H

#include <stdbool.h>
#include <stdint.h>

#include "core/grants.h"
#include "ledger/record.h"

#define GRANT_SEEN_BUCKETS 4096

struct grant_seen {
	struct grant_terms t;
	char prices[GRANT_NAME_MAX + 1];
	int64_t spent, run_limit;
	bool opened;                     /* its grant_open was read */
	bool closed;                     /* its grant_close was read */
	bool open;                       /* opened, not closed, token known */
	struct grant_seen *next;         /* bucket chain */
	struct grant_seen *next_all;
};

struct grant_index {
	struct grant_seen *buckets[GRANT_SEEN_BUCKETS];
	struct grant_seen *all;
};

/* Takes note of a grant_open, grant_close, or a commit/expire spent under
 * a grant. 0, or -ENOMEM. */
int grant_index_note(struct grant_index *gi, const struct ledger_rec *r);
void grant_index_free(struct grant_index *gi);
/* The grant named id, or NULL. */
const struct grant_seen *grant_index_find(struct grant_index *gi, struct ledger_text id);

/* The grant's record of `kind` (grant_close: usd is what it spent). Its
 * text points into g. */
void grant_seen_record(const struct grant_seen *g, uint8_t kind, int64_t time_ms,
		       struct ledger_rec *r);
/* A live grant (grants_alloc'd) set up as g was; owner is its shard. */
void grant_seen_fill(const struct grant_seen *g, struct grant *live, uint32_t owner);

#endif
