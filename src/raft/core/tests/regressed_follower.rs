//! A follower whose durable log went backwards below what it acknowledged (a disk that lost
//! its tail, a restored backup, a persistence bug). Raft's model has no such fault: Figure 2
//! makes `matchIndex` the highest index "known to be replicated", which holds only if
//! acknowledged entries stay on the follower's disk. These tests check what the leader does
//! when that assumption breaks.

use super::*;

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

/// What the leader does today (etcd raft's `MaybeDecrTo` does the same): it treats every
/// rejection below node 3's match index as stale, clamps its probe back to match + 1 = 6,
/// and probes again at once. Node 3, which holds only 1..=2, rejects every probe: it never
/// catches up, the leader never notices, and nothing in its reports says so.
#[test]
fn leader_stalls_silently_on_a_follower_whose_log_went_backwards() {
    let mut c = cluster_with_regressed_follower();
    let rejections = heartbeat_and_deliver(&mut c, 2_000);
    assert!(rejections > 100, "only {rejections} rejections");
    assert_eq!(c.node(3).status().last_log_index, 2);
    assert_eq!(progress_of(&c, 3).match_index, 5);
}
