//! Salvage: every sound record of a spool's raw files, without trusting
//! sled, into a spool that works.
//!
//! The source is only read (`super::view`: a streaming scan, so memory
//! stays bounded whatever the files' sizes), under a shared lock, so no
//! tracer opens it meanwhile. What it holds goes into the target oldest
//! first, bytes unchanged, each under its own sequence number shifted by
//! one offset (zero into a fresh spool, as when the spool's own damaged
//! files are set aside; past the target's sequences otherwise): queue
//! records to the queue, dead letters to the dead letters, quarantined
//! records to the quarantine.
//!
//! **Resumable**: the offset is committed in the target, under the
//! source's path, before the first record; a salvage killed at any point
//! and run again finds it, so every record lands under the same key again
//! (written twice at worst, never held twice), and the target ends with
//! every recoverable record exactly once. A finished salvage is marked
//! done: running it again is refused, so records delivered since are not
//! brought back.
//!
//! What it cannot know: version 1 records carry no sequence, so all their
//! distinct copies are recovered (possible duplicates, never a loss).

use super::record::{self, Tree};
use super::scan::Unreadable;
use super::view::{Missing, View};
use super::{Spool, SpoolError};
use std::path::{Path, PathBuf};

/// Records written between two commits of a salvage, at most.
const COMMIT_EVERY_BYTES: u64 = 8 << 20;

/// Why salvage could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SalvageError {
    /// The source cannot be read.
    #[error("cannot read {}: {source}", dir.display())]
    Read {
        /// The directory.
        dir: PathBuf,
        /// What the file system said.
        source: std::io::Error,
    },
    /// This source was salvaged into this spool before.
    #[error(
        "{} was already salvaged into {} (its records since sent would come back); nothing done",
        from.display(),
        into.display()
    )]
    AlreadyDone {
        /// The source.
        from: PathBuf,
        /// The target.
        into: PathBuf,
    },
    /// Writing to the target spool failed.
    #[error(transparent)]
    Spool(#[from] SpoolError),
}

/// What [`salvage`] found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct Report {
    /// Files scanned.
    pub files: usize,
    /// Bytes scanned.
    pub bytes_scanned: u64,
    /// Queue records recovered into the target's queue.
    pub records: u64,
    /// Their spans.
    pub spans: u64,
    /// Dead-letter records recovered into the target's dead letters.
    pub dead_letter_records: u64,
    /// Their spans.
    pub dead_letter_spans: u64,
    /// Quarantined records kept in the target's quarantine.
    pub quarantined_records: u64,
    /// The queue's watermark: records below it were already settled.
    pub watermark: Option<u64>,
    /// Distinct records skipped as below their watermark.
    pub settled_records: u64,
    /// Extra copies of recovered records (sled's stale page versions).
    pub copies: u64,
    /// What the source's last durable commit counted that its files no
    /// longer hold.
    pub missing: Missing,
    /// Damaged records: file, offset, why.
    pub unreadable: Vec<Unreadable>,
    /// Files that could not be read: path and why.
    pub unreadable_files: Vec<(PathBuf, String)>,
    /// Whether an interrupted salvage of the same source was resumed.
    pub resumed: bool,
}

/// The target's record of a salvage from one source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Marker {
    /// Added to every sequence of the source.
    pub offset: u64,
    /// Whether it ran to the end.
    pub done: bool,
}

impl Marker {
    pub(crate) fn encode(&self) -> [u8; 9] {
        let mut out = [0u8; 9];
        out[..8].copy_from_slice(&self.offset.to_le_bytes());
        out[8] = u8::from(self.done);
        out
    }

    pub(crate) fn decode(b: &[u8]) -> Option<Marker> {
        Some(Marker {
            offset: u64::from_le_bytes(b.get(..8)?.try_into().ok()?),
            done: *b.get(8)? == 1,
        })
    }
}

/// The key of a salvage's marker in the target.
pub(crate) fn marker_key(from: &Path) -> Vec<u8> {
    let canonical = from.canonicalize().unwrap_or_else(|_| from.to_path_buf());
    let mut key = b"salvage:".to_vec();
    key.extend_from_slice(canonical.as_os_str().as_encoded_bytes());
    key
}

/// Recovers every sound record of the spool files in `from` into `into`
/// (see the module docs). `from` is only read.
pub fn salvage(from: &Path, into: &mut Spool) -> Result<Report, SalvageError> {
    super::dir::check_trust(from, false)?;
    let _lock = super::dir::ReadLock::shared(from, super::LOCK_WAIT)?;
    let view = View::read(from).map_err(|source| SalvageError::Read {
        dir: from.to_path_buf(),
        source,
    })?;
    let key = marker_key(from);
    let (marker, resumed) = begin(from, into, &view, &key)?;
    let mut report = Report {
        files: view.scan.files.len(),
        bytes_scanned: view.scan.bytes,
        watermark: view.state.map(|s| s.queue_below).or(view.scan.watermark),
        settled_records: view.settled,
        copies: view.copies,
        missing: view.missing,
        unreadable: view.unreadable.clone(),
        unreadable_files: view.scan.unreadable_files.clone(),
        resumed,
        ..Report::default()
    };
    restore_sound(&view, into, marker, &mut report)?;
    restore_quarantined(&view, into, marker, &mut report)?;
    if let Some(s) = view.state {
        into.reserve_seq(s.next_seq + marker.offset);
    }
    into.set_marker(&key, Marker { done: true, ..marker })?;
    into.commit()?;
    Ok(report)
}

/// The marker of a salvage from `from` into `into`, and whether it resumes
/// one cut short; a new one shifts `from`'s keys past `into`'s own.
fn begin(from: &Path, into: &mut Spool, view: &View, key: &[u8]) -> Result<(Marker, bool), SalvageError> {
    Ok(match into.marker(key)? {
        Some(m) if m.done => {
            return Err(SalvageError::AlreadyDone {
                from: from.to_path_buf(),
                into: into.dir().to_path_buf(),
            });
        }
        Some(m) => (m, true),
        None => {
            let lowest = view
                .queue
                .iter()
                .chain(&view.dead)
                .map(|f| f.meta.seq)
                .chain(view.quarantined.iter().map(|q| q.frame.key))
                .min()
                .unwrap_or(0);
            let m = Marker {
                offset: into.next_seq().saturating_sub(lowest),
                done: false,
            };
            into.set_marker(key, m)?;
            into.commit()?;
            (m, false)
        }
    })
}

/// Restores the queue's and the dead letters' sound records of `view`
/// into `into`, committing every [`COMMIT_EVERY_BYTES`]; a record that
/// does not read back or decode goes into the report instead.
fn restore_sound(view: &View, into: &mut Spool, marker: Marker, report: &mut Report) -> Result<(), SalvageError> {
    let mut written = 0u64;
    for (tree, found) in view
        .queue
        .iter()
        .map(|f| (Tree::Queue, f))
        .chain(view.dead.iter().map(|f| (Tree::Dead, f)))
    {
        let at = found.at;
        let bytes = match view.scan.read_record(found) {
            Ok(b) => b,
            Err(e) => {
                report
                    .unreadable_files
                    .push((view.scan.files[at.file].clone(), e.to_string()));
                continue;
            }
        };
        // Sound by its CRC; a payload that does not decode is damaged too.
        if let Err(e) = record::decode(&bytes) {
            report.unreadable.push(Unreadable {
                file: view.scan.files[at.file].clone(),
                offset: at.offset,
                reason: e.to_string(),
                seq: Some((tree, found.meta.seq)),
            });
            continue;
        }
        let key = (found.version >= 2).then(|| found.meta.seq + marker.offset);
        into.restore(tree, key, bytes)?;
        let spans = u64::from(found.spans);
        match tree {
            Tree::Queue => {
                report.records += 1;
                report.spans += spans;
            }
            Tree::Dead => {
                report.dead_letter_records += 1;
                report.dead_letter_spans += spans;
            }
        }
        written += u64::from(at.len);
        if written >= COMMIT_EVERY_BYTES {
            into.commit()?;
            written = 0;
        }
    }
    Ok(())
}

/// Restores `view`'s quarantined records into `into`'s quarantine.
fn restore_quarantined(view: &View, into: &mut Spool, marker: Marker, report: &mut Report) -> Result<(), SalvageError> {
    for q in &view.quarantined {
        match view.scan.read(q.at) {
            Ok(bytes) => {
                if let Some((frame, raw)) = super::state::unquarantine(&bytes) {
                    into.restore_quarantined(frame.key + marker.offset, frame.queue_key, raw)?;
                    report.quarantined_records += 1;
                }
            }
            Err(e) => report
                .unreadable_files
                .push((view.scan.files[q.at.file].clone(), e.to_string())),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::tests::spans;

    #[test]
    fn salvage_preserves_order_and_keys_into_a_fresh_spool_and_refuses_to_repeat() {
        let src = tempfile::tempdir().unwrap();
        {
            let mut s = Spool::open(src.path(), u64::MAX).unwrap();
            for i in 0..5 {
                s.push("svc", &spans(30, &format!("r{i}")), 1).unwrap();
            }
            let first = s.oldest(Tree::Queue, 1).unwrap();
            s.dead_letter(&first[0], &[], 0).unwrap();
            s.commit().unwrap();
        }
        let dst = tempfile::tempdir().unwrap();
        let mut into = Spool::open(dst.path(), u64::MAX).unwrap();
        let report = salvage(src.path(), &mut into).unwrap();
        assert_eq!((report.records, report.spans, report.settled_records), (4, 120, 1));
        let keys: Vec<u64> = into.records(Tree::Queue).map(|e| e.unwrap().key).collect();
        assert_eq!(keys, [1, 2, 3, 4], "keys kept into a fresh spool");
        assert!(matches!(
            salvage(src.path(), &mut into),
            Err(SalvageError::AlreadyDone { .. })
        ));
        assert_eq!(into.stats().spans, 120);
    }
}
