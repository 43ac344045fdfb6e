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
//!
//! One file per job:
//! - `world`: the nodes, the event queue and the main loop, healing and liveness;
//! - `node`: one node's life (start from its durable state) and its `Ready` handling;
//! - `network`: message delivery, loss, duplication, delays, partitions;
//! - `disk`: the write queue to each node's disk, and crashes that tear or lose writes;
//!   `storage`: what the disk holds (`Durable`) and the core's view of it (`SimStorage`);
//! - `clients`: writes, reads, transfers, membership changes, snapshots, and their answers;
//!   `kv`: the state machine they drive;
//! - `faults`: the fault schedule (bursts, crashes, storms, slow disks, pauses, stalls);
//! - `checker`: every invariant, one function each;
//! - `params`: the per-seed knobs; `rng`: the seeded RNG; `trace`: the event trace.

pub mod checker;
mod clients;
mod disk;
mod faults;
pub mod kv;
mod network;
mod node;
mod params;
pub mod rng;
pub mod storage;
pub mod trace;
mod world;

use std::panic::{catch_unwind, AssertUnwindSafe};

use raftlog::raft::PlantedBug;

use checker::violation;
use world::Sim;

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
    PlantedBug::ALL
        .into_iter()
        .find(|bug| format!("{bug:?}") == name)
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
