//! The scheduling of one thread: its nice value and its policy.
//!
//! POSIX makes the nice value a property of the process, but on Linux it belongs to each
//! thread: `setpriority(PRIO_PROCESS, tid, …)` with a thread id changes that thread alone
//! (setpriority(2), "Notes"; sched(7), "The nice value"), as `sched_setscheduler` with pid 0
//! changes the calling thread's policy. The raft loop's thread uses both to get ahead of
//! the node's own client work and of other processes (see `raft_thread`).

use std::io;

/// Sets the calling thread's nice value to `nice`. Lowering it below the current value
/// (raising the priority) needs `CAP_SYS_NICE` or an `RLIMIT_NICE` that allows it, and
/// fails with `PermissionDenied` otherwise; raising it is always allowed.
#[cfg(target_os = "linux")]
pub fn set_current_thread_nice(nice: i32) -> io::Result<()> {
    // SAFETY: gettid takes no arguments and cannot fail.
    let tid = unsafe { libc::gettid() };
    // SAFETY: plain integer arguments; `tid` is this thread's own id, so it exists.
    succeeded(unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) })
}

/// Puts the calling thread under `SCHED_BATCH`: scheduled by its nice value like a normal
/// thread, but a wake-up of it never preempts the thread running on that CPU; it waits for
/// that thread to sleep or for the next scheduler tick (sched(7), "SCHED_BATCH"; the kernel's
/// `check_preempt_wakeup_fair`: "Batch and idle tasks do not preempt non-idle tasks").
/// Allowed without privilege.
#[cfg(target_os = "linux")]
pub fn set_current_thread_batch() -> io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread; `param` outlives the call.
    succeeded(unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) })
}

/// A libc call's status: 0 is success, anything else an error in errno.
#[cfg(target_os = "linux")]
fn succeeded(status: libc::c_int) -> io::Result<()> {
    if status == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Not on Linux: no `SCHED_BATCH`.
#[cfg(not(target_os = "linux"))]
pub fn set_current_thread_batch() -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "SCHED_BATCH exists only on Linux",
    ))
}

/// Not on Linux: the nice value is the process's, so one thread cannot have its own.
#[cfg(not(target_os = "linux"))]
pub fn set_current_thread_nice(_nice: i32) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "a nice value per thread exists only on Linux",
    ))
}

/// The calling thread's nice value.
#[cfg(all(test, target_os = "linux"))]
pub fn current_thread_nice() -> io::Result<i32> {
    // SAFETY: as in `set_current_thread_nice`.
    let tid = unsafe { libc::gettid() };
    // getpriority may return -1 as a value, so errno tells an error apart (getpriority(2)).
    // SAFETY: errno is thread-local; writing it before the call is how the man page says
    // to detect an error.
    unsafe { *libc::__errno_location() = 0 };
    // SAFETY: plain integer arguments.
    let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t) };
    let error = io::Error::last_os_error();
    if nice == -1 && error.raw_os_error() != Some(0) {
        return Err(error);
    }
    Ok(nice)
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// Runs `body` on a thread of its own, so that no test changes another's priority.
    fn on_new_thread<T: Send + 'static>(body: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::spawn(body).join().expect("test thread")
    }

    #[test]
    fn a_thread_lowers_its_own_priority_and_not_the_process_s() {
        let before = current_thread_nice().unwrap();
        let (set, seen) = on_new_thread(|| (set_current_thread_nice(7), current_thread_nice()));
        set.unwrap();
        assert_eq!(seen.unwrap(), 7);
        assert_eq!(current_thread_nice().unwrap(), before);
    }

    #[test]
    fn a_thread_puts_itself_under_sched_batch_without_privilege() {
        // SAFETY: pid 0 is the calling thread; sched_getscheduler only reads.
        let policy = || unsafe { libc::sched_getscheduler(0) };
        let before = policy();
        let (set, seen) = on_new_thread(move || (set_current_thread_batch(), policy()));
        set.unwrap();
        assert_eq!(seen, libc::SCHED_BATCH);
        assert_eq!(policy(), before);
    }

    #[test]
    fn raising_priority_needs_the_privilege_and_says_so() {
        // SAFETY: geteuid cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        let (set, seen) = on_new_thread(|| (set_current_thread_nice(-5), current_thread_nice()));
        if root {
            set.unwrap();
            assert_eq!(seen.unwrap(), -5);
        } else {
            // Without CAP_SYS_NICE the kernel refuses (an RLIMIT_NICE above 20 would allow
            // it; the test then sees the priority raised, which is also right).
            match set {
                Err(e) => assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}"),
                Ok(()) => assert_eq!(seen.unwrap(), -5),
            }
        }
    }
}
