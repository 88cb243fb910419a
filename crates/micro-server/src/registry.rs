//! The `registry` core service: the registry contract served over gRPC.

use micro::proto::registry as pb;
use micro::status::to_tonic;
use micro_core::registry::{EventType, Registry};
use std::sync::Arc;
use std::time::Duration;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};

/// The registry as the gateway and the server's client see it: the core services are
/// the same in every namespace, and always this node's own (nodes sharing a registry
/// never send core calls to each other).
pub(crate) struct CoreRegistry {
    pub(crate) inner: Arc<dyn Registry>,
    /// This node's records of the core services.
    pub(crate) local: Vec<micro_core::registry::Service>,
    /// The network: a service no node of which is registered here is another
    /// cluster's, when the network has a route to it.
    pub(crate) network: Option<crate::network::Network>,
}

fn is_core(name: &str) -> bool {
    crate::CORE_SERVICES.contains(&name)
}

#[tonic::async_trait]
impl Registry for CoreRegistry {
    async fn register(
        &self,
        ns: &str,
        service: &micro_core::registry::Service,
        ttl: Duration,
    ) -> Result<(), micro_core::Status> {
        self.inner.register(ns, service, ttl).await
    }

    async fn deregister(&self, ns: &str, service: &micro_core::registry::Service) -> Result<(), micro_core::Status> {
        self.inner.deregister(ns, service).await
    }

    async fn get_service(
        &self,
        ns: &str,
        name: &str,
    ) -> Result<Vec<micro_core::registry::Service>, micro_core::Status> {
        if let Some(own) = self.local.iter().find(|s| s.name == name) {
            return Ok(vec![own.clone()]);
        }
        match lookup(self.inner.as_ref(), ns, name).await {
            Err(e) if e.code() == micro_core::Code::NotFound => {
                match self.network.as_ref().and_then(|n| n.imported(ns, name)) {
                    Some(found) => Ok(found),
                    None => Err(e),
                }
            }
            other => other,
        }
    }

    async fn list_services(&self, ns: &str) -> Result<Vec<micro_core::registry::Service>, micro_core::Status> {
        self.inner.list_services(ns).await
    }

    async fn watch(
        &self,
        ns: &str,
        service: Option<&str>,
    ) -> Result<micro_core::BoxStream<Result<micro_core::registry::Event, micro_core::Status>>, micro_core::Status>
    {
        self.inner.watch(ns, service).await
    }
}

/// A service by name in `ns`; a product's from every namespace: its nodes in micro that
/// its own account registered, nobody else's (product names are reserved: see
/// `check_product`).
async fn lookup(
    registry: &dyn Registry,
    ns: &str,
    name: &str,
) -> Result<Vec<micro_core::registry::Service>, micro_core::Status> {
    if !crate::products::NAMES.contains(&name) {
        return registry.get_service(ns, name).await;
    }
    let owner = owner_digest(micro_core::namespace::DEFAULT, &crate::products::account(name));
    let mut services = registry.get_service(micro_core::namespace::DEFAULT, name).await?;
    for s in &mut services {
        s.nodes.retain(|n| n.metadata.get(OWNER) == Some(&owner));
    }
    services.retain(|s| !s.nodes.is_empty());
    if services.is_empty() {
        return Err(micro_core::Status::not_found("registry", format!("service {name} not found")));
    }
    Ok(services)
}

/// Core service names are the server's: nobody registers nodes for them.
fn not_core(name: &str) -> Result<(), Status> {
    if is_core(name) {
        return Err(to_tonic(&micro_core::Status::new(
            micro_core::Code::PermissionDenied,
            "registry",
            format!("{name} is a core service's name"),
        )));
    }
    Ok(())
}

/// A product's name is its own: registered in micro by its account (`product-<name>`) or
/// micro's admins only, in no other namespace (where the product serves the name).
fn check_product(caller: Option<&micro::auth::Caller>, ns: &str, name: &str) -> Result<(), Status> {
    if !crate::products::NAMES.contains(&name) {
        return Ok(());
    }
    let own = ns == micro_core::namespace::DEFAULT
        && caller.is_some_and(|c| c.is_operator() || c.id() == Some(crate::products::account(name).as_str()));
    if own {
        return Ok(());
    }
    Err(to_tonic(&micro_core::Status::new(
        micro_core::Code::PermissionDenied,
        "registry",
        format!("{name} is a product's name: only its account registers it, in namespace micro"),
    )))
}

/// The node metadata naming who registered a node (a digest of the account, or
/// `anonymous`), so only they (or an admin) may replace or remove it.
const OWNER: &str = "registered-by";

/// Who calls, as [`OWNER`] records it, and whether they administer the namespace.
fn caller<T>(req: &Request<T>, ns: &str) -> (String, bool) {
    let caller = micro::auth::Caller::of(req);
    let account = caller.and_then(|c| c.id());
    let admin = caller.is_some_and(|c| c.is_admin());
    let owner = match account {
        Some(a) => owner_digest(ns, a),
        None => "anonymous".to_string(),
    };
    (owner, admin)
}

/// [`OWNER`] of the nodes account `account` registers in namespace `ns`.
fn owner_digest(ns: &str, account: &str) -> String {
    crate::sha256_hex(format!("{ns}/{account}").as_bytes())[..16].to_string()
}

/// A service name belongs to the account that registered its nodes: nobody else adds,
/// replaces or removes nodes under it while one is registered (the namespace's admins
/// may). Otherwise anyone could add a node of their own to a service and receive its
/// callers' requests.
async fn check_owner(
    registry: &dyn Registry,
    ns: &str,
    service: &micro_core::registry::Service,
    owner: &str,
    admin: bool,
) -> Result<(), Status> {
    if admin {
        return Ok(());
    }
    let Ok(existing) = registry.get_service(ns, &service.name).await else { return Ok(()) };
    let foreign = existing.iter().flat_map(|s| &s.nodes).any(|n| n.metadata.get(OWNER).is_none_or(|o| o != owner));
    if foreign {
        return Err(to_tonic(&micro_core::Status::new(
            micro_core::Code::PermissionDenied,
            "registry",
            format!("service {} belongs to another account", service.name),
        )));
    }
    Ok(())
}

/// Serves a [`Registry`] as `registry.Registry`.
pub(crate) struct RegistryService {
    pub(crate) registry: Arc<dyn Registry>,
    /// Where nodes may point.
    pub(crate) targets: crate::targets::Targets,
}

fn service_of(s: Option<pb::Service>) -> Result<micro_core::registry::Service, Status> {
    s.map(Into::into).ok_or_else(|| Status::invalid_argument("registry: service is required"))
}

#[tonic::async_trait]
impl pb::registry_server::Registry for RegistryService {
    async fn register(&self, req: Request<pb::RegisterRequest>) -> Result<Response<pb::RegisterResponse>, Status> {
        let ns = micro::namespace(&req);
        let (owner, admin) = caller(&req, &ns);
        let who = micro::auth::Caller::of(&req).cloned();
        let r = req.into_inner();
        let ttl =
            if r.ttl_seconds <= 0 { micro::DEFAULT_TTL } else { Duration::from_secs(r.ttl_seconds.min(86_400) as u64) };
        let mut service = service_of(r.service)?;
        not_core(&service.name)?;
        check_product(who.as_ref(), &ns, &service.name)?;
        micro_core::registry::check_registration(&ns, &service, ttl).map_err(|e| to_tonic(&e))?;
        for n in &service.nodes {
            self.targets.check(&n.address).await.map_err(|e| to_tonic(&e))?;
            self.targets.local.admit(&ns, &n.address).map_err(|e| to_tonic(&e))?;
        }
        check_owner(self.registry.as_ref(), &ns, &service, &owner, admin).await?;
        for n in &mut service.nodes {
            n.metadata.insert(OWNER.to_string(), owner.clone());
        }
        self.registry.register(&ns, &service, ttl).await.map_err(|e| to_tonic(&e))?;
        Ok(Response::new(pb::RegisterResponse {}))
    }

    async fn deregister(
        &self,
        req: Request<pb::DeregisterRequest>,
    ) -> Result<Response<pb::DeregisterResponse>, Status> {
        let ns = micro::namespace(&req);
        let (owner, admin) = caller(&req, &ns);
        let r = req.into_inner();
        let service = service_of(r.service)?;
        not_core(&service.name)?;
        check_owner(self.registry.as_ref(), &ns, &service, &owner, admin).await?;
        self.registry.deregister(&ns, &service).await.map_err(|e| to_tonic(&e))?;
        Ok(Response::new(pb::DeregisterResponse {}))
    }

    async fn get_service(
        &self,
        req: Request<pb::GetServiceRequest>,
    ) -> Result<Response<pb::GetServiceResponse>, Status> {
        let ns = micro::namespace(&req);
        let services = lookup(self.registry.as_ref(), &ns, &req.into_inner().name).await.map_err(|e| to_tonic(&e))?;
        Ok(Response::new(pb::GetServiceResponse { services: services.iter().map(Into::into).collect() }))
    }

    async fn list_services(
        &self,
        req: Request<pb::ListServicesRequest>,
    ) -> Result<Response<pb::ListServicesResponse>, Status> {
        let ns = micro::namespace(&req);
        let services = self.registry.list_services(&ns).await.map_err(|e| to_tonic(&e))?;
        Ok(Response::new(pb::ListServicesResponse { services: services.iter().map(Into::into).collect() }))
    }

    type WatchStream = micro_core::BoxStream<Result<pb::WatchEvent, Status>>;

    async fn watch(&self, req: Request<pb::WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let ns = micro::namespace(&req);
        let name = req.into_inner().service;
        let events = self.registry.watch(&ns, Some(&name)).await.map_err(|e| to_tonic(&e))?;
        let s = events.map(|e| {
            e.map(|e| pb::WatchEvent {
                r#type: match e.kind {
                    EventType::Create => "create",
                    EventType::Update => "update",
                    EventType::Delete => "delete",
                }
                .to_string(),
                namespace: e.namespace,
                service: Some((&e.service).into()),
            })
            .map_err(|e| to_tonic(&e))
        });
        Ok(Response::new(Box::pin(s)))
    }
}
