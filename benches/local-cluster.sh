# Sourced by the benchmark scripts that run a fresh 3-node cluster on loopback
# (follower-reads-ab.sh, memory-flat.sh): ports, the cluster file, start and stop.
# Needs BASE_PORT set before it is sourced; node N listens on BASE_PORT+N (peers) and
# BASE_PORT+10+N (clients). Every process started is added to STARTED, so a script's
# EXIT trap can kill what is left.

STARTED=()
CLUSTER_PIDS=()
port() { echo $((BASE_PORT + $1)); }
ENDPOINTS="127.0.0.1:$(port 11),127.0.0.1:$(port 12),127.0.0.1:$(port 13)"

# start_local_cluster BINARY DIR CLUSTER_ID [LOADGEN]: writes DIR/config.json (data in
# DIR/data, logs in DIR/node-N.log), starts the three nodes (their pids in CLUSTER_PIDS)
# and waits until each one takes a write, sent with LOADGEN's `raftlog bench` (default
# BINARY).
start_local_cluster() {
  local bin="$1" dir="$2" id="$3" loadgen="${4:-$1}" n
  write_local_config "$dir" "$id"
  CLUSTER_PIDS=()
  for n in 1 2 3; do
    "$bin" serve --config "$dir/config.json" --id "$n" >>"$dir/node-$n.log" 2>&1 &
    CLUSTER_PIDS+=("$!"); STARTED+=("$!"); disown "$!"
  done
  wait_writable "$loadgen" "$ENDPOINTS" 1000 150 0.2
}

# write_local_config DIR CLUSTER_ID [SETTINGS]: DIR/config.json for the three nodes, data
# in DIR/data; SETTINGS are more top-level members, each ending with a comma (e.g.
# '"election_timeout_ms": [2000, 4000],').
write_local_config() {
  local dir="$1" id="$2" settings="${3:-}"
  mkdir -p "$dir"
  cat >"$dir/config.json" <<JSON
{
  "cluster_id": "$id",
  "nodes": {
    "1": { "raft_addr": "127.0.0.1:$(port 1)", "api_addr": "127.0.0.1:$(port 11)" },
    "2": { "raft_addr": "127.0.0.1:$(port 2)", "api_addr": "127.0.0.1:$(port 12)" },
    "3": { "raft_addr": "127.0.0.1:$(port 3)", "api_addr": "127.0.0.1:$(port 13)" }
  },
  $settings
  "data_dir": "$dir/data"
}
JSON
}

# wait_writable LOADGEN ENDPOINTS TIMEOUT_MS TRIES PAUSE_S: until each of the
# comma-separated ENDPOINTS takes a write (sent with LOADGEN's `raftlog bench`), trying
# each at most TRIES times PAUSE_S apart; exits the script when one never does.
wait_writable() {
  local loadgen="$1" endpoints="$2" timeout_ms="$3" most="$4" pause="$5" ep tries
  for ep in ${endpoints//,/ }; do
    tries=0
    until "$loadgen" bench --endpoints "$ep" --clients 1 --requests 1 --timeout-ms "$timeout_ms" --json >/dev/null 2>&1; do
      tries=$((tries + 1))
      [ "$tries" -lt "$most" ] || { echo "no write through $ep after $most tries, $pause s apart" >&2; exit 1; }
      sleep "$pause"
    done
  done
}

# stop_local_cluster: SIGTERM to the nodes of CLUSTER_PIDS, SIGKILL after 10 s.
stop_local_cluster() {
  local pid tries
  for pid in "${CLUSTER_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${CLUSTER_PIDS[@]}"; do
    tries=0
    while kill -0 "$pid" 2>/dev/null && [ "$tries" -lt 200 ]; do sleep 0.05; tries=$((tries + 1)); done
    kill -9 "$pid" 2>/dev/null || true
  done
}
