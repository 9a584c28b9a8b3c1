//! When to try the collector again once a flush stopped sending (the
//! collector fails most requests, refuses every request, or asked for a
//! `Retry-After` past the flush's deadline): exponential backoff with full
//! jitter, never sooner than the collector's `Retry-After`. A request that
//! fails alone is retried within the flush instead (`send`).
//!
//! A pure type: time comes in as the tracer's clock reading (unix
//! milliseconds, so a `ManualClock` drives it in tests) and the jitter as a
//! number in `0..1`. After the `n`th failure in a row the wait is a
//! uniform draw below `min(initial * 2^(n-1), max)`, raised to the
//! `Retry-After` if the collector sent one; a flush that sent without
//! stopping resets it.

use crate::transport::SendError;
use std::time::Duration;

/// Backoff state (see the module docs).
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    failures: u32,
    last: Option<SendError>,
    until_ms: Option<u64>,
    initial: Duration,
    max: Duration,
}

impl Backoff {
    /// No failure yet; waits start at `initial` and grow to `max`.
    pub(crate) fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            failures: 0,
            last: None,
            until_ms: None,
            initial,
            max,
        }
    }

    /// How long is left to wait at `now_ms`, if anything.
    pub(crate) fn remaining(&self, now_ms: u64) -> Option<Duration> {
        let until = self.until_ms?;
        (until > now_ms).then(|| Duration::from_millis(until - now_ms))
    }

    /// The failure that started the current wait, if one was reported.
    pub(crate) fn last(&self) -> Option<&SendError> {
        self.last.as_ref()
    }

    /// Records a failure at `now_ms` with `jitter` in `0..1`; returns the
    /// wait before the next attempt.
    pub(crate) fn failed(&mut self, cause: Option<SendError>, now_ms: u64, jitter: f64) -> Duration {
        let retry_after = cause.as_ref().and_then(SendError::retry_after);
        self.last = cause;
        self.failures = self.failures.saturating_add(1);
        let cap = self
            .initial
            .saturating_mul(1u32 << self.failures.saturating_sub(1).min(20))
            .min(self.max);
        // The collector's Retry-After is a floor, up to the operator's
        // ceiling: `backoff_max_ms` is the longest wait, whoever asks.
        let floor = retry_after.unwrap_or_default().min(self.max);
        let delay = cap.mul_f64(jitter.clamp(0.0, 1.0)).max(floor);
        self.until_ms = Some(now_ms.saturating_add(delay.as_millis() as u64));
        delay
    }

    /// Records a success: the next failure starts from `initial` again.
    pub(crate) fn succeeded(&mut self) {
        self.failures = 0;
        self.last = None;
        self.until_ms = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_cap_with_jitter_and_reset_on_success() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1_000));
        assert_eq!(b.remaining(0), None);
        assert_eq!(b.failed(None, 0, 1.0), Duration::from_millis(100));
        assert_eq!(b.failed(None, 0, 1.0), Duration::from_millis(200));
        assert_eq!(b.failed(None, 0, 0.5), Duration::from_millis(200));
        for _ in 0..30 {
            b.failed(None, 0, 1.0);
        }
        assert_eq!(b.failed(None, 5_000, 1.0), Duration::from_millis(1_000), "capped");
        assert_eq!(b.remaining(5_400), Some(Duration::from_millis(600)));
        assert_eq!(b.remaining(6_000), None, "over at the deadline");
        b.succeeded();
        assert_eq!((b.failures, b.remaining(5_400)), (0, None));
        assert_eq!(b.failed(None, 0, 0.0), Duration::ZERO);
    }

    #[test]
    fn retry_after_is_a_floor_up_to_the_longest_wait() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        let long = SendError::Status {
            status: 503,
            retry_after: Some(Duration::from_secs(3_600)),
            body: String::new(),
        };
        assert_eq!(b.failed(Some(long), 0, 0.1), Duration::from_secs(10));
        let busy = SendError::Status {
            status: 429,
            retry_after: Some(Duration::from_secs(7)),
            body: String::new(),
        };
        assert_eq!(b.failed(Some(busy.clone()), 1_000, 0.1), Duration::from_secs(7));
        assert_eq!(b.last(), Some(&busy));
        assert_eq!(b.remaining(2_000), Some(Duration::from_secs(6)));
    }
}
