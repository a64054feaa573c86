/*
 * libFuzzer harness: net/sse.c. Any bytes, split at an input-chosen
 * offset: never a crash, events within bounds, and the split never
 * changes what is parsed.
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

static long run(const unsigned char *d, size_t size, size_t cut, struct acc *a)
{
	sse_init(&parser);
	long r1 = sse_feed(&parser, (const char *)d, cut, on_event, a);
	if (r1 < 0)
		return r1;
	return sse_feed(&parser, (const char *)d + cut, size - cut, on_event, a);
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
