//! Replays every committed input of this crate's fuzz targets, seeds
//! (`fuzz/corpus/<target>/`) and findings (`fuzz/regressions/<target>/`), through the same
//! entry points cargo-fuzz runs (`raftlog::fuzzing`), on stable: a finding, once fixed,
//! stays fixed without nightly. A failure names the file. The storage targets replay in
//! `storage/tests/fuzz_corpus.rs`.
//!
//! The seeds are generated, not hand-edited:
//! `cargo test --release --test fuzz_corpus -- --ignored write_seed_corpora`.

use std::path::{Path, PathBuf};

use raftlog::fuzzing;
use storage::fuzzing::{replay_committed_inputs, write_seed_corpora, FuzzEntry};

fn core_step(data: &[u8]) {
    fuzzing::core_step(data);
}

const TARGETS: [(&str, FuzzEntry); 4] = [
    ("core_step", core_step),
    ("peer_codec", fuzzing::peer_codec),
    ("config_json", fuzzing::config_json),
    ("http_request", fuzzing::http_request),
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

#[test]
fn every_committed_fuzz_input_of_the_raftlog_targets_passes() {
    replay_committed_inputs(&fuzz_dir(), &TARGETS);
}

/// Writes the crate's `fuzzing::seeds()` to `fuzz/corpus/<target>/`.
#[test]
#[ignore = "writes the seed corpora into the source tree"]
fn write_seed_corpora_into_the_tree() {
    write_seed_corpora(&fuzz_dir(), fuzzing::seeds());
}
