/*
 * mockllm_reply.c — what mockllm answers: the decision for a parsed
 * request, every non-stream body, every SSE event and every error
 * injection, driven by one resumable generator, reply_pump().
 *
 * A reply is a small state machine kept in the connection (struct reply):
 *
 *   WAIT     first-byte delay (non-stream: plus the whole generation time)
 *   START    stream: the head and the opening events; otherwise everything
 *   CONTENT  one content event per step, each after its own token delay
 *   FINISH   the closing events and the chunked terminator
 *   IDLE     done; the connection parses its next request
 *
 * The pump runs the machine as far as it can and stops when a delay is
 * pending (the worker's timer heap calls it again at the deadline) or when
 * the unsent output passes its high-water mark (the loop calls it again as
 * the socket drains). So a delayed stream never holds up other connections
 * and a million-token stream never sits in memory.
 *
 * Bodies and events are built in the worker's scratch buffer, then framed
 * into the connection's output buffer: Content-Length, one HTTP chunk per
 * SSE event (as real providers send them), or delimited by close for an
 * HTTP/1.0 stream. The buffers live as long as their owners, so once they
 * have grown to their working size the request path allocates nothing.
 *
 * The text is deterministic: output token i is word (i*7+3)%64 of a fixed
 * list plus one space (with x-mock-loop, word i%8 of one sentence), and
 * every usage block counts exactly the tokens the reply carried.
 */
#include <errno.h>
#include <stdio.h>

#include "mockllm.h"

/* Bytes any single head, event or body needs besides the model and text. */
#define PIECE_OVERHEAD 640
#define GARBAGE_BYTES  200
#define CREATED        "1700000000"

/* ---- the deterministic text ---- */

#define WORDS 64

/* Every word is at most 7 letters, so a token is at most 8 bytes. */
static const char *const word_list[WORDS] = {
	"the",   "quick", "brown", "fox",   "jumps", "over",   "a",     "lazy",
	"dog",   "while", "small", "cat",   "sat",   "on",     "the",   "warm",
	"mat",   "and",   "read",  "an",    "old",   "book",   "about", "river",
	"stone", "green", "hill",  "light", "rain",  "fell",   "softly","near",
	"open",  "door",  "where", "bird",  "sang",  "sweet",  "song",  "at",
	"dawn",  "every", "day",   "we",    "walk",  "along",  "quiet", "road",
	"to",    "see",   "bright","sky",   "clear", "blue",   "water", "under",
	"tall",  "trees", "then",  "rest",  "by",    "fire",   "until", "night",
};

/* x-mock-loop: one sentence, repeated, for loop-detection tests. */
static const char *const loop_sentence[8] = {
	"please", "call", "the", "same", "tool", "again", "right", "now",
};

/*
 * The text repeats every CYCLE tokens: four passes over the words, each
 * in another order, so that it has no period shorter than about 1.3 KB —
 * longer than tollgate's loop detector looks (net/meter.c), as real prose
 * is. tokens 0..CYCLE-1 are written out twice, with where each token
 * starts (start[2 * CYCLE] is the end), so the text of any run of tokens
 * is whole cycles plus one slice of this. Built once at start, read-only
 * afterwards.
 */
#define CYCLE (4 * WORDS)

struct token_text {
	uint32_t start[2 * CYCLE + 1];
	uint32_t cycle_len;                     /* bytes of CYCLE tokens */
	char bytes[2 * CYCLE * 8];
};

static struct token_text plain_text, loop_text;
static unsigned char garbage[GARBAGE_BYTES];

static void token_text_build(struct token_text *t, bool loop)
{
	uint32_t at = 0;
	for (uint32_t i = 0; i < 2 * CYCLE; i++) {
		uint32_t k = i % CYCLE;
		const char *word = loop ? loop_sentence[i % 8]
					: word_list[(k * 7 + 3 + k / WORDS * 13) % WORDS];
		size_t n = strlen(word);
		t->start[i] = at;
		memcpy(t->bytes + at, word, n);
		t->bytes[at + n] = ' ';
		at += (uint32_t)n + 1;
	}
	t->start[2 * CYCLE] = at;
	t->cycle_len = t->start[CYCLE];
}

void reply_tables_init(void)
{
	token_text_build(&plain_text, false);
	token_text_build(&loop_text, true);
	/* Starts with a non-ASCII byte, so nothing mistakes it for "HTTP/". */
	for (unsigned i = 0; i < GARBAGE_BYTES; i++)
		garbage[i] = (unsigned char)((i * 151u + 7u) ^ 0xa5u);
}

static const struct token_text *text_of(const struct conn *c)
{
	return c->req.knobs.loop == 1 ? &loop_text : &plain_text;
}

/* Bytes of tokens [from, from + n). */
static size_t text_len(const struct token_text *t, uint32_t from, uint32_t n)
{
	uint32_t i = from % CYCLE, rest = n % CYCLE;
	return (size_t)(n / CYCLE) * t->cycle_len + (t->start[i + rest] - t->start[i]);
}

/* Appends tokens [from, from + n); the caller reserved text_len() bytes. */
static void text_put(struct buf *b, const struct token_text *t, uint32_t from, uint32_t n)
{
	uint32_t i = from % CYCLE;
	for (; n >= CYCLE; n -= CYCLE)
		buf_put(b, t->bytes + t->start[i], t->cycle_len);
	buf_put(b, t->bytes + t->start[i], t->start[i + n] - t->start[i]);
}

/* ---- small writers (callers reserve) ---- */

static void buf_put_str(struct buf *b, const char *s)
{
	buf_put(b, s, strlen(s));
}

static void put_model(struct buf *b, const struct request *r)
{
	buf_lit(b, "\"model\":\"");
	buf_put(b, r->body.model, r->body.model_len);
	buf_lit(b, "\"");
}

static void put_openai_usage(struct buf *b, uint32_t prompt, uint32_t completion)
{
	buf_lit(b, "\"usage\":{\"prompt_tokens\":");
	buf_put_u64(b, prompt);
	buf_lit(b, ",\"completion_tokens\":");
	buf_put_u64(b, completion);
	buf_lit(b, ",\"total_tokens\":");
	buf_put_u64(b, (uint64_t)prompt + completion);
	buf_lit(b, "}");
}

static bool is_tool_call(const struct conn *c)
{
	return c->req.route == ROUTE_CHAT && c->req.knobs.tool_call == 1;
}

static const char *openai_finish(const struct conn *c)
{
	if (c->reply.capped)
		return "length";
	return is_tool_call(c) ? "tool_calls" : "stop";
}

static const char *anthropic_stop(const struct conn *c)
{
	return c->reply.capped ? "max_tokens" : "end_turn";
}

/* The worker's scratch buffer, emptied, with room for `need` bytes. */
static struct buf *scratch(struct conn *c, size_t need)
{
	struct buf *b = &c->w->scratch;
	b->len = 0;
	return buf_reserve(b, need) == 0 ? b : NULL;
}

/* ---- heads and framing ---- */

static const char *reason_of(int status)
{
	const char *s = http_status_str((enum http_status)status);
	return s[0] == '<' ? "Mock Status" : s;     /* "<unknown>" */
}

static void put_status_line(struct buf *b, int status)
{
	buf_lit(b, "HTTP/1.1 ");
	buf_put_u64(b, (uint64_t)status);
	buf_lit(b, " ");
	buf_put_str(b, reason_of(status));
	buf_lit(b, "\r\n");
}

/* Connection: close when closing; keep-alive spelled out for HTTP/1.0. */
static void put_connection(struct buf *b, const struct conn *c)
{
	if (c->reply.closing)
		buf_lit(b, "Connection: close\r\n");
	else if (c->req.http10)
		buf_lit(b, "Connection: keep-alive\r\n");
}

/*
 * Queues a complete non-stream response: head, then the body framed by
 * Content-Length or, with x-mock-chunked, as chunks of up to 256 bytes.
 * 204 and 304 carry no body; a HEAD request gets the head alone.
 * Returns 0 or -ENOMEM.
 */
static int frame_response(struct conn *c, int status, const char *content_type,
			  const char *body, size_t len)
{
	struct buf *out = &c->out;
	bool chunked = c->reply.framing == FRAME_CHUNKED;
	if (status == 204 || status == 304)
		len = 0;
	if (buf_reserve(out, PIECE_OVERHEAD + len + (len / 256 + 1) * 8) < 0)
		return -ENOMEM;
	put_status_line(out, status);
	buf_lit(out, "Content-Type: ");
	buf_put_str(out, content_type);
	if (status == 204 || status == 304) {
		buf_lit(out, "\r\n");
	} else if (chunked) {
		buf_lit(out, "\r\nTransfer-Encoding: chunked\r\n");
	} else {
		buf_lit(out, "\r\nContent-Length: ");
		buf_put_u64(out, len);
		buf_lit(out, "\r\n");
	}
	put_connection(out, c);
	buf_lit(out, "\r\n");
	if (c->parser.method == HTTP_HEAD)
		return 0;
	if (!chunked || status == 204 || status == 304) {
		buf_put(out, body, len);
		return 0;
	}
	for (size_t at = 0; at < len; at += 256) {
		size_t n = MOCK_MIN(len - at, (size_t)256);
		buf_put_hex(out, n);
		buf_lit(out, "\r\n");
		buf_put(out, body + at, n);
		buf_lit(out, "\r\n");
	}
	buf_lit(out, "0\r\n\r\n");
	return 0;
}

static int frame_json(struct conn *c, int status, const struct buf *body)
{
	return frame_response(c, status, "application/json", body->data, body->len);
}

static int put_stream_head(struct conn *c)
{
	struct buf *out = &c->out;
	if (buf_reserve(out, PIECE_OVERHEAD) < 0)
		return -ENOMEM;
	buf_lit(out, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
		     "Cache-Control: no-cache\r\n");
	if (c->reply.framing == FRAME_CHUNKED)
		buf_lit(out, "Transfer-Encoding: chunked\r\n");
	put_connection(out, c);
	buf_lit(out, "\r\n");
	return 0;
}

/* Queues one SSE event as one HTTP chunk (or raw, for HTTP/1.0). */
static int frame_event(struct conn *c, const struct buf *event)
{
	struct buf *out = &c->out;
	if (buf_reserve(out, event->len + 32) < 0)
		return -ENOMEM;
	if (c->reply.framing == FRAME_CHUNKED) {
		buf_put_hex(out, event->len);
		buf_lit(out, "\r\n");
		buf_put(out, event->data, event->len);
		buf_lit(out, "\r\n");
	} else {
		buf_put(out, event->data, event->len);
	}
	return 0;
}

static int put_terminator(struct conn *c)
{
	if (c->reply.framing != FRAME_CHUNKED)
		return 0;
	if (buf_reserve(&c->out, 8) < 0)
		return -ENOMEM;
	buf_lit(&c->out, "0\r\n\r\n");
	return 0;
}

/* ---- simple replies ---- */

static int reply_health(struct conn *c)
{
	return frame_response(c, 200, "text/plain", "ok", 2);
}

static int reply_stats(struct conn *c)
{
	const struct worker *all = c->w->all;
	uint64_t accepted = 0, closed = 0, requests = 0, by_peer = 0;
	for (unsigned i = 0; i < c->w->cfg->threads; i++) {
		const struct mock_counters *s = &all[i].stats;
		accepted += atomic_load_explicit(&s->accepted, memory_order_relaxed);
		closed += atomic_load_explicit(&s->closed, memory_order_relaxed);
		requests += atomic_load_explicit(&s->requests, memory_order_relaxed);
		by_peer += atomic_load_explicit(&s->closed_by_peer, memory_order_relaxed);
	}
	struct buf *b = scratch(c, PIECE_OVERHEAD);
	if (!b)
		return -ENOMEM;
	buf_lit(b, "{\"accepted\":");
	buf_put_u64(b, accepted);
	buf_lit(b, ",\"open\":");
	buf_put_u64(b, accepted > closed ? accepted - closed : 0);
	buf_lit(b, ",\"requests\":");
	buf_put_u64(b, requests);
	buf_lit(b, ",\"closed_by_peer\":");
	buf_put_u64(b, by_peer);
	buf_lit(b, "}");
	return frame_json(c, 200, b);
}

/* An error in the shape of the route's provider (OpenAI unless /v1/messages). */
static int reply_error(struct conn *c, int status, const char *type,
		       const char *message, const char *code)
{
	struct buf *b = scratch(c, PIECE_OVERHEAD + strlen(message));
	if (!b)
		return -ENOMEM;
	if (c->req.route == ROUTE_MESSAGES) {
		buf_lit(b, "{\"type\":\"error\",\"error\":{\"type\":\"");
		buf_put_str(b, type);
		buf_lit(b, "\",\"message\":\"");
		buf_put_str(b, message);
		buf_lit(b, "\"}}");
	} else {
		buf_lit(b, "{\"error\":{\"message\":\"");
		buf_put_str(b, message);
		buf_lit(b, "\",\"type\":\"");
		buf_put_str(b, type);
		buf_lit(b, "\",\"code\":\"");
		buf_put_str(b, code);
		buf_lit(b, "\"}}");
	}
	return frame_json(c, status, b);
}

/* x-mock-status: OpenAI type "mock", code "mock_NNN"; Anthropic api_error. */
static int reply_injected_status(struct conn *c)
{
	int status = (int)c->req.knobs.status;
	char code[16];
	snprintf(code, sizeof(code), "mock_%d", status);
	if (c->req.route == ROUTE_MESSAGES)
		return reply_error(c, status, "api_error", "mock error", code);
	return reply_error(c, status, "mock", "mock error", code);
}

static int reply_garbage(struct conn *c)
{
	if (buf_reserve(&c->out, GARBAGE_BYTES) < 0)
		return -ENOMEM;
	buf_put(&c->out, garbage, GARBAGE_BYTES);
	return 0;
}

/* ---- non-stream bodies ---- */

static void body_chat(struct buf *b, const struct conn *c)
{
	const struct reply *rp = &c->reply;
	buf_lit(b, "{\"id\":\"chatcmpl-mock-");
	buf_put_u64(b, rp->id);
	buf_lit(b, "\",\"object\":\"chat.completion\",\"created\":" CREATED ",");
	put_model(b, &c->req);
	if (is_tool_call(c))
		buf_lit(b, ",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\","
			   "\"content\":null,\"tool_calls\":[{\"id\":\"call_mock\","
			   "\"type\":\"function\",\"function\":{\"name\":\"lookup\","
			   "\"arguments\":\"");
	else
		buf_lit(b, ",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\","
			   "\"content\":\"");
	text_put(b, text_of(c), 0, rp->total_tokens);
	if (is_tool_call(c))
		buf_lit(b, "\"}}]},\"finish_reason\":\"");
	else
		buf_lit(b, "\"},\"finish_reason\":\"");
	buf_put_str(b, openai_finish(c));
	buf_lit(b, "\"}],");
	put_openai_usage(b, rp->prompt_tokens, rp->total_tokens);
	buf_lit(b, "}");
}

static void body_completion(struct buf *b, const struct conn *c)
{
	const struct reply *rp = &c->reply;
	buf_lit(b, "{\"id\":\"cmpl-mock-");
	buf_put_u64(b, rp->id);
	buf_lit(b, "\",\"object\":\"text_completion\",\"created\":" CREATED ",");
	put_model(b, &c->req);
	buf_lit(b, ",\"choices\":[{\"text\":\"");
	text_put(b, text_of(c), 0, rp->total_tokens);
	buf_lit(b, "\",\"index\":0,\"finish_reason\":\"");
	buf_put_str(b, openai_finish(c));
	buf_lit(b, "\"}],");
	put_openai_usage(b, rp->prompt_tokens, rp->total_tokens);
	buf_lit(b, "}");
}

static void body_embedding(struct buf *b, const struct conn *c)
{
	buf_lit(b, "{\"object\":\"list\",\"data\":[{\"object\":\"embedding\",\"index\":0,"
		   "\"embedding\":[0.1,0.2,0.3,0.4]}],");
	put_model(b, &c->req);
	buf_lit(b, ",\"usage\":{\"prompt_tokens\":");
	buf_put_u64(b, c->reply.prompt_tokens);
	buf_lit(b, ",\"total_tokens\":");
	buf_put_u64(b, c->reply.prompt_tokens);
	buf_lit(b, "}}");
}

static void body_message(struct buf *b, const struct conn *c)
{
	const struct reply *rp = &c->reply;
	buf_lit(b, "{\"id\":\"msg_mock_");
	buf_put_u64(b, rp->id);
	buf_lit(b, "\",\"type\":\"message\",\"role\":\"assistant\",");
	put_model(b, &c->req);
	buf_lit(b, ",\"content\":[{\"type\":\"text\",\"text\":\"");
	text_put(b, text_of(c), 0, rp->total_tokens);
	buf_lit(b, "\"}],\"stop_reason\":\"");
	buf_put_str(b, anthropic_stop(c));
	buf_lit(b, "\",\"stop_sequence\":null,\"usage\":{\"input_tokens\":");
	buf_put_u64(b, rp->prompt_tokens);
	buf_lit(b, ",\"output_tokens\":");
	buf_put_u64(b, rp->total_tokens);
	buf_lit(b, "}}");
}

static int reply_complete(struct conn *c)
{
	size_t need = PIECE_OVERHEAD + c->req.body.model_len +
		      text_len(text_of(c), 0, c->reply.total_tokens);
	struct buf *b = scratch(c, need);
	if (!b)
		return -ENOMEM;
	switch (c->req.route) {
	case ROUTE_CHAT:        body_chat(b, c); break;
	case ROUTE_COMPLETIONS: body_completion(b, c); break;
	case ROUTE_EMBEDDINGS:  body_embedding(b, c); break;
	default:                body_message(b, c); break;
	}
	return frame_json(c, 200, b);
}

/* ---- stream events ---- */

/* `data: {"id":"<prefix><n>","object":"<object>","created":...,"model":"M",` */
static void openai_event_open(struct buf *b, const struct conn *c)
{
	bool chat = c->req.route == ROUTE_CHAT;
	buf_lit(b, "data: {\"id\":\"");
	if (chat)
		buf_lit(b, "chatcmpl-mock-");
	else
		buf_lit(b, "cmpl-mock-");
	buf_put_u64(b, c->reply.id);
	if (chat)
		buf_lit(b, "\",\"object\":\"chat.completion.chunk\",\"created\":" CREATED ",");
	else
		buf_lit(b, "\",\"object\":\"text_completion\",\"created\":" CREATED ",");
	put_model(b, &c->req);
	buf_lit(b, ",");
}

/* `event: <name>\ndata: ` — the Anthropic event prefix. */
static void anthropic_event_open(struct buf *b, const char *name)
{
	buf_lit(b, "event: ");
	buf_put_str(b, name);
	buf_lit(b, "\ndata: ");
}

/* The opening events: chat's role delta, Anthropic's message_start trio. */
static int stream_prelude(struct conn *c)
{
	struct buf *b = scratch(c, 3 * PIECE_OVERHEAD + c->req.body.model_len);
	if (!b)
		return -ENOMEM;
	if (c->req.route == ROUTE_CHAT) {
		openai_event_open(b, c);
		buf_lit(b, "\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\","
			   "\"content\":\"\"},\"finish_reason\":null}]}\n\n");
		return frame_event(c, b);
	}
	if (c->req.route != ROUTE_MESSAGES)
		return 0;
	anthropic_event_open(b, "message_start");
	buf_lit(b, "{\"type\":\"message_start\",\"message\":{\"id\":\"msg_mock_");
	buf_put_u64(b, c->reply.id);
	buf_lit(b, "\",\"type\":\"message\",\"role\":\"assistant\",");
	put_model(b, &c->req);
	buf_lit(b, ",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,"
		   "\"usage\":{\"input_tokens\":");
	buf_put_u64(b, c->reply.prompt_tokens);
	buf_lit(b, ",\"output_tokens\":1}}}\n\n");
	if (frame_event(c, b) < 0)
		return -ENOMEM;
	b->len = 0;
	anthropic_event_open(b, "content_block_start");
	buf_lit(b, "{\"type\":\"content_block_start\",\"index\":0,"
		   "\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n");
	if (frame_event(c, b) < 0)
		return -ENOMEM;
	b->len = 0;
	anthropic_event_open(b, "ping");
	buf_lit(b, "{\"type\":\"ping\"}\n\n");
	return frame_event(c, b);
}

/* One content event carrying tokens [from, from + n). */
static int stream_content(struct conn *c, uint32_t from, uint32_t n)
{
	const struct token_text *t = text_of(c);
	struct buf *b = scratch(c, PIECE_OVERHEAD + c->req.body.model_len + text_len(t, from, n));
	if (!b)
		return -ENOMEM;
	switch (c->req.route) {
	case ROUTE_CHAT:
		openai_event_open(b, c);
		if (!is_tool_call(c))
			buf_lit(b, "\"choices\":[{\"index\":0,\"delta\":{\"content\":\"");
		else if (from == 0)
			buf_lit(b, "\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,"
				   "\"id\":\"call_mock\",\"type\":\"function\",\"function\":"
				   "{\"name\":\"lookup\",\"arguments\":\"");
		else
			buf_lit(b, "\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,"
				   "\"function\":{\"arguments\":\"");
		text_put(b, t, from, n);
		if (is_tool_call(c))
			buf_lit(b, "\"}}]},\"finish_reason\":null}]}\n\n");
		else
			buf_lit(b, "\"},\"finish_reason\":null}]}\n\n");
		break;
	case ROUTE_COMPLETIONS:
		openai_event_open(b, c);
		buf_lit(b, "\"choices\":[{\"text\":\"");
		text_put(b, t, from, n);
		buf_lit(b, "\",\"index\":0,\"finish_reason\":null}]}\n\n");
		break;
	default:
		anthropic_event_open(b, "content_block_delta");
		buf_lit(b, "{\"type\":\"content_block_delta\",\"index\":0,"
			   "\"delta\":{\"type\":\"text_delta\",\"text\":\"");
		text_put(b, t, from, n);
		buf_lit(b, "\"}}\n\n");
	}
	return frame_event(c, b);
}

/* OpenAI: the finish event, the usage event if asked for, [DONE]. */
static int stream_finish_openai(struct conn *c, struct buf *b)
{
	openai_event_open(b, c);
	if (c->req.route == ROUTE_CHAT)
		buf_lit(b, "\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"");
	else
		buf_lit(b, "\"choices\":[{\"text\":\"\",\"index\":0,\"finish_reason\":\"");
	buf_put_str(b, openai_finish(c));
	buf_lit(b, "\"}]}\n\n");
	if (frame_event(c, b) < 0)
		return -ENOMEM;
	if (c->req.body.include_usage) {
		b->len = 0;
		openai_event_open(b, c);
		buf_lit(b, "\"choices\":[],");
		put_openai_usage(b, c->reply.prompt_tokens, c->reply.total_tokens);
		buf_lit(b, "}\n\n");
		if (frame_event(c, b) < 0)
			return -ENOMEM;
	}
	b->len = 0;
	buf_lit(b, "data: [DONE]\n\n");
	return frame_event(c, b);
}

/* Anthropic: content_block_stop, message_delta with usage, message_stop. */
static int stream_finish_anthropic(struct conn *c, struct buf *b)
{
	anthropic_event_open(b, "content_block_stop");
	buf_lit(b, "{\"type\":\"content_block_stop\",\"index\":0}\n\n");
	if (frame_event(c, b) < 0)
		return -ENOMEM;
	b->len = 0;
	anthropic_event_open(b, "message_delta");
	buf_lit(b, "{\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"");
	buf_put_str(b, anthropic_stop(c));
	buf_lit(b, "\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":");
	buf_put_u64(b, c->reply.total_tokens);
	buf_lit(b, "}}\n\n");
	if (frame_event(c, b) < 0)
		return -ENOMEM;
	b->len = 0;
	anthropic_event_open(b, "message_stop");
	buf_lit(b, "{\"type\":\"message_stop\"}\n\n");
	return frame_event(c, b);
}

static int stream_finish(struct conn *c)
{
	struct buf *b = scratch(c, 2 * PIECE_OVERHEAD + c->req.body.model_len);
	if (!b)
		return -ENOMEM;
	int rc = c->req.route == ROUTE_MESSAGES ? stream_finish_anthropic(c, b)
						: stream_finish_openai(c, b);
	return rc < 0 ? rc : put_terminator(c);
}

/* ---- deciding ---- */

/*
 * Picks the action for c->req and fills the reply's numbers. Injections
 * come before body validation, so x-mock-status works with any body.
 */
static enum reply_action reply_decide(struct conn *c)
{
	struct request *r = &c->req;
	struct reply *rp = &c->reply;
	switch (r->route) {
	case ROUTE_HEALTH:    return ACT_HEALTH;
	case ROUTE_STATS:     return ACT_STATS;
	case ROUTE_NOT_FOUND: return ACT_NOT_FOUND;
	default:              break;
	}
	if (r->knobs.garbage == 1)
		return ACT_GARBAGE;
	if (r->knobs.status >= 0)
		return ACT_STATUS;
	const char *body = c->body.data ? c->body.data : "";
	if (json_scan_request(body, r->body_len, &r->body, &rp->error) < 0)
		return ACT_BAD_REQUEST;
	if (!r->body.model || r->body.model_len == 0) {
		rp->error = "model is required";
		return ACT_BAD_REQUEST;
	}
	if (r->body.model_len > MOCK_MODEL_MAX) {
		rp->error = "model is too long";
		return ACT_BAD_REQUEST;
	}
	int64_t tokens = r->knobs.tokens, cap = r->body.max_tokens;
	rp->capped = cap >= 0 && cap < tokens;
	rp->total_tokens = (uint32_t)(rp->capped ? cap : tokens);
	if (r->route == ROUTE_EMBEDDINGS)
		rp->total_tokens = 0;
	return r->body.stream && r->route != ROUTE_EMBEDDINGS ? ACT_STREAM : ACT_COMPLETE;
}

/* The provider routes, where the x-mock-* knobs apply. */
static bool route_is_api(enum route route)
{
	return route == ROUTE_CHAT || route == ROUTE_COMPLETIONS ||
	       route == ROUTE_EMBEDDINGS || route == ROUTE_MESSAGES;
}

/*
 * Counts the request (all but /health and /mock/stats, so tests can diff
 * the counter around their own calls), picks framing and the first phase,
 * and runs the reply as far as it goes at once.
 */
void reply_begin(struct conn *c)
{
	struct request *r = &c->req;
	struct reply *rp = &c->reply;
	struct worker *w = c->w;
	*rp = (struct reply){
		.closing = !r->keep_alive || r->knobs.close == 1,
		.id = w->seq++ * w->cfg->threads + w->index + 1,
		.prompt_tokens = (uint32_t)((r->body_len + 3) / 4),
	};
	r->body = (struct body_fields){ .max_tokens = -1 };
	if (r->route != ROUTE_HEALTH && r->route != ROUTE_STATS)
		counter_bump(&w->stats.requests);
	bool api = route_is_api(r->route);
	if (api && r->knobs.stall == 1) {
		c->state = CONN_STALLED;        /* read, counted, never answered */
		return;
	}
	rp->action = reply_decide(c);
	if (rp->action == ACT_STREAM)
		rp->framing = r->http10 ? FRAME_EOF : FRAME_CHUNKED;
	else if (r->knobs.chunked == 1 && !r->http10)
		rp->framing = FRAME_CHUNKED;
	if (rp->action == ACT_GARBAGE || rp->framing == FRAME_EOF)
		rp->closing = true;
	rp->phase = api && r->knobs.first_byte_delay_ms > 0 ? REPLY_WAIT : REPLY_START;
	if (rp->action == ACT_COMPLETE && r->knobs.token_delay_us > 0 && rp->total_tokens)
		rp->phase = REPLY_WAIT;
	reply_pump(c);
}

void reply_refuse(struct conn *c, int status)
{
	c->reply = (struct reply){ .closing = true, .action = ACT_BAD_REQUEST };
	c->req.route = ROUTE_NOT_FOUND;         /* framing failed: OpenAI shape */
	counter_bump(&c->w->stats.requests);
	const char *message = status == 413 ? "request body too large"
			    : status == 431 ? "request header fields too large"
			    : "malformed HTTP request";
	const char *code = status == 413 ? "request_too_large"
			 : status == 431 ? "headers_too_large" : "bad_request";
	if (reply_error(c, status, "invalid_request_error", message, code) < 0)
		c->state = CONN_RESETTING;
	else
		c->state = CONN_CLOSING;
}

/* ---- the generator ---- */

/* Total wait before the head: first byte, plus generation for non-stream. */
static uint64_t reply_wait_ns(const struct conn *c)
{
	const struct knobs *k = &c->req.knobs;
	uint64_t us = (uint64_t)k->first_byte_delay_ms * 1000;
	if (c->reply.action == ACT_COMPLETE)
		us += (uint64_t)k->token_delay_us * c->reply.total_tokens;
	return us * 1000;
}

static void reply_end(struct conn *c)
{
	c->reply.phase = REPLY_IDLE;
	if (c->reply.closing)
		c->state = CONN_CLOSING;
}

/* Emits the head (and for non-stream replies everything). Returns 0 or -ENOMEM. */
static int reply_start(struct conn *c)
{
	struct reply *rp = &c->reply;
	size_t before = c->out.len;
	int rc;
	switch (rp->action) {
	case ACT_HEALTH:      rc = reply_health(c); break;
	case ACT_STATS:       rc = reply_stats(c); break;
	case ACT_NOT_FOUND:   rc = reply_error(c, 404, "invalid_request_error",
					       "no such route", "not_found"); break;
	case ACT_BAD_REQUEST: rc = reply_error(c, 400, "invalid_request_error",
					       rp->error, "invalid_request"); break;
	case ACT_STATUS:      rc = reply_injected_status(c); break;
	case ACT_GARBAGE:     rc = reply_garbage(c); break;
	case ACT_COMPLETE:    rc = reply_complete(c); break;
	default:
		rc = put_stream_head(c);
		if (rc == 0)
			rc = stream_prelude(c);
		rp->phase = REPLY_CONTENT;
		return rc;
	}
	if (rc < 0)
		return rc;
	int64_t cut = c->req.knobs.reset_after;
	if (cut >= 0 && rp->action != ACT_GARBAGE) {
		c->out.len = MOCK_MIN(c->out.len, before + (size_t)cut);
		rp->phase = REPLY_IDLE;
		c->state = CONN_RESETTING;
		return 0;
	}
	reply_end(c);
	return 0;
}

/*
 * One step of the CONTENT phase: stop for x-mock-reset-after or
 * x-mock-stall-after, wait the token delay, or emit one event.
 * Returns 1 if it emitted or changed phase, 0 if it is waiting, -ENOMEM.
 */
static int reply_content_step(struct conn *c)
{
	struct reply *rp = &c->reply;
	const struct knobs *k = &c->req.knobs;
	bool all_sent = rp->sent_tokens == rp->total_tokens;
	if (k->reset_after >= 0 && (all_sent || rp->events_sent >= k->reset_after)) {
		rp->phase = REPLY_IDLE;
		c->state = CONN_RESETTING;
		return 1;
	}
	if (k->stall_after >= 0 && (all_sent || rp->events_sent >= k->stall_after)) {
		rp->phase = REPLY_IDLE;
		c->state = CONN_STALLED;
		return 1;
	}
	if (all_sent) {
		rp->phase = REPLY_FINISH;
		return 1;
	}
	uint32_t n = (uint32_t)MOCK_MIN((int64_t)(rp->total_tokens - rp->sent_tokens),
					k->tokens_per_event);
	if (k->token_delay_us > 0 && !rp->waited) {
		rp->waited = true;
		if (conn_timer_set(c, mono_now_ns() + (uint64_t)k->token_delay_us * n * 1000) == 0)
			return 0;
	}
	rp->waited = false;
	if (stream_content(c, rp->sent_tokens, n) < 0)
		return -ENOMEM;
	rp->sent_tokens += n;
	rp->events_sent++;
	return 1;
}

bool reply_pump(struct conn *c)
{
	struct reply *rp = &c->reply;
	bool progressed = false;
	while (rp->phase != REPLY_IDLE && c->state == CONN_READING &&
	       !timer_armed(&c->timer) && c->out.len - c->out_sent < MOCK_OUT_HIGH_WATER) {
		int rc = 1;     /* <0 out of memory, 0 waiting, >0 moved on */
		switch (rp->phase) {
		case REPLY_WAIT:
			if (!rp->waited) {
				rp->waited = true;
				if (conn_timer_set(c, mono_now_ns() + reply_wait_ns(c)) == 0) {
					rc = 0;
					break;
				}
			}
			rp->waited = false;
			rp->phase = REPLY_START;
			break;
		case REPLY_START:
			rc = reply_start(c);
			rc = rc < 0 ? rc : 1;
			break;
		case REPLY_CONTENT:
			rc = reply_content_step(c);
			break;
		case REPLY_FINISH:
			rc = stream_finish(c);
			if (rc == 0) {
				reply_end(c);
				rc = 1;
			}
			break;
		case REPLY_IDLE:
			break;
		}
		if (rc < 0) {           /* out of memory: drop this connection */
			rp->phase = REPLY_IDLE;
			c->state = CONN_RESETTING;
			return true;
		}
		if (rc == 0)
			return progressed;
		progressed = true;
	}
	return progressed;
}
