"""End-to-end: the budget decision plane (SPEC §3-§4, net/decide.c).

Every test configures keys (stored as SHA-256 of their secret), principals
with `window: total, mode: hard_gate` budgets and priced models, then checks
money to the micro-dollar. The expected values are computed here with exact
integer arithmetic that mirrors core/pricing.c:

    cost(n, p)      = ceil(n * p / 1e6)                 p = micro-USD per Mtok
    estimate        = cost(body_bytes + 64, in) + cost(effective_max_output, out)
    actual          = ceil((input * in + output * out) / 1e6)   (rounded once)

mockllm's usage is parsed from each reply (never assumed), so the charge
checked is "what the provider reported x the price".

Budget state is read from a *probe*: a call whose worst case ($100) cannot
fit, so it is refused by the first budgeted scope of the key in the order
key, user, team, org (its own run, first of all, is given $1000 and fits),
and its problem body carries that scope's limit, committed, reserved and
remaining without changing any of them.

Timing: an exchange is settled just after its reply's last byte is sent.
Calls on one keep-alive connection are therefore exact (the next request is
read only after the previous exchange ended); a probe on another connection
waits until the scope is quiet (settled()).
"""

import hashlib
import json
import os
import re
import signal
import tempfile
import threading
import time

from harness import (CHAT, COMPLETIONS, EMBEDDINGS, LOOPBACK, MESSAGES, Conn, Mock,
                     Response, Tollgate, call, free_port, make_config, problem, request,
                     run_tollgate_check, slow_build, sse_events, to_yaml, wait_until, principals)

MTOK = 1000000
SLACK = 64                  # PRICING_INPUT_SLACK: input bound = body bytes + 64
PROBE_TOKENS = 100000000    # max_tokens of a probe (= the models' cap below)
DECISION_ID = re.compile(r"^d-[0-9a-f]{12,}$")
RESERVATION_ID = re.compile(r"^r-[0-9a-f]{12,}$")


# ---------------------------------------------------------------- money

def micros(text):
    """Exact USD decimal string -> integer micro-USD ("-0.5" -> -500000)."""
    m = re.fullmatch(r"(-?)(\d+)(?:\.(\d{1,6}))?", text)
    assert m, "not a money string: %r" % (text,)
    v = int(m.group(2)) * MTOK + int((m.group(3) or "").ljust(6, "0"))
    return -v if m.group(1) else v


def usd(v):
    """Integer micro-USD -> the string tollgate writes (core/money.c: at least
    two decimals, trailing zeros past them dropped)."""
    sign, v = ("-", -v) if v < 0 else ("", v)
    frac = "%06d" % (v % MTOK)
    while len(frac) > 2 and frac.endswith("0"):
        frac = frac[:-1]
    return "%s%d.%s" % (sign, v // MTOK, frac)


def cost(tokens, per_mtok):
    return -(-tokens * per_mtok // MTOK) if per_mtok > 0 and tokens > 0 else 0


class Price:
    def __init__(self, model, inp, out):
        self.model = model
        self.inp = micros(inp)
        self.out = micros(out)

    def estimate(self, body, max_output):
        return cost(len(body) + SLACK, self.inp) + cost(max_output, self.out)

    def actual(self, input_tokens, output_tokens):
        return -(-(input_tokens * self.inp + output_tokens * self.out) // MTOK)


# ---------------------------------------------------------------- config

def sha256_hex(secret):
    return hashlib.sha256(secret.encode()).hexdigest()


def budget(limit):
    return {"limit": limit, "window": "total", "mode": "hard_gate"}


RUN_LIMIT = "1000.00"     # keys' run.default_limit: runs never bind unless asked to


def key(kid, secret, team, limit=None, user=None, models=("*",), run_limit=RUN_LIMIT):
    """A key entry. Every call belongs to a run (its first scope); the run
    limit is set high so that the key/user/team/org scopes are the ones
    tested, except where a test asks for X-Budget-Run-Limit."""
    k = {"id": kid, "secret_sha256": sha256_hex(secret), "team": team}
    if user:
        k["user"] = user
    k["models"] = list(models)
    if limit is not None:
        k["budget"] = budget(limit)
    k["run"] = {"default_limit": run_limit, "max_limit": run_limit}
    return k


def model(inp, out, provider="mock-openai", cap=PROBE_TOKENS):
    m = {"provider": provider}
    if inp is not None:
        m["input_usd_per_mtok"] = inp
    if out is not None:
        m["output_usd_per_mtok"] = out
    if cap:
        m["max_output_tokens"] = cap
    m.update({"context_tokens": 1000000, "tier": "x"})
    return m


def start(env, mock, models, keys, teams, orgs=None, users=None, providers=None, workers=2):
    """A tollgate with these principals and keys (prices_version e2e-test).
    A model "probe" is added for state(): its cap and output price make a
    worst case of $100, above every key/user/team/org limit used here and
    below the runs' $1000."""
    models = dict(models, probe=model("1.00", "1.00"))
    extra = principals(keys, teams, orgs, users)
    return Tollgate(env, mock, workers=workers, models=models, providers=providers,
                    extra=extra)


def bearer(secret):
    return {"Authorization": "Bearer " + secret}


# ---------------------------------------------------------------- requests

def body_bytes(obj):
    """The exact bytes sent (the estimate depends on their number)."""
    return json.dumps(obj, separators=(",", ":")).encode()


def chat(model_name, max_tokens=None, content="hello there", **extra):
    b = {"model": model_name, "messages": [{"role": "user", "content": content}]}
    if max_tokens is not None:
        b["max_tokens"] = max_tokens
    b.update(extra)
    return body_bytes(b)


def messages(model_name, max_tokens, content="hello there", **extra):
    b = {"model": model_name, "max_tokens": max_tokens,
         "messages": [{"role": "user", "content": content}]}
    b.update(extra)
    return body_bytes(b)


def openai_usage(r):
    """(input, output) tokens from an OpenAI reply (JSON, or SSE with usage)."""
    if r.body.startswith(b"data: "):
        usages = [json.loads(d)["usage"] for _, d in sse_events(r.body)
                  if d and d != "[DONE]" and json.loads(d).get("usage")]
        assert len(usages) == 1, r.body[-400:]
        u = usages[0]
    else:
        u = r.json()["usage"]
    return u["prompt_tokens"], u.get("completion_tokens", 0)


def anthropic_usage(r):
    """(input, output) tokens from an Anthropic reply, stream or not."""
    if r.body.startswith(b"event: "):
        inp = out = None
        for name, d in sse_events(r.body):
            j = json.loads(d)
            if name == "message_start":
                inp = j["message"]["usage"]["input_tokens"]
            elif name == "message_delta":
                out = j["usage"]["output_tokens"]
        assert inp is not None and out is not None, r.body[-400:]
        return inp, out
    u = r.json()["usage"]
    return u["input_tokens"], u["output_tokens"]


def state(server, secret):
    """The budget object of the first budgeted scope of `secret`'s key (key,
    user, team, org; the call's own run fits), read with a probe that cannot
    fit and so changes nothing."""
    r = call(server, CHAT, chat("probe", PROBE_TOKENS), bearer(secret))
    j = problem(r, 402)
    assert j["code"].endswith("_ceiling_reached"), j
    bud = j["budget"]
    return {"scope": bud["scope"], "limit": micros(bud["limit_usd"]),
            "committed": micros(bud["committed_usd"]),
            "reserved": micros(bud["reserved_usd"]),
            "remaining": micros(bud["remaining_usd"]),
            "header_remaining": micros(r.headers["x-budget-remaining-usd"])}


def settled(server, secret, committed, limit, scope=None, timeout=3.0):
    """Waits until the scope is quiet, then checks committed and remaining
    to the micro-dollar. Returns the state.

    An exchange is settled just after its last byte is sent, so a probe on
    another connection (maybe on the other shard) can come first. And the
    totals are a sum of per-shard counters read one by one while a commit
    writes `reserved -= r` then `committed += a`: a read in between sees
    nothing reserved and the commit not yet booked. So "quiet" is: nothing
    reserved, twice in a row with the same numbers."""
    last = [None]

    def quiet():
        st = state(server, secret)
        prev, last[0] = last[0], st
        return st if st["reserved"] == 0 and st == prev else None
    st = wait_until(quiet, timeout, what="reservations to settle")
    if scope is not None:
        assert st["scope"] == scope, st
    assert st["limit"] == limit, st
    assert st["committed"] == committed, (st, committed)
    assert st["remaining"] == limit - committed, st
    return st


def assert_allow_headers(r, remaining):
    h = r.headers
    assert h.get("x-budget-decision") == "allow", h
    assert DECISION_ID.match(h.get("x-budget-decision-id", "")), h
    assert RESERVATION_ID.match(h.get("x-budget-reservation-id", "")), h
    assert h.get("x-budget-enforcement-mode") == "hard_gate", h
    assert h.get("x-budget-price-table-version") == "e2e-test", h
    assert "x-budget-blocking-scope" not in h, h
    if remaining is not None:
        assert h.get("x-budget-remaining-usd") == usd(remaining), (h, usd(remaining))


def assert_block_headers(r, scope=None):
    h = r.headers
    assert h.get("x-budget-decision") == "block", h
    assert DECISION_ID.match(h.get("x-budget-decision-id", "")), h
    assert "x-budget-reservation-id" not in h, h
    assert h.get("x-budget-enforcement-mode") == "hard_gate", h
    assert h.get("x-budget-price-table-version") == "e2e-test", h
    if scope is None:
        assert "x-budget-blocking-scope" not in h, h
    else:
        assert h.get("x-budget-blocking-scope") == scope, h


# ---------------------------------------------------------------- 1. refusals

def test_keys_models_prices_and_headers(env):
    p = Price("m", "1.00", "2.00")
    models = {
        "m": model("1.00", "2.00", cap=1000),
        "m-other": model("1.00", "2.00"),
        "m-noprice": model(None, None),
        "m-noout": model("1.00", None),
        "m-nocap": model("1.00", "2.00", cap=0),
        "a": model("1.00", "2.00", provider="mock-anthropic"),
    }
    keys = [key("k1", "sk-one", "t", limit="1.00", models=["m", "m-noprice", "m-noout",
                                                            "m-nocap", "a"]),
            key("k2", "sk-two", "t", limit="0.001000", models=["m"]),
            key("k3", "sk-three", "small", user="u"),
            key("k4", "sk-four", "small"),
            key("k5", "sk-five", "t2")]
    with Mock(env, "--tokens", "5") as mk, start(
            env, mk, models, keys,
            orgs={"o": {"budget": budget("0.002")}},
            teams={"t": {"budget": budget("100.00")},
                   "small": {"budget": budget("0.002")},
                   "t2": {"parent": "o"}},
            users={"u": {"parent": "small", "budget": budget("0.003")}}) as tg:
        ok = chat("m", 10)
        before = mk.stats()["requests"]
        # 401: no key, an unknown key in either header style, an empty one,
        # another scheme.
        for hdrs in ({}, bearer("sk-wrong"), {"x-api-key": "sk-wrong"},
                     {"Authorization": "Bearer "}, {"Authorization": "Basic c2stb25l"},
                     {"x-api-key": "sk-on"}, bearer("sk-one1")):
            r = call(tg, CHAT, ok, hdrs)
            problem(r, 401, "invalid_key")
            assert_block_headers(r)
            assert "x-budget-remaining-usd" not in r.headers, r.headers
        # 403: a model the key may not use (it exists and is priced).
        r = call(tg, CHAT, chat("m-other", 10), bearer("sk-one"))
        problem(r, 403, "model_not_allowed")
        assert_block_headers(r)
        # 404: a model not in the configuration at all; and the other replies
        # made before any decision (they once crashed tollgate when keys were
        # configured: the blocking scope defaulted to index 0 of no scopes).
        r = call(tg, CHAT, chat("nope", 10), bearer("sk-one"))
        problem(r, 404, "unknown_model")
        assert_block_headers(r)
        problem(call(tg, CHAT, b"{not json", bearer("sk-one")), 400, "invalid_json")
        problem(call(tg, CHAT, messages("a", 5), bearer("sk-one")), 400, "invalid_request")
        r = call(tg, "/v1/models", None, method="GET")
        assert r.status == 200 and "x-budget-blocking-scope" not in r.headers, r
        # 402 unknown_price: no prices, or no output price; never free.
        for name in ("m-noprice", "m-noout"):
            r = call(tg, CHAT, chat(name, 10), bearer("sk-one"))
            problem(r, 402, "unknown_price")
            assert_block_headers(r)
        # 400 missing_max_tokens: neither the request nor the model caps output.
        r = call(tg, CHAT, chat("m-nocap"), bearer("sk-one"))
        problem(r, 400, "missing_max_tokens")
        assert_block_headers(r)
        # max_tokens that is not an integer in [0, 1e9] is refused, not ignored.
        for bad in (b'"10"', b"-1", b"1.5", b"1000000001", b"null"):
            b = b'{"model":"m","max_tokens":' + bad + b',"messages":[]}'
            problem(call(tg, CHAT, b, bearer("sk-one")), 400, "invalid_request")
        assert mk.stats()["requests"] == before, "a refused call reached the provider"

        # Allowed, with either header style (and any case of "Bearer"). On one
        # connection the previous exchange is settled before the next request
        # is read, so X-Budget-Remaining-USD is exact: limit - committed - this
        # call's reservation (held while it is in flight).
        spent, ids = 0, set()
        with tg.conn() as c:
            for path, b, max_out, hdrs in (
                    (CHAT, ok, 10, bearer("sk-one")),
                    (CHAT, ok, 10, {"x-api-key": "sk-one"}),
                    (CHAT, ok, 10, {"authorization": "bearer sk-one"}),
                    # a model with no cap of its own, once the request gives one
                    (CHAT, chat("m-nocap", 7), 7, bearer("sk-one")),
                    (MESSAGES, messages("a", 9), 9, {"x-api-key": "sk-one"})):
                c.send(request("POST", path, b, hdrs))
                r = c.response()
                assert r.status == 200, r
                assert_allow_headers(r, MTOK - spent - p.estimate(b, max_out))
                assert r.headers["x-budget-decision-id"][2:] == \
                    r.headers["x-budget-reservation-id"][2:], r.headers
                ids.add(r.headers["x-budget-decision-id"])
                spent += p.actual(*(anthropic_usage(r) if path == MESSAGES
                                    else openai_usage(r)))
            # A refusal shows exactly what is committed, nothing reserved.
            b = chat("m-nocap", 1000000)         # $2 worst case > $1
            c.send(request("POST", CHAT, b, bearer("sk-one")))
            r = c.response()
            j = problem(r, 402, "key_ceiling_reached")
            assert_block_headers(r, "key:k1")
            assert j["budget"]["committed_usd"] == usd(spent), (j, spent)
            assert j["budget"]["reserved_usd"] == "0.00", j
            assert j["budget"]["remaining_usd"] == usd(MTOK - spent), j
            assert r.headers["x-budget-remaining-usd"] == usd(MTOK - spent), r.headers
            ids.add(r.headers["x-budget-decision-id"])
        assert len(ids) == 6, ids
        assert mk.stats()["requests"] == before + 5
        # A connection remembers the last key it authenticated; a different
        # secret on it is checked afresh (same length, one byte apart too).
        with tg.conn() as c:
            for hdrs, status in ((bearer("sk-five"), 200), (bearer("sk-fivf"), 401),
                                 ({"x-api-key": "sk-five"}, 200), ({}, 401),
                                 (bearer("sk-one"), 200), (bearer("sk-onf"), 401)):
                c.send(request("POST", CHAT, chat("m", 1, content=""), hdrs))
                r = c.response()
                assert r.status == status, (hdrs, r)
        assert mk.stats()["requests"] == before + 8

        # 402 key ceiling: k2 has $0.001 = 1000 micro-USD. max_tokens above the
        # model's cap (1000) is clamped to it: the estimate uses 1000.
        b = chat("m", 5000)
        e = p.estimate(b, 1000)
        assert e > 1000
        r = call(tg, CHAT, b, bearer("sk-two"))
        j = problem(r, 402, "key_ceiling_reached")
        assert_block_headers(r, "key:k2")
        assert r.headers["x-budget-remaining-usd"] == "0.001", r.headers
        assert j["budget"] == {"scope": "key:k2", "run_id": r.headers["x-run-id"],
                               "limit_usd": "0.001",
                               "committed_usd": "0.00", "reserved_usd": "0.00",
                               "remaining_usd": "0.001", "estimate_usd": usd(e),
                               "effective_max_output_tokens": 1000}, j
        assert j["alternatives"] == [], j
        assert usd(e) in j["detail"], j

        # User, team and org ceilings, each named as the blocking scope.
        # k3: no key budget; user u ($0.003) under team small ($0.002).
        c = tg.conn()
        # k4 (team small only) spends a little first.
        b = chat("m", 100, content="x")
        c.send(request("POST", CHAT, b, bearer("sk-four")))
        r = c.response()
        assert r.status == 200, r
        spent_t = p.actual(*openai_usage(r))
        # k3's scopes in order: user u, team small. Too big for the user:
        b = chat("m", 1000, content="user" * 300)
        e = p.estimate(b, 1000)
        assert e > micros("0.003"), e
        c.send(request("POST", CHAT, b, bearer("sk-three")))
        r = c.response()
        j = problem(r, 402, "user_ceiling_reached")
        assert_block_headers(r, "user:u")
        assert j["budget"] == {"scope": "user:u", "run_id": r.headers["x-run-id"],
                               "limit_usd": "0.003",
                               "committed_usd": "0.00", "reserved_usd": "0.00",
                               "remaining_usd": "0.003", "estimate_usd": usd(e),
                               "effective_max_output_tokens": 1000}, j
        # Fits the user, not what the team has left.
        b = chat("m", 1000, content="team")
        e = p.estimate(b, 1000)
        assert micros("0.002") - spent_t < e <= micros("0.003"), e
        c.send(request("POST", CHAT, b, bearer("sk-three")))
        r = c.response()
        j = problem(r, 402, "team_ceiling_reached")
        assert_block_headers(r, "team:small")
        assert j["budget"] == {"scope": "team:small", "run_id": r.headers["x-run-id"],
                               "limit_usd": "0.002",
                               "committed_usd": usd(spent_t), "reserved_usd": "0.00",
                               "remaining_usd": usd(micros("0.002") - spent_t),
                               "estimate_usd": usd(e),
                               "effective_max_output_tokens": 1000}, j
        # Tightest scope in the header: the team (least left).
        assert r.headers["x-budget-remaining-usd"] == usd(micros("0.002") - spent_t)
        c.close()
        # All or none: the user scope that did fit holds nothing afterwards.
        st = state(tg, "sk-three")
        assert st["scope"] == "user:u" and st["committed"] == 0 and st["reserved"] == 0, st
        # k5: team t2 has no budget, its org o has $0.002.
        b = chat("m", 1000)
        r = call(tg, CHAT, b, bearer("sk-five"))
        j = problem(r, 402, "org_ceiling_reached")
        assert_block_headers(r, "org:o")
        assert j["budget"]["scope"] == "org:o" and j["budget"]["limit_usd"] == "0.002", j
        assert j["budget"]["estimate_usd"] == usd(p.estimate(b, 1000)), j
        assert mk.stats()["requests"] == before + 9


def test_run_scope(env):
    """Every call belongs to a run, the first of its scopes (SPEC §3)."""
    p = Price("m", "1.00", "2.00")
    models = {"m": model("1.00", "2.00")}
    keys = [key("kr", "sk-r", "t", limit="1.00", run_limit="0.05"),
            key("kq", "sk-q", "t")]
    keys[0]["run"]["max_limit"] = "0.10"
    with Mock(env, "--tokens", "5") as mk, start(
            env, mk, models, keys, teams={"t": {"budget": budget("10.00")}}) as tg:
        b = chat("m", 1000, content="run")
        e = p.estimate(b, 1000)
        before = mk.stats()["requests"]
        # Issued run: an id comes back; the run ($0.05) is the tightest scope.
        r = call(tg, CHAT, b, bearer("sk-r"))
        assert r.status == 200, r
        issued = r.headers["x-run-id"]
        assert re.match(r"^run-[0-9a-f]+$", issued), r.headers
        assert_allow_headers(r, micros("0.05") - e)
        assert call(tg, CHAT, b, bearer("sk-r")).headers["x-run-id"] != issued
        # A run limit below the estimate: run_ceiling_reached, nothing forwarded.
        r = call(tg, CHAT, b, dict(bearer("sk-r"), **{"X-Budget-Run-Limit": usd(e - 1)}))
        j = problem(r, 402, "run_ceiling_reached")
        rid = r.headers["x-run-id"]
        assert_block_headers(r, "run:" + rid)
        assert j["budget"]["scope"] == "run:" + rid and j["budget"]["run_id"] == rid, j
        assert j["budget"]["limit_usd"] == usd(e - 1), j
        assert mk.stats()["requests"] == before + 2
        # Exactly the estimate fits (a named run, opened by this call).
        h = dict(bearer("sk-r"), **{"X-Run-Id": "run-edge", "X-Budget-Run-Limit": usd(e)})
        with tg.conn() as c:
            c.send(request("POST", CHAT, b, h))
            r = c.response()
            assert r.status == 200 and r.headers["x-run-id"] == "run-edge", r
            assert_allow_headers(r, 0)
            spent = p.actual(*openai_usage(r))
            # The run keeps its spend across calls; its limit was fixed when
            # it opened (a later X-Budget-Run-Limit does not change it).
            h["X-Budget-Run-Limit"] = "0.10"
            c.send(request("POST", CHAT, b, h))
            r = c.response()
            j = problem(r, 402, "run_ceiling_reached")
            assert j["budget"]["committed_usd"] == usd(spent), (j, spent)
            assert j["budget"]["reserved_usd"] == "0.00", j
            assert j["budget"]["limit_usd"] == usd(e), j
        # A run requested above run.max_limit is clamped to it.
        h = dict(bearer("sk-r"), **{"X-Run-Id": "run-big", "X-Budget-Run-Limit": "5.00"})
        r = call(tg, CHAT, chat("m", 100000000), h)
        j = problem(r, 402, "run_ceiling_reached")
        assert j["budget"]["limit_usd"] == "0.10", j
        # A run belongs to the key that opened it.
        r = call(tg, CHAT, b, dict(bearer("sk-q"), **{"X-Run-Id": "run-edge"}))
        problem(r, 403, "run_bound_to_other_key")
        for bad in ({"X-Run-Id": "bad id!"}, {"X-Budget-Run-Limit": "1.0000001"},
                    {"X-Budget-Run-Limit": "abc"}):
            problem(call(tg, CHAT, b, dict(bearer("sk-r"), **bad)), 400, "invalid_request")
        assert mk.stats()["requests"] == before + 3


# ---------------------------------------------------------------- 2. the edge

def test_edge_exact_estimate_fits(env):
    p = Price("m", "1.00", "2.00")
    b = chat("m", 1000, content="edge")
    e = p.estimate(b, 1000)              # (len + 64) * 1 + 1000 * 2 micro-USD
    assert e == len(b) + SLACK + 2000
    models = {"m": model("1.00", "2.00")}
    keys = [key("exact", "sk-exact", "t", limit=usd(e)),
            key("short", "sk-short", "t", limit=usd(e - 1)),
            key("teamonly", "sk-teamonly", "edge")]
    with Mock(env, "--tokens", "3") as mk, start(
            env, mk, models, keys,
            teams={"t": {"budget": budget("10.00")},
                   "edge": {"budget": budget(usd(e))}}) as tg:
        before = mk.stats()["requests"]
        # One micro-dollar short: refused, nothing forwarded.
        r = call(tg, CHAT, b, bearer("sk-short"))
        j = problem(r, 402, "key_ceiling_reached")
        assert_block_headers(r, "key:short")
        assert j["budget"]["remaining_usd"] == usd(e - 1), j
        assert j["budget"]["estimate_usd"] == usd(e), j
        assert mk.stats()["requests"] == before
        # Exactly the estimate: allowed, and the scope is then full to the
        # micro-dollar while the call is in flight.
        for secret in ("sk-exact", "sk-teamonly"):
            r = call(tg, CHAT, b, bearer(secret))
            assert r.status == 200, r
            assert_allow_headers(r, 0)
            a = p.actual(*openai_usage(r))
            assert 0 < a < e
            # What the provider did not use was refunded; a second worst case
            # no longer fits.
            st = settled(tg, secret, a, e)
            r = call(tg, CHAT, b, bearer(secret))
            problem(r, 402)
            assert r.json()["budget"]["remaining_usd"] == usd(e - a), r.json()
            # ... but a call whose worst case is exactly what is left fits.
            # (A fresh connection: either shard. The refund went back to the
            # shared pool at the edge, so both can reserve it.)
            pad = (e - a) - 2 * 1 - SLACK - len(chat("m", 1, content=""))
            assert pad >= 0, (e, a)
            b2 = chat("m", 1, content="z" * pad)    # max_tokens 1: 2 micro-USD
            assert p.estimate(b2, 1) == e - a, (p.estimate(b2, 1), e - a)
            r = call(tg, CHAT, b2, bearer(secret))
            assert r.status == 200, r
            assert_allow_headers(r, 0)
            a += p.actual(*openai_usage(r))
            assert st["scope"] in ("key:exact", "team:edge")
            settled(tg, secret, a, e)
        assert mk.stats()["requests"] == before + 4


# ---------------------------------------------------------------- 3. commit

def decision(tg, secret, did):
    """The decision record of `did`, or None while it is not recorded."""
    r = call(tg, "/budget/decisions/" + did, None, bearer(secret), method="GET")
    return json.loads(r.body) if r.status == 200 else None


def text_bytes(body):
    """Bytes of generated text in an OpenAI stream, as carried (the meter's
    count without usage): every delta's content."""
    n = 0
    for _, data in sse_events(body):
        if data and data.startswith("{"):
            for ch in json.loads(data).get("choices", []):
                n += len(json.dumps(ch.get("delta", {}).get("content") or "")) - 2
    return n


def test_commit_from_usage(env):
    # Prices with fractions of a micro-dollar per token, so that rounding
    # (each estimate part up; the actual sum up once) is exercised.
    po = Price("o", "0.30", "1.50")
    pa = Price("a", "3.00", "15.00")
    pe = Price("e", "0.02", "0")
    models = {"o": model("0.30", "1.50", cap=1000),
              "a": model("3.00", "15.00", provider="mock-anthropic", cap=1000),
              "e": model("0.02", "0", cap=1)}
    limit = micros("5.00")
    keys = [key("k", "sk-k", "t", limit="5.00")]
    calls = [
        # (path, price, body, effective max output, mock headers)
        (CHAT, po, chat("o", 40), 40, {"x-mock-tokens": "7"}),
        (CHAT, po, chat("o", None, max_completion_tokens=100, content="abc" * 50), 100,
         {"x-mock-tokens": "33"}),
        (CHAT, po, chat("o", 5000), 1000, {"x-mock-tokens": "999"}),     # clamped
        (COMPLETIONS, po, body_bytes({"model": "o", "prompt": "once upon", "max_tokens": 20}),
         20, {}),
        (CHAT, po, chat("o", 30, stream=True, stream_options={"include_usage": True}), 30,
         {"x-mock-tokens": "9", "x-mock-tokens-per-event": "2"}),
        (EMBEDDINGS, pe, body_bytes({"model": "e", "input": "some text to embed"}), 0, {}),
        (MESSAGES, pa, messages("a", 64), 64, {"x-mock-tokens": "21"}),
        (MESSAGES, pa, messages("a", 10, content="q" * 333), 10, {"x-mock-tokens": "100"}),
        (MESSAGES, pa, messages("a", 2000), 1000, {"x-mock-tokens": "5"}),
    ]
    with Mock(env, "--tokens", "16") as mk, start(
            env, mk, models, keys, teams={"t": {"budget": budget("10.00")}}) as tg:
        spent = 0
        with tg.conn() as c:
            for i, (path, p, b, max_out, hdrs) in enumerate(calls):
                e = p.estimate(b, max_out)
                c.send(request("POST", path, b, dict(bearer("sk-k"), **hdrs)))
                r = c.response()
                assert r.status == 200, (i, r)
                # The previous calls are settled (same connection: the next
                # request is read only after the last exchange ended).
                assert_allow_headers(r, limit - spent - e)
                used = anthropic_usage(r) if path == MESSAGES else openai_usage(r)
                a = p.actual(*used)
                assert 0 < a <= e, (i, used, a, e)
                spent += a
                st = settled(tg, "sk-k", spent, limit)
                assert st["committed"] == spent and st["reserved"] == 0, (i, st, spent)
        settled(tg, "sk-k", spent, limit, scope="key:k")
        # An OpenAI stream whose agent did not ask for usage: tollgate asks
        # for it (include_usage), charges it, and drops the extra chunk. What
        # mockllm reports for it is learnt by asking mockllm directly.
        b = chat("o", 50, stream=True)
        r = call(tg, CHAT, b, dict(bearer("sk-k"), **{"x-mock-tokens": "4"}))
        assert r.status == 200 and sse_events(r.body)[-1][1] == "[DONE]", r
        assert b'"usage"' not in r.body
        direct = call(mk, CHAT, chat("o", 50, stream=True,
                                     stream_options={"include_usage": True}),
                      {"x-mock-tokens": "4"})
        spent += po.actual(*openai_usage(direct))
        settled(tg, "sk-k", spent, limit, scope="key:k")
        assert mk.stats()["requests"] == len(calls) + 2


def test_anthropic_stream_charges_input(env):
    """An Anthropic stream reports input tokens in message_start and output
    tokens in message_delta: the charge is both, priced exactly, however far
    apart they are."""
    pa = Price("a", "3.00", "15.00")
    models = {"a": model("3.00", "15.00", provider="mock-anthropic", cap=1000)}
    with Mock(env, "--tokens", "12") as mk, start(
            env, mk, models, [key("k", "sk-k", "t", limit="1.00")],
            teams={"t": {"budget": budget("10.00")}}) as tg:
        spent = 0
        for content, tokens in (("short", "3"), ("long prompt " * 400, "40")):
            b = messages("a", 100, content=content, stream=True)
            r = call(tg, MESSAGES, b, dict(bearer("sk-k"), **{"x-mock-tokens": tokens}))
            assert r.status == 200 and sse_events(r.body)[-1][0] == "message_stop", r
            inp, out = anthropic_usage(r)
            assert inp > 0 and out == int(tokens), (inp, out)
            # The stream is metered event by event (net/meter.c): message_start's
            # input count is read however long the stream that follows it.
            assert r.body.startswith(b"event: message_start"), r.body[:80]
            spent += pa.actual(inp, out)
            settled(tg, "sk-k", spent, MTOK, scope="key:k")
        assert len(r.body) - (r.body.index(b"\n\n") + 2) > 2048, "a long stream"


# ---------------------------------------------------------------- 4. load

def _load(port, jobs, results, lock):
    """One keep-alive connection running its share of the calls."""
    out = []
    try:
        c = Conn(port, 20.0)
        for secret, path, b, hdrs in jobs:
            c.send(request("POST", path, b, dict(bearer(secret), **hdrs)))
            r = c.response()
            out.append((secret, r))
        c.close()
    except Exception as e:          # noqa: B902 - reported by the test
        out.append((None, e))
    with lock:
        results.extend(out)


def test_invariant_under_parallel_load(env):
    """Two teams under load at once on two shards.

    Team "exact" (input price 0, output = max_tokens): every call's actual
    cost equals its worst-case estimate E, so no refund ever frees budget and
    count(200) x E <= limit must hold for the team and for every key.

    Team "refund" (input priced, output below max_tokens): the actual cost a
    is below E, refunds free budget, and count x E may exceed the limit;
    what holds is that at the moment the n-th call was admitted the n-1
    others held at least a each and it needed E:
        (n - 1) * a + E <= limit,  i.e.  n <= (limit - E) // a + 1.
    Σ actual <= limit holds in both.

    After the load each scope must have reserved == 0 and remaining ==
    limit - Σ actual of its 200 replies, to the micro-dollar. Then a
    sequential drain (fresh connections, so either shard) keeps calling until
    every key or the team is refused with less than E remaining (a refusal
    with E or more remaining is a lease still parked on the other shard,
    docs/budget.md, and is retried). Once drained, the bounds above are
    reached exactly: the exact team admitted limit // E calls in all, the
    refund team (limit - E) // a + 1. How many of those the parallel phase
    alone admits depends on timing (refunds, parked leases), so only its
    upper bounds are asserted.
    """
    px = Price("mx", "0", "200.00")          # 200 micro-USD per output token
    pr = Price("mr", "1.00", "200.00")
    models = {"mx": model("0", "200.00"), "mr": model("1.00", "200.00")}
    keys = [key("e1", "sk-e1", "exact", limit="1.00"),
            key("e2", "sk-e2", "exact", limit="1.00"),
            key("e3", "sk-e3", "exact", limit="1.00"),
            key("e4", "sk-e4", "exact", limit="1.00"),
            key("ex", "sk-ex", "exact"),                     # team probe
            key("r1", "sk-r1", "refund", limit="0.50"),
            key("r2", "sk-r2", "refund", limit="0.50"),
            key("r3", "sk-r3", "refund", limit="0.50"),
            key("rx", "sk-rx", "refund")]
    team_limit = {"exact": micros("3.00"), "refund": micros("1.00")}
    key_limit = {"sk-e%d" % i: MTOK for i in range(1, 5)}
    key_limit.update({"sk-r%d" % i: micros("0.50") for i in range(1, 4)})
    bx = chat("mx", 50, content="load")
    br = chat("mr", 50, content="load")
    ex_hdrs = {"x-mock-tokens": "50"}             # output == max_tokens
    r_hdrs = {"x-mock-tokens": "20"}              # output < max_tokens
    E = {"exact": px.estimate(bx, 50), "refund": pr.estimate(br, 50)}
    assert E["exact"] == 10000, E
    team_of = lambda s: "exact" if s.startswith("sk-e") else "refund"   # noqa: E731
    price_of = {"exact": px, "refund": pr}
    body_of = {"exact": (bx, ex_hdrs), "refund": (br, r_hdrs)}

    # 400 calls per team: exact: e1 x 160 (key cap 100), e2..e4 x 80 (team
    # cap 300 < 100 + 240); refund: 134/133/133 over keys capped at 122 each
    # under a team capped at 247 (see bound() below).
    jobs = []
    # A first-byte delay keeps many calls in flight at once, each holding
    # its worst case, so refusals also come from reservations, not only
    # from what is committed.
    for s, n in (("sk-e1", 160), ("sk-e2", 80), ("sk-e3", 80), ("sk-e4", 80),
                 ("sk-r1", 134), ("sk-r2", 133), ("sk-r3", 133)):
        b, h = body_of[team_of(s)]
        jobs += [(s, CHAT, b, dict(h, **{"x-mock-first-byte-delay-ms": "2"}))] * n
    # interleave so every connection mixes keys and teams
    jobs = [jobs[i] for i in sorted(range(len(jobs)), key=lambda i: (i * 7919) % len(jobs))]
    n_conns = 64
    shares = [jobs[i::n_conns] for i in range(n_conns)]

    with Mock(env, "--tokens", "16", "--threads", "2") as mk, start(
            env, mk, models, keys,
            teams={"exact": {"budget": budget("3.00")},
                   "refund": {"budget": budget("1.00")}}, workers=2) as tg:
        results, lock = [], threading.Lock()
        threads = [threading.Thread(target=_load, args=(tg.port, sh, results, lock))
                   for sh in shares]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        took = time.monotonic() - t0
        errors = [r for s, r in results if s is None]
        assert not errors, errors[:3]
        assert len(results) == len(jobs), (len(results), len(jobs))

        # Every decision has its own id, across both shards.
        ids = [r.headers["x-budget-decision-id"] for _, r in results]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        assert not dup, ("decision ids repeated", len(dup), dup[:5])
        # Every call of a team costs the same: a == E for "exact", a < E for
        # "refund" (mockllm: prompt_tokens = ceil(body bytes / 4)).
        a_of = {"exact": E["exact"], "refund": pr.actual(-(-len(br) // 4), 20)}
        assert a_of["refund"] < E["refund"], (a_of, E)

        def bound(limit, team):
            return (limit - E[team]) // a_of[team] + 1 if limit >= E[team] else 0
        assert bound(team_limit["exact"], "exact") == 300
        assert bound(MTOK, "exact") == 100
        assert (bound(team_limit["refund"], "refund"), bound(micros("0.50"), "refund")) == \
            (247, 122), (E, a_of)

        n_ok = {s: 0 for s in key_limit}
        spent = {s: 0 for s in key_limit}
        codes = {}
        for s, r in results:
            team = team_of(s)
            # Every reply, allowed or refused, reports a remaining >= 0 for
            # the tightest scope: committed + reserved never passed a limit.
            assert micros(r.headers["x-budget-remaining-usd"]) >= 0, r.headers
            if r.status == 200:
                a = price_of[team].actual(*openai_usage(r))
                assert a == a_of[team], (a, a_of)
                n_ok[s] += 1
                spent[s] += a
            else:
                j = problem(r, 402)
                assert j["code"] in ("key_ceiling_reached", "team_ceiling_reached"), j
                codes[j["code"]] = codes.get(j["code"], 0) + 1
        # e1 was offered 160 calls for a $1.00 key: refused by its key (or
        # by the team, whichever ran out first); both kinds occur.
        assert sum(codes.values()) == len(jobs) - sum(n_ok.values()), codes

        def check(phase):
            for team in ("exact", "refund"):
                ks = [s for s in key_limit if team_of(s) == team]
                n_team = sum(n_ok[s] for s in ks)
                assert n_team <= bound(team_limit[team], team), (phase, team, n_team)
                assert sum(spent[s] for s in ks) <= team_limit[team], (phase, team)
                if team == "exact":
                    assert n_team * E[team] <= team_limit[team], (phase, n_team)
                for s in ks:
                    assert n_ok[s] <= bound(key_limit[s], team), (phase, s, n_ok[s])
                    assert spent[s] <= key_limit[s], (phase, s, spent[s])
                    if team == "exact":
                        assert n_ok[s] * E[team] <= key_limit[s], (phase, s, n_ok[s])

        check("load")
        load_ok = dict(n_ok)
        # Reserved back to 0 and remaining == limit - Σ actual on every scope.
        for s in key_limit:
            settled(tg, s, spent[s], key_limit[s], scope="key:" + s[3:])
        for team, probe in (("exact", "sk-ex"), ("refund", "sk-rx")):
            ks = [s for s in key_limit if team_of(s) == team]
            settled(tg, probe, sum(spent[s] for s in ks), team_limit[team],
                    scope="team:" + team)

        # Sequential drain to the last micro-dollar.
        for team, probe in (("exact", "sk-ex"), ("refund", "sk-rx")):
            b, h = body_of[team]
            active = [s for s in key_limit if team_of(s) == team]
            team_done = False
            attempts = 0
            while active and not team_done:
                attempts += 1
                assert attempts < 1000, (team, active, n_ok)
                s = active[attempts % len(active)]
                r = call(tg, CHAT, b, dict(bearer(s), **h))
                if r.status == 200:
                    a = price_of[team].actual(*openai_usage(r))
                    assert a == a_of[team], (a, a_of)
                    n_ok[s] += 1
                    spent[s] += a
                    continue
                j = problem(r, 402)
                if j["budget"]["reserved_usd"] != "0.00":
                    continue                 # the previous call is settling
                if micros(j["budget"]["remaining_usd"]) >= E[team]:
                    continue                 # a lease parked on the other shard
                if j["code"] == "key_ceiling_reached":
                    active.remove(s)
                else:
                    assert j["code"] == "team_ceiling_reached", j
                    team_done = True
            ks = [s for s in key_limit if team_of(s) == team]
            n_team = sum(n_ok[s] for s in ks)
            # Drained: exactly what the bounds admit.
            assert team_done, (team, n_ok)
            assert n_team == bound(team_limit[team], team), (team, n_team, load_ok)
            st = settled(tg, probe, sum(spent[s] for s in ks), team_limit[team],
                         scope="team:" + team)
            assert st["remaining"] < E[team], st
            for s in ks:
                st = settled(tg, s, spent[s], key_limit[s], scope="key:" + s[3:])
                if st["remaining"] < E[team]:
                    assert n_ok[s] == bound(key_limit[s], team), (s, n_ok[s])
        check("drain")
        # The exact team is limited by its own $3.00 (300 calls), e1 by its
        # key ($1.00: 100 calls).
        assert sum(n_ok[s] for s in n_ok if team_of(s) == "exact") == 300, n_ok
        assert n_ok["sk-e1"] <= 100, n_ok
        assert took < (60 if slow_build(env) else 30), took


# ---------------------------------------------------------------- 5. failures

def test_no_leaked_reservation_after_upstream_errors(env):
    p = Price("m", "1.00", "2.00")
    dead = free_port()
    models = {"m": model("1.00", "2.00"),
              "m-dead": model("1.00", "2.00", provider="dead"),
              "m-slow": model("1.00", "2.00", provider="slow")}
    keys = [key("k", "sk-k", "t", limit="1.00")]
    limit = MTOK
    with Mock(env, "--tokens", "10") as mk:
        providers = {
            "dead": {"base_url": "http://%s:%d/v1" % (LOOPBACK, dead), "format": "openai",
                     "timeout_ms": 2000},
            "slow": {"base_url": "http://%s:%d/v1" % (LOOPBACK, mk.port), "format": "openai",
                     "timeout_ms": 300, "idle_timeout_ms": 300},
        }
        with start(env, mk, models, keys, teams={"t": {"budget": budget("10.00")}},
                   providers=providers) as tg:
            spent = 0

            def check(what):
                try:
                    settled(tg, "sk-k", spent, limit, scope="key:k")
                except AssertionError as e:
                    raise AssertionError("after %s: %s" % (what, e))

            # Complete error replies from the provider: nothing is charged.
            for hdrs, b in (({"x-mock-status": "500"}, chat("m", 100)),
                            ({"x-mock-status": "429"}, chat("m", 100, stream=True)),
                            ({"x-mock-status": "503"}, chat("m", 100, content="x" * 900))):
                r = call(tg, CHAT, b, dict(bearer("sk-k"), **hdrs))
                assert r.status == int(hdrs["x-mock-status"]), r
                assert_allow_headers(r, limit - spent - p.estimate(b, 100))
                check(hdrs)

            # Refused connection: no reply byte, 502, everything released.
            b = chat("m-dead", 100)
            r = call(tg, CHAT, b, bearer("sk-k"))
            problem(r, 502, "upstream_failed")
            assert_allow_headers(r, None)      # the decision was allow; then it failed
            check("refused")

            # Provider stalls before answering: 504 after timeout_ms, released.
            b = chat("m-slow", 100)
            r = call(tg, CHAT, b, dict(bearer("sk-k"), **{"x-mock-stall": "1"}))
            problem(r, 504, "upstream_timeout")
            assert_allow_headers(r, None)
            check("stall")

            # Reset mid-stream: the stream is metered (net/stream.c), so the agent
            # gets an error event and a clean end, and the charge is what was
            # counted before the reset (input at its bound, no usage came).
            b = chat("m", 100, stream=True)
            with tg.conn() as c:
                c.send(request("POST", CHAT, b, dict(bearer("sk-k"),
                                                     **{"x-mock-reset-after": "3"})))
                r = c.response()
                assert r.status == 200
                assert json.loads(sse_events(r.body)[-2][1])["error"]["code"] == "upstream_failed"
            spent += p.actual(len(b) + SLACK, min(text_bytes(r.body), 100))
            check("reset mid-stream")
            # A non-streamed reply cut mid-body: the whole reservation.
            b = chat("m", 100, content="non-stream")
            direct = mk.conn()
            direct.send(request("POST", CHAT, b))
            head_len = len(direct.until(b"\r\n\r\n"))
            direct.close()
            with tg.conn() as c:
                c.send(request("POST", CHAT, b, dict(
                    bearer("sk-k"), **{"x-mock-reset-after": str(head_len + 10)})))
                status, hdr = c.head()
                assert status == 200 and int(hdr["content-length"]) > 10, hdr
                got = c.rest()
                assert len(got) == 10, got
            spent += p.estimate(b, 100)
            check("reset mid-body")

            # Silence mid-stream past idle_timeout_ms: ended with an error
            # event, charged what was counted.
            b = chat("m-slow", 100, stream=True)
            with tg.conn() as c:
                c.send(request("POST", CHAT, b, dict(bearer("sk-k"),
                                                     **{"x-mock-stall-after": "2"})))
                r = c.response()
                assert r.status == 200
                assert json.loads(sse_events(r.body)[-2][1])["error"]["code"] == "upstream_timeout"
            spent += p.actual(len(b) + SLACK, min(text_bytes(r.body), 100))
            check("stall mid-stream")

            # The agent goes away mid-stream: what was generated until tollgate
            # saw it go is charged. The agent cannot know how far that was, so
            # the amount is its decision's (GET /budget/decisions), bounded.
            b = chat("m", 100, stream=True)
            c = tg.conn()
            c.send(request("POST", CHAT, b, dict(bearer("sk-k"), **{
                "x-mock-tokens": "60", "x-mock-token-delay-us": "20000"})))
            status, hdr = c.head()
            assert status == 200
            assert b'"role":"assistant"' in c.chunk()
            c.close()
            did = hdr["x-budget-decision-id"]
            rec = wait_until(lambda: decision(tg, "sk-k", did), 5.0)
            actual = micros(rec["actual_usd"])
            assert p.actual(len(b) + SLACK, 0) <= actual <= p.estimate(b, 100), rec
            spent += actual
            check("client gone")

            # And a normal call still settles exactly.
            b = chat("m", 100)
            r = call(tg, CHAT, b, bearer("sk-k"))
            assert r.status == 200, r
            assert_allow_headers(r, limit - spent - p.estimate(b, 100))
            spent += p.actual(*openai_usage(r))
            check("after")


# ---------------------------------------------------------------- 6. reload

def test_reload_keeps_spend(env):
    p = Price("m", "1.00", "2.00")
    models = {"m": model("1.00", "2.00")}
    keys = [key("k", "sk-k", "t", limit="0.10")]
    with Mock(env, "--tokens", "50") as mk, start(
            env, mk, models, keys, teams={"t": {"budget": budget("10.00")}}) as tg:
        spent = 0
        b = chat("m", 500, content="r" * 200)
        e = p.estimate(b, 500)
        with tg.conn() as c:
            for _ in range(5):
                c.send(request("POST", CHAT, b, bearer("sk-k")))
                r = c.response()
                assert r.status == 200, r
                spent += p.actual(*openai_usage(r))
        settled(tg, "sk-k", spent, micros("0.10"), scope="key:k")

        def reload_to(limit):
            cfg = json.loads(json.dumps(tg.config))
            cfg["keys"][0]["budget"]["limit"] = limit
            n = tg.log().count("handed to")
            tg.reload(cfg)
            wait_until(lambda: tg.log().count("handed to") > n, 10, what="the reload")

        # Raised: the old spend counts against the new limit, and so does a
        # stream that was reserved before the reload and settles after it.
        bs = chat("m", 100, stream=True, stream_options={"include_usage": True})
        s = tg.conn()
        s.send(request("POST", CHAT, bs, dict(bearer("sk-k"), **{
            "x-mock-tokens": "10", "x-mock-token-delay-us": "60000"})))
        status, hdr = s.head()
        assert status == 200, hdr
        assert hdr["x-budget-remaining-usd"] == usd(micros("0.10") - spent - p.estimate(bs, 100))
        reload_to("0.25")
        st = state(tg, "sk-k")
        assert st["limit"] == micros("0.25") and st["committed"] == spent, st
        assert st["reserved"] == p.estimate(bs, 100), st     # the stream, still running
        chunks = []
        while True:
            ch = s.chunk()
            if not ch:
                break
            chunks.append(ch)
        s.close()
        r = Response(200, hdr, b"".join(chunks), chunks)
        spent += p.actual(*openai_usage(r))
        settled(tg, "sk-k", spent, micros("0.25"), scope="key:k")
        r = call(tg, CHAT, b, bearer("sk-k"))
        assert r.status == 200, r
        assert_allow_headers(r, micros("0.25") - spent - e)
        spent += p.actual(*openai_usage(r))
        settled(tg, "sk-k", spent, micros("0.25"), scope="key:k")
        # Lowered below what was spent: remaining is negative, every call is
        # refused. Calls on fresh connections first leave each shard holding
        # a lease taken under the $0.25 limit (a refusal gives a shard's
        # lease back, so no probe runs between them and the checks below):
        # a lease must not outlive a lower limit.
        b1 = chat("m", 1, content="")
        for _ in range(8):
            r = call(tg, CHAT, b1, bearer("sk-k"))
            assert r.status == 200, r
            spent += p.actual(*openai_usage(r))
        time.sleep(0.2)                 # the last replies settle (no probe: see above)
        low = spent - 1
        reload_to(usd(low))
        before = mk.stats()["requests"]
        for _ in range(8):
            r = call(tg, CHAT, b1, bearer("sk-k"))
            j = problem(r, 402, "key_ceiling_reached")
            assert j["budget"]["remaining_usd"] == "-0.000001", j
        assert mk.stats()["requests"] == before
        st = settled(tg, "sk-k", spent, low, scope="key:k")
        assert st["remaining"] == -1 and st["header_remaining"] == -1, st
        # A reload that fails keeps both the old config and the spend.
        n = tg.log().count("keeping the running configuration")
        with open(tg.config_path, "w") as f:
            f.write("keys: [\n")
        tg.signal(signal.SIGHUP)
        wait_until(lambda: tg.log().count("keeping the running configuration") > n, 10,
                   what="the failed reload")
        settled(tg, "sk-k", spent, low, scope="key:k")


# ---------------------------------------------------------------- 7. -t

def test_config_check_budget_modes_and_windows(env):
    base = make_config(free_port(), free_port(), models={"m": model("1.00", "2.00")})
    good = dict(base, teams={"t": {"budget": budget("1.00")}},
                keys=[key("k", "sk", "t", limit="0.50")])
    tmp = tempfile.mkdtemp(prefix="e2e-budget-")
    try:
        path = os.path.join(tmp, "good.yaml")
        with open(path, "w") as f:
            f.write(to_yaml(good) + "\n")
        rc, out = run_tollgate_check(env, path)
        assert rc == 0, out

        def bad(cfg, marker, message):
            text = to_yaml(cfg) + "\n"
            lines = text.splitlines()
            want = [i + 1 for i, ln in enumerate(lines) if marker in ln]
            assert len(want) == 1, (marker, text)
            p = os.path.join(tmp, "bad.yaml")
            with open(p, "w") as f:
                f.write(text)
            rc, out = run_tollgate_check(env, p)
            assert rc == 1, (rc, out)
            # the line is the budget's own ("budget:" or the key's "mode:")
            pat = r"%s:(\d+): .*%s" % (re.escape(p), re.escape(message))
            m = re.search(pat, out)
            assert m, (pat, out)
            return int(m.group(1)), want[0], lines

        # Every window and mode of SPEC §2 is accepted, on a team and a key.
        for where in ("team", "key"):
            for field, value in (("window", "day"), ("mode", "soft_gate"),
                                 ("window", "month"), ("mode", "advisory_estimate"),
                                 ("window", "run"), ("mode", "actuals_only")):
                cfg = json.loads(json.dumps(good))
                target = cfg["teams"]["t"] if where == "team" else cfg["keys"][0]
                target["budget"][field] = value
                p = os.path.join(tmp, "ok.yaml")
                with open(p, "w") as f:
                    f.write(to_yaml(cfg) + "\n")
                rc, out = run_tollgate_check(env, p)
                assert rc == 0, (where, field, value, out)
        # A margin on a budget that has none is refused at the budget's line.
        cfg = json.loads(json.dumps(good))
        cfg["teams"]["t"]["budget"]["soft_margin"] = "0.25"
        got, line, lines = bad(cfg, "soft_margin", "soft_margin applies to mode: soft_gate only")
        assert lines[got - 1].strip().startswith("budget:") and got < line, (got, lines)
        # A key-level mode that is not a mode, at its own line.
        cfg = json.loads(json.dumps(good))
        cfg["keys"][0]["mode"] = "lenient"
        got, line, _ = bad(cfg, "lenient", "'lenient' is not one of")
        assert got == line, (got, line)
        # A window that is not a window at all.
        cfg = json.loads(json.dumps(good))
        cfg["teams"]["t"]["budget"]["window"] = "fortnight"
        got, line, _ = bad(cfg, "fortnight", "'fortnight' is not one of")
        assert got == line, (got, line)
    finally:
        for f in os.listdir(tmp):
            os.unlink(os.path.join(tmp, f))
        os.rmdir(tmp)



def test_budget_state_endpoint(env):
    """GET /v1/budget lists the caller's budgeted scopes with exact figures,
    the named run first when it is the caller's; 401 without a key."""
    models = {"o": model("1.00", "2.00", cap=1000)}
    keys = [key("k", "sk-state", "t", limit="1.00"), key("k2", "sk-other", "t")]
    with Mock(env) as mk, start(env, mk, models, keys, teams={"t": {"parent": "o", "budget": budget("3.00")}},
                                orgs={"o": {"budget": budget("10.00")}}) as tg:
        body = chat("o", 4)
        r = tg.call(CHAT, body, dict(bearer("sk-state"), **{"X-Run-Id": "state-run",
                                                            "x-mock-tokens": "4"}))
        assert r.status == 200, r
        u_in, u_out = openai_usage(r)
        r = tg.call("/v1/budget", b"", dict(bearer("sk-state"), **{"X-Run-Id": "state-run"}),
                    method="GET")
        assert r.status == 200, r
        st = json.loads(r.body)
        scopes = {x["scope"]: x for x in st["scopes"]}
        assert list(scopes) == ["run:state-run", "key:k", "team:t", "org:o"], scopes
        # actual = ceil((in*1 + out*2) micro-dollars per token / 1)  (prices per Mtok)
        actual = -(-(u_in * micros("1.00") + u_out * micros("2.00")) // MTOK)
        for name, limit in (("key:k", "1.00"), ("team:t", "3.00"), ("org:o", "10.00")):
            sc = scopes[name]
            assert micros(sc["limit_usd"]) == micros(limit), sc
            assert micros(sc["committed_usd"]) == actual, (sc, actual)
            assert micros(sc["reserved_usd"]) == 0, sc
            assert micros(sc["remaining_usd"]) == micros(limit) - actual, sc
        assert micros(scopes["run:state-run"]["committed_usd"]) == actual
        # no key: 401; another key does not see this run
        r = tg.call("/v1/budget", b"", {}, method="GET")
        problem(r, 401, "invalid_key")
        r = tg.call("/v1/budget", b"", dict(bearer("sk-other"), **{"X-Run-Id": "state-run"}),
                    method="GET")
        assert [x["scope"] for x in json.loads(r.body)["scopes"]] == ["team:t", "org:o"], r.body
        r = tg.call("/v1/budget", b"{}", bearer("sk-state"))
        problem(r, 405)
