//! raftlog: a durable, Raft-replicated log service with snapshots, and a key-value
//! cluster built on it.
//!
//! - [`raft`]: the consensus core, a pure deterministic state machine.
//! - `storage` (workspace crate): the write-ahead log, stable store and snapshot files.

#![deny(missing_docs)]
pub mod api;
pub mod cli;
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
