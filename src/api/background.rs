//! One low-priority thread for requests that read a lot and matter less than writes
//! (`GET /v1/log`).
//!
//! Running such a read on tokio's async workers stalls every other request on that worker,
//! heartbeats and the raft loop included: before issue 12, one `GET /v1/log?limit=10000`
//! over 2,000 entries of 1 MiB stalled the leader's raft loop for 7.6 s and it lost its
//! leadership. The blocking pool would free the workers but still compete for the CPU on
//! equal terms with the threads that persist and apply writes; on a 2-core machine a loop
//! of page reads then took most of one core and raised write p99 seven times. This thread
//! runs at the lowest CPU priority (`SCHED_IDLE`, see `lower_own_priority`), so it gets
//! what the write path leaves over, and one read at a time, so concurrent readers queue
//! instead of multiplying the memory and CPU they take.
//!
//! Priority alone is not enough on a small machine: the thread renders at low priority,
//! but the bytes it renders are then sent by the async workers and copied by the kernel at
//! normal priority. Measured on 2 cores with 16 writers (`tests/log_page_bounds.rs`): a client
//! pulling pages at 57 MB/s raised the write p99 1.25x, one pulling 245 MB/s 2.8x. So the
//! thread also keeps to a byte rate (`log_read_max_bytes_per_second`): after each job it
//! rests for as long as the bytes it produced take at that rate, after handing them over.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::time::Duration;

use tokio::sync::oneshot;

/// Reads queued beyond the one running before `run` waits for room.
const QUEUE_DEPTH: usize = 16;

type Job = Box<dyn FnOnce() + Send>;

/// The low-priority thread; `None` if it could not be started (jobs then run on tokio's
/// blocking pool).
pub struct BackgroundReader {
    jobs: Option<SyncSender<Job>>,
    /// Bytes per second the jobs' output may reach on average; 0, no limit.
    bytes_per_second: u64,
}

impl BackgroundReader {
    /// Starts the thread, which keeps its jobs' output to `bytes_per_second` on average (0:
    /// no limit). It ends when this handle is dropped.
    pub fn start(bytes_per_second: u64) -> BackgroundReader {
        let (jobs, queue) = sync_channel::<Job>(QUEUE_DEPTH);
        let started = std::thread::Builder::new()
            .name("api-background".into())
            .spawn(move || serve(queue));
        match started {
            Ok(_) => BackgroundReader {
                jobs: Some(jobs),
                bytes_per_second,
            },
            Err(e) => {
                tracing::warn!(
                    "cannot start the API's background read thread ({e}); large reads such \
                     as GET /v1/log run on the blocking pool at normal priority instead"
                );
                BackgroundReader {
                    jobs: None,
                    bytes_per_second,
                }
            }
        }
    }

    /// Runs `job` on the thread and returns the first half of its result; `None` if the job
    /// panicked (the panic is printed) or the thread is gone. The second half is how many
    /// bytes the job produced for a client: once the result is handed over, the thread
    /// rests for as long as they take at the configured rate.
    pub async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> (T, u64) + Send + 'static,
    ) -> Option<T> {
        let (reply, answer) = oneshot::channel();
        let bytes_per_second = self.bytes_per_second;
        let mut boxed: Job = Box::new(move || {
            let (result, bytes) = job();
            let _ = reply.send(result);
            std::thread::sleep(rest_after(bytes, bytes_per_second));
        });
        let Some(jobs) = &self.jobs else {
            tokio::task::spawn_blocking(boxed);
            return answer.await.ok();
        };
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

/// How long producing `bytes` takes at `bytes_per_second` (0: no limit, no rest).
fn rest_after(bytes: u64, bytes_per_second: u64) -> Duration {
    if bytes_per_second == 0 {
        return Duration::ZERO;
    }
    Duration::from_secs_f64(bytes as f64 / bytes_per_second as f64)
}

fn serve(queue: Receiver<Job>) {
    lower_own_priority();
    while let Ok(job) = queue.recv() {
        // One bad read must not stop every later one; the answer's sender is dropped, so
        // its caller learns that it failed.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
    }
}

/// Moves the calling thread (only it: Linux applies both calls to a thread id) to
/// `SCHED_IDLE`, or to nice 19 where that is refused.
///
/// Why not nice 19 alone: under the kernel's EEVDF scheduler a nice-19 thread that is
/// running keeps the CPU until its slice ends even when a writer's thread wakes beside it,
/// while a `SCHED_IDLE` thread is preempted at once by any normal thread that wakes. Measured
/// with `tests/log_page_bounds.rs` (6 windows each way, runs alternating, 2 cores, kernel
/// 6.18): the write p99 while pages were read was 5.8 ms in both runs at nice 19, 4.4 and
/// 4.5 ms with this thread and the test's reader at `SCHED_IDLE` (quiet windows 4.1–5.1 and
/// 3.8–4.1 ms). Moving a thread of one's own to `SCHED_IDLE` needs no privilege.
fn lower_own_priority() {
    // SAFETY: gettid, sched_setscheduler and setpriority take plain integers and a pointer
    // to a parameter that lives across the call; no memory is shared.
    let refused = unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::pid_t;
        let param = libc::sched_param { sched_priority: 0 };
        libc::sched_setscheduler(tid, libc::SCHED_IDLE, &param) != 0
            && libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 19) != 0
    };
    if refused {
        tracing::warn!(
            "cannot lower the priority of the API's background read thread: {}; large reads \
             such as GET /v1/log compete with writes for the CPU",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    #[test]
    fn rest_is_the_time_the_bytes_take_at_the_rate() {
        assert_eq!(
            rest_after(4 << 20, 64 << 20),
            Duration::from_millis(62) + Duration::from_micros(500)
        );
        assert_eq!(rest_after(1 << 30, 0), Duration::ZERO);
        assert_eq!(rest_after(0, 1), Duration::ZERO);
    }

    /// Issue 12: jobs that produce more than the rate allows are spread out; the answer of
    /// each comes before the thread's rest, so a single page is not delayed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn paced_jobs_keep_to_the_byte_rate_and_answer_before_resting() {
        let reader = BackgroundReader::start(10 << 20);
        let started = Instant::now();
        assert_eq!(reader.run(|| (1, 2 << 20)).await, Some(1));
        let first = started.elapsed();
        assert!(
            first < Duration::from_millis(150),
            "first answer took {first:?}"
        );
        for i in 2..=4 {
            assert_eq!(reader.run(move || (i, 2 << 20)).await, Some(i));
        }
        // Three rests of 200 ms (2 MiB at 10 MiB/s) came before the last three jobs ran.
        let all = started.elapsed();
        assert!(
            all >= Duration::from_millis(600),
            "4 jobs of 2 MiB took {all:?}"
        );

        let unlimited = BackgroundReader::start(0);
        let started = Instant::now();
        for i in 0..4 {
            assert_eq!(unlimited.run(move || (i, 1 << 30)).await, Some(i));
        }
        assert!(started.elapsed() < Duration::from_millis(500));
    }
}
