//! Rules: a removed node stops and keeps a tombstone, so that restarted with its old data
//! it exits 1 with the way back instead of campaigning against the cluster (issue 10); and
//! the operator's remedy for a wiped node (remove it, start it empty with `--join`) brings
//! it back with every acknowledged write (issue 11, item 1).

mod support;

use std::time::Duration;

use support::{answer, retry_unavailable, runtime, Cluster, ClusterSpec};

async fn remove_member(cluster: &Cluster, via: u64, id: u64) {
    let url = format!("http://{}/v1/members/{id}", cluster.api(via));
    let removed = retry_unavailable(|| async {
        answer(cluster.client.delete(url.clone()).send().await).await
    })
    .await;
    if let Err(e) = removed {
        panic!(
            "DELETE /v1/members/{id} failed: {e:?}\n{}",
            cluster.logs_tail()
        );
    }
}

async fn term_of(cluster: &Cluster, id: u64) -> u64 {
    let status = cluster.status(id).await.expect("node answers status");
    status["term"].as_u64().unwrap()
}

#[test]
fn removed_node_restarted_with_its_old_data_exits_with_the_tombstone_message() {
    runtime().block_on(async {
        let cluster = Cluster::start(ClusterSpec::default());
        let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
        cluster
            .put_eventually("kept", "1", Duration::from_secs(10))
            .await;
        let removed = leader % 3 + 1;
        remove_member(&cluster, leader, removed).await;

        // The removed node learns that its removal committed, saves the tombstone, exits 1.
        let exit = cluster.wait_exit(removed, Duration::from_secs(10));
        let Some(exit) = exit else {
            panic!(
                "removed node {removed} still runs 10 s after its removal\n{}",
                cluster.logs_tail()
            );
        };
        assert_eq!(exit.code(), Some(1), "{}", cluster.logs_tail());

        let term_before = term_of(&cluster, leader).await;
        let log_before = cluster.log_text(removed).len();
        cluster.spawn(removed);
        let Some(exit) = cluster.wait_exit(removed, Duration::from_secs(10)) else {
            panic!(
                "removed node {removed}, restarted on its old data, still runs\n{}",
                cluster.logs_tail()
            );
        };
        assert_eq!(exit.code(), Some(1));
        let restart_log = cluster.log_text(removed)[log_before..].to_string();
        assert!(
            restart_log.contains(&format!("node {removed} was removed from the cluster"))
                && restart_log.contains("--join"),
            "the refusal says why and how to come back:\n{restart_log}"
        );
        // Wait longer than an election timeout: nothing the removed node did may move the
        // cluster's term.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(term_of(&cluster, leader).await, term_before);
        let value = retry_unavailable(|| cluster.get(leader, "kept", "linearizable"))
            .await
            .unwrap();
        assert_eq!(value.as_deref(), Some("1"));
    });
}

#[test]
fn wiped_node_comes_back_by_removal_and_join_with_every_acknowledged_write() {
    runtime().block_on(async {
        let cluster = Cluster::start(ClusterSpec::default());
        let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
        let wiped = leader % 3 + 1;
        cluster.kill(wiped);
        cluster
            .put_eventually("acknowledged", "v1", Duration::from_secs(10))
            .await;
        std::fs::remove_dir_all(cluster.data_dir(wiped)).expect("wipe the node's directory");

        // Started as before, it refuses: the cluster holds state.
        cluster.spawn(wiped);
        let exit = cluster.wait_exit(wiped, Duration::from_secs(15));
        assert_eq!(
            exit.and_then(|e| e.code()),
            Some(1),
            "{}",
            cluster.logs_tail()
        );

        // The remedy it printed: remove it, delete its directory, start it with --join.
        let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
        remove_member(&cluster, leader, wiped).await;
        std::fs::remove_dir_all(cluster.data_dir(wiped)).expect("delete the directory again");
        let join_addr = cluster.api(leader).to_string();
        cluster.spawn_with_args(wiped, &["--join", &join_addr]);

        // It is added back, caught up, and serves the acknowledged write itself.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let value = cluster.get(wiped, "acknowledged", "stale").await;
            if value == Ok(Some("v1".to_string())) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the rejoined node never served the write: {value:?}\n{}",
                cluster.logs_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            cluster.wait_exit(wiped, Duration::ZERO).is_none(),
            "the rejoined node must keep running\n{}",
            cluster.logs_tail()
        );
        cluster
            .put_eventually("after", "v2", Duration::from_secs(10))
            .await;
    });
}
