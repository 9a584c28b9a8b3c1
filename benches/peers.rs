//! The peers a user would pick instead of spillway, set up to do the same
//! work as `common::record_one` and the 512-span batch: the OpenTelemetry
//! SDK (its tracer, a batch processor and an exporter that discards),
//! fastrace (local spans under a per-thread root, a reporter that
//! discards), and opentelemetry-zipkin's conversion and serde encoding.
//! Peers are dev-dependencies only.
#![allow(dead_code)]

use opentelemetry::KeyValue;
use opentelemetry::trace::{Span as _, SpanKind, TraceContextExt as _, Tracer as _, TracerProvider as _};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider, SpanData, SpanExporter};
use std::cell::RefCell;
use std::sync::{Arc, Mutex};

/// An OpenTelemetry exporter that drops what it is given.
#[derive(Debug)]
pub struct OtelDiscard;

impl SpanExporter for OtelDiscard {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        drop(batch);
        Ok(())
    }
}

/// An OpenTelemetry SDK tracer with a batch processor (its queue sized so
/// nothing is dropped between flushes) and a discarding exporter.
pub struct Otel {
    pub provider: SdkTracerProvider,
    pub tracer: opentelemetry_sdk::trace::SdkTracer,
}

pub fn otel() -> Otel {
    let processor = BatchSpanProcessor::builder(OtelDiscard)
        .with_batch_config(BatchConfigBuilder::default().with_max_queue_size(1 << 16).build())
        .build();
    let provider = SdkTracerProvider::builder().with_span_processor(processor).build();
    let tracer = provider.tracer("bench");
    Otel { provider, tracer }
}

/// The standard span through the OpenTelemetry API.
#[inline]
pub fn otel_record_one(o: &Otel) {
    otel_span(
        o,
        [
            KeyValue::new("http.request.method", "GET"),
            KeyValue::new("http.route", "/users/:id"),
            KeyValue::new("http.response.status_code", 200i64),
        ],
    );
}

/// [`otel_record_one`] with owned `String` keys and values, as a bext
/// tracer plugin built on the SDK would receive them through the trait.
pub fn otel_record_one_owned(o: &Otel) {
    otel_span(
        o,
        [
            KeyValue::new("http.request.method".to_owned(), "GET".to_owned()),
            KeyValue::new("http.route".to_owned(), "/users/:id".to_owned()),
            KeyValue::new("http.response.status_code".to_owned(), 200i64),
        ],
    );
}

#[inline]
fn otel_span(o: &Otel, attributes: [KeyValue; 3]) {
    let mut span = o
        .tracer
        .span_builder("GET /users/:id")
        .with_kind(SpanKind::Server)
        .with_attributes(attributes)
        .start(&o.tracer);
    span.add_event("cache.miss", vec![]);
    span.end();
}

pub fn otel_flush(o: &Otel) {
    let _ = o.provider.force_flush();
}

/// A fastrace reporter that drops what it is given.
pub struct FastraceDiscard;

impl fastrace::collector::Reporter for FastraceDiscard {
    fn report(&mut self, spans: Vec<fastrace::collector::SpanRecord>) {
        drop(spans);
    }
}

/// Installs the discarding reporter once per process.
pub fn fastrace_init() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| fastrace::set_reporter(FastraceDiscard, fastrace::collector::Config::default()));
}

thread_local! {
    /// The root the local spans of this thread hang under, and how many it
    /// has; replaced every `ROOT_SPANS` spans so its buffer stays bounded.
    static ROOT: RefCell<Option<(fastrace::Span, fastrace::local::LocalParentGuard, u32)>> =
        const { RefCell::new(None) };
}
const ROOT_SPANS: u32 = 4096;

/// The standard span as a fastrace local span.
#[inline]
pub fn fastrace_record_one(_: &()) {
    fastrace_root();
    let span = fastrace::local::LocalSpan::enter_with_local_parent("GET /users/:id").with_properties(|| {
        [
            ("http.request.method", "GET"),
            ("http.route", "/users/:id"),
            ("http.response.status_code", "200"),
        ]
    });
    fastrace::local::LocalSpan::add_event(fastrace::Event::new("cache.miss"));
    drop(span);
}

/// Keeps this thread under a local root span, replaced every `ROOT_SPANS`.
fn fastrace_root() {
    ROOT.with(|root| {
        let mut root = root.borrow_mut();
        if root.as_ref().is_none_or(|r| r.2 >= ROOT_SPANS) {
            // Drop the guard before its span, then start a fresh root.
            if let Some((span, guard, _)) = root.take() {
                drop(guard);
                drop(span);
            }
            let span = fastrace::Span::root("request", fastrace::prelude::SpanContext::random());
            let guard = span.set_local_parent();
            *root = Some((span, guard, 0));
        }
        if let Some(r) = root.as_mut() {
            r.2 += 1;
        }
    });
}

/// [`fastrace_record_one`] with the attribute keys and values allocated as
/// bext hands them to a tracer (owned `String`s), for a like-for-like
/// comparison with spillway, whose trait signature imposes them.
pub fn fastrace_record_one_owned(_: &()) {
    fastrace_root();
    let span = fastrace::local::LocalSpan::enter_with_local_parent("GET /users/:id").with_properties(|| {
        [
            ("http.request.method".to_owned(), "GET".to_owned()),
            ("http.route".to_owned(), "/users/:id".to_owned()),
            ("http.response.status_code".to_owned(), 200i64.to_string()),
        ]
    });
    fastrace::local::LocalSpan::add_event(fastrace::Event::new("cache.miss"));
    drop(span);
}

pub fn fastrace_flush(_: &()) {
    fastrace::flush();
}

/// An HTTP client for opentelemetry-zipkin that answers 202 without I/O.
#[derive(Debug)]
pub struct HttpDiscard;

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for HttpDiscard {
    async fn send_bytes(
        &self,
        request: opentelemetry_http::Request<opentelemetry_http::Bytes>,
    ) -> Result<opentelemetry_http::Response<opentelemetry_http::Bytes>, opentelemetry_http::HttpError> {
        BODY_BYTES.with(|b| b.set(request.body().len()));
        Ok(opentelemetry_http::Response::builder()
            .status(202)
            .body(opentelemetry_http::Bytes::new())?)
    }
}

thread_local! {
    /// The size of the last body `HttpDiscard` was given.
    pub static BODY_BYTES: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// The Zipkin exporter (marked deprecated upstream in favour of OTLP,
/// still what a Zipkin user of OpenTelemetry's Rust SDK reaches for).
#[allow(deprecated)]
pub fn zipkin_exporter() -> opentelemetry_zipkin::ZipkinExporter {
    opentelemetry_zipkin::ZipkinExporter::builder()
        .with_http_client(HttpDiscard)
        .with_collector_endpoint("http://127.0.0.1:9411/api/v2/spans")
        .build()
        .expect("zipkin exporter")
}

/// An exporter that keeps what it is given, to capture real `SpanData`.
#[derive(Debug, Clone, Default)]
struct Keep(Arc<Mutex<Vec<SpanData>>>);

impl SpanExporter for Keep {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.0
            .lock()
            .map_err(|e| opentelemetry_sdk::error::OTelSdkError::InternalFailure(e.to_string()))?
            .extend(batch);
        Ok(())
    }
}

/// The 512-span batch of `encode.rs` as OpenTelemetry `SpanData`, recorded
/// through the SDK: SERVER request spans with a DB CLIENT child, three
/// attributes each, one event, 1 in 10 with an error status.
pub fn otel_batch() -> Vec<SpanData> {
    let keep = Keep::default();
    let provider = SdkTracerProvider::builder().with_simple_exporter(keep.clone()).build();
    let tracer = provider.tracer("bench");
    for i in 0..256 {
        let server = tracer
            .span_builder("GET /users/:id")
            .with_kind(SpanKind::Server)
            .with_attributes([
                KeyValue::new("http.request.method", "GET"),
                KeyValue::new("http.route", "/users/:id"),
                KeyValue::new("http.response.status_code", 200i64),
            ])
            .start(&tracer);
        let cx = opentelemetry::Context::current_with_span(server);
        let mut db = tracer
            .span_builder("SELECT users")
            .with_kind(SpanKind::Client)
            .with_attributes([
                KeyValue::new("db.system", "postgresql"),
                KeyValue::new("db.statement", "SELECT * FROM users WHERE id = $1"),
                KeyValue::new("server.address", "db.internal"),
            ])
            .start_with_context(&tracer, &cx);
        db.add_event("cache.miss", vec![]);
        db.end();
        let span = cx.span();
        span.add_event("cache.miss", vec![]);
        if i % 5 == 0 {
            span.set_status(opentelemetry::trace::Status::error("timeout"));
        } else {
            span.set_status(opentelemetry::trace::Status::Ok);
        }
        span.end();
    }
    let _ = provider.force_flush();
    let spans = keep.0.lock().map(|v| v.clone()).unwrap_or_default();
    assert_eq!(spans.len(), 512);
    spans
}
