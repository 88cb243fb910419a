//! Server reflection on the proxy, aggregated over every registered service.
//!
//! A stock tool (`grpcurl`, Postman, `grpc_cli`) pointed at the proxy sees the core
//! services and every service in its namespace: `ListServices` unions the answers of one
//! node per service, and symbol or file lookups are forwarded to the node of the service
//! that owns the symbol (or that served the file earlier in the same stream).

use futures::StreamExt;
use micro::registry::Registry;
use micro_core::Status as MicroStatus;
use prost::Message;
use prost_reflect::DescriptorPool;
use std::collections::{BTreeSet, HashMap};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Response, Status, Streaming};
use tonic_reflection::pb::{v1, v1alpha};
use v1::server_reflection_request::MessageRequest;
use v1::server_reflection_response::MessageResponse;

const FORWARD_TIMEOUT: Duration = Duration::from_secs(3);

/// The aggregated reflection service, served as both `v1` and `v1alpha`.
#[derive(Clone)]
pub(crate) struct Reflection {
    inner: Arc<Inner>,
}

struct Inner {
    local: DescriptorPool,
    registry: Arc<dyn Registry>,
}

type Stream<T> = Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send>>;

impl Reflection {
    /// Reflection over the core services' descriptor sets plus the registry's services.
    pub(crate) fn new(local_sets: &[&[u8]], registry: Arc<dyn Registry>) -> Result<Reflection, MicroStatus> {
        let mut local = DescriptorPool::new();
        for set in local_sets {
            local
                .decode_file_descriptor_set(*set)
                .map_err(|e| MicroStatus::internal("proxy", format!("bad core descriptor set: {e}")))?;
        }
        Ok(Reflection { inner: Arc::new(Inner { local, registry }) })
    }

    /// The `grpc.reflection.v1` server.
    pub(crate) fn v1(&self) -> v1::server_reflection_server::ServerReflectionServer<Reflection> {
        v1::server_reflection_server::ServerReflectionServer::new(self.clone())
    }

    /// The `grpc.reflection.v1alpha` server.
    pub(crate) fn v1alpha(&self) -> v1alpha::server_reflection_server::ServerReflectionServer<Reflection> {
        v1alpha::server_reflection_server::ServerReflectionServer::new(self.clone())
    }

    fn session<In>(&self, request: Request<Streaming<In>>) -> Stream<v1::ServerReflectionResponse>
    where
        In: Message + Default + 'static,
    {
        let headers = request.metadata().clone().into_headers();
        let namespace = micro::namespace_of(&headers).to_string();
        let mut input = request.into_inner();
        let this = self.clone();
        Box::pin(async_stream::try_stream! {
            // Which service served each file, so dependency lookups go to the same place.
            let mut owners: HashMap<String, String> = HashMap::new();
            while let Some(msg) = input.next().await {
                let req = v1::ServerReflectionRequest::decode(msg?.encode_to_vec().as_slice())
                    .map_err(|e| Status::invalid_argument(format!("bad reflection request: {e}")))?;
                let answer = this.answer(&namespace, &req, &mut owners).await;
                let message_response = match answer {
                    Ok(r) => r,
                    Err(st) => MessageResponse::ErrorResponse(v1::ErrorResponse {
                        error_code: st.code() as i32,
                        error_message: st.message().to_string(),
                    }),
                };
                yield v1::ServerReflectionResponse {
                    valid_host: req.host.clone(),
                    original_request: Some(req),
                    message_response: Some(message_response),
                };
            }
        })
    }

    async fn answer(
        &self,
        ns: &str,
        req: &v1::ServerReflectionRequest,
        owners: &mut HashMap<String, String>,
    ) -> Result<MessageResponse, Status> {
        let Some(what) = &req.message_request else {
            return Err(Status::invalid_argument("empty reflection request"));
        };
        match what {
            MessageRequest::ListServices(_) => Ok(self.list(ns).await),
            MessageRequest::FileByFilename(name) => {
                if let Some(file) = self.inner.local.get_file_by_name(name) {
                    return Ok(files(vec![file.file_descriptor_proto().encode_to_vec()]));
                }
                let mut candidates: Vec<String> = owners.get(name).cloned().into_iter().collect();
                candidates.extend(self.services(ns).await.into_iter().map(|(s, _)| s));
                self.forward_first(ns, &candidates, req, owners).await
            }
            MessageRequest::FileContainingSymbol(symbol) => {
                if let Some(file) = self.local_symbol(symbol) {
                    return Ok(files(vec![file]));
                }
                let owner = self.owner_of(ns, symbol).await?;
                self.forward_first(ns, &[owner], req, owners).await
            }
            MessageRequest::FileContainingExtension(ext) => {
                let owner = self.owner_of(ns, &ext.containing_type).await?;
                self.forward_first(ns, &[owner], req, owners).await
            }
            MessageRequest::AllExtensionNumbersOfType(ty) => {
                if let Some(m) = self.inner.local.get_message_by_name(ty) {
                    return Ok(MessageResponse::AllExtensionNumbersResponse(v1::ExtensionNumberResponse {
                        base_type_name: ty.clone(),
                        extension_number: m.extensions().map(|e| e.number() as i32).collect(),
                    }));
                }
                let owner = self.owner_of(ns, ty).await?;
                self.forward_first(ns, &[owner], req, owners).await
            }
        }
    }

    fn local_symbol(&self, symbol: &str) -> Option<Vec<u8>> {
        let pool = &self.inner.local;
        let file = pool
            .get_service_by_name(symbol)
            .map(|s| s.parent_file())
            .or_else(|| pool.get_message_by_name(symbol).map(|m| m.parent_file()))
            .or_else(|| pool.get_enum_by_name(symbol).map(|e| e.parent_file()))
            .or_else(|| pool.get_extension_by_name(symbol).map(|e| e.parent_file()))
            .or_else(|| {
                let (svc, method) = symbol.rsplit_once('.')?;
                let s = pool.get_service_by_name(svc)?;
                s.methods().any(|m| m.name() == method).then(|| s.parent_file())
            })?;
        Some(file.file_descriptor_proto().encode_to_vec())
    }

    /// Registered services of `ns` with a gRPC node: `(name, node address)`.
    async fn services(&self, ns: &str) -> Vec<(String, String)> {
        let Ok(list) = self.inner.registry.list_services(ns).await else { return Vec::new() };
        list.into_iter()
            .filter(|s| s.metadata.get("core").is_none_or(|v| v != "true"))
            .filter_map(|s| {
                let node = s.nodes.iter().find(|n| n.metadata.get("protocol").is_none_or(|p| p != "http"))?;
                Some((s.name.clone(), node.address.clone()))
            })
            .collect()
    }

    /// The service owning `symbol`: the longest registered name that prefixes it.
    async fn owner_of(&self, ns: &str, symbol: &str) -> Result<String, Status> {
        self.services(ns)
            .await
            .into_iter()
            .map(|(s, _)| s)
            .filter(|s| symbol.strip_prefix(s.as_str()).is_some_and(|rest| rest.starts_with('.')))
            .max_by_key(|s| s.len())
            .ok_or_else(|| Status::not_found(format!("symbol '{symbol}' not found")))
    }

    async fn list(&self, ns: &str) -> MessageResponse {
        let mut names: BTreeSet<String> = self.inner.local.services().map(|s| s.full_name().to_string()).collect();
        let services = self.services(ns).await;
        let asks = services.iter().map(|(_, addr)| async move {
            let req = v1::ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::ListServices(String::new())),
            };
            forward(addr, ns, req).await
        });
        for answer in futures::future::join_all(asks).await {
            if let Ok(MessageResponse::ListServicesResponse(l)) = answer {
                names.extend(l.service.into_iter().map(|s| s.name).filter(|n| !n.starts_with("grpc.reflection.")));
            }
        }
        MessageResponse::ListServicesResponse(v1::ListServiceResponse {
            service: names.into_iter().map(|name| v1::ServiceResponse { name }).collect(),
        })
    }

    async fn forward_first(
        &self,
        ns: &str,
        candidates: &[String],
        req: &v1::ServerReflectionRequest,
        owners: &mut HashMap<String, String>,
    ) -> Result<MessageResponse, Status> {
        let services = self.services(ns).await;
        let mut last = Status::not_found("not found");
        for name in candidates {
            let Some((_, addr)) = services.iter().find(|(s, _)| s == name) else { continue };
            match forward(addr, ns, req.clone()).await {
                Ok(MessageResponse::ErrorResponse(e)) => {
                    last = Status::new(tonic::Code::from(e.error_code), e.error_message);
                }
                Ok(MessageResponse::FileDescriptorResponse(f)) => {
                    for raw in &f.file_descriptor_proto {
                        if let Ok(fd) = prost_types::FileDescriptorProto::decode(raw.as_slice()) {
                            owners.insert(fd.name().to_string(), name.clone());
                        }
                    }
                    return Ok(MessageResponse::FileDescriptorResponse(f));
                }
                Ok(other) => return Ok(other),
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}

fn files(file_descriptor_proto: Vec<Vec<u8>>) -> MessageResponse {
    MessageResponse::FileDescriptorResponse(v1::FileDescriptorResponse { file_descriptor_proto })
}

/// Asks the reflection service of the node at `addr` one question.
async fn forward(addr: &str, ns: &str, req: v1::ServerReflectionRequest) -> Result<MessageResponse, Status> {
    let ask = async {
        let channel = micro::data::channel(addr)
            .map_err(|e| Status::internal(format!("bad node address {addr}: {}", e.detail())))?;
        let mut client = v1::server_reflection_client::ServerReflectionClient::new(channel);
        let mut request = Request::new(futures::stream::iter([req]));
        if let Ok(v) = ns.parse() {
            request.metadata_mut().insert(micro_core::metadata::NAMESPACE, v);
        }
        let mut answers = client.server_reflection_info(request).await?.into_inner();
        let first = answers.message().await?.ok_or_else(|| Status::unavailable("no reflection answer"))?;
        first.message_response.ok_or_else(|| Status::internal("empty reflection answer"))
    };
    tokio::time::timeout(FORWARD_TIMEOUT, ask)
        .await
        .map_err(|_| Status::deadline_exceeded(format!("reflection at {addr} timed out")))?
}

#[tonic::async_trait]
impl v1::server_reflection_server::ServerReflection for Reflection {
    type ServerReflectionInfoStream = Stream<v1::ServerReflectionResponse>;

    async fn server_reflection_info(
        &self,
        request: Request<Streaming<v1::ServerReflectionRequest>>,
    ) -> Result<Response<Self::ServerReflectionInfoStream>, Status> {
        Ok(Response::new(self.session(request)))
    }
}

#[tonic::async_trait]
impl v1alpha::server_reflection_server::ServerReflection for Reflection {
    type ServerReflectionInfoStream = Stream<v1alpha::ServerReflectionResponse>;

    async fn server_reflection_info(
        &self,
        request: Request<Streaming<v1alpha::ServerReflectionRequest>>,
    ) -> Result<Response<Self::ServerReflectionInfoStream>, Status> {
        // v1alpha is wire-identical to v1: answer in v1 and re-read the bytes.
        let answers = self.session(request).map(|r| {
            r.and_then(|m| {
                v1alpha::ServerReflectionResponse::decode(m.encode_to_vec().as_slice())
                    .map_err(|e| Status::internal(format!("reflection: {e}")))
            })
        });
        Ok(Response::new(Box::pin(answers)))
    }
}
