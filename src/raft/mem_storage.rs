//! An in-memory [`LogStorage`]: the durable state of one node for the simulator, unit tests
//! and benches.
//!
//! It holds only what survives a crash: the log entries after the latest compaction point,
//! and the latest snapshot (metadata and bytes). The hard state lives with the driver. The
//! driver mutates it as a [`Ready`](super::Ready) tells it ([`MemStorage::append`],
//! [`MemStorage::install_snapshot`]) and when it snapshots its own state machine
//! ([`MemStorage::set_snapshot`], [`MemStorage::compact`]).
//!
//! Misuse by the driver (a gap in the log, compacting past the snapshot) is a bug in the
//! driver, not bad input, so it panics with the values involved.

use bytes::Bytes;

use super::{Entry, LogStorage, NotInLog, SnapshotMeta, StorageError};

/// Durable log and snapshot of one node, in memory.
#[derive(Clone, Debug, Default)]
pub struct MemStorage {
    /// Index of the entry just before `entries[0]` (`first_index() - 1`).
    offset_index: u64,
    /// Term of the entry at `offset_index` (0 when `offset_index == 0`).
    offset_term: u64,
    /// Invariant: `entries[i].index == offset_index + 1 + i`.
    entries: Vec<Entry>,
    /// Invariant: `snapshot_meta.last_index >= offset_index`.
    snapshot_meta: SnapshotMeta,
    snapshot_data: Bytes,
}

impl MemStorage {
    /// An empty log with no snapshot (a brand-new node).
    pub fn new() -> MemStorage {
        MemStorage::default()
    }

    /// Appends `entries`. When `entries[0].index <= last_index()` the conflicting suffix
    /// from `entries[0].index` is truncated first (Raft §5.3), as a `Ready` instructs.
    ///
    /// # Panics
    /// If the entries would leave a gap, are not consecutive, or reach into the compacted
    /// prefix.
    pub fn append(&mut self, entries: &[Entry]) {
        let Some(first) = entries.first() else {
            return;
        };
        assert!(
            first.index > self.offset_index && first.index <= self.last_index() + 1,
            "MemStorage::append: entry {} does not fit the log [{}, {}] (compacted up to {})",
            first.index,
            self.first_index(),
            self.last_index(),
            self.offset_index
        );
        for pair in entries.windows(2) {
            assert!(
                pair[1].index == pair[0].index + 1,
                "MemStorage::append: entries not consecutive: {} then {}",
                pair[0].index,
                pair[1].index
            );
        }
        let keep = (first.index - self.offset_index - 1) as usize;
        self.entries.truncate(keep);
        self.entries.extend_from_slice(entries);
    }

    /// Installs a snapshot received from the leader: it replaces the current one, and the
    /// log is discarded up to `meta.last_index`. If the log holds an entry at
    /// `meta.last_index` with `meta.last_term`, the entries after it are kept (they match
    /// the leader's log, Raft §7); otherwise the whole log is discarded.
    ///
    /// # Panics
    /// If `meta` is older than the current snapshot.
    pub fn install_snapshot(&mut self, meta: SnapshotMeta, data: Bytes) {
        assert!(
            meta.last_index >= self.snapshot_meta.last_index,
            "MemStorage::install_snapshot: snapshot at {} is older than the current one at {}",
            meta.last_index,
            self.snapshot_meta.last_index
        );
        let matches = self.term(meta.last_index).ok() == Some(meta.last_term);
        if matches {
            self.drop_prefix(meta.last_index);
        } else {
            self.entries.clear();
            self.offset_index = meta.last_index;
            self.offset_term = meta.last_term;
        }
        self.snapshot_meta = meta;
        self.snapshot_data = data;
    }

    /// Records a snapshot the driver took of its own state machine. The log is left alone
    /// (compact it separately with [`MemStorage::compact`], keeping trailing entries). A
    /// snapshot beyond the end of the log is installed as by
    /// [`MemStorage::install_snapshot`].
    ///
    /// # Panics
    /// If `meta` is older than the current snapshot.
    pub fn set_snapshot(&mut self, meta: SnapshotMeta, data: Bytes) {
        if meta.last_index > self.last_index() {
            self.install_snapshot(meta, data);
            return;
        }
        assert!(
            meta.last_index >= self.snapshot_meta.last_index,
            "MemStorage::set_snapshot: snapshot at {} is older than the current one at {}",
            meta.last_index,
            self.snapshot_meta.last_index
        );
        assert!(
            self.term(meta.last_index).ok() == Some(meta.last_term),
            "MemStorage::set_snapshot: snapshot ends at ({}, term {}) but the log has term {:?} there",
            meta.last_index,
            meta.last_term,
            self.term(meta.last_index).ok()
        );
        self.snapshot_meta = meta;
        self.snapshot_data = data;
    }

    /// Discards log entries up to and including `upto`. Compacting below the current
    /// compaction point does nothing.
    ///
    /// # Panics
    /// If `upto` is beyond the latest snapshot (those entries would be lost) or the log.
    pub fn compact(&mut self, upto: u64) {
        if upto <= self.offset_index {
            return;
        }
        assert!(
            upto <= self.snapshot_meta.last_index && upto <= self.last_index(),
            "MemStorage::compact: cannot compact to {}: snapshot covers {}, log ends at {}",
            upto,
            self.snapshot_meta.last_index,
            self.last_index()
        );
        self.drop_prefix(upto);
    }

    /// The bytes of the latest snapshot.
    pub fn snapshot_data(&self) -> &Bytes {
        &self.snapshot_data
    }

    /// The entries currently in the log, in index order.
    pub fn log_entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Drops entries up to `upto`, which must be in `[offset_index, last_index()]`.
    fn drop_prefix(&mut self, upto: u64) {
        let term = self
            .term(upto)
            .unwrap_or_else(|e| panic!("MemStorage: no term at compaction point {upto}: {e}"));
        let drop = (upto - self.offset_index) as usize;
        self.entries.drain(..drop);
        self.offset_index = upto;
        self.offset_term = term;
    }
}

impl LogStorage for MemStorage {
    fn first_index(&self) -> u64 {
        self.offset_index + 1
    }

    fn last_index(&self) -> u64 {
        self.offset_index + self.entries.len() as u64
    }

    fn term(&self, index: u64) -> Result<u64, StorageError> {
        if index < self.offset_index {
            return Err(StorageError::NotInLog(NotInLog::Compacted {
                index,
                first_index: self.first_index(),
            }));
        }
        if index == self.offset_index {
            // Only the snapshot's last entry (or 0) is answered there: a compaction point
            // below the snapshot (trailing entries) is gone from a WAL too.
            if index == 0 || index == self.snapshot_meta.last_index {
                return Ok(self.offset_term);
            }
            return Err(StorageError::NotInLog(NotInLog::Compacted {
                index,
                first_index: self.first_index(),
            }));
        }
        match self.entries.get((index - self.offset_index - 1) as usize) {
            Some(entry) => Ok(entry.term),
            None => Err(StorageError::NotInLog(NotInLog::Unavailable {
                index,
                last_index: self.last_index(),
            })),
        }
    }

    fn entries(&self, lo: u64, hi: u64, max_bytes: u64) -> Result<Vec<Entry>, StorageError> {
        if lo <= self.offset_index {
            return Err(StorageError::NotInLog(NotInLog::Compacted {
                index: lo,
                first_index: self.first_index(),
            }));
        }
        if hi > self.last_index() + 1 {
            return Err(StorageError::NotInLog(NotInLog::Unavailable {
                index: hi - 1,
                last_index: self.last_index(),
            }));
        }
        let mut out = Vec::new();
        let mut size = 0u64;
        let start = (lo - self.offset_index - 1) as usize;
        let end = (hi.max(lo) - self.offset_index - 1) as usize;
        for entry in &self.entries[start..end] {
            size += entry.size_bytes();
            if !out.is_empty() && size > max_bytes {
                break;
            }
            out.push(entry.clone());
        }
        Ok(out)
    }

    fn snapshot_meta(&self) -> SnapshotMeta {
        self.snapshot_meta.clone()
    }

    fn snapshot_chunk(
        &self,
        meta: &SnapshotMeta,
        offset: u64,
        max_len: u64,
    ) -> Result<(Bytes, bool), StorageError> {
        if let Some(replaced) = StorageError::if_snapshot_replaced(meta, &self.snapshot_meta) {
            return Err(replaced);
        }
        let len = self.snapshot_data.len() as u64;
        let start = offset.min(len);
        let end = start.saturating_add(max_len).min(len);
        let data = self.snapshot_data.slice(start as usize..end as usize);
        Ok((data, end == len))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::raft::EntryKind;

    /// A normal entry whose payload names its index; shared with the validation tests.
    pub(crate) fn ent(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            kind: EntryKind::Normal,
            payload: Bytes::from(vec![index as u8; 4]),
        }
    }

    fn meta(last_index: u64, last_term: u64) -> SnapshotMeta {
        SnapshotMeta {
            last_index,
            last_term,
            membership: Default::default(),
        }
    }

    fn storage_with(terms: &[u64]) -> MemStorage {
        let mut s = MemStorage::new();
        let entries: Vec<Entry> = terms
            .iter()
            .enumerate()
            .map(|(i, t)| ent(i as u64 + 1, *t))
            .collect();
        s.append(&entries);
        s
    }

    #[test]
    fn empty_storage_has_term_zero_at_index_zero() {
        let s = MemStorage::new();
        assert_eq!((s.first_index(), s.last_index()), (1, 0));
        assert_eq!(s.term(0).unwrap(), 0);
        assert!(s.term(1).is_err());
    }

    #[test]
    fn append_truncates_conflicting_suffix() {
        let mut s = storage_with(&[1, 1, 2, 2]);
        s.append(&[ent(3, 3)]);
        assert_eq!(s.last_index(), 3);
        assert_eq!(s.term(3).unwrap(), 3);
        assert!(s.term(4).is_err());
    }

    #[test]
    #[should_panic(expected = "does not fit")]
    fn append_with_gap_panics() {
        let mut s = storage_with(&[1]);
        s.append(&[ent(3, 1)]);
    }

    #[test]
    fn entries_respects_max_bytes_but_returns_at_least_one() {
        let s = storage_with(&[1, 1, 1, 1]);
        assert_eq!(s.entries(1, 5, 0).unwrap().len(), 1);
        assert_eq!(s.entries(1, 5, 56).unwrap().len(), 2);
        assert_eq!(s.entries(2, 5, u64::MAX).unwrap().len(), 3);
        assert!(s.entries(2, 6, u64::MAX).is_err());
    }

    #[test]
    fn compact_below_snapshot_keeps_only_the_snapshot_term() {
        let mut s = storage_with(&[1, 1, 2, 2, 3]);
        s.set_snapshot(meta(4, 2), Bytes::from_static(b"snap"));
        s.compact(3);
        assert_eq!((s.first_index(), s.last_index()), (4, 5));
        // A WAL forgets the compaction point's term too; only the snapshot's is kept.
        assert!(s.term(3).is_err());
        assert_eq!(s.term(4).unwrap(), 2);
        assert!(s.term(2).is_err());
        assert!(s.entries(3, 5, u64::MAX).is_err());
    }

    #[test]
    #[should_panic(expected = "cannot compact")]
    fn compact_beyond_snapshot_panics() {
        let mut s = storage_with(&[1, 1, 2]);
        s.set_snapshot(meta(1, 1), Bytes::new());
        s.compact(2);
    }

    #[test]
    fn install_snapshot_keeps_matching_suffix() {
        let mut s = storage_with(&[1, 1, 2, 2, 3]);
        s.install_snapshot(meta(3, 2), Bytes::from_static(b"x"));
        assert_eq!((s.first_index(), s.last_index()), (4, 5));
        assert_eq!(s.term(5).unwrap(), 3);
    }

    #[test]
    fn install_snapshot_discards_conflicting_log() {
        let mut s = storage_with(&[1, 1, 2, 2, 3]);
        s.install_snapshot(meta(3, 4), Bytes::from_static(b"x"));
        assert_eq!((s.first_index(), s.last_index()), (4, 3));
        assert_eq!(s.term(3).unwrap(), 4);
        s.install_snapshot(meta(9, 5), Bytes::from_static(b"y"));
        assert_eq!((s.first_index(), s.last_index()), (10, 9));
        assert_eq!(s.snapshot_meta().last_index, 9);
    }

    #[test]
    fn snapshot_chunks_cover_data_and_fail_for_replaced_snapshot() {
        let mut s = storage_with(&[1, 1]);
        s.set_snapshot(meta(2, 1), Bytes::from_static(b"abcdefg"));
        let m = s.snapshot_meta();
        assert_eq!(
            s.snapshot_chunk(&m, 0, 3).unwrap(),
            (Bytes::from_static(b"abc"), false)
        );
        assert_eq!(
            s.snapshot_chunk(&m, 3, 4).unwrap(),
            (Bytes::from_static(b"defg"), true)
        );
        s.append(&[ent(3, 1)]);
        s.set_snapshot(meta(3, 1), Bytes::from_static(b"z"));
        assert!(s.snapshot_chunk(&m, 3, 4).is_err());
    }
}
