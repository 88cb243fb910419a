//! `micro login`, `logout`, `whoami` and `micro auth …`.

use crate::cli::{Ctx, status_err};
use crate::envs::{Credentials, Envs};
use crate::output;
use anyhow::{Context, Result, anyhow};
use clap::Subcommand;
use micro::auth::token::now;
use micro::proto::auth as pb;
use serde_json::json;
use std::sync::Arc;

#[derive(Subcommand)]
pub(crate) enum AuthCmd {
    /// Create an account or a rule.
    Create {
        #[command(subcommand)]
        what: Create,
    },
    /// Delete an account or a rule.
    Delete {
        #[command(subcommand)]
        what: Delete,
    },
    /// List accounts or rules.
    List {
        #[command(subcommand)]
        what: List,
    },
}

#[derive(Subcommand)]
pub(crate) enum Create {
    /// An account: micro auth create account alice --scopes staff
    Account {
        id: String,
        /// Scopes, comma-separated.
        #[arg(long, default_value = "")]
        scopes: String,
        /// The secret (default: generated and printed once).
        #[arg(long, allow_hyphen_values = true)]
        secret: Option<String>,
        /// user or service.
        #[arg(long = "type", default_value = "user")]
        kind: String,
    },
    /// A rule: micro auth create rule lock --resource 'service:foo:*' --scope staff --priority 10
    Rule {
        id: String,
        /// type:name:endpoint; parts may be * or end with *.
        #[arg(long)]
        resource: String,
        /// "" public, "*" any account of the namespace, "+" any account, else a scope.
        #[arg(long, default_value = "")]
        scope: String,
        /// granted or denied.
        #[arg(long, default_value = "granted")]
        access: String,
        /// Higher wins.
        #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
        priority: i32,
    },
}

#[derive(Subcommand)]
pub(crate) enum Delete {
    /// An account (and its refresh tokens).
    Account { id: String },
    /// A rule.
    Rule { id: String },
}

#[derive(Subcommand)]
pub(crate) enum List {
    /// Accounts of the namespace.
    Accounts,
    /// Rules of the namespace.
    Rules,
}

/// The auth service, its calls carrying `token` when there is one.
fn client(c: &Ctx, token: Option<&str>) -> Result<pb::auth_client::AuthClient<micro::Channel>> {
    let source = token.map(|t| Arc::new(micro::data::StaticToken(t.to_string())) as Arc<dyn micro::data::TokenSource>);
    let ch = micro::Channel::on(&c.transport, &c.address, source).map_err(status_err)?;
    Ok(pb::auth_client::AuthClient::new(ch))
}

/// A request in the context's namespace, without a deadline (uploads and followed
/// streams take as long as they take). The channel adds the token.
pub(crate) fn request_unbounded<T>(c: &Ctx, msg: T) -> Result<tonic::Request<T>> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert("micro-namespace", c.namespace.parse().map_err(|_| anyhow!("invalid namespace"))?);
    Ok(req)
}

/// [`request_unbounded`] with a 10 s deadline.
pub(crate) fn request<T>(c: &Ctx, msg: T) -> Result<tonic::Request<T>> {
    let mut req = request_unbounded(c, msg)?;
    req.set_timeout(std::time::Duration::from_secs(10));
    Ok(req)
}

fn tonic_err(e: tonic::Status) -> anyhow::Error {
    status_err(micro::status::from_tonic(&e))
}

/// The current environment's access token, refreshed when it is about to expire.
pub(crate) async fn token(c: &Ctx) -> Result<Option<String>> {
    let mut envs = Envs::load()?;
    let Some(creds) = envs.current().credentials else { return Ok(None) };
    if creds.expiry > now() + 30 {
        return Ok(Some(creds.access_token));
    }
    let fresh = refreshed(c, creds).await?;
    let env = envs.current_mut();
    // The person and a switched-to namespace keep the same tokens as the current ones.
    if env.person.as_ref().is_some_and(|p| p.namespace == fresh.namespace && p.account == fresh.account) {
        env.person = Some(fresh.clone());
    }
    if let Some(s) = env.switched.get_mut(&fresh.namespace) {
        *s = fresh.clone();
    }
    env.credentials = Some(fresh.clone());
    envs.save()?;
    Ok(Some(fresh.access_token))
}

/// `creds` with new tokens, when the access token is about to expire.
pub(crate) async fn refreshed(c: &Ctx, creds: Credentials) -> Result<Credentials> {
    if creds.expiry > now() + 30 {
        return Ok(creds);
    }
    let ns = Ctx { namespace: creds.namespace.clone(), token: None, ..c.clone() };
    let req = request(&ns, pb::TokenRequest { refresh_token: creds.refresh_token.clone(), ..Default::default() })?;
    let res = client(&ns, None)?
        .token(req)
        .await
        .map_err(|e| anyhow!("your session has expired ({}); log in again: micro login", e.message()))?
        .into_inner();
    Ok(Credentials {
        account: creds.account,
        namespace: creds.namespace,
        access_token: res.access_token,
        refresh_token: res.refresh_token,
        expiry: res.expiry,
    })
}

/// The local admin password file, when `micro server` runs here with default settings.
fn local_admin_password() -> Option<String> {
    let dir = std::env::var_os("MICRO_DATA_DIR")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".micro").join("data")))?;
    std::fs::read_to_string(dir.join(micro_server::ADMIN_PASSWORD_FILE)).ok().map(|s| s.trim().to_string())
}

pub(crate) async fn login(c: &Ctx, id: &str, password: Option<String>) -> Result<()> {
    let secret = match password.or_else(|| std::env::var("MICRO_PASSWORD").ok()) {
        Some(p) => p,
        None if id == "admin" && local_admin_password().is_some() => local_admin_password().unwrap_or_default(),
        // From a terminal without echo; piped input is read as a line.
        None if std::io::IsTerminal::is_terminal(&std::io::stdin()) => {
            rpassword::prompt_password(format!("password for {id}: ")).context("reading the password")?
        }
        None => {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).context("reading the password")?;
            line.trim_end_matches(['\r', '\n']).to_string()
        }
    };
    let req = request(c, pb::TokenRequest { id: id.to_string(), secret, ..Default::default() })?;
    let res = client(c, None)?.token(req).await.map_err(tonic_err)?.into_inner();
    let mut envs = Envs::load()?;
    let creds = Credentials {
        account: id.to_string(),
        namespace: c.namespace.clone(),
        access_token: res.access_token,
        refresh_token: res.refresh_token,
        expiry: res.expiry,
    };
    let env = envs.current_mut();
    env.credentials = Some(creds.clone());
    env.person = Some(creds);
    env.switched.clear();
    envs.save()?;
    output::done(
        c.json,
        json!({"logged_in": id, "namespace": c.namespace}),
        Some(format!("logged in as {id} in {}", c.namespace)),
    );
    Ok(())
}

pub(crate) fn logout(c: &Ctx) -> Result<()> {
    let mut envs = Envs::load()?;
    let env = envs.current_mut();
    env.credentials = None;
    env.person = None;
    env.switched.clear();
    envs.save()?;
    output::done(c.json, json!({"logged_out": true}), Some("logged out".into()));
    Ok(())
}

pub(crate) async fn whoami(c: &Ctx) -> Result<()> {
    let token = token(c).await?.ok_or_else(|| anyhow!("not logged in: micro login"))?;
    let req = request(c, pb::InspectRequest { token })?;
    let res = client(c, None)?.inspect(req).await.map_err(tonic_err)?.into_inner();
    let a = res.account.unwrap_or_default();
    if c.json {
        output::json(
            &json!({"id": a.id, "namespace": a.namespace, "type": a.r#type, "scopes": a.scopes, "expiry": res.expiry}),
        );
    } else {
        println!("{} ({}) in namespace {}, scopes: {}", a.id, a.r#type, a.namespace, a.scopes.join(","));
    }
    Ok(())
}

pub(crate) async fn auth(c: &Ctx, cmd: AuthCmd) -> Result<()> {
    let token = token(c).await?;
    let t = token.as_deref();
    let mut cl = client(c, t)?;
    match cmd {
        AuthCmd::Create { what: Create::Account { id, scopes, secret, kind } } => {
            let scopes: Vec<String> =
                scopes.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect();
            let msg = pb::GenerateRequest {
                id: id.clone(),
                r#type: kind.clone(),
                scopes: scopes.clone(),
                secret: secret.unwrap_or_default(),
                ..Default::default()
            };
            let res = cl.generate(request(c, msg)?).await.map_err(tonic_err)?.into_inner();
            let mut v =
                json!({"created": "account", "id": id, "type": kind, "namespace": c.namespace, "scopes": scopes});
            let text = if res.secret.is_empty() {
                format!("created account {id}")
            } else {
                // A generated secret is shown this once.
                v["secret"] = json!(res.secret);
                format!("created account {id}; its secret (shown once): {}", res.secret)
            };
            output::done(c.json, v, Some(text));
        }
        AuthCmd::Create { what: Create::Rule { id, resource, scope, access, priority } } => {
            let v = json!({"created": "rule", "id": id, "scope": scope, "resource": resource, "access": access, "priority": priority});
            let rule = pb::Rule { id: id.clone(), scope, resource, access, priority };
            cl.create_rule(request(c, pb::CreateRuleRequest { rule: Some(rule) })?).await.map_err(tonic_err)?;
            output::done(c.json, v, Some(format!("created rule {id}")));
        }
        AuthCmd::Delete { what: Delete::Account { id } } => {
            cl.delete_account(request(c, pb::DeleteAccountRequest { id: id.clone() })?).await.map_err(tonic_err)?;
            output::done(c.json, json!({"deleted": "account", "id": id}), None);
        }
        AuthCmd::Delete { what: Delete::Rule { id } } => {
            cl.delete_rule(request(c, pb::DeleteRuleRequest { id: id.clone() })?).await.map_err(tonic_err)?;
            output::done(c.json, json!({"deleted": "rule", "id": id}), None);
        }
        AuthCmd::List { what: List::Accounts } => {
            let res = cl.list_accounts(request(c, pb::ListAccountsRequest {})?).await.map_err(tonic_err)?.into_inner();
            if c.json {
                let v: Vec<_> = res
                    .accounts
                    .iter()
                    .map(|a| json!({"id": a.id, "type": a.r#type, "namespace": a.namespace, "scopes": a.scopes, "created": a.created}))
                    .collect();
                output::json(&json!(v));
            } else {
                let rows: Vec<Vec<String>> =
                    res.accounts.iter().map(|a| vec![a.id.clone(), a.r#type.clone(), a.scopes.join(",")]).collect();
                output::table(&["ID", "TYPE", "SCOPES"], &rows);
            }
        }
        AuthCmd::List { what: List::Rules } => {
            let res = cl.list_rules(request(c, pb::ListRulesRequest {})?).await.map_err(tonic_err)?.into_inner();
            if c.json {
                let v: Vec<_> = res
                    .rules
                    .iter()
                    .map(|r| json!({"id": r.id, "scope": r.scope, "resource": r.resource, "access": r.access, "priority": r.priority}))
                    .collect();
                output::json(&json!(v));
            } else {
                let rows: Vec<Vec<String>> = res
                    .rules
                    .iter()
                    .map(|r| {
                        let scope = if r.scope.is_empty() { "(public)".to_string() } else { r.scope.clone() };
                        vec![r.id.clone(), scope, r.resource.clone(), r.access.clone(), r.priority.to_string()]
                    })
                    .collect();
                output::table(&["ID", "SCOPE", "RESOURCE", "ACCESS", "PRIORITY"], &rows);
            }
        }
    }
    Ok(())
}

#[derive(Subcommand)]
pub(crate) enum NamespaceCmd {
    /// Every namespace.
    List,
    /// A new namespace, with the default public rule.
    Create { name: String },
    /// Delete a namespace's accounts, tokens and rules.
    Delete { name: String },
    /// Act in another namespace you are a member of (a team), or back in your own: micro
    /// namespace switch <name>. Later commands act there with your role's rights.
    Switch { name: String },
}

pub(crate) async fn namespace(c: &Ctx, cmd: NamespaceCmd) -> Result<()> {
    let token = token(c).await?;
    let t = token.as_deref();
    // Namespaces are managed from the micro namespace.
    let admin = Ctx {
        address: c.address.clone(),
        namespace: micro_core::namespace::DEFAULT.into(),
        json: c.json,
        token: None,
        transport: c.transport.clone(),
    };
    let mut cl = client(c, t)?;
    match cmd {
        NamespaceCmd::Switch { name } => return crate::team::switch(c, &name).await,
        NamespaceCmd::List => {
            let res = cl
                .list_namespaces(request(&admin, pb::ListNamespacesRequest {})?)
                .await
                .map_err(tonic_err)?
                .into_inner();
            if c.json {
                output::json(&json!(res.namespaces));
            } else {
                for n in res.namespaces {
                    println!("{n}");
                }
            }
        }
        NamespaceCmd::Create { name } => {
            cl.create_namespace(request(&admin, pb::CreateNamespaceRequest { name: name.clone() })?)
                .await
                .map_err(tonic_err)?;
            output::done(
                c.json,
                json!({"created": "namespace", "id": name}),
                Some(format!("created namespace {name}")),
            );
        }
        NamespaceCmd::Delete { name } => {
            cl.delete_namespace(request(&admin, pb::DeleteNamespaceRequest { name: name.clone() })?)
                .await
                .map_err(tonic_err)?;
            output::done(
                c.json,
                json!({"deleted": "namespace", "id": name}),
                Some(format!("deleted namespace {name}")),
            );
        }
    }
    Ok(())
}
