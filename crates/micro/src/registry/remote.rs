//! A registry client that talks to the `registry` service through the server.

use crate::proto::registry as pb;
use crate::status::from_tonic;
use futures::StreamExt;
use micro_core::registry::{Event, EventType, Registry, Service};
use micro_core::{BoxStream, Status};
use std::time::Duration;

/// The registry of a `micro server`, reached over gRPC (usually through its proxy at
/// `MICRO_SERVER`). Cheap to clone.
#[derive(Clone)]
pub struct RemoteRegistry {
    client: pb::registry_client::RegistryClient<crate::data::Ch>,
}

impl RemoteRegistry {
    /// A client of the registry at `address` (`host:port`); connects lazily.
    pub fn new(address: &str) -> Result<Self, Status> {
        RemoteRegistry::with_token(address, None)
    }

    /// Like [`RemoteRegistry::new`], sending the tokens of `source` (a service's own
    /// account, when registering needs one).
    pub fn with_token(
        address: &str,
        source: Option<std::sync::Arc<dyn crate::data::TokenSource>>,
    ) -> Result<Self, Status> {
        let channel = crate::data::channel_with(address, source)
            .map_err(|e| Status::bad_request("registry", e.detail().to_string()))?;
        Ok(RemoteRegistry::on(channel))
    }

    /// A client of the registry that `channel` reaches.
    pub fn on(channel: crate::Channel) -> Self {
        RemoteRegistry { client: pb::registry_client::RegistryClient::new(channel) }
    }

    fn request<T>(ns: &str, msg: T) -> Result<tonic::Request<T>, Status> {
        let mut req = tonic::Request::new(msg);
        let v = ns.parse().map_err(|_| Status::bad_request("registry", format!("invalid namespace {ns:?}")))?;
        req.metadata_mut().insert(micro_core::metadata::NAMESPACE, v);
        req.set_timeout(Duration::from_secs(5));
        Ok(req)
    }
}

#[async_trait::async_trait]
impl Registry for RemoteRegistry {
    async fn register(&self, ns: &str, service: &Service, ttl: Duration) -> Result<(), Status> {
        let msg = pb::RegisterRequest { service: Some(service.into()), ttl_seconds: ttl.as_secs().max(1) as i64 };
        self.client.clone().register(Self::request(ns, msg)?).await.map_err(|e| from_tonic(&e))?;
        Ok(())
    }

    async fn deregister(&self, ns: &str, service: &Service) -> Result<(), Status> {
        let msg = pb::DeregisterRequest { service: Some(service.into()) };
        self.client.clone().deregister(Self::request(ns, msg)?).await.map_err(|e| from_tonic(&e))?;
        Ok(())
    }

    async fn get_service(&self, ns: &str, name: &str) -> Result<Vec<Service>, Status> {
        let msg = pb::GetServiceRequest { name: name.to_string() };
        let res = self.client.clone().get_service(Self::request(ns, msg)?).await.map_err(|e| from_tonic(&e))?;
        Ok(res.into_inner().services.into_iter().map(Service::from).collect())
    }

    async fn list_services(&self, ns: &str) -> Result<Vec<Service>, Status> {
        let res = self
            .client
            .clone()
            .list_services(Self::request(ns, pb::ListServicesRequest {})?)
            .await
            .map_err(|e| from_tonic(&e))?;
        Ok(res.into_inner().services.into_iter().map(Service::from).collect())
    }

    async fn watch(&self, ns: &str, service: Option<&str>) -> Result<BoxStream<Result<Event, Status>>, Status> {
        let msg = pb::WatchRequest { service: service.unwrap_or_default().to_string() };
        let mut req = Self::request(ns, msg)?;
        // A watch lives as long as the caller wants it: no deadline.
        req.metadata_mut().remove(micro_core::metadata::GRPC_TIMEOUT);
        let stream = self.client.clone().watch(req).await.map_err(|e| from_tonic(&e))?.into_inner();
        Ok(stream
            .map(|r| {
                let e = r.map_err(|e| from_tonic(&e))?;
                let kind = match e.r#type.as_str() {
                    "create" => EventType::Create,
                    "update" => EventType::Update,
                    _ => EventType::Delete,
                };
                Ok(Event { kind, namespace: e.namespace, service: e.service.map(Service::from).unwrap_or_default() })
            })
            .boxed())
    }
}
