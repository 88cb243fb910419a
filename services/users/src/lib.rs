//! App users, a product of the platform (Backend-as-a-Service): the end users of a
//! namespace's apps — not its team's accounts — sign up with an email address and a
//! password, confirm the address with a mailed code, sign in with the password or a
//! mailed one-time code (a magic link when the namespace gives its app's URL), reset a
//! forgotten password, keep a profile, list and end their sessions, export what is kept
//! about them and erase it.
//!
//! A signed-in user holds an access token signed by the server's auth service (type
//! `app`, scope `micro:app`, with whether the address is confirmed), which every service
//! verifies like any other: the database's rules see `@request.auth.id` and
//! `@request.auth.verified`, the gateway lets it call what the namespace's rules open
//! to scope `micro:app` (and what they open to everyone), and nothing else — an app user is
//! no member of the namespace's team. A refresh token (one per session, used up by each
//! refresh) gives new access tokens; ending a session, changing or resetting the
//! password and deleting the user void the access tokens at once.
//!
//! Like every product it is a service built with the framework, hosted in-process by
//! `micro server` and runnable on its own (`micro-users`); it keeps a namespace's users
//! in its table of the store under `<namespace>/`, deleted with the namespace, so it
//! works on whatever backends the server has (a cluster's nodes share them).
//!
//! A namespace turns app users on by saving its settings (`POST /users/v1/settings`, a
//! manager of the namespace: its admins, developers and data accounts).
//!
//! What an attacker meets: argon2id hashes (19 MiB, 2 passes), computed a few at a time;
//! the same answer and the same work whether an address has a user or not (signup, login,
//! code and reset requests); 10 failed logins per address lock it for 15 minutes across
//! the cluster; signups and attempts are limited per client address; codes are 6
//! digits, last 15 minutes, are used once and die after 5 wrong tries; secrets are
//! compared in constant time and kept only as digests.
//!
//! On the gateway (`POST` unless said; `micro users …` on the CLI):
//!
//! | Route | Endpoint | Who |
//! |---|---|---|
//! | `/users/v1/signup` | `Users.Signup` | anyone |
//! | `/users/v1/login` | `Users.Login` | anyone |
//! | `/users/v1/refresh`, `/users/v1/logout` | `Users.Refresh`, `Users.Logout` | a refresh token's holder |
//! | `/users/v1/verification`, `/users/v1/verify` | `Users.RequestVerification`, `Users.Verify` | anyone |
//! | `/users/v1/reset`, `/users/v1/reset/confirm` | `Users.RequestReset`, `Users.Reset` | anyone |
//! | `/users/v1/code`, `/users/v1/code/login` | `Users.RequestCode`, `Users.LoginWithCode` | anyone |
//! | `GET`, `PATCH /users/v1/me` | `Users.Me`, `Users.UpdateMe` | the user |
//! | `/users/v1/me/password`, `/users/v1/me/delete` | `Users.ChangePassword`, `Users.DeleteMe` | the user |
//! | `GET /users/v1/me/sessions`, `DELETE /users/v1/me/sessions/{id}` | `Users.Sessions`, `Users.EndSession` | the user |
//! | `GET /users/v1/me/export` | `Users.Export` | the user |
//! | `GET /users/v1/users`, `GET`, `DELETE /users/v1/users/{id}` | `Users.List`, `Users.Get`, `Users.Delete` | managers |
//! | `GET`, `POST /users/v1/settings` | `Users.Settings`, `Users.SaveSettings` | managers |

mod limit;
pub mod oidc;
pub mod password;

use micro::proto::auth as pb;
use micro::{Code, Context, Service, Status};
use micro_core::store::{Order, Query, Record};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::Digest;
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;

/// The service's name.
pub const NAME: &str = "users";

/// How long a mailed code lasts (seconds).
const CODE_TTL: u64 = 15 * 60;
/// Wrong tries a code survives.
const CODE_TRIES: u32 = 5;
/// How long a session lasts without a refresh (seconds).
const SESSION_TTL: u64 = 30 * 86_400;
/// Sessions a user holds at most (the oldest ends first).
const MAX_SESSIONS: usize = 20;
/// Mails to one address per hour.
const MAILS_PER_HOUR: u32 = 5;
/// Failed logins for one address before it is locked …
const FAILURES: u32 = 10;
/// … for this long (seconds), counted from the first failure.
const LOCK: u64 = 15 * 60;
/// The largest profile (`data`), as JSON bytes.
const MAX_DATA: usize = 16 * 1024;
/// The most users one `Users.List` returns.
const MAX_PAGE: u32 = 500;

/// A namespace's end user of its apps.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct User {
    /// 15 letters and digits, assigned at signup: what records name as their owner
    /// (`@request.auth.id`).
    pub id: String,
    /// The email address, lowercased.
    pub email: String,
    /// A display name.
    #[serde(default)]
    pub name: String,
    /// Whether the address is confirmed (`@request.auth.verified`).
    #[serde(default)]
    pub verified: bool,
    /// Profile fields of the app's choosing (a JSON object of at most 16 KiB).
    #[serde(default)]
    pub data: Map<String, Value>,
    /// Signed up, Unix seconds.
    pub created: u64,
    /// Last changed, Unix seconds.
    pub updated: u64,
}

#[derive(Serialize, Deserialize)]
struct Stored {
    user: User,
    /// The password's argon2id hash (of a random secret nobody knows for a user who
    /// signed up through a provider, until they reset it).
    hash: String,
    /// The providers' subjects linked to the user (`<provider>/<digest of the subject>`).
    #[serde(default)]
    links: Vec<String>,
    /// Rises each time all sessions end (a new password, a reset): a session of an
    /// earlier epoch is over, whatever raced with the ending.
    #[serde(default)]
    epoch: u64,
}

/// A signed-in device or browser: one refresh token's life.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct Session {
    /// 16 letters and digits.
    pub id: String,
    /// Signed in, Unix seconds.
    pub created: u64,
    /// Last refreshed, Unix seconds.
    pub used: u64,
    /// Ends unless refreshed before, Unix seconds.
    pub expires: u64,
    /// The client address that signed in.
    #[serde(default)]
    pub address: String,
}

#[derive(Serialize, Deserialize)]
struct StoredSession {
    session: Session,
    /// The SHA-256 of the refresh token's secret, hex.
    secret: String,
    /// The user's epoch when it began.
    #[serde(default)]
    epoch: u64,
}

/// A mailed code, kept as its digest.
#[derive(Serialize, Deserialize)]
struct StoredCode {
    digest: String,
    expires: u64,
    tries: u32,
}

/// What a mailed code is for.
#[derive(Clone, Copy)]
enum Purpose {
    Verify,
    Reset,
    Login,
}

impl Purpose {
    fn as_str(self) -> &'static str {
        match self {
            Purpose::Verify => "verify",
            Purpose::Reset => "reset",
            Purpose::Login => "login",
        }
    }
}

/// A namespace's settings for its app users.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Whether anyone may sign up (default true; false: users exist only as managers
    /// made them… or did before).
    pub signups: bool,
    /// The app's name, in the mails' sender and subjects (default: the namespace).
    pub app_name: String,
    /// The app's page a mailed code links to (`https://…`): the link adds `email` and
    /// `code` (and `purpose`) to its query, for the app to finish with (a magic link).
    pub link_url: String,
    /// Whether a user must confirm the address before signing in with a password
    /// (default true: else whoever signs up first with somebody's address holds a session
    /// of the account that person may later confirm).
    pub verify_before_login: bool,
    /// Signups per client address per hour (default 20).
    pub signups_per_hour: u32,
    /// Logins, codes and resets per client address per minute (default 60).
    pub attempts_per_minute: u32,
    /// What passwords must be.
    pub password: password::Policy,
    /// OpenID Connect providers the users may sign in with.
    pub providers: Vec<oidc::Provider>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            signups: true,
            app_name: String::new(),
            link_url: String::new(),
            verify_before_login: true,
            signups_per_hour: 20,
            attempts_per_minute: 60,
            password: password::Policy::default(),
            providers: Vec::new(),
        }
    }
}

impl Settings {
    /// The settings as shown: the providers' secrets hidden.
    fn shown(mut self) -> Settings {
        for p in &mut self.providers {
            if !p.client_secret.is_empty() {
                p.client_secret = oidc::HIDDEN.into();
            }
        }
        self
    }

    fn validate(&mut self, private: bool, before: Option<&Settings>) -> Result<(), Status> {
        if self.providers.len() > 20 {
            return Err(bad("at most 20 providers"));
        }
        for p in &mut self.providers {
            p.normalize(private)?;
            if p.client_secret == oidc::HIDDEN {
                // Saved as shown: the secret stays what it was.
                p.client_secret = before
                    .and_then(|b| b.providers.iter().find(|o| o.name == p.name))
                    .map(|o| o.client_secret.clone())
                    .unwrap_or_default();
            }
        }
        let mut names: Vec<&str> = self.providers.iter().map(|p| p.name.as_str()).collect();
        names.sort();
        names.dedup();
        if names.len() != self.providers.len() {
            return Err(bad("two providers have the same name"));
        }
        self.password.validate().map_err(bad)?;
        line("app_name", &self.app_name, 80)?;
        if self.app_name.contains(['@', '<', '>', '"']) {
            return Err(bad("app_name cannot hold an address or quotes"));
        }
        if !self.link_url.is_empty() {
            let u = url::Url::parse(&self.link_url).map_err(|e| bad(format!("link_url: {e}")))?;
            if !matches!(u.scheme(), "https" | "http") || u.host_str().is_none() || self.link_url.len() > 500 {
                return Err(bad("link_url must be an http(s) URL of at most 500 characters"));
            }
        }
        if !(1..=100_000).contains(&self.signups_per_hour) {
            return Err(bad("signups_per_hour must be 1 to 100000"));
        }
        if !(1..=100_000).contains(&self.attempts_per_minute) {
            return Err(bad("attempts_per_minute must be 1 to 100000"));
        }
        Ok(())
    }
}

/// `Users.Signup` request.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SignupRequest {
    /// The email address.
    pub email: String,
    /// The password, as the namespace's policy asks.
    pub password: String,
    /// A display name.
    #[serde(default)]
    pub name: Option<String>,
    /// Profile fields.
    #[serde(default)]
    pub data: Option<Map<String, Value>>,
}

/// `Users.Login` request.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// The email address.
    pub email: String,
    /// The password.
    pub password: String,
}

/// A request carrying a refresh token.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    /// The session's refresh token.
    pub refresh_token: String,
}

/// A request naming an email address.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EmailRequest {
    /// The email address.
    pub email: String,
}

/// A request with a mailed code.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CodeRequest {
    /// The email address.
    pub email: String,
    /// The 6-digit code from the mail.
    pub code: String,
    /// Confirming an address: the password chosen at signup, which then stays the
    /// user's. Without it the address is confirmed, but no password works until a
    /// reset sets one (the code proves the mailbox, not who chose the password).
    #[serde(default)]
    pub password: Option<String>,
}

/// `Users.Reset` request.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetRequest {
    /// The email address.
    pub email: String,
    /// The 6-digit code from the mail.
    pub code: String,
    /// The new password.
    pub password: String,
}

/// `Users.UpdateMe` request: what is given changes.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateRequest {
    /// A display name.
    #[serde(default)]
    pub name: Option<String>,
    /// Profile fields (replaced whole).
    #[serde(default)]
    pub data: Option<Map<String, Value>>,
}

/// `Users.ChangePassword` request.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangePasswordRequest {
    /// The current password.
    pub password: String,
    /// The new one.
    pub new_password: String,
}

/// `Users.DeleteMe` request.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeleteMeRequest {
    /// The current password.
    pub password: String,
}

/// A request naming a user or a session.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IdRequest {
    /// The id.
    pub id: String,
}

/// `Users.List` request.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListRequest {
    /// From 1 (default 1).
    #[serde(default)]
    pub page: Option<u32>,
    /// 1 to 500 (default 100).
    #[serde(default)]
    pub per_page: Option<u32>,
}

/// `Users.OAuthStart` request.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OAuthStartRequest {
    /// The provider's name in the settings.
    pub provider: String,
    /// Where the provider sends the browser back: one of the provider's `redirect_urls`,
    /// exactly.
    pub redirect_url: String,
}

/// `Users.OAuthStart` reply.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
pub struct OAuthStartReply {
    /// Send the browser here.
    pub url: String,
    /// The flow's state: the provider hands it back with the code (good for 10 minutes).
    pub state: String,
}

/// `Users.OAuthFinish` request: what the provider handed back.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OAuthFinishRequest {
    /// The `state` query parameter.
    pub state: String,
    /// The `code` query parameter.
    pub code: String,
}

/// A signed-in user's tokens.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
pub struct SignedIn {
    /// The access token (`Authorization: Bearer …`), for 15 minutes.
    pub token: String,
    /// Gives new tokens (`Users.Refresh`), once; the session's, for 30 days from its
    /// last use.
    pub refresh_token: String,
    /// When the access token expires, Unix seconds.
    pub expiry: u64,
    /// The user.
    pub user: Option<User>,
}

/// The answer to a request whose outcome is mailed (the same whoever asks).
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
pub struct Accepted {
    /// What happens next.
    pub message: String,
}

/// `Users.Sessions` reply.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
pub struct SessionsReply {
    /// The user's sessions, newest first.
    pub sessions: Vec<Session>,
}

/// `Users.Export` reply: everything kept about the user.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
pub struct ExportReply {
    /// The user.
    pub user: Option<User>,
    /// Their sessions.
    pub sessions: Vec<Session>,
}

/// `Users.List` reply.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
pub struct UsersReply {
    /// The page's users, by id.
    pub users: Vec<User>,
    /// The page.
    pub page: u32,
    /// Users per page.
    pub per_page: u32,
}

/// An empty reply.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
pub struct Empty {}

/// Where everything of namespace `ns` is kept in the service's table: the server deletes
/// it with the namespace.
pub fn tenant_prefix(ns: &str) -> String {
    format!("{ns}/")
}

fn user_key(ns: &str, id: &str) -> String {
    format!("{ns}/user/{id}")
}

fn email_key(ns: &str, email: &str) -> String {
    format!("{ns}/email/{}", digest(email))
}

fn session_key(ns: &str, uid: &str, sid: &str) -> String {
    format!("{ns}/session/{uid}/{sid}")
}

fn code_key(ns: &str, purpose: Purpose, uid: &str) -> String {
    format!("{ns}/code/{}/{uid}", purpose.as_str())
}

fn settings_key(ns: &str) -> String {
    format!("{ns}/settings")
}

fn failures_key(ns: &str, email: &str) -> String {
    format!("{ns}/failures/{}", digest(email))
}

fn flow_key(ns: &str, state: &str) -> String {
    format!("{ns}/oauth/{}", digest(state))
}

fn link_key(ns: &str, link: &str) -> String {
    format!("{ns}/link/{link}")
}

fn mailed_key(ns: &str, email: &str) -> String {
    format!("{ns}/mailed/{}", digest(email))
}

fn digest(s: &str) -> String {
    sha2::Sha256::digest(s.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

pub(crate) fn bad(msg: impl Into<String>) -> Status {
    Status::bad_request(NAME, msg)
}

fn unauthenticated(msg: &str) -> Status {
    Status::new(Code::Unauthenticated, NAME, msg)
}

fn too_many(msg: &str) -> Status {
    Status::new(Code::ResourceExhausted, NAME, msg)
}

fn decode<T: serde::de::DeserializeOwned>(value: &[u8]) -> Result<T, Status> {
    serde_json::from_slice(value).map_err(|e| Status::internal(NAME, format!("a stored record is unreadable: {e}")))
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, Status> {
    serde_json::to_vec(v).map_err(|e| Status::internal(NAME, e.to_string()))
}

/// `n` random letters and digits.
fn random_id(n: usize) -> Result<String, Status> {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::with_capacity(n);
    while out.len() < n {
        let mut b = [0u8; 32];
        getrandom::fill(&mut b).map_err(|e| Status::internal(NAME, format!("no randomness: {e}")))?;
        // 252 = 7 × 36: no letter is likelier than another.
        out.extend(b.iter().filter(|x| **x < 252).map(|x| ALPHABET[(*x % 36) as usize] as char).take(n - out.len()));
    }
    Ok(out)
}

/// 6 random digits.
fn random_code() -> Result<String, Status> {
    loop {
        let mut b = [0u8; 4];
        getrandom::fill(&mut b).map_err(|e| Status::internal(NAME, format!("no randomness: {e}")))?;
        let n = u32::from_le_bytes(b);
        // Below the largest multiple of a million: every code as likely.
        if n < 4_294_000_000 {
            return Ok(format!("{:06}", n % 1_000_000));
        }
    }
}

/// A secret of 256 random bits, base64url.
pub(crate) fn random_secret() -> Result<String, Status> {
    use base64::Engine as _;
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(|e| Status::internal(NAME, format!("no randomness: {e}")))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b))
}

pub(crate) fn same(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

fn valid_id(id: &str, len: usize) -> bool {
    id.len() == len && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// A single line of at most `max` characters, without control characters.
fn line(what: &str, v: &str, max: usize) -> Result<String, Status> {
    let v = v.trim();
    if v.chars().count() > max || v.chars().any(char::is_control) {
        return Err(bad(format!("{what} must be one line of at most {max} characters")));
    }
    Ok(v.to_string())
}

/// An email address as users are found by: trimmed and lowercased.
fn email(v: &str) -> Result<String, Status> {
    let v = v.trim().to_lowercase();
    let ok = v.len() <= 254
        && v.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && local.len() <= 64
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !domain.contains("..")
                && domain.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        })
        && !v.chars().any(|c| c.is_whitespace() || c.is_control() || "<>()[]\\,;:\"".contains(c))
        && v.matches('@').count() == 1;
    if !ok {
        return Err(bad("email: not an email address (like name@example.com)"));
    }
    Ok(v)
}

fn profile(data: Option<Map<String, Value>>) -> Result<Option<Map<String, Value>>, Status> {
    if let Some(d) = &data
        && encode(d)?.len() > MAX_DATA
    {
        return Err(bad(format!("data is larger than {MAX_DATA} bytes")));
    }
    Ok(data)
}

/// What the handlers share.
struct Shared {
    store: micro::data::StoreHandle,
    sync: micro::data::SyncHandle,
    channel: Result<micro::Channel, Status>,
    client: Result<micro::Client, Status>,
    /// Signups per client address.
    signups: limit::Window,
    /// Attempts (logins, codes, resets) per client address.
    attempts: limit::Window,
    /// Sign-ins through OpenID Connect providers.
    oidc: oidc::Oidc,
}

/// The namespace an end user's call acts in: any but the platform's own.
fn app_namespace(ctx: &Context) -> Result<String, Status> {
    let c = ctx.caller().ok_or_else(|| Status::internal(NAME, "the service runs without an authorizer"))?;
    if c.namespace == micro_core::namespace::DEFAULT {
        return Err(bad("the platform's own namespace has no app users: name your namespace (micro-namespace)"));
    }
    Ok(c.namespace.clone())
}

/// The signed-in app user calling: (namespace, user id).
fn app_user(ctx: &Context) -> Result<(String, String), Status> {
    let c = ctx.caller().ok_or_else(|| Status::internal(NAME, "the service runs without an authorizer"))?;
    match &c.account {
        Some(a) if a.kind == micro_core::auth::AccountType::App && a.namespace == c.namespace => {
            Ok((c.namespace.clone(), a.id.clone()))
        }
        Some(_) => Err(Status::new(Code::PermissionDenied, NAME, "this is for an app user: sign in with Users.Login")),
        None => Err(unauthenticated("sign in first")),
    }
}

/// The namespace a manager (its admins, developers and data accounts) acts in.
fn manager(ctx: &Context) -> Result<String, Status> {
    let c = ctx.caller().ok_or_else(|| Status::internal(NAME, "the service runs without an authorizer"))?;
    match &c.account {
        Some(a) if a.may_use_data_of(&c.namespace) => Ok(c.namespace.clone()),
        Some(_) => Err(Status::new(
            Code::PermissionDenied,
            NAME,
            format!("managing app users needs the data scope (or developer, or admin) of {}", c.namespace),
        )),
        None => Err(unauthenticated("log in first")),
    }
}

fn client_address(ctx: &Context) -> String {
    ctx.metadata(micro::server::CLIENT_ADDRESS).unwrap_or("").to_string()
}

/// What limits count a client by: its address, an IPv6 one by its /64 (a host gets a
/// whole /64 to pick addresses from).
fn client_key(ctx: &Context) -> String {
    let address = client_address(ctx);
    match address.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V6(v6)) if v6.to_ipv4_mapped().is_none() => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
        _ => address,
    }
}

const ACCEPTED: &str = "If the address can have one, a mail with a code is on its way: it is good for 15 minutes.";

impl Shared {
    async fn settings(&self, ns: &str) -> Result<Option<Settings>, Status> {
        match self.store.get(&settings_key(ns)).await {
            Ok(r) => Ok(Some(decode(&r.value)?)),
            Err(e) if e.code() == Code::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The settings of a namespace whose app users are on.
    async fn enabled(&self, ns: &str) -> Result<Settings, Status> {
        self.settings(ns).await?.ok_or_else(|| {
            Status::new(
                Code::FailedPrecondition,
                NAME,
                format!("app users are off in namespace {ns}: a manager turns them on by saving the users settings"),
            )
        })
    }

    async fn load(&self, ns: &str, id: &str) -> Result<Option<Stored>, Status> {
        match self.store.get(&user_key(ns, id)).await {
            Ok(r) => Ok(Some(decode(&r.value)?)),
            Err(e) if e.code() == Code::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn save(&self, ns: &str, stored: &Stored) -> Result<(), Status> {
        self.store.put(&user_key(ns, &stored.user.id), encode(stored)?).await
    }

    /// The user with address `email`.
    async fn find(&self, ns: &str, email: &str) -> Result<Option<Stored>, Status> {
        let id = match self.store.get(&email_key(ns, email)).await {
            Ok(r) => String::from_utf8_lossy(&r.value).to_string(),
            Err(e) if e.code() == Code::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        // An index entry left by an interrupted deletion (or a stale one) finds nobody.
        Ok(self.load(ns, &id).await?.filter(|s| s.user.email == email))
    }

    /// Runs `f` holding the cluster-wide lock `name`.
    async fn locked<T>(
        &self,
        name: &str,
        f: impl std::future::Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        let lock = self.sync.lock(&format!("users/{name}"), Duration::from_secs(30), Duration::from_secs(10)).await?;
        let out = f.await;
        if let Err(e) = self.sync.unlock(&lock).await {
            tracing::warn!(service = NAME, error = %e, "unlocking failed (the lock expires)");
        }
        out
    }

    fn auth(&self) -> Result<pb::auth_client::AuthClient<micro::Channel>, Status> {
        Ok(pb::auth_client::AuthClient::new(self.channel.as_ref().map_err(Clone::clone)?.clone()))
    }

    /// An access token for `user` of `ns`.
    async fn mint(&self, ns: &str, user: &User) -> Result<(String, u64), Status> {
        let req = pb::MintRequest {
            namespace: ns.to_string(),
            id: user.id.clone(),
            name: user.name.clone(),
            verified: user.verified,
            revoke: false,
        };
        let r = self.auth()?.mint(req).await.map_err(|e| micro::status::from_tonic(&e))?.into_inner();
        Ok((r.access_token, r.expiry))
    }

    /// Voids every access token `uid` of `ns` holds (their sessions refresh for new ones).
    async fn revoke(&self, ns: &str, uid: &str) -> Result<(), Status> {
        let req =
            pb::MintRequest { namespace: ns.to_string(), id: uid.to_string(), revoke: true, ..Default::default() };
        self.auth()?.mint(req).await.map_err(|e| micro::status::from_tonic(&e))?;
        Ok(())
    }

    /// A new session for `user`, and its tokens.
    async fn sign_in(&self, ns: &str, signed: Stored, address: &str) -> Result<SignedIn, Status> {
        let (user, epoch) = (signed.user, signed.epoch);
        let t = now();
        let (sid, secret) = (random_id(16)?, random_secret()?);
        let session =
            Session { id: sid.clone(), created: t, used: t, expires: t + SESSION_TTL, address: address.into() };
        let stored = StoredSession { session, secret: digest(&secret), epoch };
        self.store
            .write(
                &Record::new(session_key(ns, &user.id, &sid), encode(&stored)?),
                Some(Duration::from_secs(SESSION_TTL)),
            )
            .await?;
        // The oldest sessions past the most a user holds end.
        let mut all = self.sessions(ns, &user.id).await?;
        if all.len() > MAX_SESSIONS {
            all.sort_by_key(|s| std::cmp::Reverse(s.used));
            for old in &all[MAX_SESSIONS..] {
                self.store.delete(&session_key(ns, &user.id, &old.id)).await?;
            }
        }
        let (token, expiry) = self.mint(ns, &user).await?;
        self.still_current(ns, &user.id, epoch, &sid).await?;
        Ok(SignedIn { token, refresh_token: format!("{}.{sid}.{secret}", user.id), expiry, user: Some(user) })
    }

    /// Refuses a session whose user's sessions all ended (or who was deleted) while it
    /// began or was refreshed: checked after its token is signed, so the ending's
    /// revocation (which comes after the epoch rises) voids the token, or this does.
    async fn still_current(&self, ns: &str, uid: &str, epoch: u64, sid: &str) -> Result<(), Status> {
        if self.load(ns, uid).await?.is_some_and(|s| s.epoch == epoch) {
            return Ok(());
        }
        self.store.delete(&session_key(ns, uid, sid)).await.or_else(gone)?;
        Err(unauthenticated("the sessions ended meanwhile: sign in again"))
    }

    async fn sessions(&self, ns: &str, uid: &str) -> Result<Vec<Session>, Status> {
        let q = Query { prefix: true, ..Default::default() };
        let mut out = Vec::new();
        for r in self.store.read(&format!("{ns}/session/{uid}/"), &q).await? {
            let s: StoredSession = decode(&r.value)?;
            out.push(s.session);
        }
        out.sort_by_key(|s| std::cmp::Reverse(s.created));
        Ok(out)
    }

    /// Changes user `uid` as `change` says and ends every session of theirs (saving the
    /// user with a new epoch, which voids any session that races with the ending), voiding
    /// their access tokens.
    async fn end_all(&self, ns: &str, uid: &str, change: impl FnOnce(&mut Stored) + Send) -> Result<Stored, Status> {
        let stored = self
            .update(ns, uid, |s| {
                change(s);
                s.epoch += 1;
            })
            .await?;
        self.end_sessions(ns, uid).await?;
        Ok(stored)
    }

    /// Changes user `uid` of `ns` as `change` says, on the record as it is at that moment,
    /// one change of a user at a time in the cluster: a change never writes back what
    /// another changed meanwhile (a profile edit racing a new password).
    async fn update(&self, ns: &str, uid: &str, change: impl FnOnce(&mut Stored) + Send) -> Result<Stored, Status> {
        self.locked(&format!("{ns}/user/{uid}"), async {
            let mut s = self.load(ns, uid).await?.ok_or_else(|| unauthenticated("the user is gone: sign in again"))?;
            change(&mut s);
            s.user.updated = now();
            self.save(ns, &s).await?;
            Ok(s)
        })
        .await
    }

    /// Deletes every session of `uid` and voids their access tokens.
    async fn end_sessions(&self, ns: &str, uid: &str) -> Result<(), Status> {
        let q = Query { prefix: true, ..Default::default() };
        for key in self.store.list(&format!("{ns}/session/{uid}/"), &q).await? {
            self.store.delete(&key).await?;
        }
        self.revoke(ns, uid).await
    }

    /// A new code for `uid`, kept as its digest.
    async fn new_code(&self, ns: &str, purpose: Purpose, uid: &str) -> Result<String, Status> {
        let code = random_code()?;
        let stored = StoredCode { digest: digest(&code), expires: now() + CODE_TTL, tries: 0 };
        self.store
            .write(&Record::new(code_key(ns, purpose, uid), encode(&stored)?), Some(Duration::from_secs(CODE_TTL)))
            .await?;
        Ok(code)
    }

    /// Uses up `uid`'s code for `purpose` if `code` is it; a wrong one uses up a try.
    async fn take_code(&self, ns: &str, purpose: Purpose, uid: &str, code: &str) -> Result<bool, Status> {
        let key = code_key(ns, purpose, uid);
        self.locked(&format!("{ns}/code/{uid}"), async {
            let mut stored: StoredCode = match self.store.get(&key).await {
                Ok(r) => decode(&r.value)?,
                Err(e) if e.code() == Code::NotFound => return Ok(false),
                Err(e) => return Err(e),
            };
            if stored.expires <= now() || stored.tries >= CODE_TRIES {
                self.store.delete(&key).await?;
                return Ok(false);
            }
            if same(&digest(code.trim()), &stored.digest) {
                self.store.delete(&key).await?;
                return Ok(true);
            }
            stored.tries += 1;
            let left = stored.expires.saturating_sub(now()).max(1);
            self.store.write(&Record::new(key.clone(), encode(&stored)?), Some(Duration::from_secs(left))).await?;
            Ok(false)
        })
        .await
    }

    /// Whether another mail may go to `email` this hour (and counts it).
    async fn may_mail(&self, ns: &str, email: &str) -> Result<bool, Status> {
        let key = mailed_key(ns, email);
        self.locked(&format!("{ns}/mailed/{}", digest(email)), async {
            let t = now();
            if limit::read(&self.store, &key, 3600, t).await?.n >= MAILS_PER_HOUR {
                return Ok(false);
            }
            limit::add(&self.store, &key, 3600, t).await?;
            Ok(true)
        })
        .await
    }

    /// Mails `to` in the background (the answer never waits for, or tells of, the mail).
    fn mail(&self, ns: &str, settings: &Settings, to: &str, subject: String, text: String) {
        let client = match &self.client {
            Ok(c) => c.clone().namespace(ns),
            Err(e) => {
                tracing::warn!(service = NAME, error = %e, "no client: a mail is not sent");
                return;
            }
        };
        // Every mail of theirs may hold a code or point at an account: its body is shown
        // to nobody (not the namespace's admins reading its outbox). The sender is named
        // after the app when it has a name (else the email product names the namespace:
        // a namespace's name is not checked against the platform's as a sender name is).
        let mut body = serde_json::json!({"to": [to], "subject": subject, "text": text, "sensitive": true});
        if !settings.app_name.is_empty() {
            body["from_name"] = serde_json::json!(settings.app_name);
        }
        tokio::spawn(async move {
            if let Err(e) = client.call_json("email", "Email.Send", &body).await {
                tracing::warn!(service = NAME, error = %e, "mailing an app user failed");
            }
        });
    }

    /// Mails `user` a new code for `purpose` (unless the address had its mails this hour).
    async fn mail_code(&self, ns: &str, settings: &Settings, user: &User, purpose: Purpose) -> Result<(), Status> {
        if !self.may_mail(ns, &user.email).await? {
            return Ok(());
        }
        let code = self.new_code(ns, purpose, &user.id).await?;
        let app = if settings.app_name.is_empty() { ns } else { settings.app_name.as_str() };
        let (subject, what) = match purpose {
            Purpose::Verify => (format!("Confirm your email for {app}"), "confirm your email address"),
            Purpose::Reset => (format!("Reset your {app} password"), "choose a new password"),
            Purpose::Login => (format!("Your {app} sign-in code"), "sign in"),
        };
        let mut text = format!("Your code to {what} is {code}\n\nIt is good for 15 minutes.\n");
        if !settings.link_url.is_empty()
            && let Ok(mut link) = url::Url::parse(&settings.link_url)
        {
            link.query_pairs_mut()
                .append_pair("purpose", purpose.as_str())
                .append_pair("email", &user.email)
                .append_pair("code", &code);
            text.push_str(&format!("\nOr open {link}\n"));
        }
        text.push_str("\nIf you did not ask for it, ignore this mail.\n");
        self.mail(ns, settings, &user.email, subject, text);
        Ok(())
    }

    /// Refuses a namespace without app users, and a client address past its attempts
    /// this minute.
    async fn attempt(&self, ns: &str, ctx: &Context) -> Result<Settings, Status> {
        self.attempt_with(ns, ctx, 1).await
    }

    /// [`Shared::attempt`], with `times` the namespace's attempts a minute (refreshes are
    /// many more than sign-ins).
    async fn attempt_with(&self, ns: &str, ctx: &Context, times: u32) -> Result<Settings, Status> {
        let settings = self.enabled(ns).await?;
        let max = settings.attempts_per_minute.saturating_mul(times);
        let key = format!("{ns}\u{1}{times}\u{1}{}", client_key(ctx));
        if !self.attempts.hit(&key, max, 60, now()) {
            return Err(too_many("too many attempts from your address: wait a minute"));
        }
        Ok(settings)
    }

    async fn signup(&self, ctx: &Context, req: SignupRequest) -> Result<Accepted, Status> {
        let ns = app_namespace(ctx)?;
        let settings = self.enabled(&ns).await?;
        if !settings.signups {
            return Err(Status::new(Code::PermissionDenied, NAME, "signups are closed"));
        }
        let address = email(&req.email)?;
        if let Some(why) = settings.password.refuse(&req.password, &address) {
            return Err(bad(why));
        }
        let name = line("name", req.name.as_deref().unwrap_or(""), 100)?;
        let data = profile(req.data)?.unwrap_or_default();
        let key = format!("{ns}\u{1}{}", client_key(ctx));
        if !self.signups.hit(&key, settings.signups_per_hour, 3600, now()) {
            return Err(too_many("too many signups from your address: try again later"));
        }
        // The password is hashed whether or not the address has a user: the same work,
        // the same answer.
        let hash = password::hash(&req.password).await?;
        let existing = self
            .locked(&format!("{ns}/email/{}", digest(&address)), async {
                if let Some(s) = self.find(&ns, &address).await? {
                    // A confirmed user, or (when the app lets unconfirmed users sign in)
                    // one who may be using the app already: nothing changes; the owner
                    // is told.
                    if s.user.verified || !settings.verify_before_login {
                        return Ok(Some(s.user));
                    }
                    // Nobody proved the address yet: the latest signup's password stands
                    // (so one made first with somebody's address cannot wait for its
                    // owner to confirm it), every session of the earlier ones ends, and
                    // a new code goes to the address.
                    let s = self
                        .end_all(&ns, &s.user.id, move |s| {
                            s.hash = hash;
                            s.user.name = name;
                            s.user.data = data;
                        })
                        .await?;
                    self.mail_code(&ns, &settings, &s.user, Purpose::Verify).await?;
                    return Ok(None);
                }
                let t = now();
                let user = User {
                    id: random_id(15)?,
                    email: address.clone(),
                    name,
                    verified: false,
                    data,
                    created: t,
                    updated: t,
                };
                self.save(&ns, &Stored { user: user.clone(), hash, links: Vec::new(), epoch: 0 }).await?;
                self.store.put(&email_key(&ns, &address), user.id.clone().into_bytes()).await?;
                self.mail_code(&ns, &settings, &user, Purpose::Verify).await?;
                tracing::info!(service = NAME, namespace = %ns, "an app user signed up");
                Ok(None)
            })
            .await?;
        if let Some(user) = existing
            && self.may_mail(&ns, &address).await?
        {
            let app = if settings.app_name.is_empty() { ns.clone() } else { settings.app_name.clone() };
            self.mail(
                &ns,
                &settings,
                &user.email,
                format!("Someone signed up for {app} with your address"),
                format!(
                    "Someone (perhaps you) tried to sign up for {app} with this address, which has an account already.\n\n\
                     If it was you, sign in, or reset your password if you forgot it. If not, ignore this mail: nothing changed.\n"
                ),
            );
        }
        Ok(Accepted { message: "Check your email: a code to confirm the address is on its way.".into() })
    }

    /// Counts a password attempt for `address`, refused past the most: counted before
    /// the password is checked (a success takes its own back, [`Shared::attempt_succeeded`]),
    /// one at a time per address in the cluster, so concurrent guesses cannot slip past
    /// the limit: failures and attempts under way together stay within it.
    async fn password_attempt(&self, ns: &str, address: &str) -> Result<(), Status> {
        let fkey = failures_key(ns, address);
        self.locked(&format!("{ns}/failures/{}", digest(address)), async {
            let t = now();
            if limit::read(&self.store, &fkey, LOCK, t).await?.n >= FAILURES {
                return Err(too_many(
                    "too many failed logins for this address: try again in 15 minutes, or reset the password",
                ));
            }
            limit::add(&self.store, &fkey, LOCK, t).await.map(|_| ())
        })
        .await
    }

    /// Takes back the count of a password attempt that succeeded.
    async fn attempt_succeeded(&self, ns: &str, address: &str) -> Result<(), Status> {
        let fkey = failures_key(ns, address);
        self.locked(&format!("{ns}/failures/{}", digest(address)), limit::sub(&self.store, &fkey, LOCK, now())).await
    }

    async fn login(&self, ctx: &Context, req: LoginRequest) -> Result<SignedIn, Status> {
        let ns = app_namespace(ctx)?;
        let settings = self.attempt(&ns, ctx).await?;
        let address = email(&req.email)?;
        if req.password.len() > password::MAX_LEN {
            return Err(unauthenticated("wrong email or password"));
        }
        self.password_attempt(&ns, &address).await?;
        let found = self.find(&ns, &address).await?;
        let ok = password::verify(&req.password, found.as_ref().map(|s| s.hash.as_str())).await?;
        let Some(stored) = found.filter(|_| ok) else {
            return Err(unauthenticated("wrong email or password"));
        };
        self.attempt_succeeded(&ns, &address).await?;
        if settings.verify_before_login && !stored.user.verified {
            return Err(Status::new(
                Code::FailedPrecondition,
                NAME,
                "confirm your email address first (the mailed code)",
            ));
        }
        self.sign_in(&ns, stored, &client_address(ctx)).await
    }

    /// The session a refresh token names, if the token is its current one; a token that
    /// was its once (used up: stolen, or replayed) ends the session.
    async fn session_of(&self, ns: &str, token: &str) -> Result<Option<(String, StoredSession)>, Status> {
        let Some((uid, sid, secret)) = parse_refresh(token) else { return Ok(None) };
        let key = session_key(ns, uid, sid);
        let stored: StoredSession = match self.store.get(&key).await {
            Ok(r) => decode(&r.value)?,
            Err(e) if e.code() == Code::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        if !same(&digest(secret), &stored.secret) {
            self.store.delete(&key).await?;
            self.revoke(ns, uid).await?;
            tracing::warn!(service = NAME, namespace = %ns, "a used-up refresh token came back: its session ended");
            return Ok(None);
        }
        if stored.session.expires <= now() {
            return Ok(None);
        }
        Ok(Some((uid.to_string(), stored)))
    }

    async fn refresh(&self, ctx: &Context, req: RefreshRequest) -> Result<SignedIn, Status> {
        let ns = app_namespace(ctx)?;
        let invalid = || unauthenticated("invalid or expired refresh token: sign in again");
        let Some((uid, sid, _)) = parse_refresh(&req.refresh_token) else { return Err(invalid()) };
        self.attempt_with(&ns, ctx, 10).await?;
        // One refresh of a session at a time: its read, rotation and write.
        let (uid, sid) = (uid.to_string(), sid.to_string());
        let (user, epoch, secret) = self
            .locked(&format!("{ns}/session/{uid}/{sid}"), async {
                let Some((_, mut stored)) = self.session_of(&ns, &req.refresh_token).await? else {
                    return Err(invalid());
                };
                let user = self.load(&ns, &uid).await?.ok_or_else(invalid)?;
                if user.epoch != stored.epoch {
                    self.store.delete(&session_key(&ns, &uid, &sid)).await.or_else(gone)?;
                    return Err(invalid());
                }
                let secret = random_secret()?;
                let t = now();
                stored.secret = digest(&secret);
                stored.session.used = t;
                stored.session.expires = t + SESSION_TTL;
                self.store
                    .write(
                        &Record::new(session_key(&ns, &uid, &sid), encode(&stored)?),
                        Some(Duration::from_secs(SESSION_TTL)),
                    )
                    .await?;
                Ok((user.user, stored.epoch, secret))
            })
            .await?;
        let (token, expiry) = self.mint(&ns, &user).await?;
        self.still_current(&ns, &uid, epoch, &sid).await?;
        Ok(SignedIn { token, refresh_token: format!("{uid}.{sid}.{secret}"), expiry, user: Some(user) })
    }

    async fn logout(&self, ctx: &Context, req: RefreshRequest) -> Result<Empty, Status> {
        let ns = app_namespace(ctx)?;
        if parse_refresh(&req.refresh_token).is_none() {
            return Ok(Empty {});
        }
        self.attempt_with(&ns, ctx, 10).await?;
        if let Some((uid, stored)) = self.session_of(&ns, &req.refresh_token).await? {
            self.store.delete(&session_key(&ns, &uid, &stored.session.id)).await?;
            self.revoke(&ns, &uid).await?;
        }
        Ok(Empty {})
    }

    /// Mails a code for `purpose` to the user of `req.email`, if there is one.
    async fn request_code(&self, ctx: &Context, req: EmailRequest, purpose: Purpose) -> Result<Accepted, Status> {
        let ns = app_namespace(ctx)?;
        let settings = self.attempt(&ns, ctx).await?;
        let address = email(&req.email)?;
        if let Some(stored) = self.find(&ns, &address).await?
            && !(matches!(purpose, Purpose::Verify) && stored.user.verified)
        {
            self.mail_code(&ns, &settings, &stored.user, purpose).await?;
        }
        Ok(Accepted { message: ACCEPTED.into() })
    }

    /// The user of `address` whose code for `purpose` is `code` (the code used up).
    async fn by_code(&self, ns: &str, address: &str, code: &str, purpose: Purpose) -> Result<Stored, Status> {
        let invalid = || bad("invalid or expired code: ask for a new one");
        if code.trim().len() != 6 || !code.trim().bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("a code is 6 digits"));
        }
        let Some(stored) = self.find(ns, address).await? else {
            // The same steps for an address without a user (a code of nobody's), so the
            // time taken tells nothing.
            let decoy = &digest(address)[..15];
            let _ = self.take_code(ns, purpose, decoy, code).await?;
            return Err(invalid());
        };
        if !self.take_code(ns, purpose, &stored.user.id, code).await? {
            return Err(invalid());
        }
        Ok(stored)
    }

    /// A confirmed address (or a mailed sign-in code): the user is verified and signed in.
    async fn with_code(&self, ctx: &Context, req: CodeRequest, purpose: Purpose) -> Result<SignedIn, Status> {
        let ns = app_namespace(ctx)?;
        self.attempt(&ns, ctx).await?;
        let address = email(&req.email)?;
        // A password given to keep is checked before the code is used up (a typo costs a
        // try, not the code), counted like a login's.
        let kept = match (&req.password, purpose) {
            (Some(p), Purpose::Verify) => {
                if p.len() > password::MAX_LEN {
                    return Err(bad("that is not the password this address signed up with"));
                }
                self.password_attempt(&ns, &address).await?;
                let found = self.find(&ns, &address).await?;
                if !password::verify(p, found.as_ref().map(|s| s.hash.as_str())).await? {
                    return Err(bad(
                        "that is not the password of this address's latest signup: type it again, or confirm without it and reset the password",
                    ));
                }
                self.attempt_succeeded(&ns, &address).await?;
                found.map(|s| s.hash)
            }
            (Some(_), _) => return Err(bad("a password goes only with a code that confirms an address")),
            _ => None,
        };
        let mut stored = self.by_code(&ns, &address, &req.code, purpose).await?;
        if !stored.user.verified {
            // The address's owner, at last: whoever held a session before did not prove it,
            // nor the password (whoever chose it may not own the address: signing up first
            // with somebody's address must not leave a way in once they confirm it), so it
            // no longer works, unless the confirmer proved it just now and nobody changed
            // it since.
            let random = password::hash(&random_secret()?).await?;
            stored = self
                .end_all(&ns, &stored.user.id, move |s| {
                    s.user.verified = true;
                    if kept.as_deref() != Some(s.hash.as_str()) {
                        s.hash = random;
                    }
                })
                .await?;
        }
        let _ = self.store.delete(&failures_key(&ns, &address)).await;
        self.sign_in(&ns, stored, &client_address(ctx)).await
    }

    async fn reset(&self, ctx: &Context, req: ResetRequest) -> Result<SignedIn, Status> {
        let ns = app_namespace(ctx)?;
        let settings = self.attempt(&ns, ctx).await?;
        let address = email(&req.email)?;
        if let Some(why) = settings.password.refuse(&req.password, &address) {
            return Err(bad(why));
        }
        let stored = self.by_code(&ns, &address, &req.code, Purpose::Reset).await?;
        let hash = password::hash(&req.password).await?;
        // The mailed code proves the address.
        let stored = self
            .end_all(&ns, &stored.user.id, move |s| {
                s.hash = hash;
                s.user.verified = true;
            })
            .await?;
        let _ = self.store.delete(&failures_key(&ns, &address)).await;
        self.sign_in(&ns, stored, &client_address(ctx)).await
    }

    /// The calling user's stored record.
    async fn me(&self, ctx: &Context) -> Result<(String, Stored), Status> {
        let (ns, uid) = app_user(ctx)?;
        let stored = self.load(&ns, &uid).await?.ok_or_else(|| unauthenticated("the user is gone: sign in again"))?;
        Ok((ns, stored))
    }

    async fn change_password(&self, ctx: &Context, req: ChangePasswordRequest) -> Result<SignedIn, Status> {
        let (ns, stored) = self.me(ctx).await?;
        let settings = self.attempt(&ns, ctx).await?;
        self.check_password(&ns, &stored, &req.password).await?;
        if let Some(why) = settings.password.refuse(&req.new_password, &stored.user.email) {
            return Err(bad(why));
        }
        let hash = password::hash(&req.new_password).await?;
        let stored = self.end_all(&ns, &stored.user.id, move |s| s.hash = hash).await?;
        self.sign_in(&ns, stored, &client_address(ctx)).await
    }

    /// Checks a signed-in user's current password, counted like a login's.
    async fn check_password(&self, ns: &str, stored: &Stored, password: &str) -> Result<(), Status> {
        self.password_attempt(ns, &stored.user.email).await?;
        if password.len() > password::MAX_LEN || !password::verify(password, Some(&stored.hash)).await? {
            // Not 401: the caller's token is fine (a client would refresh and try again).
            return Err(Status::new(Code::PermissionDenied, NAME, "the current password is wrong"));
        }
        self.attempt_succeeded(ns, &stored.user.email).await
    }

    async fn oauth_start(&self, ctx: &Context, req: OAuthStartRequest) -> Result<OAuthStartReply, Status> {
        let ns = app_namespace(ctx)?;
        let settings = self.attempt(&ns, ctx).await?;
        let p = settings
            .providers
            .iter()
            .find(|p| p.name == req.provider)
            .ok_or_else(|| Status::not_found(NAME, format!("no provider {:?} in {ns}", req.provider)))?;
        if !p.redirect_urls.iter().any(|u| u == &req.redirect_url) {
            return Err(bad("redirect_url is not one of the provider's redirect URLs (they must match exactly)"));
        }
        let state = random_secret()?;
        let (url, flow) = self.oidc.start(p, &req.redirect_url, &state).await?;
        self.store.write(&Record::new(flow_key(&ns, &state), encode(&flow)?), Some(Duration::from_secs(600))).await?;
        Ok(OAuthStartReply { url, state })
    }

    async fn oauth_finish(&self, ctx: &Context, req: OAuthFinishRequest) -> Result<SignedIn, Status> {
        let ns = app_namespace(ctx)?;
        let settings = self.attempt(&ns, ctx).await?;
        if req.state.len() > 100 || req.code.is_empty() || req.code.len() > 2000 {
            return Err(bad("state and code are what the provider handed back"));
        }
        let key = flow_key(&ns, &req.state);
        // The state is used once, whatever happens next.
        let flow: oidc::Flow = self
            .locked(&format!("{ns}/oauth/{}", digest(&req.state)), async {
                let r = match self.store.get(&key).await {
                    Ok(r) => r,
                    Err(e) if e.code() == Code::NotFound => {
                        return Err(bad("unknown, used or expired sign-in: start again"));
                    }
                    Err(e) => return Err(e),
                };
                self.store.delete(&key).await.or_else(gone)?;
                decode(&r.value)
            })
            .await?;
        let p = settings
            .providers
            .iter()
            .find(|p| p.name == flow.provider)
            .ok_or_else(|| bad(format!("the provider {:?} is gone from the settings", flow.provider)))?;
        let id = self.oidc.finish(p, &flow, &req.code).await?;
        let link = format!("{}/{}", p.name, digest(&id.subject));
        let linked = match self.store.get(&link_key(&ns, &link)).await {
            Ok(r) => self.load(&ns, &String::from_utf8_lossy(&r.value)).await?,
            Err(e) if e.code() == Code::NotFound => None,
            Err(e) => return Err(e),
        };
        if let Some(stored) = linked {
            return self.sign_in(&ns, stored, &client_address(ctx)).await;
        }
        let address = match (&id.email, id.email_verified) {
            (Some(e), true) => email(e).map_err(|_| bad("the provider's email address is not one we can use"))?,
            _ => return Err(bad("the provider did not confirm an email address: sign in another way")),
        };
        let random = password::hash(&random_secret()?).await?;
        let user = self
            .locked(&format!("{ns}/email/{}", digest(&address)), async {
                let (mut stored, fresh) = match self.find(&ns, &address).await? {
                    // The provider confirmed the address: the same person.
                    Some(s) => (s, false),
                    None if !settings.signups => return Err(Status::new(Code::PermissionDenied, NAME, "signups are closed")),
                    None => {
                        let t = now();
                        let user = User {
                            id: random_id(15)?,
                            email: address.clone(),
                            name: id.name.clone(),
                            verified: true,
                            data: Map::new(),
                            created: t,
                            updated: t,
                        };
                        self.store.put(&email_key(&ns, &address), user.id.clone().into_bytes()).await?;
                        tracing::info!(service = NAME, namespace = %ns, provider = %p.name, "an app user signed up through a provider");
                        (Stored { user, hash: random.clone(), links: Vec::new(), epoch: 0 }, true)
                    }
                };
                let linked = {
                    let link = link.clone();
                    move |s: &mut Stored| {
                        if !s.links.contains(&link) {
                            s.links.push(link);
                        }
                    }
                };
                let stored = if fresh {
                    // A newcomer: nobody else knows the record yet.
                    linked(&mut stored);
                    self.save(&ns, &stored).await?;
                    stored
                } else if stored.user.verified {
                    self.update(&ns, &stored.user.id, linked).await?
                } else {
                    // The address's owner, at last: sessions of whoever signed up with it
                    // end, and the password they chose no longer works.
                    let random = random.clone();
                    self.end_all(&ns, &stored.user.id, move |s| {
                        linked(s);
                        s.user.verified = true;
                        s.hash = random;
                    })
                    .await?
                };
                self.store.put(&link_key(&ns, &link), stored.user.id.clone().into_bytes()).await?;
                Ok(stored)
            })
            .await?;
        self.sign_in(&ns, user, &client_address(ctx)).await
    }

    /// Deletes user `uid` of `ns` and everything kept about them; their tokens stop.
    async fn erase(&self, ns: &str, uid: &str) -> Result<(), Status> {
        let Some(stored) = self.load(ns, uid).await? else {
            return Err(Status::not_found(NAME, format!("no user {uid}")));
        };
        let address = stored.user.email.clone();
        self.locked(&format!("{ns}/email/{}", digest(&address)), async {
            // The sessions and tokens first, so no moment has a deleted user signed in.
            self.end_sessions(ns, uid).await?;
            for p in [Purpose::Verify, Purpose::Reset, Purpose::Login] {
                self.store.delete(&code_key(ns, p, uid)).await.or_else(gone)?;
            }
            for link in &stored.links {
                self.store.delete(&link_key(ns, link)).await.or_else(gone)?;
            }
            // (Under the user's lock: a change racing the erasure does not bring it back.)
            self.locked(&format!("{ns}/user/{uid}"), async {
                self.store.delete(&user_key(ns, uid)).await.or_else(gone)
            })
            .await?;
            if let Ok(r) = self.store.get(&email_key(ns, &address)).await
                && r.value == uid.as_bytes()
            {
                self.store.delete(&email_key(ns, &address)).await.or_else(gone)?;
            }
            Ok(())
        })
        .await?;
        tracing::info!(service = NAME, namespace = %ns, "an app user was erased");
        Ok(())
    }
}

/// A refresh token's parts: user id, session id, secret.
fn parse_refresh(token: &str) -> Option<(&str, &str, &str)> {
    let mut parts = token.trim().splitn(3, '.');
    let (uid, sid, secret) = (parts.next()?, parts.next()?, parts.next()?);
    (valid_id(uid, 15) && valid_id(sid, 16) && !secret.is_empty() && secret.len() <= 64).then_some((uid, sid, secret))
}

fn gone(e: Status) -> Result<(), Status> {
    if e.code() == Code::NotFound { Ok(()) } else { Err(e) }
}

/// Users' handlers on `service` (named [`NAME`], configured by the host: its server and
/// an account of `micro` holding the issuer scope).
pub fn service_with(service: Service) -> Service {
    let service = service.platform();
    let sh = Arc::new(Shared {
        store: service.store(),
        sync: service.sync(),
        channel: service.channel(),
        client: service.client(),
        signups: Default::default(),
        attempts: Default::default(),
        oidc: oidc::Oidc::new(std::env::var("MICRO_USERS_OIDC_PRIVATE").is_ok_and(|v| v == "1" || v == "true")),
    });
    macro_rules! handle {
        ($service:expr, $endpoint:literal, |$sh:ident, $ctx:ident, $req:ident: $ty:ty| $body:expr) => {{
            let shared = sh.clone();
            $service.handle($endpoint, move |$ctx: Context, $req: $ty| {
                let $sh = shared.clone();
                async move { $body }
            })
        }};
    }
    let s = service.version(env!("CARGO_PKG_VERSION"));
    let s = handle!(s, "Users.Signup", |sh, ctx, req: SignupRequest| sh.signup(&ctx, req).await);
    let s = handle!(s, "Users.Login", |sh, ctx, req: LoginRequest| sh.login(&ctx, req).await);
    let s = handle!(s, "Users.Refresh", |sh, ctx, req: RefreshRequest| sh.refresh(&ctx, req).await);
    let s = handle!(s, "Users.Logout", |sh, ctx, req: RefreshRequest| sh.logout(&ctx, req).await);
    let s = handle!(s, "Users.RequestVerification", |sh, ctx, req: EmailRequest| sh
        .request_code(&ctx, req, Purpose::Verify)
        .await);
    let s = handle!(s, "Users.Verify", |sh, ctx, req: CodeRequest| sh.with_code(&ctx, req, Purpose::Verify).await);
    let s =
        handle!(s, "Users.RequestReset", |sh, ctx, req: EmailRequest| sh.request_code(&ctx, req, Purpose::Reset).await);
    let s = handle!(s, "Users.Reset", |sh, ctx, req: ResetRequest| sh.reset(&ctx, req).await);
    let s =
        handle!(s, "Users.RequestCode", |sh, ctx, req: EmailRequest| sh.request_code(&ctx, req, Purpose::Login).await);
    let s =
        handle!(s, "Users.LoginWithCode", |sh, ctx, req: CodeRequest| sh.with_code(&ctx, req, Purpose::Login).await);
    let s = handle!(s, "Users.OAuthStart", |sh, ctx, req: OAuthStartRequest| sh.oauth_start(&ctx, req).await);
    let s = handle!(s, "Users.OAuthFinish", |sh, ctx, req: OAuthFinishRequest| sh.oauth_finish(&ctx, req).await);
    let s = handle!(s, "Users.Me", |sh, ctx, _req: Empty| sh.me(&ctx).await.map(|(_, s)| s.user));
    let s = handle!(s, "Users.UpdateMe", |sh, ctx, req: UpdateRequest| {
        let (ns, uid) = app_user(&ctx)?;
        let name = req.name.as_deref().map(|n| line("name", n, 100)).transpose()?;
        let data = profile(req.data)?;
        let stored = sh
            .update(&ns, &uid, move |s| {
                if let Some(n) = name {
                    s.user.name = n;
                }
                if let Some(d) = data {
                    s.user.data = d;
                }
            })
            .await?;
        Ok::<_, Status>(stored.user)
    });
    let s =
        handle!(s, "Users.ChangePassword", |sh, ctx, req: ChangePasswordRequest| sh.change_password(&ctx, req).await);
    let s = handle!(s, "Users.DeleteMe", |sh, ctx, req: DeleteMeRequest| {
        let (ns, stored) = sh.me(&ctx).await?;
        sh.attempt(&ns, &ctx).await?;
        sh.check_password(&ns, &stored, &req.password).await?;
        sh.erase(&ns, &stored.user.id).await?;
        Ok(Empty {})
    });
    let s = handle!(s, "Users.Sessions", |sh, ctx, _req: Empty| {
        let (ns, uid) = app_user(&ctx)?;
        Ok::<_, Status>(SessionsReply { sessions: sh.sessions(&ns, &uid).await? })
    });
    let s = handle!(s, "Users.EndSession", |sh, ctx, req: IdRequest| {
        let (ns, uid) = app_user(&ctx)?;
        if !valid_id(&req.id, 16) {
            return Err(bad(format!("invalid session id {:?}", req.id)));
        }
        match sh.store.delete(&session_key(&ns, &uid, &req.id)).await {
            Ok(()) => {}
            Err(e) if e.code() == Code::NotFound => {
                return Err(Status::not_found(NAME, format!("no session {}", req.id)));
            }
            Err(e) => return Err(e),
        }
        // Its access token too (the other sessions refresh for new ones).
        sh.revoke(&ns, &uid).await?;
        Ok(Empty {})
    });
    let s = handle!(s, "Users.Export", |sh, ctx, _req: Empty| {
        let (ns, stored) = sh.me(&ctx).await?;
        let sessions = sh.sessions(&ns, &stored.user.id).await?;
        Ok::<_, Status>(ExportReply { user: Some(stored.user), sessions })
    });
    let s = handle!(s, "Users.List", |sh, ctx, req: ListRequest| {
        let ns = manager(&ctx)?;
        let per_page = req.per_page.unwrap_or(100).clamp(1, MAX_PAGE);
        let page = req.page.unwrap_or(1).max(1);
        let offset = (page - 1).checked_mul(per_page).ok_or_else(|| bad("page is too far"))?;
        let q = Query { prefix: true, limit: per_page, offset, order: Order::Asc, ..Default::default() };
        let mut users = Vec::new();
        for r in sh.store.read(&format!("{ns}/user/"), &q).await? {
            users.push(decode::<Stored>(&r.value)?.user);
        }
        Ok::<_, Status>(UsersReply { users, page, per_page })
    });
    let s = handle!(s, "Users.Get", |sh, ctx, req: IdRequest| {
        let ns = manager(&ctx)?;
        if !valid_id(&req.id, 15) {
            return Err(bad(format!("invalid user id {:?}", req.id)));
        }
        sh.load(&ns, &req.id)
            .await?
            .map(|s| s.user)
            .ok_or_else(|| Status::not_found(NAME, format!("no user {}", req.id)))
    });
    let s = handle!(s, "Users.Delete", |sh, ctx, req: IdRequest| {
        let ns = manager(&ctx)?;
        if !valid_id(&req.id, 15) {
            return Err(bad(format!("invalid user id {:?}", req.id)));
        }
        sh.erase(&ns, &req.id).await?;
        Ok(Empty {})
    });
    let s = handle!(s, "Users.Settings", |sh, ctx, _req: Empty| {
        let ns = manager(&ctx)?;
        Ok::<_, Status>(sh.settings(&ns).await?.unwrap_or_default().shown())
    });
    let s = handle!(s, "Users.SaveSettings", |sh, ctx, req: Settings| {
        let ns = manager(&ctx)?;
        if ns == micro_core::namespace::DEFAULT {
            return Err(bad("the platform's own namespace has no app users"));
        }
        let mut req = req;
        let before = sh.settings(&ns).await?;
        req.validate(sh.oidc.private, before.as_ref())?;
        sh.store.put(&settings_key(&ns), encode(&req)?).await?;
        Ok(req.shown())
    });
    let open = [
        "Users.Signup",
        "Users.Login",
        "Users.Refresh",
        "Users.Logout",
        "Users.RequestVerification",
        "Users.Verify",
        "Users.RequestReset",
        "Users.Reset",
        "Users.RequestCode",
        "Users.LoginWithCode",
        "Users.OAuthStart",
        "Users.OAuthFinish",
        "Users.Me",
        "Users.UpdateMe",
        "Users.ChangePassword",
        "Users.DeleteMe",
        "Users.Sessions",
        "Users.EndSession",
        "Users.Export",
    ];
    let s = open.iter().fold(s, |s, e| s.open(e));
    [
        ("POST /users/v1/signup", "Users.Signup"),
        ("POST /users/v1/login", "Users.Login"),
        ("POST /users/v1/refresh", "Users.Refresh"),
        ("POST /users/v1/logout", "Users.Logout"),
        ("POST /users/v1/verification", "Users.RequestVerification"),
        ("POST /users/v1/verify", "Users.Verify"),
        ("POST /users/v1/reset", "Users.RequestReset"),
        ("POST /users/v1/reset/confirm", "Users.Reset"),
        ("POST /users/v1/code", "Users.RequestCode"),
        ("POST /users/v1/code/login", "Users.LoginWithCode"),
        ("POST /users/v1/oauth/start", "Users.OAuthStart"),
        ("POST /users/v1/oauth/finish", "Users.OAuthFinish"),
        ("GET /users/v1/me", "Users.Me"),
        ("PATCH /users/v1/me", "Users.UpdateMe"),
        ("POST /users/v1/me/password", "Users.ChangePassword"),
        ("POST /users/v1/me/delete", "Users.DeleteMe"),
        ("GET /users/v1/me/sessions", "Users.Sessions"),
        ("DELETE /users/v1/me/sessions/{id}", "Users.EndSession"),
        ("GET /users/v1/me/export", "Users.Export"),
        ("GET /users/v1/users", "Users.List"),
        ("GET /users/v1/users/{id}", "Users.Get"),
        ("DELETE /users/v1/users/{id}", "Users.Delete"),
        ("GET /users/v1/settings", "Users.Settings"),
        ("POST /users/v1/settings", "Users.SaveSettings"),
    ]
    .iter()
    .fold(s, |s, (route, endpoint)| s.route(route, endpoint))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_checked_and_lowercased() {
        assert_eq!(email("  Ann@Example.COM ").unwrap(), "ann@example.com");
        for bad in [
            "",
            "ann",
            "ann@",
            "@example.com",
            "ann@example",
            "a b@example.com",
            "ann@ex..com",
            "a@b@c.com",
            "Ann <ann@example.com>",
            "ann@exa_mple.com",
        ] {
            assert!(email(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ids_codes_and_secrets_are_random_and_well_formed() {
        let a = random_id(15).unwrap();
        assert!(valid_id(&a, 15), "{a}");
        assert_ne!(a, random_id(15).unwrap());
        let c = random_code().unwrap();
        assert!(c.len() == 6 && c.bytes().all(|b| b.is_ascii_digit()), "{c}");
        assert_eq!(random_secret().unwrap().len(), 43);
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("abc", "ab"));
    }

    #[test]
    fn settings_are_validated() {
        assert!(Settings::default().validate(false, None).is_ok());
        let mut bad_url = Settings { link_url: "javascript:alert(1)".into(), ..Default::default() };
        assert!(bad_url.validate(false, None).is_err());
        let mut bad_name = Settings { app_name: "Shop <evil@x.com>".into(), ..Default::default() };
        assert!(bad_name.validate(false, None).is_err());
        assert!(Settings { signups_per_hour: 0, ..Default::default() }.validate(false, None).is_err());
        // A secret saved as shown stays what it was; settings never show it.
        let provider = oidc::Provider {
            name: "corp".into(),
            preset: None,
            issuer: "https://id.example.com".into(),
            client_id: "app".into(),
            client_secret: "s3cret".into(),
            scopes: vec![],
            redirect_urls: vec!["https://shop.example/auth".into()],
        };
        let mut before = Settings { providers: vec![provider], ..Default::default() };
        before.validate(false, None).unwrap();
        let mut shown = before.clone().shown();
        assert_eq!(shown.providers[0].client_secret, oidc::HIDDEN);
        shown.validate(false, Some(&before)).unwrap();
        assert_eq!(shown.providers[0].client_secret, "s3cret");
        let mut twice = Settings {
            providers: vec![before.providers[0].clone(), before.providers[0].clone()],
            ..Default::default()
        };
        assert!(twice.validate(false, None).is_err());
    }
}
