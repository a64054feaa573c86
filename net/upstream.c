/*
 * upstream.c — connections to providers.
 *
 * Each shard keeps, per provider, a LIFO pool of idle keep-alive
 * connections. A pooled connection keeps a recv posted (it costs no
 * buffer): if the provider closes it, we learn at once and drop it; if it
 * is picked for a request, that same recv receives the reply.
 *
 * A request sent on a reused connection that the provider had already
 * closed (the classic keep-alive race) is detected as EOF before any reply
 * byte, and the proxy retries it once on a fresh connection.
 */
#include "net/upstream.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/log.h"
#include "core/shard.h"
#include "net/proxy.h"
#include "net/sendq.h"
#include "net/upstream_tls.h"
#include "tls/tls.h"

static void upstream_free(struct upstream *u)
{
	struct shard *s = u->shard;
	u->next = s->up_free;
	s->up_free = u;
	s->n_upstreams--;
}

static void upstream_maybe_free(struct upstream *u)
{
	if (u->state == UP_CLOSING && u->inflight == 0) {
		if (u->tls || u->in.bid >= 0)
			upstream_tls_end(u);   /* nothing in flight uses its buffers */
		close(u->fd);
		upstream_free(u);
	}
}

void upstream_close(struct upstream *u)
{
	if (u->state == UP_CLOSING)
		return;
	struct shard *s = u->shard;
	if (u->state == UP_CONNECTING) {
		struct io_uring_sqe *sqe = shard_sqe(s);
		io_uring_prep_cancel64(sqe, ring_tag(OP_UPSTREAM_CONNECT, u), 0);
		io_uring_sqe_set_data64(sqe, ring_tag(OP_IGNORE, NULL));
	}
	u->state = UP_CLOSING;
	u->ex = NULL;
	timer_cancel(&s->timers, &u->timer);
	shutdown(u->fd, SHUT_RDWR);
	upstream_maybe_free(u);
}

/* The connection failed under its exchange: detach, close, tell the proxy. */
static void upstream_fail(struct upstream *u, int err)
{
	struct exchange *ex = u->ex;
	u->ex = NULL;
	ex->up = NULL;
	upstream_close(u);
	proxy_upstream_closed(ex, err);
}

static void pool_remove(struct shard *s, struct upstream *u)
{
	struct upstream_pool *pool = &s->pools[u->provider];
	for (struct upstream **pp = &pool->idle; *pp; pp = &(*pp)->next) {
		if (*pp == u) {
			*pp = u->next;
			pool->n_idle--;
			return;
		}
	}
}

void upstream_pools_reset(struct shard *s)
{
	for (uint32_t i = 0; i < s->n_pools; i++) {
		struct upstream_pool *pool = &s->pools[i];
		while (pool->idle) {
			struct upstream *u = pool->idle;
			pool->idle = u->next;
			pool->n_idle--;
			upstream_close(u);
		}
	}
}

void upstream_recv(struct upstream *u)
{
	if (u->recv_posted || u->state == UP_CLOSING)
		return;
	if (u->tls && tls_conn_pending(u->tls)) {
		/* bytes already here: deliver them from the next completion,
		 * not from inside the caller; a handshake waiting for its own
		 * send goes on when that send completes */
		if (u->state == UP_HANDSHAKE && u->tls->send_posted)
			return;
		struct io_uring_sqe *sqe = shard_sqe(u->shard);
		io_uring_prep_nop(sqe);
		io_uring_sqe_set_data64(sqe, ring_tag(OP_UPSTREAM_TLS, u));
		u->recv_posted = true;
		u->inflight++;
		return;
	}
	struct io_uring_sqe *sqe = shard_sqe(u->shard);
	ring_prep_recv(&u->shard->ring, sqe, u->fd, BUFS_UPSTREAM);
	io_uring_sqe_set_data64(sqe, ring_tag(OP_UPSTREAM_RECV, u));
	u->recv_posted = true;
	u->inflight++;
}

void upstream_retry_recv(struct upstream *u)
{
	u->inflight--;
	upstream_recv(u);
	upstream_maybe_free(u);
}

static void upstream_connect(struct exchange *ex)
{
	struct shard *s = ex->client->shard;
	const struct cfg_provider *p = ex->provider;
	int fd = socket(p->addr.sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	struct upstream *u = s->up_free;
	if (fd >= 0 && !u)
		u = malloc(sizeof(*u));
	else if (u)
		s->up_free = u->next;
	if (fd < 0 || !u) {
		if (fd >= 0)
			close(fd);
		if (u) {
			u->next = s->up_free;
			s->up_free = u;
		}
		proxy_upstream_closed(ex, fd < 0 ? -errno : -ENOMEM);
		return;
	}
	memset(u, 0, sizeof(*u));
	u->shard = s;
	u->fd = fd;
	u->in.bid = -1;
	u->state = UP_CONNECTING;
	u->provider = p->index;
	u->generation = ex->cfg->generation;
	u->ex = ex;
	u->out.bid = -1;
	ex->up = u;
	s->n_upstreams++;
	s->stats.upstream_connects++;
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));

	struct io_uring_sqe *sqe = shard_sqe(s);
	io_uring_prep_connect(sqe, fd, (const struct sockaddr *)&p->addr.sa, p->addr.salen);
	io_uring_sqe_set_data64(sqe, ring_tag(OP_UPSTREAM_CONNECT, u));
	u->inflight++;
	shard_timer_arm(s, &u->timer, TIMER_UPSTREAM_CONNECT, p->connect_timeout_ms);
}

void upstream_acquire(struct exchange *ex)
{
	struct shard *s = ex->client->shard;
	/* Pools belong to the shard's current generation; a request routed
	 * under a retired one just connects fresh. */
	if (ex->cfg == s->cfg && !ex->retried) {
		struct upstream_pool *pool = &s->pools[ex->provider->index];
		struct upstream *u = pool->idle;
		if (u) {
			pool->idle = u->next;
			pool->n_idle--;
			u->state = UP_BUSY;
			u->ex = ex;
			u->reused = true;
			ex->up = u;
			timer_cancel(&s->timers, &u->timer);
			s->stats.upstream_reuses++;
			proxy_upstream_ready(ex);
			return;
		}
	}
	upstream_connect(ex);
}

void upstream_on_connect(struct upstream *u, int res)
{
	u->inflight--;
	if (u->state == UP_CLOSING) {
		upstream_maybe_free(u);
		return;
	}
	struct exchange *ex = u->ex;
	if (res < 0) {
		upstream_fail(u, res);
		return;
	}
	struct tls_conf *tls = ex->hold->provider_tls[ex->provider->index];
	if (tls) {
		/* https: ready once the handshake is done (upstream_tls.c),
		 * still under the connect timeout */
		if (!upstream_tls_start(u, tls)) {
			upstream_fail(u, -ENOMEM);
			return;
		}
		upstream_tls_begin(u);
		return;
	}
	u->state = UP_BUSY;
	timer_cancel(&u->shard->timers, &u->timer);
	upstream_recv(u);
	proxy_upstream_ready(ex);
}

static void upstream_post_send(struct upstream *u)
{
	struct io_uring_sqe *sqe = shard_sqe(u->shard);
	io_uring_prep_sendmsg(sqe, u->fd, &u->out.msg, MSG_NOSIGNAL);
	io_uring_sqe_set_data64(sqe, ring_tag(OP_UPSTREAM_SEND, u));
	u->out.posted = true;
	u->inflight++;
}

void upstream_send(struct upstream *u, const struct iovec *iov, int n)
{
	sendq_set(&u->out, iov, n);
	if (u->tls) {
		u->out.posted = true;
		upstream_tls_flush(u);
		return;
	}
	upstream_post_send(u);
}

void upstream_on_send(struct upstream *u, int res)
{
	u->inflight--;
	if (u->tls) {
		if (u->state == UP_CLOSING) {
			upstream_maybe_free(u);
		} else if (res < 0) {
			u->out.posted = false;
			upstream_fail(u, res);
		} else {
			upstream_tls_sent(u, res);
		}
		return;
	}
	u->out.posted = false;
	if (u->state == UP_CLOSING) {
		upstream_maybe_free(u);
		return;
	}
	if (res < 0) {
		upstream_fail(u, res);
		return;
	}
	if (!sendq_advance(&u->out, (size_t)res)) {
		upstream_post_send(u);
		return;
	}
	proxy_upstream_sent(u->ex);
}

void upstream_on_recv(struct upstream *u, int res, uint32_t cqe_flags)
{
	struct shard *s = u->shard;
	u->recv_posted = false;
	u->inflight--;
	int32_t bid = ring_buf_take(&s->ring, BUFS_UPSTREAM, cqe_flags);
	bool live = u->state == UP_BUSY || u->state == UP_HANDSHAKE;
	if (!live || res <= 0) {
		if (bid >= 0)
			ring_buf_return(&s->ring, bid);
		if (u->state == UP_IDLE) {
			/* The provider closed a pooled connection, or sent bytes
			 * nobody asked for: either way it is done. */
			pool_remove(s, u);
			upstream_close(u);
			return;
		}
		if (u->state == UP_CLOSING) {
			upstream_maybe_free(u);
			return;
		}
		if (res == -ENOBUFS) {
			u->inflight++;
			u->next_starved = s->starved_upstreams;
			s->starved_upstreams = u;
			return;
		}
		upstream_fail(u, res);
		return;
	}
	if (u->tls) {
		u->in = (struct stash){ .bid = bid, .off = 0, .len = (uint32_t)res };
		upstream_tls_received(u);
		return;
	}
	const char *data = (const char *)ring_buf_ptr(&s->ring, bid);
	proxy_upstream_data(u->ex, data, (size_t)res, bid);
}

void upstream_on_tls_pending(struct upstream *u)
{
	u->recv_posted = false;
	u->inflight--;
	if (u->state == UP_CLOSING) {
		upstream_maybe_free(u);
		return;
	}
	if (u->state == UP_IDLE) {
		/* a pooled connection with bytes nobody asked for */
		pool_remove(u->shard, u);
		upstream_close(u);
		return;
	}
	upstream_tls_pending(u);
}

void upstream_on_eof(struct upstream *u)
{
	if (u->state == UP_IDLE) {
		pool_remove(u->shard, u);
		upstream_close(u);
		return;
	}
	upstream_fail(u, 0);
}

void upstream_release(struct upstream *u, bool reusable)
{
	struct shard *s = u->shard;
	u->ex = NULL;
	if (!reusable || u->generation != s->cfg->generation || s->draining) {
		upstream_close(u);
		return;
	}
	const struct cfg_provider *p = &s->cfg->providers[u->provider];
	struct upstream_pool *pool = &s->pools[u->provider];
	if (pool->n_idle >= p->max_idle_conns) {
		upstream_close(u);
		return;
	}
	u->state = UP_IDLE;
	u->next = pool->idle;
	pool->idle = u;
	pool->n_idle++;
	shard_timer_arm(s, &u->timer, TIMER_UPSTREAM_POOLED, p->idle_timeout_ms);
	upstream_recv(u);
}

void upstream_on_timer(struct upstream *u)
{
	struct shard *s = u->shard;
	if (u->state == UP_IDLE) {
		pool_remove(s, u);
		upstream_close(u);
		return;
	}
	struct exchange *ex = u->ex;
	uint8_t kind = u->timer.kind;
	if (!ex) {
		upstream_close(u);
		return;
	}
	u->ex = NULL;
	ex->up = NULL;
	upstream_close(u);
	proxy_upstream_timeout(ex, kind);
}
