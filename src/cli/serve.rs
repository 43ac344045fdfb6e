//! `raftlog serve`: run one node until SIGTERM/SIGINT.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{init_tracing, EXIT_FAILED, EXIT_USAGE};
use crate::api::{self, ApiOptions};
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
    config.validate_node_id(id).map_err(|e| e.to_string())?;
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
        api_addr: me.api_addr,
        heartbeat_interval: config.heartbeat_interval(),
        election_timeout: config.election_timeout(),
        snapshot_threshold: config.snapshot_threshold(),
        wal_segment_bytes: config.wal_segment_bytes(),
        snapshot_trailing_entries: config.snapshot_trailing_entries(),
        tick: TICK,
        membership_policy: node::membership::MembershipPolicy {
            promote_lag_entries: config.promote_lag_entries(),
            promote_stable: config.promote_stable(),
        },
    })
}

/// Runs the node; returns the exit status.
pub fn run(config_path: &Path, id: u64, data_dir: Option<PathBuf>) -> i32 {
    init_tracing();
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
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("raftlog serve: cannot start the async runtime: {e}");
            return EXIT_FAILED;
        }
    };
    runtime.block_on(serve(options))
}

async fn serve(options: NodeOptions) -> i32 {
    let api_addr = options.api_addr;
    let data_dir = options.data_dir.clone();
    let node = match node::start(options, KvStore::new()).await {
        Ok(node) => node,
        Err(e) => {
            eprintln!(
                "raftlog serve: cannot start node (data in {}): {e}",
                data_dir.display()
            );
            return EXIT_FAILED;
        }
    };
    let listener = match tokio::net::TcpListener::bind(api_addr).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("raftlog serve: cannot listen for clients on {api_addr}: {e}; is another process using it?");
            return EXIT_FAILED;
        }
    };
    tracing::info!(id = node.id, %api_addr, "serving clients");
    let server = api::serve(listener, node.clone(), ApiOptions::default());
    tokio::select! {
        result = server => match result {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("raftlog serve: the client API failed: {e}");
                EXIT_FAILED
            }
        },
        message = node.failed() => {
            eprintln!("raftlog serve: node {} stopped: {message}", node.id);
            EXIT_FAILED
        }
        signal = shutdown_signal() => {
            tracing::info!("{signal}: stopping");
            // Everything acknowledged is already durable; nothing to flush.
            0
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
