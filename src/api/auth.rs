//! Client authentication and rights (issue 16).
//!
//! With an `auth` section in the cluster file every client request, except the few open
//! ones of [`RIGHTS`], must prove who sends it, by HTTP Basic (a user of `auth.users`) or,
//! over HTTPS, by a client certificate whose DNS SAN is `raftlog-client-<role>`. Without
//! either it is answered `401 unauthenticated` (with `WWW-Authenticate: Basic`); with a role
//! too weak for the route, `403 forbidden` naming the role needed and the role held.
//!
//! **Open routes.** `/healthz` and `/readyz` (load balancers and Kubernetes probes carry no
//! credentials) and `GET /v1/status`: a node that starts on an empty disk asks its peers'
//! status to tell a first start from a wiped disk, and a node that lost its leader asks it
//! to learn whether it was removed (`node/bootstrap.rs`); in plaintext mode a node has no
//! identity to present, and the status holds no key or value, only ids, addresses, terms and
//! indexes (which the peer port reveals anyway). Everything else needs at least `read`.
//!
//! **Passwords are verified once, not per request.** Argon2id costs tens of milliseconds by
//! design; a verified (user, password) pair is kept for [`CACHE_TTL`] in a bounded cache
//! ([`CACHE_ENTRIES_MAX`]) keyed by a keyed BLAKE2b of the pair, with a key drawn at start,
//! so the plaintext is never kept and a memory dump does not give a table to test guesses
//! against offline. Failures are not cached (a wrong guess costs an Argon2 run each time),
//! and at most [`VERIFYING_MAX`] verifications run at once, on the blocking pool, so a flood
//! of bad passwords costs at most that many cores.
//!
//! **Forwarding.** A follower relays the client's `Authorization` header to the leader,
//! which authenticates the client again: a follower cannot be used to escalate.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use blake2::digest::{KeyInit, Mac};

use super::{ApiError, ApiState};
use crate::config::AuthConfig;
use crate::security::Role;

/// How long a verified credential is trusted without verifying it again.
pub const CACHE_TTL: Duration = Duration::from_secs(300);
/// Most credentials kept verified at once.
pub const CACHE_ENTRIES_MAX: usize = 4096;
/// Most Argon2 verifications running at once.
pub const VERIFYING_MAX: usize = 2;

/// What a route needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Anyone, even with auth configured.
    Open,
    /// At least this role.
    Needs(Role),
}

/// Each route (method and axum path pattern) and what it needs. A route missing here needs
/// `admin` (`needed`), so a new endpoint is closed until someone decides otherwise; a test
/// checks every route of the router has an entry.
pub const RIGHTS: &[(&str, &str, Access)] = &[
    ("GET", "/v1/kv/{*key}", Access::Needs(Role::Read)),
    ("PUT", "/v1/kv/{*key}", Access::Needs(Role::Write)),
    ("DELETE", "/v1/kv/{*key}", Access::Needs(Role::Write)),
    ("POST", "/v1/cas", Access::Needs(Role::Write)),
    ("GET", "/v1/status", Access::Open),
    ("GET", "/v1/log", Access::Needs(Role::Read)),
    ("POST", "/v1/snapshot", Access::Needs(Role::Admin)),
    ("GET", "/v1/members", Access::Needs(Role::Read)),
    ("POST", "/v1/members", Access::Needs(Role::Admin)),
    ("DELETE", "/v1/members/{id}", Access::Needs(Role::Admin)),
    (
        "POST",
        "/v1/members/{id}/promote",
        Access::Needs(Role::Admin),
    ),
    (
        "POST",
        "/v1/members/{id}/demote",
        Access::Needs(Role::Admin),
    ),
    ("POST", "/v1/leader/transfer", Access::Needs(Role::Admin)),
    ("GET", "/metrics", Access::Needs(Role::Read)),
    ("GET", "/healthz", Access::Open),
    ("GET", "/readyz", Access::Open),
    ("GET", "/v1/kv", Access::Needs(Role::Read)),
    ("GET", "/v1/watch", Access::Needs(Role::Read)),
    ("GET", "/v1/changes", Access::Needs(Role::Read)),
    ("GET", "/ui", Access::Needs(Role::Read)),
    ("GET", "/v1/cluster/status", Access::Needs(Role::Read)),
    ("POST", "/v1/debug/isolate", Access::Needs(Role::Admin)),
    ("POST", "/v1/debug/failpoint", Access::Needs(Role::Admin)),
];

/// What `method` on the route `path` (axum's pattern) needs.
pub fn needed(method: &Method, path: &str) -> Access {
    // axum answers HEAD with the GET route.
    let method = if method == Method::HEAD {
        "GET"
    } else {
        method.as_str()
    };
    RIGHTS
        .iter()
        .find(|(m, p, _)| *m == method && *p == path)
        .map_or(Access::Needs(Role::Admin), |(_, _, access)| *access)
}

/// A client identity proven by the connection itself (a verified client certificate),
/// put in the request's extensions by the HTTPS accept loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsIdentity {
    /// A client certificate naming `raftlog-client-<role>`.
    Client(Role),
    /// A node certificate (`raftlog-node-<id>`): a member forwarding a client's request,
    /// whose role it states in [`FORWARDED_ROLE_HEADER`].
    Node(crate::raft::NodeId),
}

/// The role a forwarding node authenticated its client with; trusted only from a
/// connection that presented a node certificate.
pub const FORWARDED_ROLE_HEADER: &str = "x-raftlog-forwarded-role";
/// [`FORWARDED_ROLE_HEADER`] parsed once, for the look-ups of every request.
const FORWARDED_ROLE_HEADER_NAME: HeaderName = HeaderName::from_static(FORWARDED_ROLE_HEADER);

/// Checks credentials against `auth.users`.
pub struct Authenticator {
    users: HashMap<String, (String, Role)>,
    key: [u8; 32],
    cache: Mutex<HashMap<[u8; 32], (Role, Instant)>>,
    verifying: tokio::sync::Semaphore,
    /// One lock per credential being verified: 64 clients that connect at once with the
    /// same user wait for one Argon2 run instead of queueing 64 (a first version took
    /// 1.5 s to answer the last of them).
    in_flight: Mutex<HashMap<[u8; 32], Arc<tokio::sync::Mutex<()>>>>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the hashes.
        f.debug_struct("Authenticator")
            .field("users", &self.users.len())
            .finish_non_exhaustive()
    }
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// No usable credentials.
    #[error("{0}")]
    Unauthenticated(String),
    /// A role too weak for the route.
    #[error("{method} {path} needs role {needed}; {who} has role {held}")]
    Forbidden {
        /// The request's method.
        method: String,
        /// The request's path.
        path: String,
        /// What the route needs.
        needed: Role,
        /// What the client proved.
        held: Role,
        /// Who the client is, for the message.
        who: String,
    },
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        match &self {
            Refused::Unauthenticated(message) => {
                let mut response = ApiError {
                    status: StatusCode::UNAUTHORIZED,
                    code: "unauthenticated",
                    message: message.clone(),
                }
                .into_response();
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"raftlog\""),
                );
                response
            }
            Refused::Forbidden { .. } => ApiError {
                status: StatusCode::FORBIDDEN,
                code: "forbidden",
                message: self.to_string(),
            }
            .into_response(),
        }
    }
}

/// A user name and password from an `Authorization: Basic` header.
fn basic_credentials(headers: &HeaderMap) -> Result<Option<(String, String)>, Refused> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let bad = |why: &str| {
        Refused::Unauthenticated(format!(
            "the Authorization header {why}; send `Authorization: Basic base64(user:password)`"
        ))
    };
    let value = value.to_str().map_err(|_| bad("is not ASCII"))?;
    let Some((scheme, encoded)) = value.split_once(' ') else {
        return Err(bad("has no scheme"));
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(bad(&format!("uses the scheme {scheme:?}, not Basic")));
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| bad("is not valid base64"))?;
    let decoded = String::from_utf8(decoded).map_err(|_| bad("is not UTF-8 once decoded"))?;
    let Some((user, password)) = decoded.split_once(':') else {
        return Err(bad("has no ':' between the user name and the password"));
    };
    Ok(Some((user.to_string(), password.to_string())))
}

impl Authenticator {
    /// An authenticator for `config`'s users, with a fresh random cache key.
    pub fn new(config: &AuthConfig) -> Authenticator {
        let mut key = [0u8; 32];
        use argon2::password_hash::rand_core::RngCore;
        argon2::password_hash::rand_core::OsRng.fill_bytes(&mut key);
        Authenticator {
            users: config
                .users
                .iter()
                .map(|(name, user)| (name.clone(), (user.password_hash.clone(), user.role)))
                .collect(),
            key,
            cache: Mutex::new(HashMap::new()),
            verifying: tokio::sync::Semaphore::new(VERIFYING_MAX),
            in_flight: Mutex::new(HashMap::new()),
        }
    }

    /// The cache key of a (user, password) pair: a MAC, so the key cannot be inverted
    /// or precomputed without the per-process secret.
    fn cache_key(&self, user: &str, password: &str) -> [u8; 32] {
        let mut mac =
            match <blake2::Blake2bMac<blake2::digest::consts::U32> as KeyInit>::new_from_slice(
                &self.key,
            ) {
                Ok(mac) => mac,
                // A 32-byte key is always accepted (BLAKE2b takes up to 64).
                Err(_) => return [0; 32],
            };
        Mac::update(&mut mac, &(user.len() as u64).to_le_bytes());
        Mac::update(&mut mac, user.as_bytes());
        Mac::update(&mut mac, password.as_bytes());
        mac.finalize().into_bytes().into()
    }

    fn cached(&self, key: &[u8; 32]) -> Option<Role> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .get(key)
            .filter(|(_, at)| at.elapsed() < CACHE_TTL)
            .map(|(role, _)| *role)
    }

    fn remember(&self, key: [u8; 32], role: Role) {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_ENTRIES_MAX {
            cache.retain(|_, (_, at)| at.elapsed() < CACHE_TTL);
        }
        if cache.len() >= CACHE_ENTRIES_MAX {
            // Still full of fresh entries: the oldest goes (its client verifies again).
            if let Some(oldest) = cache.iter().min_by_key(|(_, (_, at))| *at).map(|(k, _)| *k) {
                cache.remove(&oldest);
            }
        }
        cache.insert(key, (role, Instant::now()));
    }

    /// The role of the user `user` with `password`, verifying the password only when it
    /// is not in the cache.
    pub async fn check_password(&self, user: &str, password: &str) -> Result<Role, Refused> {
        let key = self.cache_key(user, password);
        if let Some(role) = self.cached(&key) {
            return Ok(role);
        }
        let wrong =
            || Refused::Unauthenticated(format!("wrong user name or password for user {user:?}"));
        let Some((hash, role)) = self.users.get(user).cloned() else {
            return Err(wrong());
        };
        let turn = {
            let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
            Arc::clone(in_flight.entry(key).or_default())
        };
        let verified = {
            let _turn = turn.lock().await;
            // Whoever held the turn before may have verified this very credential.
            if let Some(role) = self.cached(&key) {
                Some(role)
            } else {
                self.verify(password, hash, role, key).await
            }
        };
        {
            let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
            // The last one out removes the lock, so the map holds only credentials being
            // verified right now.
            if Arc::strong_count(&turn) == 2 {
                in_flight.remove(&key);
            }
        }
        verified.ok_or_else(wrong)
    }

    /// Runs Argon2 (at most [`VERIFYING_MAX`] at once) and caches a success.
    async fn verify(
        &self,
        password: &str,
        hash: String,
        role: Role,
        key: [u8; 32],
    ) -> Option<Role> {
        let Ok(_permit) = self.verifying.acquire().await else {
            return None;
        };
        let password = password.to_string();
        let verified = tokio::task::spawn_blocking(move || {
            crate::security::password::verify(password.as_bytes(), &hash)
        })
        .await
        .unwrap_or(false);
        if !verified {
            return None;
        }
        self.remember(key, role);
        Some(role)
    }

    /// The role the request proves, and who holds it (for messages).
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        tls: Option<TlsIdentity>,
    ) -> Result<(Role, String), Refused> {
        if let Some((user, password)) = basic_credentials(headers)? {
            let role = self.check_password(&user, &password).await?;
            return Ok((role, format!("user {user:?}")));
        }
        match tls {
            Some(TlsIdentity::Client(role)) => Ok((role, format!("the {role} client certificate"))),
            Some(TlsIdentity::Node(id)) => {
                // A member forwarding a request states the role it authenticated its
                // client with. Its own requests (`serve --join` adding itself) are admin's:
                // a node certificate already lets its holder replicate any entry through
                // the peer port, so this grants nothing new.
                match headers
                    .get(FORWARDED_ROLE_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<Role>().ok())
                {
                    Some(role) => Ok((role, format!("a client of node {id} (forwarded)"))),
                    None => Ok((Role::Admin, format!("node {id}"))),
                }
            }
            None => Err(Refused::Unauthenticated(
                "this cluster requires credentials: HTTP Basic with a user of the cluster \
                 file's auth section (the CLI's --user), or a client certificate over HTTPS"
                    .to_string(),
            )),
        }
    }
}

/// The role a request proved, as [`admit`] left it in [`FORWARDED_ROLE_HEADER`], for a
/// follower that passes the request on over the peer link. Without `auth` every client
/// holds every right (`Admin`); with it, a request that reached a handler without a proved
/// role gets the least (`Read`), so the leader's own check refuses a write rather than the
/// follower granting one by mistake.
pub fn proved_role(headers: &HeaderMap, auth_configured: bool) -> Role {
    let stated = headers
        .get(FORWARDED_ROLE_HEADER_NAME)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<Role>().ok());
    match stated {
        Some(role) => role,
        None if auth_configured => Role::Read,
        None => Role::Admin,
    }
}

/// Admits `request` to the handler of `route` (the route pattern the router matched), or
/// answers 401/403 when auth is configured and the request lacks the right. An admitted
/// request carries the role it proved in [`FORWARDED_ROLE_HEADER`] (any such header the
/// client sent is dropped first), for a forwarding follower to pass on.
pub async fn admit(state: &ApiState, request: &mut Request, route: &str) -> Result<(), Response> {
    // Only a member may state a forwarded role, and only the one that proved it here.
    let tls = request.extensions().get::<TlsIdentity>().copied();
    if !matches!(tls, Some(TlsIdentity::Node(_))) {
        request.headers_mut().remove(FORWARDED_ROLE_HEADER_NAME);
    }
    let Some(auth) = state.options.auth.as_ref() else {
        return Ok(());
    };
    let needed_role = match needed(request.method(), route) {
        Access::Open => return Ok(()),
        Access::Needs(role) => role,
    };
    let (held, who) = auth
        .authenticate(request.headers(), tls)
        .await
        .map_err(IntoResponse::into_response)?;
    if !held.permits(needed_role) {
        return Err(Refused::Forbidden {
            method: request.method().to_string(),
            path: request.uri().path().to_string(),
            needed: needed_role,
            held,
            who,
        }
        .into_response());
    }
    request.headers_mut().insert(
        FORWARDED_ROLE_HEADER_NAME,
        HeaderValue::from_static(held.as_str()),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn a_forward_carries_the_role_the_request_proved_and_never_more() {
        let mut headers = HeaderMap::new();
        assert_eq!(proved_role(&headers, false), Role::Admin);
        assert_eq!(proved_role(&headers, true), Role::Read);
        headers.insert(FORWARDED_ROLE_HEADER, HeaderValue::from_static("write"));
        assert_eq!(proved_role(&headers, true), Role::Write);
        headers.insert(FORWARDED_ROLE_HEADER, HeaderValue::from_static("root"));
        assert_eq!(proved_role(&headers, true), Role::Read);
    }
    use crate::config::UserEntry;

    /// Every `.route("PATH", get(..).post(..))` of the router's source, as (METHOD, PATH).
    fn routes_in_source() -> Vec<(String, String)> {
        let source = include_str!("mod.rs");
        let mut routes = Vec::new();
        for (at, _) in source.match_indices(".route(") {
            let rest = &source[at + ".route(".len()..];
            let open = rest.find('"').expect("a path literal");
            let close = open + 1 + rest[open + 1..].find('"').expect("end of the path");
            let path = rest[open + 1..close].to_string();
            // The call's arguments run to the parenthesis that closes `.route(`.
            let mut depth = 1;
            let mut end = 0;
            for (i, c) in rest.char_indices() {
                match c {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    _ => {}
                }
                if depth == 0 {
                    end = i;
                    break;
                }
            }
            let call = &rest[close..end];
            let mut found = false;
            for method in ["get", "put", "post", "delete"] {
                for (i, _) in call.match_indices(&format!("{method}(")) {
                    let before = call[..i].chars().last().unwrap_or(' ');
                    if !(before.is_alphanumeric() || before == '_') {
                        routes.push((method.to_uppercase(), path.clone()));
                        found = true;
                    }
                }
            }
            assert!(found, "no method found for the route {path}");
        }
        routes
    }

    #[test]
    fn every_route_of_the_router_has_an_entry_in_the_rights_table() {
        let routes = routes_in_source();
        assert!(routes.len() >= 20, "parsed too few routes: {routes:?}");
        // The key routes' shortcut answers under this route's name and rights.
        for method in ["GET", "PUT", "DELETE"] {
            assert!(
                routes
                    .iter()
                    .any(|(m, p)| m == method && p == super::super::every_request::KV_ROUTE),
                "the router has no {method} {}",
                super::super::every_request::KV_ROUTE
            );
        }
        for (method, path) in &routes {
            assert!(
                RIGHTS.iter().any(|(m, p, _)| m == method && p == path),
                "{method} {path} has no entry in auth::RIGHTS: decide what role it needs"
            );
        }
        for (method, path, _) in RIGHTS {
            assert!(
                routes.iter().any(|(m, p)| m == method && p == path),
                "RIGHTS names {method} {path}, which the router does not have"
            );
        }
    }

    #[test]
    fn rights_follow_the_contract() {
        let get = Method::GET;
        assert_eq!(needed(&get, "/v1/kv/{*key}"), Access::Needs(Role::Read));
        assert_eq!(
            needed(&Method::HEAD, "/v1/kv/{*key}"),
            Access::Needs(Role::Read)
        );
        assert_eq!(
            needed(&Method::PUT, "/v1/kv/{*key}"),
            Access::Needs(Role::Write)
        );
        assert_eq!(needed(&Method::POST, "/v1/cas"), Access::Needs(Role::Write));
        assert_eq!(
            needed(&Method::POST, "/v1/members"),
            Access::Needs(Role::Admin)
        );
        assert_eq!(needed(&get, "/healthz"), Access::Open);
        assert_eq!(
            needed(&Method::PATCH, "/v1/new"),
            Access::Needs(Role::Admin)
        );
    }

    fn authenticator(password: &str) -> Authenticator {
        let mut users = BTreeMap::new();
        users.insert(
            "ann".to_string(),
            UserEntry {
                password_hash: crate::security::password::hash(password.as_bytes()).expect("hash"),
                role: Role::Write,
            },
        );
        Authenticator::new(&AuthConfig { users })
    }

    fn basic(user: &str, password: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {encoded}")).expect("header"),
        );
        headers
    }

    #[tokio::test]
    async fn a_password_is_verified_once_then_served_from_the_cache() {
        let auth = authenticator("pw");
        let (role, _) = auth
            .authenticate(&basic("ann", "pw"), None)
            .await
            .expect("ok");
        assert_eq!(role, Role::Write);
        let started = Instant::now();
        for _ in 0..100 {
            auth.authenticate(&basic("ann", "pw"), None)
                .await
                .expect("ok");
        }
        // 100 Argon2 runs would take seconds.
        assert!(
            started.elapsed() < Duration::from_millis(100),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(auth.cache.lock().expect("lock").len(), 1);
        assert!(matches!(
            auth.authenticate(&basic("ann", "wrong"), None).await,
            Err(Refused::Unauthenticated(_))
        ));
        assert!(matches!(
            auth.authenticate(&basic("bob", "pw"), None).await,
            Err(Refused::Unauthenticated(_))
        ));
        assert!(matches!(
            auth.authenticate(&HeaderMap::new(), None).await,
            Err(Refused::Unauthenticated(_))
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn clients_arriving_together_wait_for_one_verification() {
        let auth = Arc::new(authenticator("pw"));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..32 {
            let auth = Arc::clone(&auth);
            tasks.push(tokio::spawn(async move {
                auth.authenticate(&basic("ann", "pw"), None)
                    .await
                    .map(|(role, _)| role)
            }));
        }
        for task in tasks {
            assert_eq!(task.await.expect("task"), Ok(Role::Write));
        }
        // 32 Argon2 runs, 2 at a time, would take over 300 ms.
        assert!(
            started.elapsed() < Duration::from_millis(250),
            "{:?}",
            started.elapsed()
        );
        assert!(auth.in_flight.lock().expect("lock").is_empty());
    }

    #[test]
    fn the_cache_stays_bounded() {
        let auth = authenticator("pw");
        for i in 0..CACHE_ENTRIES_MAX + 10 {
            auth.remember(auth.cache_key("ann", &i.to_string()), Role::Read);
        }
        assert_eq!(auth.cache.lock().expect("lock").len(), CACHE_ENTRIES_MAX);
    }

    #[tokio::test]
    async fn a_client_certificate_proves_its_role_and_a_node_states_its_clients() {
        let auth = authenticator("pw");
        let (role, _) = auth
            .authenticate(&HeaderMap::new(), Some(TlsIdentity::Client(Role::Read)))
            .await
            .expect("ok");
        assert_eq!(role, Role::Read);
        let mut headers = HeaderMap::new();
        headers.insert(FORWARDED_ROLE_HEADER, HeaderValue::from_static("admin"));
        let (role, _) = auth
            .authenticate(&headers, Some(TlsIdentity::Node(2)))
            .await
            .expect("ok");
        assert_eq!(role, Role::Admin);
    }

    #[test]
    fn malformed_basic_headers_are_refused() {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        assert!(basic_credentials(&headers).is_err());
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic !!!"));
        assert!(basic_credentials(&headers).is_err());
    }
}
