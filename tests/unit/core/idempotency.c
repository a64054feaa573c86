/*
 * Unit tests for core/idempotency.c: claim, in flight, done, retake after
 * a release, expiry and reuse, a full neighbourhood, and two threads
 * claiming the same keys where exactly one wins each.
 */
#include <pthread.h>

#include "core/idempotency.h"
#include "tests/unit/check.h"

static void test_lifecycle(void)
{
	struct idem_table *t = idem_new(1024);
	uint64_t h = idem_hash("key-a", "retry-1", 7), first = 0;
	uint32_t slot, slot2;
	CHECK(h != idem_hash("key-b", "retry-1", 7));   /* per agent key */
	CHECK(idem_claim(t, h, 11, 1000, &slot, &first) == IDEM_NEW);
	CHECK(idem_claim(t, h, 12, 1001, &slot2, &first) == IDEM_IN_FLIGHT && first == 11);
	idem_finish(t, slot, 11);
	CHECK(idem_claim(t, h, 13, 1002, &slot2, &first) == IDEM_DONE && first == 11 &&
	      slot2 == slot);
	CHECK(idem_retake(t, slot, 11, 13, 1002));       /* the first was released */
	CHECK(!idem_retake(t, slot, 11, 14, 1002));      /* only one retry takes over */
	CHECK(idem_claim(t, h, 15, 1003, &slot2, &first) == IDEM_IN_FLIGHT && first == 13);
	idem_finish(t, slot, 99);                        /* not its decision: no effect */
	CHECK(idem_claim(t, h, 15, 1003, &slot2, &first) == IDEM_IN_FLIGHT);
	idem_finish(t, slot, 13);
	/* after the TTL the key is new again */
	CHECK(idem_claim(t, h, 16, 1002 + IDEM_TTL_S, &slot2, &first) == IDEM_NEW);
	idem_free(t);
}

static void test_full(void)
{
	struct idem_table *t = idem_new(1024);
	uint32_t slot;
	uint64_t first;
	/* 16 probes from one home: the 17th key with the same home is refused */
	for (uint64_t i = 0; i < 16; i++)
		CHECK(idem_claim(t, 5 + 1024 * (i + 1), i + 1, 10, &slot, &first) == IDEM_NEW);
	CHECK(idem_claim(t, 5 + 1024 * 99, 77, 10, &slot, &first) == IDEM_FULL);
	CHECK(idem_claim(t, 5 + 1024 * 99, 77, 10 + IDEM_TTL_S, &slot, &first) == IDEM_NEW);
	idem_free(t);
}

static struct idem_table *shared;
static int wins[2];

static void *claimer(void *arg)
{
	int me = (int)(long)arg;
	for (uint64_t k = 1; k <= 20000; k++) {
		uint32_t slot;
		uint64_t first;
		if (idem_claim(shared, k * 0x9e3779b97f4a7c15ull | 1, (uint64_t)me + 1, 50, &slot,
			       &first) == IDEM_NEW)
			wins[me]++;
	}
	return NULL;
}

static void test_race(void)
{
	shared = idem_new(1 << 16);
	pthread_t th[2];
	for (long i = 0; i < 2; i++)
		pthread_create(&th[i], NULL, claimer, (void *)i);
	for (int i = 0; i < 2; i++)
		pthread_join(th[i], NULL);
	CHECK(wins[0] + wins[1] == 20000);
	printf("core/idempotency race: %d + %d claims\n", wins[0], wins[1]);
	idem_free(shared);
}

int main(void)
{
	CHECK(idem_valid_key("abc-123", 7));
	CHECK(!idem_valid_key("", 0));
	CHECK(!idem_valid_key("a b", 3));
	CHECK(!idem_valid_key("a\x7f", 2));
	test_lifecycle();
	test_full();
	test_race();
	return check_report("core/idempotency");
}
