//! Mailing lists (the `subscribe` product): the namespace's lists, each with its
//! subscribers counted by state, the tags that embed its form, its CSV export, and a form
//! that makes or changes a list. Every action is a call to the product's `Lists.*` and
//! `Subscribers.*` endpoints as the signed-in account (its admins, developers and data
//! accounts: the addresses are theirs to see).
//!
//! `GET /lists`, `POST /lists` (`action`: `save`, `delete`).

use super::html;
use super::{Form, Page, encode, page_response, redirect};
use axum::body::Body;
use http::{Response, StatusCode};
use micro_core::Status;
use serde_json::{Value, json};

/// The product's service name.
const SUBSCRIBE: &str = "subscribe";

/// `GET /lists`.
pub(crate) async fn get(page: &Page) -> Response<Body> {
    match page.rest.as_slice() {
        [] => lists(page, None).await,
        _ => super::not_found(page),
    }
}

/// `POST /lists`: saves a list, or deletes one.
pub(crate) async fn post(page: &Page, form: &Form) -> Response<Body> {
    if !page.rest.is_empty() {
        return super::not_found(page);
    }
    let client = page.client();
    let name = form.get("name").trim().to_string();
    match form.get("action") {
        "save" => {
            let redirect_url = Some(form.get("redirect_url").trim()).filter(|u| !u.is_empty());
            let list = json!({
                "name": name,
                "title": form.get("title").trim(),
                "double_opt_in": form.get("double_opt_in") == "on",
                "redirect_url": redirect_url,
            });
            match client.call_json(SUBSCRIBE, "Lists.Save", &list).await {
                Ok(_) => redirect(&format!("/lists?done={}", encode(&format!("List {name} saved.")))),
                Err(e) => lists(page, Some(e)).await,
            }
        }
        "delete" => match client.call_json(SUBSCRIBE, "Lists.Delete", &json!({"name": name})).await {
            Ok(_) => redirect(&format!("/lists?done={}", encode(&format!("List {name} deleted.")))),
            Err(e) => lists(page, Some(e)).await,
        },
        other => lists(page, Some(Status::bad_request("web", format!("unknown action {other:?}")))).await,
    }
}

/// The page: each list with its counts and embed tags, then the form.
async fn lists(page: &Page, error: Option<Status>) -> Response<Body> {
    let client = page.client();
    let all = match client.call_json(SUBSCRIBE, "Lists.List", &json!({})).await {
        Ok(v) => v["lists"].as_array().cloned().unwrap_or_default(),
        Err(e) => {
            let body = html::refused(
                page,
                &e,
                "manage this namespace's mailing lists (its admins, developers and data accounts)",
            );
            return page_response(super::status_code(&e), html::layout(page, "Mailing lists", "lists", body));
        }
    };
    let mut shown = Vec::new();
    for l in &all {
        let name = l["name"].as_str().unwrap_or_default().to_string();
        let subs = client
            .call_json(SUBSCRIBE, "Subscribers.List", &json!({"list": name}))
            .await
            .map(|v| v["subscribers"].as_array().cloned().unwrap_or_default())
            .unwrap_or_default();
        let count = |state: &str| subs.iter().filter(|s| s["state"] == state).count();
        shown.push((l.clone(), count("subscribed"), count("pending"), count("unsubscribed")));
    }
    let done = page.query("done").map(str::to_string);
    let ns = page.session.namespace.clone();
    let body = maud::html! {
        @if let Some(note) = done { p.notice role="status" { (note) } }
        @if let Some(e) = &error { (html::error(e)) }
        @if shown.is_empty() {
            p #lists-count { "No lists yet." }
        } @else {
            p #lists-count { (shown.len()) @if shown.len() == 1 { " list." } @else { " lists." } }
            table.lists {
                thead { tr { th scope="col" { "List" } th scope="col" { "Subscribed" } th scope="col" { "Pending" } th scope="col" { "Unsubscribed" } th scope="col" { "Embed" } th scope="col" { "" } } }
                tbody {
                    @for (l, subscribed, pending, gone) in &shown {
                        @let name = l["name"].as_str().unwrap_or_default();
                        tr {
                            td { strong { (name) } @if let Some(t) = l["title"].as_str().filter(|t| !t.is_empty()) { br; small { (t) } } @if l["double_opt_in"] == Value::Bool(false) { br; small { "no double opt-in" } } }
                            td { (subscribed) }
                            td { (pending) }
                            td { (gone) }
                            td { code { "<script src=\"<API>/subscribe/v1/" (ns) "/lists/" (name) "/form.js\"></script>" } }
                            td {
                                form.inline method="post" action="/lists" data-confirm={ "Delete " (name) " and its subscribers?" } {
                                    (html::csrf(page))
                                    input type="hidden" name="action" value="delete";
                                    input type="hidden" name="name" value=(name);
                                    button.danger type="submit" aria-label={ "Delete " (name) } { "Delete" }
                                }
                            }
                        }
                    }
                }
            }
            p.hint { "Export a list's subscribers as CSV: " code { "GET <API>/subscribe/v1/lists/<list>/subscribers.csv" } " or " code { "micro subscribe subscribers.export --list <list>" } "." }
        }
        section {
            h2 { "Make or change a list" }
            form.stack method="post" action="/lists" {
                (html::csrf(page))
                input type="hidden" name="action" value="save";
                label for="name" { "Name (lowercase letters, digits, - and _)" }
                input #name name="name" required maxlength="40" pattern="[a-z0-9_\\-]{1,40}";
                label for="title" { "Title (in the mails and pages)" }
                input #title name="title" maxlength="200";
                label for="redirect_url" { "Page after confirming (optional)" }
                input #redirect_url name="redirect_url" type="url" placeholder="https://shop.example/thanks";
                label { input name="double_opt_in" type="checkbox" checked; " Confirm each address by mail (double opt-in)" }
                button type="submit" { "Save list" }
            }
        }
    };
    page_response(StatusCode::OK, html::layout(page, "Mailing lists", "lists", body))
}
