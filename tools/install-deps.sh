#!/usr/bin/env bash
# Installs the Debian packages tollgate needs to build, test and benchmark.
# Idempotent: asks dpkg first and calls apt-get only for what is missing.
# Usage: tools/install-deps.sh [build|test|bench]   (each implies the ones before)
set -eu
level=${1:-build}
build_pkgs="gcc make pkg-config liburing-dev libmbedtls-dev libjemalloc-dev libfyaml-dev libxxhash-dev libhttp-parser-dev"
test_pkgs="python3 curl openssl ca-certificates clang libclang-rt-14-dev"
bench_pkgs="wrk nginx-light haproxy nghttp2-client"
want=$build_pkgs
case $level in
  build) ;;
  test) want="$want $test_pkgs" ;;
  bench) want="$want $test_pkgs $bench_pkgs" ;;
  *) echo "install-deps: unknown level '$level'" >&2; exit 1 ;;
esac
missing=""
for p in $want; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
echo "install-deps: installing:$missing"
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null; then SUDO=sudo; else
    echo "install-deps: not root and no sudo; install these packages:$missing" >&2; exit 1; fi
else SUDO=""; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
