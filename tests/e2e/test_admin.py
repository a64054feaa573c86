"""End-to-end: the admin API and the kill switch (SPEC §5, §6, §8;
net/admin_api.c, core/freeze.c, net/stream.c stream_check_freeze /
count_drift, net/decide.c decide_frozen, ledger/replay.c note_freeze,
core/main.c restore_freezes, core/config.c section_admin).

Setup: one tollgate (2 workers) with an admin listener on its own loopback
port and its token in an environment variable; mockllm as both providers.
Principals (every one budgeted, $100 total hard_gate):

    org o1 ── team t1 ── user u1 ── key k1
           │         └── user u2 ── key k2
           └─ team t2 ── user u3 ── key k3
    org o2 ── team t3 ──────────── key k4

so a freeze of each kind has callers it must refuse and callers it must
leave alone. Models "o" (OpenAI) and "a" (Anthropic) cost 1 micro-USD per
input token and 3 per output token, as in test_stream.

Shards: every agent reply (and every admin reply) carries a decision id
whose top 16 bits are the shard that answered (d-%012x, shard << 48).
Tests that must reach both shards open fresh connections until both
shards have answered, and assert every reply.

Timing: stream cuts must land within 1 s of the freeze (SPEC: "within
milliseconds"); the streams would run ~10 s uncut. State read across
connections (metrics, budgets) is polled, never slept on.
"""

import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time

from harness import (CHAT, COMPLETIONS, LOOPBACK, MESSAGES, SANITIZER_MARKS, Conn, Mock,
                     Tollgate, build_dir, call, make_config, principals, problem, request,
                     slow_build, wait_until, write_config)
from test_budget import budget, key, micros, model
from test_stream import counted, parse_sse, split_events

TOKEN_ENV = "TOLLGATE_E2E_ADMIN_TOKEN"
TOKEN = "e2e-admin-token-0123456789abcdef"
SECRETS = {"k1": "sk-admin-one", "k2": "sk-admin-two", "k3": "sk-admin-three",
           "k4": "sk-admin-four"}
SCOPES_OF = {     # what each key's calls spend: (kind, id) pairs
    "k1": {("key", "k1"), ("user", "u1"), ("team", "t1"), ("org", "o1")},
    "k2": {("key", "k2"), ("user", "u2"), ("team", "t1"), ("org", "o1")},
    "k3": {("key", "k3"), ("user", "u3"), ("team", "t2"), ("org", "o1")},
    "k4": {("key", "k4"), ("team", "t3"), ("org", "o2")},
}
IN_PRICE, OUT_PRICE = 1, 3
SLACK = 64
CAP = 1000000
DECISION = re.compile(r"^d-([0-9a-f]{12,})$")
METRIC_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\d+)$")


# ---------------------------------------------------------------- setup

def config_extra(admin_port, ledger_dir=None):
    keys = [key("k1", SECRETS["k1"], "t1", limit="100.00", user="u1"),
            key("k2", SECRETS["k2"], "t1", limit="100.00", user="u2"),
            key("k3", SECRETS["k3"], "t2", limit="100.00", user="u3"),
            key("k4", SECRETS["k4"], "t3", limit="100.00")]
    extra = principals(
        keys,
        teams={"t1": {"parent": "o1", "budget": budget("100.00")},
               "t2": {"parent": "o1", "budget": budget("100.00")},
               "t3": {"parent": "o2", "budget": budget("100.00")}},
        orgs={"o1": {"budget": budget("100.00")}, "o2": {"budget": budget("100.00")}},
        users={"u1": {"parent": "t1", "budget": budget("100.00")},
               "u2": {"parent": "t1", "budget": budget("100.00")},
               "u3": {"parent": "t2", "budget": budget("100.00")}})
    extra["admin"] = {"addr": "127.0.0.1:%d" % admin_port, "token_env": TOKEN_ENV}
    if ledger_dir:
        extra["ledger"] = {"dir": ledger_dir, "fsync": "batch", "batch_ms": 5}
    return extra


MODELS = {"o": model("1.00", "3.00", cap=CAP),
          "a": model("1.00", "3.00", provider="mock-anthropic", cap=CAP)}


def distinct_ports(n):
    """n loopback ports the kernel handed out at once (so all different:
    two free_port() calls in a row may return the same port, and an admin
    listener on the agents' port would take half their connections)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((LOOPBACK, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def start(env, mk, ledger_dir=None):
    """(tollgate, Admin) on fresh ports; the token is in the process's
    environment only."""
    port, admin_port = distinct_ports(2)
    tg = Tollgate(env, mk, workers=2, port=port, models=MODELS,
                  extra=config_extra(admin_port, ledger_dir),
                  env_vars={TOKEN_ENV: TOKEN})
    adm = Admin(admin_port)
    wait_until(adm.accepts, 10, what="the admin listener")
    return tg, adm


def shard_of(r):
    """The shard that answered r (from its decision id)."""
    m = DECISION.match(r.headers.get("x-budget-decision-id", ""))
    assert m, ("no decision id to tell the shard", r.headers)
    return int(m.group(1), 16) >> 48


class Admin:
    """A client of the admin listener."""

    def __init__(self, port, token=TOKEN):
        self.port = port
        self.token = token

    def accepts(self):
        try:
            call(self.port, "/admin/freezes", None, self.auth(), "GET", timeout=2)
            return True
        except OSError:
            return False

    def auth(self):
        return {"Authorization": "Bearer " + self.token}

    def get(self, path, headers=None):
        return call(self.port, path, None, headers if headers is not None else self.auth(),
                    "GET")

    def post(self, path, body, headers=None, conn=None):
        """On a fresh connection, or on `conn` (kept alive: one shard)."""
        headers = headers if headers is not None else self.auth()
        if conn is None:
            return call(self.port, path, body, headers)
        conn.send(request("POST", path, body, headers))
        return conn.response()

    def conn(self):
        return Conn(self.port, 10.0)

    def freeze(self, scope, sid, reason=None, changed=True, persisted=None, conn=None):
        body = {"scope": scope, "id": sid}
        if reason is not None:
            body["reason"] = reason
        r = self.post("/admin/freeze", body, conn=conn)
        assert r.status == 200 and r.headers.get("content-type") == "application/json", r
        j = r.json()
        assert j["scope"] == scope and j["id"] == sid and j["frozen"] is True, j
        assert j["changed"] is changed, (body, j)
        if persisted is not None:
            assert j["persisted"] is persisted, j
        return r

    def unfreeze(self, scope, sid, changed=True, persisted=None, conn=None):
        r = self.post("/admin/unfreeze", {"scope": scope, "id": sid}, conn=conn)
        assert r.status == 200 and r.headers.get("content-type") == "application/json", r
        j = r.json()
        assert j["scope"] == scope and j["id"] == sid and j["frozen"] is False, j
        assert j["changed"] is changed, (scope, sid, j)
        if persisted is not None:
            assert j["persisted"] is persisted, j
        return r

    def freezes(self):
        """{(scope, id): entry} of GET /admin/freezes."""
        r = self.get("/admin/freezes")
        assert r.status == 200 and r.headers.get("content-type") == "application/json", r
        j = r.json()
        assert j["truncated"] is False, j
        out = {}
        for e in j["frozen"]:
            k = (e["scope"], e["id"])
            assert k not in out, ("listed twice", k, j)
            out[k] = e
        return out

    def metrics(self):
        r = self.get("/metrics")
        assert r.status == 200, r
        assert r.headers.get("content-type", "").startswith("text/plain"), r.headers
        return parse_metrics(r.body.decode())


def parse_metrics(text):
    """Prometheus text format, checked: every sample's family has a TYPE
    line before it, values are integers. {'name{labels}': value}."""
    typed, out = {}, {}
    assert text.endswith("\n"), text[-80:]
    for line in text.splitlines():
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, name, typ = line.split(" ", 3)
            assert typ in ("counter", "gauge"), line
            assert name not in typed, ("TYPE twice", line)
            typed[name] = typ
            continue
        m = METRIC_LINE.match(line)
        assert m, ("not a metric line", line)
        assert m.group(1) in typed, ("sample before its TYPE", line)
        k = m.group(1) + (m.group(2) or "")
        assert k not in out, ("sample twice", line)
        out[k] = int(m.group(3))
    return out


def metric_delta(after, before):
    return {k: after[k] - before.get(k, 0) for k in after}


# ---------------------------------------------------------------- calls

def body_of(obj):
    return json.dumps(obj, separators=(",", ":")).encode()


def chat_body(max_tokens=100000, stream=False, content="hello", **extra):
    b = {"model": "o", "messages": [{"role": "user", "content": content}],
         "max_tokens": max_tokens}
    if stream:
        b["stream"] = True
    b.update(extra)
    return body_of(b)


def msg_body(max_tokens=100000, stream=True, content="hello"):
    return body_of({"model": "a", "max_tokens": max_tokens, "stream": stream,
                    "messages": [{"role": "user", "content": content}]})


def hdrs(k, run=None, **more):
    h = {"Authorization": "Bearer " + SECRETS[k]}
    if run:
        h["X-Run-Id"] = run
    for name, v in more.items():
        h[name.replace("_", "-")] = v
    return h


def small_call(tg, k, run=None):
    """A small non-stream chat on a fresh connection."""
    return call(tg, CHAT, chat_body(max_tokens=16), hdrs(k, run, x_mock_tokens="3"))


def on_both_shards(tg, k, run=None, want=200, frozen_as=None, max_calls=64):
    """Calls on fresh connections until both shards have answered twice;
    every reply must be `want` (for 423: code frozen naming frozen_as).
    Returns the number of calls made."""
    seen = {0: 0, 1: 0}
    n = 0
    while min(seen.values()) < 2 and n < max_calls:
        r = small_call(tg, k, run)
        n += 1
        if want == 423:
            j = problem(r, 423, "frozen")
            assert frozen_as in j["detail"], (frozen_as, j)
            assert j["budget"]["scope"] == frozen_as, (frozen_as, j)
            assert r.headers.get("x-budget-decision") == "block", r.headers
            assert "x-budget-reservation-id" not in r.headers, r.headers
        else:
            assert r.status == want, (k, run, "call %d" % n, r)
        seen[shard_of(r)] += 1
    assert min(seen.values()) >= 2, ("both shards never answered", seen)
    return n


# ---------------------------------------------------------------- 1. auth

def tollgate_check(env, cfg, env_vars):
    """`tollgate -t` on cfg with exactly these admin-token variables."""
    path = write_config(cfg)
    try:
        environ = dict(os.environ)
        environ.pop(TOKEN_ENV, None)
        environ.update(env_vars)
        r = subprocess.run([os.path.join(build_dir(env), "tollgate"), "-t", "-c", path],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=environ,
                           timeout=30)
        out = (r.stdout + r.stderr).decode("utf-8", "replace")
        for mark in SANITIZER_MARKS:
            assert mark not in out, out
        return r.returncode, out, path
    finally:
        os.unlink(path)


def test_admin_auth_routes_and_config(env):
    """The admin listener wants its bearer token on every route (401
    problem without it, with a wrong one, one of another length, or
    another scheme); with it, /metrics is Prometheus text. The agent
    listener serves neither /metrics nor /admin (404, whatever the
    credentials), and nothing is frozen by the refused requests. Unknown
    admin routes are 404, wrong methods 405. Config: admin.token_env must
    name a variable holding >= 16 characters, or `tollgate -t` fails
    naming admin.token_env, and the daemon does not start."""
    with Mock(env) as mk:
        tg, adm = start(env, mk)
        with tg:
            wrong_same_len = TOKEN[:-1] + ("x" if TOKEN[-1] != "x" else "y")
            bad = [{}, {"Authorization": "Bearer " + wrong_same_len},
                   {"Authorization": "Bearer " + TOKEN[:-1]},
                   {"Authorization": "Bearer " + TOKEN + "0"},
                   {"Authorization": "Bearer"}, {"Authorization": "Bearer "},
                   {"Authorization": "Basic " + TOKEN},
                   {"Authorization": TOKEN},
                   {"Authorization": "Bearer " + SECRETS["k1"]},   # an agent key
                   {"x-api-key": TOKEN}]
            for h in bad:
                for path in ("/metrics", "/admin/freezes", "/admin/nope"):
                    problem(adm.get(path, h), 401, "unauthorized")
                r = adm.post("/admin/freeze", {"scope": "team", "id": "t1"}, h)
                problem(r, 401, "unauthorized")
                r = adm.post("/admin/unfreeze", {"scope": "team", "id": "t1"}, h)
                problem(r, 401, "unauthorized")
            # the right token
            r = adm.get("/metrics")
            assert r.status == 200, r
            assert r.headers.get("content-type") == "text/plain; version=0.0.4", r.headers
            m = parse_metrics(r.body.decode())
            for name in ('tollgate_streams_metered_total{usage="reported"}',
                         'tollgate_streams_metered_total{usage="missing"}',
                         "tollgate_stream_output_tokens_reported_total",
                         'tollgate_stream_output_tokens_counted_total{bound="upper"}',
                         'tollgate_stream_output_tokens_counted_total{bound="lower"}',
                         "tollgate_stream_output_tokens_drift_total",
                         "tollgate_stream_bound_misses_total", "tollgate_stream_cuts_total",
                         "tollgate_stream_cuts_frozen_total", "tollgate_refused_frozen_total",
                         "tollgate_frozen_scopes", "tollgate_requests_total"):
                assert name in m, (name, sorted(m))
            assert m["tollgate_frozen_scopes"] == 0, m
            # the scheme's name is case-insensitive (RFC 9110 11.1)
            assert adm.get("/metrics", {"Authorization": "bearer " + TOKEN}).status == 200
            # routes and methods
            problem(adm.get("/admin/nope"), 404)
            problem(adm.get("/v1/models"), 404)
            problem(adm.post("/metrics", {}), 405)
            problem(adm.get("/admin/freeze"), 405)
            problem(adm.get("/admin/unfreeze"), 405)
            problem(adm.post("/admin/freezes", {}), 405)
            # the agent listener has no admin routes, with any credentials
            for h in ({}, adm.auth(), hdrs("k1")):
                for path in ("/metrics", "/admin/freezes"):
                    problem(call(tg, path, None, h, "GET"), 404)
                for path in ("/admin/freeze", "/admin/unfreeze"):
                    problem(call(tg, path, {"scope": "team", "id": "t1"}, h), 404)
            # nothing of the above froze anything
            assert adm.freezes() == {}, adm.freezes()
            assert adm.metrics()["tollgate_frozen_scopes"] == 0
            on_both_shards(tg, "k1")

    # config: the token's variable
    port, admin_port = distinct_ports(2)
    cfg = make_config(port, 9, models=MODELS, extra=config_extra(admin_port))
    rc, out, path = tollgate_check(env, cfg, {})
    assert rc == 1, (rc, out)
    assert "admin.token_env" in out and TOKEN_ENV in out, out
    assert re.search(r"^%s:\d+: admin\.token_env: " % re.escape(path), out, re.M), out
    rc, out, _ = tollgate_check(env, cfg, {TOKEN_ENV: "x" * 15})
    assert rc == 1 and "admin.token_env" in out and "16" in out, (rc, out)
    rc, out, _ = tollgate_check(env, cfg, {TOKEN_ENV: ""})
    assert rc == 1 and "admin.token_env" in out, (rc, out)
    rc, out, _ = tollgate_check(env, cfg, {TOKEN_ENV: "x" * 16})
    assert rc == 0, (rc, out)
    no_env = json.loads(json.dumps(cfg))
    del no_env["admin"]["token_env"]
    rc, out, _ = tollgate_check(env, no_env, {TOKEN_ENV: TOKEN})
    assert rc == 1 and "admin" in out, (rc, out)
    # the daemon refuses to start without the token (SPEC §1: config error, 1)
    path = write_config(cfg)
    try:
        environ = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
        p = subprocess.run([os.path.join(build_dir(env), "tollgate"), "-c", path],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=environ,
                           timeout=30)
        out = (p.stdout + p.stderr).decode("utf-8", "replace")
        assert p.returncode == 1 and "admin.token_env" in out, (p.returncode, out)
    finally:
        os.unlink(path)


def test_admin_addr_must_not_be_an_agent_listener(env):
    """admin.addr equal to one of the `listen` addresses is a config error:
    both sockets would bind (SO_REUSEPORT) and the kernel would hand half
    the agents' connections to the admin API (401) and half the operator's
    to the agent API (404)."""
    port, other = distinct_ports(2)
    for admin_port in (port, other):
        cfg = make_config(port, 9, models=MODELS, extra=config_extra(admin_port),
                          extra_listen=(other,))
        rc, out, _ = tollgate_check(env, cfg, {TOKEN_ENV: TOKEN})
        assert rc == 1 and "admin" in out, (
            "admin.addr 127.0.0.1:%d is also an agent listener, yet `tollgate -t` says" %
            admin_port, rc, out)


# ---------------------------------------------------------------- 2. freezes

def test_admin_freeze_each_scope_on_both_shards(env):
    """A freeze of each kind (key, user, team, org, run) refuses, on both
    shards, exactly the calls that spend that scope (423 frozen naming
    kind:id, no reservation) and leaves every other key alone; it is
    listed, counted (tollgate_frozen_scopes, tollgate_refused_frozen_total);
    freezing again changes nothing; unfreezing lets calls through again on
    both shards. Without a ledger a freeze says persisted: false."""
    with Mock(env) as mk:
        tg, adm = start(env, mk)
        with tg:
            run = "frz-run-1"
            r = small_call(tg, "k1", run)
            assert r.status == 200, r        # the run exists, bound to k1
            refused = 0
            cases = [("key", "k1"), ("user", "u1"), ("team", "t1"), ("org", "o1"),
                     ("run", run)]
            for kind, sid in cases:
                name = "%s:%s" % (kind, sid)
                before = adm.metrics()
                t0 = time.time()
                adm.freeze(kind, sid, reason="e2e %s" % kind, persisted=False)
                listed = adm.freezes()
                assert list(listed) == [(kind, sid)], listed
                e = listed[(kind, sid)]
                assert e["reason"] == "e2e %s" % kind, e
                assert abs(e["since"] - t0) <= 2, (e, t0)
                adm.freeze(kind, sid, reason="again", changed=False)
                assert adm.freezes()[(kind, sid)]["reason"] == "e2e %s" % kind, \
                    "a second freeze replaced the reason"
                n = 0
                if kind == "run":
                    n += on_both_shards(tg, "k1", run, 423, name)
                    on_both_shards(tg, "k1", "frz-run-other")
                    on_both_shards(tg, "k1")
                    for k in ("k2", "k3", "k4"):
                        assert small_call(tg, k).status == 200, k
                else:
                    for k, spends in SCOPES_OF.items():
                        if (kind, sid) in spends:
                            n += on_both_shards(tg, k, None, 423, name)
                            # a named run of a frozen key is refused too
                            n += 1
                            r = small_call(tg, k, "frz-%s-%s" % (kind, k))
                            problem(r, 423, "frozen")
                        else:
                            assert small_call(tg, k).status == 200, (name, k)
                            assert small_call(tg, k).status == 200, (name, k)
                    # a stream call is refused before it reaches the provider
                    if (kind, sid) in SCOPES_OF["k1"]:
                        reqs = mk.stats()["requests"]
                        r = call(tg, CHAT, chat_body(stream=True), hdrs("k1"))
                        problem(r, 423, "frozen")
                        n += 1
                        r = call(tg, MESSAGES, msg_body(), hdrs("k1"))
                        problem(r, 423, "frozen")
                        n += 1
                        assert mk.stats()["requests"] == reqs, "a frozen call reached mockllm"
                refused += n
                d = metric_delta(adm.metrics(), before)
                assert adm.metrics()["tollgate_frozen_scopes"] == 1
                assert d["tollgate_refused_frozen_total"] == n, (name, n, d)
                adm.unfreeze(kind, sid, persisted=False)
                adm.unfreeze(kind, sid, changed=False)
                assert adm.freezes() == {}, adm.freezes()
                assert adm.metrics()["tollgate_frozen_scopes"] == 0
                for k in SCOPES_OF:
                    if (kind, sid) in SCOPES_OF[k] or (kind == "run" and k == "k1"):
                        on_both_shards(tg, k, run if kind == "run" else None)
            assert adm.metrics()["tollgate_refused_frozen_total"] == refused

            # two freezes at once; lifting one keeps the other
            adm.freeze("team", "t1")
            adm.freeze("key", "k3")
            adm.freeze("org", "o2")
            assert set(adm.freezes()) == {("team", "t1"), ("key", "k3"), ("org", "o2")}
            assert adm.metrics()["tollgate_frozen_scopes"] == 3
            problem(small_call(tg, "k2"), 423, "frozen")
            adm.unfreeze("team", "t1")
            on_both_shards(tg, "k1")
            on_both_shards(tg, "k2")
            on_both_shards(tg, "k3", None, 423, "key:k3")
            on_both_shards(tg, "k4", None, 423, "org:o2")
            # the budget state stays readable while frozen
            r = call(tg, "/v1/budget", None, hdrs("k3"), "GET")
            assert r.status == 200, r
            adm.unfreeze("key", "k3")
            adm.unfreeze("org", "o2")
            assert adm.freezes() == {}
            on_both_shards(tg, "k3")
            on_both_shards(tg, "k4")


def test_admin_freeze_validation(env):
    """Bad bodies are 400 (invalid_json / invalid_request), unknown
    key/user/team/org ids 404 unknown_scope; none of them freezes anything.
    A reason of exactly 256 characters and a run id of 64 are taken. An
    unfreeze of what is not frozen is a no-op (changed: false). Many run
    freezes, lifted and re-frozen in turns, leave exactly the expected set
    frozen (listing, gauge and calls agree); 1024 at once is the limit
    (503 freeze_table_full) and lifting one makes room again."""
    with Mock(env) as mk:
        tg, adm = start(env, mk)
        with tg:
            for raw in (b"", b"not json", b"[1,2]", b'{"scope":"key"', b"null"):
                r = call(adm.port, "/admin/freeze", raw, adm.auth())
                problem(r, 400)
            invalid = [
                {"id": "k1"}, {"scope": "key"}, {"scope": "planet", "id": "k1"},
                {"scope": "KEY", "id": "k1"}, {"scope": 1, "id": "k1"},
                {"scope": "key", "id": 5}, {"scope": "key", "id": ""},
                {"scope": "key", "id": None}, {"scope": "key", "id": ["k1"]},
                {"scope": "run", "id": "x" * 129},
                {"scope": "key", "id": "k1", "reason": "r" * 257},
                {"scope": "key", "id": "k1", "reason": 7},
                {"scope": "key", "id": "k1", "reason": "quote \" inside"},
                {"scope": "key", "id": "k1", "reason": "back\\slash"},
                {"scope": "key", "id": "k1", "reason": "caf\u00e9"},
                {"scope": "key", "id": "k\"1"}, {"scope": "run", "id": "r\u00e9"},
            ]
            for body in invalid:
                for path in ("/admin/freeze", "/admin/unfreeze"):
                    if path.endswith("unfreeze") and "reason" in body:
                        continue
                    j = problem(adm.post(path, body), 400)
                    assert j["code"] in ("invalid_request", "invalid_json"), (body, j)
            for kind in ("key", "user", "team", "org"):
                for sid in ("nope", "k1x", "T1", "t", "u1 "):
                    problem(adm.post("/admin/freeze", {"scope": kind, "id": sid}), 404,
                            "unknown_scope")
            # a key id is not a team id and so on: scopes are not interchangeable
            for kind, sid in (("team", "k1"), ("key", "t1"), ("org", "t1"), ("user", "k1")):
                problem(adm.post("/admin/freeze", {"scope": kind, "id": sid}), 404,
                        "unknown_scope")
            assert adm.freezes() == {} and adm.metrics()["tollgate_frozen_scopes"] == 0
            on_both_shards(tg, "k1")
            # unfreezing what is not frozen
            adm.unfreeze("key", "k1", changed=False)
            adm.unfreeze("team", "nope", changed=False)
            # limits taken as they are: a reason of 256, a run id of 64
            # (RUN_ID_MAX); a longer run id can name no run
            long_run = "r" * 64
            adm.freeze("run", long_run, reason="z" * 256)
            assert adm.freezes()[("run", long_run)]["reason"] == "z" * 256
            adm.unfreeze("run", long_run)
            problem(adm.post("/admin/freeze", {"scope": "run", "id": "r" * 65}), 404,
                    "unknown_scope")
            problem(adm.post("/admin/freeze", {"scope": "run", "id": "bad run id"}), 404,
                    "unknown_scope")

            # many freezes, with tombstones in the table
            ids = ["many-%03d" % i for i in range(300)]
            for i in ids:
                adm.freeze("run", i)
            for i in ids[::2]:
                adm.unfreeze("run", i)
            for i in ids[::6]:
                adm.freeze("run", i)            # re-frozen after a lift
            for i in ids[1::2]:
                adm.freeze("run", i, changed=False)
            want = set(ids[1::2]) | set(ids[::6])
            listed = adm.freezes()
            assert {sid for _, sid in listed} == want, sorted(
                {sid for _, sid in listed} ^ want)
            assert adm.metrics()["tollgate_frozen_scopes"] == len(want)
            for i in ids[:24]:
                r = small_call(tg, "k1", i)
                if i in want:
                    problem(r, 423, "frozen")
                else:
                    assert r.status == 200, (i, r)
            for i in ids:
                adm.unfreeze("run", i, changed=i in want)
            assert adm.freezes() == {} and adm.metrics()["tollgate_frozen_scopes"] == 0

            # the table's limit
            full = ["full-%04d" % i for i in range(1024)]
            for i in full:
                adm.freeze("run", i)
            assert adm.metrics()["tollgate_frozen_scopes"] == 1024
            problem(adm.post("/admin/freeze", {"scope": "key", "id": "k1"}), 503,
                    "freeze_table_full")
            on_both_shards(tg, "k1")          # k1 was not frozen after all
            r = adm.get("/admin/freezes")
            assert r.status == 200, r
            j = r.json()       # may be truncated, but must be whole JSON
            assert all(e["scope"] == "run" for e in j["frozen"]), j["frozen"][:3]
            assert len(j["frozen"]) == 1024 or j["truncated"] is True, len(j["frozen"])
            adm.unfreeze("run", full[500])
            adm.freeze("key", "k1")
            on_both_shards(tg, "k1", None, 423, "key:k1")
            adm.unfreeze("key", "k1")
            for i in full:
                adm.unfreeze("run", i, changed=i != full[500])
            assert adm.freezes() == {} and adm.metrics()["tollgate_frozen_scopes"] == 0
            on_both_shards(tg, "k1")


# ---------------------------------------------------------------- 3. stream cuts

class Reader(threading.Thread):
    """Reads one chunked stream to its terminator, noting when it ended.

    Chunk data is taken as it arrives, without waiting for the CRLF that
    closes a chunk: tollgate sends that CRLF with its next write (before
    the next chunk's size), so a reader that waits for it would see every
    event one provider read late. The framing is still checked strictly."""

    def __init__(self, conn, status, headers):
        super().__init__(daemon=True)
        self.conn = conn
        self.status = status
        self.headers = headers
        self.body = b""
        self.ended_at = None
        self.error = None
        self.lock = threading.Lock()

    def run(self):
        c = self.conn
        buf, c.buf = c.buf, b""
        left = None           # data bytes left in the current chunk
        closing = False       # the CRLF after a chunk's data is due
        try:
            while True:
                progressed = True
                while progressed:
                    progressed = False
                    if left:
                        take = buf[:left]
                        if take:
                            with self.lock:
                                self.body += take
                            buf, left = buf[len(take):], left - len(take)
                            progressed = True
                        if left == 0:
                            closing = True
                    elif closing:
                        if len(buf) >= 2:
                            assert buf[:2] == b"\r\n", ("chunk not closed by CRLF", buf[:20])
                            buf, closing, left = buf[2:], False, None
                            progressed = True
                    elif b"\r\n" in buf:
                        line, _, rest = buf.partition(b"\r\n")
                        size = int(line.split(b";")[0], 16)
                        if size == 0:
                            if len(rest) < 2:
                                break         # the empty trailer section is due
                            assert rest[:2] == b"\r\n", ("trailers?", rest[:40])
                            self.ended_at = time.monotonic()
                            c.buf = rest[2:]
                            return
                        buf, left = rest, size
                        progressed = True
                data = c.sock.recv(1 << 20)
                if not data:
                    raise EOFError("closed before the chunk terminator")
                buf += data
        except Exception as ex:      # noqa: B902 - reported by the test
            self.error = ex

    def events(self):
        with self.lock:
            return len(parse_sse(self.body))


def open_stream(tg, path, body, headers):
    c = tg.conn(timeout=20)
    c.send(request("POST", path, body, headers))
    status, h = c.head()
    assert status == 200, (status, h, c.buf[:300])
    assert h.get("transfer-encoding") == "chunked", h
    rd = Reader(c, status, h)
    rd.start()
    return rd


def cut_final(rd, fmt):
    """The provider's events and the final event of a frozen cut."""
    evs = split_events(rd.body)
    assert rd.body == b"".join(evs), ("the body is not whole events", rd.body[-200:])
    if fmt == "openai":
        final = parse_sse(b"".join(evs[-2:]))
        assert len(final) == 2 and final[1] == (None, "[DONE]"), evs[-3:]
        err = json.loads(final[0][1])["error"]
        assert err["type"] == "budget_exhausted" and err["code"] == "frozen", err
        assert err["budget"]["reserved_usd"] and "counted_output_tokens" in err["budget"], err
        upstream = evs[:-2]
    else:
        final = parse_sse(evs[-1])
        assert len(final) == 1 and final[0][0] == "error", evs[-2:]
        j = json.loads(final[0][1])
        assert j["type"] == "error" and j["error"]["type"] == "budget_exhausted", j
        assert j["error"].get("code", "frozen") == "frozen", j
        upstream = evs[:-1]
    for e in upstream:
        assert b"budget_exhausted" not in e and b"[DONE]" not in e, e
    return upstream


def decision_actual(tg, k, rd_or_did, timeout=5.0):
    did = rd_or_did if isinstance(rd_or_did, str) else rd_or_did.headers["x-budget-decision-id"]

    def get():
        r = call(tg, "/budget/decisions/" + did, None, hdrs(k), "GET")
        return r.json() if r.status == 200 else None
    j = wait_until(get, timeout, what="decision %s" % did)
    assert j["outcome"] == "committed", j
    return micros(j["actual_usd"])


def budget_of(tg, k):
    r = call(tg, "/v1/budget", None, hdrs(k), "GET")
    assert r.status == 200, r
    return {s["scope"]: (micros(s["committed_usd"]), micros(s["reserved_usd"]),
                         s["reserved_usd"]) for s in r.json()["scopes"]}


def quiet_budget(tg, k, timeout=5.0):
    last = [None]

    def ok():
        st = budget_of(tg, k)
        prev, last[0] = last[0], st
        return st if st == prev and all(v[1] == 0 for v in st.values()) else None
    try:
        return wait_until(ok, timeout, what="nothing reserved")
    except AssertionError:
        raise AssertionError("reserved not back to 0: %r" % (last[0],))


def test_admin_freeze_cuts_running_streams(env):
    """Slow streams (200 tokens, 50 ms apart) of team t1 on separate
    connections, on both shards: OpenAI streams of k1 and an Anthropic one
    of k2; and an OpenAI stream of k3 (team t2). About 0.5 s in, team t1 is
    frozen: every t1 stream ends within 1 s with the final event of SPEC §5
    (code frozen; [DONE] / event: error) and the chunk terminator, its
    connection still usable; the provider's connections are closed; each
    is charged exactly what it relayed (input bound or message_start's
    input + 3 x counted text), nothing stays reserved, and the team's
    committed is the sum. The t2 stream runs to its end untouched.
    tollgate_stream_cuts(_frozen)_total count the cuts exactly. New calls
    of t1 are 423 until the unfreeze; then a stream runs whole again."""
    patience = 2.0 if slow_build(env) else 1.0
    with Mock(env) as mk:
        tg, adm = start(env, mk)
        with tg:
            slow = {"x-mock-tokens": "200", "x-mock-token-delay-us": "50000"}
            before = adm.metrics()
            streams = []       # (reader, key, fmt, body)
            shards = set()
            while len(streams) < 4 or shards != {0, 1}:
                assert len(streams) < 16, ("every stream on one shard", shards)
                b = chat_body(stream=True, content="story %d" % len(streams))
                rd = open_stream(tg, CHAT, b, dict(hdrs("k1"), **slow))
                shards.add(shard_of(rd))
                streams.append((rd, "k1", "openai", b))
            b = msg_body(content="anthropic story")
            rd = open_stream(tg, MESSAGES, b, dict(hdrs("k2"), **slow))
            streams.append((rd, "k2", "anthropic", b))
            other_b = chat_body(stream=True, content="other team",
                                stream_options={"include_usage": True})
            other = open_stream(tg, CHAT, other_b, dict(
                hdrs("k3"), **{"x-mock-tokens": "40", "x-mock-token-delay-us": "50000"}))
            wait_until(lambda: all(rd.events() >= 4 for rd, *_ in streams) and
                       other.events() >= 4, 5, what="the streams to be under way")
            closed_before = mk.stats()["closed_by_peer"]
            t_freeze = time.monotonic()
            adm.freeze("team", "t1", reason="cut test")
            for rd, *_ in streams:
                rd.join(patience + 2)
            for rd, k, fmt, _ in streams:
                assert rd.error is None, (k, fmt, rd.error, rd.body[-300:])
                assert rd.ended_at is not None, (k, fmt, "still streaming", rd.body[-200:])
                took = rd.ended_at - t_freeze
                assert took <= patience, (k, fmt, "ended %.3fs after the freeze" % took)
            # the provider's connections of the cut streams are closed
            wait_until(lambda: mk.stats()["closed_by_peer"] - closed_before >= len(streams),
                       5, what="tollgate to close the cut streams' provider connections")
            # the other team's stream is not touched
            assert other.ended_at is None or other.ended_at > t_freeze + 0.3, other.ended_at
            other.join(10)
            assert other.error is None and other.ended_at is not None, other.error
            oevs = parse_sse(other.body)
            assert oevs[-1] == (None, "[DONE]"), oevs[-3:]
            u = json.loads(oevs[-2][1])["usage"]
            assert u["completion_tokens"] == 40, u
            other_cost = u["prompt_tokens"] * IN_PRICE + 40 * OUT_PRICE

            charges = {"k1": 0, "k2": 0}
            for rd, k, fmt, b in streams:
                upstream = cut_final(rd, fmt)
                nbytes, ntext = counted(upstream)
                assert 3 <= ntext < 200, (k, fmt, ntext)
                if fmt == "openai":
                    inp = len(b) + SLACK
                else:
                    first = parse_sse(upstream[0])[0]
                    assert first[0] == "message_start", first
                    inp = json.loads(first[1])["message"]["usage"]["input_tokens"]
                exp = inp * IN_PRICE + nbytes * OUT_PRICE
                got = decision_actual(tg, k, rd)
                assert got == exp, (k, fmt, "charged", got, "expected", exp)
                charges[k] += got
                # the connection lives on after the terminator
                rd.conn.send(request("GET", "/v1/budget", None, hdrs(k)))
                assert rd.conn.response().status == 200
                rd.conn.close()
            other.conn.close()
            assert decision_actual(tg, "k3", other) == other_cost

            st1 = quiet_budget(tg, "k1")
            st2 = quiet_budget(tg, "k2")
            st3 = quiet_budget(tg, "k3")
            for st in (st1, st2, st3):
                for name, (_, _, text) in st.items():
                    assert text in ("0.00", "0"), (name, text)
            assert st1["key:k1"][0] == charges["k1"] and st1["user:u1"][0] == charges["k1"]
            assert st2["key:k2"][0] == charges["k2"] and st2["user:u2"][0] == charges["k2"]
            assert st1["team:t1"][0] == charges["k1"] + charges["k2"], st1
            assert st3["team:t2"][0] == other_cost, st3
            assert st1["org:o1"][0] == charges["k1"] + charges["k2"] + other_cost, st1
            assert charges["k1"] > 0 and charges["k2"] > 0

            def counted_cuts():
                d = metric_delta(adm.metrics(), before)
                return d if d["tollgate_stream_cuts_total"] >= len(streams) else None
            d = wait_until(counted_cuts, 5, what="the cuts to be counted")
            assert d["tollgate_stream_cuts_frozen_total"] == len(streams), d
            assert d["tollgate_stream_cuts_total"] == len(streams), d
            assert d['tollgate_streams_metered_total{usage="missing"}'] == len(streams), d
            assert d['tollgate_streams_metered_total{usage="reported"}'] == 1, d
            assert d["tollgate_refused_frozen_total"] == 0, d

            # frozen: new streams refused; unfrozen: a stream runs whole
            problem(call(tg, CHAT, chat_body(stream=True), hdrs("k1")), 423, "frozen")
            problem(call(tg, MESSAGES, msg_body(), hdrs("k2")), 423, "frozen")
            adm.unfreeze("team", "t1")
            r = call(tg, CHAT, chat_body(stream=True, stream_options={"include_usage": True}),
                     hdrs("k1", x_mock_tokens="20", x_mock_token_delay_us="1000"))
            assert r.status == 200, r
            evs = parse_sse(r.body)
            assert evs[-1] == (None, "[DONE]") and b"budget_exhausted" not in r.body, evs[-3:]
            assert json.loads(evs[-2][1])["usage"]["completion_tokens"] == 20
            d = metric_delta(adm.metrics(), before)
            assert d["tollgate_stream_cuts_total"] == len(streams), d


def test_admin_freeze_cuts_stream_waiting_on_provider(env):
    """A stream whose provider has gone quiet (x-mock-stall-after 3: no
    byte after the third event), on each shard, and a run freeze: cut at
    once, not at the provider's idle timeout (30 s), with the final event;
    the freeze of another run leaves a stream alone."""
    patience = 2.0 if slow_build(env) else 1.0
    with Mock(env) as mk:
        tg, adm = start(env, mk)
        with tg:
            stall = {"x-mock-tokens": "50", "x-mock-stall-after": "3"}
            streams, shards = [], set()
            while shards != {0, 1} or len(streams) < 2:
                assert len(streams) < 16, shards
                run = "stall-run-%d" % len(streams)
                rd = open_stream(tg, CHAT, chat_body(stream=True), dict(hdrs("k1", run), **stall))
                shards.add(shard_of(rd))
                streams.append((rd, run))
            wait_until(lambda: all(rd.events() >= 3 for rd, _ in streams), 5,
                       what="the streams' first events")
            adm.freeze("run", "stall-run-unrelated")
            time.sleep(0.3)
            assert all(rd.ended_at is None for rd, _ in streams), "cut by another run's freeze"
            t_freeze = time.monotonic()
            for _, run in streams:
                adm.freeze("run", run)
            for rd, run in streams:
                rd.join(patience + 2)
                assert rd.error is None and rd.ended_at is not None, (run, rd.error)
                assert rd.ended_at - t_freeze <= patience, (run, rd.ended_at - t_freeze)
                upstream = cut_final(rd, "openai")
                assert counted(upstream)[1] == 3, upstream
                rd.conn.close()
            quiet_budget(tg, "k1")
            for rd, run in streams:
                problem(small_call(tg, "k1", run), 423, "frozen")


# ---------------------------------------------------------------- 4. drift

def test_admin_metrics_stream_drift(env):
    """Streams with known token counts: OpenAI chat without stream_options
    (tollgate asks for usage and drops the chunk), with include_usage
    (the agent sees it), legacy completions, Anthropic, several tokens per
    event, one capped by max_tokens below its text bytes; and one OpenAI
    stream with include_usage false (no usage). Metrics: reported = sum of
    the mock's usage, upper = sum of min(text bytes, cap), lower = sum of
    min(text events, cap), upper >= reported >= lower, drift = upper -
    reported, no bound misses, the usage-less stream counted as missing."""
    with Mock(env) as mk:
        tg, adm = start(env, mk)
        with tg:
            before = adm.metrics()
            cases = []
            for i, (tokens, per) in enumerate(((30, 1), (57, 2), (100, 3), (8, 8), (1, 1),
                                                (64, 5))):
                cases.append(("chat-injected", CHAT, chat_body(stream=True, content="c%d" % i),
                              tokens, per, CAP))
                cases.append(("chat-usage", CHAT, chat_body(
                    stream=True, content="u%d" % i, stream_options={"include_usage": True}),
                    tokens, per, CAP))
                cases.append(("completions", COMPLETIONS, body_of(
                    {"model": "o", "prompt": "p%d" % i, "max_tokens": 100000, "stream": True}),
                    tokens, per, CAP))
                cases.append(("anthropic", MESSAGES, msg_body(content="a%d" % i), tokens, per,
                              CAP))
            # capped: 20 tokens of ~4.6 bytes each, max_tokens 20 (upper = 20)
            cases.append(("chat-capped", CHAT, chat_body(max_tokens=20, stream=True,
                                                         content="cap"), 20, 1, 20))
            want = {"reported": 0, "upper": 0, "lower": 0, "n": 0}
            with tg.conn(timeout=20) as c:
                for what, path, b, tokens, per, cap in cases:
                    h = hdrs("k1", x_mock_tokens=str(tokens),
                             x_mock_tokens_per_event=str(per), x_mock_token_delay_us="200")
                    c.send(request("POST", path, b, h))
                    r = c.response()
                    assert r.status == 200, (what, r)
                    evs = split_events(r.body)
                    assert b"budget_exhausted" not in r.body, (what, r.body[-300:])
                    nbytes, ntext = counted(evs)
                    visible = [json.loads(d) for _, d in parse_sse(r.body)
                               if d and d != "[DONE]" and '"usage"' in d]
                    if what == "anthropic":
                        out = [v["usage"]["output_tokens"] for v in visible
                               if v.get("type") == "message_delta"]
                        assert out == [tokens], (what, out)
                    elif what in ("chat-usage",):
                        assert [v["usage"]["completion_tokens"] for v in visible] == [tokens]
                    else:
                        assert not visible, (what, "the injected usage chunk was relayed")
                    assert ntext == -(-tokens // per), (what, tokens, per, ntext)
                    assert nbytes >= tokens, (what, nbytes, tokens)
                    want["reported"] += tokens
                    want["upper"] += min(nbytes, cap)
                    want["lower"] += min(ntext, cap)
                    want["n"] += 1
                # a stream without usage
                c.send(request("POST", CHAT, chat_body(
                    stream=True, content="nousage", stream_options={"include_usage": False}),
                    hdrs("k1", x_mock_tokens="25")))
                r = c.response()
                assert r.status == 200 and b'"usage"' not in r.body, r.body[-300:]

            def settled():
                d = metric_delta(adm.metrics(), before)
                n = (d['tollgate_streams_metered_total{usage="reported"}'] +
                     d['tollgate_streams_metered_total{usage="missing"}'])
                return d if n >= want["n"] + 1 else None
            d = wait_until(settled, 5, what="the streams to be metered")
            assert d['tollgate_streams_metered_total{usage="reported"}'] == want["n"], (d, want)
            assert d['tollgate_streams_metered_total{usage="missing"}'] == 1, d
            rep = d["tollgate_stream_output_tokens_reported_total"]
            up = d['tollgate_stream_output_tokens_counted_total{bound="upper"}']
            lo = d['tollgate_stream_output_tokens_counted_total{bound="lower"}']
            assert rep == want["reported"], ("reported", rep, want)
            assert up == want["upper"], ("upper", up, want)
            assert lo == want["lower"], ("lower", lo, want)
            assert up >= rep >= lo, (up, rep, lo)
            assert d["tollgate_stream_output_tokens_drift_total"] == up - rep, d
            assert d["tollgate_stream_bound_misses_total"] == 0, d
            assert d["tollgate_stream_cuts_total"] == 0, d
            assert lo < rep < up, "the case mix should separate the bounds"


# ---------------------------------------------------------------- 5. persistence

def test_admin_freeze_survives_restart(env):
    """With a ledger: key k1 frozen (persisted: true), team t2 frozen and
    lifted, run r frozen; SIGTERM (exit 0) and a start on the same ledger:
    k1 and the run are still refused on both shards and listed with their
    reasons, t2 is not; a SIGHUP reload keeps them. Unfreeze k1, restart:
    k1's calls pass and only the run is listed; unfreeze it, restart:
    nothing is frozen."""
    led = tempfile.mkdtemp(prefix="e2e-admin-ledger-")
    try:
        with Mock(env) as mk:
            tg, adm = start(env, mk, led)
            with tg:
                r = small_call(tg, "k3", "persist-run")
                assert r.status == 200, r
                # on one admin connection, so one shard books them in order
                # (across shards see test_admin_freeze_order_survives_restart)
                with adm.conn() as ac:
                    adm.freeze("key", "k1", reason="persist test", persisted=True, conn=ac)
                    adm.freeze("team", "t2", reason="lifted", persisted=True, conn=ac)
                    adm.freeze("run", "persist-run", reason="run frozen", persisted=True,
                               conn=ac)
                    adm.unfreeze("team", "t2", persisted=True, conn=ac)
                since = adm.freezes()[("key", "k1")]["since"]
                problem(small_call(tg, "k1"), 423, "frozen")
            # tg.__exit__ stopped it with SIGTERM and checked exit code 0

            tg, adm = start(env, mk, led)
            with tg:
                listed = adm.freezes()
                assert set(listed) == {("key", "k1"), ("run", "persist-run")}, listed
                assert listed[("key", "k1")]["reason"] == "persist test", listed
                assert listed[("key", "k1")]["since"] == since, (listed, since)
                assert listed[("run", "persist-run")]["reason"] == "run frozen", listed
                assert adm.metrics()["tollgate_frozen_scopes"] == 2
                on_both_shards(tg, "k1", None, 423, "key:k1")
                on_both_shards(tg, "k3", "persist-run", 423, "run:persist-run")
                on_both_shards(tg, "k3")
                on_both_shards(tg, "k2")
                # a reload keeps the freezes
                cfg = json.loads(json.dumps(tg.config))
                n = tg.log().count("handed to")
                tg.reload(cfg)
                wait_until(lambda: tg.log().count("handed to") > n, 10, what="the reload")
                on_both_shards(tg, "k1", None, 423, "key:k1")
                assert set(adm.freezes()) == {("key", "k1"), ("run", "persist-run")}
                adm.unfreeze("key", "k1", persisted=True)
                on_both_shards(tg, "k1")

            tg, adm = start(env, mk, led)
            with tg:
                assert set(adm.freezes()) == {("run", "persist-run")}, adm.freezes()
                on_both_shards(tg, "k1")
                on_both_shards(tg, "k3", "persist-run", 423, "run:persist-run")
                adm.unfreeze("run", "persist-run")

            tg, adm = start(env, mk, led)
            with tg:
                assert adm.freezes() == {}, adm.freezes()
                assert adm.metrics()["tollgate_frozen_scopes"] == 0
                on_both_shards(tg, "k1")
                on_both_shards(tg, "k3", "persist-run")
    finally:
        shutil.rmtree(led, ignore_errors=True)


def test_admin_freeze_order_survives_restart(env):
    """Freezes and unfreezes of one scope in quick succession, each on a
    fresh admin connection (so on either shard): after a restart each
    scope is in the state its last command left it in. 40 runs frozen then
    unfrozen must come back unfrozen; 40 frozen, unfrozen and frozen again
    must come back frozen. (The order of commands is the order the
    operator saw them acknowledged, whichever shard booked them.)"""
    led = tempfile.mkdtemp(prefix="e2e-admin-ledger-")
    try:
        with Mock(env) as mk:
            tg, adm = start(env, mk, led)
            booked = {}
            with tg:
                # (admin replies carry no decision id, so which shard
                # booked each command is not known; fresh connections
                # spread them, and 80 scopes make cross-shard pairs certain)
                for i in range(40):
                    sid = "order-off-%02d" % i
                    adm.freeze("run", sid)
                    adm.unfreeze("run", sid)
                    booked[sid] = (False, "freeze, unfreeze")
                for i in range(40):
                    sid = "order-on-%02d" % i
                    adm.freeze("run", sid)
                    adm.unfreeze("run", sid)
                    adm.freeze("run", sid)
                    booked[sid] = (True, "freeze, unfreeze, freeze")
                before = {sid for _, sid in adm.freezes()}
                assert before == {s for s, (on, _) in booked.items() if on}, before
            tg, adm = start(env, mk, led)
            with tg:
                after = {sid for _, sid in adm.freezes()}
                wrong = sorted("%s: %s, after restart %s" % (
                    sid, how, "frozen" if sid in after else "not frozen")
                    for sid, (on, how) in booked.items() if (sid in after) != on)
                assert not wrong, "%d of %d scopes changed state across the restart:\n%s" % (
                    len(wrong), len(booked), "\n".join(wrong[:12]))
    finally:
        shutil.rmtree(led, ignore_errors=True)
