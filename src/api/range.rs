//! `GET /v1/kv?prefix=P` and `GET /v1/kv?start=A&end=B` (issue 15): range reads, with the
//! same consistency choices as single gets and the index the answer reflects.
//!
//! Keys in the query string are percent-decoded to raw bytes (a key need not be UTF-8), with
//! `+` read as a space, as HTML forms and most HTTP clients encode query strings.

use std::io::Write as _;
use std::ops::Bound;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, Uri};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use super::handlers::{read_barrier_or_forward, ReadParams};
use super::json_writer::write_bytes_field;
use super::{ApiError, ApiState};
use crate::kv::{KeyRange, KvStore, RangePage};

/// `limit` when none is given.
pub const RANGE_LIMIT_DEFAULT: usize = 1000;
/// The largest `limit` accepted.
pub const RANGE_LIMIT_MAX: usize = 10_000;
/// A page stops before its JSON passes this many bytes of keys and values (one pair larger
/// than that is still sent alone, so a client always makes progress); `more` says so.
pub const RANGE_PAGE_BYTES_MAX: usize = 4 << 20;
/// Pages with more bytes of keys and values than this are built on the blocking pool, at
/// most [`RANGE_RENDERS_MAX`] at once per node, not on the runtime that serves clients.
/// That runtime runs ready tasks in turn: a 4 MiB page takes milliseconds to build, and 96
/// clients reading such pages (tests/range_read_storm.rs) held back heartbeats long enough
/// to lose the leader, with every write failing meanwhile, when the raft loop and the peer
/// links were tasks on it (they have a thread of their own now, `node/raft_thread.rs`);
/// the other clients' requests still wait behind every page built inline. Below this a
/// page builds in well under a millisecond, cheaper than the hand-off.
pub const RANGE_INLINE_BYTES_MAX: usize = 64 << 10;
/// Large pages built at once on a node.
pub const RANGE_RENDERS_MAX: usize = 1;

/// The query string as (name, raw bytes) pairs.
pub(super) fn query_pairs(uri: &Uri) -> Result<Vec<(String, Vec<u8>)>, ApiError> {
    let Some(query) = uri.query() else {
        return Ok(Vec::new());
    };
    let mut pairs = Vec::new();
    for part in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = part.split_once('=').unwrap_or((part, ""));
        let name = String::from_utf8(decode_component(name)?).map_err(|_| {
            ApiError::bad_request("a query parameter name is not UTF-8 after percent-decoding")
        })?;
        pairs.push((name, decode_component(value)?));
    }
    Ok(pairs)
}

fn decode_component(raw: &str) -> Result<Vec<u8>, ApiError> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "bad percent-encoding in the query string {raw:?}: '%' must be followed by two hex digits"
                        ))
                    })?;
                out.push(hex);
                i += 3;
            }
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    Ok(out)
}

/// A query parameter as a decimal number.
pub(super) fn number<T: std::str::FromStr>(name: &str, raw: &[u8]) -> Result<T, ApiError> {
    std::str::from_utf8(raw)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "{name} must be a non-negative decimal number, not {:?}",
                String::from_utf8_lossy(raw)
            ))
        })
}

/// What a range read asks for.
#[derive(Debug, Default, PartialEq, Eq)]
struct RangeQuery {
    prefix: Option<Vec<u8>>,
    start: Option<Vec<u8>>,
    end: Option<Vec<u8>>,
    after: Option<Vec<u8>>,
    limit: Option<usize>,
    keys_only: bool,
    consistency: Option<String>,
}

fn parse_range_query(uri: &Uri) -> Result<RangeQuery, ApiError> {
    let mut query = RangeQuery::default();
    for (name, value) in query_pairs(uri)? {
        match name.as_str() {
            "prefix" => query.prefix = Some(value),
            "start" => query.start = Some(value),
            "end" => query.end = Some(value),
            "after" => query.after = Some(value),
            "limit" => query.limit = Some(number("limit", &value)?),
            "keys_only" => {
                query.keys_only = match value.as_slice() {
                    b"true" | b"1" => true,
                    b"false" | b"0" => false,
                    _ => {
                        return Err(ApiError::bad_request(
                            "keys_only must be true or false",
                        ))
                    }
                }
            }
            "consistency" => {
                query.consistency = Some(String::from_utf8_lossy(&value).into_owned())
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter {other:?} for a range read; use prefix, or start and end, with limit, after, keys_only and consistency"
                )))
            }
        }
    }
    Ok(query)
}

/// The key range a query names.
fn key_range(query: &RangeQuery) -> Result<KeyRange, ApiError> {
    let (start, end) = match (&query.prefix, &query.start, &query.end) {
        (Some(prefix), None, None) => (
            Bound::Included(Bytes::from(prefix.clone())),
            match prefix_end(prefix) {
                Some(end) => Bound::Excluded(Bytes::from(end)),
                None => Bound::Unbounded,
            },
        ),
        (None, Some(_), _) | (None, _, Some(_)) => (
            query
                .start
                .clone()
                .map_or(Bound::Unbounded, |s| Bound::Included(Bytes::from(s))),
            query
                .end
                .clone()
                .map_or(Bound::Unbounded, |e| Bound::Excluded(Bytes::from(e))),
        ),
        (None, None, None) => {
            return Err(ApiError::bad_request(
                "a range read needs prefix=P, or start=A and/or end=B (end exclusive); an empty prefix (prefix=) reads every key",
            ))
        }
        _ => {
            return Err(ApiError::bad_request(
                "give either prefix or start/end, not both",
            ))
        }
    };
    // `after` continues a page: strictly past the last key the previous page gave.
    let start = match (&query.after, start) {
        (Some(after), Bound::Included(s)) if after.as_slice() >= s.as_ref() => {
            Bound::Excluded(Bytes::from(after.clone()))
        }
        (Some(after), Bound::Unbounded) => Bound::Excluded(Bytes::from(after.clone())),
        (_, start) => start,
    };
    Ok(KeyRange { start, end })
}

/// The first key past every key that starts with `prefix` (`None`: there is none, as for an
/// empty prefix or one of only 0xFF bytes).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// `GET /v1/kv?prefix=P` or `?start=A&end=B`, with `limit`, `after=KEY`, `keys_only=true`
/// and `consistency`.
pub async fn range(State(state): State<Arc<ApiState>>, uri: Uri, headers: HeaderMap) -> Response {
    match range_inner(&state, &uri, &headers).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn range_inner(
    state: &ApiState,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let query = parse_range_query(uri)?;
    let range = key_range(&query)?;
    let limit = query.limit.unwrap_or(RANGE_LIMIT_DEFAULT);
    if limit == 0 || limit > RANGE_LIMIT_MAX {
        return Err(ApiError::bad_request(format!(
            "limit must be 1 to {RANGE_LIMIT_MAX}; got {limit}"
        )));
    }
    let params = ReadParams {
        consistency: query.consistency.clone(),
    };
    if let Some(forwarded) =
        read_barrier_or_forward(state, &params, Method::GET, uri, headers).await?
    {
        return Ok(forwarded);
    }
    // The map is persistent: cloning it is O(1), so the scan runs without the lock.
    // Under the read lock the watch hub's index is the state's (the apply thread publishes
    // under the write lock), so `index` names exactly the state scanned.
    let (store, index): (KvStore, u64) = {
        state
            .node
            .read_local(|store, _| (store.clone(), state.node.watch().published_index()))
    };
    let page = store.range(&range, limit, RANGE_PAGE_BYTES_MAX);
    let keys_only = query.keys_only;
    let payload = payload_bytes(&page, keys_only);
    let body = if payload <= RANGE_INLINE_BYTES_MAX {
        render_page(index, &page, keys_only, payload)
    } else {
        // The semaphore is never closed; if it were, rendering without a slot is the
        // unbounded behaviour, not a failure.
        let _slot = state.range_renders.acquire().await;
        tokio::task::spawn_blocking(move || render_page(index, &page, keys_only, payload))
            .await
            .map_err(|e| ApiError::internal(format!("building a range page failed: {e}")))?
    };
    let mut response = (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response();
    response
        .headers_mut()
        .insert(super::RAFT_INDEX_HEADER_NAME, HeaderValue::from(index));
    Ok(response)
}

/// The bytes of keys (and values, unless `keys_only`) a page answers with.
fn payload_bytes(page: &RangePage, keys_only: bool) -> usize {
    page.pairs
        .iter()
        .map(|(key, value)| key.len() + if keys_only { 0 } else { value.len() })
        .sum()
}

/// A range read's answer, `{"index":…,"kvs":[{"key":…,"value":…},…],"more":…}`, written
/// directly (`json_writer`): the bytes serde_json wrote for the same `Value`, in about a
/// third of the time for pages of large values.
/// `payload` is [`payload_bytes`] of the page, counted once by the caller, which also needs it.
fn render_page(index: u64, page: &RangePage, keys_only: bool, payload: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload + 32 * page.pairs.len() + 64);
    let _ = write!(out, "{{\"index\":{index},\"kvs\":[");
    for (i, (key, value)) in page.pairs.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'{');
        write_bytes_field(&mut out, "key", Some(key));
        if !keys_only {
            out.push(b',');
            write_bytes_field(&mut out, "value", Some(value));
        }
        out.push(b'}');
    }
    let _ = write!(out, "],\"more\":{}}}", page.more);
    out
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    /// The page as it was built before it was written directly: serde_json's rendering of
    /// a `Value`, the reference the direct writer must match byte for byte.
    fn value_form(index: u64, page: &RangePage, keys_only: bool) -> Vec<u8> {
        let kvs: Vec<Value> = page
            .pairs
            .iter()
            .map(|(key, value)| {
                let mut object = serde_json::Map::new();
                crate::api::handlers::put_bytes_field(&mut object, "key", key);
                if !keys_only {
                    crate::api::handlers::put_bytes_field(&mut object, "value", value);
                }
                Value::Object(object)
            })
            .collect();
        serde_json::to_vec(&json!({ "index": index, "kvs": kvs, "more": page.more })).unwrap()
    }

    #[test]
    fn a_page_is_written_as_serde_json_writes_its_value_form() {
        let pairs: Vec<(Bytes, Bytes)> = [
            (&b"plain"[..], &b"value"[..]),
            (b"quote\"and\\slash", b"line\nbreak\ttab\x01ctl"),
            (b"not utf-8 \xff", b"\x00\x9f binary"),
            ("é 日本".as_bytes(), b""),
            (b"", "\u{2028} \u{7f}".as_bytes()),
        ]
        .iter()
        .map(|(k, v)| (Bytes::copy_from_slice(k), Bytes::copy_from_slice(v)))
        .collect();
        for count in [0, 1, pairs.len()] {
            for more in [false, true] {
                for keys_only in [false, true] {
                    let page = RangePage {
                        pairs: pairs[..count].to_vec(),
                        more,
                    };
                    let direct = render_page(
                        u64::MAX - 1,
                        &page,
                        keys_only,
                        payload_bytes(&page, keys_only),
                    );
                    let reference = value_form(u64::MAX - 1, &page, keys_only);
                    assert_eq!(
                        String::from_utf8_lossy(&direct),
                        String::from_utf8_lossy(&reference),
                        "{count} pairs, more {more}, keys_only {keys_only}"
                    );
                }
            }
        }
    }

    fn uri(s: &str) -> Uri {
        s.parse().unwrap()
    }

    #[test]
    fn prefix_end_increments_the_last_byte_below_0xff() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        assert_eq!(prefix_end(b""), None);
    }

    #[test]
    fn query_keys_are_percent_decoded_to_raw_bytes() {
        let query =
            parse_range_query(&uri("/v1/kv?prefix=a%2Bb+c%FF&limit=5&keys_only=true")).unwrap();
        assert_eq!(query.prefix, Some(b"a+b c\xff".to_vec()));
        assert_eq!(query.limit, Some(5));
        assert!(query.keys_only);
    }

    #[test]
    fn bad_queries_are_refused_with_what_to_do() {
        for (query, expect) in [
            ("/v1/kv", "needs prefix"),
            ("/v1/kv?prefix=a&start=b", "not both"),
            ("/v1/kv?prefix=a&limit=x", "limit must be"),
            ("/v1/kv?prefix=a&keys_only=yes", "keys_only"),
            ("/v1/kv?prefix=%G1", "percent-encoding"),
            ("/v1/kv?prefx=a", "unknown query parameter"),
        ] {
            let error = parse_range_query(&uri(query))
                .and_then(|q| key_range(&q))
                .unwrap_err();
            assert!(error.message.contains(expect), "{query}: {}", error.message);
        }
    }

    #[test]
    fn after_moves_the_start_past_the_last_key_given() {
        let query = parse_range_query(&uri("/v1/kv?prefix=a&after=ab")).unwrap();
        let range = key_range(&query).unwrap();
        assert_eq!(range.start, Bound::Excluded(Bytes::from_static(b"ab")));
        assert_eq!(range.end, Bound::Excluded(Bytes::from_static(b"b")));
    }
}
