//! The key-value state machine: [`KvStore`], its commands and answers, and its snapshot
//! encoding.
//!
//! The [`StateMachine`] trait lives in [`crate::state_machine`] and client sessions in
//! [`crate::session`]; both are re-exported here, where the node, the API and
//! `examples/counter.rs` have always found them.
//!
//! # Session records (issue 11)
//! A CAS answer carries the key's value (`current`), up to the value limit. Kept verbatim
//! in the session table, 70 failed CAS on a 1 MiB value made a 70 MiB table. So the record
//! of a CAS answer with a value longer than [`CAS_CURRENT_INLINE_BYTES_MAX`] keeps the key
//! and the *modification index* of the value it saw (the index of the write that set it,
//! like etcd's `mod_revision`); a retry rebuilds `current` from the store when the key
//! still holds that very write, and is refused as expired when the key was written since
//! (the first outcome's value is gone; answering with another value would not be the
//! first outcome). Every other answer is small and kept as it is.

use std::io::{self, Read, Write};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub use crate::session::{
    Applied, Command, Replicated, ReplicatedSnapshot, RequestId, SessionLimits, CLIENT_ID_BYTES_MAX,
};
use crate::state_machine::{read_exactly, read_u32, read_u64};
pub use crate::state_machine::{SnapshotSource, StateMachine};

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

pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Encoding plain data structures into a Vec cannot fail: bincode only errors on
    // writers that fail or on types serde cannot represent, neither of which occurs here.
    bincode::serde::encode_to_vec(value, bincode::config::standard())
        .unwrap_or_else(|e| panic!("bincode encoding of an in-memory value failed: {e}"))
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Option<T> {
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

/// CAS answers whose `current` is at most this long are kept verbatim in the session
/// table; longer ones are kept as a reference into the store (see the module docs).
pub const CAS_CURRENT_INLINE_BYTES_MAX: usize = 256;

/// A stored value and the index of the write that set it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Versioned {
    value: Bytes,
    /// Log index of the write that set `value`; 0 for values restored from a version 1
    /// snapshot, which did not record it (no write has index 0, so it never matches a
    /// later write).
    modified_at: u64,
}

/// What the session table keeps of a [`KvResponse`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum KvSessionRecord {
    /// The answer as it was (small).
    Verbatim(KvResponse),
    /// A CAS answer whose `current` is rebuilt from the store while `key` still holds the
    /// write at `seen` (`None`: while `key` is absent).
    Cas {
        key: Bytes,
        succeeded: bool,
        seen: Option<u64>,
    },
}

/// The key-value state machine. Keys and values are bytes; the map is persistent
/// (structurally shared), so `snapshot` is O(1) and never pauses applying.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KvStore {
    map: imbl::OrdMap<Bytes, Versioned>,
}

impl KvStore {
    /// An empty store.
    pub fn new() -> KvStore {
        KvStore::default()
    }

    /// The value of `key`, if any.
    pub fn get(&self, key: &[u8]) -> Option<Bytes> {
        self.map.get(key).map(|v| v.value.clone())
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    fn set(&mut self, index: u64, key: Bytes, value: Bytes) {
        self.map.insert(
            key,
            Versioned {
                value,
                modified_at: index,
            },
        );
    }

    fn execute(&mut self, index: u64, command: KvCommand) -> KvResponse {
        match command {
            KvCommand::Put { key, value } => {
                self.set(index, key, value);
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
                let current = self.get(&key);
                if current != expected {
                    return KvResponse::Cas {
                        succeeded: false,
                        current,
                    };
                }
                match &value {
                    Some(v) => self.set(index, key, v.clone()),
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

/// Issue 15: the keys a range read covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRange {
    /// Lower bound.
    pub start: std::ops::Bound<Bytes>,
    /// Upper bound.
    pub end: std::ops::Bound<Bytes>,
}

/// One page of a range read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangePage {
    /// Keys and values, in key order.
    pub pairs: Vec<(Bytes, Bytes)>,
    /// More keys in the range follow the last one given.
    pub more: bool,
}

impl KvStore {
    /// Issue 15: up to `limit` pairs of `range` in key order, stopping before their keys and
    /// values pass `bytes_max` (one pair is always given when the range holds one).
    pub fn range(&self, range: &KeyRange, limit: usize, bytes_max: usize) -> RangePage {
        use std::ops::Bound;
        let mut pairs = Vec::new();
        let mut bytes = 0usize;
        // An empty or inverted range would make `OrdMap::range` panic, and it comes from
        // the client: answer it as empty instead.
        let inverted = match (&range.start, &range.end) {
            (Bound::Included(s), Bound::Excluded(e)) => s >= e,
            (Bound::Excluded(s), Bound::Excluded(e)) => s >= e,
            _ => false,
        };
        if inverted {
            return RangePage { pairs, more: false };
        }
        let bounds: (Bound<&[u8]>, Bound<&[u8]>) = (
            range.start.as_ref().map(|b| b.as_ref()),
            range.end.as_ref().map(|b| b.as_ref()),
        );
        for (key, versioned) in self.map.range::<_, [u8]>(bounds) {
            let size = key.len() + versioned.value.len();
            if pairs.len() == limit || (!pairs.is_empty() && bytes + size > bytes_max) {
                return RangePage { pairs, more: true };
            }
            bytes += size;
            pairs.push((key.clone(), versioned.value.clone()));
        }
        RangePage { pairs, more: false }
    }
}

/// First word of a version 2 KV snapshot: "RLKVST02" read as a little-endian u64. A version
/// 1 snapshot starts with its key count instead, which never comes near this value.
const KV_FORMAT_2: u64 = u64::from_le_bytes(*b"RLKVST02");

// kv snapshot, version 2 =
//   | magic u64 = KV_FORMAT_2 | count u64 |
//   { | key_len u64 | value_len u64 | modified_at u64 | key | value | } * count |
// kv snapshot, version 1 (read only) =
//   | count u64 | { | key_len u32 | value_len u32 | key | value | } * count |
// (little endian; the snapshot file adds its own framing and checksums). Lengths are read
// as the bytes arrive, with no cap (see `crate::state_machine`), so any value the apply
// path stored restores.
impl StateMachine for KvStore {
    fn apply(&mut self, index: u64, command: &[u8]) -> Vec<u8> {
        match KvCommand::decode(command) {
            Some(command) => self.execute(index, command).encode(),
            None => KvResponse::Invalid.encode(),
        }
    }

    fn snapshot(&self) -> Box<dyn SnapshotSource> {
        Box::new(self.clone())
    }

    fn restore(&mut self, reader: &mut dyn Read) -> io::Result<()> {
        let first_word = read_u64(reader)?;
        let mut map = imbl::OrdMap::new();
        if first_word == KV_FORMAT_2 {
            let count = read_u64(reader)?;
            for _ in 0..count {
                let key_len = read_u64(reader)?;
                let value_len = read_u64(reader)?;
                let modified_at = read_u64(reader)?;
                let key = read_exactly(reader, key_len, "a key")?;
                let value = read_exactly(reader, value_len, "a value")?;
                map.insert(
                    Bytes::from(key),
                    Versioned {
                        value: Bytes::from(value),
                        modified_at,
                    },
                );
            }
        } else {
            for _ in 0..first_word {
                let key_len = read_u32(reader)?;
                let value_len = read_u32(reader)?;
                let key = read_exactly(reader, key_len.into(), "a key")?;
                let value = read_exactly(reader, value_len.into(), "a value")?;
                map.insert(
                    Bytes::from(key),
                    Versioned {
                        value: Bytes::from(value),
                        modified_at: 0,
                    },
                );
            }
        }
        self.map = map;
        Ok(())
    }

    fn session_record(&self, command: Option<&[u8]>, response: &[u8]) -> Vec<u8> {
        let Some(decoded) = KvResponse::decode(response) else {
            return encode(&KvSessionRecord::Verbatim(KvResponse::Invalid));
        };
        let cas_key = command
            .and_then(KvCommand::decode)
            .and_then(|command| match command {
                KvCommand::Cas { key, .. } => Some(key),
                _ => None,
            });
        let record = match (decoded, cas_key) {
            (
                KvResponse::Cas {
                    succeeded,
                    current: Some(current),
                },
                Some(key),
            ) if current.len() > CAS_CURRENT_INLINE_BYTES_MAX => {
                // Called right after the CAS: the key holds `current` now, so its
                // modification index names exactly the value the answer carries.
                let seen = self.map.get(&key).map(|v| v.modified_at);
                KvSessionRecord::Cas {
                    key,
                    succeeded,
                    seen,
                }
            }
            (decoded, _) => KvSessionRecord::Verbatim(decoded),
        };
        encode(&record)
    }

    fn session_response(&self, record: &[u8]) -> Option<Vec<u8>> {
        match decode::<KvSessionRecord>(record)? {
            KvSessionRecord::Verbatim(response) => Some(response.encode()),
            KvSessionRecord::Cas {
                key,
                succeeded,
                seen,
            } => {
                let now = self.map.get(&key);
                if now.map(|v| v.modified_at) != seen {
                    return None;
                }
                Some(
                    KvResponse::Cas {
                        succeeded,
                        current: now.map(|v| v.value.clone()),
                    }
                    .encode(),
                )
            }
        }
    }
}

impl SnapshotSource for KvStore {
    fn write_to(&self, writer: &mut dyn Write) -> io::Result<()> {
        writer.write_all(&KV_FORMAT_2.to_le_bytes())?;
        writer.write_all(&(self.map.len() as u64).to_le_bytes())?;
        for (key, versioned) in self.map.iter() {
            writer.write_all(&(key.len() as u64).to_le_bytes())?;
            writer.write_all(&(versioned.value.len() as u64).to_le_bytes())?;
            writer.write_all(&versioned.modified_at.to_le_bytes())?;
            writer.write_all(key)?;
            writer.write_all(&versioned.value)?;
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An encoded `Put`; shared with the session tests.
    pub(crate) fn put(key: &str, value: &str) -> Vec<u8> {
        KvCommand::Put {
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Bytes::copy_from_slice(value.as_bytes()),
        }
        .encode()
    }

    /// An encoded `Cas`; shared with the session tests.
    pub(crate) fn cas(key: &str, expected: Option<&[u8]>, value: Option<&[u8]>) -> Vec<u8> {
        KvCommand::Cas {
            key: Bytes::copy_from_slice(key.as_bytes()),
            expected: expected.map(Bytes::copy_from_slice),
            value: value.map(Bytes::copy_from_slice),
        }
        .encode()
    }

    #[test]
    fn cas_swaps_only_on_match_and_reports_current() {
        let mut kv = KvStore::new();
        kv.apply(1, &put("k", "a"));
        let mismatch = KvResponse::decode(&kv.apply(2, &cas("k", Some(b"x"), Some(b"b")))).unwrap();
        assert_eq!(
            mismatch,
            KvResponse::Cas {
                succeeded: false,
                current: Some(Bytes::from_static(b"a"))
            }
        );
        let swapped = KvResponse::decode(&kv.apply(3, &cas("k", Some(b"a"), Some(b"b")))).unwrap();
        assert_eq!(
            swapped,
            KvResponse::Cas {
                succeeded: true,
                current: Some(Bytes::from_static(b"b"))
            }
        );
        let absent_mismatch =
            KvResponse::decode(&kv.apply(4, &cas("k", None, Some(b"c")))).unwrap();
        assert!(matches!(
            absent_mismatch,
            KvResponse::Cas {
                succeeded: false,
                ..
            }
        ));
        let deleted = KvResponse::decode(&kv.apply(5, &cas("k", Some(b"b"), None))).unwrap();
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
    fn large_cas_answer_is_recorded_by_reference_and_rebuilt_while_the_key_is_unchanged() {
        let mut kv = KvStore::new();
        let big = vec![b'b'; 1 << 20];
        kv.apply(1, &put("k", std::str::from_utf8(&big).unwrap()));
        let command = cas("k", Some(b"other"), Some(b"x"));
        let response = kv.apply(2, &command);
        let record = kv.session_record(Some(&command), &response);
        assert!(
            record.len() < 64,
            "a failed CAS on a 1 MiB value is recorded in {} bytes",
            record.len()
        );
        assert_eq!(kv.session_response(&record), Some(response.clone()));
        // Rewriting the same bytes is still a new write: the answer's value is not provably
        // the one the first attempt saw, so it cannot be rebuilt.
        kv.apply(3, &put("k", std::str::from_utf8(&big).unwrap()));
        assert_eq!(kv.session_response(&record), None);
    }

    #[test]
    fn small_cas_answer_is_kept_verbatim_across_later_writes() {
        let mut kv = KvStore::new();
        kv.apply(1, &put("k", "a"));
        let command = cas("k", Some(b"x"), Some(b"b"));
        let response = kv.apply(2, &command);
        let record = kv.session_record(Some(&command), &response);
        kv.apply(3, &put("k", "c"));
        assert_eq!(kv.session_response(&record), Some(response));
    }

    #[test]
    fn large_successful_cas_and_delete_by_cas_answers_are_rebuilt() {
        let mut kv = KvStore::new();
        let big = vec![b'n'; 4096];
        let swap = cas("k", None, Some(&big));
        let swapped = kv.apply(1, &swap);
        let swap_record = kv.session_record(Some(&swap), &swapped);
        assert!(swap_record.len() < 64);
        assert_eq!(kv.session_response(&swap_record), Some(swapped));
        let delete = cas("k", Some(&big), None);
        let deleted = kv.apply(2, &delete);
        let delete_record = kv.session_record(Some(&delete), &deleted);
        assert_eq!(kv.session_response(&delete_record), Some(deleted));
    }

    #[test]
    fn range_pages_by_limit_and_bytes_and_refuses_nothing_on_an_inverted_range() {
        use std::ops::Bound;
        let mut kv = KvStore::new();
        for (i, key) in ["a", "b1", "b2", "b3", "c"].iter().enumerate() {
            kv.apply(i as u64 + 1, &put(key, "vv"));
        }
        let b = |s: &'static str| Bytes::from_static(s.as_bytes());
        let range = KeyRange {
            start: Bound::Included(b("b")),
            end: Bound::Excluded(b("c")),
        };
        let keys = |page: &RangePage| {
            page.pairs
                .iter()
                .map(|(k, _)| k.clone())
                .collect::<Vec<_>>()
        };
        let all = kv.range(&range, 10, 1 << 20);
        assert_eq!(keys(&all), [b("b1"), b("b2"), b("b3")]);
        assert!(!all.more);
        let two = kv.range(&range, 2, 1 << 20);
        assert_eq!(keys(&two), [b("b1"), b("b2")]);
        assert!(two.more);
        // Each pair is 4 bytes: a 5-byte budget holds one, but one is always given.
        assert_eq!(kv.range(&range, 10, 5).pairs.len(), 1);
        assert_eq!(kv.range(&range, 10, 1).pairs.len(), 1);
        let inverted = KeyRange {
            start: Bound::Included(b("c")),
            end: Bound::Excluded(b("a")),
        };
        assert_eq!(kv.range(&inverted, 10, 1 << 20).pairs, []);
        let equal = KeyRange {
            start: Bound::Excluded(b("b1")),
            end: Bound::Excluded(b("b1")),
        };
        assert_eq!(kv.range(&equal, 10, 1 << 20).pairs, []);
    }

    #[test]
    fn version_1_snapshot_still_restores() {
        // | count u64 | { | key_len u32 | value_len u32 | key | value | } * count |
        let mut v1 = Vec::new();
        v1.extend_from_slice(&2u64.to_le_bytes());
        for (key, value) in [(&b"a"[..], &b"1"[..]), (b"bb", b"22")] {
            v1.extend_from_slice(&(key.len() as u32).to_le_bytes());
            v1.extend_from_slice(&(value.len() as u32).to_le_bytes());
            v1.extend_from_slice(key);
            v1.extend_from_slice(value);
        }
        let mut kv = KvStore::new();
        kv.restore(&mut v1.as_slice()).unwrap();
        assert_eq!(kv.len(), 2);
        assert_eq!(kv.get(b"bb"), Some(Bytes::from_static(b"22")));
    }

    #[test]
    fn snapshot_restores_values_larger_than_the_old_item_cap() {
        let mut kv = KvStore::new();
        let huge = "h".repeat((64 << 20) + 1);
        kv.apply(1, &put("huge", &huge));
        let mut bytes = Vec::new();
        kv.snapshot().write_to(&mut bytes).unwrap();
        let mut restored = KvStore::new();
        restored.restore(&mut bytes.as_slice()).unwrap();
        assert_eq!(restored, kv);
    }
}
