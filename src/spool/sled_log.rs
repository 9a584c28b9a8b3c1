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
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// sled's log sequence numbers.
pub type Lsn = i64;

const SEG_HEADER_LEN: u64 = 20;
const MAX_MSG_HEADER_LEN: u64 = 32;
/// sled's default segment size, used when `conf` is missing.
pub const DEFAULT_SEGMENT_SIZE: u64 = 512 * 1024;

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
        let mut progressed = false;
        while let Some(item) = it.next() {
            if item.lsn < snapshot.stable_lsn.unwrap_or(-1) {
                continue;
            }
            if item.lsn >= end_of_last_msg {
                r.refusal = Some(format!("log message at lsn {} past the recovered end", item.lsn));
                return Ok(r);
            }
            progressed = true;
            apply(&mut pages, item);
        }
        r.skipped = it.skipped.clone();
        let stable = match (it.cur_lsn, snapshot.stable_lsn) {
            (None, s) if !progressed => s,
            (Some(cur), s) if cur <= s.unwrap_or(0) && !progressed => s,
            (Some(cur), _) => {
                let progress = cur % ctx.seg as Lsn;
                if progress + MAX_MSG_HEADER_LEN as Lsn >= ctx.seg as Lsn {
                    Some(cur / ctx.seg as Lsn * ctx.seg as Lsn + ctx.seg as Lsn)
                } else {
                    if let Some((offset, _)) = &it.base {
                        let from = offset + progress as u64;
                        let to = offset + ctx.seg - 1;
                        r.zeroed.push(Region {
                            file: log_path.clone(),
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
        };
        r.tip = stable;
        for (&lsn, &offset) in &it.segments {
            r.zeroed.push(Region {
                file: log_path.clone(),
                offset,
                len: ctx.seg,
                lsn: Some(lsn),
                why: "a segment after the recovered end",
            });
        }
        if let Some(stable) = stable {
            for (path, lsn) in blob_files(&ctx.blobs)? {
                if lsn >= stable {
                    r.deleted_blobs.push((path, lsn));
                }
            }
        }
        r.bad_pages = ctx.check_pages(&pages, &r.deleted_blobs);
        Ok(r)
    }
}

/// What `conf` says.
enum Conf {
    Missing,
    Segment(u64),
    Bad(String),
}

/// Reads `conf` as sled does: a missing or tiny file is no configuration
/// (sled writes a new one); a wrong CRC is only warned about; a file that
/// does not parse line by line (`key: value`), or whose segment size,
/// compression or version differ from what spillway opens sled with, is
/// refused.
fn read_conf(path: &Path) -> io::Result<Conf> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Conf::Missing),
        Err(e) => return Err(e),
    };
    if bytes.len() <= 8 {
        return Ok(Conf::Missing);
    }
    let Ok(text) = std::str::from_utf8(&bytes[..bytes.len() - 4]) else {
        return Ok(Conf::Bad("not UTF-8".into()));
    };
    let mut lines = std::collections::HashMap::new();
    for line in text.lines() {
        let mut split = line.split(": ");
        match (split.next(), split.next()) {
            (Some(k), Some(v)) => {
                lines.insert(k, v);
            }
            _ => return Ok(Conf::Bad(format!("line {line:?} does not parse"))),
        }
    }
    let size = lines.get("segment_size").and_then(|v| v.parse::<u64>().ok());
    let compression = lines.get("use_compression").and_then(|v| v.parse::<bool>().ok());
    let version = lines.get("version").and_then(|v| {
        let mut parts = v.split('.');
        Some((parts.next()?.parse::<u64>().ok()?, parts.next()?.parse::<u64>().ok()?))
    });
    Ok(match (size, compression, version) {
        (Some(DEFAULT_SEGMENT_SIZE), Some(false), Some((0, 34))) => Conf::Segment(DEFAULT_SEGMENT_SIZE),
        (Some(s), Some(c), Some((major, minor))) => Conf::Bad(format!(
            "segment_size {s}, use_compression {c}, version {major}.{minor}: not what spillway opens sled with"
        )),
        _ => Conf::Bad("a field is missing or does not parse".into()),
    })
}

/// A page's latest versions: (lsn, pointer) of its base and its links.
#[derive(Debug, Clone)]
enum Page {
    Present(Vec<(Lsn, Ptr)>),
    Free,
    Uninitialized,
}

/// Where a page version is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ptr {
    Inline(u64),
    Blob(u64, Lsn),
}

struct Snapshot {
    stable_lsn: Option<Lsn>,
    pages: Vec<Page>,
}

/// Reads the newest snapshot as sled picks it (`snap.*` names, sorted, the
/// last), checks it, and parses where each page is. `Ok(Err)` when sled
/// would refuse it.
fn read_snapshot(dir: &Path) -> io::Result<Result<Snapshot, String>> {
    let mut names: Vec<String> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("snap.") && !n.ends_with(".in___motion"))
        .collect();
    names.sort();
    let Some(name) = names.pop() else {
        return Ok(Ok(Snapshot {
            stable_lsn: None,
            pages: Vec::new(),
        }));
    };
    let buf = std::fs::read(dir.join(&name))?;
    if buf.len() <= 12 {
        return Ok(Err(format!("{name}: empty or cut short ({} bytes)", buf.len())));
    }
    let body = &buf[..buf.len() - 12];
    let crc = u32::from_le_bytes(buf[buf.len() - 4..].try_into().unwrap_or_default());
    if crc32fast::hash(body) != crc {
        return Ok(Err(format!("{name}: CRC mismatch")));
    }
    let mut cur = body;
    let parsed = (|| {
        let stable_lsn = unshift_i64(i64_le(&mut cur)?);
        let _active_segment = varint(&mut cur)?;
        let mut pages = Vec::new();
        while !cur.is_empty() {
            let tag = take(&mut cur, 1)?[0];
            if tag == 0 {
                let _lsn = i64_le(&mut cur)?;
                let _ptr = ptr(&mut cur)?;
                pages.push(Page::Free);
                continue;
            }
            let mut versions = Vec::new();
            for _ in 0..tag {
                let lsn = i64_le(&mut cur)?;
                let p = ptr(&mut cur)?;
                let _size = varint(&mut cur)?;
                versions.push((lsn, p));
            }
            pages.push(Page::Present(versions));
        }
        Some(Snapshot { stable_lsn, pages })
    })();
    Ok(parsed.ok_or_else(|| format!("{name}: does not parse")))
}

fn take<'a>(cur: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    let (head, rest) = (cur.get(..n)?, cur.get(n..)?);
    *cur = rest;
    Some(head)
}

fn i64_le(cur: &mut &[u8]) -> Option<i64> {
    Some(i64::from_le_bytes(take(cur, 8)?.try_into().ok()?))
}

fn unshift_i64(v: i64) -> Option<i64> {
    match v {
        0 => None,
        v if v < 0 => Some(v),
        v => Some(v - 1),
    }
}

/// sled's u64 varint.
fn varint(cur: &mut &[u8]) -> Option<u64> {
    let first = *cur.first()?;
    let (value, len) = match first {
        0..=240 => (u64::from(first), 1),
        241..=248 => (240 + 256 * (u64::from(first) - 241) + u64::from(*cur.get(1)?), 2),
        249 => (2288 + 256 * u64::from(*cur.get(1)?) + u64::from(*cur.get(2)?), 3),
        other => {
            let n = other as usize - 247;
            let mut a = [0u8; 8];
            a[..n].copy_from_slice(cur.get(1..=n)?);
            (u64::from_le_bytes(a), n + 1)
        }
    };
    take(cur, len)?;
    Some(value)
}

fn ptr(cur: &mut &[u8]) -> Option<Ptr> {
    match take(cur, 1)?[0] {
        0 => Some(Ptr::Inline(varint(cur)?)),
        1 => Some(Ptr::Blob(varint(cur)?, i64_le(cur)?)),
        _ => None,
    }
}

/// A message recovery applies.
struct Item {
    kind: u8,
    pid: u64,
    lsn: Lsn,
    ptr: Ptr,
}

/// What `Snapshot::apply` does with a message.
fn apply(pages: &mut Vec<Page>, item: Item) {
    let pid = item.pid as usize;
    if pid > (1 << 40) {
        return;
    }
    let pushed = pages.len() <= pid;
    if pushed {
        pages.resize(pid + 1, Page::Uninitialized);
    }
    match item.kind {
        INLINE_NODE | COUNTER | BLOB_NODE | INLINE_META | BLOB_META => {
            pages[pid] = Page::Present(vec![(item.lsn, item.ptr)])
        }
        INLINE_LINK | BLOB_LINK => match &mut pages[pid] {
            Page::Present(versions) if versions.last().is_none_or(|(l, _)| *l < item.lsn) => {
                versions.push((item.lsn, item.ptr));
            }
            Page::Present(_) => {}
            _ if pushed => {
                pages.pop();
            }
            _ => {}
        },
        FREE => pages[pid] = Page::Free,
        _ => {}
    }
}

struct Ctx<'a> {
    log: &'a File,
    log_path: &'a Path,
    blobs: PathBuf,
    seg: u64,
}

/// How reading one message went (sled's `LogRead`).
enum Read {
    Applied {
        kind: u8,
        pid: u64,
        inline_len: u64,
        ptr: Ptr,
    },
    Canceled(u64),
    Cap,
    Corrupted,
    Manifest(Lsn, u64),
    Dangling(u64),
    Failed,
}

/// The log iterator (sled's `LogIter`), over a segment buffer at a time.
struct Iter<'a> {
    ctx: &'a Ctx<'a>,
    segments: BTreeMap<Lsn, u64>,
    /// The segment being read: its offset and bytes.
    base: Option<(u64, Vec<u8>)>,
    max_lsn: Option<Lsn>,
    cur_lsn: Option<Lsn>,
    last_stage: bool,
    skipped: Vec<Region>,
}

impl Iter<'_> {
    fn valid_entry(&self, lsn: Lsn) -> bool {
        let seg = self.ctx.seg as Lsn;
        let start = lsn / seg * seg;
        lsn >= start + SEG_HEADER_LEN as Lsn && lsn <= start + seg - MAX_MSG_HEADER_LEN as Lsn
    }

    fn read_segment(&mut self) -> bool {
        let Some((&lsn, &offset)) = self.segments.iter().next() else {
            return false;
        };
        if self.max_lsn.is_some_and(|m| lsn > m) {
            return false;
        }
        let Some(header) = segment_header(self.ctx.log, offset) else {
            return false;
        };
        if offset % self.ctx.seg != 0 || header.0 % self.ctx.seg as Lsn != 0 || header.0 != lsn {
            return false;
        }
        let mut buf = vec![0; self.ctx.seg as usize];
        let n = read_up_to(self.ctx.log, &mut buf, offset);
        buf.truncate(n);
        self.cur_lsn = Some(header.0 + SEG_HEADER_LEN as Lsn);
        self.base = Some((offset, buf));
        self.segments.remove(&lsn);
        true
    }

    fn next(&mut self) -> Option<Item> {
        loop {
            if !self.valid_entry(self.cur_lsn.unwrap_or(0)) {
                self.base = None;
            }
            if self.base.is_none() && !self.read_segment() {
                return None;
            }
            let lsn = self.cur_lsn?;
            if self.max_lsn.is_some_and(|m| lsn > m) {
                return None;
            }
            let (offset, buf) = self.base.as_ref()?;
            let lid = offset + (lsn % self.ctx.seg as Lsn) as u64;
            let expected = lsn as u64 / self.ctx.seg;
            match self.ctx.read_message(buf, *offset, lid, expected) {
                Read::Applied {
                    kind,
                    pid,
                    inline_len,
                    ptr,
                } => {
                    self.cur_lsn = Some(lsn + inline_len as Lsn);
                    return Some(Item { kind, pid, lsn, ptr });
                }
                Read::Manifest(last, inline_len) => {
                    if self.max_lsn.is_some_and(|m| last > m) {
                        return None;
                    }
                    self.cur_lsn = Some(lsn + inline_len as Lsn);
                }
                Read::Canceled(inline_len) | Read::Dangling(inline_len) => {
                    self.cur_lsn = Some(lsn + inline_len as Lsn);
                }
                Read::Corrupted if self.last_stage => {
                    let end = offset + buf.len() as u64;
                    self.skipped.push(Region {
                        file: self.ctx.log_path.to_path_buf(),
                        offset: lid,
                        len: end.saturating_sub(lid),
                        lsn: Some(lsn),
                        why: "messages after a damaged one in its segment",
                    });
                    self.base = None;
                }
                Read::Corrupted | Read::Failed => return None,
                Read::Cap => self.base = None,
            }
        }
    }
}

/// A segment header: its lsn and max stable lsn, if its CRC holds.
fn segment_header(log: &File, offset: u64) -> Option<(Lsn, Lsn)> {
    let mut b = [0u8; SEG_HEADER_LEN as usize];
    log.read_exact_at(&mut b, offset).ok()?;
    let crc = u32::from_le_bytes(b[0..4].try_into().ok()?) ^ 0xFFFF_FFFF;
    if crc32fast::hash(&b[4..20]) != crc {
        return None;
    }
    let lsn = i64::from_le_bytes(b[4..12].try_into().ok()?) ^ 0x7FFF_FFFF_FFFF_FFFF;
    let stable = i64::from_le_bytes(b[12..20].try_into().ok()?) ^ 0x7FFF_FFFF_FFFF_FFFF;
    Some((lsn, stable))
}

/// Reads as much of `buf` as the file has at `offset`.
fn read_up_to(f: &File, buf: &mut [u8], offset: u64) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match f.read_at(&mut buf[n..], offset + n as u64) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    n
}

impl Ctx<'_> {
    /// sled's `scan_segment_headers_and_tail`: every segment with a sound
    /// header at or past `min`, by lsn, and where the first pass over the
    /// unstable tail ends (with the tear that ended it, if one did).
    fn scan_headers_and_tail(
        &self,
        min: Lsn,
        r: &mut Recovery,
    ) -> io::Result<(BTreeMap<Lsn, u64>, Lsn, Option<Region>)> {
        let len = self.log.metadata()?.len();
        let count = len / self.seg + u64::from(len % self.seg >= SEG_HEADER_LEN);
        let mut ordering = BTreeMap::new();
        let mut max_stable = min;
        for idx in 0..count {
            let offset = idx * self.seg;
            let Some((lsn, stable)) = segment_header(self.log, offset) else {
                continue;
            };
            r.segments.insert(offset, lsn);
            if lsn < min {
                continue;
            }
            max_stable = max_stable.max(stable);
            ordering.entry(lsn).or_insert(offset);
        }
        let seg = self.seg as Lsn;
        let lowest = (max_stable / seg * seg).max(0);
        let mut expected = lowest;
        let mut missing = None;
        let mut tail = BTreeMap::new();
        for (&lsn, &offset) in ordering.range(lowest..) {
            if lsn != expected {
                missing = Some(expected);
                break;
            }
            tail.insert(lsn, offset);
            expected += seg;
        }
        let mut it = Iter {
            ctx: self,
            segments: tail,
            base: None,
            max_lsn: missing,
            cur_lsn: None,
            last_stage: false,
            skipped: Vec::new(),
        };
        while it.next().is_some() {}
        let end = it.cur_lsn.unwrap_or(0) - 1;
        // Where the pass stopped, if it stopped on a damaged message before
        // the segment ran out: the tear.
        let tear = it.base.as_ref().and_then(|(offset, buf)| {
            let cur = it.cur_lsn?;
            let at = offset + (cur % seg) as u64;
            (at < offset + buf.len() as u64 && it.valid_entry(cur)).then(|| Region {
                file: self.log_path.to_path_buf(),
                offset: at,
                len: 0,
                lsn: Some(cur),
                why: "the first damaged or unwritten message of the log's tail",
            })
        });
        Ok((ordering, end, tear))
    }

    /// sled's `read_message` over a segment buffer starting at `base`.
    fn read_message(&self, buf: &[u8], base: u64, lid: u64, expected_segment: u64) -> Read {
        let at = (lid - base) as usize;
        if at > buf.len() {
            return Read::Failed;
        }
        let mut head = [0u8; 128];
        let avail = (buf.len() - at).min(128);
        head[..avail].copy_from_slice(&buf[at..at + avail]);
        let mut cur = &head[..];
        let parsed = (|| {
            let crc = u32::from_le_bytes(take(&mut cur, 4)?.try_into().ok()?);
            let kind = take(&mut cur, 1)?[0];
            let len = varint(&mut cur)?;
            let segment = varint(&mut cur)?;
            let pid = varint(&mut cur)?;
            Some((crc, kind, len, segment, pid))
        })();
        let Some((crc, kind, len, segment, pid)) = parsed else {
            return Read::Failed;
        };
        let header_len = (128 - cur.len()) as u64;
        let ceiling = lid / self.seg * self.seg + self.seg;
        if len > ceiling - lid - header_len {
            return Read::Corrupted;
        }
        let kind = if kind > BLOB_LINK { CORRUPTED } else { kind };
        if kind == CORRUPTED {
            return Read::Corrupted;
        }
        let body_at = at + header_len as usize;
        let Some(body) = buf.get(body_at..body_at + len as usize) else {
            return Read::Failed;
        };
        let mut h = crc32fast::Hasher::new();
        h.update(body);
        h.update(&head[4..header_len as usize]);
        if h.finalize() ^ 0xFFFF_FFFF != crc {
            return Read::Corrupted;
        }
        let inline_len = header_len + len;
        if segment != expected_segment {
            return Read::Corrupted;
        }
        match kind {
            CANCELED => Read::Canceled(inline_len),
            CAP => Read::Cap,
            BLOB_META | BLOB_NODE | BLOB_LINK => {
                let Ok(id) = <[u8; 8]>::try_from(body).map(i64::from_le_bytes) else {
                    return Read::Failed;
                };
                match check_blob(&self.blobs.join(id.to_string())) {
                    Blob::Sound => Read::Applied {
                        kind,
                        pid,
                        inline_len,
                        ptr: Ptr::Blob(lid, id),
                    },
                    Blob::Missing => Read::Dangling(inline_len),
                    Blob::Bad => Read::Failed,
                }
            }
            BATCH_MANIFEST => match <[u8; 8]>::try_from(body) {
                Ok(b) => Read::Manifest(i64::from_le_bytes(b), inline_len),
                Err(_) => Read::Failed,
            },
            _ => Read::Applied {
                kind,
                pid,
                inline_len,
                ptr: Ptr::Inline(lid),
            },
        }
    }

    /// Every page version the recovered state points at must read back:
    /// the message at its offset sound, its blob file there and sound.
    fn check_pages(&self, pages: &[Page], deleted: &[(PathBuf, Lsn)]) -> Vec<Region> {
        let mut bad = Vec::new();
        let mut segment_buf = Vec::new();
        let mut segment_at = None;
        for page in pages {
            let Page::Present(versions) = page else { continue };
            for &(lsn, p) in versions {
                match p {
                    Ptr::Inline(lid) => {
                        let base = lid / self.seg * self.seg;
                        if segment_at != Some(base) {
                            segment_buf.resize(self.seg as usize, 0);
                            let n = read_up_to(self.log, &mut segment_buf, base);
                            segment_buf.truncate(n);
                            segment_at = Some(base);
                        }
                        let expected = lsn as u64 / self.seg;
                        let ok = lid >= base + SEG_HEADER_LEN
                            && matches!(
                                self.read_message(&segment_buf, base, lid, expected),
                                Read::Applied { .. }
                            );
                        if !ok {
                            bad.push(Region {
                                file: self.log_path.to_path_buf(),
                                offset: lid,
                                len: 0,
                                lsn: Some(lsn),
                                why: "a page the recovered state needs does not read back",
                            });
                        }
                    }
                    Ptr::Blob(_, id) => {
                        let path = self.blobs.join(id.to_string());
                        let gone = deleted.iter().any(|(_, l)| *l == id);
                        if gone || !matches!(check_blob(&path), Blob::Sound) {
                            bad.push(Region {
                                file: path,
                                offset: 0,
                                len: 0,
                                lsn: Some(lsn),
                                why: "a page the recovered state needs is a missing or damaged blob file",
                            });
                        }
                    }
                }
            }
        }
        bad
    }
}

enum Blob {
    Sound,
    Missing,
    Bad,
}

/// sled's `read_blob` check: CRC over the kind byte and the body.
fn check_blob(path: &Path) -> Blob {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Blob::Missing,
        Err(_) => return Blob::Bad,
    };
    if bytes.len() < 5 {
        return Blob::Bad;
    }
    let crc = u32::from_le_bytes(bytes[0..4].try_into().unwrap_or_default());
    if crc32fast::hash(&bytes[4..]) != crc {
        return Blob::Bad;
    }
    Blob::Sound
}

/// The blob files of a directory with the lsn their name gives.
fn blob_files(dir: &Path) -> io::Result<Vec<(PathBuf, Lsn)>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    Ok(entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let lsn = e.file_name().to_str()?.parse::<Lsn>().ok()?;
            Some((e.path(), lsn))
        })
        .collect())
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
            let db = sled::open(dir.path()).unwrap();
            db.open_tree("queue").unwrap().insert(b"x", vec![1; 300]).unwrap();
            db.flush().unwrap();
        }
        let plan = Recovery::plan(dir.path()).unwrap();
        assert!(plan.snapshot_lsn.is_some());
        assert!(plan.skipped.is_empty() && plan.bad_pages.is_empty(), "{plan:?}");
    }
}
