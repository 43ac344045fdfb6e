//! Issue 14: a follower forwards its clients' writes to the leader over the peer link
//! (protocol version 2), not as a second HTTP request; a leader that speaks version 1
//! still gets them over HTTP; a write whose forward may have been lost is never answered
//! 200 unless it committed; past the cap of forwards in flight a follower answers `503
//! overloaded` without sending anything.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use support::{check_acknowledged_readable, retry_unavailable, runtime, Cluster, ClusterSpec};

const SENT: &str = "raftlog_transport_forwards_sent_total";
const SERVED: &str = "raftlog_transport_forwards_served_total";
const DROPPED: &str = "raftlog_transport_forwards_dropped_overload_total";
const REFUSED: &str = "raftlog_proposals_refused_total";

#[test]
fn writes_through_a_follower_travel_the_peer_link_and_answer_the_leaders_index() {
    let cluster = Cluster::start(ClusterSpec::default());
    runtime().block_on(async {
        let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
        cluster
            .put_eventually("warm", "up", Duration::from_secs(10))
            .await;
        let follower = cluster.followers(leader)[0];
        let at_leader = |v: serde_json::Value| v["index"].as_u64().expect("an index");
        let refused_before = cluster.metric(follower, REFUSED).await;

        // Each write through the follower lands right after the one before at the leader:
        // the index it answers is the leader's.
        let before = at_leader(cluster.put(leader, "a", "0").await.expect("put at leader"));
        let put = retry_unavailable(|| cluster.put(follower, "a", "1")).await;
        let put = at_leader(put.expect("put through the follower"));
        assert_eq!(
            put,
            before + 1,
            "the follower's answer names the leader's index"
        );
        let after = at_leader(cluster.put(leader, "b", "0").await.expect("put at leader"));
        assert_eq!(after, put + 1);
        assert_eq!(
            cluster.get(leader, "a", "linearizable").await,
            Ok(Some("1".to_string()))
        );

        // CAS and DELETE answer what they answer at the leader.
        let cas = cluster.cas(follower, "a", Some("1"), Some("2")).await;
        let cas = cas.expect("CAS through the follower");
        assert_eq!(cas["succeeded"], true, "{cas}");
        let cas = cluster.cas(follower, "a", Some("1"), Some("3")).await;
        let cas = cas.expect("failed CAS through the follower");
        assert_eq!(cas["succeeded"], false, "{cas}");
        assert_eq!(cas["current"], "2", "{cas}");
        let deleted = cluster.delete(follower, "a").await.expect("delete");
        assert_eq!(deleted["deleted"], true, "{deleted}");

        // A retry with the same Request-Id is the same write, at the same index, through
        // any node; a new sequence is a new write.
        let first = cluster.put_with_id(follower, "s", "x", "client7:1").await;
        let first = at_leader(first.expect("first attempt"));
        let again = cluster.put_with_id(follower, "s", "x", "client7:1").await;
        assert_eq!(at_leader(again.expect("retry")), first);
        let again = cluster.put_with_id(leader, "s", "x", "client7:1").await;
        assert_eq!(at_leader(again.expect("retry at the leader")), first);
        let reused = cluster.put_with_id(follower, "s", "y", "client7:1").await;
        assert!(
            matches!(&reused, Err((422, body)) if body.contains("request_id_reused")),
            "another command under a used Request-Id: {reused:?}"
        );
        let stale = cluster.put_with_id(follower, "s", "z", "client7:0").await;
        assert!(
            matches!(&stale, Err((422, body)) if body.contains("stale_request_id")),
            "{stale:?}"
        );

        // They went over the peer link, and the leader proposed them.
        let sent = cluster.metric(follower, SENT).await;
        assert!(sent >= 8, "the follower sent {sent} forwards");
        let served = cluster.metric(leader, SERVED).await;
        assert!(served >= sent, "the leader served {served} of {sent}");
        // Straight there: a follower that knows its leader does not first offer the write
        // to its own raft loop, which would refuse it (issue 14).
        let refused = cluster.metric(follower, REFUSED).await - refused_before;
        assert_eq!(
            refused, 0,
            "the follower's own core refused {refused} of its writes"
        );
    });
}

#[test]
fn a_leader_that_speaks_version_1_gets_its_followers_writes_over_http() {
    let cluster = Cluster::configure(ClusterSpec::default());
    cluster.spawn_with_env(1, &[("RAFTLOG_TEST_PEER_PROTOCOL", "1")]);
    cluster.spawn(2);
    cluster.spawn(3);
    runtime().block_on(async {
        cluster.make_leader(1).await;
        for (n, follower) in [2, 3].into_iter().enumerate() {
            let key = format!("old{n}");
            let put = retry_unavailable(|| cluster.put(follower, &key, "v")).await;
            put.expect("put through a follower of a v1 leader");
            assert_eq!(
                cluster.metric(follower, SENT).await,
                0,
                "sent over the peer link"
            );
        }
        assert_eq!(cluster.metric(1, SERVED).await, 0);

        // A v2 leader: its v2 follower uses the link, its v1 follower HTTP.
        cluster.make_leader(2).await;
        retry_unavailable(|| cluster.put(3, "new", "v"))
            .await
            .expect("put through 3");
        assert!(
            cluster.metric(3, SENT).await >= 1,
            "node 3 did not use the link"
        );
        retry_unavailable(|| cluster.put(1, "new1", "v"))
            .await
            .expect("put through 1");
        assert_eq!(
            cluster.metric(1, SENT).await,
            0,
            "a v1 node sent a forward frame"
        );
        for key in ["old0", "old1", "new", "new1"] {
            assert_eq!(
                cluster.get(2, key, "linearizable").await,
                Ok(Some("v".to_string())),
                "{key}"
            );
        }
    });
}

#[test]
fn killing_the_leader_mid_forward_acknowledges_only_writes_that_committed() {
    let cluster = Arc::new(Cluster::start(ClusterSpec::default()));
    runtime().block_on(async {
        let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
        cluster
            .put_eventually("warm", "up", Duration::from_secs(10))
            .await;
        let targets = cluster.followers(leader);
        let stop = Arc::new(AtomicBool::new(false));
        let acknowledged = Arc::new(Mutex::new(BTreeMap::new()));
        let answers = Arc::new(Mutex::new(BTreeMap::<u16, u64>::new()));
        let mut writers = Vec::new();
        for w in 0..16usize {
            let (cluster, stop) = (cluster.clone(), stop.clone());
            let (acknowledged, answers) = (acknowledged.clone(), answers.clone());
            let target = targets[w % targets.len()];
            writers.push(tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let (key, value) = (format!("k{w}-{n}"), format!("v{w}-{n}"));
                    let status = match cluster.put(target, &key, &value).await {
                        Ok(_) => {
                            acknowledged.lock().unwrap().insert(key, value);
                            200
                        }
                        Err((status, _)) => status,
                    };
                    *answers.lock().unwrap().entry(status).or_default() += 1;
                    if status != 200 {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let before_kill = acknowledged.lock().unwrap().len();
        cluster.kill(leader);
        let killed = Instant::now();
        // Until a new leader takes writes through the followers again.
        while acknowledged.lock().unwrap().len() < before_kill + 50 {
            assert!(
                killed.elapsed() < Duration::from_secs(20),
                "writes never resumed after the kill: {:?}\n{}",
                answers.lock().unwrap(),
                cluster.logs_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stop.store(true, Ordering::Relaxed);
        for writer in writers {
            writer.await.expect("writer task");
        }
        let answers = answers.lock().unwrap().clone();
        assert!(before_kill > 0, "nothing acknowledged before the kill");
        // 503: nothing proposed; 504: unknown outcome. Nothing else may come out of it.
        assert!(
            answers.keys().all(|s| [0, 200, 503, 504].contains(s)),
            "unexpected answers: {answers:?}"
        );
        let acknowledged = acknowledged.lock().unwrap().clone();
        check_acknowledged_readable(&cluster, &acknowledged).await;
        eprintln!(
            "{} writes acknowledged, {before_kill} before the kill; answers {answers:?}",
            acknowledged.len()
        );
    });
}

#[test]
fn past_the_forwards_in_flight_cap_a_follower_answers_503_overloaded_and_sends_nothing() {
    let cluster = Cluster::configure(ClusterSpec::default());
    for id in 1..=3 {
        cluster.spawn_with_env(id, &[("RAFTLOG_TEST_FORWARDS_IN_FLIGHT_MAX", "0")]);
    }
    runtime().block_on(async {
        let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
        cluster
            .put_eventually("warm", "up", Duration::from_secs(10))
            .await;
        let follower = cluster.followers(leader)[0];
        let dropped = cluster.metric(follower, DROPPED).await;
        let refused = cluster.put(follower, "capped", "v").await;
        let Err((503, body)) = &refused else {
            panic!("expected 503 overloaded, got {refused:?}");
        };
        let body: serde_json::Value = serde_json::from_str(body).expect("JSON error body");
        assert_eq!(body["error"]["code"], json!("overloaded"), "{body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("nothing was proposed"), "{message}");
        assert_eq!(cluster.metric(follower, SENT).await, 0);
        assert_eq!(cluster.metric(follower, DROPPED).await, dropped + 1);
        assert_eq!(
            cluster.get(leader, "capped", "linearizable").await,
            Ok(None)
        );
    });
}
