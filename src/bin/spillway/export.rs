//! `spillway export`: writes spooled spans as Zipkin v2 JSON, read from the
//! spool's raw files without sled, leaving every byte of the spool as it
//! was, so they can be loaded wherever a collector runs.

use crate::{Outcome, read};
use spillway::spool::record;
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
    let (_lock, check) = read(dir)?;
    let view = &check.view;
    let found = if args.dead_letters { &view.dead } else { &view.queue };
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
    for f in found {
        let decoded = view
            .scan
            .read(f.at)
            .map_err(|e| e.to_string())
            .and_then(|b| record::decode(&b).map_err(|e| e.to_string()));
        let rec = match decoded {
            Ok(r) => r,
            Err(why) => {
                eprintln!("spillway: skipped record {}: {why}", f.meta.seq);
                skipped += 1;
                continue;
            }
        };
        let batch = &rec.spans;
        encoder.set_service(&rec.service);
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
    skipped += view.unreadable.len() as u64;
    if skipped > 0 || check.damaged() {
        eprintln!(
            "spillway: {skipped} unreadable records skipped; the spool's files are damaged (see `spillway verify`)"
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
