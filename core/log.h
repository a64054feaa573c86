/*
 * log.h — one-line structured logging to stderr.
 *
 * Lines are JSON objects so operators can ship them as they are:
 *   {"ts":"2026-11-23T10:00:00.123Z","level":"warn","shard":0,"msg":"..."}
 * A single write(2) per line keeps lines from different shards whole.
 */
#ifndef TOLLGATE_LOG_H
#define TOLLGATE_LOG_H

enum log_level { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR };

void log_set_level(enum log_level min);
void log_set_shard(int shard_id);   /* per thread: tags this thread's lines */
void log_msg(enum log_level level, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

#define log_debug(...) log_msg(LOG_DEBUG, __VA_ARGS__)
#define log_info(...)  log_msg(LOG_INFO, __VA_ARGS__)
#define log_warn(...)  log_msg(LOG_WARN, __VA_ARGS__)
#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)

#endif
