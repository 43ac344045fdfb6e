//! Rendering a `GET /v1/log` page: entries copied out of the WAL and written as one JSON
//! array, directly into the answer's buffer.
//!
//! A page is megabytes (`log_page_max_bytes`, 4 MiB by default), rendered on the API's
//! low-priority thread (`background.rs`), which still takes CPU from the write path on a
//! small machine. Rendering each entry into a `serde_json::Value` first, then to its own
//! buffer, then into the page, cost 12.5–15 ms of that thread's CPU per 4 MB page of 1 MB
//! values (perf: a third in serde_json's string escaping, a sixth in copies, a fifth in
//! page faults of buffers grown by doubling). Here each entry is written once, its strings
//! escaped eight bytes at a time, into a buffer sized for the page up front: 5.3 ms per
//! page (one node, 40 pages in a row, CPU ticks of the thread from /proc).
//!
//! The bytes are those serde_json wrote for the `Value` form, which API.md's examples
//! show and clients parse: objects with their keys in sorted order (serde_json's map is
//! sorted without its `preserve_order` feature), strings escaped as serde_json escapes
//! them. The tests compare the two forms for every kind of entry.

use std::io::Write as _;
use std::ops::ControlFlow;

use storage::{Entry, EntryKind};

use super::json_writer::{write_bytes_field, write_json_str};
use crate::kv::{Command, KvCommand};

/// Entries are copied out of the WAL this many bytes at a time, each chunk under its own
/// short hold of the WAL's view lock (see `DurableLog::visit_entries`).
const LOG_READ_CHUNK_BYTES: u64 = 256 << 10;

/// The largest byte budget a page's buffer is sized for up front; a page that needs more
/// grows it.
const PAGE_BUDGET_PREALLOCATED_MAX: u64 = 4 << 20;

/// A rendered `GET /v1/log` answer.
pub struct LogPage {
    /// The JSON array.
    pub body: Vec<u8>,
    /// The index to ask for next.
    pub next_index: u64,
}

/// Renders up to `limit` entries from `from` as a JSON array of at most `bytes_max` bytes
/// (a first entry larger than that is still sent, so the client always makes progress).
pub fn render(
    log: &crate::node::LogReader,
    from: u64,
    limit: u64,
    bytes_max: u64,
) -> Result<LogPage, storage::Error> {
    // Twice the budget: the entry that does not fit is written in place before it is taken
    // back, and must not make the buffer grow, which would copy the whole page. Capacity
    // never written costs address space only (and a small page is shrunk below).
    let budget = bytes_max.min(PAGE_BUDGET_PREALLOCATED_MAX) as usize;
    let mut body = Vec::with_capacity(2 * budget + 2);
    body.push(b'[');
    let mut taken = 0u64;
    let hi = from.saturating_add(limit);
    let next_index = log.visit_entries(from, hi, LOG_READ_CHUNK_BYTES, |entry| {
        // Written in place, and taken back if it does not fit.
        let before = body.len();
        if taken > 0 {
            body.push(b',');
        }
        write_entry(&mut body, &entry);
        // The closing bracket counts too.
        if taken > 0 && body.len() as u64 + 1 > bytes_max {
            body.truncate(before);
            return ControlFlow::Break(());
        }
        taken += 1;
        ControlFlow::Continue(())
    })?;
    body.push(b']');
    // A small page should not hold the whole capacity while a slow client takes it.
    if body.len() < body.capacity() / 4 {
        body.shrink_to_fit();
    }
    Ok(LogPage { body, next_index })
}

/// Writes `{"data":…,"index":…,"kind":…,"term":…}`.
fn write_entry(out: &mut Vec<u8>, entry: &Entry) {
    out.extend_from_slice(b"{\"data\":");
    write_data(out, entry.kind, &entry.payload);
    // Writing into a Vec cannot fail.
    let _ = write!(
        out,
        ",\"index\":{},\"kind\":\"{}\",\"term\":{}}}",
        entry.index,
        kind_name(entry.kind),
        entry.term
    );
}

/// The `kind` a page shows for an entry.
fn kind_name(kind: EntryKind) -> &'static str {
    match kind {
        EntryKind::Normal => "normal",
        EntryKind::Noop => "noop",
        EntryKind::Membership => "membership",
    }
}

/// What an entry holds: null for a no-op, the members for a membership change, the command
/// for a normal entry, and a note of its size for bytes that decode as neither.
fn write_data(out: &mut Vec<u8>, kind: EntryKind, payload: &[u8]) {
    let undecodable = |out: &mut Vec<u8>, len: usize| {
        write_json_str(out, &format!("<{len} undecodable bytes>"));
    };
    match kind {
        EntryKind::Noop => out.extend_from_slice(b"null"),
        EntryKind::Membership => match crate::raft::membership::decode_membership(payload) {
            // A handful of members: the Value form costs nothing here.
            Ok(membership) => {
                let _ =
                    serde_json::to_writer(&mut *out, &super::handlers::members_json(&membership));
            }
            Err(_) => undecodable(out, payload.len()),
        },
        EntryKind::Normal => {
            let Some(command) = Command::decode(payload) else {
                return undecodable(out, payload.len());
            };
            let request_id = command
                .request_id
                .as_ref()
                .map(|r| format!("{}:{}", r.client, r.sequence));
            // Keys in sorted order: expected, key, op, request_id, value.
            let (op, expected, key, value) = match KvCommand::decode(&command.body) {
                Some(KvCommand::Put { key, value }) => ("put", None, key, Some(Some(value))),
                Some(KvCommand::Delete { key }) => ("delete", None, key, None),
                Some(KvCommand::Cas {
                    key,
                    expected,
                    value,
                }) => ("cas", Some(expected), key, Some(value)),
                None => return undecodable(out, command.body.len()),
            };
            out.push(b'{');
            if let Some(expected) = expected {
                write_bytes_field(out, "expected", expected.as_deref());
                out.push(b',');
            }
            write_bytes_field(out, "key", Some(&key));
            out.extend_from_slice(b",\"op\":");
            write_json_str(out, op);
            out.extend_from_slice(b",\"request_id\":");
            match &request_id {
                Some(id) => write_json_str(out, id),
                None => out.extend_from_slice(b"null"),
            }
            if let Some(value) = value {
                out.push(b',');
                write_bytes_field(out, "value", value.as_deref());
            }
            out.push(b'}');
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use serde_json::{json, Value};

    use super::*;
    use crate::kv::RequestId;

    /// What the page showed before it was written directly: serde_json's rendering of a
    /// `Value`, the reference the direct writer must match byte for byte.
    fn value_form(entry: &Entry) -> String {
        // The field rule the CAS answer and watch events use; null when absent.
        fn bytes_field(object: &mut Value, name: &str, bytes: Option<&[u8]>) {
            let map = object.as_object_mut().unwrap();
            match bytes {
                Some(bytes) => super::super::handlers::put_bytes_field(map, name, bytes),
                None => {
                    map.insert(name.to_string(), Value::Null);
                }
            }
        }
        let undecodable = |len: usize| Value::String(format!("<{len} undecodable bytes>"));
        let data = match entry.kind {
            EntryKind::Noop => Value::Null,
            EntryKind::Membership => {
                match crate::raft::membership::decode_membership(&entry.payload) {
                    Ok(m) => super::super::handlers::members_json(&m),
                    Err(_) => undecodable(entry.payload.len()),
                }
            }
            EntryKind::Normal => match Command::decode(&entry.payload) {
                None => undecodable(entry.payload.len()),
                Some(command) => {
                    let request_id = command
                        .request_id
                        .as_ref()
                        .map(|r| format!("{}:{}", r.client, r.sequence));
                    match KvCommand::decode(&command.body) {
                        Some(KvCommand::Put { key, value }) => {
                            let mut e = json!({"op": "put", "request_id": request_id});
                            bytes_field(&mut e, "key", Some(&key));
                            bytes_field(&mut e, "value", Some(&value));
                            e
                        }
                        Some(KvCommand::Delete { key }) => {
                            let mut e = json!({"op": "delete", "request_id": request_id});
                            bytes_field(&mut e, "key", Some(&key));
                            e
                        }
                        Some(KvCommand::Cas {
                            key,
                            expected,
                            value,
                        }) => {
                            let mut e = json!({"op": "cas", "request_id": request_id});
                            bytes_field(&mut e, "key", Some(&key));
                            bytes_field(&mut e, "expected", expected.as_deref());
                            bytes_field(&mut e, "value", value.as_deref());
                            e
                        }
                        None => undecodable(command.body.len()),
                    }
                }
            },
        };
        let kind = kind_name(entry.kind);
        json!({"index": entry.index, "term": entry.term, "kind": kind, "data": data}).to_string()
    }

    fn entry(index: u64, kind: EntryKind, payload: impl Into<Bytes>) -> Entry {
        Entry {
            index,
            term: 42,
            kind,
            payload: payload.into(),
        }
    }

    fn normal(command: KvCommand, request_id: Option<RequestId>) -> Entry {
        let body = Bytes::from(command.encode());
        entry(7, EntryKind::Normal, Command { request_id, body }.encode())
    }

    #[test]
    fn every_kind_of_entry_renders_as_its_value_form() {
        let b = |s: &[u8]| Bytes::copy_from_slice(s);
        let id = Some(RequestId {
            client: "client-9".to_string(),
            sequence: 3,
        });
        let membership = storage::Membership::single_voter(1, "127.0.0.1:7001", "127.0.0.1:8001");
        let entries = [
            normal(
                KvCommand::Put {
                    key: b(b"k"),
                    value: b(b"v \"q\" \\ \n\t\x01"),
                },
                None,
            ),
            normal(
                KvCommand::Put {
                    key: b(&[0xff, 0]),
                    value: b(&[0xc3]),
                },
                id.clone(),
            ),
            normal(
                KvCommand::Put {
                    key: b("日本".as_bytes()),
                    value: b(b""),
                },
                id.clone(),
            ),
            normal(KvCommand::Delete { key: b(b"gone") }, id.clone()),
            normal(KvCommand::Delete { key: b(&[0x80]) }, None),
            normal(
                KvCommand::Cas {
                    key: b(b"k"),
                    expected: None,
                    value: Some(b(b"new")),
                },
                id.clone(),
            ),
            normal(
                KvCommand::Cas {
                    key: b(b"k"),
                    expected: Some(b(b"old")),
                    value: None,
                },
                None,
            ),
            normal(
                KvCommand::Cas {
                    key: b(b"k"),
                    expected: Some(b(&[0xfe])),
                    value: Some(b(&[0xfd])),
                },
                id,
            ),
            entry(
                8,
                EntryKind::Normal,
                Bytes::from_static(b"\xff\xff not a command"),
            ),
            entry(
                9,
                EntryKind::Normal,
                Command {
                    request_id: None,
                    body: b(b"\xff\xff"),
                }
                .encode(),
            ),
            entry(10, EntryKind::Noop, Bytes::new()),
            entry(
                11,
                EntryKind::Membership,
                crate::raft::membership::encode_membership(&membership),
            ),
            entry(12, EntryKind::Membership, Bytes::from_static(b"\xff")),
        ];
        for entry in &entries {
            let mut out = Vec::new();
            write_entry(&mut out, entry);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                value_form(entry),
                "{entry:?}"
            );
        }
    }
}
