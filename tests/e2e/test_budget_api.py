"""End-to-end: idempotency keys, decision records, run state and tags
(SPEC §3-§4; net/decide.c check_idempotency/read_tags, net/settle.c record,
net/budget_api.c, core/idempotency.c, core/decisions.c, core/tags.c).

Money is checked to the micro-dollar with test_budget's exact arithmetic:
model "m" is priced $1 / $2 per Mtok, i.e. 1 micro-USD per input token and
2 per output token, so

    estimate = (body bytes + 64) * 1 + effective_max_output * 2   (micro-USD)
    actual   = prompt_tokens * 1 + completion_tokens * 2

with the usage parsed from each reply (never assumed).

Timing: an exchange is settled (its reservation committed or released, its
decision recorded, its idempotency key finished) just after its reply's
last byte is sent. On one keep-alive connection the next request is read
only after the previous exchange ended, so a GET sent there afterwards
sees it settled (after()). Across connections (maybe the other shard) the
tests poll with a timeout, never sleep.
"""

import calendar
import json
import re
import threading
import time

from harness import (CHAT, Conn, FakeProvider, LOOPBACK, Mock, Response, Tollgate, call,
                     problem, request, slow_build, wait_until, principals)
from test_budget import (DECISION_ID, RESERVATION_ID, Price, bearer, budget, chat,
                         key, micros, model, openai_usage, usd)

P = Price("m", "1.00", "2.00")
IDEM = "X-Budget-Idempotency-Key"
TAGS = "X-Budget-Tags"
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
DECISION_FIELDS = ("decision_id", "decision", "status", "code", "enforcement_mode", "key",
                   "run_id", "model", "selected_model", "scope", "estimate_usd",
                   "reserved_usd", "actual_usd", "outcome", "tags", "prices_version", "time")


# ---------------------------------------------------------------- setup

def start(env, mk, keys, teams, models=None, users=None, orgs=None, providers=None,
          workers=1):
    """tollgate with model "m" (and `models`), these principals and keys."""
    extra = principals(keys, teams, orgs, users)
    all_models = {"m": model("1.00", "2.00", cap=4000)}
    all_models.update(models or {})
    return Tollgate(env, mk, workers=workers, models=all_models, providers=providers,
                    extra=extra)


def hdrs(secret, **more):
    """Authorization plus headers given as keyword arguments (_ -> -)."""
    h = bearer(secret)
    for k, v in more.items():
        h[k.replace("_", "-")] = v
    return h


def reload_limit(tg, kid, limit):
    """Rewrites key kid's budget limit and reloads (SIGHUP), waiting for it."""
    cfg = json.loads(json.dumps(tg.config))
    for k in cfg["keys"]:
        if k["id"] == kid:
            k["budget"]["limit"] = limit
    n = tg.log().count("handed to")
    tg.reload(cfg)
    wait_until(lambda: tg.log().count("handed to") > n, 10, what="the reload")


def patience(env):
    return 3 if slow_build(env) else 1


# ---------------------------------------------------------------- reading state

def send(c, path, body, headers, method="POST"):
    c.send(request(method, path, body, headers))
    return c.response()


def scopes_of(r):
    assert r.status == 200, r
    return {s["scope"]: {"committed": micros(s["committed_usd"]),
                         "reserved": micros(s["reserved_usd"]),
                         "remaining": micros(s["remaining_usd"]),
                         "limit": micros(s["limit_usd"]), "window": s["window"]}
            for s in r.json()["scopes"]}


def after(c, secret):
    """GET /v1/budget on connection c, which made the previous calls: those
    have settled by the time this request is read. Scope name -> figures."""
    return scopes_of(send(c, "/v1/budget", None, bearer(secret), "GET"))


def quiet(tg, secret, timeout=5.0):
    """GET /v1/budget on fresh connections until nothing is reserved, the
    same figures twice in a row (shards' counters are summed one by one)."""
    last = [None]

    def ok():
        st = scopes_of(call(tg, "/v1/budget", None, bearer(secret), "GET"))
        prev, last[0] = last[0], st
        return st if st == prev and all(s["reserved"] == 0 for s in st.values()) else None
    return wait_until(ok, timeout, what="reservations to settle")


def decision(tg, secret, did, timeout=5.0):
    """GET /budget/decisions/{did}: the record (polled: it is written when
    the call ends, maybe on another shard)."""
    def get():
        r = call(tg, "/budget/decisions/" + did, None, bearer(secret), "GET")
        if r.status == 404:
            return None
        assert r.status == 200 and r.headers.get("content-type") == "application/json", r
        return r
    r = wait_until(get, timeout, what="decision %s to be recorded" % did)
    j = r.json()
    for f in DECISION_FIELDS:
        assert f in j, (f, j)
    assert j["decision_id"] == did, (did, j)
    assert j["prices_version"] == "e2e-test", j
    assert ISO_UTC.match(j["time"]), j
    return j


def when(j):
    """A decision's time as UTC epoch seconds."""
    return calendar.timegm(time.strptime(j["time"], "%Y-%m-%dT%H:%M:%SZ"))


def mock_requests(mk):
    return mk.stats()["requests"]


def did_of(r):
    d = r.headers.get("x-budget-decision-id", "")
    assert DECISION_ID.match(d), r.headers
    return d


def read_stream(c, status_headers):
    """The rest of a chunked reply whose head was read: a Response."""
    status, h = status_headers
    chunks = []
    while True:
        ch = c.chunk()
        if not ch:
            break
        chunks.append(ch)
    return Response(status, h, b"".join(chunks), chunks)


def storm(tg, n, body, headers):
    """n copies of one call at once, each on its own connection (opened
    first, so spread over the shards): the n Responses."""
    conns = [Conn(tg.port, 30.0) for _ in range(n)]
    gate = threading.Barrier(n)
    results = [None] * n

    def one(i):
        try:
            gate.wait(10)
            conns[i].send(request("POST", CHAT, body, headers, close=True))
            results[i] = conns[i].response()
        except Exception as e:      # noqa: B902 - reported below
            results[i] = e
    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for c in conns:
        c.close()
    errors = [x for x in results if not isinstance(x, Response)]
    assert not errors, errors
    return results


def one_forwarded(results):
    """Exactly one 200; every other reply a 409 in flight / reused naming
    its decision. Returns (the 200, {code: count})."""
    ok = [r for r in results if r.status == 200]
    assert len(ok) == 1, [(r.status, r.headers.get("x-budget-decision-id"), r.body[:160])
                          for r in results]
    winner = did_of(ok[0])
    codes = {}
    for r in results:
        if r is ok[0]:
            continue
        j = problem(r, 409)
        assert j["code"] in ("idempotency_in_flight", "idempotency_key_reused"), j
        assert r.headers.get("x-budget-decision-id") == winner, (winner, r.headers, j)
        codes[j["code"]] = codes.get(j["code"], 0) + 1
    return ok[0], codes


def reused(r, first_id, first_status, first_actual):
    """A 409 idempotency_key_reused naming the first call's decision."""
    j = problem(r, 409, "idempotency_key_reused")
    assert j.get("first_call") == {"status": first_status, "actual_usd": usd(first_actual)}, j
    assert r.headers.get("x-budget-decision-id") == first_id, (first_id, r.headers)
    assert "x-budget-reservation-id" not in r.headers, r.headers
    return j


# ---------------------------------------------------------------- 1. idempotency

def test_idempotency_replays_a_completed_call(env):
    """A retry after the first call completed: 409 idempotency_key_reused
    with the first call's status and exact cost, its decision id and
    decision; nothing forwarded, nothing reserved or charged again, whatever
    the retry's body or connection (or shard). The key is validated."""
    keys = [key("k", "sk-k", "t", limit="1.00")]
    with Mock(env, "--tokens", "7") as mk, start(
            env, mk, keys, {"t": {"budget": budget("10.00")}}, workers=2) as tg:
        before = mock_requests(mk)
        b = chat("m", 100, content="pay the invoice")
        with tg.conn() as c:
            r = send(c, CHAT, b, hdrs("sk-k", **{IDEM: "op-1"}))
            assert r.status == 200, r
            assert r.headers.get("x-budget-decision") == "allow", r.headers
            first = did_of(r)
            spent = P.actual(*openai_usage(r))
            st = after(c, "sk-k")
            assert st["key:k"]["committed"] == spent and st["key:k"]["reserved"] == 0, st
            # The retry on the same connection, then on fresh ones (either shard).
            for i in range(4):
                if i == 0:
                    r = send(c, CHAT, b, hdrs("sk-k", **{IDEM: "op-1"}))
                else:
                    r = call(tg, CHAT, b, hdrs("sk-k", **{IDEM: "op-1"}))
                reused(r, first, 200, spent)
                assert r.headers.get("x-budget-decision") == "allow", r.headers
        # Another body, another run, same key: still the first call's answer.
        r = call(tg, CHAT, chat("m", 5, content="something else"),
                 hdrs("sk-k", **{IDEM: "op-1", "X-Run-Id": "other-run"}))
        reused(r, first, 200, spent)
        assert mock_requests(mk) == before + 1, "a retry reached the provider"
        st = quiet(tg, "sk-k")
        assert st["key:k"]["committed"] == spent and st["team:t"]["committed"] == spent, st
        # The record is still the first call's (a replay records nothing).
        j = decision(tg, "sk-k", first)
        assert (j["status"], j["outcome"], j["actual_usd"]) == (200, "committed", usd(spent)), j

        # Another idempotency key is another call.
        r = call(tg, CHAT, b, hdrs("sk-k", **{IDEM: "op-2"}))
        assert r.status == 200 and did_of(r) != first, r
        spent += P.actual(*openai_usage(r))
        assert mock_requests(mk) == before + 2

        # 1..128 visible ASCII characters: the longest and the widest pass...
        for good in ("x" * 128, "!~" + "".join(chr(c) for c in range(0x21, 0x7f))[:120]):
            r = call(tg, CHAT, b, hdrs("sk-k", **{IDEM: good}))
            assert r.status == 200, (good, r)
            spent += P.actual(*openai_usage(r))
        assert mock_requests(mk) == before + 4
        # ... anything else is refused before it reaches the provider.
        for bad in ("y" * 129, "two words", "tab\there", "caf\u00e9"):
            r = call(tg, CHAT, b, hdrs("sk-k", **{IDEM: bad}))
            assert r.status == 400, (bad, r)
            if r.headers.get("content-type") == "application/problem+json":
                problem(r, 400, "invalid_request")
        r = call(tg, CHAT, b, hdrs("sk-k", **{IDEM: ""}))
        problem(r, 400, "invalid_request")
        assert mock_requests(mk) == before + 4, "an invalid idempotency key was forwarded"
        st = quiet(tg, "sk-k")
        assert st["key:k"]["committed"] == spent, (st, spent)


def test_idempotency_retry_while_in_flight(env):
    """A retry while the first call is still running (the provider has not
    answered yet; or the reply is streaming) is refused 409
    idempotency_in_flight with the first call's decision id, on another
    connection and either shard; once the first ends, retries get
    idempotency_key_reused. Exactly one call reaches the provider each time."""
    keys = [key("k", "sk-k", "t", limit="1.00")]
    wait = 5 * patience(env)
    with Mock(env, "--tokens", "5") as mk, start(
            env, mk, keys, {"t": {"budget": budget("10.00")}}, workers=2) as tg:
        before = mock_requests(mk)
        spent = 0

        # (a) The provider takes 2 s before its first byte.
        b = chat("m", 50, content="slow first byte")
        a = tg.conn(timeout=20)
        a.send(request("POST", CHAT, b, hdrs("sk-k", **{
            IDEM: "slow-1", "x-mock-first-byte-delay-ms": "2000"})))
        wait_until(lambda: mock_requests(mk) == before + 1, wait,
                   what="the first call to reach mockllm")
        retries = [call(tg, CHAT, b, hdrs("sk-k", **{IDEM: "slow-1"})) for _ in range(3)]
        r = a.response()
        assert r.status == 200, r
        first = did_of(r)
        for x in retries:
            problem(x, 409, "idempotency_in_flight")
            assert x.headers.get("x-budget-decision-id") == first, (first, x.headers)
            assert "x-budget-reservation-id" not in x.headers, x.headers
        spent += P.actual(*openai_usage(r))
        st = after(a, "sk-k")
        assert st["key:k"]["committed"] == spent and st["key:k"]["reserved"] == 0, st
        a.close()
        reused(call(tg, CHAT, b, hdrs("sk-k", **{IDEM: "slow-1"})), first, 200, spent)
        assert mock_requests(mk) == before + 1

        # (b) A stream in progress: its head (and decision id) has arrived.
        b = chat("m", 100, content="slow stream", stream=True,
                 stream_options={"include_usage": True})
        a = tg.conn(timeout=20)
        a.send(request("POST", CHAT, b, hdrs("sk-k", **{
            IDEM: "stream-1", "x-mock-tokens": "30", "x-mock-token-delay-us": "60000"})))
        head = a.head()
        assert head[0] == 200, head
        first = head[1]["x-budget-decision-id"]
        r = call(tg, CHAT, b, hdrs("sk-k", **{IDEM: "stream-1"}))
        problem(r, 409, "idempotency_in_flight")
        assert r.headers.get("x-budget-decision-id") == first, (first, r.headers)
        # (a non-streaming retry of it too)
        r = call(tg, CHAT, chat("m", 100, content="slow stream"),
                 hdrs("sk-k", **{IDEM: "stream-1"}))
        problem(r, 409, "idempotency_in_flight")
        assert r.headers.get("x-budget-decision-id") == first, (first, r.headers)
        st = scopes_of(call(tg, "/v1/budget", None, bearer("sk-k"), "GET"))
        assert st["key:k"]["reserved"] == P.estimate(b, 100), st
        r = read_stream(a, head)
        assert r.body.rstrip().endswith(b"data: [DONE]"), r.body[-200:]
        cost_ = P.actual(*openai_usage(r))
        spent += cost_
        st = after(a, "sk-k")
        assert st["key:k"]["committed"] == spent and st["key:k"]["reserved"] == 0, st
        a.close()
        reused(call(tg, CHAT, b, hdrs("sk-k", **{IDEM: "stream-1"})), first, 200, cost_)
        assert mock_requests(mk) == before + 2, "a retry reached the provider"
        st = quiet(tg, "sk-k")
        assert st["key:k"]["committed"] == spent, (st, spent)


def test_idempotency_replays_a_refusal(env):
    """A first call that was refused: a retry gets the same status and code
    with the first decision id (block), even when the retry itself would
    now fit; nothing is forwarded or reserved."""
    keys = [key("k", "sk-k", "t", limit="0.001", models=["m"]),
            key("rich", "sk-rich", "t", limit="1.00", models=["m"])]
    models = {"m-other": model("1.00", "2.00")}
    with Mock(env, "--tokens", "5") as mk, start(
            env, mk, keys, {"t": {"budget": budget("10.00")}}, models=models) as tg:
        before = mock_requests(mk)
        big = chat("m", 1000, content="too big")       # > $0.001
        assert P.estimate(big, 1000) > 1000
        r = call(tg, CHAT, big, hdrs("sk-k", **{IDEM: "refused-1"}))
        problem(r, 402, "key_ceiling_reached")
        first = did_of(r)
        assert r.headers.get("x-budget-decision") == "block", r.headers
        # A retry of it, and a "retry" whose worst case would fit ($0.000190):
        # the first decision stands.
        small = chat("m", 10, content="x")
        assert P.estimate(small, 10) < 1000
        for b in (big, small, small):
            r = call(tg, CHAT, b, hdrs("sk-k", **{IDEM: "refused-1"}))
            problem(r, 402, "key_ceiling_reached")
            assert r.headers.get("x-budget-decision-id") == first, (first, r.headers)
            assert r.headers.get("x-budget-decision") == "block", r.headers
            assert "x-budget-reservation-id" not in r.headers, r.headers
        # The same small call under a fresh idempotency key does fit.
        r = call(tg, CHAT, small, hdrs("sk-k", **{IDEM: "refused-2"}))
        assert r.status == 200, r
        small_id = did_of(r)
        spent = P.actual(*openai_usage(r))
        # A 403 (model the key may not use) is replayed as a 403.
        r = call(tg, CHAT, chat("m-other", 10), hdrs("sk-k", **{IDEM: "forbidden-1"}))
        problem(r, 403, "model_not_allowed")
        first403 = did_of(r)
        r = call(tg, CHAT, small, hdrs("sk-k", **{IDEM: "forbidden-1"}))
        problem(r, 403, "model_not_allowed")
        assert r.headers.get("x-budget-decision-id") == first403, r.headers
        assert mock_requests(mk) == before + 1
        st = quiet(tg, "sk-k")
        assert st["key:k"]["committed"] == spent and st["key:k"]["reserved"] == 0, st
        j = decision(tg, "sk-k", first)
        assert (j["decision"], j["status"], j["code"], j["outcome"]) == \
            ("block", 402, "key_ceiling_reached", "refused"), j

        # The budget is raised (a reload keeps the idempotency table): the
        # refusal is still replayed, the completed call still reused; the
        # big call under a fresh key now fits.
        reload_limit(tg, "k", "1.00")
        r = call(tg, CHAT, big, hdrs("sk-k", **{IDEM: "refused-1"}))
        problem(r, 402, "key_ceiling_reached")
        assert r.headers.get("x-budget-decision-id") == first, (first, r.headers)
        reused(call(tg, CHAT, small, hdrs("sk-k", **{IDEM: "refused-2"})), small_id, 200,
               spent)
        assert mock_requests(mk) == before + 1
        r = call(tg, CHAT, big, hdrs("sk-k", **{IDEM: "refused-3"}))
        assert r.status == 200, r
        spent += P.actual(*openai_usage(r))
        assert mock_requests(mk) == before + 2
        st = quiet(tg, "sk-k")
        assert st["key:k"]["committed"] == spent and st["key:k"]["limit"] == micros("1.00"), st


def test_idempotency_released_call_is_retried_for_real(env):
    """A first call that got no reply (504 after the provider stalled; 502
    when it closed without a byte) was released whole: a retry with the same
    key is forwarded for real and charged once; after that, retries replay
    the retry's decision."""
    keys = [key("k", "sk-k", "t", limit="1.00")]

    fake_body = json.dumps({
        "id": "chatcmpl-fake", "object": "chat.completion", "created": 1, "model": "m-fake",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}}).encode()

    def respond(conn_no, req_no, raw):
        if conn_no == 0:
            return None             # close without a byte
        return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n" % len(fake_body)) + fake_body

    timeout_ms = 1500 * patience(env)
    with Mock(env, "--tokens", "6") as mk, FakeProvider(respond) as fp:
        base = "http://%s:%d/v1" % (LOOPBACK, mk.port)
        providers = {
            "slow": {"base_url": base, "format": "openai", "timeout_ms": timeout_ms,
                     "idle_timeout_ms": timeout_ms},
            "fake": {"base_url": "http://%s:%d/v1" % (LOOPBACK, fp.port), "format": "openai",
                     "timeout_ms": 5000},
        }
        models = {"m-slow": model("1.00", "2.00", provider="slow", cap=4000),
                  "m-fake": model("1.00", "2.00", provider="fake", cap=4000)}
        with start(env, mk, keys, {"t": {"budget": budget("10.00")}}, models=models,
                   providers=providers, workers=2) as tg:
            before = mock_requests(mk)
            spent = 0

            # 504: the provider stalls before answering.
            b = chat("m-slow", 100, content="retry me")
            r = call(tg, CHAT, b, hdrs("sk-k", **{IDEM: "rel-1", "x-mock-stall": "1"}),
                     timeout=30)
            problem(r, 504, "upstream_timeout")
            d1 = did_of(r)
            j = decision(tg, "sk-k", d1)
            assert (j["outcome"], j["actual_usd"], j["status"]) == ("released", "0.00", 504), j
            st = quiet(tg, "sk-k")
            assert st["key:k"]["committed"] == 0, st
            # The retry goes through (the provider answers this time): ten
            # retries at once, on both shards, and exactly one is forwarded.
            r, codes = one_forwarded(storm(tg, 10, b, hdrs("sk-k", **{
                IDEM: "rel-1", "x-mock-first-byte-delay-ms": "200"})))
            assert r.headers.get("x-budget-decision") == "allow", r.headers
            assert RESERVATION_ID.match(r.headers.get("x-budget-reservation-id", "")), r.headers
            d2 = did_of(r)
            assert d2 != d1
            a2 = P.actual(*openai_usage(r))
            spent += a2
            assert mock_requests(mk) == before + 2, codes
            j = decision(tg, "sk-k", d2)
            assert (j["outcome"], j["actual_usd"], j["status"]) == \
                ("committed", usd(a2), 200), j
            # Now it has been answered: further retries replay the retry.
            r = wait_until(lambda: (lambda x: x if x.status == 409 and x.json()["code"] ==
                                    "idempotency_key_reused" else None)(
                call(tg, CHAT, b, hdrs("sk-k", **{IDEM: "rel-1"}))), 5,
                what="the retry to end")
            reused(r, d2, 200, a2)
            assert mock_requests(mk) == before + 2
            st = quiet(tg, "sk-k")
            assert st["key:k"]["committed"] == spent, (st, spent)

            # 502: the provider closes the connection without a byte.
            b = chat("m-fake", 100, content="retry me too")
            r = call(tg, CHAT, b, hdrs("sk-k", **{IDEM: "rel-2"}))
            problem(r, 502, "upstream_failed")
            d1 = did_of(r)
            j = decision(tg, "sk-k", d1)
            assert (j["outcome"], j["actual_usd"]) == ("released", "0.00"), j
            assert len(fp.requests) == 1
            r = call(tg, CHAT, b, hdrs("sk-k", **{IDEM: "rel-2"}))
            assert r.status == 200 and r.body == fake_body, r
            d2 = did_of(r)
            a2 = P.actual(11, 7)
            spent += a2
            # (the exchange is settled just after its last byte went out: a
            # retry on another connection may still find it running)
            r = wait_until(lambda: (lambda x: x if x.status == 409 and x.json()["code"] ==
                                    "idempotency_key_reused" else None)(
                call(tg, CHAT, b, hdrs("sk-k", **{IDEM: "rel-2"}))), 5,
                what="the retry to end")
            reused(r, d2, 200, a2)
            assert len(fp.requests) == 2, fp.requests
            st = quiet(tg, "sk-k")
            assert st["key:k"]["committed"] == spent and st["team:t"]["committed"] == spent, \
                (st, spent)


def test_idempotency_key_is_per_agent_key(env):
    """The same idempotency key sent by two agent keys names two calls: both
    are forwarded and charged to their own key; each key's retry replays its
    own first call."""
    keys = [key("ka", "sk-a", "t", limit="1.00"), key("kb", "sk-b", "t", limit="1.00")]
    with Mock(env, "--tokens", "5") as mk, start(
            env, mk, keys, {"t": {"budget": budget("10.00")}}, workers=2) as tg:
        before = mock_requests(mk)
        b = chat("m", 100, content="shared key")
        first, cost_ = {}, {}
        for secret in ("sk-a", "sk-b"):
            with tg.conn() as c:
                r = send(c, CHAT, b, hdrs(secret, **{IDEM: "shared"}))
                assert r.status == 200, (secret, r)
                first[secret] = did_of(r)
                cost_[secret] = P.actual(*openai_usage(r))
                after(c, secret)
        assert first["sk-a"] != first["sk-b"]
        assert mock_requests(mk) == before + 2
        for secret in ("sk-a", "sk-b"):
            reused(call(tg, CHAT, b, hdrs(secret, **{IDEM: "shared"})), first[secret], 200,
                   cost_[secret])
        assert mock_requests(mk) == before + 2
        sa, sb = quiet(tg, "sk-a"), quiet(tg, "sk-b")
        assert sa["key:ka"]["committed"] == cost_["sk-a"], sa
        assert sb["key:kb"]["committed"] == cost_["sk-b"], sb
        assert sa["team:t"]["committed"] == cost_["sk-a"] + cost_["sk-b"], sa


def test_idempotency_concurrent_retries_reserve_once(env):
    """20 calls with one idempotency key at once, each on its own connection,
    across 2 workers: exactly one is forwarded and answered 200; every other
    gets 409 (in flight, or reused once it ended) naming its decision; the
    spend is exactly that one call's. Several rounds, each a new key."""
    keys = [key("k", "sk-k", "t", limit="5.00")]
    n = 20
    with Mock(env, "--tokens", "5") as mk, start(
            env, mk, keys, {"t": {"budget": budget("10.00")}}, workers=2) as tg:
        spent = 0
        for rnd, delay in enumerate(("300", "0", "100")):
            before = mock_requests(mk)
            b = chat("m", 100, content="race %d" % rnd)
            h = hdrs("sk-k", **{IDEM: "race-%d" % rnd, "x-mock-first-byte-delay-ms": delay})
            win, codes = one_forwarded(storm(tg, n, b, h))
            winner = did_of(win)
            spent += P.actual(*openai_usage(win))
            assert mock_requests(mk) == before + 1, (rnd, codes)
            st = quiet(tg, "sk-k")
            assert st["key:k"]["committed"] == spent and st["team:t"]["committed"] == spent, \
                (rnd, st, spent, codes)
            j = decision(tg, "sk-k", winner)
            assert j["outcome"] == "committed" and j["status"] == 200, j


# ---------------------------------------------------------------- 2. decisions

def test_decision_records(env):
    """GET /budget/decisions/{id}: what was decided for a call, once it
    ended, with exact money: allowed (committed), refused (block, the scope),
    released (no reply), advisory_warn and downgrade; only to its own key."""
    pa = Price("alt", "0.50", "1.00")
    models = {
        "m-slow": model("1.00", "2.00", provider="slow", cap=4000),
        "big": dict(model("10.00", "40.00", cap=4000), alternatives=["alt"]),
        "alt": model("0.50", "1.00", cap=4000),
    }
    keys = [key("k1", "sk-one", "t", limit="1.00"),
            key("k2", "sk-two", "t", limit="0.001"),
            key("k3", "sk-three", "adv"),
            key("k4", "sk-four", "t", limit="0.01")]
    teams = {"t": {"budget": budget("10.00")},
             "adv": {"budget": {"limit": "0.000001", "window": "total",
                                "mode": "advisory_estimate"}}}
    timeout_ms = 1500 * patience(env)
    with Mock(env, "--tokens", "9") as mk:
        providers = {"slow": {"base_url": "http://%s:%d/v1" % (LOOPBACK, mk.port),
                              "format": "openai", "timeout_ms": timeout_ms,
                              "idle_timeout_ms": timeout_ms}}
        with start(env, mk, keys, teams, models=models, providers=providers,
                   workers=2) as tg:
            t0 = time.time()
            # Allowed, on a named run with tags: committed at the exact price.
            b = chat("m", 300, content="a recorded call")
            e = P.estimate(b, 300)
            with tg.conn() as c:
                r = send(c, CHAT, b, hdrs("sk-one", **{"X-Run-Id": "rec-run",
                                                       TAGS: "app=support,env=prod"}))
                assert r.status == 200, r
                d_ok = did_of(r)
                a = P.actual(*openai_usage(r))
                after(c, "sk-one")
                rr = send(c, "/budget/decisions/" + d_ok, None, bearer("sk-one"), "GET")
                assert rr.status == 200, rr
            j = rr.json()
            t1 = time.time()
            assert j["decision_id"] == d_ok, j
            assert {k: j[k] for k in DECISION_FIELDS if k != "time"} == {
                "decision_id": d_ok, "decision": "allow", "status": 200, "code": "",
                "enforcement_mode": "hard_gate", "key": "k1", "run_id": "rec-run",
                "model": "m", "selected_model": "", "scope": "", "estimate_usd": usd(e),
                "reserved_usd": usd(e), "actual_usd": usd(a), "outcome": "committed",
                "tags": "app=support,env=prod", "prices_version": "e2e-test"}, j
            assert ISO_UTC.match(j["time"]) and int(t0) - 1 <= when(j) <= t1 + 1, (j, t0, t1)

            # Many calls on fresh connections (both shards): each record is
            # readable from any connection, with its own exact figures.
            for i in range(6):
                bi = chat("m", 20 + i, content="call %d" % i)
                r = call(tg, CHAT, bi, bearer("sk-one"))
                assert r.status == 200, r
                j = decision(tg, "sk-one", did_of(r))
                assert j["run_id"] == r.headers["x-run-id"], (j, r.headers)
                assert (j["estimate_usd"], j["actual_usd"], j["outcome"]) == \
                    (usd(P.estimate(bi, 20 + i)), usd(P.actual(*openai_usage(r))),
                     "committed"), j

            # Refused: block, the scope that refused, nothing reserved.
            b = chat("m", 1000, content="too big")
            r = call(tg, CHAT, b, hdrs("sk-two", **{TAGS: "task=refund"}))
            problem(r, 402, "key_ceiling_reached")
            d_no = did_of(r)
            j = decision(tg, "sk-two", d_no)
            assert {k: j[k] for k in DECISION_FIELDS if k != "time"} == {
                "decision_id": d_no, "decision": "block", "status": 402,
                "code": "key_ceiling_reached", "enforcement_mode": "hard_gate", "key": "k2",
                "run_id": r.headers["x-run-id"], "model": "m", "selected_model": "",
                "scope": "key:k2", "estimate_usd": usd(P.estimate(b, 1000)),
                "reserved_usd": "0.00", "actual_usd": "0.00", "outcome": "refused",
                "tags": "task=refund", "prices_version": "e2e-test"}, j

            # Released: the provider never answered (504), nothing charged.
            b = chat("m-slow", 100, content="stalls")
            r = call(tg, CHAT, b, hdrs("sk-one", **{"x-mock-stall": "1"}), timeout=30)
            problem(r, 504, "upstream_timeout")
            d_rel = did_of(r)
            j = decision(tg, "sk-one", d_rel)
            e = P.estimate(b, 100)
            assert (j["decision"], j["status"], j["model"], j["estimate_usd"], j["reserved_usd"],
                    j["actual_usd"], j["outcome"]) == \
                ("allow", 504, "m-slow", usd(e), usd(e), "0.00", "released"), j

            # Advisory: over the team's limit, forwarded with advisory_warn.
            b = chat("m", 50, content="advisory")
            r = call(tg, CHAT, b, bearer("sk-three"))
            assert r.status == 200 and r.headers["x-budget-decision"] == "advisory_warn", r
            j = decision(tg, "sk-three", did_of(r))
            assert (j["decision"], j["enforcement_mode"], j["scope"], j["outcome"],
                    j["estimate_usd"], j["actual_usd"]) == \
                ("advisory_warn", "advisory_estimate", "team:adv", "committed",
                 usd(P.estimate(b, 50)), usd(P.actual(*openai_usage(r)))), j

            # Downgrade: "big" does not fit k4's $0.01, "alt" does.
            b = chat("big", 1000, content="downgrade me")
            r = call(tg, CHAT, b, hdrs("sk-four", **{"X-Budget-Downgrade": "allow"}))
            assert r.status == 200 and r.headers["x-budget-decision"] == "downgrade", r
            j = decision(tg, "sk-four", did_of(r))
            assert (j["decision"], j["model"], j["selected_model"], j["reserved_usd"],
                    j["actual_usd"], j["outcome"]) == \
                ("downgrade", "big", "alt", usd(pa.estimate(b, 1000)),
                 usd(pa.actual(*openai_usage(r))), "committed"), j

            # Only the key that made a decision may read it.
            for did, owner, other in ((d_ok, "sk-one", "sk-two"), (d_no, "sk-two", "sk-one")):
                r = call(tg, "/budget/decisions/" + did, None, bearer(other), "GET")
                problem(r, 404, "unknown_decision")
                assert decision(tg, owner, did)["decision_id"] == did
            # Malformed and unknown ids; and no key at all.
            for bad in ("d-xyz", "abc", "d-", "d-%s" % ("0" * 12), "d-7%s" % ("0" * 11 + "1"),
                        "d-00000000ffff", "d-" + "f" * 16, d_ok[:-1] + "g", "r-" + d_ok[2:]):
                r = call(tg, "/budget/decisions/" + bad, None, bearer("sk-one"), "GET")
                problem(r, 404, "unknown_decision")
            problem(call(tg, "/budget/decisions/" + d_ok, None, {}, "GET"), 401, "invalid_key")
            problem(call(tg, "/budget/decisions/" + d_ok, None, bearer("sk-nope"), "GET"),
                    401, "invalid_key")


# ---------------------------------------------------------------- 3. runs

def test_run_state_endpoint(env):
    """GET /v1/budget/runs/{id}: the run's scope first (window "run"), then
    the key's budgeted scopes in order key, user, team, org, with exact
    committed/reserved/remaining, live while a call is in flight; 404
    unknown_run, 403 for another key's run, 401 without a key."""
    keys = [key("k", "sk-k", "t", limit="1.00", user="u"),
            key("k2", "sk-k2", "t", limit="2.00")]
    with Mock(env, "--tokens", "8") as mk, start(
            env, mk, keys, {"t": {"parent": "o", "budget": budget("3.00")}},
            users={"u": {"parent": "t", "budget": budget("0.50")}},
            orgs={"o": {"budget": budget("4.00")}}, workers=2) as tg:
        run_h = hdrs("sk-k", **{"X-Run-Id": "run-a", "X-Budget-Run-Limit": "0.25"})
        spent = 0
        with tg.conn() as c:
            for i in range(3):
                r = send(c, CHAT, chat("m", 40, content="step %d" % i), run_h)
                assert r.status == 200 and r.headers["x-run-id"] == "run-a", r
                spent += P.actual(*openai_usage(r))
            after(c, "sk-k")
            r = send(c, "/v1/budget/runs/run-a", None, bearer("sk-k"), "GET")
        assert r.status == 200 and r.headers.get("content-type") == "application/json", r
        j = r.json()
        assert j["key"] == "k" and j["run_id"] == "run-a", j
        names = [s["scope"] for s in j["scopes"]]
        assert names == ["run:run-a", "key:k", "user:u", "team:t", "org:o"], names
        st = scopes_of(r)
        assert st["run:run-a"]["window"] == "run", st
        for name, limit in (("run:run-a", "0.25"), ("key:k", "1.00"), ("user:u", "0.50"),
                            ("team:t", "3.00"), ("org:o", "4.00")):
            assert st[name]["limit"] == micros(limit), (name, st)
            assert st[name]["committed"] == spent, (name, st, spent)
            assert st[name]["reserved"] == 0, (name, st)
            assert st[name]["remaining"] == micros(limit) - spent, (name, st)

        # Another key's spend shows in the shared scopes, not in run-a.
        with tg.conn() as c:
            r = send(c, CHAT, chat("m", 40, content="other"),
                     hdrs("sk-k2", **{"X-Run-Id": "run-b"}))
            assert r.status == 200, r
            other = P.actual(*openai_usage(r))
            after(c, "sk-k2")
            r = send(c, "/v1/budget/runs/run-b", None, bearer("sk-k2"), "GET")
        j = r.json()
        assert [s["scope"] for s in j["scopes"]] == ["run:run-b", "key:k2", "team:t", "org:o"], j
        st = scopes_of(r)
        assert st["run:run-b"]["committed"] == other and st["key:k2"]["committed"] == other, st
        assert st["team:t"]["committed"] == spent + other, st
        st = scopes_of(call(tg, "/v1/budget/runs/run-a", None, bearer("sk-k"), "GET"))
        assert st["run:run-a"]["committed"] == spent and st["key:k"]["committed"] == spent, st
        assert st["org:o"]["committed"] == spent + other, st

        # While a call is in flight its reservation shows on every scope.
        b = chat("m", 100, content="in flight", stream=True,
                 stream_options={"include_usage": True})
        s = tg.conn(timeout=20)
        s.send(request("POST", CHAT, b, dict(run_h, **{"x-mock-tokens": "20",
                                                      "x-mock-token-delay-us": "50000"})))
        head = s.head()
        assert head[0] == 200, head
        st = scopes_of(call(tg, "/v1/budget/runs/run-a", None, bearer("sk-k"), "GET"))
        e = P.estimate(b, 100)
        for name in ("run:run-a", "key:k", "user:u"):
            assert st[name]["reserved"] == e and st[name]["committed"] == spent, (name, st)
        r = read_stream(s, head)
        spent += P.actual(*openai_usage(r))
        after(s, "sk-k")
        st = scopes_of(send(s, "/v1/budget/runs/run-a", None, bearer("sk-k"), "GET"))
        s.close()
        assert st["run:run-a"]["committed"] == spent and st["run:run-a"]["reserved"] == 0, st
        assert st["run:run-a"]["remaining"] == micros("0.25") - spent, st

        # Errors.
        problem(call(tg, "/v1/budget/runs/no-such-run", None, bearer("sk-k"), "GET"),
                404, "unknown_run")
        problem(call(tg, "/v1/budget/runs/run-b", None, bearer("sk-k"), "GET"),
                403, "run_bound_to_other_key")
        problem(call(tg, "/v1/budget/runs/run-a", None, bearer("sk-k2"), "GET"),
                403, "run_bound_to_other_key")
        problem(call(tg, "/v1/budget/runs/run-a", None, {}, "GET"), 401, "invalid_key")
        problem(call(tg, "/v1/budget/runs/run-a", None, bearer("sk-bad"), "GET"),
                401, "invalid_key")


# ---------------------------------------------------------------- 4. tags

def _tags_of_len(n, pairs=4):
    """Valid tags of exactly n bytes: k0=vvv,k1=vvv,..."""
    fixed = pairs * 3 + (pairs - 1)          # "kN=" per pair, commas between
    vals = [(n - fixed) // pairs + (1 if i < (n - fixed) % pairs else 0) for i in range(pairs)]
    assert all(1 <= v <= 64 for v in vals), vals
    return ",".join("k%d=%s" % (i, "v" * v) for i, v in enumerate(vals))


def test_tags_validated_and_recorded(env):
    """X-Budget-Tags: valid attribution is accepted and kept verbatim in the
    decision; anything outside the grammar is 400 invalid_request and never
    forwarded or charged."""
    keys = [key("k", "sk-k", "t", limit="1.00")]
    sixteen = ",".join("t%d=x" % i for i in range(16))
    good = ["app=support,env=prod,task=refund",
            "app=support, env=prod, task=refund",
            sixteen,
            _tags_of_len(256),
            "k" * 32 + "=" + "V" * 64,
            "owner=ops@example.com,path=a/b:c+d_e.f-g",
            "a.b-c_d9=0"]
    bad = ["App=support",                         # uppercase key
           "app=support,app=billing",             # duplicate key
           "app=support, app=billing",
           "env=prod,app=a,team=x,app=b",
           sixteen + ",t16=x",                     # 17 pairs
           "app=sup port",                        # space in a value
           "app=support ,env=prod",               # space before a comma
           _tags_of_len(257),                     # over 256 bytes
           "app=support,",                        # trailing comma
           ",app=support",                        # leading comma
           "app=support,,env=prod",
           "app=support;env=prod",                # ";" separators
           "app=support; env=prod",
           "app=",                                # empty value
           "=support",                            # empty key
           "app",                                 # no "="
           "app=a=b",
           "app=\"x\"",
           "app=a\tb",
           "k" * 33 + "=x",                       # key too long
           "app=" + "v" * 65,                     # value too long
           "app=support\\,env=prod"]
    with Mock(env, "--tokens", "4") as mk, start(
            env, mk, keys, {"t": {"budget": budget("10.00")}}) as tg:
        before = mock_requests(mk)
        spent = 0
        with tg.conn() as c:
            for tags in good:
                b = chat("m", 10, content="tagged")
                r = send(c, CHAT, b, hdrs("sk-k", **{TAGS: tags}))
                assert r.status == 200, (tags, r)
                spent += P.actual(*openai_usage(r))
                after(c, "sk-k")
                j = decision(tg, "sk-k", did_of(r))
                assert j["tags"] == tags, (tags, j)
        assert mock_requests(mk) == before + len(good)
        for tags in bad:
            r = call(tg, CHAT, chat("m", 10), hdrs("sk-k", **{TAGS: tags}))
            problem(r, 400, "invalid_request")
            assert "x-budget-reservation-id" not in r.headers, (tags, r.headers)
        assert mock_requests(mk) == before + len(good), "a call with invalid tags was forwarded"
        st = quiet(tg, "sk-k")
        assert st["key:k"]["committed"] == spent and st["key:k"]["reserved"] == 0, (st, spent)


def test_idempotency_retries_racing_after_a_release(env):
    """Many retries at once after a released first call (the provider closed
    without a byte: 502): exactly one is forwarded, charged once, and every
    other retry is told about *that* call (409 in flight or reused, naming
    its decision), never pointed back at the released call as if nothing
    were running. Many rounds: the window is narrow (two shards both see
    the released entry, one retakes it; the other must then see the retake,
    net/decide.c check_idempotency / core/idempotency.c idem_retake)."""
    keys = [key("k", "sk-k", "t", limit="50.00")]
    body = json.dumps({
        "id": "chatcmpl-fake", "object": "chat.completion", "created": 1, "model": "m-fake",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}).encode()
    reply = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
             b"Content-Length: %d\r\n\r\n" % len(body)) + body

    def respond(conn_no, req_no, raw):
        return None if b"x-fake-close: 1" in raw.lower() else reply

    rounds, budget_s = 600, 40.0 * patience(env)
    with Mock(env) as mk, FakeProvider(respond) as fp:
        providers = {"fake": {"base_url": "http://%s:%d/v1" % (LOOPBACK, fp.port),
                              "format": "openai", "timeout_ms": 5000}}
        models = {"m-fake": model("1.00", "2.00", provider="fake", cap=4000)}
        with start(env, mk, keys, {"t": {"budget": budget("100.00")}}, models=models,
                   providers=providers, workers=2) as tg:
            spent, answered, t0 = 0, 0, time.monotonic()
            misdirected = []
            for rnd in range(rounds):
                if time.monotonic() - t0 > budget_s:
                    break
                b = chat("m-fake", 10, content="round %d" % rnd)
                ik = "after-release-%d" % rnd
                r = call(tg, CHAT, b, hdrs("sk-k", **{IDEM: ik, "x-fake-close": "1"}))
                problem(r, 502, "upstream_failed")
                released = did_of(r)
                wait_until(lambda: decision(tg, "sk-k", released)["outcome"] == "released", 5,
                           what="the release to be recorded")
                results = storm(tg, 20, b, hdrs("sk-k", **{IDEM: ik}))
                ok = [x for x in results if x.status == 200]
                assert len(ok) == 1, (rnd, [(x.status, x.body[:120]) for x in results])
                winner = did_of(ok[0])
                spent += P.actual(3, 2)
                answered += 1
                for x in results:
                    if x is ok[0]:
                        continue
                    j = problem(x, 409)
                    if x.headers.get("x-budget-decision-id") != winner:
                        misdirected.append((rnd, x.headers.get("x-budget-decision-id"),
                                            released, winner, j))
                        continue
                    assert j["code"] in ("idempotency_in_flight", "idempotency_key_reused"), j
            forwarded = sum(1 for _, raw in fp.requests if b"x-fake-close: 1" not in raw.lower())
            assert forwarded == answered, (forwarded, answered)
            st = quiet(tg, "sk-k")
            assert st["key:k"]["committed"] == spent, (st, spent)
            assert not misdirected, (
                "%d of %d rounds: a retry racing the retake of a released call got 409 naming "
                "the released decision, while another retry was being forwarded: %r" %
                (len({m[0] for m in misdirected}), answered, misdirected[:3]))
