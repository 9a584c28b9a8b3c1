//! # spillway
//!
//! A durable Zipkin exporter for the bext web runtime: it implements
//! [`bext_plugin_api::tracer::TracerPlugin`], records spans on the request
//! path without I/O, and exports them as Zipkin v2 JSON on `flush`; what
//! the collector cannot take is spilled to a spool on disk and replayed,
//! oldest first, once it answers again. Every span ends up delivered, in
//! the spool, or in a named drop counter ([`Stats`]).
//!
//! Data flows one way, and the modules are named for its stages:
//!
//! ```text
//!  bext ──► tracer ───────────► export ──────────► zipkin ──► transport ──► collector
//!           record, shards,     flush: send,        encode     POST (ureq)
//!           spiller, drain      spill_or_hold,      v2 JSON    classify
//!                               replay, books
//!                                  │      ▲
//!                                  ▼      │ oldest first
//!                                 disk thread ──► spool (sled + ledger, fsynced)
//! ```
//!
//! - `tracer`: the hot path (sharded, no I/O, never panics) and the
//!   spiller that moves a filling batch to disk between flushes.
//! - `export`: one flush, bounded by `flush_timeout_ms`: the batch to the
//!   collector, what it cannot take to the spool, the backlog back; every
//!   outcome recorded once in the books that [`Stats`] reads.
//! - `zipkin`: the OpenTelemetry-to-Zipkin v2 JSON mapping.
//! - [`transport`]: HTTP (ureq): gzip, timeouts, TLS, and the
//!   classification of every answer (retry, refuse, misconfigured).
//! - [`spool`]: the durable queue, its formats, its checks and salvage;
//!   also the operator's API (the `spillway` command is built on it).
//!
//! The spool knows nothing of HTTP and the transport nothing of sled: the
//! exporter composes them.
//!
//! ```no_run
//! use bext_plugin_api::tracer::{SpanKind, SpanStart, TracerPlugin};
//! use spillway::{Config, SpillwayTracer};
//!
//! let tracer = SpillwayTracer::new(Config::from_env()?)?;
//! let span = tracer.start_span(SpanStart { name: "GET /users/:id", kind: SpanKind::Server, ..Default::default() });
//! tracer.set_attribute(span, "http.request.method", "GET".into());
//! tracer.end_span(span, None);
//! tracer.flush()?;
//! println!("{:?}", tracer.stats());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! What spillway's own command line, benchmarks and fuzz targets need
//! beyond this API is in [`unstable`], which may change in any release.
#![deny(missing_docs)]
#![forbid(unsafe_code)]
#![warn(unreachable_pub)]

mod tracer;

mod export;
mod zipkin;

pub mod transport;

pub mod spool;

pub mod clock;
pub mod config;
pub mod metrics;
mod span;
mod stats;
mod sync;
pub mod unstable;
mod workload;

pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{Config, ConfigError, Encoding, Secret, Tls};
pub use export::report::{Cause, FlushError, SpoolFailure};
pub use stats::{Dropped, Stats};
pub use tracer::{BuildError, SpillwayTracer, TracerBuilder};
