//! When each queue record was spilled, so that the spool can say how old
//! its backlog is without reading a record.
//!
//! Records leave the queue oldest key first, but a record's spill time is
//! not always in key order: the unsent rest of a replayed record is queued
//! again under a new key with the record's own, older, time. So the times
//! are kept in an ordered set beside a map from key to time: the oldest is
//! the set's first, and a removal by key costs a logarithm. The invariant:
//! exactly the queue's records are in both, with the time their header
//! declares (a record whose header cannot be read is not counted).

use std::collections::{BTreeSet, HashMap};

/// The spill times of the queue's records (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct Ages {
    by_key: HashMap<u64, u64>,
    by_time: BTreeSet<(u64, u64)>,
}

impl Ages {
    /// Record `key`, spilled at `created_unix_ms`, joined the queue
    /// (replacing what `key` held).
    pub(crate) fn insert(&mut self, key: u64, created_unix_ms: u64) {
        self.remove(key);
        self.by_key.insert(key, created_unix_ms);
        self.by_time.insert((created_unix_ms, key));
    }

    /// Record `key` left the queue.
    pub(crate) fn remove(&mut self, key: u64) {
        if let Some(t) = self.by_key.remove(&key) {
            self.by_time.remove(&(t, key));
        }
    }

    /// The queue emptied.
    pub(crate) fn clear(&mut self) {
        self.by_key.clear();
        self.by_time.clear();
    }

    /// When the oldest record still queued was spilled (Unix ms).
    pub(crate) fn oldest(&self) -> Option<u64> {
        self.by_time.first().map(|&(t, _)| t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_follows_inserts_and_removals_in_any_order() {
        let mut a = Ages::default();
        assert_eq!(a.oldest(), None);
        a.insert(1, 500);
        a.insert(2, 700);
        // A requeued rest: a newer key with an older time.
        a.insert(3, 400);
        assert_eq!(a.oldest(), Some(400));
        a.remove(3);
        assert_eq!(a.oldest(), Some(500));
        a.remove(1);
        assert_eq!(a.oldest(), Some(700));
        a.insert(2, 900);
        assert_eq!(a.oldest(), Some(900), "a key replaced keeps one time");
        a.remove(2);
        a.remove(2);
        assert_eq!(a.oldest(), None);
        a.insert(4, 1);
        a.clear();
        assert_eq!(a.oldest(), None);
    }
}
