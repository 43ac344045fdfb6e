//! The core state machine. (Skeleton: the public API other modules build against.)

use bytes::Bytes;

use super::{
    Config, Envelope, HardState, LogStorage, Membership, MembershipChange, NodeId, ProposeError,
    ReadMode, Ready, SnapshotMeta, Status,
};

/// One Raft node's consensus state. See the module docs of [`crate::raft`].
pub struct RaftCore<S: LogStorage> {
    _config: Config,
    _storage: S,
}

impl<S: LogStorage> RaftCore<S> {
    /// Restores a core from durable state: `hard_state` from the stable store, the log and
    /// snapshot through `storage`. The membership is the latest configuration in the log,
    /// else the snapshot's, else `bootstrap` (the initial voters of a new cluster).
    pub fn new(config: Config, storage: S, hard_state: HardState, bootstrap: Membership) -> Self {
        let _ = (hard_state, bootstrap);
        RaftCore {
            _config: config,
            _storage: storage,
        }
    }

    /// The storage the core reads from.
    pub fn storage(&self) -> &S {
        &self._storage
    }

    /// Mutable access for the driver (to append, truncate, install snapshots).
    pub fn storage_mut(&mut self) -> &mut S {
        &mut self._storage
    }

    /// Consumes the core and returns its storage (the simulator models a crash by taking
    /// the durable storage out of a dead core and building a new core from it).
    pub fn into_storage(self) -> S {
        self._storage
    }

    /// Advances logical time by one tick.
    pub fn tick(&mut self) {
        todo!()
    }

    /// Handles a message from a peer.
    pub fn step(&mut self, envelope: Envelope) {
        let _ = envelope;
        todo!()
    }

    /// Appends a client command; returns its `(index, term)`. It is committed when an
    /// entry with this index and term appears in `Ready::committed_entries`.
    pub fn propose(&mut self, data: Bytes) -> Result<(u64, u64), ProposeError> {
        let _ = data;
        todo!()
    }

    /// Appends a membership change; `(index, term)` as for [`RaftCore::propose`].
    pub fn propose_membership_change(
        &mut self,
        change: MembershipChange,
    ) -> Result<(u64, u64), ProposeError> {
        let _ = change;
        todo!()
    }

    /// Starts a leadership transfer to `to` (thesis §3.10).
    pub fn transfer_leadership(&mut self, to: NodeId) -> Result<(), ProposeError> {
        let _ = to;
        todo!()
    }

    /// Requests a safe read point for the driver's read `ctx`; the answer arrives as a
    /// `ReadState` (or `FailedRead`) in a later `Ready`.
    pub fn read_index(&mut self, ctx: u64, mode: ReadMode) -> Result<(), ProposeError> {
        let _ = (ctx, mode);
        todo!()
    }

    /// The driver made durable everything in the `Ready`s taken so far up to the entry
    /// `(index, term)` (or installed the snapshot ending there).
    pub fn on_persisted(&mut self, index: u64, term: u64) {
        let _ = (index, term);
        todo!()
    }

    /// The driver applied every committed entry up to `index`.
    pub fn on_applied(&mut self, index: u64) {
        let _ = index;
        todo!()
    }

    /// The driver snapshotted its state machine (and stored the snapshot so that
    /// `storage.snapshot_meta()` returns it); lagging followers may now be sent it.
    pub fn on_snapshot_taken(&mut self, meta: SnapshotMeta) {
        let _ = meta;
        todo!()
    }

    /// Whether `take_ready` would return anything.
    pub fn has_ready(&self) -> bool {
        todo!()
    }

    /// Takes the pending outputs. See [`Ready`] for how to handle them.
    pub fn take_ready(&mut self) -> Ready {
        todo!()
    }

    /// The current state, for status reports.
    pub fn status(&self) -> Status {
        todo!()
    }
}
