/*
 * libFuzzer harness: net/sse.c. Any bytes, split at an input-chosen
 * offset: never a crash, events within bounds, the split never changes
 * what is parsed, and no event data is read from a buffer already
 * returned (each piece is a heap copy freed after its feed).
 */
#include <stdlib.h>
#include <string.h>

#include "net/sse.h"

struct acc {
	unsigned long long hash;
	int n;
};

static int on_event(void *arg, const struct sse_event *ev)
{
	struct acc *a = arg;
	if (ev->data_len > SSE_MAX_EVENT || ev->type_len > SSE_MAX_TYPE)
		__builtin_trap();
	a->n++;
	for (uint32_t i = 0; i < ev->data_len; i++)
		a->hash = a->hash * 131 + (unsigned char)ev->data[i];
	for (uint32_t i = 0; i < ev->type_len; i++)
		a->hash = a->hash * 137 + (unsigned char)ev->type[i];
	return 0;
}

static struct sse_parser parser;

/* Feeds a copy that is freed right after: the parser may hand over data
 * where it lies in the buffer, but must not keep it past the call. */
static long feed(const unsigned char *d, size_t n, struct acc *a)
{
	char *copy = malloc(n ? n : 1);
	memcpy(copy, d, n);
	long r = sse_feed(&parser, copy, n, on_event, a);
	free(copy);
	return r;
}

static long run(const unsigned char *d, size_t size, size_t cut, struct acc *a)
{
	sse_init(&parser);
	long r1 = feed(d, cut, a);
	if (r1 < 0)
		return r1;
	return feed(d + cut, size - cut, a);
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
	if (size < 1)
		return 0;
	size_t cut = data[0] % size;
	struct acc whole = { 0, 0 }, split = { 0, 0 };
	long a = run(data + 1, size - 1, 0, &whole);
	long b = run(data + 1, size - 1, cut < size - 1 ? cut : 0, &split);
	if ((a < 0) != (b < 0))
		__builtin_trap();
	if (a >= 0 && (whole.n != split.n || whole.hash != split.hash))
		__builtin_trap();
	return 0;
}
