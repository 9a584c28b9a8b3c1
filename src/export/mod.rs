//! The flush pipeline: the batch goes to the collector, what it cannot take
//! goes to the spool, and the backlog comes back when the collector does.
//!
//! ```text
//! batch ──▶ send (encode, POST, bisect refusals) ──2xx──▶ delivered
//!   │            │ retry later / misconfigured / deadline
//!   │            ▼
//!   │        spill_or_hold: the disk thread spills it (or memory, bounded)
//!   ▼
//! replay: memory buffer, then the spool's oldest records, within budget
//! ```
//!
//! One flush, [`Exporter::export`], runs against a deadline
//! (`flush_timeout_ms`), whatever the network and the disk do:
//!
//! 1. **Backoff** ([`backoff`]). After a retryable failure the exporter
//!    waits; a flush inside that window spills the fresh batch without
//!    touching the network.
//! 2. **Fresh batch first** ([`send`]), so new spans are never starved by a
//!    backlog. Every request is bounded by what the deadline leaves.
//! 3. **Replay** of the backlog, oldest first, within `replay_budget_spans`
//!    and `replay_budget_ms`: the memory buffer, then the spool's records.
//!    A record leaves the spool only once the collector settled it, and the
//!    next is sent only once that removal is durable, so a crash repeats at
//!    most one record.
//!
//! The spool is only ever touched through the disk thread ([`disk`]), and
//! the flush waits for it no longer than its deadline: a spill still
//! running then completes on its own (its spans stay counted as in memory
//! until it does). The background spiller hands the thread batches the
//! same way, so it never waits for the network or for this flush.
//!
//! A request ends one of five ways (see [`crate::transport::Class`]):
//! delivered; retry later (the rest is kept, backoff starts); the
//! collector refuses everything it is sent (401, 403, 404, ...: kept,
//! backoff, and the error says what to check); 413, split until it fits;
//! or refused (400, other 4xx), bisected so only the refused spans are set
//! aside as dead letters (without a spool: dropped as `rejected`).
//!
//! Every outcome is recorded once in the [`books`]; the flush report
//! ([`report::FlushError`]) says what this flush did and why.

pub mod backoff;
pub mod books;
pub mod disk;
pub mod rate;
mod replay;
pub mod report;
pub mod send;

use crate::clock::Clock;
use crate::config::Config;
use crate::span::Span;
use crate::spool::state::ReplayRate;
use crate::spool::{StoredRecord, Tree};
use crate::transport::Transport;
use backoff::Backoff;
use books::Books;
use disk::{Disk, Settle};
pub use replay::Replayed;
use report::{Cause, FlushError};
use send::{Sender, Stop};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Sends batches, spills what could not be sent, replays it later, and keeps
/// the accounting.
pub struct Exporter {
    sender: Sender,
    /// The service this process records as.
    service: Arc<str>,
    /// Spans held in memory for a retry, oldest first (counted as held).
    retry: Vec<Span>,
    spare: Vec<Span>,
    disk: Option<Arc<Disk>>,
    backoff: Backoff,
    clock: Arc<dyn Clock>,
    max_retry_spans: usize,
    max_spool_bytes: u64,
    max_spool_age_ms: Option<u64>,
    replay_budget: usize,
    replay_budget_time: Duration,
    flush_timeout: Duration,
    books: Arc<Books>,
    /// The pace of replay, kept in the spool with each settled record.
    meter: rate::Meter,
}

impl Exporter {
    /// An exporter sending through `transport` with `config`'s limits,
    /// spilling through `disk` if there is one, reading time from `clock`
    /// (record ages and backoff).
    pub fn new(
        config: &Config,
        transport: Box<dyn Transport>,
        disk: Option<Arc<Disk>>,
        books: Arc<Books>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Exporter {
            sender: Sender::new(
                transport,
                &config.service_name,
                config.max_batch_spans,
                config.max_request_bytes,
            ),
            service: config.service_name.as_str().into(),
            retry: Vec::new(),
            spare: Vec::new(),
            disk,
            backoff: Backoff::new(
                Duration::from_millis(config.backoff_initial_ms),
                Duration::from_millis(config.backoff_max_ms),
            ),
            clock,
            max_retry_spans: config.max_retry_spans,
            max_spool_bytes: config.max_spool_bytes,
            max_spool_age_ms: config.max_spool_age_ms,
            replay_budget: config.replay_budget_spans,
            replay_budget_time: Duration::from_millis(config.replay_budget_ms),
            flush_timeout: config.flush_timeout(),
            books,
            meter: rate::Meter::default(),
        }
    }

    /// An empty vector with capacity left from an earlier flush, for the
    /// caller to drain the batch into (so flushes do not reallocate).
    pub fn take_buffer(&mut self) -> Vec<Span> {
        std::mem::take(&mut self.spare)
    }

    /// The disk thread, if there is a spool.
    pub fn disk(&self) -> Option<&Arc<Disk>> {
        self.disk.as_ref()
    }

    /// The time budget of one flush.
    pub fn flush_timeout(&self) -> Duration {
        self.flush_timeout
    }

    /// Whether anything waits to be sent (memory or spool).
    pub fn has_backlog(&self) -> bool {
        !self.retry.is_empty()
            || self
                .disk
                .as_ref()
                .is_some_and(|d| d.has_records() || !d.is_working() || d.queued() > 0)
    }

    /// Exports `batch` (whose spans the caller counted as held), then
    /// replays the backlog, returning by `deadline`. See the module docs.
    pub fn export(&mut self, batch: Vec<Span>, deadline: Instant) -> Result<(), Box<FlushError>> {
        let mut r = FlushError::default();
        self.take_back(&mut r);
        if self.disk.is_some() && !self.retry.is_empty() {
            // Held in memory while the spool failed: to disk first, so the
            // spool (reopened by this very job if it can be) holds them.
            let held = std::mem::take(&mut self.retry);
            self.spill_or_hold(held, deadline, &mut r);
        }
        let now = self.clock.now_unix_ms();
        self.expire(now, deadline, &mut r);
        if let Some(wait) = self.backoff.remaining(now) {
            self.spill_or_hold(batch, deadline, &mut r);
            r.next_attempt_in = Some(wait);
            r.because(Cause::BackingOff {
                last: self.backoff.last().cloned(),
            });
            return self.finish(r);
        }
        let service = Arc::clone(&self.service);
        let sent = self.send_held(&batch, &service, deadline, &mut r);
        let stopped = sent.stopped.clone();
        let mut batch = batch;
        if sent.settled == batch.len() {
            batch.clear();
            self.spare = batch;
        } else {
            batch.drain(..sent.settled);
            self.spill_or_hold(batch, deadline, &mut r);
        }
        let stopped = match stopped {
            Some(stop) => Some(stop),
            None => self.replay(deadline, &mut r),
        };
        match stopped {
            Some(Stop::Failed(e)) => {
                let wait = self
                    .backoff
                    .failed(Some(e.clone()), self.clock.now_unix_ms(), fastrand::f64());
                r.next_attempt_in = Some(wait);
                r.because(Cause::Collector(e));
            }
            Some(Stop::Deadline) => r.because(Cause::Deadline {
                budget: self.flush_timeout,
            }),
            None => self.backoff.succeeded(),
        }
        self.finish(r)
    }

    /// Keeps everything held in memory (the retry buffer and `batch`) in the
    /// spool without touching the network, by `deadline`; for shutdown.
    pub fn spill_all(&mut self, mut batch: Vec<Span>, deadline: Instant) -> Result<(), Box<FlushError>> {
        let mut r = FlushError::default();
        self.take_back(&mut r);
        let mut all = std::mem::take(&mut self.retry);
        all.append(&mut batch);
        self.spill_or_hold(all, deadline, &mut r);
        self.finish(r)
    }

    /// Takes what the disk thread has to say, and the spans it handed back
    /// (failed spills).
    fn take_back(&mut self, r: &mut FlushError) {
        if let Some(disk) = &self.disk {
            for cause in disk.take_causes() {
                r.because(cause);
            }
        }
        self.take_returned(r);
    }

    /// Takes back the spans of failed spills, to hold them in memory.
    fn take_returned(&mut self, r: &mut FlushError) {
        let Some(disk) = &self.disk else { return };
        let mut returned = disk.take_returned();
        if !returned.is_empty() {
            returned.append(&mut self.retry);
            self.retry = returned;
            self.bound_retry(r);
        }
    }

    /// Drops spooled records older than `max_spool_age_ms`.
    fn expire(&mut self, now_ms: u64, deadline: Instant, r: &mut FlushError) {
        let (Some(disk), Some(age)) = (&self.disk, self.max_spool_age_ms) else {
            return;
        };
        if !disk.has_records() {
            return;
        }
        match disk.expire(now_ms, age).and_then(|done| done.wait(deadline)) {
            Some(Ok(n)) => r.expired += n,
            Some(Err(e)) => r.because(Cause::Spool(e)),
            None => {}
        }
    }

    /// Sends held spans (fresh or from the memory buffer) and records their
    /// outcomes; refused spans become dead letters (without a spool, or if
    /// it fails, dropped as `rejected`).
    fn send_held(&mut self, spans: &[Span], service: &Arc<str>, deadline: Instant, r: &mut FlushError) -> send::Sent {
        let sent = self.sender.send(spans, service, deadline, &self.books);
        self.books.delivered(sent.delivered as u64);
        self.books.oversize(sent.oversize as u64);
        r.delivered += sent.delivered;
        r.oversize += sent.oversize;
        let refused = sent.refused_spans();
        if refused > 0 {
            r.refused += refused;
            if let Some(e) = &sent.last_refusal {
                r.because(Cause::Collector(e.clone()));
            }
            let dead = sent.refused_of(spans);
            let kept = self
                .disk
                .as_ref()
                .and_then(|d| d.dead(Arc::clone(service), dead, self.clock.now_unix_ms()))
                .map(|done| done.wait(deadline));
            match kept {
                Some(Some(Ok(()))) => {}
                // Still being written: the disk thread records it.
                Some(None) => {}
                // The disk thread counted them as rejected.
                Some(Some(Err(e))) => r.because(Cause::Spool(e)),
                None => self.books.rejected(refused as u64),
            }
        }
        sent
    }

    /// Keeps held `spans`: the disk thread spills them (waiting for it
    /// until `deadline`), or, without a working spool, the bounded memory
    /// buffer holds them.
    fn spill_or_hold(&mut self, spans: Vec<Span>, deadline: Instant, r: &mut FlushError) {
        if spans.is_empty() {
            return;
        }
        let Some(disk) = &self.disk else {
            return self.hold(spans, r);
        };
        let n = spans.len();
        let created = self.clock.now_unix_ms();
        let done = match disk.spill(Arc::clone(&self.service), spans, created) {
            Ok(done) => done,
            Err(spans) => {
                if disk.is_working() {
                    r.because(Cause::Spool(format!(
                        "the disk is not keeping up ({} spans waiting to be written)",
                        disk.queued()
                    )));
                }
                return self.hold(spans, r);
            }
        };
        match done.wait(deadline) {
            Some(Ok(spilled)) => {
                r.spilled += spilled.spans as usize;
                r.dropped_full += spilled.evicted;
            }
            Some(Err(e)) => {
                r.because(Cause::Spool(e));
                self.take_returned(r);
            }
            None => r.spilling += n,
        }
    }

    /// Holds `spans` in the memory buffer, oldest dropped past its bound.
    fn hold(&mut self, mut spans: Vec<Span>, r: &mut FlushError) {
        self.retry.append(&mut spans);
        self.bound_retry(r);
    }

    fn bound_retry(&mut self, r: &mut FlushError) {
        if self.retry.len() > self.max_retry_spans {
            let over = self.retry.len() - self.max_retry_spans;
            self.retry.drain(..over);
            self.books.retry_full(over as u64);
            r.dropped_full += over as u64;
        }
    }

    /// Fills in what every flush report carries.
    fn report(&mut self, mut r: FlushError) -> FlushError {
        if let Some(problem) = self.disk.as_ref().and_then(|d| d.problem())
            && !r.causes.iter().any(|c| matches!(c, Cause::Spool(_)))
        {
            r.because(Cause::Spool(problem));
        }
        r.kept_in_memory = self.retry.len();
        if let Some(st) = self.disk.as_ref().and_then(|d| d.stats()) {
            let c = self.books.counts();
            r.spool = Some((c.on_disk.saturating_sub(c.settling), st.bytes, self.max_spool_bytes));
        }
        r.endpoint = self.sender.endpoint().to_owned();
        r.dead_lettered = self.disk.is_some();
        r
    }

    fn finish(&mut self, r: FlushError) -> Result<(), Box<FlushError>> {
        let r = self.report(r);
        if r.is_clean() {
            return Ok(());
        }
        Err(Box::new(r))
    }
}
