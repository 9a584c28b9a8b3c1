//! The shard table: each shard's state under its lock, claiming a shard
//! with room for a new span (the thread's home first), finding the live
//! span a handle names.

use super::live::{Address, Live};
use super::names::Names;
use super::shard_lock::{ShardGuard, ShardLock};
use super::{Ended, Inner, SHARDS, SpanHandle, home};
use crate::span::Span;
use std::sync::atomic::Ordering;

/// What one shard holds: its live spans, its part of the ended batch, and
/// its counters (kept here so the hot path updates them under the lock it
/// already holds).
#[derive(Default)]
pub(super) struct ShardState {
    pub(super) live: Live,
    /// Spans this shard started, for their ids (see [`crate::tracer::live`]).
    pub(super) generation: u64,
    pub(super) ended: Ended,
    pub(super) names: Names,
    pub(super) started: u64,
    pub(super) recorded: u64,
    pub(super) queue_full: u64,
    pub(super) refused_live_full: u64,
}

#[repr(align(128))]
#[derive(Default)]
pub(super) struct Shard(pub(super) ShardLock<ShardState>);

impl Inner {
    /// The span id `h` carries, and where that span would lie.
    #[inline]
    pub(super) fn locate(&self, h: &SpanHandle) -> (u64, Address) {
        let id = u64::from_be_bytes(h.span_id);
        (id, self.ids.address(id))
    }

    #[inline]
    pub(super) fn shard(&self, a: Address) -> &ShardLock<ShardState> {
        &self.shards[a.shard].0
    }

    /// Whether shard `st` can take one more span: a free live slot and,
    /// counting its live spans, room in its share of the batch.
    #[inline]
    pub(super) fn has_room(&self, st: &ShardState) -> bool {
        let live = st.live.len();
        live < self.live_per_shard && live + st.ended.len() < self.shard_capacity
    }

    /// Marks `shard` full (call under its lock). Returns whether the count
    /// of full shards, this one newly counted, is at or past `spill_at`: the
    /// caller then wakes the spiller, after releasing the lock. Past, not
    /// only at: a drain clears the marks one shard at a time while
    /// recording refills the shards it has drained, so the count can stay
    /// past the mark from one drain to the next without ever reaching it
    /// from below, and a spiller woken only on reaching it would sleep
    /// while spans drop as `queue_full` until the next flush.
    pub(super) fn mark_full(&self, shard: usize) -> bool {
        let bit = 1 << shard;
        let before = self.full.fetch_or(bit, Ordering::Relaxed);
        before & bit == 0 && before.count_ones() + 1 >= self.spill_at
    }

    /// The shard a new span goes to, locked: the calling thread's home
    /// shard if it has room, else the next shard with room, which becomes
    /// the thread's home. When none has, the home shard (whose own checks
    /// then refuse the span or count it dropped when it ends).
    #[inline]
    pub(super) fn claim(&self) -> (usize, ShardGuard<'_, ShardState>) {
        let home = home::get();
        let st = self.shards[home].0.lock();
        if self.has_room(&st) {
            return (home, st);
        }
        self.claim_elsewhere(home, st)
    }

    #[cold]
    pub(super) fn claim_elsewhere<'a>(
        &'a self,
        home: usize,
        st: ShardGuard<'a, ShardState>,
    ) -> (usize, ShardGuard<'a, ShardState>) {
        let mut wake = self.mark_full(home);
        drop(st);
        // Each round either returns or marks one more shard: at most SHARDS rounds.
        let mut claimed = None;
        for _ in 0..SHARDS {
            let full = self.full.load(Ordering::Relaxed);
            if full == u64::MAX {
                break;
            }
            let next = (home + (!full).rotate_right(home as u32).trailing_zeros() as usize) % SHARDS;
            let st = self.shards[next].0.lock();
            if self.has_room(&st) {
                home::set(next);
                claimed = Some((next, st));
                break;
            }
            wake |= self.mark_full(next);
        }
        if wake {
            self.wake_spiller();
        }
        claimed.unwrap_or_else(|| (home, self.shards[home].0.lock()))
    }

    pub(super) fn is_live(&self, h: &SpanHandle) -> bool {
        let (id, a) = self.locate(h);
        self.shard(a).lock().live.get_mut(a.slot, id, &h.trace_id).is_some()
    }

    /// Runs `f` on the live span `h` and its shard's names, if it is one.
    #[inline]
    pub(super) fn with_live(&self, h: &SpanHandle, f: impl FnOnce(&mut Span, &mut Names)) {
        if h.is_invalid() {
            return;
        }
        let (id, a) = self.locate(h);
        let mut guard = self.shard(a).lock();
        let st = &mut *guard;
        if let Some(span) = st.live.get_mut(a.slot, id, &h.trace_id) {
            f(span, &mut st.names);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::SpillwayTracer;
    use super::*;
    use crate::config::Config;

    #[test]
    fn every_shard_found_full_past_the_mark_wakes_the_spiller() {
        let dir = tempfile::tempdir().unwrap();
        let t = SpillwayTracer::new(Config {
            endpoint: "http://127.0.0.1:9/api/v2/spans".into(),
            spool_dir: Some(dir.path().join("spool")),
            ..Config::default()
        })
        .unwrap();
        let inner = &t.inner;
        let mark = inner.spill_at as usize;
        assert!(mark > 1 && mark < SHARDS, "{mark}");
        let wakes: Vec<bool> = (0..SHARDS).map(|n| inner.mark_full(n)).collect();
        let want: Vec<bool> = (0..SHARDS).map(|n| n + 1 >= mark).collect();
        assert_eq!(wakes, want, "shards marked one by one");
        assert!(!inner.mark_full(0), "a shard already marked wakes nothing");
        // The worst interleaving of a drain with recording: each shard is
        // found full again right after the drain cleared its mark, so the
        // count never drops to the mark; every refill must wake.
        for n in 0..SHARDS {
            inner.full.fetch_and(!(1 << n), Ordering::Relaxed);
            assert!(inner.mark_full(n), "shard {n} refilled during a drain");
        }
    }
}
