/*
 * settle.c — the end of a budgeted call: find the provider's usage at the
 * end of the reply, turn the reservation into a spend or give it back,
 * record the decision and finish its idempotency key (decide.h). Runs once
 * per exchange, when it ends, whatever its fate.
 *
 * When the reply is complete the reservation becomes a spend: the
 * provider's usage priced exactly (an Anthropic stream's input count comes
 * from message_start, its output from message_delta; a count missing from
 * the reply's last 2 KiB is charged at its reserved worst case), or the
 * whole reservation if the reply carried no usage. A partial reply (reset,
 * timeout, agent gone) spends the whole reservation, since tokens were
 * generated. A metered stream (net/stream.c) is charged what its meter
 * saw: the provider's usage, or the counted bound up to its end or cut.
 * A call that got no reply byte releases everything.
 */
#include <stdio.h>
#include <string.h>

#include "core/budget.h"
#include "core/decisions.h"
#include "core/grants.h"
#include "core/idempotency.h"
#include "core/pricing.h"
#include "core/shard.h"
#include "core/runs.h"
#include "core/usage.h"
#include "net/booking.h"
#include "net/decide.h"
#include "net/stream.h"

/*
 * Keeps at least the last EX_USAGE_TAIL bytes of the reply body in a
 * buffer twice that size: bytes are appended, and only when the buffer is
 * full are the last EX_USAGE_TAIL of them moved to its front. A stream of
 * small events thus costs about one copy per byte, not one per event.
 */
int decide_reply_body(struct http_msg *m, const char *data, size_t len)
{
	struct exchange *ex = m->owner;
	if (len >= EX_USAGE_TAIL) {
		memcpy(ex->tail, data + len - EX_USAGE_TAIL, EX_USAGE_TAIL);
		ex->tail_start = 0;
		ex->tail_len = EX_USAGE_TAIL;
		return 0;
	}
	if (ex->tail_start + ex->tail_len + len > sizeof(ex->tail)) {
		uint32_t keep = MIN(ex->tail_len, (uint32_t)(EX_USAGE_TAIL - len));
		memmove(ex->tail, ex->tail + ex->tail_start + ex->tail_len - keep, keep);
		ex->tail_start = 0;
		ex->tail_len = keep;
	}
	memcpy(ex->tail + ex->tail_start + ex->tail_len, data, len);
	ex->tail_len += (uint32_t)len;
	return 0;
}

/* Commits what the call cost, or releases it all (sets ex->outcome). */
static void settle_reservation(struct exchange *ex)
{
	struct shard *s = ex->client->shard;
	uint32_t shard = (uint32_t)s->id;
	/* No reply byte, or a 502/504 we wrote ourselves because the
	 * provider's reply was unusable: SPEC §3 releases the reservation. */
	if (ex->resp_bytes == 0 || ex->state == EX_LOCAL) {
		budget_release(ex->scopes, ex->n_scopes, shard, ex->reserved_usd, &s->clock);
		ex->actual_usd = 0;
		ex->outcome = OUTCOME_RELEASED;
		return;
	}
	if (ex->stream) {
		/* metered as it passed: the provider's usage if it came, else
		 * the counted bound of what was generated up to the end or cut */
		uint64_t input, cached = 0;
		if (!stream_input_tokens(ex, &input, &cached))
			input = pricing_input_bound(ex->body_len);
		ex->input_tokens = input;
		ex->cached_tokens = cached;
		ex->output_tokens = stream_output_tokens(ex);
		ex->actual_usd = pricing_actual(ex->model, input, cached, ex->output_tokens);
		budget_commit(ex->scopes, ex->n_scopes, shard, ex->reserved_usd, ex->actual_usd,
			      &s->clock);
		ex->outcome = OUTCOME_COMMITTED;
		return;
	}
	struct usage u;
	ex->actual_usd = ex->reserved_usd;
	if (ex->resp_complete && ex->status < 300 && usage_parse(ex->tail + ex->tail_start, ex->tail_len, &u)) {
		/* A count the reply did not carry (an Anthropic stream whose
		 * message_start left the tail) is charged at what was reserved
		 * for it, never as zero. */
		if (!u.has_input) {
			u.input_tokens = pricing_input_bound(ex->body_len);
			u.cached_tokens = 0;
		}
		if (!u.has_output)
			u.output_tokens = ex->max_output_tokens;
		ex->input_tokens = u.input_tokens;
		ex->cached_tokens = u.cached_tokens;
		ex->output_tokens = u.output_tokens;
		ex->actual_usd = pricing_actual(ex->model, u.input_tokens, u.cached_tokens,
						u.output_tokens);
	} else if (ex->resp_complete && ex->status >= 400)
		ex->actual_usd = 0;   /* the provider refused the call: nothing generated */
	budget_commit(ex->scopes, ex->n_scopes, shard, ex->reserved_usd, ex->actual_usd,
		      &s->clock);
	ex->outcome = OUTCOME_COMMITTED;
}

static void copy(char *dst, size_t cap, const char *src, size_t len)
{
	len = MIN(len, cap - 1);
	memcpy(dst, src, len);
	dst[len] = '\0';
}

/* The decision, as GET /budget/decisions/{id} and idempotent retries see it. */
static void record(struct exchange *ex)
{
	struct shard *s = ex->client->shard;
	struct decision_rec r = {
		.id = ex->decision_id,
		.time_s = s->clock.now_s,
		.estimate_usd = ex->estimate_usd,
		.reserved_usd = ex->reserved_usd,
		.actual_usd = ex->actual_usd,
		.status = ex->status,
		.kind = (uint8_t)decide_kind(ex),
		.outcome = ex->outcome,
		.mode = ex->mode_in_force,
	};
	copy(r.key_id, sizeof(r.key_id), ex->key->id, strlen(ex->key->id));
	if (ex->run)
		copy(r.run_id, sizeof(r.run_id), ex->run->id, ex->run->id_len);
	const struct cfg_model *asked = ex->requested_model ? ex->requested_model : ex->model;
	if (asked)
		copy(r.model, sizeof(r.model), asked->name, asked->name_len);
	if (ex->requested_model)
		copy(r.selected_model, sizeof(r.selected_model), ex->model->name,
		     ex->model->name_len);
	copy(r.code, sizeof(r.code), ex->problem_code, strlen(ex->problem_code));
	if (ex->blocked_by || ex->over) {   /* (else it would sum every scope again) */
		int scope = decide_scope_in_force(ex);
		snprintf(r.scope, sizeof(r.scope), "%s:%s", ex->scope_kind[scope],
			 ex->scope_name[scope]);
	}
	if (ex->tags)
		copy(r.tags, sizeof(r.tags), ex->tags, ex->tags_len);
	decisions_put(ex->cfg->decisions, (uint32_t)s->id, &r);
}

void decide_settle(struct exchange *ex)
{
	if (ex->settled)
		return;
	ex->settled = true;
	if (ex->allowed)
		settle_reservation(ex);
	if (ex->key && !ex->replayed) {
		record(ex);
		if (!ex->budget_api)
			booking_settle(ex);
	}
	if (ex->idem_claimed)
		idem_finish(ex->cfg->idem, ex->idem_slot, ex->decision_id);
	if (ex->grant)      /* after its commit: the owner then reads what it spent */
		grants_end(ex->grant, (uint32_t)ex->client->shard->id);
	if (ex->run_held)   /* last: the run may be freed as soon as it is not held */
		runs_end(ex->run, (uint32_t)ex->client->shard->id);
}
