//! Usage: what the gateway and the proxy metered in the namespace, as `micro usage` shows
//! it — requests, bytes in and bytes out over a window (the last hour, day, week or 30
//! days), grouped by any of service, endpoint, account and status class, and their total.
//! One call to `usage.Usage/Query` as the signed-in account: reading usage needs the admin
//! scope of the namespace, and other accounts get a 403 page saying so.
//!
//! `GET /usage[?since=24h&by=service&by=endpoint]` (`by` repeated or comma-separated).

use super::html;
use super::{Form, Page, page_response};
use axum::body::Body;
use http::{Response, StatusCode};
use maud::{Markup, html};
use micro::proto::usage::{self as pb, usage_client::UsageClient};
use micro_core::Status;
use micro_core::time::utc;
use std::time::Duration;

/// The deadline of the query.
const TIMEOUT: Duration = Duration::from_secs(15);

/// A window usage is shown for: from `secs` ago until now.
#[derive(Debug, PartialEq)]
struct Window {
    /// Its value in the query (`since=24h`).
    value: &'static str,
    /// Its name in the form.
    label: &'static str,
    /// Its name in a sentence.
    words: &'static str,
    secs: i64,
}

/// The windows offered.
const WINDOWS: [Window; 4] = [
    Window { value: "1h", label: "Last hour", words: "the last hour", secs: 3600 },
    Window { value: "24h", label: "Last 24 hours", words: "the last 24 hours", secs: 86_400 },
    Window { value: "7d", label: "Last 7 days", words: "the last 7 days", secs: 7 * 86_400 },
    Window { value: "30d", label: "Last 30 days", words: "the last 30 days", secs: 30 * 86_400 },
];
/// The window without `since`: the last 24 hours (`micro usage`'s).
const DEFAULT_WINDOW: &Window = &WINDOWS[1];

/// What rows can be grouped by: (value, column heading). The namespace is the page's.
const DIMENSIONS: &[(&str, &str)] =
    &[("service", "Service"), ("endpoint", "Endpoint"), ("account", "Account"), ("status", "Status")];
/// The grouping without `by`: `micro usage`'s.
const DEFAULT_BY: &[&str] = &["service", "endpoint", "status"];

/// `GET /usage`.
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

/// What the page shows: a window and a grouping, checked against those offered.
#[derive(Debug, PartialEq)]
struct Choice {
    /// One of [`WINDOWS`].
    window: &'static Window,
    /// Some of [`DIMENSIONS`], in their order.
    by: Vec<&'static str>,
}

impl Choice {
    /// The choice of a query, or what is wrong with it.
    fn of(query: &[(String, String)]) -> Result<Choice, String> {
        let since = query.iter().find(|(k, _)| k == "since").map_or(DEFAULT_WINDOW.value, |(_, v)| v.trim());
        let Some(window) = WINDOWS.iter().find(|w| w.value == since) else {
            return Err(format!("There is no window {since:?}: choose 1h, 24h, 7d or 30d."));
        };
        let mut asked = Vec::new();
        for v in query.iter().filter(|(k, _)| k == "by").flat_map(|(_, v)| v.split(',')).map(str::trim) {
            if v.is_empty() {
                continue;
            }
            if !DIMENSIONS.iter().any(|(d, _)| *d == v) {
                return Err(format!("Usage cannot be grouped by {v:?}: choose service, endpoint, account or status."));
            }
            asked.push(v);
        }
        let asked = if asked.is_empty() { DEFAULT_BY.to_vec() } else { asked };
        let by = DIMENSIONS.iter().map(|(d, _)| *d).filter(|d| asked.contains(d)).collect();
        Ok(Choice { window, by })
    }
}

impl Default for Choice {
    fn default() -> Choice {
        Choice { window: DEFAULT_WINDOW, by: DEFAULT_BY.to_vec() }
    }
}

/// A row's value in a dimension, `-` when empty (anonymous calls, as `micro usage`).
fn cell<'a>(row: &'a pb::Row, dimension: &str) -> &'a str {
    let v = match dimension {
        "service" => &row.service,
        "endpoint" => &row.endpoint,
        "account" => &row.account,
        "status" => &row.status,
        _ => "",
    };
    if v.is_empty() { "-" } else { v }
}

async fn query(page: &Page, choice: &Choice, now: i64) -> Result<pb::QueryResponse, Status> {
    let msg = pb::QueryRequest {
        since: now - choice.window.secs,
        until: 0,
        group_by: choice.by.iter().map(|d| d.to_string()).collect(),
        all_namespaces: false,
        service: String::new(),
    };
    let mut req = page.request(msg);
    req.set_timeout(TIMEOUT);
    let r = UsageClient::new(page.channel()?).query(req).await.map_err(|e| micro::status::from_tonic(&e))?;
    Ok(r.into_inner())
}

async fn overview(page: &Page) -> Response<Body> {
    let choice = match Choice::of(&page.query) {
        Ok(c) => c,
        Err(problem) => {
            let body = html! { div.error role="alert" { (problem) } (form(&Choice::default())) };
            return page_response(StatusCode::BAD_REQUEST, html::layout(page, "Usage", "usage", body));
        }
    };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    let answer = match query(page, &choice, now).await {
        Ok(a) => a,
        Err(e) => {
            let body = html! { (html::refused(page, &e, "see its usage")) (form(&choice)) };
            return page_response(super::status_code(&e), html::layout(page, "Usage", "usage", body));
        }
    };
    let since = utc(u64::try_from(now - choice.window.secs).unwrap_or(0) * 1000);
    let body = html! {
        (form(&choice))
        @if answer.rows.is_empty() {
            p { "Nothing was metered in " code { (page.session.namespace) } " in " (choice.window.words) "." }
        } @else {
            (table(&page.session.namespace, &choice, &answer, since.get(..16).unwrap_or_default()))
        }
        p.hint {
            "Every request through the gateway and the proxy, counted when its answer was sent and stored within a few "
            "seconds; an account of another namespace shows as " code { "namespace/id" } ", anonymous calls as "
            code { "-" } ". The same figures as " code { "micro usage" } "."
        }
    };
    page_response(StatusCode::OK, html::layout(page, "Usage", "usage", body))
}

fn form(choice: &Choice) -> Markup {
    html! {
        form.filters method="get" action="/usage" {
            div.field {
                label for="usage-since" { "Window" }
                select #usage-since name="since" {
                    @for w in &WINDOWS {
                        option value=(w.value) selected[w == choice.window] { (w.label) }
                    }
                }
            }
            fieldset {
                legend { "Group by" }
                @for (value, heading) in DIMENSIONS {
                    label { input type="checkbox" name="by" value=(value) checked[choice.by.contains(value)]; (heading) }
                }
            }
            div.actions { button type="submit" { "Show" } }
        }
    }
}

fn table(ns: &str, choice: &Choice, answer: &pb::QueryResponse, since: &str) -> Markup {
    let total = answer.total.clone().unwrap_or_default();
    let headings = DIMENSIONS.iter().filter(|(d, _)| choice.by.contains(d));
    html! {
        table.usage {
            caption.hint { "Usage of " (ns) " in " (choice.window.words) " (since " (since) " UTC), most requests first" }
            thead {
                tr {
                    @for (_, heading) in headings { th scope="col" { (heading) } }
                    th.num scope="col" { "Requests" } th.num scope="col" { "Bytes in" } th.num scope="col" { "Bytes out" }
                }
            }
            tbody {
                @for row in &answer.rows {
                    tr {
                        @for d in &choice.by { td { (cell(row, d)) } }
                        td.num { (row.requests) } td.num { (row.bytes_in) } td.num { (row.bytes_out) }
                    }
                }
            }
            tfoot {
                tr {
                    th scope="row" colspan=(choice.by.len().max(1)) { "Total" }
                    td.num { (total.requests) } td.num { (total.bytes_in) } td.num { (total.bytes_out) }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn choices_are_checked() {
        let c = Choice::default();
        assert_eq!((c.window.value, c.by.as_slice()), ("24h", DEFAULT_BY));
        let c = Choice::of(&query(&[("since", "7d"), ("by", "status"), ("by", "account,service")])).unwrap();
        assert_eq!((c.window.secs, c.by), (7 * 86_400, vec!["service", "account", "status"]));
        // Nothing checked: micro usage's grouping.
        assert_eq!(Choice::of(&query(&[("since", "1h")])).unwrap().by, DEFAULT_BY);
        let e = Choice::of(&query(&[("since", "forever")])).unwrap_err();
        assert_eq!(e, r#"There is no window "forever": choose 1h, 24h, 7d or 30d."#);
        let e = Choice::of(&query(&[("by", "service,namespace")])).unwrap_err();
        assert_eq!(e, r#"Usage cannot be grouped by "namespace": choose service, endpoint, account or status."#);
    }

    #[test]
    fn the_table_has_a_row_per_group_and_their_total() {
        let row = |account: &str, status: &str, requests| pb::Row {
            account: account.into(),
            status: status.into(),
            requests,
            bytes_in: requests * 10,
            bytes_out: requests * 100,
            ..Default::default()
        };
        let answer = pb::QueryResponse {
            rows: vec![row("<b>mallory</b>", "2xx", 3), row("", "4xx", 1)],
            total: Some(row("", "", 4)),
        };
        let choice = Choice::of(&query(&[("by", "account,status")])).unwrap();
        let html = table("shop", &choice, &answer, "2026-01-02 03:04").into_string();
        assert!(html.contains("<th scope=\"col\">Account</th><th scope=\"col\">Status</th>"), "{html}");
        assert!(html.contains("<td>&lt;b&gt;mallory&lt;/b&gt;</td><td>2xx</td><td class=\"num\">3</td>"), "{html}");
        assert!(!html.contains("<b>mallory"), "{html}");
        assert!(html.contains("<td>-</td><td>4xx</td>"), "{html}");
        assert!(
            html.contains(
                "<th scope=\"row\" colspan=\"2\">Total</th><td class=\"num\">4</td><td class=\"num\">40</td><td class=\"num\">400</td>"
            ),
            "{html}"
        );
        let form = form(&choice).into_string();
        assert!(form.contains(r#"value="account" checked"#) && !form.contains(r#"value="service" checked"#), "{form}");
        assert!(form.contains(r#"<option value="24h" selected>Last 24 hours</option>"#), "{form}");
    }
}
