/*
 * writer.c — a shard's ledger writer over its io_uring (writer.h).
 */
#include "ledger/writer.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/log.h"
#include "ledger/segment.h"
#include "net/ring.h"

#define BATCH_INITIAL (256u << 10)
#define BATCH_MAX (16u << 20)        /* bound: the disk is not keeping up */

static void waiters_init(struct ledger_wait *head)
{
	head->next = head->prev = head;
}

static bool waiters_empty(const struct ledger_wait *head)
{
	return head->next == head;
}

/* Calls back every waiter of head with err (each is unlinked first, so it
 * may free itself or wait again). */
static void waiters_wake(struct ledger_wait *head, int err)
{
	while (!waiters_empty(head)) {
		struct ledger_wait *w = head->next;
		ledger_wait_cancel(w);
		w->done(w, err);
	}
}

/* Moves every waiter of from to the end of to. */
static void waiters_splice(struct ledger_wait *to, struct ledger_wait *from)
{
	if (waiters_empty(from))
		return;
	from->next->prev = to->prev;
	to->prev->next = from->next;
	from->prev->next = to;
	to->prev = from->prev;
	waiters_init(from);
}

static int open_segment(struct ledger_writer *w)
{
	char name[LEDGER_SEGMENT_NAME_MAX];
	if (!ledger_segment_name(name, sizeof(name), w->shard, w->seq))
		return -ENAMETOOLONG;
	int fd = openat(w->dir_fd, name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
	if (fd < 0)
		return -errno;
	w->fd = fd;
	w->seg_len = 0;
	/* the segment names itself, so a renamed or stray file is noticed */
	struct ledger_rec head = { .kind = LEDGER_SEGMENT, .decision = w->shard,
				   .run_limit = (int64_t)w->seq };
	head.f[LF_CODE] = (struct ledger_text){ LEDGER_SEGMENT_MAGIC,
						sizeof(LEDGER_SEGMENT_MAGIC) - 1 };
	return ledger_append(w, &head);
}

int ledger_writer_open(struct ledger_writer *w, int dir_fd, uint32_t shard, uint64_t seq,
		       uint64_t seg_max, enum ledger_fsync fsync, uint32_t batch_ms)
{
	memset(w, 0, sizeof(*w));
	w->dir_fd = dir_fd;
	w->shard = shard;
	w->seq = seq;
	w->seg_max = seg_max;
	w->fsync = (uint8_t)fsync;
	w->batch_ms = batch_ms;
	w->fd = -1;
	for (int i = 0; i < 2; i++) {
		waiters_init(&w->batch[i].waiters);
		w->batch[i].buf = malloc(BATCH_INITIAL);
		w->batch[i].cap = BATCH_INITIAL;
		if (!w->batch[i].buf) {
			ledger_writer_close(w);
			return -ENOMEM;
		}
	}
	int rc = open_segment(w);
	if (rc)
		ledger_writer_close(w);
	return rc;
}

/* Writes buf[0..len) at the end of the segment, blocking (start and stop
 * only). */
static int write_all(struct ledger_writer *w, const char *buf, uint32_t len)
{
	while (len) {
		ssize_t n = pwrite(w->fd, buf, len, (off_t)w->seg_len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		buf += n;
		len -= (uint32_t)n;
		w->seg_len += (uint64_t)n;
	}
	return 0;
}

void ledger_writer_close(struct ledger_writer *w)
{
	if (w->fd >= 0) {
		if (w->writing && !w->error) {
			/* written, its fsync not back (the loop gave up waiting):
			 * count it, so what follows goes after it */
			struct ledger_batch *flight = &w->batch[!w->fill];
			w->seg_len += flight->len;
			flight->len = 0;
			w->writing = false;
		}
		struct ledger_batch *b = &w->batch[w->fill];
		int rc = w->error ? w->error : b->len ? write_all(w, b->buf, b->len) : 0;
		if (!rc && w->fsync != LEDGER_FSYNC_NEVER && fdatasync(w->fd))
			rc = -errno;
		if (rc)
			log_error("ledger: shard %u: closing segment %llu: %s", w->shard,
				  (unsigned long long)w->seq, strerror(-rc));
		b->len = 0;
		/* the shard is gone: its waiters are not called (nor touched) */
		waiters_init(&b->waiters);
		waiters_init(&w->batch[!w->fill].waiters);
		close(w->fd);
		w->fd = -1;
	}
	for (int i = 0; i < 2; i++) {
		free(w->batch[i].buf);
		w->batch[i].buf = NULL;
	}
}

int ledger_append(struct ledger_writer *w, const struct ledger_rec *rec)
{
	if (w->error)
		return -EIO;
	struct ledger_batch *b = &w->batch[w->fill];
	size_t need = ledger_rec_size(rec);
	if (b->len + need > b->cap) {
		if (b->len + need > BATCH_MAX)
			return -ENOBUFS;
		uint32_t cap = b->cap;
		while (b->len + need > cap)
			cap *= 2;
		char *nb = realloc(b->buf, cap);
		if (!nb)
			return -ENOBUFS;
		b->buf = nb;
		b->cap = cap;
	}
	b->len += (uint32_t)ledger_encode(rec, b->buf + b->len);
	w->records++;
	return 0;
}

void ledger_wait_add(struct ledger_writer *w, struct ledger_wait *wt)
{
	struct ledger_wait *head = &w->batch[w->fill].waiters;
	wt->prev = head->prev;
	wt->next = head;
	head->prev->next = wt;
	head->prev = wt;
}

void ledger_wait_cancel(struct ledger_wait *wt)
{
	if (!wt->next)
		return;
	wt->prev->next = wt->next;
	wt->next->prev = wt->prev;
	wt->next = wt->prev = NULL;
}

static void fail(struct ledger_writer *w, int err);
static void batch_done(struct ledger_writer *w);

/* Writes the flight batch with pwrite (a regular file: short only on
 * error); under `always` the batch completes with its fsync on the ring. */
static void write_batch(struct ledger_writer *w, struct ring *r)
{
	struct ledger_batch *b = &w->batch[!w->fill];
	w->writes++;
	for (uint32_t done = 0; done < b->len;) {
		ssize_t n = pwrite(w->fd, b->buf + done, b->len - done, (off_t)(w->seg_len + done));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			fail(w, n < 0 ? -errno : -EIO);
			return;
		}
		done += (uint32_t)n;
	}
	w->sync_linked = w->fsync == LEDGER_FSYNC_ALWAYS;
	if (!w->sync_linked) {
		batch_done(w);
		return;
	}
	struct io_uring_sqe *sqe = ring_sqe(r);
	io_uring_prep_fsync(sqe, w->fd, IORING_FSYNC_DATASYNC);
	io_uring_sqe_set_data64(sqe, ring_tag(OP_LEDGER_SYNC, w));
}

void ledger_writer_flush(struct ledger_writer *w, struct ring *r, uint64_t now_ms)
{
	if (w->error)
		return;
	if (!w->writing && w->batch[w->fill].len) {
		w->fill ^= 1;
		w->writing = true;
		write_batch(w, r);
	}
	if (w->fsync == LEDGER_FSYNC_BATCH && w->unsynced && !w->syncing && !w->writing &&
	    now_ms >= w->next_sync_ms) {
		struct io_uring_sqe *sqe = ring_sqe(r);
		io_uring_prep_fsync(sqe, w->fd, IORING_FSYNC_DATASYNC);
		io_uring_sqe_set_data64(sqe, ring_tag(OP_LEDGER_TICK, w));
		w->syncing = true;
		w->unsynced = 0;
		w->next_sync_ms = now_ms + w->batch_ms;
	}
}

static void fail(struct ledger_writer *w, int err)
{
	if (!w->error)
		log_error("ledger: shard %u: writing segment %llu failed: %s; budgeted calls "
			  "are refused until a restart", w->shard, (unsigned long long)w->seq,
			  strerror(-err));
	w->error = err;
	w->writing = false;
	waiters_wake(&w->batch[!w->fill].waiters, err);
	waiters_wake(&w->batch[w->fill].waiters, err);
}

/* Past its size: close the segment (synced) and open the next. */
static void rotate(struct ledger_writer *w)
{
	if (w->fsync != LEDGER_FSYNC_NEVER && fdatasync(w->fd)) {
		fail(w, -errno);
		return;
	}
	close(w->fd);
	w->fd = -1;
	w->seq++;
	w->unsynced = 0;
	/* the new segment's first record goes after what is buffered: swap it
	 * to the front by appending into an empty fill buffer first */
	struct ledger_batch *b = &w->batch[w->fill];
	struct ledger_batch *spare = &w->batch[!w->fill];
	uint32_t pending = b->len;
	spare->len = 0;
	w->fill ^= 1;
	int rc = open_segment(w);
	if (!rc && pending) {
		if (spare->len + pending > spare->cap) {
			char *nb = realloc(spare->buf, spare->len + pending);
			if (!nb) {
				rc = -ENOMEM;
			} else {
				spare->buf = nb;
				spare->cap = spare->len + pending;
			}
		}
		if (!rc) {
			memcpy(spare->buf + spare->len, b->buf, pending);
			spare->len += pending;
		}
	}
	b->len = 0;
	waiters_splice(&spare->waiters, &b->waiters);
	if (rc)
		fail(w, rc);
}

/* The flight batch is on disk (and synced, when linked). */
static void batch_done(struct ledger_writer *w)
{
	struct ledger_batch *b = &w->batch[!w->fill];
	w->seg_len += b->len;
	w->bytes += b->len;
	if (!w->sync_linked)
		w->unsynced += b->len;
	b->len = 0;
	w->writing = false;
	waiters_wake(&b->waiters, 0);
	if (w->seg_len >= w->seg_max)
		rotate(w);
}

void ledger_writer_on_sync(struct ledger_writer *w, int res, bool linked)
{
	if (!linked) {
		w->syncs++;
		w->syncing = false;
		if (res < 0)
			fail(w, res);
		return;
	}
	if (res < 0) {
		fail(w, res);
		return;
	}
	w->syncs++;
	batch_done(w);
}

bool ledger_writer_idle(const struct ledger_writer *w)
{
	return w->error || (!w->writing && !w->syncing && w->batch[w->fill].len == 0);
}

uint64_t ledger_writer_due_in(const struct ledger_writer *w, uint64_t now_ms)
{
	if (w->error || w->writing)
		return UINT64_MAX;   /* a completion wakes the loop */
	if (w->batch[w->fill].len)
		return 0;
	if (w->fsync != LEDGER_FSYNC_BATCH || !w->unsynced || w->syncing)
		return UINT64_MAX;
	return w->next_sync_ms > now_ms ? w->next_sync_ms - now_ms : 0;
}
