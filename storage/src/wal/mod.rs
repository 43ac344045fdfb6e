//! The segmented write-ahead log of Raft entries.
//!
//! # Write path
//! 1. [`Wal::append`] checks the batch continues the log, encodes it (outside any
//!    lock; large payloads are not copied, `batch.rs`) and queues it.
//! 2. If no append is writing right now, this one becomes the *leader*: it takes every
//!    queued batch (up to [`WalOptions::group_commit_bytes_max`]), writes them with one
//!    `pwritev` and one `fdatasync`, publishes the new entries to readers and wakes the
//!    followers whose batches it wrote (group commit, as in RocksDB's write groups).
//! 3. Otherwise it waits; an append returns only once its entries are durable.
//! 4. Each write carries an end marker (zeros) after its records, and each record's CRC
//!    is salted with its segment's salt (`record.rs`), so the end of the log is found
//!    even in a recycled segment full of older records.
//!    The first record of each write carries a run-start flag, so recovery can tell a
//!    power cut that persisted the last write's pages out of order (torn) from damage
//!    in synced data (corruption).
//! 5. When a record does not fit the active segment, the leader syncs what it wrote,
//!    takes a recycled segment (or a zero-filled one prepared in the background),
//!    writes its header and renames it into place (`segment.rs`).
//!
//! # Read path
//! An in-memory index maps each index to (segment, offset); records are read from
//! memory-mapped segments and their CRC is verified on every [`Wal::entry`] and
//! [`Wal::entries`]. Readers take a read lock on the index only while they copy; the
//! appender takes the write lock only to publish offsets after a sync.
//!
//! # Crash safety
//! The metadata file `wal.meta` (written temp + fdatasync + rename + directory fsync)
//! holds the logical first index and a pending truncation mark; it is the commit point
//! of [`Wal::compact_prefix`] and [`Wal::truncate_suffix`], and recovery finishes
//! whatever they left half done (`recovery.rs`).
//!
//! # Example
//! ```
//! # fn main() -> storage::Result<()> {
//! use bytes::Bytes;
//! use storage::wal::{Wal, WalOptions};
//! use storage::{Entry, EntryKind};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let wal = Wal::open(dir.path(), WalOptions::default())?;
//! let entry = Entry { index: 1, term: 1, kind: EntryKind::Normal, payload: Bytes::from("x") };
//! wal.append(&[entry.clone()])?; // durable once this returns
//! assert_eq!(wal.entry(1)?, entry);
//! wal.close()?;
//! # Ok(())
//! # }
//! ```

mod batch;
pub mod fs;
pub mod record;
mod recovery;
mod segment;

use crate::error::NotInLog;
use std::collections::VecDeque;
use std::io::IoSlice;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

pub use fs::{CrashFs, PowerCutFs, StdFs, WalFs};
pub use recovery::RecoveryReport;
pub use segment::{SegmentStats, RECYCLED_SEGMENTS_MAX};

use batch::EncodedBatch;
use record::{Meta, PAYLOAD_BYTES_MAX, RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES};
use segment::{lock, ActiveSegment, Preparer, SegmentView, END_MARKER_BYTES};

use crate::failpoint;
use crate::{Entry, Error, Result};

/// How a [`Wal`] is set up.
#[derive(Clone, Debug)]
pub struct WalOptions {
    /// Size of a segment file (default 64 MiB). A record larger than this gets a
    /// segment of its own, sized to fit.
    pub segment_size_bytes_max: u64,
    /// Bytes one group commit writes at most before syncing (default 1 MiB); a single
    /// larger batch is still written in one go.
    pub group_commit_bytes_max: usize,
    /// Prepare the next segment on a background thread (default). Tests that count
    /// filesystem operations turn this off so the count is deterministic.
    pub prepare_segments_in_background: bool,
    /// The filesystem under the log ([`StdFs`]; [`CrashFs`] in tests).
    pub fs: Arc<dyn WalFs>,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_size_bytes_max: 64 << 20,
            group_commit_bytes_max: 1 << 20,
            prepare_segments_in_background: true,
            fs: Arc::new(StdFs),
        }
    }
}

/// Smallest accepted segment size: the header plus one small record, with room to
/// spare so tests can roll segments every few entries.
const SEGMENT_BYTES_MIN: u64 = 128;
/// Largest accepted segment size: offsets inside a segment are `u32`.
const SEGMENT_BYTES_MAX: u64 = 1 << 31;

/// One appender's encoded batch waiting to be written.
#[derive(Debug)]
struct Pending {
    /// Order of arrival; batches become durable in this order.
    seq: u64,
    first_index: u64,
    batch: EncodedBatch,
}

/// Where the next record to write is: (batch in the group, record in the batch).
type Cursor = (usize, usize);

/// `at`, or the first record after it if `at` is past the end of its batch.
fn skip_done(group: &[Pending], mut at: Cursor) -> Cursor {
    while at.0 < group.len() && at.1 >= group[at.0].batch.len() {
        at = (at.0 + 1, 0);
    }
    at
}

/// The records from `from` up to (not including) `to`, as (batch, records of it).
fn run_ranges(group: &[Pending], from: Cursor, to: Cursor) -> Vec<(usize, std::ops::Range<usize>)> {
    (from.0..group.len().min(to.0 + 1))
        .map(|i| {
            let lo = if i == from.0 { from.1 } else { 0 };
            let hi = if i == to.0 {
                to.1
            } else {
                group[i].batch.len()
            };
            (i, lo..hi)
        })
        .filter(|(_, r)| !r.is_empty())
        .collect()
}

/// The length of the first record from `at` on that does not fit what is left of the
/// active segment (all of it when there is none), if any: the record the group's first
/// roll starts a new segment for.
fn first_record_past(io: &Io, group: &[Pending], mut at: Cursor) -> Option<u64> {
    let remaining = io.active.as_ref().map_or(0, |a| a.remaining());
    let mut bytes = 0u64;
    while at.0 < group.len() {
        let len = group[at.0].batch.record_len(at.1);
        if bytes + len > remaining {
            return Some(len);
        }
        bytes += len;
        at = skip_done(group, (at.0, at.1 + 1));
    }
    None
}

/// The end marker written after every run of records.
static END_MARKER: [u8; END_MARKER_BYTES] = [0; END_MARKER_BYTES];

/// The appenders' rendezvous.
#[derive(Debug)]
struct WriterState {
    queue: VecDeque<Pending>,
    next_seq: u64,
    /// Invariant: every batch with `seq <= durable_seq` is durable and published, or
    /// else in `refused_no_space`.
    durable_seq: u64,
    /// A leader (or a truncation/compaction) owns the files right now.
    leader_active: bool,
    /// Index of the last entry queued or written: appends must continue from here.
    last_queued: u64,
    /// Batches refused because the disk was full (`space.rs`): nothing of them was
    /// written. Each is removed by its own appender when it wakes up.
    /// Invariant: every seq here is `<= durable_seq` and was never written.
    refused_no_space: std::collections::BTreeSet<u64>,
    /// The out-of-space error those batches get (always [`Error::NoSpace`]).
    no_space: Option<Error>,
    /// Set when a write or sync failed (or the log was closed): after a failed
    /// fdatasync the kernel may have dropped the dirty pages, so nothing in this
    /// process can say what is durable; only reopening (recovery) can.
    failed: Option<String>,
}

/// What the leader owns while writing.
#[derive(Debug)]
struct Io {
    active: Option<ActiveSegment>,
    /// A prepared file taken for the next roll before a group wrote anything (see
    /// [`Wal::write_group`]); used by the next roll it is large enough for.
    spare: Option<segment::Prepared>,
    /// Offsets (in the active segment) of the records being written; kept to reuse
    /// its allocation.
    run_offsets: Vec<u32>,
    /// A segment renamed into place by a roll whose directory fsync then failed for lack
    /// of space: not in the view, never written to. The roll's retry renames a new file
    /// over it; a truncation deletes it, or recovery would find it past the new end.
    unsynced_segment: Option<PathBuf>,
}

/// What readers see.
#[derive(Debug)]
struct View {
    /// Invariant: `first_index >= 1` and `last_index + 1 >= first_index`.
    first_index: u64,
    last_index: u64,
    /// Sorted by first index, contiguous; the last one is the active segment (if any).
    segments: VecDeque<SegmentView>,
}

impl View {
    fn check(&self, index: u64) -> Result<()> {
        if index < self.first_index {
            return Err(Error::NotInLog(NotInLog::Compacted {
                index,
                first_index: self.first_index,
            }));
        }
        if index > self.last_index {
            return Err(Error::NotInLog(NotInLog::Unavailable {
                index,
                last_index: self.last_index,
            }));
        }
        Ok(())
    }

    /// The segment holding `index`, which must be in range.
    fn segment(&self, index: u64) -> &SegmentView {
        let i = self.segments.partition_point(|s| s.first_index <= index);
        assert!(
            i > 0,
            "index {index} in range {}..={} but below every segment",
            self.first_index,
            self.last_index
        );
        &self.segments[i - 1]
    }

    /// Where the records `lo..hi` (all in range) lie, to be decoded without the lock.
    fn locate(&self, lo: u64, hi: u64) -> Vec<LocatedRecord> {
        let mut located = Vec::with_capacity((hi - lo) as usize);
        let mut index = lo;
        while index < hi {
            let segment = self.segment(index);
            let end = hi.min(segment.last_index() + 1);
            for i in index..end {
                located.push(LocatedRecord {
                    index: i,
                    map: Arc::clone(&segment.map),
                    offset: segment.offsets[(i - segment.first_index) as usize],
                    salt: segment.salt,
                });
            }
            index = end;
        }
        located
    }

    fn record(&self, index: u64) -> Result<&[u8]> {
        self.check(index)?;
        Ok(self.segment(index).record_bytes(index))
    }

    fn entry(&self, index: u64) -> Result<Entry> {
        let bytes = self.record(index)?;
        let corruption = |reason: String| {
            let seg = self.segment(index);
            Error::Corruption {
                file: seg.path.clone(),
                offset: u64::from(seg.offsets[(index - seg.first_index) as usize]),
                index: Some(index),
                reason,
            }
        };
        let salt = self.segment(index).salt;
        let entry = record::decode_entry(bytes, salt).map_err(|e| corruption(e.describe()))?;
        if entry.index != index {
            return Err(corruption(format!("record holds entry {}", entry.index)));
        }
        Ok(entry)
    }
}

/// A record found under the view lock, decoded after it is released.
struct LocatedRecord {
    index: u64,
    map: Arc<memmap2::Mmap>,
    offset: u32,
    salt: u32,
}

impl LocatedRecord {
    /// The entry, if the bytes still hold a record of `index` that passes its CRC. The
    /// record is copied first and the copy verified: the mapped bytes may be zeroed or
    /// rewritten at any moment, also between a check and a copy.
    fn decode(&self) -> Option<Entry> {
        let mapped = self.map.get(self.offset as usize..)?;
        let stated_len = record::peek_header(mapped).ok()?.record_len();
        let copy = bytes::Bytes::copy_from_slice(mapped.get(..stated_len)?);
        let header = record::decode_record(&copy, self.salt).ok()?;
        (header.index == self.index).then(|| Entry {
            index: header.index,
            term: header.term,
            kind: header.kind,
            payload: copy.slice(RECORD_HEADER_BYTES..header.record_len()),
        })
    }
}

/// The segmented write-ahead log. `Send + Sync`; every method takes `&self`, and
/// concurrent appends share fdatasyncs (group commit).
///
/// To ensure correctness:
/// - [`Wal::append`] returns only after its entries are durable (written and
///   fdatasynced); entries are visible to readers only once durable.
/// - Appends must continue the log: the first index of a batch is `last_index() + 1`
///   counting batches queued by concurrent appenders in the order they got the lock.
/// - After any I/O error the log refuses further writes ([`Error::Closed`]); reopen it
///   to learn what is durable.
#[derive(Debug)]
pub struct Wal {
    dir: PathBuf,
    fs: Arc<dyn WalFs>,
    group_commit_bytes_max: usize,
    state: Mutex<WriterState>,
    cond: Condvar,
    io: Mutex<Io>,
    view: RwLock<View>,
    preparer: Preparer,
    report: RecoveryReport,
    /// Holds an exclusive `flock` on `wal.lock` while the log is open.
    _lock: std::fs::File,
    /// Keeps the directory open for `StdFs::sync_dir` (`crate::dir`).
    _dir_handle: Arc<crate::dir::DirHandle>,
}

/// Takes an exclusive advisory lock on the directory: two processes appending to one
/// log would interleave records and destroy it.
fn lock_dir(dir: &Path) -> Result<std::fs::File> {
    use std::os::unix::io::AsRawFd;
    std::fs::create_dir_all(dir).map_err(|e| Error::io("create WAL directory", dir, e))?;
    let path = dir.join("wal.lock");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| Error::io("open WAL lock file", &path, e))?;
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        return Err(Error::io(
            "lock the WAL directory (is another raftlog process using it?)",
            &path,
            std::io::Error::last_os_error(),
        ));
    }
    Ok(file)
}

fn invalid_input(dir: &Path, context: &'static str, message: String) -> Error {
    Error::io(
        context,
        dir,
        std::io::Error::new(std::io::ErrorKind::InvalidInput, message),
    )
}

impl Wal {
    /// Opens (creating if needed) the log in `dir` and recovers it: every record's CRC
    /// is verified, a torn tail in the last segment is zeroed with a warning, and any
    /// other damage is refused with [`Error::Corruption`]. See `recovery.rs`.
    pub fn open(dir: &Path, options: WalOptions) -> Result<Wal> {
        if !(SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX).contains(&options.segment_size_bytes_max) {
            return Err(invalid_input(
                dir,
                "open WAL",
                format!(
                    "segment_size_bytes_max is {}, must be within {SEGMENT_BYTES_MIN}..={SEGMENT_BYTES_MAX}",
                    options.segment_size_bytes_max
                ),
            ));
        }
        let lock = lock_dir(dir)?;
        let dir_handle = crate::dir::DirHandle::open_registered(dir)
            .map_err(|e| Error::io("open WAL directory to fsync it", dir, e))?;
        let recovered = recovery::recover(dir, options.fs.as_ref())?;
        let preparer = Preparer::new(
            Arc::clone(&options.fs),
            dir.to_path_buf(),
            options.segment_size_bytes_max,
            options.prepare_segments_in_background,
        );
        tracing::info!(
            dir = %dir.display(),
            first_index = recovered.first_index,
            last_index = recovered.last_index,
            bytes_scanned = recovered.report.bytes_scanned,
            "WAL opened"
        );
        Ok(Wal {
            dir: dir.to_path_buf(),
            fs: options.fs,
            group_commit_bytes_max: options.group_commit_bytes_max.max(1),
            state: Mutex::new(WriterState {
                queue: VecDeque::new(),
                next_seq: 1,
                durable_seq: 0,
                leader_active: false,
                last_queued: recovered.last_index,
                refused_no_space: std::collections::BTreeSet::new(),
                no_space: None,
                failed: None,
            }),
            cond: Condvar::new(),
            io: Mutex::new(Io {
                active: recovered.active,
                spare: None,
                run_offsets: Vec::new(),
                unsynced_segment: None,
            }),
            view: RwLock::new(View {
                first_index: recovered.first_index,
                last_index: recovered.last_index,
                segments: recovered.segments.into(),
            }),
            preparer,
            report: recovered.report,
            _lock: lock,
            _dir_handle: dir_handle,
        })
    }

    /// The directory of the log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What recovery found when this log was opened.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.report
    }

    /// How many segments were started in new files and in recycled ones so far.
    pub fn segment_stats(&self) -> SegmentStats {
        self.preparer.stats()
    }

    fn read_view(&self) -> RwLockReadGuard<'_, View> {
        self.view.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_view(&self) -> RwLockWriteGuard<'_, View> {
        self.view.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The first index still in the log; `last_index() + 1` when the log is empty.
    pub fn first_index(&self) -> u64 {
        self.read_view().first_index
    }

    /// The last durable index; `first_index() - 1` when the log is empty.
    pub fn last_index(&self) -> u64 {
        self.read_view().last_index
    }

    /// The term of the entry at `index`. [`NotInLog::Compacted`] below `first_index()`
    /// (the term of `first_index() - 1` comes from snapshot metadata, not from here),
    /// [`NotInLog::Unavailable`] past `last_index()`.
    pub fn term(&self, index: u64) -> Result<u64> {
        let view = self.read_view();
        let bytes = view.record(index)?;
        // The CRC was verified when the record was written or recovered; checking the
        // stored index still catches a wrong offset.
        match record::peek_header(bytes) {
            Ok(h) if h.index == index => Ok(h.term),
            other => {
                let seg = view.segment(index);
                Err(Error::Corruption {
                    file: seg.path.clone(),
                    offset: u64::from(seg.offsets[(index - seg.first_index) as usize]),
                    index: Some(index),
                    reason: match other {
                        Ok(h) => format!("record holds entry {}", h.index),
                        Err(e) => e.describe(),
                    },
                })
            }
        }
    }

    /// The entry at `index`, CRC-verified. Errors as for [`Wal::term`].
    pub fn entry(&self, index: u64) -> Result<Entry> {
        self.read_view().entry(index)
    }

    /// Entries in `[lo, hi)`, stopping before the entry that would take the total of
    /// [`Entry::size_bytes`] past `max_bytes`, but always at least one when `lo < hi`.
    /// [`NotInLog::Compacted`] if `lo < first_index()`, [`NotInLog::Unavailable`] if
    /// `hi > last_index() + 1`.
    pub fn entries(&self, lo: u64, hi: u64, max_bytes: u64) -> Result<Vec<Entry>> {
        if lo >= hi {
            return Ok(Vec::new());
        }
        // Under the view lock only note where the records lie; copy and verify them after
        // letting go. The appender takes this lock exclusively to publish every synced
        // write, and a waiting writer holds off new readers, so a reader copying megabytes
        // under it (perhaps at low priority, like the log page) stalls every client write
        // (issue 12).
        let located = {
            let view = self.read_view();
            view.check(lo)?;
            view.check(hi - 1)?;
            view.locate(lo, hi)
        };
        let mut out = Vec::new();
        let mut total: u64 = 0;
        for record in located {
            let entry = match record.decode() {
                Some(entry) => entry,
                // Truncated (zeroed) or rewritten since the lock was released, or damaged:
                // the view under the lock has the authoritative answer and the error.
                None => match self.entry(record.index) {
                    Ok(entry) => entry,
                    Err(
                        Error::NotInLog(NotInLog::Unavailable { .. })
                        | Error::NotInLog(NotInLog::Compacted { .. }),
                    ) if !out.is_empty() => break,
                    Err(e) => return Err(e),
                },
            };
            let size = entry.size_bytes();
            if !out.is_empty() && total + size > max_bytes {
                break;
            }
            total += size;
            out.push(entry);
        }
        Ok(out)
    }

    /// Appends `entries` (consecutive indexes, the first one `last_index() + 1`) and
    /// returns once they are durable. Concurrent appends are written and synced
    /// together. [`Error::NonContiguous`] if the batch does not continue the log.
    pub fn append(&self, entries: &[Entry]) -> Result<()> {
        let batch = self.encode(entries)?;
        let Some(first) = entries.first() else {
            return Ok(());
        };
        let mut st = lock(&self.state);
        let seq = self.enqueue(&mut st, first.index, batch)?;
        self.wait_durable(st, seq, true)
    }

    /// Appends the entries `build(next)` returns, where `next` is the index that follows
    /// everything appended or queued so far, and returns once they are durable. For
    /// concurrent appenders that do not coordinate indexes among themselves: `build`
    /// runs under the appenders' lock, so keep it short. Returns the indexes appended.
    pub fn append_with<F>(&self, build: F) -> Result<std::ops::RangeInclusive<u64>>
    where
        F: FnOnce(u64) -> Vec<Entry>,
    {
        let mut st = lock(&self.state);
        let next = st.last_queued + 1;
        let entries = build(next);
        let batch = self.encode(&entries)?;
        if entries.is_empty() {
            return Ok(next..=next - 1);
        }
        let count = entries.len() as u64;
        let first_index = entries[0].index;
        let seq = self.enqueue(&mut st, first_index, batch)?;
        self.wait_durable(st, seq, true)?;
        Ok(first_index..=first_index + count - 1)
    }

    /// Queues an encoded batch; its sequence number, or why it cannot be appended.
    fn enqueue(&self, st: &mut WriterState, first_index: u64, batch: EncodedBatch) -> Result<u64> {
        if let Some(reason) = &st.failed {
            return Err(Error::Closed {
                reason: reason.clone(),
            });
        }
        if first_index != st.last_queued + 1 {
            return Err(Error::NonContiguous {
                got: first_index,
                last_index: st.last_queued,
            });
        }
        st.last_queued = first_index + batch.len() as u64 - 1;
        let seq = st.next_seq;
        st.next_seq += 1;
        st.queue.push_back(Pending {
            seq,
            first_index,
            batch,
        });
        Ok(seq)
    }

    /// Checks a batch is internally consecutive and encodes it.
    fn encode(&self, entries: &[Entry]) -> Result<EncodedBatch> {
        let Some(first) = entries.first() else {
            return Ok(EncodedBatch::default());
        };
        for (i, e) in entries.iter().enumerate() {
            if e.index != first.index + i as u64 {
                return Err(Error::NonContiguous {
                    got: e.index,
                    last_index: first.index + i as u64 - 1,
                });
            }
            if e.payload.len() > PAYLOAD_BYTES_MAX {
                return Err(invalid_input(
                    &self.dir,
                    "append to WAL",
                    format!(
                        "entry {} has a {} byte payload, above the {PAYLOAD_BYTES_MAX} byte limit",
                        e.index,
                        e.payload.len()
                    ),
                ));
            }
        }
        Ok(EncodedBatch::encode(entries))
    }

    /// Waits until batch `seq` is durable, leading group commits while nobody else is.
    /// The appender that queued `seq` is its `owner`: it alone clears a refusal, which
    /// anyone else waiting for `seq` (a barrier) also sees while it stands.
    fn wait_durable<'a>(
        &'a self,
        mut st: MutexGuard<'a, WriterState>,
        seq: u64,
        owner: bool,
    ) -> Result<()> {
        loop {
            let refused = if owner {
                st.refused_no_space.remove(&seq)
            } else {
                st.refused_no_space.contains(&seq)
            };
            if refused {
                return Err(match &st.no_space {
                    Some(Error::NoSpace {
                        context,
                        path,
                        free_bytes,
                    }) => Error::NoSpace {
                        context,
                        path: path.clone(),
                        free_bytes: *free_bytes,
                    },
                    _ => Error::Closed {
                        reason: "an append was refused for lack of space".into(),
                    },
                });
            }
            if st.durable_seq >= seq {
                return Ok(());
            }
            if let Some(reason) = &st.failed {
                return Err(Error::Closed {
                    reason: reason.clone(),
                });
            }
            if !st.leader_active && !st.queue.is_empty() {
                let (guard, error) = self.lead(st);
                st = guard;
                if let Some((error, group_seqs)) = error {
                    if group_seqs.contains(&seq) {
                        return Err(error);
                    }
                }
                continue;
            }
            st = self
                .cond
                .wait(st)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }

    /// Writes and syncs one group of queued batches. Returns the error, if any, with
    /// the range of batch numbers it hit.
    #[allow(clippy::type_complexity)]
    fn lead<'a>(
        &'a self,
        mut st: MutexGuard<'a, WriterState>,
    ) -> (
        MutexGuard<'a, WriterState>,
        Option<(Error, std::ops::RangeInclusive<u64>)>,
    ) {
        assert!(
            !st.leader_active,
            "two group commit leaders at once (durable_seq {})",
            st.durable_seq
        );
        st.leader_active = true;
        let mut group: Vec<Pending> = Vec::new();
        let mut bytes = 0usize;
        while let Some(p) = st.queue.front() {
            if !group.is_empty() && bytes + p.batch.bytes() > self.group_commit_bytes_max {
                break;
            }
            bytes += p.batch.bytes();
            if let Some(p) = st.queue.pop_front() {
                group.push(p);
            }
        }
        drop(st);

        let last_before = self.last_index();
        let result = self.write_group(&mut group);

        let mut st = lock(&self.state);
        st.leader_active = false;
        let seqs = match (group.first(), group.last()) {
            (Some(a), Some(b)) => a.seq..=b.seq,
            _ => unreachable!("lead is only called with a non-empty queue"),
        };
        let error = match result {
            Err(e) if e.is_no_space() && self.last_index() == last_before => {
                // Nothing of the group was published, and no sync failed (`space.rs`):
                // refuse the group and everything queued behind it (which continues it),
                // and let the next append start over from the last durable entry.
                tracing::warn!(dir = %self.dir.display(), error = %e, "WAL append refused: no space");
                assert!(
                    *seqs.start() == st.durable_seq + 1,
                    "group {seqs:?} does not follow durable batch {}",
                    st.durable_seq
                );
                let last_seq = st.next_seq - 1;
                st.refused_no_space.extend(*seqs.start()..=last_seq);
                st.queue.clear();
                st.durable_seq = last_seq;
                st.last_queued = last_before;
                st.no_space = Some(e);
                None
            }
            Ok(()) => {
                assert!(
                    *seqs.start() == st.durable_seq + 1,
                    "group {seqs:?} does not follow durable batch {}",
                    st.durable_seq
                );
                st.durable_seq = *seqs.end();
                None
            }
            Err(e) => {
                tracing::error!(dir = %self.dir.display(), error = %e, "WAL write failed; refusing further writes");
                st.failed = Some(format!("an earlier write failed: {e}"));
                Some((e, seqs))
            }
        };
        self.cond.notify_all();
        (st, error)
    }

    /// Writes the records of `group` into the active segment, rolling to new segments as
    /// needed: each run of records that fits one segment is one write and one fdatasync,
    /// and is published before the next segment starts.
    fn write_group(&self, group: &mut [Pending]) -> Result<()> {
        let mut io = lock(&self.io);
        let io = &mut *io;
        let mut at = skip_done(group, (0, 0));
        let group_bytes: usize = group.iter().map(|p| p.batch.bytes()).sum();
        if io
            .active
            .as_ref()
            .is_some_and(|a| a.remaining() >= group_bytes as u64)
        {
            // The common case: everything fits the active segment.
            return self.write_run(io, group, at, (group.len(), 0));
        }
        if io.spare.is_none() {
            // The group needs a new segment: take it before writing anything, so that a
            // full disk refuses the whole group (nothing written) rather than leaving part
            // of it durable and the rest refused.
            if let Some(record_len) = first_record_past(io, group, at) {
                io.spare = Some(
                    self.preparer
                        .take((SEGMENT_HEADER_BYTES as u64) + record_len)?,
                );
            }
        }
        while at.0 < group.len() {
            let remaining = io.active.as_ref().map_or(0, |a| a.remaining());
            let (mut end, mut run_bytes) = (at, 0u64);
            while end.0 < group.len() {
                let len = group[end.0].batch.record_len(end.1);
                if run_bytes + len > remaining {
                    break;
                }
                run_bytes += len;
                end = skip_done(group, (end.0, end.1 + 1));
            }
            if run_bytes == 0 {
                let p = &group[at.0];
                let record_len = p.batch.record_len(at.1) as usize;
                self.roll(io, p.first_index + at.1 as u64, record_len)?;
                continue;
            }
            self.write_run(io, group, at, end)?;
            at = end;
        }
        Ok(())
    }

    /// One write (the records from `from` up to `to`, salted for the active segment, and
    /// an end marker) and one fdatasync at the end of the active segment; then the
    /// records are made visible to readers.
    fn write_run(
        &self,
        io: &mut Io,
        group: &mut [Pending],
        from: Cursor,
        to: Cursor,
    ) -> Result<()> {
        let Some(active) = io.active.as_mut() else {
            unreachable!("records to write without an active segment");
        };
        let ranges = run_ranges(group, from, to);
        for (i, r) in &ranges {
            group[*i].batch.salt(r.clone(), active.salt);
        }
        if active.marks_runs {
            // Recovery needs to know where the last sync span starts (recovery.rs).
            if let Some((i, r)) = ranges.first() {
                group[*i].batch.mark_run_start(r.start);
            }
        }
        let mut slices: Vec<IoSlice<'_>> = Vec::new();
        io.run_offsets.clear();
        let mut offset = active.write_offset;
        for (i, r) in &ranges {
            let batch = &group[*i].batch;
            batch.push_slices(r.clone(), &mut slices);
            batch.push_offsets(r.clone(), offset, &mut io.run_offsets);
            offset += batch.range_len(r.clone());
        }
        let records_len = offset - active.write_offset;
        let marker = active.marker_bytes_after(records_len);
        slices.push(IoSlice::new(&END_MARKER[..marker]));
        // ENOSPC here is survivable (`space.rs`): whatever landed lies past the published
        // end, was never synced nor acknowledged, and the retry writes over it.
        failpoint::inject("wal::write")
            .map_err(|e| Error::io_or_no_space("write WAL segment", &active.path, e))?;
        self.fs
            .write_vectored_at(&active.file, &slices, active.write_offset)
            .map_err(|e| Error::io_or_no_space("write WAL segment", &active.path, e))?;
        failpoint::inject("wal::fdatasync")
            .map_err(|e| Error::io("fdatasync WAL segment", &active.path, e))?;
        self.fs
            .sync_data(&active.file)
            .map_err(|e| Error::io("fdatasync WAL segment", &active.path, e))?;
        active.write_offset = offset;
        self.preparer.note_sync(records_len);
        let mut view = self.write_view();
        let last_index = view.last_index;
        let Some(seg) = view.segments.back_mut() else {
            unreachable!("active segment {} not in the view", active.path.display());
        };
        assert!(
            seg.first_index == active.first_index,
            "active segment {} is not the last in the view (last starts at {})",
            active.first_index,
            seg.first_index
        );
        assert!(
            seg.last_index() == last_index,
            "segment ends at {} but the log at {last_index}",
            seg.last_index()
        );
        seg.offsets.extend_from_slice(&io.run_offsets);
        view.last_index += io.run_offsets.len() as u64;
        Ok(())
    }

    /// Starts a new segment whose first entry is `first_index` and whose first record
    /// is `record_len` bytes long.
    fn roll(&self, io: &mut Io, first_index: u64, record_len: usize) -> Result<()> {
        let need = (SEGMENT_HEADER_BYTES + record_len) as u64;
        let prepared = match io.spare.take() {
            Some(spare) if spare.capacity >= need => spare,
            other => {
                io.spare = other;
                self.preparer.take(need)?
            }
        };
        // A last segment with no records (just recovered or created, and this record is
        // too large for it; or kept by a roll that failed) is replaced: the rename below
        // swaps it atomically.
        let replace_empty = self
            .read_view()
            .segments
            .back()
            .is_some_and(|s| s.first_index == first_index && s.offsets.is_empty());
        if let Some(a) = &io.active {
            assert!(
                replace_empty || a.first_index < first_index,
                "rolling from segment {} to {first_index}",
                a.first_index
            );
        }
        io.active = None;
        let (active, view) = segment::activate(self.fs.as_ref(), &self.dir, prepared, first_index)?;
        if let Err(e) = recovery::sync_wal_dir(self.fs.as_ref(), &self.dir) {
            // The name may not be durable: no record may go into the file, or a power
            // cut could take acknowledged entries with the name. It is left out of the
            // log; a retry renames a new file over it and syncs the directory for that
            // rename, never in place of this failed fsync (`space.rs`).
            io.unsynced_segment = Some(active.path);
            return Err(e);
        }
        io.unsynced_segment = None;
        let mut v = self.write_view();
        if replace_empty {
            let replaced = v.segments.pop_back();
            assert!(
                replaced
                    .as_ref()
                    .is_some_and(|s| s.first_index == first_index && s.offsets.is_empty()),
                "replaced segment {:?} is not the empty segment {first_index}",
                replaced.map(|s| s.path)
            );
        }
        assert!(
            v.last_index + 1 == first_index,
            "new segment starts at {first_index}, log ends at {}",
            v.last_index
        );
        v.segments.push_back(view);
        io.active = Some(active);
        Ok(())
    }

    /// Takes the files for a truncation or compaction: waits out the current leader and
    /// writes whatever is queued first. New appends block until the guard is dropped.
    fn exclusive(&self) -> Result<MutexGuard<'_, WriterState>> {
        let mut st = lock(&self.state);
        loop {
            if let Some(reason) = &st.failed {
                return Err(Error::Closed {
                    reason: reason.clone(),
                });
            }
            if st.leader_active {
                st = self
                    .cond
                    .wait(st)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
            } else if !st.queue.is_empty() {
                st = self.lead(st).0;
            } else {
                return Ok(st);
            }
        }
    }

    /// Records a failure of a truncation or compaction: the files may be anywhere
    /// between the old and the new state, so only recovery may continue.
    fn fail(&self, st: &mut WriterState, e: Error) -> Error {
        tracing::error!(dir = %self.dir.display(), error = %e, "WAL update failed; refusing further writes");
        st.failed = Some(format!("an earlier update failed: {e}"));
        self.cond.notify_all();
        e
    }

    /// Drops every entry with index `>= from` (a follower's conflicting tail, Raft
    /// §5.3). A no-op if `from > last_index()`; [`NotInLog::Compacted`] if
    /// `from < first_index()` (committed entries are never truncated).
    ///
    /// Crash-safe: the truncation mark is made durable in `wal.meta` first; recovery
    /// completes a truncation that a crash interrupted, so a crash leaves either the old
    /// log or the truncated one.
    pub fn truncate_suffix(&self, from: u64) -> Result<()> {
        let mut st = self.exclusive()?;
        let (first, last) = {
            let v = self.read_view();
            (v.first_index, v.last_index)
        };
        if from > last {
            return Ok(());
        }
        if from < first {
            return Err(Error::NotInLog(NotInLog::Compacted {
                index: from,
                first_index: first,
            }));
        }
        let mark = Meta {
            first_index: first,
            truncate_from: from,
        };
        // Until the mark replaces `wal.meta` nothing has changed: a full disk only
        // refuses this truncation (`space.rs`).
        if let Err(e) = recovery::replace_meta(self.fs.as_ref(), &self.dir, &mark) {
            return Err(if e.is_no_space() {
                e
            } else {
                self.fail(&mut st, e)
            });
        }
        // From here the files are between the old log and the truncated one, which only
        // recovery may settle: every failure is fatal, a full disk too.
        match self.truncate_files(first, from) {
            Ok(()) => {
                st.last_queued = from - 1;
                Ok(())
            }
            Err(e) => Err(self.fail(&mut st, e.into_fatal())),
        }
    }

    fn truncate_files(&self, first: u64, from: u64) -> Result<()> {
        let fs = self.fs.as_ref();
        recovery::sync_wal_dir(fs, &self.dir)?;
        let mut io = lock(&self.io);
        // Readers stop seeing the dropped entries before any byte of them changes.
        let (doomed, zero_range) = {
            let mut v = self.write_view();
            v.last_index = from - 1;
            let mut doomed = Vec::new();
            while v.segments.back().is_some_and(|s| s.first_index >= from) {
                if let Some(s) = v.segments.pop_back() {
                    doomed.push(s.path);
                }
            }
            let mut zero_range = None;
            if let Some(seg) = v.segments.back_mut() {
                if seg.last_index() >= from {
                    let start = u64::from(seg.offsets[(from - seg.first_index) as usize]);
                    let end = seg.data_end()?;
                    seg.offsets.truncate((from - seg.first_index) as usize);
                    zero_range = Some((seg.first_index, seg.path.clone(), start, end));
                }
            }
            (doomed, zero_range)
        };
        if io.active.as_ref().is_some_and(|a| a.first_index >= from) {
            io.active = None;
        }
        let mut doomed = doomed;
        if let Some(path) = io.unsynced_segment.take() {
            // It starts past the old end of the log, so past the new one.
            if !doomed.contains(&path) {
                doomed.push(path);
            }
        }
        for path in &doomed {
            fs.remove_file(path)
                .map_err(|e| Error::io("remove truncated WAL segment", path, e))?;
        }
        if let Some((seg_first, path, start, end)) = zero_range {
            // Zero the dropped records so recovery can never mistake them for entries
            // (they would otherwise follow the new tail with valid CRCs).
            let reopened;
            let file = match &io.active {
                Some(a) if a.first_index == seg_first => &a.file,
                _ => {
                    reopened = fs
                        .open_rw(&path)
                        .map_err(|e| Error::io("open WAL segment", &path, e))?;
                    &reopened
                }
            };
            segment::write_zeros(fs, file, &path, start, end)?;
            fs.sync_data(file)
                .map_err(|e| Error::io("fdatasync truncated WAL segment", &path, e))?;
            if let Some(a) = io.active.as_mut() {
                if a.first_index == seg_first {
                    a.write_offset = start;
                }
            }
        }
        if !doomed.is_empty() {
            failpoint::inject("wal::dir_fsync")
                .map_err(|e| Error::io("fsync WAL directory", &self.dir, e))?;
            fs.sync_dir(&self.dir)
                .map_err(|e| Error::io("fsync WAL directory", &self.dir, e))?;
        }
        recovery::write_meta(
            fs,
            &self.dir,
            &Meta {
                first_index: first,
                truncate_from: 0,
            },
        )
    }

    /// Drops every entry with index `<= upto` (they are in a snapshot, Raft §7):
    /// `first_index()` is `upto + 1` afterwards, and segments wholly below it are
    /// deleted. With `upto >= last_index()` the log becomes empty and the next append
    /// must be `upto + 1` (a follower that installed a snapshot). A no-op if
    /// `upto < first_index()`.
    ///
    /// Crash-safe: the new first index is made durable in `wal.meta` before any segment
    /// is deleted, and recovery deletes what a crash left behind.
    pub fn compact_prefix(&self, upto: u64) -> Result<()> {
        let mut st = self.exclusive()?;
        let first = self.first_index();
        if upto < first {
            return Ok(());
        }
        match self.compact_files(upto) {
            Ok(()) => {
                st.last_queued = st.last_queued.max(upto);
                Ok(())
            }
            Err(e) if e.is_no_space() => {
                // `wal.meta` holds the old first index or (not known durable) the new
                // one, and either describes the files: compaction only lets go of
                // entries a snapshot holds, and recovery deletes segments below the first
                // index. So the log goes on, and the next compaction retries (`space.rs`).
                st.last_queued = st.last_queued.max(self.last_index());
                Err(e)
            }
            Err(e) => Err(self.fail(&mut st, e)),
        }
    }

    fn compact_files(&self, upto: u64) -> Result<()> {
        let fs = self.fs.as_ref();
        let new_first = upto + 1;
        failpoint::inject("wal::compact").map_err(|e| Error::io("compact WAL", &self.dir, e))?;
        recovery::write_meta(
            fs,
            &self.dir,
            &Meta {
                first_index: new_first,
                truncate_from: 0,
            },
        )?;
        let mut io = lock(&self.io);
        // (path, salt, size) of each segment wholly compacted away; their maps are
        // dropped with the views, before the files are reused.
        let doomed: Vec<(PathBuf, u32, u64)> = {
            let mut v = self.write_view();
            v.first_index = new_first;
            let mut doomed = Vec::new();
            let freed = |s: SegmentView| (s.path, s.salt, s.map.len() as u64);
            if upto >= v.last_index {
                v.last_index = upto;
                doomed.extend(v.segments.drain(..).map(freed));
            } else {
                while v.segments.len() > 1 && v.segments[1].first_index <= new_first {
                    if let Some(s) = v.segments.pop_front() {
                        doomed.push(freed(s));
                    }
                }
            }
            doomed
        };
        if io
            .active
            .as_ref()
            .is_some_and(|a| doomed.iter().any(|d| d.0.as_path() == a.path.as_path()))
        {
            io.active = None;
        }
        for (path, salt, size_bytes) in &doomed {
            self.preparer.recycle(path, *salt, *size_bytes)?;
        }
        if !doomed.is_empty() {
            recovery::sync_wal_dir(fs, &self.dir)?;
        }
        Ok(())
    }

    /// Waits until every append issued so far is durable (appends already wait for
    /// their own entries; this is a barrier for callers that did not).
    pub fn sync(&self) -> Result<()> {
        let st = lock(&self.state);
        let target = st.next_seq - 1;
        self.wait_durable(st, target, false)
    }

    /// Waits for pending appends, stops the background preparer and closes the files.
    pub fn close(self) -> Result<()> {
        let result = self.sync();
        lock(&self.state).failed = Some("the log was closed".into());
        self.preparer.shutdown();
        result
    }
}

/// Bytes of the record header, for callers sizing batches.
pub const RECORD_OVERHEAD_BYTES: usize = RECORD_HEADER_BYTES;

#[cfg(test)]
mod tests;
