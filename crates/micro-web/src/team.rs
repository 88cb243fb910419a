//! Teams, for people who signed up to the platform: the teams they are in with their
//! role, making a team, and for a team its members and pending invites — inviting by
//! address with a role, changing a role, removing (yourself: leaving). An invite mailed
//! to you is accepted here too. Every action is a call to the platform product's `Team.*`
//! endpoints as the signed-in account, which answers only to a person signed in to their
//! own namespace and checks their role in the team (admins manage members; the owner
//! also its plan).
//!
//! "Work in it" switches the session to the person's account in a team's namespace (its
//! tokens from `Team.Switch`; the person's own are kept aside), and "Back to …" returns;
//! the owner hands the team to another member ("Make owner", `Team.Transfer`).
//!
//! `GET /team[?namespace=<team>]`, `GET /team/accept?namespace=&code=`, `POST /team`
//! (`action=create|invite|role|remove|accept|transfer|switch|home`).

use super::html;
use super::{Form, Page, encode, page_response, redirect};
use axum::body::Body;
use http::{Response, StatusCode};
use maud::html;
use micro_core::Status;
use serde_json::{Value, json};

/// The roles a member can be given here (ownership moves with "Make owner").
const ROLES: [&str; 3] = ["viewer", "developer", "admin"];

/// `GET /team`, `GET /team/accept`.
pub(crate) async fn get(page: &Page) -> Response<Body> {
    match page.rest.as_slice() {
        [] => teams(page, None, StatusCode::OK).await,
        [a] if a == "accept" => accept_page(page, None, StatusCode::OK),
        _ => super::not_found(page),
    }
}

/// `POST /team`.
pub(crate) async fn post(page: &Page, form: &Form) -> Response<Body> {
    if !page.rest.is_empty() {
        return super::not_found(page);
    }
    let client = page.client();
    let team = form.get("namespace").trim().to_string();
    let call = |endpoint: &'static str, body: Value| {
        let client = client.clone();
        async move { client.call_json("platform", endpoint, &body).await }
    };
    let action = form.get("action");
    if action == "home" {
        return match page.web.inner.sessions.leave(&page.session.id) {
            Some(s) => redirect(&format!("/team?done={}", encode(&format!("Back in {}.", s.namespace)))),
            None => redirect("/team"),
        };
    }
    if page.session.away_from.is_some() {
        // Team calls are the person's, from their own namespace.
        return bad(page, "You are working in a team: go back to your own namespace first.").await;
    }
    let (result, back) = match action {
        "switch" => {
            let role = match call("Team.Namespaces", json!({})).await {
                Ok(mine) => mine["teams"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|t| t["namespace"] == team.as_str())
                    .and_then(|t| t["role"].as_str())
                    .map(str::to_string),
                Err(e) => return teams(page, Some(e), StatusCode::OK).await,
            };
            let Some(role) = role else {
                return bad(page, "You are not a member of that team.").await;
            };
            match call("Team.Switch", json!({"namespace": team})).await {
                Ok(t) => {
                    let entered = super::session::Started {
                        namespace: team.clone(),
                        home: team.clone(),
                        account: t["id"].as_str().unwrap_or_default().to_string(),
                        admin: role == "owner" || role == "admin",
                        token: t["access_token"].as_str().unwrap_or_default().to_string(),
                        refresh: t["refresh_token"].as_str().unwrap_or_default().to_string(),
                        expiry: t["expiry"].as_u64().unwrap_or_default(),
                    };
                    page.web.inner.sessions.enter(&page.session.id, entered);
                    return redirect("/services");
                }
                Err(e) => (Err(e), team),
            }
        }
        "transfer" => {
            let email = form.get("email").trim().to_string();
            let r = call("Team.Transfer", json!({"namespace": team, "email": email})).await;
            (r.map(|_| format!("{email} owns {team} now; you are one of its admins.")), team)
        }
        "create" => {
            let name = form.get("name").trim().to_string();
            let r = call("Team.Create", json!({"name": name})).await;
            (r.map(|_| format!("Made team {name}: you own it.")), name)
        }
        action @ ("invite" | "role") => {
            let email = form.get("email").trim().to_string();
            let role = form.get("role");
            if !ROLES.contains(&role) {
                return bad(page, "Pick a role: viewer, developer or admin.").await;
            }
            let (endpoint, note) = match action {
                "invite" => ("Team.Invite", format!("Invited {email} as {role}: the code is on its way.")),
                _ => ("Team.SetRole", format!("{email} is now {role}.")),
            };
            let r = call(endpoint, json!({"namespace": team, "email": email, "role": role})).await;
            (r.map(|_| note), team)
        }
        "remove" => {
            let email = form.get("email").trim().to_string();
            let r = call("Team.Remove", json!({"namespace": team, "email": email})).await;
            (r.map(|_| format!("Removed {email}.")), team)
        }
        "accept" => {
            let code = form.get("code").trim().to_string();
            match call("Team.Accept", json!({"namespace": team, "code": code})).await {
                Ok(m) => (
                    Ok(format!(
                        "You joined {team} as {}. With the CLI: micro namespace switch {team}",
                        m["role"].as_str().unwrap_or("a member")
                    )),
                    team,
                ),
                Err(e) => return accept_page(page, Some(&e), super::status_code(&e)),
            }
        }
        _ => return bad(page, "Unknown action.").await,
    };
    match result {
        Ok(note) if back.is_empty() => redirect(&format!("/team?done={}", encode(&note))),
        Ok(note) => redirect(&format!("/team?namespace={}&done={}", encode(&back), encode(&note))),
        Err(e) => teams(page, Some(e), StatusCode::OK).await,
    }
}

async fn bad(page: &Page, why: &str) -> Response<Body> {
    teams(page, Some(Status::bad_request("web", why)), StatusCode::BAD_REQUEST).await
}

fn date(secs: &Value) -> String {
    secs.as_u64().map(|s| micro_core::time::utc(s * 1000).get(..10).unwrap_or_default().to_string()).unwrap_or_default()
}

/// The form accepting an invite (its link fills it in).
fn accept_page(page: &Page, error: Option<&Status>, status: StatusCode) -> Response<Body> {
    let team = page.query("namespace").unwrap_or_default();
    let code = page.query("code").unwrap_or_default();
    let body = html! {
        @if let Some(e) = error { (html::error(e)) }
        p { "Accept an invite to a team, signed in to your own namespace as the address it was mailed to." }
        form.stack method="post" action="/team" {
            (html::csrf(page))
            input type="hidden" name="action" value="accept";
            label for="team" { "Team" }
            input #team name="namespace" value=(team) required pattern="[a-z0-9][a-z0-9\\-]*";
            label for="code" { "Code" }
            input #code name="code" value=(code) required autocomplete="off";
            button type="submit" { "Accept" }
        }
    };
    page_response(status, html::layout(page, "Accept an invite", "team", body))
}

/// The page: your teams, a new team, and the chosen team's members (while working in a
/// team: the way back).
async fn teams(page: &Page, error: Option<Status>, status: StatusCode) -> Response<Body> {
    if let Some(own) = &page.session.away_from {
        let body = html! {
            @if let Some(e) = &error { (html::error(e)) }
            p.notice role="status" {
                "You are working in " strong { (page.session.namespace) } " as " (page.session.account) "."
            }
            form.inline method="post" action="/team" {
                (html::csrf(page))
                input type="hidden" name="action" value="home";
                button type="submit" { "Back to " (own.namespace) }
            }
        };
        return page_response(status, html::layout(page, "Teams", "team", body));
    }
    let client = page.client();
    let mine = match client.call_json("platform", "Team.Namespaces", &json!({})).await {
        Ok(v) => v,
        Err(e) => {
            let body = html::refused(
                page,
                &e,
                "manage teams (sign in to your own namespace as the address you signed up with)",
            );
            return page_response(super::status_code(&e), html::layout(page, "Teams", "team", body));
        }
    };
    let list = mine["teams"].as_array().cloned().unwrap_or_default();
    let chosen =
        page.query("namespace").map(str::to_string).filter(|n| list.iter().any(|t| t["namespace"] == n.as_str()));
    let role_in = |ns: &str| {
        list.iter().find(|t| t["namespace"] == ns).and_then(|t| t["role"].as_str()).unwrap_or_default().to_string()
    };
    let members = match &chosen {
        Some(ns) => Some(client.call_json("platform", "Team.Members", &json!({"namespace": ns})).await),
        None => None,
    };
    let done = page.query("done").map(str::to_string);
    let body = html! {
        @if let Some(note) = done { p.notice role="status" { (note) } }
        @if let Some(e) = &error { (html::error(e)) }
        section {
            h2 { "Your teams" }
            @if list.is_empty() {
                p { "None yet. Make one below, or accept an invite: " a href="/team/accept" { "accept an invite" } "." }
            } @else {
                table.teams {
                    thead { tr { th scope="col" { "Team" } th scope="col" { "Your role" } th scope="col" { "" } th scope="col" { "" } } }
                    tbody {
                        @for t in &list {
                            @let ns = t["namespace"].as_str().unwrap_or_default();
                            tr {
                                td { a href={ "/team?namespace=" (encode(ns)) } { (ns) } }
                                td.role { (t["role"].as_str().unwrap_or_default()) }
                                td { a href={ "/plan?namespace=" (encode(ns)) } { "Plan" } }
                                td {
                                    form.inline method="post" action="/team" {
                                        (html::csrf(page))
                                        input type="hidden" name="action" value="switch";
                                        input type="hidden" name="namespace" value=(ns);
                                        button type="submit" aria-label={ "Work in " (ns) } { "Work in it" }
                                    }
                                }
                            }
                        }
                    }
                }
                p.hint { "With the CLI: " code { "micro namespace switch <team>" } "." }
            }
            form.inline method="post" action="/team" {
                (html::csrf(page))
                input type="hidden" name="action" value="create";
                label for="name" { "New team" }
                input #name name="name" required pattern="[a-z0-9][a-z0-9\\-]*" placeholder="acme";
                button type="submit" { "Make team" }
            }
        }
        @if let (Some(ns), Some(members)) = (&chosen, &members) {
            @let mine = role_in(ns);
            @let manage = mine == "admin" || mine == "owner";
            section {
                h2 { "Members of " (ns) }
                @match members {
                    Err(e) => { (html::error(e)) }
                    Ok(m) => {
                        table.members {
                            thead { tr { th scope="col" { "Email" } th scope="col" { "Role" } th scope="col" { "Since" } th scope="col" { "" } } }
                            tbody {
                                @for p in m["members"].as_array().into_iter().flatten() {
                                    @let email = p["email"].as_str().unwrap_or_default();
                                    @let role = p["role"].as_str().unwrap_or_default();
                                    tr {
                                        td { (email) }
                                        td.role {
                                            @if manage && role != "owner" {
                                                form.inline method="post" action="/team" {
                                                    (html::csrf(page))
                                                    input type="hidden" name="action" value="role";
                                                    input type="hidden" name="namespace" value=(ns);
                                                    input type="hidden" name="email" value=(email);
                                                    select name="role" aria-label={ "Role of " (email) } {
                                                        @for r in ROLES { option value=(r) selected[r == role] { (r) } }
                                                    }
                                                    button type="submit" { "Change" }
                                                }
                                            } @else { (role) }
                                        }
                                        td { (date(&p["since"])) }
                                        td {
                                            @if mine == "owner" && role != "owner" {
                                                form.inline method="post" action="/team" {
                                                    (html::csrf(page))
                                                    input type="hidden" name="action" value="transfer";
                                                    input type="hidden" name="namespace" value=(ns);
                                                    input type="hidden" name="email" value=(email);
                                                    button type="submit" aria-label={ "Make " (email) " the owner" } { "Make owner" }
                                                }
                                            }
                                            @if role != "owner" && (manage || email == page.session.account) {
                                                form.inline method="post" action="/team" {
                                                    (html::csrf(page))
                                                    input type="hidden" name="action" value="remove";
                                                    input type="hidden" name="namespace" value=(ns);
                                                    input type="hidden" name="email" value=(email);
                                                    button type="submit" aria-label={ "Remove " (email) } {
                                                        @if email == page.session.account { "Leave" } @else { "Remove" }
                                                    }
                                                }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                        @let pending = m["pending"].as_array().cloned().unwrap_or_default();
                        @if !pending.is_empty() {
                            h3 { "Invited" }
                            ul.pending {
                                @for p in &pending {
                                    li { (p["email"].as_str().unwrap_or_default()) " as " (p["role"].as_str().unwrap_or_default()) ", until " (date(&p["expires"])) }
                                }
                            }
                        }
                    }
                }
                @if manage {
                    form.inline method="post" action="/team" {
                        (html::csrf(page))
                        input type="hidden" name="action" value="invite";
                        input type="hidden" name="namespace" value=(ns);
                        label for="invite-email" { "Invite" }
                        input #invite-email name="email" type="email" required placeholder="name@example.com";
                        label for="invite-role" { "as" }
                        select #invite-role name="role" {
                            @for r in ROLES { option value=(r) selected[r == "developer"] { (r) } }
                        }
                        button type="submit" { "Send invite" }
                    }
                }
            }
        }
    };
    page_response(status, html::layout(page, "Teams", "team", body))
}
