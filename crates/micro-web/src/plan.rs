//! A namespace's plan: what it allows, and bars of what the namespace uses against it
//! (services running, the month's requests); its owner changes plan here, at once. The
//! namespace is yours, or a team's you are a member of (`?namespace=`). Every action is
//! a call to the platform product's `Plan.*` endpoints as the signed-in account.
//!
//! `GET /plan[?namespace=]`, `POST /plan` (`namespace`, `plan`).

use super::html;
use super::{Form, Page, encode, page_response, redirect};
use axum::body::Body;
use http::{Response, StatusCode};
use maud::{Markup, html};
use micro_core::Status;
use serde_json::{Value, json};

/// `GET /plan`.
pub(crate) async fn get(page: &Page) -> Response<Body> {
    match page.rest.as_slice() {
        [] => plan(page, None, StatusCode::OK).await,
        _ => super::not_found(page),
    }
}

/// `POST /plan`: changes the namespace's plan.
pub(crate) async fn post(page: &Page, form: &Form) -> Response<Body> {
    if !page.rest.is_empty() {
        return super::not_found(page);
    }
    let ns = form.get("namespace").trim().to_string();
    let chosen = form.get("plan").trim().to_string();
    let body = json!({"namespace": ns, "plan": chosen});
    match page.client().call_json("platform", "Plan.Set", &body).await {
        Ok(_) => {
            let note = format!("{ns} is on the {chosen} plan now.");
            redirect(&format!("/plan?namespace={}&done={}", encode(&ns), encode(&note)))
        }
        Err(e) => plan(page, Some(e), StatusCode::OK).await,
    }
}

/// A bar of `used` against `limit`, labelled.
fn bar(label: &str, used: u64, limit: u64, unit: &str) -> Markup {
    let percent = used.saturating_mul(100).checked_div(limit).map_or(100, |p| p.min(100));
    let class = if used >= limit {
        "bar full"
    } else if percent >= 80 {
        "bar near"
    } else {
        "bar"
    };
    html! {
        div.usage {
            span.what { (label) }
            meter class=(class) min="0" max=(limit) value=(used.min(limit)) aria-label=(label) { (percent) "%" }
            span.figures { (used) " of " (limit) (unit) }
        }
    }
}

/// The page, for `?namespace=` or the session's namespace.
async fn plan(page: &Page, error: Option<Status>, status: StatusCode) -> Response<Body> {
    let ns = page.query("namespace").map(str::to_string).unwrap_or_else(|| page.session.namespace.clone());
    let client = page.client();
    let got = client.call_json("platform", "Plan.Get", &json!({"namespace": ns})).await;
    let reply = match got {
        Ok(v) => v,
        Err(e) => {
            let body = html::refused(page, &e, "see this namespace's plan (yours, or a team's you are in)");
            return page_response(super::status_code(&e), html::layout(page, "Plan", "plan", body));
        }
    };
    let plans = client.call_json("platform", "Plan.List", &json!({})).await.map(|v| v["plans"].clone());
    let plans = plans.unwrap_or(Value::Null);
    let current = reply["plan"].as_str().unwrap_or_default().to_string();
    let (l, used) = (&reply["limits"], &reply["used"]);
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    let done = page.query("done").map(str::to_string);
    let resets = micro_core::time::utc(n(&used["resets"]) * 1000);
    let body = html! {
        @if let Some(note) = done { p.notice role="status" { (note) } }
        @if let Some(e) = &error { (html::error(e)) }
        section {
            h2 { "Namespace " span #plan-namespace { (ns) } " is on the " strong #plan-name { (current) } " plan" }
            (bar("Services running", n(&used["services"]), n(&l["services"]), ""))
            @if let Some(requests) = used["requests"].as_u64() {
                (bar("Requests this month", requests, n(&l["requests_per_month"]), ""))
            }
            @if let Some(bytes) = used["storage_bytes"].as_u64() {
                (bar("Storage", bytes.div_ceil(1 << 20), n(&l["storage_mb"]), " MiB"))
            }
            @if let Some(secs) = used["build_seconds"].as_u64() {
                (bar("Build minutes this month", secs.div_ceil(60), n(&l["build_minutes"]), ""))
            }
            @if used["resets"].as_u64().is_some_and(|r| r > 0) {
                p.hint { "Requests and build minutes start again on " (resets.get(..10).unwrap_or_default()) " UTC." }
            }
            table.limits {
                tbody {
                    tr { th scope="row" { "Instances of a service" } td { (n(&l["instances"])) } }
                    tr { th scope="row" { "Memory of an instance" } td { (n(&l["memory_mb"])) " MiB" } }
                    tr { th scope="row" { "CPU of an instance" } td { (n(&l["cpu_millis"]) as f64 / 1000.0) " core" } }
                    tr { th scope="row" { "Processes of an instance" } td { (n(&l["pids"])) } }
                    tr { th scope="row" { "Requests a month" } td { (n(&l["requests_per_month"])) } }
                    tr { th scope="row" { "Storage" } td { (n(&l["storage_mb"])) " MiB" } }
                    tr { th scope="row" { "Build minutes a month" } td { (n(&l["build_minutes"])) } }
                    tr { th scope="row" { "Network egress" } td {
                        @if l["egress"] == "none" { "none (the platform only)" } @else { "the internet" }
                    } }
                }
            }
        }
        @if let Some(all) = plans.as_object() {
            section {
                h2 { "Change plan" }
                p { "The namespace's owner changes its plan; it takes effect at once." }
                table.plans {
                    thead { tr { th scope="col" { "Plan" } th scope="col" { "Services" } th scope="col" { "Requests a month" } th scope="col" { "Memory" } } }
                    tbody {
                        @for (name, limits) in all {
                            tr {
                                th scope="row" { (name) }
                                td { (n(&limits["services"])) }
                                td { (n(&limits["requests_per_month"])) }
                                td { (n(&limits["memory_mb"])) " MiB" }
                            }
                        }
                    }
                }
                form.inline method="post" action="/plan" {
                    (html::csrf(page))
                    input type="hidden" name="namespace" value=(ns);
                    label for="plan" { "Plan" }
                    select #plan name="plan" {
                        @for name in all.keys() {
                            option value=(name) selected[*name == current] { (name) }
                        }
                    }
                    button type="submit" { "Change plan" }
                }
                p.hint { "The same as " code { "micro plan" } " and " code { "micro plan set <plan>" } "." }
            }
        }
    };
    page_response(status, html::layout(page, "Plan", "plan", body))
}
