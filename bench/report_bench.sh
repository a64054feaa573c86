#!/usr/bin/env bash
# bench/report_bench.sh — how fast `tollctl report` reads a large ledger.
#
#     bench/report_bench.sh [--records N] [--dir DIR] [--runs R] [--cpu C] [--no-build]
#
# Generates a synthetic ledger of N records (default 10,000,000; about
# 45% reserve, 44% commit, some refuse/release/expire/outcome/chargeback,
# 1,000 keys, 50 teams, 20 task types, 200,000 runs, tags on 90%: see
# tools/ledgergen.c) into DIR (default /tmp/tollgate-report-bench; kept
# and reused while its marker says it holds N records), reads it once to
# warm the page cache, then times R runs (default 3) of
#
#     taskset -c C build/tollctl report --ledger DIR --format json
#
# pinned to CPU C (default 1), and prints the median wall and CPU seconds
# and records per second of wall time. The target is 10M records in under
# 10 s on one core. It prints only; nothing is written to RESULTS.md.
# Exit status: 0 when every run exited 0, 1 otherwise, 2 on usage errors.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
records=10000000
dir=/tmp/tollgate-report-bench
runs=3
cpu=1
build=1
while [ $# -gt 0 ]; do
	case $1 in
	--records) records=$2; shift 2 ;;
	--dir) dir=$2; shift 2 ;;
	--runs) runs=$2; shift 2 ;;
	--cpu) cpu=$2; shift 2 ;;
	--no-build) build=0; shift ;;
	*) echo "usage: $0 [--records N] [--dir DIR] [--runs R] [--cpu C] [--no-build]" >&2
	   exit 2 ;;
	esac
done

cd "$root"
if [ $build = 1 ]; then
	make -s build/tollctl build/ledgergen >/dev/null
fi

marker="$dir/.ledgergen-$records"
if [ ! -e "$marker" ]; then
	rm -rf "$dir"
	echo "generating $records records into $dir ..."
	start=$(date +%s%N)
	build/ledgergen "$dir" "$records"
	touch "$marker"
	echo "generated in $(( ($(date +%s%N) - start) / 1000000 )) ms"
fi
bytes=$(du -sb "$dir" | cut -f1)
segments=$(ls "$dir"/*.tgl | wc -l)
cat "$dir"/*.tgl >/dev/null          # into the page cache: time the reader, not the disk

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
status=0
for i in $(seq "$runs"); do
	rc=0
	/usr/bin/time -f "%e %U %S %M" -o "$work/time.$i" \
		taskset -c "$cpu" build/tollctl report --ledger "$dir" --format json \
		>"$work/out.$i.json" 2>"$work/err.$i" || rc=$?
	if [ $rc != 0 ]; then
		echo "run $i: tollctl exited $rc: $(tail -c 300 "$work/err.$i")" >&2
		status=1
	fi
done

python3 - "$work" "$runs" "$bytes" "$segments" "$cpu" <<'PY'
import json, os, statistics, sys
work, runs, size, segments, cpu = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), \
    sys.argv[4], sys.argv[5]
walls, cpus, rss = [], [], []
for i in range(1, runs + 1):
    e, u, s, m = open(os.path.join(work, "time.%d" % i)).read().split()[-4:]
    walls.append(float(e)); cpus.append(float(u) + float(s)); rss.append(int(m))
out = json.load(open(os.path.join(work, "out.1.json")))
t = out["totals"]
n = t["records"]
wall, cpu_s = statistics.median(walls), statistics.median(cpus)
print("tollctl report --format json, CPU %s, %d runs (median)" % (cpu, runs))
print("  ledger:      %d records (+%s segment records), %s segments, %.2f GB" %
      (n, segments, segments, size / 1e9))
print("  wall:        %.2f s   (runs: %s)" % (wall, ", ".join("%.2f" % w for w in walls)))
print("  cpu:         %.2f s   (runs: %s)" % (cpu_s, ", ".join("%.2f" % c for c in cpus)))
print("  records/s:   %.2f M (wall)   %.0f MB/s" % (n / wall / 1e6, size / wall / 1e6))
print("  max RSS:     %d MB" % (max(rss) // 1024))
print("  report:      %d groups, %d runs, %d outliers, %d chargebacks, spend %s USD" %
      (t["groups"], t["runs"], t["outliers"], t["chargebacks"], t["spend_usd"]))
print("  target:      10M records in < 10 s on one core: %s" %
      ("met" if wall * 1e7 / n < 10 else "NOT met"))
PY
exit $status
