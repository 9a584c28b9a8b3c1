//! The replay rate: spans per second that replay delivers while it is
//! sending, so operators can tell when a backlog will be gone.
//!
//! Only the time spent on a record counts (sending it and waiting for its
//! removal to be durable), not the waits between flushes, so the rate is
//! the pace of the collector, the link and the disk together; a tracer
//! whose per-flush budget (`replay_budget_spans`) is the limit drains
//! slower than this. Each record's share decays by a fifth per record, so
//! the rate follows a collector that speeds up or slows down within a few
//! records while one slow request does not swing it.

use std::time::Duration;

/// How much of the past each new record keeps.
const KEEP: f64 = 0.8;

/// A decaying measure of spans delivered per second of replay.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Meter {
    spans: f64,
    secs: f64,
}

impl Meter {
    /// `spans` were delivered from the spool in `took`.
    pub(crate) fn record(&mut self, spans: usize, took: Duration) {
        self.spans = self.spans * KEEP + spans as f64;
        self.secs = self.secs * KEEP + took.as_secs_f64();
    }

    /// Spans per second, once something was measured.
    pub(crate) fn spans_per_s(&self) -> Option<u64> {
        (self.secs > 0.0 && self.spans > 0.0).then(|| (self.spans / self.secs).round().max(1.0) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_follows_the_pace_and_smooths_one_slow_record() {
        let mut m = Meter::default();
        assert_eq!(m.spans_per_s(), None);
        for _ in 0..20 {
            m.record(500, Duration::from_millis(10));
        }
        assert_eq!(m.spans_per_s(), Some(50_000));
        // One record ten times slower moves it, but not tenfold.
        m.record(500, Duration::from_millis(100));
        let after = m.spans_per_s().unwrap();
        assert!((15_000..50_000).contains(&after), "{after}");
        // A collector that stays slow is followed within a few dozen records.
        for _ in 0..40 {
            m.record(500, Duration::from_millis(100));
        }
        let slow = m.spans_per_s().unwrap();
        assert!((5_000..5_100).contains(&slow), "{slow}");
    }
}
