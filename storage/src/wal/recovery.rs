//! Opening a WAL directory: scan every segment, verify every record, rebuild the index,
//! and repair what a crash may leave behind (and only that).
//!
//! A segment's records end at a zero record header: the end marker every write leaves
//! after its records, or the zeros of a new file. What follows the marker is not
//! looked at as records (in a recycled file it is the previous life's records, which
//! fail their CRC under the new salt). "A valid record" below means one that verifies
//! under the segment's salt and could continue the log (index >= the expected one).
//!
//! What recovery does where the records stop (TigerBeetle-style case table). "A later
//! write starts" means one of the valid records after the stop carries the run-start
//! flag (`record.rs`: the first record of every `pwritev` + fdatasync has it):
//!
//! | where                     | the records stop at     | a valid record follows?            | outcome                                  |
//! |---------------------------|-------------------------|------------------------------------|------------------------------------------|
//! | not the last segment      | the next segment's start| (not looked at)                    | fine                                     |
//! | not the last segment      | anything earlier        | (either)                           | `Error::Corruption`                      |
//! | last segment              | an end marker           | no                                 | clean end of the log                     |
//! | last segment              | damage (not a marker)   | no                                 | torn tail: marker written, warn          |
//! | last segment              | either                  | yes, and a later write starts      | `Error::Corruption`                      |
//! | last segment, version 3   | either                  | yes, all of the same (last) write  | torn write: zeroed to its end, warn      |
//! | last segment, version 1-2 | either                  | yes                                | `Error::Corruption` (writes not marked)  |
//! | a pending truncation mark | (entries >= mark)       |                                    | zeroed: the truncation completes         |
//!
//! A torn tail is what a crash during an append leaves: the write never completed, so
//! its fdatasync never returned and no entry in it was acknowledged. A process crash
//! leaves a prefix of the write (the page cache keeps what was written). A power cut
//! can leave any subset of its pages: a multi-page `pwritev` reaches the disk in no
//! particular order, so record k can be lost while record k+1 is present. That is
//! still a torn write, as long as the damage and every valid record after it lie in
//! the *last* write (the last sync span): nothing in it was acknowledged.
//!
//! Where the last sync span starts is read from the records themselves: the first
//! record of each write carries the run-start flag. It costs no extra write (the flag
//! is a bit of the length field, set when the write is formed; its CRC is patched in
//! O(log n) without a pass over the payload). The reasoning, for damage at offset D
//! with valid records after it:
//! - The appender writes one run of records, fdatasyncs it, and only then writes the
//!   next; each run is one segment's worth at most, and a segment is synced before the
//!   next one is used. So every write before the last one is durable in full, and a
//!   crash or power cut can only damage bytes of the last write.
//! - If a valid record after D starts a write, that write began after the write
//!   holding D had been synced: the bytes at D were durable and are damaged anyway.
//!   That is not a crash; recovery refuses, as for damage anywhere else.
//! - Otherwise D and the valid records after it belong to one write: the last one, as
//!   no later one starts. Had its fdatasync returned, a crash could not have damaged
//!   it (only bit rot could: the case below), so none of it was acknowledged, and it
//!   is cut at D. The valid records after D are zeroed too, or a later recovery, after
//!   new entries took their place, could take them for entries.
//!
//! Bounding the span by bytes (the group commit limit) instead would not do: a single
//! batch may be larger, and damage in a synced write shortly before the end would pass.
//!
//! Damage with valid records after it cannot come from a crash anywhere else, so
//! refusing to open is the only way not to silently lose acknowledged entries. The
//! case this cannot tell apart: bit rot inside the last write of the log (after its
//! fdatasync returned) looks exactly like a torn write of it, and is cut like one; so
//! does bit rot in the write before the last one if a power cut also lost the last
//! write's first record (two faults at once: the flag that would prove the damage
//! older is gone). Version 1 and 2 segments do not mark writes: there,
//! only damage with nothing valid after it is a torn tail.
//!
//! Whatever recovery keeps, it makes durable before the log is used: the last segment
//! is fdatasynced and the directory fsynced on every open. After a process crash the
//! last write's records may sit in the page cache unsynced, yet they are the log from
//! then on (found by the power-cut model test: entry 17 recovered after a crash, then
//! lost to a power cut after the next open).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use memmap2::Mmap;

use super::fs::WalFs;
use super::record::{
    self, decode_record, DecodeError, Meta, RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES,
};
use super::segment::{
    map_file, parse_segment_file_name, write_sync_rename, write_zeros, ActiveSegment, RenameSteps,
    SegmentView, END_MARKER_BYTES, PREPARED_SUFFIX,
};
use crate::failpoint;
use crate::{Error, Result};

/// Name of the metadata file (logical first index, pending truncation).
pub const META_FILE: &str = "wal.meta";
const META_TMP_FILE: &str = "wal.meta.tmp";

/// What [`crate::wal::Wal::open`] found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Entries in the log after recovery (`last_index - first_index + 1`).
    pub entries_recovered: u64,
    /// Bytes of records scanned and CRC-checked, segment headers included.
    pub bytes_scanned: u64,
    /// Segment files in use after recovery.
    pub segments: usize,
    /// Where a torn tail was cut off (an end marker written over it, and over the rest of
    /// the last write if valid records of it followed the damage), if one was: file and
    /// byte offset.
    pub tail_truncated_at: Option<(PathBuf, u64)>,
    /// Segment files deleted because they were compacted or past a truncation.
    pub segments_removed: usize,
    /// Whether an interrupted `truncate_suffix` was completed.
    pub truncation_completed: bool,
}

/// The state rebuilt from disk.
#[derive(Debug)]
pub(crate) struct Recovered {
    pub first_index: u64,
    pub last_index: u64,
    pub segments: Vec<SegmentView>,
    pub active: Option<ActiveSegment>,
    pub report: RecoveryReport,
}

/// Writes the metadata file atomically: temp file, fdatasync, rename, directory fsync.
/// After it returns the new metadata is durable; a crash before leaves the old one.
///
/// A full disk is [`Error::NoSpace`] at every step. Before the rename ([`replace_meta`])
/// `wal.meta` is the old one and the temp file is removed: a retry writes and syncs a
/// new temp file, never the one whose fdatasync failed. A failed directory fsync leaves
/// the new `wal.meta` in place but not known durable; whether the log may go on with
/// either one on disk is the caller's call (`Wal::compact_prefix`: yes, both describe
/// the files; `Wal::truncate_suffix`: no, it fails stop).
pub(crate) fn write_meta(fs: &dyn WalFs, dir: &Path, meta: &Meta) -> Result<()> {
    replace_meta(fs, dir, meta)?;
    sync_wal_dir(fs, dir)
}

/// [`write_meta`] up to the rename: `wal.meta` says `meta` to anyone who reads it from
/// now on, and a crash may still bring back the old one.
pub(crate) fn replace_meta(fs: &dyn WalFs, dir: &Path, meta: &Meta) -> Result<()> {
    let tmp = dir.join(META_TMP_FILE);
    match fs.remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io("remove stale WAL metadata temp file", &tmp, e)),
    }
    let file = fs
        .create_new(&tmp)
        .map_err(|e| Error::io_or_no_space("create WAL metadata temp file", &tmp, e))?;
    let steps = RenameSteps {
        write_failpoint: Some("wal::meta_write"),
        write: "write WAL metadata temp file",
        sync: "fdatasync WAL metadata temp file",
        rename_failpoint: "wal::meta_rename",
        rename: "rename WAL metadata file",
    };
    // On failure the old `wal.meta` stands.
    let meta_bytes = record::encode_meta(meta);
    write_sync_rename(fs, &file, &tmp, &meta_bytes, &dir.join(META_FILE), &steps)
}

/// fsyncs the WAL directory (failpoint `wal::dir_fsync`). ENOSPC is [`Error::NoSpace`]:
/// each caller redoes the renames it covers or lets them stand either way, and never
/// syncs the directory again in place of this one (`space.rs`).
pub(crate) fn sync_wal_dir(fs: &dyn WalFs, dir: &Path) -> Result<()> {
    failpoint::inject("wal::dir_fsync")
        .and_then(|()| fs.sync_dir(dir))
        .map_err(|e| Error::io_or_no_space("fsync WAL directory", dir, e))
}

/// Whether every byte is zero. Folds 4 KiB chunks so the compiler vectorizes it.
pub(crate) fn all_zero(buf: &[u8]) -> bool {
    buf.chunks(4096)
        .all(|chunk| chunk.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

/// One past the last non-zero byte (0 if all zero).
fn nonzero_end(buf: &[u8]) -> usize {
    let mut end = buf.len();
    while end > 0 {
        let start = end.saturating_sub(4096);
        let chunk = &buf[start..end];
        if chunk.iter().fold(0u8, |acc, &b| acc | b) != 0 {
            let last = chunk.iter().rposition(|&b| b != 0).unwrap_or(0);
            return start + last + 1;
        }
        end = start;
    }
    0
}

/// Why a segment scan stopped.
#[derive(Debug, PartialEq, Eq)]
enum Stop {
    /// An end marker (a zero record header), or zeros to the end of the file.
    Clean,
    /// The next entry is at or past the pending truncation mark.
    Fence,
    /// Bytes that are not the expected record and not all zeros.
    Damaged(String),
}

struct Scan {
    offsets: Vec<u32>,
    /// Offset just past the last good record.
    end: usize,
    stop: Stop,
}

/// Verifies records from the segment header on, until one is not the expected entry.
fn scan_segment(map: &[u8], first_index: u64, fence: u64, salt: u32) -> Scan {
    let mut offsets = Vec::with_capacity(map.len() / 256);
    let mut off = SEGMENT_HEADER_BYTES;
    let mut expected = first_index;
    let stop = loop {
        if fence != 0 && expected >= fence {
            break Stop::Fence;
        }
        if off >= map.len() {
            break Stop::Clean;
        }
        match decode_record(&map[off..], salt) {
            Ok(h) if h.index == expected => {
                offsets.push(off as u32);
                off += h.record_len();
                expected += 1;
            }
            Ok(h) => {
                break Stop::Damaged(format!(
                    "CRC-valid record of entry {} where entry {expected} belongs",
                    h.index
                ))
            }
            Err(DecodeError::Zeros) => break Stop::Clean,
            Err(DecodeError::Truncated) if all_zero(&map[off..]) => break Stop::Clean,
            Err(e) => break Stop::Damaged(e.describe()),
        }
    };
    Scan {
        offsets,
        end: off,
        stop,
    }
}

/// The first record that starts in `[from, to)`, verifies under `salt` and could
/// belong to the log after `expected`: (offset, index).
fn find_valid_record(
    map: &[u8],
    from: usize,
    to: usize,
    expected: u64,
    salt: u32,
) -> Option<(usize, u64)> {
    if to <= from {
        return None;
    }
    // Any later record has an index in this range; checking it first rejects almost
    // every candidate without computing a CRC.
    let index_max = expected + (to - from) as u64 / RECORD_HEADER_BYTES as u64 + 1;
    // A record's kind byte (at +24) is 1, 2 or 3: jumping between such bytes with SIMD
    // instead of trying every offset makes searching a recycled segment's 64 MiB of old
    // records about ten times faster.
    const KIND_AT: usize = RECORD_HEADER_BYTES - 1;
    let kinds_end = (to + KIND_AT).min(map.len());
    let mut at = from + KIND_AT;
    while at < kinds_end {
        let Some(hit) = memchr::memchr3(1, 2, 3, &map[at..kinds_end]) else {
            break;
        };
        let o = at + hit - KIND_AT;
        at += hit + 1;
        let Some(h) = map.get(o..o + RECORD_HEADER_BYTES) else {
            break;
        };
        let mut idx = [0u8; 8];
        idx.copy_from_slice(&h[16..24]);
        let index = u64::from_le_bytes(idx);
        if index < expected || index > index_max {
            continue;
        }
        if decode_record(&map[o..], salt).is_ok() {
            return Some((o, index));
        }
    }
    None
}

/// The records in `[from, to)` that verify under `salt` with an index of at least
/// `index_min`, each with a higher index than the one before.
struct ValidRecords {
    /// One past the last of them (`from` if there is none).
    end: usize,
    /// The first of them that starts a write: (offset, index).
    first_run_start: Option<(usize, u64)>,
}

fn valid_records(map: &[u8], from: usize, to: usize, index_min: u64, salt: u32) -> ValidRecords {
    let mut found = ValidRecords {
        end: from,
        first_run_start: None,
    };
    let mut next_index = index_min;
    // Each search starts with the index that would follow the record just found:
    // `find_valid_record` bounds candidate indexes by the bytes left after `from`, which
    // only holds for the index that belongs at `from`.
    while let Some((at, index)) = find_valid_record(map, found.end, to, next_index, salt) {
        let header = match record::peek_header(&map[at..]) {
            Ok(h) => h,
            Err(_) => unreachable!("record at {at} verified but its header does not decode"),
        };
        if header.run_start && found.first_run_start.is_none() {
            found.first_run_start = Some((at, index));
        }
        found.end = at + header.record_len();
        next_index = index + 1;
    }
    found
}

/// One past the last record in `[from, to)` that verifies under `salt` with an index of
/// at least `index_min` (`from` if there is none): how far a pending truncation has to
/// zero, even where an interrupted earlier attempt zeroed some records and not others.
fn valid_records_end(map: &[u8], from: usize, to: usize, index_min: u64, salt: u32) -> usize {
    valid_records(map, from, to, index_min, salt).end
}

/// A segment opened, mapped, header-checked and scanned: with its header.
type Loaded = Result<(File, std::sync::Arc<Mmap>, record::SegmentHeader, Scan)>;

fn load_segment(fs: &dyn WalFs, first: u64, path: &Path, fence: u64) -> Loaded {
    let file = fs
        .open_rw(path)
        .map_err(|e| Error::io("open WAL segment", path, e))?;
    let map = map_file(&file, path, true)?;
    let header = record::decode_segment_header(&map).map_err(|reason| Error::BadHeader {
        file: path.to_path_buf(),
        what: "WAL segment",
        reason,
    })?;
    if header.first_index != first {
        return Err(Error::BadHeader {
            file: path.to_path_buf(),
            what: "WAL segment",
            reason: format!(
                "header says first index {}, file name says {first}",
                header.first_index
            ),
        });
    }
    let scan = scan_segment(&map, first, fence, header.salt);
    Ok((file, map, header, scan))
}

/// Loads every segment, on as many threads as there are cores: verifying the CRC of
/// every record is what bounds recovery, and segments verify independently. What the
/// results mean (contiguity, torn tails) is decided afterwards, in order.
fn load_segments(fs: &dyn WalFs, keep: &[(u64, PathBuf)], fence: u64) -> Vec<Option<Loaded>> {
    let slots: Vec<Mutex<Option<Loaded>>> = keep.iter().map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    let work = || loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        let Some((first, path)) = keep.get(i) else {
            break;
        };
        let loaded = load_segment(fs, *first, path, fence);
        *slots[i].lock().unwrap_or_else(|p| p.into_inner()) = Some(loaded);
    };
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(keep.len());
    std::thread::scope(|scope| {
        for _ in 1..threads {
            // If a thread cannot start, the others (at least this one) do its share.
            let _ = std::thread::Builder::new()
                .name("wal-recover".into())
                .spawn_scoped(scope, work);
        }
        work();
    });
    slots
        .into_iter()
        .map(|m| m.into_inner().unwrap_or_else(|p| p.into_inner()))
        .collect()
}

/// A row of the case table in the module documentation: what it means that one
/// segment's records stop where they do. [`classify`] decides it, [`refusal`], [`zero_to`]
/// and [`warn_torn_tail`] act on it.
#[derive(Debug, PartialEq, Eq)]
enum Case {
    /// Not the last segment, and its records end where the next segment starts: fine.
    Continues,
    /// Not the last segment, its records stop before the next one starts, and a valid
    /// record of entry `index` follows at offset `at`: corruption.
    FollowedBeforeNext { at: usize, index: u64 },
    /// Not the last segment, and its records stop at damage before the next one starts:
    /// corruption.
    DamagedBeforeNext,
    /// Not the last segment, and its records end at an end marker before the next one
    /// starts, or run past that next one's first entry: corruption, named at the next one.
    Discontiguous,
    /// The last segment; its records stop at an end marker and nothing valid follows:
    /// the clean end of the log.
    CleanEnd,
    /// The last segment; its records stop at damage and nothing valid follows: a torn
    /// tail, cut at the damage.
    TornTail,
    /// The last segment; a valid record of entry `index` follows the stop at `at`, and
    /// entry `start_index` at `start_at` starts a later write, so the damaged bytes had
    /// been synced: corruption.
    LaterWriteFollows {
        at: usize,
        index: u64,
        start_at: usize,
        start_index: u64,
    },
    /// The last segment, of a version that marks writes; the valid records after the
    /// stop all belong to the last write and end at `end`: a torn write, zeroed to there.
    TornWrite { end: usize },
    /// The last segment, of a `version` (1 or 2) that does not mark writes; a valid
    /// record of entry `index` follows the stop at `at`: corruption.
    UnmarkedFollows { at: usize, index: u64, version: u32 },
    /// A pending truncation mark stopped the records: every valid record past it, up to
    /// `end`, is zeroed and the truncation completes.
    PendingTruncation { end: usize },
}

/// Decides which row of the case table a scanned segment falls under, from its bytes
/// (`map`, the whole file) alone: `next_first` is the first entry of the next segment
/// kept (`None` for the last one), `fence` the pending truncation mark (0: none).
fn classify(
    map: &[u8],
    header: &record::SegmentHeader,
    scan: &Scan,
    first: u64,
    next_first: Option<u64>,
    fence: u64,
) -> Case {
    let expected = first + scan.offsets.len() as u64;
    let salt = header.salt;
    // A valid record after the end of the records. Not looked for past a pending
    // truncation mark, whose records are about to be zeroed.
    let follows = || {
        if scan.stop == Stop::Fence {
            return None;
        }
        let skip = if scan.stop == Stop::Clean {
            END_MARKER_BYTES
        } else {
            1
        };
        find_valid_record(map, scan.end + skip, nonzero_end(map), expected, salt)
    };
    if let Some(next) = next_first {
        if expected < next {
            if let Some((at, index)) = follows() {
                return Case::FollowedBeforeNext { at, index };
            }
            if matches!(scan.stop, Stop::Damaged(_)) {
                return Case::DamagedBeforeNext;
            }
        }
        return if expected == next {
            Case::Continues
        } else {
            Case::Discontiguous
        };
    }
    if scan.stop == Stop::Fence {
        let end = valid_records_end(map, scan.end, map.len(), fence, salt);
        return Case::PendingTruncation { end };
    }
    if let Some((at, index)) = follows() {
        if header.version < record::FIRST_VERSION_MARKING_RUNS {
            let version = header.version;
            return Case::UnmarkedFollows { at, index, version };
        }
        let later = valid_records(map, at, nonzero_end(map), index, salt);
        return match later.first_run_start {
            Some((start_at, start_index)) => Case::LaterWriteFollows {
                at,
                index,
                start_at,
                start_index,
            },
            None => Case::TornWrite { end: later.end },
        };
    }
    match scan.stop {
        Stop::Damaged(_) => Case::TornTail,
        Stop::Clean | Stop::Fence => Case::CleanEnd,
    }
}

/// The error a case that refuses to open stands for; `None` for the cases recovery
/// goes on from. `path` is the segment, `next` the next one kept (with its first entry).
fn refusal(
    case: &Case,
    scan: &Scan,
    path: &Path,
    expected: u64,
    next: Option<&(u64, PathBuf)>,
) -> Option<Error> {
    let corruption = |file: &Path, offset: usize, reason: String| Error::Corruption {
        file: file.to_path_buf(),
        offset: offset as u64,
        index: Some(expected),
        reason,
    };
    let what_stopped = match &scan.stop {
        Stop::Damaged(reason) => reason.clone(),
        Stop::Clean | Stop::Fence => "end of records".to_string(),
    };
    let not_last = next.map_or(String::new(), |(next, _)| {
        format!(" (not the last segment: the next one starts at entry {next})")
    });
    let valid_follows = |index: u64, at: usize, why: &str| {
        corruption(
            path,
            scan.end,
            format!(
                "{what_stopped}, yet a valid record of entry {index} follows at offset \
                 {at}{not_last}{why}"
            ),
        )
    };
    match *case {
        Case::FollowedBeforeNext { at, index } => Some(valid_follows(index, at, "")),
        Case::DamagedBeforeNext => Some(corruption(
            path,
            scan.end,
            format!("{what_stopped}{not_last}"),
        )),
        Case::Discontiguous => next.map(|(next, next_path)| {
            corruption(
                next_path,
                0,
                format!(
                    "segment starts at entry {next} but the previous segment ends at entry {}",
                    expected - 1
                ),
            )
        }),
        Case::LaterWriteFollows {
            at,
            index,
            start_at,
            start_index,
        } => Some(valid_follows(
            index,
            at,
            &format!(
                ", and entry {start_index} at offset {start_at} starts a later write, so \
                 the damaged bytes had been synced"
            ),
        )),
        Case::UnmarkedFollows { at, index, version } => Some(valid_follows(
            index,
            at,
            &format!(" (a version {version} segment, which does not mark where each write starts)"),
        )),
        Case::Continues
        | Case::CleanEnd
        | Case::TornTail
        | Case::TornWrite { .. }
        | Case::PendingTruncation { .. } => None,
    }
}

/// How far the last segment is zeroed from the end of its records (`scan.end`: not at
/// all): past a torn tail, over the rest of a torn write, or over every record past a
/// pending truncation mark, with room for an end marker.
fn zero_to(case: &Case, scan: &Scan, map_len: usize) -> usize {
    let past_marker = scan.end + END_MARKER_BYTES;
    let end = match *case {
        Case::CleanEnd => scan.end,
        Case::PendingTruncation { end } => end.max(past_marker),
        // The records after the damage verify: left in place, a later recovery could
        // take them for entries.
        Case::TornWrite { end } => end.max(past_marker),
        Case::TornTail => past_marker,
        _ => unreachable!("{case:?} is not a case of a last segment that opens"),
    };
    end.min(map_len)
}

/// Logs the torn tail or torn write recovery cuts off the last segment `path`.
fn warn_torn_tail(path: &Path, case: &Case, scan: &Scan, expected: u64) {
    let what_stopped = match &scan.stop {
        Stop::Damaged(reason) => reason.clone(),
        Stop::Clean | Stop::Fence => "end of records".to_string(),
    };
    let torn_to = match *case {
        Case::TornWrite { end } => {
            format!(" and the rest of the same unsynced write, up to offset {end}, is zeroed")
        }
        _ => String::new(),
    };
    tracing::warn!(
        file = %path.display(),
        offset = scan.end,
        entry = expected,
        "WAL: torn tail ({what_stopped}) at offset {} of {}: cutting the log \
         there{torn_to}; entries from {expected} on were never acknowledged",
        scan.end,
        path.display()
    );
}

/// The segment files in `dir`, sorted, as (first index, path); removes the leftovers of
/// a segment preparation or metadata update that never completed.
fn list_segments(dir: &Path, fs: &dyn WalFs) -> Result<Vec<(u64, PathBuf)>> {
    let mut found: Vec<(u64, PathBuf)> = Vec::new();
    let listing = std::fs::read_dir(dir).map_err(|e| Error::io("list WAL directory", dir, e))?;
    for dirent in listing {
        let dirent = dirent.map_err(|e| Error::io("list WAL directory", dir, e))?;
        let name = dirent.file_name();
        let Some(name) = name.to_str() else { continue };
        let path = dir.join(name);
        if name.ends_with(PREPARED_SUFFIX) || name == META_TMP_FILE {
            // Leftovers of a preparation or metadata update that never completed.
            fs.remove_file(&path)
                .map_err(|e| Error::io("remove leftover WAL temp file", &path, e))?;
        } else if let Some(first) = parse_segment_file_name(name) {
            found.push((first, path));
        }
    }
    found.sort();
    Ok(found)
}

/// The metadata file as found (`None` if there is none), and the metadata in effect.
fn read_meta(dir: &Path, found: &[(u64, PathBuf)]) -> Result<(Option<Meta>, Meta)> {
    let meta_path = dir.join(META_FILE);
    let meta_found = match std::fs::read(&meta_path) {
        Ok(bytes) => Some(
            record::decode_meta(&bytes).map_err(|reason| Error::Corruption {
                file: meta_path.clone(),
                offset: 0,
                index: None,
                reason,
            })?,
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(Error::io("read WAL metadata", &meta_path, e)),
    };
    let meta = meta_found.unwrap_or(Meta {
        first_index: found.first().map_or(1, |s| s.0),
        truncate_from: 0,
    });
    if meta.first_index == 0 {
        return Err(Error::Corruption {
            file: meta_path,
            offset: 0,
            index: None,
            reason: "first index is 0 (indexes start at 1)".into(),
        });
    }
    Ok((meta_found, meta))
}

/// Splits the segments `found` into those to delete and those to keep (first index,
/// path). Segments wholly below the logical first index were compacted; segments at or
/// past a pending truncation mark are being truncated. Neither is scanned: a crash in
/// the middle of deleting them must not turn into a corruption error.
fn split_doomed(found: Vec<(u64, PathBuf)>, meta: &Meta) -> (Vec<PathBuf>, Vec<(u64, PathBuf)>) {
    let fence = meta.truncate_from;
    let mut doomed: Vec<PathBuf> = Vec::new();
    let mut keep: Vec<(u64, PathBuf)> = Vec::new();
    for (i, (first, path)) in found.iter().enumerate() {
        let next_first = found.get(i + 1).map(|s| s.0);
        if next_first.is_some_and(|n| n <= meta.first_index) || (fence != 0 && *first >= fence) {
            doomed.push(path.clone());
        } else {
            keep.push((*first, path.clone()));
        }
    }
    (doomed, keep)
}

/// Deletes the `doomed` segments and makes the directory and `wal.meta` durable as the
/// log now stands (first entry `first_index`, no truncation pending).
fn settle_directory(
    fs: &dyn WalFs,
    dir: &Path,
    doomed: &[PathBuf],
    meta_found: Option<Meta>,
    first_index: u64,
) -> Result<()> {
    for path in doomed {
        match fs.remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("remove compacted or truncated segment", path, e)),
        }
    }
    // Always: a crash between a segment's rename into place and the directory fsync
    // leaves a name this log now relies on that a power cut could still undo.
    fs.sync_dir(dir)
        .map_err(|e| Error::io("fsync WAL directory", dir, e))?;
    let settled = Meta {
        first_index,
        truncate_from: 0,
    };
    if meta_found != Some(settled) {
        write_meta(fs, dir, &settled)?;
    }
    Ok(())
}

/// Scans `dir` and rebuilds the log. See the module documentation for the rules.
pub(crate) fn recover(dir: &Path, fs: &dyn WalFs) -> Result<Recovered> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io("create WAL directory", dir, e))?;
    let mut report = RecoveryReport::default();
    let found = list_segments(dir, fs)?;
    let (meta_found, meta) = read_meta(dir, &found)?;
    let fence = meta.truncate_from;
    report.truncation_completed = fence != 0;

    let (mut doomed, keep) = split_doomed(found, &meta);
    let mut loaded = load_segments(fs, &keep, fence);
    let mut views: Vec<SegmentView> = Vec::new();
    let mut last_file: Option<(File, u64, bool)> = None;
    let mut expected_next: Option<u64> = None;
    for (i, (first, path)) in keep.iter().enumerate() {
        let next = keep.get(i + 1);
        let Some(result) = loaded[i].take() else {
            unreachable!("segment {} was not loaded", path.display());
        };
        let (file, map, header, scan) = result?;
        report.bytes_scanned += scan.end as u64;
        let expected = *first + scan.offsets.len() as u64;
        let case = classify(&map, &header, &scan, *first, next.map(|s| s.0), fence);
        if let Some(error) = refusal(&case, &scan, path, expected, next) {
            return Err(error);
        }
        if next.is_none() {
            if matches!(case, Case::TornTail | Case::TornWrite { .. }) {
                warn_torn_tail(path, &case, &scan, expected);
                report.tail_truncated_at = Some((path.clone(), scan.end as u64));
            }
            let zero_to = zero_to(&case, &scan, map.len());
            if zero_to > scan.end {
                write_zeros(fs, &file, path, scan.end as u64, zero_to as u64)?;
            }
            // Synced even when nothing was cut: a process crash between a write and its
            // fdatasync leaves the records readable in the page cache, and they are the
            // log from here on (the node may acknowledge them to its leader). Left
            // unsynced, a power cut could still take them, and if this process rolls to
            // a new segment before writing here, nothing else would ever sync them.
            fs.sync_data(&file)
                .map_err(|e| Error::io("fdatasync the last WAL segment on open", path, e))?;
            let marks_runs = header.version >= record::FIRST_VERSION_MARKING_RUNS;
            last_file = Some((file, scan.end as u64, marks_runs));
        }
        expected_next = Some(expected);
        views.push(SegmentView {
            first_index: *first,
            path: path.clone(),
            salt: header.salt,
            map,
            offsets: scan.offsets,
        });
    }

    let first_index = meta.first_index;
    let mut last_index = expected_next.map_or(first_index - 1, |e| e - 1);
    if last_index < first_index - 1 {
        // Compacted past the end of the log (a follower installed a snapshot) and the
        // crash came before the old segments were deleted.
        doomed.extend(views.drain(..).map(|v| v.path));
        last_file = None;
        last_index = first_index - 1;
    } else if let Some(v) = views.first() {
        if v.first_index > first_index {
            return Err(Error::Corruption {
                file: v.path.clone(),
                offset: 0,
                index: Some(first_index),
                reason: format!(
                    "the log starts at entry {first_index} but the first segment starts at {}",
                    v.first_index
                ),
            });
        }
    }

    report.segments_removed = doomed.len();
    settle_directory(fs, dir, &doomed, meta_found, first_index)?;

    let active = match (last_file, views.last()) {
        (Some((file, end, marks_runs)), Some(v)) => Some(ActiveSegment {
            first_index: v.first_index,
            file,
            path: v.path.clone(),
            salt: v.salt,
            write_offset: end,
            capacity: v.map.len() as u64,
            marks_runs,
        }),
        _ => None,
    };
    report.entries_recovered = last_index + 1 - first_index;
    report.segments = views.len();
    Ok(Recovered {
        first_index,
        last_index,
        segments: views,
        active,
        report,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The record of a term-1 entry at `index` carrying `payload`, before salting.
    pub(super) fn unsalted_record(index: u64, payload: Vec<u8>) -> Vec<u8> {
        let entry = crate::Entry {
            index,
            term: 1,
            kind: crate::EntryKind::Normal,
            payload: bytes::Bytes::from(payload),
        };
        let mut rec = Vec::new();
        record::encode_record(&entry, &mut rec);
        rec
    }

    /// A segment map of `size` bytes: header, then records of `indexes` (payload `len`
    /// bytes each) salted with `salt`, from offset `at`; zeros elsewhere.
    fn map_with_records(
        size: usize,
        at: usize,
        indexes: std::ops::Range<u64>,
        len: usize,
        salt: u32,
    ) -> Vec<u8> {
        let mut map = vec![0u8; size];
        let header = record::encode_segment_header(record::SegmentHeader {
            version: record::SEGMENT_VERSION,
            first_index: 1,
            salt,
        });
        map[..SEGMENT_HEADER_BYTES].copy_from_slice(&header);
        let mut off = at;
        for index in indexes {
            let mut rec = unsalted_record(index, vec![7u8; len]);
            record::salt_record(&mut rec, salt);
            map[off..off + rec.len()].copy_from_slice(&rec);
            off += rec.len();
        }
        map
    }

    /// A pending truncation zeroes every record at or past its mark, however far into
    /// the segment: records 14..=24 of 40 bytes each filling a 512-byte segment, the last
    /// ones further in than the bytes left would allow if the search kept expecting
    /// entry 14 (found by the model test).
    #[test]
    fn valid_records_end_reaches_the_last_record_of_a_long_chain() {
        let map = map_with_records(512, 72, 14..25, 15, 0xABCD);
        let end_of_24 = 72 + 11 * 40;
        assert_eq!(
            valid_records_end(&map, 72, map.len(), 14, 0xABCD),
            end_of_24
        );
        // A zeroed prefix (an interrupted earlier zeroing) does not stop the search.
        let mut partly = map.clone();
        partly[72..72 + 3 * 40].fill(0);
        assert_eq!(
            valid_records_end(&partly, 72, map.len(), 14, 0xABCD),
            end_of_24
        );
        // Under another salt nothing verifies.
        assert_eq!(valid_records_end(&map, 72, map.len(), 14, 0xABCE), 72);
    }

    #[test]
    fn nonzero_end_finds_the_last_nonzero_byte() {
        let mut buf = vec![0u8; 10_000];
        assert_eq!(nonzero_end(&buf), 0);
        buf[0] = 1;
        assert_eq!(nonzero_end(&buf), 1);
        buf[5000] = 9;
        assert_eq!(nonzero_end(&buf), 5001);
        buf[9999] = 9;
        assert_eq!(nonzero_end(&buf), 10_000);
        assert!(!all_zero(&buf));
        assert!(all_zero(&buf[1..5000]));
    }
}

/// [`classify`] against the case table in the module documentation, one row at a time.
#[cfg(test)]
mod case_table {
    use super::tests::unsalted_record;
    use super::*;

    const SALT: u32 = 0x5EED;
    /// Records of 15 payload bytes: 40 bytes each.
    const PAYLOAD: usize = 15;
    const RECORD: usize = RECORD_HEADER_BYTES + PAYLOAD;

    /// Offset of the record of entry `index` in a segment starting at entry 1.
    fn at(index: u64) -> usize {
        SEGMENT_HEADER_BYTES + (index as usize - 1) * RECORD
    }

    /// A 1 KiB segment of `version` holding entries `indexes` (from entry 1), the ones in
    /// `run_starts` flagged as the first record of a write.
    fn segment(
        version: u32,
        indexes: std::ops::RangeInclusive<u64>,
        run_starts: &[u64],
    ) -> Vec<u8> {
        let mut map = vec![0u8; 1024];
        let header = record::encode_segment_header(record::SegmentHeader {
            version,
            first_index: 1,
            salt: SALT,
        });
        map[..SEGMENT_HEADER_BYTES].copy_from_slice(&header);
        for index in indexes {
            let mut rec = unsalted_record(index, vec![index as u8; PAYLOAD]);
            if run_starts.contains(&index) {
                record::mark_run_start(&mut rec, PAYLOAD);
            }
            record::salt_record(&mut rec, SALT);
            map[at(index)..at(index) + RECORD].copy_from_slice(&rec);
        }
        map
    }

    /// Flips a payload byte of entry `index`'s record.
    fn damage(mut map: Vec<u8>, index: u64) -> Vec<u8> {
        map[at(index) + RECORD_HEADER_BYTES + 3] ^= 0x20;
        map
    }

    fn case_of(map: &[u8], next_first: Option<u64>, fence: u64) -> Case {
        let header = record::decode_segment_header(map).expect("segment header");
        let scan = scan_segment(map, 1, fence, header.salt);
        classify(map, &header, &scan, 1, next_first, fence)
    }

    #[test]
    fn not_last_ending_at_the_next_segment_is_fine() {
        let map = segment(3, 1..=5, &[1]);
        assert_eq!(case_of(&map, Some(6), 0), Case::Continues);
    }

    #[test]
    fn not_last_ending_anywhere_else_is_corruption() {
        let map = segment(3, 1..=4, &[1]);
        assert_eq!(
            case_of(&map, Some(6), 0),
            Case::Discontiguous,
            "marker too early"
        );
        let map = segment(3, 1..=5, &[1]);
        assert_eq!(
            case_of(&map, Some(4), 0),
            Case::Discontiguous,
            "runs past the next"
        );
        let map = damage(segment(3, 1..=5, &[1]), 5);
        assert_eq!(case_of(&map, Some(6), 0), Case::DamagedBeforeNext);
        let map = damage(segment(3, 1..=5, &[1]), 3);
        assert_eq!(
            case_of(&map, Some(6), 0),
            Case::FollowedBeforeNext {
                at: at(4),
                index: 4
            }
        );
    }

    #[test]
    fn last_ending_at_a_marker_is_the_clean_end() {
        let map = segment(3, 1..=5, &[1, 4]);
        assert_eq!(case_of(&map, None, 0), Case::CleanEnd);
    }

    #[test]
    fn last_ending_at_damage_with_nothing_valid_after_is_a_torn_tail() {
        let map = damage(segment(3, 1..=5, &[1, 4]), 5);
        assert_eq!(case_of(&map, None, 0), Case::TornTail);
    }

    #[test]
    fn last_with_a_later_write_after_the_damage_is_corruption() {
        let map = damage(segment(3, 1..=5, &[1, 4]), 2);
        assert_eq!(
            case_of(&map, None, 0),
            Case::LaterWriteFollows {
                at: at(3),
                index: 3,
                start_at: at(4),
                start_index: 4
            }
        );
    }

    #[test]
    fn last_with_only_the_last_write_after_the_damage_is_a_torn_write() {
        // Entry 3 starts the last write and is damaged; 4 and 5 belong to the same write.
        let map = damage(segment(3, 1..=5, &[1, 3]), 3);
        assert_eq!(case_of(&map, None, 0), Case::TornWrite { end: at(6) });
    }

    #[test]
    fn last_of_a_version_that_does_not_mark_writes_with_a_valid_record_after_is_corruption() {
        let map = damage(segment(2, 1..=5, &[]), 3);
        assert_eq!(
            case_of(&map, None, 0),
            Case::UnmarkedFollows {
                at: at(4),
                index: 4,
                version: 2
            }
        );
    }

    #[test]
    fn a_pending_truncation_zeroes_every_record_past_its_mark() {
        let map = segment(3, 1..=5, &[1]);
        assert_eq!(
            case_of(&map, None, 4),
            Case::PendingTruncation { end: at(6) }
        );
    }
}
