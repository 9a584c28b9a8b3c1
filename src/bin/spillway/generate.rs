//! `spillway generate`: a workload generator in the spirit of the
//! OpenTelemetry Collector's telemetrygen. It drives the real tracer exactly
//! as bext would (SERVER request spans with a DB CLIENT child, attributes,
//! events, some errors) from several threads, flushes on an interval like
//! bext's timer, and ends with the accounting. `--rate` paces the load
//! evenly (total over all threads); SIGINT or SIGTERM stops it cleanly:
//! what is in memory is spilled, the accounting printed, and the exit code
//! is 130 or 143.

use crate::say;
use bext_plugin_api::tracer::TracerPlugin;
use indicatif::{ProgressBar, ProgressStyle};
use spillway::{Config, SpillwayTracer, Stats};
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct Args {
    /// Recording threads.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=256))]
    threads: u32,
    /// Spans to record in all (each request is 2 spans); ignored with --duration.
    #[arg(long, default_value_t = 10_000)]
    spans: u64,
    /// Record for this long instead (e.g. 30s, 2m, 500ms).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Record this many spans per second in all, paced evenly over the
    /// threads (without it, as fast as they can).
    #[arg(long, value_name = "SPANS_PER_S", value_parser = clap::value_parser!(u64).range(1..))]
    rate: Option<u64>,
    /// Flush interval in milliseconds, as bext's timer would.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    flush_every: u64,
    #[command(flatten)]
    collector: crate::collector::Collector,
    /// Service name on every span (else OTEL_SERVICE_NAME, else
    /// spillway-generate).
    #[arg(long)]
    service: Option<String>,
    /// Fraction of requests that fail (error status, exception event), 0 to 1.
    #[arg(long, default_value_t = 0.1, value_parser = ratio)]
    error_ratio: f64,
    /// Print one JSON object with the accounting instead of text.
    #[arg(long)]
    json: bool,
}

/// The longest run `--duration` accepts: a year.
const MAX_DURATION: Duration = Duration::from_secs(365 * 86_400);

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}`: expected a number and a unit, like 30s"))?;
    let ms_per = match unit {
        "ms" => 1,
        "s" | "" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(format!("`{s}`: unit must be ms, s, m or h")),
    };
    n.checked_mul(ms_per)
        .map(Duration::from_millis)
        .filter(|d| *d <= MAX_DURATION)
        .ok_or_else(|| format!("`{s}`: longer than a year"))
}

/// A fraction from 0 to 1 (NaN refused).
fn ratio(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("`{s}`: expected a number from 0 to 1")),
    }
}

impl Args {
    /// The requests to record for `--spans`: two spans each, rounded up.
    fn requests(&self) -> u64 {
        self.spans.div_ceil(2)
    }
}

pub fn run(args: Args, spool: &Path) -> crate::Outcome {
    let signals = crate::Signals::catch().map_err(|e| format!("cannot catch signals: {e}"))?;
    let tracer = build(&args, spool)?;
    let bar = progress_bar(args.duration.is_none().then_some(args.requests() * 2));
    let started = Instant::now();
    drive(&args, &tracer, &signals, &bar);
    // Stopped by a signal: spill what is held, without the network. Else
    // the final flush, then the shutdown, as bext's does. What is still in
    // memory after the shutdown leaves with the process: lost at exit.
    let interrupted = signals.exit_code();
    let last = match interrupted {
        Some(_) => tracer.shutdown().map_err(|e| format!("spilling at the signal: {e}")),
        None => {
            let flushed = tracer.flush().map_err(|e| format!("final flush: {e}"));
            let shut = tracer.shutdown().map_err(|e| format!("shutdown: {e}"));
            flushed.and(shut)
        }
    };
    let elapsed = started.elapsed();
    let stats = tracer.stats();
    bar.finish_and_clear();
    report(&stats, elapsed, args.json).map_err(|e| e.to_string())?;
    if let Err(e) = &last {
        crate::tell!("spillway: {e}");
    }
    let delivered_none = warn_undelivered(&stats);
    Ok(match (interrupted, last) {
        (Some(code), _) => code,
        (None, Ok(())) if !delivered_none && stats.in_memory == 0 => ExitCode::SUCCESS,
        (None, _) => ExitCode::FAILURE,
    })
}

/// The tracer `generate` records into: the collector's flags, this spool,
/// and the service name if given.
fn build(args: &Args, spool: &Path) -> Result<SpillwayTracer, Box<dyn std::error::Error>> {
    let mut config = args.collector.config(Config {
        service_name: "spillway-generate".to_owned(),
        spool_dir: Some(spool.to_path_buf()),
        ..Config::default()
    })?;
    if let Some(service) = &args.service {
        config.service_name = service.clone();
        config.validate().map_err(crate::collector::Usage::from)?;
    }
    SpillwayTracer::new(config).map_err(|e| match e {
        spillway::BuildError::Config(c) => Box::new(crate::collector::Usage::from(c)) as Box<dyn std::error::Error>,
        other => other.to_string().into(),
    })
}

/// Records requests on `args.threads` threads, at `args.rate` if given,
/// until `args.spans` are recorded, the duration ends or a signal comes,
/// while one more thread flushes every `args.flush_every` ms.
fn drive(args: &Args, tracer: &SpillwayTracer, signals: &crate::Signals, bar: &ProgressBar) {
    let requests = args.requests();
    let issued = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let deadline = args.duration.map(|d| Instant::now() + d);
    // Requests (two spans each) per second per thread.
    let pace = args.rate.map(|r| r as f64 / 2.0 / f64::from(args.threads));
    let stopping = || signals.caught().is_some() || deadline.is_some_and(|d| Instant::now() >= d);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..args.threads)
            .map(|_| {
                s.spawn(|| {
                    let mut rng = fastrand::Rng::new();
                    let begin = Instant::now();
                    let mut mine = 0u64;
                    loop {
                        if stopping() {
                            break;
                        }
                        if let Some(per_s) = pace {
                            // Whatever is due is recorded at once, then the
                            // thread sleeps: timers are coarser than a span.
                            let due = (begin.elapsed().as_secs_f64() * per_s) as u64;
                            if mine >= due {
                                std::thread::sleep(Duration::from_micros(200));
                                continue;
                            }
                        }
                        let n = issued.fetch_add(1, Ordering::Relaxed);
                        if deadline.is_none() && n >= requests {
                            break;
                        }
                        spillway::unstable::workload::request(tracer, &mut rng, n, args.error_ratio);
                        mine += 1;
                    }
                })
            })
            .collect();
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) && signals.caught().is_none() {
                // Sleep in small steps so the end of the run is noticed at once.
                let until = Instant::now() + Duration::from_millis(args.flush_every);
                while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                    bar.set_position(tracer.stats().recorded);
                    std::thread::sleep(Duration::from_millis(args.flush_every.min(50)));
                }
                match tracer.flush() {
                    Ok(()) => bar.set_message(""),
                    Err(e) => bar.set_message(format!("flush failed: {e}")),
                }
            }
        });
        for w in workers {
            let _ = w.join();
        }
        stop.store(true, Ordering::Relaxed);
    });
}

/// Says on stderr what the run did not deliver; whether the collector took
/// none of it. A run whose spans all wait in the spool did not do its job,
/// even if nothing was lost: the exit code says so too.
fn warn_undelivered(stats: &Stats) -> bool {
    let delivered_none = stats.recorded > 0 && stats.delivered == 0;
    if delivered_none {
        crate::tell!(
            "spillway: the collector took none of the {} spans recorded; {} are in the spool, {} still on their way there",
            stats.recorded,
            stats.spooled,
            stats.in_memory
        );
    }
    if stats.in_memory > 0 {
        crate::tell!(
            "spillway: {} spans were neither delivered nor in the spool when the run ended: lost at exit",
            stats.in_memory
        );
    }
    delivered_none
}

fn progress_bar(total: Option<u64>) -> ProgressBar {
    let bar = match total {
        Some(n) => ProgressBar::new(n),
        None => ProgressBar::no_length(),
    };
    // indicatif draws on stderr only when it is a terminal: quiet in a pipe.
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} spans {per_sec} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

fn report(s: &Stats, elapsed: Duration, json: bool) -> std::io::Result<()> {
    if json {
        let obj = serde_json::json!({
            "recorded": s.recorded,
            "delivered": s.delivered,
            "pending": s.in_memory,
            "lost_at_exit": s.in_memory,
            "spooled": s.spooled,
            "recovered": s.recovered,
            "dead_lettered": s.dead_lettered,
            "dropped": s.dropped.total(),
            "dropped_by_reason": s.dropped,
            "requests": s.requests,
            "failed_requests": s.failed_requests,
            "spool_moved_aside": s.spool_moved_aside,
            "seconds": elapsed.as_secs_f64(),
        });
        say!("{obj}");
        return Ok(());
    }
    say!(
        "recorded {} spans in {:.2}s ({:.0} spans/s)",
        s.recorded,
        elapsed.as_secs_f64(),
        s.recorded as f64 / elapsed.as_secs_f64().max(1e-9)
    );
    say!("delivered {}", s.delivered);
    say!(
        "pending   {} in memory, {} spooled ({} found in the spool at start)",
        s.in_memory,
        s.spooled,
        s.recovered
    );
    if s.in_memory > 0 {
        say!("lost      {} at exit (in memory when the run ended)", s.in_memory);
    }
    say!("dead letters {}", s.dead_lettered);
    let d = s.dropped;
    say!(
        "dropped   {} (queue full {}, retry buffer full {}, rejected {}, oversize {}, spool full {}, corrupt {})",
        d.total(),
        d.queue_full,
        d.retry_full,
        d.rejected,
        d.oversize,
        d.spool_full,
        d.corrupt
    );
    say!("requests  {} ({} failed)", s.requests, s.failed_requests);
    Ok(())
}
