/*
 * stream.c — the metered stream relay (stream.h).
 *
 * Per read: http1.c hands over the body in pieces (de-chunked: whole
 * chunks without the http parser, http1_fast_chunks); each is moved down
 * to the write point in the same buffer, so the read becomes one
 * contiguous run of event-stream bytes. The SSE parser walks it, the
 * meter judges each event, and the run goes to the agent as one
 * chunk — up to the end of the event that made the meter say stop, if
 * one did. Then comes the final event and the terminator, and the
 * provider connection is closed: nothing more is read or paid for.
 *
 * Most events of a stream are the same bytes but for their text ("data:
 * {...\"content\":\"" text "\"}...}\n\n"). The bytes around the text of
 * the last event the meter could describe so (meter_span) are kept as a
 * shape; an event that matches it is judged by meter_repeat() from its
 * text alone, two memcmp and a scan of the text, with neither the SSE
 * parser nor the meter walking it. Anything else takes the full path.
 *
 * States: RELAYING → (CUT | ENDED); a stream that is cut or ended sends
 * nothing more.
 */
#include "net/stream.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#include "core/config.h"
#include "core/freeze.h"
#include "core/log.h"
#include "core/money.h"
#include "core/pricing.h"
#include "core/budget.h"
#include "core/shard.h"
#include "net/booking.h"
#include "net/client.h"
#include "net/decide.h"
#include "net/http1.h"
#include "net/meter.h"
#include "net/proxy.h"
#include "net/sse.h"
#include "net/upstream.h"

enum stream_state { STREAM_RELAYING, STREAM_CUT, STREAM_ENDED };

#define SHAPE_HEAD 256
#define SHAPE_TAIL 128

/*
 * The raw bytes of an event that meter_span() described, around its text
 * string: from the event's first byte to the string's, and from the
 * string's closing quote to the event's end, which is an LF. An event
 * parsed from a block boundary that is head + S + tail, where S is a JSON
 * string's contents with no CR or LF (so it lies inside the same data
 * line's value), parses to the same type and the same data but for that
 * string, and ends at the same point in the same parser state (after an
 * LF: LINE_START): meter_span()'s contract holds, and meter_repeat()
 * judges it.
 */
struct shape {
	uint16_t head_len;          /* 0: none learned */
	uint16_t tail_len;
	uint32_t fixed;             /* its data bytes other than the string */
	char head[SHAPE_HEAD];
	char tail[SHAPE_TAIL];
};

struct stream {
	struct sse_parser sse;
	struct meter meter;
	uint8_t state;              /* enum stream_state */
	bool chunked;               /* the agent gets chunked framing */
	const char *cut_code;       /* why it was cut */
	char cut_buf[40];           /* "<scope>_ceiling_reached", "grant_exhausted" */
	uint8_t verdict;            /* enum meter_verdict of the last event */
	bool event_done;            /* on_event ran since the last sse_feed */
	const char *pending_cut;    /* a freeze arrived while a send was in flight */
	uint64_t freeze_epoch;      /* of the freeze table when last checked */
	const char *ev_data;        /* the last event's data, as on_event had it */
	uint32_t ev_len;
	struct shape shape;
	/* An event that a read leaves unfinished is held back until it is
	 * whole, so the agent only ever gets whole events (a cut never leaves
	 * half of one, and the usage chunk can be dropped whole): held[cur]
	 * goes out first next time. Two buffers, since one may be in flight
	 * while the next is filled. */
	char *held[2];
	uint32_t held_len[2], held_cap[2];
	uint8_t cur;
	char *write;                /* de-chunking write point in the current read */
	uint32_t tail_len;
	char hdr[24];               /* chunk size + "\r\n" */
	char tail[1024];            /* what follows the data: CRLF, final event, terminator */
};

bool stream_wants(const struct exchange *ex)
{
	if (!ex->allowed || ex->status < 200 || ex->status >= 300)
		return false;
	uint32_t len;
	const char *ct = http1_field(&ex->resp.head, "content-type", &len);
	return ct && len >= 17 && !strncasecmp(ct, "text/event-stream", 17);
}

bool stream_start(struct exchange *ex)
{
	struct stream *s = malloc(sizeof(*s));
	if (!s)
		return false;
	sse_init(&s->sse);
	meter_init(&s->meter, (uint8_t)ex->provider->format, ex->inject_usage);
	http1_fast_chunks(&ex->resp);   /* the body's chunks, de-chunked below */
	s->state = STREAM_RELAYING;
	/* HTTP/1.0 agents read to the close; the rest get chunks */
	s->chunked = !(ex->req.parser.http_major == 1 && ex->req.parser.http_minor == 0);
	if (!s->chunked)
		ex->client->close_after = true;
	s->cut_code = NULL;
	s->pending_cut = NULL;
	s->freeze_epoch = 0;   /* the first event checks (decide did, before it) */
	s->event_done = false;
	s->held[0] = s->held[1] = NULL;
	s->held_len[0] = s->held_len[1] = 0;
	s->held_cap[0] = s->held_cap[1] = 0;
	s->cur = 0;
	s->tail_len = 0;
	s->shape.head_len = 0;
	ex->stream = s;
	return true;
}

/* The meter's counts against the provider's, for GET /metrics. */
static void count_drift(struct exchange *ex)
{
	const struct meter *m = &ex->stream->meter;
	struct shard_stats *st = &ex->client->shard->stats;
	if (ex->stream->state == STREAM_CUT) {
		st->stream_cuts++;
		if (!strcmp(ex->stream->cut_code, "frozen"))
			st->stream_cuts_frozen++;
	}
	if (!m->output_final) {
		st->streams_without_usage++;
		return;
	}
	uint64_t reported = m->usage.output_tokens;
	uint64_t upper = MIN(m->bytes, (uint64_t)ex->max_output_tokens);
	uint64_t lower = MIN(m->text_events, (uint64_t)ex->max_output_tokens);
	st->streams_with_usage++;
	st->stream_tokens_reported += reported;
	st->stream_tokens_upper += upper;
	st->stream_tokens_lower += lower;
	if (reported > upper || reported < lower)
		st->stream_bound_misses++;
}

void stream_free(struct exchange *ex)
{
	count_drift(ex);
	free(ex->stream->held[0]);
	free(ex->stream->held[1]);
	free(ex->stream);
	ex->stream = NULL;
}

bool stream_head_framing(struct exchange *ex)
{
	if (!ex->stream->chunked)
		return true;
	static const char te[] = "Transfer-Encoding: chunked\r\n";
	if (ex->out_len + sizeof(te) - 1 > ex->out_cap)
		return false;
	memcpy(ex->out + ex->out_len, te, sizeof(te) - 1);
	ex->out_len += sizeof(te) - 1;
	return true;
}

/* The http parser's body pieces, moved down to the write point. */
static int compact_body(struct http_msg *m, const char *data, size_t len)
{
	struct exchange *ex = m->owner;
	struct stream *s = ex->stream;
	if (s->write != data)   /* in place when nothing was cut out before it */
		memmove(s->write, data, len);
	s->write += len;
	return 0;
}

static void put_tail(struct stream *s, const char *text, size_t n)
{
	if (s->tail_len + n <= sizeof(s->tail)) {
		memcpy(s->tail + s->tail_len, text, n);
		s->tail_len += (uint32_t)n;
	}
}

/* Writes the header of an n-byte chunk into out (at most 18 bytes: the
 * size in hex, "\r\n"), as printf's "%zx" would, without printf: it runs
 * on every read. Returns its length. Every chunk is closed by its own
 * CRLF in the same send: a client that reads whole chunks (urllib3, for
 * one) must not wait for the next event to see this one. */
static size_t chunk_header(char *out, size_t n)
{
	size_t len = 0;
	int digits = 1;
	while (digits < 16 && n >> (4 * digits))
		digits++;
	for (int d = digits - 1; d >= 0; d--)
		out[len++] = "0123456789abcdef"[(n >> (4 * d)) & 15];
	out[len++] = '\r';
	out[len++] = '\n';
	return len;
}

/* Frames `n` bytes of event text as the agent reads it: as a chunk (or
 * as is when close-delimited), into the tail. */
static void put_chunk_text(struct stream *s, const char *text, size_t n)
{
	if (s->chunked) {
		char size[24];
		put_tail(s, size, chunk_header(size, n));
	}
	put_tail(s, text, n);
	if (s->chunked)
		put_tail(s, "\r\n", 2);
}

/* The final event of SPEC §5 in the provider's format, then the end of
 * the body (the chunk terminator; or nothing when the close ends it). */
static void put_final_event(struct exchange *ex, const char *code, const char *message)
{
	struct stream *s = ex->stream;
	char ev[700], reserved[32];
	money_format(ex->reserved_usd, reserved, sizeof(reserved));
	/* the last line ended with a CR whose LF has not come: a CRLF stream
	 * would send it next, and after a lone CR it is read as part of it */
	if (s->sse.state == SSE_AFTER_CR)
		put_chunk_text(s, "\n", 1);
	int n;
	if (ex->provider->format == FORMAT_ANTHROPIC)
		n = snprintf(ev, sizeof(ev),
			     "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":"
			     "\"budget_exhausted\",\"code\":\"%s\",\"message\":\"%s\"}}\n\n",
			     code, message);
	else
		n = snprintf(ev, sizeof(ev),
			     "data: {\"error\":{\"type\":\"budget_exhausted\",\"code\":\"%s\","
			     "\"message\":\"%s\",\"budget\":{\"run_id\":\"%s\",\"reserved_usd\":\"%s\","
			     "\"counted_output_tokens\":%llu}}}\n\ndata: [DONE]\n\n",
			     code, message, ex->run ? ex->run->id : "", reserved,
			     (unsigned long long)stream_output_tokens(ex));
	if (n > 0 && (size_t)n < sizeof(ev))
		put_chunk_text(s, ev, (size_t)n);
	if (s->chunked)
		put_tail(s, "0\r\n\r\n", 5);
}

/* The end of a body that ended well: the terminator. */
static void put_end(struct stream *s)
{
	if (s->chunked)
		put_tail(s, "0\r\n\r\n", 5);
}

static const char *cut_message(const char *code)
{
	if (!strcmp(code, "loop_detected"))
		return "the generation repeats itself: cut off";
	if (!strcmp(code, "stream_token_cap"))
		return "the stream passed its output token cap: cut off";
	if (strstr(code, "_ceiling_reached") || !strcmp(code, "grant_exhausted"))
		return "the budget cannot cover more of this stream: cut off";
	if (!strcmp(code, "frozen"))
		return "an operator froze a budget this stream spends: cut off";
	return "the provider's stream could not be metered: cut off";
}

/*
 * stream_lease: keeps what is reserved at least one lease step above what
 * the stream has cost so far (input at its bound, output as counted),
 * never above its worst case. An extension is a reservation like any
 * other: on every scope or none. Refused, the stream is cut: that scope's
 * ceiling is reached, while what it has cost is still covered. (A single
 * event larger than the step could pass the reservation by what it
 * carried; that output was generated, so it is charged.)
 */
static void extend_lease(struct exchange *ex)
{
	struct stream *s = ex->stream;
	int64_t so_far = pricing_actual(ex->model, pricing_input_bound(ex->body_len), 0,
					stream_output_tokens(ex));
	int64_t step = pricing_cost(STREAM_LEASE_TOKENS, ex->model->output_per_mtok);
	if (ex->reserved_usd - so_far >= step || ex->reserved_usd >= ex->estimate_usd)
		return;
	int64_t more = MIN(so_far + step - ex->reserved_usd, ex->estimate_usd - ex->reserved_usd);
	struct shard *sh = ex->client->shard;
	uint32_t over;
	int refused = budget_reserve(ex->scopes, ex->n_scopes, (uint32_t)sh->id, more,
				     &sh->clock, &over);
	if (refused < 0) {
		ex->reserved_usd += more;
		ex->over |= (uint8_t)over;
		if (!booking_reserve(ex))   /* grown, not on disk: stop here */
			s->cut_code = "ledger_unavailable";
		return;
	}
	decide_ceiling_code(ex->scope_kind[refused], s->cut_buf, sizeof(s->cut_buf));
	s->cut_code = s->cut_buf;
}

/* Whether a freeze since the last look covers this stream: one load of
 * the table's epoch per event, a look at the scopes only when it moved. */
static bool freeze_changed(struct exchange *ex)
{
	struct stream *s = ex->stream;
	uint64_t epoch = freeze_epoch(ex->client->shard->freeze);
	if (likely(epoch == s->freeze_epoch))
		return false;
	s->freeze_epoch = epoch;
	char what[FREEZE_ID_MAX + 8];
	return decide_frozen(ex, what, sizeof(what));
}

/* What the meter's verdict v on an event means for the stream: a cut
 * code when it must stop after it (or without it: METER_GARBAGE). Both
 * paths (a parsed event, a repeat of the last shape) come here. */
static void judge(struct exchange *ex, enum meter_verdict v)
{
	struct stream *s = ex->stream;
	s->verdict = (uint8_t)v;
	if (v == METER_LOOP)
		s->cut_code = "loop_detected";
	else if (v == METER_GARBAGE)
		s->cut_code = "upstream_garbage";
	else if (freeze_changed(ex))
		s->cut_code = "frozen";
	else if (s->meter.text_events > ex->max_output_tokens)
		/* one token per text event is a lower bound: the provider is
		 * past the cap it was given, for certain */
		s->cut_code = "stream_token_cap";
	else if (ex->stream_lease)
		extend_lease(ex);
}

/* Judges one event and stops the SSE parser right after it, so that the
 * relay knows where each event ends. */
static int on_event(void *arg, const struct sse_event *ev)
{
	struct exchange *ex = arg;
	struct stream *s = ex->stream;
	s->ev_data = ev->data;
	s->ev_len = ev->data_len;
	s->event_done = true;
	judge(ex, meter_event(&s->meter, ev));
	return 1;
}

/* Where the JSON string whose contents start at s[i] ends: its first '"'
 * not escaped by a '\\' (as the meter reads strings), or n when there is
 * none before n, or a CR or LF (a line end) comes first. */
static size_t text_end(const char *s, size_t i, size_t n)
{
#ifdef __SSE2__
	const __m128i quote = _mm_set1_epi8('"'), slash = _mm_set1_epi8('\\'),
		      cr = _mm_set1_epi8('\r'), lf = _mm_set1_epi8('\n');
	while (i + 16 <= n) {
		__m128i v = _mm_loadu_si128((const __m128i *)(s + i));
		unsigned mask = (unsigned)_mm_movemask_epi8(
			_mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, slash)),
				     _mm_or_si128(_mm_cmpeq_epi8(v, cr), _mm_cmpeq_epi8(v, lf))));
		if (!mask) {
			i += 16;
			continue;
		}
		i += (size_t)__builtin_ctz(mask);
		if (s[i] != '\\')
			return s[i] == '"' ? i : n;
		if (i + 1 >= n || s[i + 1] == '\r' || s[i + 1] == '\n')
			return n;
		i += 2;           /* an escape: the escaped byte is text */
	}
#endif
	while (i < n) {
		char c = s[i];
		if (c == '"')
			return i;
		if (c == '\r' || c == '\n')
			return n;
		if (c != '\\') {
			i++;
			continue;
		}
		if (i + 1 >= n || s[i + 1] == '\r' || s[i + 1] == '\n')
			return n;
		i += 2;
	}
	return n;
}

/* If body[pos..len), at a block boundary, starts with a whole repeat of
 * the shape: its end, and its text in body[*text, *text + *text_len).
 * Else 0. */
static size_t match_shape(const struct shape *sh, const char *body, size_t pos, size_t len,
			  size_t *text, size_t *text_len)
{
	if (!sh->head_len || len - pos < (size_t)sh->head_len + sh->tail_len ||
	    memcmp(body + pos, sh->head, sh->head_len))
		return 0;
	size_t t = pos + sh->head_len;
	size_t bound = len - sh->tail_len + 1;   /* the closing quote is before it */
	size_t e = text_end(body, t, bound);
	if (e == bound || memcmp(body + e, sh->tail, sh->tail_len) ||
	    e - t > SSE_MAX_EVENT - sh->fixed)
		return 0;     /* (the SSE parser would refuse it as too large) */
	*text = t;
	*text_len = e - t;
	return e + sh->tail_len;
}

/* The full path just judged body[start, pos) one event, parsed from a
 * block boundary: if the meter can let it stand for its repeats, and its
 * data is one run of these bytes (the SSE parser handed it over in
 * place), its bytes around the text become the shape. */
static void learn_shape(struct stream *s, const char *body, size_t start, size_t pos)
{
	uint32_t at, n;
	if (!meter_span(&s->meter, &at, &n) || body[pos - 1] != '\n')
		return;
	uintptr_t data = (uintptr_t)s->ev_data, from = (uintptr_t)(body + start),
		  to = (uintptr_t)(body + pos);
	if (data < from || data + s->ev_len > to)
		return;       /* the data was joined or copied: not one run here */
	size_t head = (size_t)(data - from) + at, tail = (size_t)(to - data) - at - n;
	if (head > SHAPE_HEAD || tail > SHAPE_TAIL)
		return;
	memcpy(s->shape.head, body + start, head);
	memcpy(s->shape.tail, body + start + head + n, tail);
	s->shape.head_len = (uint16_t)head;
	s->shape.tail_len = (uint16_t)tail;
	s->shape.fixed = s->ev_len - n;
}

/* Stops reading the provider: its connection cannot be reused. */
static void close_upstream(struct exchange *ex)
{
	if (ex->up) {
		upstream_close(ex->up);
		ex->up = NULL;
	}
}

#define HELD_MAX (SSE_MAX_EVENT + 1024)   /* an event's data plus its field names */

/* Keeps a[0..an) + b[0..bn), an unfinished event, to go out before the
 * next read. False if it is larger than any event the parser accepts. */
static bool hold2(struct stream *s, const char *a, size_t an, const char *b, size_t bn)
{
	uint8_t next = s->cur ^ 1;
	size_t need = an + bn;
	s->held_len[next] = 0;
	if (need == 0)
		return true;      /* the read ended on an event boundary */
	if (need > HELD_MAX)
		return false;
	if (need > s->held_cap[next]) {
		/* grown as events need, so a stream of small events holds little */
		size_t cap = need < 512 ? 512 : need * 2 < HELD_MAX ? need * 2 : HELD_MAX;
		char *p = realloc(s->held[next], cap);
		if (!p)
			return false;
		s->held[next] = p;
		s->held_cap[next] = (uint32_t)cap;
	}
	if (an)
		memcpy(s->held[next], a, an);
	if (bn)
		memcpy(s->held[next] + an, b, bn);
	s->held_len[next] = (uint32_t)(an + bn);
	return true;
}

/*
 * Meters body[0..len) event by event and compacts in place what goes to
 * the agent: every event, except a dropped usage chunk, up to the one the
 * meter stopped at (if any). *held_out says whether the event held from
 * the last read goes out too. `broken`: the provider's framing broke after
 * these bytes, so only whole events go. Returns the bytes kept.
 */
static size_t meter_body(struct exchange *ex, char *body, size_t len, bool *held_out,
			 bool broken)
{
	struct stream *s = ex->stream;
	size_t out = 0, start = 0, pos = 0;    /* start: where the current event began */
	bool start_in_held = s->held_len[s->cur] > 0;
	*held_out = false;
	while (pos < len && !s->cut_code) {
		/* nothing held: the parser is between events (held is empty
		 * only when the last read ended with one) */
		bool boundary = !start_in_held && s->sse.state == SSE_LINE_START;
		size_t end, text, text_len;
		if (boundary && (end = match_shape(&s->shape, body, pos, len, &text, &text_len))) {
			judge(ex, meter_repeat(&s->meter, body + text, text_len));
			pos = end;
		} else {
			s->event_done = false;
			long n = sse_feed(&s->sse, body + pos, len - pos, on_event, ex);
			if (n < 0) {
				s->cut_code = "upstream_garbage";   /* an event past SSE_MAX_EVENT */
				break;
			}
			pos += (size_t)n;
			if (!s->event_done)
				break;                         /* the rest is an unfinished event */
			if (boundary)
				learn_shape(s, body, start, pos);
		}
		/* not relayed: the usage chunk we asked for, what cannot be metered */
		bool keep = s->verdict != METER_DROP && s->verdict != METER_GARBAGE;
		if (keep) {   /* (an event begun in held continues here) */
			*held_out = *held_out || start_in_held;
			if (out != start)
				memmove(body + out, body + start, pos - start);
			out += pos - start;
		}
		start = pos;
		start_in_held = false;
	}
	if (s->cut_code || broken)
		return out;   /* an unfinished event before a cut is not sent */
	if (ex->resp_complete) {
		/* the body ended inside an event: it goes as it is */
		*held_out = *held_out || start_in_held;
		if (len > start && out != start)
			memmove(body + out, body + start, len - start);
		return out + len - start;
	}
	/* what is left is the start of an event: held until it is whole */
	bool ok = start_in_held ?
		  hold2(s, s->held[s->cur], s->held_len[s->cur], body, len) :
		  hold2(s, NULL, 0, body + start, len - start);
	if (!ok)
		s->cut_code = "upstream_garbage";
	return out;
}

void stream_relay(struct exchange *ex, char *data, size_t len, int32_t bid,
		  const char *head, size_t head_len)
{
	struct stream *s = ex->stream;
	struct shard *sh = ex->client->shard;
	if (s->pending_cut && !s->cut_code)
		s->cut_code = s->pending_cut;   /* nothing of this read goes out */
	s->write = data;
	s->tail_len = 0;
	s->held_len[s->cur ^ 1] = 0;
	ex->resp.on_body = compact_body;
	bool broken = false;
	if (len) {   /* none: the provider's close ended the body (already fed) */
		size_t n = http1_feed(&ex->resp, data, len);
		if (ex->resp.event == HTTP_ERROR) {
			broken = true;    /* what came before the break still counts */
		} else if (ex->resp.event == HTTP_MESSAGE_DONE) {
			ex->resp_complete = true;
			ex->resp_extra = n < len;
		}
	}
	size_t body = (size_t)(s->write - data), pass = 0;
	bool held_out = false;
	if (s->state == STREAM_RELAYING && !s->cut_code)
		pass = meter_body(ex, data, body, &held_out, broken);
	if (broken && !s->cut_code)
		s->cut_code = "upstream_garbage";
	const char *held = s->held[s->cur];
	size_t held_len = held_out ? s->held_len[s->cur] : 0;
	s->cur ^= 1;   /* what this read left unfinished goes out next time */
	/* the chunk header of the data, then what follows it */
	size_t hdr_len = 0;
	if ((pass || held_len) && s->chunked) {
		hdr_len = chunk_header(s->hdr, held_len + pass);
		put_tail(s, "\r\n", 2);   /* ends this chunk, before what follows */
	}
	if (s->state == STREAM_RELAYING && s->cut_code) {
		log_warn("stream of %s cut: %s", ex->model->name, s->cut_code);
		s->state = STREAM_CUT;
		close_upstream(ex);
		put_final_event(ex, s->cut_code, cut_message(s->cut_code));
	} else if (s->state == STREAM_RELAYING && ex->resp_complete) {
		s->state = STREAM_ENDED;
		put_end(s);
	}
	struct iovec iov[5] = { { (void *)head, head_len }, { s->hdr, hdr_len },
				{ (void *)held, held_len }, { data, pass },
				{ s->tail, s->tail_len } };
	if (!head_len && !hdr_len && !pass && !held_len && !s->tail_len) {
		if (bid >= 0)
			ring_buf_return(&sh->ring, bid);
		proxy_client_sent(ex);   /* nothing to send: read on */
		return;
	}
	client_sendv(ex->client, iov, 5, bid);
}

void stream_end_early(struct exchange *ex, const char *code, const char *message)
{
	struct stream *s = ex->stream;
	if (s->state != STREAM_RELAYING) {
		client_abort(ex->client);
		return;
	}
	s->state = STREAM_CUT;
	s->cut_code = code;
	s->tail_len = 0;
	close_upstream(ex);
	put_final_event(ex, code, message);
	struct iovec iov[1] = { { s->tail, s->tail_len } };
	client_sendv(ex->client, iov, 1, -1);
}

void stream_check_freeze(struct exchange *ex)
{
	struct stream *s = ex->stream;
	if (ex->state != EX_RELAY || s->state != STREAM_RELAYING || s->cut_code || s->pending_cut ||
	    !freeze_changed(ex))
		return;
	log_warn("stream of %s cut: frozen", ex->model->name);
	if (ex->up && ex->up->recv_posted)
		stream_end_early(ex, "frozen", cut_message("frozen"));   /* waiting: cut now */
	else
		s->pending_cut = "frozen";
}

bool stream_cut_pending(struct exchange *ex)
{
	struct stream *s = ex->stream;
	if (!s || !s->pending_cut || s->state != STREAM_RELAYING)
		return false;
	stream_end_early(ex, s->pending_cut, cut_message(s->pending_cut));
	return true;
}

bool stream_done(const struct exchange *ex)
{
	return ex->stream && ex->stream->state != STREAM_RELAYING;
}

const char *stream_cut_code(const struct exchange *ex)
{
	return ex->stream->state == STREAM_CUT ? ex->stream->cut_code : NULL;
}

uint64_t stream_output_tokens(const struct exchange *ex)
{
	return meter_output_tokens(&ex->stream->meter, ex->max_output_tokens);
}

bool stream_input_tokens(const struct exchange *ex, uint64_t *input, uint64_t *cached)
{
	const struct usage *u = &ex->stream->meter.usage;
	if (!u->has_input)
		return false;
	*input = u->input_tokens;
	*cached = u->cached_tokens;
	return true;
}
