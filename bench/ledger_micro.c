/*
 * ledger_micro — ledger records per second on one shard's writer
 * (ledger/writer.c), in each fsync mode, through a real io_uring to a real
 * file in the directory given (default: a temp dir under $TMPDIR).
 *
 * A loop turn appends `batch` records of a typical size (a commit with
 * key, team, org, run, model and tags) and flushes; completions are
 * handled as the shard does. batch 1 is one call per turn (the worst
 * case for group commit); batch 64 is a busy shard. Each case runs for
 * SECONDS and prints records/s and the mean µs from the flush until a
 * waiter's batch was written (and synced, under `always`): what holding a
 * reply's end for its record adds. One JSON object on stdout.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ledger/writer.h"
#include "net/ring.h"

#define SECONDS 2.0

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

struct waiter {
	struct ledger_wait w;
	double since;
	double *waited;
	long *woken;
};

static void woke(struct ledger_wait *w, int err)
{
	struct waiter *x = (struct waiter *)w;
	*x->waited += now_s() - x->since;
	(*x->woken)++;
	(void)err;
}

static struct ledger_text t(const char *s)
{
	return (struct ledger_text){ s, (uint16_t)strlen(s) };
}

static int run_case(const char *dir, enum ledger_fsync mode, int batch, double *rps,
		    double *wait_us)
{
	char path[4096];
	snprintf(path, sizeof(path), "%s/case-%d-%d", dir, (int)mode, batch);
	if (mkdir(path, 0700) && errno != EEXIST)
		return -errno;
	int dir_fd = open(path, O_RDONLY | O_DIRECTORY);
	struct ring r;
	struct ledger_writer w;
	if (dir_fd < 0 || ring_init(&r, 256) ||
	    ledger_writer_open(&w, dir_fd, 0, 1, 64ull << 20, mode, 10))
		return -1;
	struct ledger_rec rec = { .kind = LEDGER_COMMIT, .usd = 1234, .reserved = 5000,
				  .input = 300, .output = 158, .decision = 1 };
	rec.f[LF_KEY] = t("bench");
	rec.f[LF_TEAM] = t("bench-team");
	rec.f[LF_ORG] = t("bench-org");
	rec.f[LF_RUN] = t("run-0123456789abcdef01234567");
	rec.f[LF_MODEL] = t("gpt-4o");
	rec.f[LF_PROVIDER] = t("mock-openai");
	rec.f[LF_PRICES] = t("bench");
	rec.f[LF_TAGS] = t("task=summarize,app=bench,env=prod");
	struct waiter *ws = calloc((size_t)batch, sizeof(*ws));
	double waited = 0;
	long woken = 0, records = 0;
	double t0 = now_s(), end = t0 + SECONDS;
	while (now_s() < end) {
		for (int i = 0; i < batch; i++) {
			rec.decision++;
			ledger_append(&w, &rec);
			ws[i] = (struct waiter){ .w.done = woke, .waited = &waited, .woken = &woken };
			ledger_wait_add(&w, &ws[i].w);
		}
		records += batch;
		double flushed = now_s();
		for (int i = 0; i < batch; i++)
			ws[i].since = flushed;
		ledger_writer_flush(&w, &r, (uint64_t)(now_s() * 1000));
		/* turn until this batch is written, as waiting replies would */
		while (ws[batch - 1].w.next) {
			struct io_uring_cqe *cqe;
			io_uring_submit_and_wait(&r.uring, 1);
			unsigned head, seen = 0;
			io_uring_for_each_cqe(&r.uring, head, cqe) {
				enum ring_op op = ring_tag_op(cqe->user_data);
				ledger_writer_on_sync(&w, cqe->res, op == OP_LEDGER_SYNC);
				seen++;
			}
			io_uring_cq_advance(&r.uring, seen);
			ledger_writer_flush(&w, &r, (uint64_t)(now_s() * 1000));
		}
	}
	double el = now_s() - t0;
	*rps = records / el;
	*wait_us = woken ? waited / woken * 1e6 : 0;
	ledger_writer_close(&w);
	ring_exit(&r);
	close(dir_fd);
	free(ws);
	char cmd[4200];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", path);
	return system(cmd) == 0 ? 0 : -1;
}

int main(int argc, char **argv)
{
	char tmpl[] = "/tmp/ledger-micro.XXXXXX";
	const char *dir = argc > 1 ? argv[1] : mkdtemp(tmpl);
	if (!dir)
		return 2;
	static const char *const names[] = { "never", "batch", "always" };
	static const int batches[] = { 1, 64 };
	printf("{\"seconds_per_case\":%.1f,\"cases\":[", SECONDS);
	for (int m = 0; m < 3; m++)
		for (int b = 0; b < 2; b++) {
			double rps, wait_us;
			if (run_case(dir, (enum ledger_fsync)m, batches[b], &rps, &wait_us)) {
				fprintf(stderr, "ledger_micro: case %s/%d failed\n", names[m], batches[b]);
				return 2;
			}
			printf("%s{\"fsync\":\"%s\",\"batch\":%d,\"records_per_s\":%.0f,"
			       "\"wait_us\":%.1f}", m || b ? "," : "", names[m], batches[b], rps,
			       wait_us);
		}
	printf("]}\n");
	if (argc <= 1)
		rmdir(dir);
	return 0;
}
