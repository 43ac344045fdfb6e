//! What a leader knows about each follower's log, and the flow control of what it sends.

use std::collections::VecDeque;

use super::SnapshotMeta;

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

    /// A success acknowledging `index`: returns whether `match_index` advanced.
    pub(crate) fn on_success(&mut self, index: u64, now: u64) -> bool {
        let advanced = index > self.match_index;
        if advanced {
            self.match_index = index;
            self.last_progress_tick = now;
        }
        self.next_index = self.next_index.max(index + 1);
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
    pub(crate) fn on_reject(&mut self, hint: u64) {
        let next = hint.min(self.next_index.saturating_sub(1));
        self.state = ProgressState::Probe;
        self.inflight.clear();
        self.probe_sent = false;
        self.next_index = next.max(self.match_index + 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicate_window_pauses_when_full_and_frees_on_ack() {
        let mut pr = Progress::new(1, 0);
        pr.become_replicate(0);
        pr.on_sent(3);
        pr.on_sent(5);
        assert!(pr.is_paused(2));
        assert_eq!(pr.next_index, 6);
        assert!(pr.on_success(3, 1));
        assert!(!pr.is_paused(2));
        assert_eq!((pr.match_index, pr.inflight.len()), (3, 1));
    }

    #[test]
    fn probe_sends_one_message_until_answered() {
        let mut pr = Progress::new(10, 0);
        assert!(!pr.is_paused(8));
        pr.on_sent(9);
        assert!(pr.is_paused(8));
        pr.on_reject(4);
        assert!(!pr.is_paused(8));
        assert_eq!(pr.next_index, 4);
    }

    #[test]
    fn rejection_never_backs_off_below_match() {
        let mut pr = Progress::new(10, 0);
        pr.on_success(6, 0);
        pr.on_reject(2);
        assert_eq!(pr.next_index, 7);
        pr.next_index = 9;
        pr.on_reject(100);
        assert_eq!(pr.next_index, 8);
    }
}
