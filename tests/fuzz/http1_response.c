/*
 * libFuzzer harness: upstream reply framing, fed in small pieces as the
 * proxy does, including the resume-on-final-LF step after the head.
 */
#include <string.h>

#include "net/http1.h"

static char head[16384];

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
	struct http_msg m;
	http1_init(&m, HTTP_RESPONSE, head, sizeof(head), NULL, NULL);
	size_t off = 0;
	size_t step = size ? (size_t)data[0] % 64 + 1 : 1;
	while (off < size) {
		size_t piece = size - off < step ? size - off : step;
		size_t n = http1_feed(&m, (const char *)data + off, piece);
		if (n > piece)
			__builtin_trap();
		off += n;
		if (m.event == HTTP_HEAD_DONE) {
			(void)http1_body_until_eof(&m);
			http1_resume(&m);
			continue;
		}
		if (m.event == HTTP_MESSAGE_DONE || m.event == HTTP_ERROR)
			return 0;
	}
	http1_feed_eof(&m);
	return 0;
}
