//! Recovery at node start (ARCHITECTURE.md, "Recovery", steps 1 to 3 and 5): open the
//! stable store, the WAL and the snapshots, check that they agree, and restore the state
//! machine. It touches only the disk; [`super::start`] then spawns the node's activities on
//! what it returns.

use std::sync::Arc;

use storage::snapshot::SnapshotStore;
use storage::stable::StableStore;
use storage::wal::{Wal, WalOptions};
use storage::{HardState, Membership, SnapshotMeta};

use super::bootstrap::{self, Standing};
use super::error::SkippedSnapshots;
use super::log_storage::DurableLog;
use super::{writer, Inconsistency, NodeOptions, Removal, StartError};
use crate::session::Replicated;
use crate::state_machine::StateMachine;

/// What the data directory holds, checked and loaded.
pub(super) struct Recovered<S: StateMachine> {
    pub stable: Arc<StableStore>,
    /// The WAL reconciled with the snapshot it starts after.
    pub log: Arc<DurableLog>,
    /// The newest snapshot that verified (default: none).
    pub snapshot_meta: SnapshotMeta,
    /// The membership to start with: the stable store's, else the options' initial voters.
    pub bootstrap: Membership,
    pub hard_state: HardState,
    /// Whether the node may vote (`bootstrap.rs`).
    pub standing: Standing,
    /// The state machine, restored from the snapshot.
    pub replicated: Replicated<S>,
}

/// Opens and checks the node's storage and restores the state machine.
pub(super) fn recover<S: StateMachine>(
    options: &NodeOptions,
    state_machine: S,
) -> Result<Recovered<S>, StartError> {
    let dir = &options.data_dir;
    std::fs::create_dir_all(dir)
        .map_err(|e| storage::Error::io("create data directory", dir, e))?;
    let stable = Arc::new(StableStore::open(dir.join("stable"))?);
    let snapshots = SnapshotStore::open(dir.join("snapshots"))?;
    let wal = Wal::open(
        &dir.join("wal"),
        WalOptions {
            segment_size_bytes_max: options.wal_segment_bytes,
            ..WalOptions::default()
        },
    )?;
    if stable.is_fresh() && (wal.last_index() > 0 || snapshots.latest()?.is_some()) {
        // The log survived but the term and vote did not: restarting at term 0 could let
        // this node vote twice in a term. Refuse rather than guess.
        return Err(StartError::Inconsistent {
            dir: dir.clone(),
            problem: Inconsistency::StableStoreLost {
                last_index: wal.last_index(),
            },
        });
    }
    if let Some(tombstone) = stable.tombstone()? {
        return Err(StartError::Removed(Removal {
            id: options.id,
            dir: dir.clone(),
            removed_at_index: tombstone.removed_at_index,
        }));
    }
    let holds_log = wal.last_index() > 0 || snapshots.latest()?.is_some();
    stable.bind_identity(&options.cluster_id, options.id)?;
    let bootstrap = match stable.membership()? {
        Some(membership) => membership,
        None => {
            stable.save_membership(&options.bootstrap)?;
            options.bootstrap.clone()
        }
    };
    let hard_state = stable.hard_state()?;
    let standing = bootstrap::standing(&stable, &hard_state, holds_log, options.id, &bootstrap)?;

    // The newest snapshot that verifies; an older one is good enough if the log covers the gap.
    let snapshot_meta = snapshots.latest_verified()?.unwrap_or_default();
    let log = Arc::new(DurableLog::new(wal, snapshots, snapshot_meta.clone()));
    // Checked with or without a snapshot: a compacted log whose snapshot files are all
    // gone must not start from an empty state machine either.
    if log.wal.first_index() > snapshot_meta.last_index + 1 {
        return Err(StartError::Inconsistent {
            dir: dir.clone(),
            problem: Inconsistency::LogGap {
                first_index: log.wal.first_index(),
                snapshot_index: snapshot_meta.last_index,
                skipped: skipped_snapshots(&log.snapshots, &snapshot_meta),
            },
        });
    }
    if snapshot_meta.last_index > 0 {
        writer::reconcile_log_with_snapshot(&log, &snapshot_meta).map_err(|failure| {
            StartError::Inconsistent {
                dir: dir.clone(),
                problem: Inconsistency::Reconcile(Box::new(failure)),
            }
        })?;
    }
    // Any newer snapshot failed verification and the log covers for it: set it aside so
    // retention never deletes the snapshot this node now relies on in its favor.
    log.snapshots.quarantine_newer_than(&snapshot_meta)?;

    let mut replicated = Replicated::new(state_machine);
    if snapshot_meta.last_index > 0 {
        let mut reader = log.snapshots.open_reader(&snapshot_meta)?;
        replicated
            .restore(&mut reader)
            .map_err(|source| StartError::Inconsistent {
                dir: dir.clone(),
                problem: Inconsistency::SnapshotRestore {
                    index: snapshot_meta.last_index,
                    source,
                },
            })?;
        tracing::info!(
            last_index = snapshot_meta.last_index,
            "restored state machine from snapshot"
        );
    }

    Ok(Recovered {
        stable,
        log,
        snapshot_meta,
        bootstrap,
        hard_state,
        standing,
        replicated,
    })
}

/// Names the snapshot files newer than `used` that startup skipped because they failed
/// verification (the reason is in the log line above), for the error that follows.
fn skipped_snapshots(snapshots: &SnapshotStore, used: &SnapshotMeta) -> SkippedSnapshots {
    let used_name = snapshots
        .file_path(used.last_index, used.last_term)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut skipped: Vec<String> = std::fs::read_dir(snapshots.dir())
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                // Names are zero-padded `snap-<index>-<term>.snap`: newer sorts later.
                .filter(|n| n.starts_with("snap-") && n.ends_with(".snap") && *n > used_name)
                .collect()
        })
        .unwrap_or_default();
    skipped.sort();
    SkippedSnapshots(skipped.iter().map(|n| snapshots.dir().join(n)).collect())
}
