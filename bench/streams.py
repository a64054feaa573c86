#!/usr/bin/env python3
"""Many slow metered streams at once on one tollgate worker.

Starts mockllm (CPU 1) and tollgate --workers 1 (CPU 0) on the shipped
config (budgets on, its ledger in a temp dir), opens N client connections
and starts a streamed chat completion on each at once: T tokens, one per
event, D ms apart, so every stream stays open for about T x D ms and all N
are metered concurrently. Reads every stream to its end and checks it: HTTP
200, T content events, `data: [DONE]`, the chunked terminator. Samples
tollgate's RSS while the streams run and reads its CPU time (all threads)
before and after. Prints a JSON object; bench/run.sh records it.

usage: bench/streams.py [--build build] [--streams 5000] [--tokens 50] [--delay-ms 100]
"""
import argparse, json, os, selectors, socket, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conns import rss_kib, start_pinned, stop, wait_port  # noqa: E402


def request(tokens, delay_ms):
    body = (b'{"model":"gpt-4o-mini","max_tokens":%d,"stream":true,'
            b'"messages":[{"role":"user","content":"hi"}]}' % (tokens + 16))
    return (b"POST /v1/chat/completions HTTP/1.1\r\nHost: b\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer tg-demo-key-change-me\r\n"
            b"x-mock-tokens: %d\r\nx-mock-token-delay-us: %d\r\n"
            b"Content-Length: %d\r\n\r\n" % (tokens, delay_ms * 1000, len(body)) + body)


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def nearest_rank(sorted_values, q):
    if not sorted_values:
        return 0.0
    k = max(0, -(-len(sorted_values) * q // 100) - 1)
    return sorted_values[int(k)]


def run_streams(port, n, tokens, delay_ms, tg_pid):
    """Starts n streams at once; returns (ok, errors, durations, peak RSS KiB)."""
    req = request(tokens, delay_ms)
    sel = selectors.DefaultSelector()
    state = {}
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.setblocking(False)
        state[s] = [b"", time.monotonic()]
        sel.register(s, selectors.EVENT_READ)
    for s in state:
        s.sendall(req)
    ok = errors = 0
    durations, peak = [], 0
    deadline = time.monotonic() + tokens * delay_ms / 1000 * 4 + 60
    next_sample = 0.0
    while state and time.monotonic() < deadline:
        if time.monotonic() >= next_sample:
            peak = max(peak, rss_kib(tg_pid))
            next_sample = time.monotonic() + 0.25
        for key, _ in sel.select(timeout=0.25):
            s = key.fileobj
            try:
                data = s.recv(65536)
            except BlockingIOError:
                continue
            st = state[s]
            if data:
                st[0] += data
                if not st[0].endswith(b"0\r\n\r\n"):
                    continue
            buf = st[0]
            good = (data and buf.startswith(b"HTTP/1.1 200") and b"data: [DONE]" in buf and
                    buf.count(b'"content":"') >= tokens)
            if good:
                ok += 1
                durations.append(time.monotonic() - st[1])
            else:
                errors += 1
            sel.unregister(s)
            s.close()
            del state[s]
    errors += len(state)
    for s in state:
        s.close()
    sel.close()
    return ok, errors, sorted(durations), peak


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build")
    ap.add_argument("--streams", type=int, default=5000)
    ap.add_argument("--tokens", type=int, default=50)
    ap.add_argument("--delay-ms", type=int, default=100)
    a = ap.parse_args()
    tmp, mport, tport, mock, tg = start_pinned(a.build, a.streams, "tollgate-streams-")
    try:
        wait_port(mport)
        wait_port(tport)
        rss0 = rss_kib(tg.pid)
        cpu0, t0 = cpu_seconds(tg.pid), time.monotonic()
        ok, errors, durations, peak = run_streams(tport, a.streams, a.tokens, a.delay_ms, tg.pid)
        wall = time.monotonic() - t0
        cpu = cpu_seconds(tg.pid) - cpu0
        alive = tg.poll() is None
        events = ok * a.tokens
        result = {
            "streams": a.streams, "tokens_per_stream": a.tokens, "token_delay_ms": a.delay_ms,
            "ok": ok, "errors": errors, "wall_s": round(wall, 2),
            "stream_s_min": round(durations[0], 2) if durations else None,
            "stream_s_p50": round(nearest_rank(durations, 50), 2),
            "stream_s_p99": round(nearest_rank(durations, 99), 2),
            "stream_s_max": round(durations[-1], 2) if durations else None,
            "tollgate_cpu_s": round(cpu, 2),
            "cpu_us_per_event": round(cpu * 1e6 / events, 2) if events else None,
            "cpu_busy_pct": round(100 * cpu / wall, 1) if wall else None,
            "rss_before_kib": rss0, "rss_peak_kib": peak,
            "rss_bytes_per_stream": round((peak - rss0) * 1024 / a.streams),
            "tollgate_alive": alive,
        }
        print(json.dumps(result))
        return 0 if (errors == 0 and alive) else 1
    finally:
        stop(tmp, mock, tg)


if __name__ == "__main__":
    sys.exit(main())
