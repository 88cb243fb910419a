//! Signing in and out: the sign-in page and form, sign-out, refreshing a session's tokens
//! and switching the namespace the pages show.
//!
//! `GET /login`, `POST /login`, `POST /logout`, `POST /namespace`.

use super::extract::{Fields, Posted, parse_form, secure};
use super::session::{self, Session};
use super::{Web, html, page_response, redirect};
use axum::extract::{FromRequest, Request, State};
use axum::response::Response;
use http::{HeaderMap, StatusCode, Uri, header};
use micro::proto::auth as pb_auth;
use micro_core::Status;

/// `GET /login`: the sign-in form, with a pre-session token in a cookie and the form, so
/// another site cannot sign a browser in to an account of its choosing.
pub(crate) async fn page(headers: HeaderMap, uri: Uri) -> Response {
    let ns = uri
        .query()
        .map(parse_form)
        .and_then(|q| q.into_iter().find(|(k, _)| k == "namespace").map(|(_, v)| v))
        .unwrap_or_else(|| micro_core::namespace::DEFAULT.to_string());
    form(StatusCode::OK, &ns, None, secure(&headers))
}

/// The sign-in form with a new pre-session token.
fn form(status: StatusCode, namespace: &str, error: Option<&str>, secure: bool) -> Response {
    let token = session::random_id();
    let mut r = page_response(status, html::login(&token, namespace, error));
    r.headers_mut().insert(header::SET_COOKIE, session::login_cookie(&token, secure));
    r
}

/// `POST /login`.
pub(crate) async fn login(State(web): State<Web>, req: Request) -> Response {
    let secure = secure(req.headers());
    let cookie = micro::auth::cookie(req.headers(), session::LOGIN_COOKIE);
    let browser = micro::edge::peer(&req);
    let form = match Fields::from_request(req, &web).await {
        Ok(Fields(f)) => f,
        Err(r) => return r,
    };
    let retry_with = |status: StatusCode, error: &str| self::form(status, form.get("namespace"), Some(error), secure);
    let retry = |error: &str| retry_with(StatusCode::UNAUTHORIZED, error);
    if cookie.is_none() || cookie.as_deref() != Some(form.get("_csrf")) {
        return retry("The sign-in form expired; try again.");
    }
    let (ns, id, secret) = (form.get("namespace").trim(), form.get("id").trim(), form.get("secret"));
    if micro_core::namespace::validate(ns).is_err() {
        return retry("That is not a namespace name (lowercase letters, digits and -).");
    }
    if id.is_empty() || secret.is_empty() {
        return retry("Enter the account id and its secret.");
    }
    let token = match token(&web, ns, id, secret, browser).await {
        Ok(t) => t,
        Err(e) if e.code() == micro_core::Code::Unavailable => {
            return retry("The server is unavailable; try again.");
        }
        // "too many attempts, try again in N s", as a sentence.
        Err(e) if e.code() == micro_core::Code::ResourceExhausted => {
            let detail = e.detail();
            let mut chars = detail.chars();
            let sentence = chars.next().map(|c| c.to_uppercase().chain(chars).collect::<String>());
            return retry_with(StatusCode::TOO_MANY_REQUESTS, &format!("{}.", sentence.unwrap_or_default()));
        }
        Err(_) => return retry("Wrong account or secret."),
    };
    let account = token.account.unwrap_or_default();
    let admin = account.scopes.iter().any(|s| s == "admin");
    let session = web.inner.sessions.start(session::Started {
        namespace: account.namespace.clone(),
        home: account.namespace.clone(),
        account: account.id.clone(),
        admin,
        token: token.access_token,
        refresh: token.refresh_token,
        expiry: token.expiry,
    });
    let mut r = redirect("/services");
    r.headers_mut().insert(header::SET_COOKIE, session::session_cookie(&session, secure));
    r.headers_mut().append(header::SET_COOKIE, session::clear_login_cookie(secure));
    r
}

/// Logs in for the browser at `browser`, whose address the failures count under.
async fn token(
    web: &Web,
    ns: &str,
    id: &str,
    secret: &str,
    browser: Option<std::net::IpAddr>,
) -> Result<pb_auth::TokenResponse, Status> {
    let ch = web.channel(None)?;
    let mut client = pb_auth::auth_client::AuthClient::new(ch);
    let mut req = tonic::Request::new(pb_auth::TokenRequest {
        id: id.to_string(),
        secret: secret.to_string(),
        ..Default::default()
    });
    if let Ok(v) = ns.parse() {
        req.metadata_mut().insert(micro_core::metadata::NAMESPACE, v);
    }
    if let Some(ip) = browser {
        web.inner.edge_key.vouch(&mut req, ip);
    }
    client.token(req).await.map(|r| r.into_inner()).map_err(|e| micro::status::from_tonic(&e))
}

/// New tokens for a session whose access token is about to expire.
pub(crate) async fn refresh(web: &Web, session: &Session) -> Option<Session> {
    let ch = web.channel(None).ok()?;
    let mut client = pb_auth::auth_client::AuthClient::new(ch);
    let mut req =
        tonic::Request::new(pb_auth::TokenRequest { refresh_token: session.refresh.clone(), ..Default::default() });
    req.metadata_mut().insert(micro_core::metadata::NAMESPACE, session.home.parse().ok()?);
    let t = client.token(req).await.ok()?.into_inner();
    web.inner.sessions.renew(&session.id, t.access_token, t.refresh_token, t.expiry)
}

/// `POST /logout`: ends the session and clears its cookie.
pub(crate) async fn logout(headers: HeaderMap, Posted { page, .. }: Posted) -> Response {
    page.web.inner.sessions.end(&page.session.id);
    let mut r = redirect("/login");
    r.headers_mut().insert(header::SET_COOKIE, session::clear_cookie(secure(&headers)));
    r
}

/// `POST /namespace`: the namespace the pages show. Only an admin of the default
/// namespace acts in others (as with the CLI).
pub(crate) async fn switch_namespace(Posted { page, form }: Posted) -> Response {
    let ns = form.get("namespace");
    let allowed =
        ns == page.session.home || (page.session.admin && page.session.home == micro_core::namespace::DEFAULT);
    if micro_core::namespace::validate(ns).is_err() || !allowed {
        let markup = html::message(&page, "Not your namespace", "Your account can only see its own namespace.");
        return page_response(StatusCode::FORBIDDEN, markup);
    }
    page.web.inner.sessions.set_namespace(&page.session.id, ns);
    redirect("/services")
}
