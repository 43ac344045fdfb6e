//! Unit tests of the WAL: API behaviour, segment rolling, group commit, crash points
//! (via [`CrashFs`]) and damage to the files (torn tails, bit flips).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use super::*;
use crate::EntryKind;

/// A payload that depends on index and term, so a wrong or stale record shows.
fn payload(index: u64, term: u64, len: usize) -> Bytes {
    let seed = index.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ term;
    (0..len)
        .map(|i| (seed.rotate_left((i % 64) as u32) as u8) ^ (i as u8))
        .collect::<Vec<u8>>()
        .into()
}

fn entry(index: u64, term: u64, len: usize) -> Entry {
    Entry {
        index,
        term,
        kind: if index % 7 == 0 {
            EntryKind::Noop
        } else {
            EntryKind::Normal
        },
        payload: payload(index, term, len),
    }
}

fn entries(lo: u64, hi: u64, term: u64, len: usize) -> Vec<Entry> {
    (lo..hi).map(|i| entry(i, term, len)).collect()
}

fn small(fs: Arc<dyn WalFs>, background: bool) -> WalOptions {
    WalOptions {
        segment_size_bytes_max: 1024,
        group_commit_bytes_max: 1 << 20,
        prepare_segments_in_background: background,
        fs,
    }
}

fn open_small(dir: &Path) -> Wal {
    Wal::open(dir, small(Arc::new(StdFs), true)).expect("open WAL")
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("list dir")
        .map(|d| d.expect("dirent").path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    v.sort();
    v
}

fn assert_log(wal: &Wal, expected: &[Entry], first_index: u64) {
    assert_eq!(wal.first_index(), first_index, "first_index");
    assert_eq!(
        wal.last_index(),
        first_index + expected.len() as u64 - 1,
        "last_index"
    );
    for e in expected {
        assert_eq!(&wal.entry(e.index).expect("entry"), e, "entry {}", e.index);
        assert_eq!(wal.term(e.index).expect("term"), e.term, "term {}", e.index);
    }
    if !expected.is_empty() {
        let all = wal
            .entries(first_index, first_index + expected.len() as u64, u64::MAX)
            .expect("entries");
        assert_eq!(all, expected);
    }
}

#[test]
fn append_read_roll_and_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = open_small(dir.path());
    assert_eq!((wal.first_index(), wal.last_index()), (1, 0));
    let mut log = Vec::new();
    let mut next = 1;
    for batch in [1usize, 3, 10, 1, 25, 2] {
        let b = entries(next, next + batch as u64, 3, 40);
        wal.append(&b).expect("append");
        next += batch as u64;
        log.extend(b);
    }
    assert_log(&wal, &log, 1);
    // 42 entries of 65 bytes do not fit a 1 KiB segment: it rolled several times.
    assert!(segment_files(dir.path()).len() >= 3);
    wal.close().expect("close");

    let wal = open_small(dir.path());
    assert_log(&wal, &log, 1);
    let report = wal.recovery_report();
    assert_eq!(report.entries_recovered, log.len() as u64);
    assert_eq!(report.tail_truncated_at, None);
    // Appending after reopen continues in the recovered last segment.
    let more = entries(next, next + 5, 4, 10);
    wal.append(&more).expect("append after reopen");
    log.extend(more);
    drop(wal);
    let wal = open_small(dir.path());
    assert_log(&wal, &log, 1);
}

#[test]
fn range_errors_and_contiguity() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = open_small(dir.path());
    assert!(matches!(
        wal.append(&[entry(2, 1, 1)]),
        Err(Error::NonContiguous {
            got: 2,
            last_index: 0
        })
    ));
    let gap = vec![entry(1, 1, 1), entry(3, 1, 1)];
    assert!(matches!(
        wal.append(&gap),
        Err(Error::NonContiguous { got: 3, .. })
    ));
    wal.append(&entries(1, 11, 1, 100)).expect("append");
    assert!(matches!(
        wal.entry(11),
        Err(Error::NotInLog(NotInLog::Unavailable {
            index: 11,
            last_index: 10
        }))
    ));
    assert!(matches!(
        wal.entry(0),
        Err(Error::NotInLog(NotInLog::Compacted { .. }))
    ));
    assert!(matches!(
        wal.entries(5, 12, u64::MAX),
        Err(Error::NotInLog(NotInLog::Unavailable { index: 11, .. }))
    ));
    // max_bytes: each entry is 100 + 24 bytes; at least one always comes back.
    assert_eq!(wal.entries(2, 10, 0).expect("entries").len(), 1);
    assert_eq!(wal.entries(2, 10, 124 * 3).expect("entries").len(), 3);
    assert_eq!(wal.entries(2, 10, 124 * 3 + 123).expect("entries").len(), 3);
    assert_eq!(wal.entries(4, 4, 0).expect("entries"), Vec::<Entry>::new());
    wal.compact_prefix(4).expect("compact");
    assert!(matches!(
        wal.term(4),
        Err(Error::NotInLog(NotInLog::Compacted {
            index: 4,
            first_index: 5
        }))
    ));
    assert!(matches!(
        wal.entries(4, 6, u64::MAX),
        Err(Error::NotInLog(NotInLog::Compacted { .. }))
    ));
    assert!(matches!(
        wal.truncate_suffix(3),
        Err(Error::NotInLog(NotInLog::Compacted { .. }))
    ));
    // An oversized entry gets a segment of its own.
    let big = entry(11, 2, 5000);
    wal.append(std::slice::from_ref(&big)).expect("append big");
    wal.append(&entries(12, 14, 2, 10))
        .expect("append after big");
    drop(wal);
    let wal = open_small(dir.path());
    assert_eq!(wal.entry(11).expect("big"), big);
    assert_eq!(wal.last_index(), 13);
}

#[test]
fn truncate_suffix_replaces_the_tail_across_segments() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = open_small(dir.path());
    let mut log = entries(1, 61, 1, 30);
    wal.append(&log).expect("append");
    let files_before = segment_files(dir.path()).len();
    // Cut in the middle of an earlier segment: later segments go, the rest is zeroed.
    wal.truncate_suffix(20).expect("truncate");
    assert!(segment_files(dir.path()).len() < files_before);
    log.truncate(19);
    assert_log(&wal, &log, 1);
    let new_tail = entries(20, 50, 2, 30);
    wal.append(&new_tail).expect("append new tail");
    log.extend(new_tail);
    assert_log(&wal, &log, 1);
    drop(wal);
    let wal = open_small(dir.path());
    assert_log(&wal, &log, 1);
    // No-op and truncate everything.
    wal.truncate_suffix(1000).expect("no-op");
    wal.truncate_suffix(1).expect("truncate all");
    assert_eq!((wal.first_index(), wal.last_index()), (1, 0));
    wal.append(&entries(1, 3, 5, 8))
        .expect("append after truncating all");
    drop(wal);
    let wal = open_small(dir.path());
    assert_log(&wal, &entries(1, 3, 5, 8), 1);
}

#[test]
fn compact_prefix_persists_the_logical_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = open_small(dir.path());
    let log = entries(1, 101, 1, 30);
    wal.append(&log).expect("append");
    let files_before = segment_files(dir.path()).len();
    wal.compact_prefix(50).expect("compact");
    assert!(segment_files(dir.path()).len() < files_before);
    assert_log(&wal, &log[50..], 51);
    drop(wal);
    let wal = open_small(dir.path());
    assert_log(&wal, &log[50..], 51);
    wal.compact_prefix(20).expect("compacting less is a no-op");
    assert_eq!(wal.first_index(), 51);
}

#[test]
fn compact_past_the_end_empties_the_log_and_continues_after_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = open_small(dir.path());
    wal.append(&entries(1, 31, 1, 30)).expect("append");
    wal.compact_prefix(5000).expect("compact past the end");
    assert_eq!((wal.first_index(), wal.last_index()), (5001, 5000));
    assert!(segment_files(dir.path()).is_empty());
    assert!(matches!(
        wal.append(&[entry(31, 1, 1)]),
        Err(Error::NonContiguous {
            got: 31,
            last_index: 5000
        })
    ));
    drop(wal);
    let wal = open_small(dir.path());
    assert_eq!((wal.first_index(), wal.last_index()), (5001, 5000));
    let tail = entries(5001, 5040, 3, 30);
    wal.append(&tail).expect("append 5001");
    drop(wal);
    let wal = open_small(dir.path());
    assert_log(&wal, &tail, 5001);
}

#[test]
fn concurrent_appenders_share_syncs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fs = Arc::new(CrashFs::new(u64::MAX, 0));
    let wal = Arc::new(
        Wal::open(
            dir.path(),
            WalOptions {
                segment_size_bytes_max: 1 << 20,
                prepare_segments_in_background: false,
                fs: fs.clone(),
                ..WalOptions::default()
            },
        )
        .expect("open"),
    );
    let ops_before = fs.ops();
    const THREADS: usize = 8;
    const APPENDS: usize = 50;
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let wal = Arc::clone(&wal);
            std::thread::spawn(move || {
                let mut mine = Vec::new();
                for _ in 0..APPENDS {
                    let range = wal
                        .append_with(|next| vec![entry(next, t as u64 + 1, 20)])
                        .expect("append");
                    mine.push(*range.start());
                }
                mine
            })
        })
        .collect();
    let mut all: Vec<u64> = handles
        .into_iter()
        .flat_map(|h| h.join().expect("thread"))
        .collect();
    all.sort();
    let expected: Vec<u64> = (1..=(THREADS * APPENDS) as u64).collect();
    assert_eq!(all, expected);
    // One write and one fdatasync per group: fewer than per append means grouping.
    let ops = fs.ops() - ops_before;
    assert!(
        ops < (2 * THREADS * APPENDS) as u64,
        "{ops} filesystem operations for {} appends: no group commit happened",
        THREADS * APPENDS
    );
    for i in 1..=(THREADS * APPENDS) as u64 {
        let e = wal.entry(i).expect("entry");
        assert_eq!(e.payload, payload(i, e.term, 20));
    }
}

/// One step of the crash-point scenario.
#[derive(Clone, Copy, Debug)]
enum Op {
    Append { count: u64, term: u64 },
    Truncate(u64),
    Compact(u64),
}

/// The durable log a model expects: (first index, entries).
type Model = (u64, Vec<Entry>);

fn apply_model(model: &Model, op: Op) -> Model {
    let (first, log) = model;
    let mut log = log.clone();
    let mut first = *first;
    match op {
        Op::Append { count, term } => {
            let next = first + log.len() as u64;
            log.extend(entries(next, next + count, term, 37));
        }
        Op::Truncate(from) => log.truncate((from - first) as usize),
        Op::Compact(upto) => {
            let last = first + log.len() as u64 - 1;
            if upto >= last {
                log.clear();
            } else if upto >= first {
                log.drain(..(upto + 1 - first) as usize);
            }
            first = first.max(upto + 1);
        }
    }
    (first, log)
}

fn run_op(wal: &Wal, model: &Model, op: Op) -> Result<()> {
    match op {
        Op::Append { count, term } => {
            let next = model.0 + model.1.len() as u64;
            wal.append(&entries(next, next + count, term, 37))
        }
        Op::Truncate(from) => wal.truncate_suffix(from),
        Op::Compact(upto) => wal.compact_prefix(upto),
    }
}

fn read_all(wal: &Wal) -> Model {
    let (first, last) = (wal.first_index(), wal.last_index());
    let log = if last >= first {
        wal.entries(first, last + 1, u64::MAX).expect("read all")
    } else {
        Vec::new()
    };
    (first, log)
}

/// Crashes the scenario at every filesystem operation (a torn write where the crash hits
/// a write) and checks that recovery yields the state before or after the operation
/// that was running, never anything else.
#[test]
fn crash_at_every_filesystem_operation_recovers_old_or_new_state() {
    let scenario = [
        Op::Append { count: 5, term: 1 },
        Op::Append { count: 20, term: 1 },
        Op::Append { count: 1, term: 1 },
        Op::Truncate(12),
        Op::Append { count: 9, term: 2 },
        Op::Compact(15),
        Op::Append { count: 12, term: 2 },
        Op::Truncate(30),
        Op::Compact(60),
        Op::Append { count: 3, term: 3 },
    ];
    let mut crash_at = 0u64;
    loop {
        let dir = tempfile::tempdir().expect("tempdir");
        // Vary how much of the write at the crash point lands.
        let torn = (crash_at as usize * 13) % 90;
        let fs_torn = Arc::new(CrashFs::new(u64::MAX, torn));
        let wal = Wal::open(dir.path(), small(fs_torn.clone(), false)).expect("open");
        fs_torn.set_crash_at(fs_torn.ops() + crash_at);
        let mut model: Model = (1, Vec::new());
        let mut crashed = None;
        for op in scenario {
            let next = apply_model(&model, op);
            match run_op(&wal, &model, op) {
                Ok(()) => model = next,
                Err(_) => {
                    crashed = Some((op, next));
                    break;
                }
            }
        }
        drop(wal);
        let Some((op, new)) = crashed else {
            // The whole scenario ran without reaching the crash point: done.
            assert!(crash_at > 20, "scenario used only {crash_at} operations");
            break;
        };
        let wal = Wal::open(dir.path(), small(Arc::new(StdFs), false))
            .unwrap_or_else(|e| panic!("reopen after crash at op {crash_at} during {op:?}: {e}"));
        let got = read_all(&wal);
        match op {
            Op::Append { .. } => {
                // The interrupted batch may be there in part (a prefix): never acknowledged.
                assert_eq!(got.0, model.0, "first index after crash at {crash_at}");
                assert!(
                    got.1.len() >= model.1.len() && got.1.len() <= new.1.len(),
                    "crash at {crash_at} during {op:?}: {} entries, expected {}..={}",
                    got.1.len(),
                    model.1.len(),
                    new.1.len()
                );
                assert_eq!(got.1[..], new.1[..got.1.len()], "crash at {crash_at}");
            }
            _ => assert!(
                got == model || got == new,
                "crash at {crash_at} during {op:?}: recovered ({}, {} entries), \
                 old ({}, {}), new ({}, {})",
                got.0,
                got.1.len(),
                model.0,
                model.1.len(),
                new.0,
                new.1.len()
            ),
        }
        // The recovered log keeps working.
        let next = got.0 + got.1.len() as u64;
        wal.append(&entries(next, next + 3, 9, 5))
            .expect("append after recovery");
        crash_at += 1;
    }
}

/// Where a record is on disk: (file, offset, length, index).
type Location = (PathBuf, u64, u64, u64);

/// Where each record of the log is on disk.
fn record_locations(wal: &Wal) -> Vec<Location> {
    let view = wal.read_view();
    let mut out = Vec::new();
    for seg in &view.segments {
        for (i, &off) in seg.offsets.iter().enumerate() {
            let h = record::peek_header(&seg.map[off as usize..]).expect("header");
            out.push((
                seg.path.clone(),
                u64::from(off),
                h.record_len() as u64,
                seg.first_index + i as u64,
            ));
        }
    }
    out
}

fn build_log(dir: &Path, count: u64) -> (Vec<Entry>, Vec<Location>) {
    let wal = Wal::open(dir, small(Arc::new(StdFs), false)).expect("open");
    let log: Vec<Entry> = (1..=count)
        .map(|i| entry(i, 1, (i % 23) as usize))
        .collect();
    for chunk in log.chunks(4) {
        wal.append(chunk).expect("append");
    }
    let locations = record_locations(&wal);
    drop(wal);
    (log, locations)
}

fn copy_dir(from: &Path, to: &Path) {
    for d in std::fs::read_dir(from).expect("list") {
        let p = d.expect("dirent").path();
        std::fs::copy(&p, to.join(p.file_name().expect("name"))).expect("copy");
    }
}

/// Cuts the last segment at every byte offset from the start of its last records into
/// the zeros after them, both by truncating the file and by zeroing from the cut:
/// recovery keeps exactly the records that end before the cut.
#[test]
fn torn_tail_at_every_offset_keeps_the_valid_prefix() {
    let pristine = tempfile::tempdir().expect("tempdir");
    let (log, locations) = build_log(pristine.path(), 40);
    let last_file = locations.last().expect("records").0.clone();
    let in_last: Vec<_> = locations.iter().filter(|l| l.0 == last_file).collect();
    let cut_from = in_last[in_last.len().saturating_sub(3)].1;
    let data_end = in_last.last().map(|l| l.1 + l.2).expect("last");
    for cut in cut_from..data_end + 40 {
        for zero_instead_of_truncate in [false, true] {
            let dir = tempfile::tempdir().expect("tempdir");
            copy_dir(pristine.path(), dir.path());
            let path = dir.path().join(last_file.file_name().expect("name"));
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .expect("open segment");
            if zero_instead_of_truncate {
                let len = file.metadata().expect("meta").len();
                use std::os::unix::fs::FileExt;
                file.write_all_at(&vec![0u8; (len - cut) as usize], cut)
                    .expect("zero");
            } else {
                file.set_len(cut).expect("truncate");
            }
            let wal = Wal::open(dir.path(), small(Arc::new(StdFs), false))
                .unwrap_or_else(|e| panic!("open after cut at {cut}: {e}"));
            let kept = locations
                .iter()
                .filter(|l| l.0 != last_file || l.1 + l.2 <= cut)
                .count();
            assert_eq!(
                wal.last_index(),
                kept as u64,
                "cut at {cut} (zeroed: {zero_instead_of_truncate})"
            );
            assert_log(&wal, &log[..kept], 1);
            let report = wal.recovery_report();
            let torn = cut < data_end && !in_last.iter().any(|l| l.1 == cut);
            let expected_tail = torn.then(|| locations[kept].1);
            assert_eq!(
                report.tail_truncated_at.as_ref().map(|t| t.1),
                expected_tail,
                "cut at {cut} (zeroed: {zero_instead_of_truncate})"
            );
            // The log continues after the repaired tail, and that survives a reopen.
            wal.append(&[entry(kept as u64 + 1, 2, 9)])
                .expect("append after torn tail");
            drop(wal);
            let wal = Wal::open(dir.path(), small(Arc::new(StdFs), false)).expect("reopen");
            assert_eq!(wal.last_index(), kept as u64 + 1);
            assert_eq!(
                wal.entry(kept as u64 + 1).expect("entry"),
                entry(kept as u64 + 1, 2, 9)
            );
        }
    }
}

/// Flips random bits anywhere in the segments: recovery must either keep exactly the
/// records before the damage (damage in the last write of the last segment, which
/// looks like a torn write of it, or past the records of any segment) or refuse with a
/// corruption error naming the place.
#[test]
fn bit_flips_are_torn_tails_or_corruption() {
    let pristine = tempfile::tempdir().expect("tempdir");
    let (log, locations) = build_log(pristine.path(), 60);
    let files = segment_files(pristine.path());
    let last_file = files.last().expect("segments").clone();
    // `build_log` appends 4 entries at a time: the last write is 57..=60, or the part
    // of it in the last segment.
    let last_write_first = locations
        .iter()
        .filter(|l| l.0 == last_file && l.3 >= 57)
        .map(|l| l.3)
        .min()
        .expect("entries of the last write in the last segment");
    let mut rng: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let iterations = if std::env::var_os("RAFTLOG_SOAK").is_some() {
        5000
    } else {
        400
    };
    let (mut torn, mut corrupt) = (0, 0);
    for _ in 0..iterations {
        let file_name = files[(next() % files.len() as u64) as usize]
            .file_name()
            .expect("name")
            .to_owned();
        let dir = tempfile::tempdir().expect("tempdir");
        copy_dir(pristine.path(), dir.path());
        let path = dir.path().join(&file_name);
        let mut bytes = std::fs::read(&path).expect("read");
        // Mostly inside the records, sometimes in the header or the zeros after.
        let data_end = locations
            .iter()
            .filter(|l| l.0.file_name() == Some(&file_name))
            .map(|l| l.1 + l.2)
            .max()
            .unwrap_or(32);
        let at = (next() % (data_end + 16).min(bytes.len() as u64)) as usize;
        let bit = next() % 8;
        bytes[at] ^= 1 << bit;
        std::fs::write(&path, &bytes).expect("write");
        let is_last = path.file_name() == last_file.file_name();
        let hit = locations.iter().find(|l| {
            l.0.file_name() == Some(&file_name) && (at as u64) >= l.1 && (at as u64) < l.1 + l.2
        });
        match Wal::open(dir.path(), small(Arc::new(StdFs), false)) {
            Ok(wal) => {
                // Past the records of a segment, a flip is harmless: the end marker there
                // (or in the last segment, the torn tail it becomes) ends the segment.
                let kept = match hit {
                    Some(l) => {
                        assert!(
                            is_last && l.3 >= last_write_first,
                            "flip at {at} inside entry {} of {file_name:?} (not in the last \
                             write) was accepted",
                            l.3
                        );
                        l.3 - 1
                    }
                    None => {
                        assert!(at as u64 >= data_end, "flip at {at} in the header accepted");
                        log.len() as u64
                    }
                };
                assert_log(&wal, &log[..kept as usize], 1);
                torn += 1;
            }
            Err(Error::Corruption { file, offset, .. }) => {
                assert!(
                    !is_last || hit.is_some_and(|l| l.3 < last_write_first),
                    "flip at {at} of the last segment refused at {offset}"
                );
                assert_eq!(file.file_name(), Some(file_name.as_os_str()));
                if let Some(l) = hit {
                    assert_eq!(offset, l.1, "corruption reported at the damaged record");
                }
                corrupt += 1;
            }
            Err(Error::BadHeader { file, .. }) => {
                assert!(
                    at < record::SEGMENT_HEADER_BYTES,
                    "bad header for a flip at {at}"
                );
                assert_eq!(file.file_name(), Some(file_name.as_os_str()));
            }
            Err(e) => panic!("flip at {at} of {file_name:?}: unexpected error {e}"),
        }
    }
    assert!(torn > 0 && corrupt > 0, "torn {torn}, corrupt {corrupt}");
}

#[test]
fn gap_between_segments_is_corruption() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, _) = build_log(dir.path(), 60);
    let files = segment_files(dir.path());
    assert!(files.len() >= 3);
    std::fs::remove_file(&files[1]).expect("remove middle segment");
    match Wal::open(dir.path(), small(Arc::new(StdFs), false)) {
        Err(Error::Corruption { file, index, .. }) => {
            assert_eq!(file, files[2]);
            assert!(index.is_some());
        }
        other => panic!("expected corruption, got {other:?}"),
    }
}

#[test]
fn a_second_open_of_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = open_small(dir.path());
    match Wal::open(dir.path(), small(Arc::new(StdFs), false)) {
        Err(Error::Io { path, .. }) => assert!(path.ends_with("wal.lock")),
        other => panic!("second open: {other:?}"),
    }
    drop(wal);
    open_small(dir.path());
}

/// Appends `log` four entries per append.
fn append_chunks(wal: &Wal, log: &[Entry]) {
    for chunk in log.chunks(4) {
        wal.append(chunk).expect("append");
    }
}

#[test]
fn compacted_segments_are_recycled_and_their_old_records_never_return() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = Wal::open(dir.path(), small(Arc::new(StdFs), false)).expect("open");
    let mut log = Vec::new();
    for round in 0..8u64 {
        // About two segments per round; compaction then frees what the round filled.
        let batch = entries(log.len() as u64 + 1, log.len() as u64 + 41, round + 1, 30);
        append_chunks(&wal, &batch);
        log.extend(batch);
        wal.compact_prefix(log.len() as u64 - 10).expect("compact");
    }
    let stats = wal.segment_stats();
    assert!(stats.recycled >= 6, "{stats:?}");
    let first = log.len() as u64 - 9;
    assert_log(&wal, &log[first as usize - 1..], first);
    drop(wal);

    let wal = Wal::open(dir.path(), small(Arc::new(StdFs), false)).expect("reopen");
    assert_log(&wal, &log[first as usize - 1..], first);
    let report = wal.recovery_report();
    assert_eq!(
        report.tail_truncated_at, None,
        "the old records after the end of a recycled segment are not a torn tail"
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .expect("list")
        .map(|d| d.expect("dirent").file_name())
        .filter(|n| n.to_string_lossy().ends_with(segment::PREPARED_SUFFIX))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// The salt is what keeps a recycled file's old records out of the log: here they sit
/// exactly where the next entry belongs, with exactly its index, and with a valid CRC.
#[test]
fn old_records_that_fit_exactly_fail_under_the_new_salt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = Wal::open(dir.path(), small(Arc::new(StdFs), false)).expect("open");
    append_chunks(&wal, &entries(1, 13, 1, 20));
    let locations = record_locations(&wal);
    drop(wal);
    let path = locations[0].0.clone();
    assert!(locations.iter().all(|l| l.0 == path), "one segment");
    let original = std::fs::read(&path).expect("read segment");
    let old = record::decode_segment_header(&original).expect("header");

    // As if the file were recycled for a segment starting at 1 again, and a write of
    // entries 1..=5 (same lengths, term 2) were torn right before its end marker.
    let rewritten = |salt: u32| {
        let mut bytes = original.clone();
        bytes[..SEGMENT_HEADER_BYTES].copy_from_slice(&record::encode_segment_header(
            record::SegmentHeader {
                version: old.version,
                first_index: 1,
                salt,
            },
        ));
        for e in entries(1, 6, 2, 20) {
            let mut rec = Vec::new();
            record::encode_record(&e, &mut rec);
            record::salt_record(&mut rec, salt);
            let at = locations[e.index as usize - 1].1 as usize;
            bytes[at..at + rec.len()].copy_from_slice(&rec);
        }
        std::fs::write(&path, bytes).expect("write segment");
        Wal::open(dir.path(), small(Arc::new(StdFs), false)).expect("open rewritten")
    };

    // The control: under the same salt, the old entries 6..=12 would join the log.
    let wal = rewritten(old.salt);
    assert_eq!(wal.last_index(), 12);
    assert_eq!(wal.entry(6).expect("entry").term, 1);
    drop(wal);

    let wal = rewritten(record::segment_salt(1, Some(old.salt)));
    assert_log(&wal, &entries(1, 6, 2, 20), 1);
    assert_eq!(
        wal.recovery_report().tail_truncated_at,
        Some((path.clone(), locations[5].1)),
        "the old entry 6 reads as a torn tail"
    );
}

/// A write into a recycled segment cut after every possible number of bytes keeps
/// exactly the records that landed whole, and the log goes on from there.
#[test]
fn torn_writes_into_a_recycled_segment_keep_the_valid_prefix() {
    let pristine = tempfile::tempdir().expect("tempdir");
    let mut log = entries(1, 41, 1, 30);
    let wal = Wal::open(pristine.path(), small(Arc::new(StdFs), false)).expect("open");
    append_chunks(&wal, &log);
    wal.compact_prefix(36).expect("compact");
    // Roll into a recycled file and leave most of it free.
    let mut next = 41u64;
    while wal.segment_stats().recycled == 0 {
        let e = entry(next, 1, 30);
        wal.append(std::slice::from_ref(&e)).expect("append");
        log.push(e);
        next += 1;
    }
    let active_path = lock(&wal.io).active.as_ref().expect("active").path.clone();
    let active_start = record_locations(&wal)
        .iter()
        .filter(|l| l.0 == active_path)
        .map(|l| l.1 + l.2)
        .max()
        .expect("records in the recycled segment");
    drop(wal);
    let bytes = std::fs::read(&active_path).expect("read recycled segment");
    let data_end = active_start as usize + END_MARKER_BYTES;
    assert!(
        !recovery::all_zero(&bytes[data_end..]),
        "the recycled segment should still hold its old records"
    );

    let batch = entries(next, next + 4, 3, 30);
    let batch_bytes: usize = batch
        .iter()
        .map(|e| record::record_len(e.payload.len()))
        .sum();
    let record_bytes = record::record_len(30);
    for torn in 0..=batch_bytes + END_MARKER_BYTES {
        let dir = tempfile::tempdir().expect("tempdir");
        copy_dir(pristine.path(), dir.path());
        let fs = Arc::new(CrashFs::new(u64::MAX, 0));
        let wal = Wal::open(dir.path(), small(fs.clone(), false)).expect("open copy");
        fs.set_torn_write_bytes(torn);
        fs.set_crash_at(fs.ops());
        assert!(wal.append(&batch).is_err(), "the write should have failed");
        drop(wal);

        let wal = Wal::open(dir.path(), small(Arc::new(StdFs), false))
            .unwrap_or_else(|e| panic!("open after a write torn at {torn} bytes: {e}"));
        let whole = (torn / record_bytes).min(batch.len());
        let mut expected = log[36..].to_vec();
        expected.extend_from_slice(&batch[..whole]);
        assert_log(&wal, &expected, 37);
        let cut_inside_a_record = torn < batch_bytes && torn % record_bytes != 0;
        if cut_inside_a_record {
            assert!(
                wal.recovery_report().tail_truncated_at.is_some(),
                "torn at {torn} bytes"
            );
        }
        // The log goes on after the cut, and that survives a reopen.
        let after = entry(next + whole as u64, 4, 11);
        wal.append(std::slice::from_ref(&after))
            .unwrap_or_else(|e| panic!("append after a write torn at {torn} bytes: {e}"));
        drop(wal);
        let wal = Wal::open(dir.path(), small(Arc::new(StdFs), false)).expect("reopen");
        expected.push(after);
        assert_log(&wal, &expected, 37);
    }
}

/// Options for the power-cut tests: one segment holds every batch, so the batches are
/// the only writes between syncs.
fn power_cut_options(fs: Arc<PowerCutFs>) -> WalOptions {
    WalOptions {
        segment_size_bytes_max: 1 << 20,
        group_commit_bytes_max: 1 << 20,
        prepare_segments_in_background: false,
        fs,
    }
}

/// Batch A (3 small entries) appended and synced, then batch B (100 entries of 100
/// bytes: four pages, each holding whole records) written by one `pwritev` whose fdatasync never returns. Returns
/// the WAL's fs, A, B and the byte range of B's write (records and end marker).
fn synced_a_then_unsynced_b(dir: &Path) -> (Arc<PowerCutFs>, Vec<Entry>, Vec<Entry>, (u64, u64)) {
    let fs = Arc::new(PowerCutFs::new());
    let wal = Wal::open(dir, power_cut_options(fs.clone())).expect("open");
    let a = entries(1, 4, 1, 100);
    wal.append(&a).expect("append A");
    let b = entries(4, 104, 1, 100);
    let b_start = record_locations(&wal).last().map(|l| l.1 + l.2).expect("A");
    let b_bytes: u64 = b
        .iter()
        .map(|e| record::record_len(e.payload.len()) as u64)
        .sum();
    // Operation 0 of the append is the write, 1 its fdatasync: crash at the fdatasync.
    fs.set_crash_at(fs.ops() + 1);
    assert!(wal.append(&b).is_err(), "B's fdatasync should have failed");
    fs.set_crash_at(u64::MAX);
    drop(wal);
    (
        fs,
        a,
        b,
        (b_start, b_start + b_bytes + END_MARKER_BYTES as u64),
    )
}

/// A power cut during B's fdatasync that keeps some of B's pages but not others (the
/// disk wrote them out of order) leaves valid records of B after damage. None of B was
/// acknowledged, so recovery cuts B at the damage and opens with A intact (and B's
/// records before the damage, which may stay as any unacknowledged prefix may); the
/// records after the cut never come back, even after other entries take their place.
#[test]
fn power_cut_inside_the_last_group_commit_is_a_torn_tail() {
    let page = |offset: u64| offset / fs::POWER_CUT_PAGE_BYTES;
    // (what the cut keeps of B's pages, by position: first, middle, last)
    /// Whether a page is kept, given B's first and last pages.
    type Keep = fn(u64, u64, u64) -> bool;
    let patterns: [(&str, Keep); 3] = [
        ("only the last page", |p, _first, last| p == last),
        ("all but the first page", |p, first, _last| p != first),
        ("first and last pages", |p, first, last| {
            p == first || p == last
        }),
    ];
    for (what, keep) in patterns {
        let dir = tempfile::tempdir().expect("tempdir");
        let (fs, a, b, (b_start, b_end)) = synced_a_then_unsynced_b(dir.path());
        let (first, last) = (page(b_start), page(b_end - 1));
        assert!(last >= first + 2, "B should span at least three pages");
        let (kept, reverted) = fs
            .power_cut_keeping(|p| keep(p, first, last))
            .expect("power cut");
        assert!(
            kept > 0 && reverted > 0,
            "{what}: kept {kept}, reverted {reverted}"
        );

        let wal = Wal::open(dir.path(), power_cut_options(Arc::new(PowerCutFs::new())))
            .unwrap_or_else(|e| panic!("{what}: open after the power cut: {e}"));
        let last = wal.last_index();
        assert!(
            (3..103).contains(&last),
            "{what}: the log ends at {last}, A at 3, B at 103"
        );
        let mut expected = a.clone();
        expected.extend_from_slice(&b[..(last - 3) as usize]);
        assert_log(&wal, &expected, 1);
        let cut_at = wal
            .recovery_report()
            .tail_truncated_at
            .as_ref()
            .map(|t| t.1);
        assert!(
            cut_at.is_some_and(|at| at >= b_start && at < b_end),
            "{what}: tail cut at {cut_at:?}, B was written at {b_start}..{b_end}"
        );
        // A shorter entry of another term where B's next one was: B's later entries,
        // whose indexes would follow it, must not join the log.
        let other = entry(last + 1, 2, 10);
        wal.append(std::slice::from_ref(&other))
            .expect("append after the cut");
        drop(wal);
        let wal = Wal::open(dir.path(), power_cut_options(Arc::new(PowerCutFs::new())))
            .unwrap_or_else(|e| panic!("{what}: reopen: {e}"));
        expected.push(other);
        assert_log(&wal, &expected, 1);
    }
}

/// The same damage in synced data is corruption: A's first page lost after A and B
/// were both acknowledged. B's first record says a new write started after A, and B's
/// write began only after A's fdatasync returned, so A's bytes were durable.
#[test]
fn damage_before_the_last_group_commit_is_still_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fs = Arc::new(PowerCutFs::new());
    let wal = Wal::open(dir.path(), power_cut_options(fs.clone())).expect("open");
    let a = entries(1, 9, 1, 1500);
    wal.append(&a).expect("append A");
    let b = entries(9, 12, 1, 100);
    wal.append(&b).expect("append B");
    let locations = record_locations(&wal);
    drop(wal);
    assert_eq!(fs.unsynced_pages(), 0, "everything was synced");
    let (path, a_start, _, _) = locations[0].clone();
    let a_end = locations[7].1 + locations[7].2;
    // Zeros, as a lost first page of A would read, and a flipped bit in A's middle.
    let damages: [(&str, u64, Vec<u8>); 2] = [
        (
            "A's first page zeroed",
            a_start,
            vec![0u8; 4096 - a_start as usize],
        ),
        ("a bit flipped in A", (a_start + a_end) / 2, vec![]),
    ];
    for (what, at, bytes) in damages {
        let copy = tempfile::tempdir().expect("tempdir");
        copy_dir(dir.path(), copy.path());
        let seg = copy.path().join(path.file_name().expect("name"));
        let mut data = std::fs::read(&seg).expect("read");
        if bytes.is_empty() {
            data[at as usize] ^= 0x10;
        } else {
            data[at as usize..at as usize + bytes.len()].copy_from_slice(&bytes);
        }
        std::fs::write(&seg, &data).expect("write");
        match Wal::open(copy.path(), power_cut_options(Arc::new(PowerCutFs::new()))) {
            Err(Error::Corruption { file, .. }) => assert_eq!(file, seg, "{what}"),
            other => panic!("{what}: expected corruption, got {other:?}"),
        }
    }
}

/// A version 2 segment does not mark where writes start, so the same out-of-order
/// power cut that a version 3 segment recovers from (the test above) is refused there:
/// recovery cannot rule out damage in synced data.
#[test]
fn a_version_2_segment_still_refuses_valid_records_after_damage() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (fs, _, _, (b_start, b_end)) = synced_a_then_unsynced_b(dir.path());
    let last = (b_end - 1) / fs::POWER_CUT_PAGE_BYTES;
    fs.power_cut_keeping(|p| p == last).expect("power cut");
    let seg = segment_files(dir.path()).pop().expect("segment");
    let mut bytes = std::fs::read(&seg).expect("read");
    let header = record::decode_segment_header(&bytes).expect("header");
    assert_eq!(header.version, record::SEGMENT_VERSION);
    bytes[..SEGMENT_HEADER_BYTES].copy_from_slice(&record::encode_segment_header(
        record::SegmentHeader {
            version: 2,
            ..header
        },
    ));
    std::fs::write(&seg, &bytes).expect("write");
    match Wal::open(dir.path(), power_cut_options(Arc::new(PowerCutFs::new()))) {
        Err(Error::Corruption { file, offset, .. }) => {
            assert_eq!(file, seg);
            assert_eq!(offset, b_start, "refused where B's lost first page begins");
        }
        other => panic!("expected corruption in a version 2 segment, got {other:?}"),
    }
}

/// A [`StdFs`] whose disk can be made full: then every space-taking call (`fallocate`,
/// writes) fails with ENOSPC, as on a full filesystem; with `sync_fails`, fdatasync does
/// too (as on NFS or a thin-provisioned volume, where ENOSPC can first show at sync).
#[derive(Debug, Default)]
struct FullDiskFs {
    full: std::sync::atomic::AtomicBool,
    sync_fails: std::sync::atomic::AtomicBool,
}

impl FullDiskFs {
    fn set_full(&self, full: bool) {
        self.full.store(full, std::sync::atomic::Ordering::SeqCst);
    }

    fn check(&self, flag: &std::sync::atomic::AtomicBool) -> std::io::Result<()> {
        if flag.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
        }
        Ok(())
    }
}

impl WalFs for FullDiskFs {
    fn create_new(&self, path: &Path) -> std::io::Result<std::fs::File> {
        StdFs.create_new(path)
    }
    fn open_rw(&self, path: &Path) -> std::io::Result<std::fs::File> {
        StdFs.open_rw(path)
    }
    fn write_all_at(&self, file: &std::fs::File, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.check(&self.full)?;
        StdFs.write_all_at(file, buf, offset)
    }
    fn write_vectored_at(
        &self,
        file: &std::fs::File,
        bufs: &[std::io::IoSlice<'_>],
        offset: u64,
    ) -> std::io::Result<()> {
        self.check(&self.full)?;
        StdFs.write_vectored_at(file, bufs, offset)
    }
    fn sync_data(&self, file: &std::fs::File) -> std::io::Result<()> {
        self.check(&self.sync_fails)?;
        StdFs.sync_data(file)
    }
    fn allocate(&self, file: &std::fs::File, len: u64) -> std::io::Result<()> {
        self.check(&self.full)?;
        StdFs.allocate(file, len)
    }
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        StdFs.rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> std::io::Result<()> {
        StdFs.remove_file(path)
    }
    fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
        StdFs.sync_dir(dir)
    }
}

fn prepared_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .expect("list dir")
        .map(|d| d.expect("dirent").path())
        .filter(|p| p.extension().is_some_and(|e| e == "prep"))
        .collect()
}

/// `space.rs`: ENOSPC while preparing the next segment (or in a write that was never
/// synced) leaves the log as it was and refuses only that append; once space is freed
/// the same append succeeds, and everything is there after a reopen.
#[test]
fn out_of_space_refuses_the_append_and_the_log_resumes_once_space_is_freed() {
    let dir = tempfile::tempdir().unwrap();
    let fs = Arc::new(FullDiskFs::default());
    let wal = Wal::open(dir.path(), small(fs.clone(), false)).unwrap();
    let before = entries(1, 6, 1, 100);
    wal.append(&before).unwrap();
    let mut log = before.clone();
    let mut refused_at_roll = false;
    let mut refused_in_segment = false;
    fs.set_full(true);
    // Each round: an append on the full disk is refused, then succeeds once space is
    // freed. The first rounds fail in the active segment's write, the one that needs a
    // new segment fails preparing it.
    for next in 6..18 {
        let batch = entries(next, next + 1, 1, 100);
        let rolls = lock(&wal.io)
            .active
            .as_ref()
            .is_some_and(|a| a.remaining() < 200);
        let err = wal.append(&batch).expect_err("append on a full disk");
        assert!(err.is_no_space(), "expected NoSpace, got {err}");
        assert!(
            err.to_string().contains(&dir.path().display().to_string()),
            "the error names the directory: {err}"
        );
        if rolls {
            refused_at_roll = true;
        } else {
            refused_in_segment = true;
        }
        assert_eq!(
            wal.last_index(),
            next - 1,
            "a refused append changed the log"
        );
        assert!(
            prepared_files(dir.path()).is_empty(),
            "a failed preparation left {:?} behind",
            prepared_files(dir.path())
        );
        fs.set_full(false);
        wal.append(&batch)
            .expect("the same append once space is freed");
        log.extend(batch);
        fs.set_full(true);
        if refused_at_roll && refused_in_segment {
            break;
        }
    }
    fs.set_full(false);
    assert!(
        refused_at_roll,
        "no append had to roll while the disk was full"
    );
    assert!(refused_in_segment, "no append fitted the active segment");
    assert_log(&wal, &log, 1);
    wal.close().unwrap();
    let reopened = open_small(dir.path());
    assert_log(&reopened, &log, 1);
}

/// The fsyncgate rule (`space.rs`): a failed fdatasync is never retried as a success,
/// even when it says ENOSPC; the log refuses every later write until reopened.
#[test]
fn a_failed_fdatasync_stays_fatal_even_when_it_reports_no_space() {
    let dir = tempfile::tempdir().unwrap();
    let fs = Arc::new(FullDiskFs::default());
    let wal = Wal::open(dir.path(), small(fs.clone(), false)).unwrap();
    wal.append(&entries(1, 3, 1, 10)).unwrap();
    fs.sync_fails
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let err = wal.append(&entries(3, 4, 1, 10)).expect_err("sync fails");
    assert!(
        !err.is_no_space(),
        "a failed fdatasync was reported as retryable: {err}"
    );
    fs.sync_fails
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let err = wal
        .append(&entries(3, 4, 1, 10))
        .expect_err("the log must stay failed");
    assert!(matches!(err, Error::Closed { .. }), "got {err}");
}

/// Readers copy records after releasing the view lock (`Wal::entries`), so a record may be
/// zeroed by a truncation, overwritten by a new tail, or recycled with a new salt while it
/// is read. Whatever the race, a read returns contiguous, CRC-verified entries of one
/// moment's log (or a range error), never a stale or damaged record, never `Corruption`.
#[test]
fn reads_racing_truncation_compaction_and_recycling_return_only_current_records() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = Arc::new(open_small(dir.path()));
    wal.append(&entries(1, 41, 1, 40)).expect("append");
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (wal, stop) = (Arc::clone(&wal), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut entries_read = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let (lo, hi) = (wal.first_index(), wal.last_index() + 1);
                    match wal.entries(lo, hi, u64::MAX) {
                        Ok(got) => {
                            for (i, e) in got.iter().enumerate() {
                                assert_eq!(e.index, lo + i as u64, "entries are contiguous");
                                assert_eq!(
                                    e.payload,
                                    payload(e.index, e.term, 40),
                                    "entry {}",
                                    e.index
                                );
                            }
                            entries_read += got.len() as u64;
                        }
                        Err(
                            Error::NotInLog(NotInLog::Compacted { .. })
                            | Error::NotInLog(NotInLog::Unavailable { .. }),
                        ) => {}
                        Err(e) => panic!("a read racing the writer failed: {e}"),
                    }
                }
                entries_read
            })
        })
        .collect();
    // Rewrite the tail under a new term again and again (zeroing and then overwriting the
    // same offsets), and compact from the front so that segments are recycled.
    let mut term = 1;
    for round in 0..120u64 {
        let last = wal.last_index();
        let cut = last.saturating_sub(15).max(wal.first_index());
        wal.truncate_suffix(cut).expect("truncate");
        term += 1;
        wal.append(&entries(cut, last + 3, term, 40))
            .expect("append new tail");
        if round % 10 == 9 {
            wal.compact_prefix(wal.last_index() - 30).expect("compact");
        }
    }
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        let read = reader.join().expect("reader panicked");
        assert!(read > 0, "the reader read something");
    }
}
