#!/usr/bin/env bash
# What a linearizable read costs the peer links beside a lease read (issue 14): starts a
# fresh 3-node cluster of BINARY on loopback, then runs 64-client gets spread over the
# nodes ROUNDS times for each consistency, alternating, and prints reads per second, how
# many reads shared each read index request the followers sent the leader, and the peer
# frames the cluster sent per read (request and answer for both; for linearizable reads
# also the leader's confirming heartbeat round and its acknowledgements).
#
#   benches/read-rounds.sh BINARY [DURATION_S] [ROUNDS]
#
# Ports 28401-28413. Stops only what it started.
set -euo pipefail
BIN="$1" DUR="${2:-6}" ROUNDS="${3:-2}"
BASE_PORT=28400
# shellcheck source=local-cluster.sh
source "$(dirname "$0")/local-cluster.sh"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/read-rounds.XXXXXX")"
trap 'stop_local_cluster; rm -rf "$WORK"' EXIT
start_local_cluster "$BIN" "$WORK" read-rounds
ENDPOINTS="127.0.0.1:$(port 11),127.0.0.1:$(port 12),127.0.0.1:$(port 13)"
"$BIN" bench --endpoints "$ENDPOINTS" --clients 64 --duration 2 --warmup 0 \
  --key-space 1000 --op put --json >/dev/null

# The sum of one counter over the three nodes' /metrics.
metric() {
  local sum=0 n value
  for n in 1 2 3; do
    value=$(curl -fsS "http://127.0.0.1:$(port "1$n")/metrics" | awk -v k="$1" '$1 == k {print $2}')
    sum=$((sum + ${value%.*}))
  done
  echo "$sum"
}

for _ in $(seq "$ROUNDS"); do
  for consistency in linearizable lease; do
    requests0=$(metric raftlog_transport_read_index_served_total)
    frames0=$(metric raftlog_transport_frames_sent_total)
    "$BIN" bench --endpoints "$ENDPOINTS" --clients 64 --duration "$DUR" --warmup 0 \
      --key-space 1000 --op get --consistency "$consistency" --json >"$WORK/bench.json"
    requests1=$(metric raftlog_transport_read_index_served_total)
    frames1=$(metric raftlog_transport_frames_sent_total)
    python3 - "$WORK/bench.json" "$consistency" "$((requests1 - requests0))" \
      "$((frames1 - frames0))" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
consistency, requests, frames = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
ops = max(report["ops"], 1)
print(f"{consistency}: {report['ops_per_second']:,.0f} gets/s, "
      f"{ops / max(requests, 1):.1f} reads per read index request, "
      f"{frames / ops:.2f} peer frames per read, p99 {report['latency_ms']['p99']} ms, "
      f"errors {report['errors']}")
PY
  done
done
