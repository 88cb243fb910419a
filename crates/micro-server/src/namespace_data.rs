//! A namespace's data in every backend: what deleting a namespace deletes with it, and
//! what keeps its name from being created again while it remains.
//!
//! Deleting a namespace kills its runtime services and drops its registrations, its
//! store tables, what the products keep for it (the database's collections too), its config document (secrets included)
//! and its blobs. Events have no
//! delete operation (a topic's log is append-only, its consumer groups live in memory
//! and in the backend), so they stay until the events retention drops them; until then
//! creating the name again is refused, and so it is while anything else remains (a
//! delete that failed half-way), so a re-created namespace always starts empty.

use crate::runtime::Runtime;
use micro_core::Code;
use micro_core::Status;
use micro_core::blob::Blob;
use micro_core::config::Config;
use micro_core::events::Events;
use micro_core::registry::Registry;
use micro_core::store::{Query, Store, Table};
use std::sync::Arc;

const ID: &str = "auth";

/// The backends holding namespaces' data, as the server wired them.
pub(crate) struct NamespaceData {
    /// The store service's backend (databases are namespaces).
    pub(crate) store: Arc<dyn Store>,
    /// The config service's backend (one document per namespace).
    pub(crate) config: Arc<dyn Config>,
    /// The blob service's backend.
    pub(crate) blob: Arc<dyn Blob>,
    /// The events service's backend.
    pub(crate) events: Arc<dyn Events>,
    /// Where services register.
    pub(crate) registry: Arc<dyn Registry>,
    /// The services the runtime runs.
    pub(crate) runtime: Runtime,
    /// What the hosted products keep outside the store.
    pub(crate) hosted: crate::products::Hosted,
}

/// `NotFound` is what an already empty part answers: nothing to delete.
fn ignore_absent(r: Result<(), Status>) -> Result<(), Status> {
    match r {
        Err(e) if e.code() == Code::NotFound => Ok(()),
        other => other,
    }
}

impl NamespaceData {
    /// Deletes everything of namespace `ns` that can be deleted: its services first (so
    /// they write no more), then their registrations, store tables, config and blobs.
    /// Stops at the first failure, leaving the rest for [`NamespaceData::remains`] to name.
    pub(crate) async fn delete(&self, ns: &str) -> Result<(), Status> {
        for service in self.runtime.read(ns, "")? {
            ignore_absent(self.runtime.delete(ns, &service.name).await)?;
        }
        // A suspension goes with the namespace (billing keeps its books).
        ignore_absent(self.runtime.suspend(ns, false, "").await.map(drop))?;
        for service in self.registry.list_services(ns).await? {
            ignore_absent(self.registry.deregister(ns, &service).await)?;
        }
        for name in self.store.tables(ns).await? {
            let table = Table::new(ns, name);
            for key in self.store.list(&table, "", &Query::default()).await? {
                ignore_absent(self.store.delete(&table, &key).await)?;
            }
        }
        for (table, prefix) in crate::products::tenant_data(ns) {
            for key in self.store.list(&table, &prefix, &Query { prefix: true, ..Default::default() }).await? {
                ignore_absent(self.store.delete(&table, &key).await)?;
            }
        }
        if let Some(db) = &self.hosted.db {
            db.delete_namespace(ns).await?;
        }
        ignore_absent(self.config.delete(ns, "").await)?;
        for bucket in self.blob.buckets(ns).await? {
            let objects = match self.blob.list(ns, &bucket, "").await {
                Err(e) if e.code() == Code::NotFound => Vec::new(),
                other => other?,
            };
            for object in objects {
                ignore_absent(self.blob.delete(ns, &bucket, &object.key).await)?;
            }
        }
        Ok(())
    }

    /// What namespace `ns` still holds, described for a person (empty: nothing).
    pub(crate) async fn remains(&self, ns: &str) -> Result<Vec<String>, Status> {
        let mut left = Vec::new();
        let tables = self.store.tables(ns).await?;
        if !tables.is_empty() {
            left.push(format!("store tables {}", tables.join(", ")));
        }
        for (table, prefix) in crate::products::tenant_data(ns) {
            let query = Query { prefix: true, limit: 1, ..Default::default() };
            if !self.store.list(&table, &prefix, &query).await?.is_empty() {
                left.push(format!("data in product {}", table.table));
            }
        }
        if let Some(db) = &self.hosted.db
            && db.holds_namespace(ns).await?
        {
            left.push("data in product db".to_string());
        }
        let config = self.config.get(ns, "", false).await?;
        if config.is_some_and(|c| !micro_core::config::doc::is_empty(&c)) {
            left.push("config".to_string());
        }
        let buckets = self.blob.buckets(ns).await?;
        if !buckets.is_empty() {
            left.push(format!("blob buckets {}", buckets.join(", ")));
        }
        let topics = self.events.topics(ns).await?;
        if !topics.is_empty() {
            left.push(format!("event topics {} (kept until the events retention drops them)", topics.join(", ")));
        }
        if !self.runtime.read(ns, "")?.is_empty() {
            left.push("runtime services".to_string());
        }
        if let Some(billing) = &self.hosted.billing
            && billing.holds_namespace(ns).await?
        {
            left.push(
                "billing's books (invoices, payments, service-hours): a name with books is not used again".to_string(),
            );
        }
        Ok(left)
    }

    /// Refuses to create `ns` while data of a deleted namespace of that name remains.
    pub(crate) async fn check_empty(&self, ns: &str) -> Result<(), Status> {
        let left = self.remains(ns).await?;
        if left.is_empty() {
            return Ok(());
        }
        Err(Status::new(
            Code::FailedPrecondition,
            ID,
            format!(
                "namespace {ns} cannot be created: data of a deleted namespace of that name remains ({}); \
                 choose another name or create it once that is gone",
                left.join("; ")
            ),
        ))
    }
}
