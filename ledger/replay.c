/*
 * replay.c — rebuilding budgets and runs from the ledger (replay.h).
 */
#include "ledger/replay.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "core/budget.h"
#include "core/budget_book.h"
#include "core/decisions.h"
#include "core/grants.h"
#include "core/log.h"
#include "core/money.h"
#include "core/runs.h"
#include "ledger/replay_grants.h"
#include "ledger/segment.h"

#define ORPHAN_BUCKETS (1u << 16)
#define DECISION_SEQ_MASK ((1ULL << DECISION_ID_SHARD_SHIFT) - 1)

/* ---- names in the config, by hash ---- */

struct name_map {
	uint32_t *slot;              /* index + 1, 0: empty */
	uint32_t mask;
	const char *(*name)(const struct config *cfg, uint32_t i);
};

static const char *key_name(const struct config *c, uint32_t i) { return c->keys[i].id; }
static const char *user_name(const struct config *c, uint32_t i) { return c->users[i].name; }
static const char *team_name(const struct config *c, uint32_t i) { return c->teams[i].name; }
static const char *org_name(const struct config *c, uint32_t i) { return c->orgs[i].name; }

static int map_build(struct name_map *m, const struct config *cfg, uint32_t n,
		     const char *(*name)(const struct config *, uint32_t))
{
	uint32_t cap = 8;
	while (cap < 2 * n)
		cap <<= 1;
	m->slot = calloc(cap, sizeof(*m->slot));
	if (!m->slot)
		return -ENOMEM;
	m->mask = cap - 1;
	m->name = name;
	for (uint32_t i = 0; i < n; i++) {
		const char *s = name(cfg, i);
		uint32_t h = (uint32_t)XXH3_64bits(s, strlen(s)) & m->mask;
		while (m->slot[h])
			h = (h + 1) & m->mask;
		m->slot[h] = i + 1;
	}
	return 0;
}

/* The index of the name t, or -1. */
static int map_find(const struct name_map *m, const struct config *cfg, struct ledger_text t)
{
	if (!t.len)
		return -1;
	uint32_t h = (uint32_t)XXH3_64bits(t.p, t.len) & m->mask;
	for (; m->slot[h]; h = (h + 1) & m->mask) {
		const char *s = m->name(cfg, m->slot[h] - 1);
		if (strlen(s) == t.len && !memcmp(s, t.p, t.len))
			return (int)m->slot[h] - 1;
	}
	return -1;
}

/* ---- reservations waiting for their outcome ---- */

struct ledger_orphan {
	struct ledger_orphan *next;
	uint64_t decision;
	uint32_t len;                /* 0: its outcome came first (booked by another
					shard at an earlier start): not an orphan */
	char rec[];                  /* the latest reserve record, encoded */
};

static uint32_t bucket(uint64_t decision)
{
	return (uint32_t)XXH3_64bits(&decision, sizeof(decision)) & (ORPHAN_BUCKETS - 1);
}

/* ---- runs seen in the ledger ---- */

struct run_seen {
	char id[RUN_ID_MAX + 1], key[RUN_ID_MAX + 1];
	int64_t limit, spent, last_ms;
	int32_t open_grants;         /* a run holding a grant never expires */
};

struct run_index {
	struct run_seen *v;
	uint32_t n, cap;
	uint32_t *slot;              /* index + 1 */
	uint32_t mask;
};

static int runs_grow(struct run_index *ri)
{
	uint32_t cap = ri->cap ? ri->cap * 2 : 1024;
	struct run_seen *v = realloc(ri->v, cap * sizeof(*v));
	uint32_t *slot = calloc(2 * (size_t)cap, sizeof(*slot));
	if (!v || !slot) {
		if (v)
			ri->v = v;
		free(slot);
		return -ENOMEM;
	}
	ri->v = v;
	ri->cap = cap;
	free(ri->slot);
	ri->slot = slot;
	ri->mask = 2 * cap - 1;
	for (uint32_t i = 0; i < ri->n; i++) {
		uint32_t h = (uint32_t)XXH3_64bits(v[i].id, strlen(v[i].id)) & ri->mask;
		while (slot[h])
			h = (h + 1) & ri->mask;
		slot[h] = i + 1;
	}
	return 0;
}

static struct run_seen *run_get(struct run_index *ri, struct ledger_text id)
{
	if (!id.len || id.len > RUN_ID_MAX)
		return NULL;
	if (ri->n == ri->cap && runs_grow(ri))
		return NULL;
	uint32_t h = (uint32_t)XXH3_64bits(id.p, id.len) & ri->mask;
	for (; ri->slot[h]; h = (h + 1) & ri->mask) {
		struct run_seen *r = &ri->v[ri->slot[h] - 1];
		if (strlen(r->id) == id.len && !memcmp(r->id, id.p, id.len))
			return r;
	}
	struct run_seen *r = &ri->v[ri->n];
	memset(r, 0, sizeof(*r));
	memcpy(r->id, id.p, id.len);
	ri->slot[h] = ++ri->n;
	return r;
}

/* ---- the replay ---- */

struct replay_ctx {
	struct config *cfg;
	struct budget_clock now;
	struct ledger_replay *out;
	struct name_map keys, users, teams, orgs;
	struct ledger_orphan **orphans;          /* ORPHAN_BUCKETS chains */
	struct run_index runs;
	struct grant_index grants;
	uint32_t n_shards;
	int error;
};

/* A record replay books once the writers are open. */
static void pend(struct replay_ctx *x, const struct ledger_rec *r)
{
	struct ledger_replay *o = x->out;
	size_t need = ledger_rec_size(r);
	if (o->pending_len + need > o->pending_cap) {
		size_t cap = o->pending_cap ? o->pending_cap * 2 : 65536;
		while (cap < o->pending_len + need)
			cap *= 2;
		char *p = realloc(o->pending, cap);
		if (!p) {
			x->error = -ENOMEM;
			return;
		}
		o->pending = p;
		o->pending_cap = cap;
	}
	o->pending_len += ledger_encode(r, o->pending + o->pending_len);
}

/* Adds usd to b if its window then is its window now. */
static void restore(struct replay_ctx *x, const struct cfg_budget *b, const struct budget_clock *then,
		    int64_t usd)
{
	if (!b->present || !b->scope || then->epoch[b->window] != x->now.epoch[b->window])
		return;
	budget_restore(b->scope, usd, &x->now);
}

/* What a commit or expire record spent, back on the scopes it names. */
static void spend(struct replay_ctx *x, const struct ledger_rec *r, int64_t usd)
{
	struct config *cfg = x->cfg;
	struct budget_clock then;
	budget_clock_set(&then, r->time_ms / 1000);
	int i;
	if ((i = map_find(&x->keys, cfg, r->f[LF_KEY])) >= 0)
		restore(x, &cfg->keys[i].budget, &then, usd);
	if ((i = map_find(&x->users, cfg, r->f[LF_USER])) >= 0)
		restore(x, &cfg->users[i].budget, &then, usd);
	if ((i = map_find(&x->teams, cfg, r->f[LF_TEAM])) >= 0)
		restore(x, &cfg->teams[i].budget, &then, usd);
	if ((i = map_find(&x->orgs, cfg, r->f[LF_ORG])) >= 0)
		restore(x, &cfg->orgs[i].budget, &then, usd);
	x->out->restored_usd += usd;
}

static void run_touch(struct replay_ctx *x, const struct ledger_rec *r, int64_t usd)
{
	if (!(r->flags & LEDGER_F_RUN_KEPT))
		return;
	struct run_seen *run = run_get(&x->runs, r->f[LF_RUN]);
	if (!run) {
		x->error = -ENOMEM;
		return;
	}
	if (!run->key[0])
		ledger_text_cstr(r->f[LF_KEY], run->key, sizeof(run->key));
	run->limit = r->run_limit;
	run->spent += usd;
	if (r->kind == LEDGER_GRANT_OPEN)
		run->open_grants++;
	else if (r->kind == LEDGER_GRANT_CLOSE)
		run->open_grants--;
	if (r->time_ms > run->last_ms)
		run->last_ms = r->time_ms;
}

static struct ledger_orphan **orphan_find(struct replay_ctx *x, uint64_t decision)
{
	struct ledger_orphan **pp = &x->orphans[bucket(decision)];
	while (*pp && (*pp)->decision != decision)
		pp = &(*pp)->next;
	return pp;
}

static void note_reserve(struct replay_ctx *x, const struct ledger_rec *r)
{
	struct ledger_orphan **pp = orphan_find(x, r->decision);
	if (*pp && !(*pp)->len)
		return;      /* already settled */
	if (*pp) {   /* a stream lease grew: keep the latest amount */
		struct ledger_orphan *old = *pp;
		*pp = old->next;
		free(old);
	}
	size_t len = ledger_rec_size(r);
	struct ledger_orphan *o = malloc(sizeof(*o) + len);
	if (!o) {
		x->error = -ENOMEM;
		return;
	}
	o->decision = r->decision;
	o->len = (uint32_t)ledger_encode(r, o->rec);
	o->next = x->orphans[bucket(r->decision)];
	x->orphans[bucket(r->decision)] = o;
	run_touch(x, r, 0);
}

static void note_outcome(struct replay_ctx *x, const struct ledger_rec *r)
{
	struct ledger_orphan **pp = orphan_find(x, r->decision);
	if (*pp) {
		struct ledger_orphan *o = *pp;
		*pp = o->next;
		free(o);
		return;
	}
	/* an expire booked into another shard's segment at an earlier start,
	 * read before its reservation: remember it is settled */
	struct ledger_orphan *o = calloc(1, sizeof(*o));
	if (!o) {
		x->error = -ENOMEM;
		return;
	}
	o->decision = r->decision;
	o->next = x->orphans[bucket(r->decision)];
	x->orphans[bucket(r->decision)] = o;
}

/* Keeps a freeze or unfreeze record for the caller (sorted at the end). */
static void note_freeze(struct replay_ctx *x, const struct ledger_rec *r)
{
	struct ledger_replay *o = x->out;
	int scope = -1;
	for (int f = LF_RUN; f <= LF_ORG && scope < 0; f++)
		if (r->f[f].len)
			scope = f - LF_RUN;
	if (scope < 0)
		return;
	if (o->n_freezes == o->cap_freezes) {
		size_t cap = o->cap_freezes ? o->cap_freezes * 2 : 16;
		void *p = realloc(o->freezes, cap * sizeof(*o->freezes));
		if (!p) {
			x->error = -ENOMEM;
			return;
		}
		o->freezes = p;
		o->cap_freezes = cap;
	}
	struct ledger_freeze_event *e = &o->freezes[o->n_freezes];
	*e = (struct ledger_freeze_event){ .time_ms = r->time_ms, .seq = (uint64_t)r->reserved,
					   .scope = (uint8_t)scope,
					   .frozen = r->kind == LEDGER_FREEZE };
	const struct ledger_text *id = &r->f[LF_RUN + scope], *why = &r->f[LF_CODE];
	snprintf(e->id, sizeof(e->id), "%.*s", (int)id->len, id->p);
	snprintf(e->reason, sizeof(e->reason), "%.*s", (int)why->len, why->p);
	o->n_freezes++;
}

/* By the order the freeze table gave the changes: shards' segments are
 * read one shard after another, and two shards' changes can share a
 * millisecond (or the clock can step back). */
static int freeze_order(const void *a, const void *b)
{
	const struct ledger_freeze_event *x = a, *y = b;
	return x->seq < y->seq ? -1 : x->seq > y->seq;
}

static int apply(const struct ledger_rec *r, size_t off, void *arg)
{
	struct replay_ctx *x = arg;
	x->out->records++;
	if (r->kind != LEDGER_SEGMENT) {
		uint64_t shard = r->decision >> DECISION_ID_SHARD_SHIFT;
		uint64_t seq = r->decision & DECISION_SEQ_MASK;
		if (shard < BUDGET_MAX_SHARDS && seq >= x->out->next_decision[shard])
			x->out->next_decision[shard] = seq + 1;
	}
	switch (r->kind) {
	case LEDGER_RESERVE:
		note_reserve(x, r);
		break;
	case LEDGER_COMMIT:
	case LEDGER_EXPIRE:
		note_outcome(x, r);
		x->out->commits++;
		spend(x, r, r->usd);
		run_touch(x, r, r->usd);
		if (grant_index_note(&x->grants, r))
			x->error = -ENOMEM;
		break;
	case LEDGER_RELEASE:
		note_outcome(x, r);
		run_touch(x, r, 0);
		break;
	case LEDGER_GRANT_OPEN:
		run_touch(x, r, 0);
		if (grant_index_note(&x->grants, r))
			x->error = -ENOMEM;
		break;
	case LEDGER_GRANT_CLOSE:   /* the parent run spent what the grant did */
		run_touch(x, r, r->usd);
		grant_index_note(&x->grants, r);
		break;
	case LEDGER_FREEZE:
	case LEDGER_UNFREEZE:
		note_freeze(x, r);
		break;
	default:
		break;
	}
	return x->error;
}

/* Rewrites a segment with only its whole records (repair). */
static int rewrite_segment(int dir_fd, const struct ledger_segment *seg)
{
	char *buf;
	size_t len;
	int rc = ledger_read_file(dir_fd, seg->name, &buf, &len);
	if (rc)
		return rc;
	char tmp[LEDGER_SEGMENT_NAME_MAX + 8];
	snprintf(tmp, sizeof(tmp), "%s.repair", seg->name);
	int out = openat(dir_fd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
	rc = out < 0 ? -errno : 0;
	size_t off = 0;
	while (!rc && off < len) {
		struct ledger_rec r;
		size_t size;
		if (ledger_decode(buf + off, len - off, &r, &size) != LEDGER_OK) {
			off++;
			continue;
		}
		if (write(out, buf + off, size) != (ssize_t)size)
			rc = -EIO;
		off += size;
	}
	free(buf);
	if (out >= 0) {
		if (!rc && fsync(out))
			rc = -errno;
		close(out);
	}
	if (!rc && renameat(dir_fd, tmp, dir_fd, seg->name))
		rc = -errno;
	if (!rc)
		fsync(dir_fd);
	return rc;
}

static int truncate_tail(int dir_fd, const struct ledger_segment *seg, uint64_t at)
{
	int fd = openat(dir_fd, seg->name, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	int rc = ftruncate(fd, (off_t)at) || fsync(fd) ? -errno : 0;
	close(fd);
	return rc;
}

/* One segment: applied, and its damage dealt with. */
static int replay_segment(int dir_fd, const struct ledger_segment *seg, bool repair,
			  struct replay_ctx *x)
{
	struct ledger_scan scan;
	int rc = ledger_scan_file(dir_fd, seg, repair, apply, x, &scan);
	if (rc)
		return rc;
	x->out->segments++;
	if (seg->shard < BUDGET_MAX_SHARDS && seg->seq >= x->out->next_seq[seg->shard])
		x->out->next_seq[seg->shard] = seg->seq + 1;
	switch (scan.damage) {
	case LEDGER_CLEAN:
		return 0;
	case LEDGER_TORN_TAIL:
		log_warn("ledger: %s: torn tail at byte %llu (a write cut short): truncated %llu "
			 "bytes", seg->name, (unsigned long long)scan.bad_offset,
			 (unsigned long long)(scan.size - scan.good_end));
		x->out->truncated_bytes += scan.size - scan.good_end;
		return truncate_tail(dir_fd, seg, scan.good_end);
	case LEDGER_CORRUPT:
		if (!repair) {
			log_error("ledger: %s: corrupt at byte %llu (a damaged record followed by "
				  "whole ones). Start with --ledger-repair to cut the damaged bytes "
				  "out, or restore the file", seg->name,
				  (unsigned long long)scan.bad_offset);
			return -EBADMSG;
		}
		log_warn("ledger: %s: corrupt from byte %llu: repaired, %llu bytes dropped",
			 seg->name, (unsigned long long)scan.bad_offset,
			 (unsigned long long)(scan.size - scan.kept));
		x->out->repaired_bytes += scan.size - scan.kept;
		return rewrite_segment(dir_fd, seg);
	}
	return 0;
}

/* Opens again every kept run still inside its TTL, with what it spent. */
static void reopen_runs(struct replay_ctx *x, int64_t now_s)
{
	struct config *cfg = x->cfg;
	for (uint32_t i = 0; i < x->runs.n; i++) {
		struct run_seen *rs = &x->runs.v[i];
		int k = map_find(&x->keys, cfg, (struct ledger_text){ rs->key,
								      (uint16_t)strlen(rs->key) });
		if (k < 0 || (rs->last_ms / 1000 + cfg->keys[k].run.ttl_s <= now_s &&
			      rs->open_grants <= 0))
			continue;
		const struct cfg_key *key = &cfg->keys[k];
		struct run_terms terms = budget_run_terms(cfg, key, rs->limit);
		struct run_spec spec = { .key_id = key->id, .limit = terms.limit,
					 .slack = terms.slack, .mode = terms.mode,
					 .ttl_s = key->run.ttl_s, .key_runs = key->runs_opened };
		bool created;
		atomic_fetch_add(key->runs_opened, 1);
		struct run *r = runs_open(cfg->runs, rs->id, strlen(rs->id), &spec, &created);
		if (!created)
			atomic_fetch_sub(key->runs_opened, 1);
		if (!r || !created)
			continue;
		budget_restore(r->scope, rs->spent, &x->now);
		runs_begin(r, 0, rs->last_ms / 1000);
		runs_end(r, 0);
		x->out->runs_restored++;
	}
}

static void ctx_free(struct replay_ctx *x)
{
	free(x->keys.slot);
	free(x->users.slot);
	free(x->teams.slot);
	free(x->orgs.slot);
	free(x->runs.v);
	free(x->runs.slot);
	grant_index_free(&x->grants);
	if (x->orphans)
		for (uint32_t b = 0; b < ORPHAN_BUCKETS; b++)
			for (struct ledger_orphan *o = x->orphans[b], *next; o; o = next) {
				next = o->next;
				free(o);
			}
	free(x->orphans);
}

/* An expire under another team's grant is paid by the grantor's team, as a
 * commit would be (net/booking.c). */
static void chargeback_if_east_west(struct replay_ctx *x, const struct ledger_rec *expire)
{
	const struct grant_seen *g = grant_index_find(&x->grants, expire->f[LF_GRANT]);
	struct ledger_text team = expire->f[LF_TEAM];
	if (!g || !expire->usd || (strlen(g->t.grantor_team) == team.len &&
				   !memcmp(g->t.grantor_team, team.p, team.len)))
		return;
	struct ledger_rec r = *expire;
	r.kind = LEDGER_CHARGEBACK;
	r.f[LF_TEAM] = (struct ledger_text){ g->t.grantor_team, (uint16_t)strlen(g->t.grantor_team) };
	r.f[LF_ORG] = (struct ledger_text){ g->t.grantor_org, (uint16_t)strlen(g->t.grantor_org) };
	r.f[LF_PEER] = team;
	r.f[LF_USER] = (struct ledger_text){ 0 };
	r.input = r.output = r.cached = 0;
	pend(x, &r);
}

/* Orphan reservations: spent, and an expire booked for each. */
static void expire_orphans(struct replay_ctx *x)
{
	for (uint32_t b = 0; b < ORPHAN_BUCKETS; b++)
		for (struct ledger_orphan *o = x->orphans[b]; o; o = o->next) {
			struct ledger_rec r;
			size_t size;
			if (!o->len || ledger_decode(o->rec, o->len, &r, &size) != LEDGER_OK)
				continue;
			r.kind = LEDGER_EXPIRE;   /* at its reservation's time: its window */
			r.reserved = r.usd;
			r.f[LF_CODE] = (struct ledger_text){ "reservation_orphaned", 20 };
			spend(x, &r, r.usd);
			run_touch(x, &r, r.usd);
			if (grant_index_note(&x->grants, &r))
				x->error = -ENOMEM;
			pend(x, &r);
			chargeback_if_east_west(x, &r);
			x->out->expired++;
		}
}

/* A grant that cannot live on (expired, or its parent is gone): closed,
 * its spend charged to its parent run. */
static void close_grant_seen(struct replay_ctx *x, struct grant_seen *g, bool run_too)
{
	struct ledger_rec r;
	grant_seen_record(g, LEDGER_GRANT_CLOSE, x->now.now_s * 1000, &r);
	if (run_too)
		run_touch(x, &r, r.usd);
	pend(x, &r);
	g->open = false;
	g->closed = true;
	x->out->grants_closed++;
}

/* Opens again a grant still open: its parent holds its amount again. */
static void reopen_grant(struct replay_ctx *x, struct grant_seen *gs)
{
	struct config *cfg = x->cfg;
	struct run *parent = runs_find(cfg->runs, gs->t.parent_run, strlen(gs->t.parent_run));
	uint64_t owner = gs->t.decision >> DECISION_ID_SHARD_SHIFT;
	if (owner >= x->n_shards)
		owner = 0;
	struct grant *g = parent ? grants_alloc(cfg->grants) : NULL;
	uint32_t over;
	if (!g || budget_reserve(&parent->scope, 1, (uint32_t)owner, gs->t.amount, &x->now,
				 &over) >= 0) {
		grants_discard(g);
		close_grant_seen(x, gs, false);   /* its run is live or gone: charged below */
		if (parent)
			budget_restore(parent->scope, gs->spent, &x->now);
		return;
	}
	grant_seen_fill(gs, g, (uint32_t)owner);
	g->parent = parent;
	if (!grants_publish(cfg->grants, g)) {
		budget_release(&parent->scope, 1, (uint32_t)owner, gs->t.amount, &x->now);
		grants_discard(g);
		close_grant_seen(x, gs, false);
		budget_restore(parent->scope, gs->spent, &x->now);
		return;
	}
	budget_restore(g->scope, gs->spent, &x->now);
	runs_begin(parent, (uint32_t)owner, x->now.now_s);
	int k = map_find(&x->keys, cfg, (struct ledger_text){ gs->t.grantor_key,
							      (uint16_t)strlen(gs->t.grantor_key) });
	if (k >= 0) {
		g->grantor_count = cfg->keys[k].grants_opened;
		atomic_fetch_add(g->grantor_count, 1);
	}
	x->out->grants_restored++;
}

static void restore_grants(struct replay_ctx *x, bool expired_pass)
{
	for (struct grant_seen *g = x->grants.all; g; g = g->next_all) {
		if (!g->opened || g->closed)
			continue;
		/* expired, or its token hash unreadable (it could not be used) */
		if (expired_pass && (!g->open || g->t.expires_s <= x->now.now_s))
			close_grant_seen(x, g, true);
		else if (!expired_pass)
			reopen_grant(x, g);
	}
}

int ledger_replay(int dir_fd, struct config *cfg, uint32_t n_shards, int64_t now_s,
		  bool repair, struct ledger_replay *out)
{
	memset(out, 0, sizeof(*out));
	struct replay_ctx x = { .cfg = cfg, .out = out, .n_shards = n_shards };
	budget_clock_set(&x.now, now_s);
	x.orphans = calloc(ORPHAN_BUCKETS, sizeof(*x.orphans));
	int rc = x.orphans ? 0 : -ENOMEM;
	if (!rc)
		rc = map_build(&x.keys, cfg, cfg->n_keys, key_name) ||
		     map_build(&x.users, cfg, cfg->n_users, user_name) ||
		     map_build(&x.teams, cfg, cfg->n_teams, team_name) ||
		     map_build(&x.orgs, cfg, cfg->n_orgs, org_name) ? -ENOMEM : 0;
	struct ledger_segment *segs = NULL;
	size_t n = 0;
	if (!rc)
		rc = ledger_segments_list(dir_fd, &segs, &n);
	for (size_t i = 0; i < n && !rc; i++)
		rc = replay_segment(dir_fd, &segs[i], repair, &x);
	free(segs);
	if (!rc) {
		if (out->n_freezes)   /* qsort wants a non-null base even for none */
			qsort(out->freezes, out->n_freezes, sizeof(*out->freezes), freeze_order);
		expire_orphans(&x);
		restore_grants(&x, true);    /* before runs: their spend goes to the parent */
		reopen_runs(&x, now_s);
		restore_grants(&x, false);
		rc = x.error;
	}
	ctx_free(&x);
	return rc;
}

int ledger_replay_book_pending(struct ledger_replay *rp, struct ledger_writer *writers,
			       uint32_t n)
{
	for (size_t off = 0; n && off < rp->pending_len;) {
		struct ledger_rec r;
		size_t size;
		if (ledger_decode(rp->pending + off, rp->pending_len - off, &r, &size) != LEDGER_OK)
			return -EINVAL;
		uint64_t shard = r.decision >> DECISION_ID_SHARD_SHIFT;
		int rc = ledger_append(&writers[shard < n ? shard : 0], &r);
		if (rc)
			return rc;
		off += size;
	}
	return 0;
}

void ledger_replay_free_pending(struct ledger_replay *rp)
{
	free(rp->pending);
	rp->pending = NULL;
	rp->pending_len = rp->pending_cap = 0;
}

void ledger_replay_free(struct ledger_replay *rp)
{
	ledger_replay_free_pending(rp);
	free(rp->freezes);
	rp->freezes = NULL;
	rp->n_freezes = rp->cap_freezes = 0;
}
