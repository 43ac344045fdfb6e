#!/usr/bin/env bash
# Memory under a long write load (issue 14): a node's RSS must stay flat as writes go on,
# i.e. the state machine plus a bounded overhead, not growing with the number of writes.
#
# Starts a fresh 3-node cluster on loopback with the default settings (fsync on, snapshots
# and log compaction on their default thresholds), then writes 100-byte values over a fixed
# key space (so the state itself stops growing once every key is written) in steps of
# STEP puts, and after each step prints every node's VmRSS and RssAnon, its WAL and
# snapshot bytes on disk and its first log index (compaction moves it).
#
#   benches/memory-flat.sh [BINARY] [STEPS] [STEP] [KEY_SPACE] [CLIENTS]
#
# Defaults: target/release/raftlog, 4 steps of 250,000 puts (1 M in all), 10,000 keys,
# 64 clients spread over the nodes. Stops only the processes it started.
set -euo pipefail

BIN="${1:-target/release/raftlog}"
STEPS="${2:-4}"
STEP="${3:-250000}"
KEY_SPACE="${4:-10000}"
CLIENTS="${5:-64}"
BASE_PORT="${BASE_PORT:-27200}"

[ -x "$BIN" ] || { echo "memory-flat.sh: no binary at $BIN (cargo build --release)" >&2; exit 2; }
BIN="$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/memory-flat.XXXXXX")"
# shellcheck source=local-cluster.sh
source "$(dirname "$0")/local-cluster.sh"
cleanup() {
  for pid in "${STARTED[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start_local_cluster "$BIN" "$WORK" memory-flat

kib() { awk -v f="$1:" '$1 == f { print $2 }' "/proc/$2/status"; }
mib_on_disk() { du -sm "$1" 2>/dev/null | cut -f1; }
report() { # puts-so-far
  for n in 1 2 3; do
    local pid="${CLUSTER_PIDS[$((n - 1))]}" first
    first="$(curl -s "http://127.0.0.1:$(port $((10 + n)))/v1/status" \
      | grep -o '"first_log_index":[0-9]*' | cut -d: -f2)"
    printf '| %s | %s | %.1f | %.1f | %s | %s | %s |\n' "$1" "$n" \
      "$(echo "$(kib VmRSS "$pid") / 1024" | bc -l)" "$(echo "$(kib RssAnon "$pid") / 1024" | bc -l)" \
      "$(mib_on_disk "$WORK/data/node-$n/wal")" "$(mib_on_disk "$WORK/data/node-$n/snapshots")" "$first"
  done
}

echo "| puts | node | VmRSS MiB | RssAnon MiB | WAL MiB | snapshots MiB | first log index |"
echo "|---|---|---|---|---|---|---|"
report 0
for step in $(seq 1 "$STEPS"); do
  "$BIN" bench --endpoints "$ENDPOINTS" --op put --clients "$CLIENTS" --value-size 100 \
    --key-space "$KEY_SPACE" --requests "$STEP" --timeout-ms 10000 --json >"$WORK/step.json"
  errors="$(grep -o '"errors":[0-9]*' "$WORK/step.json" | head -1 | cut -d: -f2)"
  [ "$errors" = 0 ] || echo "memory-flat.sh: step $step had $errors errors" >&2
  report "$((step * STEP))"
done
