//! A deterministic in-memory cluster for the core's unit tests: instant, lossless
//! persistence into [`MemStorage`] and message delivery in FIFO order, with directed
//! links that can be cut.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::convert::Infallible;

use bytes::{Bytes, BytesMut};

use super::driver::{self, complete_write, ReadyHandler, Write, READY_ROUNDS_MAX};
use super::{
    Config, Entry, EntryKind, Envelope, FailedRead, HardState, LogStorage, MemStorage, Member,
    Membership, NodeId, RaftCore, ReadState, Role, SnapshotMeta,
};

pub(crate) fn member(voter: bool) -> Member {
    Member {
        raft_addr: String::new(),
        api_addr: String::new(),
        voter,
    }
}

pub(crate) fn voters(ids: &[NodeId]) -> Membership {
    let mut m = Membership::default();
    for id in ids {
        m.members.insert(*id, member(true));
    }
    m
}

/// Test defaults: small, fixed timeouts.
pub(crate) fn test_config(id: NodeId) -> Config {
    let mut c = Config::new(id);
    c.election_timeout_ticks_min = 10;
    c.election_timeout_ticks_max = 20;
    c.heartbeat_interval_ticks = 2;
    c.lease_clock_drift_ticks = 1;
    c
}

pub(crate) struct Cluster {
    pub(crate) nodes: BTreeMap<NodeId, RaftCore<MemStorage>>,
    pub(crate) hard: BTreeMap<NodeId, HardState>,
    /// Entries applied by each node's state machine, in order.
    pub(crate) applied: BTreeMap<NodeId, Vec<Entry>>,
    /// Index each state machine reflects (moves with snapshots too).
    pub(crate) applied_index: BTreeMap<NodeId, u64>,
    pub(crate) read_states: BTreeMap<NodeId, Vec<ReadState>>,
    pub(crate) failed_reads: BTreeMap<NodeId, Vec<FailedRead>>,
    partial_snapshots: BTreeMap<NodeId, BytesMut>,
    pub(crate) queue: VecDeque<Envelope>,
    /// Directed links `(from, to)` that drop everything.
    pub(crate) cut: BTreeSet<(NodeId, NodeId)>,
    /// Every message sent, for assertions.
    pub(crate) sent: Vec<Envelope>,
}

impl Cluster {
    pub(crate) fn new(ids: &[NodeId], tweak: impl Fn(&mut Config)) -> Cluster {
        let mut cluster = Cluster {
            nodes: BTreeMap::new(),
            hard: BTreeMap::new(),
            applied: BTreeMap::new(),
            applied_index: BTreeMap::new(),
            read_states: BTreeMap::new(),
            failed_reads: BTreeMap::new(),
            partial_snapshots: BTreeMap::new(),
            queue: VecDeque::new(),
            cut: BTreeSet::new(),
            sent: Vec::new(),
        };
        for id in ids {
            let mut config = test_config(*id);
            tweak(&mut config);
            let core = RaftCore::new(config, MemStorage::new(), HardState::default(), voters(ids));
            cluster.add(*id, core);
        }
        cluster
    }

    pub(crate) fn add(&mut self, id: NodeId, core: RaftCore<MemStorage>) {
        self.nodes.insert(id, core);
        self.applied.entry(id).or_default();
        self.applied_index.entry(id).or_default();
    }

    pub(crate) fn node(&self, id: NodeId) -> &RaftCore<MemStorage> {
        &self.nodes[&id]
    }

    pub(crate) fn node_mut(&mut self, id: NodeId) -> &mut RaftCore<MemStorage> {
        self.nodes.get_mut(&id).expect("node exists")
    }

    pub(crate) fn leader(&self) -> Option<NodeId> {
        let leaders: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.status().role == Role::Leader)
            .map(|(id, _)| *id)
            .collect();
        leaders
            .iter()
            .max_by_key(|id| self.nodes[id].status().term)
            .copied()
    }

    pub(crate) fn isolate(&mut self, id: NodeId) {
        let others: Vec<NodeId> = self.nodes.keys().copied().filter(|o| *o != id).collect();
        for o in others {
            self.cut.insert((id, o));
            self.cut.insert((o, id));
        }
    }

    pub(crate) fn heal(&mut self) {
        self.cut.clear();
    }

    /// Handles one node's pending Readys through the shared driver.
    pub(crate) fn process(&mut self, id: NodeId) {
        let mut node = ClusterNode { cluster: self, id };
        driver::drain(&mut node).unwrap_or_else(|never| match never {});
    }

    fn enqueue(&mut self, m: Envelope) {
        self.sent.push(m.clone());
        if !self.cut.contains(&(m.from, m.to)) && self.nodes.contains_key(&m.to) {
            self.queue.push_back(m);
        }
    }

    /// Processes Readys and delivers messages until nothing moves.
    pub(crate) fn settle(&mut self) {
        for _ in 0..100_000 {
            let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
            for id in ids {
                self.process(id);
            }
            let Some(m) = self.queue.pop_front() else {
                return;
            };
            if !self.cut.contains(&(m.from, m.to)) {
                self.node_mut(m.to).step(m);
            }
        }
        panic!("cluster did not settle");
    }

    pub(crate) fn tick_all(&mut self, ticks: u32) {
        for _ in 0..ticks {
            let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
            for id in ids {
                self.node_mut(id).tick();
            }
            self.settle();
        }
    }

    /// Ticks only `id` until it campaigns, then settles: elects it if it can win.
    pub(crate) fn elect(&mut self, id: NodeId) {
        for _ in 0..100 {
            self.node_mut(id).tick();
            self.settle();
            if self.node(id).status().role == Role::Leader {
                return;
            }
        }
        panic!(
            "node {id} did not become leader: {:?}",
            self.node(id).status()
        );
    }

    pub(crate) fn propose(&mut self, id: NodeId, data: &'static [u8]) -> (u64, u64) {
        let at = self
            .node_mut(id)
            .propose(Bytes::from_static(data))
            .expect("leader accepts the proposal");
        self.settle();
        at
    }

    /// Payloads of the normal entries node `id` applied.
    pub(crate) fn applied_payloads(&self, id: NodeId) -> Vec<Bytes> {
        self.applied[&id]
            .iter()
            .filter(|e| e.kind == EntryKind::Normal)
            .map(|e| e.payload.clone())
            .collect()
    }

    /// Snapshots node `id`'s state machine at its applied index and compacts its log
    /// up to `compact_to`.
    pub(crate) fn snapshot(&mut self, id: NodeId, data: Bytes, compact_to: u64) -> SnapshotMeta {
        let index = self.applied_index[&id];
        let node = self.node_mut(id);
        let meta = SnapshotMeta {
            last_index: index,
            last_term: node.storage().term(index).expect("applied entry is stored"),
            membership: node.status().membership,
        };
        node.storage_mut().set_snapshot(meta.clone(), data);
        node.storage_mut().compact(compact_to);
        node.on_snapshot_taken(meta.clone());
        meta
    }

    /// Simulates a crash and restart of `id` from its durable state.
    pub(crate) fn restart(&mut self, id: NodeId, bootstrap: Membership) {
        let core = self.nodes.remove(&id).expect("node exists");
        let storage = core.into_storage();
        let snap = storage.snapshot_meta().last_index;
        let hs = self.hard.get(&id).copied().unwrap_or_default();
        self.applied.insert(id, Vec::new());
        self.applied_index.insert(id, snap);
        self.partial_snapshots.remove(&id);
        let core = RaftCore::new(test_config(id), storage, hs, bootstrap);
        self.nodes.insert(id, core);
    }
}

/// One node of the cluster, handed to the shared driver: instant, lossless persistence and
/// FIFO delivery.
struct ClusterNode<'a> {
    cluster: &'a mut Cluster,
    id: NodeId,
}

impl ReadyHandler for ClusterNode<'_> {
    type Storage = MemStorage;
    type Error = Infallible;

    fn core(&mut self) -> Option<&mut RaftCore<MemStorage>> {
        self.cluster.nodes.get_mut(&self.id)
    }

    fn send(&mut self, env: Envelope, _after_persist: bool) -> Result<(), Infallible> {
        self.cluster.enqueue(env);
        Ok(())
    }

    fn write(&mut self, write: Write) -> Result<(), Infallible> {
        let id = self.id;
        let last_entry = write.last_entry();
        let mut installed = None;
        if let Some(chunk) = write.snapshot_chunk {
            let buf = self.cluster.partial_snapshots.entry(id).or_default();
            if chunk.offset == 0 {
                buf.clear();
            }
            assert_eq!(
                chunk.offset,
                buf.len() as u64,
                "node {id}: chunk out of order"
            );
            buf.extend_from_slice(&chunk.data);
            if chunk.done {
                let data = std::mem::take(buf).freeze();
                let meta = chunk.meta;
                self.cluster.applied_index.insert(id, meta.last_index);
                let node = self.cluster.node_mut(id);
                node.storage_mut().install_snapshot(meta.clone(), data);
                installed = Some(meta);
            }
        }
        if !write.entries.is_empty() {
            self.cluster
                .node_mut(id)
                .storage_mut()
                .append(&write.entries);
        }
        if let Some(hs) = write.hard_state {
            self.cluster.hard.insert(id, hs);
        }
        complete_write(self, installed, last_entry, write.persisted_messages)
    }

    fn apply(&mut self, entries: Vec<Entry>) -> Result<(), Infallible> {
        let id = self.id;
        let applied_index = self.cluster.applied_index[&id];
        for e in &entries {
            assert_eq!(
                e.index,
                self.cluster.applied_index[&id] + 1,
                "node {id}: apply gap"
            );
            self.cluster.applied_index.insert(id, e.index);
        }
        assert!(self.cluster.applied_index[&id] > applied_index);
        self.cluster
            .applied
            .get_mut(&id)
            .expect("every node has an applied list")
            .extend(entries);
        Ok(())
    }

    fn read_state(&mut self, read: ReadState) -> Result<(), Infallible> {
        self.cluster
            .read_states
            .entry(self.id)
            .or_default()
            .push(read);
        Ok(())
    }

    fn failed_read(&mut self, read: FailedRead) -> Result<(), Infallible> {
        self.cluster
            .failed_reads
            .entry(self.id)
            .or_default()
            .push(read);
        Ok(())
    }

    /// Tests index `read_states` and `failed_reads` by node once it has handled a Ready.
    fn ready_handled(&mut self) -> Result<(), Infallible> {
        self.cluster.read_states.entry(self.id).or_default();
        self.cluster.failed_reads.entry(self.id).or_default();
        Ok(())
    }

    fn ready_never_drains(&mut self) -> Infallible {
        panic!(
            "node {}: still has a Ready after {READY_ROUNDS_MAX} rounds",
            self.id
        )
    }
}

/// An empty normal entry at `(index, term)`, for tests that only care about positions.
pub fn ent(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        kind: EntryKind::Normal,
        payload: Bytes::new(),
    }
}

/// Storage holding entries 1, 2, ... with the given terms.
pub(crate) fn storage_with(terms: &[u64]) -> MemStorage {
    let mut storage = MemStorage::new();
    let entries: Vec<Entry> = terms
        .iter()
        .enumerate()
        .map(|(i, t)| ent(i as u64 + 1, *t))
        .collect();
    storage.append(&entries);
    storage
}
