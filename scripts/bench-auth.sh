#!/usr/bin/env bash
# What authentication costs: the same ingest and SQL load against a fresh
# release server with `--auth off` and with `--auth required` (the load
# generator sending the admin token), alternating, back to back.
#
# Ingest: `stepstore bench` through MLflow log-batch (1,000 points per
# request) and Arrow IPC (200,000 points per request), 4 connections.
# SQL over HTTP: after the ingest, 300 sequential `SELECT count(*) FROM runs`
# (per-request overhead: where an auth layer would show) and 20
# `GROUP BY key` aggregates over the ingested points; median and p90
# latency of each.
#
# Usage: scripts/bench-auth.sh [seconds per ingest run] [rounds]
# STEPSTORE_BIN=path runs another build (one without --auth runs only "off").
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/stepstore-target}"
seconds="${1:-10}"
rounds="${2:-2}"

if [ -z "${STEPSTORE_BIN:-}" ]; then
  cargo build --release --bin stepstore
  bin="$CARGO_TARGET_DIR/release/stepstore"
else
  bin="$STEPSTORE_BIN"
fi
modes=(off)
if "$bin" serve --help | grep -q -- "--auth"; then
  modes=(off required)
fi
data="$(mktemp -d)"
port=5078
target="http://127.0.0.1:$port"
server=""
trap '[ -n "$server" ] && kill "$server" 2>/dev/null; rm -rf "$data"' EXIT

start_server() { # name, extra args...
  "$bin" serve --data-dir "$data/$1" --listen "127.0.0.1:$port" "${@:2}" >"$data/$1.out" 2>"$data/$1.log" &
  server=$!
  for _ in $(seq 100); do
    curl -s -o /dev/null "$target/health" && return
    sleep 0.1
  done
  echo "server did not start" >&2
  cat "$data/$1.log" >&2
  exit 1
}

stop_server() {
  kill -TERM "$server"
  wait "$server" || true
  server=""
}

sql_latencies() { # token
  python3 - "$target" "$1" <<'PY'
import json, statistics, sys, time, urllib.request
target, token = sys.argv[1], sys.argv[2]
headers = {"content-type": "application/json"}
if token:
    headers["authorization"] = f"Bearer {token}"
def timed(query, times):
    body = json.dumps({"query": query}).encode()
    latencies = []
    for _ in range(times):
        request = urllib.request.Request(f"{target}/api/v1/sql", body, headers)
        start = time.perf_counter()
        with urllib.request.urlopen(request) as response:
            response.read()
        latencies.append((time.perf_counter() - start) * 1000)
    latencies.sort()
    return statistics.median(latencies), latencies[int(len(latencies) * 0.9)]
small = timed("SELECT count(*) FROM runs", 300)
group = timed("SELECT key, count(*) AS n, avg(value) AS mean FROM metrics GROUP BY key", 20)
print(f"  sql count(*) FROM runs: median {small[0]:.2f} ms, p90 {small[1]:.2f} ms")
print(f"  sql GROUP BY key over the points: median {group[0]:.1f} ms, p90 {group[1]:.1f} ms")
PY
}

for round in $(seq "$rounds"); do
  for mode in "${modes[@]}"; do
    for protocol in "mlflow --steps-per-request 10" "arrow --steps-per-request 2000"; do
      name="r$round-$mode-${protocol%% *}"
      if [ "$mode" = required ]; then
        start_server "$name" --auth required
        token="$(tail -n +2 "$data/$name.out" | head -1)"
      else
        start_server "$name"
        token=""
      fi
      echo "== round $round, auth $mode, ${protocol%% *} =="
      # shellcheck disable=SC2086
      "$bin" bench --target "$target" --protocol $protocol --runs 4 --keys 100 \
        --concurrency 4 --duration "${seconds}s" --json ${token:+--token "$token"} 2>/dev/null |
        python3 -c 'import json,sys; r=json.load(sys.stdin); l=r["latency"]; p=r["points_per_sec"]/1e6; a=l["p50_ms"]; b=l["p99_ms"]; e=r["errors"]; print(f"  {p:.2f} M points/s, p50 {a:.2f} ms, p99 {b:.2f} ms, errors {e}")'
      if [ "${protocol%% *}" = arrow ]; then
        sql_latencies "$token"
      fi
      stop_server
      rm -rf "${data:?}/$name"
    done
  done
done
