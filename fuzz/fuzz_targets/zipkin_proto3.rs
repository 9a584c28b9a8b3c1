//! Arbitrary spans (as `zipkin_json` builds them) through the Zipkin proto3
//! encoder: the body always decodes with an independent decoder built from
//! the vendored `zipkin.proto` (the tests' `common/proto3.rs`), one message
//! per span, and each decodes to exactly the Zipkin v2 JSON the JSON
//! encoder writes for the same span, field by field. Encoded one span at
//! a time (as the sender builds a request) the body is the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value as Json;
use spans::{Input, span, through_the_batch};
use spillway::Encoding;
use spillway::unstable::span::Span;
use spillway::unstable::zipkin::Encoder;
use std::sync::OnceLock;

#[path = "../../tests/common/proto3.rs"]
mod proto3;
mod spans;

fuzz_target!(|input: Input| {
    static LIST: OnceLock<prost_reflect::MessageDescriptor> = OnceLock::new();
    let list = LIST.get_or_init(proto3::list_of_spans);
    let spans: Vec<Span> = input.spans.into_iter().map(span).collect();
    let spans = through_the_batch(&spans);
    let mut json = Vec::new();
    Encoder::new(&input.service).encode_batch(&spans, &mut json);
    let mut json: Vec<Json> = serde_json::from_slice(&json).expect("the JSON encoder's output is JSON");
    if input.service.is_empty() {
        // proto3 omits an empty endpoint; JSON writes `"serviceName": ""`,
        // which Zipkin reads as absent too.
        for j in &mut json {
            j.as_object_mut().expect("a span is an object").remove("localEndpoint");
        }
    }
    let mut body = Vec::new();
    let mut encoder = Encoder::with_encoding(Encoding::Proto3, &input.service);
    encoder.encode_batch(&spans, &mut body);
    let decoded = proto3::decode(list, &body).unwrap_or_else(|e| panic!("proto3 does not decode: {e}"));
    assert_eq!(decoded.len(), spans.len());
    for (p, j) in decoded.iter().zip(&json) {
        assert_eq!(p, j, "proto3 and JSON disagree");
    }
    let mut one_by_one = Vec::new();
    for s in &spans {
        encoder.encode_next(one_by_one.is_empty(), s, &mut one_by_one);
    }
    assert_eq!(one_by_one, body);
});
