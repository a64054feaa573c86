/*
 * segment.c — segment names, directory listing, and damage-aware reading
 * (segment.h).
 */
#include "ledger/segment.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

bool ledger_segment_name(char *out, size_t cap, uint32_t shard, uint64_t seq)
{
	int n = snprintf(out, cap, "s%03u-%010llu.tgl", shard, (unsigned long long)seq);
	return n > 0 && (size_t)n < cap;
}

bool ledger_segment_parse_name(const char *name, uint32_t *shard, uint64_t *seq)
{
	/* exactly s + 3 digits + '-' + 10 digits + ".tgl" */
	if (strlen(name) != 19 || name[0] != 's' || name[4] != '-' || strcmp(name + 15, ".tgl"))
		return false;
	uint64_t v = 0;
	for (int i = 1; i < 15; i++) {
		if (i == 4)
			continue;
		if (name[i] < '0' || name[i] > '9')
			return false;
		if (i == 5) {
			*shard = (uint32_t)v;
			v = 0;
		}
		v = v * 10 + (uint64_t)(name[i] - '0');
	}
	*seq = v;
	return true;
}

static int by_shard_seq(const void *a, const void *b)
{
	const struct ledger_segment *x = a, *y = b;
	if (x->shard != y->shard)
		return x->shard < y->shard ? -1 : 1;
	return x->seq < y->seq ? -1 : x->seq > y->seq;
}

int ledger_segments_list(int dir_fd, struct ledger_segment **out, size_t *n)
{
	int fd = dup(dir_fd);
	DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
	if (!d) {
		int err = errno;
		if (fd >= 0)
			close(fd);
		return -err;
	}
	rewinddir(d);
	struct ledger_segment *v = NULL;
	size_t count = 0, cap = 0;
	struct dirent *e;
	while ((e = readdir(d))) {
		struct ledger_segment s = { 0 };
		if (!ledger_segment_parse_name(e->d_name, &s.shard, &s.seq))
			continue;
		struct stat st;
		if (e->d_type != DT_REG && (e->d_type != DT_UNKNOWN ||
					    fstatat(dir_fd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) ||
					    !S_ISREG(st.st_mode)))
			continue;   /* named like a segment, but not a file we wrote */
		if (count == cap) {
			cap = cap ? cap * 2 : 16;
			struct ledger_segment *nv = realloc(v, cap * sizeof(*v));
			if (!nv) {
				free(v);
				closedir(d);
				return -ENOMEM;
			}
			v = nv;
		}
		memcpy(s.name, e->d_name, strlen(e->d_name) + 1);
		v[count++] = s;
	}
	closedir(d);
	if (count)
		qsort(v, count, sizeof(*v), by_shard_seq);
	for (size_t i = 0; i < count; i++)
		v[i].last = i + 1 == count || v[i + 1].shard != v[i].shard;
	*out = v;
	*n = count;
	return 0;
}

/* The offset of the next whole record after `from`, or len if none. */
static size_t resync(const char *buf, size_t len, size_t from)
{
	struct ledger_rec rec;
	size_t size;
	for (size_t off = from + 1; off + LEDGER_HEADER <= len; off++)
		if (ledger_decode(buf + off, len - off, &rec, &size) == LEDGER_OK)
			return off;
	return len;
}

int ledger_scan_buf(const char *buf, size_t len, bool skip_bad,
		    int (*each)(const struct ledger_rec *rec, size_t off, void *arg), void *arg,
		    struct ledger_scan *out)
{
	memset(out, 0, sizeof(*out));
	out->size = len;
	size_t off = 0;
	while (off < len) {
		struct ledger_rec rec;
		size_t size;
		enum ledger_decode_rc rc = ledger_decode(buf + off, len - off, &rec, &size);
		if (rc == LEDGER_OK) {
			out->records++;
			out->kept += size;
			int stop = each ? each(&rec, off, arg) : 0;
			off += size;
			if (out->damage == LEDGER_CLEAN)
				out->good_end = off;
			if (stop)
				return stop;
			continue;
		}
		size_t next = resync(buf, len, off);
		if (next == len) {
			/* nothing whole after it: a write cut short */
			if (out->damage == LEDGER_CLEAN) {
				out->damage = LEDGER_TORN_TAIL;
				out->bad_offset = off;
			}
			return 0;
		}
		if (out->damage != LEDGER_CORRUPT)
			out->bad_offset = out->damage == LEDGER_CLEAN ? off : out->bad_offset;
		out->damage = LEDGER_CORRUPT;
		if (!skip_bad)
			return 0;
		out->skipped += next - off;
		off = next;
	}
	return 0;
}

int ledger_read_file(int dir_fd, const char *name, char **buf, size_t *len)
{
	*buf = NULL;
	*len = 0;
	/* O_NONBLOCK: a FIFO named like a segment must not hang us */
	int fd = openat(dir_fd, name, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
	if (fd < 0)
		return -errno;
	struct stat st;
	int rc = fstat(fd, &st) ? -errno : S_ISREG(st.st_mode) ? 0 : -EINVAL;
	size_t size = rc ? 0 : (size_t)st.st_size;
	char *p = !rc && size ? malloc(size) : NULL;
	if (!rc && size && !p)
		rc = -ENOMEM;
	size_t got = 0;
	while (!rc && got < size) {
		ssize_t n = pread(fd, p + got, size - got, (off_t)got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			rc = -errno;
		else if (n == 0)
			break;     /* shrank under us: read what is there */
		else
			got += (size_t)n;
	}
	close(fd);
	if (rc) {
		free(p);
		return rc;
	}
	*buf = p;
	*len = got;
	return 0;
}

int ledger_scan_file(int dir_fd, const struct ledger_segment *seg, bool skip_bad,
		     int (*each)(const struct ledger_rec *rec, size_t off, void *arg), void *arg,
		     struct ledger_scan *out)
{
	char *buf;
	size_t len;
	int rc = ledger_read_file(dir_fd, seg->name, &buf, &len);
	if (rc) {
		memset(out, 0, sizeof(*out));
		return rc;
	}
	rc = ledger_scan_buf(buf, len, skip_bad, each, arg, out);
	free(buf);
	/* a torn tail is a crash's only in the shard's last segment */
	if (out->damage == LEDGER_TORN_TAIL && !seg->last)
		out->damage = LEDGER_CORRUPT;
	return rc;
}
