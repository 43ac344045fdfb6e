//! `/v1/members`: list, add, remove, promote, demote. Admin operations; a follower forwards
//! them to the leader like writes, since only the leader may propose a configuration.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use storage::{Member, NodeId};

use super::handlers::members_json;
use super::{forward, ApiError, ApiState};
use crate::node::membership::{ChangeOutcome, ChangeRefused, ChangeTicket, MembershipOp};

/// How long a change request may wait for its entry, and a promotion, to commit. Longer
/// than a write's timeout: a learner may first need a whole snapshot and then must stay
/// caught up for `promote_stable_ms`.
pub const MEMBERSHIP_WAIT_MAX: Duration = Duration::from_secs(30);

/// The body of `POST /v1/members`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddBody {
    id: NodeId,
    raft_addr: String,
    api_addr: String,
    #[serde(default = "default_voter")]
    voter: bool,
}

fn default_voter() -> bool {
    true
}

/// `?force=true`, `?wait=false`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ChangeParams {
    force: bool,
    wait: bool,
}

pub(super) fn change_params(uri: &Uri) -> Result<ChangeParams, ApiError> {
    let mut params = ChangeParams {
        force: false,
        wait: true,
    };
    for pair in uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (name, value) = pair.split_once('=').unwrap_or((pair, "true"));
        let flag = match value {
            "true" | "1" => true,
            "false" | "0" => false,
            _ => {
                return Err(ApiError::bad_request(format!(
                    "query parameter {name}={value}: expected true or false"
                )))
            }
        };
        match name {
            "force" => params.force = flag,
            "wait" => params.wait = flag,
            _ => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter {name:?}; membership changes take force and wait"
                )))
            }
        }
    }
    Ok(params)
}

pub(super) fn parse_add(body: &[u8]) -> Result<MembershipOp, ApiError> {
    let parsed: AddBody = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "the body must be {{\"id\": N, \"raft_addr\": \"IP:PORT\", \"api_addr\": \"IP:PORT\", \"voter\": bool}}: {e}"
        ))
    })?;
    Ok(MembershipOp::Add {
        id: parsed.id,
        member: Member {
            raft_addr: parsed.raft_addr,
            api_addr: parsed.api_addr,
            voter: parsed.voter,
        },
    })
}

pub(super) fn parse_id(raw: &str) -> Result<NodeId, ApiError> {
    match raw.parse::<NodeId>() {
        Ok(id) if id > 0 => Ok(id),
        _ => Err(ApiError::bad_request(format!(
            "member id {raw:?} is not a positive integer"
        ))),
    }
}

fn membership_answer(state: &ApiState) -> Response {
    Json(json!({ "members": members_json(&state.node.membership()) })).into_response()
}

/// `GET /v1/members`: the live membership (the log's, not the config file's).
pub async fn list(State(state): State<Arc<ApiState>>) -> Response {
    membership_answer(&state)
}

/// `POST /v1/members`.
pub async fn add(
    State(state): State<Arc<ApiState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let body = axum::body::to_bytes(body, 64 << 10)
        .await
        .map_err(|e| ApiError::bad_request(format!("cannot read the request body: {e}")))?;
    let op = parse_add(&body)?;
    change(
        &state,
        op,
        Origin {
            method,
            uri,
            headers,
            body,
        },
    )
    .await
}

/// `DELETE /v1/members/{id}`, `POST /v1/members/{id}/promote` and
/// `POST /v1/members/{id}/demote`: one handler, the change named by the route.
pub async fn change_by_id(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let op = match (method.as_str(), uri.path().rsplit('/').next()) {
        ("POST", Some("promote")) => MembershipOp::Promote { id },
        ("POST", Some("demote")) => MembershipOp::Demote { id },
        _ => MembershipOp::Remove { id },
    };
    change(&state, op, Origin::empty(method, uri, headers)).await
}

/// The client's request, kept for forwarding.
struct Origin {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: bytes::Bytes,
}

impl Origin {
    fn empty(method: Method, uri: Uri, headers: HeaderMap) -> Origin {
        Origin {
            method,
            uri,
            headers,
            body: bytes::Bytes::new(),
        }
    }
}

async fn change(state: &ApiState, op: MembershipOp, origin: Origin) -> Result<Response, ApiError> {
    let params = change_params(&origin.uri)?;
    let ticket = match state.node.change_membership(op, params.force).await {
        Ok(ticket) => ticket,
        Err(ChangeRefused::NotLeader(leader)) => {
            let path = origin
                .uri
                .path_and_query()
                .map(|pq| pq.as_str().to_string())
                .unwrap_or_else(|| origin.uri.path().to_string());
            // Nothing was proposed here; the leader validates again.
            let request =
                forward::Forwarded::new(state, origin.method, &path, &origin.headers, origin.body);
            let timeout = MEMBERSHIP_WAIT_MAX + Duration::from_secs(2);
            return Ok(forward::to_leader_with_timeout(state, leader, request, timeout).await);
        }
        Err(refused) => return Err(refusal_error(refused)),
    };
    wait(state, ticket, params.wait).await
}

async fn wait(
    state: &ApiState,
    ticket: ChangeTicket,
    until_final: bool,
) -> Result<Response, ApiError> {
    let deadline = tokio::time::Instant::now() + MEMBERSHIP_WAIT_MAX;
    if let Some(committed) = ticket.committed {
        outcome(
            tokio::time::timeout_at(deadline, committed).await,
            "the membership change",
        )?;
    }
    if let (Some(promoted), true) = (ticket.promoted, until_final) {
        outcome(
            tokio::time::timeout_at(deadline, promoted).await,
            "the promotion of the new learner",
        )?;
    }
    Ok(membership_answer(state))
}

fn outcome(
    waited: Result<
        Result<ChangeOutcome, tokio::sync::oneshot::error::RecvError>,
        tokio::time::error::Elapsed,
    >,
    what: &str,
) -> Result<(), ApiError> {
    match waited {
        Ok(Ok(ChangeOutcome::Committed)) => Ok(()),
        Ok(Ok(ChangeOutcome::NotCommitted(why))) => Err(ApiError::no_leader(format!(
            "{what} did not take effect: {why}; repeat the request"
        ))),
        Ok(Ok(ChangeOutcome::Unknown)) | Ok(Err(_)) => Err(ApiError::timeout(format!(
            "{what} was proposed but its outcome is unknown here; check GET /v1/members"
        ))),
        Err(_) => Err(ApiError::timeout(format!(
            "{what} did not commit within {} s (a learner may still be catching up); check GET /v1/members, \
             and repeat the request to keep waiting",
            MEMBERSHIP_WAIT_MAX.as_secs()
        ))),
    }
}

fn refusal_error(refused: ChangeRefused) -> ApiError {
    let message = refused.to_string();
    match refused {
        ChangeRefused::UnknownMember(_) => ApiError::not_found(message),
        ChangeRefused::Duplicate(_) | ChangeRefused::InProgress => ApiError::conflict(message),
        ChangeRefused::Unsafe { .. } | ChangeRefused::LastVoter(_) => {
            ApiError::unsafe_change(message)
        }
        ChangeRefused::Invalid(_) => ApiError::bad_request(message),
        ChangeRefused::NotLeader(_) | ChangeRefused::Busy(_) | ChangeRefused::Stopped => {
            ApiError::no_leader(message)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    #[test]
    fn refusals_map_to_the_statuses_of_the_contract() {
        let cases = [
            (
                ChangeRefused::UnknownMember(7),
                StatusCode::NOT_FOUND,
                "not_found",
            ),
            (
                ChangeRefused::Duplicate("x".into()),
                StatusCode::CONFLICT,
                "conflict",
            ),
            (ChangeRefused::InProgress, StatusCode::CONFLICT, "conflict"),
            (
                ChangeRefused::Unsafe {
                    reachable: 1,
                    voters: 2,
                    quorum: 2,
                },
                StatusCode::CONFLICT,
                "unsafe_change",
            ),
            (
                ChangeRefused::LastVoter(1),
                StatusCode::CONFLICT,
                "unsafe_change",
            ),
            (
                ChangeRefused::Invalid("x".into()),
                StatusCode::BAD_REQUEST,
                "bad_request",
            ),
            (
                ChangeRefused::Busy("x".into()),
                StatusCode::SERVICE_UNAVAILABLE,
                "no_leader",
            ),
        ];
        for (refused, status, code) in cases {
            let error = refusal_error(refused.clone());
            assert_eq!((error.status, error.code), (status, code), "{refused:?}");
        }
    }

    #[test]
    fn add_body_is_validated() {
        let op =
            parse_add(br#"{"id": 4, "raft_addr": "127.0.0.1:7004", "api_addr": "127.0.0.1:8004"}"#)
                .unwrap();
        assert!(matches!(op, MembershipOp::Add { id: 4, member } if member.voter));
        for bad in [
            &b"not json"[..],
            br#"{"id": 4}"#,
            br#"{"id": -1, "raft_addr": "a", "api_addr": "b"}"#,
            br#"{"id": 4, "raft_addr": "a", "api_addr": "b", "extra": 1}"#,
        ] {
            let error = parse_add(bad).unwrap_err();
            assert_eq!(
                error.code,
                "bad_request",
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(parse_id("0").unwrap_err().code, "bad_request");
        assert_eq!(parse_id("x").unwrap_err().code, "bad_request");
        assert_eq!(parse_id("12").unwrap(), 12);
    }

    #[test]
    fn change_params_default_to_wait_without_force() {
        let params = |q: &str| change_params(&format!("/v1/members{q}").parse::<Uri>().unwrap());
        assert_eq!(
            params("").unwrap(),
            ChangeParams {
                force: false,
                wait: true
            }
        );
        assert_eq!(
            params("?force=true&wait=false").unwrap(),
            ChangeParams {
                force: true,
                wait: false
            }
        );
        assert!(params("?force").unwrap().force);
        assert_eq!(params("?force=maybe").unwrap_err().code, "bad_request");
        assert_eq!(params("?frce=true").unwrap_err().code, "bad_request");
    }
}
