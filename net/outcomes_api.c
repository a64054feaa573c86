/*
 * outcomes_api.c — POST /v1/budget/outcomes {"run_id","outcome"} (SPEC §7):
 * an agent says what one of its runs achieved, so reports can show the
 * cost per outcome. The outcome is booked in the ledger (and the reply
 * waits for the write); the run must be live and this key's, so that no
 * key can label another's spend.
 */
#include "net/outcomes_api.h"

#include <stdio.h>
#include <string.h>

#include "core/json_scan.h"
#include "core/runs.h"
#include "core/shard.h"
#include "net/booking.h"
#include "net/decide.h"
#include "net/proxy.h"

#define OUTCOME_MAX 64

/* 1..OUTCOME_MAX of [A-Za-z0-9._:/@+-], like a tag value. */
static bool valid_outcome(const char *s, size_t len)
{
	if (len == 0 || len > OUTCOME_MAX)
		return false;
	for (size_t i = 0; i < len; i++) {
		char c = s[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      strchr("._:/@+-", c)))
			return false;
	}
	return true;
}

void outcomes_api_post(struct exchange *ex)
{
	if (!decide_authenticate(ex))
		return;
	static const char *const names[] = { "run_id", "outcome" };
	struct json_span sp[2];
	if (json_scan_fields(ex->body, ex->body_len, names, 2, sp)) {
		reply_problem(ex, 400, "invalid_json", "the body is not one JSON object");
		return;
	}
	const char *body = ex->body;
	bool run_ok = sp[0].present && !sp[0].escaped && sp[0].off && body[sp[0].off - 1] == '"' &&
		      runs_valid_id(body + sp[0].off, sp[0].len);
	bool outcome_ok = sp[1].present && !sp[1].escaped && sp[1].off &&
			  body[sp[1].off - 1] == '"' && valid_outcome(body + sp[1].off, sp[1].len);
	if (!run_ok || !outcome_ok) {
		reply_problem(ex, 400, "invalid_request", !run_ok ?
			      "run_id: the id of one of this key's live runs" :
			      "outcome: 1 to 64 characters of A-Z a-z 0-9 . _ : / @ + -");
		return;
	}
	if (!ex->client->shard->ledger || !booking_ready(ex)) {
		reply_problem(ex, 503, "ledger_unavailable",
			      "outcomes are kept in the ledger, which is not writable");
		return;
	}
	struct run *run = runs_find(ex->cfg->runs, body + sp[0].off, sp[0].len);
	if (!run) {
		reply_problem(ex, 404, "unknown_run", "no such live run");
		return;
	}
	if (strcmp(run->key_id, ex->key->id)) {
		reply_problem(ex, 403, "run_bound_to_other_key", "this run belongs to another key");
		return;
	}
	char outcome[OUTCOME_MAX + 1];
	memcpy(outcome, body + sp[1].off, sp[1].len);
	outcome[sp[1].len] = '\0';
	if (!booking_outcome(ex, run, outcome)) {
		reply_problem(ex, 503, "ledger_unavailable", "the outcome could not be booked");
		return;
	}
	char *b = ex->inline_body;
	int n = snprintf(b, EX_INLINE_BODY, "{\"run_id\":\"%s\",\"outcome\":\"%s\"}", run->id,
			 outcome);
	reply_json(ex, 201, b, (size_t)n);
}
