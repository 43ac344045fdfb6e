//! The core's view of the durable log: the WAL plus the latest snapshot's metadata.
//!
//! The persistence thread appends to the WAL before the raft loop tells the core
//! `on_persisted`, so the WAL can briefly hold entries the core does not yet consider
//! durable. `visible_last_index` is what the core has been told; reads never go past it,
//! which keeps the core's view consistent with the order of its own inputs.

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use storage::NotInLog;

use bytes::Bytes;
use storage::snapshot::SnapshotStore;
use storage::wal::Wal;
use storage::{Entry, SnapshotMeta};

use crate::raft::{LogStorage, StorageError};

/// Shared between the raft loop, the persistence thread and the apply thread.
pub struct DurableLog {
    /// The write-ahead log.
    pub wal: Wal,
    /// Snapshot files.
    pub snapshots: SnapshotStore,
    /// The latest durable snapshot (taken locally or installed from the leader).
    snapshot_meta: Mutex<SnapshotMeta>,
    visible_last_index: AtomicU64,
}

impl DurableLog {
    /// Wraps recovered storage; everything recovered is durable, hence visible.
    pub fn new(wal: Wal, snapshots: SnapshotStore, snapshot_meta: SnapshotMeta) -> DurableLog {
        let visible = wal.last_index().max(snapshot_meta.last_index);
        DurableLog {
            wal,
            snapshots,
            snapshot_meta: Mutex::new(snapshot_meta),
            visible_last_index: AtomicU64::new(visible),
        }
    }

    /// The latest durable snapshot.
    pub fn snapshot_meta(&self) -> SnapshotMeta {
        lock(&self.snapshot_meta).clone()
    }

    /// Records a new durable snapshot.
    pub fn set_snapshot_meta(&self, meta: SnapshotMeta) {
        let mut current = lock(&self.snapshot_meta);
        if meta.last_index >= current.last_index {
            *current = meta;
        }
    }

    /// Hands the WAL's entries from `lo` up to (not including) `hi` to `visit` in log order,
    /// until `visit` refuses one by returning `Break`; returns the index of the first entry
    /// not taken (the refused one, or where the walk ended).
    ///
    /// Entries are copied out `chunk_bytes` at a time (at least one entry per chunk), each
    /// chunk under its own short hold of the WAL's view lock, and `visit` runs with no lock
    /// held. The appender needs that lock exclusively to publish every synced write, and a
    /// waiting writer also holds off new readers, so one read of thousands of large entries
    /// under a single hold would stall every client write behind it (issue 12). Entries
    /// compacted meanwhile are skipped (the walk resumes at the first entry still in the
    /// log); a suffix truncated meanwhile ends the walk.
    pub fn visit_entries(
        &self,
        lo: u64,
        hi: u64,
        chunk_bytes: u64,
        mut visit: impl FnMut(Entry) -> ControlFlow<()>,
    ) -> storage::Result<u64> {
        let mut next = lo;
        loop {
            let chunk_end = hi
                .min(self.wal.last_index() + 1)
                .min(next.saturating_add(CHUNK_ENTRIES_MAX));
            if next >= chunk_end {
                return Ok(next);
            }
            let chunk = match self.wal.entries(next, chunk_end, chunk_bytes) {
                Ok(chunk) => chunk,
                Err(storage::Error::NotInLog(NotInLog::Compacted { first_index, .. }))
                    if first_index > next =>
                {
                    next = first_index;
                    continue;
                }
                Err(storage::Error::NotInLog(NotInLog::Unavailable { .. })) => return Ok(next),
                Err(e) => return Err(e),
            };
            for entry in chunk {
                let index = entry.index;
                if visit(entry).is_break() {
                    return Ok(index);
                }
                next = index + 1;
            }
        }
    }

    /// The raft loop calls this right before `on_persisted(index, _)`.
    pub fn expose_up_to(&self, index: u64) {
        self.visible_last_index.store(index, Ordering::Release);
    }

    /// The raft loop calls this when a `Ready` truncates the log from `index`: entries from
    /// there on are no longer the core's durable log.
    pub fn hide_from(&self, index: u64) {
        self.visible_last_index
            .fetch_min(index.saturating_sub(1), Ordering::AcqRel);
    }
}

/// At most this many entries per chunk of [`DurableLog::visit_entries`], so that a chunk of
/// tiny entries (each CRC-verified under the lock) is as short a hold as one of large ones.
const CHUNK_ENTRIES_MAX: u64 = 1024;

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding this lock already aborted the node's invariants; keep going
    // with the data, which is plain metadata and always consistent between statements.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The [`LogStorage`] handed to the core.
#[derive(Clone)]
pub struct NodeLogStorage(pub Arc<DurableLog>);

/// A WAL or snapshot read that failed for a reason other than compaction or the end of
/// the log: the data cannot be trusted, and the node stops (issue 11, item 8). The storage
/// error names the file and offset.
fn read_failed(what: &str, e: storage::Error) -> StorageError {
    match e {
        storage::Error::NotInLog(NotInLog::Compacted { index, first_index }) => {
            StorageError::NotInLog(NotInLog::Compacted { index, first_index })
        }
        storage::Error::NotInLog(NotInLog::Unavailable { index, last_index }) => {
            StorageError::NotInLog(NotInLog::Unavailable { index, last_index })
        }
        other => StorageError::Fatal(format!(
            "reading {what} failed: {other}; stopping the node, since answering from damaged \
             storage could lose acknowledged writes. Check the disk, then restart (the node \
             refuses to start on a corrupt log and names the file)"
        )),
    }
}

impl LogStorage for NodeLogStorage {
    fn first_index(&self) -> u64 {
        // Entries the snapshot covers stay readable until compacted
        // (`snapshot_trailing_entries`), so that a slightly lagging follower catches up
        // from the log.
        let snapshot_last = lock(&self.0.snapshot_meta).last_index;
        self.0.wal.first_index().min(snapshot_last + 1)
    }

    fn last_index(&self) -> u64 {
        let snapshot_last = lock(&self.0.snapshot_meta).last_index;
        let visible = self.0.visible_last_index.load(Ordering::Acquire);
        visible.min(self.0.wal.last_index()).max(snapshot_last)
    }

    fn term(&self, index: u64) -> Result<u64, StorageError> {
        let meta = self.snapshot_meta_ref();
        if index == meta.0 {
            return Ok(meta.1);
        }
        if index == 0 {
            return Ok(0);
        }
        let first = self.first_index();
        if index < first {
            return Err(StorageError::NotInLog(NotInLog::Compacted {
                index,
                first_index: first,
            }));
        }
        let last = self.last_index();
        if index > last {
            return Err(StorageError::NotInLog(NotInLog::Unavailable {
                index,
                last_index: last,
            }));
        }
        self.0
            .wal
            .term(index)
            .map_err(|e| read_failed("the term of a log entry", e))
    }

    fn entries(&self, lo: u64, hi: u64, max_bytes: u64) -> Result<Vec<Entry>, StorageError> {
        let first = self.first_index();
        if lo < first {
            return Err(StorageError::NotInLog(NotInLog::Compacted {
                index: lo,
                first_index: first,
            }));
        }
        let last = self.last_index();
        if hi > last + 1 {
            return Err(StorageError::NotInLog(NotInLog::Unavailable {
                index: hi - 1,
                last_index: last,
            }));
        }
        if lo >= hi {
            return Ok(Vec::new());
        }
        self.0
            .wal
            .entries(lo, hi, max_bytes)
            .map_err(|e| read_failed("log entries", e))
    }

    fn snapshot_meta(&self) -> SnapshotMeta {
        self.0.snapshot_meta()
    }

    fn snapshot_chunk(
        &self,
        meta: &SnapshotMeta,
        offset: u64,
        max_len: u64,
    ) -> Result<(Bytes, bool), StorageError> {
        let replaced = |current: &SnapshotMeta| StorageError::if_snapshot_replaced(meta, current);
        if let Some(e) = replaced(&self.0.snapshot_meta()) {
            return Err(e);
        }
        let read = self.0.snapshots.data_len(meta).and_then(|len| {
            // The offset comes from the follower: past the end is an answer, not damage.
            if offset >= len {
                return Ok((Bytes::new(), true));
            }
            self.0.snapshots.read_chunk(meta, offset, max_len)
        });
        read.map_err(|e| {
            // The file may have been deleted because a newer snapshot replaced it meanwhile.
            replaced(&self.0.snapshot_meta()).unwrap_or_else(|| read_failed("the snapshot file", e))
        })
    }
}

impl NodeLogStorage {
    fn snapshot_meta_ref(&self) -> (u64, u64) {
        let meta = lock(&self.0.snapshot_meta);
        (meta.last_index, meta.last_term)
    }
}

#[cfg(test)]
mod tests {
    use storage::wal::WalOptions;

    use super::*;
    use crate::node::writer::reconcile_log_with_snapshot;
    use crate::raft::storage_conformance::{check_all, StorageUnderTest};

    /// The node's storage in a temporary directory, driven as the persistence thread and
    /// the raft loop drive it.
    struct NodeUnderTest {
        storage: NodeLogStorage,
        _dir: tempfile::TempDir,
    }

    impl NodeUnderTest {
        fn new() -> NodeUnderTest {
            let dir = tempfile::tempdir().expect("temp dir");
            let wal = Wal::open(&dir.path().join("wal"), WalOptions::default()).expect("WAL");
            let snapshots = SnapshotStore::open(dir.path().join("snapshots")).expect("snapshots");
            let log = DurableLog::new(wal, snapshots, SnapshotMeta::default());
            NodeUnderTest {
                storage: NodeLogStorage(Arc::new(log)),
                _dir: dir,
            }
        }

        fn write_snapshot(&self, meta: &SnapshotMeta, data: &[u8]) {
            let log = &self.storage.0;
            let mut writer = log.snapshots.begin(meta.clone()).expect("begin snapshot");
            writer.write_chunk(data).expect("write snapshot");
            writer.finish().expect("finish snapshot");
        }
    }

    impl StorageUnderTest for NodeUnderTest {
        type Storage = NodeLogStorage;
        fn storage(&self) -> &NodeLogStorage {
            &self.storage
        }
        fn append(&mut self, entries: &[Entry]) {
            let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
                return;
            };
            let log = &self.storage.0;
            if first.index <= log.wal.last_index() {
                log.hide_from(first.index);
                log.wal.truncate_suffix(first.index).expect("truncate");
            }
            log.wal.append(entries).expect("append");
            log.expose_up_to(last.index);
        }
        fn take_snapshot(&mut self, meta: SnapshotMeta, data: Bytes) {
            self.write_snapshot(&meta, &data);
            self.storage.0.set_snapshot_meta(meta);
        }
        fn compact(&mut self, upto: u64) {
            self.storage.0.wal.compact_prefix(upto).expect("compact");
        }
        fn install_snapshot(&mut self, meta: SnapshotMeta, data: Bytes) {
            self.write_snapshot(&meta, &data);
            reconcile_log_with_snapshot(&self.storage.0, &meta).expect("reconcile");
            self.storage.0.set_snapshot_meta(meta);
        }
    }

    fn normal(index: u64, payload_bytes: usize) -> Entry {
        Entry {
            index,
            term: 1,
            kind: storage::EntryKind::Normal,
            payload: Bytes::from(vec![b'x'; payload_bytes]),
        }
    }

    /// `visit` runs with no WAL lock held: it can append (which takes the view lock
    /// exclusively to publish) without deadlocking, so a writer never waits for a whole
    /// page, only for one chunk. A refused entry is where the next page starts, and
    /// entries compacted during the walk are skipped.
    #[test]
    fn visiting_entries_holds_no_wal_lock_between_chunks() {
        let dir = tempfile::tempdir().expect("temp dir");
        let wal = Wal::open(&dir.path().join("wal"), WalOptions::default()).expect("WAL");
        let snapshots = SnapshotStore::open(dir.path().join("snapshots")).expect("snapshots");
        let log = Arc::new(DurableLog::new(wal, snapshots, SnapshotMeta::default()));
        let first: Vec<Entry> = (1..=20).map(|i| normal(i, 100 << 10)).collect();
        log.wal.append(&first).expect("append");
        let (done, finished) = std::sync::mpsc::channel();
        let walker = log.clone();
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            let next = walker.visit_entries(1, 100, 64 << 10, |entry| {
                if entry.index == 15 {
                    return ControlFlow::Break(());
                }
                let last = walker.wal.last_index();
                walker
                    .wal
                    .append(&[normal(last + 1, 10)])
                    .expect("append while visiting");
                if entry.index == 5 {
                    walker
                        .wal
                        .compact_prefix(9)
                        .expect("compact while visiting");
                }
                seen.push(entry.index);
                ControlFlow::Continue(())
            });
            let _ = done.send((seen, next));
        });
        let (seen, next) = finished
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("visit_entries deadlocked: it held the WAL's lock while visiting");
        assert_eq!(seen, [1, 2, 3, 4, 5, 10, 11, 12, 13, 14]);
        assert_eq!(next.expect("walk"), 15);
    }

    /// The node's storage answers the core as MemStorage and the simulator's do.
    #[test]
    fn node_log_storage_conforms() {
        check_all(NodeUnderTest::new);
    }
}
