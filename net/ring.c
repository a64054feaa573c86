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

int ring_init(struct ring *r, uint32_t entries, uint32_t buf_count, uint32_t buf_size)
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
	if (rc)
		return rc;

	r->buf_count = buf_count;   /* power of two */
	r->buf_size = buf_size;
	size_t ring_bytes = sizeof(struct io_uring_buf) * buf_count;
	r->bufs = mmap(NULL, ring_bytes, PROT_READ | PROT_WRITE,
		       MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
	r->buf_mem = mmap(NULL, (size_t)buf_count * buf_size, PROT_READ | PROT_WRITE,
			  MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
	if (r->bufs == MAP_FAILED || r->buf_mem == MAP_FAILED)
		return -ENOMEM;
	io_uring_buf_ring_init(r->bufs);
	struct io_uring_buf_reg reg = {
		.ring_addr = (uint64_t)(uintptr_t)r->bufs,
		.ring_entries = buf_count,
		.bgid = RING_BUF_GROUP,
	};
	rc = io_uring_register_buf_ring(&r->uring, &reg, 0);
	if (rc)
		return rc;
	uint32_t mask = io_uring_buf_ring_mask(buf_count);
	for (uint32_t i = 0; i < buf_count; i++)
		io_uring_buf_ring_add(r->bufs, ring_buf(r, (uint16_t)i), buf_size,
				      (uint16_t)i, mask, (int)i);
	io_uring_buf_ring_advance(r->bufs, (int)buf_count);
	return 0;
}

void ring_exit(struct ring *r)
{
	io_uring_queue_exit(&r->uring);
	if (r->bufs && r->bufs != MAP_FAILED)
		munmap(r->bufs, sizeof(struct io_uring_buf) * r->buf_count);
	if (r->buf_mem && r->buf_mem != MAP_FAILED)
		munmap(r->buf_mem, (size_t)r->buf_count * r->buf_size);
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

void ring_buf_return(struct ring *r, uint16_t bid)
{
	io_uring_buf_ring_add(r->bufs, ring_buf(r, bid), r->buf_size, bid,
			      io_uring_buf_ring_mask(r->buf_count), 0);
	io_uring_buf_ring_advance(r->bufs, 1);
	r->bufs_out--;
}
