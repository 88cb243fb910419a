//! The gRPC proxy (8081): routes `/{service}.{Handler}/{Method}` to a node of that
//! service in the caller's namespace; serves the core services in-process.

use http::{Request, Response};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use micro::{Client, LayeredRouter, Status, split_grpc_path};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tonic::body::Body;
use tower::ServiceExt;

/// The proxy. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Proxy {
    inner: Arc<Inner>,
}

struct Inner {
    core: LayeredRouter,
    local: HashSet<String>,
    client: Client,
    http: HttpClient<HttpConnector, Body>,
    runtime: crate::runtime::Runtime,
    auth: crate::auth::AuthService,
    authorizer: Arc<micro::auth::Authorizer>,
    meter: crate::usage::Meter,
    /// In a cluster with TLS: mutual TLS to the other nodes, which is also how they
    /// must reach this one to forward runtime calls.
    nodes: Option<micro::Transport>,
    /// Which services are private.
    domains: crate::domains::Domains,
    /// Where on this host tenants' nodes may be.
    local_nodes: crate::targets::LocalNodes,
    /// Other clusters, for the services this one does not run.
    network: crate::network::Network,
}

/// On an answer the proxy forwarded to the runtime's leader, which meters the call.
#[derive(Clone, Copy)]
struct Forwarded;

/// On an answer for a service the proxy found no node of.
#[derive(Clone, Copy)]
struct Unrouted;

const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
];

impl Proxy {
    #[allow(clippy::too_many_arguments)] // the parts of the server the proxy uses, each once
    pub(crate) fn new(
        core: LayeredRouter,
        local: HashSet<String>,
        client: Client,
        runtime: crate::runtime::Runtime,
        auth: crate::auth::AuthService,
        meter: crate::usage::Meter,
        nodes: Option<micro::Transport>,
        domains: crate::domains::Domains,
        local_nodes: crate::targets::LocalNodes,
        network: crate::network::Network,
    ) -> Proxy {
        let mut conn = HttpConnector::new();
        conn.set_nodelay(true);
        conn.set_connect_timeout(Some(Duration::from_secs(2)));
        let http = HttpClient::builder(TokioExecutor::new()).http2_only(true).build(conn);
        let authorizer = crate::guard::authorizer(&auth);
        Proxy {
            inner: Arc::new(Inner {
                core,
                local,
                client,
                http,
                runtime,
                auth,
                authorizer,
                meter,
                nodes,
                domains,
                local_nodes,
                network,
            }),
        }
    }

    /// Serves a call, metering it unless this process's gateway, which meters its own
    /// calls, `vouched` for it (see [`micro::edge`]).
    pub(crate) async fn handle(&self, mut req: Request<Body>, vouched: bool) -> Response<Body> {
        // What the network says about a call is said by the network alone (in an
        // extension), never by a caller's headers.
        if req.extensions().get::<crate::network::FromNetwork>().is_none() {
            let forged: Vec<http::HeaderName> =
                req.headers().keys().filter(|k| k.as_str().starts_with("micro-network-")).cloned().collect();
            for k in forged {
                req.headers_mut().remove(k);
            }
        }
        if vouched || !self.inner.meter.is_on() {
            return self.route(req).await;
        }
        // Who called is learnt where the call is authorized (here for a service's node,
        // in the core's router for the core).
        let slot = micro::auth::CallerSlot::default();
        req.extensions_mut().insert(slot.clone());
        let asked = req
            .headers()
            .get(micro_core::metadata::NAMESPACE)
            .and_then(|v| v.to_str().ok())
            .filter(|n| micro_core::namespace::validate(n).is_ok())
            .unwrap_or(micro_core::namespace::DEFAULT)
            .to_string();
        let path = req.uri().path();
        let (service, endpoint) = match split_grpc_path(path) {
            Some((s, e)) => (s.to_string(), e),
            None => {
                let mut segs = path.split('/').filter(|s| !s.is_empty());
                (segs.next().unwrap_or("").to_string(), segs.next().unwrap_or("").to_string())
            }
        };
        let bytes_in = crate::usage::BytesIn::default();
        let req = req.map(|b| bytes_in.count(b));
        let res = self.route(req).await;
        if res.extensions().get::<Forwarded>().is_some() {
            return res;
        }
        let (namespace, account) = match slot.0.get() {
            Some(c) => (c.namespace.clone(), crate::usage::Labels::account_of(c)),
            None => (asked, String::new()),
        };
        // A service or endpoint that does not exist is no label (callers pick paths).
        let (service, endpoint) = match res.extensions().get::<Unrouted>() {
            Some(_) => (String::new(), String::new()),
            None if res.headers().get("grpc-status").is_some_and(|v| v == "12") => (service, String::new()),
            None => (service, endpoint),
        };
        let labels = crate::usage::Labels { namespace, service, endpoint, account };
        self.inner.meter.answer(labels, bytes_in, res)
    }

    async fn route(&self, req: Request<Body>) -> Response<Body> {
        let path = req.uri().path().to_string();
        let grpc = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|c| c.starts_with("application/grpc"));
        let first = path.trim_start_matches('/').split('/').next().unwrap_or("");
        let service = match split_grpc_path(&path) {
            Some((s, _)) if grpc => s.to_string(),
            _ if !grpc => first.to_string(),
            _ => first.to_string(),
        };
        let error = |st: Status| error_response(grpc, &st);
        // In a cluster, one elected node runs the services: runtime calls go there.
        if service == "runtime" {
            // Over mutual TLS, only the cluster's nodes forward runtime calls.
            if self.inner.nodes.is_some()
                && req.headers().contains_key(crate::runtime::FORWARDED)
                && req.extensions().get::<micro::server::ClientCertified>().is_none()
            {
                return error(Status::new(
                    micro_core::Code::PermissionDenied,
                    "proxy",
                    "a forwarded runtime call needs a cluster node's certificate",
                ));
            }
            match self.inner.runtime.route().await {
                Ok(crate::runtime::Route::Local) => {}
                Ok(crate::runtime::Route::Leader(_)) if req.headers().contains_key(crate::runtime::FORWARDED) => {
                    return error(Status::unavailable("proxy", "the runtime leader is changing; try again"));
                }
                Ok(crate::runtime::Route::Leader(leader)) => {
                    let mut req = req;
                    req.headers_mut().insert(crate::runtime::FORWARDED, http::HeaderValue::from_static("1"));
                    let mut res = self.forward(req, &leader, &service, grpc, false).await;
                    res.extensions_mut().insert(Forwarded);
                    return res;
                }
                Err(e) => return error(e),
            }
        }
        if first.starts_with("grpc.") || self.inner.local.contains(&service) {
            return self.inner.core.clone().oneshot(req).await.unwrap_or_else(|e| match e {});
        }
        if service.is_empty() {
            let mut res = error(Status::not_found("proxy", format!("no service in path {path}")));
            res.extensions_mut().insert(Unrouted);
            res.extensions_mut().insert(crate::network::Undelivered);
            return res;
        }
        let mut req = req;
        let (ns, caller) = match self.delegate(&mut req, &service).await {
            Ok(d) => d,
            Err(e) => return error(e),
        };
        // A call from another cluster for a namespace this one does not export only
        // passes through, to a cluster that does.
        let from = req.extensions().get::<crate::network::FromNetwork>().map(|f| (f.visited.clone(), f.local));
        let (visited, local) = from.unwrap_or((Vec::new(), true));
        let network = &self.inner.network;
        if !local {
            return network.call(req, &ns, &service, &caller, &visited, grpc).await;
        }
        let node = match self.inner.client.resolve(&service, Some(&ns)).await {
            Ok(n) => n,
            Err(e) if e.code() == micro_core::Code::NotFound && network.reaches(&ns, &service) => {
                return network.call(req, &ns, &service, &caller, &visited, grpc).await;
            }
            Err(e) => {
                let mut res = error(e);
                res.extensions_mut().insert(Unrouted);
                res.extensions_mut().insert(crate::network::Undelivered);
                return res;
            }
        };
        // Another cluster's service (its registration points here), or this cluster's
        // with every node failing while another cluster has it.
        let failing = || self.inner.client.failed_recently(&node) || network.unhealthy(&ns, &service);
        if network.is_virtual(&node) || (failing() && network.reaches(&ns, &service)) {
            return network.call(req, &ns, &service, &caller, &visited, grpc).await;
        }
        // (A tenant's node on this host must be its own instance, whatever it registered.)
        if let Err(e) = self.inner.local_nodes.admit(&ns, &node) {
            return error(e);
        }
        self.forward(req, &node, &service, grpc, true).await
    }

    /// What a service's node gets of the caller's credentials: never the caller's own
    /// token (a node is whatever its registrant says it is, and could replay it at the
    /// core or at any other service), but a token for this one service in this
    /// namespace, standing for the same account; no cookies. Returns the namespace the
    /// call acts in (the header's, else the caller's account's, else `micro`), which the
    /// node is told.
    async fn delegate(&self, req: &mut Request<Body>, service: &str) -> Result<(String, micro::auth::Caller), Status> {
        let imported = req.extensions().get::<crate::network::FromNetwork>().map(|f| f.caller.clone());
        let headers = req.headers_mut();
        headers.remove(http::header::COOKIE);
        // A caller from another cluster is who that cluster vouches for, as checked and
        // mapped by the network (it brings no token).
        let (token, caller) = match imported {
            Some(caller) => {
                headers.remove(http::header::AUTHORIZATION);
                (None, caller)
            }
            None => {
                let token = micro::auth::bearer(headers);
                let caller = self.inner.authorizer.identify(headers, token.as_deref(), None).await?;
                (token, caller)
            }
        };
        let ns = caller.namespace.clone();
        // A private service answers its namespace's accounts (its own services among
        // them) and operators only.
        self.inner.domains.admit(&caller, &ns, service).await?;
        if let Some(slot) = req.extensions().get::<micro::auth::CallerSlot>() {
            let _ = slot.0.set(caller.clone());
        }
        let headers = req.headers_mut();
        if let Ok(v) = http::HeaderValue::from_str(&ns) {
            headers.insert(micro_core::metadata::NAMESPACE, v);
        }
        let audience = format!("{ns}/{service}");
        if let Some(token) = token {
            headers.insert(http::header::AUTHORIZATION, self.inner.auth.delegated_header(&token, &audience)?);
        } else if let (Some(account), true) =
            (&caller.account, req.extensions().get::<crate::network::FromNetwork>().is_some())
        {
            let v = self.inner.auth.imported_header(account, &audience)?;
            req.headers_mut().insert(http::header::AUTHORIZATION, v);
        }
        Ok((ns, caller))
    }

    /// Sends `req` on to `node`; `resolved`: the node came from the registry (and is
    /// reported when unreachable).
    async fn forward(
        &self,
        req: Request<Body>,
        node: &str,
        service: &str,
        grpc: bool,
        resolved: bool,
    ) -> Response<Body> {
        let error = |st: Status| error_response(grpc, &st);
        let (mut parts, body) = req.into_parts();
        // Another cluster's caller learns no address of this one's.
        let shown = if parts.extensions.get::<crate::network::FromNetwork>().is_some() { "its node" } else { node };
        let pq = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/").to_string();
        parts.uri = match format!("http://{node}{pq}").parse() {
            Ok(u) => u,
            Err(_) => return error(Status::bad_request("proxy", "bad request path")),
        };
        parts.version = http::Version::HTTP_2;
        for h in HOP_BY_HOP {
            parts.headers.remove(h);
        }
        parts.headers.remove(http::header::HOST);
        // To another node of a TLS cluster (the runtime's leader): over mutual TLS.
        if let (Some(nodes), false) = (&self.inner.nodes, resolved) {
            parts.uri = match format!("https://{node}{pq}").parse() {
                Ok(u) => u,
                Err(_) => return error(Status::bad_request("proxy", "bad request path")),
            };
            return match nodes.request(Request::from_parts(parts, body)).await {
                Ok(res) => res,
                Err(e) => {
                    error(Status::unavailable("proxy", format!("{service} at {node} is unreachable: {}", e.detail())))
                }
            };
        }
        match self.inner.http.request(Request::from_parts(parts, body)).await {
            Ok(res) => res.map(Body::new),
            Err(e) => {
                if resolved {
                    self.inner.client.report_failure(node);
                }
                let detail = if shown == node {
                    format!("{service} at {node} is unreachable: {e}")
                } else {
                    format!("{service} at {shown} is unreachable")
                };
                let mut res = error(Status::unavailable("proxy", detail));
                // Not connected, so not delivered: another cluster may take it.
                if e.is_connect() {
                    res.extensions_mut().insert(crate::network::Undelivered);
                }
                res
            }
        }
    }
}

/// An error as the caller expects it: a gRPC status, or the JSON error body.
fn error_response(grpc: bool, st: &Status) -> Response<Body> {
    if grpc { micro::frame::error_response(st, "application/grpc") } else { micro::json_error(st) }
}
