//! Billing (the `billing` product): for the page's namespace its plan, prepaid credit,
//! what its open invoices owe and how it pays; the usage this period; the upcoming
//! invoice to date and projected to the period's end; its invoices, each on a page of
//! its own with "Pay now" for the admins while it is open; its billing details (the
//! admins change them); and "Add a payment method". The platform's operators (admins of
//! `micro`) have a second view of the books: revenue, tax, money received, credit held,
//! what is owed, the ledger's balances, and forms that close a period, mark an invoice
//! paid and add prepaid credit. Every action is a call to the product's `Billing.*`
//! endpoints as the signed-in account, which decides what it may see and do.
//!
//! An invoice's page shows its fields in the dashboard's own markup rather than the HTML
//! document billing makes of it in a `srcdoc` frame: a `srcdoc` frame inherits the page's
//! content security policy, which refuses the document's inline styles, and the fields
//! are what the page needs (the tables, the status, the button). That document, the
//! invoice as mailed, is served as it is under a policy of its own that sandboxes it
//! (`/billing/invoices/<id>/document`), to print or save.
//!
//! "Add a payment method" answers with a page that sends the browser on to the provider
//! (`Refresh`) rather than a redirect: the dashboard's policy (`form-action 'self'`)
//! makes browsers refuse a form's redirect to another site.
//!
//! `GET /billing`, `GET /billing/invoices/<id>`, `GET /billing/invoices/<id>/document`,
//! `GET /billing/admin`; `POST /billing` (`action`: `settings`, `setup`),
//! `POST /billing/invoices/<id>` (`action`: `pay`), `POST /billing/admin` (`action`:
//! `close`, `markpaid`, `credit`).

use super::html;
use super::{Form, Page, encode, page_response, redirect};
use axum::body::Body;
use http::{HeaderValue, Response, StatusCode, header};
use maud::{Markup, html};
use micro_core::{Code, Status};
use serde_json::{Value, json};

/// The product's service name.
const BILLING: &str = "billing";

/// `GET /billing`, `GET /billing/invoices/<id>[/document]`, `GET /billing/admin`.
pub(crate) async fn get(page: &Page) -> Response<Body> {
    match page.rest.as_slice() {
        [] => account(page, Flash::from_query(page), None, StatusCode::OK).await,
        [i, id] if i == "invoices" => invoice(page, id, Flash::from_query(page)).await,
        [i, id, d] if i == "invoices" && d == "document" => document(page, id).await,
        [a] if a == "admin" => admin(page, Flash::from_query(page), StatusCode::OK).await,
        _ => super::not_found(page),
    }
}

/// `POST /billing` (settings, a payment method), `POST /billing/invoices/<id>` (pay it),
/// `POST /billing/admin` (the operators' forms).
pub(crate) async fn post(page: &Page, form: &Form) -> Response<Body> {
    let unknown = |action: &str| Flash::Error(Status::bad_request("web", format!("unknown action {action:?}")));
    match page.rest.as_slice() {
        [] => match form.get("action") {
            "settings" => {
                let body = json!({"email": form.get("email").trim(), "country": form.get("country").trim()});
                match page.client().call_json(BILLING, "Billing.Settings", &body).await {
                    Ok(_) => done("/billing", "Billing details saved."),
                    Err(e) => account(page, Flash::Error(e), Some(form), StatusCode::OK).await,
                }
            }
            "setup" => setup(page).await,
            other => account(page, unknown(other), None, StatusCode::BAD_REQUEST).await,
        },
        [i, id] if i == "invoices" => match form.get("action") {
            "pay" => pay(page, id).await,
            other => invoice(page, id, unknown(other)).await,
        },
        [a] if a == "admin" => operate(page, form.get("action"), form).await,
        _ => super::not_found(page),
    }
}

/// What the page says above its content.
enum Flash {
    Nothing,
    /// What an action did (`?done=`).
    Done(String),
    /// A call that failed.
    Error(Status),
    /// `Billing.SetupPayment` failed: with the manual provider, a note that there is no
    /// card to give; otherwise the error.
    Setup(Status),
    /// A payment the provider refused.
    Failed(String),
}

impl Flash {
    fn from_query(page: &Page) -> Flash {
        page.query("done").map_or(Flash::Nothing, |d| Flash::Done(d.to_string()))
    }

    fn show(&self, provider: &str) -> Markup {
        html! {
            @match self {
                Flash::Nothing => {}
                Flash::Done(note) => { p.notice role="status" { (note) } }
                Flash::Error(e) => { (html::error(e)) }
                Flash::Setup(_) if provider == "manual" => {
                    p.notice #billing-note role="status" {
                        "Payments here are by bank transfer or prepaid credit: there is no card to add. "
                        "Transfer what an invoice owes quoting its number; the platform's operators mark it paid."
                    }
                }
                Flash::Setup(e) => { (html::error(e)) }
                Flash::Failed(why) => { div.error role="alert" { strong { "Payment failed" } " — " (why) } }
            }
        }
    }
}

/// A redirect to `path` saying `note`.
fn done(path: &str, note: &str) -> Response<Body> {
    redirect(&format!("{path}?done={}", encode(note)))
}

/// Whether the account is one of the platform's operators (an admin of `micro`).
fn operator(page: &Page) -> bool {
    page.session.admin && page.session.home == micro_core::namespace::DEFAULT
}

/// An integer field of a reply (0 when absent).
fn int(v: &Value) -> i64 {
    v.as_i64().unwrap_or(0)
}

/// Minor units as billing writes money: `$12.34`, `-€0.50`, `12.00 CHF`.
fn money(amount: i64, currency: &str) -> String {
    micro_core::money::format(amount, currency)
}

/// Seconds as hours with two decimals, cut as the invoices cut them (`1.99` for 7199 s).
fn hours(secs: u64) -> String {
    format!("{}.{:02}", secs / 3600, secs % 3600 * 100 / 3600)
}

/// Unix seconds as the day, `YYYY-MM-DD`.
fn day(secs: &Value) -> String {
    micro_core::time::utc(secs.as_u64().unwrap_or(0) * 1000).get(..10).unwrap_or_default().to_string()
}

/// Unix seconds as the minute, `YYYY-MM-DD HH:MM`.
fn minute(secs: &Value) -> String {
    micro_core::time::utc(secs.as_u64().unwrap_or(0) * 1000).get(..16).unwrap_or_default().replace('T', " ")
}

/// Basis points as a percentage: `19.00%`.
fn rate(bp: u64) -> String {
    format!("{}.{:02}%", bp / 100, bp % 100)
}

/// A decimal amount as typed (`12.50`, `12`, `0.5`) in minor units, exactly: no sign,
/// no separators, at most two decimals, more than zero.
fn minor_units(text: &str) -> Result<i64, String> {
    let text = text.trim();
    let refuse = || format!("{text:?} is not an amount: give it like 12.50 (digits, at most two decimals)");
    let (whole, cents) = text.split_once('.').unwrap_or((text, ""));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || (text.contains('.') && !digits(cents)) || cents.len() > 2 || whole.len() > 15 {
        return Err(refuse());
    }
    let whole: i64 = whole.parse().map_err(|_| refuse())?;
    let cents: i64 = format!("{cents:0<2}").parse().map_err(|_| refuse())?;
    let amount = whole.checked_mul(100).and_then(|w| w.checked_add(cents)).ok_or_else(refuse)?;
    if amount == 0 {
        return Err(format!("{text:?}: the amount must be more than zero"));
    }
    Ok(amount)
}

/// Where the provider sends the browser, if it is an `http(s)` URL.
fn onward_url(url: &str) -> Option<String> {
    let uri: http::Uri = url.parse().ok()?;
    let web = matches!(uri.scheme_str(), Some("https" | "http"));
    (web && uri.authority().is_some()).then(|| url.to_string())
}

/// This page's own absolute URL (the provider brings the browser back to it).
fn own_url(page: &Page, path: &str) -> Option<String> {
    let host = page.host.as_ref()?;
    Some(format!("{}://{host}{path}", if page.secure { "https" } else { "http" }))
}

/// The provider, in words.
fn provider_name(provider: &str) -> String {
    match provider {
        "manual" => "Bank transfer or prepaid credit".to_string(),
        "stripe" => "Stripe (card or bank debit)".to_string(),
        other => other.to_string(),
    }
}

/// An invoice's status as a badge.
fn status_badge(invoice: &Value) -> Markup {
    let status = invoice["status"].as_str().unwrap_or_default();
    html! { span class={ "badge " (status) } { (status) } }
}

/// The page of a call that failed before there was anything to show.
fn failed(page: &Page, title: &str, e: &Status, what: &str) -> Response<Body> {
    let body = match e.code() {
        // The product says who may see what; the generic 403 speaks of admins only.
        Code::PermissionDenied | Code::NotFound => html! {
            (html::error(e))
            p { a href="/billing" { "Back to billing" } }
        },
        _ => html::refused(page, e, what),
    };
    page_response(super::status_code(e), html::layout(page, title, "billing", body))
}

/// `GET /billing`: the namespace's billing; `typed` is a settings form shown again.
async fn account(page: &Page, flash: Flash, typed: Option<&Form>, status: StatusCode) -> Response<Body> {
    let a = match page.client().call_json(BILLING, "Billing.Account", &json!({})).await {
        Ok(v) => v,
        Err(e) => return failed(page, "Billing", &e, "see this namespace's billing"),
    };
    let provider = a["provider"].as_str().unwrap_or_default();
    let settings = &a["settings"];
    let (email, country) = match typed {
        Some(f) => (f.get("email").trim().to_string(), f.get("country").trim().to_string()),
        None => (
            settings["email"].as_str().unwrap_or_default().to_string(),
            settings["country"].as_str().unwrap_or_default().to_string(),
        ),
    };
    let upcoming = &a["upcoming"];
    let currency = upcoming["projected"]["currency"].as_str().unwrap_or("usd").to_string();
    let admin = page.session.admin;
    let invoices = a["invoices"].as_array().cloned().unwrap_or_default();
    let body = html! {
        (flash.show(provider))
        div.cards.figures #billing-summary {
            div.card {
                span.hint { "Plan" } br;
                strong #billing-plan { (a["plan"].as_str().unwrap_or_default()) }
                @if !operator(page) { " · " a href="/plan" { "Change plan" } }
            }
            div.card { span.hint { "Prepaid credit" } br; strong #billing-credit { (money(int(&a["credit"]), &currency)) } }
            div.card { span.hint { "Open invoices owe" } br; strong #billing-owed { (money(int(&a["owed"]), &currency)) } }
            div.card {
                span.hint { "Payment" } br;
                strong #billing-provider { (provider_name(provider)) }
                @if provider != "manual" {
                    br;
                    @if settings["payment_method"] == true { "A payment method is on file." } @else { "No payment method on file yet." }
                }
                @if admin {
                    form.inline method="post" action="/billing" {
                        (html::csrf(page))
                        input type="hidden" name="action" value="setup";
                        button.secondary type="submit" {
                            @if settings["payment_method"] == true { "Change the payment method" } @else { "Add a payment method" }
                        }
                    }
                }
            }
        }
        @if operator(page) {
            p { a href="/billing/admin" { "The platform's books" } " (revenue, the ledger, closing periods) — for its operators." }
        }
        (usage(&a["usage"]))
        (upcoming_invoice(upcoming))
        section {
            h2 { "Invoices" }
            @if invoices.is_empty() {
                p #billing-invoices-none { "No invoices yet: each month's is issued once the month is over." }
            } @else {
                table #billing-invoices {
                    thead { tr {
                        th scope="col" { "Number" } th scope="col" { "Period" } th scope="col" { "Issued" } th scope="col" { "Due" }
                        th.num scope="col" { "Total" } th scope="col" { "Status" } th.num scope="col" { "Owed" }
                    } }
                    tbody {
                        @for i in &invoices {
                            @let cur = i["currency"].as_str().unwrap_or("usd");
                            tr {
                                th scope="row" {
                                    a href={ "/billing/invoices/" (encode(i["id"].as_str().unwrap_or_default())) } {
                                        (i["number"].as_str().unwrap_or_default())
                                    }
                                }
                                td { (i["period"].as_str().unwrap_or_default()) }
                                td { (day(&i["issued"])) }
                                td { (day(&i["due"])) }
                                td.num { (money(int(&i["total"]), cur)) }
                                td { (status_badge(i)) }
                                td.num { (money(int(&i["owed"]).max(0), cur)) }
                            }
                        }
                    }
                }
            }
        }
        section {
            h2 { "Billing details" }
            @if admin {
                form.stack method="post" action="/billing" {
                    (html::csrf(page))
                    input type="hidden" name="action" value="settings";
                    label for="billing-email" { "Email (where invoices are mailed; empty: the namespace's owners)" }
                    input #billing-email name="email" type="email" value=(email) maxlength="254" autocomplete="email";
                    label for="billing-country" { "Country (ISO code, like DE: its tax applies)" }
                    input #billing-country name="country" value=(country) maxlength="2" pattern="[A-Za-z]{2}" autocomplete="country";
                    div.actions { button type="submit" { "Save billing details" } }
                }
            } @else {
                table.limits #billing-details {
                    tbody {
                        tr { th scope="row" { "Email" } td { (email) } }
                        tr { th scope="row" { "Country" } td { (country) } }
                    }
                }
                p.hint { "The namespace's admins change these." }
            }
        }
    };
    page_response(status, html::layout(page, "Billing", "billing", body))
}

/// The usage this period: each service's hours (and requests, when metered), storage,
/// build time.
fn usage(u: &Value) -> Markup {
    let empty = serde_json::Map::new();
    let services = u["services"].as_object().unwrap_or(&empty);
    let requests = u["requests"].as_object();
    let mut names: Vec<&String> = services.keys().chain(requests.into_iter().flat_map(|r| r.keys())).collect();
    names.sort();
    names.dedup();
    let total_requests: Option<u64> = requests.map(|r| r.values().filter_map(Value::as_u64).sum());
    html! {
        section {
            h2 { "Usage in " span #billing-period { (u["period"].as_str().unwrap_or_default()) } }
            @if names.is_empty() {
                p #billing-usage-none { "No service has run this period." }
            } @else {
                table #billing-usage {
                    thead { tr {
                        th scope="col" { "Service" } th.num scope="col" { "Hours run" }
                        @if requests.is_some() { th.num scope="col" { "Requests" } }
                    } }
                    tbody {
                        @for name in &names {
                            tr {
                                th scope="row" { (name) }
                                td.num { (hours(services.get(*name).and_then(Value::as_u64).unwrap_or(0))) }
                                @if let Some(r) = requests { td.num { (r.get(*name).and_then(Value::as_u64).unwrap_or(0)) } }
                            }
                        }
                    }
                }
            }
            div.cards.figures #billing-meters {
                div.card {
                    span.hint { "Requests" } br;
                    strong { @match total_requests { Some(n) => { (n) } None => { "not metered here" } } }
                }
                div.card {
                    span.hint { "Storage" } br;
                    strong { @match u["storage_bytes"].as_u64() { Some(b) => { (html::bytes(b)) } None => { "not metered" } } }
                }
                div.card {
                    span.hint { "Build time" } br;
                    strong {
                        @match u["build_seconds"].as_u64() {
                            Some(s) => { (s / 60) " min " (s % 60) " s" }
                            None => { "not metered" }
                        }
                    }
                }
            }
        }
    }
}

/// A line's key, to set a line to date beside the same line projected.
fn line_key(l: &Value) -> String {
    format!("{}:{}", l["kind"].as_str().unwrap_or_default(), l["service"].as_str().unwrap_or_default())
}

/// The upcoming invoice: each line to date and projected to the period's end, and the sums.
fn upcoming_invoice(up: &Value) -> Markup {
    let (to_date, projected) = (&up["to_date"], &up["projected"]);
    let currency = projected["currency"].as_str().unwrap_or("usd");
    let lines = |d: &Value| d["lines"].as_array().cloned().unwrap_or_default();
    let (now_lines, end_lines) = (lines(to_date), lines(projected));
    // Rows in the projection's order, then lines only to date has (none, as a rule).
    let mut rows: Vec<(String, Option<&Value>, Option<&Value>)> = Vec::new();
    for l in end_lines.iter().chain(&now_lines) {
        let key = line_key(l);
        if rows.iter().any(|(k, _, _)| *k == key) {
            continue;
        }
        let now = now_lines.iter().find(|x| line_key(x) == key);
        let end = end_lines.iter().find(|x| line_key(x) == key);
        rows.push((key, now, end));
    }
    let cell = |l: Option<&Value>| l.map_or_else(|| money(0, currency), |l| money(int(&l["amount"]), currency));
    let tax_rate = end_lines.iter().chain(&now_lines).filter_map(|l| l["tax_rate"].as_u64()).max().unwrap_or(0);
    let sum = |field: &str| (money(int(&to_date[field]), currency), money(int(&projected[field]), currency));
    let credit = int(&to_date["credit_applied"]) != 0 || int(&projected["credit_applied"]) != 0;
    html! {
        section {
            h2 { "Upcoming invoice" }
            @if rows.is_empty() {
                p #billing-upcoming-none { "Nothing to pay so far this period (the " (projected["plan"].as_str().unwrap_or_default()) " plan)." }
            } @else {
                table #billing-upcoming {
                    thead { tr { th scope="col" { "Item" } th.num scope="col" { "To date" } th.num scope="col" { "Projected at period end" } } }
                    tbody {
                        @for (_, now, end) in &rows {
                            @let label = now.or(*end).and_then(|l| l["description"].as_str()).unwrap_or_default();
                            tr { th scope="row" { (label) } td.num { (cell(*now)) } td.num { (cell(*end)) } }
                        }
                    }
                    tfoot {
                        @let (a, b) = sum("subtotal");
                        tr { th scope="row" { "Subtotal" } td.num { (a) } td.num { (b) } }
                        @let (a, b) = sum("tax");
                        tr { th scope="row" { "Tax" @if tax_rate > 0 { " (" (rate(tax_rate)) ")" } } td.num { (a) } td.num { (b) } }
                        @let (a, b) = sum("total");
                        tr { th scope="row" { "Total" } td.num { (a) } td.num { (b) } }
                        @if credit {
                            @let (a, b) = sum("credit_applied");
                            tr { th scope="row" { "Prepaid credit applied" } td.num { "-" (a) } td.num { "-" (b) } }
                            @let (a, b) = sum("amount_due");
                            tr { th scope="row" { "Amount due" } td.num { (a) } td.num { (b) } }
                        }
                    }
                }
                p.hint { "To date: what the period has cost so far. Projected: what it will cost if everything runs on as it does now." }
            }
        }
    }
}

/// `GET /billing/invoices/<id>`: an invoice's fields and lines, "Pay now" for the admins
/// while it is open.
async fn invoice(page: &Page, id: &str, flash: Flash) -> Response<Body> {
    let inv = match page.client().call_json(BILLING, "Billing.Invoice", &json!({"id": id})).await {
        Ok(v) => v,
        Err(e) => return failed(page, "Invoice", &e, "see this namespace's invoices"),
    };
    let cur = inv["currency"].as_str().unwrap_or("usd");
    let number = inv["number"].as_str().unwrap_or_default();
    let lines = inv["lines"].as_array().cloned().unwrap_or_default();
    let open = inv["status"] == "open";
    let path = format!("/billing/invoices/{}", encode(inv["id"].as_str().unwrap_or(id)));
    let m = |field: &str| money(int(&inv[field]), cur);
    let body = html! {
        nav.hint aria-label="Breadcrumb" { a href="/billing" { "Billing" } " › " (number) }
        (flash.show(""))
        table.limits #invoice-fields {
            tbody {
                tr { th scope="row" { "Namespace" } td { (inv["namespace"].as_str().unwrap_or_default()) } }
                tr { th scope="row" { "Period" } td { (inv["period"].as_str().unwrap_or_default()) } }
                tr { th scope="row" { "Issued" } td { (day(&inv["issued"])) } }
                tr { th scope="row" { "Due" } td { (day(&inv["due"])) } }
                tr { th scope="row" { "Billed to" } td {
                    @match inv["email"].as_str().filter(|e| !e.is_empty()) { Some(e) => { (e) } None => { "the namespace's owners" } }
                    @if let Some(c) = inv["country"].as_str().filter(|c| !c.is_empty()) { " (" (c) ")" }
                } }
                tr { th scope="row" { "Status" } td #invoice-status { (status_badge(&inv)) } }
                tr { th scope="row" { "Owed" } td #invoice-owed { (money(int(&inv["owed"]).max(0), cur)) } }
            }
        }
        @if open && page.session.admin {
            div.actions {
                form.inline method="post" action=(path) {
                    (html::csrf(page))
                    input type="hidden" name="action" value="pay";
                    button type="submit" { "Pay now" }
                }
            }
        }
        section {
            h2 { "Lines" }
            table #invoice-lines {
                thead { tr {
                    th scope="col" { "Item" } th.num scope="col" { "Amount" } th.num scope="col" { "Tax rate" } th.num scope="col" { "Tax" }
                } }
                tbody {
                    @for l in &lines {
                        tr {
                            th scope="row" { (l["description"].as_str().unwrap_or_default()) }
                            td.num { (money(int(&l["amount"]), cur)) }
                            td.num { (rate(l["tax_rate"].as_u64().unwrap_or(0))) }
                            td.num { (money(int(&l["tax"]), cur)) }
                        }
                    }
                }
                tfoot {
                    tr { th scope="row" { "Subtotal" } td.num { (m("subtotal")) } td {} td.num { (m("tax")) } }
                    tr { th scope="row" { "Total" } td.num colspan="3" { (m("total")) } }
                    @if int(&inv["credit_applied"]) != 0 {
                        tr { th scope="row" { "Prepaid credit applied" } td.num colspan="3" { "-" (m("credit_applied")) } }
                    }
                    tr { th scope="row" { "Amount due" } td.num colspan="3" { (m("amount_due")) } }
                }
            }
            p.hint { a href={ (path) "/document" } { "The invoice as mailed" } ", to print or save." }
        }
    };
    page_response(StatusCode::OK, html::layout(page, &format!("Invoice {number}"), "billing", body))
}

/// `GET /billing/invoices/<id>/document`: the invoice as billing made it (everything in
/// it escaped by billing), under a policy that sandboxes it and allows its inline styles
/// and nothing else.
async fn document(page: &Page, id: &str) -> Response<Body> {
    let inv = match page.client().call_json(BILLING, "Billing.Invoice", &json!({"id": id})).await {
        Ok(v) => v,
        Err(e) => return failed(page, "Invoice", &e, "see this namespace's invoices"),
    };
    let mut r = Response::new(Body::from(inv["html"].as_str().unwrap_or_default().to_string()));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "sandbox; default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; form-action 'none'",
        ),
    );
    r
}

/// `POST /billing/invoices/<id>` `action=pay`: asks the provider to take what it owes.
async fn pay(page: &Page, id: &str) -> Response<Body> {
    let reply = match page.client().call_json(BILLING, "Billing.Pay", &json!({"id": id})).await {
        Ok(v) => v,
        Err(e) => return invoice(page, id, Flash::Error(e)).await,
    };
    let inv = &reply["invoice"];
    let number = inv["number"].as_str().unwrap_or(id);
    let path = format!("/billing/invoices/{}", encode(inv["id"].as_str().unwrap_or(id)));
    let outcome = &reply["outcome"];
    let note = match outcome["outcome"].as_str() {
        None => format!("{number} owes nothing."),
        Some("succeeded") => format!("Paid: {number} is settled."),
        Some("failed") => {
            let why = outcome["reason"].as_str().unwrap_or("the provider gave no reason");
            return invoice(page, id, Flash::Failed(format!("{number} was not paid: {why}."))).await;
        }
        // The manual provider takes no money itself: a bank transfer or credit does.
        Some(_) if outcome["payment"].is_null() => format!(
            "Nothing was charged: payments here are by bank transfer or prepaid credit. Transfer {} quoting {number}; \
             the platform's operators mark it paid.",
            money(int(&inv["owed"]).max(0), inv["currency"].as_str().unwrap_or("usd"))
        ),
        Some(_) => {
            format!("The payment of {number} is under way: the invoice shows paid once the provider confirms it.")
        }
    };
    done(&path, &note)
}

/// `POST /billing` `action=setup`: where the provider takes a payment method, with this
/// page to come back to.
async fn setup(page: &Page) -> Response<Body> {
    let Some(back) = own_url(page, "/billing") else {
        let e = Status::bad_request("web", "the request names no host to come back to");
        return account(page, Flash::Error(e), None, StatusCode::BAD_REQUEST).await;
    };
    let reply = page.client().call_json(BILLING, "Billing.SetupPayment", &json!({"return_url": back})).await;
    let setup = match reply {
        Ok(v) => v,
        Err(e) => return account(page, Flash::Setup(e), None, StatusCode::OK).await,
    };
    let Some(url) = setup["url"].as_str().and_then(onward_url) else {
        let e = Status::new(Code::Internal, BILLING, "the payment provider gave no http(s) page to go to");
        return account(page, Flash::Error(e), None, StatusCode::BAD_GATEWAY).await;
    };
    let host = url.parse::<http::Uri>().ok().and_then(|u| u.host().map(str::to_string)).unwrap_or_default();
    let body = html! {
        p { "Taking you to the payment provider to add a payment method; it brings you back here." }
        p { a #billing-onward href=(url) { "Continue to " (host) } }
    };
    let mut r = page_response(StatusCode::OK, html::layout(page, "Add a payment method", "billing", body));
    if let Ok(v) = HeaderValue::from_str(&format!("0; url={url}")) {
        r.headers_mut().insert(header::REFRESH, v);
    }
    r
}

/// The currency of the price book (what amounts typed by operators are in).
async fn currency(page: &Page) -> String {
    let prices = page.client().call_json(BILLING, "Billing.Prices", &json!({})).await;
    prices.ok().and_then(|p| p["currency"].as_str().map(str::to_string)).unwrap_or_else(|| "usd".to_string())
}

/// `POST /billing/admin`: the operators' forms.
async fn operate(page: &Page, action: &str, form: &Form) -> Response<Body> {
    let client = page.client();
    let bad = |why: String| admin(page, Flash::Error(Status::bad_request("web", why)), StatusCode::BAD_REQUEST);
    let result = match action {
        "close" => {
            let period = form.get("period").trim();
            let body = if period.is_empty() { json!({}) } else { json!({"period": period}) };
            client.call_json(BILLING, "Billing.Close", &body).await.map(|v| {
                let period = v["period"].as_str().unwrap_or(period);
                let issued: Vec<&str> =
                    v["issued"].as_array().into_iter().flatten().filter_map(|i| i["number"].as_str()).collect();
                match issued.as_slice() {
                    [] => format!("{period} is closed: nothing more to issue."),
                    [one] => format!("{period} is closed: issued {one}."),
                    many => format!("{period} is closed: issued {} invoices ({}).", many.len(), many.join(", ")),
                }
            })
        }
        "markpaid" => {
            let (id, reference) = (form.get("id").trim(), form.get("reference").trim());
            if reference.is_empty() {
                return bad("Give the transfer's reference (from the bank statement).".into()).await;
            }
            client.call_json(BILLING, "Billing.MarkPaid", &json!({"id": id, "reference": reference})).await.map(|v| {
                let number = v["number"].as_str().unwrap_or(id);
                let owed = int(&v["owed"]);
                if owed > 0 {
                    format!("{number}: {} still owed.", money(owed, v["currency"].as_str().unwrap_or("usd")))
                } else {
                    format!("{number} is paid (reference {reference}).")
                }
            })
        }
        "credit" => {
            let (ns, reference) = (form.get("namespace").trim(), form.get("reference").trim());
            let amount = match minor_units(form.get("amount")) {
                Ok(a) => a,
                Err(why) => return bad(why).await,
            };
            let body = json!({"namespace": ns, "amount": amount, "reference": reference});
            match client.call_json(BILLING, "Billing.AddCredit", &body).await {
                Ok(v) => {
                    Ok(format!("{ns} holds {} of prepaid credit now.", money(int(&v["credit"]), &currency(page).await)))
                }
                Err(e) => Err(e),
            }
        }
        other => return bad(format!("unknown action {other:?}")).await,
    };
    match result {
        Ok(note) => done("/billing/admin", &note),
        Err(e) => admin(page, Flash::Error(e), StatusCode::OK).await,
    }
}

/// `GET /billing/admin`: the platform's books, for its operators.
async fn admin(page: &Page, flash: Flash, status: StatusCode) -> Response<Body> {
    let client = page.client();
    let revenue = match client.call_json(BILLING, "Billing.Revenue", &json!({})).await {
        Ok(v) => v,
        Err(e) if e.code() == Code::PermissionDenied => {
            let s = &page.session;
            let body = html! {
                div.error role="alert" {
                    strong { "403 Forbidden" } " — the platform's books are for its operators (admins of namespace "
                    code { (micro_core::namespace::DEFAULT) } ")."
                }
                p { "You are signed in as " strong { (s.account) } " of " code { (s.home) } ". "
                    a href="/billing" { "Your namespace's billing" } " is on the billing page." }
            };
            return page_response(StatusCode::FORBIDDEN, html::layout(page, "The platform's books", "billing", body));
        }
        Err(e) => return failed(page, "The platform's books", &e, "see the platform's books"),
    };
    let (ledger, ledger_error) = match client.call_json(BILLING, "Billing.Ledger", &json!({})).await {
        Ok(v) => (v, None),
        Err(e) => (Value::Null, Some(e)),
    };
    let cur = currency(page).await;
    let m = |v: &Value| money(int(v), &cur);
    let unpaid = revenue["unpaid"].as_array().cloned().unwrap_or_default();
    let received = revenue["received"].as_object().cloned().unwrap_or_default();
    let mut txs = ledger["transactions"].as_array().cloned().unwrap_or_default();
    txs.sort_by_key(|t| std::cmp::Reverse(t["at"].as_u64().unwrap_or(0)));
    txs.truncate(20);
    let body = html! {
        nav.hint aria-label="Breadcrumb" { a href="/billing" { "Billing" } " › the platform's books" }
        (flash.show(""))
        div.cards.figures #books-summary {
            div.card { span.hint { "Revenue" } br; strong #books-revenue { (m(&revenue["revenue"])) } }
            div.card { span.hint { "Tax collected" } br; strong #books-tax { (m(&revenue["tax"])) } }
            div.card {
                span.hint { "Received" } br;
                @if received.is_empty() { strong #books-received { (money(0, &cur)) } }
                @else {
                    strong #books-received {
                        @for (i, (provider, amount)) in received.iter().enumerate() {
                            @if i > 0 { ", " }
                            (money(int(amount), &cur)) " " span.hint { "(" (provider) ")" }
                        }
                    }
                }
            }
            div.card { span.hint { "Prepaid credit held" } br; strong #books-credit { (m(&revenue["credit_held"])) } }
            div.card { span.hint { "Receivable" } br; strong #books-receivable { (m(&revenue["receivable"])) } }
        }
        section {
            h2 { "Unpaid invoices" }
            @if unpaid.is_empty() {
                p #books-unpaid-none { "Every invoice is paid." }
            } @else {
                table #books-unpaid {
                    thead { tr {
                        th scope="col" { "Number" } th scope="col" { "Namespace" } th scope="col" { "Period" }
                        th scope="col" { "Due" } th.num scope="col" { "Owed" } th scope="col" { "Paid by transfer" }
                    } }
                    tbody {
                        @for i in &unpaid {
                            @let number = i["number"].as_str().unwrap_or_default();
                            @let id = i["id"].as_str().unwrap_or_default();
                            tr {
                                th scope="row" { a href={ "/billing/invoices/" (encode(id)) } { (number) } }
                                td { (i["namespace"].as_str().unwrap_or_default()) }
                                td { (i["period"].as_str().unwrap_or_default()) }
                                td { (day(&i["due"])) }
                                td.num { (money(int(&i["owed"]), i["currency"].as_str().unwrap_or(&cur))) }
                                td {
                                    form.inline method="post" action="/billing/admin" data-confirm={ "Mark " (number) " paid in full?" } {
                                        (html::csrf(page))
                                        input type="hidden" name="action" value="markpaid";
                                        input type="hidden" name="id" value=(id);
                                        input name="reference" required maxlength="200" size="12" placeholder="reference"
                                            aria-label={ "Transfer reference for " (number) };
                                        button type="submit" aria-label={ "Mark " (number) " paid" } { "Mark paid" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        section {
            h2 { "Ledger" }
            @if let Some(e) = &ledger_error { (html::error(e)) }
            @else if ledger["balanced"] == true {
                p.ok #books-balanced { "Balanced: every transaction balances and the accounts sum to zero." }
            } @else {
                div.error #books-balanced role="alert" { strong { "Not balanced" } " — a transaction does not balance, or the accounts do not sum to zero." }
            }
            @if let Some(balances) = ledger["balances"].as_object() {
                table #books-balances {
                    thead { tr { th scope="col" { "Account" } th.num scope="col" { "Balance" } } }
                    tbody {
                        @for (account, amount) in balances {
                            tr { th scope="row" { code { (account) } } td.num { (m(amount)) } }
                        }
                    }
                }
            }
            @if !txs.is_empty() {
                h3 { "Latest transactions" }
                table #books-transactions {
                    thead { tr { th scope="col" { "When" } th scope="col" { "Kind" } th scope="col" { "Namespace" } th scope="col" { "Memo" } th scope="col" { "Legs" } } }
                    tbody {
                        @for t in &txs {
                            tr {
                                td { (minute(&t["at"])) }
                                td { (t["kind"].as_str().unwrap_or_default()) }
                                td { (t["namespace"].as_str().unwrap_or_default()) }
                                td { (t["memo"].as_str().unwrap_or_default()) }
                                td {
                                    @for leg in t["legs"].as_array().into_iter().flatten() {
                                        code { (leg["account"].as_str().unwrap_or_default()) } " " (m(&leg["amount"])) br;
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        section {
            h2 { "Close a period" }
            form.inline method="post" action="/billing/admin" data-confirm="Close the period and issue its invoices?" {
                (html::csrf(page))
                input type="hidden" name="action" value="close";
                label for="books-period" { "Period" }
                input #books-period name="period" maxlength="7" size="8" placeholder="YYYY-MM" pattern="[0-9]{4}-[0-9]{2}";
                button type="submit" { "Close period" }
            }
            p.hint { "Issues the period's invoices (empty: last month). Billing closes each month by itself once it is over; closing again issues nothing twice." }
        }
        section {
            h2 { "Add prepaid credit" }
            form.stack method="post" action="/billing/admin" {
                (html::csrf(page))
                input type="hidden" name="action" value="credit";
                label for="credit-namespace" { "Namespace" }
                input #credit-namespace name="namespace" required maxlength="63" pattern="[a-z0-9][a-z0-9\\-]*";
                label for="credit-amount" { "Amount in " (cur.to_ascii_uppercase()) " (like 12.50)" }
                input #credit-amount name="amount" required inputmode="decimal" maxlength="18" pattern="[0-9]+(\\.[0-9]{1,2})?";
                label for="credit-reference" { "Reference (the same reference again adds nothing)" }
                input #credit-reference name="reference" required maxlength="200";
                div.actions { button type="submit" { "Add credit" } }
            }
        }
    };
    page_response(status, html::layout(page, "The platform's books", "billing", body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_as_billing_writes_it() {
        assert_eq!(money(1234, "usd"), "$12.34");
        assert_eq!(money(-50, "eur"), "-€0.50");
        assert_eq!(money(7, "gbp"), "£0.07");
        assert_eq!(money(120_000, "chf"), "1200.00 CHF");
        assert_eq!(hours(744 * 3600), "744.00");
        assert_eq!(hours(7199), "1.99");
        assert_eq!(rate(1900), "19.00%");
        assert_eq!(rate(725), "7.25%");
    }

    #[test]
    fn typed_amounts_convert_exactly() {
        for (typed, minor) in [("12.50", 1250), ("12.5", 1250), ("12", 1200), ("0.01", 1), (" 7.05 ", 705), ("0.1", 10)]
        {
            assert_eq!(minor_units(typed), Ok(minor), "{typed}");
        }
        // 0.29 as a float is 28.999…: the text is read, never a float.
        assert_eq!(minor_units("0.29"), Ok(29));
        for typed in
            ["", "12.505", "-1", "+1", "1,000", "12.", ".5", "1e3", "$5", "abc", "0", "0.00", "9999999999999999"]
        {
            assert!(minor_units(typed).is_err(), "{typed:?} is refused");
        }
        assert!(minor_units("12.505").unwrap_err().contains("like 12.50"));
        assert!(minor_units("0.00").unwrap_err().contains("more than zero"));
    }

    #[test]
    fn only_web_addresses_are_followed() {
        assert_eq!(onward_url("https://checkout.example/s/1").as_deref(), Some("https://checkout.example/s/1"));
        assert_eq!(onward_url("http://127.0.0.1:9/x").as_deref(), Some("http://127.0.0.1:9/x"));
        for url in ["javascript:alert(1)", "data:text/html,x", "/relative", "ftp://x/y", "", "https://"] {
            assert_eq!(onward_url(url), None, "{url}");
        }
    }
}
