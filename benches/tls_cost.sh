#!/usr/bin/env bash
# The cost of TLS (mutual TLS between nodes and HTTPS for clients), and of client users
# (HTTP Basic, Argon2id verified once then cached), on the 64-client put benchmark (issue 16).
# Starts a local 3-node cluster in plaintext, with `tls`, with `auth`, and with both,
# alternating ROUNDS times, and runs `raftlog bench --clients 64` against each (as a `write`
# user where `auth` is set); prints writes/s and latency per run.
# Usage: benches/tls_cost.sh [path/to/raftlog] [rounds] [duration_s] [modes]
#   modes: space-separated among plain tls users tls-users (default: all four)
#   BENCH_ARGS: extra `raftlog bench` arguments, e.g. BENCH_ARGS=--leader-only
set -euo pipefail
BIN=${1:-target/release/raftlog}
ROUNDS=${2:-2}
DURATION=${3:-10}
MODES=${4:-plain tls users tls-users}
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
"$BIN" certs init --nodes 3 --out "$WORK/certs" >/dev/null
export RAFTLOG_PASSWORD=bench-password
HASH=$(printf '%s\n' "$RAFTLOG_PASSWORD" | "$BIN" passwd)

run() { # mode: plain | tls | users | tls-users
  local mode=$1 dir="$WORK/$1-$RANDOM" tls="" user=() https=()
  mkdir -p "$dir"
  case "$mode" in tls|tls-users)
    tls=", \"tls\": {\"ca\": \"$WORK/certs/ca.pem\", \"cert\": \"$WORK/certs/node-{id}.pem\", \"key\": \"$WORK/certs/node-{id}-key.pem\"}"
    https=(--cacert "$WORK/certs/ca.pem") ;;
  esac
  case "$mode" in users|tls-users)
    tls="$tls, \"auth\": {\"users\": {\"bench\": {\"password_hash\": \"$HASH\", \"role\": \"write\"}}}"
    user=(--user bench) ;;
  esac
  cat > "$dir/config.json" <<JSON
{"cluster_id": "bench", "data_dir": "$dir/data",
 "nodes": {"1": {"raft_addr": "127.0.0.1:17101", "api_addr": "127.0.0.1:18101"},
           "2": {"raft_addr": "127.0.0.1:17102", "api_addr": "127.0.0.1:18102"},
           "3": {"raft_addr": "127.0.0.1:17103", "api_addr": "127.0.0.1:18103"}}$tls}
JSON
  local pids=()
  for id in 1 2 3; do
    RUST_LOG=warn "$BIN" serve --config "$dir/config.json" --id $id 2>"$dir/node-$id.log" &
    pids+=($!)
  done
  sleep 3
  echo -n "$mode: "
  "$BIN" bench --clients 64 --duration "$DURATION" --config "$dir/config.json" --json "${user[@]}" "${https[@]}" ${BENCH_ARGS:-}
  for pid in "${pids[@]}"; do kill "$pid"; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}

for _ in $(seq "$ROUNDS"); do
  for mode in $MODES; do
    run "$mode"
  done
done
