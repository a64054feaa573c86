/*
 * alternatives.c — which configured alternatives can stand in for a model
 * on this call (alternatives.h).
 *
 * An alternative is offered, or switched to on downgrade, only if the call
 * would work on it: the same API shape (the agent's route stays valid),
 * every capability the request uses, room in its context for the input
 * bound plus the output, a price (unpriced is never "cheaper") and the
 * key's permission. Its estimate uses the same bounds as the original.
 */
#include "net/alternatives.h"

#include <stdio.h>
#include <string.h>

#include "core/config.h"
#include "core/money.h"
#include "core/pricing.h"

/* Whether needle's character c matches at p: as itself or as the JSON
 * escape \u00XX a provider would decode to it. Returns the bytes it took. */
static size_t match_char(const char *p, size_t left, char c)
{
	static const char hex[] = "0123456789abcdef";
	if (left >= 1 && *p == c)
		return 1;
	if (left >= 6 && p[0] == '\\' && p[1] == 'u' && p[2] == '0' && p[3] == '0' &&
	    (p[4] | 0x20) == hex[(unsigned char)c >> 4] && (p[5] | 0x20) == hex[c & 15])
		return 6;
	return 0;
}

/* Whether body holds needle, any of its characters possibly escaped:
 * capabilities must be seen as the provider will see them. Runs only on
 * a refusal, so a plain scan is enough. */
static bool contains(const char *body, size_t len, const char *needle)
{
	for (size_t i = 0; i < len; i++) {
		size_t at = i;
		const char *n = needle;
		for (; *n; n++) {
			size_t took = match_char(body + at, len - at, *n);
			if (!took)
				break;
			at += took;
		}
		if (!*n)
			return true;
	}
	return false;
}

uint32_t alternatives_needs(const char *body, size_t len, const struct json_top *top)
{
	uint32_t needs = 0;
	if (top->tools.present || top->functions.present)
		needs |= SUPPORTS_TOOLS;
	if (top->response_format.present &&
	    contains(body + top->response_format.off, top->response_format.len, "json_schema"))
		needs |= SUPPORTS_JSON_SCHEMA;
	/* OpenAI "image_url" parts, Anthropic {"type": "image"} blocks; a
	 * false positive only narrows the choice */
	if (contains(body, len, "\"image_url\"") || contains(body, len, "\"image\""))
		needs |= SUPPORTS_VISION;
	return needs;
}

static bool usable(const struct exchange *ex, const struct cfg_model *alt, uint32_t needs,
		   const struct estimate *e)
{
	return alt != ex->model && alt->provider->format == ex->model->provider->format &&
	       pricing_known(alt) && config_key_allows(ex->key, alt) &&
	       (alt->supports & needs) == needs &&
	       (!alt->context_tokens || e->input_tokens + e->max_output_tokens <= alt->context_tokens);
}

int alternatives_find(const struct exchange *ex, uint32_t needs, uint64_t client_cap,
		      bool embeddings, struct alternative *out)
{
	int n = 0;
	for (uint32_t i = 0; i < ex->model->n_alternatives && n < ALT_MAX; i++) {
		const char *name = ex->model->alternatives[i];
		const struct cfg_model *alt = config_find_model(ex->cfg, name, strlen(name));
		if (!alt)
			continue;
		uint32_t max_out = embeddings ? 0 :
			pricing_effective_max_output(client_cap, 0, alt->max_output_tokens);
		if (!embeddings && !max_out)
			continue;
		struct estimate e;
		pricing_estimate(alt, ex->body_len, max_out, &e);
		if (!usable(ex, alt, needs, &e))
			continue;
		out[n++] = (struct alternative){ alt, max_out, e.usd };
	}
	return n;
}

size_t alternatives_json(const struct alternative *alts, int n, int64_t remaining,
			 char *buf, size_t cap)
{
	static const char *const caps[] = { "tools", "json_schema", "vision" };
	size_t len = (size_t)snprintf(buf, cap, "[");
	for (int i = 0; i < n && len + 400 < cap; i++) {
		const struct cfg_model *m = alts[i].model;
		char name[160], estimate[32], supports[64] = "";
		json_escape(name, sizeof(name), m->name);
		money_format(alts[i].estimate_usd, estimate, sizeof(estimate));
		for (int c = 0; c < 3; c++)
			if (m->supports & (1u << c))
				snprintf(supports + strlen(supports), sizeof(supports) - strlen(supports),
					 "%s\"%s\"", supports[0] ? "," : "", caps[c]);
		len += (size_t)snprintf(buf + len, cap - len,
			"%s{\"model\":\"%s\",\"estimate_usd\":\"%s\",\"fits_budget\":%s,"
			"\"supports\":[%s],\"context_tokens\":%u}",
			i ? "," : "", name, estimate,
			alts[i].estimate_usd <= remaining ? "true" : "false", supports,
			m->context_tokens);
	}
	len += (size_t)snprintf(buf + len, cap - len, "]");
	return len < cap ? len : cap - 1;
}
