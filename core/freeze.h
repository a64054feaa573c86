/*
 * freeze.h — the kill switch (SPEC §6): scopes an operator has frozen.
 *
 * One table for the process. Writers (the admin API, replay at start) are
 * rare and serialized by a mutex; readers are every call and every event
 * of a stream, and never lock: they read `count` (zero almost always: one
 * load of a line nobody writes) and, only if it is not zero, the slots'
 * tags. `epoch` grows at every change, so a running stream re-checks its
 * scopes only when something changed.
 *
 * A slot is found by a 64-bit tag (the kind in the top byte, a hash of the
 * id below): readers compare tags only. Two ids would have to collide in
 * 56 bits for a call to be refused for another scope's freeze.
 */
#ifndef TOLLGATE_FREEZE_H
#define TOLLGATE_FREEZE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/defs.h"

enum freeze_kind { FREEZE_RUN, FREEZE_KEY, FREEZE_USER, FREEZE_TEAM, FREEZE_ORG, FREEZE_KINDS };

#define FREEZE_SLOTS 1024             /* frozen scopes at once, at most (a power of two) */
#define FREEZE_ID_MAX 128
#define FREEZE_REASON_MAX 256

struct freeze_slot {
	_Atomic uint64_t tag;             /* 0 empty, 1 unfrozen (tombstone), else kind|hash */
	uint8_t kind;
	char id[FREEZE_ID_MAX + 1];
	char reason[FREEZE_REASON_MAX + 1];
	int64_t since_s;                  /* wall clock, when it was frozen */
};

struct freeze_table {
	_Alignas(CACHELINE) _Atomic uint32_t count;   /* frozen scopes now */
	_Atomic uint64_t epoch;                        /* changes so far */
	_Alignas(CACHELINE) pthread_mutex_t lock;      /* writers only */
	struct freeze_slot slots[FREEZE_SLOTS];
};

/* "run", "key", ...; and back (-1 if unknown). */
const char *freeze_kind_name(enum freeze_kind k);
int freeze_kind_parse(const char *s, size_t len);

struct freeze_table *freeze_new(void);
void freeze_free(struct freeze_table *t);

/* Freezes (kind, id): 1 newly frozen, 0 already frozen (the reason is
 * kept), -ENOSPC table full, -EINVAL bad id. On a change, *seq (if not
 * NULL) gets its place in the order of all changes (the new epoch): the
 * ledger records it, so a replay applies them in the order they happened
 * whichever shard booked them. */
int freeze_set(struct freeze_table *t, enum freeze_kind kind, const char *id, size_t len,
	       const char *reason, int64_t now_s, uint64_t *seq);
/* Unfreezes: 1 done, 0 was not frozen. */
int freeze_clear(struct freeze_table *t, enum freeze_kind kind, const char *id, size_t len,
		 uint64_t *seq);
/* After a replay: later changes are numbered past `seq`. */
void freeze_seed(struct freeze_table *t, uint64_t seq);

static inline bool freeze_any(const struct freeze_table *t)
{
	return t && atomic_load_explicit(&t->count, memory_order_relaxed) != 0;
}
static inline uint64_t freeze_epoch(const struct freeze_table *t)
{
	return t ? atomic_load_explicit(&t->epoch, memory_order_acquire) : 0;
}
/* Whether (kind, id) is frozen now. Lock-free. */
bool freeze_has(const struct freeze_table *t, enum freeze_kind kind, const char *id, size_t len);

/* Calls fn for every frozen scope (under the writers' lock: fn must not
 * freeze or unfreeze). */
void freeze_each(struct freeze_table *t,
		 void (*fn)(void *arg, const struct freeze_slot *slot), void *arg);

#endif
