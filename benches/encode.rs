//! Zipkin v2 encoding of a 512-span batch, JSON and proto3, against
//! opentelemetry-zipkin doing the same (its conversion from `SpanData` and
//! serde encoding, up to an HTTP client that discards), and what gzip level
//! 1 costs (the bytes of each are printed); and what the
//! ended-span buffer costs on each side of the same batch: packing (what
//! `end_span` does, freeing bext's strings included) and unpacking (what
//! the flush does before it encodes).

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use opentelemetry_sdk::trace::SpanExporter as _;
use spillway::Encoding;
use spillway::unstable::ended::Ended;
use spillway::unstable::span::{Event, Kind, Span, Status, Value};
use spillway::unstable::zipkin::Encoder;
use std::hint::black_box;
use std::io::Write;

mod peers;

/// 512 spans shaped like bext's: a SERVER request span and a DB CLIENT child.
pub fn batch() -> Vec<Span> {
    (0..512u64)
        .map(|i| {
            let server = i % 2 == 0;
            let start = 1_764_000_000_000_000_000 + i * 1_000_000;
            let mut attributes = vec![
                ("http.request.method".to_owned(), Value::String("GET".into())),
                ("http.route".to_owned(), Value::String("/users/:id".into())),
                ("http.response.status_code".to_owned(), Value::I64(200)),
            ];
            if !server {
                attributes = vec![
                    ("db.system".to_owned(), Value::String("postgresql".into())),
                    (
                        "db.statement".to_owned(),
                        Value::String("SELECT * FROM users WHERE id = $1".into()),
                    ),
                    ("server.address".to_owned(), Value::String("db.internal".into())),
                ];
            }
            Span {
                trace_id: [(i / 2) as u8 | 1; 16],
                span_id: (i + 1).to_be_bytes(),
                parent_id: (!server).then(|| i.to_be_bytes()),
                name: if server {
                    "GET /users/:id".into()
                } else {
                    "SELECT users".into()
                },
                kind: if server { Kind::Server } else { Kind::Client },
                start_unix_nanos: start,
                end_unix_nanos: start + 734_000,
                status: if i % 10 == 0 {
                    Status::Error("timeout".into())
                } else {
                    Status::Ok
                },
                attributes,
                events: smallvec::smallvec![Event {
                    name: "cache.miss".into(),
                    time_unix_nanos: start + 1000,
                    attributes: vec![],
                }],
                dropped_attributes: 0,
                dropped_events: 0,
            }
        })
        .collect()
}

fn encode(c: &mut Criterion) {
    let spans = batch();
    let mut encoder = Encoder::new("bext-site");
    let mut out = Vec::new();
    encoder.encode_batch(&spans, &mut out);
    let mut g = c.benchmark_group("zipkin_encode_512");
    g.throughput(Throughput::Elements(spans.len() as u64));
    g.bench_function("spillway", |b| {
        b.iter(|| {
            out.clear();
            encoder.encode_batch(black_box(&spans), &mut out);
            black_box(out.len())
        })
    });
    g.bench_function("spillway+gzip1", |b| {
        let mut gz = Vec::new();
        b.iter(|| {
            out.clear();
            encoder.encode_batch(black_box(&spans), &mut out);
            black_box(gzip1(&out, &mut gz))
        })
    });
    let mut proto = Encoder::with_encoding(Encoding::Proto3, "bext-site");
    let mut body = Vec::new();
    g.bench_function("spillway-proto3", |b| {
        b.iter(|| {
            body.clear();
            proto.encode_batch(black_box(&spans), &mut body);
            black_box(body.len())
        })
    });
    g.bench_function("spillway-proto3+gzip1", |b| {
        let mut gz = Vec::new();
        b.iter(|| {
            body.clear();
            proto.encode_batch(black_box(&spans), &mut body);
            black_box(gzip1(&body, &mut gz))
        })
    });
    // The peer consumes its batch: each run gets a fresh clone, made
    // outside the timing.
    let otel_spans = peers::otel_batch();
    let exporter = peers::zipkin_exporter();
    g.bench_function("opentelemetry-zipkin", |b| {
        b.iter_batched(
            || otel_spans.clone(),
            |batch| futures_executor::block_on(exporter.export(batch)),
            BatchSize::SmallInput,
        )
    });
    g.finish();
    let peer_len = peers::BODY_BYTES.with(|b| b.get());
    eprintln!("512-span batch: opentelemetry-zipkin body {peer_len} bytes");
    let mut gz = Vec::new();
    for (name, bytes) in [("JSON", &out), ("proto3", &body)] {
        let gz_len = gzip1(bytes, &mut gz);
        eprintln!(
            "512-span batch: {} bytes {name} ({:.1} a span), {gz_len} bytes gzip-1 ({:.1} a span, {:.1}x)",
            bytes.len(),
            bytes.len() as f64 / 512.0,
            gz_len as f64 / 512.0,
            bytes.len() as f64 / gz_len.max(1) as f64
        );
    }
}

/// `bytes` gzipped at level 1 into `gz`; its length.
fn gzip1(bytes: &[u8], gz: &mut Vec<u8>) -> usize {
    gz.clear();
    let mut enc = flate2::write::GzEncoder::new(gz, flate2::Compression::new(1));
    let _ = enc.write_all(bytes);
    enc.finish().map(|v| v.len()).unwrap_or(0)
}

/// `spans` packed into an ended-span buffer, as `end_span` leaves them.
fn packed(spans: &[Span]) -> Ended {
    let mut ended = Ended::default();
    for mut span in spans.iter().cloned() {
        ended.push(&mut span);
    }
    ended
}

fn ended_batch(c: &mut Criterion) {
    let spans = batch();
    let mut g = c.benchmark_group("ended_batch_512");
    g.throughput(Throughput::Elements(spans.len() as u64));
    // Into a buffer that has held the batch before (its capacity kept, as
    // between flushes); each span dropped after packing, freeing its strings.
    g.bench_function("pack", |b| {
        b.iter_batched(
            || {
                let mut ended = packed(&spans);
                ended.drain_into(&mut Vec::new());
                (spans.clone(), ended)
            },
            |(batch, mut ended)| {
                for mut span in batch {
                    ended.push(&mut span);
                }
                ended
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("unpack", |b| {
        b.iter_batched(
            || packed(&spans),
            |mut ended| {
                let mut out = Vec::with_capacity(spans.len());
                ended.drain_into(&mut out);
                out
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, encode, ended_batch);
criterion_main!(benches);
