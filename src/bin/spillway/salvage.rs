//! `spillway salvage`: recovers every readable record of a damaged spool
//! (or one the tracer moved aside) into a fresh spool, reading the raw
//! files without trusting sled. See `spillway::spool::salvage`.

use crate::{Outcome, human_bytes, say};
use spillway::spool::{Spool, move_aside, salvage};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// The damaged directory to read (only read, never changed). Without
    /// it, the spool itself is moved aside to `<spool>.damaged-<secs>` and
    /// salvaged from there into a fresh spool.
    from: Option<PathBuf>,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args, dir: &Path) -> Outcome {
    // Salvaging a directory into itself is salvaging it in place.
    let same = |from: &PathBuf| {
        from.canonicalize()
            .ok()
            .is_some_and(|f| dir.canonicalize().ok() == Some(f))
    };
    let from = match args.from.filter(|f| !same(f)) {
        Some(from) => from,
        None => {
            if !dir.exists() {
                return Err(format!("no spool at {}", dir.display()).into());
            }
            // Refuse before moving anything if a tracer holds it; hold its
            // lock while moving it.
            let lock = salvage::lock(dir)?;
            let aside = move_aside(dir).map_err(|e| format!("cannot move {} aside: {e}", dir.display()))?;
            drop(lock);
            eprintln!("moved {} to {}", dir.display(), aside.display());
            aside
        }
    };
    if !from.is_dir() {
        return Err(format!("{} is not a directory", from.display()).into());
    }
    let mut into = Spool::open_with(dir, u64::MAX, std::time::Duration::ZERO)?;
    let report = salvage::salvage(&from, &mut into)?;
    if args.json {
        say!("{}", serde_json::to_string(&report)?);
    } else {
        say!(
            "scanned {} files ({}) in {}",
            report.files,
            human_bytes(report.bytes_scanned),
            from.display()
        );
        say!(
            "recovered {} spans in {} batches into the queue of {}",
            report.spans,
            report.records,
            dir.display()
        );
        if report.dead_letter_records > 0 {
            say!(
                "recovered {} dead-letter spans in {} batches",
                report.dead_letter_spans,
                report.dead_letter_records
            );
        }
        say!(
            "skipped {} batches already delivered or dropped (below watermark {}), {} stale copies",
            report.settled_records,
            report.watermark.map_or("-".into(), |w| w.to_string()),
            report.copies
        );
        for u in &report.unreadable {
            say!("unreadable {} at byte {}: {}", u.file.display(), u.offset, u.reason);
        }
        for (file, why) in &report.unreadable_files {
            say!("unreadable file {}: {why}", file.display());
        }
    }
    Ok(if report.unreadable_files.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
