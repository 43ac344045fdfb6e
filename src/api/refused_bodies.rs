//! Draining the bodies of refused writes, a few at a time.
//!
//! A write refused before its body is read (`413`, `503 overloaded`) still has a client
//! uploading that body. Reading and dropping it lets the client, which reads only once it
//! has sent everything, see the answer instead of a connection reset. But draining costs
//! a worker what reading does, and every refused request drained at once: in a storm of
//! 2,000 concurrent 1 MiB writes (tests/overload_bounds.rs) some 600 connections per node
//! were draining together. The raft loop and the peer links were then tasks on the same
//! runtime, which runs ready tasks in turn, so each hop of a replication round (peer
//! reader, raft loop, peer writer, on both ends) waited for a turn of all those
//! connections. (They have a thread of their own now, `node/raft_thread.rs`; the bound
//! still keeps draining from taking the client runtime from the clients.) On a
//! loaded 2-core machine that took seconds: proposed writes timed out (`504`), and
//! followers that did not hear the leader within the election timeout replaced it (a CI
//! run on 2026-12-07; 5 of 6 runs with two CPU-bound processes alongside).
//!
//! So at most [`DRAINS_MAX`] bodies drain at once; the other refused requests wait for a
//! slot with their sockets unread, which costs nothing (the client's upload stalls on
//! TCP's window). A drain that takes longer than [`DRAIN_TIME_MAX`] is abandoned and its
//! connection closed, so that clients trickling their bodies cannot hold every slot.

use std::time::Duration;

use axum::body::Body;
use http_body_util::BodyExt as _;
use tokio::sync::Semaphore;

/// Refused bodies drained at once on a node.
pub const DRAINS_MAX: usize = 8;

/// The longest one refused body may take to drain.
pub const DRAIN_TIME_MAX: Duration = Duration::from_secs(5);

/// The slots for draining refused bodies.
pub struct RefusedBodies {
    slots: Semaphore,
    time_max: Duration,
}

impl RefusedBodies {
    /// At most `drains_max` bodies drained at once, each for at most `time_max`.
    pub fn new(drains_max: usize, time_max: Duration) -> RefusedBodies {
        RefusedBodies {
            slots: Semaphore::new(drains_max),
            time_max,
        }
    }

    /// Waits for a slot, then reads and drops `body` up to a little more than `limit`
    /// bytes, one frame at a time, for at most the time limit. What is left unread is the
    /// connection's to discard (hyper closes a connection whose request body was not read
    /// to the end).
    pub async fn drain(&self, body: Body, limit: usize) {
        // The semaphore is never closed; if it were, draining without a slot is the old
        // behaviour, not a failure.
        let _slot = self.slots.acquire().await;
        let _ = tokio::time::timeout(self.time_max, read_and_drop(body, limit)).await;
    }
}

impl Default for RefusedBodies {
    fn default() -> RefusedBodies {
        RefusedBodies::new(DRAINS_MAX, DRAIN_TIME_MAX)
    }
}

async fn read_and_drop(mut body: Body, limit: usize) {
    let mut seen = 0usize;
    while seen <= limit {
        match body.frame().await {
            Some(Ok(frame)) => seen += frame.data_ref().map_or(0, |d| d.len()),
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use bytes::Bytes;
    use futures_util::StreamExt as _;
    use tokio::sync::mpsc;

    use super::*;

    /// A body fed through a channel, counting the chunks read from it.
    fn channel_body(reads: Arc<AtomicUsize>) -> (mpsc::Sender<Bytes>, Body) {
        let (tx, mut rx) = mpsc::channel::<Bytes>(16);
        let chunks = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
        let stream = chunks.map(move |chunk| {
            reads.fetch_add(1, Ordering::SeqCst);
            Ok::<_, std::io::Error>(chunk)
        });
        (tx, Body::from_stream(stream))
    }

    #[tokio::test]
    async fn a_refused_body_waits_for_a_free_slot_before_it_is_read() {
        let bodies = Arc::new(RefusedBodies::new(1, Duration::from_secs(60)));
        let (first_reads, second_reads) = (Arc::default(), Arc::default());
        let (first_tx, first) = channel_body(Arc::clone(&first_reads));
        let (second_tx, second) = channel_body(Arc::clone(&second_reads));
        second_tx.send(Bytes::from_static(b"queued")).await.unwrap();

        let draining = tokio::spawn({
            let bodies = Arc::clone(&bodies);
            async move { bodies.drain(first, 1 << 20).await }
        });
        first_tx.send(Bytes::from_static(b"first")).await.unwrap();
        while first_reads.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        let waiting = tokio::spawn({
            let bodies = Arc::clone(&bodies);
            async move { bodies.drain(second, 1 << 20).await }
        });
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            second_reads.load(Ordering::SeqCst),
            0,
            "a second body was read while the only slot was draining the first"
        );

        drop(first_tx);
        draining.await.unwrap();
        drop(second_tx);
        waiting.await.unwrap();
        assert_eq!(second_reads.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_body_that_trickles_gives_up_its_slot_after_the_time_limit() {
        let limit = Duration::from_millis(200);
        let bodies = RefusedBodies::new(1, limit);
        let (tx, body) = channel_body(Arc::default());
        let started = std::time::Instant::now();
        // The sender stays open and silent: without the limit this never returns.
        tokio::time::timeout(Duration::from_secs(30), bodies.drain(body, 1 << 20))
            .await
            .expect("the drain outlived its time limit by far");
        assert!(
            started.elapsed() >= limit,
            "gave up early: {:?}",
            started.elapsed()
        );
        drop(tx);
        assert_eq!(
            bodies.slots.available_permits(),
            1,
            "the slot was not returned"
        );
    }

    #[tokio::test]
    async fn draining_stops_a_little_past_the_limit() {
        let bodies = RefusedBodies::default();
        let reads = Arc::new(AtomicUsize::new(0));
        let (tx, body) = channel_body(Arc::clone(&reads));
        for _ in 0..10 {
            tx.send(Bytes::from(vec![0u8; 100])).await.unwrap();
        }
        // The sender stays open: only the limit ends this drain.
        bodies.drain(body, 250).await;
        assert_eq!(reads.load(Ordering::SeqCst), 3, "read past the limit");
        drop(tx);
    }
}
