/*
 * idempotency.h — X-Budget-Idempotency-Key: a retry gets the first
 * decision back and never reserves a second time (SPEC §3).
 *
 * A fixed table shared by all shards maps hash(key id, idempotency key) to
 * the decision that first used it and whether that call has ended. Slots
 * are claimed by CAS; entries expire after IDEM_TTL_S and their slots are
 * then reused. No lock, no allocation after start.
 */
#ifndef TOLLGATE_IDEMPOTENCY_H
#define TOLLGATE_IDEMPOTENCY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define IDEM_TTL_S 86400
#define IDEM_KEY_MAX 128

enum idem_result {
	IDEM_NEW,          /* claimed for this call: *slot names it */
	IDEM_IN_FLIGHT,    /* the first call has not ended */
	IDEM_DONE,         /* the first call ended: *first is its decision */
	IDEM_FULL,         /* no slot free: refuse (fail closed) */
};

struct idem_table;

struct idem_table *idem_new(uint32_t capacity);
void idem_free(struct idem_table *t);

/* 1..IDEM_KEY_MAX visible ASCII characters. */
bool idem_valid_key(const char *key, size_t len);
/* The table's hash of (key id, idempotency key). Never 0. */
uint64_t idem_hash(const char *key_id, const char *key, size_t len);

enum idem_result idem_claim(struct idem_table *t, uint64_t hash, uint64_t decision,
			    int64_t now_s, uint32_t *slot, uint64_t *first);
/* The call that claimed slot ended. */
void idem_finish(struct idem_table *t, uint32_t slot, uint64_t decision);
/* A retry takes over an entry whose first call was released (it got no
 * reply and was not charged). False if another retry got there first. */
bool idem_retake(struct idem_table *t, uint32_t slot, uint64_t first, uint64_t decision,
		 int64_t now_s);

#endif
