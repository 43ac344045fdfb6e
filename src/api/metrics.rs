//! `GET /metrics`: the node's counters, gauges and histograms in the Prometheus text format
//! (version 0.0.4), rendered by the Prometheus project's own client (`prometheus-client`),
//! which owns the types, help texts and label escaping.
//!
//! Metric names are part of the contract: dashboards and tests scrape them. A counter is
//! registered without its `_total` suffix, which the encoder appends; a help text without
//! its final period, which the registry appends.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use axum::extract::State;
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use storage::Membership;

use super::ApiState;
use crate::node::{LatencyHistogram, MemberReplication, MetricsReport, ReplicationReport};

/// Reads one counter from the node's report.
type CounterValue = fn(&MetricsReport) -> u64;

/// Every counter of `/metrics`: name (without `raftlog_` and `_total`), help, value.
const COUNTERS: &[(&str, &str, CounterValue)] = &[
    (
        "raft_messages_dropped",
        "Peer messages the Raft core dropped at its door as malformed or hostile (the node's log names each reason, at most once a second)",
        |r| r.counters.raft_messages_dropped.get(),
    ),
    (
        "proposals",
        "Client writes proposed to the Raft log",
        |r| r.counters.proposals.get(),
    ),
    (
        "proposals_refused",
        "Proposals refused (not leader, back-pressure)",
        |r| r.counters.proposals_refused.get(),
    ),
    (
        "writes_overloaded",
        "Client writes answered 503 overloaded (write budget, request queue, uncommitted bounds); nothing was proposed",
        |r| r.counters.writes_overloaded.get(),
    ),
    (
        "entries_applied",
        "Entries applied to the state machine",
        |r| r.counters.entries_applied.get(),
    ),
    (
        "wal_appends",
        "WAL appends (one fdatasync each)",
        |r| r.counters.wal_appends.get(),
    ),
    (
        "wal_entries",
        "Entries written to the WAL",
        |r| r.counters.wal_entries.get(),
    ),
    (
        "wal_bytes",
        "Entry bytes written to the WAL",
        |r| r.counters.wal_bytes.get(),
    ),
    (
        "wal_append_microseconds",
        "Time spent in WAL appends",
        |r| r.counters.wal_append_micros.get(),
    ),
    (
        "wal_segments_new",
        "WAL segments started in new (zero-filled or fallocated) files",
        |r| r.wal_segments.new_files,
    ),
    (
        "wal_segments_recycled",
        "WAL segments started in files freed by compaction (no new file written)",
        |r| r.wal_segments.recycled,
    ),
    (
        "snapshots_taken",
        "Snapshots of the state machine taken locally",
        |r| r.counters.snapshots_taken.get(),
    ),
    (
        "snapshot_failures",
        "Attempts to take a snapshot that failed (retried with backoff; the node's log names each error)",
        |r| r.counters.snapshot_failures.get(),
    ),
    (
        "snapshot_bytes_written",
        "Snapshot bytes written locally, counted as they are written",
        |r| r.counters.snapshot_bytes_written.get(),
    ),
    (
        "snapshot_milliseconds",
        "Time spent writing snapshots",
        |r| r.counters.snapshot_millis.get(),
    ),
    (
        "snapshots_installed",
        "Snapshots received from a leader and installed",
        |r| r.counters.snapshots_installed.get(),
    ),
    (
        "snapshots_sent",
        "Snapshots streamed completely to followers",
        |r| r.counters.snapshots_sent.get(),
    ),
    (
        "snapshot_bytes_sent",
        "Snapshot bytes streamed to followers",
        |r| r.counters.snapshot_bytes_sent.get(),
    ),
    (
        "snapshot_bytes_received",
        "Snapshot bytes received from a leader",
        |r| r.counters.snapshot_bytes_received.get(),
    ),
    (
        "reads",
        "Linearizable and lease reads served",
        |r| r.counters.reads.get(),
    ),
    (
        "elections",
        "Elections started by this node",
        |r| r.counters.elections.get(),
    ),
    (
        "leader_links_lost",
        "Connections to or from the leader seen to end while following it; each brings the next election forward to just past the minimum election timeout",
        |r| r.counters.leader_links_lost.get(),
    ),
    (
        "raft_loop_stalls",
        "Times the raft loop went two heartbeat intervals or more without running (a CPU-starved or blocked node); each delays heartbeats and acks",
        |r| r.counters.raft_loop_stalls.get(),
    ),
    (
        "leader_transfers_started",
        "Leadership transfers this node started as leader",
        |r| r.counters.transfers_started.get(),
    ),
    (
        "leader_transfers_succeeded",
        "Leadership transfers that ended with the target leading",
        |r| r.counters.transfers_succeeded.get(),
    ),
    (
        "leader_transfers_failed",
        "Leadership transfers abandoned after an election timeout or without an outcome",
        |r| r.counters.transfers_failed.get(),
    ),
    (
        "transport_frames_sent",
        "Peer frames sent",
        |r| r.transport.frames_sent,
    ),
    (
        "transport_frames_received",
        "Peer frames received",
        |r| r.transport.frames_received,
    ),
    (
        "transport_bytes_sent",
        "Peer bytes sent",
        |r| r.transport.sent_bytes,
    ),
    (
        "transport_bytes_received",
        "Peer bytes received",
        |r| r.transport.received_bytes,
    ),
    (
        "transport_dropped",
        "Peer messages dropped (full queue, unknown or disconnected peer, failed write, oversize)",
        |r| r.transport.dropped_queue_full + r.transport.dropped_unknown_peer + r.transport.dropped_disconnected + r.transport.dropped_write_failed + r.transport.dropped_oversize,
    ),
    (
        "transport_snapshot_chunks_dropped",
        "InstallSnapshot chunks dropped",
        |r| r.transport.dropped_snapshot_chunks,
    ),
    (
        "transport_connect_errors",
        "Failed dials to peers",
        |r| r.transport.connect_errors,
    ),
    (
        "transport_garbage_frames",
        "Frames refused as garbage",
        |r| r.transport.garbage_frames,
    ),
    (
        "transport_handshakes_refused",
        "Peer handshakes refused (wrong cluster or unknown node)",
        |r| r.transport.handshakes_refused,
    ),
    (
        "transport_inbound_replaced",
        "Inbound peer connections closed because a newer one from the same peer arrived",
        |r| r.transport.inbound_replaced,
    ),
    (
        "transport_inbound_idle_closed",
        "Inbound peer connections closed after the idle timeout",
        |r| r.transport.inbound_idle_closed,
    ),
    (
        "transport_tls_refused",
        "Inbound peer connections refused in the TLS handshake (no certificate, or not signed by the cluster CA)",
        |r| r.transport.tls_refused,
    ),
    (
        "transport_forwards_sent",
        "Client writes this node forwarded to the leader over the peer link",
        |r| r.transport.forwards_sent,
    ),
    (
        "transport_forwards_dropped_overload",
        "Client writes refused because this node had the most forwards in flight to the leader (nothing sent)",
        |r| r.forwards_dropped_overload,
    ),
    (
        "transport_forwards_dropped_lost",
        "Forwarded client writes whose answer never came (connection lost, leader changed, timeout): answered as unknown outcome",
        |r| r.forwards_dropped_lost,
    ),
    (
        "transport_forwards_undelivered",
        "Forward frames received from peers but dropped before the node handled them",
        |r| r.transport.forwards_undelivered,
    ),
    (
        "transport_forwards_served",
        "Client writes peers forwarded to this node that it proposed as the leader",
        |r| r.forwards_served,
    ),
    (
        "transport_read_index_sent",
        "Linearizable and lease reads for which this node, a follower, asked the leader for a read index over the peer link",
        |r| r.read_index_sent,
    ),
    (
        "transport_read_index_served",
        "Read index requests peers sent this node that it answered as the leader",
        |r| r.read_index_served,
    ),
    (
        "follower_reads",
        "Linearizable and lease reads this node served from its own state machine as a follower, at the leader's read index",
        |r| r.follower_reads,
    ),
    (
        "membership_changes",
        "Membership changes this node proposed as leader (promotions included)",
        |r| r.counters.membership_changes.get(),
    ),
];

/// Two labels: for a request-latency sample the route as the router matched it (bounded:
/// one per route, never the raw path) and the method; for a member its id and role.
type EndpointLabels = [(&'static str, String); 2];

/// What the API measures itself, beside the node's figures.
#[derive(Debug)]
pub struct ApiMetrics {
    /// Time from a request's arrival to its answer, by endpoint and method.
    request_seconds: Family<EndpointLabels, Histogram, fn() -> Histogram>,
    /// The family's histograms by method and route, so that timing a request builds no
    /// label strings (the family is keyed by owned labels). Bounded like the family: the
    /// routes are the router's, the methods HTTP's own (any other is counted as `other`).
    request_histograms: RwLock<HashMap<&'static str, HashMap<Box<str>, Histogram>>>,
}

impl Default for ApiMetrics {
    fn default() -> Self {
        ApiMetrics {
            request_seconds: Family::new_with_constructor(|| {
                LatencyHistogram::default().histogram()
            }),
            request_histograms: RwLock::default(),
        }
    }
}

impl ApiMetrics {
    /// Times one request to `endpoint` (the matched route pattern).
    pub(super) fn observe_request(&self, endpoint: &str, method: &Method, elapsed: Duration) {
        let method = method_label(method);
        let seconds = elapsed.as_secs_f64();
        if let Some(histogram) = self
            .request_histograms
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(method)
            .and_then(|routes| routes.get(endpoint))
        {
            histogram.observe(seconds);
            return;
        }
        let labels = [
            ("endpoint", endpoint.to_string()),
            ("method", method.to_string()),
        ];
        let histogram = self.request_seconds.get_or_create(&labels).clone();
        histogram.observe(seconds);
        self.request_histograms
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(method)
            .or_default()
            .insert(endpoint.into(), histogram);
    }
}

/// A request method as a metric label: HTTP's own methods by name, any other as `other`,
/// so that a client cannot grow the label set.
fn method_label(method: &Method) -> &'static str {
    const KNOWN: [(Method, &str); 9] = [
        (Method::GET, "GET"),
        (Method::PUT, "PUT"),
        (Method::POST, "POST"),
        (Method::DELETE, "DELETE"),
        (Method::HEAD, "HEAD"),
        (Method::OPTIONS, "OPTIONS"),
        (Method::PATCH, "PATCH"),
        (Method::CONNECT, "CONNECT"),
        (Method::TRACE, "TRACE"),
    ];
    KNOWN
        .iter()
        .find(|(known, _)| known == method)
        .map_or("other", |(_, name)| name)
}

/// `GET /metrics` in the Prometheus text format.
pub async fn metrics(State(state): State<Arc<ApiState>>) -> Response {
    let report = state.node.metrics();
    let replication = match state.node.replication().await {
        Ok(Some(report)) => Some((state.node.membership(), report)),
        _ => None,
    };
    let mut registry = registry(&report, replication.as_ref(), &state.metrics);
    super::watch::register_metrics(&state, &mut registry);
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_text::encode(&mut out, &registry);
    ([("content-type", prometheus_text::CONTENT_TYPE)], out).into_response()
}

/// One scrape's registry: the node's figures as constants, its histograms as themselves.
fn registry(
    report: &MetricsReport,
    replication: Option<&(Membership, ReplicationReport)>,
    api: &ApiMetrics,
) -> Registry {
    let mut registry = Registry::with_prefix("raftlog");
    for (name, help, value) in COUNTERS {
        registry.register(*name, *help, ConstCounter::new(value(report)));
    }
    if let Some((membership, report)) = replication {
        membership_gauges(&mut registry, membership, report);
    }
    // Issue 16: when this node's peer certificate expires (reloaded on SIGHUP).
    if let Some(not_after) = report.transport.tls_cert_not_after_unix {
        gauge(
            &mut registry,
            "tls_cert_not_after_seconds",
            "When this node's TLS certificate expires (Unix time; reloaded on SIGHUP)",
            not_after,
        );
    }
    let counters = &report.counters;
    gauge(
        &mut registry,
        "snapshot_last_bytes",
        "Size of the last snapshot taken",
        counters.snapshot_last_bytes.get(),
    );
    gauge(
        &mut registry,
        "transport_forwards_in_flight",
        "Client writes forwarded to the leader over the peer link and still awaiting its answer",
        report.forwards_in_flight,
    );
    // Issue 12, diskfull.
    let space = report.space;
    gauge(
        &mut registry,
        "storage_no_space",
        "1 while writes are refused because the disk is full or the storage quota is reached",
        u64::from(space.no_space),
    );
    gauge(
        &mut registry,
        "storage_free_bytes",
        "Bytes free on the filesystem of the data directory",
        space.free_bytes,
    );
    if let Some(quota) = space.quota_bytes {
        gauge(
            &mut registry,
            "storage_used_bytes",
            "Bytes the data directory occupies (checked against storage_quota_bytes)",
            space.used_bytes,
        );
        gauge(
            &mut registry,
            "storage_quota_bytes",
            "storage_quota_bytes",
            quota,
        );
    }
    gauge(
        &mut registry,
        "applied_index",
        "Highest applied log index",
        report.applied_index,
    );
    registry.register(
        "wal_sync_seconds",
        "Time of each WAL append: the write and its fdatasync (one per group commit)",
        counters.wal_sync_seconds.histogram(),
    );
    registry.register(
        "apply_batch_seconds",
        "Time to apply one batch of committed entries to the state machine",
        counters.apply_batch_seconds.histogram(),
    );
    registry.register(
        "api_request_seconds",
        "Time from a client request's arrival to its answer, by endpoint and method",
        api.request_seconds.clone(),
    );
    registry
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: u64) {
    registry.register(name, help, ConstGauge::new(value));
}

/// Reads one figure of a member's replication.
type MemberFigure = fn(&MemberReplication) -> u64;

/// Per-member gauges, as the leader sees them (the same figures as `/v1/status`).
fn membership_gauges(registry: &mut Registry, membership: &Membership, report: &ReplicationReport) {
    let voters = membership.voters().count();
    gauge(
        registry,
        "voters",
        "Voters in the configuration",
        voters as u64,
    );
    gauge(
        registry,
        "learners",
        "Learners (non-voters) in the configuration",
        (membership.members.len() - voters) as u64,
    );
    gauge(
        registry,
        "failure_tolerance",
        "How many more voters may fail before quorum is lost",
        report.failure_tolerance as u64,
    );
    let families: [(&str, &str, MemberFigure); 3] = [
        (
            "member_match_index",
            "Highest log index known durable on the member",
            |r| r.match_index,
        ),
        (
            "member_lag_entries",
            "Entries the member is behind the leader",
            |r| r.lag,
        ),
        (
            "member_last_contact_ms",
            "Milliseconds since the member last answered the leader",
            |r| r.last_contact_ms,
        ),
    ];
    for (name, help, value) in families {
        let family = Family::<EndpointLabels, Gauge<u64, AtomicU64>>::default();
        for r in &report.members {
            let role = if membership.is_voter(r.id) {
                "voter"
            } else {
                "learner"
            };
            let labels = [("id", r.id.to_string()), ("role", role.to_string())];
            family.get_or_create(&labels).set(value(r));
        }
        registry.register(name, help, family);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::{Metrics, SpaceReport};
    use storage::Member;

    fn report() -> MetricsReport {
        let counters = Metrics::default();
        counters.proposals.add(7);
        counters
            .wal_sync_seconds
            .observe(Duration::from_micros(120));
        MetricsReport {
            counters: Arc::new(counters),
            transport: crate::transport::TransportMetrics::default(),
            wal_segments: storage::wal::SegmentStats::default(),
            space: SpaceReport {
                no_space: true,
                free_bytes: 5,
                used_bytes: 6,
                quota_bytes: Some(9),
            },
            applied_index: 42,
            forwards_dropped_overload: 1,
            forwards_dropped_lost: 2,
            forwards_in_flight: 3,
            forwards_served: 4,
            read_index_sent: 5,
            read_index_served: 6,
            follower_reads: 7,
        }
    }

    fn render(replication: Option<&(Membership, ReplicationReport)>) -> String {
        let api = ApiMetrics::default();
        api.observe_request("/v1/kv/{*key}", &Method::PUT, Duration::from_millis(3));
        let mut out = String::new();
        prometheus_text::encode(&mut out, &registry(&report(), replication, &api)).unwrap();
        out
    }

    /// Names scraped by users and tests before the exporter moved to prometheus-client.
    const NAMES_BEFORE: &[&str] = &[
        "raftlog_raft_messages_dropped_total",
        "raftlog_proposals_total",
        "raftlog_proposals_refused_total",
        "raftlog_writes_overloaded_total",
        "raftlog_entries_applied_total",
        "raftlog_wal_appends_total",
        "raftlog_wal_entries_total",
        "raftlog_wal_bytes_total",
        "raftlog_wal_append_microseconds_total",
        "raftlog_wal_segments_new_total",
        "raftlog_wal_segments_recycled_total",
        "raftlog_snapshots_taken_total",
        "raftlog_snapshot_failures_total",
        "raftlog_snapshot_bytes_written_total",
        "raftlog_snapshot_milliseconds_total",
        "raftlog_snapshots_installed_total",
        "raftlog_snapshots_sent_total",
        "raftlog_snapshot_bytes_sent_total",
        "raftlog_snapshot_bytes_received_total",
        "raftlog_reads_total",
        "raftlog_elections_total",
        "raftlog_leader_transfers_started_total",
        "raftlog_leader_transfers_succeeded_total",
        "raftlog_leader_transfers_failed_total",
        "raftlog_transport_frames_sent_total",
        "raftlog_transport_frames_received_total",
        "raftlog_transport_bytes_sent_total",
        "raftlog_transport_bytes_received_total",
        "raftlog_transport_dropped_total",
        "raftlog_transport_snapshot_chunks_dropped_total",
        "raftlog_transport_connect_errors_total",
        "raftlog_transport_garbage_frames_total",
        "raftlog_transport_handshakes_refused_total",
        "raftlog_transport_inbound_replaced_total",
        "raftlog_transport_inbound_idle_closed_total",
        "raftlog_transport_tls_refused_total",
        "raftlog_membership_changes_total",
        "raftlog_snapshot_last_bytes",
        "raftlog_storage_no_space",
        "raftlog_storage_free_bytes",
        "raftlog_storage_used_bytes",
        "raftlog_storage_quota_bytes",
        "raftlog_applied_index",
    ];

    #[test]
    fn every_metric_name_of_the_hand_written_exporter_is_still_scraped() {
        let text = render(None);
        for name in NAMES_BEFORE {
            assert!(
                text.lines()
                    .any(|l| l.split_whitespace().next() == Some(*name)),
                "/metrics lost {name}:\n{text}"
            );
        }
        // The exact lines the hand-written exporter produced.
        assert!(text.contains(
            "# HELP raftlog_proposals_total Client writes proposed to the Raft log.\n\
             # TYPE raftlog_proposals_total counter\nraftlog_proposals_total 7\n"
        ));
        assert!(text.contains("raftlog_storage_no_space 1\n"));
        assert!(text.contains("raftlog_applied_index 42\n"));
    }

    /// A client's own method names cannot grow the label set; repeated requests land in
    /// the same series as the first.
    #[test]
    fn request_timings_are_labelled_by_route_and_http_method() {
        let api = ApiMetrics::default();
        let made_up = Method::from_bytes(b"FROB").unwrap();
        for method in [
            &Method::GET,
            &Method::GET,
            &made_up,
            &Method::from_bytes(b"ZAP").unwrap(),
        ] {
            api.observe_request("/v1/kv/{*key}", method, Duration::from_millis(1));
        }
        let mut out = String::new();
        prometheus_text::encode(&mut out, &registry(&report(), None, &api)).unwrap();
        assert!(out.contains(
            "raftlog_api_request_seconds_count{endpoint=\"/v1/kv/{*key}\",method=\"GET\"} 2\n"
        ));
        assert!(out.contains(
            "raftlog_api_request_seconds_count{endpoint=\"/v1/kv/{*key}\",method=\"other\"} 2\n"
        ));
        assert!(!out.contains("FROB") && !out.contains("ZAP"), "{out}");
    }

    #[test]
    fn latency_histograms_are_exported_with_buckets() {
        let text = render(None);
        assert!(text.contains("# TYPE raftlog_wal_sync_seconds histogram\n"));
        assert!(text.contains("raftlog_wal_sync_seconds_count 1\n"));
        assert!(text.contains("raftlog_apply_batch_seconds_count 0\n"));
        assert!(text.contains(
            "raftlog_api_request_seconds_count{endpoint=\"/v1/kv/{*key}\",method=\"PUT\"} 1\n"
        ));
        // 120 µs lands above the 100 µs bucket and within the 200 µs one.
        assert!(text.contains("raftlog_wal_sync_seconds_bucket{le=\"0.0001\"} 0\n"));
        assert!(text.contains("raftlog_wal_sync_seconds_bucket{le=\"0.0002\"} 1\n"));
    }

    #[test]
    fn member_gauges_carry_id_and_role_labels_on_the_leader() {
        let mut membership = Membership::default();
        for (id, voter) in [(1, true), (2, false)] {
            membership.members.insert(
                id,
                Member {
                    raft_addr: format!("127.0.0.1:700{id}"),
                    api_addr: format!("127.0.0.1:800{id}"),
                    voter,
                },
            );
        }
        let report = ReplicationReport {
            members: vec![
                MemberReplication {
                    id: 1,
                    match_index: 10,
                    lag: 0,
                    last_contact_ms: 0,
                    snapshot: None,
                    log_regressed: None,
                },
                MemberReplication {
                    id: 2,
                    match_index: 4,
                    lag: 6,
                    last_contact_ms: 30,
                    snapshot: None,
                    log_regressed: None,
                },
            ],
            failure_tolerance: 0,
        };
        let text = render(Some(&(membership, report)));
        assert!(text.contains("raftlog_voters 1\n"));
        assert!(text.contains("raftlog_learners 1\n"));
        assert!(text.contains("raftlog_member_lag_entries{id=\"2\",role=\"learner\"} 6\n"));
        assert!(text.contains("raftlog_member_match_index{id=\"1\",role=\"voter\"} 10\n"));
    }
}
