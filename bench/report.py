#!/usr/bin/env python3
"""report.py — turns one bench/run.sh work dir into tables and RESULTS.md.

run.sh only orchestrates: it starts the processes, runs wrk and h2load, and
saves their raw output plus the proxies' CPU tick counters in WORK/. This
script parses all of it, takes medians over the runs, checks every target's
pre-flight replies against the direct ones, prints the tables to stdout and,
with --out, writes the whole report (nothing in it is written by hand).

Exit status: 0 when every measurement is clean, 1 when any is flagged
(non-2xx, socket errors, timeouts, a died process, a failed or mismatching
pre-flight, a missing measurement), 2 when the work dir cannot be read.
"""
import argparse
import json
import os
import re
import statistics
import sys

TARGETS = ["direct", "nginx", "haproxy", "tollgate-relay", "tollgate", "tollgate-ledger"]
PROXIES = ["nginx", "haproxy", "tollgate-relay", "tollgate", "tollgate-ledger"]
WORKLOADS = ["nonstream", "stream"]
LABEL = {"direct": "direct (mockllm)", "nginx": "nginx", "haproxy": "HAProxy",
         "tollgate-relay": "tollgate, relay only", "tollgate": "tollgate, budgets on",
         "tollgate-ledger": "tollgate, budgets + ledger"}
WL_LABEL = {"nonstream": "non-stream", "stream": "stream"}
# "CPU 0 other %" above which a run is marked noisy (a warning, not an error).
# At 1,000 req/s loopback softirq work alone is ~10% of CPU 0.
NOISY_PCT = {"wrk": 15, "h2load": 25}


def read_meta(work):
    meta = {}
    with open(os.path.join(work, "meta.tsv")) as f:
        for line in f:
            key, _, value = line.rstrip("\n").partition("\t")
            meta[key] = value
    return meta


def read_measurements(work):
    with open(os.path.join(work, "measurements.tsv")) as f:
        header = f.readline().rstrip("\n").split("\t")
        return [dict(zip(header, line.rstrip("\n").split("\t"))) for line in f if line.strip()]


def percentile(sorted_values, p):
    """Nearest-rank percentile of an ascending list (wrk reports the same way)."""
    if not sorted_values:
        return None
    rank = max(1, -(-len(sorted_values) * p // 100))  # ceil
    return sorted_values[min(len(sorted_values), int(rank)) - 1]


def parse_wrk(path):
    """The WRK_JSON line common.lua prints, plus error lines of wrk's own text."""
    text = open(path, errors="replace").read()
    m = re.search(r"^WRK_JSON (\{.*\})$", text, re.M)
    if not m:
        return {"parse_error": "no WRK_JSON line (wrk failed?): " + text.strip()[-300:]}
    r = json.loads(m.group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", text)
    r["non2xx_text"] = int(non2xx.group(1)) if non2xx else 0
    r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
    r["errors"] = {
        "non-2xx": max(r["status_errors"], r["non2xx_text"]),
        "connect errors": r["connect_errors"], "read errors": r["read_errors"],
        "write errors": r["write_errors"], "timeouts": r["timeouts"]}
    return r


def parse_h2load(out_path, log_path, expected):
    text = open(out_path, errors="replace").read()
    r = {}
    m = re.search(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s", text)
    req = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                    r"(\d+) failed, (\d+) errored, (\d+) timeout", text)
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
    if not (m and req and codes):
        return {"parse_error": "h2load output not understood: " + text.strip()[-300:]}
    secs = float(m.group(1)) / (1000 if m.group(2) == "ms" else 1)
    total, started, done, ok, failed, errored, timeout = map(int, req.groups())
    lat, bad_status = [], 0
    if os.path.exists(log_path):
        for line in open(log_path):
            cols = line.split("\t")
            if len(cols) < 3:
                continue
            if not cols[1].startswith("2"):
                bad_status += 1
            lat.append(int(cols[2]))
    lat.sort()
    r.update(requests=done, rps=done / secs if secs else 0.0, seconds=secs,
             p50_us=percentile(lat, 50), p99_us=percentile(lat, 99),
             p999_us=percentile(lat, 99.9), max_us=lat[-1] if lat else None,
             mean_us=statistics.fmean(lat) if lat else None)
    non2xx = int(codes.group(2)) + int(codes.group(3)) + int(codes.group(4))
    r["errors"] = {"non-2xx": max(non2xx, bad_status), "failed": failed,
                   "errored": errored, "timeouts": timeout,
                   "not completed": max(0, expected - done)}
    return r


def check_preflight(work, meta):
    """Compares every target's pre-flight replies with direct's. Returns
    {target: [problems]} and facts about the replies for the report."""
    raw = os.path.join(work, "raw")
    problems = {t: [] for t in TARGETS}
    facts = {}

    def body(t, wl):
        p = os.path.join(raw, f"preflight-{t}-{wl}.body")
        return open(p, "rb").read() if os.path.exists(p) else None

    def header_bytes(t, wl):
        p = os.path.join(raw, f"preflight-{t}-{wl}.hdr")
        return os.path.getsize(p) if os.path.exists(p) else None

    def events(b):
        return [ln for ln in b.split(b"\n") if ln.startswith(b"data:")]

    ref_ns, ref_st = body("direct", "nonstream"), body("direct", "stream")
    if ref_ns is not None:
        facts["reply_bytes"] = len(ref_ns)
    if ref_st is not None:
        facts["stream_bytes"] = len(ref_st)
        facts["stream_events"] = len(events(ref_st))
    for t in TARGETS:
        facts[f"hdr_{t}"] = (header_bytes(t, "nonstream"), header_bytes(t, "stream"))
        b = body(t, "nonstream")
        if b is None or ref_ns is None:
            problems[t].append("no non-stream pre-flight reply")
        else:
            try:
                doc = json.loads(b)
                got = doc.get("usage", {}).get("completion_tokens")
                if got != int(meta["nonstream_tokens"]):
                    problems[t].append(f"non-stream reply has completion_tokens={got}")
            except ValueError:
                problems[t].append(f"non-stream reply is not JSON ({len(b)} bytes)")
            if abs(len(b) - len(ref_ns)) > 16:
                problems[t].append(f"non-stream reply {len(b)} bytes, direct {len(ref_ns)}")
        b = body(t, "stream")
        if b is None or ref_st is None:
            problems[t].append("no stream pre-flight reply")
        else:
            ev, ref_ev = events(b), events(ref_st)
            if len(ev) != len(ref_ev):
                problems[t].append(f"stream reply has {len(ev)} SSE events, direct {len(ref_ev)}")
            if not ev or ev[-1].strip() != b"data: [DONE]":
                problems[t].append("stream reply does not end with data: [DONE]")
    return problems, facts


def cpu_us_per_req(m, requests, clk):
    if requests <= 0:
        return None
    before, after = int(m["cpu_before"]), int(m["cpu_after"])
    if before < 0 or after < 0:
        return None
    return (after - before) * 1e6 / clk / requests


def cpu0_other_pct(m, r):
    """CPU 0's busy time during the run that was not the proxy's, as % of the
    run: other processes, kernel threads, interrupts. High values mean
    something else disturbed the measurement."""
    try:
        a = [int(x) for x in m["cpu0_before"].split()[1:]]
        b = [int(x) for x in m["cpu0_after"].split()[1:]]
    except (KeyError, ValueError):
        return None
    d = [y - x for x, y in zip(a, b)]
    busy = d[0] + d[1] + d[2] + d[5] + d[6] + d[7]   # user nice system irq softirq steal
    total = sum(d[:8])
    if total <= 0:
        return None
    proxy = 0
    if m["target"] != "direct":
        proxy = int(m["cpu_after"]) - int(m["cpu_before"])
    return max(0.0, 100.0 * (busy - proxy) / total)


def collect(work, meta, measurements):
    clk = int(meta.get("clk_tck", "100"))
    fixed_expected = int(meta["fixed_rate"]) * int(meta["duration"])
    rows = []
    for m in measurements:
        raw = os.path.join(work, "raw", m["raw"])
        if m["kind"] == "wrk":
            r = parse_wrk(raw + ".out")
        else:
            r = parse_h2load(raw + ".out", raw + ".log", fixed_expected)
        r.update(kind=m["kind"], target=m["target"], workload=m["workload"],
                 run=int(m["run"]), rc=int(m["rc"]), alive=m["alive"] == "1")
        if "parse_error" not in r:
            r["cpu_us"] = (cpu_us_per_req(m, r["requests"], clk)
                           if m["target"] != "direct" else None)
            r["cpu_ns_us"] = ((int(m["ns_after"]) - int(m["ns_before"])) / 1e3 / r["requests"]
                              if m["target"] != "direct" and r["requests"] > 0 else None)
            r["busy_pct"] = (r["cpu_us"] * r["rps"] / 1e4 if r["cpu_us"] is not None else None)
            r["cpu0_other_pct"] = cpu0_other_pct(m, r)
            mock = dict(m, cpu_before=m["mock_before"], cpu_after=m["mock_after"])
            r["mock_cpu_us"] = cpu_us_per_req(mock, r["requests"], clk)
        flags = []
        if "parse_error" in r:
            flags.append(r["parse_error"])
        else:
            flags += [f"{n} {what}" for what, n in r["errors"].items() if n]
        if r["rc"] not in (0,):
            flags.append(f"exit status {r['rc']}" + (" (killed by timeout)" if r["rc"] == 124 else ""))
        if not r["alive"]:
            flags.append("process died")
        r["flags"] = flags
        other = r.get("cpu0_other_pct")
        limit = NOISY_PCT[r["kind"]]
        r["warnings"] = ([f"CPU 0 was {other:.0f}% busy with other work (limit {limit}%)"]
                         if other is not None and other > limit else [])
        rows.append(r)
    return rows


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarize(rows, meta, preflight_problems):
    """Median per (kind, target, workload), plus the flags of its runs."""
    runs = int(meta["runs"])
    summary = {}
    for kind, wls in (("wrk", WORKLOADS), ("h2load", ["nonstream"])):
        for wl in wls:
            for t in TARGETS:
                rs = [r for r in rows if (r["kind"], r["target"], r["workload"]) == (kind, t, wl)]
                ok = [r for r in rs if "parse_error" not in r]
                flags, warnings = [], []
                for r in rs:
                    flags += [f"run {r['run']}: {f}" for f in r["flags"]]
                    warnings += [f"run {r['run']}: {f}" for f in r["warnings"]]
                if len(rs) < runs:
                    note = meta.get(f"final_note_{t}") or "not measured"
                    flags.append(f"{runs - len(rs)} of {runs} runs missing ({note})")
                flags += [f"pre-flight: {p}" for p in preflight_problems.get(t, [])]
                summary[(kind, t, wl)] = {
                    "n": len(ok), "flags": flags, "warnings": warnings,
                    **{k: med([r.get(k) for r in ok]) for k in
                       ("rps", "p50_us", "p99_us", "p999_us", "cpu_us", "cpu_ns_us",
                        "busy_pct", "mock_cpu_us")},
                    "max_us": max([r["max_us"] for r in ok if r.get("max_us") is not None],
                                  default=None),
                }
    return summary


# ---- formatting --------------------------------------------------------------

def fint(v):
    return "—" if v is None else f"{v:,.0f}"


def fcpu(v):
    return "—" if v is None else f"{v:,.1f}"


def fdelta(v, ref):
    if v is None or ref is None:
        return "—"
    return f"{v - ref:+,.0f}"


def fratio(a, b):
    return "—" if a is None or b is None or b == 0 else f"{a / b:.2f}×"


def status(s):
    if s["flags"]:
        return "**FLAGGED** (see Flags)"
    return "ok, noisy (see Flags)" if s["warnings"] else "ok"


def table(header, align, rows):
    out = ["| " + " | ".join(header) + " |",
           "|" + "|".join(":--" if a == "l" else "--:" for a in align) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def closed_loop_table(summary, wl):
    d = summary[("wrk", "direct", wl)]
    rows = []
    for t in TARGETS:
        s = summary[("wrk", t, wl)]
        proxy = t != "direct"
        rows.append([LABEL[t], fint(s["rps"]), fint(s["p50_us"]), fint(s["p99_us"]),
                     fdelta(s["p50_us"], d["p50_us"]) if proxy else "",
                     fdelta(s["p99_us"], d["p99_us"]) if proxy else "",
                     f"**{fcpu(s['cpu_us'])}**" if proxy else "—",
                     fint(s["busy_pct"]) if proxy else "—", status(s)])
    return table(["target", "req/s", "p50 µs", "p99 µs", "+p50 µs", "+p99 µs",
                  "proxy CPU µs/req", "proxy core busy %", "status"], "lrrrrrrrl", rows)


def fixed_rate_table(summary):
    d = summary[("h2load", "direct", "nonstream")]
    rows = []
    for t in TARGETS:
        s = summary[("h2load", t, "nonstream")]
        proxy = t != "direct"
        rows.append([LABEL[t], fint(s["rps"]), fint(s["p50_us"]), fint(s["p99_us"]),
                     fint(s["p999_us"]), fint(s["max_us"]),
                     fdelta(s["p50_us"], d["p50_us"]) if proxy else "",
                     fdelta(s["p99_us"], d["p99_us"]) if proxy else "",
                     fcpu(s["cpu_us"]) if proxy else "—", status(s)])
    return table(["target", "req/s", "p50 µs", "p99 µs", "p99.9 µs", "max µs",
                  "+p50 µs", "+p99 µs", "proxy CPU µs/req", "status"], "lrrrrrrrrl", rows)


def headline_table(summary):
    rows = []
    for t in PROXIES:
        rows.append([LABEL[t]] + [fcpu(summary[("wrk", t, wl)]["cpu_us"]) for wl in WORKLOADS]
                    + [fcpu(summary[("h2load", t, "nonstream")]["cpu_us"])])
    for mine, other in (("tollgate", "haproxy"), ("tollgate", "nginx"),
                        ("tollgate", "tollgate-relay"), ("tollgate-ledger", "tollgate"),
                        ("tollgate-ledger", "haproxy")):
        rows.append([f"{LABEL[mine]} / {LABEL[other]}"] + [
            fratio(summary[(k, mine, wl)]["cpu_us"], summary[(k, other, wl)]["cpu_us"])
            for k, wl in (("wrk", "nonstream"), ("wrk", "stream"), ("h2load", "nonstream"))])
    return table(["relay", "non-stream µs/req", "stream µs/req", "non-stream at 1,000 req/s µs/req"],
                 "lrrr", rows)


def runs_table(rows):
    out = []
    for r in sorted(rows, key=lambda r: (r["kind"] != "wrk", r["workload"],
                                         TARGETS.index(r["target"]), r["run"])):
        if "parse_error" in r:
            out.append([r["kind"], WL_LABEL[r["workload"]], LABEL[r["target"]], str(r["run"]),
                        "—", "—", "—", "—", "—", "—", "—", "—", "—", "; ".join(r["flags"])])
            continue
        out.append([r["kind"], WL_LABEL[r["workload"]], LABEL[r["target"]], str(r["run"]),
                    fint(r["requests"]), fint(r["rps"]), fint(r["p50_us"]), fint(r["p99_us"]),
                    fint(r.get("max_us")), fcpu(r["cpu_us"]), fcpu(r["cpu_ns_us"]), fcpu(r["mock_cpu_us"]),
                    fcpu(r["cpu0_other_pct"]),
                    "; ".join(r["flags"]) or ("ok, noisy" if r["warnings"] else "ok")])
    return table(["tool", "workload", "target", "run", "requests", "req/s", "p50 µs", "p99 µs",
                  "max µs", "proxy CPU µs/req", "same, schedstat", "mockllm CPU µs/req",
                  "CPU 0 other %", "status"], "lllrrrrrrrrrrl", out)


def read_conns(work, meta):
    """bench/conns.py's JSON result and its problems, or (None, []) if skipped."""
    if "conns_rc" not in meta:
        return None, []
    path = os.path.join(work, "raw", "conns.json")
    result, problems = None, []
    try:
        lines = [ln for ln in open(path) if ln.strip().startswith("{")]
        result = json.loads(lines[-1]) if lines else None
    except (OSError, ValueError):
        result = None
    if meta["conns_rc"] != "0":
        err = ""
        try:
            err = open(os.path.join(work, "raw", "conns.err"), errors="replace").read().strip()[-300:]
        except OSError:
            pass
        problems.append(f"bench/conns.py exited {meta['conns_rc']}" + (f": {err}" if err else ""))
    if result is None:
        problems.append("bench/conns.py printed no result")
    else:
        for k in ("round1_errors", "round2_errors"):
            if result.get(k):
                problems.append(f"{k.replace('_', ' ')}: {result[k]}")
        if not result.get("tollgate_alive", False):
            problems.append("tollgate died during bench/conns.py")
    return result, problems


def conns_section(result):
    if result is None:
        return "No result (see Flags)."
    r = result
    rows = [[f"{r['connections']:,}", f"{r['round1_ok']:,} / {r['round1_errors']:,}",
             f"{r['round2_ok']:,} / {r['round2_errors']:,}",
             f"{r['bytes_per_waiting_conn']:,}", f"{r['bytes_per_idle_conn_incl_pool']:,}",
             f"{r['rss_before_kib']:,} / {r['rss_open_kib']:,} / {r['rss_idle_kib']:,} / "
             f"{r['rss_after_round2_kib']:,}"]]
    return table(["connections", "round 1 ok / errors", "round 2 ok / errors",
                  "RSS bytes per waiting conn", "RSS bytes per idle conn (incl. pool)",
                  "RSS KiB: before / open / idle / after round 2"], "rrrrrr", rows)


def read_tls(work):
    try:
        lines = [ln for ln in open(os.path.join(work, "raw", "tls.json"))
                 if ln.strip().startswith("{")]
        return json.loads(lines[-1]) if lines else None
    except (OSError, ValueError):
        return None


def read_streams(work):
    try:
        lines = [ln for ln in open(os.path.join(work, "raw", "streams.json"))
                 if ln.strip().startswith("{")]
        return json.loads(lines[-1]) if lines else None
    except (OSError, ValueError):
        return None


def streams_section(r, rc):
    if r is None:
        return f"No result: bench/streams.py exited {rc}."
    rows = [[f"{r['streams']:,}", f"{r['ok']:,} / {r['errors']:,}",
             f"{r['stream_s_min']} / {r['stream_s_p50']} / {r['stream_s_p99']} / {r['stream_s_max']}",
             f"{r['tollgate_cpu_s']}", f"{r['cpu_us_per_event']}", f"{r['cpu_busy_pct']}",
             f"{r['rss_peak_kib']:,}", f"{r['rss_bytes_per_stream']:,}",
             "yes" if r["tollgate_alive"] else "**no**"]]
    return table(["streams at once", "ok / errors", "stream s: min / p50 / p99 / max",
                  "tollgate CPU s", "CPU µs per event", "core busy %", "peak RSS KiB",
                  "RSS bytes per stream", "alive"], "rrrrrrrrl", rows)


def tls_section(r, rc):
    """bench/tls.py: HTTPS keep-alive and full handshakes, tollgate vs nginx."""
    if r is None:
        return f"No result: bench/tls.py exited {rc}."
    t = r["targets"]
    ng = t.get("nginx", {})
    rows = []
    for name in ("nginx", "tollgate-relay", "tollgate"):
        if name not in t:
            continue
        x = t[name]
        ka, hs = x["keepalive"], x["handshake"]
        ratio = lambda a, b: f"{a / b:.2f}x" if a and b else "-"
        rows.append([name, f"{x['negotiated']['suite']} / {x['negotiated']['kx']}",
                     f"{ka['rps']:,.0f}", ratio(ka["rps"], ng.get("keepalive", {}).get("rps")),
                     f"{ka['cpu_us_per_req']:.1f}",
                     ratio(ka["cpu_us_per_req"], ng.get("keepalive", {}).get("cpu_us_per_req")),
                     f"{hs['rps']:,.0f}", f"{hs['cpu_us_per_req']:.0f}",
                     ratio(hs["cpu_us_per_req"], ng.get("handshake", {}).get("cpu_us_per_req")),
                     f"{ka['errors'] + hs['errors']}"])
    return table(["target", "suite / key exchange", "keep-alive req/s", "vs nginx",
                  "CPU µs/req", "vs nginx", "full handshakes/s", "CPU µs/handshake", "vs nginx",
                  "errors"], "llrrrrrrrr", rows)


def steal_percent(meta):
    try:
        a = [int(x) for x in meta["cpustat_start"].split()[1:]]
        b = [int(x) for x in meta["cpustat_end"].split()[1:]]
    except (KeyError, ValueError):
        return None
    delta = [y - x for x, y in zip(a, b)]
    total = sum(delta[:8])
    return 100.0 * delta[7] / total if total and len(delta) > 7 else None


def read_json(path):
    try:
        with open(path) as f:
            return json.loads(f.read())
    except (OSError, ValueError):
        return None


def render(meta, summary, rows, facts, all_flags, warnings, conns):
    runs, dur = int(meta["runs"]), int(meta["duration"])
    quick = meta.get("quick") == "1"
    dirty = int(meta.get("dirty", "0") or 0)
    steal = steal_percent(meta)
    commit = meta.get("commit", "unknown")
    lines = []
    w = lines.append
    w("# tollgate benchmark results")
    w("")
    w("Generated by `bench/run.sh`; do not edit by hand — rerun the script, which rewrites all of "
      "this file. How to run it and what each column means: `bench/README.md`.")
    w("")
    w(f"- **Date:** {meta.get('date')}; run time {meta.get('elapsed_s', '?')} s"
      + (" — **QUICK smoke run, not for comparison**" if quick else ""))
    w(f"- **Commit:** `{commit}`" + (f" plus {dirty} uncommitted change(s) outside bench/ "
                                     "(the binary measured is the working tree's)" if dirty else ""))
    w(f"- **Runs:** {runs} × {dur} s per measurement; every figure below is the median of the runs")
    w("")
    w("## Headline: proxy CPU time per request")
    w("")
    w("The proxy's own user+system CPU time (all its threads; nginx master+worker) during the run, "
      "divided by the requests the load generator completed. Lower is better.")
    w("")
    w(headline_table(summary))
    w("")
    w("## Closed loop: wrk, 1 thread, 50 connections")
    w("")
    w("Each target is loaded as hard as 50 connections can go, so req/s is its throughput and the "
      "latencies are mostly queueing at that throughput; +p50/+p99 are the difference from the "
      "direct run (µs). \"Proxy core busy %\" is the proxy's CPU time over the run's wall time: "
      "below 100% the proxy was not the bottleneck — CPU 1, shared by wrk and mockllm, was.")
    for wl in WORKLOADS:
        w("")
        w(f"### {WL_LABEL[wl]}")
        w("")
        w(closed_loop_table(summary, wl))
    w("")
    w(f"## Fixed rate: h2load --h1, {int(meta['fixed_rate']):,} req/s, non-stream")
    w("")
    w(f"{meta['fixed_clients']} connections × {int(meta['fixed_rate']) // int(meta['fixed_clients'])} "
      f"req/s each, one request in flight per connection (`-m 1`), {int(meta['fixed_rate']) * dur:,} "
      "requests. Percentiles come from h2load's per-request log (`--log-file`: microseconds from "
      "sending a request to the end of its response), computed here by nearest rank; h2load's own "
      "summary gives only min/max/mean. A client whose request is late sends the next one late, so "
      "like wrk (not wrk2) this under-reports tail latency when a target stalls. \"max\" is the "
      "largest over all runs; the other columns are medians.")
    w("")
    w(fixed_rate_table(summary))
    w("")
    if "conns_rc" in meta:
        w("## Many connections: tollgate, one worker (bench/conns.py)")
        w("")
        w("`bench/conns.py` starts its own mockllm (CPU 1) and tollgate `--workers 1` (CPU 0, "
          "shipped config), opens N keep-alive connections at once, sends one request on each "
          "(all in flight together) and reads every reply, waits 3 s, then does it again; RSS "
          "from `/proc/PID/status`. \"Waiting\" is accepted with no request yet; \"idle\" is after "
          "the first round, including the exchange pool that round grew.")
        w("")
        w(conns_section(conns))
        w("")
    budget = read_json(os.path.join(meta["_work"], "raw", "budget.json"))
    if budget:
        w("## Budget engine: reserve + commit (bench/budget_micro.c)")
        w("")
        w(f"Each call reserves on {budget['scopes_per_call']} scopes (run, key, team, org) and "
          f"commits less than it reserved; {budget['calls_per_thread']:,} calls per thread, threads "
          "pinned to CPU 0 and 1. Fast path: far from the limit, calls are served from per-shard "
          "leases. Edge: room for one and a half calls, so every reservation is an exact CAS on the "
          "shared counter, every release hands the money back with another, and the shards collide "
          f"({budget['edge_refused']:,} of {budget['edge_calls']:,} attempts were refused because "
          "the other shard held the money: ns per attempt).")
        w("")
        w("| case | ns per call |")
        w("|:--|--:|")
        w(f"| fast path, 1 shard | {budget['fast_path_1_shard_ns']:.1f} |")
        w(f"| fast path, 2 shards | {budget['fast_path_2_shards_ns']:.1f} |")
        w(f"| contended edge, 2 shards | {budget['edge_2_shards_ns']:.1f} |")
        w("")
    if "streams_rc" in meta:
        w("## Many slow streams: tollgate, one worker (bench/streams.py)")
        w("")
        w("`bench/streams.py` starts its own mockllm (CPU 1) and tollgate `--workers 1` (CPU 0, "
          "shipped config: budgets on, the ledger in its temp dir), opens N connections and starts "
          "a metered stream on each at once (50 tokens, one per event, 100 ms apart), reads every "
          "stream to `[DONE]` and the chunked terminator, samples RSS while they run and reads "
          "tollgate's CPU time before and after.")
        w("")
        w(streams_section(read_streams(meta["_work"]), meta["streams_rc"]))
        w("")
    if "tls_rc" in meta:
        w("## HTTPS: tollgate (mbedTLS 2.28) vs nginx (OpenSSL) (bench/tls.py)")
        w("")
        w("`bench/tls.py` starts its own mockllm (CPU 1, plain), nginx and two tollgates (one "
          "worker each, CPU 0) that terminate TLS with the same ECDSA P-256 certificate and suite "
          "and relay to mockllm; wrk runs on CPU 1. Keep-alive: 50 connections, the non-streaming "
          "workload. Handshakes: 20 connections, `Connection: close` on a reply the proxy makes "
          "itself, so every request is a full handshake (wrk keeps no sessions). Medians over "
          "runs; CPU is the proxy's. Target: keep-alive req/s at least 0.9x nginx's. Req/s is "
          "capped by CPU 1, which wrk's own TLS and mockllm share, so CPU µs/req shows the cost "
          "more sharply.")
        w("")
        w(tls_section(read_tls(meta["_work"]), meta["tls_rc"]))
        w("")
    ledger = read_json(os.path.join(meta["_work"], "raw", "ledger.json"))
    if ledger:
        w("## Ledger writer (bench/ledger_micro.c)")
        w("")
        w("One shard's writer on CPU 0, appending commit records of a typical size (~230 bytes) "
          f"for {ledger['seconds_per_case']:.0f} s per case into the bench's temp dir. A turn "
          "appends `batch` records, flushes, and turns until they are written (synced under "
          "`always`), as replies waiting for their records would. \"wait\" is the mean time from "
          "the flush until a record's batch was written: what holding a reply's end adds.")
        w("")
        w("| fsync | records per turn | records/s | wait µs |")
        w("|:--|--:|--:|--:|")
        for c in ledger["cases"]:
            w(f"| {c['fsync']} | {c['batch']} | {c['records_per_s']:,.0f} | {c['wait_us']:.1f} |")
        w("")
    try:
        with open(os.path.join(meta["_work"], "raw", "report_bench.txt")) as f:
            report_bench = f.read().strip()
    except OSError:
        report_bench = ""
    if report_bench:
        w("## Ledger reports (bench/report_bench.sh)")
        w("")
        w("`tollctl report` over a synthetic ledger from `tools/ledgergen.c` (a realistic mix of "
          "kinds, keys, teams, tasks and runs), warm page cache, pinned to CPU 0. Target: 10 "
          "million records in under 10 s on one core.")
        w("")
        w("```")
        w(report_bench)
        w("```")
        w("")
    w("## Flags")
    w("")
    if all_flags:
        w("Measurements with errors. Their medians above include the flagged runs.")
        w("")
        for f in all_flags:
            w(f"- {f}")
    else:
        w("None: every target passed its pre-flight check and every run completed without "
          "non-2xx responses, socket errors or timeouts.")
    w("")
    if warnings:
        w("Noisy runs (not errors): something else used the proxy's core (CPU 0) during these, so "
          "their figures are suspect; rerun on a quiet machine or with more `--runs`.")
        w("")
        for f in warnings:
            w(f"- {f}")
    w("")
    w("## Every run")
    w("")
    w("\"CPU 0 other %\" is CPU 0's busy time during the run that was not the proxy's (other "
      "processes, kernel threads, interrupts; for direct, everything on CPU 0): a high value means "
      "something else shared the proxy's core and that run is suspect.")
    w("")
    w(runs_table(rows))
    w("")
    w("## Setup")
    w("")
    w("### Machine and versions")
    w("")
    w(f"- CPU: {meta.get('cpu_model')}, {meta.get('cpus')} vCPUs; kernel {meta.get('kernel')}")
    w(f"- Load average at start: {meta.get('loadavg_start')}"
      + (f"; CPU steal during the run: {steal:.1f}% of all CPU time" if steal is not None else ""))
    w("- Pinning (taskset): each proxy on CPU 0; mockllm (1 thread) and the load generator "
      "(wrk -t1 / h2load) share CPU 1, so a faster proxy leaves the upstream and client side "
      "as the limit. Only 127.0.0.1 is used.")
    for key in ("tollgate", "nginx", "haproxy", "wrk", "h2load"):
        w(f"- {key}: {meta.get(key)}")
    w(f"- liburing-dev {meta.get('liburing')}; tollgate log: \"{meta.get('tollgate_ring')}\"")
    w("")
    w("### Workloads")
    w("")
    w(f"- **non-stream:** POST /v1/chat/completions, a {meta['body_bytes']}-byte JSON body "
      "(`bench/body.json`: model gpt-4o, max_tokens, one ~900-character message), "
      f"`x-mock-tokens: {meta['nonstream_tokens']}`; mockllm answers with "
      f"{facts.get('reply_bytes', '?')} bytes of JSON (Content-Length).")
    w(f"- **stream:** the same with `\"stream\":true` (`bench/body-stream.json`, "
      f"{meta['stream_body_bytes']} bytes) and `x-mock-tokens: {meta['stream_tokens']}`; mockllm "
      f"answers with {facts.get('stream_events', '?')} SSE events ({meta['stream_tokens']} content "
      "events plus role, finish and [DONE]), one HTTP chunk per event, "
      f"{facts.get('stream_bytes', '?')} bytes of event data.")
    hdr = ", ".join(f"{LABEL[t]} {facts.get('hdr_' + t, ('?', '?'))[0]}/"
                    f"{facts.get('hdr_' + t, ('?', '?'))[1]}" for t in TARGETS)
    w(f"- Response header bytes (non-stream/stream) seen by the client: {hdr}.")
    w("- Load: `taskset -c 1 wrk -t1 -c50 -d{0}s --latency -s bench/{{nonstream,stream}}.lua URL`; "
      "the Lua scripts print exact figures (`WRK_JSON`) that the report uses.".format(dur))
    w("")
    w("### Proxies")
    w("")
    w("- **nginx**: `worker_processes 1`, `upstream { keepalive 64; keepalive_requests 1000000; }`, "
      "`proxy_http_version 1.1`, `proxy_set_header Connection \"\"`, `proxy_buffering off` for both "
      "workloads (SSE must flow per event), `keepalive_requests 1000000` toward clients (the "
      "default 1,000 would add reconnects), `access_log off`; own prefix, pid and error log in "
      "the temp dir.")
    w("- **HAProxy**: `nbthread 1`, `mode http`, `option http-keep-alive`, `http-reuse always`, "
      "timeouts connect 2 s, client/server 30 s, http-request 10 s, http-keep-alive 30 s; "
      "foreground (`-db`), no logging.")
    w("- **tollgate**: `--workers 1`, `pin: false` (taskset pins the process), one openai "
      "provider pointed at mockllm, model gpt-4o; all other settings at their defaults.")
    w("- **direct**: wrk and h2load talk to mockllm itself; this is the baseline the +p50/+p99 "
      "columns subtract.")
    w("")
    w("### Method")
    w("")
    w("- CPU: utime+stime from `/proc/PID/stat` (includes every thread) read just before and just "
      f"after each run, in clock ticks of 1/{meta.get('clk_tck')} s; the tick granularity is "
      "negligible over a full run. Proxy start-up is not counted. The Every run table repeats "
      "the figure from the on-CPU nanoseconds in `/proc/PID/task/*/schedstat` as a cross-check.")
    w("- Order: for each run, each workload, each target in the order direct, nginx, HAProxy, "
      "tollgate; then the fixed-rate phase the same way. All proxies stay up for the whole "
      "bench (idle while the others are measured). 1 s pause between measurements.")
    w("- On this kind of VM the figures move about ±20% between runs (see /work/shared notes and "
      "the Every run table): compare targets within one report, not across reports.")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", required=True)
    ap.add_argument("--out")
    args = ap.parse_args()
    try:
        meta = read_meta(args.work)
        measurements = read_measurements(args.work)
    except OSError as e:
        print(f"report: {e}", file=sys.stderr)
        return 2
    rows = collect(args.work, meta, measurements)
    problems, facts = check_preflight(args.work, meta)
    for t in TARGETS:
        note = meta.get(f"note_{t}")
        if note:
            problems[t].insert(0, note)
    summary = summarize(rows, meta, problems)
    meta["_work"] = args.work
    conns, conns_problems = read_conns(args.work, meta)
    all_flags = [f"tollgate, many connections: {p}" for p in conns_problems]
    seen = set()
    for (kind, t, wl), s in summary.items():
        for f in s["flags"]:
            text = f"{LABEL[t]}, {kind} {WL_LABEL[wl]}: {f}"
            if f.startswith("pre-flight"):
                text = f"{LABEL[t]}: {f}"
            if text not in seen:
                seen.add(text)
                all_flags.append(text)
    warnings = [f"{LABEL[t]}, {kind} {WL_LABEL[wl]}: {f}"
                for (kind, t, wl), s in summary.items() for f in s["warnings"]]
    report = render(meta, summary, rows, facts, all_flags, warnings, conns)

    # stdout: everything up to the per-run appendix.
    print(report.split("\n## Every run")[0].rstrip())
    if args.out:
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            f.write(report)
        os.replace(tmp, args.out)
    if warnings:
        print("\nbench: noisy runs (CPU 0 shared with other work):", file=sys.stderr)
        for f in warnings:
            print("  " + f, file=sys.stderr)
    if all_flags:
        print("\nBENCH FLAGGED ERRORS:", file=sys.stderr)
        for f in all_flags:
            print("  " + f, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
