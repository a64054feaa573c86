/*
 * stream_micro — nanoseconds per stream spent on a streamed reply's bytes,
 * metered (net/stream.c) and relayed as is (net/proxy.c's relay path),
 * with no sockets: what bench/run.sh's stream workload costs tollgate
 * beyond I/O, without the machine's noise.
 *
 * The reply is what mockllm answers bench/stream.lua with (50 content
 * events of one token, the role, finish and usage events, [DONE]), one
 * HTTP chunk per event. Both paths parse the head with http1_feed(); the
 * relay then feeds the body to http1_feed() as relay_body() does, the
 * metered path hands it to stream_relay(). The body arrives in reads of
 * READ bytes (argument 1; 0, the default, is one read for the whole
 * reply, as tollgate sees it in the bench); argument 2, the number of
 * streams per path (200,000). What stream_relay() would
 * send is checked once against the events it was given. Each figure is
 * the best of 10 batches of 20,000 streams.
 *
 * The symbols stream.c calls outside the parsing modules (the client,
 * the ring, the budget, booking) are stubbed here, so no socket or shard
 * is involved. Prints one JSON object.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/config_types.h"
#include "core/shard_types.h"
#include "net/client.h"
#include "net/booking.h"
#include "net/decide.h"
#include "net/http1.h"
#include "net/proxy.h"
#include "net/ring.h"
#include "net/stream.h"
#include "net/upstream.h"

#define BATCHES 10
static long streams = 200000;   /* argument 2 */

/* ---- stubs: what stream_relay() sends is summed, nothing else happens */
static size_t sent;
static char sent_copy[65536];
static bool keep_copy;

void client_sendv(struct client *c, const struct iovec *iov, int n, int32_t bid)
{
	for (int i = 0; i < n; i++) {
		if (keep_copy && sent + iov[i].iov_len <= sizeof(sent_copy))
			memcpy(sent_copy + sent, iov[i].iov_base, iov[i].iov_len);
		sent += iov[i].iov_len;
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
	return -1;
}
void decide_ceiling_code(const char *scope_kind, char *out, size_t cap) {}
bool decide_frozen(const struct exchange *ex, char *out, size_t cap) { return false; }

/* ---- the reply ---- */
static char reply[32768];
static size_t reply_len, head_len;

static void put(const char *s, size_t n)
{
	memcpy(reply + reply_len, s, n);
	reply_len += n;
}

static void event(const char *fmt, const char *arg)
{
	char ev[512], size[16];
	int n = snprintf(ev, sizeof(ev), fmt, arg);
	put(size, (size_t)snprintf(size, sizeof(size), "%x\r\n", n));
	put(ev, (size_t)n);
	put("\r\n", 2);
}

#define OPEN "data: {\"id\":\"chatcmpl-mock-1\",\"object\":\"chat.completion.chunk\"," \
	     "\"created\":1700000000,\"model\":\"gpt-4o\","

static void build_reply(void)
{
	static const char *words[] = { "fox ", "small ", "and ", "stone ", "near ", "song ",
				       "along ", "an ", "hill " };
	static const char head[] = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
				   "Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n";
	put(head, sizeof(head) - 1);
	head_len = reply_len;
	event(OPEN "\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\","
	      "\"content\":\"%s\"},\"finish_reason\":null}]}\n\n", "");
	for (int i = 0; i < 50; i++)
		event(OPEN "\"choices\":[{\"index\":0,\"delta\":{\"content\":\"%s\"},"
		      "\"finish_reason\":null}]}\n\n", words[i % 9]);
	event(OPEN "\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"%s\"}]}\n\n",
	      "stop");
	event(OPEN "\"choices\":[],\"usage\":{\"prompt_tokens\":256,\"completion_tokens\":50,"
	      "\"total_tokens\":306}}%s\n\n", "");
	event("data: [DONE]%s\n\n", "");
	put("0\r\n\r\n", 5);
}

/* ---- the two paths ---- */
static struct shard shard;
static struct client client = { .shard = &shard };
static struct cfg_provider provider = { .name = "mock", .format = FORMAT_OPENAI };
static struct cfg_model model = { .name = "gpt-4o" };
static struct exchange ex;
static char resp_head[16384], buf[32768];
static size_t read_size;

static void feed_head(void)
{
	http1_init(&ex.resp, HTTP_RESPONSE, resp_head, sizeof(resp_head), NULL, &ex);
	memcpy(buf, reply, reply_len);
	size_t n = http1_feed(&ex.resp, buf, head_len);
	if (ex.resp.event != HTTP_HEAD_DONE || n + 1 != head_len)
		abort();
	http1_resume(&ex.resp);
	ex.resp_complete = false;
}

/* The parser paused on the head's last LF: the body is fed from there. */
static void relay_one(void)
{
	feed_head();
	size_t off = head_len - 1;
	while (off < reply_len) {
		size_t n = read_size ? MIN(read_size, reply_len - off) : reply_len - off;
		size_t used = http1_feed(&ex.resp, buf + off, n);
		sent += used;
		if (ex.resp.event == HTTP_MESSAGE_DONE)
			break;
		if (ex.resp.event == HTTP_ERROR || used != n)
			abort();
		off += n;
	}
}

static void metered_one(void)
{
	feed_head();
	ex.status = 200;
	ex.allowed = true;
	if (!stream_wants(&ex) || !stream_start(&ex))
		abort();
	size_t off = head_len - 1;
	while (off < reply_len && !stream_done(&ex)) {
		size_t n = read_size ? MIN(read_size, reply_len - off) : reply_len - off;
		stream_relay(&ex, buf + off, n, -1, NULL, 0);
		off += n;
	}
	if (!stream_done(&ex) || stream_cut_code(&ex))
		abort();
	stream_free(&ex);
}

static double now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e9 + ts.tv_nsec;
}

/* The best of BATCHES batches: on a shared machine, the batch nothing
 * else ran in. */
static double time_it(void (*one)(void))
{
	for (long i = 0; i < streams / 10; i++)
		one();
	double best = 1e18;
	for (int b = 0; b < BATCHES; b++) {
		double t0 = now_ns();
		for (long i = 0; i < streams / BATCHES; i++)
			one();
		best = MIN(best, (now_ns() - t0) / (double)(streams / BATCHES));
	}
	return best;
}

/* What the agent got: the events less the usage chunk, re-chunked. */
static void check_output(void)
{
	keep_copy = true;
	sent = 0;
	metered_one();
	keep_copy = false;
	const char *usage = strstr(sent_copy, "\"usage\"");
	if (usage && (size_t)(usage - sent_copy) < sent)
		abort();
	if (sent < 7 || memcmp(sent_copy + sent - 7, "\r\n0\r\n\r\n", 7))
		abort();
}

int main(int argc, char **argv)
{
	read_size = argc > 1 ? strtoul(argv[1], NULL, 10) : 0;
	if (argc > 2)
		streams = MAX(strtol(argv[2], NULL, 10), BATCHES);
	build_reply();
	ex.client = &client;
	ex.provider = &provider;
	ex.model = &model;
	ex.inject_usage = true;
	ex.max_output_tokens = 256;
	ex.req.parser.http_major = 1;
	ex.req.parser.http_minor = 1;
	check_output();
	double relay = time_it(relay_one);
	double metered = time_it(metered_one);
	printf("{\"streams\":%ld,\"reply_bytes\":%zu,\"read_bytes\":%zu,\"relay_ns\":%.0f,"
	       "\"metered_ns\":%.0f,\"metered_extra_ns\":%.0f}\n",
	       streams, reply_len, read_size ? read_size : reply_len - head_len + 1, relay,
	       metered, metered - relay);
	return 0;
}
