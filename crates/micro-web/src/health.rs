//! Health: a card per service of the namespace with its `Debug.Health` and `Debug.Stats`
//! answers (status, uptime, memory, requests, errors). Every service is asked at once with
//! a short deadline, so one that hangs or is gone costs the page at most that long.
//!
//! `GET /health`.

use super::html;
use super::{Form, Page, encode, page_response};
use axum::body::Body;
use http::{Response, StatusCode};
use maud::{Markup, html};
use micro::debug::Stats;
use micro_core::Status;
use micro_core::registry::{Registry, Service};
use micro_core::time::utc;
use serde_json::{Value, json};
use std::time::Duration;

/// How long a service may take to answer each check.
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// `GET /health`.
pub(crate) async fn get(page: &Page) -> Response<Body> {
    match page.rest.as_slice() {
        [] => overview(page).await,
        _ => super::not_found(page),
    }
}

/// Nothing to submit here.
pub(crate) async fn post(page: &Page, _form: &Form) -> Response<Body> {
    super::not_found(page)
}

/// One service's versions as the registry lists them, and its checks.
struct Checked {
    name: String,
    versions: Vec<String>,
    nodes: usize,
    core: bool,
    health: Result<String, Status>,
    stats: Result<Stats, Status>,
}

impl Checked {
    fn healthy(&self) -> bool {
        matches!(&self.health, Ok(s) if s == "ok")
    }
}

async fn overview(page: &Page) -> Response<Body> {
    let ns = page.session.namespace.clone();
    let listed = match page.web.channel(None) {
        Ok(ch) => micro::registry::RemoteRegistry::on(ch).list_services(&ns).await,
        Err(e) => Err(e),
    };
    let all = match listed {
        Ok(s) => s,
        Err(e) => {
            let status = super::status_code(&e);
            let body = html! { (html::error(&e)) p { "The registry could not list the services; try again shortly." } };
            return page_response(status, html::layout(page, "Health", "health", body));
        }
    };
    let client = page.client().timeout(CHECK_TIMEOUT).retries(0);
    let checks = group(&all).into_iter().map(|(name, versions, nodes, core)| {
        let client = client.clone();
        async move {
            let (health, stats) =
                tokio::join!(call(&client, &name, "Debug.Health"), call(&client, &name, "Debug.Stats"),);
            let health = health.and_then(|v| {
                v.get("status")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .ok_or_else(|| Status::internal(&name, "Debug.Health answered without a status"))
            });
            let stats = stats.and_then(|v| {
                serde_json::from_value::<Stats>(v)
                    .map_err(|e| Status::internal(&name, format!("Debug.Stats answered unexpectedly: {e}")))
            });
            Checked { name, versions, nodes, core, health, stats }
        }
    });
    let checked = futures::future::join_all(checks).await;
    let failing = checked.iter().filter(|c| !c.healthy()).count();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let body = html! {
        @if checked.is_empty() {
            p { "No services are registered in " code { (ns) } "." }
        } @else {
            p role="status" {
                (checked.len()) " services in " code { (ns) } ": "
                strong { (checked.len() - failing) " healthy" }
                @if failing > 0 { ", " strong { (failing) " not answering as healthy" } }
                ". Checked at " (utc(now).get(11..19).unwrap_or_default()) " UTC. "
                a href="/health" { "Check again" }
            }
            div.cards {
                @for c in &checked { (card(c)) }
            }
            p.hint {
                "Each check reaches one node of the service through the proxy, with a "
                (CHECK_TIMEOUT.as_secs()) "-second deadline; with several nodes, the figures are that node's."
                @if checked.iter().any(|c| c.core) {
                    " Core services run in the server's process, so their figures are the server's."
                }
            }
        }
    };
    page_response(StatusCode::OK, html::layout(page, "Health", "health", body))
}

/// The registry's records by name: (name, versions, nodes, core).
fn group(all: &[Service]) -> Vec<(String, Vec<String>, usize, bool)> {
    let mut out: Vec<(String, Vec<String>, usize, bool)> = Vec::new();
    for s in all {
        let version = if s.version.is_empty() { "-".to_string() } else { s.version.clone() };
        let core = s.metadata.get("core").is_some_and(|v| v == "true");
        match out.iter_mut().find(|(n, ..)| *n == s.name) {
            Some((_, versions, nodes, c)) => {
                if !versions.contains(&version) {
                    versions.push(version);
                }
                *nodes += s.nodes.len();
                *c |= core;
            }
            None => out.push((s.name.clone(), vec![version], s.nodes.len(), core)),
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

async fn call(client: &micro::Client, service: &str, endpoint: &str) -> Result<Value, Status> {
    // The client has its own deadline; this one also bounds name resolution and connecting.
    match tokio::time::timeout(
        CHECK_TIMEOUT + Duration::from_millis(500),
        client.call_json(service, endpoint, &json!({})),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => Err(Status::deadline_exceeded(service, format!("no answer within {CHECK_TIMEOUT:?}"))),
    }
}

fn card(c: &Checked) -> Markup {
    let id = format!("svc-{}", c.name.replace(|ch: char| !ch.is_ascii_alphanumeric(), "-"));
    html! {
        section.card aria-labelledby=(id) {
            h2 #(id) {
                a href={ "/services/" (encode(&c.name)) } { (c.name) } " "
                @match &c.health {
                    Ok(s) if s == "ok" => span.badge.serving { "healthy" },
                    Ok(s) => span.badge.error { (s) },
                    Err(e) if e.code() == micro_core::Code::DeadlineExceeded => span.badge.error { "no answer" },
                    Err(_) => span.badge.error { "failing" },
                }
                @if c.core { " " span.badge { "core" } }
            }
            p.hint {
                "Version " (c.versions.join(", ")) " · " (c.nodes) @if c.nodes == 1 { " node" } @else { " nodes" }
            }
            @if let Err(e) = &c.health {
                p.error { strong { "Health: " } (e.http_status()) " " (micro_core::reason(e.http_status())) " — " (e.detail()) }
            }
            @match &c.stats {
                Ok(s) => {
                    dl {
                        dt { "Uptime" } dd { (uptime(s.uptime)) }
                        dt { "Memory" } dd { (bytes(s.memory)) }
                        dt { "Threads" } dd { (s.threads) }
                        dt { "Requests" } dd { (s.requests) }
                        dt { "Errors" } dd { (s.errors) @if let Some(rate) = error_rate(s) { " (" (rate) ")" } }
                    }
                }
                Err(e) => {
                    p.error { strong { "Stats: " } (e.http_status()) " " (micro_core::reason(e.http_status())) " — " (e.detail()) }
                }
            }
        }
    }
}

/// Seconds as the two largest units: `3d 4h`, `2h 5m`, `5m 3s`, `42s`.
fn uptime(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs % 86_400 / 3600, secs % 3600 / 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

/// A node's memory ([`html::bytes`]), `unknown` when it was not read.
fn bytes(n: u64) -> String {
    if n == 0 {
        return "unknown".into();
    }
    html::bytes(n)
}

/// Failed requests as a share of all, when there were any.
fn error_rate(s: &Stats) -> Option<String> {
    (s.requests > 0 && s.errors > 0).then(|| format!("{:.1}%", s.errors as f64 * 100.0 / s.requests as f64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use micro_core::registry::Node;

    #[test]
    fn figures_for_people() {
        assert_eq!(uptime(42), "42s");
        assert_eq!(uptime(5 * 60 + 3), "5m 3s");
        assert_eq!(uptime(2 * 3600 + 5 * 60 + 9), "2h 5m");
        assert_eq!(uptime(3 * 86_400 + 4 * 3600 + 1), "3d 4h");
        assert_eq!(bytes(0), "unknown");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(12_900_000), "12.3 MiB");
        assert_eq!(bytes(3 << 30), "3.0 GiB");
        let stats = |requests, errors| Stats { started: 0, uptime: 0, memory: 0, threads: 0, requests, errors };
        assert_eq!(error_rate(&stats(200, 3)).as_deref(), Some("1.5%"));
        assert_eq!(error_rate(&stats(200, 0)), None);
        assert_eq!(error_rate(&stats(0, 0)), None);
    }

    #[test]
    fn registry_records_group_by_name() {
        let svc = |name: &str, version: &str, nodes: usize| Service {
            name: name.into(),
            version: version.into(),
            metadata: Default::default(),
            endpoints: Vec::new(),
            nodes: (0..nodes).map(|i| Node { id: format!("{name}-{i}"), ..Default::default() }).collect(),
        };
        let mut core = svc("store", "1.0", 1);
        core.metadata.insert("core".into(), "true".into());
        let grouped =
            group(&[svc("web", "", 1), core, svc("api2", "v1", 2), svc("api2", "v2", 1), svc("api2", "v1", 1)]);
        let names: Vec<_> = grouped.iter().map(|g| (g.0.as_str(), g.1.join(","), g.2, g.3)).collect();
        assert_eq!(
            names,
            [
                ("api2", "v1,v2".to_string(), 4, false),
                ("store", "1.0".to_string(), 1, true),
                ("web", "-".to_string(), 1, false)
            ]
        );
    }
}
