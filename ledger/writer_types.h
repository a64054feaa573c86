/*
 * writer_types.h — the ledger writer's types (API in writer.h), apart so
 * that connection types can embed a waiter.
 */
#ifndef TOLLGATE_LEDGER_WRITER_TYPES_H
#define TOLLGATE_LEDGER_WRITER_TYPES_H

#include <stdbool.h>
#include <stdint.h>

enum ledger_fsync { LEDGER_FSYNC_NEVER, LEDGER_FSYNC_BATCH, LEDGER_FSYNC_ALWAYS };

/* A waiter, embedded in whoever waits. done() gets 0 or a negative errno. */
struct ledger_wait {
	struct ledger_wait *next, *prev;   /* NULL when not waiting */
	void (*done)(struct ledger_wait *w, int err);
};

struct ledger_batch {
	char *buf;
	uint32_t len, cap;
	struct ledger_wait waiters;        /* list head (circular) */
};

struct ledger_writer {
	int dir_fd;
	uint32_t shard;
	int fd;                            /* current segment */
	uint64_t seq;                      /* its number */
	uint64_t seg_len;                  /* bytes written to it (completed) */
	uint64_t seg_max;
	uint8_t fsync;                     /* enum ledger_fsync */
	uint32_t batch_ms;
	struct ledger_batch batch[2];
	uint8_t fill;                      /* index of the batch being filled */
	bool writing;                      /* batch[!fill] is being written */
	bool sync_linked;                  /* ... and completes with its fsync */
	bool syncing;                      /* a batch-mode fsync is in flight */
	uint64_t unsynced;                 /* bytes written since the last fsync */
	uint64_t next_sync_ms;
	int error;                         /* first failure (negative errno), 0: healthy */
	uint64_t records, bytes, writes, syncs;
};

#endif
