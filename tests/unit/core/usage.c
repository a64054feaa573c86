/* Unit tests for core/usage.c. */
#include <string.h>

#include "core/usage.h"
#include "tests/unit/check.h"

static bool parse(const char *s, struct usage *u)
{
	return usage_parse(s, strlen(s), u);
}

int main(void)
{
	struct usage u;
	CHECK(parse("{\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":5,"
		    "\"total_tokens\":14}}", &u));
	CHECK(u.input_tokens == 9 && u.output_tokens == 5 && u.cached_tokens == 0);
	CHECK(parse("\"usage\": {\"prompt_tokens\": 100, \"prompt_tokens_details\": "
		    "{\"cached_tokens\": 40}, \"completion_tokens\": 7}", &u));
	CHECK(u.input_tokens == 100 && u.cached_tokens == 40 && u.output_tokens == 7);
	CHECK(parse("{\"type\":\"message\",\"usage\":{\"input_tokens\":14,"
		    "\"cache_read_input_tokens\":6,\"output_tokens\":3}}", &u));
	CHECK(u.input_tokens == 20 && u.cached_tokens == 6 && u.output_tokens == 3);
	/* the last usage object wins; text that mentions usage does not count */
	CHECK(parse("{\"content\":\"the \\\"usage\\\" word\",\"usage\":{\"output_tokens\":2}}", &u));
	CHECK(u.output_tokens == 2);
	/* a key inside a string value is not a counter */
	CHECK(!parse("{\"usage\":{\"note\":\"xprompt_tokens\"}}", &u));
	CHECK(parse("{\"usage\":{\"note\":\"prompt_tokens\",\"prompt_tokens\":3}}", &u) &&
	      u.input_tokens == 3);
	CHECK(!parse("{\"no\":1}", &u));
	CHECK(!parse("\"usage\"", &u));
	CHECK(!parse("{\"usage\":{\"prompt_tokens\":1234567890123}}", &u));
	CHECK(parse("{\"usage\":{\"output_tokens\":5", &u) && u.output_tokens == 5);
	CHECK(!u.has_input && u.has_output);
	/* an Anthropic stream: input in message_start, output in message_delta */
	CHECK(parse("data: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":"
		    "25,\"cache_read_input_tokens\":5,\"output_tokens\":1}}}\n\n"
		    "data: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":15}}\n\n", &u));
	CHECK(u.has_input && u.input_tokens == 30 && u.cached_tokens == 5 &&
	      u.has_output && u.output_tokens == 15);
	/* "usage": null in OpenAI stream chunks is skipped, not read past */
	CHECK(parse("data: {\"usage\":null,\"x\":{\"prompt_tokens\":99}}\n\n"
		    "data: {\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":2}}\n\n", &u));
	CHECK(u.input_tokens == 4 && u.output_tokens == 2);
	CHECK(!parse("{\"usage\":null,\"x\":{\"prompt_tokens\":99}}", &u));
	/* a counter's first keyed use decides: past 12 digits it is absent,
	 * even if a later one would do; a name used as text first does not */
	CHECK(parse("{\"usage\":{\"output_tokens\":\"input_tokens\",\"input_tokens\":"
		    "1234567890123,\"input_tokens\":5,\"output_tokens\":6}}", &u));
	CHECK(!u.has_input && u.has_output && u.output_tokens == 6);
	/* cached_tokens is preferred to cache_read_input_tokens wherever it is */
	CHECK(parse("{\"usage\":{\"cache_read_input_tokens\":2,\"prompt_tokens\":10,"
		    "\"x\":{\"cached_tokens\":3}}}", &u));
	CHECK(u.input_tokens == 10 && u.cached_tokens == 3);
	return check_report("core/usage");
}
