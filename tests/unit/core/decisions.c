/*
 * Unit tests for core/decisions.c: records found by id on their shard,
 * overwritten ones reported gone, foreign ids refused, and a reader racing
 * the writer never sees a torn record.
 */
#include <pthread.h>
#include <string.h>

#include "core/decisions.h"
#include "tests/unit/check.h"

static uint64_t id_of(uint32_t shard, uint64_t seq)
{
	return (uint64_t)shard << DECISION_ID_SHARD_SHIFT | seq;
}

static struct decision_log *log_;
static _Atomic int done;
static _Atomic long torn, seen;

static void *writer(void *arg)
{
	for (uint64_t seq = 1; seq <= 200000; seq++) {
		struct decision_rec r = { .id = id_of(1, seq), .actual_usd = (int64_t)seq };
		memset(r.tags, 'a' + (int)(seq % 26), sizeof(r.tags) - 1);
		decisions_put(log_, 1, &r);
	}
	done = 1;
	return NULL;
}

static void *reader(void *arg)
{
	uint64_t seq = 1;
	while (!done) {
		struct decision_rec r;
		if (decisions_get(log_, id_of(1, seq), &r)) {
			seen++;
			if (r.actual_usd != (int64_t)seq || r.tags[0] != r.tags[255] ||
			    r.tags[0] != 'a' + (int)(seq % 26))
				torn++;
		}
		seq = seq % 200000 + 1;
	}
	return NULL;
}

int main(void)
{
	log_ = decisions_new(2);
	struct decision_rec r = { .id = id_of(0, 7), .status = 402, .kind = DECISION_BLOCK };
	strcpy(r.code, "team_ceiling_reached");
	decisions_put(log_, 0, &r);
	struct decision_rec got;
	CHECK(decisions_get(log_, id_of(0, 7), &got) && got.status == 402 &&
	      !strcmp(got.code, "team_ceiling_reached"));
	CHECK(!decisions_get(log_, id_of(0, 8), &got));              /* never written */
	CHECK(!decisions_get(log_, id_of(1, 7), &got));              /* other shard */
	CHECK(!decisions_get(log_, id_of(5, 7), &got));              /* no such shard */
	r.id = id_of(0, 7 + DECISIONS_PER_SHARD);                     /* same slot, newer */
	decisions_put(log_, 0, &r);
	CHECK(!decisions_get(log_, id_of(0, 7), &got));
	CHECK(decisions_get(log_, id_of(0, 7 + DECISIONS_PER_SHARD), &got));

	pthread_t w, rd;
	pthread_create(&rd, NULL, reader, NULL);
	pthread_create(&w, NULL, writer, NULL);
	pthread_join(w, NULL);
	pthread_join(rd, NULL);
	CHECK(torn == 0);
	printf("core/decisions race: %ld reads, %ld torn\n", (long)seen, (long)torn);
	decisions_free(log_);
	return check_report("core/decisions");
}
