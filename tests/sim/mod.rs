//! A deterministic cluster simulator for the Raft core (in the manner of TigerBeetle's VOPR
//! and FoundationDB's simulation): one `u64` seed drives the network (drop, duplicate,
//! delay, reorder, symmetric and one-way partitions), the disks (write latency, slow disks,
//! crashes that lose unfinished writes), the clocks (per-node tick rates), the clients
//! (proposals and ReadIndex reads on leaders and non-leaders) and snapshots. After every
//! step the checker's invariants must hold; after a faulty phase the cluster heals and must
//! make progress within a bounded number of ticks.
//!
//! Everything is single-threaded and ordered: events sit in a priority queue keyed by
//! (time, sequence number), containers are `Vec`/`BTreeMap`, and all randomness comes from
//! SplitMix64 streams forked off the seed.

#![allow(dead_code)]

pub mod checker;
pub mod kv;
pub mod rng;
pub mod storage;
pub mod trace;

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;

use bytes::Bytes;
use raftlog::raft::{
    decode_membership, Config, Entry, EntryKind, Envelope, HardState, Member, Membership,
    MembershipChange, Message, NodeId, PlantedBug, ProposeError, RaftCore, ReadMode, Ready, Role,
    SnapshotChunk, SnapshotMeta, SoftState,
};

use checker::{violation, Check, Checker, LogView, Violation};
use kv::{encode_write, Kv, KEYS};
use rng::Rng;
use storage::{Durable, SimStorage};
use trace::{Ev, Msg, Trace};

/// Every this many steps, the whole-cluster cross-checks run (`Sim::check_full`).
const FULL_CHECK_STEPS: u64 = 128;
/// Simulated time units per nominal tick. Messages take a few units, disks one to a few
/// dozen, so a tick is long compared to a round trip, as 10 ms ticks are on a LAN.
const TICK_UNITS: u64 = 10;
/// After healing, a leader must be elected and a new write applied everywhere within this
/// many ticks (about 20 maximal election timeouts). The slowest seeds are those with one
/// entry per message and one message in flight, where the new leader first replicates the
/// uncommitted backlog of earlier leaders (up to `max_uncommitted` each) one round trip at
/// a time, and those with a narrow election timeout range and no PreVote, where five
/// candidates split the vote again and again; 22,000 seeds needed at most 495.
pub const LIVENESS_TICKS: u64 = 1_000;

/// What to run.
#[derive(Clone, Debug)]
pub struct SimOptions {
    pub seed: u64,
    pub planted_bug: Option<PlantedBug>,
    /// Events in the faulty phase.
    pub fault_steps: u64,
    /// Keep every event (replaying one seed) rather than the last `ring_events`.
    pub keep_full_trace: bool,
    pub ring_events: usize,
    /// The membership operations of issue 10 in the client schedule: demotions, removal
    /// of the leader, transfers aimed at learners, and a change proposed the moment a
    /// node becomes leader (an operator retrying a pending change). Off only to replay a
    /// seed found with the schedule before them, which these change.
    pub membership_ops: bool,
    /// Lease reads and clock stalls (issue 11): some reads use `ReadMode::Lease`, and
    /// process pauses become stalls (half of them longer than an election timeout) after
    /// which the node gets all missed ticks at once before anything else, as the node
    /// driver feeds them. Off only to replay a seed found with the schedule before them.
    pub clock_stalls: bool,
}

impl SimOptions {
    pub fn new(seed: u64) -> SimOptions {
        SimOptions {
            seed,
            planted_bug: None,
            fault_steps: 20_000,
            keep_full_trace: false,
            ring_events: 300,
            membership_ops: true,
            clock_stalls: true,
        }
    }
}

/// Figures from one run.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub nodes: usize,
    /// Which family of fault schedules the seed drew.
    pub profile: &'static str,
    pub steps: u64,
    pub sim_time: u64,
    pub trace_hash: u64,
    pub leaders_elected: u64,
    pub max_term: u64,
    pub crashes: u64,
    pub partitions: u64,
    pub committed: u64,
    pub acked_writes: u64,
    pub reads_served: u64,
    pub snapshots_taken: u64,
    pub snapshots_installed: u64,
    pub messages_delivered: u64,
    pub messages_dropped: u64,
    pub heal_to_converged_ticks: u64,
    /// Times a leader advanced its commit index to an entry of an earlier term (never, in
    /// a correct core: Raft §5.4.2).
    pub old_term_commits: u64,
    /// Membership entries committed (applied somewhere).
    pub membership_changes: u64,
}

/// A run that broke an invariant (or panicked in the core).
#[derive(Debug)]
pub struct Failure {
    pub seed: u64,
    pub planted_bug: Option<PlantedBug>,
    pub invariant: &'static str,
    pub detail: String,
    pub step: u64,
    pub time: u64,
    pub trace_tail: String,
    pub stats: Stats,
}

impl Failure {
    pub fn replay_command(&self) -> String {
        replay_command(self.seed, self.planted_bug)
    }

    pub fn report(&self) -> String {
        format!(
            "simulation seed {seed} broke {inv} at step {step} (time {time}, {nodes} nodes{planted}):\n  {detail}\nreplay: {cmd}\nlast events:\n{tail}",
            seed = self.seed,
            inv = self.invariant,
            step = self.step,
            time = self.time,
            nodes = self.stats.nodes,
            planted = self
                .planted_bug
                .map(|b| format!(", planted bug {b:?}"))
                .unwrap_or_default(),
            detail = self.detail,
            cmd = self.replay_command(),
            tail = self.trace_tail,
        )
    }
}

pub fn replay_command(seed: u64, planted_bug: Option<PlantedBug>) -> String {
    match planted_bug {
        None => format!(
            "RAFTLOG_SIM_SEED={seed} cargo test --release --test simulation -- --nocapture"
        ),
        Some(bug) => format!(
            "RAFTLOG_SIM_SEED={seed} RAFTLOG_SIM_PLANTED={bug:?} cargo test --release --test simulation -- --nocapture"
        ),
    }
}

pub fn parse_planted(name: &str) -> Option<PlantedBug> {
    match name {
        "CommitOldTermByCount" => Some(PlantedBug::CommitOldTermByCount),
        "VoteWithoutLogCheck" => Some(PlantedBug::VoteWithoutLogCheck),
        "VoteBeforePersist" => Some(PlantedBug::VoteBeforePersist),
        "ReadIndexWithoutQuorum" => Some(PlantedBug::ReadIndexWithoutQuorum),
        "MembershipChangeBeforeOwnTermCommit" => {
            Some(PlantedBug::MembershipChangeBeforeOwnTermCommit)
        }
        _ => None,
    }
}

/// Runs one seed to the end: faulty phase, heal, liveness phase, final convergence checks.
pub fn run(options: &SimOptions) -> Result<Stats, Box<Failure>> {
    run_traced(options).0
}

/// Runs one seed and also renders the kept trace (every event with `keep_full_trace`).
pub fn run_traced(options: &SimOptions) -> (Result<Stats, Box<Failure>>, String) {
    let mut sim = Sim::new(options);
    let outcome = catch_unwind(AssertUnwindSafe(|| sim.run_loop()));
    let result = match outcome {
        Ok(result) => result,
        Err(panic) => {
            let text = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "(non-string panic)".to_string());
            Err(violation(
                "no panic",
                format!("the core or the harness panicked: {text}"),
            ))
        }
    };
    sim.stats.steps = sim.steps;
    sim.stats.sim_time = sim.now;
    sim.stats.trace_hash = sim.trace.hash();
    let trace = if options.keep_full_trace {
        sim.trace.render()
    } else {
        String::new()
    };
    let result = match result {
        Ok(()) => Ok(sim.stats.clone()),
        Err(v) => Err(Box::new(Failure {
            seed: options.seed,
            planted_bug: options.planted_bug,
            invariant: v.invariant,
            detail: v.detail,
            step: sim.steps,
            time: sim.now,
            trace_tail: sim.trace.render_tail(options.ring_events),
            stats: sim.stats.clone(),
        })),
    };
    (result, trace)
}

/// Per-seed knobs, drawn from the seed so that different seeds stress different things
/// (swarm testing: a run with few crashes but many partitions finds other bugs than one
/// with the opposite mix).
#[derive(Clone, Debug)]
struct Params {
    nodes: usize,
    drop_ppm: u64,
    dup_ppm: u64,
    delay_max: u64,
    tail_ppm: u64,
    tail_max: u64,
    disk_delay_max: u64,
    fault_interval: u64,
    calm_max: u64,
    burst_max: u64,
    w_crash: u64,
    w_partition: u64,
    w_storm: u64,
    w_slow_disk: u64,
    w_pause: u64,
    /// Chance of a crash right after a node grants a vote, acknowledges an append or (as
    /// leader) sends entries: the moments where acting before persisting loses data.
    crash_after_send_ppm: u64,
    crash_down_max: u64,
    /// Chance of isolating a leader right after it accepts a write or advances its commit
    /// index.
    isolate_ppm: u64,
    /// Chance of a crash right after granting a vote (it must have been durable).
    crash_after_vote_ppm: u64,
    /// Election timeouts are drawn from `[min, min + spread)`: a small spread makes
    /// candidates collide (split votes, two candidates in one term).
    election_spread: u32,
    /// Share of client steps that add, promote or remove a member (thesis §4.1).
    membership_pct: u64,
    /// Nodes beyond the initial voters, started as non-members, for membership changes.
    spare_nodes: usize,
    /// Share of ordinary crashes aimed at a leader.
    leader_crash_pct: u64,
    profile: &'static str,
    partition_max: u64,
    client_interval: u64,
    read_pct: u64,
    snapshot_pct: u64,
    transfer_pct: u64,
    snapshot_gap: u64,
    snapshot_trailing: u64,
    pre_vote: bool,
    check_quorum: bool,
    heartbeat: u32,
    election_min: u32,
    max_msg_bytes: u64,
    max_inflight: usize,
    /// Backpressure: with one entry per message and one message in flight, a leader that
    /// accepted thousands of writes needs more than the liveness bound to replicate them.
    max_uncommitted: u64,
    max_apply_bytes: u64,
    snapshot_chunk_bytes: u64,
    /// Share of client reads sent as lease reads (with `clock_stalls`).
    lease_read_pct: u64,
}

impl Params {
    fn draw(rng: &mut Rng) -> Params {
        let election_min = rng.range(8, 16) as u32;
        let mut p = Params {
            nodes: if rng.below(2) == 0 { 3 } else { 5 },
            drop_ppm: rng.pick(&[0, 10_000, 50_000, 150_000]),
            dup_ppm: rng.pick(&[0, 10_000, 50_000]),
            delay_max: rng.range(2, 25),
            tail_ppm: rng.pick(&[0, 10_000, 40_000]),
            tail_max: rng.range(30, 400),
            disk_delay_max: rng.range(2, 20),
            fault_interval: rng.pick(&[15, 40, 100, 300]),
            calm_max: rng.pick(&[2, 300, 1_000, 3_000]),
            burst_max: rng.pick(&[200, 1_000, 5_000]),
            w_crash: rng.range(0, 10),
            w_partition: rng.range(0, 10),
            w_storm: rng.range(0, 3),
            w_slow_disk: rng.range(0, 3),
            w_pause: rng.range(0, 4),
            crash_after_send_ppm: rng.pick(&[0, 0, 3_000, 10_000]),
            crash_down_max: rng.pick(&[30, 200, 1500]),
            partition_max: rng.pick(&[200, 800, 3000]),
            client_interval: rng.range(3, 25),
            read_pct: rng.range(20, 60),
            snapshot_pct: rng.range(2, 12),
            transfer_pct: rng.pick(&[0, 0, 1, 3]),
            snapshot_gap: rng.range(2, 30),
            snapshot_trailing: rng.range(0, 6),
            pre_vote: rng.below(5) != 0,
            check_quorum: rng.below(5) != 0,
            heartbeat: rng.range(1, 4) as u32,
            election_min,
            // Often one entry per message, so a new leader's no-op travels apart from the
            // older entries before it (the Figure 8 interleavings need that).
            max_msg_bytes: rng.pick(&[40, 40, 100, 400, 4_000]),
            max_inflight: rng.range(1, 8) as usize,
            max_uncommitted: rng.pick(&[8, 32, 128]),
            max_apply_bytes: rng.range(33, 600),
            snapshot_chunk_bytes: rng.pick(&[16, 40, 1 << 20]),
            leader_crash_pct: 35,
            membership_pct: rng.pick(&[0, 0, 2, 5]),
            spare_nodes: 0,
            isolate_ppm: rng.pick(&[0, 0, 10_000]),
            crash_after_vote_ppm: rng.pick(&[0, 0, 50_000, 200_000]),
            election_spread: if rng.below(4) == 0 { 5 } else { election_min },
            profile: "mixed",
            lease_read_pct: 0,
        };
        match rng.below(10) {
            // 6.824's Figure8Unreliable: leaders crash soon after accepting writes and come
            // back quickly, one entry per message, so old-term entries spread without the new
            // leader's no-op; also where a vote or ack sent before it is durable gets lost.
            0..=2 => {
                p.profile = "figure8";
                p.w_crash = 10;
                p.w_partition = rng.range(0, 3);
                p.w_storm = 0;
                p.w_pause = 0;
                p.leader_crash_pct = 80;
                p.crash_after_send_ppm = rng.pick(&[10_000, 30_000]);
                p.crash_down_max = rng.pick(&[30, 100, 300]);
                p.max_msg_bytes = 40;
                p.isolate_ppm = rng.pick(&[30_000, 100_000]);
                p.partition_max = rng.pick(&[200, 800]);
                p.max_inflight = rng.range(1, 3) as usize;
                p.drop_ppm = rng.pick(&[50_000, 150_000]);
                p.tail_ppm = 40_000;
                p.client_interval = rng.range(2, 8);
                p.fault_interval = rng.pick(&[30, 80, 200]);
            }
            // Partitions and paused processes: deposed leaders that do not know it yet,
            // with plenty of reads sent their way.
            3..=5 => {
                p.profile = "partitions";
                p.w_crash = rng.range(0, 2);
                p.w_partition = 10;
                p.w_pause = rng.range(2, 8);
                p.crash_after_send_ppm = 0;
                p.read_pct = rng.range(40, 70);
                p.partition_max = rng.pick(&[400, 1_500, 4_000]);
            }
            _ => {}
        }
        if p.membership_pct > 0 {
            p.spare_nodes = 2;
        }
        // Drawn last, so that every earlier knob of a seed stays what it was.
        p.lease_read_pct = rng.pick(&[0, 30, 70]);
        p
    }
}

/// One disk write: everything a `Ready` asked to persist, with the messages that wait for it.
struct Batch {
    snapshot_chunk: Option<SnapshotChunk>,
    entries: Vec<Entry>,
    hard_state: Option<HardState>,
    persisted_messages: Vec<Envelope>,
}

struct PendingRead {
    key: u8,
    floor: u64,
    /// Asked while the node was not leader: it had to refuse, so serving it is a bug.
    must_refuse: bool,
    index: Option<u64>,
}

struct Proposal {
    term: u64,
    value: u64,
}

struct Node {
    id: NodeId,
    /// `None` while crashed.
    core: Option<RaftCore<SimStorage>>,
    durable: Rc<RefCell<Durable>>,
    /// Incremented at each crash; events of an earlier life are ignored.
    life: u64,
    disk: VecDeque<Batch>,
    disk_free_at: u64,
    slow_disk_until: u64,
    paused_until: u64,
    /// Start of a stall whose missed ticks are still owed (see `catch_up_ticks`).
    stalled_since: Option<u64>,
    /// The tick event fell due during a stall and was dropped; `catch_up_ticks` restarts it.
    tick_suspended: bool,
    /// Removed from the cluster and shut down for good (liveness phase).
    retired: bool,
    tick_period: u64,
    kv: Kv,
    role: Role,
    term: u64,
    leader: Option<NodeId>,
    commit: u64,
    /// Latest hard state handed out (durable or pending).
    hard_state: HardState,
    view: LogView,
    proposals: BTreeMap<u64, Proposal>,
    reads: BTreeMap<u64, PendingRead>,
}

impl Node {
    fn up(&self) -> bool {
        self.core.is_some()
    }
}

enum Event {
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
    /// A crash aimed at an interesting moment (just after a node answered a vote or an
    /// append, or a leader sent entries).
    Crash {
        node: usize,
        life: u64,
        down_for: u64,
    },
}

struct Queued {
    time: u64,
    seq: u64,
    event: Event,
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
enum Phase {
    Faulty,
    Liveness,
}

struct Sim {
    options: SimOptions,
    params: Params,
    net_rng: Rng,
    disk_rng: Rng,
    fault_rng: Rng,
    client_rng: Rng,
    core_seed_rng: Rng,
    now: u64,
    seq: u64,
    steps: u64,
    queue: BinaryHeap<Reverse<Queued>>,
    nodes: Vec<Node>,
    /// The initial voters (bootstrap membership).
    membership: Membership,
    /// index -> membership, for every membership entry in the applied history.
    applied_memberships: BTreeMap<u64, Membership>,
    /// The highest commit index any node reported: everything up to it is committed.
    max_commit_seen: u64,
    /// The term of the entry at `max_commit_seen`.
    max_commit_term: u64,
    /// Every (voter, term, candidate) vote handed out to be persisted.
    votes: std::collections::BTreeSet<(NodeId, u64, NodeId)>,
    /// blocked[from][to]: messages on that link are lost.
    blocked: Vec<Vec<bool>>,
    partition_generation: u64,
    storm_generation: u64,
    storm_drop_ppm: u64,
    phase: Phase,
    /// End of the current burst of faults.
    burst_until: u64,
    heal_time: u64,
    /// First value proposed after healing; liveness holds once a write with a value at
    /// least this is applied on every node.
    liveness_value: u64,
    liveness_index: Option<u64>,
    next_value: u64,
    next_ctx: u64,
    checker: Checker,
    trace: Trace,
    stats: Stats,
}

impl Sim {
    fn new(options: &SimOptions) -> Sim {
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

    fn schedule(&mut self, delay: u64, event: Event) {
        self.seq += 1;
        self.queue.push(Reverse(Queued {
            time: self.now + delay,
            seq: self.seq,
            event,
        }));
    }

    fn record(&mut self, ev: Ev) {
        self.trace.record(self.now, self.steps, ev);
    }

    fn config(&mut self, id: NodeId) -> Config {
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

    fn run_loop(&mut self) -> Check {
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

    fn dispatch(&mut self, event: Event) -> Check {
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

    fn core(&mut self, i: usize) -> &mut RaftCore<SimStorage> {
        self.nodes[i]
            .core
            .as_mut()
            .expect("the harness only drives nodes that are up")
    }

    // ---------------------------------------------------------------- node lifecycle

    /// Builds a core from durable state only, as a real node does after a power cut:
    /// the durable log and snapshot, the durable hard state, the bootstrap membership.
    fn start_node(&mut self, i: usize) -> Check {
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

    /// Power cut: the core and every write still in flight to the disk are gone.
    fn crash(&mut self, i: usize, down_for: u64) {
        let node = &mut self.nodes[i];
        if node.core.is_none() {
            return;
        }
        node.core = None;
        node.life += 1;
        // The write at the head of the queue may be torn: the snapshot chunk and a prefix of
        // its entries reached the disk (the WAL), the hard state (a separate store) only if
        // every entry did. Anything after it is lost whole.
        let torn = match node.disk.pop_front() {
            Some(batch) if self.disk_rng.below(2) == 0 => Some(batch),
            Some(batch) => {
                node.disk.push_front(batch);
                None
            }
            None => None,
        };
        let lost = node.disk.len();
        node.disk.clear();
        if let Some(batch) = torn {
            let mut durable = node.durable.borrow_mut();
            if let Some(chunk) = batch.snapshot_chunk {
                // A bad chunk was reported when the Ready was taken.
                let _ = persist_chunk_bytes(&mut durable, &chunk);
            }
            let keep = self.disk_rng.below(batch.entries.len() as u64 + 1) as usize;
            // A gap here would have been reported when the Ready was taken.
            let _ = durable.append(&batch.entries[..keep]);
            if keep == batch.entries.len() && self.disk_rng.below(2) == 0 {
                if let Some(hs) = batch.hard_state {
                    durable.hard_state = hs;
                }
            }
        }
        node.proposals.clear();
        node.reads.clear();
        node.role = Role::Follower;
        let (id, life) = (node.id, node.life);
        self.stats.crashes += 1;
        self.record(Ev::Crash {
            node: id,
            lost_writes: lost,
        });
        self.schedule(down_for.max(1), Event::Restart { node: i, life });
    }

    // ---------------------------------------------------------------- Ready handling

    /// Drains the core's outputs, handling each `Ready` in field order (see `Ready`).
    fn handle_ready(&mut self, i: usize) -> Check {
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

    fn process_ready(&mut self, i: usize, ready: Ready) -> Check {
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

    /// Node `i`'s log from index `from` on as the core means it: durable entries, then
    /// the writes still on their way to the disk, then `extra` (a Ready being handled),
    /// each truncating what it overlaps. Returns index -> (term, is a membership entry),
    /// and the (index, term) its snapshot will cover.
    fn log_tail(
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
    fn check_one_membership_change_in_flight(&self, appending: usize, extra: &[Entry]) -> Check {
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
    fn check_votes_from_voters(&self, i: usize) -> Check {
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
    fn check_commit_quorum(&self, i: usize, commit: u64) -> Check {
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

    /// Returns whether the node just became leader.
    fn on_soft_state(&mut self, i: usize, soft: SoftState) -> Result<bool, Violation> {
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

    fn check_snapshot_chunk(&mut self, i: usize, chunk: &SnapshotChunk) -> Check {
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
    fn check_and_view_entries(&mut self, i: usize, entries: &[Entry]) -> Check {
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
    fn check_hard_state(&mut self, i: usize, hs: HardState) -> Check {
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

    fn enqueue_write(&mut self, i: usize, batch: Batch, has_write: bool) -> Check {
        if !has_write && self.nodes[i].disk.is_empty() {
            // Nothing to wait for: the messages' dependencies are all durable already.
            for env in batch.persisted_messages {
                self.send(i, env, true)?;
            }
            return Ok(());
        }
        let node = &mut self.nodes[i];
        let delay = if has_write {
            let max = if self.now < node.slow_disk_until {
                self.params.disk_delay_max * 10
            } else {
                self.params.disk_delay_max
            };
            self.disk_rng.range(1, max + 1)
        } else {
            0
        };
        let done_at = (self.now + delay).max(node.disk_free_at);
        node.disk_free_at = done_at;
        node.disk.push_back(batch);
        let life = node.life;
        let wait = done_at - self.now;
        self.schedule(wait, Event::DiskDone { node: i, life });
        Ok(())
    }

    /// The oldest write of node `i` reached the disk.
    fn disk_done(&mut self, i: usize) -> Check {
        let Some(batch) = self.nodes[i].disk.pop_front() else {
            return Err(violation(
                "harness",
                "disk completion without a write".to_string(),
            ));
        };
        let id = self.nodes[i].id;
        let mut persisted: Vec<(u64, u64)> = Vec::new();
        let mut installed = None;
        if let Some(chunk) = batch.snapshot_chunk {
            let meta = chunk.meta.clone();
            if self.persist_snapshot_chunk(i, chunk)?.is_some() {
                installed = Some(meta);
            }
        }
        if !batch.entries.is_empty() {
            let last = batch.entries[batch.entries.len() - 1].clone();
            self.nodes[i]
                .durable
                .borrow_mut()
                .append(&batch.entries)
                .map_err(|e| violation("ready contract", format!("node {id}: {e}")))?;
            persisted.push((last.index, last.term));
        }
        if let Some(hs) = batch.hard_state {
            self.nodes[i].durable.borrow_mut().hard_state = hs;
        }
        let durable = self.nodes[i].durable.borrow();
        let ev = Ev::Durable {
            node: id,
            last_index: durable.last_index(),
            hard_state: (durable.hard_state.term, durable.hard_state.voted_for),
        };
        drop(durable);
        self.record(ev);
        if let Some(meta) = installed {
            self.core(i).on_snapshot_installed(meta);
        }
        for (index, term) in persisted {
            self.core(i).on_persisted(index, term);
        }
        for env in batch.persisted_messages {
            self.send(i, env, true)?;
        }
        self.handle_ready(i)
    }

    /// Persists one received snapshot chunk; on the last one installs the snapshot (the
    /// state machine is restored from its bytes) and returns its (index, term).
    fn persist_snapshot_chunk(
        &mut self,
        i: usize,
        chunk: SnapshotChunk,
    ) -> Result<Option<(u64, u64)>, Violation> {
        let id = self.nodes[i].id;
        let installed = {
            let mut durable = self.nodes[i].durable.borrow_mut();
            persist_chunk_bytes(&mut durable, &chunk)
                .map_err(|e| violation("ready contract", format!("node {id}: {e}")))?
        };
        let Some(bytes) = installed else {
            return Ok(None);
        };
        let meta = chunk.meta;
        let kv = Kv::decode(&bytes).map_err(|e| {
            violation(
                "snapshot decodes",
                format!("node {id}: received snapshot {}: {e}", meta.last_index),
            )
        })?;
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
        )?;
        self.nodes[i].kv = kv;
        self.stats.snapshots_installed += 1;
        self.record(Ev::SnapshotInstalled {
            node: id,
            index: meta.last_index,
            term: meta.last_term,
        });
        Ok(Some((meta.last_index, meta.last_term)))
    }

    /// `became_leader`: the same `Ready` made the node leader, so a commit index in it was
    /// learned as a follower, not counted.
    fn on_commit_index(&mut self, i: usize, commit: u64, became_leader: bool) -> Check {
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
    fn apply(&mut self, i: usize, entries: &[Entry]) -> Check {
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

    /// A proposal is acknowledged when the node that accepted it applies its (index, term).
    fn check_proposal_outcome(&mut self, i: usize, entry: &Entry) -> Check {
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
        if entry.payload
            != encode_write(entry.payload.first().copied().unwrap_or(0), proposal.value)
        {
            return Err(violation(
                "log matching",
                format!(
                    "node {id} accepted write {} at (index {}, term {}) but applied another entry there",
                    proposal.value, entry.index, entry.term
                ),
            ));
        }
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

    fn on_read_state(&mut self, i: usize, ctx: u64, index: u64) -> Check {
        let node = &mut self.nodes[i];
        let id = node.id;
        let Some(read) = node.reads.get_mut(&ctx) else {
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
        read.index = Some(index);
        self.record(Ev::ReadIndex {
            node: id,
            ctx,
            index,
        });
        Ok(())
    }

    /// Serves every read whose index the state machine has reached.
    fn serve_reads(&mut self, i: usize) -> Check {
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

    /// The configuration in effect at `index` of the applied history: the latest
    /// membership entry at or before it, else the bootstrap voters.
    fn membership_at(&self, index: u64) -> Membership {
        self.applied_memberships
            .range(..=index)
            .next_back()
            .map(|(_, m)| m.clone())
            .unwrap_or_else(|| self.membership.clone())
    }

    // ---------------------------------------------------------------- network

    fn send(&mut self, i: usize, env: Envelope, after_persist: bool) -> Check {
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
        self.check_durable_before_acknowledged(i, &env, after_persist)?;
        let msg = Msg::of(&env.message);
        self.record(Ev::Send {
            from: env.from,
            to: env.to,
            msg,
            after_persist,
        });
        let crash_ppm = match &env.message {
            Message::RequestVoteResponse { granted: true, .. } => self
                .params
                .crash_after_send_ppm
                .max(self.params.crash_after_vote_ppm),
            Message::AppendEntriesResponse { success: true, .. } => {
                self.params.crash_after_send_ppm
            }
            Message::AppendEntries { entries, .. } if !entries.is_empty() => {
                self.params.crash_after_send_ppm
            }
            _ => 0,
        };
        if crash_ppm > 0 && self.in_burst() && self.fault_rng.chance_ppm(crash_ppm) {
            self.schedule_crash_soon(i);
        }
        let drop_ppm = if self.phase == Phase::Faulty {
            self.params.drop_ppm.max(self.storm_drop_ppm)
        } else {
            0
        };
        if self.net_rng.chance_ppm(drop_ppm) {
            self.stats.messages_dropped += 1;
            self.record(Ev::Drop {
                from: env.from,
                to: env.to,
                msg,
                why: "lost",
            });
            return Ok(());
        }
        if self.net_rng.chance_ppm(self.params.dup_ppm) {
            let delay = self.message_delay();
            self.schedule(delay, Event::Deliver { env: env.clone() });
        }
        let delay = self.message_delay();
        self.schedule(delay, Event::Deliver { env });
        Ok(())
    }

    fn in_burst(&self) -> bool {
        self.phase == Phase::Faulty && self.now < self.burst_until
    }

    /// What a message acknowledges must already be on the sender's disk (Raft Figure 2:
    /// "updated on stable storage before responding to RPCs"): a successful append answer's
    /// `match_index`, a granted vote. (Under the planted `VoteBeforePersist` the vote check is
    /// off, so that test shows the fault schedules turn the bug into two leaders in one term.)
    fn check_durable_before_acknowledged(
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

    /// A crash within a few units, often with a quick restart: a vote or an
    /// acknowledgement sent before it was durable is forgotten while its recipient still
    /// counts on it.
    fn schedule_crash_soon(&mut self, i: usize) {
        let delay = self.fault_rng.below(4);
        let down_for = if self.fault_rng.below(2) == 0 {
            self.fault_rng.range(1, 15)
        } else {
            self.fault_rng.range(15, 200)
        };
        let life = self.nodes[i].life;
        self.schedule(
            delay,
            Event::Crash {
                node: i,
                life,
                down_for,
            },
        );
    }

    fn message_delay(&mut self) -> u64 {
        if self.phase == Phase::Faulty && self.net_rng.chance_ppm(self.params.tail_ppm) {
            self.net_rng.range(1, self.params.tail_max)
        } else {
            self.net_rng.range(1, self.params.delay_max + 1)
        }
    }

    /// How long node `i` stays paused (SIGSTOP, a long GC pause), if it is.
    fn paused_for(&self, i: usize) -> Option<u64> {
        let until = self.nodes[i].paused_until;
        (until > self.now).then(|| until - self.now)
    }

    fn deliver(&mut self, env: Envelope) -> Check {
        let from = (env.from - 1) as usize;
        let to = (env.to - 1) as usize;
        let msg = Msg::of(&env.message);
        let why = if self.blocked[from][to] {
            Some("partitioned")
        } else if !self.nodes[to].up() {
            Some("receiver down")
        } else {
            None
        };
        if let Some(why) = why {
            self.stats.messages_dropped += 1;
            self.record(Ev::Drop {
                from: env.from,
                to: env.to,
                msg,
                why,
            });
            return Ok(());
        }
        if let Some(wait) = self.paused_for(to) {
            // Queued in the socket buffer until the process runs again, in arrival order
            // give or take a few units.
            let jitter = self.net_rng.below(5);
            self.schedule(wait + jitter, Event::Deliver { env });
            return Ok(());
        }
        self.catch_up_ticks(to)?;
        self.stats.messages_delivered += 1;
        self.record(Ev::Deliver {
            from: env.from,
            to: env.to,
            msg,
        });
        self.core(to).step(env);
        self.handle_ready(to)
    }

    // ---------------------------------------------------------------- clients

    /// A node to send a client request to: usually one that believes it leads (any term:
    /// a deposed leader that has not noticed must refuse or answer correctly), sometimes
    /// the newest leader, sometimes anybody.
    fn pick_target(&mut self) -> Option<usize> {
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

    fn client_step(&mut self) -> Check {
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
    fn transfer_leadership(&mut self, i: usize) -> Check {
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
        if result.is_ok() && was_leader && to != id && !membership.is_voter(to) {
            return Err(violation(
                "transfers target voters",
                format!(
                    "leader {id} accepted a leadership transfer to node {to}, not a voter in {:?}",
                    membership.voters().collect::<Vec<_>>()
                ),
            ));
        }
        self.handle_ready(i)
    }

    /// One single-server change (thesis §4.1) on node `i`'s view of the configuration:
    /// add a spare node (as voter or learner), promote a learner, or remove a member
    /// (possibly the leader itself), keeping between 2 and 5 voters. With
    /// `membership_ops`, also demote a voter to learner, and aim a removal or demotion at
    /// the node itself (the leader, when it accepts) a third of the time.
    fn change_membership(&mut self, i: usize) -> Check {
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
        if result.is_ok() && !was_leader {
            return Err(violation(
                "non-leaders refuse proposals",
                format!("node {id} accepted membership change {change:?} while not leader"),
            ));
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

    fn client_write(&mut self, i: usize) -> Check {
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
                if !was_leader {
                    return Err(violation(
                        "non-leaders refuse proposals",
                        format!("node {id} (role {:?}) accepted a proposal at (index {index}, term {term})", self.nodes[i].role),
                    ));
                }
                let node = &mut self.nodes[i];
                if term != node.term {
                    return Err(violation(
                        "proposal term",
                        format!(
                            "leader {id} of term {} returned term {term} for a proposal",
                            node.term
                        ),
                    ));
                }
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
            Err(other) => Err(violation(
                "propose contract",
                format!("node {id}: a plain proposal failed with {other}"),
            )),
        }
    }

    fn client_read(&mut self, i: usize) -> Check {
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
    fn take_snapshot(&mut self) -> Check {
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

    // ---------------------------------------------------------------- faults

    fn fault_step(&mut self) -> Check {
        let p = self.params.clone();
        let total = p.w_crash + p.w_partition + p.w_storm + p.w_slow_disk + p.w_pause;
        if total == 0 {
            return Ok(());
        }
        let mut roll = self.fault_rng.below(total);
        if roll < p.w_crash {
            return self.fault_crash();
        }
        roll -= p.w_crash;
        if roll < p.w_partition {
            self.fault_partition();
            return Ok(());
        }
        roll -= p.w_partition;
        if roll < p.w_storm {
            self.storm_generation += 1;
            self.storm_drop_ppm = self.fault_rng.pick(&[300_000, 700_000, 1_000_000]);
            let until = self.fault_rng.range(20, 400);
            let generation = self.storm_generation;
            self.record(Ev::NetStorm {
                drop_ppm: self.storm_drop_ppm,
                until: self.now + until,
            });
            self.schedule(until, Event::StormEnd { generation });
            return Ok(());
        }
        roll -= p.w_storm;
        if roll < p.w_pause {
            return self.fault_pause();
        }
        let i = self.fault_rng.below(self.nodes.len() as u64) as usize;
        let until = self.now + self.fault_rng.range(50, 1000);
        self.nodes[i].slow_disk_until = until;
        let id = self.nodes[i].id;
        self.record(Ev::SlowDisk { node: id, until });
        Ok(())
    }

    /// Pauses a process (SIGSTOP, a long GC pause): no ticks, no message handling, no
    /// disk callbacks until it resumes, when it finds everything queued up. A paused leader
    /// that resumes still believing it leads is what ReadIndex's quorum round is for.
    fn fault_pause(&mut self) -> Check {
        let candidates: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].up() && self.nodes[i].paused_until <= self.now)
            .collect();
        if candidates.is_empty() {
            return Ok(());
        }
        let leaders: Vec<usize> = candidates
            .iter()
            .copied()
            .filter(|&i| self.nodes[i].role == Role::Leader)
            .collect();
        let i = if !leaders.is_empty() && self.fault_rng.below(3) != 0 {
            self.fault_rng.pick(&leaders)
        } else {
            self.fault_rng.pick(&candidates)
        };
        let id = self.nodes[i].id;
        if self.options.clock_stalls {
            // The node driver's contract: every tick missed while the process stood still
            // is handed over on resuming. (Without it a paused leader's lease would outlive
            // its leadership: lease reads rely on clocks that keep running, thesis §6.3.)
            let timeout = u64::from(self.params.election_min + self.params.election_spread);
            let until = if self.fault_rng.below(2) == 0 {
                self.now + self.fault_rng.range(20, 600)
            } else {
                self.now + self.fault_rng.range(timeout, 4 * timeout) * TICK_UNITS
            };
            let node = &mut self.nodes[i];
            node.paused_until = node.paused_until.max(until);
            // A stall that begins before the previous one's ticks were handed over (the node
            // has not run since) extends it: every tick since the first is still owed.
            node.stalled_since.get_or_insert(self.now);
            self.record(Ev::Stall { node: id, until });
            return Ok(());
        }
        let until = self.now + self.fault_rng.range(20, 600);
        self.nodes[i].paused_until = until;
        self.record(Ev::Pause { node: id, until });
        Ok(())
    }

    /// A stalled node runs again: before it handles anything else it is handed every tick
    /// it missed, one per tick period elapsed, as the node driver does from its monotonic
    /// clock. A leader's CheckQuorum and lease must then see that time has passed.
    fn catch_up_ticks(&mut self, i: usize) -> Check {
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

    /// Crashes a node: often the leader, often one with writes still in flight to its disk
    /// (a vote or entries it may already have acknowledged if the core is wrong), otherwise
    /// anyone. Down for a short or a long time.
    fn fault_crash(&mut self) -> Check {
        let up: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].up())
            .collect();
        if up.is_empty() {
            return Ok(());
        }
        let leaders: Vec<usize> = up
            .iter()
            .copied()
            .filter(|&i| self.nodes[i].role == Role::Leader)
            .collect();
        let writing: Vec<usize> = up
            .iter()
            .copied()
            .filter(|&i| !self.nodes[i].disk.is_empty())
            .collect();
        let roll = self.fault_rng.below(100);
        let leader_pct = self.params.leader_crash_pct;
        let victim = if roll < leader_pct && !leaders.is_empty() {
            self.fault_rng.pick(&leaders)
        } else if roll < leader_pct + 40 && !writing.is_empty() {
            self.fault_rng.pick(&writing)
        } else {
            self.fault_rng.pick(&up)
        };
        let down_for = if self.fault_rng.below(2) == 0 {
            self.fault_rng.range(1, 30)
        } else {
            self.fault_rng.range(1, self.params.crash_down_max)
        };
        self.crash(victim, down_for);
        Ok(())
    }

    // The partition is a matrix; index loops say what they do more plainly than iterators.
    #[allow(clippy::needless_range_loop)]
    fn fault_partition(&mut self) {
        let n = self.nodes.len();
        if self.blocked.iter().flatten().any(|&b| b) {
            return; // one partition at a time; it heals on its own timer
        }
        let mut blocked = vec![vec![false; n]; n];
        let kind = self.fault_rng.below(4);
        let leader = (0..n).find(|&i| self.nodes[i].up() && self.nodes[i].role == Role::Leader);
        match kind {
            // Isolate one node (often the leader) in both directions.
            0 => {
                let victim = match leader {
                    Some(l) if self.fault_rng.below(3) != 0 => l,
                    _ => self.fault_rng.below(n as u64) as usize,
                };
                for j in 0..n {
                    if j != victim {
                        blocked[victim][j] = true;
                        blocked[j][victim] = true;
                    }
                }
            }
            // Split into two random groups.
            1 => {
                let side: Vec<bool> = (0..n).map(|_| self.fault_rng.below(2) == 0).collect();
                for a in 0..n {
                    for b in 0..n {
                        if side[a] != side[b] {
                            blocked[a][b] = true;
                        }
                    }
                }
            }
            // One-way: a node can send but not receive, or receive but not send.
            2 => {
                let victim = match leader {
                    Some(l) if self.fault_rng.below(2) == 0 => l,
                    _ => self.fault_rng.below(n as u64) as usize,
                };
                let outgoing = self.fault_rng.below(2) == 0;
                for j in 0..n {
                    if j != victim {
                        if outgoing {
                            blocked[victim][j] = true;
                        } else {
                            blocked[j][victim] = true;
                        }
                    }
                }
            }
            // Random individual links, one direction each.
            _ => {
                for a in 0..n {
                    for b in 0..n {
                        if a != b && self.fault_rng.below(3) == 0 {
                            blocked[a][b] = true;
                        }
                    }
                }
            }
        }
        self.blocked = blocked;
        self.partition_generation += 1;
        self.stats.partitions += 1;
        let list = self.blocked_links();
        self.record(Ev::Partition { blocked: list });
        let duration = self.fault_rng.range(20, self.params.partition_max);
        let generation = self.partition_generation;
        self.schedule(duration, Event::HealPartition { generation });
    }

    /// Isolates node `i` in both directions now (messages in flight to and from it are
    /// lost), unless another partition is in force.
    fn isolate(&mut self, i: usize) {
        if self.blocked.iter().flatten().any(|&b| b) {
            return;
        }
        let n = self.nodes.len();
        for j in 0..n {
            if j != i {
                self.blocked[i][j] = true;
                self.blocked[j][i] = true;
            }
        }
        self.partition_generation += 1;
        self.stats.partitions += 1;
        let list = self.blocked_links();
        self.record(Ev::Partition { blocked: list });
        let duration = self.fault_rng.range(20, self.params.partition_max);
        let generation = self.partition_generation;
        self.schedule(duration, Event::HealPartition { generation });
    }

    fn blocked_links(&self) -> Vec<(NodeId, NodeId)> {
        let mut list = Vec::new();
        for (a, row) in self.blocked.iter().enumerate() {
            for (b, &x) in row.iter().enumerate() {
                if x {
                    list.push((a as u64 + 1, b as u64 + 1));
                }
            }
        }
        list
    }

    fn heal_partition(&mut self) {
        let n = self.nodes.len();
        self.blocked = vec![vec![false; n]; n];
        self.record(Ev::Heal);
    }

    /// End of the faulty phase: every node up, no partitions, no loss, healthy disks.
    fn heal(&mut self) -> Check {
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

    fn converged(&self) -> bool {
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

    fn liveness_failure(&self) -> Violation {
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
    fn check_convergence(&self) -> Check {
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
    fn check_full(&self) -> Check {
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
    fn check_step(&self) -> Check {
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

/// Writes a received snapshot chunk to the durable partial snapshot; with `done`, installs
/// the assembled snapshot and returns its bytes.
fn persist_chunk_bytes(
    durable: &mut Durable,
    chunk: &SnapshotChunk,
) -> Result<Option<Bytes>, String> {
    if chunk.offset == 0 {
        durable.partial = Some((chunk.meta.clone(), Vec::new()));
    }
    let Some((meta, data)) = durable.partial.as_mut() else {
        return Err(format!(
            "snapshot chunk at offset {} with no transfer started",
            chunk.offset
        ));
    };
    if *meta != chunk.meta || data.len() as u64 != chunk.offset {
        return Err(format!(
            "snapshot chunk ({}, offset {}) does not continue the transfer ({}, {} bytes so far)",
            chunk.meta.last_index,
            chunk.offset,
            meta.last_index,
            data.len()
        ));
    }
    data.extend_from_slice(&chunk.data);
    if !chunk.done {
        return Ok(None);
    }
    let bytes = Bytes::from(std::mem::take(data));
    durable.install_snapshot(chunk.meta.clone(), bytes.clone());
    Ok(Some(bytes))
}
