/*
 * tollctl_intern.h — byte strings to dense ids, for tollctl's reports.
 *
 * An intern table maps keys (text, or any bytes: a tuple of ids packed as
 * bytes works as well) to ids 0, 1, 2… in order of first sight, and keeps
 * one fixed-size value per id, zeroed when the id is made. A key is
 * copied into the table's own arena the first time it is seen, so callers
 * may pass bytes that will not outlive the call (a record in a read
 * buffer). Nothing is ever removed, and nothing moves: value and key
 * pointers stay valid until tollctl_intern_free().
 */
#ifndef TOLLGATE_TOLLCTL_INTERN_H
#define TOLLGATE_TOLLCTL_INTERN_H

#include <stddef.h>
#include <stdint.h>

struct tollctl_intern_slot;
struct tollctl_intern_chunk;

/* An id's entry in the arena: this header, the value (vsize bytes rounded
 * up to 8), then the key's bytes. */
struct tollctl_intern_entry {
	uint32_t len;           /* of the key */
	uint32_t id;
};

struct tollctl_intern_key {
	const char *p;
	uint32_t len;
};

struct tollctl_intern {
	struct tollctl_intern_slot *slots;     /* open addressing, linear probing */
	size_t mask;                           /* slots - 1 (a power of two) */
	uint32_t n;                            /* ids handed out */
	uint32_t cap;                          /* room in entries[] */
	struct tollctl_intern_entry **entries; /* by id */
	size_t vsize;                          /* value bytes, rounded up to 8 */
	struct tollctl_intern_chunk *chunks;   /* the arena: newest first */
	char *free_at;                         /* the free bytes of the newest chunk */
	size_t left;                           /* how many */
};

/* An empty table whose ids carry vsize bytes of value (0: none). 0 or
 * -ENOMEM. */
int tollctl_intern_init(struct tollctl_intern *t, size_t vsize);
void tollctl_intern_free(struct tollctl_intern *t);

/* The value of key p[0..n) (n < 2^32), made (zeroed) if the key is new,
 * and its id in *id; NULL when out of memory. With no value (vsize 0) the
 * pointer is only good for telling success from failure. */
void *tollctl_intern(struct tollctl_intern *t, const void *p, size_t n, uint32_t *id);

/*
 * The same in steps, for callers that look up many keys at once and want
 * the cache misses of one to overlap those of the others: the key's hash,
 * a hint to fetch the slot it starts from, a hint to fetch the entry that
 * slot names (it reads the slot: issue it some time after the first),
 * then the lookup itself with the hash. The hints change nothing and may
 * be skipped or given in any order.
 */
uint64_t tollctl_intern_hash(const void *p, size_t n);
void tollctl_intern_prefetch_slot(const struct tollctl_intern *t, uint64_t hash);
void tollctl_intern_prefetch_entry(const struct tollctl_intern *t, uint64_t hash);
void *tollctl_intern_hashed(struct tollctl_intern *t, uint64_t hash, const void *p, size_t n,
			    uint32_t *id);

static inline void *tollctl_intern_val(const struct tollctl_intern *t, uint32_t id)
{
	return t->entries[id] + 1;
}

static inline struct tollctl_intern_key tollctl_intern_key(const struct tollctl_intern *t,
							   uint32_t id)
{
	const struct tollctl_intern_entry *e = t->entries[id];
	return (struct tollctl_intern_key){ (const char *)(e + 1) + t->vsize, e->len };
}

#endif
