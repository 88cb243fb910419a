//! Traces: a span for every hop of a call — the gateway, the proxy, a service, the core,
//! and each client between them — linked by W3C trace context (`traceparent`), kept in a
//! ring of this process's recent spans (`Debug.Trace`, `micro trace`) and exported over
//! OTLP/gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`)
//! is set. The standard variables apply (`OTEL_SERVICE_NAME`, `OTEL_SDK_DISABLED`,
//! `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_BSP_SCHEDULE_DELAY`, …).
//!
//! [`crate::layer::TraceLayer`] makes the spans with the OpenTelemetry SDK directly (a
//! span is a few allocations, and the ring keeps what the SDK hands over as it is); a
//! client's span is the child of the OpenTelemetry context current where the call is
//! made (the handler's span), a server's of the caller's `traceparent`.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceContextExt as _, TraceFlags, TraceId, TraceState,
};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider, SpanData, SpanProcessor};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, UNIX_EPOCH};

/// How many finished spans a process keeps for `Debug.Trace`.
pub const RING_SIZE: usize = 20_000;

/// One finished span, as `Debug.Trace` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SpanRecord {
    /// The trace (32 hex digits).
    pub trace_id: String,
    /// This span (16 hex digits).
    pub span_id: String,
    /// Its parent ("" for a trace's root).
    #[serde(default)]
    pub parent_id: String,
    /// What it did (`api POST /helloworld/greeter/hello`, `client /store.Store/Write`).
    pub name: String,
    /// The process that recorded it (its service name).
    #[serde(default)]
    pub process: String,
    /// `server`, `client` or `internal`.
    #[serde(default)]
    pub kind: String,
    /// Start, microseconds since the Unix epoch.
    pub start_us: u64,
    /// Duration in microseconds.
    pub duration_us: u64,
    /// `ok`, `error` or `unset`.
    #[serde(default)]
    pub status: String,
    /// Its attributes.
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
}

/// The recent spans of this process.
#[derive(Debug)]
struct Ring {
    spans: Mutex<VecDeque<SpanData>>,
    process: OnceLock<String>,
}

fn ring() -> &'static Ring {
    static RING: OnceLock<Ring> = OnceLock::new();
    RING.get_or_init(|| Ring { spans: Mutex::new(VecDeque::new()), process: OnceLock::new() })
}

/// The spans of `trace_id` among this process's recent ones, oldest first.
pub fn spans_of(trace_id: &str) -> Vec<SpanRecord> {
    let Ok(id) = TraceId::from_hex(trace_id) else { return Vec::new() };
    let r = ring();
    let process = r.process.get().cloned().unwrap_or_default();
    let spans = r.spans.lock().unwrap_or_else(|e| e.into_inner());
    let mut found: Vec<SpanRecord> =
        spans.iter().filter(|s| s.span_context.trace_id() == id).map(|s| record(s, &process)).collect();
    found.sort_by_key(|s| s.start_us);
    found
}

fn micros(t: std::time::SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

/// A span as `Debug.Trace` shows it.
fn record(span: &SpanData, process: &str) -> SpanRecord {
    SpanRecord {
        trace_id: span.span_context.trace_id().to_string(),
        span_id: span.span_context.span_id().to_string(),
        parent_id: if span.parent_span_id == SpanId::INVALID { String::new() } else { span.parent_span_id.to_string() },
        name: span.name.to_string(),
        process: process.to_string(),
        kind: match span.span_kind {
            SpanKind::Server => "server",
            SpanKind::Client => "client",
            SpanKind::Producer => "producer",
            SpanKind::Consumer => "consumer",
            SpanKind::Internal => "internal",
        }
        .to_string(),
        start_us: micros(span.start_time),
        duration_us: span.end_time.duration_since(span.start_time).map(|d| d.as_micros() as u64).unwrap_or(0),
        status: match &span.status {
            Status::Ok => "ok".to_string(),
            Status::Error { .. } => "error".to_string(),
            Status::Unset => "unset".to_string(),
        },
        attributes: span.attributes.iter().map(|kv| (kv.key.to_string(), kv.value.to_string())).collect(),
    }
}

/// Keeps finished spans in the ring, as the SDK hands them over.
#[derive(Debug, Clone, Copy)]
struct RingProcessor;

impl SpanProcessor for RingProcessor {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        let mut spans = ring().spans.lock().unwrap_or_else(|e| e.into_inner());
        if spans.len() >= RING_SIZE {
            spans.pop_front();
        }
        spans.push_back(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }

    fn set_resource(&mut self, resource: &Resource) {
        if let Some(name) = resource.get(&opentelemetry::Key::new("service.name")) {
            let _ = ring().process.set(name.to_string());
        }
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().map(|v| v.trim().to_string()).filter(|v| !v.is_empty())
}

/// Where [`layer`] exports, when the program says so itself (see [`export_to`]).
static ENDPOINT: OnceLock<String> = OnceLock::new();

/// Exports traces to the OTLP/gRPC `endpoint` (like `http://127.0.0.1:4317`) whatever the
/// environment says: for programs configured in code. Call it before the subscriber is
/// installed ([`crate::log::init_with_traces`]); only the first call counts.
pub fn export_to(endpoint: &str) {
    let _ = ENDPOINT.set(endpoint.to_string());
}

/// The tracer provider of this process, once [`layer`] made it.
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// The tracer of this process, once [`init`] made it.
static TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// The tracer [`crate::layer::TraceLayer`] makes spans with; `None` until [`init`].
pub(crate) fn tracer() -> Option<&'static SdkTracer> {
    TRACER.get()
}

/// Turns traces on for this process, named `service` (unless `OTEL_SERVICE_NAME` says
/// otherwise): spans kept in the ring, and exported over OTLP when an endpoint is set.
/// Not with `OTEL_SDK_DISABLED=true`. Only the first call counts; call it inside a Tokio
/// runtime (the OTLP exporter runs on it). Returns whether traces are on.
pub fn init(service: &str) -> bool {
    if env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return false;
    }
    if TRACER.get().is_some() {
        return true;
    }
    let name = env("OTEL_SERVICE_NAME").unwrap_or_else(|| service.to_string());
    let mut builder = SdkTracerProvider::builder()
        .with_resource(Resource::builder().with_service_name(name).build())
        .with_span_processor(RingProcessor);
    let set = ENDPOINT.get().cloned();
    let endpoint = env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| env("OTEL_EXPORTER_OTLP_ENDPOINT"));
    // The exporter reads the endpoint (and headers, timeout, …) from the variables.
    if (set.is_some() || endpoint.is_some()) && tokio::runtime::Handle::try_current().is_ok() {
        use opentelemetry_otlp::WithExportConfig as _;
        let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic();
        if let Some(e) = set {
            exporter = exporter.with_endpoint(e);
        }
        match exporter.build() {
            Ok(e) => builder = builder.with_batch_exporter(e),
            Err(e) => eprintln!("warning: traces are not exported over OTLP: {e}"),
        }
    }
    let provider = builder.build();
    let _ = TRACER.set(provider.tracer("micro"));
    let _ = PROVIDER.set(provider);
    true
}

/// Exports what is left (at exit): the OTLP exporter's last batch.
pub fn flush() {
    if let Some(p) = PROVIDER.get() {
        let _ = p.force_flush();
    }
}

/// The W3C `traceparent` of the span of `cx`, when it has a valid one.
pub fn traceparent_of(cx: &opentelemetry::Context) -> Option<String> {
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| format!("00-{}-{}-{:02x}", sc.trace_id(), sc.span_id(), sc.trace_flags().to_u8()))
}

pub use opentelemetry::Context;
pub use opentelemetry::context::FutureExt;

/// The metadata key under which an event or a broker message carries the trace context
/// of its publish (set by the server's events and broker services).
pub const MESSAGE_TRACEPARENT: &str = "traceparent";

/// The `traceparent` of the span current here (the handler's, in a handler).
pub fn current_traceparent() -> Option<String> {
    traceparent_of(&opentelemetry::Context::current())
}

/// A consumer's span for a message (event or broker message) with `metadata`: the child
/// of its publish (its [`MESSAGE_TRACEPARENT`]), else a new trace; `name` like
/// `orders consume orders.placed`. Run the handling with the returned context current
/// ([`FutureExt::with_context`], or [`Context::attach`]): the calls it makes
/// are the span's children. The span ends when the context's last clone is dropped.
/// Without traces on, the current context.
///
/// ```no_run
/// # async fn handle(d: micro_core::events::Delivery) {
/// use micro::telemetry::FutureExt as _;
/// let cx = micro::telemetry::consumer("orders consume orders.placed", &d.event.metadata);
/// async { /* calls made here are the consumer span's children */ }.with_context(cx).await;
/// # }
/// ```
pub fn consumer(name: &str, metadata: &BTreeMap<String, String>) -> opentelemetry::Context {
    use opentelemetry::trace::Tracer as _;
    let Some(tracer) = tracer() else { return opentelemetry::Context::current() };
    let parent = match metadata.get(MESSAGE_TRACEPARENT) {
        Some(tp) if crate::layer::trace_id(tp).is_some() => remote_parent(tp),
        _ => opentelemetry::Context::new(),
    };
    let span = tracer.span_builder(name.to_string()).with_kind(SpanKind::Consumer).start_with_context(tracer, &parent);
    parent.with_span(span)
}

/// A context whose (remote) span is the `traceparent` `parent` (valid, see
/// [`crate::layer::trace_id`]).
pub fn remote_parent(parent: &str) -> opentelemetry::Context {
    let ids = (parent.len() == 55).then(|| {
        (TraceId::from_hex(&parent[3..35]), SpanId::from_hex(&parent[36..52]), u8::from_str_radix(&parent[53..55], 16))
    });
    match ids {
        Some((Ok(trace), Ok(id), Ok(flags))) => {
            let sc = SpanContext::new(trace, id, TraceFlags::new(flags), true, TraceState::default());
            opentelemetry::Context::new().with_remote_span_context(sc)
        }
        _ => opentelemetry::Context::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_read_back() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(traceparent_of(&remote_parent(tp)).as_deref(), Some(tp));
        assert_eq!(traceparent_of(&remote_parent("junk")), None);
        assert!(spans_of("not hex").is_empty());
    }
}
