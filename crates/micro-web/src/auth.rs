//! Auth: the namespace's accounts (list, create, delete) and its rules (list with each
//! rule's effect in words, create or replace, delete). Managing either needs the admin
//! scope of the namespace; other accounts get a 403 page saying so.
//!
//! `GET /auth` (accounts), `GET /auth/rules`, `POST /auth/accounts`,
//! `POST /auth/accounts/delete`, `POST /auth/rules`, `POST /auth/rules/delete`.

use super::html::{self, csrf};
use super::{Form, Page, encode, page_response, redirect};
use axum::body::Body;
use http::{Response, StatusCode};
use maud::{Markup, html};
use micro::proto::auth::{self as pb, auth_client::AuthClient};
use micro_core::auth::{Access, Resource, Rule, parse_resource, validate_rule};
use micro_core::time::utc;
use micro_core::{Code, Status};
use std::time::Duration;

/// The deadline of each call to the auth service.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Most scopes an account created here may hold.
const MAX_SCOPES: usize = 32;

/// `GET /auth` (accounts) and `GET /auth/rules`.
pub(crate) async fn get(page: &Page) -> Response<Body> {
    match page.rest.as_slice() {
        [] => accounts_page(page, None, Outcome::Shown).await,
        [s] if s == "accounts" => redirect("/auth"),
        [s] if s == "rules" => rules_page(page, None, Outcome::Shown).await,
        _ => super::not_found(page),
    }
}

/// The forms: create or delete an account or a rule.
pub(crate) async fn post(page: &Page, form: &Form) -> Response<Body> {
    let rest: Vec<&str> = page.rest.iter().map(String::as_str).collect();
    match rest.as_slice() {
        ["accounts"] => create_account(page, form).await,
        ["accounts", "delete"] => delete_account(page, form).await,
        ["rules"] => create_rule(page, form).await,
        ["rules", "delete"] => delete_rule(page, form).await,
        _ => super::not_found(page),
    }
}

/// What a page shows besides its list.
enum Outcome {
    /// Nothing (a plain GET).
    Shown,
    /// The form was not valid (400).
    Invalid(String),
    /// The auth service refused or failed.
    Failed(Status),
    /// An account was created with a generated secret, shown this once.
    Generated { id: String, secret: String },
}

impl Outcome {
    fn status(&self) -> StatusCode {
        match self {
            Outcome::Shown => StatusCode::OK,
            Outcome::Invalid(_) => StatusCode::BAD_REQUEST,
            Outcome::Failed(e) => super::status_code(e),
            Outcome::Generated { .. } => StatusCode::CREATED,
        }
    }

    fn markup(&self) -> Markup {
        html! {
            @match self {
                Outcome::Shown => {},
                Outcome::Invalid(problem) => { div.error role="alert" { (problem) } },
                Outcome::Failed(e) => { (html::error(e)) },
                Outcome::Generated { id, secret } => {
                    div.card role="status" {
                        p { "Created account " strong { (id) } ". Its secret is shown only this once; copy it now:" }
                        // A <pre>, which wraps: a long secret in a line would widen a phone's page.
                        pre { code { (secret) } }
                    }
                },
            }
        }
    }
}

fn client(page: &Page) -> Result<AuthClient<micro::data::Ch>, Status> {
    Ok(AuthClient::new(page.channel()?))
}

/// A request to the auth service in the page's namespace, with a deadline.
fn request<T>(page: &Page, msg: T) -> tonic::Request<T> {
    let mut r = page.request(msg);
    r.set_timeout(TIMEOUT);
    r
}

fn from_tonic(e: tonic::Status) -> Status {
    micro::status::from_tonic(&e)
}

async fn list_accounts(page: &Page) -> Result<Vec<pb::Account>, Status> {
    let r = client(page)?.list_accounts(request(page, pb::ListAccountsRequest {})).await.map_err(from_tonic)?;
    let mut accounts = r.into_inner().accounts;
    accounts.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(accounts)
}

async fn list_rules(page: &Page) -> Result<Vec<pb::Rule>, Status> {
    let r = client(page)?.list_rules(request(page, pb::ListRulesRequest {})).await.map_err(from_tonic)?;
    Ok(r.into_inner().rules)
}

/// The page for a list that could not be read: a clear 403 for accounts without the
/// admin scope ([`html::refused`]), the error otherwise.
fn refused(page: &Page, title: &str, e: &Status) -> Response<Body> {
    let body = html! { (tabs(title)) (html::refused(page, e, "see and change its accounts and rules")) };
    page_response(super::status_code(e), html::layout(page, title, "auth", body))
}

fn tabs(active: &str) -> Markup {
    html! {
        nav.actions aria-label="Auth" {
            @for (href, label) in [("/auth", "Accounts"), ("/auth/rules", "Rules")] {
                @if label == active { a href=(href) aria-current="page" { strong { (label) } } }
                @else { a href=(href) { (label) } }
            }
        }
    }
}

// Accounts.

async fn accounts_page(page: &Page, input: Option<&AccountInput>, outcome: Outcome) -> Response<Body> {
    let accounts = match list_accounts(page).await {
        Ok(a) => a,
        Err(e) => return refused(page, "Accounts", &e),
    };
    let created = page.query("created").filter(|id| accounts.iter().any(|a| a.id == *id));
    let deleted = page.query("deleted").filter(|id| !accounts.iter().any(|a| a.id == *id));
    let me = (page.session.namespace == page.session.home).then_some(page.session.account.as_str());
    let body = html! {
        (tabs("Accounts"))
        @if let Some(id) = created { p.ok role="status" { "Created account " strong { (id) } "." } }
        @if let Some(id) = deleted { p.ok role="status" { "Deleted account " strong { (id) } "." } }
        (outcome.markup())
        @if accounts.is_empty() {
            p { "No accounts in " code { (page.session.namespace) } "." }
        } @else {
            table {
                caption.hint { "Accounts of " (page.session.namespace) }
                thead {
                    tr {
                        th scope="col" { "Id" } th scope="col" { "Name" } th scope="col" { "Type" }
                        th scope="col" { "Scopes" } th scope="col" { "Created (UTC)" } th scope="col" { "Actions" }
                    }
                }
                tbody {
                    @for a in &accounts {
                        tr aria-current=[(created == Some(a.id.as_str())).then_some("true")] {
                            th scope="row" { (a.id) }
                            td { (a.name) }
                            td { (a.r#type) }
                            td {
                                @if a.scopes.is_empty() { span.hint { "none" } }
                                @for s in &a.scopes { span.badge { (s) } " " }
                            }
                            td { (created_at(a.created)) }
                            td {
                                @if me == Some(a.id.as_str()) {
                                    span.hint { "you" }
                                } @else {
                                    form.inline method="post" action="/auth/accounts/delete"
                                        data-confirm={ "Delete account " (a.id) "? Its secret stops working and its sessions end." } {
                                        (csrf(page))
                                        input type="hidden" name="id" value=(a.id);
                                        button.danger type="submit" aria-label={ "Delete account " (a.id) } { "Delete" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        h2 #create { "Create an account" }
        (account_form(page, input))
    };
    page_response(outcome.status(), html::layout(page, "Accounts", "auth", body))
}

fn created_at(secs: u64) -> String {
    if secs == 0 { "—".into() } else { utc(secs * 1000).get(..16).unwrap_or_default().to_string() }
}

fn account_form(page: &Page, input: Option<&AccountInput>) -> Markup {
    let empty = AccountInput::default();
    let v = input.unwrap_or(&empty);
    html! {
        form.stack method="post" action="/auth/accounts" {
            (csrf(page))
            div.field {
                label for="account-id" { "Id" }
                input #account-id name="id" value=(v.id) required maxlength="256" autocomplete="off" aria-describedby="account-id-hint";
                span.hint #account-id-hint { "An email, a user or service name: no spaces or " code { "/" } "." }
            }
            div.field {
                label for="account-secret" { "Secret" }
                input #account-secret name="secret" type="password" minlength="8" maxlength="1024" autocomplete="new-password" aria-describedby="account-secret-hint";
                span.hint #account-secret-hint { "8 characters or more. Leave empty to have one generated and shown once." }
            }
            div.field {
                label for="account-type" { "Type" }
                select #account-type name="type" {
                    option value="user" selected[v.kind != "service"] { "user (a person)" }
                    option value="service" selected[v.kind == "service"] { "service" }
                }
            }
            div.field {
                label for="account-scopes" { "Scopes" }
                input #account-scopes name="scopes" value=(v.scopes) autocomplete="off" aria-describedby="account-scopes-hint";
                span.hint #account-scopes-hint {
                    "Comma-separated, for example " code { "staff, billing" } ". " code { "admin" }
                    " administers the namespace; " code { "data" } " reads and writes its store, config and events."
                }
            }
            div.actions { button type="submit" { "Create account" } }
        }
    }
}

/// The account form as submitted.
#[derive(Default)]
struct AccountInput {
    id: String,
    secret: String,
    kind: String,
    scopes: String,
}

impl AccountInput {
    fn from_form(form: &Form) -> AccountInput {
        AccountInput {
            id: form.get("id").trim().to_string(),
            secret: form.get("secret").to_string(),
            kind: form.get("type").to_string(),
            scopes: form.get("scopes").to_string(),
        }
    }

    /// The request, or what is wrong with the form.
    fn parse(&self) -> Result<pb::GenerateRequest, String> {
        let id = &self.id;
        if id.is_empty() {
            return Err("Enter the account's id.".into());
        }
        if id.len() > 256 || id.chars().any(|c| c.is_control() || c.is_whitespace() || c == '/') {
            return Err("The id must be at most 256 characters, without spaces or /.".into());
        }
        if !self.secret.is_empty() && !(8..=1024).contains(&self.secret.len()) {
            return Err("The secret must be 8 to 1024 characters (or empty, to generate one).".into());
        }
        let kind = match self.kind.as_str() {
            "" | "user" => "user",
            "service" => "service",
            other => return Err(format!("Unknown type {other:?}: choose user or service.")),
        };
        let scopes = parse_scopes(&self.scopes)?;
        Ok(pb::GenerateRequest {
            id: id.clone(),
            r#type: kind.to_string(),
            scopes,
            secret: self.secret.clone(),
            ..Default::default()
        })
    }
}

/// Comma-separated scopes: trimmed, empty ones dropped, duplicates once.
fn parse_scopes(text: &str) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    for s in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if s.len() > 128 || s.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(format!("The scope {s:?} is not valid: at most 128 characters, without spaces."));
        }
        if matches!(s, "*" | "+") {
            return Err(format!("{s:?} is a rule wildcard, not a scope an account can hold."));
        }
        if !out.iter().any(|o| o == s) {
            out.push(s.to_string());
        }
    }
    if out.len() > MAX_SCOPES {
        return Err(format!("At most {MAX_SCOPES} scopes."));
    }
    Ok(out)
}

async fn create_account(page: &Page, form: &Form) -> Response<Body> {
    let input = AccountInput::from_form(form);
    let msg = match input.parse() {
        Ok(m) => m,
        Err(problem) => return accounts_page(page, Some(&input), Outcome::Invalid(problem)).await,
    };
    let id = msg.id.clone();
    let reply = match client(page) {
        Ok(mut c) => c.generate(request(page, msg)).await.map_err(from_tonic),
        Err(e) => Err(e),
    };
    match reply {
        Ok(r) => {
            let secret = r.into_inner().secret;
            if secret.is_empty() {
                redirect(&format!("/auth?created={}", encode(&id)))
            } else {
                // Not a redirect: the generated secret must not travel in a URL.
                accounts_page(page, None, Outcome::Generated { id, secret }).await
            }
        }
        Err(e) if e.code() == Code::PermissionDenied || e.code() == Code::Unauthenticated => {
            refused(page, "Accounts", &e)
        }
        Err(e) => accounts_page(page, Some(&AccountInput { secret: String::new(), ..input }), Outcome::Failed(e)).await,
    }
}

async fn delete_account(page: &Page, form: &Form) -> Response<Body> {
    let id = form.get("id").trim().to_string();
    if id.is_empty() {
        return accounts_page(page, None, Outcome::Invalid("Choose the account to delete.".into())).await;
    }
    if page.session.namespace == page.session.home && id == page.session.account {
        let problem = "You are signed in as this account: sign in as another admin to delete it.";
        return accounts_page(page, None, Outcome::Invalid(problem.into())).await;
    }
    let reply = match client(page) {
        Ok(mut c) => {
            c.delete_account(request(page, pb::DeleteAccountRequest { id: id.clone() })).await.map_err(from_tonic)
        }
        Err(e) => Err(e),
    };
    match reply {
        Ok(_) => redirect(&format!("/auth?deleted={}", encode(&id))),
        Err(e) if e.code() == Code::NotFound => {
            let gone = Status::not_found(
                "auth",
                format!("there is no account {id} in {} (deleted already?)", page.session.namespace),
            );
            accounts_page(page, None, Outcome::Failed(gone)).await
        }
        Err(e) if e.code() == Code::PermissionDenied || e.code() == Code::Unauthenticated => {
            refused(page, "Accounts", &e)
        }
        Err(e) => accounts_page(page, None, Outcome::Failed(e)).await,
    }
}

// Rules.

async fn rules_page(page: &Page, input: Option<&RuleInput>, outcome: Outcome) -> Response<Body> {
    let rules = match list_rules(page).await {
        Ok(r) => r,
        Err(e) => return refused(page, "Rules", &e),
    };
    let ns = page.session.namespace.clone();
    let saved = page.query("saved").filter(|id| rules.iter().any(|r| r.id == *id));
    let deleted = page.query("deleted").filter(|id| !rules.iter().any(|r| r.id == *id));
    let body = html! {
        (tabs("Rules"))
        p {
            "Rules decide who may call the services of " code { (ns) } ". Of the rules that cover a call and admit its caller, "
            "the one with the highest priority decides; on equal priority, denied wins; when no rule matches, the call is denied."
        }
        p.hint {
            "Core services are not governed by these rules: store, config and events need the " code { "admin" } " or "
            code { "data" } " scope, runtime and account management need " code { "admin" } ", and registry lookups and "
            code { "Debug.*" } " are open to everyone. A service reads the rules with its own account (the runtime gives "
            "each service one); a service started without an account only knows the default public rule."
        }
        @if let Some(id) = saved { p.ok role="status" { "Saved rule " strong { (id) } "." } }
        @if let Some(id) = deleted { p.ok role="status" { "Deleted rule " strong { (id) } "." } }
        (outcome.markup())
        @if rules.is_empty() {
            p { strong { "No rules:" } " every call to this namespace's services is denied." }
        } @else {
            table {
                caption.hint { "Rules of " (ns) ", highest priority first" }
                thead {
                    tr {
                        th scope="col" { "Id" } th scope="col" { "Scope" } th scope="col" { "Resource" }
                        th scope="col" { "Access" } th scope="col" { "Priority" } th scope="col" { "Effect" }
                        th scope="col" { "Actions" }
                    }
                }
                tbody {
                    @for r in &rules {
                        tr aria-current=[(saved == Some(r.id.as_str())).then_some("true")] {
                            th scope="row" { (r.id) }
                            td { @if r.scope.is_empty() { span.hint { "(public)" } } @else { code { (r.scope) } } }
                            td { code { (r.resource) } }
                            td { span.badge.(if r.access == "denied" { "error" } else { "running" }) { (r.access) } }
                            td { (r.priority) }
                            td { (explain(r, &ns)) }
                            td {
                                form.inline method="post" action="/auth/rules/delete"
                                    data-confirm=(delete_warning(r)) {
                                    (csrf(page))
                                    input type="hidden" name="id" value=(r.id);
                                    button.danger type="submit" aria-label={ "Delete rule " (r.id) } { "Delete" }
                                }
                            }
                        }
                    }
                }
            }
        }
        h2 #create { "Create or replace a rule" }
        (rule_form(page, input))
    };
    page_response(outcome.status(), html::layout(page, "Rules", "auth", body))
}

fn delete_warning(r: &pb::Rule) -> String {
    if r.id == "default" {
        format!(
            "Delete rule {}? Without it, services of this namespace are private unless another rule grants access.",
            r.id
        )
    } else {
        format!("Delete rule {}?", r.id)
    }
}

/// What a rule does, in words.
fn explain(r: &pb::Rule, ns: &str) -> String {
    let verb = if r.access == "denied" { "Denies" } else { "Grants" };
    let who = match r.scope.as_str() {
        "" => "everyone, with or without an account,".to_string(),
        "*" => format!("any account of namespace {ns}"),
        "+" => "any signed-in account, of any namespace,".to_string(),
        s => format!("accounts of namespace {ns} holding the scope {s}"),
    };
    let what = match parse_resource(&r.resource) {
        Ok(res) => describe(&res),
        Err(_) => format!("the resource {} (which is not valid)", r.resource),
    };
    let mut out = format!(
        "{verb} {who} calls to {what}; priority {} — matching rules with a higher priority take precedence.",
        r.priority
    );
    let default = micro_core::auth::default_rule();
    let is_default = r.id == default.id
        && r.scope == default.scope
        && r.resource == default.resource.to_string()
        && r.access == "granted"
        && r.priority == default.priority;
    if is_default {
        out.push_str(" This is the rule every namespace starts with: it makes the services public.");
    }
    out
}

/// A resource pattern in words: "any endpoint of service vault".
fn describe(res: &Resource) -> String {
    let endpoint = match res.kind.as_str() {
        "service" => words(&res.endpoint, "any endpoint", "endpoint", "endpoints starting with"),
        "http" => words(&res.endpoint, "any HTTP path", "HTTP path", "HTTP paths starting with"),
        _ => words(&res.endpoint, "any endpoint or HTTP path", "endpoint or path", "endpoints or paths starting with"),
    };
    let name = words(&res.name, "any service", "service", "services whose names start with");
    let kind = match res.kind.as_str() {
        "*" | "service" | "http" => String::new(),
        k => format!(" (resources of type {k})"),
    };
    format!("{endpoint} of {name}{kind}")
}

/// One part of a resource pattern in words: `*`, a `prefix*` or an exact value.
fn words(pattern: &str, any: &str, one: &str, prefixed: &str) -> String {
    match pattern.strip_suffix('*') {
        Some("") => any.to_string(),
        Some(prefix) => format!("{prefixed} “{prefix}”"),
        None => format!("{one} {pattern}"),
    }
}

fn rule_form(page: &Page, input: Option<&RuleInput>) -> Markup {
    let empty = RuleInput::default();
    let v = input.unwrap_or(&empty);
    let who = if v.who.is_empty() { "public" } else { v.who.as_str() };
    html! {
        form.stack method="post" action="/auth/rules" {
            (csrf(page))
            div.field {
                label for="rule-id" { "Id" }
                input #rule-id name="id" value=(v.id) required maxlength="128" pattern="[A-Za-z0-9._\\-]+" aria-describedby="rule-id-hint";
                span.hint #rule-id-hint { "Letters, digits, " code { "." } " " code { "_" } " " code { "-" } ". A rule with the same id is replaced." }
            }
            div.field {
                label for="rule-who" { "Who" }
                select #rule-who name="who" {
                    option value="public" selected[who == "public"] { "everyone, even without an account (public)" }
                    option value="namespace" selected[who == "namespace"] { "any account of this namespace (*)" }
                    option value="any" selected[who == "any"] { "any account of any namespace (+)" }
                    option value="scope" selected[who == "scope"] { "accounts holding a scope…" }
                }
            }
            div.field {
                label for="rule-scope" { "Scope" }
                input #rule-scope name="scope" value=(v.scope) maxlength="128" aria-describedby="rule-scope-hint";
                span.hint #rule-scope-hint { "Only for “accounts holding a scope”, for example " code { "staff" } "." }
            }
            div.field {
                label for="rule-resource" { "Resource" }
                input #rule-resource name="resource" value=(v.resource) required placeholder="service:helloworld:*" aria-describedby="rule-resource-hint";
                span.hint #rule-resource-hint {
                    code { "type:name:endpoint" } ", type " code { "service" } " (RPC endpoints like " code { "Greeter.Hello" } ") or "
                    code { "http" } " (paths like " code { "/api/users" } "); each part may be " code { "*" }
                    " or end with " code { "*" } " (a prefix). " code { "*" } " alone covers everything."
                }
            }
            div.field {
                label for="rule-access" { "Access" }
                select #rule-access name="access" {
                    option value="granted" selected[v.access != "denied"] { "granted" }
                    option value="denied" selected[v.access == "denied"] { "denied" }
                }
            }
            div.field {
                label for="rule-priority" { "Priority" }
                input #rule-priority name="priority" type="number" min=(i32::MIN) max=(i32::MAX) step="1" inputmode="numeric" value=(if v.priority.is_empty() { "0" } else { &v.priority }) aria-describedby="rule-priority-hint";
                span.hint #rule-priority-hint { "Higher wins over lower." }
            }
            div.actions { button type="submit" { "Save rule" } }
        }
    }
}

/// The rule form as submitted.
#[derive(Default)]
struct RuleInput {
    id: String,
    who: String,
    scope: String,
    resource: String,
    access: String,
    priority: String,
}

impl RuleInput {
    fn from_form(form: &Form) -> RuleInput {
        RuleInput {
            id: form.get("id").trim().to_string(),
            who: form.get("who").to_string(),
            scope: form.get("scope").trim().to_string(),
            resource: form.get("resource").trim().to_string(),
            access: form.get("access").to_string(),
            priority: form.get("priority").trim().to_string(),
        }
    }

    /// The rule, or what is wrong with the form.
    fn parse(&self) -> Result<pb::Rule, String> {
        if self.id.is_empty() {
            return Err("Enter an id for the rule.".into());
        }
        let scope = match self.who.as_str() {
            "" | "public" => String::new(),
            "namespace" => "*".into(),
            "any" => "+".into(),
            "scope" if self.scope.is_empty() => return Err("Enter the scope accounts must hold.".into()),
            "scope" if matches!(self.scope.as_str(), "*" | "+") => {
                return Err("Choose “any account” in Who instead of writing * or + as the scope.".into());
            }
            "scope" => self.scope.clone(),
            other => return Err(format!("Unknown choice {other:?} for who.")),
        };
        if self.resource.is_empty() {
            return Err("Enter the resource, for example service:helloworld:*.".into());
        }
        let resource = parse_resource(&self.resource).map_err(|e| format!("Resource: {}.", e.detail()))?;
        let access = match self.access.as_str() {
            "" | "granted" => Access::Granted,
            "denied" => Access::Denied,
            other => return Err(format!("Unknown access {other:?}: choose granted or denied.")),
        };
        let priority = if self.priority.is_empty() {
            0
        } else {
            self.priority.parse::<i32>().map_err(|_| {
                format!("The priority {:?} is not a whole number from {} to {}.", self.priority, i32::MIN, i32::MAX)
            })?
        };
        let rule = Rule { id: self.id.clone(), scope, resource, access, priority };
        validate_rule(&rule).map_err(|e| match e.detail() {
            d if d.starts_with("invalid rule id") => {
                "The id may only hold letters, digits, . _ and - (at most 128).".to_string()
            }
            d => format!("{d}."),
        })?;
        Ok(pb::Rule {
            id: rule.id,
            scope: rule.scope,
            resource: rule.resource.to_string(),
            access: if access == Access::Denied { "denied" } else { "granted" }.into(),
            priority,
        })
    }
}

async fn create_rule(page: &Page, form: &Form) -> Response<Body> {
    let input = RuleInput::from_form(form);
    let rule = match input.parse() {
        Ok(r) => r,
        Err(problem) => return rules_page(page, Some(&input), Outcome::Invalid(problem)).await,
    };
    let id = rule.id.clone();
    let reply = match client(page) {
        Ok(mut c) => c.create_rule(request(page, pb::CreateRuleRequest { rule: Some(rule) })).await.map_err(from_tonic),
        Err(e) => Err(e),
    };
    match reply {
        Ok(_) => redirect(&format!("/auth/rules?saved={}", encode(&id))),
        Err(e) if e.code() == Code::PermissionDenied || e.code() == Code::Unauthenticated => refused(page, "Rules", &e),
        Err(e) => rules_page(page, Some(&input), Outcome::Failed(e)).await,
    }
}

async fn delete_rule(page: &Page, form: &Form) -> Response<Body> {
    let id = form.get("id").trim().to_string();
    if id.is_empty() {
        return rules_page(page, None, Outcome::Invalid("Choose the rule to delete.".into())).await;
    }
    let reply = match client(page) {
        Ok(mut c) => c.delete_rule(request(page, pb::DeleteRuleRequest { id: id.clone() })).await.map_err(from_tonic),
        Err(e) => Err(e),
    };
    match reply {
        Ok(_) => redirect(&format!("/auth/rules?deleted={}", encode(&id))),
        Err(e) if e.code() == Code::NotFound => {
            let gone = Status::not_found(
                "auth",
                format!("there is no rule {id} in {} (deleted already?)", page.session.namespace),
            );
            rules_page(page, None, Outcome::Failed(gone)).await
        }
        Err(e) if e.code() == Code::PermissionDenied || e.code() == Code::Unauthenticated => refused(page, "Rules", &e),
        Err(e) => rules_page(page, None, Outcome::Failed(e)).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(pairs: &[(&str, &str)]) -> Form {
        Form(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    fn rule(scope: &str, resource: &str, access: &str, priority: i32) -> pb::Rule {
        pb::Rule { id: "r".into(), scope: scope.into(), resource: resource.into(), access: access.into(), priority }
    }

    #[test]
    fn rules_in_words() {
        assert_eq!(
            explain(&rule("", "service:vault:*", "denied", 10), "shop"),
            "Denies everyone, with or without an account, calls to any endpoint of service vault; \
             priority 10 — matching rules with a higher priority take precedence."
        );
        assert_eq!(
            explain(&rule("staff", "service:helloworld:Greeter.*", "granted", 20), "shop"),
            "Grants accounts of namespace shop holding the scope staff calls to endpoints starting with “Greeter.” \
             of service helloworld; priority 20 — matching rules with a higher priority take precedence."
        );
        assert!(explain(&rule("*", "http:web:/api/*", "granted", 0), "shop").starts_with(
            "Grants any account of namespace shop calls to HTTP paths starting with “/api/” of service web;"
        ));
        assert!(explain(&rule("+", "service:pay*:Pay.Charge", "granted", 0), "shop").starts_with(
            "Grants any signed-in account, of any namespace, calls to endpoint Pay.Charge of services whose names start with “pay”;"
        ));
        let d = micro_core::auth::default_rule();
        let default = pb::Rule {
            id: d.id,
            scope: d.scope,
            resource: d.resource.to_string(),
            access: "granted".into(),
            priority: 0,
        };
        let text = explain(&default, "micro");
        assert!(
            text.starts_with(
                "Grants everyone, with or without an account, calls to any endpoint or HTTP path of any service;"
            ),
            "{text}"
        );
        assert!(text.ends_with("it makes the services public."), "{text}");
        assert!(
            explain(&rule("", "jobs:x:y", "granted", 0), "m")
                .contains("endpoint or path y of service x (resources of type jobs)")
        );
    }

    #[test]
    fn account_forms_are_checked() {
        let ok = AccountInput::from_form(&form(&[
            ("id", " alice "),
            ("secret", "long-enough"),
            ("type", "service"),
            ("scopes", "staff, ,billing,staff"),
        ]));
        let req = ok.parse().unwrap();
        assert_eq!((req.id.as_str(), req.r#type.as_str(), req.secret.as_str()), ("alice", "service", "long-enough"));
        assert_eq!(req.scopes, ["staff", "billing"]);
        assert!(AccountInput::from_form(&form(&[("id", "bob")])).parse().unwrap().scopes.is_empty());
        for (pairs, needle) in [
            (vec![("id", "")], "id"),
            (vec![("id", "a b")], "spaces"),
            (vec![("id", "a/b")], "/"),
            (vec![("id", "a"), ("secret", "short")], "8 to 1024"),
            (vec![("id", "a"), ("type", "robot")], "user or service"),
            (vec![("id", "a"), ("scopes", "two words")], "scope"),
            (vec![("id", "a"), ("scopes", "*")], "wildcard"),
        ] {
            let err = AccountInput::from_form(&form(&pairs)).parse().unwrap_err();
            assert!(err.contains(needle), "{pairs:?}: {err}");
        }
    }

    #[test]
    fn rule_forms_are_checked() {
        let f = form(&[
            ("id", "lock"),
            ("who", "scope"),
            ("scope", "staff"),
            ("resource", "service:foo"),
            ("access", "denied"),
            ("priority", "-5"),
        ]);
        let r = RuleInput::from_form(&f).parse().unwrap();
        assert_eq!(
            (r.scope.as_str(), r.resource.as_str(), r.access.as_str(), r.priority),
            ("staff", "service:foo:*", "denied", -5)
        );
        let public = RuleInput::from_form(&form(&[("id", "p"), ("who", "public"), ("resource", "*")])).parse().unwrap();
        assert_eq!((public.scope.as_str(), public.access.as_str(), public.priority), ("", "granted", 0));
        let any = RuleInput::from_form(&form(&[("id", "p"), ("who", "namespace"), ("resource", "*")])).parse().unwrap();
        assert_eq!(any.scope, "*");
        for (pairs, needle) in [
            (vec![("id", ""), ("resource", "*")], "id"),
            (vec![("id", "bad id"), ("resource", "*")], "letters, digits"),
            (vec![("id", "x"), ("who", "scope"), ("resource", "*")], "scope"),
            (vec![("id", "x"), ("resource", "")], "resource"),
            (vec![("id", "x"), ("resource", "service:a*b:x")], "Resource:"),
            (vec![("id", "x"), ("resource", "*"), ("priority", "high")], "whole number"),
            (vec![("id", "x"), ("resource", "*"), ("access", "maybe")], "granted or denied"),
        ] {
            let err = RuleInput::from_form(&form(&pairs)).parse().unwrap_err();
            assert!(err.contains(needle), "{pairs:?}: {err}");
        }
    }
}
