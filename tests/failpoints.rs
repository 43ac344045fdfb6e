//! Rule: a disk fault on one node never costs an acknowledged write (issue 12, injected
//! I/O faults). A failed WAL write, fdatasync, segment preparation, rename, directory fsync
//! or compaction, or a failed stable-store save, stops the node (fail-stop: after a failed
//! fsync nothing it holds can be called durable); a failed snapshot write, fsync or rename
//! is answered with 500 and the node keeps serving from its log. Either way, restarted
//! without the fault the node rejoins, and every write acknowledged to a client is on every
//! node.
//!
//! Each area runs its faults one after another on one 3-node cluster under a recording
//! write load (`RecordingLoad`: Request-Ids, every 200 recorded), arming each failpoint on
//! the running node through `POST /v1/debug/failpoint` (the process tests' binary is built
//! with the `failpoints` feature; see Cargo.toml) and, where the fault must hit a node
//! before it serves, with `FAILPOINTS` at start.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{
    check_acknowledged_on_every_node, runtime, Cluster, ClusterSpec, LoadRecord, RecordingLoad,
};

/// Which node a fault is armed on.
#[derive(Clone, Copy, Debug)]
enum Target {
    Leader,
    Follower,
}

/// What makes the faulty operation run once the failpoint is armed.
#[derive(Clone, Copy, Debug)]
enum Trigger {
    /// The recording load's small writes (every round appends and fdatasyncs).
    Writes,
    /// Plus 256 KiB writes, so the 1 MiB WAL segments roll every few of them.
    SegmentRolls,
    /// `POST /v1/snapshot` on the armed node, which compacts its log afterwards.
    SnapshotAndCompaction,
    /// A leadership transfer, which changes every node's term (and the new leader's vote).
    TermChange,
}

struct Fault {
    name: &'static str,
    actions: &'static str,
    target: Target,
    trigger: Trigger,
    /// What the node's last words must name: the failed operation, or the panic.
    names: &'static str,
}

/// Arms each fault in turn on a running node and checks that the node fail-stops with a
/// message naming the operation and its file, then restarts it; finally checks every
/// acknowledged write on every node.
async fn fail_stop_round_after_round(spec: ClusterSpec, faults: &[Fault]) {
    let started = Instant::now();
    let cluster = Arc::new(Cluster::start(spec));
    cluster.wait_for_leader(Duration::from_secs(10)).await;
    let load = RecordingLoad::start(&cluster, 3);
    let acknowledged_fillers = fail_stop_each(&cluster, &load, faults).await;
    wait_for_acknowledgements(&cluster, &load, 20).await;
    let record = load.finish().await;
    check_load_answers(&record);
    let mut acknowledged = record.acknowledged;
    acknowledged.extend(acknowledged_fillers);
    check_acknowledged_on_every_node(&cluster, &acknowledged, Duration::from_secs(30)).await;
    eprintln!(
        "{} faults, {} acknowledged writes on all 3 nodes, {:?}",
        faults.len(),
        acknowledged.len(),
        started.elapsed()
    );
}

/// The rounds of [`fail_stop_round_after_round`] on a running cluster and load; returns
/// the large writes it acknowledged itself (to make segments roll).
async fn fail_stop_each(
    cluster: &Cluster,
    load: &RecordingLoad,
    faults: &[Fault],
) -> BTreeMap<String, String> {
    let started = Instant::now();
    let mut acknowledged_fillers = BTreeMap::new();
    let mut filler_number = 0u64;
    for fault in faults {
        wait_for_acknowledgements(cluster, load, 20).await;
        let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
        let armed = match fault.target {
            Target::Leader => leader,
            Target::Follower => leader % 3 + 1,
        };
        let log_before = cluster.log_text(armed).len();
        cluster
            .set_failpoint(armed, fault.name, fault.actions)
            .await;
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut triggered = false;
        let exit = loop {
            if let Some(exit) = cluster.wait_exit(armed, Duration::ZERO) {
                break exit;
            }
            assert!(
                Instant::now() < deadline,
                "node {armed} still runs 20 s after {}={} was armed\n{}",
                fault.name,
                fault.actions,
                cluster.logs_tail()
            );
            match fault.trigger {
                Trigger::Writes => {}
                Trigger::SegmentRolls => {
                    filler_number += 1;
                    let key = format!("filler-{filler_number}");
                    let value = format!("{filler_number:08}").repeat(32 << 10);
                    if cluster.put(leader, &key, &value).await.is_ok() {
                        acknowledged_fillers.insert(key, value);
                    }
                }
                Trigger::SnapshotAndCompaction if !triggered => {
                    let url = format!("http://{}/v1/snapshot", cluster.api(armed));
                    let _ = cluster.client.post(url).send().await;
                    triggered = true;
                }
                Trigger::TermChange if !triggered => {
                    // To the armed follower (it votes for itself) or away from the armed
                    // leader (it adopts the new term): either way it saves term and vote.
                    let to = match fault.target {
                        Target::Follower => armed,
                        Target::Leader => armed % 3 + 1,
                    };
                    let url = format!("http://{}/v1/leader/transfer", cluster.api(leader));
                    let body = serde_json::json!({ "to": to });
                    let _ = cluster.client.post(url).json(&body).send().await;
                    triggered = true;
                }
                Trigger::SnapshotAndCompaction | Trigger::TermChange => {}
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let log = cluster.log_text(armed);
        let last_words = &log[log_before.min(log.len())..];
        assert_eq!(
            exit.code(),
            Some(1),
            "node {armed} with {}={} must fail-stop with status 1\n{last_words}",
            fault.name,
            fault.actions
        );
        // The line `serve` exits with names the operation and (for an I/O error) the file.
        let exit_line = last_words
            .lines()
            .find(|line| line.contains(&format!("node {armed} stopped:")))
            .unwrap_or_else(|| panic!("node {armed} exited without saying why:\n{last_words}"));
        assert!(
            exit_line.contains(fault.names),
            "node {armed}'s exit must name the failed operation ({}): {exit_line}",
            fault.names
        );
        let data_dir = cluster.data_dir(armed).display().to_string();
        assert!(
            fault.actions != "return" || exit_line.contains(&data_dir),
            "node {armed}'s exit must name the file (under {data_dir}): {exit_line}"
        );
        if std::env::var_os("FAILPOINTS_TEST_SHOW").is_some() {
            eprintln!("{last_words}");
        }
        eprintln!(
            "{}={} on node {armed} ({:?}): fail-stopped after {:?} total",
            fault.name,
            fault.actions,
            fault.target,
            started.elapsed()
        );
        cluster.spawn(armed);
        wait_caught_up(cluster, armed).await;
    }
    acknowledged_fillers
}

/// Waits until the load has `count` more acknowledgements than now: the cluster serves.
async fn wait_for_acknowledgements(cluster: &Cluster, load: &RecordingLoad, count: usize) {
    let before = load.snapshot().acknowledged.len();
    let deadline = Instant::now() + Duration::from_secs(20);
    while load.snapshot().acknowledged.len() < before + count {
        assert!(
            Instant::now() < deadline,
            "the cluster acknowledged fewer than {count} writes in 20 s: {:?}\n{}",
            load.snapshot().unexpected,
            cluster.logs_tail()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until restarted node `id` has applied everything the leader had committed when
/// asked: it rejoined (with its failpoint gone, since failpoints live in the process).
async fn wait_caught_up(cluster: &Cluster, id: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    let commit_index = loop {
        if let Some(status) = cluster.status(leader).await {
            break status["commit_index"].as_u64().unwrap_or(0);
        }
        assert!(
            Instant::now() < deadline,
            "leader {leader} stopped answering"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    loop {
        let applied = cluster
            .status(id)
            .await
            .and_then(|s| s["applied_index"].as_u64());
        if applied.is_some_and(|applied| applied >= commit_index) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "restarted node {id} did not catch up to {commit_index} in 20 s (at {applied:?})\n{}",
            cluster.logs_tail()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A write in flight on a node that stops may get 5xx (503 nothing proposed, 504 outcome
/// unknown, retried with its Request-Id) but never a 4xx or a 200 for a lost write.
fn check_load_answers(record: &LoadRecord) {
    let client_errors: Vec<_> = record
        .unexpected
        .iter()
        .filter(|(status, _)| *status < 500)
        .collect();
    assert!(
        client_errors.is_empty(),
        "writes refused with a client error: {client_errors:?}"
    );
}

fn wal_spec() -> ClusterSpec {
    ClusterSpec {
        wal_segment_bytes: 1 << 20,
        snapshot_trailing_entries: 10,
        ..ClusterSpec::default()
    }
}

#[test]
fn wal_faults_fail_stop_the_node_and_lose_no_acknowledged_write() {
    runtime().block_on(fail_stop_round_after_round(
        wal_spec(),
        &[
            Fault {
                name: "wal::fdatasync",
                actions: "return",
                target: Target::Leader,
                trigger: Trigger::Writes,
                names: "fdatasync WAL segment",
            },
            // A crash after the write and before its fdatasync.
            Fault {
                name: "wal::fdatasync",
                actions: "panic",
                target: Target::Leader,
                trigger: Trigger::Writes,
                names: "failpoint wal::fdatasync panic",
            },
            Fault {
                name: "wal::write",
                actions: "return",
                target: Target::Follower,
                trigger: Trigger::Writes,
                names: "write WAL segment",
            },
            Fault {
                name: "wal::segment_prepare",
                actions: "return",
                target: Target::Leader,
                trigger: Trigger::SegmentRolls,
                names: "create prepared segment",
            },
            Fault {
                name: "wal::segment_rename",
                actions: "return",
                target: Target::Follower,
                trigger: Trigger::SegmentRolls,
                names: "rename prepared segment",
            },
            Fault {
                name: "wal::dir_fsync",
                actions: "return",
                target: Target::Leader,
                trigger: Trigger::SegmentRolls,
                names: "fsync WAL directory",
            },
            // Compaction runs off the raft loop; it poisons the WAL, and the next append
            // stops the node.
            Fault {
                name: "wal::compact",
                actions: "return",
                target: Target::Follower,
                trigger: Trigger::SnapshotAndCompaction,
                names: "compact WAL",
            },
            // A panic in compaction must stop the node like a panic on any of its threads.
            Fault {
                name: "wal::compact",
                actions: "panic",
                target: Target::Leader,
                trigger: Trigger::SnapshotAndCompaction,
                names: "failpoint wal::compact panic",
            },
        ],
    ));
}

#[test]
fn stable_store_faults_fail_stop_the_node_and_lose_no_acknowledged_write() {
    runtime().block_on(fail_stop_round_after_round(
        ClusterSpec::default(),
        &[
            Fault {
                name: "stable::save",
                actions: "return",
                target: Target::Follower,
                trigger: Trigger::TermChange,
                names: "cannot persist term and vote",
            },
            Fault {
                name: "stable::save",
                actions: "panic",
                target: Target::Leader,
                trigger: Trigger::TermChange,
                names: "failpoint stable::save panic",
            },
        ],
    ));
}

/// `POST /v1/snapshot` with `name` armed: 500 naming `operation`, the node keeps
/// acknowledging writes; disarmed, the next snapshot succeeds.
async fn failed_snapshot_is_reported_and_the_node_serves_on(
    cluster: &Cluster,
    load: &RecordingLoad,
    id: u64,
    name: &str,
    operation: &str,
) {
    let snapshot_url = format!("http://{}/v1/snapshot", cluster.api(id));
    // Something new must be applied since the last snapshot (the previous round's), or
    // the POST answers 200 with that snapshot without writing one (twice in ten runs).
    wait_for_acknowledgements(cluster, load, 5).await;
    cluster.set_failpoint(id, name, "return").await;
    let answer = cluster.client.post(&snapshot_url).send().await.unwrap();
    let status = answer.status().as_u16();
    let body = answer.text().await.unwrap();
    assert!(
        status == 500 && body.contains(operation) && body.contains("snapshot failed"),
        "{name}: POST /v1/snapshot must answer 500 naming {operation:?}: {status} {body}"
    );
    wait_for_acknowledgements(cluster, load, 20).await;
    assert!(
        cluster.wait_exit(id, Duration::ZERO).is_none(),
        "{name}: a failed snapshot must not stop node {id}\n{}",
        cluster.logs_tail()
    );
    cluster.set_failpoint(id, name, "off").await;
    let answer = cluster.client.post(&snapshot_url).send().await.unwrap();
    assert_eq!(
        answer.status().as_u16(),
        200,
        "{name}: disarmed, the snapshot succeeds: {:?}",
        answer.text().await
    );
}

#[test]
fn snapshot_faults_are_reported_and_lose_no_acknowledged_write() {
    runtime().block_on(async {
        let started = Instant::now();
        let cluster = Arc::new(Cluster::start(ClusterSpec {
            snapshot_trailing_entries: 10,
            ..ClusterSpec::default()
        }));
        let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
        // A misspelt failpoint is refused (JSON error naming the known ones), never
        // silently armed as a point nothing evaluates.
        let url = format!(
            "http://{}/v1/debug/failpoint?name=wal::fsync&actions=return",
            cluster.api(leader)
        );
        let refused = support::answer(cluster.client.post(url).send().await).await;
        assert!(
            matches!(&refused, Err((400, body))
                if body.contains("unknown failpoint") && body.contains("wal::fdatasync")),
            "{refused:?}"
        );

        let load = RecordingLoad::start(&cluster, 3);
        wait_for_acknowledgements(&cluster, &load, 20).await;
        for (name, operation) in [
            ("snapshot::write", "write snapshot"),
            ("snapshot::fsync", "fsync snapshot temp file"),
            ("snapshot::rename", "rename snapshot into place"),
        ] {
            failed_snapshot_is_reported_and_the_node_serves_on(
                &cluster, &load, leader, name, operation,
            )
            .await;
        }

        // A follower that must install the leader's snapshot, whose fsync fails: it
        // rejects the transfer and keeps running; once the fault is gone it installs the
        // snapshot the leader sends again.
        let follower = leader % 3 + 1;
        cluster.kill(follower);
        wait_for_acknowledgements(&cluster, &load, 50).await;
        let snapshot_url = format!("http://{}/v1/snapshot", cluster.api(leader));
        let answer = cluster.client.post(&snapshot_url).send().await.unwrap();
        assert_eq!(answer.status().as_u16(), 200, "{:?}", answer.text().await);
        let log_before = cluster.log_text(follower).len();
        cluster.spawn_with_env(follower, &[("FAILPOINTS", "snapshot::fsync=return")]);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let log = cluster.log_text(follower);
            let new = &log[log_before.min(log.len())..];
            if new.contains("fsync snapshot temp file") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "follower {follower} never failed to install the snapshot:\n{new}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        wait_for_acknowledgements(&cluster, &load, 20).await;
        assert!(
            cluster.wait_exit(follower, Duration::ZERO).is_none(),
            "a failed snapshot transfer must not stop follower {follower}\n{}",
            cluster.logs_tail()
        );
        cluster
            .set_failpoint(follower, "snapshot::fsync", "off")
            .await;
        wait_caught_up(&cluster, follower).await;
        let installed = cluster.log_text(follower);
        assert!(
            installed[log_before.min(installed.len())..]
                .contains("installed a snapshot from the leader"),
            "follower {follower} caught up by the snapshot once the fault was gone"
        );

        // Crashes in the middle of taking a snapshot: after the temp file is written and
        // before its fsync, and after the fsync and before the rename. The snapshot thread's
        // panic stops the node; restarted, it recovers from its previous snapshot and log.
        fail_stop_each(
            &cluster,
            &load,
            &[
                Fault {
                    name: "snapshot::fsync",
                    actions: "panic",
                    target: Target::Leader,
                    trigger: Trigger::SnapshotAndCompaction,
                    names: "failpoint snapshot::fsync panic",
                },
                Fault {
                    name: "snapshot::rename",
                    actions: "panic",
                    target: Target::Follower,
                    trigger: Trigger::SnapshotAndCompaction,
                    names: "failpoint snapshot::rename panic",
                },
            ],
        )
        .await;

        wait_for_acknowledgements(&cluster, &load, 20).await;
        let record = load.finish().await;
        check_load_answers(&record);
        check_acknowledged_on_every_node(&cluster, &record.acknowledged, Duration::from_secs(30))
            .await;
        eprintln!(
            "snapshot faults: {} acknowledged writes on all 3 nodes, {:?}",
            record.acknowledged.len(),
            started.elapsed()
        );
    });
}

/// Raft Figure 2 ("updated on stable storage before responding to RPCs"): a node whose save
/// of term and vote fails sends no vote. Of a 3-node cluster, follower `armed` fails every
/// stable-store save and the leader is stopped; the other follower, `candidate`, campaigns
/// and needs `armed`'s vote. `armed` must fail-stop without answering, so `candidate`
/// cannot become leader until the old leader is back. A vote sent before (or despite) the
/// failed save would make it leader at once.
///
/// `armed` runs with a long election timeout, so that `candidate` (default timeout)
/// campaigns first: were `armed` to campaign itself, its save of its own vote would fail
/// first and nobody would ask for its vote. The leader is stopped (SIGSTOP), not killed: a
/// killed leader's connections end, and `armed` would bring its election forward to just
/// past its minimum timeout (`RaftCore::on_link_lost`) and campaign itself.
#[test]
fn a_vote_whose_save_failed_never_leaves_the_node() {
    runtime().block_on(async {
        let cluster = Cluster::start(ClusterSpec::default());
        let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
        let armed = leader % 3 + 1;
        let candidate = armed % 3 + 1;
        let mut acknowledged = BTreeMap::new();
        for i in 0..20 {
            let (key, value) = (format!("before-{i}"), format!("v{i}"));
            cluster
                .put_eventually(&key, &value, Duration::from_secs(10))
                .await;
            acknowledged.insert(key, value);
        }
        // Restarted with a slow election timeout, then armed once it follows the leader.
        cluster.set_config_field("election_timeout_ms", serde_json::json!([1000, 60000]));
        cluster.kill(armed);
        cluster.spawn(armed);
        // Once it answers it has read the config; the others restart with the default.
        wait_caught_up(&cluster, armed).await;
        cluster.set_config_field("election_timeout_ms", serde_json::json!([150, 300]));
        cluster.set_failpoint(armed, "stable::save", "return").await;
        let armed_log_before = cluster.log_text(armed).len();
        let candidate_log_before = cluster.log_text(candidate).len();
        cluster.signal(leader, libc::SIGSTOP);

        let exit = cluster
            .wait_exit(armed, Duration::from_secs(20))
            .unwrap_or_else(|| {
                panic!(
                    "node {armed} still runs 20 s after its leader died with its stable \
                     store failing\n{}",
                    cluster.logs_tail()
                )
            });
        let armed_log = cluster.log_text(armed);
        let last_words = &armed_log[armed_log_before.min(armed_log.len())..];
        assert_eq!(exit.code(), Some(1), "{last_words}");
        assert!(
            last_words.contains(&format!(
                "node {armed} stopped: cannot persist term and vote"
            )),
            "node {armed}'s exit must name the failed save:\n{last_words}"
        );
        assert!(
            !last_words.contains("became candidate"),
            "node {armed} campaigned itself instead of being asked for its vote (its long \
             election timeout fired first); the scenario did not happen:\n{last_words}\n{}",
            cluster.logs_tail()
        );
        // `candidate` asked for the vote; give it many election timeouts to (wrongly) win.
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Some(status) = cluster.status(candidate).await {
                assert_ne!(
                    status["role"],
                    "leader",
                    "node {candidate} became leader with its only peer's vote, which node \
                     {armed} never saved: {status}\n{}",
                    cluster.logs_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let candidate_log = cluster.log_text(candidate);
        let campaign = &candidate_log[candidate_log_before.min(candidate_log.len())..];
        assert!(
            campaign.contains("became candidate"),
            "node {candidate} never asked for a vote:\n{campaign}"
        );
        assert!(
            !campaign.contains("became leader"),
            "node {candidate} led with a vote node {armed} never saved:\n{campaign}"
        );

        // Back to a majority: the old leader and then the stopped node (failpoints live in
        // the process, so it starts unarmed) rejoin, and nothing acknowledged is lost.
        cluster.kill(leader);
        cluster.spawn(leader);
        cluster.wait_for_leader(Duration::from_secs(10)).await;
        for i in 0..20 {
            let (key, value) = (format!("after-{i}"), format!("v{i}"));
            cluster
                .put_eventually(&key, &value, Duration::from_secs(10))
                .await;
            acknowledged.insert(key, value);
        }
        cluster.spawn(armed);
        wait_caught_up(&cluster, armed).await;
        check_acknowledged_on_every_node(&cluster, &acknowledged, Duration::from_secs(30)).await;
    });
}
