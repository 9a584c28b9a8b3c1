//! The spans of one tracer shard, from start until a flush collects them:
//! a slab addressed by bits of the span id, so that finding a span costs an
//! index, not a hash lookup.
//!
//! A span id is laid out as
//!
//! ```text
//! bit 63 ........ 30 29 ............ 6 5 ..... 0
//!     random (34)     slot (24 bits)    shard (6)
//! ```
//!
//! The random part is never zero, so ids are never zero, and two spans of
//! one trace share an id with odds of 2^-34 only when they also reuse a
//! slot. A handle is trusted only if the span in its slot is live and
//! carries the very same span and trace ids: stale, ended and foreign
//! handles are no-ops.
//!
//! Ending a span does not move it: the slot is marked ended and its number
//! queued, and [`Live::drain_ended`] moves the ended spans out, oldest
//! first, when the flush collects the batch. A span is thus written once on
//! the hot path (at start) instead of three times (into the slab, out of it,
//! into the batch). A slot is free again once drained; freed slots are
//! reused most recently freed first (warm in cache).

use crate::span::Span;

/// Bits of the span id that select the shard.
pub const SHARD_BITS: u32 = 6;
/// Bits of the span id that select the slot within the shard.
pub const SLOT_BITS: u32 = 24;
const SLOT_MASK: u64 = (1 << SLOT_BITS) - 1;
const RANDOM_SHIFT: u32 = SHARD_BITS + SLOT_BITS;

/// The slot a span id points at.
#[inline]
pub fn slot_of(id: u64) -> usize {
    ((id >> SHARD_BITS) & SLOT_MASK) as usize
}

/// A span id for `slot` in `shard`, from random bits `r` (whose top
/// 34 bits must not all be zero).
#[inline]
pub fn compose(r: u64, slot: usize, shard: usize) -> u64 {
    (r >> RANDOM_SHIFT << RANDOM_SHIFT) | ((slot as u64) << SHARD_BITS) | shard as u64
}

/// Random bits for [`compose`]: the top 34 never all zero.
#[inline]
pub fn random_bits() -> u64 {
    loop {
        let r = fastrand::u64(..);
        if r >> RANDOM_SHIFT != 0 {
            return r;
        }
    }
}

/// One slot: empty, or a span that is live or ended (awaiting the flush).
#[derive(Default)]
struct Slot {
    span: Option<Span>,
    ended: bool,
}

/// One shard's live and ended spans.
#[derive(Default)]
pub struct Live {
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// Slots holding ended spans, in the order they ended.
    ended: Vec<u32>,
    live: usize,
}

impl Live {
    /// Live spans.
    pub fn len(&self) -> usize {
        self.live
    }

    /// Ended spans awaiting [`Live::drain_ended`].
    pub fn ended_len(&self) -> usize {
        self.ended.len()
    }

    /// The slot the next [`Live::insert`] will use, or `None` when the
    /// shard holds as many spans as a slot number can name.
    #[inline]
    pub fn vacant(&self) -> Option<usize> {
        match self.free.last() {
            Some(&slot) => Some(slot as usize),
            None if (self.slots.len() as u64) <= SLOT_MASK => Some(self.slots.len()),
            None => None,
        }
    }

    /// Puts `span` in the slot [`Live::vacant`] named.
    #[inline]
    pub fn insert(&mut self, span: Span) {
        match self.free.pop() {
            Some(slot) => self.slots[slot as usize].span = Some(span),
            None => self.slots.push(Slot {
                span: Some(span),
                ended: false,
            }),
        }
        self.live += 1;
    }

    /// The slot of the live span `id` names, if it is the one in its slot
    /// and belongs to `trace_id`.
    #[inline]
    fn live_slot(&mut self, id: u64, trace_id: &[u8; 16]) -> Option<&mut Slot> {
        let is_it = |s: &Span| s.span_id == id.to_be_bytes() && s.trace_id == *trace_id;
        self.slots
            .get_mut(slot_of(id))
            .filter(|s| !s.ended && s.span.as_ref().is_some_and(is_it))
    }

    /// The live span `id` names, if it is the one in its slot and belongs
    /// to `trace_id`.
    #[inline]
    pub fn get_mut(&mut self, id: u64, trace_id: &[u8; 16]) -> Option<&mut Span> {
        self.live_slot(id, trace_id)?.span.as_mut()
    }

    /// Ends the live span `id` names (under the same check as
    /// [`Live::get_mut`]) at `end_unix_nanos`, leaving it in place for
    /// [`Live::drain_ended`]. Returns whether there was such a span.
    #[inline]
    pub fn end(&mut self, id: u64, trace_id: &[u8; 16], end_unix_nanos: u64) -> bool {
        let Some(slot) = self.live_slot(id, trace_id) else {
            return false;
        };
        if let Some(span) = slot.span.as_mut() {
            span.end_unix_nanos = end_unix_nanos;
        }
        slot.ended = true;
        self.ended.push(slot_of(id) as u32);
        self.live -= 1;
        true
    }

    /// Takes the live span `id` names out, under the same check as
    /// [`Live::get_mut`].
    #[inline]
    pub fn remove(&mut self, id: u64, trace_id: &[u8; 16]) -> Option<Span> {
        let span = self.live_slot(id, trace_id)?.span.take()?;
        self.free.push(slot_of(id) as u32);
        self.live -= 1;
        Some(span)
    }

    /// Moves the ended spans onto `batch`, in the order they ended, and
    /// frees their slots.
    pub fn drain_ended(&mut self, batch: &mut Vec<Span>) {
        batch.reserve(self.ended.len());
        for &n in &self.ended {
            let slot = &mut self.slots[n as usize];
            slot.ended = false;
            batch.extend(slot.span.take());
            self.free.push(n);
        }
        self.ended.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(id: u64, trace: u8) -> Span {
        Span {
            trace_id: [trace; 16],
            span_id: id.to_be_bytes(),
            parent_id: None,
            name: "x".into(),
            kind: Default::default(),
            start_unix_nanos: 0,
            end_unix_nanos: 0,
            status: Default::default(),
            attributes: vec![],
            events: Default::default(),
            dropped_attributes: 0,
            dropped_events: 0,
        }
    }

    #[test]
    fn ids_name_their_slot_and_stale_or_foreign_ones_find_nothing() {
        let mut live = Live::default();
        let r = random_bits();
        let slot = live.vacant().unwrap();
        let id = compose(r, slot, 5);
        assert_ne!(id, 0);
        assert_eq!((id & 63, slot_of(id)), (5, slot));
        live.insert(span(id, 1));
        assert!(live.get_mut(id, &[1; 16]).is_some());
        assert!(live.get_mut(id, &[2; 16]).is_none(), "same id, other trace");
        assert!(live.get_mut(id ^ (1 << 40), &[1; 16]).is_none(), "same slot, other id");
        assert!(live.end(id, &[1; 16], 7));
        assert!(!live.end(id, &[1; 16], 8), "ended once");
        assert!(live.get_mut(id, &[1; 16]).is_none(), "an ended span is not live");
        assert!(live.remove(id, &[1; 16]).is_none(), "nor removable");
        assert_eq!((live.len(), live.ended_len()), (0, 1));
        let mut batch = Vec::new();
        live.drain_ended(&mut batch);
        assert_eq!((batch.len(), batch[0].end_unix_nanos, live.ended_len()), (1, 7, 0));
        // The slot is reused; the old id does not reach the new span.
        let id2 = compose(random_bits(), live.vacant().unwrap(), 5);
        live.insert(span(id2, 1));
        assert_eq!(slot_of(id2), slot);
        assert!(id2 == id || live.get_mut(id, &[1; 16]).is_none());
        assert_eq!(live.len(), 1);
    }
}
