//! The cluster file, `config.json`: parsed, then validated before anything touches disk.
//!
//! Shape and defaults are in API.md ("Cluster file"). Every problem is reported as one line
//! naming the file and the field, e.g.
//! `config.json: nodes."2".api_addr: duplicate address 127.0.0.1:8001 (also nodes."1".api_addr)`;
//! the CLI prints it and exits with status 2.
//!
//! The file is first read into a small JSON tree that keeps object keys in order and
//! refuses duplicate keys (serde_json's `Value` would silently keep the last one, so two
//! `"1"` entries under `nodes` would quietly merge), then walked with the field path in
//! hand, so each message can say exactly where the problem is. Unknown fields are refused
//! at every level (the equivalent of serde's `deny_unknown_fields`).
//!
//! A relative `data_dir` is relative to the working directory, as etcd's `--data-dir` is.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use storage::{Member, Membership, NodeId};

/// Default of `data_dir`.
pub const DEFAULT_DATA_DIR: &str = "./data";
/// Default of `heartbeat_interval_ms`.
pub const DEFAULT_HEARTBEAT_INTERVAL_MS: u64 = 50;
/// Default of `election_timeout_ms`.
pub const DEFAULT_ELECTION_TIMEOUT_MS: (u64, u64) = (150, 300);
/// Default of `snapshot_threshold`.
pub const DEFAULT_SNAPSHOT_THRESHOLD: u64 = 10_000;
/// Default of `snapshot_trailing_entries`.
pub const DEFAULT_SNAPSHOT_TRAILING_ENTRIES: u64 = 5_000;
/// Default of `promote_lag_entries`.
pub const DEFAULT_PROMOTE_LAG_ENTRIES: u64 = 1_000;
/// Default of `promote_stable_ms`.
pub const DEFAULT_PROMOTE_STABLE_MS: u64 = 1_000;
/// Default of `wal_segment_bytes` (the WAL's own default).
pub const DEFAULT_WAL_SEGMENT_BYTES: u64 = 64 << 20;
/// Accepted range of `wal_segment_bytes`: below 1 MiB a busy log rolls segments (two
/// extra syncs each) too often; above 1 GiB one segment is more disk than most logs need.
pub const WAL_SEGMENT_BYTES_RANGE: std::ops::RangeInclusive<u64> = (1 << 20)..=(1 << 30);

// Issue 12 "net": bounded client connections (`src/api/server.rs`).
/// Default of `client_header_read_timeout_ms`: far more than a client on any network
/// needs to send its request headers, short enough that silent connections do not pile up.
pub const DEFAULT_CLIENT_HEADER_READ_TIMEOUT_MS: u64 = 10_000;
/// Default of `client_idle_timeout_ms`. A keep-alive connection waiting for its next
/// request is already closed after the header-read timeout (hyper starts that timer
/// whenever it waits for a request head); this one also bounds a connection whose answer
/// moves no byte for a minute.
pub const DEFAULT_CLIENT_IDLE_TIMEOUT_MS: u64 = 60_000;
/// Accepted range of `max_client_connections`.
pub const MAX_CLIENT_CONNECTIONS_RANGE: std::ops::RangeInclusive<u64> = 1..=1_000_000;
/// Accepted range of both client timeouts: from 100 ms to an hour.
pub const CLIENT_TIMEOUT_MS_RANGE: std::ops::RangeInclusive<u64> = 100..=3_600_000;
// Issue 12, "logpage": bounded `GET /v1/log` pages and the `POST /v1/snapshot` timeout.
/// Default of `log_page_max_bytes`: a few 1 MiB values per page, little enough that a
/// node answering many pages at once keeps its memory.
pub const DEFAULT_LOG_PAGE_MAX_BYTES: u64 = 4 << 20;
/// Accepted range of `log_page_max_bytes`: below 4 KiB most pages would hold one entry;
/// above 256 MiB one page can take a node's memory.
pub const LOG_PAGE_MAX_BYTES_RANGE: std::ops::RangeInclusive<u64> = (4 << 10)..=(256 << 20);
/// Default of `log_read_max_bytes_per_second`: on 2 cores with 16 writers, pages pulled at
/// 57 MB/s raised the write p99 1.25x and at 245 MB/s 2.8x (`tests/log_page_bounds.rs`);
/// 64 MiB/s still reads a log of 2,000 values of 1 MiB in about half a minute.
pub const DEFAULT_LOG_READ_MAX_BYTES_PER_SECOND: u64 = 64 << 20;
/// Accepted range of `log_read_max_bytes_per_second` besides 0 (no limit): below 1 MiB/s
/// one full page would take seconds.
pub const LOG_READ_MAX_BYTES_PER_SECOND_RANGE: std::ops::RangeInclusive<u64> =
    (1 << 20)..=(1 << 40);
/// Default of `log_page_max_entries` (what `limit` is capped at).
pub const DEFAULT_LOG_PAGE_MAX_ENTRIES: u64 = 10_000;
/// Accepted range of `log_page_max_entries`.
pub const LOG_PAGE_MAX_ENTRIES_RANGE: std::ops::RangeInclusive<u64> = 1..=1_000_000;
/// Default of `snapshot_request_timeout_ms`: a minute writes a snapshot of several GiB on
/// an ordinary disk, and a client that waited that long is better told than kept hanging.
pub const DEFAULT_SNAPSHOT_REQUEST_TIMEOUT_MS: u64 = 60_000;
// Issue 12, diskfull: the storage quota.
/// The smallest `storage_quota_bytes` accepted, in WAL segments: the active segment, the
/// one prepared ahead and the two kept for reuse are allocated in full however little the
/// log holds, so a smaller quota would refuse every write from the start.
pub const STORAGE_QUOTA_SEGMENTS_MIN: u64 = 4;
// Issue 12, overload: proposals bounded in bytes.
/// Default of `max_uncommitted_bytes`: 32 MiB. The WAL's group commit sustains 50–100 MiB/s
/// here (`docs/BENCHMARKS.md`), so this is 0.3–0.6 s of disk work: enough to keep every
/// fsync batch full (a batch is capped at ~1 MiB), small next to a node's memory.
pub const DEFAULT_MAX_UNCOMMITTED_BYTES: u64 = 32 << 20;
/// Default of `pending_write_bytes_max`: 64 MiB, twice `max_uncommitted_bytes`. The budget
/// also covers writes still queued for the raft loop and writes committed but not yet
/// applied and answered, so it must exceed the uncommitted bound for that bound to be
/// reachable; twice leaves as much again for those. 64 one-MiB values, or 64 Ki tiny writes
/// (each is charged 1 KiB of overhead).
pub const DEFAULT_PENDING_WRITE_BYTES_MAX: u64 = 64 << 20;
/// Accepted range of `max_uncommitted_bytes` and `pending_write_bytes_max`: at least one
/// value of the largest size (1 MiB), at most 4 GiB less one byte (the budget's permits are
/// counted in a `u32`).
pub const PENDING_BYTES_RANGE: std::ops::RangeInclusive<u64> = (1 << 20)..=(u32::MAX as u64);
// Issue 14: when to snapshot, by log bytes and time as well as by entries.
/// Default of `snapshot_threshold_bytes`: one default WAL segment. Compaction frees whole
/// segments, so a smaller log between snapshots frees nothing more; with 1 MiB values the
/// entry threshold alone would let 10 GiB of log pile up before a snapshot.
pub const DEFAULT_SNAPSHOT_THRESHOLD_BYTES: u64 = 64 << 20;
/// Accepted range of `snapshot_threshold_bytes`: from 1 MiB (the largest value) to 1 TiB.
pub const SNAPSHOT_THRESHOLD_BYTES_RANGE: std::ops::RangeInclusive<u64> = (1 << 20)..=(1 << 40);
/// Default of `snapshot_min_interval_ms`. A snapshot writes the whole state and fsyncs it;
/// at 45,000 writes/s the entry threshold alone started 4–5 a second and cost the write
/// path its tail (issue 14: p99.9 27.8 ms against 4.2 ms with rare snapshots). One a
/// second bounds that cost whatever the write rate, while the log between snapshots stays
/// one second of writes plus the thresholds.
pub const DEFAULT_SNAPSHOT_MIN_INTERVAL_MS: u64 = 1_000;
/// Accepted range of `snapshot_min_interval_ms`: 0 (no minimum) to an hour.
pub const SNAPSHOT_MIN_INTERVAL_MS_RANGE: std::ops::RangeInclusive<u64> = 0..=3_600_000;

// Issue 17: readiness of a follower that is far behind.
/// Default of `ready_max_lag_entries`: a follower this many entries behind the cluster's
/// commit index answers `/readyz` 503. At the 45,000 writes/s measured in
/// docs/BENCHMARKS.md that is a fraction of a second of writes: a node that has just caught
/// up is ready, one still replaying or receiving a backlog is not.
pub const DEFAULT_READY_MAX_LAG_ENTRIES: u64 = 10_000;
/// Accepted range of `ready_max_lag_entries`: 0 (no lag check) to a billion.
pub const READY_MAX_LAG_ENTRIES_RANGE: std::ops::RangeInclusive<u64> = 0..=1_000_000_000;

// Issue 15: watch.
/// Default of `watchers_max`: enough for a busy service's caches and indexes; 1,000 idle
/// watchers cost about 15 MiB and no threads (docs/BENCHMARKS.md, "Watch").
pub const DEFAULT_WATCHERS_MAX: u64 = 4096;
/// Accepted range of `watchers_max`.
pub const WATCHERS_MAX_RANGE: std::ops::RangeInclusive<u64> = 1..=1_000_000;
/// Default of `watch_buffer_bytes_max`: a few large values, or thousands of small events,
/// buffered for one watcher before it is cut as too slow.
pub const DEFAULT_WATCH_BUFFER_BYTES_MAX: u64 = 4 << 20;
/// Accepted range of `watch_buffer_bytes_max`: at least a few events, at most 1 GiB.
pub const WATCH_BUFFER_BYTES_MAX_RANGE: std::ops::RangeInclusive<u64> = (4 << 10)..=(1 << 30);

// Issue 14: the async runtime's size.
/// Accepted range of `worker_threads`.
pub const WORKER_THREADS_RANGE: std::ops::RangeInclusive<u64> = 1..=1024;
/// Default of `raft_thread_nice`: the raft loop's thread ahead of default threads, about
/// nine times their share of a busy CPU (src/node/raft_thread.rs).
pub const DEFAULT_RAFT_THREAD_NICE: i32 = -10;
/// Accepted range of `raft_thread_nice`: Linux's nice values.
pub const RAFT_THREAD_NICE_RANGE: std::ops::RangeInclusive<i64> = -20..=19;

const TOP_LEVEL_FIELDS: &[&str] = &[
    "cluster_id",
    "nodes",
    "data_dir",
    "heartbeat_interval_ms",
    "election_timeout_ms",
    "snapshot_threshold",
    "snapshot_trailing_entries",
    "wal_segment_bytes",
    "promote_lag_entries",
    "promote_stable_ms",
    // Issue 12 "net".
    "max_client_connections",
    "client_header_read_timeout_ms",
    "client_idle_timeout_ms",
    "log_page_max_bytes",
    "log_page_max_entries",
    "log_read_max_bytes_per_second",
    "snapshot_request_timeout_ms",
    "storage_quota_bytes",
    "max_uncommitted_bytes",
    "pending_write_bytes_max",
    // Issue 15.
    "watchers_max",
    "watch_buffer_bytes_max",
    // Issue 14.
    "snapshot_threshold_bytes",
    "snapshot_min_interval_ms",
    // Issue 16.
    "tls",
    "auth",
    // Issue 17.
    "ready_max_lag_entries",
    // Issue 14.
    "worker_threads",
    "raft_thread_nice",
];
/// Fields of `tls`.
const TLS_FIELDS: &[&str] = &["ca", "cert", "key"];
/// Fields of `auth`.
const AUTH_FIELDS: &[&str] = &["users"];
/// Fields of one user of `auth.users`.
const USER_FIELDS: &[&str] = &["password_hash", "role"];
const NODE_FIELDS: &[&str] = &["raft_addr", "api_addr"];

/// A configuration problem. `Display` is the single line to show the operator.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read the cluster file: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not well-formed JSON.
    #[error("{}: malformed JSON at line {line} column {column}: {message}", path.display())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error.
        column: usize,
        /// serde_json's description.
        message: String,
    },
    /// A field is missing, unknown, of the wrong type, or has a value that is not allowed.
    #[error("{}: {field}: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Where in the file, e.g. `nodes."2".api_addr` (empty for the whole document).
        field: String,
        /// What is wrong.
        message: String,
    },
}

/// A member's addresses as configured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeAddrs {
    /// Peer transport address (Raft messages).
    pub raft_addr: SocketAddr,
    /// Client HTTP API address.
    pub api_addr: SocketAddr,
}

/// A validated cluster file. Built only by [`ClusterConfig::parse`]/[`ClusterConfig::load`],
/// so every value satisfies the rules in API.md.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    path: PathBuf,
    cluster_id: String,
    // Invariant: non-empty; ids positive; the 2 × len addresses pairwise distinct.
    nodes: BTreeMap<NodeId, NodeAddrs>,
    data_dir: PathBuf,
    heartbeat_interval_ms: u64,
    // Invariant: heartbeat_interval_ms < election_timeout_ms.0 < election_timeout_ms.1.
    election_timeout_ms: (u64, u64),
    snapshot_threshold: u64,
    snapshot_trailing_entries: u64,
    wal_segment_bytes: u64,
    promote_lag_entries: u64,
    promote_stable_ms: u64,
    client_connections: ClientConnectionLimits,
    // Issue 12, "logpage".
    // Invariant: within LOG_PAGE_MAX_BYTES_RANGE.
    log_page_max_bytes: u64,
    // Invariant: within LOG_PAGE_MAX_ENTRIES_RANGE.
    log_page_max_entries: u64,
    // Invariant: 0 or within LOG_READ_MAX_BYTES_PER_SECOND_RANGE.
    log_read_max_bytes_per_second: u64,
    // Invariant: positive.
    snapshot_request_timeout_ms: u64,
    // Issue 12, diskfull.
    // Invariant: None, or at least STORAGE_QUOTA_SEGMENTS_MIN × wal_segment_bytes.
    storage_quota_bytes: Option<u64>,
    // Issue 12, overload. Invariant: both within PENDING_BYTES_RANGE.
    max_uncommitted_bytes: u64,
    pending_write_bytes_max: u64,
    // Issue 15. Invariant: within WATCHERS_MAX_RANGE and WATCH_BUFFER_BYTES_MAX_RANGE.
    watchers_max: u64,
    watch_buffer_bytes_max: u64,
    // Issue 14. Invariant: within SNAPSHOT_THRESHOLD_BYTES_RANGE.
    snapshot_threshold_bytes: u64,
    // Invariant: within SNAPSHOT_MIN_INTERVAL_MS_RANGE.
    snapshot_min_interval_ms: u64,
    // Issue 16. Invariant: each path non-empty.
    tls: Option<TlsFiles>,
    // Invariant: every hash is an Argon2id PHC string.
    auth: Option<AuthConfig>,
    // Issue 17. Invariant: within READY_MAX_LAG_ENTRIES_RANGE.
    ready_max_lag_entries: u64,
    // Issue 14. Invariant: None, or within WORKER_THREADS_RANGE.
    worker_threads: Option<u64>,
    // Issue 14. Invariant: within RAFT_THREAD_NICE_RANGE.
    raft_thread_nice: i32,
}

/// The `tls` section as written: PEM file paths, relative to the config file's directory,
/// each of which may contain `{id}` for the node's id (so one file serves every node).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The cluster CA certificate.
    pub ca: String,
    /// The node's certificate (chain), leaf first.
    pub cert: String,
    /// The node's private key.
    pub key: String,
}

/// The `auth` section (issue 16): the users allowed to use the client API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthConfig {
    /// Users by name.
    pub users: BTreeMap<String, UserEntry>,
}

/// One user of `auth.users`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserEntry {
    /// The password's Argon2id hash as a PHC string (`raftlog passwd` prints one).
    pub password_hash: String,
    /// What the user may do.
    pub role: crate::security::Role,
}

/// Bounds on the client API's connections (issue 12 "net"), so that idle or silent
/// clients cannot use up the file descriptors a node needs for its peers and its disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientConnectionLimits {
    /// `max_client_connections`: the most client connections served at once; further
    /// ones wait in the kernel's listen backlog. `None` (the default): derived from the
    /// process's file descriptor limit at start (`api::server::default_connections_max`).
    pub connections_max: Option<u64>,
    /// `client_header_read_timeout_ms`: a connection that has not sent a whole request
    /// head this long after it opened (or after its previous answer: it also bounds how
    /// long a keep-alive connection may wait between requests) is closed.
    pub header_read_timeout_ms: u64,
    /// `client_idle_timeout_ms`: a keep-alive connection with no traffic this long is closed.
    pub idle_timeout_ms: u64,
}

impl Default for ClientConnectionLimits {
    fn default() -> Self {
        ClientConnectionLimits {
            connections_max: None,
            header_read_timeout_ms: DEFAULT_CLIENT_HEADER_READ_TIMEOUT_MS,
            idle_timeout_ms: DEFAULT_CLIENT_IDLE_TIMEOUT_MS,
        }
    }
}

impl ClusterConfig {
    /// Reads and validates the cluster file at `path`.
    pub fn load(path: &Path) -> Result<ClusterConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        ClusterConfig::parse(&text, path)
    }

    /// Validates `text`; `path` is only used to name the file in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<ClusterConfig, ConfigError> {
        let json: Json = serde_json::from_str(text).map_err(|e| syntax(path, &e))?;
        Parser { path }.config(&json)
    }

    /// Checks that `id` (from `--id`) names a member of `nodes`.
    pub fn validate_node_id(&self, id: NodeId) -> Result<(), ConfigError> {
        if self.nodes.contains_key(&id) {
            return Ok(());
        }
        let known: Vec<String> = self.nodes.keys().map(|k| k.to_string()).collect();
        Err(ConfigError::Invalid {
            path: self.path.clone(),
            field: "nodes".to_string(),
            message: format!(
                "node id {id} (from --id) is not in the cluster; configured ids: {}",
                known.join(", ")
            ),
        })
    }

    /// The file this configuration came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The cluster's name; a data directory is tied to it.
    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    /// The initial voters, by id.
    pub fn nodes(&self) -> &BTreeMap<NodeId, NodeAddrs> {
        &self.nodes
    }

    /// One node's addresses.
    pub fn node(&self, id: NodeId) -> Option<&NodeAddrs> {
        self.nodes.get(&id)
    }

    /// The directory holding every node's data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Replaces `data_dir` (the `--data-dir` flag).
    pub fn with_data_dir(mut self, data_dir: impl Into<PathBuf>) -> ClusterConfig {
        self.data_dir = data_dir.into();
        self
    }

    /// The same configuration with `nodes` instead (for `raftlog cluster`, which adds
    /// nodes on the ports after the file's). The caller keeps the addresses distinct.
    pub fn with_nodes(mut self, nodes: BTreeMap<NodeId, NodeAddrs>) -> ClusterConfig {
        self.nodes = nodes;
        self
    }

    /// Where node `id` keeps its data: `<data_dir>/node-<id>`.
    pub fn node_data_dir(&self, id: NodeId) -> PathBuf {
        self.data_dir.join(format!("node-{id}"))
    }

    /// The initial membership: every configured node, as a voter.
    pub fn membership(&self) -> Membership {
        Membership {
            members: self
                .nodes
                .iter()
                .map(|(&id, addrs)| {
                    (
                        id,
                        Member {
                            raft_addr: addrs.raft_addr.to_string(),
                            api_addr: addrs.api_addr.to_string(),
                            voter: true,
                        },
                    )
                })
                .collect(),
        }
    }

    /// `heartbeat_interval_ms`.
    pub fn heartbeat_interval_ms(&self) -> u64 {
        self.heartbeat_interval_ms
    }

    /// `heartbeat_interval_ms` as a duration.
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms)
    }

    /// `election_timeout_ms` as `(min, max)`; min < max, and heartbeat < min.
    pub fn election_timeout_ms(&self) -> (u64, u64) {
        self.election_timeout_ms
    }

    /// `election_timeout_ms` as durations `(min, max)`.
    pub fn election_timeout(&self) -> (Duration, Duration) {
        (
            Duration::from_millis(self.election_timeout_ms.0),
            Duration::from_millis(self.election_timeout_ms.1),
        )
    }

    /// Entries applied since the last snapshot that trigger a new one.
    pub fn snapshot_threshold(&self) -> u64 {
        self.snapshot_threshold
    }

    /// Entries kept in the log behind a snapshot.
    pub fn snapshot_trailing_entries(&self) -> u64 {
        self.snapshot_trailing_entries
    }

    /// Size of each WAL segment file. Segments are preallocated, so a node's log takes
    /// a few of them on disk even when nearly empty.
    pub fn wal_segment_bytes(&self) -> u64 {
        self.wal_segment_bytes
    }

    /// A learner is promoted once its match index stays within this many entries of the
    /// leader's last index (for [`ClusterConfig::promote_stable`]).
    pub fn promote_lag_entries(&self) -> u64 {
        self.promote_lag_entries
    }

    /// How long a learner must stay caught up before it is promoted.
    pub fn promote_stable(&self) -> Duration {
        Duration::from_millis(self.promote_stable_ms)
    }

    /// Bounds on client connections (`max_client_connections`, `client_*_timeout_ms`).
    pub fn client_connection_limits(&self) -> ClientConnectionLimits {
        self.client_connections
    }

    /// Largest `GET /v1/log` page, bytes of JSON (a first entry larger than this is still
    /// sent, alone).
    pub fn log_page_max_bytes(&self) -> u64 {
        self.log_page_max_bytes
    }

    /// Bytes per second of `GET /v1/log` pages a node renders at most, on average over all
    /// clients (0: no limit); past it, pages wait rather than take CPU from writes.
    pub fn log_read_max_bytes_per_second(&self) -> u64 {
        self.log_read_max_bytes_per_second
    }

    /// Most entries in one `GET /v1/log` page (`limit` is capped at this).
    pub fn log_page_max_entries(&self) -> u64 {
        self.log_page_max_entries
    }

    /// How long `POST /v1/snapshot` waits for the snapshot before answering `504 timeout`.
    pub fn snapshot_request_timeout(&self) -> Duration {
        Duration::from_millis(self.snapshot_request_timeout_ms)
    }

    /// Issue 12, diskfull. Most bytes a node's data directory (WAL segments, snapshots,
    /// stable store; allocated space, preallocated segments in full) may take before the
    /// node refuses new writes with `507 no_space`, as etcd's `--quota-backend-bytes` does.
    /// `None` (the default): only a full disk refuses writes.
    pub fn storage_quota_bytes(&self) -> Option<u64> {
        self.storage_quota_bytes
    }

    /// A leader refuses a proposal (`503 overloaded`) that would take the payload bytes of
    /// its uncommitted entries past this (etcd's `MaxUncommittedEntriesSize`).
    pub fn max_uncommitted_bytes(&self) -> u64 {
        self.max_uncommitted_bytes
    }

    /// Bytes of client writes a node holds in progress (queued, proposed, being applied or
    /// forwarded) before it answers further writes `503 overloaded`.
    pub fn pending_write_bytes_max(&self) -> u64 {
        self.pending_write_bytes_max
    }

    /// Issue 15: the most watch and change-feed streams a node serves at once (more are
    /// refused `503 overloaded`).
    pub fn watchers_max(&self) -> u64 {
        self.watchers_max
    }

    /// Issue 15: bytes of events buffered for one watcher before it is cut as too slow
    /// (its stream ends with the index to resume from).
    pub fn watch_buffer_bytes_max(&self) -> u64 {
        self.watch_buffer_bytes_max
    }

    /// Issue 14: log bytes applied since the last snapshot that trigger a new one (as
    /// `snapshot_threshold` does for entries).
    pub fn snapshot_threshold_bytes(&self) -> u64 {
        self.snapshot_threshold_bytes
    }

    /// Issue 14: the least time between the starts of two snapshots the thresholds
    /// trigger (`POST /v1/snapshot` is not held back).
    pub fn snapshot_min_interval(&self) -> Duration {
        Duration::from_millis(self.snapshot_min_interval_ms)
    }

    /// Issue 17: how many entries a node may be behind the commit index it last heard from
    /// a leader and still answer `/readyz` 200 (0: no lag check).
    pub fn ready_max_lag_entries(&self) -> u64 {
        self.ready_max_lag_entries
    }

    /// Issue 14: the async runtime's worker threads, if the file sets them (`None`: the
    /// node derives them from the machine, see `cli::serve`).
    pub fn worker_threads(&self) -> Option<u64> {
        self.worker_threads
    }

    /// Issue 14: the nice value of the raft loop's thread (0: the node's own).
    pub fn raft_thread_nice(&self) -> i32 {
        self.raft_thread_nice
    }

    /// The `tls` section, if any (issue 16).
    pub fn tls(&self) -> Option<&TlsFiles> {
        self.tls.as_ref()
    }

    /// Node `id`'s TLS files: `{id}` replaced, relative paths taken from the config file's
    /// directory. `None` without a `tls` section.
    pub fn tls_paths(&self, id: NodeId) -> Option<crate::security::tls::TlsPaths> {
        let tls = self.tls.as_ref()?;
        let base = self.path.parent().unwrap_or(Path::new("."));
        let resolve = |template: &str| base.join(template.replace("{id}", &id.to_string()));
        Some(crate::security::tls::TlsPaths {
            ca: resolve(&tls.ca),
            cert: resolve(&tls.cert),
            key: resolve(&tls.key),
        })
    }

    /// The `auth` section, if any (issue 16).
    pub fn auth(&self) -> Option<&AuthConfig> {
        self.auth.as_ref()
    }

    /// Adds (or replaces) the `tls` section, e.g. for `raftlog cluster --tls`.
    pub fn with_tls(mut self, tls: TlsFiles) -> ClusterConfig {
        self.tls = Some(tls);
        self
    }

    /// The configuration as cluster-file JSON (all fields explicit), e.g. for `raftlog
    /// cluster` to write the file it generated. Parsing it gives back an equal config.
    pub fn to_json(&self) -> String {
        let nodes: serde_json::Map<String, serde_json::Value> = self
            .nodes
            .iter()
            .map(|(id, a)| {
                (
                    id.to_string(),
                    serde_json::json!({
                        "raft_addr": a.raft_addr.to_string(),
                        "api_addr": a.api_addr.to_string(),
                    }),
                )
            })
            .collect();
        let value = serde_json::json!({
            "cluster_id": self.cluster_id,
            "nodes": nodes,
            "data_dir": self.data_dir.to_string_lossy(),
            "heartbeat_interval_ms": self.heartbeat_interval_ms,
            "election_timeout_ms": [self.election_timeout_ms.0, self.election_timeout_ms.1],
            "snapshot_threshold": self.snapshot_threshold,
            "snapshot_trailing_entries": self.snapshot_trailing_entries,
            "wal_segment_bytes": self.wal_segment_bytes,
            "promote_lag_entries": self.promote_lag_entries,
            "promote_stable_ms": self.promote_stable_ms,
            "client_header_read_timeout_ms": self.client_connections.header_read_timeout_ms,
            "client_idle_timeout_ms": self.client_connections.idle_timeout_ms,
            "log_page_max_bytes": self.log_page_max_bytes,
            "log_page_max_entries": self.log_page_max_entries,
            "log_read_max_bytes_per_second": self.log_read_max_bytes_per_second,
            "snapshot_request_timeout_ms": self.snapshot_request_timeout_ms,
            "storage_quota_bytes": self.storage_quota_bytes,
            "max_uncommitted_bytes": self.max_uncommitted_bytes,
            "pending_write_bytes_max": self.pending_write_bytes_max,
            "watchers_max": self.watchers_max,
            "watch_buffer_bytes_max": self.watch_buffer_bytes_max,
            "snapshot_threshold_bytes": self.snapshot_threshold_bytes,
            "snapshot_min_interval_ms": self.snapshot_min_interval_ms,
            "ready_max_lag_entries": self.ready_max_lag_entries,
            "worker_threads": self.worker_threads,
            "raft_thread_nice": self.raft_thread_nice,
        });
        let mut value = value;
        if let Some(max) = self.client_connections.connections_max {
            value["max_client_connections"] = serde_json::json!(max);
        }
        if let Some(tls) = &self.tls {
            value["tls"] = serde_json::json!({"ca": tls.ca, "cert": tls.cert, "key": tls.key});
        }
        if let Some(auth) = &self.auth {
            let users: serde_json::Map<String, serde_json::Value> = auth
                .users
                .iter()
                .map(|(name, user)| {
                    (
                        name.clone(),
                        serde_json::json!({
                            "password_hash": user.password_hash,
                            "role": user.role.as_str(),
                        }),
                    )
                })
                .collect();
            value["auth"] = serde_json::json!({ "users": users });
        }
        // Serializing a `Value` cannot fail (string keys only).
        serde_json::to_string_pretty(&value).unwrap_or_default()
    }
}

fn syntax(path: &Path, e: &serde_json::Error) -> ConfigError {
    // serde_json appends " at line L column C" to data errors; we report them separately.
    let full = e.to_string();
    let message = match full.rfind(" at line ") {
        Some(i) => full[..i].to_string(),
        None => full,
    };
    ConfigError::Syntax {
        path: path.to_path_buf(),
        line: e.line(),
        column: e.column(),
        message,
    }
}

/// A JSON document that keeps object keys in order and refuses duplicate keys.
#[derive(Debug)]
enum Json {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

impl Json {
    fn describe(&self) -> String {
        match self {
            Json::Null => "null".to_string(),
            Json::Bool(b) => b.to_string(),
            Json::Number(n) => n.to_string(),
            Json::String(s) => format!("the string {s:?}"),
            Json::Array(_) => "an array".to_string(),
            Json::Object(_) => "an object".to_string(),
        }
    }
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Json, D::Error> {
        deserializer.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Json, E> {
        Ok(Json::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Json, E> {
        Ok(Json::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Json, E> {
        Ok(Json::Number(v.into()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Json, E> {
        serde_json::Number::from_f64(v)
            .map(Json::Number)
            .ok_or_else(|| E::custom("number is not finite"))
    }
    fn visit_str<E>(self, v: &str) -> Result<Json, E> {
        Ok(Json::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Json, E> {
        Ok(Json::String(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let mut entries: Vec<(String, Json)> = Vec::new();
        // Duplicates are kept here and refused by `Parser`, which knows the field path.
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value()?;
            entries.push((key, value));
        }
        Ok(Json::Object(entries))
    }
}

/// Walks a [`Json`] document into a [`ClusterConfig`], naming fields in errors.
struct Parser<'a> {
    path: &'a Path,
}

impl Parser<'_> {
    fn err(&self, field: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            field: field.to_string(),
            message: message.into(),
        }
    }

    fn config(&self, json: &Json) -> Result<ClusterConfig, ConfigError> {
        let fields = self.object(json, "(top level)", TOP_LEVEL_FIELDS)?;
        let get = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| v);

        let cluster_id = match get("cluster_id") {
            None => return Err(self.err("cluster_id", "missing (required)")),
            Some(v) => self.string(v, "cluster_id")?,
        };
        if cluster_id.trim().is_empty() {
            return Err(self.err("cluster_id", "must not be empty"));
        }
        let nodes = match get("nodes") {
            None => return Err(self.err("nodes", "missing (required)")),
            Some(v) => self.nodes(v)?,
        };
        let data_dir = match get("data_dir") {
            None => PathBuf::from(DEFAULT_DATA_DIR),
            Some(v) => {
                let s = self.string(v, "data_dir")?;
                if s.is_empty() {
                    return Err(self.err("data_dir", "must not be empty"));
                }
                PathBuf::from(s)
            }
        };
        let heartbeat_interval_ms = match get("heartbeat_interval_ms") {
            None => DEFAULT_HEARTBEAT_INTERVAL_MS,
            Some(v) => self.positive(v, "heartbeat_interval_ms")?,
        };
        let election_timeout_ms = match get("election_timeout_ms") {
            None => DEFAULT_ELECTION_TIMEOUT_MS,
            Some(v) => self.election_timeout(v)?,
        };
        // Raft §5.2/§9.3: heartbeats must arrive well within the election timeout, or
        // followers start elections against a healthy leader.
        if heartbeat_interval_ms >= election_timeout_ms.0 {
            return Err(self.err(
                "heartbeat_interval_ms",
                format!(
                    "{heartbeat_interval_ms} must be less than the minimum election timeout {} \
                     (election_timeout_ms)",
                    election_timeout_ms.0
                ),
            ));
        }
        let snapshot_threshold = match get("snapshot_threshold") {
            None => DEFAULT_SNAPSHOT_THRESHOLD,
            Some(v) => self.positive(v, "snapshot_threshold")?,
        };
        let snapshot_trailing_entries = match get("snapshot_trailing_entries") {
            None => DEFAULT_SNAPSHOT_TRAILING_ENTRIES,
            Some(v) => self.unsigned(v, "snapshot_trailing_entries")?,
        };
        let wal_segment_bytes = match get("wal_segment_bytes") {
            None => DEFAULT_WAL_SEGMENT_BYTES,
            Some(v) => {
                let bytes = self.positive(v, "wal_segment_bytes")?;
                if !WAL_SEGMENT_BYTES_RANGE.contains(&bytes) {
                    return Err(self.err(
                        "wal_segment_bytes",
                        format!(
                            "{bytes} is outside {}..={} (1 MiB to 1 GiB)",
                            WAL_SEGMENT_BYTES_RANGE.start(),
                            WAL_SEGMENT_BYTES_RANGE.end()
                        ),
                    ));
                }
                bytes
            }
        };
        let promote_lag_entries = match get("promote_lag_entries") {
            None => DEFAULT_PROMOTE_LAG_ENTRIES,
            Some(v) => self.unsigned(v, "promote_lag_entries")?,
        };
        let promote_stable_ms = match get("promote_stable_ms") {
            None => DEFAULT_PROMOTE_STABLE_MS,
            Some(v) => self.unsigned(v, "promote_stable_ms")?,
        };
        let client_connections = self.client_connection_limits(&get)?;
        // Issue 12, "logpage".
        let log_page_max_bytes = match get("log_page_max_bytes") {
            None => DEFAULT_LOG_PAGE_MAX_BYTES,
            Some(v) => self.within(v, "log_page_max_bytes", LOG_PAGE_MAX_BYTES_RANGE)?,
        };
        let log_page_max_entries = match get("log_page_max_entries") {
            None => DEFAULT_LOG_PAGE_MAX_ENTRIES,
            Some(v) => self.within(v, "log_page_max_entries", LOG_PAGE_MAX_ENTRIES_RANGE)?,
        };
        let log_read_max_bytes_per_second = match get("log_read_max_bytes_per_second") {
            None => DEFAULT_LOG_READ_MAX_BYTES_PER_SECOND,
            Some(Json::Number(n)) if n.as_u64() == Some(0) => 0,
            Some(v) => self.within(
                v,
                "log_read_max_bytes_per_second",
                LOG_READ_MAX_BYTES_PER_SECOND_RANGE,
            )?,
        };
        let snapshot_request_timeout_ms = match get("snapshot_request_timeout_ms") {
            None => DEFAULT_SNAPSHOT_REQUEST_TIMEOUT_MS,
            Some(v) => self.positive(v, "snapshot_request_timeout_ms")?,
        };
        // Issue 12, diskfull.
        let storage_quota_bytes = match get("storage_quota_bytes") {
            None | Some(Json::Null) => None,
            Some(v) => {
                let bytes = self.positive(v, "storage_quota_bytes")?;
                let min = STORAGE_QUOTA_SEGMENTS_MIN.saturating_mul(wal_segment_bytes);
                if bytes < min {
                    return Err(self.err(
                        "storage_quota_bytes",
                        format!(
                            "{bytes} is below {min}: {STORAGE_QUOTA_SEGMENTS_MIN} WAL segments of \
                             wal_segment_bytes {wal_segment_bytes} are preallocated in full \
                             however little the log holds; raise the quota or lower \
                             wal_segment_bytes"
                        ),
                    ));
                }
                Some(bytes)
            }
        };
        let max_uncommitted_bytes = self.pending_bytes(
            get("max_uncommitted_bytes"),
            "max_uncommitted_bytes",
            DEFAULT_MAX_UNCOMMITTED_BYTES,
        )?;
        let pending_write_bytes_max = self.pending_bytes(
            get("pending_write_bytes_max"),
            "pending_write_bytes_max",
            DEFAULT_PENDING_WRITE_BYTES_MAX,
        )?;
        let watchers_max = match get("watchers_max") {
            None => DEFAULT_WATCHERS_MAX,
            Some(v) => self.within(v, "watchers_max", WATCHERS_MAX_RANGE)?,
        };
        let watch_buffer_bytes_max = match get("watch_buffer_bytes_max") {
            None => DEFAULT_WATCH_BUFFER_BYTES_MAX,
            Some(v) => self.within(v, "watch_buffer_bytes_max", WATCH_BUFFER_BYTES_MAX_RANGE)?,
        };
        // Issue 14.
        let snapshot_threshold_bytes = match get("snapshot_threshold_bytes") {
            None => DEFAULT_SNAPSHOT_THRESHOLD_BYTES,
            Some(v) => self.within(
                v,
                "snapshot_threshold_bytes",
                SNAPSHOT_THRESHOLD_BYTES_RANGE,
            )?,
        };
        let snapshot_min_interval_ms = match get("snapshot_min_interval_ms") {
            None => DEFAULT_SNAPSHOT_MIN_INTERVAL_MS,
            Some(v) => self.within(
                v,
                "snapshot_min_interval_ms",
                SNAPSHOT_MIN_INTERVAL_MS_RANGE,
            )?,
        };
        let tls = match get("tls") {
            None | Some(Json::Null) => None,
            Some(v) => Some(self.tls(v)?),
        };
        let auth = match get("auth") {
            None | Some(Json::Null) => None,
            Some(v) => Some(self.auth(v)?),
        };
        let ready_max_lag_entries = match get("ready_max_lag_entries") {
            None => DEFAULT_READY_MAX_LAG_ENTRIES,
            Some(v) => self.within(v, "ready_max_lag_entries", READY_MAX_LAG_ENTRIES_RANGE)?,
        };
        let worker_threads = match get("worker_threads") {
            None | Some(Json::Null) => None,
            Some(v) => Some(self.within(v, "worker_threads", WORKER_THREADS_RANGE)?),
        };
        let raft_thread_nice = match get("raft_thread_nice") {
            None => DEFAULT_RAFT_THREAD_NICE,
            Some(v) => self.signed_within(v, "raft_thread_nice", RAFT_THREAD_NICE_RANGE)?,
        };
        Ok(ClusterConfig {
            path: self.path.to_path_buf(),
            cluster_id,
            nodes,
            data_dir,
            heartbeat_interval_ms,
            election_timeout_ms,
            snapshot_threshold,
            snapshot_trailing_entries,
            wal_segment_bytes,
            promote_lag_entries,
            promote_stable_ms,
            client_connections,
            log_page_max_bytes,
            log_page_max_entries,
            log_read_max_bytes_per_second,
            snapshot_request_timeout_ms,
            storage_quota_bytes,
            max_uncommitted_bytes,
            pending_write_bytes_max,
            watchers_max,
            watch_buffer_bytes_max,
            snapshot_threshold_bytes,
            snapshot_min_interval_ms,
            tls,
            auth,
            ready_max_lag_entries,
            worker_threads,
            raft_thread_nice,
        })
    }

    fn tls(&self, json: &Json) -> Result<TlsFiles, ConfigError> {
        let fields = self.object(json, "tls", TLS_FIELDS)?;
        let path = |name: &str| -> Result<String, ConfigError> {
            let field = format!("tls.{name}");
            let Some((_, v)) = fields.iter().find(|(k, _)| k == name) else {
                return Err(self.err(
                    &field,
                    "missing (required): tls needs ca, cert and key (PEM files; `raftlog certs \
                     init` makes a set)",
                ));
            };
            let text = self.string(v, &field)?;
            if text.trim().is_empty() {
                return Err(self.err(&field, "is empty; expected the path of a PEM file"));
            }
            Ok(text)
        };
        Ok(TlsFiles {
            ca: path("ca")?,
            cert: path("cert")?,
            key: path("key")?,
        })
    }

    fn auth(&self, json: &Json) -> Result<AuthConfig, ConfigError> {
        let fields = self.object(json, "auth", AUTH_FIELDS)?;
        let Some((_, users_json)) = fields.iter().find(|(k, _)| k == "users") else {
            return Err(self.err(
                "auth.users",
                "missing (required): auth needs users, e.g. {\"users\": {\"alice\": \
                 {\"password_hash\": \"$argon2id$...\", \"role\": \"read\"}}}",
            ));
        };
        let Json::Object(entries) = users_json else {
            return Err(self.err(
                "auth.users",
                format!("expected an object, got {}", users_json.describe()),
            ));
        };
        if entries.is_empty() {
            return Err(self.err(
                "auth.users",
                "is empty: with no user nobody could use the API; add a user or remove auth",
            ));
        }
        let mut users = BTreeMap::new();
        for (name, user) in entries {
            let at = format!("auth.users.{name:?}");
            if name.is_empty() || name.contains(':') || name.chars().any(char::is_control) {
                return Err(self.err(
                    &at,
                    "a user name must be non-empty, without ':' (HTTP Basic separates the \
                     name from the password with it) and without control characters",
                ));
            }
            let fields = self.object(user, &at, USER_FIELDS)?;
            let field = |key: &str| {
                fields
                    .iter()
                    .find(|(k, _)| k == key)
                    .map(|(_, v)| v)
                    .ok_or_else(|| {
                        self.err(
                            &format!("{at}.{key}"),
                            "missing (required): each user needs password_hash and role",
                        )
                    })
            };
            let hash_at = format!("{at}.password_hash");
            let password_hash = self.string(field("password_hash")?, &hash_at)?;
            if let Err(why) = crate::security::password::check_hash(&password_hash) {
                return Err(self.err(
                    &hash_at,
                    format!("{why}; make one with `raftlog passwd` (reads the password on stdin)"),
                ));
            }
            let role_at = format!("{at}.role");
            let role = self
                .string(field("role")?, &role_at)?
                .parse::<crate::security::Role>()
                .map_err(|e| self.err(&role_at, e.to_string()))?;
            users.insert(
                name.clone(),
                UserEntry {
                    password_hash,
                    role,
                },
            );
        }
        Ok(AuthConfig { users })
    }

    fn client_connection_limits<'j>(
        &self,
        get: &impl Fn(&str) -> Option<&'j Json>,
    ) -> Result<ClientConnectionLimits, ConfigError> {
        let defaults = ClientConnectionLimits::default();
        let connections_max = get("max_client_connections")
            .map(|v| self.within(v, "max_client_connections", MAX_CLIENT_CONNECTIONS_RANGE))
            .transpose()?;
        let timeout = |name: &str, default: u64| match get(name) {
            None => Ok(default),
            Some(v) => self.within(v, name, CLIENT_TIMEOUT_MS_RANGE),
        };
        Ok(ClientConnectionLimits {
            connections_max,
            header_read_timeout_ms: timeout(
                "client_header_read_timeout_ms",
                defaults.header_read_timeout_ms,
            )?,
            idle_timeout_ms: timeout("client_idle_timeout_ms", defaults.idle_timeout_ms)?,
        })
    }

    /// A byte bound of issue 12 (overload): `default` when absent, else within
    /// [`PENDING_BYTES_RANGE`].
    fn pending_bytes(
        &self,
        value: Option<&Json>,
        field: &str,
        default: u64,
    ) -> Result<u64, ConfigError> {
        let Some(value) = value else {
            return Ok(default);
        };
        let bytes = self.positive(value, field)?;
        if !PENDING_BYTES_RANGE.contains(&bytes) {
            return Err(self.err(
                field,
                format!(
                    "{bytes} is outside {}..={} (1 MiB, the largest value, to 4 GiB - 1)",
                    PENDING_BYTES_RANGE.start(),
                    PENDING_BYTES_RANGE.end()
                ),
            ));
        }
        Ok(bytes)
    }

    /// The entries of an object, refusing fields not in `allowed`.
    fn object<'j>(
        &self,
        json: &'j Json,
        field: &str,
        allowed: &[&str],
    ) -> Result<&'j [(String, Json)], ConfigError> {
        let Json::Object(entries) = json else {
            return Err(self.err(
                field,
                format!("expected an object, got {}", json.describe()),
            ));
        };
        for (i, (key, _)) in entries.iter().enumerate() {
            let at = if field == "(top level)" {
                key.clone()
            } else {
                format!("{field}.{key}")
            };
            if !allowed.contains(&key.as_str()) {
                return Err(self.err(
                    &at,
                    format!("unknown field; expected one of: {}", allowed.join(", ")),
                ));
            }
            if entries[..i].iter().any(|(k, _)| k == key) {
                return Err(self.err(&at, "appears twice"));
            }
        }
        Ok(entries)
    }

    fn string(&self, json: &Json, field: &str) -> Result<String, ConfigError> {
        match json {
            Json::String(s) => Ok(s.clone()),
            other => Err(self.err(
                field,
                format!("expected a string, got {}", other.describe()),
            )),
        }
    }

    fn unsigned(&self, json: &Json, field: &str) -> Result<u64, ConfigError> {
        match json {
            Json::Number(n) => n.as_u64().ok_or_else(|| {
                self.err(field, format!("expected a non-negative integer, got {n}"))
            }),
            other => Err(self.err(
                field,
                format!("expected a non-negative integer, got {}", other.describe()),
            )),
        }
    }

    fn positive(&self, json: &Json, field: &str) -> Result<u64, ConfigError> {
        match json {
            Json::Number(n) => match n.as_u64() {
                Some(v) if v > 0 => Ok(v),
                _ => Err(self.err(field, format!("expected a positive integer, got {n}"))),
            },
            other => Err(self.err(
                field,
                format!("expected a positive integer, got {}", other.describe()),
            )),
        }
    }

    /// A non-negative integer within `range`.
    fn within(
        &self,
        json: &Json,
        field: &str,
        range: std::ops::RangeInclusive<u64>,
    ) -> Result<u64, ConfigError> {
        let value = self.unsigned(json, field)?;
        if !range.contains(&value) {
            return Err(self.err(
                field,
                format!("{value} is outside {}..={}", range.start(), range.end()),
            ));
        }
        Ok(value)
    }

    /// An integer, negative or not, within `range` (which lies within `i32`).
    fn signed_within(
        &self,
        json: &Json,
        field: &str,
        range: std::ops::RangeInclusive<i64>,
    ) -> Result<i32, ConfigError> {
        let outside = |value: &dyn std::fmt::Display| {
            self.err(
                field,
                format!("{value} is outside {}..={}", range.start(), range.end()),
            )
        };
        match json {
            Json::Number(n) => match n.as_i64() {
                Some(value) => match i32::try_from(value) {
                    Ok(small) if range.contains(&value) => Ok(small),
                    _ => Err(outside(&value)),
                },
                // Past i64::MAX: an integer, far outside.
                None if n.as_u64().is_some() => Err(outside(n)),
                None => Err(self.err(field, format!("expected an integer, got {n}"))),
            },
            other => Err(self.err(
                field,
                format!("expected an integer, got {}", other.describe()),
            )),
        }
    }

    fn election_timeout(&self, json: &Json) -> Result<(u64, u64), ConfigError> {
        const FIELD: &str = "election_timeout_ms";
        let Json::Array(items) = json else {
            return Err(self.err(
                FIELD,
                format!(
                    "expected [min, max] in milliseconds, got {}",
                    json.describe()
                ),
            ));
        };
        if items.len() != 2 {
            return Err(self.err(
                FIELD,
                format!(
                    "expected [min, max] in milliseconds, got an array of {} elements",
                    items.len()
                ),
            ));
        }
        let min = self.positive(&items[0], "election_timeout_ms[0]")?;
        let max = self.positive(&items[1], "election_timeout_ms[1]")?;
        if min >= max {
            return Err(self.err(
                FIELD,
                format!("minimum {min} must be less than maximum {max}"),
            ));
        }
        Ok((min, max))
    }

    fn nodes(&self, json: &Json) -> Result<BTreeMap<NodeId, NodeAddrs>, ConfigError> {
        let Json::Object(entries) = json else {
            return Err(self.err(
                "nodes",
                format!(
                    "expected an object of node id -> addresses, got {}",
                    json.describe()
                ),
            ));
        };
        if entries.is_empty() {
            return Err(self.err("nodes", "must name at least one node"));
        }
        let mut nodes = BTreeMap::new();
        // Addresses seen so far, with the field that used them, in file order.
        let mut seen: Vec<(SocketAddr, String)> = Vec::new();
        for (key, value) in entries {
            let at = format!("nodes.{key:?}");
            let id = parse_node_id(key).map_err(|m| self.err(&at, m))?;
            if nodes.contains_key(&id) {
                return Err(self.err(&at, format!("node id {id} appears twice")));
            }
            let fields = self.object(value, &at, NODE_FIELDS)?;
            let mut addr = |name: &str| -> Result<SocketAddr, ConfigError> {
                let field = format!("{at}.{name}");
                let Some((_, v)) = fields.iter().find(|(k, _)| k == name) else {
                    return Err(self.err(&field, "missing (required)"));
                };
                let text = self.string(v, &field)?;
                let parsed: SocketAddr = text.parse().map_err(|_| {
                    self.err(&field, format!("{text:?} is not an IP:port socket address"))
                })?;
                if parsed.port() == 0 {
                    return Err(self.err(&field, format!("{text:?}: port 0 is not allowed")));
                }
                if let Some((_, other)) = seen.iter().find(|(a, _)| *a == parsed) {
                    return Err(
                        self.err(&field, format!("duplicate address {parsed} (also {other})"))
                    );
                }
                seen.push((parsed, field));
                Ok(parsed)
            };
            let raft_addr = addr("raft_addr")?;
            let api_addr = addr("api_addr")?;
            nodes.insert(
                id,
                NodeAddrs {
                    raft_addr,
                    api_addr,
                },
            );
        }
        Ok(nodes)
    }
}

/// Node ids are positive integers written in plain decimal: no sign, no leading zeros
/// (so `"01"` and `"1"` cannot name the same node twice), no spaces.
fn parse_node_id(key: &str) -> Result<NodeId, String> {
    let bad = || {
        format!(
            "node id {key:?} is not a positive integer in decimal (e.g. \"1\"); ids are the keys \
             of nodes"
        )
    };
    if key.is_empty() || !key.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    if key == "0" || key.chars().all(|c| c == '0') {
        return Err(format!(
            "node id {key:?}: ids must be positive (0 means nobody)"
        ));
    }
    if key.starts_with('0') {
        return Err(format!(
            "node id {key:?} has leading zeros; write it as plain decimal"
        ));
    }
    key.parse::<NodeId>()
        .map_err(|_| format!("node id {key:?} is too large (ids fit in 64 bits)"))
}

// Issue 17: docs/API.md documents every field; `tests/api_doc.rs` checks it against these.
/// Every top-level field of the cluster file, as the parser accepts them.
pub fn top_level_field_names() -> &'static [&'static str] {
    TOP_LEVEL_FIELDS
}

/// Every field of an entry of `nodes`, as the parser accepts them.
pub fn node_field_names() -> &'static [&'static str] {
    NODE_FIELDS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ClusterConfig, ConfigError> {
        ClusterConfig::parse(text, Path::new("config.json"))
    }

    /// The error line for `text`, asserting it is one line naming the file.
    fn error(text: &str) -> String {
        let msg = parse(text).unwrap_err().to_string();
        assert!(msg.starts_with("config.json: "), "{msg}");
        assert!(!msg.contains('\n'), "not one line: {msg}");
        msg
    }

    const MINIMAL: &str = r#"{
        "cluster_id": "c",
        "nodes": {
            "1": { "raft_addr": "127.0.0.1:7001", "api_addr": "127.0.0.1:8001" },
            "2": { "raft_addr": "127.0.0.1:7002", "api_addr": "127.0.0.1:8002" }
        }
    }"#;

    /// `MINIMAL` with `extra` inserted as additional top-level fields.
    fn with(extra: &str) -> String {
        MINIMAL.replacen(
            "\"cluster_id\": \"c\",",
            &format!("\"cluster_id\": \"c\", {extra},"),
            1,
        )
    }

    #[test]
    fn pending_byte_bounds_have_defaults_and_ranges() {
        let cfg = parse(MINIMAL).unwrap();
        assert_eq!(cfg.max_uncommitted_bytes(), DEFAULT_MAX_UNCOMMITTED_BYTES);
        assert_eq!(
            cfg.pending_write_bytes_max(),
            DEFAULT_PENDING_WRITE_BYTES_MAX
        );
        let cfg = parse(&with(
            r#""max_uncommitted_bytes": 2097152, "pending_write_bytes_max": 4194304"#,
        ))
        .unwrap();
        assert_eq!(cfg.max_uncommitted_bytes(), 2 << 20);
        assert_eq!(cfg.pending_write_bytes_max(), 4 << 20);
        for field in ["max_uncommitted_bytes", "pending_write_bytes_max"] {
            let msg = error(&with(&format!(r#""{field}": 1000"#)));
            assert!(msg.contains(field) && msg.contains("1 MiB"), "{msg}");
            let msg = error(&with(&format!(r#""{field}": 8589934592"#)));
            assert!(msg.contains(field), "{msg}");
            let msg = error(&with(&format!(r#""{field}": "big""#)));
            assert!(msg.contains(field), "{msg}");
        }
        let round_trip = parse(&cfg.to_json()).unwrap();
        assert_eq!(round_trip.pending_write_bytes_max(), 4 << 20);
    }

    #[test]
    fn repository_config_json_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.json");
        let cfg = ClusterConfig::load(&path).unwrap();
        assert_eq!(cfg.cluster_id(), "raftlog-demo");
        assert_eq!(
            cfg.nodes().keys().copied().collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        assert_eq!(
            cfg.node(2).unwrap().api_addr,
            "127.0.0.1:8002".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(cfg.election_timeout_ms(), (150, 300));
        assert_eq!(cfg.node_data_dir(3), Path::new("./data/node-3"));
        let m = cfg.membership();
        assert_eq!(m.voters().collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(m.members[&1].raft_addr, "127.0.0.1:7001");
        cfg.validate_node_id(3).unwrap();
    }

    #[test]
    fn defaults_apply() {
        let cfg = parse(MINIMAL).unwrap();
        assert_eq!(cfg.data_dir(), Path::new(DEFAULT_DATA_DIR));
        assert_eq!(cfg.heartbeat_interval_ms(), 50);
        assert_eq!(cfg.heartbeat_interval(), Duration::from_millis(50));
        assert_eq!(cfg.election_timeout_ms(), (150, 300));
        assert_eq!(cfg.snapshot_threshold(), 10_000);
        assert_eq!(cfg.snapshot_trailing_entries(), 5_000);
        assert_eq!(cfg.wal_segment_bytes(), 64 << 20);
        assert_eq!(cfg.storage_quota_bytes(), None);
        assert_eq!(cfg.promote_lag_entries(), 1_000);
        assert_eq!(cfg.promote_stable(), Duration::from_millis(1_000));
        assert_eq!(cfg.path(), Path::new("config.json"));
    }

    #[test]
    fn promotion_settings_parse_and_round_trip() {
        let cfg = parse(&with(r#""promote_lag_entries": 5, "promote_stable_ms": 0"#)).unwrap();
        assert_eq!(cfg.promote_lag_entries(), 5);
        assert_eq!(cfg.promote_stable(), Duration::ZERO);
        let again = ClusterConfig::parse(&cfg.to_json(), cfg.path()).unwrap();
        assert_eq!(again, cfg);
        let err = parse(&with(r#""promote_stable_ms": -1"#)).unwrap_err();
        assert!(err.to_string().contains("promote_stable_ms"), "{err}");
    }

    #[test]
    fn client_connection_limits_parse_validate_and_round_trip() {
        let cfg = parse(MINIMAL).unwrap();
        assert_eq!(
            cfg.client_connection_limits(),
            ClientConnectionLimits::default()
        );
        let cfg = parse(&with(
            r#""max_client_connections": 300, "client_header_read_timeout_ms": 500,
               "client_idle_timeout_ms": 2000"#,
        ))
        .unwrap();
        assert_eq!(
            cfg.client_connection_limits(),
            ClientConnectionLimits {
                connections_max: Some(300),
                header_read_timeout_ms: 500,
                idle_timeout_ms: 2000,
            }
        );
        let again = ClusterConfig::parse(&cfg.to_json(), cfg.path()).unwrap();
        assert_eq!(again, cfg);
        for (field, value) in [
            ("max_client_connections", "0"),
            ("max_client_connections", "1000001"),
            ("client_header_read_timeout_ms", "99"),
            ("client_idle_timeout_ms", "0"),
            ("client_idle_timeout_ms", "\"60s\""),
        ] {
            let err = parse(&with(&format!(r#""{field}": {value}"#))).unwrap_err();
            assert!(err.to_string().contains(field), "{field}={value}: {err}");
        }
    }

    #[test]
    fn explicit_values_override_defaults() {
        let cfg = parse(&with(
            r#""data_dir": "/var/lib/raftlog", "heartbeat_interval_ms": 20,
               "election_timeout_ms": [100, 200], "snapshot_threshold": 7,
               "snapshot_trailing_entries": 0, "wal_segment_bytes": 4194304"#,
        ))
        .unwrap();
        assert_eq!(cfg.node_data_dir(2), Path::new("/var/lib/raftlog/node-2"));
        assert_eq!(cfg.heartbeat_interval_ms(), 20);
        assert_eq!(
            cfg.election_timeout(),
            (Duration::from_millis(100), Duration::from_millis(200))
        );
        assert_eq!(cfg.snapshot_threshold(), 7);
        assert_eq!(cfg.snapshot_trailing_entries(), 0);
        assert_eq!(cfg.wal_segment_bytes(), 4 << 20);
        let cfg = cfg.with_data_dir("/tmp/x");
        assert_eq!(cfg.node_data_dir(1), Path::new("/tmp/x/node-1"));
    }

    #[test]
    fn storage_quota_is_read_and_round_trips() {
        let cfg = parse(&with(
            r#""wal_segment_bytes": 1048576, "storage_quota_bytes": 16777216"#,
        ))
        .unwrap();
        assert_eq!(cfg.storage_quota_bytes(), Some(16 << 20));
        assert_eq!(parse(&cfg.to_json()).unwrap(), cfg);
        let unset = parse(&with(r#""storage_quota_bytes": null"#)).unwrap();
        assert_eq!(unset.storage_quota_bytes(), None);
    }

    #[test]
    fn to_json_round_trips() {
        let cfg = parse(&with(r#""heartbeat_interval_ms": 20"#)).unwrap();
        assert_eq!(parse(&cfg.to_json()).unwrap(), cfg);
    }

    #[test]
    fn duplicate_address_names_both_fields() {
        let msg = error(
            r#"{"cluster_id": "c", "nodes": {
                "1": {"raft_addr": "127.0.0.1:7001", "api_addr": "127.0.0.1:8001"},
                "2": {"raft_addr": "127.0.0.1:7002", "api_addr": "127.0.0.1:8001"}}}"#,
        );
        assert_eq!(
            msg,
            r#"config.json: nodes."2".api_addr: duplicate address 127.0.0.1:8001 (also nodes."1".api_addr)"#
        );
        // raft and api address of the same node.
        let msg = error(
            r#"{"cluster_id": "c", "nodes": {
                "1": {"raft_addr": "127.0.0.1:7001", "api_addr": "127.0.0.1:7001"}}}"#,
        );
        assert!(
            msg.contains(
                r#"nodes."1".api_addr: duplicate address 127.0.0.1:7001 (also nodes."1".raft_addr)"#
            ),
            "{msg}"
        );
    }

    #[test]
    fn unknown_fields_are_refused_at_every_level() {
        let msg = error(&with(r#""colour": "blue""#));
        assert!(
            msg.starts_with("config.json: colour: unknown field"),
            "{msg}"
        );
        let msg = error(
            r#"{"cluster_id": "c", "nodes": {
                "1": {"raft_addr": "127.0.0.1:7001", "api_addr": "127.0.0.1:8001", "voter": true}}}"#,
        );
        assert!(
            msg.starts_with(r#"config.json: nodes."1".voter: unknown field; expected one of: raft_addr, api_addr"#),
            "{msg}"
        );
    }

    #[test]
    fn malformed_json_reports_line_and_column() {
        let msg = error("{\n  \"cluster_id\": \"c\",\n  \"nodes\": {,}\n}");
        assert!(
            msg.starts_with("config.json: malformed JSON at line 3 column"),
            "{msg}"
        );
        let msg = error("");
        assert!(msg.contains("malformed JSON"), "{msg}");
        let msg = error(r#"["not", "an", "object"]"#);
        assert!(msg.contains("expected an object, got an array"), "{msg}");
    }

    #[test]
    fn duplicate_json_keys_are_refused() {
        let msg = error(
            r#"{"cluster_id": "c", "nodes": {
                "1": {"raft_addr": "127.0.0.1:7001", "api_addr": "127.0.0.1:8001"},
                "1": {"raft_addr": "127.0.0.1:7002", "api_addr": "127.0.0.1:8002"}}}"#,
        );
        assert_eq!(msg, r#"config.json: nodes."1": node id 1 appears twice"#);
        let msg = error(&with(r#""cluster_id": "d""#));
        assert_eq!(msg, "config.json: cluster_id: appears twice");
        let msg = error(
            r#"{"cluster_id": "c", "nodes": {"1": {"raft_addr": "127.0.0.1:7001",
                "api_addr": "127.0.0.1:8001", "api_addr": "127.0.0.1:8002"}}}"#,
        );
        assert_eq!(msg, r#"config.json: nodes."1".api_addr: appears twice"#);
    }

    #[test]
    fn bad_node_ids_are_refused() {
        for (key, expect) in [
            ("0", "ids must be positive"),
            ("00", "ids must be positive"),
            ("abc", "not a positive integer"),
            ("-1", "not a positive integer"),
            (" 1", "not a positive integer"),
            ("", "not a positive integer"),
            ("01", "leading zeros"),
            ("99999999999999999999", "too large"),
        ] {
            let text = format!(
                r#"{{"cluster_id": "c", "nodes": {{
                    "{key}": {{"raft_addr": "127.0.0.1:7001", "api_addr": "127.0.0.1:8001"}}}}}}"#
            );
            let msg = error(&text);
            assert!(
                msg.starts_with(&format!("config.json: nodes.{key:?}: ")) && msg.contains(expect),
                "{key:?}: {msg}"
            );
        }
    }

    #[test]
    fn id_not_in_nodes_is_refused() {
        let cfg = parse(MINIMAL).unwrap();
        let msg = cfg.validate_node_id(4).unwrap_err().to_string();
        assert_eq!(
            msg,
            "config.json: nodes: node id 4 (from --id) is not in the cluster; configured ids: 1, 2"
        );
        assert!(cfg.validate_node_id(0).is_err());
        cfg.validate_node_id(2).unwrap();
    }

    #[test]
    fn missing_and_mistyped_fields_are_named() {
        let cases = [
            (
                r#"{"nodes": {}}"#,
                "config.json: cluster_id: missing (required)",
            ),
            (
                r#"{"cluster_id": "c"}"#,
                "config.json: nodes: missing (required)",
            ),
            (
                r#"{"cluster_id": "", "nodes": {}}"#,
                "config.json: cluster_id: must not be empty",
            ),
            (
                r#"{"cluster_id": 5, "nodes": {}}"#,
                "config.json: cluster_id: expected a string, got 5",
            ),
            (
                r#"{"cluster_id": "c", "nodes": {}}"#,
                "config.json: nodes: must name at least one node",
            ),
            (
                r#"{"cluster_id": "c", "nodes": []}"#,
                "config.json: nodes: expected an object of node id -> addresses, got an array",
            ),
            (
                r#"{"cluster_id": "c", "nodes": {"1": {"raft_addr": "127.0.0.1:7001"}}}"#,
                r#"config.json: nodes."1".api_addr: missing (required)"#,
            ),
            (
                r#"{"cluster_id": "c", "nodes": {"1": {"raft_addr": "localhost:7001", "api_addr": "127.0.0.1:8001"}}}"#,
                r#"config.json: nodes."1".raft_addr: "localhost:7001" is not an IP:port socket address"#,
            ),
            (
                r#"{"cluster_id": "c", "nodes": {"1": {"raft_addr": "127.0.0.1:0", "api_addr": "127.0.0.1:8001"}}}"#,
                r#"config.json: nodes."1".raft_addr: "127.0.0.1:0": port 0 is not allowed"#,
            ),
            (
                r#"{"cluster_id": "c", "nodes": {"1": "127.0.0.1:7001"}}"#,
                r#"config.json: nodes."1": expected an object, got the string "127.0.0.1:7001""#,
            ),
        ];
        for (text, expect) in cases {
            assert_eq!(error(text), expect, "{text}");
        }
    }

    #[test]
    fn timing_rules_are_enforced() {
        let cases = [
            (
                r#""heartbeat_interval_ms": 0"#,
                "config.json: heartbeat_interval_ms: expected a positive integer, got 0",
            ),
            (
                r#""heartbeat_interval_ms": -5"#,
                "config.json: heartbeat_interval_ms: expected a positive integer, got -5",
            ),
            (
                r#""heartbeat_interval_ms": 2.5"#,
                "config.json: heartbeat_interval_ms: expected a positive integer, got 2.5",
            ),
            (
                r#""heartbeat_interval_ms": "50""#,
                r#"config.json: heartbeat_interval_ms: expected a positive integer, got the string "50""#,
            ),
            (
                r#""heartbeat_interval_ms": 150"#,
                "config.json: heartbeat_interval_ms: 150 must be less than the minimum election timeout 150 (election_timeout_ms)",
            ),
            (
                r#""election_timeout_ms": [300, 150]"#,
                "config.json: election_timeout_ms: minimum 300 must be less than maximum 150",
            ),
            (
                r#""election_timeout_ms": [200, 200]"#,
                "config.json: election_timeout_ms: minimum 200 must be less than maximum 200",
            ),
            (
                r#""election_timeout_ms": [150]"#,
                "config.json: election_timeout_ms: expected [min, max] in milliseconds, got an array of 1 elements",
            ),
            (
                r#""election_timeout_ms": 150"#,
                "config.json: election_timeout_ms: expected [min, max] in milliseconds, got 150",
            ),
            (
                r#""election_timeout_ms": [0, 150]"#,
                "config.json: election_timeout_ms[0]: expected a positive integer, got 0",
            ),
            (
                r#""snapshot_threshold": 0"#,
                "config.json: snapshot_threshold: expected a positive integer, got 0",
            ),
            (
                r#""snapshot_trailing_entries": -1"#,
                "config.json: snapshot_trailing_entries: expected a non-negative integer, got -1",
            ),
            (
                r#""wal_segment_bytes": 65536"#,
                "config.json: wal_segment_bytes: 65536 is outside 1048576..=1073741824 (1 MiB to 1 GiB)",
            ),
            (
                r#""wal_segment_bytes": 2147483648"#,
                "config.json: wal_segment_bytes: 2147483648 is outside 1048576..=1073741824 (1 MiB to 1 GiB)",
            ),
            (
                r#""wal_segment_bytes": "64MiB""#,
                r#"config.json: wal_segment_bytes: expected a positive integer, got the string "64MiB""#,
            ),
            (
                r#""data_dir": null"#,
                "config.json: data_dir: expected a string, got null",
            ),
            (r#""data_dir": """#, "config.json: data_dir: must not be empty"),
            (
                r#""storage_quota_bytes": 0"#,
                "config.json: storage_quota_bytes: expected a positive integer, got 0",
            ),
            (
                r#""storage_quota_bytes": 100000000"#,
                "config.json: storage_quota_bytes: 100000000 is below 268435456: 4 WAL segments \
                 of wal_segment_bytes 67108864 are preallocated in full however little the log \
                 holds; raise the quota or lower wal_segment_bytes",
            ),
        ];
        for (extra, expect) in cases {
            assert_eq!(error(&with(extra)), expect, "{extra}");
        }
    }

    #[test]
    fn unreadable_file_is_reported_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope.json");
        let msg = ClusterConfig::load(&path).unwrap_err().to_string();
        assert!(
            msg.starts_with(&format!("{}: cannot read", path.display())),
            "{msg}"
        );
    }

    #[test]
    fn log_page_and_snapshot_request_limits_have_defaults_and_bounds() {
        let cfg = parse(MINIMAL).unwrap();
        assert_eq!(cfg.log_page_max_bytes(), 4 << 20);
        assert_eq!(cfg.log_page_max_entries(), 10_000);
        assert_eq!(cfg.log_read_max_bytes_per_second(), 64 << 20);
        assert_eq!(cfg.snapshot_request_timeout(), Duration::from_secs(60));
        let cfg = parse(&with(
            r#""log_page_max_bytes": 65536, "log_page_max_entries": 5, "snapshot_request_timeout_ms": 250, "log_read_max_bytes_per_second": 0"#,
        ))
        .unwrap();
        assert_eq!(cfg.log_page_max_bytes(), 65536);
        assert_eq!(cfg.log_page_max_entries(), 5);
        assert_eq!(cfg.log_read_max_bytes_per_second(), 0);
        assert_eq!(cfg.snapshot_request_timeout(), Duration::from_millis(250));
        assert_eq!(parse(&cfg.to_json()).unwrap(), cfg);
        let cases = [
            (
                r#""log_page_max_bytes": 100"#,
                "config.json: log_page_max_bytes: 100 is outside 4096..=268435456",
            ),
            (
                r#""log_page_max_entries": 0"#,
                "config.json: log_page_max_entries: 0 is outside 1..=1000000",
            ),
            (
                r#""log_read_max_bytes_per_second": 1000"#,
                "config.json: log_read_max_bytes_per_second: 1000 is outside 1048576..=1099511627776",
            ),
            (
                r#""log_read_max_bytes_per_second": -1"#,
                "config.json: log_read_max_bytes_per_second: expected a non-negative integer, got -1",
            ),
            (
                r#""snapshot_request_timeout_ms": 0"#,
                "config.json: snapshot_request_timeout_ms: expected a positive integer, got 0",
            ),
        ];
        for (extra, expect) in cases {
            assert_eq!(error(&with(extra)), expect, "{extra}");
        }
    }

    #[test]
    fn watch_limits_have_defaults_and_bounds() {
        let cfg = parse(MINIMAL).unwrap();
        assert_eq!(cfg.watchers_max(), 4096);
        assert_eq!(cfg.watch_buffer_bytes_max(), 4 << 20);
        let cfg = parse(&with(
            r#""watchers_max": 2, "watch_buffer_bytes_max": 8192"#,
        ))
        .unwrap();
        assert_eq!(cfg.watchers_max(), 2);
        assert_eq!(cfg.watch_buffer_bytes_max(), 8192);
        assert_eq!(parse(&cfg.to_json()).unwrap(), cfg);
        assert_eq!(
            error(&with(r#""watchers_max": 0"#)),
            "config.json: watchers_max: 0 is outside 1..=1000000"
        );
        assert_eq!(
            error(&with(r#""watch_buffer_bytes_max": 10"#)),
            "config.json: watch_buffer_bytes_max: 10 is outside 4096..=1073741824"
        );
    }

    #[test]
    fn snapshot_byte_threshold_and_min_interval_have_defaults_and_bounds() {
        let cfg = parse(MINIMAL).unwrap();
        assert_eq!(cfg.snapshot_threshold_bytes(), 64 << 20);
        assert_eq!(cfg.snapshot_min_interval(), Duration::from_secs(1));
        let cfg = parse(&with(
            r#""snapshot_threshold_bytes": 1048576, "snapshot_min_interval_ms": 0"#,
        ))
        .unwrap();
        assert_eq!(cfg.snapshot_threshold_bytes(), 1 << 20);
        assert_eq!(cfg.snapshot_min_interval(), Duration::ZERO);
        assert_eq!(parse(&cfg.to_json()).unwrap(), cfg);
        let cases = [
            (
                r#""snapshot_threshold_bytes": 1000"#,
                "config.json: snapshot_threshold_bytes: 1000 is outside 1048576..=1099511627776",
            ),
            (
                r#""snapshot_min_interval_ms": 3600001"#,
                "config.json: snapshot_min_interval_ms: 3600001 is outside 0..=3600000",
            ),
            (
                r#""snapshot_min_interval_ms": -1"#,
                "config.json: snapshot_min_interval_ms: expected a non-negative integer, got -1",
            ),
        ];
        for (extra, expect) in cases {
            assert_eq!(error(&with(extra)), expect, "{extra}");
        }
    }

    #[test]
    fn ready_max_lag_entries_has_a_default_and_bounds() {
        let cfg = parse(MINIMAL).unwrap();
        assert_eq!(cfg.ready_max_lag_entries(), 10_000);
        let cfg = parse(&with(r#""ready_max_lag_entries": 0"#)).unwrap();
        assert_eq!(cfg.ready_max_lag_entries(), 0);
        assert_eq!(parse(&cfg.to_json()).unwrap(), cfg);
        let cases = [
            (
                r#""ready_max_lag_entries": 1000000001"#,
                "config.json: ready_max_lag_entries: 1000000001 is outside 0..=1000000000",
            ),
            (
                r#""ready_max_lag_entries": -5"#,
                "config.json: ready_max_lag_entries: expected a non-negative integer, got -5",
            ),
        ];
        for (extra, expect) in cases {
            assert_eq!(error(&with(extra)), expect, "{extra}");
        }
    }

    #[test]
    fn raft_thread_nice_defaults_to_minus_ten_and_is_a_nice_value() {
        let cfg = parse(MINIMAL).unwrap();
        assert_eq!(cfg.raft_thread_nice(), -10);
        assert_eq!(parse(&cfg.to_json()).unwrap(), cfg);
        for nice in [-20, 0, 19] {
            let cfg = parse(&with(&format!(r#""raft_thread_nice": {nice}"#))).unwrap();
            assert_eq!(cfg.raft_thread_nice(), nice);
            assert_eq!(parse(&cfg.to_json()).unwrap(), cfg);
        }
        let cases = [
            (
                r#""raft_thread_nice": -21"#,
                "config.json: raft_thread_nice: -21 is outside -20..=19",
            ),
            (
                r#""raft_thread_nice": 20"#,
                "config.json: raft_thread_nice: 20 is outside -20..=19",
            ),
            (
                r#""raft_thread_nice": 18446744073709551615"#,
                "config.json: raft_thread_nice: 18446744073709551615 is outside -20..=19",
            ),
            (
                r#""raft_thread_nice": 1.5"#,
                "config.json: raft_thread_nice: expected an integer, got 1.5",
            ),
            (
                r#""raft_thread_nice": "high""#,
                r#"config.json: raft_thread_nice: expected an integer, got the string "high""#,
            ),
        ];
        for (extra, expect) in cases {
            assert_eq!(error(&with(extra)), expect, "{extra}");
        }
    }

    #[test]
    fn worker_threads_is_optional_and_bounded() {
        let cfg = parse(MINIMAL).unwrap();
        assert_eq!(cfg.worker_threads(), None);
        assert_eq!(parse(&cfg.to_json()).unwrap(), cfg);
        let cfg = parse(&with(r#""worker_threads": 3"#)).unwrap();
        assert_eq!(cfg.worker_threads(), Some(3));
        assert_eq!(parse(&cfg.to_json()).unwrap(), cfg);
        let cases = [
            (
                r#""worker_threads": 0"#,
                "config.json: worker_threads: 0 is outside 1..=1024",
            ),
            (
                r#""worker_threads": "four""#,
                r#"config.json: worker_threads: expected a non-negative integer, got the string "four""#,
            ),
        ];
        for (extra, expect) in cases {
            assert_eq!(error(&with(extra)), expect, "{extra}");
        }
    }
}

/// Issue 16: the `tls` section.
#[cfg(test)]
mod tls_tests {
    use super::*;

    fn parse(extra: &str) -> Result<ClusterConfig, ConfigError> {
        ClusterConfig::parse(
            &format!(
                r#"{{"cluster_id": "c", "nodes": {{"1": {{"raft_addr": "127.0.0.1:7001",
                    "api_addr": "127.0.0.1:8001"}}}}{extra}}}"#
            ),
            Path::new("/etc/raftlog/config.json"),
        )
    }

    #[test]
    fn tls_paths_are_relative_to_the_config_file_and_take_the_node_id() {
        let config = parse(
            r#", "tls": {"ca": "ca.pem", "cert": "certs/node-{id}.pem", "key": "/abs/node-{id}-key.pem"}"#,
        )
        .unwrap();
        let paths = config.tls_paths(1).unwrap();
        assert_eq!(paths.ca, Path::new("/etc/raftlog/ca.pem"));
        assert_eq!(paths.cert, Path::new("/etc/raftlog/certs/node-1.pem"));
        assert_eq!(paths.key, Path::new("/abs/node-1-key.pem"));
        // The section survives the round trip `raftlog cluster` makes.
        let again = ClusterConfig::parse(&config.to_json(), config.path()).unwrap();
        assert_eq!(again.tls(), config.tls());
        assert!(parse("").unwrap().tls_paths(1).is_none());
    }

    #[test]
    fn a_bad_tls_section_names_the_field() {
        let error = |extra: &str| parse(extra).unwrap_err().to_string();
        assert!(error(r#", "tls": {"ca": "ca.pem", "cert": "c.pem"}"#)
            .starts_with("/etc/raftlog/config.json: tls.key: missing (required)"),);
        assert!(
            error(r#", "tls": {"ca": "", "cert": "c", "key": "k"}"#).contains("tls.ca: is empty")
        );
        assert!(
            error(r#", "tls": {"ca": "a", "cert": "c", "key": "k", "crl": "x"}"#)
                .contains("tls.crl: unknown field; expected one of: ca, cert, key")
        );
        assert!(error(r#", "tls": "yes""#).contains("tls: expected an object"));
    }
}
