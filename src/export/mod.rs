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
//! 1. **Backoff** ([`backoff`]). Once the collector failed most requests
//!    (the [`circuit`] opened) the exporter waits; a flush inside that
//!    window spills the fresh batch without touching the network; if the
//!    disk is still spilling it when the window ends (a slow or frozen
//!    disk), the flush goes on to the collector with the spans ended
//!    meanwhile instead of waiting out its deadline. A success closes the
//!    circuit and resets the wait.
//! 2. **Fresh batch first** ([`send`]), so new spans are never starved by a
//!    backlog. Every request is bounded by what the deadline leaves.
//! 3. **Replay** of the backlog, oldest first, within the [`pace`]'s
//!    window (AIMD: it grows while the collector takes everything and
//!    halves on congestion; `replay_budget_spans` is its ceiling) and
//!    `replay_budget_ms`: the memory buffer, then the spool's records.
//!    Records go side by side as the sender's window allows, each settled
//!    on its own, and leave the spool only once the collector settled
//!    them; the next records are read while these are sent, and sent while
//!    the last ones' removals are made durable, at most [`UNSETTLED`]
//!    records unsettled at once, so a crash repeats at most that many.
//!
//! The spool is only ever touched through the disk thread ([`disk`]), and
//! the flush waits for it no longer than its deadline: a spill still
//! running then completes on its own (its spans stay counted as in memory
//! until it does). The background spiller hands the thread batches the
//! same way, so it never waits for the network or for this flush.
//!
//! A request ends one of five ways (see [`crate::transport::Class`]):
//! delivered; retry later (retried within the flush a few times, then
//! kept while the other requests go on; sending stops only once the
//! circuit opens); the collector refuses everything it is sent (401, 403,
//! 404, ...: kept, backoff, and the error says what to check); 413, split
//! until it fits; or refused (400, other 4xx), bisected so only the
//! refused spans are set aside as dead letters (without a spool: dropped
//! as `rejected`).
//!
//! Every outcome is recorded once in the [`books`]; the flush report
//! ([`report::FlushError`]) says what this flush did and why.

mod allowance;
pub(crate) mod backoff;
pub(crate) mod books;
pub(crate) mod circuit;
pub(crate) mod disk;
pub(crate) mod pace;
pub(crate) mod rate;
mod replay;
pub(crate) mod report;
pub(crate) mod send;

use crate::clock::Clock;
use crate::config::Config;
use crate::span::Span;
use crate::spool::state::ReplayRate;
use crate::spool::{StoredRecord, Tree};
use crate::transport::Transport;
use crate::zipkin::Encoder;
use backoff::Backoff;
use books::Books;
use disk::{Disk, Settle};
pub use replay::{Replayed, UNSETTLED};
use report::{Cause, FlushError};
use send::{Sender, Stop};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Spill passes a shutdown makes at most (a failed spill hands its spans
/// back; the spool may take them on the next pass, once reopened).
const SHUTDOWN_PASSES: usize = 3;

/// Spans the first replaying flush may send; the pace doubles from there
/// while the collector takes everything, and grows by this much a flush
/// after congestion. Small, as TCP starts: a fleet reopening its backlogs
/// at once against one collector is refused less (`tests/fleet.rs`: 8.6 to
/// 9.0 % of requests refused from 1,024, 12.7 to 14.0 % from 8,192), at the
/// cost of three more flushes for a lone tracer to reach a large window.
const INITIAL_REPLAY_SPANS: usize = 1_024;

/// How often a replay takes the spans ended meanwhile and sends them first.
pub(crate) const FRESH_EVERY: Duration = Duration::from_millis(100);

/// How long a flush waits for the disk thread to spill a batch.
#[derive(Debug, Clone, Copy)]
enum Wait {
    /// Until the flush's deadline.
    Deadline,
    /// Until the deadline or the end of the backoff, whichever comes
    /// first (checked every [`FRESH_EVERY`]).
    WhileBackingOff,
}

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
    /// How many spooled spans a flush replays (AIMD, see [`pace`]).
    pace: pace::Pace,
    replay_budget_time: Duration,
    flush_timeout: Duration,
    books: Arc<Books>,
    /// The pace of replay, kept in the spool with each settled record.
    meter: rate::Meter,
    /// Bytes replay may put on the wire (`replay_max_bytes_per_s`).
    allowance: Option<allowance::Allowance>,
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
                Encoder::with_encoding(config.encoding, &config.service_name),
                config.max_batch_spans,
                config.max_request_bytes,
            )
            .with_in_flight(config.max_requests_in_flight),
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
            pace: pace::Pace::new(INITIAL_REPLAY_SPANS, config.max_batch_spans, config.replay_budget_spans),
            replay_budget_time: Duration::from_millis(config.replay_budget_ms),
            flush_timeout: config.flush_timeout(),
            books,
            meter: rate::Meter::default(),
            allowance: config
                .replay_max_bytes_per_s
                .map(|per_s| allowance::Allowance::new(per_s, Instant::now())),
        }
    }

    /// Bytes of request bodies this exporter put on the wire, every
    /// attempt counted (for tools that pace themselves).
    pub fn bytes_sent(&self) -> u64 {
        self.sender.bytes_sent()
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
    /// replays the backlog, returning by `deadline`. While replaying, it
    /// calls `fresh` every `FRESH_EVERY` (100 ms), between records and while
    /// it waits for the disk thread, for spans ended since (counted as held)
    /// and sends them first, so a long replay neither delays fresh spans nor
    /// lets them be spilled behind the backlog. See the module docs.
    pub fn export(
        &mut self,
        mut batch: Vec<Span>,
        deadline: Instant,
        fresh: &mut dyn FnMut() -> Vec<Span>,
    ) -> Result<(), Box<FlushError>> {
        let mut r = FlushError::default();
        self.take_from_disk(&mut r);
        if self.disk.is_some() && !self.retry.is_empty() {
            // Held in memory while the spool failed: to disk first, so the
            // spool (reopened by this very job if it can be) holds them.
            let held = std::mem::take(&mut self.retry);
            self.spill_or_hold(held, deadline, Wait::Deadline, &mut r);
        }
        let now = self.clock.now_unix_ms();
        self.expire(now, deadline, &mut r);
        if self.backoff.remaining(now).is_some() {
            self.spill_or_hold(batch, deadline, Wait::WhileBackingOff, &mut r);
            match self.backoff_left() {
                Some(wait) => {
                    r.next_attempt_in = Some(wait);
                    r.because(Cause::BackingOff {
                        last: self.backoff.last().cloned(),
                    });
                    return self.finish(r);
                }
                // The backoff ended while the disk was still spilling (a
                // slow or frozen disk): the collector is tried now, with
                // the spans ended meanwhile, rather than letting them pile
                // up until the deadline.
                None => batch = fresh(),
            }
        }
        let stopped = self.send_fresh(&batch, deadline, &mut r);
        self.reuse(batch);
        let (stopped, used_all) = match stopped {
            Some(stop) => (Some(stop), false),
            None => self.replay(deadline, fresh, &mut r),
        };
        self.pace.update(used_all, self.sender.take_congested());
        match stopped {
            Some(Stop::Failed(e)) => {
                self.pace.restart();
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
        // Everything handed to the disk before now, by this flush, an
        // earlier one or the spiller, is durable before the flush says Ok:
        // waited for until the deadline, and what is not is reported.
        if let Some(disk) = &self.disk {
            let mark = disk.mark();
            r.spilling = disk.wait_through(mark, deadline) as usize;
        }
        self.finish(r)
    }

    /// Whether the collector is taking spans: no backoff running and the
    /// circuit closed (so an early send is worth trying).
    pub fn is_sending(&self) -> bool {
        self.backoff_left().is_none() && !self.sender.circuit_open()
    }

    /// What is left of the backoff now, if one is running.
    fn backoff_left(&self) -> Option<Duration> {
        self.backoff.remaining(self.clock.now_unix_ms())
    }

    /// Sends `batch` (counted as held) without replaying, a window's worth
    /// of requests at a time, keeping (spilling) what the collector does not take: the
    /// spiller's early send while the collector is healthy. It stops at
    /// `deadline`, when sending stops, or as soon as `behind()` says the
    /// spans ended meanwhile need the caller (the collector is not keeping
    /// up), and returns the spans it did not try, for the caller to spill.
    /// Outcomes go to the books; the next flush reports what went wrong.
    pub fn send_early(&mut self, mut batch: Vec<Span>, deadline: Instant, behind: &dyn Fn() -> bool) -> Vec<Span> {
        let mut r = FlushError::default();
        // A round of the sender's at a time, so the window can be used;
        // `behind` is asked between rounds.
        let step = self.sender.round_spans();
        let mut start = 0;
        while start < batch.len() && Instant::now() < deadline && (start == 0 || !behind()) {
            let end = (start + step).min(batch.len());
            let stop = self.send_fresh(&batch[start..end], deadline, &mut r);
            start = end;
            if let Some(stop) = stop {
                if let Stop::Failed(e) = stop {
                    self.backoff.failed(Some(e), self.clock.now_unix_ms(), fastrand::f64());
                }
                break;
            }
        }
        let rest = batch.split_off(start);
        self.reuse(batch);
        rest
    }

    /// Keeps `batch`'s capacity for the next [`Exporter::take_buffer`].
    fn reuse(&mut self, mut batch: Vec<Span>) {
        batch.clear();
        self.spare = batch;
    }

    /// Keeps everything held in memory (the retry buffer and `batch`) in the
    /// spool without touching the network, for shutdown: then waits, until
    /// `deadline` (`budget` from the start), for every spill job queued
    /// before, the spiller's included, and spills again what a failed
    /// spill returned (a few passes at most). `Ok(())` only when nothing
    /// is left that is not durable; else the error names how many spans are
    /// still being written (`spilling`) or held in memory.
    pub fn spill_all(
        &mut self,
        mut batch: Vec<Span>,
        deadline: Instant,
        budget: Duration,
    ) -> Result<(), Box<FlushError>> {
        let mut r = FlushError::default();
        self.take_from_disk(&mut r);
        let mut all = std::mem::take(&mut self.retry);
        all.append(&mut batch);
        for _ in 0..SHUTDOWN_PASSES {
            // Without a working spool this holds them in memory.
            self.spill_or_hold(all, deadline, Wait::Deadline, &mut r);
            let Some(disk) = self.disk.clone() else { break };
            if !disk.wait_written(deadline) {
                break;
            }
            self.take_from_disk(&mut r);
            if self.retry.is_empty() || !disk.is_working() || Instant::now() >= deadline {
                break;
            }
            all = std::mem::take(&mut self.retry);
        }
        r.spilling = self.disk.as_ref().map_or(0, |d| d.queued() as usize);
        let not_durable = r.spilling as u64 + self.retry.len() as u64;
        if not_durable > 0 {
            r.because(Cause::ShutdownUnfinished { budget, not_durable });
        }
        let r = self.report(r);
        // Spilling is what a shutdown is for: only what is not durable, a
        // drop or a failed spool makes it an error.
        if not_durable == 0 && r.dropped_full == 0 && !r.spool_failed() {
            return Ok(());
        }
        Err(Box::new(r))
    }

    /// Takes what the disk thread has to say, and the spans it returned
    /// (failed spills).
    fn take_from_disk(&mut self, r: &mut FlushError) {
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

    /// Sends fresh spans (the flush's batch, those ended while it replays,
    /// the spiller's early batch), keeping (spilling) what the collector
    /// does not take; returns why sending stopped, if it did.
    fn send_fresh(&mut self, spans: &[Span], deadline: Instant, r: &mut FlushError) -> Option<Stop> {
        if spans.is_empty() {
            return None;
        }
        let service = Arc::clone(&self.service);
        let sent = self.send_held(spans, &service, deadline, r);
        if !sent.kept.is_empty() {
            self.spill_or_hold(sent.kept_of(spans), deadline, Wait::Deadline, r);
        }
        sent.stopped
    }

    /// Sends held spans (fresh or from the memory buffer) and records their
    /// outcomes; refused spans become dead letters (without a spool, or if
    /// it fails, dropped as `rejected`).
    fn send_held(&mut self, spans: &[Span], service: &Arc<str>, deadline: Instant, r: &mut FlushError) -> send::Sent {
        let sent = self.sender.send(spans, service, deadline, &self.books);
        self.books.delivered(sent.delivered as u64);
        self.books.oversize(sent.oversize as u64);
        r.note(&sent);
        let refused = sent.refused_spans();
        if refused > 0 {
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

    /// Keeps held `spans`: the disk thread spills them (waiting for it as
    /// `wait` says), or, without a working spool, the bounded memory
    /// buffer holds them.
    fn spill_or_hold(&mut self, spans: Vec<Span>, deadline: Instant, wait: Wait, r: &mut FlushError) {
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
                    r.because(Cause::DiskBehind { waiting: disk.queued() });
                }
                return self.hold(spans, r);
            }
        };
        let outcome = match wait {
            Wait::Deadline => done.wait(deadline),
            Wait::WhileBackingOff => loop {
                let outcome = done.wait(deadline.min(Instant::now() + FRESH_EVERY));
                if outcome.is_some() || Instant::now() >= deadline || self.backoff_left().is_none() {
                    break outcome;
                }
            },
        };
        match outcome {
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
