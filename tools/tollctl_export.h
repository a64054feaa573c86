/*
 * tollctl_export.h — `tollctl ledger export`: every record of a ledger
 * directory but the segment records, in ledger order, as CSV or JSON
 * Lines on standard output. docs/ledger.md ("Export columns") is the
 * contract for the columns.
 */
#ifndef TOLLGATE_TOLLCTL_EXPORT_H
#define TOLLGATE_TOLLCTL_EXPORT_H

#include <stdbool.h>

#include "tools/tollctl_time.h"

/* Exports the records of dir in range (JSON Lines if jsonl, else CSV).
 * Returns the exit code: 0, 2 when damage was stepped over (warned on
 * stderr), 1 when the directory, a segment or the output failed. */
int tollctl_export(const char *dir, bool jsonl, const struct tollctl_range *range);

#endif
