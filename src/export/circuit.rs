//! The circuit: whether the collector is failing most requests, so that
//! sending should stop for this flush and the exporter back off.
//!
//! A pure type fed one outcome per HTTP attempt (retries included). It
//! keeps the last [`WINDOW`] outcomes; it *opens* when at least
//! [`MIN_FAILURES`] of them failed and failures are a clear majority (over
//! two thirds) of those it has seen, so a collector that fails one request
//! in three or one in a hundred never opens it in practice (two thirds of
//! 64 is 6 standard deviations away at one in three), while a dead one
//! opens it within [`MIN_FAILURES`] attempts. A collector failing between
//! a half and two thirds of requests still delivers most spans through
//! the retries, so it is kept sending to. Only answers that say the collector
//! is not taking spans count as failures (retryable failures and
//! misconfiguration); a refusal of bad spans (400, 413) is an answer.
//! A success while open *closes* it and forgets the window: the collector
//! is back.

/// Outcomes remembered.
pub(crate) const WINDOW: u32 = 64;
/// Failures in the window needed before it can open.
pub(crate) const MIN_FAILURES: u32 = 4;

/// See the module docs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Circuit {
    /// One bit an attempt, newest lowest; 1 is a failure.
    failures: u64,
    seen: u32,
    open: bool,
}

impl Circuit {
    /// Records one attempt's outcome.
    pub(crate) fn record(&mut self, ok: bool) {
        if ok && self.open {
            *self = Circuit::default();
        }
        self.failures = (self.failures << 1) | u64::from(!ok);
        self.seen = (self.seen + 1).min(WINDOW);
        let failed = self.failures.count_ones();
        if failed >= MIN_FAILURES && 3 * failed > 2 * self.seen {
            self.open = true;
        }
    }

    /// Whether the collector fails most requests (see the module docs).
    pub(crate) fn is_open(&self) -> bool {
        self.open
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_collector_opens_it_within_min_failures_and_a_success_closes_it() {
        let mut c = Circuit::default();
        for _ in 0..MIN_FAILURES - 1 {
            c.record(false);
            assert!(!c.is_open());
        }
        c.record(false);
        assert!(c.is_open());
        c.record(false);
        assert!(c.is_open(), "a failed probe keeps it open");
        c.record(true);
        assert!(!c.is_open());
        c.record(false);
        assert!(!c.is_open(), "the window was forgotten");
    }

    #[test]
    fn one_failure_in_three_or_in_a_hundred_never_opens_it() {
        for every in [3u32, 100] {
            let mut c = Circuit::default();
            for i in 0..100_000u32 {
                c.record(i % every != every - 1);
                assert!(!c.is_open(), "1 in {every}, attempt {i}");
            }
        }
    }

    #[test]
    fn random_failures_at_a_third_rarely_open_it_and_a_majority_does() {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut c = Circuit::default();
        let mut opened = 0;
        for _ in 0..100_000 {
            c.record(rng.u32(0..3) != 0);
            if c.is_open() {
                opened += 1;
                c.record(true);
            }
        }
        assert!(opened <= 1, "opened {opened} times in 100,000 attempts");
        let mut c = Circuit::default();
        for i in 0..WINDOW {
            c.record(i % 4 == 0);
        }
        assert!(c.is_open(), "three failures in four");
    }
}
