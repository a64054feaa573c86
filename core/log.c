/*
 * log.c — JSON log lines on stderr, one write(2) each.
 *
 * The message is escaped into a stack buffer; nothing is allocated, so the
 * logger is safe to call from any shard at any time.
 */
#include "core/log.h"
#include "core/json_scan.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static enum log_level min_level = LOG_INFO;
static _Thread_local int this_shard = -1;

static const char *const level_names[] = { "debug", "info", "warn", "error" };

void log_set_level(enum log_level min) { min_level = min; }
void log_set_shard(int shard_id) { this_shard = shard_id; }

void log_msg(enum log_level level, const char *fmt, ...)
{
	if (level < min_level)
		return;
	char msg[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);

	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	struct tm tm;
	gmtime_r(&ts.tv_sec, &tm);

	char line[2300];
	size_t len = (size_t)snprintf(line, sizeof(line),
		"{\"ts\":\"%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ\",\"level\":\"%s\",",
		tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
		tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000, level_names[level]);
	if (this_shard >= 0)
		len += (size_t)snprintf(line + len, sizeof(line) - len,
					"\"shard\":%d,", this_shard);
	len += (size_t)snprintf(line + len, sizeof(line) - len, "\"msg\":\"");
	len += json_escape(line + len, sizeof(line) - 3 - len, msg);
	line[len++] = '"';
	line[len++] = '}';
	line[len++] = '\n';
	ssize_t w = write(STDERR_FILENO, line, len);
	(void)w;
}
