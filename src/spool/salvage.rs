//! Salvage: rebuilding a queue from the raw files of a spool sled cannot
//! open (or a directory the tracer moved aside), without trusting sled.
//!
//! sled writes every value into its log (`db`) or, when large, into a file
//! under `blobs/`, byte for byte, and rewrites pages as they change, so a
//! spool's files hold each live record at least once and stale copies of
//! records long delivered. Every record carries its sequence, part and
//! service (see [`super::record`]), and every removal from the queue
//! persists a framed watermark ([`watermark`]) below which no queue record
//! is owed. Salvage therefore:
//!
//! 1. takes the directory's lock (so no tracer opens it meanwhile) and never
//!    writes to it;
//! 2. scans every file for record candidates and watermarks, keeping only
//!    where each sound record lies (memory stays small whatever the size);
//! 3. keeps one copy per (part, sequence, CRC), drops queue records below
//!    the highest watermark found (already delivered, dead-lettered,
//!    expired or dropped by the cap);
//! 4. pushes the rest into the target spool, oldest first, with their
//!    service names and creation times; dead letters stay dead letters.
//!
//! What it cannot know: version 1 records carry no sequence, so all their
//! distinct copies are recovered (possible duplicates, never a loss); dead
//! letters already purged or replayed may come back as dead letters.

use super::record::{self, Part};
use super::{Spool, SpoolError};
use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

const WATERMARK_MAGIC: [u8; 4] = *b"SPWM";

/// The framed watermark stored under `meta/acked_below`: magic, the lowest
/// key still owed (u64 LE), CRC32 of the first 12 bytes.
pub(crate) fn watermark(low: u64) -> [u8; 16] {
    let mut out = [0; 16];
    out[0..4].copy_from_slice(&WATERMARK_MAGIC);
    out[4..12].copy_from_slice(&low.to_le_bytes());
    let crc = crc32fast::hash(&out[0..12]);
    out[12..16].copy_from_slice(&crc.to_le_bytes());
    out
}

/// The highest sound watermark in `bytes`.
fn highest_watermark(bytes: &[u8]) -> Option<u64> {
    memchr::memmem::find_iter(bytes, &WATERMARK_MAGIC)
        .filter_map(|at| {
            let w = bytes.get(at..at + 16)?;
            let low = u64::from_le_bytes(w[4..12].try_into().ok()?);
            (watermark(low) == *w).then_some(low)
        })
        .max()
}

/// Why salvage could not run.
#[derive(Debug, thiserror::Error)]
pub enum SalvageError {
    /// A tracer or another tool holds the directory.
    #[error("{} is in use by another process", dir.display())]
    InUse {
        /// The directory.
        dir: PathBuf,
    },
    /// The directory cannot be listed.
    #[error("cannot read {}: {source}", dir.display())]
    Read {
        /// The directory.
        dir: PathBuf,
        /// What the file system said.
        source: std::io::Error,
    },
    /// Writing to the target spool failed.
    #[error(transparent)]
    Spool(#[from] SpoolError),
}

/// What [`salvage`] found and did.
#[derive(Debug, Clone, Default, serde::Serialize)]
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
    /// The highest watermark found: queue records below it were already
    /// settled and are skipped.
    pub watermark: Option<u64>,
    /// Distinct queue records skipped as below the watermark.
    pub settled_records: u64,
    /// Extra copies of recovered records (sled's stale page versions).
    pub copies: u64,
    /// Candidates that were not sound records: file, offset, why.
    pub unreadable: Vec<Unreadable>,
    /// Files that could not be read: path and why.
    pub unreadable_files: Vec<(PathBuf, String)>,
}

/// A record candidate that could not be read.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Unreadable {
    /// The file.
    pub file: PathBuf,
    /// Byte offset of the candidate.
    pub offset: u64,
    /// Why it is not a sound record.
    pub reason: String,
}

/// Where a sound record lies.
#[derive(Clone)]
struct Location {
    file: usize,
    offset: u64,
    len: usize,
    version: u8,
}

/// What a scan of a directory's raw files found.
struct Scan {
    files: Vec<PathBuf>,
    /// One location per (part, sequence, CRC), in sequence order.
    found: BTreeMap<(u8, u64, u32), Location>,
    /// Counts and problems so far (`records`, `spans` and the like are
    /// filled by whoever uses the records).
    report: Report,
}

impl Scan {
    /// Scans every file under `dir` for records and watermarks.
    fn dir(dir: &Path) -> std::io::Result<Scan> {
        let mut files = Vec::new();
        collect_files(dir, &mut files)?;
        files.sort();
        let mut report = Report::default();
        let mut found = BTreeMap::new();
        for (i, path) in files.iter().enumerate() {
            let bytes = match std::fs::read(path) {
                Ok(b) => b,
                Err(e) => {
                    report.unreadable_files.push((path.clone(), e.to_string()));
                    continue;
                }
            };
            report.files += 1;
            report.bytes_scanned += bytes.len() as u64;
            report.watermark = report.watermark.max(highest_watermark(&bytes));
            for f in record::scan(&bytes) {
                match f.record {
                    Ok(r) => {
                        let crc = crc32fast::hash(&bytes[f.offset..f.offset + f.len]);
                        let key = (r.meta.part as u8, r.meta.seq, crc);
                        let loc = Location {
                            file: i,
                            offset: f.offset as u64,
                            len: f.len,
                            version: bytes[f.offset + 4],
                        };
                        if found.insert(key, loc).is_some() {
                            report.copies += 1;
                        }
                    }
                    Err(e) => report.unreadable.push(Unreadable {
                        file: path.clone(),
                        offset: f.offset as u64,
                        reason: e.to_string(),
                    }),
                }
            }
        }
        Ok(Scan { files, found, report })
    }

    /// The sound records found, oldest first: part, whether the record
    /// carries its sequence (version 2 and later), where it is, and its raw
    /// bytes (a record that cannot be read again is added to the report).
    fn records(&mut self) -> impl Iterator<Item = (Part, bool, Unreadable, Vec<u8>)> + '_ {
        let found = std::mem::take(&mut self.found);
        let (files, report) = (&self.files, &mut self.report);
        found.into_iter().filter_map(move |((part, _, _), loc)| {
            let path = &files[loc.file];
            match read_at(path, loc.offset, loc.len) {
                Ok(bytes) => {
                    let part = if part == Part::Dead as u8 {
                        Part::Dead
                    } else {
                        Part::Queue
                    };
                    let at = Unreadable {
                        file: path.clone(),
                        offset: loc.offset,
                        reason: String::new(),
                    };
                    Some((part, loc.version >= 2, at, bytes))
                }
                Err(e) => {
                    report.unreadable_files.push((path.clone(), e.to_string()));
                    None
                }
            }
        })
    }
}

/// Recovers every sound, unsettled record in the files under `from` into
/// `into` (see the module docs). `from` is only read.
pub fn salvage(from: &Path, into: &mut Spool) -> Result<Report, SalvageError> {
    let _lock = lock(from)?;
    let mut scan = Scan::dir(from).map_err(|source| SalvageError::Read {
        dir: from.to_path_buf(),
        source,
    })?;
    let ledger = super::ledger::Ledger::read(from).map(|s| s.watermark);
    scan.report.watermark = scan.report.watermark.max(ledger);
    let low = scan.report.watermark.unwrap_or(0);
    let mut out = Report::default();
    for (part, has_seq, at, bytes) in scan.records() {
        let record = match record::decode(&bytes) {
            Ok(r) => r,
            Err(e) => {
                out.unreadable.push(Unreadable {
                    reason: format!("changed while salvaging: {e}"),
                    ..at
                });
                continue;
            }
        };
        let n = record.spans.len() as u64;
        if part == Part::Dead {
            into.add_dead(&record.service, &record.spans, record.meta.created_unix_ms)?;
            out.dead_letter_records += 1;
            out.dead_letter_spans += n;
        } else if has_seq && record.meta.seq < low {
            out.settled_records += 1;
        } else {
            into.push(&record.service, &record.spans, record.meta.created_unix_ms)?;
            out.records += 1;
            out.spans += n;
        }
    }
    into.commit()?;
    let mut report = scan.report;
    report.records = out.records;
    report.spans = out.spans;
    report.dead_letter_records = out.dead_letter_records;
    report.dead_letter_spans = out.dead_letter_spans;
    report.settled_records = out.settled_records;
    report.unreadable.extend(out.unreadable);
    Ok(report)
}

/// Takes sled's lock on `dir/db` (if there is a `db` file), so no tracer
/// opens the spool while it is held; [`SalvageError::InUse`] if one has it.
pub fn lock(dir: &Path) -> Result<Option<std::fs::File>, SalvageError> {
    let Ok(file) = std::fs::OpenOptions::new().read(true).write(true).open(dir.join("db")) else {
        return Ok(None);
    };
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Err(SalvageError::InUse { dir: dir.to_path_buf() }),
        Err(std::fs::TryLockError::Error(_)) => Ok(None),
    }
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            collect_files(&entry.path(), out)?;
        } else if kind.is_file() {
            out.push(entry.path());
        }
    }
    Ok(())
}

fn read_at(path: &Path, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let mut f = std::fs::File::open(path)?;
    f.seek(SeekFrom::Start(offset))?;
    let mut buf = vec![0; len];
    f.read_exact(&mut buf)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermarks_are_found_and_damaged_ones_ignored() {
        let mut bytes = b"junk".to_vec();
        bytes.extend_from_slice(&watermark(7));
        bytes.extend_from_slice(&watermark(12));
        let mut bad = watermark(99);
        bad[6] ^= 1;
        bytes.extend_from_slice(&bad);
        assert_eq!(highest_watermark(&bytes), Some(12));
        assert_eq!(highest_watermark(b"SPWM"), None);
    }
}
