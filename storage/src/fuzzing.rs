//! Fuzz entry points for the storage crate, shared by the cargo-fuzz targets in `fuzz/` and
//! the corpus replay test `storage/tests/fuzz_corpus.rs` (which runs every committed seed
//! and regression on stable, so a finding stays fixed).
//!
//! Each function takes arbitrary bytes, never fails to decode them (an exhausted input
//! reads as zeros), and panics only when the property it checks is broken:
//!
//! | entry                 | the bytes are                                  | the property                                                   |
//! |-----------------------|------------------------------------------------|----------------------------------------------------------------|
//! | [`wal_recovery`]      | appends/truncations/compactions, then damage   | opens to entries that were written at their index, or refuses  |
//! | [`wal_model`]         | ops incl. crashes, power cuts, reopens         | the log equals a `Vec` model of what was acknowledged          |
//! | [`snapshot_reader`]   | a snapshot file                                | a typed error, or a payload the receiver accepts too           |
//! | [`snapshot_receiver`] | a chunking plan and an InstallSnapshot stream  | a typed error, or an installed file that verifies              |
//!
//! Files go to a scratch directory under `$TMPDIR` (`fuzz/run.sh` points it at `/dev/shm`,
//! so the WAL targets run against tmpfs, not the disk).
#![doc(hidden)]

use crate::error::NotInLog;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use crate::snapshot::SnapshotStore;
use crate::wal::{PowerCutFs, StdFs, Wal, WalOptions};
use crate::{Entry, EntryKind, Error, Member, Membership, SnapshotMeta};

/// A directory removed when dropped. Hand-written rather than `tempfile` so the library
/// takes no dependency for its fuzz entry points.
pub struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    /// Creates a fresh, empty directory under [`std::env::temp_dir`].
    pub fn new(what: &str) -> ScratchDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("raftlog-fuzz-{what}-{}-{n}", std::process::id()));
        // A leftover of a killed run with the same pid: start clean.
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("fuzz harness: create {}: {e}", path.display()));
        ScratchDir { path }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The fuzz input, read front to back; zeros once exhausted.
pub struct Input<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Input<'a> {
    /// Reads `data` from its start.
    pub fn new(data: &'a [u8]) -> Input<'a> {
        Input { data, pos: 0 }
    }

    /// Whether every byte was read.
    pub fn exhausted(&self) -> bool {
        self.pos >= self.data.len()
    }

    /// The next byte, 0 past the end.
    pub fn byte(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }

    /// The next two bytes, little-endian.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    /// The next eight bytes, little-endian.
    pub fn u64(&mut self) -> u64 {
        let mut v = [0u8; 8];
        for b in &mut v {
            *b = self.byte();
        }
        u64::from_le_bytes(v)
    }

    /// Everything not read yet.
    pub fn rest(&mut self) -> &'a [u8] {
        let rest = self.data.get(self.pos..).unwrap_or(&[]);
        self.pos = self.data.len();
        rest
    }
}

// ---------------------------------------------------------------------------------------
// WAL: the operations both WAL targets decode.

/// A change to the log, with its arguments still relative to the log's bounds. Shared
/// with the proptest model test (`storage/tests/wal_model.rs`), which draws picks from
/// the whole `u16` range; the fuzz inputs give a byte.
#[derive(Clone, Copy, Debug)]
pub enum Mutation {
    /// Append `count` entries of `len` bytes; `new_term` bumps the term first.
    Append {
        /// Entries in the batch.
        count: u64,
        /// Payload bytes of each (0: a no-op entry).
        len: usize,
        /// Whether the batch starts a new term.
        new_term: bool,
    },
    /// Truncate from a point chosen by `pick` in `[first - 1, last + 1]`.
    Truncate {
        /// Chooses the point, modulo the range.
        pick: u16,
    },
    /// Compact up to a point chosen by `pick` in `[first - 2, last + 3]`.
    Compact {
        /// Chooses the point, modulo the range.
        pick: u16,
    },
}

/// Three bytes: kind (appends are 6 in 8, truncations and compactions 1 in 8 each),
/// then two arguments.
fn mutation(input: &mut Input) -> Mutation {
    let kind = input.byte();
    let (a, b) = (input.byte(), input.byte());
    match kind % 8 {
        6 => Mutation::Truncate { pick: a.into() },
        7 => Mutation::Compact { pick: a.into() },
        _ => Mutation::Append {
            count: u64::from(a % 12) + 1,
            len: usize::from(b % 100),
            new_term: kind & 0x80 != 0,
        },
    }
}

/// The log the WAL must hold.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Model {
    first: u64,
    entries: Vec<Entry>,
    term: u64,
}

impl Model {
    fn new() -> Model {
        Model {
            first: 1,
            entries: Vec::new(),
            term: 1,
        }
    }

    fn last(&self) -> u64 {
        self.first + self.entries.len() as u64 - 1
    }
}

/// A payload that differs with index and term, so an entry read at the wrong index or
/// from an earlier life of the log does not compare equal.
fn payload(index: u64, term: u64, len: usize) -> Bytes {
    (0..len)
        .map(|i| (index as u8).wrapping_mul(31) ^ (term as u8) ^ (i as u8))
        .collect::<Vec<u8>>()
        .into()
}

/// What a mutation does once resolved against the model's bounds.
#[derive(Debug)]
enum Resolved {
    Append(Vec<Entry>),
    Truncate(u64),
    Compact(u64),
}

fn resolve(model: &Model, m: Mutation) -> Resolved {
    let span = |lo: u64, hi: u64, pick: u16| lo + u64::from(pick) % (hi - lo + 1);
    match m {
        Mutation::Append {
            count,
            len,
            new_term,
        } => {
            let term = model.term + u64::from(new_term);
            let next = model.last() + 1;
            Resolved::Append(
                (next..next + count)
                    .map(|index| Entry {
                        index,
                        term,
                        kind: if len == 0 {
                            EntryKind::Noop
                        } else {
                            EntryKind::Normal
                        },
                        payload: payload(index, term, len),
                    })
                    .collect(),
            )
        }
        Mutation::Truncate { pick } => Resolved::Truncate(span(
            model.first.saturating_sub(1).max(1),
            model.last() + 1,
            pick,
        )),
        Mutation::Compact { pick } => {
            Resolved::Compact(span(model.first.saturating_sub(2), model.last() + 3, pick))
        }
    }
}

/// The model after `r`; `None` when the WAL must refuse it (truncating compacted entries).
fn apply(model: &Model, r: &Resolved) -> Option<Model> {
    let mut next = model.clone();
    match r {
        Resolved::Append(entries) => {
            if let Some(e) = entries.first() {
                next.term = e.term;
            }
            next.entries.extend(entries.iter().cloned());
        }
        Resolved::Truncate(from) => {
            if *from > model.last() {
                return Some(next);
            }
            if *from < model.first {
                return None;
            }
            next.entries.truncate((from - model.first) as usize);
        }
        Resolved::Compact(upto) => {
            if *upto >= model.first {
                if *upto >= model.last() {
                    next.entries.clear();
                } else {
                    next.entries.drain(..(upto + 1 - model.first) as usize);
                }
                next.first = upto + 1;
            }
        }
    }
    Some(next)
}

fn run(wal: &Wal, r: &Resolved) -> crate::Result<()> {
    match r {
        Resolved::Append(entries) => wal.append(entries),
        Resolved::Truncate(from) => wal.truncate_suffix(*from),
        Resolved::Compact(upto) => wal.compact_prefix(*upto),
    }
}

/// Runs `m` on the WAL and the model, which must agree on the outcome.
fn run_acknowledged(wal: &Wal, model: &mut Model, m: Mutation, context: &str) {
    let r = resolve(model, m);
    match (apply(model, &r), run(wal, &r)) {
        (Some(next), Ok(())) => *model = next,
        (None, Err(Error::NotInLog(NotInLog::Compacted { .. }))) => {}
        (expected, got) => panic!("{context}: {r:?}: model {expected:?}, WAL {got:?}"),
    }
}

/// Every entry of the log, read in chunks as a follower's catch-up does.
fn read_back(wal: &Wal, context: &str) -> (u64, Vec<Entry>) {
    let (first, last) = (wal.first_index(), wal.last_index());
    assert!(last + 1 >= first, "{context}: first {first}, last {last}");
    let mut out = Vec::new();
    let mut lo = first;
    while lo <= last {
        let chunk = wal
            .entries(lo, last + 1, 300)
            .unwrap_or_else(|e| panic!("{context}: entries({lo}..={last}) after open: {e}"));
        assert!(
            !chunk.is_empty(),
            "{context}: entries({lo}..={last}) is empty"
        );
        lo += chunk.len() as u64;
        out.extend(chunk);
    }
    (first, out)
}

fn check(wal: &Wal, model: &Model, context: &str) {
    let (first, entries) = read_back(wal, context);
    assert_eq!(first, model.first, "{context}: first index");
    assert_eq!(wal.last_index(), model.last(), "{context}: last index");
    assert!(
        entries == model.entries,
        "{context}: entries differ from the model"
    );
    if let Some(e) = model.entries.last() {
        let term = wal
            .term(e.index)
            .unwrap_or_else(|err| panic!("{context}: term of the last entry: {err}"));
        assert_eq!(term, e.term, "{context}: term of the last entry");
    }
}

// ---------------------------------------------------------------------------------------
// WAL recovery over damaged segment files.

/// Segments of 256 to 704 bytes: a few entries each, so a short input spans several
/// segments and damage can land in a segment that is not the last.
fn small_segments(selector: u8, fs: Arc<dyn crate::wal::WalFs>) -> WalOptions {
    model_options(small_segment_bytes(selector), fs)
}

fn small_segment_bytes(selector: u8) -> u64 {
    256 + 64 * u64::from(selector % 8)
}

fn model_options(segment_size_bytes_max: u64, fs: Arc<dyn crate::wal::WalFs>) -> WalOptions {
    WalOptions {
        segment_size_bytes_max,
        group_commit_bytes_max: 1 << 20,
        // No background thread: a fuzz run is one deterministic execution.
        prepare_segments_in_background: false,
        fs,
    }
}

/// Builds a log from the ops at the start of `data`, closes it, damages its files with
/// the byte mutations in the rest, and opens it again. The open must either fail with
/// [`Error::Corruption`] or [`Error::BadHeader`], or yield a log in which every entry is
/// the one last written at its index and not truncated since (damage can lose entries,
/// never invent or resurrect one). Undamaged files must reopen to exactly the model.
///
/// Layout: `| segment size selector u8 | op count u8 | op (3 bytes) * (count % 24) |
/// damage (5 bytes: file u8, offset u16, kind u8, value u8) * |`.
pub fn wal_recovery(data: &[u8]) {
    let mut input = Input::new(data);
    let dir = ScratchDir::new("wal-recovery");
    let options = small_segments(input.byte(), Arc::new(StdFs));
    let ops = input.byte() % 24;

    let wal = Wal::open(dir.path(), options.clone())
        .unwrap_or_else(|e| panic!("open a new WAL in {}: {e}", dir.path().display()));
    let mut model = Model::new();
    // What each index last held: an entry truncated away must never come back, while a
    // compacted one may (damage to `wal.meta` can move the first index back; those
    // entries were written).
    let mut written: BTreeMap<u64, Entry> = BTreeMap::new();
    for step in 0..ops {
        let m = mutation(&mut input);
        let r = resolve(&model, m);
        if let Resolved::Truncate(from) = r {
            if apply(&model, &r).is_some() {
                written.split_off(&from);
            }
        }
        if let Resolved::Append(entries) = &r {
            for e in entries {
                written.insert(e.index, e.clone());
            }
        }
        run_acknowledged(&wal, &mut model, m, &format!("building step {step}"));
    }
    wal.close()
        .unwrap_or_else(|e| panic!("close the WAL built for damage: {e}"));

    let damaged = !input.exhausted();
    let mut files = 0;
    while !input.exhausted() {
        files = damage(dir.path(), &mut input);
    }
    match Wal::open(dir.path(), options) {
        Ok(wal) => {
            let context = format!("reopened after damage to {files} files");
            let (first, entries) = read_back(&wal, &context);
            if !damaged {
                assert_eq!(first, model.first, "undamaged log: first index");
                assert!(entries == model.entries, "undamaged log: entries differ");
            }
            for e in &entries {
                assert!(
                    written.get(&e.index) == Some(e),
                    "{context}: entry {} (term {}, {} bytes) was never written there \
                     (written: {:?})",
                    e.index,
                    e.term,
                    e.payload.len(),
                    written.get(&e.index).map(|w| (w.term, w.payload.len()))
                );
            }
            wal.close()
                .unwrap_or_else(|e| panic!("{context}: close: {e}"));
        }
        Err(Error::Corruption { .. } | Error::BadHeader { .. }) if damaged => {}
        Err(e) => panic!("open after damage (damaged: {damaged}): unexpected error {e}"),
    }
}

/// Applies one byte mutation to one of the files in `dir` (sorted by name, `wal.meta`
/// included); returns how many files there are.
fn damage(dir: &Path, input: &mut Input) -> usize {
    let (which, offset, kind, value) = (input.byte(), input.u16(), input.byte(), input.byte());
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("fuzz harness: list {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    names.sort();
    let Some(path) = names.get(usize::from(which) % names.len().max(1)) else {
        return 0;
    };
    let mut bytes = std::fs::read(path)
        .unwrap_or_else(|e| panic!("fuzz harness: read {}: {e}", path.display()));
    let at = usize::from(offset) % (bytes.len() + 1);
    match kind % 6 {
        // Flip bits (a value of 0 would change nothing).
        0 | 1 => {
            if let Some(b) = bytes.get_mut(at) {
                *b ^= value.max(1);
            }
        }
        2 => {
            if let Some(b) = bytes.get_mut(at) {
                *b = value;
            }
        }
        // Cut the file short, as a lost metadata update of its size would.
        3 => bytes.truncate(at),
        // Zero a sector-sized run, as a lost write would.
        4 => {
            let end = (at + 64).min(bytes.len());
            bytes[at..end].fill(0);
        }
        _ => bytes.extend(std::iter::repeat_n(value, usize::from(offset % 97))),
    }
    std::fs::write(path, &bytes)
        .unwrap_or_else(|e| panic!("fuzz harness: write {}: {e}", path.display()));
    names.len()
}

// ---------------------------------------------------------------------------------------
// WAL model (sled's fuzz style).

/// Runs a sequence of operations against the WAL over a [`PowerCutFs`] and against a
/// `Vec` model, and compares them after every step: the log holds exactly what was
/// acknowledged, after a reopen, a crash in the middle of an operation (the operation is
/// then all or nothing; an append may keep a prefix of its batch) or a power cut (only
/// what was fsynced, plus chance, survives; nothing acknowledged is lost).
///
/// Layout: `| page size selector u8 | op * |`, each op a kind byte and its arguments
/// (see `wal_model_op`); at most 64 ops are run.
pub fn wal_model(data: &[u8]) {
    let mut input = Input::new(data);
    // Units smaller than the segments: otherwise one unit holds a whole segment, and a
    // power cut could never persist one write out of order.
    let page_bytes = [64, 128, 512, 4096][usize::from(input.byte() % 4)];
    let segment_size_bytes_max = small_segment_bytes(input.byte());
    let ops = std::iter::from_fn(|| (!input.exhausted()).then(|| wal_model_op(&mut input)));
    run_wal_model(page_bytes, segment_size_bytes_max, ops.take(64));
}

/// Runs `ops` against a WAL over a [`PowerCutFs`] of `page_bytes` pages with segments of
/// `segment_size_bytes_max`, and against a `Vec` model, comparing them after every step
/// (see [`wal_model`]); panics, naming the step, where they differ.
pub fn run_wal_model(
    page_bytes: u64,
    segment_size_bytes_max: u64,
    ops: impl IntoIterator<Item = ModelOp>,
) {
    let dir = ScratchDir::new("wal-model");
    let fs = Arc::new(PowerCutFs::with_page_bytes(page_bytes));
    let options = model_options(segment_size_bytes_max, fs.clone());
    let open = |context: &str| {
        fs.set_crash_at(u64::MAX);
        fs.set_torn_write_bytes(0);
        Wal::open(dir.path(), options.clone())
            .unwrap_or_else(|e| panic!("{context}: open WAL: {e}"))
    };
    let mut wal = open("at the start");
    let mut model = Model::new();
    for (step, op) in ops.into_iter().enumerate() {
        let context = format!("step {step}: {op:?}");
        match op {
            ModelOp::Do(m) => run_acknowledged(&wal, &mut model, m, &context),
            ModelOp::Sync => {
                wal.sync()
                    .unwrap_or_else(|e| panic!("{context}: sync: {e}"));
            }
            ModelOp::Reopen => {
                drop(wal);
                wal = open(&context);
            }
            ModelOp::Crash {
                mutation,
                after,
                torn,
            } => {
                let Some((r, new, acknowledged)) =
                    run_interrupted(&wal, &fs, &model, mutation, after, torn)
                else {
                    continue;
                };
                if acknowledged {
                    model = new;
                } else {
                    drop(wal);
                    wal = open(&context);
                    model = recovered_model(&wal, &model, &new, &r, &context);
                }
            }
            ModelOp::PowerCut {
                mutation,
                after,
                seed,
            } => {
                let Some((r, new, acknowledged)) =
                    run_interrupted(&wal, &fs, &model, mutation, after, 0)
                else {
                    continue;
                };
                drop(wal);
                fs.power_cut(seed)
                    .unwrap_or_else(|e| panic!("{context}: power cut: {e}"));
                wal = open(&context);
                model = if acknowledged {
                    // Acknowledged, so fsynced: all of it must have survived.
                    new
                } else {
                    recovered_model(&wal, &model, &new, &r, &context)
                };
            }
        }
        check(&wal, &model, &context);
    }
}

/// Runs `mutation` with a crash `after` filesystem operations into it (a torn write of
/// `torn` bytes if the crash hits a write): the mutation resolved, the model it leads to,
/// and whether the WAL acknowledged it. `None`, running nothing, if the model says the
/// WAL must refuse it.
fn run_interrupted(
    wal: &Wal,
    fs: &PowerCutFs,
    model: &Model,
    mutation: Mutation,
    after: u64,
    torn: usize,
) -> Option<(Resolved, Model, bool)> {
    let r = resolve(model, mutation);
    let new = apply(model, &r)?;
    fs.set_torn_write_bytes(torn);
    fs.set_crash_at(fs.ops() + after);
    let acknowledged = run(wal, &r).is_ok();
    fs.set_crash_at(u64::MAX);
    fs.set_torn_write_bytes(0);
    Some((r, new, acknowledged))
}

/// One operation of [`run_wal_model`].
#[derive(Clone, Copy, Debug)]
pub enum ModelOp {
    /// Run the mutation; the WAL and the model must agree on its outcome.
    Do(Mutation),
    /// A barrier over every append so far.
    Sync,
    /// Close and reopen cleanly.
    Reopen,
    /// A process crash `after` filesystem operations into the mutation (a torn write of
    /// `torn` bytes if it hits a write), then recovery.
    Crash {
        /// What is interrupted.
        mutation: Mutation,
        /// Filesystem operations into it.
        after: u64,
        /// Bytes of a write the crash hits that still land.
        torn: usize,
    },
    /// A crash `after` filesystem operations into the mutation (or none if it takes
    /// fewer), then a power cut keeping the unsynced pages `seed` picks.
    PowerCut {
        /// What is interrupted.
        mutation: Mutation,
        /// Filesystem operations into it.
        after: u64,
        /// Picks the unsynced pages that survive.
        seed: u64,
    },
}

/// A kind byte (mutations 8 in 16, sync 1, reopen 1, crash 3, power cut 3), then the
/// arguments: a mutation is 3 bytes, a crash adds 2, a power cut adds 9.
fn wal_model_op(input: &mut Input) -> ModelOp {
    match input.byte() % 16 {
        0..=7 => ModelOp::Do(mutation(input)),
        8 => ModelOp::Sync,
        9 => ModelOp::Reopen,
        10..=12 => ModelOp::Crash {
            mutation: mutation(input),
            after: u64::from(input.byte() % 16),
            torn: usize::from(input.byte()),
        },
        _ => ModelOp::PowerCut {
            mutation: mutation(input),
            // Operation 1 of an append that needs no new segment is its fdatasync: a cut
            // there finds a whole write unsynced, where pages persist out of order.
            after: u64::from(input.byte() % 16),
            seed: input.u64(),
        },
    }
}

/// After an interrupted mutation `r` from `model` towards `new`: for an append, the log
/// must hold every acknowledged entry and a prefix of the batch; otherwise the old or the
/// new state, nothing in between. Returns the model the log now stands for.
fn recovered_model(wal: &Wal, model: &Model, new: &Model, r: &Resolved, context: &str) -> Model {
    let (first, entries) = read_back(wal, context);
    if let Resolved::Append(_) = r {
        assert_eq!(first, model.first, "{context}: first index");
        assert!(
            entries.len() >= model.entries.len() && entries.len() <= new.entries.len(),
            "{context}: {} entries, expected {}..={}",
            entries.len(),
            model.entries.len(),
            new.entries.len()
        );
        assert!(
            entries[..] == new.entries[..entries.len()],
            "{context}: entries are not a prefix of the model's"
        );
        return Model {
            first,
            entries,
            term: new.term,
        };
    }
    let got = (first, entries);
    if got == (new.first, new.entries.clone()) {
        return new.clone();
    }
    assert!(
        got == (model.first, model.entries.clone()),
        "{context}: recovered first {} with {} entries; old: first {} with {}; new: first {} \
         with {}",
        got.0,
        got.1.len(),
        model.first,
        model.entries.len(),
        new.first,
        new.entries.len()
    );
    model.clone()
}

// ---------------------------------------------------------------------------------------
// Snapshots.

/// The snapshot every snapshot target reads: the chunk checksums are seeded with the
/// header's, which is a function of this meta, so seeds must be written with it.
pub fn fuzz_snapshot_meta() -> SnapshotMeta {
    let mut membership = Membership::default();
    for id in 1..=3 {
        membership.members.insert(
            id,
            Member {
                raft_addr: format!("127.0.0.1:{}", 7000 + id),
                api_addr: format!("127.0.0.1:{}", 8000 + id),
                voter: id != 3,
            },
        );
    }
    SnapshotMeta {
        last_index: 42,
        last_term: 7,
        membership,
    }
}

/// Takes `data` as the snapshot file of [`fuzz_snapshot_meta`] and reads it as a node
/// does at startup (`latest_verified`) and as a leader does to send it (`read_chunk`).
/// Either a typed error, or a payload no longer than the file, and data chunks that a
/// receiver accepts byte for byte: what the reader passes, the receiver must not refuse.
pub fn snapshot_reader(data: &[u8]) {
    let dir = ScratchDir::new("snapshot-reader");
    let store = SnapshotStore::open(dir.path())
        .unwrap_or_else(|e| panic!("open a snapshot store in {}: {e}", dir.path().display()));
    let meta = fuzz_snapshot_meta();
    let path = store.file_path(meta.last_index, meta.last_term);
    std::fs::write(&path, data)
        .unwrap_or_else(|e| panic!("fuzz harness: write {}: {e}", path.display()));
    let _ = store.list();
    let verified = match store.latest_verified() {
        Ok(Some(m)) => m,
        Ok(None) => panic!("latest_verified found no snapshot although a file is there"),
        Err(Error::SnapshotCorrupt { .. } | Error::BadHeader { .. }) => return,
        Err(e) => panic!("reading a damaged snapshot: unexpected error {e}"),
    };
    assert_eq!(
        verified, meta,
        "the verified snapshot's meta differs from its header's"
    );
    let mut reader = store
        .open_reader(&meta)
        .unwrap_or_else(|e| panic!("open_reader after verify: {e}"));
    let mut payload = 0u64;
    while let Some(chunk) = reader
        .next_chunk()
        .unwrap_or_else(|e| panic!("read after verify: {e}"))
    {
        payload += chunk.len() as u64;
    }
    assert!(
        payload <= data.len() as u64,
        "payload of {payload} bytes from a file of {}",
        data.len()
    );
    // Ship it to a receiver in chunks, as InstallSnapshot does.
    let receiving = ScratchDir::new("snapshot-reader-receiver");
    let follower = SnapshotStore::open(receiving.path())
        .unwrap_or_else(|e| panic!("open a snapshot store: {e}"));
    let mut receiver = follower
        .begin_receive(meta.clone())
        .unwrap_or_else(|e| panic!("begin_receive: {e}"));
    let mut offset = 0;
    loop {
        let (chunk, done) = store
            .read_chunk(&meta, offset, 1000)
            .unwrap_or_else(|e| panic!("read_chunk at {offset} of a verified snapshot: {e}"));
        receiver
            .write_chunk(offset, &chunk)
            .unwrap_or_else(|e| panic!("receiver refused a verified snapshot at {offset}: {e}"));
        offset += chunk.len() as u64;
        if done {
            break;
        }
    }
    receiver
        .finish()
        .unwrap_or_else(|e| panic!("receiver refused to install a verified snapshot: {e}"));
    let copy = std::fs::read(follower.file_path(meta.last_index, meta.last_term))
        .unwrap_or_else(|e| panic!("read the received snapshot: {e}"));
    assert!(
        copy == data,
        "the received snapshot differs from the sent file"
    );
}

/// Feeds the rest of `data` to a [`crate::snapshot::SnapshotReceiver`] for
/// [`fuzz_snapshot_meta`] as an InstallSnapshot stream, in chunks whose sizes the first
/// bytes pick, with an offset out of order where they say so. Either a typed error, or an
/// installed snapshot that [`SnapshotStore::verify`] accepts and whose data region is the
/// bytes received: the receiver installs nothing a reader would refuse.
///
/// Layout: `| chunk bytes u16 | bad offset at chunk u8 (0: never) | stream * |`.
pub fn snapshot_receiver(data: &[u8]) {
    let mut input = Input::new(data);
    let chunk_bytes = usize::from(input.u16()).max(1);
    let bad_offset_at = usize::from(input.byte());
    let stream = input.rest();
    let dir = ScratchDir::new("snapshot-receiver");
    let store = SnapshotStore::open(dir.path())
        .unwrap_or_else(|e| panic!("open a snapshot store in {}: {e}", dir.path().display()));
    let meta = fuzz_snapshot_meta();
    let mut receiver = store
        .begin_receive(meta.clone())
        .unwrap_or_else(|e| panic!("begin_receive: {e}"));
    let mut offset = 0u64;
    for (i, chunk) in stream.chunks(chunk_bytes).enumerate() {
        let claimed = if i + 1 == bad_offset_at {
            offset + 1
        } else {
            offset
        };
        match receiver.write_chunk(claimed, chunk) {
            Ok(()) => {
                assert_eq!(claimed, offset, "a chunk at the wrong offset was accepted");
                offset += chunk.len() as u64;
            }
            Err(Error::SnapshotCorrupt { .. }) => return,
            Err(e) => panic!("receiving chunk {i}: unexpected error {e}"),
        }
    }
    assert_eq!(
        receiver.received(),
        offset,
        "received() disagrees with the bytes fed"
    );
    match receiver.finish() {
        Ok(installed) => assert_eq!(installed, meta, "installed another meta"),
        Err(Error::SnapshotCorrupt { .. }) => return,
        Err(e) => panic!("finish: unexpected error {e}"),
    }
    store
        .verify(&meta)
        .unwrap_or_else(|e| panic!("the receiver installed a snapshot that fails to verify: {e}"));
    let data_len = store
        .data_len(&meta)
        .unwrap_or_else(|e| panic!("data_len of the installed snapshot: {e}"));
    assert_eq!(
        data_len,
        stream.len() as u64,
        "installed data region differs in size"
    );
    let (region, done) = store
        .read_chunk(&meta, 0, data_len)
        .unwrap_or_else(|e| panic!("read back the installed snapshot: {e}"));
    assert!(
        done && region[..] == stream[..],
        "installed data region differs"
    );
}

// ---------------------------------------------------------------------------------------
// Seeds: real encodings, so the fuzzer starts deep (see `fuzz/README.md`).

/// A snapshot file of [`fuzz_snapshot_meta`] whose payload is cut into the given frames.
/// The writer emits 64 KiB frames; seeds must stay small, yet reach the reader's
/// multi-frame paths, so the frames are built here with the same checksums.
pub fn snapshot_file_with_frames(frames: &[&[u8]]) -> Vec<u8> {
    let dir = ScratchDir::new("snapshot-seed");
    let store = SnapshotStore::open(dir.path())
        .unwrap_or_else(|e| panic!("open a snapshot store in {}: {e}", dir.path().display()));
    let meta = fuzz_snapshot_meta();
    let writer = store
        .begin(meta.clone())
        .unwrap_or_else(|e| panic!("begin a seed snapshot: {e}"));
    writer
        .finish()
        .unwrap_or_else(|e| panic!("write a seed snapshot: {e}"));
    let empty = std::fs::read(store.file_path(meta.last_index, meta.last_term))
        .unwrap_or_else(|e| panic!("read the seed snapshot: {e}"));
    // An empty snapshot is the header followed by the 24-byte trailer; the header ends
    // with its CRC, which seeds every frame's.
    let header = &empty[..empty.len() - 24];
    let header_crc = u32::from_le_bytes([
        header[header.len() - 4],
        header[header.len() - 3],
        header[header.len() - 2],
        header[header.len() - 1],
    ]);
    let mut out = header.to_vec();
    let mut payload_bytes = 0u64;
    for (n, payload) in frames.iter().enumerate() {
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.extend_from_slice(
            &crate::snapshot::frame_crc(header_crc, n as u64, payload).to_le_bytes(),
        );
        out.extend_from_slice(payload);
        payload_bytes += payload.len() as u64;
    }
    out.extend_from_slice(&crate::snapshot::encode_trailer(
        header_crc,
        frames.len() as u64,
        payload_bytes,
    ));
    out
}

/// The length of the header of [`snapshot_file_with_frames`]' files: what a leader's
/// `read_chunk` leaves out of the data region it ships.
pub fn snapshot_header_bytes() -> usize {
    snapshot_file_with_frames(&[]).len() - 24
}

/// Committed seeds of the storage targets, as (target, file name, bytes).
pub fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    // WAL ops: | kind | a | b | as `mutation` reads them.
    let append = |count: u8, len: u8| [0u8, count - 1, len];
    let new_term = |count: u8, len: u8| [0x80u8, count - 1, len];
    let truncate = |pick: u8| [6u8, pick, 0];
    let compact = |pick: u8| [7u8, pick, 0];
    let builds: Vec<(&str, Vec<[u8; 3]>)> = vec![
        (
            "appends",
            vec![append(3, 10), append(5, 40), new_term(4, 0), append(2, 90)],
        ),
        (
            "truncate-and-rewrite",
            vec![append(8, 30), truncate(5), new_term(6, 20), append(3, 60)],
        ),
        (
            "compact",
            vec![
                append(10, 50),
                compact(6),
                append(4, 10),
                compact(200),
                append(2, 5),
            ],
        ),
        ("empty", vec![]),
    ];
    for (name, ops) in &builds {
        for (selector, damages) in [
            (0u8, vec![]),
            (3, vec![[0u8, 40, 0, 0, 0x10]]),
            (5, vec![[1u8, 20, 0, 3, 0], [2, 200, 1, 1, 0xff]]),
            (7, vec![[9u8, 64, 0, 4, 0], [4, 0, 0, 2, 0x52]]),
        ] {
            let mut bytes = vec![selector, ops.len() as u8];
            bytes.extend(ops.iter().flatten());
            bytes.extend(damages.iter().flatten());
            out.push((
                "wal_recovery",
                format!("{name}-{selector}-{}", damages.len()),
                bytes,
            ));
        }
    }
    // Model ops: a kind byte (`wal_model_op`), then its arguments.
    let model_seeds: Vec<(&str, Vec<u8>)> = vec![
        (
            "appends-reopen",
            [
                [1u8, 0, 4, 20].as_slice(),
                &[2, 0x80, 2, 0],
                &[9],
                &[3, 0, 6, 70],
                &[8],
            ]
            .concat(),
        ),
        (
            "crash-append",
            [
                [1u8, 0, 5, 30].as_slice(),
                &[10, 0, 3, 50, 2, 40],
                &[11, 0, 8, 10, 0, 0],
            ]
            .concat(),
        ),
        (
            "power-cut-append",
            [
                [2u8, 0, 3, 30].as_slice(),
                &[13, 0, 6, 90, 1, 1, 2, 3, 4, 5, 6, 7, 8],
                &[14, 0, 2, 9, 3, 9, 9, 9, 9, 9, 9, 9, 9],
            ]
            .concat(),
        ),
        (
            "power-cut-truncate",
            [
                [0u8, 0, 9, 40].as_slice(),
                &[15, 6, 4, 0, 2, 7, 7, 7, 7, 7, 7, 7, 7],
                &[3, 0, 2, 1],
            ]
            .concat(),
        ),
        (
            "crash-compact",
            [
                [1u8, 0, 11, 60].as_slice(),
                &[12, 7, 5, 0, 4, 0],
                &[4, 0x80, 3, 0],
                &[9],
            ]
            .concat(),
        ),
    ];
    for (page, (name, ops)) in model_seeds.into_iter().enumerate() {
        let mut bytes = vec![page as u8, 2 * page as u8];
        bytes.extend(ops);
        out.push(("wal_model", name.to_string(), bytes));
    }
    let payload = |len: usize| (0..len).map(|i| (i * 7 % 251) as u8).collect::<Vec<u8>>();
    let snapshots: Vec<(&str, Vec<u8>)> = vec![
        ("empty", snapshot_file_with_frames(&[])),
        ("one-frame", snapshot_file_with_frames(&[&payload(300)])),
        (
            "three-frames",
            snapshot_file_with_frames(&[&payload(100), &payload(1), &payload(2000)]),
        ),
    ];
    let header = snapshot_header_bytes();
    for (name, file) in snapshots {
        for (chunk, bad) in [(1000u16, 0u8), (7, 0), (64, 3)] {
            let mut bytes = chunk.to_le_bytes().to_vec();
            bytes.push(bad);
            bytes.extend_from_slice(&file[header..]);
            out.push(("snapshot_receiver", format!("{name}-{chunk}-{bad}"), bytes));
        }
        out.push(("snapshot_reader", name.to_string(), file));
    }
    out
}

/// A fuzz target's entry point: panics when its property is broken.
pub type FuzzEntry = fn(&[u8]);

/// Every file under `<fuzz_dir>/<kind>/<target>/`, sorted (none if the directory is missing).
fn committed_inputs(fuzz_dir: &Path, kind: &str, target: &str) -> Vec<PathBuf> {
    let dir = fuzz_dir.join(kind).join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Runs every committed seed (`<fuzz_dir>/corpus/<target>/`) and finding
/// (`<fuzz_dir>/regressions/<target>/`) of `targets` through its entry point; panics naming
/// every file whose property broke, and when a target has no seeds. Shared by both crates'
/// `tests/fuzz_corpus.rs`.
pub fn replay_committed_inputs(fuzz_dir: &Path, targets: &[(&str, FuzzEntry)]) {
    use std::panic::{catch_unwind, AssertUnwindSafe};
    let mut failures = Vec::new();
    let mut replayed = 0;
    for &(target, run) in targets {
        let seeds = committed_inputs(fuzz_dir, "corpus", target);
        assert!(
            !seeds.is_empty(),
            "no seeds in fuzz/corpus/{target}/; regenerate them (see tests/fuzz_corpus.rs)"
        );
        for path in seeds
            .iter()
            .chain(&committed_inputs(fuzz_dir, "regressions", target))
        {
            let bytes = std::fs::read(path)
                .unwrap_or_else(|e| panic!("read fuzz input {}: {e}", path.display()));
            replayed += 1;
            if catch_unwind(AssertUnwindSafe(|| run(&bytes))).is_err() {
                failures.push(path.display().to_string());
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {replayed} fuzz inputs fail (each panic is printed above): {failures:#?}",
        failures.len()
    );
}

/// Writes `seeds` (target, name, bytes) to `<fuzz_dir>/corpus/<target>/seed-<name>`.
pub fn write_seed_corpora(fuzz_dir: &Path, seeds: Vec<(&'static str, String, Vec<u8>)>) {
    for (target, name, bytes) in seeds {
        assert!(
            bytes.len() < 64 << 10,
            "seed {target}/{name} is {} bytes",
            bytes.len()
        );
        let dir = fuzz_dir.join("corpus").join(target);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let path = dir.join(format!("seed-{name}"));
        std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_inputs_are_valid_workloads() {
        wal_recovery(&[]);
        wal_model(&[]);
        snapshot_reader(&[]);
        snapshot_receiver(&[]);
    }

    #[test]
    fn every_seed_passes_its_target() {
        for (target, name, bytes) in seeds() {
            match target {
                "wal_recovery" => wal_recovery(&bytes),
                "wal_model" => wal_model(&bytes),
                "snapshot_reader" => snapshot_reader(&bytes),
                "snapshot_receiver" => snapshot_receiver(&bytes),
                other => panic!("seed {name} of an unknown target {other}"),
            }
        }
    }

    #[test]
    fn seed_snapshots_verify_and_damaged_ones_do_not() {
        let file = snapshot_file_with_frames(&[b"abc", b"defg"]);
        let dir = ScratchDir::new("seed-check");
        let store = SnapshotStore::open(dir.path()).expect("store");
        let meta = fuzz_snapshot_meta();
        let path = store.file_path(meta.last_index, meta.last_term);
        std::fs::write(&path, &file).expect("write");
        store.verify(&meta).expect("a built seed verifies");
        let mut damaged = file.clone();
        let last = damaged.len() - 30;
        damaged[last] ^= 1;
        std::fs::write(&path, &damaged).expect("write");
        assert!(matches!(
            store.verify(&meta),
            Err(Error::SnapshotCorrupt { .. })
        ));
    }
}
