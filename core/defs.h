/*
 * defs.h — the few macros and conventions every tollgate file shares.
 *
 * Return conventions (used everywhere, written once here):
 *   - failures are negative errno values (like io_uring's cqe->res);
 *   - I/O-shaped functions return <0 error, 0 "would block / need more",
 *     >0 bytes; "would block" is never an error;
 *   - predicates return bool.
 *
 * BUG_ON() is checked in every build; BUG_ON_HOT() only in debug/ASan builds,
 * so hot-path assertions cost nothing in release.
 */
#ifndef TOLLGATE_DEFS_H
#define TOLLGATE_DEFS_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>

#define TOLLGATE_VERSION "0.1.0"

/* A spin-wait hint: lets a sibling hyperthread run, saves power. */
static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#elif defined(__aarch64__)
	__asm__ __volatile__("yield");
#endif
}

#define likely(x)   __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)
#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define container_of(ptr, type, member) \
	((type *)((char *)(ptr) - offsetof(type, member)))
#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))
#define CACHELINE 64

#define BUG_ON(cond)                                                        \
	do {                                                                \
		if (unlikely(cond)) {                                       \
			fprintf(stderr, "BUG at %s:%d: %s\n", __FILE__,     \
				__LINE__, #cond);                           \
			abort();                                            \
		}                                                           \
	} while (0)

#if defined(__SANITIZE_ADDRESS__) || !defined(NDEBUG_HOT)
#define BUG_ON_HOT(cond) BUG_ON(cond)
#else
#define BUG_ON_HOT(cond) ((void)0)
#endif

#endif
