/*
 * pricing.h — what a call may cost, in integer micro-USD (SPEC §4).
 *
 * Prices are micro-USD per million tokens, so the cost of n tokens is
 * n × price / 1e6 micro-USD, rounded up: an estimate never undercounts by
 * a fraction of a micro-dollar, and a commit of the same numbers always
 * fits its reservation.
 */
#ifndef TOLLGATE_PRICING_H
#define TOLLGATE_PRICING_H

#include <stdbool.h>
#include <stdint.h>

#include "core/config_types.h"

/* ceil(tokens × per_mtok / 1e6); per_mtok ≥ 0. */
int64_t pricing_cost(uint64_t tokens, usd_micros per_mtok);

/* False when the model lacks a price that this call needs: the call is
 * refused with unknown_price, never treated as free. */
bool pricing_known(const struct cfg_model *m);

/*
 * Upper bound on input tokens from the request body: byte-level BPE
 * tokenizers emit at most one token per byte, plus per-message framing,
 * so body bytes + PRICING_INPUT_SLACK bounds every request. The excess is
 * refunded at commit from the provider's usage.
 */
#define PRICING_INPUT_SLACK 64
uint64_t pricing_input_bound(uint64_t body_bytes);

/*
 * effective_max_output_tokens = min(client cap, policy cap, model cap);
 * a cap of 0 means "not given". Returns 0 when none is given and the model
 * has none either (hard_gate then answers missing_max_tokens).
 */
uint32_t pricing_effective_max_output(uint64_t client_cap, uint32_t policy_cap,
				      uint32_t model_cap);

struct estimate {
	uint64_t input_tokens;        /* bound */
	uint32_t max_output_tokens;   /* effective */
	int64_t usd;                  /* worst case, micro-USD */
};

void pricing_estimate(const struct cfg_model *m, uint64_t body_bytes, uint32_t max_output,
		      struct estimate *out);

/* Actual cost from provider usage; cached input tokens are part of input. */
int64_t pricing_actual(const struct cfg_model *m, uint64_t input_tokens,
		       uint64_t cached_tokens, uint64_t output_tokens);

#endif
