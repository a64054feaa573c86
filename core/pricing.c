/*
 * pricing.c — integer cost arithmetic (pricing.h). 128-bit products keep
 * tokens × price exact for any configurable price and token count.
 */
#include "core/pricing.h"

int64_t pricing_cost(uint64_t tokens, usd_micros per_mtok)
{
	if (per_mtok <= 0 || tokens == 0)
		return 0;
	unsigned __int128 p = (unsigned __int128)tokens * (uint64_t)per_mtok;
	p = (p + 999999) / 1000000;
	return p > INT64_MAX ? INT64_MAX : (int64_t)p;
}

bool pricing_known(const struct cfg_model *m)
{
	return m->input_per_mtok >= 0 && m->output_per_mtok >= 0;
}

uint64_t pricing_input_bound(uint64_t body_bytes)
{
	return body_bytes + PRICING_INPUT_SLACK;
}

uint32_t pricing_effective_max_output(uint64_t client_cap, uint32_t policy_cap,
				      uint32_t model_cap)
{
	uint64_t cap = UINT64_MAX;
	if (client_cap && client_cap < cap)
		cap = client_cap;
	if (policy_cap && policy_cap < cap)
		cap = policy_cap;
	if (model_cap && model_cap < cap)
		cap = model_cap;
	return cap == UINT64_MAX ? 0 : (uint32_t)cap;
}

void pricing_estimate(const struct cfg_model *m, uint64_t body_bytes, uint32_t max_output,
		      struct estimate *out)
{
	out->input_tokens = pricing_input_bound(body_bytes);
	out->max_output_tokens = max_output;
	int64_t in = pricing_cost(out->input_tokens, m->input_per_mtok);
	int64_t o = pricing_cost(max_output, m->output_per_mtok);
	out->usd = in > INT64_MAX - o ? INT64_MAX : in + o;
}

int64_t pricing_actual(const struct cfg_model *m, uint64_t input_tokens,
		       uint64_t cached_tokens, uint64_t output_tokens)
{
	if (cached_tokens > input_tokens)
		cached_tokens = input_tokens;
	usd_micros cached_price = m->cached_input_per_mtok >= 0 ? m->cached_input_per_mtok :
				  m->input_per_mtok;
	/* Round the sum once, not each part, so that equal token counts give
	 * equal costs however usage is split. */
	unsigned __int128 p = (unsigned __int128)(input_tokens - cached_tokens) *
			      (uint64_t)(m->input_per_mtok > 0 ? m->input_per_mtok : 0) +
			      (unsigned __int128)cached_tokens *
			      (uint64_t)(cached_price > 0 ? cached_price : 0) +
			      (unsigned __int128)output_tokens *
			      (uint64_t)(m->output_per_mtok > 0 ? m->output_per_mtok : 0);
	p = (p + 999999) / 1000000;
	return p > INT64_MAX ? INT64_MAX : (int64_t)p;
}
