"""End-to-end: what tollgate relays, and that it relays it byte for byte.

Each test starts a mockllm and a tollgate whose providers point at it. A
reply through tollgate is compared with the reply mockllm gives the same
request directly: same status, same provider headers, the same body (and,
when chunked, the same chunks), once the only nondeterminism of mockllm,
its reply counter in ids (chatcmpl-mock-<n>, msg_mock_<n>), is normalised.
"""

import json

from harness import (CHAT, COMPLETIONS, EMBEDDINGS, MESSAGES, Conn, Mock, Tollgate,
                     call, normalise_ids, problem, prompt_tokens,
                     request, sse_events)

# Provider reply fields a relay must pass on unchanged (framing included:
# the body is relayed in its original framing).
RELAYED_HEADERS = ("content-type", "cache-control", "transfer-encoding")


def assert_same_reply(via, direct, what=""):
    """`via` (through tollgate) carries exactly the reply `direct` (mockllm)."""
    assert via.status == direct.status, (what, via.status, direct.status, via.body[:300])
    for h in RELAYED_HEADERS:
        assert via.headers.get(h) == direct.headers.get(h), (what, h, via.headers,
                                                             direct.headers)
    assert ("content-length" in via.headers) == ("content-length" in direct.headers), \
        (what, via.headers, direct.headers)
    if direct.chunks is not None:
        assert via.chunks is not None, what
        got = [normalise_ids(c) for c in via.chunks]
        want = [normalise_ids(c) for c in direct.chunks]
        assert got == want, (what, got[:3], want[:3], len(got), len(want))
    assert normalise_ids(via.body) == normalise_ids(direct.body), \
        (what, via.body[:400], direct.body[:400])


def relay_both(tg, mock, path, body, headers=None, what=""):
    """Sends one request directly and through tollgate; returns the latter."""
    direct = call(mock, path, body, headers)
    via = call(tg, path, body, headers)
    assert_same_reply(via, direct, what or "%s %s %s" % (path, body, headers))
    return via


def chat(model="gpt-4o", stream=False, **extra):
    body = {"model": model, "messages": [{"role": "user", "content": "hello there"}]}
    if stream:
        body["stream"] = True
    body.update(extra)
    return body


def messages(model="claude-sonnet-4", stream=False, **extra):
    body = {"model": model, "max_tokens": 64,
            "messages": [{"role": "user", "content": "hello there"}]}
    if stream:
        body["stream"] = True
    body.update(extra)
    return body


# ---------------------------------------------------------------- tests

def test_models_list(env):
    with Mock(env) as m, Tollgate(env, m) as tg:
        r = call(tg, "/v1/models", None, method="GET")
        assert r.status == 200, r
        assert r.headers["content-type"].startswith("application/json"), r.headers
        j = r.json()
        ids = [d["id"] for d in j["data"]]
        assert sorted(ids) == sorted(tg.config["models"]), ids
        for d in j["data"]:
            assert "pricing" in d and d["pricing"]["input_usd_per_mtok"] is not None, d
        gpt = next(d for d in j["data"] if d["id"] == "gpt-4o")
        assert gpt["pricing"]["input_usd_per_mtok"] == "2.50", gpt
        assert gpt["pricing"]["output_usd_per_mtok"] == "10.00", gpt
        # Query strings do not change the route; other methods are refused.
        assert call(tg, "/v1/models?limit=5", None, method="GET").json() == j
        r = call(tg, "/v1/models", {"model": "gpt-4o"})
        assert r.status == 405, r
        assert m.stats()["requests"] == 0     # answered locally


def test_openai_relay_byte_exact(env):
    with Mock(env, "--tokens", "9") as m, Tollgate(env, m) as tg:
        relay_both(tg, m, CHAT, chat())
        relay_both(tg, m, CHAT, chat(max_tokens=4), {"x-mock-tokens": "30"})
        relay_both(tg, m, CHAT, chat(stream=True))
        relay_both(tg, m, CHAT, chat(stream=True, stream_options={"include_usage": True}),
                   {"x-mock-tokens-per-event": "3", "x-mock-tokens": "17"})
        relay_both(tg, m, CHAT, chat("gpt-4o-mini", stream=True), {"x-mock-tool-call": "1"})
        relay_both(tg, m, CHAT, chat("gpt-4o-mini"), {"x-mock-tool-call": "1"})
        relay_both(tg, m, COMPLETIONS, {"model": "gpt-4o-mini", "prompt": "once upon"})
        relay_both(tg, m, COMPLETIONS, {"model": "gpt-4o-mini", "prompt": "once", "stream": True,
                                        "stream_options": {"include_usage": True}})
        relay_both(tg, m, EMBEDDINGS, {"model": "text-embedding-3-small",
                                       "input": "some text to embed"})
        # A provider error is relayed as is (status and body), not rewritten.
        r = relay_both(tg, m, CHAT, chat(stream=True), {"x-mock-status": "429"})
        assert r.status == 429 and r.json()["error"]["code"] == "mock_429", r
        # The text and usage are the mock's own: prompt_tokens proves the body
        # reached the provider unchanged.
        body = chat(stream=True, stream_options={"include_usage": True})
        r = call(tg, CHAT, body)
        usage = json.loads(sse_events(r.body)[-2][1])["usage"]
        assert usage["prompt_tokens"] == prompt_tokens(body), usage
        assert usage["completion_tokens"] == 9, usage


def test_anthropic_relay_byte_exact(env):
    with Mock(env, "--tokens", "11") as m, Tollgate(env, m) as tg:
        relay_both(tg, m, MESSAGES, messages())
        relay_both(tg, m, MESSAGES, messages(max_tokens=5), {"x-mock-tokens": "40"})
        r = relay_both(tg, m, MESSAGES, messages("claude-haiku-3-5", stream=True),
                       {"x-mock-tokens-per-event": "2"})
        names = [n for n, _ in sse_events(r.body)]
        assert names[0] == "message_start" and names[-1] == "message_stop", names
        relay_both(tg, m, MESSAGES, messages(stream=True), {"x-mock-tool-call": "1"})
        r = relay_both(tg, m, MESSAGES, messages(), {"x-mock-status": "529"})
        assert r.status == 529 and r.json()["type"] == "error", r
        body = messages()
        j = call(tg, MESSAGES, body).json()
        assert j["usage"] == {"input_tokens": prompt_tokens(body), "output_tokens": 11}, j
        # A model of the other format is refused on this route, and vice versa.
        r = call(tg, MESSAGES, chat())
        problem(r, 400, "invalid_request")
        r = call(tg, CHAT, messages())
        problem(r, 400, "invalid_request")
        assert m.stats()["requests"] == 2 * 5 + 1   # the refusals never went upstream


def test_upstream_model_and_path_mapping(env):
    models = {
        "alias": {"provider": "mock-openai", "upstream_model": "gpt-4o-2024-08-06",
                  "input_usd_per_mtok": "1", "output_usd_per_mtok": "2",
                  "max_output_tokens": 100, "context_tokens": 1000, "tier": "x"},
        "plain": {"provider": "prefixed", "input_usd_per_mtok": "1",
                  "output_usd_per_mtok": "2", "max_output_tokens": 100,
                  "context_tokens": 1000, "tier": "x"},
    }
    with Mock(env, "--tokens", "5") as m:
        providers = {"prefixed": {"base_url": "http://127.0.0.1:%d/openai/v1/" % m.port,
                                  "format": "openai"}}
        with Tollgate(env, m, models=models, providers=providers) as tg:
            # The model name is swapped for upstream_model, the rest is unchanged.
            body = {"model": "alias", "messages": [{"role": "user", "content": "hi"}],
                    "temperature": 0}
            sent = dict(body, model="gpt-4o-2024-08-06")
            direct = call(m, CHAT, sent)
            via = call(tg, CHAT, body)
            assert_same_reply(via, direct)
            assert via.json()["model"] == "gpt-4o-2024-08-06"
            assert via.json()["usage"]["prompt_tokens"] == prompt_tokens(sent)
            # base_url's path prefix is kept; the query string goes along.
            direct = call(m, "/openai/v1/chat/completions?x=1", {"model": "plain"})
            via = call(tg, CHAT + "?x=1", {"model": "plain"})
            assert_same_reply(via, direct)


def test_keepalive_both_sides(env):
    with Mock(env, "--tokens", "3") as m, Tollgate(env, m) as tg:
        before = m.stats()
        n = 60
        with tg.conn() as c:
            for i in range(n):
                kind = i % 4
                if kind == 0:
                    c.send(request("POST", CHAT, chat(), {"x-mock-tokens": str(i)}))
                    r = c.response()
                    assert r.json()["usage"]["completion_tokens"] == i, (i, r)
                elif kind == 1:
                    c.send(request("POST", CHAT, chat(stream=True), {"x-mock-tokens": str(i)}))
                    r = c.response()
                    events = sse_events(r.body)
                    assert r.status == 200 and events[-1][1] == "[DONE]", (i, r)
                    assert len(events) == 1 + i + 1 + 1, (i, len(events))
                elif kind == 2:
                    c.send(request("POST", MESSAGES, messages(stream=True),
                                   {"x-mock-tokens": str(i)}))
                    r = c.response()
                    assert sse_events(r.body)[-1][0] == "message_stop", (i, r)
                else:
                    c.send(request("POST", EMBEDDINGS, {"model": "text-embedding-3-small",
                                                        "input": "x" * i}))
                    r = c.response()
                    assert r.json()["object"] == "list", (i, r)
                assert r.status == 200 and "close" not in r.headers.get("connection", ""), r
            after = m.stats()
        assert after["requests"] - before["requests"] == n, (before, after)
        # One client connection, sequential requests: one upstream connection
        # per provider (mock-openai, mock-anthropic), reused throughout (the
        # stats call itself is one more accepted connection).
        opened = after["accepted"] - before["accepted"] - 1
        assert opened == 2, (before, after)

        # Sequential requests on new client connections still reuse the
        # per-shard upstream pools: at most a few connections in all.
        before = m.stats()
        for i in range(40):
            r = call(tg, CHAT if i % 2 else MESSAGES, chat() if i % 2 else messages())
            assert r.status == 200 and r.headers.get("connection") == "close", r
        after = m.stats()
        opened = after["accepted"] - before["accepted"] - 1
        assert opened <= 2 * 2 + 2, ("upstream connections opened for 40 requests",
                                     before, after)
        assert after["requests"] - before["requests"] == 40


def test_chunked_request_and_reply(env):
    with Mock(env, "--tokens", "120") as m, Tollgate(env, m) as tg:
        body = json.dumps(chat(messages=[{"role": "user", "content": "chunked upload " * 300}])
                          ).encode()
        direct = call(m, CHAT, body)
        for size in (1, 7, 1000, 3000, len(body)):
            with tg.conn() as c:
                c.send(request("POST", CHAT, body, chunked_body=True, chunk_size=size))
                via = c.response()
                assert_same_reply(via, direct, "chunk size %d" % size)
                assert via.json()["usage"]["prompt_tokens"] == prompt_tokens(body)
                # The connection is still in step afterwards.
                c.send(request("GET", "/v1/models"))
                assert c.response().status == 200
        # Chunk extensions and an uppercase hex size are valid framing.
        half = len(body) // 2
        framed = (b"%X;ext=1\r\n%s\r\n%x ; name=\"v\"\r\n%s\r\n0\r\n\r\n" %
                  (half, body[:half], len(body) - half, body[half:]))
        head = (b"POST %s HTTP/1.1\r\nHost: e2e\r\nTransfer-Encoding: chunked\r\n"
                b"Connection: close\r\n\r\n" % CHAT.encode())
        with tg.conn() as c:
            c.send(head + framed)
            assert_same_reply(c.response(), direct, "chunk extensions")

        # A chunked reply (x-mock-chunked) keeps its chunks through the relay.
        h = {"x-mock-chunked": "1"}
        for b in (chat(), chat(stream=True), messages()):
            path = MESSAGES if "max_tokens" in b else CHAT
            r = relay_both(tg, m, path, b, h)
            assert r.chunks is not None and len(r.chunks) >= 2, r.headers
        # Both at once, on one keep-alive connection.
        with tg.conn() as c:
            for _ in range(3):
                c.send(request("POST", CHAT, body, h, chunked_body=True, chunk_size=500))
                r = c.response()
                assert r.chunks and r.json()["usage"]["prompt_tokens"] == prompt_tokens(body)


def test_large_request_body(env):
    with Mock(env, "--tokens", "2") as m, Tollgate(env, m) as tg:
        big = {"model": "gpt-4o", "messages": [{"role": "user", "content": "y" * (10 << 20)}]}
        raw = json.dumps(big).encode()
        for chunked in (False, True):
            with tg.conn(timeout=60) as c:
                c.send(request("POST", CHAT, raw, chunked_body=chunked, chunk_size=65536))
                r = c.response()
                assert r.status == 200, r
                assert r.json()["usage"]["prompt_tokens"] == prompt_tokens(raw), \
                    (chunked, r.json()["usage"], prompt_tokens(raw))
                # And a small one right after, on the same connection.
                c.send(request("POST", CHAT, chat()))
                assert c.response().json()["usage"]["prompt_tokens"] == prompt_tokens(chat())


def test_pipelined_requests_in_order(env):
    with Mock(env) as m, Tollgate(env, m) as tg:
        n = 100
        reqs, kinds = [], []
        for i in range(n):
            kind = i % 5
            h = {"x-mock-tokens": str(i % 23), "x-e2e-pad": "p" * 100}
            if kind == 0:
                reqs.append(request("POST", CHAT, chat(), h))
            elif kind == 1:
                reqs.append(request("POST", CHAT, chat(stream=True), h))
            elif kind == 2:
                reqs.append(request("POST", MESSAGES, messages(), h))
            elif kind == 3:
                reqs.append(request("POST", CHAT, chat("no-such-model"), h))   # local 404
            else:
                reqs.append(request("GET", "/v1/models"))
            kinds.append(kind)
        data = b"".join(reqs)
        assert len(data) > 20000            # more than one read buffer
        with tg.conn(timeout=20) as c:
            c.send(data)
            for i, kind in enumerate(kinds):
                r = c.response()
                t = i % 23
                if kind == 0:
                    assert r.status == 200 and r.json()["usage"]["completion_tokens"] == t, (i, r)
                elif kind == 1:
                    events = sse_events(r.body)
                    assert r.status == 200 and len(events) == 1 + t + 1 + 1, (i, r)
                elif kind == 2:
                    assert r.json()["usage"]["output_tokens"] == min(t, 64), (i, r)
                elif kind == 3:
                    problem(r, 404, "unknown_model")
                else:
                    assert r.status == 200 and r.json()["object"] == "list", (i, r)
            # A slow stream holds the request pipelined behind it; order is kept.
            c.send(request("POST", CHAT, chat(stream=True),
                           {"x-mock-token-delay-us": "20000", "x-mock-tokens": "5"}) +
                   request("POST", CHAT, chat("gpt-4o-mini"), {"x-mock-tokens": "1"}))
            r = c.response()
            assert len(sse_events(r.body)) == 1 + 5 + 2 and b"gpt-4o-mini" not in r.body, r
            assert c.response().json()["model"] == "gpt-4o-mini"
            assert c.silent_for(0.1)


def test_expect_continue_and_keepalive_after_errors(env):
    with Mock(env, "--tokens", "4") as m, Tollgate(env, m) as tg:
        payload = json.dumps(chat()).encode()
        with tg.conn() as c:
            c.send(b"POST %s HTTP/1.1\r\nHost: e2e\r\nExpect: 100-continue\r\n"
                   b"Content-Length: %d\r\n\r\n" % (CHAT.encode(), len(payload)))
            status, _ = c.head()
            assert status == 100, status
            c.send(payload)
            assert c.response().json()["usage"]["completion_tokens"] == 4
            # Local errors keep the connection: unknown model, bad JSON, no route.
            c.send(request("POST", CHAT, chat("gpt-5-ultra")))
            problem(c.response(), 404, "unknown_model")
            c.send(request("POST", CHAT, b'{"model": "gpt-4o", '))
            problem(c.response(), 400, "invalid_json")
            c.send(request("GET", "/v2/nothing"))
            assert c.response().status == 404
            c.send(request("GET", CHAT))
            assert c.response().status == 405
            c.send(request("POST", CHAT, chat()))
            assert c.response().status == 200
        # Keep-alive on the provider side survives an upstream that closes
        # after its reply (Connection: close): the next request still works.
        for _ in range(3):
            r = call(tg, CHAT, chat(), {"x-mock-close": "1"})
            assert r.status == 200 and r.json()["usage"]["completion_tokens"] == 4, r
        with tg.conn() as c:
            for _ in range(5):
                c.send(request("POST", CHAT, chat()))
                assert c.response().status == 200
        # An unsupported expectation is refused.
        with tg.conn() as c:
            c.send(b"POST %s HTTP/1.1\r\nHost: e2e\r\nExpect: something\r\n"
                   b"Content-Length: %d\r\n\r\n%s" % (CHAT.encode(), len(payload), payload))
            assert c.response().status == 417


def test_error_codes_for_bad_bodies(env):
    with Mock(env) as m, Tollgate(env, m) as tg:
        r = call(tg, CHAT, chat("unknown-model-x"))
        j = problem(r, 404, "unknown_model")
        assert j["type"] and j["title"], j
        r = call(tg, MESSAGES, messages("claude-9"))
        problem(r, 404, "unknown_model")
        for bad in (b"{", b"not json", b"[1, 2]", b"", b'{"model": "gpt-4o"} trailing',
                    b'"just a string"'):
            r = call(tg, CHAT, bad)
            problem(r, 400, "invalid_json")
        for bad in (b'{"messages": []}', b'{"model": 5}', b'{"model": ""}'):
            r = call(tg, CHAT, bad)
            problem(r, 400, "invalid_request")
        assert m.stats()["requests"] == 0


def test_head_and_http10_clients(env):
    with Mock(env, "--tokens", "6") as m, Tollgate(env, m) as tg:
        # HEAD gets the head a GET would get and no body, so the reply
        # pipelined behind it is read from the right byte.
        with tg.conn() as c:
            c.send(request("HEAD", "/v1/models") + request("HEAD", CHAT) +
                   request("GET", "/v1/models"))
            status, headers = c.head()
            assert status == 200 and int(headers["content-length"]) > 0, headers
            status, headers = c.head()
            assert status == 405, (status, headers)
            r = c.response()
            assert r.status == 200 and r.json()["object"] == "list", r
            assert c.silent_for(0.1)
        # An HTTP/1.0 agent cannot read chunked framing: a stream comes to
        # it delimited by the close, the same bytes as mockllm's own reply
        # to an HTTP/1.0 request.
        body = json.dumps(chat(stream=True)).encode()
        req10 = b"POST %s HTTP/1.0\r\nContent-Length: %d\r\n\r\n%s" % (CHAT.encode(),
                                                                       len(body), body)
        for server in (m, tg):
            with Conn(server.port) as c:
                c.send(req10)
                status, headers = c.head()
                assert status == 200, status
                assert "transfer-encoding" not in headers, (server, headers)
                raw = c.rest()
                if server is m:
                    want = raw
        assert normalise_ids(raw) == normalise_ids(want), (raw[:300], want[:300])
        events = sse_events(raw)
        assert events[-1][1] == "[DONE]" and len(events) == 1 + 6 + 2, events
        # Non-stream HTTP/1.0: Content-Length framing, then the close.
        body = json.dumps(chat()).encode()
        with Conn(tg.port) as c:
            c.send(b"POST %s HTTP/1.0\r\nContent-Length: %d\r\n\r\n%s" % (CHAT.encode(),
                                                                         len(body), body))
            r = c.response()
            assert r.status == 200 and r.json()["usage"]["completion_tokens"] == 6, r
            assert c.closed_within(2)


def test_reset_mid_reply_with_pipelined_request(env):
    """An agent that pipelines a second request behind one with a large
    reply and then resets the connection mid-reply: the failed send is the
    connection's last operation in flight (no recv is posted while input
    is stashed), and the client must be freed once, not twice (a double
    free closed a stranger's fd and broke the shard's count)."""
    import socket
    import struct
    with Mock(env) as m, Tollgate(env, m) as tg:
        big = request("POST", CHAT, chat(), {"x-mock-tokens": "400000"})
        small = request("POST", CHAT, chat())
        for _ in range(6):
            s = socket.create_connection(("127.0.0.1", tg.port))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.sendall(big + small)
            s.recv(2048)          # the reply has started
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()             # RST while tollgate is still sending
        # every shard still serves, on fresh connections
        for i in range(20):
            with tg.conn() as c:
                c.send(request("POST", CHAT, chat(), {"x-mock-tokens": "3"}))
                r = c.response()
                assert r.status == 200 and r.json()["usage"]["completion_tokens"] == 3, (i, r)
