//! `config.json` parsing and validation on arbitrary bytes: `raftlog::fuzzing::config_json`
//! (property in its docs), replayed on stable by `tests/fuzz_corpus.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| raftlog::fuzzing::config_json(data));
