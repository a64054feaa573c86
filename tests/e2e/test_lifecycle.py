"""End-to-end: the daemon's life: config check, reload, drain.

`tollgate -t` exits 0 on a good file and 1 with file:line: errors on a bad
one. SIGHUP swaps in the file's new contents while requests started before
finish on the old generation; a bad file is reported and the running
configuration kept. SIGTERM lets in-flight replies finish, then exits 0.
"""

import copy
import os
import re
import signal
import socket
import subprocess
import tempfile
import time

from harness import (CHAT, MESSAGES, REPO, Mock, Tollgate, call, free_port, make_config,
                     problem, request, run_tollgate_check, slow_build, sse_events, to_yaml,
                     wait_until, write_config)

BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


def chat_for(model, stream=False):
    b = dict(BODY, model=model)
    if stream:
        b["stream"] = True
    return b


def error_lines(out, path):
    """Line numbers of the `path:LINE: message` lines in out."""
    return [int(x) for x in re.findall(r"^%s:(\d+): \S" % re.escape(path), out, re.M)]


def test_config_check(env):
    rc, out = run_tollgate_check(env, os.path.join(REPO, "conf", "tollgate.yaml"))
    assert rc == 0, out
    good = make_config(18080, 18081)
    text = to_yaml(good) + "\n"
    lines = text.splitlines()
    tmpdir = tempfile.mkdtemp(prefix="e2e-check-")
    try:
        path = write_config(text, os.path.join(tmpdir, "good.yaml"))
        rc, out = run_tollgate_check(env, path)
        assert rc == 0, out

        def bad_file(name, edit):
            """Writes `lines` with edit(list) applied; returns (path, line no.)."""
            ls = list(lines)
            at = edit(ls)
            p = write_config("\n".join(ls) + "\n", os.path.join(tmpdir, name))
            return p, at

        # An unknown key inside limits.
        def unknown_key(ls):
            i = ls.index("limits:") + 1
            ls.insert(i, "  max_bogus_bytes: 12")
            return i + 1
        path, at = bad_file("unknown.yaml", unknown_key)
        rc, out = run_tollgate_check(env, path)
        assert rc == 1, (rc, out)
        assert error_lines(out, path) == [at], (at, out)
        assert "max_bogus_bytes" in out, out

        # A price with 7 decimals cannot be exact in micro-USD.
        def seven_decimals(ls):
            i = next(k for k, line in enumerate(ls)
                     if line.strip().startswith("input_usd_per_mtok:"))
            ls[i] = re.sub(r":.*", ': "0.0000001"', ls[i])
            return i + 1
        path, at = bad_file("money.yaml", seven_decimals)
        rc, out = run_tollgate_check(env, path)
        assert rc == 1, (rc, out)
        assert error_lines(out, path) == [at], (at, out)

        # Both at once, and an unknown top-level key: one line per error.
        def three(ls):
            a = seven_decimals(ls)
            b = unknown_key(ls)          # inserted above the price: shifts it
            ls.append("surprise: 1")
            return sorted([a + 1 if b <= a else a, b, len(ls)])
        path, ats = bad_file("three.yaml", three)
        rc, out = run_tollgate_check(env, path)
        assert rc == 1, (rc, out)
        assert sorted(error_lines(out, path)) == ats, (ats, out)

        # Not YAML at all, and a missing file.
        p = write_config("listen: [\n", os.path.join(tmpdir, "broken.yaml"))
        rc, out = run_tollgate_check(env, p)
        assert rc == 1 and p + ":" in out, (rc, out)
        rc, out = run_tollgate_check(env, os.path.join(tmpdir, "missing.yaml"))
        assert rc == 1, (rc, out)
    finally:
        for f in os.listdir(tmpdir):
            os.unlink(os.path.join(tmpdir, f))
        os.rmdir(tmpdir)


def test_sighup_reload(env):
    with Mock(env) as m, Tollgate(env, m) as tg:
        # A long stream (40 x 50 ms) starts on the first generation.
        long_c = tg.conn(timeout=15)
        long_c.send(request("POST", CHAT, chat_for("gpt-4o", stream=True),
                            {"x-mock-tokens": "40", "x-mock-token-delay-us": "50000"}))
        status, _ = long_c.head()
        assert status == 200
        first = long_c.chunk()
        assert b'"role":"assistant"' in first, first
        # An idle keep-alive connection opened before the reload.
        idle_c = tg.conn()
        idle_c.send(request("POST", CHAT, BODY))
        assert idle_c.response().status == 200
        problem(call(tg, CHAT, chat_for("gpt-4.1-nano")), 404, "unknown_model")

        # gpt-4o is renamed gpt-4.1-nano (and its price changes).
        cfg = copy.deepcopy(tg.config)
        model = cfg["models"].pop("gpt-4o")
        model["input_usd_per_mtok"] = "0.10"
        model["alternatives"] = []
        cfg["models"]["gpt-4.1-nano"] = model
        tg.reload(cfg)
        wait_until(lambda: call(tg, CHAT, chat_for("gpt-4.1-nano")).status == 200,
                   10 if slow_build(env) else 5, what="the reloaded model to work")
        # Every shard has it (new connections land on either).
        for _ in range(10):
            assert call(tg, CHAT, chat_for("gpt-4.1-nano")).status == 200
            problem(call(tg, CHAT, chat_for("gpt-4o")), 404, "unknown_model")
        models = call(tg, "/v1/models", None, method="GET").json()
        ids = [d["id"] for d in models["data"]]
        assert "gpt-4.1-nano" in ids and "gpt-4o" not in ids, ids
        nano = next(d for d in models["data"] if d["id"] == "gpt-4.1-nano")
        assert nano["pricing"]["input_usd_per_mtok"] == "0.10", nano
        # The connection that was idle through the reload serves the new config.
        idle_c.send(request("POST", CHAT, chat_for("gpt-4.1-nano")))
        assert idle_c.response().status == 200
        idle_c.close()

        # The stream started before the reload runs to its end, untouched.
        chunks = [first]
        while True:
            ch = long_c.chunk()
            if not ch:
                break
            chunks.append(ch)
        events = sse_events(b"".join(chunks))
        assert len(events) == 1 + 40 + 2 and events[-1][1] == "[DONE]", len(events)
        # Its connection goes on under the new generation.
        long_c.send(request("POST", CHAT, chat_for("gpt-4.1-nano")))
        assert long_c.response().status == 200
        long_c.close()

        # A bad file is refused; the running configuration stays.
        with open(tg.config_path, "a") as f:
            f.write("bogus_key: 1\n")
        tg.signal(signal.SIGHUP)
        wait_until(lambda: "bogus_key" in tg.log(), 5, what="the reload error in the log")
        time.sleep(0.1)
        assert tg.alive()
        assert call(tg, CHAT, chat_for("gpt-4.1-nano")).status == 200
        # Several reloads in a row, with traffic in between.
        for i in range(5):
            cfg = copy.deepcopy(cfg)
            cfg["models"]["extra-%d" % i] = dict(cfg["models"]["gpt-4o-mini"])
            tg.reload(cfg)
            r = call(tg, MESSAGES, {"model": "claude-sonnet-4", "max_tokens": 3})
            assert r.status == 200, r
        wait_until(lambda: call(tg, CHAT, chat_for("extra-4")).status == 200, 5,
                   what="the last reload")


def test_sigterm_drains(env):
    with Mock(env) as m:
        tg = Tollgate(env, m, drain_timeout_ms=5000)
        try:
            c = tg.conn(timeout=10)
            # 30 x 50 ms = 1.5 s of stream, in flight when SIGTERM comes.
            c.send(request("POST", CHAT, chat_for("gpt-4o", stream=True),
                           {"x-mock-tokens": "30", "x-mock-token-delay-us": "50000"}))
            status, _ = c.head()
            assert status == 200
            chunks = [c.chunk()]
            # An idle keep-alive connection of another client.
            idle = tg.conn()
            idle.send(request("POST", CHAT, BODY))
            assert idle.response().status == 200
            t0 = time.monotonic()
            tg.signal(signal.SIGTERM)
            # The idle one is closed at once, the busy one is not.
            assert idle.closed_within(1), "idle connection not closed on drain"
            idle.close()
            while True:
                ch = c.chunk()
                if not ch:
                    break
                chunks.append(ch)
            events = sse_events(b"".join(chunks))
            assert len(events) == 1 + 30 + 2 and events[-1][1] == "[DONE]", len(events)
            # Then the connection is closed and the process exits 0.
            assert c.closed_within(2)
            rc = tg.wait(10 if slow_build(env) else 5)
            assert rc == 0, rc
            assert time.monotonic() - t0 < 5
            # Nothing listens any more.
            try:
                s = tg.conn(timeout=1)
                s.send(request("GET", "/v1/models"))
                r = s.response()
                raise AssertionError("still serving after exit: %r" % r)
            except (ConnectionRefusedError, ConnectionResetError, EOFError):
                pass
        finally:
            probs = tg.stop()
        assert not probs, probs


def test_sigterm_drain_timeout(env):
    with Mock(env) as m:
        tg = Tollgate(env, m, drain_timeout_ms=500)
        try:
            c = tg.conn(timeout=10)
            # A stream far longer than the drain timeout is cut at it.
            c.send(request("POST", CHAT, chat_for("gpt-4o", stream=True),
                           {"x-mock-tokens": "1000", "x-mock-token-delay-us": "50000"}))
            assert c.head()[0] == 200
            c.chunk()
            t0 = time.monotonic()
            tg.signal(signal.SIGTERM)
            complete = False
            try:
                while c.chunk():
                    pass
                complete = True
            except (EOFError, ConnectionResetError):
                pass
            assert not complete
            took = time.monotonic() - t0
            assert 0.4 <= took < 3.0, took
            rc = tg.wait(10 if slow_build(env) else 5)
            assert rc == 0, rc
        finally:
            probs = tg.stop()
        assert not probs, probs
        wait_until(lambda: m.stats()["open"] == 1, 3, what="upstreams closed after drain")


def test_reload_changes_limits_and_providers(env):
    with Mock(env) as m, Mock(env) as m2, \
            Tollgate(env, m, limits={"max_header_bytes": 8192}) as tg:
        pad = {"x-pad": "p" * 3000}
        # A stream with a 3 KB head in flight across the reloads.
        long_c = tg.conn(timeout=15)
        long_c.send(request("POST", CHAT, chat_for("gpt-4o", stream=True),
                            dict(pad, **{"x-mock-tokens": "30",
                                         "x-mock-token-delay-us": "50000"})))
        assert long_c.head()[0] == 200
        chunks = [long_c.chunk()]
        # Pooled connections to the old provider address exist on both shards.
        for _ in range(6):
            assert call(tg, CHAT, BODY, pad).status == 200
        cfg = copy.deepcopy(tg.config)
        cfg["limits"]["max_header_bytes"] = 2048
        cfg["limits"]["max_body_bytes"] = 1000
        # mock-openai moves to the second mockllm.
        cfg["providers"]["mock-openai"]["base_url"] = "http://127.0.0.1:%d/v1" % m2.port
        tg.reload(cfg)

        def reloaded():
            r = call(tg, CHAT, BODY, pad)
            return r.status == 431
        wait_until(reloaded, 5, what="the smaller header limit")
        for _ in range(6):
            problem(call(tg, CHAT, BODY, pad), 431)
            problem(call(tg, CHAT, dict(BODY, pad="x" * 1000)), 413)
            assert call(tg, CHAT, BODY).status == 200
        assert m2.stats()["requests"] == 6
        # The stream of the old generation finishes, from the old provider.
        while True:
            ch = long_c.chunk()
            if not ch:
                break
            chunks.append(ch)
        assert len(chunks) == 1 + 30 + 2, len(chunks)
        long_c.send(request("POST", CHAT, BODY))
        assert long_c.response().status == 200
        long_c.close()
        # The old provider's connections were all closed (only stats remains).
        wait_until(lambda: m.stats()["open"] == 1, 3, what="old pooled connections closed")
        # And back: larger limits again.
        cfg = copy.deepcopy(cfg)
        cfg["limits"]["max_header_bytes"] = 16384
        cfg["limits"]["max_body_bytes"] = 1 << 20
        tg.reload(cfg)
        wait_until(lambda: call(tg, CHAT, BODY, pad).status == 200, 5,
                   what="the larger header limit")
        for _ in range(6):
            assert call(tg, CHAT, BODY, {"x-pad": "p" * 12000}).status == 200
            assert call(tg, CHAT, dict(BODY, pad="x" * 100000)).status == 200


def test_cli_and_exit_codes(env):
    binary = os.path.join(env["build"], "tollgate")

    def run(*args):
        r = subprocess.run([binary, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=30)
        out = (r.stdout + r.stderr).decode("utf-8", "replace")
        assert "runtime error:" not in out and "Sanitizer" not in out, out
        return r.returncode, out

    rc, out = run("--version")
    assert rc == 0 and out.startswith("tollgate "), (rc, out)
    for bad in ([], ["-c"], ["--workers", "0", "-c", "x.yaml"], ["--bogus"],
                ["-c", "a.yaml", "extra"]):
        rc, out = run(*bad)
        assert rc == 1, (bad, rc, out)
    # A listen address already taken (no SO_REUSEPORT there): runtime failure, 2.
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        port = taken.getsockname()[1]
        path = write_config(make_config(port, 9))
        try:
            r = subprocess.run([binary, "-c", path, "--workers", "1"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, timeout=30)
            err = r.stderr.decode("utf-8", "replace")
            assert r.returncode == 2, (r.returncode, err)
            assert "127.0.0.1:%d" % port in err, err
            assert "ERROR: AddressSanitizer" not in err and "runtime error:" not in err, err
        finally:
            os.unlink(path)
    finally:
        taken.close()


def test_two_listeners(env):
    second = free_port()
    with Mock(env) as m, Tollgate(env, m, extra_listen=[second]) as tg:
        for port in (tg.port, second):
            assert call(port, CHAT, BODY).status == 200, port


def test_reload_under_load(env):
    with Mock(env) as m, Tollgate(env, m) as tg:
        streams = []
        for i in range(20):
            c = tg.conn(timeout=20)
            c.send(request("POST", CHAT, chat_for("gpt-4o", stream=True),
                           {"x-mock-tokens": "20", "x-mock-token-delay-us": "50000"}))
            streams.append(c)
        for c in streams:
            assert c.head()[0] == 200
        cfg = copy.deepcopy(tg.config)
        for i in range(10):
            cfg = copy.deepcopy(cfg)
            cfg["models"]["model-%d" % i] = dict(cfg["models"]["gpt-4o-mini"])
            cfg["limits"]["max_header_bytes"] = 8192 if i % 2 else 16384
            tg.reload(cfg)
            for _ in range(3):
                assert call(tg, CHAT, BODY).status == 200
            time.sleep(0.03)
        for c in streams:
            n = 0
            while c.chunk():
                n += 1
            assert n == 1 + 20 + 2, n
            c.close()
        wait_until(lambda: call(tg, CHAT, chat_for("model-9")).status == 200, 5,
                   what="the last generation")


def test_sigterm_drains_many(env):
    with Mock(env) as m:
        tg = Tollgate(env, m, drain_timeout_ms=5000)
        try:
            streams, waiting = [], []
            for i in range(10):
                c = tg.conn(timeout=10)
                c.send(request("POST", MESSAGES if i % 2 else CHAT,
                               {"model": "claude-sonnet-4", "max_tokens": 100, "stream": True}
                               if i % 2 else chat_for("gpt-4o", stream=True),
                               {"x-mock-tokens": "15", "x-mock-token-delay-us": "50000"}))
                streams.append(c)
            for i in range(5):
                # Still waiting for the reply head when the drain starts.
                c = tg.conn(timeout=10)
                c.send(request("POST", CHAT, BODY, {"x-mock-first-byte-delay-ms": "400"}))
                waiting.append(c)
            for c in streams:
                assert c.head()[0] == 200
            tg.signal(signal.SIGTERM)
            for c in waiting:
                r = c.response()
                assert r.status == 200 and r.json()["object"] == "chat.completion", r
            for c in streams:
                n = 0
                while c.chunk():
                    n += 1
                assert n >= 15, n
                c.close()
            rc = tg.wait(10 if slow_build(env) else 5)
            assert rc == 0, rc
        finally:
            probs = tg.stop()
        assert not probs, probs


def test_sigterm_drain_timeout_awaiting_head(env):
    with Mock(env) as m:
        tg = Tollgate(env, m, drain_timeout_ms=300)
        try:
            c = tg.conn(timeout=10)
            c.send(request("POST", CHAT, BODY, {"x-mock-first-byte-delay-ms": "5000"}))
            wait_until(lambda: m.stats()["open"] == 2, 3, what="the upstream request")
            t0 = time.monotonic()
            tg.signal(signal.SIGTERM)
            assert c.closed_within(3), "not closed at the drain deadline"
            assert c.buf == b"", c.buf
            rc = tg.wait(10 if slow_build(env) else 5)
            assert rc == 0, rc
            assert time.monotonic() - t0 < 3
        finally:
            probs = tg.stop()
        assert not probs, probs
        wait_until(lambda: m.stats()["open"] == 1, 3, what="the upstream to close")
