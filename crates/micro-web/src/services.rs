//! Services: the list, one service's nodes and endpoints, and an endpoint page with a
//! form made from its request schema (or raw JSON) that calls it as the signed-in account.
//! The list and a service's page link the gateway's OpenAPI document of the namespace and
//! of the service ([`gateway`]).

use super::gateway::{self, Gateway};
use super::html::{self, csrf};
use super::{Form, Page, encode, page_response};
use axum::body::Body;
use http::{Response, StatusCode};
use maud::{Markup, html};
use micro_core::Status;
use micro_core::registry::{Registry, Service};
use serde_json::{Map, Value};

/// How deep a form follows nested messages (schemas may refer to themselves).
const MAX_DEPTH: usize = 6;

async fn services(page: &Page) -> Result<Vec<Service>, Status> {
    let registry = micro::registry::RemoteRegistry::on(page.web.channel(None)?);
    registry.list_services(&page.session.namespace).await
}

async fn service(page: &Page, name: &str) -> Result<Vec<Service>, Status> {
    let registry = micro::registry::RemoteRegistry::on(page.web.channel(None)?);
    registry.get_service(&page.session.namespace, name).await
}

/// `GET /services[/name[/endpoint]]`.
pub(crate) async fn get(page: &Page) -> Response<Body> {
    match page.rest.as_slice() {
        [] => list(page).await,
        [name] => one(page, name).await,
        [name, endpoint] => endpoint_page(page, name, endpoint, None).await,
        _ => super::not_found(page),
    }
}

/// `POST /services/name/endpoint`: calls it.
pub(crate) async fn post(page: &Page, form: &Form) -> Response<Body> {
    let [name, endpoint] = page.rest.as_slice() else { return super::not_found(page) };
    endpoint_page(page, name, endpoint, Some(form)).await
}

async fn list(page: &Page) -> Response<Body> {
    let (all, gateway) = tokio::join!(services(page), Gateway::of(page));
    let all = match all {
        Ok(s) => s,
        Err(e) => return failed(page, "Services", &e),
    };
    let mut names: Vec<&str> = all.iter().map(|s| s.name.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    let body = html! {
        @if names.is_empty() {
            p { "No services are registered in " code { (page.session.namespace) } " yet. Start one with "
                code { "micro run" } "." }
        } @else {
            table {
                thead { tr { th scope="col" { "Service" } th scope="col" { "Versions" } th scope="col" { "Nodes" } th scope="col" { "Endpoints" } } }
                tbody {
                    @for name in &names {
                        @let versions: Vec<&Service> = all.iter().filter(|s| s.name == *name).collect();
                        tr {
                            td { a href={ "/services/" (encode(name)) } { (name) } }
                            td { @for v in &versions { span.badge { (if v.version.is_empty() { "-" } else { &v.version }) } " " } }
                            td { (versions.iter().map(|v| v.nodes.len()).sum::<usize>()) }
                            td { (versions.iter().map(|v| v.endpoints.len()).max().unwrap_or(0)) }
                        }
                    }
                }
            }
        }
        (gateway::openapi(page, gateway.as_ref(), None))
    };
    page_response(StatusCode::OK, html::layout(page, "Services", "services", body))
}

async fn one(page: &Page, name: &str) -> Response<Body> {
    let (versions, gateway) = tokio::join!(service(page, name), Gateway::of(page));
    let versions = match versions {
        Ok(v) if !v.is_empty() => v,
        Ok(_) => return missing(page, name),
        Err(e) if e.code() == micro_core::Code::NotFound => return missing(page, name),
        Err(e) => return failed(page, name, &e),
    };
    let body = html! {
        (gateway::openapi(page, gateway.as_ref(), Some(name)))
        @for v in &versions {
            h2 { "Version " (if v.version.is_empty() { "-" } else { &v.version }) }
            @if !v.metadata.is_empty() {
                p.hint { @for (k, val) in &v.metadata { code { (k) "=" (val) } " " } }
            }
            h3 { "Nodes" }
            table {
                thead { tr { th scope="col" { "Id" } th scope="col" { "Address" } th scope="col" { "Metadata" } } }
                tbody {
                    @for n in &v.nodes {
                        tr { td { code { (n.id) } } td { code { (n.address) } } td { @for (k, val) in &n.metadata { code { (k) "=" (val) } " " } } }
                    }
                }
            }
            h3 { "Endpoints" }
            @if v.endpoints.is_empty() {
                p { "No endpoints declared (an HTTP app: call it through the gateway at " code { "/" (name) "/…" } ")." }
            } @else {
                ul {
                    @for e in &v.endpoints {
                        li {
                            a href={ "/services/" (encode(name)) "/" (encode(&e.name)) } { (e.name) }
                            @if let Some(kind) = e.stream() { " " span.badge { (kind) " stream" } }
                        }
                    }
                }
            }
        }
    };
    page_response(StatusCode::OK, html::layout(page, name, "services", body))
}

fn missing(page: &Page, name: &str) -> Response<Body> {
    let body = html! { p { "No service " code { (name) } " in " code { (page.session.namespace) } "." } };
    page_response(StatusCode::NOT_FOUND, html::layout(page, "Not found", "services", body))
}

fn failed(page: &Page, title: &str, e: &Status) -> Response<Body> {
    let status = super::status_code(e);
    page_response(status, html::layout(page, title, "services", html::error(e)))
}

async fn endpoint_page(page: &Page, name: &str, endpoint: &str, form: Option<&Form>) -> Response<Body> {
    let versions = match service(page, name).await {
        Ok(v) => v,
        Err(e) if e.code() == micro_core::Code::NotFound => return missing(page, name),
        Err(e) => return failed(page, name, &e),
    };
    let Some(ep) = versions.iter().flat_map(|v| v.endpoints.iter()).find(|e| e.name == endpoint).cloned() else {
        return missing(page, &format!("{name} {endpoint}"));
    };
    let raw = page.query("raw").is_some() || form.is_some_and(|f| f.get("_mode") == "raw");
    let schema = Schema { root: &ep.request };
    // The call, when the form was submitted.
    let mut status = StatusCode::OK;
    let outcome = match form {
        None => None,
        Some(f) => {
            let request = if raw {
                parse_raw(f.get("_json"))
            } else {
                schema.build(&schema.resolve(&ep.request).clone(), "f", f, 0)
            };
            Some(match request {
                Err(problem) => {
                    status = StatusCode::BAD_REQUEST;
                    Err(Status::bad_request("web", problem))
                }
                Ok(req) => {
                    let req = if req.is_null() { Value::Object(Map::new()) } else { req };
                    let reply = page.client().call_json(name, endpoint, &req).await;
                    if let Err(e) = &reply {
                        status = super::status_code(e);
                    }
                    reply.map(|r| (req, r))
                }
            })
        }
    };
    let title = format!("{name} · {endpoint}");
    let action = format!("/services/{}/{}", encode(name), encode(endpoint));
    let sent_json = form.map(|f| f.get("_json").to_string()).filter(|s| !s.is_empty());
    let body = html! {
        p { a href={ "/services/" (encode(name)) } { "← " (name) } }
        @if let Some(kind) = ep.stream() {
            p { "This is a " (kind) "-streaming endpoint: call it with " code { "micro call" } " or through the gateway (server streams as Server-Sent Events)." }
        } @else {
            nav.actions aria-label="Request mode" {
                @if raw { a href=(action) { "Form" } " · " strong { "Raw JSON" } }
                @else { strong { "Form" } " · " a href={ (action) "?raw=1" } { "Raw JSON" } }
            }
            form.stack method="post" action=(action) {
                (csrf(page))
                @if raw {
                    input type="hidden" name="_mode" value="raw";
                    label for="_json" { "Request (JSON)" }
                    textarea #_json name="_json" spellcheck="false" {
                        (sent_json.clone().unwrap_or_else(|| serde_json::to_string_pretty(&schema.example(&ep.request, 0)).unwrap_or_default()))
                    }
                } @else {
                    (schema.fields(&ep.request, "f", form, 0))
                }
                div.actions { button type="submit" { "Call " (endpoint) } }
            }
            @if let Some(outcome) = &outcome {
                section aria-live="polite" {
                    h2 { "Response" }
                    @match outcome {
                        Ok((_, reply)) => { (html::json(reply)) }
                        Err(e) => { (html::error(e)) }
                    }
                }
            }
            details {
                summary { "Request schema" }
                (html::json(&ep.request))
            }
        }
    };
    page_response(status, html::layout(page, &title, "services", body))
}

fn parse_raw(text: &str) -> Result<Value, String> {
    if text.trim().is_empty() {
        return Ok(Value::Object(Map::new()));
    }
    serde_json::from_str(text).map_err(|e| format!("the request is not valid JSON: {e}"))
}

/// A JSON Schema and the definitions its `$ref`s point into.
struct Schema<'a> {
    root: &'a Value,
}

/// What a schema asks for.
enum Kind<'a> {
    Object(&'a Map<String, Value>, Vec<String>),
    Array(&'a Value),
    Enum(Vec<String>),
    String,
    Integer,
    Number,
    Boolean,
    Any,
}

impl<'a> Schema<'a> {
    /// Follows `$ref`s (`#/$defs/…`, `#/definitions/…`) and `anyOf`/`oneOf` with `null`.
    fn resolve(&self, s: &'a Value) -> &'a Value {
        let mut s = s;
        for _ in 0..8 {
            if let Some(r) = s.get("$ref").and_then(Value::as_str) {
                let pointer = r.trim_start_matches('#');
                match self.root.pointer(pointer) {
                    Some(t) => s = t,
                    None => return s,
                }
                continue;
            }
            let branches = s.get("anyOf").or_else(|| s.get("oneOf")).and_then(Value::as_array);
            if let Some(b) = branches
                && let Some(one) = b.iter().find(|x| x.get("type").and_then(Value::as_str) != Some("null"))
            {
                s = one;
                continue;
            }
            return s;
        }
        s
    }

    fn kind(&self, s: &'a Value) -> Kind<'a> {
        let s = self.resolve(s);
        if let Some(values) = s.get("enum").and_then(Value::as_array) {
            return Kind::Enum(
                values.iter().map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string)).collect(),
            );
        }
        let ty = match s.get("type") {
            Some(Value::String(t)) => t.as_str(),
            Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).find(|t| *t != "null").unwrap_or(""),
            _ if s.get("properties").is_some() => "object",
            _ => "",
        };
        match ty {
            "object" => match s.get("properties").and_then(Value::as_object) {
                Some(p) => {
                    let required = s
                        .get("required")
                        .and_then(Value::as_array)
                        .map(|r| r.iter().filter_map(Value::as_str).map(str::to_string).collect())
                        .unwrap_or_default();
                    Kind::Object(p, required)
                }
                None => Kind::Any,
            },
            "array" => Kind::Array(s.get("items").unwrap_or(&Value::Null)),
            "string" => Kind::String,
            "integer" => Kind::Integer,
            "number" => Kind::Number,
            "boolean" => Kind::Boolean,
            _ => Kind::Any,
        }
    }

    fn is_scalar(&self, s: &'a Value) -> bool {
        matches!(self.kind(s), Kind::String | Kind::Integer | Kind::Number | Kind::Boolean | Kind::Enum(_))
    }

    /// The form fields for `s`, named `path` (`f.a.b`), filled from a submitted form.
    fn fields(&self, s: &'a Value, path: &str, form: Option<&Form>, depth: usize) -> Markup {
        let value = |p: &str| form.map(|f| f.get(p).to_string()).unwrap_or_default();
        let label = path.rsplit('.').next().unwrap_or(path).to_string();
        let id = path.replace('.', "-");
        let description = self.resolve(s).get("description").and_then(Value::as_str).map(str::to_string);
        let hint = |extra: &str| {
            html! {
                @if let Some(d) = &description { span.hint { (d) } }
                @if !extra.is_empty() { span.hint { (extra) } }
            }
        };
        match self.kind(s) {
            Kind::Object(props, required) if depth < MAX_DEPTH => html! {
                @if depth == 0 {
                    @if props.is_empty() { p.hint { "This endpoint takes no fields." } }
                    @for (name, sub) in props {
                        (self.fields(sub, &format!("{path}.{name}"), form, depth + 1))
                    }
                } @else {
                    fieldset {
                        legend { (label) @if required.contains(&label) { " *" } }
                        @for (name, sub) in props {
                            (self.fields(sub, &format!("{path}.{name}"), form, depth + 1))
                        }
                    }
                }
            },
            Kind::String => html! {
                div.field { label for=(id) { (label) } input #(id) name=(path) value=(value(path)); (hint("")) }
            },
            Kind::Integer => html! {
                div.field { label for=(id) { (label) } input #(id) name=(path) type="number" step="1" inputmode="numeric" value=(value(path)); (hint("")) }
            },
            Kind::Number => html! {
                div.field { label for=(id) { (label) } input #(id) name=(path) type="number" step="any" inputmode="decimal" value=(value(path)); (hint("")) }
            },
            Kind::Boolean => html! {
                div.field {
                    label for=(id) { (label) }
                    select #(id) name=(path) {
                        option value="" { "(unset)" }
                        option value="true" selected[value(path) == "true"] { "true" }
                        option value="false" selected[value(path) == "false"] { "false" }
                    }
                    (hint(""))
                }
            },
            Kind::Enum(values) => html! {
                div.field {
                    label for=(id) { (label) }
                    select #(id) name=(path) {
                        option value="" { "(unset)" }
                        @for v in &values { option value=(v) selected[value(path) == *v] { (v) } }
                    }
                    (hint(""))
                }
            },
            Kind::Array(items) if self.is_scalar(items) => html! {
                div.field {
                    label for=(id) { (label) }
                    textarea #(id) name=(path) rows="3" { (value(path)) }
                    (hint("One value per line."))
                }
            },
            _ => html! {
                div.field {
                    label for=(id) { (label) }
                    textarea #(id) name=(path) rows="3" spellcheck="false" { (value(path)) }
                    (hint("JSON."))
                }
            },
        }
    }

    /// The request a submitted form stands for; empty fields are left out.
    fn build(&self, s: &'a Value, path: &str, form: &Form, depth: usize) -> Result<Value, String> {
        let text = form.get(path).trim().to_string();
        let bad = |what: &str| format!("{}: {what}", path.trim_start_matches("f.").trim_start_matches('f'));
        match self.kind(s) {
            Kind::Object(props, _) if depth < MAX_DEPTH => {
                let mut out = Map::new();
                for (name, sub) in props {
                    let v = self.build(sub, &format!("{path}.{name}"), form, depth + 1)?;
                    if !v.is_null() {
                        out.insert(name.clone(), v);
                    }
                }
                Ok(if out.is_empty() && depth > 0 { Value::Null } else { Value::Object(out) })
            }
            _ if text.is_empty() => Ok(Value::Null),
            Kind::String | Kind::Enum(_) => Ok(Value::String(text)),
            Kind::Integer => {
                text.parse::<i64>().map(Value::from).map_err(|_| bad(&format!("{text:?} is not a whole number")))
            }
            Kind::Number => text
                .parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
                .map(Value::Number)
                .ok_or_else(|| bad(&format!("{text:?} is not a number"))),
            Kind::Boolean => match text.as_str() {
                "true" => Ok(Value::Bool(true)),
                "false" => Ok(Value::Bool(false)),
                _ => Err(bad("choose true or false")),
            },
            Kind::Array(items) if self.is_scalar(items) => {
                let mut out = Vec::new();
                for (i, line) in text.lines().map(str::trim).filter(|l| !l.is_empty()).enumerate() {
                    let one = Form(vec![(format!("{path}[{i}]"), line.to_string())]);
                    out.push(self.build(items, &format!("{path}[{i}]"), &one, depth + 1)?);
                }
                Ok(Value::Array(out))
            }
            _ => serde_json::from_str(&text).map_err(|e| bad(&format!("not valid JSON ({e})"))),
        }
    }

    /// An example request for the raw mode: every field with a placeholder.
    fn example(&self, s: &'a Value, depth: usize) -> Value {
        match self.kind(s) {
            Kind::Object(props, _) if depth < MAX_DEPTH => {
                Value::Object(props.iter().map(|(k, v)| (k.clone(), self.example(v, depth + 1))).collect())
            }
            Kind::String => Value::String(String::new()),
            Kind::Enum(v) => Value::String(v.first().cloned().unwrap_or_default()),
            Kind::Integer | Kind::Number => Value::from(0),
            Kind::Boolean => Value::Bool(false),
            Kind::Array(_) => Value::Array(Vec::new()),
            _ => Value::Null,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(pairs: &[(&str, &str)]) -> Form {
        Form(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    #[test]
    fn forms_become_requests_by_the_schema() {
        let schema = serde_json::json!({
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "count": {"type": "integer"},
                "ratio": {"type": ["number", "null"]},
                "loud": {"type": "boolean"},
                "tags": {"type": "array", "items": {"type": "string"}},
                "where": {"$ref": "#/$defs/Place"},
                "mode": {"enum": ["a", "b"]}
            },
            "$defs": {"Place": {"type": "object", "properties": {"city": {"type": "string"}, "zip": {"type": "integer"}}}}
        });
        let s = Schema { root: &schema };
        let f = form(&[
            ("f.name", "Ada"),
            ("f.count", "3"),
            ("f.ratio", ""),
            ("f.loud", "true"),
            ("f.tags", "x\n\ny\n"),
            ("f.where.city", "Paris"),
            ("f.mode", "b"),
        ]);
        let v = s.build(&schema, "f", &f, 0).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"name": "Ada", "count": 3, "loud": true, "tags": ["x", "y"], "where": {"city": "Paris"}, "mode": "b"})
        );
        let err = s.build(&schema, "f", &form(&[("f.count", "three")]), 0).unwrap_err();
        assert!(err.contains("count") && err.contains("whole number"), "{err}");
        let err = s.build(&schema, "f", &form(&[("f.where.zip", "1.5")]), 0).unwrap_err();
        assert!(err.contains("where.zip"), "{err}");
        let html = s.fields(&schema, "f", Some(&f), 0).into_string();
        assert!(html.contains(r#"name="f.where.city""#) && html.contains(r#"value="Paris""#), "{html}");
        assert!(html.contains(r#"type="number""#) && html.contains("<select"), "{html}");
        assert_eq!(s.example(&schema, 0)["where"], serde_json::json!({"city": "", "zip": 0}));
        assert!(parse_raw("{nope").is_err());
    }
}
