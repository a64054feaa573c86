#!/usr/bin/env bash
# Runs every unit test binary given; prints one line each and a closing
# "N passed, N failed" (exit 77 from a binary counts as skipped).
set -u
pass=0 fail=0 skip=0
for t in "$@"; do
  "$t"; rc=$?
  case $rc in
    0) pass=$((pass + 1)) ;;
    77) skip=$((skip + 1)); echo "SKIP $t" ;;
    *) fail=$((fail + 1)); echo "FAIL $t (exit $rc)" ;;
  esac
done
echo "unit: $pass passed, $fail failed, $skip skipped"
[ "$fail" -eq 0 ]
