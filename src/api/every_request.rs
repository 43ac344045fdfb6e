//! What happens around every routed request, in one middleware: it is timed into
//! `raftlog_api_request_seconds`, let through only with the role its route needs, its
//! error answers get the JSON body and every answer the `X-Raft-Leader` header.
//!
//! API.md: every error, including a malformed query string or an unsupported method, has
//! the JSON error body. Handlers answer [`super::ApiError`]s; this catches the rest in one
//! place (axum's extractor rejections, 405s, body limits) rather than in every handler.
//!
//! One layer rather than one per job: axum wraps every layer of every route in a boxed
//! service that it clones, and whose future it boxes, on each request, and `from_fn` clones
//! and boxes once more. Four layers cost a put about 50 of its 95 allocations on a node
//! (callgrind, docs/BENCHMARKS.md "The router's layers and the allocator").

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{auth, error, ApiState, LEADER_HEADER_NAME};
use crate::raft::NodeId;

/// The middleware of every route (`Router::route_layer`, so the route is known).
pub(super) async fn around(
    State(state): State<Arc<ApiState>>,
    mut request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let route = request.extensions().get::<MatchedPath>().cloned();
    let method = request.method().clone();
    // Kept for the text of an error answer; the path's bytes are shared, not copied.
    let uri = request.uri().clone();
    let route_str = route.as_ref().map_or("unmatched", |route| route.as_str());
    let response = match auth::admit(&state, &mut request, route_str).await {
        Ok(()) => next.run(request).await,
        Err(refused) => refused.into_response(),
    };
    let mut response = error::into_json_error(method.as_str(), uri.path(), response).await;
    add_leader_header(&state, &mut response);
    state
        .metrics
        .observe_request(route_str, &method, started.elapsed());
    response
}

/// Adds `X-Raft-Leader` when a leader is known (a forwarded answer already carries the
/// leader's own view).
pub(super) fn add_leader_header(state: &ApiState, response: &mut Response) {
    if response.headers().contains_key(LEADER_HEADER_NAME) {
        return;
    }
    if let Some(leader) = state.node.leader_hint() {
        response
            .headers_mut()
            .insert(LEADER_HEADER_NAME, leader_header_value(leader));
    }
}

thread_local! {
    /// The last leader's header value on this thread: the leader rarely changes, and a
    /// clone shares the bytes where a fresh value would allocate them.
    static LEADER_VALUE: RefCell<Option<(NodeId, HeaderValue)>> = const { RefCell::new(None) };
}

fn leader_header_value(leader: NodeId) -> HeaderValue {
    LEADER_VALUE.with(|cached| {
        let mut cached = cached.borrow_mut();
        match cached.as_ref() {
            Some((id, value)) if *id == leader => value.clone(),
            _ => {
                let value = HeaderValue::from(leader);
                *cached = Some((leader, value.clone()));
                value
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_leader_header_names_the_leader_asked_for() {
        for leader in [1, 1, 2, u64::MAX, 1] {
            assert_eq!(
                leader_header_value(leader).to_str().unwrap(),
                leader.to_string()
            );
        }
    }
}
