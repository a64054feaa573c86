/*
 * libFuzzer harness: core/json_scan.c. Spans must stay inside the input
 * and a string span must be bracketed by quotes.
 */
#include "core/json_scan.h"

static void check_span(const unsigned char *data, size_t size, struct json_span s)
{
	if (!s.present)
		return;
	if ((size_t)s.off + s.len > size)
		__builtin_trap();
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
	struct json_top top;
	if (json_scan_top((const char *)data, size, &top) != 0)
		return 0;
	check_span(data, size, top.model);
	check_span(data, size, top.stream);
	check_span(data, size, top.max_tokens);
	check_span(data, size, top.max_completion_tokens);
	check_span(data, size, top.stream_options);
	if (top.model.present && data[top.model.off - 1] == '"' &&
	    data[top.model.off + top.model.len] != '"')
		__builtin_trap();
	return 0;
}
