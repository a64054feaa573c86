/*
 * config_types.h — the loaded configuration (one immutable "generation").
 *
 * A generation is built by config_load(), read-only afterwards, and shared by
 * every shard; a reload builds a new one and shards swap to it at a safe
 * point. All strings and arrays live in the generation's arena and die with it.
 */
#ifndef TOLLGATE_CONFIG_TYPES_H
#define TOLLGATE_CONFIG_TYPES_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include "core/budget_types.h"
#include "core/money.h"

struct arena;
struct budget_scope;
struct run_table;
struct decision_log;
struct idem_table;
struct grant_table;

/* A socket address parsed from "host:port" or "[v6]:port". */
struct cfg_addr {
	struct sockaddr_storage sa;
	socklen_t salen;
	const char *text;          /* as written, for logs */
};

struct cfg_listen {
	struct cfg_addr addr;
	const char *tls_cert;      /* NULL: plain HTTP */
	const char *tls_key;
	/* the files' contents, read at load and NUL-terminated (the length
	 * counts the NUL, as mbedTLS's PEM parser wants) */
	const char *tls_cert_pem, *tls_key_pem;
	size_t tls_cert_len, tls_key_len;
	int line;
};

enum provider_format { FORMAT_OPENAI, FORMAT_ANTHROPIC };

struct cfg_provider {
	const char *name;
	const char *base_url;      /* as written */
	bool tls;                  /* https:// */
	const char *host;          /* Host header / SNI */
	uint16_t port;
	const char *path_prefix;   /* path of base_url, ends at the API version ("/v1") */
	uint32_t path_prefix_len;
	struct cfg_addr addr;      /* resolved at load */
	enum provider_format format;
	const char *api_key_env;
	const char *api_key;       /* value of api_key_env at load, or NULL */
	uint32_t connect_timeout_ms;
	uint32_t timeout_ms;       /* request sent -> first response byte */
	uint32_t idle_timeout_ms;  /* between response bytes, and pooled-idle lifetime */
	uint32_t max_idle_conns;   /* per shard */
	const char *ca_file;       /* NULL: the system bundle (TLS_SYSTEM_CA) */
	bool insecure_skip_verify;
	const char *ca_pem;        /* https: the CA bundle read at load (NUL counted) */
	size_t ca_len;
	int index;
	int line;
};

enum model_supports {
	SUPPORTS_TOOLS = 1u << 0,
	SUPPORTS_JSON_SCHEMA = 1u << 1,
	SUPPORTS_VISION = 1u << 2,
};

struct cfg_model {
	const char *name;
	uint32_t name_len;
	const struct cfg_provider *provider;
	const char *provider_name;   /* as written; resolved to provider */
	const char *upstream_model;  /* NULL: forward the name as is */
	usd_micros input_per_mtok;   /* -1: not priced */
	usd_micros output_per_mtok;  /* -1: not priced */
	usd_micros cached_input_per_mtok; /* -1: use input price */
	uint32_t max_output_tokens;
	uint32_t context_tokens;
	uint32_t supports;           /* enum model_supports bits */
	const char *tier;
	int line;
	const char **alternatives;
	uint32_t n_alternatives;
};

enum budget_mode {
	MODE_ADVISORY_ESTIMATE, MODE_SOFT_GATE, MODE_HARD_GATE, MODE_ACTUALS_ONLY,
};

#define CFG_MAX_ALERTS 8
#define CFG_MAX_ALTERNATIVES 8

/* A `budget:` block on any scope. */
struct cfg_budget {
	bool present;
	uint8_t window;              /* enum budget_window */
	uint8_t mode;                /* enum budget_mode */
	bool downgrade;              /* on_exceed: downgrade (else block) */
	uint8_t n_alerts;
	usd_micros limit;
	usd_micros soft_margin;
	uint32_t alert_ppm[CFG_MAX_ALERTS];  /* fractions of limit, parts per million */
	int line;
	struct budget_scope *scope;  /* live counters, bound by budget_book_bind() */
};

/* An org, team or user: a named scope with an optional parent. */
struct cfg_principal {
	const char *name;
	const char *parent_name;     /* as written */
	int parent;                  /* index in the parent kind's array, -1: none */
	struct cfg_budget budget;
	int line;
};

/* Per-key policy for the runs it opens. */
struct cfg_run_policy {
	usd_micros default_limit;
	usd_micros max_limit;
	uint32_t max_steps;          /* 0: unlimited */
	uint32_t ttl_s;
	bool stream_lease;
	uint32_t max_stream_tokens;  /* 0: no cap beyond the model's */
	uint32_t max_live_runs;
};

struct cfg_key {
	const char *id;
	unsigned char secret_sha256[32];
	bool has_secret;
	const char *user_name, *team_name;
	int user, team;              /* indexes, user -1 when absent */
	const char **models;         /* "*" allows every model */
	uint32_t n_models;
	struct cfg_budget budget;
	struct cfg_run_policy run;
	uint32_t rpm, tpm;           /* 0: unlimited */
	uint8_t mode;                /* enum budget_mode for run budgets */
	int line;
	_Atomic uint32_t *runs_opened; /* runs this key has opened (budget_book) */
	_Atomic uint32_t *grants_opened; /* open grants this key has made (budget_book) */
};

/* Limits on everything a client controls, and the client-side timeouts. */
struct cfg_limits {
	uint32_t max_header_bytes;
	uint64_t max_body_bytes;
	uint32_t header_timeout_ms;  /* first byte -> end of headers */
	uint32_t body_timeout_ms;    /* end of headers -> end of body */
	uint32_t idle_timeout_ms;    /* keep-alive wait for the next request */
	uint32_t send_timeout_ms;    /* a client that stops reading */
	uint32_t max_connections;    /* per shard */
	uint32_t max_requests;       /* in flight per shard */
	uint32_t reservation_ttl_ms; /* a budgeted call that runs longer is cut and settled */
	uint32_t handshake_timeout_ms; /* TLS: accept -> handshake done */
};

/* Where budget alerts go (core/alerts.c). */
struct cfg_alerts {
	bool log;                    /* a log line per alert (default on) */
	const char *webhook_url;     /* NULL: no webhook */
	const char *host;            /* parsed from webhook_url (http:// only) */
	uint16_t port;
	const char *path;
	struct cfg_addr addr;
	uint32_t timeout_ms;         /* per POST attempt */
};

/* The durable ledger (ledger/); dir NULL: no ledger. */
struct cfg_ledger {
	const char *dir;
	uint8_t fsync;               /* enum ledger_fsync: never, batch, always */
	uint32_t batch_ms;           /* batch: fsync at most this long after a write */
	uint32_t segment_mb;         /* a segment is closed past this size */
};

struct config {
	const char *path;
	struct cfg_listen *listen;
	uint32_t n_listen;
	struct cfg_addr admin_addr;
	bool has_admin;
	const char *admin_token_env;
	const char *admin_token;     /* its value at load (>= 16 bytes) */
	int workers;                 /* 0: auto (online CPUs) */
	bool pin;
	uint32_t drain_timeout_ms;
	struct cfg_limits limits;
	struct cfg_provider *providers;
	uint32_t n_providers;
	struct cfg_model *models;
	uint32_t n_models;
	uint32_t *model_index;       /* open-addressing hash: slot -> model+1 */
	uint32_t model_index_mask;
	const char *prices_version;
	struct cfg_principal *orgs, *teams, *users;
	uint32_t n_orgs, n_teams, n_users;
	struct cfg_key *keys;
	uint32_t n_keys;
	struct cfg_alerts alerts;
	struct cfg_ledger ledger;
	struct run_table *runs;      /* live runs, shared by generations (budget_book) */
	struct decision_log *decisions; /* recent decisions of every shard (budget_book) */
	struct idem_table *idem;     /* idempotency keys (budget_book) */
	struct grant_table *grants;  /* open grants (budget_book) */
	uint32_t *key_index;         /* open-addressing hash of secret_sha256 */
	uint32_t key_index_mask;
	uint64_t generation;         /* 1, 2, ... per reload */
	atomic_int refs;             /* shards (and the loader) holding it */
	struct arena *arena;
};

#endif
