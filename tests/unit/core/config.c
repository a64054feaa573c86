/* Unit tests for core/config.c: the shipped file, strictness, file:line. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/config.h"
#include "tests/unit/check.h"

static char errs[8192];

/* Loads `yaml` from a temp file; errors land in errs. */
static struct config *load_text(const char *yaml)
{
	char path[] = "/tmp/tollgate-config-XXXXXX";
	int fd = mkstemp(path);
	if (fd < 0 || write(fd, yaml, strlen(yaml)) != (ssize_t)strlen(yaml))
		return NULL;
	close(fd);
	FILE *e = fmemopen(errs, sizeof(errs), "w");
	struct config *cfg = config_load(path, e);
	fclose(e);
	unlink(path);
	return cfg;
}

static const char base[] =
	"listen:\n"
	"  - addr: \"127.0.0.1:18080\"\n"
	"providers:\n"
	"  p:\n"
	"    base_url: \"http://127.0.0.1:18081/v1\"\n"
	"    format: openai\n"
	"models:\n"
	"  m:\n"
	"    provider: p\n"
	"    upstream_model: real-m\n"
	"    input_usd_per_mtok: \"2.50\"\n"
	"    output_usd_per_mtok: 10\n"
	"    supports: [tools, vision]\n"
	"    alternatives: [n]\n"
	"  n:\n"
	"    provider: p\n";

static void test_shipped(void)
{
	FILE *e = fmemopen(errs, sizeof(errs), "w");
	struct config *cfg = config_load("conf/tollgate.yaml", e);
	fclose(e);
	CHECK(cfg != NULL);
	if (!cfg) {
		fprintf(stderr, "%s", errs);
		return;
	}
	CHECK(cfg->n_listen == 1);
	CHECK(cfg->workers == 0);
	const struct cfg_model *m = config_find_model(cfg, "gpt-4o", 6);
	CHECK(m && m->input_per_mtok == 2500000 && m->output_per_mtok == 10000000);
	CHECK(m && m->cached_input_per_mtok == 1250000);
	CHECK(config_find_model(cfg, "gpt-4", 5) == NULL);
	config_unref(cfg);
}

static void test_base(void)
{
	struct config *cfg = load_text(base);
	CHECK(cfg != NULL);
	if (!cfg) {
		fprintf(stderr, "%s", errs);
		return;
	}
	const struct cfg_model *m = config_find_model(cfg, "m", 1);
	CHECK(m && !strcmp(m->upstream_model, "real-m"));
	CHECK(m && m->supports == (SUPPORTS_TOOLS | SUPPORTS_VISION));
	CHECK(m && m->provider == &cfg->providers[0]);
	const struct cfg_provider *p = &cfg->providers[0];
	CHECK(p->port == 18081 && !strcmp(p->host, "127.0.0.1"));
	CHECK(!strcmp(p->path_prefix, "/v1"));
	const struct cfg_model *n = config_find_model(cfg, "n", 1);
	CHECK(n && n->input_per_mtok == -1);   /* unpriced stays unpriced */
	CHECK(cfg->limits.max_header_bytes == 16384);
	config_unref(cfg);
}

/* Appends `extra` to base and expects failure mentioning `want`. */
static void expect_error(const char *extra, const char *want)
{
	char yaml[4096];
	snprintf(yaml, sizeof(yaml), "%s%s", base, extra);
	struct config *cfg = load_text(yaml);
	CHECK(cfg == NULL);
	CHECK(strstr(errs, want) != NULL);
	if (cfg || !strstr(errs, want))
		fprintf(stderr, "  wanted '%s', got: %s\n", want, errs);
	config_unref(cfg);
}

static void test_errors(void)
{
	expect_error("bogus: 1\n", ":17: top level: unknown key 'bogus'");
	expect_error("limits:\n  max_body_bytez: 1\n", ":18: limits: unknown key 'max_body_bytez'");
	expect_error("limits:\n  header_timeout_ms: 5\n", "header_timeout_ms: expected an integer in [100");
	expect_error("  o:\n    provider: p\n    input_usd_per_mtok: \"0.0000001\"\n",
		     ":19: input_usd_per_mtok: '0.0000001' is not a USD amount exact");
	expect_error("  o:\n    provider: q\n", "models.o: unknown provider 'q'");
	expect_error("  o:\n    provider: p\n    supports: [telepathy]\n", "unknown capability 'telepathy'");
	expect_error("  o:\n    provider: p\n    alternatives: [zz]\n", "alternative 'zz' is not a model");
	expect_error("  o:\n    provider: p\n    alternatives: [a, b, c, d, e, f, g, h, i]\n",
		     "alternatives: at most 8");
	expect_error("workers: many\n", "workers: expected an integer");
	expect_error("ledger: {}\n", "ledger.dir: required");
	expect_error("ledger:\n  dir: /tmp/x\n  fsync: sometimes\n",
		     "fsync: 'sometimes' is not one of never, batch, always");
	expect_error("ledger:\n  dir: /tmp/x\n  batch_ms: 0\n", "batch_ms: expected an integer in [1");
	expect_error("ledger:\n  dir: /tmp/x\n  segments: 3\n", "ledger: unknown key 'segments'");
	expect_error("velocity: []\n", "velocity: section not supported by this build yet");
	expect_error("teams:\n  t:\n    parent: nowhere\n", "teams.t: parent 'nowhere' is not in orgs");
	expect_error("teams:\n  t:\n    budget:\n      limit: 1\n      window: fortnight\n",
		     "window: 'fortnight' is not one of run, hour, day, week, month, total");
	expect_error("teams:\n  t:\n    budget:\n      window: day\n", "budget: limit is required");
	expect_error("teams:\n  t:\n    budget:\n      limit: 1\n      soft_margin: 1\n",
		     "soft_margin applies to mode: soft_gate only");
	expect_error("teams:\n  t:\n    budget:\n      limit: 1\n      mode: lenient\n",
		     "mode: 'lenient' is not one of advisory_estimate, soft_gate, hard_gate, actuals_only");
	expect_error("keys:\n  - id: k\n    secret_sha256: abc\n    team: t\n",
		     "secret_sha256: expected 64 hex digits");
	expect_error("teams:\n  t:\nkeys:\n  - id: k\n    team: t\n", "id, secret_sha256 and team are required");
	expect_error("admin:\n  addr: nowhere\n", "'nowhere' is not a host:port address");
	/* invalid UTF-8 never reaches the YAML parser */
	CHECK(load_text("listen: []\n# caf\xc3\n") == NULL && strstr(errs, ":2: not valid UTF-8"));
	CHECK(load_text("listen:\n  - addr: \"127.0.0.1:1\"\n# \xed\xa0\x80\n") == NULL);
	/* several errors are all reported */
	expect_error("bogus: 1\nbogus2: 2\n", "bogus2");
}

static void test_keys(void)
{
	char yaml[4096];
	snprintf(yaml, sizeof(yaml), "%s%s", base,
		 "orgs:\n  acme:\n    budget: {limit: \"100\", window: total}\n"
		 "teams:\n  research:\n    parent: acme\n    budget:\n      limit: \"3.00\"\n"
		 "      mode: soft_gate\n      window: month\n      soft_margin: \"0.10\"\n      alert_at: [0.5, 0.8]\n"
		 "      on_exceed: downgrade\n"
		 "users:\n  alice:\n    parent: research\n"
		 "keys:\n  - id: k1\n"
		 "    secret_sha256: \"00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\"\n"
		 "    user: alice\n    team: research\n    models: [m, \"*\"]\n"
		 "    run: {default_limit: \"0.50\", max_limit: 2, max_steps: 10}\n    rpm: 60\n");
	struct config *cfg = load_text(yaml);
	CHECK(cfg != NULL);
	if (!cfg) {
		fprintf(stderr, "%s", errs);
		return;
	}
	CHECK(cfg->n_orgs == 1 && cfg->n_teams == 1 && cfg->n_users == 1 && cfg->n_keys == 1);
	CHECK(cfg->orgs[0].budget.window == WINDOW_TOTAL && cfg->orgs[0].budget.limit == 100000000);
	const struct cfg_budget *tb = &cfg->teams[0].budget;
	CHECK(tb->mode == MODE_SOFT_GATE && tb->soft_margin == 100000 && tb->downgrade);
	CHECK(tb->window == WINDOW_MONTH);
	CHECK(tb->n_alerts == 2 && tb->alert_ppm[0] == 500000 && tb->alert_ppm[1] == 800000);
	CHECK(cfg->teams[0].parent == 0 && cfg->users[0].parent == 0);
	unsigned char sha[32];
	for (int i = 0; i < 32; i++)
		sha[i] = (unsigned char)((i % 16) * 0x11);
	const struct cfg_key *k = config_find_key(cfg, sha);
	CHECK(k && !strcmp(k->id, "k1") && k->team == 0 && k->user == 0);
	CHECK(k && k->run.default_limit == 500000 && k->run.max_limit == 2000000);
	CHECK(k && k->run.max_steps == 10 && k->rpm == 60 && k->mode == MODE_HARD_GATE);
	sha[0] ^= 1;
	CHECK(config_find_key(cfg, sha) == NULL);
	config_unref(cfg);
}

static void test_providers(void)
{
	const char *bad_url =
		"listen:\n  - addr: \"127.0.0.1:1\"\nproviders:\n  p:\n    base_url: \"ftp://x\"\n";
	CHECK(load_text(bad_url) == NULL && strstr(errs, "is not http(s)://"));
	const char *v6 =
		"listen:\n  - addr: \"[::1]:18080\"\nproviders:\n  p:\n"
		"    base_url: \"http://[::1]:9/openai/v1/\"\n";
	struct config *cfg = load_text(v6);
	CHECK(cfg != NULL);
	if (cfg) {
		CHECK(cfg->providers[0].port == 9);
		CHECK(!strcmp(cfg->providers[0].path_prefix, "/openai/v1"));
		CHECK(!strcmp(cfg->providers[0].host, "[::1]"));
		config_unref(cfg);
	} else {
		fprintf(stderr, "%s", errs);
	}
}

int main(void)
{
	test_shipped();
	test_base();
	test_errors();
	test_keys();
	test_providers();
	return check_report("core/config");
}
