//! Membership changes one server at a time (thesis §4.1–§4.2), learners (thesis §4.2.1),
//! disruptive removed servers (thesis §4.2.3) and leadership transfer (thesis §3.10).

use super::*;
// The name `membership` here would be this test module itself.
use crate::raft::membership;

fn add(id: NodeId, voter: bool) -> MembershipChange {
    MembershipChange::AddOrUpdate {
        id,
        member: member(voter),
    }
}

/// Thesis §4.1, as corrected (Ongaro, raft-dev, 2015): a leader proposes a membership change only
/// once an entry of its own term has committed and no earlier change is uncommitted, so the old and
/// new majorities overlap. The change takes effect as soon as it is appended: a server uses the
/// latest configuration in its log (§4.1).
#[test]
fn membership_change_waits_for_previous_to_commit() {
    let mut core = leader_by_hand(&[1, 2, 3], &[], 0);
    assert_eq!(
        core.propose_membership_change(add(4, false)),
        Err(ProposeError::MembershipChangePending),
        "before the leader's no-op commits"
    );
    take(&mut core);
    core.on_persisted(1, 1);
    core.step(env(2, 1, append_response(1, 1)));
    assert_eq!(core.propose_membership_change(add(4, false)), Ok((2, 1)));
    assert!(
        core.status().membership.members.contains_key(&4),
        "effective when appended"
    );
    assert_eq!(
        core.propose_membership_change(add(5, false)),
        Err(ProposeError::MembershipChangePending)
    );
}

/// Planted bug `MembershipChangeBeforeOwnTermCommit`, the single-server change bug (Ongaro,
/// raft-dev, 2015; thesis §4.1 as corrected): a new leader proposes a change before its no-op
/// commits. Shows the plant takes effect, so the simulator's
/// `planted_membership_change_before_own_term_commit` has a real bug to find.
#[test]
fn planted_membership_change_before_own_term_commit_skips_the_wait() {
    let mut core = core_with(1, &[1, 2, 3], &[], 0, |c| {
        c.pre_vote = false;
        c.planted_bug = Some(PlantedBug::MembershipChangeBeforeOwnTermCommit);
    });
    tick_until(&mut core, Role::Candidate);
    take(&mut core);
    core.step(env(
        2,
        1,
        Message::RequestVoteResponse {
            term: 1,
            granted: true,
        },
    ));
    assert_eq!(core.status().role, Role::Leader);
    assert_eq!(core.propose_membership_change(add(4, false)), Ok((2, 1)));
}

/// Thesis §4.1: a configuration entry can be removed from a follower's log when leadership changes;
/// the follower then falls back to the previous configuration in its log, here one without node 4.
#[test]
fn truncated_membership_entry_reverts_configuration() {
    let mut core = core_with(2, &[1, 2, 3], &[1], 1, |_| {});
    let mut m = voters(&[1, 2, 3]);
    m.members.insert(4, member(true));
    let cfg = Entry {
        index: 2,
        term: 1,
        kind: EntryKind::Membership,
        payload: membership::encode_membership(&m),
    };
    let ae = |term, prev_term, entries| Message::AppendEntries {
        term,
        prev_log_index: 1,
        prev_log_term: prev_term,
        entries,
        leader_commit: 0,
        read_ctx: 0,
    };
    core.step(env(1, 2, ae(1, 1, vec![cfg])));
    assert!(core.status().membership.is_voter(4));
    core.step(env(3, 2, ae(2, 1, vec![ent(2, 2)])));
    assert!(!core.status().membership.members.contains_key(&4));
}

/// Thesis §4.1 and Raft §7: after a restart a server's configuration is the latest one in its log,
/// or in its snapshot's metadata once the log is compacted, not the one it was started with;
/// restarted from a snapshot it resumes with commit and applied index at the snapshot.
#[test]
fn restart_recovers_membership_from_log_and_snapshot() {
    let mut c = Cluster::new(&[1, 2, 3], |_| {});
    c.elect(1);
    c.tick_all(2);
    c.node_mut(1)
        .propose_membership_change(add(4, false))
        .unwrap();
    c.settle();
    c.restart(2, voters(&[1, 2, 3]));
    assert!(c.node(2).status().membership.members.contains_key(&4));
    let applied = c.applied_index[&1];
    c.snapshot(1, Bytes::from_static(b"s"), applied);
    c.restart(1, voters(&[1, 2, 3]));
    let st = c.node(1).status();
    assert!(st.membership.members.contains_key(&4));
    assert_eq!((st.commit_index, st.applied_index), (applied, applied));
}

/// Thesis §4.2.1 (Raft §6, non-voting members): a learner receives and applies the log, but its
/// copy does not count toward a majority and it never campaigns.
#[test]
fn learner_receives_log_but_does_not_count() {
    let mut c = Cluster::new(&[1, 2], |_| {});
    c.elect(1);
    let learner = RaftCore::new(
        test_config(3),
        MemStorage::new(),
        HardState::default(),
        Membership::default(),
    );
    c.add(3, learner);
    c.node_mut(1)
        .propose_membership_change(add(3, false))
        .unwrap();
    c.settle();
    c.tick_all(4);
    c.propose(1, b"x");
    c.tick_all(2);
    assert_eq!(c.applied_payloads(3), vec![Bytes::from_static(b"x")]);
    assert_eq!(c.node(3).status().role, Role::Learner);
    // With node 2 gone, the learner's copy must not make a quorum.
    c.isolate(2);
    let (index, _) = c.propose(1, b"y");
    c.tick_all(2);
    assert!(c.node(1).status().commit_index < index);
    for _ in 0..100 {
        c.node_mut(3).tick();
    }
    assert_eq!(
        c.node(3).status().role,
        Role::Learner,
        "learners never campaign"
    );
}

/// Thesis §4.2.2, and simulator seeds 2718018620 and 2718034740: a voter whose demotion
/// is in its log but not committed still campaigns when its leader is gone; its peers,
/// which may lack the change, may need it (it can hold the only log that wins).
#[test]
fn voter_with_uncommitted_demotion_still_campaigns() {
    let hard_state = HardState {
        term: 1,
        voted_for: None,
    };
    let mut core = RaftCore::new(
        test_config(3),
        MemStorage::new(),
        hard_state,
        voters(&[1, 2, 3]),
    );
    let mut demoted = voters(&[1, 2]);
    demoted.members.insert(3, member(false));
    let entries = vec![
        Entry {
            index: 1,
            term: 1,
            kind: EntryKind::Noop,
            payload: Bytes::new(),
        },
        Entry {
            index: 2,
            term: 1,
            kind: EntryKind::Membership,
            payload: membership::encode_membership(&demoted),
        },
    ];
    core.step(Envelope {
        from: 1,
        to: 3,
        message: Message::AppendEntries {
            term: 1,
            prev_log_index: 0,
            prev_log_term: 0,
            entries,
            leader_commit: 1,
            read_ctx: 0,
        },
    });
    let ready = core.take_ready();
    core.storage_mut().append(&ready.entries);
    if let Some(last) = ready.entries.last() {
        core.on_persisted(last.index, last.term);
    }
    assert_eq!(
        core.status().commit_index,
        1,
        "the demotion is not committed"
    );
    // The leader goes silent: after an election timeout this node must stand.
    for _ in 0..2 * test_config(3).election_timeout_ticks_max {
        core.tick();
    }
    let role = core.status().role;
    assert!(
        matches!(role, Role::PreCandidate | Role::Candidate),
        "a voter whose demotion is uncommitted sat out the election as {role:?}"
    );
}

/// Thesis §4.2.2 (Raft §6): a leader that removes itself keeps leading until the change commits,
/// then steps down, and the remaining voters elect a leader among themselves.
#[test]
fn removed_leader_steps_down_after_commit() {
    let mut c = Cluster::new(&[1, 2, 3], |_| {});
    c.elect(1);
    c.tick_all(2);
    let (index, _) = c
        .node_mut(1)
        .propose_membership_change(MembershipChange::Remove { id: 1 })
        .unwrap();
    assert_eq!(
        c.node(1).status().role,
        Role::Leader,
        "leads until the change commits"
    );
    c.settle();
    assert!(c.node(2).status().commit_index >= index || c.node(1).status().commit_index >= index);
    assert_ne!(c.node(1).status().role, Role::Leader);
    c.tick_all(60);
    let leader = c.leader().expect("2 or 3 leads");
    assert!(leader == 2 || leader == 3);
    assert_eq!(
        c.node(leader)
            .status()
            .membership
            .voters()
            .collect::<Vec<_>>(),
        vec![2, 3]
    );
}

/// Thesis §4.2.3, the mechanism behind simulator seeds 8888000178, 5555022801 and
/// 5555089955: a server removed while partitioned never receives the entry that removes
/// it (the leader stops replicating to it), so it keeps timing out and asking for votes
/// with ever higher terms. Without PreVote and CheckQuorum nothing stopped those
/// requests from deposing every leader the cluster elected.
#[test]
fn removed_server_does_not_disrupt_leader_without_check_quorum() {
    let mut c = Cluster::new(&[1, 2, 3], |cfg| {
        cfg.pre_vote = false;
        cfg.check_quorum = false;
    });
    c.elect(1);
    c.tick_all(2);
    c.isolate(3);
    let (removal, _) = c
        .node_mut(1)
        .propose_membership_change(MembershipChange::Remove { id: 3 })
        .unwrap();
    c.settle();
    c.tick_all(2);
    assert!(c.node(1).status().commit_index >= removal);
    c.heal();
    let term = c.node(1).status().term;
    let term_3 = c.node(3).status().term;
    c.tick_all(200);
    assert!(
        c.node(3).status().term > term_3 + 5,
        "the removed server keeps campaigning: {:?}",
        c.node(3).status()
    );
    assert_eq!(c.leader(), Some(1));
    assert_eq!(c.node(1).status().term, term, "leader deposed");
    assert_eq!(c.node(2).status().term, term, "follower disrupted");
    c.propose(1, b"x");
    c.tick_all(2);
    assert_eq!(c.applied_payloads(2), vec![Bytes::from_static(b"x")]);
}

/// Raft Figure 2 (volatile state on leaders: `matchIndex`): only a leader knows each member's match
/// index and how long since it heard from it; followers report no view. Implementation rule behind
/// the status API and the choice of a transfer target (thesis §3.10).
#[test]
fn member_progress_reports_match_index_and_silence_on_the_leader_only() {
    let mut c = Cluster::new(&[1, 2, 3], |_| {});
    c.elect(1);
    c.propose(1, b"a");
    c.settle();
    let last = c.node(1).status().last_log_index;
    let all = c.node(1).member_progress();
    assert_eq!(all.iter().map(|p| p.id).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert!(all.iter().all(|p| p.match_index == last), "{all:?}");
    assert!(c.node(1).has_committed_own_term());
    assert!(!c.node(1).membership_change_pending());
    assert!(
        c.node(2).member_progress().is_empty(),
        "followers have no view"
    );
    assert!(!c.node(2).has_committed_own_term());

    c.isolate(3);
    c.propose(1, b"b");
    for _ in 0..5 {
        c.node_mut(1).tick();
        c.settle();
    }
    let by_id = |id| {
        c.node(1)
            .member_progress()
            .into_iter()
            .find(|p| p.id == id)
            .unwrap()
    };
    assert_eq!(by_id(3).match_index, last, "node 3 missed the new entry");
    assert!(by_id(3).ticks_since_contact >= 5, "{:?}", by_id(3));
    assert_eq!(by_id(2).match_index, last + 1);
    assert!(by_id(2).ticks_since_contact < 5, "{:?}", by_id(2));
    assert_eq!(by_id(1).ticks_since_contact, 0);
}

/// Thesis §3.10 (leadership transfer): the leader stops accepting proposals, brings the target's
/// log up to date and sends it TimeoutNow; the target wins the election at once.
#[test]
fn leadership_transfer_hands_over() {
    let mut c = Cluster::new(&[1, 2, 3], |_| {});
    c.elect(1);
    c.isolate(3);
    c.propose(1, b"x");
    c.heal();
    c.node_mut(1).transfer_leadership(3).unwrap();
    assert_eq!(
        c.node_mut(1).propose(Bytes::from_static(b"y")),
        Err(ProposeError::TransferInProgress)
    );
    c.tick_all(6);
    assert_eq!(c.leader(), Some(3));
    assert_eq!(c.node(1).status().leader_id, Some(3));
}

/// Thesis §3.10: a transfer that has not completed within an election timeout is aborted, and the
/// leader accepts proposals again.
#[test]
fn leadership_transfer_aborts_after_election_timeout() {
    let mut c = Cluster::new(&[1, 2, 3], |_| {});
    c.elect(1);
    c.cut.insert((1, 3));
    c.node_mut(1).transfer_leadership(3).unwrap();
    c.tick_all(21);
    assert_eq!(c.leader(), Some(1));
    c.cut.clear();
    assert!(c.node_mut(1).propose(Bytes::from_static(b"y")).is_ok());
}

/// Thesis §3.10: the target of a transfer in progress is reported until the transfer ends (here
/// aborted after an election timeout); implementation rule for the status API.
#[test]
fn transfer_target_is_reported_until_the_transfer_ends() {
    let mut c = Cluster::new(&[1, 2, 3], |_| {});
    c.elect(1);
    c.cut.insert((1, 3));
    c.node_mut(1).transfer_leadership(3).unwrap();
    assert_eq!(c.node(1).transfer_target(), Some(3));
    c.tick_all(21);
    assert_eq!(c.node(1).transfer_target(), None);
}

/// Thesis §3.10 with §4.2.3: a transfer's RequestVote skips the vote lease, on the old leader that
/// sent TimeoutNow too (hashicorp/raft#487); it grants its vote and steps down.
#[test]
fn old_leader_grants_vote_to_transfer_target_after_timeout_now() {
    // hashicorp/raft#487: the leader that sent TimeoutNow must not ignore the target's
    // RequestVote because of its own lease (thesis §3.10, §4.2.3).
    let mut c = Cluster::new(&[1, 2, 3], |_| {});
    c.elect(1);
    c.tick_all(2);
    let term = c.node(1).status().term;
    let last = c.node(1).status().last_log_index;
    c.node_mut(1).transfer_leadership(3).unwrap();
    let rd = c.node_mut(1).take_ready();
    assert!(
        rd.messages
            .iter()
            .any(|e| e.to == 3 && matches!(e.message, Message::TimeoutNow { .. })),
        "a caught-up target gets TimeoutNow at once: {:?}",
        rd.messages
    );
    let rv = Message::RequestVote {
        term: term + 1,
        last_log_index: last,
        last_log_term: term,
        leadership_transfer: true,
    };
    c.node_mut(1).step(env(3, 1, rv));
    assert_eq!(c.node(1).status().role, Role::Follower);
    assert_eq!(c.node(1).hard_state().voted_for, Some(3));
    let rd = take(c.node_mut(1));
    let granted = Message::RequestVoteResponse {
        term: term + 1,
        granted: true,
    };
    assert_eq!(rd.persisted_messages, vec![env(1, 3, granted)]);
}

/// Raft §5.4.1 with thesis §4.2.3: a transfer's RequestVote skips the lease but never the
/// up-to-date log check; a target with an empty log gets no vote.
#[test]
fn old_leader_refuses_transfer_vote_with_stale_log() {
    // The lease is skipped for a transfer, the log check (§5.4.1) never is.
    let mut c = Cluster::new(&[1, 2, 3], |_| {});
    c.elect(1);
    c.tick_all(2);
    let term = c.node(1).status().term;
    let rv = Message::RequestVote {
        term: term + 1,
        last_log_index: 0,
        last_log_term: 0,
        leadership_transfer: true,
    };
    c.node_mut(1).step(env(3, 1, rv));
    assert_eq!(c.node(1).hard_state().voted_for, None);
}

/// Thesis §3.10 (choosing the transfer target): the leader names the voter with the highest match
/// index among those heard from within an election timeout, the lowest id among equals. The
/// tie-break and the recency filter are this implementation's rules: a silent target would only
/// make the transfer time out.
#[test]
fn most_caught_up_voter_prefers_the_highest_match_index() {
    let mut c = Cluster::new(&[1, 2, 3], |_| {});
    c.elect(1);
    c.tick_all(2);
    c.cut.insert((1, 2));
    c.propose(1, b"x");
    c.tick_all(1);
    assert_eq!(c.node(1).most_caught_up_voter(), Some(3));
    assert_eq!(
        c.node(3).most_caught_up_voter(),
        None,
        "only a leader knows"
    );
    c.cut.clear();
    c.tick_all(4);
    assert_eq!(
        c.node(1).most_caught_up_voter(),
        Some(2),
        "equally caught up: the lowest id"
    );
    // Node 2 goes silent; node 3 is as caught up but is the one still heard from.
    c.isolate(2);
    c.tick_all(25);
    assert_eq!(c.leader(), Some(1));
    assert_eq!(c.node(1).most_caught_up_voter(), Some(3));
}

/// Thesis §3.10 with §4.2.1: a learner is never a transfer target (hashicorp/raft#398); told to
/// campaign it could only disrupt, never win, and a transfer to it is refused.
#[test]
fn most_caught_up_voter_is_never_a_learner() {
    // hashicorp/raft#398: a learner told to campaign would disrupt, never win.
    let mut c = Cluster::new(&[1, 2, 3], |_| {});
    c.elect(1);
    c.tick_all(2);
    let learner = RaftCore::new(
        test_config(4),
        MemStorage::new(),
        HardState::default(),
        Membership::default(),
    );
    c.add(4, learner);
    c.node_mut(1)
        .propose_membership_change(add(4, false))
        .unwrap();
    c.settle();
    c.tick_all(4);
    c.cut.insert((1, 2));
    c.cut.insert((1, 3));
    c.propose(1, b"x");
    c.tick_all(1);
    assert_eq!(c.node(1).most_caught_up_voter(), Some(2));
    assert!(c.node_mut(1).transfer_leadership(4).is_err());
}

/// A membership entry whose payload does not decode, as a buggy or hostile peer could send.
fn undecodable_membership_entry(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        kind: EntryKind::Membership,
        payload: Bytes::from_static(&[0xff, 0xff]),
    }
}

/// Thesis §4.1 (a configuration takes effect when appended) and the door of validate.rs: a
/// membership entry that does not decode cannot have come from a correct leader's encoder, so
/// the whole AppendEntries is dropped and counted; nothing of it reaches the log, where the
/// configuration it claims to carry would be lost.
#[test]
fn undecodable_membership_entry_from_a_peer_is_refused_at_the_door() {
    let mut core = core_with(2, &[1, 2, 3], &[1], 1, |_| {});
    let ae = Message::AppendEntries {
        term: 1,
        prev_log_index: 1,
        prev_log_term: 1,
        entries: vec![ent(2, 1), undecodable_membership_entry(3, 1)],
        leader_commit: 0,
        read_ctx: 0,
    };
    core.step(env(1, 2, ae));
    let rd = take(&mut core);
    assert!(rd.entries.is_empty(), "appended: {:?}", rd.entries);
    assert_eq!(core.storage().last_index(), 1);
    assert_eq!(core.dropped_messages().total(), 1);
}

/// Implementation invariant: every membership entry in the log came from a leader's own encoder
/// and, for a follower, passed the door; the WAL's CRC guards it on disk. One that does not
/// decode is a broken invariant: the core stops with the entry's index, term and size rather
/// than run on without the configuration it carried (thesis §4.1).
#[test]
#[should_panic(expected = "membership entry 2 (term 1, 2 bytes) does not decode")]
fn undecodable_membership_entry_in_the_log_is_a_broken_invariant() {
    let mut storage = storage_with(&[1]);
    storage.append(&[undecodable_membership_entry(2, 1)]);
    let hard_state = HardState {
        term: 1,
        voted_for: None,
    };
    RaftCore::new(test_config(2), storage, hard_state, voters(&[1, 2, 3]));
}
