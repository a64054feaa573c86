"""End-to-end tests of build/mockllm, the mock LLM provider.

Each test_* function takes `env` (a dict; env['build'] is the build
directory), starts its own mockllm on a free loopback port (--listen
127.0.0.1:0; the port is read from the ready line) and raises
AssertionError on failure. Standard library only: raw sockets, so the tests
see the exact bytes on the wire (chunk boundaries, resets, closes). The
process, HTTP client and payload helpers are shared with the tollgate tests
(harness.py).
"""

import json
import math
import os
import signal
import socket
import subprocess
import time

from harness import CHAT, Mock, call, prompt_tokens, request, sse_events

# The mock's word list: output token i is WORDS[(i*7+3) % 64] + " ".
WORDS = (
    "the quick brown fox jumps over a lazy "
    "dog while small cat sat on the warm "
    "mat and read an old book about river "
    "stone green hill light rain fell softly near "
    "open door where bird sang sweet song at "
    "dawn every day we walk along quiet road "
    "to see bright sky clear blue water under "
    "tall trees then rest by fire until night"
).split()
LOOP = "please call the same tool again right now".split()
assert len(WORDS) == 64


def expected_text(n, loop=False):
    if loop:
        return "".join(LOOP[i % 8] + " " for i in range(n))
    return "".join(WORDS[(i * 7 + 3) % 64] + " " for i in range(n))


# ---------------------------------------------------------------- tests

def test_cli_health_404_and_signals(env):
    binary = os.path.join(env.get("build", "build"), "mockllm")
    for bad in (["--threads", "0"], ["--tokens", "x"], ["--bogus"], ["extra"],
                ["--listen", "nonsense"]):
        rc = subprocess.run([binary, *bad], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, timeout=5).returncode
        assert rc == 1, (bad, rc)
    for sig in (signal.SIGTERM, signal.SIGINT):
        with Mock(env) as m:
            r = call(m, "/health", None, method="GET")
            assert r.status == 200 and r.body == b"ok", (r.status, r.body)
            r = call(m, "/v1/nothing", {"model": "m"})
            assert r.status == 404 and "error" in r.json(), r.body
            r = call(m, "/health", {"model": "m"})     # POST /health is not a route
            assert r.status == 404, r.status
            m.proc.send_signal(sig)
            assert m.proc.wait(5) == 0, m.proc.returncode


def test_nonstream_shapes_and_usage(env):
    with Mock(env, "--tokens", "12") as m:
        body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello"}]}
        r = call(m, CHAT, body)
        assert r.status == 200 and r.headers["content-type"] == "application/json"
        assert "connection" not in r.headers or r.headers["connection"] == "close"
        j = r.json()
        assert j["object"] == "chat.completion" and j["model"] == "gpt-4o"
        assert j["id"].startswith("chatcmpl-mock-") and j["created"] == 1700000000
        msg = j["choices"][0]
        assert msg["message"] == {"role": "assistant", "content": expected_text(12)}, msg
        assert msg["finish_reason"] == "stop"
        p = prompt_tokens(body)
        assert j["usage"] == {"prompt_tokens": p, "completion_tokens": 12,
                              "total_tokens": p + 12}, j["usage"]

        # max_tokens caps and says "length"; x-mock-tokens overrides --tokens.
        body = {"model": "m", "max_tokens": 5}
        j = call(m, CHAT, body, {"x-mock-tokens": "30"}).json()
        assert j["choices"][0]["message"]["content"] == expected_text(5)
        assert j["choices"][0]["finish_reason"] == "length"
        assert j["usage"]["completion_tokens"] == 5
        j = call(m, CHAT, {"model": "m", "max_completion_tokens": 40},
                 {"x-mock-tokens": "30"}).json()
        assert j["usage"]["completion_tokens"] == 30
        assert j["choices"][0]["finish_reason"] == "stop"

        body = {"model": "davinci", "prompt": "x"}
        j = call(m, "/v1/completions", body).json()
        assert j["object"] == "text_completion"
        assert j["choices"] == [{"text": expected_text(12), "index": 0,
                                 "finish_reason": "stop"}], j["choices"]
        assert j["usage"]["prompt_tokens"] == prompt_tokens(body)

        body = {"model": "emb", "input": "some text to embed"}
        j = call(m, "/v1/embeddings", body).json()
        p = prompt_tokens(body)
        assert j == {"object": "list", "data": [{"object": "embedding", "index": 0,
                     "embedding": [0.1, 0.2, 0.3, 0.4]}], "model": "emb",
                     "usage": {"prompt_tokens": p, "total_tokens": p}}, j

        body = {"model": "claude-x", "max_tokens": 4, "messages": []}
        j = call(m, "/v1/messages", body, {"x-mock-tokens": "6"}).json()
        assert j["id"].startswith("msg_mock_") and j["type"] == "message"
        assert j["content"] == [{"type": "text", "text": expected_text(4)}]
        assert j["stop_reason"] == "max_tokens" and j["stop_sequence"] is None
        assert j["usage"] == {"input_tokens": prompt_tokens(body), "output_tokens": 4}
        j = call(m, "/v1/messages", {"model": "c"}).json()
        assert j["stop_reason"] == "end_turn"

        # A proxy's base_url may add a prefix before /v1.
        j = call(m, "/openai/v1/chat/completions?x=1", {"model": "m"}).json()
        assert j["object"] == "chat.completion"


def test_bad_requests(env):
    with Mock(env) as m:
        for body in (b"{", b"[]", b'{"model": 5}', b'{"messages": []}', b'{"model": ""}',
                     b'{"model":"m","max_tokens":1.5}', b'{"model":"m"} x', b""):
            r = call(m, CHAT, body)
            assert r.status == 400, (body, r.status)
            assert r.json()["error"]["type"] == "invalid_request_error", r.body
        r = call(m, "/v1/messages", b'{"max_tokens": 3}')
        assert r.status == 400
        assert r.json()["type"] == "error", r.body
        assert r.json()["error"]["type"] == "invalid_request_error"

        # Malformed HTTP: 400 and close.
        c = m.conn()
        c.send(b"THIS IS NOT HTTP\r\n\r\n")
        r = c.response()
        assert r.status == 400 and r.headers.get("connection") == "close"
        assert c.closed_within(2)
        # Headers over 64 KiB: 431.
        c = m.conn()
        c.send(b"GET /health HTTP/1.1\r\nHost: m\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n")
        r = c.response()
        assert r.status == 431, r.status
        # A declared body over 64 MiB: 413 before the body is read.
        c = m.conn()
        c.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: m\r\n"
               b"Content-Length: 67108865\r\n\r\n")
        r = c.response()
        assert r.status == 413, r.status
        assert c.closed_within(3)


def test_chunked_bodies_both_ways(env):
    with Mock(env, "--tokens", "40") as m:
        body = json.dumps({"model": "m", "messages": [{"role": "user",
                           "content": "chunked upload " * 20}]}).encode()
        c = m.conn()
        c.send(request("POST", CHAT, body, {"x-mock-chunked": "1"}, chunked_body=True))
        r = c.response()
        assert r.status == 200 and r.chunks is not None and len(r.chunks) >= 2, r.headers
        j = r.json()
        assert j["usage"]["prompt_tokens"] == math.ceil(len(body) / 4), j["usage"]
        assert j["choices"][0]["message"]["content"] == expected_text(40)
        # Same connection still usable (keep-alive after a chunked upload).
        c.send(request("GET", "/health"))
        assert c.response().body == b"ok"
        c.close()

        # Expect: 100-continue is answered before the body is sent.
        c = m.conn()
        payload = json.dumps({"model": "m"}).encode()
        c.send(b"POST /v1/completions HTTP/1.1\r\nHost: m\r\nExpect: 100-continue\r\n"
               b"Content-Length: %d\r\n\r\n" % len(payload))
        status, _ = c.head()
        assert status == 100, status
        c.send(payload)
        assert c.response().status == 200
        c.close()


def test_byte_by_byte_and_http10(env):
    with Mock(env) as m:
        # The parser resumes at any byte: header names and values split anywhere.
        c = m.conn()
        c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        data = request("POST", CHAT, {"model": "split", "max_tokens": 100},
                       {"X-Mock-Tokens": "21", "x-mock-tokens-per-event": "4"})
        for i in range(len(data)):
            c.send(data[i:i + 1])
        j = c.response().json()
        assert j["model"] == "split" and j["usage"]["completion_tokens"] == 21, j
        c.close()
        # HTTP/1.0 stream: no chunking, delimited by close.
        c = m.conn()
        body = json.dumps({"model": "m", "stream": True}).encode()
        c.send(b"POST /v1/chat/completions HTTP/1.0\r\nContent-Length: %d\r\n\r\n%s"
               % (len(body), body))
        status, headers = c.head()
        assert status == 200 and "transfer-encoding" not in headers, headers
        events = sse_events(c.rest())
        assert events[-1][1] == "[DONE]" and len(events) == 1 + 16 + 1 + 1, len(events)
        # HTTP/1.0 keep-alive is honoured and spelled out.
        c = m.conn()
        c.send(b"GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        r = c.response()
        assert r.headers.get("connection") == "keep-alive" and r.body == b"ok"
        c.send(b"GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        assert c.response().body == b"ok"
        c.close()
        # HEAD gets the head alone, and the connection stays in step.
        c = m.conn()
        c.send(request("HEAD", "/health") + request("GET", "/health"))
        status, headers = c.head()
        assert status == 200 and headers["content-length"] == "2"
        assert c.response().body == b"ok"
        c.close()


def check_chat_stream(r, n, per_event, usage, model="m", text=None):
    assert r.status == 200
    assert r.headers["content-type"] == "text/event-stream", r.headers
    assert r.headers["cache-control"] == "no-cache"
    assert r.headers["transfer-encoding"] == "chunked"
    events = [d for _, d in sse_events(r.body)]
    # One HTTP chunk per SSE event.
    assert len(r.chunks) == len(events), (len(r.chunks), len(events))
    for chunk in r.chunks:
        assert chunk.endswith(b"\n\n") and chunk.count(b"\n\n") == 1, chunk
    assert events[-1] == "[DONE]"
    objs = [json.loads(d) for d in events[:-1]]
    for o in objs:
        assert o["object"] == "chat.completion.chunk" and o["model"] == model
        assert o["created"] == 1700000000 and o["id"] == objs[0]["id"]
    assert objs[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    tail = 2 if usage else 1
    content = objs[1:len(objs) - tail]
    assert len(content) == math.ceil(n / per_event), len(content)
    got = "".join(o["choices"][0]["delta"]["content"] for o in content)
    assert got == (text if text is not None else expected_text(n)), got
    for o in content:
        assert len(o["choices"][0]["delta"]["content"].split()) <= per_event
    final = objs[len(objs) - tail]
    assert final["choices"][0]["delta"] == {}
    if usage:
        u = objs[-1]
        assert u["choices"] == [] and u["usage"]["completion_tokens"] == n, u
        assert u["usage"]["total_tokens"] == u["usage"]["prompt_tokens"] + n
    return final["choices"][0]["finish_reason"]


def test_streams(env):
    with Mock(env, "--tokens", "10") as m:
        body = {"model": "m", "stream": True}
        assert check_chat_stream(call(m, CHAT, body), 10, 1, False) == "stop"
        body = {"model": "m", "stream": True, "stream_options": {"include_usage": True},
                "max_tokens": 7}
        r = call(m, CHAT, body, {"x-mock-tokens-per-event": "3"})
        assert check_chat_stream(r, 7, 3, True) == "length"
        usage = json.loads(sse_events(r.body)[-2][1])["usage"]
        assert usage["prompt_tokens"] == prompt_tokens(body)

        # Legacy completions: text deltas, a finish event, optional usage.
        body = {"model": "d", "stream": True, "stream_options": {"include_usage": True}}
        r = call(m, "/v1/completions", body, {"x-mock-tokens": "4"})
        events = [d for _, d in sse_events(r.body)]
        assert len(r.chunks) == len(events) == 4 + 3 and events[-1] == "[DONE]"
        objs = [json.loads(d) for d in events[:-1]]
        assert all(o["object"] == "text_completion" for o in objs)
        assert "".join(o["choices"][0]["text"] for o in objs[:4]) == expected_text(4)
        assert objs[4]["choices"][0]["finish_reason"] == "stop"
        assert objs[5]["usage"]["completion_tokens"] == 4

        # Anthropic.
        body = {"model": "claude", "stream": True, "max_tokens": 5}
        r = call(m, "/v1/messages", body, {"x-mock-tokens-per-event": "2"})
        assert r.headers["content-type"] == "text/event-stream"
        events = sse_events(r.body)
        assert len(r.chunks) == len(events)
        names = [n for n, _ in events]
        assert names == ["message_start", "content_block_start", "ping",
                         "content_block_delta", "content_block_delta",
                         "content_block_delta", "content_block_stop",
                         "message_delta", "message_stop"], names
        datas = [json.loads(d) for _, d in events]
        for name, d in zip(names, datas):
            assert d["type"] == name
        start = datas[0]["message"]
        assert start["id"].startswith("msg_mock_") and start["model"] == "claude"
        assert start["usage"] == {"input_tokens": prompt_tokens(body), "output_tokens": 1}
        text = "".join(d["delta"]["text"] for d in datas[3:6])
        assert text == expected_text(5), text
        assert datas[7]["delta"]["stop_reason"] == "max_tokens"
        assert datas[7]["usage"] == {"output_tokens": 5}


def test_tool_call_and_loop(env):
    with Mock(env, "--tokens", "6") as m:
        j = call(m, CHAT, {"model": "m"}, {"x-mock-tool-call": "1"}).json()
        msg = j["choices"][0]["message"]
        call0 = msg["tool_calls"][0]
        assert call0["id"] == "call_mock" and call0["type"] == "function"
        assert call0["function"] == {"name": "lookup", "arguments": expected_text(6)}
        assert j["usage"]["completion_tokens"] == 6

        r = call(m, CHAT, {"model": "m", "stream": True}, {"x-mock-tool-call": "1"})
        objs = [json.loads(d) for _, d in sse_events(r.body)[:-1]]
        deltas = [o["choices"][0]["delta"] for o in objs[1:7]]
        first = deltas[0]["tool_calls"][0]
        assert first["id"] == "call_mock" and first["function"]["name"] == "lookup"
        for d in deltas[1:]:
            assert "id" not in d["tool_calls"][0] and "name" not in d["tool_calls"][0]["function"]
        args = "".join(d["tool_calls"][0]["function"]["arguments"] for d in deltas)
        assert args == expected_text(6)

        j = call(m, CHAT, {"model": "m"}, {"x-mock-loop": "1", "x-mock-tokens": "20"}).json()
        assert j["choices"][0]["message"]["content"] == expected_text(20, loop=True)
        assert j["usage"]["completion_tokens"] == 20
        r = call(m, CHAT, {"model": "m", "stream": True}, {"x-mock-loop": "1"})
        assert check_chat_stream(r, 6, 1, False, text=expected_text(6, loop=True)) == "stop"


def test_keepalive_pipelining_and_stats(env):
    with Mock(env) as m:
        before = m.stats()
        c = m.conn()
        # Ten pipelined requests in one write, each asking for a different length.
        batch = b"".join(request("POST", CHAT, {"model": "m%d" % i},
                                 {"x-mock-tokens": str(i)}) for i in range(10))
        c.send(batch)
        for i in range(10):
            r = c.response()
            j = r.json()
            assert j["model"] == "m%d" % i and j["usage"]["completion_tokens"] == i, j
        # A delayed stream holds the request pipelined behind it; order is kept.
        c.send(request("POST", CHAT, {"model": "slow", "stream": True},
                       {"x-mock-token-delay-us": "20000", "x-mock-tokens": "3"}) +
               request("POST", CHAT, {"model": "fast"}))
        assert check_chat_stream(c.response(), 3, 1, False, model="slow") == "stop"
        assert c.response().json()["model"] == "fast"
        after = m.stats()
        # One connection served 12 requests; the stats call itself adds one.
        assert after["accepted"] - before["accepted"] == 2, (before, after)
        assert after["requests"] - before["requests"] == 12, (before, after)
        assert after["open"] >= 2, after             # c and the stats connection
        c.close()
        time.sleep(0.2)
        final = m.stats()
        # c was closed by us, the client; stats connections are closed by mockllm
        # (Connection: close), which does not count.
        assert final["closed_by_peer"] - after["closed_by_peer"] == 1, (after, final)
        assert final["open"] == 1, final             # only the stats connection


def test_deep_pipeline_behind_delays(env):
    with Mock(env, "--tokens", "2") as m:
        # 600 requests (~150 KB) in one write while replies wait on timers:
        # the unparsed rest is kept and answered in order.
        c = m.conn(timeout=20)
        reqs = []
        for i in range(600):
            headers = {"x-mock-first-byte-delay-ms": "1"} if i % 50 == 0 else {}
            body = {"model": "p%d" % i, "stream": i % 3 == 0}
            reqs.append(request("POST", CHAT, body, headers))
        c.send(b"".join(reqs))
        for i in range(600):
            r = c.response()
            if i % 3 == 0:
                model = json.loads(sse_events(r.body)[0][1])["model"]
            else:
                model = r.json()["model"]
            assert model == "p%d" % i, (i, model)
        c.close()


def test_connection_close(env):
    with Mock(env) as m:
        c = m.conn()
        c.send(request("POST", CHAT, {"model": "m"}, close=True))
        r = c.response()
        assert r.status == 200 and r.headers.get("connection") == "close"
        assert c.closed_within(2)
        c = m.conn()
        c.send(request("POST", CHAT, {"model": "m"}, {"x-mock-close": "1"}))
        r = c.response()
        assert r.headers.get("connection") == "close"
        assert c.closed_within(2)
        # The server closed these, not the peer.
        time.sleep(0.1)
        s = m.stats()
        assert s["closed_by_peer"] <= s["accepted"] - 2, s
        # HTTP/1.0 without keep-alive closes too.
        c = m.conn()
        c.send(b"GET /health HTTP/1.0\r\n\r\n")
        status, headers = c.head()
        assert status == 200 and headers.get("connection") == "close"
        assert c.rest() == b"ok"


def test_status_injection(env):
    with Mock(env) as m:
        c = m.conn()
        c.send(request("POST", CHAT, {"model": "m", "stream": True}, {"x-mock-status": "429"}))
        r = c.response()
        assert r.status == 429 and "content-length" in r.headers
        assert r.json() == {"error": {"message": "mock error", "type": "mock",
                                      "code": "mock_429"}}, r.body
        # Keep-alive survives an injected error; the body was consumed.
        c.send(request("POST", "/v1/messages", b"not even json", {"x-mock-status": "529"}))
        r = c.response()
        assert r.status == 529
        assert r.json() == {"type": "error", "error": {"type": "api_error",
                                                       "message": "mock error"}}, r.body
        c.send(request("POST", CHAT, {"model": "m"}, {"x-mock-status": "503"}))
        assert c.response().status == 503
        c.send(request("GET", "/health"))
        assert c.response().body == b"ok"
        c.close()


def test_resets_garbage_and_stalls(env):
    with Mock(env, "--tokens", "10") as m:
        # Stream: head + role event + 3 content events, then RST.
        c = m.conn()
        c.send(request("POST", CHAT, {"model": "m", "stream": True}, {"x-mock-reset-after": "3"}))
        status, headers = c.head()
        assert status == 200
        chunks, reset = [], False
        try:
            while True:
                chunks.append(c.chunk())
        except ConnectionResetError:
            reset = True
        except EOFError:
            pass
        assert reset, "expected an RST, got a clean close"
        assert len(chunks) == 1 + 3, len(chunks)
        c.close()

        # Non-stream: exactly N bytes of the response, then RST.
        c = m.conn()
        c.send(request("POST", CHAT, {"model": "m"}, {"x-mock-reset-after": "30"}))
        got, reset = b"", False
        try:
            while True:
                data = c.sock.recv(65536)
                if not data:
                    break
                got += data
        except ConnectionResetError:
            reset = True
        assert reset and len(got) == 30 and got.startswith(b"HTTP/1.1 200 OK\r\n"), \
            (reset, got)
        c.close()

        # Garbage: 200 bytes that are not HTTP, then a close.
        c = m.conn()
        c.send(request("POST", CHAT, {"model": "m"}, {"x-mock-garbage": "1"}))
        junk = c.rest()
        assert len(junk) == 200 and not junk.startswith(b"HTTP"), junk[:20]
        c.close()

        # Stall: the request is read, never answered; the socket stays open.
        before = m.stats()
        c = m.conn()
        c.send(request("POST", CHAT, {"model": "m"}, {"x-mock-stall": "1"}))
        assert c.silent_for(0.4)
        mid = m.stats()
        assert mid["requests"] - before["requests"] == 1, (before, mid)
        c.close()
        time.sleep(0.2)
        after = m.stats()
        assert after["closed_by_peer"] - mid["closed_by_peer"] == 1, (mid, after)

        # Stall after N content events: they arrive, then silence, socket open.
        c = m.conn()
        c.send(request("POST", "/v1/messages", {"model": "c", "stream": True},
                       {"x-mock-stall-after": "2"}))
        c.head()
        chunks = [c.chunk() for _ in range(3 + 2)]   # message_start, block start, ping, 2 deltas
        assert b"content_block_delta" in chunks[-1]
        assert c.silent_for(0.4)
        c.close()


def test_delays_are_timers(env):
    with Mock(env, "--tokens", "5") as m:
        # 5 tokens x 40 ms: about 200 ms, and a second client is served meanwhile.
        slow = m.conn()
        t0 = time.monotonic()
        slow.send(request("POST", CHAT, {"model": "m", "stream": True},
                          {"x-mock-token-delay-us": "40000"}))
        slow.head()
        role_at = time.monotonic() - t0
        fast_t0 = time.monotonic()
        r = call(m, CHAT, {"model": "m"})
        fast_took = time.monotonic() - fast_t0
        assert r.status == 200 and fast_took < 0.1, fast_took
        chunks = []
        while True:
            ch = slow.chunk()
            if not ch:
                break
            chunks.append(ch)
        total = time.monotonic() - t0
        assert role_at < 0.1, role_at
        assert 0.19 <= total < 1.5, total
        assert len(chunks) == 1 + 5 + 1 + 1, len(chunks)
        slow.close()

        # First-byte delay, stream or not.
        t0 = time.monotonic()
        r = call(m, CHAT, {"model": "m"}, {"x-mock-first-byte-delay-ms": "150"})
        assert r.status == 200 and time.monotonic() - t0 >= 0.15
        t0 = time.monotonic()
        c = m.conn()
        c.send(request("POST", "/v1/messages", {"model": "c", "stream": True},
                       {"x-mock-first-byte-delay-ms": "150"}))
        c.head()
        assert time.monotonic() - t0 >= 0.15
        c.close()

    # --token-delay-us is the default; non-stream replies wait for the whole text.
    with Mock(env, "--tokens", "4", "--token-delay-us", "50000") as m:
        t0 = time.monotonic()
        r = call(m, CHAT, {"model": "m"})
        assert r.status == 200 and 0.2 <= time.monotonic() - t0 < 1.5


def test_threads_and_large_body(env):
    with Mock(env, "--threads", "4", "--tokens", "3") as m:
        conns = [m.conn() for _ in range(16)]
        for c in conns:
            c.send(request("POST", CHAT, {"model": "m"}))
        for c in conns:
            assert c.response().json()["usage"]["completion_tokens"] == 3
        s = m.stats()
        assert s["accepted"] >= 17 and s["requests"] == 16, s
        for c in conns:
            c.close()
        # A 5 MiB body is read in full and counted.
        big = {"model": "m", "messages": [{"role": "user", "content": "y" * (5 << 20)}]}
        r = call(m, CHAT, big)
        assert r.json()["usage"]["prompt_tokens"] == prompt_tokens(big)
