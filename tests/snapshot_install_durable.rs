//! Issue 11, item 3, with real `raftlog serve` processes: a follower installs a snapshot
//! from the leader only once it is durable and verified. A corrupt snapshot file on the
//! leader is refused by the follower, which keeps serving `stale` reads from its old state
//! and does not crash, and catches up once the leader writes a good snapshot.

mod support;

use std::time::{Duration, Instant};

use support::{runtime, Cluster, ClusterSpec};

/// Flips bytes in the middle of node `id`'s newest snapshot file. Returns its name.
fn corrupt_newest_snapshot(c: &Cluster, id: u64) -> String {
    let dir = c.data_dir(id).join("snapshots");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("snapshot directory")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".snap"))
        .collect();
    names.sort();
    let newest = names.last().expect("the leader has a snapshot").clone();
    let path = dir.join(&newest);
    let mut bytes = std::fs::read(&path).expect("read snapshot");
    let at = bytes.len() / 2;
    bytes[at] ^= 0x5a;
    std::fs::write(&path, bytes).expect("write snapshot");
    newest
}

async fn put_many(c: &Cluster, prefix: &str, count: u64) {
    for i in 0..count {
        c.put_eventually(&format!("{prefix}{i}"), "v", Duration::from_secs(20))
            .await;
    }
}

async fn stale(c: &Cluster, id: u64, key: &str) -> Option<String> {
    c.get(id, key, "stale").await.ok().flatten()
}

#[test]
fn follower_refuses_a_corrupt_snapshot_and_recovers_from_a_good_one() {
    runtime().block_on(async {
        let c = Cluster::start(ClusterSpec {
            nodes: 3,
            snapshot_threshold: 100,
            snapshot_trailing_entries: 10,
            ..ClusterSpec::default()
        });
        let leader = c.wait_for_leader(Duration::from_secs(10)).await;
        let follower = (1..=3).find(|&id| id != leader).unwrap();
        c.put_eventually("before", "old", Duration::from_secs(10))
            .await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while stale(&c, follower, "before").await.as_deref() != Some("old") {
            assert!(Instant::now() < deadline, "follower never applied 'before'");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Its own snapshot holds the old state it must go on serving after the restart.
        c.take_snapshot(follower).await;
        c.kill(follower);

        // The leader compacts past the follower's log: only a snapshot can catch it up.
        put_many(&c, "k", 300).await;
        let leader = c.wait_for_leader(Duration::from_secs(10)).await;
        c.take_snapshot(leader).await;
        let corrupted = corrupt_newest_snapshot(&c, leader);

        c.spawn(follower);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(
            c.running().contains(&follower),
            "the follower died on a corrupt snapshot:\n{}",
            c.logs_tail()
        );
        assert_eq!(
            stale(&c, follower, "before").await.as_deref(),
            Some("old"),
            "the follower must keep serving its old state"
        );
        assert_eq!(
            stale(&c, follower, "k299").await,
            None,
            "the follower installed the corrupt snapshot {corrupted}"
        );
        let log = std::fs::read_to_string(&c.nodes[&follower].log_path).unwrap_or_default();
        assert!(
            log.contains("failed verification") || log.contains("snapshot transfer abandoned"),
            "the follower never saw the corrupt snapshot {corrupted}:\n{log}"
        );

        // A good snapshot on the leader: the follower catches up from it.
        put_many(&c, "more", 20).await;
        let leader = c.wait_for_leader(Duration::from_secs(10)).await;
        c.take_snapshot(leader).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        while stale(&c, follower, "k299").await.as_deref() != Some("v") {
            assert!(
                Instant::now() < deadline,
                "the follower never caught up from the good snapshot:\n{}",
                c.logs_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(stale(&c, follower, "more19").await.as_deref(), Some("v"));
    });
}
