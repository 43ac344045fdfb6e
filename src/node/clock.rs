//! The raft loop's clock: how many ticks the core is owed.
//!
//! The core counts time only in ticks, and its leader lease (thesis §6.4.1) and CheckQuorum
//! (thesis §6.2) are only as honest as that count. A periodic timer alone undercounts: a
//! process stopped by SIGSTOP, a VM paused for migration, or a loop busy for a long while
//! wakes up to one timer tick, not to the hundred it slept through, and a leader that was
//! replaced in the meantime would still believe its lease and serve stale lease reads.
//! So the loop uses the timer only to wake up, and before handling anything (a message, a
//! request, a persistence event) feeds the core every tick that elapsed on a clock that
//! keeps running through the stall. Once fed, a stalled leader sees that no quorum acked
//! it within an election timeout, steps down, and refuses the read.
//!
//! The clock is `CLOCK_BOOTTIME` on Linux (it also counts time the machine was
//! suspended, which `CLOCK_MONOTONIC` and so `Instant` do not), else `Instant`.

use std::time::{Duration, Instant};

/// Ticks due to the core, measured on a clock that runs through stalls.
pub(super) struct TickClock {
    tick: Duration,
    /// A stall longer than this many ticks is fed as this many: every timeout in the core
    /// is far shorter, so the core reaches the same decisions without a burst of
    /// thousands of heartbeat rounds after a long pause.
    catch_up_ticks_max: u64,
    start: Duration,
    /// Ticks accounted for since `start` (fed, or skipped beyond the cap).
    counted: u64,
}

impl TickClock {
    pub(super) fn new(tick: Duration, catch_up_ticks_max: u64) -> TickClock {
        TickClock {
            tick: tick.max(Duration::from_micros(1)),
            catch_up_ticks_max: catch_up_ticks_max.max(1),
            start: now(),
            counted: 0,
        }
    }

    /// Ticks to feed the core now.
    pub(super) fn due(&mut self) -> u64 {
        self.due_at(now())
    }

    fn due_at(&mut self, now: Duration) -> u64 {
        let elapsed = now.saturating_sub(self.start);
        let total = (elapsed.as_nanos() / self.tick.as_nanos()) as u64;
        let due = total.saturating_sub(self.counted);
        self.counted = total.max(self.counted);
        if due > self.catch_up_ticks_max {
            tracing::warn!(
                missed_ticks = due,
                stall_ms = due * self.tick.as_millis() as u64,
                "the raft loop was stalled; catching the core's clock up"
            );
        }
        due.min(self.catch_up_ticks_max)
    }
}

#[cfg(target_os = "linux")]
fn now() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    if unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) } == 0 {
        return Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32);
    }
    monotonic()
}

#[cfg(not(target_os = "linux"))]
fn now() -> Duration {
    monotonic()
}

fn monotonic() -> Duration {
    use std::sync::OnceLock;
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    ORIGIN.get_or_init(Instant::now).elapsed()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clock_at(start: Duration) -> TickClock {
        TickClock {
            tick: Duration::from_millis(10),
            catch_up_ticks_max: 120,
            start,
            counted: 0,
        }
    }

    #[test]
    fn stall_is_fed_as_the_ticks_it_lasted() {
        let start = Duration::from_secs(50);
        let mut clock = clock_at(start);
        assert_eq!(clock.due_at(start + Duration::from_millis(9)), 0);
        assert_eq!(clock.due_at(start + Duration::from_millis(10)), 1);
        // A 850 ms stall: one wake-up owes 85 ticks, not 1.
        assert_eq!(clock.due_at(start + Duration::from_millis(860)), 85);
        assert_eq!(clock.due_at(start + Duration::from_millis(865)), 0);
    }

    #[test]
    fn ticks_do_not_drift_with_late_wakeups() {
        let start = Duration::from_secs(1);
        let mut clock = clock_at(start);
        let mut fed = 0;
        // Wake-ups 13 ms apart: a counting timer would owe 1 tick each (100 after 1.3 s).
        for i in 1..=100u64 {
            fed += clock.due_at(start + Duration::from_millis(13 * i));
        }
        assert_eq!(fed, 130);
    }

    #[test]
    fn long_stall_is_capped_but_never_refed() {
        let start = Duration::from_secs(1);
        let mut clock = clock_at(start);
        assert_eq!(clock.due_at(start + Duration::from_secs(60)), 120);
        assert_eq!(clock.due_at(start + Duration::from_millis(60_010)), 1);
    }

    #[test]
    fn clock_going_backwards_owes_nothing() {
        let start = Duration::from_secs(10);
        let mut clock = clock_at(start);
        assert_eq!(clock.due_at(start + Duration::from_millis(100)), 10);
        assert_eq!(clock.due_at(start + Duration::from_millis(50)), 0);
        assert_eq!(clock.due_at(start + Duration::from_millis(110)), 1);
    }
}
