//! Push notifications, a product of the platform: Web Push to the browsers of a
//! namespace's app users, and a realtime channel to those online.
//!
//! - **Keys.** Each namespace has its own VAPID key pair (RFC 8292), made on first use;
//!   the public key is what an app hands `pushManager.subscribe` as
//!   `applicationServerKey` (`GET /push/v1/key`).
//! - **Subscriptions.** A signed-in user hands over the browser's `PushSubscription`
//!   (`POST /push/v1/subscriptions`, with the topics it follows); it is kept under the
//!   user, at most [`MAX_PER_USER`] per user. A browser's endpoint belongs to one user: a
//!   new sign-in on the same browser moves it.
//! - **Sending.** The namespace's team sends a notification to a user, a topic or
//!   everyone (`POST /push/v1/messages`, `Push.Send`): each subscription gets it encrypted
//!   for its browser (RFC 8291 `aes128gcm`), signed with the namespace's VAPID key, through
//!   the browser's push service (RFC 8030). A push service that answers 404 or 410 ends
//!   the subscription; one failing [`MAX_FAILURES`] times in a row is dropped too. The
//!   report (accepted, expired, failed) is kept with the message.
//! - **Realtime.** Users online get the same notification at once over server-sent
//!   events (`GET /push/v1/events`), on every node of a cluster (through the broker).
//! - **Receipts.** An app reports what became of a notification (`delivered`, `clicked`)
//!   with `POST /push/v1/messages/{id}/receipts`; each user counts once per event.
//!
//! Push services live on the internet: the server reaches only public HTTPS endpoints
//! (see [`micro::outbound`]); `MICRO_PUSH_PRIVATE=1` lets it reach private ones and plain
//! HTTP (a push service on the operator's network, a test).

mod http_api;
mod service;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use bytes::Bytes;
use futures::StreamExt;
use micro::auth::Caller;
use micro_core::auth::AccountType;
use micro_core::broker::Broker;
use micro_core::store::{Query, Store, Table};
use micro_core::{Code, Status};
use p256::elliptic_curve::sec1::ToEncodedPoint as _;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use http_api::StillValid;
pub use service::{
    Empty, KeyReply, MessagesReply, MessagesRequest, SubscriptionsReply, SubscriptionsRequest, UnsubscribeRequest,
    service_with,
};

/// The product's name: its table, its service, and the first segment of its paths.
pub const NAME: &str = "push";

/// Where the product keeps namespace `ns`'s data in its table.
pub fn tenant_prefix(ns: &str) -> String {
    format!("{ns}/")
}

/// Subscriptions a user may hold (a new one beyond replaces the oldest).
pub const MAX_PER_USER: usize = 10;
/// Failed deliveries in a row after which a subscription is dropped.
pub const MAX_FAILURES: u32 = 10;
/// The most a notification's JSON may be: what one `aes128gcm` record of 4096 bytes
/// holds after its header (86), tag (16) and delimiter (1).
pub const MAX_PAYLOAD: usize = 3993;
/// What a user's receipt token adds to a notification's JSON (`,"receipt":"<24>"`).
const RECEIPT_ROOM: usize = 38;
/// The longest a push service is asked to keep an undelivered notification (28 days).
pub const MAX_TTL: u64 = 28 * 86_400;
/// Realtime connections one user may hold on a node.
const MAX_STREAMS_PER_USER: u32 = 8;
/// Realtime connections a node holds in all.
const MAX_STREAMS: u32 = 20_000;
/// Deliveries made at once.
const PARALLEL: usize = 16;
/// How long a push service has to answer.
const TIMEOUT: Duration = Duration::from_secs(10);
/// How long one send may take in all: what is not tried by then fails.
const SEND_DEADLINE: Duration = Duration::from_secs(120);
/// How long a message's report is kept.
const KEEP: Duration = Duration::from_secs(30 * 86_400);

fn bad(detail: impl Into<String>) -> Status {
    Status::new(Code::InvalidArgument, NAME, detail)
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn digest(s: &str) -> String {
    <sha2::Sha256 as sha2::Digest>::digest(s.as_bytes()).iter().take(12).map(|b| format!("{b:02x}")).collect()
}

/// A browser's subscription, as the product keeps it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct Subscription {
    /// Its id (from its endpoint).
    pub id: String,
    /// The user it belongs to (an app user's id, or a team account's).
    pub user: String,
    /// Whether `user` is an app user (else a team account).
    #[serde(default)]
    pub app_user: bool,
    /// The push service's URL for this browser.
    pub endpoint: String,
    /// The browser's P-256 public key (base64url, 65 bytes).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub p256dh: String,
    /// The browser's authentication secret (base64url, 16 bytes).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub auth: String,
    /// The topics it follows.
    #[serde(default)]
    pub topics: Vec<String>,
    /// When it was made (Unix seconds).
    pub created: u64,
    /// When a push service last accepted a notification for it.
    #[serde(default)]
    pub last_ok: Option<u64>,
    /// Failed deliveries in a row.
    #[serde(default)]
    pub failures: u32,
}

impl Subscription {
    /// As shown to callers: the push service's origin, not its whole URL (the URL lets
    /// anyone knowing the keys push to the browser), and no keys.
    fn shown(mut self) -> Subscription {
        self.endpoint = url_origin(&self.endpoint);
        self.p256dh.clear();
        self.auth.clear();
        self
    }
}

fn url_origin(u: &str) -> String {
    match u.split_once("://") {
        Some((scheme, rest)) => format!("{scheme}://{}", rest.split('/').next().unwrap_or_default()),
        None => String::new(),
    }
}

/// Who a notification is for.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SendRequest {
    /// An app user's id: their subscriptions and connections get it.
    #[serde(default)]
    pub user: Option<String>,
    /// A topic: the subscriptions and connections following it get it.
    #[serde(default)]
    pub topic: Option<String>,
    /// Everyone of the namespace (must be said: neither `user` nor `topic`).
    #[serde(default)]
    pub all: bool,
    /// The title (1 to 200 bytes, one line).
    pub title: String,
    /// The text.
    #[serde(default)]
    pub body: String,
    /// Where a click leads (an http(s) URL or a path of the app).
    #[serde(default)]
    pub url: String,
    /// Anything else for the app (JSON).
    #[serde(default)]
    pub data: Option<Value>,
    /// How long a push service keeps it for a browser that is offline, in seconds
    /// (default a day; at most 28 days; 0: now or never).
    #[serde(default)]
    pub ttl: Option<u64>,
    /// `very-low`, `low`, `normal` (default) or `high` (RFC 8030 `Urgency`).
    #[serde(default)]
    pub urgency: Option<String>,
    /// A name under which a newer notification replaces an undelivered older one (RFC
    /// 8030 `Topic`: 1 to 32 letters, digits, `-` and `_`).
    #[serde(default)]
    pub replace: Option<String>,
}

/// A notification sent, with what became of it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct Report {
    /// The message's id.
    pub id: String,
    /// When it was sent (Unix seconds).
    pub created: u64,
    /// Who sent it.
    pub by: String,
    /// Its target: `user:<id>`, `topic:<name>` or `all`.
    pub target: String,
    /// Its title.
    pub title: String,
    /// Subscriptions it went to.
    pub subscriptions: u32,
    /// Those whose push service accepted it.
    pub accepted: u32,
    /// Those whose push service said the subscription is gone (removed).
    pub expired: u32,
    /// Those whose push service failed or refused.
    pub failed: u32,
    /// The first few failures, in words.
    #[serde(default)]
    pub errors: Vec<String>,
    /// Receipts the app reported, by event (`delivered`, `clicked`): users counted once.
    #[serde(default)]
    pub receipts: std::collections::BTreeMap<String, u32>,
}

/// The events a receipt may report.
const EVENTS: [&str; 2] = ["delivered", "clicked"];

/// Who calls.
pub(crate) struct Who<'a> {
    pub(crate) caller: &'a Caller,
    pub(crate) ns: &'a str,
}

impl Who<'_> {
    /// The namespace's team accounts that send (admins, developers, data accounts).
    pub(crate) fn sender(&self) -> Result<String, Status> {
        match &self.caller.account {
            Some(a) if a.kind != AccountType::App && a.may_use_data_of(self.ns) => Ok(a.id.clone()),
            None => Err(Status::new(Code::Unauthenticated, NAME, "sign in to send notifications")),
            Some(_) => Err(Status::new(
                Code::PermissionDenied,
                NAME,
                format!("notifications of namespace {} are sent by its admins, developers and data accounts", self.ns),
            )),
        }
    }

    /// The signed-in account of the namespace (an app user, or one of its team):
    /// `(id, app user?)`.
    pub(crate) fn member(&self) -> Result<(String, bool), Status> {
        match &self.caller.account {
            Some(a) if a.namespace == self.ns => Ok((a.id.clone(), a.kind == AccountType::App)),
            None => Err(Status::new(Code::Unauthenticated, NAME, "sign in to receive notifications")),
            Some(_) => Err(Status::new(
                Code::PermissionDenied,
                NAME,
                format!("only accounts of namespace {} receive its notifications", self.ns),
            )),
        }
    }
}

/// A user's key in the table: app users and team accounts apart.
fn user_key(user: &str, app_user: bool) -> String {
    digest(&format!("{}\n{user}", if app_user { "app" } else { "team" }))
}

fn valid_topic(t: &str) -> bool {
    (1..=64).contains(&t.len())
        && t.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
}

/// The namespace's VAPID keys.
#[derive(Clone)]
pub(crate) struct Vapid {
    /// The signing key, as jsonwebtoken takes it.
    key: Arc<jsonwebtoken::EncodingKey>,
    /// The public key, base64url (65 bytes uncompressed).
    pub(crate) public: String,
}

/// Who a realtime notification is for: each is a broker topic of its own (in the
/// `micro` namespace, which tenants cannot publish to), so a connection hears only what
/// is its own.
pub(crate) enum Live {
    /// Everyone of the namespace.
    All,
    /// A user (by key).
    User(String),
    /// A topic's followers.
    Topic(String),
}

impl Live {
    /// Its broker topic in namespace `ns`.
    pub(crate) fn topic(&self, ns: &str) -> String {
        match self {
            Live::All => format!("push.{ns}.all"),
            Live::User(k) => format!("push.{ns}.u.{k}"),
            Live::Topic(t) => format!("push.{ns}.t.{t}"),
        }
    }
}

/// The push product.
#[derive(Clone)]
pub struct Push {
    store: Arc<dyn Store>,
    table: Table,
    broker: Arc<dyn Broker>,
    outbound: micro::outbound::Outbound,
    /// The VAPID `sub` claim: how a push service reaches the operator.
    contact: Option<String>,
    /// Realtime connections on this node, per (namespace, user key).
    streams: Arc<Mutex<HashMap<(String, String), u32>>>,
}

impl Push {
    /// Subscriptions and reports kept in `store` (the product's table of the `micro`
    /// namespace); realtime notifications through `broker` (shared by the nodes);
    /// push services reached at public addresses only unless `private`; `contact` (a
    /// `mailto:` or `https:` URL) tells them who sends.
    pub fn new(store: Arc<dyn Store>, broker: Arc<dyn Broker>, private: bool, contact: Option<String>) -> Push {
        Push {
            store,
            table: Table::new(micro_core::namespace::DEFAULT, NAME),
            broker,
            outbound: micro::outbound::Outbound::new(private, TIMEOUT),
            contact,
            streams: Default::default(),
        }
    }

    async fn read_json<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>, Status> {
        micro_core::store::read_json(self.store.as_ref(), &self.table, key).await
    }

    async fn write_json<T: Serialize>(&self, key: &str, v: &T, ttl: Option<Duration>) -> Result<(), Status> {
        micro_core::store::write_json(self.store.as_ref(), &self.table, key, v, ttl).await
    }

    async fn keys(&self, prefix: &str) -> Result<Vec<String>, Status> {
        self.store.list(&self.table, prefix, &Query { prefix: true, ..Default::default() }).await
    }

    /// Namespace `ns`'s VAPID keys (made on first use from its secret; derived again each
    /// time, so a namespace deleted and made again gets keys of its own on every node).
    pub(crate) async fn vapid(&self, ns: &str) -> Result<Vapid, Status> {
        let secret = micro_core::store::secret(self.store.as_ref(), &self.table, &format!("{ns}/vapid")).await?;
        // A scalar from the secret: hashed with a counter until it is one (almost always
        // the first time), so every node derives the same key.
        let key = (0u8..=255)
            .find_map(|i| {
                let mut h = <sha2::Sha256 as sha2::Digest>::new();
                sha2::Digest::update(&mut h, b"micro push vapid\n");
                sha2::Digest::update(&mut h, &secret);
                sha2::Digest::update(&mut h, [i]);
                p256::SecretKey::from_slice(&sha2::Digest::finalize(h)).ok()
            })
            .ok_or_else(|| Status::internal(NAME, "no VAPID key from the namespace's secret"))?;
        let der = p256::pkcs8::EncodePrivateKey::to_pkcs8_der(&key)
            .map_err(|e| Status::internal(NAME, format!("VAPID key: {e}")))?;
        let vapid = Vapid {
            key: Arc::new(jsonwebtoken::EncodingKey::from_ec_der(der.as_bytes())),
            public: B64.encode(key.public_key().to_encoded_point(false).as_bytes()),
        };
        Ok(vapid)
    }

    /// The `Authorization` header for a push service at `origin` (RFC 8292).
    fn authorization(&self, vapid: &Vapid, origin: &str) -> Result<String, Status> {
        let mut claims = json!({"aud": origin, "exp": now() + 12 * 3600});
        if let Some(c) = &self.contact {
            claims["sub"] = json!(c);
        }
        let jwt = jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256), &claims, &vapid.key)
            .map_err(|e| Status::internal(NAME, format!("signing the VAPID token: {e}")))?;
        Ok(format!("vapid t={jwt}, k={}", vapid.public))
    }

    /// Keeps the browser subscription `body` (a `PushSubscription`'s JSON, plus
    /// `topics`) for the caller.
    pub(crate) async fn subscribe(&self, who: &Who<'_>, body: Value) -> Result<Subscription, Status> {
        let (user, app_user) = who.member()?;
        #[derive(Deserialize)]
        struct Keys {
            p256dh: String,
            auth: String,
        }
        #[derive(Deserialize)]
        struct Body {
            endpoint: String,
            keys: Keys,
            #[serde(default)]
            topics: Vec<String>,
            // What browsers put in the JSON besides.
            #[serde(default, rename = "expirationTime")]
            _expiration_time: Option<Value>,
        }
        let b: Body = serde_json::from_value(body).map_err(|e| {
            bad(format!(
                "a subscription is a PushSubscription's JSON (endpoint, keys.p256dh, keys.auth) and topics: {e}"
            ))
        })?;
        if b.endpoint.len() > 2000 {
            return Err(bad("the endpoint is over 2000 bytes"));
        }
        self.outbound.check("the endpoint", &b.endpoint).map_err(bad)?;
        let p256dh = B64
            .decode(b.keys.p256dh.trim_end_matches('='))
            .ok()
            .filter(|k| k.len() == 65 && p256::PublicKey::from_sec1_bytes(k).is_ok())
            .ok_or_else(|| bad("keys.p256dh is not a P-256 public key (65 bytes, base64url)"))?;
        let auth = B64
            .decode(b.keys.auth.trim_end_matches('='))
            .ok()
            .filter(|k| k.len() == 16)
            .ok_or_else(|| bad("keys.auth is not an authentication secret (16 bytes, base64url)"))?;
        let mut topics = b.topics;
        topics.sort();
        topics.dedup();
        if topics.len() > 20 {
            return Err(bad("a subscription follows at most 20 topics"));
        }
        if let Some(t) = topics.iter().find(|t| !valid_topic(t)) {
            return Err(bad(format!("{t:?} is not a topic: 1 to 64 lowercase letters, digits, - _ and .")));
        }
        let id = digest(&b.endpoint);
        let ukey = user_key(&user, app_user);
        // The browser is this user's now: another user's subscription of it goes.
        if let Some(owner) = self.read_json::<String>(&format!("{}/endpoint/{id}", who.ns)).await?
            && owner != ukey
        {
            self.store.delete(&self.table, &format!("{}/sub/{owner}/{id}", who.ns)).await?;
        }
        let mut mine = self.user_subscriptions(who.ns, &ukey).await?;
        mine.retain(|s| s.id != id);
        mine.sort_by_key(|s| s.created);
        while mine.len() >= MAX_PER_USER {
            let oldest = mine.remove(0);
            self.remove(who.ns, &ukey, &oldest.id).await?;
        }
        let sub = Subscription {
            id: id.clone(),
            user,
            app_user,
            endpoint: b.endpoint,
            p256dh: B64.encode(p256dh),
            auth: B64.encode(auth),
            topics,
            created: now(),
            last_ok: None,
            failures: 0,
        };
        self.write_json(&format!("{}/endpoint/{id}", who.ns), &ukey, None).await?;
        self.write_json(&format!("{}/sub/{ukey}/{id}", who.ns), &sub, None).await?;
        Ok(sub.shown())
    }

    async fn remove(&self, ns: &str, ukey: &str, id: &str) -> Result<(), Status> {
        self.store.delete(&self.table, &format!("{ns}/sub/{ukey}/{id}")).await?;
        if self.read_json::<String>(&format!("{ns}/endpoint/{id}")).await?.as_deref() == Some(ukey) {
            self.store.delete(&self.table, &format!("{ns}/endpoint/{id}")).await?;
        }
        Ok(())
    }

    async fn user_subscriptions(&self, ns: &str, ukey: &str) -> Result<Vec<Subscription>, Status> {
        let mut out = Vec::new();
        for k in self.keys(&format!("{ns}/sub/{ukey}/")).await? {
            if let Some(s) = self.read_json::<Subscription>(&k).await? {
                out.push(s);
            }
        }
        Ok(out)
    }

    async fn all_subscriptions(&self, ns: &str) -> Result<Vec<Subscription>, Status> {
        let mut out = Vec::new();
        for k in self.keys(&format!("{ns}/sub/")).await? {
            if let Some(s) = self.read_json::<Subscription>(&k).await? {
                out.push(s);
            }
        }
        Ok(out)
    }

    /// The caller's own subscriptions; the team's senders see everyone's (or `user`'s).
    pub(crate) async fn subscriptions(&self, who: &Who<'_>, user: Option<&str>) -> Result<Vec<Subscription>, Status> {
        let mut subs = match (who.sender(), user) {
            (Ok(_), Some(u)) => self.user_subscriptions(who.ns, &user_key(u, true)).await?,
            (Ok(_), None) => self.all_subscriptions(who.ns).await?,
            (Err(_), _) => {
                let (me, app_user) = who.member()?;
                if user.is_some_and(|u| u != me) {
                    return Err(Status::new(Code::PermissionDenied, NAME, "you see your own subscriptions only"));
                }
                self.user_subscriptions(who.ns, &user_key(&me, app_user)).await?
            }
        };
        subs.sort_by(|a, b| a.created.cmp(&b.created).then_with(|| a.id.cmp(&b.id)));
        Ok(subs.into_iter().map(Subscription::shown).collect())
    }

    /// Ends subscription `id`: the caller's own, or anyone's for the team's senders.
    pub(crate) async fn unsubscribe(&self, who: &Who<'_>, id: &str) -> Result<(), Status> {
        let gone = || Status::new(Code::NotFound, NAME, format!("no subscription {id}"));
        if id.len() != 24 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(gone());
        }
        let owner = self.read_json::<String>(&format!("{}/endpoint/{id}", who.ns)).await?.ok_or_else(gone)?;
        if who.sender().is_err() {
            let (me, app_user) = who.member()?;
            if user_key(&me, app_user) != owner {
                return Err(gone());
            }
        }
        self.remove(who.ns, &owner, id).await
    }

    /// Sends a notification from the team (see [`SendRequest`]); returns its report.
    pub(crate) async fn send(&self, who: &Who<'_>, req: SendRequest) -> Result<Report, Status> {
        let by = who.sender()?;
        let ns = who.ns;
        let target = match (&req.user, &req.topic, req.all) {
            (Some(u), None, false) if !u.is_empty() && u.len() <= 200 => format!("user:{u}"),
            (None, Some(t), false) if valid_topic(t) => format!("topic:{t}"),
            (None, None, true) => "all".to_string(),
            (None, Some(t), false) => return Err(bad(format!("{t:?} is not a topic"))),
            _ => return Err(bad("send to one of: user (an app user's id), topic, or all: true")),
        };
        if req.title.trim().is_empty() || req.title.len() > 200 || req.title.chars().any(char::is_control) {
            return Err(bad("a title is one line of 1 to 200 bytes"));
        }
        if req.body.len() > 2000 {
            return Err(bad("the body is over 2000 bytes"));
        }
        if !req.url.is_empty()
            && (req.url.len() > 2000
                || req.url.chars().any(|c| c.is_whitespace() || c.is_control())
                || !(req.url.starts_with("https://") || req.url.starts_with("http://") || req.url.starts_with('/'))
                || req.url.starts_with("//"))
        {
            return Err(bad("url is an http(s):// URL or a path of the app (/…)"));
        }
        let ttl = req.ttl.unwrap_or(86_400);
        if ttl > MAX_TTL {
            return Err(bad(format!("ttl is at most {MAX_TTL} seconds (28 days)")));
        }
        let urgency = req.urgency.clone().unwrap_or_else(|| "normal".into());
        if !["very-low", "low", "normal", "high"].contains(&urgency.as_str()) {
            return Err(bad("urgency is very-low, low, normal or high"));
        }
        if let Some(r) = &req.replace
            && !((1..=32).contains(&r.len()) && r.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b)))
        {
            return Err(bad("replace is 1 to 32 letters, digits, - and _"));
        }
        let id = uuid::Uuid::now_v7().simple().to_string();
        let mut notification = json!({"id": id, "title": req.title, "body": req.body});
        if !req.url.is_empty() {
            notification["url"] = json!(req.url);
        }
        if let Some(d) = &req.data {
            notification["data"] = d.clone();
        }
        let payload = serde_json::to_vec(&notification).map_err(|e| Status::internal(NAME, e.to_string()))?;
        // Each user's copy carries its receipt token too.
        if payload.len() + RECEIPT_ROOM > MAX_PAYLOAD {
            return Err(Status::new(
                Code::InvalidArgument,
                NAME,
                format!(
                    "the notification is {} bytes as JSON: at most {} fit a push message",
                    payload.len(),
                    MAX_PAYLOAD - RECEIPT_ROOM
                ),
            ));
        }
        let subs: Vec<Subscription> = match (&req.user, &req.topic) {
            (Some(u), _) => self.user_subscriptions(ns, &user_key(u, true)).await?,
            (_, Some(t)) => self.all_subscriptions(ns).await?.into_iter().filter(|s| s.topics.contains(t)).collect(),
            _ => self.all_subscriptions(ns).await?,
        };
        let mut report = Report {
            id: id.clone(),
            created: now(),
            by,
            target: target.clone(),
            title: req.title.clone(),
            subscriptions: subs.len() as u32,
            ..Default::default()
        };
        // The message is on record before anything goes out.
        self.write_json(&format!("{ns}/msg/{id}"), &report, Some(KEEP)).await?;
        // Users online, on every node.
        let to = match (&req.user, &req.topic) {
            (Some(u), _) => Live::User(user_key(u, true)),
            (_, Some(t)) => Live::Topic(t.clone()),
            _ => Live::All,
        };
        let live = serde_json::to_vec(&notification).map_err(|e| Status::internal(NAME, e.to_string()))?;
        let message = micro_core::broker::Message { topic: to.topic(ns), payload: live, ..Default::default() };
        if let Err(e) = self.broker.publish(micro_core::namespace::DEFAULT, &message).await {
            tracing::warn!(service = NAME, namespace = ns, error = %e, "publishing a realtime notification failed");
        }
        if !subs.is_empty() {
            let vapid = self.vapid(ns).await?;
            let delivery = Delivery { ttl, urgency, replace: req.replace.clone(), notification: notification.clone() };
            let receipts = self.receipt_key(ns).await?;
            let deadline = tokio::time::Instant::now() + SEND_DEADLINE;
            let outcomes: Vec<(Subscription, Outcome)> = futures::stream::iter(subs)
                .map(|s| {
                    let (vapid, delivery, receipts) = (&vapid, &delivery, &receipts);
                    async move {
                        let o = match tokio::time::timeout_at(deadline, self.deliver(vapid, delivery, receipts, &s))
                            .await
                        {
                            Ok(o) => o,
                            Err(_) => Outcome::Failed("not tried: the send ran out of time".into()),
                        };
                        (s, o)
                    }
                })
                .buffer_unordered(PARALLEL)
                .collect()
                .await;
            for (mut s, outcome) in outcomes {
                let ukey = user_key(&s.user, s.app_user);
                let key = format!("{ns}/sub/{ukey}/{}", s.id);
                match outcome {
                    Outcome::Accepted => {
                        report.accepted += 1;
                        if s.failures > 0 || s.last_ok.is_none_or(|t| now() > t + 3600) {
                            s.failures = 0;
                            s.last_ok = Some(now());
                            let _ = self.write_json(&key, &s, None).await;
                        }
                    }
                    Outcome::Gone => {
                        report.expired += 1;
                        let _ = self.remove(ns, &ukey, &s.id).await;
                    }
                    Outcome::Failed(why) => {
                        report.failed += 1;
                        if report.errors.len() < 10 {
                            report.errors.push(format!("{}: {why}", url_origin(&s.endpoint)));
                        }
                        s.failures += 1;
                        if s.failures >= MAX_FAILURES {
                            report.expired += 1;
                            let _ = self.remove(ns, &ukey, &s.id).await;
                        } else {
                            let _ = self.write_json(&key, &s, None).await;
                        }
                    }
                }
            }
        }
        self.write_json(&format!("{ns}/msg/{id}"), &report, Some(KEEP)).await?;
        tracing::info!(
            service = NAME,
            namespace = ns,
            id,
            subscriptions = report.subscriptions,
            accepted = report.accepted,
            expired = report.expired,
            failed = report.failed,
            "notification sent"
        );
        Ok(report)
    }

    /// The namespace's key that signs receipt tokens.
    async fn receipt_key(&self, ns: &str) -> Result<Vec<u8>, Status> {
        micro_core::store::secret(self.store.as_ref(), &self.table, &format!("{ns}/receipts")).await
    }

    /// The token with which user `ukey` reports receipts of message `id`: proof that the
    /// notification came to them.
    pub(crate) fn receipt_token(key: &[u8], id: &str, ukey: &str) -> String {
        let mut h = <sha2::Sha256 as sha2::Digest>::new();
        sha2::Digest::update(&mut h, key);
        sha2::Digest::update(&mut h, format!("\nreceipt\n{id}\n{ukey}").as_bytes());
        B64.encode(&sha2::Digest::finalize(h)[..18])
    }

    /// `notification` as user `ukey` gets it: with their receipt token.
    pub(crate) fn for_user(notification: &Value, key: &[u8], ukey: &str) -> Value {
        let mut n = notification.clone();
        let id = n.get("id").and_then(|i| i.as_str()).unwrap_or_default().to_string();
        n["receipt"] = json!(Self::receipt_token(key, &id, ukey));
        n
    }

    /// One subscription's delivery.
    async fn deliver(&self, vapid: &Vapid, d: &Delivery, receipts: &[u8], s: &Subscription) -> Outcome {
        let keys = B64.decode(&s.p256dh).ok().and_then(|k| p256::PublicKey::from_sec1_bytes(&k).ok());
        let auth = B64.decode(&s.auth).ok().and_then(|a| <[u8; 16]>::try_from(a.as_slice()).ok());
        let (Some(public), Some(auth)) = (keys, auth) else {
            return Outcome::Gone;
        };
        let auth = web_push_native::Auth::from(auth);
        let n = Self::for_user(&d.notification, receipts, &user_key(&s.user, s.app_user));
        let Ok(payload) = serde_json::to_vec(&n) else {
            return Outcome::Failed("the notification is not JSON".into());
        };
        let body = match web_push_native::encrypt(payload, &public, &auth) {
            Ok(b) => b,
            Err(e) => return Outcome::Failed(format!("encrypting: {e}")),
        };
        let origin = url_origin(&s.endpoint);
        let authorization = match self.authorization(vapid, &origin) {
            Ok(a) => a,
            Err(e) => return Outcome::Failed(e.detail().to_string()),
        };
        let mut req = http::Request::post(&s.endpoint)
            .header("TTL", d.ttl.to_string())
            .header("Urgency", d.urgency.as_str())
            .header(http::header::CONTENT_ENCODING, "aes128gcm")
            .header(http::header::CONTENT_TYPE, "application/octet-stream")
            .header(http::header::AUTHORIZATION, authorization);
        if let Some(r) = &d.replace {
            req = req.header("Topic", r.as_str());
        }
        let req = match req.body(http_body_util::Full::new(Bytes::from(body))) {
            Ok(r) => r,
            Err(_) => return Outcome::Failed("the endpoint is not an URL".into()),
        };
        match self.outbound.send(req, 4096).await {
            Ok(a) if a.status.is_success() => Outcome::Accepted,
            Ok(a) if a.status == http::StatusCode::NOT_FOUND || a.status == http::StatusCode::GONE => Outcome::Gone,
            Ok(a) => Outcome::Failed(format!("the push service answered {}", a.status)),
            // In words without the endpoint's URL (the team sees origins only).
            Err(micro::outbound::OutboundError::Refused(_)) => Outcome::Failed("the endpoint is refused".into()),
            Err(micro::outbound::OutboundError::Timeout(_)) => Outcome::Failed("the push service timed out".into()),
            Err(micro::outbound::OutboundError::Unreachable(_, why)) if why.contains("no public address") => {
                Outcome::Failed("the push service's address is not public".into())
            }
            Err(micro::outbound::OutboundError::Unreachable(..)) => {
                Outcome::Failed("the push service cannot be reached".into())
            }
            Err(micro::outbound::OutboundError::Unreadable(..)) => {
                Outcome::Failed("the push service's answer is unreadable".into())
            }
        }
    }

    /// The namespace's latest messages with their reports, newest first.
    pub(crate) async fn messages(&self, who: &Who<'_>, limit: usize) -> Result<Vec<Report>, Status> {
        who.sender()?;
        let mut keys = self.keys(&format!("{}/msg/", who.ns)).await?;
        keys.sort();
        keys.reverse();
        let mut out = Vec::new();
        for k in keys.into_iter().take(limit.clamp(1, 200)) {
            if let Some(mut r) = self.read_json::<Report>(&k).await? {
                r.receipts = self.receipt_counts(who.ns, &r.id).await?;
                out.push(r);
            }
        }
        Ok(out)
    }

    async fn receipt_counts(&self, ns: &str, id: &str) -> Result<std::collections::BTreeMap<String, u32>, Status> {
        let mut out = std::collections::BTreeMap::new();
        for e in EVENTS {
            let n = self.keys(&format!("{ns}/receipt/{id}/{e}/")).await?.len() as u32;
            if n > 0 {
                out.insert(e.to_string(), n);
            }
        }
        Ok(out)
    }

    /// One message's report (the team's).
    pub(crate) async fn message(&self, who: &Who<'_>, id: &str) -> Result<Report, Status> {
        who.sender()?;
        let gone = || Status::new(Code::NotFound, NAME, format!("no message {id}"));
        if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(gone());
        }
        let mut r = self.read_json::<Report>(&format!("{}/msg/{id}", who.ns)).await?.ok_or_else(gone)?;
        r.receipts = self.receipt_counts(who.ns, id).await?;
        Ok(r)
    }

    /// A receipt from a user of the namespace: `event` became of message `id`, which came
    /// to them with `token`.
    pub(crate) async fn receipt(&self, who: &Who<'_>, id: &str, event: &str, token: &str) -> Result<(), Status> {
        let (me, app_user) = who.member()?;
        if !EVENTS.contains(&event) {
            return Err(bad(format!("{event:?} is not an event: delivered or clicked")));
        }
        let gone = || Status::new(Code::NotFound, NAME, format!("no message {id}"));
        if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(gone());
        }
        self.read_json::<Report>(&format!("{}/msg/{id}", who.ns)).await?.ok_or_else(gone)?;
        // Only a user the notification came to holds its token for them.
        let ukey = user_key(&me, app_user);
        let want = Self::receipt_token(&self.receipt_key(who.ns).await?, id, &ukey);
        if !bool::from(subtle::ConstantTimeEq::ct_eq(want.as_bytes(), token.as_bytes())) {
            return Err(gone());
        }
        let key = format!("{}/receipt/{id}/{event}/{ukey}", who.ns);
        self.write_json(&key, &now(), Some(KEEP)).await
    }

    /// Whether a realtime connection of user `ukey` may open on this node (at most
    /// [`MAX_STREAMS_PER_USER`] of theirs, [`MAX_STREAMS`] in all); it counts until the
    /// guard drops.
    fn stream_slot(&self, ns: &str, ukey: &str) -> Option<StreamSlot> {
        let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        let total: u32 = streams.values().sum();
        let n = streams.entry((ns.to_string(), ukey.to_string())).or_insert(0);
        if *n >= MAX_STREAMS_PER_USER || total >= MAX_STREAMS {
            return None;
        }
        *n += 1;
        Some(StreamSlot { streams: self.streams.clone(), key: (ns.to_string(), ukey.to_string()) })
    }
}

/// A realtime connection's place in the count.
struct StreamSlot {
    streams: Arc<Mutex<HashMap<(String, String), u32>>>,
    key: (String, String),
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = streams.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                streams.remove(&self.key);
            }
        }
    }
}

/// What every subscription of one send gets.
struct Delivery {
    ttl: u64,
    urgency: String,
    replace: Option<String>,
    notification: Value,
}

enum Outcome {
    Accepted,
    Gone,
    Failed(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> Vec<u8> {
        B64.decode(s).unwrap()
    }

    /// RFC 8291 section 5: the example message decrypts with the user agent's keys,
    /// so the encryption this product uses is the RFC's.
    #[test]
    fn the_rfc_8291_example_decrypts() {
        let ua_private = p256::SecretKey::from_slice(&b64("q1dXpw3UpT5VOmu_cf_v6ih07Aems3njxI-JWgLcM94")).unwrap();
        let auth = web_push_native::Auth::from(<[u8; 16]>::try_from(b64("BTBZMqHH6r4Tts7J_aSIgg")).unwrap());
        let message = b64(
            "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN",
        );
        let plain = web_push_native::decrypt(message, &ua_private, &auth).unwrap();
        assert_eq!(plain, b"When I grow up, I want to be a watermelon");
    }

    #[test]
    fn what_is_shown_of_a_subscription() {
        let s = Subscription {
            id: "x".into(),
            user: "u".into(),
            app_user: true,
            endpoint: "https://push.example.com/wpush/v2/secret-token".into(),
            p256dh: "key".into(),
            auth: "auth".into(),
            topics: vec![],
            created: 1,
            last_ok: None,
            failures: 0,
        }
        .shown();
        assert_eq!(s.endpoint, "https://push.example.com");
        assert!(s.p256dh.is_empty() && s.auth.is_empty());
        assert_ne!(user_key("a", true), user_key("a", false));
        assert!(valid_topic("news") && !valid_topic("News") && !valid_topic("") && !valid_topic("a/b"));
    }
}
