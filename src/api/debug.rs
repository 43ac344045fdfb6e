//! Test-only fault switches, routed only when the node runs with `RAFTLOG_TEST_FAULTS=1`
//! (process tests set it; an operator never should): without it these paths answer 404
//! like any unknown path.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

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
