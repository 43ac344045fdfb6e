#!/usr/bin/env bash
# Instructions per operation of a whole 3-node cluster, counted by callgrind: the figure that
# holds still on this noisy 2-core machine when throughput and CPU time swing by ±20% from
# one run to the next (issue 14). Each node runs under valgrind's callgrind with counting off;
# after a warm-up the script turns counting on in all three, sends N requests from CLIENTS
# closed-loop clients spread over the nodes (`raftlog bench`, 100-byte values over 1,000
# keys), turns counting off and dumps. It prints each node's instructions and the cluster's
# per operation, and the share of the main tasks (HTTP serving, raft loop, peer links, apply,
# WAL writer) per operation.
#
#   benches/callgrind-cluster.sh BINARY OUT_DIR [REQUESTS] [CLIENTS] [OP] [CONSISTENCY]
#
# e.g. benches/callgrind-cluster.sh target/release/raftlog /tmp/cg-new 6000 64 put
#      benches/callgrind-cluster.sh /tmp/raftlog-base /tmp/cg-base 6000 64 get linearizable
#
# Compare two binaries by running it twice; kernel time (syscalls, fdatasync) is not counted,
# and batching still varies a little between runs (about ±2% per operation at 64 clients).
# Under valgrind a node runs ~50× slower, so the election timeout is raised to 2–4 s to keep
# a slow heartbeat from starting an election in the middle. Installs Debian's valgrind when
# missing. Ports 28201–28213. Stops only the processes it started.
set -euo pipefail
BASE_PORT=28200 # node N: peers on 28200+N, clients on 28210+N
# shellcheck source=local-cluster.sh
source "$(dirname "$0")/local-cluster.sh"

BIN="$1" OUT="$2" REQUESTS="${3:-6000}" CLIENTS="${4:-64}" OP="${5:-put}" CONSISTENCY="${6:-linearizable}"
EP="$ENDPOINTS"

if ! command -v valgrind >/dev/null; then
  echo "callgrind-cluster.sh: valgrind is missing: installing Debian's valgrind" >&2
  { apt-get install -y valgrind >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y valgrind >/dev/null; }; } \
    || { echo "callgrind-cluster.sh: cannot install valgrind with apt-get; install it and retry" >&2; exit 1; }
fi

rm -rf "$OUT"
write_local_config "$OUT" callgrind-cluster '"election_timeout_ms": [2000, 4000],'

PIDS=()
stop() { for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap stop EXIT
for n in 1 2 3; do
  valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$OUT/callgrind-$n.out" \
    "$BIN" serve --config "$OUT/config.json" --id "$n" >"$OUT/node-$n.log" 2>&1 &
  PIDS+=("$!")
done
# Nodes under valgrind start slowly: up to two minutes each.
wait_writable "$BIN" "$EP" 5000 120 1
# Warm-up: every key written once, connections and caches settled.
"$BIN" bench --endpoints "$EP" --clients "$CLIENTS" --requests 1000 --warmup 0 --timeout-ms 30000 \
  --key-space 1000 --op put --prefill --json >/dev/null
for pid in "${PIDS[@]}"; do callgrind_control -i on "$pid" >/dev/null 2>&1; done
"$BIN" bench --endpoints "$EP" --clients "$CLIENTS" --requests "$REQUESTS" --warmup 0 --timeout-ms 30000 \
  --value-size 100 --key-space 1000 --op "$OP" --consistency "$CONSISTENCY" --json >"$OUT/bench.json"
for pid in "${PIDS[@]}"; do
  callgrind_control -i off "$pid" >/dev/null 2>&1
  callgrind_control -d "$pid" >/dev/null 2>&1
done
sleep 1
stop
PIDS=()

python3 - "$OUT" "$REQUESTS" <<'PY'
import json, re, subprocess, sys
out, requests = sys.argv[1], int(sys.argv[2])
report = json.load(open(f"{out}/bench.json"))
print(f"{report['ops']} {report['op']} requests, {report['errors']} errors, {report['clients']} clients")
parts = {
    "HTTP serving": "raftlog::api::server::serve_with::{{closure}}::{{closure}} [",
    "raft loop": "raftlog::node::RaftLoop::run::{{closure}} [",
    "peer links out": "raftlog::transport::peer::run::{{closure}} [",
    "peer links in": "raftlog::transport::server::serve::{{closure}} [",
    "apply": "raftlog::node::apply::Applier<S>::run [",
    "WAL writer": "raftlog::node::writer::Writer::run [",
}
cluster, shares = 0, dict.fromkeys(parts, 0)
for n in (1, 2, 3):
    dumps = sorted(f for f in __import__("glob").glob(f"{out}/callgrind-{n}.out.*"))
    text = subprocess.run(["callgrind_annotate", "--inclusive=yes", dumps[-1]],
                          capture_output=True, text=True, check=True).stdout
    total = int(re.search(r"^\s*([\d,]+) \(100.0%\)\s+PROGRAM TOTALS", text, re.M).group(1).replace(",", ""))
    cluster += total
    print(f"node {n}: {total:,} instructions")
    for name, symbol in parts.items():
        for line in text.splitlines():
            if symbol in line:
                shares[name] += int(line.split()[0].replace(",", ""))
                break
done = max(report["ops"], 1)
print(f"cluster: {cluster:,} instructions, {cluster / done:,.0f} per operation")
for name, value in shares.items():
    print(f"  {name}: {value / done:,.0f} per operation")
PY
