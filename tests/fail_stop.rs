//! Rule: a panic in any thread of a node stops the process (fail-stop, issue 11 item 4).
//! A node whose apply thread died used to keep heartbeating, holding its followers and
//! answering `/healthz` 200 while never acknowledging a write again.

mod support;

use std::time::{Duration, Instant};

use support::{retry_unavailable, runtime, Cluster, ClusterSpec};

#[test]
fn apply_thread_panic_on_the_leader_stops_it_and_another_is_elected() {
    runtime().block_on(async {
        let cluster = Cluster::start(ClusterSpec::default());
        let first_leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
        cluster
            .put_eventually("before", "1", Duration::from_secs(10))
            .await;
        // Arm one node, far enough ahead that the no-op entries of the elections below
        // cannot reach the index, then move the leadership to it: a panicking *leader* is
        // the zombie the rule is about.
        let armed = first_leader % 3 + 1;
        let status = cluster.status(first_leader).await.expect("leader answers");
        let armed_at = status["commit_index"].as_u64().unwrap() + 30;
        cluster.kill(armed);
        cluster.spawn_with_env(
            armed,
            &[("RAFTLOG_FAULT_PANIC_APPLY_AT", &armed_at.to_string())],
        );
        let mut leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
        for _ in 0..12 {
            if leader == armed {
                break;
            }
            // Restarting the leader makes the other two elect; either may win.
            cluster.kill(leader);
            let next = cluster.wait_for_leader(Duration::from_secs(10)).await;
            cluster.spawn(leader);
            leader = next;
        }
        assert_eq!(
            leader, armed,
            "node {armed} never led; cannot test a panicking leader"
        );

        // Writes reach the armed index; the leader's apply thread panics.
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut written = 0;
        let exit = loop {
            if let Some(exit) = cluster.wait_exit(armed, Duration::ZERO) {
                break exit;
            }
            if Instant::now() > deadline {
                let health = cluster
                    .client
                    .get(format!("http://{}/healthz", cluster.api(armed)))
                    .send()
                    .await
                    .map(|r| r.status().as_u16());
                panic!(
                    "node {armed} still runs after its apply thread panicked (healthz: \
                     {health:?})\n{}",
                    cluster.logs_tail()
                );
            }
            let _ = cluster.put(armed, &format!("k{written}"), "v").await;
            written += 1;
        };
        assert_eq!(exit.code(), Some(1), "{}", cluster.logs_tail());
        let log = cluster.log_text(armed);
        assert!(
            log.contains("the apply thread panicked"),
            "the exit names the thread:\n{log}"
        );

        // The two others elect another leader and serve everything acknowledged.
        let new_leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
        assert_ne!(new_leader, armed);
        cluster
            .put_eventually("after", "2", Duration::from_secs(10))
            .await;
        for key in ["before", "after"] {
            let value = retry_unavailable(|| cluster.get(new_leader, key, "linearizable"))
                .await
                .unwrap_or_else(|e| panic!("read {key}: {e:?}"));
            assert!(value.is_some(), "{key} lost");
        }
    });
}
