//! One conformance suite for every [`LogStorage`]: the in-memory one
//! ([`MemStorage`](super::MemStorage), run in this module's tests), the simulator's
//! (`tests/sim/storage.rs`) and the node's (`src/node/log_storage.rs`). The core cannot
//! tell its storages apart, so they must give the same answer, and the same error, to the
//! same question (issue 11, item 8: they disagreed on the error for a replaced snapshot).
//!
//! Test support, not part of the API: it panics with the values on a mismatch.

use bytes::Bytes;

use super::{Entry, EntryKind, LogStorage, NotInLog, SnapshotMeta, StorageError};

/// A storage with the driver's side of it: how the suite changes what the core reads.
pub trait StorageUnderTest {
    /// What the core reads.
    type Storage: LogStorage;
    /// The core's view.
    fn storage(&self) -> &Self::Storage;
    /// Appends durably, first truncating from `entries[0].index` if the log reaches it
    /// (the `Ready` contract), and makes the entries visible to the core.
    fn append(&mut self, entries: &[Entry]);
    /// Records a snapshot of this node's own state at `meta.last_index` (inside the log)
    /// whose data is `data`; the log is left alone.
    fn take_snapshot(&mut self, meta: SnapshotMeta, data: Bytes);
    /// Discards the entries up to and including `upto` (at most the snapshot's index).
    fn compact(&mut self, upto: u64);
    /// Installs a snapshot received from the leader (Raft §7: a log suffix that continues
    /// from its last entry is kept, anything else discarded).
    fn install_snapshot(&mut self, meta: SnapshotMeta, data: Bytes);
}

/// Runs every check, each on a fresh storage from `make`.
pub fn check_all<T: StorageUnderTest>(mut make: impl FnMut() -> T) {
    empty_log(make());
    appended_entries(make());
    append_truncates_conflicting_suffix(make());
    compaction_to_the_snapshot(make());
    compaction_keeping_trailing_entries(make());
    snapshot_chunks(make());
    install_beyond_the_log(make());
    install_keeping_a_matching_suffix(make());
}

/// A normal entry.
pub fn entry(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        kind: EntryKind::Normal,
        payload: Bytes::from(vec![index as u8; 8]),
    }
}

fn entries_of_terms(terms: &[u64]) -> Vec<Entry> {
    terms
        .iter()
        .enumerate()
        .map(|(i, t)| entry(i as u64 + 1, *t))
        .collect()
}

fn meta(last_index: u64, last_term: u64) -> SnapshotMeta {
    SnapshotMeta {
        last_index,
        last_term,
        membership: Default::default(),
    }
}

fn indexes(entries: &[Entry]) -> Vec<u64> {
    entries.iter().map(|e| e.index).collect()
}

fn empty_log(t: impl StorageUnderTest) {
    let s = t.storage();
    assert_eq!(
        (s.first_index(), s.last_index()),
        (1, 0),
        "empty log bounds"
    );
    assert_eq!(s.term(0), Ok(0), "term of index 0");
    assert_eq!(
        s.term(1),
        Err(StorageError::NotInLog(NotInLog::Unavailable {
            index: 1,
            last_index: 0
        }))
    );
    assert_eq!(s.entries(1, 1, u64::MAX), Ok(Vec::new()));
    assert_eq!(
        s.entries(1, 2, u64::MAX),
        Err(StorageError::NotInLog(NotInLog::Unavailable {
            index: 1,
            last_index: 0
        }))
    );
    assert_eq!(s.snapshot_meta().last_index, 0);
}

fn appended_entries(mut t: impl StorageUnderTest) {
    t.append(&entries_of_terms(&[1, 1, 2, 2, 3]));
    let s = t.storage();
    assert_eq!((s.first_index(), s.last_index()), (1, 5));
    for (index, term) in [(1, 1), (2, 1), (3, 2), (4, 2), (5, 3)] {
        assert_eq!(s.term(index), Ok(term), "term of {index}");
    }
    assert_eq!(
        s.term(6),
        Err(StorageError::NotInLog(NotInLog::Unavailable {
            index: 6,
            last_index: 5
        }))
    );
    assert_eq!(indexes(&s.entries(2, 5, u64::MAX).unwrap()), vec![2, 3, 4]);
    assert_eq!(
        indexes(&s.entries(1, 6, 0).unwrap()),
        vec![1],
        "at least one entry whatever max_bytes"
    );
    let two = entry(1, 1).size_bytes() * 2;
    assert_eq!(indexes(&s.entries(1, 6, two).unwrap()), vec![1, 2]);
    assert_eq!(
        s.entries(1, 7, u64::MAX),
        Err(StorageError::NotInLog(NotInLog::Unavailable {
            index: 6,
            last_index: 5
        }))
    );
    assert_eq!(s.entries(3, 4, u64::MAX).unwrap(), vec![entry(3, 2)]);
}

fn append_truncates_conflicting_suffix(mut t: impl StorageUnderTest) {
    t.append(&entries_of_terms(&[1, 1, 2, 2, 3]));
    t.append(&[entry(4, 4)]);
    let s = t.storage();
    assert_eq!(s.last_index(), 4);
    assert_eq!(s.term(4), Ok(4));
    assert_eq!(
        s.term(5),
        Err(StorageError::NotInLog(NotInLog::Unavailable {
            index: 5,
            last_index: 4
        }))
    );
    assert_eq!(
        s.entries(3, 5, u64::MAX).unwrap(),
        vec![entry(3, 2), entry(4, 4)]
    );
}

fn compaction_to_the_snapshot(mut t: impl StorageUnderTest) {
    t.append(&entries_of_terms(&[1, 1, 2, 2, 3, 3]));
    t.take_snapshot(meta(4, 2), Bytes::from_static(b"state at 4"));
    t.compact(4);
    let s = t.storage();
    assert_eq!((s.first_index(), s.last_index()), (5, 6));
    assert_eq!(s.snapshot_meta(), meta(4, 2));
    assert_eq!(s.term(4), Ok(2), "the snapshot's last entry");
    assert_eq!(
        s.term(3),
        Err(StorageError::NotInLog(NotInLog::Compacted {
            index: 3,
            first_index: 5
        }))
    );
    assert_eq!(
        s.entries(4, 6, u64::MAX),
        Err(StorageError::NotInLog(NotInLog::Compacted {
            index: 4,
            first_index: 5
        }))
    );
    assert_eq!(indexes(&s.entries(5, 7, u64::MAX).unwrap()), vec![5, 6]);
}

fn compaction_keeping_trailing_entries(mut t: impl StorageUnderTest) {
    t.append(&entries_of_terms(&[1, 1, 2, 2, 3, 3]));
    t.take_snapshot(meta(4, 2), Bytes::from_static(b"state at 4"));
    t.compact(2);
    let s = t.storage();
    // Entries behind the snapshot stay readable: lagging followers catch up from them.
    assert_eq!((s.first_index(), s.last_index()), (3, 6));
    assert_eq!(s.term(3), Ok(2));
    assert_eq!(s.term(4), Ok(2));
    assert_eq!(
        s.term(2),
        Err(StorageError::NotInLog(NotInLog::Compacted {
            index: 2,
            first_index: 3
        }))
    );
    assert_eq!(
        indexes(&s.entries(3, 7, u64::MAX).unwrap()),
        vec![3, 4, 5, 6]
    );
}

fn read_whole(s: &impl LogStorage, m: &SnapshotMeta, chunk: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let (data, done) = s
            .snapshot_chunk(m, out.len() as u64, chunk)
            .unwrap_or_else(|e| panic!("chunk at {}: {e}", out.len()));
        assert!(data.len() as u64 <= chunk, "chunk longer than max_len");
        out.extend_from_slice(&data);
        if done {
            return out;
        }
        assert!(
            !data.is_empty(),
            "no progress and not done at {}",
            out.len()
        );
    }
}

fn snapshot_chunks(mut t: impl StorageUnderTest) {
    t.append(&entries_of_terms(&[1, 1, 2, 2, 3, 3]));
    let old = meta(4, 2);
    t.take_snapshot(
        old.clone(),
        Bytes::from_static(b"the state machine at index 4"),
    );
    let whole = read_whole(t.storage(), &old, u64::MAX);
    assert!(!whole.is_empty());
    assert_eq!(
        read_whole(t.storage(), &old, 5),
        whole,
        "chunking changes nothing"
    );
    let past_end = t.storage().snapshot_chunk(&old, whole.len() as u64 + 10, 5);
    assert_eq!(past_end, Ok((Bytes::new(), true)), "an offset past the end");
    t.take_snapshot(
        meta(6, 3),
        Bytes::from_static(b"the state machine at index 6"),
    );
    assert_eq!(
        t.storage().snapshot_chunk(&old, 0, 5),
        Err(StorageError::SnapshotReplaced {
            requested: 4,
            current: 6
        })
    );
}

fn install_beyond_the_log(mut t: impl StorageUnderTest) {
    t.append(&entries_of_terms(&[1, 1, 2]));
    t.install_snapshot(meta(9, 5), Bytes::from_static(b"the leader's state at 9"));
    let s = t.storage();
    assert_eq!((s.first_index(), s.last_index()), (10, 9));
    assert_eq!(s.snapshot_meta(), meta(9, 5));
    assert_eq!(s.term(9), Ok(5));
    assert_eq!(
        s.term(3),
        Err(StorageError::NotInLog(NotInLog::Compacted {
            index: 3,
            first_index: 10
        }))
    );
    assert_eq!(
        s.entries(9, 10, u64::MAX),
        Err(StorageError::NotInLog(NotInLog::Compacted {
            index: 9,
            first_index: 10
        }))
    );
    assert_eq!(s.entries(10, 10, u64::MAX), Ok(Vec::new()));
    t.append(&[entry(10, 5)]);
    assert_eq!(
        t.storage().entries(10, 11, u64::MAX),
        Ok(vec![entry(10, 5)])
    );
}

fn install_keeping_a_matching_suffix(mut t: impl StorageUnderTest) {
    t.append(&entries_of_terms(&[1, 1, 2, 2, 3]));
    t.install_snapshot(meta(3, 2), Bytes::from_static(b"the leader's state at 3"));
    let s = t.storage();
    assert_eq!((s.first_index(), s.last_index()), (4, 5));
    assert_eq!(s.term(3), Ok(2));
    assert_eq!(s.term(5), Ok(3));
    assert_eq!(indexes(&s.entries(4, 6, u64::MAX).unwrap()), vec![4, 5]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::MemStorage;

    impl StorageUnderTest for MemStorage {
        type Storage = MemStorage;
        fn storage(&self) -> &MemStorage {
            self
        }
        fn append(&mut self, entries: &[Entry]) {
            MemStorage::append(self, entries);
        }
        fn take_snapshot(&mut self, meta: SnapshotMeta, data: Bytes) {
            self.set_snapshot(meta, data);
        }
        fn compact(&mut self, upto: u64) {
            MemStorage::compact(self, upto);
        }
        fn install_snapshot(&mut self, meta: SnapshotMeta, data: Bytes) {
            MemStorage::install_snapshot(self, meta, data);
        }
    }

    #[test]
    fn mem_storage_conforms() {
        check_all(MemStorage::new);
    }
}
