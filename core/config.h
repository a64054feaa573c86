/*
 * config.h — load, check and share configuration generations.
 */
#ifndef TOLLGATE_CONFIG_H
#define TOLLGATE_CONFIG_H

#include <stdio.h>

#include "core/config_types.h"

/*
 * Loads and validates `path`. On success returns a generation holding one
 * reference. On failure returns NULL after printing one "file:line: message"
 * line per problem to `errs` (all problems, not just the first).
 */
struct config *config_load(const char *path, FILE *errs);

void config_ref(struct config *cfg);
void config_unref(struct config *cfg);   /* frees at zero */

/* The model named exactly name[0..len), or NULL. */
const struct cfg_model *config_find_model(const struct config *cfg,
					  const char *name, size_t len);

/* The key whose secret hashes to sha256[0..32), or NULL. */
const struct cfg_key *config_find_key(const struct config *cfg, const unsigned char *sha256);

/* Whether key k may call model m (its `models` list; "*" or empty: all). */
bool config_key_allows(const struct cfg_key *k, const struct cfg_model *m);

/* "hour", "hard_gate", ...: the config names of enum budget_window and
 * enum budget_mode. */
const char *config_window_name(uint8_t window);
const char *config_mode_name(uint8_t mode);
/* How far past its limit a budget in this mode may reserve (budget.h). */
int64_t config_budget_slack(uint8_t mode, int64_t soft_margin);

/* Parses "host:port" / "[v6]:port"; returns 0 or -EINVAL. Resolves names. */
int config_parse_addr(const char *text, struct cfg_addr *out);

#endif
