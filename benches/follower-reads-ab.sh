#!/usr/bin/env bash
# A/B of two raftlog binaries on the workloads follower reads decide (issue 14): 64-client
# linearizable gets, 64-client lease gets and, for the ratio the issue sets, 64-client puts,
# spread over all three nodes of a fresh 3-node cluster on loopback (so two thirds of the
# reads arrive at followers), fsync on, default settings, 100-byte values over 10,000
# prefilled keys. Alternates the binaries (base, new, base, new, ...) so that drift of this
# noisy machine hits both alike; one fresh cluster per binary and round runs the three
# workloads in turn. Prints ops/s, latency and CPU per operation (cluster total).
#
#   benches/follower-reads-ab.sh BASE_BINARY NEW_BINARY [ROUNDS] [DURATION_S] [CLIENTS]
#
# WORKLOADS="put-64 get-64 put-64" picks the workloads and their order.
# The load generator is NEW_BINARY's `raftlog bench`, the same for both. Stops only the
# processes it started.
set -euo pipefail

BASE="${1:?usage: follower-reads-ab.sh BASE_BINARY NEW_BINARY [ROUNDS] [DURATION_S] [CLIENTS]}"
NEW="${2:?usage: follower-reads-ab.sh BASE_BINARY NEW_BINARY [ROUNDS] [DURATION_S] [CLIENTS]}"
ROUNDS="${3:-2}"
DURATION="${4:-10}"
CLIENTS="${5:-64}"
WARMUP="${WARMUP:-3}"
WORKLOADS="${WORKLOADS:-get-64 lease-get-64 put-64}"
BASE_PORT="${BASE_PORT:-27300}"

abs() { echo "$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"; }
BASE="$(abs "$BASE")"
NEW="$(abs "$NEW")"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/follower-reads-ab.XXXXXX")"
# shellcheck source=local-cluster.sh
source "$(dirname "$0")/local-cluster.sh"
cleanup() {
  for pid in "${STARTED[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

field() { grep -o "\"$1\":[-0-9.e+]*" "$2" | head -1 | cut -d: -f2; }

run() { # label binary
  local label="$1" bin="$2"
  rm -rf "$WORK/cluster"
  start_local_cluster "$bin" "$WORK/cluster" follower-reads-ab "$NEW"
  local csv; csv="$(IFS=,; echo "${CLUSTER_PIDS[*]}")"
  local workload args
  for workload in $WORKLOADS; do
    case "$workload" in
      get-64) args="--op get --consistency linearizable --prefill" ;;
      lease-get-64) args="--op get --consistency lease --prefill" ;;
      put-64) args="--op put" ;;
    esac
    # shellcheck disable=SC2086
    "$NEW" bench --endpoints "$ENDPOINTS" --cpu-pids "$csv" $args --clients "$CLIENTS" \
      --key-space 10000 --value-size 100 --duration "$DURATION" --warmup "$WARMUP" \
      --timeout-ms 10000 --no-progress --json >"$WORK/result.json"
    printf '| %s | %s | %.0f | %.2f / %.2f / %.2f | %.0f | %s |\n' "$label" "$workload" \
      "$(field ops_per_second "$WORK/result.json")" "$(field p50 "$WORK/result.json")" \
      "$(field p99 "$WORK/result.json")" "$(field p999 "$WORK/result.json")" \
      "$(field cpu_us_per_op "$WORK/result.json")" "$(field errors "$WORK/result.json")"
  done
  stop_local_cluster
}

echo "| run | workload | ops/s | p50 / p99 / p99.9 ms | CPU µs/op | errors |"
echo "|---|---|---|---|---|---|"
for round in $(seq 1 "$ROUNDS"); do
  run "base #$round" "$BASE"
  run "new #$round" "$NEW"
done
