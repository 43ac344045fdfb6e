//! Read-only queries: ReadIndex and leases (thesis §6.4).

use super::*;

/// Thesis §6.4 step 3 (Raft §8): a ReadIndex read is answered only after a heartbeat round
/// acknowledged by a majority confirms the leader still leads. With both followers' answers cut it
/// waits; one answer (a majority with the leader) releases it at the commit index recorded when it
/// arrived.
#[test]
fn read_index_waits_for_quorum() {
    let mut c = Cluster::new(&[1, 2, 3], |_| {});
    c.elect(1);
    c.propose(1, b"x");
    let commit = c.node(1).status().commit_index;
    c.cut.insert((2, 1));
    c.cut.insert((3, 1));
    c.node_mut(1)
        .read_index(42, ReadMode::Linearizable)
        .unwrap();
    c.settle();
    assert!(c.read_states[&1].is_empty());
    c.cut.remove(&(2, 1));
    c.node_mut(1).tick();
    c.node_mut(1).tick();
    c.settle();
    assert_eq!(
        c.read_states[&1],
        vec![ReadState {
            ctx: 42,
            index: commit
        }]
    );
}

/// Thesis §6.4 step 1 (Raft §8): a new leader does not know the commit index until an entry of its
/// own term commits, so a read waits for the no-op; and then it still needs a fresh quorum round
/// (step 3) before it is answered at index 1.
#[test]
fn read_index_waits_for_commit_of_own_term() {
    let mut core = leader_by_hand(&[1, 2, 3], &[], 0);
    core.read_index(7, ReadMode::Linearizable).unwrap();
    let rd = take(&mut core);
    assert!(rd.read_states.is_empty());
    core.on_persisted(1, 1);
    core.step(env(2, 1, append_response(1, 1)));
    let rd = take(&mut core);
    assert!(
        rd.read_states.is_empty(),
        "needs a quorum round after the commit"
    );
    let round = rd
        .messages
        .iter()
        .find_map(|m| match m.message {
            Message::AppendEntries { read_ctx, .. } if m.to == 3 => Some(read_ctx),
            _ => None,
        })
        .expect("heartbeat round");
    let ack = Message::AppendEntriesResponse {
        term: 1,
        success: true,
        match_index: 0,
        conflict_term: 0,
        conflict_index: 0,
        read_ctx: round,
    };
    core.step(env(3, 1, ack));
    assert_eq!(
        take(&mut core).read_states,
        vec![ReadState { ctx: 7, index: 1 }]
    );
}

/// Planted bug `ReadIndexWithoutQuorum`, skipping thesis §6.4 step 3: an isolated leader answers a
/// linearizable read at once, possibly stale. Shows the plant takes effect, so the simulator's
/// `planted_read_index_without_quorum` has a real bug to find.
#[test]
fn planted_read_index_without_quorum_answers_at_once() {
    let mut c = Cluster::new(&[1, 2, 3], |cfg| {
        cfg.planted_bug = Some(PlantedBug::ReadIndexWithoutQuorum)
    });
    c.elect(1);
    c.isolate(1);
    c.node_mut(1).read_index(1, ReadMode::Linearizable).unwrap();
    c.settle();
    assert_eq!(c.read_states[&1].len(), 1);
}

/// Thesis §10.2.1 and §6.4 for a single voter: the leader's own durable write is the majority, so
/// an entry commits once persisted, and a read's quorum round is met by the leader alone, so it is
/// answered at once at the commit index.
#[test]
fn single_voter_commits_after_persist_and_reads_at_once() {
    let mut c = Cluster::new(&[1], |_| {});
    c.elect(1);
    c.propose(1, b"solo");
    assert_eq!(c.applied_payloads(1), vec![Bytes::from_static(b"solo")]);
    c.node_mut(1).read_index(1, ReadMode::Linearizable).unwrap();
    let rd = c.node_mut(1).take_ready();
    assert_eq!(rd.read_states, vec![ReadState { ctx: 1, index: 2 }]);
}

/// Thesis §6.2 (routing requests to the leader): a follower serves no read; it fails it naming the
/// leader it knows of, for the node to forward the request there.
#[test]
fn follower_read_fails_with_leader_hint() {
    let mut c = Cluster::new(&[1, 2, 3], |_| {});
    c.elect(1);
    c.node_mut(2).read_index(9, ReadMode::Linearizable).unwrap();
    let rd = c.node_mut(2).take_ready();
    assert_eq!(
        rd.failed_reads,
        vec![FailedRead {
            ctx: 9,
            leader_hint: Some(1)
        }]
    );
}

/// Thesis §6.4: only the current leader can confirm a read point. A leader that steps down (here by
/// CheckQuorum, §6.2) fails its pending reads rather than ever answering them; the client retries
/// at the new leader.
#[test]
fn pending_reads_fail_when_leadership_is_lost() {
    let mut c = Cluster::new(&[1, 2, 3], |_| {});
    c.elect(1);
    c.isolate(1);
    c.node_mut(1).read_index(3, ReadMode::Linearizable).unwrap();
    c.settle();
    c.tick_all(60);
    assert_ne!(c.node(1).status().role, Role::Leader);
    assert_eq!(
        c.failed_reads[&1].iter().map(|f| f.ctx).collect::<Vec<_>>(),
        vec![3]
    );
    assert!(c.read_states[&1].is_empty());
}

/// Thesis §6.4.1 (leases): a leader whose heartbeats a quorum acknowledged within the election
/// timeout, less the clock drift bound, serves a lease read at once; once the lease has run out the
/// same kind of read needs a quorum round.
#[test]
fn lease_read_is_served_while_quorum_recently_acked() {
    let mut c = Cluster::new(&[1, 2, 3], |_| {});
    c.elect(1);
    c.tick_all(2);
    c.node_mut(1).read_index(5, ReadMode::Lease).unwrap();
    assert_eq!(c.node_mut(1).take_ready().read_states.len(), 1);
    c.isolate(1);
    for _ in 0..10 {
        c.node_mut(1).tick();
    }
    c.settle();
    c.node_mut(1).read_index(6, ReadMode::Lease).unwrap();
    c.settle();
    assert!(
        !c.read_states[&1].iter().any(|r| r.ctx == 6),
        "lease expired: the read needs a quorum round"
    );
}

/// Thesis §6.4.1: a lease rests on time, which reaches the core only as ticks.
///
/// The node driver's contract (issue 11): after a stall it feeds every missed tick
/// before any request. Those ticks alone must end the lease (and, past an election
/// timeout, the leadership through CheckQuorum, thesis §6.2) before a lease read is
/// answered, since the others may have elected a new leader meanwhile.
#[test]
fn lease_read_after_stall_is_not_served_once_missed_ticks_are_fed() {
    for stalled_ticks in [10, 21] {
        let mut c = Cluster::new(&[1, 2, 3], |_| {});
        c.elect(1);
        c.tick_all(2);
        c.node_mut(1).read_index(5, ReadMode::Lease).unwrap();
        assert_eq!(c.node_mut(1).take_ready().read_states.len(), 1);
        let term = c.node(1).status().term;
        c.isolate(1);
        for _ in 0..stalled_ticks {
            for id in [2, 3] {
                c.node_mut(id).tick();
            }
            c.settle();
        }
        if stalled_ticks > 20 {
            assert!(
                [2, 3].iter().any(|&id| c.node(id).status().term > term),
                "past the longest election timeout the others elect anew"
            );
        }
        for _ in 0..stalled_ticks {
            c.node_mut(1).tick();
        }
        c.node_mut(1).read_index(6, ReadMode::Lease).unwrap();
        let rd = c.node_mut(1).take_ready();
        assert!(
            rd.read_states.is_empty(),
            "stale lease read after {stalled_ticks} missed ticks"
        );
        if stalled_ticks > 20 {
            assert_ne!(c.node(1).status().role, Role::Leader, "CheckQuorum");
        }
    }
}

/// Thesis §6.4.1 with §3.10: TimeoutNow lets the target campaign at once, without waiting out the
/// election timeout a lease relies on, so once it has been sent the leader serves no lease read for
/// the rest of its leadership, even after the transfer aborts.
#[test]
fn lease_reads_stop_once_timeout_now_is_sent() {
    let mut c = Cluster::new(&[1, 2, 3], |_| {});
    c.elect(1);
    c.tick_all(2);
    c.cut.insert((1, 3));
    c.node_mut(1).transfer_leadership(3).unwrap();
    c.tick_all(21);
    assert_eq!(c.leader(), Some(1));
    c.node_mut(1).read_index(77, ReadMode::Lease).unwrap();
    assert!(c.node_mut(1).take_ready().read_states.is_empty());
}

/// Thesis §6.4 under load, as etcd's server batches ReadIndex: while a heartbeat round is in
/// flight, reads that arrive wait for the next round, which starts only when a quorum has
/// answered the first; so one round confirms every read that arrived during the one before
/// (two rounds here for three reads, where each read used to start its own).
#[test]
fn reads_arriving_during_a_round_share_the_next_one() {
    let mut c = Cluster::new(&[1, 2, 3], |_| {});
    c.elect(1);
    c.propose(1, b"x");
    let commit = c.node(1).status().commit_index;
    let rounds_sent = |c: &Cluster, from: usize| -> std::collections::BTreeSet<u64> {
        c.sent[from..]
            .iter()
            .filter_map(|m| match &m.message {
                Message::AppendEntries { read_ctx, .. } if m.from == 1 => Some(*read_ctx),
                _ => None,
            })
            .collect()
    };
    let before = c.sent.len();
    c.node_mut(1).read_index(1, ReadMode::Linearizable).unwrap();
    c.process(1);
    assert_eq!(
        rounds_sent(&c, before).len(),
        1,
        "the first read starts a round"
    );
    let in_flight = c.sent.len();
    for ctx in [2, 3] {
        c.node_mut(1)
            .read_index(ctx, ReadMode::Linearizable)
            .unwrap();
        c.process(1);
    }
    assert!(
        rounds_sent(&c, in_flight).is_empty(),
        "no round starts while one is unanswered"
    );
    c.settle();
    assert_eq!(rounds_sent(&c, before).len(), 2);
    let released: Vec<ReadState> = (1..=3)
        .map(|ctx| ReadState { ctx, index: commit })
        .collect();
    assert_eq!(c.read_states[&1], released);
}
