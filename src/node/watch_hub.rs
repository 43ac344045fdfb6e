//! The watch hub (issue 15): what the apply thread tells watchers, and what a watcher needs
//! to read the history before it subscribed.
//!
//! # Where a watcher's events come from
//! ```text
//!   history_first_index          subscribed_at (published when it subscribed)
//!          │  history: decoded from the WAL  │  live: broadcast by the apply thread
//!   ───────┼─────────────────────────────────┼──────────────────────────────────▶ index
//!          [ from_index ........ subscribed_at ]( next batches ...
//! ```
//! - Invariant: `history_first_index <= published_index + 1`.
//! - Invariant: every Normal entry in `[history_first_index, published_index]` that changed
//!   nothing (a failed CAS, a delete of an absent key, a retried `Request-Id`) is in
//!   `no_change`; every other one is an event. Its key and value are in the WAL, its outcome
//!   only here: a CAS's success depends on the state before it, which the WAL does not hold.
//!   So the node knows the history of the entries it applied itself, since it started or
//!   last restored a snapshot, and no further back (`history_first_index`).
//!
//! `subscribe` takes the broadcast receiver and reads `published_index` under the lock that
//! `publish` holds while it records a batch and sends it, so every batch is either at most
//! `subscribed_at` (history covers it) or in the receiver: the hand-over has no gap and, as
//! the watcher drops live events at or below `subscribed_at`, no duplicate.
//!
//! The apply thread never waits for a watcher: a send on a `tokio::sync::broadcast` channel
//! only writes into its ring (overwriting the oldest batch), and a watcher that falls more
//! than the ring behind is told so (`Lagged`) and cut.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use storage::{Entry, EntryKind};
use tokio::sync::broadcast;

use crate::kv::{Applied, Command, KvCommand, KvResponse};

/// Apply batches a watcher may fall behind the apply thread before it is cut. Each slot
/// holds one batch (an `Arc`, shared by every watcher), so the ring's memory is this many
/// apply batches however many watchers there are.
pub const BROADCAST_BATCHES: usize = 1024;

/// A committed change to one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchEvent {
    /// The log index of the entry that made it.
    pub index: u64,
    /// The key.
    pub key: Bytes,
    /// The new value; `None` for a delete.
    pub value: Option<Bytes>,
    /// The event as JSON, rendered by the first watcher that sends it and shared by the
    /// rest: 100 watchers of one feed render each event once, not 100 times.
    pub json: std::sync::OnceLock<Bytes>,
}

/// What the apply thread broadcasts.
#[derive(Debug)]
pub enum Published {
    /// Entries up to `applied_index` were applied; `events` are the changes among them, in
    /// log order.
    Applied {
        /// The changes.
        events: Vec<WatchEvent>,
        /// Everything up to here is applied.
        applied_index: u64,
    },
    /// A snapshot from the leader replaced the state at `snapshot_index`: the changes
    /// between a watcher's position and it are not known here.
    Restored {
        /// The snapshot's last index.
        snapshot_index: u64,
    },
}

/// The change a client command made, given that it took effect; `None` when a command that
/// took effect still changed nothing (a CAS from absent to absent) or is not a KV command.
pub fn event_of(index: u64, payload: &[u8]) -> Option<WatchEvent> {
    let command = Command::decode(payload)?;
    let (key, value) = match KvCommand::decode(&command.body)? {
        KvCommand::Put { key, value } => (key, Some(value)),
        KvCommand::Delete { key } => (key, None),
        KvCommand::Cas {
            expected: None,
            value: None,
            ..
        } => return None,
        KvCommand::Cas { key, value, .. } => (key, value),
    };
    Some(WatchEvent {
        index,
        key,
        value,
        json: std::sync::OnceLock::new(),
    })
}

/// Whether an applied Normal entry changed the state (see `event_of` for which change).
fn took_effect(applied: Option<&Applied>) -> bool {
    let Some(Applied::Fresh(response)) = applied else {
        // A retry answered from its session, a stale or expired request id, an entry that
        // is not a command: not applied (thesis §6.3), so not a change.
        return false;
    };
    match KvResponse::decode(response) {
        Some(KvResponse::Put) => true,
        Some(KvResponse::Delete { deleted }) => deleted,
        Some(KvResponse::Cas { succeeded, .. }) => succeeded,
        Some(KvResponse::Invalid) | None => false,
    }
}

struct HubState {
    // Invariant: history_first_index <= published_index + 1.
    history_first_index: u64,
    published_index: u64,
    /// Normal entries in `[history_first_index, published_index]` that changed nothing.
    no_change: BTreeSet<u64>,
}

/// What a new watcher gets: the live feed, and where its history ends.
pub struct Subscription {
    /// Batches published after `subscribed_at`.
    pub live: broadcast::Receiver<Arc<Published>>,
    /// Everything up to here must come from history.
    pub subscribed_at: u64,
    /// The oldest index whose change this node can still tell (see the module docs); the
    /// WAL's first index may be later.
    pub history_first_index: u64,
    /// Entries between the watcher's `from_index` and `subscribed_at` that changed nothing.
    pub no_change: BTreeSet<u64>,
}

/// Counts a watcher while it lives, and shows how far it got for `/metrics`.
pub struct WatcherSlot {
    hub: Arc<WatchHub>,
    id: u64,
    /// The highest index this watcher has handed to its connection.
    pub position: Arc<AtomicU64>,
}

impl Drop for WatcherSlot {
    fn drop(&mut self) {
        let mut positions = self.hub.positions.lock().unwrap_or_else(|p| p.into_inner());
        positions.remove(&self.id);
        self.hub.watchers.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Watch counters for `/metrics`.
#[derive(Default)]
pub struct WatchMetrics {
    /// Events handed to watchers' connections.
    pub events_sent: AtomicU64,
    /// Watchers cut because they fell too far behind (buffer or broadcast ring).
    pub watchers_cut: AtomicU64,
    /// Watch requests refused: `410 compacted`.
    pub compacted_refusals: AtomicU64,
    /// Watch requests refused because `watchers_max` were open.
    pub capacity_refusals: AtomicU64,
}

/// Shared by the apply thread (which publishes) and the API (which subscribes).
pub struct WatchHub {
    state: Mutex<HubState>,
    sender: broadcast::Sender<Arc<Published>>,
    watchers: AtomicUsize,
    next_watcher_id: AtomicU64,
    positions: Mutex<HashMap<u64, Arc<AtomicU64>>>,
    /// Counters.
    pub metrics: WatchMetrics,
}

impl WatchHub {
    /// A hub for a node whose state machine starts at `applied_index` (its snapshot's).
    pub fn new(applied_index: u64) -> Arc<WatchHub> {
        let (sender, _) = broadcast::channel(BROADCAST_BATCHES);
        Arc::new(WatchHub {
            state: Mutex::new(HubState {
                history_first_index: applied_index + 1,
                published_index: applied_index,
                no_change: BTreeSet::new(),
            }),
            sender,
            watchers: AtomicUsize::new(0),
            next_watcher_id: AtomicU64::new(0),
            positions: Mutex::new(HashMap::new()),
            metrics: WatchMetrics::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HubState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The apply thread's hook, after it applied `entries` with these outcomes (one per
    /// entry, `None` for entries that are not client commands) and before it announces the
    /// new applied index. Never blocks on a watcher. `log_first_index`: the WAL's first
    /// index, below which outcomes are no longer needed.
    pub fn publish(&self, entries: &[Entry], outcomes: &[Option<&Applied>], log_first_index: u64) {
        assert_eq!(
            entries.len(),
            outcomes.len(),
            "watch: {} entries but {} outcomes",
            entries.len(),
            outcomes.len()
        );
        let Some(last) = entries.last() else {
            return;
        };
        let mut state = self.lock();
        // Decoding every value again costs a copy per write: only while someone watches.
        // Asked under the lock: a watcher that subscribes between this question and the
        // send would otherwise have the batch in neither its history nor its feed.
        let build_events = self.sender.receiver_count() > 0;
        let mut events = Vec::new();
        assert_eq!(
            entries[0].index,
            state.published_index + 1,
            "watch: batch starts at {} but {} was published last",
            entries[0].index,
            state.published_index
        );
        for (entry, applied) in entries.iter().zip(outcomes) {
            if entry.kind != EntryKind::Normal {
                continue;
            }
            if !took_effect(*applied) {
                state.no_change.insert(entry.index);
            } else if build_events {
                events.extend(event_of(entry.index, &entry.payload));
            }
        }
        state.published_index = last.index;
        // Outcomes of compacted entries are never asked for again.
        if state.history_first_index < log_first_index {
            state.history_first_index = log_first_index.min(state.published_index + 1);
            state.no_change = state.no_change.split_off(&log_first_index);
        }
        if build_events {
            // An error only means nobody listens any more.
            let _ = self.sender.send(Arc::new(Published::Applied {
                events,
                applied_index: last.index,
            }));
        }
    }

    /// The apply thread's hook after it restored a snapshot installed from the leader.
    pub fn restored(&self, snapshot_index: u64) {
        let mut state = self.lock();
        state.history_first_index = snapshot_index + 1;
        state.published_index = snapshot_index;
        state.no_change.clear();
        let _ = self
            .sender
            .send(Arc::new(Published::Restored { snapshot_index }));
    }

    /// Subscribes to the live feed; `from_index`: the first index the watcher wants.
    pub fn subscribe(&self, from_index: u64) -> Subscription {
        let state = self.lock();
        let live = self.sender.subscribe();
        let no_change = state
            .no_change
            .range(from_index..=state.published_index.max(from_index))
            .copied()
            .collect();
        Subscription {
            live,
            subscribed_at: state.published_index,
            history_first_index: state.history_first_index,
            no_change,
        }
    }

    /// The oldest index whose change this node can tell, given the WAL's first index.
    pub fn history_first_index(&self, log_first_index: u64) -> u64 {
        self.lock().history_first_index.max(log_first_index)
    }

    /// The index the hub has published up to.
    pub fn published_index(&self) -> u64 {
        self.lock().published_index
    }

    /// Takes a watcher slot, or `None` when `watchers_max` are open.
    pub fn register(self: &Arc<Self>, watchers_max: usize) -> Option<WatcherSlot> {
        let previous = self.watchers.fetch_add(1, Ordering::AcqRel);
        if previous >= watchers_max {
            self.watchers.fetch_sub(1, Ordering::AcqRel);
            self.metrics
                .capacity_refusals
                .fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let id = self.next_watcher_id.fetch_add(1, Ordering::Relaxed);
        let position = Arc::new(AtomicU64::new(0));
        self.positions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, position.clone());
        Some(WatcherSlot {
            hub: self.clone(),
            id,
            position,
        })
    }

    /// Open watchers.
    pub fn watchers(&self) -> usize {
        self.watchers.load(Ordering::Acquire)
    }

    /// The largest distance, in entries, between what was published and what a watcher
    /// has handed to its connection (0 without watchers).
    pub fn lag_max(&self) -> u64 {
        let published = self.published_index();
        let positions = self.positions.lock().unwrap_or_else(|p| p.into_inner());
        positions
            .values()
            .map(|p| published.saturating_sub(p.load(Ordering::Relaxed)))
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, command: KvCommand) -> Entry {
        Entry {
            index,
            term: 1,
            kind: EntryKind::Normal,
            payload: Command {
                request_id: None,
                body: command.encode().into(),
            }
            .encode()
            .into(),
        }
    }

    fn put(key: &str, value: &str) -> KvCommand {
        KvCommand::Put {
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Bytes::copy_from_slice(value.as_bytes()),
        }
    }

    fn fresh(response: KvResponse) -> Applied {
        Applied::Fresh(response.encode())
    }

    #[test]
    fn failed_cas_and_absent_delete_are_not_events_and_are_remembered_for_history() {
        let hub = WatchHub::new(0);
        let mut live = hub.subscribe(1).live;
        let entries = vec![
            entry(1, put("a", "1")),
            entry(
                2,
                KvCommand::Cas {
                    key: Bytes::from_static(b"a"),
                    expected: Some(Bytes::from_static(b"x")),
                    value: Some(Bytes::from_static(b"2")),
                },
            ),
            entry(
                3,
                KvCommand::Delete {
                    key: Bytes::from_static(b"b"),
                },
            ),
            entry(
                4,
                KvCommand::Cas {
                    key: Bytes::from_static(b"a"),
                    expected: Some(Bytes::from_static(b"1")),
                    value: None,
                },
            ),
        ];
        let outcomes = [
            fresh(KvResponse::Put),
            fresh(KvResponse::Cas {
                succeeded: false,
                current: Some(Bytes::from_static(b"1")),
            }),
            fresh(KvResponse::Delete { deleted: false }),
            fresh(KvResponse::Cas {
                succeeded: true,
                current: None,
            }),
        ];
        let outcomes: Vec<Option<&Applied>> = outcomes.iter().map(Some).collect();
        hub.publish(&entries, &outcomes, 1);
        let Ok(batch) = live.try_recv() else {
            panic!("nothing was broadcast")
        };
        let Published::Applied {
            events,
            applied_index,
        } = &*batch
        else {
            panic!("unexpected {batch:?}")
        };
        assert_eq!(*applied_index, 4);
        let summary: Vec<(u64, bool)> = events
            .iter()
            .map(|e| (e.index, e.value.is_some()))
            .collect();
        assert_eq!(summary, [(1, true), (4, false)]);
        let later = hub.subscribe(1);
        assert_eq!(later.subscribed_at, 4);
        assert_eq!(later.no_change.into_iter().collect::<Vec<_>>(), [2, 3]);
    }

    #[test]
    fn a_retried_request_is_not_an_event() {
        let hub = WatchHub::new(0);
        let mut live = hub.subscribe(1).live;
        let duplicate = Applied::Duplicate {
            response: KvResponse::Put.encode(),
            index: 1,
        };
        hub.publish(&[entry(1, put("a", "1"))], &[Some(&duplicate)], 1);
        match live
            .try_recv()
            .map(|b| matches!(&*b, Published::Applied { events, .. } if events.is_empty()))
        {
            Ok(true) => {}
            other => panic!("a duplicate made an event: {other:?}"),
        }
    }

    #[test]
    fn history_starts_after_a_restored_snapshot_and_at_the_log_start() {
        let hub = WatchHub::new(10);
        assert_eq!(hub.history_first_index(1), 11);
        hub.restored(50);
        assert_eq!(hub.history_first_index(1), 51);
        assert_eq!(hub.history_first_index(60), 60);
    }

    #[test]
    fn watcher_cap_is_enforced_and_freed_on_drop() {
        let hub = WatchHub::new(0);
        let first = hub.register(1).expect("first watcher");
        assert!(hub.register(1).is_none());
        assert_eq!(hub.watchers(), 1);
        drop(first);
        assert_eq!(hub.watchers(), 0);
        assert!(hub.register(1).is_some());
    }
}
