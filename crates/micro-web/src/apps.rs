//! Apps (the `apps` product): the namespace's static sites, each with its deploys
//! (newest first, the current one marked), a deploy served again with one button
//! (rollback, or forward), and an app deleted after a question. Every action is a call to
//! the product's `Apps.*` endpoints as the signed-in account: its team sees the apps, its
//! deployers (admins, developers, data accounts) change them. Deploying is `micro app
//! deploy` (a folder is not something a form sends).
//!
//! `GET /apps`, `POST /apps` (`action`: `rollback`, `delete`).

use super::html;
use super::{Form, Page, encode, page_response, redirect};
use axum::body::Body;
use http::{Response, StatusCode};
use micro_core::Status;
use serde_json::{Value, json};

/// The product's service name.
const APPS: &str = "apps";

/// `GET /apps`.
pub(crate) async fn get(page: &Page) -> Response<Body> {
    match page.rest.as_slice() {
        [] => apps(page, None).await,
        _ => super::not_found(page),
    }
}

/// `POST /apps`: serves a deploy again, or deletes an app.
pub(crate) async fn post(page: &Page, form: &Form) -> Response<Body> {
    if !page.rest.is_empty() {
        return super::not_found(page);
    }
    let client = page.client();
    let name = form.get("name").trim().to_string();
    match form.get("action") {
        "rollback" => {
            let to = form.get("to").trim().to_string();
            match client.call_json(APPS, "Apps.Rollback", &json!({"name": name, "to": to})).await {
                Ok(_) => redirect(&format!("/apps?done={}", encode(&format!("{name} serves deploy {to}.")))),
                Err(e) => apps(page, Some(e)).await,
            }
        }
        "delete" => match client.call_json(APPS, "Apps.Delete", &json!({"name": name})).await {
            Ok(_) => redirect(&format!("/apps?done={}", encode(&format!("App {name} deleted.")))),
            Err(e) => apps(page, Some(e)).await,
        },
        other => apps(page, Some(Status::bad_request("web", format!("unknown action {other:?}")))).await,
    }
}

fn when(secs: &Value) -> String {
    micro_core::time::utc(secs.as_u64().unwrap_or(0) * 1000).get(..16).unwrap_or_default().to_string()
}

/// The page: each app with its deploys.
async fn apps(page: &Page, error: Option<Status>) -> Response<Body> {
    let client = page.client();
    let list = match client.call_json(APPS, "Apps.List", &json!({})).await {
        Ok(v) => v["apps"].as_array().cloned().unwrap_or_default(),
        Err(e) => {
            let body = html::refused(page, &e, "see this namespace's apps (its team)");
            return page_response(super::status_code(&e), html::layout(page, "Apps", "apps", body));
        }
    };
    let mut shown = Vec::new();
    for a in &list {
        let name = a["name"].as_str().unwrap_or_default().to_string();
        let deploys = match client.call_json(APPS, "Apps.Get", &json!({"name": name})).await {
            Ok(v) => v["deploys"].as_array().cloned().unwrap_or_default(),
            Err(_) => Vec::new(),
        };
        shown.push((name, a["current"].as_str().unwrap_or_default().to_string(), deploys));
    }
    let done = page.query("done").map(str::to_string);
    let ns = page.session.namespace.clone();
    let body = maud::html! {
        @if let Some(note) = done { p.notice role="status" { (note) } }
        @if let Some(e) = &error { (html::error(e)) }
        p { "Static sites of namespace " strong { (ns) } ", each on its own host ("
            code { "<app>." (ns) ".<hosting domain>" } ") and under " code { "/apps/<app>/" } " of the API. Deploy with "
            code { "micro app deploy ./dist --name <app>" } "." }
        @if shown.is_empty() {
            p #apps-count { "No apps yet." }
        } @else {
            p #apps-count { (shown.len()) @if shown.len() == 1 { " app." } @else { " apps." } }
        }
        @for (name, current, deploys) in &shown {
            section.app {
                h2 { (name) }
                table.deploys {
                    thead { tr { th scope="col" { "Deploy" } th scope="col" { "Files" } th scope="col" { "Size" } th scope="col" { "By" } th scope="col" { "Deployed" } th scope="col" { "" } } }
                    tbody {
                        @for d in deploys {
                            @let id = d["id"].as_str().unwrap_or_default();
                            tr {
                                td { code { (id) } @if id == current { " (serving)" } @if d["preview"] == Value::Bool(true) { " (preview)" } }
                                td { (d["files"]) }
                                td { (html::bytes(d["size"].as_u64().unwrap_or(0))) }
                                td { (d["by"].as_str().unwrap_or_default()) }
                                td { (when(&d["created"])) }
                                td {
                                    @if id != current {
                                        form.inline method="post" action="/apps" {
                                            (html::csrf(page))
                                            input type="hidden" name="action" value="rollback";
                                            input type="hidden" name="name" value=(name);
                                            input type="hidden" name="to" value=(id);
                                            button type="submit" aria-label={ "Serve " (id) } { "Serve this one" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
                form.inline method="post" action="/apps" data-confirm={ "Delete " (name) " and every deploy of it?" } {
                    (html::csrf(page))
                    input type="hidden" name="action" value="delete";
                    input type="hidden" name="name" value=(name);
                    button.danger type="submit" aria-label={ "Delete " (name) } { "Delete app" }
                }
            }
        }
        p.hint { "The same as " code { "micro app list" } ", " code { "micro app rollback <app> --to <deploy>" } " and " code { "micro app delete <app>" } "." }
    };
    page_response(StatusCode::OK, html::layout(page, "Apps", "apps", body))
}
