//! Reads cannot cost the cluster its leader. A range read's page is up to 4 MiB of JSON,
//! which takes milliseconds of CPU to build; the raft loop and the peer links are tasks on
//! the same runtime as the client connections, so pages built on it hold back every hop
//! of a replication round, heartbeats included.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{runtime, Cluster, ClusterSpec};

/// Values of the largest size a client may write, so that a page holds four of them.
const VALUE_BYTES: usize = 1 << 20;
const KEYS: usize = 8;
const READERS: usize = 96;
const STORM: Duration = Duration::from_secs(8);

#[test]
fn a_storm_of_large_range_reads_keeps_the_leader_and_the_writes() {
    runtime().block_on(async {
        let cluster = Arc::new(Cluster::start(ClusterSpec::default()));
        let leader = cluster.wait_for_leader(Duration::from_secs(20)).await;
        let value = "v".repeat(VALUE_BYTES - 16);
        for i in 0..KEYS {
            cluster
                .put_eventually(&format!("big-{i}"), &value, Duration::from_secs(10))
                .await;
        }
        let term_before = cluster.status_u64(leader, "term").await;

        // A page this large is built off the client runtime: the same answer as any other.
        let page = reqwest::get(format!("http://{}/v1/kv?prefix=big-", cluster.api(leader)))
            .await
            .expect("range read");
        assert_eq!(page.status(), 200);
        assert_eq!(page.headers()["content-type"], "application/json");
        assert!(page.headers().contains_key("x-raft-index"));
        let body: serde_json::Value = page.json().await.expect("a JSON page");
        let kvs = body["kvs"].as_array().expect("kvs");
        assert_eq!(kvs.len(), 4, "a 4 MiB page holds four values of 1 MiB");
        assert_eq!(kvs[0]["key"], "big-0");
        assert_eq!(kvs[0]["value"], value.as_str());
        assert_eq!(body["more"], true);

        let stop = Arc::new(AtomicBool::new(false));
        let pages = Arc::new(AtomicU64::new(0));
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let mut readers = Vec::new();
        for r in 0..READERS {
            let url = format!(
                "http://{}/v1/kv?prefix=big-&consistency=stale",
                cluster.api(1 + (r % 3) as u64)
            );
            let (client, stop, pages) = (client.clone(), stop.clone(), pages.clone());
            readers.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(response) = client.get(&url).send().await {
                        if response.bytes().await.is_ok() {
                            pages.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }));
        }

        // One writer through the leader meanwhile: every write must succeed, and promptly.
        let started = Instant::now();
        let mut slowest = Duration::ZERO;
        let mut failures = Vec::new();
        let mut writes = 0;
        while started.elapsed() < STORM {
            let sent = Instant::now();
            match cluster.put(leader, "small", &writes.to_string()).await {
                Ok(_) => slowest = slowest.max(sent.elapsed()),
                Err(e) => failures.push(e),
            }
            writes += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop.store(true, Ordering::Relaxed);
        for reader in readers {
            reader.await.unwrap();
        }
        let term_after = cluster.status_u64(leader, "term").await;
        let pages = pages.load(Ordering::Relaxed);
        eprintln!(
            "{pages} pages read, {writes} writes, slowest {slowest:?}, {} failed",
            failures.len()
        );
        assert!(pages > 0, "no range read completed");
        assert_eq!(
            term_after,
            term_before,
            "range reads cost the leader its term ({pages} pages read during the storm)\n{}",
            cluster.logs_tail()
        );
        assert!(
            failures.is_empty(),
            "{} of {writes} writes failed during a storm of range reads, first: {:?}",
            failures.len(),
            failures.first()
        );
    });
}
