"""End-to-end: provider failures, client disconnects, and many connections.

A provider that cannot be reached gives 502, one that does not answer in
time 504. A provider that dies mid-reply leaves the agent with a connection
closed before the reply's end (never a reply that looks complete), and
tollgate goes on serving. An agent that goes away mid-stream makes tollgate
close the provider connection (no leak: mockllm's `open` count drops back).
"""

import json
import os
import re
import resource
import selectors
import socket
import time

from harness import (CHAT, LOOPBACK, MESSAGES, REPO, Conn, Mock, Skip, Tollgate, call,
                     free_port, problem, prompt_tokens, request, slow_build, sse_events,
                     wait_until)

BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
STREAM = dict(BODY, stream=True)
HEAD_CL = b"POST /v1/chat/completions HTTP/1.1\r\nHost: e2e\r\nContent-Length: %d\r\n\r\n"
HEAD_TE = b"POST /v1/chat/completions HTTP/1.1\r\nHost: e2e\r\nTransfer-Encoding: chunked\r\n\r\n"


def read_until_cut(c):
    """Reads a chunked reply until its end or a close/reset: (chunks, complete)."""
    chunks = []
    try:
        while True:
            ch = c.chunk()
            if not ch:
                return chunks, True
            chunks.append(ch)
    except (EOFError, ConnectionResetError):
        return chunks, False


def test_upstream_refused_502(env):
    dead = free_port()          # nothing listens there
    providers = {"mock-openai": {"base_url": "http://%s:%d/v1" % (LOOPBACK, dead)}}
    with Mock(env) as m, Tollgate(env, m, providers=providers) as tg:
        with tg.conn() as c:
            for body in (BODY, STREAM):
                t0 = time.monotonic()
                c.send(request("POST", CHAT, body))
                j = problem(c.response(), 502)
                assert j["code"] == "upstream_failed", j
                assert time.monotonic() - t0 < 2.0
            # The other provider and local routes still work, on the same connection.
            c.send(request("POST", MESSAGES, {"model": "claude-sonnet-4", "max_tokens": 5}))
            assert c.response().status == 200
            c.send(request("GET", "/v1/models"))
            assert c.response().status == 200


def test_upstream_stall_504(env):
    providers = {"mock-openai": {"timeout_ms": 300, "idle_timeout_ms": 300}}
    slack = 3.0 if slow_build(env) else 1.0
    with Mock(env, "--tokens", "5") as m, Tollgate(env, m, providers=providers) as tg:
        with tg.conn() as c:
            for body in (BODY, STREAM):
                t0 = time.monotonic()
                c.send(request("POST", CHAT, body, {"x-mock-stall": "1"}))
                j = problem(c.response(), 504)
                took = time.monotonic() - t0
                assert j["code"] == "upstream_timeout", j
                assert 0.28 <= took < 0.3 + slack, took
            # A slow first byte under the timeout is fine.
            c.send(request("POST", CHAT, BODY, {"x-mock-first-byte-delay-ms": "100"}))
            assert c.response().status == 200
        # Silence mid-stream longer than idle_timeout_ms: the reply is cut
        # (the agent sees the connection close before the end of the stream).
        with tg.conn() as c:
            t0 = time.monotonic()
            c.send(request("POST", CHAT, STREAM, {"x-mock-stall-after": "2"}))
            status, _ = c.head()
            assert status == 200
            chunks, complete = read_until_cut(c)
            assert not complete and len(chunks) == 1 + 2, chunks
            assert time.monotonic() - t0 < 0.3 + slack
        # tollgate keeps serving, and the stalled connections are gone.
        assert call(tg, CHAT, BODY).status == 200
        wait_until(lambda: m.stats()["open"] <= 2, 5, what="stalled upstreams closed")


def test_upstream_reset_mid_reply(env):
    with Mock(env, "--tokens", "10") as m, Tollgate(env, m) as tg:
        # Reset in the middle of a stream: head and 1 + 3 events, then a close
        # before the chunked terminator.
        for path, body, before_cut in ((CHAT, STREAM, 1 + 3),
                                       (MESSAGES, {"model": "claude-sonnet-4",
                                                   "max_tokens": 50, "stream": True}, 3 + 3)):
            with tg.conn() as c:
                c.send(request("POST", path, body, {"x-mock-reset-after": "3"}))
                status, headers = c.head()
                assert status == 200 and headers["transfer-encoding"] == "chunked", headers
                chunks, complete = read_until_cut(c)
                assert not complete, "a reset stream looked complete"
                assert len(chunks) == before_cut, (path, len(chunks))
                assert c.closed_within(1)
        # Reset in the middle of a Content-Length body: fewer bytes, then a close.
        direct = Conn(m.port)
        direct.send(request("POST", CHAT, BODY))
        full = direct.response()
        direct.close()
        head_len = len(direct.raw_head)
        cut = head_len + len(full.body) // 2
        with tg.conn() as c:
            c.send(request("POST", CHAT, BODY, {"x-mock-reset-after": str(cut)}))
            status, headers = c.head()
            assert status == 200
            want = int(headers["content-length"])
            got = c.rest()
            assert len(got) < want, (len(got), want)
        # Reset before the head is complete: 502.
        r = call(tg, CHAT, BODY, {"x-mock-reset-after": "10"})
        problem(r, 502)
        # Garbage instead of HTTP: 502.
        r = call(tg, CHAT, BODY, {"x-mock-garbage": "1"})
        problem(r, 502)
        # tollgate keeps serving, on new and pooled connections alike.
        with tg.conn() as c:
            for _ in range(5):
                c.send(request("POST", CHAT, STREAM))
                r = c.response()
                assert r.status == 200 and r.body.endswith(b"data: [DONE]\n\n"), r


def test_client_disconnect_closes_upstream(env):
    with Mock(env) as m, Tollgate(env, m) as tg:
        base = m.stats()["open"]          # just the stats connection itself
        assert base == 1, base
        slow = {"x-mock-tokens": "200", "x-mock-token-delay-us": "50000"}
        # Mid-stream: read the head and two events, then go away.
        c = tg.conn()
        c.send(request("POST", CHAT, STREAM, slow))
        status, _ = c.head()
        assert status == 200
        c.chunk()
        c.chunk()
        assert m.stats()["open"] == base + 1
        c.close()
        wait_until(lambda: m.stats()["open"] == base, 3,
                   what="the upstream connection to close after the client left")
        # Before the reply head: the provider is still "thinking".
        c = tg.conn()
        c.send(request("POST", MESSAGES, {"model": "claude-sonnet-4", "max_tokens": 5,
                                          "stream": True},
                       {"x-mock-first-byte-delay-ms": "5000"}))
        wait_until(lambda: m.stats()["open"] == base + 1, 3, what="the upstream request")
        c.close()
        wait_until(lambda: m.stats()["open"] == base, 3,
                   what="the upstream connection to close before the reply head")
        # Many at once, some closing abruptly (RST).
        conns = []
        for i in range(20):
            c = tg.conn()
            c.send(request("POST", CHAT, STREAM, slow))
            conns.append(c)
        for c in conns:
            c.head()
            c.chunk()
        wait_until(lambda: m.stats()["open"] == base + 20, 3, what="20 streams")
        for i, c in enumerate(conns):
            if i % 2:
                c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                  b"\x01\x00\x00\x00\x00\x00\x00\x00")
            c.close()
        wait_until(lambda: m.stats()["open"] == base, 5, what="20 upstreams to close")
        # And tollgate is fine.
        r = call(tg, CHAT, STREAM, {"x-mock-tokens": "3"})
        assert r.status == 200 and len(sse_events(r.body)) == 1 + 3 + 2, r


def test_thousand_concurrent_connections(env):
    n = 1000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 4 * n + 256                  # ours + what tollgate and mockllm inherit
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    with Mock(env, "--tokens", "4") as m, Tollgate(env, m) as tg:
        timeout = 60 if slow_build(env) else 30
        socks = []
        try:
            for i in range(n):
                s = socket.create_connection((LOOPBACK, tg.port), timeout=timeout)
                socks.append(s)
            # Every request waits 300 ms at the provider, so all are in flight at once.
            for i, s in enumerate(socks):
                body = {"model": "gpt-4o-mini", "messages": [{"role": "user",
                                                              "content": "n%d" % i}]}
                s.sendall(request("POST", CHAT, body, {"x-mock-first-byte-delay-ms": "300",
                                                       "x-mock-tokens": str(i % 7)}))
            # Read all replies, whatever order they come in.
            sel = selectors.DefaultSelector()
            bufs = {}
            for i, s in enumerate(socks):
                s.setblocking(False)
                sel.register(s, selectors.EVENT_READ, i)
                bufs[i] = b""
            done = {}
            deadline = time.monotonic() + timeout
            while len(done) < n and time.monotonic() < deadline:
                for key, _ in sel.select(timeout=1):
                    i = key.data
                    data = key.fileobj.recv(65536)
                    if not data:
                        sel.unregister(key.fileobj)
                        done.setdefault(i, None)
                        continue
                    bufs[i] += data
                    head, sep, body = bufs[i].partition(b"\r\n\r\n")
                    if not sep:
                        continue
                    length = [int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:")]
                    if length and len(body) >= length[0]:
                        done[i] = (head.split(b" ")[1], body)
                        sel.unregister(key.fileobj)
            sel.close()
            assert len(done) == n, "%d of %d replies" % (len(done), n)
            bad = [i for i, v in done.items() if v is None or v[0] != b"200"]
            assert not bad, ("failed replies", len(bad), [done[i] for i in bad[:3]])
            for i, (_, body) in done.items():
                j = json.loads(body)
                assert j["usage"]["completion_tokens"] == i % 7, (i, j)
                assert j["usage"]["prompt_tokens"] > 0
        finally:
            for s in socks:
                s.close()
        st = m.stats()
        assert st["requests"] == n, st
        # They really ran concurrently: one upstream connection each.
        assert st["accepted"] >= n * 0.9, st
        # And tollgate still serves after they all left.
        assert call(tg, CHAT, BODY).status == 200


def test_overload_503(env):
    # One shard with 16 exchanges: 40 requests at once, the extra ones get a
    # clean 503 (a whole problem+json, then the close), never a crash.
    with Mock(env) as m, Tollgate(env, m, workers=1, limits={"max_requests": 16}) as tg:
        for _ in range(2):
            conns = []
            for i in range(40):
                c = tg.conn()
                c.send(request("POST", CHAT, BODY, {"x-mock-first-byte-delay-ms": "300"}))
                conns.append(c)
            statuses = []
            for c in conns:
                r = c.response()
                statuses.append(r.status)
                if r.status == 503:
                    j = problem(r, 503, "overloaded")
                    assert j["title"] and j["detail"], j
                    assert r.headers.get("connection") == "close", r.headers
                    assert c.closed_within(2)
                else:
                    assert r.status == 200, r
                c.close()
            assert statuses.count(200) == 16, statuses
            assert statuses.count(503) == 24, statuses
        # Once they are done, every slot is free again.
        conns = [tg.conn() for _ in range(16)]
        for c in conns:
            c.send(request("POST", CHAT, BODY, {"x-mock-first-byte-delay-ms": "100"}))
        for c in conns:
            assert c.response().status == 200
            c.close()


def test_slow_reader_send_timeout(env):
    # An agent that stops reading a long stream: tollgate's socket buffers
    # fill, the send waits, and after send_timeout_ms the exchange is dropped
    # and the provider connection closed (nothing held for a dead reader).
    with Mock(env) as m, Tollgate(env, m, limits={"send_timeout_ms": 300}) as tg:
        base = m.stats()["open"]
        c = tg.conn(timeout=10)
        c.send(request("POST", CHAT, STREAM, {"x-mock-tokens": "200000"}))
        wait_until(lambda: m.stats()["open"] == base + 1, 3, what="the stream to start")
        wait_until(lambda: m.stats()["open"] == base, 10,
                   what="the upstream to close after the send timeout")
        # The agent finds the stream cut short, whatever was buffered first.
        status, _ = c.head()
        assert status == 200
        chunks, complete = read_until_cut(c)
        assert not complete and 0 < len(chunks) < 1 + 200000, len(chunks)
        c.close()
        # A reader that is merely slow is not cut: it keeps draining, so
        # each send completes within the timeout.
        with tg.conn(timeout=10) as c:
            c.send(request("POST", CHAT, STREAM, {"x-mock-tokens": "20000"}))
            c.head()
            n = 0
            while True:
                ch = c.chunk()
                if not ch:
                    break
                n += 1
                if n % 2000 == 0:
                    time.sleep(0.1)
            assert n == 1 + 20000 + 1 + 1, n


def test_provider_restart_and_pool_expiry(env):
    port = free_port()
    providers = {"mock-openai": {"idle_timeout_ms": 400}}
    m = Mock(env, port=port)
    try:
        with Tollgate(env, mock_port=port, providers=providers) as tg:
            with tg.conn() as c:
                for _ in range(3):
                    c.send(request("POST", CHAT, BODY))
                    assert c.response().status == 200
                assert m.stats()["open"] == 2          # the pooled one, the stats one
                # An idle pooled connection is closed after idle_timeout_ms.
                wait_until(lambda: m.stats()["open"] == 1, 3, what="the pool to expire")
                c.send(request("POST", CHAT, BODY))
                assert c.response().status == 200
                # The provider restarts: its pooled connection dies with it;
                # the next request goes out on a new one and succeeds.
                assert not m.stop(), m.log_tail()
                r = call(tg, CHAT, BODY)
                problem(r, 502)
                m = Mock(env, port=port)
                c.send(request("POST", CHAT, BODY))
                r = c.response()
                assert r.status == 200, r
                for _ in range(3):
                    c.send(request("POST", CHAT, STREAM))
                    assert c.response().status == 200
                assert m.stats()["accepted"] <= 1 + 2 + 1, m.stats()
    finally:
        m.stop()


def shard_buffer_count():
    """RING_BUF_COUNT of core/shard.c: provided read buffers per shard."""
    try:
        with open(os.path.join(REPO, "core", "shard.c")) as f:
            return int(re.search(r"#define RING_BUF_COUNT (\d+)", f.read()).group(1))
    except (OSError, AttributeError):
        return 4096


def test_pipelining_clients_cannot_starve_replies(env):
    """More clients than a shard has read buffers, each with a request
    pipelined behind a slow one. Bytes read ahead are kept in a provided
    buffer until the request before them is answered; if those pin every
    buffer, the provider's replies cannot be read and nothing moves until
    the provider timeout. Every client must get both replies, promptly."""
    n = shard_buffer_count() + 100
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4 * n + 256:
        if hard < 4 * n + 256:
            raise Skip("RLIMIT_NOFILE too low for %d connections" % n)
        resource.setrlimit(resource.RLIMIT_NOFILE, (4 * n + 256, hard))
    limits = {"max_requests": 2 * n, "header_timeout_ms": 5000}
    providers = {"mock-openai": {"timeout_ms": 5000}}
    with Mock(env) as m, Tollgate(env, m, workers=1, limits=limits,
                                  providers=providers) as tg:
        socks = [socket.create_connection((LOOPBACK, tg.port), timeout=30) for _ in range(n)]
        try:
            t0 = time.monotonic()
            pair = (request("POST", CHAT, BODY, {"x-mock-first-byte-delay-ms": "300",
                                                 "x-mock-tokens": "2"}) +
                    request("POST", CHAT, BODY, {"x-mock-tokens": "1"}))
            for s in socks:
                s.sendall(pair)
            sel = selectors.DefaultSelector()
            bufs = {}
            for i, s in enumerate(socks):
                s.setblocking(False)
                sel.register(s, selectors.EVENT_READ, i)
                bufs[i] = b""
            pending = set(range(n))
            deadline = t0 + (30 if slow_build(env) else 15)
            while pending and time.monotonic() < deadline:
                for key, _ in sel.select(timeout=0.5):
                    i = key.data
                    try:
                        data = key.fileobj.recv(65536)
                    except ConnectionResetError:
                        data = b""
                    bufs[i] += data
                    if not data or (bufs[i].count(b"HTTP/1.1 ") == 2 and
                                    bufs[i].endswith(b"}")):
                        sel.unregister(key.fileobj)
                        pending.discard(i)
            took = time.monotonic() - t0
            sel.close()
        finally:
            for s in socks:
                s.close()
        outcomes = {}
        for i in range(n):
            k = tuple(x.split(b"\r\n")[0].decode() for x in bufs[i].split(b"HTTP/1.1 ")[1:])
            outcomes[k] = outcomes.get(k, 0) + 1
        ok = outcomes.get(("200 OK", "200 OK"), 0)
        assert ok == n, ("%d connections, %d got both replies in %.1fs; outcomes %s" %
                         (n, ok, took, outcomes))
        assert took < 5, took


def test_upstream_connect_timeout_504(env):
    # A listener whose accept queue is full drops new SYNs: the connect hangs
    # until connect_timeout_ms, then 504 (and the pending connect is cancelled).
    lsock = socket.socket()
    lsock.bind((LOOPBACK, 0))
    lsock.listen(0)
    port = lsock.getsockname()[1]
    fillers = []
    try:
        for _ in range(3):
            s = socket.socket()
            s.setblocking(False)
            try:
                s.connect((LOOPBACK, port))
            except BlockingIOError:
                pass
            fillers.append(s)
        time.sleep(0.1)
        slack = 3.0 if slow_build(env) else 1.0
        providers = {"mock-openai": {"connect_timeout_ms": 300,
                                     "base_url": "http://%s:%d/v1" % (LOOPBACK, port)}}
        with Mock(env) as m, Tollgate(env, m, providers=providers) as tg:
            with tg.conn() as c:
                for body in (BODY, STREAM):
                    t0 = time.monotonic()
                    c.send(request("POST", CHAT, body))
                    j = problem(c.response(), 504, "upstream_timeout")
                    took = time.monotonic() - t0
                    assert 0.28 <= took < 0.3 + slack, took
                    assert "connect" in j["detail"], j
                # Leaving while the connect is still pending.
                c.send(request("POST", CHAT, BODY))
            time.sleep(0.1)
            # The other provider is unaffected.
            r = call(tg, MESSAGES, {"model": "claude-sonnet-4", "max_tokens": 3})
            assert r.status == 200, r
    finally:
        for s in fillers:
            s.close()
        lsock.close()


def test_client_leaves_mid_request_body(env):
    with Mock(env) as m, Tollgate(env, m) as tg:
        for sent in (10, 20000, 300000):
            c = tg.conn()
            c.send(HEAD_CL % (1 << 20) + b"x" * sent)
            time.sleep(0.05)
            c.close()
        # Chunked, stopping inside a chunk and inside a size line.
        for tail in (b"100000\r\n" + b"y" * 70000, b"10\r\n0123456789abcdef\r\n1"):
            c = tg.conn()
            c.send(HEAD_TE + tail)
            time.sleep(0.05)
            c.close()
        with tg.conn() as c:
            for _ in range(3):
                c.send(request("POST", CHAT, BODY))
                assert c.response().status == 200
        assert m.stats()["requests"] == 3


def test_body_sizes_around_buffer_edges(env):
    # Bodies cross the inline request buffer (16 KiB) and read buffers
    # (16 KiB) at different offsets; each must arrive whole.
    with Mock(env, "--tokens", "1") as m, Tollgate(env, m) as tg:
        with tg.conn(timeout=20) as c:
            for size in (16383, 16384, 16385, 32767, 32768, 32769, 65536 + 7, 1 << 20):
                body = {"model": "gpt-4o", "messages": [{"role": "user", "content": ""}]}
                body["messages"][0]["content"] = "q" * (size - len(json.dumps(body)))
                raw = json.dumps(body).encode()
                assert len(raw) == size
                for chunked in (False, True):
                    c.send(request("POST", CHAT, raw, chunked_body=chunked, chunk_size=4099))
                    r = c.response()
                    assert r.status == 200, (size, chunked, r)
                    got = r.json()["usage"]["prompt_tokens"]
                    assert got == prompt_tokens(raw), (size, chunked, got)


def test_concurrent_streams(env):
    # 300 streams at once, interleaved event by event: each arrives whole,
    # in its own order, with its own text.
    n = 300
    with Mock(env) as m, Tollgate(env, m) as tg:
        conns = []
        for i in range(n):
            c = tg.conn(timeout=30)
            path, body = ((MESSAGES, {"model": "claude-haiku-3-5", "max_tokens": 100,
                                      "stream": True}) if i % 3 == 0 else (CHAT, STREAM))
            c.send(request("POST", path, body, {"x-mock-tokens": str(5 + i % 11),
                                                "x-mock-token-delay-us": "20000"}))
            conns.append((i, path, c))
        for i, path, c in conns:
            r = c.response()
            assert r.status == 200, (i, r)
            events = sse_events(r.body)
            tokens = 5 + i % 11
            if path == CHAT:
                assert len(events) == 1 + tokens + 2 and events[-1][1] == "[DONE]", (i, events)
            else:
                assert events[-1][0] == "message_stop", (i, events)
                usage = json.loads(events[-2][1])["usage"]
                assert usage["output_tokens"] == tokens, (i, usage)
            c.close()
