//! The durability point and the ledger's two rules, enforced here and
//! nowhere else: the ledger is raised only after a sync made what it
//! counts durable ([`Spool::commit`]), and lowered, durably, before a
//! removal ([`Spool::lower_ledger`]). So whatever the crash order, sled
//! holds at least what the ledger says, unless sled lost it.

use super::{STATE, Spool, SpoolError, be, durable, ledger, state};

impl Spool {
    /// The durability point for everything done since the last one: syncs
    /// sled's files (see `durable`), then raises the ledger to what is
    /// now on stable storage. Appends, removals, dead letters and
    /// quarantines are durable once this returns `Ok`; one call covers
    /// every change made before it began (group commit).
    pub fn commit(&mut self) -> Result<(), SpoolError> {
        self.round += 1;
        let frame = self.state()?.encode();
        self.meta.insert(STATE, &frame[..]).map_err(|e| self.storage(e))?;
        self.sync()?;
        self.synced_below = self.next_seq;
        self.synced_round = self.round;
        self.durable_spans = self.stats.spans;
        self.lowered_for.clear();
        self.write_ledger(self.stats.spans, None)
    }

    /// What the spool holds now, as its state frame records it.
    pub(super) fn state(&self) -> Result<state::State, SpoolError> {
        let first = |t: &sled::Tree| -> Result<u64, SpoolError> {
            Ok(t.first()
                .map_err(|e| self.storage(e))?
                .map_or(self.next_seq, |(k, _)| be(&k)))
        };
        Ok(state::State {
            round: self.round,
            next_seq: self.next_seq,
            queue_below: first(&self.queue)?,
            dead_below: first(&self.dead)?,
            quarantine_below: first(&self.quarantine)?,
            queue_records: self.stats.records,
            queue_spans: self.stats.spans,
            dead_records: self.stats.dead_letter_records,
            dead_spans: self.stats.dead_letter_spans,
            quarantined: self.stats.quarantined_records,
            replay: self.replay,
        })
    }

    /// Syncs sled's files (see [`durable`]) without touching the ledger.
    pub(super) fn sync(&mut self) -> Result<(), SpoolError> {
        self.syncer.sync(&self.db).map_err(|e| match e {
            durable::SyncError::Sled(source) => SpoolError::Storage {
                dir: self.dir.clone(),
                source,
            },
            durable::SyncError::Io(source) => SpoolError::Sync {
                dir: self.dir.clone(),
                source,
            },
        })
    }

    /// Lowers the ledger before queue records leave: `spans` of them were
    /// synced, and the oldest go through key `through` (if the oldest go).
    /// Durable before the removal is made, so the ledger stays a lower
    /// bound whenever sled writes the removal out.
    pub(super) fn lower_ledger(&mut self, spans: u64, through: Option<u64>) -> Result<(), SpoolError> {
        let at_least = self.ledger_spans.min(self.durable_spans.saturating_sub(spans));
        self.write_ledger(at_least, through)
    }

    /// Writes the ledger: the queue holds at least `spans_at_least` spans,
    /// and its lowest key is above `removed_through` (the last key about to
    /// be removed, if any).
    pub(super) fn write_ledger(&mut self, spans_at_least: u64, removed_through: Option<u64>) -> Result<(), SpoolError> {
        if self.ledger.is_none() {
            return Ok(());
        }
        let from = removed_through.map_or(0, |k| k.saturating_add(1));
        let watermark = match self.queue.range(from.to_be_bytes()..).next() {
            Some(item) => be(&item.map_err(|e| self.storage(e))?.0),
            None => self.next_seq,
        };
        let state = ledger::State {
            spans_at_least,
            watermark,
            next_seq: self.synced_below,
            round: self.synced_round,
        };
        let dir = self.dir.clone();
        if let Some(l) = &mut self.ledger {
            l.write(state).map_err(|source| SpoolError::Ledger { dir, source })?;
        }
        self.ledger_spans = spans_at_least;
        Ok(())
    }

    /// The spans of the queue records `victims` (key, spans) that were synced.
    pub(super) fn durable_of(&self, victims: impl Iterator<Item = (u64, u64)>) -> u64 {
        victims
            .filter(|&(key, _)| key < self.synced_below)
            .map(|(_, n)| n)
            .sum()
    }

    /// Bookkeeping for a queue record that left: its spans no longer
    /// count as durable once it was synced.
    pub(super) fn forget_durable(&mut self, key: u64, spans: u64) {
        if key < self.synced_below {
            self.durable_spans = self.durable_spans.saturating_sub(spans);
        }
    }
}
