//! `micro trace <trace-id>`: a trace's spans from the server's and the services' recent
//! spans (`Debug.Trace` on each), as a tree.

use crate::cli::{Ctx, status_err};
use crate::output;
use anyhow::{Result, bail};
use micro::CallOptions;
use micro::telemetry::SpanRecord;
use std::collections::{BTreeMap, HashSet};

/// The spans `service` (one of its nodes) recorded of `trace_id`.
async fn spans(c: &Ctx, service: &str, trace_id: &str) -> Result<Vec<SpanRecord>, micro::Status> {
    let body = serde_json::to_vec(&serde_json::json!({ "trace_id": trace_id })).unwrap_or_default();
    let out = c
        .client()
        .call_raw(service, "Debug.Trace", micro::metadata::CONTENT_TYPE_GRPC_JSON, body.into(), &CallOptions::default())
        .await?;
    let reply: micro::debug::TraceReply = serde_json::from_slice(&out)
        .map_err(|e| micro::Status::internal(service, format!("unexpected Debug.Trace reply: {e}")))?;
    Ok(reply.spans)
}

pub(crate) async fn trace(c: &Ctx, trace_id: &str, services: Vec<String>) -> Result<()> {
    let trace_id = trace_id.trim().to_ascii_lowercase();
    // A traceparent names its trace second: take the id from one too.
    let trace_id = match trace_id.split('-').collect::<Vec<_>>()[..] {
        [_, id, _, _] => id.to_string(),
        _ => trace_id,
    };
    if trace_id.len() != 32 || !trace_id.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("trace: {trace_id:?} is not a trace id: give 32 hex digits (or a traceparent)");
    }
    // The server (its gateway, proxy and core share one process), then the services.
    let mut asked = vec!["registry".to_string()];
    if services.is_empty() {
        let listed = c.registry()?.list_services(&c.namespace).await.map_err(status_err)?;
        let core: HashSet<&str> = micro_server::CORE_SERVICES.into_iter().collect();
        asked.extend(listed.into_iter().map(|s| s.name).filter(|n| !core.contains(n.as_str())));
    } else {
        asked.extend(services);
    }
    asked.dedup();
    let mut found: BTreeMap<String, SpanRecord> = BTreeMap::new();
    let mut refused = Vec::new();
    for service in &asked {
        match spans(c, service, &trace_id).await {
            Ok(list) => found.extend(list.into_iter().map(|s| (s.span_id.clone(), s))),
            // The server's spans need the admin scope; a service may be gone.
            Err(e) => refused.push(format!("{service}: {}", e.detail())),
        }
    }
    let mut spans: Vec<SpanRecord> = found.into_values().collect();
    spans.sort_by_key(|s| s.start_us);
    if c.json {
        output::json(&serde_json::json!({ "trace_id": trace_id, "spans": spans, "unanswered": refused }));
        return Ok(());
    }
    if spans.is_empty() {
        let why = if refused.is_empty() { String::new() } else { format!(" ({})", refused.join("; ")) };
        bail!("trace: no spans of {trace_id} in the recent spans of {}{why}", asked.join(", "));
    }
    // A tree: each span under its parent, roots (and spans whose parent is unknown) first.
    let ids: HashSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    let start = spans.first().map(|s| s.start_us).unwrap_or(0);
    let mut rows = Vec::new();
    fn walk<'a>(
        spans: &'a [SpanRecord],
        parent: &str,
        depth: usize,
        start: u64,
        rows: &mut Vec<Vec<String>>,
        seen: &mut HashSet<&'a str>,
    ) {
        for s in spans.iter().filter(|s| s.parent_id == parent) {
            if !seen.insert(s.span_id.as_str()) {
                continue;
            }
            rows.push(vec![
                format!("{}{}", "  ".repeat(depth), s.name),
                s.process.clone(),
                s.kind.clone(),
                format!("+{:.3}ms", s.start_us.saturating_sub(start) as f64 / 1000.0),
                format!("{:.3}ms", s.duration_us as f64 / 1000.0),
                s.attributes.get("http.response.status_code").cloned().unwrap_or_else(|| "-".into()),
                s.span_id.clone(),
            ]);
            walk(spans, &s.span_id, depth + 1, start, rows, seen);
        }
    }
    let mut seen = HashSet::new();
    let roots: Vec<String> =
        spans.iter().filter(|s| !ids.contains(s.parent_id.as_str())).map(|s| s.parent_id.clone()).collect();
    let mut done_roots = HashSet::new();
    for root in roots {
        if done_roots.insert(root.clone()) {
            walk(&spans, &root, 0, start, &mut rows, &mut seen);
        }
    }
    output::table(&["SPAN", "PROCESS", "KIND", "START", "DURATION", "STATUS", "ID"], &rows);
    if !refused.is_empty() {
        eprintln!("note: not asked: {}", refused.join("; "));
    }
    Ok(())
}
