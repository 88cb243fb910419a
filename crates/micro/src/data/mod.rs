//! Clients of the server's data-plane services — store, blob, events, broker, config and
//! sync — implementing the same contracts as the embedded backends, so a service outside
//! the server uses them transparently (see [`crate::Service::store`] and friends).
//!
//! `clients`: the remote backends (one per service); `handles`: what a service holds
//! (scoped to its namespace and table); `overlay`: local config layers.

mod clients;
mod handles;
mod overlay;

pub use clients::{RemoteBlob, RemoteBroker, RemoteConfig, RemoteEvents, RemoteStore, RemoteSync, settle};
pub use handles::{BlobHandle, BrokerHandle, ConfigHandle, EventsHandle, StoreHandle, SyncHandle};
pub use overlay::{CONFIG_ENV_PREFIX, merge, overlay};

use crate::status::from_tonic;
use micro_core::Status;
use micro_core::blob::Blob;
use micro_core::broker::Broker;
use micro_core::config::Config;
use micro_core::events::Events;
use micro_core::store::Store;
use micro_core::sync::Sync;
use std::sync::Arc;
use std::time::Duration;

/// The deadline of a unary data-plane call.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Where a client gets the access token it sends (`authorization: Bearer …`).
pub trait TokenSource: Send + std::marker::Sync + 'static {
    /// The current token, if any.
    fn token(&self) -> Option<String>;

    /// The account's credentials, when the source can have tokens delegated to other
    /// services ([`crate::auth::Credentials::token_for`]); a fixed token cannot.
    fn credentials(&self) -> Option<&crate::auth::Credentials> {
        None
    }
}

/// A fixed token.
pub struct StaticToken(pub String);

impl TokenSource for StaticToken {
    fn token(&self) -> Option<String> {
        Some(self.0.clone())
    }
}

/// A channel to the server whose calls carry a token when there is one: the client's
/// [`crate::client::Channel`], through the same layers as every other call.
pub type Ch = crate::Channel;

/// A lazily connecting channel to the server at `address` (`host:port` of its proxy).
pub fn channel(address: &str) -> Result<Ch, Status> {
    channel_with(address, None)
}

/// Like [`channel`], sending the tokens of `source`.
pub fn channel_with(address: &str, source: Option<Arc<dyn TokenSource>>) -> Result<Ch, Status> {
    crate::Channel::new(address, source)
}

/// A request in namespace `ns`, with a deadline unless `timeout` is `None`.
pub(crate) fn request<T>(ns: &str, msg: T, timeout: Option<Duration>) -> Result<tonic::Request<T>, Status> {
    let mut req = tonic::Request::new(msg);
    let v = ns.parse().map_err(|_| Status::bad_request("micro", format!("invalid namespace {ns:?}")))?;
    req.metadata_mut().insert(micro_core::metadata::NAMESPACE, v);
    if let Some(t) = timeout {
        req.set_timeout(t);
    }
    Ok(req)
}

fn e(s: tonic::Status) -> Status {
    from_tonic(&s)
}

/// Every data-plane backend a service uses. Cheap to clone.
#[derive(Clone)]
pub struct Data {
    /// Key-value records.
    pub store: Arc<dyn Store>,
    /// Objects.
    pub blob: Arc<dyn Blob>,
    /// Durable events.
    pub events: Arc<dyn Events>,
    /// Ephemeral messaging.
    pub broker: Arc<dyn Broker>,
    /// Configuration.
    pub config: Arc<dyn Config>,
    /// Locks and leader election.
    pub sync: Arc<dyn Sync>,
}

impl Data {
    /// The data services of the `micro server` whose proxy is at `address`, for calls in
    /// `namespace`. A malformed address is logged and replaced by the default one.
    pub fn remote(address: &str, namespace: &str) -> Data {
        Data::remote_with(address, namespace, None)
    }

    /// Like [`Data::remote`], every call carrying the tokens of `source`.
    pub fn remote_with(address: &str, namespace: &str, source: Option<Arc<dyn TokenSource>>) -> Data {
        Data::remote_on(&crate::Transport::new(), address, namespace, source)
    }

    /// Like [`Data::remote_with`], on `transport` (which may reach the server in-process).
    pub fn remote_on(
        transport: &crate::Transport,
        address: &str,
        namespace: &str,
        source: Option<Arc<dyn TokenSource>>,
    ) -> Data {
        let ch = crate::Channel::on(transport, address, source.clone()).unwrap_or_else(|e| {
            tracing::warn!(address, error = %e, "bad server address; using {}", crate::DEFAULT_SERVER);
            crate::Channel::default_server(transport, source)
        });
        Data {
            store: Arc::new(RemoteStore::new(ch.clone(), namespace)),
            blob: Arc::new(RemoteBlob::new(ch.clone())),
            events: Arc::new(RemoteEvents::new(ch.clone())),
            broker: Arc::new(RemoteBroker::new(ch.clone())),
            config: Arc::new(RemoteConfig::new(ch.clone())),
            sync: Arc::new(RemoteSync::new(ch)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn overlay_from_a_file_and_env_vars() {
        let dir = std::env::temp_dir().join(format!("micro-overlay-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let toml = dir.join("app.toml");
        std::fs::write(&toml, "[app.db]\nhost = \"file\"\nport = 1\n").unwrap();
        let vars = [
            ("MICRO_CONFIG_APP__DB__PORT".to_string(), "5432".to_string()),
            ("MICRO_CONFIG_APP__MODE".to_string(), "production".to_string()),
            ("MICRO_CONFIG_FILE".to_string(), "ignored".to_string()),
            ("PATH".to_string(), "/bin".to_string()),
        ];
        let v = overlay(Some(&toml), vars.into_iter()).unwrap();
        assert_eq!(v, json!({"app": {"db": {"host": "file", "port": 5432}, "mode": "production"}}));
        let bad = dir.join("bad.json");
        std::fs::write(&bad, "{nope").unwrap();
        assert_eq!(overlay(Some(&bad), std::iter::empty()).unwrap_err().code(), micro_core::Code::InvalidArgument);
        assert!(overlay(Some(&dir.join("missing.json")), std::iter::empty()).is_err());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn merge_is_deep() {
        let m = merge(json!({"a": {"b": 1, "c": 2}, "d": 1}), json!({"a": {"c": 3}, "e": 4}));
        assert_eq!(m, json!({"a": {"b": 1, "c": 3}, "d": 1, "e": 4}));
        assert_eq!(merge(json!({"a": 1}), json!(5)), json!(5));
    }
}
