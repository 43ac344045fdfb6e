//! Issue 12, diskfull, the stable store: a node that must save a new term or vote on a
//! full disk stops cleanly (exit 1, naming the directory, its free space and the remedy),
//! never answers with the unsaved term or vote (Raft Figure 2), and loses nothing
//! acknowledged; the rest of the cluster elects a leader and serves; once space is freed
//! and the node restarted, it catches up.
//!
//! Why fail-stop rather than wait for space as the WAL does (`storage/src/space.rs`): sled
//! gives no account of what it wrote before the error and keeps failing once one write
//! failed, and an ENOSPC from the fsync after sled's write is a failed fsync, never
//! retried as a success. etcd too stops when it cannot save its hard state.
//!
//! One node's data directory is a small tmpfs (the test needs root to mount it and says so
//! when skipped). The tmpfs is filled with a ballast file while the cluster is idle: the
//! WAL's current segment is allocated ahead of use, so the log still takes the few entries
//! an election appends, while sled, which grows its file as it writes, runs out of room
//! for the next term.

mod support;

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use serde_json::json;
use support::tmpfs::{free_bytes, Tmpfs};
use support::{check_acknowledged_on_every_node, runtime, Cluster, ClusterSpec};

const TMPFS_BYTES: u64 = 32 << 20;
/// The node whose disk fills up.
const FULL: u64 = 3;
/// The leader that is killed (never the full node).
const LEADER: u64 = 1;

/// Kills the nodes before unmounting, so the unmount never finds the tmpfs busy.
struct Setup {
    cluster: Cluster,
    tmpfs: Tmpfs,
}

impl Drop for Setup {
    fn drop(&mut self) {
        for id in self.cluster.running() {
            self.cluster.kill(id);
        }
        self.tmpfs.unmount();
    }
}

/// Writes `count` keys named `prefix-N` through any node, recording each acknowledged one.
async fn write_some(
    cluster: &Cluster,
    prefix: &str,
    count: usize,
    acknowledged: &mut BTreeMap<String, String>,
) {
    for i in 0..count {
        let (key, value) = (format!("{prefix}-{i}"), format!("{prefix}-value-{i}"));
        cluster
            .put_eventually(&key, &value, Duration::from_secs(20))
            .await;
        acknowledged.insert(key, value);
    }
}

/// Fills the tmpfs with a ballast file until a write fails for lack of space.
fn fill_up(tmpfs: &Tmpfs) -> std::path::PathBuf {
    let path = tmpfs.path.join("ballast");
    let mut file = std::fs::File::create(&path).expect("create the ballast");
    let chunk = vec![0xA5u8; 64 << 10];
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("write the ballast {}: {e}", path.display()),
        }
    }
    path
}

/// Waits until node `id` has applied everything the leader had committed when asked.
async fn wait_caught_up(cluster: &Cluster, id: u64) {
    let leader = cluster.wait_for_leader(Duration::from_secs(15)).await;
    let commit_index = cluster.status(leader).await.expect("leader status")["commit_index"]
        .as_u64()
        .unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let applied = cluster
            .status(id)
            .await
            .and_then(|s| s["applied_index"].as_u64());
        if applied.is_some_and(|a| a >= commit_index) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "node {id} did not catch up to {commit_index} (at {applied:?})\n{}",
            cluster.logs_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Changes the term until node `FULL` exits, and returns its exit status and how many
/// leadership transfers that took beyond the first election. sled appends each save to a
/// page of its file that may already be allocated, so the first terms after the disk
/// filled up can still fit (seen here: the election after the leader's death was saved,
/// and node 3 even led); each transfer makes every node save a new term, and one of them
/// soon needs a new page.
async fn change_terms_until_exit(c: &Cluster) -> (std::process::ExitStatus, u32) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut transfers = 0;
    loop {
        if let Some(exit) = c.wait_exit(FULL, Duration::from_millis(300)) {
            return (exit, transfers);
        }
        assert!(
            Instant::now() < deadline,
            "node {FULL} still runs 60 s and {transfers} leadership transfers after the \
             leader died, its disk full\n{}",
            c.logs_tail()
        );
        let mut leader = None;
        for id in c.running() {
            if c.status(id).await.is_some_and(|s| s["role"] == "leader") {
                leader = Some(id);
            }
        }
        let Some(leader) = leader else {
            continue;
        };
        // Among the healthy nodes only: the full one is to follow, and save each new term
        // as a follower does.
        let others: Vec<u64> = [2, 4, 5].into_iter().filter(|id| *id != leader).collect();
        let to = others[transfers as usize % others.len()];
        let url = format!("http://{}/v1/leader/transfer", c.api(leader));
        let sent = c.client.post(url).json(&json!({ "to": to })).send().await;
        if sent.is_ok() {
            transfers += 1;
        }
    }
}

/// A follower whose disk is full must save the term of the election that follows the
/// leader's death: it stops (exit 1) naming its directory, the free space and the remedy;
/// the other three nodes elect a leader and serve; with space freed it restarts and
/// catches up, and every acknowledged write is on all five nodes.
#[test]
fn a_follower_that_cannot_save_a_new_term_on_a_full_disk_stops_cleanly() {
    let cluster = Cluster::configure(ClusterSpec {
        nodes: 5,
        wal_segment_bytes: 1 << 20,
        ..ClusterSpec::default()
    });
    let Some(tmpfs) = Tmpfs::mount(&cluster.data_dir(FULL), TMPFS_BYTES) else {
        return;
    };
    for id in 1..=5 {
        cluster.spawn(id);
    }
    let setup = Setup { cluster, tmpfs };
    runtime().block_on(async {
        let c = &setup.cluster;
        c.make_leader(LEADER).await;
        let mut acknowledged = BTreeMap::new();
        write_some(c, "before", 20, &mut acknowledged).await;
        wait_caught_up(c, FULL).await;
        let term_before = c.status(FULL).await.expect("status")["term"]
            .as_u64()
            .unwrap_or(0);

        let ballast = fill_up(&setup.tmpfs);
        let free_at_fill = free_bytes(&setup.tmpfs.path);
        let log_before = c.log_text(FULL).len();
        c.kill(LEADER);

        let (exit, transfers) = change_terms_until_exit(c).await;
        let log = c.log_text(FULL);
        let last_words = &log[log_before.min(log.len())..];
        eprintln!(
            "node {FULL} exited {exit} with {free_at_fill} bytes free, after the leader's \
             death and {transfers} leadership transfers:\n{}",
            last_words
                .lines()
                .filter(|l| l.contains("stopped") || l.contains("ERROR"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        assert_eq!(
            exit.code(),
            Some(1),
            "node {FULL} must fail-stop with status 1:\n{last_words}"
        );
        assert!(
            !last_words.contains("panicked") && !last_words.contains("stack backtrace"),
            "node {FULL} must stop cleanly, not panic:\n{last_words}"
        );
        let exit_line = last_words
            .lines()
            .find(|line| line.contains(&format!("node {FULL} stopped:")))
            .unwrap_or_else(|| panic!("node {FULL} exited without saying why:\n{last_words}"));
        let dir = c.data_dir(FULL).display().to_string();
        for part in [
            "cannot persist term and vote",
            dir.as_str(),
            "no space left on the device",
            "bytes (",
            "Free space on that filesystem",
            "restart the node",
        ] {
            assert!(
                exit_line.contains(part),
                "node {FULL}'s exit must name {part:?}: {exit_line}"
            );
        }

        // The other three elect a leader among themselves and serve.
        let leader = c.wait_for_leader(Duration::from_secs(15)).await;
        assert!(
            leader != FULL && leader != LEADER,
            "leader {leader} after nodes {LEADER} and {FULL} stopped"
        );
        let term_after = c.status(leader).await.expect("status")["term"]
            .as_u64()
            .unwrap_or(0);
        assert!(
            term_after > term_before,
            "the election moved the term: {term_before} -> {term_after}"
        );
        write_some(c, "while-stopped", 20, &mut acknowledged).await;

        // Space freed, both stopped nodes restarted: they catch up.
        std::fs::remove_file(&ballast).expect("remove the ballast");
        c.spawn(LEADER);
        let log_before = c.log_text(FULL).len();
        c.spawn(FULL);
        wait_caught_up(c, FULL).await;
        wait_caught_up(c, LEADER).await;
        write_some(c, "after", 20, &mut acknowledged).await;
        check_acknowledged_on_every_node(c, &acknowledged, Duration::from_secs(30)).await;
        assert!(
            c.wait_exit(FULL, Duration::ZERO).is_none(),
            "node {FULL} did not restart cleanly\n{}",
            c.logs_tail()
        );
        let status = c.status(FULL).await.expect("status of the restarted node");
        assert!(
            status["term"].as_u64() >= Some(term_after),
            "node {FULL} caught up to the cluster's term {term_after}: {status}"
        );
        let log = c.log_text(FULL);
        assert!(
            !log[log_before.min(log.len())..].contains("ERROR"),
            "node {FULL} restarted with errors:\n{}",
            &log[log_before.min(log.len())..]
        );
        eprintln!(
            "{} acknowledged writes on all 5 nodes; term {term_before} -> {term_after}",
            acknowledged.len()
        );
    });
}
