/*
 * Unit tests for net/sse.c: a sample stream parsed whole and split at
 * every byte offset (and byte by byte) gives the same events; CR, LF and
 * CRLF line ends, comments, multi-line data, unknown fields, an event past
 * the limit, and stopping right after an event.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "net/sse.h"
#include "tests/unit/check.h"

struct seen {
	int n;
	char log[8192];
	size_t len;
	int stop_at;         /* stop after event number stop_at (1-based), 0: never */
};

static int record(void *arg, const struct sse_event *ev)
{
	struct seen *s = arg;
	if (!ev->has_data)
		return 0;            /* a block with no data: not an event */
	s->n++;
	s->len += (size_t)snprintf(s->log + s->len, sizeof(s->log) - s->len, "[%.*s|%.*s]",
				   (int)ev->type_len, ev->type, (int)ev->data_len, ev->data);
	return s->n == s->stop_at;
}

struct where { const char *buf; size_t len; int in_buf, n; };

/* Counts events, and those whose data lies in the buffer fed. */
static int where_data(void *arg, const struct sse_event *ev)
{
	struct where *w = arg;
	if (!ev->has_data)
		return 0;
	w->n++;
	w->in_buf += ev->data >= w->buf && ev->data < w->buf + w->len;
	return 0;
}

static const char sample[] =
	": a comment\r\n"
	"event: message_start\r\n"
	"data: {\"type\":\"message_start\"}\r\n"
	"\r\n"
	"data: {\"a\":\n"
	"data: 1}\n"
	"id: 7\n"
	"retry: 10\n"
	"\n"
	"data:no-space\r"
	"\r"
	"data\n"
	"\n"
	"event: x\n"
	"\n"
	"data: caf\xc3\xa9 \xe2\x82\xac\n"
	"\n"
	"data: [DONE]\n\n";

static const char want[] =
	"[message_start|{\"type\":\"message_start\"}]"
	"[|{\"a\":\n1}]"
	"[|no-space]"
	"[|]"
	"[|caf\xc3\xa9 \xe2\x82\xac]"
	"[|[DONE]]";

/* Feeds a copy of buf[0..n) that is scribbled over right after: event
 * data handed over where it lies in a buffer must not be kept past the
 * call that fed it. */
static long feed(struct sse_parser *p, const char *buf, size_t n, struct seen *s)
{
	char *copy = malloc(n + 1);
	memcpy(copy, buf, n);
	long r = sse_feed(p, copy, n, record, s);
	memset(copy, '#', n);
	free(copy);
	return r;
}

static void parse_split(size_t cut, struct seen *s)
{
	struct sse_parser *p = malloc(sizeof(*p));
	sse_init(p);
	memset(s, 0, sizeof(*s));
	size_t len = sizeof(sample) - 1;
	CHECK(feed(p, sample, cut, s) == (long)cut);
	CHECK(feed(p, sample + cut, len - cut, s) == (long)(len - cut));
	free(p);
}

int main(void)
{
	struct seen s;
	for (size_t cut = 0; cut <= sizeof(sample) - 1; cut++) {
		parse_split(cut, &s);
		if (strcmp(s.log, want)) {
			fprintf(stderr, "split at %zu: %s\n", cut, s.log);
			CHECK(0);
		}
	}
	/* byte by byte */
	struct sse_parser *p = malloc(sizeof(*p));
	sse_init(p);
	memset(&s, 0, sizeof(s));
	for (size_t i = 0; i < sizeof(sample) - 1; i++)
		feed(p, sample + i, 1, &s);
	CHECK(!strcmp(s.log, want));

	/* a data line read whole is handed over in the buffer, not copied;
	 * joined lines are the parser's own */
	static const char two[] = "data: {\"a\":1}\n\ndata: x\ndata: y\n\n";
	struct where w = { two, sizeof(two) - 1, 0, 0 };
	sse_init(p);
	CHECK(sse_feed(p, two, sizeof(two) - 1, where_data, &w) == (long)(sizeof(two) - 1));
	CHECK(w.n == 2 && w.in_buf == 1);

	/* stop after the second event: the count ends just past its blank line */
	sse_init(p);
	memset(&s, 0, sizeof(s));
	s.stop_at = 2;
	long n = sse_feed(p, sample, sizeof(sample) - 1, record, &s);
	const char *end2 = strstr(sample, "retry: 10\n\n") + strlen("retry: 10\n\n");
	CHECK(n == end2 - sample && s.n == 2);
	s.stop_at = 0;
	CHECK(sse_feed(p, sample + n, sizeof(sample) - 1 - (size_t)n, record, &s) ==
	      (long)(sizeof(sample) - 1 - (size_t)n));
	CHECK(s.n == 6);

	/* an event larger than SSE_MAX_EVENT is refused, not truncated */
	sse_init(p);
	memset(&s, 0, sizeof(s));
	char *big = malloc(SSE_MAX_EVENT + 16);
	memcpy(big, "data: ", 6);
	memset(big + 6, 'x', SSE_MAX_EVENT + 1);
	CHECK(sse_feed(p, big, SSE_MAX_EVENT + 7, record, &s) == -E2BIG);
	/* exactly SSE_MAX_EVENT fits, over two lines too */
	sse_init(p);
	memset(big + 6, 'x', SSE_MAX_EVENT);
	memcpy(big + 6 + SSE_MAX_EVENT, "\n\n", 2);
	CHECK(sse_feed(p, big, SSE_MAX_EVENT + 8, record, &s) == SSE_MAX_EVENT + 8 && s.n == 1);
	free(big);
	free(p);
	return check_report("net/sse");
}
