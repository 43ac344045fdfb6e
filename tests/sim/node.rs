//! One simulated node: what the harness knows of it (role, term, commit index, its log as
//! the core means it, its state machine, the client requests it accepted), how it starts
//! from its durable state, and how it handles the core's `Ready`: in field order, sending,
//! queueing the write for the disk, applying committed entries and answering reads.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;

use raftlog::raft::{
    decode_membership, Entry, EntryKind, HardState, NodeId, RaftCore, Ready, Role, SnapshotChunk,
    SoftState,
};

use super::checker::{violation, Check, Checker, LogView, Violation};
use super::clients::{PendingRead, Proposal};
use super::disk::Batch;
use super::kv::Kv;
use super::storage::{Durable, SimStorage};
use super::trace::{self, Ev};
use super::world::{Event, Phase, Sim};

pub(super) struct Node {
    pub(super) id: NodeId,
    /// `None` while crashed.
    pub(super) core: Option<RaftCore<SimStorage>>,
    pub(super) durable: Rc<RefCell<Durable>>,
    /// Incremented at each crash; events of an earlier life are ignored.
    pub(super) life: u64,
    pub(super) disk: VecDeque<Batch>,
    pub(super) disk_free_at: u64,
    pub(super) slow_disk_until: u64,
    pub(super) paused_until: u64,
    /// Start of a stall whose missed ticks are still owed (see `catch_up_ticks`).
    pub(super) stalled_since: Option<u64>,
    /// The tick event fell due during a stall and was dropped; `catch_up_ticks` restarts it.
    pub(super) tick_suspended: bool,
    /// Removed from the cluster and shut down for good (liveness phase).
    pub(super) retired: bool,
    pub(super) tick_period: u64,
    pub(super) kv: Kv,
    pub(super) role: Role,
    pub(super) term: u64,
    pub(super) leader: Option<NodeId>,
    pub(super) commit: u64,
    /// Latest hard state handed out (durable or pending).
    pub(super) hard_state: HardState,
    pub(super) view: LogView,
    pub(super) proposals: BTreeMap<u64, Proposal>,
    pub(super) reads: BTreeMap<u64, PendingRead>,
}

impl Node {
    pub(super) fn up(&self) -> bool {
        self.core.is_some()
    }
}

impl Sim {
    pub(super) fn core(&mut self, i: usize) -> &mut RaftCore<SimStorage> {
        self.nodes[i]
            .core
            .as_mut()
            .expect("the harness only drives nodes that are up")
    }

    /// Builds a core from durable state only, as a real node does after a power cut:
    /// the durable log and snapshot, the durable hard state, the bootstrap membership.
    pub(super) fn start_node(&mut self, i: usize) -> Check {
        let id = self.nodes[i].id;
        let config = self.config(id);
        let membership = self.membership.clone();
        let durable_rc = self.nodes[i].durable.clone();
        let durable = durable_rc.borrow();
        let hard_state = durable.hard_state;
        let kv = if durable.snap_meta.last_index == 0 {
            Kv::default()
        } else {
            Kv::decode(&durable.snap_data).map_err(|e| {
                violation(
                    "snapshot decodes",
                    format!("node {id} durable snapshot: {e}"),
                )
            })?
        };
        let view = LogView {
            snap_index: durable.snap_meta.last_index,
            snap_term: durable.snap_meta.last_term,
            offset: durable.offset,
            terms: durable.log.iter().map(|e| e.term).collect(),
        };
        let (last_index, snap) = (durable.last_index(), durable.snap_meta.last_index);
        drop(durable);
        let node = &mut self.nodes[i];
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
        let storage = SimStorage {
            durable: node.durable.clone(),
        };
        node.core = Some(RaftCore::new(config, storage, hard_state, membership));
        node.kv = kv;
        node.view = view;
        node.role = Role::Follower;
        node.term = hard_state.term;
        node.leader = None;
        node.commit = 0;
        node.hard_state = hard_state;
        node.disk.clear();
        node.disk_free_at = self.now;
        node.paused_until = 0;
        node.stalled_since = None;
        node.tick_suspended = false;
        let life = node.life;
        self.record(Ev::Restart {
            node: id,
            term: hard_state.term,
            voted_for: hard_state.voted_for,
            last_index,
            snap,
        });
        let first_tick = 1 + self.fault_rng.below(self.nodes[i].tick_period);
        self.schedule(first_tick, Event::Tick { node: i, life });
        self.handle_ready(i)
    }

    /// Drains the core's outputs, handling each `Ready` in field order (see `Ready`).
    pub(super) fn handle_ready(&mut self, i: usize) -> Check {
        for _ in 0..1000 {
            let Some(core) = self.nodes[i].core.as_mut() else {
                return Ok(());
            };
            if !core.has_ready() {
                return Ok(());
            }
            let ready = core.take_ready();
            if ready.is_empty() {
                // has_ready() may be conservative (a leader with nothing left to send).
                return Ok(());
            }
            self.process_ready(i, ready)?;
        }
        Err(violation(
            "ready contract",
            format!(
                "node {}: still has a Ready after 1000 rounds",
                self.nodes[i].id
            ),
        ))
    }

    pub(super) fn process_ready(&mut self, i: usize, ready: Ready) -> Check {
        let id = self.nodes[i].id;
        let became_leader = match ready.soft_state {
            Some(soft) => self.on_soft_state(i, soft)?,
            None => false,
        };
        for env in ready.messages {
            self.send(i, env, false)?;
        }
        if let Some(chunk) = &ready.snapshot_chunk {
            self.check_snapshot_chunk(i, chunk)?;
        }
        if !ready.entries.is_empty() {
            self.check_and_view_entries(i, &ready.entries)?;
        }
        if let Some(hs) = ready.hard_state {
            self.check_hard_state(i, hs)?;
        }
        let has_write = ready.snapshot_chunk.is_some()
            || !ready.entries.is_empty()
            || ready.hard_state.is_some();
        if has_write {
            self.record(Ev::Persist {
                node: id,
                entries: (
                    ready.entries.first().map_or(0, |e| e.index),
                    ready.entries.last().map_or(0, |e| e.index),
                ),
                last_term: ready.entries.last().map_or(0, |e| e.term),
                hard_state: ready.hard_state.map(|h| (h.term, h.voted_for)),
                snap: ready
                    .snapshot_chunk
                    .as_ref()
                    .map(|c| (c.meta.last_index, c.offset, c.done)),
            });
        }
        if has_write || !ready.persisted_messages.is_empty() {
            let batch = Batch {
                snapshot_chunk: ready.snapshot_chunk,
                entries: ready.entries,
                hard_state: ready.hard_state,
                persisted_messages: ready.persisted_messages,
            };
            self.enqueue_write(i, batch, has_write)?;
        }
        self.on_commit_index(i, ready.commit_index, became_leader)?;
        if !ready.committed_entries.is_empty() {
            self.apply(i, &ready.committed_entries)?;
        }
        for rs in ready.read_states {
            self.on_read_state(i, rs.ctx, rs.index)?;
        }
        for failed in ready.failed_reads {
            if self.nodes[i].reads.remove(&failed.ctx).is_some() {
                self.record(Ev::ReadFailed {
                    node: id,
                    ctx: failed.ctx,
                });
            }
        }
        self.serve_reads(i)?;
        if became_leader {
            let node = &self.nodes[i];
            self.checker
                .check_leader_completeness_on_elect(node.id, node.term, &node.view)?;
            self.check_votes_from_voters(i)?;
            if self.options.membership_ops
                && self.params.membership_pct > 0
                && self.phase == Phase::Faulty
                && self.client_rng.below(100) < 20 * self.params.membership_pct
            {
                // An operator retrying a pending change as soon as a leader appears: the
                // window in which a new leader must not yet change the membership (thesis
                // §4.1, the single-server change bug).
                self.change_membership(i)?;
            }
        }
        Ok(())
    }

    /// Returns whether the node just became leader.
    pub(super) fn on_soft_state(&mut self, i: usize, soft: SoftState) -> Result<bool, Violation> {
        let node = &mut self.nodes[i];
        let id = node.id;
        if soft.term < node.term {
            return Err(violation(
                "term monotonic",
                format!(
                    "node {id} went from term {} back to term {}",
                    node.term, soft.term
                ),
            ));
        }
        let was_leader = node.role == Role::Leader && node.term == soft.term;
        node.role = soft.role;
        node.term = soft.term;
        node.leader = soft.leader_id;
        self.record(Ev::Role {
            node: id,
            role: trace::role_name(soft.role),
            term: soft.term,
            leader: soft.leader_id,
        });
        self.stats.max_term = self.stats.max_term.max(soft.term);
        if soft.role == Role::Leader {
            if soft.leader_id != Some(id) {
                return Err(violation(
                    "soft state",
                    format!(
                        "node {id} is leader of term {} but names {:?} as leader",
                        soft.term, soft.leader_id
                    ),
                ));
            }
            self.checker.check_election_safety(id, soft.term)?;
            if !was_leader {
                self.stats.leaders_elected += 1;
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// `became_leader`: the same `Ready` made the node leader, so a commit index in it was
    /// learned as a follower, not counted.
    pub(super) fn on_commit_index(&mut self, i: usize, commit: u64, became_leader: bool) -> Check {
        let node = &mut self.nodes[i];
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
        if commit != node.commit {
            let advanced = commit > node.commit;
            node.commit = commit;
            let (id, leader) = (node.id, node.role == Role::Leader);
            if leader && node.view.term(commit) != Some(node.term) {
                self.stats.old_term_commits += 1;
            }
            if commit > self.max_commit_seen {
                self.max_commit_seen = commit;
                self.max_commit_term = self.nodes[i].view.term(commit).unwrap_or(0);
            }
            if leader && advanced && !became_leader {
                self.check_commit_quorum(i, commit)?;
            }
            self.record(Ev::Commit {
                node: id,
                index: commit,
            });
            // A leader dying right after it advanced its commit index, before followers
            // hear of it (Figure 8 needs the next leader to be chosen in that window).
            if leader
                && self.in_burst()
                && self.fault_rng.chance_ppm(self.params.crash_after_send_ppm)
            {
                self.schedule_crash_soon(i);
            }
            if leader && self.in_burst() && self.fault_rng.chance_ppm(self.params.isolate_ppm) {
                self.isolate(i);
            }
        }
        Ok(())
    }

    /// Applies committed entries: each must be the next one, durable locally, and the same
    /// entry every other node applied at that index.
    pub(super) fn apply(&mut self, i: usize, entries: &[Entry]) -> Check {
        let id = self.nodes[i].id;
        let from = entries[0].index;
        for entry in entries {
            let node = &mut self.nodes[i];
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
            {
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
            }
            node.kv.apply(entry);
            let (term, chain) = (node.term, node.kv.chain);
            let first_apply = self
                .checker
                .check_state_machine_safety(id, term, entry, chain)?;
            if first_apply {
                self.stats.committed += 1;
                if entry.kind == EntryKind::Membership {
                    let membership = decode_membership(&entry.payload).map_err(|e| {
                        violation(
                            "membership entry decodes",
                            format!("node {id} applied index {}: {e}", entry.index),
                        )
                    })?;
                    self.applied_memberships.insert(entry.index, membership);
                    self.stats.membership_changes += 1;
                }
                let leaders: Vec<(NodeId, u64, &LogView)> = self
                    .nodes
                    .iter()
                    .filter(|n| n.up() && n.role == Role::Leader)
                    .map(|n| (n.id, n.term, &n.view))
                    .collect();
                self.checker
                    .check_leader_completeness_on_commit(entry.index, &leaders)?;
                if let Some((_, value)) = self.checker.canon[(entry.index - 1) as usize].write {
                    if value >= self.liveness_value && self.liveness_index.is_none() {
                        self.liveness_index = Some(entry.index);
                    }
                }
            }
            self.check_proposal_outcome(i, entry)?;
        }
        let last = entries[entries.len() - 1].clone();
        self.record(Ev::Apply {
            node: id,
            from,
            to: last.index,
            last_term: last.term,
        });
        self.core(i).on_applied(last.index);
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

    pub(super) fn check_snapshot_chunk(&mut self, i: usize, chunk: &SnapshotChunk) -> Check {
        let node = &mut self.nodes[i];
        if chunk.done {
            if chunk.meta.last_index < node.kv.applied {
                return Err(violation(
                    "applied index monotonic",
                    format!(
                        "node {} was handed snapshot {} to install, behind its applied index {}",
                        node.id, chunk.meta.last_index, node.kv.applied
                    ),
                ));
            }
            node.view
                .install_snapshot(chunk.meta.last_index, chunk.meta.last_term);
        }
        Ok(())
    }

    /// Log matching on every entry a node is about to append, plus the rules a `Ready`'s
    /// entries follow: consecutive, no gap, no rewrite of committed entries, no term from
    /// the future.
    pub(super) fn check_and_view_entries(&mut self, i: usize, entries: &[Entry]) -> Check {
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
        self.nodes[i].view.append(entries);
        Ok(())
    }

    /// A vote is never changed within a term; terms never decrease.
    pub(super) fn check_hard_state(&mut self, i: usize, hs: HardState) -> Check {
        let node = &mut self.nodes[i];
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
        node.hard_state = hs;
        if let Some(candidate) = hs.voted_for {
            self.votes.insert((node.id, hs.term, candidate));
        }
        Ok(())
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
        }
        Ok(())
    }
}
