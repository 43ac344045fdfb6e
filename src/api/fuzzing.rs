//! Fuzz entry point for the request decoding the handlers do before they reach the node:
//! the key's percent-decoding, `Request-Id`, and the query strings of `/v1/kv`, `/v1/log`,
//! `/v1/members` and `/v1/debug/isolate`, plus the body of `POST /v1/members`. It calls
//! the handlers' own functions (and axum's `Query` extractor, as the router does), so what
//! it checks is what a client reaches. Used by `fuzz/fuzz_targets/http_request.rs` and
//! the corpus replay test `tests/fuzz_corpus.rs`.
#![doc(hidden)]

use axum::extract::Query;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};

use super::debug::IsolateQuery;
use super::handlers::{key_from_uri, read_mode, read_params, request_id, LogParams, ReadParams};
use super::members::{change_params, parse_add, parse_id};
use super::ApiError;
use crate::kv::RequestId;
use crate::session::CLIENT_ID_BYTES_MAX;

/// Takes `data` as a request target (the bytes after `/v1/kv/`, query string included),
/// as a `Request-Id` header value, and as a `POST /v1/members` body. Every decoder answers
/// a value or a `400 bad_request` that names the problem; decoded keys and request ids
/// survive a round trip through their canonical encoding.
pub fn http_request(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(uri) = format!("/v1/kv/{text}").parse::<Uri>() {
            target(&uri);
        }
        if let Ok(id) = format!("/v1/members/{text}").parse::<Uri>() {
            // The router hands the handler the path segment; a bad id is a 400.
            let raw = id.path().strip_prefix("/v1/members/").unwrap_or("");
            if let Err(e) = parse_id(raw) {
                bad_request(&e, "member id");
            }
        }
    }
    if let Ok(value) = HeaderValue::from_bytes(data) {
        request_id_header(value);
    }
    if let Err(e) = parse_add(data) {
        bad_request(&e, "POST /v1/members body");
    }
}

fn target(uri: &Uri) {
    match key_from_uri(uri) {
        Ok(key) => {
            assert!(
                !key.is_empty() && key.len() <= 1024,
                "a key of {} bytes passed",
                key.len()
            );
            let raw = uri.path().strip_prefix("/v1/kv/").unwrap_or("");
            assert!(key.len() <= raw.len(), "decoding made the key longer");
            // Every byte percent-encoded: the canonical spelling must decode to the same key.
            let encoded: String = key.iter().map(|b| format!("%{b:02X}")).collect();
            let canonical: Uri = format!("/v1/kv/{encoded}")
                .parse()
                .unwrap_or_else(|e| panic!("a fully percent-encoded key is not a URI: {e}"));
            let again = key_from_uri(&canonical)
                .unwrap_or_else(|e| panic!("the canonical spelling of a key fails: {e:?}"));
            assert_eq!(again, key, "percent-decoding does not round-trip");
        }
        Err(e) => bad_request(&e, "key"),
    }
    let read = read_params(uri);
    match Query::<ReadParams>::try_from_uri(uri) {
        Ok(Query(params)) => {
            assert_eq!(
                read.as_ref().ok(),
                Some(&params),
                "read_params and the Query extractor disagree on {uri}"
            );
            if let Err(e) = read_mode(&params) {
                bad_request(&e, "consistency");
            }
        }
        // axum answers these itself (400, its own text).
        Err(rejection) => {
            let fast = read.err().map(|e| e.body_text());
            assert_eq!(
                fast.as_deref(),
                Some(rejection.body_text().as_str()),
                "read_params and the Query extractor disagree on {uri}"
            );
            assert_eq!(rejection_status(rejection), StatusCode::BAD_REQUEST)
        }
    }
    if let Err(rejection) = Query::<LogParams>::try_from_uri(uri) {
        assert_eq!(rejection_status(rejection), StatusCode::BAD_REQUEST);
    }
    if let Err(rejection) = Query::<IsolateQuery>::try_from_uri(uri) {
        assert_eq!(rejection_status(rejection), StatusCode::BAD_REQUEST);
    }
    if let Err(e) = change_params(uri) {
        bad_request(&e, "membership change query");
    }
}

fn rejection_status(rejection: axum::extract::rejection::QueryRejection) -> StatusCode {
    use axum::response::IntoResponse;
    rejection.into_response().status()
}

fn request_id_header(value: HeaderValue) {
    let mut headers = HeaderMap::new();
    headers.insert("request-id", value);
    match request_id(&headers) {
        Ok(Some(id)) => {
            assert!(
                !id.client.is_empty() && id.client.len() <= CLIENT_ID_BYTES_MAX,
                "a client id of {} bytes passed",
                id.client.len()
            );
            let spelled = format!("{}:{}", id.client, id.sequence);
            assert_eq!(
                RequestId::parse(&spelled),
                Some(id),
                "Request-Id does not round-trip"
            );
        }
        Ok(None) => panic!("a Request-Id header was there but reads as absent"),
        Err(e) => bad_request(&e, "Request-Id"),
    }
}

fn bad_request(e: &ApiError, what: &str) {
    assert_eq!(e.status, StatusCode::BAD_REQUEST, "{what}: {e:?}");
    assert_eq!(e.code, "bad_request", "{what}: {e:?}");
    assert!(!e.message.is_empty(), "{what}: an error without a message");
}
