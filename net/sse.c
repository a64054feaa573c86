/*
 * sse.c — the event-stream state machine (sse.h).
 *
 * One byte at a time through the states, except inside a value, where a
 * run up to the next CR or LF is taken at once, and at the start of a
 * line, where "data:" and "event:" are recognised whole: event data is
 * almost all value bytes, so the per-byte work is a scan. An event's data
 * that is one run of the buffer is handed over where it lies (p->run);
 * it is copied only when a second piece joins it or the buffer ends.
 */
#include "net/sse.h"

#include <errno.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

void sse_init(struct sse_parser *p)
{
	p->state = SSE_LINE_START;
	p->name_len = 0;
	p->name_long = false;
	p->has_data = false;
	p->type_len = 0;
	p->data_len = 0;
	p->run = NULL;
}

static void start_event(struct sse_parser *p)
{
	p->has_data = false;
	p->type_len = 0;
	p->data_len = 0;
	p->run = NULL;
}

/* The data so far into p->data: the buffer it lies in is about to go,
 * or another piece is to be appended. */
static void copy_run(struct sse_parser *p)
{
	if (p->run) {
		memcpy(p->data, p->run, p->data_len);
		p->run = NULL;
	}
}

/* The field name is complete: which field is it? */
static void name_done(struct sse_parser *p)
{
	if (p->name_long)
		p->field = SSE_FIELD_OTHER;
	else if (p->name_len == 4 && !memcmp(p->name, "data", 4))
		p->field = SSE_FIELD_DATA;
	else if (p->name_len == 5 && !memcmp(p->name, "event", 5))
		p->field = SSE_FIELD_EVENT;
	else
		p->field = SSE_FIELD_OTHER;
	if (p->field == SSE_FIELD_EVENT)
		p->type_len = 0;   /* the last event: line wins */
}

/* Appends value bytes (of the buffer being fed) to the current field;
 * -E2BIG if too large. The first piece of an event's data is kept where
 * it is. */
static int add_value(struct sse_parser *p, const char *s, size_t n)
{
	if (p->field == SSE_FIELD_DATA) {
		if (n > SSE_MAX_EVENT - p->data_len)
			return -E2BIG;
		if (!n)
			return 0;
		if (!p->data_len) {
			p->run = s;
			p->data_len = (uint32_t)n;
			return 0;
		}
		copy_run(p);
		memcpy(p->data + p->data_len, s, n);
		p->data_len += (uint32_t)n;
	} else if (p->field == SSE_FIELD_EVENT) {
		size_t room = SSE_MAX_TYPE - p->type_len;
		n = n < room ? n : room;    /* longer types match nothing we know */
		memcpy(p->type + p->type_len, s, n);
		p->type_len += (uint8_t)n;
	}
	return 0;
}

/* A data line begins: lines of one event are joined by '\n'. */
static int begin_value(struct sse_parser *p)
{
	if (p->field != SSE_FIELD_DATA)
		return 0;
	if (p->has_data) {
		if (p->data_len == SSE_MAX_EVENT)
			return -E2BIG;
		copy_run(p);
		p->data[p->data_len++] = '\n';
	}
	p->has_data = true;
	return 0;
}

/* A blank line: the event is complete. Returns fn's verdict. */
static int dispatch(struct sse_parser *p, sse_event_fn fn, void *arg)
{
	struct sse_event ev = { p->type, p->type_len, p->run ? p->run : p->data, p->data_len,
				p->has_data };
	int stop = fn(arg, &ev);
	start_event(p);
	return stop;
}

/* The line ended (blank when `blank`); returns fn's verdict. */
static int line_end(struct sse_parser *p, bool blank, sse_event_fn fn, void *arg)
{
	p->name_len = 0;
	p->name_long = false;
	return blank ? dispatch(p, fn, arg) : 0;
}

/* The first CR or LF in buf[i..len), or len: sixteen bytes at a time
 * where SSE2 is there, else two memchr scans — values are nearly all of
 * an event's bytes. */
static size_t line_end_at(const char *buf, size_t i, size_t len)
{
#ifdef __SSE2__
	const __m128i cr = _mm_set1_epi8('\r'), lf = _mm_set1_epi8('\n');
	for (; i + 16 <= len; i += 16) {
		__m128i v = _mm_loadu_si128((const __m128i *)(buf + i));
		unsigned mask = (unsigned)_mm_movemask_epi8(
			_mm_or_si128(_mm_cmpeq_epi8(v, cr), _mm_cmpeq_epi8(v, lf)));
		if (mask)
			return i + (size_t)__builtin_ctz(mask);
	}
	while (i < len && buf[i] != '\r' && buf[i] != '\n')
		i++;
	return i;
#else
	const char *nl = memchr(buf + i, '\n', len - i);
	size_t end = nl ? (size_t)(nl - buf) : len;
	const char *ret = memchr(buf + i, '\r', end - i);
	return ret ? (size_t)(ret - buf) : end;
#endif
}

/* A line that starts with "data:" or "event:", whole in buf[i..len):
 * the name is done at once. Returns the bytes it took, 0 if neither. */
static size_t known_name(struct sse_parser *p, const char *buf, size_t i, size_t len)
{
	if (len - i >= 5 && !memcmp(buf + i, "data:", 5)) {
		p->field = SSE_FIELD_DATA;
		return 5;
	}
	if (len - i >= 6 && !memcmp(buf + i, "event:", 6)) {
		p->field = SSE_FIELD_EVENT;
		p->type_len = 0;   /* the last event: line wins */
		return 6;
	}
	return 0;
}

static long feed(struct sse_parser *p, const char *buf, size_t len, sse_event_fn fn, void *arg)
{
	size_t i = 0;
	while (i < len) {
		char c = buf[i];
		int stop = 0;
		switch (p->state) {
		case SSE_AFTER_CR:
			p->state = SSE_LINE_START;
			if (c == '\n') {
				i++;          /* CRLF: the line already ended at the CR */
				continue;
			}
			continue;             /* a lone CR: this byte starts a line */
		case SSE_LINE_START:
			if (c == '\r' || c == '\n') {
				stop = line_end(p, true, fn, arg);
				p->state = c == '\r' ? SSE_AFTER_CR : SSE_LINE_START;
			} else if (c == ':') {
				p->state = SSE_COMMENT;
			} else {
				size_t n = known_name(p, buf, i, len);
				if (n) {
					p->state = SSE_SPACE;
					i += n;
					continue;
				}
				p->state = SSE_NAME;
				continue;     /* the byte is the name's first */
			}
			i++;
			break;
		case SSE_NAME:
			if (c == ':' || c == '\r' || c == '\n') {
				name_done(p);
				if (c == ':') {
					p->state = SSE_SPACE;
					i++;
					break;
				}
				/* a name alone: the field with an empty value */
				if (begin_value(p))
					return -E2BIG;
				stop = line_end(p, false, fn, arg);
				p->state = c == '\r' ? SSE_AFTER_CR : SSE_LINE_START;
				i++;
				break;
			}
			if (p->name_len < sizeof(p->name))
				p->name[p->name_len++] = c;
			else
				p->name_long = true;
			i++;
			break;
		case SSE_SPACE:
			if (begin_value(p))
				return -E2BIG;
			p->state = SSE_VALUE;
			if (c == ' ')
				i++;
			break;
		case SSE_VALUE: {
			size_t j = line_end_at(buf, i, len);
			if (add_value(p, buf + i, j - i))
				return -E2BIG;
			i = j;
			if (i < len) {
				stop = line_end(p, false, fn, arg);
				p->state = buf[i] == '\r' ? SSE_AFTER_CR : SSE_LINE_START;
				i++;
			}
			break;
		}
		case SSE_COMMENT:
			if (c == '\r' || c == '\n') {
				stop = line_end(p, false, fn, arg);
				p->state = c == '\r' ? SSE_AFTER_CR : SSE_LINE_START;
			}
			i++;
			break;
		}
		if (stop) {
			/* a CRLF blank line ends at its LF, if this read has it */
			if (p->state == SSE_AFTER_CR && i < len && buf[i] == '\n') {
				p->state = SSE_LINE_START;
				i++;
			}
			return (long)i;
		}
	}
	return (long)len;
}

long sse_feed(struct sse_parser *p, const char *buf, size_t len, sse_event_fn fn, void *arg)
{
	long n = feed(p, buf, len, fn, arg);
	copy_run(p);   /* an unfinished event's data must outlive buf */
	return n;
}
