//! `GET /metrics`: the node's counters and gauges in the Prometheus text format.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use storage::Membership;

use super::ApiState;
use crate::node::{MemberReplication, ReplicationReport};

/// `GET /metrics` in the Prometheus text format.
pub async fn metrics(State(state): State<Arc<ApiState>>) -> Response {
    let report = state.node.metrics();
    let m = &report.counters;
    let t = report.transport;
    let segments = report.wal_segments;
    let mut out = String::new();
    let mut counter = |name: &str, help: &str, value: u64| {
        let _ = writeln!(
            out,
            "# HELP raftlog_{name} {help}\n# TYPE raftlog_{name} counter\nraftlog_{name} {value}"
        );
    };
    counter(
        "raft_messages_dropped_total",
        "Peer messages the Raft core dropped at its door as malformed or hostile (the node's log names each reason, at most once a second).",
        m.raft_messages_dropped.get(),
    );
    counter(
        "proposals_total",
        "Client writes proposed to the Raft log.",
        m.proposals.get(),
    );
    counter(
        "proposals_refused_total",
        "Proposals refused (not leader, back-pressure).",
        m.proposals_refused.get(),
    );
    counter(
        "writes_overloaded_total",
        "Client writes answered 503 overloaded (write budget, request queue, uncommitted bounds); nothing was proposed.",
        m.writes_overloaded.get(),
    );
    counter(
        "entries_applied_total",
        "Entries applied to the state machine.",
        m.entries_applied.get(),
    );
    counter(
        "wal_appends_total",
        "WAL appends (one fdatasync each).",
        m.wal_appends.get(),
    );
    counter(
        "wal_entries_total",
        "Entries written to the WAL.",
        m.wal_entries.get(),
    );
    counter(
        "wal_bytes_total",
        "Entry bytes written to the WAL.",
        m.wal_bytes.get(),
    );
    counter(
        "wal_append_microseconds_total",
        "Time spent in WAL appends.",
        m.wal_append_micros.get(),
    );
    counter(
        "wal_segments_new_total",
        "WAL segments started in new (zero-filled or fallocated) files.",
        segments.new_files,
    );
    counter(
        "wal_segments_recycled_total",
        "WAL segments started in files freed by compaction (no new file written).",
        segments.recycled,
    );
    counter(
        "snapshots_taken_total",
        "Snapshots of the state machine taken locally.",
        m.snapshots_taken.get(),
    );
    counter(
        "snapshot_failures_total",
        "Attempts to take a snapshot that failed (retried with backoff; the node's log names each error).",
        m.snapshot_failures.get(),
    );
    counter(
        "snapshot_bytes_written_total",
        "Snapshot bytes written locally.",
        m.snapshot_bytes_written.get(),
    );
    counter(
        "snapshot_milliseconds_total",
        "Time spent writing snapshots.",
        m.snapshot_millis.get(),
    );
    counter(
        "snapshots_installed_total",
        "Snapshots received from a leader and installed.",
        m.snapshots_installed.get(),
    );
    counter(
        "snapshots_sent_total",
        "Snapshots streamed completely to followers.",
        m.snapshots_sent.get(),
    );
    counter(
        "snapshot_bytes_sent_total",
        "Snapshot bytes streamed to followers.",
        m.snapshot_bytes_sent.get(),
    );
    counter(
        "snapshot_bytes_received_total",
        "Snapshot bytes received from a leader.",
        m.snapshot_bytes_received.get(),
    );
    counter(
        "reads_total",
        "Linearizable and lease reads served.",
        m.reads.get(),
    );
    counter(
        "elections_total",
        "Elections started by this node.",
        m.elections.get(),
    );
    counter(
        "leader_transfers_started_total",
        "Leadership transfers this node started as leader.",
        m.transfers_started.get(),
    );
    counter(
        "leader_transfers_succeeded_total",
        "Leadership transfers that ended with the target leading.",
        m.transfers_succeeded.get(),
    );
    counter(
        "leader_transfers_failed_total",
        "Leadership transfers abandoned after an election timeout or without an outcome.",
        m.transfers_failed.get(),
    );
    counter(
        "transport_frames_sent_total",
        "Peer frames sent.",
        t.frames_sent,
    );
    counter(
        "transport_frames_received_total",
        "Peer frames received.",
        t.frames_received,
    );
    counter(
        "transport_bytes_sent_total",
        "Peer bytes sent.",
        t.sent_bytes,
    );
    counter(
        "transport_bytes_received_total",
        "Peer bytes received.",
        t.received_bytes,
    );
    counter(
        "transport_dropped_total",
        "Peer messages dropped (full queue, unknown or disconnected peer, failed write, oversize).",
        t.dropped_queue_full
            + t.dropped_unknown_peer
            + t.dropped_disconnected
            + t.dropped_write_failed
            + t.dropped_oversize,
    );
    counter(
        "transport_snapshot_chunks_dropped_total",
        "InstallSnapshot chunks dropped.",
        t.dropped_snapshot_chunks,
    );
    counter(
        "transport_connect_errors_total",
        "Failed dials to peers.",
        t.connect_errors,
    );
    counter(
        "transport_garbage_frames_total",
        "Frames refused as garbage.",
        t.garbage_frames,
    );
    counter(
        "transport_handshakes_refused_total",
        "Peer handshakes refused (wrong cluster or unknown node).",
        t.handshakes_refused,
    );
    counter(
        "transport_inbound_replaced_total",
        "Inbound peer connections closed because a newer one from the same peer arrived.",
        t.inbound_replaced,
    );
    counter(
        "transport_inbound_idle_closed_total",
        "Inbound peer connections closed after the idle timeout.",
        t.inbound_idle_closed,
    );
    counter(
        "membership_changes_total",
        "Membership changes this node proposed as leader (promotions included).",
        m.membership_changes.get(),
    );
    if let Ok(Some(report)) = state.node.replication().await {
        membership_gauges(&mut out, &state.node.membership(), &report);
    }
    let _ = writeln!(
        out,
        "# HELP raftlog_snapshot_last_bytes Size of the last snapshot taken.\n# TYPE raftlog_snapshot_last_bytes gauge\nraftlog_snapshot_last_bytes {}",
        m.snapshot_last_bytes.get()
    );
    // Issue 12, diskfull.
    let space = report.space;
    let _ = writeln!(
        out,
        "# HELP raftlog_storage_no_space 1 while writes are refused because the disk is full or the storage quota is reached.\n# TYPE raftlog_storage_no_space gauge\nraftlog_storage_no_space {}",
        u8::from(space.no_space)
    );
    let _ = writeln!(
        out,
        "# HELP raftlog_storage_free_bytes Bytes free on the filesystem of the data directory.\n# TYPE raftlog_storage_free_bytes gauge\nraftlog_storage_free_bytes {}",
        space.free_bytes
    );
    if let Some(quota) = space.quota_bytes {
        let _ = writeln!(
            out,
            "# HELP raftlog_storage_used_bytes Bytes the data directory occupies (checked against storage_quota_bytes).\n# TYPE raftlog_storage_used_bytes gauge\nraftlog_storage_used_bytes {}\n# HELP raftlog_storage_quota_bytes storage_quota_bytes.\n# TYPE raftlog_storage_quota_bytes gauge\nraftlog_storage_quota_bytes {quota}",
            space.used_bytes
        );
    }
    let _ = writeln!(
        out,
        "# HELP raftlog_applied_index Highest applied log index.\n# TYPE raftlog_applied_index gauge\nraftlog_applied_index {}",
        report.applied_index
    );
    ([("content-type", "text/plain; version=0.0.4")], out).into_response()
}

/// Reads one figure of a member's replication.
type MemberFigure = fn(&MemberReplication) -> u64;

/// Per-member gauges, as the leader sees them (the same figures as `/v1/status`).
fn membership_gauges(out: &mut String, membership: &Membership, report: &ReplicationReport) {
    let voters = membership.voters().count();
    let _ = writeln!(
        out,
        "# HELP raftlog_voters Voters in the configuration.\n# TYPE raftlog_voters gauge\nraftlog_voters {voters}"
    );
    let _ = writeln!(
        out,
        "# HELP raftlog_learners Learners (non-voters) in the configuration.\n# TYPE raftlog_learners gauge\nraftlog_learners {}",
        membership.members.len() - voters
    );
    let _ = writeln!(
        out,
        "# HELP raftlog_failure_tolerance How many more voters may fail before quorum is lost.\n# TYPE raftlog_failure_tolerance gauge\nraftlog_failure_tolerance {}",
        report.failure_tolerance
    );
    let families: [(&str, &str, MemberFigure); 3] = [
        (
            "member_match_index",
            "Highest log index known durable on the member.",
            |r| r.match_index,
        ),
        (
            "member_lag_entries",
            "Entries the member is behind the leader.",
            |r| r.lag,
        ),
        (
            "member_last_contact_ms",
            "Milliseconds since the member last answered the leader.",
            |r| r.last_contact_ms,
        ),
    ];
    for (name, help, value) in families {
        let _ = writeln!(
            out,
            "# HELP raftlog_{name} {help}\n# TYPE raftlog_{name} gauge"
        );
        for r in &report.members {
            let role = if membership.is_voter(r.id) {
                "voter"
            } else {
                "learner"
            };
            let _ = writeln!(
                out,
                "raftlog_{name}{{id=\"{}\",role=\"{role}\"}} {}",
                r.id,
                value(r)
            );
        }
    }
}
