/*
 * arena.h — bump allocator for data that lives exactly as long as its owner
 * (a config generation). One free releases everything.
 */
#ifndef TOLLGATE_ARENA_H
#define TOLLGATE_ARENA_H

#include <stddef.h>

struct arena;

struct arena *arena_new(void);
void arena_free(struct arena *a);
/* Zeroed, 16-byte aligned; aborts on out-of-memory (config load only). */
void *arena_alloc(struct arena *a, size_t size);
char *arena_strndup(struct arena *a, const char *s, size_t len);

#endif
