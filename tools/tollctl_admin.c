/*
 * tollctl_admin.c — freeze, unfreeze, freezes, metrics: one HTTP/1.1
 * request to the admin listener (SPEC §1, §8), plain HTTP (the admin
 * listener is loopback by default), the token from $TOLLGATE_ADMIN_TOKEN,
 * the address from --admin or $TOLLGATE_ADMIN (http://HOST:PORT).
 *
 * The reply body is printed as tollgate wrote it (JSON, or Prometheus
 * text for metrics); a refusal prints the problem's detail on stderr.
 */
#include "tools/tollctl_admin.h"

#include <errno.h>
#include <netdb.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define REPLY_MAX (1u << 20)

struct opts {
	const char *admin, *scope, *id, *reason;
};

void tollctl_admin_usage(FILE *f)
{
	fprintf(f, "       tollctl freeze --scope run|key|user|team|org --id ID [--reason TEXT]\n"
		   "       tollctl unfreeze --scope KIND --id ID\n"
		   "       tollctl freezes | metrics\n"
		   "         (admin API: --admin http://HOST:PORT or $TOLLGATE_ADMIN, token in\n"
		   "          $TOLLGATE_ADMIN_TOKEN)\n");
}

int tollctl_admin_is(const char *cmd)
{
	return !strcmp(cmd, "freeze") || !strcmp(cmd, "unfreeze") || !strcmp(cmd, "freezes") ||
	       !strcmp(cmd, "metrics");
}

/* What the server accepts in a JSON string as is (admin_api.c). */
static int plain(const char *s)
{
	for (; *s; s++)
		if (*s < 0x20 || *s > 0x7e || *s == '"' || *s == '\\')
			return 0;
	return 1;
}

/* "http://host:port" into host and port. */
static int split_url(const char *url, char *host, size_t hcap, char *port, size_t pcap)
{
	if (strncmp(url, "http://", 7))
		return -1;
	const char *h = url + 7, *end = h + strcspn(h, "/");
	const char *colon = NULL;
	if (*h == '[') {
		const char *rb = memchr(h, ']', (size_t)(end - h));
		if (!rb)
			return -1;
		colon = rb + 1 < end && rb[1] == ':' ? rb + 1 : NULL;
		snprintf(host, hcap, "%.*s", (int)(rb - h - 1), h + 1);
	} else {
		colon = memchr(h, ':', (size_t)(end - h));
		snprintf(host, hcap, "%.*s", (int)((colon ? colon : end) - h), h);
	}
	snprintf(port, pcap, "%.*s", colon ? (int)(end - colon - 1) : 2, colon ? colon + 1 : "80");
	return host[0] ? 0 : -1;
}

static int connect_to(const char *url)
{
	char host[256], port[16];
	if (split_url(url, host, sizeof(host), port, sizeof(port))) {
		fprintf(stderr, "tollctl: --admin must be http://HOST:PORT, not '%s'\n", url);
		return -1;
	}
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *res;
	int rc = getaddrinfo(host, port, &hints, &res);
	if (rc) {
		fprintf(stderr, "tollctl: %s: %s\n", host, gai_strerror(rc));
		return -1;
	}
	int fd = -1;
	for (struct addrinfo *a = res; a && fd < 0; a = a->ai_next) {
		fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, 0);
		if (fd >= 0 && connect(fd, a->ai_addr, a->ai_addrlen)) {
			close(fd);
			fd = -1;
		}
	}
	freeaddrinfo(res);
	if (fd < 0)
		fprintf(stderr, "tollctl: cannot reach %s: %s\n", url, strerror(errno));
	return fd;
}

static int write_all(int fd, const char *p, size_t n)
{
	while (n) {
		ssize_t w = write(fd, p, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

/* One request; the reply (Connection: close) read to EOF. Returns the
 * HTTP status, 0 on transport failure. */
static int exchange(const char *url, const char *method, const char *path, const char *body,
		    char **reply_body)
{
	const char *token = getenv("TOLLGATE_ADMIN_TOKEN");
	int fd = connect_to(url);
	if (fd < 0)
		return 0;
	char head[1024], length[96] = "";
	size_t blen = body ? strlen(body) : 0;
	if (body)
		snprintf(length, sizeof(length),
			 "Content-Type: application/json\r\nContent-Length: %zu\r\n", blen);
	int n = snprintf(head, sizeof(head),
			 "%s %s HTTP/1.1\r\nHost: tollgate\r\nConnection: close\r\n"
			 "Authorization: Bearer %s\r\n%s\r\n",
			 method, path, token ? token : "", length);
	char *buf = malloc(REPLY_MAX + 1);
	size_t len = 0;
	int status = 0;
	if (buf && n > 0 && (size_t)n < sizeof(head) && !write_all(fd, head, (size_t)n) &&
	    (!body || !write_all(fd, body, blen))) {
		ssize_t r;
		while (len < REPLY_MAX && (r = read(fd, buf + len, REPLY_MAX - len)) != 0) {
			if (r < 0 && errno == EINTR)
				continue;
			if (r < 0)
				break;
			len += (size_t)r;
		}
		buf[len] = '\0';
		if (sscanf(buf, "HTTP/1.%*d %d", &status) != 1)
			status = 0;
	}
	close(fd);
	const char *sep = buf ? strstr(buf, "\r\n\r\n") : NULL;
	*reply_body = sep ? strdup(sep + 4) : NULL;
	free(buf);
	if (!status)
		fprintf(stderr, "tollctl: no HTTP reply from %s\n", url);
	return status;
}

static int parse_opts(int argc, char **argv, struct opts *o)
{
	for (int i = 1; i < argc; i++) {
		const char **slot = !strcmp(argv[i], "--admin") ? &o->admin :
				    !strcmp(argv[i], "--scope") ? &o->scope :
				    !strcmp(argv[i], "--id") ? &o->id :
				    !strcmp(argv[i], "--reason") ? &o->reason : NULL;
		if (!slot || i + 1 >= argc) {
			fprintf(stderr, "tollctl %s: unknown or incomplete option '%s'\n", argv[0],
				argv[i]);
			return -1;
		}
		*slot = argv[++i];
	}
	if (!o->admin)
		o->admin = getenv("TOLLGATE_ADMIN");
	if (!o->admin) {
		fprintf(stderr, "tollctl %s: give --admin http://HOST:PORT or set TOLLGATE_ADMIN\n",
			argv[0]);
		return -1;
	}
	return 0;
}

int tollctl_admin_main(int argc, char **argv)
{
	struct opts o = { 0 };
	if (parse_opts(argc, argv, &o))
		return 1;
	const char *cmd = argv[0];
	char body[1024];
	const char *method = "GET", *path = "/metrics", *payload = NULL;
	if (!strcmp(cmd, "freeze") || !strcmp(cmd, "unfreeze")) {
		if (!o.scope || !o.id || !plain(o.id) || (o.reason && !plain(o.reason))) {
			fprintf(stderr, "tollctl %s: needs --scope and --id (printable text, no quote "
				"or backslash; the same for --reason)\n", cmd);
			return 1;
		}
		snprintf(body, sizeof(body), "{\"scope\":\"%s\",\"id\":\"%s\"%s%s%s}", o.scope, o.id,
			 o.reason ? ",\"reason\":\"" : "", o.reason ? o.reason : "",
			 o.reason ? "\"" : "");
		method = "POST";
		path = cmd[0] == 'f' ? "/admin/freeze" : "/admin/unfreeze";
		payload = body;
	} else if (!strcmp(cmd, "freezes")) {
		path = "/admin/freezes";
	}
	char *reply = NULL;
	int status = exchange(o.admin, method, path, payload, &reply);
	if (!status) {
		free(reply);
		return 2;
	}
	FILE *out = status < 300 ? stdout : stderr;
	if (reply)
		fprintf(out, "%s%s", reply, reply[0] && reply[strlen(reply) - 1] != '\n' ? "\n" : "");
	free(reply);
	return status < 300 ? 0 : 1;
}
