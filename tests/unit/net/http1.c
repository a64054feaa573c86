/*
 * Unit tests for net/http1.c: heads compacted across any split, strict
 * framing, bare LF, pause points for pipelining and raw relaying.
 */
#include <stdio.h>
#include <string.h>

#include "net/http1.h"
#include "tests/unit/check.h"

static char head_buf[4096];
static char body[4096];
static size_t body_len;

static int on_body(struct http_msg *m, const char *data, size_t len)
{
	if (body_len + len > sizeof(body))
		return 413;
	memcpy(body + body_len, data, len);
	body_len += len;
	return 0;
}

/* Feeds `req` in pieces of `step` bytes; returns the final event and sets
 * *used to the bytes consumed up to the end of the first message. */
static int feed_split(struct http_msg *m, const char *req, size_t len, size_t step,
		      size_t *used)
{
	http1_init(m, HTTP_REQUEST, head_buf, sizeof(head_buf), on_body, NULL);
	body_len = 0;
	size_t off = 0;
	while (off < len) {
		size_t piece = len - off < step ? len - off : step;
		size_t n = http1_feed(m, req + off, piece);
		off += n;
		if (m->event == HTTP_HEAD_DONE) {
			http1_resume(m);
			continue;
		}
		if (m->event == HTTP_MESSAGE_DONE || m->event == HTTP_ERROR)
			break;
	}
	*used = off;
	return m->event;
}

static const char good[] =
	"POST /v1/chat/completions?x=1 HTTP/1.1\r\n"
	"Host: example\r\n"
	"X-Long-Header: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n"
	"Transfer-Encoding: chunked\r\n"
	"\r\n"
	"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
	"GET /next HTTP/1.1\r\n\r\n";

static void test_every_split(void)
{
	size_t first_len = strlen(good) - strlen("GET /next HTTP/1.1\r\n\r\n");
	for (size_t step = 1; step <= sizeof(good); step++) {
		struct http_msg m;
		size_t used;
		int ev = feed_split(&m, good, strlen(good), step, &used);
		CHECK(ev == HTTP_MESSAGE_DONE);
		CHECK(used == first_len);
		CHECK(body_len == 11 && !memcmp(body, "hello world", 11));
		uint32_t len;
		const char *v = http1_field(&m.head, "x-long-header", &len);
		CHECK(v && len == 38 && v[0] == 'a' && v[37] == 'a');
		CHECK(m.head.url.len == strlen("/v1/chat/completions?x=1"));
		CHECK(!memcmp(http1_str(&m.head, m.head.url), "/v1/chat/completions?x=1",
			      m.head.url.len));
		CHECK(m.head.n_fields == 3);
	}
}

static void expect_status(const char *req, unsigned status)
{
	struct http_msg m;
	size_t used;
	int ev = feed_split(&m, req, strlen(req), strlen(req), &used);
	CHECK(ev == HTTP_ERROR);
	CHECK(m.error_status == status);
	if (ev != HTTP_ERROR || m.error_status != status)
		fprintf(stderr, "  request: %s\n", req);
	/* and byte by byte */
	ev = feed_split(&m, req, strlen(req), 1, &used);
	CHECK(ev == HTTP_ERROR && m.error_status == status);
}

static void test_smuggling(void)
{
	expect_status("POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400);
	expect_status("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", 400);
	expect_status("POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", 400);
	expect_status("POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello", 400);
	expect_status("POST / HTTP/1.1\r\nContent-Length: 5x\r\n\r\nhello", 400);
	expect_status("POST / HTTP/1.1\r\nContent-Length: -5\r\n\r\nhello", 400);
	expect_status("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n", 400);
	expect_status("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n", 400);
	expect_status("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\n0\r\n\r\n", 400);
	expect_status("POST / HTTP/1.1\nHost: x\r\n\r\n", 400);
	expect_status("POST / HTTP/1.1\r\nHost: x\n\r\n", 400);
	expect_status("POST / HTTP/1.1\r\nHost: x\r\n\n", 400);
	expect_status("POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 400);
	expect_status("GARBAGE\r\n\r\n", 400);
}

static void test_limits(void)
{
	static char big[8192];
	size_t n = (size_t)snprintf(big, sizeof(big), "GET / HTTP/1.1\r\nX: ");
	memset(big + n, 'a', 5000);
	memcpy(big + n + 5000, "\r\n\r\n", 5);
	expect_status(big, 431);

	n = (size_t)snprintf(big, sizeof(big), "GET / HTTP/1.1\r\n");
	for (int i = 0; i < HTTP_MAX_FIELDS + 1; i++)
		n += (size_t)snprintf(big + n, sizeof(big) - n, "X%d: y\r\n", i);
	snprintf(big + n, sizeof(big) - n, "\r\n");
	expect_status(big, 431);

	/* the body callback refuses: its status wins */
	static char large[6000];
	n = (size_t)snprintf(large, sizeof(large), "POST / HTTP/1.1\r\nContent-Length: 5000\r\n\r\n");
	memset(large + n, 'b', 5000);
	large[n + 5000] = '\0';
	expect_status(large, 413);
}

static void test_response_pause_points(void)
{
	static const char resp[] = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloEXTRA";
	struct http_msg m;
	char rbuf[512];
	http1_init(&m, HTTP_RESPONSE, rbuf, sizeof(rbuf), NULL, NULL);
	size_t n = http1_feed(&m, resp, strlen(resp));
	CHECK(m.event == HTTP_HEAD_DONE);
	/* paused on the final LF of the head */
	CHECK(resp[n] == '\n' && !memcmp(resp + n + 1, "hello", 5));
	http1_resume(&m);
	size_t n2 = http1_feed(&m, resp + n, strlen(resp) - n);
	CHECK(m.event == HTTP_MESSAGE_DONE);
	CHECK(n + n2 == strlen(resp) - strlen("EXTRA"));
	CHECK(!http1_body_until_eof(&m));

	static const char eof[] = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nabc";
	http1_init(&m, HTTP_RESPONSE, rbuf, sizeof(rbuf), NULL, NULL);
	n = http1_feed(&m, eof, strlen(eof));
	CHECK(m.event == HTTP_HEAD_DONE);
	CHECK(http1_body_until_eof(&m));
	http1_resume(&m);
	http1_feed(&m, eof + n, strlen(eof) - n);
	CHECK(m.event == HTTP_NEED_MORE);
	http1_feed_eof(&m);
	CHECK(m.event == HTTP_MESSAGE_DONE);
}

/* A response body read with or without http1_fast_chunks(), in two
 * pieces split at `cut`: the event, error status, bytes consumed and body
 * bytes it gave. */
struct outcome {
	int event;
	uint16_t status;
	size_t used, body_len;
	char body[4096];
};

static void read_body(const char *resp, size_t len, size_t cut, bool fast, struct outcome *o)
{
	struct http_msg m;
	char rbuf[512];
	http1_init(&m, HTTP_RESPONSE, rbuf, sizeof(rbuf), on_body, NULL);
	body_len = 0;
	size_t off = http1_feed(&m, resp, len);
	CHECK(m.event == HTTP_HEAD_DONE);
	http1_resume(&m);
	if (fast)
		http1_fast_chunks(&m);
	size_t end = off + cut < len ? off + cut : len;
	while (off < len) {
		size_t n = http1_feed(&m, resp + off, (off < end ? end : len) - off);
		off += n;
		if (m.event != HTTP_NEED_MORE || !n)
			break;
	}
	o->event = m.event;
	o->status = m.event == HTTP_ERROR ? m.error_status : 0;
	o->used = off;
	o->body_len = body_len;
	memcpy(o->body, body, body_len);
}

/* Chunks read without the parser give what the parser gives: the usual
 * form, and every odd one it may meet (leading zeros, extensions, a size
 * CR without its LF, bytes other than CRLF after the data, which this
 * build of http-parser lets pass, sizes past 8 digits or 64 bits, the
 * last chunk and trailers), whole or split anywhere. */
static void test_fast_chunks(void)
{
	static const char *bodies[] = {
		"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\nEXTRA",
		"5\r\nhello\r\n0005\r\nworld\r\na;x=1\r\n0123456789\r\n0\r\n\r\n",
		"5\r\nhello\r\n5 \r\nworld\r\n1\rXa\r\n0\r\nX-T: 1\r\n\r\n",
		"5\r\nhelloXY6\r\n world\r\n0\r\n\r\n",
		"5\r\nhello\n6\r\n world\r\n0\r\n\r\n",
		"5\r\nhello\r\n123456789\r\nx\r\n0\r\n\r\n",
		"5\r\nhello\r\nfffffffffffffffff\r\nx\r\n",
		"5\r\nhello\r\nzz\r\nrubbish\r\n",
		"5\nhello\r\n0\r\n\r\n",
		"3\r\nabc\r\n3\r\ndef\r\n3\r\nghi\r\n0\r\nX: y\nZ: w\r\n\r\n",
		"1\r\na\r\n1\r\nb\r\n",
		"1\r\na\r\n0\r\n\r\n1\r\nb\r\n",   /* what follows the message is not body */
		"1\r\na\r\n0\r\nX: y\r\n\r\n1\r\nb\r\n",
	};
	char resp[512];
	struct outcome slow, fast;
	for (size_t b = 0; b < sizeof(bodies) / sizeof(bodies[0]); b++) {
		int n = snprintf(resp, sizeof(resp), "HTTP/1.1 200 OK\r\n"
			"Transfer-Encoding: chunked\r\n\r\n%s", bodies[b]);
		for (size_t cut = 0; cut <= strlen(bodies[b]) + 1; cut++) {
			read_body(resp, (size_t)n, cut, false, &slow);
			read_body(resp, (size_t)n, cut, true, &fast);
			bool same = slow.event == fast.event && slow.status == fast.status &&
				    slow.used == fast.used && slow.body_len == fast.body_len &&
				    !memcmp(slow.body, fast.body, slow.body_len);
			CHECK(same);
			if (!same)
				fprintf(stderr, "body %zu split at %zu: event %d/%d used %zu/%zu "
					"body %zu/%zu\n", b, cut, slow.event, fast.event, slow.used,
					fast.used, slow.body_len, fast.body_len);
		}
	}
}

int main(void)
{
	test_every_split();
	test_smuggling();
	test_limits();
	test_response_pause_points();
	test_fast_chunks();
	return check_report("net/http1");
}
