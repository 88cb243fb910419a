//! Teams: namespaces shared by people, each with a role.
//!
//! A person is who signed up (their address), acting from **their own namespace**: that
//! is the one identity a namespace's admins cannot forge, so every `Team.*` call is made
//! from it and names the team's namespace. In a team namespace each member has an
//! account of their own (same id: the address), holding their role's scopes, with a
//! secret only the platform derives; `Team.Switch` hands the person tokens for it.
//!
//! | Role | Scopes | May |
//! |---|---|---|
//! | owner | `admin`, `owner` | everything, transfer ownership |
//! | admin | `admin` | members and rules, everything a developer may |
//! | developer | `developer` | run, update and kill services; read and write data |
//! | viewer | `viewer` | read services, data and logs |
//!
//! Removing a member deletes their account there (their tokens stop at once); changing
//! a role re-creates it, so the old role's tokens stop too.

use crate::signup::{EntryState, canonical, request};
use crate::{NAME, Shared, bad, decode, encode, now};
use micro::proto::auth as pb;
use micro::{Code, Context, Service, Status};
use micro_core::store::Query;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;

/// How long a team invite lasts.
const INVITE_TTL: u64 = 7 * 86_400;
/// Wrong tries before a team invite is void.
const MAX_TRIES: u32 = 5;
/// Teams one person may own.
const TEAMS_PER_PERSON: usize = 5;
/// Team invites one person may send an hour.
const INVITES_PER_HOUR: u32 = 20;

/// A member's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads services, data and logs.
    Viewer,
    /// Runs services and uses data.
    Developer,
    /// Manages members and rules.
    Admin,
    /// Owns the namespace: one per namespace.
    Owner,
}

impl Role {
    /// The scopes its account holds.
    pub fn scopes(self) -> Vec<String> {
        let s: &[&str] = match self {
            Role::Owner => &[micro_core::auth::ADMIN_SCOPE, micro_core::auth::OWNER_SCOPE],
            Role::Admin => &[micro_core::auth::ADMIN_SCOPE],
            Role::Developer => &[micro_core::auth::DEVELOPER_SCOPE],
            Role::Viewer => &[micro_core::auth::VIEWER_SCOPE],
        };
        s.iter().map(|s| s.to_string()).collect()
    }
}

/// A member of a team namespace.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct Member {
    /// Their address (and account id).
    pub email: String,
    /// Their role.
    pub role: Role,
    /// Since when, Unix seconds.
    pub since: u64,
}

/// An invite to a team, kept until accepted.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Invite {
    email: String,
    role: Role,
    hash: String,
    expires: u64,
    tries: u32,
    by: String,
}

/// A pending invite as members see it.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct Pending {
    /// Who is invited.
    pub email: String,
    /// As what.
    pub role: Role,
    /// Until when, Unix seconds.
    pub expires: u64,
}

/// `Team.Create` request.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    /// The team's namespace: 1-63 of a-z, 0-9 and '-'.
    pub name: String,
}

/// A request naming a team namespace.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TeamRequest {
    /// The team's namespace.
    pub namespace: String,
}

/// `Team.Invite` / `Team.SetRole` request.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MemberRequest {
    /// The team's namespace.
    pub namespace: String,
    /// The person's address.
    pub email: String,
    /// Their role (not `owner`: ownership moves with `Team.Transfer`).
    #[serde(default)]
    pub role: Option<Role>,
}

/// `Team.Accept` request.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AcceptRequest {
    /// The team's namespace.
    pub namespace: String,
    /// The code mailed to you.
    pub code: String,
}

/// `Team.Members` reply.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
pub struct MembersReply {
    /// Members, owner first.
    pub members: Vec<Member>,
    /// Invites not accepted yet.
    pub pending: Vec<Pending>,
}

/// `Team.Namespaces` reply.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
pub struct NamespacesReply {
    /// Your own namespace.
    pub home: String,
    /// The teams you are a member of, with your role.
    pub teams: Vec<Membership>,
}

/// One team of a person.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct Membership {
    /// The team's namespace.
    pub namespace: String,
    /// Your role there.
    pub role: Role,
}

/// `Team.Switch` reply: tokens of your account in the team's namespace.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
pub struct SwitchReply {
    /// The namespace.
    pub namespace: String,
    /// Your account there.
    pub id: String,
    /// An access token.
    pub access_token: String,
    /// A refresh token.
    pub refresh_token: String,
    /// When the access token expires, Unix seconds.
    pub expiry: u64,
}

/// An empty reply.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
pub struct Done {}

/// The first 128 bits of `s`'s SHA-256, in hex: enough for keys and codes.
fn digest(s: &str) -> String {
    crate::signup::digest(s)[..32].to_string()
}

fn member_key(ns: &str, email: &str) -> String {
    format!("{ns}/member/{}", digest(email))
}

fn invite_key(ns: &str, email: &str) -> String {
    format!("{ns}/team-invite/{}", digest(email))
}

/// The mark of the person a namespace is the home of (deleted with the namespace).
pub(crate) fn home_key(ns: &str) -> String {
    format!("{ns}/home")
}

/// Where a person's memberships are listed: `_person/<digest>/<namespace>`.
fn person_key(email: &str, ns: &str) -> String {
    format!("_person/{}/{ns}", digest(email))
}

fn forbidden(msg: impl Into<String>) -> Status {
    Status::new(Code::PermissionDenied, NAME, msg)
}

fn core(e: tonic::Status) -> Status {
    micro::status::from_tonic(&e)
}

impl Shared {
    /// The person calling: their address, from their own namespace (the one identity a
    /// namespace's admins cannot forge).
    pub(crate) async fn person(&self, ctx: &Context) -> Result<String, Status> {
        let c = ctx.caller().ok_or_else(|| Status::new(Code::Unauthenticated, NAME, "log in first"))?;
        let id = c.id().ok_or_else(|| Status::new(Code::Unauthenticated, NAME, "log in first"))?;
        // The address exactly as signup keeps it (`a+1@x` is not another person), whose
        // own namespace is still theirs (a deleted one, made again, is somebody else's).
        let email = crate::signup::canonical(id).ok().filter(|e| e == id);
        let home = match &email {
            Some(email) => self.home_of(email).await?,
            None => None,
        };
        match (home, email) {
            (Some(h), Some(email)) if h == c.namespace && self.owns_home(&h, &email).await? => Ok(email),
            (Some(h), _) if h == c.namespace => {
                Err(forbidden("this namespace is no longer the one you signed up with"))
            }
            (Some(h), _) => Err(forbidden(format!(
                "teams are managed from your own namespace: log in to {h} (micro --namespace {h} login --id {id})"
            ))),
            (None, _) => Err(forbidden("teams are for people who signed up to the platform")),
        }
    }

    /// Whether `home` is still the namespace `email` signed up into: signup marks it, and
    /// the mark goes with the namespace.
    pub(crate) async fn owns_home(&self, home: &str, email: &str) -> Result<bool, Status> {
        match self.store.get(&home_key(home)).await {
            Ok(r) => Ok(decode::<String>(&r.value)? == email),
            Err(e) if e.code() == Code::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The namespace `email` signed up into.
    pub(crate) async fn home_of(&self, email: &str) -> Result<Option<String>, Status> {
        Ok(self.entry_of(email).await?.filter(|e| e.state == EntryState::Joined).and_then(|e| e.namespace))
    }

    async fn member(&self, ns: &str, email: &str) -> Result<Option<Member>, Status> {
        match self.store.get(&member_key(ns, email)).await {
            Ok(r) => Ok(Some(decode(&r.value)?)),
            Err(e) if e.code() == Code::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The caller's role in `ns`, at least `least`.
    pub(crate) async fn role_in(&self, ns: &str, email: &str, least: Role) -> Result<Role, Status> {
        micro_core::namespace::validate(ns)?;
        match self.member(ns, email).await? {
            Some(m) if m.role >= least => Ok(m.role),
            Some(m) => {
                Err(forbidden(format!("you are {:?} of {ns}: this needs {least:?} or more", m.role).to_lowercase()))
            }
            None => Err(forbidden(format!("you are not a member of {ns}"))),
        }
    }

    fn auth(&self) -> Result<pb::auth_client::AuthClient<micro::Channel>, Status> {
        Ok(pb::auth_client::AuthClient::new(self.channel.as_ref().map_err(Clone::clone)?.clone()))
    }

    /// Makes (or remakes) `email`'s account in `ns` with `role`'s scopes and a secret
    /// nobody keeps (the person's tokens come from `Team.Switch`); a remade account's old
    /// tokens stop.
    async fn seat(&self, ns: &str, email: &str, role: Role) -> Result<(), Status> {
        let key = format!("{}/seat", member_key(ns, email));
        self.locked(&key, self.seat_now(ns, email, role)).await
    }

    async fn seat_now(&self, ns: &str, email: &str, role: Role) -> Result<(), Status> {
        let mut auth = self.auth()?;
        match auth.delete_account(request(ns, pb::DeleteAccountRequest { id: email.to_string() })?).await {
            Ok(_) => {}
            Err(e) if e.code() == tonic::Code::NotFound => {}
            Err(e) => return Err(core(e)),
        }
        let account = pb::GenerateRequest {
            id: email.to_string(),
            name: email.to_string(),
            r#type: "user".into(),
            scopes: role.scopes(),
            metadata: [("role".to_string(), format!("{role:?}").to_lowercase())].into(),
            secret: String::new(),
        };
        auth.generate(request(ns, account)?).await.map_err(core)?;
        let m = Member { email: email.to_string(), role, since: now() };
        self.store.put(&member_key(ns, email), encode(&m)?).await?;
        self.store.put(&person_key(email, ns), encode(&role)?).await
    }

    async fn unseat(&self, ns: &str, email: &str) -> Result<(), Status> {
        let key = format!("{}/seat", member_key(ns, email));
        self.locked(&key, self.unseat_now(ns, email)).await
    }

    async fn unseat_now(&self, ns: &str, email: &str) -> Result<(), Status> {
        // Invites the member gave and nobody took go with them.
        let q = Query { prefix: true, ..Default::default() };
        for r in self.store.read(&format!("{ns}/team-invite/"), &q).await? {
            if decode::<Invite>(&r.value).is_ok_and(|i| i.by == email) {
                self.store.delete(&r.key).await?;
            }
        }
        let mut auth = self.auth()?;
        match auth.delete_account(request(ns, pb::DeleteAccountRequest { id: email.to_string() })?).await {
            Ok(_) => {}
            Err(e) if e.code() == tonic::Code::NotFound => {}
            Err(e) => return Err(core(e)),
        }
        self.store.delete(&member_key(ns, email)).await?;
        self.store.delete(&person_key(email, ns)).await
    }

    async fn team_create(&self, ctx: &Context, req: CreateRequest) -> Result<Membership, Status> {
        let me = self.person(ctx).await?;
        let name = req.name.trim().to_string();
        micro_core::namespace::validate(&name)?;
        if crate::signup::reserved(&name) {
            return Err(bad(format!("{name} is reserved: choose another name")));
        }
        let owned = self.team_namespaces(ctx).await?.teams.iter().filter(|t| t.role == Role::Owner).count();
        if owned >= TEAMS_PER_PERSON {
            return Err(Status::new(
                Code::ResourceExhausted,
                NAME,
                format!("you own {owned} teams, the most one person may: transfer one first"),
            ));
        }
        let lock = self.sync.lock("platform/namespaces", Duration::from_secs(60), Duration::from_secs(30)).await?;
        let made = self.create_team_namespace(&name).await;
        let _ = self.sync.unlock(&lock).await;
        made?;
        self.seat(&name, &me, Role::Owner).await?;
        self.set_plan(&name, "community").await?;
        Ok(Membership { namespace: name, role: Role::Owner })
    }

    async fn create_team_namespace(&self, name: &str) -> Result<(), Status> {
        let req = request(micro_core::namespace::DEFAULT, pb::CreateNamespaceRequest { name: name.to_string() })?;
        self.auth()?.create_namespace(req).await.map_err(|e| match e.code() {
            tonic::Code::AlreadyExists | tonic::Code::FailedPrecondition => {
                Status::new(Code::AlreadyExists, NAME, format!("the name {name} is taken: choose another"))
            }
            _ => core(e),
        })?;
        Ok(())
    }

    async fn team_invite(&self, ctx: &Context, req: MemberRequest) -> Result<Pending, Status> {
        let me = self.person(ctx).await?;
        let mine = self.role_in(&req.namespace, &me, Role::Admin).await?;
        let role = req.role.unwrap_or(Role::Developer);
        if role == Role::Owner {
            return Err(bad("a namespace has one owner: invite as admin, then transfer ownership"));
        }
        if role == Role::Admin && mine < Role::Admin {
            return Err(forbidden("only admins invite admins"));
        }
        let email = canonical(&req.email)?;
        // Limited per inviter and per invitee: no mail-bombing from the platform's address,
        // and no free oracle of who has signed up.
        self.count(&format!("team-invites/{}", digest(&me)), INVITES_PER_HOUR, "by you this hour").await?;
        self.count(&format!("team-invited/{}", digest(&email)), 3, &format!("to {email} this hour")).await?;
        if self.home_of(&email).await?.is_none() {
            return Err(bad(format!(
                "{email} has no account on the platform yet: invite them to the platform first (micro platform invite-friend)"
            )));
        }
        if self.member(&req.namespace, &email).await?.is_some() {
            return Err(Status::new(
                Code::AlreadyExists,
                NAME,
                format!("{email} is a member of {} already", req.namespace),
            ));
        }
        let mut b = [0u8; 16];
        getrandom::fill(&mut b).map_err(|e| Status::internal(NAME, format!("no randomness: {e}")))?;
        let code: String = b.iter().map(|x| format!("{x:02x}")).collect();
        let invite = Invite {
            email: email.clone(),
            role,
            hash: digest(&format!("{}\n{email}\n{code}", req.namespace)),
            expires: now() + INVITE_TTL,
            tries: 0,
            by: me.clone(),
        };
        self.store.put(&invite_key(&req.namespace, &email), encode(&invite)?).await?;
        let ns = &req.namespace;
        let link = match &self.url {
            Some(u) => format!(
                "Accept in the dashboard, signed in to your own namespace: {u}/team/accept?namespace={ns}&code={code}\n\n"
            ),
            None => String::new(),
        };
        let text = format!(
            "{me} invites you to namespace {ns} as {}.\n\nYour code: {code} (valid 7 days).\n\n{link}\
             Accept with the CLI, logged in to your own namespace:\n  micro team accept --namespace {ns} --code {code}\n",
            format!("{role:?}").to_lowercase()
        );
        self.send_mail(&email, &format!("Join {ns} on the platform"), text).await?;
        Ok(Pending { email, role, expires: invite.expires })
    }

    async fn team_accept(&self, ctx: &Context, req: AcceptRequest) -> Result<Membership, Status> {
        let me = self.person(ctx).await?;
        micro_core::namespace::validate(&req.namespace)?;
        let key = invite_key(&req.namespace, &me);
        let refused = || bad(format!("no invite to {} waits for you", req.namespace));
        let mut invite: Invite = match self.store.get(&key).await {
            Ok(r) => decode(&r.value)?,
            Err(e) if e.code() == Code::NotFound => return Err(refused()),
            Err(e) => return Err(e),
        };
        if now() > invite.expires {
            return Err(bad("the invite expired: ask for a new one"));
        }
        if invite.tries >= MAX_TRIES {
            return Err(bad("too many wrong tries: the invite is void"));
        }
        let given = digest(&format!("{}\n{me}\n{}", req.namespace, req.code.trim()));
        if !bool::from(given.as_bytes().ct_eq(invite.hash.as_bytes())) {
            invite.tries += 1;
            self.store.put(&key, encode(&invite)?).await?;
            return Err(bad(format!("wrong code ({} tries left)", MAX_TRIES - invite.tries)));
        }
        self.seat(&req.namespace, &me, invite.role).await?;
        self.store.delete(&key).await?;
        Ok(Membership { namespace: req.namespace, role: invite.role })
    }

    async fn team_members(&self, ctx: &Context, req: TeamRequest) -> Result<MembersReply, Status> {
        let me = self.person(ctx).await?;
        self.role_in(&req.namespace, &me, Role::Viewer).await?;
        let q = Query { prefix: true, ..Default::default() };
        let mut members = Vec::new();
        for r in self.store.read(&format!("{}/member/", req.namespace), &q).await? {
            members.push(decode::<Member>(&r.value)?);
        }
        members.sort_by(|a, b| b.role.cmp(&a.role).then(a.email.cmp(&b.email)));
        let mut pending = Vec::new();
        for r in self.store.read(&format!("{}/team-invite/", req.namespace), &q).await? {
            let i: Invite = decode(&r.value)?;
            if i.expires > now() {
                pending.push(Pending { email: i.email, role: i.role, expires: i.expires });
            }
        }
        Ok(MembersReply { members, pending })
    }

    async fn team_set_role(&self, ctx: &Context, req: MemberRequest) -> Result<Member, Status> {
        let me = self.person(ctx).await?;
        self.role_in(&req.namespace, &me, Role::Admin).await?;
        let role = req.role.ok_or_else(|| bad("give the role: admin, developer or viewer"))?;
        if role == Role::Owner {
            return Err(bad("ownership moves with Team.Transfer"));
        }
        let email = canonical(&req.email)?;
        let them = self.member(&req.namespace, &email).await?.ok_or_else(|| bad(format!("{email} is not a member")))?;
        if them.role == Role::Owner {
            return Err(forbidden("the owner's role changes only by transferring ownership"));
        }
        self.seat(&req.namespace, &email, role).await?;
        Ok(Member { email, role, since: them.since })
    }

    async fn team_remove(&self, ctx: &Context, req: MemberRequest) -> Result<Done, Status> {
        let me = self.person(ctx).await?;
        let email = canonical(&req.email)?;
        if email != me {
            self.role_in(&req.namespace, &me, Role::Admin).await?;
        }
        let them = self.member(&req.namespace, &email).await?.ok_or_else(|| bad(format!("{email} is not a member")))?;
        if them.role == Role::Owner {
            return Err(forbidden("the owner cannot leave or be removed: transfer ownership first"));
        }
        self.unseat(&req.namespace, &email).await?;
        let _ = self.store.delete(&invite_key(&req.namespace, &email)).await;
        Ok(Done {})
    }

    async fn team_transfer(&self, ctx: &Context, req: MemberRequest) -> Result<Done, Status> {
        let me = self.person(ctx).await?;
        self.role_in(&req.namespace, &me, Role::Owner).await?;
        let email = canonical(&req.email)?;
        if email == me {
            return Err(bad("you own it already"));
        }
        self.member(&req.namespace, &email).await?.ok_or_else(|| bad(format!("{email} is not a member")))?;
        self.seat(&req.namespace, &email, Role::Owner).await?;
        self.seat(&req.namespace, &me, Role::Admin).await?;
        Ok(Done {})
    }

    async fn team_namespaces(&self, ctx: &Context) -> Result<NamespacesReply, Status> {
        let me = self.person(ctx).await?;
        let home = self.home_of(&me).await?.unwrap_or_default();
        let q = Query { prefix: true, ..Default::default() };
        let prefix = format!("_person/{}/", digest(&me));
        let mut teams = Vec::new();
        for r in self.store.read(&prefix, &q).await? {
            let ns = r.key.rsplit('/').next().unwrap_or_default().to_string();
            teams.push(Membership { namespace: ns, role: decode(&r.value)? });
        }
        Ok(NamespacesReply { home, teams })
    }

    async fn team_switch(&self, ctx: &Context, req: TeamRequest) -> Result<SwitchReply, Status> {
        let me = self.person(ctx).await?;
        self.role_in(&req.namespace, &me, Role::Viewer).await?;
        // The platform administers micro: it takes tokens for the member's account.
        let mut auth = self.auth()?;
        let token = pb::TokenRequest { id: me.clone(), ..Default::default() };
        let t = auth.token(request(&req.namespace, token)?).await.map_err(core)?.into_inner();
        Ok(SwitchReply {
            namespace: req.namespace,
            id: me,
            access_token: t.access_token,
            refresh_token: t.refresh_token,
            expiry: t.expiry,
        })
    }
}

/// The team handlers on `service`.
pub(crate) fn handlers(service: Service, shared: Arc<Shared>) -> Service {
    macro_rules! on {
        ($service:expr, $endpoint:literal, $req:ty, $method:ident) => {{
            let sh = shared.clone();
            $service.handle($endpoint, move |ctx: Context, req: $req| {
                let sh = sh.clone();
                async move { sh.$method(&ctx, req).await }
            })
        }};
    }
    let service = on!(service, "Team.Create", CreateRequest, team_create);
    let service = on!(service, "Team.Invite", MemberRequest, team_invite);
    let service = on!(service, "Team.Accept", AcceptRequest, team_accept);
    let service = on!(service, "Team.Members", TeamRequest, team_members);
    let service = on!(service, "Team.SetRole", MemberRequest, team_set_role);
    let service = on!(service, "Team.Remove", MemberRequest, team_remove);
    let service = on!(service, "Team.Transfer", MemberRequest, team_transfer);
    let service = on!(service, "Team.Switch", TeamRequest, team_switch);
    let sh = shared.clone();
    service.handle("Team.Namespaces", move |ctx: Context, _: Done| {
        let sh = sh.clone();
        async move { sh.team_namespaces(&ctx).await }
    })
}
