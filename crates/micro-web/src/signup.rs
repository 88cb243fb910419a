//! Signing up to the platform, for people without an account yet: join the waitlist,
//! confirm the mailed code, and (once invited) set a password and get a namespace. Each
//! form calls the platform product's public `Signup.*` endpoints through the proxy,
//! vouching for the browser's address (joins are limited per address).
//!
//! Like the sign-in form, every form carries a pre-session token that must match its
//! cookie, so another site cannot submit them for a visitor.
//!
//! `GET /signup`, `POST /signup` (join), `POST /signup/verify`, `GET|POST /signup/accept`.

use super::extract::{Fields, parse_form, secure};
use super::{Web, page_response, session};
use axum::extract::{FromRequest, Request, State};
use axum::response::Response;
use http::{HeaderMap, StatusCode, Uri, header};
use maud::{DOCTYPE, Markup, html};
use micro_core::Status;
use serde_json::{Value, json};
use std::net::IpAddr;
use std::sync::Arc;

/// Adds the dashboard's word for the browser's address to a call through the proxy.
struct Vouch {
    key: micro::edge::EdgeKey,
    browser: Option<IpAddr>,
}

#[async_trait::async_trait]
impl micro::layer::Authorize for Vouch {
    async fn authorize(&self, req: &mut http::request::Parts) -> Result<(), Status> {
        if let Some(ip) = self.browser
            && let (Ok(key), Ok(address)) = (self.key.value().parse(), ip.to_string().parse())
        {
            req.headers.insert(micro::edge::EDGE_KEY, key);
            req.headers.insert(micro::server::CLIENT_ADDRESS, address);
        }
        Ok(())
    }
}

/// Calls `Signup.<method>` anonymously for the browser at `browser`.
async fn call(web: &Web, browser: Option<IpAddr>, method: &str, body: Value) -> Result<Value, Status> {
    let vouch = Vouch { key: web.inner.edge_key.clone(), browser };
    micro::Client::via_proxy(web.inner.proxy.clone())
        .transport(web.inner.transport.clone())
        .auth(Arc::new(vouch))
        .call_json("platform", &format!("Signup.{method}"), &body)
        .await
}

/// A signup page: a title, what went wrong if anything, and `body`.
fn layout(title: &str, error: Option<&Status>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Micro" }
                link rel="stylesheet" href="/assets/app.css";
                link rel="icon" href="/assets/icon.svg" type="image/svg+xml";
            }
            body.narrow {
                main #main {
                    h1 { (title) }
                    @if let Some(e) = error {
                        p.error role="alert" { (sentence(e.detail())) }
                    }
                    (body)
                }
            }
        }
    }
}

/// "wrong code (4 tries left)" as a sentence.
fn sentence(s: &str) -> String {
    let mut chars = s.chars();
    let first = chars.next().map(|c| c.to_uppercase().chain(chars).collect::<String>()).unwrap_or_default();
    if first.ends_with('.') { first } else { format!("{first}.") }
}

/// A page with a new pre-session token in its cookie; `form` gets the token.
fn respond(status: StatusCode, secure: bool, page: impl FnOnce(&str) -> Markup) -> Response {
    let token = session::random_id();
    let mut r = page_response(status, page(&token));
    r.headers_mut().insert(header::SET_COOKIE, session::login_cookie(&token, secure));
    r
}

fn join_form(token: &str, email: &str, error: Option<&Status>) -> Markup {
    layout(
        "Join the waitlist",
        error,
        html! {
            p { "The platform is invite-only for now. Join the waitlist: we mail you a code to confirm your address, and an invite when your turn comes." }
            form.stack method="post" action="/signup" {
                input type="hidden" name="_csrf" value=(token);
                label for="email" { "Email" }
                input #email name="email" type="email" value=(email) required autocomplete="email" autofocus;
                button type="submit" { "Join" }
            }
            p.hint { "Invited already? Follow the link in your invite. Have an account? " a href="/login" { "Sign in" } "." }
        },
    )
}

fn verify_form(token: &str, email: &str, note: &str, error: Option<&Status>) -> Markup {
    layout(
        "Confirm your address",
        error,
        html! {
            p { (note) }
            form.stack method="post" action="/signup/verify" {
                input type="hidden" name="_csrf" value=(token);
                label for="email" { "Email" }
                input #email name="email" type="email" value=(email) required autocomplete="email";
                label for="code" { "Code" }
                input #code name="code" required inputmode="numeric" autocomplete="one-time-code" autofocus;
                button type="submit" { "Confirm" }
            }
        },
    )
}

fn accept_form(token: &str, email: &str, code: &str, error: Option<&Status>) -> Markup {
    layout(
        "Sign up",
        error,
        html! {
            p { "You are invited. Choose a password: you get an account and a namespace of your own." }
            form.stack method="post" action="/signup/accept" {
                input type="hidden" name="_csrf" value=(token);
                label for="email" { "Email" }
                input #email name="email" type="email" value=(email) required autocomplete="email";
                label for="code" { "Invite code" }
                input #code name="code" value=(code) required autocomplete="off";
                label for="password" { "Password" }
                input #password name="password" type="password" required minlength="10" autocomplete="new-password";
                button type="submit" { "Sign up" }
            }
        },
    )
}

fn query(uri: &Uri, name: &str) -> String {
    uri.query().map(parse_form).and_then(|q| q.into_iter().find(|(k, _)| k == name).map(|(_, v)| v)).unwrap_or_default()
}

/// `GET /signup`.
pub(crate) async fn page(headers: HeaderMap, uri: Uri) -> Response {
    let email = query(&uri, "email");
    respond(StatusCode::OK, secure(&headers), |t| join_form(t, &email, None))
}

/// `GET /signup/accept?email=…&code=…`: the link in an invite.
pub(crate) async fn accept_page(headers: HeaderMap, uri: Uri) -> Response {
    let (email, code) = (query(&uri, "email"), query(&uri, "code"));
    respond(StatusCode::OK, secure(&headers), |t| accept_form(t, &email, &code, None))
}

/// A posted form whose token matches its cookie, with the browser's address; or the
/// response that refuses it.
async fn posted(web: &Web, req: Request) -> Result<(super::Form, Option<IpAddr>, bool), Response> {
    let secure = secure(req.headers());
    let cookie = micro::auth::cookie(req.headers(), session::LOGIN_COOKIE);
    let browser = micro::edge::peer(&req);
    let Fields(form) = Fields::from_request(req, web).await?;
    if cookie.is_none() || cookie.as_deref() != Some(form.get("_csrf")) {
        let expired = Status::new(micro_core::Code::PermissionDenied, "web", "the form expired; try again");
        let email = form.get("email").to_string();
        return Err(respond(StatusCode::FORBIDDEN, secure, |t| join_form(t, &email, Some(&expired))));
    }
    Ok((form, browser, secure))
}

fn status_of(e: &Status) -> StatusCode {
    super::status_code(e)
}

/// `POST /signup`: joins the waitlist.
pub(crate) async fn join(State(web): State<Web>, req: Request) -> Response {
    let (form, browser, secure) = match posted(&web, req).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let email = form.get("email").trim().to_string();
    match call(&web, browser, "Join", json!({"email": email})).await {
        Ok(_) => respond(StatusCode::OK, secure, |t| {
            verify_form(
                t,
                &email,
                &format!("We mailed a code to {email}. Enter it here (it is valid for 30 minutes)."),
                None,
            )
        }),
        Err(e) => respond(status_of(&e), secure, |t| join_form(t, &email, Some(&e))),
    }
}

/// `POST /signup/verify`: confirms the code.
pub(crate) async fn verify(State(web): State<Web>, req: Request) -> Response {
    let (form, browser, secure) = match posted(&web, req).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let email = form.get("email").trim().to_string();
    match call(&web, browser, "Verify", json!({"email": email, "code": form.get("code")})).await {
        Ok(reply) => {
            let invited = reply["state"] == "invited";
            let markup = layout(
                if invited { "Your invite is in the mail" } else { "You are on the waitlist" },
                None,
                html! {
                    p #done {
                        @if invited {
                            "Your address is confirmed and your invite is on its way to " strong { (email) } ": follow its link to sign up."
                        } @else {
                            "Your address is confirmed. We mail an invite to " strong { (email) } " when your turn comes."
                        }
                    }
                },
            );
            let mut r = page_response(StatusCode::OK, markup);
            r.headers_mut().insert(header::SET_COOKIE, session::clear_login_cookie(secure));
            r
        }
        Err(e) => respond(status_of(&e), secure, |t| verify_form(t, &email, "Enter the code we mailed you.", Some(&e))),
    }
}

/// `POST /signup/accept`: signs up with an invite.
pub(crate) async fn accept(State(web): State<Web>, req: Request) -> Response {
    let (form, browser, secure) = match posted(&web, req).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let (email, code) = (form.get("email").trim().to_string(), form.get("code").trim().to_string());
    let body = json!({"email": email, "code": code, "password": form.get("password")});
    match call(&web, browser, "Accept", body).await {
        Ok(reply) => {
            let ns = reply["namespace"].as_str().unwrap_or_default().to_string();
            let markup = layout(
                "Welcome",
                None,
                html! {
                    p #done { "Your namespace is " code #namespace { (ns) } ", and you are its admin." }
                    p { a href={ "/login?namespace=" (super::encode(&ns)) } { "Sign in to " (ns) } }
                    p.hint { "With the CLI: " code { "micro --namespace " (ns) " login --id " (email) } }
                },
            );
            let mut r = page_response(StatusCode::OK, markup);
            r.headers_mut().insert(header::SET_COOKIE, session::clear_login_cookie(secure));
            r
        }
        Err(e) => respond(status_of(&e), secure, |t| accept_form(t, &email, &code, Some(&e))),
    }
}
