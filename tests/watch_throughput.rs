//! Watch benchmark (issue 15), run by hand; the figures go to docs/BENCHMARKS.md ("Watch"):
//!
//! ```text
//! cargo test --release --test watch_throughput -- --ignored --nocapture
//! ```
//!
//! A 3-node cluster, 64 clients writing 100-byte values to the leader for
//! `RAFTLOG_WATCH_BENCH_SECS` (default 5) seconds per phase: no watcher (the baseline), one
//! watcher of the change feed, 100 watchers, and one stalled watcher (asks for the feed and
//! never reads). Watchers are on the leader, the node that also applies and answers the
//! writes, which is the hardest place for them. Each phase reports writes/s, write p50/p99
//! and events/s delivered; the ratios to the baseline of the same run are what to compare
//! on a shared, noisy machine.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{runtime, Cluster, ClusterSpec};

const WRITERS: usize = 64;

struct Phase {
    writes_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    events_per_sec: f64,
}

async fn write_load(c: &Arc<Cluster>, leader: u64, secs: u64) -> (u64, Vec<Duration>) {
    let stop = Arc::new(AtomicBool::new(false));
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let tasks: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (c, stop, latencies) = (c.clone(), stop.clone(), latencies.clone());
            tokio::spawn(async move {
                let value = "v".repeat(100);
                let mut i = 0u64;
                let mut mine = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    if c.put(leader, &format!("b/{w}/{}", i % 100), &value)
                        .await
                        .is_ok()
                    {
                        mine.push(started.elapsed());
                    }
                    i += 1;
                }
                latencies.lock().unwrap().extend(mine);
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = task.await;
    }
    let latencies = std::mem::take(&mut *latencies.lock().unwrap());
    (latencies.len() as u64, latencies)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let at = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[at].as_secs_f64() * 1000.0
}

/// Opens `count` watchers of the change feed on `leader`, each counting the events it reads.
fn watchers(
    c: &Arc<Cluster>,
    leader: u64,
    count: usize,
    events: &Arc<AtomicU64>,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..count)
        .map(|_| {
            let url = format!("http://{}/v1/changes", c.api(leader));
            let (events, stop) = (events.clone(), stop.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let Ok(mut response) = client.get(url).send().await else {
                    return;
                };
                while !stop.load(Ordering::Relaxed) {
                    match tokio::time::timeout(Duration::from_millis(200), response.chunk()).await {
                        Ok(Ok(Some(chunk))) => {
                            let n = chunk.windows(8).filter(|w| w == b"\"index\":").count();
                            events.fetch_add(n as u64, Ordering::Relaxed);
                        }
                        Ok(_) => return,
                        Err(_) => {}
                    }
                }
            })
        })
        .collect()
}

async fn phase(
    c: &Arc<Cluster>,
    leader: u64,
    secs: u64,
    watcher_count: usize,
    stalled: bool,
) -> Phase {
    use tokio::io::AsyncWriteExt;
    let events = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = watchers(c, leader, watcher_count, &events, &stop);
    let _stalled = if stalled {
        let mut stream = tokio::net::TcpStream::connect(c.api(leader)).await.unwrap();
        stream
            .write_all(b"GET /v1/changes HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        Some(stream)
    } else {
        None
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let (writes, mut latencies) = write_load(c, leader, secs).await;
    let elapsed = started.elapsed().as_secs_f64();
    // Let the watchers drain what was written.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = task.await;
    }
    latencies.sort();
    Phase {
        writes_per_sec: writes as f64 / elapsed,
        p50_ms: percentile(&latencies, 0.5),
        p99_ms: percentile(&latencies, 0.99),
        events_per_sec: events.load(Ordering::Relaxed) as f64 / elapsed,
    }
}

#[test]
#[ignore = "a benchmark: run by hand with --ignored --nocapture"]
fn watch_events_per_second_to_1_and_100_watchers_while_64_clients_write() {
    let secs: u64 = std::env::var("RAFTLOG_WATCH_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    runtime().block_on(async {
        let c = Arc::new(Cluster::start_with_config(
            ClusterSpec::default(),
            serde_json::json!({"watch_buffer_bytes_max": 1 << 20}),
        ));
        let leader = c.wait_for_leader(Duration::from_secs(10)).await;
        c.put_eventually("warm", "up", Duration::from_secs(10)).await;
        let baseline = phase(&c, leader, secs, 0, false).await;
        let one = phase(&c, leader, secs, 1, false).await;
        let hundred = phase(&c, leader, secs, 100, false).await;
        let stalled = phase(&c, leader, secs, 0, true).await;
        let baseline_again = phase(&c, leader, secs, 0, false).await;
        let m = c.get_quick(leader, "/metrics").await.unwrap().text().await.unwrap();
        let cut = m
            .lines()
            .find(|l| l.starts_with("raftlog_watchers_cut_total"))
            .unwrap_or("")
            .to_string();
        println!("| phase | writes/s | write p50 ms | write p99 ms | p99 / baseline | events/s delivered (all watchers) | events/s per watcher |");
        println!("|---|---|---|---|---|---|---|");
        for (name, p, n) in [
            ("no watcher (baseline)", &baseline, 0usize),
            ("1 watcher", &one, 1),
            ("100 watchers", &hundred, 100),
            ("1 stalled watcher", &stalled, 0),
            ("no watcher (baseline, again)", &baseline_again, 0),
        ] {
            println!(
                "| {name} | {:.0} | {:.1} | {:.1} | {:.2} | {:.0} | {} |",
                p.writes_per_sec,
                p.p50_ms,
                p.p99_ms,
                p.p99_ms / baseline.p99_ms,
                p.events_per_sec,
                if n > 0 { format!("{:.0}", p.events_per_sec / n as f64) } else { "-".into() }
            );
        }
        println!("stalled watcher: {cut}");
    });
}
