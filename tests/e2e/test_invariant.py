"""End-to-end: the hard_gate invariant under parallel load (SPEC §4).

    committed + reserved <= limit, for every hard_gate scope, at every moment,
    across both shards.

Setup shared by both tests: two workers (shards), one team "t" with a
$3.00 `window: total, mode: hard_gate` budget, two keys under it (no key
budget of their own) whose run policy gives every run a $1.00 limit, and
four named runs (run-a, run-b owned by key a; run-c, run-d by key b). The
runs are offered about $4.00 of calls in all, more than the team has, and
run-a alone more than $1.50, so both a run scope and the team scope refuse
during the load.

Every call is made on its own new connection (Connection: close), from 64
client threads at once: SO_REUSEPORT spreads the connections over both
shards, so reservations, commits and leases race on both.

While the load runs, two sampler threads (one keep-alive connection each)
poll GET /v1/budget (each run's key, X-Run-Id naming the run, in turn) as
fast as they can and check, for the run scope and the team scope of every
sample, committed + reserved <= limit. They must take more than MIN_SAMPLES
readings, some with money reserved (calls in flight), so the check cannot
pass vacuously. (A reading sums per-shard counters one by one; with
actual == estimate a shard's committed + reserved only grows, so a reading
is never above the true total at its end. With refunds a torn reading could
in principle overstate; none has been seen, and one would be reported.)

Money is exact integer micro-USD throughout (helpers from test_budget,
mirroring core/pricing.c). What each call was charged is computed from what
the client saw (mockllm's reported usage x price), never assumed.
"""

import json
import os
import socket
import struct
import sys
import threading
import time

from harness import CHAT, Conn, Mock, problem, request, sse_events, wait_until
from test_budget import (SLACK, Price, bearer, body_bytes, budget, key, micros, model,
                         openai_usage, start, text_bytes, usd)

RUNS = {"run-a": "sk-inv-a", "run-b": "sk-inv-a", "run-c": "sk-inv-b", "run-d": "sk-inv-b"}
RUN_LIMIT = micros("1.00")
TEAM_LIMIT = micros("3.00")
N_CONNS = 64
MIN_SAMPLES = 50


def team_and_keys():
    keys = [key("a", "sk-inv-a", "t", run_limit="1.00"),
            key("b", "sk-inv-b", "t", run_limit="1.00")]
    return keys, {"t": {"budget": budget("3.00")}}


def interleave(jobs):
    """A fixed shuffle, so every connection mixes runs and kinds of call."""
    n = len(jobs)
    return [jobs[i] for i in sorted(range(n), key=lambda i: (i * 7919) % n)]


# ---------------------------------------------------------------- budget state

def budget_state(conn_or_port, run):
    """{scope name: {limit, committed, reserved, remaining, mode}} of `run`'s
    key with X-Run-Id: run (GET /v1/budget)."""
    hdrs = dict(bearer(RUNS[run]), **{"X-Run-Id": run})
    if isinstance(conn_or_port, Conn):
        conn_or_port.send(request("GET", "/v1/budget", None, hdrs))
        r = conn_or_port.response()
    else:
        c = Conn(conn_or_port, 10.0)
        try:
            c.send(request("GET", "/v1/budget", None, hdrs, close=True))
            r = c.response()
        finally:
            c.close()
    assert r.status == 200, r
    out = {}
    for sc in json.loads(r.body)["scopes"]:
        out[sc["scope"]] = {"limit": micros(sc["limit_usd"]),
                            "committed": micros(sc["committed_usd"]),
                            "reserved": micros(sc["reserved_usd"]),
                            "remaining": micros(sc["remaining_usd"]),
                            "mode": sc["mode"]}
    return out


def settled_all(port, timeout=5.0):
    """Waits until no scope of any run holds a reservation, twice in a row
    with the same figures (a commit writes `reserved -= r` then
    `committed += a`, per shard: a read in between sees neither), and
    returns {run: state}. Fails if a reservation is still held at the end:
    a leaked reservation never settles."""
    last = [None]

    def quiet():
        st = {run: budget_state(port, run) for run in RUNS}
        prev, last[0] = last[0], st
        if any(sc["reserved"] for s in st.values() for sc in s.values()):
            return None
        return st if st == prev else None
    try:
        return wait_until(quiet, timeout, step=0.05, what="every reservation to settle")
    except AssertionError:
        raise AssertionError("reservations still held %.1fs after the load: %r" %
                             (timeout, last[0]))


class Sampler(threading.Thread):
    """Polls GET /v1/budget for every run in turn until stopped; checks
    committed + reserved <= limit on the run scope and the team scope of
    every sample. Violations are collected (raised by check())."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self.port = port
        self.stop = threading.Event()
        self.samples = 0            # scope readings checked
        self.busy = 0               # ... of which had money reserved
        self.violations = []
        self.errors = []

    def run(self):
        conn = None
        runs = list(RUNS)
        i = 0
        while not self.stop.is_set():
            run = runs[i % len(runs)]
            i += 1
            try:
                if conn is None:
                    conn = Conn(self.port, 10.0)
                st = budget_state(conn, run)
            except (OSError, EOFError) as e:
                if conn is not None:
                    conn.close()
                conn = None
                self.errors.append(repr(e))
                if len(self.errors) > 20:
                    return
                continue
            except Exception as e:      # noqa: B902 - reported by check()
                self.errors.append(repr(e))
                return
            for name in ("run:" + run, "team:t"):
                sc = st.get(name)
                if sc is None:
                    continue            # the run is not open yet
                self.samples += 1
                if sc["reserved"]:
                    self.busy += 1
                if sc["committed"] + sc["reserved"] > sc["limit"] or sc["reserved"] < 0 or \
                        sc["committed"] < 0:
                    self.violations.append((name, sc))
        if conn is not None:
            conn.close()



class Samplers:
    """Two samplers (two connections, each on whichever shard took it)."""

    def __init__(self, port):
        self.all = [Sampler(port) for _ in range(2)]
        for s in self.all:
            s.start()

    def check(self):
        for s in self.all:
            s.stop.set()
        for s in self.all:
            s.join(10)
            assert not s.is_alive(), "a sampler did not stop"
        violations = [v for s in self.all for v in s.violations]
        errors = [e for s in self.all for e in s.errors]
        samples = sum(s.samples for s in self.all)
        busy = sum(s.busy for s in self.all)
        assert not violations, ("committed + reserved above the limit",
                                len(violations), violations[:5])
        assert not errors, ("sampler errors", errors[:5])
        assert samples > MIN_SAMPLES, ("too few samples", samples)
        assert busy > 0, ("no sample saw a reservation in flight", samples)
        return samples, busy


# ---------------------------------------------------------------- one call

class Seen:
    """What the client saw of one call."""

    def __init__(self, run, kind, body, status, headers, payload, complete, left=False):
        self.run, self.kind, self.body = run, kind, body
        self.status, self.headers, self.payload = status, headers, payload
        self.complete = complete    # the whole reply arrived (framing says so)
        self.left = left            # the client closed after the first chunk

    def usage(self):
        class R:
            pass
        r = R()
        r.body = self.payload
        r.json = lambda: json.loads(self.payload)
        return openai_usage(r)

    def __repr__(self):
        return "<%s %s %s complete=%s left=%s %r %r>" % (
            self.run, self.kind, self.status, self.complete, self.left, self.headers,
            self.payload[-300:])


def one_call(port, run, kind, body, hdrs, leave=False):
    """One call on a new connection. With `leave`, a 200 reply is abandoned
    right after its first chunk (the socket is reset, as an agent killed
    mid-reply). A reply cut short (EOF or reset) is `complete=False`."""
    c = Conn(port, 20.0)
    try:
        c.send(request("POST", CHAT, body, dict(bearer(RUNS[run]),
                                                **dict(hdrs, **{"X-Run-Id": run})),
                       close=True))
        status, h = c.head()
        if leave and status == 200:
            first = c.chunk()
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return Seen(run, kind, body, status, h, first, False, left=True)
        parts, complete = [], False
        try:
            if h.get("transfer-encoding", "").lower() == "chunked":
                while True:
                    ch = c.chunk()
                    if not ch:
                        break
                    parts.append(ch)
            elif "content-length" in h:
                parts.append(c.exact(int(h["content-length"])))
            else:
                raise AssertionError("a reply with no framing: %r" % (h,))
            complete = True
        except (EOFError, ConnectionResetError):
            parts.append(c.buf)
        return Seen(run, kind, body, status, h, b"".join(parts), complete)
    finally:
        c.close()


def run_load(port, jobs):
    """Runs `jobs` [(run, kind, body, hdrs, leave)] from N_CONNS threads, each
    call on its own connection. Returns [Seen] (raises on a client error)."""
    results, errors, lock = [], [], threading.Lock()

    def worker(share):
        out = []
        try:
            for run, kind, body, hdrs, leave in share:
                out.append(one_call(port, run, kind, body, hdrs, leave))
        except Exception as e:      # noqa: B902 - reported below
            with lock:
                errors.append(repr(e))
        with lock:
            results.extend(out)
    threads = [threading.Thread(target=worker, args=(jobs[i::N_CONNS],), daemon=True)
               for i in range(N_CONNS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "load threads still running after 60s"
    assert not errors, errors[:3]
    assert len(results) == len(jobs), (len(results), len(jobs))
    return results


def shards_of(results):
    """The shards that decided these calls: a decision id holds its shard
    in bits 48 and up (net/budget_api.c put_id)."""
    return {int(s.headers["x-budget-decision-id"][2:], 16) >> 48 for s in results}


def check_headers(seen):
    """Every reply: the tightest scope's remaining is >= 0 (committed +
    reserved never past a limit when the decision was made), and an allowed
    call carries a reservation id."""
    h = seen.headers
    assert micros(h["x-budget-remaining-usd"]) >= 0, (seen, h)
    if seen.status == 402:
        assert h.get("x-budget-decision") == "block", seen
    else:
        assert h.get("x-budget-decision") == "allow", seen
        assert h.get("x-budget-reservation-id"), seen
        assert h.get("x-budget-enforcement-mode") == "hard_gate", seen


# ---------------------------------------------------------------- 1. exact costs

def test_invariant_exact_costs_400_calls(env):
    """400 parallel calls whose actual cost equals their worst-case estimate.

    Model "mx": input price 0, output $260/Mtok; every call asks max_tokens
    50 and mockllm replies with exactly 50 completion tokens, so estimate ==
    actual == E = 13000 micro-USD for every call: no refund ever frees
    money, and $1.00 / E = 76.9 is not an integer (the edge: 12000 micro-USD
    of a run can never be spent). A run admits at most N_RUN = 1e6 // E = 76
    calls, the team N_TEAM = 3e6 // E = 230 (< 4 x 76, so the team binds
    overall). Runs are offered 160, 120, 60 and 60 calls: run-a twice its
    ceiling, so it meets it (so far always within the load), and the team
    refuses the rest.

    Checked: the sampler's committed + reserved <= limit on every reading;
    every reply's remaining >= 0; after the load, reserved == 0 on every
    scope and each run's committed == Σ (usage x price) of its 200 replies,
    the team's the sum over all, to the micro-dollar; counts within
    N_RUN / N_TEAM. A refusal with money left can come from a lease parked
    on the other shard (docs/budget.md), so the exact count is checked after
    a sequential drain on fresh connections: keep calling until the team
    refuses with less than E remaining (runs that refuse with less than E
    drop out). Then the calls allowed in all are exactly N_TEAM, and a run
    drained that way has exactly N_RUN.
    """
    T = 50
    px = Price("mx", "0", "260.00")
    body = body_bytes({"model": "mx", "max_tokens": T,
                       "messages": [{"role": "user", "content": "invariant"}]})
    E = px.estimate(body, T)
    assert E == 13000 and px.actual(0, T) == E, E
    n_run, n_team = RUN_LIMIT // E, TEAM_LIMIT // E
    assert (n_run, n_team) == (76, 230) and RUN_LIMIT % E and TEAM_LIMIT % E
    assert n_team < 4 * n_run
    hdrs = {"x-mock-tokens": str(T), "x-mock-first-byte-delay-ms": "10"}
    jobs = []
    for run, n in (("run-a", 160), ("run-b", 120), ("run-c", 60), ("run-d", 60)):
        jobs += [(run, "exact", body, hdrs, False)] * n
    jobs = interleave(jobs)
    assert len(jobs) == 400

    keys, teams = team_and_keys()
    with Mock(env, "--tokens", "16", "--threads", "2") as mk, start(
            env, mk, {"mx": model("0", "260.00")}, keys, teams=teams, workers=2) as tg:
        sampler = Samplers(tg.port)
        t0 = time.monotonic()
        results = run_load(tg.port, jobs)
        took = time.monotonic() - t0

        n_ok = {run: 0 for run in RUNS}
        spent = {run: 0 for run in RUNS}
        codes = {}
        ids = set()
        for s in results:
            check_headers(s)
            ids.add(s.headers["x-budget-decision-id"])
            if s.status == 200:
                assert s.complete, s
                inp, out = s.usage()
                assert out == T, s
                a = px.actual(inp, out)
                assert a == E, (a, E)
                n_ok[s.run] += 1
                spent[s.run] += a
            else:
                j = problem(_response(s), 402)
                assert j["code"] in ("run_ceiling_reached", "team_ceiling_reached"), j
                codes[j["code"]] = codes.get(j["code"], 0) + 1
        assert len(ids) == len(results), "decision ids repeated"
        assert shards_of(results) == {0, 1}, shards_of(results)
        assert sum(n_ok.values()) + sum(codes.values()) == 400, (n_ok, codes)

        def bounds(phase):
            assert sum(n_ok.values()) <= n_team, (phase, n_ok)
            assert sum(spent.values()) <= TEAM_LIMIT, (phase, spent)
            for run in RUNS:
                assert n_ok[run] <= n_run and spent[run] <= RUN_LIMIT, (phase, run, n_ok)
        bounds("load")
        load_ok = dict(n_ok)

        # After the load: nothing reserved anywhere, committed exact. (The
        # samplers keep checking until the drain is over.)
        st = settled_all(tg.port)
        check_committed(st, spent, "after the load")

        # Sequential drain to the last micro-dollar.
        active = list(RUNS)
        team_done = False
        parked = 0
        deadline = time.monotonic() + 20
        i = 0
        while active and not team_done:
            assert time.monotonic() < deadline, ("drain did not finish", n_ok, active)
            run = active[i % len(active)]
            i += 1
            s = one_call(tg.port, run, "exact", body, {"x-mock-tokens": str(T)})
            check_headers(s)
            if s.status == 200:
                assert s.complete, s
                a = px.actual(*s.usage())
                assert a == E, (a, E)
                n_ok[run] += 1
                spent[run] += a
                continue
            j = problem(_response(s), 402)
            b = j["budget"]
            if b["reserved_usd"] != "0.00" or micros(b["remaining_usd"]) >= E:
                parked += 1             # settling, or a lease parked on the other shard
                time.sleep(0.01)
                continue
            if j["code"] == "run_ceiling_reached":
                assert b["scope"] == "run:" + run, j
                assert n_ok[run] == n_run, (run, n_ok, j)
                active.remove(run)
            else:
                assert j["code"] == "team_ceiling_reached" and b["scope"] == "team:t", j
                team_done = True
        assert team_done, ("every run drained before the team", n_ok)
        samples, busy = sampler.check()
        bounds("drain")
        # Exactly what the worst-case estimates admit.
        assert sum(n_ok.values()) == n_team, (n_ok, load_ok)
        st = settled_all(tg.port)
        check_committed(st, spent, "after the drain")
        assert st["run-a"]["team:t"]["remaining"] == TEAM_LIMIT - n_team * E < E
        _note("exact: load %.2fs, allowed %r (load %r), refusals %r, drain retries %d, "
              "samples %d (%d with money reserved)" %
              (took, n_ok, load_ok, codes, parked, samples, busy))


def _response(seen):
    class R:
        pass
    r = R()
    r.status, r.headers, r.body = seen.status, seen.headers, seen.payload
    r.json = lambda: json.loads(seen.payload)
    return r


def _note(line):
    """One line of figures on stderr when E2E_VERBOSE is set."""
    if os.environ.get("E2E_VERBOSE"):
        print("  [test_invariant] " + line, file=sys.stderr)


def check_committed(st, spent, phase):
    """Every run's scope and the team: reserved 0, committed == spent."""
    for run in RUNS:
        sc = st[run]
        assert list(sc) == ["run:" + run, "team:t"], (phase, sc)
        r = sc["run:" + run]
        assert r["mode"] == "hard_gate" and sc["team:t"]["mode"] == "hard_gate", (phase, sc)
        assert r["limit"] == RUN_LIMIT and r["reserved"] == 0, (phase, run, r)
        assert r["committed"] == spent[run], (phase, run, r, spent[run])
        assert r["remaining"] == RUN_LIMIT - spent[run], (phase, run, r)
        t = sc["team:t"]
        assert t["limit"] == TEAM_LIMIT and t["reserved"] == 0, (phase, t)
        assert t["committed"] == sum(spent.values()), (phase, t, spent)


# ---------------------------------------------------------------- 2. failures

def stream_error(s):
    """The code of the final error event of a streamed reply, or None."""
    for _, data in sse_events(s.payload):
        if data and data.startswith('{"error"'):
            return json.loads(data)["error"]["code"]
    return None


def test_invariant_refunds_failures_and_disconnects(env):
    """The same load, with refunds, provider failures and agents leaving.

    Model "mr": input $1/Mtok, output $400/Mtok, max_tokens 50. Kinds of
    call (10% to 40% each), and what tollgate must charge (net/settle.c):

        ok            complete 200, 20 of 50 tokens   usage x price (< estimate)
        ok_stream     complete SSE with usage         usage x price (< estimate)
        status500     complete provider 500           0
        reset0        mockllm resets before any byte  0 (502, released)
        reset_body    reset mid-body (non-stream)     the whole reservation
        reset_stream  reset after 3 stream events     input bound + text counted (the
                                                      agent gets an error event)
        leave         agent resets its socket after   input bound + text counted until
                      the first chunk of a slow stream  tollgate saw it go

    Each call is classified from what the client saw, never from the kind
    asked for: a 402 costs 0; a complete 200 its usage x price; a complete
    provider error 0; tollgate's own 502 (no usable reply) 0; a stream the
    provider broke off, which tollgate ends with an error event, its input
    bound and the text counted; a non-streamed 200 cut short the whole
    reservation (its estimate, computed here from its body).

    The one charge the client cannot know exactly is `leave`'s: the agent
    is gone before tollgate has the end of the reply, but whether tollgate
    noticed before the provider finished is timing (the stream lasts 400 ms
    after the first chunk, so it practically always does), and how much
    text had passed by then. Those calls are bounded instead: each is
    charged between its input bound alone and its estimate. Their exact charge is read
    from each call's decision record (GET /budget/decisions/{id}), which
    must agree with the client for every other call, and the totals must
    then match to the micro-dollar.

    Checked: the sampler's committed + reserved <= limit; every reply's
    remaining >= 0; afterwards reserved == 0 on every scope (no leaked
    reservation) and committed exact, per run and for the team.
    """
    T = 50
    pr = Price("mr", "1.00", "400.00")
    plain = body_bytes({"model": "mr", "max_tokens": T,
                        "messages": [{"role": "user", "content": "refunds"}]})
    stream = body_bytes({"model": "mr", "max_tokens": T, "stream": True,
                         "stream_options": {"include_usage": True},
                         "messages": [{"role": "user", "content": "refunds"}]})
    E = {plain: pr.estimate(plain, T), stream: pr.estimate(stream, T)}
    LEAVE_TOKENS = 40
    keys, teams = team_and_keys()
    with Mock(env, "--tokens", "16", "--threads", "2") as mk:
        # Where mockllm's reply head ends, to reset 10 bytes into the body.
        direct = mk.conn()
        direct.send(request("POST", CHAT, plain, {"x-mock-tokens": "20"}))
        head_len = len(direct.until(b"\r\n\r\n"))
        direct.close()
        slow = {"x-mock-first-byte-delay-ms": "10"}
        kinds = {
            "ok": (plain, dict(slow, **{"x-mock-tokens": "20"}), False),
            "ok_stream": (stream, dict(slow, **{"x-mock-tokens": "20",
                                                "x-mock-tokens-per-event": "4"}), False),
            "status500": (plain, dict(slow, **{"x-mock-status": "500"}), False),
            "reset0": (plain, dict(slow, **{"x-mock-reset-after": "0"}), False),
            "reset_body": (plain, dict(slow, **{"x-mock-tokens": "20",
                                                "x-mock-reset-after": str(head_len + 10)}),
                           False),
            "reset_stream": (stream, dict(slow, **{"x-mock-tokens": "20",
                                                   "x-mock-reset-after": "3"}), False),
            "leave": (stream, {"x-mock-tokens": str(LEAVE_TOKENS),
                               "x-mock-token-delay-us": "10000"}, True),
        }
        pattern = ["ok", "ok_stream", "status500", "ok", "reset0", "reset_body", "ok",
                   "reset_stream", "leave", "ok"]
        jobs = []
        for run, n in (("run-a", 160), ("run-b", 110), ("run-c", 70), ("run-d", 60)):
            for i in range(n):
                kind = pattern[i % len(pattern)]
                b, h, leave = kinds[kind]
                jobs.append((run, kind, b, h, leave))
        jobs = interleave(jobs)
        assert len(jobs) == 400

        with start(env, mk, {"mr": model("1.00", "400.00")}, keys, teams=teams,
                   workers=2) as tg:
            sampler = Samplers(tg.port)
            t0 = time.monotonic()
            results = run_load(tg.port, jobs)
            took = time.monotonic() - t0
            samples, busy = sampler.check()

            exact = {run: 0 for run in RUNS}      # charges the client knows exactly
            low = {run: 0 for run in RUNS}        # bounds of the `leave` charges
            high = {run: 0 for run in RUNS}
            expect = {}                           # decision id -> (Seen, charge or None)
            outcome_of = {}                       # how each call was classified
            codes = {}
            for s in results:
                check_headers(s)
                e = E[s.body]
                did = s.headers["x-budget-decision-id"]
                if s.status == 402:
                    j = problem(_response(s), 402)
                    assert j["code"] in ("run_ceiling_reached", "team_ceiling_reached"), j
                    assert j["budget"]["estimate_usd"] == usd(e), (j, e)
                    codes[j["code"]] = codes.get(j["code"], 0) + 1
                    cls, charge = "refused", 0
                elif s.left:
                    cls, charge = "left", None
                    low[s.run] += pr.actual(len(s.body) + SLACK, 0)
                    high[s.run] += e
                elif s.status == 200 and s.complete and stream_error(s):
                    # a metered stream the provider broke off: ended by tollgate
                    # with an error event, charged the input at its bound and
                    # the text counted before the break (net/meter.h)
                    assert stream_error(s) == "upstream_failed", s
                    cls = "stream_cut"
                    charge = pr.actual(len(s.body) + SLACK, min(text_bytes(s.payload), T))
                elif s.status == 200 and s.complete:
                    if s.body == stream:
                        assert sse_events(s.payload)[-1][1] == "[DONE]", s
                    cls = "complete"
                    charge = pr.actual(*s.usage())
                    assert 0 < charge < e, (s, charge, e)
                elif s.status == 200:
                    cls, charge = "partial", e
                elif s.status == 500 and s.complete:
                    assert json.loads(s.payload)["error"], s
                    cls, charge = "provider_error", 0
                elif s.status == 502 and s.complete:
                    problem(_response(s), 502, "upstream_failed")
                    cls, charge = "released", 0
                else:
                    raise AssertionError("unexpected reply: %r" % (s,))
                outcome_of[(s.kind, cls)] = outcome_of.get((s.kind, cls), 0) + 1
                if charge is not None:
                    exact[s.run] += charge
                if s.status != 402:
                    expect[did] = (s, charge)
            # Each failure kind was really exercised (as allowed calls).
            assert shards_of(results) == {0, 1}, shards_of(results)
            for kind, cls in (("ok", "complete"), ("ok_stream", "complete"),
                              ("status500", "provider_error"), ("reset0", "released"),
                              ("reset_body", "partial"), ("reset_stream", "stream_cut"),
                              ("leave", "left")):
                assert outcome_of.get((kind, cls), 0) > 0, (kind, cls, outcome_of)
            # Nothing classified against its kind, except refusals.
            odd = {k: v for k, v in outcome_of.items() if k[1] != "refused" and k not in (
                ("ok", "complete"), ("ok_stream", "complete"),
                ("status500", "provider_error"), ("reset0", "released"),
                ("reset_body", "partial"), ("reset_stream", "stream_cut"), ("leave", "left"))}
            assert not odd, odd

            # No leaked reservation; committed within the bounds.
            st = settled_all(tg.port)
            for run in RUNS:
                r = st[run]["run:" + run]
                assert r["reserved"] == 0 and r["limit"] == RUN_LIMIT, (run, r)
                assert exact[run] + low[run] <= r["committed"] <= exact[run] + high[run], \
                    (run, r, exact[run], low[run], high[run])
                assert r["committed"] <= RUN_LIMIT, (run, r)
            t = st["run-a"]["team:t"]
            assert t["reserved"] == 0 and t["committed"] <= TEAM_LIMIT, t
            assert sum(exact.values()) + sum(low.values()) <= t["committed"] <= \
                sum(exact.values()) + sum(high.values()), (t, exact, low, high)

            # The decision records: the same charge as the client saw, and the
            # exact charge of the calls the client left.
            spent = dict(exact)
            left_whole = 0
            for did, (s, charge) in expect.items():
                r = _decision(tg.port, s.run, did)
                assert r["decision"] == "allow" and r["run_id"] == s.run, (s, r)
                actual = micros(r["actual_usd"])
                assert micros(r["reserved_usd"]) == E[s.body], (s, r)
                if charge is not None:
                    assert actual == charge, ("decision record disagrees", s, r, charge)
                    assert r["outcome"] == ("released" if s.status == 502 else "committed"), \
                        (s, r)
                else:
                    assert r["outcome"] == "committed", (s, r)
                    assert pr.actual(len(s.body) + SLACK, 0) <= actual <= E[s.body], (s, r)
                    left_whole += actual == E[s.body]
                    spent[s.run] += actual
            check_committed(st, spent, "after the load")
            # And limits were reached: $4.00 or so was asked of a $3.00 team,
            # and run-a alone asked for about $1.60. (Which scope refuses
            # first is timing; only that some did is asserted.)
            assert sum(codes.values()) > 0, codes
            n_left = sum(v for k, v in outcome_of.items() if k[1] == "left")
            _note("failures: load %.2fs, refusals %r, outcomes %r, left calls charged whole %d/%d, "
                  "committed %r, samples %d (%d with money reserved)" %
                  (took, codes, sorted(outcome_of.items()), left_whole, n_left,
                   {k: usd(v) for k, v in spent.items()}, samples, busy))


def _decision(port, run, did):
    c = Conn(port, 10.0)
    try:
        c.send(request("GET", "/budget/decisions/" + did, None, bearer(RUNS[run]), close=True))
        r = c.response()
    finally:
        c.close()
    assert r.status == 200, (did, r)
    return json.loads(r.body)
