//! The request router of every Micro server: gRPC (protobuf and JSON codecs) and
//! unary HTTP/1.1 JSON, over handlers generated from protos and serde handlers.

use crate::frame::{self, FrameReader};
use crate::handler::{Context, Handler, Output};
use crate::layer::{AuthLayer, Authorize, DeadlineLayer, MetricsLayer, TraceLayer};
use crate::metrics::Metrics;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, header};
use http_body::Body as HttpBody;
use http_body_util::{BodyExt, Full, Limited};
use micro_core::metadata::{CONTENT_TYPE_GRPC, CONTENT_TYPE_GRPC_JSON, CONTENT_TYPE_JSON};
use micro_core::registry::Endpoint;
use micro_core::{Code, Status};
use prost_reflect::{DescriptorPool, MethodDescriptor};
use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::Arc;
use tonic::body::Body;
use tower::ServiceExt;
use tower::util::BoxCloneSyncService;

/// A tonic-generated server (or any gRPC tower service), type-erased.
pub(crate) type GrpcService = BoxCloneSyncService<Request<Body>, Response<Body>, Infallible>;

/// A router behind the shared layers, ready to serve (see [`Router::layered`]).
pub type LayeredRouter = BoxCloneSyncService<Request<Body>, Response<Body>, Infallible>;

/// Routes calls to a server's handlers. Cheap to clone.
#[derive(Clone)]
pub struct Router {
    inner: Arc<Inner>,
}

struct Inner {
    id: String,
    grpc: HashMap<String, GrpcService>,
    handlers: HashMap<String, (String, Arc<dyn Handler>)>,
    pool: DescriptorPool,
    metrics: Metrics,
    max_body: usize,
}

/// Builds a [`Router`].
pub struct RouterBuilder {
    inner: Inner,
}

impl RouterBuilder {
    /// A router whose errors carry `id` (the service name).
    pub fn new(id: &str) -> RouterBuilder {
        RouterBuilder {
            inner: Inner {
                id: id.to_string(),
                grpc: HashMap::new(),
                handlers: HashMap::new(),
                pool: DescriptorPool::new(),
                metrics: Metrics::default(),
                max_body: frame::MAX_MESSAGE,
            },
        }
    }

    /// Shares a metrics registry (for example the server's).
    pub fn metrics(mut self, metrics: Metrics) -> Self {
        self.inner.metrics = metrics;
        self
    }

    /// Adds an encoded `FileDescriptorSet` (from `micro::include_descriptor!()`).
    pub fn descriptors(mut self, encoded: &[u8]) -> Result<Self, Status> {
        self.inner
            .pool
            .decode_file_descriptor_set(encoded)
            .map_err(|e| Status::internal(&self.inner.id, format!("bad descriptor set: {e}")))?;
        Ok(self)
    }

    /// Adds a gRPC service under its full proto name (`helloworld.Greeter`).
    pub(crate) fn grpc(mut self, full_name: &str, svc: GrpcService) -> Self {
        self.inner.grpc.insert(full_name.to_string(), svc);
        self
    }

    /// Adds a JSON handler for `service`'s `endpoint` (`Handler.Method`).
    pub(crate) fn handler(mut self, service: &str, endpoint: &str, h: Arc<dyn Handler>) -> Self {
        if let Some(path) = grpc_path(service, endpoint) {
            self.inner.handlers.insert(path, (endpoint.to_string(), h));
        }
        self
    }

    /// Adds gRPC health (reporting `serving` as up) and reflection (v1 and v1alpha) over
    /// the given encoded descriptor sets.
    pub fn standard_services(mut self, descriptor_sets: &[Vec<u8>], serving: &[String]) -> Result<Self, Status> {
        let id = self.inner.id.clone();
        let reflection = || {
            let mut r = tonic_reflection::server::Builder::configure();
            for d in descriptor_sets {
                r = r.register_encoded_file_descriptor_set(d);
            }
            r
        };
        let v1 = reflection().build_v1().map_err(|e| Status::internal(&id, format!("reflection: {e}")))?;
        let v1alpha = reflection().build_v1alpha().map_err(|e| Status::internal(&id, format!("reflection: {e}")))?;
        let (reporter, health) = tonic_health::server::health_reporter();
        for name in serving {
            let (r, n) = (reporter.clone(), name.clone());
            tokio::spawn(async move { r.set_service_status(n, tonic_health::ServingStatus::Serving).await });
        }
        self = self
            .grpc("grpc.reflection.v1.ServerReflection", GrpcService::new(v1))
            .grpc("grpc.reflection.v1alpha.ServerReflection", GrpcService::new(v1alpha))
            .grpc("grpc.health.v1.Health", GrpcService::new(health));
        Ok(self)
    }

    /// Adds `Debug.Health` and `Debug.Stats` for `service`, reporting `metrics`.
    pub fn debug(self, service: &str, metrics: Metrics) -> Self {
        use crate::handler::Unary;
        use std::marker::PhantomData;
        let started = std::time::SystemTime::now();
        let health = Unary { id: service.to_string(), f: crate::debug::health, _types: PhantomData };
        let stats = Unary {
            id: service.to_string(),
            f: move |_: Context, _: crate::debug::Empty| {
                let m = metrics.clone();
                async move { Ok::<_, Status>(crate::debug::stats(started, m)) }
            },
            _types: PhantomData,
        };
        let trace = Unary { id: service.to_string(), f: crate::debug::trace, _types: PhantomData };
        self.handler(service, "Debug.Health", Arc::new(health))
            .handler(service, "Debug.Stats", Arc::new(stats))
            .handler(service, "Debug.Trace", Arc::new(trace))
    }

    /// Adds any gRPC tower service (a tonic-generated server) under its proto name.
    pub fn grpc_service<S>(self, svc: S) -> Self
    where
        S: tonic::server::NamedService
            + tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.grpc(S::NAME, GrpcService::new(svc))
    }

    /// Finishes the router.
    pub fn build(self) -> Router {
        Router { inner: Arc::new(self.inner) }
    }
}

/// `/{service}.{Handler}/{Method}` for an endpoint `Handler.Method`.
pub fn grpc_path(service: &str, endpoint: &str) -> Option<String> {
    let (h, m) = endpoint.split_once('.')?;
    if h.is_empty() || m.is_empty() || m.contains('.') {
        return None;
    }
    Some(format!("/{service}.{h}/{m}"))
}

/// `(service, Handler.Method)` of a gRPC path `/{service}.{Handler}/{Method}`.
pub fn split_grpc_path(path: &str) -> Option<(&str, String)> {
    let (full, method) = path.strip_prefix('/')?.split_once('/')?;
    let (service, handler) = full.rsplit_once('.')?;
    if service.is_empty() || handler.is_empty() || method.is_empty() || method.contains('/') {
        return None;
    }
    Some((service, format!("{handler}.{method}")))
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    GrpcProto,
    GrpcJson,
    HttpJson,
}

impl Router {
    /// The metrics recorded by this router.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The endpoints this router serves for `service`: the methods of gRPC services in
    /// the proto package named `service`, and the JSON handlers registered for it.
    pub fn endpoints(&self, service: &str) -> Vec<Endpoint> {
        let mut out = BTreeMap::new();
        for full in self.inner.grpc.keys() {
            let Some(desc) = self.inner.pool.get_service_by_name(full) else { continue };
            if desc.package_name() != service {
                continue;
            }
            for m in desc.methods() {
                let name = format!("{}.{}", desc.name(), m.name());
                let mut metadata = BTreeMap::new();
                match (m.is_client_streaming(), m.is_server_streaming()) {
                    (true, true) => metadata.insert("stream".into(), "bidi".into()),
                    (true, false) => metadata.insert("stream".into(), "client".into()),
                    (false, true) => metadata.insert("stream".into(), "server".into()),
                    _ => None,
                };
                let ep = Endpoint {
                    name: name.clone(),
                    request: crate::schema::of_message(&m.input()),
                    response: crate::schema::of_message(&m.output()),
                    metadata,
                };
                out.insert(name, ep);
            }
        }
        let prefix = format!("/{service}.");
        for (path, (name, h)) in &self.inner.handlers {
            if path.starts_with(&prefix) && !path[prefix.len()..].contains('.') {
                out.insert(name.clone(), h.endpoint(name));
            }
        }
        out.into_values().collect()
    }

    /// The full names of the gRPC services (for health and reflection).
    pub fn grpc_names(&self) -> Vec<String> {
        self.inner.grpc.keys().cloned().collect()
    }

    /// Serves one HTTP request, without the layers (see [`Router::layered`]).
    pub async fn call<B>(&self, req: Request<B>) -> Response<Body>
    where
        B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + std::fmt::Display,
    {
        let ct = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        let mode = if ct == CONTENT_TYPE_GRPC_JSON {
            Mode::GrpcJson
        } else if ct.starts_with(CONTENT_TYPE_GRPC) {
            Mode::GrpcProto
        } else {
            Mode::HttpJson
        };
        let path = if mode == Mode::HttpJson {
            http_to_grpc_path(req.uri().path())
        } else {
            Some(req.uri().path().to_string())
        };
        let Some(path) = path.filter(|_| mode != Mode::HttpJson || req.method() == Method::POST) else {
            let st = if req.method() != Method::POST && http_to_grpc_path(req.uri().path()).is_some() {
                Status::bad_request(&self.inner.id, "use POST with a JSON body").with_http_status(405)
            } else {
                Status::not_found(&self.inner.id, format!("no route for {} {}", req.method(), req.uri().path()))
            };
            return self.error(mode, &st);
        };
        self.dispatch(mode, path, req).await
    }

    /// The router behind the shared layers ([`crate::layer`]): trace context, metrics,
    /// deadlines and, when given, an auth hook. This is what a server serves.
    pub fn layered(&self, auth: Option<Arc<dyn Authorize>>) -> LayeredRouter {
        let id = self.inner.id.as_str();
        let router = self.clone();
        let inner = tower::service_fn(move |req: Request<Body>| {
            let r = router.clone();
            async move { Ok::<_, Infallible>(r.call(req).await) }
        });
        let stack = tower::ServiceBuilder::new()
            .layer(TraceLayer::new(id))
            .layer(MetricsLayer::new(id, self.inner.metrics.clone()))
            .layer(DeadlineLayer::new(id))
            .option_layer(auth.map(AuthLayer::new))
            .service(inner);
        LayeredRouter::new(stack)
    }

    fn error(&self, mode: Mode, st: &Status) -> Response<Body> {
        let st = st.clone().or_id(&self.inner.id);
        match mode {
            Mode::GrpcProto => frame::error_response(&st, CONTENT_TYPE_GRPC),
            Mode::GrpcJson => frame::error_response(&st, CONTENT_TYPE_GRPC_JSON),
            Mode::HttpJson => json_error(&st),
        }
    }

    async fn dispatch<B>(&self, mode: Mode, path: String, req: Request<B>) -> Response<Body>
    where
        B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + std::fmt::Display,
    {
        let id = &self.inner.id;
        if let Some((_, h)) = self.inner.handlers.get(&path) {
            if mode == Mode::GrpcProto {
                return self.error(
                    mode,
                    &Status::unimplemented(
                        id,
                        format!("{path} speaks JSON only: use content-type {CONTENT_TYPE_GRPC_JSON}"),
                    ),
                );
            }
            let (parts, body) = req.into_parts();
            let msg = match self.read_message(mode, body).await {
                Ok(m) => m,
                Err(e) => return self.error(mode, &e),
            };
            let caller = parts.extensions.get::<crate::auth::Caller>().cloned();
            let out = h.call(Context::new(parts.headers).with_caller(caller), msg).await;
            return match (mode, out) {
                (_, Err(e)) => self.error(mode, &e),
                (Mode::HttpJson, Ok(Output::Unary(b))) => json_response(b),
                (Mode::HttpJson, Ok(Output::Stream(_))) => self.error(
                    mode,
                    &Status::bad_request(
                        id,
                        "streaming endpoint: call it over gRPC or through the gateway (SSE/WebSocket)",
                    ),
                ),
                (_, Ok(Output::Unary(b))) => frame::unary_response(b, CONTENT_TYPE_GRPC_JSON),
                (_, Ok(Output::Stream(s))) => {
                    let mut res = Response::new(frame::stream_body(s));
                    res.headers_mut()
                        .insert(header::CONTENT_TYPE, http::HeaderValue::from_static(CONTENT_TYPE_GRPC_JSON));
                    res
                }
            };
        }
        let Some((full, method)) = path.strip_prefix('/').and_then(|p| p.split_once('/')) else {
            return self.error(mode, &Status::not_found(id, format!("no route for {path}")));
        };
        let Some(svc) = self.inner.grpc.get(full).cloned() else {
            let st = if mode == Mode::GrpcProto {
                Status::unimplemented(id, format!("unknown service {full}"))
            } else {
                Status::not_found(id, format!("unknown endpoint {}", path.trim_start_matches('/')))
            };
            return self.error(mode, &st);
        };
        if mode == Mode::GrpcProto {
            return svc.oneshot(req.map(Body::new)).await.unwrap_or_else(|e| match e {});
        }
        let Some(md) = self.inner.pool.get_service_by_name(full).and_then(|s| s.methods().find(|m| m.name() == method))
        else {
            let st = if self.inner.pool.get_service_by_name(full).is_none() {
                Status::unimplemented(id, format!("{full} has no descriptors registered, so it cannot speak JSON"))
            } else {
                Status::not_found(id, format!("unknown endpoint {}", path.trim_start_matches('/')))
            };
            return self.error(mode, &st);
        };
        if mode == Mode::HttpJson {
            if md.is_client_streaming() || md.is_server_streaming() {
                return self.error(
                    mode,
                    &Status::bad_request(
                        id,
                        "streaming endpoint: call it over gRPC or through the gateway (SSE/WebSocket)",
                    ),
                );
            }
            let (parts, body) = req.into_parts();
            let json = match self.read_message(mode, body).await {
                Ok(m) => m,
                Err(e) => return self.error(mode, &e),
            };
            return match self.unary_json(svc, &md, &path, parts.headers, &json).await {
                Ok(b) => json_response(b),
                Err(e) => self.error(mode, &e),
            };
        }
        self.grpc_json(svc, md, req).await
    }

    /// Reads the single request message: a gRPC frame, or the whole HTTP body.
    async fn read_message<B>(&self, mode: Mode, body: B) -> Result<Bytes, Status>
    where
        B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + std::fmt::Display,
    {
        if mode == Mode::HttpJson {
            return match Limited::new(body, self.inner.max_body).collect().await {
                Ok(c) => Ok(c.to_bytes()),
                Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(Status::new(
                    Code::ResourceExhausted,
                    &self.inner.id,
                    format!("body larger than {} bytes", self.inner.max_body),
                )
                .with_http_status(413)),
                Err(e) => Err(Status::new(Code::Cancelled, &self.inner.id, format!("reading body: {e}"))),
            };
        }
        let mut r = FrameReader::new(body);
        Ok(r.next().await?.unwrap_or_default())
    }

    /// A unary proto method called with a JSON message, answered with JSON.
    async fn unary_json(
        &self,
        svc: GrpcService,
        md: &MethodDescriptor,
        path: &str,
        headers: HeaderMap,
        json: &[u8],
    ) -> Result<Bytes, Status> {
        let id = &self.inner.id;
        let msg = crate::transcode::json_to_proto(&md.input(), json, id)?;
        let mut req = Request::new(Body::new(Full::new(frame::encode(&msg))));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = path.parse().map_err(|_| Status::bad_request(id, "bad path"))?;
        *req.headers_mut() = headers;
        req.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static(CONTENT_TYPE_GRPC));
        req.headers_mut().insert(header::TE, http::HeaderValue::from_static("trailers"));
        req.headers_mut().remove(header::CONTENT_LENGTH);
        let res = svc.oneshot(req).await.unwrap_or_else(|e| match e {});
        if let Some(Err(e)) = Status::from_grpc_headers(res.headers()) {
            return Err(e.or_id(id));
        }
        let mut reader = FrameReader::new(res.into_body());
        let first = reader.next().await?;
        while reader.next().await?.is_some() {}
        if let Some(Err(e)) = reader.trailers().and_then(Status::from_grpc_headers) {
            return Err(e.or_id(id));
        }
        let first = first.ok_or_else(|| Status::internal(id, "no reply message"))?;
        crate::transcode::proto_to_json(&md.output(), &first, id)
    }

    /// A proto method called over gRPC with JSON messages: transcodes both directions.
    async fn grpc_json<B>(&self, svc: GrpcService, md: MethodDescriptor, req: Request<B>) -> Response<Body>
    where
        B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
        B::Error: std::fmt::Display,
    {
        let id = self.inner.id.clone();
        let (mut parts, body) = req.into_parts();
        parts.headers.insert(header::CONTENT_TYPE, http::HeaderValue::from_static(CONTENT_TYPE_GRPC));
        let input = md.input();
        let body = if md.is_client_streaming() {
            let id = id.clone();
            frame::map_body(body, false, move |m| crate::transcode::json_to_proto(&input, &m, &id))
        } else {
            // One message: decode it now so a bad request gets a clean InvalidArgument.
            let mut r = FrameReader::new(body);
            let msg =
                match r.next().await.and_then(|m| crate::transcode::json_to_proto(&input, &m.unwrap_or_default(), &id))
                {
                    Ok(m) => m,
                    Err(e) => return self.error(Mode::GrpcJson, &e),
                };
            Body::new(Full::new(frame::encode(&msg)))
        };
        let res = svc.oneshot(Request::from_parts(parts, body)).await.unwrap_or_else(|e| match e {});
        let (mut parts, body) = res.into_parts();
        parts.headers.insert(header::CONTENT_TYPE, http::HeaderValue::from_static(CONTENT_TYPE_GRPC_JSON));
        let output = md.output();
        let body = frame::map_body(body, true, move |m| crate::transcode::proto_to_json(&output, &m, &id));
        Response::from_parts(parts, body)
    }
}

/// `/{service}/{Handler.Method}` → `/{service}.{Handler}/{Method}`.
fn http_to_grpc_path(path: &str) -> Option<String> {
    let (service, endpoint) = path.strip_prefix('/')?.split_once('/')?;
    if service.is_empty() || endpoint.contains('/') {
        return None;
    }
    grpc_path(service, endpoint)
}

/// A 200 JSON response.
pub fn json_response(body: Bytes) -> Response<Body> {
    let mut res = Response::new(Body::new(Full::new(body)));
    res.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static(CONTENT_TYPE_JSON));
    res
}

/// An error response with the JSON error body and the mapped HTTP status.
pub fn json_error(st: &Status) -> Response<Body> {
    let mut res = Response::new(Body::new(Full::new(Bytes::from(st.to_json()))));
    *res.status_mut() = http::StatusCode::from_u16(st.http_status()).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    res.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static(CONTENT_TYPE_JSON));
    if st.http_status() == 429 {
        // "… retry in N s" (or "try again in N s") in the detail sets Retry-After;
        // otherwise a minute.
        let detail = st.detail();
        let secs = ["retry in ", "try again in "]
            .iter()
            .find_map(|p| detail.split(p).nth(1))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(60);
        res.headers_mut().insert(header::RETRY_AFTER, http::HeaderValue::from(secs));
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(grpc_path("helloworld", "Greeter.Hello").as_deref(), Some("/helloworld.Greeter/Hello"));
        assert_eq!(grpc_path("v1.foo", "Foo.Bar").as_deref(), Some("/v1.foo.Foo/Bar"));
        assert_eq!(grpc_path("x", "NoDot"), None);
        assert_eq!(grpc_path("x", "A.B.C"), None);
        assert_eq!(split_grpc_path("/helloworld.Greeter/Hello"), Some(("helloworld", "Greeter.Hello".to_string())));
        assert_eq!(split_grpc_path("/v1.foo.Foo/Bar"), Some(("v1.foo", "Foo.Bar".to_string())));
        assert_eq!(split_grpc_path("/nodot/Bar"), None);
        assert_eq!(http_to_grpc_path("/helloworld/Greeter.Hello").as_deref(), Some("/helloworld.Greeter/Hello"));
        assert_eq!(http_to_grpc_path("/helloworld/Greeter.Hello/x"), None);
    }

    #[test]
    fn retry_after_from_the_detail() {
        let retry_after = |detail: &str| {
            let st = Status::new(Code::ResourceExhausted, "auth", detail);
            json_error(&st).headers().get(header::RETRY_AFTER).and_then(|v| v.to_str().ok()).map(str::to_string)
        };
        assert_eq!(retry_after("too many attempts, try again in 42 s").as_deref(), Some("42"));
        assert_eq!(retry_after("busy; retry in 7 s").as_deref(), Some("7"));
        assert_eq!(retry_after("full").as_deref(), Some("60"));
    }
}
