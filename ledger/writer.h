/*
 * writer.h — one shard's ledger writer: appends records to its own segment
 * files (pwrite once per loop turn, fsync on its own io_uring), with group commit.
 *
 * Records are encoded into a fill buffer as calls happen. Once per loop
 * turn the shard calls ledger_writer_flush(): if no batch is in flight,
 * the fill buffer becomes the flight buffer and is written with one
 * pwrite(2) (under fsync: always, an fdatasync follows on the shard's
 * io_uring and the batch completes with it). Why pwrite and not the ring:
 * on ext4 (kernel 6.18 here) io_uring cannot write to the page cache
 * without blocking, so it hands every buffered write to a worker thread:
 * 25-70 µs per write and a thread wake-up, against 1.3 µs for pwrite
 * (bench/ledger_micro.c: 9.5k against 611k records/s, one record per
 * write). The disk waits, fsync, stay on the ring. A caller that must
 * not let its agent see the end of a reply before its record is written
 * waits on the batch its record is in (ledger_wait_add); it is called back
 * when the write (and, under `always`, the fsync) completed. Under
 * `batch` an fsync follows every batch_ms while there is unsynced data;
 * under `never` the page cache is trusted (a process kill loses nothing
 * written, a power cut may). A segment that passes segment_bytes is closed
 * (fdatasync'd unless `never`) and the next one opened.
 *
 * A failed write breaks the writer: waiters are told (their agents get no
 * reply end), later appends fail, and the shard refuses budgeted calls
 * (fail closed) until a restart.
 */
#ifndef TOLLGATE_LEDGER_WRITER_H
#define TOLLGATE_LEDGER_WRITER_H

#include <stdbool.h>
#include <stdint.h>

#include "ledger/record.h"
#include "ledger/writer_types.h"

struct ring;
struct io_uring_cqe;

/* Opens segment `seq` of `shard` in dir_fd (it must not exist yet). 0 or
 * a negative errno. dir_fd stays the caller's. */
int ledger_writer_open(struct ledger_writer *w, int dir_fd, uint32_t shard, uint64_t seq,
		       uint64_t seg_max, enum ledger_fsync fsync, uint32_t batch_ms);
/* Writes out anything buffered synchronously (fsync unless `never`), and
 * closes. Only once the shard's loop has stopped: waiters left are
 * forgotten, not called. */
void ledger_writer_close(struct ledger_writer *w);

/* Buffers rec for the next write. 0, or -EIO when broken, -ENOBUFS when
 * the buffer is at its bound (the disk is not keeping up). */
int ledger_append(struct ledger_writer *w, const struct ledger_rec *rec);
/* Waits for the batch holding the last appended record. */
void ledger_wait_add(struct ledger_writer *w, struct ledger_wait *wt);
/* Stops waiting (the waiter is going away); a no-op if not waiting. */
void ledger_wait_cancel(struct ledger_wait *wt);

/* Once per loop turn: starts a write, or a batch fsync when due. */
void ledger_writer_flush(struct ledger_writer *w, struct ring *r, uint64_t now_ms);
/* Completions of OP_LEDGER_SYNC (linked: a batch's own fsync, under
 * `always`) and OP_LEDGER_TICK (the periodic fsync under `batch`). */
void ledger_writer_on_sync(struct ledger_writer *w, int res, bool linked);
/* Nothing buffered, nothing in flight. */
bool ledger_writer_idle(const struct ledger_writer *w);
/* Milliseconds until the next batch fsync is due (UINT64_MAX: none). */
uint64_t ledger_writer_due_in(const struct ledger_writer *w, uint64_t now_ms);

#endif
