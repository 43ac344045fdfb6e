//! Cluster membership carried by the log (Raft thesis §4.1: single-server changes, a
//! configuration takes effect as soon as it is appended, committed or not).

use bytes::Bytes;

use super::{Membership, MembershipChange, NodeId, ProposeError};

/// Encodes a membership as the payload of an [`EntryKind::Membership`](super::EntryKind)
/// entry (bincode, standard configuration). Everything that reads those entries must use
/// [`decode_membership`].
pub fn encode_membership(membership: &Membership) -> Bytes {
    // Encoding a map of plain structs into a Vec cannot fail.
    match bincode::serde::encode_to_vec(membership, bincode::config::standard()) {
        Ok(bytes) => Bytes::from(bytes),
        Err(e) => panic!(
            "encoding a membership of {} members: {e}",
            membership.members.len()
        ),
    }
}

/// Decodes the payload of a membership entry.
pub fn decode_membership(payload: &[u8]) -> Result<Membership, UndecodableMembership> {
    bincode::serde::decode_from_slice(payload, bincode::config::standard())
        .map(|(m, _)| m)
        .map_err(|source| UndecodableMembership {
            len: payload.len(),
            source,
        })
}

/// A membership entry's payload that is not an encoded [`Membership`]. Entries from the
/// log never are (see `decode_membership_entry` in the core); a peer's can be, and
/// `validate.rs` refuses the message that carries one.
#[derive(Debug, thiserror::Error)]
#[error("undecodable membership entry ({len} bytes): {source}")]
pub struct UndecodableMembership {
    /// The payload's length.
    pub len: usize,
    /// What bincode found.
    #[source]
    pub source: bincode::error::DecodeError,
}

/// The configuration that results from `change`, if it is a valid single-server change.
pub(crate) fn apply_change(
    current: &Membership,
    change: &MembershipChange,
) -> Result<Membership, ProposeError> {
    let mut next = current.clone();
    match change {
        MembershipChange::AddOrUpdate { id, member } => {
            if *id == 0 {
                return Err(ProposeError::InvalidMembershipChange(
                    "node id 0 is reserved".into(),
                ));
            }
            next.members.insert(*id, member.clone());
        }
        MembershipChange::Remove { id } => {
            if next.members.remove(id).is_none() {
                return Err(ProposeError::InvalidMembershipChange(format!(
                    "node {id} is not a member"
                )));
            }
        }
    }
    if next.voters().next().is_none() {
        return Err(ProposeError::InvalidMembershipChange(
            "the change would leave no voters".into(),
        ));
    }
    Ok(next)
}

/// The configurations in the log after the base (snapshot or bootstrap), so that a
/// truncation can revert to the previous one.
#[derive(Clone, Debug)]
pub(crate) struct MembershipLog {
    base: Membership,
    /// `(index, configuration)` of membership entries, in index order.
    changes: Vec<(u64, Membership)>,
}

impl MembershipLog {
    pub(crate) fn new(base: Membership) -> MembershipLog {
        MembershipLog {
            base,
            changes: Vec::new(),
        }
    }

    /// The configuration in effect: the latest appended.
    pub(crate) fn current(&self) -> &Membership {
        self.changes.last().map_or(&self.base, |(_, m)| m)
    }

    /// The latest configuration known to be committed (the base: `compact` moves it up as
    /// the commit index advances).
    pub(crate) fn committed(&self) -> &Membership {
        &self.base
    }

    /// Index of the latest membership entry (0 if the base is in effect).
    pub(crate) fn latest_index(&self) -> u64 {
        self.changes.last().map_or(0, |(i, _)| *i)
    }

    pub(crate) fn on_append(&mut self, index: u64, membership: Membership) {
        if let Some((last, _)) = self.changes.last() {
            assert!(
                index > *last,
                "membership: entry {index} appended after membership entry {last}"
            );
        }
        self.changes.push((index, membership));
    }

    /// Forgets configurations from `index` on; returns whether the current one changed.
    pub(crate) fn truncate_from(&mut self, index: u64) -> bool {
        let before = self.changes.len();
        self.changes.retain(|(i, _)| *i < index);
        before != self.changes.len()
    }

    /// A snapshot replaced the whole log: its configuration is the only one.
    pub(crate) fn restore(&mut self, membership: Membership) {
        self.base = membership;
        self.changes.clear();
    }

    /// Drops configurations superseded by a committed one, keeping memory bounded.
    pub(crate) fn compact(&mut self, commit: u64) {
        let committed = self.changes.iter().rposition(|(i, _)| *i <= commit);
        if let Some(pos) = committed {
            self.base = self.changes[pos].1.clone();
            self.changes.drain(..=pos);
        }
    }

    pub(crate) fn voters(&self) -> Vec<NodeId> {
        self.current().voters().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::test_cluster::{member, voters};

    #[test]
    fn membership_round_trips_through_its_entry_encoding() {
        let m = voters(&[1, 2, 3]);
        assert_eq!(decode_membership(&encode_membership(&m)).unwrap(), m);
        assert!(decode_membership(&[0xff, 0xff]).is_err());
    }

    #[test]
    fn truncation_reverts_to_previous_configuration() {
        let mut log = MembershipLog::new(voters(&[1, 2, 3]));
        log.on_append(5, voters(&[1, 2, 3, 4]));
        log.on_append(9, voters(&[1, 2, 3]));
        assert!(log.truncate_from(9));
        assert_eq!(log.voters(), vec![1, 2, 3, 4]);
        assert!(!log.truncate_from(6));
        assert!(log.truncate_from(5));
        assert_eq!(log.voters(), vec![1, 2, 3]);
    }

    #[test]
    fn change_that_removes_the_last_voter_is_invalid() {
        let m = voters(&[1]);
        let err = apply_change(&m, &MembershipChange::Remove { id: 1 }).unwrap_err();
        assert!(matches!(err, ProposeError::InvalidMembershipChange(_)));
        assert!(apply_change(&m, &MembershipChange::Remove { id: 7 }).is_err());
        let added = apply_change(
            &m,
            &MembershipChange::AddOrUpdate {
                id: 2,
                member: member(false),
            },
        )
        .unwrap();
        assert_eq!(added.learners().collect::<Vec<_>>(), vec![2]);
    }

    #[test]
    fn compact_keeps_latest_committed_as_base() {
        let mut log = MembershipLog::new(voters(&[1]));
        log.on_append(3, voters(&[1, 2]));
        log.on_append(7, voters(&[1, 2, 3]));
        log.compact(5);
        assert_eq!(log.latest_index(), 7);
        assert!(!log.truncate_from(8));
        assert!(log.truncate_from(7));
        assert_eq!(log.voters(), vec![1, 2]);
    }
}
