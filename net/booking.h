/*
 * booking.h — what a budgeted call writes to the ledger (ledger/), and
 * holding the end of its reply until the ledger has it.
 *
 * A call that is allowed books a `reserve` record as it is forwarded (and
 * again each time a stream lease grows), so that a crash mid-call leaves
 * its reservation on disk, to be charged at start-up (ledger/replay.c).
 * When it settles it books `commit` or `release`; a refused call books
 * `refuse`. The last send of a committed reply is posted only once its
 * record is written (SPEC §7): an agent that saw its reply end is in the
 * ledger, whenever the process dies.
 */
#ifndef TOLLGATE_BOOKING_H
#define TOLLGATE_BOOKING_H

#include <stdbool.h>

#include "net/conn_types.h"

/* False when the shard's ledger cannot take records (broken or full):
 * budgeted calls are then refused (fail closed). True with no ledger. */
bool booking_ready(const struct exchange *ex);
/* The reservation just made (or grown): false if it could not be booked. */
bool booking_reserve(struct exchange *ex);
/* The settled (or refused) decision; sets ex->ledger_hold when the end of
 * the reply must wait for the write. */
void booking_settle(struct exchange *ex);
/* A grant's record (grant_open, grant_close) booked by shard s: usd is
 * the amount opened, or what the grant spent. false: not booked (logged). */
struct grant;
bool booking_grant(struct shard *s, const struct config *cfg, const struct grant *g,
		   uint8_t kind, int64_t usd);
/* An outcome attached to run (POST /v1/budget/outcomes); sets
 * ex->ledger_hold. false: not booked (logged). */
bool booking_outcome(struct exchange *ex, const struct run *run, const char *outcome);
/* Called with the reply's last send queued but not posted: true when it
 * is held until the ledger write completes (then posted, or the agent's
 * connection aborted if the write failed). */
bool booking_hold_reply_end(struct exchange *ex);

/* Books a freeze (or unfreeze) of kind:id with its reason and its place
 * in the order of all freezes (`reserved` holds it); the reply's end waits
 * for the write. False without a ledger or when it cannot be
 * buffered (the freeze holds, but not past a restart). */
enum freeze_kind;
bool booking_freeze(struct exchange *ex, enum freeze_kind kind, const char *id,
		    const char *reason, bool frozen, uint64_t seq);

#endif
