//! The byte bound on uncommitted proposals (etcd raft's `MaxUncommittedEntriesSize`).

use bytes::Bytes;

use super::*;
use crate::raft::test_cluster::{member, Cluster};

const BOUND: u64 = 100;

fn payload(bytes: usize) -> Bytes {
    Bytes::from(vec![b'v'; bytes])
}

/// A three-node cluster led by 1 whose followers are cut off: nothing 1 proposes
/// commits until `heal`.
fn leader_cut_off() -> Cluster {
    let mut c = Cluster::new(&[1, 2, 3], |config| config.max_uncommitted_bytes = BOUND);
    c.elect(1);
    c.isolate(1);
    c
}

#[test]
fn proposal_past_uncommitted_bytes_bound_is_refused_until_commit() {
    let mut c = leader_cut_off();
    assert!(c.node_mut(1).propose(payload(60)).is_ok());
    let last_index = c.node(1).status().last_log_index;
    assert_eq!(
        c.node_mut(1).propose(payload(60)),
        Err(ProposeError::UncommittedBytesFull {
            uncommitted_bytes: 60,
            proposal_bytes: 60,
            max_bytes: BOUND,
        })
    );
    assert_eq!(
        c.node(1).status().last_log_index,
        last_index,
        "a refused proposal appended nothing"
    );
    assert!(
        c.node_mut(1).propose(payload(40)).is_ok(),
        "exactly the bound is within it"
    );
    assert_eq!(c.node(1).uncommitted_bytes(), BOUND);
    c.settle();
    c.heal();
    c.tick_all(10);
    assert_eq!(
        c.node(1).status().commit_index,
        c.node(1).status().last_log_index
    );
    assert_eq!(
        c.node(1).uncommitted_bytes(),
        0,
        "commit releases the bytes"
    );
    assert!(c.node_mut(1).propose(payload(60)).is_ok());
}

#[test]
fn proposal_larger_than_the_bound_is_accepted_when_nothing_is_uncommitted() {
    let mut c = leader_cut_off();
    assert!(
        c.node_mut(1).propose(payload(3 * BOUND as usize)).is_ok(),
        "etcd raft: an oversized entry must not be refused forever"
    );
    assert!(matches!(
        c.node_mut(1).propose(payload(1)),
        Err(ProposeError::UncommittedBytesFull { .. })
    ));
}

#[test]
fn empty_proposal_is_never_refused_by_the_byte_bound() {
    let mut c = leader_cut_off();
    assert!(c.node_mut(1).propose(payload(BOUND as usize)).is_ok());
    assert!(c.node_mut(1).propose(Bytes::new()).is_ok());
    assert_eq!(c.node(1).uncommitted_bytes(), BOUND);
}

#[test]
fn membership_change_is_not_refused_by_the_byte_bound() {
    let mut c = Cluster::new(&[1, 2, 3], |config| config.max_uncommitted_bytes = BOUND);
    c.elect(1);
    c.isolate(1);
    assert!(c.node_mut(1).propose(payload(BOUND as usize)).is_ok());
    let change = MembershipChange::AddOrUpdate {
        id: 4,
        member: member(false),
    };
    assert!(
        c.node_mut(1).propose_membership_change(change).is_ok(),
        "an operator must be able to reconfigure an overloaded leader"
    );
}

#[test]
fn new_leader_counts_only_its_own_proposals() {
    let mut c = leader_cut_off();
    assert!(c.node_mut(1).propose(payload(BOUND as usize)).is_ok());
    c.settle();
    // 2 and 3 elect one of them without 1 (whose entry they never got); 1 steps down
    // (CheckQuorum) and learns of the new leader when healed.
    c.tick_all(60);
    let new_leader = c.leader().expect("2 and 3 elect a leader");
    assert_ne!(new_leader, 1);
    c.heal();
    c.tick_all(10);
    assert_eq!(c.node(1).status().role, Role::Follower);
    assert_eq!(
        c.node(1).uncommitted_bytes(),
        0,
        "a follower counts nothing"
    );
    assert_eq!(c.node(new_leader).uncommitted_bytes(), 0);
    assert!(c
        .node_mut(new_leader)
        .propose(payload(BOUND as usize))
        .is_ok());
}
