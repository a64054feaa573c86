/*
 * client.c — the agent-facing side of a shard.
 *
 * A client connection moves IDLE -> HEAD -> BODY -> BUSY -> IDLE ... and to
 * CLOSING from anywhere. Reads use provided buffers: while a connection
 * waits it holds no buffer, only this ~250-byte struct. Bytes that arrive
 * while a request is being answered (a pipelined request, or read-ahead)
 * stay "stashed" in their buffer and reading pauses until they are parsed,
 * so one client can never make us hold more than one buffer.
 *
 * A request is framed by http1_feed(); once complete it is handed to the
 * proxy (net/proxy.c), which answers through client_send() and ends with
 * client_reply_done().
 */
#include "net/client.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/log.h"
#include "core/shard.h"
#include "net/booking.h"
#include "net/client_tls.h"
#include "net/http1.h"
#include "net/proxy.h"
#include "net/sendq.h"
#include "net/stream.h"

static void client_post_recv(struct client *c);
static void client_process(struct client *c);

/* Shut down, or already back in the pool. */
static inline bool closing(const struct client *c)
{
	return c->state >= CLIENT_CLOSING;
}

/* ---- lifetime ---- */

static void client_free(struct client *c)
{
	struct shard *s = c->shard;
	if (c->prev)
		c->prev->next = c->next;
	else
		s->clients = c->next;
	if (c->next)
		c->next->prev = c->prev;
	c->next = s->client_free;
	c->prev = NULL;
	s->client_free = c;
	s->n_clients--;
	/* A completion handler may abort (which frees when nothing else is
	 * in flight) and then check for freeing itself: only the first
	 * counts. */
	c->state = CLIENT_FREE;
}

static void release_buffers(struct client *c)
{
	struct ring *r = &c->shard->ring;
	if (c->in.bid >= 0)
		ring_buf_return(r, c->in.bid);
	c->in.bid = -1;
	if (c->out.bid >= 0 && !c->out.posted)
		ring_buf_return(r, c->out.bid);
	if (!c->out.posted)
		c->out.bid = -1;
}

/* Called after every completion: frees the object once nothing is in flight. */
static void client_maybe_free(struct client *c)
{
	if (c->state == CLIENT_CLOSING && c->inflight == 0) {  /* not CLIENT_FREE */
		release_buffers(c);
		if (c->tls)
			client_tls_end(c);   /* no send from its buffers is in flight */
		close(c->fd);
		client_free(c);
	}
}

void client_abort(struct client *c)
{
	if (closing(c))
		return;
	struct shard *s = c->shard;
	c->state = CLIENT_CLOSING;
	timer_cancel(&s->timers, &c->timer);
	if (c->ex) {
		struct exchange *ex = c->ex;
		c->ex = NULL;
		proxy_client_gone(ex);
	}
	/* shutdown() completes our pending recv/send; the fd is closed when
	 * the last of them has come back. */
	shutdown(c->fd, SHUT_RDWR);
	release_buffers(c);
	client_maybe_free(c);
}

void client_accept(struct shard *s, int fd, struct tls_conf *tls, bool admin)
{
	struct client *c = s->client_free;
	if (s->n_clients >= s->cfg->limits.max_connections || s->draining) {
		s->stats.refused_no_memory++;
		close(fd);
		return;
	}
	if (c) {
		s->client_free = c->next;
	} else {
		c = malloc(sizeof(*c));
		if (!c) {
			s->stats.refused_no_memory++;
			close(fd);
			return;
		}
	}
	memset(c, 0, sizeof(*c));
	c->shard = s;
	c->fd = fd;
	c->state = CLIENT_IDLE;
	c->in.bid = -1;
	c->out.bid = -1;
	c->plain.bid = -1;
	c->admin = admin;
	c->next = s->clients;
	if (s->clients)
		s->clients->prev = c;
	s->clients = c;
	s->n_clients++;
	s->stats.accepted++;

	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (tls && !client_tls_start(c, tls)) {
		s->stats.refused_no_memory++;
		client_abort(c);
		return;
	}
	/* A new connection must finish its handshake, then start a request,
	 * within their timeouts. */
	if (tls)
		shard_timer_arm(s, &c->timer, TIMER_CLIENT_HANDSHAKE,
				s->cfg->limits.handshake_timeout_ms);
	else
		shard_timer_arm(s, &c->timer, TIMER_CLIENT_HEADER,
				s->cfg->limits.header_timeout_ms);
	client_post_recv(c);
}

/* ---- reading ---- */

static void client_post_recv(struct client *c)
{
	if (c->recv_posted || closing(c) || c->in.bid >= 0 || c->plain.bid >= 0)
		return;
	struct io_uring_sqe *sqe = shard_sqe(c->shard);
	ring_prep_recv(&c->shard->ring, sqe, c->fd, BUFS_CLIENT);
	io_uring_sqe_set_data64(sqe, ring_tag(OP_CLIENT_RECV, c));
	c->recv_posted = true;
	c->inflight++;
}

void client_retry_recv(struct client *c)
{
	c->inflight--;          /* the starvation "operation" is over */
	client_post_recv(c);
	client_maybe_free(c);
}

void client_on_recv(struct client *c, int res, uint32_t cqe_flags)
{
	struct shard *s = c->shard;
	c->recv_posted = false;
	c->inflight--;
	int32_t bid = ring_buf_take(&s->ring, BUFS_CLIENT, cqe_flags);
	if (bid != RING_NO_BUF) {
		if (res <= 0 || closing(c)) {
			ring_buf_return(&s->ring, bid);
		} else {
			c->in = (struct stash){ .bid = bid, .off = 0, .len = (uint32_t)res };
		}
	}
	if (closing(c)) {
		client_maybe_free(c);
		return;
	}
	if (res == -ENOBUFS) {
		/* Waiting for a buffer counts as an operation in flight, so the
		 * object outlives its place on the starved list. */
		c->inflight++;
		c->next_starved = s->starved_clients;
		s->starved_clients = c;
		return;
	}
	if (res <= 0) {
		/* EOF or error: the agent went away (mid-stream included). */
		client_abort(c);
		return;
	}
	if (c->tls) {
		client_tls_received(c);
		if (c->tls->phase == TLS_HANDSHAKE && !client_tls_handshake(c)) {
			client_post_recv(c);
			return;
		}
		if (c->state == CLIENT_BUSY) {
			/* Decrypt now what came while a request is answered: an
			 * agent that leaves mid-stream sends close_notify before
			 * its FIN, and must be seen going (the input is kept if
			 * it is a pipelined request). */
			const char *data;
			size_t len;
			client_tls_input(c, &data, &len);
		}
	}
	client_process(c);
}

/* The reply when the shard has no exchange left to answer a request with.
 * There is no exchange to build it in, so it is written out here, and its
 * Content-Length is checked at build time. */
#define BUSY_BODY "{\"type\":\"urn:tollgate:problem:overloaded\"," \
	"\"title\":\"Service Unavailable\",\"status\":503," \
	"\"detail\":\"no free request slot on this shard\",\"code\":\"overloaded\"}"
_Static_assert(sizeof(BUSY_BODY) - 1 == 151, "Content-Length of busy_reply");
static const char busy_reply[] =
	"HTTP/1.1 503 Service Unavailable\r\n"
	"Content-Type: application/problem+json\r\n"
	"Content-Length: 151\r\nConnection: close\r\n\r\n" BUSY_BODY;

/* Starts a request on the first byte after IDLE. */
static bool client_begin_request(struct client *c)
{
	struct shard *s = c->shard;
	struct exchange *ex = exchange_get(s);
	if (!ex) {
		s->stats.refused_no_memory++;
		c->close_after = true;
		c->state = CLIENT_BUSY;
		client_send(c, busy_reply, sizeof(busy_reply) - 1, NULL, 0, -1);
		return false;
	}
	ex->client = c;
	c->ex = ex;
	c->state = CLIENT_HEAD;
	shard_timer_arm(s, &c->timer, TIMER_CLIENT_HEADER,
			s->cfg->limits.header_timeout_ms);
	return true;
}

/* Bytes to parse: stashed in a provided buffer, or decrypted (TLS). */
static bool client_input(struct client *c, const char **data, size_t *len)
{
	if (c->tls)
		return client_tls_input(c, data, len);
	if (c->in.bid < 0)
		return false;
	*data = (const char *)ring_buf_ptr(&c->shard->ring, c->in.bid) + c->in.off;
	*len = c->in.len;
	return true;
}

static void client_consume(struct client *c, size_t n)
{
	if (c->tls) {
		client_tls_consume(c, n);
		return;
	}
	c->in.off += (uint32_t)n;
	c->in.len -= (uint32_t)n;
	if (c->in.len == 0) {
		ring_buf_return(&c->shard->ring, c->in.bid);
		c->in.bid = -1;
	}
}

/* Parses stashed bytes until they run out or a request is complete. */
static void client_process(struct client *c)
{
	struct shard *s = c->shard;
	const char *data;
	size_t len;
	while (c->state != CLIENT_BUSY && !closing(c) &&
	       client_input(c, &data, &len)) {
		if (c->state == CLIENT_IDLE && !client_begin_request(c))
			break;
		struct exchange *ex = c->ex;
		client_consume(c, http1_feed(&ex->req, data, len));
		switch (ex->req.event) {
		case HTTP_NEED_MORE:
			break;
		case HTTP_HEAD_DONE:
			http1_resume(&ex->req);
			c->state = CLIENT_BODY;
			shard_timer_arm(s, &c->timer, TIMER_CLIENT_BODY,
					s->cfg->limits.body_timeout_ms);
			proxy_request_head(ex);
			break;
		case HTTP_MESSAGE_DONE:
			c->state = CLIENT_BUSY;
			timer_cancel(&s->timers, &c->timer);
			c->close_after = !http_should_keep_alive(&ex->req.parser);
			proxy_request(ex);
			break;
		case HTTP_ERROR:
			/* Framing is lost: answer and close, never guess. */
			c->state = CLIENT_BUSY;
			c->close_after = true;
			timer_cancel(&s->timers, &c->timer);
			proxy_reply_error(ex, ex->req.error_status);
			break;
		}
	}
	/* Keep a recv posted while busy too: it is how we see an agent
	 * disconnect in the middle of a long stream. */
	client_post_recv(c);
}

/* ---- writing ---- */

static void client_sent_all(struct client *c);

static void client_post_send(struct client *c)
{
	if (c->tls) {
		/* encrypted a record at a time; TLS posts the sends */
		c->out.posted = true;
		if (client_tls_flush(c)) {
			/* nothing to send: finish on the next completion, never
			 * inside the caller's own send */
			struct io_uring_sqe *sqe = shard_sqe(c->shard);
			io_uring_prep_nop(sqe);
			io_uring_sqe_set_data64(sqe, ring_tag(OP_CLIENT_SEND, c));
			c->inflight++;
		}
		return;
	}
	struct io_uring_sqe *sqe = shard_sqe(c->shard);
	io_uring_prep_sendmsg(sqe, c->fd, &c->out.msg, MSG_NOSIGNAL);
	io_uring_sqe_set_data64(sqe, ring_tag(OP_CLIENT_SEND, c));
	c->out.posted = true;
	c->inflight++;
	shard_timer_arm(c->shard, &c->timer, TIMER_CLIENT_SEND,
			c->shard->cfg->limits.send_timeout_ms);
}

void client_sendv(struct client *c, const struct iovec *iov, int n, int32_t bid)
{
	BUG_ON_HOT(c->out.posted);
	if (closing(c)) {
		if (bid >= 0)
			ring_buf_return(&c->shard->ring, bid);
		return;
	}
	sendq_set(&c->out, iov, n);
	c->out.bid = bid;
	if (c->ex && booking_hold_reply_end(c->ex))
		return;   /* posted by client_send_resume() once the ledger has it */
	client_post_send(c);
}

void client_send_resume(struct client *c)
{
	client_post_send(c);
}

void client_send(struct client *c, const void *a, size_t alen,
		 const void *b, size_t blen, int32_t bid)
{
	struct iovec iov[2] = { { (void *)a, alen }, { (void *)b, blen } };
	client_sendv(c, iov, 2, bid);
}

void client_on_send(struct client *c, int res)
{
	struct shard *s = c->shard;
	c->inflight--;
	if (c->tls) {
		client_tls_sent(c, res);
		if (!closing(c) && res >= 0) {
			if (c->tls->phase == TLS_DEAD) {
				client_abort(c);    /* a fatal alert went out */
				client_maybe_free(c);
				return;
			}
			if (c->tls->phase == TLS_HANDSHAKE) {
				if (client_tls_handshake(c))
					client_process(c);
				else
					client_post_recv(c);
				client_maybe_free(c);
				return;
			}
			if (!c->out.posted || !client_tls_flush(c)) {
				client_maybe_free(c);
				return;
			}
		}
	}
	c->out.posted = false;
	if (closing(c) || res < 0) {
		if (c->out.bid >= 0)
			ring_buf_return(&s->ring, c->out.bid);
		c->out.bid = -1;
		if (!closing(c))
			client_abort(c);
		client_maybe_free(c);
		return;
	}
	if (!c->tls && !sendq_advance(&c->out, (size_t)res)) {
		client_post_send(c);
		return;
	}
	client_sent_all(c);
}

/* The reply piece queued by client_sendv() is out. */
static void client_sent_all(struct client *c)
{
	struct shard *s = c->shard;
	timer_cancel(&s->timers, &c->timer);
	if (c->out.bid >= 0) {
		ring_buf_return(&s->ring, c->out.bid);
		c->out.bid = -1;
	}
	if (c->ex)
		proxy_client_sent(c->ex);
	else if (c->close_after)
		client_abort(c);   /* a reply sent without an exchange (503 busy) */
}

void client_reply_done(struct client *c)
{
	struct shard *s = c->shard;
	c->ex = NULL;
	if (c->close_after || s->draining) {
		client_abort(c);
		return;
	}
	c->state = CLIENT_IDLE;
	shard_timer_arm(s, &c->timer, TIMER_CLIENT_IDLE, s->cfg->limits.idle_timeout_ms);
	if (c->in.bid >= 0 || c->plain.bid >= 0)
		client_process(c);    /* a pipelined request is waiting */
	else
		client_post_recv(c);
}

void client_on_timer(struct client *c)
{
	struct shard *s = c->shard;
	switch (c->timer.kind) {
	case TIMER_CLIENT_HEADER:
	case TIMER_CLIENT_BODY:
		if (c->ex && c->state != CLIENT_IDLE) {
			/* 408 and close: the agent is too slow to send a request. */
			c->state = CLIENT_BUSY;
			c->close_after = true;
			proxy_reply_error(c->ex, 408);
			return;
		}
		client_abort(c);
		return;
	case TIMER_CLIENT_IDLE:
	case TIMER_CLIENT_SEND:
	case TIMER_CLIENT_HANDSHAKE:
	default:
		(void)s;
		client_abort(c);
		return;
	}
}

void client_freeze_sweep(struct shard *s)
{
	for (struct client *c = s->clients; c; c = c->next)
		if (c->ex && c->ex->stream)
			stream_check_freeze(c->ex);
}

void client_close_idle(struct shard *s)
{
	for (struct client *c = s->clients, *next; c; c = next) {
		next = c->next;
		if (c->state == CLIENT_IDLE)
			client_abort(c);
	}
}
