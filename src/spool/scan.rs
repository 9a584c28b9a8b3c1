//! Reading a spool's raw files, without sled and without writing: the one
//! reader under the read-only commands, the open-time damage check and
//! salvage.
//!
//! sled writes every value byte for byte into its log (`db`) or a blob
//! file, and rewrites pages as they change, so the files hold each live
//! record at least once, and stale copies of records long gone. Everything
//! spillway stores is self-framed and CRC-checked ([`super::record`],
//! [`super::state`]), so a scan finds it by its magic wherever it lies:
//! records (`SPWL`), state frames (`SPST`), quarantined records (`SPQR`)
//! and the watermarks of spools written before state frames (`SPWM`).
//!
//! The scan streams each file in [`CHUNK`]-byte windows (a record that
//! runs past a window is read on its own), so memory stays bounded
//! whatever the files' sizes: a window, the largest record, and one small
//! entry per distinct record found. It keeps, per record, where one sound
//! copy lies; per state frame round, every copy (the damage check wants
//! the earliest). It reads the spool directory and its `blobs/`, nothing
//! else (not the set-aside directories, not the ledger).

use super::record::{self, Tree};
use super::state::{self, State};
use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Bytes read at a time.
pub(crate) const CHUNK: usize = 4 << 20;
/// Candidates that fail their checks kept for the report at most.
const MAX_UNREADABLE: usize = 10_000;
const WATERMARK_MAGIC: [u8; 4] = *b"SPWM";

/// Where something was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct At {
    /// Index into [`Scan::files`].
    pub file: usize,
    /// Byte offset in it.
    pub offset: u64,
    /// Its length.
    pub len: u32,
}

/// A sound record found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SoundRecord {
    /// Where its first copy lies.
    pub at: At,
    /// Its tree, sequence, span count and creation time (from its header).
    pub meta: record::Meta,
    /// Spans it declares.
    pub spans: u32,
    /// Its format version.
    pub version: u8,
    /// Copies found.
    pub copies: u32,
    /// A damaged copy of which only the sound blocks are kept (`spans`
    /// counts those; [`Scan::read_record`] reads them as a sound record).
    pub mended: bool,
}

/// A quarantined record found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuarantinedFrame {
    /// Where it lies.
    pub at: At,
    /// Its frame's fields.
    pub frame: state::Quarantined,
}

/// A candidate that is not a sound record.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Unreadable {
    /// The file.
    pub file: PathBuf,
    /// Byte offset of the candidate.
    pub offset: u64,
    /// Why it is not a sound record.
    pub reason: String,
    /// Its tree and sequence, if its header could be read.
    #[serde(skip)]
    pub seq: Option<(Tree, u64)>,
}

/// What a scan found.
#[derive(Debug, Default)]
pub struct Scan {
    /// The files scanned.
    pub files: Vec<PathBuf>,
    /// Bytes scanned.
    pub bytes: u64,
    /// Sound records by (tree, sequence, CRC), in sequence order.
    pub records: BTreeMap<(u8, u64, u32), SoundRecord>,
    /// Sound state frames by round: the frame and every copy's place.
    pub states: BTreeMap<u64, (State, Vec<At>)>,
    /// Sound quarantine frames by their key.
    pub quarantined: BTreeMap<u64, QuarantinedFrame>,
    /// The highest sound watermark of spools written before state frames.
    pub watermark: Option<u64>,
    /// Candidates that were not sound.
    pub unreadable: Vec<Unreadable>,
    /// Files that could not be read: path and why.
    pub unreadable_files: Vec<(PathBuf, String)>,
}

impl Scan {
    /// Scans the spool files in `dir`: its regular files but the ledger and
    /// lock, and those of `blobs/`.
    pub fn dir(dir: &Path) -> io::Result<Scan> {
        let mut files = regular_files(dir)?;
        files.retain(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            name != super::ledger::FILE && name != super::LOCK_FILE
        });
        files.extend(regular_files(&dir.join("blobs"))?);
        let mut scan = Scan::default();
        for path in files {
            let i = scan.files.len();
            scan.files.push(path.clone());
            if let Err(e) = scan.file(i, &path) {
                scan.unreadable_files.push((path, e.to_string()));
            }
        }
        Ok(scan)
    }

    /// Scans one file, a window at a time.
    fn file(&mut self, i: usize, path: &Path) -> io::Result<()> {
        let f = File::open(path)?;
        let len = f.metadata()?.len();
        self.bytes += len;
        // Windows overlap by the longest fixed-size frame, so nothing that
        // straddles two windows is missed, and nothing is seen twice.
        const OVERLAP: usize = state::LEN;
        let mut buf = vec![0u8; CHUNK + OVERLAP];
        let mut start = 0u64;
        while start < len {
            // A hole reads as zeros, where no frame starts: skip to the
            // window holding the next data, so a sparse file costs what
            // it really holds.
            match rustix::fs::seek(&f, rustix::fs::SeekFrom::Data(start)) {
                Ok(data) if data > start => start = data / CHUNK as u64 * CHUNK as u64,
                Err(rustix::io::Errno::NXIO) => break,
                _ => {}
            }
            if start >= len {
                break;
            }
            let want = ((len - start) as usize).min(buf.len());
            f.read_exact_at(&mut buf[..want], start)?;
            let limit = if start + want as u64 >= len { want } else { CHUNK };
            self.window(i, &f, len, start, &buf[..want], limit);
            start += CHUNK as u64;
        }
        Ok(())
    }

    /// Looks at every candidate starting before `limit` in `bytes` (which
    /// start at `base` in a file of `len` bytes).
    fn window(&mut self, i: usize, f: &File, len: u64, base: u64, bytes: &[u8], limit: usize) {
        for at in memchr::memmem::find_iter(bytes, b"SP") {
            if at >= limit {
                break;
            }
            let Some(tag) = bytes.get(at + 2..at + 4) else { continue };
            let offset = base + at as u64;
            match tag {
                b"WL" => self.record(i, f, len, offset, &bytes[at..]),
                b"ST" => {
                    if let Some((s, len)) = State::decode_framed(&bytes[at..]) {
                        let place = At {
                            file: i,
                            offset,
                            len: len as u32,
                        };
                        self.states.entry(s.round).or_insert((s, Vec::new())).1.push(place);
                    }
                }
                b"QR" => self.quarantine(i, f, len, offset, &bytes[at..]),
                b"WM" => {
                    if let Some(w) = bytes.get(at..at + 16).and_then(watermark) {
                        self.watermark = self.watermark.max(Some(w));
                    }
                }
                _ => {}
            }
        }
    }

    /// The bytes of a candidate of `need` bytes at `offset`: from the
    /// window if they are all there, else read on their own.
    fn whole<'a>(f: &File, len: u64, offset: u64, here: &'a [u8], need: usize) -> Option<std::borrow::Cow<'a, [u8]>> {
        if here.len() >= need {
            return Some(std::borrow::Cow::Borrowed(&here[..need]));
        }
        if offset + need as u64 > len {
            return None;
        }
        let mut buf = vec![0u8; need];
        f.read_exact_at(&mut buf, offset).ok()?;
        Some(std::borrow::Cow::Owned(buf))
    }

    fn record(&mut self, i: usize, f: &File, len: u64, offset: u64, here: &[u8]) {
        if here.get(0..4) != Some(&record::MAGIC[..]) {
            return;
        }
        let header = match record::peek_header(here) {
            Ok(h) => h,
            // Not even a header: stale or unwritten bytes, nothing owed.
            Err(_) => return,
        };
        let need = header.record_len();
        let seq = Some((header.meta.tree, header.meta.seq));
        // What the file holds of it, up to its declared end.
        let have = need.min(usize::try_from(len.saturating_sub(offset)).unwrap_or(need));
        let Some(bytes) = Self::whole(f, len, offset, here, have) else {
            return self.bad(i, offset, "cannot be read".into(), seq);
        };
        let why = if have < need {
            format!("cut short: {need} bytes from the end of the file")
        } else {
            match record::check(&bytes) {
                Ok(_) => return self.found(i, offset, &bytes, header, header.spans, false),
                Err(e) => e.to_string(),
            }
        };
        match record::mend(&bytes) {
            Some(m) => {
                self.found(i, offset, &bytes, header, m.kept, true);
                self.bad(
                    i,
                    offset,
                    format!(
                        "{why}; {} of its {} spans kept from its sound blocks",
                        m.kept, header.spans
                    ),
                    seq,
                );
            }
            None => self.bad(i, offset, why, seq),
        }
    }

    /// Notes a record (sound, or `mended` to `spans`) whose copy at
    /// `offset` is `bytes`.
    fn found(&mut self, i: usize, offset: u64, bytes: &[u8], header: record::Header, spans: u32, mended: bool) {
        let crc = crc32fast::hash(bytes);
        let key = (header.meta.tree as u8, header.meta.seq, crc);
        let found = SoundRecord {
            at: At {
                file: i,
                offset,
                len: bytes.len() as u32,
            },
            meta: header.meta,
            spans,
            version: header.version,
            copies: 0,
            mended,
        };
        self.records.entry(key).or_insert(found).copies += 1;
    }

    fn quarantine(&mut self, i: usize, f: &File, len: u64, offset: u64, here: &[u8]) {
        let Some(head) = here.get(..state::QUARANTINE_HEADER) else {
            return;
        };
        let n = u32::from_le_bytes(head[20..24].try_into().unwrap_or_default()) as usize;
        if n > record::MAX_PAYLOAD + record::HEADER_LEN {
            return;
        }
        let Some(bytes) = Self::whole(f, len, offset, here, state::QUARANTINE_HEADER + n) else {
            return;
        };
        if let Some((q, _)) = state::unquarantine(&bytes) {
            let at = At {
                file: i,
                offset,
                len: (state::QUARANTINE_HEADER + n) as u32,
            };
            self.quarantined
                .entry(q.key)
                .or_insert(QuarantinedFrame { at, frame: q });
        }
    }

    fn bad(&mut self, i: usize, offset: u64, reason: String, seq: Option<(Tree, u64)>) {
        if self.unreadable.len() < MAX_UNREADABLE {
            self.unreadable.push(Unreadable {
                file: self.files[i].clone(),
                offset,
                reason,
                seq,
            });
        }
    }

    /// Reads the bytes at `at` again.
    pub fn read(&self, at: At) -> io::Result<Vec<u8>> {
        let f = File::open(&self.files[at.file])?;
        let mut buf = vec![0u8; at.len as usize];
        f.read_exact_at(&mut buf, at.offset)?;
        Ok(buf)
    }

    /// The bytes of the record `found` names, as a sound record: a mended
    /// one's sound blocks under its head.
    pub fn read_record(&self, found: &SoundRecord) -> io::Result<Vec<u8>> {
        let bytes = self.read(found.at)?;
        if !found.mended {
            return Ok(bytes);
        }
        record::mend(&bytes)
            .map(|m| m.record)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "its sound blocks changed since the scan"))
    }

    /// The newest sound state frame.
    pub fn newest_state(&self) -> Option<State> {
        self.states.values().next_back().map(|(s, _)| *s)
    }
}

/// The framed watermark of spools written before state frames: magic, the
/// lowest key still owed (u64 LE), CRC32 of the first 12 bytes.
fn watermark(w: &[u8]) -> Option<u64> {
    if w.get(0..4)? != WATERMARK_MAGIC {
        return None;
    }
    let crc = u32::from_le_bytes(w.get(12..16)?.try_into().ok()?);
    (crc32fast::hash(&w[..12]) == crc).then(|| u64::from_le_bytes(w[4..12].try_into().unwrap_or_default()))
}

/// The regular files directly in `dir`, sorted (none if it is missing).
fn regular_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_found_across_windows_and_in_pieces_too_long_for_one() {
        let dir = tempfile::tempdir().unwrap();
        let spans = crate::spool::tests::spans(300, "x");
        let mut bytes = vec![0u8; CHUNK - 40];
        let meta = record::Meta {
            seq: 5,
            tree: Tree::Queue,
            created_unix_ms: 1,
        };
        record::encode("svc", &spans, meta, &mut bytes).unwrap();
        let frame = State {
            round: 3,
            ..State::default()
        };
        bytes.resize(2 * CHUNK - 50, 0);
        bytes.extend_from_slice(&frame.encode());
        bytes.extend_from_slice(b"SPWL junk");
        std::fs::write(dir.path().join("db"), &bytes).unwrap();
        let scan = Scan::dir(dir.path()).unwrap();
        assert_eq!(scan.records.len(), 1, "{scan:?}");
        let found = scan.records.values().next().unwrap();
        assert_eq!(
            (found.meta.seq, found.spans, found.at.offset),
            (5, 300, CHUNK as u64 - 40)
        );
        assert_eq!(scan.newest_state().map(|s| s.round), Some(3));
        let again = record::decode(&scan.read(found.at).unwrap()).unwrap();
        assert_eq!(again.spans.len(), 300);
    }

    #[test]
    fn a_damaged_record_gives_its_sound_blocks_and_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let meta = |seq| record::Meta {
            seq,
            tree: Tree::Queue,
            created_unix_ms: 1,
        };
        let mut bytes = vec![0u8; 100];
        record::encode("svc", &crate::spool::tests::spans(300, "a"), meta(1), &mut bytes).unwrap();
        let second = bytes.len();
        record::encode("svc", &crate::spool::tests::spans(200, "b"), meta(2), &mut bytes).unwrap();
        // A byte in the first record's third block, and the second cut
        // short by the end of the file, after its first two blocks.
        let first_blocks = {
            let r = &bytes[100..second];
            let h = record::check(r).unwrap();
            record::blocks(r, &h, false)
                .unwrap()
                .iter()
                .map(|b| 100 + b.at)
                .collect::<Vec<_>>()
        };
        bytes[first_blocks[2] + 20] ^= 0x40;
        let cut = {
            let r = &bytes[second..];
            let h = record::check(r).unwrap();
            second + record::blocks(r, &h, false).unwrap()[2].at + 5
        };
        bytes.truncate(cut);
        std::fs::write(dir.path().join("db"), &bytes).unwrap();
        let scan = Scan::dir(dir.path()).unwrap();
        let found: Vec<&SoundRecord> = scan.records.values().collect();
        assert_eq!(
            found
                .iter()
                .map(|f| (f.meta.seq, f.spans, f.mended))
                .collect::<Vec<_>>(),
            [(1, 300 - 64, true), (2, 128, true)]
        );
        for f in &found {
            let r = record::decode(&scan.read_record(f).unwrap()).unwrap();
            assert_eq!(r.spans.len() as u32, f.spans);
        }
        let named: Vec<(u64, &str)> = scan.unreadable.iter().map(|u| (u.offset, u.reason.as_str())).collect();
        assert_eq!(named.len(), 2, "{named:?}");
        assert_eq!(named[0].0, 100);
        assert!(
            named[0].1.contains(&format!("block at byte {}", first_blocks[2] - 100)),
            "{named:?}"
        );
        assert!(
            named[0].1.ends_with("236 of its 300 spans kept from its sound blocks"),
            "{named:?}"
        );
        assert_eq!(named[1].0, second as u64);
        assert!(named[1].1.starts_with("cut short"), "{named:?}");
        assert!(
            named[1].1.ends_with("128 of its 200 spans kept from its sound blocks"),
            "{named:?}"
        );
    }
}
