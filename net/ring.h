/*
 * ring.h — one io_uring per shard, its provided-buffer groups, and the
 * tagged 64-bit user_data every submission carries.
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
	OP_LEDGER_SYNC,     /* a ledger batch's fsync (fsync: always; ledger/writer.c) */
	OP_LEDGER_TICK,     /* a periodic fsync (fsync: batch) */
	OP_UPSTREAM_TLS,    /* a no-op: decrypt what a provider's TLS session holds */
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

/*
 * Provided buffers: a recv picks one only when data arrives, so idle
 * connections hold no buffer. Agent reads and provider reads draw from
 * separate groups: bytes an agent sends ahead (pipelining) may pin agent
 * buffers, but can never leave a reply unreadable for want of a buffer.
 */
enum ring_group { BUFS_CLIENT = 1, BUFS_UPSTREAM = 2, BUFS_PLAIN = 3, RING_GROUPS = 4 };

/*
 * BUFS_PLAIN is never given to the kernel: it holds decrypted TLS records
 * (a recv's provided buffer holds the ciphertext). Its buffers are taken
 * with ring_buf_get() from a free stack and referenced, relayed and
 * returned exactly like provided buffers, so the relay does not care
 * whether a connection is encrypted. Its memory is reserved, not touched,
 * until used.
 */
struct ring_bufs {
	struct io_uring_buf_ring *br;   /* NULL: a user-space group (BUFS_PLAIN) */
	unsigned char *mem;
	uint32_t size, count;
	uint32_t out;              /* handed to us by the kernel, not yet returned */
	uint16_t *free_ids;        /* user-space group: free buffer ids (a stack) */
	uint32_t n_free;
};

struct ring {
	struct io_uring uring;
	struct ring_bufs groups[RING_GROUPS];   /* index 0 unused */
	bool defer_taskrun;        /* ring set-up flags in effect, for the log */
};

/* A buffer reference: group << 16 | buffer id; RING_NO_BUF for none. */
#define RING_NO_BUF (-1)

/* 0 or negative errno. Tries SINGLE_ISSUER|DEFER_TASKRUN|COOP_TASKRUN and
 * falls back to plain flags on kernels without them. */
int ring_init(struct ring *r, uint32_t entries);
/* Registers `count` (a power of two) buffers of `size` bytes as `group`. */
int ring_add_bufs(struct ring *r, enum ring_group group, uint32_t count, uint32_t size);
/* Sets up a user-space group of `count` (<= 65536) buffers. */
int ring_add_user_bufs(struct ring *r, enum ring_group group, uint32_t count, uint32_t size);
/* A free buffer of a user-space group, or RING_NO_BUF. */
int32_t ring_buf_get(struct ring *r, enum ring_group group);
void ring_exit(struct ring *r);

/* A free SQE; submits what is queued to make room if the SQ is full. */
struct io_uring_sqe *ring_sqe(struct ring *r);
/* Prepares a recv on fd that picks a buffer of `group`. */
void ring_prep_recv(struct ring *r, struct io_uring_sqe *sqe, int fd, enum ring_group group);
/* The buffer a recv completion carries (RING_NO_BUF if none). */
int32_t ring_buf_take(struct ring *r, enum ring_group group, uint32_t cqe_flags);
unsigned char *ring_buf_ptr(struct ring *r, int32_t ref);
/* Gives a buffer back to the kernel. */
void ring_buf_return(struct ring *r, int32_t ref);
static inline bool ring_bufs_free(const struct ring *r, enum ring_group g)
{
	return r->groups[g].out < r->groups[g].count;
}

#endif
