//! Counters that account for every span, readable at any time.
//!
//! The hot path keeps its counters inside each table shard (updated under
//! the shard's lock it already holds, so no shared cache line bounces
//! between cores); the flush pipeline keeps its own in the export side's books (`export::books`).
//! [`Stats`] is the sum, a plain snapshot.
//!
//! The accounting invariant, exact whenever no flush is running:
//!
//! ```text
//! recorded + recovered == delivered + in_memory + spooled + dead_lettered + dropped.total()
//! ```
//!
//! where `recorded` counts every sampled span that ended in this process and
//! `recovered` the spans found in the spool when it was opened. Spans still live
//! (started, not ended) are counted in `live`, outside the invariant.

use serde::{Deserialize, Serialize};

/// Spans that were given up, by reason. Nothing is lost without a count here.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Dropped {
    /// The in-memory batch was full when the span ended.
    pub queue_full: u64,
    /// The in-memory retry buffer was full after a failed export.
    pub retry_full: u64,
    /// The collector refused the span for good (a 4xx other than 408/429)
    /// and there was no spool to keep it as a dead letter.
    pub rejected: u64,
    /// The span alone encodes to more than `max_request_bytes`.
    pub oversize: u64,
    /// The spool reached `max_spool_bytes`; its oldest records went.
    pub spool_full: u64,
    /// The span was spooled longer than `max_spool_age_ms`.
    pub spool_expired: u64,
    /// The span was in a spool record that failed its checks (quarantined).
    pub corrupt: u64,
}

impl Dropped {
    /// All dropped spans.
    pub fn total(&self) -> u64 {
        self.queue_full
            + self.retry_full
            + self.rejected
            + self.oversize
            + self.spool_full
            + self.spool_expired
            + self.corrupt
    }
}

/// A snapshot of every counter; serializes to and from one JSON object.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Stats {
    /// Sampled spans started.
    pub started: u64,
    /// Spans not recorded because sampling said no.
    pub sampled_out: u64,
    /// Spans started and not yet ended.
    pub live: u64,
    /// Starts refused (handed `INVALID`) because `max_live_spans` spans
    /// were live: spans a host starts and never ends show up here.
    pub refused_live_full: u64,
    /// Sampled spans that ended: the base of the accounting.
    pub recorded: u64,
    /// Spans the collector acknowledged (2xx).
    pub delivered: u64,
    /// Spans waiting in memory: the batch and the retry buffer.
    pub in_memory: u64,
    /// Spans in the durable spool, now.
    pub spooled: u64,
    /// Spans that were in the spool when this process opened it.
    pub recovered: u64,
    /// Spans the collector refused for good, kept in the spool's dead letters.
    pub dead_lettered: u64,
    /// Spans given up, by reason.
    pub dropped: Dropped,
    /// HTTP requests made to the collector.
    pub requests: u64,
    /// Requests that failed (any outcome but 2xx).
    pub failed_requests: u64,
    /// The spool could not be opened at start and was moved aside (see
    /// `SpillwayTracer::moved_aside` for where; `spillway salvage` recovers it).
    pub spool_moved_aside: bool,
    /// How long ago the oldest record in the spool was spilled, in ms: the
    /// backlog's age, by when it was spilled (so a wrong clock in span
    /// timestamps does not matter). `None` when the spool is empty.
    pub oldest_spooled_age_ms: Option<u64>,
    /// Spans per second the last replay of this spool delivered while it
    /// was sending (waits between flushes not counted); `None` until one
    /// was measured. `spooled / replay_spans_per_s` is the soonest the
    /// backlog can be gone.
    pub replay_spans_per_s: Option<u64>,
}

impl Stats {
    /// Whether every recorded span is accounted for.
    ///
    /// ```
    /// use bext_plugin_api::tracer::{SpanStart, TracerPlugin};
    /// let tracer = spillway::SpillwayTracer::new(spillway::Config::default())?;
    /// let span = tracer.start_span(SpanStart { name: "GET /", ..Default::default() });
    /// tracer.end_span(span, None);
    /// let s = tracer.stats();
    /// assert_eq!((s.recorded, s.in_memory), (1, 1));
    /// assert!(s.is_balanced());
    /// # Ok::<(), spillway::BuildError>(())
    /// ```
    pub fn is_balanced(&self) -> bool {
        self.recorded + self.recovered
            == self.delivered + self.in_memory + self.spooled + self.dead_lettered + self.dropped.total()
    }
}
