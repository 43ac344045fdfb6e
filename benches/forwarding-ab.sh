#!/usr/bin/env bash
# A/B of two raftlog binaries on the workload that forwarding decides (issue 14): 64-client
# puts spread over all three nodes of a fresh 3-node cluster on loopback (so two thirds of
# the writes arrive at followers), fsync on, default settings. Alternates the binaries
# (base, new, base, new, ...) so that drift of this noisy machine hits both alike, and
# prints puts/s, latency and CPU per acknowledged write (cluster total) for each run.
#
#   benches/forwarding-ab.sh BASE_BINARY NEW_BINARY [ROUNDS] [DURATION_S] [CLIENTS]
#
# e.g. cp target/release/raftlog /tmp/raftlog-base   # before the change
#      cargo build --release && benches/forwarding-ab.sh /tmp/raftlog-base target/release/raftlog 2
#
# The load generator is NEW_BINARY's `raftlog bench`, the same for both. Stops only the
# processes it started. The work is done by benches/follower-reads-ab.sh, which runs any
# of the issue's workloads; this is it with puts only.
set -euo pipefail
WORKLOADS=put-64 BASE_PORT="${BASE_PORT:-27000}" exec "$(dirname "$0")/follower-reads-ab.sh" "$@"
