/*
 * Unit tests for ledger/crc32c.c: the published check values, and the
 * SSE4.2 and table paths giving the same CRC on buffers of every length
 * up to 300 bytes at every alignment, in one call and split in two.
 */
#include <stdlib.h>

#include "ledger/crc32c.c"
#include "tests/unit/check.h"

/* Both paths, with the same pre- and post-inversion crc32c() applies. */
static uint32_t by_table(uint32_t crc, const unsigned char *p, size_t len)
{
	return ~crc_table(~crc, p, len);
}

static void test_vectors(void)
{
	static const unsigned char zeros[32], ones[32] = {
		0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
		0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
		0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
	};
	CHECK(crc32c(0, "123456789", 9) == 0xE3069283u);
	CHECK(by_table(0, (const unsigned char *)"123456789", 9) == 0xE3069283u);
	CHECK(crc32c(0, zeros, 32) == 0x8A9136AAu);         /* RFC 3720 B.4 */
	CHECK(by_table(0, zeros, 32) == 0x8A9136AAu);
	CHECK(crc32c(0, ones, 32) == 0x62A8AB43u);
	CHECK(crc32c(0, "", 0) == 0);
	/* continuing from a CRC is the CRC of the concatenation */
	CHECK(crc32c(crc32c(0, "1234", 4), "56789", 5) == 0xE3069283u);
}

static void test_paths_agree(void)
{
#if defined(__x86_64__)
	if (!__builtin_cpu_supports("sse4.2")) {
		printf("ledger/crc32c: no SSE4.2 on this CPU, hardware path not compared\n");
		return;
	}
	enum { MAX = 300, PAD = 16 };
	unsigned char *buf = malloc(MAX + PAD);
	srand(7);
	for (size_t i = 0; i < MAX + PAD; i++)
		buf[i] = (unsigned char)rand();
	int mismatches = 0;
	for (size_t align = 0; align < PAD; align++)
		for (size_t len = 0; len <= MAX; len++) {
			const unsigned char *p = buf + align;
			uint32_t t = by_table(0, p, len);
			mismatches += ~crc_sse42(~0u, p, len) != t;
			mismatches += crc32c(0, p, len) != t;
			size_t half = len / 3;
			mismatches += crc32c(crc32c(0, p, half), p + half, len - half) != t;
		}
	CHECK(mismatches == 0);
	free(buf);
#endif
}

int main(void)
{
	test_vectors();
	test_paths_agree();
	return check_report("ledger/crc32c");
}
