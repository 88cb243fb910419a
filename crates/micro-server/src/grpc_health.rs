//! gRPC health (`grpc.health.v1.Health`) on the proxy, for the core services and every
//! registered one: stock checkers (grpc_health_probe, load balancers, Kubernetes gRPC
//! probes) are pointed at the proxy, which is where they reach the services.
//!
//! `Check` answers `SERVING` for the server (`""`) and its core services, and for a
//! service with a node registered in the caller's namespace (named as gRPC names it:
//! `helloworld.Greeter`, the service's package and one of its handlers). Anything else
//! fails with `NOT_FOUND`, as the health protocol has it. `Watch` follows the core
//! services only.

use micro::registry::Registry;
use micro_core::{Code, Status as MicroStatus};
use std::sync::Arc;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::{Health as HealthApi, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_health::server::{HealthReporter, HealthService, WatchStream};

/// The health service of the proxy. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Health {
    inner: Arc<Inner>,
}

struct Inner {
    /// The server's own statuses: `""` and the core services.
    core: HealthService,
    registry: Arc<dyn Registry>,
}

impl Health {
    /// Health for the core gRPC services `serving` (up) and the services in `registry`.
    pub(crate) async fn new(serving: &[String], registry: Arc<dyn Registry>) -> Health {
        let reporter = HealthReporter::new();
        for name in serving {
            reporter.set_service_status(name, tonic_health::ServingStatus::Serving).await;
        }
        Health { inner: Arc::new(Inner { core: HealthService::from_health_reporter(reporter), registry }) }
    }

    /// The `grpc.health.v1.Health` server.
    pub(crate) fn server(&self) -> HealthServer<Health> {
        HealthServer::new(self.clone())
    }

    /// Whether the gRPC service `name` (`package.Handler`) has a node in `ns`.
    async fn registered(&self, ns: &str, name: &str) -> Result<bool, MicroStatus> {
        let Some((service, handler)) = name.rsplit_once('.') else { return Ok(false) };
        let services = match self.inner.registry.get_service(ns, service).await {
            Ok(s) => s,
            Err(e) if e.code() == Code::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        let prefix = format!("{handler}.");
        Ok(services.iter().any(|s| {
            s.nodes.iter().any(|n| n.metadata.get("protocol").is_none_or(|p| p == "grpc"))
                && (s.endpoints.is_empty() || s.endpoints.iter().any(|e| e.name.starts_with(&prefix)))
        }))
    }
}

#[tonic::async_trait]
impl HealthApi for Health {
    async fn check(&self, req: Request<HealthCheckRequest>) -> Result<Response<HealthCheckResponse>, Status> {
        // The namespace the guard resolved for the caller.
        let ns = micro::namespace(&req);
        let name = req.get_ref().service.clone();
        match self.inner.core.check(req).await {
            Err(e) if e.code() == tonic::Code::NotFound => {}
            answer => return answer,
        }
        if self.registered(&ns, &name).await.map_err(|e| micro::status::to_tonic(&e))? {
            return Ok(Response::new(HealthCheckResponse { status: ServingStatus::Serving as i32 }));
        }
        let unknown = MicroStatus::not_found("proxy", format!("no service {name} in namespace {ns}"));
        Err(micro::status::to_tonic(&unknown))
    }

    type WatchStream = WatchStream;

    async fn watch(&self, req: Request<HealthCheckRequest>) -> Result<Response<WatchStream>, Status> {
        self.inner.core.watch(req).await
    }
}
