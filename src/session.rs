//! Client sessions: the replicated table that applies each client request at most once
//! (Raft thesis §6.3), bounded so that it can always be snapshotted and restored.
//!
//! Every command in the log is a [`Command`]: an optional client request id plus the state
//! machine's own bytes. [`Replicated`] remembers, per client, the sequence of its latest
//! applied request, the index it was applied at, and a record of its response, and keeps
//! the table in the snapshot, so a retried write is applied once even across a leader
//! change or a restart.
//!
//! # Bounds and eviction (deterministic at apply time)
//! Each bound is checked right after a request is applied, from replicated data only (log
//! indexes, client ids, record sizes), so every replica evicts the same sessions at the
//! same index. Sessions are ordered least-recently-used first by the index of their latest
//! applied request, ties by client id.
//!
//! | bound | what is evicted while it is exceeded |
//! |---|---|
//! | [`SessionLimits::records_max`] sessions holding a response record | the oldest session's record |
//! | [`SessionLimits::record_bytes_max`] bytes of records | the oldest session's record |
//! | [`SessionLimits::clients_max`] remembered clients | the oldest client, entirely |
//!
//! A session whose record was evicted still remembers the client's latest sequence. A retry
//! of that sequence is refused with [`Applied::Expired`] (the thesis's SESSION_EXPIRED):
//! it is not applied again, and the HTTP API answers `409 session_expired`. The same answer
//! goes to a retry whose record the state machine can no longer turn back into the first
//! outcome (see [`StateMachine::session_response`]). A request with a higher sequence is
//! applied normally and renews the session. Only a client evicted entirely, after
//! `clients_max` more recent clients, is forgotten: a retry from it is indistinguishable
//! from a new client's first request (clients name themselves; nothing registers them).
//!
//! # A reused request id
//! Beside the record, a session keeps a fingerprint of the command it answered for (XXH3-64
//! of the state machine's bytes, seed 0: a specified hash, the same on every node, platform
//! and version). A request with the client's latest sequence but another command is not a
//! retry: answering it with the first command's outcome would tell the client a write was
//! applied that never was. It is refused with [`Applied::Reused`] (`422 request_id_reused`)
//! and not applied. Sessions read from a snapshot older than version 3 have no fingerprint
//! and answer every request with their sequence as a retry, as before.
//!
//! # Snapshot format
//! ```text
//! version 3 = | magic u64 = SESSIONS_FORMAT_3 | session count u64 |
//!             { | client len u64 | client | sequence u64 | last_index u64 |
//!               | has record u8 | (record len u64 | record)? |
//!               | has fingerprint u8 | fingerprint u64? | } * count |
//!             | state machine snapshot |
//! version 2 = | magic u64 = SESSIONS_FORMAT_2 | session count u64 |
//!             { | client len u64 | client | sequence u64 | last_index u64 |
//!               | has record u8 | (record len u64 | record)? | } * count |
//!             | state machine snapshot |
//! version 1 = | sessions len u64 | bincode(BTreeMap<client, {sequence, response, last_index}>) |
//!             | state machine snapshot |
//! ```
//! Little endian; the snapshot file adds its own framing and checksums. Every item is
//! length-prefixed and read as it arrives (no per-item cap), so restore accepts whatever
//! `write_to` wrote. Versions 2 (before issue 13) and 1 (before issue 11) are still read:
//! version 1's first word, a byte length, never equals a magic.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read, Write};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::state_machine::{
    invalid_data, read_exactly, read_len_prefixed, read_u64, read_u8, write_len_prefixed,
    SnapshotSource, StateMachine,
};

/// First word of a version 2 session snapshot: "RLSESS02" read as a little-endian u64.
const SESSIONS_FORMAT_2: u64 = u64::from_le_bytes(*b"RLSESS02");

/// First word of a version 3 session snapshot (sessions carry a command fingerprint).
const SESSIONS_FORMAT_3: u64 = u64::from_le_bytes(*b"RLSESS03");

/// The fingerprint a session keeps of the command it answered for: XXH3-64 with seed 0,
/// which is specified byte for byte, so every replica computes the same value.
pub fn command_fingerprint(body: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(body)
}

/// Longest client id a `Request-Id` may carry.
pub const CLIENT_ID_BYTES_MAX: usize = 256;

/// A client's request id: `Request-Id: <client-id>:<sequence>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RequestId {
    /// The client, as the client names itself.
    pub client: String,
    /// Increases with each new request of the client; a retry reuses it.
    pub sequence: u64,
}

impl RequestId {
    /// Parses `client:sequence`; `None` when malformed.
    pub fn parse(text: &str) -> Option<RequestId> {
        let (client, sequence) = text.rsplit_once(':')?;
        if client.is_empty() || client.len() > CLIENT_ID_BYTES_MAX {
            return None;
        }
        Some(RequestId {
            client: client.to_string(),
            sequence: sequence.parse().ok()?,
        })
    }
}

/// What the log stores for every client write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// Set when the client sent `Request-Id`.
    pub request_id: Option<RequestId>,
    /// The state machine's command.
    pub body: Bytes,
}

impl Command {
    /// The bytes stored in the log.
    pub fn encode(&self) -> Vec<u8> {
        crate::kv::encode(self)
    }

    /// Decodes log bytes.
    pub fn decode(bytes: &[u8]) -> Option<Command> {
        crate::kv::decode(bytes)
    }
}

/// The outcome of applying one log command. Serializable: a leader sends it back to the
/// follower that forwarded the write (`transport::codec::ForwardReply`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Applied {
    /// Applied now; the state machine's response.
    Fresh(Vec<u8>),
    /// A retry of a request already applied: the first outcome and the index it was
    /// applied at; not applied again.
    Duplicate {
        /// The first outcome.
        response: Vec<u8>,
        /// Where the first attempt was applied.
        index: u64,
    },
    /// A request id older than the client's latest: its outcome is no longer known.
    Stale,
    /// The client's latest request id with a different command: not a retry, and not
    /// applied (the id answers for the command applied at `index`).
    Reused {
        /// Where the command that owns the id was applied.
        index: u64,
    },
    /// A retry of the client's latest request whose outcome is no longer known (its record
    /// was evicted, or can no longer be rebuilt exactly): not applied again.
    Expired {
        /// Where the first attempt was applied.
        index: u64,
    },
    /// The entry was not a command (decoding failed): nothing applied.
    Invalid,
}

/// How large the session table may grow; part of the replicated rules, so every replica of
/// a cluster must use the same limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionLimits {
    /// Sessions that keep a response record.
    pub records_max: usize,
    /// Total bytes of response records.
    pub record_bytes_max: u64,
    /// Clients remembered at all (with or without a record); each costs at most
    /// [`CLIENT_ID_BYTES_MAX`] plus a few words.
    pub clients_max: usize,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            records_max: 10_000,
            record_bytes_max: 64 << 20,
            clients_max: 100_000,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Session {
    sequence: u64,
    /// Index of the client's latest applied request.
    last_index: u64,
    /// `None` once evicted: the client is remembered, its latest outcome is not.
    record: Option<Bytes>,
    /// [`command_fingerprint`] of the latest request's command; `None` for sessions read
    /// from a snapshot older than version 3.
    fingerprint: Option<u64>,
}

/// The bounded session table; every change keeps the recency indexes and byte count exact.
#[derive(Clone, Debug)]
struct SessionTable {
    limits: SessionLimits,
    /// Persistent map: a snapshot freezes it in O(1) on the apply thread.
    sessions: imbl::OrdMap<String, Session>,
    /// Invariant: exactly the `(last_index, client)` of every session.
    by_recency: BTreeSet<(u64, String)>,
    /// Invariant: exactly the `(last_index, client)` of every session holding a record.
    records_by_recency: BTreeSet<(u64, String)>,
    /// Invariant: the sum of the lengths of all records.
    record_bytes: u64,
}

impl SessionTable {
    fn new(limits: SessionLimits) -> SessionTable {
        SessionTable {
            limits,
            sessions: imbl::OrdMap::new(),
            by_recency: BTreeSet::new(),
            records_by_recency: BTreeSet::new(),
            record_bytes: 0,
        }
    }

    /// Replaces `client`'s session, then evicts down to the limits.
    fn remember(&mut self, client: String, session: Session) {
        self.insert(client, session);
        self.enforce_limits();
    }

    /// Replaces `client`'s session without evicting.
    fn insert(&mut self, client: String, mut session: Session) {
        self.forget(&client);
        if let Some(record) = &session.record {
            // A record alone over the byte budget would evict every other record and then
            // itself: keep the client without it.
            if record.len() as u64 > self.limits.record_bytes_max {
                session.record = None;
            }
        }
        self.by_recency.insert((session.last_index, client.clone()));
        if let Some(record) = &session.record {
            self.records_by_recency
                .insert((session.last_index, client.clone()));
            self.record_bytes += record.len() as u64;
        }
        self.sessions.insert(client, session);
    }

    fn forget(&mut self, client: &str) {
        if let Some(old) = self.sessions.remove(client) {
            let key = (old.last_index, client.to_string());
            self.by_recency.remove(&key);
            if let Some(record) = old.record {
                self.records_by_recency.remove(&key);
                self.record_bytes -= record.len() as u64;
            }
        }
    }

    /// Evicts least-recently-used first (by `(last_index, client)`), as the module docs say.
    fn enforce_limits(&mut self) {
        while self.records_by_recency.len() > self.limits.records_max
            || self.record_bytes > self.limits.record_bytes_max
        {
            let Some((_, client)) = self.records_by_recency.pop_first() else {
                break;
            };
            if let Some(session) = self.sessions.get_mut(&client) {
                if let Some(record) = session.record.take() {
                    self.record_bytes -= record.len() as u64;
                }
            }
        }
        while self.by_recency.len() > self.limits.clients_max {
            let Some((_, client)) = self.by_recency.first().cloned() else {
                break;
            };
            self.forget(&client);
        }
    }
}

/// A state machine plus the replicated table of client sessions.
pub struct Replicated<S: StateMachine> {
    /// The user's state machine.
    pub state: S,
    table: SessionTable,
}

impl<S: StateMachine> Replicated<S> {
    /// Wraps `state` with an empty session table and the default limits.
    pub fn new(state: S) -> Self {
        Self::with_limits(state, SessionLimits::default())
    }

    /// Wraps `state` with an empty session table bounded by `limits`.
    pub fn with_limits(state: S, limits: SessionLimits) -> Self {
        Replicated {
            state,
            table: SessionTable::new(limits),
        }
    }

    /// Applies the log entry at `index`.
    pub fn apply(&mut self, index: u64, entry: &[u8]) -> Applied {
        let Some(command) = Command::decode(entry) else {
            return Applied::Invalid;
        };
        let Some(request_id) = command.request_id else {
            return Applied::Fresh(self.state.apply(index, &command.body));
        };
        let fingerprint = command_fingerprint(&command.body);
        if let Some(session) = self.table.sessions.get(&request_id.client) {
            if request_id.sequence == session.sequence
                && session.fingerprint.is_some_and(|f| f != fingerprint)
            {
                return Applied::Reused {
                    index: session.last_index,
                };
            }
            if request_id.sequence == session.sequence {
                // Raft thesis §6.3: answer a retry from the session, never apply it twice;
                // when the first outcome is no longer known, say so (SESSION_EXPIRED).
                let response = session
                    .record
                    .as_ref()
                    .and_then(|record| self.state.session_response(record));
                return match response {
                    Some(response) => Applied::Duplicate {
                        response,
                        index: session.last_index,
                    },
                    None => Applied::Expired {
                        index: session.last_index,
                    },
                };
            }
            if request_id.sequence < session.sequence {
                return Applied::Stale;
            }
        }
        let response = self.state.apply(index, &command.body);
        let record = self.state.session_record(Some(&command.body), &response);
        self.table.remember(
            request_id.client,
            Session {
                sequence: request_id.sequence,
                last_index: index,
                record: Some(Bytes::from(record)),
                fingerprint: Some(fingerprint),
            },
        );
        Applied::Fresh(response)
    }

    /// Number of remembered clients (with or without a response record).
    pub fn session_count(&self) -> usize {
        self.table.sessions.len()
    }

    /// Number of sessions that still hold a response record.
    pub fn session_record_count(&self) -> usize {
        self.table.records_by_recency.len()
    }

    /// Total bytes of the response records held.
    pub fn session_record_bytes(&self) -> u64 {
        self.table.record_bytes
    }

    /// Whether `other` remembers exactly the same sessions (clients, sequences, indexes and
    /// records); used to check that a restored table equals the one snapshotted.
    pub fn same_sessions(&self, other: &Replicated<S>) -> bool {
        self.table.sessions == other.table.sessions
            && self.table.by_recency == other.table.by_recency
            && self.table.records_by_recency == other.table.records_by_recency
            && self.table.record_bytes == other.table.record_bytes
    }

    /// A frozen view of sessions and state for a snapshot.
    pub fn snapshot(&self) -> ReplicatedSnapshot {
        ReplicatedSnapshot {
            sessions: self.table.sessions.clone(),
            state: self.state.snapshot(),
        }
    }

    /// Restores sessions and state from a stream written by [`ReplicatedSnapshot::write_to`]
    /// (or in the version 1 format, see the module docs).
    pub fn restore(&mut self, reader: &mut dyn Read) -> io::Result<()> {
        let first_word = read_u64(reader)?;
        let sessions = if first_word == SESSIONS_FORMAT_3 || first_word == SESSIONS_FORMAT_2 {
            let sessions = read_sessions(reader, first_word == SESSIONS_FORMAT_3)?;
            self.state.restore(reader)?;
            sessions
        } else {
            let legacy = read_legacy_sessions(reader, first_word)?;
            self.state.restore(reader)?;
            legacy
                .into_iter()
                .map(|(client, s)| {
                    let record = self.state.session_record(None, &s.response);
                    let session = Session {
                        sequence: s.sequence,
                        last_index: s.last_index,
                        record: Some(Bytes::from(record)),
                        fingerprint: None,
                    };
                    (client, session)
                })
                .collect()
        };
        // The state machine swapped its state in only once its whole stream was read, and
        // the table is swapped only after that, so a failed restore changes nothing. Version
        // 1 tables were unbounded and are evicted down to the limits as a whole; a version 2
        // table written under the same limits already fits and comes back unchanged.
        let mut table = SessionTable::new(self.table.limits);
        for (client, session) in sessions {
            table.insert(client, session);
        }
        table.enforce_limits();
        self.table = table;
        Ok(())
    }
}

/// Reads the sessions of a version 3 (`with_fingerprints`) or version 2 snapshot.
fn read_sessions(
    reader: &mut dyn Read,
    with_fingerprints: bool,
) -> io::Result<Vec<(String, Session)>> {
    let count = read_u64(reader)?;
    // No capacity from `count`: a damaged count must not allocate; the stream ends first.
    let mut sessions = Vec::new();
    for _ in 0..count {
        let client = String::from_utf8(read_len_prefixed(reader, "a session's client id")?)
            .map_err(|_| invalid_data("snapshot session client id is not UTF-8"))?;
        let sequence = read_u64(reader)?;
        let last_index = read_u64(reader)?;
        let record = match read_u8(reader)? {
            0 => None,
            1 => Some(Bytes::from(read_len_prefixed(
                reader,
                "a session's response record",
            )?)),
            other => {
                return Err(invalid_data(format!(
                "snapshot session of client {client:?} has record flag {other} (0 or 1 expected)"
            )))
            }
        };
        let fingerprint = if !with_fingerprints {
            None
        } else {
            match read_u8(reader)? {
                0 => None,
                1 => Some(read_u64(reader)?),
                other => {
                    return Err(invalid_data(format!(
                        "snapshot session of client {client:?} has fingerprint flag {other} \
                         (0 or 1 expected)"
                    )))
                }
            }
        };
        sessions.push((
            client,
            Session {
                sequence,
                last_index,
                record,
                fingerprint,
            },
        ));
    }
    Ok(sessions)
}

#[derive(Deserialize)]
struct LegacySession {
    sequence: u64,
    response: Vec<u8>,
    last_index: u64,
}

fn read_legacy_sessions(
    reader: &mut dyn Read,
    len: u64,
) -> io::Result<BTreeMap<String, LegacySession>> {
    let bytes = read_exactly(reader, len, "the version 1 session table")?;
    crate::kv::decode(&bytes)
        .ok_or_else(|| invalid_data("snapshot session table (version 1) does not decode"))
}

/// A frozen [`Replicated`] view.
pub struct ReplicatedSnapshot {
    sessions: imbl::OrdMap<String, Session>,
    state: Box<dyn SnapshotSource>,
}

impl ReplicatedSnapshot {
    /// Streams sessions then state, in the version 3 format of the module docs.
    pub fn write_to(&self, writer: &mut dyn Write) -> io::Result<()> {
        writer.write_all(&SESSIONS_FORMAT_3.to_le_bytes())?;
        writer.write_all(&(self.sessions.len() as u64).to_le_bytes())?;
        for (client, session) in self.sessions.iter() {
            write_len_prefixed(writer, client.as_bytes())?;
            writer.write_all(&session.sequence.to_le_bytes())?;
            writer.write_all(&session.last_index.to_le_bytes())?;
            match &session.record {
                None => writer.write_all(&[0])?,
                Some(record) => {
                    writer.write_all(&[1])?;
                    write_len_prefixed(writer, record)?;
                }
            }
            match session.fingerprint {
                None => writer.write_all(&[0])?,
                Some(fingerprint) => {
                    writer.write_all(&[1])?;
                    writer.write_all(&fingerprint.to_le_bytes())?;
                }
            }
        }
        self.state.write_to(writer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::{KvCommand, KvResponse, KvStore};

    use crate::kv::tests::put;

    fn cas(key: &str, expected: &[u8], value: &[u8]) -> Vec<u8> {
        crate::kv::tests::cas(key, Some(expected), Some(value))
    }

    fn command(request_id: Option<(&str, u64)>, body: Vec<u8>) -> Vec<u8> {
        Command {
            request_id: request_id.map(|(c, s)| RequestId {
                client: c.to_string(),
                sequence: s,
            }),
            body: body.into(),
        }
        .encode()
    }

    fn response(applied: Applied) -> KvResponse {
        match applied {
            Applied::Fresh(r) | Applied::Duplicate { response: r, .. } => {
                KvResponse::decode(&r).expect("decodes")
            }
            other => panic!("expected a response, got {other:?}"),
        }
    }

    fn round_trip(sm: &Replicated<KvStore>) -> Replicated<KvStore> {
        let mut bytes = Vec::new();
        sm.snapshot().write_to(&mut bytes).unwrap();
        let mut restored = Replicated::with_limits(KvStore::new(), sm.table.limits);
        restored.restore(&mut bytes.as_slice()).unwrap();
        restored
    }

    #[test]
    fn retried_request_id_is_applied_once_with_first_outcome() {
        let mut sm = Replicated::new(KvStore::new());
        let first = sm.apply(1, &command(Some(("c1", 7)), put("k", "one")));
        assert!(matches!(first, Applied::Fresh(_)));
        sm.apply(2, &command(None, put("k", "two")));
        // The retry must not overwrite "two" with "one" again.
        let retry = sm.apply(3, &command(Some(("c1", 7)), put("k", "one")));
        assert_eq!(
            retry,
            Applied::Duplicate {
                response: KvResponse::Put.encode(),
                index: 1
            }
        );
        assert_eq!(sm.state.get(b"k"), Some(Bytes::from_static(b"two")));
        assert_eq!(
            sm.apply(4, &command(Some(("c1", 6)), put("k", "old"))),
            Applied::Stale
        );
        assert!(matches!(
            response(sm.apply(5, &command(Some(("c1", 8)), put("k", "three")))),
            KvResponse::Put
        ));
        assert_eq!(sm.state.get(b"k"), Some(Bytes::from_static(b"three")));
    }

    #[test]
    fn reused_request_id_with_another_command_is_not_answered_as_a_retry() {
        let mut sm = Replicated::new(KvStore::new());
        sm.apply(1, &command(Some(("c1", 7)), put("k", "one")));
        // Same id, another command: answering "Put ok at index 1" would tell the client
        // its second write was applied when it was not.
        let reused = sm.apply(2, &command(Some(("c1", 7)), put("other", "two")));
        assert_eq!(reused, Applied::Reused { index: 1 });
        assert_eq!(sm.state.get(b"other"), None);
        // The true retry is still answered with the first outcome, after a snapshot too.
        let mut restored = round_trip(&sm);
        for sm in [&mut sm, &mut restored] {
            assert!(matches!(
                sm.apply(3, &command(Some(("c1", 7)), put("k", "one"))),
                Applied::Duplicate { index: 1, .. }
            ));
            assert_eq!(
                sm.apply(4, &command(Some(("c1", 7)), put("k", "other"))),
                Applied::Reused { index: 1 }
            );
        }
    }

    #[test]
    fn version_2_snapshot_restores_sessions_without_fingerprints() {
        // | magic | count | client len | client | sequence | last_index | record | state |
        let response = KvResponse::Put.encode();
        let record = KvStore::new().session_record(Some(&put("x", "z")), &response);
        let mut v2 = Vec::new();
        v2.extend_from_slice(&SESSIONS_FORMAT_2.to_le_bytes());
        v2.extend_from_slice(&1u64.to_le_bytes());
        v2.extend_from_slice(&1u64.to_le_bytes());
        v2.extend_from_slice(b"c");
        v2.extend_from_slice(&4u64.to_le_bytes());
        v2.extend_from_slice(&9u64.to_le_bytes());
        v2.push(1);
        v2.extend_from_slice(&(record.len() as u64).to_le_bytes());
        v2.extend_from_slice(&record);
        // KvStore: | count u64 | { | key_len u32 | value_len u32 | key | value | } * count |
        v2.extend_from_slice(&1u64.to_le_bytes());
        v2.extend_from_slice(&1u32.to_le_bytes());
        v2.extend_from_slice(&1u32.to_le_bytes());
        v2.extend_from_slice(b"kv");

        let mut sm = Replicated::new(KvStore::new());
        sm.restore(&mut v2.as_slice()).unwrap();
        assert_eq!(sm.state.get(b"k"), Some(Bytes::from_static(b"v")));
        // No fingerprint: the old rule, a retry by id alone.
        assert_eq!(
            sm.apply(10, &command(Some(("c", 4)), put("x", "y"))),
            Applied::Duplicate { response, index: 9 }
        );
        assert_eq!(sm.state.get(b"x"), None);
        // Written again, it is version 3 and reads back the same.
        let again = round_trip(&sm);
        assert!(again.same_sessions(&sm));
        // The client's next request gets a fingerprint.
        sm.apply(11, &command(Some(("c", 5)), put("k", "w")));
        assert_eq!(
            sm.apply(12, &command(Some(("c", 5)), put("k", "other"))),
            Applied::Reused { index: 11 }
        );
    }

    #[test]
    fn command_fingerprint_is_xxh3_64_with_seed_zero() {
        // Replicated state: the value must never change between versions or platforms.
        assert_eq!(command_fingerprint(b""), 0x2d06800538d394c2);
        assert_eq!(
            command_fingerprint(b"raftlog"),
            xxhash_rust::xxh3::xxh3_64_with_seed(b"raftlog", 0)
        );
    }

    #[test]
    fn snapshot_round_trip_keeps_state_and_sessions() {
        let mut sm = Replicated::new(KvStore::new());
        for i in 0..1000u64 {
            sm.apply(
                i + 1,
                &command(Some(("c", i)), put(&format!("k{i}"), &format!("v{i}"))),
            );
        }
        let frozen = sm.snapshot();
        // Applying after the freeze must not leak into the snapshot.
        sm.apply(1001, &command(None, put("late", "x")));
        let mut bytes = Vec::new();
        frozen.write_to(&mut bytes).unwrap();

        let mut restored = Replicated::new(KvStore::new());
        restored.restore(&mut bytes.as_slice()).unwrap();
        assert_eq!(restored.state.len(), 1000);
        assert_eq!(restored.state.get(b"late"), None);
        assert_eq!(
            restored.apply(2000, &command(Some(("c", 999)), put("k999", "v999"))),
            Applied::Duplicate {
                response: KvResponse::Put.encode(),
                index: 1000
            }
        );
    }

    #[test]
    fn restore_rejects_truncated_and_garbage_streams() {
        let mut sm = Replicated::new(KvStore::new());
        sm.apply(1, &command(Some(("c", 1)), put("k", "v")));
        let mut bytes = Vec::new();
        sm.snapshot().write_to(&mut bytes).unwrap();
        for cut in 0..bytes.len() {
            let mut target = Replicated::new(KvStore::new());
            assert!(
                target.restore(&mut &bytes[..cut]).is_err(),
                "a stream cut at {cut} of {} bytes restored",
                bytes.len()
            );
        }
        let garbage = [0xffu8; 64];
        assert!(Replicated::new(KvStore::new())
            .restore(&mut &garbage[..])
            .is_err());
    }

    #[test]
    fn request_id_parses_client_and_sequence() {
        assert_eq!(
            RequestId::parse("client-a:42"),
            Some(RequestId {
                client: "client-a".into(),
                sequence: 42
            })
        );
        assert_eq!(
            RequestId::parse("a:b:3").map(|r| r.client),
            Some("a:b".into())
        );
        assert_eq!(RequestId::parse("nocolon"), None);
        assert_eq!(RequestId::parse(":3"), None);
        assert_eq!(RequestId::parse("c:-1"), None);
    }

    /// Issue 11's reproduction, in memory: 70 failed CAS answers about a 1 MiB value.
    #[test]
    fn failed_cas_sessions_on_a_large_value_keep_the_snapshot_small() {
        let mut sm = Replicated::new(KvStore::new());
        let big = "b".repeat(1 << 20);
        sm.apply(1, &command(None, put("big", &big)));
        for client in 0..70u64 {
            let id = format!("c{client}");
            sm.apply(
                client + 2,
                &command(Some((&id, 1)), cas("big", b"nope", b"x")),
            );
        }
        let mut bytes = Vec::new();
        sm.snapshot().write_to(&mut bytes).unwrap();
        assert!(
            bytes.len() < (1 << 20) + 16 * 1024,
            "snapshot of a 1 MiB value and 70 sessions takes {} bytes",
            bytes.len()
        );
        let mut restored = round_trip(&sm);
        assert!(restored.same_sessions(&sm));
        match restored.apply(100, &command(Some(("c0", 1)), cas("big", b"nope", b"x"))) {
            Applied::Duplicate { response, index } => {
                assert_eq!(index, 2);
                assert_eq!(
                    KvResponse::decode(&response),
                    Some(KvResponse::Cas {
                        succeeded: false,
                        current: Some(Bytes::from(big))
                    })
                );
            }
            other => panic!("retry answered {other:?}"),
        }
    }

    #[test]
    fn retry_of_a_large_cas_after_the_key_changed_is_expired_not_reapplied() {
        let mut sm = Replicated::new(KvStore::new());
        let big = "b".repeat(1000);
        sm.apply(1, &command(None, put("k", &big)));
        sm.apply(2, &command(Some(("c", 1)), cas("k", b"nope", b"new")));
        sm.apply(3, &command(None, put("k", &big)));
        assert_eq!(
            sm.apply(4, &command(Some(("c", 1)), cas("k", b"nope", b"new"))),
            Applied::Expired { index: 2 }
        );
        assert_eq!(sm.state.get(b"k"), Some(Bytes::from(big)));
    }

    #[test]
    fn record_count_bound_expires_the_least_recently_used_session_first() {
        let limits = SessionLimits {
            records_max: 2,
            ..SessionLimits::default()
        };
        let mut sm = Replicated::with_limits(KvStore::new(), limits);
        sm.apply(1, &command(Some(("a", 1)), put("a", "1")));
        sm.apply(2, &command(Some(("b", 1)), put("b", "1")));
        sm.apply(3, &command(Some(("c", 1)), put("c", "1")));
        assert_eq!((sm.session_count(), sm.session_record_count()), (3, 2));
        // Raft thesis §6.3: the evicted session's retry is refused, not applied again.
        assert_eq!(
            sm.apply(4, &command(Some(("a", 1)), put("a", "1"))),
            Applied::Expired { index: 1 }
        );
        assert_eq!(sm.state.get(b"a"), Some(Bytes::from_static(b"1")));
        assert!(matches!(
            sm.apply(5, &command(Some(("b", 1)), put("b", "1"))),
            Applied::Duplicate { index: 2, .. }
        ));
        // The client's next request is applied and renews its session.
        assert!(matches!(
            sm.apply(6, &command(Some(("a", 2)), put("a", "2"))),
            Applied::Fresh(_)
        ));
        assert!(matches!(
            sm.apply(7, &command(Some(("a", 2)), put("a", "2"))),
            Applied::Duplicate { index: 6, .. }
        ));
        assert_eq!(
            sm.apply(8, &command(Some(("b", 1)), put("b", "1"))),
            Applied::Expired { index: 2 }
        );
    }

    #[test]
    fn record_byte_bound_evicts_the_oldest_records_until_the_table_fits() {
        let mut sm = Replicated::new(KvStore::new());
        let mut probe = KvStore::new();
        let small = put("k", "v");
        let small_response = probe.apply(1, &small);
        let record_len = probe.session_record(Some(&small), &small_response).len() as u64;
        let limits = SessionLimits {
            record_bytes_max: 3 * record_len,
            ..SessionLimits::default()
        };
        sm = Replicated::with_limits(std::mem::take(&mut sm.state), limits);
        for i in 1..=5u64 {
            sm.apply(i, &command(Some((&format!("c{i}"), 1)), put("k", "v")));
        }
        assert_eq!(sm.session_record_count(), 3);
        assert_eq!(sm.session_record_bytes(), 3 * record_len);
        for (client, expired) in [("c1", true), ("c2", true), ("c3", false), ("c5", false)] {
            let retry = sm.apply(10, &command(Some((client, 1)), put("k", "v")));
            assert_eq!(
                matches!(retry, Applied::Expired { .. }),
                expired,
                "{client}: {retry:?}"
            );
        }
    }

    #[test]
    fn client_count_bound_forgets_the_least_recently_used_client() {
        let limits = SessionLimits {
            clients_max: 2,
            ..SessionLimits::default()
        };
        let mut sm = Replicated::with_limits(KvStore::new(), limits);
        sm.apply(1, &command(Some(("a", 5)), put("a", "1")));
        sm.apply(2, &command(Some(("b", 5)), put("b", "1")));
        sm.apply(3, &command(Some(("a", 6)), put("a", "2")));
        sm.apply(4, &command(Some(("c", 5)), put("c", "1")));
        assert_eq!(sm.session_count(), 2);
        // "b" was the least recently used: forgotten, its old sequence is new again.
        assert!(matches!(
            sm.apply(5, &command(Some(("b", 1)), put("b", "x"))),
            Applied::Fresh(_)
        ));
        assert_eq!(
            sm.apply(6, &command(Some(("c", 4)), put("c", "x"))),
            Applied::Stale
        );
    }

    #[derive(Serialize)]
    struct LegacySessionWrite {
        sequence: u64,
        response: Vec<u8>,
        last_index: u64,
    }

    #[test]
    fn version_1_snapshot_restores_with_its_sessions() {
        let mut legacy = BTreeMap::new();
        legacy.insert(
            "c".to_string(),
            LegacySessionWrite {
                sequence: 3,
                response: KvResponse::Delete { deleted: true }.encode(),
                last_index: 9,
            },
        );
        let sessions = crate::kv::encode(&legacy);
        let mut v1 = Vec::new();
        v1.extend_from_slice(&(sessions.len() as u64).to_le_bytes());
        v1.extend_from_slice(&sessions);
        // | count u64 | { | key_len u32 | value_len u32 | key | value | } * count |
        v1.extend_from_slice(&1u64.to_le_bytes());
        v1.extend_from_slice(&1u32.to_le_bytes());
        v1.extend_from_slice(&1u32.to_le_bytes());
        v1.extend_from_slice(b"kv");

        let mut sm = Replicated::new(KvStore::new());
        sm.restore(&mut v1.as_slice()).unwrap();
        assert_eq!(sm.state.get(b"k"), Some(Bytes::from_static(b"v")));
        let delete = KvCommand::Delete {
            key: Bytes::from_static(b"k"),
        }
        .encode();
        assert_eq!(
            sm.apply(10, &command(Some(("c", 3)), delete)),
            Applied::Duplicate {
                response: KvResponse::Delete { deleted: true }.encode(),
                index: 9
            }
        );
    }

    mod reachable_states {
        use super::*;
        use proptest::prelude::*;
        use std::collections::HashMap;

        /// Value sizes around the interesting edges: tiny, either side of the inline
        /// threshold for CAS answers, and the API's default value limit.
        const VALUE_LENS: [usize; 4] = [1, 256, 257, 1 << 20];

        #[derive(Clone, Debug)]
        enum Op {
            Put {
                key: u8,
                value: (u8, usize),
            },
            Delete {
                key: u8,
            },
            Cas {
                key: u8,
                expected: Option<(u8, usize)>,
                value: Option<(u8, usize)>,
            },
        }

        /// How a command uses a client's session: no id, a retry of its latest, its next
        /// request, or an older one.
        #[derive(Clone, Copy, Debug)]
        enum Session {
            None,
            Retry(u8),
            Next(u8),
            Older(u8),
        }

        fn value() -> impl Strategy<Value = (u8, usize)> {
            (
                0u8..2,
                prop_oneof![6 => Just(0usize), 1 => Just(1), 1 => Just(2), 1 => Just(3)],
            )
        }

        fn op() -> impl Strategy<Value = Op> {
            let key = 0u8..3;
            prop_oneof![
                (key.clone(), value()).prop_map(|(key, value)| Op::Put { key, value }),
                key.clone().prop_map(|key| Op::Delete { key }),
                (
                    key,
                    proptest::option::of(value()),
                    proptest::option::of(value())
                )
                    .prop_map(|(key, expected, value)| Op::Cas {
                        key,
                        expected,
                        value
                    }),
            ]
        }

        fn session() -> impl Strategy<Value = Session> {
            let client = 0u8..12;
            prop_oneof![
                1 => Just(Session::None),
                2 => client.clone().prop_map(Session::Retry),
                3 => client.clone().prop_map(Session::Next),
                1 => client.prop_map(Session::Older),
            ]
        }

        fn limits() -> impl Strategy<Value = SessionLimits> {
            prop_oneof![
                Just(SessionLimits::default()),
                (0usize..4, 0u64..(3 << 20), 1usize..8).prop_map(
                    |(records_max, record_bytes_max, clients_max)| SessionLimits {
                        records_max,
                        record_bytes_max,
                        clients_max,
                    }
                ),
            ]
        }

        fn bytes_of((fill, len): (u8, usize)) -> Bytes {
            Bytes::from(vec![b'a' + fill; VALUE_LENS[len]])
        }

        /// Turns the generated ops into log entries, tracking each client's sequence.
        fn entries(ops: &[(Op, Session)]) -> Vec<Vec<u8>> {
            let mut sequences: HashMap<u8, u64> = HashMap::new();
            ops.iter()
                .map(|(op, session)| {
                    let key = |k: &u8| Bytes::from(vec![b'k', *k]);
                    let body = match op {
                        Op::Put { key: k, value } => KvCommand::Put {
                            key: key(k),
                            value: bytes_of(*value),
                        },
                        Op::Delete { key: k } => KvCommand::Delete { key: key(k) },
                        Op::Cas {
                            key: k,
                            expected,
                            value,
                        } => KvCommand::Cas {
                            key: key(k),
                            expected: expected.map(bytes_of),
                            value: value.map(bytes_of),
                        },
                    };
                    let request_id = match *session {
                        Session::None => None,
                        Session::Retry(c) | Session::Next(c) | Session::Older(c) => {
                            let latest = sequences.entry(c).or_insert(10);
                            match session {
                                Session::Next(_) => *latest += 1,
                                Session::Older(_) => *latest -= 1,
                                _ => {}
                            }
                            Some(RequestId {
                                client: format!("client-{c}"),
                                sequence: *latest,
                            })
                        }
                    };
                    Command {
                        request_id,
                        body: body.encode().into(),
                    }
                    .encode()
                })
                .collect()
        }

        fn assert_within_limits(sm: &Replicated<KvStore>) {
            let limits = sm.table.limits;
            assert!(sm.session_record_count() <= limits.records_max);
            assert!(sm.session_record_bytes() <= limits.record_bytes_max);
            assert!(sm.session_count() <= limits.clients_max);
            let counted: u64 = sm
                .table
                .sessions
                .values()
                .filter_map(|s| s.record.as_ref().map(|r| r.len() as u64))
                .sum();
            assert_eq!(counted, sm.session_record_bytes());
            assert_eq!(sm.table.by_recency.len(), sm.session_count());
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(48))]

            /// Any state the apply path reaches snapshots and restores to an equal state,
            /// and the two answer every later command identically.
            #[test]
            fn any_reachable_state_snapshots_and_restores_to_an_equal_state(
                ops in proptest::collection::vec((op(), session()), 1..60),
                split in any::<proptest::sample::Index>(),
                limits in limits(),
            ) {
                let entries = entries(&ops);
                let split = split.index(entries.len() + 1);
                let mut original = Replicated::with_limits(KvStore::new(), limits);
                for (i, entry) in entries[..split].iter().enumerate() {
                    original.apply(i as u64 + 1, entry);
                    assert_within_limits(&original);
                }
                let mut restored = round_trip(&original);
                prop_assert_eq!(&restored.state, &original.state);
                prop_assert!(restored.same_sessions(&original));
                for (i, entry) in entries.iter().enumerate().skip(split) {
                    let index = i as u64 + 1;
                    prop_assert_eq!(original.apply(index, entry), restored.apply(index, entry));
                    assert_within_limits(&original);
                }
                prop_assert_eq!(&restored.state, &original.state);
                prop_assert!(restored.same_sessions(&original));
                let again = round_trip(&restored);
                prop_assert_eq!(&again.state, &original.state);
                prop_assert!(again.same_sessions(&original));
            }
        }
    }
}
