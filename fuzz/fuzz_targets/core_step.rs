//! Steps one Raft core with hostile peer messages interleaved with ticks, proposals and
//! out-of-step persistence reports (issue 11, item 7). The input decoding and the driver
//! are shared with the property test `raft::fuzzing::tests::hostile_peers_never_panic_the_core`,
//! so a crash found here replays there as a unit test: see `fuzz/README.md`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    raftlog::raft::fuzzing::run(data);
});
