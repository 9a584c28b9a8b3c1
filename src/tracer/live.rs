//! The live spans of one tracer shard, from start until they end: a slab
//! addressed by its slot number, which the span id encodes, so that finding
//! a span costs an index, not a hash lookup.
//!
//! A span id is a keyed permutation ([`Ids`]) of its address:
//!
//! ```text
//! address: bit 63 ........ 30 29 ............ 6 5 ..... 0
//!              generation (34)   slot (24 bits)   shard (6)
//! span id = Ids::scramble(address)
//! ```
//!
//! The generation counts the spans each shard started, so one tracer gives
//! no two spans the same address until a shard has started 2^34 of them;
//! the permutation, keyed at random per tracer, makes emitted ids look
//! uniformly random (W3C trace context asks for that, and tools sample or
//! shard by id bits) while [`Ids::address`] still finds the slot in a few
//! multiplications. Ids are never zero: the one address that would map to
//! zero is skipped.
//!
//! A handle is trusted only if the span in its slot is live and carries the
//! very same span and trace ids: stale, ended and foreign handles are
//! no-ops.
//!
//! Ending a span removes it ([`Live::remove_with`]; the tracer packs it
//! into its shard's [`crate::tracer::ended::Ended`] buffer), so the slab holds only the
//! spans in flight: a few per request being served, however large the
//! batch. Freed slots are reused most recently freed first (warm in cache).

use crate::span::Span;

/// Bits of an address that select the shard.
pub(crate) const SHARD_BITS: u32 = 6;
/// Bits of an address that select the slot within the shard.
pub(crate) const SLOT_BITS: u32 = 24;
const SLOT_MASK: u64 = (1 << SLOT_BITS) - 1;
const SHARD_MASK: u64 = (1 << SHARD_BITS) - 1;
const GENERATION_SHIFT: u32 = SHARD_BITS + SLOT_BITS;
/// Generations wrap after this many spans of a shard.
pub(crate) const GENERATION_MASK: u64 = (1 << (64 - GENERATION_SHIFT)) - 1;

/// Where a live span lies: its shard and its slot there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Address {
    /// The shard.
    pub shard: usize,
    /// The slot within the shard.
    pub slot: usize,
}

/// Odd multipliers of the permutation (MurmurHash3's finaliser) and their
/// inverses modulo 2^64.
const M1: u64 = 0xff51_afd7_ed55_8ccd;
const M2: u64 = 0xc4ce_b9fe_1a85_ec53;
const M1_INV: u64 = inverse(M1);
const M2_INV: u64 = inverse(M2);

/// The inverse of odd `m` modulo 2^64 (Newton's iteration: each step
/// doubles the bits that are right).
const fn inverse(m: u64) -> u64 {
    let mut x = m;
    let mut i = 0;
    while i < 6 {
        x = x.wrapping_mul(2u64.wrapping_sub(m.wrapping_mul(x)));
        i += 1;
    }
    x
}

/// Turns span addresses into span ids and back: a bijection of `u64`
/// keyed by two random words. `x ^= x >> 33` is its own inverse and odd
/// multipliers are invertible, so every step can be undone.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ids {
    k0: u64,
    k1: u64,
}

impl Ids {
    /// A permutation with a fresh random key.
    pub(crate) fn new() -> Ids {
        Ids::with_key(fastrand::u64(..), fastrand::u64(..))
    }

    /// The permutation keyed by `k0` and `k1` (tests pin it).
    pub(crate) const fn with_key(k0: u64, k1: u64) -> Ids {
        Ids { k0, k1 }
    }

    /// The span id of `generation`'s span in `slot` of `shard`; `None`
    /// for the one address whose id would be zero.
    #[inline]
    pub(crate) fn span_id(&self, generation: u64, slot: usize, shard: usize) -> Option<u64> {
        let address =
            ((generation & GENERATION_MASK) << GENERATION_SHIFT) | ((slot as u64) << SHARD_BITS) | shard as u64;
        Some(self.scramble(address)).filter(|&id| id != 0)
    }

    /// Where the span `id` names would lie (whether it is live there is
    /// for [`Live`] to say).
    #[inline]
    pub(crate) fn address(&self, id: u64) -> Address {
        let a = self.unscramble(id);
        Address {
            shard: (a & SHARD_MASK) as usize,
            slot: ((a >> SHARD_BITS) & SLOT_MASK) as usize,
        }
    }

    #[inline]
    fn scramble(&self, mut x: u64) -> u64 {
        x ^= self.k0;
        x ^= x >> 33;
        x = x.wrapping_mul(M1);
        x ^= x >> 33;
        x = x.wrapping_mul(M2);
        x ^= x >> 33;
        x ^ self.k1
    }

    #[inline]
    fn unscramble(&self, mut x: u64) -> u64 {
        x ^= self.k1;
        x ^= x >> 33;
        x = x.wrapping_mul(M2_INV);
        x ^= x >> 33;
        x = x.wrapping_mul(M1_INV);
        x ^= x >> 33;
        x ^ self.k0
    }
}

impl Default for Ids {
    fn default() -> Ids {
        Ids::new()
    }
}

/// One shard's live spans.
#[derive(Default)]
pub(crate) struct Live {
    slots: Vec<Option<Span>>,
    free: Vec<u32>,
    live: usize,
}

impl Live {
    /// Live spans.
    pub(crate) fn len(&self) -> usize {
        self.live
    }

    /// The slot the next [`Live::insert`] will use, or `None` when the
    /// shard holds as many spans as a slot number can name.
    #[inline]
    pub(crate) fn vacant(&self) -> Option<usize> {
        match self.free.last() {
            Some(&slot) => Some(slot as usize),
            None if (self.slots.len() as u64) <= SLOT_MASK => Some(self.slots.len()),
            None => None,
        }
    }

    /// Puts `span` in the slot [`Live::vacant`] named.
    #[inline]
    pub(crate) fn insert(&mut self, span: Span) {
        match self.free.pop() {
            Some(slot) => self.slots[slot as usize] = Some(span),
            None => self.slots.push(Some(span)),
        }
        self.live += 1;
    }

    /// The slot of the live span `id` names, if it is the one in its slot
    /// and belongs to `trace_id`.
    #[inline]
    fn live_slot(&mut self, slot: usize, id: u64, trace_id: &[u8; 16]) -> Option<&mut Option<Span>> {
        let is_it = |s: &Span| s.span_id == id.to_be_bytes() && s.trace_id == *trace_id;
        self.slots.get_mut(slot).filter(|s| s.as_ref().is_some_and(is_it))
    }

    /// The live span in `slot`, if it is `id` of `trace_id`.
    #[inline]
    pub(crate) fn get_mut(&mut self, slot: usize, id: u64, trace_id: &[u8; 16]) -> Option<&mut Span> {
        self.live_slot(slot, id, trace_id)?.as_mut()
    }

    /// Ends the live span in `slot` (under the same check as
    /// [`Live::get_mut`]): hands it to `f` where it lies, then drops it and
    /// frees its slot. Returns whether there was such a span. The span is
    /// never moved, so `f` reads it where start and record wrote it.
    #[inline]
    pub(crate) fn remove_with(&mut self, slot: usize, id: u64, trace_id: &[u8; 16], f: impl FnOnce(&mut Span)) -> bool {
        let Some(held) = self.live_slot(slot, id, trace_id) else {
            return false;
        };
        if let Some(span) = held.as_mut() {
            f(span);
        }
        *held = None;
        self.free.push(slot as u32);
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
    fn ids_name_their_address_and_stale_or_foreign_ones_find_nothing() {
        let ids = Ids::new();
        let mut live = Live::default();
        let slot = live.vacant().unwrap();
        let id = ids.span_id(1, slot, 5).unwrap();
        assert_eq!(ids.address(id), Address { shard: 5, slot });
        live.insert(span(id, 1));
        assert!(live.get_mut(slot, id, &[1; 16]).is_some());
        assert!(live.get_mut(slot, id, &[2; 16]).is_none(), "same id, other trace");
        assert!(live.get_mut(slot, id ^ 1, &[1; 16]).is_none(), "same slot, other id");
        let mut seen = 0;
        assert!(live.remove_with(slot, id, &[1; 16], |s| seen = s.span_id.len()));
        assert_eq!(seen, 8, "the span was handed over");
        assert!(!live.remove_with(slot, id, &[1; 16], |_| seen = 0), "removed once");
        assert_eq!(seen, 8);
        assert!(live.get_mut(slot, id, &[1; 16]).is_none(), "a removed span is not live");
        assert_eq!(live.len(), 0);
        // The slot is reused by the next generation; the old id does not
        // reach the new span.
        let id2 = ids.span_id(2, live.vacant().unwrap(), 5).unwrap();
        live.insert(span(id2, 1));
        assert_eq!(ids.address(id2).slot, slot);
        assert_ne!(id2, id);
        assert!(live.get_mut(slot, id, &[1; 16]).is_none());
        assert_eq!(live.len(), 1);
    }

    #[test]
    fn the_permutation_is_undone_exactly() {
        assert_eq!(M1.wrapping_mul(M1_INV), 1);
        assert_eq!(M2.wrapping_mul(M2_INV), 1);
        let ids = Ids::new();
        for _ in 0..10_000 {
            let a = fastrand::u64(..);
            assert_eq!(ids.unscramble(ids.scramble(a)), a);
            assert_eq!(ids.scramble(ids.unscramble(a)), a);
        }
        // The one address that maps to zero is refused, so no id is zero.
        let zero = ids.unscramble(0);
        let (generation, slot, shard) = (
            zero >> GENERATION_SHIFT,
            ((zero >> SHARD_BITS) & SLOT_MASK) as usize,
            (zero & SHARD_MASK) as usize,
        );
        assert_eq!(ids.span_id(generation, slot, shard), None);
    }
}
