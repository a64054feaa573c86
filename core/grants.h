/*
 * grants.h — delegated budget (SPEC §5): a run's owner moves part of its
 * budget into a grant that another key spends with a bearer token.
 *
 * A grant holds `amount` reserved on its parent run (on the slot of the
 * shard that opened it, its owner) and is a budget scope of its own with
 * that limit: a call that carries the token reserves on the grant too, on
 * every scope or none. The grant closes when its owner is asked to, or at
 * its expiry; closing waits until no call is in flight on it, then turns
 * the parent's reservation into a spend of what the grant spent and gives
 * the rest back. Only the owner shard touches the parent's reservation.
 *
 * Lookups take no lock: grants live in a fixed open-addressing table keyed
 * by the SHA-256 of their token (tokens are never kept), published by CAS.
 * A closed grant leaves the table at once (a tombstone) and is freed by the
 * sweeper thread once every shard has finished the loop turn it was in.
 *
 * Admission and closing race through two counters: a call increments its
 * shard's in-flight count, then checks the grant is open; the owner marks
 * it closing, then sums the counts (both sequentially consistent). Either
 * the call sees it closing and backs out, or the owner sees the call and
 * waits for it.
 */
#ifndef TOLLGATE_GRANTS_H
#define TOLLGATE_GRANTS_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "core/budget.h"
#include "core/defs.h"
#include "core/runs.h"

#define GRANTS_MAX 16384             /* open grants in all */
#define GRANTS_PER_KEY 256           /* open grants one key may have made */
#define GRANT_ID_MAX 24              /* "g-" and hex */
#define GRANT_TOKEN_LEN 40           /* "tgg_" and 36 hex digits */
#define GRANT_NAME_MAX 128           /* team and org names (config's bound) */

enum grant_state { GRANT_OPEN, GRANT_CLOSE_ASKED, GRANT_CLOSING, GRANT_CLOSED };

struct grant_use {
	_Alignas(CACHELINE) _Atomic uint32_t inflight;   /* this shard's calls on it */
};

/* What a grant is, as its grant_open record books it. */
struct grant_terms {
	char id[GRANT_ID_MAX + 1];
	unsigned char token_sha256[32];
	char parent_run[RUN_ID_MAX + 1];
	char grantor_key[RUN_ID_MAX + 1], grantee_key[RUN_ID_MAX + 1];
	char grantor_team[GRANT_NAME_MAX + 1], grantor_org[GRANT_NAME_MAX + 1];
	char grantee_team[GRANT_NAME_MAX + 1];
	uint64_t decision;               /* id of the call that opened it: its shard */
	int64_t amount;                  /* µUSD held on the parent */
	int64_t expires_s;               /* budget clock */
};

struct grant {
	struct grant_terms t;
	struct run *parent;              /* held (runs_begin) on the owner's slot until closed */
	uint32_t owner;                  /* shard that opened it */
	struct budget_scope *scope;      /* limit `amount`, hard, total window */
	_Atomic int state;               /* enum grant_state */
	struct grant_use *use;           /* one per shard */
	_Atomic uint32_t *grantor_count; /* the grantor key's open grants (budget_book) */
	struct grant *next_owned;        /* the owner's list (owner only) */
	struct grant *next_retired;
};

struct grant_table;

struct grant_table *grants_new(uint32_t n_shards);
void grants_free(struct grant_table *t);

/* A new grant (state OPEN, not yet in the table): amount, parent, ids
 * and expiry filled in by the caller, then grants_publish(). NULL: no
 * memory. */
struct grant *grants_alloc(struct grant_table *t);
void grants_discard(struct grant *g);
/* Puts g in the table and on its owner's list. false: the table is full
 * (g is not published; discard it). */
bool grants_publish(struct grant_table *t, struct grant *g);

/* The open grant whose token hashes to sha256, or NULL. Valid until the
 * caller's loop turn ends, unless grants_begin() holds it. */
struct grant *grants_find(struct grant_table *t, const unsigned char sha256[32]);
/* Its owner takes back a grant published this loop turn whose opening
 * could not be booked: no one has its token yet, so nothing spent it. */
void grants_withdraw(struct grant_table *t, struct grant *g);

/* The grant named id (open or closing), or NULL; same validity. */
struct grant *grants_find_id(struct grant_table *t, const char *id, size_t len);

/* A call of `shard` starts using g: false if g is no longer open (then it
 * is not held). grants_end() when the call is settled. */
bool grants_begin(struct grant *g, uint32_t shard);
void grants_end(struct grant *g, uint32_t shard);

/* Any shard: asks the owner to close g (at its next housekeeping). */
void grants_ask_close(struct grant *g);

/*
 * The owner's housekeeping (once a second and when asked): each of its
 * grants that is expired as of now_s or asked to close stops admitting
 * calls; once none is in flight, close(g, spent, arg) settles it (the
 * caller commits `spent` on the parent and books the record) and g leaves
 * the table. Returns how many closed.
 */
uint32_t grants_tidy(struct grant_table *t, uint32_t shard, int64_t now_s,
		     void (*close)(struct grant *g, int64_t spent, void *arg), void *arg);

/* budget_tidy() on every open grant's scope for `shard`. */
void grants_tidy_leases(struct grant_table *t, uint32_t shard, const struct budget_clock *clk);

/* The sweeper's step: frees grants closed before quiesce(arg) returned
 * true (false: it was cut short; they wait for the next step, or exit). */
void grants_reclaim(struct grant_table *t, bool (*quiesce)(void *), void *arg);

/* Open grants (published, not closed). */
uint32_t grants_live(const struct grant_table *t);

#endif
