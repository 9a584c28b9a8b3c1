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
//! the transport and the spool then use unchanged. So the packed form never
//! leaves this module and never reaches the disk: it may change freely
//! between versions.
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
//! Layout of one span (little-endian; `str` is a `u32` length and UTF-8
//! bytes; `attrs` is a `u32` count of `str` key, `u8` tag, value):
//!
//! ```text
//! trace_id [16] span_id [8] parent_id [8] flags u8 kind u8
//! start u64 end u64 dropped_attributes u32 dropped_events u32
//! [status str, when flags say Error] attrs
//! u32 events, each: time u64 attrs
//! ```
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

use crate::span::{Event, Events, Kind, Span, Status, Value};
use std::borrow::Cow;

const HAS_PARENT: u8 = 1;
const STATUS_OK: u8 = 2;
const STATUS_ERROR: u8 = 4;

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
        layout(&mut self.bytes, span);
        self.names.push(std::mem::take(&mut span.name));
        // As many event names as `layout` packed events.
        let events = counted(&span.events).len();
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
        let mut r = Reader {
            bytes: &self.bytes,
            names: self.names.drain(..),
        };
        let mut unpacked = 0;
        while unpacked < self.len {
            match r.span() {
                Some(span) => batch.push(span),
                None => break,
            }
            unpacked += 1;
        }
        drop(r);
        let lost = self.len - unpacked;
        self.len = 0;
        self.bytes.clear();
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

fn kind_byte(kind: Kind) -> u8 {
    match kind {
        Kind::Internal => 0,
        Kind::Server => 1,
        Kind::Client => 2,
        Kind::Producer => 3,
        Kind::Consumer => 4,
    }
}

fn kind_of(byte: u8) -> Option<Kind> {
    Some(match byte {
        0 => Kind::Internal,
        1 => Kind::Server,
        2 => Kind::Client,
        3 => Kind::Producer,
        4 => Kind::Consumer,
        _ => return None,
    })
}

/// The packed layout of a span (see the module docs), names aside.
#[inline(always)]
fn layout(s: &mut Vec<u8>, span: &Span) {
    let status = match span.status {
        Status::Unset => 0,
        Status::Ok => STATUS_OK,
        Status::Error(_) => STATUS_ERROR,
    };
    let parent = if span.parent_id.is_some() { HAS_PARENT } else { 0 };
    s.extend_from_slice(&span.trace_id);
    s.extend_from_slice(&span.span_id);
    s.extend_from_slice(&span.parent_id.unwrap_or_default());
    s.extend_from_slice(&[parent | status, kind_byte(span.kind)]);
    s.extend_from_slice(&span.start_unix_nanos.to_le_bytes());
    s.extend_from_slice(&span.end_unix_nanos.to_le_bytes());
    s.extend_from_slice(&span.dropped_attributes.to_le_bytes());
    s.extend_from_slice(&span.dropped_events.to_le_bytes());
    if let Status::Error(text) = &span.status {
        put_str(s, text);
    }
    put_attrs(s, &span.attributes);
    let events = counted(&span.events);
    put_len(s, events.len());
    for event in events {
        s.extend_from_slice(&event.time_unix_nanos.to_le_bytes());
        put_attrs(s, &event.attributes);
    }
}

#[inline(always)]
fn put_len(s: &mut Vec<u8>, n: usize) {
    s.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes());
}

#[inline(always)]
fn put_str(s: &mut Vec<u8>, text: &str) {
    let text = if text.len() > u32::MAX as usize {
        clip(text)
    } else {
        text
    };
    put_len(s, text.len());
    s.extend_from_slice(text.as_bytes());
}

/// `s` cut to at most `u32::MAX` bytes, at a character boundary.
#[cold]
fn clip(s: &str) -> &str {
    let mut end = u32::MAX as usize;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A count as written: at most `u32::MAX` of the items are packed.
#[inline(always)]
fn counted<T>(items: &[T]) -> &[T] {
    &items[..items.len().min(u32::MAX as usize)]
}

#[inline(always)]
fn put_attrs(s: &mut Vec<u8>, attrs: &[(String, Value)]) {
    let attrs = counted(attrs);
    put_len(s, attrs.len());
    for (key, value) in attrs {
        put_str(s, key);
        put_value(s, value);
    }
}

#[inline(always)]
fn put_value(s: &mut Vec<u8>, v: &Value) {
    match v {
        Value::String(text) => {
            s.push(0);
            put_str(s, text);
        }
        Value::Bool(x) => s.extend_from_slice(&[1, u8::from(*x)]),
        Value::I64(x) => {
            s.push(2);
            s.extend_from_slice(&x.to_le_bytes());
        }
        Value::F64(x) => {
            s.push(3);
            s.extend_from_slice(&x.to_bits().to_le_bytes());
        }
        Value::StringArray(a) => {
            s.push(4);
            let a = counted(a);
            put_len(s, a.len());
            a.iter().for_each(|text| put_str(s, text));
        }
        Value::BoolArray(a) => {
            s.push(5);
            let a = counted(a);
            put_len(s, a.len());
            a.iter().for_each(|&x| s.push(u8::from(x)));
        }
        Value::I64Array(a) => {
            s.push(6);
            let a = counted(a);
            put_len(s, a.len());
            a.iter().for_each(|x| s.extend_from_slice(&x.to_le_bytes()));
        }
        Value::F64Array(a) => {
            s.push(7);
            let a = counted(a);
            put_len(s, a.len());
            a.iter().for_each(|x| s.extend_from_slice(&x.to_bits().to_le_bytes()));
        }
    }
}

/// Reads back what [`Ended::push`] wrote; `None` past the end or on a
/// byte `push` never writes.
struct Reader<'a> {
    bytes: &'a [u8],
    names: std::vec::Drain<'a, Cow<'static, str>>,
}

impl Reader<'_> {
    fn take<const K: usize>(&mut self) -> Option<[u8; K]> {
        let (head, rest) = self.bytes.split_first_chunk::<K>()?;
        self.bytes = rest;
        Some(*head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take::<1>().map(|[b]| b)
    }

    fn u32(&mut self) -> Option<u32> {
        self.take().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Option<u64> {
        self.take().map(u64::from_le_bytes)
    }

    fn len(&mut self) -> Option<usize> {
        self.u32().map(|n| n as usize)
    }

    fn string(&mut self) -> Option<String> {
        let n = self.len()?;
        let (text, rest) = self.bytes.split_at_checked(n)?;
        self.bytes = rest;
        String::from_utf8(text.to_vec()).ok()
    }

    /// A count, then that many items of `item` collected into `C` (none
    /// reserved up front: the count is not trusted).
    fn many<T, C: FromIterator<T>>(&mut self, mut item: impl FnMut(&mut Self) -> Option<T>) -> Option<C> {
        let n = self.len()?;
        std::iter::repeat_with(|| item(self)).take(n).collect()
    }

    fn value(&mut self) -> Option<Value> {
        Some(match self.u8()? {
            0 => Value::String(self.string()?),
            1 => Value::Bool(self.u8()? != 0),
            2 => Value::I64(self.u64()? as i64),
            3 => Value::F64(f64::from_bits(self.u64()?)),
            4 => Value::StringArray(self.many(Self::string)?),
            5 => Value::BoolArray(self.many(|r| r.u8().map(|b| b != 0))?),
            6 => Value::I64Array(self.many(|r| r.u64().map(|x| x as i64))?),
            7 => Value::F64Array(self.many(|r| r.u64().map(f64::from_bits))?),
            _ => return None,
        })
    }

    fn attrs(&mut self) -> Option<Vec<(String, Value)>> {
        self.many(|r| Some((r.string()?, r.value()?)))
    }

    fn span(&mut self) -> Option<Span> {
        let trace_id = self.take()?;
        let span_id = self.take()?;
        let parent_id = self.take()?;
        let flags = self.u8()?;
        let kind = kind_of(self.u8()?)?;
        let start_unix_nanos = self.u64()?;
        let end_unix_nanos = self.u64()?;
        let dropped_attributes = self.u32()?;
        let dropped_events = self.u32()?;
        let status = if flags & STATUS_ERROR != 0 {
            Status::Error(self.string()?)
        } else if flags & STATUS_OK != 0 {
            Status::Ok
        } else {
            Status::Unset
        };
        let attributes = self.attrs()?;
        let name = self.names.next()?;
        let events: Events = self.many(|r| {
            let time_unix_nanos = r.u64()?;
            let attributes = r.attrs()?;
            let name = r.names.next()?;
            Some(Event {
                name,
                time_unix_nanos,
                attributes,
            })
        })?;
        Some(Span {
            trace_id,
            span_id,
            parent_id: (flags & HAS_PARENT != 0).then_some(parent_id),
            name,
            kind,
            start_unix_nanos,
            end_unix_nanos,
            status,
            attributes,
            events,
            dropped_attributes,
            dropped_events,
        })
    }
}

#[cfg(test)]
mod tests;
