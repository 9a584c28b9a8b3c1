//! The bounds: the cap on the size on disk (records held to `max_bytes`
//! divided by sled's amplification as measured on this spool, the oldest
//! dropped past it; a true bound from 32 MiB, below which sled's log file,
//! whose length never shrinks under churn, outgrows the headroom), the
//! room left on the filesystem (a spill is refused before sled sees a full
//! disk), and the age cap.

use super::{
    AMPLIFICATION_EVERY, AMPLIFICATION_MAX, AMPLIFICATION_MIN_BYTES, AMPLIFICATION_MIN_CAP_FRACTION, CAP_HEADROOM,
    DISK_RESERVE, MEASURE_EVERY_CAP_FRACTION, Spool, SpoolError, be, declared_spans, record,
};
use std::time::Instant;

impl Spool {
    /// Whether the spool's filesystem has room for `incoming` more bytes of
    /// records, as sled will store them (its amplification) and with
    /// [`DISK_RESERVE`] to spare; `Err` says how much is free and needed.
    ///
    /// sled fails for good on a full disk (and can hang while closing after
    /// it), so a spill is refused before sled sees it; removals, which the
    /// reserve leaves room for, still go ahead and make room.
    pub fn room_for(&self, incoming: u64) -> Result<(), SpoolError> {
        let Ok(st) = rustix::fs::statvfs(&self.dir) else {
            return Ok(());
        };
        let free = st.f_bavail.saturating_mul(st.f_frsize);
        let needed = (incoming as f64 * self.amplification) as u64 + DISK_RESERVE;
        if free >= needed {
            return Ok(());
        }
        Err(SpoolError::DiskFull {
            dir: self.dir.clone(),
            free,
            needed,
        })
    }

    /// Bytes on disk per byte of record, as last measured (a conservative
    /// guess until the queue is big enough to measure).
    pub fn amplification(&self) -> f64 {
        self.amplification
    }

    /// Re-measures sled's amplification when the queue is big enough for it
    /// to mean something, after a 1/[`MEASURE_EVERY_CAP_FRACTION`] of the
    /// cap was written or [`AMPLIFICATION_EVERY`] passed.
    pub(super) fn measure(&mut self, incoming: u64) {
        self.written_since_measure += incoming;
        let due = self.measured_at.is_none_or(|t| t.elapsed() >= AMPLIFICATION_EVERY)
            || self.written_since_measure >= self.max_bytes / MEASURE_EVERY_CAP_FRACTION;
        if !due || self.stats.bytes < AMPLIFICATION_MIN_BYTES.min(self.max_bytes / AMPLIFICATION_MIN_CAP_FRACTION) {
            return;
        }
        self.measured_at = Some(Instant::now());
        self.written_since_measure = 0;
        if let Ok(disk) = self.db.size_on_disk() {
            self.amplification = (disk as f64 / self.stats.bytes as f64).clamp(1.0, AMPLIFICATION_MAX);
        }
    }

    /// sled's own size on disk. It reads file metadata and scans sled's
    /// blob directory, so it is for reports, not for every flush.
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    /// Drops the oldest records until `incoming` more bytes fit the cap,
    /// adding their spans to the unreported drops.
    pub(super) fn make_room(&mut self, incoming: u64) -> Result<(), SpoolError> {
        self.measure(incoming);
        let budget = (self.max_bytes as f64 * CAP_HEADROOM / self.amplification) as u64;
        if self.stats.bytes + incoming <= budget {
            return Ok(());
        }
        // Choose the oldest records to drop, tell the ledger, then drop them.
        let mut victims = Vec::new();
        let (mut bytes, mut spans) = (self.stats.bytes, 0);
        for item in self.queue.iter() {
            if bytes + incoming <= budget {
                break;
            }
            let (k, v) = item.map_err(|e| self.storage(e))?;
            bytes -= (v.len() as u64).min(bytes);
            spans += declared_spans(&v);
            victims.push((be(&k), v.len(), declared_spans(&v)));
        }
        self.remove_oldest(&victims)?;
        self.dropped_unreported += spans;
        Ok(())
    }

    /// Removes `victims` (the oldest queue records: key, bytes, spans),
    /// telling the ledger first.
    pub(super) fn remove_oldest(&mut self, victims: &[(u64, usize, u64)]) -> Result<(), SpoolError> {
        let Some(&(last, _, _)) = victims.last() else {
            return Ok(());
        };
        let durable = self.durable_of(victims.iter().map(|&(k, _, n)| (k, n)));
        self.lower_ledger(durable, Some(last))?;
        for &(key, bytes, n) in victims {
            if self
                .queue
                .remove(key.to_be_bytes())
                .map_err(|e| self.storage(e))?
                .is_some()
            {
                self.uncount(key, bytes, n);
                self.forget_durable(key, n);
            }
        }
        Ok(())
    }

    /// Drops records created more than `max_age_ms` before `now_unix_ms`,
    /// oldest first; returns how many spans that dropped. A record whose
    /// header cannot be read is left for replay to quarantine.
    pub fn expire(&mut self, now_unix_ms: u64, max_age_ms: u64) -> Result<u64, SpoolError> {
        let cutoff = now_unix_ms.saturating_sub(max_age_ms);
        let (mut victims, mut spans) = (Vec::new(), 0);
        for item in self.queue.iter() {
            let (k, v) = item.map_err(|e| self.storage(e))?;
            let Ok(h) = record::header(&v) else { break };
            if h.meta.created_unix_ms >= cutoff {
                break;
            }
            spans += u64::from(h.spans);
            victims.push((be(&k), v.len(), u64::from(h.spans)));
        }
        if victims.is_empty() {
            return Ok(0);
        }
        self.remove_oldest(&victims)?;
        Ok(spans)
    }
}
