//! The owned, finished-span model that every stage after the hot path uses.
//!
//! A [`Span`] is built by the tracer while the span is live and handed on,
//! unchanged, to the encoder, the transport and the spool. It owns its data
//! so that it can outlive the request that produced it. Attribute values
//! are bext's `AttrValue`, kept as handed over (recording converts
//! nothing). The spool writes spans in their packed form ([`packed`]);
//! records of versions 1 and 2 hold them in bincode through serde, where
//! bext's `#[serde(untagged)]` values would not decode, so spans serialize
//! them through an *externally tagged* mirror. Either way the spool reads
//! back exactly what it wrote (NaN and infinities included).
//!
//! Invariants kept by the tracer (and relied on by the encoder):
//! - `trace_id` and `span_id` are never all-zero;
//! - `end_unix_nanos` is set when the span ends (it may be *before*
//!   `start_unix_nanos` when a caller passes odd overrides; the encoder
//!   clamps the duration to at least 1 µs);
//! - attribute keys are unique within `attributes` when set through
//!   `set_attribute` (the last write wins).

pub(crate) use bext_plugin_api::tracer::AttrValue;
use bext_plugin_api::tracer::{SpanKind, SpanStatus};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

pub(crate) mod packed;

/// An attribute value: bext's own [`AttrValue`], stored as handed over so
/// that recording converts nothing. Its serde form is untagged, which
/// bincode cannot decode, so [`Span`] and [`Event`] serialize their
/// attributes through a tagged mirror (see `tagged_attrs`).
pub type Value = AttrValue;

/// The kind of a span, as OpenTelemetry defines it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Kind {
    /// An operation inside the application (no Zipkin `kind`).
    #[default]
    Internal,
    /// An incoming request.
    Server,
    /// An outgoing request.
    Client,
    /// A message sent to a broker.
    Producer,
    /// A message received from a broker.
    Consumer,
}

impl From<SpanKind> for Kind {
    #[inline]
    fn from(k: SpanKind) -> Self {
        match k {
            SpanKind::Internal => Kind::Internal,
            SpanKind::Server => Kind::Server,
            SpanKind::Client => Kind::Client,
            SpanKind::Producer => Kind::Producer,
            SpanKind::Consumer => Kind::Consumer,
        }
    }
}

/// The final status of a span; the last `set_status` before `end_span` wins.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Status {
    /// No status was set.
    #[default]
    Unset,
    /// The operation succeeded.
    Ok,
    /// The operation failed, with a human-readable description.
    Error(String),
}

impl From<SpanStatus> for Status {
    #[inline]
    fn from(s: SpanStatus) -> Self {
        match s {
            SpanStatus::Unset => Status::Unset,
            SpanStatus::Ok => Status::Ok,
            SpanStatus::Error { description } => Status::Error(description),
        }
    }
}

/// A point-in-time event inside a span (a Zipkin annotation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Event name, such as `exception` (usually interned by the tracer).
    pub name: Cow<'static, str>,
    /// When it happened, in nanoseconds since the Unix epoch.
    pub time_unix_nanos: u64,
    /// The event's attributes.
    #[serde(with = "tagged_attrs")]
    pub attributes: Vec<(String, Value)>,
}

/// A span's events.
pub type Events = smallvec::SmallVec<[Event; 1]>;

/// A finished span, owned, ready to encode or spill.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Span {
    /// W3C trace id, 16 bytes big-endian, never all-zero.
    pub trace_id: [u8; 16],
    /// Span id, 8 bytes big-endian, never all-zero.
    pub span_id: [u8; 8],
    /// Parent span id, absent for a root span.
    pub parent_id: Option<[u8; 8]>,
    /// Span name, such as `GET /users/:id` (usually interned by the tracer).
    pub name: Cow<'static, str>,
    /// Span kind.
    pub kind: Kind,
    /// Start time, nanoseconds since the Unix epoch.
    pub start_unix_nanos: u64,
    /// End time, nanoseconds since the Unix epoch.
    pub end_unix_nanos: u64,
    /// Final status.
    pub status: Status,
    /// Attributes, in the order they were first set.
    #[serde(with = "tagged_attrs")]
    pub attributes: Vec<(String, Value)>,
    /// Events, in the order they were added; the first is stored inline, so
    /// the common span with at most one event allocates nothing for it.
    #[serde(with = "events_serde")]
    pub events: Events,
    /// Attributes refused because the span had reached its attribute limit.
    pub dropped_attributes: u32,
    /// Events refused because the span had reached its event limit.
    pub dropped_events: u32,
}

impl Span {
    /// A span with these ids and name, unset status, no parent, times at 0
    /// and nothing recorded yet.
    ///
    /// ```
    /// let span = spillway::unstable::span::Span::new([1; 16], [2; 8], "GET /");
    /// assert!(span.parent_id.is_none() && span.attributes.is_empty());
    /// ```
    pub fn new(trace_id: [u8; 16], span_id: [u8; 8], name: impl Into<Cow<'static, str>>) -> Span {
        Span {
            trace_id,
            span_id,
            parent_id: None,
            name: name.into(),
            kind: Kind::Internal,
            start_unix_nanos: 0,
            end_unix_nanos: 0,
            status: Status::Unset,
            attributes: Vec::new(),
            events: Events::new(),
            dropped_attributes: 0,
            dropped_events: 0,
        }
    }
}

/// Events as a plain sequence. Decoding goes through `Vec`, whose serde impl
/// caps how much a claimed length may reserve up front; smallvec's own impl
/// reserves whatever the input claims (the spool-record fuzzer found an
/// input asking for 4 EiB).
mod events_serde {
    use super::{Event, Events};
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(events: &Events, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(events.iter())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Events, D::Error> {
        Vec::<Event>::deserialize(d).map(Events::from_vec)
    }
}

/// Attributes with their values externally tagged: how bincode (records of
/// versions 1 and 2) reads them back. The variants are in `AttrValue`'s
/// order, which those records fix: never reorder them.
mod tagged_attrs {
    use super::AttrValue;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize)]
    enum Ref<'a> {
        Str(&'a str),
        Bool(bool),
        I64(i64),
        F64(f64),
        StrArray(&'a [String]),
        BoolArray(&'a [bool]),
        I64Array(&'a [i64]),
        F64Array(&'a [f64]),
    }

    #[derive(Deserialize)]
    enum Owned {
        Str(String),
        Bool(bool),
        I64(i64),
        F64(f64),
        StrArray(Vec<String>),
        BoolArray(Vec<bool>),
        I64Array(Vec<i64>),
        F64Array(Vec<f64>),
    }

    fn tag(v: &AttrValue) -> Ref<'_> {
        match v {
            AttrValue::String(s) => Ref::Str(s),
            AttrValue::Bool(b) => Ref::Bool(*b),
            AttrValue::I64(i) => Ref::I64(*i),
            AttrValue::F64(f) => Ref::F64(*f),
            AttrValue::StringArray(a) => Ref::StrArray(a),
            AttrValue::BoolArray(a) => Ref::BoolArray(a),
            AttrValue::I64Array(a) => Ref::I64Array(a),
            AttrValue::F64Array(a) => Ref::F64Array(a),
        }
    }

    fn untag(v: Owned) -> AttrValue {
        match v {
            Owned::Str(s) => AttrValue::String(s),
            Owned::Bool(b) => AttrValue::Bool(b),
            Owned::I64(i) => AttrValue::I64(i),
            Owned::F64(f) => AttrValue::F64(f),
            Owned::StrArray(a) => AttrValue::StringArray(a),
            Owned::BoolArray(a) => AttrValue::BoolArray(a),
            Owned::I64Array(a) => AttrValue::I64Array(a),
            Owned::F64Array(a) => AttrValue::F64Array(a),
        }
    }

    pub(super) fn serialize<S: Serializer>(attrs: &[(String, AttrValue)], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(attrs.iter().map(|(k, v)| (k, tag(v))))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(String, AttrValue)>, D::Error> {
        let tagged = Vec::<(String, Owned)>::deserialize(d)?;
        Ok(tagged.into_iter().map(|(k, v)| (k, untag(v))).collect())
    }
}
