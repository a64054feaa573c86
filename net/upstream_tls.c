/*
 * upstream_tls.c — TLS to https providers, verified: the chain against the
 * provider's CA bundle (ca_file, or the system's), the name against the
 * base_url's host, which is also sent as SNI. A failure is a 502 problem
 * that says why, and a log line; never a silent fallback.
 *
 * The handshake runs in UP_HANDSHAKE under the connect timeout; the
 * exchange is told the connection is ready only once it is done. Reply
 * bytes are decrypted into BUFS_PLAIN buffers and handed to the proxy like
 * provided buffers. A recv can bring more than one buffer holds: the rest
 * stays in the session, and the next upstream_recv() delivers it through
 * a no-op completion rather than re-entering the proxy.
 */
#include "net/upstream_tls.h"

#include <errno.h>
#include <stdlib.h>

#include "core/log.h"
#include "core/shard.h"
#include "net/proxy.h"
#include "net/tls_io.h"
#include "net/upstream.h"
#include "tls/tls.h"

bool upstream_tls_start(struct upstream *u, struct tls_conf *conf)
{
	u->tls = malloc(sizeof(*u->tls));
	if (!u->tls)
		return false;
	if (tls_conn_init(u->tls, conf)) {
		free(u->tls);
		u->tls = NULL;
		return false;
	}
	u->state = UP_HANDSHAKE;
	return true;
}

void upstream_tls_end(struct upstream *u)
{
	if (u->in.bid >= 0)
		ring_buf_return(&u->shard->ring, u->in.bid);
	u->in.bid = -1;
	if (u->tls) {
		tls_conn_free(u->tls);
		free(u->tls);
		u->tls = NULL;
	}
}

static void post_send(struct upstream *u)
{
	if (tls_io_post_send(u->shard, u->tls, u->fd, ring_tag(OP_UPSTREAM_SEND, u)))
		u->inflight++;
}

/* The connection failed: tell the exchange, with mbedTLS's reason. */
static void fail(struct upstream *u, const char *when, int err)
{
	struct exchange *ex = u->ex;
	char why[300];
	if (err == -ENOBUFS)
		snprintf(why, sizeof(why), "no free buffer");
	else
		tls_conn_strerror(u->tls, why, sizeof(why));
	u->ex = NULL;
	upstream_close(u);
	if (!ex)
		return;
	ex->up = NULL;
	proxy_upstream_tls_failed(ex, when, why);
}

static void handshake(struct upstream *u)
{
	int rc = tls_conn_handshake(u->tls);
	tls_io_drop_read(u->shard, u->tls, &u->in);
	if (rc < 0) {
		fail(u, "handshake", rc);
		return;
	}
	post_send(u);
	if (rc == 0) {
		upstream_recv(u);
		return;
	}
	u->state = UP_BUSY;
	timer_cancel(&u->shard->timers, &u->timer);
	upstream_recv(u);
	proxy_upstream_ready(u->ex);
}

/* Decrypts what the session holds and hands it to the proxy. */
static void deliver(struct upstream *u)
{
	struct stash plain = { .bid = -1 };
	ssize_t n = tls_io_decrypt(u->shard, u->tls, &plain, &u->in);
	if (n == 0) {
		upstream_recv(u);
		return;
	}
	if (n < 0) {
		if (n == -ESHUTDOWN) {
			/* close_notify or EOF: the provider ended the connection */
			upstream_on_eof(u);
			return;
		}
		fail(u, "read", (int)n);
		return;
	}
	const char *data = (const char *)ring_buf_ptr(&u->shard->ring, plain.bid);
	proxy_upstream_data(u->ex, data, plain.len, plain.bid);
}

void upstream_tls_begin(struct upstream *u)
{
	handshake(u);   /* nothing received yet: sends the ClientHello */
}

void upstream_tls_received(struct upstream *u)
{
	tls_io_received(u->shard, u->tls, &u->in);
	if (u->state == UP_HANDSHAKE)
		handshake(u);
	else
		deliver(u);
}

void upstream_tls_pending(struct upstream *u)
{
	if (u->state == UP_HANDSHAKE)
		handshake(u);
	else
		deliver(u);
}

void upstream_tls_flush(struct upstream *u)
{
	int rc = tls_io_write(u->shard, u->tls, &u->out);
	if (rc == 0) {
		post_send(u);
		return;
	}
	if (rc < 0) {
		fail(u, "write", rc);
		return;
	}
	u->out.posted = false;
	proxy_upstream_sent(u->ex);
}

void upstream_tls_sent(struct upstream *u, int res)
{
	if (u->tls->send_posted)
		tls_conn_sent(u->tls, res);
	if (u->state == UP_HANDSHAKE)
		handshake(u);
	else if (u->out.posted)
		upstream_tls_flush(u);
}
