//! The InstallSnapshot receiver on an arbitrary chunk stream:
//! `storage::fuzzing::snapshot_receiver` (property in its docs), replayed on stable by
//! `storage/tests/fuzz_corpus.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| raftlog::storage::fuzzing::snapshot_receiver(data));
