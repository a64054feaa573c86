/* Unit tests for core/timer.c: heap order under arm, move and cancel. */
#include <errno.h>
#include <stdlib.h>

#include "core/timer.h"
#include "tests/unit/check.h"

#define N 1000

int main(void)
{
	struct timer_heap h;
	CHECK(timer_heap_init(&h, N) == 0);
	static struct timer t[N];
	srand(7);
	for (int i = 0; i < N; i++)
		CHECK(timer_arm(&h, &t[i], (uint64_t)(rand() % 10000)) == 0);
	struct timer extra = { 0 };
	CHECK(timer_arm(&h, &extra, 1) == -ENOSPC);
	/* move half of them, cancel a quarter */
	for (int i = 0; i < N; i += 2)
		CHECK(timer_arm(&h, &t[i], (uint64_t)(rand() % 10000)) == 0);
	for (int i = 1; i < N; i += 4)
		timer_cancel(&h, &t[i]);
	CHECK(!timer_armed(&t[1]));
	timer_cancel(&h, &t[1]);   /* cancelling twice is harmless */

	uint64_t last = 0;
	int popped = 0;
	CHECK(timer_pop_due(&h, 0) == NULL || timer_next(&h) == 0);
	struct timer *x;
	while ((x = timer_pop_due(&h, UINT64_MAX - 1))) {
		CHECK(x->deadline >= last);
		CHECK(!timer_armed(x));
		last = x->deadline;
		popped++;
	}
	CHECK(popped == N - N / 4);
	/* a grown heap keeps working */
	CHECK(timer_heap_grow(&h) == 0 && h.cap == 2 * N);
	for (int i = 0; i < N + 1; i++)
		CHECK(timer_arm(&h, &t[i % N], (uint64_t)(N - i)) == 0);
	CHECK(timer_arm(&h, &extra, 0) == 0);
	int due_at_zero = 0;
	while ((x = timer_pop_due(&h, 0)))
		due_at_zero += x->deadline == 0;
	CHECK(due_at_zero == 2);   /* extra and t[0] */
	while (timer_pop_due(&h, UINT64_MAX - 1))
		;
	CHECK(timer_next(&h) == UINT64_MAX);
	timer_heap_free(&h);
	return check_report("core/timer");
}
