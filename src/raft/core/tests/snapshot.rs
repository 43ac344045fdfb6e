//! Log compaction and InstallSnapshot (Raft §7, thesis §5), and the order in which a
//! received snapshot becomes durable, installed and acknowledged.

use super::*;

/// Raft §7 (InstallSnapshot, Figure 13), thesis §5.1: a follower that needs entries the leader has
/// compacted away receives the snapshot instead, in `snapshot_chunk_bytes` chunks at offsets 0, 4
/// and 8, then the log after it, and applies what follows.
#[test]
fn lagging_follower_catches_up_by_snapshot_in_chunks() {
    let mut c = Cluster::new(&[1, 2, 3], |cfg| cfg.snapshot_chunk_bytes = 4);
    c.elect(1);
    c.isolate(3);
    for _ in 0..10 {
        c.propose(1, b"v");
    }
    let applied = c.applied_index[&1];
    let meta = c.snapshot(1, Bytes::from_static(b"0123456789"), applied);
    assert!(c.node(1).storage().first_index() > 2);
    c.heal();
    c.tick_all(6);
    let chunks: Vec<u64> = c
        .sent
        .iter()
        .filter_map(|m| match &m.message {
            Message::InstallSnapshot { offset, .. } if m.to == 3 => Some(*offset),
            _ => None,
        })
        .collect();
    assert_eq!(chunks, vec![0, 4, 8]);
    assert_eq!(c.node(3).storage().snapshot_meta(), meta);
    assert_eq!(
        c.node(3).storage().snapshot_data(),
        &Bytes::from_static(b"0123456789")
    );
    c.propose(1, b"after");
    c.tick_all(2);
    assert_eq!(c.applied_index[&3], c.applied_index[&1]);
    assert_eq!(c.applied_payloads(3), vec![Bytes::from_static(b"after")]);
}

/// Raft §7, Figure 13 receiver rules 2–4 (a chunk is written at its offset, a new file at offset
/// 0): this implementation accepts chunks only in order. A chunk past the expected offset is
/// refused naming the offset expected (2) for the leader to resume from, and the last chunk is
/// still not installed before it is durable (issue 11, item 3).
#[test]
fn follower_rejects_snapshot_chunk_out_of_order() {
    let mut core = core_with(2, &[1, 2, 3], &[], 0, |_| {});
    let meta = SnapshotMeta {
        last_index: 5,
        last_term: 1,
        membership: voters(&[1, 2, 3]),
    };
    let chunk = |offset, data: &'static [u8], done| Message::InstallSnapshot {
        term: 1,
        meta: meta.clone(),
        offset,
        data: Bytes::from_static(data),
        done,
    };
    core.step(env(1, 2, chunk(0, b"ab", false)));
    let rd = take(&mut core);
    assert_eq!(rd.snapshot_chunk.as_ref().map(|c| c.offset), Some(0));
    core.step(env(1, 2, chunk(4, b"ef", true)));
    let rd = take(&mut core);
    assert!(rd.snapshot_chunk.is_none());
    let expect = Message::InstallSnapshotResponse {
        term: 1,
        snapshot_last_index: 5,
        next_offset: 2,
        success: false,
    };
    assert_eq!(rd.persisted_messages, vec![env(2, 1, expect)]);
    core.step(env(1, 2, chunk(2, b"cd", true)));
    let rd = take(&mut core);
    assert!(rd.snapshot_chunk.unwrap().done);
    // Installed only once the driver reports it durable (issue 11, item 3).
    assert_eq!(rd.commit_index, 0);
    assert!(rd.committed_entries.is_empty());
}

/// Raft §7, thesis §5.1: a snapshot covering less than the follower has already committed (2 <
/// 3) tells it nothing new; it is ignored and the follower answers with its commit index as
/// matched, so the leader resumes sending entries.
#[test]
fn stale_snapshot_is_ignored() {
    let mut core = core_with(2, &[1, 2, 3], &[1, 1, 1], 1, |_| {});
    let ae = Message::AppendEntries {
        term: 1,
        prev_log_index: 3,
        prev_log_term: 1,
        entries: vec![],
        leader_commit: 3,
        read_ctx: 0,
    };
    core.step(env(1, 2, ae));
    take(&mut core);
    let snap = Message::InstallSnapshot {
        term: 1,
        meta: SnapshotMeta {
            last_index: 2,
            last_term: 1,
            membership: voters(&[1, 2, 3]),
        },
        offset: 0,
        data: Bytes::from_static(b"x"),
        done: true,
    };
    core.step(env(1, 2, snap));
    let rd = take(&mut core);
    assert!(rd.snapshot_chunk.is_none());
    assert_eq!(
        rd.persisted_messages,
        vec![env(2, 1, append_response(1, 3))]
    );
}

/// Raft §7, Figure 13 receiver rule 6: when the log already holds the snapshot's last entry (same
/// index and term), the entries are retained and no snapshot is installed; the snapshot still shows
/// entries up to 2 are committed, so the commit index advances and they are applied.
#[test]
fn snapshot_the_log_already_holds_only_advances_commit() {
    let mut core = core_with(2, &[1, 2, 3], &[1, 1, 1], 1, |_| {});
    let snap = Message::InstallSnapshot {
        term: 1,
        meta: SnapshotMeta {
            last_index: 2,
            last_term: 1,
            membership: voters(&[1, 2, 3]),
        },
        offset: 0,
        data: Bytes::from_static(b"x"),
        done: true,
    };
    core.step(env(1, 2, snap));
    let rd = take(&mut core);
    assert!(rd.snapshot_chunk.is_none());
    assert_eq!(rd.commit_index, 2);
    assert_eq!(rd.committed_entries, vec![ent(1, 1), ent(2, 1)]);
    assert_eq!(
        rd.persisted_messages,
        vec![env(2, 1, append_response(1, 2))]
    );
}

fn follower() -> RaftCore<MemStorage> {
    let hs = HardState {
        term: 1,
        voted_for: None,
    };
    RaftCore::new(test_config(2), MemStorage::new(), hs, voters(&[1, 2]))
}

fn meta() -> SnapshotMeta {
    SnapshotMeta {
        last_index: 5,
        last_term: 1,
        membership: voters(&[1, 2]),
    }
}

fn last_chunk() -> Envelope {
    Envelope {
        from: 1,
        to: 2,
        message: Message::InstallSnapshot {
            term: 1,
            meta: meta(),
            offset: 0,
            data: Bytes::from_static(b"abc"),
            done: true,
        },
    }
}

fn snapshot_responses(rd: &Ready) -> Vec<Message> {
    rd.messages
        .iter()
        .chain(&rd.persisted_messages)
        .filter(|e| matches!(e.message, Message::InstallSnapshotResponse { .. }))
        .map(|e| e.message.clone())
        .collect()
}

/// Takes the Ready with the last chunk: nothing is installed or answered yet.
fn receive_last_chunk(core: &mut RaftCore<MemStorage>) -> SnapshotChunk {
    core.step(last_chunk());
    let rd = core.take_ready();
    assert!(
        snapshot_responses(&rd).is_empty(),
        "answered before durable"
    );
    assert_eq!(core.status().commit_index, 0, "restored before durable");
    assert_eq!(core.status().snapshot_index, 0);
    rd.snapshot_chunk.expect("the chunk is handed out")
}

/// Implementation rule carrying Raft Figure 2's persist-before-respond over to InstallSnapshot (§7,
/// Figure 13).
///
/// Issue 11, item 3: the snapshot replaces the log, and the leader hears success, only
/// once the driver reports it durable and verified.
#[test]
fn snapshot_is_installed_only_after_the_driver_reports_it_durable() {
    let mut core = follower();
    let chunk = receive_last_chunk(&mut core);
    // The leader resends while the install runs: ignored.
    core.step(last_chunk());
    assert!(snapshot_responses(&core.take_ready()).is_empty());
    core.storage_mut()
        .install_snapshot(chunk.meta.clone(), chunk.data);
    core.on_snapshot_installed(chunk.meta);
    let rd = core.take_ready();
    assert_eq!(
        snapshot_responses(&rd),
        vec![Message::InstallSnapshotResponse {
            term: 1,
            snapshot_last_index: 5,
            next_offset: 3,
            success: true,
        }]
    );
    let st = core.status();
    assert_eq!(
        (st.commit_index, st.applied_index, st.snapshot_index),
        (5, 5, 5)
    );
}

/// Implementation rule (issue 11, item 3; Raft §7 leaves a failed install to the implementation).
///
/// A snapshot that failed to persist or verify is forgotten and asked for again; the
/// log and commit index are untouched.
#[test]
fn failed_snapshot_install_is_forgotten_and_requested_again() {
    let mut core = follower();
    let chunk = receive_last_chunk(&mut core);
    core.on_snapshot_failed(chunk.meta);
    let rd = core.take_ready();
    assert_eq!(
        snapshot_responses(&rd),
        vec![Message::InstallSnapshotResponse {
            term: 1,
            snapshot_last_index: 5,
            next_offset: 0,
            success: false,
        }]
    );
    let st = core.status();
    assert_eq!((st.commit_index, st.snapshot_index), (0, 0));
    // The leader's retry starts a fresh transfer.
    core.step(last_chunk());
    assert!(core.take_ready().snapshot_chunk.is_some());
}

/// Implementation rule carrying Raft Figure 2's persist-before-respond over to InstallSnapshot (§7,
/// Figure 13).
///
/// Issue 11, item 3, driven only through `step` and `take_ready` (inputs the core has
/// always had): the last chunk of a snapshot is handed to the driver to persist, but
/// the core neither restores from it nor tells the leader it is installed until the
/// driver reports it durable and verified. Before, it restored at once and answered the
/// leader's resend with success, whatever became of the file.
#[test]
fn last_snapshot_chunk_is_neither_installed_nor_acknowledged_before_durable() {
    let mut membership = Membership::default();
    for id in [1, 2] {
        membership.members.insert(
            id,
            storage::Member {
                raft_addr: String::new(),
                api_addr: String::new(),
                voter: true,
            },
        );
    }
    let hard_state = HardState {
        term: 1,
        voted_for: None,
    };
    let mut core = RaftCore::new(
        Config::new(2),
        MemStorage::new(),
        hard_state,
        membership.clone(),
    );
    let last_chunk = Envelope {
        from: 1,
        to: 2,
        message: Message::InstallSnapshot {
            term: 1,
            meta: SnapshotMeta {
                last_index: 5,
                last_term: 1,
                membership,
            },
            offset: 0,
            data: Bytes::from_static(b"abc"),
            done: true,
        },
    };
    core.step(last_chunk.clone());
    let ready = core.take_ready();
    assert!(
        ready.snapshot_chunk.is_some(),
        "the chunk goes to the driver"
    );
    assert_eq!(
        core.status().commit_index,
        0,
        "the core restored the snapshot before the driver made it durable"
    );
    // The leader resends the last chunk (its answer was lost, or the write is slow).
    core.step(last_chunk);
    let ready = core.take_ready();
    let acknowledged = ready
        .messages
        .iter()
        .chain(&ready.persisted_messages)
        .any(|e| {
            matches!(
                e.message,
                Message::InstallSnapshotResponse { success: true, .. }
            )
        });
    assert!(
        !acknowledged,
        "a resend was answered success before the snapshot was durable"
    );
}

/// Issue 17: progress of an InstallSnapshot transfer is visible on both sides while it runs.
/// The leader reports, per follower, the snapshot and the bytes sent up to the chunk in
/// flight (4, 8, then 10 of 10); the follower reports the bytes it took so far, then, with
/// the last chunk handed to the driver, that it is installing; afterwards neither reports a
/// transfer.
#[test]
fn snapshot_transfer_progress_is_reported_by_leader_and_follower() {
    let mut c = Cluster::new(&[1, 2, 3], |cfg| cfg.snapshot_chunk_bytes = 4);
    c.elect(1);
    c.isolate(3);
    for _ in 0..10 {
        c.propose(1, b"v");
    }
    let applied = c.applied_index[&1];
    let meta = c.snapshot(1, Bytes::from_static(b"0123456789"), applied);
    let sending = |c: &Cluster| {
        c.node(1)
            .member_progress()
            .iter()
            .find(|p| p.id == 3)
            .and_then(|p| p.snapshot_sending)
            .map(|s| (s.last_index, s.last_term, s.bytes_sent))
    };
    assert_eq!(
        sending(&c),
        None,
        "no transfer before the follower is heard"
    );
    c.heal();
    let mut seen_sending = Vec::new();
    let mut seen_receiving = Vec::new();
    // `settle` by hand, looking at both sides after every delivered message.
    for _ in 0..40 {
        for id in [1, 2, 3] {
            c.node_mut(id).tick();
        }
        loop {
            for id in [1, 2, 3] {
                c.process(id);
            }
            if let Some(s) = sending(&c) {
                seen_sending.push(s);
            }
            if let Some(r) = c.node(3).status().snapshot_receiving {
                seen_receiving.push((r.last_index, r.bytes_received, r.installing));
            }
            let Some(m) = c.queue.pop_front() else {
                break;
            };
            c.node_mut(m.to).step(m);
        }
    }
    seen_sending.dedup();
    seen_receiving.dedup();
    let (index, term) = (meta.last_index, meta.last_term);
    assert!(
        seen_sending
            .iter()
            .all(|&(i, t, b)| i == index && t == term && [4, 8, 10].contains(&b)),
        "leader's reports: {seen_sending:?}"
    );
    assert!(
        !seen_sending.is_empty(),
        "the leader never reported the transfer"
    );
    assert!(
        seen_receiving
            .iter()
            .all(|&(i, b, _)| i == index && [4, 8, 10].contains(&b)),
        "follower's reports: {seen_receiving:?}"
    );
    assert_eq!(c.node(3).storage().snapshot_meta(), meta);
    assert_eq!(sending(&c), None, "the transfer is over on the leader");
    assert_eq!(c.node(3).status().snapshot_receiving, None);
}

/// Issue 17: the follower's own view of a transfer, chunk by chunk: bytes taken so far,
/// then `installing` once the last chunk is handed out and until the driver reports it.
#[test]
fn follower_reports_bytes_received_then_installing() {
    let mut core = core_with(2, &[1, 2, 3], &[], 0, |_| {});
    let meta = SnapshotMeta {
        last_index: 5,
        last_term: 1,
        membership: voters(&[1, 2, 3]),
    };
    let chunk = |offset, data: &'static [u8], done| Message::InstallSnapshot {
        term: 1,
        meta: meta.clone(),
        offset,
        data: Bytes::from_static(data),
        done,
    };
    assert_eq!(core.status().snapshot_receiving, None);
    core.step(env(1, 2, chunk(0, b"abc", false)));
    take(&mut core);
    let receiving = |core: &RaftCore<MemStorage>| core.status().snapshot_receiving;
    assert_eq!(
        receiving(&core),
        Some(SnapshotReceiving {
            last_index: 5,
            bytes_received: 3,
            installing: false
        })
    );
    core.step(env(1, 2, chunk(3, b"de", true)));
    take(&mut core);
    assert_eq!(
        receiving(&core),
        Some(SnapshotReceiving {
            last_index: 5,
            bytes_received: 5,
            installing: true
        })
    );
    // A snapshot holds only committed entries: the cluster's commit is at least 5.
    assert_eq!(core.status().commit_index_heard, 5);
    core.storage_mut()
        .install_snapshot(meta.clone(), Bytes::from_static(b"abcde"));
    core.on_snapshot_installed(meta);
    assert_eq!(receiving(&core), None);
}
