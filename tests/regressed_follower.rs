//! Rule: a follower whose log went backwards below what it acknowledged (here: its data
//! directory restored from an older copy, as after a careless backup restore) is caught up
//! again by the leader, and the leader says so loudly, instead of probing it at the old
//! match index forever (issue 12, noticed in the repeated-restarts work).

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::{runtime, Cluster, ClusterSpec};

const WARNING: &str = "lost log entries it had acknowledged";

#[test]
fn a_follower_restored_from_an_older_copy_is_flagged_and_caught_up() {
    runtime().block_on(async {
        let cluster = Cluster::start(ClusterSpec::default());
        let leader = cluster.wait_for_leader(Duration::from_secs(20)).await;
        let follower = (1..=3).find(|id| *id != leader).expect("a follower");
        for i in 0..5 {
            cluster
                .put(leader, &format!("early-{i}"), "v")
                .await
                .expect("an early write");
        }
        // An "old backup" of the follower, taken with the node stopped.
        cluster.kill(follower);
        let backup = tempfile::tempdir().expect("a directory for the copy");
        let copy = backup.path().join("data");
        let status = Command::new("cp")
            .arg("-a")
            .arg(cluster.data_dir(follower))
            .arg(&copy)
            .status()
            .expect("run cp");
        assert!(status.success(), "copy the follower's data directory");
        cluster.spawn(follower);

        // The follower acknowledges 40 more entries...
        let mut last_index = 0;
        for i in 0..40 {
            let answer = cluster
                .put(leader, &format!("late-{i}"), "v")
                .await
                .expect("a late write");
            last_index = answer["index"].as_u64().expect("the write's index");
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while cluster.status_u64(follower, "applied_index").await < last_index {
            assert!(
                Instant::now() < deadline,
                "the follower never caught up the first time"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // ...then comes back with the old copy: its log ends well below what it acknowledged.
        cluster.kill(follower);
        std::fs::remove_dir_all(cluster.data_dir(follower)).expect("remove the data directory");
        let status = Command::new("cp")
            .arg("-a")
            .arg(&copy)
            .arg(cluster.data_dir(follower))
            .status()
            .expect("run cp");
        assert!(status.success(), "restore the old copy");
        cluster.spawn(follower);

        // Before the rule the leader kept probing at its old match index and the follower
        // stayed at its restored last index for good.
        let deadline = Instant::now() + Duration::from_secs(20);
        while cluster.status_u64(follower, "applied_index").await < last_index {
            assert!(
                Instant::now() < deadline,
                "the restored follower never caught up again (applied {}, needs {last_index})\n{}",
                cluster.status_u64(follower, "applied_index").await,
                cluster.logs_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let leader_log =
            std::fs::read_to_string(&cluster.nodes[&leader].log_path).expect("the leader's log");
        let warning = leader_log
            .lines()
            .find(|line| line.contains(WARNING))
            .unwrap_or_else(|| {
                panic!(
                    "the leader never warned ({WARNING:?})\n{}",
                    cluster.logs_tail()
                )
            });
        assert!(
            warning.contains(&format!("node {follower} ")) && warning.contains("members remove"),
            "the warning names the follower and the remedy: {warning}"
        );
        // Caught up again, it is no longer flagged.
        let status = cluster.status(leader).await.expect("the leader's status");
        let member = status["members"]
            .as_array()
            .and_then(|m| m.iter().find(|m| m["id"].as_u64() == Some(follower)))
            .expect("the follower in the leader's status")
            .clone();
        assert!(
            member.get("log_regressed").is_none(),
            "still flagged: {member}"
        );
        for i in 0..40 {
            let url = format!(
                "http://{}/v1/kv/late-{i}?consistency=stale",
                cluster.api(follower)
            );
            let response = cluster.client.get(url).send().await.expect("a stale read");
            assert_eq!(response.status(), 200, "late-{i} on the restored follower");
        }
    });
}
