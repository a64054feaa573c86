/*
 * stream.h — metered relay of a streamed reply (SPEC §5): each event is
 * metered as it passes (net/meter.c) and the stream is cut off, cleanly,
 * when it must stop.
 *
 * A metered stream is re-framed: the provider's body is de-chunked in
 * place in the read buffer and sent to the agent as one chunk per read
 * (chunked to HTTP/1.1 agents, close-delimited to HTTP/1.0 ones), so that
 * it can end at any event boundary with a final event of tollgate's own
 * and a proper terminator, keeping the connection alive.
 */
#ifndef TOLLGATE_STREAM_H
#define TOLLGATE_STREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "net/conn_types.h"

/* A stream_lease stream reserves its output this many tokens at a time,
 * and extends when less than that is left. */
#define STREAM_LEASE_TOKENS 256

/* Whether the reply whose head just arrived is a stream to meter: a
 * budgeted call's 2xx text/event-stream reply. */
bool stream_wants(const struct exchange *ex);
/* Sets up its metering; false when out of memory (the caller refuses the
 * reply rather than relay it unmetered). */
bool stream_start(struct exchange *ex);
void stream_free(struct exchange *ex);

/* The reply head for the agent: the provider's framing fields are
 * dropped, ours added. Writes into ex->out after the status line. */
bool stream_head_framing(struct exchange *ex);

/*
 * A read of the reply body (in the provider's framing) in ring buffer
 * `bid`; `head`, if not NULL, is the agent's reply head to send first.
 * Meters it, forwards what may pass, and cuts the stream off if it must.
 */
void stream_relay(struct exchange *ex, char *data, size_t len, int32_t bid,
		  const char *head, size_t head_len);

/* The provider's reply broke off (reset, stall, reservation TTL): end the
 * agent's stream with an error event instead of a torn reply. */
void stream_end_early(struct exchange *ex, const char *code, const char *message);

/* The stream was cut or has ended: the exchange finishes once the agent
 * has it all. */
bool stream_done(const struct exchange *ex);
/* A scope was frozen (SPEC §6): if one of this stream's is, cut it now
 * when it waits for the provider, else as soon as its send completes
 * (stream_cut_pending). */
void stream_check_freeze(struct exchange *ex);
/* Applies a cut that had to wait for a send: true if it did (the
 * exchange goes on with the final event). */
bool stream_cut_pending(struct exchange *ex);
/* Why the stream was cut off, or NULL. */
const char *stream_cut_code(const struct exchange *ex);

/* Output tokens the stream has generated as far as we know (meter.h),
 * and the provider's input count if it gave one (else false). */
uint64_t stream_output_tokens(const struct exchange *ex);
bool stream_input_tokens(const struct exchange *ex, uint64_t *input, uint64_t *cached);

#endif
