//! Snapshot files: checksummed, written and read as streams of chunks, installed atomically.
//!
//! # File layout
//! ```text
//! file    = header | frame* | trailer
//! header  = | magic "RAFTSNAP" | version u32 (=1) | meta_len u32 | meta (bincode 2) | header_crc u32 |
//! frame   = | len u32 (1..=1 MiB) | crc u32 | payload (len bytes) |
//!             crc = crc32(header_crc ‖ frame_number u64 ‖ len u32 ‖ payload)
//! trailer = | 0xFFFF_FFFF u32 | frame_count u64 | payload_bytes u64 |
//!             crc32(header_crc ‖ 0xFFFF_FFFF ‖ frame_count ‖ payload_bytes) u32 |
//! ```
//! All integers are little-endian; `meta` is the [`SnapshotMeta`] (last index, last term,
//! membership). Every frame's checksum is seeded with the header's and numbers the frame, so
//! a frame that is damaged, lost, duplicated, reordered or copied from another snapshot fails
//! verification; the trailer catches truncation at a frame boundary and trailing garbage.
//! A reader never hands out a byte of a frame before that frame's checksum has passed, and
//! holds at most one frame (at most 1 MiB; the writer emits 64 KiB frames) in memory.
//!
//! # Installing a file
//! Following sled's ARCHITECTURE.md: write to `snap-<index>-<term>.<pid>.<n>.tmp`, fsync,
//! rename to `snap-<index:020>-<term:020>.snap`, fsync the directory. A crash at any point
//! leaves either the complete new file or none (plus a temp file, removed by the next
//! [`SnapshotStore::open`]); the previous snapshot is untouched until the new one is durable,
//! and only then are snapshots beyond the newest `keep` (default 2) deleted.
//!
//! # Transfer (InstallSnapshot)
//! The leader ships *raw file bytes*: [`SnapshotStore::read_chunk`] returns bytes of the
//! data region (everything after the header: frames and trailer) at a byte offset. The
//! follower writes them, in order, through [`SnapshotStore::begin_receive`] +
//! [`SnapshotReceiver::write_chunk`], which rebuilds the header from the same meta (the
//! header is a deterministic function of it) and appends the raw bytes, verifying each
//! frame's checksum and the trailer as they stream in. The follower's file is therefore
//! byte-identical to the leader's, and the leader's checksums protect the data end to end:
//! a corrupt frame, sent or received, fails the transfer instead of being re-checksummed.
//! Producers of a new snapshot (the state machine) use [`SnapshotStore::begin`] and write
//! the logical payload; it is framed for them.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use crate::dir::DirHandle;
use crate::error::{Error, Result};
use crate::failpoint;
use crate::SnapshotMeta;

const MAGIC: &[u8; 8] = b"RAFTSNAP";
const VERSION: u32 = 1;
/// Bytes of header before the meta: magic, version, meta_len.
const HEADER_FIXED_LEN: usize = 16;
/// Refuse to allocate for absurd meta lengths read from a damaged header.
const META_LEN_MAX: u32 = 16 * 1024 * 1024;
/// Payload bytes per frame the writer emits.
const FRAME_PAYLOAD_BYTES: usize = 64 * 1024;
/// Largest frame payload a reader accepts (bounds reader memory).
const FRAME_PAYLOAD_BYTES_MAX: u32 = 1024 * 1024;
const FRAME_HEADER_LEN: usize = 8;
/// Length-field value that marks the trailer instead of a frame.
const TRAILER_MARK: u32 = u32::MAX;
/// The whole trailer, including the mark.
const TRAILER_LEN: usize = 24;
/// Snapshots kept by default.
pub const DEFAULT_KEEP: usize = 2;

const FILE_PREFIX: &str = "snap-";
const FILE_SUFFIX: &str = ".snap";
const TEMP_SUFFIX: &str = ".tmp";

/// The directory of snapshot files. Cheap to clone; clones share the temp-name counter.
#[derive(Clone, Debug)]
pub struct SnapshotStore {
    dir: PathBuf,
    keep: usize,
    temp_seq: Arc<AtomicU64>,
    /// Held open so that fsyncing and listing the directory need no new descriptor.
    dir_handle: Arc<DirHandle>,
}

impl SnapshotStore {
    /// Opens (creating if needed) the snapshot directory `dir`, keeping the newest
    /// [`DEFAULT_KEEP`] snapshots. Removes temp files left by a crash and snapshots beyond
    /// the newest `keep`.
    pub fn open(dir: impl AsRef<Path>) -> Result<SnapshotStore> {
        SnapshotStore::open_with_retention(dir, DEFAULT_KEEP)
    }

    /// Like [`SnapshotStore::open`], keeping the newest `keep` snapshots.
    ///
    /// # Panics
    /// If `keep` is 0: the newest snapshot must always be kept.
    pub fn open_with_retention(dir: impl AsRef<Path>, keep: usize) -> Result<SnapshotStore> {
        assert!(
            keep >= 1,
            "snapshot retention must keep at least 1, got {keep}"
        );
        let dir = dir.as_ref().to_path_buf();
        if !dir.exists() {
            std::fs::create_dir_all(&dir)
                .map_err(|e| Error::io("create snapshot directory", &dir, e))?;
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_dir(parent)?;
            }
        }
        let dir_handle =
            DirHandle::open(&dir).map_err(|e| Error::io("open snapshot directory", &dir, e))?;
        let store = SnapshotStore {
            dir,
            keep,
            temp_seq: Arc::new(AtomicU64::new(0)),
            dir_handle: Arc::new(dir_handle),
        };
        let mut removed = false;
        for name in store.dir_names()? {
            if name.ends_with(TEMP_SUFFIX) {
                let path = store.dir.join(&name);
                std::fs::remove_file(&path)
                    .map_err(|e| Error::io("remove stale snapshot temp file", &path, e))?;
                tracing::info!(file = %path.display(), "removed unfinished snapshot temp file");
                removed = true;
            }
        }
        removed |= store.prune(None)?;
        if removed {
            store.sync_dir()?;
        }
        Ok(store)
    }

    /// The snapshot directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Starts a new snapshot described by `meta`; write its payload to the returned writer.
    pub fn begin(&self, meta: SnapshotMeta) -> Result<SnapshotWriter> {
        let target = TempTarget::create(self, &meta)?;
        Ok(SnapshotWriter {
            frame: Vec::with_capacity(FRAME_HEADER_LEN + FRAME_PAYLOAD_BYTES),
            frames: 0,
            payload_bytes: 0,
            target,
            meta,
        })
    }

    /// Starts receiving a snapshot from a leader: feed it the bytes of
    /// [`SnapshotStore::read_chunk`] in order (see the module docs on transfer).
    pub fn begin_receive(&self, meta: SnapshotMeta) -> Result<SnapshotReceiver> {
        let target = TempTarget::create(self, &meta)?;
        Ok(SnapshotReceiver {
            parser: FrameParser::new(target.header_crc),
            received: 0,
            target,
            meta,
        })
    }

    /// Snapshots whose header is readable, newest (highest last index, then term) first.
    /// Files whose header is damaged are logged and left out; their frames are checked by
    /// [`SnapshotStore::verify`], not here.
    pub fn list(&self) -> Result<Vec<SnapshotMeta>> {
        let mut out = Vec::new();
        for (index, term) in self.snapshot_ids()? {
            let path = self.file_path(index, term);
            match read_header(&path) {
                Ok((meta, _, _)) if meta.last_index == index && meta.last_term == term => {
                    out.push(meta)
                }
                Ok((meta, _, _)) => tracing::warn!(
                    file = %path.display(),
                    "snapshot header describes index {} term {}, not what its name says; skipped",
                    meta.last_index,
                    meta.last_term
                ),
                Err(e) => tracing::warn!(error = %e, "unreadable snapshot header; skipped"),
            }
        }
        Ok(out)
    }

    /// The newest snapshot with a readable header (not fully verified), if any.
    pub fn latest(&self) -> Result<Option<SnapshotMeta>> {
        Ok(self.list()?.into_iter().next())
    }

    /// The newest snapshot that passes [`SnapshotStore::verify`], falling back to older ones
    /// (each failure is logged). `Ok(None)` only if there are no snapshot files at all; if
    /// there are some but none verifies, the newest one's error is returned, so a node never
    /// silently starts without the snapshot its log was compacted into.
    pub fn latest_verified(&self) -> Result<Option<SnapshotMeta>> {
        let mut first_error = None;
        for (index, term) in self.snapshot_ids()? {
            let path = self.file_path(index, term);
            let attempt = read_header(&path).and_then(|(meta, _, _)| {
                self.verify(&meta)?;
                Ok(meta)
            });
            match attempt {
                Ok(meta) => return Ok(Some(meta)),
                Err(e) => {
                    tracing::warn!(error = %e, "snapshot failed verification; trying an older one");
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(None),
        }
    }

    /// Reads the whole snapshot, checking every frame and the trailer.
    pub fn verify(&self, meta: &SnapshotMeta) -> Result<()> {
        let mut reader = self.open_reader(meta)?;
        while reader.next_chunk()?.is_some() {}
        Ok(())
    }

    /// Opens the snapshot described by `meta` (its header must describe the same meta) for
    /// streaming its payload.
    pub fn open_reader(&self, meta: &SnapshotMeta) -> Result<SnapshotReader> {
        let path = self.file_path(meta.last_index, meta.last_term);
        let (file, header_crc, _) = open_checked(&path, meta)?;
        Ok(SnapshotReader {
            file: BufReader::with_capacity(FRAME_HEADER_LEN + FRAME_PAYLOAD_BYTES, file),
            path,
            header_crc,
            frame: Vec::new(),
            frame_pos: 0,
            frames: 0,
            payload_bytes: 0,
            state: ReaderState::Frames,
        })
    }

    /// Up to `max_len` raw bytes of the data region (frames and trailer, after the header)
    /// of the snapshot `meta`, from `offset`, and whether they reach its end. For
    /// InstallSnapshot: the receiver feeds them to [`SnapshotReceiver::write_chunk`].
    /// Fails with [`Error::Io`] (not found) if the snapshot was deleted since (a newer one
    /// replaced it): the sender restarts with the newer one. Checksums are not verified
    /// here (the receiver does); call [`SnapshotStore::verify`] before offering a snapshot.
    pub fn read_chunk(
        &self,
        meta: &SnapshotMeta,
        offset: u64,
        max_len: u64,
    ) -> Result<(Bytes, bool)> {
        let path = self.file_path(meta.last_index, meta.last_term);
        let (mut file, _, data_start) = open_checked(&path, meta)?;
        let file_len = file
            .metadata()
            .map_err(|e| Error::io("stat snapshot", &path, e))?
            .len();
        let data_len = file_len.saturating_sub(data_start);
        if offset > data_len {
            return Err(Error::SnapshotCorrupt {
                file: path,
                reason: format!("chunk offset {offset} is past the data end {data_len}"),
            });
        }
        let n = max_len.min(data_len - offset);
        let mut buf = vec![0u8; usize::try_from(n).unwrap_or(usize::MAX)];
        file.seek(SeekFrom::Start(data_start + offset))
            .map_err(|e| Error::io("seek snapshot", &path, e))?;
        file.read_exact(&mut buf)
            .map_err(|e| Error::io("read snapshot chunk", &path, e))?;
        Ok((Bytes::from(buf), offset + n == data_len))
    }

    /// Size in bytes of the data region [`SnapshotStore::read_chunk`] serves.
    pub fn data_len(&self, meta: &SnapshotMeta) -> Result<u64> {
        let path = self.file_path(meta.last_index, meta.last_term);
        let (file, _, data_start) = open_checked(&path, meta)?;
        let len = file
            .metadata()
            .map_err(|e| Error::io("stat snapshot", &path, e))?
            .len();
        Ok(len.saturating_sub(data_start))
    }

    /// Path of the file holding the snapshot at `(last_index, last_term)`.
    pub fn file_path(&self, last_index: u64, last_term: u64) -> PathBuf {
        self.dir.join(format!(
            "{FILE_PREFIX}{last_index:020}-{last_term:020}{FILE_SUFFIX}"
        ))
    }

    fn dir_names(&self) -> Result<Vec<String>> {
        let entries = self
            .dir_handle
            .entries()
            .map_err(|e| Error::io("list snapshot directory", &self.dir, e))?;
        Ok(entries
            .into_iter()
            .map(|(name, _)| name.to_string_lossy().into_owned())
            .collect())
    }

    fn sync_dir(&self) -> Result<()> {
        self.dir_handle
            .sync()
            .map_err(|e| Error::io("fsync directory", &self.dir, e))
    }

    /// `(last_index, last_term)` of every snapshot file, newest first.
    fn snapshot_ids(&self) -> Result<Vec<(u64, u64)>> {
        let mut ids: Vec<(u64, u64)> = self
            .dir_names()?
            .iter()
            .filter_map(|name| parse_file_name(name))
            .collect();
        ids.sort_unstable_by(|a, b| b.cmp(a));
        Ok(ids)
    }

    /// Renames every snapshot newer than `kept` to `<name>.corrupt`, so that retention
    /// (which keeps the newest `keep` snapshots) never deletes `kept` in favor of files that
    /// failed verification, while the damaged files stay for an operator to inspect. Call it
    /// once a node has chosen `kept` after the newer ones failed [`SnapshotStore::verify`].
    /// Returns the new paths.
    pub fn quarantine_newer_than(&self, kept: &SnapshotMeta) -> Result<Vec<PathBuf>> {
        let mut moved = Vec::new();
        for (index, term) in self.snapshot_ids()? {
            if (index, term) <= (kept.last_index, kept.last_term) {
                continue;
            }
            let path = self.file_path(index, term);
            let mut target = path.clone().into_os_string();
            target.push(".corrupt");
            let target = PathBuf::from(target);
            std::fs::rename(&path, &target)
                .map_err(|e| Error::io("quarantine a corrupt snapshot", &path, e))?;
            tracing::warn!(
                file = %target.display(),
                "snapshot failed verification; renamed so it is never used or counted"
            );
            moved.push(target);
        }
        if !moved.is_empty() {
            self.sync_dir()?;
        }
        Ok(moved)
    }

    /// Deletes snapshots beyond the newest `keep`, never `spare`. Returns whether any went.
    fn prune(&self, spare: Option<(u64, u64)>) -> Result<bool> {
        let mut removed = false;
        for id in self.snapshot_ids()?.into_iter().skip(self.keep) {
            if Some(id) == spare {
                continue;
            }
            let path = self.file_path(id.0, id.1);
            std::fs::remove_file(&path).map_err(|e| Error::io("remove old snapshot", &path, e))?;
            tracing::debug!(file = %path.display(), "removed old snapshot");
            removed = true;
        }
        Ok(removed)
    }
}

fn parse_file_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_prefix(FILE_PREFIX)?.strip_suffix(FILE_SUFFIX)?;
    let (index, term) = stem.split_once('-')?;
    if index.len() != 20 || term.len() != 20 {
        return None;
    }
    Some((index.parse().ok()?, term.parse().ok()?))
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("fsync directory", dir, e))
}

/// Encodes the header for `meta`; returns it and its crc.
fn encode_header(meta: &SnapshotMeta) -> Result<(Vec<u8>, u32)> {
    let meta_bytes =
        bincode::serde::encode_to_vec(meta, bincode::config::standard()).map_err(|e| {
            Error::SnapshotCorrupt {
                file: PathBuf::new(),
                reason: format!("cannot encode snapshot meta: {e}"),
            }
        })?;
    let meta_len = u32::try_from(meta_bytes.len())
        .ok()
        .filter(|&l| l <= META_LEN_MAX)
        .ok_or_else(|| Error::SnapshotCorrupt {
            file: PathBuf::new(),
            reason: format!("snapshot meta of {} bytes is too large", meta_bytes.len()),
        })?;
    let mut header = Vec::with_capacity(HEADER_FIXED_LEN + meta_bytes.len() + 4);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&VERSION.to_le_bytes());
    header.extend_from_slice(&meta_len.to_le_bytes());
    header.extend_from_slice(&meta_bytes);
    let crc = crc32fast::hash(&header);
    header.extend_from_slice(&crc.to_le_bytes());
    Ok((header, crc))
}

/// Reads and checks the header of `path`: `(meta, header_crc, header_len)`.
fn read_header_from(file: &mut File, path: &Path) -> Result<(SnapshotMeta, u32, u64)> {
    let bad = |reason: String| Error::BadHeader {
        file: path.to_path_buf(),
        what: "snapshot",
        reason,
    };
    let mut fixed = [0u8; HEADER_FIXED_LEN];
    read_full(file, &mut fixed, path)
        .map_err(|_| bad("file is shorter than a snapshot header".to_string()))?;
    if &fixed[..8] != MAGIC {
        return Err(bad(format!(
            "magic is {:?}, expected {:?}",
            &fixed[..8],
            MAGIC
        )));
    }
    let version = u32::from_le_bytes([fixed[8], fixed[9], fixed[10], fixed[11]]);
    if version != VERSION {
        return Err(bad(format!(
            "format version {version}, this build reads version {VERSION}"
        )));
    }
    let meta_len = u32::from_le_bytes([fixed[12], fixed[13], fixed[14], fixed[15]]);
    if meta_len > META_LEN_MAX {
        return Err(bad(format!(
            "meta length {meta_len} exceeds {META_LEN_MAX}"
        )));
    }
    let mut rest = vec![0u8; meta_len as usize + 4];
    read_full(file, &mut rest, path)
        .map_err(|_| bad("file ends inside the snapshot header".to_string()))?;
    let (meta_bytes, crc_bytes) = rest.split_at(meta_len as usize);
    let stored = u32::from_le_bytes([crc_bytes[0], crc_bytes[1], crc_bytes[2], crc_bytes[3]]);
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&fixed);
    hasher.update(meta_bytes);
    let actual = hasher.finalize();
    if stored != actual {
        return Err(bad(format!(
            "header checksum mismatch: stored {stored:#010x}, computed {actual:#010x}"
        )));
    }
    let (meta, used) = bincode::serde::decode_from_slice::<SnapshotMeta, _>(
        meta_bytes,
        bincode::config::standard(),
    )
    .map_err(|e| bad(format!("cannot decode snapshot meta: {e}")))?;
    if used != meta_bytes.len() {
        return Err(bad(format!(
            "{} stray bytes after the snapshot meta",
            meta_bytes.len() - used
        )));
    }
    Ok((meta, stored, (HEADER_FIXED_LEN + rest.len()) as u64))
}

fn read_header(path: &Path) -> Result<(SnapshotMeta, u32, u64)> {
    let mut file = File::open(path).map_err(|e| Error::io("open snapshot", path, e))?;
    read_header_from(&mut file, path)
}

/// Opens `path`, checks that its header describes `meta`; returns the file positioned after
/// the header, the header crc and the header length.
fn open_checked(path: &Path, meta: &SnapshotMeta) -> Result<(File, u32, u64)> {
    let mut file = File::open(path).map_err(|e| Error::io("open snapshot", path, e))?;
    let (found, crc, len) = read_header_from(&mut file, path)?;
    if &found != meta {
        return Err(Error::SnapshotCorrupt {
            file: path.to_path_buf(),
            reason: format!("header describes {found:?}, expected {meta:?}"),
        });
    }
    Ok((file, crc, len))
}

/// `read_exact` that maps errors with the path.
fn read_full(file: &mut impl Read, buf: &mut [u8], path: &Path) -> Result<()> {
    file.read_exact(buf)
        .map_err(|e| Error::io("read snapshot", path, e))
}

pub(crate) fn frame_crc(header_crc: u32, frame_number: u64, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&header_crc.to_le_bytes());
    hasher.update(&frame_number.to_le_bytes());
    hasher.update(&(payload.len() as u32).to_le_bytes());
    hasher.update(payload);
    hasher.finalize()
}

fn trailer_crc(header_crc: u32, frame_count: u64, payload_bytes: u64) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&header_crc.to_le_bytes());
    hasher.update(&TRAILER_MARK.to_le_bytes());
    hasher.update(&frame_count.to_le_bytes());
    hasher.update(&payload_bytes.to_le_bytes());
    hasher.finalize()
}

pub(crate) fn encode_trailer(
    header_crc: u32,
    frame_count: u64,
    payload_bytes: u64,
) -> [u8; TRAILER_LEN] {
    let mut out = [0u8; TRAILER_LEN];
    out[0..4].copy_from_slice(&TRAILER_MARK.to_le_bytes());
    out[4..12].copy_from_slice(&frame_count.to_le_bytes());
    out[12..20].copy_from_slice(&payload_bytes.to_le_bytes());
    out[20..24].copy_from_slice(&trailer_crc(header_crc, frame_count, payload_bytes).to_le_bytes());
    out
}

/// Checks a trailer (mark included) against what was read; returns the reason if bad.
fn check_trailer(
    header_crc: u32,
    trailer: &[u8; TRAILER_LEN],
    frames: u64,
    payload_bytes: u64,
) -> std::result::Result<(), String> {
    let u64_at = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&trailer[i..i + 8]);
        u64::from_le_bytes(b)
    };
    let frame_count = u64_at(4);
    let total = u64_at(12);
    let stored = u32::from_le_bytes([trailer[20], trailer[21], trailer[22], trailer[23]]);
    let actual = trailer_crc(header_crc, frame_count, total);
    if stored != actual {
        return Err(format!(
            "trailer checksum mismatch: stored {stored:#010x}, computed {actual:#010x}"
        ));
    }
    if frame_count != frames || total != payload_bytes {
        return Err(format!(
            "trailer records {frame_count} frames / {total} bytes, found {frames} / {payload_bytes}"
        ));
    }
    Ok(())
}

/// A temp file being written, renamed into place by `finish`, removed if dropped before.
struct TempTarget {
    file: File,
    temp_path: PathBuf,
    final_path: PathBuf,
    store: SnapshotStore,
    header_crc: u32,
    done: bool,
}

impl TempTarget {
    fn create(store: &SnapshotStore, meta: &SnapshotMeta) -> Result<TempTarget> {
        let (header, header_crc) = encode_header(meta)?;
        let seq = store.temp_seq.fetch_add(1, Ordering::Relaxed);
        let temp_path = store.dir.join(format!(
            "{FILE_PREFIX}{:020}-{:020}.{}.{seq}{TEMP_SUFFIX}",
            meta.last_index,
            meta.last_term,
            std::process::id()
        ));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp_path)
            .map_err(|e| Error::io("create snapshot temp file", &temp_path, e))?;
        let mut target = TempTarget {
            file,
            temp_path,
            final_path: store.file_path(meta.last_index, meta.last_term),
            store: store.clone(),
            header_crc,
            done: false,
        };
        // If this fails, dropping `target` removes the temp file.
        target.write_all(&header)?;
        Ok(target)
    }

    fn write_all(&mut self, bytes: &[u8]) -> Result<()> {
        failpoint::inject("snapshot::write")
            .map_err(|e| Error::io("write snapshot", &self.temp_path, e))?;
        self.file
            .write_all(bytes)
            .map_err(|e| Error::io("write snapshot", &self.temp_path, e))?;
        crate::pacing::after_write(&self.file, bytes.len());
        Ok(())
    }

    /// fsync, rename into place, fsync the directory, prune old snapshots.
    fn install(mut self, id: (u64, u64)) -> Result<()> {
        failpoint::inject("snapshot::fsync")
            .map_err(|e| Error::io("fsync snapshot temp file", &self.temp_path, e))?;
        self.file
            .sync_all()
            .map_err(|e| Error::io("fsync snapshot temp file", &self.temp_path, e))?;
        failpoint::inject("snapshot::rename")
            .map_err(|e| Error::io("rename snapshot into place", &self.final_path, e))?;
        std::fs::rename(&self.temp_path, &self.final_path)
            .map_err(|e| Error::io("rename snapshot into place", &self.final_path, e))?;
        self.done = true;
        self.store.sync_dir()?;
        // The new snapshot is durable; older ones may go. A failure to delete one is not a
        // failure of this snapshot: log it, the next open retries.
        if let Err(e) = self.store.prune(Some(id)) {
            tracing::warn!(error = %e, "could not remove old snapshots");
        }
        Ok(())
    }

    fn remove(&mut self) -> Result<()> {
        if self.done {
            return Ok(());
        }
        self.done = true;
        match std::fs::remove_file(&self.temp_path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("remove snapshot temp file", &self.temp_path, e)),
        }
    }
}

impl Drop for TempTarget {
    fn drop(&mut self) {
        if let Err(e) = self.remove() {
            tracing::warn!(error = %e, "could not remove abandoned snapshot temp file");
        }
    }
}

/// Writes a new snapshot's payload, framing it. Dropping it without [`SnapshotWriter::finish`]
/// discards the snapshot.
pub struct SnapshotWriter {
    /// `| len | crc |` placeholder followed by up to `FRAME_PAYLOAD_BYTES` of payload.
    frame: Vec<u8>,
    frames: u64,
    payload_bytes: u64,
    target: TempTarget,
    meta: SnapshotMeta,
}

impl std::fmt::Debug for SnapshotWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotWriter")
            .field("temp_path", &self.target.temp_path)
            .field("payload_bytes", &self.payload_bytes)
            .finish_non_exhaustive()
    }
}

impl SnapshotWriter {
    /// Appends payload bytes (any size; framed internally).
    pub fn write_chunk(&mut self, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            if self.frame.is_empty() {
                self.frame.resize(FRAME_HEADER_LEN, 0);
            }
            let room = FRAME_HEADER_LEN + FRAME_PAYLOAD_BYTES - self.frame.len();
            let n = room.min(data.len());
            self.frame.extend_from_slice(&data[..n]);
            data = &data[n..];
            self.payload_bytes += n as u64;
            if self.frame.len() == FRAME_HEADER_LEN + FRAME_PAYLOAD_BYTES {
                self.flush_frame()?;
            }
        }
        Ok(())
    }

    /// Payload bytes written so far.
    pub fn payload_bytes(&self) -> u64 {
        self.payload_bytes
    }

    fn flush_frame(&mut self) -> Result<()> {
        if self.frame.len() <= FRAME_HEADER_LEN {
            return Ok(());
        }
        let payload_len = self.frame.len() - FRAME_HEADER_LEN;
        let crc = frame_crc(
            self.target.header_crc,
            self.frames,
            &self.frame[FRAME_HEADER_LEN..],
        );
        self.frame[0..4].copy_from_slice(&(payload_len as u32).to_le_bytes());
        self.frame[4..8].copy_from_slice(&crc.to_le_bytes());
        let frame = std::mem::take(&mut self.frame);
        let result = self.target.write_all(&frame);
        self.frame = frame;
        self.frame.clear();
        result?;
        self.frames += 1;
        Ok(())
    }

    /// Writes the trailer, fsyncs, renames into place, fsyncs the directory, then deletes
    /// snapshots beyond the retention count. Returns once the snapshot is durable.
    pub fn finish(mut self) -> Result<SnapshotMeta> {
        self.flush_frame()?;
        let trailer = encode_trailer(self.target.header_crc, self.frames, self.payload_bytes);
        self.target.write_all(&trailer)?;
        let SnapshotWriter { target, meta, .. } = self;
        target.install((meta.last_index, meta.last_term))?;
        Ok(meta)
    }

    /// Discards the snapshot (removes the temp file). Dropping the writer does the same but
    /// can only log a failure.
    pub fn abort(mut self) -> Result<()> {
        self.target.remove()
    }
}

impl Write for SnapshotWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.write_chunk(buf).map_err(to_io)?;
        Ok(buf.len())
    }

    /// Does nothing: durability comes from [`SnapshotWriter::finish`] only.
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn to_io(e: Error) -> std::io::Error {
    match e {
        Error::Io { source, .. } => source,
        other => std::io::Error::new(std::io::ErrorKind::InvalidData, other),
    }
}

/// Incremental parser of the data region (frames and trailer), for the receiver.
struct FrameParser {
    header_crc: u32,
    state: ParseState,
    frames: u64,
    payload_bytes: u64,
}

enum ParseState {
    /// Collecting the 8-byte frame header (or the first bytes of the trailer).
    Head {
        buf: [u8; FRAME_HEADER_LEN],
        have: usize,
    },
    /// Inside a frame's payload.
    Payload {
        len: u32,
        remaining: u32,
        crc: u32,
        hasher: crc32fast::Hasher,
    },
    /// Collecting the trailer.
    Trailer { buf: [u8; TRAILER_LEN], have: usize },
    /// The trailer was complete and valid.
    Done,
}

impl FrameParser {
    fn new(header_crc: u32) -> FrameParser {
        FrameParser {
            header_crc,
            state: ParseState::Head {
                buf: [0; FRAME_HEADER_LEN],
                have: 0,
            },
            frames: 0,
            payload_bytes: 0,
        }
    }

    /// Consumes all of `data`, checking it. `Err(reason)` on the first inconsistency.
    fn feed(&mut self, mut data: &[u8]) -> std::result::Result<(), String> {
        while !data.is_empty() {
            match &mut self.state {
                ParseState::Head { buf, have } => {
                    let n = (FRAME_HEADER_LEN - *have).min(data.len());
                    buf[*have..*have + n].copy_from_slice(&data[..n]);
                    *have += n;
                    data = &data[n..];
                    if *have >= 4 {
                        let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
                        if len == TRAILER_MARK {
                            let mut trailer = [0u8; TRAILER_LEN];
                            trailer[..*have].copy_from_slice(&buf[..*have]);
                            self.state = ParseState::Trailer {
                                buf: trailer,
                                have: *have,
                            };
                            continue;
                        }
                        if len == 0 || len > FRAME_PAYLOAD_BYTES_MAX {
                            return Err(format!("frame {} has invalid length {len}", self.frames));
                        }
                    }
                    if *have == FRAME_HEADER_LEN {
                        let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
                        let crc = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
                        let mut hasher = crc32fast::Hasher::new();
                        hasher.update(&self.header_crc.to_le_bytes());
                        hasher.update(&self.frames.to_le_bytes());
                        hasher.update(&len.to_le_bytes());
                        self.state = ParseState::Payload {
                            len,
                            remaining: len,
                            crc,
                            hasher,
                        };
                    }
                }
                ParseState::Payload {
                    len,
                    remaining,
                    crc,
                    hasher,
                } => {
                    let n = (*remaining as usize).min(data.len());
                    hasher.update(&data[..n]);
                    *remaining -= n as u32;
                    data = &data[n..];
                    if *remaining == 0 {
                        let actual = hasher.clone().finalize();
                        if actual != *crc {
                            return Err(format!(
                                "frame {} checksum mismatch: stored {:#010x}, computed {actual:#010x}",
                                self.frames, *crc
                            ));
                        }
                        self.payload_bytes += u64::from(*len);
                        self.frames += 1;
                        self.state = ParseState::Head {
                            buf: [0; FRAME_HEADER_LEN],
                            have: 0,
                        };
                    }
                }
                ParseState::Trailer { buf, have } => {
                    let n = (TRAILER_LEN - *have).min(data.len());
                    buf[*have..*have + n].copy_from_slice(&data[..n]);
                    *have += n;
                    data = &data[n..];
                    if *have == TRAILER_LEN {
                        check_trailer(self.header_crc, buf, self.frames, self.payload_bytes)?;
                        self.state = ParseState::Done;
                    }
                }
                ParseState::Done => {
                    return Err(format!("{} bytes after the trailer", data.len()));
                }
            }
        }
        Ok(())
    }
}

/// Receives a snapshot's raw data region from a leader (see the module docs). Dropping it
/// without [`SnapshotReceiver::finish`] discards it.
pub struct SnapshotReceiver {
    parser: FrameParser,
    received: u64,
    target: TempTarget,
    meta: SnapshotMeta,
}

impl std::fmt::Debug for SnapshotReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotReceiver")
            .field("temp_path", &self.target.temp_path)
            .field("received", &self.received)
            .finish_non_exhaustive()
    }
}

impl SnapshotReceiver {
    /// Appends the raw bytes a leader read with [`SnapshotStore::read_chunk`] at `offset`.
    /// `offset` must equal [`SnapshotReceiver::received`] (chunks arrive in order, no gaps);
    /// otherwise, or if the bytes fail a frame checksum, the error says so and the caller
    /// should drop this receiver and restart the transfer from offset 0.
    pub fn write_chunk(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        if offset != self.received {
            return Err(Error::SnapshotCorrupt {
                file: self.target.temp_path.clone(),
                reason: format!(
                    "chunk at offset {offset} does not follow the {} bytes received",
                    self.received
                ),
            });
        }
        self.parser
            .feed(data)
            .map_err(|reason| Error::SnapshotCorrupt {
                file: self.target.temp_path.clone(),
                reason: format!("received data: {reason}"),
            })?;
        self.target.write_all(data)?;
        self.received += data.len() as u64;
        Ok(())
    }

    /// Bytes of the data region received so far (the next expected offset).
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Checks that the trailer arrived, then installs the snapshot like
    /// [`SnapshotWriter::finish`].
    pub fn finish(self) -> Result<SnapshotMeta> {
        if !matches!(self.parser.state, ParseState::Done) {
            return Err(Error::SnapshotCorrupt {
                file: self.target.temp_path.clone(),
                reason: format!(
                    "transfer ended after {} bytes ({} complete frames) without a trailer",
                    self.received, self.parser.frames
                ),
            });
        }
        let SnapshotReceiver { target, meta, .. } = self;
        target.install((meta.last_index, meta.last_term))?;
        Ok(meta)
    }

    /// Discards the partial snapshot.
    pub fn abort(mut self) -> Result<()> {
        self.target.remove()
    }
}

enum ReaderState {
    Frames,
    Done,
    Failed,
}

/// Streams a snapshot's payload, verifying each frame before returning any of its bytes and
/// the trailer at the end. Also implements [`std::io::Read`]; there, corruption surfaces as
/// an `io::Error` of kind `InvalidData` wrapping [`Error::SnapshotCorrupt`].
pub struct SnapshotReader {
    file: BufReader<File>,
    path: PathBuf,
    header_crc: u32,
    frame: Vec<u8>,
    frame_pos: usize,
    frames: u64,
    payload_bytes: u64,
    state: ReaderState,
}

impl std::fmt::Debug for SnapshotReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotReader")
            .field("path", &self.path)
            .field("payload_bytes", &self.payload_bytes)
            .finish_non_exhaustive()
    }
}

impl SnapshotReader {
    /// The next verified frame of payload; `None` after the trailer was verified.
    pub fn next_chunk(&mut self) -> Result<Option<&[u8]>> {
        match self.state {
            ReaderState::Done => return Ok(None),
            ReaderState::Failed => {
                return Err(self.corrupt("reading past an earlier failure".to_string()))
            }
            ReaderState::Frames => {}
        }
        match self.read_frame() {
            Ok(true) => {
                self.frame_pos = self.frame.len();
                Ok(Some(&self.frame))
            }
            Ok(false) => {
                self.state = ReaderState::Done;
                Ok(None)
            }
            Err(e) => {
                self.state = ReaderState::Failed;
                Err(e)
            }
        }
    }

    /// Payload bytes returned so far.
    pub fn payload_bytes(&self) -> u64 {
        self.payload_bytes
    }

    fn corrupt(&self, reason: String) -> Error {
        Error::SnapshotCorrupt {
            file: self.path.clone(),
            reason,
        }
    }

    /// Reads the next frame into `self.frame` (true) or verifies the trailer (false).
    fn read_frame(&mut self) -> Result<bool> {
        let mut head = [0u8; FRAME_HEADER_LEN];
        let got = read_up_to(&mut self.file, &mut head[..4], &self.path)?;
        if got < 4 {
            return Err(self.corrupt(format!(
                "file ends after frame {} ({} payload bytes) without a trailer",
                self.frames, self.payload_bytes
            )));
        }
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
        if len == TRAILER_MARK {
            let mut trailer = [0u8; TRAILER_LEN];
            trailer[..4].copy_from_slice(&head[..4]);
            if read_up_to(&mut self.file, &mut trailer[4..], &self.path)? < TRAILER_LEN - 4 {
                return Err(self.corrupt("file ends inside the trailer".to_string()));
            }
            check_trailer(self.header_crc, &trailer, self.frames, self.payload_bytes)
                .map_err(|r| self.corrupt(r))?;
            let mut extra = [0u8; 1];
            if read_up_to(&mut self.file, &mut extra, &self.path)? != 0 {
                return Err(self.corrupt("bytes after the trailer".to_string()));
            }
            return Ok(false);
        }
        if len == 0 || len > FRAME_PAYLOAD_BYTES_MAX {
            return Err(self.corrupt(format!("frame {} has invalid length {len}", self.frames)));
        }
        if read_up_to(&mut self.file, &mut head[4..], &self.path)? < 4 {
            return Err(self.corrupt(format!("file ends inside frame {}", self.frames)));
        }
        let stored = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        self.frame.resize(len as usize, 0);
        if read_up_to(&mut self.file, &mut self.frame, &self.path)? < len as usize {
            return Err(self.corrupt(format!("file ends inside frame {}", self.frames)));
        }
        let actual = frame_crc(self.header_crc, self.frames, &self.frame);
        if actual != stored {
            return Err(self.corrupt(format!(
                "frame {} (payload bytes {}..{}) checksum mismatch: stored {stored:#010x}, computed {actual:#010x}",
                self.frames,
                self.payload_bytes,
                self.payload_bytes + u64::from(len)
            )));
        }
        self.frames += 1;
        self.payload_bytes += u64::from(len);
        self.frame_pos = 0;
        Ok(true)
    }
}

/// Reads until `buf` is full or EOF; returns the bytes read.
fn read_up_to(file: &mut impl Read, buf: &mut [u8], path: &Path) -> Result<usize> {
    let mut have = 0;
    while have < buf.len() {
        match file.read(&mut buf[have..]) {
            Ok(0) => break,
            Ok(n) => have += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io("read snapshot", path, e)),
        }
    }
    Ok(have)
}

impl Read for SnapshotReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        while self.frame_pos >= self.frame.len() {
            match self.state {
                ReaderState::Done => return Ok(0),
                ReaderState::Failed => {
                    return Err(to_io(
                        self.corrupt("reading past an earlier failure".to_string()),
                    ))
                }
                ReaderState::Frames => {}
            }
            match self.read_frame() {
                Ok(true) => {}
                Ok(false) => {
                    self.state = ReaderState::Done;
                    self.frame.clear();
                    self.frame_pos = 0;
                    return Ok(0);
                }
                Err(e) => {
                    self.state = ReaderState::Failed;
                    return Err(to_io(e));
                }
            }
        }
        let n = (self.frame.len() - self.frame_pos).min(buf.len());
        buf[..n].copy_from_slice(&self.frame[self.frame_pos..self.frame_pos + n]);
        self.frame_pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::{Member, Membership};

    fn meta(index: u64, term: u64) -> SnapshotMeta {
        let mut members = BTreeMap::new();
        for id in 1..=3u64 {
            members.insert(
                id,
                Member {
                    raft_addr: format!("127.0.0.1:{}", 7000 + id),
                    api_addr: format!("127.0.0.1:{}", 8000 + id),
                    voter: id != 3,
                },
            );
        }
        SnapshotMeta {
            last_index: index,
            last_term: term,
            membership: Membership { members },
        }
    }

    /// Deterministic pseudo-random payload byte at position `i` for snapshot `seed`.
    fn byte_at(seed: u64, i: u64) -> u8 {
        let x = (i ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        (x >> 29) as u8
    }

    fn payload(seed: u64, len: u64) -> Vec<u8> {
        (0..len).map(|i| byte_at(seed, i)).collect()
    }

    /// Writes a snapshot in uneven chunk sizes.
    fn write(store: &SnapshotStore, m: SnapshotMeta, data: &[u8]) -> SnapshotMeta {
        let mut w = store.begin(m).unwrap();
        let mut rest = data;
        let mut step = 1usize;
        while !rest.is_empty() {
            let n = step.min(rest.len());
            w.write_chunk(&rest[..n]).unwrap();
            rest = &rest[n..];
            step = step * 7 % 200_003 + 1;
        }
        w.finish().unwrap()
    }

    fn read_all(store: &SnapshotStore, m: &SnapshotMeta) -> Result<Vec<u8>> {
        let mut r = store.open_reader(m)?;
        let mut out = Vec::new();
        while let Some(chunk) = r.next_chunk()? {
            out.extend_from_slice(chunk);
        }
        Ok(out)
    }

    fn flip(path: &Path, offset: u64) {
        let mut bytes = std::fs::read(path).unwrap();
        bytes[offset as usize] ^= 0x40;
        std::fs::write(path, bytes).unwrap();
    }

    #[test]
    fn round_trip_multi_frame_via_chunks_and_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path().join("snap")).unwrap();
        let data = payload(1, 3 * 1024 * 1024 + 12345);
        let m = write(&store, meta(100, 3), &data);
        assert_eq!(m, meta(100, 3));
        assert_eq!(read_all(&store, &m).unwrap(), data);
        let mut via_read = Vec::new();
        store
            .open_reader(&m)
            .unwrap()
            .read_to_end(&mut via_read)
            .unwrap();
        assert_eq!(via_read, data);
        store.verify(&m).unwrap();
        assert_eq!(store.latest().unwrap(), Some(meta(100, 3)));
    }

    #[test]
    fn empty_snapshot_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path()).unwrap();
        let m = write(&store, meta(5, 1), &[]);
        assert_eq!(read_all(&store, &m).unwrap(), Vec::<u8>::new());
        let (bytes, done) = store.read_chunk(&m, 0, 1 << 20).unwrap();
        assert!(done);
        assert_eq!(bytes.len(), TRAILER_LEN);
    }

    #[test]
    fn flipped_payload_byte_fails_at_its_frame_without_releasing_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path()).unwrap();
        let data = payload(2, 5 * FRAME_PAYLOAD_BYTES as u64);
        let m = write(&store, meta(10, 1), &data);
        let header_len = encode_header(&m).unwrap().0.len() as u64;
        // Payload byte 10 of frame 2.
        let frame_size = (FRAME_HEADER_LEN + FRAME_PAYLOAD_BYTES) as u64;
        flip(
            &store.file_path(10, 1),
            header_len + 2 * frame_size + 8 + 10,
        );
        let mut r = store.open_reader(&m).unwrap();
        assert_eq!(
            r.next_chunk().unwrap().unwrap(),
            &data[..FRAME_PAYLOAD_BYTES]
        );
        assert!(r.next_chunk().unwrap().is_some());
        let err = r.next_chunk().unwrap_err();
        assert!(
            matches!(&err, Error::SnapshotCorrupt { reason, .. } if reason.contains("frame 2")),
            "{err}"
        );
        assert_eq!(r.payload_bytes(), 2 * FRAME_PAYLOAD_BYTES as u64);
        assert!(r.next_chunk().is_err(), "must stay failed");
        // Through io::Read, the error wraps the typed one.
        let mut sink = Vec::new();
        let io_err = store
            .open_reader(&m)
            .unwrap()
            .read_to_end(&mut sink)
            .unwrap_err();
        assert_eq!(io_err.kind(), std::io::ErrorKind::InvalidData);
        assert_eq!(sink.len(), 2 * FRAME_PAYLOAD_BYTES);
        assert!(store.verify(&m).is_err());
    }

    #[test]
    fn every_kind_of_damage_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open_with_retention(dir.path(), 10).unwrap();
        let data = payload(3, 3 * FRAME_PAYLOAD_BYTES as u64 + 17);
        let m = write(&store, meta(20, 2), &data);
        let path = store.file_path(20, 2);
        let good = std::fs::read(&path).unwrap();
        let header_len = encode_header(&m).unwrap().0.len();
        let frame_size = FRAME_HEADER_LEN + FRAME_PAYLOAD_BYTES;
        let mut cases: Vec<(&str, Vec<u8>)> = vec![
            ("truncated mid-frame", good[..good.len() - 100].to_vec()),
            (
                "truncated at trailer",
                good[..good.len() - TRAILER_LEN].to_vec(),
            ),
            ("trailing garbage", [good.clone(), vec![0u8; 3]].concat()),
            ("header byte", {
                let mut b = good.clone();
                b[20] ^= 1;
                b
            }),
            ("magic", {
                let mut b = good.clone();
                b[0] = b'X';
                b
            }),
            ("frame length", {
                let mut b = good.clone();
                b[header_len + frame_size] ^= 0x10;
                b
            }),
            ("trailer count", {
                let mut b = good.clone();
                let n = b.len();
                b[n - 18] ^= 1;
                b
            }),
        ];
        // A frame removed entirely (at a frame boundary).
        let mut dropped = good[..header_len + frame_size].to_vec();
        dropped.extend_from_slice(&good[header_len + 2 * frame_size..]);
        cases.push(("frame removed", dropped));
        // Two frames swapped.
        let mut swapped = good[..header_len].to_vec();
        swapped.extend_from_slice(&good[header_len + frame_size..header_len + 2 * frame_size]);
        swapped.extend_from_slice(&good[header_len..header_len + frame_size]);
        swapped.extend_from_slice(&good[header_len + 2 * frame_size..]);
        cases.push(("frames swapped", swapped));
        for (what, bytes) in cases {
            std::fs::write(&path, &bytes).unwrap();
            assert!(store.verify(&m).is_err(), "{what}: not detected");
        }
        std::fs::write(&path, &good).unwrap();
        store.verify(&m).unwrap();
    }

    #[test]
    fn body_of_another_snapshot_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path()).unwrap();
        let data = payload(4, 100_000);
        let a = write(&store, meta(30, 1), &data);
        let b = write(&store, meta(31, 1), &data);
        let header_a = encode_header(&a).unwrap().0;
        let body_b = std::fs::read(store.file_path(31, 1)).unwrap()
            [encode_header(&b).unwrap().0.len()..]
            .to_vec();
        std::fs::write(store.file_path(30, 1), [header_a, body_b].concat()).unwrap();
        assert!(store.verify(&a).is_err());
    }

    #[test]
    fn latest_verified_falls_back_to_the_previous_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path()).unwrap();
        let old = write(&store, meta(40, 1), &payload(5, 200_000));
        let new = write(&store, meta(50, 2), &payload(6, 200_000));
        assert_eq!(store.latest_verified().unwrap(), Some(new.clone()));
        flip(&store.file_path(50, 2), 150_000);
        assert_eq!(store.latest().unwrap(), Some(new.clone()));
        assert_eq!(store.latest_verified().unwrap(), Some(old.clone()));
        flip(&store.file_path(40, 1), 3); // magic: header unreadable
        let err = store.latest_verified().unwrap_err();
        assert!(
            err.to_string().contains("snap-00000000000000000050"),
            "{err}"
        );
        assert_eq!(store.list().unwrap(), vec![new]);
    }

    #[test]
    fn quarantined_snapshots_no_longer_count_toward_retention() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path()).unwrap();
        let good = write(&store, meta(40, 1), &payload(5, 100_000));
        write(&store, meta(50, 2), &payload(6, 100_000));
        flip(&store.file_path(50, 2), 50_000);
        assert_eq!(store.latest_verified().unwrap(), Some(good.clone()));
        let moved = store.quarantine_newer_than(&good).unwrap();
        assert_eq!(moved.len(), 1);
        assert!(moved[0].to_string_lossy().ends_with(".snap.corrupt"));
        assert_eq!(store.list().unwrap(), vec![good.clone()]);
        // The next snapshot must not push the good one out in favor of the damaged one.
        let next = write(&store, meta(60, 2), &payload(7, 100_000));
        assert_eq!(store.list().unwrap(), vec![next, good]);
        assert!(moved[0].exists(), "the damaged file is kept for inspection");
        // Reopening leaves the quarantined file alone.
        let reopened = SnapshotStore::open(dir.path()).unwrap();
        assert_eq!(reopened.list().unwrap().len(), 2);
        assert!(moved[0].exists());
    }

    #[test]
    fn empty_directory_has_no_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path()).unwrap();
        assert_eq!(store.latest().unwrap(), None);
        assert_eq!(store.latest_verified().unwrap(), None);
        assert!(store.list().unwrap().is_empty());
    }

    #[test]
    fn crash_before_rename_leaves_previous_snapshot_usable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snap");
        let store = SnapshotStore::open(&path).unwrap();
        let data = payload(7, 300_000);
        let prev = write(&store, meta(60, 3), &data);
        let mut w = store.begin(meta(70, 3)).unwrap();
        w.write_chunk(&payload(8, 500_000)).unwrap();
        // A crash: neither finish nor abort nor Drop runs.
        std::mem::forget(w);
        let temps = |p: &Path| {
            std::fs::read_dir(p)
                .unwrap()
                .filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .file_name()
                        .to_string_lossy()
                        .ends_with(TEMP_SUFFIX)
                })
                .count()
        };
        assert_eq!(temps(&path), 1);
        assert_eq!(store.latest().unwrap(), Some(prev.clone()));
        drop(store);
        let store = SnapshotStore::open(&path).unwrap();
        assert_eq!(temps(&path), 0, "stale temp file not removed on open");
        assert_eq!(store.latest_verified().unwrap(), Some(prev.clone()));
        assert_eq!(read_all(&store, &prev).unwrap(), data);
    }

    #[test]
    fn abort_and_drop_remove_the_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path()).unwrap();
        let mut w = store.begin(meta(1, 1)).unwrap();
        w.write_all(&[1, 2, 3]).unwrap();
        w.abort().unwrap();
        let mut w = store.begin(meta(2, 1)).unwrap();
        w.write_all(&[1, 2, 3]).unwrap();
        drop(w);
        let mut r = store.begin_receive(meta(3, 1)).unwrap();
        r.write_chunk(0, &[5, 0, 0, 0]).unwrap();
        drop(r);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        assert_eq!(store.latest().unwrap(), None);
    }

    #[test]
    fn retention_keeps_the_newest_n() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path()).unwrap();
        for i in 1..=5u64 {
            write(&store, meta(i * 10, 1), &payload(i, 1000));
        }
        let indexes: Vec<u64> = store.list().unwrap().iter().map(|m| m.last_index).collect();
        assert_eq!(indexes, vec![50, 40]);
        // Reopening with a smaller retention prunes on open.
        let store = SnapshotStore::open_with_retention(dir.path(), 1).unwrap();
        let indexes: Vec<u64> = store.list().unwrap().iter().map(|m| m.last_index).collect();
        assert_eq!(indexes, vec![50]);
        // An older snapshot received later is kept (it was just finished) ...
        write(&store, meta(45, 1), &payload(9, 1000));
        let indexes: Vec<u64> = store.list().unwrap().iter().map(|m| m.last_index).collect();
        assert_eq!(indexes, vec![50, 45]);
        // ... and pruned by the next one.
        write(&store, meta(60, 2), &payload(9, 1000));
        let indexes: Vec<u64> = store.list().unwrap().iter().map(|m| m.last_index).collect();
        assert_eq!(indexes, vec![60]);
    }

    #[test]
    fn list_orders_by_index_then_term() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open_with_retention(dir.path(), 10).unwrap();
        for (i, t) in [(9, 1), (100, 2), (100, 3), (11, 1)] {
            write(&store, meta(i, t), b"x");
        }
        let ids: Vec<(u64, u64)> = store
            .list()
            .unwrap()
            .iter()
            .map(|m| (m.last_index, m.last_term))
            .collect();
        assert_eq!(ids, vec![(100, 3), (100, 2), (11, 1), (9, 1)]);
    }

    fn transfer(
        from: &SnapshotStore,
        to: &SnapshotStore,
        m: &SnapshotMeta,
        chunk: u64,
    ) -> Result<SnapshotMeta> {
        let mut rx = to.begin_receive(m.clone())?;
        let mut offset = 0;
        loop {
            let (bytes, done) = from.read_chunk(m, offset, chunk)?;
            rx.write_chunk(offset, &bytes)?;
            offset += bytes.len() as u64;
            if done {
                break;
            }
        }
        rx.finish()
    }

    #[test]
    fn transfer_by_raw_chunks_reproduces_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let leader = SnapshotStore::open(dir.path().join("a")).unwrap();
        let follower = SnapshotStore::open(dir.path().join("b")).unwrap();
        let data = payload(10, 2 * 1024 * 1024 + 999);
        let m = write(&leader, meta(80, 4), &data);
        assert_eq!(
            leader.data_len(&m).unwrap() as usize,
            std::fs::read(leader.file_path(80, 4)).unwrap().len()
                - encode_header(&m).unwrap().0.len()
        );
        // Chunk sizes that straddle frame headers and the trailer.
        for (n, chunk) in [4093u64, 65_541, 1 << 20].into_iter().enumerate() {
            let target = SnapshotStore::open(dir.path().join(format!("c{n}"))).unwrap();
            let got = transfer(&leader, &target, &m, chunk).unwrap();
            assert_eq!(got, m);
            assert_eq!(
                std::fs::read(target.file_path(80, 4)).unwrap(),
                std::fs::read(leader.file_path(80, 4)).unwrap(),
                "chunk size {chunk}"
            );
        }
        transfer(&leader, &follower, &m, 300_000).unwrap();
        assert_eq!(read_all(&follower, &m).unwrap(), data);
        // One byte at a time through the receiver's parser (every split point).
        let small = write(
            &leader,
            meta(81, 4),
            &payload(12, 2 * FRAME_PAYLOAD_BYTES as u64 + 5),
        );
        let (region, done) = leader.read_chunk(&small, 0, u64::MAX).unwrap();
        assert!(done);
        let one = SnapshotStore::open(dir.path().join("one")).unwrap();
        let mut rx = one.begin_receive(small.clone()).unwrap();
        for (i, b) in region.iter().enumerate() {
            rx.write_chunk(i as u64, &[*b]).unwrap();
        }
        rx.finish().unwrap();
        assert_eq!(
            std::fs::read(one.file_path(81, 4)).unwrap(),
            std::fs::read(leader.file_path(81, 4)).unwrap()
        );
    }

    #[test]
    fn transfer_rejects_corrupt_gapped_or_truncated_data() {
        let dir = tempfile::tempdir().unwrap();
        let leader = SnapshotStore::open(dir.path().join("a")).unwrap();
        let follower = SnapshotStore::open(dir.path().join("b")).unwrap();
        let m = write(&leader, meta(90, 4), &payload(11, 300_000));
        // Damage on the sender's disk is caught by the receiver.
        let path = leader.file_path(90, 4);
        let good = std::fs::read(&path).unwrap();
        flip(&path, 200_000);
        let err = transfer(&leader, &follower, &m, 50_000).unwrap_err();
        assert!(err.to_string().contains("checksum mismatch"), "{err}");
        std::fs::write(&path, &good).unwrap();
        // A gap.
        let mut rx = follower.begin_receive(m.clone()).unwrap();
        let (bytes, _) = leader.read_chunk(&m, 0, 1000).unwrap();
        rx.write_chunk(0, &bytes).unwrap();
        let err = rx.write_chunk(2000, &bytes).unwrap_err();
        assert!(err.to_string().contains("does not follow"), "{err}");
        // Ends early.
        let mut rx = follower.begin_receive(m.clone()).unwrap();
        let (bytes, done) = leader.read_chunk(&m, 0, 100_000).unwrap();
        assert!(!done);
        rx.write_chunk(0, &bytes).unwrap();
        let err = rx.finish().unwrap_err();
        assert!(err.to_string().contains("without a trailer"), "{err}");
        // Wrong meta on the receiving side: header crc differs, so frames fail.
        let err = transfer(&leader, &follower, &m, 100_000)
            .and_then(|_| {
                let mut rx = follower.begin_receive(meta(90, 5))?;
                let (bytes, _) = leader.read_chunk(&m, 0, 100_000)?;
                rx.write_chunk(0, &bytes)
            })
            .unwrap_err();
        assert!(err.to_string().contains("checksum mismatch"), "{err}");
        // Nothing half-written was installed.
        assert_eq!(follower.list().unwrap(), vec![m]);
    }

    #[test]
    fn read_chunk_of_a_replaced_snapshot_fails() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open_with_retention(dir.path(), 1).unwrap();
        let old = write(&store, meta(1, 1), b"old");
        write(&store, meta(2, 1), b"new");
        let err = store.read_chunk(&old, 0, 10).unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err}");
        // Asking with a meta that does not match the header is refused.
        let mut wrong = meta(2, 1);
        wrong.membership.members.clear();
        assert!(store.read_chunk(&wrong, 0, 10).is_err());
    }

    /// Throughput of writing (incl. fsync + rename), verifying and transferring a 64 MiB
    /// snapshot. Run with
    /// `cargo test -p storage --release --lib snapshot::tests::measure -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn measure_snapshot_throughput() {
        use std::time::Instant;
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path().join("a")).unwrap();
        let other = SnapshotStore::open(dir.path().join("b")).unwrap();
        let total = 64 * 1024 * 1024u64;
        let chunk = payload(1, 1024 * 1024);
        let mib = total as f64 / (1024.0 * 1024.0);
        let start = Instant::now();
        let mut w = store.begin(meta(1, 1)).unwrap();
        for _ in 0..total / chunk.len() as u64 {
            w.write_chunk(&chunk).unwrap();
        }
        let m = w.finish().unwrap();
        let write = start.elapsed();
        let start = Instant::now();
        store.verify(&m).unwrap();
        let verify = start.elapsed();
        let start = Instant::now();
        transfer(&store, &other, &m, 1024 * 1024).unwrap();
        let xfer = start.elapsed();
        println!(
            "64 MiB snapshot: write+fsync+rename {:.0} MiB/s, verify {:.0} MiB/s, \
             transfer (1 MiB read_chunk -> receiver) {:.0} MiB/s",
            mib / write.as_secs_f64(),
            mib / verify.as_secs_f64(),
            mib / xfer.as_secs_f64()
        );
    }

    #[test]
    fn file_names_parse_strictly() {
        assert_eq!(
            parse_file_name("snap-00000000000000000042-00000000000000000007.snap"),
            Some((42, 7))
        );
        assert_eq!(parse_file_name("snap-42-7.snap"), None);
        assert_eq!(
            parse_file_name("snap-00000000000000000042-00000000000000000007.1.2.tmp"),
            None
        );
    }
}
