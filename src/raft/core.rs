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
    Config, Entry, EntryKind, Envelope, FailedRead, HardState, LogRegression, LogStorage,
    MemberProgress, Membership, MembershipChange, Message, NodeId, PlantedBug, ProposeError,
    ReadMode, ReadState, Ready, Role, SnapshotChunk, SnapshotMeta, SnapshotReceiving,
    SnapshotSending, SoftState, Status, StorageError,
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
    /// Set from start until the election timer is next reset: this core may be a voter
    /// restarted inside a lease it gave a leader before the restart, and counts itself
    /// inside it (see `in_lease`).
    lease_from_before_start: bool,
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
    /// Highest commit index a leader announced (see [`Status::commit_index_heard`]).
    /// Invariant: never decreases.
    commit_heard: u64,
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
    /// Followers seen to have a log that went backwards, counted over this core's life,
    /// and the latest one (it may have caught up, so be unflagged, before the node looks).
    log_regressions: u64,
    last_log_regression: Option<(NodeId, LogRegression)>,
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
        let membership = restore_membership(config.id, &log, base);
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
            lease_from_before_start: false,
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
            commit_heard: 0,
            incoming_snapshot: None,
            installing: None,
            dropped: DroppedMessages::default(),
            msgs: Vec::new(),
            persisted_msgs: Vec::new(),
            snapshot_chunk: None,
            read_states: Vec::new(),
            failed_reads: Vec::new(),
            log_regressions: 0,
            last_log_regression: None,
            prev_soft,
            prev_hard: hard_state,
        };
        core.prev_soft = core.soft_state();
        core.reset_election_timer();
        // A node that never saw a term never acknowledged a leader.
        core.lease_from_before_start = hard_state.term > 0;
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

    /// The driver saw its connection to or from `peer` end (the peer's process exited, or
    /// something reset the connection). If `peer` is this follower's leader it is probably
    /// gone, and waiting out a randomized election timeout of up to
    /// `election_timeout_ticks_max` only delays the next election: the follower moves its
    /// deadline to shortly after `election_timeout_ticks_min`, to a point set by its rank
    /// among the other voters so that two followers told at once do not split the vote.
    /// The rank decides even when the follower's own draw was earlier (the deadline then
    /// moves a few ticks later): a follower that keeps an early draw can campaign in the
    /// same tick as the lowest-ranked one, each grants the other's pre-vote, and both stand
    /// in the next term and split it (seen in ~5% of process failovers, each costing
    /// another election timeout).
    ///
    /// This is a hint, not evidence, and it is harmless when wrong: the new deadline is one
    /// the random draw could have produced (thesis §3.4 allows any timeout in the range),
    /// the lease is untouched (no vote and no campaign before `election_timeout_ticks_min`
    /// since the leader was last heard from, so lease reads stay safe, thesis §6.4.1, and
    /// the leader is not disrupted, §4.2.3), and a live leader's heartbeats keep resetting
    /// the elapsed time, which never reaches even the shortened deadline between two of
    /// them (a heartbeat does not redraw the timeout: the shortened one stays until the
    /// next election or change of leader). A connection that dies silently (a partition,
    /// a paused process) gives no hint and the normal timeout applies.
    pub fn on_link_lost(&mut self, peer: NodeId) {
        if self.fatal().is_some()
            || self.role != Role::Follower
            || self.leader_id != Some(peer)
            || !self.promotable()
        {
            return;
        }
        if self.config.planted_bug == Some(PlantedBug::LinkLostEndsLease) {
            self.leader_id = None;
            self.randomized_election_timeout = 0;
            return;
        }
        let (min, max) = (
            self.config.election_timeout_ticks_min,
            self.config.election_timeout_ticks_max,
        );
        // Two ticks past the minimum, so a follower whose last message from the leader
        // came a little later than ours has left its lease too and grants the pre-vote;
        // two ticks between ranks, so tick phases that differ between nodes cannot make
        // two followers campaign in the same tick.
        let rank = self
            .voters
            .iter()
            .filter(|id| **id != peer && **id < self.id)
            .count();
        let stagger = u32::try_from(rank).unwrap_or(u32::MAX).saturating_mul(2);
        let deadline = min.saturating_add(2).saturating_add(stagger);
        if deadline < max && deadline != self.randomized_election_timeout {
            tracing::debug!(
                id = self.id,
                leader = peer,
                deadline_ticks = deadline,
                elapsed_ticks = self.election_elapsed,
                "link to the leader lost: campaigning at the deadline unless it is heard from"
            );
            self.randomized_election_timeout = deadline;
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
            && (self.append_needed || self.read_round_due() || self.commit_broadcast_needed);
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
            commit_index_heard: self.commit_index_heard(),
            snapshot_receiving: self.snapshot_receiving(),
        }
    }

    /// See [`Status::commit_index_heard`] (without building a whole status).
    pub fn commit_index_heard(&self) -> u64 {
        self.commit_heard.max(self.log.commit())
    }

    /// The snapshot being received, from the chunk expected next or the install under way.
    fn snapshot_receiving(&self) -> Option<SnapshotReceiving> {
        if let Some((meta, _, size)) = &self.installing {
            return Some(SnapshotReceiving {
                last_index: meta.last_index,
                bytes_received: *size,
                installing: true,
            });
        }
        self.incoming_snapshot
            .as_ref()
            .map(|(meta, next_offset)| SnapshotReceiving {
                last_index: meta.last_index,
                bytes_received: *next_offset,
                installing: false,
            })
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
                    snapshot_sending: None,
                    log_regressed: None,
                },
                Some(pr) => MemberProgress {
                    id,
                    match_index: pr.match_index,
                    ticks_since_contact: self.now.saturating_sub(pr.last_heard_tick),
                    snapshot_sending: match &pr.state {
                        ProgressState::Snapshot(t) => Some(SnapshotSending {
                            last_index: t.meta.last_index,
                            last_term: t.meta.last_term,
                            bytes_sent: t.sent_end.max(t.offset),
                        }),
                        _ => None,
                    },
                    log_regressed: pr.log_regressed,
                },
                None => MemberProgress {
                    id,
                    match_index: 0,
                    ticks_since_contact: self.now,
                    snapshot_sending: None,
                    log_regressed: None,
                },
            })
            .collect()
    }

    /// How many times a follower was seen to have a log that went backwards (see
    /// [`LogRegression`]; which ones are in [`RaftCore::member_progress`]). A cheap counter
    /// the node polls to warn once per regression.
    pub fn log_regressions(&self) -> u64 {
        self.log_regressions
    }

    /// The follower last seen to have a log that went backwards, and what was seen.
    pub fn last_log_regression(&self) -> Option<(NodeId, LogRegression)> {
        self.last_log_regression
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
        self.lease_from_before_start = false;
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
    /// leader, and so is a node for a minimum election timeout after it starts: a voter
    /// that acknowledged a leader just before a crash has forgotten it, and the leader's
    /// lease reads count on its refusal all the same (thesis §6.4.1; simulator seed
    /// 6565037337 voted at once after a quick restart and a removed member was elected
    /// under the lease). A leader is in it for as long as it has heard from a quorum
    /// within an election timeout (the CheckQuorum condition, evaluated even when
    /// CheckQuorum is off), so a leader cut off from the majority stays deposable and
    /// cannot hold up elections.
    fn in_lease(&self) -> bool {
        match self.role {
            Role::Leader => self.quorum_recently_active(),
            _ => {
                (self.leader_id.is_some() || self.lease_from_before_start)
                    && self.election_elapsed < self.config.election_timeout_ticks_min
            }
        }
    }

    /// A message with a newer term. Returns whether to go on handling it.
    fn on_higher_term(&mut self, from: NodeId, msg: &Message) -> bool {
        // Preconditions from `step`: the door passed the message and its term is newer.
        assert!(
            msg.term() > self.term,
            "node {}: on_higher_term for term {} at term {}",
            self.id,
            msg.term(),
            self.term
        );
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
        assert!(
            msg.term() < self.term,
            "node {}: on_lower_term for term {} at term {}",
            self.id,
            msg.term(),
            self.term
        );
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

    /// Hands a message of the current term to its handler. Each handler opens with the
    /// preconditions `step` and the door ([`validate`]) guarantee; none depends on what a
    /// peer chose to send.
    fn dispatch(&mut self, from: NodeId, msg: Message) {
        // `step` stops at a fatal storage error, and the door refuses messages from self.
        assert!(
            self.fatal().is_none() && from != self.id,
            "node {}: dispatching a message from {from} (fatal: {:?})",
            self.id,
            self.fatal()
        );
        // Raft §5.1: an older term was answered by `on_lower_term`, a newer one adopted by
        // `on_higher_term`; only a PreVote carries the term its sender would campaign in
        // (thesis §9.6), which this node need not adopt.
        assert!(
            msg.term() == self.term
                || (matches!(msg, Message::PreVote { .. }) && msg.term() > self.term),
            "node {}: dispatching a message from {from} of term {} at term {}",
            self.id,
            msg.term(),
            self.term
        );
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

    /// Precondition of the follower-side handlers: `accept_leader` made `from` this term's
    /// leader and this node its follower (Raft §5.2: a server recognises the leader of
    /// its current term).
    fn assert_following(&self, from: NodeId, what: &str) {
        assert!(
            self.role == Role::Follower && self.leader_id == Some(from),
            "node {}: handling {what} from {from} as {:?} following {:?} in term {}",
            self.id,
            self.role,
            self.leader_id,
            self.term
        );
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
        // Preconditions from `dispatch` (the term) and the door (Raft §5.1: no log holds a
        // term beyond its message's).
        assert!(
            if pre_vote {
                term >= self.term
            } else {
                term == self.term
            },
            "node {}: vote request (pre-vote: {pre_vote}) of term {term} from {from} at term {}",
            self.id,
            self.term
        );
        assert!(
            last_log_term <= term,
            "node {}: vote request from {from} for term {term} claims last log term {last_log_term}",
            self.id
        );
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
        // Preconditions from `step` and the door: this is the only message handled before
        // the term checks, so its term is bounded only by the door (`term + 1` can't wrap).
        assert!(
            self.fatal().is_none() && from != self.id && term < validate::TERM_MAX,
            "node {}: pre-vote response of term {term} from {from} (fatal: {:?})",
            self.id,
            self.fatal()
        );
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
        self.assert_following(from, "AppendEntries");
        // Heard even when the entries cannot be taken (an install under way, a mismatch):
        // readiness compares it with the applied index (issue 17).
        self.commit_heard = self.commit_heard.max(leader_commit);
        // The door checked the entries are the slice of a log right after `prev` (Raft
        // §5.3): contiguous, terms never falling and never beyond this term (§5.1).
        let (mut prev_index, prev_term) = (prev.0, prev.1);
        assert!(
            prev_term <= self.term && (prev_index > 0 || prev_term == 0),
            "node {}: AppendEntries from {from} with prev ({prev_index}, {prev_term}) at term {}",
            self.id,
            self.term
        );
        let mut floor = (prev_index, prev_term.max(1));
        for entry in &entries {
            assert!(
                entry.index == floor.0 + 1 && floor.1 <= entry.term && entry.term <= self.term,
                "node {}: AppendEntries from {from}: entry ({}, {}) after ({}, {}) at term {}",
                self.id,
                entry.index,
                entry.term,
                floor.0,
                floor.1,
                self.term
            );
            floor = (entry.index, entry.term);
        }
        if self.installing.is_some() {
            // The log is about to be replaced; the leader retries after the install.
            return;
        }
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
        let m = decode_membership_entry(self.id, entry);
        self.membership.on_append(entry.index, m);
        true
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
        self.assert_following(from, "InstallSnapshot");
        // The door: a snapshot covers at least one entry (Raft §7) of no future term (§5.1),
        // and `offset + len` cannot overflow.
        assert!(
            meta.last_index > 0
                && meta.last_term > 0
                && meta.last_term <= self.term
                && offset.checked_add(data.len() as u64).is_some(),
            "node {}: InstallSnapshot from {from} of ({}, {}) at offset {offset}+{} at term {}",
            self.id,
            meta.last_index,
            meta.last_term,
            data.len(),
            self.term
        );
        // A snapshot holds only committed entries (Raft §7).
        self.commit_heard = self.commit_heard.max(meta.last_index);
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
        // Every read queued so far waits for the round after the newest one: this one.
        self.read_round_needed = false;
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
        if self.read_round_due() {
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
        // Preconditions from `dispatch` (only a leader counts acknowledgements) and the door
        // (`check_at_door`: a follower of this term holds only what this leader sent it).
        assert!(
            self.role == Role::Leader,
            "node {}: AppendEntries response from {from} as {:?} in term {}",
            self.id,
            self.role,
            self.term
        );
        assert!(
            !success || match_index <= last,
            "node {from} acknowledged index {match_index} beyond the leader's last index {last}"
        );
        assert!(
            conflict.0 <= self.term,
            "node {}: AppendEntries response from {from} names conflict term {} at term {}",
            self.id,
            conflict.0,
            self.term
        );
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
            self.on_append_success(from, match_index);
        } else if !snapshotting {
            let hint = self.next_index_after_reject(next_index, conflict);
            let pr = self
                .progress
                .get_mut(&from)
                .expect("progress checked above");
            // A rejection's `match_index` is the follower's last index.
            if let Some(regression) = pr.on_reject(hint, match_index, read_ctx) {
                self.log_regressions += 1;
                self.last_log_regression = Some((from, regression));
            }
            self.send_appends_to(from);
        }
        if read_ctx > 0 {
            self.release_reads();
        }
    }

    fn on_append_success(&mut self, from: NodeId, match_index: u64) {
        let now = self.now;
        let round = self.round;
        let last = self.log.last_index();
        let Some(pr) = self.progress.get_mut(&from) else {
            return;
        };
        let advanced = pr.on_success(match_index, now, round);
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

    /// Whether to start a round for queued reads now: only once a quorum has acknowledged
    /// the newest round. While one is in flight, reads that arrive wait for the next, which
    /// starts when it returns, so under load one round confirms every read that arrived
    /// during the one before, as etcd's server keeps one ReadIndex in flight and batches
    /// the reads behind it (thesis §6.4: the round must start after the read arrived, which
    /// the next one does). Before, every `Ready` with a new read started a round: ~0.9
    /// rounds per read at 64 clients, two heartbeats and two answers each (issue 14). A
    /// round that never returns is overtaken by the heartbeat tick's, which covers the same
    /// reads.
    fn read_round_due(&self) -> bool {
        self.read_round_needed
            && self.voter_quorum_value(self.round, |pr| pr.acked_round) >= self.round
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
        assert!(
            self.role == Role::Leader,
            "node {}: InstallSnapshot response from {from} as {:?} in term {}",
            self.id,
            self.role,
            self.term
        );
        let now = self.now;
        let round = self.round;
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
            pr.on_success(snapshot_last_index, now, round);
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
fn restore_membership<S: LogStorage>(
    id: NodeId,
    log: &RaftLog<S>,
    base: Membership,
) -> MembershipLog {
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
            membership.on_append(entry.index, decode_membership_entry(id, entry));
        }
    }
    membership
}

/// The configuration a membership entry carries.
///
/// Invariant: every membership entry in the log decodes. It was encoded by a leader's
/// [`membership::encode_membership`]; on a follower it passed `validate.rs`, which drops an
/// AppendEntries carrying one that does not decode; on disk the WAL's CRC guards it. Skipping
/// one would silently run the node under the wrong configuration (thesis §4.1: a server uses
/// the latest configuration in its log), so a broken invariant stops the node here.
fn decode_membership_entry(id: NodeId, entry: &Entry) -> Membership {
    match membership::decode_membership(&entry.payload) {
        Ok(m) => m,
        Err(e) => panic!(
            "node {id}: membership entry {} (term {}, {} bytes) does not decode: {e}. Such entries \
             come only from a leader's encoder, are checked by validate.rs on arrival and by CRC \
             on disk, so this is a bug: keep the data directory for the bug report",
            entry.index,
            entry.term,
            entry.payload.len()
        ),
    }
}

#[cfg(test)]
mod tests;
