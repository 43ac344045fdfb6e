//! Rule (the "fsyncgate" rule): after a failed write or fsync nothing is retried as if it
//! had succeeded. Linux may drop the dirty pages of a failed `fsync` and report the next
//! one as a success (PostgreSQL lost data this way in 2018), so every structure here must
//! refuse further writes once one failed, until a restart runs recovery. Each test injects
//! one storage failpoint (`storage::failpoint`), checks the error names the operation and
//! the file, that everything later is refused (never reported durable), and that reopening
//! finds every write that was acknowledged before the fault.
//!
//! Failpoints are process-global: `fail::FailScenario` serializes these tests and disarms
//! every point when each one ends.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use fail::FailScenario;
use storage::failpoint;
use storage::snapshot::SnapshotStore;
use storage::stable::StableStore;
use storage::wal::{StdFs, Wal, WalOptions};
use storage::{Entry, EntryKind, HardState, SnapshotMeta};

fn entry(index: u64, len: usize) -> Entry {
    Entry {
        index,
        term: 1,
        kind: EntryKind::Normal,
        payload: Bytes::from(vec![(index % 251) as u8; len]),
    }
}

/// Segments of 4 KiB, so a few appends of 1 KiB entries roll into new segments.
fn open_wal(dir: &Path) -> Wal {
    Wal::open(
        dir,
        WalOptions {
            segment_size_bytes_max: 4096,
            group_commit_bytes_max: 1 << 20,
            prepare_segments_in_background: false,
            fs: Arc::new(StdFs),
        },
    )
    .expect("open WAL")
}

/// Appends one 1 KiB entry after the last; returns its index if acknowledged.
fn append_next(wal: &Wal) -> storage::Result<u64> {
    let index = wal.last_index() + 1;
    wal.append(&[entry(index, 1024)]).map(|()| index)
}

/// Appends until one fails (at most 64 tries): the failpoint armed by the caller fires on
/// the first append that reaches its operation. Returns the last acknowledged index and
/// the error.
fn append_until_error(wal: &Wal) -> (u64, storage::Error) {
    let mut acknowledged = wal.last_index();
    for _ in 0..64 {
        match append_next(wal) {
            Ok(index) => acknowledged = index,
            Err(e) => return (acknowledged, e),
        }
    }
    panic!("64 appends after index {acknowledged} and the armed failpoint never fired");
}

/// Injects `name`, checks that the WAL refuses everything afterwards, and that a reopened
/// WAL has every acknowledged entry intact and appends again.
fn wal_fault_poisons_the_log(name: &str, context: &str) {
    let scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let wal = open_wal(dir.path());
    for _ in 0..3 {
        append_next(&wal).expect("append before the fault");
    }
    failpoint::configure(name, "return").unwrap();
    let (acknowledged, error) = if name == "wal::compact" {
        let acknowledged = wal.last_index();
        let error = wal
            .compact_prefix(2)
            .expect_err("compaction with wal::compact armed");
        (acknowledged, error)
    } else {
        append_until_error(&wal)
    };
    let message = error.to_string();
    assert!(
        message.contains(context) && message.contains(&dir.path().display().to_string()),
        "{name}: the error names the operation ({context}) and the path: {message}"
    );
    // The fault is gone; the log must still refuse: what the failed operation left on
    // disk (or in the page cache) is unknown until recovery reads it back.
    failpoint::configure(name, "off").unwrap();
    let refused = append_next(&wal).expect_err("append after the fault must be refused");
    assert!(
        refused.to_string().contains("earlier"),
        "{name}: the refusal names the earlier failure: {refused}"
    );
    if name != "wal::compact" {
        // The batch whose write or fsync failed was issued: a barrier over it must fail.
        // (A failed compaction leaves no such batch; every append before it was durable.)
        wal.sync()
            .expect_err("sync after the fault must not report durability");
    }
    assert_eq!(
        wal.last_index(),
        acknowledged,
        "{name}: readers see only acknowledged entries"
    );
    drop(wal);

    let reopened = open_wal(dir.path());
    assert!(
        reopened.last_index() >= acknowledged,
        "{name}: recovery lost acknowledged entries: last {} < {acknowledged}",
        reopened.last_index()
    );
    for index in reopened.first_index()..=acknowledged {
        assert_eq!(
            reopened.entry(index).unwrap(),
            entry(index, 1024),
            "{name}: entry {index}"
        );
    }
    let next = append_next(&reopened).expect("a reopened log appends again");
    assert_eq!(reopened.entry(next).unwrap(), entry(next, 1024));
    drop(scenario);
}

#[test]
fn wal_refuses_appends_after_a_failed_write() {
    wal_fault_poisons_the_log("wal::write", "write WAL segment");
}

#[test]
fn wal_refuses_appends_after_a_failed_fdatasync() {
    wal_fault_poisons_the_log("wal::fdatasync", "fdatasync WAL segment");
}

#[test]
fn wal_refuses_appends_after_a_failed_segment_preparation() {
    wal_fault_poisons_the_log("wal::segment_prepare", "create prepared segment");
}

#[test]
fn wal_refuses_appends_after_a_failed_segment_rename() {
    wal_fault_poisons_the_log("wal::segment_rename", "rename prepared segment");
}

#[test]
fn wal_refuses_appends_after_a_failed_directory_fsync() {
    wal_fault_poisons_the_log("wal::dir_fsync", "fsync WAL directory");
}

#[test]
fn wal_refuses_appends_after_a_failed_compaction() {
    wal_fault_poisons_the_log("wal::compact", "compact WAL");
}

#[test]
fn wal_fault_injects_the_errno_asked_for() {
    let scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let wal = open_wal(dir.path());
    // An fdatasync that fails is fatal whatever its errno, so it stays an I/O error that
    // carries the errno injected.
    failpoint::configure("wal::fdatasync", "return(ENOSPC)").unwrap();
    let error = append_next(&wal).expect_err("armed");
    let storage::Error::Io { source, .. } = &error else {
        panic!("an I/O error, got {error}");
    };
    assert_eq!(source.raw_os_error(), Some(libc::ENOSPC), "{error}");
    drop(scenario);

    // ENOSPC from the write itself (nothing synced) is a full disk, as a real one is.
    let scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let wal = open_wal(dir.path());
    failpoint::configure("wal::write", "return(ENOSPC)").unwrap();
    let error = append_next(&wal).expect_err("armed");
    assert!(
        matches!(error, storage::Error::NoSpace { .. }),
        "an injected ENOSPC on the write reads as a full disk, got {error}"
    );
    drop(scenario);
}

#[test]
fn stable_store_refuses_writes_after_a_failed_save() {
    let scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let acknowledged = HardState {
        term: 3,
        voted_for: Some(2),
    };
    {
        let store = StableStore::open(dir.path()).unwrap();
        store.save_hard_state(&acknowledged).unwrap();
        failpoint::configure("stable::save", "return").unwrap();
        let next = HardState {
            term: 4,
            voted_for: Some(1),
        };
        let error = store.save_hard_state(&next).expect_err("armed");
        assert!(
            error.to_string().contains("fsync sled data file"),
            "names the operation: {error}"
        );
        failpoint::configure("stable::save", "off").unwrap();
        // The same save again, and an unrelated one: sled took the batch before the fsync
        // failed, so succeeding now would claim durability for pages the kernel may have
        // dropped.
        let refused = store
            .save_hard_state(&next)
            .expect_err("refused after the fault");
        assert!(
            refused.to_string().contains("restart the node"),
            "says what to do: {refused}"
        );
        store
            .mark_bootstrapped()
            .expect_err("any later write is refused too");
    }
    let reopened = StableStore::open(dir.path()).unwrap();
    let recovered = reopened.hard_state().unwrap();
    assert!(
        recovered.term >= acknowledged.term,
        "acknowledged term {} lost: recovered {recovered:?}",
        acknowledged.term
    );
    reopened
        .save_hard_state(&HardState {
            term: 5,
            voted_for: None,
        })
        .expect("a reopened store writes again");
    drop(scenario);
}

fn snapshot_meta(index: u64) -> SnapshotMeta {
    SnapshotMeta {
        last_index: index,
        last_term: 1,
        ..SnapshotMeta::default()
    }
}

fn write_snapshot(store: &SnapshotStore, index: u64) -> storage::Result<SnapshotMeta> {
    let mut writer = store.begin(snapshot_meta(index))?;
    writer.write_chunk(&vec![7u8; 300_000])?;
    writer.finish()
}

/// A snapshot whose write, fsync or rename failed is never installed: the previous one
/// stays the latest, no temp file is left, and a later snapshot is a new file written and
/// fsynced from scratch (never the failed one's pages reported durable).
fn snapshot_fault_is_never_installed(name: &str, context: &str) {
    let scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let store = SnapshotStore::open(dir.path()).unwrap();
    write_snapshot(&store, 10).expect("snapshot before the fault");
    failpoint::configure(name, "return").unwrap();
    let error = write_snapshot(&store, 20).expect_err("armed");
    assert!(
        error.to_string().contains(context),
        "{name}: names the operation ({context}): {error}"
    );
    assert_eq!(
        store.latest_verified().unwrap().map(|m| m.last_index),
        Some(10),
        "{name}: the failed snapshot must not be installed"
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "{name}: temp files left: {leftovers:?}"
    );
    failpoint::configure(name, "off").unwrap();
    write_snapshot(&store, 30).expect("a new snapshot after the fault");
    let reopened = SnapshotStore::open(dir.path()).unwrap();
    assert_eq!(
        reopened.latest_verified().unwrap().map(|m| m.last_index),
        Some(30)
    );
    drop(scenario);
}

#[test]
fn snapshot_is_not_installed_after_a_failed_write() {
    snapshot_fault_is_never_installed("snapshot::write", "write snapshot");
}

#[test]
fn snapshot_is_not_installed_after_a_failed_fsync() {
    snapshot_fault_is_never_installed("snapshot::fsync", "fsync snapshot temp file");
}

#[test]
fn snapshot_is_not_installed_after_a_failed_rename() {
    snapshot_fault_is_never_installed("snapshot::rename", "rename snapshot into place");
}
