//! The replay's allowance of bytes on the wire, for metered links
//! (`replay_max_bytes_per_s`): a token bucket that refills at the
//! configured rate and holds at most one second of it.
//!
//! A pure type: time comes in as an [`Instant`] so tests drive it. A
//! flush's replay asks [`Allowance::may_send`] before each record (the
//! `replay` command sleeps [`Allowance::wait`] instead) and reports what
//! the record's requests put on the wire with [`Allowance::spent`]; a record
//! may overdraw the balance (a record is never split for the allowance),
//! and the debt is repaid before the next one goes, so over any window
//! the bytes sent stay within `rate * window` plus one second's refill and
//! one record's requests. Fresh spans are never held back by it.

use std::time::{Duration, Instant};

/// See the module docs.
#[derive(Debug, Clone, Copy)]
pub(super) struct Allowance {
    per_s: f64,
    balance: f64,
    at: Instant,
}

impl Allowance {
    /// An allowance of `per_s` bytes a second, full at `now`.
    pub(super) fn new(per_s: u64, now: Instant) -> Allowance {
        let per_s = per_s.max(1) as f64;
        Allowance {
            per_s,
            balance: per_s,
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let earned = now.saturating_duration_since(self.at).as_secs_f64() * self.per_s;
        self.balance = (self.balance + earned).min(self.per_s);
        self.at = now;
    }

    /// Whether replay may send another record at `now` (the balance is
    /// positive).
    pub(super) fn may_send(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.balance > 0.0
    }

    /// How long from `now` until replay may send again (zero when it may).
    pub(super) fn wait(&mut self, now: Instant) -> Duration {
        self.refill(now);
        if self.balance > 0.0 {
            return Duration::ZERO;
        }
        // Just past the debt, so `may_send` then says yes.
        Duration::from_secs_f64(-self.balance / self.per_s) + Duration::from_micros(1)
    }

    /// Records `bytes` put on the wire at `now`.
    pub(super) fn spent(&mut self, bytes: u64, now: Instant) {
        self.refill(now);
        self.balance -= bytes as f64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_may_overdraw_and_the_debt_is_repaid_at_the_rate() {
        let t0 = Instant::now();
        let mut a = Allowance::new(1_000, t0);
        assert!(a.may_send(t0));
        a.spent(3_000, t0); // balance -2,000
        assert!(!a.may_send(t0 + Duration::from_millis(1_999)));
        assert!(a.may_send(t0 + Duration::from_millis(2_001)));
        a.spent(3_000, t0 + Duration::from_millis(2_001));
        let wait = a.wait(t0 + Duration::from_millis(2_001));
        // A balance of 1 left, 3,000 spent: 2,999 to repay at 1,000 a second.
        assert!(
            wait > Duration::from_millis(2_990) && wait < Duration::from_millis(3_010),
            "{wait:?}"
        );
        assert!(a.may_send(t0 + Duration::from_millis(2_001) + wait));
    }

    #[test]
    fn an_idle_allowance_holds_one_second_at_most() {
        let t0 = Instant::now();
        let mut a = Allowance::new(1_000, t0);
        assert!(a.may_send(t0 + Duration::from_secs(3_600)));
        a.spent(1_000, t0 + Duration::from_secs(3_600));
        assert!(!a.may_send(t0 + Duration::from_secs(3_600)));
    }

    #[test]
    fn over_any_window_the_bytes_stay_within_the_rate_plus_a_second_and_a_record() {
        let t0 = Instant::now();
        let mut a = Allowance::new(10_000, t0);
        let (mut sent, record) = (0u64, 4_000u64);
        // A sender that tries every millisecond for 10 s.
        for ms in 0..10_000u64 {
            let now = t0 + Duration::from_millis(ms);
            if a.may_send(now) {
                a.spent(record, now);
                sent += record;
            }
        }
        assert!(sent <= 10_000 * 10 + 10_000 + record, "{sent}");
        assert!(sent >= 10_000 * 9, "the allowance is used: {sent}");
    }
}
