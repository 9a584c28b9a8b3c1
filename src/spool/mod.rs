//! The durable queue: batches the collector could not take, on disk, in
//! order, until it can.
//!
//! A spool is a sled database in one directory with four trees:
//!
//! | tree | key | value |
//! |---|---|---|
//! | `queue` | big-endian u64 sequence | a [`record`] (one batch) |
//! | `dead` | the sequence it had in `queue` | a record of the spans the collector refused for good |
//! | `quarantine` | the sequence it had in `queue` | the raw bytes of a record that failed its checks |
//! | `meta` | `next_seq` | the next sequence, big-endian u64 |
//!
//! ## Guarantees
//! - **Order**: keys are big-endian sequence numbers, so sled's order is
//!   FIFO; the next sequence is persisted with every push and survives
//!   restarts.
//! - **Durability point**: [`Spool::push`] returns only after sled's
//!   `flush` has synced the records to disk. A `kill -9` or a power loss
//!   after that costs nothing that was pushed; one before it costs only the
//!   batch being pushed (which the caller has not reported as spilled).
//! - **At-least-once**: a record leaves `queue` only through [`Spool::ack`]
//!   (after a 2xx), [`Spool::dead_letter`] or [`Spool::quarantine`]. Acks
//!   are not synced individually, so a crash right after a delivery can
//!   replay that record once more: a duplicate, never a loss.
//! - **Damage**: a record that fails its CRC or does not decode is moved,
//!   byte for byte, to `quarantine` and reported by key; the queue goes on.
//! - **Ownership**: one process at a time. A second opener gets
//!   [`SpoolError::InUse`] naming the directory, after waiting up to
//!   [`LOCK_WAIT`] for an owner that is shutting down.
//! - **Bounds**: each record holds at most [`RECORD_TARGET`] bytes of
//!   payload where the spans allow (sled keeps larger values as separate
//!   files it reclaims poorly) and at most [`RECORD_MAX_SPANS`] spans; the queue is capped at `max_bytes` of
//!   records, past which the oldest records are dropped and their spans
//!   reported to the caller for counting.
//!
//! The spool knows nothing of HTTP or Zipkin: spans in, spans out.

pub mod record;

use crate::span::Span;
use record::RecordError;
use std::path::{Path, PathBuf};

/// How long [`Spool::open`] waits for a lock another owner is releasing.
pub const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Target payload size of one record.
pub const RECORD_TARGET: usize = 64 << 10;
/// Most spans in one record, so replay (budgeted in spans, a record at a
/// time) and its requests stay fine-grained however well records compress.
pub const RECORD_MAX_SPANS: usize = 1024;

/// Why the spool could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// Another process holds the directory.
    #[error("spool {} is in use by another process", dir.display())]
    InUse {
        /// The spool directory.
        dir: PathBuf,
    },
    /// sled or the file system failed.
    #[error("spool {}: {source}", dir.display())]
    Storage {
        /// The spool directory.
        dir: PathBuf,
        /// What sled said.
        source: sled::Error,
    },
    /// A batch could not be framed.
    #[error("spool {}: {source}", dir.display())]
    Record {
        /// The spool directory.
        dir: PathBuf,
        /// What was wrong.
        source: RecordError,
    },
}

/// A record in the queue, as [`Spool::oldest`] returns it.
#[derive(Debug)]
pub struct Entry {
    /// Its sequence number.
    pub key: u64,
    /// Its size in bytes.
    pub bytes: usize,
    /// Its spans, or why it cannot be read.
    pub spans: Result<Vec<Span>, RecordError>,
    /// The span count its header declares (0 when the header is unreadable).
    pub declared_spans: u64,
    /// When it was first written, unix milliseconds (0 when unreadable).
    pub created_unix_ms: u64,
    raw: sled::IVec,
}

/// Counts kept for stats, as of now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpoolStats {
    /// Records in the queue.
    pub records: u64,
    /// Spans in the queue (as their headers declare).
    pub spans: u64,
    /// Bytes of records in the queue.
    pub bytes: u64,
    /// Spans in the dead-letter tree.
    pub dead_letter_spans: u64,
    /// Records in quarantine.
    pub quarantined_records: u64,
}

/// The durable queue. See the module docs for its guarantees.
pub struct Spool {
    dir: PathBuf,
    db: sled::Db,
    queue: sled::Tree,
    dead: sled::Tree,
    quarantine: sled::Tree,
    meta: sled::Tree,
    next_seq: u64,
    max_bytes: u64,
    stats: SpoolStats,
    /// Spans dropped to make room that no caller has been told of yet.
    dropped_unreported: u64,
    buf: Vec<u8>,
}

const NEXT_SEQ: &[u8] = b"next_seq";

fn be(key: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    let n = key.len().min(8);
    a[8 - n..].copy_from_slice(&key[key.len() - n..]);
    u64::from_be_bytes(a)
}

impl Spool {
    /// Opens (or creates) the spool in `dir`, capped at `max_bytes` of records.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Spool, SpoolError> {
        let storage = |source| SpoolError::Storage {
            dir: dir.to_path_buf(),
            source,
        };
        // sled releases its lock when its last reference goes, which can be
        // a moment after the previous owner in this process dropped it (its
        // I/O threads finish their writes first); wait a bounded while
        // before calling the directory taken.
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        let db = loop {
            let opened = sled::Config::new()
                .path(dir)
                .cache_capacity(32 << 20)
                .flush_every_ms(Some(1000))
                .open();
            match opened {
                Ok(db) => break db,
                Err(sled::Error::Io(io)) if is_lock_error(&io) => {
                    if std::time::Instant::now() >= deadline {
                        return Err(SpoolError::InUse { dir: dir.to_path_buf() });
                    }
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(other) => return Err(storage(other)),
            }
        };
        let tree = |name: &str| db.open_tree(name).map_err(storage);
        let (queue, dead, quarantine, meta) = (tree("queue")?, tree("dead")?, tree("quarantine")?, tree("meta")?);
        let mut next_seq = meta.get(NEXT_SEQ).map_err(storage)?.map_or(0, |v| be(&v));
        for t in [&queue, &dead, &quarantine] {
            if let Some((k, _)) = t.last().map_err(storage)? {
                next_seq = next_seq.max(be(&k).saturating_add(1));
            }
        }
        let mut stats = SpoolStats::default();
        for item in queue.iter() {
            let (_, v) = item.map_err(storage)?;
            stats.records += 1;
            stats.bytes += v.len() as u64;
            stats.spans += declared_spans(&v);
        }
        for item in dead.iter() {
            let (_, v) = item.map_err(storage)?;
            stats.dead_letter_spans += declared_spans(&v);
        }
        stats.quarantined_records = quarantine.len() as u64;
        Ok(Spool {
            dir: dir.to_path_buf(),
            db,
            queue,
            dead,
            quarantine,
            meta,
            next_seq,
            max_bytes,
            stats,
            dropped_unreported: 0,
            buf: Vec::new(),
        })
    }

    /// The spool directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn storage(&self, source: sled::Error) -> SpoolError {
        SpoolError::Storage {
            dir: self.dir.clone(),
            source,
        }
    }

    /// Current counts, kept in memory: free to call on every flush.
    pub fn stats(&self) -> SpoolStats {
        self.stats
    }

    /// sled's own size on disk. It reads file metadata and scans sled's
    /// blob directory, so it is for reports, not for the flush path.
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    /// Appends `spans` as one or more records and syncs them to disk (the
    /// durability point). If the queue would exceed its cap, the oldest
    /// records are dropped first; returns how many spans that dropped.
    ///
    /// If the sync fails, the records are taken out again (as far as a
    /// failed sled allows), so the spool counts only what it reported as
    /// spilled; spans dropped to
    /// make room stay dropped and are reported by [`Spool::take_dropped`].
    pub fn push(&mut self, spans: &[Span], now_unix_ms: u64) -> Result<u64, SpoolError> {
        let written = self.append_records(spans, now_unix_ms)?;
        if let Err(e) = self.sync() {
            for (key, bytes, n) in written {
                // Best effort: a failed sled refuses further writes. The
                // counts are undone regardless; a record that did reach the
                // disk is found and counted when the spool is reopened.
                let _ = self.queue.remove(key.to_be_bytes());
                self.forget(bytes, u64::from(n));
            }
            return Err(e);
        }
        Ok(self.take_dropped())
    }

    /// [`Spool::push`] without the sync: not durable until [`Spool::sync`].
    pub fn append(&mut self, spans: &[Span], now_unix_ms: u64) -> Result<u64, SpoolError> {
        self.append_records(spans, now_unix_ms)?;
        Ok(self.take_dropped())
    }

    /// Spans dropped to make room since the last call (also after a failed
    /// push, whose drops were still made).
    pub fn take_dropped(&mut self) -> u64 {
        std::mem::take(&mut self.dropped_unreported)
    }

    /// Writes `spans` as records (unsynced); returns each record's key,
    /// size and span count.
    fn append_records(&mut self, spans: &[Span], now_unix_ms: u64) -> Result<Vec<(u64, usize, u32)>, SpoolError> {
        if spans.is_empty() {
            return Ok(Vec::new());
        }
        let mut records: Vec<(u64, Vec<u8>, u32)> = Vec::new();
        let mut rest = spans;
        let mut per_record = spans.len().min(RECORD_MAX_SPANS);
        while !rest.is_empty() {
            let n = per_record.min(rest.len());
            self.buf.clear();
            record::encode(&rest[..n], now_unix_ms, &mut self.buf).map_err(|source| SpoolError::Record {
                dir: self.dir.clone(),
                source,
            })?;
            let payload = self.buf.len() - record::HEADER_LEN;
            if payload > RECORD_TARGET && n > 1 {
                // Aim for the target from the size seen, with some margin.
                per_record = (n * RECORD_TARGET / payload * 9 / 10).clamp(1, n - 1);
                continue;
            }
            records.push((self.next_seq, self.buf.clone(), n as u32));
            self.next_seq += 1;
            rest = &rest[n..];
        }
        let incoming: u64 = records.iter().map(|(_, r, _)| r.len() as u64).sum();
        self.make_room(incoming)?;
        let mut batch = sled::Batch::default();
        for (key, bytes, _) in &records {
            batch.insert(&key.to_be_bytes(), bytes.as_slice());
        }
        self.queue.apply_batch(batch).map_err(|e| self.storage(e))?;
        self.meta
            .insert(NEXT_SEQ, &self.next_seq.to_be_bytes())
            .map_err(|e| self.storage(e))?;
        for (_, bytes, n) in &records {
            self.stats.records += 1;
            self.stats.bytes += bytes.len() as u64;
            self.stats.spans += u64::from(*n);
        }
        Ok(records
            .into_iter()
            .map(|(key, bytes, n)| (key, bytes.len(), n))
            .collect())
    }

    /// Drops the oldest records until `incoming` more bytes fit the cap,
    /// adding their spans to the unreported drops.
    fn make_room(&mut self, incoming: u64) -> Result<(), SpoolError> {
        while self.stats.records > 0 && self.stats.bytes + incoming > self.max_bytes {
            let Some((_, v)) = self.queue.pop_min().map_err(|e| self.storage(e))? else {
                break;
            };
            let spans = declared_spans(&v);
            self.forget(v.len(), spans);
            self.dropped_unreported += spans;
        }
        Ok(())
    }

    /// Drops records created more than `max_age_ms` before `now_unix_ms`,
    /// oldest first; returns how many spans that dropped. A record whose
    /// header cannot be read is left for replay to quarantine.
    pub fn expire(&mut self, now_unix_ms: u64, max_age_ms: u64) -> Result<u64, SpoolError> {
        let mut dropped_spans = 0;
        let cutoff = now_unix_ms.saturating_sub(max_age_ms);
        loop {
            let Some((k, v)) = self.queue.first().map_err(|e| self.storage(e))? else {
                break;
            };
            let Ok(h) = record::header(&v) else { break };
            if h.created_unix_ms >= cutoff {
                break;
            }
            if self.queue.remove(&k).map_err(|e| self.storage(e))?.is_some() {
                self.forget(v.len(), u64::from(h.spans));
                dropped_spans += u64::from(h.spans);
            }
        }
        Ok(dropped_spans)
    }

    fn forget(&mut self, bytes: usize, spans: u64) {
        self.stats.records = self.stats.records.saturating_sub(1);
        self.stats.bytes = self.stats.bytes.saturating_sub(bytes as u64);
        self.stats.spans = self.stats.spans.saturating_sub(spans);
    }

    /// Up to `max_records` of the oldest records, decoded.
    pub fn oldest(&self, max_records: usize) -> Result<Vec<Entry>, SpoolError> {
        let mut out = Vec::new();
        for item in self.queue.iter().take(max_records) {
            let (k, v) = item.map_err(|e| self.storage(e))?;
            let header = record::header(&v).ok();
            out.push(Entry {
                key: be(&k),
                bytes: v.len(),
                spans: record::decode(&v).map(|r| r.spans),
                declared_spans: header.map_or(0, |h| u64::from(h.spans)),
                created_unix_ms: header.map_or(0, |h| h.created_unix_ms),
                raw: v,
            });
        }
        Ok(out)
    }

    /// Removes a delivered record. Not synced on its own: see the module docs.
    pub fn ack(&mut self, entry: &Entry) -> Result<(), SpoolError> {
        if self
            .queue
            .remove(entry.key.to_be_bytes())
            .map_err(|e| self.storage(e))?
            .is_some()
        {
            self.forget(entry.bytes, entry.declared_spans);
        }
        Ok(())
    }

    /// Keeps spans the collector refused for good in the dead-letter tree,
    /// under a fresh sequence number. Synced.
    pub fn add_dead(&mut self, refused: &[Span], now_unix_ms: u64) -> Result<(), SpoolError> {
        if refused.is_empty() {
            return Ok(());
        }
        self.buf.clear();
        record::encode(refused, now_unix_ms, &mut self.buf).map_err(|source| SpoolError::Record {
            dir: self.dir.clone(),
            source,
        })?;
        let key = self.next_seq;
        self.next_seq += 1;
        self.dead
            .insert(key.to_be_bytes(), self.buf.as_slice())
            .map_err(|e| self.storage(e))?;
        self.meta
            .insert(NEXT_SEQ, &self.next_seq.to_be_bytes())
            .map_err(|e| self.storage(e))?;
        self.db.flush().map_err(|e| self.storage(e))?;
        self.stats.dead_letter_spans += refused.len() as u64;
        Ok(())
    }

    /// Moves `entry` out of the queue, keeping the `refused` spans in the
    /// dead-letter tree (the rest were delivered). Synced when anything was
    /// refused; a plain acknowledgement is not (see the module docs).
    pub fn dead_letter(&mut self, entry: &Entry, refused: &[Span], now_unix_ms: u64) -> Result<(), SpoolError> {
        self.add_dead(refused, now_unix_ms)?;
        self.ack(entry)
    }

    /// Moves a record that failed its checks to quarantine, bytes intact. Synced.
    pub fn quarantine(&mut self, entry: &Entry) -> Result<(), SpoolError> {
        self.quarantine
            .insert(entry.key.to_be_bytes(), entry.raw.clone())
            .map_err(|e| self.storage(e))?;
        self.stats.quarantined_records += 1;
        self.ack(entry)?;
        self.db.flush().map_err(|e| self.storage(e))?;
        Ok(())
    }

    /// Writes everything to disk now.
    pub fn sync(&self) -> Result<(), SpoolError> {
        self.db.flush().map(|_| ()).map_err(|e| self.storage(e))
    }
}

/// The span count a record's header declares; 0 when it is unreadable.
fn declared_spans(record: &[u8]) -> u64 {
    record::header(record).map_or(0, |h| u64::from(h.spans))
}

fn is_lock_error(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::WouldBlock || e.to_string().contains("lock")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::span::{Kind, Status, Value};

    fn spans(n: usize, tag: &str) -> Vec<Span> {
        (0..n)
            .map(|i| Span {
                trace_id: [1; 16],
                span_id: (i as u64 + 1).to_be_bytes(),
                parent_id: None,
                name: format!("{tag}-{i}").into(),
                kind: Kind::Server,
                start_unix_nanos: 1,
                end_unix_nanos: 2,
                status: Status::Ok,
                // Random, so records cannot deflate below the split size.
                attributes: vec![(
                    "k".into(),
                    Value::Str((0..100).map(|_| fastrand::alphanumeric()).collect()),
                )],
                events: Default::default(),
                dropped_attributes: 0,
                dropped_events: 0,
            })
            .collect()
    }

    fn names(entries: &[Entry]) -> Vec<String> {
        entries
            .iter()
            .flat_map(|e| e.spans.as_ref().unwrap().iter().map(|s| s.name.to_string()))
            .collect()
    }

    #[test]
    fn fifo_across_reopen_and_records_stay_small() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = Spool::open(dir.path(), u64::MAX).unwrap();
            s.push(&spans(2000, "a"), 1).unwrap();
            s.push(&spans(3, "b"), 2).unwrap();
            assert_eq!(s.stats().spans, 2003);
        }
        let mut s = Spool::open(dir.path(), u64::MAX).unwrap();
        assert_eq!(s.stats().spans, 2003);
        let all = s.oldest(usize::MAX).unwrap();
        assert!(all.len() > 2, "2000 spans of ~150 bytes must be split");
        assert!(all.iter().all(|e| e.bytes <= RECORD_TARGET + record::HEADER_LEN));
        let got = names(&all);
        assert_eq!(got.first().map(String::as_str), Some("a-0"));
        assert_eq!(got.last().map(String::as_str), Some("b-2"));
        assert_eq!(got.len(), 2003);
        for e in &all[..all.len() - 1] {
            s.ack(e).unwrap();
        }
        s.push(&spans(1, "c"), 3).unwrap();
        let rest = names(&s.oldest(10).unwrap());
        assert_eq!(rest, ["b-0", "b-1", "b-2", "c-0"]);
    }

    #[test]
    fn second_opener_is_told_the_directory_is_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Spool::open(dir.path(), u64::MAX).unwrap();
        let err = Spool::open(dir.path(), u64::MAX).err().expect("second open must fail");
        assert!(matches!(err, SpoolError::InUse { .. }), "{err:?}");
        assert!(err.to_string().contains(&dir.path().display().to_string()), "{err}");
    }

    #[test]
    fn cap_drops_oldest_and_reports_spans() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 20_000).unwrap();
        let mut dropped = 0;
        for i in 0..10 {
            dropped += s.push(&spans(50, &format!("r{i}")), i).unwrap();
        }
        let st = s.stats();
        assert!(st.bytes <= 20_000, "{st:?}");
        assert_eq!(st.spans + dropped, 500);
        let names = names(&s.oldest(usize::MAX).unwrap());
        assert_eq!(names.last().map(String::as_str), Some("r9-49"), "newest kept");
        assert!(!names.iter().any(|n| n.starts_with("r0-")), "oldest dropped");
    }

    #[test]
    fn expire_drops_only_records_past_the_age() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), u64::MAX).unwrap();
        s.push(&spans(3, "old"), 1_000).unwrap();
        s.push(&spans(4, "older-but-kept"), 2_600).unwrap();
        s.push(&spans(5, "new"), 3_000).unwrap();
        assert_eq!(s.expire(3_500, 1_000).unwrap(), 3);
        assert_eq!(s.stats().spans, 9);
        assert_eq!(names(&s.oldest(1).unwrap())[0], "older-but-kept-0");
        assert_eq!(s.expire(3_500, 1_000).unwrap(), 0);
    }

    #[test]
    fn dead_letters_and_quarantine_leave_the_queue() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), u64::MAX).unwrap();
        s.push(&spans(2, "x"), 1).unwrap();
        s.push(&spans(2, "y"), 1).unwrap();
        let entries = s.oldest(2).unwrap();
        let refused = &entries[0].spans.as_ref().unwrap()[..1];
        s.dead_letter(&entries[0], refused, 5).unwrap();
        s.quarantine(&entries[1]).unwrap();
        let st = s.stats();
        assert_eq!(
            (st.records, st.spans, st.dead_letter_spans, st.quarantined_records),
            (0, 0, 1, 1)
        );
        drop(s);
        let s = Spool::open(dir.path(), u64::MAX).unwrap();
        assert_eq!(s.stats().dead_letter_spans, 1);
        assert_eq!(s.stats().quarantined_records, 1);
        // Sequence numbers are never reused, even with the queue empty.
        let mut s = s;
        s.push(&spans(1, "z"), 1).unwrap();
        assert!(s.oldest(1).unwrap()[0].key >= 2);
    }
}
