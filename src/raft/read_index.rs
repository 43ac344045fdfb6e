//! Pending linearizable reads on a leader (ReadIndex, Raft thesis §6.4).
//!
//! A read records the commit index when it arrives (once the leader has committed an entry
//! of its own term, so that the commit index is the cluster's), then waits for a quorum
//! to acknowledge a heartbeat round sent after it arrived: only then is it certain that no
//! other leader could have committed anything newer at that moment.

use std::collections::VecDeque;

use super::{FailedRead, NodeId, ReadState};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PendingRead {
    ctx: u64,
    index: u64,
    round: u64,
}

/// Reads a leader has accepted but not yet answered.
#[derive(Clone, Debug, Default)]
pub(crate) struct ReadQueue {
    /// Reads that arrived before an entry of the leader's term committed.
    waiting_commit: Vec<u64>,
    /// Reads with their read index, ordered by `round`.
    pending: VecDeque<PendingRead>,
}

impl ReadQueue {
    pub(crate) fn wait_for_commit(&mut self, ctx: u64) {
        self.waiting_commit.push(ctx);
    }

    pub(crate) fn has_waiting_for_commit(&self) -> bool {
        !self.waiting_commit.is_empty()
    }

    /// Moves the reads waiting for the first commit of the term to `index` and `round`.
    pub(crate) fn assign_waiting(&mut self, index: u64, round: u64) {
        for ctx in std::mem::take(&mut self.waiting_commit) {
            self.push(ctx, index, round);
        }
    }

    pub(crate) fn push(&mut self, ctx: u64, index: u64, round: u64) {
        if let Some(last) = self.pending.back() {
            assert!(
                round >= last.round,
                "read_index: round {round} queued after round {}",
                last.round
            );
        }
        self.pending.push_back(PendingRead { ctx, index, round });
    }

    /// Reads whose round a quorum has acknowledged (`acked_round`), in arrival order.
    pub(crate) fn release(&mut self, acked_round: u64, out: &mut Vec<ReadState>) {
        while let Some(read) = self.pending.front() {
            if read.round > acked_round {
                break;
            }
            out.push(ReadState {
                ctx: read.ctx,
                index: read.index,
            });
            self.pending.pop_front();
        }
    }

    /// Fails every read (leadership lost).
    pub(crate) fn fail_all(&mut self, leader_hint: Option<NodeId>, out: &mut Vec<FailedRead>) {
        let waiting = std::mem::take(&mut self.waiting_commit);
        let pending = std::mem::take(&mut self.pending).into_iter().map(|r| r.ctx);
        for ctx in waiting.into_iter().chain(pending) {
            out.push(FailedRead { ctx, leader_hint });
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.waiting_commit.is_empty() && self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_released_only_when_their_round_is_acknowledged() {
        let mut q = ReadQueue::default();
        q.push(1, 10, 3);
        q.push(2, 11, 4);
        let mut out = Vec::new();
        q.release(2, &mut out);
        assert!(out.is_empty());
        q.release(3, &mut out);
        assert_eq!(out, vec![ReadState { ctx: 1, index: 10 }]);
        q.release(9, &mut out);
        assert_eq!(out[1], ReadState { ctx: 2, index: 11 });
        assert!(q.is_empty());
    }

    #[test]
    fn losing_leadership_fails_waiting_and_pending_reads() {
        let mut q = ReadQueue::default();
        q.wait_for_commit(7);
        q.push(8, 5, 1);
        let mut failed = Vec::new();
        q.fail_all(Some(3), &mut failed);
        let ctxs: Vec<u64> = failed.iter().map(|f| f.ctx).collect();
        assert_eq!(ctxs, vec![7, 8]);
        assert!(failed.iter().all(|f| f.leader_hint == Some(3)));
        assert!(q.is_empty());
    }
}
