/*
 * conn_types.h — a shard's connection objects and the exchange that ties a
 * client request to an upstream reply.
 *
 * Lifetime rule: every object counts its io_uring operations in flight
 * (`inflight`); closing shuts the socket down so those complete, and the
 * object returns to its pool only when the count reaches zero.
 */
#ifndef TOLLGATE_CONN_TYPES_H
#define TOLLGATE_CONN_TYPES_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "core/budget.h"
#include "core/config_types.h"
#include "core/runs.h"
#include "core/timer.h"
#include "ledger/writer_types.h"
#include "net/http1_types.h"

struct shard;
struct exchange;
struct tls_conn;
struct tls_conf;
struct cfg_hold;
struct budget_scope;
struct run;

enum timer_kind {
	TIMER_CLIENT_HEADER = 1,  /* first byte of a request -> end of its head */
	TIMER_CLIENT_BODY,        /* end of head -> end of body */
	TIMER_CLIENT_IDLE,        /* keep-alive wait */
	TIMER_CLIENT_SEND,        /* client not reading our reply */
	TIMER_CLIENT_HANDSHAKE,   /* TLS: accept -> handshake done */
	TIMER_UPSTREAM_CONNECT = 16,
	TIMER_UPSTREAM_FIRST_BYTE,
	TIMER_UPSTREAM_IDLE,      /* silence in the middle of a reply */
	TIMER_UPSTREAM_POOLED,    /* idle in the keep-alive pool */
};

/* No buffer is held while a connection waits: recv picks a provided
 * buffer only when bytes arrive. Bytes received but not yet parsed (read
 * ahead, pipelined requests) stay in that buffer: the "stash". */
struct stash {
	int32_t bid;              /* provided buffer id, -1: empty */
	uint32_t off, len;
};

/* One pending send: up to four pieces, advanced on partial completion. */
#define SENDQ_MAX_IOV 8
struct sendq {
	struct msghdr msg;
	struct iovec iov[SENDQ_MAX_IOV];
	int32_t bid;              /* provided buffer to return when sent, or -1 */
	bool posted;
};

enum client_state {
	CLIENT_IDLE,              /* keep-alive, no request started */
	CLIENT_HEAD,              /* reading a request head */
	CLIENT_BODY,              /* reading a request body */
	CLIENT_BUSY,              /* an exchange is answering the request */
	CLIENT_CLOSING,           /* shut down; freed when inflight == 0 */
	CLIENT_FREE,              /* back in the pool: a second free is a no-op */
};

#define CLIENT_AUTH_CACHE 64

struct client {
	struct shard *shard;
	int fd;
	uint8_t state;            /* enum client_state */
	bool recv_posted;
	bool close_after;         /* close once the current reply is sent */
	bool admin;               /* accepted on admin.addr: the admin API only */
	uint16_t inflight;
	struct timer timer;
	struct stash in;
	struct sendq out;
	struct exchange *ex;      /* the request being answered, or NULL */
	/* The key this connection authenticated last: an agent sends the same
	 * key on every request, and comparing it costs less than hashing it.
	 * Valid for one config generation. */
	const struct cfg_key *auth_key;
	uint64_t auth_generation;
	uint8_t auth_len;
	char auth_secret[CLIENT_AUTH_CACHE];
	struct client *prev, *next;   /* the shard's live list, or free list */
	struct client *next_starved;
	/* A TLS listener's connection: `in` holds ciphertext until mbedTLS has
	 * read it, and decrypted bytes wait in `plain` until parsed. */
	struct tls_conn *tls;
	struct stash plain;       /* a BUFS_PLAIN buffer */
};

enum upstream_state {
	UP_CONNECTING,
	UP_HANDSHAKE,             /* https: TLS handshake (under the connect timeout) */
	UP_BUSY,                  /* owned by an exchange */
	UP_IDLE,                  /* in its provider's keep-alive pool */
	UP_CLOSING,
};

struct upstream {
	struct shard *shard;
	int fd;
	uint8_t state;            /* enum upstream_state */
	bool recv_posted;
	bool reused;              /* served an earlier request */
	uint16_t inflight;
	int provider;             /* index in the generation below */
	uint64_t generation;      /* config generation it was opened under */
	struct timer timer;
	struct sendq out;
	struct exchange *ex;
	struct upstream *next;    /* pool or free list */
	struct upstream *next_starved;
	/* https: the session; ciphertext in `in` until mbedTLS has read it */
	struct tls_conn *tls;
	struct stash in;
};

enum exchange_state {
	EX_REQUEST,               /* reading the client's request */
	EX_CONNECT,               /* waiting for an upstream connection */
	EX_SEND,                  /* request going upstream */
	EX_AWAIT_HEAD,            /* waiting for the reply head */
	EX_RELAY,                 /* reply body flowing to the client */
	EX_LOCAL,                 /* sending a reply we generated */
};

/*
 * One request/response pair. Its buffers come with it from the shard's
 * exchange pool:
 *   req_head   compacted request head (limits.max_header_bytes)
 *   out        the head we send: upstream request, then the client reply head
 *   resp_head  compacted upstream reply head
 *   body       the request body: inline up to EX_INLINE_BODY, else heap
 */
#define EX_INLINE_BODY 16384
#define EX_MAX_SCOPES 6       /* run, key, user, team, org, grant */
#define EX_USAGE_TAIL 2048    /* usage sits at the end of a reply body */
#define EX_RESP_HEAD 16384

struct exchange {
	struct client *client;
	struct upstream *up;
	struct config *cfg;       /* generation the request was routed under */
	struct cfg_hold *hold;    /* the shard's use count for cfg */
	const struct cfg_model *model;
	const struct cfg_provider *provider;
	uint8_t state;            /* enum exchange_state */
	bool retried;             /* already retried on a fresh connection */
	bool up_reused;           /* the current upstream served earlier requests */
	bool resp_complete;       /* reply fully received */
	bool resp_keepalive;      /* upstream may be pooled after the reply */
	bool resp_extra;          /* upstream sent bytes past the reply */
	bool resp_close_delimited;/* reply body ends at upstream EOF */
	uint16_t status;          /* status sent to the client */
	uint64_t resp_bytes;      /* reply bytes received from upstream */
	/* the budget decision (net/decide.c); n_scopes == 0: not budgeted */
	const struct cfg_key *key;
	struct run *run;
	struct budget_scope *scopes[EX_MAX_SCOPES];
	const char *scope_kind[EX_MAX_SCOPES];    /* "run", "key", "user", "team", "org", "grant" */
	const char *scope_name[EX_MAX_SCOPES];
	uint8_t scope_mode[EX_MAX_SCOPES];        /* enum budget_mode */
	uint8_t n_scopes;
	uint8_t over;             /* bit i: scope i reserved past its limit (soft/advisory) */
	uint8_t scope_downgrade;  /* bit i: scope i's budget says on_exceed: downgrade */
	bool clamped;             /* the agent's max_tokens is above what we allow */
	const struct cfg_model *requested_model; /* on downgrade: what the agent asked for */
	const char *tags;         /* X-Budget-Tags, validated (in req head) */
	uint32_t tags_len;
	uint32_t idem_slot;       /* X-Budget-Idempotency-Key's table slot */
	bool idem_claimed;        /* this call claimed it: finish it at the end */
	bool run_held;            /* runs_begin() on ex->run: runs_end() at the end */
	struct grant *grant;      /* X-Budget-Grant-Token's grant, held (grants_begin) */
	bool replayed;            /* the reply repeats an earlier decision: no record */
	bool budget_api;          /* a /v1/budget call, not a model call: no call record */
	uint8_t replay_kind;      /* 1 + enum decision_kind of that decision; 0: none */
	uint8_t outcome;          /* enum decision_outcome, set when settled */
	uint8_t mode_in_force;    /* enum budget_mode, as X-Budget-Enforcement-Mode said */
	char problem_code[40];    /* code of the problem we answered with */
	struct stream *stream;    /* a metered stream's state (net/stream.c), or NULL */
	bool inject_usage;        /* include_usage added to the request: drop its chunk */
	bool stream_lease;        /* reserved_usd is extended as the stream goes */
	uint8_t blocked_by;       /* 1 + index of the scope that refused; 0: none */
	bool allowed;             /* authenticated and reserved */
	bool settled;             /* the reservation was committed or released */
	int64_t reserved_usd;     /* 0: nothing reserved */
	int64_t estimate_usd;
	int64_t actual_usd;       /* after settlement */
	uint64_t input_tokens, output_tokens, cached_tokens; /* what actual_usd prices */
	struct ledger_wait ledger_wait; /* the reply's end waits for its ledger record */
	bool ledger_hold;         /* its commit record is buffered: hold the reply's end */
	bool ledger_failed;       /* its record could not be buffered */
	uint64_t decision_id;
	uint64_t deadline_ms;     /* reservation TTL: the reply is cut after it */
	uint32_t max_output_tokens;
	uint32_t tail_start, tail_len; /* reply body tail kept for its usage */
	struct iovec req_iov[SENDQ_MAX_IOV]; /* the upstream request, kept for a retry */
	int req_iov_n;
	char *body;
	uint64_t body_len, body_cap;
	char *out;
	uint32_t out_len, out_cap;
	struct exchange *next_free;
	char *inline_body;        /* EX_INLINE_BODY bytes after the struct */
	uint32_t head_cap;        /* req_head capacity this exchange was built with */

	/* --- not cleared between requests: set up by http1_init(), or
	 * meaningful only in tail[tail_start, +tail_len) --- */
	struct http_msg req;
	struct http_msg resp;
	char tail[2 * EX_USAGE_TAIL];
	/* a run issued for this call alone (no X-Run-Id): its budget scope
	 * has one slot, private to this shard */
	struct run own_run;
	_Alignas(CACHELINE) unsigned char own_run_scope[BUDGET_SCOPE_SIZE(1)];
};

#endif
