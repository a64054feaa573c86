/*
 * meter.c — per-event metering of OpenAI and Anthropic streams (meter.h).
 *
 * An event's data is JSON; the meter does not build it, it walks it once:
 * each "key": "string" member whose key names generated text adds the
 * string's length, and a "usage" object is read by core/usage.c.
 *
 * Loop rule: the reply's text is in a loop when its last
 * max(METER_LOOP_MIN, 2p) bytes equal the bytes p earlier, for a period p
 * of at most METER_LOOP_MAX_PERIOD: one block repeated at least three
 * times over 512 bytes or more. Candidate periods are where the last 64
 * bytes occurred before within that distance, and the check runs every
 * 256 bytes of new text: a short search per 256 bytes. Ordinary prose and code do not
 * repeat half a kilobyte verbatim three times in a row.
 */
#include "net/meter.h"

#include <string.h>

#include "core/config_types.h"

#define LOOP_PROBE 64
#define LOOP_EVERY 256

void meter_init(struct meter *m, uint8_t format, bool drop_usage_chunk)
{
	memset(m, 0, offsetof(struct meter, loop_text));
	m->format = format;
	m->drop_usage_chunk = drop_usage_chunk;
}

static bool text_key(const char *k, size_t n)
{
	static const char *const keys[] = { "content", "text", "arguments", "partial_json",
					    "thinking", "refusal", "name" };
	for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
		if (strlen(keys[i]) == n && !memcmp(keys[i], k, n))
			return true;
	return false;
}

static void keep_text(struct meter *m, const char *s, size_t n)
{
	if (n >= METER_LOOP_WINDOW) {
		memcpy(m->loop_text, s + n - METER_LOOP_WINDOW, METER_LOOP_WINDOW);
		m->loop_len = METER_LOOP_WINDOW;
		return;
	}
	if (m->loop_len + n > METER_LOOP_WINDOW) {
		uint32_t drop = m->loop_len + (uint32_t)n - METER_LOOP_WINDOW;
		memmove(m->loop_text, m->loop_text + drop, m->loop_len - drop);
		m->loop_len -= drop;
	}
	memcpy(m->loop_text + m->loop_len, s, n);
	m->loop_len += (uint32_t)n;
}

/*
 * Walks a JSON text for "key": "string" members (not a validator: the
 * stream's JSON was checked by whether it parses as events at all). Adds
 * the length of each text member. Returns false if a string never ends.
 */
static bool count_text(struct meter *m, const char *s, size_t n, bool *carried)
{
	bool value_next = false;
	const char *key = NULL;
	size_t key_len = 0;
	for (size_t i = 0; i < n; i++) {
		char c = s[i];
		if (c != '"') {
			if (c != ' ' && c != '\t' && c != '\r' && c != '\n' && c != ':')
				value_next = false;
			continue;
		}
		size_t start = i + 1, j = start;
		while (j < n && s[j] != '"')
			j += s[j] == '\\' ? 2 : 1;
		if (j >= n)
			return false;
		size_t k = j + 1;
		while (k < n && (s[k] == ' ' || s[k] == '\t' || s[k] == '\r' || s[k] == '\n'))
			k++;
		if (k < n && s[k] == ':') {
			key = s + start;
			key_len = j - start;
			value_next = true;
			i = k;
			continue;
		}
		if (value_next && text_key(key, key_len) && j > start) {
			m->bytes += j - start;
			keep_text(m, s + start, j - start);
			*carried = true;
		}
		value_next = false;
		i = j;
	}
	return true;
}

/* Whether text ends in a block of `period` bytes repeated per the rule. */
static bool repeats(const char *text, size_t len, size_t period)
{
	size_t span = period * 2 > METER_LOOP_MIN ? period * 2 : METER_LOOP_MIN;
	return span + period <= len && !memcmp(text + len - span, text + len - span - period, span);
}

bool meter_is_loop(const char *text, size_t len)
{
	if (len < METER_LOOP_MIN + LOOP_PROBE)
		return false;
	/* every earlier occurrence of the last 64 bytes is a candidate period */
	const char *probe = text + len - LOOP_PROBE;
	const char *from = len > METER_LOOP_MAX_PERIOD + LOOP_PROBE ?
			   probe - METER_LOOP_MAX_PERIOD : text;
	for (const char *p = from; p < probe; p++) {
		p = memmem(p, (size_t)(probe - p) + LOOP_PROBE - 1, probe, LOOP_PROBE);
		if (!p || p >= probe)
			return false;
		if (repeats(text, len, (size_t)(probe - p)))
			return true;
	}
	return false;
}

static bool is(const struct sse_event *ev, const char *type)
{
	size_t n = strlen(type);
	return ev->type_len == n && !memcmp(ev->type, type, n);
}

enum meter_verdict meter_event(struct meter *m, const struct sse_event *ev)
{
	m->events++;
	if (m->format == FORMAT_OPENAI && ev->data_len == 6 && !memcmp(ev->data, "[DONE]", 6))
		return METER_DONE;
	if (m->format == FORMAT_ANTHROPIC && is(ev, "message_stop"))
		return METER_DONE;
	/* every other event of both formats is a JSON object */
	if (!ev->data_len || ev->data[0] != '{')
		return METER_GARBAGE;
	bool carried = false;
	if (!count_text(m, ev->data, ev->data_len, &carried))
		return METER_GARBAGE;
	m->text_events += carried;
	if (memmem(ev->data, ev->data_len, "\"usage\"", 7)) {
		struct usage u;
		if (usage_parse(ev->data, ev->data_len, &u)) {
			/* merged: Anthropic gives input at the start, output at the end */
			if (u.has_input) {
				m->usage.input_tokens = u.input_tokens;
				m->usage.cached_tokens = u.cached_tokens;
				m->usage.has_input = true;
			}
			if (u.has_output) {
				m->usage.output_tokens = u.output_tokens;
				m->usage.has_output = true;
				/* message_start's output_tokens is not the reply's */
				m->output_final = m->format == FORMAT_OPENAI ||
						  is(ev, "message_delta");
			}
			m->saw_usage = true;
			/* OpenAI's usage chunk: "choices": [] and the usage */
			if (m->format == FORMAT_OPENAI && m->drop_usage_chunk && !carried)
				return METER_DROP;
		}
	}
	if (carried && m->bytes - m->loop_checked >= LOOP_EVERY) {
		m->loop_checked = m->bytes;
		if (meter_is_loop(m->loop_text, m->loop_len))
			return METER_LOOP;
	}
	return METER_PASS;
}

uint64_t meter_output_tokens(const struct meter *m, uint64_t cap)
{
	if (m->output_final)
		return m->usage.output_tokens;
	return m->bytes < cap ? m->bytes : cap;
}
