//! The invariants, one function each, over the cluster-wide history the harness records.
//!
//! Each check runs on the step that can change what it governs (a node taking a `Ready`,
//! applying, persisting, becoming leader, serving a read), which is the same as checking
//! every invariant after every step, at a fraction of the cost: a step that does not touch
//! a node's log cannot break log matching for it.

use std::collections::BTreeMap;

use raftlog::raft::{Entry, EntryKind, NodeId};

use super::kv::{decode_write, entry_digest};

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
