//! The registry of server nodes that share a store (PostgreSQL): one record per node
//! (`<service>/<version>/<node id>`, in table `registry` of the namespace's database),
//! written with the registration's TTL, so a node that stops refreshing disappears on
//! every server at once. Lookups are cached for a moment; watches poll.

use micro_core::registry::{Event, EventType, Node, Registry, Service, validate_name};
use micro_core::store::{Query, Record, Store, Table};
use micro_core::{BoxStream, Code, Status, namespace};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a lookup is served from memory.
const CACHE: Duration = Duration::from_millis(500);
/// How often a watch looks for changes.
const POLL: Duration = Duration::from_secs(1);

/// A registry kept in a shared store.
pub struct SharedRegistry {
    store: Arc<dyn Store>,
    cache: Mutex<HashMap<String, Cached>>,
}

/// A namespace's node records and when they were read.
type Cached = (Instant, Arc<Vec<Entry>>);

/// One node's record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Entry {
    /// The service without nodes.
    service: Service,
    node: Node,
}

fn table(ns: &str) -> Table {
    Table::new(ns, "registry")
}

fn version(s: &Service) -> String {
    if s.version.is_empty() { "latest".to_string() } else { s.version.clone() }
}

fn key(name: &str, version: &str, node: &str) -> String {
    format!("{name}/{version}/{node}")
}

/// Entries grouped into services (one per name and version), in name order.
fn group(entries: &[Entry], name: Option<&str>) -> Vec<Service> {
    let mut by: BTreeMap<(String, String), Service> = BTreeMap::new();
    for e in entries.iter().filter(|e| name.is_none_or(|n| e.service.name == n)) {
        let s = by.entry((e.service.name.clone(), e.service.version.clone())).or_insert_with(|| e.service.clone());
        s.nodes.push(e.node.clone());
    }
    by.into_values().collect()
}

impl SharedRegistry {
    /// A registry kept in `store` (every node sharing the store sees the same services).
    pub fn new(store: Arc<dyn Store>) -> SharedRegistry {
        SharedRegistry { store, cache: Mutex::new(HashMap::new()) }
    }

    /// Every live node record of a namespace.
    async fn entries(&self, ns: &str, fresh: bool) -> Result<Arc<Vec<Entry>>, Status> {
        if !fresh
            && let Some((at, e)) = self.cache.lock().unwrap_or_else(|e| e.into_inner()).get(ns)
            && at.elapsed() < CACHE
        {
            return Ok(e.clone());
        }
        let records = self.store.read(&table(ns), "", &Query { prefix: true, ..Default::default() }).await?;
        let entries: Vec<Entry> = records.iter().filter_map(|r| serde_json::from_slice(&r.value).ok()).collect();
        let entries = Arc::new(entries);
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).insert(ns.to_string(), (Instant::now(), entries.clone()));
        Ok(entries)
    }

    fn forget(&self, ns: &str) {
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).remove(ns);
    }
}

#[async_trait::async_trait]
impl Registry for SharedRegistry {
    async fn register(&self, ns: &str, service: &Service, ttl: Duration) -> Result<(), Status> {
        let ttl = micro_core::registry::check_registration(ns, service, ttl)?;
        let mut meta = service.clone();
        meta.nodes.clear();
        meta.version = version(service);
        for n in &service.nodes {
            let entry = Entry { service: meta.clone(), node: n.clone() };
            let value = serde_json::to_vec(&entry).map_err(|e| Status::internal("registry", e.to_string()))?;
            self.store.write(&table(ns), &Record::new(key(&meta.name, &meta.version, &n.id), value), Some(ttl)).await?;
        }
        self.forget(ns);
        Ok(())
    }

    async fn deregister(&self, ns: &str, service: &Service) -> Result<(), Status> {
        namespace::validate(ns)?;
        validate_name(&service.name)?;
        let v = version(service);
        let keys: Vec<String> = if service.nodes.is_empty() {
            let q = Query { prefix: true, ..Default::default() };
            self.store.list(&table(ns), &format!("{}/{v}/", service.name), &q).await?
        } else {
            service.nodes.iter().map(|n| key(&service.name, &v, &n.id)).collect()
        };
        for k in keys {
            match self.store.delete(&table(ns), &k).await {
                Ok(()) => {}
                Err(e) if e.code() == Code::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        self.forget(ns);
        Ok(())
    }

    async fn get_service(&self, ns: &str, name: &str) -> Result<Vec<Service>, Status> {
        namespace::validate(ns)?;
        let services = group(&self.entries(ns, false).await?, Some(name));
        if services.is_empty() {
            return Err(Status::not_found("registry", format!("service {name} not found")));
        }
        Ok(services)
    }

    async fn list_services(&self, ns: &str) -> Result<Vec<Service>, Status> {
        namespace::validate(ns)?;
        Ok(group(&self.entries(ns, false).await?, None))
    }

    async fn watch(&self, ns: &str, service: Option<&str>) -> Result<BoxStream<Result<Event, Status>>, Status> {
        namespace::validate(ns)?;
        let store = self.store.clone();
        let ns = ns.to_string();
        let only = service.filter(|s| !s.is_empty()).map(str::to_string);
        let reader = SharedRegistry::new(store);
        let first = reader.entries(&ns, true).await?;
        let s = async_stream::stream! {
            let node_key = |e: &Entry| key(&e.service.name, &e.service.version, &e.node.id);
            let mut seen: HashMap<String, Entry> = first.iter().map(|e| (node_key(e), e.clone())).collect();
            loop {
                tokio::time::sleep(POLL).await;
                let now = match reader.entries(&ns, true).await {
                    Ok(e) => e,
                    Err(e) => {
                        yield Err(e);
                        continue;
                    }
                };
                let current: HashMap<String, Entry> = now.iter().map(|e| (node_key(e), e.clone())).collect();
                let mut events = Vec::new();
                for (k, e) in &current {
                    match seen.get(k) {
                        None => events.push((EventType::Create, e.clone())),
                        Some(old) if old != e => events.push((EventType::Update, e.clone())),
                        Some(_) => {}
                    }
                }
                for (k, e) in &seen {
                    if !current.contains_key(k) {
                        events.push((EventType::Delete, e.clone()));
                    }
                }
                seen = current;
                for (kind, e) in events {
                    if only.as_ref().is_some_and(|n| *n != e.service.name) {
                        continue;
                    }
                    let mut service = e.service.clone();
                    service.nodes = vec![e.node.clone()];
                    yield Ok(Event { kind, namespace: ns.clone(), service });
                }
            }
        };
        Ok(Box::pin(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    async fn next(w: &mut BoxStream<Result<Event, Status>>) -> Event {
        tokio::time::timeout(Duration::from_secs(5), w.next()).await.unwrap().unwrap().unwrap()
    }

    fn svc(name: &str, node: &str) -> Service {
        Service {
            name: name.into(),
            nodes: vec![Node { id: node.into(), address: "127.0.0.1:1".into(), ..Default::default() }],
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn conformance() {
        let store: Arc<dyn Store> =
            Arc::new(micro_embedded::store::EmbeddedStore::open(&micro_embedded::DataDir::memory()).unwrap());
        micro_conformance::registry::registry(Arc::new(SharedRegistry::new(store))).await;
    }

    #[tokio::test]
    async fn two_registries_over_one_store_are_one() {
        let store: Arc<dyn Store> =
            Arc::new(micro_embedded::store::EmbeddedStore::open(&micro_embedded::DataDir::memory()).unwrap());
        let (a, b) = (SharedRegistry::new(store.clone()), SharedRegistry::new(store));
        a.register("micro", &svc("greeter", "g-1"), Duration::from_secs(30)).await.unwrap();
        a.register("micro", &svc("greeter", "g-2"), Duration::from_millis(300)).await.unwrap();
        a.register("other", &svc("greeter", "g-3"), Duration::from_secs(30)).await.unwrap();
        let found = b.get_service("micro", "greeter").await.unwrap();
        assert_eq!(found[0].nodes.len(), 2);
        assert_eq!(found[0].version, "latest");
        // The lease runs out everywhere.
        tokio::time::sleep(Duration::from_millis(600)).await;
        let found = b.get_service("micro", "greeter").await.unwrap();
        assert_eq!(found[0].nodes.iter().map(|n| n.id.as_str()).collect::<Vec<_>>(), ["g-1"]);
        b.deregister("micro", &svc("greeter", "g-1")).await.unwrap();
        assert_eq!(a.get_service("micro", "greeter").await.unwrap_err().code(), Code::NotFound);
        assert_eq!(a.list_services("other").await.unwrap().len(), 1, "namespaces are apart");
        // A watcher sees a node come and go.
        let mut watch = b.watch("micro", Some("greeter")).await.unwrap();
        a.register("micro", &svc("greeter", "g-9"), Duration::from_secs(30)).await.unwrap();
        let e = next(&mut watch).await;
        assert_eq!((e.kind, e.service.nodes[0].id.as_str()), (EventType::Create, "g-9"));
        a.deregister("micro", &svc("greeter", "g-9")).await.unwrap();
        let e = next(&mut watch).await;
        assert_eq!((e.kind, e.service.nodes[0].id.as_str()), (EventType::Delete, "g-9"));
        assert!(a.register("micro", &svc("Bad Name", "x"), Duration::from_secs(1)).await.is_err());
        assert!(
            a.register("micro", &Service { name: "x".into(), ..Default::default() }, Duration::from_secs(1))
                .await
                .is_err()
        );
    }
}
