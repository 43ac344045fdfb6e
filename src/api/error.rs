//! API errors: `{"error": {"code": "...", "message": "..."}}` with the status of API.md.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::node::RequestError;

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// What happened and what to do.
    pub message: String,
}

impl ApiError {
    /// `403 forbidden`: the client's role does not permit the request.
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::FORBIDDEN,
            code: "forbidden",
            message: message.into(),
        }
    }

    /// `400 bad_request`.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "bad_request",
            message: message.into(),
        }
    }

    /// `404 not_found`.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            code: "not_found",
            message: message.into(),
        }
    }

    /// `503 no_leader`: nothing was proposed; safe to retry.
    pub fn no_leader(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "no_leader",
            message: message.into(),
        }
    }

    /// `504 timeout`: the outcome is unknown.
    pub fn timeout(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::GATEWAY_TIMEOUT,
            code: "timeout",
            message: message.into(),
        }
    }

    /// `503 overloaded`: too much is pending (back-pressure); nothing was proposed; retry
    /// with backoff.
    pub fn overloaded(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "overloaded",
            message: message.into(),
        }
    }

    /// `503 transfer_in_progress`: the leader is handing over leadership (at most an
    /// election timeout); nothing was proposed; retry shortly.
    pub fn transfer_in_progress(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "transfer_in_progress",
            message: message.into(),
        }
    }

    /// `422 stale_request_id`: the `Request-Id`'s sequence is older than the client's
    /// latest applied request, so its outcome is no longer known; nothing was applied.
    /// Not 409 (API.md keeps that for membership conflicts) and not 500 (nothing failed):
    /// the request is well-formed but cannot be processed as sent, and repeating it cannot
    /// help, which is what 422 says.
    pub fn stale_request_id(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "stale_request_id",
            message: message.into(),
        }
    }

    /// `422 request_id_reused`: the `Request-Id` is the client's latest, but it came with
    /// another command than the one applied under it: not a retry, and not applied.
    /// 422 as for a stale id: well-formed, cannot be processed as sent, repeating cannot help.
    pub fn request_id_reused(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "request_id_reused",
            message: message.into(),
        }
    }

    /// `409 conflict`.
    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::CONFLICT,
            code: "conflict",
            message: message.into(),
        }
    }

    /// `409 session_expired`: a retry whose first outcome the session table no longer
    /// knows; it was not applied again (Raft thesis §6.3).
    pub fn session_expired(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::CONFLICT,
            code: "session_expired",
            message: message.into(),
        }
    }

    /// `413 too_large`.
    pub fn too_large(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            code: "too_large",
            message: message.into(),
        }
    }

    /// `507 no_space`: the disk is full or the storage quota reached; nothing was
    /// proposed (issue 12, diskfull).
    pub fn no_space(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::INSUFFICIENT_STORAGE,
            code: "no_space",
            message: message.into(),
        }
    }

    /// `500 internal`.
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal",
            message: message.into(),
        }
    }

    /// `409 unsafe_change`: the membership change would leave too few reachable voters.
    pub fn unsafe_change(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::CONFLICT,
            code: "unsafe_change",
            message: message.into(),
        }
    }
}

/// The one place a refused request's kind becomes an answer: each [`RequestError`] variant
/// has exactly one status and code (API.md's table); the message is the node's own, which
/// names the limit, directory or reason. A follower relays the leader's answer unchanged
/// (`forward.rs`), so a client sees the same kind whichever node it asked.
impl From<RequestError> for ApiError {
    fn from(error: RequestError) -> ApiError {
        match error {
            RequestError::NotLeader(_) => {
                ApiError::no_leader("no leader is known right now; nothing was proposed")
            }
            RequestError::Stopped => ApiError::no_leader(
                "the node is stopping; nothing was proposed; retry on another node",
            ),
            RequestError::NotCommitted => ApiError::no_leader(
                "leadership changed before the write committed; it was not applied and never will be; safe to retry",
            ),
            RequestError::Unknown => ApiError::timeout(
                "the write was proposed but its outcome is not known yet; it may or may not take effect (retry with the same Request-Id to find out)",
            ),
            e @ RequestError::NoSpace(_) => ApiError::no_space(e.to_string()),
            e @ RequestError::Overloaded { .. } => ApiError::overloaded(e.to_string()),
            RequestError::TransferInProgress => ApiError::transfer_in_progress(
                "the leader is handing over leadership (at most an election timeout); nothing was proposed; retry shortly",
            ),
            // Every reason a command is not applied through `Node::write` is a bug (the
            // API answers a client session's verdicts itself).
            e @ RequestError::NotApplied(_) => ApiError::internal(e.to_string()),
        }
    }
}

impl ApiError {
    /// The answer to a read barrier that failed: the status and code of [`From`], worded
    /// for a read where a write's wording would mislead (nothing was proposed).
    pub fn from_read(error: RequestError) -> ApiError {
        let unknown = matches!(error, RequestError::Unknown);
        let answer = ApiError::from(error);
        if unknown {
            ApiError {
                message: "could not confirm leadership in time for a linearizable read; retry"
                    .to_string(),
                ..answer
            }
        } else {
            answer
        }
    }
}

/// The code for an error answer that was not built as an [`ApiError`] (axum's extractor
/// rejections, its 405 and body-limit answers), by status.
fn code_for_status(status: StatusCode) -> &'static str {
    match status {
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNAUTHORIZED => "unauthenticated",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::REQUEST_TIMEOUT => "timeout",
        status if status.is_server_error() => "internal",
        _ => "bad_request",
    }
}

/// Largest non-JSON error body carried over into the JSON message (axum's rejection texts
/// are one line).
const PLAIN_ERROR_BYTES_MAX: usize = 4096;

/// Rewrites an error answer whose body is not JSON into the JSON error object of API.md,
/// keeping its status and headers (e.g. `Allow` on a 405) and its text as the message,
/// prefixed with the request it answers. Everything else passes unchanged.
pub async fn into_json_error(method: &str, path: &str, response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = match axum::body::to_bytes(body, PLAIN_ERROR_BYTES_MAX).await {
        Ok(bytes) => String::from_utf8_lossy(&bytes).trim().to_string(),
        Err(_) => String::new(),
    };
    let message = match (status, text.is_empty()) {
        (StatusCode::METHOD_NOT_ALLOWED, _) => {
            match parts
                .headers
                .get(axum::http::header::ALLOW)
                .and_then(|v| v.to_str().ok())
            {
                Some(allowed) => {
                    format!("{method} is not supported on {path}; allowed: {allowed}")
                }
                None => format!(
                    "{method} is not supported on {path}; see API.md for the methods it takes"
                ),
            }
        }
        (_, true) => format!(
            "{method} {path}: {}",
            status.canonical_reason().unwrap_or("error")
        ),
        (_, false) => format!("{method} {path}: {text}; see API.md for this endpoint"),
    };
    let json = ApiError {
        status,
        code: code_for_status(status),
        message,
    }
    .into_response();
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    parts.headers.insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, json.into_body())
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "error": { "code": self.code, "message": self.message }
        });
        (self.status, Json(body)).into_response()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::node::{NoSpace, NotApplied, Overload, Refusal};
    use crate::raft::ProposeError;

    /// One of every kind of [`RequestError`], with the status and code API.md's error table
    /// gives it.
    pub(crate) fn every_request_error() -> Vec<(RequestError, StatusCode, &'static str)> {
        let overloaded = |limit| RequestError::Overloaded { node: 2, limit };
        vec![
            (
                RequestError::NotLeader(Some(3)),
                StatusCode::SERVICE_UNAVAILABLE,
                "no_leader",
            ),
            (
                RequestError::Stopped,
                StatusCode::SERVICE_UNAVAILABLE,
                "no_leader",
            ),
            (
                RequestError::NotCommitted,
                StatusCode::SERVICE_UNAVAILABLE,
                "no_leader",
            ),
            (
                RequestError::Unknown,
                StatusCode::GATEWAY_TIMEOUT,
                "timeout",
            ),
            (
                RequestError::NoSpace(NoSpace::DiskFull {
                    dir: PathBuf::from("/data/node-2"),
                    free_bytes: 4096,
                }),
                StatusCode::INSUFFICIENT_STORAGE,
                "no_space",
            ),
            (
                RequestError::NoSpace(NoSpace::QuotaReached {
                    dir: PathBuf::from("/data/node-2"),
                    used_bytes: 12 << 20,
                    quota_bytes: 16 << 20,
                    segment_bytes: 4 << 20,
                    free_bytes: 1 << 30,
                }),
                StatusCode::INSUFFICIENT_STORAGE,
                "no_space",
            ),
            (
                overloaded(Overload::PendingBytes {
                    held_bytes: 60 << 20,
                    budget_bytes: 64 << 20,
                    wanted_bytes: 5 << 20,
                }),
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
            ),
            (
                overloaded(Overload::RequestQueue { capacity: 1024 }),
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
            ),
            (
                overloaded(Overload::ProposalsInFlight { max_entries: 65536 }),
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
            ),
            (
                overloaded(Overload::UncommittedBytes {
                    uncommitted_bytes: 30 << 20,
                    proposal_bytes: 4 << 20,
                    max_bytes: 32 << 20,
                }),
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
            ),
            (
                RequestError::TransferInProgress,
                StatusCode::SERVICE_UNAVAILABLE,
                "transfer_in_progress",
            ),
            (
                RequestError::NotApplied(NotApplied::RefusedAsMembershipChange {
                    node: 2,
                    reason: ProposeError::MembershipChangePending,
                }),
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
            ),
            (
                RequestError::NotApplied(NotApplied::Refused(Refusal::Undecodable)),
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
            ),
        ]
    }

    #[test]
    fn each_request_error_answers_the_status_and_code_of_api_md() {
        for (error, status, code) in every_request_error() {
            let answer = ApiError::from(error.clone());
            assert_eq!(
                (answer.status, answer.code),
                (status, code),
                "{error:?} must answer {status} {code} as API.md's error table says"
            );
            assert!(
                !answer.message.is_empty(),
                "{error:?} answers without a message"
            );
            let read = ApiError::from_read(error.clone());
            assert_eq!(
                (read.status, read.code),
                (status, code),
                "{error:?} on a read barrier must answer as on a write"
            );
        }
    }

    #[test]
    fn refusals_name_the_limit_the_directory_and_the_remedy() {
        let messages: Vec<String> = every_request_error()
            .into_iter()
            .map(|(error, _, _)| ApiError::from(error).message)
            .collect();
        let find = |what: &str| {
            messages
                .iter()
                .find(|m| m.contains(what))
                .unwrap_or_else(|| panic!("no refusal names {what:?}: {messages:#?}"))
        };
        let full = find("is full");
        assert!(
            full.contains("/data/node-2") && full.contains("4096 bytes (4.0 KiB) free"),
            "{full}"
        );
        let quota = find("storage quota reached");
        assert!(
            quota.contains("storage_quota_bytes 16777216 (16.0 MiB)"),
            "{quota}"
        );
        assert!(quota.contains("next WAL segment (4.0 MiB)"), "{quota}");
        let budget = find("pending_write_bytes_max");
        assert!(
            budget.starts_with("node 2: writes in progress hold 62914560 of its 67108864"),
            "{budget}"
        );
        assert!(
            budget.ends_with("nothing was proposed; retry with backoff"),
            "{budget}"
        );
        assert!(find("request queue is full (1024 requests)").starts_with("node 2: "));
        assert!(find("uncommitted entries (at most 65536)").contains("nothing was proposed"));
        let bytes = find("max_uncommitted_bytes");
        assert!(bytes.contains("31457280 bytes are uncommitted and the proposal adds 4194304, past the bound of 33554432 bytes"), "{bytes}");
        assert!(find("as if it were a membership change").contains("please report this"));
        assert!(find("the command was not applied").contains("did not decode"));
    }
}
