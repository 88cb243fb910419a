//! The service builder: name it, add handlers, run it.

use crate::Client;
use crate::auth::{Bearer, Credentials};
use crate::data::TokenSource;
use crate::data::{BlobHandle, BrokerHandle, ConfigHandle, Data, EventsHandle, StoreHandle, SyncHandle};
use crate::handler::{Context, Handler, ServerStream, Unary};
use crate::layer::Authorize;
use crate::metrics::Metrics;
use crate::registry::{Node, RemoteRegistry};
use crate::router::{GrpcService, Router, RouterBuilder};
use futures::Stream;
use micro_core::registry::Registry;
use micro_core::{Status, namespace};
use schemars::JsonSchema;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::body::Body;
use tonic::server::NamedService;
use tower::ServiceExt;

/// Default lease of a registration; the service refreshes it every third of it.
pub const DEFAULT_TTL: Duration = Duration::from_secs(15);

/// A Micro service under construction.
///
/// ```no_run
/// # async fn demo() -> Result<(), micro::Status> {
/// use micro::{Context, Service, Status};
///
/// #[derive(serde::Deserialize, schemars::JsonSchema)]
/// struct Req { name: String }
/// #[derive(serde::Serialize, schemars::JsonSchema)]
/// struct Rsp { message: String }
///
/// Service::new("greeter")
///     .handle("Greeter.Hello", |_ctx: Context, req: Req| async move {
///         Ok::<_, Status>(Rsp { message: format!("Hello {}", req.name) })
///     })
///     .run()
///     .await
/// # }
/// ```
pub struct Service {
    name: String,
    version: String,
    metadata: BTreeMap<String, String>,
    address: String,
    advertise: Option<String>,
    namespace: String,
    server: Option<String>,
    registry: Option<Arc<dyn Registry>>,
    ttl: Duration,
    grpc: Vec<(String, GrpcService)>,
    descriptors: Vec<Vec<u8>>,
    handlers: Vec<(String, Arc<dyn Handler>)>,
    auth: Option<Arc<dyn Authorize>>,
    data: Option<Data>,
    routes: Vec<(String, String)>,
    credentials: Option<Arc<Credentials>>,
    platform: bool,
    public: Vec<String>,
    open: Vec<String>,
    for_products: Vec<String>,
    streams: u32,
    transport: Option<crate::Transport>,
    tasks: Vec<Task>,
}

/// A background task of a service, started once it is registered.
type Task = Box<dyn FnOnce(Stopping) -> futures::future::BoxFuture<'static, ()> + Send>;

/// How long [`Running::stop`] waits for background tasks to finish their step.
const TASK_GRACE: Duration = Duration::from_secs(5);

/// Tells a background task (see [`Service::background`]) that its service is stopping.
#[derive(Clone, Debug)]
pub struct Stopping(tokio::sync::watch::Receiver<bool>);

impl Stopping {
    /// Whether the service is stopping.
    pub fn is_stopping(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once the service is stopping (at once if it already is).
    pub async fn stopped(&mut self) {
        let _ = self.0.wait_for(|s| *s).await;
    }
}

impl Service {
    /// A service called `name` (also the proto package of its gRPC handlers).
    pub fn new(name: impl Into<String>) -> Service {
        Service {
            name: name.into(),
            version: "latest".into(),
            metadata: BTreeMap::new(),
            address: "127.0.0.1:0".into(),
            advertise: None,
            namespace: namespace::DEFAULT.into(),
            server: None,
            registry: None,
            ttl: DEFAULT_TTL,
            grpc: Vec::new(),
            descriptors: Vec::new(),
            handlers: Vec::new(),
            auth: None,
            data: None,
            routes: Vec::new(),
            // Credentials injected by the runtime (or a deployment) through the environment.
            credentials: match (std::env::var("MICRO_AUTH_ID"), std::env::var("MICRO_AUTH_SECRET")) {
                (Ok(id), Ok(secret)) if !id.is_empty() => Some(Credentials::new(id, secret)),
                _ => None,
            },
            platform: false,
            public: Vec::new(),
            open: Vec::new(),
            for_products: Vec::new(),
            streams: crate::server::MAX_STREAMS,
            transport: None,
            tasks: Vec::new(),
        }
    }

    /// Runs `task` in the background once the service is registered: a worker (an
    /// outbox, a scheduler) that lives as long as the service. On [`Running::stop`] its
    /// [`Stopping`] fires and it has 5 s to finish the step it is in before it is
    /// aborted; a dropped [`Running`] aborts it at once.
    pub fn background<F, Fut>(mut self, task: F) -> Self
    where
        F: FnOnce(Stopping) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.tasks.push(Box::new(move |stopping| Box::pin(task(stopping))));
        self
    }

    /// Makes this a platform service (a product under `services/`): registered in the
    /// `micro` namespace and serving every namespace. A call acts in the namespace it
    /// asks for (else its account's), which the service's authorizer verifies
    /// ([`crate::auth::Scope::Platform`]); endpoints are for that namespace's accounts
    /// unless a rule naming the service says otherwise. Handlers read the namespace
    /// from [`crate::Context::caller`]. The server must know the name as a product to
    /// route other namespaces' calls to it.
    pub fn platform(mut self) -> Self {
        self.platform = true;
        self.namespace = namespace::DEFAULT.into();
        self
    }

    /// Opens `endpoint` (`Handler.Method`) of a platform service to anyone, without an
    /// account: a signup form's endpoints. The handler sees no caller, or the one whose
    /// token came along. (A user's service opens endpoints with its namespace's rules.)
    pub fn public(mut self, endpoint: &str) -> Self {
        self.public.push(endpoint.to_string());
        self
    }

    /// Opens `endpoint` of a platform service to anyone, like [`Service::public`], but a
    /// token that comes along is verified and must be of the namespace the call acts in:
    /// the handler sees that caller, else an anonymous one in the namespace asked for.
    /// For products whose own rules decide who may do what (the database's collections).
    pub fn open(mut self, endpoint: &str) -> Self {
        self.open.push(endpoint.to_string());
        self
    }

    /// Lets the other products call `endpoint` of a platform service for any namespace
    /// (besides the namespace's members): for a product that serves the others (email
    /// sends the users product's mails). The handler sees the product's account, acting
    /// in the namespace asked for, with no more rights there than the handler gives it.
    pub fn for_products(mut self, endpoint: &str) -> Self {
        self.for_products.push(endpoint.to_string());
        self
    }

    /// At most `n` streams open at once on one HTTP/2 connection to the service (default
    /// [`crate::server::MAX_STREAMS`]): for a service whose callers hold many long streams
    /// through one connection (the gateway's realtime subscribers).
    pub fn max_streams(mut self, n: u32) -> Self {
        self.streams = n.max(1);
        self
    }

    /// A client that reaches the other services through the service's server, sending
    /// the service's token, in its namespace: for calling services from handlers. With
    /// `MICRO_CALLS=proxy` (set by the runtime where tenants' code may connect to the
    /// server's proxy only) every call goes through the proxy; otherwise straight to a
    /// node the registry names.
    pub fn client(&self) -> Result<Client, Status> {
        let client = if calls_via_proxy() {
            Client::via_proxy(self.effective_server()).transport(self.transport.clone().unwrap_or_default())
        } else {
            Client::new(Arc::new(RemoteRegistry::on(self.channel()?)))
        };
        let client = client.namespace(self.effective_namespace());
        Ok(match &self.credentials {
            Some(c) => client.auth(Arc::new(Bearer(c.clone()))),
            None => client,
        })
    }

    /// A channel to the service's server that carries the service's token: for the
    /// server's typed gRPC clients (`micro::proto::auth::auth_client::AuthClient::new(ch)`).
    pub fn channel(&self) -> Result<crate::Channel, Status> {
        let source = self.credentials.clone().map(|c| c as Arc<dyn TokenSource>);
        crate::Channel::on(&self.transport.clone().unwrap_or_default(), &self.effective_server(), source)
    }

    /// Sets the version (default `latest`).
    pub fn version(mut self, v: impl Into<String>) -> Self {
        self.version = v.into();
        self
    }

    /// Adds a metadata entry to the registration.
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// The address to listen on (default `127.0.0.1:0`, a free port).
    pub fn address(mut self, addr: impl Into<String>) -> Self {
        self.address = addr.into();
        self
    }

    /// The address registered for callers, when it differs from the bound one.
    pub fn advertise(mut self, addr: impl Into<String>) -> Self {
        self.advertise = Some(addr.into());
        self
    }

    /// The namespace to register in (default `micro`).
    pub fn namespace(mut self, ns: impl Into<String>) -> Self {
        self.namespace = ns.into();
        self
    }

    /// The `micro server` to register with (`host:port` of its proxy, or
    /// `https://host:port` when it speaks TLS).
    pub fn server(mut self, addr: impl Into<String>) -> Self {
        self.server = Some(addr.into());
        self
    }

    /// How the service reaches its server (default: over the network, trusting the CAs
    /// of `MICRO_CA`); a server hosting a service in its own process hands it a transport
    /// that reaches its proxy in-process.
    pub fn transport(mut self, transport: crate::Transport) -> Self {
        self.transport = Some(transport);
        self
    }

    /// The transport to the server, made on first use.
    fn net(&mut self) -> crate::Transport {
        self.transport.get_or_insert_with(crate::Transport::new).clone()
    }

    /// Registers in this registry instead of a server's.
    pub fn registry(mut self, r: Arc<dyn Registry>) -> Self {
        self.registry = Some(r);
        self
    }

    /// Runs `hook` on every incoming call before its handler (see [`crate::layer`]).
    pub fn auth(mut self, hook: Arc<dyn Authorize>) -> Self {
        self.auth = Some(hook);
        self
    }

    /// The service's own account (default: `MICRO_AUTH_ID` and `MICRO_AUTH_SECRET`): it
    /// logs in at start, and its token goes with every call the service makes — its
    /// client, and the store, events, config, sync, blob and broker handles.
    pub fn credentials(mut self, id: &str, secret: &str) -> Self {
        self.credentials = Some(Credentials::new(id, secret));
        self
    }

    /// Declares an HTTP route for an endpoint at the gateway, like
    /// `.route("GET /notes/{id}", "Notes.Get")`: `{name}` segments become request fields.
    /// The gateway's path rules still apply; a declared route answers the paths they do
    /// not resolve. Checked at start.
    pub fn route(mut self, route: &str, endpoint: &str) -> Self {
        self.routes.push((route.to_string(), endpoint.to_string()));
        self
    }

    /// Uses these data backends instead of the server's (for example embedded ones in
    /// tests).
    pub fn data(mut self, data: Data) -> Self {
        self.data = Some(data);
        self
    }

    /// The namespace this service acts in: as set, else `MICRO_NAMESPACE`, else `micro`.
    fn effective_namespace(&self) -> String {
        if self.namespace != namespace::DEFAULT || self.platform {
            return self.namespace.clone();
        }
        std::env::var("MICRO_NAMESPACE").ok().filter(|n| !n.is_empty()).unwrap_or_else(|| self.namespace.clone())
    }

    /// The data backends: as set, else the server's (`.server()`, else `MICRO_SERVER`,
    /// else the default address).
    fn backends(&self) -> Data {
        if let Some(d) = &self.data {
            return d.clone();
        }
        let source = self.credentials.clone().map(|c| c as Arc<dyn TokenSource>);
        let transport = self.transport.clone().unwrap_or_default();
        Data::remote_on(&transport, &self.effective_server(), &self.effective_namespace(), source)
    }

    /// The server: as set, else `MICRO_SERVER`, else the default address.
    fn effective_server(&self) -> String {
        self.server
            .clone()
            .or_else(|| std::env::var("MICRO_SERVER").ok().filter(|s| !s.is_empty()))
            .unwrap_or_else(|| crate::DEFAULT_SERVER.to_string())
    }

    /// The store, scoped to this service's table in its namespace.
    pub fn store(&self) -> StoreHandle {
        let table = micro_core::store::Table::new(self.effective_namespace(), &self.name);
        StoreHandle::new(self.backends().store, table)
    }

    /// Durable events in this service's namespace.
    pub fn events(&self) -> EventsHandle {
        EventsHandle::new(self.backends().events, &self.effective_namespace())
    }

    /// The ephemeral broker in this service's namespace.
    pub fn broker(&self) -> BrokerHandle {
        BrokerHandle::new(self.backends().broker, &self.effective_namespace())
    }

    /// Config of this service's namespace, with the file named by `MICRO_CONFIG_FILE`
    /// and `MICRO_CONFIG_*` variables layered over the server's values.
    pub fn config(&self) -> ConfigHandle {
        ConfigHandle::new(self.backends().config, &self.effective_namespace()).layered_from_env()
    }

    /// Locks and leader election in this service's namespace.
    pub fn sync(&self) -> SyncHandle {
        SyncHandle::new(self.backends().sync, &self.effective_namespace())
    }

    /// Objects in this service's namespace.
    pub fn blob(&self) -> BlobHandle {
        BlobHandle::new(self.backends().blob, &self.effective_namespace())
    }

    /// The registration lease (default 15 s).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Fills what was not set from environment-style variables: `MICRO_SERVER`,
    /// `MICRO_NAMESPACE`, `MICRO_SERVICE_ADDRESS`, `MICRO_SERVICE_ADVERTISE`,
    /// `MICRO_REGISTER_TTL` (seconds).
    pub fn env(mut self, get: impl Fn(&str) -> Option<String>) -> Self {
        if self.server.is_none() && self.registry.is_none() {
            self.server = get("MICRO_SERVER");
        }
        if let Some(ns) = get("MICRO_NAMESPACE") {
            self.namespace = ns;
        }
        if let Some(a) = get("MICRO_SERVICE_ADDRESS") {
            self.address = a;
        }
        if let Some(a) = get("MICRO_SERVICE_ADVERTISE") {
            self.advertise = Some(a);
        }
        if let Some(t) = get("MICRO_REGISTER_TTL").and_then(|t| t.parse::<f64>().ok()).filter(|t| *t > 0.0) {
            self.ttl = Duration::from_secs_f64(t);
        }
        self
    }

    /// Adds a gRPC service generated by tonic from a proto (`GreeterServer::new(..)`).
    /// Its descriptors (see [`Service::descriptors`]) make it callable with JSON too.
    pub fn grpc<S>(mut self, svc: S) -> Self
    where
        S: NamedService
            + tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.grpc.push((S::NAME.to_string(), GrpcService::new(svc)));
        self
    }

    /// Adds an encoded `FileDescriptorSet` of the service's protos
    /// (`micro::include_descriptor!()`), used for reflection, JSON and schemas.
    pub fn descriptors(mut self, encoded: &[u8]) -> Self {
        self.descriptors.push(encoded.to_vec());
        self
    }

    /// Adds a unary JSON endpoint (`Handler.Method`) from plain serde types.
    pub fn handle<Req, Res, F, Fut>(mut self, endpoint: &str, f: F) -> Self
    where
        Req: DeserializeOwned + JsonSchema + Send + 'static,
        Res: Serialize + JsonSchema + Send + 'static,
        F: Fn(Context, Req) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Res, Status>> + Send + 'static,
    {
        let h = Unary { id: self.name.clone(), f, _types: PhantomData };
        self.handlers.push((endpoint.to_string(), Arc::new(h)));
        self
    }

    /// Adds a server-streaming JSON endpoint from plain serde types.
    pub fn stream<Req, Res, F, S>(mut self, endpoint: &str, f: F) -> Self
    where
        Req: DeserializeOwned + JsonSchema + Send + 'static,
        Res: Serialize + JsonSchema + Send + 'static,
        F: Fn(Context, Req) -> S + Send + Sync + 'static,
        S: Stream<Item = Result<Res, Status>> + Send + 'static,
    {
        let h = ServerStream { id: self.name.clone(), f, _types: PhantomData };
        self.handlers.push((endpoint.to_string(), Arc::new(h)));
        self
    }

    /// Builds the router: the handlers, `Debug.*`, gRPC health and reflection.
    fn router(&mut self, metrics: Metrics) -> Result<Router, Status> {
        let mut b = RouterBuilder::new(&self.name).metrics(metrics.clone());
        for d in &self.descriptors {
            b = b.descriptors(d)?;
        }
        for (name, _) in &self.grpc {
            if !name.starts_with(&format!("{}.", self.name)) {
                tracing::warn!(service = %self.name, grpc = %name, "proto package differs from the service name; stock gRPC clients will not reach it through the proxy");
            }
        }
        let names: Vec<String> = self.grpc.iter().map(|(n, _)| n.clone()).collect();
        b = b.standard_services(&self.descriptors, &names)?;
        for (name, svc) in std::mem::take(&mut self.grpc) {
            b = b.grpc(&name, svc);
        }
        for (endpoint, h) in std::mem::take(&mut self.handlers) {
            b = b.handler(&self.name, &endpoint, h);
        }
        b = b.debug(&self.name, metrics);
        Ok(b.build())
    }

    /// Logs in with the service's account (when it has one) and keeps its token fresh, so
    /// its data handles act as it: [`Service::start`] does this first; a program that only
    /// uses the handles (locks, events) without serving calls it itself.
    pub async fn login(&self) -> Result<(), Status> {
        if let Some(creds) = &self.credentials {
            let transport = self.transport.clone().unwrap_or_default();
            creds.login_on(&transport, &self.effective_server(), &self.effective_namespace()).await.map_err(|e| {
                Status::new(e.code(), &self.name, format!("logging in as {}: {}", creds.id(), e.detail()))
            })?;
        }
        Ok(())
    }

    /// Binds, registers and starts serving; returns a handle to stop it.
    pub async fn start(mut self) -> Result<Running, Status> {
        let name = self.name.clone();
        micro_core::registry::validate_name(&name)?;
        namespace::validate(&self.namespace)?;
        let listener = TcpListener::bind(&self.address)
            .await
            .map_err(|e| Status::unavailable(&name, format!("cannot listen on {}: {e}", self.address)))?;
        let addr = listener.local_addr().map_err(|e| Status::internal(&name, e.to_string()))?;
        let net = self.net();
        self.login().await?;
        let metrics = Metrics::default();
        let router = self.router(metrics)?;
        // An in-process registry and no server: nothing to read keys or rules from.
        let local_only = self.registry.is_some() && self.server.is_none();
        let registry: Arc<dyn Registry> = match (self.registry.take(), &self.server) {
            (Some(r), _) => r,
            (None, server) => {
                let source = self.credentials.clone().map(|c| c as Arc<dyn TokenSource>);
                let channel = crate::Channel::on(&net, server.as_deref().unwrap_or(crate::DEFAULT_SERVER), source)
                    .map_err(|e| Status::bad_request("registry", e.detail().to_string()))?;
                Arc::new(RemoteRegistry::on(channel))
            }
        };
        let mut endpoints = router.endpoints(&name);
        for (route, endpoint) in &self.routes {
            check_route(route).map_err(|d| Status::bad_request(&name, format!("route {route:?}: {d}")))?;
            let Some(ep) = endpoints.iter_mut().find(|e| e.name == *endpoint) else {
                return Err(Status::bad_request(
                    &name,
                    format!("route {route:?} names an unknown endpoint {endpoint}"),
                ));
            };
            let joined = match ep.metadata.get("http") {
                Some(existing) => format!("{existing};{route}"),
                None => route.clone(),
            };
            ep.metadata.insert("http".into(), joined);
        }
        let advertise = self.advertise.clone().unwrap_or_else(|| advertise_address(addr));
        let record = micro_core::registry::Service {
            name: name.clone(),
            version: self.version.clone(),
            metadata: self.metadata.clone(),
            endpoints,
            nodes: vec![Node {
                id: format!("{name}-{}", uuid::Uuid::new_v4()),
                address: advertise,
                metadata: node_metadata(),
            }],
        };
        registry.register(&self.namespace, &record, self.ttl).await.map_err(|e| {
            let server = self.server.as_deref().unwrap_or(crate::DEFAULT_SERVER);
            let hint = if e.code() == micro_core::Code::Unauthenticated && self.credentials.is_none() {
                "; registering needs an account of the namespace: set MICRO_AUTH_ID and MICRO_AUTH_SECRET"
            } else {
                ""
            };
            Status::new(
                e.code(),
                &name,
                format!("cannot register with the registry (server {server}): {}{hint}", e.detail()),
            )
        })?;
        tracing::info!(service = %name, address = %addr, node = %record.nodes[0].id, "registered");
        let heartbeat = tokio::spawn(heartbeat(registry.clone(), self.namespace.clone(), record.clone(), self.ttl));
        let (tx, rx) = oneshot::channel::<()>();
        // Without a hook of its own, a service that talks to a server enforces the
        // namespace's rules and verifies tokens with the server's keys.
        let hook = match &self.auth {
            Some(h) => Some(h.clone()),
            None if local_only => None,
            None => {
                let authorizer = crate::auth::remote::service_authorizer(
                    &name,
                    &self.effective_namespace(),
                    self.platform.then(|| crate::auth::authorizer::PlatformPolicy {
                        public: self.public.clone(),
                        open: self.open.clone(),
                        products: self.for_products.clone(),
                    }),
                    &self.effective_server(),
                    self.credentials.clone(),
                    &net,
                )
                .await;
                Some(authorizer as Arc<dyn Authorize>)
            }
        };
        let stack = router.layered(hook);
        let scraped = router.metrics().clone();
        let serving = tokio::spawn(crate::server::serve_streams(
            listener,
            None,
            move |req: http::Request<hyper::body::Incoming>| {
                let svc = stack.clone();
                // Prometheus scrapes the node's own counts (`GET /metrics`, as on the
                // server's gateway); everything else is a call.
                let metrics =
                    (req.method() == http::Method::GET && req.uri().path() == "/metrics").then(|| scraped.clone());
                async move {
                    match metrics {
                        Some(m) => m.response(),
                        None => svc.oneshot(req.map(Body::new)).await.unwrap_or_else(|e| match e {}),
                    }
                }
            },
            async {
                let _ = rx.await;
            },
            self.streams,
        ));
        let (stopping, stop_rx) = tokio::sync::watch::channel(false);
        let tasks = self.tasks.drain(..).map(|t| tokio::spawn(t(Stopping(stop_rx.clone())))).collect();
        let via = (calls_via_proxy() && !local_only)
            .then(|| (self.effective_server(), self.transport.clone().unwrap_or_default()));
        Ok(Running {
            addr,
            via,
            namespace: self.namespace,
            record,
            registry,
            heartbeat,
            shutdown: Some(tx),
            serving,
            router,
            credentials: self.credentials,
            stopping,
            tasks,
        })
    }

    /// Runs until SIGINT/SIGTERM: sets up logging and traces
    /// ([`crate::log::init_with_traces`]), reads the
    /// environment (see [`Service::env`]), registers, serves, then deregisters and drains
    /// in-flight calls.
    pub async fn run(self) -> Result<(), Status> {
        crate::log::init_with_traces("info", &self.name);
        // Listening before registering: a SIGTERM right after registration still deregisters.
        let stop = crate::server::signals();
        let running = self.env(|k| std::env::var(k).ok()).start().await?;
        stop.await;
        running.stop().await;
        crate::telemetry::flush();
        Ok(())
    }
}

/// Checks a declared route: `METHOD /path/{field}` (or `* /path`).
fn check_route(route: &str) -> Result<(), String> {
    let (method, path) = route.split_once(' ').ok_or("use \"METHOD /path\", like \"GET /notes/{id}\"")?;
    if !["*", "GET", "POST", "PUT", "PATCH", "DELETE"].contains(&method) {
        return Err(format!("unknown method {method}"));
    }
    if !path.starts_with('/') || path.len() < 2 {
        return Err("the path must start with / and name something".into());
    }
    for seg in path.split('/').skip(1) {
        let name = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}'));
        let ok = match name {
            Some(n) => !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
            None => !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)),
        };
        if !ok {
            return Err(format!("bad path segment {seg:?}"));
        }
    }
    Ok(())
}

/// A node's metadata: its protocol, and the runtime's instance id (`MICRO_INSTANCE`)
/// when the runtime started it.
fn node_metadata() -> BTreeMap<String, String> {
    let mut m: BTreeMap<String, String> = [("protocol".to_string(), "grpc".to_string())].into();
    if let Ok(id) = std::env::var("MICRO_INSTANCE")
        && !id.is_empty()
    {
        m.insert("instance".to_string(), id);
    }
    m
}

/// The address to register for a bound socket: loopback for an unspecified IP.
fn advertise_address(addr: SocketAddr) -> String {
    if addr.ip().is_unspecified() { format!("127.0.0.1:{}", addr.port()) } else { addr.to_string() }
}

async fn heartbeat(registry: Arc<dyn Registry>, ns: String, record: micro_core::registry::Service, ttl: Duration) {
    let mut tick = tokio::time::interval(ttl / 3);
    tick.tick().await;
    loop {
        tick.tick().await;
        if let Err(e) = registry.register(&ns, &record, ttl).await {
            tracing::warn!(service = %record.name, error = %e, "re-registering failed; will retry");
        }
    }
}

/// A running service.
pub struct Running {
    addr: SocketAddr,
    /// The proxy every call goes through (`MICRO_CALLS=proxy`), with its transport.
    via: Option<(String, crate::Transport)>,
    namespace: String,
    record: micro_core::registry::Service,
    registry: Arc<dyn Registry>,
    heartbeat: JoinHandle<()>,
    shutdown: Option<oneshot::Sender<()>>,
    serving: JoinHandle<()>,
    router: Router,
    credentials: Option<Arc<Credentials>>,
    stopping: tokio::sync::watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// The bound address.
    pub fn address(&self) -> SocketAddr {
        self.addr
    }

    /// The registration (with this node).
    pub fn record(&self) -> &micro_core::registry::Service {
        &self.record
    }

    /// A client that finds services through the same registry and namespace, and sends
    /// the service's token when it has credentials.
    pub fn client(&self) -> Client {
        let client = match &self.via {
            Some((proxy, transport)) => Client::via_proxy(proxy.clone()).transport(transport.clone()),
            None => Client::new(self.registry.clone()),
        };
        let client = client.namespace(&self.namespace);
        match &self.credentials {
            Some(c) => client.auth(Arc::new(Bearer(c.clone()))),
            None => client,
        }
    }

    /// The request router (for metrics).
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// Deregisters at once, stops accepting, drains in-flight calls and lets background
    /// tasks finish their step (5 s at most).
    pub async fn stop(mut self) {
        self.heartbeat.abort();
        let _ = self.stopping.send(true);
        match tokio::time::timeout(Duration::from_secs(2), self.registry.deregister(&self.namespace, &self.record))
            .await
        {
            Ok(Ok(())) => tracing::info!(service = %self.record.name, "deregistered"),
            Ok(Err(e)) => tracing::warn!(error = %e, "deregistering failed"),
            Err(_) => tracing::warn!("deregistering timed out"),
        }
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.serving).await;
        for task in std::mem::take(&mut self.tasks) {
            let abort = task.abort_handle();
            if tokio::time::timeout(TASK_GRACE, task).await.is_err() {
                abort.abort();
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.heartbeat.abort();
        for task in &self.tasks {
            task.abort();
        }
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Whether calls to other services go through the server's proxy (`MICRO_CALLS=proxy`).
fn calls_via_proxy() -> bool {
    std::env::var("MICRO_CALLS").is_ok_and(|v| v.trim() == "proxy")
}
