//! One low-priority thread for requests that read a lot and matter less than writes
//! (`GET /v1/log`).
//!
//! Running such a read on tokio's async workers stalls every other request on that worker,
//! heartbeats and the raft loop included: before issue 12, one `GET /v1/log?limit=10000`
//! over 2,000 entries of 1 MiB stalled the leader's raft loop for 7.6 s and it lost its
//! leadership. The blocking pool would free the workers but still compete for the CPU on
//! equal terms with the threads that persist and apply writes; on a 2-core machine a loop
//! of page reads then took most of one core and raised write p99 seven times. This thread
//! runs at the lowest CPU priority (nice 19), so it gets what the write path leaves over,
//! and one read at a time, so concurrent readers queue instead of multiplying the memory
//! and CPU they take.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};

use tokio::sync::oneshot;

/// Reads queued beyond the one running before `run` waits for room.
const QUEUE_DEPTH: usize = 16;

type Job = Box<dyn FnOnce() + Send>;

/// The low-priority thread; `None` if it could not be started (jobs then run on tokio's
/// blocking pool).
pub struct BackgroundReader {
    jobs: Option<SyncSender<Job>>,
}

impl BackgroundReader {
    /// Starts the thread. It ends when this handle is dropped.
    pub fn start() -> BackgroundReader {
        let (jobs, queue) = sync_channel::<Job>(QUEUE_DEPTH);
        let started = std::thread::Builder::new()
            .name("api-background".into())
            .spawn(move || serve(queue));
        match started {
            Ok(_) => BackgroundReader { jobs: Some(jobs) },
            Err(e) => {
                tracing::warn!(
                    "cannot start the API's background read thread ({e}); large reads such \
                     as GET /v1/log run on the blocking pool at normal priority instead"
                );
                BackgroundReader { jobs: None }
            }
        }
    }

    /// Runs `job` on the thread and returns its result; `None` if the job panicked (the
    /// panic is printed) or the thread is gone.
    pub async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let Some(jobs) = &self.jobs else {
            return tokio::task::spawn_blocking(job).await.ok();
        };
        let (reply, answer) = oneshot::channel();
        let mut boxed: Job = Box::new(move || {
            let _ = reply.send(job());
        });
        // The queue is bounded: wait for room without holding an async worker.
        loop {
            match jobs.try_send(boxed) {
                Ok(()) => break,
                Err(TrySendError::Full(back)) => {
                    boxed = back;
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
                Err(TrySendError::Disconnected(_)) => return None,
            }
        }
        answer.await.ok()
    }
}

fn serve(queue: Receiver<Job>) {
    lower_own_priority();
    while let Ok(job) = queue.recv() {
        // One bad read must not stop every later one; the answer's sender is dropped, so
        // its caller learns that it failed.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
    }
}

/// Nice 19 for the calling thread only (Linux applies `setpriority` to a thread id).
fn lower_own_priority() {
    // SAFETY: gettid and setpriority take and return plain integers; no memory is shared.
    let rc = unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 19)
    };
    if rc != 0 {
        tracing::warn!(
            "cannot lower the priority of the API's background read thread: {}; large reads \
             such as GET /v1/log compete with writes for the CPU",
            std::io::Error::last_os_error()
        );
    }
}
