#!/usr/bin/env bash
# Fuzzes the Raft core's door: `fuzz/run.sh [SECONDS]` (default 60).
# Needs the nightly toolchain (libFuzzer instrumentation); installs cargo-fuzz when missing.
# Crashes land in fuzz/artifacts/core_step/; replay one with
#   cargo +nightly fuzz run core_step fuzz/artifacts/core_step/crash-...
set -euo pipefail
seconds="${1:-60}"
cd "$(dirname "$0")/.."
if ! rustup toolchain list | grep -q '^nightly'; then
    echo "fuzz/run.sh: the nightly toolchain is missing; install it with 'rustup toolchain install nightly'" >&2
    exit 2
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz/run.sh: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi
mkdir -p fuzz/corpus/core_step
# One job: the build machines are shared. -max_len matches the property test's inputs.
exec cargo +nightly fuzz run core_step fuzz/corpus/core_step -- \
    -max_total_time="$seconds" -max_len=4096 -print_final_stats=1
