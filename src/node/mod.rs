//! The node: drives the Raft core with real time, a real disk and real sockets.
//!
//! Four activities, each on its own thread or task, connected by channels:
//!
//! 1. The **raft loop** (a tokio task) owns the [`RaftCore`]. It feeds it ticks, peer
//!    messages and client requests, takes each `Ready`, sends the messages that depend on
//!    nothing at once, and passes the rest on. It never touches the disk.
//! 2. The **persistence thread** ([`writer`]) appends entries to the WAL with group commit,
//!    saves term and vote in the stable store, writes received snapshot chunks, then sends
//!    the messages that needed them durable and reports back.
//! 3. The **apply thread** ([`apply`]) applies committed entries, answers waiting clients,
//!    restores installed snapshots and takes new ones in the background.
//! 4. The **transport** moves messages between nodes.
//!
//! A write is acknowledged only when the apply thread applies it, and the core commits an
//! entry only once a majority, counting this node only after its own fsync, has it on disk.

pub mod apply;
mod bootstrap;
mod clock;
mod error;
pub mod forwarding;
pub mod log_storage;
pub mod membership;
mod raft_thread;
mod recovery;
pub mod snapshot_policy;
pub mod space;
mod thread_priority;
pub mod transfer;
pub mod watch_hub;
pub mod writer;

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use storage::stable::StableStore;
use storage::{Membership, NodeId, SnapshotMeta};
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore, TryAcquireError};

use self::apply::{Applier, ApplyJob, PendingWrite, PendingWrites, WriteOutcome};
use self::clock::TickClock;
use self::log_storage::{DurableLog, NodeLogStorage};
use self::membership::{
    ChangeRefused, ChangeTicket, MembershipDriver, MembershipOp, MembershipPolicy,
};
use self::recovery::Recovered;
use self::space::StorageSpace;
use self::transfer::{TransferReply, TransferWaiters};
use self::writer::{WriteJob, Writer};
use crate::kv::{Replicated, StateMachine};
use crate::raft::{self, Envelope, ProposeError, RaftCore, ReadMode, Ready, Role};
use crate::transport::{Transport, TransportConfig};

pub use self::error::{
    Inconsistency, MembershipLoss, NoSpace, NodeFailure, NotApplied, Overload, Refusal, Removal,
    RequestError, SkippedSnapshots, SnapshotFailed, StartError, StorageStep, WhoActs,
};

/// Everything a node needs to start. [`NodeOptions::new`] gives the defaults of
/// `config.json` for a single-node cluster; set the fields to change them.
#[derive(Clone, Debug)]
pub struct NodeOptions {
    /// This node's id.
    pub id: NodeId,
    /// Peers from another cluster are refused.
    pub cluster_id: String,
    /// This node's own data directory (`<data_dir>/node-<id>`).
    pub data_dir: PathBuf,
    /// The initial voters, used only when the data directory is new.
    pub bootstrap: Membership,
    /// Where this node listens for peers.
    pub raft_addr: SocketAddr,
    /// Leader heartbeat period.
    pub heartbeat_interval: Duration,
    /// Election timeouts are drawn from this range.
    pub election_timeout: (Duration, Duration),
    /// Entries applied since the last snapshot that trigger a new one.
    pub snapshot_threshold: u64,
    /// Entries kept in the log behind a snapshot.
    pub snapshot_trailing_entries: u64,
    /// Size of each WAL segment file.
    pub wal_segment_bytes: u64,
    /// Issue 12, diskfull: most bytes the data directory may take before writes are
    /// refused (`507 no_space`); `None`: only a full disk refuses them.
    pub storage_quota_bytes: Option<u64>,
    /// The core's clock period.
    pub tick: Duration,
    /// When learners added as voters are promoted.
    pub membership_policy: MembershipPolicy,
    /// The core's bound on this leader's uncommitted payload bytes
    /// ([`raft::Config::max_uncommitted_bytes`]).
    pub max_uncommitted_bytes: u64,
    /// The node's budget for client writes in progress, in bytes (see [`WritePermit`]).
    pub pending_write_bytes_max: u64,
    /// Issue 14: log payload bytes applied since the last snapshot that trigger a new one.
    pub snapshot_threshold_bytes: u64,
    /// Issue 14: the least time between the starts of two threshold-triggered snapshots.
    pub snapshot_min_interval: Duration,
    /// Issue 16: mutual TLS between peers; `None`: plaintext, with the source-address check.
    pub tls: Option<Arc<crate::security::tls::NodeTls>>,
    /// The nice value of the thread the raft loop and the peer links run on (see
    /// `raft_thread.rs`); 0 leaves it at the process's.
    pub raft_thread_nice: i32,
}

impl NodeOptions {
    /// Options for node `id` keeping its data in `data_dir` and listening for peers on
    /// `raft_addr`, with the defaults of `config.json`; `bootstrap` is a cluster of this
    /// node alone (set it to the initial voters of a larger cluster). The node takes no
    /// client address: serving clients is up to the embedder (`raftlog serve` runs the
    /// HTTP API of [`crate::api`]).
    pub fn new(id: NodeId, data_dir: impl Into<PathBuf>, raft_addr: SocketAddr) -> NodeOptions {
        use crate::config as defaults;
        let bootstrap = Membership::single_voter(id, raft_addr.to_string(), String::new());
        let (election_min_ms, election_max_ms) = defaults::DEFAULT_ELECTION_TIMEOUT_MS;
        NodeOptions {
            id,
            cluster_id: "raftlog".to_string(),
            data_dir: data_dir.into(),
            bootstrap,
            raft_addr,
            heartbeat_interval: Duration::from_millis(defaults::DEFAULT_HEARTBEAT_INTERVAL_MS),
            election_timeout: (
                Duration::from_millis(election_min_ms),
                Duration::from_millis(election_max_ms),
            ),
            snapshot_threshold: defaults::DEFAULT_SNAPSHOT_THRESHOLD,
            snapshot_trailing_entries: defaults::DEFAULT_SNAPSHOT_TRAILING_ENTRIES,
            wal_segment_bytes: defaults::DEFAULT_WAL_SEGMENT_BYTES,
            storage_quota_bytes: None,
            tick: DEFAULT_TICK,
            membership_policy: MembershipPolicy::default(),
            max_uncommitted_bytes: defaults::DEFAULT_MAX_UNCOMMITTED_BYTES,
            pending_write_bytes_max: defaults::DEFAULT_PENDING_WRITE_BYTES_MAX,
            snapshot_threshold_bytes: defaults::DEFAULT_SNAPSHOT_THRESHOLD_BYTES,
            snapshot_min_interval: Duration::from_millis(
                defaults::DEFAULT_SNAPSHOT_MIN_INTERVAL_MS,
            ),
            tls: None,
            raft_thread_nice: defaults::DEFAULT_RAFT_THREAD_NICE,
        }
    }
}

/// The core's clock period `raftlog serve` uses: a tenth of the default heartbeat.
pub const DEFAULT_TICK: Duration = Duration::from_millis(10);

/// Requests queued for the raft loop before writes are refused `503 overloaded`: the count
/// bound beside the byte budget. It drains a full round (`REQUESTS_PER_ROUND_MAX`) per
/// wake-up, so this is many rounds of backlog; writes alone reach it only with a write
/// budget over 64 MiB, as each write is charged at least [`WRITE_OVERHEAD_BYTES`].
pub const REQUEST_QUEUE_CAPACITY: usize = 65_536;

/// What a write is charged against the write budget besides its own bytes: what the node
/// keeps per pending write (channels, the pending-write entry, HTTP state), rounded up. It
/// also turns the byte budget into a count bound for tiny writes.
pub const WRITE_OVERHEAD_BYTES: u64 = 1024;

/// Things the persistence and apply threads tell the raft loop.
#[derive(Debug)]
pub(crate) enum Event {
    Persisted {
        index: u64,
        term: u64,
    },
    Applied {
        index: u64,
    },
    SnapshotTaken {
        meta: SnapshotMeta,
        compact_upto: u64,
    },
    /// The peers confirmed the first start of the cluster: this fresh node may vote.
    FirstStartConfirmed,
    /// The apply thread applied a membership that no longer names this node.
    RemovedFromMembership {
        index: u64,
        /// Set when a leader reported the removal committed (the node's own log may not
        /// even hold it); unset when this node applied it.
        confirmed_by: Option<NodeId>,
    },
    /// A snapshot from the leader is durable, verified and the log reconciled with it.
    SnapshotInstalled(SnapshotMeta),
    /// A snapshot from the leader could not be written or failed verification.
    SnapshotFailed(SnapshotMeta),
    Fatal(NodeFailure),
}

/// Client requests to the raft loop.
enum Request {
    Propose {
        command: Bytes,
        reply: oneshot::Sender<Result<oneshot::Receiver<WriteOutcome>, ProposeError>>,
    },
    Read {
        mode: ReadMode,
        reply: oneshot::Sender<Result<u64, Option<NodeId>>>,
    },
    Status {
        reply: oneshot::Sender<NodeStatus>,
    },
    TransferLeadership {
        to: Option<NodeId>,
        reply: TransferReply,
    },
    ChangeMembership {
        op: MembershipOp,
        force: bool,
        reply: oneshot::Sender<Result<ChangeTicket, ChangeRefused>>,
    },
    Replication {
        reply: oneshot::Sender<Option<ReplicationReport>>,
    },
}

/// The leader's view of each member, for `/v1/status` and `/metrics`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicationReport {
    /// One row per member, by id.
    pub members: Vec<MemberReplication>,
    /// How many more voters may fail before the cluster loses its quorum.
    pub failure_tolerance: usize,
}

/// One member as the leader sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberReplication {
    /// The member.
    pub id: NodeId,
    /// Highest index known durable on it.
    pub match_index: u64,
    /// Entries it is behind the leader's last index.
    pub lag: u64,
    /// Milliseconds since it last answered the leader.
    pub last_contact_ms: u64,
    /// The InstallSnapshot transfer to it in progress, if any (issue 17).
    pub snapshot: Option<SnapshotSendReport>,
    /// Its log went backwards below what it acknowledged, until it caught up again.
    pub log_regressed: Option<raft::LogRegression>,
}

/// An InstallSnapshot transfer from the leader to one member, for `/v1/status` and `/ui`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotSendReport {
    /// The snapshot's last index.
    pub last_index: u64,
    /// Bytes sent so far.
    pub bytes_sent: u64,
    /// The snapshot's size in bytes; `None` if its file could not be read (a newer
    /// snapshot replaced it, and the transfer restarts with that one).
    pub bytes_total: Option<u64>,
}

/// What `GET /v1/status` reports: the core's own status.
pub type NodeStatus = raft::Status;

/// A counter exported on `/metrics`.
#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Mirrors a count kept elsewhere (it only grows there).
    fn set(&self, value: u64) {
        self.0.store(value, Ordering::Relaxed);
    }
}

/// Node-wide counters for `/metrics`.
#[derive(Default)]
pub struct Metrics {
    /// Client writes proposed.
    pub proposals: Counter,
    /// Proposals refused (not leader, back-pressure).
    pub proposals_refused: Counter,
    /// Client writes answered `503 overloaded` (write budget, request queue, or the core's
    /// uncommitted bounds); nothing was proposed.
    pub writes_overloaded: Counter,
    /// Entries applied to the state machine.
    pub entries_applied: Counter,
    /// WAL appends (one fdatasync each).
    pub wal_appends: Counter,
    /// Entries written to the WAL.
    pub wal_entries: Counter,
    /// Bytes of entries written to the WAL.
    pub wal_bytes: Counter,
    /// Total WAL append time, microseconds.
    pub wal_append_micros: Counter,
    /// Snapshots taken locally.
    pub snapshots_taken: Counter,
    /// Snapshots this node failed to take (each attempt counts).
    pub snapshot_failures: Counter,
    /// Size of the last snapshot taken, bytes.
    pub snapshot_last_bytes: Counter,
    /// Total snapshot bytes written locally, counted as they are written (a snapshot in
    /// progress shows here; `raftlog snapshot` draws its progress from it).
    pub snapshot_bytes_written: Counter,
    /// Total time spent writing snapshots, milliseconds.
    pub snapshot_millis: Counter,
    /// Snapshots received from a leader and installed.
    pub snapshots_installed: Counter,
    /// Snapshot bytes received from a leader.
    pub snapshot_bytes_received: Counter,
    /// Snapshots streamed completely to a follower (last chunk sent).
    pub snapshots_sent: Counter,
    /// Snapshot bytes streamed to followers.
    pub snapshot_bytes_sent: Counter,
    /// Linearizable or lease reads served.
    pub reads: Counter,
    /// Elections this node started.
    pub elections: Counter,
    /// Connections to or from the leader seen to end while following it; each brings the
    /// next election forward (`RaftCore::on_link_lost`).
    pub leader_links_lost: Counter,
    /// Times the raft loop went two heartbeat intervals or more without running.
    pub raft_loop_stalls: Counter,
    /// Peer messages the core dropped at its door as malformed or hostile.
    pub raft_messages_dropped: Counter,
    /// Leadership transfers this node started as leader.
    pub transfers_started: Counter,
    /// Transfers that ended with the target leading.
    pub transfers_succeeded: Counter,
    /// Transfers abandoned, or without an outcome in time.
    pub transfers_failed: Counter,
    /// Membership changes this node proposed as leader (promotions included).
    pub membership_changes: Counter,
    /// Time of each WAL append, write and fdatasync.
    pub wal_sync_seconds: LatencyHistogram,
    /// Time to apply each batch of committed entries.
    pub apply_batch_seconds: LatencyHistogram,
}

/// A latency histogram exported on `/metrics`, in seconds.
#[derive(Clone, Debug)]
pub struct LatencyHistogram(prometheus_client::metrics::histogram::Histogram);

impl Default for LatencyHistogram {
    /// Buckets from 50 µs doubling to about 1.6 s: an fdatasync on a fast SSD takes tens
    /// of microseconds, on a busy disk hundreds of milliseconds.
    fn default() -> Self {
        LatencyHistogram(prometheus_client::metrics::histogram::Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(50e-6, 2.0, 16),
        ))
    }
}

impl LatencyHistogram {
    /// Records one duration.
    pub fn observe(&self, elapsed: Duration) {
        self.0.observe(elapsed.as_secs_f64());
    }

    /// The histogram itself (shared: it keeps counting), for the exporter.
    pub fn histogram(&self) -> prometheus_client::metrics::histogram::Histogram {
        self.0.clone()
    }
}

impl Metrics {
    fn record_wal_append(&self, entries: u64, bytes: u64, elapsed: Duration) {
        self.wal_appends.inc();
        self.wal_entries.add(entries);
        self.wal_bytes.add(bytes);
        self.wal_append_micros.add(elapsed.as_micros() as u64);
        self.wal_sync_seconds.observe(elapsed);
    }

    fn record_snapshot(&self, bytes: u64, elapsed: Duration) {
        self.snapshots_taken.inc();
        self.snapshot_last_bytes.0.store(bytes, Ordering::Relaxed);
        // `snapshot_bytes_written` was counted while the snapshot was written.
        self.snapshot_millis.add(elapsed.as_millis() as u64);
    }

    fn add_snapshot_bytes_received(&self, bytes: u64) {
        self.snapshot_bytes_received.add(bytes);
    }
}

/// What [`Node::metrics`] reports.
pub struct MetricsReport {
    /// The node's own counters and histograms (live: they keep counting).
    pub counters: Arc<Metrics>,
    /// The peer transport's counters at the time of the call.
    pub transport: crate::transport::TransportMetrics,
    /// Segment files the WAL started, new and recycled.
    pub wal_segments: storage::wal::SegmentStats,
    /// The data directory's space (issue 12, diskfull).
    pub space: SpaceReport,
    /// The highest applied index.
    pub applied_index: u64,
    /// Issue 14: forwards over the peer link refused at the in-flight cap (nothing sent).
    pub forwards_dropped_overload: u64,
    /// Issue 14: forwards sent whose answer was lost (link loss, leader change, timeout):
    /// each was answered "unknown outcome".
    pub forwards_dropped_lost: u64,
    /// Issue 14: forwards waiting for the leader's answer right now.
    pub forwards_in_flight: u64,
    /// Issue 14: forwards this node proposed as the leader.
    pub forwards_served: u64,
    /// Issue 14: read index requests this node sent to the leader over the peer link.
    pub read_index_sent: u64,
    /// Issue 14: read index requests this node answered as the leader.
    pub read_index_served: u64,
    /// Issue 14: linearizable or lease reads this node served as a follower, at a read
    /// index the leader gave.
    pub follower_reads: u64,
}

/// Space of the data directory, as [`StorageSpace`] last measured it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpaceReport {
    /// Writes are refused: the disk is full or the storage quota reached.
    pub no_space: bool,
    /// Bytes free on the filesystem of the data directory.
    pub free_bytes: u64,
    /// Bytes the data directory occupies.
    pub used_bytes: u64,
    /// `storage_quota_bytes`, if set.
    pub quota_bytes: Option<u64>,
}

/// A read-only view of the node's log (see [`Node::log_reader`]).
#[derive(Clone)]
pub struct LogReader(Arc<DurableLog>);

impl LogReader {
    /// The first index still in the log (entries before it are compacted into a snapshot).
    pub fn first_index(&self) -> u64 {
        self.0.wal.first_index()
    }

    /// Visits the entries in `[lo, hi)` in order until `visit` breaks; returns the index to
    /// continue from. Entries are copied out `chunk_bytes` at a time, each chunk under its
    /// own short hold of the WAL's view lock.
    pub fn visit_entries(
        &self,
        lo: u64,
        hi: u64,
        chunk_bytes: u64,
        visit: impl FnMut(storage::Entry) -> std::ops::ControlFlow<()>,
    ) -> Result<u64, storage::Error> {
        self.0.visit_entries(lo, hi, chunk_bytes, visit)
    }
}

/// The client-facing handle of a running node. Cheap to clone.
pub struct Node<S: StateMachine> {
    /// This node's id.
    pub id: NodeId,
    requests: mpsc::Sender<Request>,
    /// The replicated state machine, for reads.
    state: Arc<RwLock<Replicated<S>>>,
    applied: watch::Receiver<u64>,
    apply_jobs: mpsc::UnboundedSender<ApplyJob>,
    /// Counters for `/metrics`.
    metrics: Arc<Metrics>,
    /// The peer transport (for its metrics).
    transport: Transport,
    /// The durable log (for `GET /v1/log`).
    log: Arc<DurableLog>,
    leader: watch::Receiver<Option<NodeId>>,
    membership: Arc<RwLock<Membership>>,
    fatal: watch::Receiver<Option<Arc<NodeFailure>>>,
    /// A graceful stop began: `/readyz` answers 503.
    stopping: Arc<AtomicBool>,
    election_timeout_max: Duration,
    /// Free space and usage of the data directory (issue 12, diskfull).
    space: Arc<StorageSpace>,
    /// Permits are bytes of client writes in progress on this node (see [`WritePermit`]).
    write_budget: Arc<Semaphore>,
    write_budget_bytes: u64,
    /// Issue 15: watchers subscribe here; the apply thread publishes.
    watch: Arc<watch_hub::WatchHub>,
    /// Issue 14: writes forwarded to the leader over the peer link.
    forwarder: Arc<forwarding::Forwarder>,
}

impl<S: StateMachine> Clone for Node<S> {
    fn clone(&self) -> Self {
        Node {
            id: self.id,
            requests: self.requests.clone(),
            state: self.state.clone(),
            applied: self.applied.clone(),
            apply_jobs: self.apply_jobs.clone(),
            metrics: self.metrics.clone(),
            transport: self.transport.clone(),
            log: self.log.clone(),
            leader: self.leader.clone(),
            membership: self.membership.clone(),
            fatal: self.fatal.clone(),
            stopping: self.stopping.clone(),
            election_timeout_max: self.election_timeout_max,
            space: self.space.clone(),
            write_budget: self.write_budget.clone(),
            write_budget_bytes: self.write_budget_bytes,
            watch: self.watch.clone(),
            forwarder: self.forwarder.clone(),
        }
    }
}

/// The bytes of one client write, held against the node's write budget
/// (`pending_write_bytes_max`) from the moment its body is admitted until it is answered or
/// dropped. Every copy of a write's bytes the node keeps while it is pending (the request
/// body, the proposed entry, the entry on its way to the WAL and to the apply thread) lives
/// no longer than this permit, so the budget bounds them all, whichever node the client
/// asked: a follower forwarding the write holds its own permit too.
#[derive(Debug)]
pub struct WritePermit {
    _bytes: OwnedSemaphorePermit,
}

impl<S: StateMachine> Node<S> {
    /// Takes `bytes` of the node's write budget for one client write, at once or not at
    /// all: past the budget the write is refused ([`RequestError::Overloaded`]) rather than
    /// queued, so memory stays bounded however many clients write at once. Each write is
    /// charged `bytes` plus [`WRITE_OVERHEAD_BYTES`]; one larger than the whole budget takes
    /// all of it (config validation keeps the budget above the largest value).
    pub fn admit_write(&self, bytes: u64) -> Result<WritePermit, RequestError> {
        let wanted = bytes
            .saturating_add(WRITE_OVERHEAD_BYTES)
            .min(self.write_budget_bytes);
        let permits = u32::try_from(wanted).unwrap_or(u32::MAX);
        match self.write_budget.clone().try_acquire_many_owned(permits) {
            Ok(permit) => Ok(WritePermit { _bytes: permit }),
            Err(TryAcquireError::Closed) => Err(RequestError::Stopped),
            Err(TryAcquireError::NoPermits) => {
                self.metrics.writes_overloaded.inc();
                Err(RequestError::Overloaded {
                    node: self.id,
                    limit: Overload::PendingBytes {
                        held_bytes: self
                            .write_budget_bytes
                            .saturating_sub(self.write_budget.available_permits() as u64),
                        budget_bytes: self.write_budget_bytes,
                        wanted_bytes: bytes,
                    },
                })
            }
        }
    }

    /// Proposes `command` (a serialized [`crate::kv::Command`]) and waits until it is
    /// applied, for at most `timeout`. A full request queue refuses the write at once
    /// ([`RequestError::Overloaded`]) instead of making the caller wait for room.
    pub async fn write(
        &self,
        command: Bytes,
        timeout: Duration,
    ) -> Result<(u64, crate::kv::Applied), RequestError> {
        // Issue 12, diskfull: refused before it is proposed (`space.rs`).
        if let Some(refusal) = self.space.refusal(command.len() as u64) {
            self.metrics.proposals_refused.inc();
            return Err(RequestError::NoSpace(refusal));
        }
        if let Some(leader) = self.leader_elsewhere() {
            return Err(RequestError::NotLeader(Some(leader)));
        }
        let (reply, answer) = oneshot::channel();
        match self.requests.try_send(Request::Propose { command, reply }) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.metrics.writes_overloaded.inc();
                return Err(RequestError::Overloaded {
                    node: self.id,
                    limit: Overload::RequestQueue {
                        capacity: REQUEST_QUEUE_CAPACITY,
                    },
                });
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(RequestError::Stopped),
        }
        let waiting = match answer.await.map_err(|_| RequestError::Stopped)? {
            Ok(waiting) => waiting,
            Err(ProposeError::NotLeader { leader_hint }) => {
                return Err(RequestError::NotLeader(leader_hint))
            }
            Err(ProposeError::TransferInProgress) => return Err(RequestError::TransferInProgress),
            Err(ProposeError::Backpressure) => {
                self.metrics.writes_overloaded.inc();
                return Err(RequestError::Overloaded {
                    node: self.id,
                    limit: Overload::ProposalsInFlight {
                        max_entries: raft::Config::new(self.id).max_uncommitted_entries,
                    },
                });
            }
            Err(ProposeError::UncommittedBytesFull {
                uncommitted_bytes,
                proposal_bytes,
                max_bytes,
            }) => {
                self.metrics.writes_overloaded.inc();
                return Err(RequestError::Overloaded {
                    node: self.id,
                    limit: Overload::UncommittedBytes {
                        uncommitted_bytes,
                        proposal_bytes,
                        max_bytes,
                    },
                });
            }
            Err(
                reason @ (ProposeError::MembershipChangePending
                | ProposeError::InvalidMembershipChange(_)),
            ) => {
                // The core refuses these only for membership changes, never for a command.
                return Err(RequestError::NotApplied(
                    NotApplied::RefusedAsMembershipChange {
                        node: self.id,
                        reason,
                    },
                ));
            }
        };
        match tokio::time::timeout(timeout, waiting).await {
            Ok(Ok(WriteOutcome::Applied { index, applied })) => Ok((index, applied)),
            Ok(Ok(WriteOutcome::Superseded)) => Err(RequestError::NotCommitted),
            Ok(Ok(WriteOutcome::Unknown)) | Ok(Err(_)) | Err(_) => Err(RequestError::Unknown),
        }
    }

    /// Proposes one command for the state machine (no client session) and waits until it is
    /// applied; returns its log index and the state machine's response.
    pub async fn propose(
        &self,
        command: &[u8],
        timeout: Duration,
    ) -> Result<(u64, Vec<u8>), RequestError> {
        let wrapped = crate::kv::Command {
            request_id: None,
            body: Bytes::copy_from_slice(command),
        };
        let (index, applied) = self.write(wrapped.encode().into(), timeout).await?;
        // A command without a client session is applied or undecodable, but the
        // session's whole verdict is passed on rather than assumed.
        let response = Refusal::response(applied)
            .map_err(|refusal| RequestError::NotApplied(NotApplied::Refused(refusal)))?;
        Ok((index, response))
    }

    /// Reads the state machine after a linearizable read barrier.
    pub async fn read<T>(
        &self,
        timeout: Duration,
        read: impl FnOnce(&S) -> T,
    ) -> Result<T, RequestError> {
        self.read_barrier(ReadMode::Linearizable, timeout).await?;
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        Ok(read(&state.state))
    }

    /// Waits until a read in `mode` is safe and returns the index it may be served at (the
    /// state machine then has applied at least that index).
    pub async fn read_barrier(
        &self,
        mode: ReadMode,
        timeout: Duration,
    ) -> Result<u64, RequestError> {
        if let Some(leader) = self.leader_elsewhere() {
            return Err(RequestError::NotLeader(Some(leader)));
        }
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request::Read { mode, reply })
            .await
            .map_err(|_| RequestError::Stopped)?;
        let index = match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(Ok(index))) => index,
            Ok(Ok(Err(leader))) => return Err(RequestError::NotLeader(leader)),
            Ok(Err(_)) => return Err(RequestError::Stopped),
            Err(_) => return Err(RequestError::Unknown),
        };
        let mut applied = self.applied.clone();
        let reached = tokio::time::timeout(timeout, async move {
            applied
                .wait_for(|applied| *applied >= index)
                .await
                .map(|_| ())
        })
        .await;
        match reached {
            Ok(Ok(())) => {
                self.metrics.reads.inc();
                Ok(index)
            }
            Ok(Err(_)) => Err(RequestError::Stopped),
            Err(_) => Err(RequestError::Unknown),
        }
    }

    /// The highest applied index.
    pub fn applied_index(&self) -> u64 {
        *self.applied.borrow()
    }

    /// Reads this node's own state machine as it stands, without a read barrier (a `stale`
    /// read); `read` also gets the applied index, taken under the same lock so that it
    /// names the state the value came from.
    pub fn read_local<T>(&self, read: impl FnOnce(&S, u64) -> T) -> T {
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        read(&state.state, self.applied_index())
    }

    /// The node's figures for `/metrics`: its counters and histograms, the transport's,
    /// the WAL's segment files and the data directory's space.
    pub fn metrics(&self) -> MetricsReport {
        MetricsReport {
            counters: self.metrics.clone(),
            transport: self.transport.metrics(),
            // Counted by the WAL itself, read here rather than mirrored on every append.
            wal_segments: self.log.wal.segment_stats(),
            space: SpaceReport {
                no_space: self.space.no_space(),
                free_bytes: self.space.free_bytes(),
                used_bytes: self.space.used_bytes(),
                quota_bytes: self.space.quota_bytes(),
            },
            applied_index: self.applied_index(),
            forwards_dropped_overload: self.forwarder.dropped_overload.load(Ordering::Relaxed),
            forwards_dropped_lost: self.forwarder.dropped_lost.load(Ordering::Relaxed),
            forwards_in_flight: self.forwarder.in_flight() as u64,
            forwards_served: self.forwarder.served.load(Ordering::Relaxed),
            read_index_sent: self.forwarder.read_index_sent.load(Ordering::Relaxed),
            read_index_served: self.forwarder.read_index_served.load(Ordering::Relaxed),
            follower_reads: self.forwarder.follower_reads.load(Ordering::Relaxed),
        }
    }

    /// A read-only view of the entries still in the log, for `GET /v1/log`; it may be
    /// moved to another thread (reading it may wait on the disk).
    pub fn log_reader(&self) -> LogReader {
        LogReader(self.log.clone())
    }

    /// The hub that feeds watch and change-feed streams from the apply thread.
    pub fn watch(&self) -> &Arc<watch_hub::WatchHub> {
        &self.watch
    }

    /// The current status.
    pub async fn status(&self) -> Result<NodeStatus, RequestError> {
        self.ask(|reply| Request::Status { reply })
            .await
            .ok_or(RequestError::Stopped)
    }

    /// Sends the raft loop the request `request` builds around a reply channel and waits
    /// for its answer; `None` once the loop is gone (the node stopped).
    async fn ask<T>(&self, request: impl FnOnce(oneshot::Sender<T>) -> Request) -> Option<T> {
        let (reply, answer) = oneshot::channel();
        self.requests.send(request(reply)).await.ok()?;
        answer.await.ok()
    }

    /// Asks the leader loop to validate and propose a membership change. The ticket's
    /// receivers tell when it (and the promotion it leads to) commits.
    pub async fn change_membership(
        &self,
        op: MembershipOp,
        force: bool,
    ) -> Result<ChangeTicket, ChangeRefused> {
        self.ask(|reply| Request::ChangeMembership { op, force, reply })
            .await
            .ok_or(ChangeRefused::Stopped)?
    }

    /// Each member's replication as this node sees it, if it leads.
    pub async fn replication(&self) -> Result<Option<ReplicationReport>, RequestError> {
        self.ask(|reply| Request::Replication { reply })
            .await
            .ok_or(RequestError::Stopped)
    }

    /// Takes a snapshot now; returns its last index.
    pub async fn snapshot(&self) -> Result<u64, SnapshotFailed> {
        let (reply, answer) = oneshot::channel();
        self.apply_jobs
            .send(ApplyJob::TakeSnapshot(reply))
            .map_err(|_| SnapshotFailed::Stopping)?;
        answer.await.map_err(|_| SnapshotFailed::Stopping)?
    }

    /// The leader this node last knew of (without asking the raft loop).
    pub fn leader_hint(&self) -> Option<NodeId> {
        *self.leader.borrow()
    }

    /// Another node this node last knew to lead. A write or a read barrier asked of a
    /// follower that knows its leader is refused with it at once (issue 14): its raft loop
    /// would only refuse it too, after a wake-up of the loop and an answer back, and the
    /// caller forwards to the leader either way. `None` when this node leads or knows of no
    /// leader: the raft loop decides.
    fn leader_elsewhere(&self) -> Option<NodeId> {
        self.leader_hint().filter(|leader| *leader != self.id)
    }

    /// Resolves once this node knows of a leader other than `leader` (or of none).
    pub async fn leader_changed_from(&self, leader: NodeId) {
        let mut watch = self.leader.clone();
        let _ = watch.wait_for(|current| *current != Some(leader)).await;
    }

    /// Test-only fault: drop all peer traffic of this node while `isolated` (a partition
    /// without root). The API exposes it only under `RAFTLOG_TEST_FAULTS=1`.
    pub fn set_peer_traffic_isolated(&self, isolated: bool) {
        self.transport.set_isolated(isolated);
    }

    /// The membership in effect (as last reported by the core).
    pub fn membership(&self) -> Membership {
        self.membership
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The failure that stopped the node, if one did.
    pub fn failure(&self) -> Option<Arc<NodeFailure>> {
        self.fatal.borrow().clone()
    }

    /// Resolves when the node hits a fatal error; carries it.
    pub async fn failed(&self) -> Arc<NodeFailure> {
        let mut fatal = self.fatal.clone();
        let failure = match fatal.wait_for(|f| f.is_some()).await {
            Ok(failure) => failure.clone(),
            Err(_) => None,
        };
        failure.unwrap_or_else(|| Arc::new(NodeFailure::Stopped))
    }
}

/// The most ticks one catch-up feeds the core: well past every timeout it keeps.
fn catch_up_ticks_max(options: &NodeOptions) -> u64 {
    let config = core_config(options);
    4 * u64::from(
        config
            .election_timeout_ticks_max
            .max(config.heartbeat_interval_ticks),
    )
}

/// The largest command a client can make the node propose: the API's value limit
/// (`ApiOptions::value_bytes_max`, 1 MiB; a whole request body is at most that) plus the
/// key (at most 1 KiB), a `Request-Id` and the command's encoding.
const COMMAND_BYTES_MAX: u64 = (1 << 20) + (64 << 10);

fn core_config(options: &NodeOptions) -> raft::Config {
    let ticks = |d: Duration| (d.as_millis() / options.tick.as_millis().max(1)).max(1) as u32;
    let mut config = raft::Config::new(options.id);
    config.heartbeat_interval_ticks = ticks(options.heartbeat_interval);
    config.max_uncommitted_bytes = options.max_uncommitted_bytes;
    config.election_timeout_ticks_min = ticks(options.election_timeout.0);
    config.election_timeout_ticks_max =
        ticks(options.election_timeout.1).max(config.election_timeout_ticks_min + 1);
    // Each process draws its own timeouts; a time-derived seed keeps restarted nodes from
    // repeating the same sequence. Determinism matters only in the simulator.
    config.seed = options.id
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
    config
}

/// Opens the node's storage, recovers, and starts all its activities. Returns the client
/// handle; the node runs until the process exits.
pub async fn start<S: StateMachine>(
    options: NodeOptions,
    state_machine: S,
) -> Result<Node<S>, StartError> {
    let recovered = recovery::recover(&options, state_machine)?;
    spawn(options, recovered).await
}

/// Starts the node's activities on the state recovery left: the transport, the
/// persistence and apply threads, and the raft loop.
async fn spawn<S: StateMachine>(
    options: NodeOptions,
    recovered: Recovered<S>,
) -> Result<Node<S>, StartError> {
    let dir = &options.data_dir;
    let metrics = Arc::new(Metrics::default());
    let space = Arc::new(StorageSpace::new(
        dir,
        options.storage_quota_bytes,
        options.wal_segment_bytes,
    ));
    StorageSpace::start_measuring(&space);
    let storage = NodeLogStorage(recovered.log.clone());
    let core_config = core_config(&options);
    // "Reachable" for the quorum-safety check: heard from within an election timeout.
    let membership_driver = MembershipDriver::new(
        options.membership_policy,
        u64::from(core_config.election_timeout_ticks_max),
    );
    // Every node derives the same limit from the same settings.
    let max_frame_bytes = crate::transport::max_frame_bytes_for(
        core_config.max_msg_bytes,
        COMMAND_BYTES_MAX,
        core_config.snapshot_chunk_bytes,
    );
    let core = RaftCore::new(
        core_config,
        storage,
        recovered.hard_state,
        recovered.bootstrap.clone(),
    );
    let initial_membership = core.status().membership;
    let peers = raft_peers(&initial_membership);
    let mut transport_config = TransportConfig::new(
        options.id,
        options.cluster_id.clone(),
        options.raft_addr,
        peers,
    );
    transport_config.max_frame_bytes = max_frame_bytes;
    transport_config.tls = options.tls.clone();
    transport_config.protocol_version = test_peer_protocol();
    let raft_thread = raft_thread::RaftThread::start(options.id, options.raft_thread_nice)
        .map_err(StartError::RaftThread)?;
    // The transport spawns its tasks on the runtime it starts on: the raft thread's.
    let (transport, inbound) = raft_thread
        .handle()
        .spawn(Transport::start(transport_config))
        .await
        .map_err(|e| io::Error::other(format!("the transport's start task failed: {e}")))
        .and_then(|started| started)
        .map_err(|source| StartError::Transport {
            addr: options.raft_addr,
            source,
        })?;

    let state = Arc::new(RwLock::new(recovered.replicated));
    let (applied_tx, applied_rx) = watch::channel(recovered.snapshot_meta.last_index);
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let (apply_tx, apply_rx) = mpsc::unbounded_channel();
    let (write_tx, write_rx) = mpsc::unbounded_channel();
    let (requests_tx, requests_rx) = mpsc::channel(REQUEST_QUEUE_CAPACITY);
    let (fatal_tx, fatal_rx) = watch::channel(None);
    let fatal_tx = Arc::new(fatal_tx);
    let pending: PendingWrites = Arc::default();
    let watch_hub = watch_hub::WatchHub::new(recovered.snapshot_meta.last_index);

    let applier = Applier {
        id: options.id,
        fault_panic_apply_at: fault_panic_apply_at(),
        state: state.clone(),
        log: recovered.log.clone(),
        pending: pending.clone(),
        applied_tx,
        events: events_tx.clone(),
        jobs_tx: apply_tx.clone(),
        metrics: metrics.clone(),
        snapshot_policy: snapshot_policy::SnapshotPolicy::new(
            options.snapshot_threshold.max(1),
            options.snapshot_threshold_bytes.max(1),
            options.snapshot_min_interval,
        ),
        snapshot_timer_armed: false,
        snapshot_trailing_entries: options.snapshot_trailing_entries,
        membership: if recovered.snapshot_meta.last_index > 0 {
            recovered.snapshot_meta.membership.clone()
        } else {
            recovered.bootstrap.clone()
        },
        applied_index: recovered.snapshot_meta.last_index,
        applied_term: recovered.snapshot_meta.last_term,
        last_snapshot_index: recovered.snapshot_meta.last_index,
        snapshot_in_progress: false,
        snapshot_waiters: Vec::new(),
        snapshot_backoff: apply::SnapshotBackoff::default(),
        watch: watch_hub.clone(),
    };
    spawn_thread("apply", events_tx.clone(), move || applier.run(apply_rx));
    let writer = Writer {
        log: recovered.log.clone(),
        stable: recovered.stable.clone(),
        transport: transport.clone(),
        events: events_tx.clone(),
        apply: apply_tx.clone(),
        metrics: metrics.clone(),
        space: space.clone(),
    };
    spawn_thread("persist", events_tx.clone(), move || writer.run(write_rx));
    if recovered.standing == bootstrap::Standing::Fresh {
        tokio::spawn(bootstrap::confirm_first_start(
            options.id,
            options.cluster_id.clone(),
            dir.clone(),
            recovered.bootstrap.clone(),
            recovered.stable.clone(),
            events_tx.clone(),
            options.tls.clone(),
        ));
    }

    let (leader_tx, leader_rx) = watch::channel(None);
    let membership = Arc::new(RwLock::new(initial_membership));
    let raft_loop = RaftLoop {
        core,
        log: recovered.log.clone(),
        transport: transport.clone(),
        write_tx,
        apply_tx: apply_tx.clone(),
        pending,
        pending_reads: HashMap::new(),
        next_read_ctx: 1,
        leader: leader_tx,
        membership: membership.clone(),
        metrics: metrics.clone(),
        fatal: fatal_tx.clone(),
        last_role: None,
        clock: TickClock::new(
            options.tick,
            catch_up_ticks_max(&options),
            2 * options.heartbeat_interval,
        ),
        transfers: TransferWaiters::default(),
        election_timeout_max: options.election_timeout.1,
        awaiting_first_start: recovered.standing == bootstrap::Standing::Fresh,
        watching_removal: Arc::default(),
        api_tls: options.tls.clone(),
        events_tx: events_tx.clone(),
        stable: recovered.stable.clone(),
        data_dir: dir.clone(),
        membership_driver,
        tick: options.tick,
        log_regressions_warned: 0,
        link_losses_seen: BTreeMap::new(),
    };
    let raft_loop =
        raft_thread
            .handle()
            .spawn(raft_loop.run(options.tick, inbound, requests_rx, events_rx));

    let node = Node {
        id: options.id,
        requests: requests_tx,
        state,
        applied: applied_rx,
        apply_jobs: apply_tx,
        metrics,
        transport,
        log: recovered.log,
        leader: leader_rx,
        membership,
        fatal: fatal_rx,
        stopping: Arc::new(AtomicBool::new(false)),
        election_timeout_max: options.election_timeout.1,
        space,
        write_budget: Arc::new(Semaphore::new(options.pending_write_bytes_max as usize)),
        write_budget_bytes: options.pending_write_bytes_max,
        watch: watch_hub,
        forwarder: Arc::new(forwarding::Forwarder::from_env()),
    };
    forwarding::start(&node, &node.transport, raft_thread.handle());
    // A panicking raft loop must not leave a node that answers HTTP but never writes.
    // This task owns the raft thread: the thread ends when the raft loop does, or when the
    // embedder's runtime drops this task, as every task of the node ends with that runtime.
    tokio::spawn(async move {
        let _raft_thread = raft_thread;
        if let Err(e) = raft_loop.await {
            if e.is_panic() {
                let failure = NodeFailure::Panicked {
                    thread: "raft loop",
                    message: panic_message(&*e.into_panic()),
                };
                tracing::error!("{failure}");
                let _ = fatal_tx.send(Some(Arc::new(failure)));
            }
        }
    });
    Ok(node)
}

/// Reads the test-only switch `RAFTLOG_TEST_PEER_PROTOCOL=<version>`: the node speaks that
/// older peer protocol version, as a node not yet upgraded would (issue 14 tests that
/// writes through such a node still reach the leader, over HTTP). Never set it in
/// production.
fn test_peer_protocol() -> u16 {
    use crate::transport::codec::{PROTOCOL_VERSION, PROTOCOL_VERSION_MIN};
    let Ok(value) = std::env::var("RAFTLOG_TEST_PEER_PROTOCOL") else {
        return PROTOCOL_VERSION;
    };
    match value.parse::<u16>() {
        Ok(version) if (PROTOCOL_VERSION_MIN..=PROTOCOL_VERSION).contains(&version) => {
            tracing::warn!(
                version,
                "test-only switch RAFTLOG_TEST_PEER_PROTOCOL is set"
            );
            version
        }
        _ => {
            tracing::warn!(
                "ignoring RAFTLOG_TEST_PEER_PROTOCOL={value:?}: not a version between \
                 {PROTOCOL_VERSION_MIN} and {PROTOCOL_VERSION}"
            );
            PROTOCOL_VERSION
        }
    }
}

fn raft_peers(membership: &Membership) -> BTreeMap<NodeId, SocketAddr> {
    membership
        .members
        .iter()
        .filter_map(|(id, m)| match m.raft_addr.parse() {
            Ok(addr) => Some((*id, addr)),
            Err(e) => {
                tracing::error!(id, addr = %m.raft_addr, "member has an invalid raft address: {e}");
                None
            }
        })
        .collect()
}

/// Reads the test-only fault switch `RAFTLOG_FAULT_PANIC_APPLY_AT=<index>`: the apply
/// thread panics when it applies a batch reaching that index, so that process tests can
/// check that a panic stops the node (fail-stop). Never set it in production.
fn fault_panic_apply_at() -> Option<u64> {
    let value = std::env::var("RAFTLOG_FAULT_PANIC_APPLY_AT").ok()?;
    match value.parse() {
        Ok(index) => {
            tracing::warn!(
                index,
                "test-only fault switch RAFTLOG_FAULT_PANIC_APPLY_AT is set"
            );
            Some(index)
        }
        Err(e) => {
            tracing::warn!("ignoring RAFTLOG_FAULT_PANIC_APPLY_AT={value:?}: {e}");
            None
        }
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        text.to_string()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "(no message)".to_string()
    }
}

/// Runs `body` on a named thread. A panic there stops the node (fail-stop): a node whose
/// persistence or apply thread is gone would keep heartbeating and holding its followers
/// while never acknowledging a write again.
fn spawn_thread(
    name: &'static str,
    events: mpsc::UnboundedSender<Event>,
    body: impl FnOnce() + Send + 'static,
) {
    let guarded = move || {
        if let Err(payload) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
            let failure = NodeFailure::Panicked {
                thread: name,
                message: panic_message(&*payload),
            };
            tracing::error!("{failure}");
            let _ = events.send(Event::Fatal(failure));
        }
    };
    let spawned = std::thread::Builder::new()
        .name(format!("raftlog-{name}"))
        .spawn(guarded);
    if let Err(e) = spawned {
        // Without its threads the node cannot make progress; this is a resource limit of
        // the machine, reported at start.
        panic!("cannot start the {name} thread: {e}");
    }
}

struct RaftLoop {
    core: RaftCore<NodeLogStorage>,
    log: Arc<DurableLog>,
    transport: Transport,
    write_tx: mpsc::UnboundedSender<WriteJob>,
    apply_tx: mpsc::UnboundedSender<ApplyJob>,
    pending: PendingWrites,
    pending_reads: HashMap<u64, oneshot::Sender<Result<u64, Option<NodeId>>>>,
    next_read_ctx: u64,
    leader: watch::Sender<Option<NodeId>>,
    membership: Arc<RwLock<Membership>>,
    metrics: Arc<Metrics>,
    fatal: Arc<watch::Sender<Option<Arc<NodeFailure>>>>,
    last_role: Option<Role>,
    /// Ticks owed to the core, counted through stalls (see `clock.rs`).
    clock: TickClock,
    transfers: TransferWaiters,
    election_timeout_max: Duration,
    /// A fresh node ignores ticks and peer messages (no campaign, no vote, no ack) until
    /// its peers confirm the first start of the cluster (see `bootstrap`).
    awaiting_first_start: bool,
    /// Whether a task already asks the members whether this node's removal committed.
    watching_removal: Arc<std::sync::atomic::AtomicBool>,
    /// Issue 16: how the removal check reaches other nodes' HTTPS APIs.
    api_tls: Option<Arc<crate::security::tls::NodeTls>>,
    /// For tasks that report back to the loop.
    events_tx: mpsc::UnboundedSender<Event>,
    stable: Arc<StableStore>,
    data_dir: PathBuf,
    membership_driver: MembershipDriver,
    tick: Duration,
    /// How many of the core's follower log regressions were already warned about.
    log_regressions_warned: u64,
    /// Each peer's count of ended connections as last handed to the core.
    link_losses_seen: BTreeMap<NodeId, u64>,
}

/// Most client requests taken per loop iteration: enough to batch, few enough that ticks
/// and peer messages are never starved.
const REQUESTS_PER_ROUND_MAX: usize = 4096;

impl RaftLoop {
    async fn run(
        mut self,
        tick: Duration,
        mut inbound: mpsc::Receiver<Envelope>,
        mut requests: mpsc::Receiver<Request>,
        mut events: mpsc::UnboundedReceiver<Event>,
    ) {
        // The timer only wakes the loop; `catch_up_ticks` decides how many ticks passed.
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut link_losses = self.transport.link_loss_events();
        loop {
            tokio::select! {
                biased;
                Some(event) = events.recv() => {
                    self.catch_up_ticks();
                    if !self.on_event(event) {
                        return;
                    }
                    while let Ok(event) = events.try_recv() {
                        if !self.on_event(event) {
                            return;
                        }
                    }
                }
                _ = ticker.tick() => {
                    self.catch_up_ticks();
                    self.membership_driver.on_tick(&mut self.core, &self.pending, &self.metrics);
                }
                Ok(()) = link_losses.changed() => {
                    self.catch_up_ticks();
                    self.on_link_losses();
                }
                Some(envelope) = inbound.recv() => {
                    if self.awaiting_first_start {
                        // Dropped, not queued: Raft retransmits, and a vote or an ack from a
                        // node that may have lost its data is exactly what must not go out.
                        while inbound.try_recv().is_ok() {}
                        continue;
                    }
                    self.catch_up_ticks();
                    self.core.step(envelope);
                    while let Ok(envelope) = inbound.try_recv() {
                        self.core.step(envelope);
                    }
                    self.metrics
                        .raft_messages_dropped
                        .set(self.core.dropped_messages().total());
                }
                Some(request) = requests.recv() => {
                    self.catch_up_ticks();
                    self.on_request(request);
                    // No yield to let the queue fill first (`crate::coalesce`): the
                    // producers run on other threads, so a yield only polled the I/O
                    // driver (docs/BENCHMARKS.md, "The raft loop's yield, on its own
                    // thread").
                    let mut taken = 1;
                    while taken < REQUESTS_PER_ROUND_MAX {
                        match requests.try_recv() {
                            Ok(request) => self.on_request(request),
                            Err(_) => break,
                        }
                        taken += 1;
                    }
                }
                else => return,
            }
            if let Some(error) = self.core.fatal() {
                // Issue 11, item 8: the core stopped on a storage read it cannot trust.
                let failure = NodeFailure::CoreStopped(error.clone());
                tracing::error!("{failure}");
                let _ = self.fatal.send(Some(Arc::new(failure)));
                return;
            }
            while self.core.has_ready() {
                let ready = self.core.take_ready();
                self.handle_ready(ready);
            }
            self.warn_log_regressions();
            self.transfers
                .check(&self.core, &self.metrics, self.election_timeout_max);
        }
    }

    /// Feeds the core every tick that passed since the last call, including ticks slept
    /// through in a stall, before it handles anything else (see `clock.rs`).
    fn catch_up_ticks(&mut self) {
        let due = self.clock.due();
        if due.stalled {
            self.metrics.raft_loop_stalls.inc();
        }
        if let Some(report) = due.report {
            // etcd's "leader failed to send out heartbeat on time" for every role: a stall
            // this long delays a leader's heartbeats and a follower's acks alike.
            tracing::warn!(
                stalls = report.count,
                longest_ms = report.longest.as_millis() as u64,
                role = ?self.core.soft_state().role,
                "the raft loop did not run for over two heartbeat intervals; heartbeats, \
                 acks and elections wait on it. The node is short of CPU or its runtime \
                 worker was blocked (see raftlog_raft_loop_stalls_total); elections may follow"
            );
        }
        if self.awaiting_first_start {
            // A fresh node must not campaign before its peers confirm a first start.
            return;
        }
        for _ in 0..due.ticks {
            self.core.tick();
        }
    }

    /// Hands the core every peer connection that ended since the last look. A follower whose
    /// leader's process died hears it from the kernel (the connection's FIN or RST) long
    /// before an election timeout would tell it; the core decides what the hint is worth.
    fn on_link_losses(&mut self) {
        if self.awaiting_first_start {
            return;
        }
        for peer in self.transport.peers().into_keys() {
            let losses = self.transport.link_losses(peer);
            let seen = self.link_losses_seen.insert(peer, losses).unwrap_or(0);
            if losses <= seen {
                continue;
            }
            let soft = self.core.soft_state();
            if soft.role == Role::Follower && soft.leader_id == Some(peer) {
                self.metrics.leader_links_lost.inc();
                tracing::info!(
                    id = self.transport.id(),
                    leader = peer,
                    "connection to the leader lost; the next election comes early unless it is heard from"
                );
            }
            self.core.on_link_lost(peer);
        }
    }

    /// Returns false when the node must stop.
    fn on_event(&mut self, event: Event) -> bool {
        match event {
            Event::Persisted { index, term } => {
                self.log.expose_up_to(index);
                self.core.on_persisted(index, term);
            }
            Event::Applied { index } => self.core.on_applied(index),
            Event::SnapshotTaken { meta, compact_upto } => {
                self.core.on_snapshot_taken(meta);
                if compact_upto >= self.log.wal.first_index() {
                    // Compaction deletes whole segments; it runs off the raft loop, on a
                    // guarded thread: a panic there stops the node like one on any other
                    // thread (a tokio blocking task would swallow it and the node would go
                    // on with the WAL's locks poisoned). A failed compaction poisons the
                    // WAL, so the next append stops the node.
                    let log = self.log.clone();
                    spawn_thread("compaction", self.events_tx.clone(), move || {
                        if let Err(e) = log.wal.compact_prefix(compact_upto) {
                            tracing::warn!("log compaction up to {compact_upto} failed: {e}");
                        }
                    });
                }
            }
            Event::FirstStartConfirmed => self.awaiting_first_start = false,
            Event::RemovedFromMembership {
                index,
                confirmed_by,
            } => return self.on_removed(index, confirmed_by),
            Event::SnapshotInstalled(meta) => {
                self.log.expose_up_to(meta.last_index);
                self.core.on_snapshot_installed(meta);
            }
            Event::SnapshotFailed(meta) => self.core.on_snapshot_failed(meta),
            Event::Fatal(failure) => {
                let _ = self.fatal.send(Some(Arc::new(failure)));
                return false;
            }
        }
        true
    }

    fn on_request(&mut self, request: Request) {
        match request {
            Request::Propose { command, reply } => match self.core.propose(command) {
                Ok((index, term)) => {
                    self.metrics.proposals.inc();
                    let (tx, rx) = oneshot::channel();
                    self.pending
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(index, PendingWrite { term, reply: tx });
                    let _ = reply.send(Ok(rx));
                }
                Err(e) => {
                    self.metrics.proposals_refused.inc();
                    let _ = reply.send(Err(e));
                }
            },
            Request::Read { mode, reply } => {
                if mode == ReadMode::Lease {
                    // The lease is judged at this instant, not when the batch began.
                    self.catch_up_ticks();
                }
                let ctx = self.next_read_ctx;
                self.next_read_ctx += 1;
                match self.core.read_index(ctx, mode) {
                    Ok(()) => {
                        self.pending_reads.insert(ctx, reply);
                    }
                    Err(ProposeError::NotLeader { leader_hint }) => {
                        let _ = reply.send(Err(leader_hint));
                    }
                    Err(_) => {
                        let _ = reply.send(Err(None));
                    }
                }
            }
            Request::Status { reply } => {
                let _ = reply.send(self.core.status());
            }
            Request::TransferLeadership { to, reply } => transfer::start(
                &mut self.core,
                &mut self.transfers,
                &self.metrics,
                to,
                reply,
            ),
            Request::ChangeMembership { op, force, reply } => {
                let answer = self.membership_driver.request(
                    &mut self.core,
                    &self.pending,
                    &self.metrics,
                    op,
                    force,
                );
                let _ = reply.send(answer);
            }
            Request::Replication { reply } => {
                let _ = reply.send(self.replication_report());
            }
        }
    }

    fn handle_ready(&mut self, ready: Ready) {
        if let Some(soft) = ready.soft_state {
            self.on_soft_state(soft);
        }
        for envelope in ready.messages {
            if let raft::Message::InstallSnapshot {
                meta,
                data,
                done,
                offset,
                ..
            } = &envelope.message
            {
                self.metrics.snapshot_bytes_sent.add(data.len() as u64);
                if *done {
                    self.metrics.snapshots_sent.inc();
                    tracing::info!(
                        to = envelope.to,
                        last_index = meta.last_index,
                        bytes = offset + data.len() as u64,
                        "sent the last chunk of a snapshot"
                    );
                } else if *offset == 0 {
                    tracing::info!(
                        to = envelope.to,
                        last_index = meta.last_index,
                        "sending a snapshot"
                    );
                }
            }
            let _ = self.transport.send(envelope);
        }
        if let Some(first) = ready.entries.first() {
            self.log.hide_from(first.index);
        }
        // New entries may carry a configuration, and may also replace a suffix that held
        // one (the core then reverts to the previous configuration); a snapshot brings its own.
        if !ready.entries.is_empty() || ready.snapshot_chunk.is_some() {
            self.refresh_membership_if_changed();
        }
        let needs_write = ready.snapshot_chunk.is_some()
            || !ready.entries.is_empty()
            || ready.hard_state.is_some()
            || !ready.persisted_messages.is_empty();
        if needs_write {
            let _ = self.write_tx.send(WriteJob {
                snapshot_chunk: ready.snapshot_chunk,
                entries: ready.entries,
                hard_state: ready.hard_state,
                messages: ready.persisted_messages,
            });
        }
        if let Some(committed) = ready
            .committed_entries
            .iter()
            .rev()
            .find(|e| e.kind == storage::EntryKind::Membership)
        {
            self.prune_peers(&committed.payload);
        }
        if !ready.committed_entries.is_empty() {
            let _ = self
                .apply_tx
                .send(ApplyJob::Entries(ready.committed_entries));
        }
        for read in ready.read_states {
            if let Some(reply) = self.pending_reads.remove(&read.ctx) {
                let _ = reply.send(Ok(read.index));
            }
        }
        for failed in ready.failed_reads {
            if let Some(reply) = self.pending_reads.remove(&failed.ctx) {
                let _ = reply.send(Err(failed.leader_hint));
            }
        }
    }

    fn on_soft_state(&mut self, soft: raft::SoftState) {
        self.leader.send_if_modified(|leader| {
            let changed = *leader != soft.leader_id;
            *leader = soft.leader_id;
            changed
        });
        // The core logs role changes itself; the node only counts elections.
        if self.last_role != Some(soft.role) && soft.role == Role::Candidate {
            self.metrics.elections.inc();
        }
        if matches!(soft.role, Role::PreCandidate | Role::Candidate) {
            self.watch_own_removal();
        }
        self.last_role = Some(soft.role);
    }

    /// The applied membership at `index` no longer names this node. Returns false when the
    /// node must stop. Only an applied (so committed) removal counts: an appended one can
    /// still be truncated. A later appended configuration that names this node again (it was
    /// re-added, and is now replaying history) wins.
    fn on_removed(&mut self, index: u64, confirmed_by: Option<NodeId>) -> bool {
        let status = self.core.status();
        if confirmed_by.is_none() && status.membership.members.contains_key(&status.id) {
            return true;
        }
        let tombstone = storage::stable::Tombstone {
            removed_at_index: index,
        };
        let failure = NodeFailure::from(match self.stable.save_tombstone(&tombstone) {
            Ok(()) => MembershipLoss::Removed(Removal {
                id: status.id,
                dir: self.data_dir.clone(),
                removed_at_index: tombstone.removed_at_index,
            }),
            Err(source) => MembershipLoss::RemovedTombstoneUnsaved {
                id: status.id,
                dir: self.data_dir.clone(),
                removed_at_index: index,
                source,
            },
        });
        tracing::error!("{failure}");
        let _ = self.fatal.send(Some(Arc::new(failure)));
        false
    }

    /// One loud warning per follower the leader caught with a log that went backwards
    /// below what it acknowledged (the core cannot log; it counts, and flags the follower
    /// in `member_progress` until it caught up again).
    fn warn_log_regressions(&mut self) {
        let seen = self.core.log_regressions();
        if seen == self.log_regressions_warned {
            return;
        }
        self.log_regressions_warned = seen;
        let mut regressed: Vec<_> = self
            .core
            .member_progress()
            .into_iter()
            .filter_map(|p| p.log_regressed.map(|r| (p.id, r)))
            .collect();
        // It may have caught up already (and be unflagged) within this loop iteration.
        if let Some(last) = self.core.last_log_regression() {
            if !regressed.iter().any(|(id, _)| *id == last.0) {
                regressed.push(last);
            }
        }
        for (id, r) in regressed {
            tracing::warn!(
                follower = id,
                match_index = r.match_index,
                reported_last_index = r.last_index,
                "node {id} lost log entries it had acknowledged: the leader had it matched up \
                 to index {} but it reports its log ends at index {}. The leader is \
                 re-replicating to it, but its disk lost data it promised to keep (a lost \
                 tail, a restored backup) and it may have voted on that promise: check its \
                 disk, then remove it (`raftlog members remove {id}`) and start it again with \
                 an empty data directory and --join to re-add it",
                r.match_index,
                r.last_index,
            );
        }
    }

    fn replication_report(&self) -> Option<ReplicationReport> {
        let progress = self.core.member_progress();
        if progress.is_empty() {
            return None;
        }
        let status = self.core.status();
        let tick_ms = self.tick.as_millis() as u64;
        let voters = status.membership.voters().collect();
        let reachable = self.membership_driver.reachable(&self.core);
        Some(ReplicationReport {
            failure_tolerance: membership::failure_tolerance(&voters, &reachable),
            members: progress
                .iter()
                .map(|p| MemberReplication {
                    id: p.id,
                    match_index: p.match_index,
                    lag: status.last_log_index.saturating_sub(p.match_index),
                    last_contact_ms: p.ticks_since_contact.saturating_mul(tick_ms),
                    log_regressed: p.log_regressed,
                    snapshot: p.snapshot_sending.map(|s| SnapshotSendReport {
                        last_index: s.last_index,
                        bytes_sent: s.bytes_sent,
                        bytes_total: self.snapshot_bytes(s.last_index, s.last_term),
                    }),
                })
                .collect(),
        })
    }

    /// Size of the snapshot the core streams, the data it hands out in chunks. The core
    /// always sends the latest snapshot, so only that one is looked up (a stat of one file,
    /// and only while a transfer runs).
    fn snapshot_bytes(&self, last_index: u64, last_term: u64) -> Option<u64> {
        let meta = self.log.snapshot_meta();
        if (meta.last_index, meta.last_term) != (last_index, last_term) {
            return None;
        }
        self.log.snapshots.data_len(&meta).ok()
    }

    fn refresh_membership_if_changed(&mut self) {
        let current = self.core.status().membership;
        let changed = *self.membership.read().unwrap_or_else(|p| p.into_inner()) != current;
        if changed {
            self.refresh_membership();
        }
    }

    /// A membership entry was appended: it is in effect at once (thesis §4.1), but the
    /// transport keeps the members it drops until it commits. Otherwise a follower that
    /// appends its leader's removal can no longer answer that leader, the entry never
    /// commits on the leader, and the removed leader cannot tell its client the outcome.
    /// A removed node never learns that its removal committed: the leader stops replicating
    /// to it as soon as the configuration without it is appended (thesis §4.2.2). It only
    /// notices that it hears from no leader. So once it starts an election, ask the members
    /// whether a leader committed a configuration without this node (see `bootstrap`).
    fn watch_own_removal(&mut self) {
        if self.watching_removal.swap(true, Ordering::Relaxed) {
            return;
        }
        let status = self.core.status();
        tokio::spawn(bootstrap::confirm_removal(
            status.id,
            status.membership,
            self.leader.subscribe(),
            self.watching_removal.clone(),
            self.events_tx.clone(),
            self.api_tls.clone(),
        ));
    }

    fn refresh_membership(&mut self) {
        let membership = self.core.status().membership;
        let mut shared = self.membership.write().unwrap_or_else(|p| p.into_inner());
        let mut peers = raft_peers(&shared);
        peers.extend(raft_peers(&membership));
        self.transport.set_peers(peers);
        *shared = membership;
    }

    /// A membership entry committed: peers it removed may go now, unless a later
    /// (appended, uncommitted) configuration still has them.
    fn prune_peers(&mut self, committed_payload: &[u8]) {
        let Ok(committed) = raft::decode_membership(committed_payload) else {
            return;
        };
        let current = self.core.status().membership;
        let mut peers = raft_peers(&committed);
        peers.extend(raft_peers(&current));
        self.transport.set_peers(peers);
    }
}
