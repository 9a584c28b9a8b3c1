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
    /// The damaged files set aside in the spool's `set-aside/` directory.
    #[arg(long, group = "what")]
    set_aside: bool,
    /// Really delete (without it, nothing is deleted and the exit code is 2).
    #[arg(long)]
    yes: bool,
}

pub fn run(args: Args, dir: &Path) -> Outcome {
    if args.set_aside {
        return purge_set_aside(dir, args.yes);
    }
    // `None` is the quarantine.
    let trees: &[(Option<Tree>, &str)] = if args.all {
        &[
            (Some(Tree::Queue), "queue"),
            (Some(Tree::Dead), "dead letters"),
            (None, "quarantine"),
        ]
    } else if args.dead_letters {
        &[(Some(Tree::Dead), "dead letters")]
    } else {
        &[(None, "quarantine")]
    };
    let mut spool = open(dir)?;
    if !args.yes {
        let st = spool.stats();
        crate::tell!(
            "spillway: purge deletes for good (the spool holds {} queued spans, {} dead-letter spans, {} quarantined records); add --yes to confirm",
            st.spans,
            st.dead_letter_spans,
            st.quarantined_records
        );
        return Ok(ExitCode::from(2));
    }
    for &(tree, name) in trees {
        let c = match tree {
            Some(tree) => spool.clear(tree)?,
            None => spool.clear_quarantine()?,
        };
        spool.commit()?;
        if tree.is_none() {
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

/// Deletes the set-aside directories (damaged files kept for inspection).
fn purge_set_aside(dir: &Path, yes: bool) -> Outcome {
    // As a writer would: a `set-aside` that is a link (to directories
    // elsewhere) or a spool someone else could have planted is refused
    // before anything is listed or deleted.
    spillway::unstable::spool::dir::check_trust(dir, true)?;
    let asides = spillway::unstable::spool::dir::set_asides(dir);
    let size = |p: &Path| -> u64 {
        walk(p)
            .iter()
            .filter_map(|f| std::fs::metadata(f).ok())
            .map(|m| m.len())
            .sum()
    };
    let total: u64 = asides.iter().map(|a| size(a)).sum();
    if !yes {
        crate::tell!(
            "spillway: purge deletes for good ({} set-aside directories, {}); add --yes to confirm",
            asides.len(),
            human_bytes(total)
        );
        return Ok(ExitCode::from(2));
    }
    // Not while a tracer holds the spool.
    let _lock = spillway::unstable::spool::dir::Lock::exclusive(dir, std::time::Duration::ZERO)?;
    for a in &asides {
        std::fs::remove_dir_all(a).map_err(|e| format!("cannot delete {}: {e}", a.display()))?;
    }
    say!("purged set-aside: {} directories, {}", asides.len(), human_bytes(total));
    Ok(ExitCode::SUCCESS)
}

fn walk(p: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(p) {
        for e in entries.flatten() {
            let path = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(walk(&path));
            } else {
                out.push(path);
            }
        }
    }
    out
}
