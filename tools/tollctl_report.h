/*
 * tollctl_report.h — `tollctl report`: spend of a ledger directory by
 * team, user, key, model, provider, task, app, env or day, east-west
 * chargebacks, cost per outcome, trajectory outliers and input:output
 * token ratios (SPEC §7), as a text table, CSV or JSON. docs/ledger.md
 * ("Reports: tollctl report") documents the command and its output.
 */
#ifndef TOLLGATE_TOLLCTL_REPORT_H
#define TOLLGATE_TOLLCTL_REPORT_H

#include <stdio.h>

/* Runs `tollctl report ARGS…` (argv[0] is "report"). Returns the exit
 * code: 0, 2 when damage was stepped over (the report covers the rest,
 * with a warning on stderr), 1 on a usage error, a directory or segment
 * that could not be read, or output that could not be written. */
int tollctl_report_main(int argc, char **argv);

/* The usage line, for tollctl's usage text. */
void tollctl_report_usage(FILE *f);

#endif
