/*
 * decide.c — authenticate, price and reserve before forwarding (SPEC §3–§4).
 *
 * With `keys` configured every agent call must present a key (Bearer or
 * x-api-key), stored only as its SHA-256, and belongs to a run (X-Run-Id,
 * bound to the key that opened it; issued when absent). The call's worst
 * case — input bounded from the body, output at effective_max_output_tokens
 * — is reserved on the run and on every budgeted scope of the key (key,
 * user, team, org) or on none (core/budget.c), and refused with a problem naming the scope that
 * could not cover it. Nothing here fails open: an unpriced model, a
 * missing cap or an unreadable max_tokens is a refusal, never a free call.
 *
 * Settling the call is net/settle.c's; what agents are told, net/budget_api.c's.
 */
#include "net/decide.h"

#include <mbedtls/sha256.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "core/freeze.h"
#include "core/budget.h"
#include "core/budget_book.h"
#include "core/config.h"
#include "core/decisions.h"
#include "core/grants.h"
#include "core/idempotency.h"
#include "core/log.h"
#include "core/pricing.h"
#include "core/runs.h"
#include "core/shard.h"
#include "core/tags.h"
#include "net/alternatives.h"
#include "net/booking.h"
#include "net/http1.h"
#include "net/stream.h"
#include "net/proxy.h"

/* The agent's key from Authorization: Bearer or x-api-key, or NULL. */
static const char *agent_secret(const struct http_head *h, uint32_t *len)
{
	const char *v = http1_field(h, "authorization", len);
	if (v && *len > 7 && !strncasecmp(v, "Bearer ", 7)) {
		*len -= 7;
		return v + 7;
	}
	return http1_field(h, "x-api-key", len);
}

/* The configured key whose SHA-256 the secret has, or NULL. The
 * connection remembers its last success: an exact byte comparison with the
 * secret that was hashed then, under the same config generation. */
static const struct cfg_key *authenticate(struct client *c, const struct config *cfg,
					  const char *secret, uint32_t len)
{
	if (c->auth_key && c->auth_generation == cfg->generation && c->auth_len == len &&
	    !memcmp(c->auth_secret, secret, len))
		return c->auth_key;
	unsigned char digest[32];
	if (mbedtls_sha256_ret((const unsigned char *)secret, len, digest, 0))
		return NULL;
	const struct cfg_key *key = config_find_key(cfg, digest);
	c->auth_key = NULL;
	if (key && len <= CLIENT_AUTH_CACHE) {
		memcpy(c->auth_secret, secret, len);
		c->auth_len = (uint8_t)len;
		c->auth_generation = cfg->generation;
		c->auth_key = key;
	}
	return key;
}

/* A JSON integer in [0, 1e9] from a top-level span; false if malformed. */
static bool read_count(const char *body, struct json_span sp, uint64_t *out)
{
	if (!sp.present)
		return true;
	/* a string span starts after its quote: "10" is not a number, and a
	 * provider that ignores it would not cap the output we reserved for */
	if (sp.len == 0 || sp.len > 10 || (sp.off > 0 && body[sp.off - 1] == '"'))
		return false;
	uint64_t v = 0;
	for (uint32_t i = 0; i < sp.len; i++) {
		char c = body[sp.off + i];
		if (c < '0' || c > '9')
			return false;
		v = v * 10 + (uint64_t)(c - '0');
	}
	if (v > 1000000000)
		return false;
	*out = v;
	return true;
}

static void add_scope(struct exchange *ex, const struct cfg_budget *b, const char *kind,
		      const char *name)
{
	if (!b->present || !b->scope)
		return;
	ex->scopes[ex->n_scopes] = b->scope;
	ex->scope_kind[ex->n_scopes] = kind;
	ex->scope_name[ex->n_scopes] = name;
	ex->scope_mode[ex->n_scopes] = b->mode;
	ex->scope_downgrade |= (uint8_t)(b->downgrade << ex->n_scopes);
	ex->n_scopes++;
}

/* Writes "run-" + 8 hex digits of prefix + 12 of n (by hand: per call). */
static uint8_t issue_run_id(char *out, uint32_t prefix, uint64_t n)
{
	static const char hex[] = "0123456789abcdef";
	memcpy(out, "run-", 4);
	for (int i = 0; i < 8; i++)
		out[4 + i] = hex[(prefix >> (28 - 4 * i)) & 15];
	for (int i = 0; i < 12; i++)
		out[12 + i] = hex[(n >> (44 - 4 * i)) & 15];
	out[24] = '\0';
	return 24;
}

/*
 * The run this call belongs to. With X-Run-Id: that run, opened on first
 * use with X-Budget-Run-Limit clamped to the key's run.max_limit (else
 * run.default_limit) and bound to this key; a key may open at most
 * run.max_live_runs of them (429). Without: a run is issued for this call
 * alone and its id returned; it is not kept, because runs are not yet
 * expired and reclaimed (TTL lands with the ledger) and an id issued per
 * call would fill the table. Answers itself and returns false on refusal.
 */
static bool open_run(struct exchange *ex)
{
	struct shard *s = ex->client->shard;
	const struct cfg_key *k = ex->key;
	const struct http_head *h = &ex->req.head;
	int64_t limit = k->run.default_limit;
	uint32_t llen;
	const char *want = http1_field(h, "x-budget-run-limit", &llen);
	if (want) {
		if (money_parse(want, llen, &limit)) {
			reply_problem(ex, 400, "invalid_request",
				      "X-Budget-Run-Limit: a USD amount exact to the micro-dollar");
			return false;
		}
		if (limit > k->run.max_limit)
			limit = k->run.max_limit;
	}
	struct run_terms terms = budget_run_terms(ex->cfg, k, limit);
	uint32_t len;
	const char *id = http1_field(h, "x-run-id", &len);
	if (!id) {
		struct run *r = &ex->own_run;
		r->id_len = issue_run_id(r->id, s->run_prefix, ++s->runs_issued << 8 | (uint64_t)s->id);
		r->limit = terms.limit;
		r->scope = budget_scope_init(ex->own_run_scope, terms.limit, 1);
		r->mode = terms.mode;
		r->use = NULL;      /* not in the table: nothing to expire */
		budget_set_limit(r->scope, terms.limit, terms.slack);
		budget_set_window(r->scope, WINDOW_RUN);
		ex->run = r;
		return true;
	}
	if (!runs_valid_id(id, len)) {
		reply_problem(ex, 400, "invalid_request",
			      "X-Run-Id: 1 to 64 characters of A-Z a-z 0-9 . _ : -");
		return false;
	}
	bool created;
	ex->run = runs_find(ex->cfg->runs, id, len);
	if (!ex->run) {
		if (atomic_fetch_add(k->runs_opened, 1) >= k->run.max_live_runs) {
			atomic_fetch_sub(k->runs_opened, 1);
			reply_problem(ex, 429, "too_many_runs", "this key has opened run.max_live_runs runs");
			return false;
		}
		struct run_spec spec = { .key_id = k->id, .limit = terms.limit,
					 .slack = terms.slack, .mode = terms.mode, .ttl_s = k->run.ttl_s,
					 .key_runs = k->runs_opened };
		ex->run = runs_open(ex->cfg->runs, id, len, &spec, &created);
		if (!created)
			atomic_fetch_sub(k->runs_opened, 1);   /* another shard opened it first */
		if (!ex->run) {
			log_error("run table full (%u live runs): refusing key %s's new run",
				  runs_live(ex->cfg->runs), k->id);
			reply_problem(ex, 503, "too_many_runs", "the run table is full");
			return false;
		}
	}
	if (strcmp(ex->run->key_id, k->id)) {
		/* not held (runs_begin): it may expire before this exchange ends */
		ex->run = NULL;
		reply_problem(ex, 403, "run_bound_to_other_key", "this run belongs to another key");
		return false;
	}
	/* held until the call is settled: a run in use never expires */
	runs_begin(ex->run, (uint32_t)s->id, s->clock.now_s);
	ex->run_held = true;
	return true;
}

bool decide_authenticate(struct exchange *ex)
{
	uint32_t len;
	const char *secret = agent_secret(&ex->req.head, &len);
	if (!secret || len == 0 || !(ex->key = authenticate(ex->client, ex->cfg, secret, len))) {
		reply_problem(ex, 401, "invalid_key", secret ? "unknown API key" :
			      "send the key as Authorization: Bearer or x-api-key");
		return false;
	}
	return true;
}

void decide_key_scopes(struct exchange *ex)
{
	const struct config *cfg = ex->cfg;
	const struct cfg_key *k = ex->key;
	add_scope(ex, &k->budget, "key", k->id);
	if (k->user >= 0)
		add_scope(ex, &cfg->users[k->user].budget, "user", cfg->users[k->user].name);
	const struct cfg_principal *team = &cfg->teams[k->team];
	add_scope(ex, &team->budget, "team", team->name);
	if (team->parent >= 0)
		add_scope(ex, &cfg->orgs[team->parent].budget, "org", cfg->orgs[team->parent].name);
}

bool decide_frozen(const struct exchange *ex, char *out, size_t cap)
{
	const struct freeze_table *ft = ex->client->shard->freeze;
	if (!freeze_any(ft) || !ex->key)
		return false;
	const struct config *cfg = ex->cfg;
	const struct cfg_key *k = ex->key;
	const struct cfg_principal *team = &cfg->teams[k->team];
	const char *names[FREEZE_KINDS] = {
		[FREEZE_RUN] = ex->run ? ex->run->id : NULL,
		[FREEZE_KEY] = k->id,
		[FREEZE_USER] = k->user >= 0 ? cfg->users[k->user].name : NULL,
		[FREEZE_TEAM] = team->name,
		[FREEZE_ORG] = team->parent >= 0 ? cfg->orgs[team->parent].name : NULL,
	};
	for (int i = 0; i < FREEZE_KINDS; i++) {
		if (names[i] && freeze_has(ft, (enum freeze_kind)i, names[i], strlen(names[i]))) {
			snprintf(out, cap, "%s:%s", freeze_kind_name((enum freeze_kind)i), names[i]);
			return true;
		}
	}
	return false;
}

static void collect_scopes(struct exchange *ex)
{
	ex->scopes[0] = ex->run->scope;
	ex->scope_kind[0] = "run";
	ex->scope_name[0] = ex->run->id;
	ex->scope_mode[0] = ex->run->mode;
	ex->n_scopes = 1;
	decide_key_scopes(ex);
}

/*
 * X-Budget-Grant-Token: the call spends a grant (SPEC §5) as well as its
 * own key's scopes. The token is looked up by its SHA-256 (tokens are not
 * kept); it must name an open grant made out to this key. Answers itself
 * and returns false on refusal.
 */
static bool use_grant(struct exchange *ex)
{
	uint32_t len;
	const char *token = http1_field(&ex->req.head, "x-budget-grant-token", &len);
	if (!token)
		return true;
	unsigned char digest[32];
	struct grant *g = NULL;
	if (len == GRANT_TOKEN_LEN &&
	    !mbedtls_sha256_ret((const unsigned char *)token, len, digest, 0))
		g = grants_find(ex->cfg->grants, digest);
	if (!g) {
		reply_problem(ex, 403, "unknown_grant", "no open grant has this token");
		return false;
	}
	if (strcmp(g->t.grantee_key, ex->key->id)) {
		reply_problem(ex, 403, "grant_not_for_this_key", "this grant was made to another key");
		return false;
	}
	uint32_t shard = (uint32_t)ex->client->shard->id;
	if (ex->client->shard->clock.now_s >= g->t.expires_s || !grants_begin(g, shard)) {
		reply_problem(ex, 403, "grant_closed", "this grant has expired or been closed");
		return false;
	}
	ex->grant = g;
	ex->scopes[ex->n_scopes] = g->scope;
	ex->scope_kind[ex->n_scopes] = "grant";
	ex->scope_name[ex->n_scopes] = g->t.id;
	ex->scope_mode[ex->n_scopes] = MODE_HARD_GATE;
	ex->n_scopes++;
	return true;
}

/* What a refusal needs to list alternatives. */
struct call_shape {
	const struct json_top *top;
	uint64_t client_cap;
	bool embeddings;
};

void decide_ceiling_code(const char *scope_kind, char *out, size_t cap)
{
	if (!strcmp(scope_kind, "grant"))
		snprintf(out, cap, "grant_exhausted");
	else
		snprintf(out, cap, "%s_ceiling_reached", scope_kind);
}

/* 402 naming the scope that could not cover the estimate, with the
 * alternatives that could serve the call. */
static void refuse_budget(struct exchange *ex, int scope, const struct call_shape *shape)
{
	struct budget_totals t;
	budget_totals(ex->scopes[scope], &ex->client->shard->clock, &t);
	char limit[32], committed[32], reserved[32], remaining[32], estimate[32];
	money_format(t.limit, limit, sizeof(limit));
	money_format(t.committed, committed, sizeof(committed));
	money_format(t.reserved, reserved, sizeof(reserved));
	money_format(t.limit - t.committed - t.reserved, remaining, sizeof(remaining));
	money_format(ex->estimate_usd, estimate, sizeof(estimate));
	struct alternative alts[ALT_MAX];
	int n = alternatives_find(ex, alternatives_needs(ex->body, ex->body_len, shape->top),
				  shape->client_cap, shape->embeddings, alts);
	char alt_json[2400];
	int64_t least;
	decide_tightest(ex, &least);
	alternatives_json(alts, n, least, alt_json, sizeof(alt_json));
	char code[32], detail[160], extra[3200];
	decide_ceiling_code(ex->scope_kind[scope], code, sizeof(code));
	snprintf(detail, sizeof(detail), "the call's worst case ($%s) does not fit the %s budget",
		 estimate, ex->scope_kind[scope]);
	snprintf(extra, sizeof(extra),
		 ",\"budget\":{\"scope\":\"%s:%s\",\"run_id\":\"%s\",\"limit_usd\":\"%s\","
		 "\"committed_usd\":\"%s\",\"reserved_usd\":\"%s\",\"remaining_usd\":\"%s\","
		 "\"estimate_usd\":\"%s\",\"effective_max_output_tokens\":%u},\"alternatives\":%s",
		 ex->scope_kind[scope], ex->scope_name[scope], ex->run->id, limit, committed, reserved,
		 remaining, estimate, ex->max_output_tokens, alt_json);
	ex->blocked_by = (uint8_t)(scope + 1);
	reply_problem_ext(ex, 402, code, detail, extra);
}

/* actuals_only scopes allow calls until what is committed reaches the
 * limit (their reservations never refuse). The index of the first that is
 * spent, or -1. Sums every shard's slot, so only these scopes pay it. */
static int actuals_spent(struct exchange *ex)
{
	for (int i = 0; i < ex->n_scopes; i++) {
		if (ex->scope_mode[i] != MODE_ACTUALS_ONLY)
			continue;
		struct budget_totals t;
		budget_totals(ex->scopes[i], &ex->client->shard->clock, &t);
		if (t.committed >= t.limit)
			return i;
	}
	return -1;
}

/* Reserves `amount` on every scope of the call, or refuses: the index of
 * the scope that could not take it, or -1 with the reservation made. */
static int reserve(struct exchange *ex, int64_t amount)
{
	struct shard *s = ex->client->shard;
	int refused = actuals_spent(ex);
	uint32_t over = 0;
	if (refused < 0)
		refused = budget_reserve(ex->scopes, ex->n_scopes, (uint32_t)s->id, amount,
					 &s->clock, &over);
	if (refused >= 0)
		return refused;
	ex->over = (uint8_t)over;
	ex->reserved_usd = amount;
	return -1;
}

/* The agent said X-Budget-Downgrade: allow, or the refusing scope's
 * budget says on_exceed: downgrade. */
static bool wants_downgrade(const struct exchange *ex, int refused)
{
	uint32_t len;
	const char *v = http1_field(&ex->req.head, "x-budget-downgrade", &len);
	if (v && len == 5 && !strncasecmp(v, "allow", 5))
		return true;
	return ex->scope_downgrade & (1u << refused);
}

/*
 * Switches the call to the first alternative, in configured order of
 * preference, whose worst case can be reserved. The upstream body then
 * names it (proxy.c) and the headers say what was asked and what is used.
 */
static bool downgrade(struct exchange *ex, const struct call_shape *shape)
{
	struct alternative alts[ALT_MAX];
	uint32_t needs = alternatives_needs(ex->body, ex->body_len, shape->top);
	int n = alternatives_find(ex, needs, shape->client_cap, shape->embeddings, alts);
	for (int i = 0; i < n; i++) {
		if (reserve(ex, alts[i].estimate_usd) >= 0)
			continue;
		ex->requested_model = ex->model;
		ex->model = alts[i].model;
		ex->provider = alts[i].model->provider;
		ex->estimate_usd = alts[i].estimate_usd;
		ex->max_output_tokens = alts[i].max_output_tokens;
		ex->clamped = !shape->embeddings && shape->client_cap > ex->max_output_tokens;
		return true;
	}
	return false;
}

/* X-Budget-Tags, checked and kept for the decision record. */
static bool read_tags(struct exchange *ex)
{
	uint32_t len;
	const char *v = http1_field(&ex->req.head, "x-budget-tags", &len);
	if (!v)
		return true;
	if (!tags_valid(v, len)) {
		reply_problem(ex, 400, "invalid_request",
			      "X-Budget-Tags: up to 16 k=v pairs, keys [a-z0-9_.-], values "
			      "[A-Za-z0-9_.:/@+-], 256 bytes in all");
		return false;
	}
	ex->tags = v;
	ex->tags_len = len;
	return true;
}

/* Answers a retry with the decision of the first call that used its
 * idempotency key (rec: that decision, NULL if no longer in memory). */
static void replay(struct exchange *ex, uint64_t first, const struct decision_rec *rec)
{
	ex->replayed = true;
	ex->decision_id = first;
	if (rec && rec->kind == DECISION_BLOCK) {
		ex->replay_kind = 1 + DECISION_BLOCK;
		reply_problem(ex, rec->status, rec->code,
			      "replayed: the first call with this idempotency key was refused");
		return;
	}
	if (!rec) {
		reply_problem(ex, 409, "idempotency_key_reused",
			      "the first call with this idempotency key has ended");
		return;
	}
	ex->replay_kind = (uint8_t)(1 + rec->kind);
	char actual[32], extra[200];
	money_format(rec->actual_usd, actual, sizeof(actual));
	snprintf(extra, sizeof(extra), ",\"first_call\":{\"status\":%u,\"actual_usd\":\"%s\"}",
		 rec->status, actual);
	reply_problem_ext(ex, 409, "idempotency_key_reused",
			  "the first call with this idempotency key was forwarded and has ended: "
			  "see its decision", extra);
}

/* A first call that cost nothing and did not succeed (no reply: released;
 * or the provider refused it) may be tried again for real. */
static bool retryable(const struct decision_rec *rec)
{
	return rec->outcome == OUTCOME_RELEASED ||
	       (rec->outcome == OUTCOME_COMMITTED && rec->actual_usd == 0 && rec->status >= 400);
}

/*
 * X-Budget-Idempotency-Key: the first call with a key (per agent key)
 * claims it; a retry while it runs is refused, and one after it ended gets
 * its decision back, except that a call that was charged nothing and did
 * not succeed may be retried for real. Never two reservations.
 */
static bool check_idempotency(struct exchange *ex)
{
	uint32_t len;
	const char *v = http1_field(&ex->req.head, "x-budget-idempotency-key", &len);
	if (!v)
		return true;
	if (!idem_valid_key(v, len)) {
		reply_problem(ex, 400, "invalid_request",
			      "X-Budget-Idempotency-Key: 1 to 128 visible ASCII characters");
		return false;
	}
	struct shard *s = ex->client->shard;
	const struct config *cfg = ex->cfg;
	uint64_t hash = idem_hash(ex->key->id, v, len), first = 0;
	uint32_t slot = 0;
	struct decision_rec rec;
	/* A released first call may be taken over by one retry; the others
	 * look again and find that retry in flight. */
	for (int tries = 0;; tries++) {
		switch (idem_claim(cfg->idem, hash, ex->decision_id, s->clock.now_s, &slot, &first)) {
		case IDEM_NEW:
			break;
		case IDEM_FULL:
			log_error("idempotency table full: refusing key %s's call", ex->key->id);
			reply_problem(ex, 503, "idempotency_unavailable",
				      "no room to remember this idempotency key; retry later");
			return false;
		case IDEM_IN_FLIGHT:
			ex->replayed = true;
			ex->decision_id = first;
			reply_problem(ex, 409, "idempotency_in_flight",
				      "the first call with this idempotency key is still running");
			return false;
		case IDEM_DONE:
			if (!decisions_get(cfg->decisions, first, &rec)) {
				replay(ex, first, NULL);
				return false;
			}
			if (!retryable(&rec)) {
				replay(ex, first, &rec);
				return false;
			}
			if (!idem_retake(cfg->idem, slot, first, ex->decision_id, s->clock.now_s)) {
				if (tries < 3)
					continue;
				reply_problem(ex, 409, "idempotency_in_flight",
					      "another retry with this idempotency key is running");
				return false;
			}
			break;
		}
		break;
	}
	ex->idem_slot = slot;
	ex->idem_claimed = true;
	return true;
}

bool decide_request(struct exchange *ex, const struct json_top *top, bool embeddings)
{
	const struct config *cfg = ex->cfg;
	if (!cfg->n_keys)
		return true;     /* relay-only configuration (warned at start) */

	if (!decide_authenticate(ex) || !read_tags(ex))
		return false;
	if (!booking_ready(ex)) {
		reply_problem(ex, 503, "ledger_unavailable",
			      "the ledger cannot record calls: every budgeted call is refused");
		return false;
	}
	if (!check_idempotency(ex))
		return false;
	if (!config_key_allows(ex->key, ex->model)) {
		reply_problem(ex, 403, "model_not_allowed", "this key may not use this model");
		return false;
	}
	if (!pricing_known(ex->model)) {
		reply_problem(ex, 402, "unknown_price",
			      "the model has no price: calls to it are refused, not free");
		return false;
	}
	uint64_t client_cap = 0;
	if (!read_count(ex->body, top->max_tokens, &client_cap) ||
	    !read_count(ex->body, top->max_completion_tokens, &client_cap)) {
		reply_problem(ex, 400, "invalid_request", "max_tokens must be an integer in [0, 1e9]");
		return false;
	}
	/* a stream is held to the key's max_stream_tokens too */
	bool stream = !embeddings && top->stream.present && top->stream.len == 4 &&
		      !memcmp(ex->body + top->stream.off, "true", 4);
	if (!embeddings) {
		ex->max_output_tokens = pricing_effective_max_output(
			client_cap, stream ? ex->key->run.max_stream_tokens : 0,
			ex->model->max_output_tokens);
		/* an OpenAI stream reports usage only if asked: ask (proxy.c) */
		ex->inject_usage = stream && ex->model->provider->format == FORMAT_OPENAI &&
				   !top->stream_options.present;
		if (!ex->max_output_tokens) {
			reply_problem(ex, 400, "missing_max_tokens",
				      "hard_gate needs max_tokens: the model has no cap either");
			return false;
		}
	}
	struct estimate e;
	pricing_estimate(ex->model, ex->body_len, ex->max_output_tokens, &e);
	ex->estimate_usd = e.usd;
	ex->clamped = !embeddings && client_cap > ex->max_output_tokens;
	if (!open_run(ex))
		return false;
	collect_scopes(ex);
	char frozen[FREEZE_ID_MAX + 8];
	if (decide_frozen(ex, frozen, sizeof(frozen))) {
		char detail[FREEZE_ID_MAX + 64], extra[FREEZE_ID_MAX + 64];
		snprintf(detail, sizeof(detail), "%s is frozen by an operator", frozen);
		snprintf(extra, sizeof(extra), ",\"budget\":{\"scope\":\"%s\"}", frozen);
		ex->client->shard->stats.refused_frozen++;
		reply_problem_ext(ex, 423, "frozen", detail, extra);
		return false;
	}
	if (!use_grant(ex))
		return false;
	/* A stream under run.stream_lease starts with its input and one lease
	 * step of output reserved, and extends as it goes (net/stream.c), so
	 * parallel streams do not lock up the budget their worst cases would. */
	int64_t first = e.usd;
	if (stream && ex->key->run.stream_lease) {
		struct estimate step;
		pricing_estimate(ex->model, ex->body_len,
				 MIN(ex->max_output_tokens, STREAM_LEASE_TOKENS), &step);
		first = step.usd;
		ex->stream_lease = true;
	}
	int refused = reserve(ex, first);
	if (refused >= 0) {
		struct call_shape shape = { top, client_cap, embeddings };
		if (!wants_downgrade(ex, refused) || !downgrade(ex, &shape)) {
			refuse_budget(ex, refused, &shape);
			return false;
		}
	}
	ex->allowed = true;
	if (!booking_reserve(ex)) {
		reply_problem(ex, 503, "ledger_unavailable",
			      "the ledger cannot record this call: refused");
		return false;
	}
	ex->deadline_ms = ex->client->shard->now_ms + ex->cfg->limits.reservation_ttl_ms;
	ex->resp.on_body = decide_reply_body;
	return true;
}
