//! Leader election (Raft §5.2, §5.4.1), PreVote (thesis §9.6), CheckQuorum and the
//! leader lease against disruptive servers (thesis §6.2, §4.2.3).

use super::*;

/// Raft §5.1–§5.2: a candidate that receives AppendEntries from a leader of a higher term adopts
/// that term, clears its vote and returns to follower. Its answer waits for the new term to be
/// durable (Figure 2: persistent state is updated on stable storage before responding to RPCs).
#[test]
fn candidate_steps_down_on_higher_term() {
    let mut core = core_with(1, &[1, 2, 3], &[], 0, |c| c.pre_vote = false);
    tick_until(&mut core, Role::Candidate);
    assert_eq!(core.status().term, 1);
    take(&mut core);
    let ae = Message::AppendEntries {
        term: 5,
        prev_log_index: 0,
        prev_log_term: 0,
        entries: vec![],
        leader_commit: 0,
        read_ctx: 0,
    };
    core.step(env(2, 1, ae));
    let st = core.status();
    assert_eq!(
        (st.role, st.term, st.leader_id),
        (Role::Follower, 5, Some(2))
    );
    let rd = take(&mut core);
    assert_eq!(
        rd.hard_state,
        Some(HardState {
            term: 5,
            voted_for: None
        })
    );
    assert_eq!(
        rd.persisted_messages,
        vec![env(1, 2, append_response(5, 0))]
    );
}

/// Raft §5.2 and Figure 2, thesis §3.8: a candidate increments its term and votes for itself, and
/// that vote is durable before any RequestVote leaves, so a restart cannot make it vote for another
/// server in the same term.
#[test]
fn candidate_persists_own_vote_before_requesting_votes() {
    let mut core = core_with(1, &[1, 2, 3], &[1], 1, |c| c.pre_vote = false);
    tick_until(&mut core, Role::Candidate);
    let rd = take(&mut core);
    assert_eq!(
        rd.hard_state,
        Some(HardState {
            term: 2,
            voted_for: Some(1)
        })
    );
    assert!(rd.messages.is_empty());
    let rv = |to| {
        env(
            1,
            to,
            Message::RequestVote {
                term: 2,
                last_log_index: 1,
                last_log_term: 1,
                leadership_transfer: false,
            },
        )
    };
    assert_eq!(rd.persisted_messages, vec![rv(2), rv(3)]);
}

/// Raft Figure 2 (persist before responding to RPCs), thesis §3.8: a granted vote goes out only
/// once the vote is durable; else a crash and restart could grant a second vote in the term and
/// elect two leaders (Election Safety, §5.2).
#[test]
fn vote_response_waits_for_persisted_vote() {
    let mut core = core_with(2, &[1, 2, 3], &[1], 1, |_| {});
    let rv = Message::RequestVote {
        term: 2,
        last_log_index: 1,
        last_log_term: 1,
        leadership_transfer: false,
    };
    core.step(env(1, 2, rv));
    let rd = take(&mut core);
    assert_eq!(
        rd.hard_state,
        Some(HardState {
            term: 2,
            voted_for: Some(1)
        })
    );
    assert!(rd.messages.is_empty());
    let granted = Message::RequestVoteResponse {
        term: 2,
        granted: true,
    };
    assert_eq!(rd.persisted_messages, vec![env(2, 1, granted)]);
}

/// Planted bug `VoteBeforePersist`, breaking Figure 2's persist-before-respond rule for votes
/// (thesis §3.8): the grant comes out in `Ready::messages`, which leave before the write is
/// durable. Shows the plant takes effect, so the simulator's `planted_vote_before_persist` has a
/// real bug to find.
#[test]
fn planted_vote_before_persist_answers_in_messages() {
    let mut core = core_with(2, &[1, 2, 3], &[], 0, |c| {
        c.planted_bug = Some(PlantedBug::VoteBeforePersist)
    });
    let rv = Message::RequestVote {
        term: 1,
        last_log_index: 0,
        last_log_term: 0,
        leadership_transfer: false,
    };
    core.step(env(1, 2, rv));
    let rd = take(&mut core);
    assert!(rd.persisted_messages.is_empty());
    let granted = Message::RequestVoteResponse {
        term: 1,
        granted: true,
    };
    assert_eq!(rd.messages, vec![env(2, 1, granted)]);
}

/// Raft §5.4.1 (election restriction): a voter refuses a candidate whose log is less up-to-date
/// than its own: the candidate's last term 1 is behind the voter's 2, however long its log. The
/// higher term is still adopted (§5.1), durably and without a vote.
#[test]
fn voter_rejects_candidate_with_stale_log() {
    let mut core = core_with(2, &[1, 2, 3], &[1, 2], 2, |_| {});
    let rv = Message::RequestVote {
        term: 3,
        last_log_index: 5,
        last_log_term: 1,
        leadership_transfer: false,
    };
    core.step(env(1, 2, rv));
    let rd = take(&mut core);
    assert_eq!(
        rd.hard_state,
        Some(HardState {
            term: 3,
            voted_for: None
        })
    );
    let refused = Message::RequestVoteResponse {
        term: 3,
        granted: false,
    };
    assert_eq!(rd.persisted_messages, vec![env(2, 1, refused)]);
}

/// Planted bug `VoteWithoutLogCheck`, removing Raft §5.4.1's up-to-date check: the stale candidate
/// that `voter_rejects_candidate_with_stale_log` refuses gets the vote. Shows the plant takes
/// effect, so the simulator's `planted_vote_without_log_check` has a real bug to find.
#[test]
fn planted_vote_without_log_check_grants_stale_candidate() {
    let mut core = core_with(2, &[1, 2, 3], &[1, 2], 2, |c| {
        c.planted_bug = Some(PlantedBug::VoteWithoutLogCheck)
    });
    let rv = Message::RequestVote {
        term: 3,
        last_log_index: 1,
        last_log_term: 1,
        leadership_transfer: false,
    };
    core.step(env(1, 2, rv));
    let rd = take(&mut core);
    let granted = Message::RequestVoteResponse {
        term: 3,
        granted: true,
    };
    assert_eq!(rd.persisted_messages, vec![env(2, 1, granted)]);
}

/// Raft Figure 2, rules for followers (§5.2): only AppendEntries from the current leader or a
/// granted vote resets the election timer. A refused RequestVote (stale log, §5.4.1) leaves it
/// running, else a candidate that cannot win would keep a server that could from timing out.
#[test]
fn refused_vote_request_does_not_reset_election_timer() {
    let mut core = core_with(2, &[1, 2, 3], &[1, 2], 2, |c| c.pre_vote = false);
    for _ in 0..5 {
        core.tick();
    }
    let timeout = core.randomized_election_timeout;
    let rv = Message::RequestVote {
        term: 3,
        last_log_index: 1,
        last_log_term: 1,
        leadership_transfer: false,
    };
    core.step(env(1, 2, rv));
    assert_eq!(core.status().term, 3);
    assert_eq!(
        (core.election_elapsed, core.randomized_election_timeout),
        (5, timeout),
        "Raft Figure 2: only a granted vote or the leader resets the timer"
    );
}

/// Raft §5.2: a server votes for at most one candidate per term, first come first served; this is
/// what gives Election Safety (at most one leader per term, Figure 3).
#[test]
fn voter_grants_only_one_candidate_per_term() {
    let mut core = core_with(3, &[1, 2, 3], &[], 0, |_| {});
    let rv = Message::RequestVote {
        term: 1,
        last_log_index: 0,
        last_log_term: 0,
        leadership_transfer: false,
    };
    core.step(env(1, 3, rv.clone()));
    core.step(env(2, 3, rv));
    let rd = take(&mut core);
    let answers: Vec<bool> = rd
        .persisted_messages
        .iter()
        .map(|m| {
            matches!(
                m.message,
                Message::RequestVoteResponse { granted: true, .. }
            )
        })
        .collect();
    assert_eq!(answers, vec![true, false]);
}

/// Raft §5.2 and §5.3 end to end: from a cold start three servers elect one leader by timeouts, and
/// an entry it proposes commits and is applied on every server.
#[test]
fn cluster_elects_one_leader_and_replicates() {
    let mut c = Cluster::new(&[1, 2, 3], |_| {});
    c.tick_all(40);
    let leader = c.leader().expect("a leader");
    let (index, _) = c.propose(leader, b"x");
    c.tick_all(3);
    for id in [1, 2, 3] {
        assert_eq!(
            c.applied_payloads(id),
            vec![Bytes::from_static(b"x")],
            "node {id}"
        );
        assert_eq!(c.node(id).status().commit_index, index);
    }
}

/// Thesis §9.6 (PreVote): a pre-candidate asks with the term it would use but changes neither its
/// term nor its vote, so nothing waits for persistence and its requests go out at once. Only once a
/// majority would vote for it does it become a candidate and raise its term.
#[test]
fn prevote_does_not_change_term_or_vote() {
    let mut core = core_with(1, &[1, 2, 3], &[1], 1, |_| {});
    tick_until(&mut core, Role::PreCandidate);
    let rd = take(&mut core);
    assert_eq!(rd.hard_state, None);
    let pv = |to| {
        env(
            1,
            to,
            Message::PreVote {
                term: 2,
                last_log_index: 1,
                last_log_term: 1,
            },
        )
    };
    assert_eq!(rd.messages, vec![pv(2), pv(3)]);
    assert!(rd.persisted_messages.is_empty());
    core.step(env(
        2,
        1,
        Message::PreVoteResponse {
            term: 2,
            granted: true,
        },
    ));
    assert_eq!(core.status().role, Role::Candidate);
    assert_eq!(core.status().term, 2);
}

/// Thesis §9.6: a server partitioned away keeps failing its pre-votes, so its term does not grow;
/// when the partition heals it rejoins as a follower without deposing the stable leader or raising
/// the cluster's term.
#[test]
fn prevote_does_not_disrupt_stable_leader() {
    let mut c = Cluster::new(&[1, 2, 3], |_| {});
    c.elect(1);
    let term = c.node(1).status().term;
    c.isolate(3);
    for _ in 0..200 {
        c.node_mut(3).tick();
        c.settle();
    }
    assert_eq!(
        c.node(3).status().term,
        term,
        "pre-votes must not raise the term"
    );
    c.heal();
    c.tick_all(50);
    assert_eq!(c.leader(), Some(1));
    assert_eq!(c.node(1).status().term, term);
    assert_eq!(c.node(3).status().leader_id, Some(1));
}

/// Thesis §4.2.3: a server that heard from the current leader within the minimum election timeout
/// neither updates its term nor grants its vote on a RequestVote. The exception is a leadership
/// transfer's flagged request (thesis §3.10), which must be heard.
#[test]
fn follower_ignores_votes_within_lease_unless_transfer() {
    let mut c = Cluster::new(&[1, 2, 3], |_| {});
    c.elect(1);
    let term = c.node(1).status().term;
    let rv = |transfer| Message::RequestVote {
        term: term + 1,
        last_log_index: 100,
        last_log_term: term,
        leadership_transfer: transfer,
    };
    c.node_mut(2).step(env(3, 2, rv(false)));
    assert_eq!(c.node(2).status().term, term);
    assert!(!c.node(2).has_ready());
    c.node_mut(2).step(env(3, 2, rv(true)));
    assert_eq!(c.node(2).status().term, term + 1);
    assert_eq!(c.node(2).hard_state().voted_for, Some(3));
}

/// Thesis §4.2.3, the other side, without CheckQuorum: a leader that no longer hears from a quorum
/// holds no lease, so a candidate's higher term still deposes it (Raft §5.1); else a leader cut off
/// behind a one-way partition would keep the cluster from electing another.
#[test]
fn leader_without_quorum_contact_yields_to_higher_term_vote() {
    let mut c = Cluster::new(&[1, 2, 3], |cfg| {
        cfg.pre_vote = false;
        cfg.check_quorum = false;
    });
    c.elect(1);
    let term = c.node(1).status().term;
    let rv = Message::RequestVote {
        term: term + 1,
        last_log_index: 100,
        last_log_term: term,
        leadership_transfer: false,
    };
    c.node_mut(1).step(env(2, 1, rv.clone()));
    assert_eq!(c.node(1).status().role, Role::Leader, "within its lease");
    c.isolate(1);
    for _ in 0..20 {
        c.node_mut(1).tick();
        c.settle();
    }
    assert_eq!(c.node(1).status().role, Role::Leader, "no CheckQuorum");
    c.node_mut(1).step(env(2, 1, rv));
    assert_eq!(c.node(1).status().role, Role::Follower);
    assert_eq!(c.node(1).status().term, term + 1);
}

/// Thesis §6.2 (CheckQuorum): a leader that goes a whole election timeout (20 ticks here) without
/// hearing from a quorum steps down, so clients stop waiting on it and look for the real leader. At
/// 19 ticks it still leads.
#[test]
fn check_quorum_leader_steps_down() {
    let mut c = Cluster::new(&[1, 2, 3], |_| {});
    c.elect(1);
    c.isolate(1);
    for _ in 0..19 {
        c.node_mut(1).tick();
    }
    assert_eq!(c.node(1).status().role, Role::Leader);
    for _ in 0..2 {
        c.node_mut(1).tick();
    }
    assert_eq!(c.node(1).status().role, Role::Follower);
}

/// Thesis §6.4.1 with §4.2.3: a leader's lease rests on every voter that acknowledged it
/// refusing votes for a minimum election timeout afterwards. A voter that crashes and
/// restarts has forgotten whom it heard from, so it must assume it is still inside such a
/// lease for a minimum election timeout from its start; else a quick restart lets another
/// candidate win while the old leader still serves lease reads (simulator seed 6565037337:
/// a leader removing a member held its lease on the one other voter, which restarted and
/// voted for the member being removed at once).
#[test]
fn restarted_voter_ignores_votes_for_a_minimum_election_timeout() {
    let mut c = Cluster::new(&[1, 2, 3], |_| {});
    c.elect(1);
    let term = c.node(1).status().term;
    c.restart(2, voters(&[1, 2, 3]));
    let vote = Message::RequestVote {
        term: term + 1,
        last_log_index: 100,
        last_log_term: term,
        leadership_transfer: false,
    };
    let min = test_config(2).election_timeout_ticks_min;
    for _ in 1..min {
        c.node_mut(2).step(env(3, 2, vote.clone()));
        assert_eq!(
            c.node(2).status().term,
            term,
            "voted inside the lease it may have given"
        );
        c.node_mut(2).tick();
    }
    c.node_mut(2).tick();
    c.node_mut(2).step(env(3, 2, vote));
    assert_eq!(c.node(2).hard_state().voted_for, Some(3));
}
