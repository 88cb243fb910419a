//! App users (the `users` product): the end users of the namespace's apps, a page of
//! them at a time, each erased with a confirmation; and the settings that turn them on
//! (signups, the app's name in the mails, the page mailed codes link to, whether an
//! address must be confirmed before a password sign-in). Every action is a call to the
//! product's `Users.*` endpoints as the signed-in account (a manager of the namespace:
//! its admins, developers and data accounts).
//!
//! `GET /users[?page=]`, `POST /users` (`action`: `settings`, `delete`).

use super::html;
use super::{Form, Page, encode, page_response, redirect};
use axum::body::Body;
use http::{Response, StatusCode};
use micro_core::Status;
use serde_json::{Value, json};

/// The product's service name.
const USERS: &str = "users";
/// Users a page shows.
const PER_PAGE: u32 = 50;

/// `GET /users`.
pub(crate) async fn get(page: &Page) -> Response<Body> {
    match page.rest.as_slice() {
        [] => users(page, None).await,
        _ => super::not_found(page),
    }
}

/// `POST /users`: saves the settings, or erases a user.
pub(crate) async fn post(page: &Page, form: &Form) -> Response<Body> {
    if !page.rest.is_empty() {
        return super::not_found(page);
    }
    let client = page.client();
    match form.get("action") {
        "settings" => {
            // What the form does not show (the password policy, the providers) stays.
            let mut settings = match client.call_json(USERS, "Users.Settings", &json!({})).await {
                Ok(v) => v,
                Err(e) => return users(page, Some(e)).await,
            };
            settings["app_name"] = json!(form.get("app_name").trim());
            settings["link_url"] = json!(form.get("link_url").trim());
            settings["signups"] = json!(form.get("signups") == "on");
            settings["verify_before_login"] = json!(form.get("verify_before_login") == "on");
            match client.call_json(USERS, "Users.SaveSettings", &settings).await {
                Ok(_) => redirect(&format!("/users?done={}", encode("The settings are saved: app users are on."))),
                Err(e) => users(page, Some(e)).await,
            }
        }
        "delete" => {
            let id = form.get("id").trim().to_string();
            match client.call_json(USERS, "Users.Delete", &json!({"id": id})).await {
                Ok(_) => redirect(&format!("/users?done={}", encode(&format!("User {id} erased.")))),
                Err(e) => users(page, Some(e)).await,
            }
        }
        other => users(page, Some(Status::bad_request("web", format!("unknown action {other:?}")))).await,
    }
}

/// The page: the settings, then the users.
async fn users(page: &Page, error: Option<Status>) -> Response<Body> {
    let client = page.client();
    let settings = match client.call_json(USERS, "Users.Settings", &json!({})).await {
        Ok(v) => v,
        Err(e) => {
            let body =
                html::refused(page, &e, "manage this namespace's app users (its admins, developers and data accounts)");
            return page_response(super::status_code(&e), html::layout(page, "App users", "users", body));
        }
    };
    let n: u32 = page.query("page").and_then(|p| p.parse().ok()).filter(|p| *p >= 1).unwrap_or(1);
    let listed = client.call_json(USERS, "Users.List", &json!({"page": n, "per_page": PER_PAGE})).await;
    let (list, list_error) = match listed {
        Ok(v) => (v["users"].as_array().cloned().unwrap_or_default(), None),
        Err(e) => (Vec::new(), Some(e)),
    };
    let on = |k: &str| settings[k].as_bool().unwrap_or(false);
    let text = |k: &str| settings[k].as_str().unwrap_or_default().to_string();
    let done = page.query("done").map(str::to_string);
    let ns = page.session.namespace.clone();
    let body = maud::html! {
        @if let Some(note) = done { p.notice role="status" { (note) } }
        @if let Some(e) = &error { (html::error(e)) }
        section {
            h2 { "Settings" }
            p { "Your app's own users (not your team) sign up, confirm their address and sign in at "
                code { "/users/v1/…" } " in namespace " strong { (ns) } ". Saving turns them on." }
            form.stack method="post" action="/users" {
                (html::csrf(page))
                input type="hidden" name="action" value="settings";
                label for="app_name" { "App name (in the mails)" }
                input #app_name name="app_name" value=(text("app_name")) maxlength="80";
                label for="link_url" { "Page the mailed codes link to (optional)" }
                input #link_url name="link_url" type="url" value=(text("link_url")) placeholder="https://shop.example/signin";
                label { input name="signups" type="checkbox" checked[on("signups")]; " Anyone may sign up" }
                label {
                    input name="verify_before_login" type="checkbox" checked[on("verify_before_login")];
                    " An address must be confirmed before a password sign-in"
                }
                button type="submit" { "Save settings" }
            }
        }
        section {
            h2 { "Users" }
            @if let Some(e) = &list_error { (html::error(e)) }
            @if list.is_empty() {
                p #users-count { "No users on this page." }
            } @else {
                p #users-count { (list.len()) @if list.len() == 1 { " user" } @else { " users" } " on page " (n) "." }
                table.users {
                    thead { tr { th scope="col" { "Email" } th scope="col" { "Name" } th scope="col" { "Confirmed" } th scope="col" { "Signed up" } th scope="col" { "Erase" } } }
                    tbody {
                        @for u in &list {
                            @let id = u["id"].as_str().unwrap_or_default();
                            @let email = u["email"].as_str().unwrap_or_default();
                            tr {
                                td { (email) }
                                td { (u["name"].as_str().unwrap_or_default()) }
                                td { @if u["verified"] == Value::Bool(true) { "yes" } @else { "no" } }
                                td { (micro_core::time::utc(u["created"].as_u64().unwrap_or(0) * 1000).get(..16).unwrap_or_default()) }
                                td {
                                    form.inline method="post" action="/users" data-confirm={ "Erase " (email) " and everything kept about them?" } {
                                        (html::csrf(page))
                                        input type="hidden" name="action" value="delete";
                                        input type="hidden" name="id" value=(id);
                                        button.danger type="submit" aria-label={ "Erase " (email) } { "Erase" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            nav.pages aria-label="Pages" {
                @if n > 1 { a href={ "/users?page=" (n - 1) } { "Previous" } }
                @if list.len() as u32 == PER_PAGE { a href={ "/users?page=" (n + 1) } { "Next" } }
            }
            p.hint { "The same as " code { "micro users list" } " and " code { "micro users delete --id …" } "." }
        }
    };
    page_response(StatusCode::OK, html::layout(page, "App users", "users", body))
}
