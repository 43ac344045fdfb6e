//! The thread the raft loop, the peer links and the forward server run on, apart from the
//! runtime that serves clients, at a raised priority.
//!
//! Raft's timing rests on heartbeats arriving well within the election timeout (Raft
//! thesis §3.4: broadcast time ≪ election timeout; §6.4.1: a lease is only as good as the
//! clocks and the loop that reads them). On the shared runtime the raft loop was one task
//! among every client connection's, run in turn with them, and the runtime's worker was
//! one thread among the machine's: on a 2-core machine under a storm of 1 MiB writes beside
//! two busy loops and a disk writer (`benches/loop-stalls.sh`), each node's raft loop went
//! 100 ms to 4.7 s without running, followers called elections and admitted writes timed
//! out (`tests/overload_bounds.rs` failed in CI this way). `perf sched timehist` showed
//! why: the loop was runnable and waiting for a CPU, 400 ms of every second.
//!
//! A thread of its own alone did not help: at the default priority it waited for a CPU as
//! long as the worker had (docs/BENCHMARKS.md, "The raft loop on a thread of its own").
//! What did is that thread at a nice value of −10: the scheduler then gives it about nine
//! times the weight of a default thread (sched(7)), and it uses little, so it runs soon
//! after it wakes. etcd's tuning guide gives the same advice for the whole etcd process
//! (`renice -n -19`); raising only the consensus thread keeps the node's client work from
//! taking that priority too. The thread also runs under `SCHED_BATCH`, so that a wake-up
//! does not preempt the client worker: with the priority alone it ran at every request,
//! one at a time, and cost 45% of the reads and 34% of the puts at 64 clients; under
//! `SCHED_BATCH` it finds a batch waiting, as it did on the shared runtime. Raising a
//! priority needs `CAP_SYS_NICE` (or an `RLIMIT_NICE` that allows it); without it the node
//! says so once and runs the thread at the default priority and policy.
//!
//! The forward server (writes and reads that followers forward to the leader) runs here
//! too: a forwarded write is one proposal to the raft loop on the same thread, where on the
//! client runtime it was two more thread wake-ups (measured: −14% to −17% 1-client puts
//! with it on the client runtime, −2% with it here).

use std::io;

use storage::NodeId;
use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;

use super::thread_priority;

/// The running raft thread: spawn its tasks through [`RaftThread::handle`]. The thread
/// ends, and with it every task spawned on it, when this is dropped.
pub(super) struct RaftThread {
    handle: Handle,
    _stop: oneshot::Sender<()>,
}

impl RaftThread {
    /// Starts the thread with its own single-threaded runtime, at nice value `nice` (0:
    /// the priority the node started with, left as it is).
    pub(super) fn start(id: NodeId, nice: i32) -> io::Result<RaftThread> {
        let runtime = Builder::new_current_thread().enable_all().build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("raftlog-raft".into())
            .spawn(move || {
                if nice != 0 {
                    take_priority(id, nice);
                }
                // Ends when the sender is dropped; dropping the runtime here, outside any
                // task, cancels what is still spawned on it.
                let _ = runtime.block_on(stopped);
            })?;
        Ok(RaftThread {
            handle,
            _stop: stop,
        })
    }

    /// For spawning on the thread's runtime.
    pub(super) fn handle(&self) -> &Handle {
        &self.handle
    }
}

fn take_priority(id: NodeId, nice: i32) {
    match thread_priority::set_current_thread_nice(nice) {
        Ok(()) => {
            // Without SCHED_BATCH a raised priority preempts the client worker at every
            // wake-up (the module's doc says what that cost).
            if nice < 0 {
                if let Err(e) = thread_priority::set_current_thread_batch() {
                    tracing::warn!(id, "cannot put the raft thread under SCHED_BATCH: {e}");
                }
            }
            tracing::info!(
                id,
                nice,
                "the raft loop runs on its own thread at nice {nice}"
            );
        }
        Err(e) => tracing::warn!(
            id,
            nice,
            "cannot set the raft thread's priority to nice {nice}: {e}. It runs at the \
             node's priority, where on a machine short of CPU its heartbeats can be late \
             enough for followers to call elections. Raising a priority needs CAP_SYS_NICE: \
             run the node as root, or with that capability (systemd: \
             AmbientCapabilities=CAP_SYS_NICE), or allow it with LimitNICE={nice} (ulimit -e \
             {}); or set raft_thread_nice to 0 in config.json to keep the default priority \
             without this warning",
            20 - nice,
        ),
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn the_thread_runs_spawned_tasks_at_its_priority_and_ends_when_dropped() {
        // A nice value above the default is allowed without privilege.
        let thread = RaftThread::start(1, 3).unwrap();
        let (name, nice) = thread
            .handle()
            .block_on(async {
                let join = tokio::spawn(async {
                    (
                        std::thread::current().name().map(str::to_string),
                        thread_priority::current_thread_nice().unwrap(),
                    )
                });
                join.await
            })
            .unwrap();
        // `block_on` through a handle runs the future on the caller, but `tokio::spawn`
        // inside it goes to the runtime's own thread.
        assert_eq!(name.as_deref(), Some("raftlog-raft"));
        assert_eq!(nice, 3);

        let (alive_tx, alive_rx) = std::sync::mpsc::channel::<()>();
        thread.handle().spawn(async move {
            let _alive = alive_tx;
            std::future::pending::<()>().await;
        });
        drop(thread);
        // The task's sender goes when the runtime drops it with the thread's end.
        assert_eq!(
            alive_rx.recv_timeout(std::time::Duration::from_secs(10)),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected)
        );
    }
}
