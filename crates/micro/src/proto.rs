//! Generated code of the core services' protos (`proto/` at the repository root) and
//! conversions between the wire messages and the contract types.

use micro_core::registry as core;
use serde_json::Value as Json;

/// The registry service's messages, client and server.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::unwrap_used)]
pub mod registry {
    tonic::include_proto!("registry");
}

/// The store service's messages (Store and Blob), client and server.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::unwrap_used)]
pub mod store {
    tonic::include_proto!("store");
}

/// The events service's messages, client and server.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::unwrap_used)]
pub mod events {
    tonic::include_proto!("events");
}

/// The broker service's messages, client and server.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::unwrap_used)]
pub mod broker {
    tonic::include_proto!("broker");
}

/// The config service's messages, client and server.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::unwrap_used)]
pub mod config {
    tonic::include_proto!("config");
}

/// The sync service's messages, client and server.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::unwrap_used)]
pub mod sync {
    tonic::include_proto!("sync");
}

/// The auth service's messages, client and server.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::unwrap_used)]
pub mod auth {
    tonic::include_proto!("auth");
}

/// The runtime service's messages, client and server.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::unwrap_used)]
pub mod runtime {
    tonic::include_proto!("runtime");
}

/// The usage service's messages, client and server.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::unwrap_used)]
pub mod usage {
    tonic::include_proto!("usage");
}

/// The domains service's messages, client and server.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::unwrap_used)]
pub mod domains {
    tonic::include_proto!("domains");
}

/// The cluster service's messages, client and server.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::unwrap_used)]
pub mod cluster {
    tonic::include_proto!("cluster");
}

/// The license service's messages, client and server.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::unwrap_used)]
pub mod license {
    tonic::include_proto!("license");
}

/// The network service's messages, client and server.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::unwrap_used)]
pub mod network {
    tonic::include_proto!("network");
}

/// An account from the wire.
impl From<auth::Account> for micro_core::auth::Account {
    fn from(a: auth::Account) -> Self {
        micro_core::auth::Account {
            id: a.id,
            name: a.name,
            kind: micro_core::auth::AccountType::from_name(&a.r#type),
            namespace: a.namespace,
            scopes: a.scopes,
            metadata: a.metadata.into_iter().collect(),
            created: a.created,
            verified: false,
        }
    }
}

/// An account for the wire.
impl From<&micro_core::auth::Account> for auth::Account {
    fn from(a: &micro_core::auth::Account) -> Self {
        auth::Account {
            id: a.id.clone(),
            name: a.name.clone(),
            r#type: a.kind.as_str().into(),
            namespace: a.namespace.clone(),
            scopes: a.scopes.clone(),
            metadata: a.metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            created: a.created,
        }
    }
}

/// A rule from the wire, checked ([`micro_core::auth::validate_rule`]); access `""` is granted.
pub fn rule_of(r: auth::Rule) -> Result<micro_core::auth::Rule, micro_core::Status> {
    use micro_core::auth::Access;
    let access = match r.access.as_str() {
        "" | "granted" => Access::Granted,
        "denied" => Access::Denied,
        other => {
            return Err(micro_core::Status::bad_request("auth", format!("access {other:?}: use granted or denied")));
        }
    };
    let resource = micro_core::auth::parse_resource(&r.resource)?;
    let rule = micro_core::auth::Rule { id: r.id, scope: r.scope, resource, access, priority: r.priority };
    micro_core::auth::validate_rule(&rule)?;
    Ok(rule)
}

/// A rule for the wire.
impl From<&micro_core::auth::Rule> for auth::Rule {
    fn from(r: &micro_core::auth::Rule) -> Self {
        auth::Rule {
            id: r.id.clone(),
            scope: r.scope.clone(),
            resource: r.resource.to_string(),
            access: match r.access {
                micro_core::auth::Access::Granted => "granted".into(),
                micro_core::auth::Access::Denied => "denied".into(),
            },
            priority: r.priority,
        }
    }
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

/// A store record from the wire.
impl From<store::Record> for micro_core::store::Record {
    fn from(r: store::Record) -> Self {
        micro_core::store::Record {
            key: r.key,
            value: r.value,
            metadata: r.metadata.into_iter().collect(),
            expiry: (r.expiry > 0).then_some(r.expiry as u64),
        }
    }
}

/// A store record for the wire.
impl From<&micro_core::store::Record> for store::Record {
    fn from(r: &micro_core::store::Record) -> Self {
        store::Record {
            key: r.key.clone(),
            value: r.value.clone(),
            metadata: r.metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            expiry: r.expiry.unwrap_or(0) as i64,
        }
    }
}

/// The query flags of store options.
pub fn query_of(o: &store::Options) -> Result<micro_core::store::Query, micro_core::Status> {
    use micro_core::store::Order;
    let order = match o.order.to_ascii_lowercase().as_str() {
        "" | "asc" => Order::Asc,
        "desc" => Order::Desc,
        other => {
            return Err(micro_core::Status::bad_request("store", format!("order {other:?}: use asc or desc")));
        }
    };
    Ok(micro_core::store::Query { prefix: o.prefix, suffix: o.suffix, limit: o.limit, offset: o.offset, order })
}

/// Store options carrying a query and a table.
pub fn options_of(q: &micro_core::store::Query, table: &micro_core::store::Table) -> store::Options {
    store::Options {
        database: table.database.clone(),
        table: table.table.clone(),
        prefix: q.prefix,
        suffix: q.suffix,
        limit: q.limit,
        offset: q.offset,
        order: match q.order {
            micro_core::store::Order::Asc => "asc".into(),
            micro_core::store::Order::Desc => "desc".into(),
        },
    }
}

/// Blob info from the wire.
impl From<store::BlobInfo> for micro_core::blob::BlobInfo {
    fn from(b: store::BlobInfo) -> Self {
        micro_core::blob::BlobInfo {
            bucket: b.bucket,
            key: b.key,
            size: b.size,
            content_type: b.content_type,
            modified: b.modified,
        }
    }
}

/// Blob info for the wire.
impl From<&micro_core::blob::BlobInfo> for store::BlobInfo {
    fn from(b: &micro_core::blob::BlobInfo) -> Self {
        store::BlobInfo {
            bucket: b.bucket.clone(),
            key: b.key.clone(),
            size: b.size,
            content_type: b.content_type.clone(),
            modified: b.modified,
        }
    }
}

/// An event from the wire.
impl From<events::Event> for micro_core::events::Event {
    fn from(e: events::Event) -> Self {
        micro_core::events::Event {
            topic: e.topic,
            seq: e.seq,
            timestamp: e.timestamp,
            key: e.key,
            metadata: e.metadata.into_iter().collect(),
            payload: e.payload,
        }
    }
}

/// An event for the wire.
impl From<&micro_core::events::Event> for events::Event {
    fn from(e: &micro_core::events::Event) -> Self {
        events::Event {
            topic: e.topic.clone(),
            seq: e.seq,
            timestamp: e.timestamp,
            key: e.key.clone(),
            metadata: e.metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            payload: e.payload.clone(),
        }
    }
}

/// A consumer group's progress from the wire.
impl From<events::GroupInfo> for micro_core::events::GroupInfo {
    fn from(g: events::GroupInfo) -> Self {
        micro_core::events::GroupInfo {
            name: g.name,
            delivered: g.delivered,
            acked: g.acked,
            pending: g.pending,
            lag: g.lag,
            members: g.members,
        }
    }
}

/// A consumer group's progress for the wire.
impl From<&micro_core::events::GroupInfo> for events::GroupInfo {
    fn from(g: &micro_core::events::GroupInfo) -> Self {
        events::GroupInfo {
            name: g.name.clone(),
            delivered: g.delivered,
            acked: g.acked,
            pending: g.pending,
            lag: g.lag,
            members: g.members,
        }
    }
}

/// An events offset from its text form: `new`, `first`, `seq:<n>`, `time:<unix ms>`
/// (or an RFC 3339-free plain number of milliseconds after `time:`).
pub fn parse_offset(s: &str) -> Result<micro_core::events::Offset, micro_core::Status> {
    use micro_core::events::Offset;
    let bad = || {
        micro_core::Status::bad_request("events", format!("offset {s:?}: use new, first, seq:<n> or time:<unix ms>"))
    };
    Ok(match s {
        "" | "new" => Offset::New,
        "first" => Offset::First,
        _ => match s.split_once(':') {
            Some(("seq", n)) => Offset::Seq(n.parse().map_err(|_| bad())?),
            Some(("time", n)) => Offset::Time(n.parse().map_err(|_| bad())?),
            _ => return Err(bad()),
        },
    })
}

/// The text form of an events offset (see [`parse_offset`]).
pub fn format_offset(o: &micro_core::events::Offset) -> String {
    use micro_core::events::Offset;
    match o {
        Offset::New => "new".into(),
        Offset::First => "first".into(),
        Offset::Seq(n) => format!("seq:{n}"),
        Offset::Time(t) => format!("time:{t}"),
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
