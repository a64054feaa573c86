/*
 * reply.c — replies tollgate writes itself: RFC 9457 problems and the model
 * list. Built into the exchange's out buffer, sent with one send.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "core/json_scan.h"
#include "core/money.h"
#include "core/shard.h"
#include "net/client.h"
#include "net/decide.h"
#include "net/http1.h"
#include "net/proxy.h"

/* Sends ex->out[head_start..) as a complete local reply. */
static void send_local(struct exchange *ex, unsigned status, const char *type,
		       const char *body, size_t body_len)
{
	struct client *c = ex->client;
	ex->status = (uint16_t)status;
	size_t head = (size_t)snprintf(ex->out, ex->out_cap,
				       "HTTP/1.1 %u %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n",
				       status, http1_reason(status), type, body_len);
	head += decide_headers(ex, ex->out + head, ex->out_cap - head);
	head += (size_t)snprintf(ex->out + head, ex->out_cap - head, "%s\r\n",
				 c->close_after ? "Connection: close\r\n" : "");
	if (head + body_len > ex->out_cap)
		body_len = 0;    /* callers size bodies to fit; never overflow */
	/* A reply to HEAD is the head a GET would get, without the body: a
	 * body there would be read as the start of the next reply. */
	if (ex->req.head_done && ex->req.parser.method == HTTP_HEAD)
		body_len = 0;
	memmove(ex->out + head, body, body_len);
	ex->out_len = (uint32_t)(head + body_len);
	ex->state = EX_LOCAL;
	c->state = CLIENT_BUSY;
	client_send(c, ex->out, ex->out_len, NULL, 0, -1);
}

void reply_problem(struct exchange *ex, unsigned status, const char *code,
		   const char *detail)
{
	reply_problem_ext(ex, status, code, detail, "");
}

void reply_problem_ext(struct exchange *ex, unsigned status, const char *code,
		       const char *detail, const char *extra)
{
	char esc[512], body[4096];
	json_escape(esc, sizeof(esc), detail);
	snprintf(ex->problem_code, sizeof(ex->problem_code), "%s", code);
	int n = snprintf(body, sizeof(body),
			 "{\"type\":\"urn:tollgate:problem:%s\",\"title\":\"%s\","
			 "\"status\":%u,\"detail\":\"%s\",\"code\":\"%s\"%s}",
			 code, http1_reason(status), status, esc, code, extra);
	send_local(ex, status, "application/problem+json", body,
		   (size_t)n < sizeof(body) ? (size_t)n : sizeof(body) - 1);
}

void reply_json(struct exchange *ex, unsigned status, const char *body, size_t len)
{
	send_local(ex, status, "application/json", body, len);
}

void reply_typed(struct exchange *ex, unsigned status, const char *type, const char *body,
		 size_t len)
{
	send_local(ex, status, type, body, len);
}

size_t reply_room(const struct exchange *ex)
{
	return ex->out_cap > 1024 ? ex->out_cap - 1024 : 0;
}

static size_t put_price(char *out, size_t cap, const char *name, usd_micros v)
{
	if (v < 0)
		return (size_t)snprintf(out, cap, "\"%s\":null", name);
	char num[32];
	money_format(v, num, sizeof(num));
	return (size_t)snprintf(out, cap, "\"%s\":\"%s\"", name, num);
}

void reply_models(struct exchange *ex)
{
	/* The list is written into the (unused) request body buffer: it can
	 * grow with the number of models, the out buffer cannot. */
	const struct config *cfg = ex->cfg;
	char *b = ex->inline_body;
	size_t cap = EX_INLINE_BODY, n = 0;
	n += (size_t)snprintf(b + n, cap - n, "{\"object\":\"list\",\"data\":[");
	for (uint32_t i = 0; i < cfg->n_models && n + 512 < cap; i++) {
		const struct cfg_model *m = &cfg->models[i];
		n += (size_t)snprintf(b + n, cap - n,
			"%s{\"id\":\"%s\",\"object\":\"model\",\"owned_by\":\"%s\","
			"\"context_tokens\":%u,\"max_output_tokens\":%u,\"pricing\":{",
			i ? "," : "", m->name, m->provider->name, m->context_tokens,
			m->max_output_tokens);
		n += put_price(b + n, cap - n, "input_usd_per_mtok", m->input_per_mtok);
		b[n++] = ',';
		n += put_price(b + n, cap - n, "output_usd_per_mtok", m->output_per_mtok);
		n += (size_t)snprintf(b + n, cap - n, "}}");
	}
	n += (size_t)snprintf(b + n, cap - n, "],\"prices_version\":\"%s\"}", cfg->prices_version);
	reply_json(ex, 200, b, n);
}
