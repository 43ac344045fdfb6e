//! Rule: a node whose data directory was wiped never votes its way into losing an
//! acknowledged write (issue 11, item 1). A node that starts with no state and finds that
//! its peers hold state refuses to start, naming the remedy, instead of voting with an
//! empty log.

mod support;

use std::time::{Duration, Instant};

use support::{retry_unavailable, runtime, Cluster, ClusterSpec};

#[test]
fn wiped_node_refuses_to_start_and_acknowledged_write_survives() {
    runtime().block_on(async {
        let cluster = Cluster::start(ClusterSpec::default());
        cluster.wait_for_leader(Duration::from_secs(10)).await;
        // Node 3 misses the write: only nodes 1 and 2 hold it.
        cluster.kill(3);
        cluster.wait_for_leader(Duration::from_secs(10)).await;
        cluster
            .put_eventually("wiped", "v1", Duration::from_secs(10))
            .await;
        cluster.kill(1);
        cluster.kill(2);
        // A replaced disk: node 2 comes back with nothing.
        std::fs::remove_dir_all(cluster.data_dir(2)).expect("wipe node 2's data directory");
        cluster.spawn(2);
        cluster.spawn(3);

        // Before the rule, 2 and 3 elect a leader within a second and `GET wiped` is 404.
        // Now node 2 must exit 1, and no leader may answer without the write meanwhile.
        let deadline = Instant::now() + Duration::from_secs(15);
        let status = loop {
            if let Some(status) = cluster.wait_exit(2, Duration::from_millis(100)) {
                break status;
            }
            for id in [2, 3] {
                if let Some(s) = cluster.status(id).await {
                    if s["role"] == "leader" {
                        let read = cluster.get(id, "wiped", "linearizable").await;
                        panic!(
                            "node {id} leads with the wiped node's vote (read of the \
                             acknowledged key: {read:?})\n{}",
                            cluster.logs_tail()
                        );
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "the wiped node 2 did not exit within 15 s\n{}",
                cluster.logs_tail()
            );
        };
        assert_eq!(status.code(), Some(1), "{}", cluster.logs_tail());
        let log = cluster.log_text(2);
        assert!(
            log.contains("members remove 2") && log.contains("--join"),
            "the refusal names the remedy:\n{log}"
        );

        // The survivors with the write elect a leader and still serve it.
        cluster.spawn(1);
        cluster.wait_for_leader(Duration::from_secs(10)).await;
        let value = retry_unavailable(|| cluster.get(3, "wiped", "linearizable"))
            .await
            .unwrap_or_else(|e| panic!("read failed: {e:?}\n{}", cluster.logs_tail()));
        assert_eq!(value.as_deref(), Some("v1"));
    });
}

/// The same rule for `--join`: a wiped node that the cluster still counts as a voter must
/// not slip back in as a non-voter that still grants votes (the cluster would count its
/// empty-log vote). It refuses and names the remedy: remove it first, then join.
#[test]
fn wiped_voter_started_with_join_refuses_until_removed() {
    runtime().block_on(async {
        let cluster = Cluster::start(ClusterSpec::default());
        cluster.wait_for_leader(Duration::from_secs(10)).await;
        cluster
            .put_eventually("before", "v1", Duration::from_secs(10))
            .await;
        cluster.kill(2);
        std::fs::remove_dir_all(cluster.data_dir(2)).expect("wipe node 2's data directory");
        let join = format!("{},{}", cluster.api(1), cluster.api(3));
        cluster.spawn_with_args(2, &["--join", &join]);
        let status = cluster
            .wait_exit(2, Duration::from_secs(15))
            .unwrap_or_else(|| {
                panic!(
                    "the wiped voter 2 started with --join instead of refusing\n{}",
                    cluster.logs_tail()
                )
            });
        assert_eq!(status.code(), Some(1), "{}", cluster.logs_tail());
        let log = cluster.log_text(2);
        assert!(
            log.contains("members remove 2"),
            "the refusal names the remedy:\n{log}"
        );
    });
}
