/*
 * tollctl_agg.c — adding up a ledger for `tollctl report` (tollctl_agg.h).
 *
 * This is the report's hot path: it runs once per record, ten million
 * times for a large ledger, on records decoded in place in the segment
 * buffer. So it allocates nothing per record (the intern tables grow by
 * doubling, keys go to their arena once), prints nothing, and parses tags
 * only for the records whose groups or task need them. Per spend record
 * it does a handful of hash lookups: one per text dimension of the group
 * and the task type, in small tables that stay in cache, then the group
 * and the run, in tables that can be far larger than the caches.
 *
 * Those last two lookups cost cache misses (two each: slot, entry), so
 * calls and refusals are added in batches: as a record is staged, the
 * slots of its group and run are prefetched; when the batch is full, the
 * entries those slots name are prefetched for all of it, then each call
 * is added. The misses of a batch overlap instead of following one
 * another. Calls are still added in ledger order, so "first call" and
 * "first seen" mean what they say.
 *
 * What counts as what:
 *  - commit and expire records are spend (usd, tokens, calls), booked to
 *    their group, their task type and their run;
 *  - refuse records count in their group's `refused`, with no money;
 *  - chargeback records move usd from `team` (debited) to `peer_team`
 *    (credited);
 *  - outcome records give their run (field run) an outcome (field code):
 *    the latest by time wins, and at equal times the later in ledger
 *    order;
 *  - reserve, release, grant, freeze and unfreeze records are read (and
 *    counted in `records`) but book nothing here.
 */
#include "tools/tollctl_agg.h"

#include <errno.h>
#include <string.h>

static const char *const dim_names[DIM_COUNT] = {
	[DIM_TEAM] = "team", [DIM_USER] = "user", [DIM_KEY] = "key", [DIM_MODEL] = "model",
	[DIM_PROVIDER] = "provider", [DIM_TASK] = "task", [DIM_APP] = "app", [DIM_ENV] = "env",
	[DIM_DAY] = "day",
};

const char *tollctl_dim_name(enum tollctl_dim d)
{
	return d < DIM_COUNT ? dim_names[d] : "?";
}

bool tollctl_dim_parse(const char *name, size_t len, enum tollctl_dim *d)
{
	for (unsigned i = 0; i < DIM_COUNT; i++) {
		if (strlen(dim_names[i]) == len && !memcmp(dim_names[i], name, len)) {
			*d = (enum tollctl_dim)i;
			return true;
		}
	}
	return false;
}

int tollctl_agg_init(struct tollctl_agg *a, const enum tollctl_dim *by, unsigned n_by,
		     const struct tollctl_range *range)
{
	memset(a, 0, sizeof(*a));
	a->range = *range;
	a->n_by = n_by;
	for (unsigned i = 0; i < n_by; i++) {
		a->by[i] = by[i];
		a->by_tags |= by[i] == DIM_TASK || by[i] == DIM_APP || by[i] == DIM_ENV;
	}
	if (tollctl_intern_init(&a->strs, 0) ||
	    tollctl_intern_init(&a->groups, sizeof(struct tollctl_group)) ||
	    tollctl_intern_init(&a->runs, sizeof(struct tollctl_run)) ||
	    tollctl_intern_init(&a->tasks, sizeof(struct tollctl_task)) ||
	    tollctl_intern_init(&a->chargebacks, sizeof(struct tollctl_chargeback))) {
		tollctl_agg_free(a);
		return -ENOMEM;
	}
	return 0;
}

void tollctl_agg_free(struct tollctl_agg *a)
{
	tollctl_intern_free(&a->strs);
	tollctl_intern_free(&a->groups);
	tollctl_intern_free(&a->runs);
	tollctl_intern_free(&a->tasks);
	tollctl_intern_free(&a->chargebacks);
}

/* ---- money and text ---- */

/* *sum += v, held at the int64 limit (and flagged) instead of wrapping. */
static void add_usd(struct tollctl_agg *a, int64_t *sum, int64_t v)
{
	if (__builtin_add_overflow(*sum, v, sum)) {
		*sum = v < 0 ? INT64_MIN : INT64_MAX;
		a->overflow = true;
	}
}

/* An empty text (a field absent from the record, a missing tag) as "-". */
static struct ledger_text or_dash(struct ledger_text t)
{
	return t.len ? t : (struct ledger_text){ "-", 1 };
}

/* The id of text t (or "-") in a->strs; -ENOMEM. */
static int64_t str_id(struct tollctl_agg *a, struct ledger_text t)
{
	uint32_t id;
	t = or_dash(t);
	return tollctl_intern(&a->strs, t.p, t.len, &id) ? (int64_t)id : -ENOMEM;
}

/* The tags a report reads; empty when the record has none. */
struct tags {
	struct ledger_text task, app, env;
};

/* The value of the pair p[0..n) ("k=v") into the tag it names, if any. */
static void tag_pair(const char *p, size_t n, struct tags *out)
{
	const char *eq = memchr(p, '=', n);
	if (!eq)
		return;
	size_t klen = (size_t)(eq - p);
	struct ledger_text v = { eq + 1, (uint16_t)(n - klen - 1) };
	if (klen == 4 && !memcmp(p, "task", 4))
		out->task = v;
	else if (klen == 3 && !memcmp(p, "app", 3))
		out->app = v;
	else if (klen == 3 && !memcmp(p, "env", 3))
		out->env = v;
}

/* X-Budget-Tags ("app=support, env=prod,task=refund": comma-separated
 * k=v, a space allowed after a comma) into out. The daemon only books
 * tags that pass tags_valid(); anything else here is read as well as it
 * can be, never refused. */
static void parse_tags(struct ledger_text t, struct tags *out)
{
	memset(out, 0, sizeof(*out));
	const char *p = t.p, *end = t.p + t.len;
	while (p < end) {
		while (p < end && *p == ' ')
			p++;
		const char *comma = memchr(p, ',', (size_t)(end - p));
		const char *stop = comma ? comma : end;
		tag_pair(p, (size_t)(stop - p), out);
		p = comma ? comma + 1 : end;
	}
}

/* ---- groups ---- */

/* The key part of dimension d for rec: a strs id, or the UTC day. */
static int dim_value(struct tollctl_agg *a, const struct ledger_rec *rec,
		     const struct tags *tags, enum tollctl_dim d, uint64_t *out)
{
	static const enum ledger_field fields[] = {
		[DIM_TEAM] = LF_TEAM, [DIM_USER] = LF_USER, [DIM_KEY] = LF_KEY,
		[DIM_MODEL] = LF_MODEL, [DIM_PROVIDER] = LF_PROVIDER,
	};
	if (d == DIM_DAY) {
		*out = (uint64_t)tollctl_day_of(rec->time_ms);
		return 0;
	}
	struct ledger_text t = d == DIM_TASK ? tags->task : d == DIM_APP ? tags->app :
			       d == DIM_ENV ? tags->env : rec->f[fields[d]];
	int64_t id = str_id(a, t);
	*out = (uint64_t)id;
	return id < 0 ? (int)id : 0;
}

/* ---- calls and refusals, in batches ---- */

/* The run of call c, which takes the key and task type of its first call,
 * gets c's spend. 0 or -ENOMEM. */
static int add_run_spend(struct tollctl_agg *a, const struct tollctl_agg_call *c)
{
	uint32_t id;
	struct tollctl_run *run = tollctl_intern_hashed(&a->runs, c->run_hash, c->run.p,
							c->run.len, &id);
	if (!run)
		return -ENOMEM;
	if (!run->calls) {
		int64_t key = str_id(a, c->key);
		if (key < 0)
			return (int)key;
		run->key1 = (uint32_t)key + 1;
		run->task1 = c->task + 1;
	}
	run->calls++;
	add_usd(a, &run->spend, c->usd);
	return 0;
}

/* Call (or refusal) c added to its group, its run and the totals. */
static int add_call(struct tollctl_agg *a, const struct tollctl_agg_call *c)
{
	uint32_t id;
	struct tollctl_group *g = tollctl_intern_hashed(&a->groups, c->group_hash, c->group,
							a->n_by * sizeof(c->group[0]), &id);
	if (!g)
		return -ENOMEM;
	if (!c->spend) {
		g->refused++;
		a->tot.refused++;
		return 0;
	}
	g->calls++;
	add_usd(a, &g->spend, c->usd);
	g->input += c->input;
	g->output += c->output;
	g->cached += c->cached;
	int rc = c->run.len ? add_run_spend(a, c) : 0;   /* a call outside any run: none */
	if (rc)
		return rc;
	a->tot.calls++;
	add_usd(a, &a->tot.spend, c->usd);
	a->tot.input += c->input;
	a->tot.output += c->output;
	a->tot.cached += c->cached;
	return 0;
}

int tollctl_agg_flush(struct tollctl_agg *a)
{
	for (unsigned i = 0; i < a->batched; i++) {
		const struct tollctl_agg_call *c = &a->batch[i];
		tollctl_intern_prefetch_entry(&a->groups, c->group_hash);
		if (c->run.len)
			tollctl_intern_prefetch_entry(&a->runs, c->run_hash);
	}
	int rc = 0;
	for (unsigned i = 0; !rc && i < a->batched; i++)
		rc = add_call(a, &a->batch[i]);
	a->batched = 0;
	return rc ? (a->err = rc) : 0;
}

/* The task type of a spend record, with its tokens added. 0 or -ENOMEM. */
static int add_task(struct tollctl_agg *a, const struct ledger_rec *rec,
		    const struct tags *tags, uint32_t *id)
{
	struct ledger_text task = or_dash(tags->task);
	struct tollctl_task *t = tollctl_intern(&a->tasks, task.p, task.len, id);
	if (!t)
		return -ENOMEM;
	t->calls++;
	t->input += rec->input;
	t->output += rec->output;
	return 0;
}

/* rec (commit, expire or refuse) into the batch, the slots of its group
 * and run asked for; the batch added when full. 0 or -ENOMEM. */
static int stage(struct tollctl_agg *a, const struct ledger_rec *rec, bool spend)
{
	struct tollctl_agg_call *c = &a->batch[a->batched];
	struct tags tags = { 0 };
	if (spend || a->by_tags)
		parse_tags(rec->f[LF_TAGS], &tags);
	for (unsigned i = 0; i < a->n_by; i++)
		if (dim_value(a, rec, &tags, a->by[i], &c->group[i]))
			return a->err = -ENOMEM;
	c->spend = spend;
	c->usd = rec->usd;
	c->input = rec->input;
	c->output = rec->output;
	c->cached = rec->cached;
	c->run = spend ? rec->f[LF_RUN] : (struct ledger_text){ NULL, 0 };
	c->key = rec->f[LF_KEY];
	c->group_hash = tollctl_intern_hash(c->group, a->n_by * sizeof(c->group[0]));
	tollctl_intern_prefetch_slot(&a->groups, c->group_hash);
	if (c->run.len) {
		c->run_hash = tollctl_intern_hash(c->run.p, c->run.len);
		tollctl_intern_prefetch_slot(&a->runs, c->run_hash);
	}
	if (spend && add_task(a, rec, &tags, &c->task))
		return a->err = -ENOMEM;
	return ++a->batched == TOLLCTL_AGG_BATCH ? tollctl_agg_flush(a) : 0;
}

static int add_chargeback(struct tollctl_agg *a, const struct ledger_rec *rec)
{
	int64_t debit = str_id(a, rec->f[LF_TEAM]), credit = str_id(a, rec->f[LF_PEER]);
	if (debit < 0 || credit < 0)
		return a->err = -ENOMEM;
	uint32_t key[2] = { (uint32_t)debit, (uint32_t)credit }, id;
	struct tollctl_chargeback *c = tollctl_intern(&a->chargebacks, key, sizeof(key), &id);
	if (!c)
		return a->err = -ENOMEM;
	c->count++;
	add_usd(a, &c->usd, rec->usd);
	a->tot.chargebacks++;
	add_usd(a, &a->tot.chargeback_usd, rec->usd);
	return 0;
}

static int add_outcome(struct tollctl_agg *a, const struct ledger_rec *rec)
{
	a->tot.outcomes++;
	if (!rec->f[LF_RUN].len)
		return 0;                     /* names no run: attributed to none */
	uint32_t id;
	struct tollctl_run *run = tollctl_intern(&a->runs, rec->f[LF_RUN].p, rec->f[LF_RUN].len,
						 &id);
	int64_t code = str_id(a, rec->f[LF_CODE]);
	if (!run || code < 0)
		return a->err = -ENOMEM;
	if (!run->outcome1 || rec->time_ms >= run->outcome_ms) {
		run->outcome1 = (uint32_t)code + 1;
		run->outcome_ms = rec->time_ms;
	}
	return 0;
}

int tollctl_agg_rec(const struct ledger_rec *rec, size_t off, void *arg)
{
	struct tollctl_agg *a = arg;
	if (rec->kind == LEDGER_SEGMENT || !tollctl_in_range(&a->range, rec->time_ms))
		return 0;
	a->tot.records++;
	switch (rec->kind) {
	case LEDGER_COMMIT:
	case LEDGER_EXPIRE:
		return stage(a, rec, true);
	case LEDGER_REFUSE:
		return stage(a, rec, false);
	case LEDGER_CHARGEBACK:
		return add_chargeback(a, rec);
	case LEDGER_OUTCOME:
		return add_outcome(a, rec);
	default:
		return 0;
	}
}
