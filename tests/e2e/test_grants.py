"""End-to-end: delegation grants and outcomes (SPEC §3-§5, §7; net/grants_api.c,
core/grants.c, net/decide.c use_grant, net/booking.c, net/outcomes_api.c,
ledger/replay.c, ledger/replay_grants.c).

A grant moves part of a run's budget to another key: POST /v1/budget/grants
reserves `amount_usd` on the parent run and returns a bearer token; calls
with X-Budget-Grant-Token reserve on the grant (a hard_gate scope whose
limit is the amount) and on the grantee's own scopes; DELETE or expiry
closes it at the owner shard's housekeeping (once a second) once nothing is
in flight: the parent's reservation becomes what the grant spent, the rest
goes back to the run.

Keys: ka (team t1) owns the parent runs; kb and kc are in team t2 (so a
grant to kb books east-west chargebacks); kd is in t1 (same team: none).

Money is exact integer micro-USD throughout (test_budget's arithmetic):
model "m" costs $1 / $2 per Mtok, i.e. 1 micro-USD per input token and 2 per
output token; model "mx" costs 0 / $2, so a call whose reply has exactly
max_tokens output tokens costs exactly its worst case, 2 x max_tokens (no
refunds: what proves the invariant under parallel load).

Timing: an exchange is settled just after its reply's last byte is sent, so
state read on the same keep-alive connection afterwards is exact; across
connections, and for what the owner's housekeeping does, the tests poll.
"""

import calendar
import hashlib
import json
import shutil
import signal
import tempfile
import threading
import time

import ledgerfile
from harness import (CHAT, Conn, Mock, Response, Tollgate, call, principals, problem, request,
                     slow_build, wait_until)
from test_budget import (Price, bearer, budget, chat, key, micros, model,
                         openai_usage, usd)

P = Price("m", "1.00", "2.00")
PX = Price("mx", "0", "2.00")
MODELS = {"m": model("1.00", "2.00", cap=100000), "mx": model("0", "2.00", cap=100000)}
GRANTS = "/v1/budget/grants"
OUTCOMES = "/v1/budget/outcomes"
TOKEN_HDR = "X-Budget-Grant-Token"
PRICES_VERSION = "e2e-test"
DECISION_SHARD_SHIFT = 48

KEYS = [key("ka", "sk-a", "t1", limit="100.00"),
        key("kb", "sk-b", "t2", limit="50.00"),
        key("kc", "sk-c", "t2"),
        key("kd", "sk-d", "t1")]
TEAMS = {"t1": {"budget": budget("500.00")}, "t2": {"budget": budget("500.00")}}


def patience(env):
    """Seconds of slack for what the housekeeping does (once a second)."""
    return 6.0 if slow_build(env) else 3.0


class Deferred:
    """Deviations from the contract that should not stop the rest of a test
    from running: collected, and raised together at its end."""

    def __init__(self):
        self.msgs = []

    def check(self, ok, msg):
        if not ok:
            self.msgs.append(msg)

    def done(self):
        assert not self.msgs, "; ".join(self.msgs)


# ---------------------------------------------------------------- setup

class Gate:
    """A mock, a configuration and (unless ledger=False) a ledger
    directory; start() runs a tollgate on them, a fresh port each time."""

    def __init__(self, env, mock, ledger=True, workers=2):
        self.env = env
        self.mock = mock
        self.workers = workers
        self.dir = tempfile.mkdtemp(prefix="e2e-grants-") if ledger else None
        self.extra = principals(KEYS, TEAMS)
        if ledger:
            self.extra["ledger"] = {"dir": self.dir, "fsync": "batch", "batch_ms": 5}

    def start(self):
        return Tollgate(self.env, self.mock, workers=self.workers, models=MODELS,
                        extra=self.extra)

    def read(self):
        return ledgerfile.read(self.dir)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
        return False


def kill9(tg):
    """SIGKILL, and the process is checked (no sanitizer report)."""
    tg.expect_rc = -signal.SIGKILL
    tg.proc.kill()
    tg.proc.wait()
    probs = tg.stop()
    assert not probs, probs


def term(tg):
    """SIGTERM: drains, flushes the ledger, exits 0."""
    probs = tg.stop(30.0)
    assert not probs, probs


# ---------------------------------------------------------------- requests

def send(target, method, path, body=None, headers=None):
    """One request on connection `target` (a Conn), or on a fresh one
    (anything with a port)."""
    if isinstance(target, Conn):
        target.send(request(method, path, body, headers))
        return target.response()
    return call(target, path, body, headers, method=method)


def finish(c, status, headers):
    """The rest of a reply whose head was read from c."""
    if headers.get("transfer-encoding", "").lower() == "chunked":
        chunks = []
        while True:
            ch = c.chunk()
            if not ch:
                break
            chunks.append(ch)
        return Response(status, headers, b"".join(chunks), chunks)
    return Response(status, headers, c.exact(int(headers.get("content-length", "0"))), None)


def did_of(r):
    h = r.headers["x-budget-decision-id"]
    assert h.startswith("d-"), h
    return int(h[2:], 16)


def shard_of_grant(gid):
    """A grant's id is its opening decision's id: the shard is in its top bits."""
    return int(gid[2:], 16) >> DECISION_SHARD_SHIFT


def grant_req(run, amount, grantee="kb", ttl=None):
    d = {"parent_run": run, "amount_usd": amount, "grantee_key": grantee}
    if ttl is not None:
        d["ttl_s"] = ttl
    return json.dumps(d).encode()


def open_parent(target, run, limit, secret="sk-a"):
    """A first call of `secret` in run `run` (limit `limit`): its cost."""
    b = chat("m", 40, content="parent " + run)
    r = send(target, "POST", CHAT, b, dict(bearer(secret), **{"X-Run-Id": run,
                                                                "X-Budget-Run-Limit": limit}))
    assert r.status == 200 and r.headers["x-run-id"] == run, r
    return P.actual(*openai_usage(r))


def iso_s(text):
    return calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ"))


def open_grant(target, run, amount, grantee="kb", ttl=None, secret="sk-a"):
    """POST /v1/budget/grants, checked: the reply's JSON."""
    t0 = int(time.time())
    r = send(target, "POST", GRANTS, grant_req(run, amount, grantee, ttl), bearer(secret))
    assert r.status == 201, r
    assert r.headers.get("content-type") == "application/json", r.headers
    j = r.json()
    tok, gid = j.get("grant_token", ""), j.get("grant_id", "")
    assert len(tok) == 40 and tok.startswith("tgg_") and \
        all(ch in "0123456789abcdef" for ch in tok[4:]), j
    assert gid.startswith("g-") and len(gid) >= 14 and \
        all(ch in "0123456789abcdef" for ch in gid[2:]), j
    kid = {"sk-a": "ka", "sk-b": "kb", "sk-c": "kc", "sk-d": "kd"}[secret]
    assert j["state"] == "open" and j["parent_run"] == run and j["grantor_key"] == kid and \
        j["grantee_key"] == grantee, j
    amt = micros(amount)
    assert (j["amount_usd"], j["spent_usd"], j["reserved_usd"], j["remaining_usd"]) == \
        (usd(amt), "0.00", "0.00", usd(amt)), j
    exp = iso_s(j["expires_at"])
    ttl_s = 3600 if ttl is None else ttl
    assert t0 + ttl_s - 1 <= exp <= int(time.time()) + ttl_s + 1, (j, t0, ttl_s)
    return j


def grant_get(target, secret, gid):
    """GET /v1/budget/grants/{gid}: money in micro-USD, or None (404)."""
    r = send(target, "GET", GRANTS + "/" + gid, None, bearer(secret))
    if r.status == 404:
        problem(r, 404, "unknown_grant")
        return None
    assert r.status == 200 and r.headers.get("content-type") == "application/json", r
    j = r.json()
    assert j["grant_id"] == gid, j
    return {"state": j["state"], "amount": micros(j["amount_usd"]),
            "spent": micros(j["spent_usd"]), "reserved": micros(j["reserved_usd"]),
            "remaining": micros(j["remaining_usd"]), "expires_at": j["expires_at"],
            "parent_run": j["parent_run"], "grantor_key": j["grantor_key"],
            "grantee_key": j["grantee_key"]}


def grant_quiet(tg, secret, gid, timeout=5.0):
    """The grant's state once nothing is reserved on it (twice the same)."""
    last = [None]

    def ok():
        st = grant_get(tg, secret, gid)
        assert st is not None, "grant %s closed" % gid
        prev, last[0] = last[0], st
        return st if st["reserved"] == 0 and st == prev else None
    return wait_until(ok, timeout, what="grant %s to settle" % gid)


def wait_closed(tg, gid, timeout, secret="sk-a"):
    wait_until(lambda: grant_get(tg, secret, gid) is None, timeout,
               what="grant %s to close" % gid)


def run_scope(target, secret, run):
    """The run scope of GET /v1/budget/runs/{run}, in micro-USD."""
    r = send(target, "GET", "/v1/budget/runs/" + run, None, bearer(secret))
    assert r.status == 200, r
    sc = {s["scope"]: s for s in r.json()["scopes"]}["run:" + run]
    return {"limit": micros(sc["limit_usd"]), "committed": micros(sc["committed_usd"]),
            "reserved": micros(sc["reserved_usd"]), "remaining": micros(sc["remaining_usd"])}


def run_is(tg, run, limit, committed, reserved, timeout=3.0, secret="sk-a"):
    """Polls the run until it shows exactly these figures."""
    want = {"limit": limit, "committed": committed, "reserved": reserved,
            "remaining": limit - committed - reserved}
    last = [None]

    def ok():
        last[0] = run_scope(tg, secret, run)
        return last[0] == want
    try:
        wait_until(ok, timeout, what="run %s" % run)
    except AssertionError:
        raise AssertionError("run %s: %r, expected %r" % (run, last[0], want))


def scopes(target, secret):
    """GET /v1/budget: scope name -> committed/reserved (micro-USD)."""
    r = send(target, "GET", "/v1/budget", None, bearer(secret))
    assert r.status == 200, r
    return {s["scope"]: (micros(s["committed_usd"]), micros(s["reserved_usd"]))
            for s in r.json()["scopes"]}


def gh(token, secret="sk-b", **more):
    """Headers of a call under a grant."""
    h = dict(bearer(secret), **{TOKEN_HDR: token})
    h.update(more)
    return h


def gcall(target, token, body, secret="sk-b", **more):
    return send(target, "POST", CHAT, body, gh(token, secret, **more))


def stream_body(model_name, max_tokens, content):
    return chat(model_name, max_tokens, content=content, stream=True,
                stream_options={"include_usage": True})


def body_costing(target, tag="fit"):
    """A chat body for model m and its max_tokens whose worst case is
    exactly `target` micro-USD: (bytes + 64) + 2 x max_tokens."""
    for pad in range(2):
        content = tag + "x" * pad
        for digits in range(1, 7):
            base = len(chat("m", 10 ** (digits - 1), content=content))
            rest = target - 64 - base
            if rest > 0 and rest % 2 == 0 and len(str(rest // 2)) == digits:
                b = chat("m", rest // 2, content=content)
                assert P.estimate(b, rest // 2) == target, (target, b)
                return b, rest // 2
    raise AssertionError("no body costs exactly %d" % target)


def admitted(do, timeout, fits=None):
    """do() until it is not refused for a lease parked on the other shard:
    a shard's unused lease on a scope is returned at its next housekeeping
    (docs/budget.md), so a call that fits what is left may be refused
    meanwhile; such a refusal shows at least its estimate remaining (or
    fits() says it fits). The last Response."""
    deadline = time.monotonic() + timeout
    while True:
        r = do()
        if r.status != 402 or time.monotonic() > deadline:
            return r
        j = r.json()
        if fits is not None:
            parked = fits()
        else:
            b = j.get("budget") or {}
            parked = "remaining_usd" in b and \
                micros(b["remaining_usd"]) >= micros(b["estimate_usd"])
        if not parked:
            return r
        time.sleep(0.1)


def conn_on_shard(tg, shard, tries=64):
    """A keep-alive connection served by `shard`, found with a call that
    changes nothing (an unknown grant token: 403, whose decision id names
    the shard)."""
    for _ in range(tries):
        c = tg.conn()
        r = gcall(c, "tgg_" + "f" * 36, chat("m", 1, content="which shard"))
        problem(r, 403, "unknown_grant")
        if did_of(r) >> DECISION_SHARD_SHIFT == shard:
            return c
        c.close()
    raise AssertionError("no connection landed on shard %d" % shard)


def records(led, kind, **fields):
    return [r for r in led.records(kind)
            if all(r.fields[k] == v for k, v in fields.items())]


def wait_records(gt, kind, n, timeout=5.0, **fields):
    """Polls the ledger until it holds n records of `kind` with these fields."""
    got = [None]

    def ok():
        got[0] = records(gt.read(), kind, **fields)
        return len(got[0]) >= n
    try:
        wait_until(ok, timeout, step=0.05, what="%d %s records %r" % (n, kind, fields))
    except AssertionError:
        raise AssertionError("%s records %r: %r (want %d)" % (kind, fields, got[0], n))
    assert len(got[0]) == n, (kind, fields, got[0])
    return got[0]


# ---------------------------------------------------------------- 1. opening

def test_grant_open_reserves_on_parent(env):
    """201 with a token (tgg_ + 36 hex) and an id; GET by the grantor and the
    grantee shows amount, spent, reserved, remaining; the parent run holds
    the amount as reserved; an amount above what the run has left is 402
    (the exact rest fits); and the parent must be the caller's live run."""
    later = Deferred()
    with Mock(env, "--tokens", "5") as mk, Gate(env, mk) as gt, gt.start() as tg:
        limit = micros("0.05")
        c = tg.conn()          # every reservation on the run from one shard
        a_cost = open_parent(c, "run-p", "0.05")
        j = open_grant(c, "run-p", "0.01", "kb", ttl=600)
        gid = j["grant_id"]
        st = run_scope(c, "sk-a", "run-p")
        assert st == {"limit": limit, "committed": a_cost, "reserved": 10000,
                      "remaining": limit - a_cost - 10000}, (st, a_cost)
        want = {"state": "open", "amount": 10000, "spent": 0, "reserved": 0,
                "remaining": 10000, "expires_at": j["expires_at"], "parent_run": "run-p",
                "grantor_key": "ka", "grantee_key": "kb"}
        assert grant_get(tg, "sk-a", gid) == want
        assert grant_get(tg, "sk-b", gid) == want
        # neither another key nor an id never issued
        assert grant_get(tg, "sk-c", gid) is None
        assert grant_get(tg, "sk-a", "g-00000000ffff") is None
        problem(send(tg, "GET", GRANTS + "/" + gid, None, {}), 401, "invalid_key")
        # two grants never share a token or an id
        with c:
            j2 = open_grant(c, "run-p", "0.000001", "kc")
            assert j2["grant_token"] != j["grant_token"] and j2["grant_id"] != gid, (j, j2)
            left = limit - a_cost - 10001
            assert run_scope(c, "sk-a", "run-p")["remaining"] == left
            # more than the run has left: 402, and nothing changes
            r = send(c, "POST", GRANTS, grant_req("run-p", usd(left + 1), "kb"), bearer("sk-a"))
            j402 = problem(r, 402, "run_ceiling_reached")
            later.check(j402.get("budget", {}).get("scope") == "run:run-p",
                        "a grant refused for its parent run's ceiling has no `budget` object "
                        "(SPEC §3: budget errors carry one): %r" % (j402,))
            if "budget" in j402:
                bud = j402["budget"]
                assert (bud["run_id"], bud["limit_usd"], bud["committed_usd"],
                        bud["reserved_usd"], bud["remaining_usd"]) == \
                    ("run-p", usd(limit), usd(a_cost), usd(10001), usd(left)), j402
            st = run_scope(c, "sk-a", "run-p")
            assert st["reserved"] == 10001 and st["remaining"] == left, st
            # exactly what it has left: fits
            r = send(c, "POST", GRANTS, grant_req("run-p", usd(left), "kd"), bearer("sk-a"))
            assert r.status == 201, r
            st = run_scope(c, "sk-a", "run-p")
            assert st == {"limit": limit, "committed": a_cost, "reserved": 10001 + left,
                          "remaining": 0}, st
            problem(send(c, "POST", GRANTS, grant_req("run-p", "0.000001", "kb"),
                         bearer("sk-a")), 402, "run_ceiling_reached")
        # the parent must be a live run of the caller's, the grantee a key
        with tg.conn() as c:
            open_parent(c, "run-of-b", "1.00", secret="sk-b")
            problem(send(c, "POST", GRANTS, grant_req("run-of-b", "0.01", "kc"),
                         bearer("sk-a")), 403, "run_bound_to_other_key")
            problem(send(c, "POST", GRANTS, grant_req("no-such-run", "0.01", "kc"),
                         bearer("sk-a")), 404, "unknown_run")
            problem(send(c, "POST", GRANTS, grant_req("run-p", "0.000001", "nobody"),
                         bearer("sk-a")), 400, "unknown_grantee_key")
            problem(send(c, "POST", GRANTS, grant_req("run-p", "0.000001", "kb"), {}),
                    401, "invalid_key")
            problem(send(c, "POST", GRANTS, grant_req("run-p", "0.000001", "kb"),
                         bearer("sk-nope")), 401, "invalid_key")
        assert grant_get(tg, "sk-a", gid) == want

        # The exact rest of a run fits from the other shard too, at the
        # latest once the first shard's housekeeping gave back its lease
        # (docs/budget.md: "a refusal with money left on another shard
        # lasts at most about a second").
        c0, c1 = conn_on_shard(tg, 0), conn_on_shard(tg, 1)
        with c0, c1:
            a2 = open_parent(c0, "run-q", "0.05")
            open_grant(c0, "run-q", "0.01", "kb")
            left = limit - a2 - 10000
            r = admitted(lambda: send(c1, "POST", GRANTS, grant_req("run-q", usd(left), "kb"),
                                      bearer("sk-a")), patience(env),
                         lambda: run_scope(tg, "sk-a", "run-q")["remaining"] >= left)
            if r.status != 201:
                later.check(False,
                            "a grant of exactly what its run has left, asked from the other "
                            "shard, is still refused after %.0f s (%d %s) while the run "
                            "shows %s remaining: shard 0's lease on the run is never given "
                            "back" % (patience(env), r.status, r.json().get("code"),
                                      usd(left)))
    later.done()


# ---------------------------------------------------------------- 2. spending

def test_grant_spending_is_exact(env):
    """Calls with the token charge the grant and the grantee's own key and
    team, to the micro-dollar; an in-flight call shows as reserved on the
    grant; the grant's limit is hard (its worst case one micro-dollar over
    what is left: 402 naming grant:<id>; exactly what is left: allowed);
    token errors are 403 and reach no provider."""
    later = Deferred()
    with Mock(env, "--tokens", "5") as mk, Gate(env, mk) as gt, gt.start() as tg:
        with tg.conn() as c:
            a_cost = open_parent(c, "run-g", "1.00")
            g = open_grant(c, "run-g", "0.004", "kb")
        token, gid, amount = g["grant_token"], g["grant_id"], 4000
        spent = 0
        cb = tg.conn(timeout=20)   # every reservation on the grant from one shard
        with cb:
            before = scopes(cb, "sk-b")
            assert before == {"key:kb": (0, 0), "team:t2": (0, 0)}, before
            for i in range(3):
                b = chat("m", 100, content="grant call %d" % i)
                e = P.estimate(b, 100)
                r = gcall(cb, token, b)
                assert r.status == 200, r
                assert r.headers["x-budget-decision"] == "allow", r.headers
                # the tightest scope while it ran was the grant
                assert r.headers["x-budget-remaining-usd"] == usd(amount - spent - e), \
                    (r.headers, amount - spent - e)
                spent += P.actual(*openai_usage(r))
                st = grant_get(cb, "sk-b", gid)
                assert (st["spent"], st["reserved"], st["remaining"]) == \
                    (spent, 0, amount - spent), (st, spent)
            assert scopes(cb, "sk-b") == {"key:kb": (spent, 0), "team:t2": (spent, 0)}
            # while a call is in flight its worst case is reserved on the grant
            b = stream_body("m", 100, "in flight")
            e = P.estimate(b, 100)
            cb.send(request("POST", CHAT, b, gh(token, **{"x-mock-tokens": "10",
                                                          "x-mock-token-delay-us": "60000"})))
            head = cb.head()
            assert head[0] == 200, head
            st = grant_get(tg, "sk-a", gid)
            assert (st["spent"], st["reserved"], st["remaining"]) == \
                (spent, e, amount - spent - e), (st, spent, e)
            r = finish(cb, *head)
            spent += P.actual(*openai_usage(r))
            st = grant_get(cb, "sk-b", gid)
            assert (st["spent"], st["reserved"]) == (spent, 0), (st, spent)
            # The limit is hard: one micro-dollar over what is left is refused
            left = amount - spent
            b, mt = body_costing(left + 1, "over")
            n_mock = mk.stats()["requests"]
            r = gcall(cb, token, b)
            j = problem(r, 402)
            later.check(j["code"] == "grant_exhausted",
                        "a call refused by the grant's limit is %r, not SPEC §3's "
                        "402 grant_exhausted" % j["code"])
            assert j["budget"]["scope"] == "grant:" + gid, j
            assert j["budget"]["limit_usd"] == usd(amount) and \
                j["budget"]["committed_usd"] == usd(spent) and \
                j["budget"]["reserved_usd"] == "0.00" and \
                j["budget"]["remaining_usd"] == usd(left) and \
                j["budget"]["estimate_usd"] == usd(left + 1), (j, spent, left)
            assert r.headers.get("x-budget-blocking-scope") == "grant:" + gid, r.headers
            assert r.headers.get("x-budget-decision") == "block", r.headers
            assert mk.stats()["requests"] == n_mock
            st = grant_get(cb, "sk-b", gid)
            assert (st["spent"], st["reserved"], st["remaining"]) == (spent, 0, left), st
            # exactly what is left: allowed
            b, mt = body_costing(left, "fits")
            r = gcall(cb, token, b)
            assert r.status == 200, r
            assert r.headers["x-budget-remaining-usd"] == "0.00", r.headers
            spent += P.actual(*openai_usage(r))
            st = grant_get(cb, "sk-b", gid)
            assert (st["spent"], st["reserved"], st["remaining"]) == \
                (spent, 0, amount - spent), (st, spent)
            assert scopes(cb, "sk-b") == {"key:kb": (spent, 0), "team:t2": (spent, 0)}
        # token errors: 403, no provider call, nothing charged anywhere
        n_mock = mk.stats()["requests"]
        b = chat("m", 5, content="bad token")
        problem(gcall(tg, "tgg_" + "0" * 36, b), 403, "unknown_grant")
        problem(gcall(tg, token[:-1] + ("0" if token[-1] != "0" else "1"), b), 403,
                "unknown_grant")
        problem(gcall(tg, "nope", b), 403, "unknown_grant")
        problem(gcall(tg, token + "0", b), 403, "unknown_grant")
        problem(gcall(tg, token, b, secret="sk-c"), 403, "grant_not_for_this_key")
        problem(gcall(tg, token, b, secret="sk-a"), 403, "grant_not_for_this_key")
        problem(gcall(tg, token, b, secret="sk-nope"), 401, "invalid_key")
        assert mk.stats()["requests"] == n_mock
        assert grant_quiet(tg, "sk-b", gid)["spent"] == spent
        assert scopes(tg, "sk-b") == {"key:kb": (spent, 0), "team:t2": (spent, 0)}
        assert scopes(tg, "sk-c") == {"team:t2": (spent, 0)}
        # the grantor's run still holds the whole amount until the grant closes
        run_is(tg, "run-g", micros("1.00"), a_cost, amount)

        # Exactly what is left fits from the other shard too, at the latest
        # once the first shard's housekeeping gave back its lease on the
        # grant (docs/budget.md: "at most about a second").
        with tg.conn() as c:
            g2 = open_grant(c, "run-g", "0.004", "kb")
        c0, c1 = conn_on_shard(tg, 0), conn_on_shard(tg, 1)
        with c0, c1:
            r = gcall(c0, g2["grant_token"], chat("m", 100, content="shard 0"))
            assert r.status == 200, r
            left2 = 4000 - P.actual(*openai_usage(r))
            assert grant_quiet(tg, "sk-b", g2["grant_id"])["remaining"] == left2
            b, mt = body_costing(left2, "fits")
            r = admitted(lambda: gcall(c1, g2["grant_token"], b), patience(env))
            if r.status != 200:
                later.check(False,
                            "a call whose worst case is exactly what grant %s has left, "
                            "from the other shard, is still refused after %.0f s (%d %s) "
                            "while the grant shows %s remaining: shard 0's lease is never "
                            "given back" % (g2["grant_id"], patience(env), r.status,
                                            r.json().get("code"), usd(left2)))
    later.done()


# ---------------------------------------------------------------- 3. closing

def test_grant_close_and_expiry(env):
    """DELETE (grantor only; 202) stops new calls at once, waits for the call
    in flight, then the parent's committed grows by exactly what the grant
    spent and the rest of the amount goes back; a grant past its ttl_s
    closes by itself the same way."""
    with Mock(env, "--tokens", "5") as mk, Gate(env, mk) as gt, gt.start() as tg:
        limit = micros("1.00")
        with tg.conn() as c:
            a_cost = open_parent(c, "run-c", "1.00")
            g = open_grant(c, "run-c", "0.01", "kb", ttl=600)
        token, gid = g["grant_token"], g["grant_id"]
        spent = 0
        with tg.conn() as cb:
            for i in range(2):
                r = gcall(cb, token, chat("m", 50, content="before close %d" % i))
                assert r.status == 200, r
                spent += P.actual(*openai_usage(r))
        # a slow stream in flight when the DELETE comes
        b = stream_body("m", 100, "in flight at close")
        e = P.estimate(b, 100)
        s = tg.conn(timeout=20)
        s.send(request("POST", CHAT, b, gh(token, **{"x-mock-tokens": "20",
                                                     "x-mock-token-delay-us": "50000"})))
        head = s.head()
        assert head[0] == 200, head
        # only the grantor may close it
        problem(send(tg, "DELETE", GRANTS + "/" + gid, None, bearer("sk-b")), 404,
                "unknown_grant")
        problem(send(tg, "DELETE", GRANTS + "/" + gid, None, bearer("sk-c")), 404,
                "unknown_grant")
        problem(send(tg, "DELETE", GRANTS + "/" + gid, None, {}), 401, "invalid_key")
        assert grant_get(tg, "sk-a", gid)["state"] == "open"
        r = send(tg, "DELETE", GRANTS + "/" + gid, None, bearer("sk-a"))
        assert r.status == 202, r
        assert r.json()["grant_id"] == gid and r.json()["state"] == "closing", r
        # no new call is admitted on it from now on
        problem(gcall(tg, token, chat("m", 5, content="after delete")), 403, "grant_closed")
        # the stream goes on, still counted on the grant
        st = grant_get(tg, "sk-a", gid)
        assert st is not None and st["state"] == "closing", st
        assert (st["spent"], st["reserved"]) == (spent, e), (st, spent, e)
        run_is(tg, "run-c", limit, a_cost, 10000)
        r = finish(s, *head)
        s.close()
        assert r.body.rstrip().endswith(b"data: [DONE]"), r.body[-200:]
        spent += P.actual(*openai_usage(r))
        wait_closed(tg, gid, patience(env))
        run_is(tg, "run-c", limit, a_cost + spent, 0)
        r = gcall(tg, token, chat("m", 5, content="after close"))
        assert problem(r, 403)["code"] in ("unknown_grant", "grant_closed"), r
        problem(send(tg, "DELETE", GRANTS + "/" + gid, None, bearer("sk-a")), 404,
                "unknown_grant")
        # the grantee's own scopes keep what it spent
        assert scopes(tg, "sk-b") == {"key:kb": (spent, 0), "team:t2": (spent, 0)}

        # Expiry: one grant spent in its first second (ttl 2 s), one never
        # used (ttl 1 s); both close by themselves.
        with tg.conn() as c:
            g2 = open_grant(c, "run-c", "0.003", "kb", ttl=2)
            g3 = open_grant(c, "run-c", "0.002", "kd", ttl=1)
        t_open = time.monotonic()
        r = gcall(tg, g2["grant_token"], chat("m", 50, content="before expiry"))
        assert r.status == 200, r
        spent2 = P.actual(*openai_usage(r))
        wait_closed(tg, g3["grant_id"], patience(env))
        wait_closed(tg, g2["grant_id"], patience(env) + 1)
        took = time.monotonic() - t_open
        assert took <= patience(env) + 1, took
        run_is(tg, "run-c", limit, a_cost + spent + spent2, 0)
        r = gcall(tg, g2["grant_token"], chat("m", 5, content="after expiry"))
        assert problem(r, 403)["code"] in ("unknown_grant", "grant_closed"), r
        # the ledger: both closed with what they spent
        for gg, sp in ((g, spent), (g2, spent2), (g3, 0)):
            (rec,) = wait_records(gt, "grant_close", 1, grant=gg["grant_id"])
            assert rec.usd == sp and rec.reserved == micros(gg["amount_usd"]), (rec, sp)


# ---------------------------------------------------------------- 4. concurrency

def test_grant_parallel_spending(env):
    """Eight clients of kb spend one grant at once, streams and not, on
    both shards. Every call costs exactly its worst case E (model mx, the
    reply has max_tokens tokens), so no refund ever frees budget: no read of
    the grant may show committed + reserved above its amount, the admitted
    calls never cost more than the amount, and draining it afterwards admits
    exactly amount // E calls in all. Closed, the parent has spent exactly
    what the grant's commit records in the ledger add up to."""
    mt = 150
    E = 2 * mt
    amount = 20000
    limit = micros("1.00")
    with Mock(env, "--tokens", "5") as mk, Gate(env, mk) as gt, gt.start() as tg:
        with tg.conn() as c:
            a_cost = open_parent(c, "run-par", "1.00")
            g = open_grant(c, "run-par", usd(amount), "kb")
        token, gid = g["grant_token"], g["grant_id"]
        plain = chat("mx", mt, content="parallel")
        streamed = stream_body("mx", mt, "parallel stream")
        assert PX.estimate(plain, mt) == E and PX.estimate(streamed, mt) == E
        extra = {"x-mock-tokens": str(mt), "x-mock-token-delay-us": "100"}
        results, errors = [], []
        lock = threading.Lock()
        stop = threading.Event()
        seen = []

        def client(i):
            try:
                keep = Conn(tg.port, 30.0) if i % 2 == 0 else None
                for j in range(12):
                    stream = (i + j) % 3 == 0
                    b = streamed if stream else plain
                    r = send(keep or tg, "POST", CHAT, b, gh(token, **extra))
                    if r.status == 200:
                        inp, out = openai_usage(r)
                        with lock:
                            results.append(("ok", PX.actual(inp, out), did_of(r), stream))
                    else:
                        j402 = problem(r, 402)
                        assert j402["budget"]["scope"] == "grant:" + gid, j402
                        with lock:
                            results.append(("refused", 0, did_of(r), stream))
                if keep:
                    keep.close()
            except Exception as e:       # noqa: B902 - reported below
                with lock:
                    errors.append(repr(e))

        def monitor():
            try:
                while not stop.is_set():
                    st = grant_get(tg, "sk-b", gid)
                    seen.append(st)
                    time.sleep(0.003)
            except Exception as e:       # noqa: B902
                with lock:
                    errors.append("monitor: %r" % e)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
        mon = threading.Thread(target=monitor)
        mon.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        stop.set()
        mon.join(10)
        assert not errors, errors
        assert len(results) == 96, len(results)
        bad = [st for st in seen if st["spent"] + st["reserved"] > amount or
               st["remaining"] < 0 or st["spent"] % E or st["reserved"] % E]
        assert not bad, bad[:5]
        assert len(seen) > 10, len(seen)
        ok = [x for x in results if x[0] == "ok"]
        assert all(x[1] == E for x in ok), [x for x in ok if x[1] != E][:5]
        assert any(x[3] for x in ok) and any(not x[3] for x in ok), "streams and not"
        assert len(ok) * E <= amount, (len(ok), E, amount)
        assert len(ok) < 96, "the grant should have run out"
        st = grant_quiet(tg, "sk-b", gid)
        assert (st["spent"], st["remaining"]) == (len(ok) * E, amount - len(ok) * E), \
            (st, len(ok))
        # drain it on one connection: exactly amount // E calls in all
        n_ok = len(ok)
        deadline = time.monotonic() + patience(env) + 2
        with tg.conn() as c:
            while True:
                r = gcall(c, token, plain, **extra)
                if r.status == 200:
                    n_ok += 1
                    continue
                jj = problem(r, 402)
                left = micros(jj["budget"]["remaining_usd"])
                if left < E:
                    break
                # a lease still parked on the other shard (docs/budget.md)
                assert time.monotonic() < deadline, jj
                time.sleep(0.2)
        assert n_ok == amount // E, (n_ok, amount // E)
        st = grant_quiet(tg, "sk-b", gid)
        assert (st["spent"], st["reserved"], st["remaining"]) == \
            (n_ok * E, 0, amount - n_ok * E), st
        run_is(tg, "run-par", limit, a_cost, amount)
        assert scopes(tg, "sk-b") == {"key:kb": (n_ok * E, 0), "team:t2": (n_ok * E, 0)}
        assert send(tg, "DELETE", GRANTS + "/" + gid, None, bearer("sk-a")).status == 202
        wait_closed(tg, gid, patience(env))
        (close,) = wait_records(gt, "grant_close", 1, grant=gid)
        led = gt.read()
        led.verify()
        commits = records(led, "commit", grant=gid)
        assert len(commits) == n_ok and all(r.usd == E for r in commits), commits[:3]
        assert {r.decision for r in commits} >= {x[2] for x in ok}
        total = sum(r.usd for r in commits)
        assert close.usd == total == n_ok * E, (close, total)
        run_is(tg, "run-par", limit, a_cost + total, 0)
        cbs = records(led, "chargeback", grant=gid)
        assert sorted(r.decision for r in cbs) == sorted(r.decision for r in commits), cbs[:3]
        assert sum(r.usd for r in cbs) == total


# ---------------------------------------------------------------- 5. the ledger

def test_grant_ledger_records(env):
    """grant_open (token hash in code, expiry ms in reserved, the amount),
    commits under the grant carrying its id, a chargeback per commit only
    when the grantee is in another team (team debited = the grantor's,
    peer_team credited = the grantee's, usd = the commit's), grant_close with
    what was spent; all to the micro-dollar."""
    with Mock(env, "--tokens", "5") as mk, Gate(env, mk) as gt, gt.start() as tg:
        with tg.conn() as c:
            a_cost = open_parent(c, "run-l", "1.00")
            gb = open_grant(c, "run-l", "0.003", "kb", ttl=900)   # other team
            gd = open_grant(c, "run-l", "0.002", "kd", ttl=900)   # same team
        calls = {"kb": [], "kd": []}
        for gg, secret, kid in ((gb, "sk-b", "kb"), (gd, "sk-d", "kd")):
            with tg.conn() as cx:
                for i, b in enumerate((chat("m", 30, content="ledger %s" % kid),
                                       stream_body("m", 30, "ledger stream %s" % kid))):
                    r = gcall(cx, gg["grant_token"], b, secret=secret,
                              **{"X-Budget-Tags": "task=grant%d" % i})
                    assert r.status == 200, r
                    calls[kid].append((did_of(r), P.actual(*openai_usage(r))))
        # a refused call under the grant (its worst case over the grant)
        r = gcall(tg, gb["grant_token"], chat("m", 2000, content="too big"))
        assert r.status == 402, r
        refused_did = did_of(r)
        for gg in (gb, gd):
            assert send(tg, "DELETE", GRANTS + "/" + gg["grant_id"], None,
                        bearer("sk-a")).status == 202
        for gg in (gb, gd):
            wait_closed(tg, gg["grant_id"], patience(env))
            wait_records(gt, "grant_close", 1, grant=gg["grant_id"])
        spent = {k: sum(x[1] for x in v) for k, v in calls.items()}
        run_is(tg, "run-l", micros("1.00"), a_cost + spent["kb"] + spent["kd"], 0)
        led = gt.read()
        led.verify()
        for gg, kid, team, amount in ((gb, "kb", "t2", 3000), (gd, "kd", "t1", 2000)):
            gid = gg["grant_id"]
            (op,) = records(led, "grant_open", grant=gid)
            assert op.decision == int(gid[2:], 16), op
            assert op.usd == amount, op
            assert op.reserved == iso_s(gg["expires_at"]) * 1000, (op, gg["expires_at"])
            assert op.run_limit == micros("1.00"), op
            assert op.flags & ledgerfile.F_RUN_KEPT, op
            assert op.code == hashlib.sha256(gg["grant_token"].encode()).hexdigest(), op
            assert gg["grant_token"] not in repr(op), op
            assert (op.run, op.key, op.team, op.peer_team, op.grantee_key,
                    op.prices_version) == ("run-l", "ka", "t1", team, kid, PRICES_VERSION), op
            commits = records(led, "commit", grant=gid)
            assert sorted((r.decision, r.usd) for r in commits) == sorted(calls[kid]), \
                (commits, calls[kid])
            for r in commits:
                assert (r.key, r.team, r.model) == (kid, team, "m"), r
            (cl,) = records(led, "grant_close", grant=gid)
            assert cl.usd == spent[kid] and cl.reserved == amount, (cl, spent[kid])
            assert cl.decision == op.decision, (cl, op)
            assert (cl.run, cl.key, cl.team, cl.peer_team, cl.grantee_key) == \
                ("run-l", "ka", "t1", team, kid), cl
            assert op.time_ms <= cl.time_ms, (op, cl)
        # chargebacks: one per commit under the other team's grant, none for kd
        cbs = records(led, "chargeback")
        assert all(r.grant == gb["grant_id"] for r in cbs), cbs
        assert sorted((r.decision, r.usd) for r in cbs) == sorted(calls["kb"]), cbs
        by_decision = led.by_decision()
        for r in cbs:
            assert (r.team, r.peer_team, r.key, r.user) == ("t1", "t2", "kb", ""), r
            commit = [x for x in by_decision[r.decision] if x.kind_name == "commit"]
            assert len(commit) == 1 and commit[0].usd == r.usd, (r, commit)
        # the refusal under the grant books no spend and no chargeback
        kinds = [x.kind_name for x in by_decision.get(refused_did, [])]
        assert kinds == ["refuse"], kinds
        # every commit under a grant is also the grantee's spend
        assert scopes(tg, "sk-b") == {"key:kb": (spent["kb"], 0), "team:t2": (spent["kb"], 0)}


def test_outcomes(env):
    """POST /v1/budget/outcomes: 201 and an `outcome` record for the run's
    own key; 403 for another key; 404 for an unknown run; 400 for a bad
    body; 405 for another method."""
    with Mock(env, "--tokens", "5") as mk, Gate(env, mk) as gt, gt.start() as tg:
        with tg.conn() as c:
            open_parent(c, "run-o", "1.00")
            r = send(c, "POST", OUTCOMES, {"run_id": "run-o", "outcome": "resolved"},
                     bearer("sk-a"))
            assert r.status == 201 and r.json() == {"run_id": "run-o",
                                                    "outcome": "resolved"}, r
            long_ok = "a" * 60 + ".:/@+-_"[:4]
            assert len(long_ok) == 64
            r = send(c, "POST", OUTCOMES, {"outcome": long_ok, "run_id": "run-o"},
                     bearer("sk-a"))
            assert r.status == 201, r
            did = did_of(r) if "x-budget-decision-id" in r.headers else None
        problem(send(tg, "POST", OUTCOMES, {"run_id": "run-o", "outcome": "stolen"},
                     bearer("sk-b")), 403, "run_bound_to_other_key")
        problem(send(tg, "POST", OUTCOMES, {"run_id": "no-such-run", "outcome": "x"},
                     bearer("sk-a")), 404, "unknown_run")
        problem(send(tg, "POST", OUTCOMES, {"run_id": "run-o", "outcome": "x"}, {}),
                401, "invalid_key")
        for body, field in (({"run_id": "run-o", "outcome": "has space"}, "outcome"),
                            ({"run_id": "run-o", "outcome": ""}, "outcome"),
                            ({"run_id": "run-o", "outcome": "a" * 65}, "outcome"),
                            ({"run_id": "run-o", "outcome": "caf\u00e9"}, "outcome"),
                            ({"run_id": "run-o", "outcome": 5}, "outcome"),
                            ({"run_id": "run-o", "outcome": None}, "outcome"),
                            ({"run_id": "run-o"}, "outcome"),
                            ({"outcome": "ok"}, "run_id"),
                            ({"run_id": 7, "outcome": "ok"}, "run_id"),
                            ({"run_id": "", "outcome": "ok"}, "run_id")):
            j = problem(send(tg, "POST", OUTCOMES, body, bearer("sk-a")), 400,
                        "invalid_request")
            assert field in j["detail"], (body, j)
        for raw in (b'{"run_id":"run\\u002do","outcome":"ok"}',
                    b'{"run_id":"run-o","outcome":"o\\u006b"}'):
            problem(send(tg, "POST", OUTCOMES, raw, bearer("sk-a")), 400, "invalid_request")
        for raw in (b"not json", b'{"run_id":"run-o","outcome":"ok"', b"[]", b"",
                    b'{"run_id":"run-o","run_id":"run-o","outcome":"ok"}'):
            problem(send(tg, "POST", OUTCOMES, raw, bearer("sk-a")), 400)
        for method in ("GET", "PUT", "DELETE"):
            problem(send(tg, method, OUTCOMES, None, bearer("sk-a")), 405)
        outs = wait_records(gt, "outcome", 2, run="run-o")
        assert [o.code for o in outs] == ["resolved", long_ok], outs
        for o in outs:
            assert (o.key, o.team, o.usd, o.model, o.provider) == ("ka", "t1", 0, "", ""), o
            assert o.flags & ledgerfile.F_RUN_KEPT and o.run_limit == micros("1.00"), o
        if did is not None:
            assert outs[1].decision == did, (outs[1], did)
        assert not records(gt.read(), "outcome", code="stolen")


def test_grants_and_outcomes_need_a_ledger(env):
    """Without a ledger, grants and outcomes (which exist only as ledger
    records) are refused: 503 ledger_unavailable; nothing is reserved."""
    with Mock(env, "--tokens", "5") as mk, Gate(env, mk, ledger=False) as gt, \
            gt.start() as tg:
        with tg.conn() as c:
            a_cost = open_parent(c, "run-n", "1.00")
            problem(send(c, "POST", GRANTS, grant_req("run-n", "0.01", "kb"), bearer("sk-a")),
                    503, "ledger_unavailable")
            problem(send(c, "POST", OUTCOMES, {"run_id": "run-n", "outcome": "done"},
                         bearer("sk-a")), 503, "ledger_unavailable")
        run_is(tg, "run-n", micros("1.00"), a_cost, 0)


# ---------------------------------------------------------------- 6. restart

def grant_owned_by(tg, run, amount, shard, grantee="kb", ttl=None):
    """A grant opened on a connection of `shard` (its owner)."""
    with conn_on_shard(tg, shard) as c:
        g = open_grant(c, run, amount, grantee, ttl)
    assert shard_of_grant(g["grant_id"]) == shard, g
    return g


def spend_on_both_shards(tg, token, n=6, tag="spend"):
    """n calls under the grant, alternately from each shard: Σ cost."""
    spent = 0
    conns = [conn_on_shard(tg, 0), conn_on_shard(tg, 1)]
    try:
        for i in range(n):
            r = gcall(conns[i % 2], token, chat("m", 40, content="%s %d" % (tag, i)))
            assert r.status == 200, r
            assert did_of(r) >> DECISION_SHARD_SHIFT == i % 2, r.headers
            spent += P.actual(*openai_usage(r))
    finally:
        for c in conns:
            c.close()
    return spent


def test_grant_survives_restart(env):
    """SIGTERM and start again on the same ledger: an open grant comes back
    with what it spent (commits booked on either shard) and its token works;
    the parent run holds its amount again; a grant that expired while
    tollgate was down is closed at start, grant_close booked with what it
    spent and that spend charged to the parent run."""
    limit = micros("1.00")
    with Mock(env, "--tokens", "5") as mk, Gate(env, mk) as gt:
        tg = gt.start()
        try:
            a_cost = open_parent(tg, "run-r", "1.00")
            # owned by shard 1 while their calls go to both shards: replay
            # reads shard 0's segments before shard 1's
            g1 = grant_owned_by(tg, "run-r", "0.01", 1)
            spent1 = spend_on_both_shards(tg, g1["grant_token"])
            st = grant_quiet(tg, "sk-b", g1["grant_id"])
            assert (st["spent"], st["remaining"]) == (spent1, 10000 - spent1), (st, spent1)
            g2 = grant_owned_by(tg, "run-r", "0.005", 1, ttl=4)
            spent2 = spend_on_both_shards(tg, g2["grant_token"], n=4, tag="short")
            assert grant_get(tg, "sk-b", g2["grant_id"])["state"] == "open", \
                "too slow: g2 expired before the SIGTERM"
        finally:
            term(tg)
        led = gt.read()
        for gg in (g1, g2):
            shards = {r.shard for r in records(led, "commit", grant=gg["grant_id"])}
            assert shards == {0, 1}, shards
            (op,) = records(led, "grant_open", grant=gg["grant_id"])
            assert op.shard == 1, op
        assert not records(led, "grant_close", grant=g2["grant_id"])
        # g2 expires while tollgate is down
        while time.time() < iso_s(g2["expires_at"]) + 1.2:
            time.sleep(0.1)
        later = Deferred()
        with gt.start() as tg:
            st = grant_get(tg, "sk-b", g1["grant_id"])
            assert st is not None and st["state"] == "open", st
            later.check((st["spent"], st["reserved"], st["remaining"]) ==
                        (spent1, 0, 10000 - spent1),
                        "g1 after restart: spent %d, reserved %d, remaining %d; before it "
                        "had spent %d" % (st["spent"], st["reserved"], st["remaining"],
                                          spent1))
            spent1_seen = st["spent"]
            assert grant_get(tg, "sk-a", g2["grant_id"]) is None
            (cl2,) = wait_records(gt, "grant_close", 1, grant=g2["grant_id"])
            later.check(cl2.usd == spent2 and cl2.reserved == 5000,
                        "g2, expired while down, closed at start with usd %d (it spent %d)"
                        % (cl2.usd, spent2))
            # the run: its own call and g2's spend committed, g1's amount held
            run_is(tg, "run-r", limit, a_cost + cl2.usd, 10000)
            assert scopes(tg, "sk-b") == {"key:kb": (spent1 + spent2, 0),
                                          "team:t2": (spent1 + spent2, 0)}
            # the same token keeps working, up to the grant's limit
            with tg.conn() as cb:
                r = gcall(cb, g1["grant_token"], chat("m", 40, content="after restart"))
                assert r.status == 200, r
                more = P.actual(*openai_usage(r))
                spent1 += more
                spent1_seen += more
                st = grant_get(cb, "sk-b", g1["grant_id"])
                assert (st["spent"], st["reserved"]) == (spent1_seen, 0), (st, spent1_seen)
                b, _ = body_costing(10000 - spent1_seen + 1, "over")
                j = problem(gcall(cb, g1["grant_token"], b), 402)
                assert j["budget"]["scope"] == "grant:" + g1["grant_id"], j
            assert send(tg, "DELETE", GRANTS + "/" + g1["grant_id"], None,
                        bearer("sk-a")).status == 202
            wait_closed(tg, g1["grant_id"], patience(env))
            (cl1,) = wait_records(gt, "grant_close", 1, grant=g1["grant_id"])
            later.check(cl1.usd == spent1, "g1 closed with usd %d; it spent %d"
                        % (cl1.usd, spent1))
            run_is(tg, "run-r", limit, a_cost + cl1.usd + cl2.usd, 0)
        gt.read().verify()
        later.done()


def test_grant_kill9_mid_spending(env):
    """kill -9 while clients spend a grant (streams in flight): after the
    restart the grant's spent is what the ledger says it spent (commits and
    the expires booked for reservations cut short), the parent still holds
    the amount, and once closed the parent, the grant_close record and the
    ledger agree to the micro-dollar."""
    limit = micros("1.00")
    amount = 50000
    with Mock(env, "--tokens", "5") as mk, Gate(env, mk) as gt:
        tg = gt.start()
        a_cost = open_parent(tg, "run-k", "1.00")
        # owned by shard 1, spent from both: replay reads shard 0's
        # segments (commits) before shard 1's (the grant_open)
        g = grant_owned_by(tg, "run-k", usd(amount), 1)
        token, gid = g["grant_token"], g["grant_id"]
        stop = threading.Event()
        errors = []

        def client(i):
            n = 0
            while not stop.is_set():
                stream = (i + n) % 2 == 0
                b = stream_body("m", 60, "k9 %d %d" % (i, n)) if stream else \
                    chat("m", 60, content="k9 %d %d" % (i, n))
                try:
                    r = gcall(tg, token, b, **{"x-mock-tokens": "30",
                                               "x-mock-token-delay-us": "10000"})
                    if r.status not in (200, 402):
                        errors.append(r)
                except (OSError, EOFError, ValueError):
                    pass                  # the kill cut it
                n += 1

        threads = [threading.Thread(target=client, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        kill9(tg)
        stop.set()
        for t in threads:
            t.join(20)
        assert not errors, errors[:3]
        with gt.start() as tg:
            # the expires of cut reservations are booked at start (written
            # soon after: polled)
            led = [None]

            def all_settled():
                led[0] = gt.read()
                reserves = {r.decision for r in records(led[0], "reserve", grant=gid)}
                settled = {r.decision for r in led[0].records(("commit", "release", "expire"))
                           if r.grant == gid}
                assert reserves, "no reservation under the grant"
                return reserves <= settled
            wait_until(all_settled, 5, step=0.05, what="every reservation to be settled")
            led = led[0]
            led.verify()
            assert records(led, "expire", grant=gid), "kill -9 cut no call in flight"
            assert {r.shard for r in records(led, "commit", grant=gid)} == {0, 1}
            spent_led = sum(r.usd for r in led.records(("commit", "expire"))
                            if r.grant == gid)
            st = grant_quiet(tg, "sk-b", gid)
            assert (st["spent"], st["reserved"], st["remaining"]) == \
                (spent_led, 0, amount - spent_led), ("grant after kill -9", st, spent_led)
            assert st["state"] == "open", st
            run_is(tg, "run-k", limit, a_cost, amount)
            assert scopes(tg, "sk-b") == {"key:kb": (spent_led, 0),
                                          "team:t2": (spent_led, 0)}
            assert send(tg, "DELETE", GRANTS + "/" + gid, None,
                        bearer("sk-a")).status == 202
            wait_closed(tg, gid, patience(env))
            (cl,) = wait_records(gt, "grant_close", 1, grant=gid)
            assert cl.usd == spent_led, (cl, spent_led)
            run_is(tg, "run-k", limit, a_cost + spent_led, 0)


# ---------------------------------------------------------------- 7. limits

def test_grant_request_validation(env):
    """Malformed bodies are 400 with a detail naming the field; wrong methods
    405; a key may have 256 grants open (429 after), and closing one frees a
    place."""
    with Mock(env, "--tokens", "5") as mk, Gate(env, mk) as gt, gt.start() as tg:
        with tg.conn() as c:
            a_cost = open_parent(c, "run-v", "1.00")
        good = {"parent_run": "run-v", "amount_usd": "0.01", "grantee_key": "kb",
                "ttl_s": 60}

        def without(name):
            return {k: v for k, v in good.items() if k != name}

        def with_(**kv):
            return dict(good, **kv)

        cases = [
            (without("parent_run"), "parent_run"),
            (without("amount_usd"), "amount_usd"),
            (without("grantee_key"), "grantee_key"),
            (with_(parent_run=""), "parent_run"),
            (with_(parent_run=5), "parent_run"),
            (with_(parent_run=None), "parent_run"),
            (with_(grantee_key=""), "grantee_key"),
            (with_(grantee_key=["kb"]), "grantee_key"),
            (with_(amount_usd="-1"), "amount_usd"),
            (with_(amount_usd=-1), "amount_usd"),
            (with_(amount_usd="0"), "amount_usd"),
            (with_(amount_usd=0), "amount_usd"),
            (with_(amount_usd="0.0000001"), "amount_usd"),
            (with_(amount_usd="1.0000001"), "amount_usd"),
            (with_(amount_usd="abc"), "amount_usd"),
            (with_(amount_usd=""), "amount_usd"),
            (with_(amount_usd=True), "amount_usd"),
            (with_(amount_usd=None), "amount_usd"),
            (with_(amount_usd={"usd": 1}), "amount_usd"),
            (with_(ttl_s=0), "ttl_s"),
            (with_(ttl_s=-1), "ttl_s"),
            (with_(ttl_s=2592001), "ttl_s"),
            (with_(ttl_s=1.5), "ttl_s"),
            (with_(ttl_s=None), "ttl_s"),
            (with_(ttl_s=10 ** 12), "ttl_s"),
        ]
        for body, field in cases:
            r = send(tg, "POST", GRANTS, json.dumps(body), bearer("sk-a"))
            j = problem(r, 400, "invalid_request")
            assert field in j["detail"], (body, j)
        # escaped strings are refused, not unescaped
        for raw, field in ((b'{"parent_run":"run\\u002dv","amount_usd":"0.01",'
                            b'"grantee_key":"kb"}', "parent_run"),
                           (b'{"parent_run":"run-v","amount_usd":"0.01",'
                            b'"grantee_key":"k\\u0062"}', "grantee_key"),
                           (b'{"parent_run":"run-v","amount_usd":"0\\u002e01",'
                            b'"grantee_key":"kb"}', "amount_usd")):
            j = problem(send(tg, "POST", GRANTS, raw, bearer("sk-a")), 400, "invalid_request")
            assert field in j["detail"], (raw, j)
        # not one JSON object
        for raw in (b"not json", b"", b"[]", b'"x"', b'{"parent_run":"run-v"',
                    b'{"parent_run":"run-v","parent_run":"run-v","amount_usd":"0.01",'
                    b'"grantee_key":"kb"}'):
            j = problem(send(tg, "POST", GRANTS, raw, bearer("sk-a")), 400)
            assert j["code"] in ("invalid_json", "invalid_request"), (raw, j)
        # none of these reserved anything
        run_is(tg, "run-v", micros("1.00"), a_cost, 0)
        # the bounds of what is valid: 6 decimals (trailing zeros allowed),
        # a bare number, ttl_s 1 and 2592000
        for body in (with_(amount_usd="0.000001"), with_(amount_usd="0.0000010"),
                     with_(amount_usd=0.25), with_(ttl_s=2592000), with_(ttl_s=1),
                     without("ttl_s")):
            r = send(tg, "POST", GRANTS, json.dumps(body), bearer("sk-a"))
            assert r.status == 201, (body, r)
        # wrong methods
        for method, path in (("GET", GRANTS), ("PUT", GRANTS), ("DELETE", GRANTS),
                             ("PUT", GRANTS + "/g-000000000001"),
                             ("POST", GRANTS + "/g-000000000001"),
                             ("PATCH", GRANTS + "/g-000000000001")):
            problem(send(tg, method, path, json.dumps(good), bearer("sk-a")), 405)

    # 256 open grants per grantor key
    with Mock(env, "--tokens", "5") as mk, Gate(env, mk) as gt, gt.start() as tg:
        with tg.conn() as c:
            open_parent(c, "run-many", "1.00")
            body = grant_req("run-many", "0.000001", "kb")
            ids = []
            for i in range(256):
                r = send(c, "POST", GRANTS, body, bearer("sk-a"))
                assert r.status == 201, (i, r)
                ids.append(r.json()["grant_id"])
            assert len(set(ids)) == 256
            problem(send(c, "POST", GRANTS, body, bearer("sk-a")), 429, "too_many_grants")
            # another key's grants are counted apart
            open_parent(c, "run-many-d", "1.00", secret="sk-d")
            open_grant(c, "run-many-d", "0.000001", "kb", secret="sk-d")
            st = run_scope(c, "sk-a", "run-many")
            assert st["reserved"] == 256, st
        assert send(tg, "DELETE", GRANTS + "/" + ids[0], None, bearer("sk-a")).status == 202
        wait_closed(tg, ids[0], patience(env))
        r = send(tg, "POST", GRANTS, body, bearer("sk-a"))
        assert r.status == 201, r
        problem(send(tg, "POST", GRANTS, body, bearer("sk-a")), 429, "too_many_grants")
