/*
 * shard.c — one event loop per core.
 *
 * Each shard owns an io_uring, SO_REUSEPORT listeners with multishot
 * accept, its connection/exchange pools and timers, and its upstream
 * keep-alive pools. The loop is: submit what is queued and wait for at
 * least one completion or the next deadline; dispatch every completion by
 * the op in its user_data; fire due timers; retry reads starved of buffers.
 * Nothing here takes a lock; the only cross-thread traffic is the main
 * thread's mailbox (reload, drain), rung through an eventfd.
 */
#include "core/shard.h"

#include <errno.h>
#include <netinet/in.h>
#include <sched.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "core/budget.h"
#include "core/config.h"
#include "core/log.h"
#include "ledger/writer.h"
#include "net/grants_api.h"
#include "core/runs.h"
#include "core/shard_tls.h"
#include "tls/tls.h"
#include "net/client.h"
#include "net/upstream.h"

#define RING_ENTRIES 4096
#define RING_BUF_SIZE 16384
#define RING_CLIENT_BUFS 2048      /* agent reads: pinned at most one per client */

static uint64_t monotonic_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Wall time as budget windows; recomputed when the second changes. */
static void update_clock(struct shard *s)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME_COARSE, &ts);
	int64_t now = ts.tv_sec;
	if (s->clock_offset_s)
		now += atomic_load_explicit(s->clock_offset_s, memory_order_relaxed);
	s->wall_ms = now * 1000 + ts.tv_nsec / 1000000;
	if (now != s->clock.now_s)
		budget_clock_set(&s->clock, now);
}

/* Once a second: roll every scope's slot of this shard into the current
 * window and hand back leases near a limit, so a shard that went quiet
 * neither holds spend of a past window nor budget others could use. */
static void tidy_budgets(struct shard *s)
{
	const struct config *cfg = s->cfg;
	uint32_t shard = (uint32_t)s->id;
	const struct cfg_principal *kinds[] = { cfg->orgs, cfg->teams, cfg->users };
	const uint32_t counts[] = { cfg->n_orgs, cfg->n_teams, cfg->n_users };
	for (int k = 0; k < 3; k++)
		for (uint32_t i = 0; i < counts[k]; i++)
			if (kinds[k][i].budget.scope)
				budget_tidy(kinds[k][i].budget.scope, shard, &s->clock);
	for (uint32_t i = 0; i < cfg->n_keys; i++)
		if (cfg->keys[i].budget.scope)
			budget_tidy(cfg->keys[i].budget.scope, shard, &s->clock);
	if (cfg->runs)
		runs_tidy(cfg->runs, shard, &s->clock);
	grants_api_tidy(s);
	s->next_tidy_ms = s->now_ms + 1000;
}

struct io_uring_sqe *shard_sqe(struct shard *s)
{
	return ring_sqe(&s->ring);
}

void shard_timer_arm(struct shard *s, struct timer *t, uint8_t kind, uint32_t ms)
{
	t->kind = kind;
	/* The heap is sized for every connection of the shard; -ENOSPC would
	 * be a sizing bug, not a runtime condition. */
	BUG_ON(timer_arm(&s->timers, t, s->now_ms + ms));
}

static int listen_socket(const struct cfg_addr *addr)
{
	int fd = socket(addr->sa.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	int one = 1;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
	if (bind(fd, (const struct sockaddr *)&addr->sa, addr->salen) ||
	    listen(fd, 4096)) {
		int err = -errno;
		close(fd);
		return err;
	}
	return fd;
}

static void post_accept(struct shard *s, uint32_t i)
{
	struct io_uring_sqe *sqe = shard_sqe(s);
	io_uring_prep_multishot_accept(sqe, s->listen_fds[i], NULL, NULL,
				       SOCK_NONBLOCK | SOCK_CLOEXEC);
	io_uring_sqe_set_data64(sqe, ring_tag(OP_ACCEPT, &s->listen_fds[i]));
}

static void post_wake_read(struct shard *s)
{
	struct io_uring_sqe *sqe = shard_sqe(s);
	io_uring_prep_read(sqe, s->wake_fd, &s->wake_value, sizeof(s->wake_value), 0);
	io_uring_sqe_set_data64(sqe, ring_tag(OP_WAKE, s));
}

static int pools_alloc(struct shard *s)
{
	s->n_pools = s->cfg->n_providers;
	s->pools = calloc(s->n_pools ? s->n_pools : 1, sizeof(*s->pools));
	return s->pools ? 0 : -ENOMEM;
}

int shard_init(struct shard *s, int id, int cpu, struct config *cfg,
	       const uint8_t *ticket_secret)
{
	memset(s, 0, sizeof(*s));
	s->id = id;
	s->cpu = cpu;
	s->wake_fd = -1;          /* shard_destroy() may follow a failed init */
	config_ref(cfg);
	s->cfg = cfg;
	s->holds = calloc(1, sizeof(*s->holds));
	if (!s->holds)
		return -ENOMEM;
	s->holds->cfg = cfg;
	if (tls_shard_init(&s->tls, ticket_secret) || shard_tls_hold(s, s->holds))
		return -EIO;
	s->now_ms = monotonic_ms();
	update_clock(s);
	if (getrandom(&s->run_prefix, sizeof(s->run_prefix), 0) != sizeof(s->run_prefix))
		s->run_prefix = (uint32_t)s->now_ms ^ (uint32_t)id << 24;
	s->wake_fd = eventfd(0, EFD_CLOEXEC);
	if (s->wake_fd < 0)
		return -errno;
	/* one timer per client and per upstream connection */
	int rc = timer_heap_init(&s->timers, cfg->limits.max_connections * 3 + 1024);
	if (rc || (rc = pools_alloc(s)))
		return rc;
	s->listen_fds = calloc(cfg->n_listen + 1, sizeof(int));
	if (!s->listen_fds)
		return -ENOMEM;
	s->admin_listener = -1;
	for (uint32_t i = 0; i <= cfg->n_listen; i++) {
		/* the agents' listeners, then admin.addr (the admin API) */
		const struct cfg_addr *a = i < cfg->n_listen ? &cfg->listen[i].addr :
					   cfg->has_admin ? &cfg->admin_addr : NULL;
		if (!a)
			break;
		int fd = listen_socket(a);
		if (fd < 0) {
			log_error("cannot listen on %s: %s", a->text, strerror(-fd));
			return fd;
		}
		if (i == cfg->n_listen)
			s->admin_listener = (int)s->n_listen;
		s->listen_fds[s->n_listen++] = fd;
	}
	return shard_tls_listeners(s);
}

/* ---- messages from the main thread ---- */

static void shard_reload(struct shard *s)
{
	struct config *next = atomic_exchange(&s->next_cfg, NULL);
	if (!next)
		return;
	struct cfg_hold *hold = calloc(1, sizeof(*hold));
	if (hold)
		hold->cfg = next;
	if (!hold || shard_tls_hold(s, hold)) {
		free(hold);
		log_error("reload: out of memory, keeping generation %llu",
			  (unsigned long long)s->cfg->generation);
		config_unref(next);
		return;
	}
	/* Pools are per provider of the current generation: empty them, then
	 * swap. Requests in flight finish on the generation they started on. */
	upstream_pools_reset(s);
	free(s->pools);
	shard_tls_reload(s, next);
	struct cfg_hold *old = s->holds;
	hold->next = old;
	s->holds = hold;
	s->cfg = next;
	if (old->users == 0) {
		hold->next = old->next;
		shard_hold_free(old);
	}
	if (pools_alloc(s))
		BUG_ON(1);
	log_info("reloaded: generation %llu", (unsigned long long)next->generation);
}

void shard_hold_free(struct cfg_hold *h)
{
	shard_tls_unhold(h);
	config_unref(h->cfg);
	free(h);
}

static void shard_drain(struct shard *s)
{
	if (s->draining)
		return;
	s->draining = true;
	s->drain_deadline_ms = s->now_ms + s->cfg->drain_timeout_ms;
	for (uint32_t i = 0; i < s->n_listen; i++) {
		/* Cancel the multishot accept, then close: the kernel keeps the
		 * other shards' SO_REUSEPORT sockets serving meanwhile. */
		struct io_uring_sqe *sqe = shard_sqe(s);
		io_uring_prep_cancel64(sqe, ring_tag(OP_ACCEPT, &s->listen_fds[i]), 0);
		io_uring_sqe_set_data64(sqe, ring_tag(OP_IGNORE, NULL));
	}
	client_close_idle(s);
	upstream_pools_reset(s);
}

static void shard_on_wake(struct shard *s)
{
	unsigned cmd = atomic_exchange(&s->mailbox, 0);
	if (cmd & SHARD_CMD_RELOAD)
		shard_reload(s);
	if (cmd & SHARD_CMD_DRAIN)
		shard_drain(s);
	if (cmd & SHARD_CMD_FREEZE)
		client_freeze_sweep(s);
	post_wake_read(s);
}

void shard_post(struct shard *s, enum shard_cmd cmd, struct config *cfg)
{
	if (cfg) {
		struct config *old = atomic_exchange(&s->next_cfg, cfg);
		if (old)
			config_unref(old);   /* superseded before the shard saw it */
	}
	atomic_fetch_or(&s->mailbox, cmd);
	uint64_t one = 1;
	ssize_t w = write(s->wake_fd, &one, sizeof(one));
	(void)w;
}

/* ---- the loop ---- */

static void on_accept(struct shard *s, struct io_uring_cqe *cqe)
{
	int *fdp = ring_tag_ptr(cqe->user_data);
	int i = (int)(fdp - s->listen_fds);
	if (cqe->res >= 0) {
		client_accept(s, cqe->res, s->listen_tls[i], i == s->admin_listener);
	} else if (cqe->res != -ECANCELED) {
		log_warn("accept: %s", strerror(-cqe->res));
	}
	if (!(cqe->flags & IORING_CQE_F_MORE) && !s->draining) {
		post_accept(s, (uint32_t)(fdp - s->listen_fds));
	}
}

static void dispatch(struct shard *s, struct io_uring_cqe *cqe)
{
	void *ptr = ring_tag_ptr(cqe->user_data);
	switch (ring_tag_op(cqe->user_data)) {
	case OP_ACCEPT:
		on_accept(s, cqe);
		break;
	case OP_CLIENT_RECV:
		client_on_recv(ptr, cqe->res, cqe->flags);
		break;
	case OP_CLIENT_SEND:
		client_on_send(ptr, cqe->res);
		break;
	case OP_UPSTREAM_CONNECT:
		upstream_on_connect(ptr, cqe->res);
		break;
	case OP_UPSTREAM_SEND:
		upstream_on_send(ptr, cqe->res);
		break;
	case OP_UPSTREAM_RECV:
		upstream_on_recv(ptr, cqe->res, cqe->flags);
		break;
	case OP_UPSTREAM_TLS:
		upstream_on_tls_pending(ptr);
		break;
	case OP_WAKE:
		shard_on_wake(s);
		break;
	case OP_LEDGER_SYNC:
	case OP_LEDGER_TICK:
		ledger_writer_on_sync(ptr, cqe->res, ring_tag_op(cqe->user_data) == OP_LEDGER_SYNC);
		break;
	case OP_IGNORE:
		break;
	}
}

static void fire_timers(struct shard *s)
{
	struct timer *t;
	while ((t = timer_pop_due(&s->timers, s->now_ms))) {
		if (t->kind >= TIMER_UPSTREAM_CONNECT)
			upstream_on_timer(container_of(t, struct upstream, timer));
		else
			client_on_timer(container_of(t, struct client, timer));
	}
}

/* Re-posts reads that found no free buffer, once some came back. */
static void retry_starved(struct shard *s)
{
	struct client *c = ring_bufs_free(&s->ring, BUFS_CLIENT) ? s->starved_clients : NULL;
	if (c)
		s->starved_clients = NULL;
	while (c) {
		struct client *next = c->next_starved;
		client_retry_recv(c);
		c = next;
	}
	struct upstream *u = ring_bufs_free(&s->ring, BUFS_UPSTREAM) ? s->starved_upstreams : NULL;
	if (u)
		s->starved_upstreams = NULL;
	while (u) {
		struct upstream *next = u->next_starved;
		upstream_retry_recv(u);
		u = next;
	}
}

static bool drain_finished(struct shard *s)
{
	if (!s->draining)
		return false;
	if (s->n_clients == 0)
		return true;
	if (s->now_ms >= s->drain_deadline_ms) {
		log_warn("drain timeout: closing %u connections", s->n_clients);
		for (struct client *c = s->clients, *next; c; c = next) {
			next = c->next;
			client_abort(c);
		}
		return true;
	}
	return false;
}

static void *shard_main(void *arg)
{
	struct shard *s = arg;
	log_set_shard(s->id);
	/* SINGLE_ISSUER binds the ring to the thread that creates it. */
	/* Provider reads get a buffer for every exchange that may be in
	 * flight, so a reply is never stuck waiting for one. */
	uint32_t up_bufs = 1024;
	while (up_bufs < s->cfg->limits.max_requests && up_bufs < 32768)
		up_bufs <<= 1;
	int rc = ring_init(&s->ring, RING_ENTRIES);
	if (!rc)
		rc = ring_add_bufs(&s->ring, BUFS_CLIENT, RING_CLIENT_BUFS, RING_BUF_SIZE);
	if (!rc)
		rc = ring_add_bufs(&s->ring, BUFS_UPSTREAM, up_bufs, RING_BUF_SIZE);
	/* decrypted TLS records: one per agent read and per provider read */
	if (!rc)
		rc = ring_add_user_bufs(&s->ring, BUFS_PLAIN,
					MIN(RING_CLIENT_BUFS + up_bufs, 65536), RING_BUF_SIZE);
	atomic_store(&s->started, rc ? rc : 1);
	if (rc) {
		log_error("io_uring set-up failed: %s", strerror(-rc));
		s->exit_code = 2;
		return NULL;
	}
	if (s->cpu >= 0) {
		cpu_set_t set;
		CPU_ZERO(&set);
		CPU_SET(s->cpu, &set);
		if (pthread_setaffinity_np(pthread_self(), sizeof(set), &set))
			log_warn("cannot pin to CPU %d", s->cpu);
	}
	for (uint32_t i = 0; i < s->n_listen; i++)
		post_accept(s, i);
	post_wake_read(s);
	log_info("shard %d ready (cpu %d, ring %s)", s->id, s->cpu,
		 s->ring.defer_taskrun ? "single-issuer+defer-taskrun" : "default flags");

	bool stopping = false;
	while (!stopping || s->n_upstreams || s->n_clients ||
	       (s->ledger && !ledger_writer_idle(s->ledger))) {
		uint64_t next = timer_next(&s->timers);
		uint64_t wait_ms = next == UINT64_MAX ? 1000 :
				   next > s->now_ms ? MIN(next - s->now_ms, 1000) : 0;
		if (s->ledger)   /* records appended this turn, or a batch fsync due */
			wait_ms = MIN(wait_ms, ledger_writer_due_in(s->ledger, s->now_ms));
		if (s->draining)
			wait_ms = MIN(wait_ms, 50);
		struct __kernel_timespec ts = { .tv_sec = (long long)wait_ms / 1000,
						.tv_nsec = (long long)(wait_ms % 1000) * 1000000 };
		struct io_uring_cqe *cqe;
		/* a zero wait polls: something is due now (NULL would block) */
		rc = io_uring_submit_and_wait_timeout(&s->ring.uring, &cqe, 1, &ts, NULL);
		if (rc < 0 && rc != -ETIME && rc != -EINTR && rc != -EAGAIN &&
		    rc != -EBUSY) {
			log_error("io_uring wait: %s", strerror(-rc));
			s->exit_code = 2;
			break;
		}
		s->now_ms = monotonic_ms();
		update_clock(s);
		unsigned head, seen = 0;
		io_uring_for_each_cqe(&s->ring.uring, head, cqe) {
			dispatch(s, cqe);
			seen++;
		}
		io_uring_cq_advance(&s->ring.uring, seen);
		fire_timers(s);
		retry_starved(s);
		if (s->now_ms >= s->next_tidy_ms)
			tidy_budgets(s);
		if (s->ledger)
			ledger_writer_flush(s->ledger, &s->ring, s->now_ms);
		atomic_store_explicit(&s->turns, atomic_load_explicit(&s->turns, memory_order_relaxed) + 1,
				      memory_order_release);
		if (!stopping && drain_finished(s)) {
			stopping = true;
			upstream_pools_reset(s);
		}
		if (stopping && s->now_ms > s->drain_deadline_ms + 1000)
			break;   /* operations that never completed: give up */
	}
	io_uring_submit(&s->ring.uring);
	return NULL;
}

int shard_start(struct shard *s)
{
	int rc = pthread_create(&s->thread, NULL, shard_main, s);
	if (rc)
		return -rc;
	while (!atomic_load(&s->started))
		sched_yield();
	rc = atomic_load(&s->started);
	return rc < 0 ? rc : 0;
}

void shard_join(struct shard *s)
{
	pthread_join(s->thread, NULL);
}

void shard_destroy(struct shard *s)
{
	for (uint32_t i = 0; i < s->n_listen; i++)
		close(s->listen_fds[i]);
	free(s->listen_fds);
	if (atomic_load(&s->started) == 1)
		ring_exit(&s->ring);
	timer_heap_free(&s->timers);
	free(s->pools);
	while (s->holds) {
		struct cfg_hold *h = s->holds;
		s->holds = h->next;
		shard_hold_free(h);
	}
	if (s->wake_fd >= 0)
		close(s->wake_fd);
	struct client *c;
	while ((c = s->client_free)) {
		s->client_free = c->next;
		free(c);
	}
	struct upstream *u;
	while ((u = s->up_free)) {
		s->up_free = u->next;
		free(u);
	}
	struct exchange *ex;
	while ((ex = s->ex_free)) {
		s->ex_free = ex->next_free;
		free(ex);
	}
	shard_tls_free(s);
}
