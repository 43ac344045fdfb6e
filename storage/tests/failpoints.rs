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

/// A full disk under the stable store cannot be waited out as the WAL's can (sled keeps
/// failing once a write failed, and a failed fsync is never retried): the error says so,
/// naming the store's directory, the free space and what the operator must do.
#[test]
fn stable_store_out_of_space_names_the_directory_the_free_space_and_the_remedy() {
    let scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let store = StableStore::open(dir.path()).unwrap();
    store
        .save_hard_state(&HardState {
            term: 3,
            voted_for: Some(2),
        })
        .unwrap();
    failpoint::configure("stable::save", "return(ENOSPC)").unwrap();
    let error = store
        .save_hard_state(&HardState {
            term: 4,
            voted_for: Some(1),
        })
        .expect_err("armed");
    assert!(
        matches!(error, storage::Error::StableNoSpace { .. }),
        "an ENOSPC under the stable store is fatal, and says the disk is full: {error}"
    );
    let message = error.to_string();
    for part in [
        dir.path().display().to_string().as_str(),
        "bytes (",
        "free",
        "Free space on that filesystem",
        "restart the node",
    ] {
        assert!(message.contains(part), "{part:?} missing from: {message}");
    }
    assert!(
        !message.contains("resume on their own"),
        "must not promise a retry: {message}"
    );
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

// ---------------------------------------------------------------------------------------
// Issue 12, a full disk. An injected ENOSPC where nothing was half-done, or where what
// was done may stand either way, is `NoSpace`: the store stays writable (the node keeps
// retrying, `src/node/space.rs`), the same write succeeds once space is back, and a
// reopened store has everything acknowledged. Which fsyncs may say ENOSPC this way, and
// which stay fatal, is the table in `storage::space`.

/// Arms `name` with ENOSPC while appends roll into new segments: the append that rolls is
/// refused as `NoSpace` (again while the disk stays full), nothing else changes, and the
/// same append and more go through once it is disarmed.
fn wal_roll_out_of_space_is_retried(name: &str) {
    let scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let wal = open_wal(dir.path());
    for _ in 0..2 {
        append_next(&wal).expect("append before the disk fills");
    }
    failpoint::configure(name, "return(ENOSPC)").unwrap();
    let (acknowledged, error) = append_until_error(&wal);
    assert!(error.is_no_space(), "{name}: a full disk, got {error}");
    assert!(
        error
            .to_string()
            .contains(&dir.path().display().to_string()),
        "{name}: the error names the directory: {error}"
    );
    let again = append_next(&wal).expect_err("the disk is still full");
    assert!(again.is_no_space(), "{name}: refused, not failed: {again}");
    assert_eq!(
        wal.last_index(),
        acknowledged,
        "{name}: a refusal changed the log"
    );
    failpoint::configure(name, "off").unwrap();
    let next = append_next(&wal).expect("the same append once space is back");
    assert_eq!(next, acknowledged + 1);
    for _ in 0..8 {
        append_next(&wal).expect("appends go on, rolling into more segments");
    }
    let last = wal.last_index();
    drop(wal);
    let reopened = open_wal(dir.path());
    assert_eq!(reopened.last_index(), last, "{name}");
    for index in 1..=last {
        assert_eq!(
            reopened.entry(index).unwrap(),
            entry(index, 1024),
            "{name}: {index}"
        );
    }
    drop(scenario);
}

#[test]
fn wal_append_is_retried_after_no_space_preparing_a_segment() {
    wal_roll_out_of_space_is_retried("wal::segment_prepare");
}

#[test]
fn wal_append_is_retried_after_no_space_renaming_a_segment() {
    wal_roll_out_of_space_is_retried("wal::segment_rename");
}

#[test]
fn wal_append_is_retried_after_no_space_fsyncing_the_directory() {
    wal_roll_out_of_space_is_retried("wal::dir_fsync");
}

/// A roll whose directory fsync failed left a segment named past the end of the log: a
/// truncation must take it away too, or the reopened log finds it after the new end.
#[test]
fn truncation_removes_the_segment_of_a_roll_that_ran_out_of_space() {
    let scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let wal = open_wal(dir.path());
    for _ in 0..2 {
        append_next(&wal).expect("append before the disk fills");
    }
    failpoint::configure("wal::dir_fsync", "return(ENOSPC)").unwrap();
    let (acknowledged, error) = append_until_error(&wal);
    assert!(acknowledged >= 2, "{acknowledged}");
    assert!(error.is_no_space(), "{error}");
    failpoint::configure("wal::dir_fsync", "off").unwrap();
    wal.truncate_suffix(2).expect("truncate once space is back");
    assert_eq!(wal.last_index(), 1);
    drop(wal);
    let reopened = open_wal(dir.path());
    assert_eq!(
        reopened.last_index(),
        1,
        "acknowledged up to {acknowledged}, kept 1"
    );
    assert_eq!(reopened.entry(1).unwrap(), entry(1, 1024));
    append_next(&reopened).expect("appends after the truncation");
    drop(scenario);
}

/// Arms `name` with ENOSPC for one compaction: it is refused as `NoSpace`, the log keeps
/// appending, the compaction succeeds once space is back, and a reopened log starts
/// after it with every acknowledged entry since.
fn wal_compaction_out_of_space_is_retried(name: &str) {
    let scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let wal = open_wal(dir.path());
    for _ in 0..8 {
        append_next(&wal).expect("append");
    }
    failpoint::configure(name, "return(ENOSPC)").unwrap();
    let error = wal
        .compact_prefix(4)
        .expect_err("compaction on a full disk");
    assert!(error.is_no_space(), "{name}: a full disk, got {error}");
    failpoint::configure(name, "off").unwrap();
    append_next(&wal).expect("the log still appends after a refused compaction");
    wal.compact_prefix(4)
        .expect("the compaction once space is back");
    assert_eq!(wal.first_index(), 5, "{name}");
    append_next(&wal).expect("append after the compaction");
    let last = wal.last_index();
    drop(wal);
    let reopened = open_wal(dir.path());
    assert_eq!(
        (reopened.first_index(), reopened.last_index()),
        (5, last),
        "{name}"
    );
    for index in 5..=last {
        assert_eq!(
            reopened.entry(index).unwrap(),
            entry(index, 1024),
            "{name}: {index}"
        );
    }
    drop(scenario);
}

#[test]
fn wal_compaction_is_retried_after_no_space_writing_its_metadata() {
    wal_compaction_out_of_space_is_retried("wal::meta_write");
}

#[test]
fn wal_compaction_is_retried_after_no_space_renaming_its_metadata() {
    wal_compaction_out_of_space_is_retried("wal::meta_rename");
}

#[test]
fn wal_compaction_is_retried_after_no_space_fsyncing_the_directory() {
    wal_compaction_out_of_space_is_retried("wal::dir_fsync");
}

/// On a full disk a compacted segment is deleted rather than kept for reuse under a new
/// name, which needs room in the directory: the compaction succeeds and frees space.
#[test]
fn wal_compaction_on_a_full_disk_deletes_instead_of_recycling() {
    let scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let wal = open_wal(dir.path());
    for _ in 0..8 {
        append_next(&wal).expect("append");
    }
    let deleted = wal.segment_stats().deleted;
    failpoint::configure("wal::segment_recycle", "return(ENOSPC)").unwrap();
    wal.compact_prefix(4).expect("compaction deletes instead");
    assert!(wal.segment_stats().deleted > deleted, "no segment deleted");
    failpoint::configure("wal::segment_recycle", "off").unwrap();
    let last = append_next(&wal).expect("append after the compaction");
    drop(wal);
    let reopened = open_wal(dir.path());
    assert_eq!((reopened.first_index(), reopened.last_index()), (5, last));
    drop(scenario);
}

/// Until the truncation mark replaces `wal.meta` nothing has changed: ENOSPC refuses the
/// truncation and the log goes on. After it (the directory fsync), the files are between
/// two logs only recovery may settle: the error is fatal and says ENOSPC, not `NoSpace`.
#[test]
fn wal_truncation_is_refused_before_its_mark_and_fatal_after() {
    let scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let wal = open_wal(dir.path());
    for _ in 0..8 {
        append_next(&wal).expect("append");
    }
    for name in ["wal::meta_write", "wal::meta_rename"] {
        failpoint::configure(name, "return(ENOSPC)").unwrap();
        let error = wal
            .truncate_suffix(6)
            .expect_err("truncation on a full disk");
        assert!(error.is_no_space(), "{name}: {error}");
        failpoint::configure(name, "off").unwrap();
        assert_eq!(
            wal.last_index(),
            8,
            "{name}: a refused truncation changed the log"
        );
    }
    let nine = append_next(&wal).expect("the log still appends");
    assert_eq!(nine, 9);
    failpoint::configure("wal::dir_fsync", "return(ENOSPC)").unwrap();
    let error = wal.truncate_suffix(6).expect_err("fsync fails");
    let storage::Error::Io { source, .. } = &error else {
        panic!("a truncation past its mark cannot be retried: fatal, got {error}");
    };
    assert_eq!(source.raw_os_error(), Some(libc::ENOSPC), "{error}");
    failpoint::configure("wal::dir_fsync", "off").unwrap();
    append_next(&wal).expect_err("refused until reopened");
    drop(wal);
    let reopened = open_wal(dir.path());
    let last = reopened.last_index();
    assert!(
        last == 5 || last == 9,
        "the old log or the truncated one, got {last}"
    );
    for index in 1..=last {
        assert_eq!(
            reopened.entry(index).unwrap(),
            entry(index, 1024),
            "{index}"
        );
    }
    drop(scenario);
}

/// A snapshot that runs out of space at any step is refused as `NoSpace`; the store
/// keeps the previous snapshot (or, if only the directory fsync failed, the new one,
/// whose data was synced), leaves no temp file, and takes the next snapshot.
fn snapshot_out_of_space_is_refused(name: &str) {
    let scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let store = SnapshotStore::open(dir.path()).unwrap();
    write_snapshot(&store, 10).expect("snapshot before the disk fills");
    failpoint::configure(name, "return(ENOSPC)").unwrap();
    let error = write_snapshot(&store, 20).expect_err("armed");
    assert!(error.is_no_space(), "{name}: a full disk, got {error}");
    failpoint::configure(name, "off").unwrap();
    let latest = store.latest_verified().unwrap().map(|m| m.last_index);
    if name == "snapshot::dir_fsync" {
        assert!(matches!(latest, Some(10 | 20)), "{name}: {latest:?}");
    } else {
        assert_eq!(
            latest,
            Some(10),
            "{name}: the failed snapshot is not installed"
        );
    }
    let temps = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".tmp")
        })
        .count();
    assert_eq!(temps, 0, "{name}: temp files left");
    write_snapshot(&store, 30).expect("a snapshot once space is back");
    let reopened = SnapshotStore::open(dir.path()).unwrap();
    assert_eq!(
        reopened.latest_verified().unwrap().map(|m| m.last_index),
        Some(30)
    );
    drop(scenario);
}

#[test]
fn snapshot_is_refused_after_no_space_writing() {
    snapshot_out_of_space_is_refused("snapshot::write");
}

#[test]
fn snapshot_is_refused_after_no_space_fsyncing() {
    snapshot_out_of_space_is_refused("snapshot::fsync");
}

#[test]
fn snapshot_is_refused_after_no_space_renaming() {
    snapshot_out_of_space_is_refused("snapshot::rename");
}

#[test]
fn snapshot_is_refused_after_no_space_fsyncing_the_directory() {
    snapshot_out_of_space_is_refused("snapshot::dir_fsync");
}
