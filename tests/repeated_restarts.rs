//! Durability across repeated restarts: a node compacts its WAL to its snapshot when it
//! starts, so the second start after a snapshot finds a WAL that begins right after the
//! snapshot. That log continues the snapshot and must be kept; treating it as disagreeing
//! with the snapshot (Raft §7) would drop every entry written since, acknowledged or not.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use support::{check_acknowledged_on_every_node, check_acknowledged_readable, runtime};
use support::{Cluster, ClusterSpec};

async fn snapshot_every_node(c: &Cluster) {
    for id in c.running() {
        c.take_snapshot(id).await;
    }
}

/// Kills every node at once (no clean shutdown) and starts them again.
async fn crash_and_restart_all(c: &Cluster) {
    for id in c.running() {
        c.kill(id);
    }
    for id in 1..=3 {
        c.spawn(id);
    }
    c.wait_for_leader(Duration::from_secs(20)).await;
}

#[test]
fn acknowledged_writes_survive_two_restarts_in_a_row_after_a_snapshot() {
    runtime().block_on(async {
        let c = Cluster::start(ClusterSpec {
            nodes: 3,
            ..ClusterSpec::default()
        });
        c.wait_for_leader(Duration::from_secs(10)).await;
        let mut acknowledged = BTreeMap::new();
        for i in 0..20 {
            let (key, value) = (format!("before{i}"), format!("b{i}"));
            c.put_eventually(&key, &value, Duration::from_secs(20))
                .await;
            acknowledged.insert(key, value);
        }
        check_acknowledged_on_every_node(&c, &acknowledged, Duration::from_secs(20)).await;
        snapshot_every_node(&c).await;

        // Written after every node's snapshot: these live only in the WALs.
        for i in 0..20 {
            let (key, value) = (format!("after{i}"), format!("a{i}"));
            c.put_eventually(&key, &value, Duration::from_secs(20))
                .await;
            acknowledged.insert(key, value);
        }

        // The first start compacts each WAL to its snapshot; the second finds WALs that
        // begin right after the snapshot.
        crash_and_restart_all(&c).await;
        check_acknowledged_readable(&c, &acknowledged).await;
        crash_and_restart_all(&c).await;
        check_acknowledged_readable(&c, &acknowledged).await;
        check_acknowledged_on_every_node(&c, &acknowledged, Duration::from_secs(20)).await;
    });
}
