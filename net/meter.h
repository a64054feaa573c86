/*
 * meter.h — what a streamed reply has generated, event by event
 * (SPEC §5): output tokens counted as they pass, the provider's own usage
 * when it reports it, and whether the generation has degenerated into a
 * loop.
 *
 * Counting rule (no provider count yet): every byte of generated text —
 * content, text, refusal, thinking, tool-call names and arguments, as
 * the JSON carries them, escapes included — counts as one output token.
 * A token is at least one byte of UTF-8 and an escape is longer than what
 * it decodes to, so this bound is never below the truth; it is capped at
 * the call's effective max output, which the provider was asked not to
 * pass. A lower bound comes with it: one token per event that carried
 * text. The provider's final usage, when it comes, replaces both.
 */
#ifndef TOLLGATE_METER_H
#define TOLLGATE_METER_H

#include <stdbool.h>
#include <stdint.h>

#include "core/usage.h"
#include "net/sse.h"

#define METER_LOOP_SPAN 3072      /* recent text the loop detector looks at */
#define METER_LOOP_WINDOW (2 * METER_LOOP_SPAN)
#define METER_LOOP_MIN 512        /* bytes that must repeat */
#define METER_LOOP_MAX_PERIOD 1024

enum meter_verdict {
	METER_PASS,       /* relay the event */
	METER_DROP,       /* the usage chunk the agent did not ask for: not relayed */
	METER_DONE,       /* the provider's end of stream ([DONE], message_stop) */
	METER_LOOP,       /* the text is repeating: cut */
	METER_GARBAGE,    /* not an event of this format: cut with an error */
};

struct meter {
	uint8_t format;           /* enum provider_format */
	bool drop_usage_chunk;    /* OpenAI: we added include_usage, the agent did not */
	bool saw_usage;
	bool output_final;        /* the provider's output count is the reply's
				   * (OpenAI's usage chunk, Anthropic's message_delta) */
	uint32_t events;
	uint64_t bytes;           /* generated text, as carried (the upper bound) */
	uint64_t text_events;     /* events that carried text (the lower bound) */
	struct usage usage;       /* the provider's, merged over events */
	bool span_ok;             /* the last event is a shape meter_repeat() can judge */
	uint32_t span_at, span_len; /* its text member's string in its data */
	uint8_t prefix_len;       /* bytes of `prefix`, 0: none yet; never changes once set */
	char prefix[200];         /* what the first chunk had before its choices/delta */
	uint32_t loop_len;        /* bytes in loop_text */
	uint64_t loop_checked;    /* `bytes` at the last loop check */
	char loop_text[METER_LOOP_WINDOW];
};

void meter_init(struct meter *m, uint8_t format, bool drop_usage_chunk);
/* One event of the stream. */
enum meter_verdict meter_event(struct meter *m, const struct sse_event *ev);
/*
 * Whether the event meter_event() just judged METER_PASS can stand for
 * its repeats: its data is JSON with exactly one text member with text,
 * that string at data[*at, *at + *len), and no "usage" key. An event of
 * the same type whose data is the same bytes except for that string, and
 * whose string has no unescaped '"', is then judged by meter_repeat() as
 * meter_event() would judge it (the walk depends only on the bytes before
 * a point and does not look into the string; the state it starts from,
 * the shared prefix, never changes once set). This holds for the rest of
 * the stream.
 */
bool meter_span(const struct meter *m, uint32_t *at, uint32_t *len);
/* Judges such a repeat given its string, text[0..n): METER_PASS, or
 * METER_LOOP. */
enum meter_verdict meter_repeat(struct meter *m, const char *text, size_t n);

/* Output tokens so far: the provider's count if it gave one, else the
 * upper bound, at most cap. */
uint64_t meter_output_tokens(const struct meter *m, uint64_t cap);

/* Exposed for tests: whether text ends in a block repeated per the rule. */
bool meter_is_loop(const char *text, size_t len);

#endif
