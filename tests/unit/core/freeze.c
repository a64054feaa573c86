/*
 * Unit tests for core/freeze.c: set/clear/has per kind, the order numbers
 * a replay sorts by, tombstones reused without losing entries behind
 * them, the table's limit, and readers racing a writer (a frozen scope is
 * never reported unfrozen while it stays frozen).
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "core/freeze.h"
#include "tests/unit/check.h"

static bool has(struct freeze_table *t, enum freeze_kind k, const char *id)
{
	return freeze_has(t, k, id, strlen(id));
}

static void test_basics(void)
{
	struct freeze_table *t = freeze_new();
	CHECK(!freeze_any(t) && !has(t, FREEZE_TEAM, "research"));
	uint64_t s1 = 0, s2 = 0, s3 = 0;
	CHECK(freeze_set(t, FREEZE_TEAM, "research", 8, "loop", 100, &s1) == 1);
	CHECK(freeze_any(t) && has(t, FREEZE_TEAM, "research"));
	/* the same name under another kind is another scope */
	CHECK(!has(t, FREEZE_KEY, "research") && !has(t, FREEZE_ORG, "research"));
	/* again: no change, no new order number, the first reason kept */
	uint64_t again = 77;
	CHECK(freeze_set(t, FREEZE_TEAM, "research", 8, "other", 200, &again) == 0 && again == 77);
	CHECK(freeze_set(t, FREEZE_KEY, "k1", 2, "", 100, &s2) == 1 && s2 > s1);
	CHECK(freeze_clear(t, FREEZE_TEAM, "research", 8, &s3) == 1 && s3 > s2);
	CHECK(!has(t, FREEZE_TEAM, "research") && has(t, FREEZE_KEY, "k1"));
	CHECK(freeze_clear(t, FREEZE_TEAM, "research", 8, NULL) == 0);
	CHECK(freeze_set(t, FREEZE_RUN, "", 0, "", 0, NULL) == -EINVAL);
	char longid[FREEZE_ID_MAX + 2];
	memset(longid, 'a', sizeof(longid));
	CHECK(freeze_set(t, FREEZE_RUN, longid, FREEZE_ID_MAX + 1, "", 0, NULL) == -EINVAL);
	CHECK(freeze_set(t, FREEZE_RUN, longid, FREEZE_ID_MAX, "", 0, NULL) == 1);
	/* a replay seeds the order: later changes sort after replayed ones */
	freeze_seed(t, 1000);
	uint64_t s4 = 0;
	CHECK(freeze_set(t, FREEZE_USER, "alice", 5, "", 0, &s4) == 1 && s4 == 1001);
	freeze_seed(t, 5);   /* never backwards */
	CHECK(freeze_clear(t, FREEZE_USER, "alice", 5, &s4) == 1 && s4 == 1002);
	CHECK(freeze_kind_parse("org", 3) == FREEZE_ORG && freeze_kind_parse("orgs", 4) == -1);
	CHECK(!strcmp(freeze_kind_name(FREEZE_RUN), "run"));
	freeze_free(t);
}

static void count_one(void *arg, const struct freeze_slot *slot)
{
	(void)slot;
	(*(int *)arg)++;
}

/* Fill, empty, refill: tombstones are reused, and an entry placed past a
 * tombstone is still found. */
static void test_limit_and_tombstones(void)
{
	struct freeze_table *t = freeze_new();
	char id[32];
	for (int i = 0; i < FREEZE_SLOTS; i++) {
		int n = snprintf(id, sizeof(id), "run-%d", i);
		CHECK(freeze_set(t, FREEZE_RUN, id, (size_t)n, "", 0, NULL) == 1);
	}
	CHECK(freeze_set(t, FREEZE_RUN, "one-more", 8, "", 0, NULL) == -ENOSPC);
	for (int round = 0; round < 3; round++) {
		for (int i = 0; i < FREEZE_SLOTS; i += 2) {
			int n = snprintf(id, sizeof(id), "run-%d", i);
			CHECK(freeze_clear(t, FREEZE_RUN, id, (size_t)n, NULL) == 1);
		}
		for (int i = 1; i < FREEZE_SLOTS; i += 2) {
			int n = snprintf(id, sizeof(id), "run-%d", i);
			CHECK(freeze_has(t, FREEZE_RUN, id, (size_t)n));
		}
		for (int i = 0; i < FREEZE_SLOTS; i += 2) {
			int n = snprintf(id, sizeof(id), "x%d-%d", round, i);
			CHECK(freeze_set(t, FREEZE_RUN, id, (size_t)n, "", 0, NULL) == 1);
		}
		for (int i = 0; i < FREEZE_SLOTS; i += 2) {
			int n = snprintf(id, sizeof(id), "x%d-%d", round, i);
			CHECK(freeze_has(t, FREEZE_RUN, id, (size_t)n));
			CHECK(freeze_clear(t, FREEZE_RUN, id, (size_t)n, NULL) == 1);
			n = snprintf(id, sizeof(id), "run-%d", i);
			CHECK(freeze_set(t, FREEZE_RUN, id, (size_t)n, "", 0, NULL) == 1);
		}
	}
	int listed = 0;
	freeze_each(t, count_one, &listed);
	CHECK(listed == FREEZE_SLOTS && atomic_load(&t->count) == FREEZE_SLOTS);
	freeze_free(t);
}

/* A writer freezes and unfreezes other scopes while readers look at one
 * that stays frozen: they must see it frozen every time. */
static struct freeze_table *race_table;
static atomic_bool race_stop;

static void *race_writer(void *arg)
{
	(void)arg;
	char id[32];
	for (int i = 0; i < 200000; i++) {
		int n = snprintf(id, sizeof(id), "churn-%d", i % 700);
		if (i % 1400 < 700)
			freeze_set(race_table, FREEZE_KEY, id, (size_t)n, "", 0, NULL);
		else
			freeze_clear(race_table, FREEZE_KEY, id, (size_t)n, NULL);
	}
	atomic_store(&race_stop, true);
	return NULL;
}

static void *race_reader(void *arg)
{
	long *misses = arg;
	while (!atomic_load(&race_stop))
		if (!freeze_has(race_table, FREEZE_TEAM, "stays", 5))
			(*misses)++;
	return NULL;
}

static void test_readers_race_writer(void)
{
	race_table = freeze_new();
	CHECK(freeze_set(race_table, FREEZE_TEAM, "stays", 5, "", 0, NULL) == 1);
	pthread_t w, r;
	long misses = 0;
	pthread_create(&r, NULL, race_reader, &misses);
	pthread_create(&w, NULL, race_writer, NULL);
	pthread_join(w, NULL);
	pthread_join(r, NULL);
	CHECK(misses == 0);
	freeze_free(race_table);
}

int main(void)
{
	test_basics();
	test_limit_and_tombstones();
	test_readers_race_writer();
	return check_report("core/freeze");
}
