/*
 * tollctl_ledger.h — `tollctl ledger …`: reading a ledger directory
 * directly (verify, export), never writing to it. docs/ledger.md
 * documents the commands, their exit codes and the export columns.
 */
#ifndef TOLLGATE_TOLLCTL_LEDGER_H
#define TOLLGATE_TOLLCTL_LEDGER_H

#include <stdio.h>

/* Runs `tollctl ledger ARGS…`; argv[0] is the subcommand ("verify",
 * "export"). Returns the process exit code: 0 clean, 2 damage found,
 * 1 usage error or a directory or segment that could not be read. */
int tollctl_ledger_main(int argc, char **argv);

/* The usage lines of the ledger subcommands, for tollctl's usage text. */
void tollctl_ledger_usage(FILE *f);

#endif
