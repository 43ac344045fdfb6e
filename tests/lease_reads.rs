//! Process test for the rule: a leader that was stalled never serves a lease read from a
//! lease it lost while it slept (issue: lease reads survive a stalled leader).
//!
//! Each round isolates the leader's peer traffic (the test-only switch behind
//! `RAFTLOG_TEST_FAULTS=1`, a partition without root), SIGSTOPs it at once, lets the others
//! elect a new leader and overwrite the register, then resumes the old leader while it is
//! still cut off and reads the register from it with `consistency=lease`. A leader that
//! counted only the one timer tick it woke up to would believe its lease and answer the
//! overwritten value; one that counts the time it slept steps down (CheckQuorum) and refuses.
//!
//! `RAFTLOG_LEASE_ROUNDS=<n>` changes the number of rounds (default 20).

mod support;

use std::time::{Duration, Instant};

use support::{runtime, Cluster, ClusterSpec};

fn rounds() -> u64 {
    std::env::var("RAFTLOG_LEASE_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
}

/// Waits until a node other than `old` leads a term above `old_term`; returns it.
async fn wait_for_new_leader(cluster: &Cluster, old: u64, old_term: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        for id in cluster.running().into_iter().filter(|id| *id != old) {
            if let Some(s) = cluster.status(id).await {
                if s["role"] == "leader" && s["term"].as_u64().unwrap_or(0) > old_term {
                    return id;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "no new leader without node {old} within 10 s\n{}",
        cluster.logs_tail()
    );
}

#[test]
fn stalled_leader_never_serves_an_overwritten_value_by_lease() {
    runtime().block_on(async {
        let cluster = Cluster::start(ClusterSpec::default());
        let mut stale_reads = Vec::new();
        let mut refused_reads = 0u64;
        for round in 0..rounds() {
            let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
            let old_value = format!("round-{round}-old");
            cluster
                .put_eventually("register", &old_value, Duration::from_secs(10))
                .await;
            // The leader serves a lease read now: its lease is live before the stall.
            let term = cluster
                .status(leader)
                .await
                .and_then(|s| s["term"].as_u64())
                .unwrap_or(0);

            cluster.isolate(leader, true).await;
            cluster.signal(leader, libc::SIGSTOP);
            let new_leader = wait_for_new_leader(&cluster, leader, term).await;
            let new_value = format!("round-{round}-new");
            let mut written = false;
            let deadline = Instant::now() + Duration::from_secs(10);
            while !written && Instant::now() < deadline {
                written = cluster
                    .put(new_leader, "register", &new_value)
                    .await
                    .is_ok();
                if !written {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            assert!(
                written,
                "round {round}: the new leader {new_leader} took no write"
            );

            // Resume the old leader, still cut off from its peers, and read from it at once.
            cluster.signal(leader, libc::SIGCONT);
            let reads_until = Instant::now() + Duration::from_millis(300);
            while Instant::now() < reads_until {
                match cluster.get(leader, "register", "lease").await {
                    Ok(Some(value)) if value == old_value => stale_reads.push(format!(
                        "round {round}: node {leader} answered {value:?} by lease after \
                         node {new_leader} wrote {new_value:?}"
                    )),
                    Ok(_) => {}
                    Err(_) => refused_reads += 1,
                }
            }

            cluster.isolate(leader, false).await;
            // Let the old leader rejoin before the next round isolates whoever leads.
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let follows = cluster
                    .status(leader)
                    .await
                    .is_some_and(|s| s["role"] == "follower" && s["leader_id"].is_u64());
                if follows || Instant::now() > deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        assert!(
            stale_reads.is_empty(),
            "{} stale lease reads ({refused_reads} refused):\n{}\n{}",
            stale_reads.len(),
            stale_reads.join("\n"),
            cluster.logs_tail()
        );
        assert!(
            refused_reads > 0,
            "the resumed leaders never refused a lease read: the rounds did not exercise a stall"
        );
        eprintln!(
            "{} rounds: no stale lease read; {refused_reads} reads refused",
            rounds()
        );
    });
}
