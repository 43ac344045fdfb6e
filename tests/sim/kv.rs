//! The simulated state machine: a register per key plus a hash chain over every applied
//! entry, so two state machines (or a state machine and a snapshot) that agree on the chain
//! applied the same commands in the same order.

use bytes::Bytes;
use raftlog::raft::{Entry, EntryKind};

use super::rng::mix64;

/// Keys clients write and read. Few, so reads race with writes to the same key.
pub const KEYS: usize = 4;

/// A client write: `key := value`, where `value` is unique over the whole run.
pub fn encode_write(key: u8, value: u64) -> Bytes {
    let mut buf = Vec::with_capacity(9);
    buf.push(key);
    buf.extend_from_slice(&value.to_le_bytes());
    Bytes::from(buf)
}

/// Decodes a write; `None` if the payload is not one (a core that corrupts payloads).
pub fn decode_write(payload: &[u8]) -> Option<(u8, u64)> {
    if payload.len() != 9 || payload[0] as usize >= KEYS {
        return None;
    }
    let mut value = [0u8; 8];
    value.copy_from_slice(&payload[1..]);
    Some((payload[0], u64::from_le_bytes(value)))
}

/// Digest of one entry for the hash chain and for log-matching comparisons.
pub fn entry_digest(entry: &Entry) -> u64 {
    let mut h = mix64(entry.index ^ 0x5157_0000_0000_0000);
    h = mix64(h ^ entry.term);
    h = mix64(h ^ entry.kind as u64);
    for chunk in entry.payload.chunks(8) {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        h = mix64(h ^ u64::from_le_bytes(word));
    }
    mix64(h ^ entry.payload.len() as u64)
}

/// The state machine. `keys[k] = (value, index of the write)`; 0 means never written.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Kv {
    pub applied: u64,
    pub applied_term: u64,
    /// `chain_i = mix(chain_{i-1} ^ digest(entry_i))`.
    pub chain: u64,
    pub keys: [(u64, u64); KEYS],
}

impl Kv {
    /// Applies the next entry; the caller has checked `entry.index == applied + 1`.
    pub fn apply(&mut self, entry: &Entry) {
        self.applied = entry.index;
        self.applied_term = entry.term;
        self.chain = mix64(self.chain ^ entry_digest(entry));
        if entry.kind == EntryKind::Normal {
            if let Some((key, value)) = decode_write(&entry.payload) {
                self.keys[key as usize] = (value, entry.index);
            }
        }
    }

    // snapshot = | magic u64 | applied u64 | applied_term u64 | chain u64 | (value u64, index u64) x KEYS |
    const MAGIC: u64 = 0x5349_4d4b_5601_0001;

    pub fn encode(&self) -> Bytes {
        let mut buf = Vec::with_capacity(8 * (4 + 2 * KEYS));
        for word in [Kv::MAGIC, self.applied, self.applied_term, self.chain] {
            buf.extend_from_slice(&word.to_le_bytes());
        }
        for (value, index) in self.keys {
            buf.extend_from_slice(&value.to_le_bytes());
            buf.extend_from_slice(&index.to_le_bytes());
        }
        Bytes::from(buf)
    }

    pub fn decode(bytes: &[u8]) -> Result<Kv, String> {
        let want = 8 * (4 + 2 * KEYS);
        if bytes.len() != want {
            return Err(format!(
                "snapshot is {} bytes, expected {want}",
                bytes.len()
            ));
        }
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&bytes[8 * i..8 * i + 8]);
            u64::from_le_bytes(w)
        };
        if word(0) != Kv::MAGIC {
            return Err(format!("snapshot magic {:#x} is wrong", word(0)));
        }
        let mut kv = Kv {
            applied: word(1),
            applied_term: word(2),
            chain: word(3),
            keys: [(0, 0); KEYS],
        };
        for (k, slot) in kv.keys.iter_mut().enumerate() {
            *slot = (word(4 + 2 * k), word(5 + 2 * k));
        }
        Ok(kv)
    }
}
