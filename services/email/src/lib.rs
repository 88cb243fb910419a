//! Email, a product of the platform: any service (and the platform itself, for signup)
//! sends mail with `Email.Send`; the mail is written to a durable outbox before the call
//! returns and a worker hands it to the SMTP server, retrying with backoff, until it is
//! sent, bounced (the server refused it for good) or out of attempts.
//!
//! It is a platform service ([`micro::Service::platform`]) like Distributed: one instance
//! in the `micro` namespace serves every namespace, each with its own outbox, templates,
//! bounces and daily limit, kept in the service's table under `<namespace>/`.
//!
//! - Mail is always from the platform's address (`MICRO_EMAIL_FROM`), named "`<name> via
//!   <platform>`" for tenants (their `from_name`, else their namespace); a name with an
//!   address or the platform's name is refused. A tenant chooses the Reply-To.
//! - Each recipient gets a mail of their own (no tenant leaks one user's address to
//!   another), with a Message-ID made of its id.
//! - Delivery is once: a mail is marked `sending` before it is handed over and `sent`
//!   after. Only a SIGKILL between the server's "250 OK" and that mark (a few
//!   milliseconds) sends it again after the restart, with the same Message-ID.
//! - A permanent refusal (5xx) bounces the mail and records the address; later mail to
//!   it is refused until a namespace admin removes the bounce.
//! - Members see the mail they sent; the namespace's admins see all of it. Mail is kept
//!   30 days after its last change.
//!
//! Endpoints (`micro email send …` on the CLI, `POST /email/send` at the gateway):
//! `Email.Send`, `Email.Get`, `Email.List`, `Email.SaveTemplate`, `Email.Templates`,
//! `Email.DeleteTemplate`, `Email.Bounces`, `Email.Unbounce`.

mod outbox;
mod send;
pub mod settings;
pub mod template;

pub use settings::Settings;
pub use template::Template;

use micro::{Code, Context, Service, Status};
use micro_core::store::{Order, Query};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::Digest;
use std::sync::Arc;
use std::time::Duration;

/// The service's name.
pub const NAME: &str = "email";

/// The most recipients of one `Email.Send`.
const MAX_RECIPIENTS: usize = 50;
/// The largest body (text or HTML), in bytes.
const MAX_BODY: usize = 512 * 1024;
/// The longest idempotency key.
const MAX_KEY: usize = 200;
/// The most mail one `Email.List` returns.
const MAX_LIST: u32 = 500;
/// How long an idempotency key is remembered.
const KEY_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Where a mail is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Waiting for its turn (first or next attempt).
    Queued,
    /// Being handed to the SMTP server.
    Sending,
    /// Accepted by the SMTP server.
    Sent,
    /// Refused by the SMTP server for good.
    Bounced,
    /// Out of attempts.
    Failed,
}

impl State {
    /// Whether the mail is done with.
    pub fn done(self) -> bool {
        matches!(self, State::Sent | State::Bounced | State::Failed)
    }
}

/// A mail to one recipient.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct Mail {
    /// Assigned by the service; ids sort by creation time.
    pub id: String,
    /// The recipient.
    pub to: String,
    /// The subject.
    pub subject: String,
    /// The plain-text body.
    pub text: String,
    /// The HTML body.
    #[serde(default)]
    pub html: Option<String>,
    /// Where replies go.
    #[serde(default)]
    pub reply_to: Option<String>,
    /// The display name of the sender.
    #[serde(default)]
    pub from_name: Option<String>,
    /// The template it was made from.
    #[serde(default)]
    pub template: Option<String>,
    /// Where it is.
    pub state: State,
    /// Attempts so far.
    pub attempts: u32,
    /// The last failure.
    #[serde(default)]
    pub error: Option<String>,
    /// The account that sent it.
    pub by: String,
    /// Created, Unix seconds.
    pub created: u64,
    /// When the next attempt is due, Unix milliseconds (while queued).
    #[serde(default)]
    pub due: u64,
    /// When it was sent (or bounced, or failed), Unix seconds.
    #[serde(default)]
    pub done: Option<u64>,
    /// It holds a secret (a sign-in code): its bodies are shown to nobody and dropped
    /// once it is done.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sensitive: bool,
    /// Where its recipient unsubscribes in one click (`List-Unsubscribe`, RFC 8058).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsubscribe: Option<String>,
}

/// What a sensitive mail's bodies read as.
pub const WITHHELD: &str = "(withheld: the mail holds a secret, such as a sign-in code)";

/// `Email.Send` request: give `subject` and `text` (and `html`), or a `template` and its `vars`.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SendRequest {
    /// Recipients, 1 to 50 addresses (`a@b.c` or `Name <a@b.c>`); each gets a mail of their own.
    pub to: Vec<String>,
    /// The subject (without a template).
    #[serde(default)]
    pub subject: Option<String>,
    /// The plain-text body (without a template).
    #[serde(default)]
    pub text: Option<String>,
    /// The HTML body (without a template).
    #[serde(default)]
    pub html: Option<String>,
    /// A saved template of the namespace.
    #[serde(default)]
    pub template: Option<String>,
    /// The variables of the template, or of the subject and bodies given (then templates
    /// themselves), a JSON object.
    #[serde(default)]
    pub vars: Option<serde_json::Map<String, serde_json::Value>>,
    /// Where replies go.
    #[serde(default)]
    pub reply_to: Option<String>,
    /// The sender's display name (the address is always the platform's).
    #[serde(default)]
    pub from_name: Option<String>,
    /// An idempotency key: a second call with the same key sends nothing more and returns
    /// the first call's ids (remembered for 7 days).
    #[serde(default)]
    pub key: Option<String>,
    /// The mail holds a secret (a sign-in code): `Email.Get` never shows its bodies, and
    /// they are dropped once it is sent.
    #[serde(default)]
    pub sensitive: Option<bool>,
    /// A mailing list's one-click unsubscribe address (an `https://` or `http://` URL):
    /// the mail carries `List-Unsubscribe` and `List-Unsubscribe-Post:
    /// List-Unsubscribe=One-Click` (RFC 8058), which mail clients show as "Unsubscribe".
    #[serde(default)]
    pub unsubscribe: Option<String>,
}

/// `Email.Send` reply.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
pub struct SendReply {
    /// The mails' ids, one per recipient, in order.
    pub ids: Vec<String>,
}

/// A request naming one mail.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IdRequest {
    /// The mail's id.
    pub id: String,
}

/// `Email.List` request.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListRequest {
    /// Only mail in this state.
    #[serde(default)]
    pub state: Option<State>,
    /// At most this many (default and most 500), newest first.
    #[serde(default)]
    pub limit: Option<u32>,
}

/// A mail in a list: what it is without its bodies.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct Summary {
    /// Its id.
    pub id: String,
    /// The recipient.
    pub to: String,
    /// The subject.
    pub subject: String,
    /// Where it is.
    pub state: State,
    /// Attempts so far.
    pub attempts: u32,
    /// The last failure.
    pub error: Option<String>,
    /// The account that sent it.
    pub by: String,
    /// Created, Unix seconds.
    pub created: u64,
}

/// `Email.List` reply.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
pub struct ListReply {
    /// Newest first.
    pub mails: Vec<Summary>,
}

/// A request naming one template.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NameRequest {
    /// The template's name.
    pub name: String,
}

/// `Email.Templates` reply.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
pub struct TemplatesReply {
    /// By name.
    pub templates: Vec<Template>,
}

/// An address the SMTP server refused for good.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct Bounce {
    /// The address.
    pub address: String,
    /// What the server said.
    pub reason: String,
    /// The mail that bounced.
    pub mail: String,
    /// When, Unix seconds.
    pub at: u64,
}

/// `Email.Bounces` reply.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
pub struct BouncesReply {
    /// Every bounced address of the namespace.
    pub bounces: Vec<Bounce>,
}

/// `Email.Unbounce` request.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AddressRequest {
    /// The address.
    pub address: String,
}

/// An empty reply.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
pub struct Empty {}

pub(crate) fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Where everything of namespace `ns` is kept in the service's table: the server deletes
/// it with the namespace. (The queue lives under `_queue/`, which no namespace name can
/// start with; an entry whose mail is gone is dropped.)
pub fn tenant_prefix(ns: &str) -> String {
    format!("{ns}/")
}

pub(crate) fn mail_key(ns: &str, id: &str) -> String {
    format!("{ns}/mail/{id}")
}

fn template_key(ns: &str, name: &str) -> String {
    format!("{ns}/template/{name}")
}

pub(crate) fn bounce_key(ns: &str, address: &str) -> String {
    format!("{ns}/bounce/{}", digest(&address.to_ascii_lowercase()))
}

fn idempotency_key(ns: &str, key: &str) -> String {
    format!("{ns}/key/{}", digest(key))
}

fn count_key(ns: &str, day: u64) -> String {
    format!("{ns}/count/{day}")
}

fn digest(s: &str) -> String {
    sha2::Sha256::digest(s.as_bytes())[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// The caller's namespace, account id and whether it administers the namespace: every
/// endpoint needs an account.
fn caller(ctx: &Context) -> Result<(String, String, bool), Status> {
    let c = ctx.caller().ok_or_else(|| Status::internal(NAME, "the service runs without an authorizer"))?;
    let id = c.id().ok_or_else(|| Status::new(Code::Unauthenticated, NAME, "email needs an account: log in first"))?;
    Ok((c.namespace.clone(), id.to_string(), c.is_admin()))
}

fn bad(msg: impl Into<String>) -> Status {
    Status::bad_request(NAME, msg)
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(value: &[u8]) -> Result<T, Status> {
    serde_json::from_slice(value).map_err(|e| Status::internal(NAME, format!("a stored record is unreadable: {e}")))
}

pub(crate) fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, Status> {
    serde_json::to_vec(v).map_err(|e| Status::internal(NAME, e.to_string()))
}

/// Checks an address (`a@b.c` or `Name <a@b.c>`) and returns it as it will be written.
fn address(what: &str, v: &str) -> Result<String, Status> {
    let v = v.trim();
    if v.len() > 320 {
        return Err(bad(format!("{what} is longer than 320 characters")));
    }
    let m: lettre::message::Mailbox =
        v.parse().map_err(|e| bad(format!("{what} {v:?} is not an email address: {e}")))?;
    Ok(m.to_string())
}

/// The bare address of a recipient, lowercased: what bounces are recorded under.
pub(crate) fn bare(v: &str) -> String {
    v.parse::<lettre::message::Mailbox>()
        .map(|m| m.email.to_string())
        .unwrap_or_else(|_| v.to_string())
        .to_ascii_lowercase()
}

/// A single line of at most `max` characters, without control characters.
fn line(what: &str, v: &str, max: usize) -> Result<String, Status> {
    let v = v.trim();
    if v.chars().count() > max || v.chars().any(char::is_control) {
        return Err(bad(format!("{what} must be one line of at most {max} characters")));
    }
    Ok(v.to_string())
}

/// Email's handlers on `service`, with the settings from the environment (see
/// [`Settings::from_env`]); a bad setting is logged and every `Email.Send` refused.
pub fn service(service: Service) -> Service {
    match Settings::from_env() {
        Ok(s) => service_with(service, s),
        Err(e) => {
            tracing::error!(service = NAME, error = %e, "bad email settings: no mail is sent");
            service_with(service, Settings::default())
        }
    }
}

/// State shared by the handlers and the worker.
struct Shared {
    store: micro::data::StoreHandle,
    sync: micro::data::SyncHandle,
    sender: Option<send::Sender>,
    settings: Settings,
    wake: tokio::sync::Notify,
}

/// Email's handlers on `service` (named [`NAME`], configured by the host: its server,
/// account and namespace), as a platform service sending as `settings` say.
pub fn service_with(service: Service, settings: Settings) -> Service {
    let service = service.platform();
    let sender = match send::Sender::new(&settings) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(service = NAME, error = %e, "bad SMTP settings: no mail is sent");
            None
        }
    };
    let shared =
        Arc::new(Shared { store: service.store(), sync: service.sync(), sender, settings, wake: Default::default() });
    let s = |f: &Arc<Shared>| f.clone();
    let (send, get, list, save, templates, delete, bounces, unbounce, worker) =
        (s(&shared), s(&shared), s(&shared), s(&shared), s(&shared), s(&shared), s(&shared), s(&shared), s(&shared));
    service
        .version(env!("CARGO_PKG_VERSION"))
        // The users product mails its users' codes for the namespaces it serves; the
        // subscribe product composes campaigns from a namespace's templates.
        .for_products("Email.Send")
        .for_products("Email.Templates")
        .handle("Email.Send", move |ctx: Context, req: SendRequest| {
            let sh = send.clone();
            async move { sh.send(&ctx, req).await }
        })
        .handle("Email.Get", move |ctx: Context, req: IdRequest| {
            let sh = get.clone();
            async move {
                let (ns, who, admin) = caller(&ctx)?;
                if req.id.is_empty() || req.id.len() > 64 || !req.id.bytes().all(|b| b.is_ascii_alphanumeric()) {
                    return Err(bad(format!("invalid mail id {:?}", req.id)));
                }
                let mut mail: Mail = decode(&sh.store.get(&mail_key(&ns, &req.id)).await?.value)?;
                if !admin && mail.by != who {
                    return Err(Status::not_found(NAME, format!("no mail {}", req.id)));
                }
                if mail.sensitive {
                    mail.text = WITHHELD.into();
                    mail.html = None;
                }
                Ok(mail)
            }
        })
        .handle("Email.List", move |ctx: Context, req: ListRequest| {
            let sh = list.clone();
            async move {
                let (ns, who, admin) = caller(&ctx)?;
                let limit = req.limit.unwrap_or(MAX_LIST).clamp(1, MAX_LIST) as usize;
                // The newest few thousand at most: a member's own are found among them.
                let read = if admin { limit as u32 } else { 4 * MAX_LIST };
                let q = Query { prefix: true, order: Order::Desc, limit: read, ..Default::default() };
                let mut mails = Vec::new();
                for r in sh.store.read(&format!("{ns}/mail/"), &q).await? {
                    let m: Mail = decode(&r.value)?;
                    if (admin || m.by == who) && req.state.is_none_or(|s| s == m.state) {
                        mails.push(Summary {
                            id: m.id,
                            to: m.to,
                            subject: m.subject,
                            state: m.state,
                            attempts: m.attempts,
                            error: m.error,
                            by: m.by,
                            created: m.created,
                        });
                        if mails.len() == limit {
                            break;
                        }
                    }
                }
                Ok(ListReply { mails })
            }
        })
        .handle("Email.SaveTemplate", move |ctx: Context, req: Template| {
            let sh = save.clone();
            async move {
                let (ns, _, _) = caller(&ctx)?;
                template::check(&req)?;
                sh.store.put(&template_key(&ns, &req.name), encode(&req)?).await?;
                Ok(req)
            }
        })
        .handle("Email.Templates", move |ctx: Context, _: Empty| {
            let sh = templates.clone();
            async move {
                let (ns, _, _) = caller(&ctx)?;
                let q = Query { prefix: true, ..Default::default() };
                let records = sh.store.read(&format!("{ns}/template/"), &q).await?;
                let templates = records.iter().map(|r| decode(&r.value)).collect::<Result<Vec<Template>, _>>()?;
                Ok(TemplatesReply { templates })
            }
        })
        .handle("Email.DeleteTemplate", move |ctx: Context, req: NameRequest| {
            let sh = delete.clone();
            async move {
                let (ns, _, _) = caller(&ctx)?;
                template::check_name(&req.name)?;
                sh.store.get(&template_key(&ns, &req.name)).await?;
                sh.store.delete(&template_key(&ns, &req.name)).await?;
                Ok(Empty {})
            }
        })
        .handle("Email.Bounces", move |ctx: Context, _: Empty| {
            let sh = bounces.clone();
            async move {
                let (ns, _, _) = caller(&ctx)?;
                let q = Query { prefix: true, ..Default::default() };
                let records = sh.store.read(&format!("{ns}/bounce/"), &q).await?;
                let mut bounces = records.iter().map(|r| decode(&r.value)).collect::<Result<Vec<Bounce>, _>>()?;
                bounces.sort_by(|a, b| a.address.cmp(&b.address));
                Ok(BouncesReply { bounces })
            }
        })
        .handle("Email.Unbounce", move |ctx: Context, req: AddressRequest| {
            let sh = unbounce.clone();
            async move {
                let (ns, _, admin) = caller(&ctx)?;
                if !admin {
                    return Err(Status::new(
                        Code::PermissionDenied,
                        NAME,
                        "only the namespace's admins remove a bounce",
                    ));
                }
                let key = bounce_key(&ns, &bare(&req.address));
                sh.store.get(&key).await?;
                sh.store.delete(&key).await?;
                Ok(Empty {})
            }
        })
        .background(move |stopping| outbox::run(worker, stopping))
}

impl Shared {
    async fn send(&self, ctx: &Context, req: SendRequest) -> Result<SendReply, Status> {
        let (ns, who, _) = caller(ctx)?;
        if self.sender.is_none() {
            return Err(send::off());
        }
        if req.to.is_empty() || req.to.len() > MAX_RECIPIENTS {
            return Err(bad(format!("to: give 1 to {MAX_RECIPIENTS} recipients")));
        }
        let to = req.to.iter().map(|t| address("recipient", t)).collect::<Result<Vec<_>, _>>()?;
        let reply_to = req.reply_to.as_deref().map(|r| address("reply_to", r)).transpose()?;
        if let Some(u) = &req.unsubscribe {
            let ok = (u.starts_with("https://") || u.starts_with("http://"))
                && u.len() <= 2000
                && !u.chars().any(|c| c.is_whitespace() || c.is_control() || c == '<' || c == '>');
            if !ok {
                return Err(Status::bad_request(NAME, "unsubscribe is an http(s):// URL of at most 2000 characters"));
            }
        }
        let from_name =
            req.from_name.as_deref().map(|n| line("from_name", n, 64)).transpose()?.filter(|n| !n.is_empty());
        // A tenant's mail is "`<name> via <platform>`": a name that passes for the platform
        // or an address is refused.
        if let (Some(n), Some(sender)) = (&from_name, &self.sender)
            && ns != micro_core::namespace::DEFAULT
        {
            let platform = sender.platform_name().to_lowercase();
            if n.contains('@') || n.contains('<') || n.to_lowercase().contains(&platform) {
                return Err(bad(format!("from_name {n:?} may not contain an address or the platform's name")));
            }
        }
        let key = match req.key.as_deref() {
            Some(k) if k.is_empty() || k.len() > MAX_KEY => {
                return Err(bad(format!("key must be 1 to {MAX_KEY} bytes")));
            }
            Some(k) => Some(idempotency_key(&ns, k)),
            None => None,
        };
        // What the mail says: a template, or the parts given.
        let (subject, text, html) = match &req.template {
            Some(name) => {
                if req.subject.is_some() || req.text.is_some() || req.html.is_some() {
                    return Err(bad("give a template or subject/text/html, not both"));
                }
                template::check_name(name)?;
                let t: Template = match self.store.get(&template_key(&ns, name)).await {
                    Ok(r) => decode(&r.value)?,
                    Err(e) if e.code() == Code::NotFound => {
                        return Err(Status::not_found(NAME, format!("no template {name:?} in namespace {ns}")));
                    }
                    Err(e) => return Err(e),
                };
                let vars = serde_json::Value::Object(req.vars.clone().unwrap_or_default());
                let r = template::render(&t, &vars)?;
                (r.subject, r.text, r.html)
            }
            // The parts given, rendered with `vars` when there are some (a campaign's mail,
            // one per subscriber).
            None => {
                let (subject, text, html) =
                    (req.subject.clone().unwrap_or_default(), req.text.clone().unwrap_or_default(), req.html.clone());
                match &req.vars {
                    Some(vars) => {
                        let t = Template { name: "inline".into(), subject, text, html };
                        let r = template::render(&t, &serde_json::Value::Object(vars.clone()))?;
                        (r.subject, r.text, r.html)
                    }
                    None => (subject, text, html),
                }
            }
        };
        let subject = line("subject", &subject, template::MAX_SUBJECT)?;
        if subject.is_empty() {
            return Err(bad("a mail needs a subject"));
        }
        if text.trim().is_empty() && html.as_deref().is_none_or(|h| h.trim().is_empty()) {
            return Err(bad("a mail needs a text or an html body"));
        }
        if text.len() > MAX_BODY || html.as_ref().is_some_and(|h| h.len() > MAX_BODY) {
            return Err(bad(format!("a body is larger than {MAX_BODY} bytes")));
        }
        // A repeat of an accepted call returns what it returned; one that died half-way
        // is finished with the ids it was given.
        let earlier = match &key {
            Some(k) => self.remembered(k).await?,
            None => None,
        };
        let fresh = earlier.is_none();
        let ids = match earlier {
            Some(ids) if ids.len() == to.len() => ids,
            Some(_) => return Err(bad("this key was used for another number of recipients")),
            None => to.iter().map(|_| uuid::Uuid::now_v7().simple().to_string()).collect(),
        };
        if fresh {
            for t in &to {
                if let Ok(r) = self.store.get(&bounce_key(&ns, &bare(t))).await {
                    let b: Bounce = decode(&r.value)?;
                    return Err(Status::new(
                        Code::FailedPrecondition,
                        NAME,
                        format!("{} bounced ({}): an admin removes it with Email.Unbounce first", b.address, b.reason),
                    ));
                }
            }
            self.spend(&ns, to.len() as u32).await?;
            // The key first: a crash after it and before the mails leaves ids a retry fills in.
            if let Some(k) = &key {
                let record = micro_core::store::Record::new(k.clone(), encode(&ids)?);
                self.store.write(&record, Some(KEY_TTL)).await?;
            }
        }
        let t = now();
        let due = now_ms();
        for (id, to) in ids.iter().zip(to) {
            if !fresh && self.exists(&mail_key(&ns, id)).await? {
                continue;
            }
            let mail = Mail {
                id: id.clone(),
                to,
                subject: subject.clone(),
                text: text.clone(),
                html: html.clone(),
                reply_to: reply_to.clone(),
                from_name: from_name.clone(),
                template: req.template.clone(),
                state: State::Queued,
                attempts: 0,
                error: None,
                by: who.clone(),
                created: t,
                due,
                done: None,
                sensitive: req.sensitive.unwrap_or(false),
                unsubscribe: req.unsubscribe.clone(),
            };
            outbox::enqueue(&self.store, &ns, &mail).await?;
        }
        self.wake.notify_one();
        Ok(SendReply { ids })
    }

    /// The ids an earlier call with key `k` was given.
    async fn remembered(&self, k: &str) -> Result<Option<Vec<String>>, Status> {
        match self.store.get(k).await {
            Ok(r) => Ok(Some(decode(&r.value)?)),
            Err(e) if e.code() == Code::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn exists(&self, key: &str) -> Result<bool, Status> {
        match self.store.get(key).await {
            Ok(_) => Ok(true),
            Err(e) if e.code() == Code::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Counts `n` recipients against the namespace's daily limit, under a lock so parallel
    /// calls cannot race past it.
    async fn spend(&self, ns: &str, n: u32) -> Result<(), Status> {
        let limit = self.settings.daily_limit;
        if limit == 0 || ns == micro_core::namespace::DEFAULT {
            return Ok(());
        }
        let lock =
            self.sync.lock(&format!("email/limit/{ns}"), Duration::from_secs(10), Duration::from_secs(10)).await?;
        let result = async {
            let day = now() / 86_400;
            let key = count_key(ns, day);
            let used: u32 = match self.store.get(&key).await {
                Ok(r) => decode(&r.value)?,
                Err(e) if e.code() == Code::NotFound => 0,
                Err(e) => return Err(e),
            };
            if used.saturating_add(n) > limit {
                return Err(Status::new(
                    Code::ResourceExhausted,
                    NAME,
                    format!(
                        "namespace {ns} may send to {limit} recipients a day and has sent to {used}: try again tomorrow (UTC)"
                    ),
                ));
            }
            let record = micro_core::store::Record::new(key, encode(&(used + n))?);
            self.store.write(&record, Some(Duration::from_secs(2 * 86_400))).await
        }
        .await;
        let _ = self.sync.unlock(&lock).await;
        result
    }
}
