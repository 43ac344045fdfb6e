//! The peer transport's handshake and frame decoders on arbitrary bytes:
//! `raftlog::fuzzing::peer_codec` (property in its docs), replayed on stable by
//! `tests/fuzz_corpus.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| raftlog::fuzzing::peer_codec(data));
