//! Back-pressure (issue 12): proposals are bounded in bytes, by the core
//! (`max_uncommitted_bytes`, etcd's `MaxUncommittedEntriesSize`) and by each node's write
//! budget (`pending_write_bytes_max`, taken before a request body is read). A storm of large
//! writes gets `200` or `503 overloaded` at once, never a hang, a 504 or a 500; each node's
//! memory stays under a bound derived from those limits; every acknowledged write reads back.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use support::{dir_size, rss, runtime, Cluster, ClusterSpec, Rss};

const STORM_WRITES: usize = 2_000;
const VALUE_BYTES: usize = 1 << 20;
/// Few keys, so that the state machine holds at most `KEYS` values whatever share of the
/// storm is accepted: the memory bound is about what is pending, not what is stored.
const KEYS: usize = 16;
/// Distinct values cycled through (the client keeps them all: 64 MiB, not 2 GiB).
const DISTINCT_VALUES: usize = 64;
/// The defaults of `pending_write_bytes_max` and `max_uncommitted_bytes` (the cluster file
/// sets neither, so the test checks the shipped configuration).
const PENDING_WRITE_BYTES_MAX: u64 = 64 << 20;
const MAX_UNCOMMITTED_BYTES: u64 = 32 << 20;
const MIB: u64 = 1 << 20;

/// The most anonymous memory (heap) a node may add to its idle figure during the storm.
///
/// - Writes in progress on a node hold at most `PENDING_WRITE_BYTES_MAX` bytes of request
///   bodies (the budget is taken before the body is read). A write's bytes exist in at
///   most three copies at once: the body, the command encoding (transient) and the log
///   entry built from it (which the WAL job and apply share): 3 × 64 MiB.
/// - A follower also holds what the leader replicates to it, which the follower's budget
///   does not cover: at most the leader's uncommitted entries (`MAX_UNCOMMITTED_BYTES`)
///   decoded from the wire and in its own log until fsynced: 2 × 32 MiB.
/// - The state machine: `KEYS` values of 1 MiB.
/// - Each open client connection: hyper's read buffer grows up to its default
///   `max_buf_size` (8 KiB + 100 × 4 KiB = 408 KiB) while a body streams in, refused ones
///   included (they are read and discarded). The storm opens up to `STORM_WRITES / 3`
///   connections per node: 667 × 408 KiB = 266 MiB. (In production the HTTP connection
///   cap bounds this term, not the write budget.)
/// - Slack for the allocator: 128 MiB. Once glibc frees an mmapped 1 MiB body, its dynamic
///   mmap threshold rises above 1 MiB, so later bodies come from the per-thread arenas (up
///   to 8 per core), which keep freed chunks that are not at an arena's top. Measured on
///   the leader, above the other terms: 35 MiB (574 MiB peak, 2026-12-04) and 80 MiB
///   (619 MiB, a CI run on 2026-12-05, which failed the first guess of 64 MiB).
///
/// 666 MiB in all. Without the bounds, the 2,000 bodies alone are 2,000 MiB.
fn anon_growth_bound_bytes() -> u64 {
    let connections = STORM_WRITES.div_ceil(3) as u64;
    3 * PENDING_WRITE_BYTES_MAX
        + 2 * MAX_UNCOMMITTED_BYTES
        + KEYS as u64 * VALUE_BYTES as u64
        + connections * HYPER_READ_BUFFER_BYTES_MAX
        + 128 * MIB
}

/// hyper's default `max_buf_size` for an HTTP/1 connection's read buffer.
const HYPER_READ_BUFFER_BYTES_MAX: u64 = 8192 + 4096 * 100;

fn value(j: usize) -> Bytes {
    let mut v = vec![b'a' + (j % 26) as u8; VALUE_BYTES];
    v[..8].copy_from_slice(&(j as u64).to_le_bytes());
    Bytes::from(v)
}

/// One storm write's answer.
#[derive(Debug)]
struct Answer {
    key: usize,
    value: usize,
    status: u16,
    body: String,
}

/// Whether transparent huge pages are on for process `pid` (`THP_enabled` in its status,
/// Linux 5.0 and later); `None` where the kernel does not say.
fn huge_pages_enabled(pid: u32) -> Option<bool> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("THP_enabled:"))?;
    Some(line.split_whitespace().nth(1)? == "1")
}

/// Samples every node's RSS until stopped; keeps the peak of each figure per node.
fn sample_rss(
    pids: BTreeMap<u64, u32>,
    stop: Arc<AtomicBool>,
    peaks: Arc<Mutex<BTreeMap<u64, Rss>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            for (id, pid) in &pids {
                if let Some(now) = rss(*pid) {
                    let mut peaks = peaks.lock().unwrap();
                    let peak = peaks.entry(*id).or_default();
                    peak.total_kib = peak.total_kib.max(now.total_kib);
                    peak.anon_kib = peak.anon_kib.max(now.anon_kib);
                    peak.file_kib = peak.file_kib.max(now.file_kib);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })
}

/// 2,000 concurrent 1 MiB PUTs, spread round-robin over the three nodes: followers forward
/// to the leader, so every node buffers request bodies and every node's budget is tested
/// (all at the leader would leave the followers' request path idle).
#[test]
fn write_storm_gets_ok_or_overloaded_within_memory_bound() {
    runtime().block_on(async {
        // Elections are not what this test checks: on the shared 2-core test machine (load
        // average ~16 while it ran) the storm starved the nodes long enough to lose
        // CheckQuorum with 150–300 ms timeouts (14 terms in one run), and writes racing a
        // leader change answer no_leader or 504. Longer timeouts keep one leader.
        let cluster = Arc::new(Cluster::start_with_config(
            ClusterSpec::default(),
            serde_json::json!({"heartbeat_interval_ms": 200, "election_timeout_ms": [2000, 4000]}),
        ));
        let leader = cluster.wait_for_leader(Duration::from_secs(20)).await;
        let term_before = cluster.status(leader).await.expect("leader status")["term"].clone();
        let values: Vec<Bytes> = (0..DISTINCT_VALUES).map(value).collect();
        let pids: BTreeMap<u64, u32> = (1..=3)
            .map(|id| (id, cluster.pid(id).expect("node runs")))
            .collect();
        for (id, pid) in &pids {
            assert_ne!(
                huge_pages_enabled(*pid),
                Some(true),
                "node {id} (pid {pid}) runs with transparent huge pages on (THP_enabled: 1 in \
                 /proc/{pid}/status): under this storm its runtime worker stalls zeroing 2 MiB \
                 pages (src/allocator.rs); the binary's main must turn them off first"
            );
        }
        let baseline: BTreeMap<u64, Rss> = pids
            .iter()
            .map(|(id, pid)| (*id, rss(*pid).expect("node runs")))
            .collect();

        let stop = Arc::new(AtomicBool::new(false));
        let peaks = Arc::new(Mutex::new(BTreeMap::new()));
        let sampler = sample_rss(pids.clone(), stop.clone(), peaks.clone());
        // Long enough that only a hang times out: a write is answered within the API's
        // 5 s request timeout, a refusal at once.
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let mut tasks = Vec::with_capacity(STORM_WRITES);
        for i in 0..STORM_WRITES {
            let (key, value) = (i % KEYS, i % DISTINCT_VALUES);
            let url = format!("http://{}/v1/kv/storm-{key}", cluster.api(1 + (i % 3) as u64));
            let request = client.put(url).body(values[value].clone());
            tasks.push(tokio::spawn(async move {
                match request.send().await {
                    Ok(response) => {
                        let status = response.status().as_u16();
                        let body = response.text().await.unwrap_or_default();
                        Answer { key, value, status, body }
                    }
                    Err(e) => Answer { key, value, status: 0, body: e.to_string() },
                }
            }));
        }
        let mut answers = Vec::with_capacity(STORM_WRITES);
        for task in tasks {
            answers.push(task.await.expect("storm task"));
        }
        stop.store(true, Ordering::Relaxed);
        sampler.join().expect("sampler");

        let term_after = cluster.status(leader).await.map(|s| s["term"].clone());
        let mut by_outcome: BTreeMap<String, usize> = BTreeMap::new();
        let mut unexpected = Vec::new();
        // The latest acknowledged value of each key: (index, value).
        let mut latest: BTreeMap<usize, (u64, usize)> = BTreeMap::new();
        for answer in &answers {
            let json: Value = serde_json::from_str(&answer.body).unwrap_or(Value::Null);
            let code = json["error"]["code"].as_str().unwrap_or("").to_string();
            *by_outcome.entry(format!("{} {code}", answer.status)).or_default() += 1;
            match (answer.status, code.as_str()) {
                (200, _) => {
                    let index = json["index"].as_u64().expect("200 carries the index");
                    let slot = latest.entry(answer.key).or_insert((index, answer.value));
                    if index > slot.0 {
                        *slot = (index, answer.value);
                    }
                }
                (503, "overloaded") => {}
                _ => unexpected.push(answer),
            }
        }
        eprintln!("storm outcomes: {by_outcome:?}");
        assert!(
            unexpected.is_empty(),
            "{} writes were answered neither 200 nor 503 overloaded (term {term_before} before, \
             {term_after:?} after), first: {:?}\n{}",
            unexpected.len(),
            unexpected.first(),
            cluster.logs_tail()
        );
        assert!(
            by_outcome.get("503 overloaded").copied().unwrap_or(0) > 0,
            "the storm never hit a bound: {by_outcome:?}"
        );
        assert!(!latest.is_empty(), "no write was accepted: {by_outcome:?}");

        let peaks = peaks.lock().unwrap().clone();
        let mut over = Vec::new();
        for (id, peak) in &peaks {
            let base = baseline[id];
            let anon_bound_kib = base.anon_kib + anon_growth_bound_bytes() / 1024;
            // Mapped WAL pages are resident only for bytes the files hold.
            let wal_kib = dir_size(&cluster.data_dir(*id).join("wal")) / 1024;
            let total_bound_kib = anon_bound_kib + base.file_kib + wal_kib;
            eprintln!(
                "node {id}: idle RSS {} MiB (anon {} MiB); peak RSS {} MiB (anon {} MiB, file {} MiB); \
                 bounds: anon {} MiB, total {} MiB",
                base.total_kib / 1024,
                base.anon_kib / 1024,
                peak.total_kib / 1024,
                peak.anon_kib / 1024,
                peak.file_kib / 1024,
                anon_bound_kib / 1024,
                total_bound_kib / 1024
            );
            if peak.anon_kib > anon_bound_kib {
                over.push(format!(
                    "node {id}: anonymous RSS peaked at {} KiB, over the bound of {anon_bound_kib} KiB",
                    peak.anon_kib
                ));
            }
            if peak.total_kib > total_bound_kib {
                over.push(format!(
                    "node {id}: VmRSS peaked at {} KiB, over the bound of {total_bound_kib} KiB",
                    peak.total_kib
                ));
            }
        }
        assert!(over.is_empty(), "{}", over.join("\n"));

        // Every acknowledged write reads back: each key holds the value of its latest
        // acknowledged write (refused writes proposed nothing, so no other write can win).
        let leader = cluster.wait_for_leader(Duration::from_secs(20)).await;
        for (key, (index, value)) in &latest {
            let url = format!("http://{}/v1/kv/storm-{key}", cluster.api(leader));
            let response = cluster.client.get(url).send().await.expect("read back");
            assert_eq!(response.status().as_u16(), 200, "storm-{key}");
            let got = response.bytes().await.expect("read back body");
            assert!(
                got == values[*value],
                "storm-{key}: the write acknowledged at index {index} (value {value}) does not \
                 read back ({} bytes, starting {:?})",
                got.len(),
                &got[..got.len().min(8)]
            );
        }
    });
}
