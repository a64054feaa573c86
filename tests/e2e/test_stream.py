"""End-to-end: metered streams (SPEC §3-§5; net/sse.c, net/meter.c,
net/stream.c, net/settle.c).

A budgeted call's 2xx text/event-stream reply is parsed event by event,
metered and re-framed: the agent gets Transfer-Encoding: chunked whatever
the provider's framing, and exactly the provider's event bytes up to the
end or the cut. A cut (loop, token cap, garbage, provider reset or stall,
reservation TTL) ends with one final event in the provider's format and
the chunk terminator, and the agent's connection lives on. Without keys
(relay-only) streams pass byte for byte.

Money: models "o" (OpenAI) and "a" (Anthropic) cost 1 micro-USD per input
token and 3 per output token (1.00 / 3.00 USD per Mtok), so a charge is
exactly `input + 3 * output` micro-USD, no rounding. Expected charges:

    provider usage (OpenAI usage chunk; Anthropic message_start input +
    message_delta output)                   input + 3 * output, as reported
    no usage                                 (body bytes + 64) + 3 * min(B, cap)

where B is the bytes of generated text as the JSON carries it (string
values of content, text, arguments, partial_json, thinking, refusal, name;
escapes as written) counted up to the end or the cut, and cap is the
call's effective max output. An Anthropic stream's input is the one its
message_start reported (settle.c: "the provider's usage if it came").

Scopes: key k (user u, team t, org o, all budgeted) and a named run;
after every kind of end, every scope must have nothing reserved and
committed == the sum of the charges of the calls made.

The providers are mockllm (x-mock-* knobs) or `Script`, a FakeProvider
whose handler writes the reply itself on the socket: in pieces, slowly,
for ever, with a reset, and which sees when tollgate closes on it.
"""

import json
import os
import random
import re
import select
import socket
import struct
import threading
import time
import traceback

from harness import (CHAT, COMPLETIONS, MESSAGES, REPO, FakeProvider, Mock, Tollgate, call,
                     principals, request, slow_build, wait_until)
from test_budget import budget, key, micros, model

IN_PRICE, OUT_PRICE = 1, 3          # micro-USD per token
CAP = 1000000                       # the models' max_output_tokens
RUN = "stream-run"
SECRET = "sk-stream"
H = {"Authorization": "Bearer " + SECRET, "X-Run-Id": RUN}
SLACK = 64
MAX_EVENT = 16384                   # SSE_MAX_EVENT
TEXT_KEYS = ("content", "text", "arguments", "partial_json", "thinking", "refusal", "name")
TEXT_RE = re.compile(rb'"(?:%s)"[ \t\r\n]*:[ \t\r\n]*"((?:[^"\\]|\\.)*)"' %
                     "|".join(TEXT_KEYS).encode())


# ---------------------------------------------------------------- setup

def start(env, port, max_stream_tokens=0, limits=None, idle_ms=30000, keyed=True,
          workers=2):
    """tollgate with both providers on `port` (mockllm or a Script)."""
    models = {"o": model("1.00", "3.00", cap=CAP),
              "a": model("1.00", "3.00", provider="mock-anthropic", cap=CAP)}
    provs = {"mock-openai": {"idle_timeout_ms": idle_ms},
             "mock-anthropic": {"idle_timeout_ms": idle_ms}}
    extra = None
    if keyed:
        k = key("k", SECRET, "t", limit="100.00", user="u")
        if max_stream_tokens:
            k["run"]["max_stream_tokens"] = max_stream_tokens
        extra = principals([k], teams={"t": {"parent": "o", "budget": budget("100.00")}},
                           orgs={"o": {"budget": budget("100.00")}},
                           users={"u": {"parent": "t", "budget": budget("100.00")}})
    return Tollgate(env, mock_port=port, workers=workers, models=models, providers=provs,
                    limits=limits, extra=extra)


def body_of(obj):
    return json.dumps(obj, separators=(",", ":")).encode()


def chat_body(max_tokens=100000, stream=True, content="tell me a story", **extra):
    b = {"model": "o", "messages": [{"role": "user", "content": content}],
         "max_tokens": max_tokens, "stream": stream}
    b.update(extra)
    return body_of(b)


def msg_body(max_tokens=100000, stream=True, content="tell me a story"):
    return body_of({"model": "a", "max_tokens": max_tokens, "stream": stream,
                    "messages": [{"role": "user", "content": content}]})


def bound(body):
    return len(body) + SLACK


def price(inp, out):
    return inp * IN_PRICE + out * OUT_PRICE


def scopes(tg):
    r = call(tg, "/v1/budget", None, H, method="GET")
    assert r.status == 200, r
    return {s["scope"]: (micros(s["committed_usd"]), micros(s["reserved_usd"]))
            for s in r.json()["scopes"]}


def quiet(tg, committed, timeout=5.0):
    """Every scope (run, key, user, team, org) has nothing reserved and has
    committed exactly `committed` (read twice alike: shards are summed one
    by one)."""
    last = [None]

    def ok():
        st = scopes(tg)
        prev, last[0] = last[0], st
        return st if st == prev and all(v[1] == 0 for v in st.values()) else None
    try:
        st = wait_until(ok, timeout, what="every scope to have nothing reserved")
    except AssertionError:
        raise AssertionError("reserved not back to 0 on every scope: %r" % (last[0],))
    assert sorted(st) == sorted(["run:" + RUN, "key:k", "user:u", "team:t", "org:o"]), st
    for name, (com, _) in st.items():
        assert com == committed, ("committed on %s" % name, com, "expected", committed, st)
    return st


def decision(tg, r, timeout=5.0):
    """The decision record of reply r, or of the decision id r (polled:
    it is written when the call ends)."""
    did = r if isinstance(r, str) else r.headers.get("x-budget-decision-id")
    assert did, r.headers

    def get():
        d = call(tg, "/budget/decisions/" + did, None, H, method="GET")
        return d.json() if d.status == 200 else None
    return wait_until(get, timeout, what="decision %s" % did)


def charged(tg, r):
    j = decision(tg, r)
    assert j["outcome"] == "committed", j
    return micros(j["actual_usd"])


# ---------------------------------------------------------------- SSE, metering

def prose(n, seed=7):
    """n bytes of words that never repeat a block (not a loop by the rule)."""
    rnd = random.Random(seed)
    words = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi "
             "omicron pi rho sigma tau upsilon phi chi psi omega").split()
    out = []
    size = 0
    while size < n:
        w = rnd.choice(words) + " "
        out.append(w)
        size += len(w)
    return "".join(out)[:n]


def parse_sse(body):
    """WHATWG event-stream parsing of bytes (CR, LF or CRLF line ends):
    [(event type or None, data str)] of the events that had data."""
    events, typ, data = [], None, None
    for line in re.split(rb"\r\n|\r|\n", body)[:-1] if body else []:
        if line == b"":
            if data is not None:
                events.append((typ, "\n".join(data)))
            typ, data = None, None
            continue
        if line.startswith(b":"):
            continue
        name, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            data = (data or []) + [value.decode()]
        elif name == b"event":
            typ = value.decode()
    return events


def event_data(ev_bytes):
    """The data of one raw event (its data lines joined by LF)."""
    evs = parse_sse(ev_bytes)
    return evs[0][1].encode() if evs else b""


def text_of(data):
    """Generated text carried by one event's data, as written: the string
    values of the text keys, escapes included (meter.h's counting rule)."""
    return b"".join(TEXT_RE.findall(data))


def is_loop(text):
    """The loop rule: the last max(512, 2p) bytes equal those p earlier,
    for some period p <= 1024."""
    n = len(text)
    for p in range(1, 1025):
        span = max(512, 2 * p)
        if span + p > n:
            break
        if text[n - span:] == text[n - span - p:n - p]:
            return True
    return False


class MeterSim:
    """What net/meter.c should conclude, event by event: counted bytes,
    text events, and the loop check every 256 bytes of text."""

    def __init__(self):
        self.bytes = 0
        self.text_events = 0
        self.checked = 0
        self.window = b""

    def event(self, data):
        pieces = [p for p in TEXT_RE.findall(data) if p]
        if not pieces:
            return False
        for p in pieces:
            self.bytes += len(p)
            self.window = (self.window + p)[-3072:]
        self.text_events += 1
        if self.bytes - self.checked >= 256:
            self.checked = self.bytes
            return is_loop(self.window)
        return False


def split_events(body):
    """Raw events of an event stream, each with its blank line (any of
    CR, LF, CRLF line ends); a trailing partial event is dropped."""
    out, start, i, n = [], 0, 0, len(body)
    line_start = True
    while i < n:
        c = body[i:i + 1]
        if c in (b"\r", b"\n"):
            end = i + 1
            if c == b"\r" and body[i + 1:i + 2] == b"\n":
                end = i + 2
            if line_start:
                out.append(body[start:end])
                start = end
            line_start = True
            i = end
            continue
        line_start = False
        i += 1
    return [e for e in out if e.strip(b"\r\n")] if out else out


def final_error(rest, fmt):
    """The final event of a cut, in the provider's format: its error object."""
    evs = parse_sse(rest)
    if fmt == "openai":
        assert len(evs) == 2 and evs[1] == (None, "[DONE]"), rest
        assert evs[0][0] is None, rest
        err = json.loads(evs[0][1])["error"]
        assert isinstance(err.get("budget"), dict), err
    else:
        assert len(evs) == 1 and evs[0][0] == "error", rest
        j = json.loads(evs[0][1])
        assert j["type"] == "error", j
        err = j["error"]
    assert err["type"] == "budget_exhausted" and err["message"], err
    assert parse_sse(rest) and rest.endswith(b"\n\n"), rest
    return err


def check_cut(r, provider_body, upto, fmt, code, what=None):
    """r (the agent's reply) is the provider's event bytes [0, upto), then
    the final event with `code`, then the chunk terminator (already read
    by Conn.response)."""
    assert r.status == 200, r
    assert r.headers.get("transfer-encoding") == "chunked", r.headers
    assert "content-length" not in r.headers, r.headers
    got = r.body
    assert got[:upto] == provider_body[:upto], (
        what, "agent's bytes differ from the provider's before the cut",
        first_diff(got, provider_body[:upto]))
    err = final_error(got[upto:], fmt)
    assert err.get("code") == code, (code, err)
    return err


def first_diff(a, b):
    for i in range(min(len(a), len(b))):
        if a[i] != b[i]:
            return {"at": i, "got": a[max(0, i - 60):i + 60], "want": b[max(0, i - 60):i + 60]}
    return {"at": min(len(a), len(b)), "got_len": len(a), "want_len": len(b),
            "got_tail": a[-120:], "want_tail": b[-120:]}


# ---------------------------------------------------------------- events

OA_ID = '{"id":"chatcmpl-f","object":"chat.completion.chunk","created":1,"model":"o",'


def oa(delta, finish="null"):
    """One OpenAI chat chunk event; `delta` is raw JSON text."""
    return ('data: %s"choices":[{"index":0,"delta":%s,"finish_reason":%s}]}\n\n'
            % (OA_ID, delta, finish)).encode()


def oa_text(raw):
    """A content delta; `raw` is the JSON string literal as written."""
    return oa('{"content":%s}' % raw)


def lit(s):
    """A JSON string literal with non-ASCII written raw (UTF-8)."""
    return json.dumps(s, ensure_ascii=False)


OA_DONE = b"data: [DONE]\n\n"


def an(name, data):
    return ("event: %s\ndata: %s\n\n" % (name, data)).encode()


def an_start(input_tokens=None):
    usage = ("" if input_tokens is None else
             ',"usage":{"input_tokens":%d,"output_tokens":1}' % input_tokens)
    return an("message_start", '{"type":"message_start","message":{"id":"msg_f","type":'
              '"message","role":"assistant","model":"a","content":[],"stop_reason":null%s}}'
              % usage)


def an_block(index=0):
    return an("content_block_start", '{"type":"content_block_start","index":%d,'
              '"content_block":{"type":"text","text":""}}' % index)


def an_text(raw, index=0):
    return an("content_block_delta", '{"type":"content_block_delta","index":%d,'
              '"delta":{"type":"text_delta","text":%s}}' % (index, raw))


def an_end(output_tokens=None):
    """The closing events (a list): block stop, message_delta, message_stop."""
    usage = "" if output_tokens is None else ',"usage":{"output_tokens":%d}' % output_tokens
    return [an("content_block_stop", '{"type":"content_block_stop","index":0}'),
            an("message_delta", '{"type":"message_delta","delta":{"stop_reason":"end_turn",'
               '"stop_sequence":null}%s}' % usage),
            an("message_stop", '{"type":"message_stop"}')]


SSE_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"


def framed(events, how, chunk=None, ext=b""):
    """(wire bytes, event-stream body) of a reply carrying `events`:
    how = chunked (one chunk per event, or `chunk` bytes per chunk),
    length (Content-Length) or close (delimited by the close)."""
    body = b"".join(events)
    if how == "chunked":
        pieces = events if chunk is None else [body[i:i + chunk]
                                               for i in range(0, len(body), chunk)]
        wire = b"".join(b"%x%s\r\n%s\r\n" % (len(p), ext, p) for p in pieces if p)
        return SSE_HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + wire + b"0\r\n\r\n", body
    if how == "length":
        return SSE_HEAD + b"Content-Length: %d\r\n\r\n" % len(body) + body, body
    assert how == "close"
    return SSE_HEAD + b"Connection: close\r\n\r\n" + body, body


def json_reply(obj):
    b = json.dumps(obj).encode()
    return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
            % len(b) + b)


# ---------------------------------------------------------------- the scripted provider

def peer_closed(s):
    """True if the peer (tollgate) closed or reset this connection."""
    try:
        r, _, _ = select.select([s], [], [], 0)
        if not r:
            return False
        return s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def reset(s):
    """Closes with an RST."""
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


class Script(FakeProvider):
    """A provider whose handler(conn_no, req_no, raw, sock) writes the whole
    reply itself and returns True to keep the connection for another
    request (False: close it). Handler failures other than socket errors
    are kept in `errors`."""

    def __init__(self, handler):
        self.errors = []
        super().__init__(handler)

    def _serve(self, s, conn_no):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            for req_no, raw in self.requests_on(s, conn_no):
                if not self.respond(conn_no, req_no, raw, s):
                    return
        except OSError:
            return
        except Exception:       # noqa: B902 - a bug in the script: reported by the test
            self.errors.append(traceback.format_exc())
        finally:
            try:
                s.close()
            except OSError:
                pass

    def check(self):
        assert not self.errors, self.errors[0]


def req_json(raw):
    return json.loads(raw.partition(b"\r\n\r\n")[2])


def static(replies):
    """A handler answering every request with replies(req) -> wire bytes,
    keeping the connection unless the reply is close-delimited."""
    def handler(conn_no, req_no, raw, s):
        wire = replies(req_json(raw))
        s.sendall(wire)
        return b"\r\nConnection: close\r\n" not in wire.partition(b"\r\n\r\n")[0] + b"\r\n"
    return handler


class Endless:
    """Streams events (make(i) -> bytes) as chunks, up to `limit`, `gap`
    seconds apart; records how many it wrote and whether, and when, it
    saw tollgate close the connection."""

    def __init__(self, make, limit, gap=0.0, head_events=(), split_before_last_lf=None):
        self.make = make
        self.split_at = split_before_last_lf   # event whose last LF comes in a later write
        self.limit = limit
        self.gap = gap
        self.head_events = head_events
        self.sent = 0
        self.sent_bytes = []
        self.closed_at = None
        self.finished = False
        self.done = threading.Event()

    def __call__(self, conn_no, req_no, raw, s):
        try:
            s.sendall(SSE_HEAD + b"Transfer-Encoding: chunked\r\n\r\n" +
                      b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in self.head_events))
            while self.sent < self.limit:
                ev = self.make(self.sent)
                chunk = b"%x\r\n%s\r\n" % (len(ev), ev)
                if self.sent == self.split_at:
                    s.sendall(chunk[:-3])
                    time.sleep(0.01)
                    chunk = chunk[-3:]
                s.sendall(chunk)
                self.sent += 1
                self.sent_bytes.append(ev)
                if self.gap:
                    time.sleep(self.gap)
                if (self.gap or self.sent % 64 == 0) and peer_closed(s):
                    self.closed_at = time.monotonic()
                    return False
            s.sendall(b"0\r\n\r\n")
            self.finished = True
            return False
        except OSError:
            self.closed_at = time.monotonic()
            return False
        finally:
            self.done.set()


# ---------------------------------------------------------------- 1. framing

def sample_openai():
    """An OpenAI stream with the awkward bits: a comment, a field without
    its space, an id field, a two-line data, UTF-8 (2, 3 and 4 bytes),
    escapes, "data:" inside a string, a refusal, a tool call."""
    return [
        oa('{"role":"assistant","content":""}'),
        b": keep-alive comment\n\n",
        oa_text(lit("Hello")),
        oa_text(lit("h\u00e9llo w\u00f6rld \u2014 \u2713 \U0001F600 done")),
        b"id: 7\n" + oa_text(r'"say \"hi\"\n\tand \\ back \u00e9 \/"'),
        ("data:%s\"choices\":[{\"index\":0,\n" % OA_ID).encode() +
        b'data: "delta":{"content":" two lines, data: inside"},"finish_reason":null}]}\n\n',
        oa('{"refusal":"no"}'),
        oa('{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":'
           '{"name":"lookup","arguments":"{\\"q\\": \\"caf\u00e9\\"}"}}]}'),
        oa("{}", '"stop"'),
        OA_DONE,
    ]


def sample_anthropic(output_tokens=42):
    return [
        an_start(25),
        an_block(),
        an("ping", '{"type": "ping"}'),
        an_text(lit("Bonjour, ")),
        an_text(lit("\u00e7a va? \u65e5\u672c\u8a9e \U0001F680")),
        an_text(r'"quote \" slash \\ nl \n uni \u2603"'),
        an("content_block_stop", '{"type":"content_block_stop","index":0}'),
        an("content_block_start", '{"type":"content_block_start","index":1,"content_block":'
           '{"type":"tool_use","id":"toolu_1","name":"get_weather","input":{}}}'),
        an("content_block_delta", '{"type":"content_block_delta","index":1,"delta":'
           '{"type":"input_json_delta","partial_json":"{\\"city\\": \\"Par"}}'),
        an("content_block_delta", '{"type":"content_block_delta","index":1,"delta":'
           '{"type":"input_json_delta","partial_json":"is\\"}"}}'),
        an("content_block_stop", '{"type":"content_block_stop","index":1}'),
        an("message_delta", '{"type":"message_delta","delta":{"stop_reason":"tool_use",'
           '"stop_sequence":null},"usage":{"output_tokens":%d}}' % output_tokens),
        an("message_stop", '{"type":"message_stop"}'),
    ]


def counted(events):
    """(bytes of text, text events) of raw events, by the counting rule."""
    sim = MeterSim()
    for e in events:
        sim.event(event_data(e))
    return sim.bytes, sim.text_events


def crlf(events):
    return [e.replace(b"\n", b"\r\n") for e in events]


def test_stream_reframed_whatever_the_provider_framing(env):
    """The same OpenAI events sent chunked (one chunk per event; 37-byte
    chunks that cut events anywhere, with chunk extensions), by
    Content-Length and close-delimited: the agent always gets
    Transfer-Encoding: chunked (no Content-Length), the provider's event
    bytes exactly, and the same charge (no usage: input bound + 3 x text
    bytes). The same for an Anthropic stream with CRLF line ends (charged
    its usage). After the chunked and length-framed replies the agent's
    connection is reused."""
    ev = sample_openai()
    tb, _ = counted(ev)
    ev_an = crlf(sample_anthropic())
    variants = [("openai", "chunked", None, b""), ("openai", "chunked", 37, b";x=1"),
                ("openai", "length", None, b""), ("openai", "close", None, b""),
                ("anthropic", "chunked", 64, b""), ("anthropic", "length", None, b""),
                ("anthropic", "close", None, b"")]
    state = {}

    def replies(req):
        v = variants[state["i"]]
        return framed(ev if v[0] == "openai" else ev_an, v[1], v[2], v[3])[0]

    with Script(static(replies)) as fp, start(env, fp.port) as tg:
        spent = 0
        c = tg.conn()
        for i, (fmt, how, chunk, ext) in enumerate(variants):
            state["i"] = i
            b = chat_body() if fmt == "openai" else msg_body()
            c.send(request("POST", CHAT if fmt == "openai" else MESSAGES, b, H))
            r = c.response()
            want = b"".join(ev if fmt == "openai" else ev_an)
            assert r.status == 200, (i, r)
            assert r.headers.get("transfer-encoding") == "chunked", (i, r.headers)
            assert "content-length" not in r.headers, (i, r.headers)
            assert r.headers.get("content-type") == "text/event-stream", r.headers
            assert r.body == want, (i, how, first_diff(r.body, want))
            exp = price(bound(b), tb) if fmt == "openai" else price(25, 42)
            got = charged(tg, r)
            assert got == exp, (i, how, "charged", got, "expected", exp)
            spent += exp
            if r.headers.get("connection", "").lower() == "close":
                assert how == "close", (i, how, r.headers)
                assert c.closed_within(2.0), "Connection: close but the connection stayed open"
                c.close()
                c = tg.conn()
        c.close()
        fp.check()
        quiet(tg, spent)


def test_stream_mockllm_chunked_both_formats(env):
    """mockllm streams (one chunk per event), OpenAI chat with usage,
    OpenAI legacy completions with usage, Anthropic: re-framed chunked,
    every event relayed, charged the reported usage exactly; slow (3 ms
    per token) and fast (no delay) alike."""
    with Mock(env) as mk, start(env, mk.port) as tg:
        spent = 0
        with tg.conn(timeout=10) as c:
            for delay in ("3000", "0"):
                hd = dict(H, **{"x-mock-tokens": "60", "x-mock-token-delay-us": delay,
                                "x-mock-tokens-per-event": "2"})
                for path, b in ((CHAT, chat_body(stream_options={"include_usage": True})),
                                (COMPLETIONS, body_of({"model": "o", "prompt": "once",
                                                       "max_tokens": 500, "stream": True,
                                                       "stream_options":
                                                           {"include_usage": True}})),
                                (MESSAGES, msg_body())):
                    t0 = time.monotonic()
                    c.send(request("POST", path, b, hd))
                    r = c.response()
                    took = time.monotonic() - t0
                    assert r.status == 200, r
                    assert r.headers.get("transfer-encoding") == "chunked", r.headers
                    evs = parse_sse(r.body)
                    if path == MESSAGES:
                        assert evs[-1][0] == "message_stop", evs[-3:]
                        inp = json.loads(evs[0][1])["message"]["usage"]["input_tokens"]
                        out = json.loads(evs[-2][1])["usage"]["output_tokens"]
                        ntext = sum(1 for t, _ in evs if t == "content_block_delta")
                    else:
                        assert evs[-1][1] == "[DONE]", evs[-3:]
                        u = json.loads(evs[-2][1])["usage"]
                        inp, out = u["prompt_tokens"], u["completion_tokens"]
                        ntext = sum(1 for _, d in evs if d != "[DONE]" and
                                    text_of(d.encode()))
                    assert out == 60 and ntext == 30, (path, out, ntext)
                    if delay != "0":
                        assert took >= 0.15, took
                    exp = price(inp, out)
                    assert charged(tg, r) == exp, (path, delay, charged(tg, r), exp)
                    spent += exp
        quiet(tg, spent)


def test_stream_relay_only_byte_for_byte(env):
    """No keys configured: a stream is relayed as before, byte for byte in
    the provider's framing (the same chunk boundaries; Content-Length kept),
    and not metered: a looping stream and a non-JSON event are not cut."""
    block = "The same sentence comes back again and again, word for word. "
    loop_events = [oa_text(lit(block[i:i + 9])) for i in range(0, len(block), 9)] * 40
    ev = sample_openai()[:-1] + loop_events + [b"data: not json at all\n\n"] + [OA_DONE]
    assert loops_by_rule(ev), "the sample must be a loop by the rule"
    state = {}

    def replies(req):
        return framed(ev, state["how"], state["chunk"])[0]

    with Script(static(replies)) as fp, start(env, fp.port, keyed=False) as tg:
        with tg.conn() as c:
            for how, chunk in (("chunked", None), ("chunked", 300), ("length", None)):
                state.update(how=how, chunk=chunk)
                wire, body = framed(ev, how, chunk)
                c.send(request("POST", CHAT, chat_body()))
                r = c.response()
                assert r.status == 200, r
                assert r.body == body, (how, first_diff(r.body, body))
                assert b"budget_exhausted" not in r.body
                if how == "chunked":
                    want = ev if chunk is None else [body[i:i + chunk]
                                                     for i in range(0, len(body), chunk)]
                    assert r.headers.get("transfer-encoding") == "chunked", r.headers
                    assert r.chunks == want, "chunk boundaries changed"
                else:
                    assert r.headers.get("content-length") == str(len(body)), r.headers
                    assert "transfer-encoding" not in r.headers, r.headers
        fp.check()
        # and the request went up as sent (nothing added without keys)
        assert all(raw.partition(b"\r\n\r\n")[2] == chat_body() for _, raw in fp.requests)


def loops_by_rule(events):
    sim = MeterSim()
    return any(sim.event(event_data(e)) for e in events)


# ---------------------------------------------------------------- 2. split anywhere

def split_run(env, fmt, wire, want_body, expect, offsets, threads=6, pieces=2):
    """Every offset in `offsets`: the provider writes wire[:off], pauses,
    then the rest (pieces=3: wire[off:off + 40], pauses, then the rest).
    Each reply must carry want_body and be charged `expect`."""
    def handler(conn_no, req_no, raw, s):
        off = int(re.search(rb"\r\nx-split: (\d+)", raw).group(1))
        cuts = [0, off] + ([off + 40] if pieces == 3 else []) + [len(wire)]
        for a, z in zip(cuts, cuts[1:]):
            s.sendall(wire[a:z])
            if z < len(wire):
                time.sleep(0.002)
        return True

    bad, lock = [], threading.Lock()
    with Script(handler) as fp, start(env, fp.port) as tg:
        path = CHAT if fmt == "openai" else MESSAGES
        b = chat_body() if fmt == "openai" else msg_body()
        exp = expect(b)

        def worker(mine):
            try:
                c = tg.conn(timeout=10)
                for off in mine:
                    c.send(request("POST", path, b, dict(H, **{"x-split": str(off)})))
                    r = c.response()
                    did = r.headers.get("x-budget-decision-id")
                    c.send(request("GET", "/budget/decisions/%s" % did, None, H))
                    d = c.response()
                    got = micros(d.json()["actual_usd"]) if d.status == 200 else None
                    if (r.status != 200 or r.body != want_body or got != exp or
                            r.headers.get("transfer-encoding") != "chunked"):
                        with lock:
                            bad.append((off, r.status, got, first_diff(r.body, want_body)
                                        if r.body != want_body else "same body"))
                c.close()
            except Exception as e:      # noqa: B902
                with lock:
                    bad.append(("worker", repr(e)))
        ts = [threading.Thread(target=worker, args=(offsets[i::threads],))
              for i in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(60)
        fp.check()
        assert not bad, "%d of %d split offsets went wrong (expected charge %d), first: %r" % (
            len(bad), len(offsets), exp, sorted(bad, key=str)[:3])
        quiet(tg, exp * len(offsets))


def test_stream_split_anywhere_openai(env):
    """The sample OpenAI stream (chunked, one chunk per event: UTF-8 of 2-4
    bytes, escapes, a comment, a two-line data, "data:" inside a string)
    written in two pieces split at every byte offset of the reply (head
    included, so inside "data:", inside multi-byte characters, inside the
    chunk-size lines): every reply carries the same event bytes and is
    charged the same: input bound + 3 x text bytes (no usage)."""
    ev = sample_openai()
    wire, body = framed(ev, "chunked")
    tb, _ = counted(ev)
    assert tb > 100
    split_run(env, "openai", wire, body, lambda b: price(bound(b), tb),
              list(range(1, len(wire))))


def test_stream_split_anywhere_anthropic_crlf(env):
    """The sample Anthropic stream with CRLF line ends, by Content-Length,
    split at every byte offset (between every CR and LF, inside UTF-8,
    inside "event:" and "data:"): the same bytes, the same charge (its
    usage: 25 in, 42 out)."""
    ev = crlf(sample_anthropic())
    wire, body = framed(ev, "length")
    split_run(env, "anthropic", wire, body, lambda b: price(25, 42),
              list(range(1, len(wire))))


def usage_chunk(prompt, completion):
    return ('data: %s"choices":[],"usage":{"prompt_tokens":%d,"completion_tokens":%d,'
            '"total_tokens":%d}}\n\n' % (OA_ID, prompt, completion, prompt + completion)).encode()


def test_stream_split_anywhere_usage_chunk_dropped(env):
    """The sample OpenAI stream plus the usage chunk, in 50-byte chunks
    (not aligned with events), for an agent that did not ask for usage
    (tollgate asked for it and must drop the chunk): written in three
    pieces, at every offset and 40 bytes later. The agent gets every event
    but the usage chunk, byte for byte; the charge is the usage (11 in,
    40 out) every time."""
    ev = sample_openai()
    ev = ev[:-1] + [usage_chunk(11, 40), OA_DONE]
    wire, _ = framed(ev, "chunked", 50)
    want = b"".join(e for e in ev if b'"usage"' not in e)
    split_run(env, "openai", wire, want, lambda b: price(11, 40),
              list(range(1, len(wire) - 40)), pieces=3)


def test_stream_byte_by_byte(env):
    """The provider writes the whole reply one byte at a time: the OpenAI
    sample (usage chunk dropped: the agent did not ask), the same for an
    agent that asked (kept), and the Anthropic sample with CRLF, then with
    CR line ends. Bytes and charges as when written at once."""
    oa_ev = sample_openai()[:-1] + [usage_chunk(11, 40), OA_DONE]
    an_ev = crlf(sample_anthropic())
    an_cr = [e.replace(b"\n", b"\r") for e in sample_anthropic()]
    state = {}

    def handler(conn_no, req_no, raw, s):
        for i in range(len(state["wire"])):
            s.sendall(state["wire"][i:i + 1])
            time.sleep(0.0002)
        return True

    with Script(handler) as fp, start(env, fp.port) as tg:
        spent = 0
        with tg.conn(timeout=20) as c:
            for name, path, b, events, want, exp in (
                    ("openai, usage dropped", CHAT, chat_body(), oa_ev,
                     b"".join(e for e in oa_ev if b'"usage"' not in e), price(11, 40)),
                    ("openai, usage asked", CHAT,
                     chat_body(stream_options={"include_usage": True}), oa_ev,
                     b"".join(oa_ev), price(11, 40)),
                    ("anthropic crlf", MESSAGES, msg_body(), an_ev, b"".join(an_ev),
                     price(25, 42)),
                    ("anthropic cr", MESSAGES, msg_body(), an_cr, b"".join(an_cr),
                     price(25, 42))):
                state["wire"] = framed(events, "chunked")[0]
                c.send(request("POST", path, b, H))
                r = c.response()
                assert r.status == 200, (name, r)
                assert r.body == want, (name, first_diff(r.body, want))
                got = charged(tg, r)
                assert got == exp, (name, "charged", got, "expected", exp)
                spent += exp
        fp.check()
        quiet(tg, spent)


# ---------------------------------------------------------------- 3. charging

def test_stream_charged_by_count_without_usage(env):
    """Streams with no usage are charged input bound + 3 x min(text bytes,
    effective max output): every text key counts (content, refusal, tool
    name and arguments; text, thinking, partial_json, tool_use name), as
    written (escapes, raw UTF-8), and nothing else does (role, ids, types,
    stop reasons, signature); a key inside a string is not a key. When the
    text passes max_tokens (but not in text events), max_tokens is charged."""
    oa_events = [
        oa('{"role":"assistant","content":""}'),
        oa_text(lit("plain ")),
        oa_text(r'"esc \"q\" \\ \n \u00e9 "'),
        oa_text(lit("utf8 \u00e9\u4e2d\U0001F600 ")),
        oa_text(lit('nested "content": "x" is text ')),
        oa('{"refusal":"I refuse"}'),
        oa('{"tool_calls":[{"index":0,"id":"call_9","type":"function","function":'
           '{"name":"search","arguments":""}}]}'),
        oa('{"tool_calls":[{"index":0,"function":{"arguments":"{\\"q\\":1}"}}]}'),
        oa('{"content":null}'),
        oa("{}", '"stop"'),
        OA_DONE,
    ]
    an_events = [
        an_start(None),
        an("content_block_start", '{"type":"content_block_start","index":0,"content_block":'
           '{"type":"thinking","thinking":""}}'),
        an("content_block_delta", '{"type":"content_block_delta","index":0,"delta":'
           '{"type":"thinking_delta","thinking":"let me think"}}'),
        an("content_block_delta", '{"type":"content_block_delta","index":0,"delta":'
           '{"type":"signature_delta","signature":"c2lnbmF0dXJl"}}'),
        an_block(1),
        an_text(lit("r\u00e9ponse "), 1),
        an_text(r'"\"esc\""', 1),
        an("content_block_start", '{"type":"content_block_start","index":2,"content_block":'
           '{"type":"tool_use","id":"toolu_2","name":"calc","input":{}}}'),
        an("content_block_delta", '{"type":"content_block_delta","index":2,"delta":'
           '{"type":"input_json_delta","partial_json":"{\\"x\\":2}"}}'),
        *an_end(None),
    ]
    # by hand: what counts
    oa_bytes = (len("plain ") + len(r'esc \"q\" \\ \n \u00e9 ') +
                len("utf8 \u00e9\u4e2d\U0001F600 ".encode()) +
                len(r'nested \"content\": \"x\" is text ') + len("I refuse") +
                len("search") + len(r'{\"q\":1}'))
    an_bytes = (len("let me think") + len("r\u00e9ponse ".encode()) + len(r'\"esc\"') +
                len("calc") + len(r'{\"x\":2}'))
    assert counted(oa_events)[0] == oa_bytes and counted(an_events)[0] == an_bytes

    def replies(req):
        return framed(oa_events if req["model"] == "o" else an_events, "chunked")[0]

    with Script(static(replies)) as fp, start(env, fp.port) as tg:
        spent = 0
        with tg.conn() as c:
            for path, b, out in ((CHAT, chat_body(), oa_bytes),
                                 (MESSAGES, msg_body(), an_bytes),
                                 (CHAT, chat_body(max_tokens=30), 30),
                                 (MESSAGES, msg_body(max_tokens=20), 20)):
                c.send(request("POST", path, b, H))
                r = c.response()
                assert r.status == 200 and r.headers.get("transfer-encoding") == "chunked", r
                assert b"budget_exhausted" not in r.body, r.body[-300:]
                exp = price(bound(b), out)
                got = charged(tg, r)
                assert got == exp, (path, len(b), "charged", got, "expected", exp,
                                    "= bound %d + 3 x %d" % (bound(b), out))
                spent += exp
        fp.check()
        quiet(tg, spent)


def test_stream_usage_chunk_added_and_removed(env):
    """SPEC §3: an OpenAI stream whose agent did not ask for usage is sent
    upstream with stream_options.include_usage, is charged the usage the
    provider then reports, and the agent does not see the usage chunk."""
    def replies(req):
        assert req.get("stream_options") == {"include_usage": True}, req
        ev = [oa_text(lit("abc")), oa("{}", '"stop"')]
        ev.append(('data: %s"choices":[],"usage":{"prompt_tokens":11,"completion_tokens":'
                   '7,"total_tokens":18}}\n\n' % OA_ID).encode())
        return framed(ev + [OA_DONE], "chunked")[0]

    with Script(static(replies)) as fp, start(env, fp.port) as tg:
        r = call(tg, CHAT, chat_body(), H)
        fp.check()
        assert r.status == 200, r
        assert fp.requests and b'"include_usage":true' in fp.requests[0][1], fp.requests
        assert b'"usage"' not in r.body, r.body
        assert r.body == oa_text(lit("abc")) + oa("{}", '"stop"') + OA_DONE, r.body
        assert charged(tg, r) == price(11, 7), (charged(tg, r), price(11, 7))
        quiet(tg, price(11, 7))


# ---------------------------------------------------------------- 4. loops

def loop_expectation(events):
    """(index of the event where the loop rule fires, counted bytes then)."""
    sim = MeterSim()
    for i, e in enumerate(events):
        if sim.event(event_data(e)):
            return i, sim.bytes
    return None, sim.bytes


def test_stream_loop_cut_mockllm(env):
    """mockllm x-mock-loop (one sentence repeated; 1 token per event): chat,
    chat tool call (the arguments loop) and Anthropic. The agent gets the
    events up to the one where the rule fires (checked every 256 bytes),
    then the final event (code loop_detected) and the terminator; the next
    request on the connection is served; mockllm sees tollgate close the
    provider connection long before its 20 000 tokens; charge = input +
    3 x text bytes counted (OpenAI: input bound, no usage yet; Anthropic:
    message_start's input)."""
    with Mock(env) as mk, start(env, mk.port) as tg:
        spent = 0
        hd = dict(H, **{"x-mock-loop": "1", "x-mock-tokens": "200000",
                        "x-mock-token-delay-us": "100"})
        c = tg.conn(timeout=10)
        for fmt, path, b, extra in (
                ("openai", CHAT, chat_body(stream_options={"include_usage": True}), {}),
                ("openai", CHAT, chat_body(), {"x-mock-tool-call": "1"}),
                ("anthropic", MESSAGES, msg_body(), {})):
            before = mk.stats()["closed_by_peer"]
            t0 = time.monotonic()
            c.send(request("POST", path, b, dict(hd, **extra)))
            r = c.response()
            took = time.monotonic() - t0
            assert r.status == 200, r
            relayed = split_events(r.body)
            # the provider's events are the agent's, up to the final event
            n_final = 2 if fmt == "openai" else 1
            upstream = relayed[:-n_final]
            at, nbytes = loop_expectation(upstream)
            assert at == len(upstream) - 1, (
                "cut at event %d, but the loop rule fires at event %s" % (len(upstream) - 1, at))
            upto = len(b"".join(upstream))
            check_cut(r, r.body, upto, fmt, "loop_detected")
            assert took < 5.0, took
            if fmt == "openai":
                inp = bound(b)
            else:
                inp = json.loads(parse_sse(upstream[0])[0][1])["message"]["usage"]["input_tokens"]
            exp = price(inp, nbytes)
            got = charged(tg, r)
            assert got == exp, (fmt, extra, "charged", got, "expected", exp, "text", nbytes)
            spent += exp
            wait_until(lambda: mk.stats()["closed_by_peer"] > before, 3.0,
                       what="mockllm to see tollgate close the looping stream")
            # the agent's connection is still usable
            c.send(request("POST", CHAT, chat_body(max_tokens=5, stream=False), H))
            r2 = c.response()
            assert r2.status == 200, r2
            u = r2.json()["usage"]
            spent += price(u["prompt_tokens"], u["completion_tokens"])
        c.close()
        quiet(tg, spent)


def loop_piece(i, block, step=7):
    """Piece i of an endless repetition of `block`, `step` bytes a time."""
    text = block * (step + 2)
    o = (i * step) % len(block)
    return text[o:o + step]


def test_stream_loop_cut_fake_provider(env):
    """A provider repeating a 39-byte block for ever (200 000 events of 7
    bytes), OpenAI and Anthropic: cut where the rule fires (exact event),
    final event loop_detected, terminator, connection reused; the
    provider's writes fail (tollgate closed on it) long before it is done;
    charge = input bound + 3 x counted bytes (no usage)."""
    fake_loop_run(env, [("openai", False), ("anthropic", False)])


def test_stream_cut_keeps_crlf_events_whole(env):
    """The same looping provider with CRLF line ends: the events before the
    final event are the provider's bytes exactly, the last one's blank
    line (CR LF) included, not cut between its CR and its LF; also when
    that LF comes in a later write than its CR. And with CR line ends."""
    fake_loop_run(env, [("openai", True), ("anthropic", True), ("openai", "split"),
                        ("anthropic", "split"), ("openai", "cr"), ("anthropic", "cr")])


def fake_loop_run(env, cases):
    block = "I will call the search tool again now. "
    state = {}

    def make(i):
        piece = lit(loop_piece(i, block))
        ev = oa_text(piece) if state["fmt"] == "openai" else an_text(piece)
        if state["crlf"] == "cr":
            return ev.replace(b"\n", b"\r")
        return ev.replace(b"\n", b"\r\n") if state["crlf"] else ev

    def handler(conn_no, req_no, raw, s):
        return state["endless"](conn_no, req_no, raw, s)

    with Script(handler) as fp, start(env, fp.port) as tg:
        spent = 0
        c = tg.conn(timeout=10)
        for fmt, use_crlf in cases:
            state.update(fmt=fmt, crlf=use_crlf)
            events = [make(i) for i in range(400)]
            at, nbytes = loop_expectation(events)
            assert at is not None and at < 300, at
            e = state["endless"] = Endless(make, 200000, split_before_last_lf=(
                at if use_crlf == "split" else None))
            path, b = (CHAT, chat_body()) if fmt == "openai" else (MESSAGES, msg_body())
            c.send(request("POST", path, b, H))
            r = c.response()
            upto = len(b"".join(events[:at + 1]))
            check_cut(r, b"".join(events), upto, fmt, "loop_detected",
                      what=(fmt, {False: "LF", True: "CRLF", "split": "CRLF, LF in a later write",
                                  "cr": "CR"}[use_crlf]))
            assert e.done.wait(5.0), "the provider is still writing 5 s after the cut"
            assert not e.finished and e.closed_at is not None, (e.sent, e.finished)
            assert e.sent < 100000, e.sent
            exp = price(bound(b), nbytes)
            got = charged(tg, r)
            assert got == exp, (fmt, use_crlf, "charged", got, "expected", exp)
            spent += exp
            c.send(request("GET", "/v1/budget", None, H))
            assert c.response().status == 200
        c.close()
        fp.check()
        quiet(tg, spent)


# ---------------------------------------------------------------- 5. long prose and code

def test_stream_prose_and_code_never_cut(env):
    """Real files of this repo (README, docs, C sources) streamed as
    content deltas of 5 characters, OpenAI and Anthropic: never cut by the
    loop detector, relayed whole, charged exactly (input bound + 3 x text
    bytes as written, no usage)."""
    files = ["README.md", "docs/budget.md", "net/decide.c", "net/http1.c", "net/client.c"]
    state = {}

    def replies(req):
        return framed(state["events"], "chunked")[0]

    with Script(static(replies)) as fp, start(env, fp.port) as tg:
        spent = 0
        with tg.conn(timeout=10) as c:
            for i, name in enumerate(files):
                with open(os.path.join(REPO, name), encoding="utf-8") as f:
                    text = f.read()
                pieces = [text[j:j + 5] for j in range(0, len(text), 5)]
                fmt = "openai" if i % 2 == 0 else "anthropic"
                if fmt == "openai":
                    events = [oa('{"role":"assistant","content":""}')]
                    events += [oa_text(lit(p)) for p in pieces] + [oa("{}", '"stop"'), OA_DONE]
                    path, b = CHAT, chat_body()
                else:
                    events = [an_start(None), an_block()] + [an_text(lit(p)) for p in pieces]
                    events += an_end(None)
                    path, b = MESSAGES, msg_body()
                assert not loops_by_rule(events), "%s loops by the rule itself" % name
                nbytes, _ = counted(events)
                state["events"] = events
                c.send(request("POST", path, b, H))
                r = c.response()
                want = b"".join(events)
                assert r.status == 200, r
                assert r.body == want, (name, fmt, first_diff(r.body, want))
                exp = price(bound(b), nbytes)
                got = charged(tg, r)
                assert got == exp, (name, "charged", got, "expected", exp)
                spent += exp
        fp.check()
        quiet(tg, spent)


# ---------------------------------------------------------------- 6. token cap

def test_stream_token_cap(env):
    """keys[].run.max_stream_tokens 20: a stream's effective max output is
    min(max_tokens 100, 20, model cap) (estimate and X-Budget-Output-Clamped
    say so; a non-stream call keeps 100). A provider ignoring it and sending
    60 text events is cut at the 21st (one token per text event is a lower
    bound), code stream_token_cap, charged input + 3 x 20 (the cap)."""
    an_in = 17

    def replies(req):
        if not req.get("stream"):
            return json_reply({"id": "x", "object": "chat.completion", "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "ok"},
                 "finish_reason": "stop"}], "usage": {"prompt_tokens": 9,
                                                     "completion_tokens": 1}})
        if req["model"] == "o":
            ev = [oa('{"role":"assistant","content":""}')]
            ev += [oa_text(lit("ab")) for _ in range(60)] + [OA_DONE]
        else:
            ev = [an_start(an_in), an_block()] + [an_text(lit("ab")) for _ in range(60)]
            ev += an_end(60)
        return framed(ev, "chunked")[0]

    with Script(static(replies)) as fp, start(env, fp.port, max_stream_tokens=20) as tg:
        spent = 0
        with tg.conn() as c:
            b = chat_body(max_tokens=100, stream=False)
            c.send(request("POST", CHAT, b, H))
            r = c.response()
            assert r.status == 200, r
            assert "x-budget-output-clamped" not in r.headers, r.headers
            assert micros(decision(tg, r)["estimate_usd"]) == price(bound(b), 100)
            spent += charged(tg, r)
            assert charged(tg, r) == price(9, 1)
            for fmt, path, b in (("openai", CHAT, chat_body(max_tokens=100)),
                                 ("anthropic", MESSAGES, msg_body(max_tokens=100))):
                c.send(request("POST", path, b, H))
                r = c.response()
                assert r.status == 200, r
                assert r.headers.get("x-budget-output-clamped") == "20", r.headers
                d = decision(tg, r)
                assert micros(d["estimate_usd"]) == price(bound(b), 20), d
                wire = replies(json.loads(b))
                fp_events = parse_chunked(wire.partition(b"\r\n\r\n")[2])
                # events before the 21st text event, and that one
                n_head = 1 if fmt == "openai" else 2
                upto = len(b"".join(fp_events[:n_head + 21]))
                check_cut(r, b"".join(fp_events), upto, fmt, "stream_token_cap")
                inp = bound(b) if fmt == "openai" else an_in
                exp = price(inp, 20)
                got = charged(tg, r)
                assert got == exp, (fmt, "charged", got, "expected", exp)
                spent += exp
                c.send(request("GET", "/v1/budget", None, H))
                assert c.response().status == 200
        fp.check()
        quiet(tg, spent)


def parse_chunked(body):
    out, i = [], 0
    while True:
        j = body.index(b"\r\n", i)
        n = int(body[i:j].split(b";")[0], 16)
        if n == 0:
            return out
        out.append(body[j + 2:j + 2 + n])
        i = j + 2 + n + 2


# ---------------------------------------------------------------- 7. garbage

def test_stream_garbage_events_cut(env):
    """Event data that is not JSON (OpenAI "data: hello", Anthropic an HTML
    line) is cut with upstream_garbage: the agent gets the good events
    before it (the bad one at most whole), the final event and a clean end,
    and the connection lives on; charged input + 3 x the text counted
    before the bad event. An event of exactly 16 KiB of data is fine."""
    good = [oa('{"role":"assistant","content":""}'), oa_text(lit("fine ")),
            oa_text(lit("still fine "))]
    edge_text = prose(MAX_EVENT - len(event_data(oa_text('""'))))
    edge = oa_text(lit(edge_text))
    assert len(event_data(edge)) == MAX_EVENT
    an_good = [an_start(31), an_block(), an_text(lit("bien ")), an_text(lit("encore "))]
    cases = [
        # (name, format, events, index of the bad event or None)
        ("not json", "openai", good + [b"data: hello world\n\n"] + good[1:] + [OA_DONE], 3),
        ("16 KiB exactly", "openai", good + [edge] + [OA_DONE], None),
        ("html", "anthropic", an_good + [an("content_block_delta", "<html>502</html>")] +
         [an_text(lit("more"))] + an_end(3), 4),
    ]
    state = {}

    def replies(req):
        return framed(state["events"], "chunked")[0]

    with Script(static(replies)) as fp, start(env, fp.port) as tg:
        spent = 0
        with tg.conn() as c:
            for name, fmt, events, bad in cases:
                state["events"] = events
                path, b = (CHAT, chat_body()) if fmt == "openai" else (MESSAGES, msg_body())
                c.send(request("POST", path, b, H))
                r = c.response()
                assert r.status == 200, (name, r)
                full = b"".join(events)
                if bad is None:
                    assert r.body == full, (name, first_diff(r.body, full))
                    nbytes = counted(events)[0]
                    assert nbytes == len(edge_text) + 16, nbytes
                else:
                    before = b"".join(events[:bad])
                    # the bad event itself may or may not be passed on whole
                    with_bad = b"".join(events[:bad + 1])
                    rest_at = len(with_bad) if r.body.startswith(with_bad) else len(before)
                    check_cut(r, full, rest_at, fmt, "upstream_garbage")
                    nbytes = counted(events[:bad])[0]
                inp = bound(b) if fmt == "openai" else 31
                exp = price(inp, nbytes)
                got = charged(tg, r)
                assert got == exp, (name, "charged", got, "expected", exp)
                spent += exp
                c.send(request("GET", "/v1/budget", None, H))
                assert c.response().status == 200, name
        fp.check()
        quiet(tg, spent)


def test_stream_oversized_event_cut(env):
    """An event whose data passes 16 KiB (SSE_MAX_EVENT) after two good
    ones, for an agent that asked for usage and one that did not: cut with
    upstream_garbage; the agent gets the good events, then a parseable
    final event (none of the oversized event's bytes before it) and a
    clean end; charged input bound + 3 x the good events' text."""
    good = [oa('{"role":"assistant","content":""}'), oa_text(lit("fine ")),
            oa_text(lit("still fine "))]
    events = good + [oa_text(lit(prose(17000)))] + good[1:] + [OA_DONE]
    assert len(event_data(events[3])) > MAX_EVENT
    with Script(static(lambda req: framed(events, "chunked")[0])) as fp, \
            start(env, fp.port) as tg:
        spent, bad = 0, []
        with tg.conn() as c:
            for b in (chat_body(), chat_body(stream_options={"include_usage": True})):
                c.send(request("POST", CHAT, b, H))
                r = c.response()
                upto = len(b"".join(good))
                try:
                    check_cut(r, b"".join(events), upto, "openai", "upstream_garbage")
                except (AssertionError, ValueError) as e:
                    bad.append(("agent asked usage" if b"include_usage" in b else
                                "usage not asked", "bytes after the good events: %d" %
                                (len(r.body) - upto), "tail", r.body[-250:], repr(e)[:120]))
                exp = price(bound(b), counted(good)[0])
                got = charged(tg, r)
                assert got == exp, ("charged", got, "expected", exp)
                spent += exp
                c.send(request("GET", "/v1/budget", None, H))
                assert c.response().status == 200
        fp.check()
        quiet(tg, spent)
        assert not bad, bad


def test_stream_garbage_framing_cut(env):
    """A chunked reply whose framing breaks mid-stream (a chunk-size line
    that is not hex, in the same write as a complete event and half of
    another): the agent gets whole events only (those of the first write,
    maybe the complete one of the second), then the final event
    upstream_garbage and a clean end, charged input bound + 3 x the text of
    the events it got; nothing crashes."""
    good = [oa('{"role":"assistant","content":""}'), oa_text(lit("one ")),
            oa_text(lit("two "))]
    half = oa_text(lit("three "))[:30]

    def handler(conn_no, req_no, raw, s):
        s.sendall(SSE_HEAD + b"Transfer-Encoding: chunked\r\n\r\n" +
                  b"%x\r\n%s\r\n" % (len(good[0]), good[0]) +
                  b"%x\r\n%s\r\n" % (len(good[1]), good[1]))
        time.sleep(0.05)
        s.sendall(b"%x\r\n%s\r\n" % (len(good[2]), good[2]) +
                  b"%x\r\n%s\r\n" % (len(half), half) + b"zz-not-hex\r\nrubbish\r\n")
        time.sleep(0.3)
        return False

    with Script(handler) as fp, start(env, fp.port) as tg:
        with tg.conn() as c:
            b = chat_body()
            c.send(request("POST", CHAT, b, H))
            r = c.response()
            full = b"".join(good) + half
            n = 3 if r.body.startswith(b"".join(good)) else 2
            check_cut(r, full, len(b"".join(good[:n])), "openai", "upstream_garbage")
            exp = price(bound(b), counted(good[:n])[0])
            got = charged(tg, r)
            assert got == exp, ("charged", got, "expected", exp)
            c.send(request("GET", "/v1/budget", None, H))
            assert c.response().status == 200
        fp.check()
        quiet(tg, exp)


# ---------------------------------------------------------------- 8. provider failures

def test_stream_provider_reset_mid_stream(env):
    """mockllm x-mock-reset-after (an RST after N content events): chat
    (1 and 5 events of 2 tokens), chat tool call, Anthropic (1 and 3
    events of 6 tokens): the agent gets every event sent, then the final
    event upstream_failed and the terminator; the connection lives on;
    charged what was counted: input (bound; Anthropic: message_start's) +
    3 x text bytes. A tool call's name and arguments count as text."""
    with Mock(env) as mk, start(env, mk.port) as tg:
        spent = 0
        c = tg.conn(timeout=10)
        cases = [("openai", CHAT, chat_body(stream_options={"include_usage": True}), 5, "2", {}),
                 ("openai", CHAT, chat_body(), 1, "2", {}),
                 ("openai", CHAT, chat_body(), 4, "3", {"x-mock-tool-call": "1"}),
                 ("anthropic", MESSAGES, msg_body(), 3, "6", {}),
                 ("anthropic", MESSAGES, msg_body(), 1, "6", {})]
        for fmt, path, b, n, per, extra in cases:
            c.send(request("POST", path, b, dict(H, **dict(extra, **{
                "x-mock-tokens": "100", "x-mock-tokens-per-event": per,
                "x-mock-reset-after": str(n)}))))
            r = c.response()
            assert r.status == 200, r
            relayed = split_events(r.body)
            upstream = relayed[:-(2 if fmt == "openai" else 1)]
            check_cut(r, r.body, len(b"".join(upstream)), fmt, "upstream_failed")
            nbytes, ntext = counted(upstream)
            assert ntext == n, (fmt, n, ntext, upstream)
            if extra:
                assert b'"name":"lookup"' in r.body and nbytes > 6, r.body[:400]
            if fmt == "openai":
                inp = bound(b)
            else:
                inp = json.loads(parse_sse(upstream[0])[0][1])["message"]["usage"]["input_tokens"]
            exp = price(inp, nbytes)
            got = charged(tg, r)
            assert got == exp, (fmt, "reset after %d events" % n, extra, "charged", got,
                                "expected", exp, "= %d in + 3 x %d text bytes" % (inp, nbytes))
            spent += exp
            c.send(request("GET", "/v1/budget", None, H))
            assert c.response().status == 200
        c.close()
        quiet(tg, spent)


def test_stream_provider_reset_mid_event(env):
    """A provider that resets in the middle of an event (its first half
    already sent), for an OpenAI stream whose agent asked for usage, one
    that did not, and an Anthropic stream: the agent still gets a
    well-formed stream, the complete events then a parseable final event
    upstream_failed, then the terminator; charged input + 3 x the text of
    the complete events."""
    oa_good = [oa('{"role":"assistant","content":""}'), oa_text(lit("alpha ")),
               oa_text(lit("beta "))]
    an_good = [an_start(23), an_block(), an_text(lit("alpha ")), an_text(lit("beta "))]
    state = {}

    def handler(conn_no, req_no, raw, s):
        good = oa_good if state["fmt"] == "openai" else an_good
        half = (oa_text if state["fmt"] == "openai" else an_text)(lit("gamma delta"))[:45]
        s.sendall(framed(good, "chunked")[0][:-5] + b"%x\r\n%s" % (len(half) + 20, half))
        time.sleep(0.2)
        reset(s)
        return False

    with Script(handler) as fp, start(env, fp.port) as tg:
        spent = 0
        bad = []
        for fmt, path, b in (("openai", CHAT, chat_body()),
                             ("openai", CHAT, chat_body(stream_options={"include_usage": True})),
                             ("anthropic", MESSAGES, msg_body())):
            state["fmt"] = fmt
            good = oa_good if fmt == "openai" else an_good
            with tg.conn() as c:
                c.send(request("POST", path, b, H))
                r = c.response()
                try:
                    check_cut(r, b"".join(good), len(b"".join(good)), fmt, "upstream_failed")
                except (AssertionError, ValueError) as e:
                    bad.append((fmt, b[-50:], "agent got", r.body[-260:], repr(e)[:200]))
                exp = price(bound(b) if fmt == "openai" else 23, counted(good)[0])
                got = charged(tg, r)
                assert got == exp, (fmt, "charged", got, "expected", exp)
                spent += exp
                c.send(request("GET", "/v1/budget", None, H))
                assert c.response().status == 200
        fp.check()
        quiet(tg, spent)
        assert not bad, bad


def test_stream_provider_stall_mid_stream(env):
    """mockllm x-mock-stall-after 3 with the providers' idle_timeout_ms 300:
    about 0.3 s after the last event the stream ends with upstream_timeout
    (both formats), charged what was counted."""
    slack = 3.0 if slow_build(env) else 1.5
    with Mock(env) as mk, start(env, mk.port, idle_ms=300) as tg:
        spent = 0
        with tg.conn(timeout=10) as c:
            for fmt, path, b in (("openai", CHAT, chat_body()), ("anthropic", MESSAGES,
                                                                 msg_body())):
                t0 = time.monotonic()
                c.send(request("POST", path, b, dict(H, **{
                    "x-mock-tokens": "50", "x-mock-stall-after": "3",
                    "x-mock-tokens-per-event": "2"})))
                r = c.response()
                took = time.monotonic() - t0
                assert 0.28 <= took < 0.3 + slack, took
                relayed = split_events(r.body)
                upstream = relayed[:-(2 if fmt == "openai" else 1)]
                check_cut(r, r.body, len(b"".join(upstream)), fmt, "upstream_timeout")
                nbytes, ntext = counted(upstream)
                assert ntext == 3, ntext
                inp = bound(b) if fmt == "openai" else json.loads(
                    parse_sse(upstream[0])[0][1])["message"]["usage"]["input_tokens"]
                exp = price(inp, nbytes)
                got = charged(tg, r)
                assert got == exp, (fmt, "charged", got, "expected", exp)
                spent += exp
        quiet(tg, spent)


def test_stream_reservation_expired_anthropic(env):
    """limits.reservation_ttl_ms 1000 and an Anthropic stream of 40 tokens
    60 ms apart: cut about 1 s in with the Anthropic final event (code
    reservation_expired), terminator, connection reused; charged
    message_start's input + 3 x counted text."""
    with Mock(env) as mk, start(env, mk.port, limits={"reservation_ttl_ms": 1000}) as tg:
        with tg.conn(timeout=10) as c:
            b = msg_body()
            t0 = time.monotonic()
            c.send(request("POST", MESSAGES, b, dict(H, **{
                "x-mock-tokens": "40", "x-mock-token-delay-us": "60000"})))
            r = c.response()
            took = time.monotonic() - t0
            assert 0.9 <= took < 4.0, took
            upstream = split_events(r.body)[:-1]
            check_cut(r, r.body, len(b"".join(upstream)), "anthropic", "reservation_expired")
            nbytes, ntext = counted(upstream)
            assert 5 < ntext < 40, ntext
            inp = json.loads(parse_sse(upstream[0])[0][1])["message"]["usage"]["input_tokens"]
            exp = price(inp, nbytes)
            got = charged(tg, r)
            assert got == exp, ("charged", got, "expected", exp)
            c.send(request("GET", "/v1/budget", None, H))
            assert c.response().status == 200
        quiet(tg, exp)


def test_stream_client_disconnect(env):
    """The agent reads a few events of an endless stream (an event every
    10 ms) and closes: the provider sees its connection closed within a
    second; the call is charged what was counted: input bound + 3 x text,
    at least what the agent saw, at most what the provider wrote, and
    never more than the estimate."""
    e = Endless(lambda i: oa_text(lit("word%03d " % (i % 1000))), 100000, gap=0.01,
                head_events=[oa('{"role":"assistant","content":""}')])

    with Script(e) as fp, start(env, fp.port) as tg:
        b = chat_body(max_tokens=50000)
        c = tg.conn()
        c.send(request("POST", CHAT, b, H))
        status, headers = c.head()
        assert status == 200 and headers.get("transfer-encoding") == "chunked", headers
        seen = b""
        while len(parse_sse(seen)) < 12:
            seen += c.chunk()
        t_close = time.monotonic()
        c.close()
        assert e.done.wait(3.0), "the provider still streams 3 s after the agent left"
        assert e.closed_at is not None and e.closed_at - t_close < 2.0, (
            e.closed_at and e.closed_at - t_close)
        d = decision(tg, headers["x-budget-decision-id"])
        actual = micros(d["actual_usd"])
        low = price(bound(b), counted(split_events(seen))[0])
        high = price(bound(b), counted(e.sent_bytes)[0])
        assert low <= actual <= high, (low, actual, high)
        assert actual <= micros(d["estimate_usd"]), d
        assert d["outcome"] == "committed", d
        fp.check()
        quiet(tg, actual)


# ---------------------------------------------------------------- 9. load

def test_stream_50_concurrent(env):
    """50 streams at once, one per connection, over 2 workers (mockllm,
    5 ms per token; OpenAI with usage and Anthropic): each arrives whole
    and the scopes' committed is exactly the sum of the usages priced;
    nothing stays reserved."""
    n = 50
    results, lock = [], threading.Lock()
    with Mock(env) as mk, start(env, mk.port) as tg:
        def one(i):
            try:
                fmt = "openai" if i % 2 else "anthropic"
                tokens = 10 + i % 17
                hd = dict(H, **{"x-mock-tokens": str(tokens), "x-mock-token-delay-us": "5000"})
                with tg.conn(timeout=20) as c:
                    if fmt == "openai":
                        c.send(request("POST", CHAT, chat_body(
                            stream_options={"include_usage": True}, content="q%d" % i), hd))
                    else:
                        c.send(request("POST", MESSAGES, msg_body(content="q%d" % i), hd))
                    r = c.response()
                evs = parse_sse(r.body)
                if fmt == "openai":
                    assert evs[-1][1] == "[DONE]", evs[-2:]
                    u = json.loads(evs[-2][1])["usage"]
                    inp, out = u["prompt_tokens"], u["completion_tokens"]
                else:
                    assert evs[-1][0] == "message_stop", evs[-2:]
                    inp = json.loads(evs[0][1])["message"]["usage"]["input_tokens"]
                    out = json.loads(evs[-2][1])["usage"]["output_tokens"]
                assert out == tokens, (i, out)
                with lock:
                    results.append(price(inp, out))
            except Exception as ex:     # noqa: B902
                with lock:
                    results.append(ex)
        ts = [threading.Thread(target=one, args=(i,)) for i in range(n)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(30)
        errs = [x for x in results if isinstance(x, Exception)]
        assert not errs and len(results) == n, (len(results), errs[:3])
        quiet(tg, sum(results))


def test_stream_chunks_end_with_their_event(env):
    """Each chunk the agent gets is closed by its own CRLF in the same send:
    a client that reads whole chunks sees an event when it is relayed, not
    when the next one comes (it waited a whole token delay before)."""
    with Mock(env) as m, start(env, m.port) as tg:
        with tg.conn(timeout=10) as c:
            c.send(request("POST", CHAT, chat_body(),
                           dict(H, **{"x-mock-tokens": "4",
                                      "x-mock-token-delay-us": "600000"})))
            status, _ = c.head()
            assert status == 200
            t0 = time.monotonic()
            got = []
            while True:
                data = c.chunk()      # whole chunks only: size, data, CRLF
                got.append((time.monotonic() - t0, data))
                if not data:
                    break
        times = [round(t, 3) for t, _ in got]
        # the role event comes at once, then a text event every 600 ms:
        # each whole chunk must arrive in its own interval, not with the
        # next event
        assert b'"role":"assistant"' in got[0][1] and got[0][0] < 0.3, times
        texts = [t for t, d in got if b'"content":"' in d and b'"content":""' not in d]
        assert len(texts) == 4, got
        assert texts[0] > 0.3, times
        for i in range(1, 4):
            assert texts[i] - texts[i - 1] > 0.3, (i, times)
