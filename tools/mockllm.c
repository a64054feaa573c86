/*
 * mockllm.c — a mock LLM provider for tests, demos and benchmarks: the
 * command line, the listeners, the worker threads and the signals.
 *
 * mockllm answers the OpenAI (chat, legacy completions, embeddings) and
 * Anthropic (messages) APIs with deterministic text and usage that matches
 * it exactly; x-mock-* request headers ask for token counts, delays and
 * failures (mockllm_reply.c). It is built to never be the bottleneck of a
 * proxy benchmark, so it shares nothing between threads: each worker owns
 * an SO_REUSEPORT listening socket — the kernel spreads connections across
 * them — and runs its own epoll loop (mockllm_loop.c).
 *
 * The main thread binds every listener before any worker starts, so a bad
 * address fails at once (exit 2), prints "mockllm listening on ADDR:PORT"
 * when all are ready (with the real port if 0 was asked for, which lets
 * tests pick a free port without races), and then only waits for SIGTERM
 * or SIGINT, on which the process exits 0. Usage errors exit 1.
 *
 * With --tls-cert and --tls-key it serves the same over HTTPS (TLS 1.2,
 * mockllm_tls.c); the files are read and checked before anything is bound
 * (a bad certificate or key exits 2), and the ready line is unchanged.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <sys/resource.h>
#include <unistd.h>

#include "mockllm.h"

#define LISTEN_BACKLOG 4096

static const char usage_text[] =
	"usage: mockllm [--listen ADDR:PORT] [--threads N] [--tokens N]\n"
	"               [--token-delay-us N] [--tls-cert FILE --tls-key FILE] [--quiet]\n"
	"\n"
	"  --listen ADDR:PORT     listen here (default 127.0.0.1:8081; [::1]:PORT for IPv6;\n"
	"                         port 0 picks a free port, printed in the ready line)\n"
	"  --threads N            worker threads, one epoll loop each (default 1)\n"
	"  --tokens N             output tokens per reply (default 16)\n"
	"  --token-delay-us N     delay per output token (default 0)\n"
	"  --tls-cert FILE        serve HTTPS (TLS 1.2 only) with this PEM certificate chain\n"
	"  --tls-key FILE         and this PEM private key (RSA >= 2048 bits or ECDSA,\n"
	"                         unencrypted); both or neither\n"
	"  --quiet                no warnings and no exit summary\n"
	"\n"
	"Routes: POST .../v1/chat/completions, .../v1/completions, .../v1/embeddings,\n"
	".../v1/messages; GET /health; GET /mock/stats. Request headers: x-mock-tokens,\n"
	"x-mock-tokens-per-event, x-mock-token-delay-us, x-mock-first-byte-delay-ms,\n"
	"x-mock-chunked, x-mock-tool-call, x-mock-loop, x-mock-status, x-mock-reset-after,\n"
	"x-mock-garbage, x-mock-stall, x-mock-stall-after, x-mock-close.\n";

/* A whole decimal in [min, max]. Returns 0 or -EINVAL. */
static int parse_number(const char *s, uint64_t min, uint64_t max, uint64_t *out)
{
	if (!s || *s < '0' || *s > '9')
		return -EINVAL;
	errno = 0;
	char *end;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || *end || v < min || v > max)
		return -EINVAL;
	*out = v;
	return 0;
}

/* ADDR:PORT or [V6ADDR]:PORT, numeric (or "localhost"). Returns 0 or -EINVAL. */
static int parse_listen(const char *arg, struct mock_config *cfg)
{
	char host[INET6_ADDRSTRLEN];   /* "[host]" still fits cfg->host */
	const char *port;
	bool v6 = arg[0] == '[';
	if (v6) {
		const char *close = strchr(arg, ']');
		if (!close || close[1] != ':' || (size_t)(close - arg - 1) >= sizeof(host))
			return -EINVAL;
		memcpy(host, arg + 1, (size_t)(close - arg - 1));
		host[close - arg - 1] = '\0';
		port = close + 2;
	} else {
		const char *colon = strrchr(arg, ':');
		if (!colon || (size_t)(colon - arg) >= sizeof(host))
			return -EINVAL;
		memcpy(host, arg, (size_t)(colon - arg));
		host[colon - arg] = '\0';
		port = colon + 1;
		if (strcmp(host, "localhost") == 0)
			strcpy(host, "127.0.0.1");
	}
	uint64_t p;
	if (parse_number(port, 0, 65535, &p) < 0)
		return -EINVAL;
	memset(&cfg->addr, 0, sizeof(cfg->addr));
	if (v6) {
		struct sockaddr_in6 *a = (struct sockaddr_in6 *)&cfg->addr;
		a->sin6_family = AF_INET6;
		a->sin6_port = htons((uint16_t)p);
		if (inet_pton(AF_INET6, host, &a->sin6_addr) != 1)
			return -EINVAL;
		cfg->addr_len = sizeof(*a);
		snprintf(cfg->host, sizeof(cfg->host), "[%s]", host);
	} else {
		struct sockaddr_in *a = (struct sockaddr_in *)&cfg->addr;
		a->sin_family = AF_INET;
		a->sin_port = htons((uint16_t)p);
		if (inet_pton(AF_INET, host, &a->sin_addr) != 1)
			return -EINVAL;
		cfg->addr_len = sizeof(*a);
		snprintf(cfg->host, sizeof(cfg->host), "%s", host);
	}
	return 0;
}

/* Fills cfg from argv (the TLS file names into *cert and *key). Returns 0
 * to run, 1 for a usage error, -1 after --help. */
static int parse_args(int argc, char **argv, struct mock_config *cfg,
		      const char **cert, const char **key)
{
	static const struct option options[] = {
		{ "listen",         required_argument, NULL, 'l' },
		{ "threads",        required_argument, NULL, 't' },
		{ "tokens",         required_argument, NULL, 'n' },
		{ "token-delay-us", required_argument, NULL, 'd' },
		{ "tls-cert",       required_argument, NULL, 'c' },
		{ "tls-key",        required_argument, NULL, 'k' },
		{ "quiet",          no_argument,       NULL, 'q' },
		{ "help",           no_argument,       NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	if (parse_listen("127.0.0.1:8081", cfg) < 0)
		return 1;
	int opt;
	uint64_t v;
	while ((opt = getopt_long(argc, argv, "", options, NULL)) != -1) {
		int rc = 0;
		switch (opt) {
		case 'l': rc = parse_listen(optarg, cfg); break;
		case 't': rc = parse_number(optarg, 1, MOCK_MAX_THREADS, &v);
			  cfg->threads = (unsigned)v; break;
		case 'n': rc = parse_number(optarg, 0, MOCK_MAX_TOKENS, &v);
			  cfg->tokens = (uint32_t)v; break;
		case 'd': rc = parse_number(optarg, 0, 10 * 1000 * 1000, &v);
			  cfg->token_delay_us = (uint32_t)v; break;
		case 'c': *cert = optarg; break;
		case 'k': *key = optarg; break;
		case 'q': cfg->quiet = true; break;
		case 'h': fputs(usage_text, stdout); return -1;
		default:  rc = -EINVAL; optarg = NULL;
		}
		if (rc < 0) {
			if (optarg)
				fprintf(stderr, "mockllm: bad value '%s' for --%s\n", optarg,
					opt == 'l' ? "listen" : opt == 't' ? "threads" :
					opt == 'n' ? "tokens" : "token-delay-us");
			fputs(usage_text, stderr);
			return 1;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "mockllm: unexpected argument '%s'\n", argv[optind]);
		fputs(usage_text, stderr);
		return 1;
	}
	if (!*cert != !*key) {
		fprintf(stderr, "mockllm: --tls-cert and --tls-key go together\n");
		fputs(usage_text, stderr);
		return 1;
	}
	return 0;
}

static uint16_t config_port(const struct mock_config *cfg)
{
	if (cfg->addr.ss_family == AF_INET6)
		return ntohs(((const struct sockaddr_in6 *)&cfg->addr)->sin6_port);
	return ntohs(((const struct sockaddr_in *)&cfg->addr)->sin_port);
}

/*
 * One SO_REUSEPORT listener. The first one bound to port 0 writes the port
 * the kernel chose back into cfg, so the others join it. Returns fd or -errno.
 */
static int listen_socket(struct mock_config *cfg)
{
	int fd = socket(cfg->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	int one = 1;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0 ||
	    bind(fd, (struct sockaddr *)&cfg->addr, cfg->addr_len) < 0 ||
	    listen(fd, LISTEN_BACKLOG) < 0) {
		int err = -errno;
		close(fd);
		return err;
	}
	socklen_t len = cfg->addr_len;
	if (config_port(cfg) == 0 &&
	    getsockname(fd, (struct sockaddr *)&cfg->addr, &len) < 0) {
		int err = -errno;
		close(fd);
		return err;
	}
	return fd;
}

/* Benchmarks open many connections: take all the descriptors we may. */
static void raise_fd_limit(void)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
}

/* Binds every listener and prepares every worker. Returns 0 or -errno. */
static int workers_prepare(struct worker *workers, struct mock_config *cfg)
{
	for (unsigned i = 0; i < cfg->threads; i++) {
		struct worker *w = &workers[i];
		w->cfg = cfg;
		w->all = workers;
		w->index = i;
		w->lfd = listen_socket(cfg);
		if (w->lfd < 0)
			return w->lfd;
		int rc = worker_init(w);
		if (rc < 0)
			return rc;
	}
	return 0;
}

static void print_summary(const struct worker *workers, const struct mock_config *cfg)
{
	uint64_t accepted = 0, requests = 0, by_peer = 0;
	for (unsigned i = 0; i < cfg->threads; i++) {
		accepted += atomic_load(&workers[i].stats.accepted);
		requests += atomic_load(&workers[i].stats.requests);
		by_peer += atomic_load(&workers[i].stats.closed_by_peer);
	}
	fprintf(stderr, "mockllm: exiting: %llu connections, %llu requests, "
		"%llu closed by peer\n", (unsigned long long)accepted,
		(unsigned long long)requests, (unsigned long long)by_peer);
}

int main(int argc, char **argv)
{
	struct mock_config cfg = { .threads = 1, .tokens = 16 };
	const char *cert = NULL, *key = NULL;
	int rc = parse_args(argc, argv, &cfg, &cert, &key);
	if (rc != 0)
		return rc < 0 ? 0 : 1;
	if (cert && mock_tls_load(&cfg, cert, key) < 0)
		return 2;

	raise_fd_limit();
	signal(SIGPIPE, SIG_IGN);
	sigset_t stop;
	sigemptyset(&stop);
	sigaddset(&stop, SIGINT);
	sigaddset(&stop, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &stop, NULL);        /* inherited by the workers */
	request_parser_setup();
	reply_tables_init();

	size_t size = sizeof(struct worker) * cfg.threads;
	struct worker *workers = aligned_alloc(MOCK_CACHELINE, size);
	if (!workers) {
		fprintf(stderr, "mockllm: out of memory\n");
		return 2;
	}
	memset(workers, 0, size);
	rc = workers_prepare(workers, &cfg);
	if (rc < 0) {
		fprintf(stderr, "mockllm: listen on %s:%u: %s\n", cfg.host,
			config_port(&cfg), strerror(-rc));
		return 2;
	}
	for (unsigned i = 0; cfg.tls_cert && i < cfg.threads; i++)
		if (worker_tls_init(&workers[i]) < 0)
			return 2;
	for (unsigned i = 0; i < cfg.threads; i++) {
		rc = pthread_create(&workers[i].thread, NULL, worker_main, &workers[i]);
		if (rc != 0) {
			fprintf(stderr, "mockllm: pthread_create: %s\n", strerror(rc));
			return 2;
		}
	}
	fprintf(stderr, "mockllm listening on %s:%u\n", cfg.host, config_port(&cfg));

	int sig = 0;
	while (sigwait(&stop, &sig) != 0)
		;
	if (!cfg.quiet)
		print_summary(workers, &cfg);
	fflush(stderr);
	_exit(0);       /* the workers never return; nothing needs unwinding */
}
