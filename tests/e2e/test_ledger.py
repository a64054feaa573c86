"""End-to-end: the durable ledger (SPEC §4, §5, §7; ledger/, net/booking.c).

Every test runs the real tollgate and mockllm on 127.0.0.1 with a ledger
directory of its own, and reads the segment files back with ledgerfile.py,
an independent reader of the format (its own CRC-32C). What is checked:

  - the records of calls: reserve then commit (or release, or refuse) for
    each decision, in its shard's segments, with the money and the tokens
    the replies reported, priced exactly, and every text field;
  - that a reply's end is never seen before its commit is written;
  - restarts: replay restores what was committed per key, window and run,
    to the micro-dollar; decision ids are never issued twice;
  - kill -9 under load, many times: nothing acknowledged is lost, every
    reservation gets exactly one outcome (replay books `expire` for the
    orphans), and the budget equals what the ledger says was spent;
  - damage: a torn tail is truncated, corruption stops start-up (exit 2)
    unless --ledger-repair cuts the damaged record out;
  - the fsync modes, the directory lock, segment rotation;
  - (last, one property each, from bugs found while writing these) the
    mode of reserve records, start-up records written without traffic,
    budget reads booking nothing, record times in order.

Money is integer micro-USD throughout (test_budget.Price: estimate = each
part rounded up; actual = (input x in + output x out) / 1e6 rounded up once).
"""

import os
import random
import shutil
import signal
import tempfile
import threading
import time

import ledgerfile
from harness import (CHAT, LOOPBACK, MESSAGES, Conn, Mock, Proc, Tollgate, build_dir, call,
                     free_port, make_config, principals, problem, request, slow_build,
                     sse_events, wait_until, write_config)
from test_budget import (MTOK, SLACK, Price, anthropic_usage, bearer, body_bytes, budget, chat,
                         key, messages, micros, model, openai_usage)

RUN_LIMIT = micros("1000.00")     # test_budget.key()'s run.default_limit
PRICES_VERSION = "e2e-test"
OUTCOMES = ("commit", "release", "expire")
HARD_GATE = 2                     # enum budget_mode


# ---------------------------------------------------------------- processes

class Daemon(Tollgate):
    """tollgate on a given config and port, with extra arguments; waits
    until it accepts unless `ready` is False (a start expected to fail)."""

    def __init__(self, env, config, port, args=(), workers=2, env_vars=None, ready=True):
        self.port = port
        self.config = config
        self.config_path = write_config(config)
        binary = os.path.join(build_dir(env), "tollgate")
        Proc.__init__(self, "tollgate", [binary, "-c", self.config_path, "--workers",
                                         str(workers), *args], env_vars)
        if ready:
            self.wait_ready(20 if slow_build(env) else 5)

    def kill9(self):
        """SIGKILL, and the process is checked (no sanitizer report)."""
        self.expect_rc = -signal.SIGKILL
        if self.alive():
            self.proc.kill()
        self.proc.wait()
        probs = self.stop()
        assert not probs, probs

    def term(self):
        """SIGTERM: drains, flushes the ledger, exits 0."""
        probs = self.stop(30.0)
        assert not probs, probs

    def exit_code(self, timeout=20.0):
        rc = self.wait(timeout)
        assert rc is not None, "tollgate still running: %s" % self.log_tail()
        return rc


class Setup:
    """One ledger directory, one mock, one configuration; start() runs a
    tollgate on them (a fresh port each time, the same ledger)."""

    def __init__(self, env, mock, models, keys, teams, orgs=None, users=None,
                 providers=None, fsync="batch", batch_ms=5, segment_mb=None, workers=2,
                 env_vars=None, limits=None):
        self.env = env
        self.mock = mock
        self.dir = tempfile.mkdtemp(prefix="e2e-ledger-")
        self.ledger = {"dir": self.dir, "fsync": fsync, "batch_ms": batch_ms}
        if segment_mb is not None:
            self.ledger["segment_mb"] = segment_mb
        self.models = models
        self.extra = dict(principals(keys, teams, orgs, users), ledger=self.ledger)
        self.providers = providers
        self.workers = workers
        self.env_vars = env_vars
        self.limits = limits

    def config(self, port):
        return make_config(port, self.mock.port, models=self.models, providers=self.providers,
                           limits=self.limits, extra=self.extra)

    def start(self, args=(), ready=True):
        port = free_port()
        return Daemon(self.env, self.config(port), port, args=args, workers=self.workers,
                      env_vars=self.env_vars, ready=ready)

    def start_failing(self, args=()):
        """A start expected to fail: (exit code, log, problems of the
        process other than its exit code, e.g. a sanitizer report)."""
        tg = self.start(args=args, ready=False)
        rc = tg.exit_code()
        log = tg.log()
        tg.expect_rc = rc
        return rc, log, tg.stop()

    def read(self):
        return ledgerfile.read(self.dir)

    def cleanup(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.cleanup()
        return False


# ---------------------------------------------------------------- helpers

def assert_exit_2(failed_start):
    """SPEC §1: a runtime failure exits 2 (in a leak-checking build too)."""
    rc, log, probs = failed_start
    assert rc == 2 and not probs, ("a failed start must exit 2, cleanly", rc, probs or log)


def did_of(r):
    """The decision id (an integer) of a reply."""
    h = r.headers["x-budget-decision-id"]
    assert h.startswith("d-"), h
    return int(h[2:], 16)


def budget_state(tg, secret, run=None):
    """GET /v1/budget: scope name -> {limit, committed, reserved, remaining,
    window} in micro-USD."""
    hdrs = bearer(secret)
    if run:
        hdrs["X-Run-Id"] = run
    r = call(tg, "/v1/budget", None, hdrs, method="GET")
    assert r.status == 200, r
    return {s["scope"]: {"limit": micros(s["limit_usd"]),
                         "committed": micros(s["committed_usd"]),
                         "reserved": micros(s["reserved_usd"]),
                         "remaining": micros(s["remaining_usd"]),
                         "window": s["window"]} for s in r.json()["scopes"]}


def run_state(tg, secret, run):
    """GET /v1/budget/runs/{run}: its run scope (micro-USD), or None (404)."""
    r = call(tg, "/v1/budget/runs/" + run, None, bearer(secret), method="GET")
    if r.status == 404:
        return None
    assert r.status == 200, r
    j = r.json()
    assert j["run_id"] == run, j
    sc = {s["scope"]: s for s in j["scopes"]}["run:" + run]
    return {"limit": micros(sc["limit_usd"]), "committed": micros(sc["committed_usd"]),
            "reserved": micros(sc["reserved_usd"]), "remaining": micros(sc["remaining_usd"])}


def quiet_state(tg, secret, scope, run=None, timeout=5.0):
    """The scope's state once nothing is reserved on it (twice the same)."""
    last = [None]

    def quiet():
        st = budget_state(tg, secret, run)[scope]
        prev, last[0] = last[0], st
        return st if st["reserved"] == 0 and st == prev else None
    return wait_until(quiet, timeout, what="%s to settle" % scope)


def spent_in(ledger, **fields):
    """Σ usd of the commit and expire records whose text fields match."""
    total = 0
    for r in ledger.records(("commit", "expire")):
        if all(r.fields[k] == v for k, v in fields.items()):
            total += r.usd
    return total


def kinds(recs):
    return [r.kind_name for r in recs]


def body_for_estimate(target, p, pad="z"):
    """(body, max_tokens) of a chat call to p.model whose estimate is exactly
    `target` (prices of 1 and 2 micro-USD per token: estimate = body bytes +
    64 + 2 x max_tokens)."""
    assert (p.inp, p.out) == (MTOK, 2 * MTOK), (p.inp, p.out)
    for n in range(1, 50):
        for digits in range(1, 10):
            b = chat(p.model, 10 ** (digits - 1), content=pad * n)
            rest = target - (len(b) + SLACK)
            if rest > 0 and rest % 2 == 0 and len(str(rest // 2)) == digits:
                b = chat(p.model, rest // 2, content=pad * n)
                assert p.estimate(b, rest // 2) == target
                return b, rest // 2
    raise AssertionError("no body with estimate %d" % target)


def assert_outcomes_once(ledger, where=""):
    """Every reservation has exactly one outcome after it, every outcome a
    reservation before it, a refusal is alone, and a decision's records sit
    in its own shard's segments (the worker count never changes here)."""
    for d, recs in ledger.by_decision().items():
        ks = kinds(recs)
        outs = [k for k in ks if k in OUTCOMES]
        if "refuse" in ks:
            assert ks == ["refuse"], (where, hex(d), recs)
            continue
        assert len(outs) == 1, ("%s: decision %x has outcomes %r" % (where, d, ks), recs)
        first_out = ks.index(outs[0])
        assert ks[:first_out] == ["reserve"] * first_out and first_out >= 1, \
            (where, hex(d), recs)
        assert ks[first_out + 1:] == [], (where, hex(d), recs)
        for r in recs:
            assert r.segment.shard == d >> 48, (where, hex(d), r)


# ---------------------------------------------------------------- 1. records

def test_records_of_calls(env):
    """Each allowed call books one reserve then one commit in its shard's
    segment, the commit's money and tokens being the reply's usage x price;
    refusals book one refuse; upstream failures book a release (or, for a
    complete error reply from the provider, a commit of nothing)."""
    po = Price("o", "0.30", "1.50")
    pa = Price("a", "3.00", "15.00")
    models = {"o": model("0.30", "1.50", cap=1000),
              "a": model("3.00", "15.00", provider="mock-anthropic", cap=1000),
              "np": model(None, None),
              "dead": model("0.30", "1.50", provider="dead", cap=1000)}
    keys = [key("k", "sk-k", "t", limit="5.00", user="u"),
            key("k2", "sk-k2", "t2", limit="0.000100", models=["o"])]
    dead = free_port()
    providers = {"dead": {"base_url": "http://%s:%d/v1" % (LOOPBACK, dead),
                          "format": "openai", "timeout_ms": 2000}}
    run = "ledger-rec-run"
    with Mock(env, "--tokens", "16") as mk, Setup(
            env, mk, models, keys,
            teams={"t": {"parent": "o", "budget": budget("10.00")}, "t2": {}},
            orgs={"o": {"budget": budget("100.00")}},
            users={"u": {"parent": "t", "budget": budget("10.00")}},
            providers=providers) as st:
        tg = st.start()
        # (path, price, body, effective max output, mock headers, stream?)
        calls = []
        for i, n in enumerate((1, 7, 33, 120, 999, 5)):
            calls.append((CHAT, po, chat("o", 40 + i * 100, content="q%d " % i * (i + 1)),
                          min(40 + i * 100, 1000), {"x-mock-tokens": str(n)}, False))
        calls += [
            (MESSAGES, pa, messages("a", 64), 64, {"x-mock-tokens": "21"}, False),
            (MESSAGES, pa, messages("a", 10, content="w" * 333), 10, {"x-mock-tokens": "100"},
             False),
            (CHAT, po, chat("o", 30, stream=True, stream_options={"include_usage": True}), 30,
             {"x-mock-tokens": "9", "x-mock-tokens-per-event": "2"}, True),
            (CHAT, po, chat("o", 300, stream=True), 300, {"x-mock-tokens": "17"}, True),
            (MESSAGES, pa, messages("a", 100, content="stream me", stream=True), 100,
             {"x-mock-tokens": "12"}, True),
            (MESSAGES, pa, messages("a", 2000, content="s" * 900, stream=True), 1000,
             {"x-mock-tokens": "40", "x-mock-tokens-per-event": "3"}, True),
        ]
        expect = {}          # decision -> what its records must say
        spent = 0
        t_start = int(time.time() * 1000)
        with tg.conn() as c:
            for i, (path, p, b, max_out, mock_h, stream) in enumerate(calls):
                tags = "app=ledger,env=e2e,task=call%d" % i
                hdrs = dict(bearer("sk-k"), **{"X-Run-Id": run, "X-Budget-Tags": tags})
                hdrs.update(mock_h)
                c.send(request("POST", path, b, hdrs))
                r = c.response()
                assert r.status == 200, (i, r)
                d = did_of(r)
                if path == MESSAGES:
                    used = anthropic_usage(r)
                elif not stream or b'"include_usage"' in b:
                    used = openai_usage(r)
                else:
                    # tollgate asked for usage and dropped it: what mockllm
                    # reports for the same call, asked directly
                    assert b'"usage"' not in r.body, r.body[-300:]
                    direct = call(mk, CHAT, b[:-1] + b',"stream_options":{"include_usage":true}}',
                                  mock_h)
                    used = openai_usage(direct)
                if stream:
                    last = sse_events(r.body)[-1]
                    if path == MESSAGES:
                        assert last[0] == "message_stop", last
                    else:
                        assert last[1] == "[DONE]", last
                a = p.actual(*used)
                spent += a
                expect[d] = dict(price=p, body=b, max_out=max_out, used=used, actual=a,
                                 tags=tags, stream=stream,
                                 model=p.model, provider="mock-anthropic" if path == MESSAGES
                                 else "mock-openai")
                # SPEC §7: the agent saw its reply end, so its commit is
                # written (the live file, read while tollgate runs)
                live = st.read().by_decision().get(d, [])
                assert "commit" in kinds(live), (i, hex(d), live)
        # refusals: a key ceiling, an unknown price, a model the key may not use
        refusals = []
        b = chat("o", 500)
        r = call(tg, CHAT, b, dict(bearer("sk-k2"), **{"X-Budget-Tags": "app=refused"}))
        problem(r, 402, "key_ceiling_reached")
        refusals.append((did_of(r), 402, "key_ceiling_reached", "k2", "o", po.estimate(b, 500),
                         "app=refused"))
        r = call(tg, CHAT, chat("np", 10), bearer("sk-k"))
        problem(r, 402, "unknown_price")
        refusals.append((did_of(r), 402, "unknown_price", "k", "np", 0, ""))
        r = call(tg, MESSAGES, messages("a", 10), bearer("sk-k2"))
        problem(r, 403, "model_not_allowed")
        refusals.append((did_of(r), 403, "model_not_allowed", "k2", "a", 0, ""))
        # upstream failures: nothing charged
        failures = []
        b = chat("dead", 50)
        r = call(tg, CHAT, b, bearer("sk-k"))
        problem(r, 502, "upstream_failed")
        failures.append((did_of(r), "release", po.estimate(b, 50), 502))
        b = chat("o", 60, content="reset")
        r = call(tg, CHAT, b, dict(bearer("sk-k"), **{"x-mock-reset-after": "0"}))
        problem(r, 502)
        failures.append((did_of(r), "release", po.estimate(b, 60), 502))
        b = chat("o", 70, content="five hundred")
        r = call(tg, CHAT, b, dict(bearer("sk-k"), **{"x-mock-status": "500"}))
        assert r.status == 500, r
        # a complete reply of the provider's: settled as a spend of nothing
        failures.append((did_of(r), "commit", po.estimate(b, 70), 500))

        # the budget agrees with the ledger, then the ledger is read whole
        assert quiet_state(tg, "sk-k", "key:k")["committed"] == spent
        assert run_state(tg, "sk-k", run)["committed"] == spent
        tg.term()
        t_end = int(time.time() * 1000)
        led = st.read().verify()
        by = led.by_decision()
        assert_outcomes_once(led, "records")

        for d, e in expect.items():
            recs = by.get(d, [])
            assert kinds(recs) == ["reserve", "commit"], (hex(d), recs)
            res, com = recs
            p = e["price"]
            for rec in recs:
                assert rec.segment.shard == d >> 48, (hex(d), rec)
                want = {"run": run, "key": "k", "user": "u", "team": "t", "org": "o",
                        "provider": e["provider"], "model": e["model"],
                        "prices_version": PRICES_VERSION, "tags": e["tags"]}
                got = {k: v for k, v in rec.fields.items() if v}
                assert got == want and not any(rec.extra_fields), (want, rec)
                # a reservation is booked before the reply shows it is a
                # stream: only its outcome is flagged a metered stream
                want = ledgerfile.F_RUN_KEPT
                if e["stream"] and rec.kind_name == "commit":
                    want |= ledgerfile.F_STREAM
                assert rec.flags == want, rec
                assert rec.run_limit == RUN_LIMIT, rec
                assert t_start - 2000 <= rec.time_ms <= t_end + 2000, (rec, t_start, t_end)
            # (to the second: test_record_times_never_go_back)
            assert res.time_ms // 1000 <= com.time_ms // 1000, recs
            # reserved: the worst case, its bounds as tokens
            assert res.usd == p.estimate(e["body"], e["max_out"]), (res, e)
            assert res.input == len(e["body"]) + SLACK, res
            assert res.reserved == res.usd and res.output == e["max_out"], res
            # committed: the usage the reply reported, priced exactly
            assert com.usd == e["actual"] == p.actual(com.input, com.output), (com, e)
            assert (com.input, com.output, com.cached) == (e["used"][0], e["used"][1], 0), \
                (com, e)
            assert com.reserved == res.usd and com.status == 200, (com, res)
            assert com.mode == HARD_GATE, com
            # (the reserve's mode: test_reserve_records_carry_the_mode_in_force)
            assert 0 < com.usd <= com.reserved, com
        for d, status, code, kid, mname, e_usd, tags in refusals:
            recs = by.get(d, [])
            assert kinds(recs) == ["refuse"], (hex(d), code, recs)
            ref = recs[0]
            assert (ref.status, ref.code, ref.key, ref.model, ref.usd, ref.tags) == \
                (status, code, kid, mname, e_usd, tags), (code, ref)
            assert ref.segment.shard == d >> 48, ref
            assert ref.mode == HARD_GATE, ref
        for d, outcome, reserved, status in failures:
            recs = by.get(d, [])
            assert kinds(recs) == ["reserve", outcome], (hex(d), recs)
            res, out = recs
            assert res.usd == reserved and out.reserved == reserved, recs
            assert out.usd == 0 and (out.input, out.output) == (0, 0), out
            assert out.status == status, out
        # nothing else was booked (the budget reads of quiet_state() and
        # run_state() are no calls)
        assert set(by) == set(expect) | {x[0] for x in refusals} | {x[0] for x in failures}, \
            [by[d] for d in set(by) - set(expect)]
        assert spent_in(led) == spent
        assert spent_in(led, run=run) == spent


# ---------------------------------------------------------------- 2. restart

def clock_env(path, offset):
    with open(path, "w") as f:
        f.write("%d\n" % offset)


def test_restart_restores_budgets(env):
    """SIGTERM and start again on the same ledger: a `window: total` key, a
    `window: day` key and a named run have exactly what they had committed;
    a call that does not fit is refused with the same figures, one that
    fits to the micro-dollar passes. The next day, the day window is empty
    again and the total one is not. Decision ids never repeat."""
    p = Price("m", "1.00", "2.00")
    models = {"m": model("1.00", "2.00")}
    kt = key("kt", "sk-total", "t", limit="0.050000")
    kd = key("kd", "sk-day", "t", limit="0.040000")
    kd["budget"]["window"] = "day"
    kr = key("kr", "sk-run", "t", run_limit="0.030000")
    kr["run"]["max_limit"] = "1.00"
    clock_dir = tempfile.mkdtemp(prefix="e2e-clock-")
    clock = os.path.join(clock_dir, "offset")
    now = int(time.time())
    noon = now - now % 86400 + 43200           # the day's middle: no window edge nearby
    clock_env(clock, noon - now)
    run = "restart-run"
    try:
        with Mock(env, "--tokens", "25") as mk, Setup(
                env, mk, models, [kt, kd, kr], teams={"t": {"budget": budget("100.00")}},
                env_vars={"TOLLGATE_TEST_CLOCK_FILE": clock}) as st:
            tg = st.start()
            seen_ids = set()
            spent = {"kt": 0, "kd": 0, "kr": 0}
            with tg.conn() as c:
                for secret, kid, hdrs in (("sk-total", "kt", {}), ("sk-day", "kd", {}),
                                          ("sk-run", "kr", {"X-Run-Id": run,
                                                            "X-Budget-Run-Limit": "0.020000"})):
                    for i in range(4):
                        b = chat("m", 100 + i, content="spend %d" % i)
                        c.send(request("POST", CHAT, b, dict(bearer(secret), **hdrs)))
                        r = c.response()
                        assert r.status == 200, r
                        seen_ids.add(did_of(r))
                        spent[kid] += p.actual(*openai_usage(r))
            # the state before the restart, and refusals just past it
            before = {"kt": quiet_state(tg, "sk-total", "key:kt"),
                      "kd": quiet_state(tg, "sk-day", "key:kd")}
            before["run"] = run_state(tg, "sk-run", run)
            assert before["kt"]["committed"] == spent["kt"], (before, spent)
            assert before["kd"]["committed"] == spent["kd"], (before, spent)
            assert before["kd"]["window"] == "day" and before["kt"]["window"] == "total"
            assert before["run"]["committed"] == spent["kr"], (before, spent)
            assert before["run"]["limit"] == micros("0.020000"), before

            def past(secret, remaining, hdrs=None):
                b, _ = body_for_estimate(remaining + 1, p)
                r = call(tg_now[0], CHAT, b, dict(bearer(secret), **(hdrs or {})))
                seen_ids.add(did_of(r))
                return problem(r, 402)
            tg_now = [tg]
            refused = {
                "kt": past("sk-total", before["kt"]["remaining"], {"X-Run-Id": "probe-t"}),
                "kd": past("sk-day", before["kd"]["remaining"], {"X-Run-Id": "probe-d"}),
                "run": past("sk-run", before["run"]["remaining"], {"X-Run-Id": run}),
            }
            assert refused["kt"]["code"] == "key_ceiling_reached", refused
            assert refused["kd"]["code"] == "key_ceiling_reached", refused
            assert refused["run"]["code"] == "run_ceiling_reached", refused
            tg.term()
            led = st.read().verify()
            assert_outcomes_once(led)
            assert seen_ids <= set(led.by_decision()), "a decision not in the ledger"
            old = {}            # shard -> its highest decision id before the restart
            for r in led.records():
                if r.kind_name != "segment":
                    old[r.decision >> 48] = max(old.get(r.decision >> 48, 0), r.decision)

            # restart: the same figures, the same refusals
            tg = st.start()
            tg_now[0] = tg
            after = {"kt": quiet_state(tg, "sk-total", "key:kt"),
                     "kd": quiet_state(tg, "sk-day", "key:kd"),
                     "run": run_state(tg, "sk-run", run)}
            assert after == before, (after, before)
            again = {
                "kt": past("sk-total", before["kt"]["remaining"], {"X-Run-Id": "probe-t"}),
                "kd": past("sk-day", before["kd"]["remaining"], {"X-Run-Id": "probe-d"}),
                "run": past("sk-run", before["run"]["remaining"], {"X-Run-Id": run}),
            }
            for k in again:
                assert again[k]["code"] == refused[k]["code"], (k, again[k], refused[k])
                assert again[k]["budget"] == refused[k]["budget"], (k, again[k], refused[k])
            # and what fits to the micro-dollar passes (on a fresh run each)
            fresh = {}
            for kid, secret, hdrs, rem in (
                    ("kt", "sk-total", {"X-Run-Id": "fit-t"}, before["kt"]["remaining"]),
                    ("kd", "sk-day", {"X-Run-Id": "fit-d"}, before["kd"]["remaining"]),
                    ("kr", "sk-run", {"X-Run-Id": run}, before["run"]["remaining"])):
                b, max_out = body_for_estimate(rem, p)
                r = call(tg, CHAT, b, dict(bearer(secret), **dict(hdrs, **{
                    "x-mock-tokens": "3"})))
                assert r.status == 200, (kid, rem, r)
                assert r.headers["x-budget-remaining-usd"] == "0.00", r.headers
                d = did_of(r)
                assert d not in seen_ids, hex(d)
                seen_ids.add(d)
                fresh[kid] = d
                spent[kid] += p.actual(*openai_usage(r))
            assert quiet_state(tg, "sk-total", "key:kt")["committed"] == spent["kt"]
            assert quiet_state(tg, "sk-day", "key:kd")["committed"] == spent["kd"]
            assert run_state(tg, "sk-run", run)["committed"] == spent["kr"]
            tg.term()
            led = st.read().verify()
            assert_outcomes_once(led)
            # ids after the restart are past every id of their shard before it
            for d in fresh.values():
                assert d > old.get(d >> 48, 0), (hex(d), {k: hex(v) for k, v in old.items()})
            assert spent_in(led, key="kt") == spent["kt"]
            assert spent_in(led, key="kd") == spent["kd"]
            assert spent_in(led, run=run) == spent["kr"]

            # the next day: the day window starts empty, total and run keep
            clock_env(clock, noon - now + 86400)
            tg = st.start()
            assert quiet_state(tg, "sk-total", "key:kt")["committed"] == spent["kt"]
            st_d = quiet_state(tg, "sk-day", "key:kd")
            assert st_d["committed"] == 0 and st_d["remaining"] == micros("0.040000"), st_d
            # the run idled past its ttl_s (3600 s): not opened again
            assert run_state(tg, "sk-run", run) is None
            r = call(tg, CHAT, chat("m", 10), bearer("sk-day"))
            assert r.status == 200 and did_of(r) not in seen_ids, r
            tg.term()
            assert_outcomes_once(st.read().verify())
    finally:
        shutil.rmtree(clock_dir, ignore_errors=True)


# ---------------------------------------------------------------- 3. kill -9

ROUNDS = 20
KILL_SECRET = "sk-kill"


def kill_jobs():
    """(name, path, body, headers, usage reader, price) of the load's calls."""
    po = Price("o", "1.00", "2.00")
    pa = Price("a", "1.00", "2.00")
    slow = {"x-mock-tokens": "40", "x-mock-token-delay-us": "3000"}
    return [
        ("chat", CHAT, chat("o", 50, content="load"), {"x-mock-tokens": "20"}, openai_usage, po),
        ("chat-stream", CHAT, chat("o", 60, content="stream", stream=True,
                                   stream_options={"include_usage": True}),
         {"x-mock-tokens": "30", "x-mock-tokens-per-event": "3"}, openai_usage, po),
        ("chat-slow", CHAT, chat("o", 80, content="slow", stream=True,
                                 stream_options={"include_usage": True}), slow, openai_usage,
         po),
        ("msg", MESSAGES, messages("a", 50, content="msg"), {"x-mock-tokens": "15"},
         anthropic_usage, pa),
        ("msg-stream", MESSAGES, messages("a", 70, content="msg stream", stream=True),
         {"x-mock-tokens": "25"}, anthropic_usage, pa),
        ("msg-slow", MESSAGES, messages("a", 90, content="msg slow", stream=True), slow,
         anthropic_usage, pa),
    ]


def complete(name, r):
    """True if the reply is a whole success (streams: to their last event)."""
    if r.status != 200:
        return False
    if "stream" in name or "slow" in name:
        ev = sse_events(r.body)
        return bool(ev) and (ev[-1][1] == "[DONE]" or ev[-1][0] == "message_stop")
    return True


def _client(port, rng_seed, stop, jobs, out, lock):
    rng = random.Random(rng_seed)
    got = []
    try:
        c = Conn(port, 10.0)
        while not stop.is_set():
            name, path, b, mh, usage_of, price = jobs[rng.randrange(len(jobs))]
            c.send(request("POST", path, b, dict(bearer(KILL_SECRET), **mh)))
            status, hdrs = c.head()          # the decision id, even if cut later
            with lock:
                out["seen"].append(int(hdrs["x-budget-decision-id"][2:], 16))
            c.buf = c.raw_head + c.buf        # read it again as a whole reply
            r = c.response()
            if not complete(name, r):
                with lock:
                    out["bad"].append((name, r))
                break
            got.append((did_of(r), price.actual(*usage_of(r))))
    except (OSError, EOFError, ValueError, IndexError):
        pass                                  # tollgate was killed
    with lock:
        out["complete"].extend(got)


def due_after_replay(led, **fields):
    """What a replay of `led` must restore for the records matching fields:
    Σ commit + expire, and the latest reservation of every decision that has
    no outcome yet (charged in full as an orphan)."""
    total = spent_in(led, **fields)
    for recs in led.by_decision().values():
        res = [r for r in recs if r.kind_name == "reserve"]
        if res and not set(kinds(recs)) & set(OUTCOMES) and \
                all(res[-1].fields[k] == v for k, v in fields.items()):
            total += res[-1].usd
    return total


def test_kill9_under_load_loses_nothing(env):
    """Clients on several connections keep calling (streams and not, fast
    and slow) while tollgate is killed with SIGKILL at a random moment, 20
    times over one ledger. Every reply an agent received whole has its
    commit on disk at once; after each restart the key's budget is exactly
    what the ledger owes (Σ commit + expire + the latest reservation of each
    orphan). Every other round the restarted tollgate is stopped with
    SIGTERM (so that its `expire` records are on disk) and the ledger is
    checked whole: clean, every reservation with exactly one outcome, the
    budget == Σ commit + expire. The other rounds go straight on to the next
    load, so a daemon with expires still buffered is killed too."""
    models = {"o": model("1.00", "2.00", cap=1000),
              "a": model("1.00", "2.00", provider="mock-anthropic", cap=1000)}
    keys = [key("kk", KILL_SECRET, "t", limit="1000.00")]
    jobs = kill_jobs()
    rng = random.Random(20261123)
    slow = slow_build(env)
    n_clients = 4
    with Mock(env, "--tokens", "16", "--threads", "2") as mk, Setup(
            env, mk, models, keys, teams={"t": {}}) as st:
        acked = {}            # decision -> the charge of its whole reply
        seen = []             # every decision id an agent was told
        orphaned = 0

        def check_whole(where):
            """After a SIGTERM: the ledger as a whole."""
            led = st.read()
            assert not led.problems(), (where, led.problems())
            assert_outcomes_once(led, where)
            by = led.by_decision()
            for d, charge in acked.items():
                recs = by.get(d, [])
                com = [r for r in recs if r.kind_name == "commit"]
                assert len(com) == 1, (where, "acknowledged but not committed", hex(d), recs)
                assert com[0].usd == charge, (where, hex(d), com, charge)
            for recs in by.values():
                for r in recs:
                    assert r.kind_name != "refuse", (where, r)
                    if r.kind_name == "expire":
                        res = [x for x in recs if x.kind_name == "reserve"]
                        assert r.usd == res[-1].usd == r.reserved, (where, recs)
                        assert r.code == "reservation_orphaned", r
                    if r.kind_name == "commit":
                        assert 0 < r.usd <= r.reserved, (where, r)
            return led

        tg = st.start()
        for rnd in range(ROUNDS):
            stop = threading.Event()
            out = {"seen": [], "complete": [], "bad": []}
            lock = threading.Lock()
            threads = [threading.Thread(target=_client, args=(tg.port, rng.random(), stop,
                                                             jobs, out, lock), daemon=True)
                       for _ in range(n_clients)]
            for t in threads:
                t.start()
            # load for a random while, then the kill
            time.sleep(rng.uniform(0.25, 1.2 if slow else 0.9))
            tg.kill9()
            stop.set()
            for t in threads:
                t.join(15)
                assert not t.is_alive(), "a client hung after the kill"
            assert not out["bad"], out["bad"][:3]
            for d, charge in out["complete"]:
                assert d not in acked, hex(d)
                acked[d] = charge
            seen += out["seen"]
            assert out["complete"], "round %d: no call completed" % rnd
            # killed: only a torn tail is allowed, in a shard's last segment;
            # every acknowledged reply is committed already
            led = st.read()
            for name, damage, at in led.damage():
                seg = [s for s in led.segments if s.name == name][0]
                assert damage == ledgerfile.TORN_TAIL and seg.last, (rnd, name, damage, at)
            by = led.by_decision()
            for d, charge in out["complete"]:
                com = [r for r in by.get(d, []) if r.kind_name == "commit"]
                assert [r.usd for r in com] == [charge], (rnd, hex(d), by.get(d))
            for recs in by.values():
                assert len([k for k in kinds(recs) if k in OUTCOMES]) <= 1, (rnd, recs)
            due = due_after_replay(led, key="kk")
            orphaned += len([1 for recs in by.values()
                             if "reserve" in kinds(recs)
                             and not set(kinds(recs)) & set(OUTCOMES)])
            # replay: the budget is what the ledger owes, nothing reserved
            tg = st.start()
            st_k = budget_state(tg, KILL_SECRET)["key:kk"]
            assert (st_k["committed"], st_k["reserved"]) == (due, 0), (rnd, st_k, due)
            if rnd % 2 == 0:
                tg.term()
                led = check_whole("round %d" % rnd)
                assert spent_in(led, key="kk") == due, (rnd, spent_in(led, key="kk"), due)
                tg = st.start()
        # every decision id an agent was told is unique over all the rounds
        assert len(seen) == len(set(seen)), "decision ids repeated after a restart"
        tg.term()
        led = check_whole("final")
        led.verify()
        assert len(acked) >= ROUNDS, len(acked)
        assert orphaned, "no reservation was ever orphaned"
        # a last start replays the same spend
        tg = st.start()
        assert budget_state(tg, KILL_SECRET)["key:kk"]["committed"] == spent_in(led, key="kk")
        tg.term()


# ---------------------------------------------------------------- 4. orphans

def test_orphaned_stream_is_expired_at_its_latest_reservation(env):
    """A leased stream grows its reservation (a reserve record each time);
    killed mid-stream, the restart books an expire for exactly its latest
    reservation, counted in the run's, the key's and the team's spend."""
    p = Price("m", "0", "1.00")            # a token of output = 1 micro-USD
    models = {"m": model("0", "1.00", cap=4000)}
    k = key("kl", "sk-lease", "t", limit="1.00")
    k["run"]["stream_lease"] = True
    run = "orphan-run"
    with Mock(env) as mk, Setup(env, mk, models, [k],
                                teams={"t": {"budget": budget("2.00")}}) as st:
        tg = st.start()
        # a call that completes first: the run has some spend already
        r = call(tg, CHAT, chat("m", 100), dict(bearer("sk-lease"), **{
            "X-Run-Id": run, "x-mock-tokens": "10"}))
        assert r.status == 200, r
        first = p.actual(*openai_usage(r))
        assert first == 10
        b = body_bytes({"model": "m", "max_tokens": 4000, "stream": True,
                        "messages": [{"role": "user", "content": "orphan"}]})
        c = tg.conn(timeout=30.0)
        c.send(request("POST", CHAT, b, dict(bearer("sk-lease"), **{
            "X-Run-Id": run, "x-mock-tokens": "3000", "x-mock-token-delay-us": "2000"})))
        status, hdrs = c.head()
        assert status == 200, hdrs
        d = int(hdrs["x-budget-decision-id"][2:], 16)

        def grown():
            recs = st.read().by_decision().get(d, [])
            return recs if kinds(recs).count("reserve") >= 3 else None
        recs = wait_until(grown, 30.0, step=0.05, what="the lease to grow twice")
        assert kinds(recs) == ["reserve"] * len(recs), recs
        amounts = [x.usd for x in recs]
        assert amounts == sorted(amounts) and len(set(amounts)) == len(amounts), amounts
        tg.kill9()
        c.close()
        led = st.read()
        res = led.by_decision()[d]
        assert set(kinds(res)) == {"reserve"}, res
        latest = res[-1]
        assert amounts[0] < latest.usd <= p.estimate(b, 4000), latest

        tg = st.start()
        assert "1 orphaned reservations charged" in tg.log(), tg.log_tail()
        total = first + latest.usd
        assert run_state(tg, "sk-lease", run)["committed"] == total
        sc = budget_state(tg, "sk-lease")
        assert sc["key:kl"]["committed"] == total and sc["team:t"]["committed"] == total, sc
        # the expire record is on disk once tollgate stopped (or once its
        # shard turned: test_start_up_records_are_written_without_traffic)
        tg.term()
        recs = st.read().by_decision().get(d, [])
        exp = recs[-1]
        assert kinds(recs) == ["reserve"] * len(res) + ["expire"], recs
        assert exp.usd == latest.usd == exp.reserved, (exp, latest)
        assert exp.code == "reservation_orphaned", exp
        assert (exp.run, exp.key, exp.team, exp.model) == (run, "kl", "t", "m"), exp
        assert exp.time_ms == latest.time_ms, (exp, latest)   # its reservation's window
        assert exp.flags & ledgerfile.F_STREAM and exp.flags & ledgerfile.F_RUN_KEPT, exp
        # booked once: another restart does not charge it again
        tg = st.start()
        assert "0 orphaned reservations charged" in tg.log(), tg.log_tail()
        assert budget_state(tg, "sk-lease")["key:kl"]["committed"] == total
        assert run_state(tg, "sk-lease", run)["committed"] == total
        tg.term()
        led = st.read().verify()
        assert_outcomes_once(led)
        assert spent_in(led, key="kl") == total


# ---------------------------------------------------------------- 5. torn tail

def spend_some(tg, secret, n, p, shard_wanted=None, led_dir=None, max_calls=200):
    """n calls on fresh connections (so both shards get some); returns the
    charge. With shard_wanted, goes on until that shard has n new commits."""
    def on_shard():
        led = ledgerfile.read(led_dir)
        return len([x for x in led.records("commit") if x.decision >> 48 == shard_wanted])
    before = on_shard() if shard_wanted is not None else 0
    spent = 0
    made = 0
    while True:
        b = chat(p.model, 50, content="torn %d" % made)
        r = call(tg, CHAT, b, dict(bearer(secret), **{"x-mock-tokens": "7"}))
        assert r.status == 200, r
        spent += p.actual(*openai_usage(r))
        made += 1
        if shard_wanted is None:
            if made >= n:
                return spent
        elif on_shard() - before >= n and made >= n:
            return spent
        assert made < max_calls, "no call landed on shard %s" % shard_wanted


def last_segment(led, shard):
    segs = [s for s in led.segments if s.shard == shard]
    assert segs and segs[-1].last, segs
    return segs[-1]


def test_torn_tail_is_truncated(env):
    """A partial record then garbage at the end of a shard's last segment
    (what a crash mid-write leaves): tollgate starts, logs the torn tail,
    cuts the file back to its last whole record, and the spend is intact.
    Then garbage alone, and a record cut inside its length field. The first
    time, two whole records written by ledgerfile.encode() (a reservation
    and its commit) come before the tail: tollgate replays them (the
    reader's CRC-32C and layout are the daemon's) and keeps them."""
    p = Price("m", "1.00", "2.00")
    models = {"m": model("1.00", "2.00")}
    with Mock(env) as mk, Setup(env, mk, models, [key("k", "sk-t", "t", limit="10.00")],
                                teams={"t": {}}) as st:
        tg = st.start()
        spent = spend_some(tg, "sk-t", 3, p, shard_wanted=0, led_dir=st.dir)
        spent += spend_some(tg, "sk-t", 1, p, shard_wanted=1, led_dir=st.dir)
        tg.term()
        rng = random.Random(7)
        planted_id = 0xABCDE                     # shard 0
        fields = dict(key="k", team="t", provider="mock-openai", model="m",
                      prices_version=PRICES_VERSION, tags="app=planted")
        now_ms = int(time.time() * 1000)
        planted = [ledgerfile.encode("reserve", decision=planted_id, usd=20000,
                                     reserved=20000, input=100, output=1000, time_ms=now_ms,
                                     mode=HARD_GATE, **fields),
                   ledgerfile.encode("commit", decision=planted_id, usd=12345, reserved=20000,
                                     input=45, output=6150, status=200, time_ms=now_ms,
                                     mode=HARD_GATE, **fields)]
        for shard, whole, make_tail in (
                (0, b"".join(planted),
                 lambda rec: rec.raw[:30] + bytes(rng.randrange(256) for _ in range(300))),
                (1, b"", lambda rec: bytes(rng.randrange(256) for _ in range(157))),
                (0, b"", lambda rec: rec.raw[:5])):
            led = st.read().verify()
            seg = last_segment(led, shard)
            tail = make_tail(led.records("commit")[-1])
            with open(seg.path, "ab") as f:
                f.write(whole)
            with open(seg.path, "rb") as f:
                original = f.read()
            with open(seg.path, "ab") as f:
                f.write(tail)
            if whole:
                spent += 12345
            damaged = st.read()
            assert damaged.damage() == [(seg.name, ledgerfile.TORN_TAIL, len(original))], \
                damaged.damage()
            tg = st.start()
            log = tg.log()
            assert "torn tail" in log and seg.name in log, log
            assert "torn tail at byte %d" % len(original) in log, log
            assert "truncated %d bytes" % len(tail) in log, log
            with open(seg.path, "rb") as f:
                assert f.read() == original, "not truncated to its last whole record"
            assert quiet_state(tg, "sk-t", "key:k")["committed"] == spent
            # and it goes on working, on both shards
            spent += spend_some(tg, "sk-t", 1, p, shard_wanted=shard, led_dir=st.dir)
            assert quiet_state(tg, "sk-t", "key:k")["committed"] == spent
            tg.term()
        led = st.read().verify()
        assert_outcomes_once(led)
        assert spent_in(led) == spent
        assert [r.raw for r in led.by_decision()[planted_id]] == planted
        # decisions issued after it, on its shard, are past it
        at = led.by_decision()[planted_id][0].segment.seq
        later = [r.decision for r in led.records() if r.kind_name != "segment" and
                 r.segment.shard == 0 and r.segment.seq > at]
        assert later and min(later) > planted_id, [hex(d) for d in later]


# ---------------------------------------------------------------- 6. corruption

def test_corruption_stops_start_unless_repaired(env):
    """One bit flipped in a commit record in the middle of a segment: start
    refuses (exit 2) naming the segment, the offset and --ledger-repair.
    With --ledger-repair the damaged record is cut out and every other
    record kept; its reservation, left with no outcome, is then charged in
    full as an orphan."""
    p = Price("m", "1.00", "2.00")
    models = {"m": model("1.00", "2.00")}
    with Mock(env) as mk, Setup(env, mk, models, [key("k", "sk-c", "t", limit="10.00")],
                                teams={"t": {}}) as st:
        tg = st.start()
        spent = spend_some(tg, "sk-c", 6, p, shard_wanted=0, led_dir=st.dir)
        spent += spend_some(tg, "sk-c", 1, p, shard_wanted=1, led_dir=st.dir)
        tg.term()
        led = st.read().verify()
        seg = last_segment(led, 0)
        commits = [r for r in seg.records if r.kind_name == "commit"]
        victim = commits[len(commits) // 2]
        assert victim is not seg.records[-1]
        reserve = [r for r in led.by_decision()[victim.decision] if r.kind_name == "reserve"]
        assert len(reserve) == 1, reserve
        with open(seg.path, "rb") as f:
            original = f.read()
        flipped = bytearray(original)
        at = victim.offset + 32 + 1                # inside its usd field
        flipped[at] ^= 0x10
        with open(seg.path, "wb") as f:
            f.write(flipped)
        damaged = st.read()
        assert damaged.damage() == [(seg.name, ledgerfile.CORRUPT, victim.offset)], \
            damaged.damage()

        failed_start = st.start_failing()
        log = failed_start[1]
        line = [x for x in log.splitlines() if seg.name in x and "corrupt" in x]
        assert line, log
        assert "byte %d" % victim.offset in line[0] and "--ledger-repair" in line[0], line
        with open(seg.path, "rb") as f:
            assert f.read() == bytes(flipped), "a refused start changed the segment"

        tg = st.start(args=("--ledger-repair",))
        log = tg.log()
        assert seg.name in log and "repaired" in log, log
        assert "1 orphaned reservations charged" in log, log
        charged = spent - victim.usd + reserve[0].usd
        assert quiet_state(tg, "sk-c", "key:k")["committed"] == charged
        tg.term()
        # the expire of the reservation whose commit was lost
        recs = st.read().by_decision().get(victim.decision, [])
        assert kinds(recs) == ["reserve", "expire"], recs
        assert recs[1].usd == recs[1].reserved == reserve[0].usd, recs
        # the repaired segment: every record but the damaged one, as it was
        rep = st.read().verify()
        seg2 = [s for s in rep.segments if s.name == seg.name][0]
        want = [r.raw for r in seg.records if r is not victim]
        assert [r.raw for r in seg2.records] == want
        with open(seg.path, "rb") as f:
            assert f.read() == b"".join(want)
        assert not [n for n in os.listdir(st.dir) if n.endswith(".repair")], os.listdir(st.dir)
        assert_outcomes_once(rep)
        assert spent_in(rep) == charged
        # a plain start is clean again
        tg = st.start()
        assert quiet_state(tg, "sk-c", "key:k")["committed"] == charged
        tg.term()
        # last (so that the rest is checked whatever it says): the refused
        # start exited with the documented code, and cleanly
        assert_exit_2(failed_start)


# ---------------------------------------------------------------- 7. fsync, lock

def test_fsync_modes_and_directory_lock(env):
    """always, batch and never each book every call (read back after
    SIGTERM, replayed after a restart); a second tollgate on a ledger in use
    exits 2 saying so, and the first goes on."""
    po = Price("o", "1.00", "2.00")
    pa = Price("a", "1.00", "2.00")
    models = {"o": model("1.00", "2.00", cap=1000),
              "a": model("1.00", "2.00", provider="mock-anthropic", cap=1000)}
    with Mock(env, "--tokens", "9") as mk:
        for mode in ("always", "batch", "never"):
            with Setup(env, mk, models, [key("k", "sk-f", "t", limit="10.00")],
                       teams={"t": {}}, fsync=mode, batch_ms=20) as st:
                tg = st.start()
                spent, ids = 0, []
                with tg.conn() as c:
                    for path, p, b, usage in (
                            (CHAT, po, chat("o", 30), openai_usage),
                            (CHAT, po, chat("o", 40, stream=True,
                                            stream_options={"include_usage": True}),
                             openai_usage),
                            (MESSAGES, pa, messages("a", 20, stream=True), anthropic_usage),
                            (MESSAGES, pa, messages("a", 25), anthropic_usage)):
                        c.send(request("POST", path, b, bearer("sk-f")))
                        r = c.response()
                        assert r.status == 200, (mode, r)
                        ids.append((did_of(r), p.actual(*usage(r))))
                        spent += ids[-1][1]
                if mode == "batch":
                    failed_start = st.start_failing()
                    log = failed_start[1]
                    line = [x for x in log.splitlines() if "in use" in x]
                    assert line and st.dir in line[0], log
                    # the first one is unharmed
                    r = call(tg, CHAT, chat("o", 30), bearer("sk-f"))
                    assert r.status == 200, r
                    ids.append((did_of(r), po.actual(*openai_usage(r))))
                    spent += ids[-1][1]
                tg.term()
                led = st.read().verify()
                by = led.by_decision()
                for d, charge in ids:
                    assert kinds(by[d]) == ["reserve", "commit"], (mode, by[d])
                    assert by[d][1].usd == charge, (mode, by[d])
                assert len(by) == len(ids), (mode, by)
                tg = st.start()
                assert quiet_state(tg, "sk-f", "key:k")["committed"] == spent, mode
                tg.term()
        assert_exit_2(failed_start)


# ---------------------------------------------------------------- 8. rotation

def test_segment_rotation(env):
    """segment_mb: 1 and enough records: a shard writes several segments,
    each opened by its segment record, and a restart replays them all."""
    p = Price("m", "1.00", "2.00")
    models = {"m": model("1.00", "2.00", cap=1000)}
    kid = "rotation-key-" + "k" * 40
    keys = [key(kid, "sk-rot", "team-" + "t" * 50, limit="100.00", user="user-" + "u" * 50)]
    tags = ",".join("t%02d=%s" % (i, "v" * 10) for i in range(16))
    assert len(tags) <= 256, len(tags)
    run = "r" * 64
    with Mock(env, "--tokens", "3") as mk, Setup(
            env, mk, models, keys, teams={"team-" + "t" * 50: {"parent": "org-" + "o" * 50}},
            orgs={"org-" + "o" * 50: {}}, users={"user-" + "u" * 50: {}},
            segment_mb=1, workers=1) as st:
        tg = st.start()
        lock = threading.Lock()
        total = [0, 0]
        errors = []

        def load(n):
            try:
                with Conn(tg.port, 20.0) as c:
                    for i in range(n):
                        b = chat("m", 5)
                        c.send(request("POST", CHAT, b, dict(bearer("sk-rot"), **{
                            "X-Run-Id": run, "X-Budget-Tags": tags})))
                        r = c.response()
                        assert r.status == 200, r
                        a = p.actual(*openai_usage(r))
                        with lock:
                            total[0] += a
                            total[1] += 1
            except Exception as e:          # noqa: B902 - reported below
                errors.append(e)
        # one call books ~1.1 KB (reserve + commit): 1100 calls pass 1 MiB
        threads = [threading.Thread(target=load, args=(275,)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors[:3]
        spent = total[0]
        assert quiet_state(tg, "sk-rot", "key:" + kid)["committed"] == spent
        tg.term()
        led = st.read().verify()          # every segment starts with its own record
        segs = [s for s in led.segments if s.shard == 0]
        assert len(segs) >= 2, [(s.name, s.scan.size) for s in segs]
        assert [s.seq for s in segs] == list(range(1, len(segs) + 1)), segs
        for s in segs[:-1]:
            assert s.scan.size >= 1 << 20, (s.name, s.scan.size)
        rec = led.records("commit")[0]
        assert rec.size > 500 and rec.tags == tags and rec.run == run, rec
        assert len(led.records("commit")) == total[1]
        assert_outcomes_once(led)
        assert spent_in(led, key=kid) == spent
        # replay reads every segment
        tg = st.start()
        assert quiet_state(tg, "sk-rot", "key:" + kid)["committed"] == spent
        assert run_state(tg, "sk-rot", run)["committed"] == spent
        tg.term()


# ---------------------------------------------------------------- found bugs

def test_reserve_records_carry_the_mode_in_force(env):
    """record.h: byte 14 is the budget mode in force. A hard_gate call's
    reserve record must say hard_gate like its commit does (booking_reserve
    runs before the reply head sets ex->mode_in_force)."""
    models = {"m": model("1.00", "2.00")}
    with Mock(env) as mk, Setup(env, mk, models, [key("k", "sk-m", "t", limit="1.00")],
                                teams={"t": {}}) as st:
        tg = st.start()
        r = call(tg, CHAT, chat("m", 10), bearer("sk-m"))
        assert r.status == 200 and r.headers["x-budget-enforcement-mode"] == "hard_gate", r
        tg.term()
        recs = st.read().verify().by_decision()[did_of(r)]
        assert [(x.kind_name, ledgerfile.MODES[x.mode]) for x in recs] == \
            [("reserve", "hard_gate"), ("commit", "hard_gate")], recs


def test_start_up_records_are_written_without_traffic(env):
    """What a start books before the first request (each shard's segment
    record, the expires of orphans) reaches the disk without waiting for
    traffic on that shard: the expire is what makes an orphan's charge
    durable, and a daemon killed again before writing it replays it anew."""
    models = {"m": model("0", "1.00", cap=4000)}
    with Mock(env) as mk, Setup(env, mk, models, [key("k", "sk-w", "t", limit="1.00")],
                                teams={"t": {}}, workers=2) as st:
        tg = st.start()
        c = tg.conn(timeout=30.0)
        c.send(request("POST", CHAT, chat("m", 1000, stream=True), dict(bearer("sk-w"), **{
            "x-mock-tokens": "3000", "x-mock-token-delay-us": "2000"})))
        status, hdrs = c.head()
        assert status == 200, hdrs
        d = int(hdrs["x-budget-decision-id"][2:], 16)
        wait_until(lambda: d in st.read().by_decision(), 10.0, what="the reserve record")
        tg.kill9()
        c.close()
        tg = st.start()                # its readiness probe is its only connection
        n_segs = len(st.read().segments)

        def written():
            led = st.read()
            newest = [s for s in led.segments if s.last]
            return (len(led.segments) == n_segs and len(newest) == 2 and
                    all(s.records and s.records[0].kind_name == "segment" for s in newest) and
                    "expire" in kinds(led.by_decision().get(d, [])))
        try:
            wait_until(written, 5.0, step=0.05,
                       what="the new segments' first records and the orphan's expire")
        except AssertionError as e:
            sizes = {s.name: s.scan.size for s in st.read().segments}
            tg.term()                  # (which writes them)
            raise AssertionError("%s; segment sizes meanwhile: %r" % (e, sizes))
        tg.term()


def test_budget_state_reads_book_nothing(env):
    """GET /v1/budget and GET /v1/budget/runs/{id} read budgets; they are no
    call and must not appear in the ledger (each once booked a `refuse`
    record with status 200 and no model)."""
    models = {"m": model("1.00", "2.00")}
    with Mock(env) as mk, Setup(env, mk, models, [key("k", "sk-s", "t", limit="1.00")],
                                teams={"t": {}}) as st:
        tg = st.start()
        r = call(tg, CHAT, chat("m", 10), dict(bearer("sk-s"), **{"X-Run-Id": "read-run"}))
        assert r.status == 200, r
        d = did_of(r)
        budget_state(tg, "sk-s")
        assert run_state(tg, "sk-s", "read-run") is not None
        tg.term()
        by = st.read().verify().by_decision()
        assert list(by) == [d], [recs for x, recs in by.items() if x != d]


def test_record_times_never_go_back(env):
    """A shard appends its records in the order things happen, so their
    times (UTC ms) never decrease along a segment. booking.c dates a record
    clock.now_s * 1000 + now_ms % 1000: wall-clock seconds plus the
    milliseconds of the *monotonic* clock, which wrap at another instant
    than the wall second, so during part of every second records are dated
    up to 999 ms early and the sequence steps back."""
    models = {"m": model("1.00", "2.00")}
    with Mock(env) as mk, Setup(env, mk, models, [key("k", "sk-time", "t", limit="100.00")],
                                teams={"t": {}}, workers=1) as st:
        tg = st.start()
        t0 = time.monotonic()
        wall = []
        with tg.conn() as c:
            while time.monotonic() - t0 < 2.2:       # across two wall-second edges
                c.send(request("POST", CHAT, chat("m", 5), bearer("sk-time")))
                r = c.response()
                assert r.status == 200, r
                wall.append(int(time.time() * 1000))
        tg.term()
        led = st.read().verify()
        recs = [r for r in led.records(("reserve", "commit"))]
        assert len(recs) == 2 * len(wall), (len(recs), len(wall))
        back = [(a, b) for a, b in zip(recs, recs[1:]) if b.time_ms < a.time_ms]
        assert not back, ("%d of %d records dated before the one written ahead of them, "
                          "first: %r" % (len(back), len(recs), back[0]))


def test_close_delimited_reply_ends_after_its_commit(env):
    """A provider reply that ends only when the provider closes (no length,
    not chunked) ends for the agent with its connection's close: that close
    comes only after the commit record is written (the end was not a send,
    so it is held in exchange_finish). Read the ledger the moment the agent
    sees EOF: the commit is there, priced from the reply's usage."""
    from harness import FakeProvider
    p = Price("m", "1.00", "2.00")
    body = (b'{"id":"x","object":"chat.completion","choices":[{"index":0,"message":'
            b'{"role":"assistant","content":"hi"},"finish_reason":"stop"}],'
            b'"usage":{"prompt_tokens":11,"completion_tokens":7,"total_tokens":18}}')

    def respond(conn_no, req_no, raw):
        return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Connection: close\r\n\r\n" + body, True)

    with Mock(env) as mk, FakeProvider(respond) as fp:
        providers = {"fake": {"base_url": "http://%s:%d/v1" % (LOOPBACK, fp.port),
                              "format": "openai", "timeout_ms": 5000}}
        models = {"m": model("1.00", "2.00", provider="fake", cap=100)}
        with Setup(env, mk, models, [key("k", "sk-cd", "t", limit="5.00")],
                   teams={"t": {}}, providers=providers) as st:
            tg = st.start()
            for i in range(5):
                with Conn(tg.port) as c:
                    c.send(request("POST", CHAT, chat("m", 50, content="cd %d" % i),
                                   dict(bearer("sk-cd"))))
                    r = c.response()      # no length, not chunked: read to EOF
                    assert r.status == 200 and r.body == body, r
                    did = did_of(r)
                    commits = [x for x in ledgerfile.read(st.dir).records("commit")
                               if x.decision == did]
                    assert len(commits) == 1, "EOF came before the commit was written"
                    assert commits[0].usd == p.actual(11, 7), (commits[0].usd, p.actual(11, 7))
            tg.term()
