/*
 * libFuzzer harness: net/http1.c's http1_fast_chunks(). Any bytes as a
 * chunked reply body, fed in pieces of an input-chosen size, once through
 * the parser alone and once with whole chunks read by http1.c: the same
 * body bytes, the same event and error, the same bytes consumed.
 */
#include <stdlib.h>
#include <string.h>

#include "net/http1.h"

static const char head[] = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";

struct outcome {
	int event;
	uint16_t status;
	size_t used, len;
	unsigned long long hash;
};

static int on_body(struct http_msg *m, const char *data, size_t len)
{
	struct outcome *o = m->owner;
	for (size_t i = 0; i < len; i++)
		o->hash = o->hash * 131 + (unsigned char)data[i];
	o->len += len;
	return 0;
}

static void run(const char *data, size_t size, size_t step, bool fast, struct outcome *o)
{
	static char head_buf[1024];
	struct http_msg m;
	*o = (struct outcome){ 0 };
	http1_init(&m, HTTP_RESPONSE, head_buf, sizeof(head_buf), on_body, o);
	size_t n = http1_feed(&m, head, sizeof(head) - 1);
	if (m.event != HTTP_HEAD_DONE)
		__builtin_trap();
	http1_resume(&m);
	if (fast)
		http1_fast_chunks(&m);
	/* the head's final LF first, as the proxy feeds it */
	http1_feed(&m, head + n, 1);
	size_t off = 0;
	while (off < size && m.event == HTTP_NEED_MORE) {
		size_t piece = size - off < step ? size - off : step;
		/* a copy freed after the call: nothing may be kept from it */
		char *copy = malloc(piece);
		memcpy(copy, data + off, piece);
		size_t used = http1_feed(&m, copy, piece);
		free(copy);
		if (used > piece)
			__builtin_trap();
		off += used;
		if (used < piece && m.event == HTTP_NEED_MORE)
			__builtin_trap();   /* stopped short without saying why */
	}
	o->event = m.event;
	o->status = m.event == HTTP_ERROR ? m.error_status : 0;
	o->used = off;
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
	if (size < 1)
		return 0;
	size_t step = (size_t)data[0] % 97 + 1;
	struct outcome slow, fast;
	run((const char *)data + 1, size - 1, step, false, &slow);
	run((const char *)data + 1, size - 1, step, true, &fast);
	if (slow.event != fast.event || slow.status != fast.status || slow.used != fast.used ||
	    slow.len != fast.len || slow.hash != fast.hash)
		__builtin_trap();
	return 0;
}
