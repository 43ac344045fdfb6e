//! Replays every committed input of the storage crate's fuzz targets, seeds
//! (`fuzz/corpus/<target>/`) and findings (`fuzz/regressions/<target>/`), through the same
//! entry points cargo-fuzz runs (`storage::fuzzing`), on stable: a finding, once fixed,
//! stays fixed without nightly. A failure names the file.
//!
//! The seeds are generated, not hand-edited:
//! `cargo test --release -p storage --test fuzz_corpus -- --ignored write_seed_corpora`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use storage::fuzzing;

/// A fuzz target's entry point: panics when its property is broken.
type FuzzEntry = fn(&[u8]);

const TARGETS: [(&str, FuzzEntry); 4] = [
    ("wal_recovery", fuzzing::wal_recovery),
    ("wal_model", fuzzing::wal_model),
    ("snapshot_reader", fuzzing::snapshot_reader),
    ("snapshot_receiver", fuzzing::snapshot_receiver),
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// Every file under `fuzz/<kind>/<target>/`, sorted (none if the directory is missing).
fn inputs(kind: &str, target: &str) -> Vec<PathBuf> {
    let dir = fuzz_dir().join(kind).join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_committed_fuzz_input_of_the_storage_targets_passes() {
    let mut failures = Vec::new();
    let mut replayed = 0;
    for (target, run) in TARGETS {
        let seeds = inputs("corpus", target);
        assert!(
            !seeds.is_empty(),
            "no seeds in fuzz/corpus/{target}/; regenerate them (see this file's docs)"
        );
        for path in seeds.iter().chain(&inputs("regressions", target)) {
            let bytes = std::fs::read(path)
                .unwrap_or_else(|e| panic!("read fuzz input {}: {e}", path.display()));
            replayed += 1;
            if catch_unwind(AssertUnwindSafe(|| run(&bytes))).is_err() {
                failures.push(path.display().to_string());
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {replayed} fuzz inputs fail (each panic is printed above): {failures:#?}",
        failures.len()
    );
}

/// Writes `storage::fuzzing::seeds()` to `fuzz/corpus/<target>/`.
#[test]
#[ignore = "writes the seed corpora into the source tree"]
fn write_seed_corpora() {
    for (target, name, bytes) in fuzzing::seeds() {
        assert!(
            bytes.len() < 64 << 10,
            "seed {target}/{name} is {} bytes",
            bytes.len()
        );
        let dir = fuzz_dir().join("corpus").join(target);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let path = dir.join(format!("seed-{name}"));
        std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }
}
