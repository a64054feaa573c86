/*
 * ledgergen — writes a synthetic ledger directory for benchmarks
 * (bench/report_bench.sh): segment files in the daemon's format, made
 * with ledger_encode(), as a daemon with several shards would leave them.
 *
 *     ledgergen DIR RECORDS [SHARDS] [SEED]
 *
 * The mix is what a busy gateway books: about 45% reserve, 44% commit,
 * 4% refuse, 3% release, 1% expire, 2% outcome and 1% chargeback, from
 * 1,000 keys in 50 teams (20 users a key), 8 models of 3 providers, and
 * 200,000 runs, each with one key and one of 20 task types; 90% of the
 * records carry X-Budget-Tags (app, env, task). Times rise over 30 days
 * from 2026-11-01. Money is integer micro-USD, priced from the tokens.
 * The same arguments always give the same bytes (a fixed PRNG); segments
 * close past 64 MiB like the daemon's default. Not a test of correctness:
 * nothing checks what it writes but the reader.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ledger/record.h"
#include "ledger/segment.h"

#define SEGMENT_BYTES (64u << 20)
#define KEYS 1000
#define TEAMS 50
#define RUNS 200000
#define TASKS 20
#define START_MS 1793491200000LL      /* 2026-11-01T00:00:00Z */
#define SPAN_MS (30LL * 86400000)

static const struct model {
	const char *name, *provider;
	int64_t in_per_mtok, out_per_mtok;   /* micro-USD per million tokens */
} models[] = {
	{ "gpt-4o", "openai", 2500000, 10000000 },
	{ "gpt-4o-mini", "openai", 150000, 600000 },
	{ "o3-mini", "openai", 1100000, 4400000 },
	{ "claude-sonnet-4", "anthropic", 3000000, 15000000 },
	{ "claude-haiku-3.5", "anthropic", 800000, 4000000 },
	{ "claude-opus-4", "anthropic", 15000000, 75000000 },
	{ "gemini-2.0-flash", "google", 100000, 400000 },
	{ "gemini-2.5-pro", "google", 1250000, 10000000 },
};
#define MODELS (sizeof(models) / sizeof(models[0]))

static const char *const outcomes[] = { "success", "failure", "partial", "abandoned" };

/* splitmix64: small, fast, deterministic. */
static uint64_t rnd(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static uint64_t below(uint64_t *s, uint64_t n)
{
	return rnd(s) % n;
}

/* One shard's open segment. */
struct shard {
	uint32_t id;
	uint64_t seq, decision, written;
	int64_t time_ms;
	FILE *f;
};

/* Text for one record, kept while it is encoded. */
struct texts {
	char run[16], key[16], user[16], team[16], org[16], tags[96], code[24], peer[16];
};

static struct ledger_text txt(const char *s)
{
	return (struct ledger_text){ s, (uint16_t)strlen(s) };
}

static int put(struct shard *sh, const struct ledger_rec *rec)
{
	char buf[LEDGER_MAX_RECORD];
	size_t n = ledger_encode(rec, buf);
	if (fwrite(buf, 1, n, sh->f) != n)
		return -EIO;
	sh->written += n;
	return 0;
}

static int open_segment(const char *dir, struct shard *sh)
{
	char name[LEDGER_SEGMENT_NAME_MAX], path[4096];
	if (sh->f && fclose(sh->f))
		return -EIO;
	sh->seq++;
	ledger_segment_name(name, sizeof(name), sh->id, sh->seq);
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	sh->f = fopen(path, "wbx");
	if (!sh->f)
		return -errno;
	static char obuf[1 << 20];
	setvbuf(sh->f, obuf, _IOFBF, sizeof(obuf));   /* one shard writes at a time */
	sh->written = 0;
	struct ledger_rec rec = { .kind = LEDGER_SEGMENT, .decision = sh->id,
				  .run_limit = (int64_t)sh->seq, .time_ms = sh->time_ms };
	rec.f[LF_CODE] = txt(LEDGER_SEGMENT_MAGIC);
	return put(sh, &rec);
}

static int pick_kind(uint64_t *s)
{
	uint64_t r = below(s, 100);
	return r < 45 ? LEDGER_RESERVE : r < 89 ? LEDGER_COMMIT : r < 93 ? LEDGER_REFUSE :
	       r < 96 ? LEDGER_RELEASE : r < 97 ? LEDGER_EXPIRE : r < 99 ? LEDGER_OUTCOME :
	       LEDGER_CHARGEBACK;
}

/* The fields every kind shares: who, what model, which run, tags. */
static void fill_common(uint64_t *s, struct ledger_rec *rec, struct texts *t)
{
	uint64_t run = below(s, RUNS), key = run % KEYS, team = key % TEAMS;
	const struct model *m = &models[(run / KEYS) % MODELS];
	snprintf(t->run, sizeof(t->run), "run-%06llu", (unsigned long long)run);
	snprintf(t->key, sizeof(t->key), "vk-%04llu", (unsigned long long)key);
	snprintf(t->user, sizeof(t->user), "user-%05llu",
		 (unsigned long long)(key * 20 + below(s, 20)));
	snprintf(t->team, sizeof(t->team), "team-%02llu", (unsigned long long)team);
	snprintf(t->org, sizeof(t->org), "org-%llu", (unsigned long long)(team / 10));
	if (below(s, 10))
		snprintf(t->tags, sizeof(t->tags), "app=app-%llu,env=%s,task=task-%02llu",
			 (unsigned long long)(key % 7), below(s, 4) ? "prod" : "staging",
			 (unsigned long long)(run % TASKS));
	else
		t->tags[0] = '\0';
	rec->f[LF_RUN] = txt(t->run);
	rec->f[LF_KEY] = txt(t->key);
	rec->f[LF_USER] = txt(t->user);
	rec->f[LF_TEAM] = txt(t->team);
	rec->f[LF_ORG] = txt(t->org);
	rec->f[LF_PROVIDER] = txt(m->provider);
	rec->f[LF_MODEL] = txt(m->name);
	rec->f[LF_REQUESTED] = txt(m->name);
	rec->f[LF_PRICES] = txt("2026-11-01");
	rec->f[LF_TAGS] = txt(t->tags);
	rec->status = 200;
	rec->mode = 2;
	/* tokens and their price; a few runs in each task are far more costly */
	uint64_t heavy = run % 997 == 0 ? 20 : 1;
	rec->input = (200 + below(s, 8000)) * heavy;
	rec->output = (20 + below(s, 1500)) * heavy;
	rec->cached = below(s, 4) ? 0 : rec->input / 2;
	rec->reserved = (int64_t)((rec->input * (uint64_t)m->in_per_mtok +
				   4096 * (uint64_t)m->out_per_mtok) / 1000000 + 1);
	rec->usd = (int64_t)((rec->input * (uint64_t)m->in_per_mtok +
			      rec->output * (uint64_t)m->out_per_mtok + 999999) / 1000000);
}

/* The fields that differ by kind. */
static void fill_kind(uint64_t *s, struct ledger_rec *rec, struct texts *t)
{
	switch (rec->kind) {
	case LEDGER_RESERVE:
		rec->usd = rec->reserved;
		rec->input = rec->output = rec->cached = 0;
		break;
	case LEDGER_REFUSE:
		rec->usd = rec->reserved;
		rec->status = 402;
		rec->input = rec->output = rec->cached = 0;
		rec->f[LF_CODE] = txt("budget_exhausted");
		break;
	case LEDGER_RELEASE:
		rec->usd = 0;
		rec->status = 502;
		rec->input = rec->output = rec->cached = 0;
		break;
	case LEDGER_EXPIRE:
		rec->usd = rec->reserved;
		break;
	case LEDGER_OUTCOME:
		rec->usd = rec->input = rec->output = rec->cached = rec->reserved = 0;
		rec->f[LF_CODE] = txt(outcomes[below(s, 4)]);
		break;
	case LEDGER_CHARGEBACK:
		rec->usd = (int64_t)(1 + below(s, 5000000));
		rec->input = rec->output = rec->cached = rec->reserved = 0;
		snprintf(t->peer, sizeof(t->peer), "team-%02llu",   /* another team */
			 (unsigned long long)((strtoull(t->team + 5, NULL, 10) + 1 +
					       below(s, TEAMS - 1)) % TEAMS));
		rec->f[LF_PEER] = txt(t->peer);
		rec->f[LF_CODE] = txt("grant");
		break;
	}
}

/* Record i of the n of shard sh: its time is i/n of the way through. */
static int one_record(uint64_t *s, struct shard *sh, uint64_t i, uint64_t n)
{
	struct ledger_rec rec = { 0 };
	struct texts t;
	rec.kind = (uint8_t)pick_kind(s);
	rec.decision = (uint64_t)sh->id << 48 | ++sh->decision;
	rec.time_ms = START_MS + (int64_t)((unsigned __int128)i * SPAN_MS / n);
	sh->time_ms = rec.time_ms;
	fill_common(s, &rec, &t);
	fill_kind(s, &rec, &t);
	return put(sh, &rec);
}

int main(int argc, char **argv)
{
	if (argc < 3 || argc > 5) {
		fprintf(stderr, "usage: ledgergen DIR RECORDS [SHARDS] [SEED]\n");
		return 1;
	}
	const char *dir = argv[1];
	uint64_t total = strtoull(argv[2], NULL, 10);
	uint32_t shards = argc > 3 ? (uint32_t)strtoul(argv[3], NULL, 10) : 4;
	uint64_t seed = argc > 4 ? strtoull(argv[4], NULL, 10) : 1;
	if (!total || !shards || shards > 999) {
		fprintf(stderr, "ledgergen: RECORDS and SHARDS (1..999) must be positive\n");
		return 1;
	}
	if (mkdir(dir, 0755) && errno != EEXIST) {
		perror(dir);
		return 1;
	}
	int rc = 0;
	/* shard by shard, each its share of the records over the whole span */
	for (uint32_t k = 0; k < shards && !rc; k++) {
		struct shard sh = { .id = k, .time_ms = START_MS };
		uint64_t n = total * (k + 1) / shards - total * k / shards;
		rc = open_segment(dir, &sh);
		for (uint64_t i = 0; i < n && !rc; i++) {
			rc = one_record(&seed, &sh, i, n);
			if (!rc && sh.written >= SEGMENT_BYTES)
				rc = open_segment(dir, &sh);
		}
		if (sh.f && fclose(sh.f) && !rc)
			rc = -EIO;
	}
	if (rc) {
		fprintf(stderr, "ledgergen: %s: %s\n", dir, strerror(-rc));
		return 1;
	}
	return 0;
}
