//! `Debug.Health`, `Debug.Stats` and `Debug.Trace`, served by every service.

use crate::handler::Context;
use crate::metrics::Metrics;
use micro_core::Status;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::time::{SystemTime, UNIX_EPOCH};

/// The request of the debug endpoints (empty).
#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
pub struct Empty {}

/// The reply of `Debug.Health`.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
pub struct Health {
    /// `ok` while the service serves.
    pub status: String,
}

/// The reply of `Debug.Stats`.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
pub struct Stats {
    /// Start time, seconds since the Unix epoch.
    pub started: u64,
    /// Seconds since start.
    pub uptime: u64,
    /// Resident memory in bytes.
    pub memory: u64,
    /// OS threads of the process.
    pub threads: u64,
    /// Requests served.
    pub requests: u64,
    /// Requests that failed.
    pub errors: u64,
}

/// The request of `Debug.Trace`.
#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
pub struct TraceRequest {
    /// The trace: 32 hex digits (the second field of a `traceparent`).
    pub trace_id: String,
}

/// The reply of `Debug.Trace`: the trace's spans this process recorded lately.
#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
pub struct TraceReply {
    /// Oldest first.
    pub spans: Vec<crate::telemetry::SpanRecord>,
}

pub(crate) async fn trace(_: Context, req: TraceRequest) -> Result<TraceReply, Status> {
    let id = req.trace_id.trim();
    if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Status::bad_request("debug", format!("{id:?} is not a trace id: give 32 hex digits")));
    }
    Ok(TraceReply { spans: crate::telemetry::spans_of(id) })
}

pub(crate) async fn health(_: Context, _: Empty) -> Result<Health, Status> {
    Ok(Health { status: "ok".into() })
}

pub(crate) fn stats(started: SystemTime, metrics: Metrics) -> Stats {
    let t = metrics.totals();
    let (memory, threads) = process();
    Stats {
        started: started.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        uptime: started.elapsed().map(|d| d.as_secs()).unwrap_or(0),
        memory,
        threads,
        requests: t.requests,
        errors: t.errors,
    }
}

/// Resident memory (bytes) and thread count of this process, from `/proc` where there is one.
pub fn process() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:") * 1024, field("Threads:"))
}
