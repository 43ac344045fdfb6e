//! Process-level tests: real `raftlog serve` processes on 127.0.0.1, SIGKILL, SIGSTOP,
//! restarts. Every acknowledged write must survive.

mod support;

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{retry_unavailable, runtime, Cluster, ClusterSpec};

#[test]
fn three_nodes_elect_a_leader_and_serve_through_every_node() {
    runtime().block_on(async {
        let cluster = Cluster::start(ClusterSpec::default());
        let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;

        // Writes through every node (followers forward), linearizable reads through every node.
        for id in 1..=3u64 {
            let key = format!("key-{id}");
            let value = format!("value-{id}");
            let written = retry_unavailable(|| cluster.put(id, &key, &value))
                .await
                .unwrap_or_else(|e| {
                    panic!("put via node {id} failed: {e:?}\n{}", cluster.logs_tail())
                });
            assert!(written["index"].as_u64().unwrap() > 0, "{written}");
        }
        for reader in 1..=3u64 {
            for id in 1..=3u64 {
                let key = format!("key-{id}");
                let value = retry_unavailable(|| cluster.get(reader, &key, "linearizable"))
                    .await
                    .unwrap();
                assert_eq!(
                    value.as_deref(),
                    Some(format!("value-{id}").as_str()),
                    "read via node {reader}"
                );
            }
        }
        assert_eq!(
            retry_unavailable(|| cluster.get(2, "absent", "linearizable"))
                .await
                .unwrap(),
            None
        );

        // CAS semantics.
        let mismatch = retry_unavailable(|| cluster.cas(1, "key-1", Some("wrong"), Some("x")))
            .await
            .unwrap();
        assert_eq!(mismatch["succeeded"], false);
        assert_eq!(mismatch["current"], "value-1");
        let swapped =
            retry_unavailable(|| cluster.cas(2, "key-1", Some("value-1"), Some("swapped")))
                .await
                .unwrap();
        assert_eq!(swapped["succeeded"], true);
        assert_eq!(
            retry_unavailable(|| cluster.get(3, "key-1", "linearizable"))
                .await
                .unwrap()
                .as_deref(),
            Some("swapped")
        );
        let create = retry_unavailable(|| cluster.cas(3, "fresh", None, Some("new")))
            .await
            .unwrap();
        assert_eq!(create["succeeded"], true);
        let create_again = retry_unavailable(|| cluster.cas(1, "fresh", None, Some("newer")))
            .await
            .unwrap();
        assert_eq!(create_again["succeeded"], false);
        let cas_delete = retry_unavailable(|| cluster.cas(1, "fresh", Some("new"), None))
            .await
            .unwrap();
        assert_eq!(cas_delete["succeeded"], true);
        assert_eq!(
            retry_unavailable(|| cluster.get(1, "fresh", "linearizable"))
                .await
                .unwrap(),
            None
        );

        // Delete semantics.
        let deleted = retry_unavailable(|| cluster.delete(3, "key-2"))
            .await
            .unwrap();
        assert_eq!(deleted["deleted"], true);
        let again = retry_unavailable(|| cluster.delete(1, "key-2"))
            .await
            .unwrap();
        assert_eq!(again["deleted"], false);
        assert!(again["index"].as_u64().unwrap() > deleted["index"].as_u64().unwrap());
        assert_eq!(
            retry_unavailable(|| cluster.get(2, "key-2", "linearizable"))
                .await
                .unwrap(),
            None
        );

        // Stale reads are served locally and eventually catch up.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let all = futures_util::future::join_all(
                (1..=3u64).map(|id| cluster.get(id, "key-3", "stale")),
            )
            .await;
            if all
                .iter()
                .all(|v| v.as_ref().ok().and_then(|v| v.as_deref()) == Some("value-3"))
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "stale reads never converged: {all:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        // Every answer names the leader.
        let response = cluster
            .client
            .get(cluster.url(1, "/v1/status"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            response
                .headers()
                .get("x-raft-leader")
                .and_then(|v| v.to_str().ok()),
            Some(leader.to_string().as_str())
        );
        let status: serde_json::Value = response.json().await.unwrap();
        assert_eq!(status["members"].as_array().unwrap().len(), 3);
        assert!(status["commit_index"].as_u64().unwrap() >= 6);
    });
}

#[test]
fn request_id_makes_a_retried_write_apply_once() {
    runtime().block_on(async {
        let cluster = Cluster::start(ClusterSpec::default());
        cluster.wait_for_leader(Duration::from_secs(10)).await;
        let first = retry_unavailable(|| cluster.put_with_id(1, "k", "one", "client-a:1"))
            .await
            .unwrap();
        retry_unavailable(|| cluster.put(2, "k", "two"))
            .await
            .unwrap();
        // The retry answers with the first outcome and does not overwrite "two".
        let retry = retry_unavailable(|| cluster.put_with_id(3, "k", "one", "client-a:1"))
            .await
            .unwrap();
        assert_eq!(retry["index"], first["index"]);
        assert_eq!(
            retry_unavailable(|| cluster.get(1, "k", "linearizable"))
                .await
                .unwrap()
                .as_deref(),
            Some("two")
        );
        let malformed = retry_unavailable(|| cluster.put_with_id(1, "k", "x", "no-sequence"))
            .await
            .unwrap_err();
        assert_eq!(malformed.0, 400, "{malformed:?}");
    });
}

#[test]
fn bad_requests_get_clear_errors_and_the_node_keeps_serving() {
    runtime().block_on(async {
        let cluster = Cluster::start(ClusterSpec::default());
        let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
        let base = cluster.url(leader, "");
        let client = &cluster.client;

        let bad_json = client
            .post(format!("{base}/v1/cas"))
            .body("{not json")
            .send()
            .await
            .unwrap();
        assert_eq!(bad_json.status().as_u16(), 400);
        let body: serde_json::Value = bad_json.json().await.unwrap();
        assert_eq!(body["error"]["code"], "bad_request");

        let unknown_field = client
            .post(format!("{base}/v1/cas"))
            .body(r#"{"key":"a","expected":null,"value":"b","extra":1}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(unknown_field.status().as_u16(), 400);

        let oversize = client
            .put(format!("{base}/v1/kv/big"))
            .body(vec![b'x'; (1 << 20) + 1])
            .send()
            .await
            .unwrap();
        assert_eq!(oversize.status().as_u16(), 413);
        let body: serde_json::Value = oversize.json().await.unwrap();
        assert_eq!(body["error"]["code"], "too_large");

        // 503 means nothing was proposed (a leader change under load): retry, as a client would.
        let max = "x".repeat(1 << 20);
        let exactly_max = retry_unavailable(|| cluster.put(leader, "big", &max)).await;
        assert!(exactly_max.is_ok(), "{exactly_max:?}");

        let bad_percent = client
            .get(format!("{base}/v1/kv/a%zz"))
            .send()
            .await
            .unwrap();
        assert_eq!(bad_percent.status().as_u16(), 400);
        let long_key = "k".repeat(1025);
        let too_long = client
            .put(format!("{base}/v1/kv/{long_key}"))
            .body("v")
            .send()
            .await
            .unwrap();
        assert_eq!(too_long.status().as_u16(), 400);
        let bad_consistency = client
            .get(format!("{base}/v1/kv/a?consistency=sometimes"))
            .send()
            .await
            .unwrap();
        assert_eq!(bad_consistency.status().as_u16(), 400);
        let no_route = client
            .get(format!("{base}/v2/nothing"))
            .send()
            .await
            .unwrap();
        assert_eq!(no_route.status().as_u16(), 404);

        // Percent-encoded keys round-trip as bytes.
        cluster
            .put_eventually("a%2Fb%20c", "slashed", Duration::from_secs(10))
            .await;
        assert_eq!(
            cluster
                .get(leader, "a%2Fb%20c", "linearizable")
                .await
                .unwrap()
                .as_deref(),
            Some("slashed")
        );

        // Garbage on every raft port: dropped with a log line, nodes keep serving.
        for node in cluster.nodes.values() {
            let mut stream = std::net::TcpStream::connect(&node.raft_addr).unwrap();
            let _ = stream.write_all(b"GET / HTTP/1.1\r\n\r\n\xff\xfe garbage garbage");
            let _ = stream.write_all(&[0xffu8; 4096]);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        cluster
            .put_eventually("after-garbage", "ok", Duration::from_secs(5))
            .await;
        for id in 1..=3u64 {
            assert_eq!(
                cluster
                    .get(id, "after-garbage", "linearizable")
                    .await
                    .unwrap()
                    .as_deref(),
                Some("ok")
            );
        }
        let health = client.get(format!("{base}/healthz")).send().await.unwrap();
        assert_eq!(health.status().as_u16(), 200);
        let metrics = client
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(metrics.contains("raftlog_proposals_total"), "{metrics}");
        // Healthy peers never send what the core's door drops.
        assert!(
            metrics.contains("\nraftlog_raft_messages_dropped_total 0\n"),
            "{metrics}"
        );
    });
}

#[test]
fn malformed_config_exits_2_with_one_line_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cases = [
        ("malformed", "{ not json".to_string()),
        (
            "unknown field",
            format!(
                r#"{{"cluster_id":"c","nodes":{{"1":{{"raft_addr":"127.0.0.1:1","api_addr":"127.0.0.1:2"}}}},"data_dir":{:?},"bogus":1}}"#,
                data
            ),
        ),
        (
            "duplicate address",
            format!(
                r#"{{"cluster_id":"c","nodes":{{"1":{{"raft_addr":"127.0.0.1:1","api_addr":"127.0.0.1:2"}},"2":{{"raft_addr":"127.0.0.1:1","api_addr":"127.0.0.1:3"}}}},"data_dir":{:?}}}"#,
                data
            ),
        ),
        (
            "id not in nodes",
            format!(
                r#"{{"cluster_id":"c","nodes":{{"2":{{"raft_addr":"127.0.0.1:1","api_addr":"127.0.0.1:2"}}}},"data_dir":{:?}}}"#,
                data
            ),
        ),
    ];
    for (what, text) in cases {
        let path = dir.path().join("config.json");
        std::fs::write(&path, text).unwrap();
        let output = std::process::Command::new(support::raftlog_bin())
            .args(["serve", "--config"])
            .arg(&path)
            .args(["--id", "1"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{what}: {stderr}");
        assert_eq!(
            stderr.trim().lines().count(),
            1,
            "{what}: expected one line, got {stderr}"
        );
        assert!(
            stderr.contains("config.json"),
            "{what}: the error must name the file: {stderr}"
        );
        assert!(!data.exists(), "{what}: nothing may be written to disk");
    }
}

#[test]
fn a_bad_worker_thread_count_in_the_environment_exits_2_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let path = dir.path().join("config.json");
    std::fs::write(
        &path,
        format!(
            r#"{{"cluster_id":"c","nodes":{{"1":{{"raft_addr":"127.0.0.1:1","api_addr":"127.0.0.1:2"}}}},"data_dir":{data:?}}}"#
        ),
    )
    .unwrap();
    for bad in ["abc", "0"] {
        let output = std::process::Command::new(support::raftlog_bin())
            .args(["serve", "--config"])
            .arg(&path)
            .args(["--id", "1"])
            .env("TOKIO_WORKER_THREADS", bad)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        // tokio itself panicked on these (exit 101).
        assert_eq!(output.status.code(), Some(2), "{bad}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{bad}: {stderr}");
        assert!(stderr.contains("TOKIO_WORKER_THREADS"), "{bad}: {stderr}");
        assert!(!data.exists(), "{bad}: nothing may be written to disk");
    }
}

/// Writers that record every acknowledged write, for the crash tests. Each write goes to
/// a running node chosen round-robin (followers forward to the leader).
struct Load {
    acknowledged: Arc<Mutex<BTreeMap<String, String>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(cluster: &Arc<Cluster>, writers: usize) -> Load {
        let acknowledged = Arc::new(Mutex::new(BTreeMap::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut tasks = Vec::new();
        for w in 0..writers {
            let cluster = cluster.clone();
            let acknowledged = acknowledged.clone();
            let stop = stop.clone();
            tasks.push(tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    n += 1;
                    let key = format!("w{w}-{n}");
                    let value = format!("v{w}-{n}");
                    let ids = cluster.running();
                    if ids.is_empty() {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                    let target = ids[(n as usize + w) % ids.len()];
                    if cluster.put(target, &key, &value).await.is_ok() {
                        acknowledged.lock().unwrap().insert(key, value);
                    }
                }
            }));
        }
        Load {
            acknowledged,
            stop,
            tasks,
        }
    }

    async fn finish(self) -> BTreeMap<String, String> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for task in self.tasks {
            let _ = task.await;
        }
        let acknowledged = self.acknowledged.lock().unwrap().clone();
        acknowledged
    }
}

async fn check_all_readable(cluster: &Cluster, acknowledged: &BTreeMap<String, String>) {
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    for (key, value) in acknowledged {
        let got = cluster.get(leader, key, "linearizable").await;
        assert_eq!(
            got.as_ref().ok().and_then(|v| v.as_deref()),
            Some(value.as_str()),
            "acknowledged write {key}={value} lost: {got:?}\n{}",
            cluster.logs_tail()
        );
    }
}

/// Writes through `via` until one is acknowledged; returns how long it took.
async fn time_to_first_write(
    cluster: &Cluster,
    via: u64,
    key: &str,
    within: Duration,
) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < within {
        if cluster.put(via, key, "probe").await.is_ok() {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

#[test]
fn leader_sigkill_under_load_loses_no_acknowledged_write() {
    runtime().block_on(async {
        let cluster = Arc::new(Cluster::start(ClusterSpec::default()));
        cluster.wait_for_leader(Duration::from_secs(10)).await;
        let load = Load::start(&cluster, 4);
        let mut failover_times = Vec::new();
        for cycle in 0..10 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
            cluster.kill(leader);
            let survivor = if leader == 1 { 2 } else { 1 };
            let served = time_to_first_write(&cluster, survivor, &format!("probe-{cycle}"), Duration::from_secs(5))
                .await
                .unwrap_or_else(|| panic!("cycle {cycle}: no leader served a write within 5 s\n{}", cluster.logs_tail()));
            failover_times.push(served);
            cluster.spawn(leader);
        }
        let acknowledged = load.finish().await;
        failover_times.sort();
        eprintln!("failover times (SIGKILL of the leader -> first acknowledged write): {failover_times:?}");
        assert!(acknowledged.len() > 100, "the load made too little progress: {}", acknowledged.len());
        let median = failover_times[failover_times.len() / 2];
        assert!(median < Duration::from_secs(1), "median failover {median:?} exceeds 1 s: {failover_times:?}");
        check_all_readable(&cluster, &acknowledged).await;
    });
}

#[test]
fn sigstopped_follower_rejoins_without_an_election() {
    runtime().block_on(async {
        let cluster = Arc::new(Cluster::start(ClusterSpec::default()));
        let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
        cluster
            .put_eventually("before", "1", Duration::from_secs(5))
            .await;
        let term_before = cluster.status_u64(leader, "term").await;
        let follower = (1..=3).find(|id| *id != leader).unwrap();
        let other = (1..=3).find(|id| *id != leader && *id != follower).unwrap();

        cluster.signal(follower, libc::SIGSTOP);
        // Several election timeouts (max 300 ms): the cluster keeps serving throughout.
        let paused = Instant::now();
        let mut n = 0;
        while paused.elapsed() < Duration::from_millis(1500) {
            n += 1;
            cluster
                .put(other, &format!("during-{n}"), "x")
                .await
                .unwrap_or_else(|e| panic!("write {n} failed while a follower was stopped: {e:?}"));
        }
        cluster.signal(follower, libc::SIGCONT);

        // The resumed follower catches up and serves stale reads of what it missed.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if cluster
                .get(follower, &format!("during-{n}"), "stale")
                .await
                .ok()
                .flatten()
                .is_some()
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the resumed follower never caught up\n{}",
                cluster.logs_tail()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        // PreVote: it did not depose the leader nor raise the term.
        assert_eq!(
            cluster.wait_for_leader(Duration::from_secs(3)).await,
            leader
        );
        for id in 1..=3 {
            assert_eq!(
                cluster.status_u64(id, "term").await,
                term_before,
                "node {id}'s term changed: the stopped follower forced an election\n{}",
                cluster.logs_tail()
            );
        }
    });
}

#[test]
fn sigstopped_leader_is_replaced_and_acknowledges_nothing_it_loses() {
    runtime().block_on(async {
        let cluster = Arc::new(Cluster::start(ClusterSpec::default()));
        let old_leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
        cluster
            .put_eventually("before", "1", Duration::from_secs(5))
            .await;

        // Writes sent straight to the leader just before and during its pause.
        let mut in_flight = Vec::new();
        for n in 0..20 {
            let cluster = cluster.clone();
            in_flight.push(tokio::spawn(async move {
                let key = format!("paused-{n}");
                let result = cluster.put(old_leader, &key, "v").await;
                (key, result)
            }));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        cluster.signal(old_leader, libc::SIGSTOP);
        let stopped_at = Instant::now();
        let survivor = (1..=3).find(|id| *id != old_leader).unwrap();
        let served = time_to_first_write(&cluster, survivor, "after-pause", Duration::from_secs(5))
            .await
            .unwrap_or_else(|| panic!("no new leader within 5 s\n{}", cluster.logs_tail()));
        eprintln!(
            "SIGSTOP of the leader -> first acknowledged write: {:?}",
            stopped_at.elapsed()
        );
        assert!(
            served < Duration::from_millis(1500),
            "new leader took {served:?}"
        );
        let new_leader = cluster.wait_for_leader(Duration::from_secs(2)).await;
        assert_ne!(new_leader, old_leader);

        cluster.signal(old_leader, libc::SIGCONT);
        // The old leader steps down at once (it sees the higher term or loses its quorum).
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let role = cluster.status(old_leader).await.map(|s| s["role"].clone());
            if role.as_ref().is_some_and(|r| r != "leader") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the resumed old leader did not step down: {role:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Every write it answered 200 is truly committed; the rest were 503 or 504.
        for task in in_flight {
            let (key, result) = task.await.unwrap();
            match result {
                Ok(_) => assert_eq!(
                    cluster
                        .get(new_leader, &key, "linearizable")
                        .await
                        .unwrap()
                        .as_deref(),
                    Some("v"),
                    "{key} was acknowledged by the paused leader but is lost"
                ),
                Err((status, body)) => assert!(
                    status == 503 || status == 504,
                    "{key}: unexpected answer {status}: {body}"
                ),
            }
        }
    });
}

#[test]
fn rolling_restart_and_whole_cluster_kill_keep_every_acknowledged_write() {
    runtime().block_on(async {
        let cluster = Arc::new(Cluster::start(ClusterSpec::default()));
        cluster.wait_for_leader(Duration::from_secs(10)).await;
        let load = Load::start(&cluster, 3);
        // Rolling restart: one node at a time, cleanly (SIGTERM must exit 0).
        for id in 1..=3 {
            tokio::time::sleep(Duration::from_millis(400)).await;
            let status = cluster.terminate(id);
            assert!(
                status.success(),
                "node {id} exited with {status} on SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
            cluster.spawn(id);
            cluster.wait_for_leader(Duration::from_secs(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
        // Everyone at once, with SIGKILL, under load.
        for id in 1..=3 {
            cluster.kill(id);
        }
        let acknowledged = load.finish().await;
        for id in 1..=3 {
            cluster.spawn(id);
        }
        assert!(
            acknowledged.len() > 50,
            "too little progress: {}",
            acknowledged.len()
        );
        check_all_readable(&cluster, &acknowledged).await;
    });
}
