//! Issue 17: `/readyz` on a follower that knows a leader but is far behind answers
//! `503 not_ready` saying it is catching up and by how much, and 200 once it has caught up
//! to within `ready_max_lag_entries` of the commit index a leader announced to it.
//!
//! A follower is SIGKILLed, the cluster takes more writes than the threshold, and the
//! follower restarts with its WAL's fdatasync slowed (`FAILPOINTS=wal::fdatasync=sleep(..)`:
//! it may apply only what is durable), so that it stays behind long enough to be seen
//! behind; with the failpoint turned off it catches up and becomes ready.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{runtime, Cluster, ClusterSpec};

/// Small, so that a few hundred writes put a node far behind.
const READY_MAX_LAG_ENTRIES: u64 = 50;
const WRITES: u64 = 400;

async fn readyz(cluster: &Cluster, id: u64) -> Option<(u16, Value)> {
    let response = cluster.get_quick(id, "/readyz").await?;
    let status = response.status().as_u16();
    Some((status, response.json().await.unwrap_or(Value::Null)))
}

/// Polls `/readyz` on `id` until `pred` holds for an answer; returns it, or panics naming
/// `what` and the answers seen.
async fn wait_readyz(
    cluster: &Cluster,
    id: u64,
    within: Duration,
    what: &str,
    pred: impl Fn(u16, &Value) -> bool,
) -> (u16, Value) {
    let deadline = Instant::now() + within;
    let mut seen: Vec<(u16, Value)> = Vec::new();
    loop {
        if let Some((status, body)) = readyz(cluster, id).await {
            if pred(status, &body) {
                return (status, body);
            }
            if seen.last() != Some(&(status, body.clone())) {
                seen.push((status, body));
            }
        }
        assert!(
            Instant::now() < deadline,
            "node {id}'s /readyz never {what} within {within:?}; answers seen: {seen:#?}\n{}",
            cluster.logs_tail()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn catching_up(status: u16, body: &Value) -> bool {
    status == 503
        && body["error"]["code"] == "not_ready"
        && body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("catching up"))
}

#[test]
fn readyz_says_catching_up_while_a_follower_is_far_behind() {
    runtime().block_on(async {
        let cluster = Cluster::start_with_config(
            ClusterSpec::default(),
            json!({"ready_max_lag_entries": READY_MAX_LAG_ENTRIES}),
        );
        let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
        let follower = cluster
            .running()
            .into_iter()
            .find(|&id| id != leader)
            .unwrap();
        for id in cluster.running() {
            wait_readyz(
                &cluster,
                id,
                Duration::from_secs(10),
                "answered 200",
                |s, _| s == 200,
            )
            .await;
        }

        cluster.kill(follower);
        // 16 writers at a time, so the backlog builds in about a second.
        for batch in (0..WRITES).collect::<Vec<_>>().chunks(16) {
            let writes = batch.iter().map(|i| {
                let (cluster, key) = (&cluster, format!("k{i}"));
                async move { support::retry_unavailable(|| cluster.put(leader, &key, "v")).await }
            });
            for result in futures_util::future::join_all(writes).await {
                result.unwrap_or_else(|e| panic!("write to leader {leader}: {e:?}"));
            }
        }
        let leader_commit = cluster.status(leader).await.unwrap()["commit_index"]
            .as_u64()
            .unwrap();

        // Each fdatasync of the restarted follower takes a second: what it receives becomes
        // durable, hence applicable, slowly.
        cluster.spawn_with_env(follower, &[("FAILPOINTS", "wal::fdatasync=sleep(1000)")]);
        let (_, body) = wait_readyz(
            &cluster,
            follower,
            Duration::from_secs(20),
            "said it was catching up",
            catching_up,
        )
        .await;
        let message = body["error"]["message"].as_str().unwrap();
        let behind: u64 = message
            .split("catching up: ")
            .nth(1)
            .and_then(|rest| rest.split(" entries behind").next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("the message does not say by how much: {message}"));
        assert!(
            behind > READY_MAX_LAG_ENTRIES && behind <= leader_commit,
            "{behind} entries behind is not above the threshold {READY_MAX_LAG_ENTRIES} and \
             at most the leader's commit {leader_commit}: {message}"
        );
        assert!(
            message.contains(&format!("ready_max_lag_entries = {READY_MAX_LAG_ENTRIES}")),
            "the message names the setting: {message}"
        );
        cluster
            .set_failpoint(follower, "wal::fdatasync", "off")
            .await;
        wait_readyz(
            &cluster,
            follower,
            Duration::from_secs(20),
            "answered 200 after catching up",
            |s, _| s == 200,
        )
        .await;
        let status = cluster.status(follower).await.unwrap();
        let applied = status["applied_index"].as_u64().unwrap();
        assert!(
            status["commit_index_heard"].as_u64() >= Some(leader_commit),
            "node {follower} caught up without hearing the leader's commit {leader_commit}: \
             {status}"
        );
        assert!(
            applied + READY_MAX_LAG_ENTRIES >= leader_commit,
            "node {follower} answered ready at applied index {applied}, more than \
             {READY_MAX_LAG_ENTRIES} behind the leader's commit {leader_commit}: {status}"
        );
    });
}
