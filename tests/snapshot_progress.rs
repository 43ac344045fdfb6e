//! Issue 17: an InstallSnapshot in progress shows in `/v1/status`: on the leader, per
//! receiving member, the bytes sent, the total and the percentage (`snapshot_sending`); on
//! the receiving follower, the bytes received (`snapshot_receiving`). The live page reads
//! these to show "installing snapshot NN%".
//!
//! A follower is SIGKILLed, the leader takes about 9 MiB of values, snapshots and compacts
//! its log, and the follower restarts with every snapshot write slowed
//! (`FAILPOINTS=snapshot::write=sleep(..)`), so that the 1 MiB chunks arrive over seconds
//! and the transfer can be watched.

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::{runtime, Cluster, ClusterSpec};

const VALUES: usize = 9;
const VALUE_BYTES: usize = 900 << 10;

#[test]
fn status_shows_snapshot_transfer_progress_on_leader_and_follower() {
    runtime().block_on(async {
        let cluster = Cluster::start(ClusterSpec {
            snapshot_trailing_entries: 0,
            ..ClusterSpec::default()
        });
        let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
        let follower = cluster
            .running()
            .into_iter()
            .find(|&id| id != leader)
            .unwrap();
        cluster
            .put_eventually("warm", "up", Duration::from_secs(10))
            .await;
        cluster.kill(follower);
        for i in 0..VALUES {
            // Distinct bytes per value, so nothing on the way shrinks them.
            let value: String = (0..VALUE_BYTES)
                .map(|j| char::from(b'a' + ((i * 7 + j * 13 + j / 251) % 26) as u8))
                .collect();
            let key = format!("big{i}");
            support::retry_unavailable(|| cluster.put(leader, &key, &value))
                .await
                .unwrap_or_else(|e| panic!("write big{i} to leader {leader}: {e:?}"));
        }
        let response = cluster
            .client
            .post(format!("http://{}/v1/snapshot", cluster.api(leader)))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "POST /v1/snapshot on the leader");
        let snapshot_index = response.json::<Value>().await.unwrap()["snapshot_index"]
            .as_u64()
            .unwrap();
        // Compaction follows the snapshot: wait until the follower's entries are gone, so
        // that only the snapshot can catch it up.
        let deadline = Instant::now() + Duration::from_secs(20);
        while cluster.status(leader).await.unwrap()["first_log_index"].as_u64()
            <= Some(snapshot_index)
        {
            assert!(
                Instant::now() < deadline,
                "leader {leader} did not compact its log up to {snapshot_index}\n{}",
                cluster.logs_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        cluster.spawn_with_env(follower, &[("FAILPOINTS", "snapshot::write=sleep(300)")]);
        let mut sending: Vec<Value> = Vec::new();
        let mut receiving: Vec<Value> = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = cluster.status(leader).await {
                let member = status["members"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|m| m["id"].as_u64() == Some(follower));
                if let Some(s) = member
                    .map(|m| &m["snapshot_sending"])
                    .filter(|s| !s.is_null())
                {
                    sending.push(s.clone());
                }
            }
            let mine = cluster.status(follower).await;
            if let Some(r) = mine.as_ref().map(|s| &s["snapshot_receiving"]) {
                if !r.is_null() {
                    receiving.push(r.clone());
                }
            }
            if mine.and_then(|s| s["snapshot_index"].as_u64()) >= Some(snapshot_index) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {follower} did not install snapshot {snapshot_index} within 60 s\n{}",
                cluster.logs_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        assert!(
            !sending.is_empty(),
            "leader {leader} never reported snapshot_sending for node {follower}"
        );
        let total = sending[0]["bytes_total"].as_u64().unwrap_or(0);
        assert!(
            total as usize > VALUES * VALUE_BYTES,
            "bytes_total {total} is less than the values written: {sending:?}"
        );
        let mut last_percent = 0;
        for s in &sending {
            let (sent, percent) = (
                s["bytes_sent"].as_u64().unwrap(),
                s["percent"].as_u64().unwrap(),
            );
            assert_eq!(s["last_index"].as_u64(), Some(snapshot_index), "{s}");
            assert_eq!(s["bytes_total"].as_u64(), Some(total), "{s}");
            assert!(sent <= total && percent == sent * 100 / total, "{s}");
            assert!(
                percent >= last_percent,
                "progress went backwards: {sending:?}"
            );
            last_percent = percent;
        }
        assert!(
            sending
                .iter()
                .any(|s| s["percent"].as_u64().is_some_and(|p| p > 0 && p < 100)),
            "the leader never reported a transfer part-way: {sending:?}"
        );
        assert!(
            receiving.iter().any(|r| r["bytes_received"]
                .as_u64()
                .is_some_and(|b| b > 0 && b < total)),
            "node {follower} never reported a transfer part-way: {receiving:?}"
        );
        assert!(
            receiving
                .iter()
                .all(|r| r["last_index"].as_u64() == Some(snapshot_index)),
            "{receiving:?}"
        );
        // Over: neither side reports it any more.
        let status = cluster.status(follower).await.unwrap();
        assert!(status["snapshot_receiving"].is_null(), "{status}");
    });
}
