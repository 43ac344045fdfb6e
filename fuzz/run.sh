#!/usr/bin/env bash
# Fuzzes raftlog's decoders and storage: `fuzz/run.sh [TARGETS] [SECONDS]`.
#   TARGETS  "all" (default) or a comma-separated list, e.g. wal_model,peer_codec
#   SECONDS  per target (default 60); a soak is e.g. `fuzz/run.sh all 1800`
# One target at a time, one job, at the lowest priority: the build machines are shared.
# Memory is a property too: an input that makes a target use more than 1 GiB (or ask for
# that much in one allocation, e.g. a forged length) is reported as a crash.
# Needs the nightly toolchain (libFuzzer instrumentation); installs cargo-fuzz when missing.
#
# Each target starts from its committed seeds (fuzz/corpus/<target>/) and findings
# (fuzz/regressions/<target>/), read-only; what the run grows goes to fuzz/work/<target>/
# and crashes to fuzz/artifacts/<target>/ (both git-ignored). Replay a crash with
#   cargo +nightly fuzz run <target> fuzz/artifacts/<target>/crash-...
# then minimise it (`cargo +nightly fuzz tmin <target> <file>`), save it as
# fuzz/regressions/<target>/<what-it-found>, and fix the code: `cargo test` replays it.
set -euo pipefail
all=(core_step peer_codec wal_recovery wal_model snapshot_reader snapshot_receiver config_json http_request)
targets="${1:-all}"
seconds="${2:-60}"
cd "$(dirname "$0")/.."
if [[ "$targets" == all ]]; then
    list=("${all[@]}")
else
    IFS=, read -r -a list <<<"$targets"
fi
for t in "${list[@]}"; do
    if [[ ! " ${all[*]} " == *" $t "* ]]; then
        echo "fuzz/run.sh: unknown target '$t'; targets are: ${all[*]}" >&2
        exit 2
    fi
done
if ! rustup toolchain list | grep -q '^nightly'; then
    echo "fuzz/run.sh: the nightly toolchain is missing; install it with 'rustup toolchain install nightly'" >&2
    exit 2
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz/run.sh: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi
# The storage targets write WAL segments and snapshots to $TMPDIR: tmpfs keeps the disk
# out of the loop (and is much faster).
if [[ -d /dev/shm && -w /dev/shm ]]; then
    export TMPDIR=/dev/shm
fi
export CARGO_BUILD_JOBS=1
failed=()
for t in "${list[@]}"; do
    mkdir -p "fuzz/work/$t" "fuzz/corpus/$t"
    corpora=("fuzz/work/$t" "fuzz/corpus/$t")
    [[ -d "fuzz/regressions/$t" ]] && corpora+=("fuzz/regressions/$t")
    extra_flags=()
    # The core's property test uses inputs of up to 4 KiB; the rest take the default.
    [[ "$t" == core_step ]] && extra_flags=(-extra_flags=4096)
    # WAL recovery verifies segments on scoped threads; LeakSanitizer then reports glibc's
    # TLS-destructor node (__cxa_thread_atexit_impl, 32 bytes) as a leak at random: a known
    # false positive (fish-shell#9764, rocksdb#5931), not raftlog's memory.
    [[ "$t" == wal_* ]] && extra_flags+=(-detect_leaks=0)
    echo "== $t: ${seconds}s" >&2
    rc=0
    nice -n 19 cargo +nightly fuzz run "$t" "${corpora[@]}" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=1024 -print_final_stats=1 \
        "${extra_flags[@]}" \
        >"fuzz/work/$t.log" 2>&1 || rc=$?
    grep -E '^stat::(number_of_executed_units|average_exec_per_sec|new_units_added|peak_rss_mb)|^#[0-9]+ +DONE|panicked at|^SUMMARY|Test unit written' \
        "fuzz/work/$t.log" >&2 || true
    ((rc == 0)) || failed+=("$t")
done
if ((${#failed[@]})); then
    echo "fuzz/run.sh: targets that crashed or did not run: ${failed[*]} (logs in fuzz/work/<target>.log, inputs in fuzz/artifacts/)" >&2
    exit 1
fi
