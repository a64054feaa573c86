/*
 * libFuzzer harness: core/tags.c. Whatever is accepted obeys the grammar's
 * bounds: at most 256 bytes, only the allowed characters, an '=' per pair.
 */
#include <string.h>

#include "core/tags.h"

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
	if (!tags_valid((const char *)data, size))
		return 0;
	if (size > TAGS_MAX_BYTES)
		__builtin_trap();
	size_t eq = 0, commas = 0;
	for (size_t i = 0; i < size; i++) {
		unsigned char c = data[i];
		eq += c == '=';
		commas += c == ',';
		if (c < 0x20 || c > 0x7e || c == '"' || c == '\\' || c == ';')
			__builtin_trap();
	}
	if (eq != commas + 1 || commas + 1 > TAGS_MAX_PAIRS)
		__builtin_trap();
	return 0;
}
