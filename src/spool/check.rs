//! The check before sled opens a spool: would opening it lose anything?
//!
//! sled's recovery treats a damaged log entry as the end of its log and
//! overwrites what follows, deletes blob files, and refuses to open over a
//! damaged snapshot or `conf` ([`super::sled_log`]); and a page it cannot
//! read fails every later read. So before any opener (the tracer, replay,
//! purge, salvage) hands a directory to sled, it runs this check, reading
//! only:
//!
//! 1. [`Recovery::plan`] says what sled's recovery would overwrite, skip or
//!    delete, and which pages it could not read;
//! 2. the raw [`View`] says what the files hold, and where;
//! 3. the ledger says which commit was the last made durable, and that
//!    commit's state frame, found in the log, marks how far the log must
//!    be intact (`synced_end`): everything before it was fsynced.
//!
//! The spool is **damaged** when sled would refuse to open it; when a page
//! it needs does not read back; when it would overwrite or skip written
//! bytes (not zeros) or delete a blob file before `synced_end`; when the
//! confirmed commit's frame is gone; or when records that commit counted
//! are not in the files. Bytes after `synced_end` were never promised: a
//! power cut's torn tail is not damage. A damaged spool is set aside, its
//! bytes kept, and salvaged; a sound one is opened as it is.
//!
//! The verdict errs on the side of damage: a false alarm costs a set-aside
//! and a salvage that loses nothing; a missed one would cost spans.

use super::sled_log::{Lsn, Recovery, Region};
use super::view::View;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Something found wrong, and what it would cost.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Finding {
    /// The file.
    pub file: PathBuf,
    /// Where in it.
    pub offset: u64,
    /// What is wrong, and what opening it with sled would lose.
    pub what: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at byte {}: {}", self.file.display(), self.offset, self.what)
    }
}

/// What the check found.
#[derive(Debug)]
pub struct Check {
    /// What sled's recovery would do.
    pub plan: Recovery,
    /// What the files hold.
    pub view: View,
    /// Everything before this lsn of the log was made durable (`None`:
    /// nothing was; `Some(Lsn::MAX)`: unknown, so all of it counts).
    pub synced_end: Option<Lsn>,
    /// What is wrong; empty if the spool is sound.
    pub findings: Vec<Finding>,
}

impl Check {
    /// Whether the spool must be set aside and salvaged before sled opens it.
    pub fn damaged(&self) -> bool {
        !self.findings.is_empty()
    }

    /// Checks the spool in `dir` (see the module docs), reading only.
    pub fn run(dir: &Path) -> io::Result<Check> {
        let plan = Recovery::plan(dir)?;
        let view = View::read(dir)?;
        let log = dir.join("db");
        let mut findings = Vec::new();
        let synced_end = synced_end(&plan, &view, &log, &mut findings);
        if view.ledger_unsound {
            findings.push(Finding {
                file: dir.join(super::ledger::FILE),
                offset: 0,
                what: "no slot of the ledger is sound (a CRC fails, or it claims more than any spool holds)".into(),
            });
        }
        if let Some(why) = &plan.refusal {
            findings.push(Finding {
                file: dir.to_path_buf(),
                offset: 0,
                what: format!("sled would refuse to open the spool: {why}"),
            });
        }
        for page in &plan.bad_pages {
            findings.push(finding(page, &view, &log));
        }
        let end = synced_end.unwrap_or(Lsn::MIN);
        for region in plan.zeroed.iter().chain(&plan.skipped) {
            if region.lsn.is_some_and(|l| l < end) && !all_zero(region)? {
                findings.push(finding(region, &view, &log));
            }
        }
        for (path, lsn) in &plan.deleted_blobs {
            if *lsn < end {
                findings.push(Finding {
                    file: path.clone(),
                    offset: 0,
                    what: "sled would delete this blob file, written before the last durable commit".into(),
                });
            }
        }
        if view.missing.records > 0 || view.missing.spans > 0 {
            findings.push(Finding {
                file: log.clone(),
                offset: 0,
                what: format!(
                    "{} records ({} spans) the last durable commit counted are not in the files (their bytes are damaged)",
                    view.missing.records, view.missing.spans
                ),
            });
        }
        Ok(Check {
            plan,
            view,
            synced_end,
            findings,
        })
    }
}

/// Where the last durable commit's state frame ends in the log.
fn synced_end(plan: &Recovery, view: &View, log: &Path, findings: &mut Vec<Finding>) -> Option<Lsn> {
    let Some(ledger) = view.ledger else {
        // No ledger: nothing was promised, unless the files hold records
        // (then it was lost or removed, and everything counts).
        let held = !view.queue.is_empty() || !view.dead.is_empty();
        return held.then_some(Lsn::MAX);
    };
    if ledger.round == 0 {
        // Nothing committed yet, or a ledger from before state frames.
        let legacy = view.state.is_none() && !view.queue.is_empty();
        return legacy.then_some(Lsn::MAX);
    }
    let Some((_, copies)) = view.scan.states.get(&ledger.round) else {
        findings.push(Finding {
            file: log.to_path_buf(),
            offset: 0,
            what: format!(
                "the state of the last durable commit ({}) is gone from the files",
                ledger.round
            ),
        });
        return Some(Lsn::MAX);
    };
    let in_log = copies
        .iter()
        .filter(|at| view.scan.files[at.file] == log)
        .filter_map(|at| plan.lsn_at(at.offset).map(|l| l + Lsn::from(at.len)))
        .min();
    Some(in_log.unwrap_or(Lsn::MAX))
}

/// A finding for `region`, saying which held records lie there.
fn finding(region: &Region, view: &View, log: &Path) -> Finding {
    let end = region.offset + region.len.max(1);
    let inside: Vec<_> = view
        .queue
        .iter()
        .chain(&view.dead)
        .filter(|f| {
            view.scan.files[f.at.file] == region.file
                && f.at.offset + u64::from(f.at.len) > region.offset
                && f.at.offset < end
        })
        .collect();
    let spans: u64 = inside.iter().map(|f| u64::from(f.spans)).sum();
    let what = if region.file == log && region.len > 0 {
        format!(
            "sled's recovery would drop {} ({} bytes, holding {} records of {} spans)",
            region.why,
            region.len,
            inside.len(),
            spans
        )
    } else {
        region.why.to_owned()
    };
    Finding {
        file: region.file.clone(),
        offset: region.offset,
        what,
    }
}

/// Whether every byte of `region` is zero (nothing written there).
fn all_zero(region: &Region) -> io::Result<bool> {
    let f = match File::open(&region.file) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(true),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    let mut at = region.offset;
    let end = (region.offset + region.len).min(len);
    let mut buf = vec![0u8; 1 << 20];
    while at < end {
        let n = ((end - at) as usize).min(buf.len());
        f.read_exact_at(&mut buf[..n], at)?;
        if buf[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
        at += n as u64;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::{Spool, Tree};
    use std::collections::BTreeSet;

    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            let target = to.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                copy_dir(&e.path(), &target);
            } else {
                std::fs::copy(e.path(), target).unwrap();
            }
        }
    }

    /// (seq, spans) of the queue as sled sees it once opened.
    fn sled_view(dir: &Path) -> Option<BTreeSet<u64>> {
        let spool = Spool::open(dir, u64::MAX).ok()?;
        let keys: Result<BTreeSet<u64>, _> = spool.records(Tree::Queue).map(|e| e.map(|e| e.key)).collect();
        keys.ok()
    }

    fn young_spool(dir: &Path, records: usize) {
        let mut s = Spool::open(dir, u64::MAX).unwrap();
        for i in 0..records {
            s.push("svc", &crate::spool::tests::spans(40, &format!("r{i}")), 1)
                .unwrap();
        }
    }

    #[test]
    fn a_healthy_spool_is_sound_young_and_reopened() {
        let dir = tempfile::tempdir().unwrap();
        young_spool(dir.path(), 60);
        let c = Check::run(dir.path()).unwrap();
        assert!(!c.damaged(), "{:?}", c.findings);
        assert_eq!(c.view.queue.len(), 60);
        drop(Spool::open(dir.path(), u64::MAX).unwrap());
        young_spool(dir.path(), 10);
        let c = Check::run(dir.path()).unwrap();
        assert!(!c.damaged(), "{:?}", c.findings);
        assert_eq!(c.view.queue.len(), 70);
    }

    /// Every file of a spool but the ledger, with its length.
    fn files(dir: &Path) -> Vec<(PathBuf, u64)> {
        let mut out = Vec::new();
        for sub in [dir.to_path_buf(), dir.join("blobs")] {
            for e in std::fs::read_dir(&sub).unwrap() {
                let e = e.unwrap();
                if e.file_type().unwrap().is_file() && e.file_name() != crate::spool::ledger::FILE {
                    out.push((e.path(), e.metadata().unwrap().len()));
                }
            }
        }
        out.sort();
        out
    }

    /// The plan against what sled really does: for bytes flipped all over
    /// every file of a young and of a reopened spool, whenever the check
    /// calls the spool sound, sled opens it and holds every record the raw
    /// files held.
    #[test]
    fn whenever_the_check_says_sound_sled_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        young_spool(dir.path(), 120);
        flips_against_sled(dir.path(), 50);
        drop(Spool::open(dir.path(), u64::MAX).unwrap());
        young_spool(dir.path(), 60);
        flips_against_sled(dir.path(), 50);
    }

    fn flips_against_sled(dir: &Path, rounds: u64) {
        let files = files(dir);
        let (mut sound, mut damaged) = (0, 0);
        for round in 0..rounds {
            let copy = tempfile::tempdir().unwrap();
            copy_dir(dir, copy.path());
            let (file, len) = &files[(round as usize) % files.len()];
            let target = copy.path().join(file.strip_prefix(dir).unwrap());
            let mut bytes = std::fs::read(&target).unwrap();
            if *len == 0 {
                continue;
            }
            let at = (round * 7919 * 131 + 17) % len;
            bytes[at as usize] ^= 0x20;
            std::fs::write(&target, &bytes).unwrap();
            let c = Check::run(copy.path()).unwrap();
            let held: BTreeSet<u64> = c.view.queue.iter().map(|f| f.meta.seq).collect();
            if c.damaged() {
                damaged += 1;
                continue;
            }
            sound += 1;
            let opened = std::panic::catch_unwind(|| sled_view(copy.path()));
            let after = match opened {
                Ok(Some(after)) => after,
                _ => panic!(
                    "flip in {} at {at}: called sound, but sled fails or panics",
                    file.display()
                ),
            };
            let lost: Vec<&u64> = held.difference(&after).collect();
            assert!(
                lost.is_empty(),
                "flip in {} at {at}: called sound, sled lost {lost:?}",
                file.display()
            );
        }
        eprintln!("{sound} flips sound, {damaged} damaged");
        assert!(damaged > 0);
    }
}
