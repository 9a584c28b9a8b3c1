//! The counters and gauges in the OpenMetrics text format, rendered with
//! the `prometheus-client` crate, for bext's observability layer or a
//! sidecar to expose (`SpillwayTracer::openmetrics`), and for a spool at
//! rest (`spillway inspect --openmetrics`).
//!
//! Names follow the OpenTelemetry Collector's exporter-queue metrics where
//! they fit (`otelcol_exporter_queue_size`, `_queue_capacity`,
//! `_sent_spans`, `_send_failed_requests`, dropped spans by reason), under
//! the prefix `spillway_`, with what none of them shows beside: the age of
//! the oldest spooled record and the replay rate, from which the time to
//! drain follows. Queue sizes carry a `store` label: `memory` (the batch
//! and the retry buffer) or `spool`.
//!
//! What a snapshot does not know is left out, never rendered as zero: a
//! spool read at rest has no process counters, a tracer without a spool
//! no spool gauges.

use crate::stats::Stats;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use std::sync::atomic::AtomicU64;

/// What the spool holds, as gauges.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SpoolGauges {
    /// Spans in the queue.
    pub spans: u64,
    /// Bytes of the queue's records.
    pub bytes: u64,
    /// The cap on the spool's size on disk (`max_spool_bytes`), if known.
    pub capacity_bytes: Option<u64>,
    /// Spans kept as dead letters.
    pub dead_letter_spans: u64,
    /// Records in quarantine.
    pub quarantined_records: u64,
    /// Seconds since the oldest queued record was spilled.
    pub oldest_age_seconds: Option<f64>,
    /// The last replay rate measured, spans per second.
    pub replay_spans_per_s: Option<u64>,
}

impl SpoolGauges {
    /// Gauges for a spool holding `spans` spans in `bytes` bytes of records.
    pub fn new(spans: u64, bytes: u64) -> SpoolGauges {
        SpoolGauges {
            spans,
            bytes,
            ..SpoolGauges::default()
        }
    }
}

/// What to render: a tracer's counters, the spool's gauges, or both.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The tracer's counters, if there is a tracer.
    pub stats: Option<Stats>,
    /// The memory batch's capacity in spans (`max_queue_spans`), if known.
    pub memory_capacity_spans: Option<u64>,
    /// The spool's gauges, if there is a spool.
    pub spool: Option<SpoolGauges>,
}

type Labels = Vec<(&'static str, &'static str)>;

fn gauge(registry: &mut Registry, name: &str, help: &str, unit: Option<Unit>, value: u64) {
    let g: Gauge = Gauge::default();
    g.set(i64::try_from(value).unwrap_or(i64::MAX));
    match unit {
        Some(u) => registry.register_with_unit(name, help, u, g),
        None => registry.register(name, help, g),
    }
}

fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let c: Counter = Counter::default();
    c.inc_by(value);
    registry.register(name, help, c);
}

fn spans() -> Unit {
    Unit::Other("spans".to_owned())
}

/// Renders `s` in the OpenMetrics text format (ending in `# EOF`).
pub fn render(s: &Snapshot) -> String {
    let mut root = Registry::default();
    let r = root.sub_registry_with_prefix("spillway");
    register_queue(r, s);
    if let Some(sp) = &s.spool {
        register_spool(r, sp);
    }
    if let Some(st) = &s.stats {
        register_stats(r, st);
    }
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &root);
    out
}

/// The queue's size by where spans wait, and the memory batch's capacity.
fn register_queue(r: &mut Registry, s: &Snapshot) {
    let size: Family<Labels, Gauge> = Family::default();
    if let Some(st) = &s.stats {
        size.get_or_create(&vec![("store", "memory")]).set(clamp(st.in_memory));
    }
    if let Some(sp) = &s.spool {
        size.get_or_create(&vec![("store", "spool")]).set(clamp(sp.spans));
    }
    r.register_with_unit(
        "exporter_queue_size",
        "Spans waiting to be sent, by where they wait",
        spans(),
        size,
    );
    if let Some(cap) = s.memory_capacity_spans {
        let capacity: Family<Labels, Gauge> = Family::default();
        capacity.get_or_create(&vec![("store", "memory")]).set(clamp(cap));
        r.register_with_unit(
            "exporter_queue_capacity",
            "Spans the memory batch holds at most",
            spans(),
            capacity,
        );
    }
}

/// The spool's gauges.
fn register_spool(r: &mut Registry, sp: &SpoolGauges) {
    gauge(
        r,
        "exporter_queue_size",
        "Bytes of the spool's queued records",
        Some(Unit::Bytes),
        sp.bytes,
    );
    if let Some(cap) = sp.capacity_bytes {
        gauge(
            r,
            "exporter_queue_capacity",
            "The spool's cap on disk (max_spool_bytes)",
            Some(Unit::Bytes),
            cap,
        );
    }
    gauge(
        r,
        "exporter_dead_letter",
        "Spans the collector refused for good, kept in the spool's dead letters",
        Some(spans()),
        sp.dead_letter_spans,
    );
    gauge(
        r,
        "spool_quarantined_records",
        "Spool records that failed their checks, kept aside",
        None,
        sp.quarantined_records,
    );
    if let Some(age) = sp.oldest_age_seconds {
        let g: Gauge<f64, AtomicU64> = Gauge::default();
        g.set(age);
        r.register_with_unit(
            "exporter_queue_oldest_age",
            "Time since the oldest spooled record was spilled",
            Unit::Seconds,
            g,
        );
    }
    if let Some(rate) = sp.replay_spans_per_s {
        gauge(
            r,
            "exporter_replay_rate",
            "Spans per second the last replay delivered while sending",
            Some(Unit::Other("spans_per_second".to_owned())),
            rate,
        );
    }
}

/// The tracer's counters and the drops by reason.
fn register_stats(r: &mut Registry, st: &Stats) {
    counter(r, "tracer_recorded_spans", "Sampled spans that ended", st.recorded);
    counter(
        r,
        "tracer_sampled_out_spans",
        "Spans not recorded because sampling said no",
        st.sampled_out,
    );
    gauge(r, "tracer_live_spans", "Spans started and not yet ended", None, st.live);
    counter(
        r,
        "tracer_refused_live_full_spans",
        "Starts refused because max_live_spans spans were live",
        st.refused_live_full,
    );
    counter(
        r,
        "exporter_sent_spans",
        "Spans the collector acknowledged",
        st.delivered,
    );
    counter(
        r,
        "spool_recovered_spans",
        "Spans found in the spool when this process opened it",
        st.recovered,
    );
    counter(r, "exporter_requests", "Requests made to the collector", st.requests);
    counter(
        r,
        "exporter_send_failed_requests",
        "Requests that failed (any outcome but 2xx)",
        st.failed_requests,
    );
    let dropped: Family<Labels, Counter> = Family::default();
    let d = &st.dropped;
    for (reason, n) in [
        ("queue_full", d.queue_full),
        ("retry_full", d.retry_full),
        ("rejected", d.rejected),
        ("oversize", d.oversize),
        ("spool_full", d.spool_full),
        ("spool_expired", d.spool_expired),
        ("corrupt", d.corrupt),
    ] {
        dropped.get_or_create(&vec![("reason", reason)]).inc_by(n);
    }
    r.register("exporter_dropped_spans", "Spans given up, by reason", dropped);
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Dropped;

    #[test]
    fn a_tracer_with_a_spool_renders_every_counter_and_gauge() {
        let stats = Stats {
            recorded: 10,
            delivered: 4,
            in_memory: 1,
            spooled: 5,
            requests: 3,
            failed_requests: 2,
            dropped: Dropped {
                spool_full: 7,
                ..Dropped::default()
            },
            ..Stats::default()
        };
        let spool = SpoolGauges {
            capacity_bytes: Some(1 << 20),
            dead_letter_spans: 2,
            oldest_age_seconds: Some(90.5),
            replay_spans_per_s: Some(41_000),
            ..SpoolGauges::new(5, 4096)
        };
        let text = render(&Snapshot {
            stats: Some(stats),
            memory_capacity_spans: Some(65_536),
            spool: Some(spool),
        });
        for line in [
            "# TYPE spillway_exporter_queue_size_spans gauge",
            "# UNIT spillway_exporter_queue_size_spans spans",
            "spillway_exporter_queue_size_spans{store=\"memory\"} 1",
            "spillway_exporter_queue_size_spans{store=\"spool\"} 5",
            "spillway_exporter_queue_capacity_spans{store=\"memory\"} 65536",
            "spillway_exporter_queue_size_bytes 4096",
            "spillway_exporter_queue_capacity_bytes 1048576",
            "spillway_exporter_dead_letter_spans 2",
            "spillway_exporter_queue_oldest_age_seconds 90.5",
            "spillway_exporter_replay_rate_spans_per_second 41000",
            "spillway_exporter_sent_spans_total 4",
            "spillway_exporter_send_failed_requests_total 2",
            "spillway_exporter_dropped_spans_total{reason=\"spool_full\"} 7",
            "spillway_exporter_dropped_spans_total{reason=\"queue_full\"} 0",
            "spillway_tracer_recorded_spans_total 10",
        ] {
            assert!(text.lines().any(|l| l == line), "no line {line:?} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn what_a_snapshot_does_not_know_is_left_out() {
        let text = render(&Snapshot {
            spool: Some(SpoolGauges::new(3, 100)),
            ..Snapshot::default()
        });
        assert!(text.contains("spillway_exporter_queue_size_spans{store=\"spool\"} 3"));
        for absent in ["store=\"memory\"", "_total", "oldest_age", "replay_rate", "capacity"] {
            assert!(!text.contains(absent), "{absent} in\n{text}");
        }
    }
}
