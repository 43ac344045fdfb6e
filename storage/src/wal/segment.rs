//! Segment files: naming, preparation (zero-filled ahead of use), and the in-memory
//! view of a segment used for reads.
//!
//! A segment is `<first index, 20 digits>.wal`, so names sort in log order. It starts
//! with a [`SEGMENT_HEADER_BYTES`] header (see `record.rs`) followed by records back to
//! back, then an *end marker* of [`END_MARKER_BYTES`] zeros (every write puts one after
//! its records), then whatever the file held before: zeros in a new file, records of a
//! previous life in a recycled one (which never verify: see the salt in `record.rs`).
//!
//! Why prepare: on this machine `fdatasync` after writing into already-allocated,
//! already-written blocks is 1.7-2x faster than after extending a file (the extent and
//! size updates cost a journal commit each time), and `fallocate` alone does not help
//! because unwritten extents still need conversion (measured: 16 MiB write + fdatasync
//! into a fallocated file 26.7 ms, into a written one 17.0 ms). So:
//! - **Recycling** (the steady state): segments freed by compaction are renamed to
//!   `.prep` names and reused as they are, up to [`RECYCLED_SEGMENTS_MAX`] of them. Their
//!   blocks are written, so appends into them cost what appends into a zero-filled file
//!   cost, and nothing extra is written.
//! - **A new file** (before the first compaction, or when compaction falls behind) is
//!   reserved with `fallocate`, written full of zeros and synced once, by a background
//!   thread, before the log needs it. Reserving first makes a full disk fail fast there,
//!   before any record of a write lands (`crate::space`). The exception is a workload of large syncs (over [`LARGE_SYNC_BYTES`] on
//!   average): the zeros would double the bytes it writes, so its new files are only
//!   `fallocate`d, and it pays the extent conversion until recycling starts.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use memmap2::{Mmap, MmapOptions};

use super::fs::WalFs;
use super::record;
use crate::failpoint;
use crate::{Error, Result};

/// Suffix of segment files.
pub const SEGMENT_SUFFIX: &str = ".wal";
/// Suffix of prepared (zero-filled or recycled, not yet used) segment files.
pub const PREPARED_SUFFIX: &str = ".prep";

/// Zeros written after the last record: a whole zero record header, which never
/// decodes as a record and so ends the log even where stale bytes follow.
pub const END_MARKER_BYTES: usize = record::RECORD_HEADER_BYTES;

/// How many freed segments are kept for reuse; more are deleted. Two cover a
/// compaction that frees a couple of segments at once without holding much disk.
pub const RECYCLED_SEGMENTS_MAX: usize = 2;

/// The file name of the segment whose first entry is `first_index`.
pub fn segment_file_name(first_index: u64) -> String {
    format!("{first_index:020}{SEGMENT_SUFFIX}")
}

/// Parses a segment file name back into its first index.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Maps a whole segment file for reading. Shared, so that a reader can copy records out
/// after letting go of the WAL's view lock (see [`super::Wal::entries`]); the map stays
/// valid after the segment is compacted away and its file removed.
pub fn map_file(file: &File, path: &Path, populate: bool) -> Result<Arc<Mmap>> {
    let mut options = MmapOptions::new();
    if populate {
        options.populate();
    }
    // SAFETY: the WAL never shrinks a mapped file (it zeroes instead of truncating) and
    // only reads through the map bytes it wrote and synced itself, or that recovery
    // verified; nobody else is expected to modify files in the WAL directory.
    let map = unsafe { options.map(file) }.map_err(|e| Error::io("mmap segment", path, e))?;
    Ok(Arc::new(map))
}

/// One segment as readers see it: the map and where each record starts.
#[derive(Debug)]
pub struct SegmentView {
    /// Index of the first record in the file (its name), which may be below the log's
    /// logical first index after a partial compaction.
    pub first_index: u64,
    /// The file.
    pub path: PathBuf,
    /// XORed into the stored CRC of each of its records (`record.rs`).
    pub salt: u32,
    /// The whole file, mapped.
    pub map: Arc<Mmap>,
    /// Byte offset of record `first_index + i` is `offsets[i]`: 4 bytes per entry keeps
    /// the index of a 1 GiB log of small entries at a few MiB.
    pub offsets: Vec<u32>,
}

impl SegmentView {
    /// Index of the last record in this segment (`first_index - 1` if empty).
    pub fn last_index(&self) -> u64 {
        self.first_index + self.offsets.len() as u64 - 1
    }

    /// The bytes from the record of `index` to the end of the file.
    pub fn record_bytes(&self, index: u64) -> &[u8] {
        assert!(
            index >= self.first_index && index <= self.last_index(),
            "index {index} not in segment {} ({}..={})",
            self.path.display(),
            self.first_index,
            self.last_index()
        );
        let offset = self.offsets[(index - self.first_index) as usize] as usize;
        &self.map[offset..]
    }

    /// Byte offset just past the last record (the header size if empty).
    pub fn data_end(&self) -> Result<u64> {
        let Some(&last) = self.offsets.last() else {
            return Ok(record::SEGMENT_HEADER_BYTES as u64);
        };
        let header =
            record::peek_header(&self.map[last as usize..]).map_err(|e| Error::Corruption {
                file: self.path.clone(),
                offset: u64::from(last),
                index: Some(self.last_index()),
                reason: format!(
                    "record verified earlier no longer decodes: {}",
                    e.describe()
                ),
            })?;
        Ok(u64::from(last) + header.record_len() as u64)
    }
}

/// The segment the log appends to.
#[derive(Debug)]
pub struct ActiveSegment {
    /// First index of the segment (its name).
    pub first_index: u64,
    /// The file, open for writing.
    pub file: File,
    /// Its path.
    pub path: PathBuf,
    /// XORed into the stored CRC of each record written here.
    pub salt: u32,
    /// Where the next record goes.
    pub write_offset: u64,
    /// Size of the file: appends stop here and roll to a new segment.
    pub capacity: u64,
    /// Its format marks the first record of each write ([`record::RUN_START_FLAG`]);
    /// not in an older segment the log continues after an upgrade, where readers of
    /// its version would take the flag for damage.
    pub marks_runs: bool,
}

impl ActiveSegment {
    /// Bytes still free.
    pub fn remaining(&self) -> u64 {
        self.capacity - self.write_offset
    }

    /// Bytes of end marker that fit after `record_bytes` more bytes of records.
    pub fn marker_bytes_after(&self, record_bytes: u64) -> usize {
        (self.remaining().saturating_sub(record_bytes)).min(END_MARKER_BYTES as u64) as usize
    }
}

/// Writes zeros over `[from, to)` of `file` in chunks.
pub fn write_zeros(fs: &dyn WalFs, file: &File, path: &Path, from: u64, to: u64) -> Result<()> {
    const CHUNK_BYTES: usize = 1 << 20;
    let zeros = vec![0u8; CHUNK_BYTES.min((to.saturating_sub(from)) as usize)];
    let mut at = from;
    while at < to {
        let n = ((to - at) as usize).min(zeros.len());
        fs.write_all_at(file, &zeros[..n], at)
            .map_err(|e| Error::io("write zeros", path, e))?;
        at += n as u64;
    }
    Ok(())
}

/// What each step of [`write_sync_rename`] is called in its errors, and the failpoints
/// in front of them.
pub struct RenameSteps {
    /// Failpoint before the write, if any.
    pub write_failpoint: Option<&'static str>,
    /// The write.
    pub write: &'static str,
    /// Its fdatasync.
    pub sync: &'static str,
    /// Failpoint before the rename.
    pub rename_failpoint: &'static str,
    /// The rename.
    pub rename: &'static str,
}

/// Writes `bytes` at the start of the file `tmp` (open as `file`), fdatasyncs it and
/// renames it to `to`; the caller fsyncs the directory. On failure `tmp` is removed: it
/// was never named, so nothing depends on it, and a retry writes and syncs another
/// file, never this one again. That is why ENOSPC is [`Error::NoSpace`] at every step,
/// the fdatasync included (`space.rs`).
pub fn write_sync_rename(
    fs: &dyn WalFs,
    file: &File,
    tmp: &Path,
    bytes: &[u8],
    to: &Path,
    steps: &RenameSteps,
) -> Result<()> {
    let renamed = steps
        .write_failpoint
        .map_or(Ok(()), failpoint::inject)
        .and_then(|()| fs.write_all_at(file, bytes, 0))
        .map_err(|e| Error::io_or_no_space(steps.write, tmp, e))
        .and_then(|()| {
            fs.sync_data(file)
                .map_err(|e| Error::io_or_no_space(steps.sync, tmp, e))
        })
        .and_then(|()| {
            failpoint::inject(steps.rename_failpoint)
                .and_then(|()| fs.rename(tmp, to))
                .map_err(|e| Error::io_or_no_space(steps.rename, to, e))
        });
    if let Err(e) = renamed {
        // Only takes space on what may be a full disk; the next open removes it if this
        // cannot.
        if let Err(remove) = fs.remove_file(tmp) {
            tracing::warn!(file = %tmp.display(), error = %remove, "cannot remove a temp file that failed to replace {}", to.display());
        }
        return Err(e);
    }
    Ok(())
}

/// Appends that write at least this many bytes per fdatasync (on average) are bound by
/// disk bandwidth rather than sync latency: for them, writing 64 MiB of zeros ahead
/// doubles the bytes written, so segments are only `fallocate`d.
pub const LARGE_SYNC_BYTES: u64 = 256 << 10;

/// Creates `path` as a file of `size_bytes` zeros, synced: a prepared segment. Its space
/// is reserved with `fallocate` first, so a full disk fails here, fast and before the log
/// needs the file (`space.rs`), not in the middle of a record; then, unless
/// `allocate_only`, the zeros are written so that appends find written blocks.
///
/// On failure the file is removed, so a full disk is not made fuller by half-prepared
/// files, and ENOSPC is [`Error::NoSpace`]: nothing depends on a file that was never
/// handed out, so even a failed fdatasync of it may be retried with a new file.
pub fn prepare_file(
    fs: &dyn WalFs,
    path: &Path,
    size_bytes: u64,
    allocate_only: bool,
) -> Result<File> {
    failpoint::inject("wal::segment_prepare")
        .map_err(|e| Error::io_or_no_space("create prepared segment", path, e))?;
    let file = fs
        .create_new(path)
        .map_err(|e| Error::io_or_no_space("create prepared WAL segment", path, e))?;
    let filled = fill_prepared(fs, &file, path, size_bytes, allocate_only);
    if let Err(e) = filled {
        drop(file);
        if let Err(remove) = fs.remove_file(path) {
            tracing::warn!(file = %path.display(), error = %remove, "cannot remove a half-prepared WAL segment; the next open removes it");
        }
        return Err(e);
    }
    Ok(file)
}

fn fill_prepared(
    fs: &dyn WalFs,
    file: &File,
    path: &Path,
    size_bytes: u64,
    allocate_only: bool,
) -> Result<()> {
    match fs.allocate(file, size_bytes) {
        Ok(()) => {}
        Err(e) if crate::space::is_out_of_space(&e) => {
            return Err(Error::io_or_no_space(
                "reserve space for a WAL segment",
                path,
                e,
            ))
        }
        // Not supported here (or refused for another reason): writing the zeros below
        // allocates the blocks as well.
        Err(_) if allocate_only => write_zeros(fs, file, path, 0, size_bytes).map_err(no_space)?,
        Err(_) => {}
    }
    if !allocate_only {
        write_zeros(fs, file, path, 0, size_bytes).map_err(no_space)?;
    }
    fs.sync_data(file)
        .map_err(|e| Error::io_or_no_space("fdatasync prepared WAL segment", path, e))
}

/// Turns an out-of-space [`Error::Io`] into [`Error::NoSpace`]; for failures that leave
/// nothing half-done (see [`prepare_file`]).
fn no_space(e: Error) -> Error {
    match e {
        Error::Io {
            context,
            path,
            source,
        } => Error::io_or_no_space(context, path, source),
        other => other,
    }
}

/// Turns a prepared file into the segment starting at `first_index`: header and end
/// marker, fdatasync, rename; the caller fsyncs the directory before it writes a record
/// there. The header is durable before the name is, so recovery never finds a named
/// segment without a valid header, and the marker makes a recycled file read as empty.
///
/// A failure removes the prepared file ([`write_sync_rename`]): a retry takes another.
pub fn activate(
    fs: &dyn WalFs,
    dir: &Path,
    prepared: Prepared,
    first_index: u64,
) -> Result<(ActiveSegment, SegmentView)> {
    let Prepared {
        path: prep_path,
        file,
        capacity,
        previous_salt,
    } = prepared;
    let salt = record::segment_salt(first_index, previous_salt);
    let mut start = record::encode_segment_header(record::SegmentHeader {
        version: record::SEGMENT_VERSION,
        first_index,
        salt,
    })
    .to_vec();
    let marker = (capacity - start.len() as u64).min(END_MARKER_BYTES as u64) as usize;
    start.resize(start.len() + marker, 0);
    let path = dir.join(segment_file_name(first_index));
    let steps = RenameSteps {
        write_failpoint: None,
        write: "write segment header",
        sync: "fdatasync segment header",
        rename_failpoint: "wal::segment_rename",
        rename: "rename prepared segment",
    };
    write_sync_rename(fs, &file, &prep_path, &start, &path, &steps)?;
    let map = map_file(&file, &path, false)?;
    let view = SegmentView {
        first_index,
        path: path.clone(),
        salt,
        map,
        offsets: Vec::new(),
    };
    let active = ActiveSegment {
        first_index,
        file,
        path,
        salt,
        write_offset: record::SEGMENT_HEADER_BYTES as u64,
        capacity,
        marks_runs: true,
    };
    Ok((active, view))
}

/// A file ready to become a segment.
#[derive(Debug)]
pub struct Prepared {
    /// Its temporary (`.prep`) name.
    pub path: PathBuf,
    /// The file, open for writing.
    pub file: File,
    /// Its size.
    pub capacity: u64,
    /// The salt of its previous life, if it is a recycled segment.
    pub previous_salt: Option<u32>,
}

/// What the WAL has done with segment files since it was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SegmentStats {
    /// Segments started in a new file (zero-filled or fallocated).
    pub new_files: u64,
    /// Segments started in a recycled file.
    pub recycled: u64,
    /// Freed segments deleted because the recycle pool was full (or they had an odd
    /// size).
    pub deleted: u64,
}

#[derive(Debug, Default)]
struct PreparerState {
    /// A prepared file ready to be taken.
    ready: Option<(PathBuf, File)>,
    /// The thread is writing one now.
    busy: bool,
    /// The last preparation failed: the appender prepares for itself.
    failed: Option<String>,
    /// The Wal is being dropped.
    shutdown: bool,
    /// Freed segments waiting for reuse, renamed to `.prep` names.
    recycled: Vec<Prepared>,
    stats: SegmentStats,
}

#[derive(Debug)]
struct PreparerShared {
    state: Mutex<PreparerState>,
    cond: Condvar,
}

/// Keeps segment files ready so that rolling to a new segment costs a header write and
/// a rename instead of writing 64 MiB on the append path: recycled ones first, else one
/// zero-filled in the background.
#[derive(Debug)]
pub struct Preparer {
    fs: Arc<dyn WalFs>,
    dir: PathBuf,
    size_bytes: u64,
    counter: AtomicU64,
    /// Moving average of bytes written per fdatasync, kept by the appender.
    bytes_per_sync: Arc<AtomicU64>,
    shared: Arc<PreparerShared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Preparer {
    /// A preparer for segments of `size_bytes` in `dir`; with `background`, a thread
    /// starts preparing the first one at once.
    pub fn new(fs: Arc<dyn WalFs>, dir: PathBuf, size_bytes: u64, background: bool) -> Preparer {
        let preparer = Preparer {
            fs,
            dir,
            size_bytes,
            counter: AtomicU64::new(0),
            bytes_per_sync: Arc::new(AtomicU64::new(0)),
            shared: Arc::new(PreparerShared {
                state: Mutex::new(PreparerState::default()),
                cond: Condvar::new(),
            }),
            thread: Mutex::new(None),
        };
        if background {
            preparer.start_thread();
        }
        preparer
    }

    fn next_path(&self) -> PathBuf {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        self.dir.join(format!("{n:08}{PREPARED_SUFFIX}"))
    }

    fn start_thread(&self) {
        let shared = Arc::clone(&self.shared);
        let fs = Arc::clone(&self.fs);
        let size = self.size_bytes;
        let bytes_per_sync = Arc::clone(&self.bytes_per_sync);
        // Paths are handed out up front by the thread itself; keep a private counter
        // range so the appender's synchronous preparations never collide with it.
        let dir = self.dir.clone();
        let spawn = std::thread::Builder::new()
            .name("wal-prepare".into())
            .spawn(move || {
                let mut n: u64 = 1 << 32;
                loop {
                    {
                        let mut st = lock(&shared.state);
                        while !st.shutdown && (st.ready.is_some() || st.failed.is_some()) {
                            st = shared
                                .cond
                                .wait(st)
                                .unwrap_or_else(|poisoned| poisoned.into_inner());
                        }
                        if st.shutdown {
                            return;
                        }
                        st.busy = true;
                    }
                    let path = dir.join(format!("{n:08}{PREPARED_SUFFIX}"));
                    n += 1;
                    let large = bytes_per_sync.load(Ordering::Relaxed) >= LARGE_SYNC_BYTES;
                    let result = prepare_file(fs.as_ref(), &path, size, large);
                    let mut st = lock(&shared.state);
                    st.busy = false;
                    match result {
                        Ok(file) => st.ready = Some((path, file)),
                        Err(e) => {
                            tracing::warn!(
                                error = %e,
                                "background segment preparation failed; appends will prepare \
                                 segments themselves"
                            );
                            st.failed = Some(e.to_string());
                        }
                    }
                    shared.cond.notify_all();
                }
            });
        match spawn {
            Ok(handle) => *lock(&self.thread) = Some(handle),
            Err(e) => {
                tracing::warn!(error = %e, "could not start the segment preparation thread");
                lock(&self.shared.state).failed = Some(e.to_string());
            }
        }
    }

    /// A prepared file of at least `size_bytes`: a recycled one, else the background one
    /// if it fits (waiting for it if it is being written), else one prepared now.
    pub fn take(&self, size_bytes: u64) -> Result<Prepared> {
        if size_bytes <= self.size_bytes {
            let mut st = lock(&self.shared.state);
            if let Some(prepared) = st.recycled.pop() {
                st.stats.recycled += 1;
                return Ok(prepared);
            }
            loop {
                if let Some((path, file)) = st.ready.take() {
                    st.stats.new_files += 1;
                    self.shared.cond.notify_all();
                    return Ok(Prepared {
                        path,
                        file,
                        capacity: self.size_bytes,
                        previous_salt: None,
                    });
                }
                if !st.busy || st.failed.is_some() || st.shutdown {
                    break;
                }
                st = self
                    .shared
                    .cond
                    .wait(st)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
            }
        }
        let size = size_bytes.max(self.size_bytes);
        let path = self.next_path();
        let large = self.bytes_per_sync.load(Ordering::Relaxed) >= LARGE_SYNC_BYTES;
        let file = prepare_file(self.fs.as_ref(), &path, size, large)?;
        let mut st = lock(&self.shared.state);
        st.stats.new_files += 1;
        if st.failed.take().is_some() {
            // The disk had room again (space was freed): the background thread resumes
            // preparing ahead.
            self.shared.cond.notify_all();
        }
        drop(st);
        Ok(Prepared {
            path,
            file,
            capacity: size,
            previous_salt: None,
        })
    }

    /// Takes the freed segment at `path` (whose records were written with `salt`, and
    /// which is `size_bytes` long) for reuse, or deletes it if the pool is full or it
    /// is not of the usual size. Either way it is gone under its segment name once this
    /// returns; the caller fsyncs the directory.
    pub fn recycle(&self, path: &Path, salt: u32, size_bytes: u64) -> Result<()> {
        let mut st = lock(&self.shared.state);
        let reuse = !st.shutdown
            && st.recycled.len() < RECYCLED_SEGMENTS_MAX
            && size_bytes == self.size_bytes;
        if reuse {
            let prep_path = self.next_path();
            // Renamed first: from here on a crash leaves a `.prep` leftover, which recovery
            // deletes, never a segment whose entries were compacted away.
            let renamed = failpoint::inject("wal::segment_recycle")
                .and_then(|()| self.fs.rename(path, &prep_path));
            match renamed {
                Ok(()) => {
                    let file = self
                        .fs
                        .open_rw(&prep_path)
                        .map_err(|e| Error::io("open recycled WAL segment", &prep_path, e))?;
                    st.recycled.push(Prepared {
                        path: prep_path,
                        file,
                        capacity: size_bytes,
                        previous_salt: Some(salt),
                    });
                    return Ok(());
                }
                // The new name needs room in the directory: on a full disk the segment
                // is deleted instead, which gives its space back.
                Err(e) if crate::space::is_out_of_space(&e) => {}
                Err(e) => {
                    return Err(Error::io(
                        "rename compacted WAL segment for reuse",
                        &prep_path,
                        e,
                    ))
                }
            }
        }
        st.stats.deleted += 1;
        drop(st);
        self.fs
            .remove_file(path)
            .map_err(|e| Error::io("remove compacted WAL segment", path, e))
    }

    /// What happened to segment files so far.
    pub fn stats(&self) -> SegmentStats {
        lock(&self.shared.state).stats
    }

    /// Records that one fdatasync covered `bytes`, to choose how to prepare segments.
    pub fn note_sync(&self, bytes: u64) {
        let avg = self.bytes_per_sync.load(Ordering::Relaxed);
        self.bytes_per_sync
            .store(avg - avg / 8 + bytes / 8, Ordering::Relaxed);
    }

    /// Stops the background thread and deletes a prepared file nobody took.
    pub fn shutdown(&self) {
        {
            let mut st = lock(&self.shared.state);
            st.shutdown = true;
            self.shared.cond.notify_all();
        }
        if let Some(handle) = lock(&self.thread).take() {
            let _ = handle.join();
        }
        let (ready, recycled) = {
            let mut st = lock(&self.shared.state);
            (st.ready.take(), std::mem::take(&mut st.recycled))
        };
        // Best effort: leftovers are removed on the next open anyway.
        if let Some((path, _file)) = ready {
            let _ = self.fs.remove_file(&path);
        }
        for prepared in recycled {
            let _ = self.fs.remove_file(&prepared.path);
        }
    }
}

impl Drop for Preparer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Locks a mutex, ignoring poisoning: state behind these locks stays consistent across a
/// panic because every update is a single assignment.
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
