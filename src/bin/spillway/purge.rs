//! `spillway purge`: deletes a part of the spool, after an explicit `--yes`.

use crate::{Outcome, human_bytes, open, say};
use spillway::spool::Tree;
use std::path::Path;
use std::process::ExitCode;

#[derive(clap::Args)]
#[command(group = clap::ArgGroup::new("what").required(true))]
pub struct Args {
    /// Everything: the queue, the dead letters and the quarantine.
    #[arg(long, group = "what")]
    all: bool,
    /// The dead letters only.
    #[arg(long, group = "what")]
    dead_letters: bool,
    /// The quarantine only.
    #[arg(long, group = "what")]
    quarantine: bool,
    /// Really delete (without it, nothing is deleted and the exit code is 2).
    #[arg(long)]
    yes: bool,
}

pub fn run(args: Args, dir: &Path) -> Outcome {
    let trees: &[(Tree, &str)] = if args.all {
        &[
            (Tree::Queue, "queue"),
            (Tree::Dead, "dead letters"),
            (Tree::Quarantine, "quarantine"),
        ]
    } else if args.dead_letters {
        &[(Tree::Dead, "dead letters")]
    } else {
        &[(Tree::Quarantine, "quarantine")]
    };
    let mut spool = open(dir)?;
    if !args.yes {
        let st = spool.stats();
        eprintln!(
            "spillway: purge deletes for good (the spool holds {} queued spans, {} dead-letter spans, {} quarantined records); add --yes to confirm",
            st.spans, st.dead_letter_spans, st.quarantined_records
        );
        return Ok(ExitCode::from(2));
    }
    for &(tree, name) in trees {
        let c = spool.clear(tree)?;
        spool.commit()?;
        if tree == Tree::Quarantine {
            say!("purged {}: {} records, {}", name, c.records, human_bytes(c.bytes));
        } else {
            say!(
                "purged {}: {} spans in {} records, {}",
                name,
                c.spans,
                c.records,
                human_bytes(c.bytes)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
