#!/usr/bin/env python3
"""Many concurrent keep-alive connections on one tollgate worker.

Starts mockllm (CPU 1) and tollgate --workers 1 (CPU 0), opens N client
connections, sends one request on each and reads every reply (all N are
open at once), then measures tollgate's resident memory per idle keep-alive
connection (RSS with N idle connections minus RSS before they were opened,
divided by N), then sends a second request on every connection to show
they are all still alive. Prints a JSON object; bench/run.sh records it.

usage: bench/conns.py [--build build] [--conns 10000]
"""
import argparse, json, os, resource, selectors, shutil, socket, subprocess, sys, tempfile, time

BODY = b'{"model":"gpt-4o","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}'
# The shipped config's demo key: every request is authenticated and budgeted.
REQ = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: b\r\nContent-Type: application/json\r\n"
       b"Authorization: Bearer tg-demo-key-change-me\r\n"
       b"Content-Length: " + str(len(BODY)).encode() + b"\r\n\r\n" + BODY)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def wait_port(port, deadline=5.0):
    end = time.time() + deadline
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} did not open")


def start_pinned(build, in_flight, prefix):
    """mockllm on CPU 1 and tollgate --workers 1 on CPU 0, on the shipped
    config (budgets on) opened up for `in_flight` connections and calls at
    once, its ledger in a new temp dir: (tmp, mock port, tollgate port,
    mock, tollgate). stop() ends them."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, in_flight * 2 + 1000)), hard))
    tmp = tempfile.mkdtemp(prefix=prefix)
    mport, tport = free_port(), free_port()
    conf = open("conf/tollgate.yaml").read()
    conf = conf.replace("127.0.0.1:8081", f"127.0.0.1:{mport}").replace("127.0.0.1:8080", f"127.0.0.1:{tport}")
    conf = conf.replace("max_connections: 20000", f"max_connections: {max(20000, in_flight + 100)}")
    conf = conf.replace("max_requests: 4096", f"max_requests: {max(4096, in_flight + 100)}")
    # budgets far above what the runs spend: this measures connections and
    # streams, and at the shipped $5 key limit thousands of worst cases in
    # flight at once can be refused (402) when the machine is slow to settle
    for limit in ('"5.00"', '"20.00"', '"100.00"'):
        conf = conf.replace(f"limit: {limit}", 'limit: "1000000.00"')
    conf = conf.replace('dir: "var/ledger"', f'dir: "{tmp}/ledger"')   # not the repo's
    cpath = os.path.join(tmp, "tollgate.yaml")
    open(cpath, "w").write(conf)
    mock = subprocess.Popen(["taskset", "-c", "1", f"{build}/mockllm", "--listen",
                             f"127.0.0.1:{mport}", "--quiet"], stderr=subprocess.DEVNULL)
    tg = subprocess.Popen(["taskset", "-c", "0", f"{build}/tollgate", "-c", cpath, "--workers", "1"],
                          stderr=open(os.path.join(tmp, "tollgate.log"), "w"))
    return tmp, mport, tport, mock, tg


def stop(tmp, mock, tg):
    tg.terminate()
    mock.terminate()
    tg.wait(10)
    mock.wait(10)
    shutil.rmtree(tmp, ignore_errors=True)


def one_round(socks):
    """Sends REQ on every socket and reads one complete reply from each."""
    sel = selectors.DefaultSelector()
    pending = {}
    for s in socks:
        s.sendall(REQ)
        pending[s] = b""
        sel.register(s, selectors.EVENT_READ)
    ok = errors = 0
    deadline = time.time() + 60
    while pending and time.time() < deadline:
        for key, _ in sel.select(timeout=1):
            s = key.fileobj
            data = s.recv(65536)
            if not data:
                errors += 1
                sel.unregister(s)
                del pending[s]
                continue
            buf = pending[s] + data
            head_end = buf.find(b"\r\n\r\n")
            if head_end < 0:
                pending[s] = buf
                continue
            head = buf[:head_end].decode("latin1").lower()
            length = int(head.split("content-length:")[1].split("\r\n")[0])
            if len(buf) - head_end - 4 < length:
                pending[s] = buf
                continue
            if head.startswith("http/1.1 200"):
                ok += 1
            else:
                errors += 1
            sel.unregister(s)
            del pending[s]
    errors += len(pending)
    sel.close()
    return ok, errors


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build")
    ap.add_argument("--conns", type=int, default=10000)
    a = ap.parse_args()
    tmp, mport, tport, mock, tg = start_pinned(a.build, a.conns, "tollgate-conns-")
    try:
        wait_port(mport)
        wait_port(tport)
        socks = []
        warm = socket.create_connection(("127.0.0.1", tport))
        one_round([warm])          # first request: pools and exchange warm
        rss0 = rss_kib(tg.pid)
        for _ in range(a.conns):
            socks.append(socket.create_connection(("127.0.0.1", tport)))
        time.sleep(0.5)
        rss_open = rss_kib(tg.pid)       # N accepted connections, no request yet
        ok1, err1 = one_round(socks)
        time.sleep(3)                    # jemalloc returns freed pages within ~1 s
        rss1 = rss_kib(tg.pid)           # N idle keep-alive connections after a request
        ok2, err2 = one_round(socks)
        rss2 = rss_kib(tg.pid)
        alive = tg.poll() is None
        result = {
            "connections": a.conns,
            "round1_ok": ok1, "round1_errors": err1,
            "round2_ok": ok2, "round2_errors": err2,
            "rss_before_kib": rss0, "rss_open_kib": rss_open, "rss_idle_kib": rss1,
            "rss_after_round2_kib": rss2,
            # connection state alone: accepted, waiting, holding no buffer
            "bytes_per_waiting_conn": round((rss_open - rss0) * 1024 / a.conns),
            # after a request: includes the exchange pool grown to N in flight,
            # which is bounded by limits.max_requests, not by connections
            "bytes_per_idle_conn_incl_pool": round((rss1 - rss0) * 1024 / a.conns),
            "tollgate_alive": alive,
        }
        print(json.dumps(result))
        for s in socks:
            s.close()
        return 0 if (err1 == 0 and err2 == 0 and alive) else 1
    finally:
        stop(tmp, mock, tg)


if __name__ == "__main__":
    sys.exit(main())
