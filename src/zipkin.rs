//! Zipkin v2 encoding, JSON and proto3, and the OpenTelemetry-to-Zipkin
//! mapping.
//!
//! The encoder writes straight into a caller-owned `Vec<u8>` that the
//! exporter reuses across flushes: no per-span model is built and nothing is
//! allocated per span once the buffers have grown. The mapping follows the
//! OpenTelemetry specification's Zipkin exporter section:
//!
//! | span | Zipkin |
//! |---|---|
//! | ids | lower-case hex: `traceId` 32, `id` and `parentId` 16 |
//! | start, end | `timestamp` in µs, `duration` in µs, never below 1 |
//! | kind | `SERVER`/`CLIENT`/`PRODUCER`/`CONSUMER`; `INTERNAL` is omitted |
//! | attributes | `tags`, all strings: bools `true`/`false`, numbers as text, arrays as JSON arrays |
//! | status | `otel.status_code` = `OK`/`ERROR`; an error's description in `error` |
//! | events | `annotations`: the name, or `"name": {attributes as JSON}` |
//! | dropped attributes, events | `otel.dropped_attributes_count`, `otel.dropped_events_count` |
//! | config `service_name` | `localEndpoint.serviceName` |
//! | `peer.service`, `server.address`, ... (CLIENT, PRODUCER) | `remoteEndpoint`, by the spec's ranking |
//!
//! Invariants: the output is always valid JSON (strings escaped for any
//! Unicode, control characters included; NaN and infinities rendered as
//! strings); every span satisfies what Zipkin's decoder demands (no
//! all-zero id is ever produced here because the tracer never creates one;
//! no `INTERNAL` kind; tag values are strings; ports are within 1..=65535);
//! empty fields are omitted.

use crate::config::Encoding;
use crate::span::{Event, Kind, Span, Status, Value};
use std::net::{Ipv4Addr, Ipv6Addr};

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Encodes spans as Zipkin v2 JSON or as Zipkin's proto3 `ListOfSpans`.
///
/// ```
/// use spillway::unstable::{span::{Span, Kind, Status}, zipkin::Encoder};
/// let span = Span {
///     trace_id: [1; 16], span_id: [2; 8], parent_id: None, name: "GET /".into(),
///     kind: Kind::Server, start_unix_nanos: 1_700_000_000_000_000_000,
///     end_unix_nanos: 1_700_000_000_000_500_000, status: Status::Ok,
///     attributes: vec![], events: Default::default(), dropped_attributes: 0, dropped_events: 0,
/// };
/// let mut out = Vec::new();
/// Encoder::new("shop").encode_batch(&[span], &mut out);
/// let json: serde_json::Value = serde_json::from_slice(&out).unwrap();
/// assert_eq!(json[0]["duration"], 500);
/// assert_eq!(json[0]["tags"]["otel.status_code"], "OK");
/// ```
#[derive(Debug, Clone)]
pub struct Encoder {
    encoding: Encoding,
    /// The service name spans are stamped with.
    service: String,
    /// The local endpoint, rendered once per service: JSON's
    /// `"localEndpoint":{"serviceName":"..."}`, or proto3's field 8.
    local_endpoint: Vec<u8>,
    /// Scratch space for values that are text inside a string (a tag's
    /// JSON array, an event's attributes).
    scratch: Vec<u8>,
    /// proto3: one span's message, before its length is known.
    message: Vec<u8>,
}

impl Encoder {
    /// A JSON encoder that stamps every span with `service_name`.
    pub fn new(service_name: &str) -> Self {
        Self::with_encoding(Encoding::Json, service_name)
    }

    /// An encoder writing `encoding` that stamps every span with `service_name`.
    pub fn with_encoding(encoding: Encoding, service_name: &str) -> Self {
        let mut e = Encoder {
            encoding,
            service: String::new(),
            local_endpoint: Vec::new(),
            scratch: Vec::new(),
            message: Vec::new(),
        };
        e.render(service_name);
        e
    }

    /// Stamps spans from now on with `service_name` (cheap when unchanged):
    /// spooled records keep the service that recorded them.
    pub fn set_service(&mut self, service_name: &str) {
        if self.service != service_name {
            self.render(service_name);
        }
    }

    fn render(&mut self, service_name: &str) {
        self.service.clear();
        self.service.push_str(service_name);
        self.local_endpoint.clear();
        match self.encoding {
            Encoding::Json => {
                self.local_endpoint
                    .extend_from_slice(b"\"localEndpoint\":{\"serviceName\":");
                write_str(&mut self.local_endpoint, service_name);
                self.local_endpoint.push(b'}');
            }
            Encoding::Proto3 => proto3::local_endpoint(&mut self.local_endpoint, service_name),
        }
    }

    /// Appends a whole body: `[span,span,...]`, or the `ListOfSpans`.
    pub fn encode_batch(&mut self, spans: &[Span], out: &mut Vec<u8>) {
        self.open(out);
        for (i, span) in spans.iter().enumerate() {
            self.encode_next(i == 0, span, out);
        }
        self.close(out);
    }

    /// Starts a body (JSON's `[`).
    pub fn open(&self, out: &mut Vec<u8>) {
        if self.encoding == Encoding::Json {
            out.push(b'[');
        }
    }

    /// Ends a body (JSON's `]`).
    pub fn close(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.closing());
    }

    /// What [`Encoder::close`] appends.
    pub fn closing(&self) -> &'static [u8] {
        match self.encoding {
            Encoding::Json => b"]",
            Encoding::Proto3 => b"",
        }
    }

    /// Appends one span of a body after [`Encoder::open`], `first` or not
    /// (JSON separates spans with a comma).
    pub fn encode_next(&mut self, first: bool, span: &Span, out: &mut Vec<u8>) {
        if !first && self.encoding == Encoding::Json {
            out.push(b',');
        }
        self.encode_span(span, out);
    }

    /// Appends one span: a JSON object, or one `ListOfSpans.spans` entry.
    pub fn encode_span(&mut self, span: &Span, out: &mut Vec<u8>) {
        match self.encoding {
            Encoding::Json => self.json_span(span, out),
            Encoding::Proto3 => {
                let mut message = std::mem::take(&mut self.message);
                message.clear();
                proto3::span(&mut message, span, &self.local_endpoint, &mut self.scratch);
                proto3::len_field(out, 1, &message);
                self.message = message;
            }
        }
    }

    fn json_span(&mut self, span: &Span, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"traceId\":\"");
        write_hex(out, &span.trace_id);
        out.extend_from_slice(b"\",\"id\":\"");
        write_hex(out, &span.span_id);
        out.push(b'"');
        if let Some(parent) = &span.parent_id {
            out.extend_from_slice(b",\"parentId\":\"");
            write_hex(out, parent);
            out.push(b'"');
        }
        if !span.name.is_empty() {
            out.extend_from_slice(b",\"name\":");
            write_str(out, &span.name);
        }
        if let Some(kind) = kind_name(span.kind) {
            out.extend_from_slice(b",\"kind\":\"");
            out.extend_from_slice(kind.as_bytes());
            out.push(b'"');
        }
        let mut num = itoa::Buffer::new();
        let timestamp = span.start_unix_nanos / 1000;
        if timestamp > 0 {
            out.extend_from_slice(b",\"timestamp\":");
            out.extend_from_slice(num.format(timestamp).as_bytes());
        }
        out.extend_from_slice(b",\"duration\":");
        out.extend_from_slice(num.format(duration_micros(span)).as_bytes());
        out.push(b',');
        out.extend_from_slice(&self.local_endpoint);
        if let Some(remote) = remote_endpoint(span) {
            write_remote_endpoint(out, &remote);
        }
        if !span.events.is_empty() {
            out.extend_from_slice(b",\"annotations\":[");
            for (i, event) in span.events.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(b"{\"timestamp\":");
                out.extend_from_slice(num.format(event.time_unix_nanos / 1000).as_bytes());
                out.extend_from_slice(b",\"value\":");
                write_str_bytes(out, annotation_value(event, &mut self.scratch));
                out.push(b'}');
            }
            out.push(b']');
        }
        self.write_tags(out, span);
        out.push(b'}');
    }

    fn write_tags(&mut self, out: &mut Vec<u8>, span: &Span) {
        let start = out.len();
        out.extend_from_slice(b",\"tags\":{");
        let body = out.len();
        let scratch = &mut self.scratch;
        each_tag(span, |key, tag| {
            comma(out, body);
            write_str(out, key);
            out.push(b':');
            match tag {
                Tag::Text(text) => write_str(out, text),
                Tag::Value(value) => write_str_bytes(out, tag_text(value, scratch)),
                Tag::Count(count) => {
                    out.push(b'"');
                    out.extend_from_slice(itoa::Buffer::new().format(count).as_bytes());
                    out.push(b'"');
                }
            }
        });
        if out.len() == body {
            out.truncate(start);
        } else {
            out.push(b'}');
        }
    }
}

/// One Zipkin tag's value, before it is written as a string.
enum Tag<'a> {
    Text(&'a str),
    Value(&'a Value),
    Count(u32),
}

/// Calls `each` with every tag of `span`, in order: its attributes (less
/// those the status owns), the status, the dropped counts.
fn each_tag<'a>(span: &'a Span, mut each: impl FnMut(&'a str, Tag<'a>)) {
    let is_error = matches!(span.status, Status::Error(_));
    for (key, value) in &span.attributes {
        // The status owns these keys; a boolean-ish `error` that says
        // "no error" is removed, as the OpenTelemetry mapping asks.
        if key == "otel.status_code" && span.status != Status::Unset {
            continue;
        }
        if key == "error" && (is_error || is_falsy(value)) {
            continue;
        }
        each(key, Tag::Value(value));
    }
    match &span.status {
        Status::Unset => {}
        Status::Ok => each("otel.status_code", Tag::Text("OK")),
        Status::Error(description) => {
            each("otel.status_code", Tag::Text("ERROR"));
            each("error", Tag::Text(description));
        }
    }
    for (key, count) in [
        ("otel.dropped_attributes_count", span.dropped_attributes),
        ("otel.dropped_events_count", span.dropped_events),
    ] {
        if count > 0 {
            each(key, Tag::Count(count));
        }
    }
}

/// A tag value as the text Zipkin's string holds: a string as it is (not
/// copied), bools `true`/`false`, numbers as text, arrays as JSON (those
/// written into `scratch`).
fn tag_text<'a>(value: &'a Value, scratch: &'a mut Vec<u8>) -> &'a [u8] {
    scratch.clear();
    match value {
        Value::String(s) => return s.as_bytes(),
        Value::Bool(b) => scratch.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::I64(i) => scratch.extend_from_slice(itoa::Buffer::new().format(*i).as_bytes()),
        Value::F64(f) => write_f64_text(scratch, *f),
        array => write_json_value(scratch, array),
    }
    scratch
}

/// An annotation's value: the event's name, or `"name": {attributes as
/// JSON}` (built in `scratch`).
fn annotation_value<'a>(event: &'a Event, scratch: &'a mut Vec<u8>) -> &'a [u8] {
    if event.attributes.is_empty() {
        return event.name.as_bytes();
    }
    scratch.clear();
    write_str(scratch, &event.name);
    scratch.extend_from_slice(b": {");
    write_json_object_body(scratch, &event.attributes);
    scratch.push(b'}');
    scratch
}

fn comma(out: &mut Vec<u8>, body_start: usize) {
    if out.len() > body_start {
        out.push(b',');
    }
}

fn is_falsy(value: &Value) -> bool {
    matches!(value, Value::Bool(false)) || matches!(value, Value::String(s) if s == "false")
}

/// The Zipkin `kind`, or `None` for an internal span.
pub fn kind_name(kind: Kind) -> Option<&'static str> {
    match kind {
        Kind::Internal => None,
        Kind::Server => Some("SERVER"),
        Kind::Client => Some("CLIENT"),
        Kind::Producer => Some("PRODUCER"),
        Kind::Consumer => Some("CONSUMER"),
    }
}

/// The span's duration in whole microseconds, at least 1.
pub fn duration_micros(span: &Span) -> u64 {
    (span.end_unix_nanos.saturating_sub(span.start_unix_nanos) / 1000).max(1)
}

/// Lower-case hex of an id, as Zipkin wants it.
///
/// ```
/// assert_eq!(spillway::unstable::zipkin::hex(&[0xab, 0x01]), "ab01");
/// ```
pub fn hex(bytes: &[u8]) -> String {
    let mut out = Vec::with_capacity(bytes.len() * 2);
    write_hex(&mut out, bytes);
    out.into_iter().map(char::from).collect()
}

fn write_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    for b in bytes {
        out.push(HEX[usize::from(b >> 4)]);
        out.push(HEX[usize::from(b & 0xf)]);
    }
}

/// Writes `s` as a JSON string, quotes included.
fn write_str(out: &mut Vec<u8>, s: &str) {
    write_str_bytes(out, s.as_bytes());
}

/// Writes UTF-8 `bytes` as a JSON string. Only `"`, `\` and control
/// characters need escaping; everything else is copied in runs.
fn write_str_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut run = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[run..i]);
        run = i + 1;
        if escape.is_empty() {
            out.extend_from_slice(b"\\u00");
            write_hex(out, &[b]);
        } else {
            out.extend_from_slice(escape);
        }
    }
    out.extend_from_slice(&bytes[run..]);
    out.push(b'"');
}

/// A float as text: shortest round-trip form; `NaN`, `Infinity`, `-Infinity`.
fn write_f64_text(out: &mut Vec<u8>, f: f64) {
    if f.is_finite() {
        out.extend_from_slice(ryu::Buffer::new().format_finite(f).as_bytes());
    } else if f.is_nan() {
        out.extend_from_slice(b"NaN");
    } else if f > 0.0 {
        out.extend_from_slice(b"Infinity");
    } else {
        out.extend_from_slice(b"-Infinity");
    }
}

/// A value as native JSON (non-finite floats become strings, JSON has none).
fn write_json_value(out: &mut Vec<u8>, value: &Value) {
    fn list<T>(out: &mut Vec<u8>, items: &[T], mut each: impl FnMut(&mut Vec<u8>, &T)) {
        out.push(b'[');
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            each(out, item);
        }
        out.push(b']');
    }
    fn float(out: &mut Vec<u8>, f: f64) {
        if f.is_finite() {
            write_f64_text(out, f);
        } else {
            out.push(b'"');
            write_f64_text(out, f);
            out.push(b'"');
        }
    }
    fn boolean(out: &mut Vec<u8>, b: bool) {
        out.extend_from_slice(if b { b"true" } else { b"false" });
    }
    let mut num = itoa::Buffer::new();
    match value {
        Value::String(s) => write_str(out, s),
        Value::Bool(b) => boolean(out, *b),
        Value::I64(i) => out.extend_from_slice(num.format(*i).as_bytes()),
        Value::F64(f) => float(out, *f),
        Value::StringArray(a) => list(out, a, |o, s| write_str(o, s)),
        Value::BoolArray(a) => list(out, a, |o, b| boolean(o, *b)),
        Value::I64Array(a) => list(out, a, |o, i| o.extend_from_slice(num.format(*i).as_bytes())),
        Value::F64Array(a) => list(out, a, |o, f| float(o, *f)),
    }
}

fn write_json_object_body(out: &mut Vec<u8>, attributes: &[(String, Value)]) {
    for (i, (key, value)) in attributes.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(out, key);
        out.push(b':');
        write_json_value(out, value);
    }
}

/// The rank of an attribute that can name the remote endpoint (lower is
/// preferred), with the attribute that carries its port, per the
/// OpenTelemetry Zipkin mapping.
fn remote_rank(key: &str) -> Option<(u8, &'static str)> {
    Some(match key {
        "peer.service" => (1, "server.port"),
        "server.address" => (2, "server.port"),
        "net.peer.name" => (3, "net.peer.port"),
        "network.peer.address" => (4, "network.peer.port"),
        "server.socket.domain" => (5, "server.socket.port"),
        "server.socket.address" => (6, "server.socket.port"),
        "net.sock.peer.name" => (7, "net.sock.peer.port"),
        "net.sock.peer.addr" => (8, "net.sock.peer.port"),
        "peer.hostname" => (9, "server.port"),
        "peer.address" => (10, "server.port"),
        "db.name" => (11, ""),
        _ => return None,
    })
}

/// Where a remote endpoint is: an address or a name.
enum Peer<'a> {
    V4(Ipv4Addr),
    V6(Ipv6Addr),
    Name(&'a str),
}

/// The remote endpoint of a CLIENT or PRODUCER span: the best-ranked
/// attribute naming the peer, and its port when one is given in range.
fn remote_endpoint(span: &Span) -> Option<(Peer<'_>, Option<u16>)> {
    if !matches!(span.kind, Kind::Client | Kind::Producer) {
        return None;
    }
    let attributes = &span.attributes;
    let mut best: Option<(u8, &'static str, &str)> = None;
    for (key, value) in attributes {
        if let (Some((rank, port_key)), Value::String(v)) = (remote_rank(key), value)
            && !v.is_empty()
            && best.is_none_or(|(r, _, _)| rank < r)
        {
            best = Some((rank, port_key, v));
        }
    }
    let (_, port_key, name) = best?;
    let peer = if let Ok(ip) = name.parse::<Ipv4Addr>() {
        Peer::V4(ip)
    } else if let Ok(ip) = name.trim_matches(|c| c == '[' || c == ']').parse::<Ipv6Addr>() {
        Peer::V6(ip)
    } else {
        Peer::Name(name)
    };
    let port = attributes.iter().find_map(|(k, v)| match v {
        Value::I64(p) if !port_key.is_empty() && k == port_key => u16::try_from(*p).ok().filter(|p| *p > 0),
        _ => None,
    });
    Some((peer, port))
}

fn write_remote_endpoint(out: &mut Vec<u8>, (peer, port): &(Peer<'_>, Option<u16>)) {
    out.extend_from_slice(b",\"remoteEndpoint\":{");
    match peer {
        Peer::V4(ip) => {
            out.extend_from_slice(b"\"ipv4\":");
            write_str(out, &ip.to_string());
        }
        Peer::V6(ip) => {
            out.extend_from_slice(b"\"ipv6\":");
            write_str(out, &ip.to_string());
        }
        Peer::Name(name) => {
            out.extend_from_slice(b"\"serviceName\":");
            write_str(out, name);
        }
    }
    if let Some(port) = port {
        out.extend_from_slice(b",\"port\":");
        out.extend_from_slice(itoa::Buffer::new().format(*port).as_bytes());
    }
    out.push(b'}');
}

mod proto3;

#[cfg(test)]
mod tests;
