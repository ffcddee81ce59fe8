#!/usr/bin/env bash
# Ingestion throughput over HTTP: starts a release server on a fresh data
# directory (default sync policy: every acknowledgement is fsynced) and
# drives it with `stepstore bench` through each protocol (a fresh server
# and data directory each, so that one protocol's files are not still
# being written during the next), then 10,000 runs
# at once while sampling the server's peak memory. Prints one report per
# configuration. Usage: scripts/bench-ingest.sh [seconds per configuration]
# STEPSTORE_BIN names a binary to measure instead of building one (two
# versions back to back).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/stepstore-target}"
seconds="${1:-20}"

bin="${STEPSTORE_BIN:-}"
if [ -z "$bin" ]; then
  cargo build --release --bin stepstore
  bin="$CARGO_TARGET_DIR/release/stepstore"
fi
data="$(mktemp -d)"
port=5077
target="http://127.0.0.1:$port"

start_server() {
  "$bin" serve --data-dir "$data/$1" --listen "127.0.0.1:$port" "${@:2}" >"$data/$1.log" 2>&1 &
  server=$!
  for _ in $(seq 50); do
    curl -sf "$target/health" >/dev/null && return
    sleep 0.1
  done
  echo "server did not start" >&2
  exit 1
}

stop_server() {
  kill -TERM "$server"
  wait "$server" || true
}
trap 'kill "$server" 2>/dev/null || true; rm -rf "$data"' EXIT

run() {
  echo
  "$bin" bench --target "$target" --duration "${seconds}s" "$@" 2>/dev/null
}

echo "== generator ceiling (dry run: bodies only, nothing sent) =="
for protocol in "mlflow --steps-per-request 10" "columnar --steps-per-request 100" \
                "ndjson --steps-per-request 100" "arrow --steps-per-request 2000"; do
  # shellcheck disable=SC2086
  "$bin" bench --protocol $protocol --runs 4 --keys 100 --concurrency 4 --duration 5s --dry-run 2>/dev/null |
    sed -n '1,2p'
done

echo
echo "== protocols, 4 connections, default sync policy (a fresh server each) =="
for protocol in "mlflow --steps-per-request 10" "columnar --steps-per-request 100" \
                "ndjson --steps-per-request 100" "arrow --steps-per-request 500" \
                "arrow --steps-per-request 2000"; do
  start_server "protocol-${protocol// /_}"
  # shellcheck disable=SC2086
  run --protocol $protocol --runs 4 --keys 100 --concurrency 4
  stop_server
  rm -rf "$data"/protocol-*
done

start_server many-runs --buffer-budget-mb 256
echo
echo "== 10,000 runs logging at once (buffer budget 256 MiB: writes wait for room past it) =="
peak_file="$data/peak"
(
  peak=0
  while kill -0 "$server" 2>/dev/null; do
    rss=$(awk '/VmHWM/ {print $2}' "/proc/$server/status" 2>/dev/null || echo 0)
    [ "${rss:-0}" -gt "$peak" ] && peak=$rss && echo "$peak" >"$peak_file"
    sleep 1
  done
) &
run --protocol columnar --runs 10000 --runs-per-request 50 --keys 20 --steps-per-request 10 --concurrency 4
echo "  server peak RSS: $(( $(cat "$peak_file") / 1024 )) MiB"
stop_server
