/*
 * tollctl_admin.h — the commands that talk to a running tollgate's admin
 * API (tools/tollctl_admin.c): freeze, unfreeze, freezes, metrics.
 */
#ifndef TOLLGATE_TOLLCTL_ADMIN_H
#define TOLLGATE_TOLLCTL_ADMIN_H

#include <stdio.h>

/* argv[0] is the command. Exit status: 0 done, 1 refused or bad usage,
 * 2 tollgate unreachable. */
int tollctl_admin_main(int argc, char **argv);
void tollctl_admin_usage(FILE *f);
/* Whether `cmd` is one of these commands. */
int tollctl_admin_is(const char *cmd);

#endif
