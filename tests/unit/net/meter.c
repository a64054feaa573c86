/*
 * Unit tests for net/meter.c: the counting rule (an upper bound, capped),
 * usage read from the final events of both formats and merged, the
 * verdicts, and the loop rule: repeating text is caught, while this
 * repository's own prose and code (README, docs, C sources), fed as a
 * stream, never trip it.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/config_types.h"
#include "net/meter.h"
#include "tests/unit/check.h"

static struct meter m;

static enum meter_verdict event(const char *type, const char *data)
{
	struct sse_event ev = { type, (uint32_t)strlen(type), data, (uint32_t)strlen(data), true };
	return meter_event(&m, &ev);
}

static void test_openai(void)
{
	meter_init(&m, FORMAT_OPENAI, false);
	CHECK(event("", "{\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}") ==
	      METER_PASS);
	CHECK(event("", "{\"choices\":[{\"delta\":{\"content\":\"Hello\"}}]}") == METER_PASS);
	CHECK(event("", "{\"choices\":[{\"delta\":{\"content\":\" w\\u00f6rld\\n\"}}]}") == METER_PASS);
	CHECK(m.bytes == 5 + 13 && m.text_events == 2);   /* as carried: \\u00f6 is 6 */
	/* tool call: name and argument pieces count */
	CHECK(event("", "{\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":"
			"{\"name\":\"get\",\"arguments\":\"{\\\"q\\\":\"}}]}}]}") == METER_PASS);
	CHECK(m.bytes == 18 + 3 + 7 && m.text_events == 3);
	CHECK(meter_output_tokens(&m, 1000) == 28);      /* the bound */
	CHECK(meter_output_tokens(&m, 20) == 20);        /* capped */
	CHECK(event("", "{\"choices\":[],\"usage\":{\"prompt_tokens\":11,\"completion_tokens\":6}}") ==
	      METER_PASS);
	CHECK(m.saw_usage && meter_output_tokens(&m, 1000) == 6 && m.usage.input_tokens == 11);
	CHECK(event("", "[DONE]") == METER_DONE);
	CHECK(event("", "not json") == METER_GARBAGE);
	CHECK(event("", "{\"choices\":[{\"delta\":{\"content\":\"unterminated}}]}") == METER_GARBAGE);
	/* the usage chunk we asked for on the agent's behalf is dropped */
	meter_init(&m, FORMAT_OPENAI, true);
	CHECK(event("", "{\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}") ==
	      METER_DROP);
}

static void test_anthropic(void)
{
	meter_init(&m, FORMAT_ANTHROPIC, false);
	CHECK(event("message_start", "{\"type\":\"message_start\",\"message\":{\"usage\":"
			"{\"input_tokens\":25,\"output_tokens\":1}}}") == METER_PASS);
	CHECK(m.usage.input_tokens == 25);
	CHECK(event("content_block_delta", "{\"type\":\"content_block_delta\",\"delta\":"
			"{\"type\":\"text_delta\",\"text\":\"Hi there\"}}") == METER_PASS);
	CHECK(event("content_block_delta", "{\"delta\":{\"type\":\"text_delta\",\"text\":\"!\"}}") ==
	      METER_PASS);
	/* cut here: message_start's output_tokens (1) is not the reply's */
	CHECK(meter_output_tokens(&m, 1000) == 9);
	CHECK(event("message_delta", "{\"type\":\"message_delta\",\"usage\":{\"output_tokens\":3}}") ==
	      METER_PASS);
	CHECK(meter_output_tokens(&m, 1000) == 3 && m.usage.input_tokens == 25);
	CHECK(event("message_stop", "{\"type\":\"message_stop\"}") == METER_DONE);
	CHECK(event("ping", "{\"type\":\"ping\"}") == METER_PASS);
	/* a keep-alive comment block: passed on, nothing counted */
	struct sse_event blank = { "", 0, "", 0, false };
	uint64_t before = m.bytes;
	CHECK(meter_event(&m, &blank) == METER_PASS && m.bytes == before);
}

/* Feeds text in pieces like a stream; true if the meter called a loop. */
static bool streams_into_loop(const char *text, size_t len, size_t piece)
{
	meter_init(&m, FORMAT_OPENAI, false);
	char ev[512];
	for (size_t i = 0; i < len; i += piece) {
		size_t n = len - i < piece ? len - i : piece;
		/* as JSON: drop bytes that would need escaping, keep the rest */
		char text_part[128];
		size_t k = 0;
		for (size_t j = 0; j < n; j++)
			if (text[i + j] != '"' && text[i + j] != '\\' && (unsigned char)text[i + j] >= 0x20)
				text_part[k++] = text[i + j];
		snprintf(ev, sizeof(ev), "{\"choices\":[{\"delta\":{\"content\":\"%.*s\"}}]}",
			 (int)k, text_part);
		if (event("", ev) == METER_LOOP)
			return true;
	}
	return false;
}

static char *slurp(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return NULL;
	char *buf = malloc(1 << 20);
	*len = fread(buf, 1, 1 << 20, f);
	fclose(f);
	return buf;
}

static void test_loops(void)
{
	char text[8192] = "";
	for (int i = 0; i < 60; i++)
		strcat(text, "The answer is 42. ");
	CHECK(streams_into_loop(text, strlen(text), 5));
	/* a 300-byte block of code, repeated (caught within 256 bytes of the
	 * third copy's end: four copies) */
	char block[301];
	for (int i = 0; i < 300; i++)
		block[i] = "for (i = 0; i < n; i++) sum += a[i] * b[i];\n"[i % 44];
	block[300] = '\0';
	block[7] = 'X';   /* not itself periodic at a short period */
	char three[1400] = "";
	for (int i = 0; i < 4; i++)
		strcat(three, block);
	CHECK(streams_into_loop(three, strlen(three), 7));
	/* twice is not a loop */
	char twice[1024] = "intro text before it. ";
	strcat(twice, block);
	strcat(twice, block);
	CHECK(!streams_into_loop(twice, strlen(twice), 7));
	/* ordinary prose and code: this repository's own files */
	const char *files[] = { "README.md", "docs/budget.md", "docs/relay.md", "net/proxy.c",
				"core/config.c", "net/decide.c", "conf/tollgate.yaml",
				"tests/e2e/harness.py" };
	for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
		size_t len;
		char *t = slurp(files[i], &len);
		CHECK(t != NULL);
		if (!t)
			continue;
		for (size_t piece = 3; piece <= 40; piece += 37)
			if (streams_into_loop(t, len, piece)) {
				fprintf(stderr, "false loop in %s (pieces of %zu)\n", files[i], piece);
				CHECK(0);
			}
		free(t);
	}
}

/* meter_repeat() judges what meter_event() would for an event that is
 * the spanned one with another string, loop cuts included; meter_span()
 * refuses what is not such a shape. */
static void test_repeat(void)
{
	static struct meter a, b;
	static const char open[] = "{\"id\":\"x\",\"choices\":[{\"delta\":{\"content\":\"";
	static const char close[] = "\"},\"finish_reason\":null}]}";
	const char *first = "{\"id\":\"x\",\"choices\":[{\"delta\":{\"role\":\"assistant\","
			    "\"content\":\"\"}}]}";
	struct sse_event ev = { "", 0, first, (uint32_t)strlen(first), true };
	uint32_t at, len;
	meter_init(&a, FORMAT_OPENAI, false);
	meter_init(&b, FORMAT_OPENAI, false);
	CHECK(meter_event(&a, &ev) == METER_PASS && meter_event(&b, &ev) == METER_PASS);
	CHECK(!meter_span(&b, &at, &len));     /* no text, and no prefix before it */
	char data[512];
	snprintf(data, sizeof(data), "%sHello%s", open, close);
	ev.data = data;
	ev.data_len = (uint32_t)strlen(data);
	CHECK(meter_event(&a, &ev) == METER_PASS && meter_event(&b, &ev) == METER_PASS);
	CHECK(meter_span(&b, &at, &len) && at == strlen(open) && len == 5);
	static const char *texts[] = { "a", "", "\\\"q\\\"", "\\u00e9", "caf\xc3\xa9",
				       "the same words again ", "the same words again " };
	int loops = 0;
	for (int i = 0; i < 200; i++) {
		const char *t = texts[i % 7];
		snprintf(data, sizeof(data), "%s%s%s", open, t, close);
		ev.data_len = (uint32_t)strlen(data);
		enum meter_verdict va = meter_event(&a, &ev), vb = meter_repeat(&b, t, strlen(t));
		CHECK(va == vb);
		loops += va == METER_LOOP;
		CHECK(a.bytes == b.bytes && a.text_events == b.text_events && a.events == b.events &&
		      a.loop_len == b.loop_len && !memcmp(a.loop_text, b.loop_text, a.loop_len));
	}
	CHECK(loops > 0);
	/* not shapes: two text members, a usage key */
	snprintf(data, sizeof(data), "%sa\",\"name\":\"b%s", open, close);
	ev.data_len = (uint32_t)strlen(data);
	CHECK(meter_event(&b, &ev) == METER_PASS && !meter_span(&b, &at, &len));
	snprintf(data, sizeof(data), "%sa%s,\"usage\":null", open, close);
	ev.data_len = (uint32_t)strlen(data);
	meter_event(&b, &ev);
	CHECK(!meter_span(&b, &at, &len));
}

int main(void)
{
	test_openai();
	test_anthropic();
	test_repeat();
	test_loops();
	return check_report("net/meter");
}
