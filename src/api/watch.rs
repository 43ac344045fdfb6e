//! `GET /v1/watch?prefix=P&from_index=N` and `GET /v1/changes?from_index=N` (issue 15):
//! every committed change from index N on, in log order, none skipped, as newline-delimited
//! JSON (or Server-Sent Events on `Accept: text/event-stream`).
//!
//! A watch is served by the node asked, from its own applied state (`X-Raft-Served-By`
//! names it); it never forwards, so a follower's stream never runs ahead of what that
//! follower applied. Each watcher is one task: it reads the history it asked for from the
//! WAL (`node::watch_hub` explains where that history ends and why), then follows the apply
//! thread's broadcast. Its output goes through a buffer of at most `watch_buffer_bytes_max`
//! bytes; a watcher whose client reads slower than changes come is cut, and its stream ends
//! with the index to resume from. The apply thread never waits for it.
//!
//! Lines of the stream:
//! - `{"index": N, "op": "put", "key": K, "value": V}` and `{"index": N, "op": "delete",
//!   "key": K, "value": null}`, with `key_base64` / `value_base64` for bytes that are not
//!   UTF-8;
//! - `{"progress": N}`: every change up to N has been sent (now and then, and after the
//!   history), so a quiet watcher knows how far it has seen;
//! - last, if the node ends the stream: `{"error": {"code", "message", "resume_index"}}`
//!   (`watcher_too_slow`, `stopping`) or `{"error": {"code": "compacted", "first_index"}}`
//!   when a snapshot from the leader replaced the history the watcher still needed.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{json, Value};
use storage::{Entry, EntryKind};
use tokio::sync::{broadcast, mpsc, Notify};

use super::handlers::put_bytes_field;
use super::range::{number, query_pairs};
use super::{ApiError, ApiState};
use crate::node::watch_hub::{event_of, Published, Subscription, WatchEvent, WatcherSlot};
use crate::node::LogReader;

/// The header naming the node that serves a watch.
pub const SERVED_BY_HEADER: &str = "x-raft-served-by";

/// History is read from the WAL this many entries at a time.
const HISTORY_CHUNK_ENTRIES: u64 = 256;
/// History is copied out of the WAL this many bytes at a time.
const HISTORY_CHUNK_BYTES: u64 = 256 << 10;

/// Limits of watches.
#[derive(Clone, Debug)]
pub struct WatchOptions {
    /// Most watchers at once (`watchers_max`).
    pub watchers_max: usize,
    /// Bytes buffered for one watcher before it is cut (`watch_buffer_bytes_max`).
    pub buffer_bytes_max: usize,
    /// How often a watcher is sent `{"progress": N}`.
    pub progress_interval: Duration,
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions {
            watchers_max: crate::config::DEFAULT_WATCHERS_MAX as usize,
            buffer_bytes_max: crate::config::DEFAULT_WATCH_BUFFER_BYTES_MAX as usize,
            progress_interval: Duration::from_secs(1),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    NdJson,
    EventStream,
}

/// `GET /v1/watch?prefix=P&from_index=N`.
pub async fn watch(State(state): State<Arc<ApiState>>, uri: Uri, headers: HeaderMap) -> Response {
    respond(start(&state, &uri, &headers, true))
}

/// `GET /v1/changes?from_index=N`: the watch of every key.
pub async fn changes(State(state): State<Arc<ApiState>>, uri: Uri, headers: HeaderMap) -> Response {
    respond(start(&state, &uri, &headers, false))
}

fn respond(result: Result<Response, Refusal>) -> Response {
    match result {
        Ok(response) => response,
        Err(Refusal::Api(error)) => error.into_response(),
        Err(Refusal::Compacted { first_index, asked }) => (
            StatusCode::GONE,
            axum::Json(json!({"error": {
                "code": "compacted",
                "message": format!(
                    "from_index {asked} is older than the history this node holds (its log was compacted behind a snapshot, or it restarted since); the oldest index it can stream from is {first_index}: read the range (GET /v1/kv?prefix=...) and watch from the index that read names plus one"
                ),
                "first_index": first_index,
            }})),
        )
            .into_response(),
    }
}

enum Refusal {
    Api(ApiError),
    Compacted { first_index: u64, asked: u64 },
}

impl From<ApiError> for Refusal {
    fn from(error: ApiError) -> Self {
        Refusal::Api(error)
    }
}

fn start(
    state: &Arc<ApiState>,
    uri: &Uri,
    headers: &HeaderMap,
    prefix_allowed: bool,
) -> Result<Response, Refusal> {
    let mut prefix = Vec::new();
    let mut from_index = None;
    for (name, value) in query_pairs(uri)? {
        match name.as_str() {
            "prefix" if prefix_allowed => prefix = value,
            "from_index" => from_index = Some(number::<u64>("from_index", &value)?),
            other => {
                let allowed = if prefix_allowed {
                    "prefix and from_index"
                } else {
                    "from_index"
                };
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter {other:?}; a {} takes {allowed}",
                    if prefix_allowed {
                        "watch"
                    } else {
                        "change feed"
                    }
                ))
                .into());
            }
        }
    }
    let format = match headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
    {
        Some(accept) if accept.contains("text/event-stream") => Format::EventStream,
        _ => Format::NdJson,
    };
    let node = &state.node;
    let options = &state.options.watch;
    let slot = node.watch().register(options.watchers_max).ok_or_else(|| {
        ApiError::overloaded(format!(
            "node {} already serves {} watchers (watchers_max); retry later, or watch another node",
            node.id, options.watchers_max
        ))
    })?;
    let subscription = node.watch().subscribe(from_index.unwrap_or(0));
    let subscribed_at = subscription.subscribed_at;
    // Without from_index: from the next change.
    let from = from_index.unwrap_or(subscribed_at + 1).max(1);
    if from <= subscribed_at {
        let first_index = subscription
            .history_first_index
            .max(node.log_reader().first_index());
        if from < first_index {
            node.watch()
                .metrics
                .compacted_refusals
                .fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::Compacted {
                first_index,
                asked: from,
            });
        }
    }
    slot.position
        .store(subscribed_at.min(from - 1), Ordering::Relaxed);
    let (lines_tx, lines_rx) = mpsc::unbounded_channel();
    let buffer = Arc::new(WatchBuffer {
        bytes: AtomicUsize::new(0),
        drained: Notify::new(),
        bytes_max: options.buffer_bytes_max,
    });
    let watcher = Watcher {
        log: node.log_reader(),
        state: state.clone(),
        prefix: Bytes::from(prefix),
        from,
        format,
        buffer: buffer.clone(),
        lines: lines_tx,
        slot,
        progress_interval: options.progress_interval,
    };
    tokio::spawn(watcher.run(subscription));
    let body = futures_util::stream::unfold((lines_rx, buffer), |(mut rx, buffer)| async move {
        let line: Bytes = rx.recv().await?;
        buffer.bytes.fetch_sub(line.len(), Ordering::AcqRel);
        buffer.drained.notify_one();
        Some((Ok::<Bytes, std::convert::Infallible>(line), (rx, buffer)))
    });
    let content_type = match format {
        Format::NdJson => "application/x-ndjson",
        Format::EventStream => "text/event-stream",
    };
    let mut response = Response::new(Body::from_stream(body));
    let headers = response.headers_mut();
    headers.insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    headers.insert(
        axum::http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache"),
    );
    headers.insert(SERVED_BY_HEADER, HeaderValue::from(node.id));
    headers.insert(
        super::RAFT_INDEX_HEADER_NAME,
        HeaderValue::from(subscribed_at),
    );
    Ok(response)
}

/// The lines waiting for one watcher's connection, counted in bytes.
struct WatchBuffer {
    bytes: AtomicUsize,
    drained: Notify,
    bytes_max: usize,
}

impl WatchBuffer {
    fn full(&self) -> bool {
        self.bytes.load(Ordering::Acquire) >= self.bytes_max
    }
}

/// Why a watcher's stream ends early.
enum End {
    /// The client went away.
    Gone,
    /// The client read too slowly; it should resume at this index.
    TooSlow(u64),
    /// History it needs is gone; the oldest index still held.
    Compacted(u64),
    /// The node is stopping; resume at this index elsewhere or later.
    Stopping(u64),
}

struct Watcher {
    log: LogReader,
    state: Arc<ApiState>,
    prefix: Bytes,
    from: u64,
    format: Format,
    buffer: Arc<WatchBuffer>,
    lines: mpsc::UnboundedSender<Bytes>,
    slot: WatcherSlot,
    progress_interval: Duration,
}

impl Watcher {
    async fn run(mut self, subscription: Subscription) {
        let subscribed_at = subscription.subscribed_at;
        let end = match self.history(subscribed_at, &subscription.no_change).await {
            Ok(()) => self.live(subscription.live, subscribed_at).await,
            Err(end) => end,
        };
        let position = self.position();
        let too_slow = matches!(end, End::TooSlow(_));
        let last = match end {
            End::Gone => return,
            End::TooSlow(resume_index) => {
                json!({"error": {
                    "code": "watcher_too_slow",
                    "message": format!(
                        "this watcher fell more than watch_buffer_bytes_max behind the changes (position {position}); nothing after index {} was sent: watch again with from_index={resume_index}",
                        resume_index - 1
                    ),
                    "resume_index": resume_index,
                }})
            }
            End::Compacted(first_index) => json!({"error": {
                "code": "compacted",
                "message": format!(
                    "this node replaced its history with a snapshot from the leader (or compacted it while the history was read) past this watcher's position {position}; read the range and watch from the index that read names plus one (the oldest index it can stream from is {first_index})"
                ),
                "first_index": first_index,
            }}),
            End::Stopping(resume_index) => json!({"error": {
                "code": "stopping",
                "message": format!(
                    "the node is stopping; watch again (here once it is back, or on another node) with from_index={resume_index}"
                ),
                "resume_index": resume_index,
            }}),
        };
        self.send_unbounded(render_format(self.format, "error", None, &last));
        // Counted once the watcher's slot is free, so `/metrics` never shows a cut watcher
        // as still open.
        let state = self.state.clone();
        drop(self);
        if too_slow {
            state
                .node
                .watch()
                .metrics
                .watchers_cut
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    fn metrics(&self) -> &crate::node::watch_hub::WatchMetrics {
        &self.state.node.watch().metrics
    }

    fn position(&self) -> u64 {
        self.slot.position.load(Ordering::Relaxed)
    }

    fn set_position(&self, index: u64) {
        self.slot.position.store(index, Ordering::Relaxed);
    }

    fn send_unbounded(&self, line: Bytes) -> bool {
        self.buffer.bytes.fetch_add(line.len(), Ordering::AcqRel);
        self.lines.send(line).is_ok()
    }

    /// Appends `event`'s line to `out`.
    fn append_line(&self, out: &mut Vec<u8>, event: &WatchEvent) {
        let json = event.json.get_or_init(|| event_json(event));
        match self.format {
            Format::NdJson => {
                out.extend_from_slice(json);
                out.push(b'\n');
            }
            Format::EventStream => {
                let kind = if event.value.is_some() {
                    "put"
                } else {
                    "delete"
                };
                out.extend_from_slice(
                    format!("id: {}\nevent: {kind}\ndata: ", event.index).as_bytes(),
                );
                out.extend_from_slice(json);
                out.extend_from_slice(b"\n\n");
            }
        }
    }

    fn progress_line(&self) -> Bytes {
        render_format(
            self.format,
            "progress",
            None,
            &json!({ "progress": self.position() }),
        )
    }

    /// Waits until the buffer has room (history is read at the client's pace).
    async fn room(&self) -> Result<(), End> {
        while self.buffer.full() {
            tokio::select! {
                () = self.buffer.drained.notified() => {}
                () = self.lines.closed() => return Err(End::Gone),
            }
        }
        Ok(())
    }

    /// Sends the changes in `[from, subscribed_at]`, read from the WAL.
    async fn history(&mut self, subscribed_at: u64, no_change: &BTreeSet<u64>) -> Result<(), End> {
        let mut next = self.from;
        while next <= subscribed_at {
            self.room().await?;
            let log = self.log.clone();
            let hi = (subscribed_at + 1).min(next + HISTORY_CHUNK_ENTRIES);
            let chunk = tokio::task::spawn_blocking(move || read_chunk(&log, next, hi))
                .await
                .map_err(|_| End::Stopping(next))?;
            let compacted = || End::Compacted(self.log.first_index());
            let entries = chunk.map_err(|e| {
                tracing::warn!("watch: cannot read the log at {next}: {e}");
                compacted()
            })?;
            if entries.is_empty() {
                return Err(compacted());
            }
            // One chunk of the connection's body per chunk of the log.
            let mut out = Vec::new();
            let mut sent = 0;
            for entry in entries {
                // Compaction behind the reader makes the WAL skip ahead: that is a gap.
                if entry.index != next {
                    return Err(compacted());
                }
                if entry.kind == EntryKind::Normal && !no_change.contains(&entry.index) {
                    if let Some(event) = event_of(entry.index, &entry.payload) {
                        if event.key.starts_with(&self.prefix) {
                            self.append_line(&mut out, &event);
                            sent += 1;
                        }
                    }
                }
                next = entry.index + 1;
            }
            if !out.is_empty() && !self.send_unbounded(Bytes::from(out)) {
                return Err(End::Gone);
            }
            self.metrics()
                .events_sent
                .fetch_add(sent, Ordering::Relaxed);
            self.set_position(next - 1);
        }
        self.set_position(subscribed_at.max(self.position()));
        let progress = self.progress_line();
        if !self.send_unbounded(progress) {
            return Err(End::Gone);
        }
        Ok(())
    }

    /// Follows the apply thread from `subscribed_at`.
    async fn live(
        &mut self,
        mut live: broadcast::Receiver<Arc<Published>>,
        subscribed_at: u64,
    ) -> End {
        let mut progress = tokio::time::interval(self.progress_interval);
        progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        progress.reset();
        loop {
            tokio::select! {
                () = self.lines.closed() => return End::Gone,
                _ = progress.tick() => {
                    // A client that is not reading needs no progress lines.
                    if !self.buffer.full() {
                        let line = self.progress_line();
                        if !self.send_unbounded(line) {
                            return End::Gone;
                        }
                    }
                }
                published = live.recv() => match published {
                    Ok(published) => match &*published {
                        Published::Applied { events, applied_index } => {
                            // One chunk of the connection's body per apply batch.
                            let mut out = Vec::new();
                            let mut sent = 0;
                            let mut cut_at = None;
                            for event in events {
                                if event.index <= subscribed_at
                                    || event.index < self.from
                                    || !event.key.starts_with(&self.prefix)
                                {
                                    continue;
                                }
                                if self.buffer.bytes.load(Ordering::Acquire) + out.len()
                                    >= self.buffer.bytes_max
                                {
                                    cut_at = Some(event.index);
                                    break;
                                }
                                self.append_line(&mut out, event);
                                sent += 1;
                            }
                            if !out.is_empty() && !self.send_unbounded(Bytes::from(out)) {
                                return End::Gone;
                            }
                            self.metrics().events_sent.fetch_add(sent, Ordering::Relaxed);
                            if let Some(index) = cut_at {
                                return End::TooSlow(index);
                            }
                            if *applied_index > self.position() {
                                self.set_position(*applied_index);
                            }
                        }
                        Published::Restored { snapshot_index } => {
                            return End::Compacted(snapshot_index + 1);
                        }
                    },
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        return End::TooSlow(self.position() + 1);
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        return End::Stopping(self.position() + 1);
                    }
                },
            }
        }
    }
}

/// `{"index", "op", "key", "value"}`, with `*_base64` for bytes that are not UTF-8.
fn event_json(event: &WatchEvent) -> Bytes {
    let mut object = serde_json::Map::new();
    object.insert("index".into(), json!(event.index));
    object.insert(
        "op".into(),
        json!(if event.value.is_some() {
            "put"
        } else {
            "delete"
        }),
    );
    put_bytes_field(&mut object, "key", &event.key);
    match &event.value {
        Some(value) => put_bytes_field(&mut object, "value", value),
        None => {
            object.insert("value".into(), Value::Null);
        }
    }
    // Writing a `Value` into a Vec cannot fail.
    Bytes::from(serde_json::to_vec(&Value::Object(object)).unwrap_or_default())
}

/// Entries `[lo, hi)` still in the WAL (fewer, or from a later index, if compacted).
fn read_chunk(log: &LogReader, lo: u64, hi: u64) -> storage::Result<Vec<Entry>> {
    let mut entries = Vec::new();
    log.visit_entries(lo, hi, HISTORY_CHUNK_BYTES, |entry| {
        entries.push(entry);
        std::ops::ControlFlow::Continue(())
    })?;
    Ok(entries)
}

fn render_format(format: Format, kind: &str, index: Option<u64>, value: &Value) -> Bytes {
    let mut out = Vec::with_capacity(128);
    match format {
        Format::NdJson => {
            // Writing a `Value` into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut out, value);
            out.push(b'\n');
        }
        Format::EventStream => {
            if let Some(index) = index {
                out.extend_from_slice(format!("id: {index}\n").as_bytes());
            }
            out.extend_from_slice(format!("event: {kind}\ndata: ").as_bytes());
            let _ = serde_json::to_writer(&mut out, value);
            out.extend_from_slice(b"\n\n");
        }
    }
    Bytes::from(out)
}

/// The watch figures of `/metrics`.
pub fn register_metrics(state: &ApiState, registry: &mut prometheus_client::registry::Registry) {
    use prometheus_client::metrics::counter::ConstCounter;
    use prometheus_client::metrics::gauge::ConstGauge;
    let hub = state.node.watch();
    let m = &hub.metrics;
    registry.register(
        "watchers",
        "Watch and change-feed streams open on this node",
        ConstGauge::new(hub.watchers() as u64),
    );
    registry.register(
        "watch_lag_entries_max",
        "Entries between this node's applied index and the furthest-behind watcher's position",
        ConstGauge::new(hub.lag_max()),
    );
    let counters: [(&str, &str, &std::sync::atomic::AtomicU64); 4] = [
        (
            "watch_events_sent",
            "Change events handed to watchers' connections",
            &m.events_sent,
        ),
        (
            "watchers_cut",
            "Watchers cut because their client read too slowly (their stream ended with a resume index)",
            &m.watchers_cut,
        ),
        (
            "watch_compacted",
            "Watch requests answered 410 compacted",
            &m.compacted_refusals,
        ),
        (
            "watch_refused",
            "Watch requests refused because watchers_max streams were open",
            &m.capacity_refusals,
        ),
    ];
    for (name, help, value) in counters {
        registry.register(name, help, ConstCounter::new(value.load(Ordering::Relaxed)));
    }
}
