//! The spool: spilling a 512-span batch (with and without the commit that
//! makes it durable: sled's flush and the fsyncs), replaying a spool to a
//! loopback receiver, the size on disk per spilled span, the codecs a
//! record's payload could be compressed with, and this machine's fsync
//! latency, so the figures scale to another disk.

use bext_plugin_api::tracer::TracerPlugin;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use spillway::spool::Spool;
use spillway::{Config, SpillwayTracer};
use std::time::{Duration, Instant};

#[path = "encode.rs"]
#[allow(dead_code)]
mod encode;
#[path = "../tests/common/mod.rs"]
#[allow(unused_imports)]
mod fixtures;

fn spill(c: &mut Criterion) {
    let batch = encode::batch();
    let mut g = c.benchmark_group("spool_spill_512");
    g.throughput(Throughput::Elements(batch.len() as u64));
    for synced in [false, true] {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut spool = Spool::open(dir.path(), u64::MAX).expect("spool");
        let name = if synced { "durable" } else { "append" };
        g.bench_function(name, |b| {
            b.iter(|| {
                let _ = spool.append("bench", &batch, 1);
                if synced {
                    let _ = spool.commit();
                }
            })
        });
        let _ = spool.commit();
        let st = spool.stats();
        let on_disk = spool.size_on_disk();
        let mut json = Vec::new();
        spillway::unstable::zipkin::Encoder::new("bext-site").encode_batch(&batch, &mut json);
        let per_span_json = json.len() as f64 / batch.len() as f64;
        eprintln!(
            "{name}: {} spans spooled, {:.0} record bytes/span, {:.0} bytes on disk/span, JSON {per_span_json:.0} bytes/span (disk/JSON {:.2}x)",
            st.spans,
            st.bytes as f64 / st.spans.max(1) as f64,
            on_disk as f64 / st.spans.max(1) as f64,
            on_disk as f64 / st.spans.max(1) as f64 / per_span_json
        );
    }
    g.finish();
}

fn replay(c: &mut Criterion) {
    let batch = encode::batch();
    let sink = fixtures::FaultServer::sink();
    let mut g = c.benchmark_group("spool_replay");
    g.sample_size(10);
    // The window starts small and doubles a flush: the larger spool shows
    // the rate once it has grown.
    for spans in [51_200, 409_600] {
        g.throughput(Throughput::Elements(spans as u64));
        g.bench_function(format!("{spans}_spans_to_loopback"), |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    let dir = tempfile::tempdir().expect("tempdir");
                    {
                        let mut spool = Spool::open(dir.path(), u64::MAX).expect("spool");
                        for _ in 0..spans / batch.len() {
                            let _ = spool.append("bench", &batch, 1);
                        }
                        let _ = spool.commit();
                    }
                    let tracer = SpillwayTracer::new(Config {
                        endpoint: sink.url.clone(),
                        gzip: false,
                        spool_dir: Some(dir.path().to_path_buf()),
                        replay_budget_spans: spans,
                        ..Config::default()
                    })
                    .expect("tracer");
                    // The replay window follows the collector (from 1,024
                    // spans a flush, doubling): flushes back to back until
                    // drained.
                    let t = Instant::now();
                    for _ in 0..100 {
                        let _ = tracer.flush();
                        if tracer.stats().spooled == 0 {
                            break;
                        }
                    }
                    spent += t.elapsed();
                    assert_eq!(tracer.stats().spooled, 0, "drained");
                }
                spent
            })
        });
    }
    g.finish();
}

/// The codecs a record's payload could use, on `generate`'s request spans
/// (random ids, as a site's): the plain payload as records hold it,
/// compressed and back, for records of 512 spans and blocks of 64. The
/// bytes a span each codec leaves are printed.
fn codec(c: &mut Criterion) {
    use std::io::{Read, Write};
    type Pack = fn(&[u8], &mut Vec<u8>);
    type Unpack = fn(&[u8], usize, &mut Vec<u8>);
    fn deflate(plain: &[u8], out: &mut Vec<u8>) {
        let mut enc = flate2::write::DeflateEncoder::new(out, flate2::Compression::fast());
        let _ = enc.write_all(plain);
        let _ = enc.finish();
    }
    fn inflate(packed: &[u8], _: usize, out: &mut Vec<u8>) {
        let _ = flate2::read::DeflateDecoder::new(packed).read_to_end(out);
    }
    fn lz4(plain: &[u8], out: &mut Vec<u8>) {
        out.resize(lz4_flex::block::get_maximum_output_size(plain.len()), 0);
        let n = lz4_flex::block::compress_into(plain, out).unwrap_or(0);
        out.truncate(n);
    }
    fn unlz4(packed: &[u8], len: usize, out: &mut Vec<u8>) {
        out.resize(len, 0);
        let _ = lz4_flex::block::decompress_into(packed, out);
    }
    fn zstd1(plain: &[u8], out: &mut Vec<u8>) {
        let _ = zstd::stream::copy_encode(plain, out, 1);
    }
    fn unzstd(packed: &[u8], _: usize, out: &mut Vec<u8>) {
        let _ = zstd::stream::copy_decode(packed, out);
    }
    // What version 4 records use: level -1, one context a thread, reused.
    thread_local! {
        static ZSTD: std::cell::RefCell<(zstd::bulk::Compressor<'static>, zstd::bulk::Decompressor<'static>)> =
            std::cell::RefCell::new((
                zstd::bulk::Compressor::new(-1).expect("a zstd context"),
                zstd::bulk::Decompressor::new().expect("a zstd context"),
            ));
    }
    fn zstd_fast(plain: &[u8], out: &mut Vec<u8>) {
        out.resize(zstd::zstd_safe::compress_bound(plain.len()), 0);
        let n = ZSTD.with_borrow_mut(|z| z.0.compress_to_buffer(plain, &mut out[..]).unwrap_or(0));
        out.truncate(n);
    }
    fn unzstd_fast(packed: &[u8], len: usize, out: &mut Vec<u8>) {
        out.resize(len, 0);
        let _ = ZSTD.with_borrow_mut(|z| z.1.decompress_to_buffer(packed, &mut out[..]));
    }
    let codecs: [(&str, Pack, Unpack); 4] = [
        ("deflate1", deflate, inflate),
        ("lz4", lz4, unlz4),
        ("zstd1", zstd1, unzstd),
        ("zstd-1", zstd_fast, unzstd_fast),
    ];
    let spans = encode::generate_spans(256);
    for per in [512, 64] {
        let plains: Vec<Vec<u8>> = spans
            .chunks(per)
            .map(|c| {
                let mut plain = Vec::new();
                spillway::unstable::spool::record::payload("bext-site", c, &mut plain);
                plain
            })
            .collect();
        let plain_bytes: usize = plains.iter().map(Vec::len).sum();
        let mut g = c.benchmark_group(format!("record_codec_{per}"));
        g.throughput(Throughput::Elements(spans.len() as u64));
        eprintln!(
            "{per} spans a payload: plain {:.1} bytes/span",
            plain_bytes as f64 / spans.len() as f64
        );
        for (name, pack, unpack) in codecs {
            let packed: Vec<Vec<u8>> = plains
                .iter()
                .map(|p| {
                    let mut out = Vec::new();
                    pack(p, &mut out);
                    out
                })
                .collect();
            let mut check = Vec::new();
            for (p, z) in plains.iter().zip(&packed) {
                check.clear();
                unpack(z, p.len(), &mut check);
                assert_eq!(&check, p, "{name} round trip");
            }
            let packed_bytes: usize = packed.iter().map(Vec::len).sum();
            eprintln!(
                "{per} spans a payload, {name}: {:.1} bytes/span ({:.2}x smaller)",
                packed_bytes as f64 / spans.len() as f64,
                plain_bytes as f64 / packed_bytes as f64
            );
            let mut out = Vec::with_capacity(2 * plains[0].len());
            g.bench_function(format!("{name}_compress"), |b| {
                b.iter(|| {
                    for p in &plains {
                        out.clear();
                        pack(p, &mut out);
                    }
                })
            });
            g.bench_function(format!("{name}_decompress"), |b| {
                b.iter(|| {
                    for (p, z) in plains.iter().zip(&packed) {
                        out.clear();
                        unpack(z, p.len(), &mut out);
                    }
                })
            });
        }
        g.finish();
    }
}

/// A whole record of 512 of `generate`'s spans, encoded (packed,
/// compressed, framed) and as replay reads it back; and from a shard's
/// buffer to a record, the spiller's way and the flush's.
fn record(c: &mut Criterion) {
    use spillway::spool::Tree;
    use spillway::unstable::spool::record;
    let spans = encode::generate_spans(256);
    let meta = record::Meta {
        seq: 1,
        tree: Tree::Queue,
        created_unix_ms: 1,
    };
    let records: Vec<Vec<u8>> = spans
        .chunks(512)
        .map(|c| {
            let mut out = Vec::new();
            record::encode("bext-site", c, meta, &mut out).expect("encodes");
            out
        })
        .collect();
    let bytes: usize = records.iter().map(Vec::len).sum();
    eprintln!("records of 512: {:.1} bytes/span", bytes as f64 / spans.len() as f64);
    let mut g = c.benchmark_group("record_512");
    g.throughput(Throughput::Elements(spans.len() as u64));
    let mut out = Vec::new();
    g.bench_function("encode", |b| {
        b.iter(|| {
            for c in spans.chunks(512) {
                out.clear();
                let _ = record::encode("bext-site", c, meta, &mut out);
            }
        })
    });
    g.bench_function("decode", |b| {
        b.iter(|| {
            for r in &records {
                std::hint::black_box(record::decode(r).is_ok());
            }
        })
    });
    // From a shard's ended buffer to a record, as the spiller goes (the
    // spans copied with their names inline) and as the flush goes (the
    // spans unpacked, encoded, then dropped).
    use spillway::unstable::ended::{Ended, Run};
    let shard = |c: &[spillway::unstable::span::Span]| {
        let mut ended = Ended::default();
        c.iter().for_each(|s| ended.push(&mut s.clone()));
        ended
    };
    let mut run = Run::default();
    g.bench_function("from_shard_packed", |b| {
        b.iter_batched_ref(
            || spans.chunks(512).map(shard).collect::<Vec<_>>(),
            |shards| {
                for ended in shards.iter_mut() {
                    run.clear();
                    ended.drain_inline(&mut run);
                    out.clear();
                    let _ = record::seal("bext-site", &run, 0, run.len(), meta, &mut out);
                }
            },
            criterion::BatchSize::LargeInput,
        )
    });
    let mut batch = Vec::new();
    g.bench_function("from_shard_unpacked", |b| {
        b.iter_batched_ref(
            || spans.chunks(512).map(shard).collect::<Vec<_>>(),
            |shards| {
                for ended in shards.iter_mut() {
                    batch.clear();
                    ended.drain_into(&mut batch);
                    out.clear();
                    let _ = record::encode("bext-site", &batch, meta, &mut out);
                }
            },
            criterion::BatchSize::LargeInput,
        )
    });
    g.finish();
}

/// What one durable write costs on this machine's disk: 4 KiB written in
/// place, then `fdatasync`; and a directory `fsync`.
fn fsync(c: &mut Criterion) {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(dir.path().join("f"))
        .expect("file");
    file.set_len(1 << 20).expect("size");
    let page = [7u8; 4096];
    let mut g = c.benchmark_group("disk");
    let mut at = 0u64;
    g.bench_function("write_4KiB+fdatasync", |b| {
        b.iter(|| {
            at = (at + 4096) % (1 << 20);
            let _ = file.write_all_at(&page, at);
            let _ = file.sync_data();
        })
    });
    g.bench_function("fsync_directory", |b| {
        b.iter(|| {
            let _ = std::fs::File::open(dir.path()).and_then(|d| d.sync_all());
        })
    });
    g.finish();
}

criterion_group!(benches, spill, replay, codec, record, fsync);
criterion_main!(benches);
