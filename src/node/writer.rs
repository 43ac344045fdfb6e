//! The persistence thread: makes each `Ready`'s entries, hard state and snapshot chunks
//! durable, then sends the messages that depend on them and tells the raft loop.
//!
//! Group commit: while one fsync runs, the raft loop keeps producing `Ready`s; the next
//! round drains every queued job and writes them with one WAL append (one fdatasync),
//! whatever the number of client proposals behind them. A slow disk therefore slows only
//! what depends on it: the raft loop (heartbeats, replication to followers) never waits.

use std::sync::Arc;

use storage::snapshot::SnapshotReceiver;
use storage::stable::StableStore;
use storage::{Entry, HardState, SnapshotMeta};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use super::log_storage::DurableLog;
use super::{apply::ApplyJob, Event, NodeFailure, StorageStep};
use crate::raft::{Envelope, Message, NodeId, SnapshotChunk};
use crate::transport::Transport;

/// One `Ready`'s worth of work for the persistence thread, in the order it must happen.
pub struct WriteJob {
    /// A snapshot chunk from the leader.
    pub snapshot_chunk: Option<SnapshotChunk>,
    /// Entries to append (truncating a conflicting suffix first).
    pub entries: Vec<Entry>,
    /// Term and vote.
    pub hard_state: Option<HardState>,
    /// Messages to send once all of the above is durable.
    pub messages: Vec<Envelope>,
}

/// Most entry bytes one WAL append carries; beyond ~1 MiB a bigger group commit only adds
/// latency.
const GROUP_COMMIT_BYTES_MAX: u64 = 1 << 20;

enum ChunkOutcome {
    Accepted,
    Installed,
    Rejected,
}

fn abandon(receiving: &mut Option<(SnapshotMeta, SnapshotReceiver)>) {
    if let Some((meta, receiver)) = receiving.take() {
        if let Err(e) = receiver.abort() {
            tracing::warn!(
                "cannot remove the abandoned transfer of snapshot {}: {e}",
                meta.last_index
            );
        }
    }
}

pub(super) struct Writer {
    pub log: Arc<DurableLog>,
    pub stable: Arc<StableStore>,
    pub transport: Transport,
    pub events: UnboundedSender<Event>,
    pub apply: UnboundedSender<ApplyJob>,
    pub metrics: Arc<super::Metrics>,
    /// Told when the disk is full and when appends work again (issue 12, diskfull).
    pub space: Arc<super::space::StorageSpace>,
}

struct Round {
    batch: Vec<Entry>,
    batch_bytes: u64,
    hard_state: Option<HardState>,
    messages: Vec<Envelope>,
    persisted: Option<(u64, u64)>,
}

/// Drops each successful AppendEntries response that a later one in `messages`, to the same
/// leader in the same term, makes redundant: one that acknowledges at least as far
/// (`match_index`) and echoes at least as late a ReadIndex round (`read_ctx`). A group commit
/// makes the entries of every AppendEntries it covers durable at once, so the core answers
/// each of them; the leader would only step the earlier answers to reach the state the last
/// one gives it (match and round acknowledgements only move forward, §5.3 and thesis
/// §6.4), and each costs a frame on both sides and a round of the leader's loop.
/// Rejections and every other message go out untouched, in their order, and no ack is
/// dropped across a rejection to the same leader (the leader judges a rejection by how far
/// it knows the follower to match).
fn drop_superseded_acks(messages: &mut Vec<Envelope>) {
    if messages.len() < 2 {
        return;
    }
    // Walking backwards, the latest ack kept per leader covers an earlier one when it is
    // at least as far along in both respects.
    let mut latest: Vec<(NodeId, u64, u64, u64)> = Vec::new();
    let mut keep = vec![true; messages.len()];
    for (i, envelope) in messages.iter().enumerate().rev() {
        let Message::AppendEntriesResponse {
            term,
            success,
            match_index,
            read_ctx,
            ..
        } = envelope.message
        else {
            continue;
        };
        let to = envelope.to;
        if !success {
            latest.retain(|kept| kept.0 != to);
            continue;
        }
        match latest.iter_mut().find(|kept| kept.0 == to) {
            Some(kept) if kept.1 == term && kept.2 >= match_index && kept.3 >= read_ctx => {
                keep[i] = false;
            }
            Some(kept) => *kept = (to, term, match_index, read_ctx),
            None => latest.push((to, term, match_index, read_ctx)),
        }
    }
    let mut flags = keep.into_iter();
    messages.retain(|_| flags.next().unwrap_or(true));
}

impl Writer {
    /// Runs until the raft loop drops its sender. A storage error is fatal for the node:
    /// after a failed fsync nothing can be acknowledged safely (the page cache may have
    /// dropped the dirty pages), so the node reports it and stops.
    pub fn run(mut self, mut jobs: UnboundedReceiver<WriteJob>) {
        let mut receiving: Option<(SnapshotMeta, SnapshotReceiver)> = None;
        while let Some(first) = jobs.blocking_recv() {
            let mut pending = vec![first];
            while let Ok(job) = jobs.try_recv() {
                pending.push(job);
            }
            if let Err(failure) = self.write_round(pending, &mut receiving) {
                tracing::error!("{failure}");
                let _ = self.events.send(Event::Fatal(failure));
                return;
            }
        }
    }

    fn write_round(
        &mut self,
        jobs: Vec<WriteJob>,
        receiving: &mut Option<(SnapshotMeta, SnapshotReceiver)>,
    ) -> Result<(), NodeFailure> {
        let mut round = Round {
            batch: Vec::new(),
            batch_bytes: 0,
            hard_state: None,
            messages: Vec::new(),
            persisted: None,
        };
        for job in jobs {
            let mut messages = job.messages;
            if let Some(chunk) = job.snapshot_chunk {
                self.flush(&mut round)?;
                let (done, meta) = (chunk.done, chunk.meta.clone());
                match self.receive_chunk(chunk, receiving)? {
                    ChunkOutcome::Accepted => {}
                    ChunkOutcome::Installed => {
                        // Issue 11, item 3: the core hears of it only now that the file
                        // is fsync'd and verified and the log reconciled with it; the
                        // apply thread tells it (see `ApplyJob::Restore`).
                    }
                    ChunkOutcome::Rejected if done => {
                        let _ = self.events.send(Event::SnapshotFailed(meta));
                    }
                    ChunkOutcome::Rejected => {
                        // Never acknowledge a chunk that is not on disk; the leader
                        // retries the transfer.
                        messages.retain(|m| {
                            !matches!(
                                m.message,
                                crate::raft::Message::InstallSnapshotResponse { .. }
                            )
                        });
                    }
                }
            }
            if let Some(first) = job.entries.first() {
                self.make_room(&mut round, first.index)?;
                round.persisted = job.entries.last().map(|e| (e.index, e.term));
                for entry in job.entries {
                    round.batch_bytes += entry.size_bytes();
                    round.batch.push(entry);
                }
                if round.batch_bytes >= GROUP_COMMIT_BYTES_MAX {
                    self.flush(&mut round)?;
                }
            }
            if job.hard_state.is_some() {
                round.hard_state = job.hard_state;
            }
            round.messages.extend(messages);
        }
        self.flush(&mut round)?;
        if let Some(hard_state) = round.hard_state {
            self.stable
                .save_hard_state(&hard_state)
                .map_err(NodeFailure::storage(StorageStep::SaveHardState))?;
        }
        drop_superseded_acks(&mut round.messages);
        for envelope in round.messages.drain(..) {
            let _ = self.transport.send(envelope);
        }
        if let Some((index, term)) = round.persisted {
            let _ = self.events.send(Event::Persisted { index, term });
        }
        Ok(())
    }

    /// Prepares to append at `index`: a conflicting suffix (Raft §5.3) is dropped from the
    /// pending batch, or from the WAL once the batch is out of the way.
    fn make_room(&mut self, round: &mut Round, index: u64) -> Result<(), NodeFailure> {
        if let Some(batch_first) = round.batch.first().map(|e| e.index) {
            if index > batch_first {
                round.batch.truncate((index - batch_first) as usize);
                round.batch_bytes = round.batch.iter().map(Entry::size_bytes).sum();
                return Ok(());
            }
            round.batch.clear();
            round.batch_bytes = 0;
        }
        if index <= self.log.wal.last_index() {
            tracing::info!(index, "truncating a conflicting log suffix");
            self.log
                .wal
                .truncate_suffix(index)
                .map_err(NodeFailure::storage(StorageStep::TruncateSuffix {
                    from: index,
                }))?;
        }
        Ok(())
    }

    fn flush(&mut self, round: &mut Round) -> Result<(), NodeFailure> {
        if round.batch.is_empty() {
            return Ok(());
        }
        let started = std::time::Instant::now();
        match self.log.wal.append(&round.batch) {
            Ok(()) => {}
            Err(e) if e.is_no_space() => self.append_once_space_is_freed(&round.batch, e)?,
            Err(e) => return Err(NodeFailure::storage(StorageStep::AppendWal)(e)),
        }
        self.metrics.record_wal_append(
            round.batch.len() as u64,
            round.batch_bytes,
            started.elapsed(),
        );
        round.batch.clear();
        round.batch_bytes = 0;
        Ok(())
    }

    /// Issue 12, diskfull: the WAL refused `batch` for lack of space, having written none
    /// of it (`storage::space`). Retries the same append until space is freed. Until then
    /// nothing that depends on it is sent: a follower does not acknowledge, a leader does
    /// not count its own copy, and the node refuses new writes (`space.rs`).
    fn append_once_space_is_freed(
        &mut self,
        batch: &[Entry],
        error: storage::Error,
    ) -> Result<(), NodeFailure> {
        tracing::error!(
            "{error}; this node refuses writes (507 no_space) and retries every {} ms",
            super::space::RETRY_INTERVAL.as_millis()
        );
        self.space.set_disk_full(true);
        loop {
            std::thread::sleep(super::space::RETRY_INTERVAL);
            if self.events.is_closed() {
                return Err(NodeFailure::StoppedWhileDiskFull);
            }
            match self.log.wal.append(batch) {
                Ok(()) => {
                    self.space.set_disk_full(false);
                    tracing::info!(
                        "space was freed in {}: the write-ahead log accepts appends again \
                         ({} bytes free)",
                        self.log.wal.dir().display(),
                        self.space.free_bytes()
                    );
                    return Ok(());
                }
                Err(e) if e.is_no_space() => {}
                Err(e) => {
                    self.space.set_disk_full(false);
                    return Err(NodeFailure::storage(StorageStep::AppendWal)(e));
                }
            }
        }
    }

    /// Writes one InstallSnapshot chunk; on the last one installs the snapshot. A chunk that
    /// cannot be written or fails its checksum abandons the transfer (the data came from
    /// the network; it is no reason to stop the node).
    fn receive_chunk(
        &mut self,
        chunk: SnapshotChunk,
        receiving: &mut Option<(SnapshotMeta, SnapshotReceiver)>,
    ) -> Result<ChunkOutcome, NodeFailure> {
        if chunk.offset == 0 {
            abandon(receiving);
            tracing::info!(
                last_index = chunk.meta.last_index,
                last_term = chunk.meta.last_term,
                "receiving a snapshot from the leader"
            );
            match self.log.snapshots.begin_receive(chunk.meta.clone()) {
                Ok(receiver) => *receiving = Some((chunk.meta.clone(), receiver)),
                Err(e) => {
                    tracing::warn!(
                        "cannot start receiving snapshot {}: {e}",
                        chunk.meta.last_index
                    );
                    return Ok(ChunkOutcome::Rejected);
                }
            }
        }
        let written = match receiving.as_mut() {
            Some((meta, receiver)) if *meta == chunk.meta => {
                receiver.write_chunk(chunk.offset, &chunk.data)
            }
            _ => {
                tracing::warn!(
                    offset = chunk.offset,
                    last_index = chunk.meta.last_index,
                    "snapshot chunk for no transfer in progress; dropped"
                );
                return Ok(ChunkOutcome::Rejected);
            }
        };
        if let Err(e) = written {
            tracing::warn!("snapshot transfer abandoned: {e}");
            abandon(receiving);
            return Ok(ChunkOutcome::Rejected);
        }
        self.metrics
            .add_snapshot_bytes_received(chunk.data.len() as u64);
        if !chunk.done {
            return Ok(ChunkOutcome::Accepted);
        }
        let Some((meta, receiver)) = receiving.take() else {
            return Ok(ChunkOutcome::Rejected);
        };
        if let Err(e) = receiver.finish() {
            tracing::warn!(
                "received snapshot {} failed verification: {e}",
                meta.last_index
            );
            return Ok(ChunkOutcome::Rejected);
        }
        self.install(&meta)?;
        Ok(ChunkOutcome::Installed)
    }

    /// The snapshot file is durable: make the log agree with it (Raft §7: keep a suffix that
    /// matches, else discard the whole log), then hand the state machine to the apply thread.
    fn install(&mut self, meta: &SnapshotMeta) -> Result<(), NodeFailure> {
        reconcile_log_with_snapshot(&self.log, meta)?;
        self.log.set_snapshot_meta(meta.clone());
        self.metrics.snapshots_installed.inc();
        tracing::info!(
            last_index = meta.last_index,
            last_term = meta.last_term,
            "installed a snapshot from the leader"
        );
        let _ = self.apply.send(ApplyJob::Restore(meta.clone()));
        Ok(())
    }
}

/// Makes the WAL start right after `meta` unless it holds a suffix matching it. Used when
/// installing a received snapshot and on startup (a crash may fall between the two steps).
pub fn reconcile_log_with_snapshot(
    log: &DurableLog,
    meta: &SnapshotMeta,
) -> Result<(), NodeFailure> {
    let wal = &log.wal;
    // A WAL that begins right after the snapshot continues it: startup compacts the WAL to
    // the snapshot, so this is what every later start finds. Its entries may have been
    // acknowledged (Raft §5.4) and must be kept. Otherwise the log must hold the snapshot's
    // last entry, with the same term, for its suffix to be kept (§7).
    let continues_snapshot = wal.first_index() == meta.last_index + 1;
    let holds_snapshot_entry = wal.last_index() >= meta.last_index
        && wal.first_index() <= meta.last_index
        && wal.term(meta.last_index).ok() == Some(meta.last_term);
    let matches = continues_snapshot || holds_snapshot_entry;
    let fail = NodeFailure::storage(StorageStep::CompactToSnapshot {
        index: meta.last_index,
    });
    if !matches && wal.last_index() >= wal.first_index() {
        wal.truncate_suffix(wal.first_index()).map_err(fail)?;
    }
    if wal.first_index() <= meta.last_index {
        wal.compact_prefix(meta.last_index).map_err(fail)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use storage::snapshot::SnapshotStore;
    use storage::wal::{Wal, WalOptions};
    use storage::{Entry, EntryKind, SnapshotMeta};

    use super::reconcile_log_with_snapshot;
    use crate::node::log_storage::DurableLog;

    fn log_with_entries(dir: &std::path::Path, last: u64) -> DurableLog {
        let wal = Wal::open(&dir.join("wal"), WalOptions::default()).expect("WAL");
        let snapshots = SnapshotStore::open(dir.join("snapshots")).expect("snapshots");
        let entries: Vec<Entry> = (1..=last)
            .map(|index| Entry {
                index,
                term: 1,
                kind: EntryKind::Normal,
                payload: Bytes::from_static(b"v"),
            })
            .collect();
        wal.append(&entries).expect("append");
        DurableLog::new(wal, snapshots, SnapshotMeta::default())
    }

    fn snapshot_at(last_index: u64, last_term: u64) -> SnapshotMeta {
        SnapshotMeta {
            last_index,
            last_term,
            ..SnapshotMeta::default()
        }
    }

    /// Startup reconciles the WAL with the snapshot and compacts it; the next startup sees
    /// a WAL that begins right after the snapshot. That WAL continues the snapshot (the
    /// entry it would have to match is the snapshot's own last entry) and must survive:
    /// it holds entries acknowledged to clients (Raft §5.4, Leader Completeness).
    #[test]
    fn a_wal_starting_right_after_the_snapshot_is_kept_across_reconciles() {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = log_with_entries(dir.path(), 20);
        let meta = snapshot_at(10, 1);
        for round in 1..=3 {
            reconcile_log_with_snapshot(&log, &meta).expect("reconcile");
            assert_eq!(
                (log.wal.first_index(), log.wal.last_index()),
                (11, 20),
                "after reconcile number {round}, entries 11..=20 must still be in the WAL"
            );
        }
    }

    /// Raft §7: a log with no entry matching the snapshot's last index and term is
    /// discarded whole, since the snapshot supersedes it.
    #[test]
    fn a_wal_that_disagrees_with_the_snapshot_is_discarded() {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = log_with_entries(dir.path(), 20);
        reconcile_log_with_snapshot(&log, &snapshot_at(15, 2)).expect("reconcile");
        assert!(
            log.wal.last_index() < log.wal.first_index(),
            "a log whose entry 15 has term 1 disagrees with a snapshot at (15, 2): got {}..={}",
            log.wal.first_index(),
            log.wal.last_index()
        );
        assert_eq!(log.wal.first_index(), 16);
    }

    /// A snapshot beyond the end of the log (a follower far behind) leaves an empty log
    /// that starts right after it.
    #[test]
    fn a_wal_behind_the_snapshot_is_replaced_by_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = log_with_entries(dir.path(), 5);
        reconcile_log_with_snapshot(&log, &snapshot_at(30, 3)).expect("reconcile");
        assert_eq!(log.wal.first_index(), 31);
        assert!(log.wal.last_index() < log.wal.first_index());
    }

    mod superseded_acks {
        use super::super::drop_superseded_acks;
        use crate::raft::{Envelope, Message};

        fn ack(to: u64, term: u64, success: bool, match_index: u64, read_ctx: u64) -> Envelope {
            Envelope {
                from: 2,
                to,
                message: Message::AppendEntriesResponse {
                    term,
                    success,
                    match_index,
                    conflict_term: 0,
                    conflict_index: 0,
                    read_ctx,
                },
            }
        }

        fn summary(messages: &[Envelope]) -> Vec<(u64, u64, bool, u64, u64)> {
            messages
                .iter()
                .map(|e| match e.message {
                    Message::AppendEntriesResponse {
                        term,
                        success,
                        match_index,
                        read_ctx,
                        ..
                    } => (e.to, term, success, match_index, read_ctx),
                    _ => (e.to, 0, false, 0, 0),
                })
                .collect()
        }

        #[test]
        fn a_later_ack_that_reaches_as_far_replaces_the_earlier_ones() {
            let mut messages = vec![
                ack(1, 3, true, 10, 4),
                ack(1, 3, true, 12, 4),
                ack(1, 3, true, 15, 5),
            ];
            drop_superseded_acks(&mut messages);
            assert_eq!(summary(&messages), [(1, 3, true, 15, 5)]);
        }

        #[test]
        fn an_earlier_ack_of_a_later_read_round_is_kept() {
            // The entries' answer echoes no round (0): the heartbeat's answer before it
            // confirms round 7 and must reach the leader.
            let mut messages = vec![ack(1, 3, true, 10, 7), ack(1, 3, true, 12, 0)];
            drop_superseded_acks(&mut messages);
            assert_eq!(
                summary(&messages),
                [(1, 3, true, 10, 7), (1, 3, true, 12, 0)]
            );
        }

        #[test]
        fn rejections_other_terms_and_other_leaders_are_untouched() {
            let mut messages = vec![
                ack(1, 3, false, 9, 0),
                ack(1, 2, true, 10, 0),
                ack(4, 3, true, 10, 0),
                ack(1, 3, true, 11, 0),
                ack(1, 3, false, 9, 0),
            ];
            let before = summary(&messages);
            drop_superseded_acks(&mut messages);
            assert_eq!(summary(&messages), before);
        }

        #[test]
        fn no_ack_is_dropped_across_a_rejection_to_the_same_leader() {
            let mut messages = vec![
                ack(1, 3, true, 10, 0),
                ack(1, 3, false, 9, 0),
                ack(1, 3, true, 12, 0),
            ];
            let before = summary(&messages);
            drop_superseded_acks(&mut messages);
            assert_eq!(summary(&messages), before);
        }

        #[test]
        fn other_messages_keep_their_order_around_the_dropped_acks() {
            let vote = Envelope {
                from: 2,
                to: 1,
                message: Message::RequestVoteResponse {
                    term: 3,
                    granted: false,
                },
            };
            let mut messages = vec![ack(1, 3, true, 10, 0), vote.clone(), ack(1, 3, true, 11, 0)];
            drop_superseded_acks(&mut messages);
            assert_eq!(messages.len(), 2);
            assert!(matches!(
                messages[0].message,
                Message::RequestVoteResponse { .. }
            ));
            assert_eq!(summary(&messages[1..]), [(1, 3, true, 11, 0)]);
        }
    }
}
