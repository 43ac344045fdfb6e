//! Issue 12, diskfull: refusing writes when the disk is full or the storage quota is
//! reached, and resuming on its own once space is freed.
//!
//! Which storage failures a node survives, and why a failed fsync is never one of them
//! (the fsyncgate rule), is in `storage::space`. This module is the node's side:
//!
//! - **Full disk.** When the WAL refuses an append with `NoSpace` (nothing of it was
//!   written), the persistence thread marks the disk full and keeps retrying the same
//!   append every [`RETRY_INTERVAL`] until it succeeds. Meanwhile it sends nothing that
//!   depends on that write: a follower simply does not acknowledge the entries (Raft
//!   tolerates a slow minority), a leader does not count its own copy (followers can
//!   still commit what it already sent them). Reads, `/v1/status`, `/metrics` and the
//!   raft loop go on; `/healthz` stays 200, since the node recovers by itself.
//! - **Quota.** Like etcd's `--quota-backend-bytes` and its `NOSPACE` alarm, a node whose
//!   data directory has reached `storage_quota_bytes` refuses new writes before the disk
//!   is full. etcd keeps accepting deletes under the alarm because deleting and
//!   compacting shrinks its database; here every write, a delete too, appends to the log,
//!   and the space comes back only when a snapshot compacts the log. So every client
//!   write is refused, and what reclaims space stays allowed: snapshots
//!   (`POST /v1/snapshot`), compaction, membership changes (a few bytes, and an operator
//!   may need them to replace the node). The alarm clears itself once usage is below the
//!   quota again.
//!
//! Either way a write is refused *before it is proposed* (`507 no_space`, nothing
//! proposed, the log index does not move), by whichever node the client asked: a node
//! cannot persist what it would propose or forward without taking more space itself, and
//! the client can retry on another node.
//!
//! Usage is the space the data directory's files take on disk (`st_blocks`), measured,
//! not walked per write: a small thread re-reads it and the free space (statvfs) every
//! [`RETRY_INTERVAL`]. WAL segments are allocated in full ahead of use, so appends do not
//! grow usage; rolling to a new segment does, by one segment. A write is therefore refused
//! when usage plus the write plus one segment would pass the quota: the next roll must
//! still fit. Usage only grows between compactions, so the alarm does not flap; it can be
//! overrun by what a measurement interval lets through (a segment or two under a heavy
//! load) and by a snapshot, which is written whole before it is measured.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::error::NoSpace;

/// How often free space and usage are measured, and a refused append is retried.
pub const RETRY_INTERVAL: Duration = Duration::from_millis(500);

/// Free space and usage of a node's data directory, shared by the persistence thread
/// (which reports a full disk), the client handle (which refuses writes) and `/metrics`.
#[derive(Debug)]
pub struct StorageSpace {
    data_dir: PathBuf,
    quota_bytes: Option<u64>,
    /// What a roll to a new WAL segment allocates: the room a write must leave.
    segment_bytes: u64,
    /// The last WAL append was refused for lack of space and is being retried.
    disk_full: AtomicBool,
    /// Bytes free on the data directory's filesystem, as last measured.
    free_bytes: AtomicU64,
    /// Bytes the data directory occupies, as last measured.
    used_bytes: AtomicU64,
    /// Bytes of writes let through since that measurement. Without them the quota is only
    /// as tight as the sampling interval: on an idle machine a single client wrote 4 MiB
    /// past a 12 MiB quota between two measurements (`tests/disk_full.rs`). Counting them
    /// overestimates (a write into a preallocated segment takes no new space), which errs
    /// on the side of refusing early.
    admitted_since_measure: AtomicU64,
}

impl StorageSpace {
    /// Measures `data_dir` once; enforces `quota_bytes` if set, for WAL segments of
    /// `segment_bytes`.
    pub fn new(data_dir: &Path, quota_bytes: Option<u64>, segment_bytes: u64) -> StorageSpace {
        let space = StorageSpace {
            data_dir: data_dir.to_path_buf(),
            quota_bytes,
            segment_bytes,
            disk_full: AtomicBool::new(false),
            free_bytes: AtomicU64::new(0),
            used_bytes: AtomicU64::new(0),
            admitted_since_measure: AtomicU64::new(0),
        };
        space.measure();
        space
    }

    /// Starts the thread that measures every [`RETRY_INTERVAL`]; it ends with the node.
    pub fn start_measuring(space: &Arc<StorageSpace>) {
        let weak: Weak<StorageSpace> = Arc::downgrade(space);
        let spawned = std::thread::Builder::new()
            .name("space".into())
            .spawn(move || loop {
                std::thread::sleep(RETRY_INTERVAL);
                match weak.upgrade() {
                    Some(space) => space.measure(),
                    None => return,
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(
                "cannot start the thread measuring free space in {}: {e}; the storage \
                 quota is checked against the usage measured at start",
                space.data_dir.display()
            );
        }
    }

    /// Re-reads free space and usage. A failure keeps the previous figures (and logs).
    pub fn measure(&self) {
        match storage::space::free_bytes(&self.data_dir) {
            Ok(free) => self.free_bytes.store(free, Ordering::Relaxed),
            Err(e) => tracing::warn!("cannot read free space of {}: {e}", self.data_dir.display()),
        }
        if self.quota_bytes.is_none() {
            return;
        }
        match storage::space::allocated_bytes(&self.data_dir) {
            Ok(used) => {
                self.used_bytes.store(used, Ordering::Relaxed);
                self.admitted_since_measure.store(0, Ordering::Relaxed);
            }
            Err(e) => tracing::warn!(
                "cannot measure the size of {}: {e}",
                self.data_dir.display()
            ),
        }
    }

    /// The persistence thread could not append for lack of space (`true`), or could again.
    pub fn set_disk_full(&self, full: bool) {
        self.disk_full.store(full, Ordering::Relaxed);
        self.measure();
    }

    /// Bytes free on the data directory's filesystem, as last measured.
    pub fn free_bytes(&self) -> u64 {
        self.free_bytes.load(Ordering::Relaxed)
    }

    /// Bytes the data directory occupies, as last measured (0 without a quota: then it
    /// is not measured).
    pub fn used_bytes(&self) -> u64 {
        self.used_bytes.load(Ordering::Relaxed)
    }

    /// The configured quota.
    pub fn quota_bytes(&self) -> Option<u64> {
        self.quota_bytes
    }

    /// Whether writes are refused right now (the `raftlog_storage_no_space` gauge).
    pub fn no_space(&self) -> bool {
        self.refusal(0).is_some()
    }

    /// Why a write of `proposal_bytes` must be refused, if it must: the `507 no_space`
    /// answer, naming the directory and the space.
    pub fn refusal(&self, proposal_bytes: u64) -> Option<NoSpace> {
        if self.disk_full.load(Ordering::Relaxed) {
            return Some(NoSpace::DiskFull {
                dir: self.data_dir.clone(),
                free_bytes: self.free_bytes(),
            });
        }
        let quota = self.quota_bytes?;
        let used = self.used_bytes();
        let needed = used
            .saturating_add(self.admitted_since_measure.load(Ordering::Relaxed))
            .saturating_add(proposal_bytes)
            .saturating_add(self.segment_bytes);
        if needed <= quota {
            self.admitted_since_measure
                .fetch_add(proposal_bytes, Ordering::Relaxed);
            return None;
        }
        Some(NoSpace::QuotaReached {
            dir: self.data_dir.clone(),
            used_bytes: used,
            quota_bytes: quota,
            segment_bytes: self.segment_bytes,
            free_bytes: self.free_bytes(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_refuses_writes_naming_the_directory_until_it_clears() {
        let dir = tempfile::tempdir().unwrap();
        let space = StorageSpace::new(dir.path(), None, 1 << 20);
        assert_eq!(space.refusal(1 << 20), None, "no quota, disk not full");
        space.set_disk_full(true);
        let refusal = space.refusal(1).expect("a full disk refuses writes");
        assert!(matches!(refusal, NoSpace::DiskFull { .. }), "{refusal:?}");
        let message = refusal.to_string();
        assert!(
            message.contains(&dir.path().display().to_string()),
            "{message}"
        );
        assert!(message.contains("free"), "{message}");
        assert!(space.no_space());
        space.set_disk_full(false);
        assert_eq!(space.refusal(1), None);
    }

    #[test]
    fn the_quota_leaves_room_for_the_write_and_the_next_segment() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ballast"), vec![7u8; 1 << 20]).unwrap();
        let space = StorageSpace::new(dir.path(), Some(4 << 20), 1 << 20);
        assert!(space.used_bytes() >= 1 << 20, "{}", space.used_bytes());
        assert_eq!(
            space.refusal(1 << 20),
            None,
            "1 + 1 + a 1 MiB segment fit in 4"
        );
        let refusal = space
            .refusal(3 << 20)
            .expect("1 + 3 + a 1 MiB segment exceed 4");
        assert!(
            matches!(refusal, NoSpace::QuotaReached { quota_bytes, .. } if quota_bytes == 4 << 20),
            "{refusal:?}"
        );
        let message = refusal.to_string();
        assert!(message.contains("storage_quota_bytes"), "{message}");
        assert!(
            message.contains(&dir.path().display().to_string()),
            "{message}"
        );
        // Space reclaimed on disk shows at the next measurement.
        std::fs::remove_file(dir.path().join("ballast")).unwrap();
        space.measure();
        assert_eq!(space.refusal(2 << 20), None, "{}", space.used_bytes());
    }
}
