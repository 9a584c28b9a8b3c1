//! Reading sled's log as its recovery does: segment headers, messages and
//! their checks, the tear, and which pages of the recovered snapshot read
//! back.

use super::{
    BATCH_MANIFEST, BLOB_LINK, BLOB_META, BLOB_NODE, Blob, CANCELED, CAP, CORRUPTED, File, Item, Lsn,
    MAX_MSG_HEADER_LEN, Page, Ptr, Recovery, Region, SEG_HEADER_LEN, check_blob, take, varint,
};
use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub(super) struct Ctx<'a> {
    pub(super) log: &'a File,
    pub(super) log_path: &'a Path,
    pub(super) blobs: PathBuf,
    pub(super) seg: u64,
}

/// How reading one message went (sled's `LogRead`).
pub(super) enum Read {
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
pub(super) struct Iter<'a> {
    pub(super) ctx: &'a Ctx<'a>,
    pub(super) segments: BTreeMap<Lsn, u64>,
    /// The segment being read: its offset and bytes.
    pub(super) base: Option<(u64, Vec<u8>)>,
    pub(super) max_lsn: Option<Lsn>,
    pub(super) cur_lsn: Option<Lsn>,
    pub(super) last_stage: bool,
    pub(super) skipped: Vec<Region>,
}

impl Iter<'_> {
    pub(super) fn valid_entry(&self, lsn: Lsn) -> bool {
        let seg = self.ctx.seg as Lsn;
        let start = lsn / seg * seg;
        lsn >= start + SEG_HEADER_LEN as Lsn && lsn <= start + seg - MAX_MSG_HEADER_LEN as Lsn
    }

    pub(super) fn read_segment(&mut self) -> bool {
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

    pub(super) fn next(&mut self) -> Option<Item> {
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
pub(super) fn segment_header(log: &File, offset: u64) -> Option<(Lsn, Lsn)> {
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
pub(super) fn read_up_to(f: &File, buf: &mut [u8], offset: u64) -> usize {
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
    pub(super) fn scan_headers_and_tail(
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
    pub(super) fn read_message(&self, buf: &[u8], base: u64, lid: u64, expected_segment: u64) -> Read {
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
        self.message(kind, pid, lid, body, inline_len)
    }

    /// What a sound message of `kind` at `lid` with `body` is; a blob's
    /// file is checked too.
    fn message(&self, kind: u8, pid: u64, lid: u64, body: &[u8], inline_len: u64) -> Read {
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
    pub(super) fn check_pages(&self, pages: &[Page], deleted: &[(PathBuf, Lsn)]) -> Vec<Region> {
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
