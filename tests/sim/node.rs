//! One simulated node: what the harness knows of it (role, term, commit index, its log as
//! the core means it, its state machine, the client requests it accepted), how it starts
//! from its durable state, and what it does with each part of the core's `Ready`, which
//! the shared driver (`raftlog::raft::driver`) hands it in field order: sending, queueing
//! the write for the disk, applying committed entries and answering reads.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;

use raftlog::raft::driver::{self, ReadyHandler, Write, READY_ROUNDS_MAX};
use raftlog::raft::{
    decode_membership, Entry, EntryKind, Envelope, FailedRead, HardState, NodeId, RaftCore,
    ReadState, Role, SoftState,
};

use super::checker::{check_leader_names_itself, violation, Check, LogView, Violation};
use super::clients::{PendingRead, Proposal};
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
    pub(super) disk: VecDeque<Write>,
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
        self.check_restarted_state(id, &kv, snap)?;
        let node = &mut self.nodes[i];
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

    /// Node `i` as the shared `Ready` driver sees it.
    pub(super) fn driven(&mut self, i: usize) -> DrivenNode<'_> {
        DrivenNode {
            sim: self,
            i,
            became_leader: false,
        }
    }

    /// Drains the core's outputs through the shared driver, which hands each `Ready` to
    /// `DrivenNode` in field order.
    pub(super) fn handle_ready(&mut self, i: usize) -> Check {
        driver::drain(&mut self.driven(i)).map(|_| ())?;
        self.check_no_log_regression(i)
    }

    /// No simulated disk loses what it acknowledged (a crash loses only unacknowledged
    /// writes), so a leader that flags a follower's log as gone backwards was fooled by
    /// stale rejections: reordered or duplicated ones, arriving in a row with no success
    /// between (see `LOG_REGRESSED_REJECTIONS` in src/raft/progress.rs).
    fn check_no_log_regression(&self, i: usize) -> Check {
        let node = &self.nodes[i];
        let Some(core) = node.core.as_ref() else {
            return Ok(());
        };
        if core.log_regressions() == 0 {
            return Ok(());
        }
        let flagged: Vec<_> = core
            .member_progress()
            .into_iter()
            .filter_map(|p| p.log_regressed.map(|r| (p.id, r)))
            .collect();
        Err(violation(
            "no false log regression",
            format!(
                "leader {} flagged a follower's log as gone backwards though no disk loses acknowledged data: {flagged:?}",
                node.id
            ),
        ))
    }

    /// The write of one `Ready`: checked against the node's log and hard state, which
    /// then reflect it, and queued for the disk.
    fn write(&mut self, i: usize, write: Write) -> Check {
        let id = self.nodes[i].id;
        if let Some(chunk) = write.snapshot_chunk.as_ref().filter(|c| c.done) {
            self.check_snapshot_not_behind_applied(i, chunk)?;
            let view = &mut self.nodes[i].view;
            view.install_snapshot(chunk.meta.last_index, chunk.meta.last_term);
        }
        if !write.entries.is_empty() {
            self.check_ready_entries(i, &write.entries)?;
            self.nodes[i].view.append(&write.entries);
        }
        if let Some(hs) = write.hard_state {
            self.check_hard_state(i, hs)?;
            let node = &mut self.nodes[i];
            node.hard_state = hs;
            if let Some(candidate) = hs.voted_for {
                self.votes.insert((node.id, hs.term, candidate));
            }
        }
        let has_write = write.has_data();
        if has_write {
            self.record(Ev::Persist {
                node: id,
                entries: (
                    write.entries.first().map_or(0, |e| e.index),
                    write.entries.last().map_or(0, |e| e.index),
                ),
                last_term: write.entries.last().map_or(0, |e| e.term),
                hard_state: write.hard_state.map(|h| (h.term, h.voted_for)),
                snap: write
                    .snapshot_chunk
                    .as_ref()
                    .map(|c| (c.meta.last_index, c.offset, c.done)),
            });
        }
        self.enqueue_write(i, write, has_write)
    }

    /// The end of one `Ready`: serves the reads it made servable; a new leader is checked
    /// and may be handed a membership change at once.
    fn ready_handled(&mut self, i: usize, became_leader: bool) -> Check {
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
        self.check_term_not_behind(i, soft.term)?;
        let node = &mut self.nodes[i];
        let id = node.id;
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
            check_leader_names_itself(id, &soft)?;
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
        self.check_commit_index(i, commit)?;
        let node = &mut self.nodes[i];
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
            self.check_apply(i, entry)?;
            let node = &mut self.nodes[i];
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
        Ok(())
    }
}

/// One node of the simulation, handed to the shared driver for one drain of its `Ready`s.
pub(super) struct DrivenNode<'a> {
    sim: &'a mut Sim,
    i: usize,
    /// The `Ready` being handled made the node leader: a commit index in it was learned as
    /// a follower, and the new leader's checks run at its end.
    became_leader: bool,
}

impl ReadyHandler for DrivenNode<'_> {
    type Storage = SimStorage;
    type Error = Violation;

    fn core(&mut self) -> Option<&mut RaftCore<SimStorage>> {
        self.sim.nodes[self.i].core.as_mut()
    }

    fn soft_state(&mut self, soft: SoftState) -> Check {
        self.became_leader = self.sim.on_soft_state(self.i, soft)?;
        Ok(())
    }

    fn send(&mut self, env: Envelope, after_persist: bool) -> Check {
        self.sim.send(self.i, env, after_persist)
    }

    fn write(&mut self, write: Write) -> Check {
        self.sim.write(self.i, write)
    }

    fn commit_index(&mut self, commit: u64) -> Check {
        self.sim.on_commit_index(self.i, commit, self.became_leader)
    }

    fn apply(&mut self, entries: Vec<Entry>) -> Check {
        self.sim.apply(self.i, &entries)
    }

    fn read_state(&mut self, read: ReadState) -> Check {
        self.sim.on_read_state(self.i, read.ctx, read.index)
    }

    fn failed_read(&mut self, read: FailedRead) -> Check {
        let node = &mut self.sim.nodes[self.i];
        if node.reads.remove(&read.ctx).is_some() {
            let id = node.id;
            self.sim.record(Ev::ReadFailed {
                node: id,
                ctx: read.ctx,
            });
        }
        Ok(())
    }

    fn ready_handled(&mut self) -> Check {
        let became_leader = std::mem::take(&mut self.became_leader);
        self.sim.ready_handled(self.i, became_leader)
    }

    fn ready_never_drains(&mut self) -> Violation {
        violation(
            "ready contract",
            format!(
                "node {}: still has a Ready after {READY_ROUNDS_MAX} rounds",
                self.sim.nodes[self.i].id
            ),
        )
    }
}
