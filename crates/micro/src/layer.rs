//! The layers every call passes through, as tower layers shared by the client, every
//! service's server, the gateway and the proxy:
//!
//! - [`TraceLayer`]: makes sure the call carries a request id (`micro-id`) and a W3C
//!   `traceparent`, and runs it inside a `tracing` span holding both;
//! - [`AuthLayer`]: runs an [`Authorize`] hook that may refuse the call or rewrite its
//!   metadata (a server checks credentials, a client attaches them);
//! - [`DeadlineLayer`]: enforces `grpc-timeout` (and sets it from a default when absent),
//!   answering `deadline_exceeded` when it passes;
//! - [`MetricsLayer`]: records every call by service, endpoint and code.
//!
//! A refusal is answered in the caller's protocol: gRPC trailers for gRPC, the JSON error
//! body for HTTP, or an error value on the client side (see [`Reject`]).

use crate::metrics::{Metrics, ObservedBody};
use crate::router::{json_error, split_grpc_path};
use futures::future::BoxFuture;
use http::{HeaderValue, Request, Response, header};
use micro_core::metadata::{CONTENT_TYPE_GRPC, CONTENT_TYPE_GRPC_JSON, GRPC_TIMEOUT, REQUEST_ID, TRACEPARENT};
use micro_core::{Code, Status};
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tonic::body::Body;
use tower::{Layer, Service};
use tracing::Instrument;

/// How a layer refuses a call: the outcome it returns instead of calling inward.
pub trait Reject: Sized {
    /// The outcome for `status`, given the request's content type.
    fn reject(status: Status, content_type: &str) -> Self;
}

impl Reject for Result<Response<Body>, Infallible> {
    fn reject(status: Status, content_type: &str) -> Self {
        Ok(error_response(&status, content_type))
    }
}

/// An error answer in the protocol of `content_type`: gRPC (protobuf or JSON codec) or
/// the JSON error body with the mapped HTTP status.
pub fn error_response(status: &Status, content_type: &str) -> Response<Body> {
    if content_type == CONTENT_TYPE_GRPC_JSON {
        crate::frame::error_response(status, CONTENT_TYPE_GRPC_JSON)
    } else if content_type.starts_with(CONTENT_TYPE_GRPC) {
        crate::frame::error_response(status, CONTENT_TYPE_GRPC)
    } else {
        json_error(status)
    }
}

fn content_type<B>(req: &Request<B>) -> String {
    req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_string()
}

/// A hook that checks (server side) or decorates (client side) a call before it runs.
#[async_trait::async_trait]
pub trait Authorize: Send + Sync + 'static {
    /// Returns an error to refuse the call; may change its headers (metadata).
    async fn authorize(&self, request: &mut http::request::Parts) -> Result<(), Status>;
}

/// Runs an [`Authorize`] hook before the call.
#[derive(Clone)]
pub struct AuthLayer {
    hook: Arc<dyn Authorize>,
}

impl AuthLayer {
    /// A layer running `hook`.
    pub fn new(hook: Arc<dyn Authorize>) -> AuthLayer {
        AuthLayer { hook }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;
    fn layer(&self, inner: S) -> Auth<S> {
        Auth { inner, hook: self.hook.clone() }
    }
}

/// The service of [`AuthLayer`].
#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    hook: Arc<dyn Authorize>,
}

impl<S, B> Service<Request<B>> for Auth<S>
where
    S: Service<Request<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    Result<S::Response, S::Error>: Reject,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // The ready service goes with this call; a fresh clone waits for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let hook = self.hook.clone();
        Box::pin(async move {
            let ct = content_type(&req);
            let (mut parts, body) = req.into_parts();
            match hook.authorize(&mut parts).await {
                Ok(()) => inner.call(Request::from_parts(parts, body)).await,
                Err(st) => Reject::reject(st, &ct),
            }
        })
    }
}

/// Enforces the call's deadline (`grpc-timeout`), setting it from a default when absent.
#[derive(Clone, Default)]
pub struct DeadlineLayer {
    id: Arc<str>,
    default: Option<Duration>,
}

impl DeadlineLayer {
    /// A layer whose errors carry `id` (the service name), with no default deadline.
    pub fn new(id: &str) -> DeadlineLayer {
        DeadlineLayer { id: Arc::from(id), default: None }
    }

    /// Gives calls without a deadline this one.
    pub fn default_timeout(mut self, timeout: Duration) -> DeadlineLayer {
        self.default = Some(timeout).filter(|t| !t.is_zero());
        self
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;
    fn layer(&self, inner: S) -> Deadline<S> {
        Deadline { inner, id: self.id.clone(), default: self.default }
    }
}

/// The service of [`DeadlineLayer`].
#[derive(Clone)]
pub struct Deadline<S> {
    inner: S,
    id: Arc<str>,
    default: Option<Duration>,
}

impl<S, B> Service<Request<B>> for Deadline<S>
where
    S: Service<Request<B>>,
    S::Future: Send + 'static,
    Result<S::Response, S::Error>: Reject,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let given = req
            .headers()
            .get(GRPC_TIMEOUT)
            .and_then(|v| v.to_str().ok())
            .and_then(micro_core::metadata::parse_grpc_timeout);
        let timeout = given.or(self.default);
        if given.is_none()
            && let Some(t) = timeout
            && let Ok(v) = HeaderValue::from_str(&micro_core::metadata::format_grpc_timeout(t))
        {
            req.headers_mut().insert(GRPC_TIMEOUT, v);
        }
        let ct = content_type(&req);
        let id = self.id.clone();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let Some(t) = timeout else { return fut.await };
            match tokio::time::timeout(t, fut).await {
                Ok(r) => r,
                Err(_) => Reject::reject(Status::deadline_exceeded(&*id, format!("deadline of {t:?} exceeded")), &ct),
            }
        })
    }
}

/// Gives every call a request id and trace context, and a span carrying them.
#[derive(Clone)]
pub struct TraceLayer {
    id: Arc<str>,
}

impl TraceLayer {
    /// A layer naming spans after `id` (the service, or `api`/`proxy`/`client`).
    pub fn new(id: &str) -> TraceLayer {
        TraceLayer { id: Arc::from(id) }
    }
}

impl<S> Layer<S> for TraceLayer {
    type Service = Trace<S>;
    fn layer(&self, inner: S) -> Trace<S> {
        Trace { inner, id: self.id.clone() }
    }
}

/// The service of [`TraceLayer`].
#[derive(Clone)]
pub struct Trace<S> {
    inner: S,
    id: Arc<str>,
}

/// The trace id of a valid W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`).
pub fn trace_id(traceparent: &str) -> Option<&str> {
    // Fixed layout: version (2) - trace id (32) - parent id (16) - flags (2), no allocation.
    let b = traceparent.as_bytes();
    if b.len() != 55 || b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
        return None;
    }
    let hex = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_hexdigit);
    let zero = |r: std::ops::Range<usize>| b[r].iter().all(|&c| c == b'0');
    let ok =
        hex(0..2) && &b[0..2] != b"ff" && hex(3..35) && !zero(3..35) && hex(36..52) && !zero(36..52) && hex(53..55);
    if ok { Some(&traceparent[3..35]) } else { None }
}

/// A new sampled `traceparent` with random ids.
pub fn new_traceparent() -> String {
    let [trace, span] = [random_u128(), random_u128()];
    format!("00-{trace:032x}-{:016x}-01", (span as u64) | 1)
}

/// Whether a caller's request id is kept: 1 to 64 letters, digits, `-`, `_`, `.` or `:`.
fn request_id_ok(id: &[u8]) -> bool {
    !id.is_empty() && id.len() <= 64 && id.iter().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b))
}

/// At most `max` bytes of `s` (on a character boundary).
fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A new request id (a version 4 UUID).
pub fn new_request_id() -> String {
    uuid::Builder::from_random_bytes(random_u128().to_le_bytes()).into_uuid().to_string()
}

/// 128 random bits for ids that must be unique, not secret: a per-thread SplitMix64
/// stream seeded once from the OS, so hot paths make no `getrandom` system call per
/// request (it cost 3 of them per gateway request). Never zero.
fn random_u128() -> u128 {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let mut seed = [0u8; 8];
            if getrandom::fill(&mut seed).is_err() {
                seed = uuid::Uuid::new_v4().as_bytes()[..8].try_into().unwrap_or_default();
            }
            u64::from_le_bytes(seed)
        });
    }
    let next = || {
        STATE.with(|s| {
            let v = s.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
            s.set(v);
            let mut z = v;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        })
    };
    let v = (u128::from(next()) << 64) | u128::from(next());
    if v == 0 { 1 } else { v }
}

impl<S, B, RB> Service<Request<B>> for Trace<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Future: Send + 'static,
    S::Error: 'static,
    RB: 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        use opentelemetry::trace::{TraceContextExt as _, Tracer as _};
        let h = req.headers_mut();
        // A caller's request id is kept when it is a short token; anything else (a huge
        // one would sit in every span and log line) is replaced.
        if h.get(REQUEST_ID).is_none_or(|v| !request_id_ok(v.as_bytes()))
            && let Ok(v) = HeaderValue::from_str(&new_request_id())
        {
            h.insert(REQUEST_ID, v);
        }
        let incoming =
            h.get(TRACEPARENT).and_then(|v| v.to_str().ok()).filter(|t| trace_id(t).is_some()).map(str::to_string);
        let path = req.uri().path();
        // With traces on (crate::telemetry), this hop's span: a client's is the child of
        // the context the call is made in unless the call names its parent; a server's,
        // of the caller's `traceparent` (else it starts a trace).
        let cx = crate::telemetry::tracer().map(|tracer| {
            let client = &*self.id == "client";
            let parent = match &incoming {
                Some(tp) => crate::telemetry::remote_parent(tp),
                None if client => opentelemetry::Context::current(),
                None => opentelemetry::Context::new(),
            };
            // gRPC is always POST; an HTTP request's method says what it does.
            let grpc =
                req.headers().get(header::CONTENT_TYPE).is_some_and(|c| c.as_bytes().starts_with(b"application/grpc"));
            let path = cut(path, 200);
            let name =
                if grpc { format!("{} {path}", self.id) } else { format!("{} {} {path}", self.id, req.method()) };
            let request = req.headers().get(REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
            let kind =
                if client { opentelemetry::trace::SpanKind::Client } else { opentelemetry::trace::SpanKind::Server };
            let span = tracer
                .span_builder(name)
                .with_kind(kind)
                .with_attributes([
                    opentelemetry::KeyValue::new("service", self.id.to_string()),
                    opentelemetry::KeyValue::new("request_id", request),
                ])
                .start_with_context(tracer, &parent);
            parent.with_span(span)
        });
        // Everything downstream is a child of this span; without traces, the call keeps
        // (or gets) a trace context all the same.
        let own = cx.as_ref().and_then(crate::telemetry::traceparent_of);
        let context = own.or(incoming).unwrap_or_else(new_traceparent);
        if let Ok(v) = HeaderValue::from_str(&context) {
            req.headers_mut().insert(TRACEPARENT, v);
        }
        // The log's span of the call, at debug.
        let log = if tracing::enabled!(tracing::Level::DEBUG) {
            let request = req.headers().get(REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("");
            let trace = trace_id(&context).unwrap_or("");
            tracing::debug_span!("call", service = %self.id, path = %req.uri().path(), trace_id = %trace, request_id = %request)
        } else {
            tracing::Span::none()
        };
        let Some(cx) = cx else { return Box::pin(self.inner.call(req).instrument(log)) };
        let fut = {
            let _attached = cx.clone().attach();
            self.inner.call(req)
        };
        let done = cx.clone();
        Box::pin(
            opentelemetry::context::FutureExt::with_context(
                async move {
                    let res = fut.await;
                    let span = done.span();
                    if let Ok(r) = &res {
                        let status = r.status().as_u16();
                        span.set_attribute(opentelemetry::KeyValue::new(
                            "http.response.status_code",
                            i64::from(status),
                        ));
                        let grpc = r
                            .headers()
                            .get("grpc-status")
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.parse::<i32>().ok());
                        if let Some(code) = grpc {
                            span.set_attribute(opentelemetry::KeyValue::new("rpc.grpc.status_code", i64::from(code)));
                        }
                        if status >= 500 || grpc.is_some_and(|c| Code::from_grpc(c).http() >= 500) {
                            span.set_status(opentelemetry::trace::Status::error(format!("status {status}")));
                        } else {
                            span.set_status(opentelemetry::trace::Status::Ok);
                        }
                    }
                    span.end();
                    res
                },
                cx,
            )
            .instrument(log),
        )
    }
}

/// Records every call in [`Metrics`] by service, endpoint and code; streamed replies are
/// recorded when their body ends.
#[derive(Clone)]
pub struct MetricsLayer {
    id: Arc<str>,
    metrics: Metrics,
}

impl MetricsLayer {
    /// A layer recording into `metrics` under the service name `id`.
    pub fn new(id: &str, metrics: Metrics) -> MetricsLayer {
        MetricsLayer { id: Arc::from(id), metrics }
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = Measured<S>;
    fn layer(&self, inner: S) -> Measured<S> {
        Measured { inner, id: self.id.clone(), metrics: self.metrics.clone() }
    }
}

/// The service of [`MetricsLayer`].
#[derive(Clone)]
pub struct Measured<S> {
    inner: S,
    id: Arc<str>,
    metrics: Metrics,
}

/// The endpoint (`Handler.Method`) a path names, for gRPC and HTTP JSON calls alike.
fn endpoint_of(path: &str) -> Option<String> {
    if let Some((_, e)) = split_grpc_path(path) {
        return Some(e);
    }
    let (service, endpoint) = path.strip_prefix('/')?.split_once('/')?;
    let (h, m) = endpoint.split_once('.')?;
    (!service.is_empty() && !h.is_empty() && !m.is_empty() && !m.contains(['.', '/'])).then(|| endpoint.to_string())
}

impl<S, B> Service<Request<B>> for Measured<S>
where
    S: Service<Request<B>, Response = Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let grpc = content_type(&req).starts_with(CONTENT_TYPE_GRPC);
        let endpoint = endpoint_of(req.uri().path());
        let (id, metrics) = (self.id.clone(), self.metrics.clone());
        let start = Instant::now();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let res = fut.await?;
            // Unknown paths share one series, so junk requests cannot grow the table.
            let name = |code: Code| -> Arc<str> {
                match &endpoint {
                    Some(e) if !matches!(code, Code::NotFound | Code::Unimplemented) => Arc::from(e.as_str()),
                    _ => Arc::from("_unknown"),
                }
            };
            if !grpc {
                let code = Code::from_http(res.status().as_u16());
                metrics.observe(&id, &name(code), code, start.elapsed());
                return Ok(res);
            }
            if let Some(r) = Status::from_grpc_headers(res.headers()) {
                let code = r.err().map(|s| s.code()).unwrap_or(Code::Ok);
                metrics.observe(&id, &name(code), code, start.elapsed());
                return Ok(res);
            }
            let ep = name(Code::Ok);
            Ok(res.map(|b| Body::new(ObservedBody::new(b, metrics, id, ep, start))))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{ServiceBuilder, ServiceExt};

    struct NeedsToken;

    #[async_trait::async_trait]
    impl Authorize for NeedsToken {
        async fn authorize(&self, req: &mut http::request::Parts) -> Result<(), Status> {
            match req.headers.get("authorization") {
                Some(v) if v == "Bearer ok" => {
                    req.headers.insert("micro-account", HeaderValue::from_static("alice"));
                    Ok(())
                }
                _ => Err(Status::new(Code::Unauthenticated, "test", "a token is required")),
            }
        }
    }

    fn echo_account(req: Request<Body>) -> std::future::Ready<Result<Response<Body>, Infallible>> {
        let who = req.headers().get("micro-account").cloned();
        let mut res = Response::new(Body::empty());
        if let Some(w) = who {
            res.headers_mut().insert("micro-account", w);
        }
        std::future::ready(Ok(res))
    }

    fn request(ct: &str, headers: &[(&'static str, &'static str)]) -> Request<Body> {
        let mut r = Request::post("/test.Handler/Method").header(header::CONTENT_TYPE, ct).body(Body::empty()).unwrap();
        for (k, v) in headers {
            r.headers_mut().insert(*k, HeaderValue::from_static(v));
        }
        r
    }

    #[tokio::test]
    async fn auth_refuses_in_the_callers_protocol_and_may_add_metadata() {
        let svc = ServiceBuilder::new().layer(AuthLayer::new(Arc::new(NeedsToken))).service_fn(echo_account);
        let res = svc.clone().oneshot(request("application/json", &[])).await.unwrap();
        assert_eq!(res.status(), 401);
        let res = svc.clone().oneshot(request("application/grpc", &[])).await.unwrap();
        assert_eq!(res.headers()["grpc-status"], "16");
        let res = svc.oneshot(request("application/json", &[("authorization", "Bearer ok")])).await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["micro-account"], "alice");
    }

    #[tokio::test(start_paused = true)]
    async fn deadlines_from_the_header_or_the_default() {
        let slow = tower::service_fn(|_req: Request<Body>| async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            Ok::<_, Infallible>(Response::new(Body::empty()))
        });
        let svc =
            ServiceBuilder::new().layer(DeadlineLayer::new("t").default_timeout(Duration::from_secs(1))).service(slow);
        let res = svc.clone().oneshot(request("application/grpc", &[("grpc-timeout", "100m")])).await.unwrap();
        assert_eq!(res.headers()["grpc-status"], "4");
        let res = svc.oneshot(request("application/json", &[])).await.unwrap();
        assert_eq!(res.status(), 504);
        // The default is written into the request for the next hop.
        let seen = tower::service_fn(|req: Request<Body>| async move {
            let mut res = Response::new(Body::empty());
            if let Some(v) = req.headers().get("grpc-timeout") {
                res.headers_mut().insert("seen", v.clone());
            }
            Ok::<_, Infallible>(res)
        });
        let svc = DeadlineLayer::new("t").default_timeout(Duration::from_secs(2)).layer(seen);
        let res = svc.oneshot(request("application/grpc", &[])).await.unwrap();
        assert_eq!(res.headers()["seen"], "2000m");
    }

    #[tokio::test]
    async fn trace_context_is_kept_when_valid_and_made_when_not() {
        let seen = tower::service_fn(|req: Request<Body>| async move {
            let mut res = Response::new(Body::empty());
            for k in [TRACEPARENT, REQUEST_ID] {
                if let Some(v) = req.headers().get(k) {
                    res.headers_mut().insert(k, v.clone());
                }
            }
            Ok::<_, Infallible>(res)
        });
        let svc = TraceLayer::new("t").layer(seen);
        // A caller's short request id is kept; a huge or odd one is replaced.
        let res = svc.clone().oneshot(request("application/grpc", &[("micro-id", "req-42")])).await.unwrap();
        assert_eq!(res.headers()[REQUEST_ID], "req-42");
        let huge: &'static str = Box::leak("a".repeat(100).into_boxed_str());
        for bad in [huge, "two words", "a\"b"] {
            let res = svc.clone().oneshot(request("application/grpc", &[("micro-id", bad)])).await.unwrap();
            let id = res.headers()[REQUEST_ID].to_str().unwrap();
            assert!(id != bad && id.len() <= 64, "{bad:?} -> {id}");
        }
        let given = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let res = svc.clone().oneshot(request("application/grpc", &[("traceparent", given)])).await.unwrap();
        assert_eq!(res.headers()[TRACEPARENT], given);
        assert!(!res.headers()[REQUEST_ID].is_empty());
        let res = svc.oneshot(request("application/grpc", &[("traceparent", "junk")])).await.unwrap();
        let made = res.headers()[TRACEPARENT].to_str().unwrap();
        assert!(trace_id(made).is_some(), "{made}");
        assert_ne!(made, "junk");
    }

    #[tokio::test]
    async fn metrics_by_endpoint_with_unknown_paths_in_one_series() {
        let metrics = Metrics::default();
        let not_found = tower::service_fn(|req: Request<Body>| async move {
            let st = if req.uri().path().ends_with("Handler.Method") { Code::Ok } else { Code::NotFound };
            let mut res = Response::new(Body::empty());
            *res.status_mut() = http::StatusCode::from_u16(st.http()).unwrap();
            Ok::<_, Infallible>(res)
        });
        let svc = MetricsLayer::new("t", metrics.clone()).layer(not_found);
        for path in ["/t/Handler.Method", "/t/Junk.One", "/t/Junk.Two", "/nothing"] {
            let req = Request::post(path).header(header::CONTENT_TYPE, "application/json").body(Body::empty()).unwrap();
            svc.clone().oneshot(req).await.unwrap();
        }
        let text = metrics.render();
        assert!(text.contains(r#"endpoint="Handler.Method""#), "{text}");
        assert!(!text.contains("Junk"), "{text}");
        assert_eq!(metrics.totals().requests, 4);
        assert_eq!(metrics.totals().errors, 3);
    }

    #[test]
    fn trace_ids_of_valid_traceparents_only() {
        let ok = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(trace_id(ok), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        for bad in [
            "",
            "junk",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e47é-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
        ] {
            assert_eq!(trace_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn generated_ids_are_valid_and_distinct() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let tp = new_traceparent();
            let trace = trace_id(&tp).unwrap_or_else(|| panic!("invalid traceparent {tp}"));
            assert!(seen.insert(trace.to_string()), "repeated trace id {trace}");
            let id = new_request_id();
            let uuid = uuid::Uuid::parse_str(&id).unwrap();
            assert_eq!(uuid.get_version_num(), 4, "{id}");
            assert!(seen.insert(id));
        }
        // Another thread has its own stream.
        let other = std::thread::spawn(new_traceparent).join().unwrap();
        assert!(!seen.contains(trace_id(&other).unwrap()));
    }
}
