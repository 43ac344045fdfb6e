//! Issue 12, diskfull: a node whose disk fills up stops taking writes (`507 no_space`),
//! keeps answering reads, status and `/metrics`, keeps its log intact, and resumes on its
//! own once space is freed; `storage_quota_bytes` refuses writes before the disk is full.
//!
//! The full-disk tests put one node's data directory on its own small tmpfs (they need
//! root to mount it and say so when skipped), fill the tmpfs with a ballast file, write
//! until the node runs out of space, then delete the ballast: that is how space is freed.

mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::json;
use support::tmpfs::{free_bytes, Tmpfs};
use support::{runtime, Cluster, ClusterSpec};

const TMPFS_BYTES: u64 = 48 << 20;
/// Free space left next to the ballast: a few WAL segments' worth.
const LEFT_FREE_BYTES: u64 = 4 << 20;
const VALUE_BYTES: usize = 32 << 10;

/// A cluster one of whose nodes keeps its data on a tmpfs. Dropping it kills the nodes
/// before unmounting, so the unmount never finds the filesystem busy.
struct FullDiskSetup {
    cluster: Cluster,
    tmpfs: Tmpfs,
    node: u64,
}

impl FullDiskSetup {
    fn new(node: u64) -> Option<FullDiskSetup> {
        let cluster = Cluster::configure(ClusterSpec {
            wal_segment_bytes: 1 << 20,
            ..ClusterSpec::default()
        });
        let tmpfs = Tmpfs::mount(&cluster.data_dir(node), TMPFS_BYTES)?;
        for id in 1..=3 {
            cluster.spawn(id);
        }
        Some(FullDiskSetup {
            cluster,
            tmpfs,
            node,
        })
    }

    fn ballast(&self) -> PathBuf {
        self.tmpfs.path.join("ballast")
    }

    /// Fills the tmpfs with a ballast file until `LEFT_FREE_BYTES` are left.
    fn place_ballast(&self) {
        use std::io::Write;
        let free = free_bytes(&self.tmpfs.path);
        let size = free.saturating_sub(LEFT_FREE_BYTES);
        let mut file = std::fs::File::create(self.ballast()).expect("create the ballast");
        let chunk = vec![0xA5u8; 1 << 20];
        let mut written = 0u64;
        while written < size {
            let n = (size - written).min(chunk.len() as u64) as usize;
            file.write_all(&chunk[..n]).expect("write the ballast");
            written += n as u64;
        }
    }
}

impl Drop for FullDiskSetup {
    fn drop(&mut self) {
        for id in self.cluster.running() {
            self.cluster.kill(id);
        }
        self.tmpfs.unmount();
    }
}

/// The value of metric `name` on node `id`, if it answers and exports it.
async fn metric(cluster: &Cluster, id: u64, name: &str) -> Option<f64> {
    let text = cluster.get_quick(id, "/metrics").await?.text().await.ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

fn value_for(key: &str) -> String {
    let mut value = format!("{key}:");
    while value.len() < VALUE_BYTES {
        value.push_str(key);
    }
    value
}

/// Writes through `via` until node `full` reports `raftlog_storage_no_space 1`,
/// recording acknowledged writes. Panics if `full` exits instead.
async fn write_until_out_of_space(
    setup: &FullDiskSetup,
    via: u64,
    acknowledged: &mut BTreeMap<String, String>,
) {
    let c = &setup.cluster;
    let full = setup.node;
    let deadline = Instant::now() + Duration::from_secs(90);
    for i in 0.. {
        let key = format!("k{i:05}");
        let value = value_for(&key);
        if let Ok(answer) = c.put(via, &key, &value).await {
            assert!(answer["index"].as_u64().is_some(), "{answer}");
            acknowledged.insert(key, value);
        }
        if i % 4 == 0 {
            if let Some(status) = c.wait_exit(full, Duration::ZERO) {
                panic!(
                    "node {full} exited ({status}) when its disk filled up, after {} \
                     acknowledged writes\n{}",
                    acknowledged.len(),
                    c.logs_tail()
                );
            }
            if metric(c, full, "raftlog_storage_no_space").await == Some(1.0) {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "node {full} never reported a full disk ({} bytes free on its tmpfs)\n{}",
            free_bytes(&setup.tmpfs.path),
            c.logs_tail()
        );
    }
}

/// The checks shared by both cases while node `full`'s disk is full.
async fn check_serving_while_full(setup: &FullDiskSetup, acknowledged: &BTreeMap<String, String>) {
    let c = &setup.cluster;
    let full = setup.node;
    let dir = c.data_dir(full).display().to_string();
    // Writes through it are refused, naming the directory, with nothing proposed.
    let before = c.status(full).await.expect("status of the full node");
    let (status, body) = c
        .put(full, "through-the-full-node", "v")
        .await
        .expect_err("a write through the full node");
    assert_eq!(status, 507, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).expect("a JSON error body");
    assert_eq!(body["error"]["code"], "no_space", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(&dir), "the message names {dir}: {message}");
    assert!(
        message.contains("free"),
        "the message gives the free space: {message}"
    );
    let after = c.status(full).await.expect("status of the full node");
    assert!(
        after["last_log_index"].as_u64() <= before["last_log_index"].as_u64(),
        "a refused write moved the log: {before} -> {after}"
    );
    // Reads, status and metrics still answer.
    let (key, value) = acknowledged.iter().next().expect("some acknowledged write");
    assert_eq!(
        c.get(full, key, "stale")
            .await
            .expect("a stale read on the full node"),
        Some(value.clone())
    );
    assert!(metric(c, full, "raftlog_storage_free_bytes")
        .await
        .is_some());
    let log = c.log_text(full);
    assert!(
        log.contains("no space left") && log.contains(&dir),
        "the node's log names the full directory:\n{}",
        c.logs_tail()
    );
    // A snapshot on the full disk fails (or fits); either way no temp file is left
    // behind for recovery to trip on, and the node goes on.
    let url = format!("http://{}/v1/snapshot", c.api(full));
    let _ = c.client.post(url).send().await;
    let leftovers: Vec<_> = std::fs::read_dir(c.data_dir(full).join("snapshots"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(
        !leftovers
            .iter()
            .any(|p| p.extension().is_some_and(|e| e == "tmp")),
        "a failed snapshot left {leftovers:?}"
    );
    assert!(
        c.wait_exit(full, Duration::ZERO).is_none(),
        "the full node exited\n{}",
        c.logs_tail()
    );
}

/// Deletes the ballast; waits until writes through node `full` succeed again (no restart).
async fn free_space_and_write_again(
    setup: &FullDiskSetup,
    acknowledged: &mut BTreeMap<String, String>,
) {
    let c = &setup.cluster;
    std::fs::remove_file(setup.ballast()).expect("remove the ballast");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let key = "after-space-was-freed".to_string();
        match c.put(setup.node, &key, "resumed").await {
            Ok(_) => {
                acknowledged.insert(key, "resumed".to_string());
                break;
            }
            Err(e) => assert!(
                Instant::now() < deadline,
                "writes through node {} did not resume after space was freed: {e:?}\n{}",
                setup.node,
                c.logs_tail()
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        metric(c, setup.node, "raftlog_storage_no_space").await,
        Some(0.0)
    );
}

/// Waits until node `id` has applied at least `index`.
async fn wait_applied(cluster: &Cluster, id: u64, index: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let applied = cluster
            .status(id)
            .await
            .and_then(|s| s["applied_index"].as_u64());
        if applied.is_some_and(|a| a >= index) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "node {id} did not apply {index} (at {applied:?})\n{}",
            cluster.logs_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Restarts node `full` (SIGKILL, start): it must start cleanly on its log, catch up,
/// and hold every acknowledged write.
async fn restart_and_check(setup: &FullDiskSetup, acknowledged: &BTreeMap<String, String>) {
    let c = &setup.cluster;
    let full = setup.node;
    c.kill(full);
    c.spawn(full);
    let leader = c.wait_for_leader(Duration::from_secs(15)).await;
    let commit = c.status(leader).await.expect("leader status")["commit_index"]
        .as_u64()
        .unwrap_or(0);
    wait_applied(c, full, commit).await;
    assert!(
        c.wait_exit(full, Duration::ZERO).is_none(),
        "node {full} did not restart cleanly\n{}",
        c.logs_tail()
    );
    for (key, value) in acknowledged {
        let got = c.get(full, key, "stale").await;
        let found = got.as_ref().ok().and_then(|v| v.as_deref()) == Some(value.as_str());
        assert!(
            found,
            "acknowledged write {key} missing on node {full} after its restart: {:?}",
            got.map(|v| v.map(|v| v.len()))
        );
    }
    support::check_acknowledged_readable(c, acknowledged).await;
}

/// A follower that cannot persist stops acknowledging (Raft tolerates it), refuses
/// writes through it, serves reads, and catches up by itself once space is freed.
#[test]
fn a_follower_with_a_full_disk_refuses_writes_and_resumes_once_space_is_freed() {
    let Some(setup) = FullDiskSetup::new(3) else {
        return;
    };
    runtime().block_on(async {
        let c = &setup.cluster;
        c.make_leader(1).await;
        setup.place_ballast();
        let mut acknowledged = BTreeMap::new();
        write_until_out_of_space(&setup, 1, &mut acknowledged).await;
        check_serving_while_full(&setup, &acknowledged).await;
        // The rest of the cluster keeps serving.
        let key = "while-a-follower-is-full".to_string();
        c.put(1, &key, "ok")
            .await
            .expect("a write through the leader");
        acknowledged.insert(key, "ok".to_string());
        free_space_and_write_again(&setup, &mut acknowledged).await;
        restart_and_check(&setup, &acknowledged).await;
    });
}

/// A leader that cannot persist refuses new writes (`507`), while what it already sent
/// its followers still commits; it resumes by itself once space is freed.
#[test]
fn a_leader_with_a_full_disk_refuses_writes_and_resumes_once_space_is_freed() {
    let Some(setup) = FullDiskSetup::new(1) else {
        return;
    };
    runtime().block_on(async {
        let c = &setup.cluster;
        c.make_leader(1).await;
        setup.place_ballast();
        let mut acknowledged = BTreeMap::new();
        write_until_out_of_space(&setup, 1, &mut acknowledged).await;
        check_serving_while_full(&setup, &acknowledged).await;
        free_space_and_write_again(&setup, &mut acknowledged).await;
        restart_and_check(&setup, &acknowledged).await;
    });
}

/// `storage_quota_bytes`: writes are refused (507, nothing proposed) once the data
/// directory reaches the quota, long before the disk is full; a snapshot that compacts
/// the log reclaims space and writes are accepted again, without a restart.
#[test]
fn the_storage_quota_refuses_writes_until_a_snapshot_reclaims_space() {
    const QUOTA_BYTES: u64 = 12 << 20;
    let cluster = Cluster::configure(ClusterSpec {
        wal_segment_bytes: 1 << 20,
        snapshot_trailing_entries: 0,
        ..ClusterSpec::default()
    });
    cluster.set_config_field("storage_quota_bytes", json!(QUOTA_BYTES));
    for id in 1..=3 {
        cluster.spawn(id);
    }
    runtime().block_on(async {
        let c = &cluster;
        let leader = c.wait_for_leader(Duration::from_secs(15)).await;
        // One key overwritten: the log grows, the state (and so a snapshot) does not.
        let value = value_for("quota");
        let used_at_start = metric(c, leader, "raftlog_storage_used_bytes").await;
        let mut refused = None;
        let mut accepted = 0u64;
        for _ in 0..2_000 {
            match c.put(leader, "quota", &value).await {
                Ok(_) => accepted += 1,
                Err(e) => {
                    refused = Some(e);
                    break;
                }
            }
        }
        let (status, body) = refused.unwrap_or_else(|| {
            panic!(
                "2000 writes of 32 KiB never hit the quota\n{}",
                c.logs_tail()
            )
        });
        assert_eq!(status, 507, "{body}");
        // The log grew by megabytes before the quota stopped it.
        eprintln!("{accepted} writes accepted; {used_at_start:?} bytes used at the start");
        assert!(
            accepted * VALUE_BYTES as u64 >= 2 << 20,
            "only {accepted} writes before the quota ({used_at_start:?} bytes used at the start)"
        );
        let body: serde_json::Value = serde_json::from_str(&body).expect("a JSON error body");
        assert_eq!(body["error"]["code"], "no_space", "{body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("storage_quota_bytes"), "{message}");
        assert!(
            message.contains(&c.data_dir(leader).display().to_string()),
            "{message}"
        );
        let used = metric(c, leader, "raftlog_storage_used_bytes")
            .await
            .unwrap_or(0.0);
        assert!(
            used <= (QUOTA_BYTES + (2 << 20)) as f64,
            "the quota was overrun by more than 2 MiB: {used} bytes used"
        );
        assert!(
            free_bytes(&c.data_dir(leader)) > 64 << 20,
            "the disk itself is nearly full; this test needs the quota to stop writes first"
        );
        // The first refusal may come from the estimate of what was written since the last
        // measurement, which overcounts; write on until a refusal outlasts a measurement,
        // after which usage cannot fall without a snapshot.
        let big = "q".repeat(VALUE_BYTES);
        let mut settled = false;
        for attempt in 0..400 {
            let first = c.put(leader, &format!("settle-{attempt}"), &big).await;
            if first.map_err(|e| e.0) != Err(507) {
                continue;
            }
            tokio::time::sleep(Duration::from_millis(1_200)).await;
            let again = c
                .put(leader, &format!("settle-{attempt}-again"), &big)
                .await;
            if again.map_err(|e| e.0) == Err(507) {
                settled = true;
                break;
            }
        }
        assert!(
            settled,
            "the quota never refused writes across a measurement"
        );
        // Nothing is proposed while refused: the log does not move.
        let before = c.status(leader).await.expect("status")["last_log_index"].as_u64();
        for attempt in 0..5 {
            let refused = c.put(leader, &format!("refused-{attempt}"), &big).await;
            assert_eq!(refused.map_err(|e| e.0), Err(507));
        }
        let after = c.status(leader).await.expect("status")["last_log_index"].as_u64();
        assert_eq!(before, after, "refused writes moved the log");
        // A snapshot compacts the log; the freed segments beyond the two kept for reuse
        // are deleted, and the next measurement clears the alarm.
        let url = format!("http://{}/v1/snapshot", c.api(leader));
        let answer = c.client.post(url).send().await.expect("POST /v1/snapshot");
        assert_eq!(answer.status().as_u16(), 200, "{:?}", answer.text().await);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match c.put(leader, "quota", "after-compaction").await {
                Ok(_) => break,
                Err(e) => assert!(
                    Instant::now() < deadline,
                    "writes still refused after the snapshot: {e:?}\n{}",
                    c.logs_tail()
                ),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(
            c.get(leader, "quota", "linearizable").await,
            Ok(Some("after-compaction".to_string()))
        );
    });
}
