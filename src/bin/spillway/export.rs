//! `spillway export`: writes spooled spans as Zipkin v2 JSON, read from the
//! spool's raw files without sled, leaving every byte of the spool as it
//! was, so they can be loaded wherever a collector runs.

use crate::{Outcome, read};
use spillway::unstable::spool::scan::{Scan, SoundRecord};
use spillway::unstable::zipkin::Encoder;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// Where to write: a file (created 0600, written through a temporary
    /// file beside it and renamed into place; an existing one is refused
    /// without --force, and a symbolic link there is replaced, never
    /// followed), or - for standard output.
    #[arg(short, long, default_value = "-")]
    output: PathBuf,
    /// Replace an existing output file.
    #[arg(long)]
    force: bool,
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
    let (sink, temp) = if to_stdout {
        (Box::new(std::io::stdout().lock()) as Box<dyn Write>, None)
    } else {
        if std::fs::symlink_metadata(&args.output).is_ok() && !args.force {
            return Err(crate::collector::Usage(format!(
                "{} exists; add --force to replace it",
                args.output.display()
            ))
            .into());
        }
        let (path, file) = temp_beside(&args.output)?;
        (Box::new(file) as Box<dyn Write>, Some(Temp(path)))
    };
    let mut out = std::io::BufWriter::new(sink);
    let written = write_spans(&view.scan, found, args.ndjson, &mut out)?;
    out.flush()?;
    drop(out);
    if let Some(temp) = temp {
        // Durable, then in place: a reader sees the old file or the whole
        // new one, and a link at the target is replaced, not followed.
        std::fs::File::open(&temp.0).and_then(|f| f.sync_all())?;
        std::fs::rename(&temp.0, &args.output)
            .map_err(|e| format!("cannot move the export into place at {}: {e}", args.output.display()))?;
        std::mem::forget(temp);
    }
    if !to_stdout {
        crate::tell!(
            "exported {} spans from {} records to {}",
            written.spans,
            written.records,
            args.output.display()
        );
    }
    let skipped = written.skipped + view.unreadable.len() as u64;
    if skipped > 0 || check.damaged() {
        crate::tell!(
            "spillway: {skipped} unreadable records skipped; the spool's files are damaged (see `spillway verify`)"
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// What [`write_spans`] wrote, and the records it could not decode.
struct Written {
    spans: u64,
    records: u64,
    skipped: u64,
}

/// Writes the spans of the records `found` to `out`, as one JSON array, or
/// one array per record and line with `ndjson`; a record that does not
/// decode is skipped and said on stderr.
fn write_spans(scan: &Scan, found: &[SoundRecord], ndjson: bool, out: &mut impl Write) -> std::io::Result<Written> {
    let mut encoder = Encoder::new(spillway::unstable::spool::record::UNKNOWN_SERVICE);
    let mut written = Written {
        spans: 0,
        records: 0,
        skipped: 0,
    };
    let mut buf = Vec::new();
    if !ndjson {
        out.write_all(b"[")?;
    }
    for f in found {
        let rec = match crate::decode_record(scan, f) {
            Ok(r) => r,
            Err(why) => {
                crate::tell!("spillway: skipped record {}: {why}", f.meta.seq);
                written.skipped += 1;
                continue;
            }
        };
        let batch = &rec.spans;
        encoder.set_service(&rec.service);
        buf.clear();
        if ndjson {
            encoder.encode_batch(batch, &mut buf);
            buf.push(b'\n');
        } else {
            for span in batch {
                if written.spans > 0 || !buf.is_empty() {
                    buf.push(b',');
                }
                encoder.encode_span(span, &mut buf);
            }
        }
        out.write_all(&buf)?;
        written.spans += batch.len() as u64;
        written.records += 1;
    }
    if !ndjson {
        out.write_all(b"]\n")?;
    }
    Ok(written)
}

/// A temporary file, removed unless it was moved into place.
struct Temp(PathBuf);

impl Drop for Temp {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A new private (0600) file beside `target`, opened without following
/// links and refusing to reuse an existing name.
fn temp_beside(target: &std::path::Path) -> Result<(PathBuf, std::fs::File), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = target
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    for n in 0..100u32 {
        let path = dir.join(format!(".{name}.spillway-{}-{n}", std::process::id()));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc_nofollow())
            .open(&path)
        {
            Ok(f) => return Ok((path, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(format!("cannot create a file beside {}: {e}", target.display())),
        }
    }
    Err(format!("cannot create a file beside {}", target.display()))
}

fn libc_nofollow() -> i32 {
    rustix::fs::OFlags::NOFOLLOW.bits() as i32
}
