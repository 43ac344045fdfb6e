//! Issue 14: a follower serves linearizable and lease reads itself (Raft thesis §6.4): it
//! asks the leader for a read index over the peer link (protocol version 3), waits until it
//! has applied that index and reads its own state machine. The rules checked here:
//!
//! - a read through a follower sees every write acknowledged before it was sent, through
//!   any node, however recently the acknowledgement arrived;
//! - the read does not reach the leader over HTTP (its GET count stays put, the read index
//!   counters move);
//! - a leader of protocol version 1 or 2 still serves its followers' reads over HTTP;
//! - a follower cut off from the leader, or whose leader died, answers an error or the
//!   fresh value, never an old one.
//!
//! Each rule is checked for `consistency=linearizable` and `consistency=lease`.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{retry_unavailable, runtime, Cluster, ClusterSpec};

const SENT: &str = "raftlog_transport_read_index_sent_total";
const SERVED: &str = "raftlog_transport_read_index_served_total";
const FOLLOWER_READS: &str = "raftlog_follower_reads_total";
const CONSISTENCIES: [&str; 2] = ["linearizable", "lease"];

/// How many `GET /v1/kv/{key}` requests node `id` answered over HTTP.
async fn http_gets(cluster: &Cluster, id: u64) -> u64 {
    let text = cluster.metrics_text(id).await;
    text.lines()
        .filter(|line| {
            line.starts_with("raftlog_api_request_seconds_count{")
                && line.contains("endpoint=\"/v1/kv/{*key}\"")
                && line.contains("method=\"GET\"")
        })
        .filter_map(|line| line.rsplit_once(' ')?.1.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// The number a register value `"<n>"` holds.
fn number(value: &str) -> u64 {
    value
        .parse()
        .unwrap_or_else(|_| panic!("register holds {value:?}"))
}

#[test]
fn a_read_through_a_follower_sees_every_write_acknowledged_before_it_was_sent() {
    let cluster = Cluster::start(ClusterSpec::default());
    runtime().block_on(async {
        let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
        cluster
            .put_eventually("warm", "up", Duration::from_secs(10))
            .await;
        let [a, b] = cluster.followers(leader)[..] else {
            panic!("three nodes");
        };
        for consistency in CONSISTENCIES {
            let sent = cluster.metric(b, SENT).await;
            let served = cluster.metric(leader, SERVED).await;
            let reads = cluster.metric(b, FOLLOWER_READS).await;
            let leader_gets = http_gets(&cluster, leader).await;
            // Write through the leader or the other follower, read at once through b.
            let rounds = 100u64;
            for n in 0..rounds {
                let key = format!("{consistency}-{n}");
                let writer = if n % 2 == 0 { leader } else { a };
                let value = n.to_string();
                retry_unavailable(|| cluster.put(writer, &key, &value))
                    .await
                    .unwrap_or_else(|e| panic!("put {key} through {writer}: {e:?}"));
                assert_eq!(
                    cluster.get(b, &key, consistency).await,
                    Ok(Some(n.to_string())),
                    "{consistency} read of {key} through follower {b} right after its write \
                     through {writer}"
                );
            }
            // Served by b itself: the leader answered read indexes, not GETs.
            assert_eq!(
                http_gets(&cluster, leader).await,
                leader_gets,
                "{consistency} reads through follower {b} reached the leader over HTTP"
            );
            let sent = cluster.metric(b, SENT).await - sent;
            assert!(
                sent >= rounds,
                "follower {b} sent {sent} read index requests"
            );
            let served = cluster.metric(leader, SERVED).await - served;
            assert!(served >= sent, "the leader served {served} of {sent}");
            let reads = cluster.metric(b, FOLLOWER_READS).await - reads;
            assert!(reads >= rounds, "follower {b} served {reads} reads itself");
        }
    });
}

/// Writers keep incrementing a register through every node while readers read it through
/// the followers: each read must return at least the highest value acknowledged before
/// it was sent, including acknowledgements that arrived a moment before.
#[test]
fn concurrent_reads_through_followers_never_go_back_before_an_acknowledged_write() {
    let cluster = Arc::new(Cluster::start(ClusterSpec::default()));
    runtime().block_on(async {
        let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
        cluster
            .put_eventually("register", "0", Duration::from_secs(10))
            .await;
        let readers_at = cluster.followers(leader);
        let stop = Arc::new(AtomicBool::new(false));
        // Highest value acknowledged so far; values are written in increasing order by
        // one writer, so "acknowledged" is monotonic.
        let acknowledged = Arc::new(AtomicU64::new(0));
        let writer = {
            let (cluster, stop, acknowledged) =
                (cluster.clone(), stop.clone(), acknowledged.clone());
            let nodes = cluster.running();
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let node = nodes[n as usize % nodes.len()];
                    if cluster.put(node, "register", &n.to_string()).await.is_ok() {
                        acknowledged.fetch_max(n, Ordering::SeqCst);
                    }
                }
            })
        };
        let violations = Arc::new(Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        for r in 0..8usize {
            let (cluster, stop) = (cluster.clone(), stop.clone());
            let (acknowledged, violations) = (acknowledged.clone(), violations.clone());
            let node = readers_at[r % readers_at.len()];
            let consistency = CONSISTENCIES[r % 2];
            readers.push(tokio::spawn(async move {
                let mut served = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let floor = acknowledged.load(Ordering::SeqCst);
                    match cluster.get(node, "register", consistency).await {
                        Ok(Some(value)) if number(&value) < floor => {
                            violations.lock().unwrap().push(format!(
                                "{consistency} read through node {node} answered {value} \
                                 after {floor} was acknowledged"
                            ))
                        }
                        Ok(Some(_)) => served += 1,
                        // Refused (a loaded machine may miss a heartbeat round): nothing
                        // was served, so nothing stale.
                        Err((503 | 504, _)) => {}
                        other => panic!("{consistency} read through node {node}: {other:?}"),
                    }
                }
                served
            }));
        }
        tokio::time::sleep(Duration::from_secs(4)).await;
        stop.store(true, Ordering::Relaxed);
        writer.await.expect("writer");
        let mut served = 0;
        for reader in readers {
            served += reader.await.expect("reader");
        }
        let violations = violations.lock().unwrap().clone();
        assert!(
            violations.is_empty(),
            "{} stale reads:\n{}",
            violations.len(),
            violations.join("\n")
        );
        assert!(served > 100, "only {served} reads served");
        let written = acknowledged.load(Ordering::SeqCst);
        assert!(written > 20, "only {written} writes acknowledged");
        for node in readers_at {
            assert!(
                cluster.metric(node, FOLLOWER_READS).await > 0,
                "node {node}"
            );
        }
        eprintln!("{served} reads through followers, {written} writes, none stale");
    });
}

/// Node 1 speaks protocol version 1, node 2 version 2, node 3 the current one: whoever
/// leads, no connection to it carries read index frames, so its followers forward their
/// reads over HTTP, and the reads are fresh.
#[test]
fn followers_of_a_leader_of_protocol_1_or_2_forward_their_reads_over_http() {
    let cluster = Cluster::configure(ClusterSpec::default());
    cluster.spawn_with_env(1, &[("RAFTLOG_TEST_PEER_PROTOCOL", "1")]);
    cluster.spawn_with_env(2, &[("RAFTLOG_TEST_PEER_PROTOCOL", "2")]);
    cluster.spawn(3);
    runtime().block_on(async {
        for leader in [1, 2] {
            cluster.make_leader(leader).await;
            for consistency in CONSISTENCIES {
                for follower in cluster.followers(leader) {
                    let key = format!("old-{leader}-{follower}-{consistency}");
                    retry_unavailable(|| cluster.put(follower, &key, "v"))
                        .await
                        .unwrap_or_else(|e| panic!("put {key}: {e:?}"));
                    let gets = http_gets(&cluster, leader).await;
                    let read = retry_unavailable(|| cluster.get(follower, &key, consistency)).await;
                    assert_eq!(read, Ok(Some("v".into())), "{consistency} read of {key}");
                    assert!(
                        http_gets(&cluster, leader).await > gets,
                        "the read through {follower} did not reach leader {leader} over HTTP"
                    );
                }
            }
            for id in 1..=3 {
                assert_eq!(
                    cluster.metric(id, SENT).await,
                    0,
                    "node {id} sent a read index request"
                );
            }
        }
    });
}

/// A follower cut off from its peers keeps believing in the leader for a while; the
/// others overwrite the register meanwhile. Every read through the cut-off follower must
/// fail or answer the fresh value.
#[test]
fn a_cut_off_follower_never_serves_a_stale_read() {
    let cluster = Cluster::start(ClusterSpec::default());
    runtime().block_on(async {
        for (round, consistency) in CONSISTENCIES.into_iter().cycle().take(4).enumerate() {
            let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
            let old = format!("{round}-old");
            cluster
                .put_eventually("register", &old, Duration::from_secs(10))
                .await;
            let follower = cluster.followers(leader)[0];
            // The follower has the old value and serves it while connected.
            let read = retry_unavailable(|| async {
                match cluster.get(follower, "register", consistency).await {
                    // Timed out (a loaded machine): nothing happened, try again.
                    Err((504, e)) => Err((503, e)),
                    other => other,
                }
            })
            .await;
            assert_eq!(read, Ok(Some(old.clone())));

            cluster.isolate(follower, true).await;
            let new = format!("{round}-new");
            retry_unavailable(|| cluster.put(leader, "register", &new))
                .await
                .expect("the majority takes the write");
            let mut refused = 0;
            let until = Instant::now() + Duration::from_secs(2);
            while Instant::now() < until {
                match cluster.get(follower, "register", consistency).await {
                    Ok(Some(value)) => assert_eq!(
                        value, new,
                        "round {round}: cut-off follower {follower} served a stale \
                         {consistency} read"
                    ),
                    Ok(None) => panic!("round {round}: the register vanished"),
                    Err((status, body)) => {
                        assert!(
                            [503, 504].contains(&status),
                            "round {round}: {status} {body}"
                        );
                        refused += 1;
                    }
                }
            }
            assert!(refused > 0, "round {round}: no read was refused");
            cluster.isolate(follower, false).await;
            // Reconnected, it serves the fresh value again.
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                match cluster.get(follower, "register", consistency).await {
                    Ok(Some(value)) if value == new => break,
                    Ok(Some(value)) if value != old => panic!("round {round}: read {value}"),
                    Ok(Some(_)) => panic!("round {round}: stale read after reconnecting"),
                    _ if Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(50)).await
                    }
                    other => panic!(
                        "round {round}: no fresh read after reconnecting: {other:?}\n{}",
                        cluster.logs_tail()
                    ),
                }
            }
        }
    });
}

/// Kill the leader while readers read through both followers: every read answers an
/// error or the latest acknowledged value, and reads resume once a new leader leads.
#[test]
fn reads_through_followers_when_the_leader_dies_are_fresh_or_refused() {
    let cluster = Arc::new(Cluster::start(ClusterSpec::default()));
    runtime().block_on(async {
        let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
        cluster
            .put_eventually("register", "1", Duration::from_secs(10))
            .await;
        let readers_at = cluster.followers(leader);
        let stop = Arc::new(AtomicBool::new(false));
        let acknowledged = Arc::new(AtomicU64::new(1));
        let writer = {
            let (cluster, stop, acknowledged) =
                (cluster.clone(), stop.clone(), acknowledged.clone());
            let nodes = readers_at.clone();
            tokio::spawn(async move {
                let mut n = 1u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let node = nodes[n as usize % nodes.len()];
                    if cluster.put(node, "register", &n.to_string()).await.is_ok() {
                        acknowledged.fetch_max(n, Ordering::SeqCst);
                    } else {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            })
        };
        let violations = Arc::new(Mutex::new(Vec::new()));
        let answers = Arc::new(Mutex::new(std::collections::BTreeMap::<u16, u64>::new()));
        let mut readers = Vec::new();
        for r in 0..4usize {
            let (cluster, stop) = (cluster.clone(), stop.clone());
            let (acknowledged, violations) = (acknowledged.clone(), violations.clone());
            let answers = answers.clone();
            let node = readers_at[r % readers_at.len()];
            let consistency = CONSISTENCIES[r / 2];
            readers.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let floor = acknowledged.load(Ordering::SeqCst);
                    let status = match cluster.get(node, "register", consistency).await {
                        Ok(Some(value)) => {
                            if number(&value) < floor {
                                violations.lock().unwrap().push(format!(
                                    "{consistency} read through node {node} answered {value} \
                                     after {floor} was acknowledged"
                                ));
                            }
                            200
                        }
                        Ok(None) => 404,
                        Err((status, _)) => status,
                    };
                    *answers.lock().unwrap().entry(status).or_default() += 1;
                    if status != 200 {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let before = acknowledged.load(Ordering::SeqCst);
        cluster.kill(leader);
        let killed = Instant::now();
        // Until writes and reads resume under a new leader.
        loop {
            let ok_reads = answers.lock().unwrap().get(&200).copied().unwrap_or(0);
            if acknowledged.load(Ordering::SeqCst) > before + 20 && ok_reads > 0 {
                break;
            }
            assert!(
                killed.elapsed() < Duration::from_secs(20),
                "nothing resumed after the kill: {:?}\n{}",
                answers.lock().unwrap(),
                cluster.logs_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let ok_before = answers.lock().unwrap().get(&200).copied().unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.store(true, Ordering::Relaxed);
        writer.await.expect("writer");
        for reader in readers {
            reader.await.expect("reader");
        }
        let answers = answers.lock().unwrap().clone();
        let violations = violations.lock().unwrap();
        assert!(
            violations.is_empty(),
            "{} stale reads:\n{}",
            violations.len(),
            violations.join("\n")
        );
        assert!(
            answers.keys().all(|s| [0, 200, 503, 504].contains(s)),
            "unexpected answers: {answers:?}"
        );
        assert!(
            answers.get(&200).copied().unwrap_or(0) > ok_before,
            "reads did not resume under the new leader: {answers:?}"
        );
        eprintln!("answers {answers:?}; no stale read");
    });
}
