//! The Micro dashboard (`MICRO_WEB_ADDRESS`, default `127.0.0.1:8082`): server-rendered
//! pages with a little JavaScript for live views, its assets embedded in the binary.
//!
//! The dashboard is a client of the server like the CLI: every page calls the core
//! services through a node's proxy with the signed-in account's token, so it shows and
//! does exactly what the namespace's rules allow that account, nothing more. It knows
//! nothing of the server's insides: `micro server` hands it the proxy's address, a
//! [`micro::Transport`] that reaches that proxy in-process, a shutdown signal and the
//! proxy's [`micro::edge::EdgeKey`]. The gateway, whose OpenAPI documents the services
//! pages link, it finds as any client would: by the registry's record of the core service
//! `api`.
//!
//! Sessions live in memory (a random id in an `HttpOnly`, `SameSite=Strict` cookie); every
//! form that changes something carries the session's CSRF token, checked on submit.
//!
//! ```no_run
//! # async fn run() -> std::io::Result<()> {
//! let (_stop, stopping) = tokio::sync::watch::channel(false);
//! let key = micro::edge::EdgeKey::random();
//! let web = micro_web::Web::new("127.0.0.1:8081".into(), micro::Transport::new(), stopping, key);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8082").await?;
//! micro_web::serve(listener, web, std::future::pending()).await;
//! # Ok(())
//! # }
//! ```

mod apps;
mod assets;
mod auth;
mod billing;
mod config;
mod db;
mod events;
mod extract;
mod files;
mod gateway;
mod health;
mod html;
mod lists;
mod network;
mod plan;
mod platform;
mod push;
mod runtime;
mod services;
mod session;
mod signin;
mod signup;
mod store;
mod team;
mod usage;
mod users;

use axum::Router;
use axum::body::Body;
use axum::response::Response;
use axum::routing::{MethodRouter, any, get, post};
use extract::{Form, Page, Posted};
use http::{StatusCode, header};
use hyper::body::Incoming;
use micro_core::Status;
use std::sync::Arc;

/// The dashboard. Cheap to clone.
#[derive(Clone)]
pub struct Web {
    inner: Arc<Inner>,
}

struct Inner {
    /// This node's proxy, which every page calls through.
    proxy: String,
    /// How calls reach the proxy (in-process, in `micro server`).
    transport: micro::Transport,
    sessions: session::Sessions,
    /// Turns true when the server stops: live streams end then.
    stopping: tokio::sync::watch::Receiver<bool>,
    /// Vouches for a browser's address on its sign-in, which failed logins are limited by.
    edge_key: micro::edge::EdgeKey,
}

impl Page {
    /// A gRPC channel to the proxy carrying the account's token.
    pub(crate) fn channel(&self) -> Result<micro::Channel, Status> {
        let token: Arc<dyn micro::data::TokenSource> = Arc::new(micro::data::StaticToken(self.session.token.clone()));
        self.web.channel(Some(token))
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
        let inner = &self.web.inner;
        micro::data::Data::remote_on(&inner.transport, &inner.proxy, &self.session.namespace, Some(token))
    }

    /// A client for calling services as the account.
    pub(crate) fn client(&self) -> micro::Client {
        let token = Arc::new(micro::data::StaticToken(self.session.token.clone()));
        micro::Client::via_proxy(self.web.inner.proxy.clone())
            .transport(self.web.inner.transport.clone())
            .namespace(self.session.namespace.clone())
            .auth(Arc::new(micro::auth::Bearer(token)))
    }
}

/// Percent-encodes one path segment or query value.
pub(crate) fn encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// An HTML response.
pub(crate) fn page_response(status: StatusCode, markup: maud::Markup) -> Response {
    let mut r = Response::new(Body::from(markup.into_string()));
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
pub(crate) fn redirect(to: &str) -> Response {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(v) = http::HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

fn not_found(page: &Page) -> Response {
    page_response(StatusCode::NOT_FOUND, html::message(page, "Not found", "There is no such page."))
}

impl Web {
    /// The dashboard of the node whose proxy is at `proxy`, reached on `transport`; its
    /// live streams end when `stopping` turns true; `edge_key` is the proxy's, for the
    /// browsers' addresses.
    pub fn new(
        proxy: String,
        transport: micro::Transport,
        stopping: tokio::sync::watch::Receiver<bool>,
        edge_key: micro::edge::EdgeKey,
    ) -> Web {
        let sessions = session::Sessions::default();
        Web { inner: Arc::new(Inner { proxy, transport, sessions, stopping, edge_key }) }
    }

    /// A gRPC channel to the proxy, carrying the tokens of `source`.
    pub(crate) fn channel(&self, source: Option<Arc<dyn micro::data::TokenSource>>) -> Result<micro::Channel, Status> {
        micro::Channel::on(&self.inner.transport, &self.inner.proxy, source)
    }

    /// `stream`, ending when the server stops (so a live view never holds up a shutdown).
    pub(crate) fn until_stopped<S: futures::Stream>(&self, stream: S) -> impl futures::Stream<Item = S::Item> + use<S> {
        let mut stopping = self.inner.stopping.clone();
        futures::StreamExt::take_until(stream, async move {
            let _ = stopping.wait_for(|s| *s).await;
        })
    }

    /// Every page. A section's module routes below its path (`/store/db/table` reaches
    /// `store::get` with `rest` `[db, table]`); a path or method no route takes gets the
    /// checks a page would make, then a 404 or 405 page ([`extract::fallback`]).
    fn router(self) -> Router {
        macro_rules! section {
            ($module:ident) => {
                get(|page: Page| async move { $module::get(&page).await })
                    .post(|p: Posted| async move { $module::post(&p.page, &p.form).await })
                    .fallback(extract::fallback)
            };
        }
        let sections: [(&str, MethodRouter<Web>); 19] = [
            ("services", section!(services)),
            ("runtime", section!(runtime)),
            ("store", section!(store)),
            ("db", section!(db)),
            ("users", section!(users)),
            ("files", section!(files)),
            ("apps", section!(apps)),
            ("lists", section!(lists)),
            ("push", section!(push)),
            ("config", section!(config)),
            ("events", section!(events)),
            ("auth", section!(auth)),
            ("health", section!(health)),
            ("usage", section!(usage)),
            ("team", section!(team)),
            ("plan", section!(plan)),
            ("billing", section!(billing)),
            ("platform", section!(platform)),
            ("network", section!(network)),
        ];
        let mut router = Router::new()
            .route("/login", get(signin::page).post(signin::login).fallback(extract::fallback))
            .route("/logout", post(signin::logout).fallback(extract::fallback))
            .route("/signup", get(signup::page).post(signup::join).fallback(extract::fallback))
            .route("/signup/verify", post(signup::verify).fallback(extract::fallback))
            .route("/signup/accept", get(signup::accept_page).post(signup::accept).fallback(extract::fallback))
            .route("/namespace", post(signin::switch_namespace).fallback(extract::fallback))
            .route("/", get(|_: Page| async { redirect("/services") }).fallback(extract::fallback));
        for (name, pages) in sections {
            router = router
                .route(&format!("/{name}"), pages.clone())
                .route(&format!("/{name}/"), pages.clone())
                .route(&format!("/{name}/{{*rest}}"), pages);
        }
        // Assets need no session, whatever the method (as the pages' links expect).
        for (path, kind, text) in assets::FILES {
            router = router.route(path, any(move || async move { assets::response(kind, text) }));
        }
        router.fallback(extract::fallback).with_state(self)
    }
}

/// Serves the dashboard on `listener` until `until` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    web: Web,
    until: impl std::future::Future<Output = ()> + Send + 'static,
) {
    serve_tls(listener, web, None, until).await
}

/// Like [`serve`], over TLS with `tls` when given.
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    web: Web,
    tls: Option<std::sync::Arc<micro::tls::ServerConfig>>,
    until: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let router = web.router();
    micro::server::serve_tls(
        listener,
        tls,
        move |req: http::Request<Incoming>| {
            let router = router.clone();
            async move {
                match tower::ServiceExt::oneshot(router, req).await {
                    Ok(r) => r.map(tonic::body::Body::new),
                    Err(never) => match never {},
                }
            }
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
        let f = Form(extract::parse_form("a=1&b=hello+world&c=%26%3D%C3%A9&d&a=2"));
        assert_eq!((f.get("a"), f.get("b"), f.get("c"), f.get("d"), f.get("zz")), ("2", "hello world", "&=é", "", ""));
        assert_eq!(encode("a b/c"), "a%20b%2Fc");
    }

    /// A dashboard whose proxy is nowhere (none of these requests gets as far as a call),
    /// and a session of an account that is not an admin.
    fn signed_in() -> (Router, Web, session::Session) {
        let (_, stopping) = tokio::sync::watch::channel(false);
        let web = Web::new("127.0.0.1:1".into(), micro::Transport::new(), stopping, micro::edge::EdgeKey::random());
        let s = web.inner.sessions.start(session::Started {
            namespace: "shop".into(),
            home: "shop".into(),
            account: "alice".into(),
            admin: false,
            token: "t".into(),
            refresh: "r".into(),
            expiry: session::now() + 3600,
        });
        (web.clone().router(), web, s)
    }

    async fn send(router: &Router, method: &str, uri: &str, cookie: Option<&str>, body: &str) -> Response {
        let mut req = http::Request::builder().method(method).uri(uri);
        if let Some(c) = cookie {
            req = req.header(header::COOKIE, c);
        }
        if !body.is_empty() {
            req = req.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        }
        let req = req.body(Body::from(body.to_string())).unwrap();
        tower::ServiceExt::oneshot(router.clone(), req).await.unwrap()
    }

    fn cookies(r: &Response) -> Vec<String> {
        r.headers().get_all(header::SET_COOKIE).iter().map(|v| v.to_str().unwrap().to_string()).collect()
    }

    #[tokio::test]
    async fn without_a_session() {
        let (router, _, _) = signed_in();
        let r = send(&router, "GET", "/services", None, "").await;
        assert_eq!((r.status(), r.headers()[header::LOCATION].to_str().unwrap()), (StatusCode::SEE_OTHER, "/login"));
        for (method, uri) in [("POST", "/services"), ("PUT", "/store"), ("POST", "/logout"), ("DELETE", "/nope")] {
            assert_eq!(send(&router, method, uri, None, "").await.status(), StatusCode::UNAUTHORIZED, "{method} {uri}");
        }
        let stale = send(&router, "GET", "/auth", Some("micro_session=made-up"), "").await;
        assert_eq!(stale.status(), StatusCode::SEE_OTHER);
        // Assets need no session.
        let css = send(&router, "GET", "/assets/app.css", None, "").await;
        assert_eq!(
            (css.status(), css.headers()[header::CONTENT_TYPE].to_str().unwrap()),
            (StatusCode::OK, "text/css; charset=utf-8")
        );
        // The sign-in page: a pre-session cookie as strict as the session's, and the headers of every page.
        let login = send(&router, "GET", "/login?namespace=shop", None, "").await;
        assert_eq!(login.status(), StatusCode::OK);
        let set = cookies(&login);
        assert_eq!(set.len(), 1);
        assert!(
            set[0].starts_with("micro_login=") && set[0].ends_with("; HttpOnly; SameSite=Strict; Path=/; Max-Age=3600"),
            "{set:?}"
        );
        for h in ["content-security-policy", "x-frame-options", "x-content-type-options", "referrer-policy"] {
            assert!(login.headers().contains_key(h), "{h}");
        }
        assert_eq!(login.headers().get(header::CACHE_CONTROL).unwrap(), "no-store");
        let mut req = http::Request::get("/login").header("x-forwarded-proto", "https").body(Body::empty()).unwrap();
        req.extensions_mut().insert(micro::server::PeerAddr("192.0.2.1:9".parse().unwrap()));
        let secure = tower::ServiceExt::oneshot(router.clone(), req).await.unwrap();
        assert!(cookies(&secure)[0].contains("; Secure"));
        // A sign-in without the pre-session cookie (another site's form) is refused.
        let forged = send(&router, "POST", "/login", None, "_csrf=x&namespace=shop&id=a&secret=b").await;
        assert_eq!(forged.status(), StatusCode::UNAUTHORIZED);
        let other =
            send(&router, "POST", "/login", Some("micro_login=y"), "_csrf=x&namespace=shop&id=a&secret=b").await;
        assert_eq!(other.status(), StatusCode::UNAUTHORIZED);
        // The signup pages need no session; their forms need the pre-session token all the same.
        for uri in ["/signup", "/signup/accept?email=a%40b.example&code=c"] {
            let r = send(&router, "GET", uri, None, "").await;
            assert_eq!(r.status(), StatusCode::OK, "{uri}");
            assert!(cookies(&r)[0].starts_with("micro_login="), "{uri}");
        }
        for uri in ["/signup", "/signup/verify", "/signup/accept"] {
            let forged = send(&router, "POST", uri, None, "_csrf=x&email=a%40b.example&code=1&password=p").await;
            assert_eq!(forged.status(), StatusCode::FORBIDDEN, "{uri}");
            let other = send(&router, "POST", uri, Some("micro_login=y"), "_csrf=x&email=a%40b.example").await;
            assert_eq!(other.status(), StatusCode::FORBIDDEN, "{uri}");
        }
    }

    #[tokio::test]
    async fn with_a_session() {
        let (router, web, s) = signed_in();
        let cookie = format!("micro_session={}", s.id);
        let c = Some(cookie.as_str());
        let csrf = format!("_csrf={}", s.csrf);
        assert_eq!(send(&router, "GET", "/", c, "").await.headers().get(header::LOCATION).unwrap(), "/services");
        assert_eq!(send(&router, "GET", "/nope", c, "").await.status(), StatusCode::NOT_FOUND);
        assert_eq!(send(&router, "GET", "/logout", c, "").await.status(), StatusCode::NOT_FOUND);
        assert_eq!(send(&router, "PUT", "/services", c, "").await.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(send(&router, "GET", "/services/%zz", c, "").await.status(), StatusCode::BAD_REQUEST);
        // A window or a grouping the usage page does not offer is refused in words, before any call.
        for (uri, words) in [
            ("/usage?since=2w", "There is no window &quot;2w&quot;"),
            ("/usage?by=service,%3Cscript%3E", "cannot be grouped by &quot;&lt;script&gt;&quot;"),
        ] {
            let r = send(&router, "GET", uri, c, "").await;
            assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{uri}");
            let page = String::from_utf8(axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap().to_vec()).unwrap();
            assert!(page.contains(words) && !page.contains("<script>"), "{uri}: {page}");
        }
        // Every form needs the session's CSRF token, checked before anything else.
        for uri in ["/services/a/b", "/store/db/t", "/auth/accounts", "/namespace", "/logout", "/nope"] {
            assert_eq!(send(&router, "POST", uri, c, "_csrf=wrong").await.status(), StatusCode::FORBIDDEN, "{uri}");
            assert_eq!(send(&router, "POST", uri, c, "").await.status(), StatusCode::FORBIDDEN, "{uri}");
        }
        assert_eq!(send(&router, "POST", "/nope", c, &csrf).await.status(), StatusCode::NOT_FOUND);
        let big = format!("{csrf}&x={}", "a".repeat(extract::FORM_LIMIT + 1));
        assert_eq!(send(&router, "POST", "/store/db/t", c, &big).await.status(), StatusCode::PAYLOAD_TOO_LARGE);
        // Only an admin of the default namespace switches to another.
        let r = send(&router, "POST", "/namespace", c, &format!("{csrf}&namespace=other")).await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        let r = send(&router, "POST", "/namespace", c, &format!("{csrf}&namespace=shop")).await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        // Signing out ends the session and clears its cookie.
        let out = send(&router, "POST", "/logout", c, &csrf).await;
        assert_eq!(
            (out.status(), out.headers()[header::LOCATION].to_str().unwrap()),
            (StatusCode::SEE_OTHER, "/login")
        );
        assert_eq!(cookies(&out), ["micro_session=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"]);
        assert!(web.inner.sessions.of(&[(header::COOKIE, cookie.parse().unwrap())].into_iter().collect()).is_none());
        assert_eq!(send(&router, "GET", "/services", c, "").await.status(), StatusCode::SEE_OTHER);
    }
}
