/*
 * mockllm_tls.c — HTTPS for mockllm (--tls-cert / --tls-key): TLS 1.2 on
 * tollgate's own TLS module (tls/), so the mock speaks exactly the
 * protocol, ciphers and record sizes tollgate's upstream side meets.
 *
 * Ownership: the main thread reads the PEM files once, checks them and
 * draws the session-ticket secret; all three stay read-only in the config.
 * Each worker has its own tls_shard (DRBG, ticket keys) and its own
 * server configuration parsed from those bytes, built before its thread
 * starts and touched by that thread only: no mbedTLS object is shared.
 *
 * A connection's session moves bytes the way tls/conn.c wants them moved:
 *
 *   in   ciphertext is read into the worker's read buffer and offered to
 *        mbedTLS; plaintext is decrypted into the worker's plaintext buffer
 *        and handed to the same parser as a plain read (conn_take_input,
 *        which keeps whatever it cannot parse yet). mbedTLS reads the
 *        offered bytes only while it runs, so ciphertext it could not take
 *        (it was waiting for a send) is copied into the session's stash.
 *   out  a record is encrypted from c->out in place (at most 16 KB),
 *        mbedTLS leaves it in its own buffer, tls_conn_out() hands it over,
 *        send() writes it, tls_conn_sent() reports, and the same mbedTLS
 *        call is made again to finish it (`op` says which). A send that
 *        hits EAGAIN keeps its bytes in `pend` until EPOLLOUT.
 *
 * The handshake's flights go out the same way. A failed handshake sends
 * mbedTLS's alert once, best effort, and closes. A closing reply ends with
 * close_notify before the FIN; x-mock-reset-after still just resets.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mockllm.h"
#include "tls/tls.h"

#define TLS_RECORD 16384        /* plaintext per record, and per decrypt */

_Static_assert(MOCK_TLS_SECRET == TLS_TICKET_SECRET, "ticket secret size");

struct worker_tls {
	struct tls_shard shard;
	struct tls_conf *conf;
	char plain[TLS_RECORD];         /* decrypted bytes on their way to the parser */
};

/* The mbedTLS call that waits for the send of its record. */
enum tls_op {
	OP_NONE = 0,
	OP_HANDSHAKE,                   /* tls_conn_handshake() */
	OP_WRITE,                       /* tls_conn_write() of `wlen` bytes at c->out_sent */
	OP_CLOSE,                       /* mbedtls_ssl_close_notify() */
};

struct conn_tls {
	struct tls_conn t;
	enum tls_op op;
	bool notified;                  /* close_notify started */
	bool stashed;                   /* t.cin points into `stash` */
	const char *pend;               /* bytes of the record not yet sent */
	size_t pend_len;
	size_t wlen;                    /* OP_WRITE: plaintext length of the record */
	struct buf stash;               /* ciphertext mbedTLS has not read yet */
};

/* ---- set-up (main thread) ---- */

/* A whole file, NUL-terminated; *len counts the NUL. NULL with errno set. */
static char *read_pem(const char *path, size_t *len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return NULL;
	struct stat st;
	char *data = NULL;
	if (fstat(fd, &st) < 0)
		goto fail;
	if (!S_ISREG(st.st_mode) || st.st_size > 16 * 1024 * 1024) {
		errno = S_ISDIR(st.st_mode) ? EISDIR : S_ISREG(st.st_mode) ? EFBIG : EINVAL;
		goto fail;
	}
	data = malloc((size_t)st.st_size + 1);
	if (!data)
		goto fail;
	size_t got = 0;
	while (got < (size_t)st.st_size) {
		ssize_t n = read(fd, data + got, (size_t)st.st_size - got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			goto fail;
		if (n == 0)
			break;
		got += (size_t)n;
	}
	close(fd);
	data[got] = '\0';
	*len = got + 1;
	return data;
fail:;
	int err = errno;
	free(data);
	close(fd);
	errno = err;
	return NULL;
}

static int load_fail(struct mock_config *cfg)
{
	free(cfg->tls_cert);
	free(cfg->tls_key);
	cfg->tls_cert = cfg->tls_key = NULL;
	return -1;
}

int mock_tls_load(struct mock_config *cfg, const char *cert_path, const char *key_path)
{
	cfg->tls_cert = read_pem(cert_path, &cfg->tls_cert_len);
	if (!cfg->tls_cert) {
		fprintf(stderr, "mockllm: --tls-cert %s: %s\n", cert_path, strerror(errno));
		return load_fail(cfg);
	}
	cfg->tls_key = read_pem(key_path, &cfg->tls_key_len);
	if (!cfg->tls_key) {
		fprintf(stderr, "mockllm: --tls-key %s: %s\n", key_path, strerror(errno));
		return load_fail(cfg);
	}
	char err[256];
	if (tls_check_server_pem(cfg->tls_cert, cfg->tls_cert_len, cfg->tls_key,
				 cfg->tls_key_len, err, sizeof(err)) < 0) {
		fprintf(stderr, "mockllm: --tls-cert %s / --tls-key %s: %s\n", cert_path,
			key_path, err);
		return load_fail(cfg);
	}
	size_t got = 0;
	while (got < sizeof(cfg->tls_secret)) {
		ssize_t n = getrandom(cfg->tls_secret + got, sizeof(cfg->tls_secret) - got, 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			fprintf(stderr, "mockllm: getrandom: %s\n", strerror(errno));
			return load_fail(cfg);
		}
		got += (size_t)n;
	}
	return 0;
}

int worker_tls_init(struct worker *w)
{
	const struct mock_config *cfg = w->cfg;
	struct worker_tls *wt = calloc(1, sizeof(*wt));
	if (!wt || tls_shard_init(&wt->shard, cfg->tls_secret) < 0) {
		fprintf(stderr, "mockllm: worker %u: TLS random generator: %s\n", w->index,
			wt ? "seeding failed" : strerror(ENOMEM));
		free(wt);
		return -1;
	}
	wt->conf = tls_conf_server(&wt->shard, cfg->tls_cert, cfg->tls_cert_len,
				   cfg->tls_key, cfg->tls_key_len);
	if (!wt->conf) {
		fprintf(stderr, "mockllm: worker %u: TLS server configuration failed\n",
			w->index);
		tls_shard_free(&wt->shard);
		free(wt);
		return -1;
	}
	w->tls = wt;
	return 0;
}

/* ---- sessions ---- */

int conn_tls_start(struct conn *c)
{
	struct conn_tls *s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	if (tls_conn_init(&s->t, c->w->tls->conf) < 0) {
		free(s);
		return -ENOMEM;
	}
	c->tls = s;
	return 0;
}

/* Every send() is synchronous, so no send of t->out is ever in flight. */
void conn_tls_end(struct conn *c)
{
	struct conn_tls *s = c->tls;
	tls_conn_free(&s->t);
	buf_free(&s->stash);
	free(s);
	c->tls = NULL;
}

bool conn_tls_busy(const struct conn *c)
{
	return c->tls->op != OP_NONE;
}

/* Takes the record mbedTLS left for sending; false if there is none. */
static bool take_out(struct conn_tls *s, enum tls_op op)
{
	const void *p;
	size_t n;
	if (!tls_conn_out(&s->t, &p, &n))
		return false;
	s->op = op;
	s->pend = p;
	s->pend_len = n;
	return true;
}

/* A TLS failure: mbedTLS's alert goes out once, best effort; then close. */
static int tls_fail(struct conn *c)
{
	struct conn_tls *s = c->tls;
	const void *p;
	size_t n;
	if (s->pend_len == 0 && tls_conn_out(&s->t, &p, &n))
		(void)send(c->fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
	s->op = OP_NONE;
	s->pend_len = 0;
	return -EPROTO;
}

/* Offered ciphertext that mbedTLS did not read moves to the stash (the
 * worker's read buffer is reused by the next read). Returns 0 or -ENOMEM. */
static int keep_rest(struct conn_tls *s)
{
	size_t left = tls_conn_input_left(&s->t);
	if (left == 0) {
		s->stashed = false;
		buf_trim(&s->stash);
		return 0;
	}
	if (s->stashed)
		return 0;
	s->stash.len = 0;
	if (buf_reserve(&s->stash, left) < 0)
		return -ENOMEM;
	buf_put(&s->stash, s->t.cin, left);
	tls_conn_input(&s->t, s->stash.data, left);
	s->stashed = true;
	return 0;
}

/* New ciphertext behind stashed bytes. Returns 0 or -ENOMEM. */
static int stash_append(struct conn_tls *s, const char *data, size_t n)
{
	size_t left = tls_conn_input_left(&s->t);
	memmove(s->stash.data, s->t.cin, left);
	s->stash.len = left;
	if (buf_reserve(&s->stash, n) < 0)
		return -ENOMEM;
	buf_put(&s->stash, data, n);
	tls_conn_input(&s->t, s->stash.data, s->stash.len);
	return 0;
}

/*
 * Runs the session on the offered ciphertext while no send is waiting:
 * the handshake, then decryption into the parser. Stops when the input is
 * used up or a record waits to be sent. Returns 0, or -errno to close.
 */
static int tls_feed(struct conn *c)
{
	struct conn_tls *s = c->tls;
	struct tls_conn *t = &s->t;
	char *plain = c->w->tls->plain;
	while (s->op == OP_NONE) {
		if (t->phase != TLS_OPEN) {
			int rc = tls_conn_handshake(t);
			if (rc < 0)
				return tls_fail(c);
			if (rc == 0 && !take_out(s, OP_HANDSHAKE))
				break;                  /* needs more ciphertext */
			continue;
		}
		if (c->state != CONN_READING) {
			tls_conn_input(t, NULL, 0);     /* discarded, as plain reads are */
			break;
		}
		ssize_t n = tls_conn_read(t, plain, TLS_RECORD);
		if (n > 0) {
			if (conn_take_input(c, plain, (size_t)n) < 0)
				return -ENOMEM;
			continue;
		}
		if (n == 0 && !t->want_write)
			break;                          /* needs more ciphertext */
		if (n == -ESHUTDOWN)
			return -ECONNRESET;             /* close_notify: like EOF */
		return tls_fail(c);     /* an error, or an alert to send (renegotiation) */
	}
	return keep_rest(s);
}

ssize_t conn_tls_read(struct conn *c)
{
	struct conn_tls *s = c->tls;
	struct worker *w = c->w;
	if (tls_conn_input_left(&s->t) >= MOCK_BACKLOG_MAX)
		return 0;               /* a send is stuck and the peer keeps sending */
	ssize_t n = recv(c->fd, w->rbuf, MOCK_READ_BYTES, 0);
	if (n < 0) {
		if (errno == EINTR)
			return 0;
		if (errno == EAGAIN) {
			c->can_read = false;
			return 0;
		}
		return -ECONNRESET;
	}
	if (n == 0)
		return -ECONNRESET;
	if (n < MOCK_READ_BYTES && !c->peer_hup)
		c->can_read = false;
	if (c->state != CONN_READING)
		return n;               /* closing or stalled: discard, as plain does */
	if (s->stashed) {
		if (stash_append(s, w->rbuf, (size_t)n) < 0)
			return -ENOMEM;
	} else {
		tls_conn_input(&s->t, w->rbuf, (size_t)n);
	}
	int rc = tls_feed(c);
	return rc < 0 ? rc : n;
}

/*
 * Makes the waiting mbedTLS call again after its send completed. It may
 * leave another record (a partial send's rest, the next handshake
 * message). Returns 0 or -errno.
 */
static int tls_resume(struct conn *c)
{
	struct conn_tls *s = c->tls;
	enum tls_op op = s->op;
	s->op = OP_NONE;
	switch (op) {
	case OP_HANDSHAKE:
		return tls_feed(c);
	case OP_WRITE: {
		/* mbedTLS encrypted the bytes on the first call; this one only
		 * finishes sending the record and returns wlen. */
		ssize_t r = tls_conn_write(&s->t, c->out.data + c->out_sent, s->wlen);
		if (r > 0) {
			c->out_sent += (size_t)r;
			return 0;
		}
		if (r == 0 && take_out(s, OP_WRITE))
			return 0;
		return tls_fail(c);
	}
	case OP_CLOSE:
		if (mbedtls_ssl_close_notify(&s->t.ssl) == MBEDTLS_ERR_SSL_WANT_WRITE)
			take_out(s, OP_CLOSE);
		return 0;
	case OP_NONE:
		break;
	}
	return 0;
}

ssize_t conn_tls_flush(struct conn *c)
{
	struct conn_tls *s = c->tls;
	struct tls_conn *t = &s->t;
	ssize_t total = 0;
	for (;;) {
		if (s->pend_len) {
			ssize_t n = send(c->fd, s->pend, s->pend_len, MSG_NOSIGNAL);
			if (n < 0) {
				if (errno == EINTR)
					continue;
				if (errno == EAGAIN) {
					c->can_write = false;
					break;
				}
				int err = errno;
				tls_conn_sent(t, -err);
				s->pend_len = 0;
				s->op = OP_NONE;
				return -err;
			}
			total += n;
			s->pend_len = 0;
			tls_conn_sent(t, (int)n);
			int rc = tls_resume(c);
			if (rc == 0 && s->op == OP_NONE && tls_conn_input_left(t))
				rc = tls_feed(c);       /* ciphertext that waited for the send */
			if (rc < 0)
				return rc;
			continue;
		}
		if (s->op != OP_NONE || t->phase != TLS_OPEN || c->out_sent >= c->out.len)
			break;
		s->wlen = MOCK_MIN(c->out.len - c->out_sent, (size_t)TLS_RECORD);
		ssize_t r = tls_conn_write(t, c->out.data + c->out_sent, s->wlen);
		if (r > 0)
			c->out_sent += (size_t)r;
		else if (r < 0 || !take_out(s, OP_WRITE))
			return tls_fail(c);
	}
	if (c->out_sent == c->out.len && s->op != OP_WRITE) {
		c->out_sent = 0;
		buf_trim(&c->out);
	}
	return total;
}

bool conn_tls_close_notify(struct conn *c)
{
	struct conn_tls *s = c->tls;
	if (s->notified || s->t.phase != TLS_OPEN)
		return false;
	s->notified = true;
	if (mbedtls_ssl_close_notify(&s->t.ssl) != MBEDTLS_ERR_SSL_WANT_WRITE ||
	    !take_out(s, OP_CLOSE))
		return false;
	if (c->can_write && conn_tls_flush(c) < 0)
		return false;
	return s->op != OP_NONE;
}
