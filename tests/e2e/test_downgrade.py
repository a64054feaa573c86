"""End-to-end: capability-valid alternatives and downgrade (SPEC §2-§4;
net/alternatives.c, net/decide.c).

A call refused 402 `<scope>_ceiling_reached` lists, in its problem body,
the requested model's configured `alternatives` that could serve this very
call: same API format, priced (input and output), allowed for the key,
supporting every capability the request uses (tools/functions,
response_format json_schema, images), with a context that holds the input
bound (body bytes + 64) plus the alternative's own effective max output.
Each entry carries the alternative's own exact estimate and whether it fits
the least any scope of the call has left.

With `X-Budget-Downgrade: allow`, or when the refusing scope's budget says
`on_exceed: downgrade`, the call instead goes to the first such alternative
(in configured order) whose worst case can be reserved: 200 from the
provider, X-Budget-Decision: downgrade, X-Budget-Requested-Model and
X-Budget-Selected-Model, the upstream body naming the alternative (or its
upstream_model), and the alternative's price charged for the usage.

Money is checked to the micro-dollar with test_budget's arithmetic:

    estimate = ceil((body bytes + 64) * in / 1e6) + ceil(eff_max_out * out / 1e6)
    actual   = ceil((input * in + output * out) / 1e6)

Every tollgate here runs one worker: a lease parked on another shard
(docs/budget.md) could otherwise refuse a call that fits by the numbers.
"""

import json
import os
import re
import tempfile

from harness import (CHAT, EMBEDDINGS, LOOPBACK, MESSAGES, FakeProvider, Mock, Tollgate,
                     call, free_port, make_config, parse_request, problem, request,
                     run_tollgate_check, to_yaml)
from test_budget import (SLACK, Price, anthropic_usage, bearer, body_bytes, budget,
                         chat, key, messages, micros, openai_usage, usd)

ALL = ("tools", "json_schema", "vision")
DECISION_ID = re.compile(r"^d-[0-9a-f]{12,}$")
RESERVATION_ID = re.compile(r"^r-[0-9a-f]{12,}$")


# ---------------------------------------------------------------- config

def mdl(inp, out, provider="mock-openai", cap=4000, ctx=1000000, supports=ALL,
        alts=None, upstream=None):
    """A model entry; inp/out None leaves that price out."""
    m = {"provider": provider}
    if upstream:
        m["upstream_model"] = upstream
    if inp is not None:
        m["input_usd_per_mtok"] = inp
    if out is not None:
        m["output_usd_per_mtok"] = out
    m["max_output_tokens"] = cap
    m["context_tokens"] = ctx
    m["supports"] = list(supports)
    m["tier"] = "x"
    if alts:
        m["alternatives"] = list(alts)
    return m


def price(models, name):
    m = models[name]
    return Price(name, m["input_usd_per_mtok"], m["output_usd_per_mtok"])


def estimate(models, name, body, max_tokens):
    """The worst case of `body` on model `name` with its own output cap."""
    return price(models, name).estimate(body, min(max_tokens, models[name]["max_output_tokens"]))


def entry(models, name, body, max_tokens, remaining):
    """The "alternatives" element expected for `name`."""
    e = estimate(models, name, body, max_tokens)
    return {"model": name, "estimate_usd": usd(e), "fits_budget": e <= remaining,
            "supports": list(models[name]["supports"]),
            "context_tokens": models[name]["context_tokens"]}


def norm(alts):
    """The alternatives list with each `supports` sorted (its order is free)."""
    return [dict(a, supports=sorted(a["supports"])) for a in alts]


def downgrading(limit):
    return dict(budget(limit), on_exceed="downgrade")


def start(env, mock, models, keys, teams, providers=None, orgs=None, users=None):
    extra = {"teams": teams, "keys": keys}
    if orgs:
        extra["orgs"] = orgs
    if users:
        extra["users"] = users
    return Tollgate(env, mock, workers=1, models=models, providers=providers, extra=extra)


ALLOW_DOWNGRADE = {"X-Budget-Downgrade": "allow"}


def hdrs(secret, *more):
    h = bearer(secret)
    for m in more:
        h.update(m)
    return h


def scopes_of(c, secret, run=None):
    """GET /v1/budget on connection `c`: scope name -> (committed, reserved,
    remaining, limit) in micro-USD. On the connection that made the calls,
    every earlier exchange has settled before this request is read."""
    h = bearer(secret)
    if run:
        h["X-Run-Id"] = run
    c.send(request("GET", "/v1/budget", None, h))
    r = c.response()
    assert r.status == 200, r
    return {s["scope"]: (micros(s["committed_usd"]), micros(s["reserved_usd"]),
                         micros(s["remaining_usd"]), micros(s["limit_usd"]))
            for s in r.json()["scopes"]}


def rewritten(body, asked, sent):
    """The body the provider should get: only the model's value replaced."""
    old = b'"model":"%s"' % asked.encode()
    assert body.count(old) == 1, body
    return body.replace(old, b'"model":"%s"' % sent.encode())


def assert_downgrade(r, asked, chosen, remaining=None):
    h = r.headers
    assert r.status == 200, r
    assert h.get("x-budget-decision") == "downgrade", h
    assert h.get("x-budget-requested-model") == asked, h
    assert h.get("x-budget-selected-model") == chosen, h
    assert DECISION_ID.match(h.get("x-budget-decision-id", "")), h
    assert RESERVATION_ID.match(h.get("x-budget-reservation-id", "")), h
    assert h.get("x-budget-price-table-version") == "e2e-test", h
    if remaining is not None:
        assert h.get("x-budget-remaining-usd") == usd(remaining), (h, usd(remaining))


def assert_not_downgraded(r):
    h = r.headers
    assert "x-budget-requested-model" not in h, h
    assert "x-budget-selected-model" not in h, h
    assert h.get("x-budget-decision") != "downgrade", h


def refused(r, code):
    """A 402 budget refusal: its problem body (no downgrade happened)."""
    j = problem(r, 402, code)
    assert r.headers.get("x-budget-decision") == "block", r.headers
    assert "x-budget-reservation-id" not in r.headers, r.headers
    assert_not_downgraded(r)
    assert "x-budget-output-clamped" not in r.headers, r.headers
    assert isinstance(j.get("alternatives"), list), j
    return j


# ---------------------------------------------------------------- 1. listing

def test_alternatives_exclusions_and_exact_estimates(env):
    """Which alternatives a refusal lists, each with its own estimate (own
    prices, own output cap) and fits_budget against the least remaining."""
    models = {
        "big": mdl("10.00", "40.00", cap=4000, alts=[
            # eight: the most config allows
            "x-anthropic", "x-noout", "x-forbidden", "ok-small-cap",
            "x-smallctx", "ok-ctx-edge", "ok-other-provider", "ok-big-cap"]),
        # another API format: never offered to an OpenAI-route call
        "x-anthropic": mdl("0.10", "0.20", provider="mock-anthropic"),
        # half priced (no output price): never "cheaper"
        "x-noout": mdl("0.10", None),
        # priced and capable, but the key may not use it
        "x-forbidden": mdl("0.10", "0.20"),
        # its own cap (500) bounds its estimate, below max_tokens (3000)
        "ok-small-cap": mdl("0.30", "1.50", cap=500),
        # contexts: one token short of the bound, and exactly the bound (set below)
        "x-smallctx": mdl("0.10", "0.20", cap=2000),
        "ok-ctx-edge": mdl("0.10", "0.20", cap=2000, supports=("tools",)),
        # same format on another provider entry: offered
        "ok-other-provider": mdl("1.00", "2.00", provider="other-openai"),
        # cap above max_tokens: max_tokens bounds it
        "ok-big-cap": mdl("2.00", "8.00", cap=100000),
    }
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {}}}]
    body = chat("big", 3000, content="list them", tools=tools)
    bound = len(body) + SLACK
    models["x-smallctx"]["context_tokens"] = bound + 2000 - 1
    models["ok-ctx-edge"]["context_tokens"] = bound + 2000
    allowed = [m for m in models if m != "x-forbidden"]
    e_big = estimate(models, "big", body, 3000)
    e_small = estimate(models, "ok-small-cap", body, 3000)
    # key k: its limit is exactly ok-small-cap's estimate (fits: <=)
    keys = [key("k", "sk-k", "t", limit=usd(e_small), models=allowed),
            # key k2: a larger key limit under a smaller team: the key refuses
            # first (scope order), the team is what is least left
            key("k2", "sk-k2", "small", limit=usd(e_big - 1), models=allowed)]
    e_other = estimate(models, "ok-other-provider", body, 3000)
    e_bigcap = estimate(models, "ok-big-cap", body, 3000)
    e_edge = estimate(models, "ok-ctx-edge", body, 3000)
    assert e_edge < e_small < e_other < e_bigcap < e_big, (e_edge, e_small, e_other, e_bigcap)
    team_small = e_other          # k2's team: ok-other-provider fits exactly, ok-big-cap not
    with Mock(env) as mk:
        providers = {"other-openai": {"base_url": "http://%s:%d/v1" % (LOOPBACK, mk.port),
                                      "format": "openai", "timeout_ms": 30000}}
        with start(env, mk, models, keys, providers=providers,
                   teams={"t": {"budget": budget("100.00")},
                          "small": {"budget": budget(usd(team_small))}}) as tg:
            before = mk.stats()["requests"]
            r = call(tg, CHAT, body, bearer("sk-k"))
            j = refused(r, "key_ceiling_reached")
            assert j["budget"]["estimate_usd"] == usd(e_big), j
            assert j["budget"]["effective_max_output_tokens"] == 3000, j
            want = [entry(models, n, body, 3000, e_small)
                    for n in ("ok-small-cap", "ok-ctx-edge", "ok-other-provider", "ok-big-cap")]
            assert [w["fits_budget"] for w in want] == [True, True, False, False], want
            assert norm(j["alternatives"]) == norm(want), (j["alternatives"], want)

            # fits_budget is against the least any scope has left (the team),
            # not the refusing scope's (the key).
            r = call(tg, CHAT, body, bearer("sk-k2"))
            j = refused(r, "key_ceiling_reached")
            assert j["budget"]["scope"] == "key:k2", j
            want = [entry(models, n, body, 3000, team_small)
                    for n in ("ok-small-cap", "ok-ctx-edge", "ok-other-provider", "ok-big-cap")]
            assert [w["fits_budget"] for w in want] == [True, True, True, False], want
            assert norm(j["alternatives"]) == norm(want), (j["alternatives"], want)

            # Without tools in the request, ok-ctx-edge's lack of json_schema
            # and vision does not matter; a shorter body makes x-smallctx fit.
            plain = chat("big", 3000, content="list them")
            assert len(plain) + SLACK + 2000 <= bound + 2000 - 1
            r = call(tg, CHAT, plain, bearer("sk-k"))
            j = refused(r, "key_ceiling_reached")
            want = [entry(models, n, plain, 3000, e_small)
                    for n in ("ok-small-cap", "x-smallctx", "ok-ctx-edge",
                              "ok-other-provider", "ok-big-cap")]
            assert norm(j["alternatives"]) == norm(want), (j["alternatives"], want)
            assert mk.stats()["requests"] == before, "a refused call reached the provider"


def test_alternatives_capability_filter(env):
    """tools / functions -> tools; response_format json_schema -> json_schema;
    an "image_url" or "image" string -> vision. Each alternative lacking one
    the request uses is left out; the rest keep their configured order."""
    models = {
        "big": mdl("10.00", "40.00", alts=["no-tools", "no-json", "no-vision", "full", "none"]),
        "no-tools": mdl("0.10", "0.20", supports=("json_schema", "vision")),
        "no-json": mdl("0.10", "0.40", supports=("tools", "vision")),
        "no-vision": mdl("0.10", "0.60", supports=("tools", "json_schema")),
        "full": mdl("0.10", "0.80"),
        "none": mdl("0.10", "1.00", supports=()),
        "a-big": mdl("10.00", "40.00", provider="mock-anthropic",
                     alts=["a-novision", "big", "a-full"]),
        "a-novision": mdl("0.10", "0.20", provider="mock-anthropic", supports=("tools",)),
        "a-full": mdl("0.10", "0.40", provider="mock-anthropic"),
    }
    tool = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    schema = {"type": "json_schema", "json_schema": {"name": "s", "schema": {}}}
    img = [{"role": "user", "content": [
        {"type": "text", "text": "what is this"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]
    a_img = [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                     "data": "AAAA"}}]}]

    def oa(**extra):
        b = {"model": "big", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}
        b.update(extra)
        return body_bytes(b)

    cases = [
        (CHAT, oa(), ["no-tools", "no-json", "no-vision", "full", "none"]),
        (CHAT, oa(tools=tool), ["no-json", "no-vision", "full"]),
        (CHAT, oa(tools=[]), ["no-json", "no-vision", "full"]),
        (CHAT, oa(functions=[{"name": "f", "parameters": {}}]), ["no-json", "no-vision", "full"]),
        (CHAT, oa(response_format=schema), ["no-tools", "no-vision", "full"]),
        # json_object is not a schema
        (CHAT, oa(response_format={"type": "json_object"}),
         ["no-tools", "no-json", "no-vision", "full", "none"]),
        (CHAT, oa(messages=img), ["no-tools", "no-json", "full"]),
        (CHAT, oa(messages=img, tools=tool, response_format=schema), ["full"]),
        # "tools" inside a message is not the top-level field
        (CHAT, oa(messages=[{"role": "user", "content": "tools", "tools": 1}]),
         ["no-tools", "no-json", "no-vision", "full", "none"]),
        (MESSAGES, messages("a-big", 100), ["a-novision", "a-full"]),
        (MESSAGES, body_bytes({"model": "a-big", "max_tokens": 100, "messages": a_img}),
         ["a-full"]),
        (MESSAGES, messages("a-big", 100, tools=[{"name": "f", "input_schema": {}}]),
         ["a-novision", "a-full"]),
    ]
    keys = [key("k", "sk-k", "t", limit="0.0001")]
    with Mock(env) as mk, start(env, mk, models, keys,
                                teams={"t": {"budget": budget("100.00")}}) as tg:
        before = mk.stats()["requests"]
        for path, b, names in cases:
            r = call(tg, path, b, bearer("sk-k"))
            j = refused(r, "key_ceiling_reached")
            want = [entry(models, n, b, 100, 100) for n in names]
            assert norm(j["alternatives"]) == norm(want), (b, j["alternatives"], names)
        assert mk.stats()["requests"] == before


# ---------------------------------------------------------------- 2. downgrade

def test_downgrade_by_header_first_that_fits(env):
    models = {
        "big": mdl("10.00", "40.00", cap=4000,
                   alts=["d-forbidden", "d-mid", "d-notools", "d-small", "d-smaller"]),
        "d-forbidden": mdl("0.01", "0.01"),                  # cheapest, not the key's
        "d-mid": mdl("3.00", "12.00"),                       # usable, too expensive
        "d-notools": mdl("0.01", "0.02", supports=("json_schema",)),
        "d-small": mdl("0.30", "1.50", cap=1000),            # first that fits
        "d-smaller": mdl("0.15", "0.60"),                    # fits, cheaper, later
    }
    body = chat("big", 2000, content="downgrade me", tools=[{"type": "function",
                                                             "function": {"name": "f"}}])
    e_mid = estimate(models, "d-mid", body, 2000)
    e_small = estimate(models, "d-small", body, 2000)
    e_smaller = estimate(models, "d-smaller", body, 2000)
    limit = (e_mid + e_small) // 2
    assert e_smaller < e_small < limit < e_mid, (e_smaller, e_small, limit, e_mid)
    keys = [key("k", "sk-k", "t", limit=usd(limit),
                models=["big", "d-mid", "d-notools", "d-small", "d-smaller"])]
    p_small = price(models, "d-small")
    with Mock(env, "--tokens", "12") as mk, start(
            env, mk, models, keys, teams={"t": {"budget": budget("100.00")}}) as tg:
        before = mk.stats()["requests"]
        with tg.conn() as c:
            # Without the header: refused, nothing forwarded.
            c.send(request("POST", CHAT, body, bearer("sk-k")))
            j = refused(c.response(), "key_ceiling_reached")
            assert [a["model"] for a in j["alternatives"]] == ["d-mid", "d-small", "d-smaller"], j
            assert [a["fits_budget"] for a in j["alternatives"]] == [False, True, True], j
            # Another value than "allow" is no permission.
            c.send(request("POST", CHAT, body, hdrs("sk-k", {"X-Budget-Downgrade": "deny"})))
            refused(c.response(), "key_ceiling_reached")
            assert mk.stats()["requests"] == before

            # With it: d-small, the first usable alternative whose worst case fits.
            c.send(request("POST", CHAT, body, hdrs("sk-k", ALLOW_DOWNGRADE)))
            r = c.response()
            assert_downgrade(r, "big", "d-small", remaining=limit - e_small)
            # d-small caps output at 1000 < max_tokens 2000
            assert r.headers.get("x-budget-output-clamped") == "1000", r.headers
            reply = r.json()
            assert reply["model"] == "d-small", reply     # what the provider was asked for
            inp, out = openai_usage(r)
            # mockllm counts the body it received: the rewritten one
            assert inp == -(-len(rewritten(body, "big", "d-small")) // 4), (inp, len(body))
            spent = p_small.actual(inp, out)
            st = scopes_of(c, "sk-k")
            assert st["key:k"] == (spent, 0, limit - spent, limit), (st, spent)
            assert st["team:t"][0] == spent, st
            assert mk.stats()["requests"] == before + 1

            # A call that fits is never downgraded, header or not.
            fits = chat("big", 5, content="x")
            assert estimate(models, "big", fits, 5) <= limit - spent
            c.send(request("POST", CHAT, fits, hdrs("sk-k", ALLOW_DOWNGRADE)))
            r = c.response()
            assert r.status == 200 and r.headers.get("x-budget-decision") == "allow", r
            assert_not_downgraded(r)
            assert r.json()["model"] == "big", r.body
            spent += price(models, "big").actual(*openai_usage(r))
            st = scopes_of(c, "sk-k")
            assert st["key:k"][0] == spent, (st, spent)

            # The header is case-insensitive in its name; a stream downgrades too.
            sb = chat("big", 2000, content="stream me", stream=True,
                      stream_options={"include_usage": True},
                      tools=[{"type": "function", "function": {"name": "f"}}])
            c.send(request("POST", CHAT, sb, hdrs("sk-k", {"x-budget-downgrade": "allow"})))
            r = c.response()
            assert_downgrade(r, "big", "d-small",
                             remaining=limit - spent - estimate(models, "d-small", sb, 2000))
            models_seen = {json.loads(d)["model"] for d in
                           (x[6:] for x in r.body.decode().split("\n") if x.startswith("data: "))
                           if d != "[DONE]"}
            assert models_seen == {"d-small"}, models_seen
            spent += p_small.actual(*openai_usage(r))
            st = scopes_of(c, "sk-k")
            assert st["key:k"] == (spent, 0, limit - spent, limit), (st, spent)
        assert mk.stats()["requests"] == before + 3


def test_downgrade_by_team_on_exceed(env):
    """on_exceed: downgrade on the refusing scope's budget downgrades without
    the header; on another scope's budget, or absent, it does not."""
    models = {
        "big": mdl("5.00", "20.00", alts=["alt"]),
        "alt": mdl("0.50", "2.00"),
        "a-big": mdl("5.00", "20.00", provider="mock-anthropic", alts=["a-alt"]),
        "a-alt": mdl("0.80", "4.00", provider="mock-anthropic", cap=1000),
    }
    body = chat("big", 1000, content="team downgrade")
    e_big = estimate(models, "big", body, 1000)
    e_alt = estimate(models, "alt", body, 1000)
    team_limit = e_alt * 3
    assert team_limit < e_big
    keys = [key("kd", "sk-down", "down"),                  # team "down": on_exceed downgrade
            key("kb", "sk-block", "block"),                # team "block": same limit, default
            key("kk", "sk-keyfirst", "down", limit=usd(e_alt))]   # key refuses first
    p_alt = price(models, "alt")
    with Mock(env, "--tokens", "9") as mk, start(
            env, mk, models, keys,
            teams={"down": {"budget": downgrading(usd(team_limit))},
                   "block": {"budget": budget(usd(team_limit))}}) as tg:
        with tg.conn() as c:
            c.send(request("POST", CHAT, body, bearer("sk-down")))
            r = c.response()
            assert_downgrade(r, "big", "alt", remaining=team_limit - e_alt)
            assert r.json()["model"] == "alt", r.body
            spent = p_alt.actual(*openai_usage(r))
            st = scopes_of(c, "sk-down")
            assert st["team:down"] == (spent, 0, team_limit - spent, team_limit), (st, spent)

            # Anthropic route, same team: a-alt, its own cap in the estimate.
            mb = messages("a-big", 5000, content="anthropic")
            e_aalt = estimate(models, "a-alt", mb, 5000)
            assert estimate(models, "a-big", mb, 5000) > team_limit - spent >= e_aalt
            c.send(request("POST", MESSAGES, mb, bearer("sk-down")))
            r = c.response()
            assert_downgrade(r, "a-big", "a-alt", remaining=team_limit - spent - e_aalt)
            assert r.headers.get("x-budget-output-clamped") == "1000", r.headers
            assert r.json()["model"] == "a-alt", r.body
            spent += price(models, "a-alt").actual(*anthropic_usage(r))
            st = scopes_of(c, "sk-down")
            assert st["team:down"][0] == spent, (st, spent)

        # The same call in a team without on_exceed: refused.
        r = call(tg, CHAT, body, bearer("sk-block"))
        j = refused(r, "team_ceiling_reached")
        assert [(a["model"], a["fits_budget"]) for a in j["alternatives"]] == [("alt", True)], j
        # In the downgrading team, but refused by the key's own budget
        # (on_exceed: block by default): no downgrade, though alt would fit.
        r = call(tg, CHAT, body, bearer("sk-keyfirst"))
        j = refused(r, "key_ceiling_reached")
        assert j["alternatives"] == [entry(models, "alt", body, 1000, e_alt)], j
        assert j["alternatives"][0]["fits_budget"] is True, j


def test_downgrade_commits_alternative_price(env):
    """Several downgraded calls: every scope (run, key, team, org) is charged
    the alternative's price x the provider's usage, exactly; the requested
    model's price never appears."""
    models = {
        "prem": mdl("7.00", "21.00", cap=8000, alts=["econ"]),
        "econ": mdl("0.30", "1.50", cap=8000),    # fractions of a micro-USD per token
    }
    p_econ, p_prem = price(models, "econ"), price(models, "prem")
    keys = [key("k", "sk-k", "t", limit="0.05")]
    calls = [(chat("prem", 4000, content="a" * n), t) for n, t in
             ((1, "3"), (333, "17"), (1001, "64"), (7, "1"), (50, "250"))]
    limit = micros("0.05")
    for b, _ in calls:
        assert estimate(models, "prem", b, 4000) > limit > 5 * estimate(models, "econ", b, 4000)
    with Mock(env) as mk, start(env, mk, models, keys, orgs={"o": {"budget": budget("9.00")}},
                                teams={"t": {"parent": "o", "budget": budget("5.00")}}) as tg:
        spent, n_prem = 0, 0
        with tg.conn() as c:
            for b, tokens in calls:
                h = hdrs("sk-k", ALLOW_DOWNGRADE, {"X-Run-Id": "run-dg", "x-mock-tokens": tokens})
                c.send(request("POST", CHAT, b, h))
                r = c.response()
                assert_downgrade(r, "prem", "econ",
                                 remaining=limit - spent - estimate(models, "econ", b, 4000))
                inp, out = openai_usage(r)
                assert out == int(tokens), (out, tokens)
                a = p_econ.actual(inp, out)
                assert a != p_prem.actual(inp, out)
                spent += a
                st = scopes_of(c, "sk-k", run="run-dg")
                assert set(st) == {"run:run-dg", "key:k", "team:t", "org:o"}, st
                for name in st:
                    assert st[name][:2] == (spent, 0), (name, st, spent)
                assert st["key:k"][2] == limit - spent, st
                n_prem += 1
        assert mk.stats()["requests"] == n_prem


def test_downgrade_upstream_body_and_provider(env):
    """The provider of the alternative gets the request, byte for byte the
    agent's body with only the model's value changed (to upstream_model
    when configured), and its usage is what is charged."""
    seen = []

    def respond(conn_no, req_no, raw):
        seen.append(raw)
        reply = json.dumps({"id": "chatcmpl-fake", "object": "chat.completion",
                            "model": "whatever", "choices": [{"index": 0, "message": {
                                "role": "assistant", "content": "ok"},
                                "finish_reason": "stop"}],
                            "usage": {"prompt_tokens": 1234, "completion_tokens": 77,
                                      "total_tokens": 1311}}).encode()
        return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n" % len(reply)) + reply

    models = {
        "big": mdl("5.00", "20.00", alts=["via-fake", "plain-fake"]),
        "via-fake": mdl("0.25", "1.25", provider="fake", upstream="vendor/real-model@2024"),
        "plain-fake": mdl("0.20", "1.00", provider="fake"),
    }
    keys = [key("k", "sk-k", "t", limit="0.01", models=["big", "via-fake"]),
            key("k2", "sk-k2", "t", limit="0.01", models=["big", "plain-fake"])]
    tool = [{"type": "function", "function": {"name": "g"}}]
    body = chat("big", 4000, content="fake it", temperature=0.5, tools=tool)
    assert estimate(models, "big", body, 4000) > micros("0.01")
    with Mock(env) as mk, FakeProvider(respond) as fp:
        providers = {"fake": {"base_url": "http://%s:%d/v1" % (LOOPBACK, fp.port),
                              "format": "openai", "timeout_ms": 30000,
                              "api_key_env": "FAKE_KEY"}}
        with start(env, mk, models, keys, providers=providers,
                   teams={"t": {"budget": budget("10.00")}}) as tg:
            before = mk.stats()["requests"]
            for secret, chosen, sent in (("sk-k", "via-fake", "vendor/real-model@2024"),
                                         ("sk-k2", "plain-fake", "plain-fake")):
                with tg.conn() as c:
                    c.send(request("POST", CHAT + "?q=1", body, hdrs(secret, ALLOW_DOWNGRADE)))
                    r = c.response()
                    assert_downgrade(r, "big", chosen)
                    assert r.json()["usage"]["prompt_tokens"] == 1234, r.body
                    line, fields, got = parse_request(seen[-1])
                    assert line == "POST /v1/chat/completions?q=1 HTTP/1.1", line
                    assert got == rewritten(body, "big", sent), got
                    clen = [v for k, v in fields if k.lower() == "content-length"]
                    assert clen == [str(len(got))], fields
                    st = scopes_of(c, secret)
                    a = price(models, chosen).actual(1234, 77)
                    kid = "key:" + ("k" if secret == "sk-k" else "k2")
                    assert st[kid][:2] == (a, 0), (st, a)
            assert len(seen) == 2 and mk.stats()["requests"] == before


def test_downgrade_none_fits(env):
    """No usable alternative fits: the 402 as usual, alternatives all
    fits_budget false; unusable ones are not tried either."""
    models = {
        "big": mdl("5.00", "20.00", alts=["a1", "a2", "notools"]),
        "a1": mdl("1.00", "4.00"),
        "a2": mdl("0.50", "2.00"),
        "notools": mdl("0.001", "0.001", supports=("vision",)),   # would fit, lacks tools
    }
    tool = [{"type": "function", "function": {"name": "h"}}]
    body = chat("big", 3000, content="nothing fits", tools=tool)
    e_a2 = estimate(models, "a2", body, 3000)
    limit = e_a2 - 1
    keys = [key("k", "sk-k", "t", limit="100.00"), key("kt", "sk-kt", "down")]
    with Mock(env) as mk, start(env, mk, models, keys,
                                teams={"t": {"budget": budget(usd(limit))},
                                       "down": {"budget": downgrading(usd(limit))}}) as tg:
        before = mk.stats()["requests"]
        for secret, extra in (("sk-k", ALLOW_DOWNGRADE), ("sk-kt", {})):
            r = call(tg, CHAT, body, hdrs(secret, extra))
            j = refused(r, "team_ceiling_reached")
            want = [entry(models, n, body, 3000, limit) for n in ("a1", "a2")]
            assert not any(w["fits_budget"] for w in want)
            assert norm(j["alternatives"]) == norm(want), (j["alternatives"], want)
            assert j["budget"]["estimate_usd"] == usd(estimate(models, "big", body, 3000)), j
            assert j["budget"]["committed_usd"] == "0.00" and \
                j["budget"]["reserved_usd"] == "0.00", j
        # Without tools "notools" is usable and fits: downgraded to it.
        plain = chat("big", 3000, content="nothing fits" + "." * 60)
        assert len(plain) >= len(body) and estimate(models, "a2", plain, 3000) > limit
        r = call(tg, CHAT, plain, hdrs("sk-k", ALLOW_DOWNGRADE))
        assert_downgrade(r, "big", "notools")
        assert mk.stats()["requests"] == before + 1
        # A model with no alternatives at all: an empty list, and no downgrade.
        b = chat("a1", 3000, content="x" * 5000)
        assert estimate(models, "a1", b, 3000) > limit
        r = call(tg, CHAT, b, hdrs("sk-k", ALLOW_DOWNGRADE))
        assert refused(r, "team_ceiling_reached")["alternatives"] == [], r.body
        assert mk.stats()["requests"] == before + 1


def test_downgrade_to_the_seventh_alternative(env):
    """A model may list up to eight alternatives (config refuses more):
    the refusal lists every usable one, and a downgrade reaches the first
    that fits even when it is the seventh."""
    names = ["alt%d" % i for i in range(1, 9)]
    models = {"big": mdl("5.00", "20.00", alts=names)}
    for i, n in enumerate(names):
        # alt1..alt6 too expensive, alt7 and alt8 fit
        models[n] = mdl("1.00", "4.00" if i < 6 else "0.40")
    body = chat("big", 1000, content="seven")
    limit = estimate(models, "alt7", body, 1000)
    assert estimate(models, "alt6", body, 1000) > limit
    keys = [key("k", "sk-k", "t", limit=usd(limit))]
    with Mock(env) as mk, start(env, mk, models, keys,
                                teams={"t": {"budget": budget("10.00")}}) as tg:
        errors = []
        r = call(tg, CHAT, body, bearer("sk-k"))
        j = refused(r, "key_ceiling_reached")
        want = [entry(models, n, body, 1000, limit) for n in names]
        if norm(j["alternatives"]) != norm(want):
            errors.append("402 lists %s, want %s" % ([a["model"] for a in j["alternatives"]],
                                                    names))
        r = call(tg, CHAT, body, hdrs("sk-k", ALLOW_DOWNGRADE))
        if r.status != 200:
            errors.append("with X-Budget-Downgrade: allow: %d %s (want a downgrade to alt7)" %
                          (r.status, r.headers.get("x-budget-decision")))
        else:
            assert_downgrade(r, "big", "alt7", remaining=0)
        assert not errors, errors
        assert mk.stats()["requests"] == 1


def test_downgrade_on_run_ceiling(env):
    """The run is one of the call's scopes: a run limit that refuses the
    requested model downgrades (with the header) to an alternative that fits
    it, and the run is charged the alternative's price."""
    models = {"big": mdl("5.00", "20.00", alts=["alt"]), "alt": mdl("0.50", "2.00")}
    body = chat("big", 1000, content="run ceiling")
    e_alt = estimate(models, "alt", body, 1000)
    keys = [key("k", "sk-k", "t", limit="10.00")]
    with Mock(env, "--tokens", "7") as mk, start(env, mk, models, keys,
                                                 teams={"t": {"budget": budget("10.00")}}) as tg:
        h = {"X-Run-Id": "run-ceil", "X-Budget-Run-Limit": usd(e_alt)}
        with tg.conn() as c:
            c.send(request("POST", CHAT, body, hdrs("sk-k", h)))
            j = refused(c.response(), "run_ceiling_reached")
            assert j["alternatives"] == [entry(models, "alt", body, 1000, e_alt)], j
            assert j["alternatives"][0]["fits_budget"] is True, j
            c.send(request("POST", CHAT, body, hdrs("sk-k", h, ALLOW_DOWNGRADE)))
            r = c.response()
            assert_downgrade(r, "big", "alt", remaining=0)
            a = price(models, "alt").actual(*openai_usage(r))
            st = scopes_of(c, "sk-k", run="run-ceil")
            assert st["run:run-ceil"] == (a, 0, e_alt - a, e_alt), (st, a)
            assert st["key:k"][:2] == (a, 0), st
        assert mk.stats()["requests"] == 1


def test_capabilities_seen_through_escapes(env):
    """A request uses vision or a JSON schema whatever way its JSON spells
    the strings: "imag\u0065_url" is "image_url" to the provider. Such a
    request must not be listed or downgraded onto a model lacking it."""
    models = {
        "big": mdl("10.00", "40.00", alts=["no-vision", "no-json", "full"]),
        "no-vision": mdl("0.10", "0.20", supports=("tools", "json_schema")),
        "no-json": mdl("0.10", "0.20", supports=("tools", "vision")),
        "full": mdl("0.10", "0.40"),
    }
    img = (b'{"model":"big","max_tokens":100,"messages":[{"role":"user","content":['
           b'{"type":"imag\u0065_url","imag\u0065_url":{"url":"data:image/png;base64,AAAA"}}'
           b']}]}')
    schema = (b'{"model":"big","max_tokens":100,"messages":[{"role":"user","content":"hi"}],'
              b'"response_format":{"type":"json_sch\u0065ma","json_sch\u0065ma":'
              b'{"name":"s","schema":{}}}}')
    assert json.loads(img)["messages"][0]["content"][0]["type"] == "image_url"
    assert json.loads(schema)["response_format"]["type"] == "json_schema"
    keys = [key("k", "sk-k", "t", limit="0.0001")]
    with Mock(env) as mk, start(env, mk, models, keys,
                                teams={"t": {"budget": budget("100.00")}}) as tg:
        errors = []
        for b, lacking in ((img, "no-vision"), (schema, "no-json")):
            j = refused(call(tg, CHAT, b, bearer("sk-k")), "key_ceiling_reached")
            listed = [a["model"] for a in j["alternatives"]]
            if lacking in listed:
                errors.append("%s listed for %s" % (lacking, b))
            r = call(tg, CHAT, b, hdrs("sk-k", ALLOW_DOWNGRADE))
            if r.headers.get("x-budget-selected-model") == lacking:
                errors.append("downgraded to %s: %s" % (lacking, b))
        assert not errors, errors


# ---------------------------------------------------------------- 3. clamp

def test_output_clamped_header(env):
    """X-Budget-Output-Clamped: <cap> on an allowed call whose max_tokens
    exceeds the model's max_output_tokens; on a downgrade, the
    alternative's cap; never on a refusal or when nothing was clamped."""
    models = {"m": mdl("1.00", "2.00", cap=1000, alts=["small"]),
              "small": mdl("0.10", "0.20", cap=300),
              "e": mdl("0.02", "0", cap=1, supports=())}
    keys = [key("k", "sk-k", "t", limit="0.05"),
            key("k2", "sk-k2", "t", limit="0.0001")]      # 100 micro-USD
    with Mock(env, "--tokens", "5") as mk, start(
            env, mk, models, keys, teams={"t": {"budget": budget("10.00")}}) as tg:
        for b, want in ((chat("m", 5000), "1000"), (chat("m", 1001), "1000"),
                        (chat("m", 1000), None), (chat("m", 10), None), (chat("m"), None),
                        (chat("m", None, max_completion_tokens=2000), "1000"),
                        (chat("small", 301), "300"), (chat("small", 300), None)):
            r = call(tg, CHAT, b, bearer("sk-k"))
            assert r.status == 200 and r.headers["x-budget-decision"] == "allow", (b, r)
            assert r.headers.get("x-budget-output-clamped") == want, (b, r.headers)
        r = call(tg, EMBEDDINGS, body_bytes({"model": "e", "input": "abc"}), bearer("sk-k"))
        assert r.status == 200 and "x-budget-output-clamped" not in r.headers, r
        # Refused: no clamp header (nothing was sent).
        big = chat("m", 5000, content="y" * 60000)
        assert estimate(models, "m", big, 5000) > micros("0.05")
        refused(call(tg, CHAT, big, bearer("sk-k")), "key_ceiling_reached")
        # Downgraded: the alternative's cap, though 900 is within m's own.
        b = chat("m", 900)
        assert estimate(models, "m", b, 900) > 100 >= estimate(models, "small", b, 900)
        r = call(tg, CHAT, b, hdrs("sk-k2", ALLOW_DOWNGRADE))
        assert_downgrade(r, "m", "small", remaining=100 - estimate(models, "small", b, 900))
        assert r.headers.get("x-budget-output-clamped") == "300", r.headers
        # ... and none when the alternative's cap is not below max_tokens.
        b = chat("m", 200)
        assert estimate(models, "m", b, 200) > 100 >= estimate(models, "small", b, 200)
        r = call(tg, CHAT, b, hdrs("sk-k2", ALLOW_DOWNGRADE))
        assert r.status == 200, r
        assert r.headers.get("x-budget-decision") == "downgrade", r.headers
        assert "x-budget-output-clamped" not in r.headers, r.headers


# ---------------------------------------------------------------- 4. JSON keys

def test_escaped_top_level_key_refused(env):
    """A top-level key spelled with escapes would be one key to the provider
    and another to tollgate: refused 400 invalid_json, never forwarded."""
    models = {"m": mdl("1.00", "2.00", cap=1000)}
    keys = [key("k", "sk-k", "t", limit="1.00")]
    with Mock(env) as mk, start(env, mk, models, keys,
                                teams={"t": {"budget": budget("10.00")}}) as tg:
        before = mk.stats()["requests"]
        for b in (b'{"mod\\u0065l":"m","max_tokens":5,"messages":[]}',
                  b'{"model":"m","max_tok\\u0065ns":999999,"messages":[]}',
                  b'{"model":"m","max_tokens":5,"stre\\u0061m":true,"messages":[]}',
                  b'{"model":"m","max_tokens":5,"t\\u006fols":[],"messages":[]}',
                  b'{"model":"m","max_tokens":5,"messages":[],"x\\"y":1}',
                  b'{"model":"m","max_tokens":5,"\\/messages":[]}'):
            r = call(tg, CHAT, b, bearer("sk-k"))
            problem(r, 400, "invalid_json")
        # An escaped model value is not a plain string either.
        problem(call(tg, CHAT, b'{"model":"\\u006d","max_tokens":5,"messages":[]}',
                     bearer("sk-k")), 400)
        assert mk.stats()["requests"] == before
        # Escapes elsewhere (values, nested keys) are ordinary JSON.
        ok = b'{"model":"m","max_tokens":5,"messages":[{"r\\u006fle":"user",' \
             b'"content":"caf\\u00e9 \\"quoted\\" \\\\ \\/"}]}'
        r = call(tg, CHAT, ok, bearer("sk-k"))
        assert r.status == 200, r
        assert mk.stats()["requests"] == before + 1


# ---------------------------------------------------------------- 5. names

def test_config_names_validated(env):
    """Names end up in headers, JSON and upstream bodies verbatim: 1 to 128
    of [A-Za-z0-9._:/@+-], else `tollgate -t` exits 1 with file:line."""
    ok_name = "a.b_c:d/e@f+g-H9"
    long_ok = "m" * 64          # models and key ids: the tree now caps them at 64
    long_team = "t" * 128

    def base(team="team:a", model="m", org="org.one", user="u@x.example", kid="key/1+x",
             prices="2024-06-01+eu/v1.2", upstream="vendor/model@v1+x"):
        models = {model: mdl("1.00", "2.00", alts=[ok_name]), ok_name: mdl("0.10", "0.20"),
                  long_ok: mdl("0.10", "0.20", upstream=upstream)}
        cfg = make_config(free_port(), free_port(), models=models)
        cfg["prices_version"] = prices
        cfg["orgs"] = {org: {"budget": budget("10.00")}}
        cfg["teams"] = {team: {"parent": org, "budget": budget("5.00")},
                        long_team: {"parent": org}}
        cfg["users"] = {user: {"parent": team}}
        cfg["keys"] = [key(kid, "sk-1", team, user=user, models=[model, ok_name])]
        return cfg

    tmp = tempfile.mkdtemp(prefix="e2e-names-")
    try:
        def check(cfg):
            text = to_yaml(cfg) + "\n"
            p = os.path.join(tmp, "c.yaml")
            with open(p, "w") as f:
                f.write(text)
            rc, out = run_tollgate_check(env, p)
            return rc, out, p, text.splitlines()

        rc, out, _, _ = check(base())
        assert rc == 0, out

        # (config, the bad value, where the error must point: the line that
        # starts with this text)
        cases = [
            (base(team="a b"), "a b", "a b:"),
            (base(model='x"y'), 'x"y', 'x"y:'),
            (base(model="m" * 129), "m" * 129, "m" * 129 + ":"),
            (base(model=""), None, None),
            (base(org="org\\one"), "org\\one", "org\\one:"),
            (base(user="u<x>"), "u<x>", "u<x>:"),
            # key errors point at the `keys:` line or the entry's (the
            # message names the key)
            (base(kid="key one"), "key one", ('- id: "key one"', "keys:")),
            (base(kid="k\u00e9"), "k\u00e9", ('- id: "k\\u00e9"', "keys:")),
            # (its line: test_prices_version_error_line)
            (base(prices="v 1"), "v 1", ()),
            # the model's line or the field's
            (base(upstream="up stream"), "up stream", (long_ok + ":", "upstream_model:")),
        ]
        for cfg, bad, where in cases:
            rc, out, p, lines = check(cfg)
            assert rc == 1, (bad, rc, out)
            errs = {int(m.group(1)): m.group(2) for m in
                    re.finditer(r"^%s:(\d+): (.*)$" % re.escape(p), out, re.M)}
            assert errs, (bad, out)
            if where is None:
                continue
            assert any(bad in msg for msg in errs.values()), (bad, errs)
            if isinstance(where, str):
                where = (where,)
            if not where:
                continue
            want = [i + 1 for i, ln in enumerate(lines)
                    if any(ln.strip().startswith(w) for w in where)]
            assert len(want) == len(where), (where, lines)
            assert any(n in want and bad in errs[n] for n in errs), (bad, want, errs)
    finally:
        for f in os.listdir(tmp):
            os.unlink(os.path.join(tmp, f))
        os.rmdir(tmp)


def test_prices_version_error_line(env):
    """An invalid prices_version is reported at its own line (file:line:
    message locates the error), like every other config error."""
    cfg = make_config(free_port(), free_port(), models={"m": mdl("1.00", "2.00")})
    cfg["prices_version"] = "v 1"
    text = to_yaml(cfg) + "\n"
    lines = text.splitlines()
    want = [i + 1 for i, ln in enumerate(lines) if ln.startswith("prices_version:")]
    assert len(want) == 1 and want[0] != 1, want
    fd, p = tempfile.mkstemp(prefix="e2e-names-", suffix=".yaml")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        rc, out = run_tollgate_check(env, p)
    finally:
        os.unlink(p)
    assert rc == 1, (rc, out)
    m = re.search(r"^%s:(\d+): .*prices_version 'v 1'" % re.escape(p), out, re.M)
    assert m, out
    assert int(m.group(1)) == want[0], "reported at line %s, prices_version is at line %d: %s" % (
        m.group(1), want[0], out.strip())
