//! Client sessions never make a snapshot unrestorable (issue 11): with real `raftlog serve`
//! processes, a node whose session table remembers many large CAS answers still snapshots,
//! restarts from that snapshot, serves its data, and answers a retry with the first outcome.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{answer, runtime, Cluster, ClusterSpec};

/// The largest value the API accepts by default.
const VALUE_BYTES: usize = 1 << 20;

/// More failed CAS answers than fit in the 64 MiB a snapshot item could hold before the fix,
/// each carrying the 1 MiB current value.
const FAILING_CAS_CLIENTS: usize = 70;

async fn cas_with_request_id(
    c: &Cluster,
    id: u64,
    key: &str,
    expected: &str,
    value: &str,
    request_id: &str,
) -> Result<Value, (u16, String)> {
    let url = format!("http://{}/v1/cas", c.api(id));
    let body = json!({"key": key, "expected": expected, "value": value});
    answer(
        c.client
            .post(url)
            .header("Request-Id", request_id)
            .json(&body)
            .send()
            .await,
    )
    .await
}

/// Fails the test with the node's log if its process has exited (a refused restore).
fn assert_still_running(c: &Cluster, id: u64) {
    let exited = c.nodes[&id]
        .child
        .lock()
        .unwrap()
        .as_mut()
        .and_then(|child| child.try_wait().ok().flatten());
    if let Some(status) = exited {
        panic!(
            "node {id} exited ({status}) after restarting from its snapshot\n{}",
            c.logs_tail()
        );
    }
}

#[test]
fn session_table_of_large_cas_answers_snapshots_and_restores() {
    runtime().block_on(async {
        let c = Cluster::start(ClusterSpec {
            nodes: 1,
            ..ClusterSpec::default()
        });
        c.wait_for_leader(Duration::from_secs(20)).await;
        let big = "b".repeat(VALUE_BYTES);
        c.put_eventually("big", &big, Duration::from_secs(20)).await;

        let mut first_answers = Vec::new();
        for client in 0..FAILING_CAS_CLIENTS {
            let request_id = format!("c{client}:1");
            let answer = cas_with_request_id(&c, 1, "big", "not-the-value", "x", &request_id)
                .await
                .unwrap_or_else(|e| panic!("CAS {request_id} failed: {e:?}"));
            assert_eq!(answer["succeeded"], false, "CAS {request_id} swapped");
            assert_eq!(answer["current"].as_str().map(str::len), Some(VALUE_BYTES));
            first_answers.push(answer["index"].as_u64().expect("CAS answer has an index"));
        }

        c.take_snapshot(1).await;

        let status = c.terminate(1);
        assert!(status.success(), "SIGTERM exit: {status:?}");
        c.spawn(1);

        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            assert_still_running(&c, 1);
            match c.get(1, "big", "stale").await {
                Ok(Some(value)) => {
                    assert!(value == big, "big came back as {} bytes", value.len());
                    break;
                }
                other => assert!(
                    Instant::now() < deadline,
                    "big not served within 30 s of the restart: {other:?}\n{}",
                    c.logs_tail()
                ),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        // The sessions came back with the snapshot: a retry is not applied again and answers
        // with the first outcome, the whole current value included.
        c.wait_for_leader(Duration::from_secs(20)).await;
        let retry = support::retry_unavailable(|| {
            cas_with_request_id(&c, 1, "big", "not-the-value", "x", "c0:1")
        })
        .await
        .unwrap_or_else(|e| panic!("retry of c0:1 failed: {e:?}\n{}", c.logs_tail()));
        assert_eq!(retry["succeeded"], false);
        assert_eq!(retry["index"].as_u64(), Some(first_answers[0]));
        assert!(retry["current"].as_str() == Some(big.as_str()));
        assert_still_running(&c, 1);
    });
}

async fn wait_applied_at_least(c: &Cluster, id: u64, index: u64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        assert_still_running(c, id);
        let applied = c.status(id).await.and_then(|s| s["applied_index"].as_u64());
        if applied.is_some_and(|a| a >= index) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "node {id} applied {applied:?}, not {index}, within {within:?}\n{}",
            c.logs_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The session table is replicated state: a follower that catches up through
/// InstallSnapshot holds the same sessions as the leader, so after the leader is SIGKILLed
/// and the follower leads, a retry is still answered with the first outcome and not applied
/// again; the killed node restarts from its own snapshot with nothing acknowledged lost.
#[test]
fn sessions_survive_install_snapshot_and_sigkill_of_the_leader() {
    runtime().block_on(async {
        let c = Cluster::start(ClusterSpec {
            nodes: 3,
            snapshot_threshold: 40,
            snapshot_trailing_entries: 5,
            ..ClusterSpec::default()
        });
        let leader = c.wait_for_leader(Duration::from_secs(20)).await;
        let lagging = *c.running().iter().find(|&&id| id != leader).unwrap();
        // The leader's log is at least as long as the lagging node's when it stops.
        let deadline = Instant::now() + Duration::from_secs(10);
        let lagging_last_index = loop {
            let status = c.status(leader).await;
            if let Some(last) = status.and_then(|s| s["last_log_index"].as_u64()) {
                break last;
            }
            assert!(
                Instant::now() < deadline,
                "leader {leader} does not answer /v1/status"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        c.kill(lagging);

        let big = "b".repeat(VALUE_BYTES);
        let put = support::retry_unavailable(|| c.put(leader, "big", &big)).await;
        put.unwrap_or_else(|e| panic!("PUT big: {e:?}"));
        let mut first_indexes = Vec::new();
        for client in 0..FAILING_CAS_CLIENTS {
            let request_id = format!("c{client}:1");
            let answer = support::retry_unavailable(|| {
                cas_with_request_id(&c, leader, "big", "not-the-value", "x", &request_id)
            })
            .await
            .unwrap_or_else(|e| panic!("CAS {request_id}: {e:?}"));
            assert_eq!(answer["succeeded"], false);
            first_indexes.push(answer["index"].as_u64().unwrap());
        }
        let put_small = c.put_with_id(leader, "small", "z", "writer:1").await;
        let put_index = put_small.expect("PUT small")["index"].as_u64().unwrap();

        // A request that arrives while a background snapshot is written is answered with
        // that snapshot's index, which may predate the PUT: ask until one covers it.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let response = c
                .client
                .post(format!("http://{}/v1/snapshot", c.api(leader)))
                .send()
                .await
                .expect("POST /v1/snapshot");
            assert_eq!(response.status().as_u16(), 200);
            let snapshot_index = response.json::<Value>().await.unwrap()["snapshot_index"]
                .as_u64()
                .unwrap();
            if snapshot_index >= put_index {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no snapshot covers index {put_index} within 20 s (last: {snapshot_index})"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // Compaction follows the snapshot asynchronously: wait until the lagging node's log
        // position is gone from the leader, so it can only catch up by snapshot.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let url = format!("http://{}/v1/log?limit=1", c.api(leader));
            let first = match c.client.get(url).send().await {
                Ok(response) => response.json::<Value>().await.ok(),
                Err(_) => None,
            }
            .and_then(|log| log[0]["index"].as_u64());
            if first.is_some_and(|f| f > lagging_last_index + 1) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "leader {leader} kept its log from {first:?} (lagging node at {lagging_last_index})"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        c.spawn(lagging);
        wait_applied_at_least(&c, lagging, put_index, Duration::from_secs(60)).await;
        // The applied index is reported once the core installs the snapshot; the apply
        // thread restores the state machine from it just after, and exits if it cannot.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            assert_still_running(&c, lagging);
            let log = std::fs::read_to_string(&c.nodes[&lagging].log_path).unwrap_or_default();
            if log.contains("state machine restored from snapshot") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {lagging} caught up without installing a snapshot\n{}",
                c.logs_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_still_running(&c, lagging);

        c.kill(leader);
        let new_leader = c.wait_for_leader(Duration::from_secs(20)).await;
        assert_ne!(new_leader, leader);
        for (client, first_index) in [(0, first_indexes[0]), (69, first_indexes[69])] {
            let request_id = format!("c{client}:1");
            let retry = support::retry_unavailable(|| {
                cas_with_request_id(&c, new_leader, "big", "not-the-value", "x", &request_id)
            })
            .await
            .unwrap_or_else(|e| panic!("retry {request_id}: {e:?}\n{}", c.logs_tail()));
            assert_eq!(retry["succeeded"], false);
            assert_eq!(retry["index"].as_u64(), Some(first_index));
            assert!(retry["current"].as_str() == Some(big.as_str()));
        }
        let retry_put = c
            .put_with_id(new_leader, "small", "z", "writer:1")
            .await
            .unwrap_or_else(|e| panic!("retry writer:1: {e:?}"));
        assert_eq!(retry_put["index"].as_u64(), Some(put_index));
        assert_eq!(
            c.get(new_leader, "small", "linearizable").await,
            Ok(Some("z".to_string()))
        );

        c.spawn(leader);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            assert_still_running(&c, leader);
            if c.get(leader, "small", "stale").await == Ok(Some("z".to_string()))
                && c.get(leader, "big", "stale").await == Ok(Some(big.clone()))
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "restarted node {leader} does not serve the acknowledged writes\n{}",
                c.logs_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
}
