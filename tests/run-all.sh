#!/usr/bin/env bash
# `make test`: every stage, then one closing "N passed, N failed" line that
# adds up the stages' own closing lines. Fails if any stage fails.
set -u
cd "$(dirname "$0")/.."
pass=0 fail=0 bad=0
log=$(mktemp)
trap 'rm -f "$log"' EXIT
stage() {
  echo "=== $1"; shift
  "$@" >"$log" 2>&1; rc=$?
  cat "$log"
  out=$(grep -E '^([A-Za-z0-9_-]+: )?[0-9]+ passed, [0-9]+ failed' "$log" | tail -1)
  if [ -n "$out" ]; then
    p=$(sed -E 's/.*\b([0-9]+) passed.*/\1/' <<<"$out"); f=$(sed -E 's/.*\b([0-9]+) failed.*/\1/' <<<"$out")
    pass=$((pass + p)); fail=$((fail + f))
  fi
  [ "$rc" -eq 0 ] || bad=1
}
stage "unit (release)" make --no-print-directory unit
stage "e2e (release)" make --no-print-directory e2e
stage "unit (ASan+UBSan)" make --no-print-directory SAN=1 unit
stage "e2e (ASan+UBSan)" make --no-print-directory SAN=1 e2e
stage "fuzz (${FUZZ_SECONDS:-10}s each)" make --no-print-directory fuzz FUZZ_SECONDS="${FUZZ_SECONDS:-10}"
[ "$bad" -eq 0 ] || [ "$fail" -gt 0 ] || fail=1   # a stage failed without counting it
echo "total: $pass passed, $fail failed"
[ "$bad" -eq 0 ]
