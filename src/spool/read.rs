//! Reading records back through sled, oldest first: for replay, the
//! operator tools that open the spool, and quarantine listings. (The
//! read-only tools read the raw files instead: see `view`.)

use super::*;

impl Spool {
    /// Every record of `part`, oldest first, read lazily.
    pub fn entries(&self, part: Part) -> impl Iterator<Item = Result<Entry, SpoolError>> + '_ {
        self.tree(part)
            .iter()
            .map(move |item| item.map(|(k, v)| Entry::read(part, &k, v)).map_err(|e| self.storage(e)))
    }

    /// The record `key` of `part`, decoded, if it is there.
    pub fn get(&self, part: Part, key: u64) -> Result<Option<Entry>, SpoolError> {
        let raw = self.tree(part).get(key.to_be_bytes()).map_err(|e| self.storage(e))?;
        Ok(raw.map(|v| Entry::read(part, &key.to_be_bytes(), v)))
    }

    /// Up to `max_records` of the oldest records of `part`, decoded.
    pub fn oldest(&self, part: Part, max_records: usize) -> Result<Vec<Entry>, SpoolError> {
        self.entries(part).take(max_records).collect()
    }

    /// The quarantined records, by the key they had in the queue, bytes as
    /// they were found.
    pub fn quarantined(&self) -> impl Iterator<Item = Result<(u64, Vec<u8>), SpoolError>> + '_ {
        self.quarantine.iter().map(move |item| {
            item.map(|(k, v)| match state::unquarantine(&v) {
                Some((q, raw)) => (q.queue_key, raw.to_vec()),
                // Written before quarantined records were framed.
                None => (be(&k), v.to_vec()),
            })
            .map_err(|e| self.storage(e))
        })
    }
}
