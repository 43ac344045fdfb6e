//! Majority arithmetic over the voters of the configuration in effect.

use std::collections::BTreeMap;

use super::NodeId;

/// The largest value that a majority of `values` (one per voter) is at or above: the
/// commit index when `values` are match indexes (Raft §5.3). 0 when there are no voters.
pub(crate) fn majority_value(values: &mut [u64]) -> u64 {
    if values.is_empty() {
        return 0;
    }
    values.sort_unstable_by(|a, b| b.cmp(a));
    values[values.len() / 2]
}

/// Outcome of counting votes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum VoteResult {
    /// A majority granted.
    Won,
    /// A majority refused: the election cannot succeed.
    Lost,
    /// Not decided yet.
    Pending,
}

/// Votes received in one (pre-)election, from voters only.
#[derive(Clone, Debug, Default)]
pub(crate) struct VoteTally {
    votes: BTreeMap<NodeId, bool>,
}

impl VoteTally {
    /// Records the first answer of `from` (later duplicates do not change it).
    pub(crate) fn record(&mut self, from: NodeId, granted: bool) {
        self.votes.entry(from).or_insert(granted);
    }

    pub(crate) fn result(&self, voters: &[NodeId]) -> VoteResult {
        let (mut granted, mut refused) = (0, 0);
        for id in voters {
            match self.votes.get(id) {
                Some(true) => granted += 1,
                Some(false) => refused += 1,
                None => {}
            }
        }
        let majority = voters.len() / 2 + 1;
        if granted >= majority {
            VoteResult::Won
        // Raft §5.2: lost once a majority can no longer grant. A membership without
        // voters (a hostile peer's config entry) has no majority at all: never decided.
        } else if refused > voters.len().saturating_sub(majority) {
            VoteResult::Lost
        } else {
            VoteResult::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn majority_value_is_the_median_for_odd_clusters() {
        assert_eq!(majority_value(&mut [5, 1, 3]), 3);
        assert_eq!(majority_value(&mut [7]), 7);
        assert_eq!(majority_value(&mut []), 0);
    }

    #[test]
    fn majority_value_needs_more_than_half_for_even_clusters() {
        // 4 voters need 3: the third largest.
        assert_eq!(majority_value(&mut [9, 8, 2, 1]), 2);
    }

    #[test]
    fn vote_tally_without_voters_stays_pending() {
        // Found by fuzz/fuzz_targets/core_step.rs (fuzz/regressions/core_step/): a hostile
        // peer can leave a candidate with a membership that has no voters.
        let mut t = VoteTally::default();
        assert_eq!(t.result(&[]), VoteResult::Pending);
        t.record(1, false);
        assert_eq!(t.result(&[]), VoteResult::Pending);
    }

    #[test]
    fn vote_tally_decides_on_majority_of_voters_only() {
        let voters = [1, 2, 3];
        let mut t = VoteTally::default();
        t.record(1, true);
        t.record(9, true); // not a voter
        assert_eq!(t.result(&voters), VoteResult::Pending);
        t.record(2, false);
        t.record(2, true); // a duplicate does not flip the answer
        assert_eq!(t.result(&voters), VoteResult::Pending);
        t.record(3, false);
        assert_eq!(t.result(&voters), VoteResult::Lost);
        t.record(3, true);
        let mut w = VoteTally::default();
        w.record(1, true);
        w.record(3, true);
        assert_eq!(w.result(&voters), VoteResult::Won);
    }
}
