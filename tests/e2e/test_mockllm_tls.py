"""End-to-end tests of build/mockllm over HTTPS (--tls-cert / --tls-key).

The mock serves exactly what it serves in plain HTTP (test_mockllm.py), over
TLS 1.2 on tollgate's own TLS module. These tests check the transport: a
certificate the client verifies, non-stream and delayed SSE replies,
keep-alive, pipelining, close_notify on a closing reply, large replies to a
slow reader, session resumption across workers, x-mock-reset-after (a TCP
RST, seen below the TLS layer), and that TLS 1.1 is refused. The certificate is an EC P-256 self-signed one made
with the openssl CLI (SAN DNS:localhost, IP:127.0.0.1) once per run.
"""

import atexit
import json
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time

from harness import CHAT, LOOPBACK, Conn, Mock, Skip, prompt_tokens, request, sse_events
from test_mockllm import check_chat_stream, expected_text

_certs = {}


def certs():
    """(cert path, key path) of a fresh self-signed EC P-256 certificate."""
    if not _certs:
        if not shutil.which("openssl"):
            raise Skip("no openssl CLI")
        d = tempfile.mkdtemp(prefix="e2e-mocktls-")
        atexit.register(shutil.rmtree, d, True)
        cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec",
                        "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                        "-keyout", key, "-out", cert, "-days", "2",
                        "-subj", "/CN=localhost",
                        "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       timeout=30)
        _certs.update(cert=cert, key=key)
    return _certs["cert"], _certs["key"]


def tls_mock(env, *args):
    cert, key = certs()
    return Mock(env, "--tls-cert", cert, "--tls-key", key, *args)


def client_context():
    cert, _ = certs()
    ctx = ssl.create_default_context(cafile=cert)      # verifies chain and name
    return ctx


class TlsConn(Conn):
    """harness.Conn over TLS, verified against the test certificate.
    `ragged_eof_ok=False` makes an EOF without close_notify an error."""

    def __init__(self, port, timeout=5.0, ctx=None, session=None, ragged_eof_ok=False,
                 server_hostname="localhost", rcvbuf=None):
        self.timeout = timeout
        raw = socket.socket()
        if rcvbuf:      # a small window: the server's sends block early
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        raw.settimeout(timeout)
        raw.connect((LOOPBACK, port))
        self.sock = (ctx or client_context()).wrap_socket(
            raw, server_hostname=server_hostname, session=session,
            suppress_ragged_eofs=ragged_eof_ok)
        self.buf = b""
        self.raw_head = b""


def bio_exchange(port, data, timeout=5.0):
    """Sends `data` over TLS and reads the raw socket until EOF or reset
    (an SSLSocket reports a reset as a clean EOF). Returns (reset, plain)."""
    ctx = client_context()
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(inc, out, server_hostname="localhost")
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as s:
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                s.sendall(out.read())
                got = s.recv(65536)
                assert got, "EOF during the handshake"
                inc.write(got)
        tls.write(data)
        s.sendall(out.read())
        reset = False
        try:
            while True:
                got = s.recv(65536)
                if not got:
                    break
                inc.write(got)
        except ConnectionResetError:
            reset = True
    plain = b""
    try:
        while True:
            got = tls.read(65536)
            if not got:
                break
            plain += got
    except (ssl.SSLWantReadError, ssl.SSLEOFError):
        pass
    return reset, plain


def tls_call(m, path, body, headers=None, method="POST"):
    with TlsConn(m.port, 10.0) as c:
        c.send(request(method, path, body, headers, close=True))
        return c.response()


# ---------------------------------------------------------------- tests

def test_tls_nonstream_and_delayed_stream(env):
    with tls_mock(env, "--tokens", "12") as m:
        with TlsConn(m.port) as c:
            assert c.sock.version() == "TLSv1.2", c.sock.version()
            cipher = c.sock.cipher()[0]
            assert "GCM" in cipher or "CHACHA20" in cipher, cipher
            assert c.sock.selected_alpn_protocol() is None     # none offered
            body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
            c.send(request("POST", CHAT, body))
            r = c.response()
            assert r.status == 200 and r.headers["content-type"] == "application/json"
            j = r.json()
            assert j["object"] == "chat.completion" and j["model"] == "gpt-4o"
            assert j["choices"][0]["message"]["content"] == expected_text(12)
            p = prompt_tokens(body)
            assert j["usage"] == {"prompt_tokens": p, "completion_tokens": 12,
                                  "total_tokens": p + 12}, j["usage"]

            # A stream with token delays: each event is its own record, on time.
            t0 = time.monotonic()
            c.send(request("POST", CHAT, {"model": "m", "stream": True},
                           {"x-mock-token-delay-us": "40000", "x-mock-tokens": "5"}))
            status, headers = c.head()
            assert status == 200 and headers["content-type"] == "text/event-stream"
            first = c.chunk()
            t_first = time.monotonic() - t0
            chunks = [first]
            while True:
                ch = c.chunk()
                if not ch:
                    break
                chunks.append(ch)
            elapsed = time.monotonic() - t0
            events = [json.loads(d) for _, d in sse_events(b"".join(chunks)) if d != "[DONE]"]
            text = "".join(e["choices"][0]["delta"].get("content", "") for e in events)
            assert text == expected_text(5), text
            assert t_first < 0.15, t_first                  # the head does not wait
            assert elapsed >= 0.19, elapsed                 # 5 x 40 ms
            assert elapsed < 3.0, elapsed

        # The delayed stream through the shared checker, with usage.
        body = {"model": "m", "stream": True, "stream_options": {"include_usage": True}}
        r = tls_call(m, CHAT, body, {"x-mock-tokens": "7", "x-mock-tokens-per-event": "2",
                                     "x-mock-token-delay-us": "2000"})
        assert check_chat_stream(r, 7, 2, True) == "stop"
        r = tls_call(m, "/health", None, method="GET")
        assert r.status == 200 and r.body == b"ok"


def test_tls_keepalive_pipelining_and_close_notify(env):
    with tls_mock(env, "--tokens", "3") as m:
        before = m_stats(m)
        with TlsConn(m.port) as c:
            for i in range(20):
                c.send(request("POST", CHAT, {"model": "k%d" % i},
                               {"x-mock-tokens": str(i % 7)}))
                j = c.response().json()
                assert j["model"] == "k%d" % i, j
                assert j["usage"]["completion_tokens"] == i % 7, j
            # Pipelined, with a delayed stream holding the rest back.
            batch = [request("POST", CHAT, {"model": "slow", "stream": True},
                             {"x-mock-token-delay-us": "10000", "x-mock-tokens": "3"})]
            batch += [request("POST", CHAT, {"model": "p%d" % i}) for i in range(30)]
            c.send(b"".join(batch))
            assert check_chat_stream(c.response(), 3, 1, False, model="slow") == "stop"
            for i in range(30):
                assert c.response().json()["model"] == "p%d" % i
            # Connection: close ends with close_notify, then EOF (a ragged
            # EOF would raise here: suppress_ragged_eofs is off).
            c.send(request("GET", "/health", close=True))
            r = c.response()
            assert r.status == 200 and r.headers.get("connection") == "close"
            assert c.sock.recv(100) == b""
        after = m_stats(m)
        assert after["accepted"] - before["accepted"] == 2, (before, after)
        assert after["requests"] - before["requests"] == 20 + 31, (before, after)


def m_stats(m):
    r = tls_call(m, "/mock/stats", None, method="GET")
    assert r.status == 200, r
    return json.loads(r.body)


def test_tls_large_replies_slow_reader(env):
    with tls_mock(env, "--tokens", "4") as m:
        with TlsConn(m.port, 30.0, rcvbuf=32768) as c:
            # ~5 MB of JSON in ~320 records, more than the socket buffers
            # hold: the client reads late, so a send comes back short, the
            # rest hits EAGAIN and resumes on EPOLLOUT. The request that
            # arrives meanwhile waits as ciphertext until that send is done.
            c.send(request("POST", CHAT, {"model": "big"}, {"x-mock-tokens": "1048576"}))
            time.sleep(0.2)
            c.send(request("POST", CHAT, {"model": "after"}))
            time.sleep(0.1)
            r = c.response()
            j = r.json()
            assert j["usage"]["completion_tokens"] == 1048576, j["usage"]
            assert len(j["choices"][0]["message"]["content"].split()) == 1048576
            assert c.response().json()["model"] == "after"
            # A big request body, and a big stream.
            text = "x" * 3_000_000
            body = {"model": "in", "messages": [{"role": "user", "content": text}]}
            c.send(request("POST", CHAT, body))
            j = c.response().json()
            assert j["usage"]["prompt_tokens"] == prompt_tokens(body), j["usage"]
            c.send(request("POST", CHAT, {"model": "s", "stream": True},
                           {"x-mock-tokens": "20000", "x-mock-tokens-per-event": "7"}))
            r = c.response()
            assert r.status == 200 and len(r.chunks) == 2 + -(-20000 // 7) + 1


def test_tls_resumption_across_workers(env):
    with tls_mock(env, "--threads", "2") as m:
        ctx = client_context()
        with TlsConn(m.port, ctx=ctx) as c:
            c.send(request("GET", "/health"))
            assert c.response().status == 200
            session = c.sock.session
        assert session is not None and session.has_ticket
        # SO_REUSEPORT spreads these over both workers: any may open the ticket.
        reused = 0
        for _ in range(8):
            with TlsConn(m.port, ctx=ctx, session=session) as c:
                c.send(request("POST", CHAT, {"model": "r"}))
                assert c.response().json()["model"] == "r"
                reused += c.sock.session_reused
        assert reused == 8, reused
        s = m_stats(m)
        assert s["accepted"] >= 10, s


def test_tls_reset_and_wrong_name(env):
    with tls_mock(env, "--tokens", "10") as m:
        # x-mock-reset-after still resets the TCP connection, after exactly
        # the plaintext asked for.
        reset, got = bio_exchange(m.port, request("POST", CHAT, {"model": "m", "stream": True},
                                                  {"x-mock-reset-after": "3"}))
        assert reset, "expected an RST, got a clean close"
        assert got.startswith(b"HTTP/1.1 200") and got.count(b"data: ") == 1 + 3, got
        reset, got = bio_exchange(m.port, request("POST", CHAT, {"model": "m"},
                                                  {"x-mock-reset-after": "30"}))
        assert reset and len(got) == 30 and got.startswith(b"HTTP/1.1 200 OK\r\n"), got
        # A clean close for comparison: close_notify, then FIN.
        reset, got = bio_exchange(m.port, request("GET", "/health", close=True))
        assert not reset and got.endswith(b"\r\n\r\nok"), (reset, got)
        # The certificate does not name other hosts: the client refuses it.
        try:
            TlsConn(m.port, server_hostname="example.com").close()
            raise AssertionError("a wrong host name was accepted")
        except ssl.SSLCertVerificationError:
            pass
        # Plain HTTP on the TLS port fails the handshake; the mock lives on.
        c = Conn(m.port)
        c.send(request("GET", "/health", close=True))
        assert c.closed_within(3)
        c.close()
        assert tls_call(m, "/health", None, method="GET").status == 200


def test_tls_refuses_tls11(env):
    if not shutil.which("openssl"):
        raise Skip("no openssl CLI")
    cert, _ = certs()
    with tls_mock(env) as m:
        def s_client(*args):
            r = subprocess.run(["openssl", "s_client", "-connect", "127.0.0.1:%d" % m.port,
                                "-CAfile", cert, *args], input=b"", stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, timeout=20)
            return r.returncode, r.stdout.decode("utf-8", "replace")
        rc, out = s_client("-tls1_2")
        assert rc == 0 and "TLSv1.2" in out and "Verify return code: 0" in out, out
        # SECLEVEL=0 lets OpenSSL 3 offer TLS 1.1 at all, so the refusal is the mock's.
        rc, out = s_client("-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0")
        assert rc != 0, out
        assert "alert protocol version" in out or "Cipher is (NONE)" in out, out
        assert tls_call(m, "/health", None, method="GET").status == 200


def test_tls_cli_errors(env):
    binary = os.path.join(env.get("build", "build"), "mockllm")
    cert, key = certs()

    def run(*args):
        r = subprocess.run([binary, "--listen", "127.0.0.1:0", *args],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=10)
        return r.returncode, r.stderr.decode("utf-8", "replace")

    rc, err = run("--tls-cert", cert)
    assert rc == 1 and "--tls-key" in err, (rc, err)
    rc, err = run("--tls-cert", cert, "--tls-key", "/nonexistent/key.pem")
    assert rc == 2 and "/nonexistent/key.pem" in err, (rc, err)
    rc, err = run("--tls-cert", key, "--tls-key", key)     # a key is no certificate
    assert rc == 2 and "certificate" in err, (rc, err)
    rc, err = run("--tls-cert", cert, "--tls-key", cert)
    assert rc == 2 and "key" in err, (rc, err)
    out = subprocess.run([binary, "--help"], stdout=subprocess.PIPE, timeout=10).stdout
    assert b"--tls-cert FILE" in out and b"--tls-key FILE" in out
