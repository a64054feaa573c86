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
#ifdef __SSE2__
#include <emmintrin.h>
#endif

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
	switch (n) {
	case 4: return !memcmp(k, "text", 4) || !memcmp(k, "name", 4);
	case 7: return !memcmp(k, "content", 7) || !memcmp(k, "refusal", 7);
	case 8: return !memcmp(k, "thinking", 8);
	case 9: return !memcmp(k, "arguments", 9);
	case 12: return !memcmp(k, "partial_json", 12);
	default: return false;
	}
}

/* Appends text to the loop window: the detector looks at the last
 * METER_LOOP_SPAN bytes; the window holds twice that, so the move that
 * makes room happens once per METER_LOOP_SPAN bytes, not per event. */
static void keep_text(struct meter *m, const char *s, size_t n)
{
	if (n >= METER_LOOP_SPAN) {
		memcpy(m->loop_text, s + n - METER_LOOP_SPAN, METER_LOOP_SPAN);
		m->loop_len = METER_LOOP_SPAN;
		return;
	}
	if (m->loop_len + n > METER_LOOP_WINDOW) {
		uint32_t keep = METER_LOOP_SPAN - (uint32_t)n;
		memmove(m->loop_text, m->loop_text + m->loop_len - keep, keep);
		m->loop_len = keep;
	}
	memcpy(m->loop_text + m->loop_len, s, n);
	m->loop_len += (uint32_t)n;
}

/* The closing quote of the string whose contents start at s[i], or n.
 * Sixteen bytes at a time where SSE2 is there (x86-64 always has it):
 * most of an event's bytes are inside strings. */
static size_t string_end(const char *s, size_t i, size_t n)
{
#ifdef __SSE2__
	const __m128i quote = _mm_set1_epi8('"'), slash = _mm_set1_epi8('\\');
	while (i + 16 <= n) {
		__m128i v = _mm_loadu_si128((const __m128i *)(s + i));
		unsigned mask = (unsigned)_mm_movemask_epi8(
			_mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, slash)));
		if (!mask) {
			i += 16;
			continue;
		}
		i += (size_t)__builtin_ctz(mask);
		if (s[i] == '"')
			return i;
		i += 2;           /* an escape: skip the escaped byte */
	}
#endif
	while (i < n && s[i] != '"')
		i += s[i] == '\\' ? 2 : 1;
	return i < n ? i : n;
}

static bool json_space(char c)
{
	return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* What a walk of one event's JSON found. */
struct walk {
	size_t from;              /* where it began: past the shared prefix, or 0 */
	bool carried;             /* a text member with text */
	bool usage;               /* a "usage" key */
	uint32_t members;         /* text members with text */
	uint32_t text_at, text_len; /* the last one's string */
};

/*
 * Walks a JSON text for "key": "string" members (not a validator: the
 * stream's JSON was checked by whether it parses as events at all), adding
 * the length of each text member; notes a "usage" key. Returns false if a
 * string never ends.
 *
 * One tight pass, no calls per string: events are small and many, so the
 * walk is most of what metering costs. The bytes before an event's first
 * `"choices"` / `"delta"` are skipped when they equal the previous
 * event's (a stream repeats id, object, created and model in every chunk):
 * one memcmp instead of a walk.
 */
static bool count_text(struct meter *m, const char *s, size_t n, struct walk *w)
{
	const char *key = NULL;
	size_t key_len = 0, i = 0;
	bool value_next = false;
	if (m->prefix_len && m->prefix_len <= n && !memcmp(s, m->prefix, m->prefix_len))
		i = m->prefix_len;
	w->from = i;
	while (i < n) {
		char c = s[i];
		if (c != '"') {
			if (value_next && c != ':' && !json_space(c))
				value_next = false;
			i++;
			continue;
		}
		size_t start = ++i;
		i = string_end(s, i, n);
		if (i >= n)
			return false;
		size_t end = i++;
		size_t k = i;
		while (k < n && json_space(s[k]))
			k++;
		if (k < n && s[k] == ':') {
			key = s + start;
			key_len = end - start;
			value_next = true;
			if (key_len == 5 && !memcmp(key, "usage", 5))
				w->usage = true;
			/* remember the shared prefix: everything before the key
			 * that holds what varies */
			if (!m->prefix_len && !w->carried && !w->usage && start > 1 &&
			    start - 1 <= sizeof(m->prefix) &&
			    ((key_len == 7 && !memcmp(key, "choices", 7)) ||
			     (key_len == 5 && !memcmp(key, "delta", 5)))) {
				memcpy(m->prefix, s, start - 1);
				m->prefix_len = (uint8_t)(start - 1);
			}
			i = k + 1;
			continue;
		}
		if (value_next && end > start && text_key(key, key_len)) {
			m->bytes += end - start;
			keep_text(m, s + start, end - start);
			w->carried = true;
			w->members++;
			w->text_at = (uint32_t)start;
			w->text_len = (uint32_t)(end - start);
		}
		value_next = false;
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

/* The loop rule, checked every LOOP_EVERY bytes of new text. */
static enum meter_verdict check_loop(struct meter *m)
{
	if (m->bytes - m->loop_checked >= LOOP_EVERY) {
		m->loop_checked = m->bytes;
		if (meter_is_loop(m->loop_text, m->loop_len))
			return METER_LOOP;
	}
	return METER_PASS;
}

enum meter_verdict meter_event(struct meter *m, const struct sse_event *ev)
{
	m->span_ok = false;
	if (!ev->has_data)
		return METER_PASS;   /* a comment or keep-alive: nothing generated */
	m->events++;
	if (m->format == FORMAT_OPENAI && ev->data_len == 6 && !memcmp(ev->data, "[DONE]", 6))
		return METER_DONE;
	if (m->format == FORMAT_ANTHROPIC && is(ev, "message_stop"))
		return METER_DONE;
	/* every other event of both formats is a JSON object */
	if (!ev->data_len || ev->data[0] != '{')
		return METER_GARBAGE;
	struct walk w = { 0 };
	bool had_prefix = m->prefix_len > 0;
	if (!count_text(m, ev->data, ev->data_len, &w))
		return METER_GARBAGE;
	bool carried = w.carried;
	m->text_events += carried;
	if (w.usage) {
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
	if (carried && check_loop(m) == METER_LOOP)
		return METER_LOOP;
	/* one text member, nothing else acted on, and a walk from past a
	 * prefix set before: an event that differs only in that member's
	 * string would be walked the same way (meter_span) */
	if (w.members == 1 && !w.usage && had_prefix && w.from == m->prefix_len) {
		m->span_ok = true;
		m->span_at = w.text_at;
		m->span_len = w.text_len;
	}
	return METER_PASS;
}

bool meter_span(const struct meter *m, uint32_t *at, uint32_t *len)
{
	if (!m->span_ok)
		return false;
	*at = m->span_at;
	*len = m->span_len;
	return true;
}

enum meter_verdict meter_repeat(struct meter *m, const char *text, size_t n)
{
	m->events++;
	if (!n)
		return METER_PASS;   /* an empty string is not text (count_text) */
	m->bytes += n;
	keep_text(m, text, n);
	m->text_events++;
	return check_loop(m);
}

uint64_t meter_output_tokens(const struct meter *m, uint64_t cap)
{
	if (m->output_final)
		return m->usage.output_tokens;
	return m->bytes < cap ? m->bytes : cap;
}
