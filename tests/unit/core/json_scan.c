/* Unit tests for core/json_scan.c: validation and top-level field spans. */
#include <errno.h>
#include <string.h>

#include "core/json_scan.h"
#include "tests/unit/check.h"

static int scan(const char *s, struct json_top *t)
{
	return json_scan_top(s, strlen(s), t);
}

static bool span_is(const char *doc, struct json_span sp, const char *want)
{
	return sp.present && sp.len == strlen(want) && !memcmp(doc + sp.off, want, sp.len);
}

int main(void)
{
	struct json_top t;
	const char *d = " {\"model\":\"gpt-4o\",\"stream\":true,\"max_tokens\":128,"
			"\"messages\":[{\"role\":\"user\",\"content\":\"hi \\\"there\\\" \\u00e9\"}],"
			"\"stream_options\":{\"include_usage\":true}} \n";
	CHECK(scan(d, &t) == 0);
	CHECK(span_is(d, t.model, "gpt-4o"));
	CHECK(!t.model.escaped);
	CHECK(span_is(d, t.stream, "true"));
	CHECK(span_is(d, t.max_tokens, "128"));
	CHECK(span_is(d, t.stream_options, "{\"include_usage\":true}"));
	CHECK(!t.max_completion_tokens.present);

	/* nested "model" keys are not top-level */
	const char *n = "{\"x\":{\"model\":\"a\"},\"model\":\"b\"}";
	CHECK(scan(n, &t) == 0 && span_is(n, t.model, "b"));
	const char *e = "{\"model\":\"a\\nb\"}";
	CHECK(scan(e, &t) == 0 && t.model.escaped);
	CHECK(scan("{}", &t) == 0 && !t.model.present);

	/* invalid documents */
	static const char *bad[] = {
		"", "[]", "\"s\"", "{", "}", "{\"a\"}", "{\"a\":}", "{\"a\":1,}",
		"{\"a\":01}", "{\"a\":1.}", "{\"a\":-}", "{\"a\":1e}", "{\"a\":tru}",
		"{\"a\":\"\\x\"}", "{\"a\":\"\\u12\"}", "{\"a\":\"line\nbreak\"}",
		"{\"a\":1} x", "{\"a\":[1,2}", "{a:1}", "{\"model\":\"a\",\"model\":\"b\"}",
		"{\"a\":\"unterminated}",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		int rc = scan(bad[i], &t);
		CHECK(rc == -EINVAL);
		if (rc != -EINVAL)
			fprintf(stderr, "  accepted: %s\n", bad[i]);
	}
	/* valid edge cases */
	static const char *good[] = {
		"{\"a\":-0.5e+10}", "{\"a\":[]}", "{\"a\":[[],{}]}", "{\"a\":null,\"b\":false}",
		"{\"a\":\"\\/\\b\\f\\n\\r\\t\\\\\"}", "{ \"a\" : 1 }",
	};
	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
		CHECK(scan(good[i], &t) == 0);

	/* depth bound */
	char deep[2 * JSON_MAX_DEPTH + 16];
	size_t k = 0;
	deep[k++] = '{';
	deep[k++] = '"';
	deep[k++] = 'a';
	deep[k++] = '"';
	deep[k++] = ':';
	for (int i = 0; i < JSON_MAX_DEPTH; i++)
		deep[k++] = '[';
	for (int i = 0; i < JSON_MAX_DEPTH; i++)
		deep[k++] = ']';
	deep[k++] = '}';
	deep[k] = '\0';
	CHECK(scan(deep, &t) == -E2BIG);
	/* a top-level key spelled with escapes is refused: it would be a second
	 * "model" to the provider */
	{
		struct json_top t2;
		const char *esc = "{\"model\":\"a\",\"mod\\u0065l\":\"b\"}";
		CHECK(json_scan_top(esc, strlen(esc), &t2) == -EINVAL);
		const char *nested = "{\"model\":\"a\",\"x\":{\"mod\\u0065l\":1}}";
		CHECK(json_scan_top(nested, strlen(nested), &t2) == 0);
	}
	return check_report("core/json_scan");
}
