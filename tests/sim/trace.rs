//! The event trace: a ring buffer of the last events of a run (all of them when replaying
//! one seed), plus a running hash of every event so two runs of a seed can be compared.

use std::collections::VecDeque;
use std::hash::{Hash, Hasher};

use raftlog::raft::{Message, NodeId, Role};

/// `Role` is not `Hash`; the trace names it.
pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::Follower => "Follower",
        Role::PreCandidate => "PreCandidate",
        Role::Candidate => "Candidate",
        Role::Leader => "Leader",
        Role::Learner => "Learner",
    }
}

use super::rng::TraceHasher;

/// A compact summary of a message (cheap to record for every send and delivery).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Msg {
    PreVote {
        term: u64,
        last: (u64, u64),
    },
    PreVoteResp {
        term: u64,
        granted: bool,
    },
    Vote {
        term: u64,
        last: (u64, u64),
    },
    VoteResp {
        term: u64,
        granted: bool,
    },
    Append {
        term: u64,
        prev: (u64, u64),
        n: usize,
        first_term: u64,
        commit: u64,
        ctx: u64,
    },
    AppendResp {
        term: u64,
        ok: bool,
        matched: u64,
        conflict: (u64, u64),
        ctx: u64,
    },
    Snap {
        term: u64,
        last: (u64, u64),
        offset: u64,
        len: usize,
        done: bool,
    },
    SnapResp {
        term: u64,
        last: u64,
        next: u64,
        ok: bool,
    },
    TimeoutNow {
        term: u64,
    },
}

impl Msg {
    pub fn of(message: &Message) -> Msg {
        match message {
            Message::PreVote {
                term,
                last_log_index,
                last_log_term,
            } => Msg::PreVote {
                term: *term,
                last: (*last_log_index, *last_log_term),
            },
            Message::PreVoteResponse { term, granted } => Msg::PreVoteResp {
                term: *term,
                granted: *granted,
            },
            Message::RequestVote {
                term,
                last_log_index,
                last_log_term,
                ..
            } => Msg::Vote {
                term: *term,
                last: (*last_log_index, *last_log_term),
            },
            Message::RequestVoteResponse { term, granted } => Msg::VoteResp {
                term: *term,
                granted: *granted,
            },
            Message::AppendEntries {
                term,
                prev_log_index,
                prev_log_term,
                entries,
                leader_commit,
                read_ctx,
            } => Msg::Append {
                term: *term,
                prev: (*prev_log_index, *prev_log_term),
                n: entries.len(),
                first_term: entries.first().map_or(0, |e| e.term),
                commit: *leader_commit,
                ctx: *read_ctx,
            },
            Message::AppendEntriesResponse {
                term,
                success,
                match_index,
                conflict_term,
                conflict_index,
                read_ctx,
            } => Msg::AppendResp {
                term: *term,
                ok: *success,
                matched: *match_index,
                conflict: (*conflict_index, *conflict_term),
                ctx: *read_ctx,
            },
            Message::InstallSnapshot {
                term,
                meta,
                offset,
                data,
                done,
            } => Msg::Snap {
                term: *term,
                last: (meta.last_index, meta.last_term),
                offset: *offset,
                len: data.len(),
                done: *done,
            },
            Message::InstallSnapshotResponse {
                term,
                snapshot_last_index,
                next_offset,
                success,
            } => Msg::SnapResp {
                term: *term,
                last: *snapshot_last_index,
                next: *next_offset,
                ok: *success,
            },
            Message::TimeoutNow { term } => Msg::TimeoutNow { term: *term },
        }
    }
}

/// One traced event.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub enum Ev {
    Send {
        from: NodeId,
        to: NodeId,
        msg: Msg,
        after_persist: bool,
    },
    Deliver {
        from: NodeId,
        to: NodeId,
        msg: Msg,
    },
    Drop {
        from: NodeId,
        to: NodeId,
        msg: Msg,
        why: &'static str,
    },
    Tick {
        node: NodeId,
    },
    Role {
        node: NodeId,
        role: &'static str,
        term: u64,
        leader: Option<NodeId>,
    },
    Persist {
        node: NodeId,
        entries: (u64, u64),
        last_term: u64,
        hard_state: Option<(u64, Option<NodeId>)>,
        snap: Option<(u64, u64, bool)>,
    },
    Durable {
        node: NodeId,
        last_index: u64,
        hard_state: (u64, Option<NodeId>),
    },
    Apply {
        node: NodeId,
        from: u64,
        to: u64,
        last_term: u64,
    },
    Commit {
        node: NodeId,
        index: u64,
    },
    Propose {
        node: NodeId,
        value: u64,
        key: u8,
        result: Result<(u64, u64), String>,
    },
    Ack {
        node: NodeId,
        value: u64,
        index: u64,
    },
    ReadStart {
        node: NodeId,
        ctx: u64,
        key: u8,
        floor: u64,
        result: Result<(), String>,
    },
    ReadIndex {
        node: NodeId,
        ctx: u64,
        index: u64,
    },
    ReadDone {
        node: NodeId,
        ctx: u64,
        applied: u64,
        value: u64,
    },
    ReadFailed {
        node: NodeId,
        ctx: u64,
    },
    Transfer {
        node: NodeId,
        to: NodeId,
        result: Result<(), String>,
    },
    SnapshotTaken {
        node: NodeId,
        index: u64,
        term: u64,
        compact_to: u64,
    },
    SnapshotInstalled {
        node: NodeId,
        index: u64,
        term: u64,
    },
    Crash {
        node: NodeId,
        lost_writes: usize,
    },
    Restart {
        node: NodeId,
        term: u64,
        voted_for: Option<NodeId>,
        last_index: u64,
        snap: u64,
    },
    Partition {
        blocked: Vec<(NodeId, NodeId)>,
    },
    /// `node`'s driver reported its connection to or from `peer` lost.
    LinkLost {
        node: NodeId,
        peer: NodeId,
    },
    Heal,
    NetStorm {
        drop_ppm: u64,
        until: u64,
    },
    Membership {
        node: NodeId,
        change: String,
        result: Result<(u64, u64), String>,
    },
    Pause {
        node: NodeId,
        until: u64,
    },
    /// A pause after which the node is handed every tick it missed at once, before it
    /// handles anything else (the node driver's monotonic-clock contract).
    Stall {
        node: NodeId,
        until: u64,
    },
    CatchUpTicks {
        node: NodeId,
        ticks: u64,
    },
    SlowDisk {
        node: NodeId,
        until: u64,
    },
    Phase {
        name: &'static str,
    },
}

/// Recorded events with the simulated time and step they happened at.
pub struct Trace {
    ring: VecDeque<(u64, u64, Ev)>,
    capacity: usize,
    keep_all: bool,
    hash: TraceHasher,
    pub events: u64,
}

impl Trace {
    /// `keep_all`: keep every event (replaying one seed) instead of the last `capacity`.
    pub fn new(capacity: usize, keep_all: bool) -> Trace {
        Trace {
            ring: VecDeque::with_capacity(capacity.min(1 << 16)),
            capacity,
            keep_all,
            hash: TraceHasher::default(),
            events: 0,
        }
    }

    pub fn record(&mut self, time: u64, step: u64, ev: Ev) {
        time.hash(&mut self.hash);
        ev.hash(&mut self.hash);
        self.events += 1;
        // Ticks are hashed but not kept: they would crowd everything else out of the ring.
        if matches!(ev, Ev::Tick { .. }) && !self.keep_all {
            return;
        }
        if !self.keep_all && self.ring.len() == self.capacity {
            self.ring.pop_front();
        }
        self.ring.push_back((time, step, ev));
    }

    pub fn hash(&self) -> u64 {
        self.hash.finish()
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        for (time, step, ev) in &self.ring {
            out.push_str(&format!("  t={time:>7} s={step:>5} {ev:?}\n"));
        }
        out
    }

    /// The last `n` kept events.
    pub fn render_tail(&self, n: usize) -> String {
        let mut out = String::new();
        let skip = self.ring.len().saturating_sub(n);
        for (time, step, ev) in self.ring.iter().skip(skip) {
            out.push_str(&format!("  t={time:>7} s={step:>5} {ev:?}\n"));
        }
        out
    }
}
