/*
 * usage.h — token usage from a provider's reply body (OpenAI `usage`,
 * Anthropic `usage`), read from the tail of the body where both put it.
 */
#ifndef TOLLGATE_USAGE_H
#define TOLLGATE_USAGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct usage {
	uint64_t input_tokens;    /* prompt_tokens | input_tokens (+ Anthropic cache reads) */
	uint64_t cached_tokens;   /* prompt_tokens_details.cached_tokens | cache_read_input_tokens */
	uint64_t output_tokens;   /* completion_tokens | output_tokens */
	bool has_input, has_output;   /* which counts were found */
};

/*
 * Reads the counters of the "usage" objects in buf[0..len): each count
 * from the last object that has it (an Anthropic stream splits usage
 * between message_start and message_delta). Returns true when an input or
 * output count was found. Bounded: numbers longer than 12 digits are
 * ignored (no provider reports 10^12 tokens).
 */
bool usage_parse(const char *buf, size_t len, struct usage *out);

#endif
