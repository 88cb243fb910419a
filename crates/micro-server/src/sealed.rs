//! Values sealed at rest outside the config, the way the config seals its secrets
//! (`micro_core::config::doc`): AES-256-GCM under a data key per namespace, itself
//! sealed under the server key and kept beside the values it seals; every value bound
//! to its namespace and path, so it cannot be moved. Used for users' own settings (in
//! the auth database) and for the runtime's `--env` values (in its database).

use micro_core::Status;
use micro_core::config::doc::{self, AesKey, DataKeys};
use micro_core::store::{Query, Record, Store, Table};
use serde_json::Value;
use std::sync::Arc;

/// The key of the record holding a namespace's sealed data key, in the keys table.
const KEY_RECORD: &str = "data-key";

/// Seals values per namespace for one purpose. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Sealer {
    inner: Arc<Inner>,
}

struct Inner {
    keys: DataKeys,
    store: Arc<dyn Store>,
    /// The keys table's name (in each namespace's database of `store`).
    table: &'static str,
    /// What the values are for: part of what keys and values are bound to, so neither
    /// passes for the config's or another purpose's.
    purpose: &'static str,
    /// One data key is made at a time.
    creating: tokio::sync::Mutex<()>,
}

impl Sealer {
    /// Seals under data keys kept in table `table` of `store`, sealed under `server_key`.
    pub(crate) fn new(
        server_key: &AesKey,
        store: Arc<dyn Store>,
        table: &'static str,
        purpose: &'static str,
    ) -> Sealer {
        let keys = DataKeys::new(server_key, "was server.key (or MICRO_CONFIG_KEY) replaced?");
        Sealer { inner: Arc::new(Inner { keys, store, table, purpose, creating: tokio::sync::Mutex::new(()) }) }
    }

    /// What the data key of `ns` is bound to: not a namespace name, so never the
    /// config's own.
    fn domain(&self, ns: &str) -> String {
        format!("{}:{ns}", self.inner.purpose)
    }

    /// The data key of `ns`, made and stored when `create` and there is none yet.
    async fn key(&self, ns: &str, create: bool) -> Result<Option<AesKey>, Status> {
        let domain = self.domain(ns);
        if let Some(k) = self.inner.keys.cached(&domain) {
            return Ok(Some(k));
        }
        let _one = self.inner.creating.lock().await;
        if let Some(k) = self.inner.keys.cached(&domain) {
            return Ok(Some(k));
        }
        let table = Table::new(ns, self.inner.table);
        let found = match self.inner.store.read(&table, KEY_RECORD, &Query::default()).await {
            Ok(mut r) => r.pop(),
            Err(e) if e.code() == micro_core::Code::NotFound => None,
            Err(e) => return Err(e),
        };
        if let Some(r) = found {
            return self.inner.keys.unseal(&domain, &r.value).map(Some);
        }
        if !create {
            return Ok(None);
        }
        let (key, sealed) = self.inner.keys.create(&domain)?;
        self.inner.store.write(&table, &Record::new(KEY_RECORD, sealed), None).await?;
        self.inner.keys.remember(&domain, key);
        Ok(Some(key))
    }

    /// `value` sealed for `path` of namespace `ns`: a marker like the config's
    /// (`{"$secret": …}`).
    pub(crate) async fn seal(&self, ns: &str, path: &[String], value: &Value) -> Result<Value, Status> {
        let key = self.key(ns, true).await?.ok_or_else(|| Status::internal("sealing", "no data key"))?;
        let plain = serde_json::to_vec(value).map_err(|e| Status::internal("sealing", e.to_string()))?;
        doc::seal_secret(&key, &self.domain(ns), path, &plain)
    }

    /// The value a marker [`Sealer::seal`] made for `path` of `ns` stands for:
    /// `DataLoss` when it was made for another path, namespace or key.
    pub(crate) async fn open(&self, ns: &str, path: &[String], marker: &Value) -> Result<Value, Status> {
        let key = self.key(ns, false).await?.ok_or_else(|| {
            Status::new(micro_core::Code::DataLoss, "sealing", format!("no data key for namespace {ns:?}"))
        })?;
        doc::open_sealed(&key, &self.domain(ns), path, marker)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use micro_embedded::DataDir;
    use micro_embedded::store::EmbeddedStore;

    #[tokio::test]
    async fn round_trip_bound_to_namespace_and_path() {
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&DataDir::memory()).expect("store"));
        let s = Sealer::new(&[7; 32], store.clone(), "test-keys", "test");
        let path = vec!["a".to_string(), "b".to_string()];
        let marker = s.seal("ns", &path, &Value::String("canary".into())).await.expect("seal");
        assert!(!marker.to_string().contains("canary"));
        assert_eq!(s.open("ns", &path, &marker).await.ok(), Some(Value::String("canary".into())));
        assert!(s.open("ns", &["a".to_string()], &marker).await.is_err(), "bound to its path");
        let _ = s.seal("other", &path, &Value::Null).await.expect("seal");
        assert!(s.open("other", &path, &marker).await.is_err(), "bound to its namespace");
        // Another sealer on the same store (a restart) opens it; another server key does not.
        let again = Sealer::new(&[7; 32], store.clone(), "test-keys", "test");
        assert!(again.open("ns", &path, &marker).await.is_ok());
        let wrong = Sealer::new(&[8; 32], store, "test-keys", "test");
        assert!(wrong.open("ns", &path, &marker).await.is_err());
    }
}
