/*
 * booking.c — ledger records of budgeted calls (booking.h).
 */
#include "net/booking.h"

#include <string.h>

#include "core/config.h"
#include "core/decisions.h"
#include "core/freeze.h"
#include "core/grants.h"
#include "core/log.h"
#include "core/pricing.h"
#include "core/runs.h"
#include "core/shard.h"
#include "ledger/writer.h"
#include "net/client.h"
#include "net/decide.h"
#include "net/stream.h"

static struct ledger_text text(const char *s)
{
	size_t n = s ? strlen(s) : 0;   /* config names and our own codes: short */
	return (struct ledger_text){ s, (uint16_t)MIN(n, LEDGER_MAX_FIELD) };
}

/* The record of ex with everything but its kind and amounts. */
static void fill(const struct exchange *ex, struct ledger_rec *r, uint8_t kind)
{
	const struct shard *s = ex->client->shard;
	const struct config *cfg = ex->cfg;
	const struct cfg_key *k = ex->key;
	memset(r, 0, sizeof(*r));
	r->kind = kind;
	r->time_ms = s->wall_ms;
	r->decision = ex->decision_id;
	r->status = ex->status;
	r->mode = ex->mode_in_force;
	r->f[LF_KEY] = text(k->id);
	if (k->user >= 0)
		r->f[LF_USER] = text(cfg->users[k->user].name);
	const struct cfg_principal *team = &cfg->teams[k->team];
	r->f[LF_TEAM] = text(team->name);
	if (team->parent >= 0)
		r->f[LF_ORG] = text(cfg->orgs[team->parent].name);
	if (ex->run) {
		r->f[LF_RUN] = (struct ledger_text){ ex->run->id, ex->run->id_len };
		r->run_limit = ex->run->limit;
		if (ex->run->use)
			r->flags |= LEDGER_F_RUN_KEPT;
	}
	if (ex->model) {
		r->f[LF_MODEL] = (struct ledger_text){ ex->model->name, (uint16_t)ex->model->name_len };
		r->f[LF_PROVIDER] = text(ex->model->provider->name);
	}
	if (ex->requested_model) {
		r->f[LF_REQUESTED] = (struct ledger_text){ ex->requested_model->name,
							   (uint16_t)ex->requested_model->name_len };
		r->flags |= LEDGER_F_DOWNGRADED;
	}
	r->f[LF_PRICES] = text(cfg->prices_version);
	if (ex->grant)
		r->f[LF_GRANT] = text(ex->grant->t.id);
	if (ex->tags)
		r->f[LF_TAGS] = (struct ledger_text){ ex->tags, (uint16_t)ex->tags_len };
	if (ex->problem_code[0])
		r->f[LF_CODE] = text(ex->problem_code);
	if (ex->stream) {
		r->flags |= LEDGER_F_STREAM;
		const char *cut = stream_cut_code(ex);
		if (cut) {
			r->flags |= LEDGER_F_CUT;
			r->f[LF_CODE] = text(cut);
		}
	}
}

static struct ledger_writer *writer(const struct exchange *ex)
{
	return ex->client->shard->ledger;
}

bool booking_ready(const struct exchange *ex)
{
	const struct ledger_writer *w = writer(ex);
	return !w || !w->error;
}

bool booking_reserve(struct exchange *ex)
{
	struct ledger_writer *w = writer(ex);
	if (!w)
		return true;
	struct ledger_rec r;
	fill(ex, &r, LEDGER_RESERVE);
	int in_force = decide_scope_in_force(ex);   /* the headers' mode is set later */
	r.mode = in_force >= 0 ? ex->scope_mode[in_force] : ex->key->mode;
	r.usd = ex->reserved_usd;
	r.reserved = ex->reserved_usd;
	r.input = pricing_input_bound(ex->body_len);
	r.output = ex->max_output_tokens;
	int rc = ledger_append(w, &r);
	if (rc)
		log_error("ledger: cannot book the reservation of decision %llx: %s",
			  (unsigned long long)ex->decision_id, strerror(-rc));
	return rc == 0;
}

/*
 * East-west (SPEC §5): a grant spent by another team's key is paid for by
 * the grantor's team. `team` is the debited team, `peer_team` the credited
 * one, usd what the call cost; the rest is the commit's.
 */
static void book_chargeback(struct exchange *ex, struct ledger_writer *w,
			    const struct ledger_rec *commit)
{
	const struct grant *g = ex->grant;
	const struct cfg_principal *team = &ex->cfg->teams[ex->key->team];
	if (!strcmp(g->t.grantor_team, team->name))
		return;
	struct ledger_rec r = *commit;
	r.kind = LEDGER_CHARGEBACK;
	r.f[LF_TEAM] = text(g->t.grantor_team);
	r.f[LF_ORG] = text(g->t.grantor_org);
	r.f[LF_PEER] = text(team->name);
	r.f[LF_USER] = (struct ledger_text){ 0 };
	r.input = r.output = r.cached = 0;   /* a transfer: the tokens are the commit's */
	int rc = ledger_append(w, &r);
	if (rc) {
		log_error("ledger: cannot book the chargeback of decision %llx: %s",
			  (unsigned long long)ex->decision_id, strerror(-rc));
		ex->ledger_failed = true;
	}
}

void booking_settle(struct exchange *ex)
{
	struct ledger_writer *w = writer(ex);
	if (!w)
		return;
	struct ledger_rec r;
	uint8_t kind = !ex->allowed ? LEDGER_REFUSE :
		       ex->outcome == OUTCOME_COMMITTED ? LEDGER_COMMIT : LEDGER_RELEASE;
	fill(ex, &r, kind);
	r.reserved = ex->reserved_usd;
	if (kind == LEDGER_COMMIT) {
		r.usd = ex->actual_usd;
		r.input = ex->input_tokens;
		r.output = ex->output_tokens;
		r.cached = ex->cached_tokens;
	} else if (kind == LEDGER_REFUSE) {
		r.usd = ex->estimate_usd;   /* what was asked for */
	}
	int rc = ledger_append(w, &r);
	if (rc) {
		log_error("ledger: cannot book the %s of decision %llx: %s",
			  ledger_kind_name(kind), (unsigned long long)ex->decision_id,
			  strerror(-rc));
		ex->ledger_failed = true;
		return;
	}
	ex->ledger_hold = kind == LEDGER_COMMIT;
	if (kind == LEDGER_COMMIT && ex->grant && ex->actual_usd)
		book_chargeback(ex, w, &r);
}

bool booking_grant(struct shard *s, const struct config *cfg, const struct grant *g,
		   uint8_t kind, int64_t usd)
{
	if (!s->ledger)
		return true;
	struct ledger_rec r = {
		.kind = kind,
		.time_ms = s->wall_ms,
		.decision = g->t.decision,
		.usd = usd,
		.reserved = kind == LEDGER_GRANT_OPEN ? g->t.expires_s * 1000 : g->t.amount,
		.run_limit = g->parent->limit,
		.flags = LEDGER_F_RUN_KEPT,
	};
	r.f[LF_RUN] = text(g->t.parent_run);
	r.f[LF_KEY] = text(g->t.grantor_key);
	r.f[LF_TEAM] = text(g->t.grantor_team);
	r.f[LF_ORG] = text(g->t.grantor_org);
	r.f[LF_PEER] = text(g->t.grantee_team);
	r.f[LF_GRANT] = text(g->t.id);
	r.f[LF_GRANTEE] = text(g->t.grantee_key);
	r.f[LF_PRICES] = text(cfg->prices_version);
	char hash[65];
	if (kind == LEDGER_GRANT_OPEN) {   /* replay finds the grant by it again */
		static const char hex[] = "0123456789abcdef";
		for (int i = 0; i < 32; i++) {
			hash[2 * i] = hex[g->t.token_sha256[i] >> 4];
			hash[2 * i + 1] = hex[g->t.token_sha256[i] & 15];
		}
		r.f[LF_CODE] = (struct ledger_text){ hash, 64 };
	}
	int rc = ledger_append(s->ledger, &r);
	if (rc)
		log_error("ledger: cannot book %s of grant %s: %s", ledger_kind_name(kind), g->t.id,
			  strerror(-rc));
	return rc == 0;
}

_Static_assert(LF_KEY - LF_RUN == FREEZE_KEY && LF_USER - LF_RUN == FREEZE_USER &&
	       LF_TEAM - LF_RUN == FREEZE_TEAM && LF_ORG - LF_RUN == FREEZE_ORG,
	       "a freeze record names its scope in the field of its kind");

bool booking_freeze(struct exchange *ex, enum freeze_kind kind, const char *id,
		    const char *reason, bool frozen, uint64_t seq)
{
	struct shard *s = ex->client->shard;
	if (!s->ledger)
		return false;     /* nothing keeps it past a restart */
	struct ledger_rec r = { .kind = frozen ? LEDGER_FREEZE : LEDGER_UNFREEZE,
				.time_ms = s->wall_ms, .reserved = (int64_t)seq };
	r.f[LF_RUN + kind] = text(id);
	r.f[LF_CODE] = text(reason);
	r.f[LF_PRICES] = text(ex->cfg->prices_version);
	int rc = ledger_append(s->ledger, &r);
	if (rc) {
		log_error("ledger: cannot book the %s of %s:%s: %s", frozen ? "freeze" : "unfreeze",
			  freeze_kind_name(kind), id, strerror(-rc));
		return false;
	}
	ex->ledger_hold = true;    /* the reply ends once it is written */
	return true;
}

bool booking_outcome(struct exchange *ex, const struct run *run, const char *outcome)
{
	struct ledger_writer *w = writer(ex);
	struct ledger_rec r;
	fill(ex, &r, LEDGER_OUTCOME);
	r.f[LF_RUN] = (struct ledger_text){ run->id, run->id_len };
	r.run_limit = run->limit;
	r.flags = LEDGER_F_RUN_KEPT;
	r.f[LF_CODE] = text(outcome);
	r.f[LF_MODEL] = r.f[LF_PROVIDER] = (struct ledger_text){ 0 };
	int rc = ledger_append(w, &r);
	if (rc) {
		log_error("ledger: cannot book an outcome of run %s: %s", run->id, strerror(-rc));
		return false;
	}
	ex->ledger_hold = true;
	return true;
}

static void reply_end_written(struct ledger_wait *wt, int err)
{
	struct exchange *ex = container_of(wt, struct exchange, ledger_wait);
	struct client *c = ex->client;
	if (err) {
		client_abort(c);   /* not on disk: the agent must not see it end */
		return;
	}
	client_send_resume(c);
}

bool booking_hold_reply_end(struct exchange *ex)
{
	/* a relayed reply is settled (and booked) as its end goes out; a
	 * local one may have booked something already (a grant, an outcome) */
	if (ex->allowed && ex->state != EX_LOCAL && (ex->resp_complete || stream_done(ex)))
		decide_settle(ex);
	if (ex->ledger_failed) {
		client_abort(ex->client);
		return true;
	}
	if (!ex->ledger_hold)
		return false;
	ex->ledger_hold = false;
	ex->ledger_wait.done = reply_end_written;
	ledger_wait_add(writer(ex), &ex->ledger_wait);
	return true;
}
