/*
 * decide.h — the budget decision on the request path (net/decide.c), its
 * settlement (net/settle.c) and what agents are told (net/budget_api.c).
 */
#ifndef TOLLGATE_DECIDE_H
#define TOLLGATE_DECIDE_H

#include <stdbool.h>
#include <stddef.h>

#include "core/json_scan.h"
#include "net/conn_types.h"

/*
 * Authenticates the agent and reserves the call's worst case on every
 * scope, or answers with the refusal itself. Returns true to forward.
 * `embeddings`: the call produces no output tokens.
 */
bool decide_request(struct exchange *ex, const struct json_top *top, bool embeddings);
/* Sets ex->key from the request's credentials, or answers 401. */
bool decide_authenticate(struct exchange *ex);
/* Appends the caller key's budgeted scopes (key, user, team, org) to
 * ex->scopes. */
void decide_key_scopes(struct exchange *ex);

/* Reply body bytes, to find the provider's usage at the end. */
int decide_reply_body(struct http_msg *m, const char *data, size_t len);
/* Ends the reservation: commit (reply complete: usage, or the worst case
 * when the provider gave none; partial reply: the worst case, since
 * tokens were generated) or release (no reply byte came back). */
void decide_settle(struct exchange *ex);
/* GET /v1/budget: every budgeted scope of the caller's key (and of the
 * run named by X-Run-Id, if it is this key's). Answers itself. */
void decide_budget_state(struct exchange *ex);
/* enum decision_kind of this exchange (allow, advisory_warn, downgrade,
 * block). */
int decide_kind(const struct exchange *ex);
/* The scope of ex with the least money left (-1 with none), and that
 * amount in *least (INT64_MAX with none). */
int decide_tightest(const struct exchange *ex, int64_t *least);
/* The scope whose mode is in force: the one that refused, else the first
 * that went past its limit, else the tightest; -1 with no scopes. */
int decide_scope_in_force(const struct exchange *ex);

/* GET /v1/budget/runs/{id}: the run (if it is the caller's) and the
 * scopes above it. GET /budget/decisions/{id}: one of the caller's recent
 * decisions. Both answer themselves. */
void decide_run_state(struct exchange *ex, const char *id, size_t len);
void decide_decision_state(struct exchange *ex, const char *id, size_t len);

/* Appends the X-Budget-* response fields; returns the bytes written.
 * Notes the mode in force in ex for the decision record. */
size_t decide_headers(struct exchange *ex, char *out, size_t cap);

/* The 402 code of a scope that cannot cover a call (SPEC §3): "<kind>_
 * ceiling_reached", or "grant_exhausted" for a grant. */
void decide_ceiling_code(const char *scope_kind, char *out, size_t cap);

/* The first of the call's run, key, user, team and org an operator has
 * frozen (SPEC §6), written "kind:id" into out; false if none. */
bool decide_frozen(const struct exchange *ex, char *out, size_t cap);

#endif
