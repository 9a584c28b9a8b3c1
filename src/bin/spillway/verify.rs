//! `spillway verify`: checks every record of a spool (CRC, decode) without
//! changing it.

use crate::{Outcome, open, say};
use spillway::spool::{Part, record};
use std::path::Path;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// Print one JSON object: records, spans, sound (bool), bad: [{tree, key, reason}].
    #[arg(long)]
    json: bool,
}

#[derive(serde::Serialize)]
struct Bad {
    tree: &'static str,
    key: u64,
    reason: String,
}

pub fn run(args: Args, dir: &Path) -> Outcome {
    let spool = open(dir)?;
    let (mut records, mut spans) = (0u64, 0u64);
    let mut bad = Vec::new();
    for (part, tree) in [(Part::Queue, "queue"), (Part::Dead, "dead")] {
        for entry in spool.entries(part) {
            let entry = entry?;
            records += 1;
            match &entry.spans {
                Ok(s) => spans += s.len() as u64,
                Err(why) => bad.push(Bad {
                    tree,
                    key: entry.key,
                    reason: why.to_string(),
                }),
            }
        }
    }
    // Quarantined records are unsound by definition; say why again.
    for item in spool.quarantined() {
        let (key, raw) = item?;
        records += 1;
        let reason = match record::decode(&raw) {
            Err(why) => why.to_string(),
            Ok(_) => "sound now, quarantined earlier".to_owned(),
        };
        bad.push(Bad {
            tree: "quarantine",
            key,
            reason,
        });
    }
    if args.json {
        let out = serde_json::json!({
            "records": records,
            "spans": spans,
            "sound": bad.is_empty(),
            "bad": bad,
        });
        say!("{out}");
    } else {
        for b in &bad {
            say!("bad  {} key {}: {}", b.tree, b.key, b.reason);
        }
        if bad.is_empty() {
            say!("ok   {records} records, {spans} spans, all sound");
        } else {
            say!("{} of {records} records unsound", bad.len());
        }
    }
    Ok(if bad.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
