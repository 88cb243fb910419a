//! The Micro dashboard (`MICRO_WEB_ADDRESS`, default `127.0.0.1:8082`): server-rendered
//! pages with a little JavaScript for live views, its assets embedded in the binary.
//!
//! The dashboard is a client of the server like the CLI: every page calls the core
//! services through a node's proxy with the signed-in account's token, so it shows and
//! does exactly what the namespace's rules allow that account, nothing more. It knows
//! nothing of the server's insides: `micro server` hands it the proxy's address, a
//! shutdown signal and the proxy's [`micro::edge::EdgeKey`].
//!
//! Sessions live in memory (a random id in an `HttpOnly`, `SameSite=Strict` cookie); every
//! form that changes something carries the session's CSRF token, checked on submit.
//!
//! ```no_run
//! # async fn run() -> std::io::Result<()> {
//! let (_stop, stopping) = tokio::sync::watch::channel(false);
//! let web = micro_web::Web::new("127.0.0.1:8081".into(), stopping, micro::edge::EdgeKey::random());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8082").await?;
//! micro_web::serve(listener, web, std::future::pending()).await;
//! # Ok(())
//! # }
//! ```

mod assets;
mod auth;
mod config;
mod events;
mod health;
mod html;
mod runtime;
mod services;
mod session;
mod store;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use micro::proto::auth as pb_auth;
use micro_core::Status;
pub(crate) use session::Session;
use std::sync::Arc;
use tonic::body::Body;

/// Largest form the dashboard accepts.
const FORM_LIMIT: usize = 1 << 20;

/// The dashboard. Cheap to clone.
#[derive(Clone)]
pub struct Web {
    inner: Arc<Inner>,
}

struct Inner {
    /// This node's proxy, which every page calls through.
    proxy: String,
    sessions: session::Sessions,
    /// Turns true when the server stops: live streams end then.
    stopping: tokio::sync::watch::Receiver<bool>,
    /// Vouches for a browser's address on its sign-in, which failed logins are limited by.
    edge_key: micro::edge::EdgeKey,
}

/// What a page handler gets.
pub(crate) struct Page<'a> {
    pub(crate) web: &'a Web,
    pub(crate) session: Session,
    /// The path below the section, split at `/`.
    pub(crate) rest: Vec<String>,
    pub(crate) query: Vec<(String, String)>,
}

impl Page<'_> {
    /// A query parameter.
    pub(crate) fn query(&self, name: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// A gRPC channel to the proxy carrying the account's token.
    pub(crate) fn channel(&self) -> Result<micro::data::Ch, Status> {
        let token: Arc<dyn micro::data::TokenSource> = Arc::new(micro::data::StaticToken(self.session.token.clone()));
        micro::data::channel_with(&self.web.inner.proxy, Some(token))
    }

    /// A request for a core service, in the session's namespace.
    pub(crate) fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        if let Ok(ns) = self.session.namespace.parse() {
            r.metadata_mut().insert(micro_core::metadata::NAMESPACE, ns);
        }
        r
    }

    /// The data clients (store, config, events, …) as the account, in its namespace.
    pub(crate) fn data(&self) -> micro::data::Data {
        let token: Arc<dyn micro::data::TokenSource> = Arc::new(micro::data::StaticToken(self.session.token.clone()));
        micro::data::Data::remote_with(&self.web.inner.proxy, &self.session.namespace, Some(token))
    }

    /// A client for calling services as the account.
    pub(crate) fn client(&self) -> micro::Client {
        let token = Arc::new(micro::data::StaticToken(self.session.token.clone()));
        micro::Client::via_proxy(self.web.inner.proxy.clone())
            .namespace(self.session.namespace.clone())
            .auth(Arc::new(micro::auth::Bearer(token)))
    }
}

/// A submitted form.
pub(crate) struct Form(Vec<(String, String)>);

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

/// Percent-encodes one path segment or query value.
pub(crate) fn encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// An HTML response.
pub(crate) fn page_response(status: StatusCode, markup: maud::Markup) -> Response<Body> {
    let mut r = Response::new(Body::new(http_body_util::Full::new(Bytes::from(markup.into_string()))));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, http::HeaderValue::from_static("text/html; charset=utf-8"));
    h.insert(header::CACHE_CONTROL, http::HeaderValue::from_static("no-store"));
    h.insert("x-frame-options", http::HeaderValue::from_static("DENY"));
    h.insert("x-content-type-options", http::HeaderValue::from_static("nosniff"));
    h.insert("referrer-policy", http::HeaderValue::from_static("same-origin"));
    h.insert(
        "content-security-policy",
        http::HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'; form-action 'self'",
        ),
    );
    r
}

/// The HTTP status a page shows for a failed call.
pub(crate) fn status_code(e: &Status) -> StatusCode {
    StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::BAD_GATEWAY)
}

/// A redirect (303: the browser follows with GET).
pub(crate) fn redirect(to: &str) -> Response<Body> {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(v) = http::HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

impl Web {
    /// The dashboard of the node whose proxy is at `proxy`; its live streams end when
    /// `stopping` turns true; `edge_key` is the proxy's, for the browsers' addresses.
    pub fn new(proxy: String, stopping: tokio::sync::watch::Receiver<bool>, edge_key: micro::edge::EdgeKey) -> Web {
        Web { inner: Arc::new(Inner { proxy, sessions: session::Sessions::default(), stopping, edge_key }) }
    }

    /// `stream`, ending when the server stops (so a live view never holds up a shutdown).
    pub(crate) fn until_stopped<S: futures::Stream>(&self, stream: S) -> impl futures::Stream<Item = S::Item> + use<S> {
        let mut stopping = self.inner.stopping.clone();
        futures::StreamExt::take_until(stream, async move {
            let _ = stopping.wait_for(|s| *s).await;
        })
    }

    /// Serves one request.
    pub(crate) async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().to_string();
        let method = req.method().clone();
        if let Some(r) = assets::serve(&path) {
            return r;
        }
        let secure = req.headers().get("x-forwarded-proto").is_some_and(|v| v.as_bytes() == b"https");
        match (method.clone(), path.as_str()) {
            (Method::GET, "/login") => return self.login_page(&req, None, secure),
            (Method::POST, "/login") => return self.login(req, secure).await,
            _ => {}
        }
        let Some(mut session) = self.inner.sessions.of(req.headers()) else {
            return if method == Method::GET { redirect("/login") } else { self.expired() };
        };
        if session.expiry <= session::now() + 30 {
            match self.refresh(&session).await {
                Some(s) => session = s,
                None => {
                    self.inner.sessions.end(&session.id);
                    return if method == Method::GET { redirect("/login") } else { self.expired() };
                }
            }
        }
        let query = req.uri().query().map(parse_form).unwrap_or_default();
        let segments: Vec<String> = path
            .trim_matches('/')
            .split('/')
            .filter(|s| !s.is_empty())
            .map(|s| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned())
            .collect();
        let section = segments.first().cloned().unwrap_or_default();
        let page = Page { web: self, session, rest: segments.into_iter().skip(1).collect(), query };
        if method == Method::POST {
            let form = match read_form(req).await {
                Ok(f) => f,
                Err(r) => return *r,
            };
            if !page.session.csrf_ok(form.get("_csrf")) {
                let markup = html::message(&page, "The form has expired", "Reload the page and try again.");
                return page_response(StatusCode::FORBIDDEN, markup);
            }
            return match (section.as_str(), page.rest.first().map(String::as_str)) {
                ("logout", _) => {
                    self.inner.sessions.end(&page.session.id);
                    let mut r = redirect("/login");
                    r.headers_mut().insert(header::SET_COOKIE, session::clear_cookie(secure));
                    r
                }
                ("namespace", _) => self.switch_namespace(&page, &form),
                ("services", _) => services::post(&page, &form).await,
                ("runtime", _) => runtime::post(&page, &form).await,
                ("store", _) => store::post(&page, &form).await,
                ("config", _) => config::post(&page, &form).await,
                ("events", _) => events::post(&page, &form).await,
                ("auth", _) => auth::post(&page, &form).await,
                ("health", _) => health::post(&page, &form).await,
                _ => not_found(&page),
            };
        }
        if method != Method::GET && method != Method::HEAD {
            return page_response(StatusCode::METHOD_NOT_ALLOWED, html::message(&page, "Not allowed", ""));
        }
        match section.as_str() {
            "" => redirect("/services"),
            "services" => services::get(&page).await,
            "runtime" => runtime::get(&page).await,
            "store" => store::get(&page).await,
            "config" => config::get(&page).await,
            "events" => events::get(&page).await,
            "auth" => auth::get(&page).await,
            "health" => health::get(&page).await,
            _ => not_found(&page),
        }
    }

    fn expired(&self) -> Response<Body> {
        page_response(StatusCode::UNAUTHORIZED, html::bare("Signed out", "Your session has ended. Sign in again."))
    }

    fn login_page(&self, req: &Request<Incoming>, error: Option<&str>, secure: bool) -> Response<Body> {
        // A pre-session token, in a cookie and the form, so another site cannot log a
        // browser in to an account of its choosing.
        let token = session::random_id();
        let ns = req
            .uri()
            .query()
            .map(parse_form)
            .and_then(|q| q.into_iter().find(|(k, _)| k == "namespace").map(|(_, v)| v))
            .unwrap_or_else(|| micro_core::namespace::DEFAULT.to_string());
        let status = if error.is_some() { StatusCode::UNAUTHORIZED } else { StatusCode::OK };
        let mut r = page_response(status, html::login(&token, &ns, error));
        r.headers_mut().insert(header::SET_COOKIE, session::login_cookie(&token, secure));
        r
    }

    async fn login(&self, req: Request<Incoming>, secure: bool) -> Response<Body> {
        let cookie = session::cookie(req.headers(), session::LOGIN_COOKIE);
        let browser = micro::edge::peer(&req);
        let form = match read_form(req).await {
            Ok(f) => f,
            Err(r) => return *r,
        };
        let retry_with = |status: StatusCode, error: &str| {
            let token = session::random_id();
            let mut r = page_response(status, html::login(&token, form.get("namespace"), Some(error)));
            r.headers_mut().insert(header::SET_COOKIE, session::login_cookie(&token, secure));
            r
        };
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
        let token = match self.token(ns, id, secret, browser).await {
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
        let session = self.inner.sessions.start(session::Started {
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
        &self,
        ns: &str,
        id: &str,
        secret: &str,
        browser: Option<std::net::IpAddr>,
    ) -> Result<pb_auth::TokenResponse, Status> {
        let ch = micro::data::channel(&self.inner.proxy)?;
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
            self.inner.edge_key.vouch(&mut req, ip);
        }
        client.token(req).await.map(|r| r.into_inner()).map_err(|e| micro::status::from_tonic(&e))
    }

    /// New tokens for a session whose access token is about to expire.
    async fn refresh(&self, session: &Session) -> Option<Session> {
        let ch = micro::data::channel(&self.inner.proxy).ok()?;
        let mut client = pb_auth::auth_client::AuthClient::new(ch);
        let mut req =
            tonic::Request::new(pb_auth::TokenRequest { refresh_token: session.refresh.clone(), ..Default::default() });
        req.metadata_mut().insert(micro_core::metadata::NAMESPACE, session.home.parse().ok()?);
        let t = client.token(req).await.ok()?.into_inner();
        self.inner.sessions.renew(&session.id, t.access_token, t.refresh_token, t.expiry)
    }

    fn switch_namespace(&self, page: &Page<'_>, form: &Form) -> Response<Body> {
        let ns = form.get("namespace");
        // Only an admin of the default namespace acts in others (as with the CLI).
        let allowed =
            ns == page.session.home || (page.session.admin && page.session.home == micro_core::namespace::DEFAULT);
        if micro_core::namespace::validate(ns).is_err() || !allowed {
            let markup = html::message(page, "Not your namespace", "Your account can only see its own namespace.");
            return page_response(StatusCode::FORBIDDEN, markup);
        }
        self.inner.sessions.set_namespace(&page.session.id, ns);
        redirect("/services")
    }
}

fn not_found(page: &Page<'_>) -> Response<Body> {
    page_response(StatusCode::NOT_FOUND, html::message(page, "Not found", "There is no such page."))
}

async fn read_form(req: Request<Incoming>) -> Result<Form, Box<Response<Body>>> {
    let too_large =
        || Box::new(page_response(StatusCode::PAYLOAD_TOO_LARGE, html::bare("Too large", "The form is too large.")));
    if req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .is_some_and(|n| n > FORM_LIMIT)
    {
        return Err(too_large());
    }
    let body = http_body_util::Limited::new(req.into_body(), FORM_LIMIT);
    let bytes = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Err(too_large()),
    };
    Ok(Form(parse_form(&String::from_utf8_lossy(&bytes))))
}

/// Serves the dashboard on `listener` until `until` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    web: Web,
    until: impl std::future::Future<Output = ()> + Send + 'static,
) {
    micro::server::serve(
        listener,
        move |req| {
            let web = web.clone();
            async move { web.handle(req).await }
        },
        until,
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_decode() {
        let f = Form(parse_form("a=1&b=hello+world&c=%26%3D%C3%A9&d&a=2"));
        assert_eq!((f.get("a"), f.get("b"), f.get("c"), f.get("d"), f.get("zz")), ("2", "hello world", "&=é", "", ""));
        assert_eq!(encode("a b/c"), "a%20b%2Fc");
    }
}
