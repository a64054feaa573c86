/*
 * mockllm_loop.c — one worker thread: an edge-triggered epoll loop over its
 * own SO_REUSEPORT listener, its connections and one timerfd.
 *
 * Every socket is registered once for EPOLLIN|EPOLLOUT|EPOLLRDHUP|EPOLLET
 * and never modified again; an event only sets the connection's can_read /
 * can_write flags, and conn_run() then drives the connection as far as it
 * can go: pump the active reply, parse pipelined input, write, read — in a
 * loop until nothing moves. A read that comes back short clears can_read
 * (the next arrival raises a new edge), so a keep-alive request costs one
 * epoll_wait, one read and one send.
 *
 * Input is read into one per-worker buffer and parsed straight from it;
 * only bytes the parser could not take yet (pipelined requests behind a
 * reply that is still running) are copied into the connection's backlog.
 * Output is built in the connection's buffer and written with send(); when
 * the socket is full the loop waits for the EPOLLOUT edge.
 *
 * HTTPS (--tls-cert) changes only the byte movers, in mockllm_tls.c:
 * conn_tls_read decrypts into the same parser, conn_tls_flush encrypts
 * the connection's buffer record by record and drives the handshake, and a
 * closing connection sends close_notify before its FIN. The plain path
 * pays one `if (c->tls)` per read, write and close.
 *
 * Delays never sleep: each connection has at most one deadline, kept in a
 * per-worker binary min-heap, and the timerfd is armed (absolute,
 * CLOCK_MONOTONIC, microsecond-precise) at the earliest one. A connection
 * that still has work after a bounded number of turns goes on a runnable
 * list, so one fast stream cannot starve the others.
 *
 * Closing: a reply that ends the connection shuts down the write side once
 * its output is flushed and discards input until the peer closes (at most
 * MOCK_LINGER_NS) — closing with unread input would send an RST that could
 * destroy the reply in flight. x-mock-reset-after wants exactly that RST,
 * so it closes with SO_LINGER {1, 0}.
 */
#include <errno.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include "mockllm.h"

#define EVENTS_PER_WAIT 256
#define TURNS_PER_RUN   64              /* conn_run rounds before yielding */
#define ACCEPT_PAUSE_NS (100ull * 1000 * 1000)

/* ---- buffers ---- */

int buf_reserve_slow(struct buf *b, size_t more)
{
	size_t cap = b->cap ? b->cap : 4096;
	while (cap - b->len < more)
		cap *= 2;
	char *p = realloc(b->data, cap);
	if (!p)
		return -ENOMEM;
	b->data = p;
	b->cap = cap;
	return 0;
}

void buf_put_u64(struct buf *b, uint64_t v)
{
	char tmp[20];
	size_t n = 0;
	do {
		tmp[sizeof(tmp) - ++n] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	buf_put(b, tmp + sizeof(tmp) - n, n);
}

void buf_put_hex(struct buf *b, uint64_t v)
{
	char tmp[16];
	size_t n = 0;
	do {
		tmp[sizeof(tmp) - ++n] = "0123456789abcdef"[v & 15];
		v >>= 4;
	} while (v);
	buf_put(b, tmp + sizeof(tmp) - n, n);
}

void buf_free(struct buf *b)
{
	free(b->data);
	*b = (struct buf){ 0 };
}

void buf_trim(struct buf *b)
{
	if (b->cap > MOCK_BUF_KEEP)
		buf_free(b);
	b->len = 0;
}

/* ---- small helpers ---- */

uint64_t mono_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* The owner is the only writer, so a relaxed load and store suffice. */
void counter_bump(_Atomic uint64_t *counter)
{
	uint64_t v = atomic_load_explicit(counter, memory_order_relaxed);
	atomic_store_explicit(counter, v + 1, memory_order_relaxed);
}

static void warn(const struct worker *w, const char *what, int err)
{
	if (!w->cfg->quiet)
		fprintf(stderr, "mockllm: worker %u: %s: %s\n", w->index, what, strerror(err));
}

/* ---- timers: one deadline per connection, in core/timer.c's heap ---- */

static void conn_timer_cancel(struct conn *c)
{
	timer_cancel(&c->w->timers, &c->timer);
}

/*
 * Growing the heap is the one allocation a timer may need. Returns 0, or
 * -ENOMEM with no timer set: callers then go on at once rather than never.
 */
int conn_timer_set(struct conn *c, uint64_t deadline_ns)
{
	struct timer_heap *h = &c->w->timers;
	conn_timer_cancel(c);
	if (h->len == h->cap && timer_heap_grow(h))
		return -ENOMEM;
	return timer_arm(h, &c->timer, deadline_ns);
}

/* ---- connections: lifetime ---- */

static struct conn *conn_new(struct worker *w, int fd)
{
	struct conn *c = w->free_conns;
	if (c) {
		w->free_conns = c->next;
		w->nfree--;
	} else {
		c = calloc(1, sizeof(*c));
		if (!c)
			return NULL;
	}
	c->w = w;
	c->fd = fd;
	c->state = CONN_READING;
	c->can_read = false;
	c->can_write = true;
	c->peer_hup = false;
	c->runnable = false;
	c->timer = (struct timer){ 0 };
	c->next = NULL;
	c->reply = (struct reply){ 0 };
	c->in_off = c->out_sent = 0;
	c->in.len = c->out.len = c->body.len = 0;
	request_init(c);
	return c;
}

static void runnable_unlink(struct conn *c)
{
	for (struct conn **p = &c->w->runnable; *p; p = &(*p)->next) {
		if (*p == c) {
			*p = c->next;
			break;
		}
	}
	c->runnable = false;
}

/* Closes the socket and recycles the struct; `by_peer` feeds the stats. */
static void conn_close(struct conn *c, bool by_peer)
{
	struct worker *w = c->w;
	conn_timer_cancel(c);
	if (c->runnable)
		runnable_unlink(c);
	close(c->fd);
	counter_bump(&w->stats.closed);
	if (by_peer)
		counter_bump(&w->stats.closed_by_peer);
	if (c->tls)
		conn_tls_end(c);
	buf_trim(&c->in);
	buf_trim(&c->out);
	buf_trim(&c->body);
	if (w->nfree < MOCK_FREE_CONNS_MAX) {
		c->next = w->free_conns;
		w->free_conns = c;
		w->nfree++;
		return;
	}
	buf_free(&c->in);
	buf_free(&c->out);
	buf_free(&c->body);
	free(c);
}

/* x-mock-reset-after: close so that the peer gets an RST. */
static void conn_reset(struct conn *c)
{
	struct linger lg = { .l_onoff = 1, .l_linger = 0 };
	setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	conn_close(c, false);
}

/* Output flushed on a closing connection: half-close, then drain. */
static void conn_linger(struct conn *c)
{
	if (c->tls && conn_tls_close_notify(c))
		return;         /* back here once the alert is sent */
	shutdown(c->fd, SHUT_WR);
	c->state = CONN_DRAINING;
	conn_timer_set(c, mono_now_ns() + MOCK_LINGER_NS);
}

/* ---- connections: I/O ---- */

static bool conn_out_pending(const struct conn *c)
{
	return c->out_sent < c->out.len;
}

/* Writes queued output. Returns bytes written, 0 if it would block, -errno. */
static ssize_t conn_flush(struct conn *c)
{
	ssize_t total = 0;
	while (conn_out_pending(c)) {
		ssize_t n = send(c->fd, c->out.data + c->out_sent,
				 c->out.len - c->out_sent, MSG_NOSIGNAL);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN)
				c->can_write = false;
			else
				return -errno;
			break;
		}
		c->out_sent += (size_t)n;
		total += n;
	}
	if (!conn_out_pending(c)) {
		c->out_sent = 0;
		buf_trim(&c->out);
	}
	return total;
}

/* Parses pipelined bytes kept while a reply was running. */
static bool conn_parse_backlog(struct conn *c)
{
	size_t used = request_parse(c, c->in.data + c->in_off, c->in.len - c->in_off);
	c->in_off += used;
	if (c->in_off == c->in.len) {
		c->in_off = 0;
		buf_trim(&c->in);
	}
	return used > 0;
}

/* Keeps bytes the parser could not take yet, behind any already kept. */
static int conn_keep(struct conn *c, const char *data, size_t n)
{
	if (c->in_off > 0) {    /* drop the parsed prefix first */
		memmove(c->in.data, c->in.data + c->in_off, c->in.len - c->in_off);
		c->in.len -= c->in_off;
		c->in_off = 0;
	}
	if (buf_reserve(&c->in, n) < 0)
		return -ENOMEM;
	buf_put(&c->in, data, n);
	return 0;
}

int conn_take_input(struct conn *c, const char *data, size_t n)
{
	size_t used = 0;
	if (c->in.len == c->in_off)
		used = request_parse(c, data, n);
	if (used < n && c->state == CONN_READING && conn_keep(c, data + used, n - used) < 0)
		return -ENOMEM;
	return 0;
}

static bool conn_wants_input(const struct conn *c)
{
	if (c->state == CONN_RESETTING)
		return false;
	return c->state != CONN_READING || c->in.len - c->in_off < MOCK_BACKLOG_MAX;
}

/*
 * Reads once into the worker's buffer. In CONN_READING the bytes go to the
 * parser (or behind the backlog, to keep requests in order); in the other
 * states they are discarded. Returns bytes read, 0 if it would block, or
 * -ECONNRESET when the peer closed (EOF) or the socket failed.
 */
static ssize_t conn_read(struct conn *c)
{
	struct worker *w = c->w;
	ssize_t n = recv(c->fd, w->rbuf, MOCK_READ_BYTES, 0);
	if (n < 0) {
		if (errno == EINTR)
			return 0;
		if (errno == EAGAIN) {
			c->can_read = false;
			return 0;
		}
		return -ECONNRESET;
	}
	if (n == 0)
		return -ECONNRESET;
	if (n < MOCK_READ_BYTES && !c->peer_hup)
		c->can_read = false;    /* drained: the next arrival raises an edge */
	if (c->state != CONN_READING)
		return n;
	if (conn_take_input(c, w->rbuf, (size_t)n) < 0)
		return -ENOMEM;
	return n;
}

/* Queues the connection for another turn after this round of events. */
static void conn_yield(struct conn *c)
{
	if (c->runnable)
		return;
	c->runnable = true;
	c->next = c->w->runnable;
	c->w->runnable = c;
}

/*
 * Drives one connection as far as it can go without blocking. May close
 * it: the caller must not touch `c` afterwards.
 */
static void conn_run(struct conn *c)
{
	for (unsigned turn = 0; turn < TURNS_PER_RUN; turn++) {
		bool moved = false;
		if (c->reply.phase != REPLY_IDLE)
			moved |= reply_pump(c);
		if (c->in.len > c->in_off && c->state == CONN_READING)
			moved |= conn_parse_backlog(c);
		bool busy = conn_out_pending(c) || (c->tls && conn_tls_busy(c));
		if (busy && c->can_write) {
			ssize_t n = c->tls ? conn_tls_flush(c) : conn_flush(c);
			if (n < 0) {
				conn_close(c, c->state != CONN_DRAINING);
				return;
			}
			moved |= n > 0;
			busy = conn_out_pending(c) || (c->tls && conn_tls_busy(c));
		}
		if (!busy) {
			if (c->state == CONN_RESETTING) {
				conn_reset(c);
				return;
			}
			if (c->state == CONN_CLOSING)
				conn_linger(c);
		}
		if (c->can_read && conn_wants_input(c)) {
			ssize_t n = c->tls ? conn_tls_read(c) : conn_read(c);
			if (n < 0) {
				conn_close(c, c->state != CONN_DRAINING);
				return;
			}
			moved |= n > 0;
		}
		if (!moved)
			return;
	}
	conn_yield(c);
}

static void conn_event(struct conn *c, uint32_t events)
{
	if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
		c->can_read = true;
	if (events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR))
		c->peer_hup = true;     /* read on until EOF or the error */
	if (events & (EPOLLOUT | EPOLLHUP | EPOLLERR))
		c->can_write = true;
	conn_run(c);
}

static void conn_timer_fired(struct conn *c)
{
	if (c->state == CONN_DRAINING)
		conn_close(c, false);
	else
		conn_run(c);
}

/* ---- the worker ---- */

static void worker_accept(struct worker *w)
{
	for (;;) {
		int fd = accept4(w->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			if (errno != EAGAIN) {          /* EMFILE and friends */
				warn(w, "accept", errno);
				w->accept_resume_ns = mono_now_ns() + ACCEPT_PAUSE_NS;
			}
			return;
		}
		int one = 1;
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		struct conn *c = conn_new(w, fd);
		struct epoll_event ev = {
			.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET,
			.data.ptr = c,
		};
		int err = 0;
		if (!c || (w->tls && conn_tls_start(c) < 0))
			err = ENOMEM;
		else if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, fd, &ev) < 0)
			err = errno;
		if (err) {
			warn(w, "new connection", err);
			if (c) {
				counter_bump(&w->stats.accepted);
				conn_close(c, false);
			} else {
				close(fd);
			}
			continue;
		}
		counter_bump(&w->stats.accepted);
	}
}

/* Runs due timers and a paused accept. */
static void worker_expire(struct worker *w)
{
	if (w->timers.len == 0 && w->accept_resume_ns == 0)
		return;
	uint64_t now = mono_now_ns();
	struct timer *t;
	while ((t = timer_pop_due(&w->timers, now)))
		conn_timer_fired(container_of(t, struct conn, timer));
	if (w->accept_resume_ns && w->accept_resume_ns <= now) {
		w->accept_resume_ns = 0;
		worker_accept(w);
	}
}

static void worker_run_yielded(struct worker *w)
{
	struct conn *list = w->runnable;
	w->runnable = NULL;
	while (list) {
		struct conn *c = list;
		list = c->next;
		c->runnable = false;
		c->next = NULL;
		conn_run(c);
	}
}

/* Arms the timerfd at the earliest deadline, if that changed. */
static void worker_arm(struct worker *w)
{
	uint64_t want = w->timers.len ? timer_next(&w->timers) : 0;
	if (w->accept_resume_ns && (!want || w->accept_resume_ns < want))
		want = w->accept_resume_ns;
	if (want == w->armed_ns)
		return;
	/* want 0 disarms; a deadline already past fires at once. */
	struct itimerspec its = {
		.it_value = { .tv_sec = (time_t)(want / 1000000000ull),
			      .tv_nsec = (long)(want % 1000000000ull) },
	};
	if (timerfd_settime(w->tfd, TFD_TIMER_ABSTIME, &its, NULL) < 0)
		warn(w, "timerfd_settime", errno);
	w->armed_ns = want;
}

int worker_init(struct worker *w)
{
	w->epfd = epoll_create1(EPOLL_CLOEXEC);
	w->tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
	w->rbuf = malloc(MOCK_READ_BYTES);
	if (w->epfd < 0 || w->tfd < 0)
		return -errno;
	if (!w->rbuf)
		return -ENOMEM;
	struct epoll_event lev = { .events = EPOLLIN | EPOLLET, .data.ptr = &w->lfd };
	struct epoll_event tev = { .events = EPOLLIN | EPOLLET, .data.ptr = &w->tfd };
	if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, w->lfd, &lev) < 0 ||
	    epoll_ctl(w->epfd, EPOLL_CTL_ADD, w->tfd, &tev) < 0)
		return -errno;
	return 0;
}

void *worker_main(void *arg)
{
	struct worker *w = arg;
	struct epoll_event events[EVENTS_PER_WAIT];
	prctl(PR_SET_TIMERSLACK, 1ul, 0, 0, 0);        /* µs-precise token delays */
	worker_accept(w);
	for (;;) {
		worker_arm(w);
		int n = epoll_wait(w->epfd, events, EVENTS_PER_WAIT, w->runnable ? 0 : -1);
		if (n < 0) {
			if (errno != EINTR)
				warn(w, "epoll_wait", errno);
			continue;
		}
		for (int i = 0; i < n; i++) {
			void *tag = events[i].data.ptr;
			if (tag == &w->lfd) {
				worker_accept(w);
			} else if (tag == &w->tfd) {
				uint64_t ticks;
				if (read(w->tfd, &ticks, sizeof(ticks)) < 0 && errno != EAGAIN)
					warn(w, "timerfd read", errno);
				w->armed_ns = 0;
			} else {
				conn_event(tag, events[i].events);
			}
		}
		worker_expire(w);
		worker_run_yielded(w);
	}
	return NULL;
}
