//! `spillway export`: writes spooled spans as Zipkin v2 JSON, leaving the
//! spool as it was, so they can be loaded wherever a collector runs.

use crate::{Outcome, open};
use spillway::spool::Part;
use spillway::zipkin::Encoder;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// Where to write: a file, or - for standard output.
    #[arg(short, long, default_value = "-")]
    output: PathBuf,
    /// Export the dead letters instead of the queue.
    #[arg(long)]
    dead_letters: bool,
    /// One JSON array per batch, one per line (each a valid POST body),
    /// instead of one array of every span.
    #[arg(long)]
    ndjson: bool,
}

pub fn run(args: Args, dir: &Path) -> Outcome {
    let spool = open(dir)?;
    let part = if args.dead_letters { Part::Dead } else { Part::Queue };
    let to_stdout = args.output.as_os_str() == "-";
    let sink: Box<dyn Write> = if to_stdout {
        Box::new(std::io::stdout().lock())
    } else {
        let file =
            std::fs::File::create(&args.output).map_err(|e| format!("cannot create {}: {e}", args.output.display()))?;
        Box::new(file)
    };
    let mut out = std::io::BufWriter::new(sink);
    let mut encoder = Encoder::new(spillway::spool::record::UNKNOWN_SERVICE);
    let (mut spans, mut batches, mut skipped) = (0u64, 0u64, 0u64);
    let mut buf = Vec::new();
    if !args.ndjson {
        out.write_all(b"[")?;
    }
    for entry in spool.entries(part) {
        let entry = entry?;
        let batch = match &entry.spans {
            Ok(b) => b,
            Err(why) => {
                eprintln!("spillway: skipped record {}: {why}", entry.key);
                skipped += 1;
                continue;
            }
        };
        encoder.set_service(&entry.service);
        buf.clear();
        if args.ndjson {
            encoder.encode_batch(batch, &mut buf);
            buf.push(b'\n');
        } else {
            for span in batch {
                if spans > 0 || !buf.is_empty() {
                    buf.push(b',');
                }
                encoder.encode_span(span, &mut buf);
            }
        }
        out.write_all(&buf)?;
        spans += batch.len() as u64;
        batches += 1;
    }
    if !args.ndjson {
        out.write_all(b"]\n")?;
    }
    out.flush()?;
    if !to_stdout {
        eprintln!(
            "exported {spans} spans from {batches} batches to {}",
            args.output.display()
        );
    }
    if skipped > 0 {
        eprintln!("spillway: {skipped} unreadable records skipped (see `spillway verify`)");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
