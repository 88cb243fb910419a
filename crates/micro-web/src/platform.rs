//! The platform's operators' page: the signup waitlist in the order addresses were
//! confirmed, "invite the next N" (or one address), and the signup settings. Every action
//! is a call to the platform product as the signed-in account, which only the platform's
//! operators (admins of `micro`) may make; others get a 403 page saying so.
//!
//! `GET /platform[?state=waiting]`, `POST /platform` (`action=invite` with `count` or
//! `email`; `action=settings`).

use super::html;
use super::{Form, Page, page_response, redirect};
use axum::body::Body;
use http::{Response, StatusCode};
use maud::html;
use micro_core::Status;
use serde_json::{Value, json};

/// The states an entry can be in, for the filter.
const STATES: [&str; 4] = ["unverified", "waiting", "invited", "joined"];

/// `GET /platform`.
pub(crate) async fn get(page: &Page) -> Response<Body> {
    match page.rest.as_slice() {
        [] => waitlist(page, None, StatusCode::OK).await,
        _ => super::not_found(page),
    }
}

/// `POST /platform`.
pub(crate) async fn post(page: &Page, form: &Form) -> Response<Body> {
    if !page.rest.is_empty() {
        return super::not_found(page);
    }
    let client = page.client();
    let result = match form.get("action") {
        "invite" => {
            let body = match (form.get("email").trim(), form.get("count").trim()) {
                ("", count) => match count.parse::<u32>() {
                    Ok(n) => json!({"count": n}),
                    Err(_) => return bad(page, "How many to invite is a whole number, like 10.").await,
                },
                (email, _) => json!({"emails": [email]}),
            };
            client.call_json("platform", "Platform.Invite", &body).await.map(|r| {
                let invited = r["invited"].as_array().map_or(0, Vec::len);
                let skipped: Vec<String> = r["skipped"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect();
                let mut note = format!("Invited {invited}.");
                if !skipped.is_empty() {
                    note.push_str(&format!(" Not invited: {}.", skipped.join("; ")));
                }
                note
            })
        }
        "settings" => {
            let mut body = json!({"invite_only": form.get("invite_only") == "on"});
            for field in ["batch", "invites_per_user"] {
                let v = form.get(field).trim();
                if !v.is_empty() {
                    match v.parse::<u32>() {
                        Ok(n) => body[field] = json!(n),
                        Err(_) => return bad(page, &format!("{v:?} is not a whole number.")).await,
                    }
                }
            }
            client.call_json("platform", "Platform.Settings", &body).await.map(|_| "Settings saved.".to_string())
        }
        _ => return bad(page, "Unknown action.").await,
    };
    match result {
        Ok(note) => redirect(&format!("/platform?done={}", super::encode(&note))),
        Err(e) => waitlist(page, Some(Err(e)), StatusCode::OK).await,
    }
}

async fn bad(page: &Page, why: &str) -> Response<Body> {
    let e = Status::bad_request("web", why);
    waitlist(page, Some(Err(e)), StatusCode::BAD_REQUEST).await
}

fn date(secs: &Value) -> String {
    secs.as_u64().map(|s| micro_core::time::utc(s * 1000).get(..16).unwrap_or_default().to_string()).unwrap_or_default()
}

/// The page, with the outcome of an action when there was one.
async fn waitlist(page: &Page, outcome: Option<Result<String, Status>>, status: StatusCode) -> Response<Body> {
    let state = page.query("state").filter(|s| STATES.contains(s)).map(str::to_string);
    let client = page.client();
    let listed = client.call_json("platform", "Platform.Waitlist", &json!({"state": state})).await;
    let entries = match listed {
        Ok(v) => v["entries"].as_array().cloned().unwrap_or_default(),
        Err(e) => {
            let body = html::refused(page, &e, "manage the platform's signups");
            return page_response(super::status_code(&e), html::layout(page, "Platform", "platform", body));
        }
    };
    let settings = client.call_json("platform", "Platform.Settings", &json!({})).await.unwrap_or(Value::Null);
    let done = page.query("done").map(str::to_string);
    let waiting = entries.iter().filter(|e| e["state"] == "waiting").count();
    let body = html! {
        @if let Some(note) = done { p.notice role="status" { (note) } }
        @if let Some(Err(e)) = &outcome { (html::error(e)) }
        section {
            h2 { "Waitlist" }
            p { (entries.len()) " shown, " (waiting) " waiting for an invite, in the order they confirmed their address." }
            form.filters method="get" action="/platform" {
                div.field {
                    label for="state" { "State" }
                    select #state name="state" {
                        option value="" { "All" }
                        @for s in STATES { option value=(s) selected[state.as_deref() == Some(s)] { (s) } }
                    }
                }
                div.actions { button type="submit" { "Show" } }
            }
            form.inline method="post" action="/platform" {
                (html::csrf(page))
                input type="hidden" name="action" value="invite";
                label for="count" { "Invite the next" }
                input #count name="count" type="number" min="1" max="1000" value=(settings["batch"].as_u64().unwrap_or(10));
                button type="submit" { "Invite" }
            }
            table.waitlist {
                thead { tr { th scope="col" { "Email" } th scope="col" { "State" } th scope="col" { "Confirmed" } th scope="col" { "Invited" } th scope="col" { "Namespace" } th scope="col" { "" } } }
                tbody {
                    @for e in &entries {
                        @let email = e["email"].as_str().unwrap_or_default();
                        tr {
                            td { (email) }
                            td.state { (e["state"].as_str().unwrap_or_default()) }
                            td { (date(&e["verified"])) }
                            td { (date(&e["invited"])) @if let Some(by) = e["invited_by"].as_str() { " by " (by) } }
                            td { (e["namespace"].as_str().unwrap_or("")) }
                            td {
                                @if e["state"] == "waiting" || e["state"] == "invited" {
                                    form.inline method="post" action="/platform" {
                                        (html::csrf(page))
                                        input type="hidden" name="action" value="invite";
                                        input type="hidden" name="email" value=(email);
                                        button type="submit" aria-label={ "Invite " (email) } {
                                            @if e["state"] == "invited" { "Invite again" } @else { "Invite" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        section {
            h2 { "Settings" }
            form.stack method="post" action="/platform" {
                (html::csrf(page))
                input type="hidden" name="action" value="settings";
                label { input type="checkbox" name="invite_only" checked[settings["invite_only"] != false]; " Invite-only (off: a confirmed address is invited at once)" }
                label for="batch" { "Batch size" }
                input #batch name="batch" type="number" min="1" max="1000" value=(settings["batch"].as_u64().unwrap_or(10));
                label for="invites_per_user" { "Invites each user may give" }
                input #invites_per_user name="invites_per_user" type="number" min="0" max="1000" value=(settings["invites_per_user"].as_u64().unwrap_or(3));
                button type="submit" { "Save" }
            }
            p.hint { "People sign up at " a href="/signup" { "/signup" } ". The same as " code { "micro platform waitlist" } " and " code { "micro platform invite" } "." }
        }
    };
    page_response(status, html::layout(page, "Platform", "platform", body))
}
