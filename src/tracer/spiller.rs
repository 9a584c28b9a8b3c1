//! The spiller: a background thread that moves a filling batch out of the
//! shards between flushes, so a burst is neither dropped nor left waiting.
//! The hot path only signals it ([`Inner::wake_spiller`]), after releasing
//! its lock.
//!
//! When the collector is taking spans (no backoff, the circuit closed) and
//! no flush is running (the exporter's lock is free: `try_lock`, never a
//! wait), it *sends* the batch early, a window's worth of requests at a
//! time (two requests for each the sender may have in flight), and
//! spills what the collector did not take and what it did not try: it
//! stops trying at [`EARLY_SEND`] or as soon as the shards fill up to the
//! spiller's mark again (the collector is not keeping up with the spans
//! recorded), so a slow collector costs the spool, never a `queue_full`
//! drop while the disk keeps up. A healthy collector gets fresh spans at
//! once instead of through the spool. Otherwise it spills the batch
//! through the disk thread, so a flush waiting on the collector does not
//! hold it up, as the shards packed it: no span is unpacked on the way
//! ([`Inner::drain_run`], then records cut from the run). It waits for the disk only when the disk thread's queue is
//! full ([`Inner::spill_early`]).

use super::{Inner, lock};
use crate::clock::Clock;
use crate::export::disk::{Disk, Done, Spilled};
use crate::export::report::SpoolFailure;
use crate::span::packed::Run;
use crate::sync::{Condvar, Mutex};
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// The spiller's spills not yet answered, oldest first.
pub(super) type InFlight = VecDeque<Done<Result<Spilled, SpoolFailure>>>;

/// The most an early send takes before what is left is spilled.
pub(super) const EARLY_SEND: Duration = Duration::from_millis(250);

/// Wakes the spiller: a pending flag and its condition variable.
#[derive(Default)]
pub(super) struct Wake {
    pub(super) pending: Mutex<bool>,
    pub(super) cond: Condvar,
    pub(super) stop: std::sync::atomic::AtomicBool,
}

impl Inner {
    /// The spiller thread: waits to be woken, then hands the batch to the
    /// disk thread. It never takes the exporter's lock: a flush waiting on
    /// the collector does not hold it up.
    pub(super) fn spiller(&self) {
        let mut in_flight = VecDeque::new();
        let mut run = Run::default();
        loop {
            {
                let mut pending = lock(&self.wake.pending);
                while !*pending && !self.wake.stop.load(Ordering::SeqCst) {
                    pending = self.wake.cond.wait(pending).unwrap_or_else(|e| e.into_inner());
                }
                if self.wake.stop.load(Ordering::SeqCst) {
                    return;
                }
                *pending = false;
            }
            self.spill_early(&mut in_flight, &mut run);
        }
    }

    /// Spills what the shards hold; outcomes are the disk thread's to count
    /// (a failed spill's spans come back to the next flush).
    ///
    /// Nothing between the shards reaching the mark and their drain waits
    /// on the disk: an early send that stopped because the shards filled
    /// again drains them at once, before what it left is encoded and
    /// spilled, and the spills not yet written (`in_flight`, oldest first)
    /// queue on the disk thread, whose queue is bounded (twice
    /// `max_queue_spans`). Only at that bound does this thread wait, for
    /// its oldest spill: the shards then fill and, past them, spans are
    /// dropped as `queue_full`, so memory stays bounded when the disk does
    /// not keep up.
    pub(super) fn spill_early(&self, in_flight: &mut InFlight, run: &mut Run) {
        let Some(disk) = &self.disk else { return };
        let now = Instant::now();
        in_flight.retain(|done| done.wait(now).is_none());
        let mut batch = match self.exporter.try_lock() {
            Ok(mut exporter) if exporter.is_sending() => {
                let batch = self.drain(exporter.take_buffer());
                let left = exporter.send_early(batch, Instant::now() + EARLY_SEND, &|| self.is_behind());
                if self.is_behind() {
                    *lock(&self.wake.pending) = false;
                    self.drain(left)
                } else {
                    left
                }
            }
            _ => return self.spill_run(disk, in_flight, run),
        };
        if batch.is_empty() {
            return;
        }
        // The disk thread refuses a spill at its bound (or once stopped):
        // wait for the oldest spill in flight and try again; with none
        // left, the spans go back to the exporter.
        loop {
            match disk.spill(Arc::clone(&self.service), batch, self.clock.now_unix_ms()) {
                Ok(done) => return in_flight.push_back(done),
                Err(spans) => {
                    let Some(oldest) = in_flight.pop_front() else {
                        return disk.return_spans(spans);
                    };
                    self.wait_for(&oldest);
                    batch = spans;
                }
            }
        }
    }

    /// Spills what the shards hold as it is packed there, unpacking no
    /// span: as [`Inner::spill_early`] when no early send runs.
    fn spill_run(&self, disk: &Disk, in_flight: &mut InFlight, run: &mut Run) {
        run.clear();
        self.drain_run(run);
        if run.is_empty() {
            return;
        }
        loop {
            match disk.spill_run(Arc::clone(&self.service), run, self.clock.now_unix_ms()) {
                Ok(done) => return in_flight.push_back(done),
                Err(Some(spans)) => return disk.return_spans(spans),
                Err(None) => {
                    let Some(oldest) = in_flight.pop_front() else {
                        let (spans, lost) = run.unpack();
                        if lost > 0 {
                            self.books.lost_in_memory(lost);
                        }
                        return disk.return_spans(spans);
                    };
                    self.wait_for(&oldest);
                }
            }
        }
    }

    /// Whether the shards need the spiller again (woken since it last
    /// looked) or the tracer is stopping: an early send then stops and
    /// what it has not tried is spilled.
    fn is_behind(&self) -> bool {
        *lock(&self.wake.pending) || self.wake.stop.load(Ordering::SeqCst)
    }

    /// Waits for a spill to be done, or for the tracer to stop.
    pub(super) fn wait_for(&self, done: &Done<Result<Spilled, SpoolFailure>>) {
        while done.wait(Instant::now() + Duration::from_millis(100)).is_none() {
            if self.wake.stop.load(Ordering::SeqCst) {
                return;
            }
        }
    }

    pub(super) fn wake_spiller(&self) {
        *lock(&self.wake.pending) = true;
        self.wake.cond.notify_one();
    }
}
