//! raftlog: a durable, Raft-replicated log service with snapshots, and a key-value
//! cluster built on it.
//!
//! - [`raft`]: the consensus core, a pure deterministic state machine.
//! - `storage` (workspace crate): the write-ahead log, stable store and snapshot files.
//! - [`node`]: drives the core with a real disk, clock and sockets; [`kv`] and [`api`] are
//!   the key-value store and HTTP API `raftlog serve` runs on it.
//!
//! # Embedding a node
//! A node replicates the commands of any [`StateMachine`]: `apply` (deterministic: every
//! node applies the same commands in the same order), `snapshot` (a frozen view written
//! on another thread) and `restore`. [`start`] opens or recovers the data directory and
//! returns a [`Node`], the handle to propose and read with:
//!
//! - [`Node::propose`] appends a command, waits until a majority holds it on disk (fsync'd)
//!   and this node applied it, and returns its log index and the state machine's answer.
//!   Only the leader takes proposals: elsewhere it fails with [`RequestError::NotLeader`]
//!   naming the leader if known, and nothing was proposed.
//! - [`Node::read`] runs a closure on the state machine after a linearizable read barrier
//!   (Raft thesis §6.4); [`Node::read_local`] reads this node's state as it stands.
//! - [`Node::write`] is `propose` with a client session ([`Command`] with a
//!   [`RequestId`]): a retried request is applied once and answered with its first outcome.
//!
//! A one-node cluster with a replicated counter (`examples/counter.rs` is the same):
//!
//! ```
//! use std::io::{self, Read, Write};
//! use std::time::Duration;
//!
//! use raftlog::{NodeOptions, RequestError, SnapshotSource, StateMachine};
//!
//! /// Commands are little-endian i64 deltas; the answer is the new total.
//! #[derive(Default)]
//! struct Counter(i64);
//!
//! impl StateMachine for Counter {
//!     fn apply(&mut self, _index: u64, command: &[u8]) -> Vec<u8> {
//!         self.0 += command.try_into().map(i64::from_le_bytes).unwrap_or(0);
//!         self.0.to_le_bytes().to_vec()
//!     }
//!
//!     fn snapshot(&self) -> Box<dyn SnapshotSource> {
//!         Box::new(Frozen(self.0))
//!     }
//!
//!     fn restore(&mut self, reader: &mut dyn Read) -> io::Result<()> {
//!         let mut bytes = [0u8; 8];
//!         reader.read_exact(&mut bytes)?;
//!         self.0 = i64::from_le_bytes(bytes);
//!         Ok(())
//!     }
//! }
//!
//! struct Frozen(i64);
//!
//! impl SnapshotSource for Frozen {
//!     fn write_to(&self, writer: &mut dyn Write) -> io::Result<()> {
//!         writer.write_all(&self.0.to_le_bytes())
//!     }
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let dir = tempfile::tempdir()?;
//!     let raft_addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
//!     let node = raftlog::start(NodeOptions::new(1, dir.path(), raft_addr), Counter(0)).await?;
//!
//!     let timeout = Duration::from_secs(5);
//!     for delta in [5i64, 10, -3] {
//!         // The node elects itself within an election timeout; until then it refuses.
//!         loop {
//!             match node.propose(&delta.to_le_bytes(), timeout).await {
//!                 Ok((_index, _total)) => break,
//!                 Err(RequestError::NotLeader(_)) => {
//!                     tokio::time::sleep(Duration::from_millis(20)).await
//!                 }
//!                 Err(e) => return Err(e.into()),
//!             }
//!         }
//!     }
//!     assert_eq!(node.read(timeout, |counter: &Counter| counter.0).await?, 12);
//!     Ok(())
//! }
//! ```

#![deny(missing_docs)]
pub mod api;
pub mod cli;
mod coalesce;
pub mod config;
#[doc(hidden)]
pub mod fuzzing;
pub mod kv;
pub mod node;
pub mod raft;
pub mod security;
pub mod session;
pub mod state_machine;
pub mod transport;

pub use storage;

pub use node::{
    start, Inconsistency, MembershipLoss, NoSpace, Node, NodeFailure, NodeOptions, NotApplied,
    Overload, Refusal, Removal, RequestError, SkippedSnapshots, SnapshotFailed, StartError,
};
pub use session::{Applied, Command, RequestId};
pub use state_machine::{SnapshotSource, StateMachine};
pub use storage::{Entry, EntryKind, Member, Membership, NodeId};
