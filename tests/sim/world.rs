//! The world: the simulated nodes, the event queue and the main loop. Everything happens as
//! an event at a simulated time; `dispatch` hands each to the part of the simulator that
//! owns it (network, disk, clients, faults, a node's Ready handling), then the checker
//! runs. After `SimOptions::fault_steps` events the world heals and the liveness phase
//! must converge within `LIVENESS_TICKS`.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::rc::Rc;

use raftlog::raft::{Config, Envelope, HardState, Member, Membership, NodeId, Role};

use super::checker::{violation, Check, Checker, LogView};
use super::kv::Kv;
use super::node::Node;
use super::params::Params;
use super::rng::Rng;
use super::storage::Durable;
use super::trace::{Ev, Trace};
use super::{SimOptions, Stats};

/// Every this many steps, the whole-cluster cross-checks run (`Sim::check_full`).
const FULL_CHECK_STEPS: u64 = 128;
/// Simulated time units per nominal tick. Messages take a few units, disks one to a few
/// dozen, so a tick is long compared to a round trip, as 10 ms ticks are on a LAN.
pub(super) const TICK_UNITS: u64 = 10;
/// After healing, a leader must be elected and a new write applied everywhere within this
/// many ticks (about 20 maximal election timeouts). The slowest seeds are those with one
/// entry per message and one message in flight, where the new leader first replicates the
/// uncommitted backlog of earlier leaders (up to `max_uncommitted` each) one round trip at
/// a time, and those with a narrow election timeout range and no PreVote, where five
/// candidates split the vote again and again; 22,000 seeds needed at most 495.
pub(super) const LIVENESS_TICKS: u64 = 1_000;

pub(super) enum Event {
    Tick {
        node: usize,
        life: u64,
    },
    Deliver {
        env: Envelope,
    },
    DiskDone {
        node: usize,
        life: u64,
    },
    Client,
    Fault,
    HealPartition {
        generation: u64,
    },
    StormEnd {
        generation: u64,
    },
    Restart {
        node: usize,
        life: u64,
    },
    /// Node `node`'s driver saw its connection to or from `peer` end.
    LinkLost {
        node: usize,
        life: u64,
        peer: NodeId,
    },
    /// A crash aimed at an interesting moment (just after a node answered a vote or an
    /// append, or a leader sent entries).
    Crash {
        node: usize,
        life: u64,
        down_for: u64,
    },
}

pub(super) struct Queued {
    pub(super) time: u64,
    pub(super) seq: u64,
    pub(super) event: Event,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        (self.time, self.seq) == (other.time, other.seq)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Queued {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.time, self.seq).cmp(&(other.time, other.seq))
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Phase {
    Faulty,
    Liveness,
}

pub(super) struct Sim {
    pub(super) options: SimOptions,
    pub(super) params: Params,
    pub(super) net_rng: Rng,
    pub(super) disk_rng: Rng,
    pub(super) fault_rng: Rng,
    pub(super) client_rng: Rng,
    pub(super) core_seed_rng: Rng,
    /// Draws which connection losses a node's driver notices (see `report_link_lost`): a
    /// stream of its own, so that seeds keep the fault and network schedules they had.
    pub(super) link_rng: Rng,
    pub(super) now: u64,
    pub(super) seq: u64,
    pub(super) steps: u64,
    pub(super) queue: BinaryHeap<Reverse<Queued>>,
    pub(super) nodes: Vec<Node>,
    /// The initial voters (bootstrap membership).
    pub(super) membership: Membership,
    /// index -> membership, for every membership entry in the applied history.
    pub(super) applied_memberships: BTreeMap<u64, Membership>,
    /// The highest commit index any node reported: everything up to it is committed.
    pub(super) max_commit_seen: u64,
    /// The term of the entry at `max_commit_seen`.
    pub(super) max_commit_term: u64,
    /// Every (voter, term, candidate) vote handed out to be persisted.
    pub(super) votes: std::collections::BTreeSet<(NodeId, u64, NodeId)>,
    /// blocked[from][to]: messages on that link are lost.
    pub(super) blocked: Vec<Vec<bool>>,
    pub(super) partition_generation: u64,
    pub(super) storm_generation: u64,
    pub(super) storm_drop_ppm: u64,
    pub(super) phase: Phase,
    /// End of the current burst of faults.
    pub(super) burst_until: u64,
    pub(super) heal_time: u64,
    /// First value proposed after healing; liveness holds once a write with a value at
    /// least this is applied on every node.
    pub(super) liveness_value: u64,
    pub(super) liveness_index: Option<u64>,
    pub(super) next_value: u64,
    pub(super) next_ctx: u64,
    pub(super) checker: Checker,
    pub(super) trace: Trace,
    pub(super) stats: Stats,
}

impl Sim {
    pub(super) fn new(options: &SimOptions) -> Sim {
        let mut root = Rng::new(options.seed);
        let params = Params::draw(&mut root.fork());
        let mut node_rng = root.fork();
        let n = params.nodes;
        let mut membership = Membership::default();
        for id in 1..=n as u64 {
            membership.members.insert(
                id,
                Member {
                    raft_addr: format!("sim-{id}:raft"),
                    api_addr: format!("sim-{id}:api"),
                    voter: true,
                },
            );
        }
        let total = n + params.spare_nodes;
        let nodes = (1..=total as u64)
            .map(|id| Node {
                id,
                core: None,
                durable: Rc::new(RefCell::new(Durable::new())),
                life: 0,
                disk: VecDeque::new(),
                disk_free_at: 0,
                slow_disk_until: 0,
                paused_until: 0,
                stalled_since: None,
                tick_suspended: false,
                retired: false,
                tick_period: node_rng.range(TICK_UNITS - 1, TICK_UNITS + 2),
                kv: Kv::default(),
                role: Role::Follower,
                term: 0,
                leader: None,
                commit: 0,
                hard_state: HardState::default(),
                view: LogView {
                    offset: 1,
                    ..LogView::default()
                },
                proposals: BTreeMap::new(),
                reads: BTreeMap::new(),
            })
            .collect();
        let mut stats = Stats {
            nodes: n,
            profile: params.profile,
            ..Stats::default()
        };
        stats.nodes = n;
        Sim {
            options: options.clone(),
            net_rng: root.fork(),
            disk_rng: root.fork(),
            fault_rng: root.fork(),
            client_rng: root.fork(),
            core_seed_rng: root.fork(),
            link_rng: root.fork(),
            params,
            now: 0,
            seq: 0,
            steps: 0,
            queue: BinaryHeap::new(),
            nodes,
            membership,
            applied_memberships: BTreeMap::new(),
            max_commit_seen: 0,
            max_commit_term: 0,
            votes: Default::default(),
            blocked: vec![vec![false; total]; total],
            partition_generation: 0,
            storm_generation: 0,
            storm_drop_ppm: 0,
            phase: Phase::Faulty,
            burst_until: 0,
            heal_time: 0,
            liveness_value: u64::MAX,
            liveness_index: None,
            next_value: 1,
            next_ctx: 1,
            checker: Checker::default(),
            trace: Trace::new(options.ring_events.max(1), options.keep_full_trace),
            stats,
        }
    }

    pub(super) fn schedule(&mut self, delay: u64, event: Event) {
        self.seq += 1;
        self.queue.push(Reverse(Queued {
            time: self.now + delay,
            seq: self.seq,
            event,
        }));
    }

    pub(super) fn record(&mut self, ev: Ev) {
        self.trace.record(self.now, self.steps, ev);
    }

    pub(super) fn config(&mut self, id: NodeId) -> Config {
        let p = &self.params;
        let mut config = Config::new(id);
        config.election_timeout_ticks_min = p.election_min;
        config.election_timeout_ticks_max = p.election_min + p.election_spread;
        config.heartbeat_interval_ticks = p.heartbeat;
        config.pre_vote = p.pre_vote;
        config.check_quorum = p.check_quorum;
        config.max_inflight_msgs = p.max_inflight;
        config.max_uncommitted_entries = p.max_uncommitted;
        // The byte bound binds at half the entry window (writes carry 9-byte payloads), so
        // both refusals happen; derived, not drawn, to keep every seed's schedule as it was.
        config.max_uncommitted_bytes = p.max_uncommitted * 9 / 2;
        config.max_msg_bytes = p.max_msg_bytes;
        config.max_apply_bytes = p.max_apply_bytes;
        config.snapshot_chunk_bytes = p.snapshot_chunk_bytes;
        config.seed = self.core_seed_rng.next_u64();
        config.planted_bug = self.options.planted_bug;
        config
    }

    pub(super) fn run_loop(&mut self) -> Check {
        for i in 0..self.nodes.len() {
            self.start_node(i)?;
        }
        self.schedule(1, Event::Client);
        self.schedule(1, Event::Fault);
        while let Some(Reverse(item)) = self.queue.pop() {
            self.now = item.time;
            self.steps += 1;
            self.dispatch(item.event)?;
            self.check_step()?;
            if self.steps % FULL_CHECK_STEPS == 0 {
                self.check_full()?;
            }
            match self.phase {
                Phase::Faulty if self.steps >= self.options.fault_steps => self.heal()?,
                Phase::Liveness => {
                    if self.converged() {
                        self.stats.heal_to_converged_ticks =
                            (self.now - self.heal_time) / TICK_UNITS;
                        self.check_full()?;
                        return self.check_convergence();
                    }
                    if self.now > self.heal_time + LIVENESS_TICKS * TICK_UNITS {
                        return Err(self.liveness_failure());
                    }
                }
                Phase::Faulty => {}
            }
        }
        Err(violation("liveness", "the event queue ran dry".to_string()))
    }

    pub(super) fn dispatch(&mut self, event: Event) -> Check {
        match event {
            Event::Tick { node, life } => {
                if self.nodes[node].life != life || !self.nodes[node].up() {
                    return Ok(());
                }
                if let Some(wait) = self.paused_for(node) {
                    if self.nodes[node].stalled_since.is_some() {
                        // Counted among the missed ticks handed over on resuming.
                        self.nodes[node].tick_suspended = true;
                    } else {
                        self.schedule(wait, Event::Tick { node, life });
                    }
                    return Ok(());
                }
                self.catch_up_ticks(node)?;
                self.record(Ev::Tick {
                    node: self.nodes[node].id,
                });
                self.core(node).tick();
                self.handle_ready(node)?;
                let period = self.nodes[node].tick_period;
                self.schedule(period, Event::Tick { node, life });
                Ok(())
            }
            Event::Deliver { env } => self.deliver(env),
            Event::LinkLost { node, life, peer } => self.link_lost(node, life, peer),
            Event::DiskDone { node, life } => {
                if self.nodes[node].life != life || !self.nodes[node].up() {
                    return Ok(());
                }
                if let Some(wait) = self.paused_for(node) {
                    // The write is durable, but the paused process learns it only later;
                    // re-queued in order, so completions stay FIFO.
                    self.schedule(wait, Event::DiskDone { node, life });
                    return Ok(());
                }
                self.catch_up_ticks(node)?;
                self.disk_done(node)
            }
            Event::Client => {
                self.client_step()?;
                let gap = self.client_rng.range(1, 2 * self.params.client_interval);
                self.schedule(gap, Event::Client);
                Ok(())
            }
            Event::Fault => {
                if self.phase != Phase::Faulty {
                    return Ok(());
                }
                // Faults come in bursts separated by calm spells, so that leaders get
                // elected and replicate between disruptions (Figure 8 needs both).
                if self.now >= self.burst_until {
                    let calm = self.fault_rng.range(1, self.params.calm_max);
                    let burst = self.fault_rng.range(50, self.params.burst_max);
                    self.burst_until = self.now + calm + burst;
                    self.schedule(calm, Event::Fault);
                    return Ok(());
                }
                self.fault_step()?;
                let gap = self.fault_rng.range(1, 2 * self.params.fault_interval);
                self.schedule(gap, Event::Fault);
                Ok(())
            }
            Event::HealPartition { generation } => {
                if generation == self.partition_generation {
                    self.heal_partition();
                }
                Ok(())
            }
            Event::StormEnd { generation } => {
                if generation == self.storm_generation {
                    self.storm_drop_ppm = 0;
                }
                Ok(())
            }
            Event::Crash {
                node,
                life,
                down_for,
            } => {
                if self.phase == Phase::Faulty && self.nodes[node].life == life {
                    self.crash(node, down_for);
                }
                Ok(())
            }
            Event::Restart { node, life } => {
                if self.nodes[node].life == life
                    && !self.nodes[node].up()
                    && !self.nodes[node].retired
                {
                    self.start_node(node)?;
                }
                Ok(())
            }
        }
    }

    /// How long node `i` stays paused (SIGSTOP, a long GC pause), if it is.
    pub(super) fn paused_for(&self, i: usize) -> Option<u64> {
        let until = self.nodes[i].paused_until;
        (until > self.now).then(|| until - self.now)
    }

    /// A stalled node runs again: before it handles anything else it is handed every tick
    /// it missed, one per tick period elapsed, as the node driver does from its monotonic
    /// clock. A leader's CheckQuorum and lease must then see that time has passed.
    pub(super) fn catch_up_ticks(&mut self, i: usize) -> Check {
        let node = &mut self.nodes[i];
        let Some(since) = node.stalled_since else {
            return Ok(());
        };
        if node.paused_until > self.now || !node.up() {
            return Ok(());
        }
        node.stalled_since = None;
        let elapsed = self.now - since;
        let ticks = elapsed / node.tick_period;
        let id = node.id;
        self.record(Ev::CatchUpTicks { node: id, ticks });
        for _ in 0..ticks {
            self.core(i).tick();
        }
        self.handle_ready(i)?;
        let node = &mut self.nodes[i];
        if std::mem::take(&mut node.tick_suspended) {
            let (life, period) = (node.life, node.tick_period);
            self.schedule(period - elapsed % period, Event::Tick { node: i, life });
        }
        Ok(())
    }

    /// End of the faulty phase: every node up, no partitions, no loss, healthy disks.
    pub(super) fn heal(&mut self) -> Check {
        self.phase = Phase::Liveness;
        self.heal_time = self.now;
        self.liveness_value = self.next_value;
        self.record(Ev::Phase { name: "heal" });
        self.heal_partition();
        self.partition_generation += 1;
        self.storm_generation += 1;
        self.storm_drop_ppm = 0;
        // Nodes in no configuration anyone still has are shut down for good, as an
        // operator would. Removed nodes that some log still lists keep running; the core
        // must keep them from disrupting (thesis §4.2.3; seeds 8888000178, 5555022801).
        // Every node restarts first, so that its log's latest configuration counts.
        for i in 0..self.nodes.len() {
            self.nodes[i].slow_disk_until = 0;
            self.nodes[i].paused_until = 0;
            if !self.nodes[i].up() {
                self.start_node(i)?;
            } else {
                self.catch_up_ticks(i)?;
            }
        }
        let mut keep = self.membership_at(u64::MAX);
        for node in &self.nodes {
            if let Some(core) = &node.core {
                keep.members.extend(core.status().membership.members);
            }
        }
        for i in 0..self.nodes.len() {
            if !keep.members.contains_key(&self.nodes[i].id) {
                self.nodes[i].retired = true;
                self.crash(i, 1);
            }
        }
        Ok(())
    }

    /// The configuration in effect at `index` of the applied history: the latest
    /// membership entry at or before it, else the bootstrap voters.
    pub(super) fn membership_at(&self, index: u64) -> Membership {
        self.applied_memberships
            .range(..=index)
            .next_back()
            .map(|(_, m)| m.clone())
            .unwrap_or_else(|| self.membership.clone())
    }
}
