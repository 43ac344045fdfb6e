//! Leadership transfer driven by clients, and the graceful stop built on it.
//!
//! The core does the protocol (thesis §3.10): it refuses proposals, brings the target up to
//! date, sends it TimeoutNow, and abandons the attempt after an election timeout. This
//! module picks the target, checks it is a voter, and tells the client how it ended:
//!
//! | what the raft loop sees after a step          | answer                          |
//! |-----------------------------------------------|---------------------------------|
//! | the known leader is the target                | done                            |
//! | still leader, the core no longer transfers    | failed: abandoned (timed out)   |
//! | another node leads (and this one follows it)  | failed: another node won        |
//! | no leader known                               | keep waiting (election running) |
//! | nothing decided by the node's own deadline    | failed: outcome unknown         |
//!
//! A graceful stop (SIGTERM) first makes `/readyz` answer 503, then, on a leader, hands
//! leadership to the most caught-up voter so the cluster does not sit out an election
//! timeout, and only then lets the process exit.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use storage::NodeId;
use tokio::sync::oneshot;

use super::{Metrics, Node, Request};
use crate::kv::StateMachine;
use crate::raft::{LogStorage, ProposeError, RaftCore, Role};

/// Longest a stopping node waits for its peer links to write what they hold: a batch is
/// written in well under a millisecond to a live peer; this bounds the wait on one that is
/// slow to take it.
pub const LINK_FLUSH_MAX: Duration = Duration::from_millis(500);

/// The answer the raft loop gives a transfer request: the node that leads at the end.
pub(super) type TransferReply = oneshot::Sender<Result<NodeId, TransferError>>;

/// Why a transfer did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransferError {
    /// This node does not lead; `leader` if known. Ask the leader.
    #[error("node is not the leader (leader: {0:?})")]
    NotLeader(Option<NodeId>),
    /// The target is not in the membership.
    #[error("node {0} is not a member of the cluster; give the id of a voter")]
    NotMember(NodeId),
    /// The target is a learner: it cannot be elected (hashicorp/raft#398).
    #[error("node {0} is a learner and cannot lead; promote it to voter first, or pick a voter")]
    NotVoter(NodeId),
    /// Without a target, no other voter has been heard from recently.
    #[error("no other voter has answered within an election timeout; nobody can take over, leadership stays with node {0}")]
    NoCandidate(NodeId),
    /// Another transfer is under way.
    #[error("a leadership transfer to node {0} is already in progress; wait for it to end (at most an election timeout)")]
    InProgress(NodeId),
    /// The core gave up after an election timeout; this node leads and accepts writes again.
    #[error("node {to} did not take over within an election timeout ({timeout_ms} ms): it did not catch up or did not win its election; node {leader} still leads and accepts writes again")]
    Abandoned {
        /// The target.
        to: NodeId,
        /// The leader that resumed.
        leader: NodeId,
        /// The election timeout waited.
        timeout_ms: u64,
    },
    /// The target campaigned but another node won the election.
    #[error("node {leader} won the election instead of node {to}; retry the transfer to move leadership on")]
    OtherLeader {
        /// The target.
        to: NodeId,
        /// Who leads instead.
        leader: NodeId,
    },
    /// Neither success nor abandonment was seen in time (the election may still end with
    /// the target leading).
    #[error("no outcome within {waited_ms} ms: leadership may or may not have moved; check `raftlog status`")]
    Unknown {
        /// How long this node waited.
        waited_ms: u64,
    },
    /// The node is shutting down or failed.
    #[error("the node stopped before the transfer ended")]
    Stopped,
}

/// A transfer that ended with the target leading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransferDone {
    /// The new leader.
    pub leader: NodeId,
    /// From the request to seeing the target lead.
    pub elapsed: Duration,
}

/// The raft loop's side of a transfer request: starts it, answers at once if it cannot
/// start, else remembers the client until [`TransferWaiters::check`] sees the end.
pub(super) fn start<L: LogStorage>(
    core: &mut RaftCore<L>,
    waiters: &mut TransferWaiters,
    metrics: &Metrics,
    to: Option<NodeId>,
    reply: TransferReply,
) {
    match choose_target(core, to) {
        Ok(target) if core.status().leader_id == Some(target) => {
            // Already leads (a transfer to the leader itself): nothing to do.
            let _ = reply.send(Ok(target));
        }
        Ok(target) => match core.transfer_leadership(target) {
            Ok(()) => {
                metrics.transfers_started.inc();
                tracing::info!(to = target, "leadership transfer started");
                waiters.0.push(Waiter { to: target, reply });
            }
            Err(e) => {
                let _ = reply.send(Err(from_propose_error(e, target)));
            }
        },
        Err(e) => {
            let _ = reply.send(Err(e));
        }
    }
}

/// Who to hand leadership to: `to` if it is a voter, else the most caught-up voter.
fn choose_target<L: LogStorage>(
    core: &RaftCore<L>,
    to: Option<NodeId>,
) -> Result<NodeId, TransferError> {
    let status = core.status();
    if status.role != Role::Leader {
        return Err(TransferError::NotLeader(status.leader_id));
    }
    let target = match to {
        Some(to) => to,
        None => core
            .most_caught_up_voter()
            .ok_or(TransferError::NoCandidate(status.id))?,
    };
    match status.membership.members.get(&target) {
        None => return Err(TransferError::NotMember(target)),
        Some(member) if !member.voter => return Err(TransferError::NotVoter(target)),
        Some(_) => {}
    }
    match core.transfer_target() {
        Some(other) if other != target => Err(TransferError::InProgress(other)),
        _ => Ok(target),
    }
}

fn from_propose_error(error: ProposeError, to: NodeId) -> TransferError {
    match error {
        ProposeError::NotLeader { leader_hint } => TransferError::NotLeader(leader_hint),
        // The core refuses non-voters as an invalid change; the membership check above
        // normally catches it first.
        _ => TransferError::NotVoter(to),
    }
}

struct Waiter {
    to: NodeId,
    reply: TransferReply,
}

/// Clients waiting for a transfer to end.
#[derive(Default)]
pub(super) struct TransferWaiters(Vec<Waiter>);

impl TransferWaiters {
    /// Answers the waiters whose transfer ended; called after every step of the raft loop.
    pub(super) fn check<L: LogStorage>(
        &mut self,
        core: &RaftCore<L>,
        metrics: &Metrics,
        election_timeout: Duration,
    ) {
        if self.0.is_empty() {
            return;
        }
        let soft = core.soft_state();
        let transferring = core.transfer_target();
        self.0.retain_mut(|waiter| {
            let outcome = if soft.leader_id == Some(waiter.to) {
                metrics.transfers_succeeded.inc();
                tracing::info!(to = waiter.to, "leadership transfer done");
                Ok(waiter.to)
            } else if soft.role == Role::Leader && transferring != Some(waiter.to) {
                metrics.transfers_failed.inc();
                tracing::warn!(to = waiter.to, "leadership transfer abandoned");
                Err(TransferError::Abandoned {
                    to: waiter.to,
                    leader: core.status().id,
                    timeout_ms: election_timeout.as_millis() as u64,
                })
            } else if let (Some(leader), false) = (soft.leader_id, soft.role == Role::Leader) {
                metrics.transfers_failed.inc();
                tracing::warn!(
                    to = waiter.to,
                    leader,
                    "another node won the transfer's election"
                );
                Err(TransferError::OtherLeader {
                    to: waiter.to,
                    leader,
                })
            } else {
                return !waiter.reply.is_closed();
            };
            let (reply, _) = oneshot::channel();
            let _ = std::mem::replace(&mut waiter.reply, reply).send(outcome);
            false
        });
    }
}

impl<S: StateMachine> Node<S> {
    /// Hands leadership to `to` (or to the most caught-up voter) and waits until it leads
    /// or the attempt is abandoned.
    pub async fn transfer_leadership(
        &self,
        to: Option<NodeId>,
    ) -> Result<TransferDone, TransferError> {
        let started = Instant::now();
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request::TransferLeadership { to, reply })
            .await
            .map_err(|_| TransferError::Stopped)?;
        // The core abandons after an election timeout; waiting three of them leaves room for
        // the target's election to finish on a loaded machine before calling it unknown.
        let deadline = self.election_timeout_max * 3 + Duration::from_secs(1);
        match tokio::time::timeout(deadline, answer).await {
            Ok(Ok(Ok(leader))) => Ok(TransferDone {
                leader,
                elapsed: started.elapsed(),
            }),
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(_)) => Err(TransferError::Stopped),
            Err(_) => {
                self.metrics.transfers_failed.inc();
                Err(TransferError::Unknown {
                    waited_ms: deadline.as_millis() as u64,
                })
            }
        }
    }

    /// Begins a graceful stop: from now on `/readyz` answers 503. If this node leads, it
    /// hands leadership to the most caught-up voter first, waiting at most about an election
    /// timeout, so that the cluster need not wait for its followers to time out.
    pub async fn begin_stop(&self) -> Result<Option<TransferDone>, TransferError> {
        self.stopping.store(true, Ordering::SeqCst);
        match self.transfer_leadership(None).await {
            Ok(done) => Ok(Some(done)),
            Err(TransferError::NotLeader(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Ends a graceful stop, once the client API has drained: waits until `deadline` at
    /// most for every write a follower forwarded here to be answered (committed, or
    /// refused because the stop began) and for followers to stop forwarding
    /// ([`Node::forwards_quiesced`] with `quiet`, a heartbeat interval), then waits for
    /// the peer links to write what they hold (those answers among it) for at most
    /// [`LINK_FLUSH_MAX`]. Without this a leader that could not hand over would exit with
    /// forwards in flight, and their clients would see `504` (outcome unknown) for writes
    /// that may commit. Returns whether the forwards ended and the answers left in time.
    pub async fn finish_stop(&self, deadline: tokio::time::Instant, quiet: Duration) -> bool {
        debug_assert!(self.is_stopping(), "finish_stop before begin_stop");
        let answered = tokio::time::timeout_at(deadline, self.forwards_quiesced(quiet))
            .await
            .is_ok();
        // The links stay up until the process exits: a follower that saw one close would
        // take this node for restarted and forward to it again.
        let flushed = self.transport.flush(LINK_FLUSH_MAX).await;
        answered && flushed
    }

    /// Whether a graceful stop began.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Whether this node can serve linearizable requests now; if not, why (for `/readyz`).
    pub fn readiness(&self) -> Result<NodeId, NotReady> {
        let node = self.id;
        if self.is_stopping() {
            return Err(NotReady::Stopping { node });
        }
        let Some(leader) = self.leader_hint() else {
            return Err(NotReady::NoLeader { node });
        };
        match self.membership().members.get(&self.id) {
            Some(me) if me.voter => Ok(leader),
            Some(_) => Err(NotReady::Learner { node }),
            None => Err(NotReady::NotMember { node }),
        }
    }

    /// [`Node::readiness`], and also not ready while more than `max_lag_entries` behind the
    /// cluster's commit index as last heard from a leader (0: no lag check); see
    /// [`catching_up`].
    pub async fn readiness_within_lag(&self, max_lag_entries: u64) -> Result<NodeId, NotReady> {
        let leader = self.readiness()?;
        if max_lag_entries == 0 {
            return Ok(leader);
        }
        let status = self
            .status()
            .await
            .map_err(|_| NotReady::Stopped { node: self.id })?;
        catching_up(
            self.id,
            status.commit_index_heard,
            status.applied_index,
            max_lag_entries,
        )?;
        Ok(leader)
    }
}

/// Why a node is not ready to serve linearizable requests (`/readyz` answers 503 with it).
/// Each case says what a load balancer or operator can expect: all of them pass on their
/// own except [`NotReady::NotMember`], which waits for `raftlog members add`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    /// A graceful stop began.
    #[error("node {node} is stopping; send requests to another node")]
    Stopping {
        /// This node.
        node: NodeId,
    },
    /// The node's raft loop is gone.
    #[error("node {node} stopped; see its log for why")]
    Stopped {
        /// This node.
        node: NodeId,
    },
    /// No leader is known: an election is running or a quorum is unreachable.
    #[error("node {node} knows no leader (an election is under way or a quorum is unreachable)")]
    NoLeader {
        /// This node.
        node: NodeId,
    },
    /// The node is a learner; it becomes ready once promoted.
    #[error("node {node} is a learner still catching up; it is ready once promoted to voter")]
    Learner {
        /// This node.
        node: NodeId,
    },
    /// The node is not in the membership it knows (not added yet, or removed).
    #[error("node {node} is not a member of the cluster (yet); add it with `raftlog members add`")]
    NotMember {
        /// This node.
        node: NodeId,
    },
    /// The node is further behind the leader's announced commit than the configured limit.
    #[error(
        "node {node} is catching up: {} entries behind (applied index {applied_index}, \
         commit index {commit_index_heard} as last heard from the leader; ready within \
         ready_max_lag_entries = {max_lag_entries})",
        commit_index_heard - applied_index
    )]
    CatchingUp {
        /// This node.
        node: NodeId,
        /// The highest commit index a leader announced to this node.
        commit_index_heard: u64,
        /// The last index this node applied.
        applied_index: u64,
        /// The configured limit (`ready_max_lag_entries`).
        max_lag_entries: u64,
    },
}

/// Issue 17: [`NotReady::CatchingUp`] when a node that has applied up to `applied_index`
/// is more than `max_lag_entries` (0: no limit) behind `commit_index_heard`, the highest
/// commit index a leader announced to it ([`crate::raft::Status::commit_index_heard`]).
///
/// The rule keeps the core pure: the core only records what leaders announced; the
/// comparison happens here, when `/readyz` asks. The figure is a lower bound on the true
/// lag (the leader may have committed more since), which errs toward "ready" only for a
/// node that hears from no leader, and such a node is not ready anyway.
pub fn catching_up(
    node: NodeId,
    commit_index_heard: u64,
    applied_index: u64,
    max_lag_entries: u64,
) -> Result<(), NotReady> {
    let lag = commit_index_heard.saturating_sub(applied_index);
    if max_lag_entries == 0 || lag <= max_lag_entries {
        return Ok(());
    }
    Err(NotReady::CatchingUp {
        node,
        commit_index_heard,
        applied_index,
        max_lag_entries,
    })
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::raft::test_cluster::{member, test_config, Cluster};
    use crate::raft::{Envelope, HardState, MemStorage, Membership, MembershipChange, Message};

    /// Issue 17: behind by more than the limit is "catching up", with the figures; at the
    /// limit, ahead (a stale heard commit after a restart) or with the check off, ready.
    #[test]
    fn readiness_waits_until_the_lag_is_within_the_limit() {
        let err = super::catching_up(2, 12_000, 1_000, 10_000)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("node 2 is catching up: 11000 entries behind"),
            "{err}"
        );
        assert!(
            err.contains("applied index 1000, commit index 12000"),
            "{err}"
        );
        assert!(err.contains("ready_max_lag_entries = 10000"), "{err}");
        assert_eq!(super::catching_up(2, 11_000, 1_000, 10_000), Ok(()));
        assert_eq!(super::catching_up(2, 5, 9, 1), Ok(()));
        assert_eq!(super::catching_up(2, 1 << 40, 0, 0), Ok(()));
    }

    /// Asks node 1 of `c` to transfer; returns the receiver of its answer.
    fn ask(
        c: &mut Cluster,
        waiters: &mut TransferWaiters,
        metrics: &Metrics,
        to: Option<NodeId>,
    ) -> oneshot::Receiver<Result<NodeId, TransferError>> {
        let (reply, answer) = oneshot::channel();
        start(c.node_mut(1), waiters, metrics, to, reply);
        answer
    }

    fn answered(
        answer: &mut oneshot::Receiver<Result<NodeId, TransferError>>,
    ) -> Option<Result<NodeId, TransferError>> {
        answer.try_recv().ok()
    }

    fn three_nodes_led_by_1() -> Cluster {
        let mut c = Cluster::new(&[1, 2, 3], |_| {});
        c.elect(1);
        c.tick_all(2);
        c
    }

    #[test]
    fn transfer_to_a_learner_or_a_non_member_is_refused() {
        // hashicorp/raft#398: a learner told to campaign can never win.
        let mut c = three_nodes_led_by_1();
        let learner = RaftCore::new(
            test_config(4),
            MemStorage::new(),
            HardState::default(),
            Membership::default(),
        );
        c.add(4, learner);
        c.node_mut(1)
            .propose_membership_change(MembershipChange::AddOrUpdate {
                id: 4,
                member: member(false),
            })
            .unwrap();
        c.settle();
        let (mut waiters, metrics) = (TransferWaiters::default(), Metrics::default());
        let mut to_learner = ask(&mut c, &mut waiters, &metrics, Some(4));
        assert_eq!(
            answered(&mut to_learner),
            Some(Err(TransferError::NotVoter(4)))
        );
        let mut to_stranger = ask(&mut c, &mut waiters, &metrics, Some(9));
        assert_eq!(
            answered(&mut to_stranger),
            Some(Err(TransferError::NotMember(9)))
        );
        assert_eq!(
            c.node(1).transfer_target(),
            None,
            "the core was never asked"
        );
        assert!(c.node_mut(1).propose(Bytes::from_static(b"x")).is_ok());
        assert_eq!(metrics.transfers_started.get(), 0);
    }

    #[test]
    fn transfer_on_a_follower_names_the_leader() {
        let mut c = three_nodes_led_by_1();
        let (mut waiters, metrics) = (TransferWaiters::default(), Metrics::default());
        let (reply, mut answer) = oneshot::channel();
        start(c.node_mut(2), &mut waiters, &metrics, Some(3), reply);
        assert_eq!(
            answered(&mut answer),
            Some(Err(TransferError::NotLeader(Some(1))))
        );
    }

    #[test]
    fn transfer_to_the_leader_itself_is_done_at_once() {
        let mut c = three_nodes_led_by_1();
        let (mut waiters, metrics) = (TransferWaiters::default(), Metrics::default());
        let mut answer = ask(&mut c, &mut waiters, &metrics, Some(1));
        assert_eq!(answered(&mut answer), Some(Ok(1)));
        assert!(c.node_mut(1).propose(Bytes::from_static(b"x")).is_ok());
    }

    #[test]
    fn transfer_without_target_ends_with_the_most_caught_up_voter_leading() {
        let mut c = three_nodes_led_by_1();
        c.cut.insert((1, 2));
        c.propose(1, b"x");
        c.tick_all(1);
        let (mut waiters, metrics) = (TransferWaiters::default(), Metrics::default());
        let mut answer = ask(&mut c, &mut waiters, &metrics, None);
        waiters.check(c.node(1), &metrics, Duration::from_millis(300));
        assert_eq!(answered(&mut answer), None, "not before the target leads");
        c.cut.clear();
        c.tick_all(6);
        assert_eq!(c.leader(), Some(3));
        waiters.check(c.node(1), &metrics, Duration::from_millis(300));
        assert_eq!(answered(&mut answer), Some(Ok(3)));
        assert_eq!(
            (
                metrics.transfers_started.get(),
                metrics.transfers_succeeded.get()
            ),
            (1, 1)
        );
    }

    #[test]
    fn a_second_transfer_elsewhere_waits_for_the_first() {
        let mut c = three_nodes_led_by_1();
        c.cut.insert((1, 3));
        let (mut waiters, metrics) = (TransferWaiters::default(), Metrics::default());
        let _first = ask(&mut c, &mut waiters, &metrics, Some(3));
        let mut second = ask(&mut c, &mut waiters, &metrics, Some(2));
        assert_eq!(
            answered(&mut second),
            Some(Err(TransferError::InProgress(3)))
        );
    }

    #[test]
    fn transfer_won_by_another_node_answers_who_leads() {
        let mut c = three_nodes_led_by_1();
        c.cut.insert((1, 3));
        let (mut waiters, metrics) = (TransferWaiters::default(), Metrics::default());
        let mut answer = ask(&mut c, &mut waiters, &metrics, Some(3));
        // Node 2 wins the next term (say node 3's campaign timed out at the wrong moment).
        let status = c.node(1).status();
        let last_term = status.term;
        c.node_mut(1).step(Envelope {
            from: 2,
            to: 1,
            message: Message::AppendEntries {
                term: status.term + 1,
                prev_log_index: status.last_log_index,
                prev_log_term: last_term,
                entries: Vec::new(),
                leader_commit: status.commit_index,
                read_ctx: 0,
            },
        });
        waiters.check(c.node(1), &metrics, Duration::from_millis(300));
        assert_eq!(
            answered(&mut answer),
            Some(Err(TransferError::OtherLeader { to: 3, leader: 2 }))
        );
        assert_eq!(metrics.transfers_failed.get(), 1);
    }

    #[test]
    fn abandoned_transfer_answers_why_and_the_leader_accepts_writes_again() {
        let mut c = three_nodes_led_by_1();
        c.cut.insert((1, 3));
        let (mut waiters, metrics) = (TransferWaiters::default(), Metrics::default());
        let mut answer = ask(&mut c, &mut waiters, &metrics, Some(3));
        c.tick_all(10);
        waiters.check(c.node(1), &metrics, Duration::from_millis(300));
        assert_eq!(answered(&mut answer), None, "within the election timeout");
        c.tick_all(11);
        waiters.check(c.node(1), &metrics, Duration::from_millis(300));
        assert_eq!(
            answered(&mut answer),
            Some(Err(TransferError::Abandoned {
                to: 3,
                leader: 1,
                timeout_ms: 300
            }))
        );
        assert_eq!(metrics.transfers_failed.get(), 1);
        assert!(c.node_mut(1).propose(Bytes::from_static(b"y")).is_ok());
    }
}
