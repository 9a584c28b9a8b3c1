//! The `TracerPlugin` implementation: the hot path and the flush entry.
//!
//! ## Hot path
//! Spans sit in a table of [`SHARDS`] shards, each a lock over a slab
//! ([`Live`]) addressed by the span id and holding the shard's live spans,
//! its share of the ended batch, packed ([`Ended`]), and the shard's
//! counters. The lock is a [`ShardLock`]: one atomic read-modify-write to
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
//! - Ids are random and never all-zero.
//!
//! ## Names
//! Span and event names are low-cardinality in bext (route templates,
//! `exception`), so each shard interns them: a name seen before costs a
//! hash lookup under the lock already held instead of an allocation now and
//! a free at flush. Interned names are leaked `&'static str`, bounded at
//! [`MAX_NAMES_PER_SHARD`] names of at most [`MAX_INTERNED_LEN`] bytes per
//! shard (2 MiB at worst for the process); past that, names are owned.
//!
//! ## Bounds
//! Attributes and events per span are capped (the excess is counted on the
//! span and exported as `otel.dropped_*_count`); the ended batch is capped
//! at `max_queue_spans` (split evenly over the shards and used up shard by
//! shard), past which ended spans are dropped and counted as `queue_full`;
//! with a spool, the spiller is woken when half the shards are full.

use crate::clock::{Clock, SystemClock, TracerClock, TscClock};
use crate::config::{Config, ConfigError};
use crate::ended::Ended;
use crate::export::Exporter;
use crate::export::books::Books;
use crate::export::disk::{Disk, Done, Failed, Spilled};
use crate::export::report::{Cause, FlushError};
use crate::live::{self, Address, Ids, Live};
use crate::shard_lock::{ShardGuard, ShardLock};
use crate::span::{Event, Events, Kind, Span, Status};
use crate::spool::{Spool, SpoolError};
use crate::stats::Stats;
use crate::transport::{HttpTransport, Transport};
use bext_plugin_api::tracer::{AttrValue, SpanEvent, SpanHandle, SpanStart, SpanStatus, TracerPlugin};
use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Number of shards in the live-span table (a power of two).
pub const SHARDS: usize = 64;
// The full-shard mask is one `u64`.
const _: () = assert!(SHARDS == u64::BITS as usize);

/// Names each shard interns at most.
pub const MAX_NAMES_PER_SHARD: usize = 256;
/// Longest name that is interned.
pub const MAX_INTERNED_LEN: usize = 128;

/// Entries in a shard's cache of recently seen name addresses.
const NAME_CACHE: usize = 16;

/// A bounded set of leaked names (see the module docs), fronted by a small
/// cache keyed by the caller's string address: bext's names are mostly
/// literals, so the same address comes back with the same text, and a hit
/// costs a comparison instead of a hash and a probe. The text is always
/// compared, so a reused address with other text is a miss, never a wrong
/// name.
#[derive(Default)]
struct Names {
    set: rustc_hash::FxHashSet<&'static str>,
    recent: [Option<(usize, &'static str)>; NAME_CACHE],
}

impl Names {
    #[inline(always)]
    fn get(&mut self, name: &str) -> Cow<'static, str> {
        let addr = name.as_ptr() as usize;
        let slot = (addr >> 3 ^ name.len()) % NAME_CACHE;
        if let Some((a, interned)) = self.recent[slot]
            && a == addr
            && interned == name
        {
            return Cow::Borrowed(interned);
        }
        self.get_uncached(name, slot)
    }

    /// [`Names::get`] past a cache miss: the set, then a new name.
    #[cold]
    fn get_uncached(&mut self, name: &str, slot: usize) -> Cow<'static, str> {
        let addr = name.as_ptr() as usize;
        let entry = &mut self.recent[slot];
        if let Some(&interned) = self.set.get(name) {
            *entry = Some((addr, interned));
            return Cow::Borrowed(interned);
        }
        if self.set.len() < MAX_NAMES_PER_SHARD && name.len() <= MAX_INTERNED_LEN {
            let leaked: &'static str = Box::leak(Box::from(name));
            self.set.insert(leaked);
            *entry = Some((addr, leaked));
            return Cow::Borrowed(leaked);
        }
        Cow::Owned(name.to_owned())
    }
}

/// What one shard holds: its live spans, its part of the ended batch, and
/// its counters (kept here so the hot path updates them under the lock it
/// already holds).
#[derive(Default)]
struct ShardState {
    live: Live,
    /// Spans this shard started, for their ids (see [`crate::live`]).
    generation: u64,
    ended: Ended,
    names: Names,
    started: u64,
    recorded: u64,
    queue_full: u64,
    refused_live_full: u64,
}

#[repr(align(128))]
#[derive(Default)]
struct Shard(ShardLock<ShardState>);

/// Locks, recovering from poison: a panic elsewhere must not stop tracing.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Errors from building a tracer.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The configuration was refused.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The spool is held by another process.
    #[error(transparent)]
    Spool(#[from] SpoolError),
    /// A thread the tracer needs could not be started.
    #[error("cannot start the {what} thread: {source}")]
    Thread {
        /// Which thread.
        what: &'static str,
        /// What the OS said.
        source: std::io::Error,
    },
}

/// Opens the spool. Another owner, or a path that is not a spool
/// directory, is an error. A damaged spool is set aside and salvaged by
/// the open itself (see `Spool::open_with`). Any other failure (a full or
/// read-only disk, too many open files, permissions) leaves the directory
/// as it is, and the tracer starts without it, keeping spans in memory and
/// trying again at every flush.
fn open_spool(dir: &std::path::Path, max_bytes: u64) -> Result<Result<Spool, String>, SpoolError> {
    match Spool::open(dir, max_bytes) {
        Ok(s) => Ok(Ok(s)),
        Err(e @ (SpoolError::InUse { .. } | SpoolError::NotASpool { .. })) => Err(e),
        Err(e) => Ok(Err(e.to_string())),
    }
}

/// Builds a [`SpillwayTracer`].
///
/// ```
/// use spillway::{Config, SpillwayTracer};
/// let tracer = SpillwayTracer::builder()
///     .config(Config { service_name: "shop".into(), ..Config::default() })
///     .build()
///     .unwrap();
/// assert_eq!(bext_plugin_api::TracerPlugin::name(&tracer), "spillway");
/// assert!(SpillwayTracer::builder().endpoint("nope").build().is_err());
/// ```
#[derive(Default)]
pub struct TracerBuilder {
    config: Config,
    clock: Option<Arc<dyn Clock>>,
    transport: Option<Box<dyn Transport>>,
}

impl TracerBuilder {
    /// Replaces the whole configuration.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Sets the collector URL.
    pub fn endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.config.endpoint = endpoint.into();
        self
    }

    /// Sets the service name.
    pub fn service_name(mut self, name: impl Into<String>) -> Self {
        self.config.service_name = name.into();
        self
    }

    /// Uses `clock` instead of the system clock.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Sends through `transport` instead of HTTP to `config.endpoint`.
    pub fn transport(mut self, transport: Box<dyn Transport>) -> Self {
        self.transport = Some(transport);
        self
    }

    /// Validates the configuration and builds the tracer.
    pub fn build(self) -> Result<SpillwayTracer, BuildError> {
        let config = self.config;
        config.validate()?;
        let transport = match self.transport {
            Some(t) => t,
            None => Box::new(HttpTransport::new(&config)?),
        };
        let books = Arc::new(Books::default());
        let mut moved_aside = None;
        let disk = match &config.spool_dir {
            Some(dir) => {
                let opened = open_spool(dir, config.max_spool_bytes)?;
                Some(Arc::new(start_disk(dir, opened, &config, &books, &mut moved_aside)?))
            }
            None => None,
        };
        let has_spool = disk.is_some();
        let exporter_clock: Arc<dyn Clock> = match &self.clock {
            Some(c) => Arc::clone(c),
            None => Arc::new(SystemClock),
        };
        let exporter = Exporter::new(&config, transport, disk.clone(), Arc::clone(&books), exporter_clock);
        let shard_capacity = config.max_queue_spans.div_ceil(SHARDS);
        // A shard has 2^24 slots for live spans: the slot bits of a span id.
        let live_per_shard = config.max_live_spans.div_ceil(SHARDS).min(1 << live::SLOT_BITS);
        let inner = Arc::new(Inner {
            spill_at: if has_spool { SHARDS as u32 / 2 } else { u32::MAX },
            full: AtomicU64::new(0),
            wake: Wake::default(),
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
            ids: Ids::new(),
            spare: Mutex::default(),
            clock: match self.clock {
                Some(given) => TracerClock::Given(given),
                None => TracerClock::Tsc(TscClock::new()),
            },
            sample_threshold: sample_threshold(config.sample_ratio),
            adopt_remote_parent: config.adopt_remote_parent,
            max_attributes: config.max_attributes_per_span as usize,
            max_events: config.max_events_per_span as usize,
            shard_capacity,
            live_per_shard,
            sampled_out: AtomicU64::new(0),
            books,
            exporter: Mutex::new(exporter),
            disk,
            service: config.service_name.as_str().into(),
            flush_timeout: config.flush_timeout(),
            max_queue_spans: config.max_queue_spans as u64,
            max_spool_bytes: config.max_spool_bytes,
            moved_aside,
        });
        let spiller = if has_spool {
            let inner = Arc::clone(&inner);
            let spawned = std::thread::Builder::new()
                .name("spillway-spiller".into())
                .spawn(move || inner.spiller());
            // Without the thread, a full batch drops (counted) as it would without a spool.
            spawned.ok()
        } else {
            None
        };
        Ok(SpillwayTracer { inner, spiller })
    }
}

/// Starts the disk thread over what [`open_spool`] found, counting the
/// spans the spool holds as recovered. A spool that could not be opened is
/// counted from its ledger (what it held at least), so spans on disk stay
/// `spooled` until the thread opens it and counts them exactly.
fn start_disk(
    dir: &std::path::Path,
    opened: Result<Spool, String>,
    config: &Config,
    books: &Arc<Books>,
    moved_aside: &mut Option<PathBuf>,
) -> Result<Disk, BuildError> {
    let mut notes = Vec::new();
    let spool = match opened {
        Ok(mut spool) => {
            if let Some(d) = spool.take_damage() {
                if d.lost_spans > 0 {
                    books.lost_before_open(d.lost_spans);
                }
                if d.lost_spans > 0 || d.set_aside.is_some() {
                    notes.push(Cause::Damage(d.to_string()));
                }
                if let Some(aside) = d.set_aside {
                    notes.push(Cause::SetAside(aside.clone()));
                    *moved_aside = Some(aside);
                }
            }
            books.opened(spool.stats().spans);
            Ok(spool)
        }
        Err(why) => {
            let at_least = crate::spool::ledger::Ledger::read(dir).map_or(0, |s| s.spans_at_least);
            books.opened(at_least);
            Err(why)
        }
    };
    let disk = Disk::start(
        spool,
        dir.to_path_buf(),
        config.max_spool_bytes,
        2 * config.max_queue_spans as u64,
        Arc::clone(books),
    )
    .map_err(|source| BuildError::Thread { what: "disk", source })?;
    for note in notes {
        disk.note(note);
    }
    Ok(disk)
}

/// Spans whose trace id's low 64 bits are below this are sampled;
/// `None` samples everything.
fn sample_threshold(ratio: f64) -> Option<u64> {
    if ratio >= 1.0 {
        None
    } else {
        Some((ratio * 2f64.powi(64)) as u64)
    }
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
    spiller: Option<std::thread::JoinHandle<()>>,
}

/// Wakes the spiller: a pending flag and its condition variable.
#[derive(Default)]
struct Wake {
    pending: Mutex<bool>,
    cond: std::sync::Condvar,
    stop: std::sync::atomic::AtomicBool,
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
    /// `flush_timeout_ms`. Without a spool, the spans stay in memory and
    /// the error says how many.
    pub fn shutdown(&self) -> Result<(), Box<FlushError>> {
        self.inner.shutdown(Instant::now() + self.inner.flush_timeout)
    }

    /// [`SpillwayTracer::shutdown`] within `budget`: what is not durable
    /// by then is reported as still being written (or held in memory).
    pub fn shutdown_within(&self, budget: Duration) -> Result<(), Box<FlushError>> {
        self.inner.shutdown(Instant::now() + budget)
    }
}

impl Inner {
    /// The spiller thread: waits to be woken, then hands the batch to the
    /// disk thread and waits for it to be written (so the shards, not an
    /// ever longer job queue, hold what the disk has not taken yet). It
    /// never takes the exporter's lock: a flush waiting on the collector
    /// does not hold it up.
    fn spiller(&self) {
        let mut in_flight = None;
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
            self.spill_early(&mut in_flight);
        }
    }

    /// Spills what the shards hold; outcomes are the disk thread's to count
    /// (a failed spill's spans come back to the next flush).
    ///
    /// Two batches are in flight at most: the one the disk thread writes
    /// and the one this thread drains and encodes meanwhile, so encoding
    /// and writing overlap and the disk still sets the pace.
    fn spill_early(&self, in_flight: &mut Option<Done<Result<Spilled, Failed>>>) {
        let Some(disk) = &self.disk else { return };
        let batch = self.drain(Vec::new());
        if !batch.is_empty() {
            let now_ms = self.clock.now_unix_nanos() / 1_000_000;
            match disk.spill(Arc::clone(&self.service), batch, now_ms) {
                Ok(done) => {
                    if let Some(previous) = in_flight.replace(done) {
                        self.wait_for(&previous);
                    }
                    return;
                }
                Err(spans) => disk.give_back(spans),
            }
        }
        if let Some(previous) = in_flight.take() {
            self.wait_for(&previous);
        }
    }

    /// Waits for a spill to be done, or for the tracer to stop.
    fn wait_for(&self, done: &Done<Result<Spilled, Failed>>) {
        while done.wait(Instant::now() + Duration::from_millis(100)).is_none() {
            if self.wake.stop.load(Ordering::SeqCst) {
                return;
            }
        }
    }

    fn wake_spiller(&self) {
        *lock(&self.wake.pending) = true;
        self.wake.cond.notify_one();
    }

    fn stats(&self) -> Stats {
        let mut s = Stats::default();
        for shard in self.shards.iter() {
            let st = shard.0.lock();
            s.started += st.started;
            s.recorded += st.recorded;
            s.live += st.live.len() as u64;
            s.refused_live_full += st.refused_live_full;
            s.in_memory += st.ended.len() as u64;
            s.dropped.queue_full += st.queue_full;
        }
        s.sampled_out = self.sampled_out.load(Ordering::Relaxed);
        s.spool_moved_aside = self.moved_aside.is_some();
        self.books.fill(&mut s);
        if let Some(spool) = self.disk.as_ref().and_then(|d| d.stats()) {
            let now_ms = self.clock.now_unix_nanos() / 1_000_000;
            s.oldest_spooled_age_ms = spool.oldest_spilled_unix_ms.map(|t| now_ms.saturating_sub(t));
            s.replay_spans_per_s = spool.replay.map(|r| r.spans_per_s);
        }
        s
    }

    fn try_flush(&self) -> Result<(), Box<FlushError>> {
        let deadline = Instant::now() + self.flush_timeout;
        let mut exporter = lock(&self.exporter);
        self.clock.recalibrate();
        let batch = self.drain(exporter.take_buffer());
        if batch.is_empty() && !exporter.has_backlog() {
            return Ok(());
        }
        exporter.export(batch, deadline)
    }

    fn shutdown(&self, deadline: Instant) -> Result<(), Box<FlushError>> {
        let mut exporter = lock(&self.exporter);
        let batch = self.drain(exporter.take_buffer());
        exporter.spill_all(batch, deadline)
    }

    /// Moves the ended spans out of the shards, counting them as held, in
    /// start order (see [`order_by_start`]).
    ///
    /// A shard's buffer is swapped for an empty one under its lock and
    /// unpacked outside it, so recording on the shard waits for a swap, not
    /// for the unpacking. The emptied buffer (its capacity kept) is the one
    /// swapped into the next shard, or at the next flush.
    fn drain(&self, mut batch: Vec<Span>) -> Vec<Span> {
        let mut spare = std::mem::take(&mut *lock(&self.spare));
        for (n, shard) in self.shards.iter().enumerate() {
            let mut taken = {
                let mut st = shard.0.lock();
                self.full.fetch_and(!(1 << n), Ordering::Relaxed);
                if st.ended.is_empty() {
                    continue;
                }
                self.books.took(st.ended.len() as u64);
                std::mem::replace(&mut st.ended, spare)
            };
            let lost = taken.drain_into(&mut batch);
            if lost > 0 {
                self.books.lost_in_memory(lost as u64);
            }
            spare = taken;
        }
        *lock(&self.spare) = spare;
        order_by_start(&mut batch);
        batch
    }

    /// The span id `h` carries, and where that span would lie.
    #[inline]
    fn locate(&self, h: &SpanHandle) -> (u64, Address) {
        let id = u64::from_be_bytes(h.span_id);
        (id, self.ids.address(id))
    }

    #[inline]
    fn shard(&self, a: Address) -> &ShardLock<ShardState> {
        &self.shards[a.shard].0
    }

    /// Whether shard `st` can take one more span: a free live slot and,
    /// counting its live spans, room in its share of the batch.
    #[inline]
    fn has_room(&self, st: &ShardState) -> bool {
        let live = st.live.len();
        live < self.live_per_shard && live + st.ended.len() < self.shard_capacity
    }

    /// Marks `shard` full (call under its lock). Returns whether that makes
    /// the count of full shards reach `spill_at`: the caller then wakes the
    /// spiller, after releasing the lock.
    fn mark_full(&self, shard: usize) -> bool {
        let bit = 1 << shard;
        let before = self.full.fetch_or(bit, Ordering::Relaxed);
        before & bit == 0 && before.count_ones() + 1 == self.spill_at
    }

    /// The shard a new span goes to, locked: the calling thread's home
    /// shard if it has room, else the next shard with room, which becomes
    /// the thread's home. When none has, the home shard (whose own checks
    /// then refuse the span or count it dropped when it ends).
    #[inline]
    fn claim(&self) -> (usize, ShardGuard<'_, ShardState>) {
        let home = home::get();
        let st = self.shards[home].0.lock();
        if self.has_room(&st) {
            return (home, st);
        }
        self.claim_elsewhere(home, st)
    }

    #[cold]
    fn claim_elsewhere<'a>(
        &'a self,
        home: usize,
        st: ShardGuard<'a, ShardState>,
    ) -> (usize, ShardGuard<'a, ShardState>) {
        let mut wake = self.mark_full(home);
        drop(st);
        // Each round either returns or marks one more shard: at most SHARDS rounds.
        let mut claimed = None;
        for _ in 0..SHARDS {
            let full = self.full.load(Ordering::Relaxed);
            if full == u64::MAX {
                break;
            }
            let next = (home + (!full).rotate_right(home as u32).trailing_zeros() as usize) % SHARDS;
            let st = self.shards[next].0.lock();
            if self.has_room(&st) {
                home::set(next);
                claimed = Some((next, st));
                break;
            }
            wake |= self.mark_full(next);
        }
        if wake {
            self.wake_spiller();
        }
        claimed.unwrap_or_else(|| (home, self.shards[home].0.lock()))
    }

    #[inline]
    fn sampled(&self, trace_id: &[u8; 16]) -> bool {
        match self.sample_threshold {
            None => true,
            Some(t) => u64::from_be_bytes(low_half(trace_id)) < t,
        }
    }

    fn is_live(&self, h: &SpanHandle) -> bool {
        let (id, a) = self.locate(h);
        self.shard(a).lock().live.get_mut(a.slot, id, &h.trace_id).is_some()
    }

    /// Runs `f` on the live span `h` and its shard's names, if it is one.
    #[inline]
    fn with_live(&self, h: &SpanHandle, f: impl FnOnce(&mut Span, &mut Names)) {
        if h.is_invalid() {
            return;
        }
        let (id, a) = self.locate(h);
        let mut guard = self.shard(a).lock();
        let st = &mut *guard;
        if let Some(span) = st.live.get_mut(a.slot, id, &h.trace_id) {
            f(span, &mut st.names);
        }
    }
}

/// Puts a drained batch in start order (ties keep their order), so spans
/// are sent and spooled oldest first although shards hand them over shard
/// by shard: sorts small keys, then applies the permutation in place,
/// cycle by cycle.
fn order_by_start(batch: &mut [Span]) {
    let mut order: Vec<(u64, u32)> = (batch.iter().enumerate())
        .map(|(i, s)| (s.start_unix_nanos, i as u32))
        .collect();
    if order.is_sorted() {
        return;
    }
    order.sort_unstable();
    // Position k takes the span now at order[k].1: follow each cycle once.
    let mut placed = vec![false; batch.len()];
    for first in 0..batch.len() {
        let mut k = first;
        while !placed[k] {
            placed[k] = true;
            let from = order[k].1 as usize;
            if from == first {
                break;
            }
            batch.swap(k, from);
            k = from;
        }
    }
}

/// Each thread's home shard: where the spans it starts go while it has
/// room. A new thread takes the home of the thread that exited last, if
/// one has (its shard's slab and buffers are warm: grown to what a thread
/// uses, so the newcomer faults no fresh pages in, which matters to pools
/// that retire and spawn threads), else the next in round-robin order. So
/// up to [`SHARDS`] threads each have a shard of their own: a thread's
/// spans then take neighbouring slots under a lock no other thread takes,
/// and all stay in its core's cache.
mod home {
    use super::SHARDS;
    use std::cell::Cell;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const UNSET: usize = usize::MAX;
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    /// Homes given back by exited threads, most recent last, each once (so
    /// at most [`SHARDS`]).
    static VACATED: Mutex<Vec<usize>> = Mutex::new(Vec::new());

    /// A thread's home; given back when the thread exits.
    struct Home(Cell<usize>);

    impl Drop for Home {
        fn drop(&mut self) {
            let n = self.0.get();
            if n != UNSET {
                give_back(&mut super::lock(&VACATED), n);
            }
        }
    }

    /// Adds `n` to the vacated homes unless it is there already: threads
    /// that moved to one shard (see `claim`) give it back once, so new
    /// threads do not pile onto it.
    pub(super) fn give_back(vacated: &mut Vec<usize>, n: usize) {
        if !vacated.contains(&n) {
            vacated.push(n);
        }
    }

    thread_local! {
        static HOME: Home = const { Home(Cell::new(UNSET)) };
    }

    /// The calling thread's home shard, handed out at its first call.
    #[inline]
    pub fn get() -> usize {
        HOME.try_with(|h| match h.0.get() {
            UNSET => {
                let n = first();
                h.0.set(n);
                n
            }
            n => n,
        })
        .unwrap_or(0)
    }

    #[cold]
    fn first() -> usize {
        let vacated = super::lock(&VACATED).pop();
        vacated.unwrap_or_else(|| NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS)
    }

    /// Moves the calling thread's home to `shard`.
    pub fn set(shard: usize) {
        let _ = HOME.try_with(|h| h.0.set(shard));
    }
}

fn low_half(id: &[u8; 16]) -> [u8; 8] {
    let mut out = [0; 8];
    out.copy_from_slice(&id[8..]);
    out
}

fn random_nonzero() -> u64 {
    loop {
        let v = fastrand::u64(..);
        if v != 0 {
            return v;
        }
    }
}

fn new_trace_id() -> [u8; 16] {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&fastrand::u64(..).to_be_bytes());
    id[8..].copy_from_slice(&random_nonzero().to_be_bytes());
    id
}

/// The attributes as handed over, past `max` dropped and counted.
#[inline]
fn capped(mut attrs: Vec<(String, AttrValue)>, max: usize, dropped: &mut u32) -> Vec<(String, AttrValue)> {
    if attrs.len() > max {
        *dropped += (attrs.len() - max) as u32;
        attrs.truncate(max);
    }
    attrs
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

impl Inner {
    #[inline]
    fn start_span(&self, start: SpanStart<'_>) -> SpanHandle {
        let (trace_id, parent_id, inherited) = match start.parent {
            Some(p) if p.is_invalid() => return SpanHandle::INVALID,
            Some(p) if self.is_live(&p) => (p.trace_id, Some(p.span_id), true),
            Some(p) if self.adopt_remote_parent && p.trace_id != [0; 16] && p.span_id != [0; 8] => {
                (p.trace_id, Some(p.span_id), false)
            }
            _ => (new_trace_id(), None, false),
        };
        if !inherited && !self.sampled(&trace_id) {
            self.sampled_out.fetch_add(1, Ordering::Relaxed);
            return SpanHandle::INVALID;
        }
        let start_unix_nanos = start
            .start_time_unix_nanos
            .unwrap_or_else(|| self.clock.now_unix_nanos());
        let mut dropped_attributes = 0;
        let attributes = capped(start.attributes, self.max_attributes, &mut dropped_attributes);
        let (shard, mut st) = self.claim();
        // A full shard means spans are being started and never ended:
        // refuse more rather than grow without bound.
        let vacant = if st.live.len() < self.live_per_shard {
            st.live.vacant()
        } else {
            None
        };
        let Some(slot) = vacant else {
            st.refused_live_full += 1;
            return SpanHandle::INVALID;
        };
        // At most two rounds: one address of all maps to the zero id.
        let id = loop {
            let generation = st.generation;
            st.generation = st.generation.wrapping_add(1) & live::GENERATION_MASK;
            if let Some(id) = self.ids.span_id(generation, slot, shard) {
                break id;
            }
        };
        let span = Span {
            trace_id,
            span_id: id.to_be_bytes(),
            parent_id,
            name: st.names.get(start.name),
            kind: Kind::from(start.kind),
            start_unix_nanos,
            end_unix_nanos: 0,
            status: Status::Unset,
            attributes,
            events: Events::new(),
            dropped_attributes,
            dropped_events: 0,
        };
        st.started += 1;
        st.live.insert(span);
        SpanHandle {
            trace_id,
            span_id: id.to_be_bytes(),
        }
    }

    fn set_attribute(&self, h: SpanHandle, key: &str, value: AttrValue) {
        let max = self.max_attributes;
        self.with_live(&h, |span, _| {
            if let Some(slot) = span.attributes.iter_mut().find(|(k, _)| k == key) {
                slot.1 = value;
            } else if span.attributes.len() < max {
                span.attributes.push((key.to_owned(), value));
            } else {
                span.dropped_attributes = span.dropped_attributes.saturating_add(1);
            }
        });
    }

    fn set_status(&self, h: SpanHandle, status: SpanStatus) {
        let status = Status::from(status);
        self.with_live(&h, |span, _| span.status = status);
    }

    fn add_event(&self, h: SpanHandle, event: SpanEvent<'_>) {
        if h.is_invalid() {
            return;
        }
        let time_unix_nanos = event.time_unix_nanos.unwrap_or_else(|| self.clock.now_unix_nanos());
        let max_events = self.max_events;
        let max_attributes = self.max_attributes;
        let attrs = event.attributes;
        self.with_live(&h, |span, names| {
            if span.events.len() >= max_events {
                span.dropped_events = span.dropped_events.saturating_add(1);
                return;
            }
            let mut dropped = 0;
            let attributes = capped(attrs, max_attributes, &mut dropped);
            span.dropped_attributes = span.dropped_attributes.saturating_add(dropped);
            span.events.push(Event {
                name: names.get(event.name),
                time_unix_nanos,
                attributes,
            });
        });
    }

    fn end_span(&self, h: SpanHandle, end_time_unix_nanos: Option<u64>) {
        if h.is_invalid() {
            return;
        }
        let end = end_time_unix_nanos.unwrap_or_else(|| self.clock.now_unix_nanos());
        let (id, a) = self.locate(&h);
        let mut guard = self.shard(a).lock();
        let st = &mut *guard;
        let room = st.ended.len() < self.shard_capacity;
        let ended = &mut st.ended;
        // bext's allocations are freed here, on the thread that made them.
        let found = st.live.remove_with(a.slot, id, &h.trace_id, |span| {
            if room {
                span.end_unix_nanos = end;
                ended.push(span);
            }
        });
        if !found {
            return;
        }
        st.recorded += 1;
        let shard = a.shard;
        let mut wake = false;
        if !room {
            st.queue_full += 1;
        } else if st.ended.len() == self.shard_capacity {
            wake = self.mark_full(shard);
        } else if st.live.len() + 1 == self.live_per_shard {
            // A live slot came free: let threads find it again.
            self.full.fetch_and(!(1 << shard), Ordering::Relaxed);
        }
        drop(guard);
        if wake {
            self.wake_spiller();
        }
    }

    fn flush(&self) -> Result<(), String> {
        self.try_flush().map_err(|e| e.to_string())
    }
}

impl Drop for SpillwayTracer {
    fn drop(&mut self) {
        let deadline = Instant::now() + self.inner.flush_timeout;
        if let Some(spiller) = self.spiller.take() {
            self.inner.wake.stop.store(true, Ordering::SeqCst);
            self.inner.wake_spiller();
            let _ = spiller.join();
        }
        let _ = self.inner.shutdown(deadline);
        if let Some(disk) = &self.inner.disk {
            disk.stop(deadline);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span_started_at(start: u64, tag: u32) -> Span {
        let mut span = Span::new([1; 16], [1; 8], "s");
        (span.start_unix_nanos, span.dropped_attributes) = (start, tag);
        span
    }

    #[test]
    fn a_drained_batch_is_put_in_start_order_keeping_ties_in_order() {
        for n in [0usize, 1, 2, 3, 7, 64, 500] {
            let starts: Vec<u64> = (0..n).map(|_| fastrand::u64(0..(n as u64 / 2 + 1))).collect();
            let mut batch: Vec<Span> = starts
                .iter()
                .enumerate()
                .map(|(i, &t)| span_started_at(t, i as u32))
                .collect();
            order_by_start(&mut batch);
            let got: Vec<(u64, u32)> = batch
                .iter()
                .map(|s| (s.start_unix_nanos, s.dropped_attributes))
                .collect();
            let mut want: Vec<(u64, u32)> = starts.iter().enumerate().map(|(i, &t)| (t, i as u32)).collect();
            want.sort();
            assert_eq!(got, want, "{n} spans");
        }
    }

    #[test]
    fn a_home_given_back_twice_is_vacated_once() {
        let mut vacated = Vec::new();
        for n in [3, 5, 3, 3, 7] {
            home::give_back(&mut vacated, n);
        }
        assert_eq!(vacated, [3, 5, 7]);
    }

    #[test]
    fn names_are_interned_and_a_reused_address_with_other_text_is_not_mistaken() {
        let mut names = Names::default();
        let mut buf = String::from("GET /a");
        let first = names.get(&buf);
        assert!(matches!(first, Cow::Borrowed("GET /a")));
        assert!(matches!(names.get("GET /a"), Cow::Borrowed(s) if std::ptr::eq(s, &*first)));
        // Same address and length, other text: a cache hit would be wrong.
        buf.replace_range(.., "GET /b");
        assert_eq!(names.get(&buf), "GET /b");
        assert_eq!(names.get(&buf), "GET /b");
        assert_eq!(names.set.len(), 2);
    }
}
