/*
 * check.h — the unit tests' only framework: CHECK() counts, main returns.
 * A test binary exits 0 when every check passed, 1 otherwise, 77 to skip.
 */
#ifndef TOLLGATE_CHECK_H
#define TOLLGATE_CHECK_H

#include <stdio.h>

static int checks_run, checks_failed;

#define CHECK(cond)                                                          \
	do {                                                                 \
		checks_run++;                                                \
		if (!(cond)) {                                               \
			checks_failed++;                                     \
			fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, \
				__LINE__, #cond);                            \
		}                                                            \
	} while (0)

static inline int check_report(const char *name)
{
	printf("%s: %d checks, %d failed\n", name, checks_run, checks_failed);
	return checks_failed ? 1 : 0;
}

#endif
