/*
 * config.c — the YAML configuration loader (SPEC §2).
 *
 * libfyaml builds the document; this file walks it with small tables, one
 * row per key (name, kind, offset, bounds), in the spirit of nginx's
 * directive tables. Every mapping is checked against its table, so an
 * unknown or misspelt key is an error with its file:line, never ignored.
 * Errors are collected, not fatal one by one, so `tollgate -t` shows them
 * all. The result is an immutable generation (config_types.h).
 */
#include "core/config.h"

#include <errno.h>
#include <libfyaml.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <xxhash.h>

#include "core/arena.h"
#include "core/defs.h"
#include "core/log.h"
#include "tls/tls.h"

/* Loader state for one file. */
struct loader {
	const char *path;
	FILE *errs;
	int n_errors;
	struct config *cfg;
	struct arena *arena;
	int prices_version_line;
};

static int node_line(struct fy_node *n)
{
	struct fy_token *t = n ? fy_node_get_scalar_token(n) : NULL;
	const struct fy_mark *m = t ? fy_token_start_mark(t) : NULL;
	return m ? m->line + 1 : 0;
}

static void __attribute__((format(printf, 3, 4)))
load_error(struct loader *ld, int line, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fprintf(ld->errs, "%s:%d: ", ld->path, line);
	vfprintf(ld->errs, fmt, ap);
	fputc('\n', ld->errs);
	va_end(ap);
	ld->n_errors++;
}

/* ---- scalar readers: each reports its own error and returns -EINVAL ---- */

static const char *scalar(struct loader *ld, struct fy_node *key,
			  struct fy_node *val, size_t *len)
{
	if (!val || !fy_node_is_scalar(val)) {
		load_error(ld, node_line(key), "%s: expected a scalar value",
			   fy_node_get_scalar0(key));
		return NULL;
	}
	return fy_node_get_scalar(val, len);
}

static int read_str(struct loader *ld, struct fy_node *key, struct fy_node *val,
		    const char **out)
{
	size_t len;
	const char *s = scalar(ld, key, val, &len);
	if (!s)
		return -EINVAL;
	if (len == 0) {
		load_error(ld, node_line(key), "%s: must not be empty",
			   fy_node_get_scalar0(key));
		return -EINVAL;
	}
	*out = arena_strndup(ld->arena, s, len);
	return 0;
}

static int read_u64(struct loader *ld, struct fy_node *key, struct fy_node *val,
		    uint64_t min, uint64_t max, uint64_t *out)
{
	size_t len;
	const char *s = scalar(ld, key, val, &len);
	if (!s)
		return -EINVAL;
	uint64_t v = 0;
	bool ok = len > 0 && len <= 19;
	for (size_t i = 0; ok && i < len; i++) {
		if (s[i] < '0' || s[i] > '9')
			ok = false;
		else
			v = v * 10 + (uint64_t)(s[i] - '0');
	}
	if (!ok || v < min || v > max) {
		load_error(ld, node_line(key),
			   "%s: expected an integer in [%llu, %llu], got '%.*s'",
			   fy_node_get_scalar0(key), (unsigned long long)min,
			   (unsigned long long)max, (int)len, s);
		return -EINVAL;
	}
	*out = v;
	return 0;
}

static int read_bool(struct loader *ld, struct fy_node *key, struct fy_node *val,
		     bool *out)
{
	size_t len;
	const char *s = scalar(ld, key, val, &len);
	if (!s)
		return -EINVAL;
	if (len == 4 && !strncmp(s, "true", 4))
		*out = true;
	else if (len == 5 && !strncmp(s, "false", 5))
		*out = false;
	else {
		load_error(ld, node_line(key), "%s: expected true or false",
			   fy_node_get_scalar0(key));
		return -EINVAL;
	}
	return 0;
}

static int read_money(struct loader *ld, struct fy_node *key,
		      struct fy_node *val, usd_micros *out)
{
	size_t len;
	const char *s = scalar(ld, key, val, &len);
	if (!s)
		return -EINVAL;
	int rc = money_parse(s, len, out);
	if (rc) {
		load_error(ld, node_line(key),
			   "%s: '%.*s' is not a USD amount exact to the micro-dollar",
			   fy_node_get_scalar0(key), (int)len, s);
		return rc;
	}
	return 0;
}

/* ---- table-driven mappings ---- */

enum field_kind { F_STR, F_U32, F_U64, F_BOOL, F_MONEY, F_CUSTOM };

struct field;
typedef int (*field_fn)(struct loader *ld, struct fy_node *key,
			struct fy_node *val, void *obj);

/* One row per accepted key of a mapping. */
struct field {
	const char *name;
	enum field_kind kind;
	size_t offset;
	uint64_t min, max;    /* F_U32 / F_U64 bounds */
	field_fn custom;      /* F_CUSTOM */
};

static int read_field(struct loader *ld, const struct field *f,
		      struct fy_node *key, struct fy_node *val, void *obj)
{
	char *p = (char *)obj + f->offset;
	uint64_t v;
	switch (f->kind) {
	case F_STR:
		return read_str(ld, key, val, (const char **)p);
	case F_U32:
		if (read_u64(ld, key, val, f->min, f->max, &v))
			return -EINVAL;
		*(uint32_t *)p = (uint32_t)v;
		return 0;
	case F_U64:
		if (read_u64(ld, key, val, f->min, f->max, &v))
			return -EINVAL;
		*(uint64_t *)p = v;
		return 0;
	case F_BOOL:
		return read_bool(ld, key, val, (bool *)p);
	case F_MONEY:
		return read_money(ld, key, val, (usd_micros *)p);
	case F_CUSTOM:
		return f->custom(ld, key, val, obj);
	}
	return -EINVAL;
}

/*
 * Applies `table` to the mapping `map`: every key must have a row. `what`
 * names the mapping in errors. Returns 0 or -EINVAL (errors reported).
 */
static int read_mapping(struct loader *ld, struct fy_node *owner_key,
			struct fy_node *map, const struct field *table,
			size_t n_rows, void *obj, const char *what)
{
	if (!map || !fy_node_is_mapping(map)) {
		load_error(ld, node_line(owner_key), "%s: expected a mapping", what);
		return -EINVAL;
	}
	int rc = 0;
	void *it = NULL;
	struct fy_node_pair *pair;
	while ((pair = fy_node_mapping_iterate(map, &it))) {
		struct fy_node *key = fy_node_pair_key(pair);
		struct fy_node *val = fy_node_pair_value(pair);
		const char *name = fy_node_get_scalar0(key);
		const struct field *f = NULL;
		for (size_t i = 0; name && i < n_rows; i++)
			if (!strcmp(table[i].name, name))
				f = &table[i];
		if (!f) {
			load_error(ld, node_line(key), "%s: unknown key '%s'", what,
				   name ? name : "?");
			rc = -EINVAL;
			continue;
		}
		if (read_field(ld, f, key, val, obj))
			rc = -EINVAL;
	}
	return rc;
}

#define ROW(n, k, type, member, lo, hi) \
	{ n, k, offsetof(type, member), lo, hi, NULL }
#define CUSTOM(n, fn) { n, F_CUSTOM, 0, 0, 0, fn }

/* ---- addresses ---- */

int config_parse_addr(const char *text, struct cfg_addr *out)
{
	const char *colon = strrchr(text, ':');
	if (!colon || colon == text || !colon[1])
		return -EINVAL;
	char host[256];
	size_t hlen = (size_t)(colon - text);
	if (text[0] == '[') {
		if (hlen < 3 || text[hlen - 1] != ']')
			return -EINVAL;
		text++;
		hlen -= 2;
	}
	if (hlen >= sizeof(host))
		return -EINVAL;
	memcpy(host, text, hlen);
	host[hlen] = '\0';
	char *end;
	long port = strtol(colon + 1, &end, 10);
	if (*end || port < 1 || port > 65535)
		return -EINVAL;
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM,
				  .ai_flags = AI_NUMERICSERV };
	struct addrinfo *res = NULL;
	if (getaddrinfo(host, colon + 1, &hints, &res) || !res)
		return -EINVAL;
	memcpy(&out->sa, res->ai_addr, res->ai_addrlen);
	out->salen = res->ai_addrlen;
	freeaddrinfo(res);
	return 0;
}

static int read_addr(struct loader *ld, struct fy_node *key, struct fy_node *val,
		     struct cfg_addr *out)
{
	const char *text;
	if (read_str(ld, key, val, &text))
		return -EINVAL;
	if (config_parse_addr(text, out)) {
		load_error(ld, node_line(key),
			   "%s: '%s' is not a host:port address",
			   fy_node_get_scalar0(key), text);
		return -EINVAL;
	}
	out->text = text;
	return 0;
}

/* ---- files the config names (TLS certificates, keys, CA bundles) ---- */

#define PEM_MAX_BYTES (4u << 20)

/* Reads `path` (relative: to the config file's directory) into the arena,
 * NUL-terminated; *len counts the NUL. */
static int read_pem(struct loader *ld, int line, const char *path,
		    const char **out, size_t *len)
{
	char full[4096];
	const char *slash = strrchr(ld->path, '/');
	if (path[0] != '/' && slash)
		snprintf(full, sizeof(full), "%.*s/%s", (int)(slash - ld->path), ld->path, path);
	else
		snprintf(full, sizeof(full), "%s", path);
	FILE *f = fopen(full, "rb");
	if (!f) {
		load_error(ld, line, "cannot open %s: %s", full, strerror(errno));
		return -EINVAL;
	}
	struct stat st;
	if (fstat(fileno(f), &st) || !S_ISREG(st.st_mode)) {
		/* never block on a fifo or read a device */
		load_error(ld, line, "%s: not a regular file", full);
		fclose(f);
		return -EINVAL;
	}
	char *buf = malloc(PEM_MAX_BYTES + 1);
	size_t n = buf ? fread(buf, 1, PEM_MAX_BYTES + 1, f) : 0;
	bool bad = !buf || ferror(f) || n > PEM_MAX_BYTES || n == 0;
	fclose(f);
	if (bad) {
		load_error(ld, line, "%s: %s", full, !buf ? "out of memory" :
			   n > PEM_MAX_BYTES ? "larger than 4 MiB" : "empty or unreadable");
		free(buf);
		return -EINVAL;
	}
	*out = arena_strndup(ld->arena, buf, n);   /* adds the NUL */
	*len = n + 1;
	free(buf);
	return 0;
}

/* An https provider: its CA bundle, read and checked now. */
static int provider_tls(struct loader *ld, struct cfg_provider *p, const char *what)
{
	if (p->insecure_skip_verify) {
		log_warn("%s: insecure_skip_verify is set: the provider's certificate "
			 "and name are NOT checked", what);
		return 0;
	}
	const char *ca = p->ca_file ? p->ca_file : TLS_SYSTEM_CA;
	if (read_pem(ld, p->line, ca, &p->ca_pem, &p->ca_len))
		return -EINVAL;
	char err[256];
	if (tls_check_ca_pem(p->ca_pem, p->ca_len, err, sizeof(err))) {
		load_error(ld, p->line, "%s: ca_file %s: %s", what, ca, err);
		return -EINVAL;
	}
	return 0;
}

/* ---- listen ---- */

static int listen_addr(struct loader *ld, struct fy_node *k, struct fy_node *v,
		       void *obj)
{
	return read_addr(ld, k, v, &((struct cfg_listen *)obj)->addr);
}

static const struct field tls_fields[] = {
	ROW("cert", F_STR, struct cfg_listen, tls_cert, 0, 0),
	ROW("key", F_STR, struct cfg_listen, tls_key, 0, 0),
};

static int listen_tls(struct loader *ld, struct fy_node *k, struct fy_node *v,
		      void *obj)
{
	struct cfg_listen *l = obj;
	if (read_mapping(ld, k, v, tls_fields, ARRAY_SIZE(tls_fields), obj,
			 "listen.tls"))
		return -EINVAL;
	if (!l->tls_cert || !l->tls_key) {
		load_error(ld, node_line(k), "listen.tls: needs both cert and key");
		return -EINVAL;
	}
	char err[256];
	if (read_pem(ld, node_line(k), l->tls_cert, &l->tls_cert_pem, &l->tls_cert_len) ||
	    read_pem(ld, node_line(k), l->tls_key, &l->tls_key_pem, &l->tls_key_len))
		return -EINVAL;
	if (tls_check_server_pem(l->tls_cert_pem, l->tls_cert_len, l->tls_key_pem,
				 l->tls_key_len, err, sizeof(err))) {
		load_error(ld, node_line(k), "listen.tls (cert %s, key %s): %s", l->tls_cert,
			   l->tls_key, err);
		return -EINVAL;
	}
	return 0;
}

static const struct field listen_fields[] = {
	CUSTOM("addr", listen_addr),
	CUSTOM("tls", listen_tls),
};

static int section_listen(struct loader *ld, struct fy_node *k,
			  struct fy_node *v, void *obj)
{
	if (!v || !fy_node_is_sequence(v) || fy_node_sequence_item_count(v) < 1) {
		load_error(ld, node_line(k), "listen: expected a non-empty list");
		return -EINVAL;
	}
	struct config *cfg = ld->cfg;
	int n = fy_node_sequence_item_count(v);
	cfg->listen = arena_alloc(ld->arena, sizeof(*cfg->listen) * (size_t)n);
	int rc = 0;
	void *it = NULL;
	struct fy_node *item;
	while ((item = fy_node_sequence_iterate(v, &it))) {
		struct cfg_listen *l = &cfg->listen[cfg->n_listen++];
		l->line = node_line(k);
		if (read_mapping(ld, k, item, listen_fields,
				 ARRAY_SIZE(listen_fields), l, "listen[]"))
			rc = -EINVAL;
		else if (!l->addr.text) {
			load_error(ld, node_line(k), "listen[]: addr is required");
			rc = -EINVAL;
		}
	}
	return rc;
}

/* ---- admin ---- */

static int admin_addr(struct loader *ld, struct fy_node *k, struct fy_node *v,
		      void *obj)
{
	struct config *cfg = obj;
	cfg->has_admin = true;
	return read_addr(ld, k, v, &cfg->admin_addr);
}

static const struct field admin_fields[] = {
	CUSTOM("addr", admin_addr),
	ROW("token_env", F_STR, struct config, admin_token_env, 0, 0),
};

#define ADMIN_TOKEN_MIN 16

static int section_admin(struct loader *ld, struct fy_node *k,
			 struct fy_node *v, void *obj)
{
	struct config *cfg = ld->cfg;
	if (read_mapping(ld, k, v, admin_fields, ARRAY_SIZE(admin_fields), cfg, "admin"))
		return -EINVAL;
	if (!cfg->has_admin || !cfg->admin_token_env) {
		load_error(ld, node_line(k), "admin: needs addr and token_env");
		return -EINVAL;
	}
	/* no token, no admin API: it can freeze every budget */
	const char *token = getenv(cfg->admin_token_env);
	if (!token || strlen(token) < ADMIN_TOKEN_MIN) {
		load_error(ld, node_line(k), "admin.token_env: $%s must hold a token of at least "
			   "%d characters", cfg->admin_token_env, ADMIN_TOKEN_MIN);
		return -EINVAL;
	}
	cfg->admin_token = arena_strndup(ld->arena, token, strlen(token));
	return 0;
}

/* ---- workers ---- */

static int section_workers(struct loader *ld, struct fy_node *k,
			   struct fy_node *v, void *obj)
{
	size_t len;
	const char *s = scalar(ld, k, v, &len);
	if (!s)
		return -EINVAL;
	if (len == 4 && !strncmp(s, "auto", 4)) {
		ld->cfg->workers = 0;
		return 0;
	}
	uint64_t n;
	if (read_u64(ld, k, v, 1, 256, &n))
		return -EINVAL;
	ld->cfg->workers = (int)n;
	return 0;
}

/* ---- limits ---- */

static const struct field limits_fields[] = {
	ROW("max_header_bytes", F_U32, struct cfg_limits, max_header_bytes, 1024, 1 << 20),
	ROW("max_body_bytes", F_U64, struct cfg_limits, max_body_bytes, 0, 1ULL << 32),
	ROW("header_timeout_ms", F_U32, struct cfg_limits, header_timeout_ms, 100, 3600000),
	ROW("body_timeout_ms", F_U32, struct cfg_limits, body_timeout_ms, 100, 3600000),
	ROW("idle_timeout_ms", F_U32, struct cfg_limits, idle_timeout_ms, 100, 86400000),
	ROW("send_timeout_ms", F_U32, struct cfg_limits, send_timeout_ms, 100, 3600000),
	ROW("max_connections", F_U32, struct cfg_limits, max_connections, 16, 1000000),
	ROW("max_requests", F_U32, struct cfg_limits, max_requests, 16, 1000000),
	ROW("reservation_ttl_ms", F_U32, struct cfg_limits, reservation_ttl_ms, 1000, 86400000),
	ROW("handshake_timeout_ms", F_U32, struct cfg_limits, handshake_timeout_ms, 100, 600000),
};

static int section_limits(struct loader *ld, struct fy_node *k,
			  struct fy_node *v, void *obj)
{
	return read_mapping(ld, k, v, limits_fields, ARRAY_SIZE(limits_fields),
			    &ld->cfg->limits, "limits");
}

/* ---- providers ---- */

/* Splits "http[s]://host[:port][/path]" into the provider's fields. */
static int parse_base_url(struct loader *ld, struct cfg_provider *p)
{
	const char *u = p->base_url, *rest;
	if (!strncmp(u, "http://", 7)) {
		rest = u + 7;
		p->port = 80;
	} else if (!strncmp(u, "https://", 8)) {
		rest = u + 8;
		p->port = 443;
		p->tls = true;
	} else {
		return -EINVAL;
	}
	size_t hostport_len = strcspn(rest, "/");
	const char *path = rest + hostport_len;
	size_t path_len = strlen(path);
	while (path_len && path[path_len - 1] == '/')
		path_len--;
	/* "[v6]:port": the port colon is the one after the closing bracket. */
	const char *host_end = rest;
	if (rest[0] == '[') {
		host_end = memchr(rest, ']', hostport_len);
		if (!host_end)
			return -EINVAL;
	}
	const char *colon = memchr(host_end, ':', hostport_len - (size_t)(host_end - rest));
	size_t host_len = colon ? (size_t)(colon - rest) : hostport_len;
	if (host_len == 0)
		return -EINVAL;
	if (colon) {
		char *end;
		long port = strtol(colon + 1, &end, 10);
		if (end != rest + hostport_len || port < 1 || port > 65535)
			return -EINVAL;
		p->port = (uint16_t)port;
	}
	p->host = arena_strndup(ld->arena, rest, host_len);
	p->path_prefix = arena_strndup(ld->arena, path, path_len);
	p->path_prefix_len = (uint32_t)path_len;

	char addr[300];
	snprintf(addr, sizeof(addr), "%s:%u", p->host, p->port);
	if (config_parse_addr(addr, &p->addr))
		return -EHOSTUNREACH;
	p->addr.text = arena_strndup(ld->arena, addr, strlen(addr));
	return 0;
}

static int provider_format(struct loader *ld, struct fy_node *k,
			   struct fy_node *v, void *obj)
{
	size_t len;
	const char *s = scalar(ld, k, v, &len);
	if (!s)
		return -EINVAL;
	struct cfg_provider *p = obj;
	if (len == 6 && !strncmp(s, "openai", 6))
		p->format = FORMAT_OPENAI;
	else if (len == 9 && !strncmp(s, "anthropic", 9))
		p->format = FORMAT_ANTHROPIC;
	else {
		load_error(ld, node_line(k), "format: expected openai or anthropic");
		return -EINVAL;
	}
	return 0;
}

static const struct field provider_fields[] = {
	ROW("base_url", F_STR, struct cfg_provider, base_url, 0, 0),
	CUSTOM("format", provider_format),
	ROW("api_key_env", F_STR, struct cfg_provider, api_key_env, 0, 0),
	ROW("timeout_ms", F_U32, struct cfg_provider, timeout_ms, 100, 3600000),
	ROW("connect_timeout_ms", F_U32, struct cfg_provider, connect_timeout_ms, 10, 600000),
	ROW("idle_timeout_ms", F_U32, struct cfg_provider, idle_timeout_ms, 100, 3600000),
	ROW("max_idle_conns", F_U32, struct cfg_provider, max_idle_conns, 0, 100000),
	ROW("ca_file", F_STR, struct cfg_provider, ca_file, 0, 0),
	ROW("insecure_skip_verify", F_BOOL, struct cfg_provider, insecure_skip_verify, 0, 0),
};

/* A mapping key that names something: a plain scalar, else an error. */
static const char *name_of(struct loader *ld, struct fy_node *k, const char *section)
{
	const char *name = fy_node_get_scalar0(k);
	if (!name)
		load_error(ld, node_line(k), "%s: names must be plain strings", section);
	return name;
}

static int read_provider(struct loader *ld, struct fy_node *k,
			 struct fy_node *v, struct cfg_provider *p)
{
	const char *name = name_of(ld, k, "providers");
	if (!name)
		return -EINVAL;
	p->name = arena_strndup(ld->arena, name, strlen(name));
	p->line = node_line(k);
	p->connect_timeout_ms = 5000;
	p->timeout_ms = 60000;
	p->idle_timeout_ms = 60000;
	p->max_idle_conns = 256;
	char what[300];
	snprintf(what, sizeof(what), "providers.%s", p->name);
	if (read_mapping(ld, k, v, provider_fields, ARRAY_SIZE(provider_fields),
			 p, what))
		return -EINVAL;
	if (!p->base_url) {
		load_error(ld, p->line, "%s: base_url is required", what);
		return -EINVAL;
	}
	int rc = parse_base_url(ld, p);
	if (rc == -EHOSTUNREACH) {
		load_error(ld, p->line, "%s: cannot resolve host of '%s'", what,
			   p->base_url);
		return rc;
	}
	if (rc) {
		load_error(ld, p->line, "%s: base_url '%s' is not http(s)://host[:port][/path]",
			   what, p->base_url);
		return rc;
	}
	if (p->tls && provider_tls(ld, p, what))
		return -EINVAL;
	if (p->api_key_env) {
		const char *key = getenv(p->api_key_env);
		if (key && *key)
			p->api_key = arena_strndup(ld->arena, key, strlen(key));
	}
	return 0;
}

static int section_providers(struct loader *ld, struct fy_node *k,
			     struct fy_node *v, void *obj)
{
	if (!v || !fy_node_is_mapping(v)) {
		load_error(ld, node_line(k), "providers: expected a mapping of name -> provider");
		return -EINVAL;
	}
	struct config *cfg = ld->cfg;
	int n = fy_node_mapping_item_count(v);
	cfg->providers = arena_alloc(ld->arena, sizeof(*cfg->providers) * (size_t)(n ? n : 1));
	int rc = 0;
	void *it = NULL;
	struct fy_node_pair *pair;
	while ((pair = fy_node_mapping_iterate(v, &it))) {
		struct cfg_provider *p = &cfg->providers[cfg->n_providers];
		p->index = (int)cfg->n_providers++;
		if (read_provider(ld, fy_node_pair_key(pair), fy_node_pair_value(pair), p))
			rc = -EINVAL;
	}
	return rc;
}

/* ---- models ---- */

static int read_str_list(struct loader *ld, struct fy_node *k, struct fy_node *v,
			 const char ***out, uint32_t *n_out)
{
	if (!v || !fy_node_is_sequence(v)) {
		load_error(ld, node_line(k), "%s: expected a list", fy_node_get_scalar0(k));
		return -EINVAL;
	}
	int n = fy_node_sequence_item_count(v);
	const char **list = arena_alloc(ld->arena, sizeof(*list) * (size_t)(n ? n : 1));
	uint32_t count = 0;
	void *it = NULL;
	struct fy_node *item;
	while ((item = fy_node_sequence_iterate(v, &it))) {
		if (read_str(ld, k, item, &list[count]))
			return -EINVAL;
		count++;
	}
	*out = list;
	*n_out = count;
	return 0;
}

static int model_supports(struct loader *ld, struct fy_node *k,
			  struct fy_node *v, void *obj)
{
	struct cfg_model *m = obj;
	const char **names;
	uint32_t n;
	if (read_str_list(ld, k, v, &names, &n))
		return -EINVAL;
	static const struct { const char *name; uint32_t bit; } caps[] = {
		{ "tools", SUPPORTS_TOOLS },
		{ "json_schema", SUPPORTS_JSON_SCHEMA },
		{ "vision", SUPPORTS_VISION },
	};
	for (uint32_t i = 0; i < n; i++) {
		uint32_t bit = 0;
		for (size_t c = 0; c < ARRAY_SIZE(caps); c++)
			if (!strcmp(names[i], caps[c].name))
				bit = caps[c].bit;
		if (!bit) {
			load_error(ld, node_line(k),
				   "supports: unknown capability '%s' (tools, json_schema, vision)",
				   names[i]);
			return -EINVAL;
		}
		m->supports |= bit;
	}
	return 0;
}

static int model_alternatives(struct loader *ld, struct fy_node *k,
			      struct fy_node *v, void *obj)
{
	struct cfg_model *m = obj;
	if (read_str_list(ld, k, v, &m->alternatives, &m->n_alternatives))
		return -EINVAL;
	if (m->n_alternatives > CFG_MAX_ALTERNATIVES) {
		load_error(ld, node_line(k), "alternatives: at most %d", CFG_MAX_ALTERNATIVES);
		return -EINVAL;
	}
	return 0;
}

static const struct field model_fields[] = {
	ROW("provider", F_STR, struct cfg_model, provider_name, 0, 0),
	ROW("upstream_model", F_STR, struct cfg_model, upstream_model, 0, 0),
	ROW("input_usd_per_mtok", F_MONEY, struct cfg_model, input_per_mtok, 0, 0),
	ROW("output_usd_per_mtok", F_MONEY, struct cfg_model, output_per_mtok, 0, 0),
	ROW("cached_input_usd_per_mtok", F_MONEY, struct cfg_model, cached_input_per_mtok, 0, 0),
	ROW("max_output_tokens", F_U32, struct cfg_model, max_output_tokens, 1, 100000000),
	ROW("context_tokens", F_U32, struct cfg_model, context_tokens, 1, 100000000),
	CUSTOM("supports", model_supports),
	ROW("tier", F_STR, struct cfg_model, tier, 0, 0),
	CUSTOM("alternatives", model_alternatives),
};

static int section_models(struct loader *ld, struct fy_node *k,
			  struct fy_node *v, void *obj)
{
	if (!v || !fy_node_is_mapping(v)) {
		load_error(ld, node_line(k), "models: expected a mapping of name -> model");
		return -EINVAL;
	}
	struct config *cfg = ld->cfg;
	int n = fy_node_mapping_item_count(v);
	cfg->models = arena_alloc(ld->arena, sizeof(*cfg->models) * (size_t)(n ? n : 1));
	int rc = 0;
	void *it = NULL;
	struct fy_node_pair *pair;
	while ((pair = fy_node_mapping_iterate(v, &it))) {
		struct fy_node *mk = fy_node_pair_key(pair);
		const char *name = name_of(ld, mk, "models");
		if (!name) {
			rc = -EINVAL;
			continue;
		}
		struct cfg_model *m = &cfg->models[cfg->n_models++];
		m->name = arena_strndup(ld->arena, name, strlen(name));
		m->name_len = (uint32_t)strlen(name);
		m->line = node_line(mk);
		m->input_per_mtok = m->output_per_mtok = m->cached_input_per_mtok = -1;
		char what[300];
		snprintf(what, sizeof(what), "models.%s", m->name);
		if (read_mapping(ld, mk, fy_node_pair_value(pair), model_fields,
				 ARRAY_SIZE(model_fields), m, what))
			rc = -EINVAL;
	}
	return rc;
}

/* ---- budgets, principals, keys ---- */

/* Reads a scalar that must be one of names[]; returns its index or -1. */
static int read_enum(struct loader *ld, struct fy_node *k, struct fy_node *v,
		     const char *const *names, int n)
{
	size_t len;
	const char *s = scalar(ld, k, v, &len);
	if (!s)
		return -1;
	for (int i = 0; i < n; i++)
		if (strlen(names[i]) == len && !strncmp(s, names[i], len))
			return i;
	char list[256] = "";
	for (int i = 0; i < n; i++)
		snprintf(list + strlen(list), sizeof(list) - strlen(list), "%s%s",
			 i ? ", " : "", names[i]);
	load_error(ld, node_line(k), "%s: '%.*s' is not one of %s",
		   fy_node_get_scalar0(k), (int)len, s, list);
	return -1;
}

static const char *const window_names[] = { "run", "hour", "day", "week", "month", "total" };
static const char *const mode_names[] = { "advisory_estimate", "soft_gate", "hard_gate",
					  "actuals_only" };

static int budget_window(struct loader *ld, struct fy_node *k, struct fy_node *v, void *obj)
{
	int w = read_enum(ld, k, v, window_names, (int)ARRAY_SIZE(window_names));
	((struct cfg_budget *)obj)->window = (uint8_t)w;
	return w < 0 ? -EINVAL : 0;
}

static int budget_mode(struct loader *ld, struct fy_node *k, struct fy_node *v, void *obj)
{
	int m = read_enum(ld, k, v, mode_names, (int)ARRAY_SIZE(mode_names));
	((struct cfg_budget *)obj)->mode = (uint8_t)m;
	return m < 0 ? -EINVAL : 0;
}

static int budget_on_exceed(struct loader *ld, struct fy_node *k, struct fy_node *v, void *obj)
{
	static const char *const names[] = { "block", "downgrade" };
	int e = read_enum(ld, k, v, names, 2);
	((struct cfg_budget *)obj)->downgrade = e == 1;
	return e < 0 ? -EINVAL : 0;
}

static int budget_alert_at(struct loader *ld, struct fy_node *k, struct fy_node *v, void *obj)
{
	struct cfg_budget *b = obj;
	if (!v || !fy_node_is_sequence(v)) {
		load_error(ld, node_line(k), "alert_at: expected a list of fractions");
		return -EINVAL;
	}
	void *it = NULL;
	struct fy_node *item;
	while ((item = fy_node_sequence_iterate(v, &it))) {
		usd_micros ppm;    /* a fraction parses like money: six decimals */
		if (read_money(ld, k, item, &ppm))
			return -EINVAL;
		if (ppm <= 0 || ppm > 1000000 || b->n_alerts == CFG_MAX_ALERTS) {
			load_error(ld, node_line(k),
				   "alert_at: fractions in (0, 1], at most %d", CFG_MAX_ALERTS);
			return -EINVAL;
		}
		b->alert_ppm[b->n_alerts++] = (uint32_t)ppm;
	}
	return 0;
}

static const struct field budget_fields[] = {
	ROW("limit", F_MONEY, struct cfg_budget, limit, 0, 0),
	CUSTOM("window", budget_window),
	CUSTOM("mode", budget_mode),
	ROW("soft_margin", F_MONEY, struct cfg_budget, soft_margin, 0, 0),
	CUSTOM("alert_at", budget_alert_at),
	CUSTOM("on_exceed", budget_on_exceed),
};

static int read_budget(struct loader *ld, struct fy_node *k, struct fy_node *v,
		       struct cfg_budget *b)
{
	*b = (struct cfg_budget){ .present = true, .limit = -1, .window = WINDOW_TOTAL,
				  .mode = MODE_HARD_GATE, .line = node_line(k) };
	if (read_mapping(ld, k, v, budget_fields, ARRAY_SIZE(budget_fields), b, "budget"))
		return -EINVAL;
	if (b->limit < 0) {
		load_error(ld, b->line, "budget: limit is required");
		return -EINVAL;
	}
	if (b->soft_margin && b->mode != MODE_SOFT_GATE) {
		load_error(ld, b->line, "budget: soft_margin applies to mode: soft_gate only");
		return -EINVAL;
	}
	return 0;
}

const char *config_window_name(uint8_t window)
{
	return window < ARRAY_SIZE(window_names) ? window_names[window] : "total";
}

bool config_key_allows(const struct cfg_key *k, const struct cfg_model *m)
{
	if (!k->n_models)
		return true;
	for (uint32_t i = 0; i < k->n_models; i++)
		if (!strcmp(k->models[i], "*") || !strcmp(k->models[i], m->name))
			return true;
	return false;
}

int64_t config_budget_slack(uint8_t mode, int64_t soft_margin)
{
	switch (mode) {
	case MODE_HARD_GATE: return 0;
	case MODE_SOFT_GATE: return soft_margin;
	default: return BUDGET_UNBOUNDED;   /* advisory, actuals-only: gated elsewhere */
	}
}

const char *config_mode_name(uint8_t mode)
{
	return mode < ARRAY_SIZE(mode_names) ? mode_names[mode] : "hard_gate";
}

static int principal_budget(struct loader *ld, struct fy_node *k, struct fy_node *v, void *obj)
{
	return read_budget(ld, k, v, &((struct cfg_principal *)obj)->budget);
}

static const struct field principal_fields[] = {
	CUSTOM("budget", principal_budget),
	ROW("parent", F_STR, struct cfg_principal, parent_name, 0, 0),
};

/* orgs / teams / users: name -> {budget?, parent?} */
static int read_principals(struct loader *ld, struct fy_node *k, struct fy_node *v,
			   struct cfg_principal **out, uint32_t *n_out)
{
	const char *what = fy_node_get_scalar0(k);
	if (!v || !fy_node_is_mapping(v)) {
		load_error(ld, node_line(k), "%s: expected a mapping of name -> {budget, parent}", what);
		return -EINVAL;
	}
	int n = fy_node_mapping_item_count(v);
	struct cfg_principal *list = arena_alloc(ld->arena, sizeof(*list) * (size_t)(n ? n : 1));
	uint32_t count = 0;
	int rc = 0;
	void *it = NULL;
	struct fy_node_pair *pair;
	while ((pair = fy_node_mapping_iterate(v, &it))) {
		struct fy_node *pk = fy_node_pair_key(pair);
		const char *name = name_of(ld, pk, what);
		if (!name) {
			rc = -EINVAL;
			continue;
		}
		struct cfg_principal *p = &list[count++];
		p->name = arena_strndup(ld->arena, name, strlen(name));
		p->line = node_line(pk);
		p->parent = -1;
		struct fy_node *pv = fy_node_pair_value(pair);
		if (pv && fy_node_is_scalar(pv) && !fy_node_get_scalar0(pv)[0])
			continue;     /* "name:" with nothing: no budget, no parent */
		char where[300];
		snprintf(where, sizeof(where), "%s.%s", what, p->name);
		if (read_mapping(ld, pk, pv, principal_fields, ARRAY_SIZE(principal_fields), p, where))
			rc = -EINVAL;
	}
	*out = list;
	*n_out = count;
	return rc;
}

static int section_orgs(struct loader *ld, struct fy_node *k, struct fy_node *v, void *obj)
{
	return read_principals(ld, k, v, &ld->cfg->orgs, &ld->cfg->n_orgs);
}

static int section_teams(struct loader *ld, struct fy_node *k, struct fy_node *v, void *obj)
{
	return read_principals(ld, k, v, &ld->cfg->teams, &ld->cfg->n_teams);
}

static int section_users(struct loader *ld, struct fy_node *k, struct fy_node *v, void *obj)
{
	return read_principals(ld, k, v, &ld->cfg->users, &ld->cfg->n_users);
}

static const struct field run_fields[] = {
	ROW("default_limit", F_MONEY, struct cfg_run_policy, default_limit, 0, 0),
	ROW("max_limit", F_MONEY, struct cfg_run_policy, max_limit, 0, 0),
	ROW("max_steps", F_U32, struct cfg_run_policy, max_steps, 0, 100000000),
	ROW("ttl_s", F_U32, struct cfg_run_policy, ttl_s, 1, 31 * 86400),
	ROW("stream_lease", F_BOOL, struct cfg_run_policy, stream_lease, 0, 0),
	ROW("max_stream_tokens", F_U32, struct cfg_run_policy, max_stream_tokens, 0, 100000000),
	ROW("max_live_runs", F_U32, struct cfg_run_policy, max_live_runs, 1, 10000000),
};

static int key_secret(struct loader *ld, struct fy_node *k, struct fy_node *v, void *obj)
{
	struct cfg_key *key = obj;
	size_t len;
	const char *s = scalar(ld, k, v, &len);
	if (!s)
		return -EINVAL;
	for (size_t i = 0; len == 64 && i < 32; i++) {
		unsigned hi, lo;
		if (sscanf(s + 2 * i, "%1x%1x", &hi, &lo) != 2)
			len = 0;
		key->secret_sha256[i] = (unsigned char)(hi << 4 | lo);
	}
	if (len != 64) {
		load_error(ld, node_line(k), "secret_sha256: expected 64 hex digits (tollctl keygen)");
		return -EINVAL;
	}
	key->has_secret = true;
	return 0;
}

static int key_models(struct loader *ld, struct fy_node *k, struct fy_node *v, void *obj)
{
	struct cfg_key *key = obj;
	return read_str_list(ld, k, v, &key->models, &key->n_models);
}

static int key_budget(struct loader *ld, struct fy_node *k, struct fy_node *v, void *obj)
{
	return read_budget(ld, k, v, &((struct cfg_key *)obj)->budget);
}

static int key_run(struct loader *ld, struct fy_node *k, struct fy_node *v, void *obj)
{
	return read_mapping(ld, k, v, run_fields, ARRAY_SIZE(run_fields),
			    &((struct cfg_key *)obj)->run, "keys[].run");
}

static int key_mode(struct loader *ld, struct fy_node *k, struct fy_node *v, void *obj)
{
	int m = read_enum(ld, k, v, mode_names, (int)ARRAY_SIZE(mode_names));
	((struct cfg_key *)obj)->mode = (uint8_t)m;
	return m < 0 ? -EINVAL : 0;
}

static const struct field key_fields[] = {
	ROW("id", F_STR, struct cfg_key, id, 0, 0),
	CUSTOM("secret_sha256", key_secret),
	ROW("user", F_STR, struct cfg_key, user_name, 0, 0),
	ROW("team", F_STR, struct cfg_key, team_name, 0, 0),
	CUSTOM("models", key_models),
	CUSTOM("budget", key_budget),
	CUSTOM("run", key_run),
	ROW("rpm", F_U32, struct cfg_key, rpm, 0, 100000000),
	ROW("tpm", F_U32, struct cfg_key, tpm, 0, 2000000000),
	CUSTOM("mode", key_mode),
};

static int section_keys(struct loader *ld, struct fy_node *k, struct fy_node *v, void *obj)
{
	if (!v || !fy_node_is_sequence(v)) {
		load_error(ld, node_line(k), "keys: expected a list");
		return -EINVAL;
	}
	struct config *cfg = ld->cfg;
	int n = fy_node_sequence_item_count(v);
	cfg->keys = arena_alloc(ld->arena, sizeof(*cfg->keys) * (size_t)(n ? n : 1));
	int rc = 0;
	void *it = NULL;
	struct fy_node *item;
	while ((item = fy_node_sequence_iterate(v, &it))) {
		struct cfg_key *key = &cfg->keys[cfg->n_keys++];
		key->line = node_line(k);
		key->user = key->team = -1;
		key->mode = MODE_HARD_GATE;
		key->run = (struct cfg_run_policy){ .default_limit = 1000000, .max_limit = 10000000,
						    .ttl_s = 3600, .max_live_runs = 1000 };
		if (read_mapping(ld, k, item, key_fields, ARRAY_SIZE(key_fields), key, "keys[]"))
			rc = -EINVAL;
		else if (!key->id || !key->team_name || !key->has_secret) {
			load_error(ld, key->line, "keys[]: id, secret_sha256 and team are required");
			rc = -EINVAL;
		}
	}
	return rc;
}

/* ---- top level ---- */

static int top_str(struct loader *ld, struct fy_node *k, struct fy_node *v,
		   void *obj)
{
	ld->prices_version_line = node_line(k);
	return read_str(ld, k, v, &ld->cfg->prices_version);
}

static int top_pin(struct loader *ld, struct fy_node *k, struct fy_node *v,
		   void *obj)
{
	return read_bool(ld, k, v, &ld->cfg->pin);
}

static int top_drain(struct loader *ld, struct fy_node *k, struct fy_node *v,
		     void *obj)
{
	uint64_t ms;
	if (read_u64(ld, k, v, 0, 3600000, &ms))
		return -EINVAL;
	ld->cfg->drain_timeout_ms = (uint32_t)ms;
	return 0;
}

/* ---- alerts ---- */

static int alerts_log(struct loader *ld, struct fy_node *k, struct fy_node *v, void *obj)
{
	return read_bool(ld, k, v, &((struct cfg_alerts *)obj)->log);
}

static const struct field alerts_fields[] = {
	ROW("webhook_url", F_STR, struct cfg_alerts, webhook_url, 0, 0),
	CUSTOM("log", alerts_log),
	ROW("timeout_ms", F_U32, struct cfg_alerts, timeout_ms, 100, 60000),
};

static int section_alerts(struct loader *ld, struct fy_node *k, struct fy_node *v, void *obj)
{
	struct cfg_alerts *a = &ld->cfg->alerts;
	if (read_mapping(ld, k, v, alerts_fields, ARRAY_SIZE(alerts_fields), a, "alerts"))
		return -EINVAL;
	if (!a->webhook_url)
		return 0;
	/* the URL grammar is a provider base_url's */
	struct cfg_provider url = { .base_url = a->webhook_url };
	int rc = parse_base_url(ld, &url);
	if (rc || url.tls) {
		load_error(ld, node_line(k), "alerts.webhook_url '%s': %s", a->webhook_url,
			   url.tls ? "https webhooks need TLS, which this build lacks" :
			   rc == -EHOSTUNREACH ? "cannot resolve its host" :
			   "not http://host[:port][/path]");
		return -EINVAL;
	}
	a->host = url.host;
	a->port = url.port;
	a->path = url.path_prefix_len ? url.path_prefix : "/";
	a->addr = url.addr;
	return 0;
}

/* ---- ledger ---- */

static int ledger_fsync(struct loader *ld, struct fy_node *k, struct fy_node *v, void *obj)
{
	static const char *const names[] = { "never", "batch", "always" };
	int m = read_enum(ld, k, v, names, (int)ARRAY_SIZE(names));
	if (m < 0)
		return -EINVAL;
	((struct cfg_ledger *)obj)->fsync = (uint8_t)m;
	return 0;
}

static const struct field ledger_fields[] = {
	ROW("dir", F_STR, struct cfg_ledger, dir, 0, 0),
	CUSTOM("fsync", ledger_fsync),
	ROW("batch_ms", F_U32, struct cfg_ledger, batch_ms, 1, 10000),
	ROW("segment_mb", F_U32, struct cfg_ledger, segment_mb, 1, 4096),
};

static int section_ledger(struct loader *ld, struct fy_node *k, struct fy_node *v, void *obj)
{
	struct cfg_ledger *l = &ld->cfg->ledger;
	if (read_mapping(ld, k, v, ledger_fields, ARRAY_SIZE(ledger_fields), l, "ledger"))
		return -EINVAL;
	if (!l->dir || !*l->dir) {
		load_error(ld, node_line(k), "ledger.dir: required (the directory of its segments)");
		return -EINVAL;
	}
	return 0;
}

/* Sections of SPEC §2 whose features land in later issues: refused by name,
 * so a config that relies on them fails loudly instead of running unguarded. */
static int section_not_yet(struct loader *ld, struct fy_node *k,
			   struct fy_node *v, void *obj)
{
	load_error(ld, node_line(k),
		   "%s: section not supported by this build yet",
		   fy_node_get_scalar0(k));
	return -EINVAL;
}

static const struct field top_fields[] = {
	CUSTOM("listen", section_listen),
	CUSTOM("admin", section_admin),
	CUSTOM("workers", section_workers),
	CUSTOM("pin", top_pin),
	CUSTOM("drain_timeout_ms", top_drain),
	CUSTOM("limits", section_limits),
	CUSTOM("providers", section_providers),
	CUSTOM("models", section_models),
	CUSTOM("prices_version", top_str),
	CUSTOM("orgs", section_orgs),
	CUSTOM("teams", section_teams),
	CUSTOM("users", section_users),
	CUSTOM("keys", section_keys),
	CUSTOM("budget", section_not_yet),
	CUSTOM("velocity", section_not_yet),
	CUSTOM("ledger", section_ledger),
	CUSTOM("alerts", section_alerts),
	CUSTOM("otel", section_not_yet),
	CUSTOM("cluster", section_not_yet),
};

/* ---- cross-checks and indexes ---- */

static uint64_t name_hash(const char *s, size_t len)
{
	return XXH3_64bits(s, len);
}

static void build_model_index(struct loader *ld)
{
	struct config *cfg = ld->cfg;
	uint32_t slots = 16;
	while (slots < cfg->n_models * 2)
		slots <<= 1;
	cfg->model_index = arena_alloc(ld->arena, sizeof(uint32_t) * slots);
	cfg->model_index_mask = slots - 1;
	for (uint32_t i = 0; i < cfg->n_models; i++) {
		const struct cfg_model *m = &cfg->models[i];
		uint32_t s = (uint32_t)name_hash(m->name, m->name_len) & cfg->model_index_mask;
		while (cfg->model_index[s])
			s = (s + 1) & cfg->model_index_mask;
		cfg->model_index[s] = i + 1;
	}
}

const struct cfg_model *config_find_model(const struct config *cfg,
					  const char *name, size_t len)
{
	uint32_t s = (uint32_t)name_hash(name, len) & cfg->model_index_mask;
	for (uint32_t idx; (idx = cfg->model_index[s]); s = (s + 1) & cfg->model_index_mask) {
		const struct cfg_model *m = &cfg->models[idx - 1];
		if (m->name_len == len && !memcmp(m->name, name, len))
			return m;
	}
	return NULL;
}

static const struct cfg_provider *find_provider(const struct config *cfg,
						const char *name)
{
	for (uint32_t i = 0; i < cfg->n_providers; i++)
		if (!strcmp(cfg->providers[i].name, name))
			return &cfg->providers[i];
	return NULL;
}

static int find_principal(const struct cfg_principal *list, uint32_t n, const char *name)
{
	for (uint32_t i = 0; i < n; i++)
		if (!strcmp(list[i].name, name))
			return (int)i;
	return -1;
}

/* Resolves `parent` names of one kind against the kind above it. */
static void link_parents(struct loader *ld, struct cfg_principal *list, uint32_t n,
			 const char *kind, const struct cfg_principal *parents,
			 uint32_t n_parents, const char *parent_kind)
{
	for (uint32_t i = 0; i < n; i++) {
		struct cfg_principal *p = &list[i];
		if (!p->parent_name)
			continue;
		p->parent = find_principal(parents, n_parents, p->parent_name);
		if (p->parent < 0)
			load_error(ld, p->line, "%s.%s: parent '%s' is not in %s", kind,
				   p->name, p->parent_name, parent_kind);
	}
}

static uint32_t key_slot(const unsigned char *sha)
{
	uint32_t h;
	memcpy(&h, sha, sizeof(h));   /* a SHA-256 is already uniform */
	return h;
}

const struct cfg_key *config_find_key(const struct config *cfg, const unsigned char *sha256)
{
	if (!cfg->key_index)
		return NULL;
	uint32_t s = key_slot(sha256) & cfg->key_index_mask;
	for (uint32_t idx; (idx = cfg->key_index[s]); s = (s + 1) & cfg->key_index_mask)
		if (!memcmp(cfg->keys[idx - 1].secret_sha256, sha256, 32))
			return &cfg->keys[idx - 1];
	return NULL;
}

static void validate_keys(struct loader *ld)
{
	struct config *cfg = ld->cfg;
	uint32_t slots = 16;
	while (slots < cfg->n_keys * 2)
		slots <<= 1;
	cfg->key_index = arena_alloc(ld->arena, sizeof(uint32_t) * slots);
	cfg->key_index_mask = slots - 1;
	for (uint32_t i = 0; i < cfg->n_keys; i++) {
		struct cfg_key *k = &cfg->keys[i];
		k->team = find_principal(cfg->teams, cfg->n_teams, k->team_name);
		if (k->team < 0)
			load_error(ld, k->line, "keys[%s]: team '%s' is not in teams", k->id, k->team_name);
		if (k->user_name) {
			k->user = find_principal(cfg->users, cfg->n_users, k->user_name);
			if (k->user < 0)
				load_error(ld, k->line, "keys[%s]: user '%s' is not in users", k->id,
					   k->user_name);
		}
		for (uint32_t m = 0; m < k->n_models; m++)
			if (strcmp(k->models[m], "*") &&
			    !config_find_model(cfg, k->models[m], strlen(k->models[m])))
				load_error(ld, k->line, "keys[%s]: model '%s' is not in models", k->id,
					   k->models[m]);
		if (k->run.default_limit > k->run.max_limit)
			load_error(ld, k->line, "keys[%s]: run.default_limit is above run.max_limit", k->id);
		for (uint32_t j = 0; j < i; j++) {
			if (!strcmp(cfg->keys[j].id, k->id))
				load_error(ld, k->line, "keys: id '%s' appears twice", k->id);
			else if (!memcmp(cfg->keys[j].secret_sha256, k->secret_sha256, 32))
				load_error(ld, k->line, "keys[%s]: same secret as '%s'", k->id,
					   cfg->keys[j].id);
		}
		uint32_t s = key_slot(k->secret_sha256) & cfg->key_index_mask;
		while (cfg->key_index[s])
			s = (s + 1) & cfg->key_index_mask;
		cfg->key_index[s] = i + 1;
	}
}

/* Names go into headers, JSON and upstream bodies as they are: 1 to max
 * of [A-Za-z0-9._:/@+-], nothing to escape or inject. */
static bool plain_name(const char *s, size_t max)
{
	size_t n = strlen(s);
	if (n == 0 || n > max)
		return false;
	for (size_t i = 0; i < n; i++)
		if (!strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:/@+-",
			    s[i]))
			return false;
	return true;
}

static void check_name(struct loader *ld, int line, const char *what, const char *name,
		       size_t max)
{
	if (name && !plain_name(name, max))
		load_error(ld, line, "%s '%s': 1 to %zu of A-Z a-z 0-9 . _ : / @ + -", what, name,
			   max);
}

static void validate_names(struct loader *ld)
{
	const struct config *cfg = ld->cfg;
	for (uint32_t i = 0; i < cfg->n_models; i++) {
		check_name(ld, cfg->models[i].line, "model", cfg->models[i].name, 64);
		check_name(ld, cfg->models[i].line, "upstream_model", cfg->models[i].upstream_model,
			   128);
	}
	const struct cfg_principal *kinds[] = { cfg->orgs, cfg->teams, cfg->users };
	const uint32_t counts[] = { cfg->n_orgs, cfg->n_teams, cfg->n_users };
	for (int k = 0; k < 3; k++)
		for (uint32_t i = 0; i < counts[k]; i++)
			check_name(ld, kinds[k][i].line, "name", kinds[k][i].name, 128);
	for (uint32_t i = 0; i < cfg->n_keys; i++)
		check_name(ld, cfg->keys[i].line, "keys[].id", cfg->keys[i].id, 64);
	check_name(ld, ld->prices_version_line, "prices_version", cfg->prices_version, 64);
}

static bool same_addr(const struct cfg_addr *a, const struct cfg_addr *b)
{
	return a->salen == b->salen && !memcmp(&a->sa, &b->sa, a->salen);
}

/* Listeners share ports through SO_REUSEPORT, so two on one address
 * would split its connections between them (say, plain and TLS, or agents
 * and the admin API) instead of failing to bind. */
static void validate_addrs(struct loader *ld)
{
	const struct config *cfg = ld->cfg;
	for (uint32_t i = 0; i < cfg->n_listen; i++) {
		const struct cfg_listen *l = &cfg->listen[i];
		for (uint32_t j = 0; j < i; j++)
			if (same_addr(&l->addr, &cfg->listen[j].addr))
				load_error(ld, l->line, "listen: %s is listed twice", l->addr.text);
		if (cfg->has_admin && same_addr(&l->addr, &cfg->admin_addr))
			load_error(ld, l->line, "listen: %s is also admin.addr", l->addr.text);
	}
}

static void validate(struct loader *ld)
{
	struct config *cfg = ld->cfg;
	if (!cfg->n_listen)
		load_error(ld, 1, "listen: at least one listener is required");
	validate_addrs(ld);
	if (cfg->limits.max_header_bytes < 1024)
		load_error(ld, 1, "limits.max_header_bytes: at least 1024");
	for (uint32_t i = 0; i < cfg->n_models; i++) {
		struct cfg_model *m = &cfg->models[i];
		if (!m->provider_name) {
			load_error(ld, m->line, "models.%s: provider is required", m->name);
			continue;
		}
		m->provider = find_provider(cfg, m->provider_name);
		if (!m->provider)
			load_error(ld, m->line, "models.%s: unknown provider '%s'",
				   m->name, m->provider_name);
	}
	build_model_index(ld);
	link_parents(ld, cfg->teams, cfg->n_teams, "teams", cfg->orgs, cfg->n_orgs, "orgs");
	link_parents(ld, cfg->users, cfg->n_users, "users", cfg->teams, cfg->n_teams, "teams");
	for (uint32_t i = 0; i < cfg->n_orgs; i++)
		if (cfg->orgs[i].parent_name)
			load_error(ld, cfg->orgs[i].line, "orgs.%s: an org has no parent", cfg->orgs[i].name);
	validate_keys(ld);
	validate_names(ld);
	for (uint32_t i = 0; i < cfg->n_models; i++) {
		const struct cfg_model *m = &cfg->models[i];
		for (uint32_t a = 0; a < m->n_alternatives; a++)
			if (!config_find_model(cfg, m->alternatives[a],
					       strlen(m->alternatives[a])))
				load_error(ld, m->line,
					   "models.%s: alternative '%s' is not a model",
					   m->name, m->alternatives[a]);
	}
}

static void set_defaults(struct config *cfg)
{
	cfg->pin = true;
	cfg->drain_timeout_ms = 10000;
	cfg->prices_version = "unversioned";
	cfg->limits = (struct cfg_limits){
		.max_header_bytes = 16384,
		.max_body_bytes = 32u << 20,
		.header_timeout_ms = 10000,
		.body_timeout_ms = 60000,
		.idle_timeout_ms = 60000,
		.send_timeout_ms = 60000,
		.max_connections = 20000,
		.max_requests = 4096,
		.reservation_ttl_ms = 900000,
		.handshake_timeout_ms = 10000,
	};
	cfg->alerts = (struct cfg_alerts){ .log = true, .timeout_ms = 2000 };
	cfg->ledger = (struct cfg_ledger){ .fsync = 1 /* batch */, .batch_ms = 100,
					   .segment_mb = 64 };
}

#define CONFIG_MAX_BYTES (16u << 20)

/* Length of the valid UTF-8 sequence at p (1..4), or 0 if invalid:
 * overlong forms, surrogates and code points past U+10FFFF included. */
static size_t utf8_len(const unsigned char *p, size_t left)
{
	if (p[0] < 0x80)
		return p[0] ? 1 : 0;   /* NUL has no place in a config file */
	size_t n = p[0] >= 0xf0 ? 4 : p[0] >= 0xe0 ? 3 : p[0] >= 0xc2 ? 2 : 0;
	if (!n || n > left || p[0] > 0xf4)
		return 0;
	for (size_t i = 1; i < n; i++)
		if ((p[i] & 0xc0) != 0x80)
			return 0;
	if ((p[0] == 0xe0 && p[1] < 0xa0) || (p[0] == 0xed && p[1] > 0x9f) ||
	    (p[0] == 0xf0 && p[1] < 0x90) || (p[0] == 0xf4 && p[1] > 0x8f))
		return 0;
	return n;
}

/*
 * Reads the whole file (bounded) and checks it is UTF-8 before libfyaml
 * sees it: YAML text must be Unicode, and libfyaml 0.7 can loop forever on
 * some invalid sequences (found by tests/fuzz/config.c). Returns a malloc'd
 * buffer or NULL after reporting the problem.
 */
static char *read_source(struct loader *ld, size_t *len_out)
{
	FILE *f = fopen(ld->path, "rb");
	if (!f) {
		load_error(ld, 0, "cannot open: %s", strerror(errno));
		return NULL;
	}
	char *buf = malloc(CONFIG_MAX_BYTES + 1);
	size_t len = buf ? fread(buf, 1, CONFIG_MAX_BYTES + 1, f) : 0;
	bool read_error = ferror(f);
	fclose(f);
	if (!buf || read_error || len > CONFIG_MAX_BYTES) {
		load_error(ld, 0, !buf ? "out of memory" : read_error ? "read error" :
			   "larger than 16 MiB");
		free(buf);
		return NULL;
	}
	int line = 1;
	for (size_t i = 0; i < len;) {
		size_t n = utf8_len((const unsigned char *)buf + i, len - i);
		if (!n) {
			load_error(ld, line, "not valid UTF-8 text (byte 0x%02x)",
				   (unsigned char)buf[i]);
			free(buf);
			return NULL;
		}
		line += buf[i] == '\n';
		i += n;
	}
	*len_out = len;
	return buf;
}

struct config *config_load(const char *path, FILE *errs)
{
	static atomic_uint_fast64_t generations;
	struct loader ld = { .path = path, .errs = errs };
	size_t src_len;
	char *src = read_source(&ld, &src_len);
	if (!src)
		return NULL;
	struct fy_parse_cfg pcfg = { .flags = FYPCF_QUIET };
	struct fy_document *doc = fy_document_build_from_string(&pcfg, src, src_len);
	if (!doc) {
		free(src);
		/* libfyaml is quiet here; re-parse noisily for its file:line. */
		fprintf(errs, "%s:0: cannot read or parse as YAML\n", path);
		struct fy_parse_cfg loud = { .flags = 0 };
		struct fy_document *again = fy_document_build_from_file(&loud, path);
		fy_document_destroy(again);
		return NULL;
	}
	ld.arena = arena_new();
	ld.cfg = arena_alloc(ld.arena, sizeof(*ld.cfg));
	ld.cfg->arena = ld.arena;
	ld.cfg->path = arena_strndup(ld.arena, path, strlen(path));
	set_defaults(ld.cfg);

	struct fy_node *root = fy_document_root(doc);
	if (!root || !fy_node_is_mapping(root))
		load_error(&ld, 1, "top level: expected a mapping");
	else
		read_mapping(&ld, NULL, root, top_fields, ARRAY_SIZE(top_fields),
			     ld.cfg, "top level");
	if (!ld.n_errors)
		validate(&ld);
	fy_document_destroy(doc);
	free(src);
	if (ld.n_errors) {
		arena_free(ld.arena);
		return NULL;
	}
	ld.cfg->generation = atomic_fetch_add(&generations, 1) + 1;
	atomic_init(&ld.cfg->refs, 1);
	return ld.cfg;
}

void config_ref(struct config *cfg)
{
	atomic_fetch_add_explicit(&cfg->refs, 1, memory_order_relaxed);
}

void config_unref(struct config *cfg)
{
	if (cfg && atomic_fetch_sub_explicit(&cfg->refs, 1, memory_order_acq_rel) == 1)
		arena_free(cfg->arena);
}
