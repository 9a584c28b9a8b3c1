//! Where the tracer's time comes from.
//!
//! The tracer reads the clock for every span start, end and event that does
//! not carry its own timestamp, so the clock is a trait object the tests
//! can replace. [`SystemClock`] reads the wall clock (Zipkin wants epoch
//! microseconds); [`TscClock`] reads the CPU's time-stamp counter (about
//! half the cost) and is anchored to the wall clock, re-anchored at every
//! flush so it follows NTP corrections; [`ManualClock`] is set by hand.
//! [`default_clock`] picks the TSC clock where the TSC is usable.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A source of wall-clock time in nanoseconds since the Unix epoch.
pub trait Clock: Send + Sync + 'static {
    /// Now, in nanoseconds since the Unix epoch.
    fn now_unix_nanos(&self) -> u64;

    /// Re-reads the wall clock, for clocks that drift from it. Called from
    /// `flush`, never from the hot path.
    fn recalibrate(&self) {}
}

/// The fastest accurate clock on this machine: [`TscClock`] where the TSC
/// is stable, else [`SystemClock`].
pub fn default_clock() -> std::sync::Arc<dyn Clock> {
    if fastant::is_tsc_available() {
        std::sync::Arc::new(TscClock::new())
    } else {
        std::sync::Arc::new(SystemClock)
    }
}

/// Wall-clock time from the time-stamp counter: `anchor_unix` plus the
/// TSC time elapsed since `anchor`. Durations between two readings are as
/// precise as the TSC; the absolute time is as right as the last anchor.
/// A reader racing with [`Clock::recalibrate`] may see the new wall time
/// with the old counter: off by the correction (microseconds), never more.
#[derive(Debug)]
pub struct TscClock {
    anchor: fastant::Atomic,
    anchor_unix: AtomicU64,
}

impl TscClock {
    /// A clock anchored now.
    pub fn new() -> Self {
        let clock = TscClock {
            anchor: fastant::Atomic::new(fastant::Instant::now()),
            anchor_unix: AtomicU64::new(0),
        };
        clock.recalibrate();
        clock
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
        let anchor = self.anchor.load(Ordering::Relaxed);
        let since = fastant::Instant::now().saturating_duration_since(anchor);
        self.anchor_unix
            .load(Ordering::Relaxed)
            .saturating_add(u64::try_from(since.as_nanos()).unwrap_or(u64::MAX))
    }

    fn recalibrate(&self) {
        let now = fastant::Instant::now();
        let unix = SystemClock.now_unix_nanos();
        self.anchor_unix.store(unix, Ordering::Relaxed);
        self.anchor.store(now, Ordering::Relaxed);
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
