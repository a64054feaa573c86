/*
 * usage.c — picks counters out of a `usage` object (usage.h).
 *
 * The object is found by its key, and its extent by brace depth (strings
 * skipped), so nested objects such as prompt_tokens_details are inside it.
 * Each counter is the integer after `"name":`; one walk over the object's
 * quoted names finds them all.
 */
#include "core/usage.h"

#include <string.h>

/* End of the object starting at buf[i] == '{', or len if it does not end. */
static size_t object_end(const char *buf, size_t len, size_t i)
{
	int depth = 0;
	bool in_string = false;
	for (; i < len; i++) {
		char c = buf[i];
		if (in_string) {
			if (c == '\\')
				i++;
			else if (c == '"')
				in_string = false;
		} else if (c == '"') {
			in_string = true;
		} else if (c == '{') {
			depth++;
		} else if (c == '}' && --depth == 0) {
			return i + 1;
		}
	}
	return len;
}

/* The counters a usage object may hold. */
enum counter { C_PROMPT, C_INPUT, C_CACHED, C_CACHE_READ, C_COMPLETION, C_OUTPUT, N_COUNTERS };

/* Which counter the key whose name is k[0..n) is, or N_COUNTERS. */
static enum counter counter_of(const char *k, size_t n)
{
	switch (n) {
	case 12: return !memcmp(k, "input_tokens", 12) ? C_INPUT : N_COUNTERS;
	case 13:
		if (!memcmp(k, "prompt_tokens", 13))
			return C_PROMPT;
		if (!memcmp(k, "cached_tokens", 13))
			return C_CACHED;
		return !memcmp(k, "output_tokens", 13) ? C_OUTPUT : N_COUNTERS;
	case 17: return !memcmp(k, "completion_tokens", 17) ? C_COMPLETION : N_COUNTERS;
	case 23: return !memcmp(k, "cache_read_input_tokens", 23) ? C_CACHE_READ : N_COUNTERS;
	default: return N_COUNTERS;
	}
}

/*
 * Each counter in obj[0..len): the integer after its first quoted name
 * that is followed (past spaces and colons) by digits; a name followed by
 * no digit is text, not a key, and the search goes on. Found: bit c of the
 * result, value in v[c]; a number past 12 digits leaves it absent. One
 * walk from quote to quote (no counter name has a border, so names never
 * overlap).
 */
static unsigned counters(const char *obj, size_t len, uint64_t v[N_COUNTERS])
{
	unsigned found = 0, done = 0;
	const char *end = obj + len, *p = obj;
	while ((p = memchr(p, '"', (size_t)(end - p)))) {
		const char *name = ++p;
		const char *close = memchr(name, '"', (size_t)(end - name));
		if (!close)
			break;
		enum counter c = counter_of(name, (size_t)(close - name));
		if (c == N_COUNTERS || (done & (1u << c)))
			continue;     /* the closing quote may open the next string */
		const char *q = close + 1;
		while (q < end && (*q == ' ' || *q == ':' || *q == '\t' || *q == '\n' || *q == '\r'))
			q++;
		uint64_t n = 0;
		int digits = 0;
		while (q < end && *q >= '0' && *q <= '9' && digits < 13) {
			n = n * 10 + (uint64_t)(*q++ - '0');
			digits++;
		}
		if (digits == 0)
			continue;     /* the name inside a string, not a key */
		done |= 1u << c;
		if (digits <= 12) {
			found |= 1u << c;
			v[c] = n;
		}
	}
	return found;
}

bool usage_parse(const char *buf, size_t len, struct usage *out)
{
	*out = (struct usage){ 0 };
	/* Every "usage": {...} in order; the last one that has a counter sets
	 * it. OpenAI and non-streamed Anthropic replies have one; an Anthropic
	 * stream reports input in message_start and output in message_delta. */
	for (const char *p = buf; (p = memmem(p, (size_t)(buf + len - p), "\"usage\"", 7)); p += 7) {
		const char *q = p + 7, *end = buf + len;
		while (q < end && (*q == ' ' || *q == ':' || *q == '\t' || *q == '\n' || *q == '\r'))
			q++;
		if (q == end || *q != '{')
			continue;     /* "usage": null, or the word inside a string */
		size_t start = (size_t)(q - buf);
		const char *obj = q;
		size_t olen = object_end(buf, len, start) - start;
		uint64_t v[N_COUNTERS];
		unsigned found = counters(obj, olen, v);
		if (found & (1u << C_PROMPT | 1u << C_INPUT)) {
			out->has_input = true;
			out->input_tokens = found & 1u << C_PROMPT ? v[C_PROMPT] : v[C_INPUT];
			out->cached_tokens = 0;
			if (found & 1u << C_CACHED) {
				out->cached_tokens = v[C_CACHED];
			} else if (found & 1u << C_CACHE_READ) {
				/* Anthropic reports cache reads beside input_tokens, not inside */
				out->cached_tokens = v[C_CACHE_READ];
				out->input_tokens += v[C_CACHE_READ];
			}
		}
		if (found & (1u << C_COMPLETION | 1u << C_OUTPUT)) {
			out->has_output = true;
			out->output_tokens = found & 1u << C_COMPLETION ? v[C_COMPLETION] : v[C_OUTPUT];
		}
	}
	return out->has_input || out->has_output;
}
