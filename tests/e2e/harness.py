"""Shared helpers for the end-to-end tests: processes, configs, raw HTTP/1.1.

Everything here uses the standard library only and talks to 127.0.0.1 only.

Processes. Mock(env) starts build/mockllm on a kernel-chosen port;
Tollgate(env, mock=..., **overrides) writes a temporary config (make_config)
pointing its providers at that mock, picks a free port, starts build/tollgate
and waits until it accepts. Both are context managers and are also recorded
in a per-test registry: run.py calls reap() after every test, which stops
whatever is still running and reports a process that exited non-zero or
printed a sanitizer report. stderr goes to a temporary file, never to a pipe
that could fill up, so the logs can be read at any time (Proc.log()).

HTTP. request() builds the exact bytes of a request; Conn is one client
connection with a read buffer, so keep-alive, pipelining, chunk boundaries,
resets and closes are all visible to the test.
"""

import json
import math
import os
import re
import select
import signal
import socket
import subprocess
import tempfile
import time

LOOPBACK = "127.0.0.1"
SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer",
                   "runtime error:", "WARNING: ThreadSanitizer")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Skip(Exception):
    """Raised by a test that cannot run here; run.py counts it as skipped."""


def build_dir(env):
    return env.get("build", "build")


def slow_build(env):
    """True for sanitizer builds: timing assertions get more slack there."""
    return "asan" in os.path.basename(os.path.normpath(build_dir(env)))


def free_port():
    """A loopback port the kernel just handed out (closed again at once)."""
    s = socket.socket()
    s.bind((LOOPBACK, 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_until(pred, timeout, step=0.02, what="condition"):
    """Polls pred() until it returns a truthy value; returns it, or raises."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise AssertionError("timed out after %.1fs waiting for %s" % (timeout, what))
        time.sleep(step)


# ---------------------------------------------------------------- processes

_live = []          # processes started by the current test, still running
_started = []       # all processes started by the current test


class Proc:
    """A child process whose stderr goes to a temp file."""

    def __init__(self, name, argv, env_vars=None):
        self.name = name
        self.argv = argv
        self.logf = tempfile.NamedTemporaryFile(prefix="e2e-%s-" % name, suffix=".log",
                                                delete=False)
        environ = dict(os.environ)
        environ.setdefault("ASAN_OPTIONS", "detect_leaks=1")
        environ.update(env_vars or {})
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=self.logf,
                                     env=environ)
        self.stopped = False
        self.expect_rc = 0
        self.final_tail = None
        _live.append(self)
        _started.append(self)

    @property
    def pid(self):
        return self.proc.pid

    def log(self):
        with open(self.logf.name, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def log_tail(self, n=15):
        if self.final_tail is not None:
            return self.final_tail
        return "\n".join(self.log().splitlines()[-n:])

    def alive(self):
        return self.proc.poll() is None

    def signal(self, sig):
        if self.alive():
            self.proc.send_signal(sig)

    def wait(self, timeout):
        """The exit code, or None if still running after `timeout`."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def problems(self):
        """What is wrong with how the process ended (after stop())."""
        out = []
        rc = self.proc.returncode
        if rc != self.expect_rc:
            out.append("%s exited %s (expected %s)" % (self.name, rc, self.expect_rc))
        text = self.log()
        for mark in SANITIZER_MARKS:
            if mark in text:
                i = text.index(mark)
                out.append("%s printed a sanitizer report:\n%s" %
                           (self.name, text[max(0, i - 200):i + 1500]))
                break
        return out

    def stop(self, timeout=10.0):
        """SIGTERM, then SIGKILL after `timeout`; returns problems (a list)."""
        if self.stopped:
            return []
        self.stopped = True
        killed = False
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            if self.wait(timeout) is None:
                self.proc.kill()
                self.proc.wait()
                killed = True
        self.logf.close()
        self.final_tail = self.log_tail()
        if self in _live:
            _live.remove(self)
        probs = self.problems()
        if killed:
            probs.insert(0, "%s did not exit within %.0fs of SIGTERM" % (self.name, timeout))
        if not probs:
            os.unlink(self.logf.name)
        else:
            probs.append("(log kept: %s)" % self.logf.name)
        return probs

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        probs = self.stop()
        if probs and exc_type is None:
            raise AssertionError("\n".join(probs))
        _unreported.extend(probs)       # the test failed anyway: reap() tells
        return False


_unreported = []    # problems found while a test was already failing


def reap():
    """Stops every process the current test left running; returns problems
    (these, and those found while the test was already failing)."""
    probs = list(_unreported)
    del _unreported[:]
    for p in list(_live):
        probs += p.stop()
    return probs


def take_logs():
    """name[pid]: stderr tail of every process the current test started (for
    failure reports); forgets them."""
    logs = {"%s[%d]" % (p.name, p.pid): p.log_tail() for p in _started}
    del _started[:]
    return logs


class Mock(Proc):
    """build/mockllm on a kernel-chosen (or the given) loopback port."""

    def __init__(self, env, *args, port=0):
        binary = os.path.join(build_dir(env), "mockllm")
        super().__init__("mockllm", [binary, "--listen", "%s:%d" % (LOOPBACK, port),
                                     "--quiet", *args])
        line = wait_until(self._ready_line, 10 if slow_build(env) else 5,
                          what="mockllm's ready line")
        self.port = int(line.rsplit(":", 1)[1])

    def _ready_line(self):
        for line in self.log().splitlines():
            if line.startswith("mockllm listening on %s:" % LOOPBACK):
                return line
        if not self.alive():
            raise AssertionError("mockllm exited %s: %s" % (self.proc.returncode,
                                                            self.log_tail()))
        return None

    def conn(self, timeout=5.0):
        return Conn(self.port, timeout)

    def stats(self):
        c = self.conn()
        c.send(request("GET", "/mock/stats", close=True))
        r = c.response()
        c.close()
        assert r.status == 200, r.status
        return json.loads(r.body)

    def call(self, path, body, headers=None, method="POST"):
        return call(self.port, path, body, headers, method)


class FakeProvider:
    """A scripted provider on a loopback port, for what mockllm cannot do.

    Records every request's raw bytes (head and Content-Length body) in
    `requests` as (connection number, raw). `respond(conn_no, req_no, raw)`
    (req_no counts requests on that connection from 0) returns the bytes to
    answer with, or (bytes, close) to close after them, or None to close at
    once without answering.
    """

    def __init__(self, respond):
        import threading
        self.respond = respond
        self.requests = []
        self.accepted = 0
        self.lock = threading.Lock()
        self.lsock = socket.socket()
        self.lsock.bind((LOOPBACK, 0))
        self.lsock.listen(128)
        self.port = self.lsock.getsockname()[1]
        self.closing = False
        self.conns = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        import threading
        while not self.closing:
            try:
                s, _ = self.lsock.accept()
            except OSError:
                return
            with self.lock:
                n = self.accepted
                self.accepted += 1
                self.conns.append(s)
            threading.Thread(target=self._serve, args=(s, n), daemon=True).start()

    def requests_on(self, s, conn_no):
        """Yields (req_no, raw request) for each request read from socket s
        (Content-Length bodies), recording it in self.requests; stops at EOF."""
        buf, req_no = b"", 0
        while True:
            while b"\r\n\r\n" not in buf:
                data = s.recv(65536)
                if not data:
                    return
                buf += data
            head, _, rest = buf.partition(b"\r\n\r\n")
            m = re.search(rb"\r\ncontent-length: *(\d+)", head, re.I)
            length = int(m.group(1)) if m else 0
            while len(rest) < length:
                data = s.recv(65536)
                if not data:
                    return
                rest += data
            raw, buf = head + b"\r\n\r\n" + rest[:length], rest[length:]
            with self.lock:
                self.requests.append((conn_no, raw))
            yield req_no, raw
            req_no += 1

    def _serve(self, s, conn_no):
        try:
            for req_no, raw in self.requests_on(s, conn_no):
                out = self.respond(conn_no, req_no, raw)
                if out is None:
                    return
                close = False
                if isinstance(out, tuple):
                    out, close = out
                s.sendall(out)
                if close:
                    return
        except OSError:
            return
        finally:
            s.close()

    def close(self):
        self.closing = True
        self.lsock.close()
        with self.lock:
            for s in self.conns:
                try:
                    s.close()
                except OSError:
                    pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def parse_request(raw):
    """(request line, [(name, value)], body) of a raw request."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    fields = [tuple(x.strip() for x in line.split(":", 1)) for line in lines[1:]]
    return lines[0], fields, body


# ---------------------------------------------------------------- config

# The models of conf/tollgate.yaml (providers are filled in per test).
DEFAULT_MODELS = {
    "gpt-4o": {"provider": "mock-openai", "input_usd_per_mtok": "2.50",
               "output_usd_per_mtok": "10.00", "cached_input_usd_per_mtok": "1.25",
               "max_output_tokens": 16384, "context_tokens": 128000,
               "supports": ["tools", "json_schema", "vision"], "tier": "premium",
               "alternatives": ["gpt-4o-mini"]},
    "gpt-4o-mini": {"provider": "mock-openai", "input_usd_per_mtok": "0.15",
                    "output_usd_per_mtok": "0.60", "max_output_tokens": 16384,
                    "context_tokens": 128000, "supports": ["tools", "json_schema", "vision"],
                    "tier": "economy"},
    "text-embedding-3-small": {"provider": "mock-openai", "input_usd_per_mtok": "0.02",
                               "output_usd_per_mtok": "0", "max_output_tokens": 1,
                               "context_tokens": 8191, "tier": "economy"},
    "claude-sonnet-4": {"provider": "mock-anthropic", "input_usd_per_mtok": "3.00",
                        "output_usd_per_mtok": "15.00", "max_output_tokens": 64000,
                        "context_tokens": 200000, "supports": ["tools", "vision"],
                        "tier": "premium", "alternatives": ["claude-haiku-3-5"]},
    "claude-haiku-3-5": {"provider": "mock-anthropic", "input_usd_per_mtok": "0.80",
                         "output_usd_per_mtok": "4.00", "max_output_tokens": 8192,
                         "context_tokens": 200000, "supports": ["tools"], "tier": "economy"},
}


def _yaml_scalar(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    return json.dumps(str(v))       # a JSON string is a YAML double-quoted scalar


def to_yaml(obj, indent=0):
    """A small YAML emitter for dicts, lists and scalars (enough for configs)."""
    pad = " " * indent
    lines = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(v, dict):
                lines.append("%s%s:" % (pad, k))
                lines.append(to_yaml(v, indent + 2))
            elif isinstance(v, list) and any(isinstance(x, dict) for x in v):
                lines.append("%s%s:" % (pad, k))
                for item in v:
                    sub = to_yaml(item, indent + 4).splitlines()
                    lines.append("%s  - %s" % (pad, sub[0].lstrip()))
                    lines.extend(sub[1:])
            elif isinstance(v, list):
                lines.append("%s%s: [%s]" % (pad, k, ", ".join(_yaml_scalar(x) for x in v)))
            else:
                lines.append("%s%s: %s" % (pad, k, _yaml_scalar(v)))
    else:
        lines.append(pad + _yaml_scalar(obj))
    return "\n".join(lines)


def principals(keys, teams, orgs=None, users=None):
    """The config sections of a budget setup: orgs and users only if given."""
    extra = {}
    if orgs:
        extra["orgs"] = orgs
    extra["teams"] = teams
    if users:
        extra["users"] = users
    extra["keys"] = keys
    return extra


def make_config(port, mock_port, limits=None, providers=None, models=None,
                drain_timeout_ms=3000, extra=None, extra_listen=()):
    """A config dict: conf/tollgate.yaml's models on mock_port, listening on port.

    `limits` and `providers` entries are merged over the defaults (a provider
    given as {name: {...}} updates that provider, or adds it); `models`
    replaces the model table when given; `extra` adds top-level keys;
    `extra_listen` adds loopback listeners on these ports.
    """
    base = "http://%s:%d/v1" % (LOOPBACK, mock_port)
    provs = {
        "mock-openai": {"base_url": base, "format": "openai",
                        "api_key_env": "OPENAI_API_KEY", "connect_timeout_ms": 2000,
                        "timeout_ms": 30000, "idle_timeout_ms": 30000},
        "mock-anthropic": {"base_url": base, "format": "anthropic",
                           "api_key_env": "ANTHROPIC_API_KEY", "timeout_ms": 30000},
    }
    for name, over in (providers or {}).items():
        provs.setdefault(name, {}).update(over)
    lim = {"max_header_bytes": 16384, "max_body_bytes": 33554432,
           "header_timeout_ms": 10000, "body_timeout_ms": 60000,
           "idle_timeout_ms": 60000, "send_timeout_ms": 60000,
           "max_connections": 20000, "max_requests": 4096}
    lim.update(limits or {})
    cfg = {
        "listen": [{"addr": "%s:%d" % (LOOPBACK, p)} for p in (port, *extra_listen)],
        "workers": 2,
        "pin": False,
        "drain_timeout_ms": drain_timeout_ms,
        "limits": lim,
        "providers": provs,
        "prices_version": "e2e-test",
        "models": models if models is not None else DEFAULT_MODELS,
    }
    cfg.update(extra or {})
    return cfg


def write_config(cfg, path=None):
    """Writes a config dict (or YAML text) to `path` or a new temp file."""
    text = cfg if isinstance(cfg, str) else to_yaml(cfg) + "\n"
    if path is None:
        fd, path = tempfile.mkstemp(prefix="e2e-tollgate-", suffix=".yaml")
        os.close(fd)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)       # atomic: a reload never reads half a file
    return path


class Tollgate(Proc):
    """build/tollgate on a fresh loopback port with a temp config.

    Keyword arguments go to make_config(); `config` (a dict) replaces it
    altogether (its listen address is then the caller's business, give
    `port` too). Waits until the port accepts.
    """

    def __init__(self, env, mock=None, mock_port=None, workers=2, config=None,
                 port=None, env_vars=None, **overrides):
        self.port = port or free_port()
        if config is None:
            mp = mock_port if mock_port is not None else mock.port
            config = make_config(self.port, mp, **overrides)
        self.config = config
        self.config_path = write_config(config)
        binary = os.path.join(build_dir(env), "tollgate")
        super().__init__("tollgate", [binary, "-c", self.config_path,
                                      "--workers", str(workers)], env_vars)
        self.wait_ready(15 if slow_build(env) else 5)

    def wait_ready(self, timeout):
        def accepts():
            if not self.alive():
                raise AssertionError("tollgate exited %s at start: %s" %
                                     (self.proc.returncode, self.log_tail()))
            try:
                socket.create_connection((LOOPBACK, self.port), timeout=0.5).close()
                return True
            except OSError:
                return False
        wait_until(accepts, timeout, what="tollgate to accept on port %d" % self.port)

    def reload(self, cfg):
        """Rewrites the config file and sends SIGHUP."""
        self.config = cfg
        write_config(cfg, self.config_path)
        self.signal(signal.SIGHUP)

    def stop(self, timeout=10.0):
        probs = super().stop(timeout)
        if os.path.exists(self.config_path):
            os.unlink(self.config_path)
        return probs

    def conn(self, timeout=5.0):
        return Conn(self.port, timeout)

    def call(self, path, body, headers=None, method="POST"):
        return call(self.port, path, body, headers, method)


def run_tollgate_check(env, path):
    """`tollgate -t -c path`: (exit code, stdout + stderr)."""
    binary = os.path.join(build_dir(env), "tollgate")
    r = subprocess.run([binary, "-t", "-c", path], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=30)
    out = (r.stdout + r.stderr).decode("utf-8", "replace")
    for mark in SANITIZER_MARKS:
        assert mark not in out, "tollgate -t printed a sanitizer report:\n" + out
    return r.returncode, out


# ---------------------------------------------------------------- HTTP client

def request(method, path, body=None, headers=None, close=False, chunked_body=False,
            chunk_size=7, host="e2e"):
    """The bytes of one HTTP/1.1 request (JSON body for dict/list bodies)."""
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
    elif isinstance(body, str):
        body = body.encode()
    lines = ["%s %s HTTP/1.1" % (method, path), "Host: %s" % host]
    for k, v in (headers or {}).items():
        lines.append("%s: %s" % (k, v))
    if close:
        lines.append("Connection: close")
    payload = b""
    if body is not None and chunked_body:
        lines.append("Content-Type: application/json")
        lines.append("Transfer-Encoding: chunked")
        parts = []
        for i in range(0, len(body), chunk_size):
            part = body[i:i + chunk_size]
            parts.append(b"%x\r\n%s\r\n" % (len(part), part))
        payload = b"".join(parts) + b"0\r\n\r\n"
    elif body is not None:
        lines.append("Content-Type: application/json")
        lines.append("Content-Length: %d" % len(body))
        payload = body
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


class Response:
    def __init__(self, status, headers, body, chunks, raw_head=b""):
        self.status = status
        self.headers = headers      # lower-case names -> value (last one wins)
        self.body = body            # de-chunked
        self.chunks = chunks        # list of chunk payloads, or None
        self.raw_head = raw_head

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return "<Response %d %r %r>" % (self.status, self.headers, self.body[:300])


class Conn:
    """One client connection with a read buffer (keep-alive, pipelining)."""

    def __init__(self, port, timeout=5.0):
        self.timeout = timeout
        self.sock = socket.create_connection((LOOPBACK, port), timeout=timeout)
        self.buf = b""
        self.raw_head = b""

    def send(self, data):
        self.sock.sendall(data)

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def fill(self):
        data = self.sock.recv(1 << 20)
        if not data:
            raise EOFError("peer closed")
        self.buf += data

    def until(self, sep):
        start = 0
        while sep not in self.buf[start:]:
            start = max(0, len(self.buf) - len(sep) + 1)
            self.fill()
        i = self.buf.index(sep) + len(sep)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def exact(self, n):
        parts, have = [self.buf], len(self.buf)
        while have < n:
            data = self.sock.recv(1 << 20)
            if not data:
                self.buf = b"".join(parts)
                raise EOFError("peer closed after %d of %d bytes" % (have, n))
            parts.append(data)
            have += len(data)
        buf = b"".join(parts)
        out, self.buf = buf[:n], buf[n:]
        return out

    def head(self):
        """(status, headers) of the next response; the raw bytes of the head
        are kept in self.raw_head."""
        raw = self.raw_head = self.until(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            if line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        return status, headers

    def chunk(self):
        """The next chunk's payload; b"" for the terminator, whose empty
        trailer section is consumed with it (no trailers expected)."""
        size = int(self.until(b"\r\n").split(b";")[0], 16)
        data = self.exact(size + 2)
        assert data.endswith(b"\r\n"), data[-8:]
        return data[:-2]

    def response(self, head_only=False):
        status, headers = self.head()
        while 100 <= status < 200:          # interim responses
            status, headers = self.head()
        chunks = None
        if head_only:
            body = b""
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while True:
                c = self.chunk()
                if not c:
                    break
                chunks.append(c)
            body = b"".join(chunks)
        elif "content-length" in headers:
            body = self.exact(int(headers["content-length"]))
        else:
            body = self.rest()
        return Response(status, headers, body, chunks, self.raw_head)

    def rest(self):
        """Everything until EOF (a reset counts as EOF)."""
        try:
            while True:
                self.fill()
        except (EOFError, ConnectionResetError):
            pass
        out, self.buf = self.buf, b""
        return out

    def closed_within(self, seconds):
        """True if the peer closes (EOF or reset) within `seconds`, with no
        more data than what is already buffered being expected."""
        deadline = time.monotonic() + seconds
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.sock.settimeout(left)
                data = self.sock.recv(65536)
                if not data:
                    return True
                self.buf += data
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False
        finally:
            self.sock.settimeout(self.timeout)

    def silent_for(self, seconds):
        """True if nothing arrives and the socket stays open for `seconds`."""
        ready, _, _ = select.select([self.sock], [], [], seconds)
        return not ready and not self.buf


def call(server, path, body, headers=None, method="POST", timeout=10.0):
    """One request on a fresh connection (Connection: close); `server` is a
    port or anything with a .port (Mock, Tollgate)."""
    c = Conn(getattr(server, "port", server), timeout)
    try:
        c.send(request(method, path, body, headers, close=True))
        return c.response()
    finally:
        c.close()


# ---------------------------------------------------------------- payloads

def sse_events(body):
    """Splits an SSE body into [(event name or None, data string)]."""
    events = []
    for block in body.decode().split("\n\n"):
        if not block:
            continue
        name, data = None, None
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data = line[6:]
        events.append((name, data))
    return events


def prompt_tokens(body):
    """mockllm's prompt_tokens: ceil(request body bytes / 4)."""
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
    return math.ceil(len(body) / 4)


_MOCK_IDS = re.compile(rb"(chatcmpl-mock-|cmpl-mock-|msg_mock_)\d+")


def normalise_ids(data):
    """Replaces mockllm's per-process reply counters, its only nondeterminism."""
    return _MOCK_IDS.sub(rb"\1N", data)


def problem(r, status, code=None):
    """Asserts `r` is an RFC 9457 problem with this status (and code)."""
    assert r.status == status, (status, r)
    assert r.headers.get("content-type") == "application/problem+json", r.headers
    j = r.json()
    assert j["status"] == status and j["type"] and j["title"] and "detail" in j, j
    if code is not None:
        assert j["code"] == code, j
    return j


CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
EMBEDDINGS = "/v1/embeddings"
MESSAGES = "/v1/messages"
