//! The in-memory registry with TTL leases.

use futures::StreamExt;
use micro_core::registry::{Event, EventType, Registry, Service, validate_name};
use micro_core::{BoxStream, Status, namespace};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::broadcast;
use tokio::time::Instant;

/// An in-memory registry. Nodes expire when their lease runs out; a sweeper task
/// (started on the current tokio runtime) announces expiries to watchers.
#[derive(Clone)]
pub struct MemoryRegistry {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    events: broadcast::Sender<Event>,
}

/// Namespace → service name → version → record.
type State = HashMap<String, BTreeMap<String, BTreeMap<String, Record>>>;

struct Record {
    service: Service,
    nodes: BTreeMap<String, (micro_core::registry::Node, Instant)>,
}

impl Record {
    fn snapshot(&self, now: Instant) -> Service {
        let mut s = self.service.clone();
        s.nodes = self.nodes.values().filter(|(_, exp)| *exp > now).map(|(n, _)| n.clone()).collect();
        s
    }
}

impl Default for MemoryRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryRegistry {
    /// A new empty registry; call inside a tokio runtime to get expiry events.
    pub fn new() -> Self {
        let (events, _) = broadcast::channel(1024);
        let inner = Arc::new(Inner { state: Mutex::new(HashMap::new()), events });
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(sweep(Arc::downgrade(&inner)));
        }
        MemoryRegistry { inner }
    }
}

async fn sweep(inner: Weak<Inner>) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let now = Instant::now();
        let mut expired = Vec::new();
        {
            let mut state = inner.state.lock().unwrap_or_else(|e| e.into_inner());
            for (ns, services) in state.iter_mut() {
                for versions in services.values_mut() {
                    for rec in versions.values_mut() {
                        let gone: Vec<_> =
                            rec.nodes.iter().filter(|(_, (_, exp))| *exp <= now).map(|(id, _)| id.clone()).collect();
                        if gone.is_empty() {
                            continue;
                        }
                        let mut svc = rec.service.clone();
                        for id in gone {
                            if let Some((n, _)) = rec.nodes.remove(&id) {
                                svc.nodes.push(n);
                            }
                        }
                        expired.push(Event { kind: EventType::Delete, namespace: ns.clone(), service: svc });
                    }
                    versions.retain(|_, r| !r.nodes.is_empty());
                }
                services.retain(|_, v| !v.is_empty());
            }
        }
        for e in expired {
            let _ = inner.events.send(e);
        }
    }
}

fn version(s: &Service) -> String {
    if s.version.is_empty() { "latest".to_string() } else { s.version.clone() }
}

#[async_trait::async_trait]
impl Registry for MemoryRegistry {
    async fn register(&self, ns: &str, service: &Service, ttl: Duration) -> Result<(), Status> {
        let ttl = micro_core::registry::check_registration(ns, service, ttl)?;
        let now = Instant::now();
        let v = version(service);
        let kind = {
            let mut state = self.inner.state.lock().unwrap_or_else(|e| e.into_inner());
            let rec = state
                .entry(ns.to_string())
                .or_default()
                .entry(service.name.clone())
                .or_default()
                .entry(v.clone())
                .or_insert_with(|| Record { service: Service::default(), nodes: BTreeMap::new() });
            let mut meta = service.clone();
            meta.nodes.clear();
            meta.version = v;
            let changed = rec.service != meta;
            rec.service = meta;
            let mut new = false;
            for n in &service.nodes {
                let fresh = rec.nodes.get(&n.id).is_none_or(|(old, exp)| old != n || *exp <= now);
                new |= fresh;
                rec.nodes.insert(n.id.clone(), (n.clone(), now + ttl));
            }
            if new {
                Some(EventType::Create)
            } else if changed {
                Some(EventType::Update)
            } else {
                None
            }
        };
        if let Some(kind) = kind {
            let _ = self.inner.events.send(Event { kind, namespace: ns.to_string(), service: service.clone() });
        }
        Ok(())
    }

    async fn deregister(&self, ns: &str, service: &Service) -> Result<(), Status> {
        namespace::validate(ns)?;
        validate_name(&service.name)?;
        let v = version(service);
        let removed = {
            let mut state = self.inner.state.lock().unwrap_or_else(|e| e.into_inner());
            let Some(services) = state.get_mut(ns) else { return Ok(()) };
            let Some(versions) = services.get_mut(&service.name) else { return Ok(()) };
            let mut removed = Vec::new();
            if let Some(rec) = versions.get_mut(&v) {
                if service.nodes.is_empty() {
                    removed.extend(std::mem::take(&mut rec.nodes).into_values().map(|(n, _)| n));
                } else {
                    for n in &service.nodes {
                        if let Some((n, _)) = rec.nodes.remove(&n.id) {
                            removed.push(n);
                        }
                    }
                }
            }
            versions.retain(|_, r| !r.nodes.is_empty());
            if versions.is_empty() {
                services.remove(&service.name);
            }
            removed
        };
        if !removed.is_empty() {
            let mut svc = service.clone();
            svc.nodes = removed;
            let _ = self.inner.events.send(Event { kind: EventType::Delete, namespace: ns.to_string(), service: svc });
        }
        Ok(())
    }

    async fn get_service(&self, ns: &str, name: &str) -> Result<Vec<Service>, Status> {
        namespace::validate(ns)?;
        validate_name(name)?;
        let now = Instant::now();
        let state = self.inner.state.lock().unwrap_or_else(|e| e.into_inner());
        let out: Vec<Service> = state
            .get(ns)
            .and_then(|s| s.get(name))
            .map(|versions| versions.values().map(|r| r.snapshot(now)).filter(|s| !s.nodes.is_empty()).collect())
            .unwrap_or_default();
        if out.is_empty() {
            return Err(Status::not_found("registry", format!("service {name} not found in namespace {ns}")));
        }
        Ok(out)
    }

    async fn list_services(&self, ns: &str) -> Result<Vec<Service>, Status> {
        namespace::validate(ns)?;
        let now = Instant::now();
        let state = self.inner.state.lock().unwrap_or_else(|e| e.into_inner());
        Ok(state
            .get(ns)
            .map(|s| {
                s.values().flat_map(|v| v.values()).map(|r| r.snapshot(now)).filter(|s| !s.nodes.is_empty()).collect()
            })
            .unwrap_or_default())
    }

    async fn watch(&self, ns: &str, service: Option<&str>) -> Result<BoxStream<Result<Event, Status>>, Status> {
        namespace::validate(ns)?;
        let rx = self.inner.events.subscribe();
        let ns = ns.to_string();
        let service = service.filter(|s| !s.is_empty()).map(str::to_string);
        let s = tokio_stream::wrappers::BroadcastStream::new(rx).filter_map(move |e| {
            let keep = match e {
                Ok(e) if e.namespace == ns && service.as_ref().is_none_or(|s| *s == e.service.name) => Some(Ok(e)),
                Ok(_) => None,
                // A slow watcher missed events: tell it, so it can resynchronise.
                Err(_) => Some(Err(Status::new(
                    micro_core::Code::DataLoss,
                    "registry",
                    "watcher fell behind; events were dropped",
                ))),
            };
            futures::future::ready(keep)
        });
        Ok(s.boxed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use micro_core::registry::Node;

    fn svc(node: &str) -> Service {
        Service {
            name: "foo".into(),
            nodes: vec![Node { id: node.into(), address: "127.0.0.1:1".into(), metadata: Default::default() }],
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn conformance() {
        micro_conformance::registry::registry(Arc::new(MemoryRegistry::new())).await;
    }

    #[tokio::test(start_paused = true)]
    async fn nodes_expire_after_ttl_and_watchers_hear_it() {
        let r = MemoryRegistry::new();
        let mut w = r.watch("micro", Some("foo")).await.unwrap();
        r.register("micro", &svc("a"), Duration::from_secs(2)).await.unwrap();
        assert_eq!(w.next().await.unwrap().unwrap().kind, EventType::Create);
        assert_eq!(r.get_service("micro", "foo").await.unwrap()[0].nodes.len(), 1);
        assert!(r.get_service("other", "foo").await.is_err(), "namespaces are separate");
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(w.next().await.unwrap().unwrap().kind, EventType::Delete);
        assert_eq!(r.get_service("micro", "foo").await.unwrap_err().code(), micro_core::Code::NotFound);
    }

    #[tokio::test]
    async fn deregister_removes_only_named_nodes() {
        let r = MemoryRegistry::new();
        r.register("micro", &svc("a"), Duration::from_secs(30)).await.unwrap();
        r.register("micro", &svc("b"), Duration::from_secs(30)).await.unwrap();
        assert_eq!(r.get_service("micro", "foo").await.unwrap()[0].nodes.len(), 2);
        r.deregister("micro", &svc("a")).await.unwrap();
        let nodes = &r.get_service("micro", "foo").await.unwrap()[0].nodes;
        assert_eq!(nodes.len(), 1);
        assert_eq!(nodes[0].id, "b");
        assert_eq!(r.list_services("micro").await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn rejects_bad_input() {
        let r = MemoryRegistry::new();
        assert!(r.register("Bad NS", &svc("a"), Duration::from_secs(1)).await.is_err());
        let mut s = svc("a");
        s.name = "bad name/".into();
        assert!(r.register("micro", &s, Duration::from_secs(1)).await.is_err());
        s.name = "foo".into();
        s.nodes.clear();
        assert!(r.register("micro", &s, Duration::from_secs(1)).await.is_err());
    }
}
