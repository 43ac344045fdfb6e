//! The Raft core: a pure, deterministic state machine.
//!
//! No sockets, files, clocks, threads or global RNGs live here. The driver (the node in
//! production, the simulator in tests) feeds the core inputs and takes its outputs:
//!
//! - inputs: [`RaftCore::tick`], [`RaftCore::step`], [`RaftCore::propose`],
//!   [`RaftCore::read_index`], [`RaftCore::on_persisted`], [`RaftCore::on_applied`],
//!   [`RaftCore::on_snapshot_taken`], [`RaftCore::on_snapshot_installed`],
//!   [`RaftCore::on_snapshot_failed`], and (membership issue) [`RaftCore::propose_membership_change`],
//!   [`RaftCore::transfer_leadership`];
//! - outputs: a [`Ready`] batch from [`RaftCore::take_ready`], handled in field order.
//!
//! Persistence is asynchronous: `take_ready` hands out entries and hard state to persist;
//! when the driver has made them durable it calls [`RaftCore::on_persisted`]. Messages in
//! [`Ready::messages`] do not depend on that write and go out at once (a leader's
//! heartbeats and AppendEntries never wait behind its own fsync, Raft thesis §10.2.1);
//! messages in [`Ready::persisted_messages`] must wait until everything in the same
//! `Ready` (and every earlier one) is durable.
//!
//! Time arrives as ticks; randomness as a seed in [`Config`].

pub mod core;
#[doc(hidden)]
pub mod driver;
#[doc(hidden)]
pub mod fuzzing;
mod log;
pub mod mem_storage;
pub mod membership;
mod progress;
mod quorum;
mod read_index;
#[doc(hidden)]
pub mod storage_conformance;
#[cfg(test)]
pub(crate) mod test_cluster;
pub mod validate;

pub use self::core::RaftCore;
pub use self::mem_storage::MemStorage;
pub use self::membership::{decode_membership, encode_membership, UndecodableMembership};
pub use self::validate::{DropReason, DroppedMessages};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
pub use storage::{
    Entry, EntryKind, HardState, Member, Membership, NodeId, NotInLog, SnapshotMeta,
};

/// Static parameters of one core.
#[derive(Clone, Debug)]
pub struct Config {
    /// This node's id.
    pub id: NodeId,
    /// Election timeouts are drawn uniformly from `[min, max)` ticks (Raft §5.2).
    pub election_timeout_ticks_min: u32,
    /// Upper bound (exclusive) of the election timeout.
    pub election_timeout_ticks_max: u32,
    /// A leader sends heartbeats this often.
    pub heartbeat_interval_ticks: u32,
    /// PreVote (thesis §9.6): a node that was partitioned away does not disrupt a healthy leader.
    pub pre_vote: bool,
    /// CheckQuorum (thesis §6.2): a leader that has not heard from a quorum within an
    /// election timeout steps down.
    pub check_quorum: bool,
    /// Flow control: AppendEntries messages in flight per follower.
    pub max_inflight_msgs: usize,
    /// Flow control: the most entry bytes in one AppendEntries.
    pub max_msg_bytes: u64,
    /// The most bytes of committed entries handed out in one `Ready`.
    pub max_apply_bytes: u64,
    /// InstallSnapshot chunk size.
    pub snapshot_chunk_bytes: u64,
    /// Lease reads need CheckQuorum; the lease is the election timeout minimum less this
    /// bound on how far clocks may drift apart, in ticks.
    pub lease_clock_drift_ticks: u32,
    /// Seed of the core's own RNG (election timeouts).
    pub seed: u64,
    /// Flow control: a leader refuses proposals ([`ProposeError::Backpressure`]) while
    /// this many of its entries are uncommitted.
    pub max_uncommitted_entries: u64,
    /// Flow control in bytes (etcd raft's `MaxUncommittedEntriesSize`): a leader refuses a
    /// proposal ([`ProposeError::UncommittedBytesFull`]) whose payload would take the
    /// payload bytes of its own uncommitted entries past this bound. A proposal made while
    /// nothing is uncommitted is always accepted, so an entry larger than the bound is not
    /// refused forever; empty entries (the leader's no-op) and membership changes (one at a
    /// time, so bounded anyway) are never refused by it.
    pub max_uncommitted_bytes: u64,
    /// Messages dropped at the door ([`validate`]) are logged at most once per reason per
    /// this many ticks (every drop is counted).
    pub drop_log_interval_ticks: u64,
    /// Test-only: switch on a deliberately broken rule so the simulator can prove it
    /// notices. Always `None` outside the `planted_*` tests.
    #[doc(hidden)]
    pub planted_bug: Option<PlantedBug>,
}

impl Config {
    /// Defaults for a node that ticks every 10 ms: heartbeats every 50 ms and election
    /// timeouts of 150–300 ms, as in `config.json`.
    pub fn new(id: NodeId) -> Config {
        Config {
            id,
            election_timeout_ticks_min: 15,
            election_timeout_ticks_max: 30,
            heartbeat_interval_ticks: 5,
            pre_vote: true,
            check_quorum: true,
            max_inflight_msgs: 256,
            max_msg_bytes: 1 << 20,
            max_apply_bytes: 4 << 20,
            snapshot_chunk_bytes: 1 << 20,
            lease_clock_drift_ticks: 2,
            seed: id,
            max_uncommitted_entries: 1 << 16,
            // 64 one-MiB values, or 64 Ki small ones before the entry bound binds.
            max_uncommitted_bytes: 64 << 20,
            // One second at the node's 10 ms tick.
            drop_log_interval_ticks: 100,
            planted_bug: None,
        }
    }
}

/// Deliberately broken rules for the simulator's `planted_*` tests.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlantedBug {
    /// Commit entries of earlier terms by counting replicas (breaks Raft §5.4.2, Figure 8).
    CommitOldTermByCount,
    /// Grant votes without the log up-to-date check (breaks §5.4.1).
    VoteWithoutLogCheck,
    /// Put vote responses in `Ready::messages`, i.e. answer before the vote is durable.
    VoteBeforePersist,
    /// Serve ReadIndex reads without the quorum round.
    ReadIndexWithoutQuorum,
    /// Let a new leader propose a membership change before an entry of its own term has
    /// committed: the single-server change bug (Ongaro, raft-dev, 2015; thesis §4.1 as
    /// corrected). A change an earlier leader appended on a minority may still win later,
    /// and the two configurations' majorities need not overlap.
    MembershipChangeBeforeOwnTermCommit,
    /// Take a lost link to the leader as proof that it is gone: forget the leader and
    /// campaign at once, inside the lease (breaks thesis §6.4.1's lease reads: a leader cut
    /// off by a connection reset still serves them while another is elected).
    LinkLostEndsLease,
}

impl PlantedBug {
    /// Every planted bug, for the tests that try each one (a new variant goes here too).
    pub const ALL: [PlantedBug; 6] = [
        PlantedBug::CommitOldTermByCount,
        PlantedBug::VoteWithoutLogCheck,
        PlantedBug::VoteBeforePersist,
        PlantedBug::ReadIndexWithoutQuorum,
        PlantedBug::MembershipChangeBeforeOwnTermCommit,
        PlantedBug::LinkLostEndsLease,
    ];
}

/// A message between cores. The transport wraps it in an [`Envelope`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// PreVote request (thesis §9.6): would you vote for me at `term`? Changes no state.
    PreVote {
        /// The term the candidate would campaign in (its current term + 1).
        term: u64,
        /// Index of the candidate's last entry.
        last_log_index: u64,
        /// Term of that entry.
        last_log_term: u64,
    },
    /// Answer to [`Message::PreVote`].
    PreVoteResponse {
        /// The term of the request if granted, else the responder's term.
        term: u64,
        /// Whether the vote would be granted.
        granted: bool,
    },
    /// RequestVote RPC (Raft §5.2).
    RequestVote {
        /// Candidate's term.
        term: u64,
        /// Index of the candidate's last entry.
        last_log_index: u64,
        /// Term of that entry.
        last_log_term: u64,
        /// Set when campaigning because of a leadership transfer: voters ignore their
        /// leader lease for it.
        leadership_transfer: bool,
    },
    /// Answer to [`Message::RequestVote`].
    RequestVoteResponse {
        /// Responder's term.
        term: u64,
        /// Whether the vote was granted.
        granted: bool,
    },
    /// AppendEntries RPC (Raft §5.3); also the heartbeat when `entries` is empty.
    AppendEntries {
        /// Leader's term.
        term: u64,
        /// Index of the entry preceding `entries`.
        prev_log_index: u64,
        /// Term of that entry.
        prev_log_term: u64,
        /// Entries to store (empty for a heartbeat).
        entries: Vec<Entry>,
        /// Leader's commit index.
        leader_commit: u64,
        /// ReadIndex round this message confirms leadership for (0: none).
        read_ctx: u64,
    },
    /// Answer to [`Message::AppendEntries`].
    AppendEntriesResponse {
        /// Responder's term.
        term: u64,
        /// Whether the entries matched and were stored.
        success: bool,
        /// On success: the last index known to match the leader's log.
        /// On rejection: the follower's last log index.
        match_index: u64,
        /// On rejection: the term of the follower's conflicting entry at `prev_log_index`
        /// (0 if the follower's log is shorter), for fast backtracking (§5.3).
        conflict_term: u64,
        /// On rejection: the first index the follower holds with `conflict_term`, or its
        /// last index + 1 when its log is shorter.
        conflict_index: u64,
        /// Echo of the request's `read_ctx`.
        read_ctx: u64,
    },
    /// InstallSnapshot RPC (Raft §7), one chunk at a time.
    InstallSnapshot {
        /// Leader's term.
        term: u64,
        /// The snapshot being sent.
        meta: SnapshotMeta,
        /// Byte offset of `data` within the snapshot.
        offset: u64,
        /// This chunk.
        data: Bytes,
        /// Whether this is the last chunk.
        done: bool,
    },
    /// Answer to [`Message::InstallSnapshot`].
    InstallSnapshotResponse {
        /// Responder's term.
        term: u64,
        /// `last_index` of the snapshot being acknowledged.
        snapshot_last_index: u64,
        /// The offset the follower expects next (after `done`: the snapshot size). A
        /// mismatch restarts the transfer at this offset or 0.
        next_offset: u64,
        /// Whether the follower has accepted the chunk (or, with `done`, installed it).
        success: bool,
    },
    /// Leadership transfer: start an election now, skipping PreVote (thesis §3.10).
    TimeoutNow {
        /// Leader's term.
        term: u64,
    },
}

impl Message {
    /// The term the message carries.
    pub fn term(&self) -> u64 {
        match self {
            Message::PreVote { term, .. }
            | Message::PreVoteResponse { term, .. }
            | Message::RequestVote { term, .. }
            | Message::RequestVoteResponse { term, .. }
            | Message::AppendEntries { term, .. }
            | Message::AppendEntriesResponse { term, .. }
            | Message::InstallSnapshot { term, .. }
            | Message::InstallSnapshotResponse { term, .. }
            | Message::TimeoutNow { term } => *term,
        }
    }
}

/// A message with its sender and receiver.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Sender.
    pub from: NodeId,
    /// Receiver.
    pub to: NodeId,
    /// Payload.
    pub message: Message,
}

/// A node's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// Follows a leader (or waits for one).
    Follower,
    /// Running a PreVote round; still a follower as far as terms go.
    PreCandidate,
    /// Campaigning.
    Candidate,
    /// Leading.
    Leader,
    /// Not a voter in the current membership.
    Learner,
}

/// How a read is made safe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReadMode {
    /// ReadIndex: the leader confirms with a quorum round (thesis §6.4).
    Linearizable,
    /// The leader relies on its lease (needs CheckQuorum; safe while clocks drift less
    /// than `lease_clock_drift_ticks`).
    Lease,
}

/// A read that became safe: serve it once the applied index reaches `index`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadState {
    /// The driver's id for the read, as passed to [`RaftCore::read_index`].
    pub ctx: u64,
    /// The commit index the read must observe.
    pub index: u64,
}

/// A read that can no longer be served by this node (it lost leadership).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FailedRead {
    /// The driver's id for the read.
    pub ctx: u64,
    /// Who leads now, if known.
    pub leader_hint: Option<NodeId>,
}

/// A chunk of a snapshot received from the leader, for the driver to persist.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotChunk {
    /// The snapshot the chunk belongs to.
    pub meta: SnapshotMeta,
    /// Byte offset; 0 starts a new transfer (discard any partial one).
    pub offset: u64,
    /// The bytes.
    pub data: Bytes,
    /// Last chunk: once the whole snapshot is durable and verified, the driver installs it
    /// (makes its log agree with it, Raft §7, and restores its state machine from it
    /// before applying anything later), then calls [`RaftCore::on_snapshot_installed`];
    /// if writing or verifying fails it discards the transfer and calls
    /// [`RaftCore::on_snapshot_failed`]. No `on_persisted` report is needed for it.
    pub done: bool,
}

/// Volatile state worth reporting (status endpoint, logs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SoftState {
    /// This node's role.
    pub role: Role,
    /// The leader this node knows of in the current term.
    pub leader_id: Option<NodeId>,
    /// Current term.
    pub term: u64,
}

/// One batch of outputs. The driver handles the fields in this order:
///
/// 1. send `messages` (they depend on nothing in this batch);
/// 2. persist `snapshot_chunk`, then `entries` (truncating the log first when the first
///    entry's index is not beyond the last persisted index), then `hard_state`; once
///    all of it is durable, call [`RaftCore::on_persisted`] and send `persisted_messages`;
/// 3. apply `committed_entries` in order (they are always already durable locally),
///    then report progress with [`RaftCore::on_applied`];
/// 4. serve `read_states` once applied reaches their index; fail `failed_reads`.
#[derive(Clone, Debug, Default)]
pub struct Ready {
    /// Set when role, leader or term changed since the last `Ready`.
    pub soft_state: Option<SoftState>,
    /// Messages to send now.
    pub messages: Vec<Envelope>,
    /// A received snapshot chunk to persist (and, with `done`, install).
    pub snapshot_chunk: Option<SnapshotChunk>,
    /// Entries to append. If `entries[0].index <= ` the last index the driver has, the
    /// driver first truncates its log from `entries[0].index` (a conflicting suffix).
    pub entries: Vec<Entry>,
    /// Term and vote to persist (atomically, durably).
    pub hard_state: Option<HardState>,
    /// Messages to send only after everything above is durable.
    pub persisted_messages: Vec<Envelope>,
    /// The commit index known to the core (for status; apply from `committed_entries`).
    pub commit_index: u64,
    /// Committed entries to apply, in index order.
    pub committed_entries: Vec<Entry>,
    /// Reads that are now safe.
    pub read_states: Vec<ReadState>,
    /// Reads this node can no longer serve.
    pub failed_reads: Vec<FailedRead>,
}

impl Ready {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.soft_state.is_none()
            && self.messages.is_empty()
            && self.snapshot_chunk.is_none()
            && self.entries.is_empty()
            && self.hard_state.is_none()
            && self.persisted_messages.is_empty()
            && self.committed_entries.is_empty()
            && self.read_states.is_empty()
            && self.failed_reads.is_empty()
    }
}

/// Why a proposal or request was not accepted. Expected outcomes, not failures of the core.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// Only the leader accepts proposals.
    #[error("not the leader (leader hint: {leader_hint:?})")]
    NotLeader {
        /// Who leads, if known.
        leader_hint: Option<NodeId>,
    },
    /// A leadership transfer is in progress; proposals wait until it ends.
    #[error("leadership transfer in progress")]
    TransferInProgress,
    /// A membership change is already pending (one at a time, thesis §4.1).
    #[error("a membership change is already in progress")]
    MembershipChangePending,
    /// The requested change is not valid for the current membership.
    #[error("invalid membership change: {0}")]
    InvalidMembershipChange(String),
    /// The flow-control window for uncommitted entries is full.
    #[error("too many uncommitted entries")]
    Backpressure,
    /// The proposal would take the leader's uncommitted payload bytes past
    /// [`Config::max_uncommitted_bytes`]; nothing was appended.
    #[error(
        "{uncommitted_bytes} bytes are uncommitted and the proposal adds {proposal_bytes}, \
         past the bound of {max_bytes} bytes"
    )]
    UncommittedBytesFull {
        /// Payload bytes of this leader's entries not yet committed.
        uncommitted_bytes: u64,
        /// Payload bytes of the refused proposal.
        proposal_bytes: u64,
        /// The configured bound.
        max_bytes: u64,
    },
}

/// Why [`LogStorage`] could not answer. Every implementation gives the same variant for
/// the same situation; `raft::storage_conformance` checks that.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StorageError {
    /// The entry was compacted into a snapshot (expected: the leader sends the snapshot),
    /// or is past the end of the log.
    #[error(transparent)]
    NotInLog(#[from] NotInLog),
    /// The snapshot asked for was replaced by a newer one: expected, the leader restarts
    /// the transfer with the newer one.
    #[error("snapshot {requested} was replaced by snapshot {current}")]
    SnapshotReplaced {
        /// `last_index` of the snapshot asked for.
        requested: u64,
        /// `last_index` of the current snapshot.
        current: u64,
    },
    /// The storage cannot be trusted: a record failed verification, a read failed. The
    /// message names the file and offset. The core stops ([`RaftCore::fatal`]) and the
    /// driver must stop the node: answering from a damaged log could lose acknowledged
    /// writes.
    #[error("{0}")]
    Fatal(String),
}

impl StorageError {
    /// `SnapshotReplaced` when `requested` is no longer the `current` snapshot, which every
    /// [`LogStorage::snapshot_chunk`] must check before (and, if the file can vanish, after)
    /// reading.
    pub fn if_snapshot_replaced(
        requested: &SnapshotMeta,
        current: &SnapshotMeta,
    ) -> Option<StorageError> {
        let same =
            current.last_index == requested.last_index && current.last_term == requested.last_term;
        (!same).then_some(StorageError::SnapshotReplaced {
            requested: requested.last_index,
            current: current.last_index,
        })
    }
}

/// What the core can read of the persisted log and snapshot.
///
/// # To ensure correctness
/// - Entries visible here must be durable: the driver appends them before calling
///   [`RaftCore::on_persisted`] for them, and truncates only as a `Ready` tells it.
/// - `first_index() - 1` is covered by the latest snapshot: `snapshot_meta().last_index
///   >= first_index() - 1` whenever the log is compacted.
/// - Reads must be deterministic: the same calls in the same order give the same answers.
/// - Errors: [`NotInLog::Compacted`] below `first_index() - 1`,
///   [`NotInLog::Unavailable`] past `last_index()`, [`StorageError::SnapshotReplaced`]
///   for a snapshot that is no longer the latest, and [`StorageError::Fatal`] for anything
///   that means the data cannot be trusted (never one of the others in its place).
pub trait LogStorage {
    /// The first index still in the log (`snapshot last_index + 1` when the log is empty).
    fn first_index(&self) -> u64;
    /// The last index in the log (`snapshot last_index` when the log is empty).
    fn last_index(&self) -> u64;
    /// The term of the entry at `index`, also for `first_index() - 1` (the snapshot's
    /// last entry) and for 0 (term 0).
    fn term(&self, index: u64) -> Result<u64, StorageError>;
    /// Entries in `[lo, hi)`, stopping early once `max_bytes` is exceeded (at least one
    /// entry is returned when `lo < hi`); `Compacted` if `lo < first_index()`,
    /// `Unavailable` if `hi > last_index() + 1`.
    fn entries(&self, lo: u64, hi: u64, max_bytes: u64) -> Result<Vec<Entry>, StorageError>;
    /// The latest durable snapshot (`last_index == 0`: none).
    fn snapshot_meta(&self) -> SnapshotMeta;
    /// Up to `max_len` bytes of the snapshot described by `meta`, from `offset`; returns
    /// the data and whether it reaches the end. `SnapshotReplaced` if that snapshot is no
    /// longer the latest: the core restarts the transfer with the newer one.
    fn snapshot_chunk(
        &self,
        meta: &SnapshotMeta,
        offset: u64,
        max_len: u64,
    ) -> Result<(Bytes, bool), StorageError>;
}

/// A single-server membership change (thesis §4.1: one at a time; it takes effect when
/// appended).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MembershipChange {
    /// Add a member, or change an existing member's addresses or voting status.
    AddOrUpdate {
        /// The member's id.
        id: NodeId,
        /// Its addresses and voting status.
        member: Member,
    },
    /// Remove a member.
    Remove {
        /// The member's id.
        id: NodeId,
    },
}

/// One member's replication as the leader sees it (see [`RaftCore::member_progress`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemberProgress {
    /// The member.
    pub id: NodeId,
    /// Highest index known durable on it.
    pub match_index: u64,
    /// Leader ticks since it last answered.
    pub ticks_since_contact: u64,
    /// The snapshot being sent to it (InstallSnapshot, Raft §7), if any.
    pub snapshot_sending: Option<SnapshotSending>,
    /// Its log went backwards below what it acknowledged (see [`LogRegression`]).
    pub log_regressed: Option<LogRegression>,
}

/// A follower that rejected AppendEntries below its match index several times in a row: its
/// durable log lost entries it had acknowledged (a disk that lost its tail, a restored
/// backup, a persistence bug). The leader re-replicates from where the logs agree, but the
/// follower may have voted without those entries; the operator should remove and re-add it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogRegression {
    /// The leader's match index for the follower when the regression was seen.
    pub match_index: u64,
    /// The follower's last index as it reported it then.
    pub last_index: u64,
}

/// An InstallSnapshot transfer as the leader sees it, for progress reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotSending {
    /// The snapshot's last index.
    pub last_index: u64,
    /// The snapshot's last term.
    pub last_term: u64,
    /// Bytes of the snapshot sent so far (up to the end of the chunk last sent; the core
    /// does not know the total, the driver's snapshot store does).
    pub bytes_sent: u64,
}

/// An InstallSnapshot transfer as the receiving follower sees it, for progress reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotReceiving {
    /// The snapshot's last index.
    pub last_index: u64,
    /// Bytes of it received and handed to the driver so far.
    pub bytes_received: u64,
    /// The last chunk arrived: the driver is making it durable, verifying and installing it.
    pub installing: bool,
}

/// A snapshot of the core's state for status reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// This node.
    pub id: NodeId,
    /// Role.
    pub role: Role,
    /// Current term.
    pub term: u64,
    /// Known leader in `term`.
    pub leader_id: Option<NodeId>,
    /// Commit index.
    pub commit_index: u64,
    /// Highest index the driver reported applied.
    pub applied_index: u64,
    /// Last index in the log (persisted or not).
    pub last_log_index: u64,
    /// Last index covered by the latest snapshot.
    pub snapshot_index: u64,
    /// The membership in effect (the latest appended configuration).
    pub membership: Membership,
    /// Highest commit index a leader announced to this node (an AppendEntries'
    /// `leader_commit`, or the last index of a snapshot it sent), or this node's own
    /// commit index if higher. An entry once committed stays committed whichever leader
    /// announced it, so this is a lower bound on the cluster's commit index even when it
    /// came from a deposed leader. After a restart it starts again from the node's own
    /// commit index.
    pub commit_index_heard: u64,
    /// The snapshot this node is receiving from the leader, if any.
    pub snapshot_receiving: Option<SnapshotReceiving>,
}
