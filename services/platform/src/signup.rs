//! Signup: the waitlist, its codes, invites in batches, and a namespace for each newcomer.

use crate::{NAME, Shared, bad, decode, encode, now, operator};
use micro::proto::auth as pb;
use micro::{Code, Context, Service, Status};
use micro_core::store::Query;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::Digest;
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;

/// How long a verification code lasts.
const VERIFY_TTL: u64 = 30 * 60;
/// How long an invite lasts.
const INVITE_TTL: u64 = 7 * 86_400;
/// Wrong tries before a code is void.
const MAX_TRIES: u32 = 5;
/// Mails to one address per hour.
const MAILS_PER_HOUR: usize = 3;
/// The most one `Platform.Invite` invites.
const MAX_BATCH: u32 = 1000;
/// The shortest password.
const MIN_PASSWORD: usize = 10;

/// Domains of throwaway mailboxes, refused at the door.
const DISPOSABLE: &[&str] = &[
    "mailinator.com",
    "guerrillamail.com",
    "guerrillamail.net",
    "sharklasers.com",
    "10minutemail.com",
    "tempmail.com",
    "temp-mail.org",
    "yopmail.com",
    "trashmail.com",
    "getnada.com",
    "dispostable.com",
    "maildrop.cc",
    "throwawaymail.com",
    "fakeinbox.com",
    "mailnesia.com",
    "example.invalid",
];

/// Names no newcomer's namespace takes.
const RESERVED: &[&str] = &[
    "account",
    "accounts",
    "admin",
    "api",
    "app",
    "apps",
    "auth",
    "billing",
    "dashboard",
    "default",
    "email",
    "help",
    "internal",
    "login",
    "logout",
    "m3o",
    "mail",
    "micro",
    "oauth",
    "platform",
    "public",
    "root",
    "secure",
    "security",
    "signin",
    "signup",
    "sso",
    "static",
    "status",
    "support",
    "system",
    "team",
    "teams",
    "web",
    "www",
];

/// Whether no newcomer's namespace may take `name`.
pub(crate) fn reserved(name: &str) -> bool {
    RESERVED.contains(&name)
}

/// Where an address is on the way in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum EntryState {
    /// Joined; its code not confirmed yet.
    Unverified,
    /// Confirmed: waiting for an invite.
    Waiting,
    /// Invited: may sign up.
    Invited,
    /// Signed up: has a namespace.
    Joined,
}

/// A code, kept as a hash.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Secret {
    hash: String,
    expires: u64,
    tries: u32,
}

/// An address on the waitlist.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Entry {
    /// The address, lowercase, without a `+tag`.
    pub email: String,
    /// Where it is.
    pub state: EntryState,
    /// When it first joined, Unix seconds.
    pub joined: u64,
    /// When its code was confirmed.
    #[serde(default)]
    pub verified: Option<u64>,
    /// When it was (last) invited.
    #[serde(default)]
    pub invited: Option<u64>,
    /// Who invited it: `operator` or `namespace/account`.
    #[serde(default)]
    pub invited_by: Option<String>,
    /// Its namespace, once joined.
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    code: Option<Secret>,
    #[serde(default)]
    invite: Option<Secret>,
    /// When mail went to it (the last hour's).
    #[serde(default)]
    sent: Vec<u64>,
}

impl Entry {
    /// A new entry of `email`, joining now in `state`.
    fn new(email: &str, state: EntryState) -> Entry {
        Entry {
            email: email.to_string(),
            state,
            joined: now(),
            verified: None,
            invited: None,
            invited_by: None,
            namespace: None,
            code: None,
            invite: None,
            sent: Vec::new(),
        }
    }
}

/// An entry as operators see it.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct EntryView {
    /// The address.
    pub email: String,
    /// Where it is.
    pub state: EntryState,
    /// When it joined, Unix seconds.
    pub joined: u64,
    /// When it confirmed its code.
    pub verified: Option<u64>,
    /// When it was invited.
    pub invited: Option<u64>,
    /// Who invited it.
    pub invited_by: Option<String>,
    /// Its namespace, once joined.
    pub namespace: Option<String>,
}

impl From<&Entry> for EntryView {
    fn from(e: &Entry) -> EntryView {
        EntryView {
            email: e.email.clone(),
            state: e.state,
            joined: e.joined,
            verified: e.verified,
            invited: e.invited,
            invited_by: e.invited_by.clone(),
            namespace: e.namespace.clone(),
        }
    }
}

/// How signup works, set by the operators.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Settings {
    /// Invite-only (default): a verified address waits for an invite. Off: it is invited at once.
    pub invite_only: bool,
    /// How many "invite the next batch" invites (default 10).
    pub batch: u32,
    /// How many invites each user may give out (default 3).
    pub invites_per_user: u32,
    /// Joins per client address per hour (default 10).
    #[serde(default = "default_per_address")]
    pub joins_per_address: u32,
    /// Joins per email domain per hour (default 30).
    #[serde(default = "default_per_domain")]
    pub joins_per_domain: u32,
}

fn default_per_address() -> u32 {
    10
}

fn default_per_domain() -> u32 {
    30
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            invite_only: true,
            batch: 10,
            invites_per_user: 3,
            joins_per_address: default_per_address(),
            joins_per_domain: default_per_domain(),
        }
    }
}

/// `Signup.Join` request.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    /// Your email address.
    pub email: String,
}

/// A reply that says what happens next.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
pub struct Message {
    /// What happens next.
    pub message: String,
}

/// `Signup.Verify` request.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    /// Your email address.
    pub email: String,
    /// The code mailed to it.
    pub code: String,
}

/// `Signup.Verify` reply.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct VerifyReply {
    /// `waiting` (for an invite) or `invited` (open signup: the invite is in the mail).
    pub state: EntryState,
    /// What happens next.
    pub message: String,
}

/// `Signup.Accept` request.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AcceptRequest {
    /// The invited address.
    pub email: String,
    /// The invite code mailed to it.
    pub code: String,
    /// Your password (10 to 200 characters).
    pub password: String,
}

/// `Signup.Accept` reply.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct AcceptReply {
    /// Your namespace.
    pub namespace: String,
    /// Your account's id in it (your address).
    pub id: String,
    /// How to log in with the CLI.
    pub login: String,
}

/// `Platform.Waitlist` request.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WaitlistRequest {
    /// Only entries in this state.
    #[serde(default)]
    pub state: Option<EntryState>,
}

/// `Platform.Waitlist` reply.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
pub struct WaitlistReply {
    /// In the order they confirmed their address (unconfirmed ones last).
    pub entries: Vec<EntryView>,
}

/// `Platform.Invite` request: the next `count` waiting (default: the batch size), or the
/// `emails` named.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InviteRequest {
    /// How many of the longest-waiting to invite.
    #[serde(default)]
    pub count: Option<u32>,
    /// These addresses (each waiting, or invited already: invited again with a new code).
    #[serde(default)]
    pub emails: Option<Vec<String>>,
}

/// `Platform.Invite` reply.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
pub struct InviteReply {
    /// Who was invited.
    pub invited: Vec<String>,
    /// Who was not, and why.
    pub skipped: Vec<String>,
}

/// `Platform.Settings` request: the fields given change; none reads them.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SettingsRequest {
    /// Invite-only on or off.
    #[serde(default)]
    pub invite_only: Option<bool>,
    /// The batch size, 1 to 1000.
    #[serde(default)]
    pub batch: Option<u32>,
    /// Invites each user may give, 0 to 1000.
    #[serde(default)]
    pub invites_per_user: Option<u32>,
    /// Joins per client address per hour, 1 to 100000.
    #[serde(default)]
    pub joins_per_address: Option<u32>,
    /// Joins per email domain per hour, 1 to 100000.
    #[serde(default)]
    pub joins_per_domain: Option<u32>,
}

/// `Platform.InviteFriend` reply.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
pub struct FriendReply {
    /// Invites you have left.
    pub left: u32,
}

/// The SHA-256 of `s`, in hex.
pub(crate) fn digest(s: &str) -> String {
    sha2::Sha256::digest(s.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

fn entry_key(email: &str) -> String {
    format!("_entry/{}", &digest(email)[..32])
}

const SETTINGS_KEY: &str = "_settings";

fn random(n: usize) -> Result<Vec<u8>, Status> {
    let mut b = vec![0u8; n];
    getrandom::fill(&mut b).map_err(|e| Status::internal(NAME, format!("no randomness: {e}")))?;
    Ok(b)
}

/// A code and its stored form, bound to the address it was made for.
fn secret(email: &str, code: &str, ttl: u64) -> Secret {
    Secret { hash: digest(&format!("{email}\n{code}")), expires: now() + ttl, tries: 0 }
}

/// Checks `code` against `s` (for `email`): counts a wrong try; says why it fails.
fn check(s: &mut Secret, email: &str, code: &str, what: &str) -> Result<(), Status> {
    if now() > s.expires {
        return Err(bad(format!("the {what} expired")));
    }
    if s.tries >= MAX_TRIES {
        return Err(bad(format!("too many wrong tries: the {what} is void")));
    }
    let given = digest(&format!("{email}\n{}", code.trim()));
    if bool::from(given.as_bytes().ct_eq(s.hash.as_bytes())) {
        return Ok(());
    }
    s.tries += 1;
    Err(bad(format!("wrong {what} ({} tries left)", MAX_TRIES - s.tries)))
}

/// An address as the waitlist keeps it: lowercase, without a `+tag`; refused when it is
/// not an address or a throwaway one.
pub(crate) fn canonical(raw: &str) -> Result<String, Status> {
    let raw = raw.trim().to_ascii_lowercase();
    let invalid = || bad(format!("{raw:?} is not an email address"));
    if raw.len() > 254 {
        return Err(invalid());
    }
    let (local, domain) = raw.split_once('@').ok_or_else(invalid)?;
    let local = local.split('+').next().unwrap_or("");
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && !local.starts_with('.')
        && !local.ends_with('.')
        && local.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-!#$%&'*=?^`{|}~".contains(&b));
    let labels: Vec<&str> = domain.split('.').collect();
    let domain_ok = labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        && labels.last().is_some_and(|t| t.len() >= 2 && t.bytes().all(|b| b.is_ascii_alphabetic()));
    if !local_ok || !domain_ok {
        return Err(invalid());
    }
    if DISPOSABLE.iter().any(|d| domain == *d || domain.ends_with(&format!(".{d}"))) {
        return Err(bad(format!("addresses at {domain} are throwaway mailboxes: use one you keep")));
    }
    Ok(format!("{local}@{domain}"))
}

/// The namespace name an address suggests: its local part in a-z, 0-9 and '-'.
pub(crate) fn namespace_base(email: &str) -> String {
    let local = email.split('@').next().unwrap_or("");
    let mut name = String::new();
    for c in local.chars() {
        if c.is_ascii_alphanumeric() {
            name.push(c.to_ascii_lowercase());
        } else if !name.ends_with('-') {
            name.push('-');
        }
    }
    let mut name = name.trim_matches('-').chars().take(40).collect::<String>().trim_end_matches('-').to_string();
    if name.is_empty() {
        name = "user".into();
    }
    if reserved(&name) {
        name.push_str("-user");
    }
    name
}

impl Shared {
    async fn settings(&self) -> Result<Settings, Status> {
        match self.store.get(SETTINGS_KEY).await {
            Ok(r) => decode(&r.value),
            Err(e) if e.code() == Code::NotFound => Ok(Settings::default()),
            Err(e) => Err(e),
        }
    }

    /// The waitlist entry of `email` (canonical).
    pub(crate) async fn entry_of(&self, email: &str) -> Result<Option<Entry>, Status> {
        match self.store.get(&entry_key(email)).await {
            Ok(r) => Ok(Some(decode(&r.value)?)),
            Err(e) if e.code() == Code::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn save(&self, e: &Entry) -> Result<(), Status> {
        self.store.put(&entry_key(&e.email), encode(e)?).await
    }

    /// Runs `f` holding the lock of `id`, so no two calls act on one entry at once.
    pub(crate) async fn locked<T, F: std::future::Future<Output = Result<T, Status>>>(
        &self,
        id: &str,
        f: F,
    ) -> Result<T, Status> {
        let lock = self.sync.lock(&format!("platform/{id}"), Duration::from_secs(120), Duration::from_secs(10)).await?;
        let result = f.await;
        let _ = self.sync.unlock(&lock).await;
        result
    }

    /// Counts one more event under `key` this hour; refuses past `limit`.
    pub(crate) async fn count(&self, key: &str, limit: u32, what: &str) -> Result<(), Status> {
        let key = format!("_count/{key}/{}", now() / 3600);
        let used: u32 = match self.store.get(&key).await {
            Ok(r) => decode(&r.value)?,
            Err(e) if e.code() == Code::NotFound => 0,
            Err(e) => return Err(e),
        };
        if used >= limit {
            return Err(Status::new(
                Code::ResourceExhausted,
                NAME,
                format!("too many signups {what}: try again in an hour"),
            ));
        }
        let record = micro_core::store::Record::new(key, encode(&(used + 1))?);
        self.store.write(&record, Some(Duration::from_secs(7200))).await
    }

    /// Notes a mail to `e`; refuses past the hourly limit.
    fn may_mail(e: &mut Entry) -> Result<(), Status> {
        let t = now();
        e.sent.retain(|s| t.saturating_sub(*s) < 3600);
        if e.sent.len() >= MAILS_PER_HOUR {
            return Err(Status::new(
                Code::ResourceExhausted,
                NAME,
                format!("{} was mailed {MAILS_PER_HOUR} times this hour: check the mail, or try later", e.email),
            ));
        }
        e.sent.push(t);
        Ok(())
    }

    /// Mails `to`. A failure says no more than that (a bounce's reason is not a stranger's
    /// business); the log has the rest.
    pub(crate) async fn send_mail(&self, to: &str, subject: &str, text: String) -> Result<(), Status> {
        let client = self.client.as_ref().map_err(Clone::clone)?;
        match client.call_json("email", "Email.Send", &json!({"to": [to], "subject": subject, "text": text})).await {
            Ok(_) => Ok(()),
            Err(e) => {
                tracing::warn!(service = NAME, error = %e, "mailing a signup message failed");
                Err(Status::new(
                    Code::Unavailable,
                    NAME,
                    format!("we could not mail {to}: try again later, or another address"),
                ))
            }
        }
    }

    /// Gives `e` a new invite code, saves it and mails it.
    async fn invite(&self, e: &mut Entry, by: &str) -> Result<(), Status> {
        let code: String = random(16)?.iter().map(|b| format!("{b:02x}")).collect();
        e.invite = Some(secret(&e.email, &code, INVITE_TTL));
        e.state = EntryState::Invited;
        e.invited = Some(now());
        e.invited_by = Some(by.to_string());
        e.sent.push(now());
        self.save(e).await?;
        let link = match &self.url {
            Some(u) => format!("Sign up: {u}/signup/accept?email={}&code={code}\n\n", urlencode(&e.email)),
            None => String::new(),
        };
        let text = format!(
            "You are invited to the platform.\n\nYour invite code: {code}\nIt is yours alone and works once, for 7 days.\n\n{link}\
             With the CLI: micro platform signup accept --email {} --code {code} --password '…'\n",
            e.email
        );
        self.send_mail(&e.email, "You are invited", text).await
    }

    async fn join(&self, ctx: &Context, req: JoinRequest) -> Result<Message, Status> {
        let email = canonical(&req.email)?;
        let settings = self.settings().await?;
        // The gateway and the proxy stamp the client's address; a call without one came
        // straight to this service's node, past the edges.
        let address = ctx
            .metadata(micro::server::CLIENT_ADDRESS)
            .and_then(|a| a.parse::<std::net::IpAddr>().ok())
            .ok_or_else(|| Status::new(Code::PermissionDenied, NAME, "sign up through the gateway or the proxy"))?;
        let per_address = format!("address/{}", &digest(&network(address))[..16]);
        self.count(&per_address, settings.joins_per_address, "from your address").await?;
        let domain = email.split('@').nth(1).unwrap_or_default().to_string();
        // Only a new address counts against its domain: sending a code again does not.
        if self.entry_of(&email).await?.is_none() {
            self.count(&format!("domain/{domain}"), settings.joins_per_domain, &format!("at {domain}")).await?;
        }
        let key = entry_key(&email);
        let (to, subject, text) = self
            .locked(&key, async {
                let mut e = self.entry_of(&email).await?.unwrap_or(Entry::new(&email, EntryState::Unverified));
                Self::may_mail(&mut e)?;
                let mail = match e.state {
                    EntryState::Unverified => {
                        let n = u32::from_be_bytes(random(4)?.try_into().unwrap_or([0; 4])) % 1_000_000;
                        let code = format!("{n:06}");
                        e.code = Some(secret(&email, &code, VERIFY_TTL));
                        (
                            format!("Your code: {code}"),
                            format!(
                                "Your code to join the platform's waitlist is {code}.\nIt expires in 30 minutes.\n\n\
                                 If you did not ask for it, ignore this mail."
                            ),
                        )
                    }
                    EntryState::Waiting | EntryState::Invited => (
                        "You are on the waitlist".to_string(),
                        "You are on the waitlist already: your invite comes by mail.".to_string(),
                    ),
                    EntryState::Joined => (
                        "You have an account".to_string(),
                        format!(
                            "You have an account already, in namespace {}: log in with this address.",
                            e.namespace.as_deref().unwrap_or("?")
                        ),
                    ),
                };
                self.save(&e).await?;
                Ok((email.clone(), mail.0, mail.1))
            })
            .await?;
        self.send_mail(&to, &subject, text).await?;
        // The same answer whatever the address's state: nobody learns who is listed.
        Ok(Message { message: format!("check your mail at {email}: confirm the code with Signup.Verify") })
    }

    async fn verify(&self, req: VerifyRequest) -> Result<VerifyReply, Status> {
        let email = canonical(&req.email)?;
        let settings = self.settings().await?;
        self.locked(&entry_key(&email), async {
            let mut e =
                self.entry_of(&email).await?.ok_or_else(|| bad("no code waits for this address: join first"))?;
            let Some(mut code) = e.code.clone().filter(|_| e.state == EntryState::Unverified) else {
                return Err(bad("no code waits for this address: join first"));
            };
            let checked = check(&mut code, &email, &req.code, "code");
            e.code = Some(code);
            if let Err(err) = checked {
                self.save(&e).await?;
                return Err(err);
            }
            e.code = None;
            e.state = EntryState::Waiting;
            e.verified = Some(now());
            if settings.invite_only {
                self.save(&e).await?;
                return Ok(VerifyReply {
                    state: e.state,
                    message: "you are on the waitlist: your invite comes by mail".into(),
                });
            }
            self.invite(&mut e, "open signup").await?;
            Ok(VerifyReply { state: e.state, message: "your invite is in the mail".into() })
        })
        .await
    }

    async fn accept(&self, req: AcceptRequest) -> Result<AcceptReply, Status> {
        let email = canonical(&req.email)?;
        let n = req.password.chars().count();
        if !(MIN_PASSWORD..=200).contains(&n) {
            return Err(bad(format!("the password must be {MIN_PASSWORD} to 200 characters")));
        }
        self.locked(&entry_key(&email), async {
            let refused = || bad("no invite waits for this address");
            let mut e = self.entry_of(&email).await?.ok_or_else(refused)?;
            let Some(mut invite) = e.invite.clone().filter(|_| e.state == EntryState::Invited) else {
                return Err(refused());
            };
            let checked = check(&mut invite, &email, &req.code, "invite code");
            e.invite = Some(invite);
            if let Err(err) = checked {
                self.save(&e).await?;
                return Err(err);
            }
            let namespace = self.create_tenant(&email, &req.password).await?;
            e.invite = None;
            e.state = EntryState::Joined;
            e.namespace = Some(namespace.clone());
            self.save(&e).await?;
            Ok(AcceptReply {
                login: format!("micro --namespace {namespace} login --id {email}"),
                namespace,
                id: email.clone(),
            })
        })
        .await
    }

    /// Makes a namespace of its own for `email` and its owner account there.
    async fn create_tenant(&self, email: &str, password: &str) -> Result<String, Status> {
        let channel = self.channel.as_ref().map_err(Clone::clone)?;
        let mut auth = pb::auth_client::AuthClient::new(channel.clone());
        let base = namespace_base(email);
        // One namespace is made at a time in the cluster, so two newcomers never share one.
        let lock = self.sync.lock("platform/namespaces", Duration::from_secs(60), Duration::from_secs(30)).await?;
        let made = self.make_namespace(&mut auth, &base).await;
        let _ = self.sync.unlock(&lock).await;
        let namespace = made?;
        let account = pb::GenerateRequest {
            id: email.to_string(),
            name: email.to_string(),
            r#type: "user".into(),
            scopes: vec![micro_core::auth::ADMIN_SCOPE.into()],
            metadata: [("role".to_string(), "owner".to_string()), ("signup".to_string(), "platform".to_string())]
                .into(),
            secret: password.to_string(),
        };
        auth.generate(request(&namespace, account)?).await.map_err(|e| micro::status::from_tonic(&e))?;
        // Every newcomer starts on the free plan; the namespace is marked as theirs (the
        // mark goes if the namespace is deleted, so a new one of that name is not).
        self.set_plan(&namespace, "community").await?;
        self.store.put(&crate::team::home_key(&namespace), encode(&email)?).await?;
        tracing::info!(service = NAME, namespace = %namespace, "a newcomer signed up");
        Ok(namespace)
    }

    /// Creates the first free namespace of `base`, `base-2`, … `base-20`, else `base-` and
    /// a random suffix (so nobody squats every name of someone's).
    async fn make_namespace(
        &self,
        auth: &mut pb::auth_client::AuthClient<micro::Channel>,
        base: &str,
    ) -> Result<String, Status> {
        for i in 1..=21u32 {
            let name = match i {
                1 => base.to_string(),
                21 => format!("{base}-{}", random(4)?.iter().map(|b| format!("{b:02x}")).collect::<String>()),
                i => format!("{base}-{i}"),
            };
            let req = request(micro_core::namespace::DEFAULT, pb::CreateNamespaceRequest { name: name.clone() })?;
            match auth.create_namespace(req).await {
                Ok(_) => return Ok(name),
                Err(e) if matches!(e.code(), tonic::Code::AlreadyExists | tonic::Code::FailedPrecondition) => continue,
                Err(e) => return Err(micro::status::from_tonic(&e)),
            }
        }
        Err(Status::internal(NAME, format!("no free namespace name for {base}")))
    }

    async fn waitlist(&self, req: WaitlistRequest) -> Result<WaitlistReply, Status> {
        let records = self.store.read("_entry/", &Query { prefix: true, ..Default::default() }).await?;
        let mut entries = records.iter().map(|r| decode::<Entry>(&r.value)).collect::<Result<Vec<_>, _>>()?;
        entries.retain(|e| req.state.is_none_or(|s| s == e.state));
        entries.sort_by_key(|e| (e.verified.unwrap_or(u64::MAX), e.joined, e.email.clone()));
        Ok(WaitlistReply { entries: entries.iter().map(EntryView::from).collect() })
    }

    async fn invite_batch(&self, req: InviteRequest) -> Result<InviteReply, Status> {
        let settings = self.settings().await?;
        let mut reply = InviteReply::default();
        let emails = match (req.emails, req.count) {
            (Some(_), Some(_)) => return Err(bad("give count or emails, not both")),
            (Some(list), None) => {
                if list.is_empty() || list.len() > MAX_BATCH as usize {
                    return Err(bad(format!("emails: give 1 to {MAX_BATCH}")));
                }
                list.iter().map(|e| canonical(e)).collect::<Result<Vec<_>, _>>()?
            }
            (None, count) => {
                let n = count.unwrap_or(settings.batch);
                if n == 0 || n > MAX_BATCH {
                    return Err(bad(format!("count: 1 to {MAX_BATCH}")));
                }
                let waiting = self.waitlist(WaitlistRequest { state: Some(EntryState::Waiting) }).await?;
                waiting.entries.into_iter().take(n as usize).map(|e| e.email).collect()
            }
        };
        for email in emails {
            let outcome = self
                .locked(&entry_key(&email), async {
                    let Some(mut e) = self.entry_of(&email).await? else { return Ok(Some("not on the waitlist")) };
                    match e.state {
                        EntryState::Waiting | EntryState::Invited => {
                            self.invite(&mut e, "operator").await?;
                            Ok(None)
                        }
                        EntryState::Unverified => Ok(Some("has not confirmed the address")),
                        EntryState::Joined => Ok(Some("has an account")),
                    }
                })
                .await?;
            match outcome {
                None => reply.invited.push(email),
                Some(why) => reply.skipped.push(format!("{email}: {why}")),
            }
        }
        Ok(reply)
    }

    async fn settings_update(&self, req: SettingsRequest) -> Result<Settings, Status> {
        let mut s = self.settings().await?;
        if let Some(v) = req.invite_only {
            s.invite_only = v;
        }
        if let Some(v) = req.batch {
            if v == 0 || v > MAX_BATCH {
                return Err(bad(format!("batch: 1 to {MAX_BATCH}")));
            }
            s.batch = v;
        }
        if let Some(v) = req.invites_per_user {
            if v > 1000 {
                return Err(bad("invites_per_user: 0 to 1000"));
            }
            s.invites_per_user = v;
        }
        for (given, slot, what) in [
            (req.joins_per_address, &mut s.joins_per_address, "joins_per_address"),
            (req.joins_per_domain, &mut s.joins_per_domain, "joins_per_domain"),
        ] {
            if let Some(v) = given {
                if v == 0 || v > 100_000 {
                    return Err(bad(format!("{what}: 1 to 100000")));
                }
                *slot = v;
            }
        }
        self.store.put(SETTINGS_KEY, encode(&s)?).await?;
        Ok(s)
    }

    async fn invite_friend(&self, ctx: &Context, req: JoinRequest) -> Result<FriendReply, Status> {
        // People invite people: from their own namespace, counted per person (accounts an
        // admin makes in a namespace hold no invites).
        let me = self.person(ctx).await?;
        let email = canonical(&req.email)?;
        let per_user = self.settings().await?.invites_per_user;
        let used_key = format!("_invites/{}", &digest(&me)[..32]);
        self.locked(&used_key, async {
            let used: u32 = match self.store.get(&used_key).await {
                Ok(r) => decode(&r.value)?,
                Err(e) if e.code() == Code::NotFound => 0,
                Err(e) => return Err(e),
            };
            if used >= per_user {
                return Err(Status::new(
                    Code::ResourceExhausted,
                    NAME,
                    format!("you have given all {per_user} of your invites"),
                ));
            }
            // Counted first, and the same answer whether or not the address has an
            // account: nobody tests addresses for free.
            self.store.put(&used_key, encode(&(used + 1))?).await?;
            self.locked(&entry_key(&email), async {
                let mut e = match self.entry_of(&email).await? {
                    Some(e) if e.state == EntryState::Joined => return Ok(()),
                    Some(e) => e,
                    None => Entry::new(&email, EntryState::Waiting),
                };
                Self::may_mail(&mut e)?;
                e.sent.pop();
                self.invite(&mut e, &me).await
            })
            .await?;
            Ok(FriendReply { left: per_user - used - 1 })
        })
        .await
    }
}

/// The network an address's joins count under: itself for IPv4, its /64 for IPv6 (one
/// holder of a /64 has all of it).
fn network(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A request to the core acting in namespace `ns`.
pub(crate) fn request<T>(ns: &str, msg: T) -> Result<tonic::Request<T>, Status> {
    let mut req = tonic::Request::new(msg);
    let v = ns.parse().map_err(|_| bad(format!("invalid namespace {ns:?}")))?;
    req.metadata_mut().insert(micro_core::metadata::NAMESPACE, v);
    req.set_timeout(Duration::from_secs(10));
    Ok(req)
}

/// The signup handlers on `service`.
pub(crate) fn handlers(service: Service, shared: Arc<Shared>) -> Service {
    let s = || shared.clone();
    let (join, verify, accept, list, invite, settings, friend) = (s(), s(), s(), s(), s(), s(), s());
    service
        .public("Signup.Join")
        .public("Signup.Verify")
        .public("Signup.Accept")
        .handle("Signup.Join", move |ctx: Context, req: JoinRequest| {
            let sh = join.clone();
            async move { sh.join(&ctx, req).await }
        })
        .handle("Signup.Verify", move |_ctx: Context, req: VerifyRequest| {
            let sh = verify.clone();
            async move { sh.verify(req).await }
        })
        .handle("Signup.Accept", move |_ctx: Context, req: AcceptRequest| {
            let sh = accept.clone();
            async move { sh.accept(req).await }
        })
        .handle("Platform.Waitlist", move |ctx: Context, req: WaitlistRequest| {
            let sh = list.clone();
            async move {
                operator(&ctx)?;
                sh.waitlist(req).await
            }
        })
        .handle("Platform.Invite", move |ctx: Context, req: InviteRequest| {
            let sh = invite.clone();
            async move {
                operator(&ctx)?;
                sh.invite_batch(req).await
            }
        })
        .handle("Platform.Settings", move |ctx: Context, req: SettingsRequest| {
            let sh = settings.clone();
            async move {
                operator(&ctx)?;
                sh.settings_update(req).await
            }
        })
        .handle("Platform.InviteFriend", move |ctx: Context, req: JoinRequest| {
            let sh = friend.clone();
            async move { sh.invite_friend(&ctx, req).await }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(canonical(" Ann.Lee+news@Example.COM ").unwrap(), "ann.lee@example.com");
        for bad in
            ["", "ann", "ann@", "@x.com", "ann@x", "ann@x.c0m", "a b@x.com", "ann@-x.com", ".a@x.com", "ann@x..com"]
        {
            assert!(canonical(bad).is_err(), "{bad}");
        }
        assert!(canonical("ann@mailinator.com").unwrap_err().detail().contains("throwaway"));
        assert!(canonical("ann@eu.mailinator.com").is_err());
    }

    #[test]
    fn namespace_names() {
        assert_eq!(namespace_base("ann.lee@example.com"), "ann-lee");
        assert_eq!(namespace_base("__@example.com"), "user");
        assert_eq!(namespace_base("admin@example.com"), "admin-user");
        assert_eq!(namespace_base(&format!("{}@x.com", "a".repeat(64))).len(), 40);
    }

    #[test]
    fn codes() {
        let mut s = secret("a@x.com", "123456", 60);
        assert!(check(&mut s, "b@x.com", "123456", "code").is_err(), "bound to its address");
        assert!(check(&mut s, "a@x.com", " 123456 ", "code").is_ok());
        for _ in 0..4 {
            let _ = check(&mut s, "a@x.com", "000000", "code");
        }
        assert!(check(&mut s, "a@x.com", "123456", "code").unwrap_err().detail().contains("void"));
        let mut old = Secret { expires: 0, ..secret("a@x.com", "1", 0) };
        assert!(check(&mut old, "a@x.com", "1", "code").unwrap_err().detail().contains("expired"));
    }
}
