#!/usr/bin/env bash
# Where a cluster's CPU goes per operation, user space against the kernel (issue 14): on
# this 2-core machine more than half of a put's CPU is the kernel's (loopback TCP, wake-ups,
# fdatasync), which callgrind (benches/callgrind-cluster.sh) does not count. For each binary
# in turn, and ROUNDS times alternating, starts a fresh 3-node cluster on loopback, warms it
# up, runs one workload with the binary's own `raftlog bench` (clients spread over the
# nodes, 100-byte values over 1,000 keys) and prints ops/s, the cluster's user and system
# CPU per operation and its context switches per operation (from /proc), the generator's
# user and system CPU per operation, and p50 and p99.
#
#   benches/cpu-split.sh [--threads] OP CLIENTS DURATION_S ROUNDS BINARY...
#
# e.g. benches/cpu-split.sh put 64 8 3 /tmp/raftlog-base target/release/raftlog
# OP is put, get (linearizable) or mixed. Ports 28301-28313. Stops only what it started.
# --threads also splits the cluster's figures by node and thread name (tokio workers,
# persistence, apply...), leaving out threads under 0.3 µs per operation.
set -euo pipefail
THREADS=0
if [ "${1:-}" = --threads ]; then THREADS=1; shift; fi
OP="$1" CLIENTS="$2" DUR="$3" ROUNDS="$4"
shift 4
BASE_PORT=28300
# shellcheck source=local-cluster.sh
source "$(dirname "$0")/local-cluster.sh"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/cpu-split.XXXXXX")"
trap 'stop_local_cluster; rm -rf "$WORK"' EXIT

# User and system clock ticks of the nodes, summed.
cpu_ticks() {
  local pid user=0 sys=0
  for pid in "${CLUSTER_PIDS[@]}"; do
    read -r u s < <(awk '{print $14, $15}' "/proc/$pid/stat")
    user=$((user + u)) sys=$((sys + s))
  done
  echo "$user $sys"
}
# One line per thread of the nodes: node number, thread name, tid, user and system ticks,
# context switches.
thread_ticks() {
  local n=0 pid task name
  for pid in "${CLUSTER_PIDS[@]}"; do
    n=$((n + 1))
    for task in /proc/"$pid"/task/*; do
      name=$(cat "$task/comm" 2>/dev/null || echo gone)
      { awk -v n="$n" -v name="${name// /_}" -v tid="${task##*/}" '{print n, name, tid, $14, $15}' "$task/stat" \
          | tr '\n' ' '; awk '/ctxt_switches/ {s += $2} END {print s + 0}' "$task/status"; } 2>/dev/null || true
    done
  done
}
# Voluntary and involuntary context switches of every thread of the nodes.
switches() {
  local pid f n total=0
  for pid in "${CLUSTER_PIDS[@]}"; do
    for f in /proc/"$pid"/task/*/status; do
      n=$(awk '/ctxt_switches/ {s += $2} END {print s + 0}' "$f" 2>/dev/null || echo 0)
      total=$((total + ${n:-0}))
    done
  done
  echo "$total"
}

for round in $(seq 1 "$ROUNDS"); do
  for bin in "$@"; do
    dir="$WORK/$round-$(basename "$bin")"
    start_local_cluster "$bin" "$dir" cpu-split
    "$bin" bench --endpoints "$ENDPOINTS" --clients "$CLIENTS" --duration 2 --warmup 0 \
      --key-space 1000 --op put --json >/dev/null
    sleep 1
    read -r user0 sys0 < <(cpu_ticks)
    switches0=$(switches)
    thread_ticks >"$dir/threads-before"
    # bash's own `time` (TIMEFORMAT): the generator's user and system seconds.
    { TIMEFORMAT='%U %S'; time "$bin" bench --endpoints "$ENDPOINTS" --clients "$CLIENTS" \
      --duration "$DUR" --warmup 0 --key-space 1000 --op "$OP" --json >"$dir/bench.json"; } \
      2>"$dir/generator-cpu"
    read -r user1 sys1 < <(cpu_ticks)
    switches1=$(switches)
    thread_ticks >"$dir/threads-after"
    python3 - "$dir" "$bin" "$((user1 - user0))" "$((sys1 - sys0))" \
      "$((switches1 - switches0))" "$(getconf CLK_TCK)" "$THREADS" <<'PY'
import collections, json, sys
path, binary, user, sys_, switches, hz, by_thread = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:])
report = json.load(open(f"{path}/bench.json"))
gen_user, gen_sys = map(float, open(f"{path}/generator-cpu").read().split()[-2:])
ops = max(report["ops"], 1)
us = lambda ticks: ticks * 1e6 / hz / ops
print(f"{binary}: {report['ops_per_second']:,.0f} {report['op']}/s, cluster user {us(user):.1f} "
      f"sys {us(sys_):.1f} us/op, {switches / ops:.2f} switches/op; generator user "
      f"{gen_user * 1e6 / ops:.1f} sys {gen_sys * 1e6 / ops:.1f} us/op; "
      f"p50 {report['latency_ms']['p50']} p99 {report['latency_ms']['p99']} ms; errors {report['errors']}")
if by_thread:
    def load(name):
        rows = {}
        for line in open(f"{path}/{name}"):
            fields = line.split()
            if len(fields) == 6:
                rows[tuple(fields[:3])] = tuple(map(int, fields[3:]))
        return rows
    before, after = load("threads-before"), load("threads-after")
    split = collections.defaultdict(lambda: [0, 0, 0])
    for key, (u, s, c) in after.items():
        u0, s0, c0 = before.get(key, (0, 0, 0))
        totals = split[f"node {key[0]} {key[1]}"]
        totals[0] += u - u0
        totals[1] += s - s0
        totals[2] += c - c0
    for name, (u, s, c) in sorted(split.items()):
        if us(u + s) >= 0.3:
            print(f"  {name:<28} user {us(u):5.1f} sys {us(s):5.1f} us/op, {c / ops:.2f} switches/op")
PY
    stop_local_cluster
  done
done
