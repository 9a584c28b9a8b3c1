//! Where time comes from, for every layer: the tracer's span times, the
//! exporter's backoff and record ages, the spool's set-aside names. It
//! sits at the bottom so nothing climbs to the tracer for it.
//!
//! The tracer reads the clock for every span start, end and event that does
//! not carry its own timestamp, so the clock is a trait object the tests
//! can replace. [`SystemClock`] reads the wall clock (Zipkin wants epoch
//! microseconds); [`TscClock`] reads the CPU's time-stamp counter through
//! `quanta` (a counter read, a multiply and a shift: a fraction of the
//! system clock's cost) and is tied to the wall clock by one offset,
//! re-read at every flush so it follows NTP corrections; [`ManualClock`] is
//! set by hand. A tracer reads the TSC clock unless its builder is given
//! another (the TSC clock falls back to the OS's monotonic clock where the
//! TSC is not invariant); the tracer's `TracerClock` holds either.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A source of wall-clock time in nanoseconds since the Unix epoch.
pub trait Clock: Send + Sync + 'static {
    /// Now, in nanoseconds since the Unix epoch.
    fn now_unix_nanos(&self) -> u64;

    /// Now, in milliseconds since the Unix epoch.
    fn now_unix_ms(&self) -> u64 {
        self.now_unix_nanos() / 1_000_000
    }

    /// Re-reads the wall clock, for clocks that drift from it. Called from
    /// `flush`, never from the hot path.
    fn recalibrate(&self) {}
}

/// A tracer's clock: the default [`TscClock`] held by value, so the hot
/// path's three readings a span are direct, inlined calls (1.4 ns each
/// cheaper on the project's machines than through a trait object), or the
/// clock a builder was given.
pub(crate) enum TracerClock {
    /// The default.
    Tsc(TscClock),
    /// A clock given to the builder.
    Given(std::sync::Arc<dyn Clock>),
}

impl Clock for TracerClock {
    #[inline]
    fn now_unix_nanos(&self) -> u64 {
        match self {
            TracerClock::Tsc(c) => c.now_unix_nanos(),
            TracerClock::Given(c) => c.now_unix_nanos(),
        }
    }

    fn recalibrate(&self) {
        match self {
            TracerClock::Tsc(c) => c.recalibrate(),
            TracerClock::Given(c) => c.recalibrate(),
        }
    }
}

/// Wall-clock time from the time-stamp counter: the nanoseconds the counter
/// has run since a fixed origin (scaled by `quanta`'s calibration), plus an
/// offset to the Unix epoch.
///
/// Invariants: the origin never changes and the offset is one atomic word,
/// so a reading racing with [`Clock::recalibrate`] uses the old or the new
/// offset, each right to within the drift since the flush before (the
/// calibration's rate error over one flush interval: microseconds). Durations
/// between two readings with the same offset are as precise as the counter.
#[derive(Debug)]
pub struct TscClock {
    clock: quanta::Clock,
    origin: u64,
    /// Unix nanoseconds at `origin`, wrapping (the sum is taken wrapping).
    offset: AtomicU64,
}

impl TscClock {
    /// A clock tied to the wall clock now. The first in a process
    /// calibrates the counter against the OS clock (under a millisecond on
    /// the project's machines).
    pub fn new() -> Self {
        let clock = quanta::Clock::new();
        let clock = TscClock {
            origin: clock.raw(),
            clock,
            offset: AtomicU64::new(0),
        };
        clock.recalibrate();
        clock
    }

    /// Nanoseconds the counter has run since `origin`.
    #[inline]
    fn since_origin(&self) -> u64 {
        self.clock.delta_as_nanos(self.origin, self.clock.raw())
    }
}

impl Default for TscClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TscClock {
    #[inline]
    fn now_unix_nanos(&self) -> u64 {
        self.offset.load(Ordering::Relaxed).wrapping_add(self.since_origin())
    }

    fn recalibrate(&self) {
        let since = self.since_origin();
        let unix = SystemClock.now_unix_nanos();
        self.offset.store(unix.wrapping_sub(since), Ordering::Relaxed);
    }
}

/// The system's wall clock. A clock set before 1970 reads as 0.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[inline]
    fn now_unix_nanos(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    }
}

/// A clock that only moves when told to; for tests.
///
/// ```
/// use spillway::clock::{Clock, ManualClock};
/// let clock = ManualClock::new(1_000);
/// clock.advance(500);
/// assert_eq!(clock.now_unix_nanos(), 1_500);
/// ```
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// A clock reading `start`.
    pub fn new(start: u64) -> Self {
        ManualClock(AtomicU64::new(start))
    }

    /// Moves the clock forward by `nanos`.
    pub fn advance(&self, nanos: u64) {
        self.0.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Sets the clock.
    pub fn set(&self, nanos: u64) {
        self.0.store(nanos, Ordering::Relaxed);
    }
}

impl Clock for ManualClock {
    fn now_unix_nanos(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tsc_clock_reads_the_wall_clock_and_never_goes_back_between_flushes() {
        let tsc = TscClock::new();
        let within = |a: u64, b: u64| a.abs_diff(b) < 50_000_000;
        for _ in 0..3 {
            let (before, now, after) = (
                SystemClock.now_unix_nanos(),
                tsc.now_unix_nanos(),
                SystemClock.now_unix_nanos(),
            );
            assert!(within(now, before) && within(now, after), "{before} {now} {after}");
            let readings: Vec<u64> = (0..1000).map(|_| tsc.now_unix_nanos()).collect();
            assert!(readings.is_sorted(), "monotonic between recalibrations");
            tsc.recalibrate();
        }
    }
}
