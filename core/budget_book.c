/*
 * budget_book.c — scopes by (kind, name), see budget_book.h. Touched only
 * at load time, so a list is enough.
 */
#include "core/budget_book.h"

#include "core/config.h"
#include "core/decisions.h"
#include "core/grants.h"
#include "core/idempotency.h"
#include "core/runs.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

enum scope_kind { KIND_ORG, KIND_TEAM, KIND_USER, KIND_KEY };

struct retired {
	struct budget_scope *scope;
	struct retired *next;
};

struct book_entry {
	enum scope_kind kind;
	char *name;
	struct budget_scope *scope;     /* NULL: no shared budget */
	struct retired *retired;        /* scopes replaced by a window change */
	_Atomic uint32_t runs_opened;   /* keys: runs in the run table */
	_Atomic uint32_t grants_opened; /* keys: open grants they made */
	struct book_entry *next;
};

#define BOOK_MAX_RUNS 65536
#define BOOK_IDEMPOTENCY_KEYS (1u << 18)

struct budget_book {
	uint32_t n_shards;
	struct book_entry *entries;
	struct run_table *runs;
	struct decision_log *decisions;
	struct idem_table *idem;
	struct grant_table *grants;
};

struct budget_book *budget_book_new(uint32_t n_shards)
{
	struct budget_book *b = calloc(1, sizeof(*b));
	if (!b)
		return NULL;
	b->n_shards = n_shards;
	b->runs = runs_new(BOOK_MAX_RUNS, n_shards);
	b->decisions = decisions_new(n_shards);
	b->idem = idem_new(BOOK_IDEMPOTENCY_KEYS);
	b->grants = grants_new(n_shards);
	if (!b->runs || !b->decisions || !b->idem || !b->grants) {
		budget_book_free(b);
		return NULL;
	}
	return b;
}

void budget_book_free(struct budget_book *b)
{
	if (!b)
		return;
	runs_free(b->runs);
	decisions_free(b->decisions);
	idem_free(b->idem);
	grants_free(b->grants);
	for (struct book_entry *e = b->entries, *next; e; e = next) {
		next = e->next;
		budget_scope_free(e->scope);
		for (struct retired *r = e->retired, *rn; r; r = rn) {
			rn = r->next;
			budget_scope_free(r->scope);
			free(r);
		}
		free(e->name);
		free(e);
	}
	free(b);
}

/* The entry for (kind, name), created on first use; NULL on no memory. */
static struct book_entry *entry_for(struct budget_book *b, enum scope_kind kind,
				    const char *name)
{
	for (struct book_entry *e = b->entries; e; e = e->next)
		if (e->kind == kind && !strcmp(e->name, name))
			return e;
	struct book_entry *e = calloc(1, sizeof(*e));
	if (!e || !(e->name = strdup(name))) {
		free(e);
		return NULL;
	}
	e->kind = kind;
	e->next = b->entries;
	b->entries = e;
	return e;
}

/* Moves e's scope to its retired list (calls of an older generation may
 * still settle on it, so it lives as long as the book). */
static int retire(struct book_entry *e)
{
	struct retired *r = malloc(sizeof(*r));
	if (!r)
		return -ENOMEM;
	r->scope = e->scope;
	r->next = e->retired;
	e->retired = r;
	e->scope = NULL;
	return 0;
}

/*
 * Points budget->scope at the live counters of (kind, name). A `run`
 * window caps each run instead and has none. A changed window starts new
 * counters: the old ones stay allocated (calls of the previous generation
 * may still settle on them) until the book is freed.
 */
static int bind_budget(struct budget_book *b, enum scope_kind kind, const char *name,
		       struct cfg_budget *budget)
{
	struct book_entry *e = entry_for(b, kind, name);
	if (!e)
		return -ENOMEM;
	budget->scope = NULL;
	if (!budget->present || budget->window == WINDOW_RUN)
		return 0;
	if (e->scope && e->scope->window != budget->window && retire(e))
		return -ENOMEM;
	if (!e->scope) {
		if (!(e->scope = budget_scope_new(budget->limit, b->n_shards)))
			return -ENOMEM;
		budget_set_window(e->scope, budget->window);
	}
	budget_set_limit(e->scope, budget->limit,
			 config_budget_slack(budget->mode, budget->soft_margin));
	budget->scope = e->scope;
	return 0;
}

int budget_book_bind(struct budget_book *b, struct config *cfg)
{
	int rc = 0;
	cfg->runs = b->runs;
	cfg->decisions = b->decisions;
	cfg->idem = b->idem;
	cfg->grants = b->grants;
	for (uint32_t i = 0; i < cfg->n_orgs && !rc; i++)
		rc = bind_budget(b, KIND_ORG, cfg->orgs[i].name, &cfg->orgs[i].budget);
	for (uint32_t i = 0; i < cfg->n_teams && !rc; i++)
		rc = bind_budget(b, KIND_TEAM, cfg->teams[i].name, &cfg->teams[i].budget);
	for (uint32_t i = 0; i < cfg->n_users && !rc; i++)
		rc = bind_budget(b, KIND_USER, cfg->users[i].name, &cfg->users[i].budget);
	for (uint32_t i = 0; i < cfg->n_keys && !rc; i++) {
		rc = bind_budget(b, KIND_KEY, cfg->keys[i].id, &cfg->keys[i].budget);
		if (!rc) {
			struct book_entry *e = entry_for(b, KIND_KEY, cfg->keys[i].id);
			cfg->keys[i].runs_opened = &e->runs_opened;
			cfg->keys[i].grants_opened = &e->grants_opened;
		}
	}
	return rc;
}

/* A constraint's ceiling: limit + slack, INT64_MAX when it never refuses. */
static int64_t ceiling(int64_t limit, uint8_t mode, int64_t soft_margin)
{
	int64_t slack = config_budget_slack(mode, soft_margin);
	return slack == BUDGET_UNBOUNDED ? INT64_MAX : limit + slack;
}

struct run_terms budget_run_terms(const struct config *cfg, const struct cfg_key *k,
				  int64_t limit)
{
	const struct cfg_budget *b[4] = { &k->budget, NULL, &cfg->teams[k->team].budget, NULL };
	if (k->user >= 0)
		b[1] = &cfg->users[k->user].budget;
	if (cfg->teams[k->team].parent >= 0)
		b[3] = &cfg->orgs[cfg->teams[k->team].parent].budget;
	struct run_terms t = { limit, 0, k->mode };
	int64_t lowest = ceiling(limit, k->mode, 0);
	for (int i = 0; i < 4; i++) {
		if (!b[i] || !b[i]->present || b[i]->window != WINDOW_RUN)
			continue;
		t.limit = MIN(t.limit, b[i]->limit);
		int64_t c = ceiling(b[i]->limit, b[i]->mode, b[i]->soft_margin);
		if (c < lowest) {
			lowest = c;
			t.mode = b[i]->mode;
		}
	}
	t.slack = lowest == INT64_MAX ? BUDGET_UNBOUNDED : lowest - t.limit;
	return t;
}
