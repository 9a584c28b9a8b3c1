//! The flush's side of the shards: the ended spans moved out in start
//! order, the counters summed, the flush and the shutdown entered.

use super::ended::Ended;
use super::{FlushError, Inner, Stats, lock};
use crate::clock::Clock;
use crate::span::Span;
use crate::span::packed::Run;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

impl Inner {
    pub(super) fn stats(&self) -> Stats {
        let mut s = Stats::default();
        for shard in self.shards.iter() {
            let st = shard.0.lock();
            s.started += st.started;
            s.recorded += st.recorded;
            s.live += st.live.len() as u64;
            s.refused_live_full += st.refused_live_full;
            s.in_memory += st.ended.len() as u64;
            s.dropped.queue_full += st.queue_full;
        }
        s.sampled_out = self.sampled_out.load(Ordering::Relaxed);
        s.spool_moved_aside = self.moved_aside.is_some();
        self.books.fill(&mut s);
        if let Some(spool) = self.disk.as_ref().and_then(|d| d.stats()) {
            let now_ms = self.clock.now_unix_ms();
            s.oldest_spooled_age_ms = spool.oldest_spilled_unix_ms.map(|t| now_ms.saturating_sub(t));
            s.replay_spans_per_s = spool.replay.map(|r| r.spans_per_s);
        }
        s
    }

    pub(super) fn try_flush(&self) -> Result<(), Box<FlushError>> {
        let deadline = Instant::now() + self.flush_timeout;
        let mut exporter = lock(&self.exporter);
        self.clock.recalibrate();
        let batch = self.drain(exporter.take_buffer());
        if batch.is_empty() && !exporter.has_backlog() {
            return Ok(());
        }
        exporter.export(batch, deadline, &mut || self.drain(Vec::new()))
    }

    /// Spills what the shards hold and waits for every spill, the
    /// spiller's included (the caller stopped it): see
    /// [`crate::SpillwayTracer::shutdown`].
    pub(super) fn shutdown(&self, deadline: Instant, budget: Duration) -> Result<(), Box<FlushError>> {
        let mut exporter = lock(&self.exporter);
        let batch = self.drain(exporter.take_buffer());
        exporter.spill_all(batch, deadline, budget)
    }

    /// Moves the ended spans out of the shards, counting them as held, in
    /// start order (see [`order_by_start`]).
    pub(super) fn drain(&self, mut batch: Vec<Span>) -> Vec<Span> {
        self.drain_each(|ended| ended.drain_into(&mut batch));
        order_by_start(&mut batch);
        batch
    }

    /// [`Inner::drain`] onto `run`: the spans stay packed, their names
    /// copied inline, none unpacked (the spiller's way to the disk).
    pub(super) fn drain_run(&self, run: &mut Run) {
        self.drain_each(|ended| ended.drain_inline(run));
        run.order_by_start();
    }

    /// Empties each shard's ended buffer through `each` (which returns how
    /// many spans it could not take), counting them as held.
    ///
    /// A shard's buffer is swapped for an empty one under its lock and
    /// emptied outside it, so recording on the shard waits for a swap, not
    /// for the unpacking. The emptied buffer (its capacity kept) is the one
    /// swapped into the next shard, or at the next drain.
    fn drain_each(&self, mut each: impl FnMut(&mut Ended) -> usize) {
        let mut spare = std::mem::take(&mut *lock(&self.spare));
        for (n, shard) in self.shards.iter().enumerate() {
            let mut taken = {
                let mut st = shard.0.lock();
                self.full.fetch_and(!(1 << n), Ordering::Relaxed);
                if st.ended.is_empty() {
                    continue;
                }
                self.books.took(st.ended.len() as u64);
                std::mem::replace(&mut st.ended, spare)
            };
            let lost = each(&mut taken);
            if lost > 0 {
                self.books.lost_in_memory(lost as u64);
            }
            spare = taken;
        }
        *lock(&self.spare) = spare;
    }
}

/// Puts a drained batch in start order (ties keep their order), so spans
/// are sent and spooled oldest first although shards hand them over shard
/// by shard: sorts small keys, then applies the permutation in place,
/// cycle by cycle.
fn order_by_start(batch: &mut [Span]) {
    let mut order: Vec<(u64, u32)> = (batch.iter().enumerate())
        .map(|(i, s)| (s.start_unix_nanos, i as u32))
        .collect();
    if order.is_sorted() {
        return;
    }
    order.sort_unstable();
    // Position k takes the span now at order[k].1: follow each cycle once.
    let mut placed = vec![false; batch.len()];
    for first in 0..batch.len() {
        let mut k = first;
        while !placed[k] {
            placed[k] = true;
            let from = order[k].1 as usize;
            if from == first {
                break;
            }
            batch.swap(k, from);
            k = from;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::span::Value;

    fn span_started_at(start: u64, tag: u32) -> Span {
        let mut span = Span::new([1; 16], [1; 8], "s");
        (span.start_unix_nanos, span.dropped_attributes) = (start, tag);
        span
    }

    #[test]
    fn a_drained_batch_or_run_is_put_in_start_order_keeping_ties_in_order() {
        for n in [0usize, 1, 2, 3, 7, 64, 500] {
            let starts: Vec<u64> = (0..n).map(|_| fastrand::u64(0..(n as u64 / 2 + 1))).collect();
            let mut batch: Vec<Span> = starts
                .iter()
                .enumerate()
                .map(|(i, &t)| span_started_at(t, i as u32))
                .collect();
            // The spiller's packed run, its spans of varied lengths.
            let mut run = Run::default();
            for (i, span) in batch.iter_mut().enumerate() {
                span.attributes.push(("i".into(), Value::String("x".repeat(i % 5))));
                run.push(span);
            }
            order_by_start(&mut batch);
            run.order_by_start();
            assert_eq!(run.unpack(), (batch.clone(), 0), "{n} spans: the run's order");
            let got: Vec<(u64, u32)> = batch
                .iter()
                .map(|s| (s.start_unix_nanos, s.dropped_attributes))
                .collect();
            let mut want: Vec<(u64, u32)> = starts.iter().enumerate().map(|(i, &t)| (t, i as u32)).collect();
            want.sort();
            assert_eq!(got, want, "{n} spans");
        }
    }
}
