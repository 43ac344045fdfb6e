//! Model-based test of the WAL (sled-fuzz style): random sequences of appends,
//! truncations, compactions, reopens, crashes at random filesystem operations and power
//! cuts, run against the WAL and against a `Vec` model, compared after every step.
//!
//! A power cut ([`storage::wal::PowerCutFs`]) keeps an arbitrary subset of the pages
//! written since each file's last fdatasync, as LazyFS does in etcd's robustness tests:
//! the log must always open, hold every acknowledged entry, and hold no entry never
//! appended.
//!
//! The model and the runner are the ones the `wal_model` fuzz target uses
//! ([`storage::fuzzing::run_wal_model`]); this test draws the operations with proptest,
//! which shrinks a failing sequence and keeps its seed in `wal_model.proptest-regressions`.
//!
//! `RAFTLOG_SOAK=1` runs many more cases with longer sequences.

use proptest::prelude::*;
use storage::fuzzing::{run_wal_model, ModelOp, Mutation};

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        5 => (1u64..12, 0usize..60, prop::bool::weighted(0.2))
            .prop_map(|(count, len, new_term)| Mutation::Append { count, len, new_term }),
        1 => any::<u16>().prop_map(|pick| Mutation::Truncate { pick }),
        1 => any::<u16>().prop_map(|pick| Mutation::Compact { pick }),
    ]
}

fn op() -> impl Strategy<Value = ModelOp> {
    prop_oneof![
        8 => mutation().prop_map(ModelOp::Do),
        1 => Just(ModelOp::Reopen),
        2 => (mutation(), 0u64..14, 0usize..120)
            .prop_map(|(mutation, after, torn)| ModelOp::Crash { mutation, after, torn }),
        // Operation 1 of an append that needs no new segment is its fdatasync: a cut
        // there finds a whole write unsynced, which is where pages persist out of order.
        2 => (mutation(), prop_oneof![Just(1u64), 0u64..16], any::<u64>())
            .prop_map(|(mutation, after, seed)| ModelOp::PowerCut { mutation, after, seed }),
    ]
}

/// 128-byte pages: with 512-byte segments, 4 KiB pages would hold a whole segment, and a
/// power cut could never persist one write out of order.
const PAGE_BYTES: u64 = 128;
const SEGMENT_BYTES: u64 = 512;

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
        run_wal_model(PAGE_BYTES, SEGMENT_BYTES, ops);
    }
}
