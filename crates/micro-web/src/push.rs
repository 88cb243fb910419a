//! Push notifications (the `push` product): the namespace's latest notifications with
//! what became of each (accepted, expired, failed, the errors in words, the receipts the
//! app reported), its browsers' subscriptions counted (in all, and per topic), and a form
//! that sends one to everyone, a topic's followers or one app user. Every action is a
//! call to the product's `Push.*` endpoints as the signed-in account (its admins,
//! developers and data accounts send).
//!
//! `GET /push`, `POST /push` (`action`: `send`).

use super::html;
use super::{Form, Page, encode, page_response, redirect};
use axum::body::Body;
use http::{Response, StatusCode};
use micro_core::Status;
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// The product's service name.
const PUSH: &str = "push";

/// `GET /push`.
pub(crate) async fn get(page: &Page) -> Response<Body> {
    match page.rest.as_slice() {
        [] => push(page, None, &Message::default()).await,
        _ => super::not_found(page),
    }
}

/// The send form as submitted (kept when it is shown again with the error).
#[derive(Default)]
struct Message {
    to: String,
    topic: String,
    user: String,
    title: String,
    body: String,
    url: String,
}

impl Message {
    fn from_form(form: &Form) -> Message {
        Message {
            to: form.get("to").to_string(),
            topic: form.get("topic").trim().to_string(),
            user: form.get("user").trim().to_string(),
            title: form.get("title").to_string(),
            body: form.get("body").to_string(),
            url: form.get("url").trim().to_string(),
        }
    }

    /// `Push.Send`'s request; the product says what is wrong with the rest.
    fn request(&self) -> Result<Value, Status> {
        let mut req = json!({"title": self.title, "body": self.body, "url": self.url});
        match self.to.as_str() {
            "" | "all" => req["all"] = json!(true),
            "topic" => req["topic"] = json!(self.topic),
            "user" => req["user"] = json!(self.user),
            other => {
                return Err(Status::bad_request("web", format!("send to all, a topic or a user, not {other:?}")));
            }
        }
        Ok(req)
    }
}

/// `POST /push`: sends a notification.
pub(crate) async fn post(page: &Page, form: &Form) -> Response<Body> {
    if !page.rest.is_empty() {
        return super::not_found(page);
    }
    match form.get("action") {
        "send" => {
            let message = Message::from_form(form);
            let req = match message.request() {
                Ok(r) => r,
                Err(e) => return push(page, Some(e), &message).await,
            };
            match page.client().call_json(PUSH, "Push.Send", &req).await {
                Ok(report) => redirect(&format!("/push?done={}", encode(&summary(&report)))),
                Err(e) => push(page, Some(e), &message).await,
            }
        }
        other => {
            let e = Status::bad_request("web", format!("unknown action {other:?}"));
            push(page, Some(e), &Message::default()).await
        }
    }
}

/// A send's report in a sentence: "Sent to 3 subscriptions: 2 accepted, 1 failed."
fn summary(report: &Value) -> String {
    let n = |k: &str| report[k].as_u64().unwrap_or(0);
    let subs = n("subscriptions");
    let noun = if subs == 1 { "subscription" } else { "subscriptions" };
    if subs == 0 {
        return "Sent to 0 subscriptions (app users online get it at once).".to_string();
    }
    let mut parts = vec![format!("{} accepted", n("accepted"))];
    if n("expired") > 0 {
        parts.push(format!("{} expired (removed)", n("expired")));
    }
    if n("failed") > 0 {
        parts.push(format!("{} failed (the errors are below)", n("failed")));
    }
    format!("Sent to {subs} {noun}: {}.", parts.join(", "))
}

fn when(secs: &Value) -> String {
    micro_core::time::utc(secs.as_u64().unwrap_or(0) * 1000).get(..16).unwrap_or_default().to_string()
}

/// The page: the send form, the subscriptions counted, then the latest notifications.
async fn push(page: &Page, error: Option<Status>, message: &Message) -> Response<Body> {
    let client = page.client();
    let messages = match client.call_json(PUSH, "Push.Messages", &json!({})).await {
        Ok(v) => v["messages"].as_array().cloned().unwrap_or_default(),
        Err(e) => {
            let body = html::refused(
                page,
                &e,
                "send this namespace's notifications (its admins, developers and data accounts)",
            );
            return page_response(super::status_code(&e), html::layout(page, "Push notifications", "push", body));
        }
    };
    let (subs, subs_error) = match client.call_json(PUSH, "Push.Subscriptions", &json!({})).await {
        Ok(v) => (v["subscriptions"].as_array().cloned().unwrap_or_default(), None),
        Err(e) => (Vec::new(), Some(e)),
    };
    let mut topics: BTreeMap<&str, usize> = BTreeMap::new();
    for t in subs.iter().filter_map(|s| s["topics"].as_array()).flatten().filter_map(Value::as_str) {
        *topics.entry(t).or_default() += 1;
    }
    let users = subs.iter().filter_map(|s| s["user"].as_str()).collect::<std::collections::BTreeSet<_>>().len();
    let to = if message.to.is_empty() { "all" } else { message.to.as_str() };
    let done = page.query("done").map(str::to_string);
    let ns = page.session.namespace.clone();
    let body = maud::html! {
        @if let Some(note) = done { p.notice role="status" { (note) } }
        @if let Some(e) = &error { (html::error(e)) }
        section {
            h2 { "Send a notification" }
            form.stack method="post" action="/push" {
                (html::csrf(page))
                input type="hidden" name="action" value="send";
                fieldset {
                    legend { "To" }
                    label { input type="radio" name="to" value="all" checked[to == "all"]; " Everyone" }
                    label { input type="radio" name="to" value="topic" checked[to == "topic"]; " The followers of a topic" }
                    label { input type="radio" name="to" value="user" checked[to == "user"]; " One app user" }
                }
                label for="topic" { "Topic (when to a topic)" }
                input #topic name="topic" value=(message.topic) maxlength="64" pattern="[a-z0-9_.\\-]{1,64}" placeholder="news";
                label for="user" { "App user's id (when to one user)" }
                input #user name="user" value=(message.user) maxlength="200";
                label for="title" { "Title" }
                input #title name="title" value=(message.title) required maxlength="200";
                label for="body" { "Text" }
                textarea #body name="body" maxlength="2000" { (message.body) }
                label for="url" { "Where a click leads (optional: an https:// URL or a path of the app)" }
                input #url name="url" value=(message.url) maxlength="2000" placeholder="/orders/7";
                button type="submit" { "Send" }
            }
        }
        section {
            h2 { "Subscriptions" }
            @if let Some(e) = &subs_error { (html::error(e)) }
            p #push-subscriptions {
                @if subs.len() == 1 { "1 subscription" } @else { (subs.len()) " subscriptions" }
                @if !subs.is_empty() { " of " (users) @if users == 1 { " user" } @else { " users" } } "."
            }
            @if !topics.is_empty() {
                table.topics {
                    thead { tr { th scope="col" { "Topic" } th.num scope="col" { "Subscriptions following it" } } }
                    tbody {
                        @for (t, n) in &topics {
                            tr { th scope="row" { (t) } td.num { (n) } }
                        }
                    }
                }
            }
            p.hint { "An app's pages subscribe their user's browser with " code { "micro.push.subscribe(registration, {topics})" }
                ", which hands the browser namespace " strong { (ns) } "'s key (" code { "GET <API>/push/v1/key" } ")." }
        }
        section {
            h2 { "Latest notifications" }
            @if messages.is_empty() {
                p #push-count { "Nothing sent yet." }
            } @else {
                p #push-count { (messages.len()) @if messages.len() == 1 { " notification." } @else { " notifications." } }
                table.push {
                    thead { tr {
                        th scope="col" { "Sent" } th scope="col" { "To" } th scope="col" { "Title" }
                        th.num scope="col" { "Subscriptions" } th.num scope="col" { "Accepted" }
                        th.num scope="col" { "Expired" } th.num scope="col" { "Failed" }
                        th.num scope="col" { "Delivered" } th.num scope="col" { "Clicked" }
                    } }
                    tbody {
                        @for m in &messages {
                            tr {
                                td { (when(&m["created"])) br; small { "by " (m["by"].as_str().unwrap_or_default()) } }
                                td { code { (m["target"].as_str().unwrap_or_default()) } }
                                td { (m["title"].as_str().unwrap_or_default()) }
                                td.num { (m["subscriptions"]) }
                                td.num { (m["accepted"]) }
                                td.num { (m["expired"]) }
                                td.num {
                                    (m["failed"])
                                    @for e in m["errors"].as_array().into_iter().flatten().filter_map(Value::as_str) {
                                        br; small { (e) }
                                    }
                                }
                                td.num { (m["receipts"]["delivered"].as_u64().unwrap_or(0)) }
                                td.num { (m["receipts"]["clicked"].as_u64().unwrap_or(0)) }
                            }
                        }
                    }
                }
            }
            p.hint { "The same as " code { "micro push send --all --title …" } " and " code { "micro push messages" } "." }
        }
    };
    page_response(StatusCode::OK, html::layout(page, "Push notifications", "push", body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_in_words() {
        let r = |s: u64, a: u64, e: u64, f: u64| json!({"subscriptions": s, "accepted": a, "expired": e, "failed": f});
        assert_eq!(summary(&r(0, 0, 0, 0)), "Sent to 0 subscriptions (app users online get it at once).");
        assert_eq!(summary(&r(1, 1, 0, 0)), "Sent to 1 subscription: 1 accepted.");
        assert_eq!(
            summary(&r(3, 1, 1, 1)),
            "Sent to 3 subscriptions: 1 accepted, 1 expired (removed), 1 failed (the errors are below)."
        );
        let to = |to: &str| Message { to: to.into(), topic: "news".into(), user: "u1".into(), ..Default::default() };
        assert_eq!(to("").request().unwrap()["all"], true);
        assert_eq!(to("topic").request().unwrap()["topic"], "news");
        assert_eq!(to("user").request().unwrap()["user"], "u1");
        assert!(to("nobody").request().unwrap_err().detail().contains("not \"nobody\""));
    }
}
