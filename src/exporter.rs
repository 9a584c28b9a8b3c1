//! The flush pipeline: batch -> encoder -> transport, and what happens to
//! every span that was not delivered.
//!
//! [`Exporter::export`] takes the drained batch, puts the spans waiting from
//! earlier failures in front of it (oldest first), and sends them in
//! requests of at most `max_batch_spans` spans and `max_request_bytes`
//! bytes. Each request ends in one of four ways:
//!
//! - **delivered** (2xx): counted in `delivered`;
//! - **retry** (unreachable, timeout, 408, 429, 5xx): this request and all
//!   after it are kept for the next flush, oldest first, up to
//!   `max_retry_spans`; past that the oldest are dropped as `retry_full`;
//! - **too large** (413) or **bad request** (400): the request is bisected
//!   and the halves sent again, so only the spans the collector refuses are
//!   dropped (as `rejected`, or `oversize` for a span that alone exceeds
//!   `max_request_bytes`);
//! - **rejected** (another 4xx): the request's spans are dropped as
//!   `rejected`.
//!
//! Invariant: every span handed to `export` is, when it returns, counted in
//! exactly one of `delivered`, a drop reason, or `held` (the retry buffer).
//! A flush makes at most one request that fails with a retryable error, so
//! a dead collector costs a flush at most one timeout.

use crate::config::Config;
use crate::span::Span;
use crate::stats::{ExportCounters, add, sub};
use crate::transport::{Class, SendError, Transport};
use crate::zipkin::Encoder;
use std::fmt;
use std::sync::Arc;

/// Why a flush did not deliver everything, in words an operator can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct FlushError {
    /// The collector URL.
    pub endpoint: String,
    /// The last failure the collector reported, if it reported one.
    pub cause: Option<SendError>,
    /// Spans delivered by this flush.
    pub delivered: usize,
    /// Spans this flush dropped because the collector refused them.
    pub rejected: usize,
    /// Spans this flush dropped because each alone was too large to send.
    pub oversize: usize,
    /// Spans kept in memory for the next flush.
    pub kept: usize,
    /// Spans this flush dropped because the retry buffer was full.
    pub dropped_retry_full: usize,
}

impl fmt::Display for FlushError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.cause {
            Some(cause) => write!(f, "zipkin {} {cause}", self.endpoint)?,
            None => write!(f, "zipkin {}", self.endpoint)?,
        }
        write!(f, "; {} spans delivered", self.delivered)?;
        if self.kept > 0 {
            write!(f, ", {} kept in memory for retry", self.kept)?;
        }
        if self.rejected > 0 {
            write!(f, ", {} rejected by the collector and dropped", self.rejected)?;
        }
        if self.oversize > 0 {
            write!(f, ", {} dropped as larger than max_request_bytes", self.oversize)?;
        }
        if self.dropped_retry_full > 0 {
            write!(
                f,
                ", {} dropped because the retry buffer was full",
                self.dropped_retry_full
            )?;
        }
        Ok(())
    }
}

/// Sends batches and keeps the accounting of what could not be sent.
pub struct Exporter {
    transport: Box<dyn Transport>,
    encoder: Encoder,
    body: Vec<u8>,
    retry: Vec<Span>,
    spare: Vec<Span>,
    stack: Vec<(usize, usize)>,
    max_batch_spans: usize,
    max_request_bytes: usize,
    max_retry_spans: usize,
    counters: Arc<ExportCounters>,
}

/// What one flush did, before it is turned into `Ok` or a [`FlushError`].
#[derive(Default)]
struct Tally {
    delivered: usize,
    rejected: usize,
    oversize: usize,
    last_error: Option<SendError>,
}

impl Exporter {
    /// An exporter sending through `transport` with `config`'s limits.
    pub fn new(config: &Config, transport: Box<dyn Transport>, counters: Arc<ExportCounters>) -> Self {
        Exporter {
            transport,
            encoder: Encoder::new(&config.service_name),
            body: Vec::new(),
            retry: Vec::new(),
            spare: Vec::new(),
            stack: Vec::new(),
            max_batch_spans: config.max_batch_spans,
            max_request_bytes: config.max_request_bytes,
            max_retry_spans: config.max_retry_spans,
            counters,
        }
    }

    /// An empty vector with capacity left from an earlier flush, for the
    /// caller to drain the batch into (so flushes do not reallocate).
    pub fn take_buffer(&mut self) -> Vec<Span> {
        std::mem::take(&mut self.spare)
    }

    /// The spans the pipeline holds, for accounting: the caller adds to this
    /// gauge when it hands spans over.
    pub fn counters(&self) -> &Arc<ExportCounters> {
        &self.counters
    }

    /// Exports the waiting spans and then `batch`. `batch`'s spans must
    /// already be counted in the `held` gauge.
    pub fn export(&mut self, mut batch: Vec<Span>) -> Result<(), FlushError> {
        let mut queue = std::mem::take(&mut self.retry);
        queue.append(&mut batch);
        self.spare = batch;
        let mut tally = Tally::default();
        let done = self.send_all(&queue, &mut tally);
        let retry_error = tally.last_error.as_ref().is_some_and(|e| e.class() == Class::Retry);
        queue.drain(..done);
        let mut dropped_retry_full = 0;
        if queue.len() > self.max_retry_spans {
            dropped_retry_full = queue.len() - self.max_retry_spans;
            queue.drain(..dropped_retry_full);
            add(&self.counters.retry_full, dropped_retry_full);
            sub(&self.counters.held, dropped_retry_full);
        }
        let kept = queue.len();
        self.retry = queue;
        if tally.last_error.is_none() && tally.oversize == 0 && dropped_retry_full == 0 {
            return Ok(());
        }
        Err(FlushError {
            endpoint: self.transport.endpoint().to_owned(),
            cause: tally.last_error,
            delivered: tally.delivered,
            rejected: tally.rejected,
            oversize: tally.oversize,
            kept: if retry_error { kept } else { 0 },
            dropped_retry_full,
        })
    }

    /// Sends `queue` in order; returns how many spans from the front are
    /// settled (delivered or dropped). Stops at the first retryable failure.
    fn send_all(&mut self, queue: &[Span], tally: &mut Tally) -> usize {
        let mut i = 0;
        while i < queue.len() {
            let end = self.encode_chunk(queue, i);
            if end == i {
                // This span alone is over max_request_bytes.
                tally.oversize += 1;
                self.settle(1, &self.counters.oversize);
                i += 1;
                continue;
            }
            match self.send_bisecting(queue, i, end, tally) {
                Ok(()) => i = end,
                Err(stopped_at) => return stopped_at,
            }
        }
        queue.len()
    }

    /// Encodes spans from `start` into `self.body` while they fit; returns
    /// the end of the chunk.
    fn encode_chunk(&mut self, queue: &[Span], start: usize) -> usize {
        self.body.clear();
        self.body.push(b'[');
        let mut end = start;
        while end < queue.len() && end - start < self.max_batch_spans {
            let mark = self.body.len();
            if end > start {
                self.body.push(b',');
            }
            self.encoder.encode_span(&queue[end], &mut self.body);
            if self.body.len() + 1 > self.max_request_bytes {
                self.body.truncate(mark);
                break;
            }
            end += 1;
        }
        self.body.push(b']');
        end
    }

    /// Sends `queue[start..end]` (already encoded in `self.body`), splitting
    /// it on 400 and 413 until only refused spans remain. On a retryable
    /// failure returns the index of the first span not settled.
    fn send_bisecting(&mut self, queue: &[Span], start: usize, end: usize, tally: &mut Tally) -> Result<(), usize> {
        self.stack.clear();
        self.stack.push((start, end));
        let mut encoded = true;
        while let Some((a, b)) = self.stack.pop() {
            if !encoded {
                self.body.clear();
                self.encoder.encode_batch(&queue[a..b], &mut self.body);
            }
            encoded = false;
            add(&self.counters.requests, 1);
            let err = match self.transport.send(&self.body) {
                Ok(()) => {
                    tally.delivered += b - a;
                    self.settle(b - a, &self.counters.delivered);
                    continue;
                }
                Err(err) => err,
            };
            add(&self.counters.failed_requests, 1);
            let splittable = matches!(&err, SendError::Status { status: 400 | 413, .. }) && b - a > 1;
            match err.class() {
                Class::Retry => {
                    tally.last_error = Some(err);
                    return Err(a);
                }
                _ if splittable => {
                    let mid = a + (b - a) / 2;
                    self.stack.push((mid, b));
                    self.stack.push((a, mid));
                }
                Class::TooLarge | Class::Rejected => {
                    tally.rejected += b - a;
                    self.settle(b - a, &self.counters.rejected);
                    tally.last_error = Some(err);
                }
            }
        }
        Ok(())
    }

    /// Moves `n` spans from the held gauge to a final counter.
    fn settle(&self, n: usize, counter: &std::sync::atomic::AtomicU64) {
        add(counter, n);
        sub(&self.counters.held, n);
    }
}
