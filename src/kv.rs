//! The replicated state machine: the [`StateMachine`] trait, the key-value store that
//! implements it, and the session table that makes client retries idempotent.
//!
//! Every command in the log is a [`Command`]: an optional client request id plus the state
//! machine's own bytes. The [`Replicated`] wrapper applies it at most once per request id
//! (Raft thesis §6.3, client sessions) and keeps the sessions in the snapshot, so a retried
//! write is applied once even across a leader change or a restart.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// A deterministic state machine driven by the Raft log.
///
/// # To ensure correctness
/// - `apply` must be deterministic: the same commands in the same order give the same
///   state and responses on every node.
/// - `snapshot` must capture the state as of the last applied command, and the view it
///   returns must not change while later commands are applied (it is written by another
///   thread while `apply` carries on).
pub trait StateMachine: Send + Sync + 'static {
    /// Applies a committed command at `index` and returns the response for the client.
    fn apply(&mut self, index: u64, command: &[u8]) -> Vec<u8>;

    /// A frozen point-in-time view that can be written out on another thread.
    fn snapshot(&self) -> Box<dyn SnapshotSource>;

    /// Replaces the whole state with the one read from `reader` (written by `snapshot`).
    fn restore(&mut self, reader: &mut dyn Read) -> io::Result<()>;
}

/// A frozen state machine view being written as a snapshot.
pub trait SnapshotSource: Send {
    /// Streams the view to `writer`.
    fn write_to(&self, writer: &mut dyn Write) -> io::Result<()>;
}

/// What a client asked the key-value store to do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvCommand {
    /// Set `key` to `value`.
    Put {
        /// The key.
        key: Bytes,
        /// The value.
        value: Bytes,
    },
    /// Remove `key`.
    Delete {
        /// The key.
        key: Bytes,
    },
    /// Compare-and-swap: if the current value equals `expected` (`None`: absent), set it to
    /// `value` (`None`: delete).
    Cas {
        /// The key.
        key: Bytes,
        /// The value the key must have now.
        expected: Option<Bytes>,
        /// The value to store.
        value: Option<Bytes>,
    },
}

/// The key-value store's answer to a [`KvCommand`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvResponse {
    /// The put was applied.
    Put,
    /// The delete was applied; whether the key existed.
    Delete {
        /// Whether a value was removed.
        deleted: bool,
    },
    /// The CAS ran: whether it matched, and the value the key has now.
    Cas {
        /// Whether the swap happened.
        succeeded: bool,
        /// The value after the operation (the unchanged value on mismatch).
        current: Option<Bytes>,
    },
    /// The command could not be decoded (only possible with a foreign client writing raw
    /// entries; the state is unchanged).
    Invalid,
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Encoding plain data structures into a Vec cannot fail: bincode only errors on
    // writers that fail or on types serde cannot represent, neither of which occurs here.
    bincode::serde::encode_to_vec(value, bincode::config::standard())
        .unwrap_or_else(|e| panic!("bincode encoding of an in-memory value failed: {e}"))
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Option<T> {
    bincode::serde::decode_from_slice(bytes, bincode::config::standard())
        .ok()
        .map(|(value, _)| value)
}

impl KvCommand {
    /// The bytes stored in the log.
    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }

    /// Decodes log bytes; `None` if they are not a command.
    pub fn decode(bytes: &[u8]) -> Option<KvCommand> {
        decode(bytes)
    }
}

impl KvResponse {
    /// The bytes handed back through the apply path.
    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }

    /// Decodes a response produced by [`KvStore::apply`].
    pub fn decode(bytes: &[u8]) -> Option<KvResponse> {
        decode(bytes)
    }
}

/// The key-value state machine. Keys and values are bytes; the map is persistent
/// (structurally shared), so `snapshot` is O(1) and never pauses applying.
#[derive(Clone, Debug, Default)]
pub struct KvStore {
    map: imbl::OrdMap<Bytes, Bytes>,
}

impl KvStore {
    /// An empty store.
    pub fn new() -> KvStore {
        KvStore::default()
    }

    /// The value of `key`, if any.
    pub fn get(&self, key: &[u8]) -> Option<Bytes> {
        self.map.get(key).cloned()
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    fn execute(&mut self, command: KvCommand) -> KvResponse {
        match command {
            KvCommand::Put { key, value } => {
                self.map.insert(key, value);
                KvResponse::Put
            }
            KvCommand::Delete { key } => KvResponse::Delete {
                deleted: self.map.remove(&key).is_some(),
            },
            KvCommand::Cas {
                key,
                expected,
                value,
            } => {
                let current = self.map.get(&key).cloned();
                if current != expected {
                    return KvResponse::Cas {
                        succeeded: false,
                        current,
                    };
                }
                match &value {
                    Some(v) => {
                        self.map.insert(key, v.clone());
                    }
                    None => {
                        self.map.remove(&key);
                    }
                }
                KvResponse::Cas {
                    succeeded: true,
                    current: value,
                }
            }
        }
    }
}

// kv snapshot = | count u64 | { | key_len u32 | value_len u32 | key | value | } * count |
// (little endian; the snapshot file adds its own framing and checksums)
impl StateMachine for KvStore {
    fn apply(&mut self, _index: u64, command: &[u8]) -> Vec<u8> {
        match KvCommand::decode(command) {
            Some(command) => self.execute(command).encode(),
            None => KvResponse::Invalid.encode(),
        }
    }

    fn snapshot(&self) -> Box<dyn SnapshotSource> {
        Box::new(self.clone())
    }

    fn restore(&mut self, reader: &mut dyn Read) -> io::Result<()> {
        let count = read_u64(reader)?;
        let mut map = imbl::OrdMap::new();
        for _ in 0..count {
            let key_len = read_u32(reader)? as usize;
            let value_len = read_u32(reader)? as usize;
            let key = read_bytes(reader, key_len)?;
            let value = read_bytes(reader, value_len)?;
            map.insert(key, value);
        }
        self.map = map;
        Ok(())
    }
}

impl SnapshotSource for KvStore {
    fn write_to(&self, writer: &mut dyn Write) -> io::Result<()> {
        writer.write_all(&(self.map.len() as u64).to_le_bytes())?;
        for (key, value) in self.map.iter() {
            writer.write_all(&(key.len() as u32).to_le_bytes())?;
            writer.write_all(&(value.len() as u32).to_le_bytes())?;
            writer.write_all(key)?;
            writer.write_all(value)?;
        }
        Ok(())
    }
}

fn read_u64(reader: &mut dyn Read) -> io::Result<u64> {
    let mut buf = [0u8; 8];
    reader.read_exact(&mut buf)?;
    Ok(u64::from_le_bytes(buf))
}

fn read_u32(reader: &mut dyn Read) -> io::Result<u32> {
    let mut buf = [0u8; 4];
    reader.read_exact(&mut buf)?;
    Ok(u32::from_le_bytes(buf))
}

/// Largest key or value a snapshot may claim; guards `restore` against allocating a
/// garbage length from a damaged stream.
const SNAPSHOT_ITEM_BYTES_MAX: usize = 64 << 20;

fn read_bytes(reader: &mut dyn Read, len: usize) -> io::Result<Bytes> {
    if len > SNAPSHOT_ITEM_BYTES_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "snapshot item of {len} bytes exceeds the {SNAPSHOT_ITEM_BYTES_MAX}-byte limit"
            ),
        ));
    }
    let mut buf = vec![0u8; len];
    reader.read_exact(&mut buf)?;
    Ok(Bytes::from(buf))
}

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
        if client.is_empty() || client.len() > 256 {
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
        encode(self)
    }

    /// Decodes log bytes.
    pub fn decode(bytes: &[u8]) -> Option<Command> {
        decode(bytes)
    }
}

/// The outcome of applying one log command.
#[derive(Clone, Debug, PartialEq, Eq)]
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
    /// The entry was not a command (decoding failed): nothing applied.
    Invalid,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Session {
    sequence: u64,
    response: Vec<u8>,
    last_index: u64,
}

/// Sessions idle for this many log entries are forgotten, which bounds the table. The
/// rule depends only on log indexes, so every replica forgets the same sessions.
pub const SESSION_IDLE_ENTRIES_MAX: u64 = 1_000_000;

/// A state machine plus the replicated table of client sessions.
pub struct Replicated<S: StateMachine> {
    /// The user's state machine.
    pub state: S,
    sessions: BTreeMap<String, Session>,
}

impl<S: StateMachine> Replicated<S> {
    /// Wraps `state` with an empty session table.
    pub fn new(state: S) -> Self {
        Replicated {
            state,
            sessions: BTreeMap::new(),
        }
    }

    /// Applies the log entry at `index`.
    pub fn apply(&mut self, index: u64, entry: &[u8]) -> Applied {
        if index % 4096 == 0 {
            self.expire_sessions(index);
        }
        let Some(command) = Command::decode(entry) else {
            return Applied::Invalid;
        };
        let Some(request_id) = command.request_id else {
            return Applied::Fresh(self.state.apply(index, &command.body));
        };
        if let Some(session) = self.sessions.get(&request_id.client) {
            if request_id.sequence == session.sequence {
                return Applied::Duplicate {
                    response: session.response.clone(),
                    index: session.last_index,
                };
            }
            if request_id.sequence < session.sequence {
                return Applied::Stale;
            }
        }
        let response = self.state.apply(index, &command.body);
        self.sessions.insert(
            request_id.client,
            Session {
                sequence: request_id.sequence,
                response: response.clone(),
                last_index: index,
            },
        );
        Applied::Fresh(response)
    }

    fn expire_sessions(&mut self, index: u64) {
        let horizon = index.saturating_sub(SESSION_IDLE_ENTRIES_MAX);
        self.sessions.retain(|_, s| s.last_index >= horizon);
    }

    /// Number of remembered client sessions.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// A frozen view of sessions and state for a snapshot.
    pub fn snapshot(&self) -> ReplicatedSnapshot {
        ReplicatedSnapshot {
            sessions: encode(&self.sessions),
            state: self.state.snapshot(),
        }
    }

    /// Restores sessions and state from a stream written by [`ReplicatedSnapshot::write_to`].
    pub fn restore(&mut self, reader: &mut dyn Read) -> io::Result<()> {
        let len = read_u64(reader)? as usize;
        let bytes = read_bytes(reader, len)?;
        let sessions = decode(&bytes).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "snapshot session table does not decode",
            )
        })?;
        // The state machine swaps its state in only once the whole stream has been read,
        // so a failed restore leaves both parts as they were.
        self.state.restore(reader)?;
        self.sessions = sessions;
        Ok(())
    }
}

/// A frozen [`Replicated`] view.
pub struct ReplicatedSnapshot {
    sessions: Vec<u8>,
    state: Box<dyn SnapshotSource>,
}

// replicated snapshot = | sessions_len u64 | bincode(sessions) | state machine snapshot |
impl ReplicatedSnapshot {
    /// Streams sessions then state.
    pub fn write_to(&self, writer: &mut dyn Write) -> io::Result<()> {
        writer.write_all(&(self.sessions.len() as u64).to_le_bytes())?;
        writer.write_all(&self.sessions)?;
        self.state.write_to(writer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, value: &str) -> Vec<u8> {
        KvCommand::Put {
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Bytes::copy_from_slice(value.as_bytes()),
        }
        .encode()
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

    #[test]
    fn cas_swaps_only_on_match_and_reports_current() {
        let mut kv = KvStore::new();
        kv.apply(1, &put("k", "a"));
        let cas = |expected: Option<&str>, value: Option<&str>| {
            KvCommand::Cas {
                key: Bytes::from_static(b"k"),
                expected: expected.map(|e| Bytes::copy_from_slice(e.as_bytes())),
                value: value.map(|v| Bytes::copy_from_slice(v.as_bytes())),
            }
            .encode()
        };
        let mismatch = KvResponse::decode(&kv.apply(2, &cas(Some("x"), Some("b")))).unwrap();
        assert_eq!(
            mismatch,
            KvResponse::Cas {
                succeeded: false,
                current: Some(Bytes::from_static(b"a"))
            }
        );
        let swapped = KvResponse::decode(&kv.apply(3, &cas(Some("a"), Some("b")))).unwrap();
        assert_eq!(
            swapped,
            KvResponse::Cas {
                succeeded: true,
                current: Some(Bytes::from_static(b"b"))
            }
        );
        let absent_mismatch = KvResponse::decode(&kv.apply(4, &cas(None, Some("c")))).unwrap();
        assert!(matches!(
            absent_mismatch,
            KvResponse::Cas {
                succeeded: false,
                ..
            }
        ));
        let deleted = KvResponse::decode(&kv.apply(5, &cas(Some("b"), None))).unwrap();
        assert_eq!(
            deleted,
            KvResponse::Cas {
                succeeded: true,
                current: None
            }
        );
        assert_eq!(kv.get(b"k"), None);
    }

    #[test]
    fn delete_reports_whether_the_key_existed() {
        let mut kv = KvStore::new();
        kv.apply(1, &put("k", "v"));
        let delete = KvCommand::Delete {
            key: Bytes::from_static(b"k"),
        }
        .encode();
        assert_eq!(
            KvResponse::decode(&kv.apply(2, &delete)),
            Some(KvResponse::Delete { deleted: true })
        );
        assert_eq!(
            KvResponse::decode(&kv.apply(3, &delete)),
            Some(KvResponse::Delete { deleted: false })
        );
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
        assert_eq!(
            restored.state.get(b"k999"),
            Some(Bytes::from_static(b"v999"))
        );
        assert_eq!(restored.state.get(b"late"), None);
        assert_eq!(
            restored.apply(2000, &command(Some(("c", 999)), put("k999", "again"))),
            Applied::Duplicate {
                response: KvResponse::Put.encode(),
                index: 1000
            }
        );
    }

    #[test]
    fn restore_rejects_truncated_and_garbage_streams() {
        let mut sm = Replicated::new(KvStore::new());
        sm.apply(1, &command(None, put("k", "v")));
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

    #[test]
    fn sessions_idle_beyond_the_horizon_are_forgotten_deterministically() {
        let mut sm = Replicated::new(KvStore::new());
        sm.apply(1, &command(Some(("old", 1)), put("a", "1")));
        sm.apply(2, &command(Some(("recent", 1)), put("b", "1")));
        assert_eq!(sm.session_count(), 2);
        // Expiry runs at multiples of 4096; pick one past the idle horizon of both sessions
        // but not of the session written at it.
        let expiry_index = 4096 * (SESSION_IDLE_ENTRIES_MAX / 4096 + 2);
        sm.apply(expiry_index, &command(Some(("new", 1)), put("c", "1")));
        assert_eq!(sm.session_count(), 1);
    }
}
