//! WAL benchmarks (`cargo bench --bench wal_append`; CI runs it with `-- --test`).
//!
//! - `wal_append`: durable appends of `batch` entries of `payload` bytes, one fdatasync
//!   per append. `wal/<payload>B_x<batch>` is the WAL; `raw/...` writes the same encoded
//!   bytes with a bare `pwrite` + `fdatasync` into a file written full of zeros and
//!   synced beforehand (the best any log can do on this disk); `sled/...` inserts the
//!   batch into sled 0.34 and calls `flush`.
//! - `RAFTLOG_WAL_PAIRED=1 cargo bench --bench wal_append`: instead of the above,
//!   alternate WAL and raw iterations pairwise and print median ratios (see
//!   `paired_report`).
//! - `wal_recovery`: reopening a log of 256 B entries (1 GiB; 16 MiB under `--test`)
//!   with a warm page cache; throughput in bytes scanned.
//!
//! Files live in a temporary directory on the same disk as the target directory, never
//! on tmpfs, which would make fdatasync free.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use storage::wal::record::encode_record;
use storage::wal::{Wal, WalOptions};
use storage::{Entry, EntryKind};

const PAYLOADS_BYTES: [usize; 4] = [64, 256, 4096, 65536];
const BATCHES: [u64; 3] = [1, 16, 256];
/// Size of the raw baseline's file, like a WAL segment (smaller under `--test`).
fn raw_file_bytes() -> u64 {
    if test_mode() {
        4 << 20
    } else {
        64 << 20
    }
}

fn wal_options() -> WalOptions {
    WalOptions {
        segment_size_bytes_max: raw_file_bytes(),
        ..WalOptions::default()
    }
}
/// The WAL bench compacts its log (outside the timed part) past this many bytes.
const WAL_KEEP_BYTES: u64 = 256 << 20;

fn test_mode() -> bool {
    std::env::args().any(|a| a == "--test")
}

/// A temporary directory on a real disk: /tmp unless it is tmpfs, else next to the
/// bench binary in the target directory.
fn bench_dir() -> tempfile::TempDir {
    let tmp_is_tmpfs = std::fs::read_to_string("/proc/mounts")
        .map(|mounts| {
            mounts.lines().any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() > 2 && f[1] == "/tmp" && f[2] == "tmpfs"
            })
        })
        .unwrap_or(true);
    if !tmp_is_tmpfs {
        return tempfile::tempdir().expect("tempdir");
    }
    let exe = std::env::current_exe().expect("bench binary path");
    let base: PathBuf = exe
        .ancestors()
        .nth(3)
        .map(|p| p.join("bench-tmp"))
        .unwrap_or_else(|| PathBuf::from("target/bench-tmp"));
    std::fs::create_dir_all(&base).expect("create bench dir");
    tempfile::tempdir_in(base).expect("tempdir in target")
}

fn batch(next: u64, count: u64, payload: &Bytes) -> Vec<Entry> {
    (next..next + count)
        .map(|index| Entry {
            index,
            term: 1,
            kind: EntryKind::Normal,
            payload: payload.clone(),
        })
        .collect()
}

fn bench_wal(c: &mut Criterion) {
    let mut group = c.benchmark_group("wal_append");
    if test_mode() {
        group.sample_size(10);
    } else {
        group
            .sample_size(10)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(3));
    }
    for payload_bytes in PAYLOADS_BYTES {
        let payload = Bytes::from(vec![0xA5u8; payload_bytes]);
        for count in BATCHES {
            let id = format!("{payload_bytes}B_x{count}");
            group.throughput(Throughput::Elements(count));

            let dir = bench_dir();
            let wal = Wal::open(dir.path(), wal_options()).expect("open WAL");
            let mut next = 1u64;
            let entry_bytes = (payload_bytes + 25) as u64;
            group.bench_function(BenchmarkId::new("wal", &id), |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let entries = batch(next, count, &payload);
                        let started = Instant::now();
                        wal.append(&entries).expect("append");
                        total += started.elapsed();
                        next += count;
                        // Keep the disk footprint bounded; not part of the append cost.
                        if (next - wal.first_index()) * entry_bytes > WAL_KEEP_BYTES {
                            wal.compact_prefix(next - 1).expect("compact");
                        }
                    }
                    total
                })
            });
            wal.close().expect("close");

            // The same bytes the WAL writes, into a prepared file, one write + fdatasync.
            let mut encoded = Vec::new();
            for e in batch(1, count, &payload) {
                encode_record(&e, &mut encoded);
            }
            let file = prepared_raw_file(&dir.path().join("raw.dat"), raw_file_bytes());
            let mut offset = 0u64;
            group.bench_function(BenchmarkId::new("raw", &id), |b| {
                b.iter(|| {
                    if offset + encoded.len() as u64 > raw_file_bytes() {
                        offset = 0;
                    }
                    file.write_all_at(&encoded, offset).expect("raw write");
                    file.sync_data().expect("raw fdatasync");
                    offset += encoded.len() as u64;
                })
            });

            if payload_bytes == 256 {
                let sled_dir = dir.path().join("sled");
                let db = sled::Config::new()
                    .path(&sled_dir)
                    .flush_every_ms(None)
                    .open()
                    .expect("open sled");
                let mut next = 1u64;
                group.bench_function(BenchmarkId::new("sled", &id), |b| {
                    b.iter(|| {
                        for index in next..next + count {
                            db.insert(index.to_be_bytes(), payload.as_ref())
                                .expect("sled insert");
                        }
                        db.flush().expect("sled flush");
                        next += count;
                    })
                });
            }
        }
    }
    group.finish();
}

fn bench_recovery(c: &mut Criterion) {
    let log_bytes: u64 = if test_mode() { 16 << 20 } else { 1 << 30 };
    let payload = Bytes::from(vec![0x5Au8; 256]);
    let dir = bench_dir();
    let options = || WalOptions {
        // Only the scan is measured, not a background segment preparation.
        prepare_segments_in_background: false,
        ..wal_options()
    };
    {
        let wal = Wal::open(dir.path(), options()).expect("open WAL");
        let per_append = 4096u64;
        let count = log_bytes / (256 + 25);
        let mut next = 1;
        while next <= count {
            let n = per_append.min(count + 1 - next);
            wal.append(&batch(next, n, &payload)).expect("append");
            next += n;
        }
        wal.close().expect("close");
    }
    // Warm the page cache and learn the size.
    let scanned = {
        let wal = Wal::open(dir.path(), options()).expect("reopen");
        wal.recovery_report().bytes_scanned
    };
    let mut group = c.benchmark_group("wal_recovery");
    group.sample_size(10);
    if !test_mode() {
        group.measurement_time(Duration::from_secs(8));
    }
    group.throughput(Throughput::Bytes(scanned));
    let id = format!("{}MiB_256B", log_bytes >> 20);
    group.bench_function(BenchmarkId::new("open", id), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let started = Instant::now();
                let wal = Wal::open(dir.path(), options()).expect("reopen");
                total += started.elapsed();
                assert_eq!(wal.recovery_report().bytes_scanned, scanned);
                // The drop (unmapping, closing) is not part of recovery.
                drop(wal);
            }
            total
        })
    });
    group.finish();
}

/// A raw baseline file: `bytes` of zeros, written and synced.
fn prepared_raw_file(path: &std::path::Path, bytes: u64) -> File {
    let file = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .expect("create raw file");
    let zeros = vec![0u8; 1 << 20];
    for chunk in 0..bytes >> 20 {
        file.write_all_at(&zeros, chunk << 20)
            .expect("zero raw file");
    }
    file.sync_data().expect("sync raw file");
    file
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// `RAFTLOG_WAL_PAIRED=1`: on a shared disk whose fdatasync latency drifts by 2x within
/// a minute, criterion's one-benchmark-after-the-other figures give noisy ratios. This
/// alternates one WAL append and one raw write+fdatasync of the same bytes, so both
/// see the same disk, and prints the median of each and their ratio.
fn paired_report() {
    let seconds: f64 = std::env::var("RAFTLOG_WAL_PAIRED_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    println!("\npaired WAL vs raw (medians over alternating iterations, {seconds} s each)");
    println!("| payload x batch | wal median | raw median | wal/raw throughput | pairs |");
    println!("|---|---|---|---|---|");
    for payload_bytes in PAYLOADS_BYTES {
        let payload = Bytes::from(vec![0xA5u8; payload_bytes]);
        for count in BATCHES {
            let dir = bench_dir();
            let wal = Wal::open(&dir.path().join("wal"), wal_options()).expect("open WAL");
            let mut encoded = Vec::new();
            for e in batch(1, count, &payload) {
                encode_record(&e, &mut encoded);
            }
            let raw = prepared_raw_file(&dir.path().join("raw.dat"), raw_file_bytes());
            let entry_bytes = (payload_bytes + 25) as u64;
            let (mut next, mut offset) = (1u64, 0u64);
            let (mut wal_times, mut raw_times) = (Vec::new(), Vec::new());
            let started = Instant::now();
            let mut pair = 0u64;
            while started.elapsed().as_secs_f64() < seconds || pair < 10 {
                for leg in 0..2 {
                    // Alternate which goes first so neither always follows the other.
                    if (leg + pair) % 2 == 0 {
                        let entries = batch(next, count, &payload);
                        let t = Instant::now();
                        wal.append(&entries).expect("append");
                        wal_times.push(t.elapsed());
                        next += count;
                        if (next - wal.first_index()) * entry_bytes > WAL_KEEP_BYTES {
                            wal.compact_prefix(next - 1).expect("compact");
                        }
                    } else {
                        if offset + encoded.len() as u64 > raw_file_bytes() {
                            offset = 0;
                        }
                        let t = Instant::now();
                        raw.write_all_at(&encoded, offset).expect("raw write");
                        raw.sync_data().expect("raw fdatasync");
                        raw_times.push(t.elapsed());
                        offset += encoded.len() as u64;
                    }
                }
                pair += 1;
            }
            let (w, r) = (median(&mut wal_times), median(&mut raw_times));
            println!(
                "| {payload_bytes} B x {count} | {:.3} ms | {:.3} ms | **{:.2}** | {pair} |",
                w.as_secs_f64() * 1e3,
                r.as_secs_f64() * 1e3,
                r.as_secs_f64() / w.as_secs_f64()
            );
            wal.close().expect("close");
        }
    }
}

criterion_group!(benches, bench_wal, bench_recovery);

fn main() {
    if std::env::var_os("RAFTLOG_WAL_PAIRED").is_some() && !test_mode() {
        paired_report();
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
