//! Whether a node may take part in elections: first start, wiped disks, removed members.
//!
//! # The rule: a node that remembers nothing votes only in a cluster that holds nothing
//! A node that starts with an empty data directory cannot tell "this cluster was never
//! started" from "my disk was replaced". In the second case it has forgotten its votes and
//! its log, and if it voted it could elect a leader that lacks acknowledged writes (issue 11:
//! 3 nodes, node 3 down, `PUT` acknowledged by 1 and 2, node 2's disk wiped, 2 and 3 start,
//! elect node 3, and the write is gone). Raft assumes stable storage (§5.2, Figure 2); the
//! thesis (§4.1 and §4.2) has a server that lost it rejoin as a new server.
//!
//! So at start a node is one of:
//!
//! | stable store                                 | standing         | what it does                 |
//! |----------------------------------------------|------------------|------------------------------|
//! | tombstone                                    | removed          | exits 1, names the remedy    |
//! | `bootstrapped` mark, or term > 0, or a log   | bootstrapped     | runs as usual                |
//! | nothing (term 0, no log, no snapshot)        | fresh            | waits, voting for nobody     |
//! | fresh, and the only voter in `nodes`         | bootstrapped     | nothing to lose, runs        |
//! | fresh, not a voter (`serve --join`)          | bootstrapped     | joins as a learner, runs     |
//!
//! A **fresh** node starts its transport and client API but its raft loop ignores ticks and
//! peer messages: it does not campaign, grants no vote and acknowledges no entry. It asks
//! the other voters of `nodes` for their `GET /v1/status`:
//! - if any of them holds state (term > 0, a log or a snapshot), the cluster exists and this
//!   node's data is gone: it exits 1 with the remedy (remove it on the cluster, start it on an
//!   empty directory with `--join`, as a new learner);
//! - once enough of the others have answered that they hold nothing either (a majority of all
//!   voters, counted among the *other* nodes, so all of them in a 3-node cluster), this is the
//!   first start of the whole cluster: it durably marks itself bootstrapped and takes part.
//!
//! Why the others must be a majority without counting this node: a committed entry lives on
//! a majority M, and a leader was elected by a majority V. If this node was in M (or V) and
//! lost its disk, M (or V) without it still has at least half of the others, so any majority
//! of the others contains a node that holds the entry (or the term) and answers "state".
//! Only losing the disks of a majority (beyond what Raft tolerates) defeats it. A peer is
//! counted fresh once seen fresh while this node waits: anything it learns later came after
//! this node lost its data.
//!
//! Known limit: every voter of `nodes` must be started for the first start (of a 3-node
//! cluster), and a node that first starts after the others already elected a leader is
//! refused like a wiped one (it cannot prove it never voted). PreVote keeps the term at 0 until
//! a majority takes part, and the probe is repeated every [`PROBE_INTERVAL`], so nodes started
//! together (`raftlog cluster`, the process tests) see each other fresh.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use storage::stable::StableStore;
use storage::{HardState, Membership, NodeId};
use tokio::sync::{mpsc, watch};

use super::{Event, MembershipLoss, NodeFailure, StorageStep};

/// How often a fresh node asks its peers again.
const PROBE_INTERVAL: Duration = Duration::from_millis(50);
/// How long one status request may take.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// How often a waiting node says what it waits for.
const WAITING_LOG_INTERVAL: Duration = Duration::from_secs(2);

/// Whether the node may vote right away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Standing {
    /// Part of a running cluster (or its only voter): take part at once.
    Bootstrapped,
    /// Holds nothing: take part only once the peers confirm a first start.
    Fresh,
}

/// Decides the standing from what the data directory holds; see the module docs.
pub(crate) fn standing(
    stable: &StableStore,
    hard_state: &HardState,
    holds_log: bool,
    id: NodeId,
    bootstrap: &Membership,
) -> storage::Result<Standing> {
    if stable.is_bootstrapped()? {
        return Ok(Standing::Bootstrapped);
    }
    let lone_voter = bootstrap.voters().all(|voter| voter == id);
    // A node joining with `--join` starts outside the voters: it grants no vote until the
    // cluster's log makes it one, by which time it holds that log.
    let joining = !bootstrap.is_voter(id);
    if hard_state.term > 0 || holds_log || lone_voter || joining {
        // Data directories from before the mark existed hold state: they are part of a
        // cluster. Marking them once spares the check at every later start.
        stable.mark_bootstrapped()?;
        return Ok(Standing::Bootstrapped);
    }
    Ok(Standing::Fresh)
}

/// What one peer answered.
enum PeerAnswer {
    /// Term 0, no log, no snapshot.
    Fresh,
    /// The peer holds state: the cluster exists.
    HoldsState {
        term: u64,
        last_log_index: u64,
        snapshot_index: u64,
    },
    /// No answer, or not one we understand.
    Unreachable(String),
}

/// Waits until the peers confirm a first start of the whole cluster (then marks the node
/// bootstrapped and tells the raft loop), or one of them holds state (then tells the raft
/// loop to stop with the remedy). See the module docs for the rule.
pub(crate) async fn confirm_first_start(
    id: NodeId,
    cluster_id: String,
    dir: std::path::PathBuf,
    bootstrap: Membership,
    stable: Arc<StableStore>,
    events: mpsc::UnboundedSender<Event>,
    tls: Option<Arc<crate::security::tls::NodeTls>>,
) {
    let others: Vec<(NodeId, String)> = bootstrap
        .members
        .iter()
        .filter(|(other, m)| **other != id && m.voter)
        .map(|(other, m)| (*other, m.api_addr.clone()))
        .collect();
    let voters = others.len() + 1;
    // A majority of all voters, found among the others (or all of them when that is fewer).
    let fresh_needed = (voters / 2 + 1).min(others.len());
    let scheme = crate::security::tls::api_scheme(tls.as_deref());
    let client = match crate::security::tls::api_client_builder(
        crate::security::tls::http_client_builder(),
        tls.as_deref(),
    )
    .timeout(PROBE_TIMEOUT)
    .build()
    {
        Ok(client) => client,
        Err(e) => {
            let _ = events.send(Event::Fatal(NodeFailure::Environment {
                what: "build the HTTP client that asks peers whether the cluster exists",
                source: Box::new(e),
            }));
            return;
        }
    };
    tracing::info!(
        fresh_needed,
        "empty data directory: voting for nobody until the other voters confirm this is the \
         first start of the cluster"
    );
    let mut seen_fresh = BTreeSet::new();
    let mut last_waiting_log = Instant::now();
    loop {
        let answers = futures_util::future::join_all(
            others
                .iter()
                .filter(|(other, _)| !seen_fresh.contains(other))
                .map(|(other, api_addr)| {
                    let client = &client;
                    async move { (*other, api_addr, ask_peer(client, scheme, api_addr).await) }
                }),
        )
        .await;
        let mut unreachable = Vec::new();
        for (other, api_addr, answer) in answers {
            match answer {
                PeerAnswer::Fresh => {
                    seen_fresh.insert(other);
                }
                PeerAnswer::HoldsState {
                    term,
                    last_log_index,
                    snapshot_index,
                } => {
                    let loss = MembershipLoss::DataLost {
                        id,
                        dir: dir.clone(),
                        cluster_id: cluster_id.clone(),
                        peer: other,
                        peer_api_addr: api_addr.clone(),
                        peer_term: term,
                        peer_last_log_index: last_log_index,
                        peer_snapshot_index: snapshot_index,
                    };
                    let _ = events.send(Event::Fatal(loss.into()));
                    return;
                }
                PeerAnswer::Unreachable(why) => {
                    unreachable.push(format!("node {other} ({api_addr}): {why}"))
                }
            }
        }
        if seen_fresh.len() >= fresh_needed {
            if let Err(e) = stable.mark_bootstrapped() {
                let _ = events.send(Event::Fatal(NodeFailure::Storage {
                    step: StorageStep::MarkBootstrapped,
                    source: e,
                }));
                return;
            }
            tracing::info!(
                fresh_peers = ?seen_fresh,
                "first start of the cluster confirmed: taking part in elections"
            );
            let _ = events.send(Event::FirstStartConfirmed);
            return;
        }
        if last_waiting_log.elapsed() >= WAITING_LOG_INTERVAL {
            last_waiting_log = Instant::now();
            tracing::warn!(
                fresh_peers = ?seen_fresh,
                fresh_needed,
                "empty data directory: still waiting for the other voters to confirm a first \
                 start before voting; unanswered: {}",
                unreachable.join("; ")
            );
        }
        if events.is_closed() {
            return;
        }
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
}

/// How often a node without a leader asks the members whether it was removed.
const REMOVAL_PROBE_INTERVAL: Duration = Duration::from_millis(500);
/// Between the two looks at a leader that no longer names this node.
const REMOVAL_CONFIRM_DELAY: Duration = Duration::from_millis(300);

/// While this node has no leader, asks the other members of `membership` whether one of
/// them leads a configuration without this node, and whether that configuration committed:
/// a second look at the same leader in the same term must show a commit index at or past
/// the last log index of the first look, which held the configuration (a leader never
/// truncates its own log). Then it tells the raft loop, which leaves a tombstone and stops
/// (issue 10). Gives up (clearing `watching`) once a leader is heard again.
pub(crate) async fn confirm_removal(
    id: NodeId,
    membership: Membership,
    leader: watch::Receiver<Option<NodeId>>,
    watching: Arc<AtomicBool>,
    events: mpsc::UnboundedSender<Event>,
    tls: Option<Arc<crate::security::tls::NodeTls>>,
) {
    let scheme = crate::security::tls::api_scheme(tls.as_deref());
    let Ok(client) = crate::security::tls::api_client_builder(
        crate::security::tls::http_client_builder(),
        tls.as_deref(),
    )
    .timeout(PROBE_TIMEOUT)
    .build() else {
        watching.store(false, Ordering::Relaxed);
        return;
    };
    let others: Vec<(NodeId, String)> = membership
        .members
        .iter()
        .filter(|(other, _)| **other != id)
        .map(|(other, m)| (*other, m.api_addr.clone()))
        .collect();
    loop {
        if leader.borrow().is_some() || events.is_closed() {
            watching.store(false, Ordering::Relaxed);
            return;
        }
        for (other, api_addr) in &others {
            let Some(first) = leader_without(&client, scheme, api_addr, id).await else {
                continue;
            };
            tokio::time::sleep(REMOVAL_CONFIRM_DELAY).await;
            let Some(second) = leader_without(&client, scheme, api_addr, id).await else {
                continue;
            };
            if second.term == first.term && second.commit_index >= first.last_log_index {
                tracing::info!(
                    leader = other,
                    term = second.term,
                    commit_index = second.commit_index,
                    "the leader committed a configuration without this node"
                );
                let _ = events.send(Event::RemovedFromMembership {
                    index: first.last_log_index,
                    confirmed_by: Some(*other),
                });
                return;
            }
        }
        tokio::time::sleep(REMOVAL_PROBE_INTERVAL).await;
    }
}

/// What a leader that no longer names this node reported.
struct LeaderView {
    term: u64,
    commit_index: u64,
    last_log_index: u64,
}

/// The status of the node at `api_addr` if it leads a configuration without `id`.
async fn leader_without(
    client: &reqwest::Client,
    scheme: &str,
    api_addr: &str,
    id: NodeId,
) -> Option<LeaderView> {
    let url = format!("{scheme}://{api_addr}/v1/status");
    let status: serde_json::Value = client.get(url).send().await.ok()?.json().await.ok()?;
    let names_me = status["members"]
        .as_array()?
        .iter()
        .any(|m| m["id"].as_u64() == Some(id));
    if status["role"] != "leader" || names_me {
        return None;
    }
    Some(LeaderView {
        term: status["term"].as_u64()?,
        commit_index: status["commit_index"].as_u64()?,
        last_log_index: status["last_log_index"].as_u64()?,
    })
}

async fn ask_peer(client: &reqwest::Client, scheme: &str, api_addr: &str) -> PeerAnswer {
    let url = format!("{scheme}://{api_addr}/v1/status");
    let response = match client.get(url).send().await {
        Ok(response) => response,
        Err(e) => return PeerAnswer::Unreachable(e.to_string()),
    };
    if !response.status().is_success() {
        return PeerAnswer::Unreachable(format!("answered {}", response.status()));
    }
    let status: serde_json::Value = match response.json().await {
        Ok(status) => status,
        Err(e) => return PeerAnswer::Unreachable(format!("unreadable status: {e}")),
    };
    let field = |name: &str| status[name].as_u64();
    match (
        field("term"),
        field("last_log_index"),
        field("snapshot_index"),
    ) {
        (Some(0), Some(0), Some(0)) => PeerAnswer::Fresh,
        (Some(term), Some(last_log_index), Some(snapshot_index)) => PeerAnswer::HoldsState {
            term,
            last_log_index,
            snapshot_index,
        },
        _ => PeerAnswer::Unreachable("status without term, last_log_index, snapshot_index".into()),
    }
}

#[cfg(test)]
mod tests {
    use storage::Member;

    use super::*;

    fn voters(ids: &[NodeId]) -> Membership {
        let mut membership = Membership::default();
        for &id in ids {
            membership.members.insert(
                id,
                Member {
                    raft_addr: format!("127.0.0.1:{}", 7000 + id),
                    api_addr: format!("127.0.0.1:{}", 8000 + id),
                    voter: true,
                },
            );
        }
        membership
    }

    fn store() -> (tempfile::TempDir, StableStore) {
        let dir = tempfile::tempdir().unwrap();
        let stable = StableStore::open(dir.path().join("stable")).unwrap();
        (dir, stable)
    }

    #[test]
    fn empty_directory_of_a_voter_among_others_is_fresh_until_marked() {
        let (_dir, stable) = store();
        let none = HardState::default();
        assert_eq!(
            standing(&stable, &none, false, 2, &voters(&[1, 2, 3])).unwrap(),
            Standing::Fresh
        );
        assert!(!stable.is_bootstrapped().unwrap());
        stable.mark_bootstrapped().unwrap();
        assert_eq!(
            standing(&stable, &none, false, 2, &voters(&[1, 2, 3])).unwrap(),
            Standing::Bootstrapped
        );
    }

    #[test]
    fn any_term_or_log_means_bootstrapped_and_is_marked() {
        let (_dir, stable) = store();
        let term = HardState {
            term: 3,
            voted_for: None,
        };
        assert_eq!(
            standing(&stable, &term, false, 2, &voters(&[1, 2, 3])).unwrap(),
            Standing::Bootstrapped
        );
        assert!(stable.is_bootstrapped().unwrap());
        let (_dir, stable) = store();
        assert_eq!(
            standing(&stable, &HardState::default(), true, 2, &voters(&[1, 2, 3])).unwrap(),
            Standing::Bootstrapped
        );
    }

    #[test]
    fn lone_voter_and_joining_learner_need_no_confirmation() {
        let (_dir, stable) = store();
        let none = HardState::default();
        assert_eq!(
            standing(&stable, &none, false, 1, &voters(&[1])).unwrap(),
            Standing::Bootstrapped
        );
        let (_dir, stable) = store();
        // `serve --join` starts from the live membership without this node.
        assert_eq!(
            standing(&stable, &none, false, 4, &voters(&[1, 2, 3])).unwrap(),
            Standing::Bootstrapped
        );
    }
}
