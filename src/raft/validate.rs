//! The core's door: every message from a peer is checked here before it touches any state.
//!
//! The core asserts its invariants (a broken one is a bug and panics with the values), so
//! nothing a peer sends may be able to reach an assert. A peer can be buggy, of another
//! version, or a byte flip the transport's checksum missed; none of that may stop this
//! node. What cannot come from a correct Raft peer is dropped, counted by reason, and
//! logged at most once per reason per `Config::drop_log_interval_ticks`. Validation
//! rejects; it never repairs a message into something the sender did not say.
//!
//! What a correct peer's message always satisfies (and what is checked):
//!
//! | rule                                             | why it holds for a correct sender          |
//! |--------------------------------------------------|--------------------------------------------|
//! | addressed to this node, from another, nonzero id | the transport routes by id; 0 is reserved  |
//! | every term `<= TERM_MAX`                         | terms grow by one per election             |
//! | every index `<= INDEX_MAX`, `offset + len` too   | indexes grow by one per entry              |
//! | log terms in a message `<= ` its term            | a server's log holds no future term (§5.1) |
//! | entries at `prev + 1, prev + 2, …`               | AppendEntries carries a log slice (§5.3)   |
//! | entry terms `>= prev_log_term`, never falling, >0| terms never decrease along a log (§5.3)    |
//! | `prev_log_index == 0` only with term 0           | index 0 is the empty log's sentinel        |
//! | snapshot `last_index`, `last_term` nonzero       | a snapshot covers at least one entry (§7)  |
//! | membership entries decode                        | a leader's own encoder wrote them (§4.1)   |
//! | a success `match_index <= ` the leader's last    | a follower only holds what it was sent     |
//!
//! The last rule depends on the receiver's state and lives in [`super::RaftCore::step`]
//! (`super::core`); the rest depend on the message alone and live here.

use super::membership;
use super::{EntryKind, Envelope, Message, NodeId};

/// Terms at or above this are refused: a term a correct cluster cannot reach in any
/// lifetime (one election per nanosecond would take 146 years), far enough below
/// `u64::MAX` that `term + 1` can never overflow, which in a release build would wrap to 0
/// and make the stable store refuse the hard state.
pub const TERM_MAX: u64 = u64::MAX / 2;

/// Indexes and byte offsets above this are refused, for the same reason: `index + 1` and
/// `offset + len` must never overflow.
pub const INDEX_MAX: u64 = u64::MAX / 2;

/// Why a message was dropped at the door.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DropReason {
    /// Not addressed to this node, sent by itself, or from the reserved id 0.
    Misaddressed,
    /// A term at or above [`TERM_MAX`].
    TermTooLarge,
    /// An index or offset above [`INDEX_MAX`].
    IndexTooLarge,
    /// A log term beyond the message's term, or falling along the entries.
    TermsOutOfOrder,
    /// AppendEntries whose entries do not follow `prev_log_index` one by one.
    EntriesNotContiguous,
    /// A snapshot that covers no entry.
    EmptySnapshot,
    /// A follower acknowledged entries beyond the end of this leader's log.
    MatchBeyondLastIndex,
    /// AppendEntries carrying a membership entry whose payload does not decode.
    UndecodableMembership,
}

impl DropReason {
    /// Every reason, in the order of [`DroppedMessages`]' counters.
    pub const ALL: [DropReason; 8] = [
        DropReason::Misaddressed,
        DropReason::TermTooLarge,
        DropReason::IndexTooLarge,
        DropReason::TermsOutOfOrder,
        DropReason::EntriesNotContiguous,
        DropReason::EmptySnapshot,
        DropReason::MatchBeyondLastIndex,
        DropReason::UndecodableMembership,
    ];

    /// A stable label, e.g. for a Prometheus `reason` label.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Misaddressed => "misaddressed",
            DropReason::TermTooLarge => "term_too_large",
            DropReason::IndexTooLarge => "index_too_large",
            DropReason::TermsOutOfOrder => "terms_out_of_order",
            DropReason::EntriesNotContiguous => "entries_not_contiguous",
            DropReason::EmptySnapshot => "empty_snapshot",
            DropReason::MatchBeyondLastIndex => "match_beyond_last_index",
            DropReason::UndecodableMembership => "undecodable_membership",
        }
    }

    fn slot(self) -> usize {
        self as usize
    }
}

/// Messages dropped at the door, per reason, with the tick each reason was last logged.
#[derive(Clone, Debug, Default)]
pub struct DroppedMessages {
    counts: [u64; DropReason::ALL.len()],
    last_logged_tick: [Option<u64>; DropReason::ALL.len()],
}

impl DroppedMessages {
    /// Messages dropped for `reason` since the core started.
    pub fn count(&self, reason: DropReason) -> u64 {
        self.counts[reason.slot()]
    }

    /// Messages dropped for any reason.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Counts a drop; returns whether to log it: the first of each reason, then at most one
    /// per `interval_ticks` (the core has no clock, so the rate limit is in ticks).
    pub(crate) fn record(&mut self, reason: DropReason, now: u64, interval_ticks: u64) -> bool {
        let slot = reason.slot();
        self.counts[slot] += 1;
        let due = self.last_logged_tick[slot]
            .is_none_or(|last| now.saturating_sub(last) >= interval_ticks);
        if due {
            self.last_logged_tick[slot] = Some(now);
        }
        due
    }
}

/// Checks what a message must satisfy whatever the receiver's state.
pub(crate) fn check_envelope(me: NodeId, envelope: &Envelope) -> Result<(), DropReason> {
    if envelope.to != me || envelope.from == me || envelope.from == 0 {
        return Err(DropReason::Misaddressed);
    }
    check_message(&envelope.message)
}

fn term_ok(term: u64) -> Result<(), DropReason> {
    if term >= TERM_MAX {
        return Err(DropReason::TermTooLarge);
    }
    Ok(())
}

fn index_ok(index: u64) -> Result<(), DropReason> {
    if index > INDEX_MAX {
        return Err(DropReason::IndexTooLarge);
    }
    Ok(())
}

/// A log term carried by a message of term `term` (Raft §5.1: no log holds a future term).
fn log_term_ok(log_term: u64, term: u64) -> Result<(), DropReason> {
    if log_term > term {
        return Err(DropReason::TermsOutOfOrder);
    }
    Ok(())
}

fn check_message(message: &Message) -> Result<(), DropReason> {
    let term = message.term();
    term_ok(term)?;
    match message {
        Message::PreVote {
            last_log_index,
            last_log_term,
            ..
        }
        | Message::RequestVote {
            last_log_index,
            last_log_term,
            ..
        } => {
            index_ok(*last_log_index)?;
            log_term_ok(*last_log_term, term)
        }
        Message::PreVoteResponse { .. }
        | Message::RequestVoteResponse { .. }
        | Message::TimeoutNow { .. } => Ok(()),
        Message::AppendEntries {
            prev_log_index,
            prev_log_term,
            entries,
            leader_commit,
            ..
        } => {
            index_ok(*prev_log_index)?;
            index_ok(*leader_commit)?;
            log_term_ok(*prev_log_term, term)?;
            if *prev_log_index == 0 && *prev_log_term != 0 {
                return Err(DropReason::TermsOutOfOrder);
            }
            // Raft §5.3: the entries are the slice of the leader's log right after prev.
            let mut expected_index = *prev_log_index;
            let mut floor_term = (*prev_log_term).max(1);
            for entry in entries {
                expected_index += 1;
                index_ok(expected_index)?;
                if entry.index != expected_index {
                    return Err(DropReason::EntriesNotContiguous);
                }
                if entry.term < floor_term {
                    return Err(DropReason::TermsOutOfOrder);
                }
                log_term_ok(entry.term, term)?;
                floor_term = entry.term;
                // Thesis §4.1: the configuration takes effect when appended, so one that
                // cannot be read must not reach the log (the core treats it as a bug there).
                if entry.kind == EntryKind::Membership
                    && membership::decode_membership(&entry.payload).is_err()
                {
                    return Err(DropReason::UndecodableMembership);
                }
            }
            Ok(())
        }
        Message::AppendEntriesResponse {
            match_index,
            conflict_term,
            conflict_index,
            ..
        } => {
            index_ok(*match_index)?;
            index_ok(*conflict_index)?;
            log_term_ok(*conflict_term, term)
        }
        Message::InstallSnapshot {
            meta, offset, data, ..
        } => {
            index_ok(meta.last_index)?;
            index_ok(*offset)?;
            index_ok(offset.saturating_add(data.len() as u64))?;
            if meta.last_index == 0 || meta.last_term == 0 {
                return Err(DropReason::EmptySnapshot);
            }
            log_term_ok(meta.last_term, term)
        }
        Message::InstallSnapshotResponse {
            snapshot_last_index,
            next_offset,
            ..
        } => {
            index_ok(*snapshot_last_index)?;
            index_ok(*next_offset)
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::raft::{Entry, EntryKind, SnapshotMeta};

    use crate::raft::mem_storage::tests::ent;

    fn append(prev: (u64, u64), entries: Vec<Entry>) -> Envelope {
        Envelope {
            from: 2,
            to: 1,
            message: Message::AppendEntries {
                term: 5,
                prev_log_index: prev.0,
                prev_log_term: prev.1,
                entries,
                leader_commit: 0,
                read_ctx: 0,
            },
        }
    }

    #[test]
    fn well_formed_append_passes() {
        let env = append((3, 2), vec![ent(4, 2), ent(5, 5)]);
        assert_eq!(check_envelope(1, &env), Ok(()));
        assert_eq!(check_envelope(1, &append((0, 0), vec![ent(1, 1)])), Ok(()));
    }

    #[test]
    fn entries_must_follow_prev_one_by_one() {
        let gap = append((3, 2), vec![ent(5, 2)]);
        let repeat = append((3, 2), vec![ent(4, 2), ent(4, 2)]);
        let overlap = append((3, 2), vec![ent(3, 2)]);
        for env in [gap, repeat, overlap] {
            assert_eq!(
                check_envelope(1, &env),
                Err(DropReason::EntriesNotContiguous)
            );
        }
    }

    #[test]
    fn log_terms_never_fall_nor_pass_the_message_term() {
        let falling = append((3, 2), vec![ent(4, 3), ent(5, 2)]);
        let below_prev = append((3, 3), vec![ent(4, 2)]);
        let future = append((3, 2), vec![ent(4, 6)]);
        let future_prev = append((3, 6), vec![]);
        let zero_term = append((0, 0), vec![ent(1, 0)]);
        let index_zero_with_term = append((0, 1), vec![]);
        for env in [
            falling,
            below_prev,
            future,
            future_prev,
            zero_term,
            index_zero_with_term,
        ] {
            assert_eq!(
                check_envelope(1, &env),
                Err(DropReason::TermsOutOfOrder),
                "{env:?}"
            );
        }
    }

    #[test]
    fn terms_and_indexes_near_the_top_are_refused() {
        let huge_term = Envelope {
            from: 2,
            to: 1,
            message: Message::TimeoutNow { term: u64::MAX },
        };
        assert_eq!(check_envelope(1, &huge_term), Err(DropReason::TermTooLarge));
        let wrapping = append((u64::MAX, 1), vec![ent(0, 1)]);
        assert_eq!(check_envelope(1, &wrapping), Err(DropReason::IndexTooLarge));
        let snapshot = Envelope {
            from: 2,
            to: 1,
            message: Message::InstallSnapshot {
                term: 3,
                meta: SnapshotMeta {
                    last_index: 7,
                    last_term: 3,
                    membership: Default::default(),
                },
                offset: u64::MAX - 1,
                data: Bytes::from_static(b"abc"),
                done: true,
            },
        };
        assert_eq!(check_envelope(1, &snapshot), Err(DropReason::IndexTooLarge));
    }

    #[test]
    fn undecodable_membership_entry_is_refused() {
        let mut garbled = ent(4, 2);
        garbled.kind = EntryKind::Membership;
        garbled.payload = Bytes::from_static(&[0xff, 0xff]);
        assert_eq!(
            check_envelope(1, &append((3, 2), vec![garbled.clone()])),
            Err(DropReason::UndecodableMembership)
        );
        garbled.payload = crate::raft::encode_membership(&Default::default());
        assert_eq!(check_envelope(1, &append((3, 2), vec![garbled])), Ok(()));
    }

    #[test]
    fn misaddressed_messages_are_refused() {
        let mut env = append((0, 0), vec![]);
        env.to = 3;
        assert_eq!(check_envelope(1, &env), Err(DropReason::Misaddressed));
        env.to = 1;
        env.from = 1;
        assert_eq!(check_envelope(1, &env), Err(DropReason::Misaddressed));
        env.from = 0;
        assert_eq!(check_envelope(1, &env), Err(DropReason::Misaddressed));
    }

    #[test]
    fn drops_are_all_counted_but_logged_once_per_interval() {
        let mut dropped = DroppedMessages::default();
        let logged: Vec<bool> = [0, 5, 99, 100, 150, 200]
            .iter()
            .map(|&now| dropped.record(DropReason::TermTooLarge, now, 100))
            .collect();
        assert_eq!(logged, vec![true, false, false, true, false, true]);
        assert!(dropped.record(DropReason::Misaddressed, 150, 100));
        assert_eq!(dropped.count(DropReason::TermTooLarge), 6);
        assert_eq!(dropped.total(), 7);
    }
}
