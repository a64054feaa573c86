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
	/* The last "usage" key: providers put it at the end, so search back. */
	const char *key = NULL;
	for (size_t i = len; i >= 7 && !key; i--)
		if (buf[i - 1] == '"' && !memcmp(buf + i - 7, "\"usage\"", 7))
			key = buf + i - 7;
	if (!key)
		return false;
	const char *brace = memchr(key, '{', (size_t)(buf + len - key));
	if (!brace)
		return false;
	size_t start = (size_t)(brace - buf);
	size_t end = object_end(buf, len, start);
	const char *obj = buf + start;
	size_t olen = end - start;
	uint64_t cache_reads = 0;
	bool in = counter(obj, olen, "prompt_tokens", &out->input_tokens) ||
		  counter(obj, olen, "input_tokens", &out->input_tokens);
	bool outp = counter(obj, olen, "completion_tokens", &out->output_tokens) ||
		    counter(obj, olen, "output_tokens", &out->output_tokens);
	if (!counter(obj, olen, "cached_tokens", &out->cached_tokens) &&
	    counter(obj, olen, "cache_read_input_tokens", &cache_reads)) {
		/* Anthropic reports cache reads beside input_tokens, not inside */
		out->cached_tokens = cache_reads;
		out->input_tokens += cache_reads;
	}
	return in || outp;
}
