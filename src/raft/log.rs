//! The core's view of the log: durable entries read through [`LogStorage`], plus the
//! unstable tail the driver has not yet reported durable, plus commit/apply bookkeeping.
//!
//! Index ranges, low to high:
//! ```text
//!   first_index-1 .. applied <= applying <= commit          (commit <= last_index)
//!   storage: [first_index, unstable_offset)   unstable: [unstable_offset, last_index]
//!   kept (a copy of storage): [unstable_offset - kept.len(), unstable_offset)
//!   taken_to: last index handed out in a Ready;  persisted: last index reported durable
//! ```
//! Entries from `unstable_offset` on are always read from memory: the driver may hold older,
//! conflicting entries there until it processes the `Ready` that truncates them.
//!
//! Durable entries not yet handed out to apply stay in memory too (`kept`), so that applying
//! them, moments after they became durable, does not read back what was just written: a
//! read of the driver's log decodes, checks and copies every entry (issue 14: about a
//! thirtieth of a put's instructions over the cluster).

use std::collections::VecDeque;
use std::sync::OnceLock;

use super::{Entry, LogStorage, SnapshotMeta, StorageError};

/// The most payload [`RaftLog`] keeps of durable entries not yet applied; past it, applying
/// reads them from storage. Entries are handed out to apply at most `max_apply_bytes` (4 MiB
/// by default) per `Ready`, so this is reached only when applying falls far behind.
const KEPT_BYTES_MAX: u64 = 16 << 20;

/// Log state of one core.
pub(crate) struct RaftLog<S: LogStorage> {
    pub(crate) storage: S,
    /// Entries not yet reported durable, starting at `unstable_offset`.
    unstable: Vec<Entry>,
    unstable_offset: u64,
    /// Durable entries not yet handed out to apply, ending at `unstable_offset - 1`: the
    /// same entries storage holds (the ones this log handed out to persist), read from
    /// here instead. At most [`KEPT_BYTES_MAX`] of payload; the oldest go first.
    kept: VecDeque<Entry>,
    kept_bytes: u64,
    /// A snapshot received from the leader that the driver has not yet reported installed;
    /// while set, the log (as seen by the core) starts right after it.
    pending_snapshot: Option<SnapshotMeta>,
    /// Whether `pending_snapshot` was handed out in a Ready.
    pending_snapshot_taken: bool,
    /// Last index handed out to the driver in `Ready::entries`.
    taken_to: u64,
    /// Last index the driver reported durable. Invariant: `persisted <= taken_to`.
    persisted: u64,
    /// Invariant: `commit <= last_index()`; never decreases.
    commit: u64,
    /// Last index handed out in `Ready::committed_entries`. Invariant: `applying <= commit`.
    applying: u64,
    /// Last index the driver reported applied. Invariant: `applied <= applying`.
    applied: u64,
    /// A snapshot's last chunk was handed out and its install not yet reported: the
    /// driver's storage may already hold it, so committed entries it covers may be gone
    /// from storage and are not handed out meanwhile.
    installing: bool,
    /// The first [`StorageError::Fatal`] a read returned. Reads take `&self`, hence the
    /// cell; once set the core hands nothing out any more.
    fatal: OnceLock<StorageError>,
}

impl<S: LogStorage> RaftLog<S> {
    /// Restores from durable storage: everything in it is persisted; the snapshot is
    /// committed and applied (the driver restores its state machine from it).
    pub(crate) fn new(storage: S) -> RaftLog<S> {
        let last = storage.last_index();
        let snap = storage.snapshot_meta().last_index;
        RaftLog {
            storage,
            unstable: Vec::new(),
            unstable_offset: last + 1,
            kept: VecDeque::new(),
            kept_bytes: 0,
            pending_snapshot: None,
            pending_snapshot_taken: false,
            taken_to: last,
            persisted: last,
            commit: snap,
            applying: snap,
            applied: snap,
            installing: false,
            fatal: OnceLock::new(),
        }
    }

    /// The storage failure that stopped this log, if any.
    pub(crate) fn fatal(&self) -> Option<&StorageError> {
        self.fatal.get()
    }

    /// Keeps the expected outcomes (`Compacted`, `Unavailable`, ...) as `None` for the
    /// callers, but records a fatal one: it must never pass for compaction.
    pub(crate) fn stored<T>(&self, read: Result<T, StorageError>) -> Option<T> {
        match read {
            Ok(v) => Some(v),
            Err(e @ StorageError::Fatal(_)) => {
                let _ = self.fatal.set(e);
                None
            }
            Err(_) => None,
        }
    }

    pub(crate) fn first_index(&self) -> u64 {
        match &self.pending_snapshot {
            Some(meta) => meta.last_index + 1,
            None => self.storage.first_index(),
        }
    }

    pub(crate) fn last_index(&self) -> u64 {
        match self.unstable.last() {
            Some(e) => e.index,
            None => self.unstable_offset - 1,
        }
    }

    pub(crate) fn last_term(&self) -> u64 {
        let last = self.last_index();
        let term = self.term(last);
        if self.fatal().is_some() {
            // The core stops handing anything out; any answer will do until the driver
            // stops the node.
            return term.unwrap_or(0);
        }
        term.unwrap_or_else(|| {
            panic!(
                "log: no term for the last index {last} (first index {})",
                self.first_index()
            )
        })
    }

    /// The term at `index`, if the core can still see it (also for `first_index() - 1`).
    pub(crate) fn term(&self, index: u64) -> Option<u64> {
        if index >= self.unstable_offset {
            return self
                .unstable
                .get((index - self.unstable_offset) as usize)
                .map(|e| e.term);
        }
        if index >= self.kept_offset() {
            return Some(self.kept[(index - self.kept_offset()) as usize].term);
        }
        if let Some(meta) = &self.pending_snapshot {
            return match index.cmp(&meta.last_index) {
                std::cmp::Ordering::Less => None,
                std::cmp::Ordering::Equal => Some(meta.last_term),
                std::cmp::Ordering::Greater => self.stored(self.storage.term(index)),
            };
        }
        if index == 0 {
            return Some(0);
        }
        self.stored(self.storage.term(index))
    }

    pub(crate) fn matches(&self, index: u64, term: u64) -> bool {
        self.term(index) == Some(term)
    }

    /// Whether a log ending at `(last_index, last_term)` is at least as up to date as
    /// this one (Raft §5.4.1).
    pub(crate) fn is_up_to_date(&self, last_index: u64, last_term: u64) -> bool {
        let my_term = self.last_term();
        last_term > my_term || (last_term == my_term && last_index >= self.last_index())
    }

    /// Entries in `[lo, hi)` up to `max_bytes` (at least one when `lo < hi`); `None` if
    /// some of them are compacted (the caller sends a snapshot instead) or the storage
    /// failed (see [`RaftLog::fatal`]).
    pub(crate) fn entries(&self, lo: u64, hi: u64, max_bytes: u64) -> Option<Vec<Entry>> {
        assert!(
            hi <= self.last_index() + 1,
            "log: entries [{lo}, {hi}) beyond the last index {}",
            self.last_index()
        );
        if lo >= hi {
            return Some(Vec::new());
        }
        if lo < self.first_index() {
            return None;
        }
        let mut out = Vec::new();
        let mut size = 0u64;
        let in_memory = self.kept_offset();
        if lo < in_memory {
            let stored_hi = hi.min(in_memory);
            out = self.stored(self.storage.entries(lo, stored_hi, max_bytes))?;
            size = out.iter().map(Entry::size_bytes).sum();
            let complete = out.last().map(|e| e.index + 1) == Some(stored_hi);
            if !complete || size >= max_bytes || stored_hi == hi {
                return Some(out);
            }
        }
        let start = lo.max(in_memory);
        let kept_lo = start.min(self.unstable_offset);
        let kept_hi = hi.clamp(kept_lo, self.unstable_offset);
        let kept = self
            .kept
            .range((kept_lo - in_memory) as usize..(kept_hi - in_memory) as usize);
        let unstable_lo = start.max(self.unstable_offset);
        let unstable_hi = hi.max(unstable_lo);
        let unstable = self.unstable[(unstable_lo - self.unstable_offset) as usize
            ..(unstable_hi - self.unstable_offset) as usize]
            .iter();
        for entry in kept.chain(unstable) {
            size += entry.size_bytes();
            if !out.is_empty() && size > max_bytes {
                break;
            }
            out.push(entry.clone());
        }
        Some(out)
    }

    /// The first index held in memory (`kept`, then `unstable`).
    fn kept_offset(&self) -> u64 {
        self.unstable_offset - self.kept.len() as u64
    }

    fn drop_oldest_kept(&mut self) {
        if let Some(entry) = self.kept.pop_front() {
            self.kept_bytes -= entry.size_bytes();
        }
    }

    fn clear_kept(&mut self) {
        self.kept.clear();
        self.kept_bytes = 0;
    }

    /// Appends entries the leader created (no truncation).
    pub(crate) fn append_local(&mut self, entry: Entry) {
        assert!(
            entry.index == self.last_index() + 1,
            "log: local append of entry {} after last index {}",
            entry.index,
            self.last_index()
        );
        self.unstable.push(entry);
    }

    /// Stores entries from the leader that are not in the log yet; `new[0].index - 1` must
    /// already match. A conflicting suffix from `new[0].index` is dropped first (Raft §5.3).
    pub(crate) fn append_new(&mut self, new: Vec<Entry>) {
        let Some(first) = new.first() else {
            return;
        };
        let at = first.index;
        assert!(
            at > self.commit && at <= self.last_index() + 1,
            "log: new entries at {at} conflict with the committed prefix (commit {}) or leave a gap (last {})",
            self.commit,
            self.last_index()
        );
        self.truncate_from(at);
        self.unstable.extend(new);
    }

    /// Drops entries from `at` on (in memory only; the driver truncates when the next
    /// `Ready` hands it entries starting at `at`).
    fn truncate_from(&mut self, at: u64) {
        if at >= self.unstable_offset {
            self.unstable.truncate((at - self.unstable_offset) as usize);
        } else {
            self.unstable.clear();
            while self.kept.back().is_some_and(|e| e.index >= at) {
                if let Some(entry) = self.kept.pop_back() {
                    self.kept_bytes -= entry.size_bytes();
                }
            }
            self.unstable_offset = at;
        }
        self.taken_to = self.taken_to.min(at - 1);
        self.persisted = self.persisted.min(at - 1);
    }

    /// Makes a snapshot from the leader the start of the log (Raft §7) when the log does
    /// not hold its last entry: the whole log is discarded. (A log that holds it is kept;
    /// the caller only advances the commit index then, so that a persistence report can
    /// never be mistaken for the snapshot's installation.)
    pub(crate) fn restore(&mut self, meta: SnapshotMeta) {
        assert!(
            meta.last_index > self.commit,
            "log: restoring a stale snapshot at {} (commit {})",
            meta.last_index,
            self.commit
        );
        // Not asserted here that the log lacks the snapshot's last entry: the caller checked
        // that when it accepted the snapshot, and the driver's storage, which this log
        // reads, already holds the snapshot by now.
        self.unstable.clear();
        self.clear_kept();
        self.unstable_offset = meta.last_index + 1;
        // Durable entries beyond the old commit index may conflict with the snapshot;
        // until the install is reported only the committed prefix is known to match.
        self.persisted = self.persisted.min(self.commit);
        // Nothing after the snapshot has been handed out in this log's history.
        self.taken_to = meta.last_index;
        self.commit = meta.last_index;
        self.applying = self.applying.max(meta.last_index);
        self.pending_snapshot = Some(meta);
        self.pending_snapshot_taken = false;
    }

    pub(crate) fn begin_install(&mut self) {
        self.installing = true;
    }

    pub(crate) fn end_install(&mut self) {
        self.installing = false;
    }

    /// The driver installed the snapshot just restored: it is durable and the state
    /// machine reflects it.
    pub(crate) fn complete_install(&mut self) {
        if let Some(meta) = self.pending_snapshot.take() {
            self.pending_snapshot_taken = false;
            self.applied = self.applied.max(meta.last_index);
            self.persisted = self.persisted.max(meta.last_index);
        }
    }

    /// The pending snapshot, once, for a `Ready`.
    pub(crate) fn take_pending_snapshot(&mut self) -> bool {
        let untaken = self.pending_snapshot.is_some() && !self.pending_snapshot_taken;
        self.pending_snapshot_taken |= untaken;
        untaken
    }

    /// Unstable entries not yet handed out.
    pub(crate) fn has_entries_to_persist(&self) -> bool {
        self.last_index() > self.taken_to
    }

    pub(crate) fn take_entries_to_persist(&mut self) -> Vec<Entry> {
        if !self.has_entries_to_persist() {
            return Vec::new();
        }
        let from = (self.taken_to + 1 - self.unstable_offset) as usize;
        let out = self.unstable[from..].to_vec();
        self.taken_to = self.last_index();
        out
    }

    /// The driver made everything up to `(index, term)` durable. Stale reports (the entry
    /// was truncated since) are ignored.
    pub(crate) fn on_persisted(&mut self, index: u64, term: u64) {
        if !self.matches(index, term) {
            return;
        }
        // A matching report at or beyond the snapshot's last entry can only be for the
        // snapshot's Ready or a later one (the discarded log did not hold that entry, and
        // by Log Matching no entry after it either), so it covers the installation.
        if let Some(meta) = &self.pending_snapshot {
            if self.pending_snapshot_taken && index >= meta.last_index {
                let last = meta.last_index;
                self.pending_snapshot = None;
                self.applied = self.applied.max(last);
                self.persisted = self.persisted.max(last);
            }
        }
        let upto = index.min(self.taken_to);
        self.persisted = self.persisted.max(upto);
        if upto >= self.unstable_offset {
            let durable = (upto + 1 - self.unstable_offset) as usize;
            for entry in self.unstable.drain(..durable) {
                self.kept_bytes += entry.size_bytes();
                self.kept.push_back(entry);
            }
            while self.kept_bytes > KEPT_BYTES_MAX {
                self.drop_oldest_kept();
            }
            self.unstable_offset = upto + 1;
        }
    }

    pub(crate) fn persisted(&self) -> u64 {
        self.persisted
    }

    pub(crate) fn commit(&self) -> u64 {
        self.commit
    }

    pub(crate) fn applied(&self) -> u64 {
        self.applied
    }

    pub(crate) fn commit_to(&mut self, index: u64) {
        assert!(
            index >= self.commit,
            "log: commit index would go back from {} to {index}",
            self.commit
        );
        assert!(
            index <= self.last_index(),
            "log: commit index {index} beyond the last index {}",
            self.last_index()
        );
        self.commit = index;
    }

    /// Whether committed, durable entries wait to be handed out.
    pub(crate) fn has_entries_to_apply(&self) -> bool {
        !self.installing && self.commit.min(self.persisted) > self.applying
    }

    pub(crate) fn take_entries_to_apply(&mut self, max_bytes: u64) -> Vec<Entry> {
        let hi = self.commit.min(self.persisted);
        if hi <= self.applying || self.installing {
            return Vec::new();
        }
        let lo = self.applying + 1;
        let read = self.entries(lo, hi + 1, max_bytes);
        if self.fatal().is_some() {
            return Vec::new();
        }
        let out = read.unwrap_or_else(|| {
            panic!(
                "log: committed entries [{lo}, {hi}] not applied yet are compacted (first index {})",
                self.first_index()
            )
        });
        if let Some(last) = out.last() {
            self.applying = last.index;
        }
        while self.kept.front().is_some_and(|e| e.index <= self.applying) {
            self.drop_oldest_kept();
        }
        out
    }

    pub(crate) fn on_applied(&mut self, index: u64) {
        assert!(
            index <= self.applying,
            "log: applied {index} reported beyond the entries handed out ({})",
            self.applying
        );
        self.applied = self.applied.max(index);
    }

    pub(crate) fn snapshot_index(&self) -> u64 {
        match &self.pending_snapshot {
            Some(meta) => meta.last_index,
            None => self.storage.snapshot_meta().last_index,
        }
    }

    /// Index of the last entry with a term `<= term`, at or below `index` (terms never
    /// decrease along the log, so a binary search works). `None` if compacted.
    pub(crate) fn last_index_with_term_at_most(&self, index: u64, term: u64) -> Option<u64> {
        let mut lo = self.first_index() - 1;
        let mut hi = index.min(self.last_index());
        if self.term(lo)? > term {
            return None;
        }
        // Invariant: term(lo) <= term; answer in [lo, hi].
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            if self.term(mid)? <= term {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        Some(lo)
    }

    /// The first index in `(floor, index]` whose term equals the term at `index`.
    pub(crate) fn first_index_of_term(&self, index: u64, floor: u64) -> u64 {
        let Some(term) = self.term(index) else {
            return index;
        };
        let mut lo = floor.max(self.first_index() - 1) + 1;
        let mut hi = index;
        // Invariant: term(hi) == term; answer in [lo, hi].
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.term(mid) == Some(term) {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        hi
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::test_cluster::{ent, storage_with};
    use crate::raft::MemStorage;
    use bytes::Bytes;

    fn log_with(terms: &[u64]) -> RaftLog<MemStorage> {
        RaftLog::new(storage_with(terms))
    }

    #[test]
    fn unstable_entries_are_readable_and_handed_out_once() {
        let mut log = log_with(&[1, 1]);
        log.append_local(ent(3, 2));
        log.append_local(ent(4, 2));
        assert_eq!(log.entries(2, 5, u64::MAX).unwrap().len(), 3);
        assert_eq!(log.take_entries_to_persist(), vec![ent(3, 2), ent(4, 2)]);
        assert!(log.take_entries_to_persist().is_empty());
        assert_eq!(log.persisted(), 2);
    }

    #[test]
    fn append_from_leader_truncates_conflict_in_storage() {
        let mut log = log_with(&[1, 1, 1, 1]);
        log.append_new(vec![ent(3, 2)]);
        assert_eq!(log.last_index(), 3);
        assert_eq!(log.term(3), Some(2));
        assert_eq!(log.persisted(), 2);
        assert_eq!(log.take_entries_to_persist(), vec![ent(3, 2)]);
    }

    #[test]
    fn stale_persist_report_is_ignored_after_truncation() {
        let mut log = log_with(&[1]);
        log.append_new(vec![ent(2, 1), ent(3, 1)]);
        log.take_entries_to_persist();
        log.append_new(vec![ent(3, 2)]);
        log.take_entries_to_persist();
        log.on_persisted(3, 1);
        assert_eq!(log.persisted(), 1);
        log.on_persisted(3, 2);
        assert_eq!(log.persisted(), 3);
    }

    #[test]
    fn applies_only_committed_and_persisted_entries() {
        let mut log = log_with(&[1, 1]);
        log.append_local(ent(3, 1));
        log.commit_to(3);
        assert_eq!(log.take_entries_to_apply(u64::MAX).len(), 2);
        let new = log.take_entries_to_persist();
        log.storage.append(&new);
        log.on_persisted(3, 1);
        assert_eq!(log.take_entries_to_apply(u64::MAX), vec![ent(3, 1)]);
        assert!(!log.has_entries_to_apply());
    }

    #[test]
    fn binary_searches_find_term_boundaries() {
        let log = log_with(&[1, 1, 2, 2, 2, 4]);
        assert_eq!(log.last_index_with_term_at_most(6, 3), Some(5));
        assert_eq!(log.last_index_with_term_at_most(6, 1), Some(2));
        assert_eq!(log.last_index_with_term_at_most(6, 0), Some(0));
        assert_eq!(log.first_index_of_term(5, 0), 3);
        assert_eq!(log.first_index_of_term(5, 3), 4);
    }

    #[test]
    fn restore_discards_the_log_and_waits_for_install_report() {
        let mut log = log_with(&[1, 1, 2, 2]);
        log.append_new(vec![ent(5, 2)]);
        log.take_entries_to_persist();
        let meta = SnapshotMeta {
            last_index: 9,
            last_term: 3,
            membership: Default::default(),
        };
        log.restore(meta);
        assert_eq!(
            (log.first_index(), log.last_index(), log.commit()),
            (10, 9, 9)
        );
        assert_eq!(log.term(9), Some(3));
        assert!(log.take_entries_to_persist().is_empty());
        assert_eq!(log.persisted(), 0, "entries 1..4 are not the snapshot's");
        // The report for the earlier Ready (entry 5) does not cover the install.
        log.on_persisted(5, 2);
        assert_eq!((log.applied(), log.persisted()), (0, 0));
        assert!(log.take_pending_snapshot());
        log.on_persisted(9, 3);
        assert_eq!((log.applied(), log.persisted()), (9, 9));
    }

    #[test]
    fn entries_ending_inside_the_stored_part_do_not_read_unstable() {
        let mut log = log_with(&[1, 1, 1]);
        log.append_local(ent(4, 1));
        let got = log.entries(2, 3, u64::MAX).unwrap();
        assert_eq!(got, vec![ent(2, 1)]);
        let got = log.entries(1, 4, u64::MAX).unwrap();
        assert_eq!(got.len(), 3);
        log.commit_to(4);
        assert_eq!(log.take_entries_to_apply(u64::MAX).len(), 3);
    }
    /// Applying reads entries made durable moments ago from memory: storage here lacks
    /// them (as if the driver's log could not be read), and they are still handed out.
    #[test]
    fn durable_entries_are_applied_from_memory_not_read_back() {
        let mut log = log_with(&[1, 1]);
        log.commit_to(2);
        assert_eq!(log.take_entries_to_apply(u64::MAX).len(), 2);
        log.append_local(ent(3, 1));
        log.append_local(ent(4, 1));
        assert_eq!(log.take_entries_to_persist().len(), 2);
        log.on_persisted(4, 1);
        assert_eq!(log.term(3), Some(1));
        assert_eq!(
            log.entries(3, 5, u64::MAX),
            Some(vec![ent(3, 1), ent(4, 1)])
        );
        log.commit_to(4);
        assert_eq!(
            log.take_entries_to_apply(u64::MAX),
            vec![ent(3, 1), ent(4, 1)]
        );
        assert!(
            log.kept.is_empty(),
            "entries handed out to apply are not kept"
        );
    }

    /// Any range of the in-memory part reads right: inside the kept entries, across them
    /// into the unstable ones, and inside the unstable ones alone.
    #[test]
    fn every_range_of_kept_and_unstable_entries_reads_right() {
        let mut log = log_with(&[1]);
        for index in 2..=3 {
            log.append_local(ent(index, 1));
        }
        log.take_entries_to_persist();
        log.on_persisted(3, 1);
        for index in 4..=5 {
            log.append_local(ent(index, 2));
        }
        let terms = [0, 1, 1, 1, 2, 2];
        for lo in 1..=6 {
            for hi in lo..=6 {
                let got = log.entries(lo, hi, u64::MAX);
                let want: Vec<Entry> = (lo..hi).map(|i| ent(i, terms[i as usize])).collect();
                assert_eq!(got, Some(want), "entries [{lo}, {hi})");
            }
        }
    }

    /// Kept entries are a copy of storage: a leader's conflicting entries replace them as
    /// they replace the stored ones (Raft §5.3).
    #[test]
    fn a_conflicting_append_drops_kept_entries_from_the_conflict_on() {
        let mut log = log_with(&[1]);
        for index in 2..=4 {
            log.append_local(ent(index, 1));
        }
        let new = log.take_entries_to_persist();
        log.storage.append(&new);
        log.on_persisted(4, 1);
        assert_eq!(log.kept.len(), 3);
        log.append_new(vec![ent(3, 2)]);
        assert_eq!(
            (log.kept.len(), log.kept_bytes),
            (1, ent(2, 1).size_bytes())
        );
        assert_eq!(log.last_index(), 3);
        assert_eq!(log.term(2), Some(1));
        assert_eq!(log.term(3), Some(2));
        assert_eq!(
            log.entries(2, 4, u64::MAX),
            Some(vec![ent(2, 1), ent(3, 2)])
        );
    }

    /// Memory stays bounded when applying falls behind: past the cap the oldest kept entries
    /// are read from storage again.
    #[test]
    fn kept_entries_are_capped_and_the_rest_read_from_storage() {
        let mut log = log_with(&[]);
        let entry = |index| Entry {
            payload: Bytes::from(vec![7u8; 1 << 20]),
            ..ent(index, 1)
        };
        let count = KEPT_BYTES_MAX / (1 << 20) + 4;
        for index in 1..=count {
            log.append_local(entry(index));
        }
        let new = log.take_entries_to_persist();
        log.storage.append(&new);
        log.on_persisted(count, 1);
        assert!(log.kept_bytes <= KEPT_BYTES_MAX);
        assert_eq!(log.kept.back().map(|e| e.index), Some(count));
        assert!(log.kept_offset() > 1);
        log.commit_to(count);
        let applied = log.take_entries_to_apply(u64::MAX);
        assert_eq!(applied.len() as u64, count);
        assert!(applied
            .iter()
            .enumerate()
            .all(|(i, e)| e.index == i as u64 + 1));
    }
}
