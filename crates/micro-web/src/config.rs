//! Config: the namespace's config document as a tree, secrets masked, with a button per
//! secret that reveals that one value (a POST, so it never lands in a URL or a cache);
//! forms to set a value at a path (JSON or text, optionally secret) and to delete a path.
//!
//! Every call goes to the `config` service as the signed-in account; reading a secret
//! in clear is an admin's right, checked by the service.

use super::html::{self, csrf};
use super::{Form, Page, encode, page_response, redirect};
use axum::body::Body;
use http::{Response, StatusCode};
use maud::{Markup, html};
use micro_core::Status;
use micro_core::config::{MASK, MAX_VALUE, parse_path};
use serde_json::Value;

fn bad(detail: impl Into<String>) -> Status {
    Status::bad_request("web", detail)
}

/// `GET /config[?path=a.b]`.
pub(crate) async fn get(page: &Page) -> Response<Body> {
    if !page.rest.is_empty() {
        return super::not_found(page);
    }
    let mut view = View::default();
    if let Some(p) = page.query("path") {
        view.set.path = p.to_string();
        view.delete = p.to_string();
        view.select = true;
    }
    render(page, view).await
}

/// `POST /config` with `action` set, delete or reveal.
pub(crate) async fn post(page: &Page, form: &Form) -> Response<Body> {
    if !page.rest.is_empty() {
        return super::not_found(page);
    }
    let ns = &page.session.namespace;
    let config = page.data().config;
    match form.get("action") {
        "set" => {
            let f = SetForm::of(form);
            let (path, value) = match f.parse() {
                Ok(p) => p,
                Err(problem) => {
                    return render(
                        page,
                        View { set: f, problem: Some((Part::Set, bad(problem))), ..Default::default() },
                    )
                    .await;
                }
            };
            match config.set(ns, &path, &value, f.secret).await {
                Ok(()) => redirect(&format!("/config?saved={}", encode(&path))),
                Err(e) => render(page, View { set: f, problem: Some((Part::Set, e)), ..Default::default() }).await,
            }
        }
        "delete" => {
            let raw = form.get("path").to_string();
            let path = match check_path(&raw) {
                Ok(p) => p,
                Err(problem) => {
                    return render(
                        page,
                        View { delete: raw, problem: Some((Part::Delete, bad(problem))), ..Default::default() },
                    )
                    .await;
                }
            };
            match config.delete(ns, &path).await {
                Ok(()) => redirect(&format!("/config?deleted={}", encode(&path))),
                Err(e) => {
                    render(page, View { delete: raw, problem: Some((Part::Delete, e)), ..Default::default() }).await
                }
            }
        }
        "reveal" => {
            let path = match check_path(form.get("path")) {
                Ok(p) => p,
                Err(problem) => {
                    return render(page, View { problem: Some((Part::Tree, bad(problem))), ..Default::default() })
                        .await;
                }
            };
            let shown = match config.get(ns, &path, true).await {
                Ok(Some(v)) => View { revealed: Some((path, v)), ..Default::default() },
                Ok(None) => {
                    let e = Status::not_found("config", format!("nothing is set at {path}"));
                    View { problem: Some((Part::Tree, e)), ..Default::default() }
                }
                Err(e) => View { problem: Some((Part::Tree, e)), ..Default::default() },
            };
            render(page, shown).await
        }
        _ => render(page, View { problem: Some((Part::Tree, bad("unknown action"))), ..Default::default() }).await,
    }
}

/// Which part of the page a problem belongs to.
#[derive(Clone, Copy, PartialEq)]
enum Part {
    Tree,
    Set,
    Delete,
}

/// What the page shows besides the document.
#[derive(Default)]
struct View {
    set: SetForm,
    /// The delete form's path.
    delete: String,
    /// A path was picked in the tree (`?path=`): fill the set form with its value.
    select: bool,
    /// A secret shown in clear: (path, value).
    revealed: Option<(String, Value)>,
    problem: Option<(Part, Status)>,
}

/// What the set form holds.
#[derive(Default)]
struct SetForm {
    path: String,
    value: String,
    /// json or text.
    kind: String,
    secret: bool,
}

impl SetForm {
    fn of(form: &Form) -> SetForm {
        SetForm {
            path: form.get("path").to_string(),
            value: form.get("value").to_string(),
            kind: form.get("kind").to_string(),
            secret: !form.get("secret").is_empty(),
        }
    }

    /// The path and value to set, or what is wrong with the form.
    fn parse(&self) -> Result<(String, Value), String> {
        let path = check_path(&self.path)?;
        Ok((path, parse_value(&self.kind, &self.value)?))
    }
}

/// A path to set or delete: not empty (the whole document is not deleted or replaced
/// from a form) and well-formed.
fn check_path(text: &str) -> Result<String, String> {
    let path = text.trim();
    if path.is_empty() {
        return Err("Enter a path, like app.db.url.".into());
    }
    parse_path(path).map_err(|_| {
        format!("{path:?} is not a path: use names of letters, digits, '_' and '-' joined by dots, like app.db.url.")
    })?;
    Ok(path.to_string())
}

/// A submitted value: JSON (the default), or text stored as a JSON string.
fn parse_value(kind: &str, text: &str) -> Result<Value, String> {
    let text = text.replace("\r\n", "\n");
    let value = match kind {
        "text" => Value::String(text),
        "" | "json" => {
            if text.trim().is_empty() {
                return Err("Enter a JSON value (like \"text\", 42, true or {\"a\": 1}), or choose text.".into());
            }
            serde_json::from_str(&text)
                .map_err(|e| format!("The value is not valid JSON ({e}); choose text to store it as a string."))?
        }
        other => return Err(format!("Unknown value kind {other:?}.")),
    };
    let size = serde_json::to_string(&value).map_or(0, |s| s.len());
    if size > MAX_VALUE {
        return Err(format!("The value is {size} bytes as JSON; the limit is {MAX_VALUE}."));
    }
    Ok(value)
}

/// The value at a dotted path of a document.
fn at<'a>(doc: &'a Value, path: &str) -> Option<&'a Value> {
    let segs = parse_path(path).ok()?;
    segs.iter().try_fold(doc, |v, s| v.get(*s))
}

/// Whether a value read with secrets masked is a secret.
fn is_masked(v: &Value) -> bool {
    v.as_str() == Some(MASK)
}

/// A leaf as one line of JSON.
fn compact(v: &Value) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// A value for the set form's textarea.
fn editable(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

/// The document as nested lists: objects fold open and shut, leaves show their JSON,
/// secrets their mask and a Reveal button.
fn tree(page: &Page, v: &Value, path: &str, revealed: Option<&(String, Value)>) -> Markup {
    let Some(obj) = v.as_object() else { return html! { code { (compact(v)) } } };
    html! {
        ul.tree {
            @for (k, child) in obj {
                @let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                @let addressable = parse_path(&p).is_ok();
                li {
                    @if child.as_object().is_some_and(|o| !o.is_empty()) {
                        details open {
                            summary { code { (k) } }
                            (tree(page, child, &p, revealed))
                        }
                    } @else if is_masked(child) {
                        code { (k) } ": "
                        span.badge { "secret" } " "
                        @match revealed.filter(|(rp, _)| *rp == p) {
                            Some((_, value)) => {
                                span role="status" { "Revealed: " }
                                pre.json { code { (editable(value)) } }
                            }
                            None => {
                                span role="img" aria-label="masked value" { "••••••" } " "
                                @if addressable {
                                    form.inline method="post" action="/config" {
                                        (csrf(page))
                                        input type="hidden" name="action" value="reveal";
                                        input type="hidden" name="path" value=(p);
                                        button.secondary type="submit" aria-label={ "Reveal " (p) } { "Reveal" }
                                    }
                                }
                            }
                        }
                        @if addressable { " " a href={ "/config?path=" (encode(&p)) "#set" } aria-label={ "Edit " (p) } { "Edit" } }
                    } @else {
                        code { (k) } ": " code { (compact(child)) }
                        @if addressable { " " a href={ "/config?path=" (encode(&p)) "#set" } aria-label={ "Edit " (p) } { "Edit" } }
                    }
                }
            }
        }
    }
}

async fn render(page: &Page, mut view: View) -> Response<Body> {
    let ns = &page.session.namespace;
    let doc = match page.data().config.get(ns, "", false).await {
        Ok(d) => d.unwrap_or(Value::Null),
        Err(e) => {
            return page_response(super::status_code(&e), html::layout(page, "Config", "config", html::error(&e)));
        }
    };
    if view.select {
        match at(&doc, &view.set.path) {
            Some(v) if is_masked(v) => view.set.secret = true,
            Some(v) => {
                view.set.value = editable(v);
                view.set.kind = "json".into();
            }
            None => {}
        }
    }
    let picked_secret = view.select && at(&doc, &view.set.path).is_some_and(is_masked);
    let status = view.problem.as_ref().map_or(StatusCode::OK, |(_, e)| super::status_code(e));
    let problem = |part: Part| view.problem.as_ref().filter(|(p, _)| *p == part).map(|(_, e)| html::error(e));
    let notice = page
        .query("saved")
        .map(|p| format!("Saved {p}."))
        .or_else(|| page.query("deleted").map(|p| format!("Deleted {p}.")));
    let kind = if view.set.kind.is_empty() { "json" } else { view.set.kind.as_str() };
    let empty = doc.is_null() || doc.as_object().is_some_and(|o| o.is_empty());
    let body = html! {
        @if let Some(n) = notice { p.ok role="status" { (n) } }
        (problem(Part::Tree).unwrap_or_default())
        h2 { "Document of " (ns) }
        @if empty {
            p { "Nothing is set in " code { (ns) } " yet." }
        } @else if doc.is_object() {
            p.hint { "Secrets are masked; Reveal shows one (admins only)." }
            (tree(page, &doc, "", view.revealed.as_ref()))
        } @else {
            (html::json(&doc))
        }
        h2 #set { "Set a value" }
        (problem(Part::Set).unwrap_or_default())
        form.stack method="post" action="/config" {
            (csrf(page))
            input type="hidden" name="action" value="set";
            div.field {
                label for="set-path" { "Path" }
                input #set-path name="path" value=(view.set.path) required pattern="[A-Za-z0-9_\\-]+(\\.[A-Za-z0-9_\\-]+)*" aria-describedby="set-path-hint";
                span.hint #set-path-hint { "Dot-separated names, like app.db.url." }
            }
            div.field {
                label for="set-value" { "Value" }
                textarea #set-value name="value" rows="5" spellcheck="false" aria-describedby="set-value-hint" { (view.set.value) }
                span.hint #set-value-hint {
                    @if picked_secret { "This is a secret: its value is not shown; what you enter replaces it. " }
                    "An object merges into an object already there; anything else replaces."
                }
            }
            fieldset {
                legend { "The value is" }
                div {
                    input #kind-json type="radio" name="kind" value="json" checked[kind == "json"];
                    " " label for="kind-json" { "JSON" }
                }
                div {
                    input #kind-text type="radio" name="kind" value="text" checked[kind == "text"];
                    " " label for="kind-text" { "Text (stored as a string)" }
                }
            }
            div {
                input #set-secret type="checkbox" name="secret" value="1" checked[view.set.secret];
                " " label for="set-secret" { "Secret (encrypted at rest, shown masked)" }
            }
            div.actions { button type="submit" { "Set" } }
        }
        h2 #delete { "Delete a path" }
        (problem(Part::Delete).unwrap_or_default())
        form.stack method="post" action="/config" data-confirm="Delete this path and everything under it?" {
            (csrf(page))
            input type="hidden" name="action" value="delete";
            div.field {
                label for="del-path" { "Path" }
                input #del-path name="path" value=(view.delete) required aria-describedby="del-path-hint";
                span.hint #del-path-hint { "Deletes the value or the whole subtree there." }
            }
            div.actions { button.danger type="submit" { "Delete" } }
        }
    };
    page_response(status, html::layout(page, "Config", "config", body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths_are_checked() {
        assert_eq!(check_path(" app.db.url "), Ok("app.db.url".into()));
        assert!(check_path("").unwrap_err().contains("Enter a path"));
        for bad in ["a..b", ".a", "a b", "a/b", "é"] {
            assert!(check_path(bad).unwrap_err().contains("not a path"), "{bad}");
        }
    }

    #[test]
    fn values_are_json_or_text() {
        assert_eq!(parse_value("json", "{\"a\": 1}"), Ok(json!({"a": 1})));
        assert_eq!(parse_value("", "42"), Ok(json!(42)));
        assert!(parse_value("json", "hello").unwrap_err().contains("not valid JSON"));
        assert!(parse_value("json", " ").is_err());
        assert_eq!(parse_value("text", "a\r\nb"), Ok(json!("a\nb")));
        assert_eq!(parse_value("text", ""), Ok(json!("")));
        assert!(parse_value("xml", "<a/>").is_err());
        let f = SetForm { path: "x".into(), value: "true".into(), kind: "json".into(), secret: true };
        assert_eq!(f.parse(), Ok(("x".into(), json!(true))));
    }

    #[test]
    fn documents_are_walked() {
        let doc = json!({"app": {"db": {"url": "pg://", "password": MASK}, "n": 1}});
        assert_eq!(at(&doc, "app.n"), Some(&json!(1)));
        assert_eq!(at(&doc, "app.db.nope"), None);
        assert!(at(&doc, "app.db.password").is_some_and(is_masked));
        assert!(!is_masked(&json!("pg://")));
        assert_eq!(compact(&json!({"a": [1, "b"]})), "{\"a\":[1,\"b\"]}");
    }
}
