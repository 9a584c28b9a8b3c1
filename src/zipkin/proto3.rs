//! Zipkin's protocol-buffers model on the wire (`zipkin.proto3`, the
//! `application/x-protobuf` body of `POST /api/v2/spans`).
//!
//! Written by hand from the model's field numbers, straight from a
//! [`Span`] into the caller's buffer as the JSON encoder is: no message
//! structs are built per span. The mapping is the JSON one field for
//! field (same tags, annotation values and remote endpoint, from the
//! parent module's helpers); only the representation differs: ids are raw
//! bytes, timestamps `fixed64` microseconds, the kind an enum number.
//!
//! Invariants: every message is well formed (each length prefix is the
//! exact length of what follows it); a proto3 default (empty, zero) is
//! omitted, as proto3 writers do, except inside a tag's map entry, whose
//! key and value are always written.

use super::{Peer, Tag, annotation_value, duration_micros, each_tag, remote_endpoint, tag_text};
use crate::span::{Kind, Span};

/// Wire types.
const VARINT: u32 = 0;
const FIXED64: u32 = 1;
const LEN: u32 = 2;

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn varint_len(v: u64) -> usize {
    (70 - (v | 1).leading_zeros() as usize) / 7
}

fn key(out: &mut Vec<u8>, field: u32, wire: u32) {
    varint(out, u64::from(field << 3 | wire));
}

/// A length-delimited field (string, bytes, message), written even when empty.
pub(super) fn len_field(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    key(out, field, LEN);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// A length-delimited field, omitted when empty.
fn some_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    if !bytes.is_empty() {
        len_field(out, field, bytes);
    }
}

fn some_varint(out: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        key(out, field, VARINT);
        varint(out, v);
    }
}

fn some_fixed64(out: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        key(out, field, FIXED64);
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// The bytes of a length-delimited field holding `len` bytes (all fields
/// here have one-byte keys).
fn len_field_size(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

/// `Span.local_endpoint` (field 8) naming `service`.
pub(super) fn local_endpoint(out: &mut Vec<u8>, service: &str) {
    if service.is_empty() {
        return;
    }
    key(out, 8, LEN);
    varint(out, len_field_size(service.len()) as u64);
    len_field(out, 1, service.as_bytes());
}

/// The `zipkin.proto3.Span` message of `span` (its fields, without the
/// `ListOfSpans` key and length), `local_endpoint` being the rendered
/// field 8.
pub(super) fn span(out: &mut Vec<u8>, span: &Span, local_endpoint: &[u8], scratch: &mut Vec<u8>) {
    len_field(out, 1, &span.trace_id);
    if let Some(parent) = &span.parent_id {
        len_field(out, 2, parent);
    }
    len_field(out, 3, &span.span_id);
    some_varint(out, 4, kind_number(span.kind));
    some_bytes(out, 5, span.name.as_bytes());
    some_fixed64(out, 6, span.start_unix_nanos / 1000);
    some_varint(out, 7, duration_micros(span));
    out.extend_from_slice(local_endpoint);
    if let Some((peer, port)) = remote_endpoint(span) {
        let (v4, v6);
        let (field, address): (u32, &[u8]) = match &peer {
            Peer::Name(name) => (1, name.as_bytes()),
            Peer::V4(ip) => {
                v4 = ip.octets();
                (2, &v4)
            }
            Peer::V6(ip) => {
                v6 = ip.octets();
                (3, &v6)
            }
        };
        let port = port.map(u64::from).unwrap_or(0);
        let size = len_field_size(address.len()) + if port > 0 { 1 + varint_len(port) } else { 0 };
        key(out, 9, LEN);
        varint(out, size as u64);
        len_field(out, field, address);
        some_varint(out, 4, port);
    }
    for event in &span.events {
        let timestamp = event.time_unix_nanos / 1000;
        let value = annotation_value(event, scratch);
        let size = if timestamp > 0 { 9 } else { 0 }
            + if value.is_empty() {
                0
            } else {
                len_field_size(value.len())
            };
        key(out, 10, LEN);
        varint(out, size as u64);
        some_fixed64(out, 1, timestamp);
        some_bytes(out, 2, value);
    }
    let mut num = itoa::Buffer::new();
    each_tag(span, |name, tag| {
        let value: &[u8] = match tag {
            Tag::Text(text) => text.as_bytes(),
            Tag::Value(value) => tag_text(value, scratch),
            Tag::Count(count) => num.format(count).as_bytes(),
        };
        key(out, 11, LEN);
        varint(out, (len_field_size(name.len()) + len_field_size(value.len())) as u64);
        len_field(out, 1, name.as_bytes());
        len_field(out, 2, value);
    });
}

/// `Span.Kind`'s number; 0 (unspecified) for an internal span.
fn kind_number(kind: Kind) -> u64 {
    match kind {
        Kind::Internal => 0,
        Kind::Client => 1,
        Kind::Server => 2,
        Kind::Producer => 3,
        Kind::Consumer => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_are_as_long_as_written() {
        for v in [0, 1, 127, 128, 16_383, 16_384, u64::from(u32::MAX), u64::MAX] {
            let mut out = Vec::new();
            varint(&mut out, v);
            assert_eq!(out.len(), varint_len(v), "{v}");
        }
        let mut out = Vec::new();
        varint(&mut out, 300);
        assert_eq!(out, [0xac, 0x02]);
    }
}
