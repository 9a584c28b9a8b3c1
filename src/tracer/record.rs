//! The hot path: the five recording calls, inline in request handling on
//! many threads. Each locks one shard (two for a start with a parent: the
//! parent's, to check it is live, then the child's), performs no I/O and
//! never panics; an unknown, ended or `INVALID` handle is a no-op.

use super::{AttrValue, Inner, SpanEvent, SpanHandle, SpanStart, SpanStatus, live};
use crate::clock::Clock;
use crate::span::{Event, Events, Kind, Span, Status};
use std::sync::atomic::Ordering;

impl Inner {
    #[inline]
    pub(super) fn sampled(&self, trace_id: &[u8; 16]) -> bool {
        match self.sample_threshold {
            None => true,
            Some(t) => u64::from_be_bytes(low_half(trace_id)) < t,
        }
    }

    #[inline]
    pub(super) fn start_span(&self, start: SpanStart<'_>) -> SpanHandle {
        let (trace_id, parent_id, inherited) = match start.parent {
            Some(p) if p.is_invalid() => return SpanHandle::INVALID,
            Some(p) if self.is_live(&p) => (p.trace_id, Some(p.span_id), true),
            Some(p) if self.adopt_remote_parent && p.trace_id != [0; 16] && p.span_id != [0; 8] => {
                (p.trace_id, Some(p.span_id), false)
            }
            _ => (new_trace_id(), None, false),
        };
        if !inherited && !self.sampled(&trace_id) {
            self.sampled_out.fetch_add(1, Ordering::Relaxed);
            return SpanHandle::INVALID;
        }
        let start_unix_nanos = start
            .start_time_unix_nanos
            .unwrap_or_else(|| self.clock.now_unix_nanos());
        let mut dropped_attributes = 0;
        let attributes = capped(start.attributes, self.max_attributes, &mut dropped_attributes);
        let (shard, mut st) = self.claim();
        // A full shard means spans are being started and never ended:
        // refuse more rather than grow without bound.
        let vacant = if st.live.len() < self.live_per_shard {
            st.live.vacant()
        } else {
            None
        };
        let Some(slot) = vacant else {
            st.refused_live_full += 1;
            return SpanHandle::INVALID;
        };
        // At most two rounds: one address of all maps to the zero id.
        let id = loop {
            let generation = st.generation;
            st.generation = st.generation.wrapping_add(1) & live::GENERATION_MASK;
            if let Some(id) = self.ids.span_id(generation, slot, shard) {
                break id;
            }
        };
        let span = Span {
            trace_id,
            span_id: id.to_be_bytes(),
            parent_id,
            name: st.names.get(start.name),
            kind: Kind::from(start.kind),
            start_unix_nanos,
            end_unix_nanos: 0,
            status: Status::Unset,
            attributes,
            events: Events::new(),
            dropped_attributes,
            dropped_events: 0,
        };
        st.started += 1;
        st.live.insert(span);
        SpanHandle {
            trace_id,
            span_id: id.to_be_bytes(),
        }
    }

    #[inline]
    pub(super) fn set_attribute(&self, h: SpanHandle, key: &str, value: AttrValue) {
        let max = self.max_attributes;
        self.with_live(&h, |span, _| {
            if let Some(slot) = span.attributes.iter_mut().find(|(k, _)| k == key) {
                slot.1 = value;
            } else if span.attributes.len() < max {
                span.attributes.push((key.to_owned(), value));
            } else {
                span.dropped_attributes = span.dropped_attributes.saturating_add(1);
            }
        });
    }

    #[inline]
    pub(super) fn set_status(&self, h: SpanHandle, status: SpanStatus) {
        let status = Status::from(status);
        self.with_live(&h, |span, _| span.status = status);
    }

    #[inline]
    pub(super) fn add_event(&self, h: SpanHandle, event: SpanEvent<'_>) {
        if h.is_invalid() {
            return;
        }
        let time_unix_nanos = event.time_unix_nanos.unwrap_or_else(|| self.clock.now_unix_nanos());
        let max_events = self.max_events;
        let max_attributes = self.max_attributes;
        let attrs = event.attributes;
        self.with_live(&h, |span, names| {
            if span.events.len() >= max_events {
                span.dropped_events = span.dropped_events.saturating_add(1);
                return;
            }
            let mut dropped = 0;
            let attributes = capped(attrs, max_attributes, &mut dropped);
            span.dropped_attributes = span.dropped_attributes.saturating_add(dropped);
            span.events.push(Event {
                name: names.get(event.name),
                time_unix_nanos,
                attributes,
            });
        });
    }

    #[inline]
    pub(super) fn end_span(&self, h: SpanHandle, end_time_unix_nanos: Option<u64>) {
        if h.is_invalid() {
            return;
        }
        let end = end_time_unix_nanos.unwrap_or_else(|| self.clock.now_unix_nanos());
        let (id, a) = self.locate(&h);
        let mut guard = self.shard(a).lock();
        let st = &mut *guard;
        let room = st.ended.len() < self.shard_capacity;
        let ended = &mut st.ended;
        // bext's allocations are freed here, on the thread that made them.
        let found = st.live.remove_with(a.slot, id, &h.trace_id, |span| {
            if room {
                span.end_unix_nanos = end;
                ended.push(span);
            }
        });
        if !found {
            return;
        }
        st.recorded += 1;
        let shard = a.shard;
        let mut wake = false;
        if !room {
            st.queue_full += 1;
        } else if st.ended.len() == self.shard_capacity {
            wake = self.mark_full(shard);
        } else if st.live.len() + 1 == self.live_per_shard {
            // A live slot came free: let threads find it again.
            self.full.fetch_and(!(1 << shard), Ordering::Relaxed);
        }
        drop(guard);
        if wake {
            self.wake_spiller();
        }
    }

    pub(super) fn flush(&self) -> Result<(), String> {
        self.try_flush().map_err(|e| e.to_string())
    }
}

fn low_half(id: &[u8; 16]) -> [u8; 8] {
    let mut out = [0; 8];
    out.copy_from_slice(&id[8..]);
    out
}

fn random_nonzero() -> u64 {
    loop {
        let v = fastrand::u64(..);
        if v != 0 {
            return v;
        }
    }
}

fn new_trace_id() -> [u8; 16] {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&fastrand::u64(..).to_be_bytes());
    id[8..].copy_from_slice(&random_nonzero().to_be_bytes());
    id
}

/// The attributes as handed over, past `max` dropped and counted.
#[inline]
fn capped(mut attrs: Vec<(String, AttrValue)>, max: usize, dropped: &mut u32) -> Vec<(String, AttrValue)> {
    if attrs.len() > max {
        *dropped += (attrs.len() - max) as u32;
        attrs.truncate(max);
    }
    attrs
}
