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

/* The windows all tests run in; test_windows moves it. */
static struct budget_clock clk;
static _Thread_local uint32_t over;

static void test_edge(void)
{
	struct budget_scope *s = budget_scope_new(1000000, 2);
	struct budget_scope *one[] = { s };
	CHECK(budget_reserve(one, 1, 0, 1000000, &clk, &over) == -1);   /* exactly the limit */
	CHECK(budget_reserve(one, 1, 1, 1, &clk, &over) == 0);          /* one micro-dollar past */
	budget_commit(one, 1, 0, 1000000, 400000, &clk);
	struct budget_totals t;
	budget_totals(s, &clk, &t);
	CHECK(t.committed == 400000 && t.reserved == 0);
	CHECK(budget_reserve(one, 1, 1, 600000, &clk, &over) == -1);    /* the refund is usable elsewhere */
	CHECK(budget_reserve(one, 1, 0, 1, &clk, &over) == 0);
	budget_release(one, 1, 1, 600000, &clk);
	CHECK(budget_reserve(one, 1, 0, 600000, &clk, &over) == -1);
	budget_commit(one, 1, 0, 600000, 600000, &clk);
	budget_totals(s, &clk, &t);
	CHECK(t.committed == 1000000 && t.reserved == 0 && t.used == 1000000);
	CHECK(budget_reserve(one, 1, 1, 1, &clk, &over) == 0);
	budget_scope_free(s);
}

static void test_all_or_none(void)
{
	struct budget_scope *a = budget_scope_new(10, 1), *b = budget_scope_new(5, 1);
	struct budget_scope *both[] = { a, b };
	CHECK(budget_reserve(both, 2, 0, 7, &clk, &over) == 1);
	struct budget_totals t;
	budget_totals(a, &clk, &t);
	CHECK(t.reserved == 0 && t.committed == 0);
	CHECK(budget_reserve(both, 2, 0, 5, &clk, &over) == -1);
	budget_totals(b, &clk, &t);
	CHECK(t.reserved == 5);
	budget_commit(both, 2, 0, 5, 3, &clk);
	budget_totals(a, &clk, &t);
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
	CHECK(budget_reserve(one, 1, 0, 1000, &clk, &over) == -1);      /* shard 0 now holds a lease */
	budget_commit(one, 1, 0, 1000, 1000, &clk);
	struct budget_totals t;
	budget_totals(s, &clk, &t);
	CHECK(t.leased > 1000);
	budget_set_limit(s, 999, 0);                          /* below what was spent */
	CHECK(budget_reserve(one, 1, 0, 1, &clk, &over) == 0);
	CHECK(budget_reserve(one, 1, 1, 1, &clk, &over) == 0);
	budget_totals(s, &clk, &t);
	CHECK(t.leased == 0 && t.reserved == 0 && t.used == 1000);
	budget_set_limit(s, 1500, 0);                         /* raised again: 500 left */
	CHECK(budget_reserve(one, 1, 1, 501, &clk, &over) == 0);
	CHECK(budget_reserve(one, 1, 0, 500, &clk, &over) == -1);
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
		if (budget_reserve(sc, 2, w->shard, amount, &clk, &over) != -1) {
			failures++;
			continue;
		}
		failures = 0;
		if (rand_r(&w->seed) % 5 == 0) {
			budget_release(sc, 2, w->shard, amount, &clk);
		} else {
			int64_t actual = amount - rand_r(&w->seed) % (amount / 2);
			budget_commit(sc, 2, w->shard, amount, actual, &clk);
			committed_by[w->shard] += actual;
		}
	}
	return NULL;
}

static void check_scope(struct budget_scope *s)
{
	struct budget_totals t;
	budget_totals(s, &clk, &t);
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
	budget_totals(team, &clk, &t);
	CHECK(t.reserved == 0);
	CHECK(t.committed == committed_by[0] + committed_by[1]);
	/* nothing is lost: the pool holds exactly spend + idle leases */
	CHECK(t.used == t.committed + t.leased);
	/* the team budget is spent to within one call of its limit */
	CHECK(t.limit - t.committed < 21000 * 2);
	int64_t runs_total = 0;
	for (int i = 0; i < 4; i++) {
		budget_totals(runs[i], &clk, &t);
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

/* soft_gate: past the limit by up to the margin, and said so; advisory
 * (unbounded slack): never refused. */
static void test_slack(void)
{
	struct budget_scope *s = budget_scope_new(1000, 2);
	struct budget_scope *one[] = { s };
	budget_set_limit(s, 1000, 100);
	CHECK(budget_reserve(one, 1, 0, 900, &clk, &over) == -1 && over == 0);
	CHECK(budget_reserve(one, 1, 1, 200, &clk, &over) == -1 && over == 1);   /* 100 into the margin */
	CHECK(budget_reserve(one, 1, 0, 1, &clk, &over) == 0);                 /* margin used up */
	budget_commit(one, 1, 1, 200, 200, &clk);
	budget_commit(one, 1, 0, 900, 900, &clk);
	struct budget_totals t;
	budget_totals(s, &clk, &t);
	CHECK(t.committed == 1100 && t.reserved == 0 && t.used == 1100);
	budget_set_limit(s, 1000, BUDGET_UNBOUNDED);
	CHECK(budget_reserve(one, 1, 1, 1000000, &clk, &over) == -1 && over == 1);
	budget_release(one, 1, 1, 1000000, &clk);
	budget_totals(s, &clk, &t);
	CHECK(t.committed == 1100 && t.reserved == 0 && t.used == 1100);
	budget_scope_free(s);
}

/* A daily window: spend of yesterday stops counting on the first touch
 * today, on each shard, and totals never count a stale slot. A call
 * reserved yesterday and committed today is today's spend. */
static void test_windows(void)
{
	struct budget_clock day1, day2;
	budget_clock_set(&day1, 1700000000);          /* 2023-11-14, a Tuesday */
	budget_clock_set(&day2, 1700000000 + 86400);
	CHECK(day2.epoch[WINDOW_DAY] == day1.epoch[WINDOW_DAY] + 1);
	CHECK(day2.epoch[WINDOW_WEEK] == day1.epoch[WINDOW_WEEK]);
	CHECK(day2.epoch[WINDOW_MONTH] == day1.epoch[WINDOW_MONTH]);
	CHECK(day1.epoch[WINDOW_MONTH] == (2023 - 1970) * 12 + 10);
	struct budget_clock mon;                      /* 2023-11-20 00:00 UTC, a Monday */
	budget_clock_set(&mon, 1700438400);
	CHECK(mon.epoch[WINDOW_WEEK] == day1.epoch[WINDOW_WEEK] + 1);
	struct budget_clock dec;                      /* 2023-12-01 00:00 UTC */
	budget_clock_set(&dec, 1701388800);
	CHECK(dec.epoch[WINDOW_MONTH] == day1.epoch[WINDOW_MONTH] + 1);
	budget_clock_set(&dec, 1701388799);
	CHECK(dec.epoch[WINDOW_MONTH] == day1.epoch[WINDOW_MONTH]);

	struct budget_scope *s = budget_scope_new(1000, 2);
	budget_set_window(s, WINDOW_DAY);
	struct budget_scope *one[] = { s };
	CHECK(budget_reserve(one, 1, 0, 600, &day1, &over) == -1);
	budget_commit(one, 1, 0, 600, 600, &day1);
	CHECK(budget_reserve(one, 1, 1, 300, &day1, &over) == -1);   /* in flight overnight */
	CHECK(budget_reserve(one, 1, 1, 101, &day1, &over) == 0);
	struct budget_totals t;
	budget_totals(s, &day2, &t);
	CHECK(t.committed == 0 && t.reserved == 300);               /* yesterday's is gone */
	/* until idle shard 0 rolls its slot, yesterday's spend still fills
	 * the pool: refusing is the safe error */
	CHECK(budget_reserve(one, 1, 1, 700, &day2, &over) == 0);
	budget_tidy(s, 0, &day2);
	CHECK(budget_reserve(one, 1, 1, 700, &day2, &over) == -1);
	budget_commit(one, 1, 1, 300, 250, &day2);
	budget_commit(one, 1, 1, 700, 700, &day2);
	budget_totals(s, &day2, &t);
	CHECK(t.committed == 950 && t.reserved == 0);
	CHECK(t.used == t.committed + t.leased);
	CHECK(budget_reserve(one, 1, 0, 50, &day2, &over) == -1);   /* to the micro-dollar */
	CHECK(budget_reserve(one, 1, 1, 1, &day2, &over) == 0);
	budget_totals(s, &day1, &t);                                /* a clock that steps back */
	CHECK(t.committed == 950);
	budget_scope_free(s);
}

int main(void)
{
	budget_clock_set(&clk, 1700000000);
	test_slack();
	test_windows();
	test_edge();
	test_all_or_none();
	test_lowered_limit();
	test_race();
	return check_report("core/budget");
}
