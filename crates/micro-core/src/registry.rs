//! The registry contract: services, their nodes and endpoints, and how they are found.

use crate::{BoxStream, Status};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// A registered service: one name and version, served by one or more nodes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Service {
    /// The service name (`helloworld`); also the proto package of its gRPC handlers.
    pub name: String,
    /// The version (`latest` when unset).
    #[serde(default)]
    pub version: String,
    /// Free-form metadata.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// The endpoints (`Greeter.Hello`) with their schemas.
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    /// The nodes serving it.
    #[serde(default)]
    pub nodes: Vec<Node>,
}

/// One callable endpoint of a service.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Endpoint {
    /// `Handler.Method`.
    pub name: String,
    /// JSON Schema of the request message.
    #[serde(default)]
    pub request: serde_json::Value,
    /// JSON Schema of the response message.
    #[serde(default)]
    pub response: serde_json::Value,
    /// Metadata: `stream` = `server`, `client` or `bidi` for streaming endpoints;
    /// `codec` = `json` for endpoints that speak only JSON.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

impl Endpoint {
    /// The streaming kind from the metadata (`None` for unary).
    pub fn stream(&self) -> Option<&str> {
        self.metadata.get("stream").map(String::as_str)
    }
}

/// One running instance of a service.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// Unique id (`helloworld-<uuid>`).
    pub id: String,
    /// `host:port` it serves on.
    pub address: String,
    /// Metadata (`protocol` = `grpc` or `http`, …).
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

/// What changed in a watched registry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventType {
    /// A node registered for the first time.
    Create,
    /// A registration was refreshed or changed.
    Update,
    /// A node was deregistered or expired.
    Delete,
}

/// One change seen by a watcher.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// What happened.
    #[serde(rename = "type")]
    pub kind: EventType,
    /// The namespace it happened in.
    pub namespace: String,
    /// The service, with the nodes concerned.
    pub service: Service,
}

/// The service registry: where services announce themselves and are found.
///
/// Every call is scoped by a namespace. Registrations are leases: a node that is not
/// registered again within its TTL disappears.
#[async_trait::async_trait]
pub trait Registry: Send + Sync + 'static {
    /// Registers (or refreshes) the nodes of `service` for `ttl`.
    async fn register(&self, namespace: &str, service: &Service, ttl: Duration) -> Result<(), Status>;
    /// Removes the nodes of `service` at once.
    async fn deregister(&self, namespace: &str, service: &Service) -> Result<(), Status>;
    /// Every version of a service with its live nodes; `NotFound` when there is none.
    async fn get_service(&self, namespace: &str, name: &str) -> Result<Vec<Service>, Status>;
    /// Every service of a namespace (without nodes filtered out).
    async fn list_services(&self, namespace: &str) -> Result<Vec<Service>, Status>;
    /// A stream of changes in a namespace, optionally for one service.
    async fn watch(&self, namespace: &str, service: Option<&str>) -> Result<BoxStream<Result<Event, Status>>, Status>;
}

/// The most nodes one registration may carry.
pub const MAX_NODES: usize = 100;

/// Checks a registration (namespace, name, nodes with ids and addresses of bounded size)
/// and returns its lease clamped to 100 ms – 24 h: what every registry backend accepts.
pub fn check_registration(
    namespace: &str,
    service: &Service,
    ttl: std::time::Duration,
) -> Result<std::time::Duration, Status> {
    crate::namespace::validate(namespace)?;
    validate_name(&service.name)?;
    if service.nodes.is_empty() {
        return Err(Status::bad_request("registry", "a registration needs at least one node"));
    }
    if service.nodes.iter().any(|n| n.id.is_empty() || n.address.is_empty()) {
        return Err(Status::bad_request("registry", "every node needs an id and an address"));
    }
    if service.nodes.len() > MAX_NODES {
        return Err(Status::bad_request("registry", format!("at most {MAX_NODES} nodes in one registration")));
    }
    let printable = |s: &str, max: usize| s.len() <= max && s.chars().all(|c| !c.is_control() && !c.is_whitespace());
    for n in &service.nodes {
        if !printable(&n.id, 256) || !printable(&n.address, 512) {
            return Err(Status::bad_request(
                "registry",
                "a node's id (at most 256 characters) and address (at most 512) must be printable, without spaces",
            ));
        }
        let metadata_ok = n.metadata.len() <= 64 && n.metadata.iter().all(|(k, v)| k.len() <= 128 && v.len() <= 1024);
        if !metadata_ok {
            return Err(Status::bad_request(
                "registry",
                "a node's metadata holds at most 64 entries, keys of 128 and values of 1024 bytes",
            ));
        }
    }
    Ok(ttl.clamp(std::time::Duration::from_millis(100), std::time::Duration::from_secs(24 * 3600)))
}

/// Checks a service name: 1–128 characters of `a-z A-Z 0-9 . _ -`, not starting with a dot.
pub fn validate_name(name: &str) -> Result<(), Status> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && !name.ends_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok { Ok(()) } else { Err(Status::bad_request("registry", format!("invalid service name {name:?}"))) }
}
