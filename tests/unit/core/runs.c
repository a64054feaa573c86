/* Unit tests for core/runs.c: ids, binding, and two threads racing to
 * open the same runs always getting one run per id. */
#include <pthread.h>
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
		seen[t][i] = runs_open(table, id, (size_t)n, "k", 1000, 2, 0, &created);
		created_count[t] += created;
	}
	return NULL;
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
	struct run *r = runs_open(table, "run-7", 5, "other", 5, 2, 0, &created);
	CHECK(r && !created && !strcmp(r->key_id, "k") && r->limit == 1000);
	/* the table refuses rather than overflows: capacity 1000 -> 2048 slots, half usable */
	int opened = 0;
	for (int i = 0; i < 3000; i++) {
		char id[32];
		int n = snprintf(id, sizeof(id), "more-%d", i);
		opened += runs_open(table, id, (size_t)n, "k", 1, 2, 0, &created) != NULL;
	}
	CHECK(opened > 400 && opened < 1100);
	runs_free(table);
	return check_report("core/runs");
}
