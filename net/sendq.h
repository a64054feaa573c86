/*
 * sendq.h — the one pending send of a connection (struct sendq in
 * conn_types.h): filling it and advancing it after a partial send.
 */
#ifndef TOLLGATE_SENDQ_H
#define TOLLGATE_SENDQ_H

#include <stdbool.h>
#include <string.h>

#include "net/conn_types.h"

/* Points the queue at iov[0..n), skipping empty pieces. */
static inline void sendq_set(struct sendq *q, const struct iovec *iov, int n)
{
	int k = 0;
	for (int i = 0; i < n && k < SENDQ_MAX_IOV; i++)
		if (iov[i].iov_len)
			q->iov[k++] = iov[i];
	q->msg = (struct msghdr){ .msg_iov = q->iov, .msg_iovlen = (size_t)k };
}

/* Drops `sent` bytes from the front; true when everything has been sent. */
static inline bool sendq_advance(struct sendq *q, size_t sent)
{
	while (q->msg.msg_iovlen && sent >= q->msg.msg_iov[0].iov_len) {
		sent -= q->msg.msg_iov[0].iov_len;
		q->msg.msg_iov++;
		q->msg.msg_iovlen--;
	}
	if (q->msg.msg_iovlen) {
		q->msg.msg_iov[0].iov_base = (char *)q->msg.msg_iov[0].iov_base + sent;
		q->msg.msg_iov[0].iov_len -= sent;
	}
	return q->msg.msg_iovlen == 0;
}

#endif
