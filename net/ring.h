/*
 * ring.h — one io_uring per shard, its provided-buffer ring, and the tagged
 * 64-bit user_data every submission carries.
 *
 * user_data = op << 56 | pointer: the shard's completion loop switches on
 * the op and casts the pointer (x86-64 user pointers fit in 56 bits).
 */
#ifndef TOLLGATE_RING_H
#define TOLLGATE_RING_H

#include <liburing.h>
#include <stdbool.h>
#include <stdint.h>

enum ring_op {
	OP_IGNORE = 0,      /* cancels and other fire-and-forget requests */
	OP_ACCEPT,          /* multishot accept on a listener */
	OP_CLIENT_RECV,
	OP_CLIENT_SEND,
	OP_UPSTREAM_CONNECT,
	OP_UPSTREAM_SEND,
	OP_UPSTREAM_RECV,
	OP_WAKE,            /* read on the shard's eventfd: messages */
};

static inline uint64_t ring_tag(enum ring_op op, const void *ptr)
{
	return (uint64_t)op << 56 | (uint64_t)(uintptr_t)ptr;
}
static inline enum ring_op ring_tag_op(uint64_t ud) { return (enum ring_op)(ud >> 56); }
static inline void *ring_tag_ptr(uint64_t ud)
{
	return (void *)(uintptr_t)(ud & ((1ULL << 56) - 1));
}

/* Provided buffers: recv picks one only when data arrives, so idle
 * connections hold no buffer. */
#define RING_BUF_GROUP 1

struct ring {
	struct io_uring uring;
	struct io_uring_buf_ring *bufs;
	unsigned char *buf_mem;
	uint32_t buf_size, buf_count;
	uint32_t bufs_out;          /* handed to us by the kernel, not yet returned */
	bool defer_taskrun;         /* ring set-up flags in effect, for the log */
};

/* 0 or negative errno. Tries SINGLE_ISSUER|DEFER_TASKRUN|COOP_TASKRUN and
 * falls back to plain flags on kernels without them. */
int ring_init(struct ring *r, uint32_t entries, uint32_t buf_count, uint32_t buf_size);
void ring_exit(struct ring *r);

/* A free SQE; submits what is queued to make room if the SQ is full. */
struct io_uring_sqe *ring_sqe(struct ring *r);

static inline unsigned char *ring_buf(struct ring *r, uint16_t bid)
{
	return r->buf_mem + (size_t)bid * r->buf_size;
}
/* Gives buffer bid back to the kernel. */
void ring_buf_return(struct ring *r, uint16_t bid);

#endif
