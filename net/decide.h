/*
 * decide.h — the budget decision on the request path (net/decide.c).
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
/* Reply body bytes, to find the provider's usage at the end. */
int decide_reply_body(struct http_msg *m, const char *data, size_t len);
/* Ends the reservation: commit (reply complete: usage, or the worst case
 * when the provider gave none; partial reply: the worst case, since
 * tokens were generated) or release (no reply byte came back). */
void decide_settle(struct exchange *ex);
/* GET /v1/budget: every budgeted scope of the caller's key (and of the
 * run named by X-Run-Id, if it is this key's). Answers itself. */
void decide_budget_state(struct exchange *ex);
/* Appends the X-Budget-* response fields; returns the bytes written. */
size_t decide_headers(const struct exchange *ex, char *out, size_t cap);

#endif
