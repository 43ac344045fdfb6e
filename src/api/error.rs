//! API errors: `{"error": {"code": "...", "message": "..."}}` with the status of API.md.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

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
