//! The HTTP API's key, Request-Id, query and member-body decoding on arbitrary bytes:
//! `raftlog::fuzzing::http_request` (property in its docs), replayed on stable by
//! `tests/fuzz_corpus.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| raftlog::fuzzing::http_request(data));
