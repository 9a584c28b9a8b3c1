//! Writing records: a batch encoded into records of at most
//! [`RECORD_TARGET`] bytes ([`prepare`], on any thread), numbered and
//! inserted (unsynced until [`Spool::commit`]); salvage's restores and its
//! resume markers.

use crate::span::packed::Run;

use super::{
    Meta, NEXT_SEQ, RECORD_MAX_SPANS, RECORD_TARGET, RecordError, Span, Spool, SpoolError, Tree, declared_spans,
    record, salvage, state,
};

/// A batch encoded as queue records, not yet numbered: what [`prepare`]
/// makes and [`Spool::append_prepared`] takes.
#[derive(Debug, Default)]
pub(crate) struct Prepared {
    /// Each record's bytes and span count.
    pub(super) records: Vec<(Vec<u8>, u32)>,
    /// When they were spilled (Unix ms).
    pub(super) created_unix_ms: u64,
    /// Spans left out because even alone they make a record too large
    /// to write or to read back, and the largest such payload.
    pub(super) oversize: u64,
    pub(super) largest_oversize: usize,
}

impl Prepared {
    /// Spans left out as too large for any record (counted as oversize
    /// by whoever spills them).
    pub(crate) fn oversize(&self) -> u64 {
        self.oversize
    }

    /// The bytes of its records.
    pub(crate) fn bytes(&self) -> u64 {
        self.records.iter().map(|(r, _)| r.len() as u64).sum()
    }

    /// The spans its records hold, decoded back in order, and how many a
    /// record that would not decode held (none unless memory was damaged).
    pub(crate) fn spans(&self) -> (Vec<Span>, u64) {
        let mut spans = Vec::with_capacity(self.records.iter().map(|&(_, n)| n as usize).sum());
        let mut lost = 0;
        for (bytes, n) in &self.records {
            match record::decode(bytes) {
                Ok(r) => spans.extend(r.spans),
                Err(_) => lost += u64::from(*n),
            }
        }
        (spans, lost)
    }
}

/// Encodes `service`'s `spans` as queue records: [`prepare_run`] of the
/// spans packed.
pub(crate) fn prepare(service: &str, spans: &[Span], created_unix_ms: u64) -> Prepared {
    let mut run = Run::default();
    spans.iter().for_each(|span| run.push(span));
    prepare_run(service, &run, created_unix_ms)
}

/// Encodes `service`'s spans in `run` as queue records of at most
/// [`RECORD_TARGET`] payload bytes (where the spans allow) and
/// [`RECORD_MAX_SPANS`] spans, first spilled at `created_unix_ms`; the
/// spool numbers them when they are appended. A span too large for a
/// record even alone is left out and counted ([`Prepared::oversize`]).
pub(crate) fn prepare_run(service: &str, run: &Run, created_unix_ms: u64) -> Prepared {
    let mut records = Vec::new();
    let (mut oversize, mut largest_oversize) = (0, 0);
    let (mut at, total) = (0, run.len());
    let mut per_record = total.min(RECORD_MAX_SPANS);
    let mut buf = Vec::new();
    let meta = Meta {
        seq: 0,
        tree: Tree::Queue,
        created_unix_ms,
    };
    while at < total {
        let n = per_record.min(total - at);
        buf.clear();
        if let Err(e) = record::seal(service, run, at, at + n, meta, &mut buf) {
            // Too large to write or to read back: halve, down to one span.
            if n > 1 {
                per_record = n / 2;
            } else {
                oversize += 1;
                largest_oversize = largest_oversize.max(e.size());
                at += 1;
                per_record = (total - at).min(RECORD_MAX_SPANS);
            }
            continue;
        }
        let payload = buf.len() - record::HEADER_LEN;
        if payload > RECORD_TARGET && n > 1 {
            // Aim for the target from the size seen, with some margin.
            per_record = (n * RECORD_TARGET / payload * 9 / 10).clamp(1, n - 1);
            continue;
        }
        records.push((std::mem::take(&mut buf), n as u32));
        at += n;
    }
    Prepared {
        records,
        created_unix_ms,
        oversize,
        largest_oversize,
    }
}

impl Spool {
    /// [`Spool::append`] then [`Spool::commit`]: the spans are durable on
    /// return. Returns how many spans the cap dropped to make room.
    #[cfg(test)]
    pub(crate) fn push(&mut self, service: &str, spans: &[Span], created_unix_ms: u64) -> Result<u64, SpoolError> {
        let dropped = self.append(service, spans, created_unix_ms)?;
        self.commit()?;
        Ok(dropped)
    }

    /// Appends `service`'s `spans` as one or more records, unsynced: not
    /// durable until [`Spool::commit`]. If the spool would exceed its cap,
    /// the oldest records are dropped first; returns how many spans that
    /// dropped.
    pub fn append(&mut self, service: &str, spans: &[Span], created_unix_ms: u64) -> Result<u64, SpoolError> {
        let prepared = prepare(service, spans, created_unix_ms);
        if prepared.oversize > 0 {
            // Here the caller owns the spans: refuse rather than drop.
            return Err(self.record_error(RecordError::TooLarge(prepared.largest_oversize)));
        }
        self.append_prepared(&prepared)
    }

    /// [`Spool::append`] of records [`prepare`]d elsewhere (the encoding is
    /// most of an append's work, and need not run where the spool is):
    /// numbers them, makes room under the cap and inserts them (unsynced).
    /// `prepared` stays as it was, so that the spans can still be decoded
    /// from it if the commit fails.
    pub(crate) fn append_prepared(&mut self, prepared: &Prepared) -> Result<u64, SpoolError> {
        if prepared.records.is_empty() {
            return Ok(self.take_dropped());
        }
        let incoming: u64 = prepared.records.iter().map(|(r, _)| r.len() as u64).sum();
        self.make_room(incoming)?;
        let mut batch = sled::Batch::default();
        let mut written = Vec::with_capacity(prepared.records.len());
        for &(ref bytes, n) in &prepared.records {
            let key = self.next_seq;
            self.next_seq += 1;
            let mut bytes = bytes.clone();
            record::set_seq(&mut bytes, key);
            written.push((key, bytes.len(), n));
            batch.insert(&key.to_be_bytes(), bytes);
        }
        self.queue.apply_batch(batch).map_err(|e| self.storage(e))?;
        self.meta
            .insert(NEXT_SEQ, &self.next_seq.to_be_bytes())
            .map_err(|e| self.storage(e))?;
        for &(key, bytes, n) in &written {
            self.ages.insert(key, prepared.created_unix_ms);
            self.stats.records += 1;
            self.stats.bytes += bytes as u64;
            self.stats.spans += u64::from(n);
        }
        Ok(self.take_dropped())
    }

    pub(super) fn record_error(&self, source: RecordError) -> SpoolError {
        SpoolError::Record {
            dir: self.dir.clone(),
            source,
        }
    }

    /// Spans dropped to make room since the last call (also after a failed
    /// append or commit, whose drops were still made).
    pub fn take_dropped(&mut self) -> u64 {
        std::mem::take(&mut self.dropped_unreported)
    }

    /// Puts a salvaged record back, bytes as they were, under `key` (its
    /// own sequence, shifted), or under a fresh sequence if it carries none
    /// (format 1). Putting the same record back twice holds it once.
    /// Durable at the next commit.
    pub(crate) fn restore(&mut self, tree: Tree, key: Option<u64>, mut bytes: Vec<u8>) -> Result<(), SpoolError> {
        let key = match key {
            Some(k) => {
                record::set_seq(&mut bytes, k);
                k
            }
            None => self.next_seq,
        };
        let spans = declared_spans(&bytes);
        let created = record::header(&bytes).ok().map(|h| h.meta.created_unix_ms);
        let len = bytes.len() as u64;
        let previous = self
            .tree(tree)
            .insert(key.to_be_bytes(), bytes)
            .map_err(|e| self.storage(e))?;
        self.next_seq = self.next_seq.max(key + 1);
        self.meta
            .insert(NEXT_SEQ, &self.next_seq.to_be_bytes())
            .map_err(|e| self.storage(e))?;
        if let Some(old) = previous {
            // The same record again (a resumed salvage): counted once.
            let old_spans = declared_spans(&old);
            match tree {
                Tree::Queue => {
                    self.stats.spans = self.stats.spans.saturating_sub(old_spans);
                    self.stats.bytes = self.stats.bytes.saturating_sub(old.len() as u64);
                    self.stats.records = self.stats.records.saturating_sub(1);
                }
                Tree::Dead => {
                    self.stats.dead_letter_spans = self.stats.dead_letter_spans.saturating_sub(old_spans);
                    self.stats.dead_letter_records = self.stats.dead_letter_records.saturating_sub(1);
                }
            }
        }
        match tree {
            Tree::Queue => {
                if let Some(t) = created {
                    self.ages.insert(key, t);
                }
                self.stats.records += 1;
                self.stats.bytes += len;
                self.stats.spans += spans;
            }
            Tree::Dead => {
                self.stats.dead_letter_records += 1;
                self.stats.dead_letter_spans += spans;
            }
        }
        Ok(())
    }

    /// Puts a salvaged quarantined record back under `key`.
    pub(crate) fn restore_quarantined(&mut self, key: u64, queue_key: u64, raw: &[u8]) -> Result<(), SpoolError> {
        let previous = self
            .quarantine
            .insert(key.to_be_bytes(), state::quarantine_frame(key, queue_key, raw))
            .map_err(|e| self.storage(e))?;
        if previous.is_none() {
            self.stats.quarantined_records += 1;
        }
        self.next_seq = self.next_seq.max(key + 1);
        Ok(())
    }

    /// Never gives a sequence below `seq` (a salvaged spool's own).
    pub(crate) fn reserve_seq(&mut self, seq: u64) {
        self.next_seq = self.next_seq.max(seq);
    }

    /// A salvage's marker in this spool (see [`salvage`]).
    pub(crate) fn marker(&self, key: &[u8]) -> Result<Option<salvage::Marker>, SpoolError> {
        let v = self.meta.get(key).map_err(|e| self.storage(e))?;
        Ok(v.and_then(|v| salvage::Marker::decode(&v)))
    }

    /// Records a salvage's marker (durable at the next commit).
    pub(crate) fn set_marker(&mut self, key: &[u8], m: salvage::Marker) -> Result<(), SpoolError> {
        self.meta.insert(key, &m.encode()[..]).map_err(|e| self.storage(e))?;
        Ok(())
    }
}
