//! Mailing lists, a product of the platform: a namespace's lists that any static site
//! embeds (a script tag, or an iframe), double opt-in by email, signed one-click
//! unsubscribe links (RFC 8058) and CSV export.
//!
//! The public side is plain HTTP, which the gateway serves (`/subscribe/v1/{namespace}/…`):
//! a subscription from any site (a form post, no preflight, answered to any origin), the
//! confirmation and unsubscribe pages the mails link to (a page with a button: a mail
//! scanner following a link changes nothing; `List-Unsubscribe-Post` unsubscribes in one
//! request). The lists and their subscribers are the `subscribe` service's (`Lists.*`,
//! `Subscribers.*`), for the namespace's team.

mod campaigns;
mod pages;
mod service;

use bytes::Bytes;
use http::{HeaderValue, Method, Response, StatusCode, header};
use micro::auth::Caller;
use micro::web::{Body, reply};
use micro_core::auth::AccountType;
use micro_core::store::{Query, Store, Table};
use micro_core::{Code, Status};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

pub use campaigns::{Campaign, CampaignReport, CampaignState};
pub use service::{
    AddRequest, CampaignsReply, Empty, ExportReply, ListReply, NameRequest, SendCampaignRequest, SubscribersReply,
    SubscribersRequest, service_with,
};

/// The product's name: its table, its service, and the first segment of its paths.
pub const NAME: &str = "subscribe";

/// Where the product keeps namespace `ns`'s data in its table.
pub fn tenant_prefix(ns: &str) -> String {
    format!("{ns}/")
}

/// How long a confirmation link works.
const CONFIRM_FOR: u64 = 7 * 24 * 3600;

/// The least time between two confirmation mails to one address for one list.
const REMAIL_AFTER: u64 = 600;

/// Subscriptions one client address may ask for in a namespace in [`WINDOW`].
const PER_ADDRESS: u32 = 20;
const WINDOW: u64 = 600;

/// Subscriptions asked for, by namespace and client address: when the window began, and
/// how many.
type Asked = HashMap<(String, String), (u64, u32)>;

/// A mailing list.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct List {
    /// Its name: 1 to 40 lowercase letters, digits, `-` and `_`.
    pub name: String,
    /// What subscribers see (the mails' and pages' title).
    #[serde(default)]
    pub title: String,
    /// Whether a subscription waits for its address to confirm it (default: yes).
    #[serde(default = "yes")]
    pub double_opt_in: bool,
    /// Where a confirmed subscriber is sent (default: a page saying so).
    #[serde(default)]
    pub redirect_url: Option<String>,
    /// When it was made (Unix seconds; set by the service).
    #[serde(default)]
    pub created: u64,
}

fn yes() -> bool {
    true
}

/// Where a subscriber is.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Asked, not confirmed yet.
    Pending,
    /// Confirmed (or subscribed to a list without double opt-in).
    Subscribed,
    /// Unsubscribed.
    Unsubscribed,
}

/// A subscriber of a list.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct Subscriber {
    /// The address (lowercased).
    pub email: String,
    /// The name given, if any.
    #[serde(default)]
    pub name: String,
    /// Where it is.
    pub state: State,
    /// When it first asked (Unix seconds).
    pub created: u64,
    /// When it confirmed.
    #[serde(default)]
    pub confirmed: Option<u64>,
    /// When it unsubscribed.
    #[serde(default)]
    pub unsubscribed: Option<u64>,
    /// When the last confirmation mail went.
    #[serde(default)]
    pub mailed: u64,
}

fn bad(detail: impl Into<String>) -> Status {
    Status::new(Code::InvalidArgument, NAME, detail)
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn valid_list(name: &str) -> bool {
    (1..=40).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// An email address as kept: trimmed, lowercased, one `@`, no spaces or controls.
fn email(raw: &str) -> Result<String, Status> {
    let e = raw.trim().to_ascii_lowercase();
    let ok = e.len() <= 254
        && e.split_once('@')
            .is_some_and(|(l, d)| !l.is_empty() && d.contains('.') && !d.starts_with('.') && !d.ends_with('.'))
        && e.matches('@').count() == 1
        && !e.chars().any(|c| c.is_whitespace() || c.is_control() || "<>,;\"()[]\\".contains(c));
    if ok { Ok(e) } else { Err(bad(format!("{raw:?} is not an email address"))) }
}

fn digest(s: &str) -> String {
    <sha2::Sha256 as sha2::Digest>::digest(s.as_bytes()).iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// Who calls, as far as lists go.
pub(crate) struct Who<'a> {
    pub(crate) caller: &'a Caller,
    pub(crate) ns: &'a str,
}

impl Who<'_> {
    /// The namespace's team accounts that manage lists (and see the addresses).
    pub(crate) fn manager(&self) -> Result<(), Status> {
        match &self.caller.account {
            Some(a) if a.kind != AccountType::App && a.may_use_data_of(self.ns) => Ok(()),
            None => Err(Status::new(Code::Unauthenticated, NAME, "sign in to manage the namespace's lists")),
            Some(_) => Err(Status::new(
                Code::PermissionDenied,
                NAME,
                format!("the lists of namespace {} are for its admins, developers and data accounts", self.ns),
            )),
        }
    }
}

/// The subscribe product.
#[derive(Clone)]
pub struct Subscribe {
    store: Arc<dyn Store>,
    table: Table,
    /// A client of the email service, as the product (set when its service starts).
    client: Arc<OnceLock<micro::Client>>,
    /// The API's public address, which the mails link to.
    api_url: String,
    /// Subscriptions asked for per namespace and client address, in the current window.
    asked: Arc<Mutex<Asked>>,
}

impl Subscribe {
    /// Lists kept in `store` (the product's table of the `micro` namespace); mails link to
    /// `api_url` (the gateway's public address).
    pub fn new(store: Arc<dyn Store>, api_url: String) -> Subscribe {
        Subscribe {
            store,
            table: Table::new(micro_core::namespace::DEFAULT, NAME),
            client: Arc::new(OnceLock::new()),
            api_url: api_url.trim_end_matches('/').to_string(),
            asked: Default::default(),
        }
    }

    pub(crate) async fn read_json<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>, Status> {
        micro_core::store::read_json(self.store.as_ref(), &self.table, key).await
    }

    pub(crate) async fn write_json<T: Serialize>(&self, key: String, v: &T) -> Result<(), Status> {
        micro_core::store::write_json(self.store.as_ref(), &self.table, &key, v, None).await
    }

    pub(crate) async fn list(&self, ns: &str, name: &str) -> Result<Option<List>, Status> {
        if !valid_list(name) {
            return Ok(None);
        }
        self.read_json(&format!("{ns}/list/{name}")).await
    }

    pub(crate) async fn lists(&self, ns: &str) -> Result<Vec<List>, Status> {
        let keys =
            self.store.list(&self.table, &format!("{ns}/list/"), &Query { prefix: true, ..Default::default() }).await?;
        let mut out = Vec::new();
        for k in keys {
            if let Some(l) = self.read_json::<List>(&k).await? {
                out.push(l);
            }
        }
        Ok(out)
    }

    pub(crate) async fn save_list(&self, who: &Who<'_>, mut list: List) -> Result<List, Status> {
        who.manager()?;
        if !valid_list(&list.name) {
            return Err(bad(format!("{:?} is not a list name: 1 to 40 lowercase letters, digits, - and _", list.name)));
        }
        if list.title.chars().any(char::is_control) || list.title.len() > 200 {
            return Err(bad("a title is one line of at most 200 bytes"));
        }
        if let Some(u) = &list.redirect_url
            && (!(u.starts_with("https://") || u.starts_with("http://"))
                || u.len() > 2000
                || u.contains(char::is_whitespace))
        {
            return Err(bad("redirect_url is an http(s):// URL"));
        }
        list.created = match self.list(who.ns, &list.name).await? {
            Some(old) => old.created,
            None => now(),
        };
        self.write_json(format!("{}/list/{}", who.ns, list.name), &list).await?;
        Ok(list)
    }

    pub(crate) async fn delete_list(&self, who: &Who<'_>, name: &str) -> Result<(), Status> {
        who.manager()?;
        if self.list(who.ns, name).await?.is_none() {
            return Err(Status::new(Code::NotFound, NAME, format!("no list {name}")));
        }
        for k in self
            .store
            .list(&self.table, &format!("{}/sub/{name}/", who.ns), &Query { prefix: true, ..Default::default() })
            .await?
        {
            let _ = self.store.delete(&self.table, &k).await;
        }
        self.store.delete(&self.table, &format!("{}/list/{name}", who.ns)).await
    }

    pub(crate) async fn subscribers(&self, who: &Who<'_>, list: &str) -> Result<Vec<Subscriber>, Status> {
        who.manager()?;
        if self.list(who.ns, list).await?.is_none() {
            return Err(Status::new(Code::NotFound, NAME, format!("no list {list}")));
        }
        let keys = self
            .store
            .list(&self.table, &format!("{}/sub/{list}/", who.ns), &Query { prefix: true, ..Default::default() })
            .await?;
        let mut out = Vec::new();
        for k in keys {
            if let Some(s) = self.read_json::<Subscriber>(&k).await? {
                out.push(s);
            }
        }
        out.sort_by(|a, b| a.created.cmp(&b.created).then_with(|| a.email.cmp(&b.email)));
        Ok(out)
    }

    /// The subscriber kept under `key`, or a new pending one of `address` (made at `t`).
    async fn subscriber(&self, key: &str, address: &str, t: u64) -> Result<Subscriber, Status> {
        Ok(self.read_json::<Subscriber>(key).await?.unwrap_or(Subscriber {
            email: address.to_string(),
            name: String::new(),
            state: State::Pending,
            created: t,
            confirmed: None,
            unsubscribed: None,
            mailed: 0,
        }))
    }

    /// Adds `address` to `list` as subscribed, without mail (the team's managers importing
    /// people who agreed elsewhere); an address that unsubscribed stays so.
    pub(crate) async fn add_subscriber(
        &self,
        who: &Who<'_>,
        list: &str,
        address: &str,
        name: &str,
    ) -> Result<Subscriber, Status> {
        who.manager()?;
        if self.list(who.ns, list).await?.is_none() {
            return Err(Status::new(Code::NotFound, NAME, format!("no list {list}")));
        }
        let address = email(address)?;
        let name = name.trim();
        if name.len() > 100 || name.chars().any(char::is_control) {
            return Err(bad("a name is one line of at most 100 bytes"));
        }
        let key = format!("{}/sub/{list}/{}", who.ns, digest(&address));
        let t = now();
        let mut s = self.subscriber(&key, &address, t).await?;
        if s.state == State::Unsubscribed {
            return Err(Status::new(
                Code::FailedPrecondition,
                NAME,
                format!("{address} unsubscribed from {list}: only they subscribe again"),
            ));
        }
        if !name.is_empty() {
            s.name = name.to_string();
        }
        if s.state != State::Subscribed {
            s.state = State::Subscribed;
            s.confirmed = Some(t);
        }
        self.write_json(key, &s).await?;
        Ok(s)
    }

    /// A list's subscribers as CSV (`email,name,state,created,confirmed,unsubscribed`;
    /// a cell that a spreadsheet would run as a formula is quoted after a `'`).
    pub(crate) async fn export(&self, who: &Who<'_>, list: &str) -> Result<String, Status> {
        let subs = self.subscribers(who, list).await?;
        let cell = |s: &str| {
            let s = if s.starts_with(['=', '+', '-', '@', '\t', '\r']) { format!("'{s}") } else { s.to_string() };
            if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s }
        };
        let time = |t: Option<u64>| t.map(|t| micro_core::time::utc(t * 1000)).unwrap_or_default();
        let mut out = String::from("email,name,state,created,confirmed,unsubscribed\n");
        for s in subs {
            let state = match s.state {
                State::Pending => "pending",
                State::Subscribed => "subscribed",
                State::Unsubscribed => "unsubscribed",
            };
            out.push_str(&format!(
                "{},{},{state},{},{},{}\n",
                cell(&s.email),
                cell(&s.name),
                time(Some(s.created)),
                time(s.confirmed),
                time(s.unsubscribed)
            ));
        }
        Ok(out)
    }

    /// The namespace's key that signs links (made on first use).
    async fn key(&self, ns: &str) -> Result<Vec<u8>, Status> {
        micro_core::store::secret(self.store.as_ref(), &self.table, &format!("{ns}/key")).await
    }

    fn sign(key: &[u8], what: &str) -> String {
        use base64::Engine as _;
        use hmac::Mac as _;
        let mut mac = <hmac::Hmac<sha2::Sha256> as hmac::Mac>::new_from_slice(key).expect("HMAC takes any key");
        mac.update(what.as_bytes());
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    }

    /// The link that confirms `address` on `list`, for a week.
    async fn confirm_link(&self, ns: &str, list: &str, address: &str) -> Result<String, Status> {
        let exp = now() + CONFIRM_FOR;
        let sig = Self::sign(&self.key(ns).await?, &format!("confirm\n{list}\n{address}\n{exp}"));
        Ok(format!(
            "{}/subscribe/v1/{ns}/confirm?{}",
            self.api_url,
            query(&[("list", list), ("email", address), ("exp", &exp.to_string()), ("sig", &sig)])
        ))
    }

    /// The link that unsubscribes `address` from `list` (it does not expire).
    async fn unsubscribe_link(&self, ns: &str, list: &str, address: &str) -> Result<String, Status> {
        let sig = Self::sign(&self.key(ns).await?, &format!("unsubscribe\n{list}\n{address}"));
        Ok(format!(
            "{}/subscribe/v1/{ns}/unsubscribe?{}",
            self.api_url,
            query(&[("list", list), ("email", address), ("sig", &sig)])
        ))
    }

    /// Checks a link's signature (and expiry): the list and the address it names.
    async fn verify(&self, ns: &str, what: &str, q: Option<&str>) -> Result<(List, String), Status> {
        if micro::web::repeated_param(q).is_some() {
            return Err(bad("the link gives a parameter twice"));
        }
        let p = |n: &str| micro::web::query_param(q, n).unwrap_or_default();
        let (list, address, sig) = (p("list"), p("email"), p("sig"));
        let signed = match what {
            "confirm" => {
                let exp: u64 = p("exp").parse().map_err(|_| bad("the link is incomplete: copy all of it"))?;
                if exp < now() {
                    return Err(bad("the link expired: subscribe again for a new one"));
                }
                format!("confirm\n{list}\n{address}\n{exp}")
            }
            _ => format!("unsubscribe\n{list}\n{address}"),
        };
        let want = Self::sign(&self.key(ns).await?, &signed);
        if sig.is_empty() || !bool::from(subtle::ConstantTimeEq::ct_eq(want.as_bytes(), sig.as_bytes())) {
            return Err(Status::new(
                Code::PermissionDenied,
                NAME,
                "the link's signature is wrong: copy all of it from the mail",
            ));
        }
        let list = self.list(ns, &list).await?.ok_or_else(|| Status::new(Code::NotFound, NAME, "the list is gone"))?;
        Ok((list, address))
    }

    fn mail(&self, ns: &str, body: serde_json::Value) {
        let Some(client) = self.client.get().cloned() else {
            tracing::warn!(service = NAME, "no client yet: a mail is not sent");
            return;
        };
        let client = client.namespace(ns);
        tokio::spawn(async move {
            if let Err(e) = client.call_json("email", "Email.Send", &body).await {
                tracing::warn!(service = NAME, error = %e, "mailing a subscriber failed");
            }
        });
    }

    /// Counts a subscription asked for from `address`; refused past the most.
    fn asking(&self, ns: &str, address: &str) -> Result<(), Status> {
        let t = now();
        let mut asked = self.asked.lock().unwrap_or_else(|e| e.into_inner());
        if asked.len() > 100_000 {
            asked.retain(|_, (at, _)| t < *at + WINDOW);
        }
        let e = asked.entry((ns.to_string(), address.to_string())).or_insert((t, 0));
        if t >= e.0 + WINDOW {
            *e = (t, 0);
        }
        e.1 += 1;
        if e.1 > PER_ADDRESS {
            return Err(Status::new(
                Code::ResourceExhausted,
                NAME,
                "too many subscriptions from your address: try again in 10 minutes",
            )
            .with_http_status(429));
        }
        Ok(())
    }

    /// Subscribes `address` to `list` of `ns`: mails a confirmation (double opt-in), or
    /// subscribes at once. The same answer whatever the address's state.
    async fn subscribe(&self, ns: &str, list: &List, address: &str, name: &str) -> Result<(), Status> {
        let key = format!("{ns}/sub/{}/{}", list.name, digest(address));
        let t = now();
        let mut s = self.subscriber(&key, address, t).await?;
        if s.state == State::Subscribed {
            return Ok(());
        }
        if !name.is_empty() && s.state != State::Subscribed {
            s.name = name.to_string();
        }
        let title = if list.title.is_empty() { list.name.clone() } else { list.title.clone() };
        if !list.double_opt_in {
            s.state = State::Subscribed;
            s.confirmed = Some(t);
            s.unsubscribed = None;
            self.write_json(key, &s).await?;
            self.welcome(ns, list, address, &title).await?;
            return Ok(());
        }
        // A pending (or unsubscribed) address asks again: a new confirmation, at most one
        // each ten minutes (a form is no way to flood somebody's mailbox).
        s.state = if s.state == State::Unsubscribed { State::Pending } else { s.state };
        if t < s.mailed + REMAIL_AFTER {
            return Ok(());
        }
        s.mailed = t;
        self.write_json(key, &s).await?;
        let link = self.confirm_link(ns, &list.name, address).await?;
        let text = format!(
            "Someone (perhaps you) asked to subscribe {address} to {title}.\n\nConfirm it: open {link}\n\nIf it was not you, ignore this mail: nothing happens without the confirmation.\n"
        );
        self.mail(ns, json!({"to": [address], "subject": format!("Confirm your subscription to {title}"), "text": text, "sensitive": true}));
        Ok(())
    }

    /// Mails a new subscriber a welcome with its one-click unsubscribe link.
    async fn welcome(&self, ns: &str, list: &List, address: &str, title: &str) -> Result<(), Status> {
        let unsubscribe = self.unsubscribe_link(ns, &list.name, address).await?;
        let text = format!("You are subscribed to {title}.\n\nTo unsubscribe, open {unsubscribe}\n");
        self.mail(
            ns,
            json!({"to": [address], "subject": format!("You are subscribed to {title}"), "text": text, "unsubscribe": unsubscribe}),
        );
        Ok(())
    }

    async fn confirm(&self, ns: &str, list: &List, address: &str) -> Result<(), Status> {
        let key = format!("{ns}/sub/{}/{}", list.name, digest(address));
        let Some(mut s) = self.read_json::<Subscriber>(&key).await? else {
            return Err(Status::new(Code::NotFound, NAME, "no subscription to confirm: subscribe again"));
        };
        if s.state == State::Subscribed {
            return Ok(());
        }
        s.state = State::Subscribed;
        s.confirmed = Some(now());
        s.unsubscribed = None;
        self.write_json(key, &s).await?;
        let title = if list.title.is_empty() { list.name.clone() } else { list.title.clone() };
        self.welcome(ns, list, address, &title).await
    }

    async fn unsubscribe(&self, ns: &str, list: &List, address: &str) -> Result<(), Status> {
        let key = format!("{ns}/sub/{}/{}", list.name, digest(address));
        if let Some(mut s) = self.read_json::<Subscriber>(&key).await?
            && s.state != State::Unsubscribed
        {
            s.state = State::Unsubscribed;
            s.unsubscribed = Some(now());
            self.write_json(key, &s).await?;
        }
        Ok(())
    }

    /// Serves a request under `/subscribe/v1/` (`caller` as the gateway identified them).
    pub async fn serve<B>(&self, req: http::Request<B>, caller: &Caller) -> Response<Body>
    where
        B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: std::fmt::Display + Send + Sync + 'static,
    {
        let html =
            req.headers().get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("text/html"));
        let public = req.uri().path().split('/').nth(3).is_some_and(|s| s != "lists");
        let mut res = match self.route(req, caller).await {
            Ok(r) => r,
            Err(e) if html => pages::error_page(&e),
            Err(e) => micro::json_error(&e),
        };
        if public {
            // Any site's page may subscribe and read the answer (no cookie goes along).
            res.headers_mut().insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
        }
        res
    }

    async fn route<B>(&self, req: http::Request<B>, caller: &Caller) -> Result<Response<Body>, Status>
    where
        B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: std::fmt::Display + Send + Sync + 'static,
    {
        let path = req.uri().path().to_string();
        let rest = path.strip_prefix("/subscribe/v1/").unwrap_or("");
        let segs: Vec<&str> = rest.split('/').collect();
        let method = req.method().clone();
        let query = req.uri().query().map(str::to_string);
        let q = query.as_deref();
        match (&method, segs.as_slice()) {
            // The team's export (the caller's namespace).
            (&Method::GET, ["lists", list, "subscribers.csv"]) => {
                let who = Who { caller, ns: &caller.namespace };
                let csv = self.export(&who, list).await?;
                let mut res = Response::new(Body::new(http_body_util::Full::new(Bytes::from(csv))));
                res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/csv; charset=utf-8"));
                if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{list}.csv\"")) {
                    res.headers_mut().insert(header::CONTENT_DISPOSITION, v);
                }
                res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                Ok(res)
            }
            (_, [ns, ..]) if micro_core::namespace::validate(ns).is_err() => {
                Err(Status::new(Code::NotFound, NAME, format!("no route {method} {path}")))
            }
            (&Method::POST, [ns, "lists", list, "subscribe"]) => {
                let (ns, list) = (ns.to_string(), list.to_string());
                let form = req
                    .headers()
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|c| c.starts_with("application/x-www-form-urlencoded"));
                let html = req
                    .headers()
                    .get(header::ACCEPT)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|a| a.contains("text/html"));
                let client = req
                    .headers()
                    .get(micro::server::CLIENT_ADDRESS)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                let body = micro::web::collect_limited(req.into_body(), 8192, NAME).await?;
                let fields: HashMap<String, String> = if form {
                    micro::form::pairs(&String::from_utf8_lossy(&body))?.into_iter().collect()
                } else {
                    let v: serde_json::Value =
                        serde_json::from_slice(&body).map_err(|e| bad(format!("the body is a form or JSON: {e}")))?;
                    v.as_object()
                        .map(|o| {
                            o.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect()
                        })
                        .unwrap_or_default()
                };
                if let Some(k) = fields.keys().find(|k| !["email", "name"].contains(&k.as_str())) {
                    return Err(bad(format!("unknown field {k:?}: email and name are")));
                }
                let address = email(fields.get("email").map(String::as_str).unwrap_or(""))?;
                let name = fields.get("name").map(|n| n.trim().to_string()).unwrap_or_default();
                if name.len() > 100 || name.chars().any(char::is_control) {
                    return Err(bad("a name is one line of at most 100 bytes"));
                }
                let l = self
                    .list(&ns, &list)
                    .await?
                    .ok_or_else(|| Status::new(Code::NotFound, NAME, format!("no list {list}")))?;
                self.asking(&ns, &client)?;
                self.subscribe(&ns, &l, &address, &name).await?;
                let message = if l.double_opt_in {
                    "Check your email: a link to confirm the subscription is on its way."
                } else {
                    "You are subscribed."
                };
                if html {
                    return Ok(pages::page(StatusCode::OK, &l, message, None));
                }
                Ok(reply(StatusCode::OK, &json!({"message": message})))
            }
            (&Method::GET, [ns, "lists", list, "form"]) => {
                let l = self
                    .list(ns, list)
                    .await?
                    .ok_or_else(|| Status::new(Code::NotFound, NAME, format!("no list {list}")))?;
                Ok(pages::form(ns, &l))
            }
            (&Method::GET, [ns, "lists", list, "form.js"]) => {
                let l = self
                    .list(ns, list)
                    .await?
                    .ok_or_else(|| Status::new(Code::NotFound, NAME, format!("no list {list}")))?;
                Ok(pages::script(ns, &l))
            }
            // A tracked campaign's open (an image) and click (a redirect to the signed link).
            (&Method::GET, [ns, what @ ("o" | "c"), campaign]) => {
                let to = self.track(ns, what, campaign, q).await?;
                let mut res = match to {
                    Some(url) => {
                        let mut r = micro::web::empty(StatusCode::FOUND);
                        let v = HeaderValue::from_str(&url).map_err(|_| bad("the link is not an URL"))?;
                        r.headers_mut().insert(header::LOCATION, v);
                        r
                    }
                    None => {
                        let mut r = Response::new(Body::new(http_body_util::Full::new(Bytes::from_static(PIXEL))));
                        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("image/gif"));
                        r
                    }
                };
                res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                res.headers_mut().insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
                Ok(res)
            }
            (&Method::GET, [ns, what @ ("confirm" | "unsubscribe")]) => {
                let (l, address) = self.verify(ns, what, q).await?;
                Ok(pages::ask(&l, what, &address, &path, q.unwrap_or("")))
            }
            (&Method::POST, [ns, what @ ("confirm" | "unsubscribe")]) => {
                let (l, address) = self.verify(ns, what, q).await?;
                let body = micro::web::collect_limited(req.into_body(), 1024, NAME).await?;
                let one_click = String::from_utf8_lossy(&body).contains("List-Unsubscribe=One-Click");
                if *what == "confirm" {
                    self.confirm(ns, &l, &address).await?;
                    if let Some(to) = &l.redirect_url {
                        let mut res = micro::web::empty(StatusCode::SEE_OTHER);
                        if let Ok(v) = HeaderValue::from_str(to) {
                            res.headers_mut().insert(header::LOCATION, v);
                        }
                        return Ok(res);
                    }
                    return Ok(pages::page(StatusCode::OK, &l, "You are subscribed. Thank you!", None));
                }
                self.unsubscribe(ns, &l, &address).await?;
                if one_click {
                    return Ok(reply(StatusCode::OK, &json!({"message": "unsubscribed"})));
                }
                Ok(pages::page(StatusCode::OK, &l, &format!("{address} is unsubscribed. Sorry to see you go."), None))
            }
            _ => Err(Status::new(Code::NotFound, NAME, format!("no route {method} {path}"))),
        }
    }
}

/// A transparent 1×1 GIF.
const PIXEL: &[u8] = &[
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff,
    0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x02,
    0x02, 0x44, 0x01, 0x00, 0x3b,
];

/// A query string of `pairs`, percent-encoded.
fn query(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC)))
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_names() {
        assert_eq!(email(" Zoe@Example.COM ").unwrap(), "zoe@example.com");
        for bad in ["", "zoe", "zoe@", "@x.y", "a@b", "a b@c.d", "a@b.c\r\nBcc: x@y.z", "a@@b.c", "<a@b.c>"] {
            assert!(email(bad).is_err(), "{bad:?}");
        }
        assert!(valid_list("news") && valid_list("weekly_digest-2"));
        assert!(!valid_list("News") && !valid_list("") && !valid_list("a/b") && !valid_list(&"x".repeat(41)));
    }
}
