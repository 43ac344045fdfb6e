//! raftlog's storage engine.
//!
//! Three durable structures, each owned by one module:
//! - [`wal`]: the segmented write-ahead log of Raft entries (group commit, mmap reads).
//! - [`stable`]: the sled-backed stable store for what the node must never forget
//!   (current term, vote, membership).
//! - [`snapshot`]: checksummed snapshot files, written and read as streams of chunks.
//!
//! The types in this file are shared with the Raft core, which depends on them but not
//! on any of the I/O above.
#![deny(missing_docs)]

pub mod dir;
pub mod error;
pub mod failpoint;
pub mod fuzzing;
pub mod pacing;
pub mod snapshot;
pub mod space;
pub mod stable;
pub mod wal;

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub use error::{Error, NotInLog, Result};

/// A node's identity within a cluster. Positive; 0 means "nobody".
pub type NodeId = u64;

/// What an entry carries. The discriminants are part of the on-disk format; 0 is
/// reserved so that zero-filled (preallocated) space never decodes as an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[repr(u8)]
pub enum EntryKind {
    /// A client command for the state machine.
    Normal = 1,
    /// The empty entry a new leader appends to commit entries of earlier terms (Raft §5.4.2).
    Noop = 2,
    /// A bincode-encoded [`Membership`]; takes effect as soon as it is appended (Raft §4.1).
    Membership = 3,
}

impl EntryKind {
    /// Decodes the on-disk byte; `None` for anything that is not a kind.
    pub fn from_u8(byte: u8) -> Option<EntryKind> {
        match byte {
            1 => Some(EntryKind::Normal),
            2 => Some(EntryKind::Noop),
            3 => Some(EntryKind::Membership),
            _ => None,
        }
    }
}

/// One Raft log entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Position in the log, starting at 1.
    pub index: u64,
    /// Term of the leader that created the entry.
    pub term: u64,
    /// What the payload is.
    pub kind: EntryKind,
    /// Opaque to storage; cheap to clone so the core can send one entry to many followers.
    pub payload: Bytes,
}

impl Entry {
    /// The bytes this entry costs in messages and batches: payload plus a fixed header.
    pub fn size_bytes(&self) -> u64 {
        self.payload.len() as u64 + 24
    }
}

/// The part of Raft state that must be durable before a node answers a vote or an append
/// (Raft Figure 2: "updated on stable storage before responding to RPCs").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardState {
    /// The latest term this node has seen.
    pub term: u64,
    /// The candidate this node voted for in `term`, if any.
    pub voted_for: Option<NodeId>,
}

/// A member of the cluster: where to reach it and whether it votes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Address of the peer transport (Raft messages).
    pub raft_addr: String,
    /// Address of the client HTTP API.
    pub api_addr: String,
    /// Voters count toward quorums; learners (non-voters) only receive the log.
    pub voter: bool,
}

/// A cluster configuration. Lives in the log (as [`EntryKind::Membership`] entries), in
/// snapshot metadata, and in the stable store for bootstrap.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// Every member, voters and learners, by id.
    pub members: BTreeMap<NodeId, Member>,
}

impl Membership {
    /// A cluster of one voter: how a node started alone, and many tests, begin.
    pub fn single_voter(
        id: NodeId,
        raft_addr: impl Into<String>,
        api_addr: impl Into<String>,
    ) -> Membership {
        let member = Member {
            raft_addr: raft_addr.into(),
            api_addr: api_addr.into(),
            voter: true,
        };
        Membership {
            members: BTreeMap::from([(id, member)]),
        }
    }

    /// Ids of the members that vote.
    pub fn voters(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.members
            .iter()
            .filter(|(_, m)| m.voter)
            .map(|(id, _)| *id)
    }

    /// Ids of the members that do not vote.
    pub fn learners(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.members
            .iter()
            .filter(|(_, m)| !m.voter)
            .map(|(id, _)| *id)
    }

    /// Whether `id` is a voting member.
    pub fn is_voter(&self, id: NodeId) -> bool {
        self.members.get(&id).is_some_and(|m| m.voter)
    }
}

/// Describes a snapshot: the state machine after applying every entry up to `last_index`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// Index of the last entry the snapshot covers (0: no snapshot).
    pub last_index: u64,
    /// Term of that entry.
    pub last_term: u64,
    /// The membership in effect at `last_index`.
    pub membership: Membership,
}
