#!/usr/bin/env bash
# `make run`: starts the bundled mockllm on 127.0.0.1:8081 (the provider in
# conf/tollgate.yaml) and tollgate in the foreground on conf/tollgate.yaml.
# Ctrl-C stops both.
set -eu
build=${1:-build}
cd "$(dirname "$0")/.."
"$build/mockllm" --listen 127.0.0.1:8081 --threads 1 --quiet &
mock=$!
trap 'kill $mock 2>/dev/null; wait $mock 2>/dev/null' EXIT
cat <<MSG
mockllm on 127.0.0.1:8081 (pid $mock). tollgate on 127.0.0.1:8080. Try:
  curl -s localhost:8080/v1/chat/completions -d '{"model":"gpt-4o","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}'
  curl -sN localhost:8080/v1/messages -d '{"model":"claude-sonnet-4","max_tokens":16,"stream":true}'
MSG
"$build/tollgate" -c conf/tollgate.yaml
