//! Watch and the change feed (issue 15) against real nodes.
//!
//! The model is the log itself: after the run, the test reads every entry from
//! `GET /v1/log`, replays the puts, deletes and CASes on a map, and derives the changes a
//! watcher must have seen (a failed CAS and a delete of an absent key change nothing). The
//! watcher's stream must equal them exactly: same indexes, same order, none missing, none
//! twice, across a leader SIGKILL and a SIGKILL and restart of the node it watches.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{runtime, Cluster, ClusterSpec};

/// One change, as a watcher sees it and as the model derives it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Change {
    index: u64,
    key: String,
    value: Option<String>,
}

fn change_of(line: &Value) -> Option<Change> {
    Some(Change {
        index: line["index"].as_u64()?,
        key: line["key"].as_str()?.to_string(),
        value: match line["op"].as_str()? {
            "put" => Some(line["value"].as_str()?.to_string()),
            "delete" => None,
            other => panic!("unknown op {other}: {line}"),
        },
    })
}

/// What a following watcher has seen so far.
#[derive(Default)]
struct Seen {
    changes: Vec<Change>,
    /// Every change up to here was delivered (from events and progress lines).
    position: u64,
    /// `X-Raft-Served-By` of each stream opened.
    served_by: Vec<u64>,
    /// Streams opened (reconnections + 1).
    streams: u64,
    /// Final error lines and non-200 answers.
    errors: Vec<String>,
}

/// Follows `path` (a watch or the change feed) on the node at `addr` from `from`, and keeps
/// following it, reconnecting from the last index seen plus one, until `stop`.
async fn follow(
    addr: String,
    path: String,
    from: u64,
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
) {
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let mut next = from;
    while !stop.load(Ordering::Relaxed) {
        let separator = if path.contains('?') { '&' } else { '?' };
        let url = format!("http://{addr}{path}{separator}from_index={next}");
        let mut response = match client.get(&url).send().await {
            Ok(response) => response,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if response.status().as_u16() != 200 {
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            seen.lock()
                .unwrap()
                .errors
                .push(format!("{status}: {body}"));
            if status.as_u16() == 410 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        {
            let mut seen = seen.lock().unwrap();
            seen.streams += 1;
            let served_by = response
                .headers()
                .get("x-raft-served-by")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            seen.served_by.push(served_by);
        }
        let mut pending = Vec::new();
        loop {
            let chunk = tokio::select! {
                chunk = response.chunk() => chunk,
                () = tokio::time::sleep(Duration::from_millis(200)) => {
                    if stop.load(Ordering::Relaxed) { return; }
                    continue;
                }
            };
            let Ok(Some(chunk)) = chunk else { break };
            pending.extend_from_slice(&chunk);
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                let line: Value = serde_json::from_slice(&line).expect("a JSON line");
                let mut seen = seen.lock().unwrap();
                if let Some(change) = change_of(&line) {
                    assert!(
                        change.index >= next,
                        "an event at {} came on a stream from {next}",
                        change.index
                    );
                    seen.position = seen.position.max(change.index);
                    next = change.index + 1;
                    seen.changes.push(change);
                } else if let Some(progress) = line["progress"].as_u64() {
                    seen.position = seen.position.max(progress);
                    next = next.max(progress + 1);
                } else if line.get("error").is_some() {
                    seen.errors.push(line.to_string());
                    if let Some(resume) = line["error"]["resume_index"].as_u64() {
                        next = resume;
                    }
                }
            }
        }
    }
}

/// Every entry of node `id`'s log, from index 1 (the log must not be compacted).
async fn whole_log(c: &Cluster, id: u64, last: u64) -> Vec<Value> {
    let mut entries = Vec::new();
    let mut from = 1;
    while from <= last {
        let url = format!("http://{}/v1/log?from={from}&limit=1000", c.api(id));
        let page: Vec<Value> = c
            .client
            .get(url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(!page.is_empty(), "the log of node {id} ends before {last}");
        for entry in page {
            let index = entry["index"].as_u64().unwrap();
            assert_eq!(index, from, "the log of node {id} skips to {index}");
            from = index + 1;
            entries.push(entry);
        }
    }
    entries.truncate((last) as usize);
    entries
}

/// The changes the log makes, replayed on a map from an empty state.
fn model_changes(log: &[Value]) -> Vec<Change> {
    let mut state: BTreeMap<String, String> = BTreeMap::new();
    let mut changes = Vec::new();
    for entry in log {
        if entry["kind"] != "normal" {
            continue;
        }
        let index = entry["index"].as_u64().unwrap();
        let data = &entry["data"];
        let key = data["key"].as_str().unwrap().to_string();
        let text = |name: &str| data[name].as_str().map(str::to_string);
        match data["op"].as_str().unwrap() {
            "put" => {
                state.insert(key.clone(), text("value").unwrap());
                changes.push(Change {
                    index,
                    key,
                    value: text("value"),
                });
            }
            "delete" => {
                if state.remove(&key).is_some() {
                    changes.push(Change {
                        index,
                        key,
                        value: None,
                    });
                }
            }
            "cas" => {
                let current = state.get(&key).cloned();
                if current != text("expected") {
                    continue;
                }
                match text("value") {
                    Some(value) => {
                        state.insert(key.clone(), value.clone());
                        changes.push(Change {
                            index,
                            key,
                            value: Some(value),
                        });
                    }
                    None if current.is_some() => {
                        state.remove(&key);
                        changes.push(Change {
                            index,
                            key,
                            value: None,
                        });
                    }
                    None => {}
                }
            }
            other => panic!("unknown op {other} at {index}"),
        }
    }
    changes
}

/// A tiny deterministic generator (no seed file needed to replay: the seed is printed).
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Writers that put, delete and CAS keys under `w/` (watched) and `x/` (not), on any
/// running node, until `stop`; failures (a node being killed) are ignored: the log, not the
/// acknowledgements, is the model.
fn start_writers(
    c: &Arc<Cluster>,
    writers: u64,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<u64>> {
    (0..writers)
        .map(|w| {
            let c = c.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut rng = XorShift(0x9E37_79B9_7F4A_7C15 ^ (w + 1));
                let mut done: u64 = 0;
                while !stop.load(Ordering::Relaxed) {
                    let running = c.running();
                    if running.is_empty() {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                    let node = running[rng.below(running.len() as u64) as usize];
                    let space = if rng.below(4) == 0 { "x" } else { "w" };
                    let key = format!("{space}/{}", rng.below(12));
                    let value = format!("v{w}-{done}");
                    let _ = match rng.below(10) {
                        0..=5 => c.put(node, &key, &value).await,
                        6 | 7 => c.delete(node, &key).await,
                        _ => {
                            let expected = format!("v{w}-{}", done.saturating_sub(rng.below(3)));
                            let expected = (rng.below(3) != 0).then_some(expected.as_str());
                            c.cas(node, &key, expected, Some(&value)).await
                        }
                    };
                    done += 1;
                }
                done
            })
        })
        .collect()
}

async fn commit_index_of_leader(c: &Cluster) -> u64 {
    let leader = c.wait_for_leader(Duration::from_secs(20)).await;
    // A no-op commits the leader's term and everything before it.
    c.put_eventually("sync/marker", "done", Duration::from_secs(20))
        .await;
    c.status(leader).await.unwrap()["commit_index"]
        .as_u64()
        .unwrap()
}

async fn wait_position(seen: &Mutex<Seen>, index: u64, within: Duration, c: &Cluster) {
    let deadline = Instant::now() + within;
    while seen.lock().unwrap().position < index {
        if Instant::now() > deadline {
            let seen = seen.lock().unwrap();
            panic!(
                "the watcher reached only {} of {index}; errors {:?}\n{}",
                seen.position,
                seen.errors,
                c.logs_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn watcher_from_an_index_sees_exactly_the_committed_changes_on_its_prefix_across_crashes() {
    runtime().block_on(async {
        // No snapshot during the run: the model reads the whole log back.
        let spec = ClusterSpec {
            snapshot_threshold: 1_000_000,
            ..ClusterSpec::default()
        };
        let c = Arc::new(Cluster::start(spec));
        let leader = c.wait_for_leader(Duration::from_secs(10)).await;
        // Some history before the watch starts, so from_index reaches back into the WAL.
        for i in 0..30 {
            c.put_eventually(&format!("w/{}", i % 12), &format!("early-{i}"), Duration::from_secs(10))
                .await;
        }
        let from = c.status(leader).await.unwrap()["commit_index"].as_u64().unwrap() - 10;
        let watched = c.running().into_iter().find(|id| *id != leader).unwrap();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop_watch = Arc::new(AtomicBool::new(false));
        let watcher = tokio::spawn(follow(
            c.api(watched).to_string(),
            "/v1/watch?prefix=w/".to_string(),
            from,
            seen.clone(),
            stop_watch.clone(),
        ));
        let stop_writes = Arc::new(AtomicBool::new(false));
        let writers = start_writers(&c, 4, &stop_writes);
        tokio::time::sleep(Duration::from_millis(1500)).await;

        // The leader dies: the watched follower keeps streaming under the next leader.
        c.kill(leader);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        c.spawn(leader);
        tokio::time::sleep(Duration::from_millis(1000)).await;

        // The watched node itself dies and comes back: the watcher reconnects from its
        // last index and gets the rest from the node's WAL.
        let before_restart = seen.lock().unwrap().position;
        c.kill(watched);
        tokio::time::sleep(Duration::from_millis(800)).await;
        c.spawn(watched);
        tokio::time::sleep(Duration::from_millis(2000)).await;

        stop_writes.store(true, Ordering::Relaxed);
        let mut writes = 0;
        for writer in writers {
            writes += writer.await.unwrap();
        }
        let last = commit_index_of_leader(&c).await;
        wait_position(&seen, last, Duration::from_secs(30), &c).await;
        stop_watch.store(true, Ordering::Relaxed);
        let _ = watcher.await;

        let log = whole_log(&c, watched, last).await;
        let expected: Vec<Change> = model_changes(&log)
            .into_iter()
            .filter(|change| change.index >= from && change.key.starts_with("w/"))
            .collect();
        let seen = seen.lock().unwrap();
        let got: Vec<Change> = seen.changes.iter().filter(|c| c.index <= last).cloned().collect();
        eprintln!(
            "watch: {writes} writes, log to {last}, {} changes on w/ from {from}, {} streams, position {} before the restart",
            expected.len(),
            seen.streams,
            before_restart
        );
        assert!(seen.streams >= 2, "the watcher never reconnected: {}", seen.streams);
        assert!(seen.served_by.iter().all(|id| *id == watched), "{:?}", seen.served_by);
        assert!(expected.len() > 50, "too few changes to test anything: {}", expected.len());
        if got != expected {
            let first_difference = got
                .iter()
                .zip(&expected)
                .position(|(a, b)| a != b)
                .unwrap_or(got.len().min(expected.len()));
            panic!(
                "the watcher's changes differ from the log's at position {first_difference}: got {:?}, expected {:?} ({} vs {} changes; errors {:?})",
                got.get(first_difference),
                expected.get(first_difference),
                got.len(),
                expected.len(),
                seen.errors
            );
        }
    });
}

/// A range read and the index it names.
async fn read_prefix(c: &Cluster, id: u64, prefix: &str) -> (BTreeMap<String, String>, u64) {
    let url = format!(
        "http://{}/v1/kv?prefix={prefix}&consistency=stale&limit=10000",
        c.api(id)
    );
    let body: Value = c
        .client
        .get(url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["more"], false, "{body}");
    let map = body["kvs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|kv| {
            (
                kv["key"].as_str().unwrap().to_string(),
                kv["value"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    (map, body["index"].as_u64().unwrap())
}

#[test]
fn watcher_behind_a_compaction_gets_410_and_recovers_by_range_read_and_watch() {
    runtime().block_on(async {
        let spec = ClusterSpec {
            nodes: 1,
            snapshot_threshold: 40,
            snapshot_trailing_entries: 5,
            ..ClusterSpec::default()
        };
        let c = Arc::new(Cluster::start(spec));
        let node = c.wait_for_leader(Duration::from_secs(10)).await;
        for i in 0..150 {
            let key = format!("c/{}", i % 17);
            if i % 5 == 4 {
                c.delete(node, &key).await.unwrap();
            } else {
                c.put(node, &key, &format!("v{i}")).await.unwrap();
            }
        }
        // A snapshot is written, and the log compacted, in the background after the apply
        // that crosses the threshold: wait for it rather than expect it at once.
        let deadline = Instant::now() + Duration::from_secs(10);
        let (status, first_log_index) = loop {
            let status = c.status(node).await.unwrap();
            let first_log_index = status["first_log_index"].as_u64().unwrap();
            if first_log_index > 1 {
                break (status, first_log_index);
            }
            assert!(
                Instant::now() < deadline,
                "nothing was compacted 10 s after 150 writes: {status}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let url = format!("http://{}/v1/watch?prefix=c/&from_index=1", c.api(node));
        let refused = c.client.get(url).send().await.unwrap();
        assert_eq!(refused.status().as_u16(), 410);
        let body: Value = refused.json().await.unwrap();
        assert_eq!(body["error"]["code"], "compacted", "{body}");
        let first_index = body["error"]["first_index"].as_u64().unwrap();
        assert!(first_index >= first_log_index, "{body} vs {status}");

        // Recovery: read the range, then watch from the index it names plus one.
        let (mut model, index) = read_prefix(&c, node, "c/").await;
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let watcher = tokio::spawn(follow(
            c.api(node).to_string(),
            "/v1/watch?prefix=c/".to_string(),
            index + 1,
            seen.clone(),
            stop.clone(),
        ));
        // The writers start once the watch stream is open: with a snapshot every 40
        // entries, a watcher that connects late (a loaded CI machine) would find its start
        // compacted again and get a second 410, which is the documented answer but not
        // what this test is about (seen in CI: "reached only 0 of 4400").
        let opened = Instant::now() + Duration::from_secs(10);
        while seen.lock().unwrap().streams == 0 && seen.lock().unwrap().errors.is_empty() {
            assert!(
                Instant::now() < opened,
                "the watch stream did not open within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            seen.lock().unwrap().errors.is_empty(),
            "{:?}",
            seen.lock().unwrap().errors
        );
        let stop_writes = Arc::new(AtomicBool::new(false));
        let writers = start_writers_on(&c, node, "c/", &stop_writes);
        tokio::time::sleep(Duration::from_millis(2000)).await;
        stop_writes.store(true, Ordering::Relaxed);
        let _ = writers.await;
        let (final_state, final_index) = read_prefix(&c, node, "c/").await;
        wait_position(&seen, final_index, Duration::from_secs(20), &c).await;
        stop.store(true, Ordering::Relaxed);
        let _ = watcher.await;
        let first_log_index = c.status(node).await.unwrap()["first_log_index"]
            .as_u64()
            .unwrap();
        let seen = seen.lock().unwrap();
        let mut previous = index;
        for change in seen.changes.iter().filter(|c| c.index <= final_index) {
            assert!(
                change.index > previous,
                "index {} after {previous}: duplicated or out of order",
                change.index
            );
            previous = change.index;
            match &change.value {
                Some(value) => model.insert(change.key.clone(), value.clone()),
                None => model.remove(&change.key),
            };
        }
        assert!(
            seen.changes.len() > 20,
            "too few changes: {}",
            seen.changes.len()
        );
        assert_eq!(
            model, final_state,
            "range read + watch differ from the state at {final_index}"
        );
        assert!(
            first_log_index > index,
            "the watch never crossed a compaction ({first_log_index} <= {index})"
        );
    });
}

/// One writer putting and deleting keys under `prefix` on `node` until `stop`.
fn start_writers_on(
    c: &Arc<Cluster>,
    node: u64,
    prefix: &str,
    stop: &Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    let (c, stop, prefix) = (c.clone(), stop.clone(), prefix.to_string());
    tokio::spawn(async move {
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let key = format!("{prefix}{}", i % 23);
            let _ = if i % 4 == 3 {
                c.delete(node, &key).await
            } else {
                c.put(node, &key, &format!("late{i}")).await
            };
            i += 1;
        }
    })
}

/// `GET /metrics` of node `id` as name -> value.
async fn metrics(c: &Cluster, id: u64) -> BTreeMap<String, f64> {
    let text = c
        .get_quick(id, "/metrics")
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            Some((parts.next()?.to_string(), parts.next()?.parse().ok()?))
        })
        .collect()
}

#[test]
fn stalled_watcher_is_cut_with_a_resume_index_and_writes_go_on() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    runtime().block_on(async {
        let c = Arc::new(Cluster::start_with_config(
            ClusterSpec {
                nodes: 1,
                ..ClusterSpec::default()
            },
            serde_json::json!({"watch_buffer_bytes_max": 65536}),
        ));
        let node = c.wait_for_leader(Duration::from_secs(10)).await;
        let first = c.put(node, "s/0", "x").await.unwrap()["index"]
            .as_u64()
            .unwrap();
        // A client that asks for the feed and then never reads.
        let mut stalled = tokio::net::TcpStream::connect(c.api(node)).await.unwrap();
        stalled
            .write_all(
                format!("GET /v1/changes?from_index={first} HTTP/1.1\r\nhost: x\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .unwrap();
        let value = "v".repeat(16 << 10);
        let started = Instant::now();
        let mut writes = 0;
        let mut cut = false;
        // The kernel buffers a few MiB of socket data before the node's own buffer fills.
        while started.elapsed() < Duration::from_secs(60) {
            for _ in 0..64 {
                c.put(node, &format!("s/{}", writes % 50), &value)
                    .await
                    .unwrap();
                writes += 1;
            }
            let m = metrics(&c, node).await;
            if m["raftlog_watchers_cut_total"] >= 1.0 {
                assert_eq!(m["raftlog_watchers"], 0.0, "a cut watcher still counts");
                cut = true;
                break;
            }
        }
        assert!(
            cut,
            "{writes} writes of 16 KiB never cut the stalled watcher"
        );
        // Writes kept being acknowledged; the client, reading at last, finds where to resume.
        let mut received = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        let deadline = Instant::now() + Duration::from_secs(20);
        let resume = loop {
            assert!(Instant::now() < deadline, "no resume line after the cut");
            let n = tokio::time::timeout(Duration::from_secs(5), stalled.read(&mut buf))
                .await
                .expect("the stream stalls after the cut")
                .unwrap();
            assert!(n > 0, "the connection closed without a resume line");
            received.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&received);
            if let Some(at) = text.find("\"watcher_too_slow\"") {
                let line_start = text[..at].rfind('{').unwrap_or(0);
                let tail = &text[line_start..];
                let needle = "\"resume_index\":";
                if let Some(r) = tail.find(needle) {
                    let digits: String = tail[r + needle.len()..]
                        .chars()
                        .take_while(|c| c.is_ascii_digit())
                        .collect();
                    if !digits.is_empty() && tail[r + needle.len() + digits.len()..].contains('\n')
                    {
                        break digits.parse::<u64>().unwrap();
                    }
                }
            }
        };
        // Every event before the resume index was delivered, and none after it.
        let text = String::from_utf8_lossy(&received);
        let max_delivered = text
            .match_indices("{\"index\":")
            .filter_map(|(at, pat)| {
                text[at + pat.len()..]
                    .split(',')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .max()
            .unwrap_or(0);
        assert!(
            max_delivered < resume,
            "delivered {max_delivered}, resume at {resume}"
        );
        let resumed = c
            .client
            .get(format!(
                "http://{}/v1/changes?from_index={resume}",
                c.api(node)
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(
            resumed.status().as_u16(),
            200,
            "resuming from {resume} was refused"
        );
    });
}

#[test]
fn thousand_idle_watchers_stay_within_their_memory_and_thread_bound() {
    use tokio::io::AsyncWriteExt;
    const WATCHERS: usize = 1000;
    // Measured: about 14 MiB (15 KB each: a task, its connection, hyper buffers) and no
    // thread for 1,000 (docs/BENCHMARKS.md, "Watch"); twice that, rounded up, is the bound.
    const RSS_GROWTH_KIB_MAX: u64 = 32 << 10;
    runtime().block_on(async {
        let c = Cluster::configure_with(
            ClusterSpec { nodes: 1, ..ClusterSpec::default() },
            serde_json::json!({"max_client_connections": 1100}),
        );
        c.spawn_with_nofile_limit(1, 4096, 4096);
        let node = c.wait_for_leader(Duration::from_secs(10)).await;
        c.put(node, "i/0", "x").await.unwrap();
        let pid = c.pid(node).unwrap();
        let threads = || {
            std::fs::read_dir(format!("/proc/{pid}/task")).map(|d| d.count()).unwrap_or(0)
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (rss_before, threads_before) = (support::rss(pid).unwrap(), threads());
        let mut streams = Vec::with_capacity(WATCHERS);
        for i in 0..WATCHERS {
            let mut stream = tokio::net::TcpStream::connect(c.api(node)).await.unwrap();
            stream
                .write_all(format!("GET /v1/watch?prefix=i/{i} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
                .await
                .unwrap();
            streams.push(stream);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let open = metrics(&c, node).await["raftlog_watchers"];
            if open as usize == WATCHERS {
                break;
            }
            assert!(Instant::now() < deadline, "only {open} watchers opened");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Writes reach every watcher's task (each filters by its prefix).
        for i in 0..20 {
            c.put(node, &format!("i/{i}"), "y").await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (rss_after, threads_after) = (support::rss(pid).unwrap(), threads());
        let growth = rss_after.total_kib.saturating_sub(rss_before.total_kib);
        eprintln!(
            "{WATCHERS} idle watchers: RSS {} -> {} KiB (+{growth} KiB, {} bytes each), threads {threads_before} -> {threads_after}",
            rss_before.total_kib,
            rss_after.total_kib,
            growth * 1024 / WATCHERS as u64
        );
        assert!(growth < RSS_GROWTH_KIB_MAX, "{WATCHERS} watchers took {growth} KiB");
        assert!(threads_after <= threads_before + 2, "watchers took threads: {threads_before} -> {threads_after}");
        drop(streams);
        let deadline = Instant::now() + Duration::from_secs(20);
        while metrics(&c, node).await["raftlog_watchers"] > 0.0 {
            assert!(Instant::now() < deadline, "closed watchers are still counted");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
}

#[test]
fn watchers_beyond_the_cap_are_refused_and_sse_is_served_on_request() {
    runtime().block_on(async {
        let c = Cluster::start_with_config(
            ClusterSpec {
                nodes: 1,
                ..ClusterSpec::default()
            },
            serde_json::json!({"watchers_max": 1}),
        );
        let node = c.wait_for_leader(Duration::from_secs(10)).await;
        let index = c.put(node, "e/1", "one").await.unwrap()["index"]
            .as_u64()
            .unwrap();
        let mut sse = c
            .client
            .get(format!(
                "http://{}/v1/watch?prefix=e/&from_index={index}",
                c.api(node)
            ))
            .header("accept", "text/event-stream")
            .send()
            .await
            .unwrap();
        assert_eq!(sse.status().as_u16(), 200);
        assert_eq!(sse.headers()["content-type"], "text/event-stream");
        let chunk = sse.chunk().await.unwrap().unwrap();
        let text = String::from_utf8_lossy(&chunk);
        assert!(
            text.starts_with(&format!("id: {index}\nevent: put\ndata: {{")),
            "{text}"
        );
        let second = c
            .client
            .get(format!("http://{}/v1/changes", c.api(node)))
            .send()
            .await
            .unwrap();
        assert_eq!(second.status().as_u16(), 503);
        let body: Value = second.json().await.unwrap();
        assert_eq!(body["error"]["code"], "overloaded", "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("watchers_max"),
            "{body}"
        );
    });
}

#[test]
fn cli_watch_prints_changes_as_they_commit() {
    use std::io::{BufRead, BufReader};
    runtime().block_on(async {
        let c = Cluster::start(ClusterSpec {
            nodes: 1,
            ..ClusterSpec::default()
        });
        let node = c.wait_for_leader(Duration::from_secs(10)).await;
        let first = c.put(node, "cli/a", "1").await.unwrap()["index"]
            .as_u64()
            .unwrap();
        let mut child = std::process::Command::new(support::raftlog_bin())
            .args([
                "watch",
                "cli/",
                "--from",
                &first.to_string(),
                "--addr",
                c.api(node),
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("raftlog watch runs");
        c.put(node, "other", "x").await.unwrap();
        let second = c.delete(node, "cli/a").await.unwrap()["index"]
            .as_u64()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let lines = tokio::task::spawn_blocking(move || {
            BufReader::new(stdout)
                .lines()
                .take(2)
                .map(|l| l.unwrap())
                .collect::<Vec<_>>()
        });
        let lines = tokio::time::timeout(Duration::from_secs(10), lines)
            .await
            .expect("raftlog watch printed two lines")
            .unwrap();
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(
            lines,
            [
                format!("{first} put cli/a 1"),
                format!("{second} delete cli/a")
            ]
        );
    });
}

#[test]
fn follower_watch_ends_with_compacted_when_a_snapshot_from_the_leader_replaces_its_history() {
    runtime().block_on(async {
        let spec = ClusterSpec {
            snapshot_threshold: 40,
            snapshot_trailing_entries: 5,
            ..ClusterSpec::default()
        };
        let c = Arc::new(Cluster::configure(spec));
        for id in 1..=3 {
            c.spawn_with_env(id, &[("RAFTLOG_TEST_FAULTS", "1")]);
        }
        let leader = c.wait_for_leader(Duration::from_secs(10)).await;
        let follower = c.running().into_iter().find(|id| *id != leader).unwrap();
        let start = c.put(leader, "f/0", "x").await.unwrap()["index"]
            .as_u64()
            .unwrap();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let watcher = tokio::spawn(follow(
            c.api(follower).to_string(),
            "/v1/changes".to_string(),
            start,
            seen.clone(),
            stop.clone(),
        ));
        wait_position(&seen, start, Duration::from_secs(10), &c).await;
        let isolate = |on: bool| {
            let url = format!("http://{}/v1/debug/isolate?on={on}", c.api(follower));
            let client = c.client.clone();
            async move { client.post(url).send().await.unwrap().status().as_u16() }
        };
        assert_eq!(isolate(true).await, 200);
        for i in 0..200 {
            c.put(leader, &format!("f/{}", i % 7), &format!("v{i}"))
                .await
                .unwrap();
        }
        assert_eq!(isolate(false).await, 200);
        // The follower installs the leader's snapshot: its stream ends with `compacted`,
        // and resuming from where it stopped is refused with the index to start over from.
        let ended = tokio::time::timeout(Duration::from_secs(30), watcher).await;
        stop.store(true, Ordering::Relaxed);
        assert!(
            ended.is_ok(),
            "the follower's watch never ended\n{}",
            c.logs_tail()
        );
        let seen = seen.lock().unwrap();
        assert!(
            seen.errors.len() >= 2,
            "expected a compacted line and a 410: {:?}",
            seen.errors
        );
        let line: Value = serde_json::from_str(&seen.errors[0]).unwrap();
        assert_eq!(line["error"]["code"], "compacted", "{line}");
        let first_index = line["error"]["first_index"].as_u64().unwrap();
        assert!(
            first_index > seen.position + 1,
            "{line} at {}",
            seen.position
        );
        let refusal = seen.errors.last().unwrap();
        assert!(refusal.starts_with("410"), "{refusal}");
        assert!(
            refusal.contains(&format!("\"first_index\":{first_index}")),
            "{refusal}"
        );
        // Everything sent before the snapshot was a change the log made, in order.
        let indexes: Vec<u64> = seen.changes.iter().map(|c| c.index).collect();
        assert!(indexes.windows(2).all(|w| w[0] < w[1]), "{indexes:?}");
    });
}
