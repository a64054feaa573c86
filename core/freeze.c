/*
 * freeze.c — the kill switch's table (freeze.h): open addressing with
 * tombstones, probed by tag. Writers hold the mutex; a slot's strings are
 * written before its tag is published (release), and readers look at tags
 * only.
 */
#include "core/freeze.h"

#include <errno.h>
#include <string.h>
#include <xxhash.h>

#define TAG_EMPTY 0
#define TAG_GONE 1

static const char *const kind_names[FREEZE_KINDS] = { "run", "key", "user", "team", "org" };

const char *freeze_kind_name(enum freeze_kind k)
{
	return (unsigned)k < FREEZE_KINDS ? kind_names[k] : "?";
}

int freeze_kind_parse(const char *s, size_t len)
{
	for (int k = 0; k < FREEZE_KINDS; k++)
		if (strlen(kind_names[k]) == len && !memcmp(kind_names[k], s, len))
			return k;
	return -1;
}

static uint64_t tag_of(enum freeze_kind kind, const char *id, size_t len)
{
	uint64_t h = XXH3_64bits(id, len) & ((1ULL << 56) - 1);
	return (uint64_t)(kind + 1) << 56 | h;   /* never 0 or 1 */
}

struct freeze_table *freeze_new(void)
{
	struct freeze_table *t = aligned_alloc(CACHELINE, sizeof(*t));
	if (!t)
		return NULL;
	memset(t, 0, sizeof(*t));
	pthread_mutex_init(&t->lock, NULL);
	return t;
}

void freeze_free(struct freeze_table *t)
{
	if (!t)
		return;
	pthread_mutex_destroy(&t->lock);
	free(t);
}

bool freeze_has(const struct freeze_table *t, enum freeze_kind kind, const char *id, size_t len)
{
	if (!freeze_any(t))
		return false;
	uint64_t tag = tag_of(kind, id, len);
	uint32_t i = (uint32_t)tag & (FREEZE_SLOTS - 1);
	for (uint32_t n = 0; n < FREEZE_SLOTS; n++, i = (i + 1) & (FREEZE_SLOTS - 1)) {
		uint64_t at = atomic_load_explicit(&t->slots[i].tag, memory_order_acquire);
		if (at == tag)
			return true;
		if (at == TAG_EMPTY)
			return false;
	}
	return false;
}

/* The slot holding tag, or (when absent) where it may go; -1 if neither. */
static int find_slot(struct freeze_table *t, uint64_t tag, bool *found)
{
	uint32_t i = (uint32_t)tag & (FREEZE_SLOTS - 1);
	int free_at = -1;
	*found = false;
	for (uint32_t n = 0; n < FREEZE_SLOTS; n++, i = (i + 1) & (FREEZE_SLOTS - 1)) {
		uint64_t at = atomic_load_explicit(&t->slots[i].tag, memory_order_relaxed);
		if (at == tag) {
			*found = true;
			return (int)i;
		}
		if (at == TAG_GONE && free_at < 0)
			free_at = (int)i;
		if (at == TAG_EMPTY)
			return free_at >= 0 ? free_at : (int)i;
	}
	return free_at;
}

int freeze_set(struct freeze_table *t, enum freeze_kind kind, const char *id, size_t len,
	       const char *reason, int64_t now_s, uint64_t *seq)
{
	if ((unsigned)kind >= FREEZE_KINDS || len == 0 || len > FREEZE_ID_MAX)
		return -EINVAL;
	uint64_t tag = tag_of(kind, id, len);
	pthread_mutex_lock(&t->lock);
	bool found;
	int i = find_slot(t, tag, &found);
	int rc = found ? 0 : i < 0 ? -ENOSPC : 1;
	if (rc == 1) {
		struct freeze_slot *s = &t->slots[i];
		s->kind = (uint8_t)kind;
		memcpy(s->id, id, len);
		s->id[len] = '\0';
		snprintf(s->reason, sizeof(s->reason), "%s", reason ? reason : "");
		s->since_s = now_s;
		atomic_store_explicit(&s->tag, tag, memory_order_release);
		atomic_fetch_add_explicit(&t->count, 1, memory_order_release);
		uint64_t e = atomic_fetch_add_explicit(&t->epoch, 1, memory_order_release) + 1;
		if (seq)
			*seq = e;
	}
	pthread_mutex_unlock(&t->lock);
	return rc;
}

void freeze_seed(struct freeze_table *t, uint64_t seq)
{
	pthread_mutex_lock(&t->lock);
	if (atomic_load(&t->epoch) < seq)
		atomic_store_explicit(&t->epoch, seq, memory_order_release);
	pthread_mutex_unlock(&t->lock);
}

int freeze_clear(struct freeze_table *t, enum freeze_kind kind, const char *id, size_t len,
		 uint64_t *seq)
{
	if ((unsigned)kind >= FREEZE_KINDS || len == 0 || len > FREEZE_ID_MAX)
		return 0;
	uint64_t tag = tag_of(kind, id, len);
	pthread_mutex_lock(&t->lock);
	bool found;
	int i = find_slot(t, tag, &found);
	if (found) {
		atomic_store_explicit(&t->slots[i].tag, TAG_GONE, memory_order_release);
		atomic_fetch_sub_explicit(&t->count, 1, memory_order_release);
		uint64_t e = atomic_fetch_add_explicit(&t->epoch, 1, memory_order_release) + 1;
		if (seq)
			*seq = e;
	}
	pthread_mutex_unlock(&t->lock);
	return found;
}

void freeze_each(struct freeze_table *t,
		 void (*fn)(void *arg, const struct freeze_slot *slot), void *arg)
{
	pthread_mutex_lock(&t->lock);
	for (uint32_t i = 0; i < FREEZE_SLOTS; i++)
		if (atomic_load_explicit(&t->slots[i].tag, memory_order_relaxed) > TAG_GONE)
			fn(arg, &t->slots[i]);
	pthread_mutex_unlock(&t->lock);
}
