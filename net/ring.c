/*
 * ring.c — io_uring set-up with the flags that matter on this hop.
 *
 * PERF-NOTES: default flags cost a third more CPU than SINGLE_ISSUER +
 * DEFER_TASKRUN + COOP_TASKRUN for a plain relay, so we ask for them first
 * and fall back only when the kernel refuses.
 */
#include "net/ring.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "core/log.h"

int ring_init(struct ring *r, uint32_t entries)
{
	memset(r, 0, sizeof(*r));
	struct io_uring_params p = { 0 };
	p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN |
		  IORING_SETUP_COOP_TASKRUN | IORING_SETUP_SUBMIT_ALL;
	int rc = io_uring_queue_init_params(entries, &r->uring, &p);
	if (rc == -EINVAL) {
		memset(&p, 0, sizeof(p));
		rc = io_uring_queue_init_params(entries, &r->uring, &p);
	} else if (rc == 0) {
		r->defer_taskrun = true;
	}
	return rc;
}

int ring_add_bufs(struct ring *r, enum ring_group group, uint32_t count, uint32_t size)
{
	struct ring_bufs *g = &r->groups[group];
	g->count = count;
	g->size = size;
	g->br = mmap(NULL, sizeof(struct io_uring_buf) * count, PROT_READ | PROT_WRITE,
		     MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
	g->mem = mmap(NULL, (size_t)count * size, PROT_READ | PROT_WRITE,
		      MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
	if (g->br == MAP_FAILED || g->mem == MAP_FAILED) {
		g->br = NULL;
		g->mem = NULL;
		return -ENOMEM;
	}
	io_uring_buf_ring_init(g->br);
	struct io_uring_buf_reg reg = {
		.ring_addr = (uint64_t)(uintptr_t)g->br,
		.ring_entries = count,
		.bgid = (uint16_t)group,
	};
	int rc = io_uring_register_buf_ring(&r->uring, &reg, 0);
	if (rc)
		return rc;
	uint32_t mask = io_uring_buf_ring_mask(count);
	for (uint32_t i = 0; i < count; i++)
		io_uring_buf_ring_add(g->br, g->mem + (size_t)i * size, size, (uint16_t)i,
				      mask, (int)i);
	io_uring_buf_ring_advance(g->br, (int)count);
	return 0;
}

int ring_add_user_bufs(struct ring *r, enum ring_group group, uint32_t count, uint32_t size)
{
	struct ring_bufs *g = &r->groups[group];
	if (count > 65536)
		return -EINVAL;
	g->count = count;
	g->size = size;
	g->mem = mmap(NULL, (size_t)count * size, PROT_READ | PROT_WRITE,
		      MAP_ANONYMOUS | MAP_PRIVATE | MAP_NORESERVE, -1, 0);
	g->free_ids = malloc(sizeof(*g->free_ids) * count);
	if (g->mem == MAP_FAILED || !g->free_ids) {
		if (g->mem != MAP_FAILED)
			munmap(g->mem, (size_t)count * size);
		g->mem = NULL;
		return -ENOMEM;
	}
	/* lowest ids on top: a quiet shard keeps touching the same pages */
	for (uint32_t i = 0; i < count; i++)
		g->free_ids[i] = (uint16_t)(count - 1 - i);
	g->n_free = count;
	return 0;
}

int32_t ring_buf_get(struct ring *r, enum ring_group group)
{
	struct ring_bufs *g = &r->groups[group];
	if (!g->n_free)
		return RING_NO_BUF;
	g->out++;
	return (int32_t)((uint32_t)group << 16 | g->free_ids[--g->n_free]);
}

void ring_exit(struct ring *r)
{
	io_uring_queue_exit(&r->uring);
	for (int i = 1; i < RING_GROUPS; i++) {
		struct ring_bufs *g = &r->groups[i];
		if (g->br)
			munmap(g->br, sizeof(struct io_uring_buf) * g->count);
		if (g->mem)
			munmap(g->mem, (size_t)g->count * g->size);
		free(g->free_ids);
	}
}

struct io_uring_sqe *ring_sqe(struct ring *r)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&r->uring);
	while (!sqe) {
		io_uring_submit(&r->uring);
		sqe = io_uring_get_sqe(&r->uring);
	}
	return sqe;
}

void ring_prep_recv(struct ring *r, struct io_uring_sqe *sqe, int fd, enum ring_group group)
{
	io_uring_prep_recv(sqe, fd, NULL, r->groups[group].size, 0);
	sqe->flags |= IOSQE_BUFFER_SELECT;
	sqe->buf_group = (uint16_t)group;
}

int32_t ring_buf_take(struct ring *r, enum ring_group group, uint32_t cqe_flags)
{
	if (!(cqe_flags & IORING_CQE_F_BUFFER))
		return RING_NO_BUF;
	r->groups[group].out++;
	return (int32_t)((uint32_t)group << 16 | (cqe_flags >> IORING_CQE_BUFFER_SHIFT));
}

unsigned char *ring_buf_ptr(struct ring *r, int32_t ref)
{
	struct ring_bufs *g = &r->groups[ref >> 16];
	return g->mem + (size_t)(ref & 0xffff) * g->size;
}

void ring_buf_return(struct ring *r, int32_t ref)
{
	struct ring_bufs *g = &r->groups[ref >> 16];
	uint16_t bid = (uint16_t)(ref & 0xffff);
	if (!g->br) {
		g->free_ids[g->n_free++] = bid;
		g->out--;
		return;
	}
	io_uring_buf_ring_add(g->br, g->mem + (size_t)bid * g->size, g->size, bid,
			      io_uring_buf_ring_mask(g->count), 0);
	io_uring_buf_ring_advance(g->br, 1);
	g->out--;
}
