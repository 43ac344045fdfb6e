//! Log replication and commitment (Raft §5.3, §5.4.2), and this driver's rules for
//! persistence, flow control and apply batching.

use super::*;

/// Raft §5.3, the AppendEntries consistency check (Figure 2, receiver rule 2): a follower whose
/// entry at `prev_log_index` has another term refuses and appends nothing. The refusal names the
/// conflicting term and the first index it holds of it (the optimization at the end of §5.3),
/// echoes `read_ctx`, and waits for the adopted term 2 to be durable.
#[test]
fn follower_rejects_append_with_mismatched_prev() {
    let mut core = core_with(2, &[1, 2, 3], &[1, 1, 1], 1, |_| {});
    let ae = Message::AppendEntries {
        term: 2,
        prev_log_index: 3,
        prev_log_term: 2,
        entries: vec![ent(4, 2)],
        leader_commit: 3,
        read_ctx: 7,
    };
    core.step(env(1, 2, ae));
    let rd = take(&mut core);
    assert!(rd.entries.is_empty());
    let reject = Message::AppendEntriesResponse {
        term: 2,
        success: false,
        match_index: 3,
        conflict_term: 1,
        conflict_index: 1,
        read_ctx: 7,
    };
    assert_eq!(rd.persisted_messages, vec![env(2, 1, reject)]);
    assert_eq!(rd.commit_index, 0);
}

/// Raft §5.3 (Figure 2, receiver rule 2, and the backtracking optimization): a follower whose log
/// ends before `prev_log_index` refuses and reports its end (`conflict_index` = last + 1, no
/// conflict term), so the leader jumps there instead of probing back one entry at a time. Same
/// term, nothing to persist: the answer goes out at once.
#[test]
fn follower_with_short_log_reports_its_end() {
    let mut core = core_with(2, &[1, 2, 3], &[1], 1, |_| {});
    let ae = Message::AppendEntries {
        term: 1,
        prev_log_index: 5,
        prev_log_term: 1,
        entries: vec![],
        leader_commit: 0,
        read_ctx: 0,
    };
    core.step(env(1, 2, ae));
    let rd = take(&mut core);
    let reject = Message::AppendEntriesResponse {
        term: 1,
        success: false,
        match_index: 1,
        conflict_term: 0,
        conflict_index: 2,
        read_ctx: 0,
    };
    // Same term, nothing to persist: the rejection goes out at once.
    assert_eq!(rd.messages, vec![env(2, 1, reject)]);
}

/// Raft §5.3, Figure 2 receiver rules 3–5: the follower deletes its conflicting entry and all that
/// follow it, appends the new one, and sets its commit index to min(leader_commit, index of last
/// new entry) = 3, not the leader's 10. Applying only entries its own disk holds is this
/// implementation's rule: the state machine never runs ahead of the log a restart recovers.
#[test]
fn follower_truncates_conflicting_suffix_and_commits_verified_prefix() {
    let mut core = core_with(2, &[1, 2, 3], &[1, 1, 1, 1], 1, |_| {});
    let ae = Message::AppendEntries {
        term: 2,
        prev_log_index: 2,
        prev_log_term: 1,
        entries: vec![ent(3, 2)],
        leader_commit: 10,
        read_ctx: 0,
    };
    core.step(env(1, 2, ae));
    let rd = take(&mut core);
    assert_eq!(rd.entries, vec![ent(3, 2)]);
    assert_eq!(rd.commit_index, 3);
    // Entry 3 is not durable yet: nothing beyond 2 is applied.
    let applied: Vec<u64> = rd.committed_entries.iter().map(|e| e.index).collect();
    assert_eq!(applied, vec![1, 2]);
    assert_eq!(
        rd.persisted_messages,
        vec![env(2, 1, append_response(2, 3))]
    );
    core.storage_mut().append(&rd.entries);
    core.on_persisted(3, 2);
    core.on_applied(2);
    let rd = take(&mut core);
    assert_eq!(rd.committed_entries, vec![ent(3, 2)]);
    assert_eq!(core.storage().last_index(), 3);
}

/// Raft §5.3's backtracking optimization (thesis §3.5): on a refusal naming a conflicting term, the
/// leader probes just past its own last entry of that term (4) rather than at the follower's first
/// index of it (3), skipping the term in one round trip.
#[test]
fn fast_backtracking_uses_conflict_term() {
    // Leader: terms [1,1,2,2,3] + its no-op of term 4 at 6. Follower: term 2 up to 7.
    let mut core = leader_by_hand(&[1, 2], &[1, 1, 2, 2, 3], 3);
    let rd = take(&mut core);
    assert!(matches!(
        rd.messages[0].message,
        Message::AppendEntries {
            prev_log_index: 5,
            prev_log_term: 3,
            ..
        }
    ));
    let reject = Message::AppendEntriesResponse {
        term: 4,
        success: false,
        match_index: 7,
        conflict_term: 2,
        conflict_index: 3,
        read_ctx: 0,
    };
    core.step(env(2, 1, reject));
    let rd = take(&mut core);
    match &rd.messages[..] {
        [Envelope {
            message:
                Message::AppendEntries {
                    prev_log_index,
                    prev_log_term,
                    ..
                },
            ..
        }] => {
            // The leader's last entry of term 2 is 4: probe right after it, not at 3.
            assert_eq!((*prev_log_index, *prev_log_term), (4, 2));
        }
        other => panic!("expected one probe, got {other:?}"),
    }
}

/// Raft §5.4.2, Figure 8: a leader never commits an entry of an earlier term by counting replicas.
/// Entry 2 (term 1) on a majority stays uncommitted until the leader's own entry 3 (term 2) is on a
/// majority, which commits both.
#[test]
fn leader_commits_only_current_term_entries_by_count() {
    // Raft §5.4.2 / Figure 8: entry 2 of term 1 on a majority is not committed by
    // counting; it commits with the leader's own entry 3.
    let mut core = leader_by_hand(&[1, 2, 3], &[1, 1], 1);
    assert_eq!(core.status().term, 2);
    take(&mut core);
    core.step(env(2, 1, append_response(2, 2)));
    assert_eq!(core.status().commit_index, 0);
    core.on_persisted(3, 2);
    assert_eq!(core.status().commit_index, 0);
    core.step(env(2, 1, append_response(2, 3)));
    assert_eq!(core.status().commit_index, 3);
}

/// Planted bug `CommitOldTermByCount`, breaking Raft §5.4.2 (Figure 8): the majority on entry 2 of
/// term 1 that `leader_commits_only_current_term_entries_by_count` refuses to count commits it
/// here. Shows the plant takes effect, so the simulator's `planted_commit_old_term_by_count` has a
/// real bug to find.
#[test]
fn planted_commit_old_term_by_count_commits_earlier_term() {
    let mut core = core_with(1, &[1, 2, 3], &[1, 1], 1, |c| {
        c.pre_vote = false;
        c.planted_bug = Some(PlantedBug::CommitOldTermByCount);
    });
    tick_until(&mut core, Role::Candidate);
    core.step(env(
        2,
        1,
        Message::RequestVoteResponse {
            term: 2,
            granted: true,
        },
    ));
    take(&mut core);
    core.step(env(2, 1, append_response(2, 2)));
    assert_eq!(core.status().commit_index, 2);
}

/// Thesis §10.2.1 (writing to the leader's disk in parallel): a new leader's no-op (Raft §8) goes
/// to the followers in `Ready::messages` while the leader is still persisting it, not after its own
/// fsync.
#[test]
fn leader_sends_appends_before_its_own_write_is_durable() {
    let mut core = leader_by_hand(&[1, 2, 3], &[], 0);
    let rd = take(&mut core);
    // The no-op goes to the followers in `messages` while the leader persists it.
    assert_eq!(rd.entries.len(), 1);
    assert_eq!(rd.entries[0].kind, EntryKind::Noop);
    let sent: Vec<NodeId> = rd.messages.iter().map(|m| m.to).collect();
    assert_eq!(sent, vec![2, 3]);
    assert!(rd.messages.iter().all(
        |m| matches!(&m.message, Message::AppendEntries { entries, .. } if entries.len() == 1)
    ));
}

/// Thesis §10.2.1, the other half: the leader counts itself toward a majority only for entries its
/// own disk holds. Two followers and an unpersisted leader are not three copies out of five; this
/// is what makes an acknowledged write fsynced on a majority.
#[test]
fn leader_counts_itself_only_up_to_persisted_index() {
    let mut core = leader_by_hand(&[1, 2, 3, 4, 5], &[], 0);
    take(&mut core);
    core.step(env(2, 1, append_response(1, 1)));
    core.step(env(3, 1, append_response(1, 1)));
    // Two followers + an unpersisted leader are not three copies.
    assert_eq!(core.status().commit_index, 0);
    core.on_persisted(1, 1);
    assert_eq!(core.status().commit_index, 1);
}

/// Raft Figure 2 (persist before responding) without stalling reads, an implementation rule of this
/// core's asynchronous persistence: a follower answers a heartbeat at once while entry 3 is still
/// being written, claiming as matched only its durable prefix (2), so the ReadIndex round it
/// carries (thesis §6.4) never waits for an fsync.
#[test]
fn heartbeat_response_does_not_wait_for_persistence() {
    let mut core = core_with(2, &[1, 2, 3], &[1, 1], 1, |_| {});
    let ae = |entries: Vec<Entry>, prev: u64, ctx| Message::AppendEntries {
        term: 1,
        prev_log_index: prev,
        prev_log_term: 1,
        entries,
        leader_commit: 2,
        read_ctx: ctx,
    };
    core.step(env(1, 2, ae(vec![ent(3, 1)], 2, 1)));
    let rd = core.take_ready();
    assert_eq!(rd.entries, vec![ent(3, 1)]);
    assert!(
        rd.messages.is_empty(),
        "acknowledging entry 3 waits for its write"
    );
    // A heartbeat while entry 3 is still being written: answered at once, claiming
    // only the durable prefix.
    core.step(env(1, 2, ae(vec![], 3, 2)));
    let rd = core.take_ready();
    let now = Message::AppendEntriesResponse {
        term: 1,
        success: true,
        match_index: 2,
        conflict_term: 0,
        conflict_index: 0,
        read_ctx: 2,
    };
    assert_eq!(rd.messages, vec![env(2, 1, now)]);
    assert!(rd.persisted_messages.is_empty());
}

/// Raft Figure 2, AppendEntries receiver rule 5, as etcd raft applies it to heartbeats: the leader
/// sends `min(commit, match)`, so a follower whose log has not been verified against the leader's
/// (§5.3 consistency check) is never told to commit entries it may hold from a deposed leader.
#[test]
fn heartbeat_carries_min_of_commit_and_match() {
    let mut core = leader_by_hand(&[1, 2, 3], &[], 0);
    take(&mut core);
    core.on_persisted(1, 1);
    core.step(env(2, 1, append_response(1, 1)));
    assert_eq!(core.status().commit_index, 1);
    take(&mut core);
    for _ in 0..2 {
        core.tick();
    }
    let rd = take(&mut core);
    let to3 = rd
        .messages
        .iter()
        .find(|m| m.to == 3)
        .expect("heartbeat to 3");
    match &to3.message {
        Message::AppendEntries {
            prev_log_index,
            leader_commit,
            entries,
            ..
        } => {
            assert!(entries.is_empty() || *prev_log_index == 0);
            assert_eq!(*leader_commit, 0, "node 3 has not verified entry 1");
        }
        m => panic!("unexpected {m:?}"),
    }
}

/// Implementation rule, not a paper rule (thesis §10.2.2's pipelining, bounded as etcd raft's
/// inflights): at most `max_inflight_msgs` unacknowledged AppendEntries of at most `max_msg_bytes`
/// each go to a replicating follower, and an acknowledgement frees one slot. Protects the leader's
/// memory and the network from a slow follower.
#[test]
fn flow_control_limits_inflight_messages() {
    let mut core = leader_by_hand(&[1, 2], &[], 0);
    take(&mut core);
    core.step(env(2, 1, append_response(1, 1)));
    take(&mut core);
    // Now replicating; window of 2 messages of at most one 100-byte entry each.
    core.config.max_inflight_msgs = 2;
    core.config.max_msg_bytes = 100;
    for _ in 0..5 {
        core.propose(Bytes::from(vec![0u8; 100])).unwrap();
    }
    let rd = take(&mut core);
    let appends: Vec<usize> = rd
        .messages
        .iter()
        .filter_map(|m| match &m.message {
            Message::AppendEntries { entries, .. } if !entries.is_empty() => Some(entries.len()),
            _ => None,
        })
        .collect();
    assert_eq!(appends, vec![1, 1]);
    core.step(env(2, 1, append_response(1, 2)));
    let rd = take(&mut core);
    assert_eq!(rd.messages.len(), 1, "one slot freed, one more message");
}

/// Raft §5.3: after a partition heals the leader backs `next_index` down to where the follower's
/// log matches and brings it up to date; the follower applies the same 55 entries in the same order
/// (State Machine Safety, §5.4.3).
#[test]
fn lagging_follower_catches_up_after_partition() {
    let mut c = Cluster::new(&[1, 2, 3], |_| {});
    c.elect(1);
    for _ in 0..5 {
        c.propose(1, b"a");
    }
    c.isolate(3);
    for _ in 0..50 {
        c.node_mut(1).propose(Bytes::from_static(b"b")).unwrap();
    }
    c.settle();
    c.heal();
    c.tick_all(10);
    assert_eq!(c.applied_payloads(3).len(), 55);
    assert_eq!(c.applied[&3], c.applied[&1]);
}

/// Raft Figure 2 (apply `log[lastApplied]` in order once committed, §5.3): nothing is applied
/// before it is durable, then each committed entry exactly once, in index order. The
/// `max_apply_bytes` budget (70 bytes: two entries) is this implementation's bound on one apply
/// batch's memory.
#[test]
fn committed_entries_are_handed_out_once_in_order_within_max_apply_bytes() {
    let mut c = Cluster::new(&[1], |cfg| cfg.max_apply_bytes = 70);
    c.elect(1);
    for _ in 0..10 {
        c.node_mut(1)
            .propose(Bytes::from_static(b"0123456789"))
            .unwrap();
    }
    let rd = c.node_mut(1).take_ready();
    assert!(rd.committed_entries.is_empty(), "nothing durable yet");
    c.node_mut(1).storage_mut().append(&rd.entries);
    c.node_mut(1).on_persisted(11, 1);
    let rd = c.node_mut(1).take_ready();
    let idx: Vec<u64> = rd.committed_entries.iter().map(|e| e.index).collect();
    assert_eq!(idx, vec![2, 3]);
    let rd = c.node_mut(1).take_ready();
    let idx: Vec<u64> = rd.committed_entries.iter().map(|e| e.index).collect();
    assert_eq!(idx, vec![4, 5]);
}

/// Issue 17: a follower far behind learns how far the cluster's commit index is even from
/// an AppendEntries it must reject (its log is too short for `prev`), and a later heartbeat
/// carrying a lower `leader_commit` (the leader sends `min(commit, match)`) does not lower
/// it: it only ever grows. `/readyz` compares it with the applied index.
#[test]
fn follower_hears_the_leaders_commit_beyond_its_own_log() {
    let mut core = core_with(2, &[1, 2, 3], &[1, 1], 1, |_| {});
    assert_eq!(core.status().commit_index_heard, 0);
    let append = |prev_log_index, leader_commit| Message::AppendEntries {
        term: 1,
        prev_log_index,
        prev_log_term: 1,
        entries: vec![],
        leader_commit,
        read_ctx: 0,
    };
    core.step(env(1, 2, append(100, 120)));
    take(&mut core);
    let status = core.status();
    assert_eq!(status.commit_index, 0, "nothing verified can be committed");
    assert_eq!(status.commit_index_heard, 120);
    core.step(env(1, 2, append(2, 2)));
    take(&mut core);
    let status = core.status();
    assert_eq!(status.commit_index, 2);
    assert_eq!(
        status.commit_index_heard, 120,
        "a lower leader_commit lowered it"
    );
}
