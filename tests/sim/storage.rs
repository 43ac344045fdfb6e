//! The simulated disk: what survives a crash.
//!
//! `Durable` holds exactly what a real node would find after a power cut: the log entries,
//! hard state and snapshot whose writes completed. The core reads it through `SimStorage`,
//! a shared handle, so the harness can keep the durable state when it throws away a crashed
//! core and hand the same state to the core it builds on restart.

use std::cell::RefCell;
use std::rc::Rc;

use bytes::Bytes;
use raftlog::raft::{Entry, HardState, LogStorage, NotInLog, SnapshotMeta, StorageError};

/// Durable state of one node.
#[derive(Debug, Default)]
pub struct Durable {
    pub hard_state: HardState,
    pub snap_meta: SnapshotMeta,
    pub snap_data: Bytes,
    /// A snapshot being received: chunks persisted so far.
    pub partial: Option<(SnapshotMeta, Vec<u8>)>,
    /// Index of `log[0]`. The log may keep a few entries at or below the snapshot index
    /// (trailing entries for slightly lagging followers).
    pub offset: u64,
    pub log: Vec<Entry>,
}

impl Durable {
    pub fn new() -> Durable {
        Durable {
            offset: 1,
            ..Durable::default()
        }
    }

    pub fn first_index(&self) -> u64 {
        if self.log.is_empty() {
            self.snap_meta.last_index + 1
        } else {
            self.offset
        }
    }

    pub fn last_index(&self) -> u64 {
        if self.log.is_empty() {
            self.snap_meta.last_index
        } else {
            self.offset + self.log.len() as u64 - 1
        }
    }

    pub fn entry(&self, index: u64) -> Option<&Entry> {
        if index < self.offset {
            return None;
        }
        self.log.get((index - self.offset) as usize)
    }

    pub fn term(&self, index: u64) -> Option<u64> {
        if let Some(entry) = self.entry(index) {
            return Some(entry.term);
        }
        if index == self.snap_meta.last_index {
            return Some(self.snap_meta.last_term);
        }
        None
    }

    /// Appends `entries`, first truncating a conflicting suffix (the `Ready` contract: a
    /// batch starting at or below the last index replaces everything from its first index).
    /// Returns an error text when the batch leaves a gap, which is a core bug.
    pub fn append(&mut self, entries: &[Entry]) -> Result<(), String> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        let last = self.last_index();
        if first.index > last + 1 {
            return Err(format!(
                "append at index {} leaves a gap after the durable last index {last}",
                first.index
            ));
        }
        if self.log.is_empty() {
            self.offset = first.index;
        } else if first.index < self.offset {
            // Rewriting below the retained log start (at or below the snapshot): keep the
            // log contiguous by starting over from the batch.
            self.log.clear();
            self.offset = first.index;
        } else {
            self.log.truncate((first.index - self.offset) as usize);
        }
        self.log.extend(entries.iter().cloned());
        Ok(())
    }

    /// Drops entries up to `index` (log compaction after a snapshot).
    pub fn compact_to(&mut self, index: u64) {
        if self.log.is_empty() || index < self.offset {
            return;
        }
        let drop = ((index - self.offset + 1) as usize).min(self.log.len());
        self.log.drain(..drop);
        self.offset = index + 1;
    }

    /// Installs a received snapshot (Raft §7): entries it covers go; a suffix that
    /// continues from the snapshot's last entry is kept, anything else is discarded.
    pub fn install_snapshot(&mut self, meta: SnapshotMeta, data: Bytes) {
        let keep_suffix = self.term(meta.last_index) == Some(meta.last_term);
        if keep_suffix {
            self.compact_to(meta.last_index);
        } else {
            self.log.clear();
        }
        if self.log.is_empty() {
            self.offset = meta.last_index + 1;
        }
        self.snap_meta = meta;
        self.snap_data = data;
        self.partial = None;
    }
}

/// The core's view of a node's durable state.
pub struct SimStorage {
    pub durable: Rc<RefCell<Durable>>,
}

impl LogStorage for SimStorage {
    fn first_index(&self) -> u64 {
        self.durable.borrow().first_index()
    }

    fn last_index(&self) -> u64 {
        self.durable.borrow().last_index()
    }

    fn term(&self, index: u64) -> Result<u64, StorageError> {
        let durable = self.durable.borrow();
        if let Some(term) = durable.term(index) {
            return Ok(term);
        }
        if index < durable.first_index() {
            Err(StorageError::NotInLog(NotInLog::Compacted {
                index,
                first_index: durable.first_index(),
            }))
        } else {
            Err(StorageError::NotInLog(NotInLog::Unavailable {
                index,
                last_index: durable.last_index(),
            }))
        }
    }

    fn entries(&self, lo: u64, hi: u64, max_bytes: u64) -> Result<Vec<Entry>, StorageError> {
        let durable = self.durable.borrow();
        let first = durable.first_index();
        if lo < first {
            return Err(StorageError::NotInLog(NotInLog::Compacted {
                index: lo,
                first_index: first,
            }));
        }
        if hi > durable.last_index() + 1 {
            return Err(StorageError::NotInLog(NotInLog::Unavailable {
                index: hi - 1,
                last_index: durable.last_index(),
            }));
        }
        let mut out = Vec::new();
        let mut bytes = 0u64;
        for index in lo..hi {
            let entry = durable
                .entry(index)
                .expect("index checked against first/last above");
            bytes += entry.size_bytes();
            if !out.is_empty() && bytes > max_bytes {
                break;
            }
            out.push(entry.clone());
        }
        Ok(out)
    }

    fn snapshot_meta(&self) -> SnapshotMeta {
        self.durable.borrow().snap_meta.clone()
    }

    fn snapshot_chunk(
        &self,
        meta: &SnapshotMeta,
        offset: u64,
        max_len: u64,
    ) -> Result<(Bytes, bool), StorageError> {
        let durable = self.durable.borrow();
        if durable.snap_meta.last_index != meta.last_index
            || durable.snap_meta.last_term != meta.last_term
            || meta.last_index == 0
        {
            return Err(StorageError::SnapshotReplaced {
                requested: meta.last_index,
                current: durable.snap_meta.last_index,
            });
        }
        let len = durable.snap_data.len() as u64;
        let start = offset.min(len);
        let end = start.saturating_add(max_len.max(1)).min(len);
        Ok((
            durable.snap_data.slice(start as usize..end as usize),
            end == len,
        ))
    }
}

#[cfg(test)]
mod conformance {
    use std::cell::RefCell;
    use std::rc::Rc;

    use bytes::Bytes;
    use raftlog::raft::storage_conformance::{check_all, StorageUnderTest};
    use raftlog::raft::{Entry, SnapshotMeta};

    use super::{Durable, SimStorage};

    impl StorageUnderTest for SimStorage {
        type Storage = SimStorage;
        fn storage(&self) -> &SimStorage {
            self
        }
        fn append(&mut self, entries: &[Entry]) {
            let appended = self.durable.borrow_mut().append(entries);
            appended.unwrap_or_else(|e| panic!("{e}"));
        }
        fn take_snapshot(&mut self, meta: SnapshotMeta, data: Bytes) {
            let mut durable = self.durable.borrow_mut();
            durable.snap_meta = meta;
            durable.snap_data = data;
        }
        fn compact(&mut self, upto: u64) {
            self.durable.borrow_mut().compact_to(upto);
        }
        fn install_snapshot(&mut self, meta: SnapshotMeta, data: Bytes) {
            self.durable.borrow_mut().install_snapshot(meta, data);
        }
    }

    /// The simulator's disk answers the core as the node's and MemStorage do.
    #[test]
    fn sim_storage_conforms() {
        check_all(|| SimStorage {
            durable: Rc::new(RefCell::new(Durable::new())),
        });
    }
}
