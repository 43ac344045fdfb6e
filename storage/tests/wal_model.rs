//! Model-based test of the WAL (sled-fuzz style): random sequences of appends,
//! truncations, compactions, reopens, crashes at random filesystem operations and power
//! cuts, run against the WAL and against a `Vec` model, compared after every step.
//!
//! A power cut ([`PowerCutFs`]) keeps an arbitrary subset of the pages written since
//! each file's last fdatasync, as LazyFS does in etcd's robustness tests: the log must
//! always open, hold every acknowledged entry, and hold no entry never appended.
//!
//! `RAFTLOG_SOAK=1` runs many more cases with longer sequences.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;
use storage::wal::{PowerCutFs, Wal, WalOptions};
use storage::{Entry, EntryKind, Error};

#[derive(Clone, Copy, Debug)]
enum Mutation {
    /// Append `count` entries of `len` bytes; `new_term` bumps the term first.
    Append {
        count: u64,
        len: usize,
        new_term: bool,
    },
    /// Truncate from a point chosen by `pick` in `[first - 1, last + 1]`.
    Truncate { pick: u16 },
    /// Compact up to a point chosen by `pick` in `[first - 2, last + 3]`.
    Compact { pick: u16 },
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Do(Mutation),
    /// Close and reopen cleanly.
    Reopen,
    /// Run the mutation with a crash `after` filesystem operations into it (a torn
    /// write of `torn` bytes if the crash hits a write), then recover.
    Crash {
        mutation: Mutation,
        after: u64,
        torn: usize,
    },
    /// Run the mutation with a crash `after` filesystem operations into it (or none,
    /// if it takes fewer), then cut the power, keeping the unsynced pages `seed` picks.
    PowerCut {
        mutation: Mutation,
        after: u64,
        seed: u64,
    },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        5 => (1u64..12, 0usize..60, prop::bool::weighted(0.2))
            .prop_map(|(count, len, new_term)| Mutation::Append { count, len, new_term }),
        1 => any::<u16>().prop_map(|pick| Mutation::Truncate { pick }),
        1 => any::<u16>().prop_map(|pick| Mutation::Compact { pick }),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => mutation().prop_map(Op::Do),
        1 => Just(Op::Reopen),
        2 => (mutation(), 0u64..14, 0usize..120)
            .prop_map(|(mutation, after, torn)| Op::Crash { mutation, after, torn }),
        // Operation 1 of an append that needs no new segment is its fdatasync: a cut
        // there finds a whole write unsynced, which is where pages persist out of order.
        2 => (mutation(), prop_oneof![Just(1u64), 0u64..16], any::<u64>())
            .prop_map(|(mutation, after, seed)| Op::PowerCut { mutation, after, seed }),
    ]
}

/// The log the WAL must hold.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Model {
    first: u64,
    entries: Vec<Entry>,
    term: u64,
}

impl Model {
    fn last(&self) -> u64 {
        self.first + self.entries.len() as u64 - 1
    }
}

fn payload(index: u64, term: u64, len: usize) -> Bytes {
    (0..len)
        .map(|i| (index as u8).wrapping_mul(31) ^ (term as u8) ^ (i as u8))
        .collect::<Vec<u8>>()
        .into()
}

/// What `m` does to the model, and the arguments it was resolved to.
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

/// Applies a mutation to the model; `Err` with the error the WAL must return.
fn apply(model: &Model, r: &Resolved) -> std::result::Result<Model, &'static str> {
    let mut next = model.clone();
    match r {
        Resolved::Append(entries) => {
            if let Some(e) = entries.first() {
                next.term = e.term;
            }
            next.entries.extend(entries.iter().cloned());
        }
        Resolved::Truncate(from) => {
            // Nothing at or past `from`: a no-op, even if `from` is compacted.
            if *from > model.last() {
                return Ok(next);
            }
            if *from < model.first {
                return Err("compacted");
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
    Ok(next)
}

fn run(wal: &Wal, r: &Resolved) -> storage::Result<()> {
    match r {
        Resolved::Append(entries) => wal.append(entries),
        Resolved::Truncate(from) => wal.truncate_suffix(*from),
        Resolved::Compact(upto) => wal.compact_prefix(*upto),
    }
}

fn options(fs: Arc<PowerCutFs>) -> WalOptions {
    WalOptions {
        segment_size_bytes_max: 512,
        group_commit_bytes_max: 1 << 20,
        // Deterministic operation counts for the crash points.
        prepare_segments_in_background: false,
        fs,
    }
}

/// Opens the log over `fs`, which lives as long as the case: a process crash keeps the
/// unsynced pages unsynced, and a later power cut may still lose them.
fn open(dir: &Path, fs: &Arc<PowerCutFs>, context: &str) -> Wal {
    fs.set_crash_at(u64::MAX);
    Wal::open(dir, options(fs.clone())).unwrap_or_else(|e| panic!("{context}: open WAL: {e}"))
}

/// After an interrupted mutation `r` from `model` towards `new`, checks what recovery
/// found and returns the model it stands for: for an append, every acknowledged entry
/// and a prefix of the batch (none of it acknowledged); otherwise the old or the new
/// state, nothing in between.
fn recovered_model(wal: &Wal, model: &Model, new: &Model, r: &Resolved, context: &str) -> Model {
    let (first, entries) = read_back(wal);
    match r {
        Resolved::Append(_) => {
            assert_eq!(first, model.first, "{context}");
            assert!(
                entries.len() >= model.entries.len() && entries.len() <= new.entries.len(),
                "{context}: {} entries, expected {}..={}",
                entries.len(),
                model.entries.len(),
                new.entries.len()
            );
            assert_eq!(entries[..], new.entries[..entries.len()], "{context}");
            Model {
                first,
                entries,
                term: new.term,
            }
        }
        _ => {
            let old_state = (model.first, model.entries.clone());
            let new_state = (new.first, new.entries.clone());
            let got = (first, entries);
            assert!(
                got == old_state || got == new_state,
                "{context}: recovered first {} with {} entries; old: first {} with {}; new: \
                 first {} with {}",
                got.0,
                got.1.len(),
                old_state.0,
                old_state.1.len(),
                new_state.0,
                new_state.1.len()
            );
            if got == new_state {
                new.clone()
            } else {
                model.clone()
            }
        }
    }
}

fn read_back(wal: &Wal) -> (u64, Vec<Entry>) {
    let (first, last) = (wal.first_index(), wal.last_index());
    assert!(last + 1 >= first, "first {first}, last {last}");
    let mut out = Vec::new();
    let mut lo = first;
    while lo <= last {
        let chunk = wal.entries(lo, last + 1, 300).expect("entries");
        assert!(
            !chunk.is_empty(),
            "entries({lo}, {}) returned nothing",
            last + 1
        );
        lo += chunk.len() as u64;
        out.extend(chunk);
    }
    (first, out)
}

fn check(wal: &Wal, model: &Model, context: &str) {
    let (first, entries) = read_back(wal);
    assert_eq!(first, model.first, "first index {context}");
    assert_eq!(wal.last_index(), model.last(), "last index {context}");
    assert_eq!(entries, model.entries, "entries {context}");
    if let Some(e) = model.entries.last() {
        assert_eq!(wal.term(e.index).expect("term"), e.term, "{context}");
    }
}

fn run_case(ops: Vec<Op>) {
    let dir = tempfile::tempdir().expect("tempdir");
    // 128-byte units: with 512-byte segments, 4 KiB pages would hold a whole segment,
    // and a power cut could never persist one write out of order.
    let fs = Arc::new(PowerCutFs::with_page_bytes(128));
    let mut wal = open(dir.path(), &fs, "at the start");
    let mut model = Model {
        first: 1,
        entries: Vec::new(),
        term: 1,
    };
    for (step, op) in ops.into_iter().enumerate() {
        let context = format!("after step {step}: {op:?}");
        match op {
            Op::Do(m) => {
                let r = resolve(&model, m);
                match (apply(&model, &r), run(&wal, &r)) {
                    (Ok(next), Ok(())) => model = next,
                    (Err(_), Err(Error::Compacted { .. })) => {}
                    (expected, got) => panic!("{context}: model {expected:?}, WAL {got:?}"),
                }
            }
            Op::Reopen => {
                drop(wal);
                wal = open(dir.path(), &fs, &context);
            }
            Op::Crash {
                mutation,
                after,
                torn,
            } => {
                let r = resolve(&model, mutation);
                let Ok(new) = apply(&model, &r) else {
                    continue;
                };
                fs.set_torn_write_bytes(torn);
                fs.set_crash_at(fs.ops() + after);
                let result = run(&wal, &r);
                fs.set_crash_at(u64::MAX);
                fs.set_torn_write_bytes(0);
                if result.is_ok() {
                    // The crash point was past the end of the operation.
                    model = new;
                    check(&wal, &model, &context);
                    continue;
                }
                drop(wal);
                wal = open(dir.path(), &fs, &context);
                model = recovered_model(&wal, &model, &new, &r, &context);
            }
            Op::PowerCut {
                mutation,
                after,
                seed,
            } => {
                let r = resolve(&model, mutation);
                let Ok(new) = apply(&model, &r) else {
                    continue;
                };
                fs.set_crash_at(fs.ops() + after);
                let result = run(&wal, &r);
                fs.set_crash_at(u64::MAX);
                drop(wal);
                fs.power_cut(seed)
                    .unwrap_or_else(|e| panic!("{context}: power cut: {e}"));
                wal = open(dir.path(), &fs, &context);
                if result.is_ok() {
                    // Acknowledged: all of it must have survived.
                    model = new;
                } else {
                    model = recovered_model(&wal, &model, &new, &r, &context);
                }
            }
        }
        check(&wal, &model, &context);
    }
}

fn config() -> ProptestConfig {
    let soak = std::env::var_os("RAFTLOG_SOAK").is_some();
    ProptestConfig {
        // 256 by default (7 s): a truncation-recovery bug that 32 cases let through in
        // most runs failed 5 runs of 5 at 256, without its saved regression case.
        cases: if soak { 2000 } else { 256 },
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn wal_matches_vec_model(ops in prop::collection::vec(op(), 1..60)) {
        run_case(ops);
    }
}
