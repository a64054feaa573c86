"""End-to-end: the TLS listener (agents speaking HTTPS to tollgate).

Each test makes its own certificates with the openssl CLI in a temp dir
(EC P-256 and RSA 2048, self-signed for localhost and 127.0.0.1; a root ->
intermediate -> leaf chain; broken ones for the config errors) and starts a
tollgate whose first listener (`tg.port`) has a `tls:` block; most also have
a plain listener (`tg.plain`) so a reply over TLS can be compared with the
reply to the same request in the clear (mockllm is deterministic but for its
reply counter, which normalise_ids() removes).

Clients: python's ssl module (verifying against the test CA, hostname
checked), `openssl s_client` and curl for protocol-level views, and raw
sockets with hand-made ClientHellos to see the exact alert a refusal sends.
Policy checked: TLS 1.2 only, ECDHE + AEAD suites only, ALPN http/1.1,
stateless tickets that either shard resumes, a handshake deadline, and a
SIGHUP that swaps the certificate for new connections only.
"""

import hashlib
import json
import os
import random
import re
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import tempfile
import time

from harness import (CHAT, DEFAULT_MODELS, LOOPBACK, MESSAGES, SANITIZER_MARKS, Conn,
                     FakeProvider, Mock, Skip, Tollgate, build_dir, call, free_port,
                     make_config, normalise_ids, parse_request, prompt_tokens, request,
                     slow_build, sse_events, wait_until, write_config)

# The suites the policy allows, by OpenSSL name.
ALLOWED_SUITES = {
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-RSA-CHACHA20-POLY1305",
}
ALERT_HANDSHAKE_FAILURE = 40
ALERT_PROTOCOL_VERSION = 70


def chat(stream=False, content="hello over tls", model="gpt-4o"):
    body = {"model": model, "messages": [{"role": "user", "content": content}]}
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


def messages(stream=False, content="hello over tls", model="claude-sonnet-4", max_tokens=256):
    body = {"model": model, "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": content}]}
    if stream:
        body["stream"] = True
    return body


# ---------------------------------------------------------------- certificates

class Certs:
    """Certificates made with the openssl CLI in a temp dir (removed by close())."""

    def __init__(self):
        if not shutil.which("openssl"):
            raise Skip("the openssl CLI is not installed")
        self.dir = tempfile.mkdtemp(prefix="e2e-tls-")

    def path(self, name):
        return os.path.join(self.dir, name)

    def openssl(self, *args):
        r = subprocess.run(["openssl", *args], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=60)
        if r.returncode:
            raise AssertionError("openssl %s failed: %s" % (" ".join(args),
                                                            r.stderr.decode(errors="replace")))
        return r.stdout

    @staticmethod
    def _newkey(kind, bits):
        if kind == "ec":
            return ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
        return ["-newkey", "rsa:%d" % bits]

    def self_signed(self, name, kind="ec", bits=2048, cn=None):
        """(cert path, key path): a self-signed cert for localhost/127.0.0.1."""
        crt, key = self.path(name + ".crt"), self.path(name + ".key")
        self.openssl("req", "-x509", *self._newkey(kind, bits), "-nodes", "-keyout", key,
                     "-out", crt, "-days", "3", "-subj", "/CN=%s" % (cn or name),
                     "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1")
        return crt, key

    def chain(self, name):
        """(cert path, key path, root path): an RSA root signs an EC intermediate
        that signs an EC leaf; the cert file holds leaf + intermediate."""
        root_crt, root_key = self.path(name + "-root.crt"), self.path(name + "-root.key")
        self.openssl("req", "-x509", *self._newkey("rsa", 2048), "-nodes", "-keyout", root_key,
                     "-out", root_crt, "-days", "3", "-subj", "/CN=%s e2e root" % name,
                     "-addext", "basicConstraints=critical,CA:TRUE",
                     "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        ext = self.path(name + ".ext")
        with open(ext, "w") as f:
            f.write("[ca]\nbasicConstraints=critical,CA:TRUE,pathlen:0\n"
                    "keyUsage=critical,keyCertSign,cRLSign\n"
                    "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
                    "[leaf]\nbasicConstraints=critical,CA:FALSE\n"
                    "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
                    "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
                    "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n")
        mid_crt, mid_key = self.path(name + "-mid.crt"), self.path(name + "-mid.key")
        csr = self.path(name + "-mid.csr")
        self.openssl("req", "-new", *self._newkey("ec", 0), "-nodes", "-keyout", mid_key,
                     "-out", csr, "-subj", "/CN=%s e2e intermediate" % name)
        self.openssl("x509", "-req", "-in", csr, "-CA", root_crt, "-CAkey", root_key,
                     "-set_serial", str(random.getrandbits(62)), "-days", "3",
                     "-out", mid_crt, "-extfile", ext, "-extensions", "ca")
        leaf_crt, leaf_key = self.path(name + "-leaf.crt"), self.path(name + ".key")
        csr = self.path(name + "-leaf.csr")
        self.openssl("req", "-new", *self._newkey("ec", 0), "-nodes", "-keyout", leaf_key,
                     "-out", csr, "-subj", "/CN=localhost")
        self.openssl("x509", "-req", "-in", csr, "-CA", mid_crt, "-CAkey", mid_key,
                     "-set_serial", str(random.getrandbits(62)), "-days", "3",
                     "-out", leaf_crt, "-extfile", ext, "-extensions", "leaf")
        full = self.path(name + ".crt")
        with open(full, "wb") as f:
            f.write(read(leaf_crt) + read(mid_crt))
        return full, leaf_key, root_crt

    def bundle(self, name, *crts):
        """A CA file holding these certificates."""
        p = self.path(name)
        with open(p, "wb") as f:
            for c in crts:
                f.write(read(c))
        return p

    def der(self, crt):
        """The DER bytes of the first certificate in a PEM file."""
        pem = read(crt).decode()
        end = "-----END CERTIFICATE-----"
        return ssl.PEM_cert_to_DER_cert(pem[:pem.index(end) + len(end)] + "\n")

    def close(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def read(path):
    with open(path, "rb") as f:
        return f.read()


def replace_file(path, data):
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def fingerprint(der):
    return hashlib.sha256(der).hexdigest()


# ---------------------------------------------------------------- tollgate

def start(env, mock_port, tls, plain=True, relative=True, **overrides):
    """A tollgate whose listeners are TLS with tls = [(cert, key), ...] (the
    first one on tg.port, all in tg.tls_ports) plus, if `plain`, one in the
    clear on tg.plain. Cert paths are written relative to the config file's
    directory when `relative` (the config goes to the temp dir)."""
    ports = [free_port() for _ in tls]
    plain_port = free_port() if plain else None
    extra = ports[1:] + ([plain_port] if plain else [])
    cfg = make_config(ports[0], mock_port, extra_listen=extra, **overrides)
    base = tempfile.gettempdir()
    for i, (crt, key) in enumerate(tls):
        if relative:
            crt, key = os.path.relpath(crt, base), os.path.relpath(key, base)
        cfg["listen"][i]["tls"] = {"cert": crt, "key": key}
    tg = Tollgate(env, config=cfg, port=ports[0])
    assert os.path.dirname(tg.config_path) == base, tg.config_path
    tg.tls_ports = ports
    tg.plain = plain_port
    return tg


# ---------------------------------------------------------------- TLS clients

def client_ctx(cafile, alpn=("http/1.1",), ciphers=None):
    """Verifies the server against `cafile`, hostname checked."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    assert ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED
    ctx.load_verify_locations(cafile)
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    if ciphers:
        ctx.set_ciphers(ciphers)
    return ctx


class _TLSSock:
    """An SSLSocket whose recv reports an EOF without close_notify as b""
    (tollgate closes without one), so Conn's helpers work unchanged."""

    def __init__(self, s):
        self.s = s

    def recv(self, n):
        try:
            return self.s.recv(n)
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
            return b""

    def __getattr__(self, name):
        return getattr(self.s, name)


class TLSConn(Conn):
    """One HTTPS connection with Conn's read buffer; self.tls is the SSLSocket."""

    def __init__(self, port, ctx, timeout=10.0, session=None, hostname="localhost"):
        self.timeout = timeout
        raw = socket.create_connection((LOOPBACK, port), timeout=timeout)
        try:
            self.tls = ctx.wrap_socket(raw, server_hostname=hostname, session=session)
        except BaseException:
            raw.close()
            raise
        self.sock = _TLSSock(self.tls)
        self.buf = b""
        self.raw_head = b""

    def peer_fp(self):
        return fingerprint(self.tls.getpeercert(binary_form=True))


def https_call(port, ctx, path, body, headers=None, method="POST", timeout=20.0,
               hostname="localhost"):
    c = TLSConn(port, ctx, timeout, hostname=hostname)
    try:
        c.send(request(method, path, body, headers, close=True))
        return c.response()
    finally:
        c.close()


def usage(r):
    """(input tokens, output tokens) of a reply, JSON or SSE, either format."""
    found = {}

    def take(u):
        for k in ("prompt_tokens", "input_tokens"):
            if k in u:
                found["in"] = u[k]
        for k in ("completion_tokens", "output_tokens"):
            if k in u:
                found["out"] = u[k]
    if r.headers.get("content-type", "").startswith("text/event-stream"):
        for _, data in sse_events(r.body):
            if not data or data == "[DONE]":
                continue
            j = json.loads(data)
            for u in (j.get("usage"), (j.get("message") or {}).get("usage")):
                if u:
                    take(u)
    elif r.headers.get("content-type", "").startswith("application/json"):
        take(r.json().get("usage") or {})
    return found.get("in"), found.get("out")


def assert_same(via_tls, via_plain, what):
    assert via_tls.status == via_plain.status, (what, via_tls, via_plain)
    assert via_tls.headers.get("content-type") == via_plain.headers.get("content-type"), \
        (what, via_tls.headers, via_plain.headers)
    if via_plain.chunks is not None:
        assert via_tls.chunks is not None, (what, via_tls.headers)
        got = [normalise_ids(c) for c in via_tls.chunks]
        want = [normalise_ids(c) for c in via_plain.chunks]
        assert got == want, (what, len(got), len(want), got[:2], want[:2])
    assert normalise_ids(via_tls.body) == normalise_ids(via_plain.body), \
        (what, len(via_tls.body), len(via_plain.body), via_tls.body[:300], via_plain.body[:300])
    assert usage(via_tls) == usage(via_plain), (what, usage(via_tls), usage(via_plain))


def s_client(port, *args, stdin=b"", timeout=30):
    """`openssl s_client` against the port: (exit code, stdout + stderr)."""
    r = subprocess.run(["openssl", "s_client", "-connect", "%s:%d" % (LOOPBACK, port),
                        "-servername", "localhost", *args], input=stdin,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
    return r.returncode, r.stdout.decode("utf-8", "replace")


def negotiated_cipher(out):
    m = re.search(r"Cipher is (\S+)", out)
    return m.group(1) if m else None


# ---------------------------------------------------------------- raw records

def _ext(kind, data):
    return struct.pack(">HH", kind, len(data)) + data


def client_hello(version=0x0303, suites=(0xC02B, 0xC02F), record_version=0x0301):
    """The bytes of one TLS record holding a ClientHello."""
    body = struct.pack(">H", version) + os.urandom(32) + b"\x00"
    cs = b"".join(struct.pack(">H", s) for s in suites)
    body += struct.pack(">H", len(cs)) + cs + b"\x01\x00"
    groups = struct.pack(">HHH", 4, 23, 29)                       # P-256, X25519
    sigalgs = [0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501]
    exts = (_ext(10, groups) + _ext(11, b"\x01\x00") +
            _ext(13, struct.pack(">H", 2 * len(sigalgs)) +
                 b"".join(struct.pack(">H", a) for a in sigalgs)))
    body += struct.pack(">H", len(exts)) + exts
    hs = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16" + struct.pack(">HH", record_version, len(hs)) + hs


def read_until_closed(sock, seconds):
    """(bytes received, closed?) reading until EOF/reset or `seconds`."""
    data, deadline = b"", time.monotonic() + seconds
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return data, False
            sock.settimeout(left)
            d = sock.recv(65536)
            if not d:
                return data, True
            data += d
    except ConnectionResetError:
        return data, True
    except socket.timeout:
        return data, False


def fatal_alert(data):
    """The description of the fatal alert record `data` starts with, or None."""
    if len(data) >= 7 and data[0] == 0x15 and data[1] == 3 and \
            struct.unpack(">H", data[3:5])[0] == 2 and data[5] == 2:
        return data[6]
    return None


def raw_hello_alert(port, hello, slack):
    s = socket.create_connection((LOOPBACK, port), timeout=5)
    try:
        s.sendall(hello)
        data, closed = read_until_closed(s, slack)
    finally:
        s.close()
    assert closed, ("not closed after the refusal", data)
    return fatal_alert(data), data


def rst_close(sock):
    """Closes with an RST instead of a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


# ---------------------------------------------------------------- tests

def test_tls_relay_matches_plain(env):
    """Chat and messages, plain JSON and SSE, over HTTPS = in the clear."""
    with Certs() as certs, Mock(env, "--tokens", "9") as m:
        crt, key = certs.self_signed("ec", "ec")
        with start(env, m.port, [(crt, key)]) as tg:
            ctx = client_ctx(crt)
            cases = [
                (CHAT, chat(), None),
                (CHAT, chat(stream=True), None),
                (CHAT, chat(stream=True), {"x-mock-tokens-per-event": "4",
                                           "x-mock-tokens": "21"}),
                (MESSAGES, messages(), None),
                (MESSAGES, messages(stream=True), None),
                (MESSAGES, messages(stream=True, model="claude-haiku-3-5"),
                 {"x-mock-tokens": "13"}),
                ("/v1/models", None, None),
            ]
            for path, body, headers in cases:
                what = (path, body, headers)
                method = "GET" if body is None else "POST"
                via_tls = https_call(tg.port, ctx, path, body, headers, method)
                via_plain = call(tg.plain, path, body, headers, method)
                assert via_tls.status == 200, (what, via_tls)
                assert_same(via_tls, via_plain, what)
                if body is None:
                    continue
                n_out = int((headers or {}).get("x-mock-tokens", 9))
                assert usage(via_tls) == (prompt_tokens(body), n_out), (what, usage(via_tls))
                if body.get("stream"):
                    events = sse_events(via_tls.body)
                    assert via_tls.chunks and len(via_tls.chunks) >= 3, (what, via_tls.chunks)
                    if path == CHAT:
                        assert events[-1][1] == "[DONE]", (what, events[-3:])
                    else:
                        assert events[-1][0] == "message_stop", (what, events[-3:])
            # What the session looks like from python: TLS 1.2, an allowed
            # suite, ALPN http/1.1, the certificate verified for 127.0.0.1 too.
            c = TLSConn(tg.port, client_ctx(crt, alpn=("h2", "http/1.1")), hostname="127.0.0.1")
            try:
                assert c.tls.version() == "TLSv1.2", c.tls.version()
                assert c.tls.cipher()[0] in ALLOWED_SUITES, c.tls.cipher()
                assert c.tls.selected_alpn_protocol() == "http/1.1", \
                    c.tls.selected_alpn_protocol()
                assert c.peer_fp() == fingerprint(certs.der(crt))
                c.send(request("POST", CHAT, chat()))
                assert c.response().status == 200
            finally:
                c.close()
            # curl (offers h2 and http/1.1 by ALPN) gets HTTP/1.1 and the same body.
            if shutil.which("curl"):
                body = json.dumps(chat()).encode()
                r = subprocess.run(
                    ["curl", "-sS", "--max-time", "20", "--cacert", crt,
                     "--resolve", "localhost:%d:127.0.0.1" % tg.port,
                     "-w", "\n%{http_code} %{http_version}",
                     "-H", "content-type: application/json", "--data-binary", "@-",
                     "https://localhost:%d%s" % (tg.port, CHAT)],
                    input=body, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
                assert r.returncode == 0, (r.returncode, r.stderr)
                out, _, tail = r.stdout.rpartition(b"\n")
                assert tail == b"200 1.1", tail
                plain = call(tg.plain, CHAT, chat())
                assert normalise_ids(out) == normalise_ids(plain.body), \
                    (out[:300], plain.body[:300])
            # Every POST reached the mock exactly once (2 x 6, python, curl + plain).
            assert m.stats()["requests"] == 2 * 6 + 1 + (2 if shutil.which("curl") else 0)


def test_tls_keepalive_and_pipelining(env):
    with Certs() as certs, Mock(env, "--tokens", "9") as m:
        crt, key = certs.self_signed("ec", "ec")
        with start(env, m.port, [(crt, key)]) as tg:
            ctx = client_ctx(crt)
            # 50 requests, one after the other, on one connection; each reply
            # has its own token count, so a reply out of place shows.
            c = TLSConn(tg.port, ctx)
            try:
                for i in range(50):
                    n = 1 + i % 17
                    path, body = [(CHAT, chat()), (MESSAGES, messages()),
                                  (CHAT, chat(stream=True)),
                                  (MESSAGES, messages(stream=True))][i % 4]
                    c.send(request("POST", path, body, {"x-mock-tokens": str(n)}))
                    r = c.response()
                    assert r.status == 200, (i, r)
                    assert usage(r) == (prompt_tokens(body), n), (i, usage(r))
                # Three requests in one write (one TLS record), then the
                # replies in order; the last asks to close.
                reqs = [request("POST", CHAT, chat(), {"x-mock-tokens": "3"}),
                        request("POST", MESSAGES, messages(stream=True),
                                {"x-mock-tokens": "5"}),
                        request("POST", CHAT, chat(stream=True), {"x-mock-tokens": "7"},
                                close=True)]
                c.send(b"".join(reqs))
                got = [usage(c.response())[1] for _ in range(3)]
                assert got == [3, 5, 7], got
                assert c.closed_within(5), "not closed after Connection: close"
            finally:
                c.close()
            # The same on a fresh connection whose very first bytes after the
            # handshake are the three requests; and GETs mixed in.
            c = TLSConn(tg.port, ctx)
            try:
                c.send(request("GET", "/v1/models", None) +
                       request("POST", MESSAGES, messages(), {"x-mock-tokens": "4"}) +
                       request("GET", "/v1/models", None))
                r1, r2, r3 = c.response(), c.response(), c.response()
                assert r1.status == r3.status == 200 and r1.json() == r3.json(), (r1, r3)
                assert r2.status == 200 and usage(r2)[1] == 4, r2
                # Still open for more.
                c.send(request("POST", CHAT, chat(), {"x-mock-tokens": "6"}))
                assert usage(c.response())[1] == 6
            finally:
                c.close()
            assert m.stats()["requests"] == 50 + 3 + 2


def test_tls_large_bodies(env):
    """A 1 MiB request body and 1+ MB replies cross TLS intact."""
    def respond(conn_no, req_no, raw):
        _, _, body = parse_request(raw)
        reply = json.dumps({
            "id": "chatcmpl-fake", "object": "chat.completion", "created": 1,
            "model": "big", "choices": [{"index": 0, "finish_reason": "stop", "message": {
                "role": "assistant", "content": hashlib.sha256(body).hexdigest()}}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 1, "total_tokens": 8}}).encode()
        return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n" % len(reply)) + reply

    with Certs() as certs, Mock(env) as m, FakeProvider(respond) as fp:
        crt, key = certs.self_signed("ec", "ec")
        models = dict(DEFAULT_MODELS)
        models["big"] = {"provider": "fake", "input_usd_per_mtok": "0.01",
                         "output_usd_per_mtok": "0.01", "max_output_tokens": 1000,
                         "context_tokens": 4000000, "tier": "economy"}
        providers = {"fake": {"base_url": "http://127.0.0.1:%d/v1" % fp.port,
                              "format": "openai"}}
        with start(env, m.port, [(crt, key)], models=models, providers=providers) as tg:
            ctx = client_ctx(crt)
            rnd = random.Random(7)
            text = "".join(rnd.choice("abcdefghijklmnopqrstuvwxyz0123456789 .,")
                           for _ in range(1 << 20))
            body = json.dumps(chat(content=text, model="big")).encode()
            assert len(body) > 1 << 20
            for framing in ("length", "chunked"):
                c = TLSConn(tg.port, ctx, timeout=60)
                try:
                    c.send(request("POST", CHAT, body, chunked_body=framing == "chunked",
                                   chunk_size=5000))
                    r = c.response()
                    assert r.status == 200, (framing, r)
                    _, _, got = parse_request(fp.requests[-1][1])
                    assert len(got) == len(body), (framing, len(got), len(body))
                    assert json.loads(got)["messages"] == json.loads(body)["messages"], framing
                    # The reply carries the digest of what the provider got.
                    digest = r.json()["choices"][0]["message"]["content"]
                    assert digest == hashlib.sha256(got).hexdigest(), framing
                    # The connection goes on after the big request.
                    c.send(request("POST", CHAT, chat(), {"x-mock-tokens": "2"}))
                    assert usage(c.response())[1] == 2
                finally:
                    c.close()
            # 1 MiB to mockllm too: its prompt_tokens counts every byte.
            body = chat(content=text[:(1 << 20) - 100], model="gpt-4o-mini")
            r = https_call(tg.port, ctx, CHAT, body, timeout=60)
            assert r.status == 200, r
            assert usage(r)[0] == prompt_tokens(body), usage(r)
            # Large replies: ~1.2 MB in one Content-Length body, ~0.6 MB of SSE.
            for path, b, n, per in ((CHAT, chat(), 200000, None),
                                    (CHAT, chat(stream=True), 100000, "20"),
                                    (MESSAGES, messages(stream=True, max_tokens=64000),
                                     60000, "7")):
                h = {"x-mock-tokens": str(n)}
                if per:
                    h["x-mock-tokens-per-event"] = per
                via_tls = https_call(tg.port, ctx, path, b, h, timeout=60)
                via_plain = call(tg.plain, path, b, h, timeout=60)
                assert via_tls.status == 200, via_tls
                assert len(via_tls.body) > 500000, (path, n, len(via_tls.body), via_tls)
                assert_same(via_tls, via_plain, (path, n))


def test_tls_rsa_and_chain(env):
    with Certs() as certs, Mock(env) as m:
        rsa_crt, rsa_key = certs.self_signed("rsa", "rsa", 2048)
        # The key in the traditional PKCS#1 form as well as PKCS#8.
        trad = certs.path("rsa-pkcs1.key")
        certs.openssl("rsa", "-in", rsa_key, "-out", trad, "-traditional")
        assert b"BEGIN RSA PRIVATE KEY" in read(trad)
        chain_crt, chain_key, root = certs.chain("chain")
        assert read(chain_crt).count(b"BEGIN CERTIFICATE") == 2
        leaf_only = certs.path("chain-leaf.crt")
        with start(env, m.port, [(rsa_crt, trad), (chain_crt, chain_key),
                                 (leaf_only, chain_key)]) as tg:
            rsa_port, chain_port, leaf_port = tg.tls_ports
            c = TLSConn(rsa_port, client_ctx(rsa_crt))
            try:
                assert c.tls.cipher()[0].startswith("ECDHE-RSA-"), c.tls.cipher()
                assert c.tls.cipher()[0] in ALLOWED_SUITES, c.tls.cipher()
                c.send(request("POST", CHAT, chat()))
                assert c.response().status == 200
            finally:
                c.close()
            # The chain: the client knows the root only, so the intermediate
            # must come from the server.
            for host in ("localhost", "127.0.0.1"):
                c = TLSConn(chain_port, client_ctx(root), hostname=host)
                try:
                    assert c.tls.cipher()[0].startswith("ECDHE-ECDSA-"), c.tls.cipher()
                    assert c.peer_fp() == fingerprint(certs.der(chain_crt))
                    c.send(request("POST", MESSAGES, messages(), close=True))
                    assert c.response().status == 200
                finally:
                    c.close()
            rc, out = s_client(chain_port, "-showcerts", "-CAfile", root,
                               "-verify_hostname", "localhost", "-verify_return_error")
            assert rc == 0, out
            assert "Verify return code: 0 (ok)" in out, out
            assert out.count("BEGIN CERTIFICATE") == 2, out
            # With the leaf alone in the file the root is not enough: the
            # check above is not vacuous. (s_client without
            # -verify_return_error finishes the handshake and reports.)
            rc, out = s_client(leaf_port, "-showcerts", "-CAfile", root,
                               "-verify_hostname", "localhost")
            assert out.count("BEGIN CERTIFICATE") == 1, out
            m_rc = re.search(r"Verify return code: (\d+)", out)
            assert m_rc and m_rc.group(1) != "0", out


def test_tls_protocol_refusals(env):
    slack = 10 if slow_build(env) else 5
    with Certs() as certs, Mock(env) as m:
        ec_crt, ec_key = certs.self_signed("ec", "ec")
        rsa_crt, rsa_key = certs.self_signed("rsa", "rsa", 2048)
        with start(env, m.port, [(ec_crt, ec_key), (rsa_crt, rsa_key)]) as tg:
            ec_port, rsa_port = tg.tls_ports
            # Raw ClientHellos: the exact fatal alert, then a close.
            for port in (ec_port, rsa_port):
                for version in (0x0301, 0x0302):        # TLS 1.0, 1.1
                    alert, data = raw_hello_alert(port, client_hello(version), slack)
                    assert alert == ALERT_PROTOCOL_VERSION, (port, hex(version), data)
                for suites in ((0x009C, 0x009D),      # RSA key exchange, AES-GCM
                               (0xC023, 0xC027),      # ECDHE, AES-CBC-SHA256
                               (0xC009, 0xC013),      # ECDHE, AES-CBC-SHA
                               (0x1301, 0x1302, 0x1303)):   # TLS 1.3 only suites
                    alert, data = raw_hello_alert(port, client_hello(0x0303, suites), slack)
                    assert alert == ALERT_HANDSHAKE_FAILURE, (port, suites, data)
            # The ECDHE-ECDSA suites are not offered with an RSA certificate.
            alert, data = raw_hello_alert(rsa_port, client_hello(0x0303, (0xC02B, 0xC02C)),
                                          slack)
            assert alert == ALERT_HANDSHAKE_FAILURE, data

            # openssl s_client's view.
            def refused(port, *args, alert_text):
                rc, out = s_client(port, *args)
                assert rc != 0, (args, out)
                assert negotiated_cipher(out) in (None, "(NONE)"), (args, out)
                assert alert_text in out, (args, alert_text, out)
            old = ["-cipher", "DEFAULT@SECLEVEL=0"]     # let openssl 3 speak < 1.2
            for port in (ec_port, rsa_port):
                refused(port, "-tls1_1", *old, alert_text="alert protocol version")
                refused(port, "-tls1", *old, alert_text="alert protocol version")
                refused(port, "-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA256:"
                        "ECDHE-RSA-AES128-SHA256:ECDHE-RSA-AES128-SHA",
                        alert_text="alert handshake failure")
            refused(rsa_port, "-tls1_2", "-cipher", "AES128-GCM-SHA256",
                    alert_text="alert handshake failure")
            refused(ec_port, "-tls1_2", "-cipher", "AES128-GCM-SHA256",
                    alert_text="alert handshake failure")
            refused(ec_port, "-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA256",
                    alert_text="alert handshake failure")
            for port in (ec_port, rsa_port):
                rc, out = s_client(port, "-tls1_3")
                assert rc != 0 and negotiated_cipher(out) in (None, "(NONE)"), out
                # A TLS 1.3-only python client fails too.
                ctx = client_ctx(ec_crt if port == ec_port else rsa_crt)
                ctx.minimum_version = ssl.TLSVersion.TLSv1_3
                try:
                    TLSConn(port, ctx).close()
                    raise AssertionError("a TLS 1.3-only client got through on %d" % port)
                except ssl.SSLError:
                    pass
            # What is accepted: TLS 1.2, ALPN http/1.1, an ECDHE AEAD suite.
            for port, crt, kind in ((ec_port, ec_crt, "ECDSA"), (rsa_port, rsa_crt, "RSA")):
                rc, out = s_client(port, "-alpn", "http/1.1", "-CAfile", crt,
                                   "-verify_return_error")
                assert rc == 0, out
                assert "ALPN protocol: http/1.1" in out, out
                assert re.search(r"Protocol\s*: TLSv1\.2", out), out
                cipher = negotiated_cipher(out)
                assert cipher in ALLOWED_SUITES and kind in cipher, (cipher, out)
                assert "Verify return code: 0 (ok)" in out, out
                # Every allowed suite of the key type, one at a time.
                for suite in sorted(s for s in ALLOWED_SUITES if "-%s-" % kind in s):
                    c = TLSConn(port, client_ctx(crt, ciphers=suite))
                    try:
                        assert c.tls.cipher()[0] == suite, (suite, c.tls.cipher())
                        c.send(request("POST", CHAT, chat(), close=True))
                        assert c.response().status == 200, suite
                    finally:
                        c.close()
            # ALPN offered without http/1.1: no other protocol is agreed to.
            c = None
            try:
                c = TLSConn(ec_port, client_ctx(ec_crt, alpn=("h2",)))
                assert c.tls.selected_alpn_protocol() in (None, "http/1.1"), \
                    c.tls.selected_alpn_protocol()
            except ssl.SSLError:
                pass                # refused with no_application_protocol: also fine
            finally:
                if c:
                    c.close()
            # No ALPN at all is fine (HTTP/1.1 is the default).
            r = https_call(ec_port, client_ctx(ec_crt, alpn=None), CHAT, chat())
            assert r.status == 200, r
            # A renegotiation attempt (s_client's "R" command, stdin kept
            # open meanwhile) is not honoured: no ServerHello answers the
            # second ClientHello, and tollgate stays up.
            p = subprocess.Popen(["openssl", "s_client", "-connect", "%s:%d" % (LOOPBACK, ec_port),
                                  "-servername", "localhost", "-tls1_2", "-CAfile", ec_crt,
                                  "-msg"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT)
            try:
                time.sleep(1.0 if slow_build(env) else 0.5)
                p.stdin.write(b"R\n")
                p.stdin.flush()
                time.sleep(1.0)
                out = p.communicate(b"", timeout=20)[0].decode("utf-8", "replace")
            finally:
                if p.poll() is None:
                    p.kill()
                    p.wait()
            before, _, after = out.partition("RENEGOTIATING")
            assert "<<< TLS 1.2, Handshake" in before and "ServerHello" in before, out
            assert after and ">>> TLS 1.2, Handshake" in after, out
            assert "ServerHello" not in "".join(
                line for line in after.splitlines() if line.startswith("<<<")), out
            assert tg.alive()
            for port, crt in ((ec_port, ec_crt), (rsa_port, rsa_crt)):
                assert https_call(port, client_ctx(crt), CHAT, chat()).status == 200


def test_tls_session_resumption(env):
    with Certs() as certs, Mock(env) as m:
        crt, key = certs.self_signed("ec", "ec")
        with start(env, m.port, [(crt, key)]) as tg:
            ctx = client_ctx(crt)
            first = TLSConn(tg.port, ctx)
            try:
                assert not first.tls.session_reused
                first.send(request("POST", CHAT, chat()))
                assert first.response().status == 200
                session = first.tls.session
            finally:
                first.close()
            assert session is not None and session.has_ticket, session
            # Connections are spread over the shards by SO_REUSEPORT: with
            # 16 of them both shards open a ticket the other (or itself) issued.
            for i in range(16):
                c = TLSConn(tg.port, ctx, session=session)
                try:
                    assert c.tls.session_reused, "connection %d did a full handshake" % i
                    c.send(request("POST", MESSAGES, messages(), close=True))
                    assert c.response().status == 200, i
                finally:
                    c.close()
            # openssl's view: -sess_out, then -sess_in reuses it, repeatedly.
            sess = certs.path("s_client.sess")
            rc, out = s_client(tg.port, "-tls1_2", "-CAfile", crt, "-sess_out", sess)
            assert rc == 0 and out.count("New, TLSv1.2") == 1, out
            assert re.search(r"TLS session ticket lifetime hint: \d+", out), out
            for i in range(6):
                rc, out = s_client(tg.port, "-tls1_2", "-CAfile", crt, "-sess_in", sess)
                assert rc == 0 and "Reused, TLSv1.2" in out, (i, out)
            # A ticket this process never issued (another tollgate's: another
            # secret) falls back to a full handshake, which works.
            with start(env, m.port, [(crt, key)], plain=False) as tg2:
                c = TLSConn(tg2.port, ctx, session=session)
                try:
                    assert not c.tls.session_reused
                    c.send(request("POST", CHAT, chat(), close=True))
                    assert c.response().status == 200
                finally:
                    c.close()
                rc, out = s_client(tg2.port, "-tls1_2", "-CAfile", crt, "-sess_in", sess)
                assert rc == 0 and "New, TLSv1.2" in out and "Reused" not in out, out
            # The first one still resumes its own.
            c = TLSConn(tg.port, ctx, session=session)
            try:
                assert c.tls.session_reused
            finally:
                c.close()


def test_tls_handshake_timeout(env):
    slow = slow_build(env)
    late = 6.0 if slow else 3.0
    with Certs() as certs, Mock(env) as m:
        crt, key = certs.self_signed("ec", "ec")
        with start(env, m.port, [(crt, key)],
                   limits={"handshake_timeout_ms": 500, "header_timeout_ms": 2500}) as tg:
            ctx = client_ctx(crt)
            t0 = time.monotonic()
            silent = Conn(tg.port, timeout=late)
            half = Conn(tg.port, timeout=late)
            half.send(client_hello()[:20])
            partial = Conn(tg.port, timeout=late)
            partial.send(b"\x16\x03\x01\x00\x50" + os.urandom(11))
            # Meanwhile a real client is served at once.
            t1 = time.monotonic()
            r = https_call(tg.port, ctx, CHAT, chat())
            assert r.status == 200, r
            assert time.monotonic() - t1 < (2.0 if slow else 0.45), time.monotonic() - t1
            for name, c in (("silent", silent), ("half hello", half), ("partial", partial)):
                assert c.closed_within(late - (time.monotonic() - t0)), \
                    "%s connection still open %.1fs after accept" % (name, time.monotonic() - t0)
                took = time.monotonic() - t0
                assert took >= 0.45, (name, took)
                assert c.buf == b"" or fatal_alert(c.buf), (name, c.buf)
                c.close()
            # A ClientHello dribbled a byte at a time: progress does not
            # extend the deadline.
            hello = client_hello()
            s = socket.create_connection((LOOPBACK, tg.port), timeout=late)
            t0 = time.monotonic()
            closed = False
            try:
                for i in range(len(hello) - 1):
                    s.sendall(hello[i:i + 1])
                    data, closed = read_until_closed(s, 0.05)
                    if closed:
                        break
                    if time.monotonic() - t0 > late:
                        break
            except (BrokenPipeError, ConnectionResetError):
                closed = True
            finally:
                s.close()
            took = time.monotonic() - t0
            assert closed and 0.45 <= took <= late, (closed, took)
            # After the handshake the header timeout applies instead: the
            # handshake deadline (500 ms) no longer closes the connection.
            c = TLSConn(tg.port, ctx)
            t0 = time.monotonic()
            try:
                assert not c.closed_within(1.5), "closed %.2fs after the handshake" % (
                    time.monotonic() - t0)
                assert c.closed_within(2.5 + late), "header timeout did not close it"
                took = time.monotonic() - t0
                assert 2.3 <= took <= 2.5 + late, took
                assert c.buf == b"" or c.buf.startswith(b"HTTP/1.1 408"), c.buf
            finally:
                c.close()
            # A request that starts in time is served as usual.
            c = TLSConn(tg.port, ctx)
            try:
                time.sleep(1.0)
                c.send(request("POST", CHAT, chat()))
                assert c.response().status == 200
            finally:
                c.close()
            assert tg.alive()


def served_after(tg, ctx, n, what):
    """n HTTPS requests on new connections (both shards) and one in the
    clear all succeed: the listener survived `what`."""
    assert tg.alive(), what
    for i in range(n):
        try:
            r = https_call(tg.port, ctx, MESSAGES if i % 2 else CHAT,
                           messages() if i % 2 else chat())
        except (OSError, EOFError) as e:
            raise AssertionError("after %s: HTTPS request %d of %d failed: %r" %
                                 (what, i + 1, n, e))
        assert r.status == 200, (what, i, r)
    if tg.plain:
        assert call(tg.plain, CHAT, chat()).status == 200, what


def test_tls_garbage_closes(env):
    """Bytes that are no TLS handshake: closed, nothing in the clear back."""
    slack = 10 if slow_build(env) else 5
    with Certs() as certs, Mock(env) as m:
        crt, key = certs.self_signed("ec", "ec")
        with start(env, m.port, [(crt, key)]) as tg:
            ctx = client_ctx(crt)
            rnd = random.Random(11)
            junk = [
                ("4 KiB random", bytes(rnd.getrandbits(8) for _ in range(4096))),
                ("plain http GET", request("GET", "/v1/models", None)),
                ("plain http POST", request("POST", CHAT, chat())),
                ("bad handshake body", b"\x16\x03\x03\x01\x00" + os.urandom(256)),
                ("huge record length", b"\x16\x03\x03\xff\xff" + os.urandom(1000)),
                ("application data first", b"\x17\x03\x03\x00\x20" + os.urandom(32)),
                ("alert first", b"\x15\x03\x03\x00\x02\x02\x28"),
                ("sslv2 hello", bytes([0x80, 0x2e, 0x01, 0x00, 0x02, 0x00, 0x15, 0x00, 0x00,
                                       0x00, 0x10]) + os.urandom(37)),
            ]
            for name, data in junk:
                for _ in range(3):
                    s = socket.create_connection((LOOPBACK, tg.port), timeout=slack)
                    try:
                        try:
                            s.sendall(data)
                        except (BrokenPipeError, ConnectionResetError):
                            pass
                        got, closed = read_until_closed(s, slack)
                    finally:
                        s.close()
                    assert closed, (name, got[:100])
                    # Nothing in the clear comes back, at most an alert.
                    assert b"HTTP/" not in got, (name, got[:200])
                    assert got == b"" or fatal_alert(got) is not None, (name, got[:50])
                served_after(tg, ctx, 4, name)


def test_tls_junk_after_client_hello(env):
    """A valid ClientHello followed at once by more bytes (junk, or a second
    ClientHello): they arrive while the server's first flight is being sent.
    The connection must fail alone; the listener must go on serving."""
    slack = 10 if slow_build(env) else 5
    with Certs() as certs, Mock(env) as m:
        crt, key = certs.self_signed("ec", "ec")
        with start(env, m.port, [(crt, key)]) as tg:
            ctx = client_ctx(crt)
            for name, extra in (("junk", lambda: os.urandom(4096)),
                                ("second hello", client_hello)):
                for i in range(3):
                    s = socket.create_connection((LOOPBACK, tg.port), timeout=slack)
                    try:
                        try:
                            s.sendall(client_hello() + extra())
                        except (BrokenPipeError, ConnectionResetError):
                            pass
                        got, closed = read_until_closed(s, slack)
                    finally:
                        s.close()
                    assert closed, (name, i, len(got))
                    # What comes back is TLS records (the server's flight,
                    # then perhaps an alert), never plaintext.
                    assert got == b"" or got[0] in (0x15, 0x16), (name, i, got[:20])
                served_after(tg, ctx, 6, "a ClientHello + %s" % name)


def test_tls_client_rejects_certificate(env):
    """An agent that does not trust the certificate (wrong CA, wrong name)
    aborts the handshake with an alert: only its connection ends."""
    with Certs() as certs, Mock(env) as m:
        crt, key = certs.self_signed("ec", "ec")
        other, _ = certs.self_signed("other", "ec")
        with start(env, m.port, [(crt, key)]) as tg:
            ctx = client_ctx(crt)
            served_after(tg, ctx, 2, "nothing")
            for i in range(8):
                wrong_ca, host = (client_ctx(other), "localhost") if i % 2 else \
                    (ctx, "example.com")
                try:
                    TLSConn(tg.port, wrong_ca, hostname=host).close()
                    raise AssertionError("verified with %s" % ("the wrong CA" if i % 2 else host))
                except ssl.SSLCertVerificationError:
                    pass
                except (OSError, EOFError) as e:
                    raise AssertionError("handshake %d broke off before the certificate "
                                         "(%r): an earlier rejection broke the listener" % (i, e))
            rc, out = s_client(tg.port, "-CAfile", other, "-verify_return_error")
            assert rc != 0 and "certificate verify failed" in out, out
            assert negotiated_cipher(out) == "(NONE)", out
            served_after(tg, ctx, 10, "clients rejecting the certificate")


def test_tls_abrupt_clients(env):
    """Clients that vanish at every stage: after the handshake, in the
    middle of it, with a request in flight."""
    with Certs() as certs, Mock(env) as m:
        crt, key = certs.self_signed("ec", "ec")
        with start(env, m.port, [(crt, key)]) as tg:
            ctx = client_ctx(crt)
            # 200 that finish the handshake and go away without a request:
            # with an RST, a FIN, or a close_notify.
            batch = []
            for i in range(200):
                batch.append(TLSConn(tg.port, ctx))
                if len(batch) == 50:
                    for j, b in enumerate(batch):
                        if j % 3 == 0:
                            rst_close(b.tls)
                        elif j % 3 == 1:
                            b.close()
                        else:
                            try:
                                b.tls.unwrap().close()
                            except (OSError, ValueError):
                                b.close()
                    batch = []
            served_after(tg, ctx, 6, "200 handshakes without a request")
            # 50 that leave mid-handshake (right after the ClientHello).
            for i in range(50):
                s = socket.create_connection((LOOPBACK, tg.port), timeout=5)
                s.sendall(client_hello())
                if i % 2:
                    rst_close(s)
                else:
                    s.close()
            served_after(tg, ctx, 6, "50 clients leaving mid-handshake")
            # 20 that leave with a request in flight, streams included.
            for i in range(20):
                c = TLSConn(tg.port, ctx)
                c.send(request("POST", CHAT, chat(stream=bool(i % 2)),
                               {"x-mock-tokens": "200", "x-mock-token-delay-us": "2000"}))
                if i % 4 == 1:
                    c.head()
                if i % 2:
                    rst_close(c.tls)
                else:
                    c.close()
            served_after(tg, ctx, 10, "20 clients leaving with a request in flight")


def test_tls_reload_swaps_certificate(env):
    wait = 10 if slow_build(env) else 5
    with Certs() as certs, Mock(env) as m:
        a_crt, a_key = certs.self_signed("a", "ec", cn="cert-a")
        b_crt, b_key = certs.self_signed("b", "ec", cn="cert-b")
        fp_a, fp_b = fingerprint(certs.der(a_crt)), fingerprint(certs.der(b_crt))
        assert fp_a != fp_b
        live_crt, live_key = certs.path("live.crt"), certs.path("live.key")
        replace_file(live_crt, read(a_crt))
        replace_file(live_key, read(a_key))
        ctx = client_ctx(certs.bundle("ab.pem", a_crt, b_crt))

        def new_fp():
            c = TLSConn(tg.port, ctx)
            try:
                c.send(request("GET", "/v1/models", None, close=True))
                assert c.response().status == 200
                return c.peer_fp()
            finally:
                c.close()

        with start(env, m.port, [(live_crt, live_key)], relative=False) as tg:
            for _ in range(6):
                assert new_fp() == fp_a
            old = TLSConn(tg.port, ctx, timeout=20)
            old.send(request("POST", CHAT, chat()))
            assert old.response().status == 200
            assert old.peer_fp() == fp_a
            # A stream in flight across the reload (40 x 50 ms).
            stream = TLSConn(tg.port, ctx, timeout=20)
            stream.send(request("POST", CHAT, chat(stream=True),
                                {"x-mock-tokens": "40", "x-mock-token-delay-us": "50000"}))
            assert stream.head()[0] == 200
            chunks = [stream.chunk()]

            replace_file(live_crt, read(b_crt))
            replace_file(live_key, read(b_key))
            tg.signal(signal.SIGHUP)
            wait_until(lambda: new_fp() == fp_b, wait, step=0.1, what="the new certificate")
            # Every shard has it.
            for _ in range(10):
                assert new_fp() == fp_b
            # The connections of before go on, on the old session.
            old.send(request("POST", MESSAGES, messages()))
            r = old.response()
            assert r.status == 200, r
            assert old.peer_fp() == fp_a
            while True:
                ch = stream.chunk()
                if not ch:
                    break
                chunks.append(ch)
            events = sse_events(b"".join(chunks))
            assert events[-1][1] == "[DONE]" and len(events) >= 40, len(events)
            stream.send(request("POST", CHAT, chat(), close=True))
            assert stream.response().status == 200
            stream.close()

            # A broken certificate file: the reload is refused (logged), the
            # listener keeps serving B.
            replace_file(live_crt, b"-----BEGIN CERTIFICATE-----\nnot base64 at all\n"
                                   b"-----END CERTIFICATE-----\n")
            log_len = len(tg.log())
            tg.signal(signal.SIGHUP)
            wait_until(lambda: "listen.tls" in tg.log()[log_len:], wait,
                       what="the refused reload in the log")
            time.sleep(0.2)
            assert tg.alive()
            for _ in range(6):
                assert new_fp() == fp_b
            # A key that does not match the certificate: refused the same way.
            replace_file(live_crt, read(a_crt))     # live.key is still B's
            log_len = len(tg.log())
            tg.signal(signal.SIGHUP)
            wait_until(lambda: "listen.tls" in tg.log()[log_len:], wait,
                       what="the refused reload (key mismatch) in the log")
            time.sleep(0.2)
            for _ in range(6):
                assert new_fp() == fp_b
            # And back to A.
            replace_file(live_key, read(a_key))
            tg.signal(signal.SIGHUP)
            wait_until(lambda: new_fp() == fp_a, wait, step=0.1, what="certificate A again")
            for _ in range(6):
                assert new_fp() == fp_a
            old.send(request("POST", CHAT, chat(), close=True))
            assert old.response().status == 200
            old.close()


def test_tls_config_errors(env):
    binary = os.path.join(build_dir(env), "tollgate")
    with Certs() as certs:
        ec_crt, ec_key = certs.self_signed("ec", "ec")
        other_crt, other_key = certs.self_signed("other", "ec")
        rsa1024_crt, rsa1024_key = certs.self_signed("rsa1024", "rsa", 1024)
        rsa_crt, rsa_key = certs.self_signed("rsa", "rsa", 2048)
        garbage = certs.path("garbage.pem")
        with open(garbage, "wb") as f:
            f.write(b"-----BEGIN CERTIFICATE-----\nMIIBnotreallyacert==\n"
                    b"-----END CERTIFICATE-----\n")
        text_file = certs.path("text.pem")
        with open(text_file, "wb") as f:
            f.write(b"this is not PEM at all\n")
        empty = certs.path("empty.pem")
        open(empty, "wb").close()

        def config_text(tls):
            """The YAML, with `tls` on the first listener; (text, its line)."""
            cfg = make_config(free_port(), 9, extra_listen=[free_port()])
            if tls is not None:
                cfg["listen"][0]["tls"] = {k: os.path.basename(v) for k, v in tls.items()}
            path = write_config(cfg, certs.path("tollgate.yaml"))
            lines = read(path).decode().splitlines()
            at = [i + 1 for i, line in enumerate(lines) if line.strip() == "tls:"]
            return path, at

        def run(args, timeout=30):
            p = subprocess.Popen([binary, *args], stdin=subprocess.DEVNULL,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd="/")
            try:
                out, err = p.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                out, err = p.communicate()
                raise AssertionError("tollgate %s still running after %ds: %s" %
                                     (args, timeout, err.decode(errors="replace")[-2000:]))
            err = (out + err).decode("utf-8", "replace")
            for mark in SANITIZER_MARKS:
                assert mark not in err, err
            return p.returncode, err

        # The good ones pass the check (paths relative to the config's dir,
        # tollgate run from /).
        for pair in ((ec_crt, ec_key), (rsa_crt, rsa_key)):
            path, at = config_text({"cert": pair[0], "key": pair[1]})
            rc, out = run(["-t", "-c", path])
            assert rc == 0, (pair, out)
        cases = [
            ("missing cert", {"cert": certs.path("nope.crt"), "key": ec_key}, "nope.crt"),
            ("missing key", {"cert": ec_crt, "key": certs.path("nope.key")}, "nope.key"),
            ("key of another cert", {"cert": ec_crt, "key": other_key}, "match"),
            ("RSA 1024", {"cert": rsa1024_crt, "key": rsa1024_key}, "2048"),
            ("RSA cert, EC key", {"cert": rsa_crt, "key": ec_key}, "match"),
            ("garbage cert PEM", {"cert": garbage, "key": ec_key}, "parse"),
            ("text as cert", {"cert": text_file, "key": ec_key}, None),
            ("text as key", {"cert": ec_crt, "key": text_file}, "parse"),
            ("cert as key", {"cert": ec_crt, "key": ec_crt}, "parse"),
            ("empty cert", {"cert": empty, "key": ec_key}, None),
            ("no key", {"cert": ec_crt}, "key"),
        ]
        for name, tls, word in cases:
            path, at = config_text(tls)
            assert len(at) == 1, at
            for mode in ("run", "check"):
                # A config error exits 1 whether running or checking (main.c:
                # "1 usage or config error, 2 runtime failure"), like any
                # other bad config; nothing is started.
                args = ["-c", path, "--workers", "1"] if mode == "run" else ["-t", "-c", path]
                rc, out = run(args)
                assert rc == 1, (name, mode, rc, out)
                msgs = re.findall(r"^%s:(\d+): (.*)$" % re.escape(path), out, re.M)
                assert msgs, (name, mode, out)
                # One message, on the line of the listener's tls: key.
                assert [int(n) for n, _ in msgs] == at, (name, mode, at, out)
                if name.startswith("missing"):
                    # Read errors name the file (full path) but not listen.tls.
                    assert "cannot open %s" % certs.path(word) in out, (name, mode, out)
                elif name == "empty cert":
                    assert "%s: empty" % empty in out, (name, mode, out)
                else:
                    assert any(msg.startswith("listen.tls") for _, msg in msgs), \
                        (name, mode, out)
                if word:
                    assert word in out, (name, mode, word, out)
        # The tls block must be a mapping with known keys.
        for name, tls in (("unknown key", {"cert": ec_crt, "key": ec_key, "pin": "x"}),):
            path, at = config_text(tls)
            rc, out = run(["-c", path, "--workers", "1"])
            assert rc == 1 and "pin" in out and "listen.tls" in out, (name, rc, out)


def test_tls_agent_leaves_mid_stream(env):
    """An HTTPS agent that closes mid-stream sends close_notify before its
    FIN: tollgate must see it go at once, and close the provider's stream,
    not relay (and pay for) the rest of it."""
    with Certs() as certs, Mock(env) as m:
        crt, key = certs.self_signed("ec", "ec")
        with start(env, m.port, [(crt, key)]) as tg:
            ctx = client_ctx(crt)
            for how in ("close_notify", "fin"):
                before = m.stats()["closed_by_peer"]
                c = TLSConn(tg.port, ctx)
                c.send(request("POST", CHAT, chat(stream=True),
                               {"x-mock-tokens": "400", "x-mock-token-delay-us": "25000"}))
                got = b""
                while got.count(b"data:") < 3:
                    got += c.tls.recv(4096)
                t0 = time.monotonic()
                if how == "close_notify":
                    c.tls.settimeout(0.5)
                    try:
                        c.tls.unwrap()      # sends close_notify
                    except (OSError, ssl.SSLError):
                        pass
                c.tls.close()
                # the provider's connection is closed well before the 10 s
                # the rest of the stream would take
                deadline = 3.0
                while m.stats()["closed_by_peer"] == before:
                    assert time.monotonic() - t0 < deadline, (how, "upstream still open")
                    time.sleep(0.05)
            served_after(tg, ctx, 3, "after agents left")
