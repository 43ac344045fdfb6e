//! `raftlog serve`: run one node until SIGTERM/SIGINT.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use storage::Membership;

use super::{init_tracing, join, EXIT_FAILED, EXIT_USAGE};
use crate::api::{self, ApiOptions, ConnectionLimits};
use crate::config::ClusterConfig;
use crate::kv::KvStore;
use crate::node::{self, NodeOptions};

/// The core's clock period. Heartbeat and election timeouts are whole multiples of it.
const TICK: Duration = Duration::from_millis(10);

/// Builds the node's options from the cluster file; nothing touches the disk yet.
pub fn node_options(
    config: &ClusterConfig,
    id: u64,
    data_dir: Option<PathBuf>,
) -> Result<NodeOptions, String> {
    config.validate_node_id(id).map_err(|e| {
        format!(
            "{e}. A node takes its own addresses from nodes: to add node {id} to a running \
             cluster, add \"{id}\": {{\"raft_addr\": ..., \"api_addr\": ...}} to nodes in {} and start \
             it with --join <API address of a member>",
            config.path().display()
        )
    })?;
    let Some(me) = config.node(id) else {
        return Err(format!(
            "{}: node {id} is not in nodes",
            config.path().display()
        ));
    };
    Ok(NodeOptions {
        id,
        cluster_id: config.cluster_id().to_string(),
        data_dir: data_dir.unwrap_or_else(|| config.node_data_dir(id)),
        bootstrap: config.membership(),
        raft_addr: me.raft_addr,
        heartbeat_interval: config.heartbeat_interval(),
        election_timeout: config.election_timeout(),
        snapshot_threshold: config.snapshot_threshold(),
        wal_segment_bytes: config.wal_segment_bytes(),
        storage_quota_bytes: config.storage_quota_bytes(),
        snapshot_trailing_entries: config.snapshot_trailing_entries(),
        tick: TICK,
        membership_policy: node::membership::MembershipPolicy {
            promote_lag_entries: config.promote_lag_entries(),
            promote_stable: config.promote_stable(),
        },
        max_uncommitted_bytes: config.max_uncommitted_bytes(),
        pending_write_bytes_max: config.pending_write_bytes_max(),
        snapshot_threshold_bytes: config.snapshot_threshold_bytes(),
        snapshot_min_interval: config.snapshot_min_interval(),
        tls: config
            .tls_paths(id)
            .map(|paths| crate::security::tls::NodeTls::load(id, paths))
            .transpose()
            .map_err(|e| format!("{}: {e}", config.path().display()))?,
        raft_thread_nice: config.raft_thread_nice(),
    })
}

/// Runs the node; returns the exit status.
pub fn run(
    config_path: &Path,
    id: u64,
    data_dir: Option<PathBuf>,
    join: Option<String>,
    bind_all: bool,
) -> i32 {
    init_tracing();
    let join = match join.as_deref().map(join::parse_addrs).transpose() {
        Ok(join) => join,
        Err(message) => {
            eprintln!("raftlog serve: {message}");
            return EXIT_USAGE;
        }
    };
    let config = match ClusterConfig::load(config_path) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("raftlog serve: {e}");
            return EXIT_USAGE;
        }
    };
    let options = match node_options(&config, id, data_dir) {
        Ok(options) => options,
        Err(message) => {
            eprintln!("raftlog serve: {message}");
            return EXIT_USAGE;
        }
    };
    if let Err(message) = arm_failpoints_from_env() {
        eprintln!("raftlog serve: {message}");
        return EXIT_USAGE;
    }
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let from_env = std::env::var_os("TOKIO_WORKER_THREADS");
    let threads = match worker_threads(config.worker_threads(), from_env.as_deref(), cores) {
        Ok(threads) => threads,
        Err(message) => {
            eprintln!("raftlog serve: {message}");
            return EXIT_USAGE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("raftlog serve: cannot start the async runtime: {e}");
            return EXIT_FAILED;
        }
    };
    let fd_limit = raise_fd_limit();
    let connections = client_connection_limits(&config, fd_limit);
    let api_options = api_options(&config, connections);
    // `node_options` found this node in the cluster file.
    let Some(api_addr) = config.node(id).map(|me| me.api_addr) else {
        eprintln!("raftlog serve: node {id} is not in nodes");
        return EXIT_USAGE;
    };
    runtime.block_on(serve(options, api_addr, api_options, join, bind_all))
}

/// How many async workers the node runs: `TOKIO_WORKER_THREADS` when set (tokio's own
/// variable, read here so that a bad value is a clear error rather than tokio's panic),
/// else the config's `worker_threads`, else one fewer than the machine's cores (at least
/// one). The node's persistence and apply threads work outside the runtime, and a runtime
/// as wide as the machine competed with them: on 2 cores (three nodes and the load
/// generator) one worker per node gave +9–14% puts and +16–21% linearizable gets at 64
/// clients over two (docs/BENCHMARKS.md, "One async worker fewer than the cores").
fn worker_threads(
    configured: Option<u64>,
    from_env: Option<&std::ffi::OsStr>,
    cores: usize,
) -> Result<usize, String> {
    if let Some(value) = from_env {
        return value
            .to_str()
            .and_then(|text| text.trim().parse::<usize>().ok())
            .filter(|threads| (1..=1024).contains(threads))
            .ok_or_else(|| {
                format!(
                    "TOKIO_WORKER_THREADS is {value:?}, not a number of worker threads from 1 \
                     to 1024; set it to one, or unset it to use `worker_threads` in the \
                     cluster file"
                )
            });
    }
    // The config bounds it to 1..=1024.
    let configured = configured.and_then(|threads| usize::try_from(threads).ok());
    Ok(configured.unwrap_or(cores.saturating_sub(1).max(1)))
}

/// The address to bind for `configured`: itself, or with `--bind-all` the same port on
/// every interface. Kubernetes needs the latter (`deploy/kubernetes/`): a node's configured
/// address there is its Service's fixed ClusterIP, which survives the pod being rescheduled
/// but is not an address of the pod, so it cannot be bound.
fn listen_addr(configured: SocketAddr, bind_all: bool) -> SocketAddr {
    if !bind_all {
        return configured;
    }
    let any: IpAddr = match configured {
        SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    SocketAddr::new(any, configured.port())
}

/// Arms the storage failpoints named in `FAILPOINTS` (`name=actions;...`, the `fail`
/// crate's format), so a crash test can fail a node's very first write. Only a build with
/// the `failpoints` feature (the process tests' build) has them; a release build says it
/// ignores the variable rather than pretend to inject anything.
fn arm_failpoints_from_env() -> Result<(), String> {
    let Some(spec) = std::env::var("FAILPOINTS")
        .ok()
        .filter(|s| !s.trim().is_empty())
    else {
        return Ok(());
    };
    if !storage::failpoint::ENABLED {
        tracing::warn!(
            "FAILPOINTS is set but this build has no failpoints (the `failpoints` feature); ignored"
        );
        return Ok(());
    }
    storage::failpoint::configure_all(&spec).map_err(|e| format!("FAILPOINTS: {e}"))?;
    tracing::warn!(%spec, "storage failpoints armed (test build)");
    Ok(())
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and returns the soft limit in effect.
///
/// systemd starts services with a soft limit of 1024 (kept low only for programs that use
/// `select(2)`) and a much higher hard one; a node needs a descriptor per client and peer
/// connection besides its files, and running out of them stops it (issue 12).
fn raise_fd_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass; no other memory is involved.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        let e = std::io::Error::last_os_error();
        tracing::warn!("cannot read RLIMIT_NOFILE: {e}; assuming 1024 file descriptors");
        return 1024;
    }
    let soft = limit.rlim_cur;
    // An unlimited hard limit still cannot exceed fs.nr_open (1 Mi by default).
    let target = if limit.rlim_max == libc::RLIM_INFINITY {
        1 << 20
    } else {
        limit.rlim_max
    };
    if soft >= target {
        tracing::info!(
            soft,
            hard = limit.rlim_max,
            "RLIMIT_NOFILE already at its hard limit"
        );
        return soft;
    }
    let raised = libc::rlimit {
        rlim_cur: target,
        rlim_max: limit.rlim_max,
    };
    // SAFETY: setrlimit reads the struct we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
        let e = std::io::Error::last_os_error();
        tracing::warn!(
            soft,
            hard = limit.rlim_max,
            "cannot raise RLIMIT_NOFILE to its hard limit: {e}; serving with {soft} file \
             descriptors (raise LimitNOFILE= in the service unit)"
        );
        return soft;
    }
    tracing::info!(
        from = soft,
        to = target,
        hard = limit.rlim_max,
        "raised the soft RLIMIT_NOFILE to the hard limit"
    );
    target
}

/// The client API's connection bounds: `max_client_connections` as configured, or derived
/// from the descriptor limit in effect.
fn client_connection_limits(config: &ClusterConfig, fd_limit: u64) -> ConnectionLimits {
    let configured = config.client_connection_limits();
    let connections_max = match configured.connections_max {
        Some(max) => u32::try_from(max).unwrap_or(u32::MAX),
        None => api::server::default_connections_max(fd_limit),
    };
    if u64::from(connections_max) + api::server::RESERVED_FDS > fd_limit {
        tracing::warn!(
            connections_max,
            fd_limit,
            "max_client_connections leaves fewer than {} of the {fd_limit} file descriptors \
             to peers and storage; idle clients could stop this node",
            api::server::RESERVED_FDS
        );
    }
    tracing::info!(
        connections_max,
        fd_limit,
        header_read_timeout_ms = configured.header_read_timeout_ms,
        idle_timeout_ms = configured.idle_timeout_ms,
        "client connection limits"
    );
    ConnectionLimits {
        connections_max,
        header_read_timeout: Duration::from_millis(configured.header_read_timeout_ms),
        idle_timeout: Duration::from_millis(configured.idle_timeout_ms),
    }
}

/// The client API's limits from the cluster file.
fn api_options(config: &ClusterConfig, connections: ConnectionLimits) -> ApiOptions {
    ApiOptions {
        // Test-only fault switches for process tests; never set in production.
        test_faults: std::env::var("RAFTLOG_TEST_FAULTS").is_ok_and(|v| v == "1"),
        log_page_max_bytes: config.log_page_max_bytes(),
        log_page_max_entries: config.log_page_max_entries(),
        log_read_max_bytes_per_second: config.log_read_max_bytes_per_second(),
        snapshot_request_timeout: config.snapshot_request_timeout(),
        ready_max_lag_entries: config.ready_max_lag_entries(),
        auth: config
            .auth()
            .map(|auth| std::sync::Arc::new(api::auth::Authenticator::new(auth))),
        connections,
        watch: api::watch::WatchOptions {
            watchers_max: config.watchers_max() as usize,
            buffer_bytes_max: config.watch_buffer_bytes_max() as usize,
            ..Default::default()
        },
        ..ApiOptions::default()
    }
}

async fn serve(
    mut options: NodeOptions,
    api_addr: std::net::SocketAddr,
    api_options: ApiOptions,
    join: Option<Vec<String>>,
    bind_all: bool,
) -> i32 {
    let configured = options.bootstrap.clone();
    if let Some(addrs) = &join {
        options.bootstrap = tokio::select! {
            bootstrap = join_bootstrap(&options, addrs) => match bootstrap {
                Ok(bootstrap) => bootstrap,
                Err(message) => {
                    eprintln!("raftlog serve: {message}");
                    return EXIT_FAILED;
                }
            },
            signal = shutdown_signal() => {
                tracing::info!("{signal} while waiting for a member to answer: stopping");
                return 0;
            }
        };
    }
    let raft_addr = options.raft_addr;
    crate::security::warn_if_exposed(options.id, raft_addr, api_addr, options.tls.is_some());
    if let Some(tls) = options.tls.clone() {
        tokio::spawn(reload_tls_on_sighup(tls));
    }
    let options_tls = options.tls.clone();
    let api_options = ApiOptions {
        tls: options.tls.clone(),
        ..api_options
    };
    let data_dir = options.data_dir.clone();
    let heartbeat_interval = options.heartbeat_interval;
    // The configured addresses stay what peers and clients are told (membership, join);
    // only the sockets change with --bind-all.
    let listen_options = NodeOptions {
        raft_addr: listen_addr(options.raft_addr, bind_all),
        ..options
    };
    let node = match node::start(listen_options, KvStore::new()).await {
        Ok(node) => node,
        Err(e) => {
            eprintln!(
                "raftlog serve: cannot start node (data in {}): {e}",
                data_dir.display()
            );
            return EXIT_FAILED;
        }
    };
    let listener = match api::server::bind(listen_addr(api_addr, bind_all)) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("raftlog serve: cannot listen for clients on {api_addr}: {e}; is another process using it?");
            return EXIT_FAILED;
        }
    };
    tracing::info!(id = node.id, %api_addr, "serving clients");
    let live = node.membership();
    if live != configured {
        // After the first start the log's membership is the truth (API.md); say so once.
        tracing::warn!(
            live = %describe(&live),
            configured = %describe(&configured),
            "the membership in this node's log differs from nodes in the config file; the log's is in effect"
        );
    }
    let (join_failed_tx, join_failed) = tokio::sync::oneshot::channel();
    if let Some(addrs) = join.filter(|_| !live.members.contains_key(&node.id)) {
        let id = node.id;
        let tls = options_tls.clone();
        tokio::spawn(async move {
            let asked = join::request_membership(
                &addrs,
                id,
                &raft_addr.to_string(),
                &api_addr.to_string(),
                tls,
            )
            .await;
            if let Err(message) = asked {
                let _ = join_failed_tx.send(message);
            }
        });
    }
    let (stop_serving, serving_stopped) = tokio::sync::oneshot::channel::<()>();
    let mut server = tokio::spawn(api::serve_until(
        listener,
        node.clone(),
        api_options,
        async move {
            let _ = serving_stopped.await;
        },
    ));
    let signal = tokio::select! {
        result = &mut server => return server_exit(result),
        Ok(message) = join_failed => {
            eprintln!("raftlog serve: node {} cannot join: {message}", node.id);
            return EXIT_FAILED;
        }
        message = node.failed() => {
            eprintln!("raftlog serve: node {} stopped: {message}", node.id);
            return EXIT_FAILED;
        }
        signal = shutdown_signal() => signal,
    };
    tracing::info!("{signal}: stopping; /readyz now answers 503");
    // Everything acknowledged is already durable; a stop only spares the cluster an
    // election timeout without a leader (thesis §3.10) and lets requests in flight finish.
    tokio::select! {
        stopped = node.begin_stop() => match stopped {
            Ok(Some(done)) => {
                tracing::info!(
                    to = done.leader,
                    elapsed_ms = done.elapsed.as_millis() as u64,
                    "handed leadership over before stopping"
                );
                // Peers learn of the new leader from its heartbeats; until then they may
                // still forward writes here. Closing connections in the middle of one
                // would leave its outcome unknown (a 504), so keep serving a few
                // heartbeats: writes arriving now are forwarded to the new leader.
                tokio::time::sleep(heartbeat_interval * HANDOVER_SETTLE_HEARTBEATS).await;
            }
            Ok(None) => {}
            Err(e) => tracing::warn!("stopping without handing leadership over: {e}"),
        },
        signal = shutdown_signal() => {
            tracing::warn!("{signal} again: stopping at once");
            return 0;
        }
    }
    let _ = stop_serving.send(());
    let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
    let drained = tokio::time::timeout_at(deadline, &mut server).await;
    // Writes followers forwarded here are requests in progress too, on the peer links.
    if !node.finish_stop(deadline, heartbeat_interval).await {
        tracing::warn!(
            "writes forwarded by followers still unanswered after {DRAIN_TIMEOUT:?}; stopping anyway (their clients see 504, outcome unknown)"
        );
    }
    match drained {
        Ok(result) => server_exit(result),
        Err(_) => {
            tracing::warn!(
                "requests still in progress after {DRAIN_TIMEOUT:?}; stopping anyway (their clients see the connection close)"
            );
            0
        }
    }
}

/// Heartbeats a node that handed leadership over keeps serving before it closes its
/// connections.
const HANDOVER_SETTLE_HEARTBEATS: u32 = 4;

/// How long a stopping node keeps answering the requests it already accepted: a write's
/// own timeout, so that writes proposed before a leadership transfer get their outcome.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(6);

fn server_exit(result: Result<std::io::Result<()>, tokio::task::JoinError>) -> i32 {
    match result {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => {
            eprintln!("raftlog serve: the client API failed: {e}");
            EXIT_FAILED
        }
        Err(e) => {
            eprintln!("raftlog serve: the client API task failed: {e}");
            EXIT_FAILED
        }
    }
}

/// The membership a joining node starts with (never one in which it votes). A node with
/// no data asks a member for the live one; a node with data already has its own, and the
/// configured nodes (without itself) only stand in if its store somehow lacks one.
async fn join_bootstrap(options: &NodeOptions, addrs: &[String]) -> Result<Membership, String> {
    if options.data_dir.join("stable").exists() {
        let mut fallback = options.bootstrap.clone();
        fallback.members.remove(&options.id);
        return Ok(fallback);
    }
    join::fetch_membership(addrs, options.id, options.tls.clone()).await
}

fn describe(membership: &Membership) -> String {
    let parts: Vec<String> = membership
        .members
        .iter()
        .map(|(id, m)| {
            format!(
                "{id}{}@{}",
                if m.voter { "" } else { "(learner)" },
                m.raft_addr
            )
        })
        .collect();
    parts.join(", ")
}

/// Re-reads the TLS certificates and keys on every SIGHUP (issue 16), so a certificate is
/// rotated by replacing the files and signalling, without a restart. New connections use
/// the new material; open ones keep theirs. A file that fails to load is reported and the
/// material in use is kept.
async fn reload_tls_on_sighup(tls: std::sync::Arc<crate::security::tls::NodeTls>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(hangup) => hangup,
        Err(e) => {
            tracing::warn!("cannot listen for SIGHUP ({e}); certificates reload only on restart");
            return;
        }
    };
    while hangup.recv().await.is_some() {
        match tls.reload() {
            Ok(()) => tracing::info!(
                cert = %tls.paths().cert.display(),
                not_after_unix = tls.not_after_unix(),
                "SIGHUP: reloaded the TLS certificate and key"
            ),
            Err(e) => {
                tracing::error!("SIGHUP: cannot reload TLS material, keeping the old one: {e}")
            }
        }
    }
}

async fn shutdown_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut term) = signal(SignalKind::terminate()) else {
            let _ = tokio::signal::ctrl_c().await;
            return "SIGINT";
        };
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = tokio::signal::ctrl_c() => "SIGINT",
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "Ctrl-C"
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    use super::worker_threads;

    #[test]
    fn a_node_leaves_a_core_to_its_own_threads_unless_told_otherwise() {
        assert_eq!(worker_threads(None, None, 2), Ok(1));
        assert_eq!(worker_threads(None, None, 16), Ok(15));
        assert_eq!(worker_threads(None, None, 1), Ok(1));
        assert_eq!(worker_threads(Some(4), None, 2), Ok(4));
        // TOKIO_WORKER_THREADS wins over the file.
        assert_eq!(worker_threads(Some(4), Some(OsStr::new("2")), 2), Ok(2));
        assert_eq!(worker_threads(None, Some(OsStr::new(" 3 ")), 16), Ok(3));
    }

    #[test]
    fn a_bad_tokio_worker_threads_is_refused_with_what_to_do() {
        for bad in ["0", "two", "", "-1", "1025"] {
            let message = worker_threads(None, Some(OsStr::new(bad)), 2).unwrap_err();
            assert!(
                message.starts_with(&format!("TOKIO_WORKER_THREADS is {bad:?}, not a number"))
                    && message.contains("unset it"),
                "{message}"
            );
        }
    }
}
