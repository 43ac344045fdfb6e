//! Follower → leader forwarding: the follower replays the client's request against the
//! leader's API and relays the answer unchanged.

use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use storage::NodeId;

use super::{ApiError, ApiState, FORWARDED_HEADER, FORWARDED_HEADER_NAME};

/// Headers worth carrying each way.
/// `authorization` goes on so the leader authenticates the client again (issue 16): a
/// follower never vouches for a password-authenticated client. The forwarded role is
/// trusted by the leader only from a member presenting its node certificate.
const RELAYED_REQUEST_HEADERS: [&str; 4] = [
    "request-id",
    "content-type",
    "authorization",
    super::auth::FORWARDED_ROLE_HEADER,
];
const RELAYED_RESPONSE_HEADERS: [&str; 3] = ["content-type", "x-raft-index", "x-raft-leader"];

/// How long a forwarded request may still wait for the old leader's answer after this node
/// learned of a new leader, while the old leader answers health probes. The new leader's
/// first AppendEntries commits what the old one proposed: milliseconds, unless the machine
/// is overloaded.
const LEADER_CHANGE_WAIT_MAX: Duration = Duration::from_secs(3);
/// Most requests forwarded to the leader at once, hence most connections this node opens
/// to it: a follower flooded by clients must not flood the leader with sockets. Far above
/// what a leader needs to keep busy (forwarded writes are batched into one proposal).
pub const CONNECTIONS_MAX: usize = 64;
/// A health probe unanswered this long means the old leader is frozen: give up on it.
const LIVENESS_PROBE_TIMEOUT: Duration = Duration::from_millis(300);

/// Returns when the node at `api_addr` stops answering `/healthz` in time (frozen), or
/// after [`LEADER_CHANGE_WAIT_MAX`]. A refused connection does not end the wait: a
/// stopping node closes its listener while it still answers the requests it accepted, and
/// a node that is gone fails the forwarded request by itself.
async fn wait_while_alive(state: &ApiState, api_addr: &str) {
    let deadline = tokio::time::Instant::now() + LEADER_CHANGE_WAIT_MAX;
    let url = format!("{}://{api_addr}/healthz", state.scheme());
    while tokio::time::Instant::now() < deadline {
        let probe = state
            .client()
            .get(&url)
            .timeout(LIVENESS_PROBE_TIMEOUT)
            .send()
            .await;
        if matches!(&probe, Err(e) if e.is_timeout()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether the request already went through a forwarding node.
pub fn was_forwarded(headers: &HeaderMap) -> bool {
    headers.contains_key(FORWARDED_HEADER_NAME)
}

/// Sends the request to `leader`. `idempotent` tells how to read a failure after the
/// request may have reached the leader: a read can say "no leader", a write must say
/// "unknown" (it may commit).
pub async fn to_leader(
    state: &ApiState,
    leader: Option<NodeId>,
    method: Method,
    path_and_query: &str,
    headers: &HeaderMap,
    body: Bytes,
    idempotent: bool,
) -> Response {
    let request = Forwarded::new(state, method, path_and_query, headers, body);
    send_to_leader(state, leader, request, idempotent, true).await
}

/// [`to_leader`] for a write the leader may take longer than `request_timeout` to answer
/// (a membership change waits for a learner to catch up): it waits up to `timeout`.
pub async fn to_leader_with_timeout(
    state: &ApiState,
    leader: Option<NodeId>,
    request: Forwarded<'_>,
    timeout: Duration,
) -> Response {
    let request = Forwarded { timeout, ..request };
    send_to_leader(state, leader, request, false, true).await
}

/// Forwards a leadership transfer: unlike a write, its answer is still awaited when this
/// node learns of another leader, since that is what a transfer sets out to cause.
pub async fn transfer_to_leader(
    state: &ApiState,
    leader: Option<NodeId>,
    path_and_query: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    let request = Forwarded::new(state, Method::POST, path_and_query, headers, body);
    send_to_leader(state, leader, request, false, false).await
}

/// A client request to replay against the leader.
pub struct Forwarded<'a> {
    method: Method,
    path_and_query: &'a str,
    headers: &'a HeaderMap,
    body: Bytes,
    timeout: Duration,
}

impl<'a> Forwarded<'a> {
    /// The request, given as long as a write takes: `request_timeout` and a second for
    /// the hop.
    pub fn new(
        state: &ApiState,
        method: Method,
        path_and_query: &'a str,
        headers: &'a HeaderMap,
        body: Bytes,
    ) -> Forwarded<'a> {
        Forwarded {
            method,
            path_and_query,
            headers,
            body,
            timeout: state.options.request_timeout + Duration::from_secs(1),
        }
    }
}

async fn send_to_leader(
    state: &ApiState,
    leader: Option<NodeId>,
    forwarded: Forwarded<'_>,
    idempotent: bool,
    abandon_on_leader_change: bool,
) -> Response {
    let Forwarded {
        method,
        path_and_query,
        headers,
        body,
        timeout,
    } = forwarded;
    if was_forwarded(headers) {
        return ApiError::no_leader(format!(
            "node {} was sent a forwarded request but does not lead; leadership is changing, retry shortly",
            state.node.id
        ))
        .into_response();
    }
    let Some(leader) = leader.filter(|l| *l != state.node.id) else {
        return ApiError::no_leader(
            "no leader is known right now; nothing was proposed; retry shortly",
        )
        .into_response();
    };
    let Some(api_addr) = state
        .node
        .membership()
        .members
        .get(&leader)
        .map(|m| m.api_addr.clone())
    else {
        return ApiError::no_leader(format!(
            "leader {leader} is not in this node's membership; retry shortly"
        ))
        .into_response();
    };
    // Waiting for a slot is bounded by the request's own timeout; nothing is sent before.
    let Ok(Ok(_slot)) = tokio::time::timeout(timeout, state.forward_slots.acquire()).await else {
        return ApiError::overloaded(format!(
            "node {} has {CONNECTIONS_MAX} requests in flight to leader {leader} and none \
             finished within {timeout:?}; nothing was proposed; retry later or send to the leader",
            state.node.id
        ))
        .into_response();
    };
    let url = format!("{}://{api_addr}{path_and_query}", state.scheme());
    let mut request = state
        .client()
        .request(method, &url)
        .header(FORWARDED_HEADER, state.node.id.to_string())
        .timeout(timeout)
        .body(body);
    for name in RELAYED_REQUEST_HEADERS {
        if let Some(value) = headers.get(name) {
            request = request.header(name, value.clone());
        }
    }
    // A leader that stopped (SIGSTOP, a frozen VM) still accepts connections; do not wait
    // for it once this node has learned of another leader. A leader that handed over on
    // purpose (a transfer, a graceful stop) is alive and answers the writes it proposed
    // before, once the new leader commits them (thesis §3.10): wait for it while it is.
    let abandon = async {
        if abandon_on_leader_change {
            state.node.leader_changed_from(leader).await;
            wait_while_alive(state, &api_addr).await;
        } else {
            std::future::pending::<()>().await
        }
    };
    // Biased: on a starved runtime both may be ready at once, and an answer that arrived
    // must win over giving up on it.
    let sent = tokio::select! {
        biased;
        sent = request.send() => sent,
        _ = abandon => {
            return if idempotent {
                ApiError::no_leader(format!("leadership moved away from {leader} while forwarding; retry"))
                    .into_response()
            } else {
                ApiError::timeout(format!(
                    "leadership moved away from {leader} while the write was forwarded to it; it may or may not take effect"
                ))
                .into_response()
            };
        }
    };
    match sent {
        Ok(answer) => relay(answer).await,
        Err(e) if e.is_connect() => ApiError::no_leader(format!(
            "cannot reach leader {leader} at {api_addr}: {e}; nothing was proposed; retry shortly"
        ))
        .into_response(),
        Err(e) if idempotent => {
            ApiError::no_leader(format!("forwarding to leader {leader} at {api_addr} failed: {e}")).into_response()
        }
        Err(e) => ApiError::timeout(format!(
            "forwarding to leader {leader} at {api_addr} failed after sending: {e}; the write may or may not take effect"
        ))
        .into_response(),
    }
}

async fn relay(answer: reqwest::Response) -> Response {
    let status = StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut headers = HeaderMap::new();
    for name in RELAYED_RESPONSE_HEADERS {
        if let Some(value) = answer.headers().get(name) {
            if let Ok(value) = HeaderValue::from_bytes(value.as_bytes()) {
                headers.insert(name, value);
            }
        }
    }
    match answer.bytes().await {
        Ok(body) => (status, headers, Body::from(body)).into_response(),
        Err(e) => ApiError::timeout(format!(
            "the leader's answer was cut off: {e}; the outcome is unknown"
        ))
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use axum::extract::Path;
    use axum::routing::get;

    use super::*;
    use crate::api::error::tests::every_request_error;

    /// A follower relays what the leader answered: a refusal reaches the client with the
    /// status, code and message it had at the leader, whichever kind it is.
    #[tokio::test]
    async fn a_refusal_relayed_from_the_leader_keeps_its_status_code_and_message() {
        let refusals = every_request_error();
        let answers: Vec<ApiError> = refusals
            .iter()
            .map(|(error, _, _)| ApiError::from(error.clone()))
            .collect();
        let leader = axum::Router::new().route(
            "/{n}",
            get(move |Path(n): Path<usize>| {
                let answer = answers[n].clone();
                async move { answer }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the stand-in leader's port");
        let addr = listener
            .local_addr()
            .expect("the stand-in leader's address");
        let server = tokio::spawn(async move { axum::serve(listener, leader).await });
        crate::security::tls::install_crypto_provider();
        let client = reqwest::Client::new();
        for (n, (error, status, code)) in refusals.into_iter().enumerate() {
            let at_leader = ApiError::from(error.clone()).into_response();
            let leader_body = axum::body::to_bytes(at_leader.into_body(), 1 << 16)
                .await
                .expect("the leader's answer body");
            let answer = client
                .get(format!("http://{addr}/{n}"))
                .send()
                .await
                .expect("the stand-in leader answers");
            let relayed = relay(answer).await;
            assert_eq!(
                relayed.status(),
                status,
                "{error:?} relayed with another status"
            );
            assert_eq!(
                relayed.headers().get("content-type").map(|v| v.as_bytes()),
                Some(&b"application/json"[..]),
                "{error:?} relayed without its content type"
            );
            let body = axum::body::to_bytes(relayed.into_body(), 1 << 16)
                .await
                .expect("the relayed body");
            assert_eq!(body, leader_body, "{error:?}: the body changed on the way");
            let json: serde_json::Value =
                serde_json::from_slice(&body).expect("the relayed body is JSON");
            assert_eq!(
                json["error"]["code"], code,
                "{error:?} relayed with another code"
            );
        }
        server.abort();
    }
}
