//! The books: every count the export side keeps, changed only through the
//! transitions below, each one outcome of one span, under one lock.
//!
//! The hot path keeps its own counts in its shards (spans started,
//! recorded, dropped as `queue_full`); everything after a span leaves the
//! shards is written here, once, by whoever saw the outcome: the flush for
//! what the collector said, the disk thread for what the spool did. A
//! transition moves spans from one term of the accounting equation to
//! another, so with no flush and no spool round running:
//!
//! ```text
//! recorded + recovered == delivered + in_memory + spooled + dead_lettered + dropped
//! ```
//!
//! where, of the terms kept here, `in_memory` counts [`Counts::held`] (spans
//! the pipeline owns: being sent, waiting for a retry, handed to the disk
//! thread), and `spooled` is [`Counts::on_disk`] less [`Counts::settling`]
//! (spans of spool records the collector already settled, whose removal
//! has not reached the disk yet: counted as delivered, not twice).

use crate::stats::Stats;
use std::sync::{Mutex, MutexGuard};

/// The export side's counts (see the module docs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Spans the collector acknowledged.
    pub delivered: u64,
    /// Spans the pipeline owns, in memory.
    pub held: u64,
    /// Spans refused for good with no spool to keep them.
    pub rejected: u64,
    /// Spans that alone exceed a request.
    pub oversize: u64,
    /// Spans dropped from a full retry buffer.
    pub retry_full: u64,
    /// Requests made.
    pub requests: u64,
    /// Requests that did not end in a 2xx.
    pub failed_requests: u64,
    /// Spans in the spool's queue, as its counts say.
    pub on_disk: u64,
    /// Of `on_disk`, spans already counted as settled (delivered or
    /// oversize) whose record's removal is not yet durable.
    pub settling: u64,
    /// Spans found in the spool when it was opened.
    pub recovered: u64,
    /// Spans kept as dead letters.
    pub dead_lettered: u64,
    /// Spans dropped by the spool's cap.
    pub spool_full: u64,
    /// Spans dropped as older than the age cap.
    pub spool_expired: u64,
    /// Spans lost to damage.
    pub corrupt: u64,
}

/// The export side's books, shared by the flush, the disk thread and
/// `stats()` readers.
#[derive(Debug, Default)]
pub struct Books(Mutex<Counts>);

fn sub(a: &mut u64, n: u64) {
    *a = a.saturating_sub(n);
}

impl Books {
    fn lock(&self) -> MutexGuard<'_, Counts> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A copy of every count, consistent with itself.
    pub fn counts(&self) -> Counts {
        *self.lock()
    }

    /// Adds the books to a snapshot of the hot path's counts.
    pub(crate) fn fill(&self, s: &mut Stats) {
        let c = self.counts();
        s.delivered = c.delivered;
        s.in_memory += c.held;
        s.dropped.retry_full = c.retry_full;
        s.dropped.rejected = c.rejected;
        s.dropped.oversize = c.oversize;
        s.requests = c.requests;
        s.failed_requests = c.failed_requests;
        s.spooled = c.on_disk.saturating_sub(c.settling);
        s.recovered = c.recovered;
        s.dead_lettered = c.dead_lettered;
        s.dropped.spool_full = c.spool_full;
        s.dropped.spool_expired = c.spool_expired;
        s.dropped.corrupt = c.corrupt;
    }

    /// `n` spans left the shards for the pipeline.
    pub fn took(&self, n: u64) {
        self.lock().held += n;
    }

    /// `n` held spans could not be read back from the ended buffer.
    pub fn lost_in_memory(&self, n: u64) {
        let mut c = self.lock();
        sub(&mut c.held, n);
        c.corrupt += n;
    }

    /// A request was made; `failed` if it did not end in a 2xx.
    pub fn request(&self, failed: bool) {
        let mut c = self.lock();
        c.requests += 1;
        c.failed_requests += u64::from(failed);
    }

    /// `n` held spans were delivered.
    pub fn delivered(&self, n: u64) {
        let mut c = self.lock();
        sub(&mut c.held, n);
        c.delivered += n;
    }

    /// `n` held spans were dropped as larger than a request.
    pub fn oversize(&self, n: u64) {
        let mut c = self.lock();
        sub(&mut c.held, n);
        c.oversize += n;
    }

    /// `n` held spans were refused for good and there is no spool to keep
    /// them (or it failed).
    pub fn rejected(&self, n: u64) {
        let mut c = self.lock();
        sub(&mut c.held, n);
        c.rejected += n;
    }

    /// `n` held spans were dropped from a full retry buffer.
    pub fn retry_full(&self, n: u64) {
        let mut c = self.lock();
        sub(&mut c.held, n);
        c.retry_full += n;
    }

    /// Of a spool record, `delivered` spans were delivered and `oversize`
    /// dropped as larger than a request; they leave `spooled` now and the
    /// record's removal settles them on disk ([`Books::settled`]).
    pub fn settled_from_spool(&self, delivered: u64, oversize: u64) {
        let mut c = self.lock();
        c.delivered += delivered;
        c.oversize += oversize;
        c.settling += delivered + oversize;
    }

    /// `n` held spans are on disk now; the spool's cap dropped `evicted`
    /// older spans to make room.
    pub fn spilled(&self, n: u64, evicted: u64) {
        let mut c = self.lock();
        sub(&mut c.held, n);
        c.on_disk = (c.on_disk + n).saturating_sub(evicted);
        c.spool_full += evicted;
    }

    /// `n` held spans the collector refused for good are dead letters now.
    pub fn dead_lettered(&self, n: u64) {
        let mut c = self.lock();
        sub(&mut c.held, n);
        c.dead_lettered += n;
    }

    /// A spool record of `declared` spans left the queue, durably: `counted`
    /// of them were settled by [`Books::settled_from_spool`], `refused` are
    /// dead letters now, `requeued` were queued again (unsent).
    pub fn settled(&self, declared: u64, counted: u64, refused: u64, requeued: u64) {
        let mut c = self.lock();
        c.on_disk = c.on_disk.saturating_sub(declared) + requeued;
        sub(&mut c.settling, counted);
        c.dead_lettered += refused;
    }

    /// `n` spooled spans were dropped as older than the age cap.
    pub fn expired(&self, n: u64) {
        let mut c = self.lock();
        sub(&mut c.on_disk, n);
        c.spool_expired += n;
    }

    /// A spool record of `n` spans failed its checks and was quarantined.
    pub fn quarantined(&self, n: u64) {
        let mut c = self.lock();
        sub(&mut c.on_disk, n);
        c.corrupt += n;
    }

    /// The spool was opened holding `found` spans, of which the books
    /// counted `on_disk` already (0 at the first open). More than counted
    /// is recovered (a previous run's, or a write that reached the disk
    /// after all: a possible duplicate, never a loss); fewer were lost and
    /// count as corrupt. Returns the spans lost.
    pub fn opened(&self, found: u64) -> u64 {
        let mut c = self.lock();
        let counted = c.on_disk;
        if found >= counted {
            c.recovered += found - counted;
        } else {
            c.corrupt += counted - found;
        }
        c.on_disk = found;
        counted.saturating_sub(found)
    }

    /// The spool's files lost `n` spans before this process could open
    /// it (damage found at open): found, and dropped as corrupt.
    pub fn lost_before_open(&self, n: u64) {
        let mut c = self.lock();
        c.recovered += n;
        c.corrupt += n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn balance(c: &Counts, recorded: u64) -> bool {
        recorded + c.recovered
            == c.delivered
                + c.held
                + (c.on_disk - c.settling)
                + c.dead_lettered
                + c.rejected
                + c.oversize
                + c.retry_full
                + c.spool_full
                + c.spool_expired
                + c.corrupt
    }

    #[test]
    fn every_transition_keeps_the_equation() {
        let b = Books::default();
        b.opened(10);
        assert!(balance(&b.counts(), 0));
        b.took(100);
        b.delivered(40);
        b.spilled(30, 5);
        b.dead_lettered(5);
        b.rejected(5);
        b.oversize(5);
        b.retry_full(5);
        b.lost_in_memory(5);
        assert_eq!(b.counts().held, 5);
        assert!(balance(&b.counts(), 100), "{:?}", b.counts());
        // A 10-span record: 6 delivered, 1 oversize, 2 refused, 1 requeued.
        b.settled_from_spool(6, 1);
        assert!(balance(&b.counts(), 100), "{:?}", b.counts());
        b.settled(10, 7, 2, 1);
        assert!(balance(&b.counts(), 100), "{:?}", b.counts());
        b.expired(3);
        b.quarantined(2);
        assert!(balance(&b.counts(), 100), "{:?}", b.counts());
        // Reopened: 4 spans fewer on disk than counted.
        let on_disk = b.counts().on_disk;
        assert_eq!(b.opened(on_disk - 4), 4);
        b.lost_before_open(7);
        assert!(balance(&b.counts(), 100), "{:?}", b.counts());
    }
}
