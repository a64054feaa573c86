/*
 * admin_api.c — the admin listener (SPEC §8): the operator's side.
 *
 *   GET  /metrics          Prometheus text: traffic, refusals, and the
 *                          stream meter's counts against the providers'
 *                          own (the drift of SPEC §5)
 *   POST /admin/freeze     {"scope","id","reason"}: the kill switch (§6)
 *   POST /admin/unfreeze   {"scope","id"}
 *   GET  /admin/freezes    what is frozen now
 *
 * Every request carries "Authorization: Bearer <token>" with the token
 * from admin.token_env (compared in constant time). A freeze takes effect
 * on the next call of every shard (the table is shared) and cuts the
 * streams already running: every shard is told through its mailbox and
 * sweeps its own. Freezes and unfreezes are booked in the ledger, which
 * restores them at start.
 */
#include "net/admin_api.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "core/config.h"
#include "core/freeze.h"
#include "core/json_scan.h"
#include "core/log.h"
#include "core/runs.h"
#include "core/shard.h"
#include "net/booking.h"
#include "net/http1.h"
#include "net/proxy.h"

static bool authorized(struct exchange *ex)
{
	const char *want = ex->cfg->admin_token;
	uint32_t len = 0;
	const char *got = http1_field(&ex->req.head, "authorization", &len);
	size_t want_len = want ? strlen(want) : 0;
	if (!want || !got || len != 7 + want_len || strncasecmp(got, "Bearer ", 7)) {
		reply_problem(ex, 401, "unauthorized", "the admin API needs its bearer token");
		return false;
	}
	unsigned char diff = 0;
	for (size_t i = 0; i < want_len; i++)
		diff |= (unsigned char)(got[7 + i] ^ want[i]);
	if (diff) {
		reply_problem(ex, 401, "unauthorized", "the admin API needs its bearer token");
		return false;
	}
	return true;
}

/* ---- GET /metrics ---- */

struct totals {
	struct shard_stats st;
	uint64_t open_connections;
};

static void sum_shards(const struct shard *s, struct totals *t)
{
	memset(t, 0, sizeof(*t));
	/* other shards' counters, read as they are: a scrape needs no more */
	for (int i = 0; i < s->n_all; i++) {
		const struct shard_stats *o = &s->all[i].stats;
		t->st.accepted += o->accepted;
		t->st.requests += o->requests;
		t->st.upstream_connects += o->upstream_connects;
		t->st.upstream_reuses += o->upstream_reuses;
		t->st.errors_4xx += o->errors_4xx;
		t->st.errors_5xx += o->errors_5xx;
		t->st.refused_no_memory += o->refused_no_memory;
		t->st.refused_frozen += o->refused_frozen;
		t->st.streams_with_usage += o->streams_with_usage;
		t->st.streams_without_usage += o->streams_without_usage;
		t->st.stream_tokens_reported += o->stream_tokens_reported;
		t->st.stream_tokens_upper += o->stream_tokens_upper;
		t->st.stream_tokens_lower += o->stream_tokens_lower;
		t->st.stream_bound_misses += o->stream_bound_misses;
		t->st.stream_cuts += o->stream_cuts;
		t->st.stream_cuts_frozen += o->stream_cuts_frozen;
		t->open_connections += s->all[i].n_clients;
	}
}

struct text {
	char *p;
	size_t len, cap;
};

static void put(struct text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(struct text *t, const char *fmt, ...)
{
	if (t->len >= t->cap)
		return;
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(t->p + t->len, t->cap - t->len, fmt, ap);
	va_end(ap);
	t->len = n < 0 ? t->cap : MIN(t->cap, t->len + (size_t)n);
}

static void metric(struct text *t, const char *name, const char *type, const char *help,
		   const char *labels, uint64_t v)
{
	if (help)
		put(t, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
	put(t, "%s%s %llu\n", name, labels, (unsigned long long)v);
}

static void get_metrics(struct exchange *ex)
{
	struct totals tt;
	sum_shards(ex->client->shard, &tt);
	const struct shard_stats *st = &tt.st;
	struct text t = { ex->inline_body, 0, MIN(reply_room(ex), (size_t)EX_INLINE_BODY) };
	metric(&t, "tollgate_connections_accepted_total", "counter", "agent connections accepted",
	       "", st->accepted);
	metric(&t, "tollgate_connections_open", "gauge", "agent and admin connections open", "",
	       tt.open_connections);
	metric(&t, "tollgate_requests_total", "counter", "requests received", "", st->requests);
	metric(&t, "tollgate_responses_total", "counter", "error replies by class",
	       "{class=\"4xx\"}", st->errors_4xx);
	metric(&t, "tollgate_responses_total", "counter", NULL, "{class=\"5xx\"}", st->errors_5xx);
	metric(&t, "tollgate_upstream_connects_total", "counter", "provider connections opened",
	       "", st->upstream_connects);
	metric(&t, "tollgate_upstream_reuses_total", "counter",
	       "calls sent on a kept-alive provider connection", "", st->upstream_reuses);
	metric(&t, "tollgate_refused_overload_total", "counter",
	       "connections or calls refused for want of a free slot", "", st->refused_no_memory);
	metric(&t, "tollgate_refused_frozen_total", "counter", "calls refused 423 frozen", "",
	       st->refused_frozen);
	metric(&t, "tollgate_frozen_scopes", "gauge", "scopes frozen by the kill switch", "",
	       atomic_load(&ex->client->shard->freeze->count));
	metric(&t, "tollgate_streams_metered_total", "counter",
	       "metered streams ended, by whether the provider reported usage",
	       "{usage=\"reported\"}", st->streams_with_usage);
	metric(&t, "tollgate_streams_metered_total", "counter", NULL, "{usage=\"missing\"}",
	       st->streams_without_usage);
	metric(&t, "tollgate_stream_cuts_total", "counter", "metered streams cut off", "",
	       st->stream_cuts);
	metric(&t, "tollgate_stream_cuts_frozen_total", "counter",
	       "metered streams cut off by a freeze", "", st->stream_cuts_frozen);
	metric(&t, "tollgate_stream_output_tokens_reported_total", "counter",
	       "output tokens the providers reported, streams with usage", "",
	       st->stream_tokens_reported);
	metric(&t, "tollgate_stream_output_tokens_counted_total", "counter",
	       "output tokens the meter counted on the same streams (upper and lower bound)",
	       "{bound=\"upper\"}", st->stream_tokens_upper);
	metric(&t, "tollgate_stream_output_tokens_counted_total", "counter", NULL,
	       "{bound=\"lower\"}", st->stream_tokens_lower);
	metric(&t, "tollgate_stream_output_tokens_drift_total", "counter",
	       "counted upper bound minus reported, summed over streams with usage", "",
	       st->stream_tokens_upper - MIN(st->stream_tokens_upper, st->stream_tokens_reported));
	metric(&t, "tollgate_stream_bound_misses_total", "counter",
	       "streams whose reported output fell outside the meter's bounds", "",
	       st->stream_bound_misses);
	reply_typed(ex, 200, "text/plain; version=0.0.4", t.p, t.len);
}

/* ---- freeze / unfreeze ---- */

/* 1..max of printable ASCII without quote or backslash: safe in JSON as is. */
static bool plain_text(const char *s, size_t len, size_t max)
{
	if (len == 0 || len > max)
		return false;
	for (size_t i = 0; i < len; i++)
		if (s[i] < 0x20 || s[i] > 0x7e || s[i] == '"' || s[i] == '\\')
			return false;
	return true;
}

static bool string_at(const char *body, const struct json_span *sp)
{
	return sp->present && !sp->escaped && sp->off && body[sp->off - 1] == '"';
}

/* Whether the config names this principal (runs: any well-formed id). */
static bool known(const struct config *cfg, enum freeze_kind kind, const char *id, size_t len)
{
	const struct cfg_principal *list = NULL;
	uint32_t n = 0;
	switch (kind) {
	case FREEZE_RUN:
		return runs_valid_id(id, len);
	case FREEZE_KEY:
		for (uint32_t i = 0; i < cfg->n_keys; i++)
			if (strlen(cfg->keys[i].id) == len && !memcmp(cfg->keys[i].id, id, len))
				return true;
		return false;
	case FREEZE_USER: list = cfg->users; n = cfg->n_users; break;
	case FREEZE_TEAM: list = cfg->teams; n = cfg->n_teams; break;
	case FREEZE_ORG: list = cfg->orgs; n = cfg->n_orgs; break;
	default: return false;
	}
	for (uint32_t i = 0; i < n; i++)
		if (strlen(list[i].name) == len && !memcmp(list[i].name, id, len))
			return true;
	return false;
}

static void post_freeze(struct exchange *ex, bool freeze)
{
	static const char *const names[] = { "scope", "id", "reason" };
	struct json_span sp[3];
	const char *body = ex->body;
	if (json_scan_fields(body, ex->body_len, names, 3, sp)) {
		reply_problem(ex, 400, "invalid_json", "the body is not one JSON object");
		return;
	}
	int kind = string_at(body, &sp[0]) ? freeze_kind_parse(body + sp[0].off, sp[0].len) : -1;
	bool id_ok = string_at(body, &sp[1]) && plain_text(body + sp[1].off, sp[1].len,
							    FREEZE_ID_MAX);
	bool reason_ok = !sp[2].present || (string_at(body, &sp[2]) &&
		plain_text(body + sp[2].off, sp[2].len, FREEZE_REASON_MAX));
	if (kind < 0 || !id_ok || !reason_ok) {
		reply_problem(ex, 400, "invalid_request", kind < 0 ?
			      "scope: one of run, key, user, team, org" : !id_ok ?
			      "id: 1 to 128 printable characters, no quote or backslash" :
			      "reason: up to 256 printable characters, no quote or backslash");
		return;
	}
	char id[FREEZE_ID_MAX + 1], reason[FREEZE_REASON_MAX + 1] = "";
	snprintf(id, sizeof(id), "%.*s", (int)sp[1].len, body + sp[1].off);
	if (sp[2].present)
		snprintf(reason, sizeof(reason), "%.*s", (int)sp[2].len, body + sp[2].off);
	if (freeze && !known(ex->cfg, (enum freeze_kind)kind, id, strlen(id))) {
		reply_problem(ex, 404, "unknown_scope", "the configuration has no such scope");
		return;
	}
	struct shard *s = ex->client->shard;
	uint64_t seq = 0;
	int rc = freeze ? freeze_set(s->freeze, (enum freeze_kind)kind, id, strlen(id), reason,
				     s->wall_ms / 1000, &seq) :
			  freeze_clear(s->freeze, (enum freeze_kind)kind, id, strlen(id), &seq);
	if (rc < 0) {
		reply_problem(ex, 503, "freeze_table_full", "1024 scopes are frozen already");
		return;
	}
	bool persisted = true;
	if (rc == 1) {
		log_warn("admin: %s %s:%s%s%s", freeze ? "froze" : "unfroze",
			 freeze_kind_name((enum freeze_kind)kind), id, reason[0] ? ": " : "", reason);
		persisted = booking_freeze(ex, (enum freeze_kind)kind, id, reason, freeze, seq);
		if (freeze)   /* every shard cuts its streams of this scope now */
			for (int i = 0; i < s->n_all; i++)
				shard_post(&s->all[i], SHARD_CMD_FREEZE, NULL);
	}
	char *b = ex->inline_body;
	int n = snprintf(b, EX_INLINE_BODY,
			 "{\"scope\":\"%s\",\"id\":\"%s\",\"frozen\":%s,\"changed\":%s,"
			 "\"persisted\":%s}", freeze_kind_name((enum freeze_kind)kind), id,
			 freeze ? "true" : "false", rc == 1 ? "true" : "false",
			 persisted ? "true" : "false");
	reply_json(ex, 200, b, (size_t)n);
}

struct listing {
	struct text t;
	uint32_t n;
	bool truncated;
};

static void list_one(void *arg, const struct freeze_slot *slot)
{
	struct listing *l = arg;
	size_t before = l->t.len;
	put(&l->t, "%s{\"scope\":\"%s\",\"id\":\"%s\",\"reason\":\"%s\",\"since\":%lld}",
	    l->n ? "," : "", freeze_kind_name((enum freeze_kind)slot->kind), slot->id,
	    slot->reason, (long long)slot->since_s);
	if (l->t.len >= l->t.cap) {   /* did not fit: 32 bytes stay for the closing */
		l->t.len = before;
		l->truncated = true;
		return;
	}
	l->n++;
}

static void get_freezes(struct exchange *ex)
{
	struct listing l = { .t = { ex->inline_body, 0,
				    MIN(reply_room(ex), (size_t)EX_INLINE_BODY) - 32 } };
	put(&l.t, "{\"frozen\":[");
	freeze_each(ex->client->shard->freeze, list_one, &l);
	l.t.cap += 32;
	put(&l.t, "],\"truncated\":%s}", l.truncated ? "true" : "false");
	reply_json(ex, 200, l.t.p, l.t.len);
}

/* ---- routes ---- */

static bool is(const char *path, size_t len, const char *want)
{
	return len == strlen(want) && !memcmp(path, want, len);
}

void admin_route(struct exchange *ex, const char *path, size_t len, unsigned method)
{
	ex->budget_api = true;     /* not a model call: no call record */
	if (!authorized(ex))
		return;
	bool get = method == HTTP_GET || method == HTTP_HEAD;
	if (is(path, len, "/metrics")) {
		if (get)
			get_metrics(ex);
		else
			reply_problem(ex, 405, "method_not_allowed", "use GET");
	} else if (is(path, len, "/admin/freeze") || is(path, len, "/admin/unfreeze")) {
		if (method == HTTP_POST)
			post_freeze(ex, len == strlen("/admin/freeze"));
		else
			reply_problem(ex, 405, "method_not_allowed", "use POST");
	} else if (is(path, len, "/admin/freezes")) {
		if (get)
			get_freezes(ex);
		else
			reply_problem(ex, 405, "method_not_allowed", "use GET");
	} else {
		reply_problem(ex, 404, "not_found", "no such admin route");
	}
}
