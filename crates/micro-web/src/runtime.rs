//! Runtime: the namespace's services as the runtime runs them, a form to run one from a
//! git URL or a short name, and one service's details with update and kill, its last
//! log lines, its live log (Server-Sent Events) and its build log.
//!
//! Every call goes to `runtime.Runtime` through the proxy as the signed-in account, like
//! `micro run|update|kill|status|logs`.

use super::html::{self, csrf};
use super::{Form, Page, encode, page_response, redirect};
use axum::body::Body;
use bytes::Bytes;
use futures::StreamExt;
use http::{Response, StatusCode, header};
use maud::{Markup, html};
use micro::proto::runtime as pb;
use micro_core::{Code, Status};
use std::time::Duration;

/// How many log lines a service page shows.
const LOG_LINES: u32 = 200;
/// The deadline of a unary runtime call.
const TIMEOUT: Duration = Duration::from_secs(15);
/// How often a live log sends a comment, so a closed browser is noticed.
const KEEPALIVE: Duration = Duration::from_secs(15);
/// The most instances the runtime runs of one service.
const MAX_INSTANCES: u32 = 64;

type Client = pb::runtime_client::RuntimeClient<micro::data::Ch>;

fn client(page: &Page) -> Result<Client, Status> {
    Ok(pb::runtime_client::RuntimeClient::new(page.channel()?).max_decoding_message_size(16 << 20))
}

/// A unary request in the session's namespace, with a deadline.
fn unary<T>(page: &Page, msg: T) -> tonic::Request<T> {
    let mut r = page.request(msg);
    r.set_timeout(TIMEOUT);
    r
}

fn from_tonic(e: tonic::Status) -> Status {
    micro::status::from_tonic(&e)
}

fn bad(detail: impl Into<String>) -> Status {
    Status::bad_request("web", detail)
}

async fn read(page: &Page, name: &str) -> Result<Vec<pb::Service>, Status> {
    let r = client(page)?.read(unary(page, pb::ReadRequest { name: name.to_string() })).await.map_err(from_tonic)?;
    Ok(r.into_inner().services)
}

/// The last lines of a service's log (or its build's).
async fn tail(page: &Page, name: &str, build: bool) -> Result<Vec<String>, Status> {
    let msg = pb::LogsRequest { name: name.to_string(), build, follow: false, count: LOG_LINES };
    let mut stream = client(page)?.logs(unary(page, msg)).await.map_err(from_tonic)?.into_inner();
    let mut lines = Vec::new();
    while let Some(r) = stream.next().await {
        lines.push(r.map_err(from_tonic)?.line);
    }
    Ok(lines)
}

/// `GET /runtime`, `/runtime/{name}[?build=1]`, `/runtime/{name}/logs/stream[?build=1]`.
pub(crate) async fn get(page: &Page) -> Response<Body> {
    match page.rest.as_slice() {
        [] => list(page, &RunForm::default(), None).await,
        [name] => one(page, name, &UpdateForm::default(), None).await,
        [name, logs, stream] if logs == "logs" && stream == "stream" => live(page, name).await,
        _ => super::not_found(page),
    }
}

/// `POST /runtime` (run) and `/runtime/{name}` (`action` update or kill).
pub(crate) async fn post(page: &Page, form: &Form) -> Response<Body> {
    match page.rest.as_slice() {
        [] => run(page, form).await,
        [name] => match form.get("action") {
            "update" => update(page, name, form).await,
            "kill" => kill(page, name).await,
            _ => one(page, name, &UpdateForm::of(form), Some(bad("unknown action"))).await,
        },
        _ => super::not_found(page),
    }
}

/// What the run form holds (kept when it is shown again with a problem).
#[derive(Default)]
struct RunForm {
    source: String,
    name: String,
    instances: String,
    env: String,
}

impl RunForm {
    fn of(form: &Form) -> RunForm {
        RunForm {
            source: form.get("source").trim().to_string(),
            name: form.get("name").trim().to_string(),
            instances: form.get("instances").trim().to_string(),
            env: form.get("env").to_string(),
        }
    }

    /// The service to create, or what is wrong with the form.
    fn spec(&self) -> Result<pb::Service, String> {
        if self.source.is_empty() {
            return Err("Enter a source: a git URL (like github.com/org/repo/path@ref) or a service name.".into());
        }
        if !self.name.is_empty() && micro_core::registry::validate_name(&self.name).is_err() {
            return Err(format!(
                "{:?} is not a service name: use letters, digits, '.', '_' and '-' (not starting or ending with '.').",
                self.name
            ));
        }
        Ok(pb::Service {
            name: self.name.clone(),
            source: self.source.clone(),
            instances: parse_instances(&self.instances)?,
            env: parse_pairs(&self.env)?.into_iter().collect(),
            ..Default::default()
        })
    }
}

/// What the update form holds.
#[derive(Default)]
struct UpdateForm {
    /// Whether this is a submitted form (else the fields start from the service).
    submitted: bool,
    source: String,
    instances: String,
    env: String,
}

impl UpdateForm {
    fn of(form: &Form) -> UpdateForm {
        UpdateForm {
            submitted: true,
            source: form.get("source").trim().to_string(),
            instances: form.get("instances").trim().to_string(),
            env: form.get("env").to_string(),
        }
    }
}

/// Parses `KEY=VALUE` lines (environment variables, metadata): blank lines and lines
/// starting with `#` are skipped; the value is everything after the first `=`.
pub(super) fn parse_pairs(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim_end_matches('\r');
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let n = i + 1;
        let Some((k, v)) = line.split_once('=') else {
            return Err(format!("Line {n}: {:?} is not KEY=VALUE.", line.trim()));
        };
        let k = k.trim();
        if k.is_empty() || k.contains(|c: char| c.is_whitespace() || c == '\0') || v.contains('\0') {
            return Err(format!("Line {n}: {k:?} is not a valid name (no spaces, not empty)."));
        }
        if out.iter().any(|(seen, _)| seen == k) {
            return Err(format!("Line {n}: {k} is set twice."));
        }
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

/// The instances field: empty means the default (0), else 1 to [`MAX_INSTANCES`].
fn parse_instances(text: &str) -> Result<u32, String> {
    let t = text.trim();
    if t.is_empty() {
        return Ok(0);
    }
    match t.parse::<u32>() {
        Ok(n) if (1..=MAX_INSTANCES).contains(&n) => Ok(n),
        _ => Err(format!("Instances must be a whole number from 1 to {MAX_INSTANCES} (or empty for the default).")),
    }
}

/// One Server-Sent Event carrying `line`: every line of it (split at `\n`, `\r\n` or
/// `\r`, which SSE treats as line ends) in its own `data:` field, which the browser
/// joins back with `\n`.
fn sse_event(line: &str) -> String {
    let mut out = String::with_capacity(line.len() + 8);
    for part in line.split("\r\n").flat_map(|p| p.split(['\r', '\n'])) {
        out.push_str("data: ");
        out.push_str(part);
        out.push('\n');
    }
    out.push('\n');
    out
}

/// How long ago a Unix-milliseconds time was, at `now` (Unix milliseconds).
fn ago(ms: i64, now: i64) -> String {
    if ms <= 0 {
        return "-".into();
    }
    let s = ((now - ms) / 1000).max(0);
    match s {
        0..60 => format!("{s}s ago"),
        60..3600 => format!("{}m ago", s / 60),
        3600..86400 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86400),
    }
}

fn now_ms() -> i64 {
    micro_core::store::now_ms() as i64
}

/// A version as shown in tables: a digest or commit shortened to 12 characters.
fn short_version(v: &str) -> &str {
    if v.is_empty() { "-" } else { v.get(..12).unwrap_or(v) }
}

/// "running/desired" instances.
fn instances_of(s: &pb::Service) -> String {
    let up = s.nodes.iter().filter(|n| n.status == "running").count();
    format!("{up}/{}", s.instances.max(1))
}

fn badge(status: &str) -> Markup {
    let status = if status.is_empty() { "unknown" } else { status };
    html! { span class={ "badge " (status) } { (status) } }
}

fn notice(text: Option<String>) -> Markup {
    html! { @if let Some(t) = text { p.ok role="status" { (t) } } }
}

async fn list(page: &Page, form: &RunForm, problem: Option<Status>) -> Response<Body> {
    let services = match read(page, "").await {
        Ok(s) => s,
        Err(e) => {
            let status = super::status_code(&e);
            return page_response(status, html::layout(page, "Runtime", "runtime", html::error(&e)));
        }
    };
    let now = now_ms();
    let killed = page.query("killed").map(|n| format!("Killed {n}."));
    let status = problem.as_ref().map_or(StatusCode::OK, super::status_code);
    let body = html! {
        (notice(killed))
        @if services.is_empty() {
            p { "Nothing runs in " code { (page.session.namespace) } " yet. Run a service below, or with "
                code { "micro run" } "." }
        } @else {
            table {
                caption.hint { "Services run by the runtime in " (page.session.namespace) }
                thead {
                    tr {
                        th scope="col" { "Service" }
                        th scope="col" { "Status" }
                        th scope="col" { "Version" }
                        th scope="col" { "Instances" }
                        th scope="col" { "Restarts" }
                        th scope="col" { "Error" }
                        th scope="col" { "Updated" }
                    }
                }
                tbody {
                    @for s in &services {
                        tr {
                            th scope="row" { a href={ "/runtime/" (encode(&s.name)) } { (s.name) } }
                            td { (badge(&s.status)) }
                            td { code title=(s.version) { (short_version(&s.version)) } }
                            td { (instances_of(s)) }
                            td { (s.restarts) }
                            td { (s.error) }
                            td { (ago(s.updated, now)) }
                        }
                    }
                }
            }
        }
        h2 #run { "Run a service" }
        @if let Some(e) = &problem { (html::error(e)) }
        form.stack method="post" action="/runtime" {
            (csrf(page))
            div.field {
                label for="run-source" { "Source" }
                input #run-source name="source" value=(form.source) required aria-describedby="run-source-hint"
                    placeholder="github.com/org/repo/path@ref";
                span.hint #run-source-hint { "A git URL with an optional @ref, or the name of a service in the server's services repository. (Run a local folder with " code { "micro run" } ".)" }
            }
            div.field {
                label for="run-name" { "Name" }
                input #run-name name="name" value=(form.name) aria-describedby="run-name-hint";
                span.hint #run-name-hint { "Optional: by default the source's last folder." }
            }
            div.field {
                label for="run-instances" { "Instances" }
                input #run-instances name="instances" type="number" min="1" max=(MAX_INSTANCES) step="1" inputmode="numeric" value=(form.instances);
            }
            div.field {
                label for="run-env" { "Environment" }
                textarea #run-env name="env" rows="3" spellcheck="false" aria-describedby="run-env-hint" { (form.env) }
                span.hint #run-env-hint { "One KEY=VALUE per line." }
            }
            div.actions { button type="submit" { "Run" } }
        }
    };
    page_response(status, html::layout(page, "Runtime", "runtime", body))
}

async fn run(page: &Page, form: &Form) -> Response<Body> {
    let f = RunForm::of(form);
    let spec = match f.spec() {
        Ok(s) => s,
        Err(problem) => return list(page, &f, Some(bad(problem))).await,
    };
    let created = async {
        client(page)?.create(unary(page, pb::CreateRequest { service: Some(spec) })).await.map_err(from_tonic)
    };
    match created.await {
        Ok(r) => {
            let name = r.into_inner().service.map(|s| s.name).unwrap_or_default();
            if name.is_empty() {
                redirect("/runtime")
            } else {
                redirect(&format!("/runtime/{}?started=1", encode(&name)))
            }
        }
        Err(e) => list(page, &f, Some(e)).await,
    }
}

fn missing(page: &Page, name: &str) -> Response<Body> {
    let body = html! {
        p { "No service " code { (name) } " runs in " code { (page.session.namespace) } "." }
        p { a href="/runtime" { "← Runtime" } }
    };
    page_response(StatusCode::NOT_FOUND, html::layout(page, "Not found", "runtime", body))
}

async fn one(page: &Page, name: &str, form: &UpdateForm, problem: Option<Status>) -> Response<Body> {
    let service = match read(page, name).await {
        Ok(mut v) if !v.is_empty() => v.remove(0),
        Ok(_) => return missing(page, name),
        Err(e) if e.code() == Code::NotFound => return missing(page, name),
        Err(e) => return page_response(super::status_code(&e), html::layout(page, name, "runtime", html::error(&e))),
    };
    let build = page.query("build").is_some_and(|b| !b.is_empty() && b != "0");
    let log = tail(page, name, build).await;
    let now = now_ms();
    let path = format!("/runtime/{}", encode(name));
    let stream = format!("{path}/logs/stream{}", if build { "?build=1" } else { "" });
    let done = if page.query("started").is_some() {
        Some(format!("{name} is starting: the status below changes as it builds and starts (reload)."))
    } else if page.query("updated").is_some() {
        Some(format!("{name} is being updated: new instances replace the old ones once ready (reload)."))
    } else {
        None
    };
    let mut env: Vec<(&String, &String)> = service.env.iter().collect();
    env.sort();
    let env_text = if form.submitted {
        form.env.clone()
    } else {
        env.iter().map(|(k, v)| format!("{k}={v}\n")).collect::<String>()
    };
    let instances = if form.submitted { form.instances.clone() } else { service.instances.max(1).to_string() };
    let mut metadata: Vec<(&String, &String)> = service.metadata.iter().collect();
    metadata.sort();
    let mut secrets: Vec<(&String, &String)> = service.secrets.iter().collect();
    secrets.sort();
    let status = problem.as_ref().map_or(StatusCode::OK, super::status_code);
    let body = html! {
        p { a href="/runtime" { "← Runtime" } }
        (notice(done))
        table {
            caption.hint { "Service " (service.name) }
            tbody {
                tr { th scope="row" { "Status" } td { (badge(&service.status)) } }
                @if !service.error.is_empty() {
                    tr { th scope="row" { "Error" } td.error { (service.error) } }
                }
                tr { th scope="row" { "Source" } td { code { (service.source) } @if !service.entrypoint.is_empty() { " (" code { (service.entrypoint) } ")" } } }
                tr { th scope="row" { "Version" } td { code { (if service.version.is_empty() { "-" } else { &service.version }) } } }
                tr { th scope="row" { "Build" } td { (if service.build.is_empty() { "-" } else { &service.build }) } }
                tr { th scope="row" { "Instances" } td { (instances_of(&service)) " running" } }
                tr { th scope="row" { "Restarts" } td { (service.restarts) } }
                tr { th scope="row" { "Updated" } td { (ago(service.updated, now)) } }
                @if !service.isolation.is_empty() {
                    tr { th scope="row" { "Isolation" } td { (service.isolation) } }
                }
                @if service.memory > 0 {
                    tr { th scope="row" { "Memory limit" } td { (service.memory >> 20) " MiB" @if !service.limits.is_empty() { " (" (service.limits) ")" } } }
                }
                @if !env.is_empty() {
                    tr { th scope="row" { "Environment" } td { @for (k, v) in &env { code { (k) "=" (v) } br; } } }
                }
                @if !secrets.is_empty() {
                    tr { th scope="row" { "Secrets" } td { @for (k, v) in &secrets { code { (k) } " ← config " code { (v) } br; } } }
                }
                @if !metadata.is_empty() {
                    tr { th scope="row" { "Metadata" } td { @for (k, v) in &metadata { code { (k) "=" (v) } " " } } }
                }
            }
        }
        h2 { "Instances" }
        @if service.nodes.is_empty() {
            p { "No instance runs." }
        } @else {
            table {
                thead { tr { th scope="col" { "Instance" } th scope="col" { "PID" } th scope="col" { "Status" } th scope="col" { "Restarts" } } }
                tbody {
                    @for n in &service.nodes {
                        tr { th scope="row" { code { (n.id) } } td { (n.pid) } td { (badge(&n.status)) } td { (n.restarts) } }
                    }
                }
            }
        }
        h2 #logs { "Logs" }
        nav.actions aria-label="Which log" {
            @if build { a href={ (path) "#logs" } { "Service log" } " · " strong aria-current="page" { "Build log" } }
            @else { strong aria-current="page" { "Service log" } " · " a href={ (path) "?build=1#logs" } { "Build log" } }
        }
        @match &log {
            Ok(lines) => {
                p.hint #log-hint { "The last " (LOG_LINES) " lines" @if lines.is_empty() { " (none yet)" } ", then new ones as they are written." }
                pre.log data-stream=(stream) aria-describedby="log-hint" aria-live="off" tabindex="0" {
                    @for l in lines { (l) "\n" }
                }
            }
            Err(e) => { (html::error(e)) }
        }
        h2 #update { "Update" }
        @if let Some(e) = &problem { (html::error(e)) }
        form.stack method="post" action=(path) {
            (csrf(page))
            input type="hidden" name="action" value="update";
            div.field {
                label for="up-source" { "Source" }
                input #up-source name="source" value=(form.source) aria-describedby="up-source-hint";
                span.hint #up-source-hint { "Optional: a new git URL or service name. Empty rebuilds from the current source." }
            }
            div.field {
                label for="up-instances" { "Instances" }
                input #up-instances name="instances" type="number" min="1" max=(MAX_INSTANCES) step="1" inputmode="numeric" value=(instances);
            }
            div.field {
                label for="up-env" { "Environment" }
                textarea #up-env name="env" rows="4" spellcheck="false" aria-describedby="up-env-hint" { (env_text) }
                span.hint #up-env-hint { "One KEY=VALUE per line; this list replaces the current one. Emptied, the current variables stay." }
            }
            div.actions { button type="submit" { "Update " (name) } }
        }
        h2 { "Kill" }
        form.inline method="post" action=(path) data-confirm={ "Kill " (name) "? Its instances stop and the runtime forgets it." } {
            (csrf(page))
            input type="hidden" name="action" value="kill";
            button.danger type="submit" { "Kill " (name) }
        }
    };
    page_response(status, html::layout(page, name, "runtime", body))
}

async fn update(page: &Page, name: &str, form: &Form) -> Response<Body> {
    let f = UpdateForm::of(form);
    let parsed = parse_instances(&f.instances).and_then(|i| parse_pairs(&f.env).map(|e| (i, e)));
    let (instances, env) = match parsed {
        Ok(p) => p,
        Err(problem) => return one(page, name, &f, Some(bad(problem))).await,
    };
    let spec = pb::Service {
        name: name.to_string(),
        source: f.source.clone(),
        instances,
        env: env.into_iter().collect(),
        ..Default::default()
    };
    let updated = async {
        client(page)?.update(unary(page, pb::UpdateRequest { service: Some(spec) })).await.map_err(from_tonic)
    };
    match updated.await {
        Ok(_) => redirect(&format!("/runtime/{}?updated=1", encode(name))),
        Err(e) if e.code() == Code::NotFound => missing(page, name),
        Err(e) => one(page, name, &f, Some(e)).await,
    }
}

async fn kill(page: &Page, name: &str) -> Response<Body> {
    let deleted = async {
        client(page)?.delete(unary(page, pb::DeleteRequest { name: name.to_string() })).await.map_err(from_tonic)
    };
    match deleted.await {
        Ok(_) => redirect(&format!("/runtime?killed={}", encode(name))),
        Err(e) if e.code() == Code::NotFound => missing(page, name),
        Err(e) => one(page, name, &UpdateForm::default(), Some(e)).await,
    }
}

/// `GET /runtime/{name}/logs/stream[?build=1][&tail=N]`: the log's new lines as
/// Server-Sent Events (with `tail`, its last N lines first).
async fn live(page: &Page, name: &str) -> Response<Body> {
    let build = page.query("build").is_some_and(|b| !b.is_empty() && b != "0");
    let tail: u32 = page.query("tail").and_then(|t| t.parse().ok()).unwrap_or(0).min(10_000);
    // The page already shows the last lines: ask for as few as the runtime gives (it
    // has no "none") and skip them; they are the ones without a timestamp.
    let msg = pb::LogsRequest { name: name.to_string(), build, follow: true, count: tail.max(1) };
    let opened = async { client(page)?.logs(page.request(msg)).await.map_err(from_tonic) };
    let mut records = match opened.await {
        Ok(r) => r.into_inner(),
        Err(e) => {
            let mut r = Response::new(Body::new(http_body_util::Full::new(Bytes::from(format!(
                "{} {}\n",
                e.http_status(),
                e.detail()
            )))));
            *r.status_mut() = super::status_code(&e);
            r.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain; charset=utf-8"));
            return r;
        }
    };
    let events = async_stream::stream! {
        let mut skipping = tail == 0;
        let mut keepalive = tokio::time::interval(KEEPALIVE);
        keepalive.tick().await;
        yield Ok::<_, std::convert::Infallible>(http_body::Frame::data(Bytes::from_static(b": live\n\n")));
        loop {
            tokio::select! {
                next = records.next() => match next {
                    Some(Ok(rec)) => {
                        if skipping && rec.timestamp == 0 {
                            continue;
                        }
                        skipping = false;
                        yield Ok(http_body::Frame::data(Bytes::from(sse_event(&rec.line))));
                    }
                    Some(Err(e)) => {
                        let e = micro::status::from_tonic(&e);
                        yield Ok(http_body::Frame::data(Bytes::from(sse_event(&format!("[dashboard] the log ended: {}", e.detail())))));
                        break;
                    }
                    None => break,
                },
                _ = keepalive.tick() => {
                    yield Ok(http_body::Frame::data(Bytes::from_static(b": keepalive\n\n")));
                }
            }
        }
    };
    let events = page.web.until_stopped(events);
    let mut r = Response::new(Body::new(http_body_util::StreamBody::new(events)));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, http::HeaderValue::from_static("text/event-stream; charset=utf-8"));
    h.insert(header::CACHE_CONTROL, http::HeaderValue::from_static("no-store"));
    h.insert("x-content-type-options", http::HeaderValue::from_static("nosniff"));
    h.insert("x-accel-buffering", http::HeaderValue::from_static("no"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_parse_line_by_line() {
        let p = parse_pairs("A=1\r\n\n# a comment\nB = x=y \n  C=\n").unwrap();
        assert_eq!(
            p,
            [("A".into(), "1".into()), ("B".into(), " x=y ".into()), ("C".into(), String::new())]
                as [(String, String); 3]
        );
        assert!(parse_pairs("").unwrap().is_empty());
        assert!(parse_pairs("A").unwrap_err().contains("Line 1"));
        assert!(parse_pairs("\n=1").unwrap_err().contains("Line 2"));
        assert!(parse_pairs("MY VAR=1").is_err());
        assert!(parse_pairs("A=1\nA=2").unwrap_err().contains("twice"));
    }

    #[test]
    fn instances_and_run_forms() {
        assert_eq!(parse_instances(""), Ok(0));
        assert_eq!(parse_instances(" 3 "), Ok(3));
        assert!(parse_instances("0").is_err());
        assert!(parse_instances("65").is_err());
        assert!(parse_instances("two").is_err());
        let form = RunForm { source: "github.com/o/r".into(), env: "K=V".into(), ..Default::default() };
        let spec = form.spec().unwrap();
        assert_eq!((spec.source.as_str(), spec.env.get("K").map(String::as_str)), ("github.com/o/r", Some("V")));
        assert!(RunForm::default().spec().unwrap_err().contains("source"));
        let bad_name = RunForm { source: "x".into(), name: "a b".into(), ..Default::default() };
        assert!(bad_name.spec().is_err());
    }

    #[test]
    fn log_lines_become_events() {
        assert_eq!(sse_event("hello"), "data: hello\n\n");
        assert_eq!(sse_event(""), "data: \n\n");
        assert_eq!(sse_event("a\nb\r\nc\rd"), "data: a\ndata: b\ndata: c\ndata: d\n\n");
        assert_eq!(sse_event("<b>&"), "data: <b>&\n\n");
    }

    #[test]
    fn times_and_versions() {
        assert_eq!(ago(0, 5_000), "-");
        assert_eq!(ago(1_000, 6_000), "5s ago");
        assert_eq!(ago(1_000, 1_000 + 7_200_000), "2h ago");
        assert_eq!(ago(10_000, 5_000), "0s ago");
        assert_eq!(short_version("0123456789abcdef"), "0123456789ab");
        assert_eq!(short_version("v1"), "v1");
        assert_eq!(short_version(""), "-");
    }
}
