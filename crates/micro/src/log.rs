//! Structured logs for services and tools: one setup shared by everything Micro runs.

/// Installs the global `tracing` subscriber on stderr: the filter from `MICRO_LOG`
/// (default `default`, like `info` or `warn,micro=debug`), JSON lines when
/// `MICRO_LOG_FORMAT=json`. Does nothing when a subscriber is already installed.
pub fn init(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MICRO_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let json = std::env::var("MICRO_LOG_FORMAT").is_ok_and(|v| v == "json");
    let b = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if json { b.json().try_init() } else { b.try_init() };
}
