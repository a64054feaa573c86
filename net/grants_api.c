/*
 * grants_api.c — delegation (SPEC §5): POST /v1/budget/grants moves budget
 * from a run into a grant, GET and DELETE /v1/budget/grants/{id} read and
 * close it; and the owner shard's closing of grants (core/grants.h).
 *
 * Opening reserves the amount on the parent run (which stays held, so it
 * does not expire under the grant) and books a grant_open record before
 * the reply (with the token) is sent; the token itself is returned once
 * and only its SHA-256 is kept. Closing — asked for, or at expiry — books
 * grant_close with what the grant spent; the parent's reservation becomes
 * that spend and the rest goes back to the run.
 */
#include "net/grants_api.h"

#include <mbedtls/sha256.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "core/budget.h"
#include "core/config.h"
#include "core/grants.h"
#include "core/json_scan.h"
#include "core/log.h"
#include "core/money.h"
#include "core/runs.h"
#include "core/shard.h"
#include "ledger/record.h"
#include "net/booking.h"
#include "net/decide.h"
#include "net/proxy.h"

#define GRANT_TTL_DEFAULT_S 3600
#define GRANT_TTL_MAX_S (30 * 86400)

/* A string member as a NUL-ended copy: no escapes (ids never need
 * them), 1..cap-1 bytes. */
static bool member_str(const struct exchange *ex, struct json_span sp, char *out, size_t cap)
{
	if (!sp.present || sp.escaped || sp.len == 0 || sp.len >= cap ||
	    ex->body[sp.off - 1] != '"')
		return false;
	memcpy(out, ex->body + sp.off, sp.len);
	out[sp.len] = '\0';
	return true;
}

static const struct cfg_key *key_by_id(const struct config *cfg, const char *id)
{
	for (uint32_t i = 0; i < cfg->n_keys; i++)
		if (!strcmp(cfg->keys[i].id, id))
			return &cfg->keys[i];
	return NULL;
}

static void copy_name(char *dst, size_t cap, const char *src)
{
	snprintf(dst, cap, "%s", src ? src : "");
}

/* "tgg_" and 36 hex digits from the kernel's CSPRNG. */
static bool new_token(char out[GRANT_TOKEN_LEN + 1])
{
	static const char hex[] = "0123456789abcdef";
	unsigned char rnd[18];
	if (getrandom(rnd, sizeof(rnd), 0) != sizeof(rnd))
		return false;
	memcpy(out, "tgg_", 4);
	for (int i = 0; i < 18; i++) {
		out[4 + 2 * i] = hex[rnd[i] >> 4];
		out[5 + 2 * i] = hex[rnd[i] & 15];
	}
	out[GRANT_TOKEN_LEN] = '\0';
	return true;
}

/* A JSON number of whole seconds in 1..GRANT_TTL_MAX_S. */
static bool read_seconds(const char *p, size_t len, int64_t *out)
{
	if (len == 0 || len > 7)
		return false;
	int64_t v = 0;
	for (size_t i = 0; i < len; i++) {
		if (p[i] < '0' || p[i] > '9')
			return false;
		v = v * 10 + (p[i] - '0');
	}
	if (v < 1 || v > GRANT_TTL_MAX_S)
		return false;
	*out = v;
	return true;
}

struct grant_request {
	char parent_run[RUN_ID_MAX + 1];
	char grantee_key[RUN_ID_MAX + 1];
	int64_t amount;
	int64_t ttl_s;
};

/* The body's members, validated; answers itself on error. */
static bool read_request(struct exchange *ex, struct grant_request *rq)
{
	static const char *const names[] = { "parent_run", "amount_usd", "grantee_key", "ttl_s" };
	struct json_span sp[4];
	if (json_scan_fields(ex->body, ex->body_len, names, 4, sp)) {
		reply_problem(ex, 400, "invalid_json", "the body is not one JSON object");
		return false;
	}
	const char *why = NULL;
	if (!member_str(ex, sp[0], rq->parent_run, sizeof(rq->parent_run)) ||
	    !runs_valid_id(rq->parent_run, strlen(rq->parent_run)))
		why = "parent_run: the id of one of this key's runs";
	else if (!member_str(ex, sp[2], rq->grantee_key, sizeof(rq->grantee_key)))
		why = "grantee_key: the id of the key that will spend the grant";
	else if (!sp[1].present || sp[1].escaped ||
		 money_parse(ex->body + sp[1].off, sp[1].len, &rq->amount) || rq->amount <= 0)
		why = "amount_usd: a positive USD amount exact to the micro-dollar";
	rq->ttl_s = GRANT_TTL_DEFAULT_S;
	if (!why && sp[3].present && (ex->body[sp[3].off] == '"' ||
				      !read_seconds(ex->body + sp[3].off, sp[3].len, &rq->ttl_s)))
		why = "ttl_s: whole seconds, 1 to 2592000";
	if (why) {
		reply_problem(ex, 400, "invalid_request", why);
		return false;
	}
	return true;
}

/* 402: the parent run cannot cover the amount (with SPEC §3's budget object). */
static void refuse_amount(struct exchange *ex, const struct run *parent, int64_t amount)
{
	struct budget_totals t;
	budget_totals(parent->scope, &ex->client->shard->clock, &t);
	char limit[32], committed[32], reserved[32], remaining[32], asked[32], extra[600];
	money_format(t.limit, limit, sizeof(limit));
	money_format(t.committed, committed, sizeof(committed));
	money_format(t.reserved, reserved, sizeof(reserved));
	money_format(t.limit - t.committed - t.reserved, remaining, sizeof(remaining));
	money_format(amount, asked, sizeof(asked));
	snprintf(extra, sizeof(extra),
		 ",\"budget\":{\"scope\":\"run:%s\",\"run_id\":\"%s\",\"limit_usd\":\"%s\","
		 "\"committed_usd\":\"%s\",\"reserved_usd\":\"%s\",\"remaining_usd\":\"%s\","
		 "\"estimate_usd\":\"%s\"}", parent->id, parent->id, limit, committed, reserved,
		 remaining, asked);
	reply_problem_ext(ex, 402, "run_ceiling_reached",
			  "the parent run cannot cover the grant's amount", extra);
}

/* The grant, its parent's reservation made; NULL when refused (answered). */
static struct grant *open_grant(struct exchange *ex, const struct grant_request *rq,
				const struct cfg_key *grantee, struct run *parent,
				char token[GRANT_TOKEN_LEN + 1])
{
	struct shard *s = ex->client->shard;
	const struct config *cfg = ex->cfg;
	uint32_t shard = (uint32_t)s->id, over;
	struct grant *g = grants_alloc(cfg->grants);
	if (!g || !new_token(token) ||
	    mbedtls_sha256_ret((const unsigned char *)token, GRANT_TOKEN_LEN, g->t.token_sha256, 0)) {
		grants_discard(g);
		reply_problem(ex, 503, "no_memory", "the grant cannot be made now: retry");
		return NULL;
	}
	if (budget_reserve(&parent->scope, 1, shard, rq->amount, &s->clock, &over) >= 0) {
		grants_discard(g);
		refuse_amount(ex, parent, rq->amount);
		return NULL;
	}
	snprintf(g->t.id, sizeof(g->t.id), "g-%012llx", (unsigned long long)ex->decision_id);
	g->owner = shard;
	g->t.decision = ex->decision_id;
	g->t.amount = rq->amount;
	g->t.expires_s = s->clock.now_s + rq->ttl_s;
	g->parent = parent;
	copy_name(g->t.parent_run, sizeof(g->t.parent_run), parent->id);
	copy_name(g->t.grantor_key, sizeof(g->t.grantor_key), ex->key->id);
	copy_name(g->t.grantee_key, sizeof(g->t.grantee_key), grantee->id);
	const struct cfg_principal *team = &cfg->teams[ex->key->team];
	copy_name(g->t.grantor_team, sizeof(g->t.grantor_team), team->name);
	if (team->parent >= 0)
		copy_name(g->t.grantor_org, sizeof(g->t.grantor_org), cfg->orgs[team->parent].name);
	copy_name(g->t.grantee_team, sizeof(g->t.grantee_team), cfg->teams[grantee->team].name);
	if (!grants_publish(cfg->grants, g)) {
		budget_release(&parent->scope, 1, shard, rq->amount, &s->clock);
		grants_discard(g);
		log_error("grant table full (%u open grants): refusing key %s's grant",
			  grants_live(cfg->grants), ex->key->id);
		reply_problem(ex, 503, "too_many_grants", "the grant table is full");
		return NULL;
	}
	runs_begin(parent, shard, s->clock.now_s);   /* held until the grant closes */
	return g;
}

static size_t grant_json(const struct grant *g, const struct budget_clock *clk, char *b,
			 size_t cap)
{
	static const char *const states[] = { "open", "closing", "closing", "closed" };
	struct budget_totals t;
	budget_totals(g->scope, clk, &t);
	char amount[32], spent[32], reserved[32], remaining[32], expires[32];
	money_format(g->t.amount, amount, sizeof(amount));
	money_format(t.committed, spent, sizeof(spent));
	money_format(t.reserved, reserved, sizeof(reserved));
	money_format(g->t.amount - t.committed - t.reserved, remaining, sizeof(remaining));
	struct tm tm;
	time_t when = (time_t)g->t.expires_s;
	strftime(expires, sizeof(expires), "%Y-%m-%dT%H:%M:%SZ", gmtime_r(&when, &tm));
	int n = snprintf(b, cap,
		"\"grant_id\":\"%s\",\"state\":\"%s\",\"parent_run\":\"%s\",\"grantor_key\":\"%s\","
		"\"grantee_key\":\"%s\",\"amount_usd\":\"%s\",\"spent_usd\":\"%s\","
		"\"reserved_usd\":\"%s\",\"remaining_usd\":\"%s\",\"expires_at\":\"%s\"",
		g->t.id, states[atomic_load(&g->state) & 3], g->t.parent_run, g->t.grantor_key,
		g->t.grantee_key, amount, spent, reserved, remaining, expires);
	return n > 0 && (size_t)n < cap ? (size_t)n : 0;
}

void grants_api_open(struct exchange *ex)
{
	struct grant_request rq;
	if (!decide_authenticate(ex) || !read_request(ex, &rq))
		return;
	if (!ex->client->shard->ledger || !booking_ready(ex)) {
		reply_problem(ex, 503, "ledger_unavailable",
			      "grants move money and are booked in the ledger, which is not writable");
		return;
	}
	struct run *parent = runs_find(ex->cfg->runs, rq.parent_run, strlen(rq.parent_run));
	if (!parent) {
		reply_problem(ex, 404, "unknown_run", "no such run (open it with X-Run-Id first)");
		return;
	}
	if (strcmp(parent->key_id, ex->key->id)) {
		reply_problem(ex, 403, "run_bound_to_other_key", "this run belongs to another key");
		return;
	}
	if (rq.amount > parent->limit) {   /* also keeps every sum far from overflow */
		refuse_amount(ex, parent, rq.amount);
		return;
	}
	const struct cfg_key *grantee = key_by_id(ex->cfg, rq.grantee_key);
	if (!grantee) {
		reply_problem(ex, 400, "unknown_grantee_key", "grantee_key names no configured key");
		return;
	}
	_Atomic uint32_t *count = ex->key->grants_opened;
	if (atomic_fetch_add(count, 1) >= GRANTS_PER_KEY) {
		atomic_fetch_sub(count, 1);
		reply_problem(ex, 429, "too_many_grants", "this key has 256 open grants");
		return;
	}
	char token[GRANT_TOKEN_LEN + 1];
	struct grant *g = open_grant(ex, &rq, grantee, parent, token);
	if (!g) {
		atomic_fetch_sub(count, 1);
		return;
	}
	g->grantor_count = count;
	struct shard *s = ex->client->shard;
	if (!booking_grant(s, ex->cfg, g, LEDGER_GRANT_OPEN, g->t.amount)) {
		/* not on the books: it must not exist (fail closed) */
		budget_release(&parent->scope, 1, (uint32_t)s->id, g->t.amount, &s->clock);
		runs_end(parent, (uint32_t)s->id);
		atomic_fetch_sub(count, 1);
		grants_withdraw(ex->cfg->grants, g);
		reply_problem(ex, 503, "ledger_unavailable", "the grant could not be booked");
		return;
	}
	ex->ledger_hold = true;   /* the token is not shown before the grant is booked */
	char *b = ex->inline_body;
	size_t n = (size_t)snprintf(b, EX_INLINE_BODY, "{\"grant_token\":\"%s\",", token);
	n += grant_json(g, &ex->client->shard->clock, b + n, EX_INLINE_BODY - n - 1);
	b[n++] = '}';
	reply_json(ex, 201, b, n);
}

/* The grant named id, if this key is its grantor (or, reading, grantee). */
static struct grant *caller_grant(struct exchange *ex, const char *id, size_t len,
				  bool grantee_too)
{
	if (!decide_authenticate(ex))
		return NULL;
	struct grant *g = grants_find_id(ex->cfg->grants, id, len);
	if (!g || (strcmp(g->t.grantor_key, ex->key->id) &&
		   (!grantee_too || strcmp(g->t.grantee_key, ex->key->id)))) {
		reply_problem(ex, 404, "unknown_grant", "no such open grant of this key");
		return NULL;
	}
	return g;
}

void grants_api_get(struct exchange *ex, const char *id, size_t len)
{
	struct grant *g = caller_grant(ex, id, len, true);
	if (!g)
		return;
	char *b = ex->inline_body;
	b[0] = '{';
	size_t n = 1 + grant_json(g, &ex->client->shard->clock, b + 1, EX_INLINE_BODY - 2);
	b[n++] = '}';
	reply_json(ex, 200, b, n);
}

void grants_api_close(struct exchange *ex, const char *id, size_t len)
{
	struct grant *g = caller_grant(ex, id, len, false);
	if (!g)
		return;
	grants_ask_close(g);
	char *b = ex->inline_body;
	int n = snprintf(b, EX_INLINE_BODY,
			 "{\"grant_id\":\"%s\",\"state\":\"closing\",\"detail\":\"closed, and the "
			 "unspent rest returned to %s, once no call is in flight on it\"}",
			 g->t.id, g->t.parent_run);
	reply_json(ex, 202, b, (size_t)n);
}

/* The owner settles a grant: the parent's reservation becomes what the
 * grant spent, the rest goes back to the run, and the record is booked. */
static void close_grant(struct grant *g, int64_t spent, void *arg)
{
	struct shard *s = arg;
	budget_commit(&g->parent->scope, 1, (uint32_t)s->id, g->t.amount, spent, &s->clock);
	booking_grant(s, s->cfg, g, LEDGER_GRANT_CLOSE, spent);
	runs_end(g->parent, (uint32_t)s->id);
}

void grants_api_tidy(struct shard *s)
{
	struct grant_table *t = s->cfg->grants;
	if (!t)
		return;
	grants_tidy_leases(t, (uint32_t)s->id, &s->clock);
	uint32_t n = grants_tidy(t, (uint32_t)s->id, s->clock.now_s, close_grant, s);
	if (n)
		log_info("%u grants closed, %u open", n, grants_live(t));
}
