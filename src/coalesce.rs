//! Letting a queue fill before draining it, when it is busy.
//!
//! A task that another task on the same tokio worker wakes runs next (the worker's LIFO
//! slot), so a consumer woken by the first of a burst of producers (the tasks of the
//! connections one `epoll_wait` reported ready) takes that one item alone: the peer link's
//! pump wrote one frame per forwarded write. (The raft loop, which made one `Ready` per
//! proposal the same way, did this too until it moved to a thread of its own, where its
//! producers are on other threads and the yield no longer paid: docs/BENCHMARKS.md, "The
//! raft loop's yield, on its own thread".) Yielding once before draining lets every task
//! already runnable on the worker enqueue first ([`tokio::task::yield_now`] defers the
//! consumer until the worker has nothing else to run, or at most one maintenance interval
//! of 61 polls). Measured at 64-client puts on this 2-core machine: +8–43% puts per second
//! over six rounds, 0.68–0.89× the cluster's CPU per put (docs/BENCHMARKS.md, "One frame
//! per forwarded write").
//!
//! When the queue is quiet the yield buys nothing and costs a zero-timeout poll of the
//! I/O driver and often a wake-up of another worker on the latency path (+2–12% on a
//! 1-client put's p50 with two workers per node), so it is taken only while the queue is
//! busy: the previous batch held more than one item, or began less than [`BUSY_GAP`]
//! before this one. The gap alone is not enough: once batches coalesce they come further
//! apart, and a run at 64 clients flipped between coalescing and not.

use std::time::{Duration, Instant};

/// Below this gap between batches a queue counts as busy: at one client a put crosses
/// each queue about once per half millisecond, at 64 clients every few tens of µs.
pub(crate) const BUSY_GAP: Duration = Duration::from_micros(200);

/// Remembers a consumer's last batch, to decide whether to yield before the next.
#[derive(Debug, Default)]
pub(crate) struct Coalescer {
    last_batch: Option<Instant>,
    last_batch_items: usize,
}

impl Coalescer {
    /// Call with the first item of a batch in hand; `more_queued` says whether the queue
    /// already holds more. Yields once if the queue is busy and nothing else is queued yet.
    pub(crate) async fn before_draining(&mut self, more_queued: bool) {
        self.before_draining_at(Instant::now(), more_queued).await;
    }

    /// Call when the batch is taken, with how many items it held.
    pub(crate) fn drained(&mut self, items: usize) {
        self.last_batch_items = items;
    }

    async fn before_draining_at(&mut self, now: Instant, more_queued: bool) {
        let busy = self.last_batch_items > 1
            || self
                .last_batch
                .is_some_and(|last| now.saturating_duration_since(last) < BUSY_GAP);
        self.last_batch = Some(now);
        if busy && !more_queued {
            tokio::task::yield_now().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// How many items the consumer finds queued after `before_draining_at(now, false)`,
    /// with `producers` tasks runnable beside it on the same single-threaded runtime.
    async fn items_found(coalescer: &mut Coalescer, now: Instant, producers: usize) -> usize {
        let queued = Arc::new(AtomicUsize::new(1));
        for _ in 0..producers {
            let queued = Arc::clone(&queued);
            tokio::spawn(async move {
                queued.fetch_add(1, Ordering::SeqCst);
            });
        }
        coalescer.before_draining_at(now, false).await;
        let found = queued.load(Ordering::SeqCst);
        // Let the producers left behind finish before the next round counts.
        for _ in 0..producers {
            tokio::task::yield_now().await;
        }
        found
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_busy_queue_waits_for_the_producers_already_runnable() {
        let mut coalescer = Coalescer::default();
        let start = Instant::now();
        // The first batch has no predecessor: the queue is not known to be busy.
        assert_eq!(items_found(&mut coalescer, start, 5).await, 1);
        let soon = start + BUSY_GAP / 2;
        assert_eq!(items_found(&mut coalescer, soon, 5).await, 6);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_queue_whose_last_batch_held_several_items_stays_busy_however_long_ago() {
        let mut coalescer = Coalescer::default();
        let start = Instant::now();
        assert_eq!(items_found(&mut coalescer, start, 0).await, 1);
        coalescer.drained(4);
        let later = start + BUSY_GAP * 10;
        assert_eq!(items_found(&mut coalescer, later, 5).await, 6);
        coalescer.drained(1);
        let much_later = later + BUSY_GAP * 10;
        assert_eq!(items_found(&mut coalescer, much_later, 5).await, 1);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_quiet_queue_is_drained_at_once() {
        let mut coalescer = Coalescer::default();
        let start = Instant::now();
        assert_eq!(items_found(&mut coalescer, start, 5).await, 1);
        let later = start + BUSY_GAP * 2;
        assert_eq!(items_found(&mut coalescer, later, 5).await, 1);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_queue_that_already_holds_more_is_drained_at_once() {
        let mut coalescer = Coalescer::default();
        let start = Instant::now();
        coalescer.before_draining_at(start, true).await;
        let queued = Arc::new(AtomicUsize::new(1));
        let producer = Arc::clone(&queued);
        tokio::spawn(async move {
            producer.fetch_add(1, Ordering::SeqCst);
        });
        coalescer
            .before_draining_at(start + BUSY_GAP / 2, true)
            .await;
        assert_eq!(queued.load(Ordering::SeqCst), 1);
    }
}
