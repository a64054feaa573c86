/*
 * tollctl_scan.c — reading a ledger directory for tollctl
 * (tollctl_scan.h).
 *
 * ledger_scan_file() reads each segment into a new malloc'd buffer. A
 * report reads every segment of a large ledger, so this reads into one
 * buffer that grows to the largest segment and is reused: the pages are
 * faulted in once, not once per segment. Otherwise it behaves as
 * ledger_read_file() + ledger_scan_file(): same open flags (O_NONBLOCK,
 * so a FIFO named like a segment cannot hang us), same refusal of what is
 * not a regular file, same reading of a file that shrank meanwhile (what
 * is there is read), same damage rules.
 */
#include "tools/tollctl_scan.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int tollctl_ledger_open(struct tollctl_ledger *l, const char *dir)
{
	memset(l, 0, sizeof(*l));
	l->dir = dir;
	l->dir_fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (l->dir_fd < 0) {
		fprintf(stderr, "tollctl: ledger directory %s: %s\n", dir, strerror(errno));
		return 1;
	}
	int rc = ledger_segments_list(l->dir_fd, &l->segs, &l->n);
	if (rc) {
		fprintf(stderr, "tollctl: listing %s: %s\n", dir, strerror(-rc));
		close(l->dir_fd);
		return 1;
	}
	return 0;
}

void tollctl_ledger_close(struct tollctl_ledger *l)
{
	free(l->segs);
	free(l->buf);
	close(l->dir_fd);
	memset(l, 0, sizeof(*l));
	l->dir_fd = -1;
}

/* l->buf at least size bytes. 0 or -ENOMEM. */
static int reserve_buf(struct tollctl_ledger *l, size_t size)
{
	if (size <= l->cap)
		return 0;
	free(l->buf);                     /* nothing in it to keep */
	l->buf = malloc(size);
	l->cap = l->buf ? size : 0;
	return l->buf ? 0 : -ENOMEM;
}

/* size bytes of fd into l->buf, fewer if the file shrank; *len what was
 * read. 0 or a negative errno. */
static int read_all(struct tollctl_ledger *l, int fd, size_t size, size_t *len)
{
	size_t got = 0;
	while (got < size) {
		ssize_t n = pread(fd, l->buf + got, size - got, (off_t)got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		if (n == 0)
			break;     /* shrank under us: read what is there */
		got += (size_t)n;
	}
	*len = got;
	return 0;
}

/* Segment name of l into l->buf[0..*len). 0 or a negative errno. */
static int read_segment(struct tollctl_ledger *l, const char *name, size_t *len)
{
	*len = 0;
	int fd = openat(l->dir_fd, name, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
	if (fd < 0)
		return -errno;
	struct stat st;
	int rc = fstat(fd, &st) ? -errno : S_ISREG(st.st_mode) ? 0 : -EINVAL;
	if (!rc)
		rc = reserve_buf(l, (size_t)st.st_size);
	if (!rc)
		rc = read_all(l, fd, (size_t)st.st_size, len);
	close(fd);
	return rc;
}

int tollctl_segment_scan(struct tollctl_ledger *l, size_t i,
			 int (*each)(const struct ledger_rec *rec, size_t off, void *arg),
			 void *arg, struct ledger_scan *out)
{
	size_t len;
	int rc = read_segment(l, l->segs[i].name, &len);
	if (rc) {
		memset(out, 0, sizeof(*out));
		return rc;
	}
	rc = ledger_scan_buf(l->buf, len, true, each, arg, out);
	/* a torn tail is a crash's only in the shard's last segment */
	if (out->damage == LEDGER_TORN_TAIL && !l->segs[i].last)
		out->damage = LEDGER_CORRUPT;
	return rc;
}

const char *tollctl_damage_name(enum ledger_damage d)
{
	return d == LEDGER_CLEAN ? "clean" : d == LEDGER_TORN_TAIL ? "torn_tail" : "corrupt";
}

/* A torn tail in a segment that is not its shard's last counts as
 * corruption (no crash leaves one there); it is the only corruption that
 * skips nothing. */
void tollctl_describe_damage(FILE *f, const struct ledger_scan *s)
{
	unsigned long long at = s->bad_offset, tail = s->size - s->good_end;
	if (s->damage == LEDGER_TORN_TAIL)
		fprintf(f, "torn tail at byte %llu: %llu bytes after the last whole record (a "
			"write cut short; the daemon truncates a torn tail at its next start)",
			at, tail);
	else if (!s->skipped)
		fprintf(f, "corrupt: torn tail at byte %llu in a segment that is not its shard's "
			"last (the daemon refuses to start without --ledger-repair, which cuts "
			"it off)", at);
	else
		fprintf(f, "corrupt at byte %llu: %llu bytes skipped to the next whole record "
			"(the daemon refuses to start without --ledger-repair, which cuts the "
			"damage out)", at, (unsigned long long)s->skipped);
}

int tollctl_segment_warn(const struct tollctl_ledger *l, size_t i, const struct ledger_scan *s)
{
	if (s->damage == LEDGER_CLEAN)
		return 0;
	fprintf(stderr, "tollctl: warning: %s/%s: ", l->dir, l->segs[i].name);
	tollctl_describe_damage(stderr, s);
	fprintf(stderr, "\n");
	return 2;
}
