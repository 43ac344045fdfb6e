//! Membership changes on real `raftlog serve` processes, each under a concurrent write load
//! whose every acknowledged write must be readable at the end.

mod support;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{answer, retry_unavailable, runtime, Cluster, ClusterSpec};

/// Writes unique keys through every configured node in turn until stopped; remembers the
/// ones acknowledged with 200.
struct WriteLoad {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<(String, String)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl WriteLoad {
    fn start(cluster: &Cluster, name: &str) -> WriteLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let addrs: Vec<String> = cluster.nodes.values().map(|n| n.api_addr.clone()).collect();
        let client = cluster.client.clone();
        let scheme = cluster.scheme;
        let (stop_flag, acked_list, name) = (stop.clone(), acked.clone(), name.to_string());
        let task = tokio::spawn(async move {
            let mut n = 0u64;
            while !stop_flag.load(Ordering::Relaxed) {
                let key = format!("{name}-{n}");
                let value = format!("v{n}");
                let addr = &addrs[n as usize % addrs.len()];
                let sent = client
                    .put(format!("{scheme}://{addr}/v1/kv/{key}"))
                    .timeout(Duration::from_secs(8))
                    .body(value.clone())
                    .send()
                    .await;
                match answer(sent).await {
                    Ok(_) => acked_list.lock().unwrap().push((key, value)),
                    // Unknown or refused: not acknowledged, so not checked.
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
                n += 1;
            }
        });
        WriteLoad { stop, acked, task }
    }

    /// Stops the load and reads every acknowledged write back through `reader`.
    async fn stop_and_verify(self, cluster: &Cluster, reader: u64) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        let acked = self.acked.lock().unwrap().clone();
        for (key, value) in &acked {
            let read = retry_unavailable(|| cluster.get(reader, key, "linearizable"))
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "reading {key} via node {reader}: {e:?}\n{}",
                        cluster.logs_tail()
                    )
                });
            assert_eq!(
                read.as_deref(),
                Some(value.as_str()),
                "acknowledged write {key}={value} lost\n{}",
                cluster.logs_tail()
            );
        }
        acked.len()
    }
}

/// `GET /v1/members` of node `id`: `(voters, learners)`.
async fn members(cluster: &Cluster, id: u64) -> Option<(BTreeSet<u64>, BTreeSet<u64>)> {
    let url = cluster.url(id, "/v1/members");
    let body = answer(cluster.client.get(url).send().await).await.ok()?;
    let mut voters = BTreeSet::new();
    let mut learners = BTreeSet::new();
    for m in body["members"].as_array()? {
        let id = m["id"].as_u64()?;
        if m["voter"].as_bool()? {
            voters.insert(id);
        } else {
            learners.insert(id);
        }
    }
    Some((voters, learners))
}

/// Waits until every node in `nodes` reports exactly `voters` as voters and no learner.
async fn wait_for_voters(cluster: &Cluster, nodes: &[u64], voters: &[u64], within: Duration) {
    let want: BTreeSet<u64> = voters.iter().copied().collect();
    let deadline = Instant::now() + within;
    loop {
        let mut all = true;
        let mut seen = Vec::new();
        for &id in nodes {
            let got = members(cluster, id).await;
            all &= got.as_ref() == Some(&(want.clone(), BTreeSet::new()));
            seen.push((id, got));
        }
        if all {
            return;
        }
        if Instant::now() > deadline {
            panic!(
                "voters did not become {want:?} within {within:?}: {seen:?}\n{}",
                cluster.logs_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends a membership request to `via` until it answers something other than 503/504
/// (nothing proposed, or outcome unknown: the request is idempotent, so repeating it is safe).
async fn change(
    cluster: &Cluster,
    via: u64,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Result<Value, (u16, String)> {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let url = cluster.url(via, path);
        let mut request = cluster
            .client
            .request(method.parse().unwrap(), url)
            .timeout(Duration::from_secs(35));
        if let Some(body) = &body {
            request = request.json(body);
        }
        match answer(request.send().await).await {
            Err((status @ (503 | 504 | 0), body)) if Instant::now() < deadline => {
                eprintln!("{method} {path} via node {via}: {status} {body}; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            other => return other,
        }
    }
}

async fn status(cluster: &Cluster, id: u64) -> Value {
    cluster.status(id).await.unwrap_or(Value::Null)
}

fn join_arg(cluster: &Cluster, ids: &[u64]) -> String {
    ids.iter()
        .map(|id| cluster.api(*id).to_string())
        .collect::<Vec<_>>()
        .join(",")
}

#[test]
fn grow_three_to_five_with_join_adds_learners_then_promotes_them() {
    runtime().block_on(async {
        let mut cluster = Cluster::start(ClusterSpec::default());
        cluster.wait_for_leader(Duration::from_secs(10)).await;
        cluster.add_to_config(4);
        cluster.add_to_config(5);
        let load = WriteLoad::start(&cluster, "grow");
        tokio::time::sleep(Duration::from_millis(300)).await;

        let join = join_arg(&cluster, &[1, 2, 3]);
        cluster.spawn_with_args(4, &["--join", &join]);
        wait_for_voters(
            &cluster,
            &[1, 2, 3, 4],
            &[1, 2, 3, 4],
            Duration::from_secs(30),
        )
        .await;
        cluster.spawn_with_args(5, &["--join", &join]);
        wait_for_voters(
            &cluster,
            &[1, 2, 3, 4, 5],
            &[1, 2, 3, 4, 5],
            Duration::from_secs(30),
        )
        .await;

        // The leader reports every member's progress and a failure tolerance of 2 of 5.
        let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
        let s = status(&cluster, leader).await;
        assert_eq!(s["failure_tolerance"], 2, "{s}");
        for m in s["members"].as_array().unwrap() {
            assert!(
                m["match_index"].as_u64().is_some() && m["lag"].as_u64().is_some(),
                "{s}"
            );
        }

        // Restarted with --join while a member: it just rejoins from its data directory.
        cluster.kill(4);
        cluster.spawn_with_args(4, &["--join", &join]);
        tokio::time::sleep(Duration::from_secs(1)).await;
        wait_for_voters(
            &cluster,
            &[1, 2, 3, 4, 5],
            &[1, 2, 3, 4, 5],
            Duration::from_secs(20),
        )
        .await;

        let acked = load.stop_and_verify(&cluster, 5).await;
        assert!(acked > 0, "no write was acknowledged during the change");
    });
}

#[test]
fn shrink_five_to_three_through_a_follower() {
    runtime().block_on(async {
        let cluster = Cluster::start(ClusterSpec {
            nodes: 5,
            ..ClusterSpec::default()
        });
        let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
        let load = WriteLoad::start(&cluster, "shrink");
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Remove two nodes that do not lead, each request sent to a node that is not the leader.
        let removed: Vec<u64> = (1..=5).filter(|id| *id != leader).take(2).collect();
        let keep: Vec<u64> = (1..=5).filter(|id| !removed.contains(id)).collect();
        for &id in &removed {
            let via = *keep.iter().find(|k| **k != leader).unwrap();
            let answered =
                change(&cluster, via, "DELETE", &format!("/v1/members/{id}"), None).await;
            match answered {
                Ok(body) => assert!(
                    !body.to_string().contains(&format!("\"id\":{id},")),
                    "{body}"
                ),
                // A retry after the removal committed.
                Err((404, _)) => {}
                Err(e) => panic!("removing {id}: {e:?}\n{}", cluster.logs_tail()),
            }
        }
        wait_for_voters(&cluster, &keep, &keep, Duration::from_secs(10)).await;
        let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
        assert_eq!(status(&cluster, leader).await["failure_tolerance"], 1);
        for id in removed {
            cluster.kill(id);
        }
        let acked = load.stop_and_verify(&cluster, keep[0]).await;
        assert!(acked > 0);
    });
}

#[test]
fn replaced_node_catches_up_by_install_snapshot_and_then_votes() {
    runtime().block_on(async {
        let mut cluster = Cluster::start(ClusterSpec {
            snapshot_threshold: 100,
            snapshot_trailing_entries: 10,
            ..ClusterSpec::default()
        });
        let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
        for i in 0..300 {
            cluster
                .put_eventually(&format!("pre-{i}"), "x", Duration::from_secs(10))
                .await;
        }
        let load = WriteLoad::start(&cluster, "replace");
        let old = (1..=3).find(|id| *id != leader).unwrap();
        let via = (1..=3).find(|id| *id != old).unwrap();
        match change(&cluster, via, "DELETE", &format!("/v1/members/{old}"), None).await {
            Ok(_) | Err((404, _)) => {}
            Err(e) => panic!("removing {old}: {e:?}\n{}", cluster.logs_tail()),
        }
        cluster.kill(old);
        let rest: Vec<u64> = (1..=3).filter(|id| *id != old).collect();

        // A fresh node with a new id and an empty data directory.
        cluster.add_to_config(4);
        cluster.spawn_with_args(4, &["--join", &join_arg(&cluster, &rest)]);
        let mut voters = rest.clone();
        voters.push(4);
        wait_for_voters(&cluster, &voters, &voters, Duration::from_secs(30)).await;
        let metrics = cluster
            .client
            .get(cluster.url(4, "/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let installed = metrics
            .lines()
            .find_map(|l| l.strip_prefix("raftlog_snapshots_installed_total "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        assert!(
            installed >= 1,
            "node 4 did not catch up by InstallSnapshot:\n{metrics}"
        );

        // It votes: with the other original node gone, the quorum of 3 needs node 4.
        let other = *rest.iter().find(|id| **id != leader).unwrap_or(&rest[0]);
        let survivor = *rest.iter().find(|id| **id != other).unwrap();
        cluster.kill(other);
        let acked_before = load.stop_and_verify(&cluster, survivor).await;
        assert!(acked_before > 0);
        cluster
            .put_eventually("after-replacement", "ok", Duration::from_secs(20))
            .await;
        assert_eq!(
            retry_unavailable(|| cluster.get(4, "after-replacement", "linearizable"))
                .await
                .unwrap()
                .as_deref(),
            Some("ok")
        );
    });
}

#[test]
fn removing_the_current_leader_answers_and_a_new_leader_takes_over() {
    runtime().block_on(async {
        let cluster = Cluster::start(ClusterSpec::default());
        let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
        let load = WriteLoad::start(&cluster, "unlead");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let via = (1..=3).find(|id| *id != leader).unwrap();
        match change(
            &cluster,
            via,
            "DELETE",
            &format!("/v1/members/{leader}"),
            None,
        )
        .await
        {
            Ok(body) => assert_eq!(body["members"].as_array().unwrap().len(), 2, "{body}"),
            Err((404, _)) => {}
            Err(e) => panic!("removing leader {leader}: {e:?}\n{}", cluster.logs_tail()),
        }
        let rest: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
        wait_for_voters(&cluster, &rest, &rest, Duration::from_secs(10)).await;
        cluster.kill(leader);
        let new_leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
        assert_ne!(new_leader, leader);
        let acked = load.stop_and_verify(&cluster, rest[0]).await;
        assert!(acked > 0);
    });
}

#[test]
fn unsafe_removal_with_a_member_down_is_refused_unless_forced() {
    runtime().block_on(async {
        let cluster = Cluster::start(ClusterSpec::default());
        let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
        let followers: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
        let (down, target) = (followers[0], followers[1]);
        let load = WriteLoad::start(&cluster, "unsafe");
        cluster.kill(down);
        // Longer than an election timeout: the leader no longer counts it reachable.
        tokio::time::sleep(Duration::from_millis(800)).await;
        let path = format!("/v1/members/{target}");
        let refused = change(&cluster, leader, "DELETE", &path, None)
            .await
            .unwrap_err();
        assert_eq!(refused.0, 409, "{refused:?}");
        assert!(
            refused.1.contains("unsafe_change") && refused.1.contains("only 1"),
            "{refused:?}"
        );
        // Refused means nothing was proposed.
        assert_eq!(members(&cluster, leader).await.unwrap().0.len(), 3);

        // Forced, the change is appended; it commits once the down member is back.
        let forced_path = format!("{path}?force=true");
        let (forced, ()) = tokio::join!(
            change(&cluster, leader, "DELETE", &forced_path, None),
            async {
                tokio::time::sleep(Duration::from_millis(500)).await;
                cluster.spawn(down);
            }
        );
        match forced {
            // 404: a retry after the removal committed.
            Ok(_) | Err((404, _)) => {}
            Err(e) => panic!("forced removal: {e:?}\n{}", cluster.logs_tail()),
        }
        let mut rest = vec![leader, down];
        rest.sort();
        wait_for_voters(&cluster, &rest, &rest, Duration::from_secs(30)).await;
        cluster.kill(target);
        let acked = load.stop_and_verify(&cluster, down).await;
        assert!(acked > 0);
    });
}

#[test]
fn leader_killed_during_a_join_converges_without_losing_writes() {
    runtime().block_on(async {
        let mut cluster = Cluster::start(ClusterSpec::default());
        let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
        cluster.add_to_config(4);
        let load = WriteLoad::start(&cluster, "crash");
        tokio::time::sleep(Duration::from_millis(200)).await;
        cluster.spawn_with_args(4, &["--join", &join_arg(&cluster, &[1, 2, 3])]);
        // Kill the leader as soon as the learner entry is in its log (committed or not).
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some((voters, learners)) = members(&cluster, leader).await {
                if voters.contains(&4) || learners.contains(&4) {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "node 4 never appeared\n{}",
                cluster.logs_tail()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        cluster.kill(leader);
        tokio::time::sleep(Duration::from_secs(1)).await;
        cluster.spawn(leader);
        // Whether the change committed or not, --join keeps asking until node 4 is a voter.
        wait_for_voters(
            &cluster,
            &[1, 2, 3, 4],
            &[1, 2, 3, 4],
            Duration::from_secs(40),
        )
        .await;
        let acked = load.stop_and_verify(&cluster, 4).await;
        assert!(acked > 0);
    });
}

#[test]
fn node_not_in_the_config_without_join_exits_2_with_the_remedy() {
    let cluster = Cluster::start(ClusterSpec {
        nodes: 1,
        ..ClusterSpec::default()
    });
    let output = std::process::Command::new(support::raftlog_bin())
        .args(["serve", "--config"])
        .arg(&cluster.config_path)
        .args(["--id", "9"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--join") && stderr.contains("\"9\""),
        "{stderr}"
    );
}

#[test]
fn cli_members_add_promote_remove_and_list() {
    runtime().block_on(async {
        let cluster = Cluster::start(ClusterSpec::default());
        cluster.wait_for_leader(Duration::from_secs(10)).await;
        let cli = |args: &[&str]| {
            let output = std::process::Command::new(support::raftlog_bin())
                .args(args)
                .args(["--addr", cluster.api(1)])
                .args(cluster.cli_tls_args())
                .output()
                .unwrap();
            (
                output.status.code(),
                String::from_utf8_lossy(&output.stdout).into_owned(),
                String::from_utf8_lossy(&output.stderr).into_owned(),
            )
        };
        let raft = format!("127.0.0.1:{}", support::free_port());
        let api = format!("127.0.0.1:{}", support::free_port());
        // A just-elected leader answers 503 until its first entry commits: retry like a client.
        let mut added = cli(&["members", "add", "4", &raft, &api, "--learner"]);
        for _ in 0..50 {
            if added.0 == Some(0) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            added = cli(&["members", "add", "4", &raft, &api, "--learner"]);
        }
        assert_eq!(added.0, Some(0), "{added:?}");
        assert!(added.1.contains("learner"), "{added:?}");
        let (code, out, err) = cli(&["members", "list", "--json"]);
        assert_eq!(code, Some(0), "{err}");
        let listed: Value = serde_json::from_str(&out).unwrap();
        assert!(
            listed["members"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["id"] == 4 && m["voter"] == false),
            "{listed}"
        );
        let (code, out, err) = cli(&["members", "promote", "4"]);
        assert_eq!(code, Some(0), "{out}{err}");
        let (code, out, err) = cli(&["members", "remove", "4"]);
        assert_eq!(code, Some(0), "{out}{err}");
        assert!(!out.contains(&api), "{out}");
        let (code, _, err) = cli(&["members", "remove", "4"]);
        assert_eq!(code, Some(1));
        assert!(err.contains("not_found"), "{err}");
        wait_for_voters(&cluster, &[1, 2, 3], &[1, 2, 3], Duration::from_secs(10)).await;
    });
}
