#!/usr/bin/env bash
# Builds each libFuzzer harness with clang (ASan+UBSan) and runs it for
# SECONDS (default 30) on its seed corpus. A crash fails the run.
# Usage: tests/fuzz/run.sh [SECONDS]
set -eu
cd "$(dirname "$0")/../.."
secs=${1:-30}
out=build-fuzz
mkdir -p "$out"
CFLAGS="-std=gnu17 -D_GNU_SOURCE -I. -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined"
declare -A srcs=(
  [http1_request]="net/http1.c"
  [http1_response]="net/http1.c"
  [http1_chunks]="net/http1.c"
  [json_scan]="core/json_scan.c"
  [config]="core/config.c core/arena.c core/money.c core/log.c core/json_scan.c tls/conf.c tls/ticket.c tls/shard.c"
  [tags]="core/tags.c"
  [sse]="net/sse.c"
  [ledger_record]="ledger/record.c ledger/segment.c ledger/crc32c.c"
  [tls_record]="tls/conn.c tls/conf.c tls/ticket.c tls/shard.c core/log.c core/json_scan.c"
)
declare -A libs=(
  [http1_request]="-lhttp_parser" [http1_response]="-lhttp_parser" [http1_chunks]="-lhttp_parser"
  [json_scan]="" [config]="-lfyaml -lxxhash -ldl -lmbedtls -lmbedx509 -lmbedcrypto" [tags]="" [sse]=""
  [ledger_record]="" [tls_record]="-lmbedtls -lmbedx509 -lmbedcrypto"
)
fail=0 passed=0 failed=0
for h in http1_request http1_response http1_chunks json_scan config tags sse ledger_record tls_record; do
  # shellcheck disable=SC2086
  clang $CFLAGS tests/fuzz/$h.c ${srcs[$h]} -o "$out/$h" ${libs[$h]}
  mkdir -p "$out/corpus-$h"
  if "$out/$h" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=0 \
       "$out/corpus-$h" "tests/fuzz/corpus/$h" >"$out/$h.log" 2>&1; then
    echo "fuzz $h: ok (${secs}s)"; passed=$((passed + 1))
  else
    echo "fuzz $h: FAILED — see $out/$h.log"; tail -30 "$out/$h.log"; fail=1; failed=$((failed + 1))
  fi
done
echo "fuzz: $passed passed, $failed failed"
exit $fail
