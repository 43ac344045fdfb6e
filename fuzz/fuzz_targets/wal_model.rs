//! The WAL against a `Vec` model under appends, truncations, compactions, crashes and power
//! cuts: `storage::fuzzing::wal_model` (property in its docs), replayed on stable by
//! `storage/tests/fuzz_corpus.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| raftlog::storage::fuzzing::wal_model(data));
