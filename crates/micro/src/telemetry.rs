//! Traces: a span for every hop of a call — the gateway, the proxy, a service, the core,
//! and each client between them — linked by W3C trace context (`traceparent`), kept in a
//! ring of this process's recent spans (`Debug.Trace`, `micro trace`) and exported over
//! OTLP/gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`)
//! is set. The standard variables apply (`OTEL_SERVICE_NAME`, `OTEL_SDK_DISABLED`,
//! `OTEL_EXPORTER_OTLP_HEADERS`, …).
//!
//! Spans are `tracing` spans of the target [`SPAN_TARGET`] (made by
//! [`crate::layer::TraceLayer`]), which [`layer`] turns into OpenTelemetry spans; the log
//! shows them only at `debug`.

use opentelemetry::trace::{SpanId, SpanKind, Status, TracerProvider as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanProcessor};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, UNIX_EPOCH};

/// The `tracing` target of the spans that become OpenTelemetry spans.
pub const SPAN_TARGET: &str = "micro::span";

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
    spans: Mutex<VecDeque<SpanRecord>>,
    process: Mutex<String>,
}

fn ring() -> &'static Ring {
    static RING: OnceLock<Ring> = OnceLock::new();
    RING.get_or_init(|| Ring { spans: Mutex::new(VecDeque::new()), process: Mutex::new(String::new()) })
}

/// The spans of `trace_id` among this process's recent ones, oldest first.
pub fn spans_of(trace_id: &str) -> Vec<SpanRecord> {
    let trace_id = trace_id.to_ascii_lowercase();
    let spans = ring().spans.lock().unwrap_or_else(|e| e.into_inner());
    let mut found: Vec<SpanRecord> = spans.iter().filter(|s| s.trace_id == trace_id).cloned().collect();
    found.sort_by_key(|s| s.start_us);
    found
}

/// Keeps finished spans in the ring.
#[derive(Debug, Clone, Copy)]
struct RingProcessor;

fn micros(t: std::time::SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

impl SpanProcessor for RingProcessor {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        let r = ring();
        let process = r.process.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let record = SpanRecord {
            trace_id: span.span_context.trace_id().to_string(),
            span_id: span.span_context.span_id().to_string(),
            parent_id: if span.parent_span_id == SpanId::INVALID {
                String::new()
            } else {
                span.parent_span_id.to_string()
            },
            name: span.name.to_string(),
            process,
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
        };
        let mut spans = r.spans.lock().unwrap_or_else(|e| e.into_inner());
        if spans.len() >= RING_SIZE {
            spans.pop_front();
        }
        spans.push_back(record);
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }

    fn set_resource(&mut self, resource: &Resource) {
        if let Some(name) = resource.get(&opentelemetry::Key::new("service.name")) {
            *ring().process.lock().unwrap_or_else(|e| e.into_inner()) = name.to_string();
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

/// The `tracing` layer that makes this process's spans OpenTelemetry spans (for
/// `service`, unless `OTEL_SERVICE_NAME` says otherwise): kept in the ring, and exported
/// over OTLP when an endpoint is set. `None` with `OTEL_SDK_DISABLED=true`. Call it once,
/// inside a Tokio runtime (the OTLP exporter runs on it).
pub fn layer<S>(service: &str) -> Option<impl tracing_subscriber::Layer<S> + Send + Sync + 'static>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a> + Send + Sync,
{
    if env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return None;
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
    let tracer = provider.tracer("micro");
    let _ = PROVIDER.set(provider);
    let filter = tracing_subscriber::filter::Targets::new().with_target(SPAN_TARGET, tracing::Level::TRACE);
    use tracing_subscriber::Layer as _;
    Some(tracing_opentelemetry::layer().with_tracer(tracer).with_filter(filter))
}

/// Exports what is left (at exit): the OTLP exporter's last batch.
pub fn flush() {
    if let Some(p) = PROVIDER.get() {
        let _ = p.force_flush();
    }
}

/// The W3C `traceparent` of `span`, when it is an OpenTelemetry span.
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    use opentelemetry::trace::TraceContextExt as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| format!("00-{}-{}-{:02x}", sc.trace_id(), sc.span_id(), sc.trace_flags().to_u8()))
}

/// Makes the `traceparent` `parent` (valid, see [`crate::layer::trace_id`]) the parent of
/// `span`.
pub fn set_parent(span: &tracing::Span, parent: &str) {
    use opentelemetry::trace::{SpanContext, TraceContextExt as _, TraceFlags, TraceId, TraceState};
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let b = parent.as_bytes();
    if b.len() != 55 {
        return;
    }
    let (Ok(trace), Ok(id), Ok(flags)) =
        (TraceId::from_hex(&parent[3..35]), SpanId::from_hex(&parent[36..52]), u8::from_str_radix(&parent[53..55], 16))
    else {
        return;
    };
    let sc = SpanContext::new(trace, id, TraceFlags::new(flags), true, TraceState::default());
    let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(sc));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_is_bounded_and_found_by_trace() {
        let span = |trace: &str, start: u64| SpanRecord {
            trace_id: trace.into(),
            span_id: format!("{start:016x}"),
            start_us: start,
            ..Default::default()
        };
        {
            let mut spans = ring().spans.lock().unwrap();
            for i in 0..(RING_SIZE as u64 + 5) {
                spans.push_back(span("ab", i));
                if spans.len() > RING_SIZE {
                    spans.pop_front();
                }
            }
            spans.push_back(span("cd", 2));
            spans.push_back(span("cd", 1));
        }
        let found = spans_of("CD");
        assert_eq!(found.iter().map(|s| s.start_us).collect::<Vec<_>>(), [1, 2]);
        assert!(ring().spans.lock().unwrap().len() <= RING_SIZE + 2);
    }
}
