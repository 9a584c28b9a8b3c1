//! Reading records back through sled, oldest first: for replay, the
//! operator tools that open the spool, and quarantine listings. (The
//! read-only tools read the raw files instead: see `view`.)

use super::{Spool, SpoolError, StoredRecord, Tree, be, state};

impl Spool {
    /// Every record of `tree`, oldest first, read lazily.
    pub fn records(&self, tree: Tree) -> impl Iterator<Item = Result<StoredRecord, SpoolError>> + '_ {
        self.decoded(tree, self.tree(tree).iter())
    }

    /// The record `key` of `tree`, decoded, if it is there.
    pub fn get(&self, tree: Tree, key: u64) -> Result<Option<StoredRecord>, SpoolError> {
        let raw = self.tree(tree).get(key.to_be_bytes()).map_err(|e| self.storage(e))?;
        Ok(raw.map(|v| StoredRecord::read(tree, &key.to_be_bytes(), v)))
    }

    /// Up to `max_records` of the oldest records of `tree`, decoded.
    pub fn oldest(&self, tree: Tree, max_records: usize) -> Result<Vec<StoredRecord>, SpoolError> {
        self.oldest_from(tree, 0, max_records)
    }

    /// Up to `max_records` of the oldest records of `tree` whose key is at
    /// least `from`, decoded: replay reads the next records while it sends
    /// those before them.
    pub fn oldest_from(&self, tree: Tree, from: u64, max_records: usize) -> Result<Vec<StoredRecord>, SpoolError> {
        self.decoded(tree, self.tree(tree).range(from.to_be_bytes()..))
            .take(max_records)
            .collect()
    }

    /// The records `items` walks over in `tree`, each decoded.
    fn decoded(&self, tree: Tree, items: sled::Iter) -> impl Iterator<Item = Result<StoredRecord, SpoolError>> + '_ {
        items.map(move |item| {
            item.map(|(k, v)| StoredRecord::read(tree, &k, v))
                .map_err(|e| self.storage(e))
        })
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
