//! Helpers shared by the snapshot tests: metas, deterministic payloads, writing, reading
//! back, damaging and transferring snapshots.

use std::path::Path;

use super::SnapshotStore;
use crate::error::Result;
use crate::SnapshotMeta;

/// A snapshot at `(index, term)` of a three-member cluster (two voters, a learner).
pub(super) fn meta(index: u64, term: u64) -> SnapshotMeta {
    SnapshotMeta {
        last_index: index,
        last_term: term,
        membership: crate::fuzzing::fuzz_snapshot_meta().membership,
    }
}

/// Deterministic pseudo-random payload byte at position `i` for snapshot `seed`.
fn byte_at(seed: u64, i: u64) -> u8 {
    let x = (i ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    (x >> 29) as u8
}

pub(super) fn payload(seed: u64, len: u64) -> Vec<u8> {
    (0..len).map(|i| byte_at(seed, i)).collect()
}

/// Writes a snapshot in uneven chunk sizes.
pub(super) fn write(store: &SnapshotStore, m: SnapshotMeta, data: &[u8]) -> SnapshotMeta {
    let mut w = store.begin(m).unwrap();
    let mut rest = data;
    let mut step = 1usize;
    while !rest.is_empty() {
        let n = step.min(rest.len());
        w.write_chunk(&rest[..n]).unwrap();
        rest = &rest[n..];
        step = step * 7 % 200_003 + 1;
    }
    w.finish().unwrap()
}

pub(super) fn read_all(store: &SnapshotStore, m: &SnapshotMeta) -> Result<Vec<u8>> {
    let mut r = store.open_reader(m)?;
    let mut out = Vec::new();
    while let Some(chunk) = r.next_chunk()? {
        out.extend_from_slice(chunk);
    }
    Ok(out)
}

pub(super) fn flip(path: &Path, offset: u64) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[offset as usize] ^= 0x40;
    std::fs::write(path, bytes).unwrap();
}

pub(super) fn transfer(
    from: &SnapshotStore,
    to: &SnapshotStore,
    m: &SnapshotMeta,
    chunk: u64,
) -> Result<SnapshotMeta> {
    let mut rx = to.begin_receive(m.clone())?;
    let mut offset = 0;
    loop {
        let (bytes, done) = from.read_chunk(m, offset, chunk)?;
        rx.write_chunk(offset, &bytes)?;
        offset += bytes.len() as u64;
        if done {
            break;
        }
    }
    rx.finish()
}
