#!/usr/bin/env python3
"""HTTPS on the agent side: tollgate (mbedTLS) next to nginx (OpenSSL).

Both terminate TLS with the same certificate (ECDSA P-256, made here with
the openssl CLI) and the same suite (ECDHE-ECDSA-AES128-GCM-SHA256, X25519)
and relay to one plain mockllm. Proxies run one worker on CPU 0; mockllm
and wrk run on CPU 1. Two measurements per target, each --runs times:

  keepalive   wrk -c50 over HTTPS keep-alive, the non-streaming workload
              (bench/nonstream.lua): requests/s and the proxy's CPU us/request
  handshake   wrk -c20 with "Connection: close" on a reply the proxy makes
              itself (tollgate GET /v1/models, nginx `return 200`): every
              request is a full handshake (wrk keeps no sessions): handshakes/s
              and the proxy's CPU us/handshake

Targets: nginx; tollgate-relay (no keys); tollgate (the bench key, budgets
on). Prints one JSON object; bench/run.sh records it, bench/report.py
renders it. Medians over runs.

usage: bench/tls.py [--build build] [--runs 2] [--duration 10]
"""
import argparse, json, os, re, shutil, socket, statistics, subprocess, sys, tempfile, time

HERE = os.path.dirname(os.path.abspath(__file__))
SUITE = "ECDHE-ECDSA-AES128-GCM-SHA256"
BENCH_KEY = "tg-bench-key"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, proc, deadline=5.0):
    end = time.time() + deadline
    while time.time() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited at start: {proc.args}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} did not open")


def cpu_ticks(pids):
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        total += int(rest[11]) + int(rest[12])
    return total


def make_cert(tmp):
    key, crt = os.path.join(tmp, "ec.key"), os.path.join(tmp, "ec.crt")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out", crt,
                    "-days", "2", "-subj", "/CN=localhost"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return crt, key


def start_nginx(tmp, port, mport, crt, key):
    os.makedirs(os.path.join(tmp, "ngx"), exist_ok=True)
    conf = os.path.join(tmp, "nginx.conf")
    open(conf, "w").write(f"""
worker_processes 1;
daemon off;
master_process on;
pid {tmp}/nginx.pid;
lock_file {tmp}/nginx.lock;
error_log {tmp}/nginx.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/ngx/body;
    proxy_temp_path {tmp}/ngx/proxy;
    fastcgi_temp_path {tmp}/ngx/fastcgi;
    uwsgi_temp_path {tmp}/ngx/uwsgi;
    scgi_temp_path {tmp}/ngx/scgi;
    keepalive_requests 1000000;
    upstream mock {{ server 127.0.0.1:{mport}; keepalive 64; keepalive_requests 1000000; }}
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {crt};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2;
        ssl_ciphers {SUITE};
        ssl_ecdh_curve X25519;
        ssl_session_cache off;
        ssl_session_tickets off;
        location = /hs {{ return 200 "ok\\n"; }}
        location / {{
            proxy_pass http://mock;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
}}
""")
    p = subprocess.Popen(["taskset", "-c", "0", "nginx", "-p", tmp, "-e", f"{tmp}/nginx.log",
                          "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, p)
    worker = None
    for _ in range(50):
        try:
            kids = open(f"/proc/{p.pid}/task/{p.pid}/children").read().split()
        except OSError:
            kids = []
        if kids:
            worker = int(kids[0])
            break
        time.sleep(0.1)
    if not worker:
        raise RuntimeError("nginx started no worker")
    return p, [p.pid, worker]


def start_tollgate(build, tmp, name, port, mport, crt, key, budgets):
    conf = f"""
listen:
  - addr: "127.0.0.1:{port}"
    tls: {{cert: "{crt}", key: "{key}"}}
workers: 1
pin: false
providers:
  mock-openai:
    base_url: "http://127.0.0.1:{mport}/v1"
    format: openai
prices_version: "bench"
models:
  gpt-4o:
    provider: mock-openai
    input_usd_per_mtok: "2.50"
    output_usd_per_mtok: "10.00"
    max_output_tokens: 16384
    context_tokens: 128000
"""
    if budgets:
        import hashlib
        conf += f"""
orgs:
  bench-org: {{ budget: {{ limit: "100000000" }} }}
teams:
  bench-team: {{ parent: bench-org, budget: {{ limit: "10000000" }} }}
keys:
  - id: bench
    secret_sha256: "{hashlib.sha256(BENCH_KEY.encode()).hexdigest()}"
    team: bench-team
    models: [gpt-4o]
    budget: {{ limit: "1000000" }}
"""
    path = os.path.join(tmp, f"{name}.yaml")
    open(path, "w").write(conf)
    p = subprocess.Popen(["taskset", "-c", "0", f"{build}/tollgate", "-c", path, "--workers", "1"],
                         stdout=subprocess.DEVNULL,
                         stderr=open(os.path.join(tmp, f"{name}.log"), "w"))
    wait_port(port, p)
    return p, [p.pid]


def negotiated(port):
    """The suite and key exchange a client gets, as openssl s_client reports."""
    out = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}"],
                         input=b"", capture_output=True, timeout=10).stdout.decode(errors="replace")
    suite = re.search(r"Cipher is (\S+)", out)
    kx = re.search(r"Server Temp Key: ([^\n]+)", out)
    return {"suite": suite.group(1) if suite else None, "kx": kx.group(1).strip() if kx else None}


def wrk(url, conns, duration, script):
    out = subprocess.run(["taskset", "-c", "1", "wrk", "-t1", f"-c{conns}", f"-d{duration}s",
                          "-s", script, url], capture_output=True, timeout=duration * 3 + 30
                         ).stdout.decode(errors="replace")
    m = re.search(r"^WRK_JSON (.*)$", out, re.M)
    if not m:
        raise RuntimeError("wrk printed no result: " + out[-300:])
    return json.loads(m.group(1)), out


def measure(pids, url, conns, duration, script):
    before = cpu_ticks(pids)
    res, raw = wrk(url, conns, duration, script)
    after = cpu_ticks(pids)
    tick_us = 1e6 / os.sysconf("SC_CLK_TCK")
    n = res.get("requests", 0)
    errors = sum(res.get(k, 0) for k in ("status_errors", "connect_errors", "read_errors",
                                          "write_errors", "timeouts"))
    return {"requests": n, "rps": n / duration, "errors": errors,
            "cpu_us_per_req": (after - before) * tick_us / n if n else None}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default="build")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--duration", type=int, default=10)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="tollgate-tls-bench.")
    procs = []
    try:
        crt, key = make_cert(tmp)
        mport = free_port()
        mock = subprocess.Popen(["taskset", "-c", "1", f"{args.build}/mockllm", "--listen",
                                 f"127.0.0.1:{mport}", "--threads", "1", "--quiet"],
                                stderr=subprocess.DEVNULL)
        procs.append(mock)
        wait_port(mport, mock)
        targets = {}
        port = free_port()
        p, pids = start_nginx(tmp, port, mport, crt, key)
        procs.append(p)
        targets["nginx"] = (port, pids, "/hs")
        for name, budgets in (("tollgate-relay", False), ("tollgate", True)):
            port = free_port()
            p, pids = start_tollgate(args.build, tmp, name, port, mport, crt, key, budgets)
            procs.append(p)
            targets[name] = (port, pids, "/v1/models")
        # the keep-alive workload with the bench key header; handshakes on a local reply
        close_lua = os.path.join(tmp, "close.lua")
        open(close_lua, "w").write(
            'wrk.method = "GET"\nwrk.headers["Connection"] = "close"\n'
            'wrk.headers["Authorization"] = "Bearer %s"\n'
            'local common = dofile("%s/common.lua")\ndone = common.done\n' % (BENCH_KEY, HERE))
        result = {"suite": SUITE, "cert": "ECDSA P-256", "runs": args.runs,
                  "duration_s": args.duration, "targets": {}}
        samples = {t: {"keepalive": [], "handshake": []} for t in targets}
        for t, (port, pids, _) in targets.items():
            result["targets"][t] = {"negotiated": negotiated(port)}
        for r in range(args.runs):
            for t, (port, pids, hs_path) in targets.items():
                base = f"https://127.0.0.1:{port}"
                samples[t]["keepalive"].append(
                    measure(pids, base + "/v1/chat/completions", 50, args.duration,
                            os.path.join(HERE, "nonstream.lua")))
                time.sleep(1)
                samples[t]["handshake"].append(
                    measure(pids, base + hs_path, 20, args.duration, close_lua))
                time.sleep(1)
                for pr in procs:
                    if pr.poll() is not None:
                        raise RuntimeError(f"{pr.args[3] if len(pr.args) > 3 else pr.args} died")
        for t in targets:
            for kind in ("keepalive", "handshake"):
                runs = samples[t][kind]
                med = lambda k: statistics.median(x[k] for x in runs if x[k] is not None)
                result["targets"][t][kind] = {
                    "rps": med("rps"), "cpu_us_per_req": med("cpu_us_per_req"),
                    "errors": sum(x["errors"] for x in runs),
                    "rps_runs": [round(x["rps"]) for x in runs],
                    "cpu_runs": [round(x["cpu_us_per_req"], 1) for x in runs
                                 if x["cpu_us_per_req"] is not None]}
        print(json.dumps(result))
        return 0
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
