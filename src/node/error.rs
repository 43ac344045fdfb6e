//! Why a node stops or refuses to start, typed by who can act (openraft's `Fatal` beside its
//! `APIError`): the operator (the disk, the data directory, the cluster's membership) or the
//! developers (a bug). What a client can do about a single request is [`RequestError`].
//!
//! Every message names what failed, where, and what to do.

use std::net::SocketAddr;
use std::path::PathBuf;

use storage::NodeId;

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
    #[error("{remedy}")]
    Membership {
        /// This node.
        id: NodeId,
        /// What happened and the commands that bring the node back.
        remedy: String,
    },
    /// The operator must fix the machine: a resource the node needs could not be set up.
    #[error("cannot {what}: {reason}; check the machine's resources (memory, file descriptors) and restart the node")]
    Environment {
        /// What the node tried.
        what: &'static str,
        /// Why it failed.
        reason: String,
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
    CoreStopped(String),
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
            | NodeFailure::Membership { .. }
            | NodeFailure::Environment { .. }
            | NodeFailure::CoreStopped(_) => WhoActs::Operator,
            NodeFailure::Panicked { .. } => WhoActs::Developer,
            NodeFailure::StoppedWhileDiskFull | NodeFailure::Stopped => WhoActs::Nobody,
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
        /// Newer snapshot files that failed verification, if any (` (newer snapshot … failed
        /// verification)`).
        skipped: String,
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

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Storage could not be opened or recovered.
    #[error("{0}")]
    Storage(#[from] storage::Error),
    /// The peer transport could not start.
    #[error("cannot listen for peers on {addr}: {source}")]
    Transport {
        /// The raft address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
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
    Removed(String),
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
    /// Issue 12, diskfull: the disk is full or the storage quota reached (the message
    /// says which, naming the directory and its space). Nothing was proposed.
    #[error("{0}")]
    NoSpace(String),
    /// Too much is pending; the message names the limit that was hit. Nothing was proposed.
    #[error("{0}")]
    Overloaded(String),
    /// The leader is handing over leadership (thesis §3.10: it takes no proposals for at
    /// most an election timeout). Nothing was proposed.
    #[error("the leader is handing over leadership; nothing was proposed; retry shortly")]
    TransferInProgress,
    /// The state machine did not apply the command; the message says why.
    #[error("{0}")]
    NotApplied(String),
}

#[cfg(test)]
mod tests {
    use super::*;

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
            skipped: String::new(),
        };
        // tests/snapshots.rs looks for this phrase.
        assert!(gap
            .to_string()
            .starts_with("the log starts at entry 501 but the newest usable snapshot ends at 200"));
        let lost = Inconsistency::StableStoreLost { last_index: 9 };
        assert!(lost.to_string().contains("cannot know whom it voted for"));
    }
}
