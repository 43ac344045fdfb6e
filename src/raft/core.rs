//! The core state machine: elections, replication, commitment, snapshots, reads and
//! membership, driven entirely by the inputs of [`RaftCore`].

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;

use super::log::RaftLog;
use super::membership::{self, MembershipLog};
use super::progress::{Progress, ProgressState};
use super::quorum::{majority_value, VoteResult, VoteTally};
use super::read_index::ReadQueue;
use super::validate::{self, DropReason, DroppedMessages};
use super::{
    Config, Entry, EntryKind, Envelope, FailedRead, HardState, LogStorage, MemberProgress,
    Membership, MembershipChange, Message, NodeId, PlantedBug, ProposeError, ReadMode, ReadState,
    Ready, Role, SnapshotChunk, SnapshotMeta, SoftState, Status, StorageError,
};

/// SplitMix64 (Steele, Lea, Flood 2014): a tiny, well-mixed generator, seeded from the
/// config so that runs are reproducible.
#[derive(Clone, Debug)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Where a message may go: at once, or only after the `Ready` it came with is durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Send {
    Now,
    AfterPersist,
}

/// One Raft node's consensus state. See the module docs of [`crate::raft`].
pub struct RaftCore<S: LogStorage> {
    config: Config,
    id: NodeId,
    log: RaftLog<S>,
    term: u64,
    voted_for: Option<NodeId>,
    /// Never `Role::Learner`: that is reported for a follower that is not a voter.
    role: Role,
    leader_id: Option<NodeId>,
    membership: MembershipLog,
    /// Voters of the configuration in effect (cached).
    voters: Vec<NodeId>,
    rng: SplitMix64,
    /// Ticks since the core was created.
    now: u64,
    election_elapsed: u32,
    randomized_election_timeout: u32,
    heartbeat_elapsed: u32,
    votes: VoteTally,

    // Leader state.
    progress: BTreeMap<NodeId, Progress>,
    /// Index of the no-op this leader appended: once committed, the commit index is the
    /// cluster's (Raft §5.4.2, thesis §6.4).
    noop_index: u64,
    /// Current ReadIndex round; every heartbeat starts a new one.
    round: u64,
    /// `(round, tick sent)` of recent rounds, for lease reads.
    round_ticks: VecDeque<(u64, u64)>,
    reads: ReadQueue,
    /// Reads arrived that need a new round (sent in the next `take_ready`).
    read_round_needed: bool,
    /// New entries to send (batched until the next `take_ready`).
    append_needed: bool,
    /// The commit index advanced (followers learn it in the next `take_ready`).
    commit_broadcast_needed: bool,
    transferee: Option<NodeId>,
    transfer_elapsed: u32,
    /// `(index, payload bytes)` of this leader's own normal entries above the commit
    /// index, oldest first (etcd raft's `uncommittedSize`, kept per entry so that commit
    /// releases exactly what was taken). Empty unless leading.
    uncommitted_payloads: VecDeque<(u64, u64)>,
    /// Invariant: the sum of the bytes in `uncommitted_payloads`.
    uncommitted_bytes: u64,
    /// A TimeoutNow went out this term: its target may win an election that ignores our
    /// lease, so lease reads are off until the next term.
    timeout_now_sent: bool,

    // Follower state.
    /// Snapshot being received: its meta and the offset expected next.
    incoming_snapshot: Option<(SnapshotMeta, u64)>,
    /// Snapshot whose last chunk was handed out, waiting for the driver to report it
    /// durable and verified: its meta, the leader to answer, its size in bytes.
    installing: Option<(SnapshotMeta, NodeId, u64)>,

    /// Messages refused at the door, per reason.
    dropped: DroppedMessages,

    // Outputs.
    msgs: Vec<Envelope>,
    persisted_msgs: Vec<Envelope>,
    snapshot_chunk: Option<SnapshotChunk>,
    read_states: Vec<ReadState>,
    failed_reads: Vec<FailedRead>,
    prev_soft: SoftState,
    prev_hard: HardState,
}

impl<S: LogStorage> RaftCore<S> {
    /// Restores a core from durable state: `hard_state` from the stable store, the log and
    /// snapshot through `storage`. The membership is the latest configuration in the log,
    /// else the snapshot's, else `bootstrap` (the initial voters of a new cluster).
    pub fn new(config: Config, storage: S, hard_state: HardState, bootstrap: Membership) -> Self {
        let snapshot = storage.snapshot_meta();
        let base = if snapshot.last_index > 0 {
            snapshot.membership.clone()
        } else {
            bootstrap
        };
        let log = RaftLog::new(storage);
        let membership = restore_membership(&log, base);
        let voters = membership.voters();
        let prev_soft = SoftState {
            role: Role::Follower,
            leader_id: None,
            term: hard_state.term,
        };
        let mut core = RaftCore {
            id: config.id,
            rng: SplitMix64(config.seed),
            config,
            log,
            term: hard_state.term,
            voted_for: hard_state.voted_for,
            role: Role::Follower,
            leader_id: None,
            membership,
            voters,
            now: 0,
            election_elapsed: 0,
            randomized_election_timeout: 0,
            heartbeat_elapsed: 0,
            votes: VoteTally::default(),
            progress: BTreeMap::new(),
            noop_index: 0,
            round: 0,
            round_ticks: VecDeque::new(),
            reads: ReadQueue::default(),
            read_round_needed: false,
            append_needed: false,
            commit_broadcast_needed: false,
            transferee: None,
            transfer_elapsed: 0,
            uncommitted_payloads: VecDeque::new(),
            uncommitted_bytes: 0,
            timeout_now_sent: false,
            incoming_snapshot: None,
            installing: None,
            dropped: DroppedMessages::default(),
            msgs: Vec::new(),
            persisted_msgs: Vec::new(),
            snapshot_chunk: None,
            read_states: Vec::new(),
            failed_reads: Vec::new(),
            prev_soft,
            prev_hard: hard_state,
        };
        core.prev_soft = core.soft_state();
        core.reset_election_timer();
        core
    }

    /// The storage the core reads from.
    pub fn storage(&self) -> &S {
        &self.log.storage
    }

    /// Mutable access for the driver (to append, truncate, install snapshots).
    pub fn storage_mut(&mut self) -> &mut S {
        &mut self.log.storage
    }

    /// Consumes the core and returns its storage (the simulator models a crash by taking
    /// the durable storage out of a dead core and building a new core from it).
    pub fn into_storage(self) -> S {
        self.log.storage
    }

    /// Advances logical time by one tick.
    pub fn tick(&mut self) {
        self.now += 1;
        if self.role == Role::Leader {
            self.tick_leader();
        } else {
            self.tick_election();
        }
    }

    /// Handles a message from a peer. A message no correct peer could send is dropped and
    /// counted (see [`validate`]): nothing a peer sends reaches an assert.
    pub fn step(&mut self, envelope: Envelope) {
        if self.fatal().is_some() {
            return;
        }
        if let Err(reason) = self.check_at_door(&envelope) {
            self.drop_message(reason, &envelope);
            return;
        }
        let from = envelope.from;
        let msg = envelope.message;
        if let Message::PreVoteResponse { term, granted } = msg {
            self.handle_pre_vote_response(from, term, granted);
            return;
        }
        let term = msg.term();
        if term > self.term && !self.on_higher_term(from, &msg) {
            return;
        }
        if term < self.term {
            self.on_lower_term(from, &msg);
            return;
        }
        self.dispatch(from, msg);
    }

    /// The storage failure that stopped this core, if any. Once set, the core hands out
    /// nothing more (`take_ready` is empty): the driver must stop the node, naming the
    /// error (it carries file and offset).
    pub fn fatal(&self) -> Option<&StorageError> {
        self.log.fatal()
    }

    /// Messages dropped at the door so far, per reason (for metrics).
    pub fn dropped_messages(&self) -> &DroppedMessages {
        &self.dropped
    }

    fn check_at_door(&self, envelope: &Envelope) -> Result<(), DropReason> {
        validate::check_envelope(self.id, envelope)?;
        if let Message::AppendEntriesResponse {
            term,
            success: true,
            match_index,
            ..
        } = envelope.message
        {
            // A leader's log only grows within its term, so a follower of this term can
            // only have been sent (and acknowledge) what the log holds now.
            let last = self.log.last_index();
            if self.role == Role::Leader && term == self.term && match_index > last {
                return Err(DropReason::MatchBeyondLastIndex);
            }
        }
        Ok(())
    }

    fn drop_message(&mut self, reason: DropReason, envelope: &Envelope) {
        let interval = self.config.drop_log_interval_ticks;
        if self.dropped.record(reason, self.now, interval) {
            // Entries can be large: show the start of the message only.
            let shown: String = format!("{:?}", envelope.message)
                .chars()
                .take(300)
                .collect();
            tracing::warn!(
                id = self.id,
                from = envelope.from,
                reason = reason.as_str(),
                total = self.dropped.count(reason),
                message = %shown,
                "malformed message from a peer dropped (logged once per {interval} ticks per reason); \
                 check that peer's version and health"
            );
        }
    }

    /// Appends a client command; returns its `(index, term)`. It is committed when an
    /// entry with this index and term appears in `Ready::committed_entries`.
    pub fn propose(&mut self, data: Bytes) -> Result<(u64, u64), ProposeError> {
        self.check_can_propose()?;
        self.check_uncommitted_bytes(data.len() as u64)?;
        let at = self.append_as_leader(EntryKind::Normal, data.clone());
        if !data.is_empty() {
            self.uncommitted_payloads
                .push_back((at.0, data.len() as u64));
            self.uncommitted_bytes += data.len() as u64;
        }
        Ok(at)
    }

    /// Payload bytes of this leader's entries that are not committed yet (0 unless
    /// leading); the driver reports it as a gauge.
    pub fn uncommitted_bytes(&self) -> u64 {
        self.uncommitted_bytes
    }

    /// Appends a membership change; `(index, term)` as for [`RaftCore::propose`].
    ///
    /// One change at a time (thesis §4.1), and only once this leader has committed an entry
    /// of its own term (so that no change of an earlier leader can still be pending).
    pub fn propose_membership_change(
        &mut self,
        change: MembershipChange,
    ) -> Result<(u64, u64), ProposeError> {
        self.check_can_propose()?;
        // Thesis §4.1 (with the 2015 correction): a change that an earlier leader appended
        // may be pending on other servers even when this log shows none; committing an
        // entry of this term first settles it.
        let own_term_ok = self.committed_own_term()
            || self.config.planted_bug == Some(PlantedBug::MembershipChangeBeforeOwnTermCommit);
        if self.membership.latest_index() > self.log.commit() || !own_term_ok {
            return Err(ProposeError::MembershipChangePending);
        }
        let next = membership::apply_change(self.membership.current(), &change)?;
        let payload = membership::encode_membership(&next);
        Ok(self.append_as_leader(EntryKind::Membership, payload))
    }

    /// Starts a leadership transfer to `to` (thesis §3.10): proposals are refused until it
    /// ends; `to` is brought up to date and told to campaign at once. The transfer is
    /// abandoned after an election timeout.
    pub fn transfer_leadership(&mut self, to: NodeId) -> Result<(), ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader {
                leader_hint: self.leader_id,
            });
        }
        if to == self.id || self.transferee == Some(to) {
            return Ok(());
        }
        if !self.membership.current().is_voter(to) {
            return Err(ProposeError::InvalidMembershipChange(format!(
                "cannot transfer leadership to node {to}: it is not a voter"
            )));
        }
        self.transferee = Some(to);
        self.transfer_elapsed = 0;
        let caught_up = self
            .progress
            .get(&to)
            .is_some_and(|pr| pr.match_index == self.log.last_index());
        if caught_up {
            self.send_timeout_now(to);
        } else {
            self.send_appends_to(to);
        }
        Ok(())
    }

    /// The node a leadership transfer is under way to, if any (thesis §3.10: proposals are
    /// refused meanwhile).
    pub fn transfer_target(&self) -> Option<NodeId> {
        if self.role == Role::Leader {
            self.transferee
        } else {
            None
        }
    }

    /// The voter other than this leader best placed to take over (thesis §3.10): among the
    /// voters heard from within an election timeout, the one with the highest match index
    /// (the lowest id on a tie), so the transfer waits the least for catching up. `None` on
    /// a follower or when no other voter is reachable. Never a learner (hashicorp/raft#398).
    pub fn most_caught_up_voter(&self) -> Option<NodeId> {
        if self.role != Role::Leader {
            return None;
        }
        let recent = u64::from(self.config.election_timeout_ticks_max);
        self.voters
            .iter()
            .filter(|id| **id != self.id)
            .filter_map(|id| self.progress.get(id).map(|pr| (*id, pr)))
            .filter(|(_, pr)| self.now.saturating_sub(pr.last_heard_tick) < recent)
            .max_by(|(a, pa), (b, pb)| pa.match_index.cmp(&pb.match_index).then(b.cmp(a)))
            .map(|(id, _)| id)
    }

    /// Requests a safe read point for the driver's read `ctx`; the answer arrives as a
    /// `ReadState` (or `FailedRead`) in a later `Ready`.
    pub fn read_index(&mut self, ctx: u64, mode: ReadMode) -> Result<(), ProposeError> {
        if self.role != Role::Leader {
            // The node forwards client reads to the leader.
            self.failed_reads.push(FailedRead {
                ctx,
                leader_hint: self.leader_id,
            });
            return Ok(());
        }
        if !self.committed_own_term() {
            // Thesis §6.4 step 1: the commit index is only known once an entry of this
            // term has committed.
            self.reads.wait_for_commit(ctx);
            return Ok(());
        }
        let index = self.log.commit();
        let without_quorum = self.config.planted_bug == Some(PlantedBug::ReadIndexWithoutQuorum);
        let lease = mode == ReadMode::Lease && self.config.check_quorum && self.lease_valid();
        if without_quorum || lease || self.voters == [self.id] {
            self.read_states.push(ReadState { ctx, index });
            return Ok(());
        }
        self.reads.push(ctx, index, self.round + 1);
        self.read_round_needed = true;
        Ok(())
    }

    /// The driver made durable everything in the `Ready`s taken so far up to the entry
    /// `(index, term)` (or installed the snapshot ending there).
    ///
    /// Reports are matched against the log by `(index, term)`: a report for an entry that a
    /// later `Ready` truncated is ignored, and a report at or beyond a handed-out snapshot
    /// covers its installation. Call it after each `Ready` with entries (the last entry)
    /// or with a `done` snapshot chunk (the snapshot's last index and term, or the last
    /// entry of that `Ready`); a `Ready` with only a hard state needs no report.
    pub fn on_persisted(&mut self, index: u64, term: u64) {
        self.log.on_persisted(index, term);
        if self.role == Role::Leader {
            self.maybe_commit();
        }
    }

    /// The driver made the snapshot of the last chunk handed out durable and verified it,
    /// made its log agree with it, and will restore its state machine from it before
    /// applying anything later. Only now does the snapshot replace the core's log (Raft
    /// §7) and the leader hear that it is installed (issue 11, item 3).
    pub fn on_snapshot_installed(&mut self, meta: SnapshotMeta) {
        let Some((from, size)) = self.take_install(&meta) else {
            return;
        };
        // Appends, chunks and campaigns are ignored while installing, so the log and the
        // commit index are as they were when the chunk was accepted: the log did not hold
        // the snapshot's last entry and the commit index was below it. (Asking the log
        // again now would read the driver's storage, which already holds the snapshot.)
        self.log.end_install();
        self.restore_snapshot(meta.clone());
        self.log.complete_install();
        self.respond_snapshot(from, meta.last_index, size, true);
    }

    /// The snapshot of the last chunk handed out could not be made durable or failed
    /// verification: it is forgotten, and the leader is told to send it again from the
    /// start (it sends a newer one if it has one).
    pub fn on_snapshot_failed(&mut self, meta: SnapshotMeta) {
        let Some((from, _)) = self.take_install(&meta) else {
            return;
        };
        self.log.end_install();
        tracing::warn!(
            id = self.id,
            index = meta.last_index,
            "snapshot from the leader not installed; asking for it again"
        );
        self.respond_snapshot(from, meta.last_index, 0, false);
    }

    /// Ends the install the driver reports on, if it is the one handed out: returns who
    /// sent it and its size. A report about another snapshot leaves the pending one as is.
    fn take_install(&mut self, meta: &SnapshotMeta) -> Option<(NodeId, u64)> {
        match self.installing.take() {
            Some((pending, from, size)) if pending == *meta => Some((from, size)),
            other => {
                self.installing = other;
                None
            }
        }
    }

    /// The driver applied every committed entry up to `index`.
    pub fn on_applied(&mut self, index: u64) {
        assert!(
            index <= self.log.commit(),
            "applied index {index} beyond the commit index {}",
            self.log.commit()
        );
        self.log.on_applied(index);
    }

    /// The driver snapshotted its state machine (and stored the snapshot so that
    /// `storage.snapshot_meta()` returns it); lagging followers may now be sent it.
    pub fn on_snapshot_taken(&mut self, meta: SnapshotMeta) {
        assert!(
            meta.last_index <= self.log.applied().max(self.log.commit()),
            "snapshot at {} is beyond the commit index {}",
            meta.last_index,
            self.log.commit()
        );
        // Transfers not yet started pick the newest snapshot up when they start; running
        // ones notice when their chunk reads fail.
        tracing::debug!(id = self.id, index = meta.last_index, "snapshot taken");
    }

    /// Whether `take_ready` would return anything.
    pub fn has_ready(&self) -> bool {
        if self.fatal().is_some() {
            return false;
        }
        let leader_work = self.role == Role::Leader
            && (self.append_needed || self.read_round_needed || self.commit_broadcast_needed);
        leader_work
            || self.soft_state() != self.prev_soft
            || self.hard_state() != self.prev_hard
            || !self.msgs.is_empty()
            || !self.persisted_msgs.is_empty()
            || self.snapshot_chunk.is_some()
            || self.log.has_entries_to_persist()
            || self.log.has_entries_to_apply()
            || !self.read_states.is_empty()
            || !self.failed_reads.is_empty()
    }

    /// Takes the pending outputs. See [`Ready`] for how to handle them.
    pub fn take_ready(&mut self) -> Ready {
        if self.fatal().is_some() {
            // Whatever was decided after a failed read may rest on it: none of it leaves.
            return Ready::default();
        }
        if self.role == Role::Leader {
            self.flush_leader();
        }
        let soft = self.soft_state();
        let soft_state = (soft != self.prev_soft).then_some(soft);
        self.prev_soft = soft;
        let hard = self.hard_state();
        let hard_state = (hard != self.prev_hard).then_some(hard);
        self.prev_hard = hard;
        self.log.take_pending_snapshot();
        Ready {
            soft_state,
            messages: std::mem::take(&mut self.msgs),
            snapshot_chunk: self.snapshot_chunk.take(),
            entries: self.log.take_entries_to_persist(),
            hard_state,
            persisted_messages: std::mem::take(&mut self.persisted_msgs),
            commit_index: self.log.commit(),
            committed_entries: self.log.take_entries_to_apply(self.config.max_apply_bytes),
            read_states: std::mem::take(&mut self.read_states),
            failed_reads: std::mem::take(&mut self.failed_reads),
        }
    }

    /// The current state, for status reports.
    pub fn status(&self) -> Status {
        Status {
            id: self.id,
            role: self.reported_role(),
            term: self.term,
            leader_id: self.leader_id,
            commit_index: self.log.commit(),
            applied_index: self.log.applied(),
            last_log_index: self.log.last_index(),
            snapshot_index: self.log.snapshot_index(),
            membership: self.membership.current().clone(),
        }
    }

    /// The leader's view of every member's replication: match index and ticks since it was
    /// last heard from (the leader itself: its last index, 0 ticks). Empty on a non-leader,
    /// which has no such view. Read-only, for status reports and the node's membership
    /// policy (learner promotion, quorum-safety checks).
    pub fn member_progress(&self) -> Vec<MemberProgress> {
        if self.role != Role::Leader {
            return Vec::new();
        }
        self.membership
            .current()
            .members
            .keys()
            .map(|&id| match self.progress.get(&id) {
                _ if id == self.id => MemberProgress {
                    id,
                    match_index: self.log.last_index(),
                    ticks_since_contact: 0,
                },
                Some(pr) => MemberProgress {
                    id,
                    match_index: pr.match_index,
                    ticks_since_contact: self.now.saturating_sub(pr.last_heard_tick),
                },
                None => MemberProgress {
                    id,
                    match_index: 0,
                    ticks_since_contact: self.now,
                },
            })
            .collect()
    }

    /// Whether this node leads and has committed an entry of its own term (thesis §6.4):
    /// before that it cannot know whether a change of an earlier leader is still pending.
    pub fn has_committed_own_term(&self) -> bool {
        self.committed_own_term()
    }

    /// Whether a membership change would be refused as pending (thesis §4.1: one at a time;
    /// a new leader first commits an entry of its own term).
    pub fn membership_change_pending(&self) -> bool {
        self.membership.latest_index() > self.log.commit() || !self.committed_own_term()
    }

    /// Term and vote, as they must be persisted.
    pub fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            voted_for: self.voted_for,
        }
    }

    /// Role, leader and term.
    pub fn soft_state(&self) -> SoftState {
        SoftState {
            role: self.reported_role(),
            leader_id: self.leader_id,
            term: self.term,
        }
    }

    // ---- Time ----

    fn tick_election(&mut self) {
        self.election_elapsed += 1;
        if self.election_elapsed >= self.randomized_election_timeout && self.promotable() {
            self.campaign(self.config.pre_vote, false);
        }
    }

    fn tick_leader(&mut self) {
        self.heartbeat_elapsed += 1;
        if self.heartbeat_elapsed >= self.config.heartbeat_interval_ticks {
            self.heartbeat_elapsed = 0;
            self.heartbeat_all(true);
        }
        if self.config.check_quorum && !self.quorum_recently_active() {
            // Thesis §6.2: a leader cut off from a quorum steps down, so clients look
            // elsewhere and its lease cannot outlive a new leader's election.
            tracing::info!(
                id = self.id,
                term = self.term,
                "CheckQuorum failed, stepping down"
            );
            self.become_follower(self.term, None, "lost CheckQuorum");
            return;
        }
        if self.transferee.is_some() {
            self.transfer_elapsed += 1;
            if self.transfer_elapsed >= self.config.election_timeout_ticks_max {
                tracing::info!(id = self.id, to = ?self.transferee, "leadership transfer timed out");
                self.transferee = None;
            }
        }
    }

    fn reset_election_timer(&mut self) {
        self.election_elapsed = 0;
        let (min, max) = (
            self.config.election_timeout_ticks_min,
            self.config.election_timeout_ticks_max,
        );
        let spread = u64::from(max.saturating_sub(min)).max(1);
        self.randomized_election_timeout = min + (self.rng.next_u64() % spread) as u32;
    }

    // ---- Role changes ----

    /// Whether this node may campaign. A voter whose removal or demotion is appended but not
    /// yet committed still may: like a leader that is being removed (thesis §4.2.2) it
    /// belongs to the cluster until the change commits, and it may hold the only log that
    /// can win (its vote counts in its peers' configuration, which lacks the change). If it
    /// stood aside, the others could refuse each other forever (simulator seeds 2718018620,
    /// 2718034740: the node with the longest log sat out as a "learner" while two stale
    /// candidates raised terms past 180). Its own vote still counts only where it is a voter.
    fn promotable(&self) -> bool {
        self.membership.current().is_voter(self.id) || self.membership.committed().is_voter(self.id)
    }

    fn reported_role(&self) -> Role {
        if self.role == Role::Follower && !self.promotable() {
            Role::Learner
        } else {
            self.role
        }
    }

    fn become_follower(&mut self, term: u64, leader: Option<NodeId>, why: &'static str) {
        let was_leader = self.role == Role::Leader;
        let changed = self.role != Role::Follower || self.leader_id != leader || term > self.term;
        if term > self.term {
            self.term = term;
            self.voted_for = None;
        }
        if was_leader {
            self.progress.clear();
            self.transferee = None;
            // A follower proposes nothing; a future term starts counting afresh (etcd
            // raft resets `uncommittedSize` in `reset`).
            self.uncommitted_payloads.clear();
            self.uncommitted_bytes = 0;
            self.reads.fail_all(leader, &mut self.failed_reads);
            self.append_needed = false;
            self.read_round_needed = false;
            self.commit_broadcast_needed = false;
        }
        self.role = Role::Follower;
        self.leader_id = leader;
        self.votes = VoteTally::default();
        // Raft Figure 2: only hearing from a leader (or granting a vote) resets the election
        // timer. A vote request with a newer term must not, or a candidate that cannot win
        // keeps the electable voters from ever timing out.
        if leader.is_some() || was_leader {
            self.reset_election_timer();
        }
        if changed {
            tracing::info!(id = self.id, term = self.term, leader = ?leader, "became follower: {why}");
        }
    }

    /// Starts an election: a PreVote round first (thesis §9.6) unless `pre_vote` is off or
    /// this is a leadership transfer.
    fn campaign(&mut self, pre_vote: bool, transfer: bool) {
        if self.installing.is_some() {
            // The log is frozen until the driver reports the snapshot installed (or
            // failed): a leader would append to and commit a log about to be replaced.
            return;
        }
        // Peers refuse terms from TERM_MAX on, so campaigning there could never win; and
        // `term + 1` must not wrap to 0 (the stable store would refuse the hard state).
        let Some(next_term) = self.term.checked_add(1).filter(|t| *t < validate::TERM_MAX) else {
            tracing::error!(
                id = self.id,
                term = self.term,
                "term exhausted, not campaigning"
            );
            return;
        };
        self.reset_election_timer();
        self.votes = VoteTally::default();
        self.leader_id = None;
        self.votes.record(self.id, true);
        let (last_log_index, last_log_term) = (self.log.last_index(), self.log.last_term());
        if pre_vote {
            tracing::info!(id = self.id, term = self.term, "became pre-candidate");
            self.role = Role::PreCandidate;
            let msg = Message::PreVote {
                term: next_term,
                last_log_index,
                last_log_term,
            };
            self.send_to_voters(msg, Send::Now);
        } else {
            self.term = next_term;
            self.voted_for = Some(self.id);
            self.role = Role::Candidate;
            tracing::info!(id = self.id, term = self.term, transfer, "became candidate");
            let msg = Message::RequestVote {
                term: self.term,
                last_log_index,
                last_log_term,
                leadership_transfer: transfer,
            };
            // The vote for itself must be durable before anyone counts on it.
            self.send_to_voters(msg, Send::AfterPersist);
        }
        self.check_votes();
    }

    fn send_to_voters(&mut self, msg: Message, when: Send) {
        for id in self.voters.clone() {
            if id != self.id {
                self.send(id, msg.clone(), when);
            }
        }
    }

    fn check_votes(&mut self) {
        match self.votes.result(&self.voters) {
            VoteResult::Won if self.role == Role::PreCandidate => self.campaign(false, false),
            VoteResult::Won => self.become_leader(),
            VoteResult::Lost => self.become_follower(self.term, None, "lost the election"),
            VoteResult::Pending => {}
        }
    }

    fn become_leader(&mut self) {
        assert!(
            self.role == Role::Candidate,
            "node {} becomes leader of term {} as {:?}",
            self.id,
            self.term,
            self.role
        );
        self.role = Role::Leader;
        self.leader_id = Some(self.id);
        self.timeout_now_sent = false;
        self.heartbeat_elapsed = 0;
        self.progress.clear();
        self.reset_progress();
        // Entries of earlier leaders are not counted (etcd raft resets `uncommittedSize`
        // on becoming leader): this leader never took their bytes.
        self.uncommitted_payloads.clear();
        self.uncommitted_bytes = 0;
        // Raft §5.4.2 / thesis §6.4: an entry of this term commits the earlier ones and
        // tells the leader the cluster's commit index.
        self.noop_index = self.log.last_index() + 1;
        self.append_as_leader(EntryKind::Noop, Bytes::new());
        tracing::info!(id = self.id, term = self.term, "became leader");
    }

    /// Makes sure every member but this node has a progress entry, and only members.
    fn reset_progress(&mut self) {
        let next = self.log.last_index() + 1;
        let now = self.now;
        let members = &self.membership.current().members;
        self.progress.retain(|id, _| members.contains_key(id));
        for id in members.keys() {
            if *id != self.id {
                self.progress
                    .entry(*id)
                    .or_insert_with(|| Progress::new(next, now));
            }
        }
    }

    // ---- Messages ----

    fn send(&mut self, to: NodeId, message: Message, when: Send) {
        let env = Envelope {
            from: self.id,
            to,
            message,
        };
        match when {
            Send::Now => self.msgs.push(env),
            Send::AfterPersist => self.persisted_msgs.push(env),
        }
    }

    /// Whether a leader is known to be alive: vote requests are then ignored, without
    /// adopting their term (thesis §4.2.3). Removed servers that never learn of their
    /// removal time out again and again; without this rule their ever higher terms depose
    /// each leader the remaining members elect, whether or not PreVote and CheckQuorum are
    /// on (simulator seeds 8888000178, 5555022801, 5555089955 had both off).
    ///
    /// A follower is in the lease for a minimum election timeout after hearing from its
    /// leader; a leader for as long as it has heard from a quorum within an election
    /// timeout (the CheckQuorum condition, evaluated even when CheckQuorum is off), so
    /// a leader cut off from the majority stays deposable and cannot hold up elections.
    fn in_lease(&self) -> bool {
        match self.role {
            Role::Leader => self.quorum_recently_active(),
            _ => {
                self.leader_id.is_some()
                    && self.election_elapsed < self.config.election_timeout_ticks_min
            }
        }
    }

    /// A message with a newer term. Returns whether to go on handling it.
    fn on_higher_term(&mut self, from: NodeId, msg: &Message) -> bool {
        match msg {
            Message::PreVote { .. } => {
                let lease = self.in_lease();
                if lease {
                    tracing::debug!(id = self.id, from, "pre-vote ignored: leader lease");
                }
                !lease
            }
            Message::RequestVote {
                leadership_transfer,
                ..
            } => {
                if self.in_lease() && !leadership_transfer {
                    tracing::debug!(id = self.id, from, "vote request ignored: leader lease");
                    return false;
                }
                self.become_follower(msg.term(), None, "vote request with a higher term");
                true
            }
            Message::AppendEntries { .. }
            | Message::InstallSnapshot { .. }
            | Message::TimeoutNow { .. } => {
                self.become_follower(msg.term(), Some(from), "leader of a higher term");
                true
            }
            _ => {
                self.become_follower(msg.term(), None, "higher term seen in a response");
                false
            }
        }
    }

    /// A message from an older term: tell a stale leader or candidate about the new term.
    fn on_lower_term(&mut self, from: NodeId, msg: &Message) {
        let term = self.term;
        let reply = match msg {
            Message::AppendEntries { .. } | Message::InstallSnapshot { .. } => {
                Message::AppendEntriesResponse {
                    term,
                    success: false,
                    match_index: 0,
                    conflict_term: 0,
                    conflict_index: 0,
                    read_ctx: 0,
                }
            }
            Message::PreVote { .. } => {
                tracing::debug!(id = self.id, from, "pre-vote refused: stale term");
                Message::PreVoteResponse {
                    term,
                    granted: false,
                }
            }
            Message::RequestVote { .. } => {
                tracing::debug!(id = self.id, from, "vote refused: stale term");
                Message::RequestVoteResponse {
                    term,
                    granted: false,
                }
            }
            _ => return,
        };
        self.send(from, reply, Send::AfterPersist);
    }

    fn dispatch(&mut self, from: NodeId, msg: Message) {
        match msg {
            Message::PreVote {
                term,
                last_log_index,
                last_log_term,
            } => self.handle_vote_request(from, term, last_log_index, last_log_term, true),
            Message::RequestVote {
                term,
                last_log_index,
                last_log_term,
                ..
            } => self.handle_vote_request(from, term, last_log_index, last_log_term, false),
            Message::RequestVoteResponse { granted, .. } => {
                if self.role == Role::Candidate {
                    self.votes.record(from, granted);
                    self.check_votes();
                }
            }
            Message::AppendEntries {
                prev_log_index,
                prev_log_term,
                entries,
                leader_commit,
                read_ctx,
                ..
            } => {
                if self.accept_leader(from) {
                    let prev = (prev_log_index, prev_log_term);
                    self.handle_append(from, prev, entries, leader_commit, read_ctx);
                }
            }
            Message::AppendEntriesResponse {
                success,
                match_index,
                conflict_term,
                conflict_index,
                read_ctx,
                ..
            } => {
                if self.role == Role::Leader {
                    let conflict = (conflict_term, conflict_index);
                    self.handle_append_response(from, success, match_index, conflict, read_ctx);
                }
            }
            Message::InstallSnapshot {
                meta,
                offset,
                data,
                done,
                ..
            } => {
                if self.accept_leader(from) {
                    self.handle_install_snapshot(from, meta, offset, data, done);
                }
            }
            Message::InstallSnapshotResponse {
                snapshot_last_index,
                next_offset,
                success,
                ..
            } => {
                if self.role == Role::Leader {
                    self.handle_snapshot_response(from, snapshot_last_index, next_offset, success);
                }
            }
            Message::TimeoutNow { .. } => {
                if self.role != Role::Leader && self.promotable() {
                    tracing::info!(id = self.id, from, "TimeoutNow: campaigning at once");
                    self.campaign(false, true);
                }
            }
            Message::PreVoteResponse { .. } => {}
        }
    }

    /// A leader of the current term spoke: follow it. Returns false if this node leads the
    /// same term (two leaders in one term: election safety is already broken elsewhere).
    fn accept_leader(&mut self, from: NodeId) -> bool {
        if self.role == Role::Leader {
            tracing::error!(
                id = self.id,
                from,
                term = self.term,
                "two leaders in one term; message ignored"
            );
            return false;
        }
        if self.role != Role::Follower || self.leader_id != Some(from) {
            self.become_follower(self.term, Some(from), "heard from the leader");
        }
        self.election_elapsed = 0;
        true
    }

    // ---- Elections ----

    fn handle_vote_request(
        &mut self,
        from: NodeId,
        term: u64,
        last_log_index: u64,
        last_log_term: u64,
        pre_vote: bool,
    ) {
        // While a snapshot is being installed the driver's storage is between two logs:
        // refusing is always safe.
        let log_ok = self.installing.is_none()
            && (self.config.planted_bug == Some(PlantedBug::VoteWithoutLogCheck)
                || self.log.is_up_to_date(last_log_index, last_log_term));
        let free = self.voted_for == Some(from)
            || (self.voted_for.is_none() && self.leader_id.is_none())
            || (pre_vote && term > self.term);
        let granted = log_ok && free;
        let kind = if pre_vote { "pre-vote" } else { "vote" };
        if granted {
            tracing::info!(id = self.id, term, candidate = from, "{kind} granted");
        } else {
            let why = if !log_ok {
                "candidate's log is not up to date".to_string()
            } else if let Some(v) = self.voted_for {
                format!("already voted for {v} in term {}", self.term)
            } else {
                format!("following leader {:?}", self.leader_id)
            };
            tracing::debug!(
                id = self.id,
                term,
                candidate = from,
                "{kind} refused: {why}"
            );
        }
        if pre_vote {
            let term = if granted { term } else { self.term };
            self.send(from, Message::PreVoteResponse { term, granted }, Send::Now);
            return;
        }
        if granted {
            self.voted_for = Some(from);
            self.election_elapsed = 0;
        }
        let when = if self.config.planted_bug == Some(PlantedBug::VoteBeforePersist) {
            Send::Now
        } else {
            // Raft Figure 2: the vote is on stable storage before the answer leaves.
            Send::AfterPersist
        };
        let term = self.term;
        self.send(from, Message::RequestVoteResponse { term, granted }, when);
    }

    fn handle_pre_vote_response(&mut self, from: NodeId, term: u64, granted: bool) {
        if !granted && term > self.term {
            self.become_follower(term, None, "pre-vote refused with a higher term");
            return;
        }
        if self.role != Role::PreCandidate {
            return;
        }
        // A grant is for the term we would campaign in; anything else is stale.
        let current = if granted {
            term == self.term + 1
        } else {
            term == self.term
        };
        if current {
            self.votes.record(from, granted);
            self.check_votes();
        }
    }

    // ---- Replication, follower side ----

    fn handle_append(
        &mut self,
        from: NodeId,
        prev: (u64, u64),
        entries: Vec<Entry>,
        leader_commit: u64,
        read_ctx: u64,
    ) {
        if self.installing.is_some() {
            // The log is about to be replaced; the leader retries after the install.
            return;
        }
        let (mut prev_index, prev_term) = (prev.0, prev.1);
        let commit = self.log.commit();
        let mut entries = entries;
        if prev_index < commit {
            // The committed prefix matches the leader's log (Log Matching + Leader
            // Completeness): skip the entries it covers.
            let skip = (commit - prev_index).min(entries.len() as u64) as usize;
            entries.drain(..skip);
            prev_index = commit;
        } else if !self.log.matches(prev_index, prev_term) {
            self.reject_append(from, prev_index, read_ctx);
            return;
        }
        let last_new = prev_index + entries.len() as u64;
        let appended = self.append_from_leader(entries);
        let new_commit = leader_commit.min(last_new);
        if new_commit > self.log.commit() {
            self.advance_commit(new_commit);
        }
        if appended || self.hard_state() != self.prev_hard {
            // The answer vouches for entries (or the term) of this Ready: only once durable.
            self.respond_append(from, true, last_new, (0, 0), read_ctx, Send::AfterPersist);
        } else {
            // Nothing new to make durable (a heartbeat, a duplicate): answer at once so a
            // slow disk delays no leadership confirmation, claiming only what is durable.
            let durable = last_new.min(self.log.persisted());
            self.respond_append(from, true, durable, (0, 0), read_ctx, Send::Now);
        }
    }

    /// Appends the entries the log does not hold yet; returns whether there were any.
    fn append_from_leader(&mut self, mut entries: Vec<Entry>) -> bool {
        let Some(first_new) = entries
            .iter()
            .position(|e| !self.log.matches(e.index, e.term))
        else {
            return false;
        };
        let new = entries.split_off(first_new);
        let mut changed = self.membership.truncate_from(new[0].index);
        for entry in &new {
            changed |= self.track_membership(entry);
        }
        self.log.append_new(new);
        if changed {
            self.on_membership_changed();
        }
        true
    }

    /// Records a membership entry's configuration (it takes effect when appended).
    fn track_membership(&mut self, entry: &Entry) -> bool {
        if entry.kind != EntryKind::Membership {
            return false;
        }
        match membership::decode_membership(&entry.payload) {
            Ok(m) => {
                self.membership.on_append(entry.index, m);
                true
            }
            Err(e) => {
                tracing::error!(
                    id = self.id,
                    index = entry.index,
                    "{e}; configuration ignored"
                );
                false
            }
        }
    }

    fn reject_append(&mut self, from: NodeId, prev_index: u64, read_ctx: u64) {
        let last = self.log.last_index();
        let conflict = if prev_index > last {
            (0, last + 1)
        } else {
            let term = self.log.term(prev_index).unwrap_or(0);
            let first = self.log.first_index_of_term(prev_index, self.log.commit());
            (term, first)
        };
        // A rejection vouches for nothing durable; only a term change must land first.
        let when = if self.hard_state() == self.prev_hard {
            Send::Now
        } else {
            Send::AfterPersist
        };
        self.respond_append(from, false, last, conflict, read_ctx, when);
    }

    fn respond_append(
        &mut self,
        to: NodeId,
        success: bool,
        match_index: u64,
        conflict: (u64, u64),
        read_ctx: u64,
        when: Send,
    ) {
        let msg = Message::AppendEntriesResponse {
            term: self.term,
            success,
            match_index,
            conflict_term: conflict.0,
            conflict_index: conflict.1,
            read_ctx,
        };
        self.send(to, msg, when);
    }

    fn handle_install_snapshot(
        &mut self,
        from: NodeId,
        meta: SnapshotMeta,
        offset: u64,
        data: Bytes,
        done: bool,
    ) {
        if self.installing.is_some() {
            // One install at a time; the leader resends when it hears nothing.
            return;
        }
        let commit = self.log.commit();
        if meta.last_index <= commit {
            // Stale: the log already covers it. Tell the leader where we really are.
            self.respond_append(from, true, commit, (0, 0), 0, Send::AfterPersist);
            return;
        }
        if self.log.matches(meta.last_index, meta.last_term) {
            // Raft §7: the log already holds the snapshot's last entry, so it is retained
            // and the snapshot is not needed; the entries up to it are committed.
            self.incoming_snapshot = None;
            self.advance_commit(meta.last_index);
            self.respond_append(from, true, meta.last_index, (0, 0), 0, Send::AfterPersist);
            return;
        }
        if self.snapshot_chunk.is_some() {
            // One chunk per Ready; the leader resends.
            return;
        }
        let expected = match &self.incoming_snapshot {
            Some((m, next)) if *m == meta => *next,
            _ => 0,
        };
        let snapshot_last_index = meta.last_index;
        if offset != 0 && offset != expected {
            self.respond_snapshot(from, snapshot_last_index, expected, false);
            return;
        }
        if done && self.log.has_entries_to_persist() {
            // They would be handed out with the chunk and written after the install, into
            // a log that starts after the snapshot; the leader resends the chunk.
            return;
        }
        let next_offset = offset + data.len() as u64;
        self.snapshot_chunk = Some(SnapshotChunk {
            meta: meta.clone(),
            offset,
            data,
            done,
        });
        self.incoming_snapshot = None;
        if done {
            // Issue 11, item 3: the log is replaced and the leader answered only once the
            // driver reports the snapshot durable and verified (`on_snapshot_installed`).
            self.log.begin_install();
            self.installing = Some((meta, from, next_offset));
            return;
        }
        self.incoming_snapshot = Some((meta, next_offset));
        self.respond_snapshot(from, snapshot_last_index, next_offset, true);
    }

    /// Answers an InstallSnapshot chunk once what it changed is durable.
    fn respond_snapshot(
        &mut self,
        to: NodeId,
        snapshot_last_index: u64,
        next_offset: u64,
        success: bool,
    ) {
        let msg = Message::InstallSnapshotResponse {
            term: self.term,
            snapshot_last_index,
            next_offset,
            success,
        };
        self.send(to, msg, Send::AfterPersist);
    }

    /// Raft §7: the snapshot replaces the log it covers (a matching suffix is kept).
    fn restore_snapshot(&mut self, meta: SnapshotMeta) {
        tracing::info!(id = self.id, index = meta.last_index, "installing snapshot");
        self.membership.restore(meta.membership.clone());
        self.log.restore(meta);
        self.on_membership_changed();
    }

    // ---- Replication, leader side ----

    fn check_can_propose(&self) -> Result<(), ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader {
                leader_hint: self.leader_id,
            });
        }
        if self.transferee.is_some() {
            return Err(ProposeError::TransferInProgress);
        }
        if self.log.last_index() - self.log.commit() >= self.config.max_uncommitted_entries {
            return Err(ProposeError::Backpressure);
        }
        Ok(())
    }

    /// etcd raft's `increaseUncommittedSize` (raft.go): refuse a proposal that would take
    /// the uncommitted payload bytes past the bound, except when nothing is uncommitted
    /// (an entry larger than the bound would otherwise never be accepted) and for an empty
    /// payload (etcd exempts those so a new leader's empty entry always goes in).
    fn check_uncommitted_bytes(&self, proposal_bytes: u64) -> Result<(), ProposeError> {
        let max_bytes = self.config.max_uncommitted_bytes;
        if self.uncommitted_bytes > 0
            && proposal_bytes > 0
            && self.uncommitted_bytes.saturating_add(proposal_bytes) > max_bytes
        {
            return Err(ProposeError::UncommittedBytesFull {
                uncommitted_bytes: self.uncommitted_bytes,
                proposal_bytes,
                max_bytes,
            });
        }
        Ok(())
    }

    /// etcd raft's `reduceUncommittedSize`: committed entries no longer count.
    fn release_uncommitted_bytes(&mut self, commit: u64) {
        while let Some(&(index, bytes)) = self.uncommitted_payloads.front() {
            if index > commit {
                break;
            }
            self.uncommitted_payloads.pop_front();
            self.uncommitted_bytes -= bytes;
        }
    }

    fn append_as_leader(&mut self, kind: EntryKind, payload: Bytes) -> (u64, u64) {
        let entry = Entry {
            index: self.log.last_index() + 1,
            term: self.term,
            kind,
            payload,
        };
        let at = (entry.index, entry.term);
        let changed = self.track_membership(&entry);
        self.log.append_local(entry);
        if changed {
            self.on_membership_changed();
        }
        self.append_needed = true;
        if self.voters.len() <= 1 {
            // A lone voter commits on its own write; others commit on acknowledgements.
            self.maybe_commit();
        }
        at
    }

    fn on_membership_changed(&mut self) {
        self.voters = self.membership.voters();
        if self.role != Role::Leader {
            return;
        }
        self.reset_progress();
        if let Some(to) = self.transferee {
            if !self.membership.current().is_voter(to) {
                self.transferee = None;
            }
        }
        // A smaller quorum may commit more.
        self.maybe_commit();
    }

    fn send_timeout_now(&mut self, to: NodeId) {
        self.timeout_now_sent = true;
        self.send(to, Message::TimeoutNow { term: self.term }, Send::Now);
    }

    /// Sends whatever `to` can take now (entries up to the window, or a snapshot chunk).
    fn send_appends_to(&mut self, to: NodeId) {
        while self.send_append(to) {}
    }

    /// Sends one AppendEntries to `to` if its progress allows; returns whether it did and
    /// more could follow.
    fn send_append(&mut self, to: NodeId) -> bool {
        let max_inflight = self.config.max_inflight_msgs;
        let Some(pr) = self.progress.get(&to) else {
            return false;
        };
        if pr.is_paused(max_inflight) {
            return false;
        }
        let probing = pr.state == ProgressState::Probe;
        let next = pr.next_index;
        let last = self.log.last_index();
        if next > last && !probing {
            return false;
        }
        let prev_term = self.log.term(next - 1);
        let entries = self.log.entries(next, last + 1, self.config.max_msg_bytes);
        let (Some(prev_log_term), Some(entries)) = (prev_term, entries) else {
            if self.log.fatal().is_some() {
                // Issue 11, item 8: a failed read is not compaction; the core stops.
                return false;
            }
            // Compacted away (the driver compacts behind our back): send the snapshot.
            self.start_snapshot(to);
            return false;
        };
        let sent_to = entries.last().map_or(next - 1, |e| e.index);
        let commit = self.log.commit();
        let msg = Message::AppendEntries {
            term: self.term,
            prev_log_index: next - 1,
            prev_log_term,
            entries,
            leader_commit: commit,
            read_ctx: self.round,
        };
        let pr = self.progress.get_mut(&to).expect("progress checked above");
        pr.on_sent(sent_to);
        pr.commit_sent = pr.commit_sent.max(commit.min(sent_to));
        self.send(to, msg, Send::Now);
        !probing && sent_to < last
    }

    /// A heartbeat: an empty AppendEntries at the follower's match index, carrying
    /// `min(commit, match)` so it never makes the follower commit what it has not verified.
    fn send_heartbeat(&mut self, to: NodeId) {
        let Some(pr) = self.progress.get_mut(&to) else {
            return;
        };
        let (prev, prev_term) = match self.log.term(pr.match_index) {
            Some(t) => (pr.match_index, t),
            None => (0, 0),
        };
        let leader_commit = self.log.commit().min(prev);
        pr.commit_sent = pr.commit_sent.max(leader_commit);
        let msg = Message::AppendEntries {
            term: self.term,
            prev_log_index: prev,
            prev_log_term: prev_term,
            entries: Vec::new(),
            leader_commit,
            read_ctx: self.round,
        };
        self.send(to, msg, Send::Now);
    }

    /// Starts a new ReadIndex round and sends a heartbeat to everyone; on the heartbeat
    /// tick (not for read rounds) also retries stalled replication.
    fn heartbeat_all(&mut self, tick: bool) {
        self.new_round();
        let peers: Vec<NodeId> = self.progress.keys().copied().collect();
        for id in peers {
            self.send_heartbeat(id);
            if tick {
                self.on_heartbeat_tick(id);
            }
        }
    }

    /// Per-heartbeat housekeeping of one follower's replication.
    fn on_heartbeat_tick(&mut self, id: NodeId) {
        let now = self.now;
        let stall_ticks = u64::from(self.config.heartbeat_interval_ticks) * 2;
        let Some(pr) = self.progress.get_mut(&id) else {
            return;
        };
        match &mut pr.state {
            ProgressState::Probe => pr.probe_sent = false,
            ProgressState::Replicate => {
                // A pipeline that made no progress for a while lost a message: probe.
                if !pr.inflight.is_empty() && now - pr.last_progress_tick >= stall_ticks {
                    pr.become_probe();
                }
            }
            ProgressState::Snapshot(t) => {
                let stalled = t
                    .in_flight_since
                    .is_none_or(|since| now - since >= stall_ticks);
                if stalled {
                    self.send_snapshot_chunk(id);
                }
                return;
            }
        }
        self.send_appends_to(id);
    }

    fn new_round(&mut self) {
        self.round += 1;
        self.round_ticks.push_back((self.round, self.now));
        let horizon = u64::from(self.config.election_timeout_ticks_max) * 2;
        while self
            .round_ticks
            .front()
            .is_some_and(|(_, t)| t + horizon < self.now)
        {
            self.round_ticks.pop_front();
        }
    }

    fn round_sent_tick(&self, round: u64) -> Option<u64> {
        let pos = self
            .round_ticks
            .binary_search_by_key(&round, |(r, _)| *r)
            .ok()?;
        Some(self.round_ticks[pos].1)
    }

    /// The batched work of a leader, done when the driver takes a `Ready`.
    fn flush_leader(&mut self) {
        if std::mem::take(&mut self.append_needed) {
            let peers: Vec<NodeId> = self.progress.keys().copied().collect();
            for id in peers {
                self.send_appends_to(id);
            }
        }
        if std::mem::take(&mut self.read_round_needed) {
            self.heartbeat_all(false);
            self.release_reads();
        }
        if std::mem::take(&mut self.commit_broadcast_needed) {
            let commit = self.log.commit();
            let behind: Vec<NodeId> = self
                .progress
                .iter()
                .filter(|(_, pr)| pr.commit_sent < commit.min(pr.match_index))
                .map(|(id, _)| *id)
                .collect();
            for id in behind {
                self.send_heartbeat(id);
            }
        }
    }

    fn handle_append_response(
        &mut self,
        from: NodeId,
        success: bool,
        match_index: u64,
        conflict: (u64, u64),
        read_ctx: u64,
    ) {
        let last = self.log.last_index();
        let now = self.now;
        let acked_tick = self.round_sent_tick(read_ctx).map_or(0, |t| t + 1);
        let Some(pr) = self.progress.get_mut(&from) else {
            return;
        };
        pr.last_heard_tick = now;
        if read_ctx > pr.acked_round {
            pr.acked_round = read_ctx;
            pr.acked_round_sent_tick = acked_tick;
        }
        let snapshotting = matches!(pr.state, ProgressState::Snapshot(_));
        let next_index = pr.next_index;
        if success {
            assert!(
                match_index <= last,
                "node {from} acknowledged index {match_index} beyond the leader's last index {last}"
            );
            self.on_append_success(from, match_index);
        } else if !snapshotting {
            let hint = self.next_index_after_reject(next_index, conflict);
            let pr = self
                .progress
                .get_mut(&from)
                .expect("progress checked above");
            pr.on_reject(hint);
            self.send_appends_to(from);
        }
        if read_ctx > 0 {
            self.release_reads();
        }
    }

    fn on_append_success(&mut self, from: NodeId, match_index: u64) {
        let now = self.now;
        let last = self.log.last_index();
        let Some(pr) = self.progress.get_mut(&from) else {
            return;
        };
        let advanced = pr.on_success(match_index, now);
        match &pr.state {
            ProgressState::Probe if pr.next_index == pr.match_index + 1 => pr.become_replicate(now),
            ProgressState::Snapshot(t) if pr.match_index >= t.meta.last_index => {
                pr.become_replicate(now)
            }
            _ => {}
        }
        let caught_up = pr.match_index == last;
        if advanced {
            self.maybe_commit();
        }
        if self.role != Role::Leader {
            return;
        }
        if caught_up && self.transferee == Some(from) {
            self.send_timeout_now(from);
        }
        self.send_appends_to(from);
    }

    /// Where to probe next after a rejection (Raft §5.3, the thesis's fast backtracking):
    /// past the leader's last entry of the follower's conflicting term if it has that
    /// term, else at the first index the follower holds of it.
    fn next_index_after_reject(&self, next_index: u64, conflict: (u64, u64)) -> u64 {
        let (conflict_term, conflict_index) = conflict;
        if conflict_term == 0 {
            return conflict_index;
        }
        let bound = next_index.saturating_sub(1);
        match self.log.last_index_with_term_at_most(bound, conflict_term) {
            Some(j) if self.log.term(j) == Some(conflict_term) => j + 1,
            _ => conflict_index,
        }
    }

    /// Raft §5.3/§5.4.2: the commit index advances to the highest index a quorum stores,
    /// but only by counting replicas of an entry of the current term.
    fn maybe_commit(&mut self) -> bool {
        if self.role != Role::Leader {
            return false;
        }
        // The leader counts only what its own disk has (thesis §10.2.1).
        let index = self.voter_quorum_value(self.log.persisted(), |pr| pr.match_index);
        if index <= self.log.commit() {
            return false;
        }
        let old_term_ok = self.config.planted_bug == Some(PlantedBug::CommitOldTermByCount);
        if self.log.term(index) != Some(self.term) && !old_term_ok {
            return false;
        }
        self.advance_commit(index);
        self.on_commit_advanced();
        true
    }

    /// Raises the commit index to `index`; configurations superseded by a committed one
    /// are no longer needed.
    fn advance_commit(&mut self, index: u64) {
        self.log.commit_to(index);
        self.membership.compact(index);
        self.release_uncommitted_bytes(index);
    }

    fn on_commit_advanced(&mut self) {
        let commit = self.log.commit();
        self.commit_broadcast_needed = true;
        if self.reads.has_waiting_for_commit() && self.committed_own_term() {
            if self.voters == [self.id] {
                self.reads.assign_waiting(commit, self.round);
            } else {
                self.reads.assign_waiting(commit, self.round + 1);
                self.read_round_needed = true;
            }
            self.release_reads();
        }
        // Thesis §4.2.2: a leader that is no longer a voter steps down once the
        // configuration without it is committed.
        if !self.promotable() && self.membership.latest_index() <= commit {
            tracing::info!(
                id = self.id,
                "removed from the configuration, stepping down"
            );
            self.become_follower(self.term, None, "removed from the configuration");
        }
    }

    fn committed_own_term(&self) -> bool {
        self.role == Role::Leader && self.log.commit() >= self.noop_index
    }

    /// Releases the reads whose round a quorum of voters has acknowledged.
    fn release_reads(&mut self) {
        if self.reads.is_empty() {
            return;
        }
        let round = self.voter_quorum_value(self.round, |pr| pr.acked_round);
        self.reads.release(round, &mut self.read_states);
    }

    /// The leader lease: a quorum acknowledged a round sent less than
    /// `election_timeout_ticks_min - lease_clock_drift_ticks` ago, so no other leader can
    /// have been elected since (followers ignore votes for that long after hearing from us).
    fn lease_valid(&self) -> bool {
        if self.transferee.is_some() || self.timeout_now_sent {
            return false;
        }
        let since = self.voter_quorum_value(self.now + 1, |pr| pr.acked_round_sent_tick);
        let window = self
            .config
            .election_timeout_ticks_min
            .saturating_sub(self.config.lease_clock_drift_ticks);
        since > 0 && self.now + 1 < since + u64::from(window)
    }

    /// CheckQuorum: a quorum of voters was heard from within the last election timeout.
    fn quorum_recently_active(&self) -> bool {
        if self.voters.is_empty() {
            return true;
        }
        let at = self.voter_quorum_value(self.now, |pr| pr.last_heard_tick);
        self.now - at < u64::from(self.config.election_timeout_ticks_max)
    }

    /// The highest value a majority of voters has reached: `own` for this node, `of` of
    /// each other voter's progress (0 for a voter without one).
    fn voter_quorum_value(&self, own: u64, of: impl Fn(&Progress) -> u64) -> u64 {
        let mut values: Vec<u64> = self
            .voters
            .iter()
            .map(|id| match self.progress.get(id) {
                None if *id == self.id => own,
                None => 0,
                Some(pr) => of(pr),
            })
            .collect();
        majority_value(&mut values)
    }

    // ---- Snapshots, leader side ----

    fn start_snapshot(&mut self, to: NodeId) {
        let meta = self.log.storage.snapshot_meta();
        if meta.last_index == 0 {
            tracing::error!(
                id = self.id,
                to,
                first_index = self.log.first_index(),
                "log compacted without a snapshot; cannot catch the follower up"
            );
            return;
        }
        if let Some(pr) = self.progress.get_mut(&to) {
            tracing::info!(
                id = self.id,
                to,
                index = meta.last_index,
                "sending snapshot"
            );
            pr.become_snapshot(meta);
            self.send_snapshot_chunk(to);
        }
    }

    fn send_snapshot_chunk(&mut self, to: NodeId) {
        let Some(pr) = self.progress.get(&to) else {
            return;
        };
        let ProgressState::Snapshot(t) = &pr.state else {
            return;
        };
        let (meta, offset) = (t.meta.clone(), t.offset);
        let chunk =
            self.log
                .storage
                .snapshot_chunk(&meta, offset, self.config.snapshot_chunk_bytes);
        let (data, done) = match chunk {
            Ok(c) => c,
            Err(e @ StorageError::Fatal(_)) => {
                self.log.stored::<()>(Err(e));
                return;
            }
            Err(e) => {
                let newest = self.log.storage.snapshot_meta();
                tracing::info!(
                    id = self.id,
                    to,
                    "snapshot {} unreadable ({e})",
                    meta.last_index
                );
                if newest != meta && newest.last_index > 0 {
                    // Replaced by a newer snapshot: start over with that one.
                    if let Some(pr) = self.progress.get_mut(&to) {
                        pr.become_snapshot(newest);
                    }
                    self.send_snapshot_chunk(to);
                }
                return;
            }
        };
        let now = self.now;
        if let Some(pr) = self.progress.get_mut(&to) {
            if let ProgressState::Snapshot(t) = &mut pr.state {
                t.in_flight_since = Some(now);
                t.sent_end = offset + data.len() as u64;
                t.done_sent = done;
            }
        }
        let msg = Message::InstallSnapshot {
            term: self.term,
            meta,
            offset,
            data,
            done,
        };
        self.send(to, msg, Send::Now);
    }

    fn handle_snapshot_response(
        &mut self,
        from: NodeId,
        snapshot_last_index: u64,
        next_offset: u64,
        success: bool,
    ) {
        let now = self.now;
        let Some(pr) = self.progress.get_mut(&from) else {
            return;
        };
        pr.last_heard_tick = now;
        let ProgressState::Snapshot(t) = &mut pr.state else {
            return;
        };
        if t.meta.last_index != snapshot_last_index {
            return;
        }
        if success && t.done_sent && next_offset == t.sent_end {
            // Installed: the follower's log now starts after the snapshot.
            pr.on_success(snapshot_last_index, now);
            pr.become_replicate(now);
            if pr.match_index > 0 {
                self.maybe_commit();
            }
            self.send_appends_to(from);
            return;
        }
        if !success || next_offset == t.sent_end {
            t.offset = next_offset;
            t.done_sent = false;
            self.send_snapshot_chunk(from);
        }
    }
}

/// The latest configuration in the log, else `base`.
fn restore_membership<S: LogStorage>(log: &RaftLog<S>, base: Membership) -> MembershipLog {
    let mut membership = MembershipLog::new(base);
    let mut next = log.first_index();
    let end = log.last_index() + 1;
    while next < end {
        let Some(batch) = log.entries(next, end, 16 << 20) else {
            break;
        };
        let Some(last) = batch.last() else {
            break;
        };
        next = last.index + 1;
        for entry in batch.iter().filter(|e| e.kind == EntryKind::Membership) {
            match membership::decode_membership(&entry.payload) {
                Ok(m) => membership.on_append(entry.index, m),
                Err(e) => tracing::error!(index = entry.index, "{e}; configuration ignored"),
            }
        }
    }
    membership
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::test_cluster::{ent, member, storage_with, test_config, voters, Cluster};
    use crate::raft::MemStorage;

    fn env(from: NodeId, to: NodeId, message: Message) -> Envelope {
        Envelope { from, to, message }
    }

    /// A core whose storage holds entries of the given terms.
    fn core_with(
        id: NodeId,
        peers: &[NodeId],
        terms: &[u64],
        term: u64,
        tweak: impl Fn(&mut Config),
    ) -> RaftCore<MemStorage> {
        let storage = storage_with(terms);
        let mut config = test_config(id);
        tweak(&mut config);
        let hs = HardState {
            term,
            voted_for: None,
        };
        RaftCore::new(config, storage, hs, voters(peers))
    }

    /// Takes a Ready and stores its entries (without reporting them durable).
    fn take(core: &mut RaftCore<MemStorage>) -> Ready {
        let rd = core.take_ready();
        core.storage_mut().append(&rd.entries);
        rd
    }

    fn tick_until(core: &mut RaftCore<MemStorage>, role: Role) {
        for _ in 0..100 {
            if core.status().role == role {
                return;
            }
            core.tick();
        }
        panic!("never became {role:?}: {:?}", core.status());
    }

    /// Elects node 1 of `peers` by hand (PreVote off), persisting instantly.
    fn leader_by_hand(peers: &[NodeId], terms: &[u64], term: u64) -> RaftCore<MemStorage> {
        let mut core = core_with(1, peers, terms, term, |c| c.pre_vote = false);
        tick_until(&mut core, Role::Candidate);
        take(&mut core);
        for &p in &peers[1..] {
            let t = core.status().term;
            core.step(env(
                p,
                1,
                Message::RequestVoteResponse {
                    term: t,
                    granted: true,
                },
            ));
        }
        assert_eq!(core.status().role, Role::Leader);
        core
    }

    fn append_response(term: u64, match_index: u64) -> Message {
        Message::AppendEntriesResponse {
            term,
            success: true,
            match_index,
            conflict_term: 0,
            conflict_index: 0,
            read_ctx: 0,
        }
    }

    // ---- Elections ----

    #[test]
    fn candidate_steps_down_on_higher_term() {
        let mut core = core_with(1, &[1, 2, 3], &[], 0, |c| c.pre_vote = false);
        tick_until(&mut core, Role::Candidate);
        assert_eq!(core.status().term, 1);
        take(&mut core);
        let ae = Message::AppendEntries {
            term: 5,
            prev_log_index: 0,
            prev_log_term: 0,
            entries: vec![],
            leader_commit: 0,
            read_ctx: 0,
        };
        core.step(env(2, 1, ae));
        let st = core.status();
        assert_eq!(
            (st.role, st.term, st.leader_id),
            (Role::Follower, 5, Some(2))
        );
        let rd = take(&mut core);
        assert_eq!(
            rd.hard_state,
            Some(HardState {
                term: 5,
                voted_for: None
            })
        );
        assert_eq!(
            rd.persisted_messages,
            vec![env(1, 2, append_response(5, 0))]
        );
    }

    #[test]
    fn candidate_persists_own_vote_before_requesting_votes() {
        let mut core = core_with(1, &[1, 2, 3], &[1], 1, |c| c.pre_vote = false);
        tick_until(&mut core, Role::Candidate);
        let rd = take(&mut core);
        assert_eq!(
            rd.hard_state,
            Some(HardState {
                term: 2,
                voted_for: Some(1)
            })
        );
        assert!(rd.messages.is_empty());
        let rv = |to| {
            env(
                1,
                to,
                Message::RequestVote {
                    term: 2,
                    last_log_index: 1,
                    last_log_term: 1,
                    leadership_transfer: false,
                },
            )
        };
        assert_eq!(rd.persisted_messages, vec![rv(2), rv(3)]);
    }

    #[test]
    fn vote_response_waits_for_persisted_vote() {
        let mut core = core_with(2, &[1, 2, 3], &[1], 1, |_| {});
        let rv = Message::RequestVote {
            term: 2,
            last_log_index: 1,
            last_log_term: 1,
            leadership_transfer: false,
        };
        core.step(env(1, 2, rv));
        let rd = take(&mut core);
        assert_eq!(
            rd.hard_state,
            Some(HardState {
                term: 2,
                voted_for: Some(1)
            })
        );
        assert!(rd.messages.is_empty());
        let granted = Message::RequestVoteResponse {
            term: 2,
            granted: true,
        };
        assert_eq!(rd.persisted_messages, vec![env(2, 1, granted)]);
    }

    #[test]
    fn voter_rejects_candidate_with_stale_log() {
        let mut core = core_with(2, &[1, 2, 3], &[1, 2], 2, |_| {});
        let rv = Message::RequestVote {
            term: 3,
            last_log_index: 5,
            last_log_term: 1,
            leadership_transfer: false,
        };
        core.step(env(1, 2, rv));
        let rd = take(&mut core);
        assert_eq!(
            rd.hard_state,
            Some(HardState {
                term: 3,
                voted_for: None
            })
        );
        let refused = Message::RequestVoteResponse {
            term: 3,
            granted: false,
        };
        assert_eq!(rd.persisted_messages, vec![env(2, 1, refused)]);
    }

    #[test]
    fn refused_vote_request_does_not_reset_election_timer() {
        let mut core = core_with(2, &[1, 2, 3], &[1, 2], 2, |c| c.pre_vote = false);
        for _ in 0..5 {
            core.tick();
        }
        let timeout = core.randomized_election_timeout;
        let rv = Message::RequestVote {
            term: 3,
            last_log_index: 1,
            last_log_term: 1,
            leadership_transfer: false,
        };
        core.step(env(1, 2, rv));
        assert_eq!(core.status().term, 3);
        assert_eq!(
            (core.election_elapsed, core.randomized_election_timeout),
            (5, timeout),
            "Raft Figure 2: only a granted vote or the leader resets the timer"
        );
    }

    #[test]
    fn voter_grants_only_one_candidate_per_term() {
        let mut core = core_with(3, &[1, 2, 3], &[], 0, |_| {});
        let rv = Message::RequestVote {
            term: 1,
            last_log_index: 0,
            last_log_term: 0,
            leadership_transfer: false,
        };
        core.step(env(1, 3, rv.clone()));
        core.step(env(2, 3, rv));
        let rd = take(&mut core);
        let answers: Vec<bool> = rd
            .persisted_messages
            .iter()
            .map(|m| {
                matches!(
                    m.message,
                    Message::RequestVoteResponse { granted: true, .. }
                )
            })
            .collect();
        assert_eq!(answers, vec![true, false]);
    }

    #[test]
    fn prevote_does_not_change_term_or_vote() {
        let mut core = core_with(1, &[1, 2, 3], &[1], 1, |_| {});
        tick_until(&mut core, Role::PreCandidate);
        let rd = take(&mut core);
        assert_eq!(rd.hard_state, None);
        let pv = |to| {
            env(
                1,
                to,
                Message::PreVote {
                    term: 2,
                    last_log_index: 1,
                    last_log_term: 1,
                },
            )
        };
        assert_eq!(rd.messages, vec![pv(2), pv(3)]);
        assert!(rd.persisted_messages.is_empty());
        core.step(env(
            2,
            1,
            Message::PreVoteResponse {
                term: 2,
                granted: true,
            },
        ));
        assert_eq!(core.status().role, Role::Candidate);
        assert_eq!(core.status().term, 2);
    }

    #[test]
    fn prevote_does_not_disrupt_stable_leader() {
        let mut c = Cluster::new(&[1, 2, 3], |_| {});
        c.elect(1);
        let term = c.node(1).status().term;
        c.isolate(3);
        for _ in 0..200 {
            c.node_mut(3).tick();
            c.settle();
        }
        assert_eq!(
            c.node(3).status().term,
            term,
            "pre-votes must not raise the term"
        );
        c.heal();
        c.tick_all(50);
        assert_eq!(c.leader(), Some(1));
        assert_eq!(c.node(1).status().term, term);
        assert_eq!(c.node(3).status().leader_id, Some(1));
    }

    #[test]
    fn follower_ignores_votes_within_lease_unless_transfer() {
        let mut c = Cluster::new(&[1, 2, 3], |_| {});
        c.elect(1);
        let term = c.node(1).status().term;
        let rv = |transfer| Message::RequestVote {
            term: term + 1,
            last_log_index: 100,
            last_log_term: term,
            leadership_transfer: transfer,
        };
        c.node_mut(2).step(env(3, 2, rv(false)));
        assert_eq!(c.node(2).status().term, term);
        assert!(!c.node(2).has_ready());
        c.node_mut(2).step(env(3, 2, rv(true)));
        assert_eq!(c.node(2).status().term, term + 1);
        assert_eq!(c.node(2).hard_state().voted_for, Some(3));
    }

    /// Thesis §4.2.3, the mechanism behind simulator seeds 8888000178, 5555022801 and
    /// 5555089955: a server removed while partitioned never receives the entry that removes
    /// it (the leader stops replicating to it), so it keeps timing out and asking for votes
    /// with ever higher terms. Without PreVote and CheckQuorum nothing stopped those
    /// requests from deposing every leader the cluster elected.
    #[test]
    fn removed_server_does_not_disrupt_leader_without_check_quorum() {
        let mut c = Cluster::new(&[1, 2, 3], |cfg| {
            cfg.pre_vote = false;
            cfg.check_quorum = false;
        });
        c.elect(1);
        c.tick_all(2);
        c.isolate(3);
        let (removal, _) = c
            .node_mut(1)
            .propose_membership_change(MembershipChange::Remove { id: 3 })
            .unwrap();
        c.settle();
        c.tick_all(2);
        assert!(c.node(1).status().commit_index >= removal);
        c.heal();
        let term = c.node(1).status().term;
        let term_3 = c.node(3).status().term;
        c.tick_all(200);
        assert!(
            c.node(3).status().term > term_3 + 5,
            "the removed server keeps campaigning: {:?}",
            c.node(3).status()
        );
        assert_eq!(c.leader(), Some(1));
        assert_eq!(c.node(1).status().term, term, "leader deposed");
        assert_eq!(c.node(2).status().term, term, "follower disrupted");
        c.propose(1, b"x");
        c.tick_all(2);
        assert_eq!(c.applied_payloads(2), vec![Bytes::from_static(b"x")]);
    }

    /// The other side of §4.2.3 without CheckQuorum: a leader that no longer hears from a
    /// quorum holds no lease, so a candidate's higher term still deposes it (else a leader
    /// cut off behind a one-way partition would keep the cluster from electing another).
    #[test]
    fn leader_without_quorum_contact_yields_to_higher_term_vote() {
        let mut c = Cluster::new(&[1, 2, 3], |cfg| {
            cfg.pre_vote = false;
            cfg.check_quorum = false;
        });
        c.elect(1);
        let term = c.node(1).status().term;
        let rv = Message::RequestVote {
            term: term + 1,
            last_log_index: 100,
            last_log_term: term,
            leadership_transfer: false,
        };
        c.node_mut(1).step(env(2, 1, rv.clone()));
        assert_eq!(c.node(1).status().role, Role::Leader, "within its lease");
        c.isolate(1);
        for _ in 0..20 {
            c.node_mut(1).tick();
            c.settle();
        }
        assert_eq!(c.node(1).status().role, Role::Leader, "no CheckQuorum");
        c.node_mut(1).step(env(2, 1, rv));
        assert_eq!(c.node(1).status().role, Role::Follower);
        assert_eq!(c.node(1).status().term, term + 1);
    }

    #[test]
    fn check_quorum_leader_steps_down() {
        let mut c = Cluster::new(&[1, 2, 3], |_| {});
        c.elect(1);
        c.isolate(1);
        for _ in 0..19 {
            c.node_mut(1).tick();
        }
        assert_eq!(c.node(1).status().role, Role::Leader);
        for _ in 0..2 {
            c.node_mut(1).tick();
        }
        assert_eq!(c.node(1).status().role, Role::Follower);
    }

    #[test]
    fn cluster_elects_one_leader_and_replicates() {
        let mut c = Cluster::new(&[1, 2, 3], |_| {});
        c.tick_all(40);
        let leader = c.leader().expect("a leader");
        let (index, _) = c.propose(leader, b"x");
        c.tick_all(3);
        for id in [1, 2, 3] {
            assert_eq!(
                c.applied_payloads(id),
                vec![Bytes::from_static(b"x")],
                "node {id}"
            );
            assert_eq!(c.node(id).status().commit_index, index);
        }
    }

    // ---- Replication ----

    #[test]
    fn follower_rejects_append_with_mismatched_prev() {
        let mut core = core_with(2, &[1, 2, 3], &[1, 1, 1], 1, |_| {});
        let ae = Message::AppendEntries {
            term: 2,
            prev_log_index: 3,
            prev_log_term: 2,
            entries: vec![ent(4, 2)],
            leader_commit: 3,
            read_ctx: 7,
        };
        core.step(env(1, 2, ae));
        let rd = take(&mut core);
        assert!(rd.entries.is_empty());
        let reject = Message::AppendEntriesResponse {
            term: 2,
            success: false,
            match_index: 3,
            conflict_term: 1,
            conflict_index: 1,
            read_ctx: 7,
        };
        assert_eq!(rd.persisted_messages, vec![env(2, 1, reject)]);
        assert_eq!(rd.commit_index, 0);
    }

    #[test]
    fn follower_with_short_log_reports_its_end() {
        let mut core = core_with(2, &[1, 2, 3], &[1], 1, |_| {});
        let ae = Message::AppendEntries {
            term: 1,
            prev_log_index: 5,
            prev_log_term: 1,
            entries: vec![],
            leader_commit: 0,
            read_ctx: 0,
        };
        core.step(env(1, 2, ae));
        let rd = take(&mut core);
        let reject = Message::AppendEntriesResponse {
            term: 1,
            success: false,
            match_index: 1,
            conflict_term: 0,
            conflict_index: 2,
            read_ctx: 0,
        };
        // Same term, nothing to persist: the rejection goes out at once.
        assert_eq!(rd.messages, vec![env(2, 1, reject)]);
    }

    #[test]
    fn follower_truncates_conflicting_suffix_and_commits_verified_prefix() {
        let mut core = core_with(2, &[1, 2, 3], &[1, 1, 1, 1], 1, |_| {});
        let ae = Message::AppendEntries {
            term: 2,
            prev_log_index: 2,
            prev_log_term: 1,
            entries: vec![ent(3, 2)],
            leader_commit: 10,
            read_ctx: 0,
        };
        core.step(env(1, 2, ae));
        let rd = take(&mut core);
        assert_eq!(rd.entries, vec![ent(3, 2)]);
        assert_eq!(rd.commit_index, 3);
        // Entry 3 is not durable yet: nothing beyond 2 is applied.
        let applied: Vec<u64> = rd.committed_entries.iter().map(|e| e.index).collect();
        assert_eq!(applied, vec![1, 2]);
        assert_eq!(
            rd.persisted_messages,
            vec![env(2, 1, append_response(2, 3))]
        );
        core.storage_mut().append(&rd.entries);
        core.on_persisted(3, 2);
        core.on_applied(2);
        let rd = take(&mut core);
        assert_eq!(rd.committed_entries, vec![ent(3, 2)]);
        assert_eq!(core.storage().last_index(), 3);
    }

    #[test]
    fn leader_commits_only_current_term_entries_by_count() {
        // Raft §5.4.2 / Figure 8: entry 2 of term 1 on a majority is not committed by
        // counting; it commits with the leader's own entry 3.
        let mut core = leader_by_hand(&[1, 2, 3], &[1, 1], 1);
        assert_eq!(core.status().term, 2);
        take(&mut core);
        core.step(env(2, 1, append_response(2, 2)));
        assert_eq!(core.status().commit_index, 0);
        core.on_persisted(3, 2);
        assert_eq!(core.status().commit_index, 0);
        core.step(env(2, 1, append_response(2, 3)));
        assert_eq!(core.status().commit_index, 3);
    }

    #[test]
    fn planted_commit_old_term_by_count_commits_earlier_term() {
        let mut core = core_with(1, &[1, 2, 3], &[1, 1], 1, |c| {
            c.pre_vote = false;
            c.planted_bug = Some(PlantedBug::CommitOldTermByCount);
        });
        tick_until(&mut core, Role::Candidate);
        core.step(env(
            2,
            1,
            Message::RequestVoteResponse {
                term: 2,
                granted: true,
            },
        ));
        take(&mut core);
        core.step(env(2, 1, append_response(2, 2)));
        assert_eq!(core.status().commit_index, 2);
    }

    #[test]
    fn leader_sends_appends_before_its_own_write_is_durable() {
        let mut core = leader_by_hand(&[1, 2, 3], &[], 0);
        let rd = take(&mut core);
        // The no-op goes to the followers in `messages` while the leader persists it.
        assert_eq!(rd.entries.len(), 1);
        assert_eq!(rd.entries[0].kind, EntryKind::Noop);
        let sent: Vec<NodeId> = rd.messages.iter().map(|m| m.to).collect();
        assert_eq!(sent, vec![2, 3]);
        assert!(rd.messages.iter().all(
            |m| matches!(&m.message, Message::AppendEntries { entries, .. } if entries.len() == 1)
        ));
    }

    #[test]
    fn leader_counts_itself_only_up_to_persisted_index() {
        let mut core = leader_by_hand(&[1, 2, 3, 4, 5], &[], 0);
        take(&mut core);
        core.step(env(2, 1, append_response(1, 1)));
        core.step(env(3, 1, append_response(1, 1)));
        // Two followers + an unpersisted leader are not three copies.
        assert_eq!(core.status().commit_index, 0);
        core.on_persisted(1, 1);
        assert_eq!(core.status().commit_index, 1);
    }

    #[test]
    fn heartbeat_carries_min_of_commit_and_match() {
        let mut core = leader_by_hand(&[1, 2, 3], &[], 0);
        take(&mut core);
        core.on_persisted(1, 1);
        core.step(env(2, 1, append_response(1, 1)));
        assert_eq!(core.status().commit_index, 1);
        take(&mut core);
        for _ in 0..2 {
            core.tick();
        }
        let rd = take(&mut core);
        let to3 = rd
            .messages
            .iter()
            .find(|m| m.to == 3)
            .expect("heartbeat to 3");
        match &to3.message {
            Message::AppendEntries {
                prev_log_index,
                leader_commit,
                entries,
                ..
            } => {
                assert!(entries.is_empty() || *prev_log_index == 0);
                assert_eq!(*leader_commit, 0, "node 3 has not verified entry 1");
            }
            m => panic!("unexpected {m:?}"),
        }
    }

    #[test]
    fn flow_control_limits_inflight_messages() {
        let mut core = leader_by_hand(&[1, 2], &[], 0);
        take(&mut core);
        core.step(env(2, 1, append_response(1, 1)));
        take(&mut core);
        // Now replicating; window of 2 messages of at most one 100-byte entry each.
        core.config.max_inflight_msgs = 2;
        core.config.max_msg_bytes = 100;
        for _ in 0..5 {
            core.propose(Bytes::from(vec![0u8; 100])).unwrap();
        }
        let rd = take(&mut core);
        let appends: Vec<usize> = rd
            .messages
            .iter()
            .filter_map(|m| match &m.message {
                Message::AppendEntries { entries, .. } if !entries.is_empty() => {
                    Some(entries.len())
                }
                _ => None,
            })
            .collect();
        assert_eq!(appends, vec![1, 1]);
        core.step(env(2, 1, append_response(1, 2)));
        let rd = take(&mut core);
        assert_eq!(rd.messages.len(), 1, "one slot freed, one more message");
    }

    #[test]
    fn fast_backtracking_uses_conflict_term() {
        // Leader: terms [1,1,2,2,3] + its no-op of term 4 at 6. Follower: term 2 up to 7.
        let mut core = leader_by_hand(&[1, 2], &[1, 1, 2, 2, 3], 3);
        let rd = take(&mut core);
        assert!(matches!(
            rd.messages[0].message,
            Message::AppendEntries {
                prev_log_index: 5,
                prev_log_term: 3,
                ..
            }
        ));
        let reject = Message::AppendEntriesResponse {
            term: 4,
            success: false,
            match_index: 7,
            conflict_term: 2,
            conflict_index: 3,
            read_ctx: 0,
        };
        core.step(env(2, 1, reject));
        let rd = take(&mut core);
        match &rd.messages[..] {
            [Envelope {
                message:
                    Message::AppendEntries {
                        prev_log_index,
                        prev_log_term,
                        ..
                    },
                ..
            }] => {
                // The leader's last entry of term 2 is 4: probe right after it, not at 3.
                assert_eq!((*prev_log_index, *prev_log_term), (4, 2));
            }
            other => panic!("expected one probe, got {other:?}"),
        }
    }

    #[test]
    fn lagging_follower_catches_up_after_partition() {
        let mut c = Cluster::new(&[1, 2, 3], |_| {});
        c.elect(1);
        for _ in 0..5 {
            c.propose(1, b"a");
        }
        c.isolate(3);
        for _ in 0..50 {
            c.node_mut(1).propose(Bytes::from_static(b"b")).unwrap();
        }
        c.settle();
        c.heal();
        c.tick_all(10);
        assert_eq!(c.applied_payloads(3).len(), 55);
        assert_eq!(c.applied[&3], c.applied[&1]);
    }

    #[test]
    fn committed_entries_are_handed_out_once_in_order_within_max_apply_bytes() {
        let mut c = Cluster::new(&[1], |cfg| cfg.max_apply_bytes = 70);
        c.elect(1);
        for _ in 0..10 {
            c.node_mut(1)
                .propose(Bytes::from_static(b"0123456789"))
                .unwrap();
        }
        let rd = c.node_mut(1).take_ready();
        assert!(rd.committed_entries.is_empty(), "nothing durable yet");
        c.node_mut(1).storage_mut().append(&rd.entries);
        c.node_mut(1).on_persisted(11, 1);
        let rd = c.node_mut(1).take_ready();
        let idx: Vec<u64> = rd.committed_entries.iter().map(|e| e.index).collect();
        assert_eq!(idx, vec![2, 3]);
        let rd = c.node_mut(1).take_ready();
        let idx: Vec<u64> = rd.committed_entries.iter().map(|e| e.index).collect();
        assert_eq!(idx, vec![4, 5]);
    }

    #[test]
    fn heartbeat_response_does_not_wait_for_persistence() {
        let mut core = core_with(2, &[1, 2, 3], &[1, 1], 1, |_| {});
        let ae = |entries: Vec<Entry>, prev: u64, ctx| Message::AppendEntries {
            term: 1,
            prev_log_index: prev,
            prev_log_term: 1,
            entries,
            leader_commit: 2,
            read_ctx: ctx,
        };
        core.step(env(1, 2, ae(vec![ent(3, 1)], 2, 1)));
        let rd = core.take_ready();
        assert_eq!(rd.entries, vec![ent(3, 1)]);
        assert!(
            rd.messages.is_empty(),
            "acknowledging entry 3 waits for its write"
        );
        // A heartbeat while entry 3 is still being written: answered at once, claiming
        // only the durable prefix.
        core.step(env(1, 2, ae(vec![], 3, 2)));
        let rd = core.take_ready();
        let now = Message::AppendEntriesResponse {
            term: 1,
            success: true,
            match_index: 2,
            conflict_term: 0,
            conflict_index: 0,
            read_ctx: 2,
        };
        assert_eq!(rd.messages, vec![env(2, 1, now)]);
        assert!(rd.persisted_messages.is_empty());
    }

    #[test]
    fn lease_reads_stop_once_timeout_now_is_sent() {
        let mut c = Cluster::new(&[1, 2, 3], |_| {});
        c.elect(1);
        c.tick_all(2);
        c.cut.insert((1, 3));
        c.node_mut(1).transfer_leadership(3).unwrap();
        c.tick_all(21);
        assert_eq!(c.leader(), Some(1));
        c.node_mut(1).read_index(77, ReadMode::Lease).unwrap();
        assert!(c.node_mut(1).take_ready().read_states.is_empty());
    }

    // ---- Reads ----

    #[test]
    fn read_index_waits_for_quorum() {
        let mut c = Cluster::new(&[1, 2, 3], |_| {});
        c.elect(1);
        c.propose(1, b"x");
        let commit = c.node(1).status().commit_index;
        c.cut.insert((2, 1));
        c.cut.insert((3, 1));
        c.node_mut(1)
            .read_index(42, ReadMode::Linearizable)
            .unwrap();
        c.settle();
        assert!(c.read_states[&1].is_empty());
        c.cut.remove(&(2, 1));
        c.node_mut(1).tick();
        c.node_mut(1).tick();
        c.settle();
        assert_eq!(
            c.read_states[&1],
            vec![ReadState {
                ctx: 42,
                index: commit
            }]
        );
    }

    #[test]
    fn read_index_waits_for_commit_of_own_term() {
        let mut core = leader_by_hand(&[1, 2, 3], &[], 0);
        core.read_index(7, ReadMode::Linearizable).unwrap();
        let rd = take(&mut core);
        assert!(rd.read_states.is_empty());
        core.on_persisted(1, 1);
        core.step(env(2, 1, append_response(1, 1)));
        let rd = take(&mut core);
        assert!(
            rd.read_states.is_empty(),
            "needs a quorum round after the commit"
        );
        let round = rd
            .messages
            .iter()
            .find_map(|m| match m.message {
                Message::AppendEntries { read_ctx, .. } if m.to == 3 => Some(read_ctx),
                _ => None,
            })
            .expect("heartbeat round");
        let ack = Message::AppendEntriesResponse {
            term: 1,
            success: true,
            match_index: 0,
            conflict_term: 0,
            conflict_index: 0,
            read_ctx: round,
        };
        core.step(env(3, 1, ack));
        assert_eq!(
            take(&mut core).read_states,
            vec![ReadState { ctx: 7, index: 1 }]
        );
    }

    #[test]
    fn planted_read_index_without_quorum_answers_at_once() {
        let mut c = Cluster::new(&[1, 2, 3], |cfg| {
            cfg.planted_bug = Some(PlantedBug::ReadIndexWithoutQuorum)
        });
        c.elect(1);
        c.isolate(1);
        c.node_mut(1).read_index(1, ReadMode::Linearizable).unwrap();
        c.settle();
        assert_eq!(c.read_states[&1].len(), 1);
    }

    #[test]
    fn lease_read_is_served_while_quorum_recently_acked() {
        let mut c = Cluster::new(&[1, 2, 3], |_| {});
        c.elect(1);
        c.tick_all(2);
        c.node_mut(1).read_index(5, ReadMode::Lease).unwrap();
        assert_eq!(c.node_mut(1).take_ready().read_states.len(), 1);
        c.isolate(1);
        for _ in 0..10 {
            c.node_mut(1).tick();
        }
        c.settle();
        c.node_mut(1).read_index(6, ReadMode::Lease).unwrap();
        c.settle();
        assert!(
            !c.read_states[&1].iter().any(|r| r.ctx == 6),
            "lease expired: the read needs a quorum round"
        );
    }

    /// The node driver's contract (issue 11): after a stall it feeds every missed tick
    /// before any request. Those ticks alone must end the lease (and, past an election
    /// timeout, the leadership through CheckQuorum, thesis §6.2) before a lease read is
    /// answered, since the others may have elected a new leader meanwhile.
    #[test]
    fn lease_read_after_stall_is_not_served_once_missed_ticks_are_fed() {
        for stalled_ticks in [10, 21] {
            let mut c = Cluster::new(&[1, 2, 3], |_| {});
            c.elect(1);
            c.tick_all(2);
            c.node_mut(1).read_index(5, ReadMode::Lease).unwrap();
            assert_eq!(c.node_mut(1).take_ready().read_states.len(), 1);
            let term = c.node(1).status().term;
            c.isolate(1);
            for _ in 0..stalled_ticks {
                for id in [2, 3] {
                    c.node_mut(id).tick();
                }
                c.settle();
            }
            if stalled_ticks > 20 {
                assert!(
                    [2, 3].iter().any(|&id| c.node(id).status().term > term),
                    "past the longest election timeout the others elect anew"
                );
            }
            for _ in 0..stalled_ticks {
                c.node_mut(1).tick();
            }
            c.node_mut(1).read_index(6, ReadMode::Lease).unwrap();
            let rd = c.node_mut(1).take_ready();
            assert!(
                rd.read_states.is_empty(),
                "stale lease read after {stalled_ticks} missed ticks"
            );
            if stalled_ticks > 20 {
                assert_ne!(c.node(1).status().role, Role::Leader, "CheckQuorum");
            }
        }
    }

    #[test]
    fn follower_read_fails_with_leader_hint() {
        let mut c = Cluster::new(&[1, 2, 3], |_| {});
        c.elect(1);
        c.node_mut(2).read_index(9, ReadMode::Linearizable).unwrap();
        let rd = c.node_mut(2).take_ready();
        assert_eq!(
            rd.failed_reads,
            vec![FailedRead {
                ctx: 9,
                leader_hint: Some(1)
            }]
        );
    }

    #[test]
    fn pending_reads_fail_when_leadership_is_lost() {
        let mut c = Cluster::new(&[1, 2, 3], |_| {});
        c.elect(1);
        c.isolate(1);
        c.node_mut(1).read_index(3, ReadMode::Linearizable).unwrap();
        c.settle();
        c.tick_all(60);
        assert_ne!(c.node(1).status().role, Role::Leader);
        assert_eq!(
            c.failed_reads[&1].iter().map(|f| f.ctx).collect::<Vec<_>>(),
            vec![3]
        );
        assert!(c.read_states[&1].is_empty());
    }

    #[test]
    fn single_voter_commits_after_persist_and_reads_at_once() {
        let mut c = Cluster::new(&[1], |_| {});
        c.elect(1);
        c.propose(1, b"solo");
        assert_eq!(c.applied_payloads(1), vec![Bytes::from_static(b"solo")]);
        c.node_mut(1).read_index(1, ReadMode::Linearizable).unwrap();
        let rd = c.node_mut(1).take_ready();
        assert_eq!(rd.read_states, vec![ReadState { ctx: 1, index: 2 }]);
    }

    // ---- Snapshots ----

    #[test]
    fn lagging_follower_catches_up_by_snapshot_in_chunks() {
        let mut c = Cluster::new(&[1, 2, 3], |cfg| cfg.snapshot_chunk_bytes = 4);
        c.elect(1);
        c.isolate(3);
        for _ in 0..10 {
            c.propose(1, b"v");
        }
        let applied = c.applied_index[&1];
        let meta = c.snapshot(1, Bytes::from_static(b"0123456789"), applied);
        assert!(c.node(1).storage().first_index() > 2);
        c.heal();
        c.tick_all(6);
        let chunks: Vec<u64> = c
            .sent
            .iter()
            .filter_map(|m| match &m.message {
                Message::InstallSnapshot { offset, .. } if m.to == 3 => Some(*offset),
                _ => None,
            })
            .collect();
        assert_eq!(chunks, vec![0, 4, 8]);
        assert_eq!(c.node(3).storage().snapshot_meta(), meta);
        assert_eq!(
            c.node(3).storage().snapshot_data(),
            &Bytes::from_static(b"0123456789")
        );
        c.propose(1, b"after");
        c.tick_all(2);
        assert_eq!(c.applied_index[&3], c.applied_index[&1]);
        assert_eq!(c.applied_payloads(3), vec![Bytes::from_static(b"after")]);
    }

    #[test]
    fn follower_rejects_snapshot_chunk_out_of_order() {
        let mut core = core_with(2, &[1, 2, 3], &[], 0, |_| {});
        let meta = SnapshotMeta {
            last_index: 5,
            last_term: 1,
            membership: voters(&[1, 2, 3]),
        };
        let chunk = |offset, data: &'static [u8], done| Message::InstallSnapshot {
            term: 1,
            meta: meta.clone(),
            offset,
            data: Bytes::from_static(data),
            done,
        };
        core.step(env(1, 2, chunk(0, b"ab", false)));
        let rd = take(&mut core);
        assert_eq!(rd.snapshot_chunk.as_ref().map(|c| c.offset), Some(0));
        core.step(env(1, 2, chunk(4, b"ef", true)));
        let rd = take(&mut core);
        assert!(rd.snapshot_chunk.is_none());
        let expect = Message::InstallSnapshotResponse {
            term: 1,
            snapshot_last_index: 5,
            next_offset: 2,
            success: false,
        };
        assert_eq!(rd.persisted_messages, vec![env(2, 1, expect)]);
        core.step(env(1, 2, chunk(2, b"cd", true)));
        let rd = take(&mut core);
        assert!(rd.snapshot_chunk.unwrap().done);
        // Installed only once the driver reports it durable (issue 11, item 3).
        assert_eq!(rd.commit_index, 0);
        assert!(rd.committed_entries.is_empty());
    }

    #[test]
    fn stale_snapshot_is_ignored() {
        let mut core = core_with(2, &[1, 2, 3], &[1, 1, 1], 1, |_| {});
        let ae = Message::AppendEntries {
            term: 1,
            prev_log_index: 3,
            prev_log_term: 1,
            entries: vec![],
            leader_commit: 3,
            read_ctx: 0,
        };
        core.step(env(1, 2, ae));
        take(&mut core);
        let snap = Message::InstallSnapshot {
            term: 1,
            meta: SnapshotMeta {
                last_index: 2,
                last_term: 1,
                membership: voters(&[1, 2, 3]),
            },
            offset: 0,
            data: Bytes::from_static(b"x"),
            done: true,
        };
        core.step(env(1, 2, snap));
        let rd = take(&mut core);
        assert!(rd.snapshot_chunk.is_none());
        assert_eq!(
            rd.persisted_messages,
            vec![env(2, 1, append_response(1, 3))]
        );
    }

    #[test]
    fn snapshot_the_log_already_holds_only_advances_commit() {
        let mut core = core_with(2, &[1, 2, 3], &[1, 1, 1], 1, |_| {});
        let snap = Message::InstallSnapshot {
            term: 1,
            meta: SnapshotMeta {
                last_index: 2,
                last_term: 1,
                membership: voters(&[1, 2, 3]),
            },
            offset: 0,
            data: Bytes::from_static(b"x"),
            done: true,
        };
        core.step(env(1, 2, snap));
        let rd = take(&mut core);
        assert!(rd.snapshot_chunk.is_none());
        assert_eq!(rd.commit_index, 2);
        assert_eq!(rd.committed_entries, vec![ent(1, 1), ent(2, 1)]);
        assert_eq!(
            rd.persisted_messages,
            vec![env(2, 1, append_response(1, 2))]
        );
    }

    // ---- Membership and transfer ----

    fn add(id: NodeId, voter: bool) -> MembershipChange {
        MembershipChange::AddOrUpdate {
            id,
            member: member(voter),
        }
    }

    #[test]
    fn membership_change_waits_for_previous_to_commit() {
        let mut core = leader_by_hand(&[1, 2, 3], &[], 0);
        assert_eq!(
            core.propose_membership_change(add(4, false)),
            Err(ProposeError::MembershipChangePending),
            "before the leader's no-op commits"
        );
        take(&mut core);
        core.on_persisted(1, 1);
        core.step(env(2, 1, append_response(1, 1)));
        assert_eq!(core.propose_membership_change(add(4, false)), Ok((2, 1)));
        assert!(
            core.status().membership.members.contains_key(&4),
            "effective when appended"
        );
        assert_eq!(
            core.propose_membership_change(add(5, false)),
            Err(ProposeError::MembershipChangePending)
        );
    }

    #[test]
    fn planted_membership_change_before_own_term_commit_skips_the_wait() {
        let mut core = core_with(1, &[1, 2, 3], &[], 0, |c| {
            c.pre_vote = false;
            c.planted_bug = Some(PlantedBug::MembershipChangeBeforeOwnTermCommit);
        });
        tick_until(&mut core, Role::Candidate);
        take(&mut core);
        core.step(env(
            2,
            1,
            Message::RequestVoteResponse {
                term: 1,
                granted: true,
            },
        ));
        assert_eq!(core.status().role, Role::Leader);
        assert_eq!(core.propose_membership_change(add(4, false)), Ok((2, 1)));
    }

    #[test]
    fn learner_receives_log_but_does_not_count() {
        let mut c = Cluster::new(&[1, 2], |_| {});
        c.elect(1);
        let learner = RaftCore::new(
            test_config(3),
            MemStorage::new(),
            HardState::default(),
            Membership::default(),
        );
        c.add(3, learner);
        c.node_mut(1)
            .propose_membership_change(add(3, false))
            .unwrap();
        c.settle();
        c.tick_all(4);
        c.propose(1, b"x");
        c.tick_all(2);
        assert_eq!(c.applied_payloads(3), vec![Bytes::from_static(b"x")]);
        assert_eq!(c.node(3).status().role, Role::Learner);
        // With node 2 gone, the learner's copy must not make a quorum.
        c.isolate(2);
        let (index, _) = c.propose(1, b"y");
        c.tick_all(2);
        assert!(c.node(1).status().commit_index < index);
        for _ in 0..100 {
            c.node_mut(3).tick();
        }
        assert_eq!(
            c.node(3).status().role,
            Role::Learner,
            "learners never campaign"
        );
    }

    #[test]
    fn truncated_membership_entry_reverts_configuration() {
        let mut core = core_with(2, &[1, 2, 3], &[1], 1, |_| {});
        let mut m = voters(&[1, 2, 3]);
        m.members.insert(4, member(true));
        let cfg = Entry {
            index: 2,
            term: 1,
            kind: EntryKind::Membership,
            payload: membership::encode_membership(&m),
        };
        let ae = |term, prev_term, entries| Message::AppendEntries {
            term,
            prev_log_index: 1,
            prev_log_term: prev_term,
            entries,
            leader_commit: 0,
            read_ctx: 0,
        };
        core.step(env(1, 2, ae(1, 1, vec![cfg])));
        assert!(core.status().membership.is_voter(4));
        core.step(env(3, 2, ae(2, 1, vec![ent(2, 2)])));
        assert!(!core.status().membership.members.contains_key(&4));
    }

    #[test]
    fn member_progress_reports_match_index_and_silence_on_the_leader_only() {
        let mut c = Cluster::new(&[1, 2, 3], |_| {});
        c.elect(1);
        c.propose(1, b"a");
        c.settle();
        let last = c.node(1).status().last_log_index;
        let all = c.node(1).member_progress();
        assert_eq!(all.iter().map(|p| p.id).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert!(all.iter().all(|p| p.match_index == last), "{all:?}");
        assert!(c.node(1).has_committed_own_term());
        assert!(!c.node(1).membership_change_pending());
        assert!(
            c.node(2).member_progress().is_empty(),
            "followers have no view"
        );
        assert!(!c.node(2).has_committed_own_term());

        c.isolate(3);
        c.propose(1, b"b");
        for _ in 0..5 {
            c.node_mut(1).tick();
            c.settle();
        }
        let by_id = |id| {
            c.node(1)
                .member_progress()
                .into_iter()
                .find(|p| p.id == id)
                .unwrap()
        };
        assert_eq!(by_id(3).match_index, last, "node 3 missed the new entry");
        assert!(by_id(3).ticks_since_contact >= 5, "{:?}", by_id(3));
        assert_eq!(by_id(2).match_index, last + 1);
        assert!(by_id(2).ticks_since_contact < 5, "{:?}", by_id(2));
        assert_eq!(by_id(1).ticks_since_contact, 0);
    }

    #[test]
    fn removed_leader_steps_down_after_commit() {
        let mut c = Cluster::new(&[1, 2, 3], |_| {});
        c.elect(1);
        c.tick_all(2);
        let (index, _) = c
            .node_mut(1)
            .propose_membership_change(MembershipChange::Remove { id: 1 })
            .unwrap();
        assert_eq!(
            c.node(1).status().role,
            Role::Leader,
            "leads until the change commits"
        );
        c.settle();
        assert!(
            c.node(2).status().commit_index >= index || c.node(1).status().commit_index >= index
        );
        assert_ne!(c.node(1).status().role, Role::Leader);
        c.tick_all(60);
        let leader = c.leader().expect("2 or 3 leads");
        assert!(leader == 2 || leader == 3);
        assert_eq!(
            c.node(leader)
                .status()
                .membership
                .voters()
                .collect::<Vec<_>>(),
            vec![2, 3]
        );
    }

    #[test]
    fn leadership_transfer_hands_over() {
        let mut c = Cluster::new(&[1, 2, 3], |_| {});
        c.elect(1);
        c.isolate(3);
        c.propose(1, b"x");
        c.heal();
        c.node_mut(1).transfer_leadership(3).unwrap();
        assert_eq!(
            c.node_mut(1).propose(Bytes::from_static(b"y")),
            Err(ProposeError::TransferInProgress)
        );
        c.tick_all(6);
        assert_eq!(c.leader(), Some(3));
        assert_eq!(c.node(1).status().leader_id, Some(3));
    }

    #[test]
    fn old_leader_grants_vote_to_transfer_target_after_timeout_now() {
        // hashicorp/raft#487: the leader that sent TimeoutNow must not ignore the target's
        // RequestVote because of its own lease (thesis §3.10, §4.2.3).
        let mut c = Cluster::new(&[1, 2, 3], |_| {});
        c.elect(1);
        c.tick_all(2);
        let term = c.node(1).status().term;
        let last = c.node(1).status().last_log_index;
        c.node_mut(1).transfer_leadership(3).unwrap();
        let rd = c.node_mut(1).take_ready();
        assert!(
            rd.messages
                .iter()
                .any(|e| e.to == 3 && matches!(e.message, Message::TimeoutNow { .. })),
            "a caught-up target gets TimeoutNow at once: {:?}",
            rd.messages
        );
        let rv = Message::RequestVote {
            term: term + 1,
            last_log_index: last,
            last_log_term: term,
            leadership_transfer: true,
        };
        c.node_mut(1).step(env(3, 1, rv));
        assert_eq!(c.node(1).status().role, Role::Follower);
        assert_eq!(c.node(1).hard_state().voted_for, Some(3));
        let rd = take(c.node_mut(1));
        let granted = Message::RequestVoteResponse {
            term: term + 1,
            granted: true,
        };
        assert_eq!(rd.persisted_messages, vec![env(1, 3, granted)]);
    }

    #[test]
    fn old_leader_refuses_transfer_vote_with_stale_log() {
        // The lease is skipped for a transfer, the log check (§5.4.1) never is.
        let mut c = Cluster::new(&[1, 2, 3], |_| {});
        c.elect(1);
        c.tick_all(2);
        let term = c.node(1).status().term;
        let rv = Message::RequestVote {
            term: term + 1,
            last_log_index: 0,
            last_log_term: 0,
            leadership_transfer: true,
        };
        c.node_mut(1).step(env(3, 1, rv));
        assert_eq!(c.node(1).hard_state().voted_for, None);
    }

    #[test]
    fn most_caught_up_voter_prefers_the_highest_match_index() {
        let mut c = Cluster::new(&[1, 2, 3], |_| {});
        c.elect(1);
        c.tick_all(2);
        c.cut.insert((1, 2));
        c.propose(1, b"x");
        c.tick_all(1);
        assert_eq!(c.node(1).most_caught_up_voter(), Some(3));
        assert_eq!(
            c.node(3).most_caught_up_voter(),
            None,
            "only a leader knows"
        );
        c.cut.clear();
        c.tick_all(4);
        assert_eq!(
            c.node(1).most_caught_up_voter(),
            Some(2),
            "equally caught up: the lowest id"
        );
        // Node 2 goes silent; node 3 is as caught up but is the one still heard from.
        c.isolate(2);
        c.tick_all(25);
        assert_eq!(c.leader(), Some(1));
        assert_eq!(c.node(1).most_caught_up_voter(), Some(3));
    }

    #[test]
    fn most_caught_up_voter_is_never_a_learner() {
        // hashicorp/raft#398: a learner told to campaign would disrupt, never win.
        let mut c = Cluster::new(&[1, 2, 3], |_| {});
        c.elect(1);
        c.tick_all(2);
        let learner = RaftCore::new(
            test_config(4),
            MemStorage::new(),
            HardState::default(),
            Membership::default(),
        );
        c.add(4, learner);
        c.node_mut(1)
            .propose_membership_change(add(4, false))
            .unwrap();
        c.settle();
        c.tick_all(4);
        c.cut.insert((1, 2));
        c.cut.insert((1, 3));
        c.propose(1, b"x");
        c.tick_all(1);
        assert_eq!(c.node(1).most_caught_up_voter(), Some(2));
        assert!(c.node_mut(1).transfer_leadership(4).is_err());
    }

    #[test]
    fn transfer_target_is_reported_until_the_transfer_ends() {
        let mut c = Cluster::new(&[1, 2, 3], |_| {});
        c.elect(1);
        c.cut.insert((1, 3));
        c.node_mut(1).transfer_leadership(3).unwrap();
        assert_eq!(c.node(1).transfer_target(), Some(3));
        c.tick_all(21);
        assert_eq!(c.node(1).transfer_target(), None);
    }

    #[test]
    fn leadership_transfer_aborts_after_election_timeout() {
        let mut c = Cluster::new(&[1, 2, 3], |_| {});
        c.elect(1);
        c.cut.insert((1, 3));
        c.node_mut(1).transfer_leadership(3).unwrap();
        c.tick_all(21);
        assert_eq!(c.leader(), Some(1));
        c.cut.clear();
        assert!(c.node_mut(1).propose(Bytes::from_static(b"y")).is_ok());
    }

    #[test]
    fn restart_recovers_membership_from_log_and_snapshot() {
        let mut c = Cluster::new(&[1, 2, 3], |_| {});
        c.elect(1);
        c.tick_all(2);
        c.node_mut(1)
            .propose_membership_change(add(4, false))
            .unwrap();
        c.settle();
        c.restart(2, voters(&[1, 2, 3]));
        assert!(c.node(2).status().membership.members.contains_key(&4));
        let applied = c.applied_index[&1];
        c.snapshot(1, Bytes::from_static(b"s"), applied);
        c.restart(1, voters(&[1, 2, 3]));
        let st = c.node(1).status();
        assert!(st.membership.members.contains_key(&4));
        assert_eq!((st.commit_index, st.applied_index), (applied, applied));
    }

    #[test]
    fn planted_vote_without_log_check_grants_stale_candidate() {
        let mut core = core_with(2, &[1, 2, 3], &[1, 2], 2, |c| {
            c.planted_bug = Some(PlantedBug::VoteWithoutLogCheck)
        });
        let rv = Message::RequestVote {
            term: 3,
            last_log_index: 1,
            last_log_term: 1,
            leadership_transfer: false,
        };
        core.step(env(1, 2, rv));
        let rd = take(&mut core);
        let granted = Message::RequestVoteResponse {
            term: 3,
            granted: true,
        };
        assert_eq!(rd.persisted_messages, vec![env(2, 1, granted)]);
    }

    #[test]
    fn planted_vote_before_persist_answers_in_messages() {
        let mut core = core_with(2, &[1, 2, 3], &[], 0, |c| {
            c.planted_bug = Some(PlantedBug::VoteBeforePersist)
        });
        let rv = Message::RequestVote {
            term: 1,
            last_log_index: 0,
            last_log_term: 0,
            leadership_transfer: false,
        };
        core.step(env(1, 2, rv));
        let rd = take(&mut core);
        assert!(rd.persisted_messages.is_empty());
        let granted = Message::RequestVoteResponse {
            term: 1,
            granted: true,
        };
        assert_eq!(rd.messages, vec![env(2, 1, granted)]);
    }
}

#[cfg(test)]
mod storage_fault_tests {
    use super::*;
    use crate::raft::test_cluster::{storage_with, test_config, voters};
    use crate::raft::MemStorage;

    /// MemStorage whose reads of entries from `corrupt_from` up to (not including) the
    /// last one fail as a damaged WAL record would.
    struct CorruptReads {
        inner: MemStorage,
        corrupt_from: u64,
        /// Off while the core is built (it reads the whole log for the membership then).
        armed: bool,
    }

    impl CorruptReads {
        fn corruption(&self, index: u64) -> StorageError {
            StorageError::Fatal(format!(
                "corruption in 00000000000000000001.wal at offset 4096 (near entry {index}): crc mismatch"
            ))
        }
    }

    impl LogStorage for CorruptReads {
        fn first_index(&self) -> u64 {
            self.inner.first_index()
        }
        fn last_index(&self) -> u64 {
            self.inner.last_index()
        }
        fn term(&self, index: u64) -> Result<u64, StorageError> {
            if self.armed && index >= self.corrupt_from && index < self.inner.last_index() {
                return Err(self.corruption(index));
            }
            self.inner.term(index)
        }
        fn entries(&self, lo: u64, hi: u64, max_bytes: u64) -> Result<Vec<Entry>, StorageError> {
            if self.armed && hi > self.corrupt_from && lo < self.inner.last_index() {
                return Err(self.corruption(lo.max(self.corrupt_from)));
            }
            self.inner.entries(lo, hi, max_bytes)
        }
        fn snapshot_meta(&self) -> SnapshotMeta {
            self.inner.snapshot_meta()
        }
        fn snapshot_chunk(
            &self,
            meta: &SnapshotMeta,
            offset: u64,
            max_len: u64,
        ) -> Result<(Bytes, bool), StorageError> {
            self.inner.snapshot_chunk(meta, offset, max_len)
        }
    }

    /// Issue 11, item 8: a corrupt record read back from the log is not compaction. The
    /// leader must stop (report the error), not send the follower a snapshot instead.
    #[test]
    fn corrupt_log_read_is_fatal_not_compaction() {
        let mut inner = storage_with(&[1, 1, 1, 1, 1, 1]);
        let meta = SnapshotMeta {
            last_index: 2,
            last_term: 1,
            membership: voters(&[1, 2]),
        };
        inner.set_snapshot(meta, Bytes::from_static(b"snap"));
        let storage = CorruptReads {
            inner,
            corrupt_from: 4,
            armed: false,
        };
        let mut config = test_config(1);
        config.pre_vote = false;
        let hs = HardState {
            term: 1,
            voted_for: None,
        };
        let mut core = RaftCore::new(config, storage, hs, voters(&[1, 2]));
        for _ in 0..100 {
            if core.status().role == Role::Candidate {
                break;
            }
            core.tick();
        }
        let _ = core.take_ready();
        core.step(Envelope {
            from: 2,
            to: 1,
            message: Message::RequestVoteResponse {
                term: 2,
                granted: true,
            },
        });
        assert_eq!(core.status().role, Role::Leader);
        core.storage_mut().armed = true;
        // The follower has entries up to 3: the leader must read 4.. to catch it up.
        core.step(Envelope {
            from: 2,
            to: 1,
            message: Message::AppendEntriesResponse {
                term: 2,
                success: false,
                match_index: 3,
                conflict_term: 0,
                conflict_index: 4,
                read_ctx: 0,
            },
        });
        let rd = core.take_ready();
        let snapshots: Vec<&Envelope> = rd
            .messages
            .iter()
            .filter(|e| matches!(e.message, Message::InstallSnapshot { .. }))
            .collect();
        assert!(
            snapshots.is_empty(),
            "a corrupt read sent the leader down the snapshot path: {snapshots:?}"
        );
        let fatal = core.fatal().expect("the corrupt read is reported");
        assert!(fatal.to_string().contains("offset 4096"), "{fatal}");
        // Nothing decided after the fault leaves the core.
        core.tick();
        assert!(!core.has_ready());
        assert!(core.take_ready().is_empty());
    }
}

#[cfg(test)]
mod snapshot_install_tests {
    use super::*;
    use crate::raft::test_cluster::{test_config, voters};
    use crate::raft::MemStorage;

    fn follower() -> RaftCore<MemStorage> {
        let hs = HardState {
            term: 1,
            voted_for: None,
        };
        RaftCore::new(test_config(2), MemStorage::new(), hs, voters(&[1, 2]))
    }

    fn meta() -> SnapshotMeta {
        SnapshotMeta {
            last_index: 5,
            last_term: 1,
            membership: voters(&[1, 2]),
        }
    }

    fn last_chunk() -> Envelope {
        Envelope {
            from: 1,
            to: 2,
            message: Message::InstallSnapshot {
                term: 1,
                meta: meta(),
                offset: 0,
                data: Bytes::from_static(b"abc"),
                done: true,
            },
        }
    }

    fn snapshot_responses(rd: &Ready) -> Vec<Message> {
        rd.messages
            .iter()
            .chain(&rd.persisted_messages)
            .filter(|e| matches!(e.message, Message::InstallSnapshotResponse { .. }))
            .map(|e| e.message.clone())
            .collect()
    }

    /// Takes the Ready with the last chunk: nothing is installed or answered yet.
    fn receive_last_chunk(core: &mut RaftCore<MemStorage>) -> SnapshotChunk {
        core.step(last_chunk());
        let rd = core.take_ready();
        assert!(
            snapshot_responses(&rd).is_empty(),
            "answered before durable"
        );
        assert_eq!(core.status().commit_index, 0, "restored before durable");
        assert_eq!(core.status().snapshot_index, 0);
        rd.snapshot_chunk.expect("the chunk is handed out")
    }

    /// Issue 11, item 3: the snapshot replaces the log, and the leader hears success, only
    /// once the driver reports it durable and verified.
    #[test]
    fn snapshot_is_installed_only_after_the_driver_reports_it_durable() {
        let mut core = follower();
        let chunk = receive_last_chunk(&mut core);
        // The leader resends while the install runs: ignored.
        core.step(last_chunk());
        assert!(snapshot_responses(&core.take_ready()).is_empty());
        core.storage_mut()
            .install_snapshot(chunk.meta.clone(), chunk.data);
        core.on_snapshot_installed(chunk.meta);
        let rd = core.take_ready();
        assert_eq!(
            snapshot_responses(&rd),
            vec![Message::InstallSnapshotResponse {
                term: 1,
                snapshot_last_index: 5,
                next_offset: 3,
                success: true,
            }]
        );
        let st = core.status();
        assert_eq!(
            (st.commit_index, st.applied_index, st.snapshot_index),
            (5, 5, 5)
        );
    }

    /// A snapshot that failed to persist or verify is forgotten and asked for again; the
    /// log and commit index are untouched.
    #[test]
    fn failed_snapshot_install_is_forgotten_and_requested_again() {
        let mut core = follower();
        let chunk = receive_last_chunk(&mut core);
        core.on_snapshot_failed(chunk.meta);
        let rd = core.take_ready();
        assert_eq!(
            snapshot_responses(&rd),
            vec![Message::InstallSnapshotResponse {
                term: 1,
                snapshot_last_index: 5,
                next_offset: 0,
                success: false,
            }]
        );
        let st = core.status();
        assert_eq!((st.commit_index, st.snapshot_index), (0, 0));
        // The leader's retry starts a fresh transfer.
        core.step(last_chunk());
        assert!(core.take_ready().snapshot_chunk.is_some());
    }
}

#[cfg(test)]
mod snapshot_durability_order_tests {
    use bytes::Bytes;

    use super::*;
    use crate::raft::MemStorage;

    /// Issue 11, item 3, driven only through `step` and `take_ready` (inputs the core has
    /// always had): the last chunk of a snapshot is handed to the driver to persist, but
    /// the core neither restores from it nor tells the leader it is installed until the
    /// driver reports it durable and verified. Before, it restored at once and answered the
    /// leader's resend with success, whatever became of the file.
    #[test]
    fn last_snapshot_chunk_is_neither_installed_nor_acknowledged_before_durable() {
        let mut membership = Membership::default();
        for id in [1, 2] {
            membership.members.insert(
                id,
                storage::Member {
                    raft_addr: String::new(),
                    api_addr: String::new(),
                    voter: true,
                },
            );
        }
        let hard_state = HardState {
            term: 1,
            voted_for: None,
        };
        let mut core = RaftCore::new(
            Config::new(2),
            MemStorage::new(),
            hard_state,
            membership.clone(),
        );
        let last_chunk = Envelope {
            from: 1,
            to: 2,
            message: Message::InstallSnapshot {
                term: 1,
                meta: SnapshotMeta {
                    last_index: 5,
                    last_term: 1,
                    membership,
                },
                offset: 0,
                data: Bytes::from_static(b"abc"),
                done: true,
            },
        };
        core.step(last_chunk.clone());
        let ready = core.take_ready();
        assert!(
            ready.snapshot_chunk.is_some(),
            "the chunk goes to the driver"
        );
        assert_eq!(
            core.status().commit_index,
            0,
            "the core restored the snapshot before the driver made it durable"
        );
        // The leader resends the last chunk (its answer was lost, or the write is slow).
        core.step(last_chunk);
        let ready = core.take_ready();
        let acknowledged = ready
            .messages
            .iter()
            .chain(&ready.persisted_messages)
            .any(|e| {
                matches!(
                    e.message,
                    Message::InstallSnapshotResponse { success: true, .. }
                )
            });
        assert!(
            !acknowledged,
            "a resend was answered success before the snapshot was durable"
        );
    }
}

#[cfg(test)]
mod uncommitted_demotion_tests {
    use bytes::Bytes;

    use super::*;
    use crate::raft::test_cluster::{member, test_config, voters};
    use crate::raft::MemStorage;

    /// Thesis §4.2.2, and simulator seeds 2718018620 and 2718034740: a voter whose demotion
    /// is in its log but not committed still campaigns when its leader is gone; its peers,
    /// which may lack the change, may need it (it can hold the only log that wins).
    #[test]
    fn voter_with_uncommitted_demotion_still_campaigns() {
        let hard_state = HardState {
            term: 1,
            voted_for: None,
        };
        let mut core = RaftCore::new(
            test_config(3),
            MemStorage::new(),
            hard_state,
            voters(&[1, 2, 3]),
        );
        let mut demoted = voters(&[1, 2]);
        demoted.members.insert(3, member(false));
        let entries = vec![
            Entry {
                index: 1,
                term: 1,
                kind: EntryKind::Noop,
                payload: Bytes::new(),
            },
            Entry {
                index: 2,
                term: 1,
                kind: EntryKind::Membership,
                payload: membership::encode_membership(&demoted),
            },
        ];
        core.step(Envelope {
            from: 1,
            to: 3,
            message: Message::AppendEntries {
                term: 1,
                prev_log_index: 0,
                prev_log_term: 0,
                entries,
                leader_commit: 1,
                read_ctx: 0,
            },
        });
        let ready = core.take_ready();
        core.storage_mut().append(&ready.entries);
        if let Some(last) = ready.entries.last() {
            core.on_persisted(last.index, last.term);
        }
        assert_eq!(
            core.status().commit_index,
            1,
            "the demotion is not committed"
        );
        // The leader goes silent: after an election timeout this node must stand.
        for _ in 0..2 * test_config(3).election_timeout_ticks_max {
            core.tick();
        }
        let role = core.status().role;
        assert!(
            matches!(role, Role::PreCandidate | Role::Candidate),
            "a voter whose demotion is uncommitted sat out the election as {role:?}"
        );
    }
}

#[cfg(test)]
mod uncommitted_bytes_tests {
    //! The byte bound on uncommitted proposals (etcd raft's `MaxUncommittedEntriesSize`).

    use bytes::Bytes;

    use super::*;
    use crate::raft::test_cluster::{member, Cluster};

    const BOUND: u64 = 100;

    fn payload(bytes: usize) -> Bytes {
        Bytes::from(vec![b'v'; bytes])
    }

    /// A three-node cluster led by 1 whose followers are cut off: nothing 1 proposes
    /// commits until `heal`.
    fn leader_cut_off() -> Cluster {
        let mut c = Cluster::new(&[1, 2, 3], |config| config.max_uncommitted_bytes = BOUND);
        c.elect(1);
        c.isolate(1);
        c
    }

    #[test]
    fn proposal_past_uncommitted_bytes_bound_is_refused_until_commit() {
        let mut c = leader_cut_off();
        assert!(c.node_mut(1).propose(payload(60)).is_ok());
        let last_index = c.node(1).status().last_log_index;
        assert_eq!(
            c.node_mut(1).propose(payload(60)),
            Err(ProposeError::UncommittedBytesFull {
                uncommitted_bytes: 60,
                proposal_bytes: 60,
                max_bytes: BOUND,
            })
        );
        assert_eq!(
            c.node(1).status().last_log_index,
            last_index,
            "a refused proposal appended nothing"
        );
        assert!(
            c.node_mut(1).propose(payload(40)).is_ok(),
            "exactly the bound is within it"
        );
        assert_eq!(c.node(1).uncommitted_bytes(), BOUND);
        c.settle();
        c.heal();
        c.tick_all(10);
        assert_eq!(
            c.node(1).status().commit_index,
            c.node(1).status().last_log_index
        );
        assert_eq!(
            c.node(1).uncommitted_bytes(),
            0,
            "commit releases the bytes"
        );
        assert!(c.node_mut(1).propose(payload(60)).is_ok());
    }

    #[test]
    fn proposal_larger_than_the_bound_is_accepted_when_nothing_is_uncommitted() {
        let mut c = leader_cut_off();
        assert!(
            c.node_mut(1).propose(payload(3 * BOUND as usize)).is_ok(),
            "etcd raft: an oversized entry must not be refused forever"
        );
        assert!(matches!(
            c.node_mut(1).propose(payload(1)),
            Err(ProposeError::UncommittedBytesFull { .. })
        ));
    }

    #[test]
    fn empty_proposal_is_never_refused_by_the_byte_bound() {
        let mut c = leader_cut_off();
        assert!(c.node_mut(1).propose(payload(BOUND as usize)).is_ok());
        assert!(c.node_mut(1).propose(Bytes::new()).is_ok());
        assert_eq!(c.node(1).uncommitted_bytes(), BOUND);
    }

    #[test]
    fn membership_change_is_not_refused_by_the_byte_bound() {
        let mut c = Cluster::new(&[1, 2, 3], |config| config.max_uncommitted_bytes = BOUND);
        c.elect(1);
        c.isolate(1);
        assert!(c.node_mut(1).propose(payload(BOUND as usize)).is_ok());
        let change = MembershipChange::AddOrUpdate {
            id: 4,
            member: member(false),
        };
        assert!(
            c.node_mut(1).propose_membership_change(change).is_ok(),
            "an operator must be able to reconfigure an overloaded leader"
        );
    }

    #[test]
    fn new_leader_counts_only_its_own_proposals() {
        let mut c = leader_cut_off();
        assert!(c.node_mut(1).propose(payload(BOUND as usize)).is_ok());
        c.settle();
        // 2 and 3 elect one of them without 1 (whose entry they never got); 1 steps down
        // (CheckQuorum) and learns of the new leader when healed.
        c.tick_all(60);
        let new_leader = c.leader().expect("2 and 3 elect a leader");
        assert_ne!(new_leader, 1);
        c.heal();
        c.tick_all(10);
        assert_eq!(c.node(1).status().role, Role::Follower);
        assert_eq!(
            c.node(1).uncommitted_bytes(),
            0,
            "a follower counts nothing"
        );
        assert_eq!(c.node(new_leader).uncommitted_bytes(), 0);
        assert!(c
            .node_mut(new_leader)
            .propose(payload(BOUND as usize))
            .is_ok());
    }
}
