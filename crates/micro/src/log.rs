//! Structured logs for services and tools: one setup shared by everything Micro runs.

/// Installs the global `tracing` subscriber on stderr: the filter from `MICRO_LOG`
/// (default `default`, like `info` or `warn,micro=debug`), JSON lines when
/// `MICRO_LOG_FORMAT=json`, colours only on a terminal. Does nothing when a subscriber is already installed.
pub fn init(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MICRO_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let json = std::env::var("MICRO_LOG_FORMAT").is_ok_and(|v| v == "json");
    // Colours only for a person at a terminal (not in files the runtime keeps).
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none();
    let b = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    let _ = if json { b.json().try_init() } else { b.try_init() };
}

/// [`init`], and traces for `service` ([`crate::telemetry::init`]): a span per hop kept
/// in the process's ring and exported over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is
/// set. Call it inside a Tokio runtime.
pub fn init_with_traces(default: &str, service: &str) {
    init(default);
    crate::telemetry::init(service);
}
