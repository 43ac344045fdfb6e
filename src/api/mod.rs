//! The client API: HTTP/1.1 with keep-alive, as specified in `shared/API.md`.
//!
//! Any node accepts any request. A follower forwards writes and linearizable reads to the
//! leader and relays the answer (`forward.rs`); `stale` reads are served locally.

pub mod auth;
mod background;
mod debug;
mod error;
mod every_request;
mod forward;
#[doc(hidden)]
pub mod fuzzing;
mod handlers;
mod json_writer;
mod log_page;
mod members;
mod metrics;
mod range;
mod refused_bodies;
pub mod server;
mod ui;
pub mod watch;

use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderName;
use axum::middleware;
use axum::routing::{get, post, put};
use axum::Router;

pub use self::error::ApiError;
pub use self::server::ConnectionLimits;
use crate::kv::KvStore;
use crate::node::Node;

/// Limits and timeouts of the API.
#[derive(Clone, Debug)]
pub struct ApiOptions {
    /// Largest accepted value (and request body), bytes.
    pub value_bytes_max: usize,
    /// How long a write or a linearizable read may wait before `504 timeout`.
    pub request_timeout: Duration,
    /// Serve the test-only fault switches under `/v1/debug/` (`RAFTLOG_TEST_FAULTS=1`).
    pub test_faults: bool,
    /// Bounds on client connections.
    pub connections: ConnectionLimits,
    // Issue 12, "logpage".
    /// Largest `GET /v1/log` page, bytes of JSON (one larger entry is still sent alone).
    pub log_page_max_bytes: u64,
    /// Most entries in one `GET /v1/log` page.
    pub log_page_max_entries: u64,
    /// Bytes per second of `GET /v1/log` pages rendered at most, over all clients (0: no
    /// limit); see `background.rs`.
    pub log_read_max_bytes_per_second: u64,
    /// How long `POST /v1/snapshot` waits before answering `504 timeout`.
    pub snapshot_request_timeout: Duration,
    /// Issue 15: limits of watches.
    pub watch: watch::WatchOptions,
    /// Issue 17: `/readyz` answers 503 while the node is more entries than this behind the
    /// commit index last heard from a leader (0: no lag check).
    pub ready_max_lag_entries: u64,
    /// Issue 16: the users of the cluster file's `auth` section; `None`, every client is
    /// `admin` as before.
    pub auth: Option<Arc<auth::Authenticator>>,
    /// Issue 16: with `tls`, the API is HTTPS and the node reaches other nodes' APIs over
    /// HTTPS with its own certificate.
    pub tls: Option<Arc<crate::security::tls::NodeTls>>,
}

impl Default for ApiOptions {
    fn default() -> Self {
        ApiOptions {
            value_bytes_max: 1 << 20,
            request_timeout: Duration::from_secs(5),
            test_faults: false,
            connections: ConnectionLimits {
                connections_max: server::default_connections_max(1024),
                header_read_timeout: Duration::from_millis(
                    crate::config::DEFAULT_CLIENT_HEADER_READ_TIMEOUT_MS,
                ),
                idle_timeout: Duration::from_millis(crate::config::DEFAULT_CLIENT_IDLE_TIMEOUT_MS),
            },
            log_page_max_bytes: crate::config::DEFAULT_LOG_PAGE_MAX_BYTES,
            log_page_max_entries: crate::config::DEFAULT_LOG_PAGE_MAX_ENTRIES,
            log_read_max_bytes_per_second: crate::config::DEFAULT_LOG_READ_MAX_BYTES_PER_SECOND,
            snapshot_request_timeout: Duration::from_millis(
                crate::config::DEFAULT_SNAPSHOT_REQUEST_TIMEOUT_MS,
            ),
            watch: watch::WatchOptions::default(),
            ready_max_lag_entries: crate::config::DEFAULT_READY_MAX_LAG_ENTRIES,
            auth: None,
            tls: None,
        }
    }
}

/// What every handler can reach.
pub struct ApiState {
    /// The node.
    pub node: Node<KvStore>,
    /// Limits.
    pub options: ApiOptions,
    /// The low-priority thread that reads and renders `GET /v1/log` pages.
    pub background: background::BackgroundReader,
    /// Client for forwarding to the leader (keeps connections alive), and the TLS
    /// configuration it was built with: rebuilt when SIGHUP reloads the certificates, so a
    /// rotated CA or node certificate is used for new connections. Use [`ApiState::client`].
    client: std::sync::RwLock<(Option<Arc<rustls::ClientConfig>>, reqwest::Client)>,
    /// One permit per forward in flight, so that a flood of requests to a follower
    /// opens at most `forward::CONNECTIONS_MAX` (64) connections to the leader.
    pub forward_slots: tokio::sync::Semaphore,
    /// The bodies of refused writes, drained a few at a time.
    pub refused_bodies: refused_bodies::RefusedBodies,
    /// One permit per large range page being built (`range::RANGE_RENDERS_MAX`).
    pub range_renders: tokio::sync::Semaphore,
    /// What the API measures itself (request latency, connections) for `/metrics`.
    pub metrics: Arc<metrics::ApiMetrics>,
}

impl ApiState {
    /// `http` or `https`: how this node reaches other nodes' APIs.
    pub fn scheme(&self) -> &'static str {
        crate::security::tls::api_scheme(self.options.tls.as_deref())
    }

    /// The client to reach other nodes' APIs with, rebuilt once after each certificate
    /// reload (cheap to clone: it shares its connection pool).
    pub fn client(&self) -> reqwest::Client {
        let current = self.options.tls.as_ref().map(|tls| tls.api_client_config());
        {
            let held = self.client.read().unwrap_or_else(|e| e.into_inner());
            let same = match (&held.0, &current) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            };
            if same {
                return held.1.clone();
            }
        }
        let pool_idle = forward_pool_idle(&self.options);
        let client = forward_client(&self.options, current.clone(), pool_idle);
        *self.client.write().unwrap_or_else(|e| e.into_inner()) = (current, client.clone());
        client
    }
}

/// How long an idle forwarding connection is kept; see [`router`].
fn forward_pool_idle(options: &ApiOptions) -> Duration {
    (options.connections.header_read_timeout / 2)
        .min(options.connections.idle_timeout / 2)
        .min(Duration::from_secs(20))
}

/// The forwarding client, over HTTPS with `tls` (the node certificate, the cluster CA).
fn forward_client(
    options: &ApiOptions,
    tls: Option<Arc<rustls::ClientConfig>>,
    pool_idle: Duration,
) -> reqwest::Client {
    let builder = match tls {
        Some(config) => {
            crate::security::tls::http_client_builder().use_preconfigured_tls((*config).clone())
        }
        None => crate::security::tls::http_client_builder(),
    };
    builder
        .timeout(options.request_timeout + Duration::from_secs(1))
        .pool_idle_timeout(pool_idle)
        .pool_max_idle_per_host(forward::CONNECTIONS_MAX)
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}

/// The header that names the leader on every answer.
pub const LEADER_HEADER: &str = "x-raft-leader";
/// The header a forwarded request carries, so it is never forwarded twice.
pub const FORWARDED_HEADER: &str = "x-raftlog-forwarded-by";
// The request path's header names, parsed once: a look-up by `&str` checks and lower-cases
// the name first, ~400 instructions a time and five per write (callgrind).
const LEADER_HEADER_NAME: HeaderName = HeaderName::from_static(LEADER_HEADER);
const FORWARDED_HEADER_NAME: HeaderName = HeaderName::from_static(FORWARDED_HEADER);
/// `X-Raft-Index`: the index an answer's state was read at.
const RAFT_INDEX_HEADER_NAME: HeaderName = HeaderName::from_static("x-raft-index");

/// Builds the router.
pub fn router(node: Node<KvStore>, options: ApiOptions) -> Router {
    app(node, options).0
}

/// The router and the state its handlers share.
fn app(node: Node<KvStore>, options: ApiOptions) -> (Router, Arc<ApiState>) {
    crate::security::tls::install_crypto_provider();
    let test_faults = options.test_faults;
    // reqwest has no cap on connections, only on idle ones; `forward_slots` caps those
    // in use. Idle ones close well before the leader would close them for waiting too
    // long for a request head (the header-read timeout; the cluster file is shared, so
    // the leader's is this node's), so a request is never sent into one it is closing.
    let pool_idle = forward_pool_idle(&options);
    let tls_config = options.tls.as_ref().map(|tls| tls.api_client_config());
    let client = forward_client(&options, tls_config.clone(), pool_idle);
    let background = background::BackgroundReader::start(options.log_read_max_bytes_per_second);
    let state = Arc::new(ApiState {
        node,
        options,
        background,
        client: std::sync::RwLock::new((tls_config, client)),
        forward_slots: tokio::sync::Semaphore::new(forward::CONNECTIONS_MAX),
        refused_bodies: refused_bodies::RefusedBodies::default(),
        range_renders: tokio::sync::Semaphore::new(range::RANGE_RENDERS_MAX),
        metrics: Arc::default(),
    });
    let router = Router::new()
        .route(
            "/v1/kv/{*key}",
            put(handlers::put_key)
                .get(handlers::get_key)
                .delete(handlers::delete_key),
        )
        .route("/v1/cas", post(handlers::cas))
        .route("/v1/status", get(handlers::status))
        .route("/v1/log", get(handlers::log))
        .route("/v1/snapshot", post(handlers::snapshot))
        .route("/v1/members", get(members::list).post(members::add))
        .route(
            "/v1/members/{id}",
            axum::routing::delete(members::change_by_id),
        )
        .route("/v1/members/{id}/promote", post(members::change_by_id))
        .route("/v1/members/{id}/demote", post(members::change_by_id))
        .route("/v1/leader/transfer", post(handlers::transfer_leader))
        .route("/metrics", get(metrics::metrics))
        .route("/healthz", get(handlers::healthz))
        .route("/readyz", get(handlers::readyz))
        // Issue 15: range reads, watch, change feed.
        .route("/v1/kv", get(range::range))
        .route("/v1/watch", get(watch::watch))
        .route("/v1/changes", get(watch::changes))
        // Issue 17: the live cluster page and the endpoint it polls.
        .route("/ui", get(ui::page))
        .route("/v1/cluster/status", get(ui::cluster_status));
    let router = if test_faults {
        router
            .route("/v1/debug/isolate", post(debug::isolate))
            .route("/v1/debug/failpoint", post(debug::failpoint))
    } else {
        router
    };
    let router = router
        // After routing, so the rights table and the request timings are looked up by the
        // matched route pattern. A path no route matches gets `not_found`'s JSON answer.
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            every_request::around,
        ))
        .fallback(handlers::not_found)
        .with_state(state.clone());
    (router, state)
}

/// Serves the API on `listener` until the process exits.
pub async fn serve(
    listener: tokio::net::TcpListener,
    node: Node<KvStore>,
    options: ApiOptions,
) -> std::io::Result<()> {
    serve_until(listener, node, options, std::future::pending()).await
}

/// Serves the API on `listener` within `options.connections` until `stop` resolves, then
/// stops accepting connections and returns once the requests in progress are answered (a
/// graceful stop).
pub async fn serve_until(
    listener: tokio::net::TcpListener,
    node: Node<KvStore>,
    options: ApiOptions,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = options.connections;
    let https = options.tls.clone().map(|tls| {
        let membership_of = node.clone();
        server::HttpsOptions {
            tls,
            identify: Arc::new(move |leaf| {
                if let Some(role) = crate::security::tls::client_role(leaf) {
                    return Some(auth::TlsIdentity::Client(role));
                }
                membership_of
                    .membership()
                    .members
                    .keys()
                    .copied()
                    .find(|id| crate::security::tls::names(leaf, &crate::security::node_name(*id)))
                    .map(auth::TlsIdentity::Node)
            }),
        }
    });
    let (router, state) = app(node, options);
    let routes = server::Routes::with_shortcut(router, every_request::kv_shortcut(state));
    server::serve_with(listener, routes, limits, stop, https).await
}
