//! sled's small files and their encodings: `conf`, the snapshot, the
//! varints and pointers its messages use, what recovery does with a
//! message (`apply`), and blob files.

use super::{
    BLOB_LINK, BLOB_META, BLOB_NODE, COUNTER, DEFAULT_SEGMENT_SIZE, FREE, INLINE_LINK, INLINE_META, INLINE_NODE, Lsn,
};
use std::io;
use std::path::{Path, PathBuf};

/// What `conf` says.
pub(super) enum Conf {
    Missing,
    Segment(u64),
    Bad(String),
}

/// Reads `conf` as sled does: a missing or tiny file is no configuration
/// (sled writes a new one); a wrong CRC is only warned about; a file that
/// does not parse line by line (`key: value`), or whose segment size,
/// compression or version differ from what spillway opens sled with, is
/// refused.
pub(super) fn read_conf(path: &Path) -> io::Result<Conf> {
    if sparse(path) {
        return Ok(Conf::Bad("a sparse file, not one sled wrote".into()));
    }
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
pub(super) enum Page {
    Present(Vec<(Lsn, Ptr)>),
    Free,
    Uninitialized,
}

/// Where a page version is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ptr {
    Inline(u64),
    Blob(u64, Lsn),
}

pub(super) struct Snapshot {
    pub(super) stable_lsn: Option<Lsn>,
    pub(super) pages: Vec<Page>,
}

/// Reads the newest snapshot as sled picks it (`snap.*` names, sorted, the
/// last), checks it, and parses where each page is. `Ok(Err)` when sled
/// would refuse it.
pub(super) fn read_snapshot(dir: &Path) -> io::Result<Result<Snapshot, String>> {
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
    if sparse(&dir.join(&name)) {
        return Ok(Err(format!("{name}: a sparse file, not one sled wrote")));
    }
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

pub(super) fn take<'a>(cur: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    let (head, rest) = (cur.get(..n)?, cur.get(n..)?);
    *cur = rest;
    Some(head)
}

pub(super) fn i64_le(cur: &mut &[u8]) -> Option<i64> {
    Some(i64::from_le_bytes(take(cur, 8)?.try_into().ok()?))
}

pub(super) fn unshift_i64(v: i64) -> Option<i64> {
    match v {
        0 => None,
        v if v < 0 => Some(v),
        v => Some(v - 1),
    }
}

/// sled's u64 varint.
pub(super) fn varint(cur: &mut &[u8]) -> Option<u64> {
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

pub(super) fn ptr(cur: &mut &[u8]) -> Option<Ptr> {
    match take(cur, 1)?[0] {
        0 => Some(Ptr::Inline(varint(cur)?)),
        1 => Some(Ptr::Blob(varint(cur)?, i64_le(cur)?)),
        _ => None,
    }
}

/// A message recovery applies.
pub(super) struct Item {
    pub(super) kind: u8,
    pub(super) pid: u64,
    pub(super) lsn: Lsn,
    pub(super) ptr: Ptr,
}

/// What `Snapshot::apply` does with a message.
pub(super) fn apply(pages: &mut Vec<Page>, item: Item) {
    let Ok(pid) = usize::try_from(item.pid) else {
        return;
    };
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

pub(super) enum Blob {
    Sound,
    Missing,
    Bad,
}

/// sled's `read_blob` check: CRC over the kind byte and the body.
pub(super) fn check_blob(path: &Path) -> Blob {
    if sparse(path) {
        return Blob::Bad;
    }
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
pub(super) fn blob_files(dir: &Path) -> io::Result<Vec<(PathBuf, Lsn)>> {
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

/// Whether `path` claims far more bytes than the disk holds for it (a
/// sparse file): sled writes every byte of its conf, snapshots and blobs,
/// so such a file is crafted or damaged, and reading it whole would cost
/// time and memory in proportion to its claimed length.
pub(super) fn sparse(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).is_ok_and(|m| m.len() > 2 * m.blocks() * 512 + (1 << 20))
}
