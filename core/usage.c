/*
 * usage.c — picks counters out of a `usage` object (usage.h).
 *
 * The object is found by its key, and its extent by brace depth (strings
 * skipped), so nested objects such as prompt_tokens_details are inside it.
 * Each counter is the integer after `"name":`.
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

/* The integer after "name": inside obj[0..len); false if absent. */
static bool counter(const char *obj, size_t len, const char *name, uint64_t *out)
{
	size_t nlen = strlen(name);
	for (const char *p = obj, *end = obj + len;
	     (p = memmem(p, (size_t)(end - p), name, nlen)); p += nlen) {
		if (p == obj || p[-1] != '"' || p + nlen >= end || p[nlen] != '"')
			continue;
		const char *q = p + nlen + 1;
		while (q < end && (*q == ' ' || *q == ':' || *q == '\t' || *q == '\n' || *q == '\r'))
			q++;
		uint64_t v = 0;
		int digits = 0;
		while (q < end && *q >= '0' && *q <= '9' && digits < 13) {
			v = v * 10 + (uint64_t)(*q++ - '0');
			digits++;
		}
		if (digits == 0)
			continue;     /* the name inside a string, not a key */
		if (digits > 12)
			return false;
		*out = v;
		return true;
	}
	return false;
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
		uint64_t v, cache_reads = 0;
		if (counter(obj, olen, "prompt_tokens", &v) || counter(obj, olen, "input_tokens", &v)) {
			out->has_input = true;
			out->input_tokens = v;
			out->cached_tokens = 0;
			if (!counter(obj, olen, "cached_tokens", &out->cached_tokens) &&
			    counter(obj, olen, "cache_read_input_tokens", &cache_reads)) {
				/* Anthropic reports cache reads beside input_tokens, not inside */
				out->cached_tokens = cache_reads;
				out->input_tokens += cache_reads;
			}
		}
		if (counter(obj, olen, "completion_tokens", &v) || counter(obj, olen, "output_tokens", &v)) {
			out->has_output = true;
			out->output_tokens = v;
		}
	}
	return out->has_input || out->has_output;
}
