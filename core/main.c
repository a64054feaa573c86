/*
 * main.c — the tollgate daemon: parse arguments, load the configuration,
 * start one shard per worker, then turn signals into shard messages.
 *
 *   tollgate -c FILE          run
 *   tollgate -t -c FILE       check FILE, print file:line errors, exit 0/1
 *   tollgate --version
 *   --workers N               override `workers`
 *   --ledger-repair           cut damaged records out of the ledger at start
 *
 * SIGHUP loads the file again and hands the new generation to every shard
 * (a bad file is reported and the running one kept). SIGTERM/SIGINT drain:
 * stop accepting, finish what is in flight up to drain_timeout_ms, flush
 * the ledger, exit 0.
 * Exit codes: 0 ok, 1 usage or config error, 2 runtime failure.
 */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <time.h>

#include "core/alerts.h"
#include "core/budget_book.h"
#include "core/config.h"
#include "core/defs.h"
#include "core/freeze.h"
#include "core/grants.h"
#include "core/log.h"
#include "core/runs.h"
#include "core/shard.h"
#include "ledger/ledger.h"
#include "tls/tls.h"

/* jemalloc reads this at start: return freed memory to the kernel within a
 * second, from its own thread, so a burst does not leave RSS behind. */
const char *malloc_conf = "background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0";

static void usage(FILE *out)
{
	fprintf(out,
		"usage: tollgate -c FILE [--workers N] [--ledger-repair]\n"
		"       tollgate -t -c FILE     check the configuration and exit\n"
		"       tollgate --version\n");
}

/* The CPUs this process may run on, in order; returns how many. */
static int online_cpus(int *cpus, int max)
{
	cpu_set_t set;
	int n = 0;
	if (sched_getaffinity(0, sizeof(set), &set) == 0) {
		for (int c = 0; c < CPU_SETSIZE && n < max; c++)
			if (CPU_ISSET(c, &set))
				cpus[n++] = c;
	}
	if (n == 0)
		cpus[n++] = 0;
	return n;
}

struct options {
	const char *config_path;
	bool check_only;
	int workers;   /* -1: from config */
	bool ledger_repair;
};

static int parse_args(int argc, char **argv, struct options *o)
{
	static const struct option longopts[] = {
		{ "version", no_argument, NULL, 'V' },
		{ "workers", required_argument, NULL, 'w' },
		{ "ledger-repair", no_argument, NULL, 'R' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	*o = (struct options){ .workers = -1 };
	int ch;
	while ((ch = getopt_long(argc, argv, "c:th", longopts, NULL)) != -1) {
		switch (ch) {
		case 'c':
			o->config_path = optarg;
			break;
		case 't':
			o->check_only = true;
			break;
		case 'w': {
			char *end;
			long n = strtol(optarg, &end, 10);
			if (*end || n < 1 || n > 256) {
				fprintf(stderr, "tollgate: --workers expects 1..256\n");
				return 1;
			}
			o->workers = (int)n;
			break;
		}
		case 'R':
			o->ledger_repair = true;
			break;
		case 'V':
			printf("tollgate %s\n", TOLLGATE_VERSION);
			exit(0);
		case 'h':
			usage(stdout);
			exit(0);
		default:
			usage(stderr);
			return 1;
		}
	}
	if (optind != argc || !o->config_path) {
		usage(stderr);
		return 1;
	}
	return 0;
}

/* Binds a loaded generation to the live counters; logs the relay-only case. */
static int bind_budgets(struct budget_book *book, struct config *cfg)
{
	if (budget_book_bind(book, cfg)) {
		log_error("out of memory binding budgets");
		return -1;
	}
	if (!cfg->n_keys)
		log_warn("no keys configured: agents are relayed without authentication or budgets");
	return 0;
}

/* The ledger is opened once: a reload cannot move or re-tune it. */
static void warn_ledger_change(const struct cfg_ledger *was, const struct cfg_ledger *now)
{
	bool same_dir = (!was->dir && !now->dir) || (was->dir && now->dir && !strcmp(was->dir, now->dir));
	if (!same_dir || was->fsync != now->fsync || was->batch_ms != now->batch_ms ||
	    was->segment_mb != now->segment_mb)
		log_warn("reload: the ledger section changed; it takes effect at the next restart");
}

static void reload(struct shard *shards, int n, const char *path, struct budget_book *book,
		   struct alerts *alerts, const struct cfg_ledger *ledger)
{
	struct config *next = config_load(path, stderr);
	if (!next || bind_budgets(book, next)) {
		log_error("reload of %s failed; keeping the running configuration", path);
		config_unref(next);
		return;
	}
	warn_ledger_change(ledger, &next->ledger);
	for (int i = 0; i < n; i++) {
		config_ref(next);
		shard_post(&shards[i], SHARD_CMD_RELOAD, next);
	}
	alerts_reload(alerts, next);
	config_unref(next);
	log_info("reload of %s handed to %d shards", path, n);
}

/*
 * TOLLGATE_TEST_CLOCK_FILE names a file holding a number of seconds added
 * to the wall clock that budget windows follow, re-read every 100 ms. It
 * exists so tests can cross an hour or a month boundary in a second; the
 * daemon logs a warning when it is set.
 */
static void read_clock_file(const char *path, _Atomic int64_t *offset)
{
	FILE *f = fopen(path, "r");
	long long v;
	if (f && fscanf(f, "%lld", &v) == 1)
		atomic_store(offset, (int64_t)v);
	if (f)
		fclose(f);
}

/*
 * The run sweeper: every RUNS_ROTATE_MS, expires runs idle past their TTL
 * (core/runs.c) and frees grants closed since its last step (core/grants.c).
 * Its quiescence test is each shard's loop-turn counter
 * moving: a shard holds a run it found only within a turn, unless it
 * counted it in flight.
 */
struct sweeper {
	pthread_t thread;
	struct run_table *runs;
	struct grant_table *grants;
	struct shard *shards;
	int n_shards;
	const _Atomic int64_t *clock_offset_s;
	atomic_bool stop;
};

static void quiesce_shards(void *arg)
{
	struct sweeper *w = arg;
	uint64_t seen[BUDGET_MAX_SHARDS];
	for (int i = 0; i < w->n_shards; i++)
		seen[i] = atomic_load_explicit(&w->shards[i].turns, memory_order_acquire);
	for (int i = 0; i < w->n_shards && !atomic_load(&w->stop);) {
		if (atomic_load_explicit(&w->shards[i].turns, memory_order_acquire) != seen[i]) {
			i++;
			continue;
		}
		struct timespec ms = { 0, 1000000 };
		nanosleep(&ms, NULL);
	}
}

/* quiesce_shards(), and whether it ran to the end (not cut short by stop). */
static bool quiesce_completed(void *arg)
{
	struct sweeper *w = arg;
	quiesce_shards(w);
	return !atomic_load(&w->stop);
}

static void *sweeper_main(void *arg)
{
	struct sweeper *w = arg;
	while (!atomic_load(&w->stop)) {
		for (int waited = 0; waited < RUNS_ROTATE_MS && !atomic_load(&w->stop); waited += 50) {
			struct timespec step = { 0, 50 * 1000000L };
			nanosleep(&step, NULL);
		}
		if (atomic_load(&w->stop))
			break;
		struct timespec now;
		clock_gettime(CLOCK_REALTIME, &now);
		uint32_t freed = runs_rotate(w->runs, now.tv_sec + atomic_load(w->clock_offset_s),
					     quiesce_completed, w);
		if (freed)
			log_info("%u idle runs expired, %u live", freed, runs_live(w->runs));
		grants_reclaim(w->grants, quiesce_completed, w);
	}
	return NULL;
}

/* The kill switch survives restarts: the ledger's freeze and unfreeze
 * records, in time order, rebuild the table. */
static void restore_freezes(struct freeze_table *t, const struct ledger_replay *rp)
{
	uint32_t frozen = 0;
	uint64_t last = 0;
	for (size_t i = 0; i < rp->n_freezes; i++) {
		const struct ledger_freeze_event *e = &rp->freezes[i];
		if (e->frozen)
			freeze_set(t, (enum freeze_kind)e->scope, e->id, strlen(e->id), e->reason,
				   e->time_ms / 1000, NULL);
		else
			freeze_clear(t, (enum freeze_kind)e->scope, e->id, strlen(e->id), NULL);
		last = MAX(last, e->seq);
	}
	freeze_seed(t, last);    /* new changes are ordered after the replayed ones */
	frozen = atomic_load(&t->count);
	if (frozen)
		log_warn("ledger: %u scopes are frozen (the kill switch): GET /admin/freezes", frozen);
}

int main(int argc, char **argv)
{
	struct options opt;
	if (parse_args(argc, argv, &opt))
		return 1;
	struct config *cfg = config_load(opt.config_path, stderr);
	if (!cfg)
		return 1;
	if (opt.check_only) {
		printf("%s: ok\n", opt.config_path);
		config_unref(cfg);
		return 0;
	}

	/* Every connection is a descriptor: take all the kernel allows. */
	struct rlimit nofile;
	if (getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur < nofile.rlim_max) {
		nofile.rlim_cur = nofile.rlim_max;
		setrlimit(RLIMIT_NOFILE, &nofile);
	}

	int cpus[256];
	int n_cpus = online_cpus(cpus, 256);
	int workers = opt.workers > 0 ? opt.workers : cfg->workers > 0 ? cfg->workers : n_cpus;

	/* Signals go to this thread only (sigwait below); shards never see
	 * them, and SIGPIPE is ignored everywhere (sends use MSG_NOSIGNAL). */
	sigset_t sigs;
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGHUP);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGINT);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);
	signal(SIGPIPE, SIG_IGN);

	struct budget_book *book = budget_book_new((uint32_t)workers);
	if (!book || workers > BUDGET_MAX_SHARDS || bind_budgets(book, cfg)) {
		log_error("cannot set up budgets for %d workers (at most %d)", workers,
			  BUDGET_MAX_SHARDS);
		return 2;
	}
	const char *clock_file = getenv("TOLLGATE_TEST_CLOCK_FILE");
	static _Atomic int64_t clock_offset_s;
	if (clock_file) {
		log_warn("TOLLGATE_TEST_CLOCK_FILE is set: budget windows follow %s", clock_file);
		read_clock_file(clock_file, &clock_offset_s);
	}
	/* the ledger rebuilds spend (and frozen scopes) before anything can
	 * be spent */
	struct ledger_set ledger = { .dir_fd = -1 };
	struct shard *shards = NULL;
	struct freeze_table *freeze = freeze_new();
	if (!freeze)
		goto fail;
	if (cfg->ledger.dir && ledger_start(&ledger, cfg, (uint32_t)workers,
					    time(NULL) + atomic_load(&clock_offset_s),
					    opt.ledger_repair))
		goto fail;
	restore_freezes(freeze, &ledger.replay);
	shards = calloc((size_t)workers, sizeof(*shards));
	if (!shards)
		goto fail;
	/* session tickets: every shard derives its keys from this (tls/ticket.c) */
	static uint8_t ticket_secret[TLS_TICKET_SECRET];
	if (getrandom(ticket_secret, sizeof(ticket_secret), 0) != sizeof(ticket_secret))
		goto fail;
	for (int i = 0; i < workers; i++) {
		int rc = shard_init(&shards[i], i, cfg->pin ? cpus[i % n_cpus] : -1, cfg,
				    ticket_secret);
		if (rc) {
			log_error("shard %d: start-up failed: %s", i, strerror(-rc));
			for (int j = 0; j <= i; j++)
				shard_destroy(&shards[j]);
			goto fail;
		}
	}
	for (int i = 0; i < workers; i++) {
		shards[i].clock_offset_s = &clock_offset_s;
		shards[i].freeze = freeze;
		shards[i].all = shards;
		shards[i].n_all = workers;
		if (ledger.n) {
			shards[i].ledger = &ledger.writers[i];
			shards[i].decisions = ledger_first_decision(&ledger, (uint32_t)i);
		}
	}
	struct alerts *alerts = alerts_start(cfg, &clock_offset_s);
	struct sweeper sweeper = { .runs = cfg->runs, .grants = cfg->grants,
				   .shards = shards, .n_shards = workers,
				   .clock_offset_s = &clock_offset_s };
	/* as opened; its dir copied, since cfg's memory goes with its generation */
	struct cfg_ledger ledger_cfg = cfg->ledger;
	char *ledger_dir = cfg->ledger.dir ? strdup(cfg->ledger.dir) : NULL;
	ledger_cfg.dir = ledger_dir;
	config_unref(cfg);   /* the shards and the alert watcher hold it now */
	if (!alerts) {
		log_error("cannot start the alert watcher");
		return 2;
	}
	for (int i = 0; i < workers; i++) {
		if (shard_start(&shards[i])) {
			log_error("cannot start shard %d", i);
			return 2;
		}
	}
	if (pthread_create(&sweeper.thread, NULL, sweeper_main, &sweeper)) {
		log_error("cannot start the run sweeper");
		return 2;
	}
	log_info("tollgate %s: %d workers, config %s", TOLLGATE_VERSION, workers,
		 opt.config_path);

	for (;;) {
		int sig;
		if (clock_file) {
			struct timespec tick = { 0, 100 * 1000 * 1000 };
			sig = sigtimedwait(&sigs, NULL, &tick);
			read_clock_file(clock_file, &clock_offset_s);
			if (sig < 0)
				continue;
		} else if (sigwait(&sigs, &sig))
			continue;
		if (sig == SIGHUP) {
			reload(shards, workers, opt.config_path, book, alerts, &ledger_cfg);
			continue;
		}
		log_info("signal %d: draining", sig);
		break;
	}
	atomic_store(&sweeper.stop, true);     /* before the shards stop turning */
	pthread_join(sweeper.thread, NULL);
	for (int i = 0; i < workers; i++)
		shard_post(&shards[i], SHARD_CMD_DRAIN, NULL);
	int code = 0;
	for (int i = 0; i < workers; i++) {
		shard_join(&shards[i]);
		if (shards[i].exit_code)
			code = shards[i].exit_code;
		shard_destroy(&shards[i]);
	}
	free(shards);
	ledger_stop(&ledger);
	free(ledger_dir);
	alerts_stop(alerts);
	budget_book_free(book);
	freeze_free(freeze);
	log_info("stopped");
	return code;

fail:   /* nothing runs yet: undo it all, so even a leak-checking build exits 2 */
	free(shards);
	freeze_free(freeze);
	ledger_stop(&ledger);
	config_unref(cfg);
	budget_book_free(book);
	return 2;
}
