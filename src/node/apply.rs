//! The apply thread: applies committed entries to the state machine, answers the clients
//! waiting on them, restores installed snapshots, and takes snapshots in the background.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use storage::{Entry, EntryKind, Membership, SnapshotMeta};
use tokio::sync::{mpsc, oneshot, watch};

use super::log_storage::DurableLog;
use super::snapshot_policy::SnapshotPolicy;
use super::{Event, Metrics, NodeFailure, SnapshotFailed, StorageStep};
use crate::kv::{Applied, Replicated, StateMachine};

/// What a client waiting on a proposal learns.
#[derive(Debug)]
pub enum WriteOutcome {
    /// Committed and applied at `index`.
    Applied {
        /// The log index.
        index: u64,
        /// The state machine's answer.
        applied: Applied,
    },
    /// Another entry committed at the proposal's index: it never will.
    Superseded,
    /// A snapshot replaced the log around the proposal: its outcome is unknown here.
    Unknown,
}

/// A client waiting for the entry it proposed at some index.
pub struct PendingWrite {
    /// The term the entry was proposed in; a different term at that index means it lost.
    pub term: u64,
    /// Where the outcome goes.
    pub reply: oneshot::Sender<WriteOutcome>,
}

/// Proposals waiting to be applied, by index.
pub type PendingWrites = Arc<Mutex<BTreeMap<u64, PendingWrite>>>;

/// Work for the apply thread, in log order.
pub enum ApplyJob {
    /// Committed entries, in index order.
    Entries(Vec<Entry>),
    /// A snapshot from the leader is durable, verified and the log reconciled with it:
    /// tell the core, then load it.
    Restore(SnapshotMeta),
    /// Take a snapshot now (`POST /v1/snapshot`); the reply carries its index.
    TakeSnapshot(oneshot::Sender<Result<u64, SnapshotFailed>>),
    /// The minimum interval that held back a due snapshot has passed: check again.
    SnapshotIntervalPassed,
    /// A background snapshot finished (or failed).
    SnapshotDone(Result<SnapshotMeta, SnapshotFailed>),
}

pub(super) struct Applier<S: StateMachine> {
    /// This node, to notice its own removal.
    pub id: storage::NodeId,
    /// Test-only fault switch (`RAFTLOG_FAULT_PANIC_APPLY_AT`): panic at this index.
    pub fault_panic_apply_at: Option<u64>,
    pub state: Arc<RwLock<Replicated<S>>>,
    pub log: Arc<DurableLog>,
    pub pending: PendingWrites,
    pub applied_tx: watch::Sender<u64>,
    pub events: mpsc::UnboundedSender<Event>,
    pub jobs_tx: mpsc::UnboundedSender<ApplyJob>,
    pub metrics: Arc<Metrics>,
    /// When applying starts a snapshot (entries, bytes, minimum interval; issue 14).
    pub snapshot_policy: SnapshotPolicy,
    /// A timer will send [`ApplyJob::SnapshotIntervalPassed`].
    pub snapshot_timer_armed: bool,
    pub snapshot_trailing_entries: u64,
    /// Membership as of `applied_index` (what a snapshot taken now records).
    pub membership: Membership,
    pub applied_index: u64,
    pub applied_term: u64,
    pub last_snapshot_index: u64,
    pub snapshot_in_progress: bool,
    /// `POST /v1/snapshot` requests, each with the applied index when it arrived: it must
    /// be answered with a snapshot at least that recent.
    pub snapshot_waiters: Vec<(u64, oneshot::Sender<Result<u64, SnapshotFailed>>)>,
    /// When the threshold may start a snapshot again after failures.
    pub snapshot_backoff: SnapshotBackoff,
    /// Issue 15: watchers are told of every applied batch.
    pub watch: Arc<super::watch_hub::WatchHub>,
}

/// Spaces out snapshot attempts after failures: the first retry after `delay_min`, each
/// further one after twice the previous delay, at most `delay_max`; a success resets it.
///
/// A snapshot fails for reasons that last (a full disk, a broken or read-only snapshot
/// directory). Retrying on every apply batch froze the state, started a thread and logged
/// an error per batch, without any better chance of success; the log just grows (and the
/// WAL's own quota or the disk bounds that) until the cause is fixed.
#[derive(Debug, Clone)]
pub struct SnapshotBackoff {
    delay_min: Duration,
    delay_max: Duration,
    // Invariant: failures_in_row == 0 iff retry_at is None.
    failures_in_row: u32,
    retry_at: Option<Instant>,
}

impl SnapshotBackoff {
    /// Retries after 1 s, doubling up to a minute.
    pub fn new() -> SnapshotBackoff {
        SnapshotBackoff::with_delays(Duration::from_secs(1), Duration::from_secs(60))
    }

    /// Retries after `delay_min`, doubling up to `delay_max`.
    pub fn with_delays(delay_min: Duration, delay_max: Duration) -> SnapshotBackoff {
        assert!(
            delay_min <= delay_max,
            "backoff {delay_min:?} > {delay_max:?}"
        );
        SnapshotBackoff {
            delay_min,
            delay_max,
            failures_in_row: 0,
            retry_at: None,
        }
    }

    /// Whether the snapshot threshold may start a snapshot at `now`.
    pub fn may_retry(&self, now: Instant) -> bool {
        self.retry_at.is_none_or(|at| now >= at)
    }

    /// Records a failure at `now`; returns the delay before the next attempt.
    pub fn failed(&mut self, now: Instant) -> Duration {
        let doublings = self.failures_in_row.min(31);
        let delay = self
            .delay_min
            .saturating_mul(1u32 << doublings)
            .min(self.delay_max);
        self.failures_in_row = self.failures_in_row.saturating_add(1);
        self.retry_at = Some(now + delay);
        delay
    }

    /// Records a success: the next failure waits `delay_min` again.
    pub fn succeeded(&mut self) {
        self.failures_in_row = 0;
        self.retry_at = None;
    }

    /// Failures since the last success.
    pub fn failures_in_row(&self) -> u32 {
        self.failures_in_row
    }
}

impl Default for SnapshotBackoff {
    fn default() -> Self {
        SnapshotBackoff::new()
    }
}

impl<S: StateMachine> Applier<S> {
    pub fn run(mut self, mut jobs: mpsc::UnboundedReceiver<ApplyJob>) {
        while let Some(job) = jobs.blocking_recv() {
            match job {
                ApplyJob::Entries(entries) => self.apply_entries(entries),
                ApplyJob::Restore(meta) => {
                    // The core learns of the install from this thread, before the restore
                    // reports the snapshot applied: from the writer, the two events could
                    // cross (the core saw "applied 73" with its commit still at 0 and
                    // stopped), and the core could hand out entries past the snapshot
                    // before the restore was queued here.
                    let _ = self.events.send(Event::SnapshotInstalled(meta.clone()));
                    if let Err(failure) = self.restore(&meta) {
                        tracing::error!("{failure}");
                        let _ = self.events.send(Event::Fatal(failure));
                        return;
                    }
                }
                ApplyJob::TakeSnapshot(reply) => {
                    self.snapshot_waiters.push((self.applied_index, reply));
                    self.start_snapshot();
                }
                ApplyJob::SnapshotIntervalPassed => {
                    self.snapshot_timer_armed = false;
                    self.maybe_start_snapshot();
                }
                ApplyJob::SnapshotDone(result) => self.snapshot_done(result),
            }
        }
    }

    fn apply_entries(&mut self, entries: Vec<Entry>) {
        let Some(last) = entries.last().map(|e| (e.index, e.term)) else {
            return;
        };
        if let Some(index) = self.fault_panic_apply_at.filter(|at| last.0 >= *at) {
            panic!("RAFTLOG_FAULT_PANIC_APPLY_AT={index}: injected apply-thread panic (test-only)");
        }
        let mut removed_at = None;
        let mut outcomes = Vec::with_capacity(entries.len());
        let started = Instant::now();
        {
            let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
            for entry in &entries {
                // Invariant: entries arrive exactly once, in order (the core hands them out so).
                assert_eq!(
                    entry.index,
                    self.applied_index + 1,
                    "apply: entry {} does not follow applied index {}",
                    entry.index,
                    self.applied_index
                );
                self.applied_index = entry.index;
                self.snapshot_policy.applied(entry.payload.len() as u64);
                let applied = match entry.kind {
                    EntryKind::Normal => Some(state.apply(entry.index, &entry.payload)),
                    EntryKind::Noop => None,
                    EntryKind::Membership => {
                        match bincode::serde::decode_from_slice::<Membership, _>(
                            &entry.payload,
                            bincode::config::standard(),
                        ) {
                            Ok((membership, _)) => {
                                if self.membership.members.contains_key(&self.id)
                                    && !membership.members.contains_key(&self.id)
                                {
                                    removed_at = Some(entry.index);
                                }
                                self.membership = membership;
                            }
                            Err(e) => tracing::error!(
                                index = entry.index,
                                "membership entry does not decode: {e}"
                            ),
                        }
                        // The API waits on membership entries like on writes.
                        Some(Applied::Fresh(Vec::new()))
                    }
                };
                outcomes.push((entry.index, entry.term, applied));
            }
            // Under the state's write lock, so a reader holding the read lock sees the
            // published index of exactly the state it reads (range reads name it).
            let applied: Vec<Option<&Applied>> = outcomes.iter().map(|o| o.2.as_ref()).collect();
            self.watch
                .publish(&entries, &applied, self.log.wal.first_index());
        }
        self.metrics.apply_batch_seconds.observe(started.elapsed());
        self.applied_term = last.1;
        self.answer_clients(outcomes);
        self.metrics.entries_applied.add(entries.len() as u64);
        let _ = self.applied_tx.send(self.applied_index);
        let _ = self.events.send(Event::Applied {
            index: self.applied_index,
        });
        self.maybe_start_snapshot();
        if let Some(index) = removed_at {
            let _ = self.events.send(Event::RemovedFromMembership {
                index,
                confirmed_by: None,
            });
        }
    }

    /// Starts a snapshot if the policy says one is due and may start, or arms a timer for
    /// when the minimum interval has passed.
    fn maybe_start_snapshot(&mut self) {
        let now = Instant::now();
        let entries_since_snapshot = self.applied_index - self.last_snapshot_index;
        if self
            .snapshot_policy
            .should_start(entries_since_snapshot, now)
            && self.snapshot_backoff.may_retry(now)
        {
            self.start_snapshot();
        } else if let Some(wait) = self
            .snapshot_policy
            .deferred_for(entries_since_snapshot, now)
            .filter(|_| !self.snapshot_timer_armed)
        {
            self.snapshot_timer_armed = true;
            let jobs = self.jobs_tx.clone();
            super::spawn_thread("snapshot-timer", self.events.clone(), move || {
                std::thread::sleep(wait);
                let _ = jobs.send(ApplyJob::SnapshotIntervalPassed);
            });
        }
    }

    fn answer_clients(&mut self, outcomes: Vec<(u64, u64, Option<Applied>)>) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        for (index, term, applied) in outcomes {
            let Some(waiter) = pending.remove(&index) else {
                continue;
            };
            let outcome = match applied {
                Some(applied) if waiter.term == term => WriteOutcome::Applied { index, applied },
                _ => WriteOutcome::Superseded,
            };
            let _ = waiter.reply.send(outcome);
        }
    }

    fn restore(&mut self, meta: &SnapshotMeta) -> Result<(), NodeFailure> {
        let started = Instant::now();
        let mut reader = self
            .log
            .snapshots
            .open_reader(meta)
            .map_err(NodeFailure::storage(StorageStep::OpenSnapshot {
                index: meta.last_index,
            }))?;
        {
            let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
            state
                .restore(&mut reader)
                .map_err(|source| NodeFailure::SnapshotRestore {
                    dir: self.log.snapshots.dir().to_path_buf(),
                    index: meta.last_index,
                    source,
                })?;
            self.watch.restored(meta.last_index);
        }
        self.applied_index = meta.last_index;
        self.applied_term = meta.last_term;
        self.last_snapshot_index = meta.last_index;
        self.snapshot_policy.restored();
        self.membership = meta.membership.clone();
        // Proposals the snapshot jumped over may or may not be in it.
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let covered: Vec<u64> = pending.range(..=meta.last_index).map(|(i, _)| *i).collect();
        for index in covered {
            if let Some(waiter) = pending.remove(&index) {
                let _ = waiter.reply.send(WriteOutcome::Unknown);
            }
        }
        drop(pending);
        let _ = self.applied_tx.send(self.applied_index);
        let _ = self.events.send(Event::Applied {
            index: self.applied_index,
        });
        tracing::info!(
            last_index = meta.last_index,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "state machine restored from snapshot"
        );
        Ok(())
    }

    /// Freezes the state (O(1): the map is persistent) and writes it on another thread, so
    /// applying carries on while the snapshot is written.
    fn start_snapshot(&mut self) {
        if self.snapshot_in_progress {
            return;
        }
        if self.applied_index == self.last_snapshot_index {
            let index = self.applied_index;
            for (_, waiter) in self.snapshot_waiters.drain(..) {
                let _ = waiter.send(Ok(index));
            }
            return;
        }
        self.snapshot_in_progress = true;
        self.snapshot_policy.started(Instant::now());
        let frozen = self
            .state
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .snapshot();
        let meta = SnapshotMeta {
            last_index: self.applied_index,
            last_term: self.applied_term,
            membership: self.membership.clone(),
        };
        let log = self.log.clone();
        let jobs = self.jobs_tx.clone();
        let metrics = self.metrics.clone();
        super::spawn_thread("snapshot", self.events.clone(), move || {
            let started = Instant::now();
            let result = write_snapshot(&log, meta, &frozen, &metrics.snapshot_bytes_written);
            if let Ok((meta, bytes)) = &result {
                metrics.record_snapshot(*bytes, started.elapsed());
                tracing::info!(
                    last_index = meta.last_index,
                    bytes,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "snapshot taken"
                );
            }
            let _ = jobs.send(ApplyJob::SnapshotDone(result.map(|(meta, _)| meta)));
        });
    }

    fn snapshot_done(&mut self, result: Result<SnapshotMeta, SnapshotFailed>) {
        self.snapshot_in_progress = false;
        match result {
            Ok(meta) => {
                self.snapshot_backoff.succeeded();
                self.snapshot_policy.succeeded();
                self.last_snapshot_index = self.last_snapshot_index.max(meta.last_index);
                self.log.set_snapshot_meta(meta.clone());
                let compact_upto = meta
                    .last_index
                    .saturating_sub(self.snapshot_trailing_entries);
                let _ = self.events.send(Event::SnapshotTaken {
                    meta: meta.clone(),
                    compact_upto,
                });
                // Only requests this snapshot covers: one that arrived while it was being
                // written may have seen writes after `meta.last_index`.
                let (covered, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.snapshot_waiters)
                    .into_iter()
                    .partition(|(needed, _)| *needed <= meta.last_index);
                self.snapshot_waiters = later;
                for (_, waiter) in covered {
                    let _ = waiter.send(Ok(meta.last_index));
                }
            }
            Err(failure) => {
                self.metrics.snapshot_failures.inc();
                self.snapshot_policy.failed();
                let retry_in = self.snapshot_backoff.failed(Instant::now());
                tracing::error!(
                    failures_in_row = self.snapshot_backoff.failures_in_row(),
                    retry_in_ms = retry_in.as_millis() as u64,
                    "{failure}; the log keeps growing until a snapshot succeeds: the next \
                     attempt comes after {retry_in:?} of applying (POST /v1/snapshot tries at \
                     once)"
                );
                for (_, waiter) in self.snapshot_waiters.drain(..) {
                    let _ = waiter.send(Err(failure.clone()));
                }
            }
        }
        // Requests that arrived during the write want a snapshot at least that recent.
        if !self.snapshot_waiters.is_empty() {
            self.start_snapshot();
        }
    }
}

/// Writes `frozen` as the snapshot `meta`; every byte is counted into `bytes_written` as it
/// goes (not at the end), so `raftlog snapshot` can show a long write's progress.
fn write_snapshot(
    log: &DurableLog,
    meta: SnapshotMeta,
    frozen: &crate::kv::ReplicatedSnapshot,
    bytes_written: &super::Counter,
) -> Result<(SnapshotMeta, u64), SnapshotFailed> {
    let index = meta.last_index;
    let fail = |e: Box<dyn std::error::Error + Send + Sync>| SnapshotFailed::Write {
        index,
        source: e.into(),
    };
    let mut writer = log.snapshots.begin(meta).map_err(|e| fail(e.into()))?;
    let mut counting = CountingWriter {
        inner: &mut writer,
        bytes: 0,
        total: bytes_written,
    };
    frozen.write_to(&mut counting).map_err(|e| fail(e.into()))?;
    let bytes = counting.bytes;
    let meta = writer.finish().map_err(|e| fail(e.into()))?;
    Ok((meta, bytes))
}

struct CountingWriter<'a, W: std::io::Write> {
    inner: &'a mut W,
    bytes: u64,
    /// The node's running total, shared with `/metrics`.
    total: &'a super::Counter,
}

impl<W: std::io::Write> std::io::Write for CountingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        self.total.add(n as u64);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use storage::snapshot::SnapshotStore;
    use storage::wal::{Wal, WalOptions};

    use super::*;
    use crate::kv::KvStore;

    /// `raftlog snapshot` shows a long write's progress from the node's running total, so
    /// the total must move with every write, not once at the end.
    #[test]
    fn snapshot_bytes_are_counted_while_they_are_written() {
        use std::io::Write;
        let total = super::super::Counter::default();
        let mut sink = Vec::new();
        let mut counting = CountingWriter {
            inner: &mut sink,
            bytes: 0,
            total: &total,
        };
        counting.write_all(&[1; 1000]).expect("write to a Vec");
        assert_eq!(total.get(), 1000);
        counting.write_all(&[2; 24]).expect("write to a Vec");
        assert_eq!((counting.bytes, total.get()), (1024, 1024));
    }

    fn noops(lo: u64, hi: u64) -> Vec<Entry> {
        (lo..=hi)
            .map(|index| Entry {
                index,
                term: 1,
                kind: EntryKind::Noop,
                payload: Bytes::new(),
            })
            .collect()
    }

    type Jobs = mpsc::UnboundedReceiver<ApplyJob>;

    /// An applier on a fresh log in `dir`, taking a snapshot every `snapshot_threshold`
    /// entries, with the receiving end of its `jobs_tx` (to `run` it on).
    fn test_applier(dir: &std::path::Path, snapshot_threshold: u64) -> (Applier<KvStore>, Jobs) {
        let wal = Wal::open(&dir.join("wal"), WalOptions::default()).unwrap();
        let snapshots = SnapshotStore::open(dir.join("snapshots")).unwrap();
        let log = Arc::new(DurableLog::new(wal, snapshots, SnapshotMeta::default()));
        let (jobs_tx, jobs_rx) = mpsc::unbounded_channel();
        let (events_tx, _events_rx) = mpsc::unbounded_channel();
        let (applied_tx, _applied_rx) = watch::channel(0);
        let applier = Applier {
            id: 1,
            fault_panic_apply_at: None,
            state: Arc::new(RwLock::new(Replicated::new(KvStore::new()))),
            log,
            pending: Arc::default(),
            applied_tx,
            events: events_tx,
            jobs_tx: jobs_tx.clone(),
            metrics: Arc::default(),
            snapshot_policy: SnapshotPolicy::new(snapshot_threshold, u64::MAX, Duration::ZERO),
            snapshot_timer_armed: false,
            snapshot_trailing_entries: 0,
            membership: Membership::default(),
            applied_index: 0,
            applied_term: 0,
            last_snapshot_index: 0,
            snapshot_in_progress: false,
            snapshot_waiters: Vec::new(),
            snapshot_backoff: SnapshotBackoff::default(),
            watch: super::super::watch_hub::WatchHub::new(0),
        };
        (applier, jobs_rx)
    }

    fn wait_until(what: &str, condition: impl Fn() -> bool) {
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        while !condition() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// A snapshot that failed is tried again after a backoff, not on every apply batch:
    /// with a broken snapshot directory, every batch froze the state, started a thread
    /// and logged an error.
    #[test]
    fn failed_snapshot_is_retried_after_backoff_not_on_every_batch() {
        let dir = tempfile::tempdir().unwrap();
        let (mut applier, jobs_rx) = test_applier(dir.path(), 5);
        let backoff_min = std::time::Duration::from_millis(300);
        applier.snapshot_backoff = SnapshotBackoff::with_delays(backoff_min, backoff_min * 2);
        let (jobs, metrics) = (applier.jobs_tx.clone(), applier.metrics.clone());
        // A file where the snapshot directory was: every snapshot fails to start.
        let snapshot_dir = dir.path().join("snapshots");
        std::fs::remove_dir_all(&snapshot_dir).unwrap();
        std::fs::write(&snapshot_dir, b"not a directory").unwrap();
        std::thread::spawn(move || applier.run(jobs_rx));
        assert!(jobs.send(ApplyJob::Entries(noops(1, 5))).is_ok());
        wait_until("the first snapshot failed", || {
            metrics.snapshot_failures.get() == 1
        });
        for index in 6..=40 {
            assert!(jobs.send(ApplyJob::Entries(noops(index, index))).is_ok());
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        wait_until("40 entries applied", || metrics.entries_applied.get() == 40);
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(
            metrics.snapshot_failures.get(),
            1,
            "a failed snapshot was retried on the following apply batches"
        );
        // Once the backoff has passed, the next batch tries again.
        std::thread::sleep(backoff_min);
        assert!(jobs.send(ApplyJob::Entries(noops(41, 41))).is_ok());
        wait_until("the second attempt failed", || {
            metrics.snapshot_failures.get() == 2
        });
        // Repaired: after the doubled backoff a snapshot is taken, and later failures
        // start from the shortest backoff again.
        std::fs::remove_file(&snapshot_dir).unwrap();
        std::fs::create_dir(&snapshot_dir).unwrap();
        assert!(jobs.send(ApplyJob::Entries(noops(42, 42))).is_ok());
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(
            metrics.snapshots_taken.get(),
            0,
            "retried before the backoff ended"
        );
        std::thread::sleep(backoff_min * 2);
        assert!(jobs.send(ApplyJob::Entries(noops(43, 43))).is_ok());
        wait_until("a snapshot was taken", || {
            metrics.snapshots_taken.get() == 1
        });
        assert_eq!(metrics.snapshot_failures.get(), 2);
    }

    /// Issue 14: the entry threshold reached on every batch starts a snapshot at most once
    /// per `snapshot_min_interval`, not once per batch (the old rule started one each time
    /// a snapshot finished, several a second at a high write rate).
    #[test]
    fn threshold_starts_at_most_one_snapshot_per_min_interval() {
        let dir = tempfile::tempdir().unwrap();
        let (mut applier, jobs_rx) = test_applier(dir.path(), 5);
        let interval = Duration::from_millis(300);
        applier.snapshot_policy = SnapshotPolicy::new(5, u64::MAX, interval);
        let (jobs, metrics) = (applier.jobs_tx.clone(), applier.metrics.clone());
        std::thread::spawn(move || applier.run(jobs_rx));
        let started = Instant::now();
        let mut index = 1;
        while started.elapsed() < interval * 2 + interval / 3 {
            assert!(jobs
                .send(ApplyJob::Entries(noops(index, index + 9)))
                .is_ok());
            index += 10;
            std::thread::sleep(Duration::from_millis(5));
        }
        let sent_for = started.elapsed();
        wait_until("every entry applied", || {
            metrics.entries_applied.get() == index - 1
        });
        std::thread::sleep(interval + Duration::from_millis(200));
        let taken = metrics.snapshots_taken.get();
        // One per interval while batches arrive, and one more the timer may start after.
        let allowed = sent_for.as_millis() / interval.as_millis() + 2;
        assert!(
            (1..=allowed as u64).contains(&taken),
            "{taken} snapshots in {sent_for:?} of batches past the threshold, interval \
             {interval:?}: at most {allowed} allowed"
        );
    }

    /// A snapshot that the minimum interval held back is taken when the interval ends,
    /// even if no entry is applied after it: otherwise the log after a burst of writes
    /// stays uncompacted until the next write.
    #[test]
    fn held_back_snapshot_is_taken_when_the_interval_ends_without_more_writes() {
        let dir = tempfile::tempdir().unwrap();
        let (mut applier, jobs_rx) = test_applier(dir.path(), 5);
        let interval = Duration::from_secs(1);
        applier.snapshot_policy = SnapshotPolicy::new(5, u64::MAX, interval);
        let (jobs, metrics) = (applier.jobs_tx.clone(), applier.metrics.clone());
        let log = applier.log.clone();
        std::thread::spawn(move || applier.run(jobs_rx));
        assert!(jobs.send(ApplyJob::Entries(noops(1, 5))).is_ok());
        wait_until("the first snapshot", || metrics.snapshots_taken.get() == 1);
        assert!(jobs.send(ApplyJob::Entries(noops(6, 10))).is_ok());
        wait_until("every entry applied", || {
            metrics.entries_applied.get() == 10
        });
        assert_eq!(metrics.snapshots_taken.get(), 1, "the interval was ignored");
        // The metric counts a snapshot once written; the log records it when the apply
        // thread has handled its completion.
        wait_until("the held-back snapshot", || {
            log.snapshot_meta().last_index == 10
        });
        assert_eq!(metrics.snapshots_taken.get(), 2);
    }

    #[test]
    fn snapshot_backoff_doubles_up_to_its_maximum_and_resets_on_success() {
        let start = Instant::now();
        let second = std::time::Duration::from_secs(1);
        let mut backoff = SnapshotBackoff::new();
        assert!(backoff.may_retry(start));
        let delays: Vec<u64> = (0..9).map(|_| backoff.failed(start).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert!(!backoff.may_retry(start + 59 * second));
        assert!(backoff.may_retry(start + 60 * second));
        backoff.succeeded();
        assert!(backoff.may_retry(start));
        assert_eq!(backoff.failed(start), second);
    }

    /// `POST /v1/snapshot` promises a snapshot that covers every write acknowledged before
    /// the request. One that arrives while a background snapshot is being written must not
    /// be answered with that older snapshot.
    #[test]
    fn snapshot_request_during_a_snapshot_gets_one_covering_its_writes() {
        let dir = tempfile::tempdir().unwrap();
        let (applier, jobs_rx) = test_applier(dir.path(), u64::MAX);
        let jobs_tx = applier.jobs_tx.clone();
        let (first_tx, first_rx) = oneshot::channel();
        let (second_tx, second_rx) = oneshot::channel();
        // Queued before the thread runs, so the first snapshot's completion is handled only
        // after the second request arrived (while the first was in progress).
        for job in [
            ApplyJob::Entries(noops(1, 5)),
            ApplyJob::TakeSnapshot(first_tx),
            ApplyJob::Entries(noops(6, 9)),
            ApplyJob::TakeSnapshot(second_tx),
        ] {
            assert!(jobs_tx.send(job).is_ok());
        }
        std::thread::spawn(move || applier.run(jobs_rx));
        assert_eq!(first_rx.blocking_recv().unwrap().ok(), Some(5));
        assert_eq!(
            second_rx.blocking_recv().unwrap().ok(),
            Some(9),
            "the second request was answered with a snapshot older than its writes"
        );
    }
}
