//! One `Ready` loop for the drivers that are not the node: the core's unit-test cluster
//! (`test_cluster`), the simulator (`tests/sim`) and the `raft_core` benchmark.
//!
//! Each of them used to hand-write the same contract: take `Ready`s until none is left,
//! handle each in field order, tell the core a write is durable only once it is, and only
//! then send the messages that waited for it. Here that order lives once; what differs
//! (how messages travel, when and how a write reaches "disk", what applying means, what
//! is checked on the way) stays with the caller, behind [`ReadyHandler`].
//!
//! Like the rest of `raft`, this does no I/O and reads no clock: it is a loop over
//! callbacks. The production node keeps its own loop (`src/node`), which spreads the same
//! steps over a persistence thread and an apply thread.
//!
//! The order, for one `Ready` (see [`Ready`]):
//! 1. `soft_state`;
//! 2. `messages`, sent at once (they never wait for this node's disk, Raft thesis §10.2.1);
//! 3. the write: `snapshot_chunk`, `entries`, `hard_state`, with `persisted_messages`
//!    waiting on it. The handler makes it durable now or later, then calls
//!    [`complete_write`], which reports `on_snapshot_installed` and `on_persisted` and only
//!    then sends the waiting messages (Raft Figure 2: "updated on stable storage before
//!    responding to RPCs");
//! 4. `commit_index`;
//! 5. `committed_entries`, applied, then `on_applied`;
//! 6. `read_states`, `failed_reads`, and the handler's end-of-`Ready` work.

use super::{
    Entry, Envelope, FailedRead, HardState, LogStorage, RaftCore, ReadState, Ready, SnapshotChunk,
    SnapshotMeta, SoftState,
};

/// A core that still has a `Ready` after this many in a row is broken: every `Ready` either
/// empties the core's outputs or waits on something the handler has not done yet.
pub const READY_ROUNDS_MAX: usize = 1000;

/// What one `Ready` asks to make durable, and the messages that wait until it is.
#[derive(Debug, Default)]
pub struct Write {
    /// A received snapshot chunk to persist; with `done`, to install.
    pub snapshot_chunk: Option<SnapshotChunk>,
    /// Entries to append, truncating a conflicting suffix first.
    pub entries: Vec<Entry>,
    /// Term and vote to persist.
    pub hard_state: Option<HardState>,
    /// Messages to send once all of the above (and every earlier write) is durable.
    pub persisted_messages: Vec<Envelope>,
}

impl Write {
    /// Whether anything needs to reach the disk (messages alone do not).
    pub fn has_data(&self) -> bool {
        self.snapshot_chunk.is_some() || !self.entries.is_empty() || self.hard_state.is_some()
    }

    /// Whether the write holds nothing at all, not even messages waiting for earlier writes.
    pub fn is_empty(&self) -> bool {
        !self.has_data() && self.persisted_messages.is_empty()
    }

    /// `(index, term)` of the last entry, the argument of `on_persisted` once durable.
    pub fn last_entry(&self) -> Option<(u64, u64)> {
        self.entries.last().map(|e| (e.index, e.term))
    }
}

/// The parts of a driver that differ: transport, disk, state machine and checks.
///
/// To ensure correctness: `write` must not report the write durable before it is. It
/// either persists it at once and calls [`complete_write`] before returning, or keeps it
/// and calls [`complete_write`] once it is durable, in the order the writes were handed
/// out.
pub trait ReadyHandler {
    /// The core's storage.
    type Storage: LogStorage;
    /// Why the handler stopped (a broken invariant, in the simulator).
    type Error;

    /// The core being driven; `None` if it is gone (a crashed node), which ends the loop.
    fn core(&mut self) -> Option<&mut RaftCore<Self::Storage>>;

    /// Role, leader or term changed.
    fn soft_state(&mut self, _soft: SoftState) -> Result<(), Self::Error> {
        Ok(())
    }

    /// Sends one message. `after_persist`: it waited for a write (`persisted_messages`).
    fn send(&mut self, env: Envelope, after_persist: bool) -> Result<(), Self::Error>;

    /// Sends messages in order; a handler that can move them in one go overrides it.
    fn send_all(
        &mut self,
        messages: Vec<Envelope>,
        after_persist: bool,
    ) -> Result<(), Self::Error> {
        for env in messages {
            self.send(env, after_persist)?;
        }
        Ok(())
    }

    /// Makes `write` durable, now or later, then calls [`complete_write`] (see the trait
    /// documentation). Never called with an empty write.
    fn write(&mut self, write: Write) -> Result<(), Self::Error>;

    /// The commit index the core reports with every `Ready`.
    fn commit_index(&mut self, _commit: u64) -> Result<(), Self::Error> {
        Ok(())
    }

    /// Applies committed entries, in index order; the driver then calls `on_applied`.
    fn apply(&mut self, entries: Vec<Entry>) -> Result<(), Self::Error>;

    /// A read is safe to serve once the state machine reaches its index.
    fn read_state(&mut self, _read: ReadState) -> Result<(), Self::Error> {
        Ok(())
    }

    /// A read this node can no longer serve.
    fn failed_read(&mut self, _read: FailedRead) -> Result<(), Self::Error> {
        Ok(())
    }

    /// Called after each `Ready` is handled.
    fn ready_handled(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }

    /// The error for a core that still had a `Ready` after [`READY_ROUNDS_MAX`] rounds.
    fn ready_never_drains(&mut self) -> Self::Error;
}

/// Takes and handles `Ready`s until the core has none (or is gone). Returns how many it
/// handled.
pub fn drain<H: ReadyHandler>(handler: &mut H) -> Result<usize, H::Error> {
    for handled in 0..READY_ROUNDS_MAX {
        let Some(core) = handler.core() else {
            return Ok(handled);
        };
        if !core.has_ready() {
            return Ok(handled);
        }
        let ready = core.take_ready();
        if ready.is_empty() {
            // has_ready() may be conservative (a leader with nothing left to send).
            return Ok(handled);
        }
        handle_ready(handler, ready)?;
    }
    Err(handler.ready_never_drains())
}

/// Handles one `Ready` in field order (see the module documentation).
pub fn handle_ready<H: ReadyHandler>(handler: &mut H, ready: Ready) -> Result<(), H::Error> {
    if let Some(soft) = ready.soft_state {
        handler.soft_state(soft)?;
    }
    handler.send_all(ready.messages, false)?;
    let has_write = ready.snapshot_chunk.is_some()
        || !ready.entries.is_empty()
        || ready.hard_state.is_some()
        || !ready.persisted_messages.is_empty();
    if has_write {
        handler.write(Write {
            snapshot_chunk: ready.snapshot_chunk,
            entries: ready.entries,
            hard_state: ready.hard_state,
            persisted_messages: ready.persisted_messages,
        })?;
    }
    handler.commit_index(ready.commit_index)?;
    if let Some(last) = ready.committed_entries.last().map(|e| e.index) {
        handler.apply(ready.committed_entries)?;
        if let Some(core) = handler.core() {
            core.on_applied(last);
        }
    }
    for read in ready.read_states {
        handler.read_state(read)?;
    }
    for read in ready.failed_reads {
        handler.failed_read(read)?;
    }
    handler.ready_handled()
}

/// A write handed out by a `Ready` is durable: tells the core (the installed snapshot
/// first, then the entries), then sends the messages that waited for it. `installed`: the
/// snapshot the write's last chunk completed; `last_entry`: [`Write::last_entry`].
#[inline]
pub fn complete_write<H: ReadyHandler>(
    handler: &mut H,
    installed: Option<SnapshotMeta>,
    last_entry: Option<(u64, u64)>,
    persisted_messages: Vec<Envelope>,
) -> Result<(), H::Error> {
    if let Some(core) = handler.core() {
        if let Some(meta) = installed {
            core.on_snapshot_installed(meta);
        }
        if let Some((index, term)) = last_entry {
            core.on_persisted(index, term);
        }
    }
    handler.send_all(persisted_messages, true)
}
