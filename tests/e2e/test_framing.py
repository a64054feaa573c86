"""End-to-end: request framing, limits and client timeouts.

A request whose framing is ambiguous or broken must be answered 400 and the
connection closed (the gateway cannot know where the next request starts,
and must never forward what a parser behind it could read differently);
nothing of it may reach the provider. Oversized heads get 431, oversized
bodies 413, and slow clients 408 or a close within the configured timeouts.
"""

import json
import socket
import time

from harness import CHAT, Mock, Tollgate, call, problem, request, slow_build

BODY = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}).encode()
HEAD = b"POST /v1/chat/completions HTTP/1.1\r\nHost: e2e\r\nContent-Type: application/json\r\n"


def chunked(body, eol=b"\r\n"):
    return b"%x%s%s%s0%s%s" % (len(body), eol, body, eol, eol, eol)


def n_body(n):
    """A valid chat request of exactly n bytes (n >= 64)."""
    base = {"model": "gpt-4o", "messages": [{"role": "user", "content": ""}]}
    pad = n - len(json.dumps(base))
    assert pad >= 0
    base["messages"][0]["content"] = "z" * pad
    raw = json.dumps(base).encode()
    assert len(raw) == n
    return raw


# Each case is a complete request that a lenient parser could accept.
MALFORMED = {
    "content-length with transfer-encoding":
        HEAD + b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n" % len(BODY) +
        chunked(BODY),
    "transfer-encoding with content-length":
        HEAD + b"Transfer-Encoding: chunked\r\nContent-Length: %d\r\n\r\n" % len(BODY) +
        chunked(BODY),
    "duplicate content-length, different values":
        HEAD + b"Content-Length: %d\r\nContent-Length: %d\r\n\r\n" % (len(BODY), len(BODY) + 1) +
        BODY + b" ",
    "duplicate content-length, same values":
        HEAD + b"Content-Length: %d\r\nContent-Length: %d\r\n\r\n" % (len(BODY), len(BODY)) + BODY,
    "content-length list":
        HEAD + b"Content-Length: %d, %d\r\n\r\n" % (len(BODY), len(BODY)) + BODY,
    "content-length not a number":
        HEAD + b"Content-Length: abc\r\n\r\n" + BODY,
    "content-length negative":
        HEAD + b"Content-Length: -%d\r\n\r\n" % len(BODY) + BODY,
    "content-length with sign":
        HEAD + b"Content-Length: +%d\r\n\r\n" % len(BODY) + BODY,
    "content-length hex":
        HEAD + b"Content-Length: 0x%x\r\n\r\n" % len(BODY) + BODY,
    "content-length overflow":
        HEAD + b"Content-Length: 99999999999999999999999\r\n\r\n" + BODY,
    "chunk size not hex":
        HEAD + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n" + BODY + b"\r\n0\r\n\r\n",
    "chunk size negative":
        HEAD + b"Transfer-Encoding: chunked\r\n\r\n-1\r\n" + BODY + b"\r\n0\r\n\r\n",
    "chunk size overflow":
        HEAD + b"Transfer-Encoding: chunked\r\n\r\nfffffffffffffffffff\r\n" + BODY +
        b"\r\n0\r\n\r\n",
    "chunk size missing":
        HEAD + b"Transfer-Encoding: chunked\r\n\r\n\r\n" + BODY + b"\r\n0\r\n\r\n",
    "chunk data longer than its size":
        HEAD + b"Transfer-Encoding: chunked\r\n\r\n%x\r\n" % (len(BODY) - 1) + BODY +
        b"\r\n0\r\n\r\n",
    "bare LF ends the head":
        b"POST /v1/chat/completions HTTP/1.1\nHost: e2e\nContent-Length: %d\n\n" % len(BODY) +
        BODY,
    "bare LF after one field":
        HEAD + b"X-Thing: 1\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY,
    "bare LF after the request line":
        b"POST /v1/chat/completions HTTP/1.1\nHost: e2e\r\nContent-Length: %d\r\n\r\n" %
        len(BODY) + BODY,
    "bare LF after a chunk size":
        HEAD + b"Transfer-Encoding: chunked\r\n\r\n%x\n" % len(BODY) + BODY + b"\r\n0\r\n\r\n",
    "bare LF after chunk data":
        HEAD + b"Transfer-Encoding: chunked\r\n\r\n%x\r\n" % len(BODY) + BODY + b"\n0\r\n\r\n",
    "bare LF after the last chunk":
        HEAD + b"Transfer-Encoding: chunked\r\n\r\n%x\r\n" % len(BODY) + BODY + b"\r\n0\n\r\n",
    "bare LF ends the trailer section":
        HEAD + b"Transfer-Encoding: chunked\r\n\r\n%x\r\n" % len(BODY) + BODY + b"\r\n0\r\n\n",
    "all bare LF chunk framing":
        HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + chunked(BODY, b"\n"),
    "transfer-encoding not chunked":
        HEAD + b"Transfer-Encoding: gzip\r\n\r\n" + BODY,
    "space before colon":
        HEAD + b"Transfer-Encoding : chunked\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY,
    "not HTTP at all":
        b"HELLO THERE\r\n\r\n",
}


def expect_400_and_close(tg, name, data):
    with tg.conn() as c:
        try:
            c.send(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            r = c.response()
        except (EOFError, ConnectionResetError) as e:
            raise AssertionError("%s: no reply (%s)" % (name, e))
        assert r.status == 400, (name, r)
        assert r.headers.get("content-type") == "application/problem+json", (name, r)
        assert r.headers.get("connection") == "close", (name, r.headers)
        assert c.closed_within(2), "%s: connection not closed after 400" % name


def test_malformed_framing_400_and_close(env):
    with Mock(env) as m, Tollgate(env, m) as tg:
        # The well-formed versions pass, so the failures below are the framing's.
        for good in (HEAD + b"Content-Length: %d\r\n\r\n" % len(BODY) + BODY,
                     HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + chunked(BODY),
                     HEAD + b"Transfer-Encoding: chunked\r\n\r\n%x\r\n" % len(BODY) + BODY +
                     b"\r\n0\r\nX-Trailer: 1\r\n\r\n"):
            with tg.conn() as c:
                c.send(good)
                assert c.response().status == 200, good
        before = m.stats()["requests"]
        failed = []
        for name, data in MALFORMED.items():
            try:
                expect_400_and_close(tg, name, data)
            except AssertionError as e:
                failed.append(str(e))
        # Nothing malformed reached the provider.
        after = m.stats()["requests"]
        assert not failed, "\n".join(failed)
        assert after == before, (before, after)
        # tollgate keeps serving.
        assert call(tg, CHAT, BODY).status == 200


def test_chunked_trailers_dropped(env):
    """Trailer fields are framing, not head fields: never forwarded as headers
    (x-mock-* in a trailer must not reach the provider), and the request
    pipelined behind a body with trailers is parsed from the right byte."""
    with Mock(env, "--tokens", "7") as m, Tollgate(env, m) as tg:
        body = HEAD + b"Transfer-Encoding: chunked\r\n\r\n%x\r\n" % len(BODY) + BODY + \
            b"\r\n0\r\nX-Mock-Status: 418\r\nX-Mock-Tokens: 3\r\n\r\n"
        with tg.conn() as c:
            c.send(body + body + request("POST", CHAT, BODY, {"x-mock-tokens": "2"}))
            for want in (7, 7, 2):
                r = c.response()
                assert r.status == 200, r
                assert r.json()["usage"]["completion_tokens"] == want, r
        assert m.stats()["requests"] == 3


def test_headers_too_large_431(env):
    with Mock(env) as m, Tollgate(env, m, limits={"max_header_bytes": 4096}) as tg:
        # Just under the limit is fine.
        ok = request("POST", CHAT, BODY, {"x-pad": "a" * 3500})
        with tg.conn() as c:
            c.send(ok)
            assert c.response().status == 200
        cases = {
            "one big field": request("POST", CHAT, BODY, {"x-pad": "a" * 6000}),
            "many fields": request("POST", CHAT, BODY,
                                   {"x-f%d" % i: "v" * 60 for i in range(100)}),
            "too many small fields": request("POST", CHAT, BODY,
                                             {"x-%d" % i: "1" for i in range(300)}),
            "long URL": request("POST", CHAT + "?q=" + "u" * 8000, BODY),
            "huge head": request("POST", CHAT, BODY, {"x-pad": "b" * 200000}),
        }
        for name, data in cases.items():
            with tg.conn() as c:
                try:
                    c.send(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                r = c.response()
                assert r.status in (431, 414) if name == "long URL" else r.status == 431, \
                    (name, r)
                problem(r, r.status)
                assert c.closed_within(2), name
        assert m.stats()["requests"] == 1


def test_body_too_large_413(env):
    with Mock(env) as m, Tollgate(env, m, limits={"max_body_bytes": 1024}) as tg:
        # Exactly the limit passes, with either framing.
        exact = n_body(1024)
        for chunked_body in (False, True):
            with tg.conn() as c:
                c.send(request("POST", CHAT, exact, chunked_body=chunked_body, chunk_size=100))
                r = c.response()
                assert r.status == 200, r
        # A declared length over the limit: 413 before the body is sent.
        with tg.conn() as c:
            c.send(HEAD + b"Content-Length: 1025\r\n\r\n")
            r = c.response()
            problem(r, 413)
            assert c.closed_within(2)
        with tg.conn() as c:
            c.send(HEAD + b"Content-Length: 100000000000\r\n\r\n")
            problem(c.response(), 413)
            assert c.closed_within(2)
        # A chunked body that grows past the limit.
        with tg.conn() as c:
            c.send(request("POST", CHAT, n_body(1025), chunked_body=True, chunk_size=100))
            r = c.response()
            problem(r, 413)
            assert c.closed_within(2)
        # With the Content-Length body sent along.
        with tg.conn() as c:
            c.send(request("POST", CHAT, n_body(2000)))
            problem(c.response(), 413)
            assert c.closed_within(2)
        assert m.stats()["requests"] == 2


def timed_close(c, limit):
    """Waits for a 408 and/or a close; returns (seconds, status or None)."""
    t0 = time.monotonic()
    status = None
    assert c.closed_within(limit), "not closed within %.1fs" % limit
    took = time.monotonic() - t0
    if c.buf:
        status = int(c.buf.split(b" ", 2)[1])
        assert c.buf.endswith(b"}"), c.buf     # a whole problem+json reply
    return took, status


def test_header_body_idle_timeouts(env):
    slack = 3.0 if slow_build(env) else 1.5
    limits = {"header_timeout_ms": 300, "body_timeout_ms": 400, "idle_timeout_ms": 500}
    with Mock(env) as m, Tollgate(env, m, limits=limits) as tg:
        # Half a head: 408 (or a plain close) after header_timeout_ms.
        with tg.conn() as c:
            t0 = time.monotonic()
            c.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: e2e\r\n")
            took, status = timed_close(c, 0.3 + slack)
            took = time.monotonic() - t0
            assert status in (None, 408), status
            assert took >= 0.25, took
        # Nothing at all: closed after header_timeout_ms.
        with tg.conn() as c:
            t0 = time.monotonic()
            timed_close(c, 0.3 + slack)
            assert time.monotonic() - t0 >= 0.25
        # A slow loris: a byte every 50 ms does not extend the deadline.
        with tg.conn() as c:
            t0 = time.monotonic()
            data = request("POST", CHAT, BODY)
            closed = False
            for i in range(len(data)):
                try:
                    c.send(data[i:i + 1])
                except (BrokenPipeError, ConnectionResetError):
                    closed = True
                    break
                if c.closed_within(0.05):
                    closed = True
                    break
                if time.monotonic() - t0 > 0.3 + slack:
                    break
            took = time.monotonic() - t0
            assert closed, "slow loris still connected after %.2fs" % took
            assert 0.25 <= took <= 0.3 + slack, took
            if c.buf:
                assert c.buf.startswith(b"HTTP/1.1 408 "), c.buf
        # Half a body: 408 (or a close) after body_timeout_ms.
        with tg.conn() as c:
            t0 = time.monotonic()
            c.send(HEAD + b"Content-Length: %d\r\n\r\n" % len(BODY) + BODY[:10])
            took, status = timed_close(c, 0.4 + slack)
            took = time.monotonic() - t0
            assert status in (None, 408), status
            assert took >= 0.35, took
        # Idle keep-alive: closed after idle_timeout_ms, served until then.
        with tg.conn() as c:
            c.send(request("POST", CHAT, BODY))
            assert c.response().status == 200
            time.sleep(0.2)
            c.send(request("POST", CHAT, BODY))
            assert c.response().status == 200
            t0 = time.monotonic()
            took, status = timed_close(c, 0.5 + slack)
            assert status is None, c.buf
            assert time.monotonic() - t0 >= 0.45
        # A long reply is not cut by the client-side timeouts.
        with tg.conn() as c:
            c.send(request("POST", CHAT, json.loads(BODY) | {"stream": True},
                           {"x-mock-tokens": "10", "x-mock-token-delay-us": "100000"}))
            r = c.response()
            assert r.status == 200 and r.body.endswith(b"data: [DONE]\n\n"), r
        assert m.stats()["requests"] == 3


def test_byte_by_byte(env):
    """The parsers resume at any byte: a CR at the end of one read and its LF
    at the start of the next is not a bare LF, in the head, the chunk framing
    or the trailer section."""
    with Mock(env, "--tokens", "3") as m, Tollgate(env, m) as tg:
        with tg.conn() as c:
            c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            plain = request("POST", CHAT, BODY, {"x-mock-tokens": "5"})
            chunk = (HEAD + b"X-Mock-Tokens: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"%x\r\n%s\r\n%x;x=y\r\n%s\r\n0\r\nX-Trailer: 1\r\n\r\n"
                     % (10, BODY[:10], len(BODY) - 10, BODY[10:]))
            for data, want in ((plain, 5), (chunk, 4)):
                for i in range(len(data)):
                    c.send(data[i:i + 1])
                    time.sleep(0.0003)
                r = c.response()
                assert r.status == 200, r
                assert r.json()["usage"]["completion_tokens"] == want, r
