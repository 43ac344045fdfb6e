//! Why a node stops or refuses to start, typed by who can act (openraft's `Fatal` beside its
//! `APIError`): the operator (the disk, the data directory, the cluster's membership) or the
//! developers (a bug). What a client can do about a single request is [`RequestError`].
//!
//! Every message names what failed, where, and what to do.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use storage::space::{describe_free_bytes, human_bytes};
use storage::NodeId;

use crate::raft::ProposeError;

/// A failure that stopped a running node (fail-stop): `/healthz` answers `503 failed` with
/// it and `raftlog serve` exits 1 printing it.
#[derive(Debug, thiserror::Error)]
pub enum NodeFailure {
    /// The operator must check the disk: a write the node cannot go on without failed, and
    /// after a failed write or fsync nothing more can be acknowledged safely.
    #[error("cannot {step}: {source}; stopping the node: check the disk that holds the data directory, then restart the node")]
    Storage {
        /// What the node was doing.
        step: StorageStep,
        /// The storage error, naming file and offset.
        #[source]
        source: storage::Error,
    },
    /// The operator must repair the data directory: a snapshot the node holds durably
    /// cannot be read back into the state machine.
    #[error("{dir}: cannot restore the state machine from snapshot {index}: {source}; restore the data directory from a backup, or remove it and re-add this node as a new member")]
    SnapshotRestore {
        /// The node's data directory.
        dir: PathBuf,
        /// The snapshot's last index.
        index: u64,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The operator must act on the cluster's membership: this node's data was lost or it
    /// was removed; the message says the way back.
    #[error(transparent)]
    Membership(Box<MembershipLoss>),
    /// The operator must fix the machine: a resource the node needs could not be set up.
    #[error("cannot {what}: {source}; check the machine's resources (memory, file descriptors) and restart the node")]
    Environment {
        /// What the node tried.
        what: &'static str,
        /// Why it failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A bug: a thread of the node panicked (the panic and its location are printed
    /// above). Please report it with the node's log.
    #[error("the {thread} thread panicked: {message}; the node stops rather than serve without it (a bug: please report it with the node's log)")]
    Panicked {
        /// The thread: apply, persist, snapshot, raft loop.
        thread: &'static str,
        /// The panic's message.
        message: String,
    },
    /// The Raft core stopped on a storage read it cannot trust (a damaged or inconsistent
    /// log): the operator must check the data directory.
    #[error("the Raft core stopped: {0}; check the data directory, restore it from a backup or re-add this node as a new member")]
    CoreStopped(#[source] crate::raft::StorageError),
    /// The node was asked to stop while it waited for disk space; not a failure of its own.
    #[error("the node stopped while its disk was full")]
    StoppedWhileDiskFull,
    /// The node's activities ended without naming a failure (the process is stopping).
    #[error("the node stopped")]
    Stopped,
}

/// What the node was doing with its storage when it failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StorageStep {
    /// Appending entries to the WAL (write and fdatasync).
    AppendWal,
    /// Dropping a conflicting log suffix from this index on (Raft §5.3).
    TruncateSuffix {
        /// The first index dropped.
        from: u64,
    },
    /// Saving term and vote in the stable store.
    SaveHardState,
    /// Making the log start after a snapshot.
    CompactToSnapshot {
        /// The snapshot's last index.
        index: u64,
    },
    /// Opening a snapshot the node installed.
    OpenSnapshot {
        /// The snapshot's last index.
        index: u64,
    },
    /// Recording the first start of the cluster.
    MarkBootstrapped,
}

impl std::fmt::Display for StorageStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StorageStep::AppendWal => write!(f, "append to the write-ahead log"),
            StorageStep::TruncateSuffix { from } => write!(f, "truncate the log from {from}"),
            StorageStep::SaveHardState => write!(f, "persist term and vote"),
            StorageStep::CompactToSnapshot { index } => {
                write!(f, "compact the log to snapshot {index}")
            }
            StorageStep::OpenSnapshot { index } => write!(f, "open installed snapshot {index}"),
            StorageStep::MarkBootstrapped => {
                write!(f, "record the first start of the cluster")
            }
        }
    }
}

impl NodeFailure {
    /// Wraps a storage error with the step that failed.
    pub fn storage(step: StorageStep) -> impl Fn(storage::Error) -> NodeFailure + Copy {
        move |source| NodeFailure::Storage { step, source }
    }

    /// Who must act on this failure.
    pub fn who_acts(&self) -> WhoActs {
        match self {
            NodeFailure::Storage { .. }
            | NodeFailure::SnapshotRestore { .. }
            | NodeFailure::Membership(_)
            | NodeFailure::Environment { .. }
            | NodeFailure::CoreStopped(_) => WhoActs::Operator,
            NodeFailure::Panicked { .. } => WhoActs::Developer,
            NodeFailure::StoppedWhileDiskFull | NodeFailure::Stopped => WhoActs::Nobody,
        }
    }
}

/// Why [`crate::node::Node::snapshot`] gave no snapshot. The node keeps running either way.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SnapshotFailed {
    /// The operator must check the snapshot directory: writing the snapshot failed. The
    /// log keeps growing until one succeeds; automatic attempts are retried with backoff.
    #[error(
        "cannot write snapshot {index}: {source}; check the snapshot directory and free disk space"
    )]
    Write {
        /// The last index the snapshot was to cover.
        index: u64,
        /// What failed (shared by every request waiting for that snapshot).
        #[source]
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
    /// The node is stopping: nobody needs to act.
    #[error("the node is stopping")]
    Stopping,
}

/// How this node lost its place in the cluster, with the commands that bring it back.
#[derive(Debug, thiserror::Error)]
pub enum MembershipLoss {
    /// The cluster removed this node (a committed membership entry no longer names it).
    #[error(transparent)]
    Removed(Removal),
    /// The cluster removed this node, and the tombstone that would refuse a restart on the
    /// same data could not be saved.
    #[error(
        "node {id} was removed from the cluster (membership entry {removed_at_index}) but \
         the tombstone could not be saved: {source}; delete {} before starting it again, \
         with `--join`",
        .dir.display()
    )]
    RemovedTombstoneUnsaved {
        /// This node.
        id: NodeId,
        /// Its data directory.
        dir: PathBuf,
        /// Log index at or past the membership entry that no longer names it.
        removed_at_index: u64,
        /// Why the tombstone was not saved.
        #[source]
        source: storage::Error,
    },
    /// This node starts with an empty data directory while a peer holds the cluster's
    /// state: its data was lost, and voting with an empty log could lose acknowledged
    /// writes (a replaced disk).
    #[error(
        "node {id} starts with an empty data directory ({}), but node {peer} ({peer_api_addr}) \
         holds state for cluster {cluster_id} (term {peer_term}, last log index \
         {peer_last_log_index}, snapshot index {peer_snapshot_index}): this node's data was \
         lost, and voting with an empty log could lose acknowledged writes. Remedy: on the \
         cluster run `raftlog members remove {id} --addr {peer_api_addr}`, then delete {} \
         and start this node with `--join {peer_api_addr}` to be added back as a new learner",
        .dir.display(),
        .dir.display()
    )]
    DataLost {
        /// This node.
        id: NodeId,
        /// Its (empty) data directory.
        dir: PathBuf,
        /// The cluster's id.
        cluster_id: String,
        /// The peer that holds state.
        peer: NodeId,
        /// That peer's client address.
        peer_api_addr: String,
        /// That peer's term.
        peer_term: u64,
        /// That peer's last log index.
        peer_last_log_index: u64,
        /// That peer's snapshot index.
        peer_snapshot_index: u64,
    },
}

impl From<MembershipLoss> for NodeFailure {
    /// Boxed: the facts of a membership loss would otherwise double the size of every
    /// `Result<_, NodeFailure>` on the write path.
    fn from(loss: MembershipLoss) -> NodeFailure {
        NodeFailure::Membership(Box::new(loss))
    }
}

impl MembershipLoss {
    /// This node's id.
    pub fn id(&self) -> NodeId {
        match self {
            MembershipLoss::Removed(removal) => removal.id,
            MembershipLoss::RemovedTombstoneUnsaved { id, .. }
            | MembershipLoss::DataLost { id, .. } => *id,
        }
    }
}

/// Who can act on a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhoActs {
    /// The operator: disk, configuration, data directory, membership.
    Operator,
    /// The developers: a bug.
    Developer,
    /// Nobody: the node was asked to stop.
    Nobody,
}

/// Why the durable state of a data directory cannot be started from: the operator must
/// restore it from a backup or re-add the node as a new member.
#[derive(Debug, thiserror::Error)]
pub enum Inconsistency {
    /// The log survived but the term and vote did not: restarting at term 0 could let the
    /// node vote twice in a term.
    #[error("the stable store (term, vote, membership) is missing or empty but the log holds entries up to {last_index}; the node cannot know whom it voted for")]
    StableStoreLost {
        /// The last index in the log.
        last_index: u64,
    },
    /// The log starts after the newest usable snapshot: entries in between are lost.
    #[error("the log starts at entry {first_index} but the newest usable snapshot ends at {snapshot_index}{skipped}: entries in between are lost")]
    LogGap {
        /// The first index in the log.
        first_index: u64,
        /// The last index of the newest snapshot that verified.
        snapshot_index: u64,
        /// Newer snapshot files that failed verification, if any.
        skipped: SkippedSnapshots,
    },
    /// The log could not be made to start after the snapshot.
    #[error("{0}")]
    Reconcile(#[source] Box<NodeFailure>),
    /// The snapshot does not restore into the state machine.
    #[error("cannot restore the state machine from snapshot {index}: {source}")]
    SnapshotRestore {
        /// The snapshot's last index.
        index: u64,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Snapshot files newer than the one a start used, skipped because they failed
/// verification (the reason for each is in the log above the error).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SkippedSnapshots(pub Vec<PathBuf>);

impl std::fmt::Display for SkippedSnapshots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            return Ok(());
        }
        write!(f, " (newer snapshot ")?;
        for (i, path) in self.0.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{}", path.display())?;
        }
        write!(f, " failed verification)")
    }
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Storage could not be opened or recovered.
    #[error("{0}")]
    Storage(#[from] storage::Error),
    /// The peer transport could not start; its error names the address and what to check.
    #[error("cannot start the peer transport: {source}")]
    Transport {
        /// The raft address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The raft loop's thread could not start (the process is out of threads or memory).
    #[error("cannot start the raft thread: {0}; check the limits on threads and memory (ulimit -u, ulimit -v)")]
    RaftThread(#[source] std::io::Error),
    /// The durable state is inconsistent: the operator must restore the data directory
    /// from a backup, or remove it and re-add this node as a new member.
    #[error("{}: {problem}. Restore the data directory from a backup, or remove it and re-add this node as a new member", dir.display())]
    Inconsistent {
        /// The node's data directory.
        dir: PathBuf,
        /// What does not add up.
        #[source]
        problem: Inconsistency,
    },
    /// This node was removed from the cluster (its stable store holds a tombstone).
    #[error("{0}")]
    Removed(Removal),
}

/// Why a client request failed: each variant says what the client may do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// This node does not lead; `leader` if known. Nothing was proposed: retry there.
    #[error("this node does not lead (leader: {0:?}); nothing was proposed; retry on the leader")]
    NotLeader(Option<NodeId>),
    /// The node is shutting down or failed. Nothing was proposed.
    #[error("the node is stopping; nothing was proposed; retry on another node")]
    Stopped,
    /// The outcome is unknown (timeout, or a snapshot replaced the log around it).
    #[error("the outcome is unknown: the command may or may not take effect")]
    Unknown,
    /// The write was proposed but another entry committed at its index: not applied.
    #[error("leadership changed before the command committed; it was not applied; safe to retry")]
    NotCommitted,
    /// Issue 12, diskfull: the disk is full or the storage quota reached, naming the
    /// directory and its space. Nothing was proposed.
    #[error("{0}")]
    NoSpace(NoSpace),
    /// Too much is pending on `node`: `limit` names the bound that was hit and its value.
    /// Nothing was proposed; retry with backoff.
    #[error("node {node}: {limit}; nothing was proposed; retry with backoff")]
    Overloaded {
        /// The node that refused.
        node: NodeId,
        /// The bound that was hit.
        limit: Overload,
    },
    /// The leader is handing over leadership (thesis §3.10: it takes no proposals for at
    /// most an election timeout). Nothing was proposed.
    #[error("the leader is handing over leadership; nothing was proposed; retry shortly")]
    TransferInProgress,
    /// The command was not applied; the reason says why.
    #[error("{0}")]
    NotApplied(NotApplied),
}

/// Why a write was refused for lack of space (`507 no_space`): the operator must free
/// space or raise the quota; the client may retry on another node meanwhile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoSpace {
    /// The WAL refused an append for lack of space and the node is retrying it.
    #[error(
        "the disk holding this node's data directory {} is full ({}): the node cannot \
         persist new entries; nothing was proposed. Free space on that filesystem (or grow \
         it): the node resumes on its own within a second; other nodes may still accept \
         writes",
        .dir.display(),
        describe_free_bytes(Some(*.free_bytes))
    )]
    DiskFull {
        /// The node's data directory.
        dir: PathBuf,
        /// Bytes free on its filesystem, as last measured.
        free_bytes: u64,
    },
    /// The data directory, plus the write and the next WAL segment, would pass
    /// `storage_quota_bytes`.
    #[error(
        "storage quota reached: this node's data directory {} uses {used_bytes} bytes ({}) \
         of its storage_quota_bytes {quota_bytes} ({}), and the next WAL segment ({}) would \
         not fit; {} on its filesystem; nothing was proposed. Reclaim space with a snapshot \
         (POST /v1/snapshot compacts the log), or raise storage_quota_bytes and restart the \
         node",
        .dir.display(),
        human_bytes(*.used_bytes),
        human_bytes(*.quota_bytes),
        human_bytes(*.segment_bytes),
        describe_free_bytes(Some(*.free_bytes))
    )]
    QuotaReached {
        /// The node's data directory.
        dir: PathBuf,
        /// Bytes it occupies, as last measured.
        used_bytes: u64,
        /// `storage_quota_bytes`.
        quota_bytes: u64,
        /// What the next WAL segment allocates.
        segment_bytes: u64,
        /// Bytes free on its filesystem, as last measured.
        free_bytes: u64,
    },
}

/// The bound a refused write hit (`503 overloaded`): the client retries with backoff; an
/// operator seeing many may raise the bound named.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Overload {
    /// Bytes of client writes in progress on this node (`pending_write_bytes_max`).
    #[error(
        "writes in progress hold {held_bytes} of its {budget_bytes} bytes of write budget \
         (pending_write_bytes_max) and this one needs {wanted_bytes}"
    )]
    PendingBytes {
        /// Bytes of the budget held by writes in progress.
        held_bytes: u64,
        /// The whole budget.
        budget_bytes: u64,
        /// What this write asked for (its body).
        wanted_bytes: u64,
    },
    /// Requests waiting for the raft loop.
    #[error("its request queue is full ({capacity} requests)")]
    RequestQueue {
        /// How many requests the queue holds.
        capacity: usize,
    },
    /// Proposals in flight: the leader's uncommitted entries.
    #[error("as leader it holds too many uncommitted entries (at most {max_entries})")]
    ProposalsInFlight {
        /// The most uncommitted entries a leader keeps.
        max_entries: u64,
    },
    /// Uncommitted payload bytes on the leader (`max_uncommitted_bytes`).
    #[error(
        "as leader {uncommitted_bytes} bytes are uncommitted and the proposal adds \
         {proposal_bytes}, past the bound of {max_bytes} bytes (max_uncommitted_bytes)"
    )]
    UncommittedBytes {
        /// Payload bytes of the leader's entries not yet committed.
        uncommitted_bytes: u64,
        /// Payload bytes of the refused proposal.
        proposal_bytes: u64,
        /// `max_uncommitted_bytes`.
        max_bytes: u64,
    },
}

/// Why a command was proposed, or offered, but not applied (`500 internal` through the
/// API, which answers a client session's outcomes itself).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotApplied {
    /// A bug: the Raft core refused a client command for a reason that only applies to
    /// membership changes.
    #[error(
        "node {node}: the core refused a client command as if it were a membership change \
         ({reason}); nothing was proposed; please report this"
    )]
    RefusedAsMembershipChange {
        /// The node whose core refused.
        node: NodeId,
        /// What the core said.
        reason: ProposeError,
    },
    /// The state machine did not apply the command: the client session's verdict.
    #[error("the command was not applied: {0}")]
    Refused(Refusal),
}

/// The state machine's reason for not applying a command (see [`crate::kv::Applied`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The request id is older than its client's latest applied one.
    #[error("its request id is older than the client's latest applied request (Stale)")]
    StaleRequestId,
    /// The client's latest request id came with another command.
    #[error(
        "its request id was already used for another command, applied at index {index} (Reused)"
    )]
    RequestIdReused {
        /// Where the command owning the id was applied.
        index: u64,
    },
    /// A retry whose first outcome the session table no longer knows.
    #[error(
        "it retries a request applied at index {index} whose outcome is no longer known (Expired)"
    )]
    SessionExpired {
        /// Where the first attempt was applied.
        index: u64,
    },
    /// The entry did not decode as a command.
    #[error("the entry did not decode as a command (Invalid)")]
    Undecodable,
}

impl Refusal {
    /// The state machine's response to an applied command, or why it was not applied.
    pub fn response(applied: crate::kv::Applied) -> Result<Vec<u8>, Refusal> {
        use crate::kv::Applied;
        match applied {
            Applied::Fresh(response) | Applied::Duplicate { response, .. } => Ok(response),
            Applied::Stale => Err(Refusal::StaleRequestId),
            Applied::Reused { index } => Err(Refusal::RequestIdReused { index }),
            Applied::Expired { index } => Err(Refusal::SessionExpired { index }),
            Applied::Invalid => Err(Refusal::Undecodable),
        }
    }
}

/// A node started, or running, on the data of a member the cluster removed: the operator
/// must delete its data directory and join it anew.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "node {id} was removed from the cluster (membership entry {removed_at_index}); its data \
     in {} is kept only for inspection. To bring it back: delete {}, then start it with \
     `--join <api addr of a member>` to be added as a new learner",
    .dir.display(),
    .dir.display()
)]
pub struct Removal {
    /// This node.
    pub id: NodeId,
    /// Its data directory.
    pub dir: PathBuf,
    /// Log index at or past the committed membership entry that no longer names it.
    pub removed_at_index: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node whose raft address is taken names the address once and says what to check
    /// (the transport's error already carries both).
    #[tokio::test]
    async fn a_busy_peer_port_is_named_once() {
        let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port");
        let addr = busy.local_addr().expect("its address");
        let config = crate::transport::TransportConfig::new(1, "c", addr, Default::default());
        let source = crate::transport::Transport::start(config)
            .await
            .err()
            .expect("the port is taken");
        let message = StartError::Transport { addr, source }.to_string();
        assert_eq!(message.matches(&addr.to_string()).count(), 1, "{message}");
        assert!(
            message.contains("is another node running there?"),
            "{message}"
        );
    }

    fn io_error() -> storage::Error {
        storage::Error::io(
            "fdatasync",
            "/data/node-1/wal/00000000000000000001.wal",
            std::io::Error::from_raw_os_error(libc::EIO),
        )
    }

    #[test]
    fn storage_failures_name_the_step_the_file_and_the_remedy_for_the_operator() {
        let failure = NodeFailure::storage(StorageStep::SaveHardState)(io_error());
        let text = failure.to_string();
        // tests/failpoints.rs and operators grep for these words.
        assert!(text.starts_with("cannot persist term and vote: "), "{text}");
        assert!(text.contains("00000000000000000001.wal"), "{text}");
        assert!(text.contains("check the disk"), "{text}");
        assert_eq!(failure.who_acts(), WhoActs::Operator);
        let truncate = NodeFailure::storage(StorageStep::TruncateSuffix { from: 7 })(io_error());
        assert!(truncate
            .to_string()
            .starts_with("cannot truncate the log from 7: "));
    }

    #[test]
    fn a_panic_is_a_bug_and_names_its_thread() {
        let failure = NodeFailure::Panicked {
            thread: "apply",
            message: "boom".to_string(),
        };
        // tests/fail_stop.rs looks for this phrase in the node's output.
        assert!(failure
            .to_string()
            .contains("the apply thread panicked: boom"));
        assert_eq!(failure.who_acts(), WhoActs::Developer);
        assert_eq!(NodeFailure::Stopped.who_acts(), WhoActs::Nobody);
    }

    #[test]
    fn inconsistencies_say_what_is_lost() {
        let gap = Inconsistency::LogGap {
            first_index: 501,
            snapshot_index: 200,
            skipped: SkippedSnapshots::default(),
        };
        // tests/snapshots.rs looks for this phrase.
        assert!(gap
            .to_string()
            .starts_with("the log starts at entry 501 but the newest usable snapshot ends at 200"));
        let lost = Inconsistency::StableStoreLost { last_index: 9 };
        assert!(lost.to_string().contains("cannot know whom it voted for"));
    }

    #[test]
    fn a_removed_node_is_told_the_way_back() {
        let removal = Removal {
            id: 3,
            dir: PathBuf::from("/data/node-3"),
            removed_at_index: 41,
        };
        // tests/removed_node.rs looks for the first phrase in the node's output.
        assert_eq!(
            removal.to_string(),
            "node 3 was removed from the cluster (membership entry 41); its data in \
             /data/node-3 is kept only for inspection. To bring it back: delete /data/node-3, \
             then start it with `--join <api addr of a member>` to be added as a new learner"
        );
        assert_eq!(
            StartError::Removed(removal.clone()).to_string(),
            removal.to_string()
        );
    }

    #[test]
    fn a_stopped_core_names_the_storage_error_and_the_operator_remedy() {
        let failure = NodeFailure::CoreStopped(crate::raft::StorageError::NotInLog(
            crate::raft::NotInLog::Unavailable {
                index: 9,
                last_index: 7,
            },
        ));
        let text = failure.to_string();
        assert!(
            text.starts_with("the Raft core stopped: entry 9 is beyond the end of the log"),
            "{text}"
        );
        assert!(text.contains("check the data directory"), "{text}");
        assert!(
            std::error::Error::source(&failure).is_some(),
            "the cause stays reachable"
        );
        assert_eq!(failure.who_acts(), WhoActs::Operator);
    }
}
