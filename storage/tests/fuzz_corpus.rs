//! Replays every committed input of the storage crate's fuzz targets, seeds
//! (`fuzz/corpus/<target>/`) and findings (`fuzz/regressions/<target>/`), through the same
//! entry points cargo-fuzz runs (`storage::fuzzing`), on stable: a finding, once fixed,
//! stays fixed without nightly. A failure names the file.
//!
//! The seeds are generated, not hand-edited:
//! `cargo test --release -p storage --test fuzz_corpus -- --ignored write_seed_corpora`.

use std::path::{Path, PathBuf};

use storage::fuzzing;
use storage::fuzzing::{replay_committed_inputs, write_seed_corpora, FuzzEntry};

const TARGETS: [(&str, FuzzEntry); 4] = [
    ("wal_recovery", fuzzing::wal_recovery),
    ("wal_model", fuzzing::wal_model),
    ("snapshot_reader", fuzzing::snapshot_reader),
    ("snapshot_receiver", fuzzing::snapshot_receiver),
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

#[test]
fn every_committed_fuzz_input_of_the_storage_targets_passes() {
    replay_committed_inputs(&fuzz_dir(), &TARGETS);
}

/// Writes the crate's `fuzzing::seeds()` to `fuzz/corpus/<target>/`.
#[test]
#[ignore = "writes the seed corpora into the source tree"]
fn write_seed_corpora_into_the_tree() {
    write_seed_corpora(&fuzz_dir(), fuzzing::seeds());
}
