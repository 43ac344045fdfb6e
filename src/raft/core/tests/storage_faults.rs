//! Storage faults seen through the core: a damaged log is fatal, never mistaken for a
//! Raft state such as compaction.

use super::*;

/// MemStorage whose reads of entries from `corrupt_from` up to (not including) the
/// last one fail as a damaged WAL record would.
struct CorruptReads {
    inner: MemStorage,
    corrupt_from: u64,
    /// Off while the core is built (it reads the whole log for the membership then).
    armed: bool,
}

impl CorruptReads {
    fn corruption(&self, index: u64) -> StorageError {
        StorageError::Fatal(format!(
            "corruption in 00000000000000000001.wal at offset 4096 (near entry {index}): crc mismatch"
        ))
    }
}

impl LogStorage for CorruptReads {
    fn first_index(&self) -> u64 {
        self.inner.first_index()
    }
    fn last_index(&self) -> u64 {
        self.inner.last_index()
    }
    fn term(&self, index: u64) -> Result<u64, StorageError> {
        if self.armed && index >= self.corrupt_from && index < self.inner.last_index() {
            return Err(self.corruption(index));
        }
        self.inner.term(index)
    }
    fn entries(&self, lo: u64, hi: u64, max_bytes: u64) -> Result<Vec<Entry>, StorageError> {
        if self.armed && hi > self.corrupt_from && lo < self.inner.last_index() {
            return Err(self.corruption(lo.max(self.corrupt_from)));
        }
        self.inner.entries(lo, hi, max_bytes)
    }
    fn snapshot_meta(&self) -> SnapshotMeta {
        self.inner.snapshot_meta()
    }
    fn snapshot_chunk(
        &self,
        meta: &SnapshotMeta,
        offset: u64,
        max_len: u64,
    ) -> Result<(Bytes, bool), StorageError> {
        self.inner.snapshot_chunk(meta, offset, max_len)
    }
}

/// Implementation rule: Raft §7 makes compaction the only reason a leader may lack an entry a
/// follower needs, and a record that fails its CRC is not that.
///
/// Issue 11, item 8: a corrupt record read back from the log is not compaction. The
/// leader must stop (report the error), not send the follower a snapshot instead.
#[test]
fn corrupt_log_read_is_fatal_not_compaction() {
    let mut inner = storage_with(&[1, 1, 1, 1, 1, 1]);
    let meta = SnapshotMeta {
        last_index: 2,
        last_term: 1,
        membership: voters(&[1, 2]),
    };
    inner.set_snapshot(meta, Bytes::from_static(b"snap"));
    let storage = CorruptReads {
        inner,
        corrupt_from: 4,
        armed: false,
    };
    let mut config = test_config(1);
    config.pre_vote = false;
    let hs = HardState {
        term: 1,
        voted_for: None,
    };
    let mut core = RaftCore::new(config, storage, hs, voters(&[1, 2]));
    for _ in 0..100 {
        if core.status().role == Role::Candidate {
            break;
        }
        core.tick();
    }
    let _ = core.take_ready();
    core.step(Envelope {
        from: 2,
        to: 1,
        message: Message::RequestVoteResponse {
            term: 2,
            granted: true,
        },
    });
    assert_eq!(core.status().role, Role::Leader);
    core.storage_mut().armed = true;
    // The follower has entries up to 3: the leader must read 4.. to catch it up.
    core.step(Envelope {
        from: 2,
        to: 1,
        message: Message::AppendEntriesResponse {
            term: 2,
            success: false,
            match_index: 3,
            conflict_term: 0,
            conflict_index: 4,
            read_ctx: 0,
        },
    });
    let rd = core.take_ready();
    let snapshots: Vec<&Envelope> = rd
        .messages
        .iter()
        .filter(|e| matches!(e.message, Message::InstallSnapshot { .. }))
        .collect();
    assert!(
        snapshots.is_empty(),
        "a corrupt read sent the leader down the snapshot path: {snapshots:?}"
    );
    let fatal = core.fatal().expect("the corrupt read is reported");
    assert!(fatal.to_string().contains("offset 4096"), "{fatal}");
    // Nothing decided after the fault leaves the core.
    core.tick();
    assert!(!core.has_ready());
    assert!(core.take_ready().is_empty());
}
