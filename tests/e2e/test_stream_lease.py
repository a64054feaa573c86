"""End-to-end: run.stream_lease (SPEC §5, net/stream.c extend_lease).

A stream of a key with stream_lease starts with its input and one lease
step (256 tokens) of output reserved instead of its worst case, and
extends as tokens are counted, keeping a step of headroom. When an
extension is refused, the stream is cut with <scope>_ceiling_reached while
what it cost is still covered: committed never passes the limit.

Model "m": input free, output $1/Mtok, so a token costs exactly 1 micro-USD
and a stream's charge is its output tokens (the provider's usage, which
tollgate asks for, or the counted bound of bytes of text if it was cut).
"""

import json
import threading

from harness import CHAT, Mock, call, request, sse_events
from test_budget import bearer, body_bytes, budget, key, micros, model, start

LIMIT = 3000          # the run's limit in micro-USD = output tokens


def lease_key(kid, secret, lease=True):
    k = key(kid, secret, "t", run_limit="0.003")
    k["run"]["stream_lease"] = lease
    return k


def stream_body(max_tokens):
    return body_bytes({"model": "m", "max_tokens": max_tokens, "stream": True,
                       "messages": [{"role": "user", "content": "lease"}]})


def run_state(tg, secret, run):
    r = call(tg, "/v1/budget/runs/" + run, None, bearer(secret), method="GET")
    assert r.status == 200, r
    return {s["scope"]: s for s in json.loads(r.body)["scopes"]}["run:" + run]


def test_lease_lets_a_stream_start_and_cuts_it_at_the_limit(env):
    """The worst case (4000) does not fit the run (3000): without a lease
    the call is refused; with one it starts, and a stream that goes on
    (mockllm: 2000 tokens, ~5 bytes each) is cut at the run's ceiling with
    nothing charged past the limit and nothing left reserved."""
    models = {"m": model("0", "1.00", cap=4000)}
    keys = [lease_key("kl", "sk-l"), lease_key("kn", "sk-n", lease=False)]
    with Mock(env) as mk, start(env, mk, models, keys,
                                teams={"t": {"budget": budget("10.00")}}) as tg:
        b = stream_body(4000)
        r = call(tg, CHAT, b, dict(bearer("sk-n"), **{"X-Run-Id": "plain"}))
        assert r.status == 402 and json.loads(r.body)["code"] == "run_ceiling_reached", r
        r = call(tg, CHAT, b, dict(bearer("sk-l"), **{"X-Run-Id": "leased",
                                                      "x-mock-tokens": "2000"}))
        assert r.status == 200, r
        events = sse_events(r.body)
        assert events[-1][1] == "[DONE]", events[-3:]
        err = json.loads(events[-2][1])["error"]
        assert err["code"] == "run_ceiling_reached", err
        st = run_state(tg, "sk-l", "leased")
        committed = micros(st["committed_usd"])
        assert micros(st["reserved_usd"]) == 0, st
        # cut while covered: at most the limit, and within a lease step of it
        assert LIMIT - 256 - 64 <= committed <= LIMIT, st
        # the text the agent got is what was charged (one token per byte)
        text = sum(len(json.loads(d)["choices"][0]["delta"].get("content") or "")
                   for _, d in events[:-2] if d and '"choices"' in d)
        assert text == committed, (text, committed)


def test_parallel_streams_share_a_run(env):
    """Four streams at once on one run whose limit (3000) holds less than
    one worst case (4000): with leases all start and finish, each charged
    its usage; the run's committed is their sum."""
    models = {"m": model("0", "1.00", cap=4000)}
    keys = [lease_key("kl", "sk-l")]
    with Mock(env) as mk, start(env, mk, models, keys,
                                teams={"t": {"budget": budget("10.00")}}) as tg:
        b = stream_body(4000)
        results = []

        def one():
            results.append(call(tg, CHAT, b, dict(bearer("sk-l"), **{
                "X-Run-Id": "shared", "x-mock-tokens": "40",
                "x-mock-token-delay-us": "5000"})))
        threads = [threading.Thread(target=one) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [r.status for r in results] == [200] * 4, [(r.status, r.body[:120]) for r in results]
        for r in results:
            assert sse_events(r.body)[-1][1] == "[DONE]", r.body[-200:]
            assert b'"error"' not in r.body
        st = run_state(tg, "sk-l", "shared")
        # usage: mockllm reports 40 completion tokens per stream
        assert micros(st["committed_usd"]) == 4 * 40, st
        assert micros(st["reserved_usd"]) == 0, st
