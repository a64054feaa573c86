"""End-to-end: TLS to providers (https base_url), against mockllm serving
HTTPS (--tls-cert/--tls-key).

tollgate verifies a provider fully: the chain against the provider's
ca_file, the name against base_url's host (mbedTLS 2.28 matches DNS names,
not IP SANs, so providers are addressed as https://localhost:PORT/v1; the
tests skip if "localhost" does not resolve to 127.0.0.1 first, since
tollgate resolves it at load). Certificates are made once per run with the
openssl CLI (test_tls_server.Certs, plus `openssl ca` for validity dates
in the past or the future):

    good      self-signed, SAN DNS:localhost + IP:127.0.0.1 (also the CA file)
    other     another self-signed one (a wrong CA)
    name      self-signed for DNS:otherhost only
    root      a CA, and two leaves it signed for DNS:localhost:
    expired   valid Jan 2020 only
    future    valid from 2040 only

Checked: replies through tollgate equal the same request sent directly to
the mock over TLS, budgets metering them (plain and TLS agent listeners);
upstream TLS connections are pooled and reused; each verification failure
is a 502 upstream_tls_failed naming the check, with a warn line, and no
request ever reaches the provider; insecure_skip_verify; resets and stalls
over TLS behave as in the clear; 2 MiB bodies both ways; a reload that
changes ca_file applies to the next call (the old pool is dropped).
"""

import atexit
import json
import os
import random
import socket
import ssl
import time

from harness import (CHAT, MESSAGES, Mock, Skip, Tollgate, free_port, make_config,
                     normalise_ids, principals, problem, prompt_tokens, request,
                     slow_build, sse_events, wait_until)
from test_budget import budget, key, micros, model
from test_stream import check_cut, counted, parse_sse, split_events
from test_tls_server import Certs, client_ctx, https_call

SECRET = "sk-tls-upstream"
RUN = "tls-upstream-run"
H = {"Authorization": "Bearer " + SECRET, "X-Run-Id": RUN}
WORKERS = 2
SYSTEM_CA = "/etc/ssl/certs/ca-certificates.crt"     # tollgate's default ca_file


# ---------------------------------------------------------------- certificates

_certs = {}

CA_CNF = """[ca]
default_ca = ca_default
[ca_default]
dir = {d}
database = {d}/index.txt
new_certs_dir = {d}/newcerts
serial = {d}/serial
default_md = sha256
policy = policy_any
unique_subject = no
email_in_dn = no
[policy_any]
commonName = supplied
[leaf]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost
"""


def _ca_signed(c, name, root_crt, root_key, start, end):
    """(cert, key): a leaf for DNS:localhost signed by root, valid start..end
    (`openssl ca` takes any dates; OpenSSL 3.0's req/x509 cannot backdate)."""
    d = c.path("ca-" + name)
    os.makedirs(os.path.join(d, "newcerts"))
    open(os.path.join(d, "index.txt"), "w").close()
    with open(os.path.join(d, "serial"), "w") as f:
        f.write("%016x\n" % random.getrandbits(62))       # an even number of digits
    cnf = os.path.join(d, "ca.cnf")
    with open(cnf, "w") as f:
        f.write(CA_CNF.format(d=d))
    crt, key_path, csr = c.path(name + ".crt"), c.path(name + ".key"), c.path(name + ".csr")
    c.openssl("req", "-new", *Certs._newkey("ec", 0), "-nodes", "-keyout", key_path,
              "-out", csr, "-subj", "/CN=localhost")
    c.openssl("ca", "-batch", "-config", cnf, "-notext", "-in", csr, "-out", crt,
              "-cert", root_crt, "-keyfile", root_key, "-startdate", start,
              "-enddate", end, "-extensions", "leaf")
    return crt, key_path


def certs():
    """The run's certificates (see the module's docstring), by name ->
    (cert, key); made once."""
    if not _certs:
        c = Certs()         # Skip without the openssl CLI
        atexit.register(c.close)
        out = {"good": c.self_signed("good"), "other": c.self_signed("other")}
        crt, k = c.path("name.crt"), c.path("name.key")
        c.openssl("req", "-x509", *Certs._newkey("ec", 0), "-nodes", "-keyout", k,
                  "-out", crt, "-days", "3", "-subj", "/CN=otherhost",
                  "-addext", "subjectAltName=DNS:otherhost")
        out["name"] = (crt, k)
        root_crt, root_key = c.path("root.crt"), c.path("root.key")
        c.openssl("req", "-x509", *Certs._newkey("ec", 0), "-nodes", "-keyout", root_key,
                  "-out", root_crt, "-days", "3", "-subj", "/CN=tls-upstream e2e root",
                  "-addext", "basicConstraints=critical,CA:TRUE",
                  "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        out["root"] = (root_crt, root_key)
        out["expired"] = _ca_signed(c, "expired", root_crt, root_key,
                                    "20200101000000Z", "20200201000000Z")
        out["future"] = _ca_signed(c, "future", root_crt, root_key,
                                   "20400101000000Z", "20400201000000Z")
        _certs.update(out)
    return _certs


def need_localhost():
    """tollgate resolves base_url's host at load (getaddrinfo, first answer)."""
    try:
        first = socket.getaddrinfo("localhost", 443, type=socket.SOCK_STREAM)[0][4][0]
    except (OSError, IndexError) as e:
        raise Skip("cannot resolve localhost: %s" % e)
    if first != "127.0.0.1":
        raise Skip("localhost resolves to %s first, not 127.0.0.1" % first)


def tls_mock(env, name, *args):
    crt, k = certs()[name]
    return Mock(env, "--tls-cert", crt, "--tls-key", k, *args)


def ctx_for(name):
    return client_ctx(certs()[name][0])


def tls_stats(m, name="good", hostname="localhost"):
    """mockllm's counters, over its TLS listener (verified against the
    certificate `name`, or not at all if name is None). /mock/stats is not
    counted in `requests`; its connection is in `accepted`."""
    if name is None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx = ctx_for(name)
    r = https_call(m.port, ctx, "/mock/stats", None, method="GET", hostname=hostname)
    assert r.status == 200, r
    return json.loads(r.body)


# ---------------------------------------------------------------- tollgate

def https_provider(port, ca=None, fmt="openai", **extra):
    p = {"base_url": "https://localhost:%d/v1" % port, "format": fmt,
         "api_key_env": "ANTHROPIC_API_KEY" if fmt == "anthropic" else "OPENAI_API_KEY",
         "connect_timeout_ms": 5000, "timeout_ms": 30000, "idle_timeout_ms": 30000}
    if ca:
        p["ca_file"] = ca
    p.update(extra)
    return p


def both_providers(port, ca, **extra):
    """mock-openai and mock-anthropic, both https on `port`."""
    return {"mock-openai": https_provider(port, ca, **extra),
            "mock-anthropic": https_provider(port, ca, "anthropic", **extra)}


MODELS = {"o": model("1.00", "3.00", cap=1000000),
          "a": model("1.00", "3.00", provider="mock-anthropic", cap=1000000)}


def tg_config(port, mock_port, providers, models=None, tls_port=None):
    """A keyed config (key k, team t, budgets on) with these providers; an
    extra TLS listener (cert good) on tls_port if given."""
    k = key("k", SECRET, "t", limit="100.00")
    extra = principals([k], teams={"t": {"budget": budget("100.00")}})
    cfg = make_config(port, mock_port, providers=providers,
                      models=dict(MODELS, **(models or {})), extra=extra,
                      extra_listen=[tls_port] if tls_port else ())
    if tls_port:
        crt, k = certs()["good"]
        cfg["listen"][1]["tls"] = {"cert": crt, "key": k}
    return cfg


def start(env, mock_port, providers, models=None, tls_listener=False):
    port = free_port()
    tls_port = free_port() if tls_listener else None
    cfg = tg_config(port, mock_port, providers, models, tls_port)
    tg = Tollgate(env, config=cfg, port=port, workers=WORKERS)
    tg.tls_port = tls_port
    return tg


def scopes(tg):
    r = tg.call("/v1/budget", None, H, method="GET")
    assert r.status == 200, r
    return {s["scope"]: (micros(s["committed_usd"]), micros(s["reserved_usd"]))
            for s in r.json()["scopes"]}


def settled(tg, timeout=5.0):
    """The scopes once nothing is reserved anywhere (read twice alike)."""
    last = [None]

    def ok():
        st = scopes(tg)
        prev, last[0] = last[0], st
        return st if st == prev and all(v[1] == 0 for v in st.values()) else None
    try:
        st = wait_until(ok, timeout, what="nothing reserved")
    except AssertionError:
        raise AssertionError("reserved not back to 0: %r" % (last[0],))
    assert "key:k" in st and "team:t" in st, st
    return st


def chat(stream=False, usage=False, content="hello over upstream tls"):
    b = {"model": "o", "messages": [{"role": "user", "content": content}]}
    if stream:
        b["stream"] = True
        if usage:
            b["stream_options"] = {"include_usage": True}
    return b


def msgs(stream=False, content="hello over upstream tls", model_name="a"):
    b = {"model": model_name, "max_tokens": 4096,
         "messages": [{"role": "user", "content": content}]}
    if stream:
        b["stream"] = True
    return b


def assert_same(via, direct, what):
    """`via` (through tollgate) carries the reply `direct` (the mock over TLS)."""
    assert direct.status == 200, (what, direct)
    assert via.status == direct.status, (what, via, direct)
    assert via.headers.get("content-type") == direct.headers.get("content-type"), \
        (what, via.headers, direct.headers)
    a, b = normalise_ids(via.body), normalise_ids(direct.body)
    assert a == b, (what, len(a), len(b), a[:300], b[:300])


def stream_complete(r, path, what=""):
    assert r.status == 200, (what, r)
    assert r.headers.get("content-type", "").startswith("text/event-stream"), (what, r.headers)
    ev = sse_events(r.body)
    if path == CHAT:
        assert ev[-1][1] == "[DONE]", (what, ev[-3:])
    else:
        assert ev[-1][0] == "message_stop", (what, ev[-3:])


def charged(tg, r, timeout=5.0):
    """The committed charge (micro-USD) of reply r, from its decision record."""
    did = r.headers.get("x-budget-decision-id")
    assert did, r.headers

    def get():
        d = tg.call("/budget/decisions/" + did, None, H, method="GET")
        return d.json() if d.status == 200 else None
    j = wait_until(get, timeout, what="decision %s" % did)
    assert j["outcome"] == "committed", j
    return micros(j["actual_usd"])


def cut_charge(b, fmt, upstream):
    """What a cut stream costs at 1.00/3.00 per Mtok (test_stream.py's rule):
    input (OpenAI: body bytes + 64; Anthropic: message_start's) + 3 x the
    counted text bytes."""
    if fmt == "openai":
        inp = len(json.dumps(b).encode()) + 64
    else:
        inp = json.loads(parse_sse(upstream[0])[0][1])["message"]["usage"]["input_tokens"]
    return inp + 3 * counted(upstream)[0]


def reply_usage(r, path):
    """(input, output) tokens a reply reports, JSON or SSE, either format;
    None for an OpenAI stream without a usage chunk."""
    if not r.headers.get("content-type", "").startswith("text/event-stream"):
        u = r.json()["usage"]
        if path == CHAT:
            return u["prompt_tokens"], u["completion_tokens"]
        return u["input_tokens"], u["output_tokens"]
    evs = [json.loads(d) for _, d in sse_events(r.body) if d and d != "[DONE]"]
    if path == CHAT:
        us = [e["usage"] for e in evs if e.get("usage")]
        return (us[-1]["prompt_tokens"], us[-1]["completion_tokens"]) if us else None
    start_ev = [e for e in evs if e.get("type") == "message_start"][0]
    delta = [e for e in evs if e.get("type") == "message_delta"][-1]
    return start_ev["message"]["usage"]["input_tokens"], delta["usage"]["output_tokens"]


def check_charge(tg, r, path, body, hd, what):
    """r's charge: the reported usage at 1.00/3.00 per Mtok (an OpenAI stream
    the agent asked no usage of is charged the usage tollgate asked for
    itself: the output is known, the input is that of the rewritten body)."""
    got = charged(tg, r)
    n_out = int(hd.get("x-mock-tokens", 9))
    u = reply_usage(r, path)
    if u is None:
        assert b'"usage"' not in r.body, (what, r.body[-300:])
        assert got > 3 * n_out + prompt_tokens(body), (what, got)
        return got
    assert u[1] == n_out, (what, u)
    assert got == u[0] + 3 * u[1], (what, "charged", got, "usage", u)
    return got


def reloads_done(tg, generation):
    return tg.log().count("reloaded: generation %d" % generation) >= WORKERS


# ---------------------------------------------------------------- tests

def test_tls_upstream_relay_matches_direct(env):
    """OpenAI chat and Anthropic messages, JSON and SSE, through tollgate to
    an https mockllm verified against its own certificate: the same bytes
    (ids normalised) as the mock gives the request directly over TLS, on a
    plain agent connection and on a TLS listener; budgets metered them:
    each call is charged the usage the reply reports (at 1.00/3.00 per
    Mtok), the key's committed is their sum, nothing is left reserved."""
    need_localhost()
    good = certs()["good"][0]
    with tls_mock(env, "good", "--tokens", "9") as m, \
            start(env, m.port, both_providers(m.port, good), tls_listener=True) as tg:
        ctx = ctx_for("good")
        cases = [(CHAT, chat(), {}),
                 (CHAT, chat(stream=True), {}),
                 (CHAT, chat(stream=True, usage=True),
                  {"x-mock-tokens": "21", "x-mock-tokens-per-event": "4"}),
                 (MESSAGES, msgs(), {}),
                 (MESSAGES, msgs(stream=True), {"x-mock-tokens": "13"})]
        before = tls_stats(m)
        spent = 0
        with tg.conn(timeout=10) as c:
            for path, body, hd in cases:
                what = ("plain agent", path, body, hd)
                direct = https_call(m.port, ctx, path, body, hd)
                c.send(request("POST", path, body, dict(H, **hd)))
                via = c.response()
                assert_same(via, direct, what)
                if body.get("stream"):
                    stream_complete(via, path, what)
                    assert via.headers.get("transfer-encoding") == "chunked", via.headers
                if path == CHAT and not body.get("stream"):
                    u = via.json()["usage"]
                    assert u["prompt_tokens"] == prompt_tokens(body), u
                    assert u["completion_tokens"] == 9, u
                spent += check_charge(tg, via, path, body, hd, what)
        # The same over a TLS agent listener: TLS on both sides.
        for path, body, hd in cases:
            what = ("tls agent", path, body, hd)
            direct = https_call(m.port, ctx, path, body, hd)
            via = https_call(tg.tls_port, ctx, path, body, dict(H, **hd))
            assert_same(via, direct, what)
            spent += check_charge(tg, via, path, body, hd, what)
        st = settled(tg)
        assert st["key:k"][0] == st["team:t"][0] == spent > 0, (spent, st)
        after = tls_stats(m)
        # Every POST reached the mock once through tollgate, once directly.
        assert after["requests"] - before["requests"] == 4 * len(cases), (before, after)
        assert "TLS handshake failed" not in tg.log(), tg.log_tail()


def test_tls_upstream_keepalive_reuse(env):
    """30 calls on one agent connection (chat and messages, JSON and SSE),
    then 30 calls on fresh agent connections: the https mock accepted at
    most providers x shards connections, i.e. TLS sessions are pooled and
    reused, not handshaken per call."""
    need_localhost()
    good = certs()["good"][0]
    bound = 2 * WORKERS         # providers x shards
    with tls_mock(env, "good", "--tokens", "5") as m, \
            start(env, m.port, both_providers(m.port, good)) as tg:
        kinds = [(CHAT, chat()), (CHAT, chat(stream=True)), (MESSAGES, msgs()),
                 (MESSAGES, msgs(stream=True))]
        before = tls_stats(m)
        with tg.conn(timeout=10) as c:
            for i in range(30):
                path, body = kinds[i % 4]
                c.send(request("POST", path, body, H))
                r = c.response()
                assert r.status == 200, (i, r)
                if body.get("stream"):
                    stream_complete(r, path, i)
        mid = tls_stats(m)
        one_conn = mid["accepted"] - before["accepted"] - 1       # minus the stats call
        assert 1 <= one_conn <= 2, ("one agent connection, one shard: at most one "
                                    "upstream connection per provider", before, mid)
        for i in range(30):
            path, body = kinds[i % 4]
            r = tg.call(path, body, H)
            assert r.status == 200, (i, r)
        after = tls_stats(m)
        total = after["accepted"] - before["accepted"] - 2         # minus 2 stats calls
        assert 1 <= total <= bound, ("upstream TLS connections for 60 calls", total,
                                     before, mid, after)
        assert after["requests"] - before["requests"] == 60, (before, after)
        settled(tg)


def test_tls_upstream_verification_failures(env):
    """Each failed check is a 502 upstream_tls_failed whose detail names
    it, with a warn line `provider P: TLS handshake failed: ...`, on JSON
    and stream calls alike, every time (no connection is pooled), and the
    provider never sees a request: a wrong CA, no ca_file (the system
    bundle, without the test CA), a certificate for another name, an
    expired one, one not yet valid. TLS to a plain-HTTP server is
    a 502 too. tollgate serves a good provider throughout."""
    need_localhost()
    cs = certs()
    slack = 3.0 if slow_build(env) else 1.5
    with tls_mock(env, "good") as good_m, tls_mock(env, "name") as name_m, \
            tls_mock(env, "expired") as exp_m, tls_mock(env, "future") as fut_m, \
            Mock(env) as plain_m:
        models = {n: model("1.00", "3.00", provider="p-" + n, cap=1000000)
                  for n in ("wrongca", "name", "expired", "future", "plain")}
        provs = {
            "mock-openai": https_provider(good_m.port, cs["good"][0]),
            "mock-anthropic": https_provider(good_m.port, cs["good"][0], "anthropic"),
            "p-wrongca": https_provider(good_m.port, cs["other"][0]),
            "p-name": https_provider(name_m.port, cs["name"][0]),
            "p-expired": https_provider(exp_m.port, cs["root"][0]),
            "p-future": https_provider(fut_m.port, cs["root"][0]),
            "p-plain": https_provider(plain_m.port, cs["good"][0]),
        }
        if os.path.isfile(SYSTEM_CA):
            # No ca_file: the system bundle, which does not hold the test CA.
            provs["p-sysca"] = https_provider(good_m.port)
            models["sysca"] = model("1.00", "3.00", provider="p-sysca", cap=1000000)
        expect = {
            "wrongca": "The certificate is not correctly signed by the trusted CA",
            "name": "Common Name (CN) does not match",
            "expired": "The certificate validity has expired",
            "future": "The certificate validity starts in the future",
        }
        if "sysca" in models:
            expect["sysca"] = expect["wrongca"]
        good_before = tls_stats(good_m)
        spent = 0
        with start(env, plain_m.port, provs, models) as tg:
            with tg.conn(timeout=10) as c:
                for name, text in expect.items():
                    for stream in (False, True, False):
                        body = dict(chat(stream=stream, usage=stream), model=name)
                        t0 = time.monotonic()
                        c.send(request("POST", CHAT, body, H))
                        r = c.response()
                        took = time.monotonic() - t0
                        j = problem(r, 502, "upstream_tls_failed")
                        assert j["detail"].startswith("TLS with the provider failed: "
                                                      "certificate verification failed: "), j
                        assert text in j["detail"], (name, text, j)
                        for t in set(expect.values()) - {text}:
                            assert t not in j["detail"], (name, "also says", t, j)
                        assert took < slack, (name, took)
                    line = "provider p-%s: TLS handshake failed: certificate verification " \
                           "failed: " % name
                    log = [x for x in tg.log().splitlines() if line in x]
                    assert len(log) == 3 and all(text in x and '"level":"warn"' in x
                                                 for x in log), \
                        (name, log, tg.log_tail())
                    # The good provider, on the same agent connection.
                    c.send(request("POST", CHAT, chat(), H))
                    r = c.response()
                    assert r.status == 200, r
                    spent += charged(tg, r)
                # TLS to a plain HTTP server: refused, tollgate lives on.
                for stream in (False, True):
                    body = dict(chat(stream=stream), model="plain")
                    t0 = time.monotonic()
                    c.send(request("POST", CHAT, body, H))
                    r = c.response()
                    j = problem(r, 502)
                    assert j["code"] in ("upstream_tls_failed", "upstream_failed"), j
                    assert time.monotonic() - t0 < slack, time.monotonic() - t0
                assert "provider p-plain:" in tg.log(), tg.log_tail()
                c.send(request("POST", MESSAGES, msgs(stream=True), H))
                r = c.response()
                stream_complete(r, MESSAGES)
                spent += charged(tg, r)
            assert tg.alive()
            # The refused calls were released and charged nothing.
            st = settled(tg)
            assert st["key:k"][0] == spent > 0, (spent, st)
        # No request went out in the clear to a provider that failed a check.
        for m, name, host in ((name_m, "name", "otherhost"), (exp_m, None, "localhost"),
                              (fut_m, None, "localhost")):
            s = tls_stats(m, name, host)
            assert s["requests"] == 0 and s["accepted"] >= 3 + 1, (host, s)
        # The wrong-CA (and system-CA) calls went to good_m too: only the
        # good calls (one after each failing provider, one messages) got
        # there.
        good_after = tls_stats(good_m)
        assert good_after["requests"] - good_before["requests"] == len(expect) + 1, \
            (good_before, good_after)


def test_tls_upstream_insecure_skip_verify(env):
    """insecure_skip_verify: true accepts a wrong CA, a wrong name and an
    expired certificate alike (calls succeed, replies intact), and tollgate
    warns about it at start and at every reload."""
    need_localhost()
    cs = certs()
    with tls_mock(env, "good", "--tokens", "7") as good_m, \
            tls_mock(env, "name", "--tokens", "7") as name_m, \
            tls_mock(env, "expired", "--tokens", "7") as exp_m:
        provs = both_providers(good_m.port, cs["good"][0])
        provs.update({
            "p-insecure": https_provider(good_m.port, cs["other"][0],
                                         insecure_skip_verify=True),
            "p-insecure-name": https_provider(name_m.port, insecure_skip_verify=True),
            "p-insecure-expired": https_provider(exp_m.port, cs["other"][0], "anthropic",
                                                 insecure_skip_verify=True),
        })
        models = {"i": model("1.00", "3.00", provider="p-insecure", cap=1000000),
                  "i-name": model("1.00", "3.00", provider="p-insecure-name", cap=1000000),
                  "i-exp": model("1.00", "3.00", provider="p-insecure-expired", cap=1000000)}
        with start(env, good_m.port, provs, models) as tg:
            def warnings():
                return [x for x in tg.log().splitlines() if "insecure_skip_verify" in x]
            w = warnings()
            for p in ("p-insecure", "p-insecure-name", "p-insecure-expired"):
                assert any(p in x for x in w), (p, w)
            assert len(w) == 3 and all('"level":"warn"' in x for x in w), w
            with tg.conn(timeout=10) as c:
                for mname in ("i", "i-name"):
                    for stream in (False, True):
                        body = dict(chat(stream=stream), model=mname)
                        c.send(request("POST", CHAT, body, H))
                        r = c.response()
                        assert r.status == 200, (mname, stream, r)
                        if stream:
                            stream_complete(r, CHAT, mname)
                            text = "".join(json.loads(d)["choices"][0]["delta"]
                                           .get("content", "")
                                           for _, d in sse_events(r.body)
                                           if d != "[DONE]" and json.loads(d)["choices"])
                            assert len(text.split()) == 7, text
                        else:
                            assert r.json()["usage"]["completion_tokens"] == 7, r
                for stream in (False, True):
                    c.send(request("POST", MESSAGES, msgs(stream=stream, model_name="i-exp"),
                                   H))
                    r = c.response()
                    assert r.status == 200, r
                    if stream:
                        stream_complete(r, MESSAGES)
            assert "TLS handshake failed" not in tg.log(), tg.log_tail()
            settled(tg)
            # A reload warns again.
            tg.reload(tg.config)
            wait_until(lambda: reloads_done(tg, 2), 10 if slow_build(env) else 5,
                       what="the reload")
            assert len(warnings()) == 6, warnings()


def test_tls_upstream_reset_and_stall(env):
    """Over TLS as in the clear (test_stream.py, test_upstream.py): a
    provider reset mid-stream (x-mock-reset-after) ends the agent's stream
    with the final event upstream_failed after every event relayed; a
    stall mid-stream (x-mock-stall-after, idle_timeout_ms 300) with
    upstream_timeout about 0.3 s later; a provider that never answers
    (x-mock-stall, timeout_ms 300) is a 504 upstream_timeout. A cut stream
    is charged what was counted (input + 3 x text bytes). Nothing stays
    reserved, tollgate serves on, the stalled connections are closed."""
    need_localhost()
    good = certs()["good"][0]
    slack = 3.0 if slow_build(env) else 1.5
    with tls_mock(env, "good") as m, \
            start(env, m.port, both_providers(m.port, good, timeout_ms=300,
                                              idle_timeout_ms=300)) as tg:
        with tg.conn(timeout=10) as c:
            # Resets mid-stream.
            for fmt, path, b, n, per in (("openai", CHAT, chat(stream=True, usage=True), 5, "2"),
                                         ("openai", CHAT, chat(stream=True), 1, "2"),
                                         ("anthropic", MESSAGES, msgs(stream=True), 3, "6")):
                c.send(request("POST", path, b, dict(H, **{
                    "x-mock-tokens": "100", "x-mock-tokens-per-event": per,
                    "x-mock-reset-after": str(n)})))
                r = c.response()
                assert r.status == 200, r
                relayed = split_events(r.body)
                upstream = relayed[:-(2 if fmt == "openai" else 1)]
                check_cut(r, r.body, len(b"".join(upstream)), fmt, "upstream_failed",
                          what=(fmt, "reset after", n))
                assert counted(upstream)[1] == n, (fmt, n, upstream)
                assert charged(tg, r) == cut_charge(b, fmt, upstream), \
                    (fmt, n, charged(tg, r), cut_charge(b, fmt, upstream))
            assert "provider mock-openai" in tg.log() and "provider mock-anthropic" in tg.log()
            # Stalls mid-stream.
            for fmt, path, b in (("openai", CHAT, chat(stream=True)),
                                 ("anthropic", MESSAGES, msgs(stream=True))):
                t0 = time.monotonic()
                c.send(request("POST", path, b, dict(H, **{
                    "x-mock-tokens": "50", "x-mock-stall-after": "3",
                    "x-mock-tokens-per-event": "2"})))
                r = c.response()
                took = time.monotonic() - t0
                assert 0.28 <= took < 0.3 + slack, (fmt, took)
                relayed = split_events(r.body)
                upstream = relayed[:-(2 if fmt == "openai" else 1)]
                check_cut(r, r.body, len(b"".join(upstream)), fmt, "upstream_timeout",
                          what=(fmt, "stall"))
                assert counted(upstream)[1] == 3, (fmt, upstream)
                assert charged(tg, r) == cut_charge(b, fmt, upstream), \
                    (fmt, charged(tg, r), cut_charge(b, fmt, upstream))
            # No answer at all: 504.
            for path, b in ((CHAT, chat()), (CHAT, chat(stream=True)), (MESSAGES, msgs())):
                t0 = time.monotonic()
                c.send(request("POST", path, b, dict(H, **{"x-mock-stall": "1"})))
                j = problem(c.response(), 504, "upstream_timeout")
                took = time.monotonic() - t0
                assert 0.28 <= took < 0.3 + slack, (path, took, j)
            # tollgate serves on, on the same agent connection.
            for path, b in ((CHAT, chat()), (MESSAGES, msgs(stream=True)),
                            (CHAT, chat(stream=True))):
                c.send(request("POST", path, b, H))
                r = c.response()
                assert r.status == 200, r
        st = settled(tg)
        assert st["key:k"][0] > 0, st
        assert "TLS handshake failed" not in tg.log(), tg.log_tail()
        # The reset and stalled connections are gone: what stays open is the
        # pool (at most providers x shards) and the stats call itself.
        wait_until(lambda: tls_stats(m)["open"] <= 1 + 2 * WORKERS, 5,
                   what="stalled upstream connections closed")


def test_tls_upstream_large_bodies(env):
    """A 2 MiB request body and a ~2 MB reply, through tollgate to the
    https mock, intact: the mock counts the body's bytes exactly (its
    prompt_tokens), the reply equals the direct one byte for byte (ids
    normalised); on a plain agent connection and a TLS listener."""
    need_localhost()
    good = certs()["good"][0]
    with tls_mock(env, "good", "--tokens", "3") as m, \
            start(env, m.port, both_providers(m.port, good), tls_listener=True) as tg:
        ctx = ctx_for("good")
        size = 2 * 1024 * 1024
        base = json.dumps(chat(content="")).encode()
        big = chat(content="y" * (size - len(base)))
        raw = json.dumps(big).encode()
        assert len(raw) == size
        direct = https_call(m.port, ctx, CHAT, big)
        assert direct.json()["usage"]["prompt_tokens"] == prompt_tokens(raw) == size // 4
        with tg.conn(timeout=30) as c:
            c.send(request("POST", CHAT, big, H))
            via = c.response()
            assert_same(via, direct, "2 MiB request")
            # Anthropic too.
            mbig = msgs(content="z" * (size - len(json.dumps(msgs(content="")))))
            d2 = https_call(m.port, ctx, MESSAGES, mbig)
            assert d2.json()["usage"]["input_tokens"] == size // 4, d2.body[:300]
            c.send(request("POST", MESSAGES, mbig, H))
            assert_same(c.response(), d2, "2 MiB messages request")
            # ~2 MB reply (420 000 tokens).
            hd = {"x-mock-tokens": "420000"}
            direct = https_call(m.port, ctx, CHAT, chat(), hd)
            assert len(direct.body) > 2000000, len(direct.body)
            c.send(request("POST", CHAT, chat(), dict(H, **hd)))
            via = c.response()
            assert len(via.body) == len(direct.body), (len(via.body), len(direct.body))
            assert_same(via, direct, "2 MB reply")
            assert via.json()["usage"]["completion_tokens"] == 420000
        # Both ways over the TLS listener as well.
        via = https_call(tg.tls_port, ctx, CHAT, big, H, timeout=30)
        assert via.json()["usage"]["prompt_tokens"] == size // 4, via.body[:300]
        via = https_call(tg.tls_port, ctx, CHAT, chat(), dict(H, **hd), timeout=30)
        assert_same(via, direct, "2 MB reply over the TLS listener")
        st = settled(tg)
        assert st["key:k"][0] > 0, st


def test_tls_upstream_reload_ca_file(env):
    """SIGHUP with the provider's ca_file changed (right -> wrong): the next
    call, on the same agent connection whose upstream was pooled, is a 502
    upstream_tls_failed (the old generation's pool is dropped), as is every
    new one; a stream in flight across the reload ends normally, and its
    connection is not pooled into the new generation; back to the right
    CA: calls succeed again."""
    need_localhost()
    cs = certs()
    wait = 10 if slow_build(env) else 5
    with tls_mock(env, "good", "--tokens", "5") as m:
        port = free_port()
        good_cfg = tg_config(port, m.port, both_providers(m.port, cs["good"][0]))
        bad_cfg = tg_config(port, m.port, both_providers(m.port, cs["other"][0]))
        with Tollgate(env, config=good_cfg, port=port, workers=WORKERS) as tg:
            c = tg.conn(timeout=20)
            for path, b in ((CHAT, chat()), (MESSAGES, msgs())):
                c.send(request("POST", path, b, H))
                assert c.response().status == 200
            accepted = tls_stats(m)["accepted"]
            # A slow stream started before the reload (25 x 40 ms).
            s = tg.conn(timeout=20)
            s.send(request("POST", CHAT, chat(stream=True),
                           dict(H, **{"x-mock-tokens": "25", "x-mock-token-delay-us": "40000"})))
            assert s.head()[0] == 200
            chunks = [s.chunk()]

            tg.reload(bad_cfg)
            wait_until(lambda: reloads_done(tg, 2), wait, what="the reload to the wrong CA")
            for path, b in ((CHAT, chat()), (MESSAGES, msgs(stream=True)), (CHAT, chat())):
                c.send(request("POST", path, b, H))
                j = problem(c.response(), 502, "upstream_tls_failed")
                assert "not correctly signed by the trusted CA" in j["detail"], j
            for _ in range(6):      # fresh agent connections, either shard
                j = problem(tg.call(CHAT, chat(), H), 502, "upstream_tls_failed")
                assert "not correctly signed by the trusted CA" in j["detail"], j
            while True:
                ch = s.chunk()
                if not ch:
                    break
                chunks.append(ch)
            ev = sse_events(b"".join(chunks))
            assert ev[-1][1] == "[DONE]" and len(ev) >= 25, ev[-3:]
            # That stream's provider connection (old generation) is not
            # pooled for the new one: the next call on its shard fails too.
            for path, b in ((CHAT, chat()), (CHAT, chat(stream=True))):
                s.send(request("POST", path, b, H))
                j = problem(s.response(), 502, "upstream_tls_failed")
                assert "not correctly signed by the trusted CA" in j["detail"], j
            s.close()
            assert "provider mock-openai: TLS handshake failed: certificate verification " \
                   "failed: The certificate is not correctly signed" in tg.log(), tg.log_tail()

            tg.reload(good_cfg)
            wait_until(lambda: reloads_done(tg, 3), wait, what="the reload back")
            for path, b in ((CHAT, chat()), (MESSAGES, msgs(stream=True)), (CHAT, chat())):
                c.send(request("POST", path, b, H))
                r = c.response()
                assert r.status == 200, r
            for _ in range(6):
                assert tg.call(MESSAGES, msgs(), H).status == 200
            c.close()
            # The failed handshakes (11) and the new generation's pool are
            # new connections, and so is the stats call.
            assert tls_stats(m)["accepted"] >= accepted + 11 + 1 + 1, tls_stats(m)
            settled(tg)
