#!/usr/bin/env bash
# How often each node's raft loop goes without running under a storm of large writes on a
# CPU-starved machine (issue 14; the storm test's failures): for each binary in turn, and
# ROUNDS times alternating, starts a fresh 3-node cluster on loopback, starts two busy
# loops and a disk writer (dd with fdatasync), runs `raftlog bench` with CLIENTS clients
# writing 1 MiB values over 16 keys for DURATION seconds, then prints each node's
# `raftlog_raft_loop_stalls_total`, the bench's errors by kind, and the longest stalls the
# nodes' logs name.
#
#   benches/loop-stalls.sh CLIENTS DURATION_S ROUNDS BINARY...
#
# e.g. benches/loop-stalls.sh 256 15 3 /tmp/raftlog-base target/release/raftlog
# Ports 28701-28713. Stops only what it started (the busy loops are killed by their own
# `timeout` as well). Binaries older than the stall counter print an empty count.
#
# The busy loops and the writer stay in this script's session: with the kernel's
# autogroups (CONFIG_SCHED_AUTOGROUP, on here and in most desktop kernels) a process in a
# session of its own (setsid) is weighed as a group against the session that runs the
# nodes, whatever the nodes' threads' nice values, which is not how a node competes with
# its own client work or with the other processes of a service's cgroup. (An earlier
# version used setsid: its figures are for that harsher sharing.)
set -euo pipefail
CLIENTS="$1" DUR="$2" ROUNDS="$3"
shift 3
BASE_PORT=28700
# shellcheck source=local-cluster.sh
source "$(dirname "$0")/local-cluster.sh"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/loop-stalls.XXXXXX")"
LOAD_PIDS=()
stop_load() {
  local pid
  for pid in "${LOAD_PIDS[@]}"; do kill -- "-$pid" 2>/dev/null || kill "$pid" 2>/dev/null || true; done
  LOAD_PIDS=()
  rm -f "$WORK/ddfile"
}
trap 'stop_load; stop_local_cluster; rm -rf "$WORK"' EXIT

one_run() {
  local bin="$1" run="$WORK/run" n stalls=""
  rm -rf "$run" && mkdir -p "$run"
  start_local_cluster "$bin" "$run" loop-stalls >/dev/null 2>&1
  for _ in 1 2; do
    timeout $((DUR + 30)) sh -c 'while :; do :; done' &
    LOAD_PIDS+=($!)
  done
  timeout $((DUR + 30)) sh -c "while :; do dd if=/dev/zero of='$WORK/ddfile' bs=1M count=1500 conv=fdatasync status=none; done" &
  LOAD_PIDS+=($!)
  "$bin" bench --config "$run/config.json" --clients "$CLIENTS" --duration "$DUR" \
    --value-size 1048576 --op put --key-space 16 --json >"$run/bench.json" 2>/dev/null || true
  stop_load
  for n in 1 2 3; do
    stalls="$stalls node$n=$(curl -s "http://127.0.0.1:$(port $((10 + n)))/metrics" |
      awk '/^raftlog_raft_loop_stalls_total /{print $2}')"
  done
  stop_local_cluster
  echo "$bin: stalls$stalls; errors $(python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("errors_by_kind"))' "$run/bench.json" 2>/dev/null)"
  echo "  longest: $(grep -h 'did not run' "$run"/node-*.log | grep -oE 'longest_ms=[0-9]+' |
    sort -t= -k2 -n | tail -3 | tr '\n' ' ')"
}

for _ in $(seq "$ROUNDS"); do
  for bin in "$@"; do one_run "$bin"; done
done
