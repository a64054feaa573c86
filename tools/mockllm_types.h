/*
 * mockllm_types.h — the structs, enums and limits shared by the mockllm
 * files (mockllm.h holds the functions).
 *
 * Ownership in one paragraph: the main thread fills one read-only
 * `struct mock_config` and an array of `struct worker`, one per thread.
 * A worker owns everything reachable from it — its epoll set, listening
 * socket, timer heap, connections and their buffers — and no other thread
 * touches those. The only cross-thread traffic is the statistics block at
 * the end of each worker, written by its owner with relaxed atomic stores
 * and summed by whichever worker answers GET /mock/stats.
 */
#ifndef MOCKLLM_TYPES_H
#define MOCKLLM_TYPES_H

#include <http_parser.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "core/defs.h"
#include "core/timer.h"

#define MOCK_CACHELINE          64
#define MOCK_MAX_HEADER_BYTES   (64u * 1024)         /* larger: 431 */
#define MOCK_MAX_BODY_BYTES     (64ull * 1024 * 1024) /* larger: 413 */
#define MOCK_MAX_TOKENS         (1u << 20)   /* clamp on --tokens / x-mock-tokens */
#define MOCK_MAX_THREADS        256
#define MOCK_MODEL_MAX          256          /* bytes of the raw JSON string */
#define MOCK_PATH_MAX           1024         /* longer request targets get 404 */
#define MOCK_HNAME_MAX          32           /* longer header names are not ours */
#define MOCK_HVALUE_MAX         32           /* longer values of our headers are ignored */
#define MOCK_READ_BYTES         (64 * 1024)  /* per-worker read buffer */
#define MOCK_BACKLOG_MAX        (256 * 1024) /* pipelined bytes kept while a reply runs */
#define MOCK_OUT_HIGH_WATER     (64 * 1024)  /* stop producing above this many unsent bytes */
#define MOCK_BUF_KEEP           (1024 * 1024) /* buffers above this are freed when idle */
#define MOCK_LINGER_NS          (1000ull * 1000 * 1000) /* lingering close: 1 s */
#define MOCK_FREE_CONNS_MAX     1024         /* connection structs cached per worker */
#define MOCK_TLS_SECRET         32           /* == TLS_TICKET_SECRET (mockllm_tls.c checks) */

/* A growable byte buffer. `data` is NULL until the first reservation. */
struct buf {
	char *data;
	size_t len;     /* bytes in use */
	size_t cap;     /* bytes allocated */
};

/* Command-line settings; read-only once the workers start. */
struct mock_config {
	struct sockaddr_storage addr;   /* where to listen (port filled in if 0 was asked) */
	socklen_t addr_len;
	char host[64];                  /* the ADDR part as given, for the ready line */
	unsigned threads;               /* --threads, 1..MOCK_MAX_THREADS */
	uint32_t tokens;                /* --tokens: default output tokens per reply */
	uint32_t token_delay_us;        /* --token-delay-us: default delay per token */
	bool quiet;                     /* --quiet: no warnings, no exit summary */
	/* --tls-cert / --tls-key: HTTPS when tls_cert is set. The PEM files
	 * as read (NUL-terminated, lengths include the NUL) and the session
	 * ticket secret, all read-only: each worker builds its own mbedTLS
	 * configuration from them (mockllm_tls.c). */
	char *tls_cert;
	size_t tls_cert_len;
	char *tls_key;
	size_t tls_key_len;
	uint8_t tls_secret[MOCK_TLS_SECRET];
};

/* What a request asks for, by path (and method for the two GET routes). */
enum route {
	ROUTE_NOT_FOUND = 0,
	ROUTE_CHAT,             /* POST .../v1/chat/completions (OpenAI) */
	ROUTE_COMPLETIONS,      /* POST .../v1/completions (OpenAI legacy) */
	ROUTE_EMBEDDINGS,       /* POST .../v1/embeddings (OpenAI) */
	ROUTE_MESSAGES,         /* POST .../v1/messages (Anthropic) */
	ROUTE_HEALTH,           /* GET /health */
	ROUTE_STATS,            /* GET /mock/stats */
};

/*
 * The x-mock-* request headers, one int64_t each so one table can parse
 * them all (see knob_table in mockllm_http.c). -1 means "not given" for
 * the optional ones; defaults are filled in at message begin.
 */
struct knobs {
	int64_t tokens;                 /* x-mock-tokens (default --tokens) */
	int64_t tokens_per_event;       /* x-mock-tokens-per-event (default 1) */
	int64_t token_delay_us;         /* x-mock-token-delay-us (default --token-delay-us) */
	int64_t first_byte_delay_ms;    /* x-mock-first-byte-delay-ms (default 0) */
	int64_t status;                 /* x-mock-status, -1: none */
	int64_t reset_after;            /* x-mock-reset-after, -1: none */
	int64_t stall_after;            /* x-mock-stall-after, -1: none */
	int64_t chunked;                /* x-mock-chunked: chunked non-stream body */
	int64_t tool_call;              /* x-mock-tool-call: OpenAI chat tool call */
	int64_t loop;                   /* x-mock-loop: repeat one sentence */
	int64_t garbage;                /* x-mock-garbage: junk then close */
	int64_t stall;                  /* x-mock-stall: never answer */
	int64_t close;                  /* x-mock-close: answer then close */
};

/* The fields the bounded JSON scanner takes from a request body. */
struct body_fields {
	const char *model;      /* raw JSON string content, still escaped; NULL if absent */
	uint32_t model_len;
	bool stream;            /* "stream": true */
	bool include_usage;     /* "stream_options": {"include_usage": true} */
	int64_t max_tokens;     /* "max_tokens" / "max_completion_tokens"; -1 if absent */
};

/* One HTTP request as the parser callbacks assemble it. */
struct request {
	enum route route;
	bool keep_alive;        /* per HTTP/1.x rules, known at message complete */
	bool http10;            /* HTTP/1.0 request: no chunked replies */
	bool expect_continue;   /* Expect: 100-continue */
	bool path_overflow;     /* target longer than MOCK_PATH_MAX */
	bool in_value;          /* last header callback was a value */
	bool hname_overflow;    /* current header name longer than MOCK_HNAME_MAX */
	bool hvalue_overflow;   /* current header value longer than MOCK_HVALUE_MAX */
	uint16_t path_len;
	uint8_t hname_len;
	uint8_t hvalue_len;
	int too_large;          /* 413 set by a callback that refused the body */
	uint64_t body_len;      /* decoded body bytes (conn->body holds them) */
	struct knobs knobs;
	struct body_fields body;        /* filled by the dispatcher */
	char hname[MOCK_HNAME_MAX];     /* lower-cased name being accumulated */
	char hvalue[MOCK_HVALUE_MAX];   /* value being accumulated */
	char path[MOCK_PATH_MAX];       /* request target, query string included */
};

/* What the reply generator will produce for the current request. */
enum reply_action {
	ACT_HEALTH,             /* 200 "ok" */
	ACT_STATS,              /* 200 counters JSON */
	ACT_NOT_FOUND,          /* 404 JSON error */
	ACT_BAD_REQUEST,        /* 400 JSON error in the provider's shape */
	ACT_STATUS,             /* x-mock-status: that status, JSON error */
	ACT_GARBAGE,            /* 200 bytes of junk, then close */
	ACT_COMPLETE,           /* normal non-stream reply */
	ACT_STREAM,             /* SSE reply */
};

/* Where a reply is; the generator (reply_pump) resumes from here. */
enum reply_phase {
	REPLY_IDLE = 0,         /* no reply in progress: parse the next request */
	REPLY_WAIT,             /* first-byte (and, non-stream, generation) delay */
	REPLY_START,            /* emit the head (stream) or everything (non-stream) */
	REPLY_CONTENT,          /* emit content events; sent_tokens says where */
	REPLY_FINISH,           /* emit the closing events and terminator */
};

/* How the body of a reply is delimited on the wire. */
enum framing {
	FRAME_LENGTH,           /* Content-Length */
	FRAME_CHUNKED,          /* Transfer-Encoding: chunked */
	FRAME_EOF,              /* HTTP/1.0 stream: delimited by close */
};

struct reply {
	enum reply_phase phase;
	enum reply_action action;
	enum framing framing;
	bool closing;           /* send Connection: close and close after */
	bool waited;            /* the delay before the next emission has elapsed */
	bool capped;            /* max_tokens cut the reply: "length"/"max_tokens" */
	uint64_t id;            /* <n> in chatcmpl-mock-<n> / msg_mock_<n> */
	uint32_t total_tokens;  /* words this reply sends */
	uint32_t sent_tokens;   /* words sent so far (streams) */
	uint32_t events_sent;   /* content events sent so far (streams) */
	uint32_t prompt_tokens; /* ceil(body bytes / 4) */
	const char *error;      /* ACT_BAD_REQUEST message (static string) */
};

/* A connection's lifecycle; replies run only in CONN_READING. */
enum conn_state {
	CONN_READING = 0,       /* serving requests */
	CONN_CLOSING,           /* flush the output, then lingering close */
	CONN_DRAINING,          /* write side shut; discard input until EOF or timeout */
	CONN_RESETTING,         /* flush the output, then RST */
	CONN_STALLED,           /* answer nothing more; wait for the peer to close */
};

struct worker;
struct conn_tls;        /* mockllm_tls.c */
struct worker_tls;      /* mockllm_tls.c */

struct conn {
	struct worker *w;
	int fd;
	enum conn_state state;
	bool can_read;          /* edge-triggered: the socket may have input */
	bool can_write;         /* edge-triggered: the socket may take output */
	bool peer_hup;          /* EPOLLRDHUP/HUP/ERR seen: read until EOF */
	bool runnable;          /* queued on w->runnable for another turn */
	struct timer timer;     /* one deadline (ns) in w->timers, when armed */
	struct conn *next;      /* free list or runnable list */
	struct conn_tls *tls;   /* the TLS session, NULL on a plain listener */
	http_parser parser;     /* parser.data points back here */
	struct reply reply;
	size_t in_off;          /* parsed bytes at the front of `in` */
	struct buf in;          /* unparsed pipelined bytes (usually empty) */
	size_t out_sent;        /* bytes of `out` already written */
	struct buf out;         /* response bytes not yet written */
	struct buf body;        /* the current request's decoded body */
	struct request req;
};

/* Per-worker counters; written only by the owner, read by any worker. */
struct mock_counters {
	_Atomic uint64_t accepted;      /* connections accepted ever */
	_Atomic uint64_t closed;        /* connections closed ever */
	_Atomic uint64_t requests;      /* API requests answered (not /health, /mock/stats) */
	_Atomic uint64_t closed_by_peer;/* connections the peer closed or reset */
};

struct worker {
	/* Owner-only fields. */
	const struct mock_config *cfg;
	struct worker *all;     /* every worker, for /mock/stats */
	unsigned index;
	int epfd;
	int lfd;                /* this worker's SO_REUSEPORT listener */
	int tfd;                /* timerfd armed at the earliest deadline */
	uint64_t armed_ns;      /* deadline tfd is armed for, 0 when disarmed */
	uint64_t accept_resume_ns;      /* accept paused (EMFILE) until then, or 0 */
	uint64_t seq;           /* replies started, for ids */
	struct timer_heap timers;
	struct conn *free_conns;
	uint32_t nfree;
	struct conn *runnable;  /* connections that yielded with work left */
	char *rbuf;             /* MOCK_READ_BYTES, shared by this worker's reads */
	struct buf scratch;     /* body of the reply being built */
	struct worker_tls *tls; /* this worker's TLS context, NULL without --tls-cert */
	pthread_t thread;
	/* Read by other workers: on its own cache line. */
	struct mock_counters stats __attribute__((aligned(MOCK_CACHELINE)));
};

#endif
