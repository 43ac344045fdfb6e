//! What a leader knows about each follower's log, and the flow control of what it sends.

use std::collections::VecDeque;

use super::{LogRegression, SnapshotMeta};

/// Consecutive fresh rejections below `match_index` (see [`Progress::on_reject`]), with no
/// success between them, after which the leader holds the follower's log to have gone
/// backwards. A regressed log rejects every probe and every heartbeat, so it gets there
/// within a heartbeat; more than one only guards against a rule this count misses.
pub(crate) const LOG_REGRESSED_REJECTIONS: u32 = 3;

/// How the leader currently replicates to a follower.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ProgressState {
    /// Where the follower's log matches is unknown: one AppendEntries at a time (per
    /// heartbeat), backing `next_index` off on rejection (Raft §5.3).
    Probe,
    /// The follower's log matches up to `match_index`: pipeline AppendEntries optimistically,
    /// at most `max_inflight_msgs` unacknowledged.
    Replicate,
    /// The entries the follower needs are compacted: stream the snapshot, one chunk in
    /// flight (Raft §7).
    Snapshot(SnapshotTransfer),
}

/// An InstallSnapshot transfer in progress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SnapshotTransfer {
    /// The snapshot being sent.
    pub(crate) meta: SnapshotMeta,
    /// Offset of the next chunk to send (or of the chunk in flight).
    pub(crate) offset: u64,
    /// Whether a chunk is unacknowledged, and when it was sent.
    pub(crate) in_flight_since: Option<u64>,
    /// End offset of the chunk in flight.
    pub(crate) sent_end: u64,
    /// Whether the chunk in flight is the last one.
    pub(crate) done_sent: bool,
}

/// Replication progress of one follower (or learner).
#[derive(Clone, Debug)]
pub(crate) struct Progress {
    /// Highest index known to be replicated (durably) on the follower.
    pub(crate) match_index: u64,
    /// Next index to send. Invariant: `match_index < next_index`.
    pub(crate) next_index: u64,
    pub(crate) state: ProgressState,
    /// Probe: a probe is unacknowledged; wait for a response or the next heartbeat.
    pub(crate) probe_sent: bool,
    /// Replicate: last index of each AppendEntries in flight, oldest first.
    pub(crate) inflight: VecDeque<u64>,
    /// Tick of the last response (CheckQuorum).
    pub(crate) last_heard_tick: u64,
    /// Tick of the last time `match_index` advanced or the pipeline emptied; a pipeline
    /// that stays stuck longer than a couple of heartbeats lost a message.
    pub(crate) last_progress_tick: u64,
    /// Highest ReadIndex round the follower acknowledged in this term.
    pub(crate) acked_round: u64,
    /// Tick at which the leader sent the round it acknowledged last, plus one (0: none).
    pub(crate) acked_round_sent_tick: u64,
    /// Highest commit index sent to the follower.
    pub(crate) commit_sent: u64,
    /// The ReadIndex round (`RaftCore::round`, carried by every AppendEntries as `read_ctx`
    /// and echoed in its response) current when `match_index` last advanced. A response
    /// echoing a later round answers a message sent after the leader learned `match_index`.
    pub(crate) match_round: u64,
    /// Fresh rejections in a row (no success between) that asked for an index at or below
    /// `match_index`.
    pub(crate) below_match_rejects: u32,
    /// The follower's log went backwards below what it acknowledged; cleared once it
    /// acknowledges again up to the `match_index` it had then.
    pub(crate) log_regressed: Option<LogRegression>,
}

impl Progress {
    pub(crate) fn new(next_index: u64, now: u64) -> Progress {
        Progress {
            match_index: 0,
            next_index,
            state: ProgressState::Probe,
            probe_sent: false,
            inflight: VecDeque::new(),
            last_heard_tick: now,
            last_progress_tick: now,
            acked_round: 0,
            acked_round_sent_tick: 0,
            commit_sent: 0,
            match_round: 0,
            below_match_rejects: 0,
            log_regressed: None,
        }
    }

    /// Whether nothing more may be sent now.
    pub(crate) fn is_paused(&self, max_inflight: usize) -> bool {
        match self.state {
            ProgressState::Probe => self.probe_sent,
            ProgressState::Replicate => self.inflight.len() >= max_inflight,
            ProgressState::Snapshot(_) => true,
        }
    }

    pub(crate) fn become_probe(&mut self) {
        self.state = ProgressState::Probe;
        self.probe_sent = false;
        self.inflight.clear();
        self.next_index = self.match_index + 1;
    }

    pub(crate) fn become_replicate(&mut self, now: u64) {
        self.state = ProgressState::Replicate;
        self.probe_sent = false;
        self.inflight.clear();
        self.next_index = self.match_index + 1;
        self.last_progress_tick = now;
    }

    pub(crate) fn become_snapshot(&mut self, meta: SnapshotMeta) {
        self.state = ProgressState::Snapshot(SnapshotTransfer {
            meta,
            offset: 0,
            in_flight_since: None,
            sent_end: 0,
            done_sent: false,
        });
        self.probe_sent = false;
        self.inflight.clear();
    }

    /// Records that entries up to `last` were sent.
    pub(crate) fn on_sent(&mut self, last: u64) {
        match self.state {
            ProgressState::Probe => self.probe_sent = true,
            ProgressState::Replicate => {
                if last >= self.next_index {
                    self.next_index = last + 1;
                    self.inflight.push_back(last);
                }
            }
            ProgressState::Snapshot(_) => {}
        }
    }

    /// A success acknowledging `index`, received in ReadIndex round `round`: returns whether
    /// `match_index` advanced.
    pub(crate) fn on_success(&mut self, index: u64, now: u64, round: u64) -> bool {
        let advanced = index > self.match_index;
        if advanced {
            self.match_index = index;
            self.match_round = round;
            self.last_progress_tick = now;
        }
        self.next_index = self.next_index.max(index + 1);
        // Any success shows the log holds what the leader last matched: the rejections
        // counted so far were stale.
        self.below_match_rejects = 0;
        if self
            .log_regressed
            .is_some_and(|r| self.match_index >= r.match_index)
        {
            self.log_regressed = None;
        }
        while self.inflight.front().is_some_and(|&last| last <= index) {
            self.inflight.pop_front();
        }
        if self.inflight.is_empty() {
            self.last_progress_tick = now;
        }
        self.probe_sent = false;
        advanced
    }

    /// A rejection: back `next_index` off to `hint`, but always below the index that was
    /// rejected (so probing terminates) and above `match_index` (known to match).
    /// `last_index` is the follower's last index as it reported it, `read_ctx` the round the
    /// rejected message carried. Returns the regression when this rejection is the one that
    /// makes the leader hold the follower's log to have gone backwards.
    ///
    /// A rejection from a follower whose log ends below `match_index` contradicts an earlier
    /// acknowledgement. (A hint below `match_index` alone does not: fast backtracking names
    /// the first index of the conflicting term, which may lie far below the entry really
    /// rejected, while the follower still holds everything up to `match_index`; the
    /// simulator found that case.) It is stale if the follower wrote it before that acknowledgement: a pipeline of
    /// AppendEntries rejected after a lost one, reordered or duplicated behind the probe that
    /// succeeded (etcd raft's `MaybeDecrTo` ignores all of them; the simulator produces
    /// bursts of them). Only a rejection of a message sent after `match_index` was learned,
    /// in a later round (`read_ctx > match_round`), is fresh: the follower then held
    /// `match_index` when it answered, unless its log went backwards (within one term only
    /// this leader writes to it, and it acknowledges only what is durable).
    /// [`LOG_REGRESSED_REJECTIONS`] fresh ones in a row mean it lost entries it acknowledged,
    /// and clamping to `match_index + 1` would probe where it can never answer yes. The
    /// leader then lowers `match_index` to 0 and probes again from the hint. Why that is
    /// safe:
    /// - `matchIndex` is only a lower bound (Raft Figure 2: "highest log entry known to be
    ///   replicated", initialized to 0 by every new leader, §5.3), so any lower value is one
    ///   the algorithm already copes with; the §5.3 consistency check then finds where the
    ///   logs really agree, as after an election.
    /// - The commit index never moves back (`RaftLog::commit_to` only raises it), so
    ///   nothing committed is uncommitted. Keeping the stale match is the unsafe choice: the
    ///   commit rule (§5.3, §5.4.2) would keep counting this follower as holding entries up
    ///   to the old match that it lost, and could commit one held by less than a majority,
    ///   breaking Leader Completeness (§5.4.3).
    /// - ReadIndex and lease reads count `acked_round` (thesis §6.4: an acknowledgement of
    ///   leadership in this term), not `match_index`; a regressed follower still knows the
    ///   term, so reads are unaffected. Leadership transfer and learner promotion wait for
    ///   `match_index`, so a lower one only makes them wait for the real catch-up.
    /// - What the leader cannot repair: the follower may already have voted, or may vote,
    ///   for a candidate missing entries it acknowledged (§5.4.1's election restriction
    ///   relies on voters keeping them). That is the wiped-node rule's business (issue 11);
    ///   the node tells the operator to remove and re-add the follower.
    pub(crate) fn on_reject(
        &mut self,
        hint: u64,
        last_index: u64,
        read_ctx: u64,
    ) -> Option<LogRegression> {
        let mut regressed = None;
        if last_index < self.match_index && read_ctx > self.match_round {
            self.below_match_rejects += 1;
            if self.below_match_rejects >= LOG_REGRESSED_REJECTIONS {
                let regression = LogRegression {
                    match_index: self.match_index,
                    last_index,
                };
                if self.log_regressed.is_none() {
                    regressed = Some(regression);
                }
                self.log_regressed.get_or_insert(regression);
                self.below_match_rejects = 0;
                self.match_index = 0;
                // Heartbeats carry min(commit, match); the follower may have lost its
                // commit knowledge too.
                self.commit_sent = 0;
            }
        }
        let next = hint.min(self.next_index.saturating_sub(1));
        self.state = ProgressState::Probe;
        self.inflight.clear();
        self.probe_sent = false;
        self.next_index = next.max(self.match_index + 1);
        regressed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Simulation seed 6363009367: the follower holds 1..=105 with 86.. of an old term,
    /// acknowledged 85, and rejects AppendEntries at 86 with the fast-backtracking hint
    /// (term 38 starts at 75). Its log did not go backwards: never a regression.
    #[test]
    fn a_hint_below_match_from_a_longer_log_is_no_regression() {
        let mut pr = Progress::new(80, 0);
        assert!(pr.on_success(85, 0, 1));
        for round in 2..10 {
            assert_eq!(pr.on_reject(75, 105, round), None, "round {round}");
            assert_eq!(pr.match_index, 85);
            assert_eq!(pr.next_index, 86);
        }
        assert_eq!(pr.log_regressed, None);
    }

    #[test]
    fn replicate_window_pauses_when_full_and_frees_on_ack() {
        let mut pr = Progress::new(1, 0);
        pr.become_replicate(0);
        pr.on_sent(3);
        pr.on_sent(5);
        assert!(pr.is_paused(2));
        assert_eq!(pr.next_index, 6);
        assert!(pr.on_success(3, 1, 1));
        assert!(!pr.is_paused(2));
        assert_eq!((pr.match_index, pr.inflight.len()), (3, 1));
    }

    #[test]
    fn probe_sends_one_message_until_answered() {
        let mut pr = Progress::new(10, 0);
        assert!(!pr.is_paused(8));
        pr.on_sent(9);
        assert!(pr.is_paused(8));
        pr.on_reject(4, 3, 1);
        assert!(!pr.is_paused(8));
        assert_eq!(pr.next_index, 4);
    }

    #[test]
    fn rejection_never_backs_off_below_match() {
        let mut pr = Progress::new(10, 0);
        pr.on_success(6, 0, 1);
        assert_eq!(pr.on_reject(2, 1, 1), None);
        assert_eq!(pr.next_index, 7);
        pr.next_index = 9;
        assert_eq!(pr.on_reject(100, 99, 2), None);
        assert_eq!(pr.next_index, 8);
    }

    #[test]
    fn repeated_fresh_rejections_below_match_lower_it_and_flag_the_follower() {
        let mut pr = Progress::new(10, 0);
        pr.on_success(6, 0, 4);
        // Answers to messages of the round in which match 6 was learned, or earlier: stale,
        // however many.
        for _ in 0..10 {
            assert_eq!(pr.on_reject(3, 2, 4), None);
        }
        // Fresh ones, each followed by a success: never counted up to the threshold.
        for _ in 0..5 {
            assert_eq!(pr.on_reject(3, 2, 5), None);
            pr.on_success(6, 0, 5);
        }
        assert_eq!(pr.on_reject(3, 2, 5), None);
        assert_eq!(pr.on_reject(3, 2, 5), None);
        let regression = LogRegression {
            match_index: 6,
            last_index: 2,
        };
        assert_eq!(pr.on_reject(3, 2, 6), Some(regression));
        assert_eq!((pr.match_index, pr.next_index), (0, 3));
        assert_eq!(pr.log_regressed, Some(regression));
        // Caught up part way: still regressed; back to the old match: cleared.
        pr.on_success(4, 1, 7);
        assert_eq!(pr.log_regressed, Some(regression));
        pr.on_success(6, 2, 7);
        assert_eq!(pr.log_regressed, None);
    }
}
