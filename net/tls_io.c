/*
 * tls_io.c — see tls_io.h.
 */
#include "net/tls_io.h"

#include <errno.h>
#include <string.h>

#include "core/shard.h"
#include "net/sendq.h"
#include "tls/tls.h"

void tls_io_received(struct shard *s, struct tls_conn *t, const struct stash *in)
{
	tls_conn_input(t, ring_buf_ptr(&s->ring, in->bid) + in->off, in->len);
}

void tls_io_drop_read(struct shard *s, struct tls_conn *t, struct stash *in)
{
	if (in->bid >= 0 && tls_conn_input_left(t) == 0) {
		ring_buf_return(&s->ring, in->bid);
		in->bid = -1;
		in->len = 0;
	}
}

bool tls_io_post_send(struct shard *s, struct tls_conn *t, int fd, uint64_t tag)
{
	const void *buf;
	size_t len;
	if (!tls_conn_out(t, &buf, &len))
		return false;
	struct io_uring_sqe *sqe = shard_sqe(s);
	io_uring_prep_send(sqe, fd, buf, len, MSG_NOSIGNAL);
	io_uring_sqe_set_data64(sqe, tag);
	return true;
}

ssize_t tls_io_decrypt(struct shard *s, struct tls_conn *t, struct stash *plain, struct stash *in)
{
	int32_t bid = ring_buf_get(&s->ring, BUFS_PLAIN);
	if (bid == RING_NO_BUF)
		return -ENOBUFS;
	unsigned char *p = ring_buf_ptr(&s->ring, bid);
	uint32_t cap = s->ring.groups[BUFS_PLAIN].size, n = 0;
	ssize_t r = 0;
	/* Fill the buffer: what does not fit stays inside mbedTLS. */
	while (n < cap && (r = tls_conn_read(t, p + n, cap - n)) > 0)
		n += (uint32_t)r;
	tls_io_drop_read(s, t, in);
	if (n) {
		*plain = (struct stash){ .bid = bid, .off = 0, .len = n };
		return n;
	}
	ring_buf_return(&s->ring, bid);
	if (r == 0 && t->want_write)
		return -EPROTO;
	return r;
}

/* The next record's plaintext: the first piece when it fills a record or
 * is alone, else the pieces gathered into `scratch`. */
static size_t next_record(const struct sendq *q, unsigned char *scratch, size_t cap,
			  const void **p)
{
	const struct iovec *iov = q->msg.msg_iov;
	if (q->msg.msg_iovlen == 1 || iov[0].iov_len >= cap) {
		*p = iov[0].iov_base;
		return iov[0].iov_len < cap ? iov[0].iov_len : cap;
	}
	size_t n = 0;
	for (size_t i = 0; i < q->msg.msg_iovlen && n < cap; i++) {
		size_t take = iov[i].iov_len < cap - n ? iov[i].iov_len : cap - n;
		memcpy(scratch + n, iov[i].iov_base, take);
		n += take;
	}
	*p = scratch;
	return n;
}

int tls_io_write(struct shard *s, struct tls_conn *t, struct sendq *q)
{
	while (q->msg.msg_iovlen) {
		/* mbedTLS copies the plaintext into its record at once, so the
		 * gathering buffer goes back right after. */
		int32_t scratch = RING_NO_BUF;
		if (q->msg.msg_iovlen > 1 &&
		    (scratch = ring_buf_get(&s->ring, BUFS_PLAIN)) == RING_NO_BUF)
			return -ENOBUFS;
		const void *p;
		size_t n = next_record(q, scratch >= 0 ? ring_buf_ptr(&s->ring, scratch) : NULL,
				       s->ring.groups[BUFS_PLAIN].size, &p);
		ssize_t w = tls_conn_write(t, p, n);
		if (scratch >= 0)
			ring_buf_return(&s->ring, scratch);
		if (w > 0)
			sendq_advance(q, (size_t)w);
		else
			return w == 0 ? 0 : (int)w;
	}
	return 1;
}
