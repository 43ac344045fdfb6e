//! One handler per endpoint of API.md.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use storage::Membership;

use super::{forward, ApiError, ApiState, RAFT_INDEX_HEADER_NAME};
use crate::kv::{Applied, Command, KvCommand, KvResponse, RequestId};
use crate::node::transfer::TransferError;
use crate::node::{RequestError, WritePermit};
use crate::raft::{ReadMode, Role};

type ApiResult = Result<Response, ApiError>;

const KEY_BYTES_MAX: usize = 1024;

/// The key is the rest of the path after `/v1/kv/`, percent-decoded to raw bytes (keys need
/// not be UTF-8).
pub(super) fn key_from_uri(uri: &Uri) -> Result<Bytes, ApiError> {
    let raw = uri.path().strip_prefix("/v1/kv/").unwrap_or("");
    let key = percent_decode(raw)?;
    if key.is_empty() || key.len() > KEY_BYTES_MAX {
        return Err(ApiError::bad_request(format!(
            "a key must be 1 to {KEY_BYTES_MAX} bytes after percent-decoding; got {} bytes",
            key.len()
        )));
    }
    Ok(Bytes::from(key))
}

fn percent_decode(raw: &str) -> Result<Vec<u8>, ApiError> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            out.push(bytes[i]);
            i += 1;
            continue;
        }
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match hex {
            Some(byte) => out.push(byte),
            None => {
                return Err(ApiError::bad_request(format!(
                    "bad percent-encoding in the key at byte {i}: '%' must be followed by two hex digits"
                )))
            }
        }
        i += 3;
    }
    Ok(out)
}

pub(super) fn request_id(headers: &HeaderMap) -> Result<Option<RequestId>, ApiError> {
    const REQUEST_ID: HeaderName = HeaderName::from_static("request-id");
    let Some(value) = headers.get(REQUEST_ID) else {
        return Ok(None);
    };
    let parsed = value.to_str().ok().and_then(RequestId::parse);
    match parsed {
        Some(id) => Ok(Some(id)),
        None => Err(ApiError::bad_request(
            "Request-Id must be '<client-id>:<sequence>' with a decimal sequence",
        )),
    }
}

async fn read_body(state: &ApiState, body: Body) -> Result<Bytes, ApiError> {
    read_body_within(state.options.value_bytes_max, body).await
}

async fn read_body_within(limit: usize, body: Body) -> Result<Bytes, ApiError> {
    use http_body_util::BodyExt as _;
    let too_large = || {
        ApiError::too_large(format!(
            "the request body exceeds the {limit}-byte limit for values"
        ))
    };
    // A value arrives in one frame, whose bytes are the value as they are: no copy, and none
    // of `axum::body::to_bytes`' collecting layers (~0.8 k instructions per put, callgrind).
    // Only a body of several frames is copied into one buffer.
    let mut body = body;
    let mut value = Bytes::new();
    let mut joined: Option<Vec<u8>> = None;
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            ApiError::bad_request(format!("cannot read the request body: {}", e.into_inner()))
        })?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers carry no part of the value
        };
        total = total.saturating_add(data.len());
        if total > limit {
            return Err(too_large());
        }
        match &mut joined {
            Some(joined) => joined.extend_from_slice(&data),
            None if value.is_empty() => value = data,
            None => joined = Some([&value[..], &data[..]].concat()),
        }
    }
    Ok(joined.map_or(value, Bytes::from))
}

fn path_and_query(uri: &Uri) -> String {
    uri.path_and_query()
        .map(|pq| pq.as_str().to_string())
        .unwrap_or_else(|| uri.path().to_string())
}

struct ClientWrite<'a> {
    method: Method,
    uri: &'a Uri,
    headers: &'a HeaderMap,
    body: Bytes,
}

/// Proposes `command` and waits for its outcome; forwards to the leader when this node
/// does not lead (nothing was proposed here, so forwarding cannot duplicate it).
async fn write(
    state: &ApiState,
    command: KvCommand,
    origin: ClientWrite<'_>,
) -> Result<Result<(u64, KvResponse), Response>, ApiError> {
    let command = Command {
        request_id: request_id(origin.headers)?,
        body: command.encode().into(),
    };
    let encoded = Bytes::from(command.encode());
    let written = match state
        .node
        .write(encoded.clone(), state.options.request_timeout)
        .await
    {
        Err(RequestError::NotLeader(leader)) => {
            match over_peer_link(state, leader, encoded, origin.headers).await {
                Some(answer) => answer?,
                None => Err(RequestError::NotLeader(leader)),
            }
        }
        other => other,
    };
    match written {
        Ok((index, applied)) => {
            let (index, response) = match applied {
                Applied::Fresh(response) => (index, response),
                Applied::Duplicate { response, index } => (index, response),
                Applied::Stale => {
                    return Err(ApiError::stale_request_id(
                        "this Request-Id's sequence is older than the client's latest applied request, so its outcome is no longer known; it was NOT applied; send new requests with a sequence above every one used before",
                    ))
                }
                Applied::Reused { index } => {
                    let id = command.request_id.as_ref().map(|r| format!("{}:{}", r.client, r.sequence)).unwrap_or_default();
                    return Err(ApiError::request_id_reused(format!(
                        "Request-Id {id} was already used for another command, applied at index {index}; this one was NOT applied; give each new request a new sequence"
                    )))
                }
                Applied::Expired { index } => {
                    return Err(ApiError::session_expired(format!(
                        "this Request-Id was applied at index {index}, but its outcome is no longer known (the session table evicted it, or the key it answered about was written since); it was NOT applied again; read the key and send the next request with a higher sequence"
                    )))
                }
                Applied::Invalid => return Err(ApiError::internal("the command did not decode when applied")),
            };
            match KvResponse::decode(&response) {
                Some(response) => Ok(Ok((index, response))),
                None => Err(ApiError::internal(
                    "the state machine's answer did not decode",
                )),
            }
        }
        Err(RequestError::NotLeader(leader)) => Ok(Err(forward::to_leader(
            state,
            leader,
            origin.method,
            &path_and_query(origin.uri),
            origin.headers,
            origin.body,
            false,
        )
        .await)),
        Err(e) => Err(ApiError::from(e)),
    }
}

/// Issue 14: forwards a write to `leader` over the peer link, when it speaks protocol
/// version 2. `None` when it cannot carry it (no leader known, a version 1 leader, the link
/// down, a request that already went through a follower): nothing was sent, so the caller
/// forwards over HTTP as before. Otherwise the leader's outcome, or the refusal the
/// follower gives when the answer cannot come (the write may or may not take effect).
async fn over_peer_link(
    state: &ApiState,
    leader: Option<storage::NodeId>,
    command: Bytes,
    headers: &HeaderMap,
) -> Option<Result<Result<(u64, Applied), RequestError>, ApiError>> {
    use crate::node::forwarding::ForwardFailure;
    use crate::transport::ForwardOutcome;
    let leader = leader.filter(|l| *l != state.node.id)?;
    if forward::was_forwarded(headers) {
        return None;
    }
    // The role the client proved here (issue 16); the leader re-checks it.
    let role = super::auth::proved_role(headers, state.options.auth.is_some());
    let outcome = match state
        .node
        .forward_write(leader, command, role, state.options.request_timeout)
        .await
    {
        Ok(outcome) => outcome,
        Err(ForwardFailure::Unsupported { .. }) => return None,
        Err(e @ ForwardFailure::Overloaded { .. }) => {
            return Some(Err(ApiError::overloaded(e.to_string())))
        }
        Err(e @ ForwardFailure::Unknown { .. }) => {
            return Some(Err(ApiError::timeout(e.to_string())))
        }
    };
    Some(match outcome {
        ForwardOutcome::Applied { index, applied } => Ok(Ok((index, applied))),
        ForwardOutcome::NotLeader { leader_hint } => Err(ApiError::no_leader(format!(
            "node {} forwarded the write to leader {leader}, which no longer leads (it knows \
             of {}); nothing was proposed; leadership is changing, retry shortly",
            state.node.id,
            leader_hint.map_or("no leader".to_string(), |l| format!("leader {l}"))
        ))),
        ForwardOutcome::Forbidden { role } => Err(ApiError::forbidden(format!(
            "leader {leader} refused the write: role {role} does not permit writes (needs \
             write); nothing was proposed"
        ))),
        ForwardOutcome::Overloaded { message } => Err(ApiError::overloaded(message)),
        ForwardOutcome::Unknown { message } => Err(ApiError::timeout(message)),
        ForwardOutcome::NotCommitted => Ok(Err(RequestError::NotCommitted)),
        ForwardOutcome::Stopped => Err(ApiError::no_leader(format!(
            "node {} cannot forward the write: leader {leader} is stopping; nothing was \
             proposed; retry shortly (another node takes over within an election timeout)",
            state.node.id
        ))),
        ForwardOutcome::TransferInProgress => Ok(Err(RequestError::TransferInProgress)),
        ForwardOutcome::NoSpace { message } => Err(ApiError::no_space(message)),
        ForwardOutcome::Invalid { message } => Err(ApiError::internal(message)),
    })
}

/// Takes the write budget for a request whose body is still unread, before reading it:
/// the body's bytes are charged (`Content-Length`, or the largest value when the length
/// is not announced), so the bodies a node buffers never exceed its budget. A body over
/// the value limit is `413`; a write past the budget is `503 overloaded`. The body of a
/// refused request is drained (`refused_bodies`), so the client, still uploading, reads
/// the answer instead of a connection reset.
async fn admit_body(
    state: &ApiState,
    headers: &HeaderMap,
    extra_bytes: usize,
    body: Body,
) -> Result<(WritePermit, Bytes), ApiError> {
    let limit = state.options.value_bytes_max;
    let announced = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let refusal = match announced {
        Some(length) if length > limit as u64 => Some(ApiError::too_large(format!(
            "the request body ({length} bytes) exceeds the {limit}-byte limit for values"
        ))),
        _ => None,
    };
    let charge = announced.unwrap_or(limit as u64) + extra_bytes as u64;
    let admitted = match refusal {
        Some(refusal) => Err(refusal),
        None => state.node.admit_write(charge).map_err(ApiError::from),
    };
    match admitted {
        Ok(permit) => Ok((permit, read_body(state, body).await?)),
        Err(refusal) => {
            state.refused_bodies.drain(body, limit).await;
            Err(refusal)
        }
    }
}

/// `PUT /v1/kv/{key}`.
pub async fn put_key(State(state): State<Arc<ApiState>>, request: Request) -> ApiResult {
    // The request whole rather than the `Uri` and `HeaderMap` extractors, which clone theirs
    // (an allocation and a copy of every header per request).
    let (parts, body) = request.into_parts();
    let key = key_from_uri(&parts.uri)?;
    let (_permit, value) = admit_body(&state, &parts.headers, key.len(), body).await?;
    let origin = ClientWrite {
        method: Method::PUT,
        uri: &parts.uri,
        headers: &parts.headers,
        body: value.clone(),
    };
    Ok(
        match write(&state, KvCommand::Put { key, value }, origin).await? {
            Ok((index, _)) => written_answer(index),
            Err(forwarded) => forwarded,
        },
    )
}

/// The answer to a write: `{"index": N}`, the bytes `Json` gave it, written without its
/// serializer and growing buffer (~0.5 k instructions per put).
fn written_answer(index: u64) -> Response {
    let mut body = Vec::with_capacity(32);
    body.extend_from_slice(b"{\"index\":");
    body.extend_from_slice(index.to_string().as_bytes());
    body.push(b'}');
    let mut response = Response::new(Body::from(body));
    response.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The answer to a delete: `{"deleted": true|false, "index": N}` (the order `json!` gave it).
#[derive(Serialize)]
struct Deleted {
    deleted: bool,
    index: u64,
}

/// `DELETE /v1/kv/{key}`.
pub async fn delete_key(State(state): State<Arc<ApiState>>, request: Request) -> ApiResult {
    // As in `put_key`: the parts are read, not cloned.
    let (parts, _) = request.into_parts();
    let key = key_from_uri(&parts.uri)?;
    let _permit = state
        .node
        .admit_write(key.len() as u64)
        .map_err(ApiError::from)?;
    let origin = ClientWrite {
        method: Method::DELETE,
        uri: &parts.uri,
        headers: &parts.headers,
        body: Bytes::new(),
    };
    Ok(
        match write(&state, KvCommand::Delete { key }, origin).await? {
            Ok((index, KvResponse::Delete { deleted })) => {
                Json(Deleted { deleted, index }).into_response()
            }
            Ok((_, other)) => {
                return Err(ApiError::internal(format!(
                    "unexpected answer to a delete: {other:?}"
                )))
            }
            Err(forwarded) => forwarded,
        },
    )
}

/// `POST /v1/cas` body. Each of key, expected and value comes either as UTF-8 text or as
/// base64 (`*_base64`, standard alphabet) for bytes that are not UTF-8; never both.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CasBody {
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    key_base64: Option<String>,
    #[serde(default)]
    expected: Option<String>,
    #[serde(default)]
    expected_base64: Option<String>,
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    value_base64: Option<String>,
}

/// One CAS field from its text or base64 form; `None` when neither is given (null).
fn cas_field(
    name: &str,
    text: Option<String>,
    encoded: Option<String>,
) -> Result<Option<Bytes>, ApiError> {
    use base64::Engine as _;
    match (text, encoded) {
        (Some(_), Some(_)) => Err(ApiError::bad_request(format!(
            "the CAS body gives both {name} and {name}_base64; give one (base64 for bytes that are not UTF-8)"
        ))),
        (Some(text), None) => Ok(Some(Bytes::from(text.into_bytes()))),
        (None, Some(encoded)) => base64::engine::general_purpose::STANDARD
            .decode(encoded.as_bytes())
            .map(|bytes| Some(Bytes::from(bytes)))
            .map_err(|e| {
                ApiError::bad_request(format!(
                    "{name}_base64 in the CAS body is not standard base64 (with padding): {e}"
                ))
            }),
        (None, None) => Ok(None),
    }
}

/// Adds `bytes` to `object` as `name` when it is UTF-8, else as `name_base64`, the way
/// API.md gives non-UTF-8 keys and values elsewhere; never a lossy conversion.
pub(super) fn put_bytes_field(
    object: &mut serde_json::Map<String, Value>,
    name: &str,
    bytes: &[u8],
) {
    use base64::Engine as _;
    match std::str::from_utf8(bytes) {
        Ok(text) => object.insert(name.to_string(), Value::String(text.to_string())),
        Err(_) => object.insert(
            format!("{name}_base64"),
            Value::String(base64::engine::general_purpose::STANDARD.encode(bytes)),
        ),
    };
}

/// `POST /v1/cas`.
pub async fn cas(
    State(state): State<Arc<ApiState>>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let (_permit, raw) = admit_body(&state, &headers, 0, body).await?;
    let parsed: CasBody = serde_json::from_slice(&raw).map_err(|e| {
        ApiError::bad_request(format!(
            "the CAS body must be JSON {{\"key\": string, \"expected\": string|null, \"value\": string|null}} (or key_base64, expected_base64, value_base64 for bytes that are not UTF-8): {e}"
        ))
    })?;
    let key = cas_field("key", parsed.key, parsed.key_base64)?.unwrap_or_default();
    if key.is_empty() || key.len() > KEY_BYTES_MAX {
        return Err(ApiError::bad_request(format!(
            "a key (key or key_base64) must be 1 to {KEY_BYTES_MAX} bytes; got {}",
            key.len()
        )));
    }
    let command = KvCommand::Cas {
        key,
        expected: cas_field("expected", parsed.expected, parsed.expected_base64)?,
        value: cas_field("value", parsed.value, parsed.value_base64)?,
    };
    let origin = ClientWrite {
        method: Method::POST,
        uri: &uri,
        headers: &headers,
        body: raw,
    };
    Ok(match write(&state, command, origin).await? {
        Ok((index, KvResponse::Cas { succeeded, current })) => {
            let mut answer = serde_json::Map::new();
            answer.insert("succeeded".to_string(), Value::Bool(succeeded));
            match current {
                Some(current) => put_bytes_field(&mut answer, "current", &current),
                None => {
                    answer.insert("current".to_string(), Value::Null);
                }
            }
            answer.insert("index".to_string(), json!(index));
            Json(Value::Object(answer)).into_response()
        }
        Ok((_, other)) => {
            return Err(ApiError::internal(format!(
                "unexpected answer to a CAS: {other:?}"
            )))
        }
        Err(forwarded) => forwarded,
    })
}

#[derive(Debug, Deserialize, PartialEq)]
pub struct ReadParams {
    pub(super) consistency: Option<String>,
}

/// The `?consistency=` of a read, as the `Query` extractor reads it. The two forms reads
/// take (no query, or that one parameter in plain lower-case letters) are read here without
/// the extractor's URL-decoding deserializer, ~2.5 k instructions per get (callgrind); every
/// other query goes through the extractor, so its answers, errors included, are the
/// extractor's (the fuzz target `http_request` checks that the two agree).
pub(super) fn read_params(uri: &Uri) -> Result<ReadParams, QueryRejection> {
    let plain = match uri.query() {
        None => Some(None),
        Some(query) => query
            .strip_prefix("consistency=")
            .filter(|value| !value.is_empty() && value.bytes().all(|b| b.is_ascii_lowercase()))
            .map(Some),
    };
    match plain {
        Some(consistency) => Ok(ReadParams {
            consistency: consistency.map(str::to_string),
        }),
        None => Query::<ReadParams>::try_from_uri(uri).map(|Query(params)| params),
    }
}

/// The read barrier `?consistency=` asks for; `None` for a stale (local) read.
pub(super) fn read_mode(params: &ReadParams) -> Result<Option<ReadMode>, ApiError> {
    match params.consistency.as_deref() {
        None | Some("linearizable") => Ok(Some(ReadMode::Linearizable)),
        Some("lease") => Ok(Some(ReadMode::Lease)),
        Some("stale") => Ok(None),
        Some(other) => Err(ApiError::bad_request(format!(
            "consistency must be linearizable, lease or stale, not {other:?}"
        ))),
    }
}

/// Issue 15: the read barrier `params` asks for, as single gets take it; `Some(answer)`
/// when this node does not lead and the request was forwarded to the leader.
pub(super) async fn read_barrier_or_forward(
    state: &ApiState,
    params: &ReadParams,
    method: Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Option<Response>, ApiError> {
    let Some(mode) = read_mode(params)? else {
        return Ok(None);
    };
    match read_barrier(state, mode, headers).await? {
        Barrier::Passed => Ok(None),
        Barrier::ForwardTo(leader) => Ok(Some(
            forward::to_leader(
                state,
                leader,
                method,
                &path_and_query(uri),
                headers,
                Bytes::new(),
                true,
            )
            .await,
        )),
    }
}

/// What came of a read barrier.
enum Barrier {
    /// This node may serve the read from its own state machine.
    Passed,
    /// This node does not lead and cannot get a read index over the peer link: forward
    /// the read over HTTP to this leader, if one is known.
    ForwardTo(Option<storage::NodeId>),
}

/// The read barrier of `mode` for a read served here: the node's own when it leads; a
/// read index from the leader over the peer link when it follows.
async fn read_barrier(
    state: &ApiState,
    mode: ReadMode,
    headers: &HeaderMap,
) -> Result<Barrier, ApiError> {
    match state
        .node
        .read_barrier(mode, state.options.request_timeout)
        .await
    {
        Ok(_) => Ok(Barrier::Passed),
        Err(RequestError::NotLeader(leader)) => {
            match read_index_over_peer_link(state, leader, mode, headers).await {
                Some(served_here) => served_here.map(|()| Barrier::Passed),
                None => Ok(Barrier::ForwardTo(leader)),
            }
        }
        Err(e) => Err(ApiError::from_read(e)),
    }
}

/// Issue 14: a follower's read barrier over the peer link (Raft thesis §6.4): asks
/// `leader` for a read index and waits until this node has applied it, so that the read is
/// served here, linearizably, from this node's own state machine (the argument is in
/// `node::forwarding`). `None` when the link cannot carry it (no leader known, a leader
/// older than protocol version 3, the link down, a request that already went through a
/// follower): nothing was sent, so the caller forwards over HTTP as before. The client's
/// read role was checked here already; the leader only gives an index, which reveals
/// nothing.
async fn read_index_over_peer_link(
    state: &ApiState,
    leader: Option<storage::NodeId>,
    mode: ReadMode,
    headers: &HeaderMap,
) -> Option<Result<(), ApiError>> {
    use crate::node::forwarding::ReadIndexFailure;
    let leader = leader.filter(|l| *l != state.node.id)?;
    if forward::was_forwarded(headers) {
        return None;
    }
    match state
        .node
        .read_index_from_leader(leader, mode, state.options.request_timeout)
        .await
    {
        Ok(_) => Some(Ok(())),
        Err(ReadIndexFailure::Unsupported { .. }) => None,
        Err(e @ ReadIndexFailure::Overloaded { .. }) => {
            Some(Err(ApiError::overloaded(e.to_string())))
        }
        Err(e) if e.is_timeout() => Some(Err(ApiError::timeout(e.to_string()))),
        Err(e) => Some(Err(ApiError::no_leader(e.to_string()))),
    }
}

/// `GET /v1/kv/{key}?consistency=linearizable|lease|stale`.
pub async fn get_key(State(state): State<Arc<ApiState>>, request: Request) -> ApiResult {
    // As in `put_key`: the parts are read, not cloned. The query is checked first, as its
    // extractor did.
    let (parts, _) = request.into_parts();
    let (uri, headers) = (&parts.uri, &parts.headers);
    let params = match read_params(uri) {
        Ok(params) => params,
        Err(rejection) => return Ok(rejection.into_response()),
    };
    let key = key_from_uri(uri)?;
    let mode = read_mode(&params)?;
    if let Some(mode) = mode {
        if let Barrier::ForwardTo(leader) = read_barrier(&state, mode, headers).await? {
            return Ok(forward::to_leader(
                &state,
                leader,
                Method::GET,
                &path_and_query(uri),
                headers,
                Bytes::new(),
                true,
            )
            .await);
        }
    }
    // Read the value and the applied index under one lock so the index names the state
    // the value came from.
    let (value, index) = state
        .node
        .read_local(|kv, applied_index| (kv.get(&key), applied_index));
    let index_header = HeaderValue::from(index);
    match value {
        Some(value) => {
            // The headers in the order the `(status, headers, body)` answer gave them.
            let mut response = Response::new(Body::from(value));
            let headers = response.headers_mut();
            headers.insert(
                axum::http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            headers.insert(RAFT_INDEX_HEADER_NAME, index_header);
            Ok(response)
        }
        None => {
            let mut response = ApiError::not_found(format!(
                "key {:?} is not set",
                String::from_utf8_lossy(&key)
            ))
            .into_response();
            response
                .headers_mut()
                .insert(RAFT_INDEX_HEADER_NAME, index_header);
            Ok(response)
        }
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Leader => "leader",
        Role::Follower => "follower",
        Role::PreCandidate | Role::Candidate => "candidate",
        Role::Learner => "learner",
    }
}

pub(super) fn members_json(membership: &Membership) -> Value {
    Value::Array(
        membership
            .members
            .iter()
            .map(|(id, m)| json!({ "id": id, "raft_addr": m.raft_addr, "api_addr": m.api_addr, "voter": m.voter }))
            .collect(),
    )
}

/// `GET /v1/status`.
pub async fn status(State(state): State<Arc<ApiState>>) -> ApiResult {
    let status = state.node.status().await.map_err(ApiError::from)?;
    let mut members = members_json(&status.membership);
    let mut body = json!({
        "id": status.id,
        "role": role_name(status.role),
        "term": status.term,
        "leader_id": status.leader_id,
        "commit_index": status.commit_index,
        "applied_index": status.applied_index,
        "last_log_index": status.last_log_index,
        "snapshot_index": status.snapshot_index,
        // Issue 15: where history starts, in the log and for watches.
        "first_log_index": state.node.log_reader().first_index(),
        "watch_first_index": state.node.watch().history_first_index(state.node.log_reader().first_index()),
        "commit_index_heard": status.commit_index_heard,
    });
    if let Some(r) = status.snapshot_receiving {
        body["snapshot_receiving"] = json!({
            "last_index": r.last_index,
            "bytes_received": r.bytes_received,
            "installing": r.installing,
        });
    }
    // Only the leader knows how far each member got.
    if let Some(report) = state.node.replication().await.map_err(ApiError::from)? {
        for member in members.as_array_mut().into_iter().flatten() {
            let id = member["id"].as_u64();
            if let Some(r) = report.members.iter().find(|r| Some(r.id) == id) {
                member["match_index"] = json!(r.match_index);
                member["lag"] = json!(r.lag);
                member["last_contact_ms"] = json!(r.last_contact_ms);
                if let Some(snapshot) = &r.snapshot {
                    member["snapshot_sending"] = snapshot_sending_json(snapshot);
                }
                if let Some(regressed) = &r.log_regressed {
                    member["log_regressed"] = json!({
                        "match_index": regressed.match_index,
                        "last_index": regressed.last_index,
                    });
                }
            }
        }
        body["failure_tolerance"] = json!(report.failure_tolerance);
    }
    body["members"] = members;
    Ok(Json(body).into_response())
}

/// Issue 17: an InstallSnapshot transfer as the leader reports it; `percent` is whole
/// percent of the bytes sent, absent when the size is unknown.
fn snapshot_sending_json(s: &crate::node::SnapshotSendReport) -> Value {
    let mut value = json!({
        "last_index": s.last_index,
        "bytes_sent": s.bytes_sent,
        "bytes_total": s.bytes_total,
    });
    if let Some(total) = s.bytes_total.filter(|&t| t > 0) {
        value["percent"] = json!(s.bytes_sent.min(total).saturating_mul(100) / total);
    }
    value
}

#[derive(Deserialize)]
pub struct LogParams {
    from: Option<u64>,
    limit: Option<u64>,
}

/// The header naming the index to ask for next (`from=`): the first entry this page left
/// out because of `limit` or the byte budget, or one past the last entry in the log.
pub const NEXT_INDEX_HEADER: &str = "x-next-index";

/// `GET /v1/log?from=N&limit=M`: entries still in the log, at most `limit` (capped at
/// `log_page_max_entries`) and at most `log_page_max_bytes` of JSON (but always one entry
/// when one is there); `X-Next-Index` says where to continue.
pub async fn log(State(state): State<Arc<ApiState>>, Query(params): Query<LogParams>) -> ApiResult {
    let limit = params
        .limit
        .unwrap_or(100)
        .min(state.options.log_page_max_entries);
    let bytes_max = state.options.log_page_max_bytes;
    let log = state.node.log_reader();
    // Copying up to `log_page_max_bytes` out of the WAL and rendering it is slow and may
    // block on the disk: off the async workers, at low priority (`background.rs`).
    let page = state
        .background
        .run(move || {
            let from = params.from.unwrap_or(0).max(log.first_index());
            let page = super::log_page::render(&log, from, limit, bytes_max);
            let bytes = page.as_ref().map_or(0, |p| p.body.len() as u64);
            (page, bytes)
        })
        .await
        .ok_or_else(|| {
            ApiError::internal(
                "reading the log page failed (the node's output shows the panic); retry, and \
                 report it if it repeats",
            )
        })?
        .map_err(|e| {
            ApiError::internal(format!(
                "cannot read the log: {e}; the node's log names the damaged file, check the disk"
            ))
        })?;
    let mut response = (
        [(
            axum::http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        page.body,
    )
        .into_response();
    response
        .headers_mut()
        .insert(NEXT_INDEX_HEADER, HeaderValue::from(page.next_index));
    Ok(response)
}

/// `POST /v1/snapshot`: waits at most `snapshot_request_timeout` (`504 timeout` after it;
/// the snapshot carries on in the background, and asking again joins it rather than
/// starting a second one).
pub async fn snapshot(State(state): State<Arc<ApiState>>) -> ApiResult {
    let limit = state.options.snapshot_request_timeout;
    match tokio::time::timeout(limit, state.node.snapshot()).await {
        Ok(Ok(index)) => Ok(Json(json!({ "snapshot_index": index })).into_response()),
        Ok(Err(failure)) => Err(ApiError::internal(format!("snapshot failed: {failure}"))),
        Err(_) => Err(ApiError::timeout(format!(
            "the snapshot did not finish within {} ms (snapshot_request_timeout_ms); it \
             carries on in the background: watch snapshot_index in GET /v1/status, or ask \
             again (which never starts a second snapshot while one is being written)",
            limit.as_millis()
        ))),
    }
}

/// `GET /healthz`: `200` while the node serves; `503 failed` once it hit a fatal error
/// (a panicked thread, a failed disk) and only waits for the process to exit.
pub async fn healthz(State(state): State<Arc<ApiState>>) -> Response {
    match state.node.failure() {
        None => "ok\n".into_response(),
        Some(message) => ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "failed",
            message: format!("node {} stopped: {message}", state.node.id),
        }
        .into_response(),
    }
}

/// `GET /readyz`: 200 when this node can serve linearizable requests; 503 while it stops,
/// knows no leader, is a learner, or is more than `ready_max_lag_entries` behind.
pub async fn readyz(State(state): State<Arc<ApiState>>) -> ApiResult {
    let max_lag_entries = state.options.ready_max_lag_entries;
    match state.node.readiness_within_lag(max_lag_entries).await {
        Ok(leader) => Ok(Json(json!({ "ready": true, "leader_id": leader })).into_response()),
        Err(why) => Err(ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "not_ready",
            message: why.to_string(),
        }),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TransferBody {
    to: Option<u64>,
}

/// `POST /v1/leader/transfer` with `{"to": id}` or no body (the most caught-up voter).
pub async fn transfer_leader(
    State(state): State<Arc<ApiState>>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let body = read_body(&state, body).await?;
    let to = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        serde_json::from_slice::<TransferBody>(&body)
            .map_err(|e| {
                ApiError::bad_request(format!(
                    "the body must be {{\"to\": <node id>}} or empty: {e}"
                ))
            })?
            .to
    };
    match state.node.transfer_leadership(to).await {
        Ok(done) => Ok(Json(json!({
            "leader_id": done.leader,
            "elapsed_ms": done.elapsed.as_millis() as u64,
        }))
        .into_response()),
        Err(TransferError::NotLeader(leader)) => {
            Ok(
                forward::transfer_to_leader(&state, leader, &path_and_query(&uri), &headers, body)
                    .await,
            )
        }
        Err(e) => Err(transfer_error(e)),
    }
}

fn transfer_error(error: TransferError) -> ApiError {
    let message = error.to_string();
    match error {
        TransferError::NotLeader(_) | TransferError::Stopped => ApiError::no_leader(message),
        TransferError::NotMember(_) | TransferError::NotVoter(_) => ApiError::bad_request(message),
        TransferError::NoCandidate(_) | TransferError::InProgress(_) => ApiError::conflict(message),
        TransferError::Abandoned { .. }
        | TransferError::OtherLeader { .. }
        | TransferError::Unknown { .. } => ApiError::timeout(message),
    }
}

/// Unknown paths.
pub async fn not_found(State(state): State<Arc<ApiState>>, uri: Uri) -> Response {
    let mut response =
        ApiError::not_found(format!("no such endpoint: {}", uri.path())).into_response();
    super::every_request::add_leader_header(&state, &mut response);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plain forms are read without the extractor, and every form reads as the
    /// extractor reads it: errors, percent-encoding, repeats and other parameters too.
    #[test]
    fn read_params_read_every_query_as_the_extractor_does() {
        for query in [
            "",
            "?consistency=linearizable",
            "?consistency=lease",
            "?consistency=stale",
            "?consistency=Lease",
            "?consistency=%6Cease",
            "?consistency=lea+se",
            "?consistency=",
            "?consistency",
            "?consistency=lease&consistency=stale",
            "?other=1&consistency=stale",
            "?consistency=stale&other=1",
            "?",
            "?%ZZ=1",
        ] {
            let uri: Uri = format!("/v1/kv/k{query}").parse().expect("a URI");
            let extracted = Query::<ReadParams>::try_from_uri(&uri)
                .map(|Query(params)| params)
                .map_err(|rejection| rejection.body_text());
            let read = read_params(&uri).map_err(|rejection| rejection.body_text());
            assert_eq!(read, extracted, "query {query:?}");
        }
    }

    #[tokio::test]
    async fn the_answer_to_a_write_is_what_json_wrote() {
        for index in [0, 1, 42, u64::MAX] {
            let ours = written_answer(index);
            let theirs = Json(serde_json::json!({ "index": index })).into_response();
            assert_eq!(ours.headers(), theirs.headers());
            let ours = axum::body::to_bytes(ours.into_body(), usize::MAX).await;
            let theirs = axum::body::to_bytes(theirs.into_body(), usize::MAX).await;
            assert_eq!(
                ours.expect("a body"),
                theirs.expect("a body"),
                "index {index}"
            );
        }
    }

    /// One frame is passed on as it is; several are joined in order; the limit counts them
    /// all, as `axum::body::to_bytes` did.
    #[tokio::test]
    async fn a_body_of_any_frames_reads_whole_and_within_the_limit() {
        let frames = |parts: &[&'static str]| {
            let chunks: Vec<Result<Bytes, std::io::Error>> = parts
                .iter()
                .map(|p| Ok(Bytes::from_static(p.as_bytes())))
                .collect();
            Body::from_stream(futures_util::stream::iter(chunks))
        };
        for parts in [
            &[][..],
            &["value"],
            &["", "va"],
            &["va", "", "lue"],
            &["v", "a", "l"],
        ] {
            let read = read_body_within(5, frames(parts))
                .await
                .expect("within the limit");
            assert_eq!(read, Bytes::from(parts.concat()), "frames {parts:?}");
        }
        for parts in [&["valuex"][..], &["val", "uex"]] {
            let refused = read_body_within(5, frames(parts))
                .await
                .expect_err("over the limit");
            assert_eq!(
                refused.status,
                StatusCode::PAYLOAD_TOO_LARGE,
                "frames {parts:?}"
            );
        }
    }
}
