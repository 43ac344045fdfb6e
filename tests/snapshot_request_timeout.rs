//! `POST /v1/snapshot` answers `504 timeout` once `snapshot_request_timeout_ms` has passed,
//! the snapshot carries on in the background, and requests that arrive while it is being
//! written join it instead of starting another (issue 12, "logpage").

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::{retry_unavailable, runtime, Cluster, ClusterSpec};

/// Enough state that writing and fsyncing the snapshot takes well over the 1 ms timeout.
const VALUES: u64 = 200;
const VALUE_BYTES: usize = 100 << 10;

#[test]
fn snapshot_request_times_out_with_504_and_is_not_started_twice() {
    runtime().block_on(async {
        let cluster = Cluster::start_with_config(
            ClusterSpec {
                nodes: 1,
                // Only requested snapshots.
                snapshot_threshold: 1 << 40,
                ..ClusterSpec::default()
            },
            json!({"snapshot_request_timeout_ms": 1}),
        );
        let id = cluster.wait_for_leader(Duration::from_secs(20)).await;
        let value = "s".repeat(VALUE_BYTES);
        for i in 0..VALUES {
            let key = format!("key-{i:04}");
            retry_unavailable(|| cluster.put(id, &key, &value))
                .await
                .unwrap_or_else(|e| panic!("write {key}: {e:?}"));
        }
        let applied = cluster.status(id).await.expect("status")["applied_index"]
            .as_u64()
            .expect("applied_index");

        // Five requests at once, all while the one snapshot is being written.
        let url = format!("http://{}/v1/snapshot", cluster.api(id));
        let answers =
            futures_util::future::join_all((0..5).map(|_| cluster.client.post(&url).send())).await;
        for answer in answers {
            let answer = answer.expect("POST /v1/snapshot answers");
            assert_eq!(answer.status(), 504);
            let body: serde_json::Value = answer.json().await.expect("a JSON error");
            assert_eq!(body["error"]["code"], "timeout", "{body}");
            let message = body["error"]["message"].as_str().unwrap_or_default();
            assert!(
                message.contains("snapshot_request_timeout_ms"),
                "the message names the limit: {message}"
            );
        }

        // It finished in the background, once.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status = cluster.status(id).await.expect("status");
            if status["snapshot_index"].as_u64().unwrap_or(0) >= applied {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no snapshot covering {applied} within 30 s: {status}\n{}",
                cluster.logs_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            cluster.metric(id, "raftlog_snapshots_taken_total").await,
            1,
            "requests that arrived during a snapshot started another"
        );
    });
}
