/*
 * ledger.c — starting and stopping the ledger (ledger.h).
 */
#include "ledger/ledger.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/log.h"
#include "core/money.h"

/* Decision counters restart this far past the highest one seen, so that an
 * id an agent saw but the ledger lost in a crash is not issued again. */
#define DECISION_GAP (1ULL << 20)

/* mkdir -p */
static int make_dir(const char *path)
{
	char buf[4096];
	size_t len = strlen(path);
	if (len >= sizeof(buf))
		return -ENAMETOOLONG;
	memcpy(buf, path, len + 1);
	for (char *p = buf + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(buf, 0750) && errno != EEXIST)
			return -errno;
		*p = '/';
	}
	if (mkdir(buf, 0750) && errno != EEXIST)
		return -errno;
	return 0;
}

int ledger_start(struct ledger_set *ls, struct config *cfg, uint32_t n_shards, int64_t now_s,
		 bool repair)
{
	memset(ls, 0, sizeof(*ls));
	ls->dir_fd = -1;
	const char *dir = cfg->ledger.dir;
	int rc = make_dir(dir);
	if (!rc) {
		ls->dir_fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		rc = ls->dir_fd < 0 ? -errno : 0;
	}
	if (rc) {
		log_error("ledger: cannot open directory %s: %s", dir, strerror(-rc));
		return rc;
	}
	if (flock(ls->dir_fd, LOCK_EX | LOCK_NB)) {
		rc = -errno;
		log_error("ledger: %s is in use by another tollgate (%s)", dir, strerror(-rc));
		ledger_stop(ls);
		return rc;
	}
	rc = ledger_replay(ls->dir_fd, cfg, n_shards, now_s, repair, &ls->replay);
	if (rc) {
		if (rc != -EBADMSG)
			log_error("ledger: replay of %s failed: %s", dir, strerror(-rc));
		ledger_stop(ls);
		return rc;
	}
	ls->writers = calloc(n_shards, sizeof(*ls->writers));
	if (!ls->writers) {
		ledger_stop(ls);
		return -ENOMEM;
	}
	for (uint32_t i = 0; i < n_shards && !rc; i++) {
		uint64_t seq = ls->replay.next_seq[i] ? ls->replay.next_seq[i] : 1;
		rc = ledger_writer_open(&ls->writers[i], ls->dir_fd, i, seq,
					(uint64_t)cfg->ledger.segment_mb << 20,
					(enum ledger_fsync)cfg->ledger.fsync, cfg->ledger.batch_ms);
		if (!rc)
			ls->n = i + 1;
	}
	if (!rc)
		rc = ledger_replay_book_pending(&ls->replay, ls->writers, ls->n);
	if (rc) {
		log_error("ledger: cannot open segments in %s: %s", dir, strerror(-rc));
		ledger_stop(ls);
		return rc;
	}
	const struct ledger_replay *r = &ls->replay;
	char usd[32];
	money_format(r->restored_usd, usd, sizeof(usd));
	log_info("ledger %s: replayed %llu records in %llu segments: %llu spends ($%s in all), "
		 "%u live runs, %u open grants (%u closed at expiry), %llu orphaned reservations "
		 "charged, %llu torn bytes truncated", dir,
		 (unsigned long long)r->records, (unsigned long long)r->segments,
		 (unsigned long long)r->commits, usd, r->runs_restored, r->grants_restored,
		 r->grants_closed, (unsigned long long)r->expired,
		 (unsigned long long)r->truncated_bytes);
	ledger_replay_free_pending(&ls->replay);
	return 0;
}

uint64_t ledger_first_decision(const struct ledger_set *ls, uint32_t shard)
{
	uint64_t seen = shard < BUDGET_MAX_SHARDS ? ls->replay.next_decision[shard] : 0;
	return seen ? (seen / DECISION_GAP + 1) * DECISION_GAP : 0;
}

void ledger_stop(struct ledger_set *ls)
{
	for (uint32_t i = 0; i < ls->n; i++)
		ledger_writer_close(&ls->writers[i]);
	free(ls->writers);
	ls->writers = NULL;
	ls->n = 0;
	ledger_replay_free(&ls->replay);
	if (ls->dir_fd >= 0)
		close(ls->dir_fd);
	ls->dir_fd = -1;
}
