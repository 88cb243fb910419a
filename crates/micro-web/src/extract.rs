//! What a page handler asks of a request, as axum extractors: the signed-in [`Page`], a
//! [`Posted`] form whose CSRF token is the session's, or a form's [`Fields`] alone.
//!
//! Cookies go through [`micro::auth::cookie`] and forms and queries through
//! [`micro::form`], the project's one parser of each.

use super::html;
use super::session::{self, Session};
use super::{Web, page_response, redirect};
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::response::Response;
use http::request::Parts;
use http::{Method, StatusCode, header};

/// Largest form the dashboard accepts.
pub(crate) const FORM_LIMIT: usize = 1 << 20;

/// A signed-in request: the session (its tokens refreshed when they are about to expire),
/// the path below the section and the query. Without a session a GET goes to the sign-in
/// page and anything else gets a "signed out" page.
pub(crate) struct Page {
    pub(crate) web: Web,
    pub(crate) session: Session,
    /// The path below the section, split at `/`, each segment decoded.
    pub(crate) rest: Vec<String>,
    pub(crate) query: Vec<(String, String)>,
    /// The host and port the browser reached the dashboard at (HTTP/2's `:authority`, else
    /// `Host`), as it named them, when they form a valid authority.
    pub(crate) host: Option<http::uri::Authority>,
    /// Whether the browser came over HTTPS ([`secure`]).
    pub(crate) secure: bool,
}

impl Page {
    /// A query parameter.
    pub(crate) fn query(&self, name: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

impl FromRequestParts<Web> for Page {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, web: &Web) -> Result<Page, Response> {
        let signed_out = |method: &Method| if *method == Method::GET { redirect("/login") } else { expired() };
        let Some(mut session) = web.inner.sessions.of(&parts.headers) else {
            return Err(signed_out(&parts.method));
        };
        if session.expiry <= session::now() + 30 {
            match super::signin::refresh(web, &session).await {
                Some(s) => session = s,
                None => {
                    web.inner.sessions.end(&session.id);
                    return Err(signed_out(&parts.method));
                }
            }
        }
        let query = parts.uri.query().map(parse_form).unwrap_or_default();
        let host = parts.uri.authority().cloned().or_else(|| {
            let h = parts.headers.get(header::HOST)?;
            http::uri::Authority::try_from(h.as_bytes()).ok()
        });
        let secure = secure(&parts.headers);
        let mut rest = Vec::new();
        for segment in parts.uri.path().split('/').filter(|s| !s.is_empty()).skip(1) {
            match micro::form::unescape(segment) {
                Ok(s) => rest.push(s),
                Err(e) => {
                    let page = Page { web: web.clone(), session, rest: Vec::new(), query, host, secure };
                    let markup = html::message(&page, "Bad request", e.detail());
                    return Err(page_response(StatusCode::BAD_REQUEST, markup));
                }
            }
        }
        Ok(Page { web: web.clone(), session, rest, query, host, secure })
    }
}

/// The page of a request whose session has ended.
pub(crate) fn expired() -> Response {
    page_response(StatusCode::UNAUTHORIZED, html::bare("Signed out", "Your session has ended. Sign in again."))
}

/// A submitted form.
pub(crate) struct Form(pub(crate) Vec<(String, String)>);

impl Form {
    /// The value of field `name` (the last one when repeated); empty when absent.
    pub(crate) fn get(&self, name: &str) -> &str {
        self.0.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).unwrap_or("")
    }
}

/// Parses `application/x-www-form-urlencoded` text ([`micro::form::pairs`]); text that
/// does not decode to UTF-8 has no fields (the page then says what is missing).
pub(crate) fn parse_form(text: &str) -> Vec<(String, String)> {
    micro::form::pairs(text).unwrap_or_default()
}

/// A form's fields, read from the body (at most [`FORM_LIMIT`] bytes: more is a 413).
pub(crate) struct Fields(pub(crate) Form);

impl<S: Send + Sync> FromRequest<S> for Fields {
    type Rejection = Response;

    async fn from_request(req: Request, _: &S) -> Result<Fields, Response> {
        let too_large =
            || page_response(StatusCode::PAYLOAD_TOO_LARGE, html::bare("Too large", "The form is too large."));
        let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok());
        if declared.and_then(|v| v.parse::<usize>().ok()).is_some_and(|n| n > FORM_LIMIT) {
            return Err(too_large());
        }
        let bytes = axum::body::to_bytes(req.into_body(), FORM_LIMIT).await.map_err(|_| too_large())?;
        Ok(Fields(Form(parse_form(&String::from_utf8_lossy(&bytes)))))
    }
}

/// A form a signed-in page submitted, carrying the session's CSRF token (else a 403).
pub(crate) struct Posted {
    pub(crate) page: Page,
    pub(crate) form: Form,
}

impl FromRequest<Web> for Posted {
    type Rejection = Response;

    async fn from_request(req: Request, web: &Web) -> Result<Posted, Response> {
        let (mut parts, body) = req.into_parts();
        let page = Page::from_request_parts(&mut parts, web).await?;
        let Fields(form) = Fields::from_request(Request::from_parts(parts, body), web).await?;
        if !page.session.csrf_ok(form.get("_csrf")) {
            let markup = html::message(&page, "The form has expired", "Reload the page and try again.");
            return Err(page_response(StatusCode::FORBIDDEN, markup));
        }
        Ok(Posted { page, form })
    }
}

/// Whether the browser reached the dashboard over HTTPS (through a proxy that says so):
/// cookies are then `Secure`.
pub(crate) fn secure(headers: &http::HeaderMap) -> bool {
    headers.get("x-forwarded-proto").is_some_and(|v| v.as_bytes() == b"https")
}

/// Any path or method no route takes, after the checks a page would make: a session,
/// and for a POST its CSRF token; then 404 for a GET or a POST, 405 otherwise.
pub(crate) async fn fallback(State(web): State<Web>, req: Request) -> Response {
    let method = req.method().clone();
    let page = if method == Method::POST {
        match Posted::from_request(req, &web).await {
            Ok(p) => p.page,
            Err(r) => return r,
        }
    } else {
        let (mut parts, _) = req.into_parts();
        match Page::from_request_parts(&mut parts, &web).await {
            Ok(p) => p,
            Err(r) => return r,
        }
    };
    if method == Method::GET || method == Method::HEAD || method == Method::POST {
        super::not_found(&page)
    } else {
        page_response(StatusCode::METHOD_NOT_ALLOWED, html::message(&page, "Not allowed", ""))
    }
}
