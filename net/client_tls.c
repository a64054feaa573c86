/*
 * client_tls.c — TLS on an agent connection.
 *
 * The connection's state machine stays in net/client.c; this file drives
 * the session through net/tls_io.c: ciphertext arrives in c->in, requests
 * are parsed from decrypted bytes in c->plain (a BUFS_PLAIN buffer), the
 * reply in c->out is encrypted record by record. Neither buffer is held
 * while the connection waits.
 */
#include "net/client_tls.h"

#include <errno.h>
#include <stdlib.h>

#include "core/log.h"
#include "core/shard.h"
#include "net/client.h"
#include "net/tls_io.h"
#include "tls/tls.h"

bool client_tls_start(struct client *c, struct tls_conf *conf)
{
	c->tls = malloc(sizeof(*c->tls));
	if (!c->tls)
		return false;
	if (tls_conn_init(c->tls, conf)) {
		free(c->tls);
		c->tls = NULL;
		return false;
	}
	return true;
}

void client_tls_end(struct client *c)
{
	if (c->plain.bid >= 0)
		ring_buf_return(&c->shard->ring, c->plain.bid);
	c->plain.bid = -1;
	if (c->tls) {
		tls_conn_free(c->tls);
		free(c->tls);
		c->tls = NULL;
	}
}

void client_tls_received(struct client *c)
{
	tls_io_received(c->shard, c->tls, &c->in);
}

static void post_send(struct client *c)
{
	if (!tls_io_post_send(c->shard, c->tls, c->fd, ring_tag(OP_CLIENT_SEND, c)))
		return;
	c->inflight++;
	if (c->tls->phase == TLS_OPEN)   /* the handshake has its own deadline */
		shard_timer_arm(c->shard, &c->timer, TIMER_CLIENT_SEND,
				c->shard->cfg->limits.send_timeout_ms);
}

static void fail(struct client *c, const char *when, int err)
{
	char why[160];
	tls_conn_strerror(c->tls, why, sizeof(why));
	log_debug("tls: %s: %s", when, err == -ENOBUFS ? "no free buffer" : why);
	client_abort(c);
}

bool client_tls_handshake(struct client *c)
{
	struct shard *s = c->shard;
	int rc = tls_conn_handshake(c->tls);
	tls_io_drop_read(s, c->tls, &c->in);
	if (rc < 0) {
		if (c->tls->out_len && !c->tls->send_posted) {
			/* the alert that says why goes out first; the connection
			 * closes when it is sent (client_on_send) */
			char why[160];
			tls_conn_strerror(c->tls, why, sizeof(why));
			log_debug("tls: handshake: %s", why);
			post_send(c);
		} else {
			fail(c, "handshake", rc);
		}
		return false;
	}
	post_send(c);
	if (rc == 0)
		return false;
	/* Like a plain connection after accept: a request must start soon. */
	shard_timer_arm(s, &c->timer, TIMER_CLIENT_HEADER, s->cfg->limits.header_timeout_ms);
	return true;
}

bool client_tls_input(struct client *c, const char **data, size_t *len)
{
	if (c->plain.bid < 0) {
		if (c->tls->phase != TLS_OPEN || !tls_conn_pending(c->tls))
			return false;
		ssize_t n = tls_io_decrypt(c->shard, c->tls, &c->plain, &c->in);
		if (n <= 0) {
			if (n < 0)
				fail(c, n == -ESHUTDOWN ? "peer closed" : "read", (int)n);
			return false;
		}
	}
	*data = (const char *)ring_buf_ptr(&c->shard->ring, c->plain.bid) + c->plain.off;
	*len = c->plain.len;
	return true;
}

void client_tls_consume(struct client *c, size_t n)
{
	c->plain.off += (uint32_t)n;
	c->plain.len -= (uint32_t)n;
	if (!c->plain.len) {
		ring_buf_return(&c->shard->ring, c->plain.bid);
		c->plain.bid = -1;
	}
}

bool client_tls_flush(struct client *c)
{
	int rc = tls_io_write(c->shard, c->tls, &c->out);
	if (rc == 0)
		post_send(c);   /* the record waits in mbedTLS for its send */
	if (rc >= 0)
		return rc == 1;
	c->out.posted = false;     /* nothing in flight holds c->out's buffer */
	fail(c, "write", rc);
	return false;
}

void client_tls_sent(struct client *c, int res)
{
	if (c->tls->send_posted)
		tls_conn_sent(c->tls, res);
}
