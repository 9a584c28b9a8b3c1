//! `spillway verify`: checks every record of a spool (CRC, decode) and its
//! files (would sled's recovery lose anything?), reading the raw files
//! without sled and without changing a byte.

use crate::{Outcome, read, say};
use spillway::unstable::spool::record;
use spillway::unstable::spool::scan::{Scan, SoundRecord};
use spillway::unstable::spool::view::View;
use std::path::Path;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// Print one JSON object: records, spans, sound (bool), bad: [{tree,
    /// key, reason, file, offset}], damage: [{file, offset, what}].
    #[arg(long)]
    json: bool,
}

#[derive(serde::Serialize)]
struct Bad {
    tree: &'static str,
    key: Option<u64>,
    reason: String,
    file: String,
    offset: u64,
}

/// Reads and decodes `part`'s records: the spans they hold, and the ones
/// that do not decode.
fn decode_all(scan: &Scan, part: &[(&'static str, &SoundRecord)]) -> (u64, Vec<Bad>) {
    let (mut spans, mut bad) = (0u64, Vec::new());
    for &(tree, found) in part {
        match crate::decode_record(scan, found) {
            Ok(r) => spans += r.spans.len() as u64,
            Err(reason) => bad.push(Bad {
                tree,
                key: Some(found.meta.seq),
                reason,
                file: scan.files[found.at.file].display().to_string(),
                offset: found.at.offset,
            }),
        }
    }
    (spans, bad)
}

pub fn run(args: Args, dir: &Path) -> Outcome {
    let (_lock, check) = read(dir)?;
    let view = &check.view;
    let (spans, mut bad) = decode_sound(view);
    bad.extend(unreadable(view));
    bad.extend(quarantined(view));
    // A mended record is both read (its sound blocks) and named as damaged.
    let mended = view.queue.iter().chain(&view.dead).filter(|f| f.mended).count();
    let records = (view.queue.len() + view.dead.len() + view.unreadable.len() + view.quarantined.len() - mended) as u64;
    let sound = bad.is_empty() && !check.damaged();
    if args.json {
        let out = serde_json::json!({
            "records": records,
            "spans": spans,
            "sound": sound,
            "bad": bad,
            "damage": check.findings,
        });
        say!("{out}");
    } else {
        for b in &bad {
            let key = b.key.map_or_else(|| "-".to_owned(), |k| k.to_string());
            say!(
                "bad  {} key {key}: {} ({} at byte {})",
                b.tree,
                b.reason,
                b.file,
                b.offset
            );
        }
        for d in &check.findings {
            say!("damaged {d}");
        }
        if sound {
            say!("ok   {records} records, {spans} spans, all sound");
        } else {
            say!(
                "{} of {records} records unsound, {} problems with the files",
                bad.len(),
                check.findings.len()
            );
        }
    }
    Ok(if sound { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Decodes every sound record of the queue and the dead letters: the spans
/// they hold and the ones that do not decode. Decoding is what verify
/// spends its time on: the records are split over the cores, each part
/// read and decoded on its own thread, and the findings kept in record
/// order.
fn decode_sound(view: &View) -> (u64, Vec<Bad>) {
    let sound_records: Vec<(&'static str, &SoundRecord)> = view
        .queue
        .iter()
        .map(|f| ("queue", f))
        .chain(view.dead.iter().map(|f| ("dead", f)))
        .collect();
    let threads = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let per_thread = sound_records.len().div_ceil(threads).max(1);
    let parts: Vec<(u64, Vec<Bad>)> = std::thread::scope(|s| {
        let running: Vec<_> = sound_records
            .chunks(per_thread)
            .map(|part| s.spawn(move || decode_all(&view.scan, part)))
            .collect();
        running
            .into_iter()
            .map(|t| t.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    let mut spans = 0u64;
    let mut bad = Vec::new();
    for (n, found_bad) in parts {
        spans += n;
        bad.extend(found_bad);
    }
    (spans, bad)
}

/// The records whose bytes do not read back.
fn unreadable(view: &View) -> impl Iterator<Item = Bad> + '_ {
    view.unreadable.iter().map(|u| Bad {
        tree: match u.seq {
            Some((spillway::spool::Tree::Dead, _)) => "dead",
            _ => "queue",
        },
        key: u.seq.map(|(_, k)| k),
        reason: u.reason.clone(),
        file: u.file.display().to_string(),
        offset: u.offset,
    })
}

/// Quarantined records, unsound by definition, with why again.
fn quarantined(view: &View) -> impl Iterator<Item = Bad> + '_ {
    view.quarantined.iter().map(|q| {
        let reason = match view
            .scan
            .read(q.at)
            .ok()
            .as_deref()
            .and_then(spillway::unstable::spool::state::unquarantine)
        {
            Some((_, raw)) => match record::decode(raw) {
                Err(why) => why.to_string(),
                Ok(_) => "sound now, quarantined earlier".to_owned(),
            },
            None => "its quarantine frame does not read back".to_owned(),
        };
        Bad {
            tree: "quarantine",
            key: Some(q.frame.queue_key),
            reason,
            file: view.scan.files[q.at.file].display().to_string(),
            offset: q.at.offset,
        }
    })
}
