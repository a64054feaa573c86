/*
 * tollctl_intern.c — the intern table of tollctl's reports
 * (tollctl_intern.h).
 *
 * A report looks up several keys per ledger record (the group, the task
 * type, the run), tens of millions of times, and the run table is far
 * larger than the caches: a lookup's cost is its cache misses. So a
 * lookup touches two places, the slot and the entry. A slot holds the
 * key's full 64-bit hash and a pointer to its entry; the entry holds the
 * key's length, the value and the key bytes side by side, so the compare
 * that confirms a hit has already brought the value in. Keys are compared
 * byte for byte (a hash match alone is never trusted: this is money).
 *
 * The slot array stays at most half full and doubles past that. Entries
 * live in an arena of chunks that double from 1 MiB to 64 MiB, so
 * interning a million strings is not a million mallocs, and an entry
 * never moves.
 *
 * A big table is touched at random, one or two cache lines per 4 KiB
 * page, so on x86 every lookup would also miss the TLB, which under a
 * hypervisor costs more than the cache miss itself (a 600,000-group
 * report spent 60% of its time here). Slot arrays and chunks of 2 MiB or
 * more are therefore mapped directly and asked for transparent huge pages
 * (MADV_HUGEPAGE; a hint that the kernel may ignore).
 */
#include "tools/tollctl_intern.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <xxhash.h>

#define CHUNK_MIN (1u << 20)
#define CHUNK_MAX (64u << 20)
#define HUGE_PAGE (2u << 20)

struct tollctl_intern_slot {
	uint64_t hash;
	struct tollctl_intern_entry *e;   /* NULL: the slot is free */
};

struct tollctl_intern_chunk {
	struct tollctl_intern_chunk *next;
	size_t size;                      /* the whole chunk, this header included */
	_Alignas(8) char bytes[];
};

/* size zeroed bytes: from malloc when small, else mapped and backed by
 * huge pages where the kernel can. NULL when out of memory. */
static void *big_alloc(size_t size)
{
	if (size < HUGE_PAGE)
		return calloc(1, size);
	void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		return NULL;
	madvise(p, size, MADV_HUGEPAGE);
	return p;
}

static void big_free(void *p, size_t size)
{
	if (size < HUGE_PAGE)
		free(p);
	else if (p)
		munmap(p, size);
}

int tollctl_intern_init(struct tollctl_intern *t, size_t vsize)
{
	memset(t, 0, sizeof(*t));
	t->vsize = (vsize + 7) & ~(size_t)7;
	t->mask = 255;
	t->slots = big_alloc((t->mask + 1) * sizeof(*t->slots));
	return t->slots ? 0 : -ENOMEM;
}

void tollctl_intern_free(struct tollctl_intern *t)
{
	while (t->chunks) {
		struct tollctl_intern_chunk *c = t->chunks;
		t->chunks = c->next;
		big_free(c, c->size);
	}
	if (t->slots)
		big_free(t->slots, (t->mask + 1) * sizeof(*t->slots));
	free(t->entries);
	memset(t, 0, sizeof(*t));
}

/* size bytes (a multiple of 8) of the arena, 8-aligned, or NULL. */
static void *arena_alloc(struct tollctl_intern *t, size_t size)
{
	if (size > t->left) {
		/* each chunk twice the last, up to CHUNK_MAX */
		size_t bytes = t->chunks ? t->chunks->size * 2 : CHUNK_MIN;
		bytes = bytes > CHUNK_MAX ? CHUNK_MAX : bytes;
		bytes = bytes < sizeof(struct tollctl_intern_chunk) + size ?
			sizeof(struct tollctl_intern_chunk) + size : bytes;
		struct tollctl_intern_chunk *c = big_alloc(bytes);
		if (!c)
			return NULL;
		c->next = t->chunks;
		c->size = bytes;
		t->chunks = c;
		t->free_at = c->bytes;
		t->left = bytes - sizeof(*c);
	}
	void *at = t->free_at;
	t->free_at += size;
	t->left -= size;
	return at;
}

/* Room for one more id in entries[]. 0 or -ENOMEM. */
static int grow_ids(struct tollctl_intern *t)
{
	if (t->n < t->cap)
		return 0;
	uint32_t cap = t->cap ? t->cap * 2 : 64;
	if (cap <= t->cap)
		return -ENOMEM;              /* 2^32 ids: no report gets here */
	struct tollctl_intern_entry **v = realloc(t->entries, cap * sizeof(*v));
	if (!v)
		return -ENOMEM;
	t->entries = v;
	t->cap = cap;
	return 0;
}

/* The slot array doubled, every entry moved to its new place. 0 or
 * -ENOMEM. */
static int grow_slots(struct tollctl_intern *t)
{
	size_t mask = t->mask * 2 + 1;
	struct tollctl_intern_slot *slots = big_alloc((mask + 1) * sizeof(*slots));
	if (!slots)
		return -ENOMEM;
	for (size_t i = 0; i <= t->mask; i++) {
		if (!t->slots[i].e)
			continue;
		size_t j = t->slots[i].hash & mask;
		while (slots[j].e)
			j = (j + 1) & mask;
		slots[j] = t->slots[i];
	}
	big_free(t->slots, (t->mask + 1) * sizeof(*t->slots));
	t->slots = slots;
	t->mask = mask;
	return 0;
}

/* A new entry for p[0..n) in the free slot s; its value, or NULL. */
static void *add(struct tollctl_intern *t, struct tollctl_intern_slot *s, uint64_t hash,
		 const void *p, size_t n, uint32_t *id)
{
	size_t size = (sizeof(struct tollctl_intern_entry) + t->vsize + n + 7) & ~(size_t)7;
	struct tollctl_intern_entry *e = arena_alloc(t, size);
	if (!e || grow_ids(t))
		return NULL;
	e->len = (uint32_t)n;
	e->id = t->n++;
	memset(e + 1, 0, t->vsize);
	if (n)
		memcpy((char *)(e + 1) + t->vsize, p, n);
	t->entries[e->id] = e;
	s->hash = hash;
	s->e = e;
	if ((size_t)t->n * 2 > t->mask + 1 && grow_slots(t))
		return NULL;
	*id = e->id;
	return e + 1;
}

uint64_t tollctl_intern_hash(const void *p, size_t n)
{
	return XXH3_64bits(p, n);
}

void tollctl_intern_prefetch_slot(const struct tollctl_intern *t, uint64_t hash)
{
	__builtin_prefetch(&t->slots[hash & t->mask]);
}

/* The entry and the line after it: the value and a short key, usually. */
void tollctl_intern_prefetch_entry(const struct tollctl_intern *t, uint64_t hash)
{
	const struct tollctl_intern_slot *s = &t->slots[hash & t->mask];
	if (s->e && s->hash == hash) {
		__builtin_prefetch(s->e, 1);
		__builtin_prefetch((const char *)s->e + 64, 1);
	}
}

void *tollctl_intern(struct tollctl_intern *t, const void *p, size_t n, uint32_t *id)
{
	return tollctl_intern_hashed(t, XXH3_64bits(p, n), p, n, id);
}

void *tollctl_intern_hashed(struct tollctl_intern *t, uint64_t hash, const void *p, size_t n,
			    uint32_t *id)
{
	for (size_t i = hash & t->mask;; i = (i + 1) & t->mask) {
		struct tollctl_intern_slot *s = &t->slots[i];
		if (!s->e)
			return add(t, s, hash, p, n, id);
		if (s->hash != hash || s->e->len != n ||
		    memcmp((const char *)(s->e + 1) + t->vsize, p, n))
			continue;
		*id = s->e->id;
		return s->e + 1;
	}
}
