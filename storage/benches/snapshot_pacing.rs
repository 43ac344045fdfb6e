//! WAL sync latency while a snapshot is written once a second, with and without paced
//! writeback (`storage::pacing`; issue 14: "show write p99 with a snapshot every second
//! within 1.5× of the run without snapshots").
//!
//! The WAL side is what the persistence thread does per group commit: a 4 KiB `pwrite`
//! into already-written blocks, then `fdatasync`. The snapshot side is what the snapshot
//! writer does: 64 KiB `write`s of a new temp file (`RAFTLOG_PACING_SNAPSHOT_MIB`, default
//! 64 MiB), then `fsync`, rename-free (the rename and directory fsync are tiny next to it);
//! paced, each write is followed by `pacing::after_write`, as `TempTarget::write_all` does.
//! A snapshot starts at the top of each second. Three cases alternate within each round
//! (`RAFTLOG_PACING_ROUNDS`, default 3; `RAFTLOG_PACING_SECONDS` per case, default 5), so
//! every ratio compares runs measured next to each other on this noisy machine.
//!
//! `cargo bench -p storage --bench snapshot_pacing` (a plain harness: criterion measures
//! means, this needs the tail).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const WAL_FILE_BYTES: u64 = 64 << 20;
const WAL_WRITE_BYTES: usize = 4 << 10;
const SNAPSHOT_WRITE_BYTES: usize = 64 << 10;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Case {
    NoSnapshot,
    SnapshotUnpaced,
    SnapshotPaced,
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A WAL-like file whose blocks are all written and durable, as recycled segments are.
fn prepare_wal(path: &Path) -> File {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .expect("create the WAL-like file in the bench's temp directory");
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..(WAL_FILE_BYTES >> 20) {
        file.write_all(&zeros).expect("fill the WAL-like file");
    }
    file.sync_all().expect("fsync the WAL-like file");
    file
}

fn write_snapshot(dir: &Path, seq: u64, bytes: u64, paced: bool, stop: &AtomicBool) {
    let path = dir.join(format!("snap-{seq}.tmp"));
    let mut file = File::create(&path).expect("create the snapshot-like file");
    let chunk = vec![0xA5u8; SNAPSHOT_WRITE_BYTES];
    let mut written = 0;
    while written < bytes && !stop.load(Ordering::Relaxed) {
        file.write_all(&chunk)
            .expect("write the snapshot-like file");
        if paced {
            storage::pacing::after_write(&file, chunk.len());
        }
        written += chunk.len() as u64;
    }
    file.sync_all().expect("fsync the snapshot-like file");
    drop(file);
    std::fs::remove_file(&path).expect("remove the snapshot-like file");
}

/// Runs one case for `seconds`; returns every WAL sync's latency in microseconds.
fn run_case(dir: &Path, wal: &File, case: Case, seconds: u64, snapshot_bytes: u64) -> Vec<u64> {
    let stop = Arc::new(AtomicBool::new(false));
    let snapshots = (case != Case::NoSnapshot).then(|| {
        let (dir, stop) = (dir.to_path_buf(), stop.clone());
        let paced = case == Case::SnapshotPaced;
        std::thread::spawn(move || {
            let started = Instant::now();
            let mut seq = 0;
            while !stop.load(Ordering::Relaxed) {
                write_snapshot(&dir, seq, snapshot_bytes, paced, &stop);
                seq += 1;
                // The next one at the top of the next second, as `snapshot_min_interval_ms`
                // = 1000 allows at most.
                let next = started + Duration::from_secs(seq);
                while Instant::now() < next && !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        })
    });
    let record = vec![0x5Au8; WAL_WRITE_BYTES];
    let mut latencies = Vec::new();
    let mut offset = 0u64;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(seconds) {
        let sync_started = Instant::now();
        wal.write_all_at(&record, offset)
            .expect("write the WAL-like file");
        wal.sync_data().expect("fdatasync the WAL-like file");
        latencies.push(sync_started.elapsed().as_micros() as u64);
        offset = (offset + WAL_WRITE_BYTES as u64) % WAL_FILE_BYTES;
    }
    stop.store(true, Ordering::Relaxed);
    if let Some(thread) = snapshots {
        thread.join().expect("snapshot thread");
    }
    latencies
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank] as f64 / 1000.0
}

fn main() {
    // `cargo bench -- --test` (CI compiles benches that way): build only.
    if std::env::args().any(|a| a == "--test") {
        return;
    }
    let rounds = env_u64("RAFTLOG_PACING_ROUNDS", 3);
    let seconds = env_u64("RAFTLOG_PACING_SECONDS", 5);
    let snapshot_bytes = env_u64("RAFTLOG_PACING_SNAPSHOT_MIB", 64) << 20;
    let dir = tempfile::tempdir_in(std::env::var("RAFTLOG_PACING_DIR").unwrap_or(".".into()))
        .expect("create a temp directory for the bench");
    let wal = prepare_wal(&dir.path().join("wal"));
    let cases = [Case::NoSnapshot, Case::SnapshotUnpaced, Case::SnapshotPaced];
    println!(
        "WAL 4 KiB pwrite+fdatasync latency (ms), {} MiB snapshot each second, {seconds} s per case",
        snapshot_bytes >> 20
    );
    println!("round case              syncs     p50     p99   p99.9     max  p99/nosnap");
    let mut p99s: Vec<(Case, f64)> = Vec::new();
    for round in 1..=rounds {
        let mut base_p99 = None;
        for case in cases {
            let mut latencies = run_case(dir.path(), &wal, case, seconds, snapshot_bytes);
            latencies.sort_unstable();
            let p99 = percentile(&latencies, 99.0);
            let base = *base_p99.get_or_insert(p99);
            println!(
                "{round:>5} {:<16} {:>6} {:>7.3} {:>7.3} {:>7.3} {:>7.3} {:>10.2}",
                format!("{case:?}"),
                latencies.len(),
                percentile(&latencies, 50.0),
                p99,
                percentile(&latencies, 99.9),
                percentile(&latencies, 100.0),
                p99 / base
            );
            p99s.push((case, p99));
        }
    }
    for case in cases {
        let mut values: Vec<f64> = p99s
            .iter()
            .filter(|(c, _)| *c == case)
            .map(|(_, p)| *p)
            .collect();
        values.sort_by(f64::total_cmp);
        println!(
            "median p99 {:<16} {:.3} ms",
            format!("{case:?}"),
            values[values.len() / 2]
        );
    }
}
