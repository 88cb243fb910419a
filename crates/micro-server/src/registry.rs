//! The `registry` core service: the registry contract served over gRPC.

use micro::proto::registry as pb;
use micro::status::to_tonic;
use micro_core::registry::{EventType, Registry};
use std::sync::Arc;
use std::time::Duration;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};

/// Serves a [`Registry`] as `registry.Registry`.
pub(crate) struct RegistryService {
    pub(crate) registry: Arc<dyn Registry>,
}

fn service_of(s: Option<pb::Service>) -> Result<micro_core::registry::Service, Status> {
    s.map(Into::into).ok_or_else(|| Status::invalid_argument("registry: service is required"))
}

#[tonic::async_trait]
impl pb::registry_server::Registry for RegistryService {
    async fn register(&self, req: Request<pb::RegisterRequest>) -> Result<Response<pb::RegisterResponse>, Status> {
        let ns = micro::namespace(&req);
        let r = req.into_inner();
        let ttl =
            if r.ttl_seconds <= 0 { micro::DEFAULT_TTL } else { Duration::from_secs(r.ttl_seconds.min(86_400) as u64) };
        self.registry.register(&ns, &service_of(r.service)?, ttl).await.map_err(|e| to_tonic(&e))?;
        Ok(Response::new(pb::RegisterResponse {}))
    }

    async fn deregister(
        &self,
        req: Request<pb::DeregisterRequest>,
    ) -> Result<Response<pb::DeregisterResponse>, Status> {
        let ns = micro::namespace(&req);
        let r = req.into_inner();
        self.registry.deregister(&ns, &service_of(r.service)?).await.map_err(|e| to_tonic(&e))?;
        Ok(Response::new(pb::DeregisterResponse {}))
    }

    async fn get_service(
        &self,
        req: Request<pb::GetServiceRequest>,
    ) -> Result<Response<pb::GetServiceResponse>, Status> {
        let ns = micro::namespace(&req);
        let services = self.registry.get_service(&ns, &req.into_inner().name).await.map_err(|e| to_tonic(&e))?;
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
