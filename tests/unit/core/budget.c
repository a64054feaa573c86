/*
 * Unit tests for core/budget.c: the edge to the micro-dollar, all-or-none
 * reservations, and the invariant committed + reserved <= limit under two
 * racing shard threads with a third thread sampling totals.
 */
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>

#include "core/budget.h"
#include "tests/unit/check.h"

static void test_edge(void)
{
	struct budget_scope *s = budget_scope_new(1000000, 2);
	struct budget_scope *one[] = { s };
	CHECK(budget_reserve(one, 1, 0, 1000000) == -1);   /* exactly the limit */
	CHECK(budget_reserve(one, 1, 1, 1) == 0);          /* one micro-dollar past */
	budget_commit(one, 1, 0, 1000000, 400000);
	struct budget_totals t;
	budget_totals(s, &t);
	CHECK(t.committed == 400000 && t.reserved == 0);
	CHECK(budget_reserve(one, 1, 1, 600000) == -1);    /* the refund is usable elsewhere */
	CHECK(budget_reserve(one, 1, 0, 1) == 0);
	budget_release(one, 1, 1, 600000);
	CHECK(budget_reserve(one, 1, 0, 600000) == -1);
	budget_commit(one, 1, 0, 600000, 600000);
	budget_totals(s, &t);
	CHECK(t.committed == 1000000 && t.reserved == 0 && t.used == 1000000);
	CHECK(budget_reserve(one, 1, 1, 1) == 0);
	budget_scope_free(s);
}

static void test_all_or_none(void)
{
	struct budget_scope *a = budget_scope_new(10, 1), *b = budget_scope_new(5, 1);
	struct budget_scope *both[] = { a, b };
	CHECK(budget_reserve(both, 2, 0, 7) == 1);
	struct budget_totals t;
	budget_totals(a, &t);
	CHECK(t.reserved == 0 && t.committed == 0);
	CHECK(budget_reserve(both, 2, 0, 5) == -1);
	budget_totals(b, &t);
	CHECK(t.reserved == 5);
	budget_commit(both, 2, 0, 5, 3);
	budget_totals(a, &t);
	CHECK(t.committed == 3 && t.reserved == 0);
	budget_scope_free(a);
	budget_scope_free(b);
}

/* A lease taken under a higher limit does not outlive a reload that
 * lowers it: reservations after it see the new limit. */
static void test_lowered_limit(void)
{
	struct budget_scope *s = budget_scope_new(1000000, 2);
	struct budget_scope *one[] = { s };
	CHECK(budget_reserve(one, 1, 0, 1000) == -1);      /* shard 0 now holds a lease */
	budget_commit(one, 1, 0, 1000, 1000);
	struct budget_totals t;
	budget_totals(s, &t);
	CHECK(t.leased > 1000);
	budget_set_limit(s, 999);                          /* below what was spent */
	CHECK(budget_reserve(one, 1, 0, 1) == 0);
	CHECK(budget_reserve(one, 1, 1, 1) == 0);
	budget_totals(s, &t);
	CHECK(t.leased == 0 && t.reserved == 0 && t.used == 1000);
	budget_set_limit(s, 1500);                         /* raised again: 500 left */
	CHECK(budget_reserve(one, 1, 1, 501) == 0);
	CHECK(budget_reserve(one, 1, 0, 500) == -1);
	budget_scope_free(s);
}

/* ---- two shards racing, one sampler ---- */

#define RUN_LIMIT 1000000      /* $1.00 */
#define TEAM_LIMIT 3000000     /* $3.00, shared by 4 runs */
static struct budget_scope *team, *runs[4];
static _Atomic int stop_sampling, sampling_started;
static _Atomic long violations, samples;
static int64_t committed_by[2];

struct worker { uint32_t shard; unsigned seed; };

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	int failures = 0;
	while (!sampling_started)      /* the race must be watched from its start */
		sched_yield();
	while (failures < 2000) {
		int r = (int)(rand_r(&w->seed) % 4);
		struct budget_scope *sc[] = { runs[r], team };
		int64_t amount = 1000 + rand_r(&w->seed) % 20000;
		if (budget_reserve(sc, 2, w->shard, amount) != -1) {
			failures++;
			continue;
		}
		failures = 0;
		if (rand_r(&w->seed) % 5 == 0) {
			budget_release(sc, 2, w->shard, amount);
		} else {
			int64_t actual = amount - rand_r(&w->seed) % (amount / 2);
			budget_commit(sc, 2, w->shard, amount, actual);
			committed_by[w->shard] += actual;
		}
	}
	return NULL;
}

static void check_scope(struct budget_scope *s)
{
	struct budget_totals t;
	budget_totals(s, &t);
	if (t.committed + t.reserved > t.limit || t.used > t.limit)
		violations++;
}

static void *sampler_main(void *arg)
{
	while (!stop_sampling) {
		check_scope(team);
		for (int i = 0; i < 4; i++)
			check_scope(runs[i]);
		samples++;
		sampling_started = 1;
	}
	return NULL;
}

static void test_race(void)
{
	team = budget_scope_new(TEAM_LIMIT, 2);
	for (int i = 0; i < 4; i++)
		runs[i] = budget_scope_new(RUN_LIMIT, 2);
	pthread_t th[2], sampler;
	struct worker w[2] = { { 0, 1 }, { 1, 2 } };
	pthread_create(&sampler, NULL, sampler_main, NULL);
	for (int i = 0; i < 2; i++)
		pthread_create(&th[i], NULL, worker_main, &w[i]);
	for (int i = 0; i < 2; i++)
		pthread_join(th[i], NULL);
	stop_sampling = 1;
	pthread_join(sampler, NULL);
	CHECK(violations == 0);
	CHECK(samples > 100);
	struct budget_totals t;
	budget_totals(team, &t);
	CHECK(t.reserved == 0);
	CHECK(t.committed == committed_by[0] + committed_by[1]);
	/* nothing is lost: the pool holds exactly spend + idle leases */
	CHECK(t.used == t.committed + t.leased);
	/* the team budget is spent to within one call of its limit */
	CHECK(t.limit - t.committed < 21000 * 2);
	int64_t runs_total = 0;
	for (int i = 0; i < 4; i++) {
		budget_totals(runs[i], &t);
		CHECK(t.reserved == 0 && t.committed <= RUN_LIMIT);
		runs_total += t.committed;
	}
	CHECK(runs_total == committed_by[0] + committed_by[1]);
	budget_scope_free(team);
	for (int i = 0; i < 4; i++)
		budget_scope_free(runs[i]);
	printf("core/budget race: %ld samples, %ld violations\n", (long)samples,
	       (long)violations);
}

int main(void)
{
	test_edge();
	test_all_or_none();
	test_lowered_limit();
	test_race();
	return check_report("core/budget");
}
