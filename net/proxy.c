/*
 * proxy.c — one request/response exchange between an agent and a provider.
 *
 *   EX_REQUEST --whole request--> route --local--> EX_LOCAL ------+
 *        |                          |                             |
 *        |                      EX_CONNECT -> EX_SEND -> EX_AWAIT_HEAD
 *        |                                                   |
 *        +--framing error--> EX_LOCAL               EX_RELAY <+
 *                                                       |
 *                                      reply done: client_reply_done()
 *
 * The request body is buffered (it must be read whole to route and, later,
 * to price the call); the reply is relayed as it arrives: its head is
 * rewritten (hop-by-hop fields dropped), its body bytes go to the agent
 * untouched, straight from the buffer the kernel filled, one read and one
 * send in flight, so a slow agent slows the provider instead of growing
 * memory. Every path ends in exactly one of client_reply_done() (the reply
 * is complete) or client_abort() (it cannot be), which frees the exchange.
 */
#include "net/proxy.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include "core/config.h"
#include "core/json_scan.h"
#include "core/log.h"
#include "ledger/writer.h"
#include "core/shard.h"
#include "net/admin_api.h"
#include "net/client.h"
#include "net/decide.h"
#include "net/grants_api.h"
#include "net/http1.h"
#include "net/outcomes_api.h"
#include "net/stream.h"
#include "net/upstream.h"

/* ---- the exchange pool ---- */

#define EX_POOL_KEEP 256     /* free exchanges kept per shard */

static int on_request_body(struct http_msg *m, const char *data, size_t len);

static size_t exchange_size(uint32_t head_cap)
{
	return sizeof(struct exchange) + head_cap /* req head */ +
	       head_cap + 4096 /* out */ + EX_RESP_HEAD + EX_INLINE_BODY;
}

struct exchange *exchange_get(struct shard *s)
{
	uint32_t head_cap = s->cfg->limits.max_header_bytes;
	struct exchange *ex = s->ex_free;
	if (ex && ex->head_cap == head_cap) {
		s->ex_free = ex->next_free;
	} else {
		if (s->ex_live >= s->cfg->limits.max_requests)
			return NULL;
		ex = malloc(exchange_size(head_cap));
		if (!ex)
			return NULL;
		s->n_exchanges++;
	}
	char *mem = (char *)(ex + 1);
	memset(ex, 0, offsetof(struct exchange, req));
	ex->head_cap = head_cap;
	char *req_head = mem;
	ex->out = req_head + head_cap;
	ex->out_cap = head_cap + 4096;
	char *resp_head = ex->out + ex->out_cap;
	ex->inline_body = resp_head + EX_RESP_HEAD;
	ex->body = ex->inline_body;
	ex->body_cap = EX_INLINE_BODY;
	http1_init(&ex->req, HTTP_REQUEST, req_head, head_cap, on_request_body, ex);
	http1_init(&ex->resp, HTTP_RESPONSE, resp_head, EX_RESP_HEAD, NULL, ex);
	ex->hold = s->holds;
	ex->hold->users++;
	ex->cfg = ex->hold->cfg;
	/* every reply to an agent names its budget decision, even one made
	 * before the budget was looked at */
	if (ex->cfg->n_keys)
		ex->decision_id = (uint64_t)s->id << 48 | ++s->decisions;
	s->ex_live++;
	return ex;
}

static void exchange_put(struct shard *s, struct exchange *ex)
{
	ledger_wait_cancel(&ex->ledger_wait);   /* its agent left while it waited */
	decide_settle(ex);
	if (ex->stream)
		stream_free(ex);
	if (ex->body != ex->inline_body)
		free(ex->body);
	struct cfg_hold *hold = ex->hold;
	if (--hold->users == 0 && hold != s->holds) {
		/* last user of a retired generation */
		for (struct cfg_hold **pp = &s->holds; *pp; pp = &(*pp)->next) {
			if (*pp == hold) {
				*pp = hold->next;
				break;
			}
		}
		shard_hold_free(hold);
	}
	s->ex_live--;
	/* Keep a warm pool, but give a burst's worth back: idle keep-alive
	 * connections must not pin memory sized for their peak. */
	if (ex->head_cap != s->cfg->limits.max_header_bytes ||
	    s->n_exchanges - s->ex_live > EX_POOL_KEEP) {
		free(ex);
		s->n_exchanges--;
		return;
	}
	ex->next_free = s->ex_free;
	s->ex_free = ex;
}

static void exchange_finish(struct exchange *ex);

static void finish_written(struct ledger_wait *wt, int err)
{
	struct exchange *ex = container_of(wt, struct exchange, ledger_wait);
	if (err)
		client_abort(ex->client);   /* not on disk: no clean end for the agent */
	else
		exchange_finish(ex);
}

/* Ends the exchange with a complete reply: the connection lives on. A
 * reply whose end was not a send (the provider's close, or a last read
 * with no bytes for the agent) is settled here, and its commit record
 * written, before the agent's connection can be closed or reused. */
static void exchange_finish(struct exchange *ex)
{
	struct client *c = ex->client;
	struct shard *s = c->shard;
	decide_settle(ex);
	if (ex->ledger_failed) {
		client_abort(c);
		return;
	}
	if (ex->ledger_hold) {
		ex->ledger_hold = false;
		ex->ledger_wait.done = finish_written;
		ledger_wait_add(s->ledger, &ex->ledger_wait);
		return;
	}
	if (ex->up) {
		struct upstream *u = ex->up;
		ex->up = NULL;
		upstream_release(u, ex->resp_complete && !ex->resp_extra &&
				 http_should_keep_alive(&ex->resp.parser));
	}
	if (ex->status >= 500)
		s->stats.errors_5xx++;
	else if (ex->status >= 400)
		s->stats.errors_4xx++;
	exchange_put(s, ex);
	client_reply_done(c);
}

void proxy_client_gone(struct exchange *ex)
{
	struct shard *s = ex->client->shard;
	if (ex->up) {
		/* Mid-reply: the provider connection cannot be reused. */
		upstream_close(ex->up);
		ex->up = NULL;
	}
	exchange_put(s, ex);
}

/* ---- the request ---- */

static int on_request_body(struct http_msg *m, const char *data, size_t len)
{
	struct exchange *ex = m->owner;
	uint64_t max = ex->client->shard->cfg->limits.max_body_bytes;
	uint64_t need = ex->body_len + len;
	if (need > max)
		return 413;
	if (need > ex->body_cap) {
		uint64_t cap = MAX(need, MIN(ex->body_cap * 2, max));
		char *p = ex->body == ex->inline_body ? malloc(cap) : realloc(ex->body, cap);
		if (!p)
			return 503;
		if (ex->body == ex->inline_body)
			memcpy(p, ex->body, ex->body_len);
		ex->body = p;
		ex->body_cap = cap;
	}
	memcpy(ex->body + ex->body_len, data, len);
	ex->body_len = need;
	return 0;
}

void proxy_request_head(struct exchange *ex)
{
	struct client *c = ex->client;
	const struct cfg_limits *lim = &c->shard->cfg->limits;
	http_parser *p = &ex->req.parser;
	/* Refuse an oversized body before reading a byte of it. */
	if (!(p->flags & F_CHUNKED) && p->content_length != ULLONG_MAX &&
	    p->content_length > lim->max_body_bytes) {
		c->close_after = true;
		reply_problem(ex, 413, "body_too_large",
			      "the request body is larger than limits.max_body_bytes");
		return;
	}
	uint32_t len;
	const char *expect = http1_field(&ex->req.head, "expect", &len);
	if (expect) {
		if (len != 12 || strncasecmp(expect, "100-continue", 12)) {
			c->close_after = true;
			reply_problem(ex, 417, "invalid_request", "unsupported Expect");
			return;
		}
		/* Tiny and rare: written directly, not worth an SQE. */
		static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
		ssize_t w = send(c->fd, cont, sizeof(cont) - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
		(void)w;
	}
}

void proxy_reply_error(struct exchange *ex, unsigned status)
{
	switch (status) {
	case 408:
		reply_problem(ex, 408, "request_timeout", "the request was not received in time");
		break;
	case 413:
		reply_problem(ex, 413, "body_too_large",
			      "the request body is larger than limits.max_body_bytes");
		break;
	case 431:
		reply_problem(ex, 431, "headers_too_large",
			      "the request head is larger than limits.max_header_bytes");
		break;
	case 503:
		reply_problem(ex, 503, "overloaded", "no memory for the request body");
		break;
	default:
		reply_problem(ex, 400, "invalid_request", "malformed HTTP/1.1 request");
		break;
	}
}

/* ---- routing ---- */

struct route {
	const char *path;
	enum provider_format format;
};

static const struct route routes[] = {
	{ "/v1/chat/completions", FORMAT_OPENAI },
	{ "/v1/completions", FORMAT_OPENAI },
	{ "/v1/embeddings", FORMAT_OPENAI },
	{ "/v1/messages", FORMAT_ANTHROPIC },
};

static const struct route *find_route(const char *path, size_t len)
{
	for (size_t i = 0; i < ARRAY_SIZE(routes); i++)
		if (strlen(routes[i].path) == len && !memcmp(routes[i].path, path, len))
			return &routes[i];
	return NULL;
}

/* True if field i is named in a Connection field of the same head: its
 * sender declared it hop-by-hop (RFC 9110 7.6.1), so it is not passed on. */
static bool field_listed_in_connection(const struct http_head *h, uint16_t i)
{
	const char *name = http1_str(h, h->fields[i].name);
	size_t name_len = h->fields[i].name.len;
	for (uint16_t f = 0; f < h->n_fields; f++) {
		if (!http1_field_is(h, f, "connection"))
			continue;
		const char *v = http1_str(h, h->fields[f].value);
		const char *end = v + h->fields[f].value.len;
		while (v < end) {
			while (v < end && (*v == ',' || *v == ' ' || *v == '\t'))
				v++;
			const char *token = v;
			while (v < end && *v != ',' && *v != ' ' && *v != '\t')
				v++;
			if ((size_t)(v - token) == name_len && !strncasecmp(token, name, name_len))
				return true;
		}
	}
	return false;
}

/* Request fields that never go upstream: hop-by-hop ones, framing we redo,
 * and the agent's credentials. */
static bool field_dropped_upstream(const struct http_head *h, uint16_t i)
{
	static const char *const dropped[] = {
		"host", "connection", "keep-alive", "proxy-connection",
		"proxy-authorization", "te", "trailer", "transfer-encoding",
		"upgrade", "content-length", "expect", "authorization", "x-api-key",
	};
	for (size_t d = 0; d < ARRAY_SIZE(dropped); d++)
		if (http1_field_is(h, i, dropped[d]))
			return true;
	return field_listed_in_connection(h, i);
}

/* Appends to ex->out; false when it does not fit. */
static bool out_put(struct exchange *ex, const char *data, size_t len)
{
	if (ex->out_len + len > ex->out_cap)
		return false;
	memcpy(ex->out + ex->out_len, data, len);
	ex->out_len += (uint32_t)len;
	return true;
}

static bool out_str(struct exchange *ex, const char *s)
{
	return out_put(ex, s, strlen(s));
}

static bool out_fmt(struct exchange *ex, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static bool out_fmt(struct exchange *ex, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(ex->out + ex->out_len, ex->out_cap - ex->out_len, fmt, ap);
	va_end(ap);
	if (n < 0 || (uint32_t)n >= ex->out_cap - ex->out_len)
		return false;
	ex->out_len += (uint32_t)n;
	return true;
}

/* Copies the fields of h that `dropped` keeps, as "Name: value" lines. */
static bool out_fields(struct exchange *ex, const struct http_head *h,
		       bool (*dropped)(const struct http_head *, uint16_t))
{
	for (uint16_t i = 0; i < h->n_fields; i++) {
		if (dropped(h, i))
			continue;
		const struct http_field *f = &h->fields[i];
		if (!out_put(ex, http1_str(h, f->name), f->name.len) || !out_str(ex, ": ") ||
		    !out_put(ex, http1_str(h, f->value), f->value.len) || !out_str(ex, "\r\n"))
			return false;
	}
	return true;
}

/* The body as sent upstream: the model name swapped for upstream_model
 * when the config maps it, or for the alternative a downgrade chose; and
 * for an OpenAI stream whose agent did not ask for usage, include_usage
 * added (SPEC §3), so the stream reports what it cost. Fills iov[0..5),
 * returns the count. */
static int body_iov(struct exchange *ex, const struct json_top *top, struct iovec *iov)
{
	static const char usage_opt[] = ",\"stream_options\":{\"include_usage\":true}";
	const char *m = ex->model->upstream_model;
	if (!m && ex->requested_model)
		m = ex->model->name;
	int n = 0;
	size_t from = 0;
	if (m) {
		iov[n++] = (struct iovec){ ex->body, top->model.off };
		iov[n++] = (struct iovec){ (void *)m, strlen(m) };
		from = top->model.off + top->model.len;
	}
	if (ex->inject_usage) {
		/* before the object's closing brace (a streaming body has members) */
		iov[n++] = (struct iovec){ ex->body + from, top->end_of_object - from };
		iov[n++] = (struct iovec){ (void *)usage_opt, sizeof(usage_opt) - 1 };
		from = top->end_of_object;
	}
	if (ex->body_len > from)
		iov[n++] = (struct iovec){ ex->body + from, ex->body_len - from };
	return n;
}

static uint64_t iov_bytes(const struct iovec *iov, int n)
{
	uint64_t total = 0;
	for (int i = 0; i < n; i++)
		total += iov[i].iov_len;
	return total;
}

/* Writes the upstream request head into ex->out. */
static bool build_upstream_head(struct exchange *ex, const char *path_tail,
				size_t tail_len, uint64_t content_length)
{
	const struct cfg_provider *p = ex->provider;
	const struct http_head *h = &ex->req.head;
	/* The reply's body is relayed in the framing the provider chose, and an
	 * HTTP/1.0 agent cannot read chunked framing: ask in HTTP/1.0 for it,
	 * so that the provider frames by length or by close instead. */
	bool http10 = ex->req.parser.http_major == 1 && ex->req.parser.http_minor == 0;
	ex->out_len = 0;
	bool ok = out_str(ex, "POST ") && out_put(ex, p->path_prefix, p->path_prefix_len) &&
		  out_put(ex, path_tail, tail_len) &&
		  out_str(ex, http10 ? " HTTP/1.0\r\nHost: " : " HTTP/1.1\r\nHost: ") &&
		  out_str(ex, p->host);
	if (ok && p->port != (p->tls ? 443 : 80))
		ok = out_fmt(ex, ":%u", p->port);
	ok = ok && out_str(ex, "\r\n");
	ok = ok && out_fields(ex, h, field_dropped_upstream);
	if (ok && p->api_key)
		ok = p->format == FORMAT_ANTHROPIC ?
			out_fmt(ex, "x-api-key: %s\r\n", p->api_key) :
			out_fmt(ex, "Authorization: Bearer %s\r\n", p->api_key);
	return ok && out_fmt(ex, "Content-Length: %llu\r\n\r\n",
			     (unsigned long long)content_length);
}

static bool method_is(struct exchange *ex, unsigned method, unsigned want)
{
	bool get = want == HTTP_GET;
	if (method == want || (get && method == HTTP_HEAD))
		return true;
	reply_problem(ex, 405, "method_not_allowed",
		      want == HTTP_GET ? "use GET" : want == HTTP_POST ? "use POST" : "use DELETE");
	return false;
}

/* /v1/budget[...] (rest is what follows "/v1/budget"). */
static void budget_route(struct exchange *ex, const char *rest, size_t len, unsigned method)
{
	if (len == 0) {
		if (method_is(ex, method, HTTP_GET))
			decide_budget_state(ex);
	} else if (len > 6 && !memcmp(rest, "/runs/", 6)) {
		if (method_is(ex, method, HTTP_GET))
			decide_run_state(ex, rest + 6, len - 6);
	} else if (len == 7 && !memcmp(rest, "/grants", 7)) {
		if (method_is(ex, method, HTTP_POST))
			grants_api_open(ex);
	} else if (len > 8 && !memcmp(rest, "/grants/", 8)) {
		if (method == HTTP_DELETE)
			grants_api_close(ex, rest + 8, len - 8);
		else if (method_is(ex, method, HTTP_GET))
			grants_api_get(ex, rest + 8, len - 8);
	} else if (len == 9 && !memcmp(rest, "/outcomes", 9)) {
		if (method_is(ex, method, HTTP_POST))
			outcomes_api_post(ex);
	} else {
		reply_problem(ex, 404, "not_found", "no such route");
	}
}

void proxy_request(struct exchange *ex)
{
	struct shard *s = ex->client->shard;
	const struct http_head *h = &ex->req.head;
	s->stats.requests++;
	const char *url = http1_str(h, h->url);
	const char *query = memchr(url, '?', h->url.len);
	size_t path_len = query ? (size_t)(query - url) : h->url.len;
	unsigned method = ex->req.parser.method;

	if (ex->client->admin) {
		admin_route(ex, url, path_len, method);
		return;
	}
	if (path_len == 10 && !memcmp(url, "/v1/models", 10)) {
		if (method != HTTP_GET && method != HTTP_HEAD)
			reply_problem(ex, 405, "method_not_allowed", "use GET");
		else
			reply_models(ex);
		return;
	}
	if (path_len >= 10 && !memcmp(url, "/v1/budget", 10)) {
		ex->budget_api = true;
		budget_route(ex, url + 10, path_len - 10, method);
		return;
	}
	if (path_len > 18 && !memcmp(url, "/budget/decisions/", 18)) {
		if (method != HTTP_GET && method != HTTP_HEAD)
			reply_problem(ex, 405, "method_not_allowed", "use GET");
		else
			decide_decision_state(ex, url + 18, path_len - 18);
		return;
	}
	const struct route *route = find_route(url, path_len);
	if (!route) {
		reply_problem(ex, 404, "not_found", "no such route");
		return;
	}
	if (method != HTTP_POST) {
		reply_problem(ex, 405, "method_not_allowed", "use POST");
		return;
	}
	struct json_top top;
	int rc = json_scan_top(ex->body, ex->body_len, &top);
	if (rc) {
		reply_problem(ex, 400, "invalid_json",
			      rc == -E2BIG ? "the body nests JSON too deeply" :
			      "the body is not a JSON object");
		return;
	}
	if (!top.model.present || ex->body[top.model.off - 1] != '"' || top.model.escaped ||
	    top.model.len == 0) {
		reply_problem(ex, 400, "invalid_request", "\"model\" must be a plain string");
		return;
	}
	ex->model = config_find_model(ex->cfg, ex->body + top.model.off, top.model.len);
	if (!ex->model) {
		reply_problem(ex, 404, "unknown_model", "the model is not in the configuration");
		return;
	}
	ex->provider = ex->model->provider;
	if (ex->provider->format != route->format) {
		reply_problem(ex, 400, "invalid_request",
			      ex->provider->format == FORMAT_ANTHROPIC ?
			      "this model speaks the Anthropic API: use /v1/messages" :
			      "this model speaks the OpenAI API: use /v1/chat/completions");
		return;
	}
	if (!decide_request(ex, &top, !strcmp(route->path, "/v1/embeddings")))
		return;
	struct iovec body[5];
	int n_body = body_iov(ex, &top, body);
	/* path after "/v1", query included */
	if (!build_upstream_head(ex, url + 3, h->url.len - 3, iov_bytes(body, n_body))) {
		reply_problem(ex, 431, "headers_too_large", "the request head is too large to forward");
		return;
	}
	/* Kept until the reply starts, so a stale pooled connection can be retried. */
	ex->req_iov[0] = (struct iovec){ ex->out, ex->out_len };
	memcpy(ex->req_iov + 1, body, sizeof(*body) * (size_t)n_body);
	ex->req_iov_n = 1 + n_body;
	ex->state = EX_CONNECT;
	upstream_acquire(ex);
}

/* ---- the reply ---- */

void proxy_upstream_ready(struct exchange *ex)
{
	struct upstream *u = ex->up;
	ex->state = EX_SEND;
	ex->up_reused = u->reused;
	/* One deadline covers sending the request and the first reply byte. */
	shard_timer_arm(u->shard, &u->timer, TIMER_UPSTREAM_FIRST_BYTE,
			ex->provider->timeout_ms);
	upstream_send(u, ex->req_iov, ex->req_iov_n);
}

void proxy_upstream_sent(struct exchange *ex)
{
	if (ex->state == EX_SEND)
		ex->state = EX_AWAIT_HEAD;
}

/* Reply fields we do not pass on: hop-by-hop ones. Framing fields stay,
 * whatever Connection lists, because the body is relayed byte for byte in
 * its original framing. */
static bool field_dropped_downstream(const struct http_head *h, uint16_t i)
{
	if (http1_field_is(h, i, "transfer-encoding") || http1_field_is(h, i, "content-length"))
		return false;
	return http1_field_is(h, i, "connection") || http1_field_is(h, i, "keep-alive") ||
	       http1_field_is(h, i, "proxy-connection") || field_listed_in_connection(h, i);
}

/* A metered stream is re-framed by tollgate: the provider's framing goes. */
static bool field_dropped_restream(const struct http_head *h, uint16_t i)
{
	return http1_field_is(h, i, "transfer-encoding") || http1_field_is(h, i, "content-length") ||
	       field_dropped_downstream(h, i);
}

static bool build_client_head(struct exchange *ex)
{
	const struct http_head *h = &ex->resp.head;
	unsigned status = ex->resp.parser.status_code;
	ex->out_len = 0;
	bool ok = out_fmt(ex, "HTTP/1.1 %u %s\r\n", status, http1_reason(status));
	ok = ok && out_fields(ex, h, ex->stream ? field_dropped_restream : field_dropped_downstream);
	ok = ok && (!ex->stream || stream_head_framing(ex));
	if (ok) {
		size_t n = decide_headers(ex, ex->out + ex->out_len, ex->out_cap - ex->out_len);
		ok = n > 0 || !ex->cfg->n_keys;
		ex->out_len += (uint32_t)n;
	}
	if (ok && ex->client->close_after)
		ok = out_str(ex, "Connection: close\r\n");
	return ok && out_str(ex, "\r\n");
}

static void relay_body(struct exchange *ex, const char *data, size_t len, int32_t bid)
{
	struct shard *s = ex->client->shard;
	size_t n = http1_feed(&ex->resp, data, len);
	if (ex->resp.event == HTTP_ERROR) {
		/* Broken framing mid-body: the agent cannot be given a whole reply. */
		log_warn("provider %s sent a malformed reply body", ex->provider->name);
		ring_buf_return(&s->ring, bid);
		client_abort(ex->client);
		return;
	}
	if (ex->resp.event == HTTP_MESSAGE_DONE) {
		ex->resp_complete = true;
		ex->resp_extra = n < len;
	}
	if (!n) {
		ring_buf_return(&s->ring, bid);
		proxy_client_sent(ex);
		return;
	}
	client_send(ex->client, NULL, 0, data, n, bid);
}

static void reply_head_arrived(struct exchange *ex, const char *data, size_t len,
			       size_t head_end, int32_t bid)
{
	struct client *c = ex->client;
	http_parser *p = &ex->resp.parser;
	http1_resume(&ex->resp);
	/* A body that ends only when the provider closes cannot be re-framed
	 * for keep-alive: the agent's connection closes after it too. */
	if (http1_body_until_eof(&ex->resp)) {
		ex->resp_close_delimited = true;
		c->close_after = true;
	}
	ex->status = (uint16_t)p->status_code;
	if (stream_wants(ex) && !stream_start(ex)) {
		ring_buf_return(&c->shard->ring, bid);
		log_error("no memory to meter a stream: refused");
		reply_problem(ex, 503, "no_memory", "the stream cannot be metered: retry");
		return;
	}
	if (!build_client_head(ex)) {
		ring_buf_return(&c->shard->ring, bid);
		reply_problem(ex, 502, "upstream_failed", "the provider's reply head is too large");
		return;
	}
	ex->state = EX_RELAY;
	if (ex->stream) {
		stream_relay(ex, (char *)data + head_end, len - head_end, bid, ex->out, ex->out_len);
		return;
	}
	/* The parser paused on the head's final LF: feed from there; it is
	 * consumed again and the body starts one byte later. */
	size_t n = http1_feed(&ex->resp, data + head_end, len - head_end);
	if (ex->resp.event == HTTP_ERROR) {
		ring_buf_return(&c->shard->ring, bid);
		reply_problem(ex, 502, "upstream_failed", "the provider's reply is malformed");
		return;
	}
	if (ex->resp.event == HTTP_MESSAGE_DONE) {
		ex->resp_complete = true;
		ex->resp_extra = head_end + n < len;
	}
	size_t body = n ? n - 1 : 0;
	client_send(c, ex->out, ex->out_len, data + head_end + 1, body, bid);
}

void proxy_upstream_data(struct exchange *ex, const char *data, size_t len, int32_t bid)
{
	struct shard *s = ex->client->shard;
	ex->resp_bytes += len;
	if (ex->state == EX_RELAY) {
		timer_cancel(&s->timers, &ex->up->timer);
		if (unlikely(ex->allowed && s->now_ms >= ex->deadline_ms)) {
			/* Its reservation outlived limits.reservation_ttl_ms: end
			 * it, so that it is settled (as a partial reply, at the
			 * whole reservation) rather than held for ever. A silent
			 * provider is ended by the idle timeout instead. */
			log_warn("provider %s: reply ran past the reservation TTL: cut",
				 ex->provider->name);
			ring_buf_return(&s->ring, bid);
			if (ex->stream)
				stream_end_early(ex, "reservation_expired",
						 "the call ran past its reservation's lifetime: cut off");
			else
				client_abort(ex->client);
			return;
		}
		if (ex->stream)
			stream_relay(ex, (char *)data, len, bid, NULL, 0);
		else
			relay_body(ex, data, len, bid);
		return;
	}
	size_t n = http1_feed(&ex->resp, data, len);
	switch (ex->resp.event) {
	case HTTP_NEED_MORE:          /* head continues in the next read */
		ring_buf_return(&s->ring, bid);
		upstream_recv(ex->up);
		return;
	case HTTP_HEAD_DONE:
		timer_cancel(&s->timers, &ex->up->timer);
		reply_head_arrived(ex, data, len, n, bid);
		return;
	default:
		ring_buf_return(&s->ring, bid);
		log_warn("provider %s sent a malformed reply head", ex->provider->name);
		upstream_close(ex->up);
		ex->up = NULL;
		reply_problem(ex, 502, "upstream_failed", "the provider's reply is malformed");
		return;
	}
}

void proxy_client_sent(struct exchange *ex)
{
	if (ex->state == EX_LOCAL || ex->resp_complete || stream_done(ex)) {
		exchange_finish(ex);
		return;
	}
	if (unlikely(stream_cut_pending(ex)))
		return;   /* frozen while this send was out: the final event goes now */
	struct upstream *u = ex->up;
	shard_timer_arm(u->shard, &u->timer, TIMER_UPSTREAM_IDLE,
			ex->provider->idle_timeout_ms);
	upstream_recv(u);
}

void proxy_upstream_closed(struct exchange *ex, int err)
{
	if (ex->state == EX_RELAY) {
		if (err == 0 && ex->resp_close_delimited) {
			http1_feed_eof(&ex->resp);
			ex->resp_complete = true;
			if (ex->stream)
				stream_relay(ex, NULL, 0, -1, NULL, 0);   /* the terminator */
			else
				exchange_finish(ex);
			return;
		}
		log_warn("provider %s: connection lost mid-reply (%d)", ex->provider->name, err);
		if (ex->stream)
			stream_end_early(ex, "upstream_failed", "the provider's stream broke off");
		else
			client_abort(ex->client);
		return;
	}
	if (ex->state != EX_CONNECT && ex->resp_bytes == 0 && ex->up_reused && !ex->retried) {
		/* The pooled connection had been closed by the provider. */
		ex->retried = true;
		ex->state = EX_CONNECT;
		upstream_acquire(ex);
		return;
	}
	log_warn("provider %s: %s (%d)", ex->provider->name,
		 ex->state == EX_CONNECT ? "connect failed" : "closed before replying", err);
	reply_problem(ex, 502, "upstream_failed",
		      ex->state == EX_CONNECT ? "cannot connect to the provider" :
		      "the provider closed the connection without a complete reply");
}

void proxy_upstream_tls_failed(struct exchange *ex, const char *when, const char *why)
{
	log_warn("provider %s: TLS %s failed: %s", ex->provider->name, when, why);
	if (ex->state != EX_CONNECT) {
		proxy_upstream_closed(ex, -EPROTO);
		return;
	}
	char detail[400];
	snprintf(detail, sizeof(detail), "TLS with the provider failed: %s", why);
	reply_problem(ex, 502, "upstream_tls_failed", detail);
}

void proxy_upstream_timeout(struct exchange *ex, uint8_t kind)
{
	if (ex->state == EX_RELAY) {
		log_warn("provider %s: reply stalled mid-body", ex->provider->name);
		if (ex->stream)
			stream_end_early(ex, "upstream_timeout", "the provider's stream stalled");
		else
			client_abort(ex->client);
		return;
	}
	log_warn("provider %s: %s timed out", ex->provider->name,
		 kind == TIMER_UPSTREAM_CONNECT ? "connect" : "reply");
	reply_problem(ex, 504, "upstream_timeout",
		      kind == TIMER_UPSTREAM_CONNECT ? "connecting to the provider timed out" :
		      "the provider did not answer in time");
}
