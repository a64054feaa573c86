/*
 * replay_grants.c — grants seen in a ledger replay (replay_grants.h).
 */
#include "ledger/replay_grants.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

static uint32_t bucket(struct ledger_text id)
{
	return (uint32_t)XXH3_64bits(id.p, id.len) & (GRANT_SEEN_BUCKETS - 1);
}

static struct grant_seen *find(struct grant_index *gi, struct ledger_text id)
{
	for (struct grant_seen *g = gi->buckets[bucket(id)]; g; g = g->next)
		if (strlen(g->t.id) == id.len && !memcmp(g->t.id, id.p, id.len))
			return g;
	return NULL;
}

static int hexval(char c)
{
	return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* The token hash a grant_open carries as 64 hex digits in `code`. */
static bool read_hash(struct ledger_text t, unsigned char out[32])
{
	if (t.len != 64)
		return false;
	for (int i = 0; i < 32; i++) {
		int hi = hexval(t.p[2 * i]), lo = hexval(t.p[2 * i + 1]);
		if (hi < 0 || lo < 0)
			return false;
		out[i] = (unsigned char)(hi << 4 | lo);
	}
	return true;
}

/* The grant named id, created (not open, nothing known) if new: shards'
 * segments are read one shard after another, so spend under a grant can
 * come before the grant_open booked by another shard. */
static struct grant_seen *get(struct grant_index *gi, struct ledger_text id)
{
	struct grant_seen *g = find(gi, id);
	if (g || !(g = calloc(1, sizeof(*g))))
		return g;
	ledger_text_cstr(id, g->t.id, sizeof(g->t.id));
	uint32_t b = bucket(id);
	g->next = gi->buckets[b];
	gi->buckets[b] = g;
	g->next_all = gi->all;
	gi->all = g;
	return g;
}

static void note_open(struct grant_seen *g, const struct ledger_rec *r)
{
	if (g->opened)
		return;      /* the first one counts */
	g->opened = true;
	g->open = !g->closed && read_hash(r->f[LF_CODE], g->t.token_sha256);
	ledger_text_cstr(r->f[LF_RUN], g->t.parent_run, sizeof(g->t.parent_run));
	ledger_text_cstr(r->f[LF_KEY], g->t.grantor_key, sizeof(g->t.grantor_key));
	ledger_text_cstr(r->f[LF_GRANTEE], g->t.grantee_key, sizeof(g->t.grantee_key));
	ledger_text_cstr(r->f[LF_TEAM], g->t.grantor_team, sizeof(g->t.grantor_team));
	ledger_text_cstr(r->f[LF_ORG], g->t.grantor_org, sizeof(g->t.grantor_org));
	ledger_text_cstr(r->f[LF_PEER], g->t.grantee_team, sizeof(g->t.grantee_team));
	ledger_text_cstr(r->f[LF_PRICES], g->prices, sizeof(g->prices));
	g->t.decision = r->decision;
	g->t.amount = r->usd;
	g->t.expires_s = r->reserved / 1000;
	g->run_limit = r->run_limit;
}

int grant_index_note(struct grant_index *gi, const struct ledger_rec *r)
{
	struct ledger_text id = r->f[LF_GRANT];
	if (!id.len || id.len > GRANT_ID_MAX)
		return 0;
	struct grant_seen *g = get(gi, id);
	if (!g)
		return -ENOMEM;
	if (r->kind == LEDGER_GRANT_OPEN) {
		note_open(g, r);
	} else if (r->kind == LEDGER_GRANT_CLOSE) {
		g->closed = true;
		g->open = false;
	} else if (r->kind == LEDGER_COMMIT || r->kind == LEDGER_EXPIRE) {
		g->spent += r->usd;
	}
	return 0;
}

const struct grant_seen *grant_index_find(struct grant_index *gi, struct ledger_text id)
{
	return find(gi, id);
}

void grant_index_free(struct grant_index *gi)
{
	for (struct grant_seen *g = gi->all, *next; g; g = next) {
		next = g->next_all;
		free(g);
	}
	memset(gi, 0, sizeof(*gi));
}

static struct ledger_text text(const char *s)
{
	return (struct ledger_text){ s, (uint16_t)strlen(s) };
}

void grant_seen_record(const struct grant_seen *g, uint8_t kind, int64_t time_ms,
		       struct ledger_rec *r)
{
	memset(r, 0, sizeof(*r));
	r->kind = kind;
	r->time_ms = time_ms;
	r->decision = g->t.decision;
	r->usd = kind == LEDGER_GRANT_CLOSE ? g->spent : g->t.amount;
	r->reserved = g->t.amount;
	r->run_limit = g->run_limit;
	r->flags = LEDGER_F_RUN_KEPT;
	r->f[LF_RUN] = text(g->t.parent_run);
	r->f[LF_KEY] = text(g->t.grantor_key);
	r->f[LF_TEAM] = text(g->t.grantor_team);
	r->f[LF_ORG] = text(g->t.grantor_org);
	r->f[LF_PEER] = text(g->t.grantee_team);
	r->f[LF_GRANT] = text(g->t.id);
	r->f[LF_GRANTEE] = text(g->t.grantee_key);
	r->f[LF_PRICES] = text(g->prices);
}

void grant_seen_fill(const struct grant_seen *g, struct grant *live, uint32_t owner)
{
	live->t = g->t;
	live->owner = owner;
}
