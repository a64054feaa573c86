/* Unit tests for core/runs.c: ids, binding, and two threads racing to
 * open the same runs always getting one run per id. */
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include "core/runs.h"
#include "tests/unit/check.h"

static struct run_table *table;
static struct run *seen[2][500];
static int created_count[2];

static void *opener(void *arg)
{
	int t = (int)(long)arg;
	for (int i = 0; i < 500; i++) {
		char id[32];
		int n = snprintf(id, sizeof(id), "run-%d", i);
		bool created;
		struct run_spec spec = { .key_id = "k", .limit = 1000, .mode = 2, .ttl_s = 60 };
		seen[t][i] = runs_open(table, id, (size_t)n, &spec, &created);
		created_count[t] += created;
	}
	return NULL;
}

static bool no_wait(void *arg)
{
	(*(int *)arg)++;
	return true;
}

/* Expiry: idle past the TTL and not in flight; a run used again, or in
 * flight, lives on; the key's live count comes back down. */
static void test_expiry(void)
{
	struct run_table *t = runs_new(100, 2);
	_Atomic uint32_t key_runs = 3;
	struct run_spec spec = { .key_id = "k", .limit = 1000, .mode = 2, .ttl_s = 10,
				 .key_runs = &key_runs };
	bool created;
	struct run *idle = runs_open(t, "idle", 4, &spec, &created);
	struct run *busy = runs_open(t, "busy", 4, &spec, &created);
	struct run *used = runs_open(t, "used", 4, &spec, &created);
	CHECK(idle && busy && used && runs_live(t) == 3);
	runs_begin(idle, 0, 1000);
	runs_end(idle, 0);
	runs_begin(busy, 1, 1000);                 /* still in flight */
	runs_begin(used, 0, 1000);
	runs_end(used, 0);
	int quiesced = 0;
	CHECK(runs_rotate(t, 1005, no_wait, &quiesced) == 0 && quiesced == 1);
	CHECK(runs_rotate(t, 1009, no_wait, &quiesced) == 0);    /* not yet idle 10 s */
	CHECK(runs_find(t, "used", 4) == used);    /* found in the previous table: kept */
	runs_begin(used, 1, 1009);
	runs_end(used, 1);
	CHECK(runs_rotate(t, 1011, no_wait, &quiesced) == 1);    /* idle 11 s: expired */
	CHECK(runs_find(t, "idle", 4) == NULL && key_runs == 2 && runs_live(t) == 2);
	CHECK(runs_find(t, "busy", 4) == busy);
	for (int64_t now = 1015; now < 1040; now++)
		runs_rotate(t, now, no_wait, &quiesced);
	CHECK(runs_find(t, "busy", 4) == busy);    /* in flight: never expires */
	CHECK(runs_find(t, "used", 4) == NULL);    /* idle since 1009 */
	runs_end(busy, 1);
	for (int64_t now = 1050; now < 1056; now++)
		runs_rotate(t, now, no_wait, &quiesced);
	CHECK(runs_find(t, "busy", 4) == NULL && runs_live(t) == 0 && key_runs == 0);
	/* an expired id opens a new run, with a fresh budget */
	struct run *again = runs_open(t, "idle", 4, &spec, &created);
	CHECK(again && created && runs_live(t) == 1);
	runs_free(t);
}

/* ---- two "shards" using runs while a sweeper expires them (run under
 * ASan by make test: a run freed while held would be a use after free) ---- */

static struct run_table *race_table;
static _Atomic uint64_t turns[2];
static _Atomic int64_t race_now = 5000;
static _Atomic int race_stop;
static _Atomic long race_wrong;

static void *race_user(void *arg)
{
	uint32_t me = (uint32_t)(long)arg;
	unsigned seed = me + 1;
	struct run_spec spec = { .key_id = "k", .limit = 1000000, .mode = 2, .ttl_s = 2 };
	struct budget_clock clk;
	budget_clock_set(&clk, 0);
	while (!race_stop) {
		char id[16];
		/* the ids in use drift with time, so older ones go idle */
		unsigned base = (unsigned)(race_now / 4 % 4) * 50;
		int n = snprintf(id, sizeof(id), "r%u", base + (unsigned)(rand_r(&seed) % 50));
		bool created;
		struct run *r = runs_open(race_table, id, (size_t)n, &spec, &created);
		if (r) {
			runs_begin(r, me, race_now);
			uint32_t over;
			struct budget_scope *sc[] = { r->scope };
			if (budget_reserve(sc, 1, me, 10, &clk, &over) == -1)
				budget_commit(sc, 1, me, 10, 7, &clk);
			if (r->id_len != n || memcmp(r->id, id, (size_t)n))
				race_wrong++;
			runs_end(r, me);
		}
		atomic_fetch_add(&turns[me], 1);
	}
	return NULL;
}

static bool race_quiesce(void *arg)
{
	uint64_t at[2] = { turns[0], turns[1] };
	while (!race_stop && (turns[0] == at[0] || turns[1] == at[1]))
		sched_yield();
	return !race_stop;
}

static void test_expiry_race(void)
{
	race_table = runs_new(1000, 2);
	pthread_t th[2];
	for (long i = 0; i < 2; i++)
		pthread_create(&th[i], NULL, race_user, (void *)i);
	uint32_t freed = 0;
	for (int i = 0; i < 3000; i++) {
		race_now += i % 3 == 0;   /* time passes: idle runs expire */
		freed += runs_rotate(race_table, race_now, race_quiesce, NULL);
	}
	race_stop = 1;
	for (int i = 0; i < 2; i++)
		pthread_join(th[i], NULL);
	CHECK(freed > 0 && race_wrong == 0);
	CHECK(runs_live(race_table) <= 200);
	printf("core/runs expiry race: %u runs expired, %u live\n", freed, runs_live(race_table));
	runs_free(race_table);
}

int main(void)
{
	CHECK(runs_valid_id("abc-1.2_3:x", 11));
	CHECK(!runs_valid_id("", 0));
	CHECK(!runs_valid_id("a b", 3));
	CHECK(!runs_valid_id("a\r\nX: y", 8));
	char long_id[66];
	memset(long_id, 'a', sizeof(long_id));
	CHECK(runs_valid_id(long_id, 64) && !runs_valid_id(long_id, 65));

	table = runs_new(1000, 2);
	pthread_t th[2];
	for (long t = 0; t < 2; t++)
		pthread_create(&th[t], NULL, opener, (void *)t);
	for (int t = 0; t < 2; t++)
		pthread_join(th[t], NULL);
	CHECK(created_count[0] + created_count[1] == 500);
	int same = 0;
	for (int i = 0; i < 500; i++)
		same += seen[0][i] && seen[0][i] == seen[1][i];
	CHECK(same == 500);

	bool created;
	struct run_spec other = { .key_id = "other", .limit = 5, .mode = 2, .ttl_s = 60 };
	struct run *r = runs_open(table, "run-7", 5, &other, &created);
	CHECK(r && !created && !strcmp(r->key_id, "k") && r->limit == 1000);
	/* the table refuses rather than overflows: capacity 1000 -> 2048 slots, half usable */
	int opened = 0;
	for (int i = 0; i < 3000; i++) {
		char id[32];
		int n = snprintf(id, sizeof(id), "more-%d", i);
		struct run_spec spec = { .key_id = "k", .limit = 1, .mode = 2, .ttl_s = 60 };
		opened += runs_open(table, id, (size_t)n, &spec, &created) != NULL;
	}
	CHECK(opened == 500);   /* capacity 1000, 500 already open */
	runs_free(table);
	test_expiry();
	test_expiry_race();
	return check_report("core/runs");
}
