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
pub mod log_storage;
pub mod writer;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use storage::snapshot::SnapshotStore;
use storage::stable::StableStore;
use storage::wal::{Wal, WalOptions};
use storage::{Membership, NodeId, SnapshotMeta};
use tokio::sync::{mpsc, oneshot, watch};

use self::apply::{Applier, ApplyJob, PendingWrite, PendingWrites, WriteOutcome};
use self::log_storage::{DurableLog, NodeLogStorage};
use self::writer::{WriteJob, Writer};
use crate::kv::{Replicated, StateMachine};
use crate::raft::{self, Envelope, ProposeError, RaftCore, ReadMode, Ready, Role};
use crate::transport::{Transport, TransportConfig};

/// Everything a node needs to start.
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
    /// Where this node serves clients.
    pub api_addr: SocketAddr,
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
    /// The core's clock period.
    pub tick: Duration,
}

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
    /// A snapshot from the leader is durable, verified and the log reconciled with it.
    SnapshotInstalled(SnapshotMeta),
    /// A snapshot from the leader could not be written or failed verification.
    SnapshotFailed(SnapshotMeta),
    Fatal(String),
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
}

/// Node-wide counters for `/metrics`.
#[derive(Default)]
pub struct Metrics {
    /// Client writes proposed.
    pub proposals: Counter,
    /// Proposals refused (not leader, back-pressure).
    pub proposals_refused: Counter,
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
    /// Size of the last snapshot taken, bytes.
    pub snapshot_last_bytes: Counter,
    /// Total snapshot bytes written locally.
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
}

impl Metrics {
    fn record_wal_append(&self, entries: u64, bytes: u64, elapsed: Duration) {
        self.wal_appends.inc();
        self.wal_entries.add(entries);
        self.wal_bytes.add(bytes);
        self.wal_append_micros.add(elapsed.as_micros() as u64);
    }

    fn record_snapshot(&self, bytes: u64, elapsed: Duration) {
        self.snapshots_taken.inc();
        self.snapshot_last_bytes.0.store(bytes, Ordering::Relaxed);
        self.snapshot_bytes_written.add(bytes);
        self.snapshot_millis.add(elapsed.as_millis() as u64);
    }

    fn add_snapshot_bytes_received(&self, bytes: u64) {
        self.snapshot_bytes_received.add(bytes);
    }
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Storage could not be opened or recovered.
    #[error("{0}")]
    Storage(#[from] storage::Error),
    /// The peer transport could not start.
    #[error("cannot listen for peers on {addr}: {source}")]
    Transport {
        /// The raft address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The durable state is inconsistent.
    #[error("{0}")]
    Inconsistent(String),
}

/// The client-facing handle of a running node. Cheap to clone.
pub struct Node<S: StateMachine> {
    /// This node's id.
    pub id: NodeId,
    requests: mpsc::Sender<Request>,
    /// The replicated state machine, for reads.
    pub state: Arc<RwLock<Replicated<S>>>,
    applied: watch::Receiver<u64>,
    apply_jobs: mpsc::UnboundedSender<ApplyJob>,
    /// Counters for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// The peer transport (for its metrics).
    pub transport: Transport,
    /// The durable log (for `GET /v1/log`).
    pub log: Arc<DurableLog>,
    leader: watch::Receiver<Option<NodeId>>,
    membership: Arc<RwLock<Membership>>,
    fatal: watch::Receiver<Option<String>>,
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
        }
    }
}

/// Why a client request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestError {
    /// This node does not lead; `leader` if known. Nothing was proposed.
    NotLeader(Option<NodeId>),
    /// The node is shutting down or failed. Nothing was proposed.
    Stopped,
    /// The outcome is unknown (timeout, or a snapshot replaced the log around it).
    Unknown,
    /// The write was proposed but another entry committed at its index: not applied.
    NotCommitted,
    /// Refused for another reason (e.g. a membership change in progress).
    Refused(String),
}

impl<S: StateMachine> Node<S> {
    /// Proposes `command` (a serialized [`crate::kv::Command`]) and waits until it is
    /// applied, for at most `timeout`.
    pub async fn write(
        &self,
        command: Bytes,
        timeout: Duration,
    ) -> Result<(u64, crate::kv::Applied), RequestError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request::Propose { command, reply })
            .await
            .map_err(|_| RequestError::Stopped)?;
        let waiting = match answer.await.map_err(|_| RequestError::Stopped)? {
            Ok(waiting) => waiting,
            Err(ProposeError::NotLeader { leader_hint }) => {
                return Err(RequestError::NotLeader(leader_hint))
            }
            Err(other) => return Err(RequestError::Refused(other.to_string())),
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
        match self.write(wrapped.encode().into(), timeout).await? {
            (index, crate::kv::Applied::Fresh(response)) => Ok((index, response)),
            (index, crate::kv::Applied::Duplicate { response, .. }) => Ok((index, response)),
            (_, other) => Err(RequestError::Refused(format!(
                "the command was not applied: {other:?}"
            ))),
        }
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

    /// The current status.
    pub async fn status(&self) -> Result<NodeStatus, RequestError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request::Status { reply })
            .await
            .map_err(|_| RequestError::Stopped)?;
        answer.await.map_err(|_| RequestError::Stopped)
    }

    /// Takes a snapshot now; returns its last index.
    pub async fn snapshot(&self) -> Result<u64, String> {
        let (reply, answer) = oneshot::channel();
        self.apply_jobs
            .send(ApplyJob::TakeSnapshot(reply))
            .map_err(|_| "the node is stopping".to_string())?;
        answer
            .await
            .map_err(|_| "the node is stopping".to_string())?
    }

    /// The leader this node last knew of (without asking the raft loop).
    pub fn leader_hint(&self) -> Option<NodeId> {
        *self.leader.borrow()
    }

    /// Resolves once this node knows of a leader other than `leader` (or of none).
    pub async fn leader_changed_from(&self, leader: NodeId) {
        let mut watch = self.leader.clone();
        let _ = watch.wait_for(|current| *current != Some(leader)).await;
    }

    /// The membership in effect (as last reported by the core).
    pub fn membership(&self) -> Membership {
        self.membership
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Resolves when the node hits a fatal error; carries the message.
    pub async fn failed(&self) -> String {
        let mut fatal = self.fatal.clone();
        let message = match fatal.wait_for(|f| f.is_some()).await {
            Ok(message) => message.clone().unwrap_or_default(),
            Err(_) => "the node stopped".to_string(),
        };
        message
    }
}

fn core_config(options: &NodeOptions) -> raft::Config {
    let ticks = |d: Duration| (d.as_millis() / options.tick.as_millis().max(1)).max(1) as u32;
    let mut config = raft::Config::new(options.id);
    config.heartbeat_interval_ticks = ticks(options.heartbeat_interval);
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
    let dir = &options.data_dir;
    std::fs::create_dir_all(dir)
        .map_err(|e| storage::Error::io("create data directory", dir, e))?;
    let stable = Arc::new(StableStore::open(dir.join("stable"))?);
    let snapshots = SnapshotStore::open(dir.join("snapshots"))?;
    let wal = Wal::open(
        &dir.join("wal"),
        WalOptions {
            segment_size_bytes_max: options.wal_segment_bytes,
            ..WalOptions::default()
        },
    )?;
    if stable.is_fresh() && (wal.last_index() > 0 || snapshots.latest()?.is_some()) {
        // The log survived but the term and vote did not: restarting at term 0 could let
        // this node vote twice in a term. Refuse rather than guess.
        return Err(StartError::Inconsistent(format!(
            "{}: the stable store (term, vote, membership) is missing or empty but the log \
             holds entries up to {}; the node cannot know whom it voted for. Restore the \
             data directory from a backup, or remove it and re-add this node as a new member",
            dir.display(),
            wal.last_index()
        )));
    }
    stable.bind_identity(&options.cluster_id, options.id)?;
    let bootstrap = match stable.membership()? {
        Some(membership) => membership,
        None => {
            stable.save_membership(&options.bootstrap)?;
            options.bootstrap.clone()
        }
    };
    let hard_state = stable.hard_state()?;

    // The newest snapshot that verifies; an older one is good enough if the log covers the gap.
    let snapshot_meta = snapshots.latest_verified()?.unwrap_or_default();
    let log = Arc::new(DurableLog::new(wal, snapshots, snapshot_meta.clone()));
    // Checked with or without a snapshot: a compacted log whose snapshot files are all
    // gone must not start from an empty state machine either.
    if log.wal.first_index() > snapshot_meta.last_index + 1 {
        return Err(StartError::Inconsistent(format!(
            "{}: the log starts at entry {} but the newest usable snapshot ends at {}{}: \
             entries in between are lost. Restore the data directory from a backup, or \
             remove it and re-add this node as a new member",
            dir.display(),
            log.wal.first_index(),
            snapshot_meta.last_index,
            skipped_snapshots(&log.snapshots, &snapshot_meta)
        )));
    }
    if snapshot_meta.last_index > 0 {
        writer::reconcile_log_with_snapshot(&log, &snapshot_meta)
            .map_err(StartError::Inconsistent)?;
    }
    // Any newer snapshot failed verification and the log covers for it: set it aside so
    // retention never deletes the snapshot this node now relies on in its favor.
    log.snapshots.quarantine_newer_than(&snapshot_meta)?;

    let metrics = Arc::new(Metrics::default());
    let mut replicated = Replicated::new(state_machine);
    if snapshot_meta.last_index > 0 {
        let mut reader = log.snapshots.open_reader(&snapshot_meta)?;
        replicated.restore(&mut reader).map_err(|e| {
            StartError::Inconsistent(format!(
                "{}: cannot restore the state machine from snapshot {}: {e}",
                dir.display(),
                snapshot_meta.last_index
            ))
        })?;
        tracing::info!(
            last_index = snapshot_meta.last_index,
            "restored state machine from snapshot"
        );
    }

    let storage = NodeLogStorage(log.clone());
    let core = RaftCore::new(
        core_config(&options),
        storage,
        hard_state,
        bootstrap.clone(),
    );
    let initial_membership = core.status().membership;
    let peers = raft_peers(&initial_membership);
    let transport_config = TransportConfig::new(
        options.id,
        options.cluster_id.clone(),
        options.raft_addr,
        peers,
    );
    let (transport, inbound) =
        Transport::start(transport_config)
            .await
            .map_err(|source| StartError::Transport {
                addr: options.raft_addr,
                source,
            })?;

    let state = Arc::new(RwLock::new(replicated));
    let (applied_tx, applied_rx) = watch::channel(snapshot_meta.last_index);
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let (apply_tx, apply_rx) = mpsc::unbounded_channel();
    let (write_tx, write_rx) = mpsc::unbounded_channel();
    let (requests_tx, requests_rx) = mpsc::channel(65_536);
    let (fatal_tx, fatal_rx) = watch::channel(None);
    let pending: PendingWrites = Arc::default();

    let applier = Applier {
        state: state.clone(),
        log: log.clone(),
        pending: pending.clone(),
        applied_tx,
        events: events_tx.clone(),
        jobs_tx: apply_tx.clone(),
        metrics: metrics.clone(),
        snapshot_threshold: options.snapshot_threshold.max(1),
        snapshot_trailing_entries: options.snapshot_trailing_entries,
        membership: if snapshot_meta.last_index > 0 {
            snapshot_meta.membership.clone()
        } else {
            bootstrap.clone()
        },
        applied_index: snapshot_meta.last_index,
        applied_term: snapshot_meta.last_term,
        last_snapshot_index: snapshot_meta.last_index,
        snapshot_in_progress: false,
        snapshot_waiters: Vec::new(),
    };
    spawn_thread("apply", move || applier.run(apply_rx));
    let writer = Writer {
        log: log.clone(),
        stable: stable.clone(),
        transport: transport.clone(),
        events: events_tx.clone(),
        apply: apply_tx.clone(),
        metrics: metrics.clone(),
    };
    spawn_thread("persist", move || writer.run(write_rx));

    let (leader_tx, leader_rx) = watch::channel(None);
    let membership = Arc::new(RwLock::new(initial_membership));
    let raft_loop = RaftLoop {
        core,
        log: log.clone(),
        transport: transport.clone(),
        write_tx,
        apply_tx: apply_tx.clone(),
        pending,
        pending_reads: HashMap::new(),
        next_read_ctx: 1,
        leader: leader_tx,
        membership: membership.clone(),
        metrics: metrics.clone(),
        fatal: fatal_tx,
        last_role: None,
    };
    tokio::spawn(raft_loop.run(options.tick, inbound, requests_rx, events_rx));

    Ok(Node {
        id: options.id,
        requests: requests_tx,
        state,
        applied: applied_rx,
        apply_jobs: apply_tx,
        metrics,
        transport,
        log,
        leader: leader_rx,
        membership,
        fatal: fatal_rx,
    })
}

/// Names the snapshot files newer than `used` that startup skipped because they failed
/// verification (the reason is in the log line above), for the error that follows.
fn skipped_snapshots(snapshots: &SnapshotStore, used: &SnapshotMeta) -> String {
    let used_name = snapshots
        .file_path(used.last_index, used.last_term)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut skipped: Vec<String> = std::fs::read_dir(snapshots.dir())
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                // Names are zero-padded `snap-<index>-<term>.snap`: newer sorts later.
                .filter(|n| n.starts_with("snap-") && n.ends_with(".snap") && *n > used_name)
                .collect()
        })
        .unwrap_or_default();
    if skipped.is_empty() {
        return String::new();
    }
    skipped.sort();
    let paths: Vec<String> = skipped
        .iter()
        .map(|n| snapshots.dir().join(n).display().to_string())
        .collect();
    format!(" (newer snapshot {} failed verification)", paths.join(", "))
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

fn spawn_thread(name: &str, body: impl FnOnce() + Send + 'static) {
    let spawned = std::thread::Builder::new()
        .name(format!("raftlog-{name}"))
        .spawn(body);
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
    fatal: watch::Sender<Option<String>>,
    last_role: Option<Role>,
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
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                Some(event) = events.recv() => {
                    if !self.on_event(event) {
                        return;
                    }
                    while let Ok(event) = events.try_recv() {
                        if !self.on_event(event) {
                            return;
                        }
                    }
                }
                _ = ticker.tick() => self.core.tick(),
                Some(envelope) = inbound.recv() => {
                    self.core.step(envelope);
                    while let Ok(envelope) = inbound.try_recv() {
                        self.core.step(envelope);
                    }
                }
                Some(request) = requests.recv() => {
                    self.on_request(request);
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
                let message = format!("the Raft core stopped: {error}");
                tracing::error!("{message}");
                let _ = self.fatal.send(Some(message));
                return;
            }
            while self.core.has_ready() {
                let ready = self.core.take_ready();
                self.handle_ready(ready);
            }
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
                    // Compaction deletes whole segments; it runs off the raft loop.
                    let log = self.log.clone();
                    tokio::task::spawn_blocking(move || {
                        if let Err(e) = log.wal.compact_prefix(compact_upto) {
                            tracing::warn!("log compaction up to {compact_upto} failed: {e}");
                        }
                    });
                }
            }
            Event::SnapshotInstalled(meta) => {
                self.log.expose_up_to(meta.last_index);
                self.core.on_snapshot_installed(meta);
            }
            Event::SnapshotFailed(meta) => self.core.on_snapshot_failed(meta),
            Event::Fatal(message) => {
                let _ = self.fatal.send(Some(message));
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
            if ready
                .entries
                .iter()
                .any(|e| e.kind == storage::EntryKind::Membership)
            {
                self.refresh_membership();
            }
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
        self.last_role = Some(soft.role);
    }

    fn refresh_membership(&mut self) {
        let membership = self.core.status().membership;
        self.transport.set_peers(raft_peers(&membership));
        *self.membership.write().unwrap_or_else(|p| p.into_inner()) = membership;
    }
}
