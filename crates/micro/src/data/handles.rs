//! What a service holds of the data plane: each backend scoped to its namespace (and
//! the store to a table).

use super::overlay::{at, merge, overlay};
use bytes::Bytes;
use futures::StreamExt;
use micro_core::blob::{Blob, BlobInfo, Chunks};
use micro_core::broker::{Broker, Message as BrokerMessage};
use micro_core::config::{Change, Config};
use micro_core::events::{ConsumeOptions, Delivery, Event, Events, Message, ReadOptions};
use micro_core::store::{Query, Record, Store, Table};
use micro_core::sync::{Lock, Sync};
use micro_core::{BoxStream, Status};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

/// A store scoped to one table of a namespace (by default the service's own). Cheap to
/// clone.
#[derive(Clone)]
pub struct StoreHandle {
    store: Arc<dyn Store>,
    table: Table,
}

impl StoreHandle {
    /// `store` scoped to `table`.
    pub fn new(store: Arc<dyn Store>, table: Table) -> StoreHandle {
        StoreHandle { store, table }
    }

    /// The same store, another table of the same database.
    pub fn table(&self, table: &str) -> StoreHandle {
        StoreHandle { store: self.store.clone(), table: Table::new(&self.table.database, table) }
    }

    /// Where records go.
    pub fn scope(&self) -> &Table {
        &self.table
    }

    /// The record at `key`; `NotFound` when absent.
    pub async fn get(&self, key: &str) -> Result<Record, Status> {
        let mut records = self.store.read(&self.table, key, &Query::default()).await?;
        records.pop().ok_or_else(|| Status::not_found("store", format!("no record {key:?}")))
    }

    /// Records matching `key` as `query` says.
    pub async fn read(&self, key: &str, query: &Query) -> Result<Vec<Record>, Status> {
        self.store.read(&self.table, key, query).await
    }

    /// Writes `value` at `key`.
    pub async fn put(&self, key: &str, value: impl Into<Vec<u8>>) -> Result<(), Status> {
        self.store.write(&self.table, &Record::new(key, value), None).await
    }

    /// Writes a record, expiring after `ttl` when given.
    pub async fn write(&self, record: &Record, ttl: Option<Duration>) -> Result<(), Status> {
        self.store.write(&self.table, record, ttl).await
    }

    /// Deletes `key`.
    pub async fn delete(&self, key: &str) -> Result<(), Status> {
        self.store.delete(&self.table, key).await
    }

    /// Keys matching `key` as `query` says.
    pub async fn list(&self, key: &str, query: &Query) -> Result<Vec<String>, Status> {
        self.store.list(&self.table, key, query).await
    }
}

/// Events in one namespace. Cheap to clone.
#[derive(Clone)]
pub struct EventsHandle {
    events: Arc<dyn Events>,
    namespace: String,
}

impl EventsHandle {
    /// `events` in `namespace`.
    pub fn new(events: Arc<dyn Events>, namespace: &str) -> EventsHandle {
        EventsHandle { events, namespace: namespace.to_string() }
    }

    /// Publishes a JSON payload.
    pub async fn publish<T: serde::Serialize>(&self, topic: &str, payload: &T) -> Result<Event, Status> {
        let payload = serde_json::to_vec(payload).map_err(|e| Status::bad_request("events", e.to_string()))?;
        self.events.publish(&self.namespace, topic, &Message { payload, ..Default::default() }).await
    }

    /// Publishes a message (key, metadata and raw payload).
    pub async fn publish_message(&self, topic: &str, message: &Message) -> Result<Event, Status> {
        self.events.publish(&self.namespace, topic, message).await
    }

    /// Consumes `topic`.
    pub async fn consume(
        &self,
        topic: &str,
        options: &ConsumeOptions,
    ) -> Result<BoxStream<Result<Delivery, Status>>, Status> {
        self.events.consume(&self.namespace, topic, options).await
    }

    /// The history of `topic`.
    pub async fn read(&self, topic: &str, options: &ReadOptions) -> Result<Vec<Event>, Status> {
        self.events.read(&self.namespace, topic, options).await
    }
}

/// Config of one namespace, with optional local layers over the server's: a file and
/// environment variables (see [`ConfigHandle::layered_from_env`]). Cheap to clone.
#[derive(Clone)]
pub struct ConfigHandle {
    config: Arc<dyn Config>,
    namespace: String,
    /// File and environment values, which win over the server's.
    overlay: Result<Arc<Value>, Status>,
}

impl ConfigHandle {
    /// `config` in `namespace`, with no local layers.
    pub fn new(config: Arc<dyn Config>, namespace: &str) -> ConfigHandle {
        ConfigHandle { config, namespace: namespace.to_string(), overlay: Ok(Arc::new(Value::Null)) }
    }

    /// Puts `layer` (for example from [`overlay`]) over the server's values.
    pub fn with_overlay(mut self, layer: Value) -> ConfigHandle {
        self.overlay = Ok(Arc::new(layer));
        self
    }

    /// Layers the file named by `MICRO_CONFIG_FILE` and the `MICRO_CONFIG_*` variables
    /// over the server's values. A bad file makes every read fail with its error.
    pub fn layered_from_env(mut self) -> ConfigHandle {
        let file = std::env::var_os("MICRO_CONFIG_FILE").filter(|f| !f.is_empty()).map(std::path::PathBuf::from);
        self.overlay = overlay(file.as_deref(), std::env::vars()).map(Arc::new);
        self
    }

    async fn layered(&self, path: &str, secrets: bool) -> Result<Option<Value>, Status> {
        let layer = self.overlay.clone()?;
        let local = at(&layer, path).cloned();
        let server = match self.config.get(&self.namespace, path, secrets).await {
            Ok(v) => v,
            // Local layers still answer when the server is away.
            Err(e) if e.code() == micro_core::Code::Unavailable && local.is_some() => {
                tracing::warn!(error = %e, "config server unreachable; using local config only");
                None
            }
            Err(e) => return Err(e),
        };
        Ok(match (server, local) {
            (s, None) => s,
            (None, l) => l,
            (Some(s), Some(l)) => Some(merge(s, l)),
        })
    }

    /// The value at `path` (secrets masked), local layers over the server's.
    pub async fn get(&self, path: &str) -> Result<Option<Value>, Status> {
        self.layered(path, false).await
    }

    /// The value at `path` with secrets in plain text.
    pub async fn get_secret(&self, path: &str) -> Result<Option<Value>, Status> {
        self.layered(path, true).await
    }

    /// The value at `path` as `T`, or `default` when absent (secrets in plain text);
    /// an error when present but not a `T`.
    pub async fn get_or<T: serde::de::DeserializeOwned>(&self, path: &str, default: T) -> Result<T, Status> {
        match self.layered(path, true).await? {
            None | Some(Value::Null) => Ok(default),
            Some(v) => serde_json::from_value(v)
                .map_err(|err| Status::bad_request("config", format!("{path} has the wrong type: {err}"))),
        }
    }

    /// Sets `path` on the server (objects merge).
    pub async fn set(&self, path: &str, value: &Value) -> Result<(), Status> {
        self.config.set(&self.namespace, path, value, false).await
    }

    /// Sets `path` on the server to a secret, encrypted at rest.
    pub async fn set_secret(&self, path: &str, value: &Value) -> Result<(), Status> {
        self.config.set(&self.namespace, path, value, true).await
    }

    /// Deletes a leaf or subtree on the server.
    pub async fn delete(&self, path: &str) -> Result<(), Status> {
        self.config.delete(&self.namespace, path).await
    }

    /// The current value, then every change under `path` on the server (local layers
    /// are not watched).
    pub async fn watch(&self, path: &str) -> Result<BoxStream<Result<Change, Status>>, Status> {
        self.config.watch(&self.namespace, path).await
    }
}

/// Locks and elections in one namespace. Cheap to clone.
#[derive(Clone)]
pub struct SyncHandle {
    sync: Arc<dyn Sync>,
    namespace: String,
}

impl SyncHandle {
    /// `sync` in `namespace`.
    pub fn new(sync: Arc<dyn Sync>, namespace: &str) -> SyncHandle {
        SyncHandle { sync, namespace: namespace.to_string() }
    }

    /// Takes lock `id` for `ttl`, waiting up to `wait`.
    pub async fn lock(&self, id: &str, ttl: Duration, wait: Duration) -> Result<Lock, Status> {
        self.sync.lock(&self.namespace, id, ttl, wait).await
    }

    /// Extends a held lock.
    pub async fn refresh(&self, lock: &Lock) -> Result<(), Status> {
        self.sync.refresh(&self.namespace, lock).await
    }

    /// Releases a held lock.
    pub async fn unlock(&self, lock: &Lock) -> Result<(), Status> {
        self.sync.unlock(&self.namespace, lock).await
    }

    /// Campaigns until elected leader of `election`.
    pub async fn elect(&self, election: &str, ttl: Duration) -> Result<micro_core::sync::Leadership, Status> {
        micro_core::sync::elect(self.sync.clone(), &self.namespace, election, ttl).await
    }
}

/// Objects in one namespace. Cheap to clone.
#[derive(Clone)]
pub struct BlobHandle {
    blob: Arc<dyn Blob>,
    namespace: String,
}

impl BlobHandle {
    /// `blob` in `namespace`.
    pub fn new(blob: Arc<dyn Blob>, namespace: &str) -> BlobHandle {
        BlobHandle { blob, namespace: namespace.to_string() }
    }

    /// Stores `data` (in memory) as an object.
    pub async fn put(&self, bucket: &str, key: &str, content_type: &str, data: Bytes) -> Result<BlobInfo, Status> {
        let chunks = futures::stream::iter([Ok(data)]).boxed();
        self.blob.put(&self.namespace, bucket, key, content_type, chunks).await
    }

    /// Stores a stream of chunks as an object.
    pub async fn put_stream(
        &self,
        bucket: &str,
        key: &str,
        content_type: &str,
        data: Chunks,
    ) -> Result<BlobInfo, Status> {
        self.blob.put(&self.namespace, bucket, key, content_type, data).await
    }

    /// An object's info and content stream.
    pub async fn get(&self, bucket: &str, key: &str) -> Result<(BlobInfo, Chunks), Status> {
        self.blob.get(&self.namespace, bucket, key).await
    }

    /// Objects of a bucket by key prefix.
    pub async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<BlobInfo>, Status> {
        self.blob.list(&self.namespace, bucket, prefix).await
    }

    /// Deletes an object.
    pub async fn delete(&self, bucket: &str, key: &str) -> Result<(), Status> {
        self.blob.delete(&self.namespace, bucket, key).await
    }
}

/// The broker in one namespace. Cheap to clone.
#[derive(Clone)]
pub struct BrokerHandle {
    broker: Arc<dyn Broker>,
    namespace: String,
}

impl BrokerHandle {
    /// `broker` in `namespace`.
    pub fn new(broker: Arc<dyn Broker>, namespace: &str) -> BrokerHandle {
        BrokerHandle { broker, namespace: namespace.to_string() }
    }

    /// Publishes a JSON payload to the topic's current subscribers.
    pub async fn publish<T: serde::Serialize>(&self, topic: &str, payload: &T) -> Result<(), Status> {
        let payload = serde_json::to_vec(payload).map_err(|e| Status::bad_request("broker", e.to_string()))?;
        let m = BrokerMessage { topic: topic.to_string(), payload, ..Default::default() };
        self.broker.publish(&self.namespace, &m).await
    }

    /// Subscribes (optionally in a queue group).
    pub async fn subscribe(
        &self,
        topic: &str,
        queue: Option<&str>,
    ) -> Result<BoxStream<Result<BrokerMessage, Status>>, Status> {
        self.broker.subscribe(&self.namespace, topic, queue).await
    }
}
