//! The `TracerPlugin` implementation: the hot path and the flush entry.
//!
//! | file | owns |
//! |---|---|
//! | `mod.rs` | [`SpillwayTracer`]: the trait's calls, stats, flush, shutdown |
//! | `builder.rs` | [`TracerBuilder`]: config, spool, disk thread, exporter |
//! | `record.rs` | the hot path: start, attribute, status, event, end |
//! | `shards.rs` | the shard table: claiming a shard with room, finding a live span, names |
//! | `home.rs` | each thread's home shard |
//! | `live.rs` | a shard's live spans and the span ids that address them |
//! | `ended.rs` | a shard's ended spans, packed until the flush |
//! | `shard_lock.rs` | the lock over one shard |
//! | `spiller.rs` | the background thread that spills a filling batch |
//! | `drain.rs` | moving the ended spans out for a flush, in start order |
//! | `model.rs` | the model check of recording, flush, spiller and shutdown (test only) |
//! | `clock.rs` | where the tracer's timestamps come from |
//!
//! ## Hot path
//! Spans sit in a table of [`SHARDS`] shards, each a lock over a slab
//! (`live::Live`) addressed by the span id and holding the shard's live spans,
//! its share of the ended batch, packed ([`ended::Ended`]), and the shard's
//! counters. The lock is a `ShardLock`: one atomic read-modify-write to
//! take, a plain store to release, and waiters that spin briefly, then
//! yield, then sleep. A live span keeps its attributes as bext hands them
//! over (recording converts nothing); `end_span` packs the span into its
//! shard's buffer and frees bext's allocations at once, on the thread that
//! made them. What waits for the flush is thus compact: 224 bytes of memory
//! in all for a span with three attributes and an event, against 564 when
//! bext's strings were held until the flush. A call locks exactly one shard
//! (two for `start_span` with a parent: the parent's, to check it is live,
//! then the child's), touches no shared atomic on the common path, and
//! performs no I/O. Shards are cache-line aligned, so two threads touching
//! different shards never share a line.
//!
//! Each thread starts its spans in a *home* shard (an exited thread's,
//! else the next round-robin; see `home`), so a thread's spans take
//! neighbouring slots under a lock and a name cache that stay in its core's
//! cache; any thread may then record on or end a span, whichever shard
//! holds it. When the home shard has no room (its share of the live bound
//! or of the batch is used up), the thread moves to the next shard with
//! room, steered by a bitmask of full shards that the flush clears: the
//! bounds hold for the whole table, not per thread.
//!
//! ## Contract (bext-plugin-api 0.2)
//! - Recording calls never fail, never panic, never block on I/O; calls on
//!   an unknown, ended or [`SpanHandle::INVALID`] handle are no-ops.
//! - A sampled-out span returns `INVALID`; a child of `INVALID` is `INVALID`.
//!   Sampling is decided on the trace id (ratio `sample_ratio`) for new and
//!   adopted traces; a child of a live span follows its parent.
//! - A valid parent handle that is not live in this tracer is *rooted* (new
//!   trace), unless `adopt_remote_parent` is set: then it is adopted as a
//!   remote parent (same trace id, `parentId` = its span id).
//! - The last `set_status` before `end_span` wins; `set_attribute`
//!   overwrites an existing key; a handle is dead after `end_span`.
//! - Trace ids are random; span ids are a keyed permutation of the span's
//!   slot (two random keys per tracer), so they look uniformly random, are
//!   unique within a tracer and never all-zero (`tests/span_ids.rs`).
//!
//! ## Names
//! Span and event names are low-cardinality in bext (route templates,
//! `exception`), so each shard interns them: a name seen before costs a
//! hash lookup under the lock already held instead of an allocation now and
//! a free at flush. Interned names are leaked `&'static str` in one set for
//! the process (`src/tracer/names.rs`), shared by every tracer it builds:
//! at most [`MAX_INTERNED_NAMES`] names of at most [`MAX_INTERNED_LEN`]
//! bytes, 2 MiB at worst for the process however many tracers it builds;
//! past that, names are owned.
//!
//! ## Bounds
//! Attributes and events per span are capped (the excess is counted on the
//! span and exported as `otel.dropped_*_count`); the ended batch is capped
//! at `max_queue_spans` (split evenly over the shards and used up shard by
//! shard), past which ended spans are dropped and counted as `queue_full`;
//! with a spool, the spiller is woken when half the shards are full, and
//! again by every shard found full past that.

use crate::clock::TracerClock;
use crate::config::Config;
use crate::export::Exporter;
use crate::export::books::Books;
use crate::export::disk::Disk;
use crate::export::report::FlushError;
use crate::stats::Stats;
use crate::sync::{Mutex, MutexGuard};
use bext_plugin_api::tracer::{AttrValue, SpanEvent, SpanHandle, SpanStart, SpanStatus, TracerPlugin};
use ended::Ended;
use live::Ids;
use shards::Shard;
use spiller::Wake;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

mod builder;
mod drain;
pub(crate) mod ended;
mod home;
pub(crate) mod live;
#[cfg(all(test, feature = "model"))]
mod model;
mod names;
mod record;
pub(crate) mod shard_lock;
mod shards;
mod spiller;

pub use builder::{BuildError, TracerBuilder};

/// Number of shards in the live-span table (a power of two).
pub const SHARDS: usize = 64;
// The full-shard mask is one `u64`.
const _: () = assert!(SHARDS == u64::BITS as usize);

/// Names the process interns at most, over every tracer (each shard's
/// bound, once).
pub const MAX_INTERNED_NAMES: usize = SHARDS * MAX_NAMES_PER_SHARD;
/// Names each shard interns at most.
pub const MAX_NAMES_PER_SHARD: usize = 256;
/// Longest name that is interned.
pub const MAX_INTERNED_LEN: usize = 128;

/// Entries in a shard's cache of recently seen name addresses.
const NAME_CACHE: usize = 16;

/// Locks, recovering from poison: a panic elsewhere must not stop tracing.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The spillway tracer: records spans for bext and exports them to Zipkin.
///
/// With a spool, a background thread (the *spiller*) moves the ended batch
/// to disk when half the shards have used up their share of
/// `max_queue_spans` (about half the batch), so a burst between flushes is
/// spilled, not dropped.
/// The hot path only signals it, after releasing its lock.
pub struct SpillwayTracer {
    inner: Arc<Inner>,
    /// The spiller thread until shutdown stops it.
    spiller: Mutex<Option<crate::sync::thread::JoinHandle<()>>>,
}

/// The tracer's state, shared with the spiller thread.
struct Inner {
    /// How many full shards wake the spiller (never, without a spool).
    spill_at: u32,
    /// Shards found full (bit n for shard n) since they were last drained;
    /// a hint that steers threads to a shard with room, checked under the
    /// shard's lock before use (see [`Inner::claim`]).
    full: AtomicU64,
    wake: Wake,
    shards: Box<[Shard]>,
    /// Turns span addresses into the ids handed out, and back.
    ids: Ids,
    /// An emptied ended-span buffer, kept with its capacity between drains.
    spare: Mutex<Ended>,
    clock: TracerClock,
    sample_threshold: Option<u64>,
    adopt_remote_parent: bool,
    max_attributes: usize,
    max_events: usize,
    shard_capacity: usize,
    live_per_shard: usize,
    sampled_out: AtomicU64,
    books: Arc<Books>,
    /// The flush pipeline; only flushes and shutdown take it.
    exporter: Mutex<Exporter>,
    /// The spool's thread, shared with the exporter; the spiller hands it
    /// batches directly, never waiting for a flush.
    disk: Option<Arc<Disk>>,
    service: Arc<str>,
    flush_timeout: Duration,
    /// `max_queue_spans` and `max_spool_bytes`, for the metrics.
    max_queue_spans: u64,
    max_spool_bytes: u64,
    /// A damaged spool directory moved aside at start.
    moved_aside: Option<PathBuf>,
}

impl SpillwayTracer {
    /// A builder starting from [`Config::default`].
    pub fn builder() -> TracerBuilder {
        TracerBuilder::default()
    }

    /// A tracer for `config`, exporting over HTTP.
    pub fn new(config: Config) -> Result<Self, BuildError> {
        Self::builder().config(config).build()
    }

    /// A snapshot of every counter.
    pub fn stats(&self) -> Stats {
        self.inner.stats()
    }

    /// The counters and gauges in the OpenMetrics text format (see
    /// [`crate::metrics`]), for an endpoint that bext or a sidecar serves.
    pub fn openmetrics(&self) -> String {
        let stats = self.stats();
        let spool = self
            .inner
            .disk
            .as_ref()
            .and_then(|d| d.stats())
            .map(|sp| crate::metrics::SpoolGauges {
                spans: stats.spooled,
                bytes: sp.bytes,
                capacity_bytes: Some(self.inner.max_spool_bytes),
                dead_letter_spans: sp.dead_letter_spans,
                quarantined_records: sp.quarantined_records,
                oldest_age_seconds: stats.oldest_spooled_age_ms.map(|ms| ms as f64 / 1000.0),
                replay_spans_per_s: stats.replay_spans_per_s,
            });
        crate::metrics::render(&crate::metrics::Snapshot {
            stats: Some(stats),
            memory_capacity_spans: Some(self.inner.max_queue_spans),
            spool,
        })
    }

    /// The shard the span `h` names was started in (whether or not it is
    /// still live): for tests of how threads share shards. Span ids do not
    /// show it; they are a keyed permutation of it (see `live`).
    #[doc(hidden)]
    pub fn shard_of(&self, h: &SpanHandle) -> usize {
        self.inner.locate(h).1.shard
    }

    /// The damaged spool directory moved aside at start, if any.
    pub fn moved_aside(&self) -> Option<PathBuf> {
        self.inner.moved_aside.clone()
    }

    /// Flushes, returning the typed error (the trait's `flush` renders it).
    pub fn try_flush(&self) -> Result<(), Box<FlushError>> {
        self.inner.try_flush()
    }

    /// Spills everything in memory to the spool without touching the
    /// network, as bext's shutdown should (also done on drop), within
    /// `flush_timeout_ms`.
    ///
    /// The spiller is stopped first, then every span recorded before the
    /// call is written, the spiller's batches in flight included. `Ok(())`
    /// means all of them are durable in the spool, so the process may exit
    /// at once and lose nothing (`tests/cli.rs`, `tests/bounded_flush.rs`).
    /// Otherwise the error gives the exact number not yet durable (being
    /// written, or held in memory when the spool failed or there is none),
    /// which [`SpillwayTracer::stats`]'s `in_memory` agrees with. After a
    /// shutdown the tracer still records and flushes, without the spiller.
    pub fn shutdown(&self) -> Result<(), Box<FlushError>> {
        self.shutdown_within(self.inner.flush_timeout)
    }

    /// [`SpillwayTracer::shutdown`] within `budget`.
    pub fn shutdown_within(&self, budget: Duration) -> Result<(), Box<FlushError>> {
        let deadline = Instant::now() + budget;
        self.stop_spiller();
        self.inner.shutdown(deadline, budget)
    }

    /// Stops the spiller thread and waits for it: whatever it drained is
    /// then in a spill job (or returned), never on its stack.
    fn stop_spiller(&self) {
        let Some(spiller) = lock(&self.spiller).take() else {
            return;
        };
        self.inner.wake.stop.store(true, Ordering::SeqCst);
        self.inner.wake_spiller();
        let _ = spiller.join();
    }
}

impl TracerPlugin for SpillwayTracer {
    fn name(&self) -> &str {
        "spillway"
    }
    fn start_span(&self, span: SpanStart<'_>) -> SpanHandle {
        self.inner.start_span(span)
    }
    fn set_attribute(&self, span: SpanHandle, key: &str, value: AttrValue) {
        self.inner.set_attribute(span, key, value)
    }
    fn set_status(&self, span: SpanHandle, status: SpanStatus) {
        self.inner.set_status(span, status)
    }
    fn add_event(&self, span: SpanHandle, event: SpanEvent<'_>) {
        self.inner.add_event(span, event)
    }
    fn end_span(&self, span: SpanHandle, end_time_unix_nanos: Option<u64>) {
        self.inner.end_span(span, end_time_unix_nanos)
    }
    fn flush(&self) -> Result<(), String> {
        self.inner.flush()
    }
}

/// Dropping the tracer shuts it down (within `flush_timeout_ms`), then
/// closes the spool, with a budget of its own: a shutdown that used its
/// whole budget must not leave the spool open (and locked) behind a
/// dropped tracer. So a drop takes at most twice `flush_timeout_ms`; if
/// the disk has not closed the spool by then, its thread finishes alone.
impl Drop for SpillwayTracer {
    fn drop(&mut self) {
        let budget = self.inner.flush_timeout;
        self.stop_spiller();
        let _ = self.inner.shutdown(Instant::now() + budget, budget);
        if let Some(disk) = &self.inner.disk {
            disk.stop(Instant::now() + budget);
        }
    }
}
