//! The flush pipeline: batch -> encoder -> transport -> spool -> replay, and
//! the accounting of every span that passes through it.
//!
//! One flush, [`Exporter::export`]:
//!
//! 1. **Backoff.** After a retryable failure the exporter waits (exponential,
//!    full jitter, at least the collector's `Retry-After`). A flush inside
//!    that window spills the fresh batch without touching the network.
//! 2. **Fresh batch first**, in requests of at most `max_batch_spans` spans
//!    and `max_request_bytes` bytes, so new spans are never starved by a
//!    backlog.
//! 3. **Replay** of the backlog, oldest first, within `replay_budget_spans`:
//!    the in-memory retry buffer, then the spool's records. A record leaves
//!    the spool only once the collector acknowledged it.
//!
//! Each request ends one of four ways: delivered (2xx); retry (unreachable,
//! timeout, 408, 429, 5xx: the rest is spilled and backoff starts); 400 or
//! 413, bisected so only the spans the collector refuses are set aside; or
//! another 4xx, refused whole. Refused spans go to the spool's dead-letter
//! tree (or, without a spool, are dropped as `rejected`); a span that alone
//! exceeds `max_request_bytes` is dropped as `oversize`; a spool record that
//! fails its checks is quarantined and its spans counted as `corrupt`.
//!
//! Invariant: every span handed to `export` ends it counted exactly once:
//! delivered, dead-lettered, dropped by reason, spooled, or held in memory.
//! A flush makes at most one request that fails with a retryable error.

use crate::config::Config;
use crate::span::Span;
use crate::spool::{Entry, Part, Spool, SpoolError};
use crate::stats::{ExportCounters, add, sub};
use crate::transport::{Class, SendError, Transport};
use crate::zipkin::Encoder;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Why a flush did not deliver everything, in words an operator can act on.
#[derive(Debug, Clone, PartialEq, Eq, Default, thiserror::Error)]
pub struct FlushError {
    /// The collector URL.
    pub endpoint: String,
    /// The last failure the collector reported, if it reported one.
    pub cause: Option<SendError>,
    /// When the exporter will try the collector again, if it is backing off.
    pub next_attempt_in: Option<Duration>,
    /// While backing off without a request: the failure that started it.
    pub previous_cause: Option<SendError>,
    /// Spans delivered by this flush.
    pub delivered: usize,
    /// Spans the collector refused for good in this flush.
    pub rejected: usize,
    /// Whether refused spans were kept as dead letters (else dropped).
    pub dead_lettered: bool,
    /// Spans dropped because each alone was larger than a request may be.
    pub oversize: usize,
    /// Spool records quarantined by this flush: key and reason.
    pub quarantined: Vec<(u64, String)>,
    /// Spans written to the spool by this flush.
    pub spilled: usize,
    /// Spans kept in memory for the next flush.
    pub kept_in_memory: usize,
    /// Spans dropped because the spool or the memory buffer was full.
    pub dropped_full: u64,
    /// Spooled spans dropped as older than `max_spool_age_ms`.
    pub expired: u64,
    /// The spool failed (disk full, I/O error): what it said.
    pub spool_error: Option<String>,
    /// The spool after this flush: spans, bytes, cap.
    pub spool: Option<(u64, u64, u64)>,
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1u32 << 20))
}

impl fmt::Display for FlushError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "zipkin {}", self.endpoint)?;
        match (&self.cause, self.next_attempt_in) {
            (Some(cause), _) => write!(f, " {cause}")?,
            (None, Some(_)) => match &self.previous_cause {
                Some(prev) => write!(f, " backing off (last attempt: {prev})")?,
                None => write!(f, " backing off after failures")?,
            },
            (None, None) => {}
        }
        write!(f, "; {} spans delivered", self.delivered)?;
        if self.spilled > 0 {
            write!(f, ", {} spilled", self.spilled)?;
        }
        if self.kept_in_memory > 0 {
            write!(f, ", {} kept in memory for retry", self.kept_in_memory)?;
        }
        if self.rejected > 0 {
            let fate = if self.dead_lettered {
                "kept as dead letters"
            } else {
                "dropped"
            };
            write!(f, ", {} rejected by the collector and {fate}", self.rejected)?;
        }
        if self.oversize > 0 {
            write!(f, ", {} dropped as larger than max_request_bytes", self.oversize)?;
        }
        if self.expired > 0 {
            write!(f, ", {} dropped as older than max_spool_age_ms", self.expired)?;
        }
        if self.dropped_full > 0 {
            write!(
                f,
                ", {} dropped because the buffer was full (oldest first)",
                self.dropped_full
            )?;
        }
        for (key, why) in &self.quarantined {
            write!(f, "; spool record {key} quarantined ({why})")?;
        }
        if let Some(e) = &self.spool_error {
            write!(f, "; spool failed: {e}")?;
        }
        if let Some((spans, bytes, cap)) = self.spool {
            write!(f, "; spool holds {spans} spans, {} of {}", mib(bytes), mib(cap))?;
        }
        if let Some(d) = self.next_attempt_in {
            write!(f, "; next attempt in {:.1}s", d.as_secs_f64())?;
        }
        Ok(())
    }
}

/// What [`Exporter::replay_next`] did with one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replayed {
    /// The record's key.
    pub key: u64,
    /// Spans its header declared.
    pub spans: u64,
    /// Spans the collector took.
    pub delivered: usize,
    /// Spans the collector refused for good (now dead letters).
    pub refused: usize,
    /// Why the record was quarantined instead, if it failed its checks.
    pub quarantined: Option<String>,
}

/// Exponential backoff with full jitter.
#[derive(Debug)]
struct Backoff {
    failures: u32,
    last: Option<SendError>,
    until: Option<Instant>,
    initial: Duration,
    max: Duration,
}

impl Backoff {
    fn remaining(&self, now: Instant) -> Option<Duration> {
        self.until
            .and_then(|u| u.checked_duration_since(now))
            .filter(|d| !d.is_zero())
    }

    fn failed(&mut self, cause: Option<SendError>) -> Duration {
        let retry_after = cause.as_ref().and_then(SendError::retry_after);
        self.last = cause;
        self.failures = self.failures.saturating_add(1);
        let cap = self
            .initial
            .saturating_mul(1u32 << self.failures.saturating_sub(1).min(20))
            .min(self.max);
        let jittered = cap.mul_f64(fastrand::f64());
        let delay = jittered.max(retry_after.unwrap_or_default());
        self.until = Some(Instant::now() + delay);
        delay
    }

    fn succeeded(&mut self) {
        self.failures = 0;
        self.last = None;
        self.until = None;
    }
}

/// Sends batches, spills what could not be sent, replays it later, and keeps
/// the accounting.
pub struct Exporter {
    transport: Box<dyn Transport>,
    /// The service this process records as.
    service: Arc<str>,
    encoder: Encoder,
    body: Vec<u8>,
    retry: Vec<Span>,
    spare: Vec<Span>,
    stack: Vec<(usize, usize)>,
    refused: Vec<(usize, usize)>,
    spool: Option<Spool>,
    /// Where the spool lives, to reopen it after a failure.
    spool_dir: Option<std::path::PathBuf>,
    /// The spool failed; reopen it before the next use (sled stays failed
    /// after an I/O error even once the disk works again).
    spool_broken: bool,
    /// Damage found when the spool was opened, for the next flush to report.
    damage_note: Option<String>,
    /// Queue records settled with the collector whose removal failed with
    /// the spool: removed, without being sent again, once it is reopened.
    settled: Vec<Settled>,
    backoff: Backoff,
    max_batch_spans: usize,
    max_request_bytes: usize,
    max_retry_spans: usize,
    max_spool_bytes: u64,
    max_spool_age_ms: Option<u64>,
    replay_budget: usize,
    replay_budget_time: Duration,
    counters: Arc<ExportCounters>,
}

/// A queue record whose spans the collector settled (took or refused for
/// good) but which the failing spool could not remove. Its delivered spans
/// are counted as delivered, not spooled; reopening the spool removes the
/// record if it is still there, keeping the refused spans as dead letters
/// and spilling the unsent rest again, so it is never sent twice by this
/// process.
struct Settled {
    key: u64,
    created_unix_ms: u64,
    declared_spans: u64,
    /// Spans from the front of the record that were settled.
    done: usize,
    /// Of those, the ones the collector refused.
    refused: Vec<Span>,
}

impl Settled {
    fn delivered(&self) -> u64 {
        self.done.saturating_sub(self.refused.len()) as u64
    }

    fn is(&self, entry: &Entry) -> bool {
        (entry.key, entry.created_unix_ms, entry.declared_spans)
            == (self.key, self.created_unix_ms, self.declared_spans)
    }
}

/// What one flush did.
#[derive(Default)]
struct Tally {
    err: FlushError,
    /// A retryable failure stopped sending.
    stopped: bool,
}

/// Counts spans sled lost (found missing at open, not recoverable) as
/// found and dropped as `corrupt`, keeping the invariant; returns what the
/// next flush should say, if anything.
fn count_damage(counters: &ExportCounters, d: crate::spool::Damage) -> Option<String> {
    add(&counters.recovered, d.lost_spans as usize);
    add(&counters.corrupt, d.lost_spans as usize);
    (d.lost_spans > 0).then(|| {
        format!(
            "the spool's files were damaged: sled held {} of at least {} spooled spans; {} lost (counted as corrupt)",
            d.found_spans, d.expected_spans, d.lost_spans
        )
    })
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Exporter {
    /// An exporter sending through `transport` with `config`'s limits,
    /// spilling to `spool` if there is one.
    pub fn new(
        config: &Config,
        transport: Box<dyn Transport>,
        mut spool: Option<Spool>,
        counters: Arc<ExportCounters>,
    ) -> Self {
        let mut damage_note = None;
        if let Some(s) = &mut spool {
            let st = s.stats();
            counters.recovered.store(st.spans, Ordering::Relaxed);
            counters.spooled.store(st.spans, Ordering::Relaxed);
            damage_note = s.take_damage().and_then(|d| count_damage(&counters, d));
        }
        Exporter {
            transport,
            service: config.service_name.as_str().into(),
            encoder: Encoder::new(&config.service_name),
            body: Vec::new(),
            retry: Vec::new(),
            spare: Vec::new(),
            stack: Vec::new(),
            refused: Vec::new(),
            spool_dir: spool.as_ref().map(|s| s.dir().to_path_buf()),
            spool,
            damage_note,
            settled: Vec::new(),
            spool_broken: false,
            backoff: Backoff {
                failures: 0,
                last: None,
                until: None,
                initial: Duration::from_millis(config.backoff_initial_ms),
                max: Duration::from_millis(config.backoff_max_ms),
            },
            max_batch_spans: config.max_batch_spans,
            max_request_bytes: config.max_request_bytes,
            max_retry_spans: config.max_retry_spans,
            max_spool_bytes: config.max_spool_bytes,
            max_spool_age_ms: config.max_spool_age_ms,
            replay_budget: config.replay_budget_spans,
            replay_budget_time: Duration::from_millis(config.replay_budget_ms),
            counters,
        }
    }

    /// An empty vector with capacity left from an earlier flush, for the
    /// caller to drain the batch into (so flushes do not reallocate).
    pub fn take_buffer(&mut self) -> Vec<Span> {
        std::mem::take(&mut self.spare)
    }

    /// The spool, if there is one (for tools that report on it).
    pub fn spool(&self) -> Option<&Spool> {
        self.spool.as_ref()
    }

    /// Whether anything waits to be sent (memory or spool).
    pub fn has_backlog(&self) -> bool {
        !self.retry.is_empty() || self.spool.as_ref().is_some_and(|s| s.stats().records > 0)
    }

    /// Exports `batch` (whose spans the caller has added to the `held`
    /// gauge), then replays the backlog. See the module docs.
    pub fn export(&mut self, mut batch: Vec<Span>) -> Result<(), Box<FlushError>> {
        let mut tally = Tally::default();
        tally.err.spool_error = self.damage_note.take();
        self.encoder.set_service(&self.service);
        self.reopen_if_broken(&mut tally);
        self.expire(&mut tally);
        if let Some(wait) = self.backoff.remaining(Instant::now()) {
            self.keep(&mut batch, &mut tally);
            tally.err.next_attempt_in = Some(wait);
            tally.err.previous_cause = self.backoff.last.clone();
            return self.finish(tally, batch);
        }
        let done = self.send_all(&batch, &mut tally);
        if done < batch.len() {
            batch.drain(..done);
            self.keep(&mut batch, &mut tally);
        } else {
            batch.clear();
            self.replay(&mut tally);
        }
        if tally.stopped {
            tally.err.next_attempt_in = Some(self.backoff.failed(tally.err.cause.clone()));
        } else {
            self.backoff.succeeded();
        }
        self.finish(tally, batch)
    }

    /// Spills everything held in memory (the retry buffer and `batch`)
    /// without touching the network; for shutdown.
    pub fn spill_all(&mut self, mut batch: Vec<Span>) -> Result<(), Box<FlushError>> {
        let mut tally = Tally::default();
        batch.append(&mut self.retry);
        self.keep(&mut batch, &mut tally);
        self.finish(tally, batch)
    }

    /// Drops spooled records older than `max_spool_age_ms`.
    fn expire(&mut self, tally: &mut Tally) {
        let (Some(spool), Some(age)) = (&mut self.spool, self.max_spool_age_ms) else {
            return;
        };
        match spool.expire(now_ms(), age) {
            Ok(n) => {
                add(&self.counters.spool_expired, n as usize);
                tally.err.expired += n;
            }
            Err(e) => tally.err.spool_error = Some(e.to_string()),
        }
    }

    /// After a spool failure: drop the failed spool, open it afresh, and
    /// move what waits in memory onto it.
    fn reopen_if_broken(&mut self, tally: &mut Tally) {
        let Some(dir) = self.spool_dir.clone().filter(|_| self.spool_broken) else {
            return;
        };
        // What the accounting holds as spooled: the failed spool's counts,
        // less what was delivered from records it could not remove (or, if
        // an earlier reopen failed too, the gauge as it was left).
        let mut counted = match self.spool.take() {
            Some(failed) => failed.stats().spans.saturating_sub(self.settled_delivered()),
            None => self.counters.spooled.load(Ordering::Relaxed),
        };
        match Spool::open(&dir, self.max_spool_bytes) {
            Ok(mut spool) => {
                if let Some(note) = spool.take_damage().and_then(|d| count_damage(&self.counters, d)) {
                    tally.err.spool_error = Some(note);
                }
                if let Err(e) = self.remove_settled(&mut spool, &mut counted) {
                    // Still failing: try again at the next flush.
                    self.counters.spooled.store(counted, Ordering::Relaxed);
                    tally.err.spool_error = Some(format!("reopening after a failure: {e}"));
                    return;
                }
                // The failed spool's counts and what reached the disk can
                // differ: more is a write that did land (a possible
                // duplicate), fewer is a loss. Either way, counted.
                let found = spool.stats().spans;
                if found >= counted {
                    add(&self.counters.recovered, (found - counted) as usize);
                } else {
                    add(&self.counters.corrupt, (counted - found) as usize);
                    tally.err.spool_error = Some(format!(
                        "reopened the spool; {} spooled spans were lost with the failed writes",
                        counted - found
                    ));
                }
                self.counters.spooled.store(found, Ordering::Relaxed);
                self.spool = Some(spool);
                self.spool_broken = false;
                let mut waiting = std::mem::take(&mut self.retry);
                self.keep(&mut waiting, tally);
            }
            Err(e) => tally.err.spool_error = Some(format!("reopening after a failure: {e}")),
        }
    }

    /// Removes from the reopened `spool` the records settled before it
    /// failed (see [`Settled`]), without sending them again. What such a
    /// record still owed (refused spans, an unsent rest) leaves `counted`
    /// as it goes to the dead letters or back to memory; a record whose
    /// removal did reach the disk is simply forgotten, and what it owed
    /// shows up as lost in the caller's comparison.
    fn remove_settled(&mut self, spool: &mut Spool, counted: &mut u64) -> Result<(), SpoolError> {
        while let Some(s) = self.settled.pop() {
            let entry = match spool.get(Part::Queue, s.key) {
                Ok(Some(entry)) if s.is(&entry) => entry,
                Ok(_) => continue,
                Err(e) => {
                    self.settled.push(s);
                    return Err(e);
                }
            };
            if let Err(e) = spool.dead_letter(&entry, &s.refused, now_ms()) {
                self.settled.push(s);
                return Err(e);
            }
            add(&self.counters.dead_lettered, s.refused.len());
            *counted = counted.saturating_sub(s.refused.len() as u64);
            if let Ok(spans) = &entry.spans {
                let rest = spans.get(s.done..).unwrap_or_default();
                *counted = counted.saturating_sub(rest.len() as u64);
                add(&self.counters.held, rest.len());
                self.retry.extend_from_slice(rest);
            }
        }
        Ok(())
    }

    /// Sets the spooled gauge from the spans on disk, less the delivered
    /// spans of records still waiting for their removal.
    fn store_spooled(&self, on_disk: u64) {
        self.counters
            .spooled
            .store(on_disk.saturating_sub(self.settled_delivered()), Ordering::Relaxed);
    }

    /// Spans delivered from records still waiting for their removal.
    fn settled_delivered(&self) -> u64 {
        self.settled.iter().map(Settled::delivered).sum()
    }

    /// Replays the oldest record of `part`, for tools that drive replay
    /// themselves (the CLI): the queue, or the dead letters for another
    /// chance. `Ok(None)` when there is none. A record leaves only once
    /// settled (delivered or refused for good; refused spans become a new
    /// dead letter); if sending stops part-way, the unsent rest is queued
    /// again with the record's age. `Err` when the collector could not take
    /// it (retryable) or the spool failed: the record stays first in line.
    pub fn replay_next(&mut self, part: Part) -> Result<Option<Replayed>, Box<FlushError>> {
        let mut tally = Tally::default();
        let entry = match self.spool.as_ref().map(|s| s.oldest(part, 1)) {
            None => return Ok(None),
            Some(Ok(mut entries)) => match entries.pop() {
                Some(e) => e,
                None => return Ok(None),
            },
            Some(Err(e)) => {
                tally.err.spool_error = Some(e.to_string());
                return Err(Box::new(self.report(tally)));
            }
        };
        let (key, spans) = (entry.key, entry.declared_spans);
        if let Err(e) = self.replay_entry(entry, &mut tally) {
            tally.err.spool_error = Some(e.to_string());
            self.spool_broken = true;
        }
        if tally.stopped || tally.err.spool_error.is_some() {
            return Err(Box::new(self.report(tally)));
        }
        Ok(Some(Replayed {
            key,
            spans,
            delivered: tally.err.delivered,
            refused: tally.err.rejected,
            quarantined: tally.err.quarantined.pop().map(|(_, why)| why),
        }))
    }

    /// Fills in what every flush report carries.
    fn report(&mut self, mut tally: Tally) -> FlushError {
        tally.err.kept_in_memory = self.retry.len();
        if let Some(st) = self.spool.as_ref().map(Spool::stats) {
            self.store_spooled(st.spans);
            tally.err.spool = Some((st.spans, st.bytes, self.max_spool_bytes));
        }
        tally.err.endpoint = self.transport.endpoint().to_owned();
        tally.err.dead_lettered = self.spool.is_some();
        tally.err
    }

    fn finish(&mut self, tally: Tally, mut batch: Vec<Span>) -> Result<(), Box<FlushError>> {
        batch.clear();
        self.spare = batch;
        let e = self.report(tally);
        let clean = e.cause.is_none()
            && e.next_attempt_in.is_none()
            && e.oversize == 0
            && e.quarantined.is_empty()
            && e.dropped_full == 0
            && e.expired == 0
            && e.spool_error.is_none()
            && e.spilled == 0
            && e.kept_in_memory == 0;
        if clean {
            return Ok(());
        }
        Err(Box::new(e))
    }

    /// Moves `spans` (held in memory) to the spool, or, without a working
    /// spool, to the bounded memory buffer.
    fn keep(&mut self, spans: &mut Vec<Span>, tally: &mut Tally) {
        let service = Arc::clone(&self.service);
        self.keep_at(spans, &service, now_ms(), tally);
    }

    /// [`Exporter::keep`] for spans first spilled at `created_unix_ms`, so
    /// they keep their age.
    fn keep_at(&mut self, spans: &mut Vec<Span>, service: &str, created_unix_ms: u64, tally: &mut Tally) {
        if spans.is_empty() {
            return;
        }
        if let Some(spool) = &mut self.spool {
            match spool.push(service, spans, created_unix_ms) {
                Ok(dropped) => {
                    add(&self.counters.spool_full, dropped as usize);
                    tally.err.dropped_full += dropped;
                    tally.err.spilled += spans.len();
                    sub(&self.counters.held, spans.len());
                    spans.clear();
                    return;
                }
                Err(e) => {
                    // Room made before the failure stays made: count it.
                    let dropped = spool.take_dropped();
                    add(&self.counters.spool_full, dropped as usize);
                    tally.err.dropped_full += dropped;
                    tally.err.spool_error = Some(e.to_string());
                    self.spool_broken = true;
                }
            }
        }
        self.retry.append(spans);
        if self.retry.len() > self.max_retry_spans {
            let over = self.retry.len() - self.max_retry_spans;
            self.retry.drain(..over);
            add(&self.counters.retry_full, over);
            sub(&self.counters.held, over);
            tally.err.dropped_full += over as u64;
        }
    }

    /// Replays the memory buffer, then the spool, oldest first, within the
    /// per-flush budget; stops at the first retryable failure.
    fn replay(&mut self, tally: &mut Tally) {
        let mut budget = self.replay_budget;
        let deadline = Instant::now() + self.replay_budget_time;
        if !self.retry.is_empty() {
            let n = self.retry.len().min(budget);
            let mut head: Vec<Span> = self.retry.drain(..n).collect();
            budget -= n;
            let done = self.send_all(&head, tally);
            if done < head.len() {
                // The unsent rest, then what was behind it, go to disk where
                // there is one (else back to the memory buffer, in order).
                head.drain(..done);
                head.append(&mut self.retry);
                self.keep(&mut head, tally);
                return;
            }
        }
        // At least one record per flush, however slow, so replay always progresses.
        let mut replayed_any = false;
        while budget > 0 && !tally.stopped {
            let entries = match self.spool.as_ref().map(|s| s.oldest(Part::Queue, 4)) {
                None => return,
                Some(Ok(entries)) if entries.is_empty() => return,
                Some(Ok(entries)) => entries,
                Some(Err(e)) => {
                    tally.err.spool_error = Some(e.to_string());
                    self.spool_broken = true;
                    return;
                }
            };
            for entry in entries {
                if budget == 0 || tally.stopped || (replayed_any && Instant::now() >= deadline) {
                    return;
                }
                replayed_any = true;
                budget = budget.saturating_sub(entry.declared_spans.max(1) as usize);
                if let Err(e) = self.replay_entry(entry, tally) {
                    tally.err.spool_error = Some(e.to_string());
                    self.spool_broken = true;
                    return;
                }
            }
        }
    }

    fn replay_entry(&mut self, entry: Entry, tally: &mut Tally) -> Result<(), SpoolError> {
        self.encoder.set_service(&entry.service);
        let spans = match &entry.spans {
            Ok(spans) => spans,
            Err(why) => {
                tally.err.quarantined.push((entry.key, why.to_string()));
                add(&self.counters.corrupt, entry.declared_spans as usize);
                if let Some(s) = &mut self.spool {
                    s.quarantine(&entry)?;
                }
                return Ok(());
            }
        };
        let done = self.send_all_inner(spans, tally, false);
        let refused: Vec<Span> = self
            .refused
            .iter()
            .flat_map(|&(a, b)| spans[a..b].iter().cloned())
            .collect();
        let Some(spool) = &mut self.spool else { return Ok(()) };
        if done == 0 {
            // Nothing settled: the record stays where it is, first in line,
            // with its age.
            return Ok(());
        }
        // The settled part leaves with the record; if sending stopped
        // part-way, the rest is spilled again (or held in memory if the
        // spool fails) with the record's original age.
        let removed = spool.dead_letter(&entry, &refused, now_ms());
        let on_disk = spool.stats().spans;
        if let Err(e) = removed {
            if entry.part == Part::Queue {
                self.settled.push(Settled {
                    key: entry.key,
                    created_unix_ms: entry.created_unix_ms,
                    declared_spans: entry.declared_spans,
                    done,
                    refused,
                });
                self.store_spooled(on_disk);
            }
            return Err(e);
        }
        if entry.part == Part::Queue {
            add(&self.counters.dead_lettered, refused.len());
        }
        self.store_spooled(on_disk);
        if done < spans.len() {
            let mut rest = spans[done..].to_vec();
            add(&self.counters.held, rest.len());
            self.keep_at(&mut rest, &entry.service, entry.created_unix_ms, tally);
        }
        Ok(())
    }

    /// Sends in-memory spans (counted in `held`) in order; returns how many
    /// from the front are settled. Refused spans are dead-lettered (with a
    /// spool) or dropped.
    fn send_all(&mut self, spans: &[Span], tally: &mut Tally) -> usize {
        let done = self.send_all_inner(spans, tally, true);
        let refused: usize = self.refused.iter().map(|(a, b)| b - a).sum();
        if refused > 0 {
            sub(&self.counters.held, refused);
            let dead: Vec<Span> = self
                .refused
                .iter()
                .flat_map(|&(a, b)| spans[a..b].iter().cloned())
                .collect();
            let service = Arc::clone(&self.service);
            match self.spool.as_mut().map(|s| s.add_dead(&service, &dead, now_ms())) {
                Some(Ok(())) => add(&self.counters.dead_lettered, refused),
                Some(Err(e)) => {
                    tally.err.spool_error = Some(e.to_string());
                    add(&self.counters.rejected, refused);
                }
                None => add(&self.counters.rejected, refused),
            }
        }
        done
    }

    /// Sends `spans` in requests; records refused ranges in `self.refused`.
    /// `held` says whether the spans are counted in the memory gauge.
    fn send_all_inner(&mut self, spans: &[Span], tally: &mut Tally, held: bool) -> usize {
        self.refused.clear();
        let mut i = 0;
        while i < spans.len() {
            let end = self.encode_chunk(spans, i);
            if end == i {
                tally.err.oversize += 1;
                add(&self.counters.oversize, 1);
                if held {
                    sub(&self.counters.held, 1);
                }
                i += 1;
                continue;
            }
            match self.send_bisecting(spans, i, end, tally, held) {
                Ok(()) => i = end,
                Err(stopped_at) => {
                    tally.stopped = true;
                    return stopped_at;
                }
            }
        }
        spans.len()
    }

    /// Encodes spans from `start` into `self.body` while they fit; returns
    /// the end of the chunk.
    fn encode_chunk(&mut self, spans: &[Span], start: usize) -> usize {
        self.body.clear();
        self.body.push(b'[');
        let mut end = start;
        while end < spans.len() && end - start < self.max_batch_spans {
            let mark = self.body.len();
            if end > start {
                self.body.push(b',');
            }
            self.encoder.encode_span(&spans[end], &mut self.body);
            if self.body.len() + 1 > self.max_request_bytes {
                self.body.truncate(mark);
                break;
            }
            end += 1;
        }
        self.body.push(b']');
        end
    }

    /// Sends `spans[start..end]` (already encoded in `self.body`), splitting
    /// it on 400 and 413 until only refused spans remain. On a retryable
    /// failure returns the index of the first span not settled.
    fn send_bisecting(
        &mut self,
        spans: &[Span],
        start: usize,
        end: usize,
        tally: &mut Tally,
        held: bool,
    ) -> Result<(), usize> {
        self.stack.clear();
        self.stack.push((start, end));
        let mut encoded = true;
        while let Some((a, b)) = self.stack.pop() {
            if !encoded {
                self.body.clear();
                self.encoder.encode_batch(&spans[a..b], &mut self.body);
            }
            encoded = false;
            add(&self.counters.requests, 1);
            let err = match self.transport.send(&self.body) {
                Ok(()) => {
                    tally.err.delivered += b - a;
                    add(&self.counters.delivered, b - a);
                    if held {
                        sub(&self.counters.held, b - a);
                    }
                    continue;
                }
                Err(err) => err,
            };
            add(&self.counters.failed_requests, 1);
            let splittable = matches!(&err, SendError::Status { status: 400 | 413, .. }) && b - a > 1;
            match err.class() {
                Class::Retry => {
                    tally.err.cause = Some(err);
                    return Err(a);
                }
                _ if splittable => {
                    let mid = a + (b - a) / 2;
                    self.stack.push((mid, b));
                    self.stack.push((a, mid));
                }
                Class::TooLarge | Class::Rejected => {
                    tally.err.rejected += b - a;
                    self.refused.push((a, b));
                    tally.err.cause = Some(err);
                }
            }
        }
        Ok(())
    }
}
