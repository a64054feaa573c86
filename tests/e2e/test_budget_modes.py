"""End-to-end: budget modes and windows (SPEC §2, §4; net/decide.c, core/budget.c).

The conventions are test_budget.py's, whose helpers are imported: one model
"m" priced $1 / $2 per Mtok, i.e. 1 micro-USD per input token and 2 per
output token, so that with test_budget's exact integer arithmetic

    estimate = (body bytes + 64) * 1 + max_tokens * 2     (micro-USD)
    actual   = ceil((prompt_tokens * 1 + completion_tokens * 2) / 1)

where mockllm's usage is parsed from every reply, never assumed. sized()
builds a request whose estimate is exactly a given number of micro-dollars,
so each boundary is tested on both sides of the micro-dollar that decides it.

Budget state is read from GET /v1/budget (a probe would be *forwarded* by an
advisory or actuals-only scope) once the scope is quiet: nothing reserved,
the same figures twice in a row (settled_scopes()).

Exactness: calls on one keep-alive connection run strictly one after the
other (the next request is read once the previous exchange has settled), so
X-Budget-Remaining-USD is exact there. Soft-gate and advisory arithmetic is
only exact where a single shard holds the scope, so those tests run one
worker; the month roll-over and the quiet-shard test run two (which shard
served a call shows in the random per-shard prefix of an issued run id).

Windows follow the wall clock plus the offset in TOLLGATE_TEST_CLOCK_FILE
(re-read every 100 ms). Each window test first moves that clock to a safe
instant (hh:30, the 10th of next month, or half an hour from midnight) so
that real time cannot cross a boundary during the test, then steps it over
a boundary and polls until a refused call fits again. Where a window must
*not* roll, a scope with a shorter window that does roll at the same step
shows that the shards have read the new clock (one check, "28 minutes
later is the same hour", has no shorter window and waits 1.5 s instead).

Tests: soft_gate edges (under and past the limit); advisory_estimate past
the limit; actuals_only on team and key scopes; a key's `mode` on its runs;
hour roll-over; calendar edges of day, week and month windows; `window:
run` caps, and a hard_gate cap under an advisory key; month roll-over on
two shards; a quiet shard's roll-over.
"""

import calendar
import json
import os
import tempfile
import time

from harness import (CHAT, Conn, Mock, Tollgate, call, problem, prompt_tokens, request,
                     slow_build, wait_until, principals)
from test_budget import (DECISION_ID, RESERVATION_ID, SLACK, Price, bearer, chat, key,
                         micros, model, openai_usage, usd)

P = Price("m", "1.00", "2.00")
MODELS = {"m": model("1.00", "2.00")}
HOUR, DAY = 3600, 86400


# ---------------------------------------------------------------- config

def bud(limit, window="total", mode="hard_gate", soft_margin=None):
    b = {"limit": limit, "window": window, "mode": mode}
    if soft_margin is not None:
        b["soft_margin"] = soft_margin
    return b


def launch(env, mk, keys, teams, orgs=None, users=None, workers=1, clock=None):
    """tollgate with model "m", these principals and keys; with `clock` (a
    Clock), its file is TOLLGATE_TEST_CLOCK_FILE."""
    extra = principals(keys, teams, orgs, users)
    env_vars = {"TOLLGATE_TEST_CLOCK_FILE": clock.path} if clock else None
    tg = Tollgate(env, mk, workers=workers, models=MODELS, extra=extra, env_vars=env_vars)
    tg.patience = 3 if slow_build(env) else 1     # timeouts stretch on sanitizer builds
    if clock:       # logged once its listeners exist: maybe just after they accept
        wait_until(lambda: "TOLLGATE_TEST_CLOCK_FILE is set" in tg.log(), 5 * tg.patience,
                   what="tollgate to take TOLLGATE_TEST_CLOCK_FILE")
    return tg


class Clock:
    """The file of TOLLGATE_TEST_CLOCK_FILE: seconds added to the wall clock
    that budget windows follow. Written atomically (never read half-way)."""

    def __init__(self, offset):
        fd, self.path = tempfile.mkstemp(prefix="e2e-clock-")
        os.close(fd)
        self.set(offset)

    def set(self, offset):
        self.offset = offset
        with open(self.path + ".tmp", "w") as f:
            f.write("%d\n" % offset)
        os.replace(self.path + ".tmp", self.path)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        os.unlink(self.path)
        return False


def mid_hour_offset():
    """An offset that puts the shifted clock at hh:30:00 now: 30 minutes from
    either hour boundary."""
    return (1800 - int(time.time()) % HOUR) % HOUR


def mid_month_offset():
    """An offset (>= 0) that puts the shifted clock at 12:00 UTC on the 10th
    of next month."""
    now = int(time.time())
    t = time.gmtime(now)
    y, m = (t.tm_year + 1, 1) if t.tm_mon == 12 else (t.tm_year, t.tm_mon + 1)
    return calendar.timegm((y, m, 10, 12, 0, 0)) - now


# ---------------------------------------------------------------- requests

def sized(target, content="x"):
    """A chat body for "m" whose estimate is exactly `target` micro-USD:
    max_tokens (2 micro-USD each) carries the bulk, a byte of padding the
    parity."""
    for pad in range(2):
        text = content + "z" * pad
        for digits in range(1, 10):
            b = chat("m", 10 ** (digits - 1), content=text)   # max_tokens of that width
            twice = target - (len(b) + SLACK)
            if twice >= 2 and twice % 2 == 0 and len(str(twice // 2)) == digits:
                b = chat("m", twice // 2, content=text)
                assert P.estimate(b, twice // 2) == target, (b, target)
                return b
    raise AssertionError("no body has an estimate of exactly %d" % target)


def estimate(b):
    """The worst case of chat body b for "m" (its max_tokens is under the
    model's cap)."""
    return P.estimate(b, json.loads(b)["max_tokens"])


def ask(c, secret, b, headers=None):
    """One call on keep-alive connection c."""
    c.send(request("POST", CHAT, b, dict(bearer(secret), **(headers or {}))))
    return c.response()


def charge(r):
    """What tollgate must commit for reply r: its usage at m's prices."""
    assert r.status == 200, r
    return P.actual(*openai_usage(r))


def check_headers(r, decision, mode, remaining=None, blocking=None):
    """The budget headers every agent response carries (SPEC §3)."""
    h = r.headers
    assert h.get("x-budget-decision") == decision, (decision, r)
    assert DECISION_ID.match(h.get("x-budget-decision-id", "")), h
    assert h.get("x-budget-enforcement-mode") == mode, (mode, h)
    assert h.get("x-budget-price-table-version") == "e2e-test", h
    micros(h.get("x-budget-remaining-usd", "missing"))
    if remaining is not None:
        assert h["x-budget-remaining-usd"] == usd(remaining), (usd(remaining), h)
    if decision == "block":
        assert "x-budget-reservation-id" not in h, h
    else:
        assert RESERVATION_ID.match(h.get("x-budget-reservation-id", "")), h
    if blocking is None:
        assert "x-budget-blocking-scope" not in h, h
    else:
        assert h.get("x-budget-blocking-scope") == blocking, (blocking, h)


def refused(r, code, scope, mode):
    """A 402 naming `scope`; returns its budget object, money in micro-USD."""
    j = problem(r, 402, code)
    check_headers(r, "block", mode, blocking=scope)
    b = j["budget"]
    assert b["scope"] == scope, j
    return {k: (micros(v) if k.endswith("_usd") else v) for k, v in b.items()}


def scopes(tg, secret, run_id=None):
    """GET /v1/budget: scope name -> its entry, money in micro-USD (and the
    strings under "raw")."""
    h = bearer(secret)
    if run_id:
        h["X-Run-Id"] = run_id
    r = call(tg, "/v1/budget", b"", h, method="GET")
    assert r.status == 200, r
    out = {}
    for s in r.json()["scopes"]:
        e = {k: (micros(v) if k.endswith("_usd") else v) for k, v in s.items()}
        e["raw"] = s
        out[s["scope"]] = e
    return out


def settled_scopes(tg, secret, run_id=None, timeout=3.0):
    """scopes() once nothing is reserved and two reads agree: the last
    exchange settles just after its reply's last byte, and with several
    shards the totals are per-shard counters read one by one."""
    last = [None]

    def quiet():
        s = scopes(tg, secret, run_id)
        prev, last[0] = last[0], s
        return s if s == prev and all(x["reserved_usd"] == 0 for x in s.values()) else None
    return wait_until(quiet, timeout * tg.patience, step=0.05,
                      what="reservations to settle")


def expect_scope(st, name, window, mode, limit, committed):
    s = st[name]
    assert (s["window"], s["mode"]) == (window, mode), s["raw"]
    assert s["limit_usd"] == limit, (s["raw"], usd(limit))
    assert s["committed_usd"] == committed, (s["raw"], usd(committed))
    assert s["reserved_usd"] == 0 and s["raw"]["reserved_usd"] == "0.00", s["raw"]
    assert s["remaining_usd"] == limit - committed, s["raw"]
    assert s["raw"]["remaining_usd"] == usd(limit - committed), s["raw"]
    return s


def forwarded(mk):
    """How many requests reached mockllm."""
    return mk.stats()["requests"]


# ---------------------------------------------------------------- 1. soft_gate

def test_soft_gate_boundaries(env):
    """Team soft_gate, limit L, margin M; with R = limit - committed: an
    estimate up to R is `allow`; up to R + M it is forwarded as
    `advisory_warn` naming the team; R + M + 1 is 402 team_ceiling_reached.
    Checked under the limit, then again once committed has passed it (R < 0)."""
    L, M = micros("0.01"), micros("0.003")
    keys = [key("k", "sk-soft", "t")]
    with Mock(env, "--tokens", "5") as mk, launch(
            env, mk, keys, teams={"t": {"budget": bud("0.01", mode="soft_gate",
                                                       soft_margin="0.003")}}) as tg:
        n0, paid = forwarded(mk), []      # paid: the charge of every forwarded call
        c = tg.conn()

        def left():
            return L - sum(paid)

        def boundaries(tag):
            """R + 1 (when R + 1 is a possible estimate) and R + M warn;
            R + M + 1 is refused, and changes nothing."""
            for extra in ((1, M) if left() > 200 else (M,)):
                r = ask(c, "sk-soft", sized(left() + extra, tag))
                check_headers(r, "advisory_warn", "soft_gate", remaining=-extra,
                              blocking="team:t")
                paid.append(charge(r))
            R = left()
            r = ask(c, "sk-soft", sized(R + M + 1, tag))
            got = refused(r, "team_ceiling_reached", "team:t", "soft_gate")
            assert (got["limit_usd"], got["committed_usd"], got["reserved_usd"]) == \
                (L, sum(paid), 0), (got, sum(paid))
            assert got["remaining_usd"] == R and got["estimate_usd"] == R + M + 1, got
            assert r.headers["x-budget-remaining-usd"] == usd(R), r.headers
            assert forwarded(mk) == n0 + len(paid), "a refused call was forwarded"
            # The refusal held nothing back: the margin's edge still fits.
            r = ask(c, "sk-soft", sized(R + M, tag))
            check_headers(r, "advisory_warn", "soft_gate", remaining=-M, blocking="team:t")
            paid.append(charge(r))

        try:
            # Exactly the whole limit: a plain allow; the team is then full.
            r = ask(c, "sk-soft", sized(L))
            check_headers(r, "allow", "soft_gate", remaining=0)
            paid.append(charge(r))
            # Exactly what is left after some spend: still a plain allow.
            r = ask(c, "sk-soft", sized(left(), "again"))
            check_headers(r, "allow", "soft_gate", remaining=0)
            paid.append(charge(r))
            boundaries("under")
            assert left() > 0, paid
            # A warned call whose reply costs more than what was left takes
            # committed past the limit, to about L + M/2: R is then negative.
            b = sized(left() + M, "over")
            tokens = (left() + M // 2 - prompt_tokens(b)) // 2
            r = ask(c, "sk-soft", b, {"x-mock-tokens": str(tokens)})
            check_headers(r, "advisory_warn", "soft_gate", remaining=-M, blocking="team:t")
            paid.append(charge(r))
            assert -M // 2 - 8 < left() < 0, paid
            # ... and the same edges hold around a negative R.
            boundaries("past")
        finally:
            c.close()
        assert forwarded(mk) == n0 + len(paid) == n0 + 8
        st = settled_scopes(tg, "sk-soft")
        assert list(st) == ["team:t"], list(st)
        s = expect_scope(st, "team:t", "total", "soft_gate", L, sum(paid))
        assert s["raw"]["remaining_usd"].startswith("-"), s["raw"]


# ---------------------------------------------------------------- 2. advisory

def test_advisory_estimate_never_blocks(env):
    """Team advisory_estimate: every call is forwarded; those whose estimate
    exceeds what is left say advisory_warn; committed spend passes the limit
    and remaining goes negative, to the micro-dollar."""
    L = micros("0.001")
    keys = [key("k", "sk-adv", "t")]
    with Mock(env, "--tokens", "200") as mk, launch(
            env, mk, keys, teams={"t": {"budget": bud("0.001", mode="advisory_estimate")}}) as tg:
        n0, spent, warned = forwarded(mk), 0, 0
        calls = [chat("m", 300, content="advisory %d" % i) for i in range(5)]
        calls.append(chat("m", 100000000, content="a $200 worst case"))
        with tg.conn() as c:
            for b in calls:
                e = estimate(b)
                r = ask(c, "sk-adv", b)
                if e <= L - spent:
                    check_headers(r, "allow", "advisory_estimate", remaining=L - spent - e)
                else:
                    check_headers(r, "advisory_warn", "advisory_estimate",
                                  remaining=L - spent - e, blocking="team:t")
                    warned += 1
                spent += charge(r)
        assert forwarded(mk) == n0 + len(calls)
        assert warned >= len(calls) - 2 and spent > L, (warned, spent)
        st = settled_scopes(tg, "sk-adv")
        s = expect_scope(st, "team:t", "total", "advisory_estimate", L, spent)
        assert s["raw"]["remaining_usd"].startswith("-"), s["raw"]


# ---------------------------------------------------------------- 3. actuals_only

def test_actuals_only_gates_on_committed(env):
    """actuals_only ignores estimates: a call whose worst case is far above
    the limit is forwarded while committed < limit; once committed >= limit
    every call is 402 <scope>_ceiling_reached (team and key scopes).

    A call whose estimate fits what is left is a plain allow; one whose
    estimate does not is forwarded with advisory_warn naming the scope (the
    reservation went past the limit, as for advisory_estimate; SPEC §3 lists
    advisory_warn and is silent on actuals_only, this pins net/decide.c)."""
    L = micros("0.002")
    big = chat("m", 100000, content="actuals")       # a $0.20 worst case
    assert estimate(big) > 50 * L
    tokens = {"x-mock-tokens": "100"}
    a = P.actual(prompt_tokens(big), 100)           # what each such call costs
    keys = [key("kt", "sk-team", "t"),
            key("kx", "sk-x", "free"), key("ky", "sk-y", "free")]
    keys[1]["budget"] = bud(usd(2 * a), mode="actuals_only")        # reached exactly
    keys[2]["budget"] = bud(usd(2 * a + 1), mode="actuals_only")    # one micro-dollar short
    with Mock(env, "--tokens", "5") as mk, launch(
            env, mk, keys, teams={"t": {"budget": bud("0.002", mode="actuals_only")},
                                  "free": {}}) as tg:
        n0, spent, n = forwarded(mk), 0, 0
        with tg.conn() as c:
            small = chat("m", 10, content="fits")
            r = ask(c, "sk-team", small)
            check_headers(r, "allow", "actuals_only", remaining=L - estimate(small))
            spent, n = charge(r), 1
            while spent < L:
                r = ask(c, "sk-team", big, tokens)
                assert r.status == 200, (spent, r)
                check_headers(r, "advisory_warn", "actuals_only",
                              remaining=L - spent - estimate(big), blocking="team:t")
                assert charge(r) == a, (openai_usage(r), a)
                spent += a
                n += 1
                assert n < 20
            for b in (big, small):       # any estimate at all
                r = ask(c, "sk-team", b)
                got = refused(r, "team_ceiling_reached", "team:t", "actuals_only")
                assert (got["limit_usd"], got["committed_usd"], got["reserved_usd"]) == \
                    (L, spent, 0), got
                assert got["remaining_usd"] == L - spent <= 0, got
                assert got["estimate_usd"] == estimate(b), got
        assert forwarded(mk) == n0 + n
        expect_scope(settled_scopes(tg, "sk-team"), "team:t", "total", "actuals_only", L, spent)

        # Keys: limit 2a is reached by two calls, 2a + 1 needs a third.
        for kid, secret, limit, allowed in (("key:kx", "sk-x", 2 * a, 2),
                                            ("key:ky", "sk-y", 2 * a + 1, 3)):
            n1 = forwarded(mk)
            with tg.conn() as c:
                for i in range(allowed):
                    r = ask(c, secret, big, tokens)
                    assert r.status == 200, (secret, i, r)
                    assert charge(r) == a
                r = ask(c, secret, big, tokens)
                got = refused(r, "key_ceiling_reached", kid, "actuals_only")
                assert got["committed_usd"] == allowed * a, (got, allowed * a)
                assert got["remaining_usd"] == limit - allowed * a, got
            assert forwarded(mk) == n1 + allowed
            expect_scope(settled_scopes(tg, secret), kid, "total", "actuals_only", limit,
                         allowed * a)


# ---------------------------------------------------------------- 4. key mode

def test_key_mode_sets_run_mode(env):
    """A key's `mode: advisory_estimate` makes its runs advisory: a call over
    its X-Budget-Run-Limit is forwarded with advisory_warn naming the run.
    The same call on a hard_gate key is refused; the key's mode does not
    loosen its team's hard_gate budget; and `mode: actuals_only` makes a run
    refuse only once its committed spend reaches its limit."""
    keys = [key("ka", "sk-adv", "t"), key("kh", "sk-hard", "t"),
            key("kt", "sk-tiny", "tiny"), key("kz", "sk-act", "t")]
    keys[0]["mode"] = "advisory_estimate"
    keys[2]["mode"] = "advisory_estimate"
    keys[3]["mode"] = "actuals_only"
    R = micros("0.0001")
    limit_hdr = {"X-Budget-Run-Limit": "0.0001"}
    with Mock(env, "--tokens", "30") as mk, launch(
            env, mk, keys, teams={"t": {"budget": bud("10.00")},
                                  "tiny": {"budget": bud("0.0005")}}) as tg:
        b = chat("m", 300, content="run mode")
        e = estimate(b)
        assert micros("0.0005") < e and R < e
        n0 = forwarded(mk)
        # An issued run.
        r = call(tg, CHAT, b, dict(bearer("sk-adv"), **limit_hdr))
        check_headers(r, "advisory_warn", "advisory_estimate", remaining=R - e,
                      blocking="run:" + r.headers["x-run-id"])
        team_spent = charge(r)
        # A named run keeps going past its limit, call after call.
        spent = 0
        with tg.conn() as c:
            for _ in range(2):
                r = ask(c, "sk-adv", b, dict(limit_hdr, **{"X-Run-Id": "adv-run"}))
                check_headers(r, "advisory_warn", "advisory_estimate",
                              remaining=R - spent - e, blocking="run:adv-run")
                spent += charge(r)
        team_spent += spent
        assert forwarded(mk) == n0 + 3
        st = settled_scopes(tg, "sk-adv", "adv-run")
        assert list(st) == ["run:adv-run", "team:t"], list(st)
        expect_scope(st, "run:adv-run", "run", "advisory_estimate", R, spent)
        expect_scope(st, "team:t", "total", "hard_gate", micros("10.00"), team_spent)
        # The same call on a hard_gate key: refused by its run.
        r = call(tg, CHAT, b, dict(bearer("sk-hard"), **limit_hdr))
        got = refused(r, "run_ceiling_reached", "run:" + r.headers["x-run-id"], "hard_gate")
        assert got["limit_usd"] == R and got["estimate_usd"] == e, got
        # An advisory key under a hard_gate team that cannot cover the call.
        r = call(tg, CHAT, b, bearer("sk-tiny"))
        got = refused(r, "team_ceiling_reached", "team:tiny", "hard_gate")
        assert got["limit_usd"] == micros("0.0005"), got
        assert forwarded(mk) == n0 + 3
        # An actuals_only key: its run takes the call over its limit once,
        # then (committed >= limit) refuses any call, naming the run.
        h = dict(limit_hdr, **{"X-Run-Id": "act-run"})
        with tg.conn() as c:
            r = ask(c, "sk-act", b, dict(h, **{"x-mock-tokens": "100"}))
            check_headers(r, "advisory_warn", "actuals_only", remaining=R - e,
                          blocking="run:act-run")
            spent = charge(r)
            assert spent >= R, spent
            r = ask(c, "sk-act", chat("m", 1, content=""), h)
            got = refused(r, "run_ceiling_reached", "run:act-run", "actuals_only")
            assert (got["limit_usd"], got["committed_usd"]) == (R, spent), got
        assert forwarded(mk) == n0 + 4
        expect_scope(settled_scopes(tg, "sk-act", "act-run"), "run:act-run", "run",
                     "actuals_only", R, spent)


# ---------------------------------------------------------------- 5. hour window

def _spend_until_refused(tg, secret, b, headers, scope, limit, spent=0, conn=None,
                         timeout=10.0):
    """Calls b (on `conn`, else on fresh connections: any shard) until
    `scope` refuses it with nothing reserved and less than its estimate
    left; returns (spent, calls). Other refusals are retried until
    `timeout`: with reserved > 0, the previous call (maybe on the other
    shard) had not settled yet; with the estimate or more left, budget is
    still leased to, or not yet rolled over by, another shard (its
    once-a-second tidy hands it back)."""
    e, n = estimate(b), 0
    deadline = time.monotonic() + timeout * tg.patience
    while True:
        if conn is not None:
            r = ask(conn, secret, b, headers)
        else:
            r = call(tg, CHAT, b, dict(bearer(secret), **headers))
        if r.status == 200:
            spent += charge(r)
            n += 1
            assert n < 200
            continue
        got = refused(r, scope.split(":")[0] + "_ceiling_reached", scope, "hard_gate")
        assert got["limit_usd"] == limit, got
        if got["reserved_usd"] == 0 and got["remaining_usd"] < e:
            return spent, n
        assert time.monotonic() < deadline, ("refused with the estimate left", got, e)
        time.sleep(0.05)


def _spend_on_each_shard(tg, secret, b, headers, workers=2):
    """Calls b on fresh connections until every shard has served one (an
    issued run id starts with its shard's random prefix); returns the spend."""
    shards, spent = set(), 0
    for _ in range(64):
        r = call(tg, CHAT, b, dict(bearer(secret), **headers))
        spent += charge(r)
        shards.add(r.headers["x-run-id"][:12])
        if len(shards) == workers:
            return spent
    raise AssertionError("64 connections reached only shards %s" % shards)


def _fits_by(deadline, c, secret, b, headers, scope="team:t"):
    """Calls b on connection c until it is allowed, by `deadline`. Until
    every shard has rolled into the new window (a quiet one does within a
    second) the pool still holds its old spend ("until every shard has
    rolled the pool only looks fuller", core/budget.c): a refusal although
    the estimate is left (counting what a previous call, maybe not yet
    settled, reserved) is that, and is retried."""
    while True:
        r = ask(c, secret, b, headers)
        if r.status == 200:
            return r
        got = refused(r, scope.split(":")[0] + "_ceiling_reached", scope, "hard_gate")
        assert got["remaining_usd"] + got["reserved_usd"] >= estimate(b), got
        assert time.monotonic() < deadline, ("still refused in the new window", got)
        time.sleep(0.05)


def _wait_fits(tg, secret, b, headers, timeout):
    """Polls with call b until it is allowed (the window rolled); returns
    the reply."""
    def attempt():
        r = call(tg, CHAT, b, dict(bearer(secret), **headers))
        if r.status == 402:
            return None
        assert r.status == 200, r
        return r
    return wait_until(attempt, timeout * tg.patience, step=0.05,
                      what="the call to fit in the new window")


def test_hour_window_rolls_over(env):
    """Team budget `window: hour` under an org `window: total`: spend until
    the team refuses; step the clock one hour; the same call fits again and
    the team counts only the new calls, while the org counts everything."""
    L, ORG = micros("0.003"), micros("10.00")
    keys = [key("k", "sk-hour", "t")]
    hdrs = {"x-mock-tokens": "200"}
    with Clock(mid_hour_offset()) as clock, Mock(env, "--tokens", "5") as mk, launch(
            env, mk, keys, teams={"t": {"parent": "o", "budget": bud("0.003", window="hour")}},
            orgs={"o": {"budget": bud("10.00")}}, clock=clock) as tg:
        b = chat("m", 300, content="hourly")
        e = estimate(b)
        old, n = _spend_until_refused(tg, "sk-hour", b, hdrs, "team:t", L)
        assert n >= 2 and L - old < e, (n, old)
        st = settled_scopes(tg, "sk-hour")
        assert list(st) == ["team:t", "org:o"], list(st)
        expect_scope(st, "team:t", "hour", "hard_gate", L, old)
        expect_scope(st, "org:o", "total", "hard_gate", ORG, old)
        # 28 minutes later (hh:58) is the same hour: nothing rolls. (Nothing
        # to poll for here; the shards take a new offset within a second.)
        base = clock.offset
        clock.set(base + 28 * 60)
        time.sleep(1.5)
        r = call(tg, CHAT, b, dict(bearer("sk-hour"), **hdrs))
        got = refused(r, "team_ceiling_reached", "team:t", "hard_gate")
        assert got["committed_usd"] == old, (got, old)
        # The next hour (hh+1:30): the team starts from zero.
        clock.set(base + HOUR)
        r = _wait_fits(tg, "sk-hour", b, hdrs, 3.0)
        check_headers(r, "allow", "hard_gate", remaining=L - e)
        new = charge(r)
        with tg.conn() as c:
            r = ask(c, "sk-hour", b, hdrs)
            check_headers(r, "allow", "hard_gate", remaining=L - new - e)
            new += charge(r)
        st = settled_scopes(tg, "sk-hour")
        expect_scope(st, "team:t", "hour", "hard_gate", L, new)
        expect_scope(st, "org:o", "total", "hard_gate", ORG, old + new)
        # And the new hour has the whole limit again, no more.
        new, _ = _spend_until_refused(tg, "sk-hour", b, hdrs, "team:t", L, spent=new)
        st = settled_scopes(tg, "sk-hour")
        expect_scope(st, "team:t", "hour", "hard_gate", L, new)
        expect_scope(st, "org:o", "total", "hard_gate", ORG, old + new)


# ---------------------------------------------------------------- 6. calendar

def test_calendar_boundaries(env):
    """Day, week (from Monday) and month windows roll on UTC calendar
    boundaries, leap day and new year included. Three keys, one window
    each, are spent until refused; then the clock is set to a sequence of
    instants half an hour past or before midnight. The day key rolls at
    every step, so once it fits again the shard has read the new clock, and
    the week and month keys must then fit again or still be refused with
    the same committed spend, exactly as the calendar says."""
    L = micros("0.0015")
    windows = ("day", "week", "month")
    keys = [key("k" + w, "sk-" + w, "t") for w in windows]
    for k, w in zip(keys, windows):
        k["budget"] = bud("0.0015", window=w)
    steps = [                       # (UTC y, m, d, H, M), the windows that roll
        ((2028, 2, 1, 0, 30), {"day", "month"}),            # Mon 31 Jan -> Tue
        ((2028, 2, 27, 23, 30), {"day", "week"}),           # Sunday
        ((2028, 2, 28, 0, 30), {"day", "week"}),            # Sun -> Mon
        ((2028, 2, 29, 0, 30), {"day"}),                    # leap day
        ((2028, 3, 1, 0, 30), {"day", "month"}),
        ((2028, 12, 31, 23, 30), {"day", "week", "month"}),
        ((2029, 1, 1, 0, 30), {"day", "week", "month"}),    # Sun -> Mon, new year
    ]
    for when, _ in steps:
        assert calendar.timegm(when + (0,)) > time.time() + DAY

    def at(when):
        return calendar.timegm(when + (0,)) - int(time.time())

    hdrs = {"x-mock-tokens": "200"}
    b = chat("m", 300, content="calendar")
    with Clock(at((2028, 1, 31, 23, 30))) as clock, Mock(env, "--tokens", "5") as mk, launch(
            env, mk, keys, teams={"t": {}}, clock=clock) as tg:
        spent = {}

        def drain(w):
            spent[w], _ = _spend_until_refused(tg, "sk-" + w, b, hdrs, "key:k" + w, L,
                                               spent=spent.get(w, 0))

        def check_state(when):
            for w in windows:
                st = settled_scopes(tg, "sk-" + w)
                assert list(st) == ["key:k" + w], list(st)
                s = st["key:k" + w]
                assert (s["window"], s["committed_usd"]) == (w, spent[w]), (when, s["raw"])

        for w in windows:
            drain(w)
        check_state("start")
        for when, rolls in steps:
            clock.set(at(when))
            spent["day"] = charge(_wait_fits(tg, "sk-day", b, hdrs, 3.0))
            for w in ("week", "month"):
                r = call(tg, CHAT, b, dict(bearer("sk-" + w), **hdrs))
                if w in rolls:
                    assert r.status == 200, (when, w, "should have rolled", r)
                    spent[w] = charge(r)
                else:
                    assert r.status == 402, (when, w, "should not have rolled", r)
                    got = refused(r, "key_ceiling_reached", "key:k" + w, "hard_gate")
                    assert got["committed_usd"] == spent[w], (when, w, got, spent[w])
            check_state(when)
            for w in windows:
                drain(w)


# ---------------------------------------------------------------- 7. window: run

def test_run_window_caps_runs(env):
    """`window: run` on a key, user, team or org keeps no shared counter; it
    caps the limit of every run under it (the smallest cap wins; a smaller
    requested run limit stays)."""
    keys = [key("ka", "sk-a", "t"), key("kb", "sk-b", "t"),
            key("kc", "sk-c", "t", user="u"), key("kd", "sk-d", "t2")]
    keys[1]["budget"] = bud("0.005", window="run")
    with Mock(env, "--tokens", "5") as mk, launch(
            env, mk, keys,
            orgs={"o": {"budget": bud("0.02", window="run")}},
            teams={"t": {"parent": "o", "budget": bud("0.01", window="run")},
                   "t2": {"parent": "o"}},
            users={"u": {"parent": "t", "budget": bud("0.003", window="run")}}) as tg:
        huge = chat("m", 100000000, content="cap")     # $200: no run covers it
        n0 = forwarded(mk)
        for secret, asked, cap in (("sk-a", "50", "0.01"), ("sk-a", None, "0.01"),
                                   ("sk-a", "0.002", "0.002"), ("sk-b", "50", "0.005"),
                                   ("sk-c", "50", "0.003"), ("sk-d", "50", "0.02")):
            h = {"X-Budget-Run-Limit": asked} if asked else {}
            r = call(tg, CHAT, huge, dict(bearer(secret), **h))
            got = refused(r, "run_ceiling_reached", "run:" + r.headers["x-run-id"],
                          "hard_gate")
            assert got["limit_usd"] == micros(cap), (secret, asked, cap, got)
        assert forwarded(mk) == n0
        # A named run of ka: limited to $0.01 however much it asked for.
        L = micros("0.01")
        h = {"X-Run-Id": "capped-1", "X-Budget-Run-Limit": "50", "x-mock-tokens": "4000"}
        with tg.conn() as c:
            r = ask(c, "sk-a", sized(L + 1), h)
            got = refused(r, "run_ceiling_reached", "run:capped-1", "hard_gate")
            assert got["limit_usd"] == L, got
            r = ask(c, "sk-a", sized(L), h)
            check_headers(r, "allow", "hard_gate", remaining=0)
            spent = charge(r)
            b = sized(L - spent + 1, "more")
            r = ask(c, "sk-a", b, h)
            got = refused(r, "run_ceiling_reached", "run:capped-1", "hard_gate")
            assert (got["committed_usd"], got["remaining_usd"]) == (spent, L - spent), got
        st = settled_scopes(tg, "sk-a", "capped-1")
        assert list(st) == ["run:capped-1"], list(st)     # no team or org counter
        for secret in ("sk-b", "sk-c", "sk-d"):           # nor key or user counters
            assert scopes(tg, secret) == {}, (secret, scopes(tg, secret))
        expect_scope(st, "run:capped-1", "run", "hard_gate", L, spent)
        # Another run has its own $0.01: the team cap is not a shared pot.
        h = {"X-Run-Id": "capped-2", "X-Budget-Run-Limit": "50", "x-mock-tokens": "4000"}
        r = call(tg, CHAT, sized(L), dict(bearer("sk-a"), **h))
        check_headers(r, "allow", "hard_gate", remaining=0)
        spent2 = charge(r)
        assert spent + spent2 > L, (spent, spent2)    # more than one $0.01 pot could hold
        expect_scope(settled_scopes(tg, "sk-a", "capped-2"), "run:capped-2", "run",
                     "hard_gate", L, spent2)
        assert forwarded(mk) == n0 + 2


def test_run_window_hard_cap_holds_under_advisory_key(env):
    """A team's `window: run, mode: hard_gate` budget is a hard per-run cap:
    a key's own `mode: advisory_estimate` (which loosens the key's run
    budgets) must not loosen it. A call whose worst case is above the
    team's cap is refused before anything is forwarded (SPEC §4: hard_gate
    is a worst-case reservation before forwarding), whatever scope the
    refusal names."""
    keys = [key("ka", "sk-adv", "t")]
    keys[0]["mode"] = "advisory_estimate"
    cap = micros("0.0001")
    with Mock(env, "--tokens", "5") as mk, launch(
            env, mk, keys,
            teams={"t": {"budget": bud("0.0001", window="run", mode="hard_gate")}}) as tg:
        b = chat("m", 300, content="over the team's per-run cap")
        assert estimate(b) > cap
        n0 = forwarded(mk)
        r = call(tg, CHAT, b, dict(bearer("sk-adv"), **{"X-Run-Id": "team-capped",
                                                        "x-mock-tokens": "100"}))
        spent = P.actual(*openai_usage(r)) if r.status == 200 else 0
        assert r.status == 402, (
            "team hard_gate per-run cap $0.0001 bypassed: status %d, decision %s, mode %s, "
            "forwarded %d, run committed $%s" % (
                r.status, r.headers.get("x-budget-decision"),
                r.headers.get("x-budget-enforcement-mode"), forwarded(mk) - n0, usd(spent)))
        j = problem(r, 402)
        assert j["code"] in ("run_ceiling_reached", "team_ceiling_reached"), j
        assert r.headers.get("x-budget-enforcement-mode") == "hard_gate", r.headers
        assert j["budget"]["limit_usd"] == usd(cap), j
        assert forwarded(mk) == n0


# ---------------------------------------------------------------- 8. month window, two shards

def test_month_window_rolls_over_on_two_shards(env):
    """Team `window: month` with two workers: spend to the limit on fresh
    connections (both shards), step the clock 40 days, and the limit is
    whole again: the same call fits, several connections spend in the new
    month, GET /v1/budget shows only the new month's spend and nothing
    reserved, and the new month can be spent to its limit exactly once."""
    L, ORG = micros("0.005"), micros("10.00")
    keys = [key("k", "sk-month", "t")]
    hdrs = {"x-mock-tokens": "200"}
    off = mid_month_offset()
    before = time.gmtime(time.time() + off)
    after = time.gmtime(time.time() + off + 40 * DAY)
    assert (before.tm_year, before.tm_mon) != (after.tm_year, after.tm_mon)
    with Clock(off) as clock, Mock(env, "--tokens", "5") as mk, launch(
            env, mk, keys, teams={"t": {"parent": "o", "budget": bud("0.005", window="month")}},
            orgs={"o": {"budget": bud("10.00")}}, workers=2, clock=clock) as tg:
        b = chat("m", 300, content="monthly")
        e = estimate(b)
        old = _spend_on_each_shard(tg, "sk-month", b, hdrs)
        old, _ = _spend_until_refused(tg, "sk-month", b, hdrs, "team:t", L, spent=old)
        st = settled_scopes(tg, "sk-month")
        expect_scope(st, "team:t", "month", "hard_gate", L, old)
        expect_scope(st, "org:o", "total", "hard_gate", ORG, old)
        assert L - old < e

        clock.set(off + 40 * DAY)
        deadline = time.monotonic() + 3.0 * tg.patience
        new = charge(_wait_fits(tg, "sk-month", b, hdrs, 3.0))
        conns = [Conn(tg.port) for _ in range(3)]
        try:
            for _ in range(2):
                for c in conns:
                    new += charge(_fits_by(deadline, c, "sk-month", b, hdrs))
        finally:
            for c in conns:
                c.close()
        st = settled_scopes(tg, "sk-month")
        expect_scope(st, "team:t", "month", "hard_gate", L, new)
        expect_scope(st, "org:o", "total", "hard_gate", ORG, old + new)
        # Every shard's old spend left the pool: the new month holds exactly
        # the limit (refused only once less than one estimate is left).
        new, _ = _spend_until_refused(tg, "sk-month", b, hdrs, "team:t", L, spent=new)
        st = settled_scopes(tg, "sk-month")
        expect_scope(st, "team:t", "month", "hard_gate", L, new)
        expect_scope(st, "org:o", "total", "hard_gate", ORG, old + new)
        assert L - new < e


# ---------------------------------------------------------------- 9. a quiet shard

def test_quiet_shard_rolls_over(env):
    """Two workers, a team budget `window: hour`; both shards spend in the
    old hour. After the roll only one connection (one shard) calls: the
    quiet shard must still give its old spend and leases back (its
    once-a-second tidy), so that the busy one can spend the new hour's
    whole limit; and the new hour's totals never include the old spend,
    whether or not the quiet shard has rolled yet."""
    L = micros("0.005")
    keys = [key("k", "sk-quiet", "t")]
    hdrs = {"x-mock-tokens": "200"}
    with Clock(mid_hour_offset()) as clock, Mock(env, "--tokens", "5") as mk, launch(
            env, mk, keys, teams={"t": {"budget": bud("0.005", window="hour")}}, workers=2,
            clock=clock) as tg:
        b = chat("m", 300, content="quiet")
        e = estimate(b)
        old = _spend_on_each_shard(tg, "sk-quiet", b, hdrs)
        old, _ = _spend_until_refused(tg, "sk-quiet", b, hdrs, "team:t", L, spent=old)
        expect_scope(settled_scopes(tg, "sk-quiet"), "team:t", "hour", "hard_gate", L, old)

        clock.set(clock.offset + HOUR)

        def first_fit():
            c = Conn(tg.port)
            r = ask(c, "sk-quiet", b, hdrs)
            if r.status == 200:
                return c, r
            c.close()
            return None
        c, r = wait_until(first_fit, 3 * tg.patience, step=0.05, what="a call in the new hour")
        try:
            new = charge(r)
            # At once, on the same shard: the new hour holds only this call.
            c.send(request("GET", "/v1/budget", b"", bearer("sk-quiet")))
            got = c.response()
            assert got.status == 200, got
            s = got.json()["scopes"][0]
            assert s["scope"] == "team:t" and s["window"] == "hour", s
            assert (s["committed_usd"], s["reserved_usd"]) == (usd(new), "0.00"), (s, usd(new))
            # This shard alone can spend the whole new hour.
            new, n = _spend_until_refused(tg, "sk-quiet", b, hdrs, "team:t", L, spent=new,
                                          conn=c)
            assert n >= 1 and L - new < e, (n, new)
        finally:
            c.close()
        expect_scope(settled_scopes(tg, "sk-quiet"), "team:t", "hour", "hard_gate", L, new)
