//! The HTTP API gateway (8080): maps paths to service endpoints, turns the body, query
//! string and path into a JSON request, calls the service and returns JSON.
//!
//! | Path | Service | Endpoint |
//! |---|---|---|
//! | `/foo` | `foo` | `Foo.Call` |
//! | `/foo/bar` | `foo` | `Foo.Bar` |
//! | `/foo/bar/baz` | `foo` | `Bar.Baz` |
//! | `/foo/get-user` | `foo` | `Foo.GetUser` |
//! | `/v1/foo/bar` | `v1.foo` | `Foo.Bar` |

use crate::Config;
use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use micro::metrics::Metrics;
use micro::registry::{Registry, Service};
use micro::{CallOptions, Client, Code, Status, json_error};
use micro_core::metadata::CONTENT_TYPE_GRPC_JSON;
use micro_core::registry::Endpoint;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::body::Body;

/// The gateway. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Gateway {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Arc<dyn Registry>,
    client: Client,
    http: HttpClient<HttpConnector, Body>,
    metrics: Metrics,
    body_limit: usize,
    cors: Vec<String>,
    next: AtomicUsize,
    routes: Mutex<HashMap<String, (Instant, Routes)>>,
    auth: crate::auth::AuthService,
    /// The core's authorizer: who calls, in which namespace, and HTTP services' rules.
    authorizer: Arc<micro::auth::Authorizer>,
    targets: crate::targets::Targets,
    /// Vouches, on calls to the core, for the client address the gateway stamped.
    edge_key: micro::edge::EdgeKey,
    /// The namespaces' rate limits.
    limits: crate::ratelimit::RateLimits,
    /// Counts every request (see [`crate::usage`]).
    meter: crate::usage::Meter,
    /// The namespaces' cached answers.
    cache: crate::cache::Cache,
    /// The custom domains the gateway serves.
    domains: crate::domains::Domains,
    /// The files product (`/files/v1/…`), when the server hosts it.
    files: Option<Arc<micro_files::Files>>,
    /// The apps product (its API at `/apps/v1/…`, its sites on their hosts and under
    /// `/apps/<name>/`), when the server hosts it.
    apps: Option<Arc<micro_apps::Apps>>,
    /// The subscribe product's public pages (`/subscribe/v1/…`), when the server hosts it.
    subscribe: Option<Arc<micro_subscribe::Subscribe>>,
    /// The push product's API and realtime streams (`/push/v1/…`), when the server hosts it.
    push: Option<Arc<micro_push::Push>>,
    /// The billing product's webhooks (`/billing/v1/webhook/<provider>`) and invoice
    /// documents (`/billing/v1/invoices/<id>.pdf|.html`).
    billing: Option<Arc<micro_billing::Billing>>,
}

/// Marks a request that came to an app's own host (the hosting domain's
/// `<app>.<namespace>.…`, or a custom domain claimed for it), rewritten to
/// `/apps/<app>/…`: its site is served in its own origin, unsandboxed.
#[derive(Clone)]
struct OwnHost {
    namespace: String,
}

/// On an answer: the service and endpoint it is metered under.
#[derive(Clone)]
struct Tag {
    service: String,
    endpoint: String,
}

/// The declared routes of one namespace.
type Routes = Arc<Vec<DeclaredRoute>>;

/// An endpoint's declared HTTP route.
struct DeclaredRoute {
    method: Option<Method>,
    segs: Vec<String>,
    service: String,
    endpoint: Endpoint,
}

/// The most namespaces whose declared routes are cached at once.
const MAX_ROUTE_NAMESPACES: usize = 4096;

/// How long the declared routes of a namespace are cached.
const ROUTES_TTL: Duration = Duration::from_secs(1);

/// Metadata forwarded from HTTP headers to the service (credentials are not: see
/// [`Gateway::credentials`]).
const FORWARDED: [&str; 4] = ["micro-id", "traceparent", "micro-from-service", "micro-client-address"];

/// Whether a cookie is the platform's (`micro-token`, the dashboard's `micro_session`,
/// and any other `micro-…`/`micro_…`): never sent to a service, never set by one.
fn platform_cookie(name: &str) -> bool {
    let n = name.trim().to_ascii_lowercase();
    n.starts_with("micro-") || n.starts_with("micro_")
}

/// Removes the platform's cookies from a request's `Cookie` headers.
fn strip_platform_cookies(headers: &mut http::HeaderMap) {
    let kept: Vec<String> = micro::auth::cookies(headers)
        .filter(|c| !platform_cookie(c.name()))
        .map(|c| format!("{}={}", c.name(), c.value()))
        .collect();
    headers.remove(header::COOKIE);
    if !kept.is_empty()
        && let Ok(v) = HeaderValue::from_str(&kept.join("; "))
    {
        headers.insert(header::COOKIE, v);
    }
}

/// The caller's token at the gateway: the bearer header, else the `micro-token` cookie.
fn token_of(headers: &http::HeaderMap) -> Option<String> {
    micro::auth::bearer(headers).or_else(|| micro::auth::cookie_token(headers))
}

/// Maps a gateway path to `(service, Handler.Method)`; `None` for paths that name none.
pub fn route(path: &str) -> Option<(String, String)> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if segs.is_empty() || segs.iter().any(|s| !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')) {
        return None;
    }
    let versioned = segs.len() >= 2 && is_version(segs[0]);
    let (service_parts, rest) =
        if versioned { (segs[..2].to_vec(), &segs[2..]) } else { (segs[..1].to_vec(), &segs[1..]) };
    let mut service_parts = service_parts;
    // Longer paths name nested services: the last two segments are Handler/Method.
    let rest: Vec<&str> = if rest.len() > 2 {
        service_parts.extend_from_slice(&rest[..rest.len() - 2]);
        rest[rest.len() - 2..].to_vec()
    } else {
        rest.to_vec()
    };
    let service = service_parts.join(".");
    let last = camel(service_parts.last()?);
    let endpoint = match rest.as_slice() {
        [] => format!("{last}.Call"),
        [m] => format!("{last}.{}", camel(m)),
        [h, m] => format!("{}.{}", camel(h), camel(m)),
        _ => return None,
    };
    Some((service, endpoint))
}

fn is_version(s: &str) -> bool {
    s.len() >= 2 && s.starts_with('v') && s[1..].bytes().all(|b| b.is_ascii_digit())
}

/// `get-user` → `GetUser`, `greeter` → `Greeter`.
pub fn camel(s: &str) -> String {
    s.split(['-', '_'])
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut c = p.chars();
            c.next().map(|f| f.to_uppercase().chain(c).collect::<String>()).unwrap_or_default()
        })
        .collect()
}

/// The namespace of a request: `micro-namespace`, else the host's subdomain, else `micro`.
fn namespace(headers: &http::HeaderMap) -> String {
    if let Some(ns) =
        headers.get(micro_core::metadata::NAMESPACE).and_then(|v| v.to_str().ok()).filter(|v| !v.is_empty())
    {
        return ns.to_string();
    }
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
    let host =
        host.rsplit_once(':').filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit())).map(|(h, _)| h).unwrap_or(host);
    let labels: Vec<&str> = host.split('.').collect();
    if labels.len() >= 3
        && host.parse::<std::net::IpAddr>().is_err()
        && micro_core::namespace::validate(labels[0]).is_ok()
        && labels[0] != "www"
    {
        return labels[0].to_string();
    }
    micro_core::namespace::DEFAULT.to_string()
}

impl Gateway {
    #[allow(clippy::too_many_arguments)] // the parts of the server the gateway uses, each once
    pub(crate) fn new(
        config: &Config,
        registry: Arc<dyn Registry>,
        client: Client,
        metrics: Metrics,
        auth: crate::auth::AuthService,
        targets: crate::targets::Targets,
        edge_key: micro::edge::EdgeKey,
        limits: crate::ratelimit::RateLimits,
        meter: crate::usage::Meter,
        cache: crate::cache::Cache,
        domains: crate::domains::Domains,
        hosted: &crate::products::Hosted,
    ) -> Gateway {
        let mut conn = HttpConnector::new();
        conn.set_nodelay(true);
        conn.set_connect_timeout(Some(Duration::from_secs(2)));
        let http = HttpClient::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(60)).build(conn);
        Gateway {
            inner: Arc::new(Inner {
                registry,
                client,
                http,
                metrics,
                body_limit: config.body_limit,
                cors: config.cors_origins.clone(),
                next: AtomicUsize::new(0),
                routes: Mutex::new(HashMap::new()),
                authorizer: crate::guard::authorizer(&auth),
                auth,
                targets,
                edge_key,
                limits,
                meter,
                cache,
                domains,
                files: hosted.files.clone(),
                apps: hosted.apps.clone(),
                subscribe: hosted.subscribe.clone(),
                push: hosted.push.clone(),
                billing: hosted.billing.clone(),
            }),
        }
    }

    pub(crate) async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let origin = req.headers().get(header::ORIGIN).cloned();
        let start = Instant::now();
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let mut res = if method == Method::OPTIONS { self.preflight(&req) } else { self.route(req).await };
        self.cors(origin.as_ref(), &mut res);
        tracing::debug!(target: "micro::access", %method, %path, status = res.status().as_u16(), elapsed_us = start.elapsed().as_micros() as u64, "request");
        res
    }

    async fn route(&self, mut req: Request<Incoming>) -> Response<Body> {
        // A verified custom domain decides the namespace, whatever the request names (and,
        // for a service's domain, the path's service), before any path rule.
        let host = req.headers().get(header::HOST).and_then(|v| v.to_str().ok()).map(str::to_string);
        let host = host.or_else(|| req.uri().authority().map(|a| a.to_string()));
        let claimed = match host {
            Some(h) => self.inner.domains.route(&h).await,
            None => None,
        };
        if let Some(claim) = &claimed {
            if let Ok(ns) = HeaderValue::from_str(&claim.namespace) {
                req.headers_mut().insert(micro_core::metadata::NAMESPACE, ns);
            }
            if !claim.service.is_empty() {
                let pq = req.uri().path_and_query().map_or("/", |p| p.as_str()).to_string();
                let mut parts = req.uri().clone().into_parts();
                // An app's host serves its site.
                let app = match &self.inner.apps {
                    Some(apps) => apps.hosts(&claim.namespace, &claim.service).await,
                    None => false,
                };
                let prefix = if app {
                    req.extensions_mut().insert(OwnHost { namespace: claim.namespace.clone() });
                    format!("/apps/{}", claim.service)
                } else {
                    format!("/{}", claim.service)
                };
                parts.path_and_query = format!("{prefix}{pq}").parse().ok();
                match http::Uri::from_parts(parts) {
                    Ok(uri) => *req.uri_mut() = uri,
                    Err(_) => return json_error(&Status::bad_request("api", "bad request path")),
                }
            }
        }
        let path = req.uri().path();
        // A file's address names its namespace (an `<img>` sends no header), whatever the
        // request says: the request is admitted, counted and limited there.
        if claimed.is_none()
            && let Some(ns) = path.strip_prefix("/files/v1/content/").and_then(|r| r.split('/').next())
            && micro_core::namespace::validate(ns).is_ok()
            && let Ok(v) = HeaderValue::from_str(ns)
        {
            req.headers_mut().insert(micro_core::metadata::NAMESPACE, v);
        }
        let path = req.uri().path();
        if claimed.is_none() && req.method() == Method::GET && path == "/" {
            let v = serde_json::json!({"name": "micro", "version": env!("CARGO_PKG_VERSION"), "api": "ok"});
            return json(StatusCode::OK, v.to_string().into());
        }
        if claimed.is_none() && req.method() == Method::GET && path == "/metrics" {
            return self.inner.metrics.response();
        }
        // The caller, acting in the header's namespace, else its account's, else the
        // subdomain's.
        let token = token_of(req.headers());
        let fallback = namespace(req.headers());
        let caller = match self.inner.authorizer.identify(req.headers(), token.as_deref(), Some(&fallback)).await {
            Ok(c) => c,
            Err(e) => {
                // Counted in the namespace asked for (when it is one), and limited there
                // by client address like anonymous calls: junk tokens are no way around
                // a namespace's limits.
                let ns = if micro_core::namespace::validate(&fallback).is_ok() {
                    fallback
                } else {
                    micro_core::namespace::DEFAULT.to_string()
                };
                let ip = req.headers().get(micro::server::CLIENT_ADDRESS).and_then(|v| v.to_str().ok());
                let counted = crate::ratelimit::Request { namespace: &ns, path: req.uri().path(), ip, account: None };
                let res = match self.inner.limits.check(&counted).await {
                    Ok(_) => json_error(&e),
                    Err(refused) => limited(refused),
                };
                let labels = crate::usage::Labels { namespace: ns, ..Default::default() };
                return self.inner.meter.answer(labels, crate::usage::BytesIn::default(), res);
            }
        };
        // Metered under the caller and what served the request (its tag), with the bytes
        // of the body as it is read.
        let bytes_in = crate::usage::BytesIn::default();
        req.extensions_mut().insert(bytes_in.clone());
        let mut labels = crate::usage::Labels {
            namespace: caller.namespace.clone(),
            account: crate::usage::Labels::account_of(&caller),
            ..Default::default()
        };
        // A WebSocket's messages are metered under the caller too.
        if crate::websocket::requested(req.headers()) {
            req.extensions_mut().insert(labels.clone());
        }
        let path = req.uri().path();
        // The namespace's rate limits, before anything is done for the request.
        let ip = req.headers().get(micro::server::CLIENT_ADDRESS).and_then(|v| v.to_str().ok());
        let counted = crate::ratelimit::Request {
            namespace: &caller.namespace,
            path,
            ip,
            account: caller.account.as_ref().map(|a| (a.namespace.as_str(), a.id.as_str())),
        };
        let passed = match self.inner.limits.check(&counted).await {
            Ok(p) => p,
            Err(refused) => return self.inner.meter.answer(labels, bytes_in, limited(refused)),
        };
        // Answered from the cache, or served (and perhaps kept).
        let res = match self.inner.cache.lookup(&caller.namespace, &labels.account, &req).await {
            crate::cache::Lookup::Hit(res, service, endpoint) => {
                match self.admit(&caller, &caller.namespace, &service).await {
                    // A kept answer is no way past privacy or the month's quota either.
                    Err(refused) => refused,
                    Ok(()) => {
                        labels.service = service;
                        labels.endpoint = endpoint;
                        res
                    }
                }
            }
            looked => {
                let mut res = self.serve(req, caller).await;
                if let Some(tag) = res.extensions_mut().remove::<Tag>() {
                    labels.service = tag.service;
                    labels.endpoint = tag.endpoint;
                }
                match looked {
                    crate::cache::Lookup::Miss(miss) => {
                        self.inner.cache.store(miss, res, &labels.service, &labels.endpoint).await
                    }
                    _ => res,
                }
            }
        };
        let mut res = self.inner.meter.answer(labels, bytes_in, res);
        if let Some(p) = passed
            && let (Ok(policy), Ok(state)) = (HeaderValue::from_str(&p.policy), HeaderValue::from_str(&p.state))
        {
            res.headers_mut().insert("ratelimit-policy", policy);
            res.headers_mut().insert("ratelimit", state);
        }
        res
    }

    /// Serves a request of `caller`, once it passed the rate limits.
    async fn serve(&self, req: Request<Incoming>, caller: micro::auth::Caller) -> Response<Body> {
        let path = req.uri().path();
        let ns = caller.namespace.clone();
        // The products served here see the caller as identified, a cookie's too: a cookie
        // alone authorises only what a browser would have asked the server about first
        // (reads, and requests no other site's page can send unasked).
        let product = path.starts_with("/files/v1/")
            || path.starts_with("/apps/v1/")
            || path.starts_with("/subscribe/v1/lists/")
            || path.starts_with("/push/v1/");
        if product
            && !matches!(*req.method(), Method::GET | Method::HEAD)
            && micro::auth::bearer(req.headers()).is_none()
            && micro::auth::cookie_token(req.headers()).is_some()
            && !preflighted(req.headers())
        {
            let detail = "a cookie alone does not authorise this request: send the token in Authorization, or the micro-namespace header";
            return json_error(&Status::new(Code::PermissionDenied, "api", detail));
        }
        if req.method() == Method::GET && (path == "/openapi.json" || path.starts_with("/openapi/")) {
            return self.openapi(&caller, path, req.headers()).await;
        }
        if let Some(apps) = &self.inner.apps
            && let Some(rest) = path.strip_prefix("/apps/")
        {
            if let Err(refused) = self.admit(&caller, &ns, micro_apps::NAME).await {
                return refused;
            }
            let endpoint = req.method().to_string();
            let mut res = if rest.starts_with("v1/") {
                apps.serve_api(req, &caller).await
            } else {
                let (label, file) = rest.split_once('/').unwrap_or((rest, ""));
                let own = req.extensions().get::<OwnHost>().cloned();
                if file.is_empty() && !rest.ends_with('/') {
                    // The site's root with its slash, so its relative links resolve.
                    let mut r = micro::web::empty(StatusCode::PERMANENT_REDIRECT);
                    let to = if own.is_some() { "/".to_string() } else { format!("/apps/{label}/") };
                    if let Ok(v) = HeaderValue::from_str(&to) {
                        r.headers_mut().insert(header::LOCATION, v);
                    }
                    r
                } else {
                    let (site_ns, sandboxed) = match &own {
                        Some(o) => (o.namespace.as_str(), false),
                        None => (ns.as_str(), true),
                    };
                    apps.serve_site(site_ns, label, file, req.method(), req.headers(), sandboxed).await
                }
            };
            res.extensions_mut().insert(Tag { service: micro_apps::NAME.to_string(), endpoint });
            return res;
        }
        if path.starts_with("/subscribe/v1/")
            && let Some(sub) = &self.inner.subscribe
        {
            if let Err(refused) = self.admit(&caller, &ns, micro_subscribe::NAME).await {
                return refused;
            }
            let method = req.method().to_string();
            let mut res = sub.serve(req, &caller).await;
            res.extensions_mut().insert(Tag { service: micro_subscribe::NAME.to_string(), endpoint: method });
            return res;
        }
        if let Some(rest) = path.strip_prefix("/billing/v1/invoices/")
            && let Some(billing) = &self.inner.billing
            && req.method() == Method::GET
        {
            let mut res = billing.serve_document(&caller, rest).await;
            res.extensions_mut().insert(Tag { service: micro_billing::NAME.to_string(), endpoint: "GET".into() });
            return res;
        }
        if let Some(provider) = path.strip_prefix("/billing/v1/webhook/")
            && let Some(billing) = &self.inner.billing
        {
            // The payment provider calls, signing what it sends: no account, no namespace.
            let res = if req.method() != Method::POST {
                json_error(&Status::new(Code::InvalidArgument, micro_billing::NAME, "webhooks are POSTed"))
            } else if provider != billing.provider() {
                json_error(&Status::new(Code::NotFound, micro_billing::NAME, format!("no {provider:?} provider here")))
            } else {
                let (parts, body) = req.into_parts();
                match micro::web::collect_limited(body, 1 << 20, micro_billing::NAME).await {
                    Ok(body) => match billing.webhook(&parts.headers, &body).await {
                        Ok(()) => micro::web::reply(StatusCode::OK, &serde_json::json!({"received": true})),
                        Err(e) => json_error(&e),
                    },
                    Err(e) => json_error(&e),
                }
            };
            let mut res = res;
            res.extensions_mut().insert(Tag { service: micro_billing::NAME.to_string(), endpoint: "webhook".into() });
            return res;
        }
        if path.starts_with("/push/v1/")
            && let Some(push) = &self.inner.push
        {
            if let Err(refused) = self.admit(&caller, &ns, micro_push::NAME).await {
                return refused;
            }
            let method = req.method().to_string();
            // A realtime stream ends once its token is revoked.
            let token = micro::auth::bearer(req.headers()).or_else(|| micro::auth::cookie_token(req.headers()));
            let auth = self.inner.auth.clone();
            let valid: micro_push::StillValid =
                Arc::new(move || token.as_deref().is_none_or(|t| auth.verify(t).is_ok()));
            let mut res = push.serve(req, &caller, valid).await;
            res.extensions_mut().insert(Tag { service: micro_push::NAME.to_string(), endpoint: method });
            return res;
        }
        if path.starts_with("/files/v1/")
            && let Some(files) = &self.inner.files
        {
            if let Err(refused) = self.admit(&caller, &ns, micro_files::NAME).await {
                return refused;
            }
            let method = req.method().to_string();
            let mut res = files.serve(req, &caller).await;
            res.extensions_mut().insert(Tag { service: micro_files::NAME.to_string(), endpoint: method });
            return res;
        }
        let first = path.split('/').find(|s| !s.is_empty()).unwrap_or("").to_string();
        let method = req.method().clone();
        // Services that registered an HTTP address get the request as it is.
        let valid = !first.is_empty() && first.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        let first_services = if valid { self.inner.client.services(&first, Some(&ns)).await.ok() } else { None };
        if let Some(addr) = first_services.as_deref().and_then(|s| self.http_node(s)) {
            // HTTP services enforce nothing themselves: the gateway decides `http:name:/path`.
            let rest = path.strip_prefix('/').and_then(|p| p.strip_prefix(first.as_str())).unwrap_or("");
            let rest = if rest.is_empty() { "/".to_string() } else { rest.to_string() };
            let resource = micro_core::auth::Resource::new("http", &first, &rest);
            if let Err(e) = self.inner.authorizer.decide(&caller, micro::auth::Protection::Rules, &resource).await {
                return json_error(&e);
            }
            if let Err(refused) = self.admit(&caller, &ns, &first).await {
                return refused;
            }
            let mut res = self.reverse_proxy(req, &ns, &first, &addr).await;
            // An HTTP service's requests are metered by method (its paths are its own).
            let method = match method {
                Method::GET
                | Method::HEAD
                | Method::POST
                | Method::PUT
                | Method::PATCH
                | Method::DELETE
                | Method::OPTIONS => method.to_string(),
                _ => "OTHER".to_string(),
            };
            res.extensions_mut().insert(Tag { service: first, endpoint: method });
            return res;
        }
        // Path rules first; an endpoint's declared route (like GET /notes/{id}) answers
        // paths the rules do not resolve. When the rules name another service than the
        // path's first segment, which is one (`/db/v1/todos/records` names `db.v1`, and
        // `db` is the database), that service's declared routes are looked at first:
        // they are what such a path is for, and the rules' service seldom exists.
        let routed = route(path);
        if first_services.is_some()
            && routed.as_ref().is_some_and(|(service, _)| *service != first)
            && let Some((routes, i, captures)) = self.declared(&ns, req.method(), path).await
            && routes[i].service == first
        {
            let r = &routes[i];
            if let Err(refused) = self.admit(&caller, &ns, &r.service).await {
                return refused;
            }
            let tag = Tag { service: r.service.clone(), endpoint: r.endpoint.name.clone() };
            return tagged(self.invoke(req, ns, r.service.clone(), &r.endpoint, captures).await, tag);
        }
        let resolved = match routed {
            Some((service, endpoint)) => {
                let known = first_services.filter(|_| service == first);
                self.resolve(&ns, &service, &endpoint, known).await
            }
            None => Err(Status::not_found("api", format!("no service for path {path}"))),
        };
        match resolved {
            Ok((service, services, (s, e))) => {
                if let Err(refused) = self.admit(&caller, &ns, &service).await {
                    return refused;
                }
                let ep = &services[s].endpoints[e];
                let tag = Tag { service: service.clone(), endpoint: ep.name.clone() };
                tagged(self.invoke(req, ns, service, ep, Vec::new()).await, tag)
            }
            Err(e) if e.code() == Code::NotFound => match self.declared(&ns, req.method(), path).await {
                Some((routes, i, captures)) => {
                    let r = &routes[i];
                    if let Err(refused) = self.admit(&caller, &ns, &r.service).await {
                        return refused;
                    }
                    let tag = Tag { service: r.service.clone(), endpoint: r.endpoint.name.clone() };
                    tagged(self.invoke(req, ns, r.service.clone(), &r.endpoint, captures).await, tag)
                }
                None => json_error(&e),
            },
            Err(e) => json_error(&e),
        }
    }

    /// Refused (the answer) when `service` of namespace `ns` is private and `caller` no
    /// member, or when the month's requests of `ns` are spent and a request to `service`
    /// counts against them (the refusal names the plan to its members only).
    async fn admit(&self, caller: &micro::auth::Caller, ns: &str, service: &str) -> Result<(), Response<Body>> {
        self.inner.domains.admit(caller, ns, service).await.map_err(|e| json_error(&e))?;
        let member = crate::domains::member(caller, ns);
        self.inner.limits.month(ns, service, member).await.map_err(limited)
    }

    /// The endpoint `endpoint` of `service` (its registrations, when already looked up):
    /// the service's name, its registrations and where the endpoint is among them (the
    /// registrations are shared with the client's cache, so nothing is copied per request).
    async fn resolve(
        &self,
        ns: &str,
        service: &str,
        endpoint: &str,
        known: Option<Arc<Vec<Service>>>,
    ) -> Result<(String, Arc<Vec<Service>>, (usize, usize)), Status> {
        let services = match known {
            Some(s) => s,
            None => self.inner.client.services(service, Some(ns)).await.map_err(|e| {
                if e.code() == Code::NotFound {
                    Status::not_found("api", format!("service {service} not found"))
                } else {
                    e
                }
            })?,
        };
        let found = services
            .iter()
            .enumerate()
            .find_map(|(i, s)| s.endpoints.iter().position(|e| e.name.eq_ignore_ascii_case(endpoint)).map(|j| (i, j)));
        match found {
            Some(at) => Ok((service.to_string(), services, at)),
            None => {
                let mut names: Vec<&str> =
                    services.iter().flat_map(|s| s.endpoints.iter()).map(|e| e.name.as_str()).collect();
                names.sort();
                names.dedup();
                Err(Status::not_found(
                    service,
                    format!("endpoint {endpoint} not found; {service} has: {}", names.join(", ")),
                ))
            }
        }
    }

    /// The declared route (`http` metadata of an endpoint, like `GET /users/{id}`) that
    /// matches a request: the service, the endpoint and the captured segments.
    async fn declared(
        &self,
        ns: &str,
        method: &Method,
        path: &str,
    ) -> Option<(Arc<Vec<DeclaredRoute>>, usize, Vec<(String, String)>)> {
        let routes = self.routes(ns).await;
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let found = routes.iter().enumerate().find_map(|(i, r)| {
            if r.method.as_ref().is_some_and(|m| m != method) || r.segs.len() != segs.len() {
                return None;
            }
            let mut captures = Vec::new();
            for (pattern, seg) in r.segs.iter().zip(&segs) {
                match pattern.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                    Some(name) => captures.push((name.to_string(), micro::form::unescape(seg).ok()?)),
                    None if pattern == seg => {}
                    None => return None,
                }
            }
            Some((i, captures))
        });
        found.map(|(i, captures)| (routes, i, captures))
    }

    /// The declared routes of a namespace, cached for a second.
    async fn routes(&self, ns: &str) -> Arc<Vec<DeclaredRoute>> {
        if let Some((at, r)) = self.inner.routes.lock().unwrap_or_else(|e| e.into_inner()).get(ns)
            && at.elapsed() < ROUTES_TTL
        {
            return r.clone();
        }
        let mut services = self.inner.registry.list_services(ns).await.unwrap_or_default();
        // The products' routes (like the database's `/db/v1/…`) answer in every namespace
        // that has no service of the product's name itself, after its own.
        if ns != micro_core::namespace::DEFAULT {
            let products = self.inner.registry.list_services(micro_core::namespace::DEFAULT).await.unwrap_or_default();
            let own: Vec<String> = services.iter().map(|s| s.name.clone()).collect();
            services.extend(
                products
                    .into_iter()
                    .filter(|p| crate::products::NAMES.contains(&p.name.as_str()) && !own.contains(&p.name)),
            );
        }
        let mut routes = Vec::new();
        for s in &services {
            for ep in &s.endpoints {
                let Some(spec) = ep.metadata.get("http") else { continue };
                for one in spec.split(';').map(str::trim).filter(|r| !r.is_empty()) {
                    let (method, path) = one.split_once(' ').unwrap_or(("*", one));
                    let method = if method == "*" { None } else { method.parse::<Method>().ok() };
                    let segs = path.split('/').filter(|s| !s.is_empty()).map(str::to_string).collect();
                    routes.push(DeclaredRoute { method, segs, service: s.name.clone(), endpoint: ep.clone() });
                }
            }
        }
        let routes = Arc::new(routes);
        let mut cache = self.inner.routes.lock().unwrap_or_else(|e| e.into_inner());
        // Names anyone may send (a header, a host) fill it no further than this.
        if cache.len() >= MAX_ROUTE_NAMESPACES {
            cache.retain(|_, (at, _)| at.elapsed() < ROUTES_TTL);
            if cache.len() >= MAX_ROUTE_NAMESPACES {
                cache.clear();
            }
        }
        cache.insert(ns.to_string(), (Instant::now(), routes.clone()));
        drop(cache);
        routes
    }

    /// Calls `ep` of `service` with the request's body, query and captured path segments.
    async fn invoke(
        &self,
        req: Request<Incoming>,
        ns: String,
        service: String,
        ep: &Endpoint,
        captures: Vec<(String, String)>,
    ) -> Response<Body> {
        if let Some(kind) = ep.stream().filter(|_| crate::websocket::requested(req.headers())) {
            let query = req.uri().query().filter(|q| !q.is_empty());
            let first = if query.is_none() && captures.is_empty() {
                None
            } else {
                match build_request(b"", query, &captures, &ep.request) {
                    Ok(f) => Some(f),
                    Err(e) => return json_error(&e.or_id(&service)),
                }
            };
            let opts = match self.call_options(ns, &service, req.headers()) {
                Ok(o) => o,
                Err(e) => return json_error(&e),
            };
            let labels = crate::usage::Labels {
                service: service.clone(),
                endpoint: ep.name.clone(),
                ..req.extensions().get::<crate::usage::Labels>().cloned().unwrap_or_default()
            };
            let call = crate::websocket::Call {
                client: self.inner.client.clone(),
                service: service.clone(),
                endpoint: ep.name.clone(),
                kind: kind.to_string(),
                first,
                opts,
                meter: self.inner.meter.clone(),
                labels,
            };
            return crate::websocket::upgrade(req, call);
        }
        let (parts, body) = req.into_parts();
        let body = match Limited::new(body, self.inner.body_limit).collect().await {
            Ok(c) => {
                let body = c.to_bytes();
                if let Some(b) = parts.extensions.get::<crate::usage::BytesIn>() {
                    b.0.store(body.len() as u64, std::sync::atomic::Ordering::Relaxed);
                }
                body
            }
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return self.too_large();
            }
            Err(e) => {
                return json_error(
                    &Status::new(Code::Cancelled, "api", format!("reading the request body: {e}"))
                        .with_http_status(400),
                );
            }
        };
        let request = match build_request(&body, parts.uri.query(), &captures, &ep.request) {
            Ok(r) => r,
            Err(e) => return json_error(&e.or_id(&service)),
        };
        let opts = match self.call_options(ns, &service, &parts.headers) {
            Ok(o) => o,
            Err(e) => return json_error(&e),
        };
        let ep_name: Arc<str> = Arc::from(ep.name.as_str());
        let start = Instant::now();
        if ep.stream().is_some() {
            return self.sse(&service, &ep.name, request, opts).await;
        }
        let result = self.inner.client.call_raw(&service, &ep.name, CONTENT_TYPE_GRPC_JSON, request, &opts).await;
        let code = result.as_ref().err().map(|e| e.code()).unwrap_or(Code::Ok);
        self.inner.metrics.observe(&format!("api:{service}"), &ep_name, code, start.elapsed());
        match result {
            Ok(b) if is_empty_json(&b) => {
                let mut res = Response::new(Body::empty());
                *res.status_mut() = StatusCode::NO_CONTENT;
                res
            }
            Ok(b) => json(StatusCode::OK, b),
            Err(e) => json_error(&e),
        }
    }

    /// The call options of a request to `service`: its namespace, the forwarded headers
    /// and the caller's credentials.
    fn call_options(&self, ns: String, service: &str, headers: &http::HeaderMap) -> Result<CallOptions, Status> {
        let mut opts = CallOptions { namespace: Some(ns), ..Default::default() };
        for h in FORWARDED {
            if let Some(v) = headers.get(h).and_then(|v| v.to_str().ok()) {
                opts.metadata.push((h.to_string(), v.to_string()));
            }
        }
        // The core (through this server's proxy) counts failed logins by the address the
        // gateway stamped from the connection; the key vouches for it, and goes nowhere else.
        if crate::CORE_SERVICES.contains(&service) {
            let key = self.inner.edge_key.value().to_string();
            opts.metadata.push((micro::edge::EDGE_KEY.to_string(), key));
        }
        // A browser's `micro-token` cookie stands for the bearer header, but only on a
        // request a page of another site cannot send without a CORS preflight (JSON, or
        // a micro-namespace header): cookies alone must not authorise a cross-site form post.
        let token = micro::auth::bearer(headers)
            .or_else(|| micro::auth::cookie_token(headers).filter(|_| preflighted(headers)));
        if let Some(token) = token {
            let ns = opts.namespace.as_deref().unwrap_or(micro_core::namespace::DEFAULT);
            let token = self.credentials(&token, ns, service)?;
            opts.metadata.push(("authorization".into(), format!("Bearer {token}")));
        }
        Ok(opts)
    }

    /// The token a call to `service` carries for the caller's `token`: the caller's own for
    /// the server's core services (this process), else one delegated to that service
    /// alone, so a service's node never holds a token it could use anywhere else.
    fn credentials(&self, token: &str, ns: &str, service: &str) -> Result<String, Status> {
        if crate::CORE_SERVICES.contains(&service) {
            return Ok(token.to_string());
        }
        self.inner.auth.delegate(token, &format!("{ns}/{service}"))
    }

    /// Server-sent events for streaming endpoints: one `data:` line per message.
    async fn sse(&self, service: &str, endpoint: &str, request: Bytes, opts: CallOptions) -> Response<Body> {
        let stream =
            match self.inner.client.stream_json(service, endpoint, futures::stream::iter([request]), &opts).await {
                Ok(s) => s,
                Err(e) => return json_error(&e),
            };
        let events = stream.map(|m| {
            let chunk = match m {
                Ok(b) => {
                    let mut out = Vec::with_capacity(b.len() + 8);
                    out.extend_from_slice(b"data: ");
                    out.extend_from_slice(&b);
                    out.extend_from_slice(b"\n\n");
                    out
                }
                Err(e) => {
                    let mut out = b"event: error\ndata: ".to_vec();
                    out.extend_from_slice(&e.to_json());
                    out.extend_from_slice(b"\n\n");
                    out
                }
            };
            Ok::<_, Status>(http_body::Frame::data(Bytes::from(chunk)))
        });
        let mut res = Response::new(Body::new(StreamBody::new(events)));
        res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        res
    }

    /// `GET /openapi.json` (every service of the caller's namespace) or
    /// `GET /openapi/{service}.json`: what the namespace's rules let the caller list.
    async fn openapi(&self, caller: &micro::auth::Caller, path: &str, headers: &http::HeaderMap) -> Response<Body> {
        let listing = micro_core::auth::Resource::new("service", "registry", "Registry.ListServices");
        if let Err(e) = self.inner.authorizer.decide(caller, micro::auth::Protection::Rules, &listing).await {
            return json_error(&e);
        }
        let one = match path.strip_prefix("/openapi/").map(|p| p.strip_suffix(".json")) {
            None => None,
            Some(Some(name)) if micro_core::registry::validate_name(name).is_ok() => Some(name.to_string()),
            Some(_) => return json_error(&Status::not_found("api", format!("no OpenAPI document at {path}"))),
        };
        let ns = &caller.namespace;
        let mut services = match self.inner.registry.list_services(ns).await {
            Ok(s) => s,
            Err(e) => return json_error(&e),
        };
        if let Some(name) = &one {
            services.retain(|s| &s.name == name);
            if services.is_empty() {
                return json_error(&Status::not_found("api", format!("no service {name} in namespace {ns}")));
            }
        }
        let scheme = if headers.get("x-forwarded-proto").is_some_and(|v| v == "https") { "https" } else { "http" };
        let server = headers.get(header::HOST).and_then(|h| h.to_str().ok()).map(|h| format!("{scheme}://{h}"));
        let title = match &one {
            Some(name) => format!("{name} (namespace {ns})"),
            None => format!("Namespace {ns}"),
        };
        let doc = crate::openapi::document(&title, server.as_deref(), &services);
        json(StatusCode::OK, Bytes::from(doc.to_string()))
    }

    /// An HTTP node of `service` other than `failed`, from the registry's latest word.
    async fn another_http_node(&self, ns: &str, service: &str, failed: &str) -> Option<String> {
        let services = self.inner.client.services(service, Some(ns)).await.ok()?;
        let others: Vec<Service> = services
            .iter()
            .map(|s| Service { nodes: s.nodes.iter().filter(|n| n.address != failed).cloned().collect(), ..s.clone() })
            .collect();
        self.http_node(&others)
    }

    fn http_node(&self, services: &[Service]) -> Option<String> {
        let nodes: Vec<&str> = services
            .iter()
            .flat_map(|s| s.nodes.iter())
            .filter(|n| n.metadata.get("protocol").is_some_and(|p| p == "http"))
            .map(|n| n.address.as_str())
            .collect();
        if nodes.is_empty() {
            return None;
        }
        let i = self.inner.next.fetch_add(1, Ordering::Relaxed);
        Some(nodes[i % nodes.len()].to_string())
    }

    /// Forwards a request to an HTTP service, stripping the `/{service}` prefix. The
    /// platform's cookies and the caller's own token stay here (the service gets a token
    /// delegated to it alone), and the service cannot set the platform's cookies.
    async fn reverse_proxy(&self, req: Request<Incoming>, ns: &str, service: &str, addr: &str) -> Response<Body> {
        if let Err(e) = self.inner.targets.check_literal(addr).and_then(|()| self.inner.targets.local.admit(ns, addr)) {
            return json_error(&e.with_http_status(502));
        }
        let (mut parts, body) = req.into_parts();
        let token = token_of(&parts.headers);
        parts.headers.remove(header::AUTHORIZATION);
        strip_platform_cookies(&mut parts.headers);
        for h in micro::auth::authorizer::IDENTITY_HEADERS {
            parts.headers.remove(h);
        }
        // HTTP services are never core services: always a delegated token.
        if let Some(token) = token {
            match self.inner.auth.delegated_header(&token, &format!("{ns}/{service}")) {
                Ok(v) => {
                    parts.headers.insert(header::AUTHORIZATION, v);
                }
                Err(e) => return json_error(&e),
            }
        }
        let pq = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let rest = pq.strip_prefix('/').and_then(|p| p.strip_prefix(service)).unwrap_or("");
        let rest = if rest.is_empty() || rest.starts_with('?') { format!("/{rest}") } else { rest.to_string() };
        parts.uri = match node_uri(addr, &rest) {
            Some(u) => u,
            None => return json_error(&Status::bad_request("api", "bad request path")),
        };
        parts.version = http::Version::HTTP_11;
        for h in ["connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te"] {
            parts.headers.remove(h);
        }
        // A bodiless GET or HEAD that reached no node (one stopping in a rolling update,
        // say) is sent once more, to another node: it cannot have done anything.
        let replay = (matches!(parts.method, Method::GET | Method::HEAD)
            && http_body::Body::size_hint(&body).exact() == Some(0))
        .then(|| (parts.method.clone(), parts.headers.clone()));
        let mut body = Body::new(Limited::new(body, self.inner.body_limit));
        if let Some(b) = parts.extensions.get::<crate::usage::BytesIn>() {
            body = b.count(body);
        }
        let mut sent = self.inner.http.request(Request::from_parts(parts, body)).await;
        if let (Err(e), Some((method, headers))) = (&sent, replay)
            && let Some(other) = self.another_http_node(ns, service, addr).await
            && let Some(uri) = node_uri(&other, &rest)
        {
            tracing::debug!(service, node = %addr, error = %e, "HTTP node unreachable; sending to {other}");
            let mut again = Request::new(Body::empty());
            *again.method_mut() = method;
            *again.uri_mut() = uri;
            *again.headers_mut() = headers;
            *again.version_mut() = http::Version::HTTP_11;
            sent = self.inner.http.request(again).await;
        }
        match sent {
            Ok(mut res) => {
                let set: Vec<HeaderValue> = res.headers().get_all(header::SET_COOKIE).iter().cloned().collect();
                res.headers_mut().remove(header::SET_COOKIE);
                for v in set {
                    let name = v.to_str().ok().and_then(|c| c.split('=').next()).unwrap_or("micro-");
                    if !platform_cookie(name) {
                        res.headers_mut().append(header::SET_COOKIE, v);
                    }
                }
                res.map(Body::new)
            }
            Err(e) => {
                let mut src: Option<&dyn std::error::Error> = std::error::Error::source(&e);
                while let Some(s) = src {
                    if s.is::<http_body_util::LengthLimitError>() {
                        return self.too_large();
                    }
                    src = s.source();
                }
                json_error(
                    &Status::unavailable(service, format!("{service} at {addr} is unreachable: {e}"))
                        .with_http_status(502),
                )
            }
        }
    }

    /// The 413 answer to a body over the limit.
    fn too_large(&self) -> Response<Body> {
        let detail = format!("request body larger than {} bytes", self.inner.body_limit);
        json_error(&Status::new(Code::ResourceExhausted, "api", detail).with_http_status(413))
    }

    fn preflight(&self, req: &Request<Incoming>) -> Response<Body> {
        let mut res = Response::new(Body::empty());
        *res.status_mut() = StatusCode::NO_CONTENT;
        let h = res.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, PUT, PATCH, DELETE, OPTIONS"),
        );
        let allow = req
            .headers()
            .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
            .cloned()
            .unwrap_or(HeaderValue::from_static("authorization, content-type, micro-namespace"));
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, allow);
        h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
        res
    }

    fn cors(&self, origin: Option<&HeaderValue>, res: &mut Response<Body>) {
        let Some(origin) = origin else { return };
        let h = res.headers_mut();
        if self.inner.cors.iter().any(|o| o == "*") {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
        } else if self.inner.cors.iter().any(|o| origin.to_str().is_ok_and(|v| v == o)) {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
            h.insert(header::VARY, HeaderValue::from_static("Origin"));
        }
    }
}

/// Whether a browser would have preflighted this request had it come from another
/// origin: a JSON body or a `micro-namespace` header (headers the server adds itself,
/// like `micro-client-address`, do not count).
fn preflighted(headers: &http::HeaderMap) -> bool {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.trim_start().to_ascii_lowercase().starts_with("application/json"));
    json || headers.contains_key(micro_core::metadata::NAMESPACE)
}

/// `res`, metered under `tag`.
fn tagged(mut res: Response<Body>, tag: Tag) -> Response<Body> {
    res.extensions_mut().insert(tag);
    res
}

fn json(status: StatusCode, body: Bytes) -> Response<Body> {
    let mut res = Response::new(Body::new(Full::new(body)));
    *res.status_mut() = status;
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res
}

fn is_empty_json(b: &[u8]) -> bool {
    let t: Vec<u8> = b.iter().copied().filter(|c| !c.is_ascii_whitespace()).collect();
    t == b"{}" || t == b"null" || t.is_empty()
}

/// The JSON request: the body object, with query values (`a.b=c`, typed by the
/// endpoint's schema) merged in.
pub fn build_request(
    body: &[u8],
    query: Option<&str>,
    captures: &[(String, String)],
    schema: &Value,
) -> Result<Bytes, Status> {
    // The common case, a JSON object body and nothing to merge in, goes through as it is
    // once checked: no tree of values is built and printed again.
    if query.is_none_or(str::is_empty)
        && captures.is_empty()
        && body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
        && serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok()
    {
        return Ok(Bytes::copy_from_slice(body));
    }
    let mut obj = if body.iter().all(u8::is_ascii_whitespace) {
        Map::new()
    } else {
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(o)) => o,
            Ok(_) => return Err(Status::bad_request("api", "the request body must be a JSON object")),
            Err(e) => return Err(Status::bad_request("api", format!("malformed JSON body: {e}"))),
        }
    };
    if let Some(q) = query {
        for (k, v) in micro::form::pairs(q)? {
            let path: Vec<&str> = k.split('.').collect();
            if path.iter().any(|p| p.is_empty()) {
                return Err(Status::bad_request("api", format!("invalid query parameter {k:?}")));
            }
            set_path(&mut obj, &path, &v, schema)?;
        }
    }
    for (k, v) in captures {
        set_path(&mut obj, &[k.as_str()], v, schema)?;
    }
    serde_json::to_vec(&Value::Object(obj)).map(Bytes::from).map_err(|e| Status::internal("api", e.to_string()))
}

fn field_schema<'a>(schema: &'a Value, name: &str) -> Option<&'a Value> {
    schema.get("properties")?.get(name)
}

/// A field's JSON type: its schema's `type`, or the first besides `null` of an optional
/// field's (`["boolean", "null"]`).
fn type_of(schema: Option<&Value>) -> Option<&str> {
    match schema?.get("type")? {
        Value::Array(types) => types.iter().filter_map(Value::as_str).find(|t| *t != "null"),
        t => t.as_str(),
    }
}

fn typed(v: &str, schema: Option<&Value>, name: &str) -> Result<Value, Status> {
    let ty = type_of(schema).unwrap_or("string");
    let bad = |what: &str| Status::bad_request("api", format!("{name}: {v:?} is not {what}"));
    Ok(match ty {
        "integer" => Value::from(v.parse::<i64>().map_err(|_| bad("an integer"))?),
        "number" => serde_json::Number::from_f64(v.parse::<f64>().map_err(|_| bad("a number"))?)
            .map(Value::Number)
            .ok_or_else(|| bad("a finite number"))?,
        "boolean" => Value::Bool(match v {
            "true" | "1" | "" => true,
            "false" | "0" => false,
            _ => return Err(bad("a boolean")),
        }),
        "object" => {
            serde_json::from_str::<Value>(v).ok().filter(Value::is_object).ok_or_else(|| bad("a JSON object"))?
        }
        _ => Value::String(v.to_string()),
    })
}

fn set_path(obj: &mut Map<String, Value>, path: &[&str], v: &str, schema: &Value) -> Result<(), Status> {
    let name = path[0];
    let fs = field_schema(schema, name);
    if path.len() == 1 {
        if type_of(fs) == Some("array") {
            let item = typed(v, fs.and_then(|s| s.get("items")), name)?;
            match obj.entry(name.to_string()).or_insert_with(|| Value::Array(vec![])) {
                Value::Array(a) => a.push(item),
                other => *other = Value::Array(vec![item]),
            }
        } else {
            obj.insert(name.to_string(), typed(v, fs, name)?);
        }
        return Ok(());
    }
    let child = obj.entry(name.to_string()).or_insert_with(|| Value::Object(Map::new()));
    let Value::Object(child) = child else {
        return Err(Status::bad_request("api", format!("{name} is not an object")));
    };
    set_path(child, &path[1..], v, fs.unwrap_or(&Value::Null))
}

/// The 429 of a request over a rate limit: the JSON error body, `Retry-After` and the
/// IETF draft's `RateLimit-Policy` and `RateLimit` headers.
fn limited(r: crate::ratelimit::Refused) -> Response<Body> {
    let mut res = json_error(&r.status);
    let h = res.headers_mut();
    h.insert(header::RETRY_AFTER, HeaderValue::from(r.retry_after));
    if let (Ok(policy), Ok(state)) = (HeaderValue::from_str(&r.policy), HeaderValue::from_str(&r.state)) {
        h.insert("ratelimit-policy", policy);
        h.insert("ratelimit", state);
    }
    res
}

/// Which gateway answers are compressed (gzip, brotli or zstd, by `Accept-Encoding`):
/// those of a known size of at least this many bytes that are not gRPC, images or
/// server-sent events. A reply of unknown size (a streamed one) is passed as it comes,
/// so nothing a client waits for is held in a compressor's buffer.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Compressible(pub(crate) u64);

impl tower_http::compression::Predicate for Compressible {
    fn should_compress<B: http_body::Body>(&self, response: &Response<B>) -> bool {
        let size = response.body().size_hint().exact().or_else(|| {
            response.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok())
        });
        let ct = response.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        let kind = ct.split(';').next().unwrap_or("").trim();
        size.is_some_and(|n| n >= self.0)
            && !kind.starts_with("application/grpc")
            && !kind.starts_with("image/")
            && kind != "text/event-stream"
    }
}

/// The URI of `rest` (path and query) at the HTTP node `addr` (`host:port` or a base URL).
fn node_uri(addr: &str, rest: &str) -> Option<http::Uri> {
    let base = if addr.contains("://") { addr.to_string() } else { format!("http://{addr}") };
    format!("{}{rest}", base.trim_end_matches('/')).parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn path_rules() {
        let r = |p: &str| route(p).map(|(s, e)| format!("{s} {e}"));
        assert_eq!(r("/foo").as_deref(), Some("foo Foo.Call"));
        assert_eq!(r("/foo/bar").as_deref(), Some("foo Foo.Bar"));
        assert_eq!(r("/foo/bar/baz").as_deref(), Some("foo Bar.Baz"));
        assert_eq!(r("/foo/get-user").as_deref(), Some("foo Foo.GetUser"));
        assert_eq!(r("/helloworld/greeter/hello").as_deref(), Some("helloworld Greeter.Hello"));
        assert_eq!(r("/v1/foo/bar").as_deref(), Some("v1.foo Foo.Bar"));
        assert_eq!(r("/v1/foo").as_deref(), Some("v1.foo Foo.Call"));
        assert_eq!(r("/a/b/c/d").as_deref(), Some("a.b C.D"));
        assert_eq!(r("/"), None);
        assert_eq!(r("/foo/../etc"), None);
        assert_eq!(r("/foo/%2e%2e"), None);
    }

    #[test]
    fn namespaces_from_header_and_host() {
        let mut h = http::HeaderMap::new();
        h.insert("host", HeaderValue::from_static("foo.example.com:8080"));
        assert_eq!(namespace(&h), "foo");
        h.insert("micro-namespace", HeaderValue::from_static("bar"));
        assert_eq!(namespace(&h), "bar");
        let mut h = http::HeaderMap::new();
        h.insert("host", HeaderValue::from_static("127.0.0.1:8080"));
        assert_eq!(namespace(&h), "micro");
        h.insert("host", HeaderValue::from_static("localhost:8080"));
        assert_eq!(namespace(&h), "micro");
    }

    #[test]
    fn request_from_body_and_query() {
        let schema = json!({"type":"object","properties":{
            "name":{"type":"string"},"count":{"type":"integer"},"ok":{"type":"boolean"},
            "tags":{"type":"array","items":{"type":"string"}},
            "page":{"type":"object","properties":{"size":{"type":"integer"}}}}});
        let b = build_request(
            br#"{"name":"Alice"}"#,
            Some("count=3&ok=false&tags=a&tags=b&page.size=10&x=y%20z"),
            &[],
            &schema,
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v, json!({"name":"Alice","count":3,"ok":false,"tags":["a","b"],"page":{"size":10},"x":"y z"}));
        // An optional field's type is a list with null.
        let optional = json!({"properties":{"total":{"type":["boolean","null"]},"page":{"type":["integer","null"]}}});
        let b = build_request(b"", Some("total=true&page=2"), &[], &optional).unwrap();
        assert_eq!(serde_json::from_slice::<Value>(&b).unwrap(), json!({"total":true,"page":2}));
        // An object body alone passes through unchanged; a broken one still fails.
        let raw = b" {\"name\": \"Bob\",\n \"x\": [1, {\"y\": null}]}";
        assert_eq!(&build_request(raw, None, &[], &schema).unwrap()[..], &raw[..]);
        assert_eq!(&build_request(raw, Some(""), &[], &schema).unwrap()[..], &raw[..]);
        assert!(build_request(b"{\"a\":1} trailing", None, &[], &schema).is_err());
        assert!(build_request(b"{\"a\":1}{", None, &[], &schema).is_err());
        assert!(build_request(b"{\"a\":", None, &[], &schema).is_err());
        assert!(build_request(b"[1]", None, &[], &schema).is_err());
        assert!(build_request(b"{bad", None, &[], &schema).is_err());
        assert!(build_request(b"", Some("count=abc"), &[], &schema).is_err());
        assert!(build_request(b"", Some("a..b=1"), &[], &schema).is_err());
        assert!(build_request(b"", Some("name=%ff"), &[], &schema).is_err());
        assert!(build_request(b"", Some("name=%"), &[], &schema).is_err(), "a lone % is a malformed escape");
    }
}
