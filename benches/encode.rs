//! Zipkin v2 encoding of a 512-span batch, JSON and proto3, against
//! opentelemetry-zipkin doing the same (its conversion from `SpanData` and
//! serde encoding, up to an HTTP client that discards), and what gzip level
//! 1 costs (the bytes of each are printed); the same on 1,024 spans as
//! `spillway generate` records them; and what the
//! ended-span buffer costs on each side of the same batch: packing (what
//! `end_span` does, freeing bext's strings included) and unpacking (what
//! the flush does before it encodes).

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use opentelemetry_sdk::trace::SpanExporter as _;
use spillway::spool::{Spool, Tree};
use spillway::unstable::ended::Ended;
use spillway::unstable::span::{Event, Kind, Span, Status, Value};
use spillway::unstable::zipkin::Encoder;
use spillway::{Config, Encoding, SpillwayTracer};
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
    encode_both(c, "zipkin_encode_512", &batch(), true);
    encode_both(c, "zipkin_encode_generate_1024", &generate_spans(512), false);
}

/// `spans` encoded as JSON and proto3, bare and gzipped (and by the peer,
/// on the bench batch, which it has a copy of); the bytes of each printed.
fn encode_both(c: &mut Criterion, group: &str, spans: &[Span], peer: bool) {
    let n = spans.len();
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Elements(n as u64));
    let mut bodies = Vec::new();
    for (name, encoding) in [("spillway", Encoding::Json), ("spillway-proto3", Encoding::Proto3)] {
        let mut encoder = Encoder::with_encoding(encoding, "bext-site");
        let mut out = Vec::new();
        g.bench_function(name, |b| {
            b.iter(|| {
                out.clear();
                encoder.encode_batch(black_box(spans), &mut out);
                black_box(out.len())
            })
        });
        g.bench_function(format!("{name}+gzip1"), |b| {
            let mut gz = Vec::new();
            b.iter(|| {
                out.clear();
                encoder.encode_batch(black_box(spans), &mut out);
                black_box(gzip1(&out, &mut gz))
            })
        });
        bodies.push((if encoding == Encoding::Json { "JSON" } else { "proto3" }, out));
    }
    if peer {
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
        let peer_len = peers::BODY_BYTES.with(|b| b.get());
        eprintln!("{group}: opentelemetry-zipkin body {peer_len} bytes");
    }
    g.finish();
    let mut gz = Vec::new();
    for (name, bytes) in &bodies {
        let gz_len = gzip1(bytes, &mut gz);
        eprintln!(
            "{group}: {} bytes {name} ({:.1} a span), {gz_len} bytes gzip-1 ({:.1} a span, {:.1}x)",
            bytes.len(),
            bytes.len() as f64 / n as f64,
            gz_len as f64 / n as f64,
            bytes.len() as f64 / gz_len.max(1) as f64
        );
    }
}

/// The spans of `requests` requests as `spillway generate` records them,
/// through the real tracer (random ids, clock times), spilled with the
/// collector unreachable and read back from the spool.
pub fn generate_spans(requests: u64) -> Vec<Span> {
    let dir = tempfile::tempdir().expect("a temporary spool");
    let tracer = SpillwayTracer::new(Config {
        endpoint: "http://127.0.0.1:1/api/v2/spans".into(),
        spool_dir: Some(dir.path().to_path_buf()),
        ..Config::default()
    })
    .expect("a tracer");
    let mut rng = fastrand::Rng::with_seed(7);
    for n in 0..requests {
        spillway::unstable::workload::request(&tracer, &mut rng, n, 0.1);
    }
    let _ = tracer.shutdown();
    drop(tracer);
    let spool = Spool::open(dir.path(), u64::MAX).expect("the spool opens");
    let spans: Vec<Span> = spool
        .records(Tree::Queue)
        .filter_map(|r| r.ok()?.spans.ok())
        .flatten()
        .collect();
    assert_eq!(spans.len() as u64, 2 * requests, "every span spilled");
    spans
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
