/*
 * budget_api.c — what agents learn of their budgets: the X-Budget-*
 * headers on every reply, GET /v1/budget, GET /v1/budget/runs/{id} and
 * GET /budget/decisions/{id} (SPEC §3).
 */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "core/budget.h"
#include "core/config.h"
#include "core/decisions.h"
#include "core/runs.h"
#include "core/shard.h"
#include "net/decide.h"
#include "net/http1.h"
#include "net/proxy.h"

/* Appends to a bounded buffer; `ok` turns false on overflow. */
struct hdr_out {
	char *p;
	size_t len, cap;
	bool ok;
};

static void put(struct hdr_out *o, const char *s, size_t n)
{
	if (!o->ok || o->len + n > o->cap) {
		o->ok = false;
		return;
	}
	memcpy(o->p + o->len, s, n);
	o->len += n;
}

static void put_str(struct hdr_out *o, const char *s)
{
	put(o, s, strlen(s));
}

/* prefix-<hex>, at least 12 digits (as %012llx): the shard id sits in
 * bits 48 and up, so ids of different shards never collide. */
static void put_id(struct hdr_out *o, char prefix, uint64_t id)
{
	static const char hex[] = "0123456789abcdef";
	char b[18];
	int n = 12;
	while (n < 16 && id >> (4 * n))
		n++;
	b[0] = prefix;
	b[1] = '-';
	for (int i = 0; i < n; i++)
		b[1 + n - i] = hex[(id >> (4 * i)) & 15];
	put(o, b, (size_t)n + 2);
}

static const char *const kind_names[] = { "allow", "advisory_warn", "downgrade", "block" };

int decide_kind(const struct exchange *ex)
{
	if (ex->replay_kind)
		return ex->replay_kind - 1;
	if (!ex->allowed)   /* a reply made before any budget decision (the
			     * model list) that succeeded is an allow too */
		return ex->status < 400 ? DECISION_ALLOW : DECISION_BLOCK;
	return ex->requested_model ? DECISION_DOWNGRADE : ex->over ? DECISION_WARN : DECISION_ALLOW;
}

int decide_tightest(const struct exchange *ex, int64_t *least)
{
	int at = -1;
	*least = INT64_MAX;
	for (int i = 0; i < ex->n_scopes; i++) {
		struct budget_totals t;
		budget_totals(ex->scopes[i], &ex->client->shard->clock, &t);
		if (t.limit - t.committed - t.reserved < *least) {
			*least = t.limit - t.committed - t.reserved;
			at = i;
		}
	}
	return at;
}

int decide_scope_in_force(const struct exchange *ex)
{
	if (ex->blocked_by)
		return ex->blocked_by - 1;
	if (ex->over)
		return __builtin_ctz(ex->over);
	int64_t least;
	return decide_tightest(ex, &least);
}

size_t decide_headers(struct exchange *ex, char *out, size_t cap)
{
	const struct config *cfg = ex->cfg;
	if (!cfg->n_keys || ex->client->admin)
		return 0;     /* relay only, or the operator's API: no budget state */
	struct hdr_out o = { out, 0, cap, true };
	if (ex->run) {
		put_str(&o, "X-Run-Id: ");
		put(&o, ex->run->id, ex->run->id_len);
		put_str(&o, "\r\n");
	}
	put_str(&o, "X-Budget-Decision: ");
	put_str(&o, kind_names[decide_kind(ex)]);
	put_str(&o, "\r\nX-Budget-Decision-Id: ");
	put_id(&o, 'd', ex->decision_id);
	if (ex->allowed) {
		put_str(&o, "\r\nX-Budget-Reservation-Id: ");
		put_id(&o, 'r', ex->decision_id);
	}
	/* the tightest scope's mode is in force, unless a scope refused the
	 * call or let it past its limit */
	int64_t least;
	int tight = decide_tightest(ex, &least);
	int in_force = ex->blocked_by || ex->over ? decide_scope_in_force(ex) : tight;
	ex->mode_in_force = (uint8_t)(in_force >= 0 ? ex->scope_mode[in_force] :
				      ex->key ? ex->key->mode : MODE_HARD_GATE);
	put_str(&o, "\r\nX-Budget-Enforcement-Mode: ");
	put_str(&o, config_mode_name(ex->mode_in_force));
	put_str(&o, "\r\nX-Budget-Price-Table-Version: ");
	put_str(&o, cfg->prices_version);
	put_str(&o, "\r\n");
	if (ex->n_scopes) {
		char remaining[32];
		put_str(&o, "X-Budget-Remaining-USD: ");
		put(&o, remaining, money_format(least, remaining, sizeof(remaining)));
		put_str(&o, "\r\n");
	}
	if (ex->requested_model) {
		put_str(&o, "X-Budget-Requested-Model: ");
		put_str(&o, ex->requested_model->name);
		put_str(&o, "\r\nX-Budget-Selected-Model: ");
		put_str(&o, ex->model->name);
		put_str(&o, "\r\n");
	}
	if (ex->clamped && ex->allowed) {
		char n[16];
		put_str(&o, "X-Budget-Output-Clamped: ");
		put(&o, n, (size_t)snprintf(n, sizeof(n), "%u", ex->max_output_tokens));
		put_str(&o, "\r\n");
	}
	if (ex->blocked_by || ex->over) {
		put_str(&o, "X-Budget-Blocking-Scope: ");
		put_str(&o, ex->scope_kind[in_force]);
		put_str(&o, ":");
		put_str(&o, ex->scope_name[in_force]);
		put_str(&o, "\r\n");
	}
	return o.ok ? o.len : 0;
}

/* One scope of ex as a JSON object. */
static size_t scope_json(const struct exchange *ex, int i, char *b, size_t cap)
{
	struct budget_totals t;
	budget_totals(ex->scopes[i], &ex->client->shard->clock, &t);
	char limit[32], committed[32], reserved[32], remaining[32];
	money_format(t.limit, limit, sizeof(limit));
	money_format(t.committed, committed, sizeof(committed));
	money_format(t.reserved, reserved, sizeof(reserved));
	money_format(t.limit - t.committed - t.reserved, remaining, sizeof(remaining));
	int n = snprintf(b, cap,
			 "{\"scope\":\"%s:%s\",\"window\":\"%s\",\"mode\":\"%s\","
			 "\"limit_usd\":\"%s\",\"committed_usd\":\"%s\",\"reserved_usd\":\"%s\","
			 "\"remaining_usd\":\"%s\"}",
			 ex->scope_kind[i], ex->scope_name[i],
			 config_window_name(ex->scopes[i]->window),
			 config_mode_name(ex->scope_mode[i]), limit, committed, reserved, remaining);
	return n > 0 && (size_t)n < cap ? (size_t)n : 0;
}

static void use_run(struct exchange *ex, struct run *run)
{
	ex->scopes[0] = run->scope;
	ex->scope_kind[0] = "run";
	ex->scope_name[0] = run->id;
	ex->scope_mode[0] = run->mode;
	ex->n_scopes = 1;
}

/* Answers with every scope in ex; `run` names the run asked about. */
static void reply_scopes(struct exchange *ex, const struct run *run)
{
	/* Written into the unused request body area, like the model list. */
	char *b = ex->inline_body;
	size_t cap = EX_INLINE_BODY, n = 0;
	n += (size_t)snprintf(b, cap, "{\"key\":\"%s\",", ex->key->id);
	if (run)
		n += (size_t)snprintf(b + n, cap - n, "\"run_id\":\"%s\",", run->id);
	n += (size_t)snprintf(b + n, cap - n, "\"scopes\":[");
	for (int i = 0; i < ex->n_scopes && n + 400 < cap; i++) {
		if (i)
			b[n++] = ',';
		n += scope_json(ex, i, b + n, cap - n);
	}
	n += (size_t)snprintf(b + n, cap - n, "],\"prices_version\":\"%s\"}",
			      ex->cfg->prices_version);
	reply_json(ex, 200, b, n);
}

/* Budgets are configured and the caller has a key; answers otherwise. */
static bool caller_known(struct exchange *ex)
{
	if (!ex->cfg->n_keys) {
		reply_problem(ex, 404, "not_found", "no budgets are configured");
		return false;
	}
	return decide_authenticate(ex);
}

void decide_budget_state(struct exchange *ex)
{
	if (!caller_known(ex))
		return;
	uint32_t len;
	const char *id = http1_field(&ex->req.head, "x-run-id", &len);
	struct run *run = id && runs_valid_id(id, len) ? runs_find(ex->cfg->runs, id, len) : NULL;
	if (run && !strcmp(run->key_id, ex->key->id))
		use_run(ex, run);
	else
		run = NULL;
	decide_key_scopes(ex);
	reply_scopes(ex, run);
}

void decide_run_state(struct exchange *ex, const char *id, size_t len)
{
	if (!caller_known(ex))
		return;
	struct run *run = runs_valid_id(id, len) ? runs_find(ex->cfg->runs, id, len) : NULL;
	if (!run) {
		reply_problem(ex, 404, "unknown_run",
			      "no such run (a run issued for a single call is not kept)");
		return;
	}
	if (strcmp(run->key_id, ex->key->id)) {
		reply_problem(ex, 403, "run_bound_to_other_key", "this run belongs to another key");
		return;
	}
	use_run(ex, run);
	decide_key_scopes(ex);
	reply_scopes(ex, run);
}

/* "d-" and 12 to 16 hex digits, as put_id() writes them. */
static bool parse_decision_id(const char *s, size_t len, uint64_t *id)
{
	if (len < 14 || len > 18 || s[0] != 'd' || s[1] != '-')
		return false;
	uint64_t v = 0;
	for (size_t i = 2; i < len; i++) {
		char c = s[i];
		int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
		if (d < 0)
			return false;
		v = v << 4 | (uint64_t)d;
	}
	*id = v;
	return true;
}

void decide_decision_state(struct exchange *ex, const char *id, size_t len)
{
	if (!caller_known(ex))
		return;
	static const char *const outcomes[] = { "refused", "committed", "released" };
	uint64_t want;
	struct decision_rec r;
	/* Another key's decision is as unknown as one never made. */
	if (!parse_decision_id(id, len, &want) || !decisions_get(ex->cfg->decisions, want, &r) ||
	    strcmp(r.key_id, ex->key->id)) {
		reply_problem(ex, 404, "unknown_decision",
			      "no such decision among this key's recent ones");
		return;
	}
	char estimate[32], reserved[32], actual[32], when[32];
	money_format(r.estimate_usd, estimate, sizeof(estimate));
	money_format(r.reserved_usd, reserved, sizeof(reserved));
	money_format(r.actual_usd, actual, sizeof(actual));
	struct tm tm;
	time_t t = (time_t)r.time_s;
	strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", gmtime_r(&t, &tm));
	char *b = ex->inline_body;
	int n = snprintf(b, EX_INLINE_BODY,
		"{\"decision_id\":\"d-%012llx\",\"time\":\"%s\",\"decision\":\"%s\",\"status\":%u,"
		"\"code\":\"%s\",\"enforcement_mode\":\"%s\",\"key\":\"%s\",\"run_id\":\"%s\","
		"\"model\":\"%s\",\"selected_model\":\"%s\",\"scope\":\"%s\","
		"\"estimate_usd\":\"%s\",\"reserved_usd\":\"%s\",\"actual_usd\":\"%s\","
		"\"outcome\":\"%s\",\"tags\":\"%s\",\"prices_version\":\"%s\"}",
		(unsigned long long)r.id, when, kind_names[r.kind & 3], r.status, r.code,
		config_mode_name(r.mode), r.key_id, r.run_id, r.model, r.selected_model, r.scope,
		estimate, reserved, actual, outcomes[r.outcome % 3], r.tags,
		ex->cfg->prices_version);
	reply_json(ex, 200, b, (size_t)n);
}
