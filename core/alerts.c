/*
 * alerts.c — the alert watcher (alerts.h).
 *
 * Each sweep sums the current window's committed spend of every budget
 * that has alert_at (core/budget.c totals: reads, never writes, the shards'
 * slots), and fires each fraction it has reached for the first time in
 * this window. What has fired is remembered per scope — scopes outlive
 * config generations (budget_book), so a reload neither repeats nor loses
 * an alert — and forgotten when the window rolls over.
 *
 * Delivery: the log line always comes first; the webhook POST is tried
 * three times (0.2 s, 0.4 s apart) with alerts.timeout_ms per attempt, and
 * a failure is logged, never retried later.
 */
#include "core/alerts.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "core/budget.h"
#include "core/config.h"
#include "core/log.h"
#include "core/money.h"

#define SWEEP_MS 250

struct alert_state {
	const struct budget_scope *scope;
	int64_t epoch;          /* the window `fired` is for */
	/* the fractions (ppm) that have fired: by value, so a reload that
	 * adds, removes or reorders alert_at entries keeps them apart */
	uint32_t fired[CFG_MAX_ALERTS];
	uint8_t n_fired;
};

struct alerts {
	pthread_t thread;
	pthread_mutex_t lock;   /* guards cfg and stop */
	pthread_cond_t wake;
	struct config *cfg;     /* generation watched, one reference held */
	bool stop;
	const _Atomic int64_t *clock_offset_s;
	/* owned by the thread */
	struct alert_state *states;
	size_t n_states, cap_states;
};

static struct alert_state *state_of(struct alerts *a, const struct budget_scope *scope)
{
	for (size_t i = 0; i < a->n_states; i++)
		if (a->states[i].scope == scope)
			return &a->states[i];
	if (a->n_states == a->cap_states) {
		size_t cap = a->cap_states ? a->cap_states * 2 : 64;
		struct alert_state *s = realloc(a->states, cap * sizeof(*s));
		if (!s)
			return NULL;
		a->states = s;
		a->cap_states = cap;
	}
	a->states[a->n_states] = (struct alert_state){ .scope = scope, .epoch = -1 };
	return &a->states[a->n_states++];
}

/* One POST attempt; true on a 2xx answer. */
static bool post_once(const struct cfg_alerts *c, const char *body, size_t len)
{
	int fd = socket(c->addr.sa.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return false;
	struct timeval tv = { .tv_sec = c->timeout_ms / 1000,
			      .tv_usec = (c->timeout_ms % 1000) * 1000 };
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));   /* connect too */
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	char head[512];
	int n = snprintf(head, sizeof(head),
			 "POST %s HTTP/1.1\r\nHost: %s:%u\r\nUser-Agent: tollgate\r\n"
			 "Content-Type: application/json\r\nContent-Length: %zu\r\n"
			 "Connection: close\r\n\r\n", c->path, c->host, c->port, len);
	bool ok = n > 0 && (size_t)n < sizeof(head) &&
		  connect(fd, (const struct sockaddr *)&c->addr.sa, c->addr.salen) == 0 &&
		  send(fd, head, (size_t)n, MSG_NOSIGNAL) == n &&
		  send(fd, body, len, MSG_NOSIGNAL) == (ssize_t)len;
	char reply[64] = "";
	size_t got = 0;
	while (ok && got < 12) {
		ssize_t r = recv(fd, reply + got, sizeof(reply) - 1 - got, 0);
		if (r <= 0)
			break;
		got += (size_t)r;
	}
	close(fd);
	/* "HTTP/1.1 2xx" */
	return ok && got >= 12 && !strncmp(reply, "HTTP/1.", 7) && reply[9] == '2';
}

static void post(const struct cfg_alerts *c, const char *body, size_t len)
{
	for (int attempt = 0; attempt < 3; attempt++) {
		if (attempt) {
			struct timespec pause = { 0, 200000000L * attempt };
			nanosleep(&pause, NULL);
		}
		if (post_once(c, body, len))
			return;
	}
	log_error("alert webhook %s failed 3 times: alert dropped", c->webhook_url);
}

static void fire(const struct config *cfg, const char *kind, const char *name,
		 const struct cfg_budget *b, int i, const struct budget_totals *t, int64_t now_s)
{
	char limit[32], committed[32], reserved[32], fraction[32], when[32];
	money_format(t->limit, limit, sizeof(limit));
	money_format(t->committed, committed, sizeof(committed));
	money_format(t->reserved, reserved, sizeof(reserved));
	money_format(b->alert_ppm[i], fraction, sizeof(fraction));   /* ppm: six decimals */
	struct tm tm;
	time_t secs = (time_t)now_s;
	strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", gmtime_r(&secs, &tm));
	if (cfg->alerts.log)
		log_warn("budget alert: %s:%s has spent $%s of its $%s %s budget, past %s of it",
			 kind, name, committed, limit, config_window_name(b->window), fraction);
	if (!cfg->alerts.webhook_url)
		return;
	char body[1024];
	int n = snprintf(body, sizeof(body),
			 "{\"type\":\"budget_alert\",\"scope\":\"%s:%s\",\"window\":\"%s\","
			 "\"mode\":\"%s\",\"alert_at\":\"%s\",\"limit_usd\":\"%s\","
			 "\"committed_usd\":\"%s\",\"reserved_usd\":\"%s\",\"time\":\"%s\","
			 "\"prices_version\":\"%s\"}",
			 kind, name, config_window_name(b->window), config_mode_name(b->mode),
			 fraction, limit, committed, reserved, when, cfg->prices_version);
	if (n > 0 && (size_t)n < sizeof(body))
		post(&cfg->alerts, body, (size_t)n);
}

static bool has_fired(const struct alert_state *st, uint32_t ppm)
{
	for (int i = 0; i < st->n_fired; i++)
		if (st->fired[i] == ppm)
			return true;
	return false;
}

/* Keeps only fired fractions that b still lists (a reload dropped the
 * rest): at most CFG_MAX_ALERTS, and one of b's is unfired, so room. */
static void forget_unlisted(struct alert_state *st, const struct cfg_budget *b)
{
	uint8_t kept = 0;
	for (int i = 0; i < st->n_fired; i++)
		for (int j = 0; j < b->n_alerts; j++)
			if (st->fired[i] == b->alert_ppm[j]) {
				st->fired[kept++] = st->fired[i];
				break;
			}
	st->n_fired = kept;
}

static void check(struct alerts *a, const struct config *cfg, const struct budget_clock *clk,
		  const char *kind, const char *name, const struct cfg_budget *b)
{
	if (!b->present || !b->scope || !b->n_alerts)
		return;
	struct alert_state *st = state_of(a, b->scope);
	if (!st)
		return;
	int64_t epoch = clk->epoch[b->scope->window];
	if (st->epoch != epoch) {
		st->epoch = epoch;
		st->n_fired = 0;
	}
	struct budget_totals t;
	budget_totals(b->scope, clk, &t);
	for (int i = 0; i < b->n_alerts; i++) {
		/* exact: committed >= limit * ppm / 1e6, in 128 bits */
		__int128 reached = (__int128)t.committed * 1000000;
		if (has_fired(st, b->alert_ppm[i]) || reached < (__int128)t.limit * b->alert_ppm[i])
			continue;
		if (st->n_fired == CFG_MAX_ALERTS)
			forget_unlisted(st, b);
		st->fired[st->n_fired++] = b->alert_ppm[i];
		fire(cfg, kind, name, b, i, &t, clk->now_s);
	}
}

static void sweep(struct alerts *a, const struct config *cfg)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	struct budget_clock clk;
	budget_clock_set(&clk, ts.tv_sec + (a->clock_offset_s ? atomic_load(a->clock_offset_s) : 0));
	for (uint32_t i = 0; i < cfg->n_orgs; i++)
		check(a, cfg, &clk, "org", cfg->orgs[i].name, &cfg->orgs[i].budget);
	for (uint32_t i = 0; i < cfg->n_teams; i++)
		check(a, cfg, &clk, "team", cfg->teams[i].name, &cfg->teams[i].budget);
	for (uint32_t i = 0; i < cfg->n_users; i++)
		check(a, cfg, &clk, "user", cfg->users[i].name, &cfg->users[i].budget);
	for (uint32_t i = 0; i < cfg->n_keys; i++)
		check(a, cfg, &clk, "key", cfg->keys[i].id, &cfg->keys[i].budget);
}

static void *alerts_main(void *arg)
{
	struct alerts *a = arg;
	pthread_mutex_lock(&a->lock);
	while (!a->stop) {
		struct timespec until;
		clock_gettime(CLOCK_REALTIME, &until);
		until.tv_nsec += SWEEP_MS * 1000000L;
		if (until.tv_nsec >= 1000000000L) {
			until.tv_sec++;
			until.tv_nsec -= 1000000000L;
		}
		pthread_cond_timedwait(&a->wake, &a->lock, &until);
		if (a->stop)
			break;
		struct config *cfg = a->cfg;
		config_ref(cfg);
		pthread_mutex_unlock(&a->lock);
		sweep(a, cfg);
		config_unref(cfg);
		pthread_mutex_lock(&a->lock);
	}
	pthread_mutex_unlock(&a->lock);
	return NULL;
}

struct alerts *alerts_start(struct config *cfg, const _Atomic int64_t *clock_offset_s)
{
	struct alerts *a = calloc(1, sizeof(*a));
	if (!a)
		return NULL;
	pthread_mutex_init(&a->lock, NULL);
	pthread_cond_init(&a->wake, NULL);
	config_ref(cfg);
	a->cfg = cfg;
	a->clock_offset_s = clock_offset_s;
	if (pthread_create(&a->thread, NULL, alerts_main, a)) {
		config_unref(cfg);
		free(a);
		return NULL;
	}
	return a;
}

void alerts_reload(struct alerts *a, struct config *cfg)
{
	config_ref(cfg);
	pthread_mutex_lock(&a->lock);
	struct config *old = a->cfg;
	a->cfg = cfg;
	pthread_mutex_unlock(&a->lock);
	config_unref(old);
}

void alerts_stop(struct alerts *a)
{
	if (!a)
		return;
	pthread_mutex_lock(&a->lock);
	a->stop = true;
	pthread_cond_signal(&a->wake);
	pthread_mutex_unlock(&a->lock);
	pthread_join(a->thread, NULL);
	config_unref(a->cfg);
	free(a->states);
	pthread_mutex_destroy(&a->lock);
	pthread_cond_destroy(&a->wake);
	free(a);
}
