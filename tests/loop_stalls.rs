//! A node whose raft loop does not run for two heartbeat intervals or more says so: a
//! warning in its log (the count and the longest) and `raftlog_raft_loop_stalls_total`.
//! Elections and `504`s under load are otherwise hard to trace back to a starved node
//! (the storm in tests/overload_bounds.rs failed on CI with nothing in the logs but the
//! followers' pre-votes).

mod support;

use std::time::{Duration, Instant};

use support::{runtime, Cluster, ClusterSpec};

const STALL: Duration = Duration::from_millis(700);

#[test]
fn stopped_node_reports_its_stall_in_log_and_metrics() {
    runtime().block_on(async {
        // Timeouts longer than the stall, so the check is about the report, not an election.
        let cluster = Cluster::start_with_config(
            ClusterSpec::default(),
            serde_json::json!({"heartbeat_interval_ms": 100, "election_timeout_ms": [3000, 4000]}),
        );
        let leader = cluster.wait_for_leader(Duration::from_secs(20)).await;
        let follower = cluster.followers(leader)[0];
        let name = "raftlog_raft_loop_stalls_total";
        let before = cluster.metric(follower, name).await;
        assert!(
            !cluster
                .log_text(follower)
                .contains("the raft loop did not run"),
            "node {follower} reported a stall before any:\n{}",
            cluster.log_text(follower)
        );

        cluster.signal(follower, libc::SIGSTOP);
        std::thread::sleep(STALL);
        cluster.signal(follower, libc::SIGCONT);

        let deadline = Instant::now() + Duration::from_secs(10);
        let after = loop {
            let now = cluster.metric(follower, name).await;
            if now > before || Instant::now() > deadline {
                break now;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(
            after > before,
            "node {follower} was stopped for {STALL:?} but {name} stayed at {before}"
        );
        // A stall reported shortly before (a slow start on a busy machine) holds this one
        // back until its interval ends (10 s): wait for a line that names it.
        let deadline = Instant::now() + Duration::from_secs(15);
        let longest = loop {
            let log = cluster.log_text(follower);
            let longest = log
                .lines()
                .filter(|l| l.contains("the raft loop did not run"))
                .filter_map(|line| {
                    line.split("longest_ms=")
                        .nth(1)?
                        .split_whitespace()
                        .next()?
                        .parse::<u64>()
                        .ok()
                })
                .max();
            if longest.is_some_and(|ms| ms >= STALL.as_millis() as u64 - 50)
                || Instant::now() > deadline
            {
                break longest;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(
            longest.is_some_and(|ms| ms >= STALL.as_millis() as u64 - 50),
            "node {follower} was stopped for {STALL:?}; the longest stall its log names is \
             {longest:?} ms:\n{}",
            cluster.log_text(follower)
        );
    });
}
