//! Mailing lists (the `subscribe` product): the namespace's lists, each with its
//! subscribers counted by state, the tags that embed its form, its CSV export, and a form
//! that makes or changes a list; under them the namespace's campaigns (each one's state,
//! mails sent and refused, opens and clicks), a form that makes a draft, buttons that send
//! a draft now, cancel one being sent and delete one, and each campaign's report with the
//! clicks per link. Every action is a call to the product's `Lists.*`, `Subscribers.*` and
//! `Campaigns.*` endpoints as the signed-in account (its admins, developers and data
//! accounts: the addresses are theirs to see).
//!
//! `GET /lists`, `GET /lists/campaigns/<name>`, `POST /lists` (`action`: `save`, `delete`,
//! `campaign-save`, `campaign-send`, `campaign-cancel`, `campaign-delete`).

use super::html;
use super::{Form, Page, encode, page_response, redirect};
use axum::body::Body;
use http::{Response, StatusCode};
use micro_core::Status;
use serde_json::{Value, json};

/// The product's service name.
const SUBSCRIBE: &str = "subscribe";

/// `GET /lists`, `GET /lists/campaigns/<name>`.
pub(crate) async fn get(page: &Page) -> Response<Body> {
    match page.rest.as_slice() {
        [] => lists(page, None, None).await,
        [c, name] if c == "campaigns" => report(page, name).await,
        _ => super::not_found(page),
    }
}

/// The campaign form as submitted (kept when it is shown again with the error).
#[derive(Default)]
struct Draft {
    name: String,
    list: String,
    subject: String,
    text: String,
    html: String,
    track: bool,
}

impl Draft {
    fn from_form(form: &Form) -> Draft {
        Draft {
            name: form.get("name").trim().to_string(),
            list: form.get("list").to_string(),
            subject: form.get("subject").to_string(),
            text: form.get("text").to_string(),
            html: form.get("html").to_string(),
            track: form.get("track") == "on",
        }
    }

    /// `Campaigns.Save`'s request; the product says what is wrong with it.
    fn request(&self) -> Value {
        let html = Some(self.html.as_str()).filter(|h| !h.trim().is_empty());
        json!({
            "name": self.name,
            "list": self.list,
            "subject": self.subject,
            "text": self.text,
            "html": html,
            "track": self.track,
        })
    }
}

/// `POST /lists`: saves or deletes a list; saves a campaign draft, sends one now, cancels
/// or deletes one.
pub(crate) async fn post(page: &Page, form: &Form) -> Response<Body> {
    if !page.rest.is_empty() {
        return super::not_found(page);
    }
    let client = page.client();
    let name = form.get("name").trim().to_string();
    let again = |e| lists(page, Some(e), None);
    let done = |what: String| redirect(&format!("/lists?done={}", encode(&what)));
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
                Ok(_) => done(format!("List {name} saved.")),
                Err(e) => again(e).await,
            }
        }
        "delete" => match client.call_json(SUBSCRIBE, "Lists.Delete", &json!({"name": name})).await {
            Ok(_) => done(format!("List {name} deleted.")),
            Err(e) => again(e).await,
        },
        "campaign-save" => {
            let draft = Draft::from_form(form);
            match client.call_json(SUBSCRIBE, "Campaigns.Save", &draft.request()).await {
                Ok(_) => done(format!("Campaign {name} saved as a draft.")),
                Err(e) => lists(page, Some(e), Some(&draft)).await,
            }
        }
        "campaign-send" => match client.call_json(SUBSCRIBE, "Campaigns.Send", &json!({"name": name})).await {
            Ok(_) => done(format!("Campaign {name} is being sent.")),
            Err(e) => again(e).await,
        },
        "campaign-cancel" => match client.call_json(SUBSCRIBE, "Campaigns.Cancel", &json!({"name": name})).await {
            Ok(_) => done(format!("Campaign {name} cancelled: what went, went.")),
            Err(e) => again(e).await,
        },
        "campaign-delete" => match client.call_json(SUBSCRIBE, "Campaigns.Delete", &json!({"name": name})).await {
            Ok(_) => done(format!("Campaign {name} deleted.")),
            Err(e) => again(e).await,
        },
        other => again(Status::bad_request("web", format!("unknown action {other:?}"))).await,
    }
}

fn when(secs: &Value) -> String {
    micro_core::time::utc(secs.as_u64().unwrap_or(0) * 1000).get(..16).unwrap_or_default().to_string()
}

/// A campaign's state, as a badge.
fn state(c: &Value) -> maud::Markup {
    let s = c["state"].as_str().unwrap_or_default();
    maud::html! { span class={ "badge " (s) } { (s) } }
}

/// The page: each list with its counts and embed tags, the list form, then the campaigns
/// and the campaign form (holding `draft`).
async fn lists(page: &Page, error: Option<Status>, draft: Option<&Draft>) -> Response<Body> {
    let empty = Draft::default();
    let draft = draft.unwrap_or(&empty);
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
    let (campaigns, campaigns_error) = match client.call_json(SUBSCRIBE, "Campaigns.List", &json!({})).await {
        Ok(v) => (v["campaigns"].as_array().cloned().unwrap_or_default(), None),
        Err(e) => (Vec::new(), Some(e)),
    };
    // Opens and clicks of the tracked campaigns that began.
    let mut counted = Vec::new();
    for c in &campaigns {
        let began = c["started"].as_u64().is_some() && c["track"] == Value::Bool(true);
        let report = if began {
            client.call_json(SUBSCRIBE, "Campaigns.Report", &json!({"name": c["name"]})).await.ok()
        } else {
            None
        };
        counted.push((c, report));
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
            p.hint { "Export a list's subscribers as CSV: " code { "GET <API>/subscribe/v1/lists/<list>/subscribers.csv" } " or " code { "micro subscribe subscribers export --list <list>" } "." }
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
        section {
            h2 { "Campaigns" }
            @if let Some(e) = &campaigns_error { (html::error(e)) }
            @if counted.is_empty() {
                p #campaigns-count { "No campaigns yet." }
            } @else {
                p #campaigns-count { (counted.len()) @if counted.len() == 1 { " campaign." } @else { " campaigns." } }
                table.lists.campaigns {
                    thead { tr {
                        th scope="col" { "Campaign" } th scope="col" { "Subject" } th scope="col" { "List" } th scope="col" { "State" }
                        th.num scope="col" { "Sent" } th.num scope="col" { "Failed" } th.num scope="col" { "Opens" } th.num scope="col" { "Clicks" } th scope="col" { "" }
                    } }
                    tbody {
                        @for (c, report) in &counted {
                            @let name = c["name"].as_str().unwrap_or_default();
                            @let s = c["state"].as_str().unwrap_or_default();
                            tr {
                                th scope="row" { a href={ "/lists/campaigns/" (encode(name)) } { (name) } }
                                td { (c["subject"].as_str().unwrap_or_default()) }
                                td { (c["list"].as_str().unwrap_or_default()) }
                                td.state {
                                    (state(c))
                                    @if s == "scheduled" { br; small { "at " (when(&c["send_at"])) } }
                                    @if c["paused_until"].is_u64() { br; small { "paused until " (when(&c["paused_until"])) } }
                                }
                                td.num { (c["sent"]) }
                                td.num { (c["failed"]) }
                                @match report {
                                    Some(r) => { td.num { (r["opens"]) } td.num { (r["clicks"]) } }
                                    None if c["track"] == Value::Bool(true) => { td.num { "–" } td.num { "–" } }
                                    None => { td.num colspan="2" { small { "not counted" } } }
                                }
                                td {
                                    @if s == "draft" {
                                        form.inline method="post" action="/lists" data-confirm={ "Send " (name) " to every confirmed subscriber of " (c["list"].as_str().unwrap_or_default()) " now?" } {
                                            (html::csrf(page))
                                            input type="hidden" name="action" value="campaign-send";
                                            input type="hidden" name="name" value=(name);
                                            button type="submit" aria-label={ "Send " (name) " now" } { "Send now" }
                                        }
                                    }
                                    @if s == "scheduled" || s == "sending" {
                                        form.inline method="post" action="/lists" data-confirm={ "Stop sending " (name) "? What went, went." } {
                                            (html::csrf(page))
                                            input type="hidden" name="action" value="campaign-cancel";
                                            input type="hidden" name="name" value=(name);
                                            button.danger type="submit" aria-label={ "Cancel " (name) } { "Cancel" }
                                        }
                                    } @else {
                                        form.inline method="post" action="/lists" data-confirm={ "Delete campaign " (name) " and its counts?" } {
                                            (html::csrf(page))
                                            input type="hidden" name="action" value="campaign-delete";
                                            input type="hidden" name="name" value=(name);
                                            button.danger type="submit" aria-label={ "Delete campaign " (name) } { "Delete" }
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
            h2 { "Make a campaign draft" }
            @if all.is_empty() {
                p { "Make a list first: a campaign goes to a list's confirmed subscribers." }
            } @else {
                form.stack method="post" action="/lists" {
                    (html::csrf(page))
                    input type="hidden" name="action" value="campaign-save";
                    label for="campaign-name" { "Campaign name (lowercase letters, digits, - and _)" }
                    input #campaign-name name="name" value=(draft.name) required maxlength="40" pattern="[a-z0-9_\\-]{1,40}";
                    label for="campaign-list" { "To the list" }
                    select #campaign-list name="list" {
                        @for l in &all {
                            @let name = l["name"].as_str().unwrap_or_default();
                            option value=(name) selected[name == draft.list] { (name) }
                        }
                    }
                    label for="campaign-subject" { "Subject ({{name}}, {{email}} and {{list}} are filled in)" }
                    input #campaign-subject name="subject" value=(draft.subject) required maxlength="300";
                    label for="campaign-text" { "Text (the unsubscribe link is added at the end)" }
                    textarea #campaign-text name="text" { (draft.text) }
                    label for="campaign-html" { "HTML (optional)" }
                    textarea #campaign-html name="html" { (draft.html) }
                    label { input name="track" type="checkbox" checked[draft.track]; " Count opens and clicks (the HTML's links go through the API)" }
                    button type="submit" { "Save draft" }
                }
                p.hint { "The same as " code { "micro subscribe campaigns save --name … --list … --subject … --text …" } "; a draft is sent with its button above, or at a time with " code { "micro subscribe campaigns send --name … --at <unix seconds>" } "." }
            }
        }
    };
    page_response(StatusCode::OK, html::layout(page, "Mailing lists", "lists", body))
}

/// `GET /lists/campaigns/<name>`: a campaign with what became of it, the clicks per link
/// and the mail.
async fn report(page: &Page, name: &str) -> Response<Body> {
    let title = format!("Campaign {name}");
    let r = match page.client().call_json(SUBSCRIBE, "Campaigns.Report", &json!({"name": name})).await {
        Ok(r) => r,
        Err(e) => {
            let body = maud::html! {
                (html::refused(page, &e, "manage this namespace's campaigns (its admins, developers and data accounts)"))
                p { a href="/lists" { "Back to the lists" } }
            };
            return page_response(super::status_code(&e), html::layout(page, &title, "lists", body));
        }
    };
    let c = &r["campaign"];
    let tracked = c["track"] == Value::Bool(true);
    let mut links: Vec<(&str, u64)> = r["links"]
        .as_object()
        .map(|l| l.iter().map(|(url, n)| (url.as_str(), n.as_u64().unwrap_or(0))).collect())
        .unwrap_or_default();
    links.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    let time = |k: &str| if c[k].is_u64() { when(&c[k]) } else { "not yet".to_string() };
    let body = maud::html! {
        p { a href="/lists" { "Back to the lists" } }
        table.report {
            tbody {
                tr { th scope="row" { "State" } td.state {
                    (state(c))
                    @if c["state"] == "scheduled" { br; small { "at " (when(&c["send_at"])) } }
                    @if c["paused_until"].is_u64() { br; small { "paused until " (when(&c["paused_until"])) " (the day's mail is spent)" } }
                } }
                tr { th scope="row" { "List" } td { (c["list"].as_str().unwrap_or_default()) } }
                tr { th scope="row" { "Subject" } td { (c["subject"].as_str().unwrap_or_default()) } }
                tr { th scope="row" { "Made" } td { (time("created")) } }
                tr { th scope="row" { "Began" } td { (time("started")) } }
                tr { th scope="row" { "Finished" } td { (time("finished")) } }
                tr { th scope="row" { "Mails sent" } td { (c["sent"]) } }
                tr { th scope="row" { "Refused" } td { (c["failed"]) } }
                tr { th scope="row" { "Opened" } td { @if tracked { (r["opens"]) " subscribers" } @else { "not counted" } } }
                tr { th scope="row" { "Clicked" } td { @if tracked { (r["clicks"]) " subscribers" } @else { "not counted" } } }
                tr { th scope="row" { "Unsubscribed since" } td { (r["unsubscribed"]) } }
            }
        }
        @if let Some(errors) = c["errors"].as_array().filter(|e| !e.is_empty()) {
            h2 { "Refusals" }
            ul.errors { @for e in errors { li { (e.as_str().unwrap_or_default()) } } }
        }
        h2 { "Clicks per link" }
        @if !tracked {
            p #links-count { "Not counted: the campaign was saved without counting opens and clicks." }
        } @else if links.is_empty() {
            p #links-count { "No clicks yet." }
        } @else {
            table.lists.links {
                thead { tr { th scope="col" { "Link" } th.num scope="col" { "Subscribers who clicked" } } }
                tbody { @for (url, n) in &links { tr { td { code { (url) } } td.num { (n) } } } }
            }
        }
        h2 { "The mail" }
        @if let Some(text) = c["text"].as_str().filter(|t| !t.is_empty()) { pre.mail { (text) } }
        @if let Some(h) = c["html"].as_str().filter(|h| !h.is_empty()) { p.hint { "Its HTML:" } pre.mail { code { (h) } } }
        p.hint { "The same as " code { "micro subscribe campaigns report --name " (name) } "." }
    };
    page_response(StatusCode::OK, html::layout(page, &title, "lists", body))
}
