//! Request metrics: counts, errors and latency per service, endpoint and code, exposed in
//! the OpenMetrics text format (which Prometheus scrapes) through `prometheus-client`.

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use micro_core::Code;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

const BUCKETS: [f64; 10] = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0];

/// The content type of [`Metrics::render`].
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A label value shared without copying.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct Label(Arc<str>);

impl EncodeLabelValue for Label {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(&self.0)
    }
}

/// A status code as a label value (`Ok`, `NotFound`, …).
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct CodeLabel(Code);

impl EncodeLabelValue for CodeLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        write!(encoder, "{}", self.0)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Endpoint {
    service: Label,
    endpoint: Label,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    service: Label,
    endpoint: Label,
    code: CodeLabel,
}

/// A family of gauges labelled by `(name, value)` pairs ([`Metrics::gauges`]).
pub type Gauges = Family<Vec<(String, String)>, Gauge<f64, AtomicU64>>;

/// What sets gauges before a scrape ([`Metrics::on_scrape`]).
type Refresh = Box<dyn Fn() + Send + Sync>;

struct Inner {
    registry: std::sync::Mutex<Registry>,
    refresh: std::sync::Mutex<Vec<Refresh>>,
    requests: Family<Outcome, Counter>,
    durations: Family<Endpoint, Histogram, fn() -> Histogram>,
    total: AtomicU64,
    errors: AtomicU64,
}

/// A shared metrics registry. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl Default for Metrics {
    fn default() -> Self {
        let requests = Family::<Outcome, Counter>::default();
        let durations: Family<Endpoint, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(|| Histogram::new(BUCKETS));
        let mut registry = Registry::default();
        registry.register("micro_requests", "Requests handled, by service, endpoint and status code", requests.clone());
        registry.register(
            "micro_request_duration_seconds",
            "Time to the response headers (unary: the whole call)",
            durations.clone(),
        );
        Metrics {
            inner: Arc::new(Inner {
                registry: std::sync::Mutex::new(registry),
                refresh: std::sync::Mutex::default(),
                requests,
                durations,
                total: AtomicU64::new(0),
                errors: AtomicU64::new(0),
            }),
        }
    }
}

/// Totals across all series.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Requests served.
    pub requests: u64,
    /// Requests that ended with an error code.
    pub errors: u64,
}

impl Metrics {
    /// Records one finished request.
    pub fn observe(&self, service: &str, endpoint: &Arc<str>, code: Code, elapsed: Duration) {
        let (service, endpoint) = (Label(Arc::from(service)), Label(endpoint.clone()));
        self.inner
            .durations
            .get_or_create(&Endpoint { service: service.clone(), endpoint: endpoint.clone() })
            .observe(elapsed.as_secs_f64());
        self.inner.requests.get_or_create(&Outcome { service, endpoint, code: CodeLabel(code) }).inc();
        self.inner.total.fetch_add(1, Ordering::Relaxed);
        if code != Code::Ok {
            self.inner.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Totals across every series.
    pub fn totals(&self) -> Totals {
        Totals { requests: self.inner.total.load(Ordering::Relaxed), errors: self.inner.errors.load(Ordering::Relaxed) }
    }

    /// The answer to a scrape (`GET /metrics`): [`Metrics::render`] as [`CONTENT_TYPE`].
    pub fn response(&self) -> http::Response<tonic::body::Body> {
        let body = http_body_util::Full::new(Bytes::from(self.render()));
        let mut res = http::Response::new(tonic::body::Body::new(body));
        res.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(CONTENT_TYPE));
        res
    }

    /// A family of gauges, `name` (prefixed `micro_` by the caller's choice) with `help`;
    /// set them when they change, or in [`Metrics::on_scrape`].
    pub fn gauges(&self, name: &str, help: &str) -> Gauges {
        let family = Gauges::default();
        self.inner.registry.lock().unwrap_or_else(|e| e.into_inner()).register(name, help, family.clone());
        family
    }

    /// Runs `refresh` before every scrape (to set gauges read from elsewhere: keep it
    /// quick, it holds the scrape up).
    pub fn on_scrape(&self, refresh: impl Fn() + Send + Sync + 'static) {
        self.inner.refresh.lock().unwrap_or_else(|e| e.into_inner()).push(Box::new(refresh));
    }

    /// The text exposition of every series ([`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        for refresh in self.inner.refresh.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            refresh();
        }
        let mut out = String::new();
        let registry = self.inner.registry.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
            tracing::warn!(error = %e, "encoding the metrics failed");
        }
        out
    }
}

/// A response body that records the call when its gRPC trailers (or its end) arrive.
pub(crate) struct ObservedBody<B> {
    inner: B,
    pending: Option<(Metrics, Arc<str>, Arc<str>, Instant)>,
}

impl<B> ObservedBody<B> {
    pub(crate) fn new(inner: B, metrics: Metrics, service: Arc<str>, endpoint: Arc<str>, start: Instant) -> Self {
        ObservedBody { inner, pending: Some((metrics, service, endpoint, start)) }
    }

    fn finish(&mut self, code: Code) {
        if let Some((m, s, e, start)) = self.pending.take() {
            m.observe(&s, &e, code, start.elapsed());
        }
    }
}

impl<B: HttpBody<Data = Bytes> + Unpin> HttpBody for ObservedBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(t) = f.trailers_ref() {
                    let code = match micro_core::Status::from_grpc_headers(t) {
                        Some(Err(s)) => s.code(),
                        _ => Code::Ok,
                    };
                    self.finish(code);
                }
            }
            Poll::Ready(Some(Err(_))) => self.finish(Code::Cancelled),
            Poll::Ready(None) => self.finish(Code::Ok),
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for ObservedBody<B> {
    fn drop(&mut self) {
        // A body dropped before its end: the client went away.
        self.finish(Code::Cancelled);
    }
}
