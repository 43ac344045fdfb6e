//! The snapshot reader on an arbitrary snapshot file: `storage::fuzzing::snapshot_reader`
//! (property in its docs), replayed on stable by `storage/tests/fuzz_corpus.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| raftlog::storage::fuzzing::snapshot_reader(data));
