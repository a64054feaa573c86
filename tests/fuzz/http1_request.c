/*
 * libFuzzer harness: request framing (net/http1.c over http-parser).
 * The input is fed twice — whole, and split at a position taken from its
 * first byte — and both runs must agree on the outcome and the body.
 */
#include <string.h>

#include "net/http1.h"

static char head[4096];
static char body[2][1 << 16];
static size_t body_len[2];
static int which;

static int on_body(struct http_msg *m, const char *data, size_t len)
{
	if (body_len[which] + len > sizeof(body[0]))
		return 413;
	memcpy(body[which] + body_len[which], data, len);
	body_len[which] += len;
	return 0;
}

/* Feeds data in two pieces; returns event | status << 8. */
static int run(const char *data, size_t len, size_t split)
{
	struct http_msg m;
	http1_init(&m, HTTP_REQUEST, head, sizeof(head), on_body, NULL);
	body_len[which] = 0;
	size_t off = 0;
	size_t ends[2] = { split, len };
	for (int piece = 0; piece < 2; piece++) {
		while (off < ends[piece]) {
			size_t n = http1_feed(&m, data + off, ends[piece] - off);
			off += n;
			if (m.event == HTTP_HEAD_DONE) {
				http1_resume(&m);
				continue;
			}
			if (m.event != HTTP_NEED_MORE)
				return m.event | m.error_status << 8;
			if (n == 0)
				break;
		}
	}
	return m.event | m.error_status << 8;
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
	if (size < 1)
		return 0;
	size_t split = data[0] % size;
	const char *req = (const char *)data + 1;
	size--;
	split = split > size ? size : split;
	which = 0;
	int a = run(req, size, size);
	which = 1;
	int b = run(req, size, split);
	if (a != b || body_len[0] != body_len[1] ||
	    memcmp(body[0], body[1], body_len[0]))
		__builtin_trap();
	return 0;
}
