"""End-to-end: the exact request tollgate sends upstream, and reply heads.

mockllm does not echo what it received, so these tests put a scripted
provider (harness.FakeProvider) behind tollgate and look at the raw bytes:
the path and query, Host, a Content-Length framing of the body (whatever the
agent's framing), the agent's own fields passed on unchanged, hop-by-hop
fields (including those named in Connection) and the agent's credentials
dropped, the provider key injected. On the way back, hop-by-hop reply fields
are dropped and a close-delimited reply is passed on to its end.
"""

import json

from harness import (CHAT, MESSAGES, FakeProvider, Tollgate, call, parse_request, problem,
                     request)

BODY = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}).encode()
KEYS = {"OPENAI_API_KEY": "sk-provider-openai", "ANTHROPIC_API_KEY": "sk-provider-anthropic"}


def reply(body=b'{"ok":true}', extra=b""):
    return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n%sContent-Length: %d\r\n\r\n%s"
            % (extra, len(body), body))


def fields_of(raw):
    line, fields, body = parse_request(raw)
    by_name = {}
    for name, value in fields:
        by_name.setdefault(name.lower(), []).append(value)
    return line, fields, by_name, body


HOP_BY_HOP = ("connection", "keep-alive", "proxy-connection", "proxy-authorization", "te",
              "trailer", "transfer-encoding", "upgrade", "expect")


def test_upstream_request_rewrite(env):
    with FakeProvider(lambda c, n, raw: reply()) as fp, \
            Tollgate(env, mock_port=fp.port, env_vars=KEYS) as tg:
        agent_fields = (
            b"Authorization: Bearer agent-secret-1\r\n"
            b"X-Api-Key: agent-secret-2\r\n"
            b"Connection: keep-alive, X-Hop-Secret\r\n"
            b"X-Hop-Secret: agent-secret-3\r\n"
            b"Keep-Alive: timeout=5\r\n"
            b"TE: trailers\r\n"
            b"Proxy-Authorization: Basic YWdlbnQtc2VjcmV0LTQ=\r\n"
            b"Proxy-Connection: keep-alive\r\n"
            b"X-Custom: Value  With  Spaces\r\n"
            b"User-Agent: e2e/1.0\r\n"
            b"Accept: text/event-stream\r\n")
        for chunked in (False, True):
            if chunked:
                framing = b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (
                    len(BODY), BODY)
            else:
                framing = b"Content-Length: %d\r\n\r\n%s" % (len(BODY), BODY)
            with tg.conn() as c:
                c.send(b"POST /v1/chat/completions?api-version=2024-06-01 HTTP/1.1\r\n"
                       b"Host: gateway.example\r\n" + agent_fields + framing)
                r = c.response()
                assert r.status == 200 and r.body == b'{"ok":true}', r
            line, fields, by_name, body = fields_of(fp.requests[-1][1])
            assert line == "POST /v1/chat/completions?api-version=2024-06-01 HTTP/1.1", line
            assert body == BODY, body
            assert by_name["content-length"] == [str(len(BODY))], by_name
            assert by_name["host"] == ["127.0.0.1:%d" % fp.port], by_name
            for name in HOP_BY_HOP + ("x-hop-secret", "x-api-key"):
                assert name not in by_name, (name, fields)
            assert by_name["authorization"] == ["Bearer sk-provider-openai"], by_name
            assert b"agent-secret" not in fp.requests[-1][1], fp.requests[-1][1]
            assert ("X-Custom", "Value  With  Spaces") in fields, fields
            assert by_name["user-agent"] == ["e2e/1.0"], by_name
            assert by_name["accept"] == ["text/event-stream"], by_name

        # Anthropic: the key goes in x-api-key, and no Authorization at all.
        body = json.dumps({"model": "claude-sonnet-4", "max_tokens": 5}).encode()
        with tg.conn() as c:
            c.send(request("POST", MESSAGES, body, {"x-api-key": "agent-secret-5",
                                                    "anthropic-version": "2023-06-01"}))
            assert c.response().status == 200
        line, fields, by_name, got = fields_of(fp.requests[-1][1])
        assert line == "POST /v1/messages HTTP/1.1" and got == body, (line, got)
        assert by_name["x-api-key"] == ["sk-provider-anthropic"], by_name
        assert "authorization" not in by_name, by_name
        assert by_name["anthropic-version"] == ["2023-06-01"], by_name


def test_no_provider_key_configured(env):
    with FakeProvider(lambda c, n, raw: reply()) as fp, \
            Tollgate(env, mock_port=fp.port, env_vars={"OPENAI_API_KEY": ""}) as tg:
        r = call(tg, CHAT, BODY, {"Authorization": "Bearer agent-secret"})
        assert r.status == 200, r
        _, _, by_name, _ = fields_of(fp.requests[-1][1])
        assert "authorization" not in by_name, by_name


def test_reply_head_rewrite(env):
    def respond(conn_no, req_no, raw):
        path = parse_request(raw)[0].split()[1]
        if "close-delimited" in path:
            return (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                    b"Connection: close\r\n\r\ndata: one\n\ndata: two\n\ndata: [DONE]\n\n", True)
        if "hop" in path:
            return reply(extra=b"Connection: keep-alive, X-Hop\r\nX-Hop: secret\r\n"
                               b"Keep-Alive: timeout=5\r\nX-Request-Id: req-123\r\n")
        if "bighead" in path:
            return reply(extra=b"X-Big: " + b"h" * 20000 + b"\r\n")
        return reply()
    with FakeProvider(respond) as fp, Tollgate(env, mock_port=fp.port) as tg:
        with tg.conn() as c:
            c.send(request("POST", CHAT + "?hop", BODY))
            r = c.response()
            assert r.status == 200 and r.body == b'{"ok":true}', r
            assert r.headers.get("x-request-id") == "req-123", r.headers
            for name in ("x-hop", "keep-alive"):
                assert name not in r.headers, (name, r.headers)
            assert "close" not in r.headers.get("connection", ""), r.headers
            # A reply delimited by the provider's close ends the agent's
            # connection too, after the whole body.
            c.send(request("POST", CHAT + "?close-delimited", BODY))
            status, headers = c.head()
            assert status == 200 and headers.get("connection") == "close", headers
            assert "transfer-encoding" not in headers and "content-length" not in headers
            assert c.rest() == b"data: one\n\ndata: two\n\ndata: [DONE]\n\n"
        # A reply head larger than tollgate will buffer: 502.
        problem(call(tg, CHAT + "?bighead", BODY), 502)
        assert call(tg, CHAT, BODY).status == 200


def test_stale_pooled_connection_is_retried(env):
    # The provider closes a kept-alive connection just as the next request
    # arrives on it (it reads the request, then closes without a byte):
    # tollgate retries once on a fresh connection and the agent sees a 200.
    def respond(conn_no, req_no, raw):
        return reply() if req_no == 0 else None
    with FakeProvider(respond) as fp, Tollgate(env, mock_port=fp.port, workers=1) as tg:
        with tg.conn() as c:
            for i in range(4):
                c.send(request("POST", CHAT, BODY))
                r = c.response()
                assert r.status == 200, (i, r)
        # Each request after the first: one try on the stale pooled
        # connection, one on a fresh one.
        assert fp.accepted == 4, fp.accepted
        assert len(fp.requests) == 1 + 3 * 2, len(fp.requests)

    # A fresh connection that closes without a reply is not retried: 502.
    with FakeProvider(lambda c, n, raw: None) as fp, \
            Tollgate(env, mock_port=fp.port, workers=1) as tg:
        problem(call(tg, CHAT, BODY), 502)
        assert len(fp.requests) == 1, fp.requests


def test_upgrade_request_body_is_not_a_request(env):
    # `Connection: Upgrade` with a body: the body is this request's body,
    # never parsed as a request of its own (there is no protocol switch).
    with FakeProvider(lambda c, n, raw: reply()) as fp, Tollgate(env, mock_port=fp.port) as tg:
        inner = request("GET", "/v1/models")
        for extra in (b"", b"Transfer-Encoding: chunked\r\n"):
            if extra:
                body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(inner), inner)
            else:
                body = inner
                extra = b"Content-Length: %d\r\n" % len(inner)
            with tg.conn() as c:
                c.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: e2e\r\n"
                       b"Connection: Upgrade\r\nUpgrade: websocket\r\n%s\r\n%s" % (extra, body))
                problem(c.response(), 400, "invalid_json")
                assert c.silent_for(0.3) or c.closed_within(0.5), c.buf
        assert not fp.requests
