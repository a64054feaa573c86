/* Unit tests for core/pricing.c: rounding up, caps, unknown prices, bounds. */
#include "core/pricing.h"
#include "tests/unit/check.h"

int main(void)
{
	CHECK(pricing_cost(1, 1) == 1);              /* 1e-6 µ$ rounds up to 1 µ$ */
	CHECK(pricing_cost(1000000, 2500000) == 2500000);
	CHECK(pricing_cost(3, 2500000) == 8);        /* 7.5 -> 8 */
	CHECK(pricing_cost(0, 2500000) == 0);
	CHECK(pricing_cost(100, 0) == 0);
	CHECK(pricing_cost(UINT64_MAX, INT64_MAX) == INT64_MAX);

	struct cfg_model m = { .input_per_mtok = 2500000, .output_per_mtok = 10000000,
			       .cached_input_per_mtok = 1250000, .max_output_tokens = 16384 };
	CHECK(pricing_known(&m));
	struct cfg_model unpriced = { .input_per_mtok = -1, .output_per_mtok = 1 };
	CHECK(!pricing_known(&unpriced));

	CHECK(pricing_effective_max_output(100, 0, 16384) == 100);
	CHECK(pricing_effective_max_output(0, 50, 16384) == 50);
	CHECK(pricing_effective_max_output(1u << 30, 0, 16384) == 16384);
	CHECK(pricing_effective_max_output(0, 0, 0) == 0);

	struct estimate e;
	pricing_estimate(&m, 936, 64, &e);
	CHECK(e.input_tokens == 1000);
	CHECK(e.usd == 2500 + 640);

	/* the actual cost of a call never exceeds its estimate when usage is
	 * within the bounds the estimate used */
	for (uint64_t in = 0; in <= 1000; in += 37)
		for (uint64_t out = 0; out <= 64; out += 5)
			CHECK(pricing_actual(&m, in, in / 3, out) <= e.usd);
	CHECK(pricing_actual(&m, 1000, 0, 64) == 3140);
	CHECK(pricing_actual(&m, 1000, 1000, 0) == 1250);
	CHECK(pricing_actual(&m, 10, 20, 0) == pricing_actual(&m, 10, 10, 0));
	return check_report("core/pricing");
}
