/*
 * alternatives.h — cheaper models a refused call could use instead
 * (SPEC §3: capability-valid `alternatives`, X-Budget-Downgrade).
 */
#ifndef TOLLGATE_ALTERNATIVES_H
#define TOLLGATE_ALTERNATIVES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/config_types.h"
#include "core/json_scan.h"
#include "net/conn_types.h"

#define ALT_MAX CFG_MAX_ALTERNATIVES

struct alternative {
	const struct cfg_model *model;
	uint32_t max_output_tokens;    /* effective, for this model */
	int64_t estimate_usd;
};

/* What the request uses (enum model_supports bits): tools or functions,
 * a json_schema response format, images in the messages. */
uint32_t alternatives_needs(const char *body, size_t len, const struct json_top *top);

/*
 * The alternatives of ex->model (its configured list, in that order of
 * preference) that this call could use: same API format, priced, allowed
 * for the key, supporting `needs`, with a context that holds the input
 * bound and the output. Fills out[0..ALT_MAX), returns how many.
 */
int alternatives_find(const struct exchange *ex, uint32_t needs, uint64_t client_cap,
		      bool embeddings, struct alternative *out);

/* Writes them as the problem's "alternatives" JSON array; `remaining` is
 * what the tightest scope has left (fits_budget). Returns bytes (< cap). */
size_t alternatives_json(const struct alternative *alts, int n, int64_t remaining,
			 char *buf, size_t cap);

#endif
