//! The invariants, one function each, over the cluster-wide history the harness records.
//!
//! Each check runs on the step that can change what it governs (a node taking a `Ready`,
//! applying, persisting, becoming leader, serving a read), which is the same as checking
//! every invariant after every step, at a fraction of the cost: a step that does not touch
//! a node's log cannot break log matching for it.
//!
//! `Checker` keeps the cluster-wide history (leaders per term, every entry seen, the
//! applied history, acknowledged writes); the `impl Sim` block below holds the checks
//! that look at the nodes themselves, and the free functions at the end the contracts
//! of a single answer of the core.

use std::collections::BTreeMap;

use raftlog::raft::{
    Entry, EntryKind, Envelope, HardState, Membership, MembershipChange, Message, NodeId,
    PlantedBug, ProposeError, Role, SnapshotChunk, SnapshotMeta, SoftState,
};

use super::clients::PendingRead;
use super::kv::{decode_write, encode_write, entry_digest, Kv};
use super::node::Node;
use super::world::{Sim, LIVENESS_TICKS};

/// A broken invariant.
#[derive(Clone, Debug)]
pub struct Violation {
    pub invariant: &'static str,
    pub detail: String,
}

pub type Check = Result<(), Violation>;

pub fn violation(invariant: &'static str, detail: String) -> Violation {
    Violation { invariant, detail }
}

/// The terms of one node's log as the core means it to be: durable entries with every
/// write it has handed out applied on top (durable + unstable).
#[derive(Clone, Debug, Default)]
pub struct LogView {
    pub snap_index: u64,
    pub snap_term: u64,
    /// Index of `terms[0]`.
    pub offset: u64,
    pub terms: Vec<u64>,
}

impl LogView {
    pub fn first_index(&self) -> u64 {
        if self.terms.is_empty() {
            self.snap_index + 1
        } else {
            self.offset
        }
    }

    pub fn last_index(&self) -> u64 {
        if self.terms.is_empty() {
            self.snap_index
        } else {
            self.offset + self.terms.len() as u64 - 1
        }
    }

    pub fn term(&self, index: u64) -> Option<u64> {
        if index >= self.offset {
            if let Some(term) = self.terms.get((index - self.offset) as usize) {
                return Some(*term);
            }
        }
        if index == self.snap_index {
            return Some(self.snap_term);
        }
        None
    }

    /// Same truncate-then-append rule as `Durable::append`.
    pub fn append(&mut self, entries: &[Entry]) {
        let Some(first) = entries.first() else {
            return;
        };
        if self.terms.is_empty() || first.index < self.offset {
            self.terms.clear();
            self.offset = first.index;
        } else {
            self.terms.truncate((first.index - self.offset) as usize);
        }
        self.terms.extend(entries.iter().map(|e| e.term));
    }

    pub fn compact_to(&mut self, index: u64) {
        if self.terms.is_empty() || index < self.offset {
            return;
        }
        let drop = ((index - self.offset + 1) as usize).min(self.terms.len());
        self.terms.drain(..drop);
        self.offset = index + 1;
    }

    pub fn install_snapshot(&mut self, last_index: u64, last_term: u64) {
        if self.term(last_index) == Some(last_term) {
            self.compact_to(last_index);
        } else {
            self.terms.clear();
        }
        if self.terms.is_empty() {
            self.offset = last_index + 1;
        }
        self.snap_index = last_index;
        self.snap_term = last_term;
    }
}

/// An entry some node applied: the canonical history every state machine must follow.
#[derive(Clone, Debug)]
pub struct CanonEntry {
    pub term: u64,
    pub digest: u64,
    /// State-machine hash chain after applying this entry.
    pub chain: u64,
    /// An upper bound on the term of the leader that committed the entry: the current term
    /// of the first node that applied it (it learned the commit from a leader of a term no
    /// later than its own).
    pub commit_term_bound: u64,
    pub write: Option<(u8, u64)>,
}

/// What one entry in the log-matching registry must look like wherever it appears.
#[derive(Clone, Copy, Debug)]
struct Registered {
    digest: u64,
    prev_term: Option<u64>,
    first_seen_on: NodeId,
}

/// Cluster-wide history.
#[derive(Default)]
pub struct Checker {
    /// term -> the node that led it.
    leaders: BTreeMap<u64, NodeId>,
    /// (index, term) -> the entry seen there (anywhere: a log, a message).
    registry: BTreeMap<(u64, u64), Registered>,
    /// canon[i - 1]: the entry applied at index i.
    pub canon: Vec<CanonEntry>,
    /// value -> (index, ack time) of every acknowledged write.
    pub acked: BTreeMap<u64, (u64, u64)>,
    /// value -> (key, propose time).
    pub proposed: BTreeMap<u64, (u8, u64)>,
    /// Every read that starts from now on must observe at least this index: the highest
    /// acknowledged write and the highest point any completed read observed.
    pub read_floor: u64,
}

impl Checker {
    /// Election safety (Raft §5.2, Figure 3): at most one leader per term.
    pub fn check_election_safety(&mut self, node: NodeId, term: u64) -> Check {
        match self.leaders.get(&term) {
            Some(&other) if other != node => Err(violation(
                "election safety",
                format!(
                    "node {node} became leader of term {term}, which node {other} already leads"
                ),
            )),
            Some(_) => Ok(()),
            None => {
                self.leaders.insert(term, node);
                Ok(())
            }
        }
    }

    /// Log matching (Raft §5.3, Figure 3): an (index, term) pair names one entry
    /// everywhere, and the same preceding term, so by induction identical prefixes.
    /// `prev_term` is the term of the entry before it where the holder knows it.
    pub fn check_log_matching(
        &mut self,
        node: NodeId,
        entry: &Entry,
        prev_term: Option<u64>,
        where_: &str,
    ) -> Check {
        let digest = entry_digest(entry);
        let key = (entry.index, entry.term);
        match self.registry.get_mut(&key) {
            None => {
                self.registry.insert(
                    key,
                    Registered {
                        digest,
                        prev_term,
                        first_seen_on: node,
                    },
                );
                Ok(())
            }
            Some(seen) => {
                if seen.digest != digest {
                    return Err(violation(
                        "log matching",
                        format!(
                            "{where_} on node {node}: entry at index {} term {} ({:?}, {} payload bytes) differs from the one first seen on node {}",
                            entry.index, entry.term, entry.kind, entry.payload.len(), seen.first_seen_on
                        ),
                    ));
                }
                match (seen.prev_term, prev_term) {
                    (Some(a), Some(b)) if a != b => Err(violation(
                        "log matching",
                        format!(
                            "{where_} on node {node}: entry (index {}, term {}) follows an entry of term {b}, but on node {} it follows term {a}: the prefixes differ",
                            entry.index, entry.term, seen.first_seen_on
                        ),
                    )),
                    (None, Some(b)) => {
                        seen.prev_term = Some(b);
                        Ok(())
                    }
                    _ => Ok(()),
                }
            }
        }
    }

    /// Leader completeness (Raft §5.4.1, Figure 3), checked when `node` becomes leader of
    /// `term`: it holds every entry known committed by a leader of an earlier term.
    pub fn check_leader_completeness_on_elect(
        &self,
        node: NodeId,
        term: u64,
        view: &LogView,
    ) -> Check {
        let from = view.first_index().max(1);
        for index in from..=self.canon.len() as u64 {
            let canon = &self.canon[(index - 1) as usize];
            if canon.commit_term_bound >= term {
                continue;
            }
            if view.term(index) != Some(canon.term) {
                return Err(violation(
                    "leader completeness",
                    format!(
                        "node {node} became leader of term {term} without the committed entry at index {index} (term {}, committed by term <= {}); its log has term {:?} there (log {}..={}, snapshot {})",
                        canon.term,
                        canon.commit_term_bound,
                        view.term(index),
                        view.first_index(),
                        view.last_index(),
                        view.snap_index
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Log matching between two whole logs (durable + unstable), the periodic
    /// cross-check of the incremental per-entry check: below the highest index where the
    /// two agree on the term, they agree everywhere both still hold entries.
    pub fn check_log_matching_pair(a: NodeId, va: &LogView, b: NodeId, vb: &LogView) -> Check {
        let lo = va.first_index().max(vb.first_index()).max(1);
        let hi = va.last_index().min(vb.last_index());
        if lo > hi {
            return Ok(());
        }
        let mut agree = hi;
        while va.term(agree).is_none() || va.term(agree) != vb.term(agree) {
            if agree == lo {
                return Ok(());
            }
            agree -= 1;
        }
        for index in lo..agree {
            if va.term(index) != vb.term(index) {
                return Err(violation(
                    "log matching",
                    format!(
                        "nodes {a} and {b} both hold (index {agree}, term {:?}) but differ at index {index}: terms {:?} and {:?}",
                        va.term(agree),
                        va.term(index),
                        vb.term(index)
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Leader completeness, checked when an entry first becomes known committed: every node
    /// leading a later term already holds it.
    pub fn check_leader_completeness_on_commit(
        &self,
        index: u64,
        leaders: &[(NodeId, u64, &LogView)],
    ) -> Check {
        let canon = &self.canon[(index - 1) as usize];
        for &(node, term, view) in leaders {
            if term <= canon.commit_term_bound || index < view.first_index() {
                continue;
            }
            if view.term(index) != Some(canon.term) {
                return Err(violation(
                    "leader completeness",
                    format!(
                        "entry at index {index} (term {}) became committed (by term <= {}) but node {node}, leader of term {term}, has term {:?} there",
                        canon.term,
                        canon.commit_term_bound,
                        view.term(index)
                    ),
                ));
            }
        }
        Ok(())
    }

    /// State-machine safety (Raft §5.4.3, Figure 3): no two nodes apply different entries
    /// at one index. Extends the canonical history on a first apply; returns whether it did.
    pub fn check_state_machine_safety(
        &mut self,
        node: NodeId,
        node_term: u64,
        entry: &Entry,
        chain: u64,
    ) -> Result<bool, Violation> {
        let digest = entry_digest(entry);
        let len = self.canon.len() as u64;
        if entry.index <= len {
            let canon = &mut self.canon[(entry.index - 1) as usize];
            if canon.digest != digest || canon.chain != chain {
                return Err(violation(
                    "state machine safety",
                    format!(
                        "node {node} applied (index {}, term {}, {:?}, write {:?}) but index {} was applied elsewhere as (term {}, write {:?}){}",
                        entry.index,
                        entry.term,
                        entry.kind,
                        decode_write(&entry.payload),
                        entry.index,
                        canon.term,
                        canon.write,
                        if canon.digest == digest { " with a different state before it" } else { "" }
                    ),
                ));
            }
            canon.commit_term_bound = canon.commit_term_bound.min(node_term);
            return Ok(false);
        }
        if entry.index != len + 1 {
            return Err(violation(
                "state machine safety",
                format!(
                    "node {node} applied index {} but no node has applied index {} yet",
                    entry.index,
                    len + 1
                ),
            ));
        }
        let write = if entry.kind == EntryKind::Normal {
            decode_write(&entry.payload)
        } else {
            None
        };
        self.canon.push(CanonEntry {
            term: entry.term,
            digest,
            chain,
            commit_term_bound: node_term,
            write,
        });
        Ok(true)
    }

    /// A state machine restored from a snapshot (own or received) equals the canonical
    /// state at the snapshot's index.
    pub fn check_snapshot_state(
        &self,
        node: NodeId,
        index: u64,
        term: u64,
        chain: u64,
        what: &str,
    ) -> Check {
        if index == 0 {
            return Ok(());
        }
        match self.canon.get((index - 1) as usize) {
            None => Err(violation(
                "state machine safety",
                format!("node {node} {what} a snapshot at index {index}, beyond anything applied ({})", self.canon.len()),
            )),
            Some(canon) if canon.chain != chain || canon.term != term => Err(violation(
                "state machine safety",
                format!(
                    "node {node} {what} a snapshot at (index {index}, term {term}) whose state differs from the applied history (term {} there)",
                    canon.term
                ),
            )),
            Some(_) => Ok(()),
        }
    }

    /// The applied index moves forward one entry at a time, or jumps forward to an
    /// installed snapshot; it never goes back within one life of a node.
    pub fn check_applied_monotonic(node: NodeId, applied: u64, next: u64, how: &str) -> Check {
        let ok = match how {
            "apply" => next == applied + 1,
            _ => next >= applied,
        };
        if ok {
            Ok(())
        } else {
            Err(violation(
                "applied index monotonic",
                format!("node {node} applied index {applied}, then {how} moved it to {next}"),
            ))
        }
    }

    /// The commit index never decreases within one life of a node.
    pub fn check_commit_monotonic(node: NodeId, commit: u64, next: u64) -> Check {
        if next >= commit {
            Ok(())
        } else {
            Err(violation(
                "commit index monotonic",
                format!("node {node} reported commit index {commit}, then {next}"),
            ))
        }
    }

    /// An acknowledged write: recorded so reads must see it; it must already be canonical.
    pub fn record_ack(&mut self, node: NodeId, value: u64, index: u64, now: u64) -> Check {
        match self.canon.get((index - 1) as usize) {
            Some(canon) if canon.write.map(|w| w.1) == Some(value) => {}
            other => {
                return Err(violation(
                    "acknowledged write",
                    format!(
                        "node {node} acknowledged write {value} at index {index}, but the applied history has {:?} there",
                        other.map(|c| c.write)
                    ),
                ))
            }
        }
        self.acked.insert(value, (index, now));
        self.read_floor = self.read_floor.max(index);
        Ok(())
    }

    /// Linearizable reads (thesis §6.4): a read that started after a write was acknowledged
    /// (or after another read returned) observes a state at least that recent, and the
    /// value it returns is the one the applied history holds for the key at that point.
    #[allow(clippy::too_many_arguments)]
    pub fn check_read_linearizable(
        &mut self,
        node: NodeId,
        ctx: u64,
        key: u8,
        floor: u64,
        observed: u64,
        value: (u64, u64),
        now: u64,
    ) -> Check {
        if observed < floor {
            return Err(violation(
                "linearizable read",
                format!(
                    "node {node} served read {ctx} of key {key} at applied index {observed}, but before the read started index {floor} was already acknowledged or observed: stale read"
                ),
            ));
        }
        let (val, write_index) = value;
        if val != 0 {
            match self.proposed.get(&val) {
                Some(&(k, at)) if k == key && at <= now => {}
                other => {
                    return Err(violation(
                        "linearizable read",
                        format!("node {node} read {ctx} returned value {val} for key {key}, which was never proposed for it (proposal: {other:?})"),
                    ))
                }
            }
            let canon_write = self
                .canon
                .get((write_index.max(1) - 1) as usize)
                .and_then(|c| c.write);
            if write_index > observed || canon_write != Some((key, val)) {
                return Err(violation(
                    "linearizable read",
                    format!(
                        "node {node} read {ctx} at index {observed} returned key {key} = {val} written at index {write_index}, but the applied history has {canon_write:?} there"
                    ),
                ));
            }
        }
        self.read_floor = self.read_floor.max(observed);
        Ok(())
    }
}

// ---------------------------------------------------------------- checks over the nodes

impl Sim {
    /// Cheap per-step checks over every node.
    pub(super) fn check_step(&self) -> Check {
        for node in &self.nodes {
            if !node.up() {
                continue;
            }
            // Invariant: applied <= commit <= last log index (etcd log.go).
            if node.kv.applied > node.commit.max(node.view.snap_index) {
                return Err(violation(
                    "applied <= committed",
                    format!(
                        "node {} applied {} but its commit index is {}",
                        node.id, node.kv.applied, node.commit
                    ),
                ));
            }
            // Issue 17: what a node heard of the cluster's commit index (readiness compares
            // its applied index with it) was committed somewhere: never above the highest
            // commit index any node reported.
            if let Some(core) = &node.core {
                let heard = core.commit_index_heard();
                if heard > self.max_commit_seen {
                    return Err(violation(
                        "commit index heard <= highest commit index",
                        format!(
                            "node {} heard of commit index {heard}, but no node ever committed \
                             beyond {}",
                            node.id, self.max_commit_seen
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The whole-cluster checks that the per-step ones maintain incrementally, as a
    /// cross-check: log matching between every pair of live nodes, and leader completeness
    /// for every current leader.
    pub(super) fn check_full(&self) -> Check {
        self.check_one_membership_change_in_flight(usize::MAX, &[])?;
        let live: Vec<&Node> = self.nodes.iter().filter(|n| n.up()).collect();
        for (k, a) in live.iter().enumerate() {
            for b in &live[k + 1..] {
                Checker::check_log_matching_pair(a.id, &a.view, b.id, &b.view)?;
            }
            if a.role == Role::Leader {
                self.checker
                    .check_leader_completeness_on_elect(a.id, a.term, &a.view)?;
            }
        }
        Ok(())
    }

    /// Node `i`'s log from index `from` on as the core means it: durable entries, then
    /// the writes still on their way to the disk, then `extra` (a Ready being handled),
    /// each truncating what it overlaps. Returns index -> (term, is a membership entry),
    /// and the (index, term) its snapshot will cover.
    pub(super) fn log_tail(
        &self,
        i: usize,
        from: u64,
        extra: &[Entry],
    ) -> (BTreeMap<u64, (u64, bool)>, (u64, u64)) {
        let node = &self.nodes[i];
        let durable = node.durable.borrow();
        let mut snap = (durable.snap_meta.last_index, durable.snap_meta.last_term);
        let mut log: BTreeMap<u64, (u64, bool)> = BTreeMap::new();
        let overlay = |log: &mut BTreeMap<u64, (u64, bool)>, batch: &[Entry]| {
            if let Some(first) = batch.first() {
                log.retain(|&index, _| index < first.index);
                log.extend(
                    batch
                        .iter()
                        .filter(|e| e.index >= from)
                        .map(|e| (e.index, (e.term, e.kind == EntryKind::Membership))),
                );
            }
        };
        overlay(&mut log, &durable.log);
        for batch in &node.disk {
            if let Some(chunk) = batch.snapshot_chunk.as_ref().filter(|c| c.done) {
                let (index, term) = (chunk.meta.last_index, chunk.meta.last_term);
                if log.get(&index).map(|e| e.0) != Some(term) {
                    log.clear();
                }
                log.retain(|&at, _| at > index);
                snap = (index, term);
            }
            overlay(&mut log, &batch.entries);
        }
        overlay(&mut log, extra);
        (log, snap)
    }

    /// At most one membership change in flight in the whole cluster (thesis §4.1): of
    /// the logs that still hold every committed entry (so could still elect a leader that
    /// commits their tail), all carry the same membership entry above the commit index,
    /// or none. A leader only appends a change once an entry of its own term is committed,
    /// and terms never decrease along a log, so a change appended by an earlier leader is
    /// then in no such log unless it is in the new leader's too; two different ones mean
    /// two configurations whose majorities need not overlap. `extra`: entries node
    /// `appending` is about to append.
    pub(super) fn check_one_membership_change_in_flight(
        &self,
        appending: usize,
        extra: &[Entry],
    ) -> Check {
        let (commit, commit_term) = (self.max_commit_seen, self.max_commit_term);
        let mut changes: BTreeMap<(u64, u64), Vec<NodeId>> = BTreeMap::new();
        for i in 0..self.nodes.len() {
            let extra = if i == appending { extra } else { &[] };
            let (log, snap) = self.log_tail(i, commit, extra);
            let holds_committed = snap.0 > commit
                || (snap.0 == commit && snap.1 == commit_term)
                || log.get(&commit).map(|e| e.0) == Some(commit_term);
            if !holds_committed {
                continue;
            }
            for (&index, &(term, membership)) in log.range(commit + 1..) {
                if membership {
                    changes
                        .entry((index, term))
                        .or_default()
                        .push(self.nodes[i].id);
                }
            }
        }
        if changes.len() > 1 {
            return Err(violation(
                "one membership change in flight",
                format!(
                    "logs holding every committed entry (commit index {commit}, term {commit_term}) carry different uncommitted membership changes: (index, term) -> nodes {changes:?}"
                ),
            ));
        }
        Ok(())
    }

    /// A new leader won its term with votes of a majority of the voters in its
    /// configuration: learners' votes never count (thesis §4.2.1), and neither do votes of
    /// servers outside it.
    pub(super) fn check_votes_from_voters(&self, i: usize) -> Check {
        let node = &self.nodes[i];
        let Some(core) = node.core.as_ref() else {
            return Ok(());
        };
        let membership = core.status().membership;
        let voters: Vec<NodeId> = membership.voters().collect();
        let granted: Vec<NodeId> = voters
            .iter()
            .copied()
            .filter(|&v| v == node.id || self.votes.contains(&(v, node.term, node.id)))
            .collect();
        if granted.len() * 2 <= voters.len() {
            return Err(violation(
                "votes of voters elect",
                format!(
                    "node {} became leader of term {} with votes of {granted:?} only, not a majority of its voters {voters:?}",
                    node.id, node.term
                ),
            ));
        }
        Ok(())
    }

    /// A leader advanced its commit index to `commit`: a majority of the voters in its
    /// configuration hold that entry durably (Raft §5.3; a learner's copy never counts,
    /// thesis §4.2.1).
    pub(super) fn check_commit_quorum(&self, i: usize, commit: u64) -> Check {
        let node = &self.nodes[i];
        let Some(core) = node.core.as_ref() else {
            return Ok(());
        };
        let Some(term) = node.view.term(commit) else {
            return Ok(());
        };
        let membership = core.status().membership;
        let voters: Vec<NodeId> = membership.voters().collect();
        let holders: Vec<NodeId> = voters
            .iter()
            .copied()
            .filter(|&v| {
                let durable = self.nodes[(v - 1) as usize].durable.borrow();
                durable.snap_meta.last_index >= commit
                    || durable.entry(commit).map(|e| e.term) == Some(term)
            })
            .collect();
        if holders.len() * 2 <= voters.len() {
            return Err(violation(
                "commit quorum of voters",
                format!(
                    "leader {} of term {} committed index {commit} (term {term}), durable only on voters {holders:?} of {voters:?}",
                    node.id, node.term
                ),
            ));
        }
        Ok(())
    }

    /// What a message acknowledges must already be on the sender's disk (Raft Figure 2:
    /// "updated on stable storage before responding to RPCs"): a successful append answer's
    /// `match_index`, a granted vote. (Under the planted `VoteBeforePersist` the vote check is
    /// off, so that test shows the fault schedules turn the bug into two leaders in one term.)
    pub(super) fn check_durable_before_acknowledged(
        &self,
        i: usize,
        env: &Envelope,
        after_persist: bool,
    ) -> Check {
        let node = &self.nodes[i];
        let durable = node.durable.borrow();
        match env.message {
            Message::AppendEntriesResponse {
                success: true,
                match_index,
                ..
            } => {
                // Sent at once (not after this Ready's write), the answer may only cover
                // what is durable already and will not be rewritten by that write. (A
                // view without the index means a newer snapshot is on its way to disk.)
                let durable_term = durable.term(match_index);
                let view_term = node.view.term(match_index);
                let covered = match_index <= durable.snap_meta.last_index
                    || (durable_term.is_some()
                        && (after_persist || view_term.is_none() || view_term == durable_term));
                if !covered {
                    return Err(violation(
                        "durable before acknowledged",
                        format!(
                            "node {} acknowledges match index {match_index} to {} but its disk has {:?} there (durable log {}..={}, snapshot {}; its log has term {:?})",
                            node.id,
                            env.to,
                            durable.term(match_index),
                            durable.first_index(),
                            durable.last_index(),
                            durable.snap_meta.last_index,
                            node.view.term(match_index)
                        ),
                    ));
                }
            }
            Message::RequestVoteResponse {
                granted: true,
                term,
            } if self.options.planted_bug != Some(PlantedBug::VoteBeforePersist) => {
                let hs = durable.hard_state;
                if hs.term != term || hs.voted_for != Some(env.to) {
                    return Err(violation(
                        "durable before acknowledged",
                        format!(
                            "node {} grants its vote in term {term} to {} but its disk has term {} vote {:?}",
                            node.id, env.to, hs.term, hs.voted_for
                        ),
                    ));
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// A snapshot handed out to install is not behind the state machine.
    pub(super) fn check_snapshot_not_behind_applied(
        &self,
        i: usize,
        chunk: &SnapshotChunk,
    ) -> Check {
        let node = &self.nodes[i];
        if chunk.meta.last_index < node.kv.applied {
            return Err(violation(
                "applied index monotonic",
                format!(
                    "node {} was handed snapshot {} to install, behind its applied index {}",
                    node.id, chunk.meta.last_index, node.kv.applied
                ),
            ));
        }
        Ok(())
    }

    /// Log matching on every entry a node is about to append, plus the rules a `Ready`'s
    /// entries follow: consecutive, no gap, no rewrite of committed entries, no term from
    /// the future.
    pub(super) fn check_ready_entries(&mut self, i: usize, entries: &[Entry]) -> Check {
        let node = &self.nodes[i];
        let id = node.id;
        let first = entries[0].index;
        let last = entries[entries.len() - 1].index;
        for pair in entries.windows(2) {
            if pair[1].index != pair[0].index + 1 || pair[1].term < pair[0].term {
                return Err(violation(
                    "ready contract",
                    format!(
                        "node {id}: Ready entries go from (index {}, term {}) to (index {}, term {})",
                        pair[0].index, pair[0].term, pair[1].index, pair[1].term
                    ),
                ));
            }
        }
        if first == 0 || first > node.view.last_index() + 1 {
            return Err(violation(
                "ready contract",
                format!(
                    "node {id}: Ready entries start at {first} but the log ends at {}: a gap",
                    node.view.last_index()
                ),
            ));
        }
        if entries[entries.len() - 1].term > node.term {
            return Err(violation(
                "term monotonic",
                format!(
                    "node {id} in term {} appends an entry of later term {}",
                    node.term,
                    entries[entries.len() - 1].term
                ),
            ));
        }
        // The lowest index whose entry changes or disappears.
        let mut changed = None;
        for index in first..=node.view.last_index().max(last) {
            let new_term = entries.get((index - first) as usize).map(|e| e.term);
            let old_term = if index <= node.view.last_index() {
                node.view.term(index)
            } else {
                None
            };
            if index <= node.view.last_index() && old_term != new_term {
                changed = Some(index);
                break;
            }
        }
        let protected = node.commit.max(node.kv.applied);
        if let Some(index) = changed {
            if index <= protected {
                return Err(violation(
                    "committed entries are never rewritten",
                    format!(
                        "node {id} (commit {}, applied {}) truncates its log from index {index} to append {first}..={last}",
                        node.commit, node.kv.applied
                    ),
                ));
            }
        }
        let mut prev_term = node.view.term(first - 1);
        for entry in entries {
            self.checker
                .check_log_matching(id, entry, prev_term, "appending")?;
            prev_term = Some(entry.term);
        }
        if entries.iter().any(|e| e.kind == EntryKind::Membership) {
            self.check_one_membership_change_in_flight(i, entries)?;
        }
        Ok(())
    }

    /// A vote is never changed within a term; terms never decrease.
    pub(super) fn check_hard_state(&self, i: usize, hs: HardState) -> Check {
        let node = &self.nodes[i];
        let old = node.hard_state;
        if hs.term < old.term {
            return Err(violation(
                "term monotonic",
                format!(
                    "node {} persists term {} after term {}",
                    node.id, hs.term, old.term
                ),
            ));
        }
        if hs.term == old.term && old.voted_for.is_some() && hs.voted_for != old.voted_for {
            return Err(violation(
                "one vote per term",
                format!(
                    "node {} voted for {:?} in term {} and now persists a vote for {:?}",
                    node.id, old.voted_for, hs.term, hs.voted_for
                ),
            ));
        }
        Ok(())
    }

    pub(super) fn converged(&self) -> bool {
        let Some(index) = self.liveness_index else {
            return false;
        };
        let members = self.membership_at(index);
        // A node shut down for good at the heal cannot apply anything. It may still be a
        // member: a configuration naming it can reach another log after the heal, from a
        // message in flight. The others must converge without it, as a quorum allows.
        self.nodes
            .iter()
            .filter(|n| members.members.contains_key(&n.id) && !n.retired)
            .all(|n| n.kv.applied >= index)
    }

    pub(super) fn liveness_failure(&self) -> Violation {
        let states: Vec<String> = self
            .nodes
            .iter()
            .map(|n| {
                format!(
                    "node {}: {:?} term {} leader {:?} commit {} applied {} log {}..={}",
                    n.id,
                    n.role,
                    n.term,
                    n.leader,
                    n.commit,
                    n.kv.applied,
                    n.view.first_index(),
                    n.view.last_index()
                )
            })
            .collect();
        violation(
            "liveness",
            format!(
                "{LIVENESS_TICKS} ticks after healing, no write proposed after the heal is applied on every node (first such write committed at {:?}); {}",
                self.liveness_index,
                states.join("; ")
            ),
        )
    }

    /// After convergence: every acknowledged write is in every node's state machine, and
    /// every node's state equals the applied history at its applied index.
    pub(super) fn check_convergence(&self) -> Check {
        let members = self.membership_at(self.liveness_index.unwrap_or(0));
        for node in &self.nodes {
            if node.kv.applied == 0 || !members.members.contains_key(&node.id) {
                continue;
            }
            let canon = &self.checker.canon[(node.kv.applied - 1) as usize];
            if canon.chain != node.kv.chain {
                return Err(violation(
                    "state machine safety",
                    format!(
                        "node {} ends at index {} with a state that differs from the history",
                        node.id, node.kv.applied
                    ),
                ));
            }
            // Writes acknowledged after the heal may still be on their way; the ones
            // before the liveness write must be everywhere.
            let upto = self.liveness_index.unwrap_or(0);
            for (value, &(index, _)) in &self.checker.acked {
                if index > upto {
                    continue;
                }
                // A node shut down for good at the heal stopped where it was (`converged`
                // does not wait for it either); its state was still checked above.
                if index > node.kv.applied && !node.retired {
                    return Err(violation(
                        "acknowledged writes survive",
                        format!("node {} ends at applied index {} without acknowledged write {value} at index {index}", node.id, node.kv.applied),
                    ));
                }
                if self.checker.canon[(index - 1) as usize].write.map(|w| w.1) != Some(*value) {
                    return Err(violation(
                        "acknowledged writes survive",
                        format!("acknowledged write {value} at index {index} is not in the applied history"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// A restarted node's state machine, restored from its durable snapshot, is the
    /// applied history at the snapshot's index.
    pub(super) fn check_restarted_state(&self, id: NodeId, kv: &Kv, snap: u64) -> Check {
        self.checker.check_snapshot_state(
            id,
            kv.applied,
            kv.applied_term,
            kv.chain,
            "restarted from",
        )?;
        if kv.applied != snap {
            return Err(violation(
                "snapshot decodes",
                format!(
                    "node {id}: snapshot meta says index {snap}, its state machine is at {}",
                    kv.applied
                ),
            ));
        }
        Ok(())
    }

    /// A received snapshot's state matches its metadata and the applied history, and
    /// does not take the state machine back.
    pub(super) fn check_installed_snapshot(&self, i: usize, meta: &SnapshotMeta, kv: &Kv) -> Check {
        let id = self.nodes[i].id;
        if kv.applied != meta.last_index || kv.applied_term != meta.last_term {
            return Err(violation(
                "snapshot decodes",
                format!(
                    "node {id}: snapshot meta (index {}, term {}) but its state is at (index {}, term {})",
                    meta.last_index, meta.last_term, kv.applied, kv.applied_term
                ),
            ));
        }
        self.checker.check_snapshot_state(
            id,
            kv.applied,
            kv.applied_term,
            kv.chain,
            "installed",
        )?;
        Checker::check_applied_monotonic(
            id,
            self.nodes[i].kv.applied,
            kv.applied,
            "a snapshot install",
        )
    }

    /// Terms never decrease (Raft §5.1): a soft state never names an earlier term.
    pub(super) fn check_term_not_behind(&self, i: usize, term: u64) -> Check {
        let node = &self.nodes[i];
        if term < node.term {
            return Err(violation(
                "term monotonic",
                format!(
                    "node {} went from term {} back to term {term}",
                    node.id, node.term
                ),
            ));
        }
        Ok(())
    }

    /// The commit index never decreases and never passes the log's end.
    pub(super) fn check_commit_index(&self, i: usize, commit: u64) -> Check {
        let node = &self.nodes[i];
        Checker::check_commit_monotonic(node.id, node.commit, commit)?;
        if commit > node.view.last_index() {
            return Err(violation(
                "commit index within log",
                format!(
                    "node {} reports commit index {commit} beyond its last log index {}",
                    node.id,
                    node.view.last_index()
                ),
            ));
        }
        Ok(())
    }

    /// A node applies the entry after its applied index, only once committed, and only
    /// the entry its disk holds there.
    pub(super) fn check_apply(&self, i: usize, entry: &Entry) -> Check {
        let node = &self.nodes[i];
        let id = node.id;
        Checker::check_applied_monotonic(id, node.kv.applied, entry.index, "apply")?;
        if entry.index > node.commit {
            return Err(violation(
                "apply only committed",
                format!(
                    "node {id} applies index {} above its commit index {}",
                    entry.index, node.commit
                ),
            ));
        }
        let durable = node.durable.borrow();
        let stored = durable.entry(entry.index);
        if stored != Some(entry) {
            return Err(violation(
                "applied entries are durable",
                format!(
                    "node {id} applies (index {}, term {}) but its durable log has {:?} there",
                    entry.index,
                    entry.term,
                    stored.map(|e| (e.index, e.term))
                ),
            ));
        }
        Ok(())
    }

    /// A message leaves node `i` addressed to another node of the world, the entries it
    /// carries match every other copy (log matching), and what it acknowledges is durable.
    pub(super) fn check_message_sent(
        &mut self,
        i: usize,
        env: &Envelope,
        after_persist: bool,
    ) -> Check {
        let id = self.nodes[i].id;
        let n = self.nodes.len() as u64;
        if env.from != id || env.to == id || env.to == 0 || env.to > n {
            return Err(violation(
                "message contract",
                format!("node {id} sent a message from {} to {}", env.from, env.to),
            ));
        }
        if let Message::AppendEntries {
            prev_log_term,
            entries,
            ..
        } = &env.message
        {
            let mut prev = Some(*prev_log_term);
            for entry in entries {
                self.checker
                    .check_log_matching(id, entry, prev, "sending AppendEntries")?;
                prev = Some(entry.term);
            }
        }
        self.check_durable_before_acknowledged(i, env, after_persist)
    }
}

/// A leader names itself as leader.
pub(super) fn check_leader_names_itself(id: NodeId, soft: &SoftState) -> Check {
    if soft.leader_id != Some(id) {
        return Err(violation(
            "soft state",
            format!(
                "node {id} is leader of term {} but names {:?} as leader",
                soft.term, soft.leader_id
            ),
        ));
    }
    Ok(())
}

/// Only a leader accepts a proposal (Raft §5.1), in its own term.
pub(super) fn check_proposal_accepted(
    id: NodeId,
    was_leader: bool,
    role: Role,
    node_term: u64,
    (index, term): (u64, u64),
) -> Check {
    if !was_leader {
        return Err(violation(
            "non-leaders refuse proposals",
            format!(
                "node {id} (role {role:?}) accepted a proposal at (index {index}, term {term})"
            ),
        ));
    }
    if term != node_term {
        return Err(violation(
            "proposal term",
            format!("leader {id} of term {node_term} returned term {term} for a proposal"),
        ));
    }
    Ok(())
}

/// A plain proposal fails only for the reasons a client is told to retry elsewhere or later.
pub(super) fn proposal_failed(id: NodeId, error: ProposeError) -> Violation {
    violation(
        "propose contract",
        format!("node {id}: a plain proposal failed with {error}"),
    )
}

/// Only a leader accepts a membership change (thesis §4.1).
pub(super) fn check_membership_change_accepted(
    id: NodeId,
    was_leader: bool,
    change: &MembershipChange,
) -> Check {
    if !was_leader {
        return Err(violation(
            "non-leaders refuse proposals",
            format!("node {id} accepted membership change {change:?} while not leader"),
        ));
    }
    Ok(())
}

/// A leader accepts a leadership transfer only to a voter (thesis §3.10, §4.2.1): a
/// learner could never win.
pub(super) fn check_transfer_target_votes(
    id: NodeId,
    to: NodeId,
    membership: &Membership,
) -> Check {
    if to != id && !membership.is_voter(to) {
        return Err(violation(
            "transfers target voters",
            format!(
                "leader {id} accepted a leadership transfer to node {to}, not a voter in {:?}",
                membership.voters().collect::<Vec<_>>()
            ),
        ));
    }
    Ok(())
}

/// The entry applied where a node accepted a write, in the term it accepted it, is that
/// write.
pub(super) fn check_accepted_write_applied(id: NodeId, value: u64, entry: &Entry) -> Check {
    if entry.payload != encode_write(entry.payload.first().copied().unwrap_or(0), value) {
        return Err(violation(
            "log matching",
            format!(
                "node {id} accepted write {value} at (index {}, term {}) but applied another entry there",
                entry.index, entry.term
            ),
        ));
    }
    Ok(())
}

/// A ReadState answers a read the node accepted in this life and has not answered, and
/// only a leader's (thesis §6.4).
pub(super) fn check_read_state(
    id: NodeId,
    ctx: u64,
    read: Option<&PendingRead>,
    index: u64,
) -> Check {
    let Some(read) = read else {
        return Err(violation(
            "read contract",
            format!("node {id} returned a ReadState for read {ctx}, which it was not asked (in this life) or already answered"),
        ));
    };
    if read.must_refuse {
        return Err(violation(
            "non-leaders refuse reads",
            format!("node {id} accepted read {ctx} while not leader and then served it at index {index}"),
        ));
    }
    Ok(())
}
