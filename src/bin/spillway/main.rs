//! The `spillway` command line: the operator's tool over a spool directory.
//!
//! Subcommands are thin: each parses its arguments, drives the library, and
//! renders the outcome once, here, to stdout/stderr and an exit code
//! (0 success, 1 the operation failed or found problems, 2 usage error).
//! Every command but `generate` opens an existing spool without waiting for
//! its lock: while a tracer or another command holds it, they fail at once,
//! naming the directory, and change nothing.

use clap::{Parser, Subcommand};
use spillway::unstable::spool::check::Check;
use spillway::unstable::spool::dir::{ReadLock, check_trust};
use spillway::unstable::spool::record::{self, Record};
use spillway::unstable::spool::scan::{Scan, SoundRecord};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

mod collector;
mod docs;
mod export;
mod generate;
mod inspect;
mod purge;
mod replay;
mod salvage;
mod verify;

/// Durable Zipkin exporter for bext: tools for the spool and a workload generator.
#[derive(Parser)]
#[command(
    version,
    about,
    after_help = "Exit codes: 0 success, 1 the operation failed or found problems, 2 usage error.\n\
                  A spool held by a running tracer or another command is refused at once (exit 1)."
)]
struct Cli {
    /// The spool directory.
    #[arg(long, global = true, env = "SPILLWAY_SPOOL", default_value = "./spillway-spool")]
    spool: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show what the spool holds: records, spans, bytes, ages, services.
    Inspect(inspect::Args),
    /// Check every record (CRC and decode); exit 1 if any is unsound.
    Verify(verify::Args),
    /// Send the spool to a collector, oldest first, removing each batch once delivered.
    Replay(replay::Args),
    /// Write the spooled spans as Zipkin v2 JSON without removing them.
    Export(export::Args),
    /// Delete the queue, the dead letters or the quarantine.
    Purge(purge::Args),
    /// Recover every readable record of a damaged spool into a fresh one.
    Salvage(salvage::Args),
    /// Drive the real tracer as bext would and export to a collector.
    Generate(generate::Args),
    /// Print shell completions (bash, zsh, fish, elvish, powershell).
    Completions(docs::CompletionsArgs),
    /// Print the man page, or write one per command into a directory.
    Man(docs::ManArgs),
}

/// `println!` that returns an error instead of panicking when stdout is
/// closed (`spillway export | head`), with control characters escaped
/// ([`clean`]): one line each, so a newline in the format is escaped too.
macro_rules! say {
    ($($t:tt)*) => {
        std::io::Write::write_fmt(&mut std::io::stdout(), format_args!("{}\n", crate::clean(&format!($($t)*))))?
    };
}
pub(crate) use say;

/// `eprintln!` with control characters escaped ([`clean`]).
macro_rules! tell {
    ($($t:tt)*) => {
        eprintln!("{}", crate::clean(&format!($($t)*)))
    };
}
pub(crate) use tell;

/// `text` with every control character (a newline, an escape sequence, a
/// C1 code) written as a Rust escape, so what came from a file, a span or
/// a file name cannot move the cursor, forge a line or reach the
/// terminal's clipboard. One line in, one line out.
pub(crate) fn clean(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return text.into();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out.into()
}

/// What a subcommand returns: an exit code, or an error rendered by `main`.
type Outcome = Result<ExitCode, Box<dyn std::error::Error>>;

/// SIGINT and SIGTERM, for the commands that stop cleanly on them
/// (`generate`, `replay`): they finish the step in hand, spill or settle
/// what they hold, print their accounting and exit 128 + the signal.
pub(crate) struct Signals(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl Signals {
    /// Catches SIGINT and SIGTERM from now on.
    pub(crate) fn catch() -> std::io::Result<Signals> {
        let caught = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            signal_hook::flag::register_usize(sig, std::sync::Arc::clone(&caught), sig as usize)?;
        }
        Ok(Signals(caught))
    }

    /// The signal caught, if one was.
    pub(crate) fn caught(&self) -> Option<i32> {
        match self.0.load(std::sync::atomic::Ordering::Relaxed) {
            0 => None,
            sig => Some(sig as i32),
        }
    }

    /// The exit code for a run stopped by the signal caught (130 for
    /// SIGINT, 143 for SIGTERM), if one was.
    pub(crate) fn exit_code(&self) -> Option<ExitCode> {
        self.caught().map(|sig| ExitCode::from((128 + sig) as u8))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let spool = cli.spool.as_path();
    let uses_spool = !matches!(cli.command, Command::Completions(_) | Command::Man(_));
    if uses_spool && std::fs::metadata(spool).is_ok_and(|m| !m.is_dir()) {
        // A usage error, as clap's own: the option names something else.
        tell!("spillway: --spool {}: not a directory", spool.display());
        return ExitCode::from(2);
    }
    let result = match cli.command {
        Command::Inspect(args) => inspect::run(args, spool),
        Command::Verify(args) => verify::run(args, spool),
        Command::Replay(args) => replay::run(args, spool),
        Command::Export(args) => export::run(args, spool),
        Command::Purge(args) => purge::run(args, spool),
        Command::Salvage(args) => salvage::run(args, spool),
        Command::Generate(args) => generate::run(args, spool),
        Command::Completions(args) => docs::completions(args),
        Command::Man(args) => docs::man(args),
    };
    match result {
        Ok(code) => code,
        // The reader went away (`| head`): not a failure of ours.
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            crate::tell!("spillway: {e}");
            // A usage or configuration error: as clap's own.
            if e.downcast_ref::<collector::Usage>().is_some() {
                return ExitCode::from(2);
            }
            ExitCode::FAILURE
        }
    }
}

/// Opens the existing spool in `dir` for a tool that writes (replay, purge,
/// salvage): no waiting, no creating, no cap (tools never drop spans to
/// make room). A damaged spool is set aside and salvaged by the open, and
/// says so on stderr.
fn open(dir: &Path) -> Result<spillway::spool::Spool, spillway::spool::SpoolError> {
    let spool = spillway::spool::Spool::open_existing(dir, u64::MAX)?;
    if let Some(d) = spool.damage() {
        crate::tell!("spillway: {d}");
    }
    Ok(spool)
}

/// Reads and decodes the record `found` of a read-only tool's scan (a
/// mended one's sound blocks); why not, if it cannot.
fn decode_record(scan: &Scan, found: &SoundRecord) -> Result<Record, String> {
    let bytes = scan.read_record(found).map_err(|e| e.to_string())?;
    record::decode(&bytes).map_err(|e| e.to_string())
}

/// Reads the spool in `dir` for a read-only tool (inspect, verify, export,
/// a dry run): its raw files, under a shared lock, without sled; nothing is
/// created or written, so it works on a read-only mount.
fn read(dir: &Path) -> Result<(ReadLock, Check), Box<dyn std::error::Error>> {
    use spillway::spool::{Spool, SpoolError};
    if !Spool::exists(dir) {
        return Err(SpoolError::Missing { dir: dir.to_path_buf() }.into());
    }
    // No link where a spool's file belongs: a reader does not follow one.
    check_trust(dir, false)?;
    let lock = ReadLock::shared(dir, spillway::spool::LOCK_WAIT)?;
    let check = Check::run(dir).map_err(|e| format!("cannot read spool {}: {e}", dir.display()))?;
    Ok((lock, check))
}

/// Bytes for people: `1.2 MiB`.
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// A duration for people: `850 ms`, `42 s`, `4m 10s`, `2h 03m`, `3d 04h`.
fn human_duration(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "-".to_owned();
    }
    if secs < 1.0 {
        return format!("{} ms", (secs * 1000.0).round() as u64);
    }
    let s = secs.round() as u64;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{}m {:02}s", s / 60, s % 60),
        3600..86_400 => format!("{}h {:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// A unix-milliseconds time for people (RFC 3339, UTC), or `-` for none.
fn human_time(unix_ms: Option<u64>) -> String {
    unix_ms.map_or_else(
        || "-".to_owned(),
        |ms| httpdate::fmt_http_date(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms)),
    )
}
