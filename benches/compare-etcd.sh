#!/usr/bin/env bash
# raftlog against etcd on this machine, measured the same way (issue 14).
#
# Starts a fresh 3-node raftlog cluster and a fresh 3-node etcd cluster on loopback in turn
# (never both at once; fsync on for both; etcd with --heartbeat-interval 50
# --election-timeout 300, raftlog with its default timers: 50 ms heartbeats, 150-300 ms
# election timeout), runs each workload on each system with `raftlog bench` (one keep-alive
# connection per client, clients spread over the three nodes, closed loop), alternating
# which system goes first, and prints a table with ratios and each system's CPU per
# operation (user + system time of its three node processes over the measured interval,
# from /proc/PID/stat). Then failover, the same way for both: a 1-client put loop sending
# each request to the next node in turn with a 100 ms timeout, SIGKILL of the leader, time
# from the kill to the completion of the first put sent after it; median and max.
#
# Usage: benches/compare-etcd.sh [--quick] [--duration S] [--warmup S] [--trials N]
#          [--workloads put-1,put-64,...] [--no-failover] [--raftlog BIN] [--out DIR]
#          [--base-port P] [--keep] [--threads-per-node N]
#   --quick: 2 s after 1 s warmup, 3 failover trials (a smoke run, not a measurement).
#   --keep: keep every cluster's data and logs (WORK/SYSTEM.N, one per cluster started).
#   --threads-per-node N: each node of both systems runs N threads of its runtime
#   (TOKIO_WORKER_THREADS for raftlog, GOMAXPROCS for etcd): the three nodes share one
#   machine, and by default each runtime sizes itself for all of its cores.
#   Defaults: 10 s after 3 s warmup, 7 trials, every workload; BIN target/release/raftlog
#   (built if missing); results (one JSON per run, table.md) in DIR (default: a temp dir).
#
# Installs Debian's etcd-server with apt-get when /usr/bin/etcd (or `etcd` on PATH) is
# missing. Stops only the processes it started (trap on exit).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=10 WARMUP=3 TRIALS=7 KEY_SPACE=10000 VALUE_SIZE=100 BASE_PORT=27100
RAFTLOG=target/release/raftlog OUT="" KEEP=0 FAILOVER=1 THREADS_PER_NODE=
WORKLOADS="put-1,put-16,put-64,put-256,get-64,lease-get-64,mixed-64"
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) DURATION=2 WARMUP=1 TRIALS=3; shift ;;
    --duration) DURATION="$2"; shift 2 ;;
    --warmup) WARMUP="$2"; shift 2 ;;
    --trials) TRIALS="$2"; shift 2 ;;
    --workloads) WORKLOADS="$2"; shift 2 ;;
    --no-failover) FAILOVER=0; shift ;;
    --raftlog) RAFTLOG="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --base-port) BASE_PORT="$2"; shift 2 ;;
    --keep) KEEP=1; shift ;;
    --threads-per-node) THREADS_PER_NODE="$2"; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
    *) echo "compare-etcd.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

log() { echo "== compare-etcd: $* ($(date -u +%H:%M:%S))" >&2; }

ETCD="$(command -v etcd || true)"
[ -n "$ETCD" ] || [ ! -x /usr/bin/etcd ] || ETCD=/usr/bin/etcd
if [ -z "$ETCD" ]; then
  log "etcd is missing: installing Debian's etcd-server"
  apt-get install -y etcd-server >/dev/null 2>&1 \
    || { apt-get update >/dev/null && apt-get install -y etcd-server >/dev/null; } \
    || { echo "compare-etcd.sh: cannot install etcd-server with apt-get; install etcd 3.4+ and put it on PATH" >&2; exit 1; }
  ETCD=/usr/bin/etcd
fi
if [ ! -x "$RAFTLOG" ]; then
  log "building $RAFTLOG"
  cargo build --release --bin raftlog >&2
fi
RAFTLOG="$(cd "$(dirname "$RAFTLOG")" && pwd)/$(basename "$RAFTLOG")"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/compare-etcd.XXXXXX")"
[ -n "$OUT" ] || OUT="$WORK/results"
mkdir -p "$OUT"
STARTED=()   # every process this script started, and only those, is stopped on exit
PIDS=()      # the running cluster's node processes, by node index 0..2
CLUSTERS_KEPT=0
cleanup() {
  for pid in "${STARTED[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  if [ "$KEEP" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK/raftlog" "$WORK/etcd"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port() { echo $((BASE_PORT + $1)); }            # raftlog raft +1..3, api +11..13, etcd client +21..23, peer +31..33
endpoints() {
  case "$1" in
    raftlog) echo "127.0.0.1:$(port 11),127.0.0.1:$(port 12),127.0.0.1:$(port 13)" ;;
    etcd) echo "127.0.0.1:$(port 21),127.0.0.1:$(port 22),127.0.0.1:$(port 23)" ;;
  esac
}
pids_csv() { local IFS=,; echo "${PIDS[*]}"; }

start_node() { # system index(0..2)
  local system="$1" i="$2" n=$(($2 + 1))
  case "$system" in
    raftlog)
      env ${THREADS_PER_NODE:+TOKIO_WORKER_THREADS="$THREADS_PER_NODE"} \
        "$RAFTLOG" serve --config "$WORK/raftlog/config.json" --id "$n" \
        >>"$WORK/raftlog/node-$n.log" 2>&1 &
      ;;
    etcd)
      local cluster="n1=http://127.0.0.1:$(port 31),n2=http://127.0.0.1:$(port 32),n3=http://127.0.0.1:$(port 33)"
      env ${THREADS_PER_NODE:+GOMAXPROCS="$THREADS_PER_NODE"} \
        "$ETCD" --name "n$n" --data-dir "$WORK/etcd/n$n" \
        --listen-client-urls "http://127.0.0.1:$(port $((20 + n)))" \
        --advertise-client-urls "http://127.0.0.1:$(port $((20 + n)))" \
        --listen-peer-urls "http://127.0.0.1:$(port $((30 + n)))" \
        --initial-advertise-peer-urls "http://127.0.0.1:$(port $((30 + n)))" \
        --initial-cluster "$cluster" --initial-cluster-state new \
        --initial-cluster-token raftlog-compare \
        --heartbeat-interval 50 --election-timeout 300 \
        --logger zap --log-outputs stderr --log-level warn \
        >>"$WORK/etcd/n$n.log" 2>&1 &
      ;;
  esac
  PIDS[$i]=$!
  STARTED+=("$!")
  # Out of the job table: bash would print "Killed" for every node a failover trial kills.
  # (bash still reaps it; `gone` waits for that.)
  disown "$!"
}

# Waits until process $1 is gone (up to 10 s), then SIGKILLs it.
gone() {
  local tries=0
  while kill -0 "$1" 2>/dev/null && [ "$tries" -lt 200 ]; do
    sleep 0.05
    tries=$((tries + 1))
  done
  kill -9 "$1" 2>/dev/null || true
}

# Waits until a put succeeds through every node (so all three serve, the leader elected).
wait_writable() {
  local system="$1" ep
  for ep in $(endpoints "$system" | tr , ' '); do
    local tries=0
    until "$RAFTLOG" bench --target "$system" --endpoints "$ep" --clients 1 --requests 1 \
          --timeout-ms 1000 --json >/dev/null 2>&1; do
      tries=$((tries + 1))
      if [ "$tries" -gt 150 ]; then
        echo "compare-etcd.sh: $system at $ep took no write in 30 s; logs in $WORK/$system" >&2
        KEEP=1; exit 1
      fi
      sleep 0.2
    done
  done
}

start_cluster() {
  local system="$1"
  rm -rf "${WORK:?}/$system"; mkdir -p "$WORK/$system"
  if [ "$system" = raftlog ]; then
    cat >"$WORK/raftlog/config.json" <<JSON
{
  "cluster_id": "raftlog-compare",
  "nodes": {
    "1": { "raft_addr": "127.0.0.1:$(port 1)", "api_addr": "127.0.0.1:$(port 11)" },
    "2": { "raft_addr": "127.0.0.1:$(port 2)", "api_addr": "127.0.0.1:$(port 12)" },
    "3": { "raft_addr": "127.0.0.1:$(port 3)", "api_addr": "127.0.0.1:$(port 13)" }
  },
  "data_dir": "$WORK/raftlog/data"
}
JSON
  fi
  PIDS=()
  for i in 0 1 2; do start_node "$system" "$i"; done
  wait_writable "$system"
}

stop_cluster() {
  local pid
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do gone "$pid"; done
  PIDS=()
  if [ "$KEEP" = 1 ]; then
    CLUSTERS_KEPT=$((CLUSTERS_KEPT + 1))
    mv "$WORK/$1" "$WORK/$1.$CLUSTERS_KEPT"
  else
    rm -rf "${WORK:?}/$1"
  fi
}

# One JSON number from a bench report: `field KEY FILE` (keys are unique in the report).
field() { grep -o "\"$1\":[-0-9.e+]*" "$2" | head -1 | cut -d: -f2; }
fmt() { awk -v v="${1:-0}" -v d="${2:-0}" 'BEGIN { if (v == "") v = 0; printf "%.*f", d, v }'; }
ratio() { awk -v a="${1:-0}" -v b="${2:-0}" 'BEGIN { if (b + 0 > 0) printf "%.2f×", a / b; else printf "n/a" }'; }

workload_args() {
  case "$1" in
    put-1) echo "--op put --clients 1" ;;
    put-16) echo "--op put --clients 16" ;;
    put-64) echo "--op put --clients 64" ;;
    put-256) echo "--op put --clients 256" ;;
    put-1024) echo "--op put --clients 1024" ;;
    get-64) echo "--op get --consistency linearizable --clients 64 --prefill" ;;
    lease-get-64) echo "--op get --consistency lease --clients 64 --prefill" ;;
    stale-get-64) echo "--op get --consistency stale --clients 64 --prefill" ;;
    mixed-64) echo "--op mixed --read-ratio 0.9 --consistency linearizable --clients 64 --prefill" ;;
    *) echo "compare-etcd.sh: unknown workload $1" >&2; exit 2 ;;
  esac
}

run_workload() { # workload system
  local name="$1" system="$2" file="$OUT/$1-$2.json"
  if [ "$system" = etcd ] && [ "$name" = lease-get-64 ]; then
    return 0 # etcd has no lease reads: the row shows raftlog's alone
  fi
  log "$name on $system"
  start_cluster "$system"
  # shellcheck disable=SC2046
  "$RAFTLOG" bench --target "$system" --endpoints "$(endpoints "$system")" \
    --cpu-pids "$(pids_csv)" --value-size "$VALUE_SIZE" --key-space "$KEY_SPACE" \
    --duration "$DURATION" --warmup "$WARMUP" --timeout-ms 10000 --json \
    $(workload_args "$name") >"$file" || true
  stop_cluster "$system"
  [ -s "$file" ] || { echo "compare-etcd.sh: $name on $system reported nothing" >&2; exit 1; }
}

row() { # workload -> one markdown row
  local name="$1" r="$OUT/$1-raftlog.json" e="$OUT/$1-etcd.json"
  cells() {
    if [ -s "$1" ]; then
      printf '%s | %s / %s / %s | %s | %s' \
        "$(fmt "$(field ops_per_second "$1")")" "$(fmt "$(field p50 "$1")" 2)" \
        "$(fmt "$(field p99 "$1")" 2)" "$(fmt "$(field p999 "$1")" 2)" \
        "$(fmt "$(field cpu_us_per_op "$1")")" "$(field errors "$1")"
    else
      printf 'n/a | n/a | n/a | n/a'
    fi
  }
  local ratio_cell=n/a
  [ -s "$e" ] && ratio_cell="$(ratio "$(field ops_per_second "$r")" "$(field ops_per_second "$e")")"
  echo "| $name | $(cells "$r") | $(cells "$e") | $ratio_cell |"
}

log "raftlog $("$RAFTLOG" --version), $("$ETCD" --version | head -1); ${DURATION}s after ${WARMUP}s warmup; results in $OUT"
IFS=, read -r -a WORKLOAD_LIST <<<"$WORKLOADS"
n=0
for name in "${WORKLOAD_LIST[@]}"; do
  workload_args "$name" >/dev/null
  if [ $((n % 2)) = 0 ]; then order="raftlog etcd"; else order="etcd raftlog"; fi
  for system in $order; do run_workload "$name" "$system"; done
  n=$((n + 1))
done

TABLE="$OUT/table.md"
{
  echo "| workload | raftlog ops/s | p50 / p99 / p99.9 ms | CPU µs/op | errors | etcd ops/s | p50 / p99 / p99.9 ms | CPU µs/op | errors | ratio |"
  echo "|---|---|---|---|---|---|---|---|---|---|"
  for name in "${WORKLOAD_LIST[@]}"; do row "$name"; done
} >"$TABLE"

if [ "$FAILOVER" = 1 ]; then
  echo >>"$TABLE"
  echo "| failover ($TRIALS trials) | median ms | max ms | all ms |" >>"$TABLE"
  echo "|---|---|---|---|" >>"$TABLE"
  for system in raftlog etcd; do
    log "failover on $system, $TRIALS trials"
    start_cluster "$system"
    times=()
    for trial in $(seq 1 "$TRIALS"); do
      result="$("$RAFTLOG" bench failover --target "$system" --endpoints "$(endpoints "$system")" \
        --pids "$(pids_csv)" --timeout-ms 100 --json)" \
        || { echo "compare-etcd.sh: failover trial $trial on $system failed" >&2; KEEP=1; exit 1; }
      echo "$result" >>"$OUT/failover-$system.jsonl"
      killed="$(echo "$result" | grep -o '"killed_index":[0-9]*' | cut -d: -f2)"
      times+=("$(fmt "$(echo "$result" | grep -o '"failover_ms":[0-9.e+-]*' | cut -d: -f2)" 1)")
      gone "${PIDS[$killed]}"
      start_node "$system" "$killed"
      wait_writable "$system"
      sleep 1 # let the restarted node catch up before the next leader is killed
    done
    stop_cluster "$system"
    sorted="$(printf '%s\n' "${times[@]}" | sort -n)"
    median="$(echo "$sorted" | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.1f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }')"
    max="$(echo "$sorted" | tail -1)"
    echo "| $system | $median | $max | $(echo "$sorted" | paste -sd' ') |" >>"$TABLE"
  done
fi

log "done; per-run JSON in $OUT"
cat "$TABLE"
