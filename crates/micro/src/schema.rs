//! JSON Schemas of endpoint messages, published to the registry. They drive the
//! dynamic CLI's flags, the dashboard's forms and the gateway's typing of query values.

use prost_reflect::{Cardinality, FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{Map, Value, json};

/// The JSON Schema of a protobuf message (fields under their proto names).
pub fn of_message(desc: &MessageDescriptor) -> Value {
    message(desc, 0)
}

fn message(desc: &MessageDescriptor, depth: usize) -> Value {
    match desc.full_name() {
        "google.protobuf.Struct" => return json!({"type": "object"}),
        "google.protobuf.Value" => return json!({}),
        "google.protobuf.ListValue" => return json!({"type": "array"}),
        "google.protobuf.Timestamp" => return json!({"type": "string", "format": "date-time"}),
        "google.protobuf.Duration" => return json!({"type": "string", "format": "duration"}),
        "google.protobuf.Empty" => return json!({"type": "object", "properties": {}}),
        "google.protobuf.StringValue" | "google.protobuf.BytesValue" => return json!({"type": "string"}),
        "google.protobuf.BoolValue" => return json!({"type": "boolean"}),
        "google.protobuf.FloatValue" | "google.protobuf.DoubleValue" => return json!({"type": "number"}),
        n if n.starts_with("google.protobuf.") && n.ends_with("Value") => return json!({"type": "integer"}),
        _ => {}
    }
    // Recursive messages stop at a fixed depth rather than loop.
    if depth > 8 {
        return json!({"type": "object", "title": desc.full_name()});
    }
    let mut props = Map::new();
    for f in desc.fields() {
        props.insert(f.name().to_string(), field(&f, depth));
    }
    json!({"type": "object", "title": desc.full_name(), "properties": props})
}

fn field(f: &FieldDescriptor, depth: usize) -> Value {
    if f.is_map() {
        let value = match f.kind() {
            Kind::Message(m) => m.map_entry_value_field(),
            _ => return json!({"type": "object"}),
        };
        return json!({"type": "object", "additionalProperties": single(&value.kind(), depth)});
    }
    let one = single(&f.kind(), depth);
    if f.cardinality() == Cardinality::Repeated { json!({"type": "array", "items": one}) } else { one }
}

fn single(kind: &Kind, depth: usize) -> Value {
    match kind {
        Kind::Double | Kind::Float => json!({"type": "number"}),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 | Kind::Uint32 | Kind::Fixed32 => json!({"type": "integer"}),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 | Kind::Uint64 | Kind::Fixed64 => {
            json!({"type": "integer", "format": "int64"})
        }
        Kind::Bool => json!({"type": "boolean"}),
        Kind::String => json!({"type": "string"}),
        Kind::Bytes => json!({"type": "string", "contentEncoding": "base64"}),
        Kind::Enum(e) => {
            json!({"type": "string", "enum": e.values().map(|v| v.name().to_string()).collect::<Vec<_>>()})
        }
        Kind::Message(m) => message(m, depth + 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_of_registry_messages() {
        let pool = prost_reflect::DescriptorPool::decode(crate::proto::DESCRIPTOR).unwrap();
        let req = pool.get_message_by_name("registry.RegisterRequest").unwrap();
        let s = of_message(&req);
        assert_eq!(s["properties"]["ttl_seconds"]["type"], "integer");
        assert_eq!(s["properties"]["service"]["properties"]["name"]["type"], "string");
        assert_eq!(s["properties"]["service"]["properties"]["nodes"]["type"], "array");
        assert_eq!(s["properties"]["service"]["properties"]["metadata"]["type"], "object");
    }
}
