//! The client: call any service by name and endpoint.
//!
//! Nodes are found through the registry (cached, invalidated by a registry watch) and
//! chosen round robin; transport failures are retried on another node with exponential
//! backoff; every call has a deadline (default 5 s). A client can also send everything
//! through a server's proxy (as the CLI does).

use crate::frame::{self, FrameReader};
use crate::layer::{AuthLayer, Authorize, DeadlineLayer, TraceLayer};
use crate::router::grpc_path;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use http::{Request, header};
use http_body_util::{Full, StreamBody};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use micro_core::metadata::{CONTENT_TYPE_GRPC, CONTENT_TYPE_GRPC_JSON};
use micro_core::registry::{Node, Registry, Service};
use micro_core::{BoxStream, Code, Status};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tonic::body::Body;
use tower::ServiceExt;
use tower::util::BoxCloneSyncService;

/// The default deadline of a call.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
const CACHE_TTL: Duration = Duration::from_secs(30);
const CACHE_TTL_UNWATCHED: Duration = Duration::from_secs(1);
const NODE_PENALTY: Duration = Duration::from_secs(5);

/// Where a call goes, as the client's auth hook sees it (a request extension): the
/// server's proxy, or a node of `service` found in the registry.
#[derive(Clone, Debug)]
pub enum Target {
    /// The server's proxy (or a client that sends everything there).
    Proxy,
    /// A node of a service in a namespace.
    Node {
        /// The service.
        service: String,
        /// The namespace.
        namespace: String,
    },
}

/// Options of one call.
#[derive(Clone, Debug, Default)]
pub struct CallOptions {
    /// Deadline (default: the client's).
    pub timeout: Option<Duration>,
    /// Extra metadata.
    pub metadata: Vec<(String, String)>,
    /// Namespace (default: the client's).
    pub namespace: Option<String>,
}

/// A client of Micro services. Cheap to clone; clones share connections and caches.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
    stack: Stack,
    transport: Transport,
    auth: Option<Arc<dyn Authorize>>,
    namespace: String,
    timeout: Duration,
    retries: u32,
}

struct Inner {
    route: Route,
    cache: Mutex<HashMap<(String, String), Arc<Entry>>>,
    failed: Mutex<HashMap<String, Instant>>,
    watching: Mutex<HashMap<String, Arc<AtomicBool>>>,
}

enum Route {
    Registry(Arc<dyn Registry>),
    Proxy(String),
}

struct Entry {
    services: Arc<Vec<Service>>,
    /// The nodes serving gRPC.
    nodes: Vec<Node>,
    /// The round-robin position.
    next: AtomicUsize,
    fetched: Instant,
}

/// The connector of every outgoing call: TCP, with TLS for `https://` addresses.
type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

fn http_client(
    tls: rustls::ClientConfig,
    server_name: Option<rustls::pki_types::ServerName<'static>>,
) -> HttpClient<Connector, Body> {
    let mut conn = HttpConnector::new();
    conn.set_nodelay(true);
    conn.set_connect_timeout(Some(Duration::from_secs(2)));
    conn.enforce_http(false);
    let mut builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http();
    if let Some(name) = server_name {
        builder = builder.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name));
    }
    let https = builder.enable_http2().wrap_connector(conn);
    HttpClient::builder(TokioExecutor::new()).http2_only(true).build(https)
}

/// A service of this process that calls can reach without a network hop (a server's
/// proxy, for its gateway and dashboard): errors are answered in the response.
pub type LocalService = BoxCloneSyncService<Request<Body>, http::Response<Body>, Infallible>;

/// Where calls leave the process: over HTTP/2 to the address in their URI, or, for an
/// address this process serves itself ([`Transport::local`]), straight into that
/// service. Every call passes the client's layers first either way. Cheap to clone;
/// clones share connections.
#[derive(Clone)]
pub struct Transport {
    http: HttpClient<Connector, Body>,
    local: Arc<HashMap<String, LocalService>>,
}

impl Default for Transport {
    fn default() -> Transport {
        Transport::new()
    }
}

impl Transport {
    /// A transport that sends every call over the network; `https://` addresses over TLS,
    /// trusting the public web roots and the CAs of `MICRO_CA` ([`crate::tls`]).
    pub fn new() -> Transport {
        let extra = crate::tls::extra_roots_from_env().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "{} is unusable; trusting the public roots only", crate::tls::CA_ENV);
            Vec::new()
        });
        Transport::trusting(&extra).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "the extra CAs are unusable; trusting the public roots only");
            Transport::trusting(&[]).expect("ring supports the default protocol versions")
        })
    }

    /// A transport trusting the public web roots and the CAs `extra`.
    pub fn trusting(extra: &[rustls::pki_types::CertificateDer<'static>]) -> Result<Transport, Status> {
        Ok(Transport::with_tls(crate::tls::client_config(extra)?))
    }

    fn with_tls(tls: rustls::ClientConfig) -> Transport {
        Transport { http: http_client(tls, None), local: Arc::default() }
    }

    /// A transport whose `https://` connections use `tls` (a cluster's node-to-node
    /// config, say) and, with `server_name`, ask for (SNI) and check that name whatever
    /// host the address names.
    pub fn with_client_config(tls: rustls::ClientConfig, server_name: Option<&str>) -> Result<Transport, Status> {
        let name = match server_name {
            Some(n) => Some(
                rustls::pki_types::ServerName::try_from(n.to_string())
                    .map_err(|e| Status::bad_request("tls", format!("bad server name {n:?}: {e}")))?,
            ),
            None => None,
        };
        Ok(Transport { http: http_client(tls, name), local: Arc::default() })
    }

    /// Sends the calls for `address` (`host:port`) to `service`, in this process.
    pub fn local(mut self, address: impl Into<String>, service: LocalService) -> Transport {
        Arc::make_mut(&mut self.local).insert(address.into(), service);
        self
    }

    /// Sends `req` as it is, to the node its URI names (for proxies that pass requests
    /// on); an unreachable node is an `Unavailable` status.
    pub async fn request(&self, req: Request<Body>) -> Result<http::Response<Body>, Status> {
        self.send(req).await.map_err(|e| match e {
            CallError::Transport(s) | CallError::Refused(s) => s,
        })
    }

    async fn send(&self, req: Request<Body>) -> Result<http::Response<Body>, CallError> {
        let node = req.uri().authority().map(|a| a.to_string()).unwrap_or_default();
        if let Some(local) = self.local.get(&node) {
            return local.clone().oneshot(req).await.map_err(|e| match e {});
        }
        match self.http.request(req).await {
            Ok(res) => Ok(res.map(Body::new)),
            Err(e) => {
                let mut msg = e.to_string();
                let mut src = std::error::Error::source(&e);
                while let Some(s) = src {
                    msg = format!("{msg}: {s}");
                    src = s.source();
                }
                Err(CallError::Transport(Status::unavailable("micro", format!("cannot reach {node}: {msg}"))))
            }
        }
    }
}

/// Why a call got no answer from the service.
pub(crate) enum CallError {
    /// The node could not be reached: safe to try another node.
    Transport(Status),
    /// The call was refused before it was sent (bad metadata, auth hook, deadline).
    Refused(Status),
}

impl crate::layer::Reject for Result<http::Response<Body>, CallError> {
    fn reject(status: Status, _content_type: &str) -> Self {
        Err(CallError::Refused(status))
    }
}

/// The transport behind the shared layers: what every outgoing call goes through.
type Stack = BoxCloneSyncService<Request<Body>, http::Response<Body>, CallError>;

fn stack(transport: Transport, auth: Option<Arc<dyn Authorize>>) -> Stack {
    let transport = tower::service_fn(move |req: Request<Body>| {
        let t = transport.clone();
        async move { t.send(req).await }
    });
    let stack = tower::ServiceBuilder::new()
        .layer(TraceLayer::new("client"))
        .layer(DeadlineLayer::new("client"))
        .option_layer(auth.map(AuthLayer::new))
        .service(transport);
    BoxCloneSyncService::new(stack)
}

/// A gRPC channel to one address (a server's proxy) for generated clients (tonic's),
/// whose calls go through the same layers and transport as [`Client`]'s: trace context,
/// deadlines, and the tokens of a [`crate::data::TokenSource`] ([`crate::auth::Bearer`]).
/// Cheap to clone.
#[derive(Clone)]
pub struct Channel {
    stack: Stack,
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
}

impl Channel {
    /// A channel to `address` (`host:port`) over the network, sending the tokens of `source`.
    pub fn new(address: &str, source: Option<Arc<dyn crate::data::TokenSource>>) -> Result<Channel, Status> {
        Channel::on(&Transport::new(), address, source)
    }

    /// A channel to `address` on `transport` (which may serve it in-process).
    pub fn on(
        transport: &Transport,
        address: &str,
        source: Option<Arc<dyn crate::data::TokenSource>>,
    ) -> Result<Channel, Status> {
        let bad = || {
            Status::bad_request("micro", format!("bad server address {address:?}: use host:port or https://host:port"))
        };
        let (scheme, rest) = match address.split_once("://") {
            Some(("https", rest)) => (http::uri::Scheme::HTTPS, rest),
            Some(("http", rest)) => (http::uri::Scheme::HTTP, rest),
            Some(_) => return Err(bad()),
            None => (http::uri::Scheme::HTTP, address),
        };
        let authority = rest.parse::<http::uri::Authority>().ok().filter(|a| a.as_str() == rest).ok_or_else(bad)?;
        Ok(Channel::to(transport, scheme, authority, source))
    }

    /// A channel to [`crate::DEFAULT_SERVER`].
    pub(crate) fn default_server(transport: &Transport, source: Option<Arc<dyn crate::data::TokenSource>>) -> Channel {
        let authority = http::uri::Authority::from_static(crate::DEFAULT_SERVER);
        Channel::to(transport, http::uri::Scheme::HTTP, authority, source)
    }

    fn to(
        transport: &Transport,
        scheme: http::uri::Scheme,
        authority: http::uri::Authority,
        source: Option<Arc<dyn crate::data::TokenSource>>,
    ) -> Channel {
        let auth = source.map(|s| Arc::new(crate::auth::Bearer(s)) as Arc<dyn Authorize>);
        Channel { stack: stack(transport.clone(), auth), scheme, authority }
    }
}

impl tower::Service<Request<Body>> for Channel {
    type Response = http::Response<Body>;
    type Error = tower::BoxError;
    type Future = futures::future::BoxFuture<'static, Result<http::Response<Body>, tower::BoxError>>;

    fn poll_ready(&mut self, _cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let stack = self.stack.clone();
        let mut uri = std::mem::take(req.uri_mut()).into_parts();
        uri.scheme = Some(self.scheme.clone());
        uri.authority = Some(self.authority.clone());
        if uri.path_and_query.is_none() {
            uri.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
        }
        Box::pin(async move {
            *req.uri_mut() = http::Uri::from_parts(uri)?;
            req.extensions_mut().insert(Target::Proxy);
            match stack.oneshot(req).await {
                Ok(res) => Ok(res),
                // A refusal is the call's answer, in gRPC, as the server would give it.
                Err(CallError::Refused(st)) => Ok(frame::error_response(&st, CONTENT_TYPE_GRPC)),
                Err(CallError::Transport(st)) => Err(Box::new(crate::status::to_tonic(&st)) as tower::BoxError),
            }
        })
    }
}

impl Client {
    /// A client that finds nodes through `registry`.
    pub fn new(registry: Arc<dyn Registry>) -> Client {
        Client::with_route(Route::Registry(registry))
    }

    /// A client that sends every call through the proxy at `address` (`host:port`).
    pub fn via_proxy(address: impl Into<String>) -> Client {
        Client::with_route(Route::Proxy(address.into()))
    }

    fn with_route(route: Route) -> Client {
        let transport = Transport::new();
        Client {
            stack: stack(transport.clone(), None),
            transport,
            auth: None,
            inner: Arc::new(Inner {
                route,
                cache: Mutex::new(HashMap::new()),
                failed: Mutex::new(HashMap::new()),
                watching: Mutex::new(HashMap::new()),
            }),
            namespace: micro_core::namespace::DEFAULT.to_string(),
            timeout: DEFAULT_TIMEOUT,
            retries: 3,
        }
    }

    /// The namespace calls act in (default `micro`).
    pub fn namespace(mut self, ns: impl Into<String>) -> Client {
        self.namespace = ns.into();
        self
    }

    /// Runs `hook` on every outgoing call, for example to attach credentials (see
    /// [`crate::layer`]).
    pub fn auth(mut self, hook: Arc<dyn Authorize>) -> Client {
        self.auth = Some(hook);
        self.stack = stack(self.transport.clone(), self.auth.clone());
        self
    }

    /// Sends calls on `transport` (which may serve some addresses in-process).
    pub fn transport(mut self, transport: Transport) -> Client {
        self.transport = transport;
        self.stack = stack(self.transport.clone(), self.auth.clone());
        self
    }

    /// The default deadline of calls.
    pub fn timeout(mut self, t: Duration) -> Client {
        self.timeout = t;
        self
    }

    /// How many times a transport failure is retried on another node (default 3).
    pub fn retries(mut self, n: u32) -> Client {
        self.retries = n;
        self
    }

    /// Calls `endpoint` of `service` with a JSON value; returns the JSON reply.
    pub async fn call_json(
        &self,
        service: &str,
        endpoint: &str,
        req: &serde_json::Value,
    ) -> Result<serde_json::Value, Status> {
        let body = Bytes::from(serde_json::to_vec(req).map_err(|e| Status::bad_request(service, e.to_string()))?);
        let out = self.call_raw(service, endpoint, CONTENT_TYPE_GRPC_JSON, body, &CallOptions::default()).await?;
        serde_json::from_slice(&out).map_err(|e| Status::internal(service, format!("reply is not JSON: {e}")))
    }

    /// Calls with serde types (JSON codec).
    pub async fn call<Req: Serialize, Res: DeserializeOwned>(
        &self,
        service: &str,
        endpoint: &str,
        req: &Req,
    ) -> Result<Res, Status> {
        let body = Bytes::from(serde_json::to_vec(req).map_err(|e| Status::bad_request(service, e.to_string()))?);
        let out = self.call_raw(service, endpoint, CONTENT_TYPE_GRPC_JSON, body, &CallOptions::default()).await?;
        serde_json::from_slice(&out).map_err(|e| Status::internal(service, format!("unexpected reply: {e}")))
    }

    /// Calls with prost types (protobuf codec).
    pub async fn call_proto<Req: prost::Message, Res: prost::Message + Default>(
        &self,
        service: &str,
        endpoint: &str,
        req: &Req,
    ) -> Result<Res, Status> {
        let out = self
            .call_raw(service, endpoint, CONTENT_TYPE_GRPC, Bytes::from(req.encode_to_vec()), &CallOptions::default())
            .await?;
        Res::decode(out).map_err(|e| Status::internal(service, format!("undecodable reply: {e}")))
    }

    /// A unary call with an encoded message in `content_type`'s codec.
    pub async fn call_raw(
        &self,
        service: &str,
        endpoint: &str,
        content_type: &str,
        msg: Bytes,
        opts: &CallOptions,
    ) -> Result<Bytes, Status> {
        let path = grpc_path(service, endpoint).ok_or_else(|| {
            Status::bad_request(service, format!("invalid endpoint {endpoint:?}: use Handler.Method"))
        })?;
        let timeout = opts.timeout.unwrap_or(self.timeout);
        let attempt = async {
            let mut last = None;
            for attempt in 0..=self.retries {
                if attempt > 0 {
                    let backoff = Duration::from_millis(10u64 << (attempt - 1).min(5));
                    tokio::time::sleep(backoff).await;
                }
                let node = match self.pick(service, opts).await {
                    Ok(n) => n,
                    Err(e) if e.code() == Code::NotFound && last.is_some() => return Err(last.unwrap_or(e)),
                    Err(e) => return Err(e),
                };
                let body = Body::new(Full::new(frame::encode(&msg)));
                match self.send(&node, &path, content_type, body, timeout, opts).await {
                    Ok(res) => return read_unary(service, res).await,
                    Err(CallError::Refused(e)) => return Err(e.or_id(service)),
                    Err(CallError::Transport(e)) => {
                        self.mark_failed(&node);
                        tracing::debug!(service, node = %node, error = %e, "transport failure; retrying");
                        last = Some(e);
                    }
                }
            }
            Err(last.unwrap_or_else(|| Status::unavailable(service, "no attempt made")))
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(r) => r,
            Err(_) => Err(Status::deadline_exceeded(
                service,
                format!("call to {service} {endpoint} timed out after {timeout:?}"),
            )),
        }
    }

    /// A streaming call with the JSON codec: sends `requests` and returns the replies.
    /// Serves server streaming (one request), client streaming and bidirectional.
    pub async fn stream_json<S>(
        &self,
        service: &str,
        endpoint: &str,
        requests: S,
        opts: &CallOptions,
    ) -> Result<BoxStream<Result<Bytes, Status>>, Status>
    where
        S: Stream<Item = Bytes> + Send + 'static,
    {
        let path = grpc_path(service, endpoint).ok_or_else(|| {
            Status::bad_request(service, format!("invalid endpoint {endpoint:?}: use Handler.Method"))
        })?;
        let node = self.pick(service, opts).await?;
        let body =
            Body::new(StreamBody::new(requests.map(|m| Ok::<_, Status>(http_body::Frame::data(frame::encode(&m))))));
        // Streams have no overall deadline unless one is asked for.
        let timeout = opts.timeout.unwrap_or(Duration::ZERO);
        let res = self.send(&node, &path, CONTENT_TYPE_GRPC_JSON, body, timeout, opts).await.map_err(|e| match e {
            CallError::Transport(e) | CallError::Refused(e) => e,
        })?;
        let svc = service.to_string();
        check_headers(&svc, &res)?;
        let s = async_stream::stream! {
            let mut reader = FrameReader::new(res.into_body());
            loop {
                match reader.next().await {
                    Ok(Some(m)) => yield Ok(m),
                    Ok(None) => {
                        if let Some(Err(e)) = reader.trailers().and_then(Status::from_grpc_headers) {
                            yield Err(e.or_id(&svc));
                        }
                        break;
                    }
                    Err(e) => { yield Err(e); break; }
                }
            }
        };
        Ok(s.boxed())
    }

    async fn send(
        &self,
        node: &str,
        path: &str,
        ct: &str,
        body: Body,
        timeout: Duration,
        opts: &CallOptions,
    ) -> Result<http::Response<Body>, CallError> {
        let uri = if node.contains("://") { format!("{node}{path}") } else { format!("http://{node}{path}") };
        let mut req = Request::post(uri)
            .body(body)
            .map_err(|e| CallError::Refused(Status::bad_request("micro", e.to_string())))?;
        let h = req.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_str(ct).unwrap_or(http::HeaderValue::from_static(CONTENT_TYPE_GRPC)),
        );
        h.insert(header::TE, http::HeaderValue::from_static("trailers"));
        let ns = opts.namespace.as_deref().unwrap_or(&self.namespace);
        if let Ok(v) = http::HeaderValue::from_str(ns) {
            h.insert(micro_core::metadata::NAMESPACE, v);
        }
        if !timeout.is_zero()
            && let Ok(v) = http::HeaderValue::from_str(&micro_core::metadata::format_grpc_timeout(timeout))
        {
            h.insert(micro_core::metadata::GRPC_TIMEOUT, v);
        }
        let target = match &self.inner.route {
            Route::Proxy(_) => Target::Proxy,
            Route::Registry(_) => Target::Node {
                service: crate::split_grpc_path(path).map(|(s, _)| s.to_string()).unwrap_or_default(),
                namespace: ns.to_string(),
            },
        };
        req.extensions_mut().insert(target);
        let h = req.headers_mut();
        for (k, v) in &opts.metadata {
            let name = http::HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes())
                .map_err(|_| CallError::Refused(Status::bad_request("micro", format!("invalid metadata key {k:?}"))))?;
            let value = http::HeaderValue::from_str(v).map_err(|_| {
                CallError::Refused(Status::bad_request("micro", format!("invalid metadata value for {k}")))
            })?;
            h.insert(name, value);
        }
        self.stack.clone().oneshot(req).await
    }

    /// The address to send a call to: the proxy, or a node of the service.
    async fn pick(&self, service: &str, opts: &CallOptions) -> Result<String, Status> {
        if let Route::Proxy(addr) = &self.inner.route {
            return Ok(addr.clone());
        }
        let entry = self.entry(service, opts.namespace.as_deref()).await?;
        let nodes = &entry.nodes;
        if nodes.is_empty() {
            return Err(Status::not_found(service, format!("service {service} has no gRPC nodes")));
        }
        let start = entry.next.fetch_add(1, Ordering::Relaxed);
        let mut failed = self.inner.failed.lock().unwrap_or_else(|e| e.into_inner());
        if !failed.is_empty() {
            let now = Instant::now();
            failed.retain(|_, until| *until > now);
        }
        for i in 0..nodes.len() {
            let n = &nodes[(start + i) % nodes.len()];
            if !failed.contains_key(&n.address) {
                return Ok(n.address.clone());
            }
        }
        // Every node failed recently: try one anyway rather than fail without trying.
        Ok(nodes[start % nodes.len()].address.clone())
    }

    /// The registrations of `service` (every version, every node), from the client's
    /// cache: what the registry said last, kept until a registry watch reports a change
    /// to the service (or for a second while no watch is running). `NotFound` when no
    /// node is registered; an error for a client that goes through a proxy.
    pub async fn services(&self, service: &str, namespace: Option<&str>) -> Result<Arc<Vec<Service>>, Status> {
        Ok(self.entry(service, namespace).await?.services.clone())
    }

    /// The cache entry of `service` in `namespace` (default: the client's), fetched from
    /// the registry when missing or stale.
    async fn entry(&self, service: &str, namespace: Option<&str>) -> Result<Arc<Entry>, Status> {
        let Route::Registry(registry) = &self.inner.route else {
            return Err(Status::new(
                Code::FailedPrecondition,
                service,
                "a proxy client has no registry to look services up in",
            ));
        };
        let ns = namespace.unwrap_or(&self.namespace);
        self.ensure_watch(ns, registry);
        let watched = self
            .inner
            .watching
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(ns)
            .is_some_and(|w| w.load(Ordering::Relaxed));
        let ttl = if watched { CACHE_TTL } else { CACHE_TTL_UNWATCHED };
        let key = (ns.to_string(), service.to_string());
        let cached = {
            let cache = self.inner.cache.lock().unwrap_or_else(|e| e.into_inner());
            cache.get(&key).filter(|e| e.fetched.elapsed() < ttl).cloned()
        };
        if let Some(e) = cached {
            return Ok(e);
        }
        let services = registry.get_service(ns, service).await.map_err(|e| {
            if e.code() == Code::NotFound {
                Status::not_found(service, format!("service {service} not found"))
            } else {
                e
            }
        })?;
        let nodes: Vec<Node> = services
            .iter()
            .flat_map(|s| s.nodes.iter())
            .filter(|n| n.metadata.get("protocol").is_none_or(|p| p == "grpc"))
            .cloned()
            .collect();
        let entry =
            Arc::new(Entry { services: Arc::new(services), nodes, next: AtomicUsize::new(0), fetched: Instant::now() });
        self.inner.cache.lock().unwrap_or_else(|e| e.into_inner()).insert(key, entry.clone());
        Ok(entry)
    }

    /// The address of a node of `service` (round robin, skipping recently failed
    /// nodes), or the proxy's address for a proxy client.
    pub async fn resolve(&self, service: &str, namespace: Option<&str>) -> Result<String, Status> {
        let opts = CallOptions { namespace: namespace.map(str::to_string), ..Default::default() };
        self.pick(service, &opts).await
    }

    /// Whether `addr` failed at the transport level lately (and is being avoided).
    pub fn failed_recently(&self, addr: &str) -> bool {
        let failed = self.inner.failed.lock().unwrap_or_else(|e| e.into_inner());
        failed.get(addr).is_some_and(|until| *until > Instant::now())
    }

    /// Reports that `addr` failed at the transport level, so it is avoided for a while.
    pub fn report_failure(&self, addr: &str) {
        self.mark_failed(addr)
    }

    fn mark_failed(&self, addr: &str) {
        if matches!(self.inner.route, Route::Registry(_)) {
            self.inner
                .failed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(addr.to_string(), Instant::now() + NODE_PENALTY);
        }
    }

    /// Starts (once per namespace) a registry watch that drops cache entries on change.
    fn ensure_watch(&self, ns: &str, registry: &Arc<dyn Registry>) {
        let flag = {
            let mut w = self.inner.watching.lock().unwrap_or_else(|e| e.into_inner());
            if w.contains_key(ns) {
                return;
            }
            let flag = Arc::new(AtomicBool::new(false));
            w.insert(ns.to_string(), flag.clone());
            flag
        };
        let weak = Arc::downgrade(&self.inner);
        let registry = registry.clone();
        let ns = ns.to_string();
        tokio::spawn(async move {
            loop {
                match registry.watch(&ns, None).await {
                    Ok(mut events) => {
                        flag.store(true, Ordering::Relaxed);
                        while let Some(e) = events.next().await {
                            let Some(inner) = weak.upgrade() else { return };
                            let mut cache = inner.cache.lock().unwrap_or_else(|e| e.into_inner());
                            match e {
                                Ok(e) => {
                                    cache.remove(&(ns.clone(), e.service.name.clone()));
                                }
                                Err(_) => cache.retain(|k, _| k.0 != ns),
                            }
                        }
                        flag.store(false, Ordering::Relaxed);
                    }
                    Err(e) => tracing::debug!(error = %e, "registry watch failed; retrying"),
                }
                if weak.strong_count() == 0 {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }
}

fn check_headers(service: &str, res: &http::Response<Body>) -> Result<(), Status> {
    if let Some(Err(e)) = Status::from_grpc_headers(res.headers()) {
        return Err(e.or_id(service));
    }
    if res.status() != http::StatusCode::OK {
        let code = Code::from_http(res.status().as_u16());
        return Err(Status::new(code, service, format!("HTTP {} from {service}", res.status())));
    }
    Ok(())
}

async fn read_unary(service: &str, res: http::Response<Body>) -> Result<Bytes, Status> {
    check_headers(service, &res)?;
    let mut reader = FrameReader::new(res.into_body());
    let first = reader.next().await?;
    while reader.next().await?.is_some() {}
    match reader.trailers().and_then(Status::from_grpc_headers) {
        Some(Err(e)) => Err(e.or_id(service)),
        Some(Ok(())) => first.ok_or_else(|| Status::internal(service, "no reply message")),
        None => Err(Status::internal(service, "reply ended without a grpc-status")),
    }
}
