//! What spillway knows of sled 0.34.7's files: enough to tell, before sled
//! opens a directory and without writing to it, what sled's recovery would
//! do there.
//!
//! sled keeps one log file (`db`) cut into segments of `segment_size`
//! bytes (from `conf`), each starting with a 20-byte header (its log
//! sequence number, `lsn`, the highest lsn known stable when it was
//! written, and a CRC). Messages follow: a header (CRC, kind, length,
//! segment number, page id; varints) and a body, CRC-checked together.
//! Large bodies live in `blobs/<lsn>` files (CRC, kind, body). A snapshot
//! (`snap.<lsn hex>`) records where every page's latest versions are, up to
//! its `stable_lsn`.
//!
//! When sled opens a directory it reads the newest snapshot (a damaged one
//! makes it refuse to open), then replays the log from the snapshot's lsn:
//! first over the segments above the highest stable lsn any header
//! records, stopping at the first message that fails its checks (a *tear*:
//! everything after it is treated as never written); then over all
//! segments from the snapshot on, skipping the rest of any segment where a
//! message fails. It then **writes**: it fills the rest of the segment
//! holding the recovered tip with zeros, zeroes every whole segment past
//! the tear, deletes every blob file at or past the tip, and writes a new
//! snapshot. A flipped byte in the middle of the log thus erases
//! everything after it; sled reports nothing.
//!
//! [`Recovery::plan`] runs the same steps over the files, reading only,
//! and says what sled would overwrite, skip or delete ([`Recovery`]), and
//! checks every page the recovered snapshot points at (a page sled cannot
//! read later fails every read, or makes sled panic). It models sled
//! 0.34.7 exactly as its source reads (`pagecache/iterator.rs`,
//! `logger.rs`, `snapshot.rs`, `blob_io.rs`); the dependency is pinned to
//! that version, and the damage tests check the plan against what sled
//! really does to damaged files.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

mod files;
mod log;

use files::*;
use log::*;

/// sled's log sequence numbers.
pub(crate) type Lsn = i64;

const SEG_HEADER_LEN: u64 = 20;
const MAX_MSG_HEADER_LEN: u64 = 32;
/// The shortest message: CRC (4), kind (1), and one byte each for the
/// length, segment and page id varints.
const MIN_MSG_LEN: u64 = 8;
/// sled's default segment size, used when `conf` is missing.
pub(crate) const DEFAULT_SEGMENT_SIZE: u64 = 512 * 1024;

// Message kinds (sled's `MessageKind`).
const CORRUPTED: u8 = 0;
const CANCELED: u8 = 1;
const CAP: u8 = 2;
const BATCH_MANIFEST: u8 = 3;
const FREE: u8 = 4;
const COUNTER: u8 = 5;
const INLINE_META: u8 = 6;
const BLOB_META: u8 = 7;
const INLINE_NODE: u8 = 8;
const BLOB_NODE: u8 = 9;
const INLINE_LINK: u8 = 10;
const BLOB_LINK: u8 = 11;

/// A byte range of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Region {
    /// The file.
    pub file: PathBuf,
    /// Where it starts.
    pub offset: u64,
    /// How long it is.
    pub len: u64,
    /// The lsn of its first byte, where it is in the log.
    pub lsn: Option<Lsn>,
    /// Why sled would touch it.
    pub why: &'static str,
}

/// What sled's recovery would do to a directory (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct Recovery {
    /// The log's segment size.
    pub segment_size: u64,
    /// Why sled would refuse to open the directory at all, if it would.
    pub refusal: Option<String>,
    /// The lsn recovery would stop at (the new snapshot's).
    pub tip: Option<Lsn>,
    /// The snapshot's lsn recovery started from.
    pub snapshot_lsn: Option<Lsn>,
    /// Parts of the log sled would overwrite with zeros.
    pub zeroed: Vec<Region>,
    /// Parts of the log whose messages sled would skip (not applied).
    pub skipped: Vec<Region>,
    /// Blob files sled would delete.
    pub deleted_blobs: Vec<(PathBuf, Lsn)>,
    /// The first message recovery found damaged, if any: the tear.
    pub tear: Option<Region>,
    /// Pages the recovered state points at that cannot be read.
    pub bad_pages: Vec<Region>,
    /// Each segment with a sound header: file offset and header lsn.
    pub segments: BTreeMap<u64, Lsn>,
}

impl Recovery {
    /// Where the byte at `offset` of the log sits in lsn order, if its
    /// segment has a sound header.
    pub fn lsn_at(&self, offset: u64) -> Option<Lsn> {
        let base = offset / self.segment_size * self.segment_size;
        let lsn = self.segments.get(&base)?;
        Some(lsn + (offset - base) as Lsn)
    }

    /// Everything sled would overwrite, skip or delete, or fail to read.
    pub fn losses(&self) -> impl Iterator<Item = &Region> {
        self.zeroed.iter().chain(&self.skipped).chain(&self.bad_pages)
    }

    /// Runs sled's recovery over `dir` without writing (see the module
    /// docs). `Err` only when a file cannot be read at all.
    pub fn plan(dir: &Path) -> io::Result<Recovery> {
        let mut r = Recovery {
            segment_size: DEFAULT_SEGMENT_SIZE,
            ..Recovery::default()
        };
        match read_conf(&dir.join("conf"))? {
            Conf::Missing => {}
            Conf::Bad(why) => {
                r.refusal = Some(format!("conf: {why}"));
                return Ok(r);
            }
            Conf::Segment(size) => r.segment_size = size,
        }
        let log_path = dir.join("db");
        let log = match File::open(&log_path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(r),
            Err(e) => return Err(e),
        };
        let snapshot = match read_snapshot(dir)? {
            Ok(s) => s,
            Err(why) => {
                r.refusal = Some(why);
                return Ok(r);
            }
        };
        let ctx = Ctx {
            log: &log,
            log_path: &log_path,
            blobs: dir.join("blobs"),
            seg: r.segment_size,
        };
        r.snapshot_lsn = snapshot.stable_lsn;
        let mut pages = snapshot.pages.clone();
        let start = snapshot.stable_lsn.unwrap_or(0);
        let normalized = start / ctx.seg as Lsn * ctx.seg as Lsn;
        let (ordering, end_of_last_msg, tear) = ctx.scan_headers_and_tail(normalized, &mut r)?;
        r.tear = tear;
        let segments: BTreeMap<Lsn, u64> = ordering.into_iter().filter(|&(l, _)| l >= normalized).collect();
        let mut it = Iter {
            ctx: &ctx,
            segments,
            base: None,
            max_lsn: Some(end_of_last_msg),
            cur_lsn: None,
            last_stage: true,
            skipped: Vec::new(),
        };
        // Every page id below the highest has a version in the snapshot or
        // a message in the log, so no id can exceed what the two hold: a
        // larger one is a crafted or damaged file, and sled would allocate
        // a page table that large (an abort) before reading a byte more.
        let max_pid = pages.len() as u64 + log.metadata()?.len() / MIN_MSG_LEN;
        let progressed = match apply_log(&mut it, &mut pages, snapshot.stable_lsn, end_of_last_msg, max_pid) {
            Ok(progressed) => progressed,
            Err(why) => {
                r.refusal = Some(why);
                return Ok(r);
            }
        };
        r.skipped = it.skipped.clone();
        let stable = r.recovered_end(&it, snapshot.stable_lsn, progressed);
        r.tip = stable;
        r.past_the_end(&it, stable)?;
        r.bad_pages = ctx.check_pages(&pages, &r.deleted_blobs);
        Ok(r)
    }

    /// What sled drops past the recovered end `stable`: the segments `it`
    /// did not reach (zeroed) and the blob files at or after it (deleted).
    fn past_the_end(&mut self, it: &Iter, stable: Option<Lsn>) -> io::Result<()> {
        for (&lsn, &offset) in &it.segments {
            self.zeroed.push(Region {
                file: it.ctx.log_path.to_path_buf(),
                offset,
                len: it.ctx.seg,
                lsn: Some(lsn),
                why: "a segment after the recovered end",
            });
        }
        if let Some(stable) = stable {
            for (path, lsn) in blob_files(&it.ctx.blobs)? {
                if lsn >= stable {
                    self.deleted_blobs.push((path, lsn));
                }
            }
        }
        Ok(())
    }

    /// Where sled's recovery ends the log after reading it with `it`: the
    /// snapshot's own end if no message moved it (`progressed`), else the
    /// last message read, or the next segment's start if the last one has
    /// no room for another header. The rest of that segment is noted as
    /// zeroed.
    fn recovered_end(&mut self, it: &Iter, snapshot_lsn: Option<Lsn>, progressed: bool) -> Option<Lsn> {
        let seg = it.ctx.seg;
        match (it.cur_lsn, snapshot_lsn) {
            (None, s) if !progressed => s,
            (Some(cur), s) if cur <= s.unwrap_or(0) && !progressed => s,
            (Some(cur), _) => {
                let progress = cur % seg as Lsn;
                if progress + MAX_MSG_HEADER_LEN as Lsn >= seg as Lsn {
                    Some(cur / seg as Lsn * seg as Lsn + seg as Lsn)
                } else {
                    if let Some((offset, _)) = &it.base {
                        let from = offset + progress as u64;
                        let to = offset + seg - 1;
                        self.zeroed.push(Region {
                            file: it.ctx.log_path.to_path_buf(),
                            offset: from,
                            len: to - from,
                            lsn: Some(cur),
                            why: "the rest of the segment after the recovered end",
                        });
                    }
                    Some(cur)
                }
            }
            (None, s) => s,
        }
    }
}

/// Applies the log's messages from the snapshot on to `pages`, as sled's
/// recovery does; `Ok` says whether any moved the state, `Err` why sled
/// must not open the directory (a message past the recovered `end`, or a
/// page id beyond `max_pid`).
fn apply_log(
    it: &mut Iter,
    pages: &mut Vec<Page>,
    snapshot_lsn: Option<Lsn>,
    end: Lsn,
    max_pid: u64,
) -> Result<bool, String> {
    let mut progressed = false;
    while let Some(item) = it.next() {
        if item.lsn < snapshot_lsn.unwrap_or(-1) {
            continue;
        }
        if item.lsn >= end {
            return Err(format!("log message at lsn {} past the recovered end", item.lsn));
        }
        if item.pid > max_pid {
            return Err(format!(
                "log message at lsn {} names page {}, more pages than the log and snapshot can hold",
                item.lsn, item.pid
            ));
        }
        progressed = true;
        apply(pages, item);
    }
    Ok(progressed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_read_as_sled_writes_them() {
        let cases: [(&[u8], u64); 5] = [
            (&[7], 7),
            (&[241, 10], 250),
            (&[249, 1, 2], 2288 + 258),
            (&[250, 1, 2, 3], 0x030201),
            (&[255, 1, 2, 3, 4, 5, 6, 7, 8], 0x0807060504030201),
        ];
        for (bytes, want) in cases {
            let mut cur = bytes;
            assert_eq!(varint(&mut cur), Some(want), "{bytes:?}");
            assert!(cur.is_empty());
        }
        assert_eq!(varint(&mut &[250u8, 1][..]), None, "cut short");
    }

    #[test]
    fn a_healthy_spool_loses_nothing_and_its_pages_all_read_back() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            let t = db.open_tree("queue").unwrap();
            for i in 0u64..2_000 {
                t.insert(i.to_be_bytes(), vec![i as u8; 300]).unwrap();
            }
            db.flush().unwrap();
        }
        let plan = Recovery::plan(dir.path()).unwrap();
        assert_eq!(plan.refusal, None);
        assert!(plan.skipped.is_empty() && plan.bad_pages.is_empty(), "{plan:?}");
        assert!(plan.deleted_blobs.is_empty(), "{plan:?}");
        // Reopened (a snapshot now) and written to again: still nothing.
        {
            let db = crate::spool::tests::reopen_sled(dir.path());
            db.open_tree("queue").unwrap().insert(b"x", vec![1; 300]).unwrap();
            db.flush().unwrap();
        }
        let plan = Recovery::plan(dir.path()).unwrap();
        assert!(plan.snapshot_lsn.is_some());
        assert!(plan.skipped.is_empty() && plan.bad_pages.is_empty(), "{plan:?}");
    }

    /// sled's varint, as `varint` reads it.
    fn put_varint(out: &mut Vec<u8>, v: u64) {
        match v {
            0..=240 => out.push(v as u8),
            241..=2287 => out.extend([241 + ((v - 240) / 256) as u8, ((v - 240) % 256) as u8]),
            2288..=67823 => out.extend([249, ((v - 2288) / 256) as u8, ((v - 2288) % 256) as u8]),
            _ => {
                let n = (8 - v.leading_zeros() as usize / 8).max(3);
                out.push(247 + n as u8);
                out.extend_from_slice(&v.to_le_bytes()[..n]);
            }
        }
    }

    #[test]
    fn sled_varints_round_trip() {
        for v in [0, 240, 241, 2287, 2288, 67823, 67824, 1 << 24, 1 << 40, u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            let mut cur = &out[..];
            assert_eq!(varint(&mut cur), Some(v), "{v}");
            assert!(cur.is_empty());
        }
    }

    /// The first message of a fresh log rewritten, CRC and all, to name
    /// page `pid` (what a crafted file does).
    fn craft_page_id(dir: &Path, pid: u64) {
        let path = dir.join("db");
        let mut bytes = std::fs::read(&path).unwrap();
        let at = SEG_HEADER_LEN as usize;
        let mut cur = &bytes[at..];
        take(&mut cur, 5).unwrap();
        let len = varint(&mut cur).unwrap();
        let segment = varint(&mut cur).unwrap();
        varint(&mut cur).unwrap();
        let body = cur[..len as usize].to_vec();
        let mut head = vec![INLINE_NODE];
        put_varint(&mut head, len);
        put_varint(&mut head, segment);
        put_varint(&mut head, pid);
        let mut h = crc32fast::Hasher::new();
        h.update(&body);
        h.update(&head);
        let mut msg = (h.finalize() ^ 0xFFFF_FFFF).to_le_bytes().to_vec();
        msg.extend(head);
        msg.extend(body);
        bytes[at..at + msg.len()].copy_from_slice(&msg);
        std::fs::write(&path, bytes).unwrap();
    }

    #[test]
    fn a_page_id_past_what_the_files_can_hold_is_refused_before_any_allocation() {
        for pid in [1 << 40, 1 << 26, u64::MAX] {
            let dir = tempfile::tempdir().unwrap();
            {
                let db = sled::open(dir.path()).unwrap();
                db.open_tree("queue").unwrap().insert(b"k", vec![1; 100]).unwrap();
                db.flush().unwrap();
            }
            craft_page_id(dir.path(), pid);
            let plan = Recovery::plan(dir.path()).unwrap();
            let refusal = plan.refusal.unwrap_or_default();
            assert!(refusal.contains(&format!("names page {pid}")), "{pid}: {refusal:?}");
        }
        // A page id the log can hold is applied as before.
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            db.open_tree("queue").unwrap().insert(b"k", vec![1; 100]).unwrap();
            db.flush().unwrap();
        }
        craft_page_id(dir.path(), 3);
        assert_eq!(Recovery::plan(dir.path()).unwrap().refusal, None);
    }
}
