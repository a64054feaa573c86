/*
 * tags.h — X-Budget-Tags: attribution pairs an agent attaches to a call
 * ("app=support,env=prod,task=refund"), kept with its decision and, later,
 * its ledger records.
 */
#ifndef TOLLGATE_TAGS_H
#define TOLLGATE_TAGS_H

#include <stdbool.h>
#include <stddef.h>

#define TAGS_MAX_BYTES 256
#define TAGS_MAX_PAIRS 16

/*
 * True when s[0..len) is 1 to TAGS_MAX_PAIRS comma-separated k=v pairs
 * (a space may follow a comma), at most TAGS_MAX_BYTES in all, keys
 * [a-z0-9_.-]{1,32} and each key once, values [A-Za-z0-9_.:/@+-]{1,64}.
 * Anything else is refused, not trimmed: tags feed reports, and a tag
 * that silently meant something else would misattribute money.
 */
bool tags_valid(const char *s, size_t len);

#endif
