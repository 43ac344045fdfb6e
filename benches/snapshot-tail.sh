#!/usr/bin/env bash
# Write latency with and without snapshots, for one or more raftlog binaries, measured back
# to back in one run (issue 14: "a snapshot every second must keep write p99 within 1.5x
# of the run without snapshots").
#
# usage: benches/snapshot-tail.sh [--rounds N] [--clients N] [--duration S] \
#            NAME=BINARY:EXTRA_CONFIG_JSON ...
# e.g.   benches/snapshot-tail.sh --rounds 2 \
#            'nosnap=target/release/raftlog:"snapshot_threshold": 1000000000000' \
#            'snap1s=target/release/raftlog:"snapshot_threshold": 10000'
# Each case runs on a fresh 3-node cluster on loopback (ports 27401-27403 / 28401-28403),
# cases alternate within each round. Prints one line per run: name, ops/s, p50/p99/p99.9/max
# (ms, as `raftlog bench --json` reports them) and snapshots taken by the leader.
# It stops only the cluster process it started.
set -euo pipefail
rounds=1 clients=64 duration=10
while [[ $# -gt 0 && $1 == --* ]]; do
    case $1 in
        --rounds) rounds=$2; shift 2 ;;
        --clients) clients=$2; shift 2 ;;
        --duration) duration=$2; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
[[ $# -gt 0 ]] || { echo "usage: $0 [--rounds N] NAME=BINARY:EXTRA_JSON ..." >&2; exit 2; }

run_case() {
    local name=$1 bin=$2 extra=$3 dir
    dir=$(mktemp -d /tmp/raftlog-snaptail.XXXXXX)
    cat >"$dir/config.json" <<JSON
{
  "cluster_id": "snapshot-tail",
  "nodes": {
    "1": { "raft_addr": "127.0.0.1:27401", "api_addr": "127.0.0.1:28401" },
    "2": { "raft_addr": "127.0.0.1:27402", "api_addr": "127.0.0.1:28402" },
    "3": { "raft_addr": "127.0.0.1:27403", "api_addr": "127.0.0.1:28403" }
  },
  "data_dir": "$dir/data"${extra:+, $extra}
}
JSON
    "$bin" cluster --config "$dir/config.json" >"$dir/cluster.log" 2>&1 &
    local pid=$!
    local ok=
    for _ in $(seq 100); do
        if "$bin" status --config "$dir/config.json" 2>/dev/null | grep -qi leader; then ok=1; break; fi
        sleep 0.1
    done
    if [[ -z $ok ]]; then echo "$name: no leader; see $dir/cluster.log" >&2; kill "$pid"; wait "$pid" || true; return 1; fi
    sleep 1
    local out
    out=$("$bin" bench --config "$dir/config.json" --clients "$clients" --duration "$duration" \
        --value-size 100 --json 2>&1) || true
    local snaps
    snaps=$(for p in 28401 28402 28403; do
        curl -s "http://127.0.0.1:$p/metrics" | awk '/^raftlog_snapshots_taken_total/ {print $2}'
    done | sort -n | tail -1)
    echo "$name $out snapshots=${snaps:-?}"
    kill "$pid"; wait "$pid" 2>/dev/null || true
    [[ -n ${KEEP:-} ]] && echo "kept $dir" || rm -rf "$dir"
}

for round in $(seq "$rounds"); do
    for spec in "$@"; do
        name=${spec%%=*}; rest=${spec#*=}; bin=${rest%%:*}; extra=${rest#*:}
        [[ $rest == *:* ]] || extra=
        run_case "$name" "$bin" "$extra"
    done
done
