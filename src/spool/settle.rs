//! Records leaving: delivered or refused for good (both through
//! [`Spool::dead_letter`], the refused kept as a dead letter), damaged
//! (quarantined), or purged. Every removal lowers the ledger first (see
//! `commit`) and is durable at the next commit; the trees leave oldest
//! first, which is what lets the state frame's watermarks tell held
//! records from sled's stale copies.

use super::{Cleared, Meta, NEXT_SEQ, Span, Spool, SpoolError, StoredRecord, Tree, be, declared_spans, record, state};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionResult, TransactionError};

impl Spool {
    /// Runs `keep` (what the record leaves behind, if anything) and removes
    /// `entry`, unsynced (durable at the next commit); on an error puts the
    /// counts back as they were
    /// (see [`Spool::dead_letter`]).
    pub(super) fn settle(
        &mut self,
        entry: &StoredRecord,
        keep: impl FnOnce(&mut Self) -> Result<(), SpoolError>,
    ) -> Result<(), SpoolError> {
        let before = self.stats;
        let result = keep(self).and_then(|()| self.remove(entry));
        if result.is_err() {
            self.stats = before;
        }
        result
    }

    /// Lowers the ledger once for the queue records `leaving` (key,
    /// declared spans) before any of them is removed, so a round of
    /// removals syncs the ledger once instead of once each; their removals
    /// then skip their own lowering. Their spans stop counting as durable
    /// now: should one of them not leave after all, the ledger stays lower
    /// than it could be until the next commit, a lower bound still.
    pub(crate) fn lower_ledger_for(&mut self, leaving: &[(u64, u64)]) -> Result<(), SpoolError> {
        let mut keys: Vec<u64> = leaving.iter().map(|&(key, _)| key).collect();
        keys.sort_unstable();
        // The oldest go through the last of the queue's first keys that
        // all leave.
        let mut through = None;
        for (item, &key) in self.queue.iter().keys().zip(&keys) {
            if be(&item.map_err(|e| self.storage(e))?) != key {
                break;
            }
            through = Some(key);
        }
        let durable = self.durable_of(leaving.iter().copied());
        self.lower_ledger(durable, through)?;
        for &(key, spans) in leaving {
            self.forget_durable(key, spans);
        }
        self.lowered_for.extend(keys);
        Ok(())
    }

    /// Removes `entry` from its tree (unsynced) and updates the counts.
    pub(super) fn remove(&mut self, entry: &StoredRecord) -> Result<(), SpoolError> {
        let lowered = self.lower_before(entry)?;
        let removed = self
            .tree(entry.tree)
            .remove(entry.key.to_be_bytes())
            .map_err(|e| self.storage(e))?
            .is_some();
        if removed {
            self.left(entry, lowered);
        }
        Ok(())
    }

    /// Lowers the ledger before queue record `entry` leaves, unless a
    /// round's [`Spool::lower_ledger_for`] did; whether one did.
    fn lower_before(&mut self, entry: &StoredRecord) -> Result<bool, SpoolError> {
        if entry.tree != Tree::Queue {
            return Ok(false);
        }
        if let Some(i) = self.lowered_for.iter().position(|&k| k == entry.key) {
            self.lowered_for.swap_remove(i);
            return Ok(true);
        }
        let oldest = self.queue.first().map_err(|e| self.storage(e))?.map(|(k, _)| be(&k));
        let through = (oldest == Some(entry.key)).then_some(entry.key);
        let durable = self.durable_of(std::iter::once((entry.key, entry.declared_spans)));
        self.lower_ledger(durable, through)?;
        Ok(false)
    }

    /// The counts once `entry` left its tree (the ledger `lowered` for it
    /// by a round).
    fn left(&mut self, entry: &StoredRecord, lowered: bool) {
        match entry.tree {
            Tree::Queue => {
                self.uncount(entry.key, entry.bytes, entry.declared_spans);
                if !lowered {
                    self.forget_durable(entry.key, entry.declared_spans);
                }
            }
            Tree::Dead => {
                self.stats.dead_letter_records = self.stats.dead_letter_records.saturating_sub(1);
                self.stats.dead_letter_spans = self.stats.dead_letter_spans.saturating_sub(entry.declared_spans);
            }
        }
    }

    /// Keeps `service`'s spans the collector refused for good in the
    /// dead-letter tree, under a fresh sequence number (unsynced).
    pub(super) fn put_dead(&mut self, service: &str, refused: &[Span], created_unix_ms: u64) -> Result<(), SpoolError> {
        if refused.is_empty() {
            return Ok(());
        }
        self.buf.clear();
        let meta = Meta {
            seq: self.next_seq,
            tree: Tree::Dead,
            created_unix_ms,
        };
        if let Err(e) = record::encode(service, refused, meta, &mut self.buf) {
            return Err(self.record_error(e));
        }
        let key = self.next_seq;
        self.next_seq += 1;
        self.dead
            .insert(key.to_be_bytes(), self.buf.as_slice())
            .map_err(|e| self.storage(e))?;
        self.meta
            .insert(NEXT_SEQ, &self.next_seq.to_be_bytes())
            .map_err(|e| self.storage(e))?;
        self.stats.dead_letter_records += 1;
        self.stats.dead_letter_spans += refused.len() as u64;
        Ok(())
    }

    /// Keeps `service`'s spans the collector refused for good in the
    /// dead-letter tree. Durable at the next [`Spool::commit`].
    pub fn add_dead(&mut self, service: &str, refused: &[Span], created_unix_ms: u64) -> Result<(), SpoolError> {
        self.put_dead(service, refused, created_unix_ms)
    }

    /// Removes `entry`, keeping the `refused` spans as a dead letter (the
    /// rest were delivered). Unsynced: durable at the next
    /// [`Spool::commit`] (see the module docs).
    ///
    /// On an error the counts still include the record: whether its removal
    /// reached the disk is known only once the spool is reopened (sled stays
    /// failed after an I/O error), so the caller must look again there.
    pub fn dead_letter(&mut self, entry: &StoredRecord, refused: &[Span], now_unix_ms: u64) -> Result<(), SpoolError> {
        self.settle(entry, |s| s.put_dead(&entry.service, refused, now_unix_ms))
    }

    /// Moves a record that failed its checks to quarantine, bytes intact.
    /// The quarantine frame, the next sequence number and the record's
    /// removal go in one sled transaction, which sled recovers whole or not
    /// at all: after a crash the record is in one place, never both.
    /// Durable at the next [`Spool::commit`]; on an error as
    /// [`Spool::dead_letter`].
    pub fn quarantine(&mut self, entry: &StoredRecord) -> Result<(), SpoolError> {
        let lowered = self.lower_before(entry)?;
        let key = self.next_seq;
        let frame = state::quarantine_frame(key, entry.key, &entry.raw);
        let next = (key + 1).to_be_bytes();
        let trees = (&self.quarantine, &self.meta, self.tree(entry.tree));
        let moved = trees.transaction(
            |(q, meta, from)| -> ConflictableTransactionResult<bool, std::convert::Infallible> {
                q.insert(&key.to_be_bytes(), frame.as_slice())?;
                meta.insert(NEXT_SEQ, &next)?;
                Ok(from.remove(&entry.key.to_be_bytes())?.is_some())
            },
        );
        let removed = match moved {
            Ok(removed) => removed,
            Err(TransactionError::Storage(e)) => return Err(self.storage(e)),
            Err(TransactionError::Abort(never)) => match never {},
        };
        self.next_seq += 1;
        self.stats.quarantined_records += 1;
        if removed {
            self.left(entry, lowered);
        }
        Ok(())
    }

    /// Empties `tree`; says what went. Durable at the next [`Spool::commit`].
    pub fn clear(&mut self, tree: Tree) -> Result<Cleared, SpoolError> {
        if tree == Tree::Queue {
            let last = self.queue.last().map_err(|e| self.storage(e))?.map(|(k, _)| be(&k));
            self.write_ledger(0, last)?;
        }
        let c = self.pop_all(self.tree(tree), true)?;
        match tree {
            Tree::Queue => {
                self.ages.clear();
                let (records, spans, bytes) = (self.stats.records, self.stats.spans, self.stats.bytes);
                self.stats.records = records.saturating_sub(c.records);
                self.stats.spans = spans.saturating_sub(c.spans);
                self.stats.bytes = bytes.saturating_sub(c.bytes);
                self.durable_spans = 0;
            }
            Tree::Dead => {
                self.stats.dead_letter_records = self.stats.dead_letter_records.saturating_sub(c.records);
                self.stats.dead_letter_spans = self.stats.dead_letter_spans.saturating_sub(c.spans);
            }
        }
        Ok(c)
    }

    /// Empties the quarantine; says what went (`spans` is 0: a quarantined
    /// record's count cannot be trusted). Durable at the next [`Spool::commit`].
    pub fn clear_quarantine(&mut self) -> Result<Cleared, SpoolError> {
        let c = self.pop_all(&self.quarantine, false)?;
        self.stats.quarantined_records = self.stats.quarantined_records.saturating_sub(c.records);
        Ok(c)
    }

    fn pop_all(&self, t: &sled::Tree, count_spans: bool) -> Result<Cleared, SpoolError> {
        let mut c = Cleared::default();
        while let Some((_, v)) = t.pop_min().map_err(|e| self.storage(e))? {
            c.records += 1;
            c.bytes += v.len() as u64;
            if count_spans {
                c.spans += declared_spans(&v);
            }
        }
        Ok(c)
    }

    /// Takes a queue record that left the spool out of the counts and ages.
    pub(super) fn uncount(&mut self, key: u64, bytes: usize, spans: u64) {
        self.ages.remove(key);
        self.stats.records = self.stats.records.saturating_sub(1);
        self.stats.bytes = self.stats.bytes.saturating_sub(bytes as u64);
        self.stats.spans = self.stats.spans.saturating_sub(spans);
    }
}
