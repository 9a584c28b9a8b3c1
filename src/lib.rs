//! # spillway
//!
//! A durable Zipkin exporter for the bext web runtime: it implements
//! [`bext_plugin_api::tracer::TracerPlugin`], records spans on the request
//! path without I/O, and exports them as Zipkin v2 JSON on `flush`.
//!
//! Data flows one way:
//!
//! ```text
//! tracer (hot path) -> ended (packed batch) -> zipkin (encode) -> transport (POST) -> exporter (accounting, retry)
//! ```
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
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod config;
pub mod export;
pub mod metrics;
pub mod span;
pub mod spool;
pub mod stats;
pub mod tracer;
pub use tracer::{clock, ended};
pub mod transport;
pub mod zipkin;

pub use config::{Config, ConfigError, Secret, Tls};
pub use export::report::{Cause, FlushError};
pub use stats::{Dropped, Stats};
pub use tracer::{BuildError, SpillwayTracer, TracerBuilder};
