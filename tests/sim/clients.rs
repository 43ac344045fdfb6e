//! The clients and the operator: writes and reads (linearizable or lease) sent mostly to
//! nodes that believe they lead, leadership transfers, membership changes and snapshots;
//! and what the harness does when a write is acknowledged or a read answered.

use raftlog::raft::{
    Entry, Member, MembershipChange, NodeId, ProposeError, ReadMode, Role, SnapshotMeta,
};

use super::checker::{
    check_accepted_write_applied, check_membership_change_accepted, check_proposal_accepted,
    check_read_state, check_transfer_target_votes, proposal_failed, Check,
};
use super::kv::{encode_write, KEYS};
use super::trace::Ev;
use super::world::{Phase, Sim};

pub(super) struct PendingRead {
    pub(super) key: u8,
    pub(super) floor: u64,
    /// Asked while the node was not leader: it had to refuse, so serving it is a bug.
    pub(super) must_refuse: bool,
    pub(super) index: Option<u64>,
}

pub(super) struct Proposal {
    pub(super) term: u64,
    pub(super) value: u64,
}

impl Sim {
    /// A proposal is acknowledged when the node that accepted it applies its (index, term).
    pub(super) fn check_proposal_outcome(&mut self, i: usize, entry: &Entry) -> Check {
        let node = &mut self.nodes[i];
        let id = node.id;
        // Proposals at or below the applied index that were skipped (by a snapshot) are
        // of unknown outcome.
        while let Some((&index, _)) = node.proposals.first_key_value() {
            if index >= entry.index {
                break;
            }
            node.proposals.remove(&index);
        }
        let Some(proposal) = node.proposals.remove(&entry.index) else {
            return Ok(());
        };
        if proposal.term != entry.term {
            return Ok(()); // overwritten by another leader: not acknowledged, not lost
        }
        check_accepted_write_applied(id, proposal.value, entry)?;
        self.checker
            .record_ack(id, proposal.value, entry.index, self.now)?;
        self.stats.acked_writes += 1;
        self.record(Ev::Ack {
            node: id,
            value: proposal.value,
            index: entry.index,
        });
        Ok(())
    }

    pub(super) fn on_read_state(&mut self, i: usize, ctx: u64, index: u64) -> Check {
        let node = &mut self.nodes[i];
        let id = node.id;
        check_read_state(id, ctx, node.reads.get(&ctx), index)?;
        if let Some(read) = node.reads.get_mut(&ctx) {
            read.index = Some(index);
        }
        self.record(Ev::ReadIndex {
            node: id,
            ctx,
            index,
        });
        Ok(())
    }

    /// Serves every read whose index the state machine has reached.
    pub(super) fn serve_reads(&mut self, i: usize) -> Check {
        let node = &mut self.nodes[i];
        if node.reads.is_empty() {
            return Ok(());
        }
        let applied = node.kv.applied;
        let ready: Vec<u64> = node
            .reads
            .iter()
            .filter(|(_, r)| r.index.is_some_and(|x| x <= applied))
            .map(|(ctx, _)| *ctx)
            .collect();
        for ctx in ready {
            let node = &mut self.nodes[i];
            let read = node.reads.remove(&ctx).expect("collected above");
            let value = node.kv.keys[read.key as usize];
            let id = node.id;
            self.checker
                .check_read_linearizable(id, ctx, read.key, read.floor, applied, value, self.now)?;
            self.stats.reads_served += 1;
            self.record(Ev::ReadDone {
                node: id,
                ctx,
                applied,
                value: value.0,
            });
        }
        Ok(())
    }

    /// A node to send a client request to: usually one that believes it leads (any term:
    /// a deposed leader that has not noticed must refuse or answer correctly), sometimes
    /// the newest leader, sometimes anybody.
    pub(super) fn pick_target(&mut self) -> Option<usize> {
        let up: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].up() && self.nodes[i].paused_until <= self.now)
            .collect();
        if up.is_empty() {
            return None;
        }
        let leaders: Vec<usize> = up
            .iter()
            .copied()
            .filter(|&i| self.nodes[i].role == Role::Leader)
            .collect();
        let roll = self.client_rng.below(100);
        if !leaders.is_empty() && roll < 45 {
            return Some(self.client_rng.pick(&leaders));
        }
        if !leaders.is_empty() && roll < 85 {
            return leaders.iter().copied().max_by_key(|&i| self.nodes[i].term);
        }
        Some(self.client_rng.pick(&up))
    }

    pub(super) fn client_step(&mut self) -> Check {
        let roll = self.client_rng.below(100);
        if roll < self.params.snapshot_pct {
            return self.take_snapshot();
        }
        let Some(i) = self.pick_target() else {
            return Ok(());
        };
        self.catch_up_ticks(i)?;
        if roll < self.params.snapshot_pct + self.params.transfer_pct {
            return self.transfer_leadership(i);
        }
        if self.phase == Phase::Faulty
            && self.params.membership_pct > 0
            && self.client_rng.below(100) < self.params.membership_pct
        {
            return self.change_membership(i);
        }
        if roll < self.params.snapshot_pct + self.params.transfer_pct + self.params.read_pct {
            self.client_read(i)
        } else {
            self.client_write(i)
        }
    }

    /// An operator moves leadership (thesis §3.10): TimeoutNow makes a node campaign
    /// without PreVote, which races with everything else going on.
    ///
    /// With `membership_ops`, a third of the transfers aim at a learner, which the leader
    /// must refuse (thesis §4.2.1: a learner cannot lead, and campaigning would not count).
    pub(super) fn transfer_leadership(&mut self, i: usize) -> Check {
        let n = self.nodes.len() as u64;
        let membership = self.core(i).status().membership;
        let learners: Vec<NodeId> = membership.learners().collect();
        let to =
            if self.options.membership_ops && !learners.is_empty() && self.client_rng.below(3) == 0
            {
                self.client_rng.pick(&learners)
            } else {
                self.client_rng.range(1, n + 1)
            };
        let id = self.nodes[i].id;
        let was_leader = self.nodes[i].role == Role::Leader;
        let result = self.core(i).transfer_leadership(to);
        self.record(Ev::Transfer {
            node: id,
            to,
            result: result.clone().map_err(|e| format!("{e}")),
        });
        if result.is_ok() && was_leader {
            check_transfer_target_votes(id, to, &membership)?;
        }
        self.handle_ready(i)
    }

    /// One single-server change (thesis §4.1) on node `i`'s view of the configuration:
    /// add a spare node (as voter or learner), promote a learner, or remove a member
    /// (possibly the leader itself), keeping between 2 and 5 voters. With
    /// `membership_ops`, also demote a voter to learner, and aim a removal or demotion at
    /// the node itself (the leader, when it accepts) a third of the time.
    pub(super) fn change_membership(&mut self, i: usize) -> Check {
        let current = self.core(i).status().membership;
        let total = self.nodes.len() as u64;
        let voters = current.voters().count();
        let outsiders: Vec<u64> = (1..=total)
            .filter(|id| !current.members.contains_key(id))
            .collect();
        let learners: Vec<u64> = current.learners().collect();
        let members: Vec<u64> = current.members.keys().copied().collect();
        let member = |id: u64, voter: bool| Member {
            raft_addr: format!("sim-{id}:raft"),
            api_addr: format!("sim-{id}:api"),
            voter,
        };
        let kinds = if self.options.membership_ops { 4 } else { 3 };
        let own_id = self.nodes[i].id;
        let change = match self.client_rng.below(kinds) {
            3 if voters > 2 => {
                let voter_ids: Vec<u64> = current.voters().collect();
                let id = if current.is_voter(own_id) && self.client_rng.below(3) == 0 {
                    own_id
                } else {
                    self.client_rng.pick(&voter_ids)
                };
                MembershipChange::AddOrUpdate {
                    id,
                    member: member(id, false),
                }
            }
            3 if members.len() > 2 && current.learners().count() > 0 => {
                let id = self
                    .client_rng
                    .pick(&current.learners().collect::<Vec<_>>());
                MembershipChange::Remove { id }
            }
            3 => return Ok(()),
            0 if !outsiders.is_empty() => {
                let id = self.client_rng.pick(&outsiders);
                let voter = voters < 5 && self.client_rng.below(2) == 0;
                MembershipChange::AddOrUpdate {
                    id,
                    member: member(id, voter),
                }
            }
            1 if !learners.is_empty() && voters < 5 => {
                let id = self.client_rng.pick(&learners);
                MembershipChange::AddOrUpdate {
                    id,
                    member: member(id, true),
                }
            }
            _ if members.len() > 2 => {
                let id = if self.options.membership_ops
                    && current.members.contains_key(&own_id)
                    && self.client_rng.below(3) == 0
                {
                    own_id
                } else {
                    self.client_rng.pick(&members)
                };
                if current.is_voter(id) && voters <= 2 {
                    return Ok(());
                }
                MembershipChange::Remove { id }
            }
            _ => return Ok(()),
        };
        let id = self.nodes[i].id;
        let was_leader = self.nodes[i].role == Role::Leader;
        let result = self.core(i).propose_membership_change(change.clone());
        self.record(Ev::Membership {
            node: id,
            change: format!("{change:?}"),
            result: result.clone().map_err(|e| format!("{e}")),
        });
        if result.is_ok() {
            check_membership_change_accepted(id, was_leader, &change)?;
        }
        self.handle_ready(i)?;
        // Cut the leader off (or crash it) right after it appended a change: the change
        // stays on a minority while the next leader proposes its own, the interleaving
        // behind the single-server change bug.
        if result.is_ok()
            && self.options.membership_ops
            && self.in_burst()
            && self.fault_rng.below(100) < 30
        {
            if self.fault_rng.below(2) == 0 {
                self.isolate(i);
            } else {
                self.schedule_crash_soon(i);
            }
        }
        Ok(())
    }

    pub(super) fn client_write(&mut self, i: usize) -> Check {
        let value = self.next_value;
        self.next_value += 1;
        let key = self.client_rng.below(KEYS as u64) as u8;
        let id = self.nodes[i].id;
        let was_leader = self.nodes[i].role == Role::Leader;
        self.checker.proposed.insert(value, (key, self.now));
        let result = self.core(i).propose(encode_write(key, value));
        self.record(Ev::Propose {
            node: id,
            value,
            key,
            result: result.clone().map_err(|e| format!("{e}")),
        });
        match result {
            Ok((index, term)) => {
                let node = &mut self.nodes[i];
                check_proposal_accepted(id, was_leader, node.role, node.term, (index, term))?;
                node.proposals.insert(index, Proposal { term, value });
                self.handle_ready(i)?;
                // Cut the leader off right after it accepted a write: the AppendEntries
                // still in flight are lost, so the entry stays on this node only and a
                // later leader writes a different one at its index (Figure 8 (b)).
                if self.in_burst() && self.fault_rng.chance_ppm(self.params.isolate_ppm) {
                    self.isolate(i);
                }
                Ok(())
            }
            Err(ProposeError::NotLeader { .. })
            | Err(ProposeError::Backpressure)
            | Err(ProposeError::UncommittedBytesFull { .. }) => self.handle_ready(i),
            Err(ProposeError::TransferInProgress) => self.handle_ready(i),
            Err(other) => Err(proposal_failed(id, other)),
        }
    }

    pub(super) fn client_read(&mut self, i: usize) -> Check {
        let ctx = self.next_ctx;
        self.next_ctx += 1;
        let key = self.client_rng.below(KEYS as u64) as u8;
        let id = self.nodes[i].id;
        let is_leader = self.nodes[i].role == Role::Leader;
        let floor = self.checker.read_floor;
        let mode = if self.options.clock_stalls
            && self.client_rng.below(100) < self.params.lease_read_pct
        {
            ReadMode::Lease
        } else {
            ReadMode::Linearizable
        };
        let result = self.core(i).read_index(ctx, mode);
        self.record(Ev::ReadStart {
            node: id,
            ctx,
            key,
            floor,
            result: result.clone().map_err(|e| format!("{e}")),
        });
        if result.is_ok() {
            self.nodes[i].reads.insert(
                ctx,
                PendingRead {
                    key,
                    floor,
                    must_refuse: !is_leader,
                    index: None,
                },
            );
        }
        self.handle_ready(i)
    }

    /// The driver snapshots a node's state machine and compacts its log, keeping a few
    /// trailing entries (so some lagging followers catch up from the log, others by
    /// InstallSnapshot).
    pub(super) fn take_snapshot(&mut self) -> Check {
        let up: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].up())
            .collect();
        if up.is_empty() {
            return Ok(());
        }
        let i = self.client_rng.pick(&up);
        let trailing = self.client_rng.below(self.params.snapshot_trailing + 1);
        // The configuration in effect at the snapshot's last entry (Raft §7).
        let membership = self.membership_at(self.nodes[i].kv.applied);
        let node = &mut self.nodes[i];
        let id = node.id;
        let mut durable = node.durable.borrow_mut();
        if node.kv.applied < durable.snap_meta.last_index + self.params.snapshot_gap {
            return Ok(());
        }
        let meta = SnapshotMeta {
            last_index: node.kv.applied,
            last_term: node.kv.applied_term,
            membership,
        };
        durable.snap_meta = meta.clone();
        durable.snap_data = node.kv.encode();
        let compact_to = node
            .kv
            .applied
            .saturating_sub(trailing)
            .min(durable.last_index());
        durable.compact_to(compact_to);
        drop(durable);
        // A received snapshot still on its way to the disk may be newer than this one.
        if meta.last_index > node.view.snap_index {
            node.view.snap_index = meta.last_index;
            node.view.snap_term = meta.last_term;
        }
        node.view.compact_to(compact_to);
        self.stats.snapshots_taken += 1;
        self.record(Ev::SnapshotTaken {
            node: id,
            index: meta.last_index,
            term: meta.last_term,
            compact_to,
        });
        self.core(i).on_snapshot_taken(meta);
        self.handle_ready(i)
    }
}
