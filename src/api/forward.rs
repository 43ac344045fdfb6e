//! Follower → leader forwarding: the follower replays the client's request against the
//! leader's API and relays the answer unchanged.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use storage::NodeId;

use super::{ApiError, ApiState, FORWARDED_HEADER};

/// Headers worth carrying each way.
const RELAYED_REQUEST_HEADERS: [&str; 2] = ["request-id", "content-type"];
const RELAYED_RESPONSE_HEADERS: [&str; 3] = ["content-type", "x-raft-index", "x-raft-leader"];

/// Whether the request already went through a forwarding node.
pub fn was_forwarded(headers: &HeaderMap) -> bool {
    headers.contains_key(FORWARDED_HEADER)
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
    let timeout = state.options.request_timeout + std::time::Duration::from_secs(1);
    to_leader_with_timeout(
        state,
        leader,
        method,
        path_and_query,
        headers,
        body,
        idempotent,
        timeout,
    )
    .await
}

/// [`to_leader`] for a request the leader may take longer than a write to answer
/// (a membership change waits for a learner to catch up).
#[allow(clippy::too_many_arguments)]
pub async fn to_leader_with_timeout(
    state: &ApiState,
    leader: Option<NodeId>,
    method: Method,
    path_and_query: &str,
    headers: &HeaderMap,
    body: Bytes,
    idempotent: bool,
    timeout: std::time::Duration,
) -> Response {
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
    let url = format!("http://{api_addr}{path_and_query}");
    let mut request = state
        .client
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
    // for it once this node has learned of another leader.
    let sent = tokio::select! {
        sent = request.send() => sent,
        _ = state.node.leader_changed_from(leader) => {
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
