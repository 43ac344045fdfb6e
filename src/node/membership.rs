//! Membership changes asked for through the API: validation, the quorum-safety check,
//! learner-first addition and automatic promotion.
//!
//! The core already does single-server changes (thesis §4.1: one server added or removed
//! per configuration, so the old and new majorities always overlap) and refuses a second
//! change while one is uncommitted. This module decides *whether* a change should be
//! proposed at all, which the core cannot: it needs wall-clock policy and an operator's
//! intent.
//!
//! - **Learner first.** A voter that joins with an empty log counts toward the quorum at
//!   once (the configuration takes effect on append, thesis §4.1) but cannot acknowledge
//!   anything until it has caught up: growing 1 → 2 or 3 → 4 that way stalls every write,
//!   and if the new server never comes up the cluster has lost a failure it could tolerate
//!   (thesis §4.2.1, etcd#7820). So a new server joins as a learner and the leader promotes
//!   it once its match index has stayed within `promote_lag_entries` of the leader's last
//!   index for `promote_stable` (Consul's autopilot does the same).
//! - **Refuse changes that would lose quorum** (etcd's `--strict-reconfig-check`): a change
//!   that leaves fewer reachable voters than the new configuration's quorum would stop the
//!   cluster the moment it is appended. It is refused unless forced.
//!
//! The promotion intent lives in the leader's memory only: a new leader does not know it,
//! and the waiting request answers that it was interrupted. Repeating the request (which
//! `--join` does) resumes it, because adding a member that is already a learner with the
//! same addresses is not a duplicate but a request to finish the job.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use storage::{Member, Membership, NodeId};
use tokio::sync::oneshot;

use super::apply::{PendingWrite, PendingWrites, WriteOutcome};
use super::log_storage::NodeLogStorage;
use super::Metrics;
use crate::raft::{MembershipChange, ProposeError, RaftCore};

/// When the leader promotes a learner that was added as a voter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MembershipPolicy {
    /// The learner's match index must stay within this many entries of the leader's last.
    pub promote_lag_entries: u64,
    /// For at least this long.
    pub promote_stable: Duration,
}

impl Default for MembershipPolicy {
    fn default() -> Self {
        MembershipPolicy {
            promote_lag_entries: 1_000,
            promote_stable: Duration::from_millis(1_000),
        }
    }
}

/// A membership change an operator asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MembershipOp {
    /// Add `id` as a learner; if `member.voter`, promote it once caught up.
    Add {
        /// The new member.
        id: NodeId,
        /// Its addresses and whether it should end up a voter.
        member: Member,
    },
    /// Remove `id`.
    Remove {
        /// The member.
        id: NodeId,
    },
    /// Make learner `id` a voter now.
    Promote {
        /// The member.
        id: NodeId,
    },
    /// Make voter `id` a learner.
    Demote {
        /// The member.
        id: NodeId,
    },
}

/// Why a change was not proposed. Nothing was proposed in every case.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChangeRefused {
    /// This node does not lead; the request belongs to `leader` if known.
    NotLeader(Option<NodeId>),
    /// No member has this id.
    UnknownMember(NodeId),
    /// The id or an address is already taken; the message says by whom.
    Duplicate(String),
    /// Another change has not committed yet (or a new leader has not committed its first entry).
    InProgress,
    /// Too few reachable voters would remain for the new configuration's quorum.
    Unsafe {
        /// Voters of the new configuration reachable now.
        reachable: usize,
        /// Voters in the new configuration.
        voters: usize,
        /// Its quorum.
        quorum: usize,
    },
    /// The change would leave no voter; never allowed.
    LastVoter(NodeId),
    /// The request itself is invalid.
    Invalid(String),
    /// The leader cannot take proposals right now (transfer, back-pressure).
    Busy(String),
    /// The node is stopping.
    Stopped,
}

impl std::fmt::Display for ChangeRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChangeRefused::NotLeader(leader) => write!(f, "this node does not lead (leader: {leader:?})"),
            ChangeRefused::UnknownMember(id) => write!(f, "node {id} is not a member; see GET /v1/members"),
            ChangeRefused::Duplicate(message) => write!(f, "{message}"),
            ChangeRefused::InProgress => write!(
                f,
                "another membership change has not committed yet; one change at a time, retry when it has"
            ),
            ChangeRefused::Unsafe { reachable, voters, quorum } => write!(
                f,
                "the new configuration would have {voters} voters, needing {quorum} for a quorum, but only \
                 {reachable} of them are reachable (heard from within an election timeout); the cluster \
                 would stop. Bring the unreachable members back first, or repeat with ?force=true"
            ),
            ChangeRefused::LastVoter(id) => write!(
                f,
                "node {id} is the last voter; a cluster without voters cannot commit anything, so this is refused even with force"
            ),
            ChangeRefused::Invalid(message) => write!(f, "{message}"),
            ChangeRefused::Busy(message) => write!(f, "{message}; nothing was proposed, retry shortly"),
            ChangeRefused::Stopped => write!(f, "the node is stopping; nothing was proposed"),
        }
    }
}

/// How a proposed change ended, as far as this node can tell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChangeOutcome {
    /// The change committed.
    Committed,
    /// It did not commit and never will (why is in the message): safe to repeat.
    NotCommitted(String),
    /// Unknown (the log was replaced by a snapshot around it, or the node stopped).
    Unknown,
}

/// What an accepted request waits for. Both `None`: nothing needed doing (the membership
/// already is as asked).
#[derive(Debug, Default)]
pub struct ChangeTicket {
    /// The proposed configuration entry commits (or not).
    pub committed: Option<oneshot::Receiver<ChangeOutcome>>,
    /// The learner is promoted to voter (or not).
    pub promoted: Option<oneshot::Receiver<ChangeOutcome>>,
}

/// The smallest number of voters that is a majority of `voters`.
pub fn quorum(voters: usize) -> usize {
    voters / 2 + 1
}

/// How many more voters may fail before the cluster loses its quorum, given which voters
/// are reachable now (Consul autopilot's failure tolerance).
pub fn failure_tolerance(voters: &BTreeSet<NodeId>, reachable: &BTreeSet<NodeId>) -> usize {
    let alive = voters.intersection(reachable).count();
    alive.saturating_sub(quorum(voters.len()))
}

/// Refuses a configuration whose reachable voters are fewer than its quorum.
pub fn check_quorum_safety(
    next_voters: &BTreeSet<NodeId>,
    reachable: &BTreeSet<NodeId>,
) -> Result<(), ChangeRefused> {
    let voters = next_voters.len();
    let reachable = next_voters.intersection(reachable).count();
    if reachable < quorum(voters) {
        return Err(ChangeRefused::Unsafe {
            reachable,
            voters,
            quorum: quorum(voters),
        });
    }
    Ok(())
}

/// What a request amounts to against the current membership.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// The membership already is as asked.
    Nothing,
    /// Propose `change`; `promote` if the new learner should then become a voter.
    Propose {
        /// The single-server change.
        change: MembershipChange,
        /// Voters once it (and any promotion it leads to) is done, for the safety check.
        next_voters: BTreeSet<NodeId>,
        /// A server that may count as reachable though not yet heard from: a new member,
        /// which is promoted only once caught up (etcd counts it as started too).
        newcomer: Option<NodeId>,
        /// Promote the learner this adds once it has caught up.
        promote: bool,
    },
    /// `id` is already a learner with these addresses: wait for (or finish) its promotion.
    ResumePromotion(NodeId),
}

/// Validates `op` against `current` and says what to propose. Pure, so that every
/// refusal is unit-tested without a cluster.
pub fn plan(current: &Membership, op: &MembershipOp) -> Result<Plan, ChangeRefused> {
    let voters: BTreeSet<NodeId> = current.voters().collect();
    let existing = |id: &NodeId| {
        current
            .members
            .get(id)
            .ok_or(ChangeRefused::UnknownMember(*id))
    };
    let (change, next_voters) = match op {
        MembershipOp::Add { id, member } => return plan_add(current, voters, *id, member),
        MembershipOp::Remove { id } => {
            let next_voters = without_voter(&voters, *id, existing(id)?.voter)?;
            (MembershipChange::Remove { id: *id }, next_voters)
        }
        MembershipOp::Promote { id } | MembershipOp::Demote { id } => {
            let voter = matches!(op, MembershipOp::Promote { .. });
            let member = existing(id)?;
            if member.voter == voter {
                return Ok(Plan::Nothing);
            }
            let next_voters = if voter {
                let mut next_voters = voters;
                next_voters.insert(*id);
                next_voters
            } else {
                without_voter(&voters, *id, true)?
            };
            let member = Member {
                voter,
                ..member.clone()
            };
            (
                MembershipChange::AddOrUpdate { id: *id, member },
                next_voters,
            )
        }
    };
    Ok(Plan::Propose {
        change,
        next_voters,
        newcomer: None,
        promote: false,
    })
}

fn plan_add(
    current: &Membership,
    voters: BTreeSet<NodeId>,
    id: NodeId,
    member: &Member,
) -> Result<Plan, ChangeRefused> {
    if id == 0 {
        return Err(ChangeRefused::Invalid(
            "node id 0 is reserved; ids are positive integers".into(),
        ));
    }
    for (field, addr) in [
        ("raft_addr", &member.raft_addr),
        ("api_addr", &member.api_addr),
    ] {
        if addr.parse::<std::net::SocketAddr>().is_err() {
            return Err(ChangeRefused::Invalid(format!(
                "{field} {addr:?} is not an IP:port address, e.g. 127.0.0.1:7004"
            )));
        }
    }
    if member.raft_addr == member.api_addr {
        return Err(ChangeRefused::Invalid(format!(
            "raft_addr and api_addr are both {}; a node needs two distinct addresses",
            member.raft_addr
        )));
    }
    if let Some(existing) = current.members.get(&id) {
        let same_addrs =
            existing.raft_addr == member.raft_addr && existing.api_addr == member.api_addr;
        if !same_addrs {
            return Err(ChangeRefused::Duplicate(format!(
                "node {id} is already a member with raft_addr {} and api_addr {}; remove it first to re-add it elsewhere",
                existing.raft_addr, existing.api_addr
            )));
        }
        // A repeated request (a client or `--join` retrying) is not a conflict.
        return Ok(if member.voter && !existing.voter {
            Plan::ResumePromotion(id)
        } else {
            Plan::Nothing
        });
    }
    for (other, m) in &current.members {
        for addr in [&member.raft_addr, &member.api_addr] {
            if *addr == m.raft_addr || *addr == m.api_addr {
                return Err(ChangeRefused::Duplicate(format!(
                    "address {addr} is already used by node {other}"
                )));
            }
        }
    }
    let mut next_voters = voters;
    if member.voter {
        next_voters.insert(id);
    }
    Ok(Plan::Propose {
        change: MembershipChange::AddOrUpdate {
            id,
            member: Member {
                voter: false,
                ..member.clone()
            },
        },
        next_voters,
        newcomer: Some(id),
        promote: member.voter,
    })
}

fn without_voter(
    voters: &BTreeSet<NodeId>,
    id: NodeId,
    is_voter: bool,
) -> Result<BTreeSet<NodeId>, ChangeRefused> {
    let mut next = voters.clone();
    if is_voter {
        next.remove(&id);
        if next.is_empty() {
            return Err(ChangeRefused::LastVoter(id));
        }
    }
    Ok(next)
}

/// A learner the leader will promote once it has caught up.
struct Promotion {
    /// Since when it has been within `promote_lag_entries` (None: it is not).
    caught_up_since: Option<Instant>,
    /// Skip the quorum-safety check (the request said `force`).
    force: bool,
    waiters: Vec<oneshot::Sender<ChangeOutcome>>,
    /// Whether the last refusal was logged already (log once, not every tick).
    refusal_logged: bool,
}

/// The raft loop's membership policy: answers change requests and promotes learners.
pub(super) struct MembershipDriver {
    pub(super) policy: MembershipPolicy,
    /// A member heard from within this many ticks counts as reachable (an election timeout).
    pub(super) reachable_ticks: u64,
    promotions: BTreeMap<NodeId, Promotion>,
}

type Core = RaftCore<NodeLogStorage>;

impl MembershipDriver {
    pub(super) fn new(policy: MembershipPolicy, reachable_ticks: u64) -> MembershipDriver {
        MembershipDriver {
            policy,
            reachable_ticks,
            promotions: BTreeMap::new(),
        }
    }

    /// The members the leader heard from within an election timeout (itself included).
    pub(super) fn reachable(&self, core: &Core) -> BTreeSet<NodeId> {
        core.member_progress()
            .into_iter()
            .filter(|p| p.ticks_since_contact <= self.reachable_ticks)
            .map(|p| p.id)
            .collect()
    }

    /// Validates and proposes `op` on the leader.
    pub(super) fn request(
        &mut self,
        core: &mut Core,
        pending: &PendingWrites,
        metrics: &Metrics,
        op: MembershipOp,
        force: bool,
    ) -> Result<ChangeTicket, ChangeRefused> {
        let status = core.status();
        if status.role != crate::raft::Role::Leader {
            return Err(ChangeRefused::NotLeader(status.leader_id));
        }
        let plan = plan(&status.membership, &op)?;
        if let MembershipOp::Remove { id } | MembershipOp::Demote { id } = op {
            // The operator changed their mind about this server.
            if let Some(promotion) = self.promotions.remove(&id) {
                finish(
                    promotion.waiters,
                    ChangeOutcome::NotCommitted(format!(
                        "node {id} was removed or demoted before its promotion"
                    )),
                );
            }
        }
        match plan {
            Plan::Nothing => Ok(ChangeTicket::default()),
            Plan::ResumePromotion(id) => Ok(ChangeTicket {
                committed: None,
                promoted: Some(self.await_promotion(id, force)),
            }),
            Plan::Propose {
                change,
                next_voters,
                newcomer,
                promote,
            } => {
                if !core.has_committed_own_term() {
                    return Err(ChangeRefused::Busy(
                        "this leader was just elected and has not committed an entry of its term yet".into(),
                    ));
                }
                if core.membership_change_pending() {
                    return Err(ChangeRefused::InProgress);
                }
                if !force {
                    let mut reachable = self.reachable(core);
                    reachable.extend(newcomer);
                    check_quorum_safety(&next_voters, &reachable)?;
                }
                let id = match &change {
                    MembershipChange::AddOrUpdate { id, .. } | MembershipChange::Remove { id } => {
                        *id
                    }
                };
                let committed = propose(core, pending, metrics, change)?;
                let promoted = promote.then(|| self.await_promotion(id, force));
                Ok(ChangeTicket {
                    committed: Some(committed),
                    promoted,
                })
            }
        }
    }

    fn await_promotion(&mut self, id: NodeId, force: bool) -> oneshot::Receiver<ChangeOutcome> {
        let (tx, rx) = oneshot::channel();
        let promotion = self.promotions.entry(id).or_insert(Promotion {
            caught_up_since: None,
            force,
            waiters: Vec::new(),
            refusal_logged: false,
        });
        promotion.force |= force;
        promotion.waiters.push(tx);
        rx
    }

    /// Called every tick: promotes learners that have stayed caught up long enough.
    pub(super) fn on_tick(&mut self, core: &mut Core, pending: &PendingWrites, metrics: &Metrics) {
        if self.promotions.is_empty() {
            return;
        }
        let status = core.status();
        if status.role != crate::raft::Role::Leader {
            for (id, promotion) in std::mem::take(&mut self.promotions) {
                finish(
                    promotion.waiters,
                    ChangeOutcome::NotCommitted(format!(
                        "leadership moved before node {id} was promoted; it stays a learner until \
                         the request is repeated (on any node)"
                    )),
                );
            }
            return;
        }
        let progress = core.member_progress();
        let now = Instant::now();
        let mut ready = None;
        self.promotions.retain(|id, promotion| {
            match status.membership.members.get(id) {
                None => {
                    finish(
                        std::mem::take(&mut promotion.waiters),
                        ChangeOutcome::NotCommitted(format!(
                            "node {id} is no longer a member (its addition did not commit, or it was removed)"
                        )),
                    );
                    return false;
                }
                Some(member) if member.voter => {
                    // Promoted by hand (`/promote`) meanwhile.
                    finish(std::mem::take(&mut promotion.waiters), ChangeOutcome::Committed);
                    return false;
                }
                Some(_) => {}
            }
            let match_index = progress
                .iter()
                .find(|p| p.id == *id)
                .map_or(0, |p| p.match_index);
            let lag = status.last_log_index.saturating_sub(match_index);
            if lag > self.policy.promote_lag_entries || match_index == 0 {
                promotion.caught_up_since = None;
                return true;
            }
            let since = *promotion.caught_up_since.get_or_insert(now);
            if ready.is_none() && now.duration_since(since) >= self.policy.promote_stable {
                ready = Some(*id);
            }
            true
        });
        let Some(id) = ready else {
            return;
        };
        if core.membership_change_pending() {
            return;
        }
        let reachable = self.reachable(core);
        let Some(promotion) = self.promotions.get_mut(&id) else {
            return;
        };
        let planned = plan(&status.membership, &MembershipOp::Promote { id });
        let checked = planned.and_then(|plan| match plan {
            Plan::Propose {
                change,
                next_voters,
                ..
            } => {
                if !promotion.force {
                    check_quorum_safety(&next_voters, &reachable)?;
                }
                Ok(Some(change))
            }
            _ => Ok(None),
        });
        let change = match checked {
            Ok(Some(change)) => change,
            Ok(None) => return,
            Err(refused) => {
                if !promotion.refusal_logged {
                    tracing::warn!(id, "learner caught up but is not promoted yet: {refused}");
                    promotion.refusal_logged = true;
                }
                return;
            }
        };
        match propose(core, pending, metrics, change) {
            Ok(committed) => {
                tracing::info!(id, "learner caught up; promoting it to voter");
                if let Some(promotion) = self.promotions.remove(&id) {
                    fan_out(committed, promotion.waiters);
                }
            }
            Err(refused) => tracing::debug!(id, "promotion deferred: {refused}"),
        }
    }
}

/// Appends `change` and returns where its outcome will arrive.
fn propose(
    core: &mut Core,
    pending: &PendingWrites,
    metrics: &Metrics,
    change: MembershipChange,
) -> Result<oneshot::Receiver<ChangeOutcome>, ChangeRefused> {
    let (index, term) = core
        .propose_membership_change(change)
        .map_err(|e| match e {
            ProposeError::NotLeader { leader_hint } => ChangeRefused::NotLeader(leader_hint),
            ProposeError::MembershipChangePending => ChangeRefused::InProgress,
            ProposeError::InvalidMembershipChange(message) => ChangeRefused::Invalid(message),
            other @ (ProposeError::TransferInProgress
            | ProposeError::Backpressure
            | ProposeError::UncommittedBytesFull { .. }) => ChangeRefused::Busy(other.to_string()),
        })?;
    metrics.membership_changes.inc();
    let (write_tx, write_rx) = oneshot::channel();
    pending.lock().unwrap_or_else(|p| p.into_inner()).insert(
        index,
        PendingWrite {
            term,
            reply: write_tx,
        },
    );
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let _ = tx.send(outcome_of(write_rx.await));
    });
    Ok(rx)
}

fn outcome_of(outcome: Result<WriteOutcome, oneshot::error::RecvError>) -> ChangeOutcome {
    match outcome {
        Ok(WriteOutcome::Applied { .. }) => ChangeOutcome::Committed,
        Ok(WriteOutcome::Superseded) => ChangeOutcome::NotCommitted(
            "leadership changed before the change committed; it was not applied and never will be"
                .into(),
        ),
        Ok(WriteOutcome::Unknown) | Err(_) => ChangeOutcome::Unknown,
    }
}

fn fan_out(
    committed: oneshot::Receiver<ChangeOutcome>,
    waiters: Vec<oneshot::Sender<ChangeOutcome>>,
) {
    tokio::spawn(async move {
        let outcome = committed.await.unwrap_or(ChangeOutcome::Unknown);
        finish(waiters, outcome);
    });
}

fn finish(waiters: Vec<oneshot::Sender<ChangeOutcome>>, outcome: ChangeOutcome) {
    for waiter in waiters {
        let _ = waiter.send(outcome.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(port: u16, voter: bool) -> Member {
        Member {
            raft_addr: format!("127.0.0.1:{port}"),
            api_addr: format!("127.0.0.1:{}", port + 1000),
            voter,
        }
    }

    fn cluster(voters: &[NodeId], learners: &[NodeId]) -> Membership {
        let mut m = Membership::default();
        for &id in voters {
            m.members.insert(id, member(7000 + id as u16, true));
        }
        for &id in learners {
            m.members.insert(id, member(7000 + id as u16, false));
        }
        m
    }

    fn set(ids: &[NodeId]) -> BTreeSet<NodeId> {
        ids.iter().copied().collect()
    }

    #[test]
    fn quorum_is_a_strict_majority() {
        assert_eq!(
            [1, 2, 3, 4, 5, 6].map(quorum),
            [1, 2, 2, 3, 3, 4],
            "quorum of 1..=6 voters"
        );
    }

    #[test]
    fn failure_tolerance_counts_reachable_voters_above_quorum() {
        assert_eq!(failure_tolerance(&set(&[1, 2, 3]), &set(&[1, 2, 3])), 1);
        assert_eq!(failure_tolerance(&set(&[1, 2, 3]), &set(&[1, 2])), 0);
        assert_eq!(
            failure_tolerance(&set(&[1, 2, 3, 4, 5]), &set(&[1, 2, 3, 4, 5])),
            2
        );
        assert_eq!(
            failure_tolerance(&set(&[1, 2, 3, 4]), &set(&[1, 2, 3, 4])),
            1
        );
        // Learners (not voters) never add tolerance.
        assert_eq!(failure_tolerance(&set(&[1]), &set(&[1, 9])), 0);
        assert_eq!(failure_tolerance(&set(&[1, 2, 3]), &set(&[1])), 0);
    }

    #[test]
    fn removing_a_live_voter_with_one_down_is_unsafe() {
        // 3 voters, node 3 down: removing 2 leaves {1, 3} with one reachable, quorum 2.
        let refused = check_quorum_safety(&set(&[1, 3]), &set(&[1, 2])).unwrap_err();
        assert_eq!(
            refused,
            ChangeRefused::Unsafe {
                reachable: 1,
                voters: 2,
                quorum: 2
            }
        );
        assert!(refused.to_string().contains("only 1 of them"), "{refused}");
        // Removing the down node instead is safe: {1, 2} both reachable.
        check_quorum_safety(&set(&[1, 2]), &set(&[1, 2])).unwrap();
    }

    #[test]
    fn adding_a_voter_counts_the_newcomer_but_not_down_members() {
        // 3 voters, 2 down: adding a 4th needs 3 of 4; 1 + the newcomer is 2.
        assert!(check_quorum_safety(&set(&[1, 2, 3, 4]), &set(&[1, 4])).is_err());
        // One down: 2 + newcomer = 3 of 4.
        check_quorum_safety(&set(&[1, 2, 3, 4]), &set(&[1, 2, 4])).unwrap();
    }

    #[test]
    fn add_voter_proposes_a_learner_and_a_promotion() {
        let current = cluster(&[1, 2, 3], &[]);
        let plan = plan(
            &current,
            &MembershipOp::Add {
                id: 4,
                member: member(7004, true),
            },
        )
        .unwrap();
        assert_eq!(
            plan,
            Plan::Propose {
                change: MembershipChange::AddOrUpdate {
                    id: 4,
                    member: member(7004, false)
                },
                next_voters: set(&[1, 2, 3, 4]),
                newcomer: Some(4),
                promote: true,
            }
        );
    }

    #[test]
    fn add_validation_refuses_bad_ids_addresses_and_duplicates() {
        let current = cluster(&[1, 2, 3], &[5]);
        let add = |id, member| plan(&current, &MembershipOp::Add { id, member });
        assert!(matches!(
            add(0, member(7000, true)),
            Err(ChangeRefused::Invalid(_))
        ));
        let mut bad = member(7009, true);
        bad.raft_addr = "localhost".into();
        assert!(matches!(add(9, bad), Err(ChangeRefused::Invalid(_))));
        let mut same = member(7009, true);
        same.api_addr = same.raft_addr.clone();
        assert!(matches!(add(9, same), Err(ChangeRefused::Invalid(_))));
        // Same id, other addresses.
        assert!(matches!(
            add(2, member(7009, true)),
            Err(ChangeRefused::Duplicate(_))
        ));
        // New id, an address node 2 uses.
        let taken = add(9, member(7002, true)).unwrap_err();
        assert!(taken.to_string().contains("node 2"), "{taken}");
        // Repeats are not conflicts.
        assert_eq!(add(2, member(7002, true)), Ok(Plan::Nothing));
        assert_eq!(add(5, member(7005, false)), Ok(Plan::Nothing));
        assert_eq!(add(5, member(7005, true)), Ok(Plan::ResumePromotion(5)));
    }

    #[test]
    fn unknown_ids_are_not_found_and_the_last_voter_stays() {
        let current = cluster(&[1], &[2]);
        for op in [
            MembershipOp::Remove { id: 7 },
            MembershipOp::Promote { id: 7 },
            MembershipOp::Demote { id: 7 },
        ] {
            assert_eq!(plan(&current, &op), Err(ChangeRefused::UnknownMember(7)));
        }
        assert_eq!(
            plan(&current, &MembershipOp::Remove { id: 1 }),
            Err(ChangeRefused::LastVoter(1))
        );
        assert_eq!(
            plan(&current, &MembershipOp::Demote { id: 1 }),
            Err(ChangeRefused::LastVoter(1))
        );
        // A learner leaves without touching the voters.
        assert!(matches!(
            plan(&current, &MembershipOp::Remove { id: 2 }),
            Ok(Plan::Propose { next_voters, .. }) if next_voters == set(&[1])
        ));
        assert_eq!(
            plan(&current, &MembershipOp::Promote { id: 1 }),
            Ok(Plan::Nothing)
        );
        assert_eq!(
            plan(&current, &MembershipOp::Demote { id: 2 }),
            Ok(Plan::Nothing)
        );
    }
}
