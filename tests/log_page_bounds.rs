//! `GET /v1/log` answers a bounded page and does not stall writes (issue 12, "logpage").
//!
//! The log holds 2,000 values of 1 MiB. Sixteen clients write small values to the leader
//! in alternating windows: one without any log read, the next with a loop of
//! `GET /v1/log?from=1&limit=10000` on the leader. A page must stay within
//! `log_page_max_bytes` plus one entry, and the write p99 of the windows with reads must stay
//! within `P99_RATIO_MAX` times that of the windows without (issue 12 asks for 2x). Windows
//! alternate and the medians of their p99s are compared, so that a burst of load from
//! elsewhere on a shared machine shifts both sides rather than one. Finally the whole log is
//! walked page by page with `X-Next-Index`, which must take at least as long as its bytes
//! take at the default `log_read_max_bytes_per_second`.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use support::{retry_unavailable, runtime, Cluster, ClusterSpec};

const LARGE_VALUES: u64 = 2_000;
const LARGE_VALUE_BYTES: usize = 1 << 20;
/// The default `log_page_max_bytes`.
const PAGE_BYTES_MAX: usize = 4 << 20;
/// One rendered entry of a large value: the value plus its JSON fields.
const ENTRY_JSON_BYTES_MAX: usize = LARGE_VALUE_BYTES + 1024;
const WRITERS: usize = 16;
const WINDOW: Duration = Duration::from_millis(2_000);
const ROUNDS: usize = 4;
/// Largest accepted ratio of write p99 with log reads to without (see its assertion).
const P99_RATIO_MAX: u32 = 2;
/// The default `log_read_max_bytes_per_second`.
const LOG_READ_BYTES_PER_SECOND: u64 = 64 << 20;

fn p99(latencies: &mut [Duration]) -> Duration {
    assert!(!latencies.is_empty(), "a window acknowledged no write");
    latencies.sort();
    latencies[(latencies.len() * 99 / 100).min(latencies.len() - 1)]
}

fn median(values: &mut [Duration]) -> Duration {
    values.sort();
    values[values.len() / 2]
}

/// What the log reader saw during one window.
#[derive(Default)]
struct PagesSeen {
    pages: u64,
    largest_page_bytes: usize,
    problems: Vec<String>,
}

/// Sixteen writers for one window, with or without a concurrent loop of log reads on the
/// leader; returns the write latencies.
async fn window(
    cluster: &Arc<Cluster>,
    leader: u64,
    round: usize,
    read_log: bool,
    pages: &Arc<Mutex<PagesSeen>>,
) -> Vec<Duration> {
    let stop = Arc::new(AtomicBool::new(false));
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (cluster, stop, latencies) = (cluster.clone(), stop.clone(), latencies.clone());
        writers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let key = format!("small-{round}-{read_log}-{w}-{n}");
                let started = Instant::now();
                // A 503 (no leader for a moment on a loaded machine) proposed nothing and
                // is retried; the latency counts the wait.
                match retry_unavailable(|| cluster.put(leader, &key, "small value")).await {
                    Ok(_) => latencies.lock().unwrap().push(started.elapsed()),
                    Err(e) => panic!("write {key} failed: {e:?}\n{}", cluster.logs_tail()),
                }
            }
        }));
    }
    // The reader runs on its own thread and runtime, at the lowest CPU priority
    // (`SCHED_IDLE`, preempted at once by any normal thread that wakes, as the node's page
    // thread is): receiving megabytes per page on the writers' runtime, or at their priority
    // on this 2-core machine, would delay their answers here in the test client, not in the
    // node.
    let reader = read_log.then(|| {
        let (cluster, stop, pages) = (cluster.clone(), stop.clone(), pages.clone());
        std::thread::spawn(move || {
            // SAFETY: gettid and sched_setscheduler take plain integers and a pointer to a
            // parameter that lives across the call.
            let rc = unsafe {
                let tid = libc::syscall(libc::SYS_gettid) as libc::pid_t;
                let param = libc::sched_param { sched_priority: 0 };
                libc::sched_setscheduler(tid, libc::SCHED_IDLE, &param)
            };
            assert_eq!(
                rc,
                0,
                "cannot move the test's log reader to SCHED_IDLE: {}",
                std::io::Error::last_os_error()
            );
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(read_pages(&cluster, leader, &stop, &pages));
        })
    });
    tokio::time::sleep(WINDOW).await;
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.unwrap();
    }
    if let Some(reader) = reader {
        reader.join().unwrap();
    }
    let latencies = latencies.lock().unwrap().clone();
    latencies
}

/// Reads the first page of the log over and over until `stop`, recording what it saw.
async fn read_pages(cluster: &Cluster, leader: u64, stop: &AtomicBool, pages: &Mutex<PagesSeen>) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let url = format!("http://{}/v1/log?from=1&limit=10000", cluster.api(leader));
    while !stop.load(Ordering::Relaxed) {
        let seen = match client.get(&url).send().await {
            Ok(response) => {
                let next = response
                    .headers()
                    .get("x-next-index")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok());
                response.bytes().await.map(|body| (next, body))
            }
            Err(e) => Err(e),
        };
        let mut pages = pages.lock().unwrap();
        match seen {
            Ok((next, body)) => {
                pages.pages += 1;
                pages.largest_page_bytes = pages.largest_page_bytes.max(body.len());
                if next.is_none() {
                    pages.problems.push("a page without X-Next-Index".into());
                }
            }
            Err(e) => pages.problems.push(format!("GET /v1/log failed: {e}")),
        }
    }
}

#[test]
fn log_page_is_bounded_and_reading_it_keeps_write_p99() {
    runtime().block_on(async {
        let cluster = Arc::new(Cluster::start(ClusterSpec {
            // The large values must stay in the log.
            snapshot_threshold: 1_000_000,
            ..ClusterSpec::default()
        }));
        let leader = cluster.wait_for_leader(Duration::from_secs(20)).await;
        let large_value = "v".repeat(LARGE_VALUE_BYTES);
        let loaded = Instant::now();
        let unanswered = std::sync::atomic::AtomicUsize::new(0);
        let failures: Vec<_> = futures_util::stream::iter(0..LARGE_VALUES)
            .map(|i| {
                let (cluster, value, unanswered) = (&cluster, &large_value, &unanswered);
                async move {
                    let key = format!("large-{i:05}");
                    // Loading 2 GiB can move leadership on a busy machine; writing the
                    // same value again is harmless, so a 504 (outcome unknown) is retried
                    // like a 503. So is a write the client gave up on (its 10 s timeout,
                    // status 0), at most twice: a CI run on 2026-12-07 had one, 1,634
                    // writes in, not investigated further (counted and printed below).
                    let mut tries = 0;
                    loop {
                        tries += 1;
                        let outcome = retry_unavailable(|| async {
                            match cluster.put(leader, &key, value).await {
                                Err((504, body)) => Err((503, body)),
                                other => other,
                            }
                        })
                        .await;
                        match outcome {
                            Err((0, _)) if tries < 3 => {
                                unanswered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                            other => break other.err(),
                        }
                    }
                }
            })
            .buffer_unordered(8)
            .filter_map(|failure| async move { failure })
            .collect()
            .await;
        assert!(
            failures.is_empty(),
            "large writes failed: {:?}",
            &failures[..1]
        );
        eprintln!(
            "loaded {LARGE_VALUES} x {LARGE_VALUE_BYTES} bytes in {:?}, {} writes tried again \
             after the client's timeout",
            loaded.elapsed(),
            unanswered.load(std::sync::atomic::Ordering::Relaxed)
        );
        // Leadership may have moved while the disks were busy.
        let leader = cluster.wait_for_leader(Duration::from_secs(20)).await;

        let pages = Arc::new(Mutex::new(PagesSeen::default()));
        let (mut quiet_p99s, mut reading_p99s) = (Vec::new(), Vec::new());
        for round in 0..ROUNDS {
            for read_log in [false, true] {
                let mut latencies = window(&cluster, leader, round, read_log, &pages).await;
                let writes = latencies.len();
                let p99 = p99(&mut latencies);
                eprintln!("round {round} reading={read_log}: {writes} writes, p99 {p99:?}");
                if read_log {
                    reading_p99s.push(p99);
                } else {
                    quiet_p99s.push(p99);
                }
            }
        }
        let pages = std::mem::take(&mut *pages.lock().unwrap());
        assert!(pages.problems.is_empty(), "{:?}", pages.problems);
        assert!(
            pages.pages > 0,
            "no GET /v1/log answered within {ROUNDS} windows of {WINDOW:?}"
        );
        assert!(
            pages.largest_page_bytes <= PAGE_BYTES_MAX + ENTRY_JSON_BYTES_MAX,
            "a log page of {} bytes exceeds the budget of {PAGE_BYTES_MAX} bytes plus one entry",
            pages.largest_page_bytes
        );
        let quiet = median(&mut quiet_p99s);
        let reading = median(&mut reading_p99s);
        eprintln!(
            "{} pages, largest {} bytes; median write p99 {quiet:?} quiet, {reading:?} reading",
            pages.pages, pages.largest_page_bytes
        );
        // Issue 12 asks for at most 2x. Measured on the shared 2-core machine without the
        // byte rate: 1.25x, 1.31x and 2.81x in three runs (the last reader got 245 MB/s);
        // pages read on tokio's blocking pool at normal priority: 6.6x; the old handler
        // stalled the raft loop for 7.6 s and writes failed with 504.
        assert!(
            reading <= quiet * P99_RATIO_MAX,
            "write p99 with log reads {reading:?} exceeds {P99_RATIO_MAX}x the p99 without \
             ({quiet:?}); p99s quiet {quiet_p99s:?}, reading {reading_p99s:?}"
        );
        walk_the_whole_log(&cluster, leader).await;
    });
}

/// Following `X-Next-Index` from index 1 visits every entry exactly once, in order, no
/// faster than the node's byte rate allows.
async fn walk_the_whole_log(cluster: &Cluster, leader: u64) {
    let last = cluster.status(leader).await.expect("status")["last_log_index"]
        .as_u64()
        .expect("last_log_index");
    let started = Instant::now();
    let (mut from, mut bytes, mut largest) = (1, 0u64, 0u64);
    while from <= last {
        let url = format!(
            "http://{}/v1/log?from={from}&limit=10000",
            cluster.api(leader)
        );
        let response = cluster.client.get(url).send().await.expect("GET /v1/log");
        assert_eq!(response.status(), 200);
        let next: u64 = response.headers()["x-next-index"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let body = response.bytes().await.expect("a log page");
        (bytes, largest) = (bytes + body.len() as u64, largest.max(body.len() as u64));
        let page: Vec<serde_json::Value> = serde_json::from_slice(&body).expect("a JSON array");
        assert!(!page.is_empty(), "an empty page from {from} (last {last})");
        for (offset, entry) in page.iter().enumerate() {
            assert_eq!(entry["index"].as_u64(), Some(from + offset as u64));
        }
        assert_eq!(
            next,
            from + page.len() as u64,
            "X-Next-Index after a page from {from}"
        );
        from = next;
    }
    // The node rests after each page for as long as it takes at the rate, so every page but
    // the last was paid for before the walk ended.
    let elapsed = started.elapsed();
    let paid = Duration::from_secs_f64((bytes - largest) as f64 / LOG_READ_BYTES_PER_SECOND as f64);
    eprintln!("walked {bytes} bytes of log in {elapsed:?} (at least {paid:?} at the byte rate)");
    assert!(
        elapsed >= paid,
        "{bytes} bytes of log pages in {elapsed:?}: faster than log_read_max_bytes_per_second \
         = {LOG_READ_BYTES_PER_SECOND} allows ({paid:?})"
    );
}
