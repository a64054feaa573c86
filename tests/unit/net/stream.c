/*
 * Unit tests for net/stream.c: a metered stream relayed in reads of any
 * size gives the agent the same events and the meter the same counts.
 *
 * The reference is the stream read one byte at a time: no event is ever
 * whole in a read then, so every event takes the full path (the SSE
 * parser, then meter_event()) and every chunk goes through the http
 * parser. Whole, split at every offset and in reads of a few sizes, the
 * same streams take the shortcuts instead (events that repeat the last
 * one's shape, chunks read without the parser); what the agent gets (the
 * body, de-chunked), the cut code and the meter's counts must not change.
 * Streams: OpenAI with escapes, the usage chunk we added (dropped; also
 * four of them, with events between), CRLF
 * lines, comments, multi-line data, text that would put a line end in a
 * shape's string; Anthropic's typed events; a loop cut, a token cap cut,
 * garbage; provider framing chunked per event, in odd chunk sizes, or by
 * Content-Length.
 *
 * The client, the ring, the budget and booking are stubbed: what
 * stream_relay() sends is collected.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Counts the events the shape shortcut judged: the whole reads must take
 * it, or this test would compare the full path with itself. */
#define meter_repeat counted_repeat
#include "net/stream.c"
#undef meter_repeat
#include "tests/unit/check.h"

enum meter_verdict meter_repeat(struct meter *m, const char *text, size_t n);
static unsigned repeats;

enum meter_verdict counted_repeat(struct meter *m, const char *text, size_t n)
{
	repeats++;
	return meter_repeat(m, text, n);
}

/* ---- stubs ---- */
static char sent[1 << 18];
static size_t sent_len;

void client_sendv(struct client *c, const struct iovec *iov, int n, int32_t bid)
{
	for (int i = 0; i < n; i++) {
		if (!iov[i].iov_len)
			continue;     /* (the head is NULL after the first read) */
		if (sent_len + iov[i].iov_len > sizeof(sent))
			abort();
		memcpy(sent + sent_len, iov[i].iov_base, iov[i].iov_len);
		sent_len += iov[i].iov_len;
	}
}
void client_abort(struct client *c) { abort(); }
void ring_buf_return(struct ring *r, int32_t ref) {}
void proxy_client_sent(struct exchange *ex) {}
void upstream_close(struct upstream *u) {}
bool booking_reserve(struct exchange *ex) { return true; }
int budget_reserve(struct budget_scope *const *scopes, int n, uint32_t shard, int64_t usd,
		   const struct budget_clock *clock, uint32_t *over)
{
	*over = 0;
	return -1;
}
void decide_ceiling_code(const char *scope_kind, char *out, size_t cap) {}

/* ---- one relay ---- */
struct result {
	char body[1 << 17];       /* what the agent got, de-chunked */
	size_t len;
	char log[1 << 17];        /* those bytes as events: "[type|data]..." */
	size_t log_len;
	char cut[48];             /* the cut code, "" if none */
	uint64_t bytes, text_events, events, output_tokens;
	bool ended;
};

static struct shard shard;
static struct client client = { .shard = &shard };
static struct cfg_provider provider = { .name = "p" };
static struct cfg_model model = { .name = "m" };
static struct exchange ex;
static char resp_head[16384], buf[1 << 17];

static int collect(struct http_msg *m, const char *data, size_t len)
{
	struct result *r = m->owner;
	if (r->len + len > sizeof(r->body))
		abort();
	memcpy(r->body + r->len, data, len);
	r->len += len;
	return 0;
}

static int log_event(void *arg, const struct sse_event *ev)
{
	struct result *r = arg;
	if (ev->has_data)
		r->log_len += (size_t)snprintf(r->log + r->log_len, sizeof(r->log) - r->log_len,
					       "[%.*s|%.*s]",
						  (int)ev->type_len, ev->type, (int)ev->data_len,
						  ev->data);
	return 0;
}

/* The agent's side: the chunked reply de-chunked by the http parser, and
 * its events. */
static void dechunk(struct result *r)
{
	static const char head[] = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
	static char agent_head[1024];
	struct http_msg m;
	http1_init(&m, HTTP_RESPONSE, agent_head, sizeof(agent_head), collect, r);
	size_t n = http1_feed(&m, head, sizeof(head) - 1);
	CHECK(m.event == HTTP_HEAD_DONE);
	http1_resume(&m);
	http1_feed(&m, head + n, 1);   /* the head's final LF */
	http1_feed(&m, sent, sent_len);
	r->ended = m.event == HTTP_MESSAGE_DONE;
	static struct sse_parser p;
	sse_init(&p);
	r->log_len = 0;
	CHECK(sse_feed(&p, r->body, r->len, log_event, r) == (long)r->len);
}

/*
 * Relays reply[0..len) (head and body) in reads of `step` bytes, or split
 * once at `cut` when step is 0.
 */
static void relay(const char *reply, size_t len, size_t step, size_t cut, int format,
		  uint32_t max_tokens, struct result *r)
{
	memset(r, 0, offsetof(struct result, cut) + sizeof(r->cut));
	sent_len = 0;
	memcpy(buf, reply, len);
	ex = (struct exchange){ .client = &client, .provider = &provider, .model = &model,
				.inject_usage = format == FORMAT_OPENAI, .allowed = true,
				.max_output_tokens = max_tokens, .status = 200 };
	provider.format = (enum provider_format)format;
	ex.req.parser.http_major = ex.req.parser.http_minor = 1;
	http1_init(&ex.resp, HTTP_RESPONSE, resp_head, sizeof(resp_head), NULL, &ex);
	size_t head = http1_feed(&ex.resp, buf, len);
	CHECK(ex.resp.event == HTTP_HEAD_DONE);
	http1_resume(&ex.resp);
	CHECK(stream_wants(&ex) && stream_start(&ex));
	size_t off = head;   /* the head's final LF comes first, as in proxy.c */
	while (off < len && !stream_done(&ex)) {
		size_t n = step ? MIN(step, len - off) : off < head + cut ? head + cut - off : len - off;
		if (!n)
			n = len - off;
		stream_relay(&ex, buf + off, n, -1, NULL, 0);
		off += n;
	}
	if (!stream_done(&ex) && ex.resp_close_delimited) {
		http1_feed_eof(&ex.resp);
		ex.resp_complete = true;
		stream_relay(&ex, NULL, 0, -1, NULL, 0);
	}
	const char *code = stream_cut_code(&ex);
	snprintf(r->cut, sizeof(r->cut), "%s", code ? code : "");
	r->bytes = ex.stream->meter.bytes;
	r->text_events = ex.stream->meter.text_events;
	r->events = ex.stream->meter.events;
	r->output_tokens = stream_output_tokens(&ex);
	stream_free(&ex);
	dechunk(r);
}

/* The same events and counts; byte for byte too when `exact`. (A CRLF
 * stream read with a split between an event's last CR and LF passes the
 * LF on with the next event, or not at all when that one is dropped: the
 * same events either way.) */
static bool same(const struct result *a, const struct result *b, bool exact)
{
	return (!exact || (a->len == b->len && !memcmp(a->body, b->body, a->len))) &&
	       a->log_len == b->log_len && !memcmp(a->log, b->log, a->log_len) &&
	       !strcmp(a->cut, b->cut) &&
	       a->bytes == b->bytes && a->text_events == b->text_events && a->events == b->events &&
	       a->output_tokens == b->output_tokens && a->ended == b->ended;
}

static struct result ref, got;

/* Every way of reading `reply` against the byte-by-byte reference. */
static void check_reads(const char *name, const char *reply, size_t len, int format,
			uint32_t max_tokens, const char *want_cut)
{
	repeats = 0;
	bool exact = !strstr(name, "CRLF");
	relay(reply, len, 1, 0, format, max_tokens, &ref);
	CHECK(!strcmp(ref.cut, want_cut));
	CHECK(ref.ended);
	if (strcmp(ref.cut, want_cut) || !ref.ended)
		fprintf(stderr, "%s: cut '%s', want '%s', ended %d\n", name, ref.cut, want_cut,
			ref.ended);
	CHECK(repeats == 0);   /* never whole in a read */
	relay(reply, len, 0, 0, format, max_tokens, &got);
	CHECK(repeats > 0);    /* whole: repeats of the shape */
	if (!repeats)
		fprintf(stderr, "%s: no event took the shortcut\n", name);
	repeats = 0;
	int bad = 0;
	static const size_t steps[] = { 0, 2, 3, 7, 64, 200, 1460, 4096 };
	for (size_t i = 0; i < sizeof(steps) / sizeof(steps[0]); i++) {
		relay(reply, len, steps[i], 0, format, max_tokens, &got);
		if (!same(&ref, &got, exact) && bad++ < 3)
			fprintf(stderr, "%s: reads of %zu differ\n", name, steps[i]);
	}
	for (size_t cut = 1; cut < len; cut++) {
		relay(reply, len, 0, cut, format, max_tokens, &got);
		if (!same(&ref, &got, exact) && bad++ < 3)
			fprintf(stderr, "%s: split at %zu differs (%zu vs %zu bytes, cut '%s')\n", name,
				cut, got.len, ref.len, got.cut);
	}
	CHECK(bad == 0);
}

/* ---- streams ---- */
static char reply[1 << 16];
static size_t reply_len;

static void put(const char *s, size_t n)
{
	if (reply_len + n > sizeof(reply))
		abort();
	memcpy(reply + reply_len, s, n);
	reply_len += n;
}

enum framing { PER_EVENT, ODD_CHUNKS, LENGTH };

static char events[1 << 15];
static size_t events_len;

static void ev(const char *text)
{
	size_t n = strlen(text);
	memcpy(events + events_len, text, n);
	events_len += n;
}

/* The reply: a head, then events[] in the framing asked for (PER_EVENT:
 * one chunk per blank-line-ended block). */
static void frame(enum framing f)
{
	reply_len = 0;
	const char *head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n";
	put(head, strlen(head));
	char line[64];
	if (f == LENGTH) {
		put(line, (size_t)snprintf(line, sizeof(line), "Content-Length: %zu\r\n\r\n",
					   events_len));
		put(events, events_len);
		return;
	}
	put("Transfer-Encoding: chunked\r\n\r\n", 30);
	size_t i = 0, k = 0;
	while (i < events_len) {
		size_t n;
		if (f == ODD_CHUNKS) {
			n = MIN((size_t)(k++ * 37 % 251 + 1), events_len - i);
		} else {
			const char *end = strstr(events + i, "\n\n");
			const char *crlf = strstr(events + i, "\r\n\r\n");
			if (crlf && (!end || crlf < end))
				n = (size_t)(crlf - (events + i)) + 4;
			else
				n = end ? (size_t)(end - (events + i)) + 2 : events_len - i;
		}
		put(line, (size_t)snprintf(line, sizeof(line), "%zx\r\n", n));
		put(events + i, n);
		put("\r\n", 2);
		i += n;
	}
	put("0\r\n\r\n", 5);
}

#define OA "data: {\"id\":\"c-1\",\"object\":\"chat.completion.chunk\",\"model\":\"m\","

static int usage_chunks = 1;   /* how many the OpenAI streams carry */

static void openai_events(const char *eol, int n, bool usage)
{
	static const char *words[] = { "fox ", "a \\\"q\\\" ", "back\\\\slash ", "\\u00e9t\\u00e9 ",
				       "line\\nbreak ", "", "caf\xc3\xa9 ", "x" };
	char e[512];
	events_len = 0;
	snprintf(e, sizeof(e), OA "\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\","
		 "\"content\":\"\"},\"finish_reason\":null}]}%s%s", eol, eol);
	ev(e);
	for (int i = 0; i < n; i++) {
		snprintf(e, sizeof(e), OA "\"choices\":[{\"index\":0,\"delta\":{\"content\":\"%s%d\"},"
			 "\"finish_reason\":null}]}%s%s", words[i % 8], i, eol, eol);
		ev(e);
		if (i == 7) {
			snprintf(e, sizeof(e), ": keep-alive%s%s", eol, eol);
			ev(e);
		}
		if (i == 11) {   /* the same shape, split over two data lines */
			snprintf(e, sizeof(e), OA "\"choices\":[{\"index\":0,\"delta\":{\"content\":%s"
				 "data: \"two lines\"},\"finish_reason\":null}]}%s%s", eol, eol, eol);
			ev(e);
		}
		if (i == 13) {   /* a comment line inside an event of the shape */
			snprintf(e, sizeof(e), ": note%s" OA "\"choices\":[{\"index\":0,\"delta\":"
				 "{\"content\":\"noted\"},\"finish_reason\":null}]}%s%s", eol, eol, eol);
			ev(e);
		}
	}
	snprintf(e, sizeof(e), OA "\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":"
		 "\"stop\"}]}%s%s", eol, eol);
	ev(e);
	for (int u = 0; usage && u < usage_chunks; u++) {
		snprintf(e, sizeof(e), OA "\"choices\":[],\"usage\":{\"prompt_tokens\":9,"
			 "\"completion_tokens\":%d,\"total_tokens\":%d}}%s%s", n, n + 9, eol, eol);
		ev(e);
		if (u + 1 < usage_chunks) {   /* events between: more runs to send */
			snprintf(e, sizeof(e), ": between %d%s%s", u, eol, eol);
			ev(e);
		}
	}
	snprintf(e, sizeof(e), "data: [DONE]%s%s", eol, eol);
	ev(e);
}

static void anthropic_events(int n)
{
	char e[512];
	events_len = 0;
	ev("event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":"
	   "{\"input_tokens\":25,\"output_tokens\":1}}}\n\n");
	ev("event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,"
	   "\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n");
	for (int i = 0; i < n; i++) {
		snprintf(e, sizeof(e), "event: content_block_delta\ndata: {\"type\":"
			 "\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\","
			 "\"text\":\"w%d \"}}\n\n", i);
		ev(e);
		if (i == 5)
			ev("event: ping\ndata: {\"type\":\"ping\"}\n\n");
	}
	ev("event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n");
	snprintf(e, sizeof(e), "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":"
		 "{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":%d}}\n\n", n);
	ev(e);
	ev("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
}

/* Text that repeats until the meter calls it a loop. */
static void loop_events(void)
{
	char e[512];
	events_len = 0;
	ev(OA "\"choices\":[{\"index\":0,\"delta\":{\"content\":\"\"}}]}\n\n");
	for (int i = 0; i < 120; i++) {
		snprintf(e, sizeof(e), OA "\"choices\":[{\"index\":0,\"delta\":{\"content\":"
			 "\"the same words again %c\"}}]}\n\n", "abc"[i % 3]);
		ev(e);
	}
	ev("data: [DONE]\n\n");
}

int main(void)
{
	static const enum framing framings[] = { PER_EVENT, ODD_CHUNKS, LENGTH };
	static const char *names[] = { "per event", "odd chunks", "length" };
	char name[64];
	log_set_level(LOG_ERROR);   /* the cuts are logged as warnings */
	for (int f = 0; f < 3; f++) {
		openai_events("\n", 24, true);
		frame(framings[f]);
		snprintf(name, sizeof(name), "openai LF, %s", names[f]);
		check_reads(name, reply, reply_len, FORMAT_OPENAI, 100000, "");
		CHECK(!memmem(ref.body, ref.len, "\"usage\"", 7));   /* dropped */
		CHECK(ref.bytes > 100 && ref.text_events == 26);   /* with the two-line and noted events */

		usage_chunks = 4;   /* dropped, each: what passes is moved together */
		openai_events("\n", 24, true);
		usage_chunks = 1;
		frame(framings[f]);
		snprintf(name, sizeof(name), "openai, usage chunks, %s", names[f]);
		check_reads(name, reply, reply_len, FORMAT_OPENAI, 100000, "");

		openai_events("\r\n", 24, true);
		frame(framings[f]);
		snprintf(name, sizeof(name), "openai CRLF, %s", names[f]);
		check_reads(name, reply, reply_len, FORMAT_OPENAI, 100000, "");

		anthropic_events(20);
		frame(framings[f]);
		snprintf(name, sizeof(name), "anthropic, %s", names[f]);
		check_reads(name, reply, reply_len, FORMAT_ANTHROPIC, 100000, "");
		CHECK(ref.output_tokens == 20);

		loop_events();
		frame(framings[f]);
		snprintf(name, sizeof(name), "loop, %s", names[f]);
		check_reads(name, reply, reply_len, FORMAT_OPENAI, 100000, "loop_detected");

		openai_events("\n", 24, false);   /* the cap: one token per text event */
		frame(framings[f]);
		snprintf(name, sizeof(name), "token cap, %s", names[f]);
		check_reads(name, reply, reply_len, FORMAT_OPENAI, 10, "stream_token_cap");
		CHECK(ref.text_events == 11);

		/* a raw LF inside what would be the shape's string: the data line
		 * ends there, and the event is not JSON */
		openai_events("\n", 6, false);
		events_len -= strlen("data: [DONE]\n\n");
		ev(OA "\"choices\":[{\"index\":0,\"delta\":{\"content\":\"cut\nhere\"},"
		   "\"finish_reason\":null}]}\n\n");
		ev("data: [DONE]\n\n");
		frame(framings[f]);
		snprintf(name, sizeof(name), "line end in text, %s", names[f]);
		check_reads(name, reply, reply_len, FORMAT_OPENAI, 100000, "upstream_garbage");
	}
	return check_report("net/stream");
}
