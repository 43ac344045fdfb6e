#!/usr/bin/env bash
# Where a 1-client put waits (issue 14): the median time, from the moment the node serving
# the client reads the request, at which each node of a fresh 3-node cluster first receives
# the entries, starts its WAL write, finishes its fdatasync and sends its acknowledgement,
# and at which the answer is written. Loopback and the disk are shared by the three nodes
# on this machine, so the waits between those steps (wake-ups, fdatasyncs queued behind one
# another) are where the time goes; callgrind and CPU time do not show them.
#
#   benches/put-timeline.sh BINARY [leader|follower] [SECONDS]
#
# One client puts 100-byte values through the leader's or a follower's API; `perf record
# -a` takes the socket, WAL and fdatasync system calls of the three nodes for SECONDS
# (default 0.5), and the script pairs them into one timeline per put. (To see the thread
# hand-offs between those steps, add sched:sched_switch and sched:sched_wakeup to the
# events and read `perf script` around one put.) Tracing costs a little: the puts' p50 under it is printed
# beside the timeline. Installs Debian's linux-perf when perf is missing. Ports
# 28401-28413. Stops only what it started.
set -euo pipefail
BIN="$1" SERVE="${2:-leader}" SECONDS_TRACED="${3:-0.5}"
BASE_PORT=28400
# shellcheck source=local-cluster.sh
source "$(dirname "$0")/local-cluster.sh"

if ! command -v perf >/dev/null; then
  echo "put-timeline.sh: perf is missing: installing Debian's linux-perf" >&2
  { apt-get install -y linux-perf >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y linux-perf >/dev/null; }; } \
    || { echo "put-timeline.sh: cannot install linux-perf with apt-get; install perf and retry" >&2; exit 1; }
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/put-timeline.XXXXXX")"
trap 'stop_local_cluster; rm -rf "$WORK"' EXIT
start_local_cluster "$BIN" "$WORK" put-timeline
sleep 1
leader=$(curl -s "http://127.0.0.1:$(port 11)/v1/status" | python3 -c 'import json, sys; print(json.load(sys.stdin)["leader_id"])')
case "$SERVE" in
  leader) serving=$leader ;;
  follower) serving=$((leader % 3 + 1)) ;;
  *) echo "put-timeline.sh: serve through 'leader' or 'follower', not '$SERVE'" >&2; exit 2 ;;
esac
endpoint="127.0.0.1:$(port $((10 + serving)))"

# Thread id -> node and thread name, for the parser.
for n in 1 2 3; do
  pid=${CLUSTER_PIDS[$((n - 1))]}
  for task in /proc/"$pid"/task/*; do
    echo "$(basename "$task") $n $(tr ' ' _ <"$task/comm")"
  done
done >"$WORK/threads"

"$BIN" bench --endpoints "$endpoint" --clients 1 --duration 1 --warmup 0 --op put --json >/dev/null
"$BIN" bench --endpoints "$endpoint" --clients 1 --duration "$(python3 -c "print(int($SECONDS_TRACED + 3))")" \
  --warmup 0 --op put --json >"$WORK/bench.json" &
bench=$!
sleep 1
perf record -a -q -o "$WORK/perf.data" \
  -e syscalls:sys_enter_recvfrom,syscalls:sys_exit_recvfrom,syscalls:sys_enter_sendto \
  -e syscalls:sys_enter_writev,syscalls:sys_enter_pwritev,syscalls:sys_exit_fdatasync \
  -- sleep "$SECONDS_TRACED" 2>/dev/null
wait "$bench"
perf script -i "$WORK/perf.data" -F tid,time,event,trace 2>/dev/null >"$WORK/script"

python3 - "$WORK" "$leader" "$serving" <<'PY'
import json, re, statistics, sys
work, leader, serving = sys.argv[1], sys.argv[2], sys.argv[3]
node_of = {}
for line in open(f"{work}/threads"):
    tid, node, _ = line.split(None, 2)
    node_of[int(tid)] = node
events = []  # (µs, node, tid, event, value)
pattern = re.compile(r"\s*(\d+)\s+([\d.]+):\s+syscalls:(\S+):\s*(.*)")
for line in open(f"{work}/script"):
    m = pattern.match(line)
    if not m or int(m.group(1)) not in node_of:
        continue
    tid, at, event, trace = int(m.group(1)), float(m.group(2)) * 1e6, m.group(3), m.group(4)
    if event == "sys_exit_recvfrom":
        value = int(trace, 16) if trace.startswith("0x") else int(trace)
    else:
        fd = re.search(r"fd: (0x[0-9a-f]+)", trace)
        value = int(fd.group(1), 16) if fd else 0
        if event == "sys_enter_sendto":
            value = int(re.search(r"len: (0x[0-9a-f]+)", trace).group(1), 16)
    events.append((at, node_of[tid], tid, event, value))

# A put starts when the serving node reads from the client's socket (the one it writes
# the answers to) and ends when it writes the answer.
answer_fds = [v for _, n, _, e, v in events if n == serving and e == "sys_enter_writev"]
client_fd = statistics.mode(answer_fds) if answer_fds else None
reading = {}  # tid -> fd of the recvfrom it is in
puts, current = [], None
for at, node, tid, event, value in events:
    if event == "sys_enter_recvfrom":
        reading[tid] = value
        continue
    if node == serving and event == "sys_enter_writev" and value == client_fd:
        if current is not None:
            current["answer written"] = at
            puts.append(current)
        current = None
        continue
    from_client = node == serving and reading.get(tid) == client_fd
    if event == "sys_exit_recvfrom" and from_client:
        if value > 0 and current is None:
            current = {"start": at, "durable": set()}
        continue
    if current is None:
        continue
    role = "leader" if node == leader else "follower"
    role = f"{role} {node}" + (" (serving)" if node == serving else "")

    def first(key):
        current.setdefault(key, at)

    if event == "sys_exit_recvfrom" and value > 200:
        first(f"{role}: first frame with a payload read")
    if event == "sys_enter_sendto" and value > 200:
        first(f"{role}: first frame with a payload sent")
    if event == "sys_enter_pwritev":
        first(f"{role}: WAL write starts")
    if event == "sys_exit_fdatasync":
        first(f"{role}: fdatasync done")
        current["durable"].add(node)
    if event == "sys_enter_sendto" and value < 64 and node in current["durable"] and node != leader:
        first(f"{role}: acknowledgement sent")
        current["acked"] = True
    if event == "sys_exit_recvfrom" and 0 < value < 64 and node == leader and current.get("acked"):
        first(f"{role}: first acknowledgement read")
report = json.load(open(f"{work}/bench.json"))
print(f"{len(puts)} puts traced through node {serving} (leader {leader}); p50 under tracing "
      f"{report['latency_ms']['p50']} ms")
keys = sorted({k for p in puts for k in p if k not in ("start", "durable", "acked")},
              key=lambda k: statistics.median(p[k] - p["start"] for p in puts if k in p))
for key in keys:
    times = [p[key] - p["start"] for p in puts if key in p]
    print(f"  {statistics.median(times):6.0f} µs  {key}  (in {len(times)} of {len(puts)})")
PY
