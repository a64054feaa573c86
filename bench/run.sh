#!/usr/bin/env bash
# bench/run.sh — measures what tollgate costs per request next to nginx and
# HAProxy, relaying the same traffic to the same mock provider.
#
# How it works. mockllm (the upstream) runs on CPU 1; each proxy runs on
# CPU 0 with one worker; wrk and h2load run on CPU 1 next to mockllm. Every
# process listens on 127.0.0.1 only, on free ports picked at start, and its
# config, pid file and logs live in one temp dir. For each run, workload and
# target (direct = mockllm itself, the baseline; nginx; haproxy; tollgate)
# the script reads the proxy's utime+stime from /proc/PID/stat, runs wrk
# (closed loop, 50 connections), reads them again, and divides by the
# requests wrk completed: the proxy's CPU µs per request, the headline
# figure. A second phase offers a fixed 1,000 req/s with h2load and records
# each request's latency; a third runs bench/conns.py (10,000 keep-alive
# connections on one tollgate worker) and bench/streams.py; a fourth,
# bench/tls.py, compares HTTPS keep-alive and handshakes with nginx. bench/report.py turns the raw outputs into the
# tables printed here and written to bench/RESULTS.md, medians over the runs.
#
# Exit status: 0 when every measurement ran clean; 1 when any target
# returned non-2xx responses, had socket errors or timeouts, failed its
# pre-flight check or died (the tables flag which); 2 on usage or set-up
# errors. Every process started here is stopped on exit (trap EXIT).
set -euo pipefail

usage() {
	cat <<'USAGE'
usage: bench/run.sh [--quick] [--runs N] [--duration S] [--out FILE]
                    [--no-build] [--no-conns] [--keep]

  --quick        smoke run: 3 s per measurement, 1 run; writes no report
                 file unless --out is given (the table is still printed)
  --runs N       measure everything N times and report the median (default 2)
  --duration S   seconds per measurement (default 10)
  --out FILE     where to write the report (default bench/RESULTS.md)
  --no-build     do not run `make` first; use build/ as it is
  --no-conns     skip the many-connections and many-streams phases
                 (bench/conns.py, bench/streams.py)
  --keep         keep the temp dir (configs, logs, raw wrk/h2load output)
USAGE
}

runs=""
duration=""
out=""
quick=0
build=1
keep=0
conns_phase=1
while [ $# -gt 0 ]; do
	case $1 in
	--quick) quick=1 ;;
	--runs) runs=${2:?--runs needs a number}; shift ;;
	--duration) duration=${2:?--duration needs seconds}; shift ;;
	--out) out=${2:?--out needs a file}; shift ;;
	--no-build) build=0 ;;
	--no-conns) conns_phase=0 ;;
	--keep) keep=1 ;;
	-h|--help) usage; exit 0 ;;
	*) echo "bench: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
	esac
	shift
done
if [ $quick = 1 ]; then
	runs=${runs:-1}; duration=${duration:-3}; conns=2000
else
	runs=${runs:-2}; duration=${duration:-10}; conns=10000
fi
case $runs$duration in *[!0-9]*|'') echo "bench: --runs and --duration take whole numbers" >&2; exit 2 ;; esac
[ "$runs" -ge 1 ] && [ "$duration" -ge 1 ] || { echo "bench: --runs and --duration must be >= 1" >&2; exit 2; }

root=$(cd "$(dirname "$0")/.." && pwd)
bench=$root/bench
if [ -z "$out" ] && [ $quick = 0 ]; then out=$bench/RESULTS.md; fi

# The fixed-rate phase: CLIENTS connections at RPS_PER_CLIENT each.
FIXED_RATE=1000
FIXED_CLIENTS=10
FIXED_RPS_PER_CLIENT=$((FIXED_RATE / FIXED_CLIENTS))
# Workloads: name, wrk script, body file, x-mock-tokens.
NONSTREAM_TOKENS=158   # mockllm's reply to body.json is then ~1,046 bytes
STREAM_TOKENS=50
TARGETS="direct nginx haproxy tollgate-relay tollgate tollgate-ledger"
# Every request carries the bench agent key; only tollgate (budgets on)
# reads it, the others pass or ignore it.
BENCH_KEY=tg-bench-key
WORKLOADS="nonstream stream"

die() { echo "bench: $*" >&2; exit 2; }
log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

for tool in wrk nginx haproxy h2load taskset python3 curl make; do
	command -v $tool >/dev/null || die "$tool not found; run tools/install-deps.sh bench"
done
[ "$(nproc --all)" -ge 2 ] || die "needs 2 CPUs (proxy on CPU 0, load and upstream on CPU 1)"
taskset -c 0 true 2>/dev/null && taskset -c 1 true 2>/dev/null ||
	die "cannot pin to CPUs 0 and 1 (taskset failed)"

if [ $build = 1 ]; then
	log "building (make)"
	make -C "$root" -s >/dev/null && make -C "$root" -s build/ledgergen >/dev/null ||
		die "make failed; fix the build or use --no-build"
fi
for bin in tollgate mockllm; do
	[ -x "$root/build/$bin" ] || die "build/$bin missing; run make"
done

started=$(date +%s)
work=$(mktemp -d "${TMPDIR:-/tmp}/tollgate-bench.XXXXXX")
chmod 755 "$work"          # nginx workers may run as another user
mkdir -p "$work/raw" "$work/nginx-tmp"
pids=()                    # everything we started, stopped in reverse order

cleanup() {
	local rc=$? i pid
	for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
		kill -TERM "${pids[i]}" 2>/dev/null || true
	done
	for pid in "${pids[@]}"; do
		for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	done
	if [ $keep = 1 ]; then echo "bench: kept $work" >&2; else rm -rf "$work"; fi
	exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A port nobody listens on now (the kernel picks it; tiny race, checked below).
free_port() {
	python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
port_open() {
	(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}
# wait_up NAME PID PORT: waits up to 5 s for PORT to accept while PID lives.
wait_up() {
	local name=$1 pid=$2 port=$3
	for _ in $(seq 50); do
		kill -0 "$pid" 2>/dev/null || { tail -n 20 "$work/$name.log" >&2 || true; die "$name exited at start"; }
		port_open "$port" && return 0
		sleep 0.1
	done
	tail -n 20 "$work/$name.log" >&2 || true
	die "$name did not listen on 127.0.0.1:$port within 5 s"
}

declare -A port proxy_pids status_note
for t in mock $TARGETS; do
	[ $t = direct ] && continue
	port[$t]=$(free_port)
	port_open "${port[$t]}" && die "port ${port[$t]} already in use"
done
port[direct]=${port[mock]}

# ---- upstream: mockllm on CPU 1 -------------------------------------------
taskset -c 1 "$root/build/mockllm" --listen "127.0.0.1:${port[mock]}" --threads 1 --quiet \
	>"$work/mock.log" 2>&1 &
mock_pid=$!; pids+=("$mock_pid")
wait_up mock $mock_pid "${port[mock]}"
proxy_pids[direct]=""

# ---- nginx: plain reverse proxy, one worker --------------------------------
cat >"$work/nginx.conf" <<EOF
# Generated by bench/run.sh. No system config is read.
worker_processes 1;
daemon off;
master_process on;
pid $work/nginx.pid;
lock_file $work/nginx.lock;
error_log $work/nginx.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $work/nginx-tmp/body;
    proxy_temp_path $work/nginx-tmp/proxy;
    fastcgi_temp_path $work/nginx-tmp/fastcgi;
    uwsgi_temp_path $work/nginx-tmp/uwsgi;
    scgi_temp_path $work/nginx-tmp/scgi;
    keepalive_requests 1000000;      # default 1000 would make wrk reconnect
    upstream mock {
        server 127.0.0.1:${port[mock]};
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:${port[nginx]};
        location / {
            proxy_pass http://mock;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;     # both workloads: SSE must flow per event
        }
    }
}
EOF
taskset -c 0 nginx -p "$work" -e "$work/nginx.log" -c "$work/nginx.conf" >>"$work/nginx.log" 2>&1 &
nginx_pid=$!; pids+=("$nginx_pid")
wait_up nginx $nginx_pid "${port[nginx]}"
nginx_worker=""
for _ in $(seq 50); do
	nginx_worker=$(cat "/proc/$nginx_pid/task/$nginx_pid/children" 2>/dev/null | awk '{print $1}')
	[ -n "$nginx_worker" ] && break; sleep 0.1
done
[ -n "$nginx_worker" ] || die "nginx started no worker"
proxy_pids[nginx]="$nginx_pid $nginx_worker"

# ---- HAProxy: one thread, http mode, connection reuse ----------------------
cat >"$work/haproxy.cfg" <<EOF
# Generated by bench/run.sh. No system config is read.
global
    nbthread 1
    maxconn 4096
defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    timeout http-request 10s
    timeout http-keep-alive 30s
frontend fe
    bind 127.0.0.1:${port[haproxy]}
    default_backend be
backend be
    server mock 127.0.0.1:${port[mock]}
EOF
haproxy -c -q -f "$work/haproxy.cfg" || die "haproxy rejected $work/haproxy.cfg"
taskset -c 0 haproxy -db -f "$work/haproxy.cfg" >"$work/haproxy.log" 2>&1 &
haproxy_pid=$!; pids+=("$haproxy_pid")
wait_up haproxy $haproxy_pid "${port[haproxy]}"
proxy_pids[haproxy]=$haproxy_pid

# ---- tollgate: one worker, three times ------------------------------------
# "tollgate-relay" has no keys: the relay alone. "tollgate" authenticates the
# bench key and reserves and commits every call on key, team and org
# budgets far from their limits: the relay plus the budget engine.
# "tollgate-ledger" is that plus the durable ledger (fsync: batch, 100 ms),
# writing into the temp dir: a reserve and a commit record per call.
start_tollgate() {
	local t=$1 budgets=$2 ledger=${3:-0}
	{
		cat <<EOF
# Generated by bench/run.sh.
listen:
  - addr: "127.0.0.1:${port[$t]}"
workers: 1
pin: false            # taskset pins the whole process to CPU 0
providers:
  mock-openai:
    base_url: "http://127.0.0.1:${port[mock]}/v1"
    format: openai
prices_version: "bench"
models:
  gpt-4o:
    provider: mock-openai
    input_usd_per_mtok: "2.50"
    output_usd_per_mtok: "10.00"
    max_output_tokens: 16384
    context_tokens: 128000
EOF
		if [ "$budgets" = 1 ]; then cat <<EOF
orgs:
  bench-org: { budget: { limit: "100000000" } }
teams:
  bench-team: { parent: bench-org, budget: { limit: "10000000" } }
keys:
  - id: bench
    secret_sha256: "$(printf '%s' "$BENCH_KEY" | sha256sum | cut -c1-64)"
    team: bench-team
    models: [gpt-4o]
    budget: { limit: "1000000" }
EOF
		fi
		if [ "$ledger" = 1 ]; then cat <<EOF
ledger:
  dir: "$work/ledger"
  fsync: batch
  batch_ms: 100
EOF
		fi
	} >"$work/$t.yaml"
	"$root/build/tollgate" -t -c "$work/$t.yaml" >"$work/$t-check.log" 2>&1 ||
		{ cat "$work/$t-check.log" >&2; die "tollgate rejected $work/$t.yaml"; }
	taskset -c 0 "$root/build/tollgate" -c "$work/$t.yaml" --workers 1 >"$work/$t.log" 2>&1 &
	local pid=$!; pids+=("$pid")
	wait_up $t $pid "${port[$t]}"
	proxy_pids[$t]=$pid
}
start_tollgate tollgate-relay 0
start_tollgate tollgate 1
start_tollgate tollgate-ledger 1 1

url() { echo "http://127.0.0.1:${port[$1]}/v1/chat/completions"; }

# utime+stime in clock ticks, summed over PIDs (threads included). The
# fields after "(comm)" are split from the last ')' so a comm with spaces
# cannot shift them.
cpu_ticks() {
	local pid sum=0 rest
	for pid in "$@"; do
		rest=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null) || { echo -1; return; }
		set -- $rest
		sum=$((sum + ${12} + ${13}))
	done
	echo $sum
}
# On-CPU nanoseconds summed over every thread of PIDs (schedstat's first
# field): a fine-grained cross-check of the tick counts above.
cpu_ns() {
	local pid f sum=0 ns
	for pid in "$@"; do
		for f in /proc/"$pid"/task/*/schedstat; do
			[ -r "$f" ] && read -r ns _ 2>/dev/null <"$f" || continue
			sum=$((sum + ns))
		done
	done
	echo $sum
}
alive() {
	local pid
	for pid in "$@"; do kill -0 "$pid" 2>/dev/null || return 1; done
}

# ---- pre-flight: every target answers both workloads like direct does ------
# Writes raw/preflight-TARGET-WORKLOAD.{hdr,body}; a failure is recorded in
# status_note and the target is not loaded.
preflight() {
	local t=$1 wl=$2 body tokens code
	if [ $wl = stream ]; then body=$bench/body-stream.json; tokens=$STREAM_TOKENS
	else body=$bench/body.json; tokens=$NONSTREAM_TOKENS; fi
	code=$(curl -sS -N --max-time 5 -o "$work/raw/preflight-$t-$wl.body" \
		-D "$work/raw/preflight-$t-$wl.hdr" -w '%{http_code}' \
		-H 'Content-Type: application/json' -H "x-mock-tokens: $tokens" \
		-H "Authorization: Bearer $BENCH_KEY" \
		--data-binary "@$body" "$(url $t)" 2>"$work/raw/preflight-$t-$wl.err") || code="curl-failed"
	echo "$code"
}
log "pre-flight checks"
for t in $TARGETS; do
	status_note[$t]=""
	for wl in $WORKLOADS; do
		code=$(preflight $t $wl)
		if [ "$code" != 200 ]; then
			status_note[$t]="pre-flight $wl: HTTP $code $(head -c 200 "$work/raw/preflight-$t-$wl.err" "$work/raw/preflight-$t-$wl.body" 2>/dev/null | tr '\n' ' ')"
			log "PRE-FLIGHT FAILED: $t $wl: ${status_note[$t]}"
		fi
	done
done
# Content checks (sizes, SSE event counts against direct) are done by
# report.py, which flags a target whose replies differ.

# ---- metadata for the report ---------------------------------------------
{
	printf 'date\t%s\n' "$(date -u '+%Y-%m-%d %H:%M:%S UTC')"
	printf 'commit\t%s\n' "$(git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)"
	printf 'dirty\t%s\n' "$(git -C "$root" --no-optional-locks status --porcelain -- . ':!bench' 2>/dev/null | wc -l)"
	printf 'tollgate\t%s\n' "$("$root/build/tollgate" --version 2>&1 | head -1)"
	printf 'nginx\t%s\n' "$(nginx -v 2>&1 | head -1)"
	printf 'haproxy\t%s\n' "$(haproxy -v 2>&1 | head -1)"
	printf 'wrk\t%s\n' "$(wrk -v 2>&1 | head -1 || true)"
	printf 'h2load\t%s\n' "$(h2load --version 2>&1 | head -1)"
	printf 'kernel\t%s\n' "$(uname -srm)"
	printf 'cpu_model\t%s\n' "$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
	printf 'cpus\t%s\n' "$(nproc --all)"
	printf 'liburing\t%s\n' "$(dpkg-query -W -f='${Version}' liburing-dev 2>/dev/null || echo unknown)"
	printf 'loadavg_start\t%s\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
	printf 'runs\t%s\n' "$runs"
	printf 'duration\t%s\n' "$duration"
	printf 'quick\t%s\n' "$quick"
	printf 'clk_tck\t%s\n' "$(getconf CLK_TCK)"
	printf 'fixed_rate\t%s\n' "$FIXED_RATE"
	printf 'fixed_clients\t%s\n' "$FIXED_CLIENTS"
	printf 'nonstream_tokens\t%s\n' "$NONSTREAM_TOKENS"
	printf 'stream_tokens\t%s\n' "$STREAM_TOKENS"
	printf 'body_bytes\t%s\n' "$(wc -c <"$bench/body.json")"
	printf 'stream_body_bytes\t%s\n' "$(wc -c <"$bench/body-stream.json")"
	printf 'tollgate_ring\t%s\n' "$(grep -o 'ring [a-z+-]*' "$work/tollgate.log" | head -1)"
	printf 'cpustat_start\t%s\n' "$(head -1 /proc/stat)"
	for t in $TARGETS; do printf 'note_%s\t%s\n' "$t" "${status_note[$t]}"; done
} >"$work/meta.tsv"
cp "$work/nginx.conf" "$work/haproxy.cfg" "$work/tollgate.yaml" "$work/tollgate-relay.yaml" \
	"$work/tollgate-ledger.yaml" "$work/raw/"

# measurements.tsv: kind target workload run cpu_before cpu_after (ticks)
#                   ns_before ns_after mock_before mock_after
#                   cpu0_before cpu0_after (/proc/stat lines) tool_rc alive raw_file
printf 'kind\ttarget\tworkload\trun\tcpu_before\tcpu_after\tns_before\tns_after\tmock_before\tmock_after\tcpu0_before\tcpu0_after\trc\talive\traw\n' \
	>"$work/measurements.tsv"

# measure KIND TARGET WORKLOAD RUN: one wrk or h2load run, CPU read around it.
measure() {
	local kind=$1 t=$2 wl=$3 r=$4
	local raw="$1-$2-$3-$4" before after nsb nsa mb ma cpu0b cpu0a rc=0 live=1
	local -a ppids
	read -r -a ppids <<<"${proxy_pids[$t]}"
	if [ -n "${status_note[$t]}" ]; then
		log "skip $kind $t $wl run $r: ${status_note[$t]}"
		return
	fi
	before=$( [ ${#ppids[@]} -gt 0 ] && cpu_ticks "${ppids[@]}" || echo 0)
	nsb=$( [ ${#ppids[@]} -gt 0 ] && cpu_ns "${ppids[@]}" || echo 0)
	mb=$(cpu_ticks $mock_pid)
	cpu0b=$(grep '^cpu0 ' /proc/stat)
	if [ $kind = wrk ]; then
		log "wrk $t $wl run $r/$runs (${duration}s)"
		timeout $((duration * 2 + 30)) taskset -c 1 wrk -t1 -c50 -d"${duration}s" --latency \
			-s "$bench/$wl.lua" "$(url $t)" >"$work/raw/$raw.out" 2>&1 || rc=$?
	else
		log "h2load $t $wl run $r/$runs (${FIXED_RATE} req/s, ${duration}s)"
		timeout $((duration * 3 + 30)) taskset -c 1 h2load --h1 -c $FIXED_CLIENTS \
			--rps $FIXED_RPS_PER_CLIENT -n $((FIXED_RATE * duration)) -m 1 \
			-d "$bench/body.json" -H 'Content-Type: application/json' \
			-H "x-mock-tokens: $NONSTREAM_TOKENS" -H "Authorization: Bearer $BENCH_KEY" --log-file="$work/raw/$raw.log" \
			"$(url $t)" >"$work/raw/$raw.out" 2>&1 || rc=$?
	fi
	after=$( [ ${#ppids[@]} -gt 0 ] && cpu_ticks "${ppids[@]}" || echo 0)
	nsa=$( [ ${#ppids[@]} -gt 0 ] && cpu_ns "${ppids[@]}" || echo 0)
	ma=$(cpu_ticks $mock_pid)
	cpu0a=$(grep '^cpu0 ' /proc/stat)
	if ! alive $mock_pid ${ppids[@]+"${ppids[@]}"}; then
		live=0
		status_note[$t]="process died during $kind $wl run $r"
		log "DIED: $t during $kind $wl run $r; last log lines:"
		tail -n 20 "$work/$t.log" >&2 2>/dev/null || true
		cp "$work/$t.log" "$work/raw/$t-died.log" 2>/dev/null || true
		alive $mock_pid || die "mockllm died; cannot continue"
	fi
	if [ $kind = wrk ] && grep -q 'Non-2xx or 3xx responses' "$work/raw/$raw.out"; then
		log "ERRORS: $t $wl: $(grep 'Non-2xx' "$work/raw/$raw.out" | sed 's/^ *//')"
	fi
	if grep -q 'Socket errors' "$work/raw/$raw.out"; then
		log "ERRORS: $t $wl: $(grep 'Socket errors' "$work/raw/$raw.out" | sed 's/^ *//')"
	fi
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$kind" "$t" "$wl" "$r" \
		"$before" "$after" "$nsb" "$nsa" "$mb" "$ma" "$cpu0b" "$cpu0a" "$rc" "$live" "$raw" \
		>>"$work/measurements.tsv"
	sleep 1
}

for r in $(seq "$runs"); do
	for wl in $WORKLOADS; do
		for t in $TARGETS; do measure wrk $t $wl $r; done
	done
done
for r in $(seq "$runs"); do
	for t in $TARGETS; do measure h2load $t nonstream $r; done
done

# Many idle keep-alive connections, then many slow streams, on one tollgate
# worker: bench/conns.py and bench/streams.py start their own mockllm and
# tollgate (same pinning) and stop them themselves.
# py_phase NAME ARGS...: runs bench/NAME.py ARGS (its own processes; SIGINT
# on timeout lets its cleanup run) into raw/NAME.json and records NAME_rc.
py_phase() {
	local name=$1 rc=0; shift
	log "$name: bench/$name.py $*"
	(cd "$root" && timeout -s INT 300 python3 "$bench/$name.py" --build build "$@") \
		>"$work/raw/$name.json" 2>"$work/raw/$name.err" || rc=$?
	[ $rc = 0 ] || log "ERRORS: bench/$name.py exited $rc: $(tail -c 300 "$work/raw/$name.err")"
	printf '%s_rc\t%s\n' "$name" $rc >>"$work/meta.tsv"
}
if [ $conns_phase = 1 ]; then
	py_phase conns --conns $conns
	# 5,000 slow metered streams at once (50 events, 100 ms apart) on one
	# worker; 1,000 with --quick.
	py_phase streams --streams $([ $quick = 1 ] && echo 1000 || echo 5000)
fi
# HTTPS on the agent side: tollgate vs nginx, same certificate and suite.
py_phase tls --runs "$runs" --duration "$duration"


# The budget engine alone: ns per reserve+commit (bench/budget_micro.c).
log "budget engine microbenchmark"
"$root/build/bench_budget" >"$work/raw/budget.json" 2>"$work/raw/budget.err" ||
	log "ERRORS: bench_budget: $(tail -c 300 "$work/raw/budget.err")"
# The ledger writer alone: records/s per fsync mode (bench/ledger_micro.c),
# on the disk the bench's temp dir lives on.
log "ledger writer microbenchmark"
mkdir -p "$work/ledger-micro"
taskset -c 0 "$root/build/bench_ledger" "$work/ledger-micro" >"$work/raw/ledger.json" \
	2>"$work/raw/ledger.err" || log "ERRORS: bench_ledger: $(tail -c 300 "$work/raw/ledger.err")"
# tollctl report over a synthetic 10M-record ledger (bench/report_bench.sh),
# one core; --quick uses 1M records. The 2 GB ledger goes with the temp dir.
report_records=$([ $quick = 1 ] && echo 1000000 || echo 10000000)
log "tollctl report over $report_records records"
"$bench/report_bench.sh" --no-build --records $report_records --dir "$work/report-ledger" \
	--cpu 0 >"$work/raw/report_bench.txt" 2>"$work/raw/report_bench.err" ||
	log "ERRORS: report_bench: $(tail -c 300 "$work/raw/report_bench.err")"
rm -rf "$work/report-ledger"

{
	printf 'cpustat_end\t%s\n' "$(head -1 /proc/stat)"
	printf 'elapsed_s\t%s\n' "$(($(date +%s) - started))"
	for t in $TARGETS; do printf 'final_note_%s\t%s\n' "$t" "${status_note[$t]}"; done
} >>"$work/meta.tsv"
cp "$work/tollgate.log" "$work/raw/tollgate.log" 2>/dev/null || true

report_rc=0
python3 "$bench/report.py" --work "$work" ${out:+--out "$out"} || report_rc=$?
log "done in $(($(date +%s) - started)) s${out:+; report written to $out}"
exit $report_rc
