//! Ended spans awaiting the flush, packed into bytes.
//!
//! A shard's ended spans are what the process holds in volume between two
//! flushes (up to `max_queue_spans`), so they are kept compact. At
//! `end_span` a span is packed into its shard's [`Ended`] buffer: its fields
//! and the text of its attributes are copied into one growing byte vector.
//! bext's allocations (the attribute vector, and every key and value string)
//! are then freed on the thread that made them, right away. glibc's
//! per-thread cache hands the same chunks back to bext's next span, so the
//! freeing costs the hot path little. Span and event names (interned
//! `&'static str` as a rule, see the tracer) are kept as they are, beside
//! the bytes.
//!
//! The flush unpacks the buffer into owned [`Span`]s, which the encoder,
//! the transport and the spool then use unchanged. The spiller, when it
//! spills, unpacks nothing: [`Ended::drain_inline`] copies each span's
//! bytes with its names written inline, which is a spool record's
//! payload.
//!
//! Invariants:
//! - [`Ended::drain_into`] yields exactly the spans pushed, equal field by
//!   field (NaN payloads and `-0.0` included), in push order;
//! - a buffer is only ever written by [`Ended::push`], so unpacking cannot
//!   fail; if it ever did, the spans left are reported, not invented (see
//!   [`Ended::drain_into`]);
//! - packing a span never fails, whatever its sizes: it appends to a `Vec`
//!   in one pass (a failed allocation aborts, as any would), and a string
//!   past `u32::MAX` bytes (which no request can carry) is cut at a
//!   character boundary rather than corrupting the buffer.
//!
//! The layout is [`crate::span::packed`]'s, names kept beside the bytes.
//!
//! Names go to `names` in order: the span's, then each event's.
//!
//! ```
//! use spillway::unstable::ended::Ended;
//! use spillway::unstable::span::{Span, Value};
//! let mut span = Span::new([1; 16], [2; 8], "GET /users/:id");
//! span.attributes.push(("http.route".into(), Value::from("/users/:id")));
//! let mut ended = Ended::default();
//! ended.push(&mut span.clone());
//! let mut batch = Vec::new();
//! assert_eq!(ended.drain_into(&mut batch), 0);
//! assert_eq!(batch, [span]);
//! assert!(ended.is_empty());
//! ```

use crate::span::Span;
use crate::span::packed::{self, Names, Reader, Run};
use std::borrow::Cow;

/// One shard's ended spans, packed (see the module docs).
#[derive(Default)]
pub struct Ended {
    bytes: Vec<u8>,
    names: Vec<Cow<'static, str>>,
    len: usize,
}

impl Ended {
    /// Spans held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no span is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes held by the packed fields and text (names not counted).
    pub fn packed_bytes(&self) -> usize {
        self.bytes.len()
    }

    /// Packs `span`, moving its names out (each left empty). What is left
    /// in `span` (bext's attribute allocations) is the caller's to drop.
    #[inline]
    pub fn push(&mut self, span: &mut Span) {
        packed::put_span::<false>(&mut self.bytes, span);
        self.names.push(std::mem::take(&mut span.name));
        // As many event names as `put_span` packed events.
        let events = packed::counted(&span.events).len();
        (span.events.iter_mut().take(events)).for_each(|e| self.names.push(std::mem::take(&mut e.name)));
        self.len += 1;
    }

    /// Unpacks every span onto `batch`, in push order, and empties the
    /// buffer. Returns how many spans could not be unpacked: always 0, as
    /// only [`Ended::push`] writes the buffer; a caller counts any others
    /// as corrupt rather than losing them silently.
    pub fn drain_into(&mut self, batch: &mut Vec<Span>) -> usize {
        batch.reserve(self.len);
        let used = (self.bytes.len(), self.names.len());
        let mut r = Reader::new(&self.bytes, Names::Beside(self.names.drain(..)), usize::MAX);
        let mut unpacked = 0;
        while unpacked < self.len {
            match r.span() {
                Some(span) => batch.push(span),
                None => break,
            }
            unpacked += 1;
        }
        drop(r);
        self.emptied(used, unpacked)
    }

    /// Moves every span onto `run`, in push order, names inline, without
    /// unpacking one (the spiller's way to the spool), and empties the
    /// buffer. Returns how many spans could not be moved: always 0, as
    /// for [`Ended::drain_into`].
    pub fn drain_inline(&mut self, run: &mut Run) -> usize {
        let used = (self.bytes.len(), self.names.len());
        let mut names = self.names.drain(..);
        let (mut at, mut moved) = (0, 0);
        while moved < self.len {
            match run.push_packed(&self.bytes[at..], &mut names) {
                Some(n) => at += n,
                None => break,
            }
            moved += 1;
        }
        drop(names);
        self.emptied(used, moved)
    }

    /// Empties the buffer after a drain that took `taken` of its spans
    /// and had `used` of its room (bytes, names); returns how many spans
    /// it could not take.
    fn emptied(&mut self, used: (usize, usize), taken: usize) -> usize {
        let lost = self.len - taken;
        self.len = 0;
        self.bytes.clear();
        self.names.clear();
        release(&mut self.bytes, used.0);
        release(&mut self.names, used.1);
        lost
    }
}

/// After a drain that used `used` of `buf`'s room: keeps all of it while
/// that is at least a quarter, else releases half. A load that wavers
/// between flushes thus never regrows the buffer (regrowing faults fresh
/// pages in on the hot path, 40 ns a span when it happened at every
/// flush), and a burst's peak is released over the quiet flushes after it.
fn release<T>(buf: &mut Vec<T>, used: usize) {
    if used < buf.capacity() / 4 {
        buf.shrink_to(buf.capacity() / 2);
    }
}

#[cfg(test)]
mod tests;
