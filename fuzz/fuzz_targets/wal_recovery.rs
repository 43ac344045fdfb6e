//! WAL recovery over damaged segment files: `storage::fuzzing::wal_recovery` (property in
//! its docs), replayed on stable by `storage/tests/fuzz_corpus.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| raftlog::storage::fuzzing::wal_recovery(data));
