//! Structured logs for services and tools: one setup shared by everything Micro runs.

use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// Installs the global `tracing` subscriber on stderr: the filter from `MICRO_LOG`
/// (default `default`, like `info` or `warn,micro=debug`), JSON lines when
/// `MICRO_LOG_FORMAT=json`, colours only on a terminal. Does nothing when a subscriber is already installed.
pub fn init(default: &str) {
    install(default, None);
}

/// [`init`], and traces for `service` ([`crate::telemetry`]): a span per hop kept in the
/// process's ring and exported over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set. Call
/// it inside a Tokio runtime.
pub fn init_with_traces(default: &str, service: &str) {
    install(default, Some(service));
}

fn install(default: &str, traces: Option<&str>) {
    let mut filter = tracing_subscriber::EnvFilter::try_from_env("MICRO_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Every call's span is there for the traces; the log shows them only at debug.
    if filter.max_level_hint().is_none_or(|l| l < tracing::level_filters::LevelFilter::DEBUG)
        && let Ok(d) = format!("{}=off", crate::telemetry::SPAN_TARGET).parse()
    {
        filter = filter.add_directive(d);
    }
    let json = std::env::var("MICRO_LOG_FORMAT").is_ok_and(|v| v == "json");
    // Colours only for a person at a terminal (not in files the runtime keeps).
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none();
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi);
    let fmt = if json { fmt.json().with_filter(filter).boxed() } else { fmt.with_filter(filter).boxed() };
    let traces = traces.and_then(crate::telemetry::layer);
    let _ = tracing_subscriber::registry().with(fmt).with(traces).try_init();
}
