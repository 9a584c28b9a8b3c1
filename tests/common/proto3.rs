//! An independent reader of Zipkin's proto3 bodies: the vendored
//! `tests/vendor/zipkin-api/zipkin.proto` compiled at run time (protox),
//! bodies decoded by its descriptors (prost-reflect), then written out as
//! the Zipkin v2 JSON model, so a proto3 body can be compared field by
//! field with what the JSON encoder wrote for the same spans. Nothing of
//! spillway's encoder is used here. Shared with the fuzz target.

use prost_reflect::{DescriptorPool, DynamicMessage, MapKey, MessageDescriptor, Value};
use serde_json::{Map, Value as Json, json};
use std::net::{Ipv4Addr, Ipv6Addr};

const ZIPKIN_PROTO: &str = include_str!("../vendor/zipkin-api/zipkin.proto");

struct Vendored;

impl protox::file::FileResolver for Vendored {
    fn open_file(&self, name: &str) -> Result<protox::file::File, protox::Error> {
        if name == "zipkin.proto" {
            protox::file::File::from_source(name, ZIPKIN_PROTO)
        } else {
            Err(protox::Error::file_not_found(name))
        }
    }
}

/// `zipkin.proto3.ListOfSpans`, from the vendored file.
pub fn list_of_spans() -> MessageDescriptor {
    let mut compiler = protox::Compiler::with_file_resolver(Vendored);
    compiler
        .open_file("zipkin.proto")
        .expect("the vendored zipkin.proto compiles");
    let pool: DescriptorPool = compiler.descriptor_pool();
    pool.get_message_by_name("zipkin.proto3.ListOfSpans")
        .expect("zipkin.proto defines ListOfSpans")
}

/// The spans of a `ListOfSpans` body in the Zipkin v2 JSON model (hex ids,
/// kind names, addresses as text), or why it does not decode.
pub fn decode(list: &MessageDescriptor, body: &[u8]) -> Result<Vec<Json>, String> {
    let message = DynamicMessage::decode(list.clone(), body).map_err(|e| e.to_string())?;
    let spans = message.get_field_by_name("spans").ok_or("no spans field")?;
    let spans = spans.as_list().ok_or("spans is not repeated")?;
    spans
        .iter()
        .map(|s| {
            s.as_message()
                .ok_or_else(|| "a span is not a message".to_owned())
                .and_then(span)
        })
        .collect()
}

fn field(m: &DynamicMessage, name: &str) -> Value {
    m.get_field_by_name(name)
        .unwrap_or_else(|| panic!("zipkin.proto has no field {name}"))
        .into_owned()
}

fn bytes(m: &DynamicMessage, name: &str) -> Vec<u8> {
    field(m, name).as_bytes().map(|b| b.to_vec()).unwrap_or_default()
}

fn string(m: &DynamicMessage, name: &str) -> String {
    field(m, name).as_str().unwrap_or_default().to_owned()
}

fn u64_of(m: &DynamicMessage, name: &str) -> u64 {
    field(m, name).as_u64().unwrap_or_default()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn span(m: &DynamicMessage) -> Result<Json, String> {
    let mut out = Map::new();
    let trace_id = bytes(m, "trace_id");
    let id = bytes(m, "id");
    if trace_id.len() != 16 && trace_id.len() != 8 {
        return Err(format!("trace_id of {} bytes", trace_id.len()));
    }
    if id.len() != 8 {
        return Err(format!("id of {} bytes", id.len()));
    }
    out.insert("traceId".into(), json!(hex(&trace_id)));
    out.insert("id".into(), json!(hex(&id)));
    let parent = bytes(m, "parent_id");
    if !parent.is_empty() {
        out.insert("parentId".into(), json!(hex(&parent)));
    }
    let name = string(m, "name");
    if !name.is_empty() {
        out.insert("name".into(), json!(name));
    }
    let kind = field(m, "kind").as_enum_number().unwrap_or_default();
    let kind = match kind {
        0 => None,
        1 => Some("CLIENT"),
        2 => Some("SERVER"),
        3 => Some("PRODUCER"),
        4 => Some("CONSUMER"),
        other => return Err(format!("kind {other}")),
    };
    if let Some(kind) = kind {
        out.insert("kind".into(), json!(kind));
    }
    let timestamp = u64_of(m, "timestamp");
    if timestamp > 0 {
        out.insert("timestamp".into(), json!(timestamp));
    }
    out.insert("duration".into(), json!(u64_of(m, "duration")));
    for (proto, model) in [
        ("local_endpoint", "localEndpoint"),
        ("remote_endpoint", "remoteEndpoint"),
    ] {
        if m.has_field_by_name(proto) {
            let e = field(m, proto);
            let e = e.as_message().ok_or("an endpoint is not a message")?;
            out.insert(model.into(), endpoint(e)?);
        }
    }
    let annotations = field(m, "annotations");
    let annotations = annotations.as_list().unwrap_or_default();
    if !annotations.is_empty() {
        let list: Vec<Json> = annotations
            .iter()
            .filter_map(Value::as_message)
            .map(|a| json!({"timestamp": u64_of(a, "timestamp"), "value": string(a, "value")}))
            .collect();
        out.insert("annotations".into(), Json::Array(list));
    }
    let tags = field(m, "tags");
    let tags = tags.as_map().ok_or("tags is not a map")?;
    if !tags.is_empty() {
        let mut map = Map::new();
        for (k, v) in tags {
            let MapKey::String(k) = k else {
                return Err("a tag key is not a string".into());
            };
            map.insert(k.clone(), json!(v.as_str().unwrap_or_default()));
        }
        out.insert("tags".into(), Json::Object(map));
    }
    Ok(Json::Object(out))
}

fn endpoint(e: &DynamicMessage) -> Result<Json, String> {
    let mut out = Map::new();
    let service = string(e, "service_name");
    if !service.is_empty() {
        out.insert("serviceName".into(), json!(service));
    }
    let v4 = bytes(e, "ipv4");
    if !v4.is_empty() {
        let octets: [u8; 4] = v4.try_into().map_err(|_| "ipv4 is not 4 bytes")?;
        out.insert("ipv4".into(), json!(Ipv4Addr::from(octets).to_string()));
    }
    let v6 = bytes(e, "ipv6");
    if !v6.is_empty() {
        let octets: [u8; 16] = v6.try_into().map_err(|_| "ipv6 is not 16 bytes")?;
        out.insert("ipv6".into(), json!(Ipv6Addr::from(octets).to_string()));
    }
    let port = field(e, "port").as_i32().unwrap_or_default();
    if port != 0 {
        out.insert("port".into(), json!(port));
    }
    Ok(Json::Object(out))
}
