//! Generated code of the core services' protos (`proto/` at the repository root) and
//! conversions between the wire messages and the contract types.

use micro_core::registry as core;
use serde_json::Value as Json;

/// The registry service's messages, client and server.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::unwrap_used)]
pub mod registry {
    tonic::include_proto!("registry");
}

/// The encoded descriptor set of the core protos.
pub const DESCRIPTOR: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/micro_descriptor.bin"));

/// A JSON value as a `google.protobuf.Value`.
pub fn json_to_value(v: &Json) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match v {
        Json::Null => Kind::NullValue(0),
        Json::Bool(b) => Kind::BoolValue(*b),
        Json::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        Json::String(s) => Kind::StringValue(s.clone()),
        Json::Array(a) => Kind::ListValue(prost_types::ListValue { values: a.iter().map(json_to_value).collect() }),
        Json::Object(o) => Kind::StructValue(prost_types::Struct {
            fields: o.iter().map(|(k, v)| (k.clone(), json_to_value(v))).collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
}

/// A `google.protobuf.Value` as JSON (whole numbers come back as integers).
pub fn value_to_json(v: &prost_types::Value) -> Json {
    use prost_types::value::Kind;
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Json::Null,
        Some(Kind::BoolValue(b)) => Json::Bool(*b),
        Some(Kind::NumberValue(n)) => {
            if n.fract() == 0.0 && n.abs() < 9.0e15 {
                Json::from(*n as i64)
            } else {
                serde_json::Number::from_f64(*n).map(Json::Number).unwrap_or(Json::Null)
            }
        }
        Some(Kind::StringValue(s)) => Json::String(s.clone()),
        Some(Kind::ListValue(l)) => Json::Array(l.values.iter().map(value_to_json).collect()),
        Some(Kind::StructValue(s)) => {
            Json::Object(s.fields.iter().map(|(k, v)| (k.clone(), value_to_json(v))).collect())
        }
    }
}

impl From<&core::Service> for registry::Service {
    fn from(s: &core::Service) -> Self {
        registry::Service {
            name: s.name.clone(),
            version: s.version.clone(),
            metadata: s.metadata.clone().into_iter().collect(),
            endpoints: s
                .endpoints
                .iter()
                .map(|e| registry::Endpoint {
                    name: e.name.clone(),
                    request: Some(json_to_value(&e.request)),
                    response: Some(json_to_value(&e.response)),
                    metadata: e.metadata.clone().into_iter().collect(),
                })
                .collect(),
            nodes: s
                .nodes
                .iter()
                .map(|n| registry::Node {
                    id: n.id.clone(),
                    address: n.address.clone(),
                    metadata: n.metadata.clone().into_iter().collect(),
                })
                .collect(),
        }
    }
}

impl From<registry::Service> for core::Service {
    fn from(s: registry::Service) -> Self {
        core::Service {
            name: s.name,
            version: s.version,
            metadata: s.metadata.into_iter().collect(),
            endpoints: s
                .endpoints
                .into_iter()
                .map(|e| core::Endpoint {
                    name: e.name,
                    request: e.request.as_ref().map(value_to_json).unwrap_or(Json::Null),
                    response: e.response.as_ref().map(value_to_json).unwrap_or(Json::Null),
                    metadata: e.metadata.into_iter().collect(),
                })
                .collect(),
            nodes: s
                .nodes
                .into_iter()
                .map(|n| core::Node { id: n.id, address: n.address, metadata: n.metadata.into_iter().collect() })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_round_trips_through_proto() {
        let s = core::Service {
            name: "helloworld".into(),
            version: "1.0".into(),
            metadata: [("a".to_string(), "b".to_string())].into(),
            endpoints: vec![core::Endpoint {
                name: "Greeter.Hello".into(),
                request: serde_json::json!({"type":"object","properties":{"name":{"type":"string"}},"n":1.5}),
                response: serde_json::json!({"type":"object"}),
                metadata: Default::default(),
            }],
            nodes: vec![core::Node { id: "n1".into(), address: "127.0.0.1:1".into(), metadata: Default::default() }],
        };
        let p = registry::Service::from(&s);
        assert_eq!(core::Service::from(p), s);
    }
}
