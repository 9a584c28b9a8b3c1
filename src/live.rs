//! The live spans of one tracer shard, from start until they end: a slab
//! addressed by bits of the span id, so that finding a span costs an index,
//! not a hash lookup.
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
//! Ending a span removes it ([`Live::remove_with`]; the tracer packs it
//! into its shard's [`crate::ended::Ended`] buffer), so the slab holds only the
//! spans in flight: a few per request being served, however large the
//! batch. Freed slots are reused most recently freed first (warm in cache).

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

/// One shard's live spans.
#[derive(Default)]
pub struct Live {
    slots: Vec<Option<Span>>,
    free: Vec<u32>,
    live: usize,
}

impl Live {
    /// Live spans.
    pub fn len(&self) -> usize {
        self.live
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
            Some(slot) => self.slots[slot as usize] = Some(span),
            None => self.slots.push(Some(span)),
        }
        self.live += 1;
    }

    /// The slot of the live span `id` names, if it is the one in its slot
    /// and belongs to `trace_id`.
    #[inline]
    fn live_slot(&mut self, id: u64, trace_id: &[u8; 16]) -> Option<&mut Option<Span>> {
        let is_it = |s: &Span| s.span_id == id.to_be_bytes() && s.trace_id == *trace_id;
        self.slots
            .get_mut(slot_of(id))
            .filter(|s| s.as_ref().is_some_and(is_it))
    }

    /// The live span `id` names, if it is the one in its slot and belongs
    /// to `trace_id`.
    #[inline]
    pub fn get_mut(&mut self, id: u64, trace_id: &[u8; 16]) -> Option<&mut Span> {
        self.live_slot(id, trace_id)?.as_mut()
    }

    /// Ends the live span `id` names (under the same check as
    /// [`Live::get_mut`]): hands it to `f` where it lies, then drops it and
    /// frees its slot. Returns whether there was such a span. The span is
    /// never moved, so `f` reads it where start and record wrote it.
    #[inline]
    pub fn remove_with(&mut self, id: u64, trace_id: &[u8; 16], f: impl FnOnce(&mut Span)) -> bool {
        let Some(slot) = self.live_slot(id, trace_id) else {
            return false;
        };
        if let Some(span) = slot.as_mut() {
            f(span);
        }
        *slot = None;
        self.free.push(slot_of(id) as u32);
        self.live -= 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(id: u64, trace: u8) -> Span {
        Span::new([trace; 16], id.to_be_bytes(), "x")
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
        let mut seen = 0;
        assert!(live.remove_with(id, &[1; 16], |s| seen = s.span_id.len()));
        assert_eq!(seen, 8, "the span was handed over");
        assert!(!live.remove_with(id, &[1; 16], |_| seen = 0), "removed once");
        assert_eq!(seen, 8);
        assert!(live.get_mut(id, &[1; 16]).is_none(), "a removed span is not live");
        assert_eq!(live.len(), 0);
        // The slot is reused; the old id does not reach the new span.
        let id2 = compose(random_bits(), live.vacant().unwrap(), 5);
        live.insert(span(id2, 1));
        assert_eq!(slot_of(id2), slot);
        assert!(id2 == id || live.get_mut(id, &[1; 16]).is_none());
        assert_eq!(live.len(), 1);
    }
}
