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
    /// A gap between two looks at the clock this long is a stall worth reporting.
    stall_after: Duration,
    /// When the clock was last looked at (the loop's last run); none before the first.
    last_look: Option<Duration>,
    stalls: StallLog,
}

/// What a look at the clock found.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Due {
    /// Ticks to feed the core now.
    pub ticks: u64,
    /// The loop did not run for at least `stall_after` before this look.
    pub stalled: bool,
    /// Stalls to report now: rate-limited, see [`StallLog`].
    pub report: Option<StallReport>,
}

/// Stalls since the last report.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct StallReport {
    pub count: u64,
    pub longest: Duration,
}

/// At most one stall warning per this long: an overloaded node stalls many times a second,
/// and a line for each would bury everything else in its log.
const STALL_REPORT_INTERVAL: Duration = Duration::from_secs(10);

/// Counts stalls between reports: the first stall is reported at once, later ones at the
/// first look once the interval has passed (stalled or not, so none goes unreported).
#[derive(Default)]
struct StallLog {
    unreported: u64,
    longest: Duration,
    last_report: Option<Duration>,
}

impl StallLog {
    /// One look at the clock, `stall` the gap before it if it was one.
    fn look(&mut self, stall: Option<Duration>, now: Duration) -> Option<StallReport> {
        if let Some(gap) = stall {
            self.unreported += 1;
            self.longest = self.longest.max(gap);
        }
        if self.unreported == 0 {
            return None;
        }
        let due = self
            .last_report
            .is_none_or(|at| now.saturating_sub(at) >= STALL_REPORT_INTERVAL);
        if !due {
            return None;
        }
        self.last_report = Some(now);
        let report = StallReport {
            count: self.unreported,
            longest: self.longest,
        };
        self.unreported = 0;
        self.longest = Duration::ZERO;
        Some(report)
    }
}

impl TickClock {
    /// A clock feeding ticks of `tick`, at most `catch_up_ticks_max` at a time, that
    /// reports a gap of `stall_after` or more between two looks as a stall.
    pub(super) fn new(tick: Duration, catch_up_ticks_max: u64, stall_after: Duration) -> TickClock {
        let start = now();
        TickClock {
            tick: tick.max(Duration::from_micros(1)),
            catch_up_ticks_max: catch_up_ticks_max.max(1),
            start,
            counted: 0,
            stall_after,
            last_look: None,
            stalls: StallLog::default(),
        }
    }

    /// What is due to the core now.
    pub(super) fn due(&mut self) -> Due {
        self.due_at(now())
    }

    fn due_at(&mut self, now: Duration) -> Due {
        let elapsed = now.saturating_sub(self.start);
        let total = (elapsed.as_nanos() / self.tick.as_nanos()) as u64;
        let due = total.saturating_sub(self.counted);
        self.counted = total.max(self.counted);
        let gap = self
            .last_look
            .map_or(Duration::ZERO, |last| now.saturating_sub(last));
        self.last_look = Some(self.last_look.map_or(now, |last| last.max(now)));
        let stalled = gap >= self.stall_after;
        Due {
            ticks: due.min(self.catch_up_ticks_max),
            stalled,
            report: self.stalls.look(stalled.then_some(gap), now),
        }
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
            stall_after: Duration::from_millis(100),
            last_look: None,
            stalls: StallLog::default(),
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn report(count: u64, longest_ms: u64) -> Option<StallReport> {
        Some(StallReport {
            count,
            longest: ms(longest_ms),
        })
    }

    #[test]
    fn gap_past_the_threshold_is_a_stall_reported_at_once() {
        let start = Duration::from_secs(5);
        let mut clock = clock_at(start);
        // However late the loop first looks, that is its start, not a stall.
        let first = clock.due_at(start + ms(500));
        assert!(!first.stalled && first.report.is_none(), "{first:?}");
        let calm = clock.due_at(start + ms(599));
        assert!(!calm.stalled && calm.report.is_none(), "{calm:?}");
        let stalled = clock.due_at(start + ms(599 + 850));
        assert_eq!(stalled.ticks, 85);
        assert!(stalled.stalled);
        assert_eq!(stalled.report, report(1, 850));
    }

    #[test]
    fn stalls_between_reports_are_counted_into_the_next() {
        let start = Duration::from_secs(5);
        let mut clock = clock_at(start);
        let mut at = start;
        clock.due_at(at);
        let mut look = |gap: u64| {
            at += ms(gap);
            clock.due_at(at)
        };
        assert!(look(200).report.is_some());
        // Three stalls within the interval: counted, not reported.
        for gap in [150, 400, 120] {
            let due = look(gap);
            assert!(due.stalled && due.report.is_none(), "{due:?}");
        }
        // Calm looks report nothing until the interval has passed; the first look after
        // it reports the three, stall or not.
        // (The report was at 5.2 s; the stalls end at 5.87 s, and 98 looks 95 ms apart
        // reach 15.18 s.)
        for _ in 0..98 {
            let due = look(95);
            assert!(!due.stalled && due.report.is_none(), "{due:?}");
        }
        assert_eq!(look(95).report, report(3, 400));
        assert_eq!(look(95).report, None);
        // The next stall comes within the interval of that report: held for the next.
        assert!(look(300).report.is_none());
    }

    #[test]
    fn stall_is_fed_as_the_ticks_it_lasted() {
        let start = Duration::from_secs(50);
        let mut clock = clock_at(start);
        assert_eq!(clock.due_at(start + Duration::from_millis(9)).ticks, 0);
        assert_eq!(clock.due_at(start + Duration::from_millis(10)).ticks, 1);
        // A 850 ms stall: one wake-up owes 85 ticks, not 1.
        assert_eq!(clock.due_at(start + Duration::from_millis(860)).ticks, 85);
        assert_eq!(clock.due_at(start + Duration::from_millis(865)).ticks, 0);
    }

    #[test]
    fn ticks_do_not_drift_with_late_wakeups() {
        let start = Duration::from_secs(1);
        let mut clock = clock_at(start);
        let mut fed = 0;
        // Wake-ups 13 ms apart: a counting timer would owe 1 tick each (100 after 1.3 s).
        for i in 1..=100u64 {
            fed += clock.due_at(start + Duration::from_millis(13 * i)).ticks;
        }
        assert_eq!(fed, 130);
    }

    #[test]
    fn long_stall_is_capped_but_never_refed() {
        let start = Duration::from_secs(1);
        let mut clock = clock_at(start);
        assert_eq!(clock.due_at(start + Duration::from_secs(60)).ticks, 120);
        assert_eq!(clock.due_at(start + Duration::from_millis(60_010)).ticks, 1);
    }

    #[test]
    fn clock_going_backwards_owes_nothing() {
        let start = Duration::from_secs(10);
        let mut clock = clock_at(start);
        assert_eq!(clock.due_at(start + Duration::from_millis(100)).ticks, 10);
        assert_eq!(clock.due_at(start + Duration::from_millis(50)).ticks, 0);
        assert_eq!(clock.due_at(start + Duration::from_millis(110)).ticks, 1);
    }
}
