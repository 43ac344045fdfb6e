//! Test-only fault switches, routed only when the node runs with `RAFTLOG_TEST_FAULTS=1`
//! (process tests set it; an operator never should): without it these paths answer 404
//! like any unknown path.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::error::ApiError;
use super::ApiState;

#[derive(Deserialize)]
pub struct IsolateQuery {
    on: bool,
}

/// `POST /v1/debug/isolate?on=true|false`: drop (or restore) all of this node's peer
/// traffic, as a network partition would, while the client API keeps answering.
pub async fn isolate(
    State(state): State<Arc<ApiState>>,
    Query(query): Query<IsolateQuery>,
) -> Response {
    state.node.set_peer_traffic_isolated(query.on);
    Json(json!({ "isolated": query.on })).into_response()
}

#[derive(Deserialize)]
pub struct FailpointQuery {
    name: String,
    actions: String,
}

/// `POST /v1/debug/failpoint?name=wal::fdatasync&actions=return`: arms (or, with
/// `actions=off`, disarms) one of the storage layer's failpoints (`storage::failpoint`) on
/// this running node, so a crash test can fail a disk operation mid-load. A build without
/// the `failpoints` feature answers 400 saying so.
pub async fn failpoint(Query(query): Query<FailpointQuery>) -> Response {
    match storage::failpoint::configure(&query.name, &query.actions) {
        Ok(()) => {
            tracing::warn!(name = %query.name, actions = %query.actions, "failpoint set");
            Json(json!({ "name": query.name, "actions": query.actions })).into_response()
        }
        Err(message) => ApiError::bad_request(message).into_response(),
    }
}
