//! The core's view of the durable log: the WAL plus the latest snapshot's metadata.
//!
//! The persistence thread appends to the WAL before the raft loop tells the core
//! `on_persisted`, so the WAL can briefly hold entries the core does not yet consider
//! durable. `visible_last_index` is what the core has been told; reads never go past it,
//! which keeps the core's view consistent with the order of its own inputs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use storage::snapshot::SnapshotStore;
use storage::wal::Wal;
use storage::{Entry, SnapshotMeta};

use crate::raft::LogStorage;

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

impl LogStorage for NodeLogStorage {
    fn first_index(&self) -> u64 {
        let snapshot_last = lock(&self.0.snapshot_meta).last_index;
        self.0.wal.first_index().max(snapshot_last + 1)
    }

    fn last_index(&self) -> u64 {
        let snapshot_last = lock(&self.0.snapshot_meta).last_index;
        let visible = self.0.visible_last_index.load(Ordering::Acquire);
        visible.min(self.0.wal.last_index()).max(snapshot_last)
    }

    fn term(&self, index: u64) -> storage::Result<u64> {
        let meta = self.snapshot_meta_ref();
        if index == meta.0 {
            return Ok(meta.1);
        }
        if index == 0 {
            return Ok(0);
        }
        let last = self.last_index();
        if index > last {
            return Err(storage::Error::Unavailable {
                index,
                last_index: last,
            });
        }
        self.0.wal.term(index)
    }

    fn entries(&self, lo: u64, hi: u64, max_bytes: u64) -> storage::Result<Vec<Entry>> {
        let hi = hi.min(self.last_index() + 1);
        if lo >= hi {
            return Ok(Vec::new());
        }
        self.0.wal.entries(lo, hi, max_bytes)
    }

    fn snapshot_meta(&self) -> SnapshotMeta {
        self.0.snapshot_meta()
    }

    fn snapshot_chunk(
        &self,
        meta: &SnapshotMeta,
        offset: u64,
        max_len: u64,
    ) -> storage::Result<(Bytes, bool)> {
        self.0.snapshots.read_chunk(meta, offset, max_len)
    }
}

impl NodeLogStorage {
    fn snapshot_meta_ref(&self) -> (u64, u64) {
        let meta = lock(&self.0.snapshot_meta);
        (meta.last_index, meta.last_term)
    }
}
