//! The packed form of a [`Span`]: its fields and text in one pass of
//! little-endian bytes, with no per-span allocation to write and a
//! bounded reader.
//!
//! Two users share it: a shard's ended buffer (`tracer::ended`) keeps span
//! and event names beside the bytes, as the interned `&'static str`s they
//! usually are; a spool record of version 3 (`spool::record`) writes them
//! inline. This layout is on disk from record version 3 on: a change to
//! it is a new record version, with the old reader kept.
//!
//! Layout of one span (`str` is a `u32` length and UTF-8 bytes; `attrs` is
//! a `u32` count of `str` key, `u8` tag, value; `[name str]` is present
//! only with inline names):
//!
//! ```text
//! trace_id [16] span_id [8] parent_id [8] flags u8 kind u8
//! start u64 end u64 dropped_attributes u32 dropped_events u32
//! [status str, when flags say Error] attrs [name str]
//! u32 events, each: time u64 attrs [name str]
//! ```
//!
//! Value tags: 0 string (`str`), 1 bool (`u8`), 2 i64, 3 f64 (its bits,
//! so NaN payloads and `-0.0` survive), 4 to 7 arrays of those (a `u32`
//! count, then the elements). Flags: 1 a parent, 2 status Ok, 4 status
//! Error.
//!
//! Invariants:
//! - reading what [`put_span`] wrote gives back the span, equal field by
//!   field, and consumes exactly its bytes;
//! - writing never fails whatever the sizes: a string past `u32::MAX`
//!   bytes is cut at a character boundary, a list past `u32::MAX` items is
//!   cut to that count;
//! - reading never panics on any bytes and charges every allocation it
//!   makes (strings by length, lists by their items' size, spans by
//!   theirs) to its budget *before* making it, so crafted counts or
//!   lengths fail instead of allocating.

use crate::span::{Event, Events, Kind, Span, Status, Value};
use std::borrow::Cow;
use std::mem::size_of;

const HAS_PARENT: u8 = 1;
const STATUS_OK: u8 = 2;
const STATUS_ERROR: u8 = 4;

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

/// Appends `span` in the packed layout, its names inline when `INLINE`
/// (else the caller keeps them: the span's, then each of the first
/// [`counted`] events').
#[inline(always)]
pub(crate) fn put_span<const INLINE: bool>(s: &mut Vec<u8>, span: &Span) {
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
    if INLINE {
        put_str(s, &span.name);
    }
    let events = counted(&span.events);
    put_len(s, events.len());
    for event in events {
        s.extend_from_slice(&event.time_unix_nanos.to_le_bytes());
        put_attrs(s, &event.attributes);
        if INLINE {
            put_str(s, &event.name);
        }
    }
}

#[inline(always)]
fn put_len(s: &mut Vec<u8>, n: usize) {
    s.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes());
}

/// Appends `text` as a `str`.
#[inline(always)]
pub(crate) fn put_str(s: &mut Vec<u8>, text: &str) {
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

/// A list as written: at most `u32::MAX` of its items are packed.
#[inline(always)]
pub(crate) fn counted<T>(items: &[T]) -> &[T] {
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

/// Where a reader finds names: beside the bytes, in order, or inline.
pub(crate) enum Names<'a> {
    /// Kept beside the bytes (a shard's ended buffer).
    Beside(std::vec::Drain<'a, Cow<'static, str>>),
    /// Written inline (a spool record).
    Inline,
}

/// Reads back what [`put_span`] wrote; `None` past the end, on a byte it
/// never writes, or past the budget.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    names: Names<'a>,
    /// Bytes the reader may still allocate.
    budget: usize,
}

impl<'a> Reader<'a> {
    /// A reader of `bytes`, allocating at most `budget` bytes for what it
    /// reads (strings, lists and spans at their in-memory size).
    pub(crate) fn new(bytes: &'a [u8], names: Names<'a>, budget: usize) -> Reader<'a> {
        Reader { bytes, names, budget }
    }

    /// Bytes not read yet.
    pub(crate) fn rest(&self) -> &'a [u8] {
        self.bytes
    }

    fn charge(&mut self, bytes: usize) -> Option<()> {
        self.budget = self.budget.checked_sub(bytes)?;
        Some(())
    }

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

    /// A `str`.
    pub(crate) fn string(&mut self) -> Option<String> {
        let n = self.len()?;
        let (text, rest) = self.bytes.split_at_checked(n)?;
        self.charge(n)?;
        self.bytes = rest;
        String::from_utf8(text.to_vec()).ok()
    }

    fn name(&mut self) -> Option<Cow<'static, str>> {
        match &mut self.names {
            Names::Beside(names) => names.next(),
            Names::Inline => self.string().map(Cow::Owned),
        }
    }

    /// A list's count, its room (`n` items of `T`) charged.
    fn count<T>(&mut self) -> Option<usize> {
        let n = self.len()?;
        self.charge(n.checked_mul(size_of::<T>())?)?;
        Some(n)
    }

    /// A count, then that many items of `item`: the list's room is
    /// charged, then reserved, before any item is read.
    fn many<T>(&mut self, mut item: impl FnMut(&mut Self) -> Option<T>) -> Option<Vec<T>> {
        let n = self.count::<T>()?;
        let mut items = Vec::with_capacity(n);
        for _ in 0..n {
            items.push(item(self)?);
        }
        Some(items)
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

    /// The next span.
    pub(crate) fn span(&mut self) -> Option<Span> {
        self.charge(size_of::<Span>())?;
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
        let name = self.name()?;
        let n = self.count::<Event>()?;
        let mut events = Events::with_capacity(n);
        for _ in 0..n {
            let time_unix_nanos = self.u64()?;
            let attributes = self.attrs()?;
            let name = self.name()?;
            events.push(Event {
                name,
                time_unix_nanos,
                attributes,
            });
        }
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

/// Spans packed with their names inline, back to back, as a record's
/// payload holds them after the service name: what the spiller writes from
/// the shards' buffers without unpacking a span, and what
/// `spool::write::prepare` cuts into records.
#[derive(Default)]
pub struct Run {
    bytes: Vec<u8>,
    /// Where each span ends in `bytes`, and when it started.
    spans: Vec<(usize, u64)>,
    /// The bytes of the last reordering, kept for the next.
    spare: Vec<u8>,
}

impl Run {
    /// Spans held.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// Whether no span is held.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Empties the run, keeping its room.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.spans.clear();
    }

    fn end(&self, i: usize) -> usize {
        if i == 0 { 0 } else { self.spans[i - 1].0 }
    }

    /// The packed bytes of spans `from..to`.
    pub fn bytes(&self, from: usize, to: usize) -> &[u8] {
        &self.bytes[self.end(from)..self.end(to)]
    }

    fn close(&mut self, start_at: usize) {
        let start = self.bytes[start_at + START..]
            .first_chunk::<8>()
            .map_or(0, |b| u64::from_le_bytes(*b));
        self.spans.push((self.bytes.len(), start));
    }

    /// Appends `span`.
    pub(crate) fn push(&mut self, span: &Span) {
        let at = self.bytes.len();
        put_span::<true>(&mut self.bytes, span);
        self.close(at);
    }

    /// Appends the span at the start of `src`, written by
    /// `put_span::<false>`, taking its names from `names`: copied, not
    /// unpacked. Returns the bytes of `src` it took, or `None` (and
    /// appends nothing) if `src` does not start with such a span or
    /// `names` runs out.
    pub(crate) fn push_packed(
        &mut self,
        src: &[u8],
        names: &mut impl Iterator<Item = Cow<'static, str>>,
    ) -> Option<usize> {
        let at = self.bytes.len();
        let taken = self.transcribe(src, names);
        match taken {
            Some(_) => self.close(at),
            None => self.bytes.truncate(at),
        }
        taken
    }

    fn transcribe(&mut self, src: &[u8], names: &mut impl Iterator<Item = Cow<'static, str>>) -> Option<usize> {
        let mut c = Skip { bytes: src, at: 0 };
        c.over(FIXED)?;
        if src[FLAGS] & STATUS_ERROR != 0 {
            c.str()?;
        }
        c.attrs()?;
        self.bytes.extend_from_slice(&src[..c.at]);
        put_str(&mut self.bytes, &names.next()?);
        let count = c.at;
        let events = c.len()?;
        self.bytes.extend_from_slice(&src[count..c.at]);
        for _ in 0..events {
            let from = c.at;
            c.over(8)?;
            c.attrs()?;
            self.bytes.extend_from_slice(&src[from..c.at]);
            put_str(&mut self.bytes, &names.next()?);
        }
        Some(c.at)
    }

    /// Puts the spans in start order (ties keep their order), so spans
    /// are spooled oldest first although shards hand them over shard by
    /// shard.
    pub(crate) fn order_by_start(&mut self) {
        if self.spans.is_sorted_by_key(|&(_, start)| start) {
            return;
        }
        let mut order: Vec<(u64, u32)> = (self.spans.iter().enumerate())
            .map(|(i, &(_, start))| (start, i as u32))
            .collect();
        order.sort_unstable();
        self.spare.clear();
        let mut spans = Vec::with_capacity(self.spans.len());
        for &(start, i) in &order {
            let i = i as usize;
            let from = if i == 0 { 0 } else { self.spans[i - 1].0 };
            self.spare.extend_from_slice(&self.bytes[from..self.spans[i].0]);
            spans.push((self.spare.len(), start));
        }
        std::mem::swap(&mut self.bytes, &mut self.spare);
        self.spans = spans;
    }

    /// Every span unpacked, in order, and how many would not unpack (none
    /// unless memory was damaged).
    pub(crate) fn unpack(&self) -> (Vec<Span>, u64) {
        let mut spans = Vec::with_capacity(self.len());
        let mut lost = 0;
        for i in 0..self.len() {
            match Reader::new(self.bytes(i, i + 1), Names::Inline, usize::MAX).span() {
                Some(span) => spans.push(span),
                None => lost += 1,
            }
        }
        (spans, lost)
    }
}

/// Where the start time is in a packed span, and the flags byte; the
/// length of its fixed fields.
const START: usize = 34;
const FLAGS: usize = 32;
const FIXED: usize = 58;

/// Steps over a packed span's fields without reading them into values.
struct Skip<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Skip<'_> {
    fn over(&mut self, n: usize) -> Option<()> {
        let end = self.at.checked_add(n).filter(|&end| end <= self.bytes.len())?;
        self.at = end;
        Some(())
    }

    fn len(&mut self) -> Option<usize> {
        let n = self
            .bytes
            .get(self.at..)?
            .first_chunk::<4>()
            .map(|b| u32::from_le_bytes(*b))?;
        self.at += 4;
        Some(n as usize)
    }

    fn str(&mut self) -> Option<()> {
        let n = self.len()?;
        self.over(n)
    }

    fn attrs(&mut self) -> Option<()> {
        for _ in 0..self.len()? {
            self.str()?;
            let tag = *self.bytes.get(self.at)?;
            self.at += 1;
            match tag {
                0 => self.str()?,
                1 => self.over(1)?,
                2 | 3 => self.over(8)?,
                4 => (0..self.len()?).try_for_each(|_| self.str())?,
                5 => {
                    let n = self.len()?;
                    self.over(n)?
                }
                6 | 7 => {
                    let n = self.len()?;
                    self.over(n.checked_mul(8)?)?
                }
                _ => return None,
            }
        }
        Some(())
    }
}
