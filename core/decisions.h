/*
 * decisions.h — the recent budget decisions of every shard, readable from
 * any shard (GET /budget/decisions/{id}, idempotent retries).
 *
 * Each shard writes its own ring of DECISIONS_PER_SHARD records, the
 * newest overwriting the oldest; a decision id names its shard and its
 * sequence number, so finding one is an index, not a search. Readers copy
 * a record under its sequence counter (a seqlock: one writer, no lock) and
 * retry if it changed under them. The durable history is the ledger's.
 */
#ifndef TOLLGATE_DECISIONS_H
#define TOLLGATE_DECISIONS_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#define DECISIONS_PER_SHARD 8192
#define DECISION_ID_SHARD_SHIFT 48

enum decision_kind { DECISION_ALLOW, DECISION_WARN, DECISION_DOWNGRADE, DECISION_BLOCK };
enum decision_outcome {
	OUTCOME_REFUSED,     /* nothing was reserved */
	OUTCOME_COMMITTED,   /* actual_usd was spent */
	OUTCOME_RELEASED,    /* reserved, then given back whole: no reply came */
};

struct decision_rec {
	uint64_t id;
	int64_t time_s;                 /* UTC seconds */
	int64_t estimate_usd, reserved_usd, actual_usd;
	uint16_t status;                /* HTTP status the agent got */
	uint8_t kind;                   /* enum decision_kind */
	uint8_t outcome;                /* enum decision_outcome */
	uint8_t mode;                   /* enum budget_mode in force */
	char key_id[65], run_id[65];
	char model[65];                 /* as requested */
	char selected_model[65];        /* on downgrade, else "" */
	char code[40];                  /* problem code of a refusal, else "" */
	char scope[140];                /* "team:research": the scope that refused or warned */
	char tags[257];                 /* X-Budget-Tags as sent (validated) */
};

struct decision_log;

struct decision_log *decisions_new(uint32_t n_shards);
void decisions_free(struct decision_log *l);

/* Shard `shard` records rec (rec->id must be one of its ids). */
void decisions_put(struct decision_log *l, uint32_t shard, const struct decision_rec *rec);
/* Any thread: copies decision `id` into *out; false if unknown or
 * already overwritten by a newer one. */
bool decisions_get(struct decision_log *l, uint64_t id, struct decision_rec *out);

#endif
