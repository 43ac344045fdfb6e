//! What happens around every request, in one function ([`answer`], reached from the
//! router's one route layer or from the key routes' shortcut): it is timed into
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
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::server::Shortcut;
use super::{auth, error, handlers, ApiState, LEADER_HEADER_NAME};
use crate::raft::NodeId;

/// The middleware of every route (`Router::route_layer`, so the route is known).
pub(super) async fn around(
    State(state): State<Arc<ApiState>>,
    request: Request,
    next: Next,
) -> Response {
    let route = request.extensions().get::<MatchedPath>().cloned();
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    answer(&state, route, request, |request| next.run(request)).await
}

/// What [`around`] does for a request to `route` (a route pattern of the router), with
/// `handler` answering it when it is admitted.
async fn answer<F: Future<Output = Response>>(
    state: &ApiState,
    route: &str,
    mut request: Request,
    handler: impl FnOnce(Request) -> F,
) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    // Kept for the text of an error answer; the path's bytes are shared, not copied.
    let uri = request.uri().clone();
    let response = match auth::admit(state, &mut request, route).await {
        Ok(()) => handler(request).await,
        Err(refused) => refused.into_response(),
    };
    let mut response = error::into_json_error(method.as_str(), uri.path(), response).await;
    add_leader_header(state, &mut response);
    state
        .metrics
        .observe_request(route, &method, started.elapsed());
    response
}

/// The route of one key, as `super::router` names it (a test in `auth` checks that it does).
pub(super) const KV_ROUTE: &str = "/v1/kv/{*key}";

/// Issue 14: reads and writes of one key (`GET`, `PUT` and `DELETE /v1/kv/{key}`, the
/// requests that carry the load) answered without the router, through [`answer`] like every routed
/// request: the same access check, timing, error bodies and leader header, and the same
/// handlers. The router's path match and the boxed services and futures of its route
/// layers cost ~5,500 instructions per request, a sixth of a put's HTTP serving
/// (callgrind, docs/BENCHMARKS.md "The router's layers and the allocator"). Every other
/// request, `HEAD` included, goes to the router.
pub(super) fn kv_shortcut(state: Arc<ApiState>) -> Arc<Shortcut> {
    Arc::new(Shortcut {
        takes: is_kv_read_or_write,
        answer: Box::new(move |request: Request| {
            let state = Arc::clone(&state);
            Box::pin(async move {
                let handler_state = Arc::clone(&state);
                answer(&state, KV_ROUTE, request, |request| async move {
                    let answered = match *request.method() {
                        Method::PUT => handlers::put_key(State(handler_state), request).await,
                        Method::DELETE => handlers::delete_key(State(handler_state), request).await,
                        _ => handlers::get_key(State(handler_state), request).await,
                    };
                    answered.into_response()
                })
                .await
            })
        }),
    })
}

/// `GET`, `PUT` or `DELETE` of a path the route [`KV_ROUTE`] matches: its catch-all takes
/// one character or more.
fn is_kv_read_or_write(request: &Request) -> bool {
    matches!(
        *request.method(),
        Method::GET | Method::PUT | Method::DELETE
    ) && request
        .uri()
        .path()
        .strip_prefix("/v1/kv/")
        .is_some_and(|key| !key.is_empty())
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
