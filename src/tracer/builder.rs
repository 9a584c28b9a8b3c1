//! Building a tracer: the config checked, the spool opened (or set aside
//! when damaged), the disk thread and the exporter started, the shards
//! sized from the limits.

use super::{Books, Config, Disk, Exporter, Ids, Inner, SHARDS, Shard, SpillwayTracer, TracerClock, Wake, live};
use crate::clock::{Clock, SystemClock, TscClock};
use crate::config::ConfigError;
use crate::export::report::Cause;
use crate::spool::{Spool, SpoolError};
use crate::sync::Mutex;
use crate::transport::{HttpTransport, Transport};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

/// Errors from building a tracer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
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
pub(super) fn open_spool(dir: &std::path::Path, max_bytes: u64) -> Result<Result<Spool, SpoolError>, SpoolError> {
    match Spool::open(dir, max_bytes) {
        Ok(s) => Ok(Ok(s)),
        Err(e @ (SpoolError::InUse { .. } | SpoolError::NotASpool { .. })) => Err(e),
        Err(e) => Ok(Err(e)),
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
            let spawned = crate::sync::thread::Builder::new()
                .name("spillway-spiller".into())
                .spawn(move || inner.spiller());
            // Without the thread, a full batch drops (counted) as it would without a spool.
            spawned.ok()
        } else {
            None
        };
        Ok(SpillwayTracer {
            inner,
            spiller: Mutex::new(spiller),
        })
    }
}

/// Starts the disk thread over what [`open_spool`] found, counting the
/// spans the spool holds as recovered. A spool that could not be opened is
/// counted from its ledger (what it held at least), so spans on disk stay
/// `spooled` until the thread opens it and counts them exactly.
pub(super) fn start_disk(
    dir: &std::path::Path,
    opened: Result<Spool, SpoolError>,
    config: &Config,
    books: &Arc<Books>,
    moved_aside: &mut Option<PathBuf>,
) -> Result<Disk, BuildError> {
    let mut causes = Vec::new();
    let spool = match opened {
        Ok(mut spool) => {
            if let Some(d) = spool.take_damage() {
                if d.lost_spans > 0 {
                    books.lost_before_open(d.lost_spans);
                }
                causes = Cause::of_damage(&d);
                if let Some(aside) = d.set_aside {
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
    for cause in causes {
        disk.add_cause(cause);
    }
    Ok(disk)
}

/// Spans whose trace id's low 64 bits are below this are sampled;
/// `None` samples everything.
pub(super) fn sample_threshold(ratio: f64) -> Option<u64> {
    if ratio >= 1.0 {
        None
    } else {
        Some((ratio * 2f64.powi(64)) as u64)
    }
}
