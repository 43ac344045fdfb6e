//! A follower whose durable log went backwards below what it acknowledged (a disk that lost
//! its tail, a restored backup, a persistence bug). Raft's model has no such fault: Figure 2
//! makes `matchIndex` the highest index "known to be replicated", which holds only if
//! acknowledged entries stay on the follower's disk. These tests check what the leader does
//! when that assumption breaks.

use super::*;
use crate::raft::progress::LOG_REGRESSED_REJECTIONS;
use crate::raft::LogRegression;

/// A 3-node cluster led by 1 with entries 1..=5 on every disk, in which node 3 then comes
/// back from its disk holding only entries 1..=2 (same hard state, so the same term).
fn cluster_with_regressed_follower() -> Cluster {
    let mut c = Cluster::new(&[1, 2, 3], |_| {});
    c.elect(1);
    for _ in 0..4 {
        c.propose(1, b"x");
    }
    assert_eq!(c.node(1).status().last_log_index, 5);
    assert_eq!(progress_of(&c, 3).match_index, 5);
    let old = c.nodes.remove(&3).expect("node 3 exists");
    let kept = old.into_storage().log_entries()[..2].to_vec();
    let mut storage = MemStorage::new();
    storage.append(&kept);
    let hs = c.hard[&3];
    c.applied.insert(3, Vec::new());
    c.applied_index.insert(3, 0);
    c.add(
        3,
        RaftCore::new(test_config(3), storage, hs, voters(&[1, 2, 3])),
    );
    c
}

fn progress_of(c: &Cluster, id: NodeId) -> MemberProgress {
    c.node(1)
        .member_progress()
        .into_iter()
        .find(|p| p.id == id)
        .expect("the leader reports every member")
}

/// Ticks only the leader through one heartbeat, then delivers at most `budget` messages
/// (a regressed follower can keep the leader probing forever, so `settle` might not end).
/// Returns how many rejections node 3 sent.
fn heartbeat_and_deliver(c: &mut Cluster, budget: usize) -> usize {
    for _ in 0..test_config(1).heartbeat_interval_ticks {
        c.node_mut(1).tick();
    }
    let mut rejections = 0;
    for _ in 0..budget {
        let ids: Vec<NodeId> = c.nodes.keys().copied().collect();
        for id in ids {
            c.process(id);
        }
        let Some(m) = c.queue.pop_front() else {
            break;
        };
        if m.from == 3
            && matches!(
                m.message,
                Message::AppendEntriesResponse { success: false, .. }
            )
        {
            rejections += 1;
        }
        c.node_mut(m.to).step(m);
    }
    rejections
}

/// After [`LOG_REGRESSED_REJECTIONS`] rejections below node 3's match index with no success
/// between, the leader stops taking them for stale: it reports node 3's regression (match 5,
/// last index 2) in `member_progress`, lowers its match index to 0 and probes from the hint,
/// and node 3 catches up (the §5.3 consistency check finds entry 2 in agreement). Before this
/// rule (etcd raft's `MaybeDecrTo`), the leader clamped every probe back to match + 1 = 6:
/// node 3 rejected more than 100 probes in 2,000 deliveries, stayed at last index 2, and no
/// report said so.
#[test]
fn leader_flags_and_repairs_a_follower_whose_log_went_backwards() {
    let mut c = cluster_with_regressed_follower();
    assert_eq!(c.node(1).log_regressions(), 0);
    let rejections = heartbeat_and_deliver(&mut c, 2_000);
    assert!(c.queue.is_empty(), "the leader still probes");
    assert_eq!(rejections, LOG_REGRESSED_REJECTIONS as usize);
    assert_eq!(c.node(1).log_regressions(), 1);
    let seen = LogRegression {
        match_index: 5,
        last_index: 2,
    };
    assert_eq!(c.node(1).last_log_regression(), Some((3, seen)));
    assert_eq!(c.node(3).status().last_log_index, 5);
    let pr = progress_of(&c, 3);
    assert_eq!(pr.match_index, 5);
    // Caught up again: the flag is down, the counter remembers.
    assert_eq!(pr.log_regressed, None);
    assert_eq!(c.node(1).status().commit_index, 5);
}

/// The flag is up between the regression and the catch-up, naming what the leader had and
/// what the follower reported.
#[test]
fn regressed_follower_is_reported_until_it_catches_up() {
    let mut c = cluster_with_regressed_follower();
    // Node 3 cannot answer: the leader's probes go unanswered, nothing is flagged.
    c.cut.insert((1, 3));
    heartbeat_and_deliver(&mut c, 2_000);
    c.heal();
    let mut seen = None;
    for _ in 0..test_config(1).heartbeat_interval_ticks {
        c.node_mut(1).tick();
    }
    for _ in 0..2_000 {
        let ids: Vec<NodeId> = c.nodes.keys().copied().collect();
        for id in ids {
            c.process(id);
        }
        if let Some(r) = progress_of(&c, 3).log_regressed {
            seen.get_or_insert(r);
        }
        let Some(m) = c.queue.pop_front() else {
            break;
        };
        c.node_mut(m.to).step(m);
    }
    assert_eq!(
        seen,
        Some(LogRegression {
            match_index: 5,
            last_index: 2
        })
    );
    assert_eq!(progress_of(&c, 3).log_regressed, None);
}
