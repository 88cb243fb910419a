//! Auth: accounts, resources and the rules that decide access.
//!
//! A rule grants or denies a scope access to resources `type:name:endpoint`, each part
//! either exact, `*` (anything), or ending in `*` (a prefix, for example `Greeter.*` or
//! `/api/*`). Of the rules that match a call, the highest priority decides (denied wins a
//! tie); no matching rule means denied. A rule's scope is `""` (public: anyone, even
//! without an account), `*` (any account of the namespace), `+` (any account of any
//! namespace) or a named scope the account must hold.

use crate::{Code, Status};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The scope that administers a namespace.
pub const ADMIN_SCOPE: &str = "admin";

/// The scope that lets an account read and write its namespace's data (store, blob,
/// config, events) without administering it; the runtime gives it to the service
/// accounts its services run as.
pub const DATA_SCOPE: &str = "data";

/// The scope of a namespace's owner (a team's role): with `admin`, what only the owner does.
pub const OWNER_SCOPE: &str = "owner";

/// The scope of a developer (a team's role): runs, updates and kills the namespace's
/// services and reads and writes its data, but manages no accounts or rules.
pub const DEVELOPER_SCOPE: &str = "developer";

/// The scope of a viewer (a team's role): reads the namespace's services, data and logs,
/// changes nothing.
pub const VIEWER_SCOPE: &str = "viewer";

/// The scope every app user holds (and only they): a namespace's rules name it to let
/// the end users of its apps call something. No platform account may hold it (nor any
/// scope starting `micro:`, the platform's own).
pub const APP_SCOPE: &str = "micro:app";

/// The scope of the products' accounts (of the `micro` namespace): they serve every
/// namespace, so they may act in any (with no more rights there than its rules give).
pub const PLATFORM_SCOPE: &str = "platform";

/// The scope that lets an account of the `micro` namespace have the auth service sign
/// tokens for the app users of any namespace (the users product's account).
pub const ISSUER_SCOPE: &str = "issuer";

/// What kind of principal an account is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccountType {
    /// A person.
    #[default]
    User,
    /// A service (its own credentials, injected by the runtime).
    Service,
    /// An end user of a namespace's apps, signed in through the users product: somebody
    /// to the namespace's database rules and to rules naming [`APP_SCOPE`], nobody else.
    App,
}

impl AccountType {
    /// How tokens and the wire name it: `user`, `service` or `app`.
    pub fn as_str(self) -> &'static str {
        match self {
            AccountType::User => "user",
            AccountType::Service => "service",
            AccountType::App => "app",
        }
    }

    /// The type a token or the wire names (anything unknown is a user).
    pub fn from_name(name: &str) -> AccountType {
        match name {
            "service" => AccountType::Service,
            "app" => AccountType::App,
            _ => AccountType::User,
        }
    }
}

/// An account. Secrets are never part of it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// Unique within its namespace (an email, a service name, …).
    pub id: String,
    /// Display name.
    #[serde(default)]
    pub name: String,
    /// User or service.
    #[serde(rename = "type", default)]
    pub kind: AccountType,
    /// The namespace it belongs to.
    pub namespace: String,
    /// Scopes it holds (`admin`, …).
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Free-form metadata.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Creation time, Unix seconds.
    #[serde(default)]
    pub created: u64,
    /// Whether an app user confirmed their email address (always false for the others).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub verified: bool,
}

impl Account {
    /// Whether the account holds `scope`. An app user holds [`APP_SCOPE`] alone, whatever
    /// its token says.
    pub fn has_scope(&self, scope: &str) -> bool {
        if self.kind == AccountType::App {
            return scope == APP_SCOPE;
        }
        self.scopes.iter().any(|s| s == scope)
    }

    /// Whether the account is a product's (a platform service of the `micro` namespace),
    /// which may call the endpoints other products open to the products for any namespace.
    pub fn is_product(&self) -> bool {
        self.namespace == crate::namespace::DEFAULT
            && self.kind == AccountType::Service
            && self.has_scope(PLATFORM_SCOPE)
    }

    /// Whether the account may administer namespace `ns`: `admin` of `ns`, or `admin`
    /// of the `micro` namespace.
    pub fn is_admin_of(&self, ns: &str) -> bool {
        self.has_scope(ADMIN_SCOPE) && (self.namespace == ns || self.namespace == crate::namespace::DEFAULT)
    }

    /// Whether the account may read and write namespace `ns`'s data: its admin, or an
    /// account of `ns` with the `data` or `developer` scope.
    pub fn may_use_data_of(&self, ns: &str) -> bool {
        self.is_admin_of(ns)
            || (self.namespace == ns && (self.has_scope(DATA_SCOPE) || self.has_scope(DEVELOPER_SCOPE)))
    }

    /// Whether the account may run, update and kill namespace `ns`'s services: its admin,
    /// or a developer of it.
    pub fn may_deploy_in(&self, ns: &str) -> bool {
        self.is_admin_of(ns) || (self.namespace == ns && self.has_scope(DEVELOPER_SCOPE))
    }

    /// Whether the account may see namespace `ns`'s services, their status and logs: its
    /// admins, developers and viewers.
    pub fn may_observe_in(&self, ns: &str) -> bool {
        self.may_deploy_in(ns) || (self.namespace == ns && self.has_scope(VIEWER_SCOPE))
    }

    /// Whether the account may read namespace `ns`'s data: whoever may use it, and its
    /// viewers.
    pub fn may_read_in(&self, ns: &str) -> bool {
        self.may_use_data_of(ns) || (self.namespace == ns && self.has_scope(VIEWER_SCOPE))
    }
}

/// What is being accessed: `type:name:endpoint`, like `service:helloworld:Greeter.Hello`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Resource {
    /// `service`, `http`, …
    #[serde(rename = "type")]
    pub kind: String,
    /// The service name.
    pub name: String,
    /// The endpoint (`Greeter.Hello`) or HTTP path (`/users/1`).
    pub endpoint: String,
}

impl Resource {
    /// A resource from its parts.
    pub fn new(kind: &str, name: &str, endpoint: &str) -> Resource {
        Resource { kind: kind.into(), name: name.into(), endpoint: endpoint.into() }
    }
}

impl std::fmt::Display for Resource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}", self.kind, self.name, self.endpoint)
    }
}

/// Parses `type:name:endpoint` (also `type:name` meaning every endpoint, and `*`).
/// Parts are 1–256 printable characters without `:` (the endpoint may contain `:` only
/// for HTTP paths, so everything after the second `:` is the endpoint).
pub fn parse_resource(s: &str) -> Result<Resource, Status> {
    let bad = |why: &str| Status::bad_request("auth", format!("resource {s:?}: {why}; use type:name:endpoint"));
    if s == "*" {
        return Ok(Resource::new("*", "*", "*"));
    }
    let mut parts = s.splitn(3, ':');
    let kind = parts.next().unwrap_or("");
    let name = parts.next().ok_or_else(|| bad("missing the name"))?;
    let endpoint = parts.next().unwrap_or("*");
    for (what, p) in [("type", kind), ("name", name), ("endpoint", endpoint)] {
        if p.is_empty() || p.len() > 256 || p.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(bad(&format!("the {what} must be 1-256 printable characters")));
        }
        if p.contains('*') && !p.ends_with('*') || p.matches('*').count() > 1 {
            return Err(bad(&format!("the {what} may only end with *")));
        }
    }
    if kind.contains(':') || name.contains(':') {
        return Err(bad("too many parts"));
    }
    Ok(Resource::new(kind, name, endpoint))
}

/// Grant or deny.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// Let the call through.
    #[default]
    Granted,
    /// Refuse it.
    Denied,
}

/// A rule of a namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    /// Unique within the namespace.
    pub id: String,
    /// `""` public, `*` any account of the namespace, `+` any account, else a scope.
    #[serde(default)]
    pub scope: String,
    /// The resources it covers (parts may be `*` or end with `*`).
    pub resource: Resource,
    /// Grant or deny.
    pub access: Access,
    /// Higher wins.
    #[serde(default)]
    pub priority: i32,
}

/// Whether a pattern part matches a value: exact, `*`, or a `prefix*`.
fn part_matches(pattern: &str, value: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => value.starts_with(prefix),
        None => pattern == value,
    }
}

impl Rule {
    /// Whether the rule covers `resource`.
    pub fn covers(&self, resource: &Resource) -> bool {
        part_matches(&self.resource.kind, &resource.kind)
            && part_matches(&self.resource.name, &resource.name)
            && part_matches(&self.resource.endpoint, &resource.endpoint)
    }

    /// Whether the rule's scope admits `account` calling into namespace `ns`.
    pub fn admits(&self, account: Option<&Account>, ns: &str) -> bool {
        match self.scope.as_str() {
            "" => true,
            // App users are somebody only to rules that name them.
            "*" => account.is_some_and(|a| a.namespace == ns && a.kind != AccountType::App),
            "+" => account.is_some_and(|a| a.kind != AccountType::App),
            scope => account.is_some_and(|a| a.namespace == ns && a.has_scope(scope)),
        }
    }
}

/// Checks a rule before it is stored: an id, a known scope form and a valid resource.
pub fn validate_rule(rule: &Rule) -> Result<(), Status> {
    let id_ok = !rule.id.is_empty()
        && rule.id.len() <= 128
        && rule.id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !id_ok {
        return Err(Status::bad_request("auth", format!("invalid rule id {:?}", rule.id)));
    }
    let scope_ok = rule.scope.len() <= 128 && rule.scope.chars().all(|c| !c.is_control() && !c.is_whitespace());
    if !scope_ok {
        return Err(Status::bad_request("auth", format!("invalid scope {:?}", rule.scope)));
    }
    parse_resource(&rule.resource.to_string()).map(|_| ())
}

/// Decides a call by `account` (none: anonymous) into namespace `ns` on `resource`:
/// the highest-priority matching rule that admits the caller wins, denied winning ties;
/// no such rule means denied. Denied is `Unauthenticated` for an anonymous caller (log
/// in and try again) and `PermissionDenied` otherwise.
pub fn decide(rules: &[Rule], account: Option<&Account>, ns: &str, resource: &Resource) -> Result<(), Status> {
    let mut best: Option<&Rule> = None;
    for r in rules.iter().filter(|r| r.covers(resource) && r.admits(account, ns)) {
        best = match best {
            None => Some(r),
            Some(b) if r.priority > b.priority => Some(r),
            Some(b) if r.priority == b.priority && r.access == Access::Denied => Some(r),
            keep => keep,
        };
    }
    match best.map(|r| r.access) {
        Some(Access::Granted) => Ok(()),
        _ if account.is_none() => {
            Err(Status::new(Code::Unauthenticated, "auth", format!("{resource} needs credentials: log in first")))
        }
        _ => Err(Status::new(Code::PermissionDenied, "auth", format!("access to {resource} denied in namespace {ns}"))),
    }
}

/// Refuses an account acting in a namespace not its own (unless it administers it).
pub fn check_namespace(account: Option<&Account>, ns: &str) -> Result<(), Status> {
    match account {
        Some(a) if a.namespace != ns && !a.is_admin_of(ns) => Err(Status::new(
            Code::PermissionDenied,
            "auth",
            format!("account {} of namespace {} cannot act in namespace {ns}", a.id, a.namespace),
        )),
        _ => Ok(()),
    }
}

/// The namespace a call acts in: the one asked for (the `micro-namespace` header), else
/// the caller's account's, else `fallback`.
pub fn resolve_namespace(asked: Option<&str>, account: Option<&Account>, fallback: &str) -> String {
    asked
        .filter(|a| !a.is_empty())
        .map(str::to_string)
        .or_else(|| account.map(|a| a.namespace.clone()))
        .unwrap_or_else(|| fallback.to_string())
}

/// The rule every new namespace starts with: its services (RPC and HTTP) are public.
pub fn default_rule() -> Rule {
    Rule {
        id: "default".into(),
        scope: String::new(),
        resource: Resource::new("*", "*", "*"),
        access: Access::Granted,
        priority: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn account(ns: &str, scopes: &[&str]) -> Account {
        Account {
            id: "a".into(),
            namespace: ns.into(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    pub(super) fn rule(id: &str, scope: &str, res: &str, access: Access, priority: i32) -> Rule {
        Rule { id: id.into(), scope: scope.into(), resource: parse_resource(res).unwrap(), access, priority }
    }

    #[test]
    fn parsing_resources() {
        assert_eq!(parse_resource("service:foo:Foo.Bar").unwrap(), Resource::new("service", "foo", "Foo.Bar"));
        assert_eq!(parse_resource("service:foo").unwrap().endpoint, "*");
        assert_eq!(parse_resource("http:web:/api/v1:x").unwrap().endpoint, "/api/v1:x");
        assert_eq!(parse_resource("*").unwrap(), Resource::new("*", "*", "*"));
        for bad in ["", "service", "service::x", ":foo:x", "service:f*o:x", "service:foo:a**", "service:foo:a b"] {
            assert!(parse_resource(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn priority_wildcards_and_prefixes() {
        let ns = "shop";
        let hello = Resource::new("service", "helloworld", "Greeter.Hello");
        let rules = vec![
            default_rule(),
            rule("lock", "", "service:helloworld:*", Access::Denied, 10),
            rule("staff", "staff", "service:helloworld:Greeter.*", Access::Granted, 20),
        ];
        // Anonymous: the deny at 10 beats the public default at 0.
        assert_eq!(decide(&rules, None, ns, &hello).unwrap_err().code(), Code::Unauthenticated);
        // Staff of this namespace: the prefix rule at 20 wins.
        assert!(decide(&rules, Some(&account(ns, &["staff"])), ns, &hello).is_ok());
        // Staff of another namespace: not admitted by the named scope; denied.
        assert_eq!(
            decide(&rules, Some(&account("other", &["staff"])), ns, &hello).unwrap_err().code(),
            Code::PermissionDenied
        );
        // Other services stay public.
        assert!(decide(&rules, None, ns, &Resource::new("service", "notes", "Notes.List")).is_ok());
        // Ties: denied wins.
        let tie = vec![rule("a", "", "*", Access::Granted, 5), rule("b", "", "*", Access::Denied, 5)];
        assert!(decide(&tie, None, ns, &hello).is_err());
        // No rules: denied.
        assert!(decide(&[], Some(&account(ns, &["admin"])), ns, &hello).is_err());
        // `*` is any account of the namespace, `+` any account at all.
        let own = vec![rule("own", "*", "*", Access::Granted, 0)];
        assert!(decide(&own, Some(&account(ns, &[])), ns, &hello).is_ok());
        assert!(decide(&own, Some(&account("other", &[])), ns, &hello).is_err());
        let any = vec![rule("any", "+", "*", Access::Granted, 0)];
        assert!(decide(&any, Some(&account("other", &[])), ns, &hello).is_ok());
        assert!(decide(&any, None, ns, &hello).is_err());
        // Path prefixes for HTTP services.
        let http = vec![rule("api", "", "http:web:/api/*", Access::Granted, 0)];
        assert!(decide(&http, None, ns, &Resource::new("http", "web", "/api/v1/users")).is_ok());
        assert!(decide(&http, None, ns, &Resource::new("http", "web", "/admin")).is_err());
    }

    #[test]
    fn admins() {
        assert!(account("shop", &["admin"]).is_admin_of("shop"));
        assert!(!account("shop", &["admin"]).is_admin_of("other"));
        assert!(account("micro", &["admin"]).is_admin_of("other"));
        assert!(!account("shop", &["staff"]).is_admin_of("shop"));
    }

    #[test]
    fn rule_validation() {
        assert!(validate_rule(&default_rule()).is_ok());
        let mut r = default_rule();
        r.id = "bad id".into();
        assert!(validate_rule(&r).is_err());
        let mut r = default_rule();
        r.resource.name = "a*b".into();
        assert!(validate_rule(&r).is_err());
    }
}

#[cfg(test)]
mod fuzz {
    //! Randomised inputs for the parsers (a stable-toolchain complement to the
    //! `cargo fuzz` targets in `fuzz/`): no panic, and what parses round-trips.
    use super::*;

    /// A small deterministic generator (xorshift), so failures reproduce.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn string(&mut self) -> String {
            const PIECES: [&str; 14] =
                [":", "*", "/", "a", "Z", "9", ".", " ", "\u{0}", "é", "service", "::", "**", "\n"];
            let n = (self.next() % 12) as usize;
            (0..n).map(|_| PIECES[(self.next() % PIECES.len() as u64) as usize]).collect()
        }
    }

    #[test]
    fn app_users_are_somebody_only_to_rules_naming_them() {
        let app = Account {
            id: "u1".into(),
            kind: AccountType::App,
            namespace: "shop".into(),
            // Whatever a token says, an app user holds the app scope alone.
            scopes: vec![ADMIN_SCOPE.into(), DATA_SCOPE.into(), APP_SCOPE.into()],
            ..Default::default()
        };
        assert!(app.has_scope(APP_SCOPE) && !app.has_scope(ADMIN_SCOPE) && !app.has_scope(DATA_SCOPE));
        assert!(!app.is_admin_of("shop") && !app.may_use_data_of("shop") && !app.may_read_in("shop"));
        let res = Resource::new("service", "orders", "Orders.List");
        for scope in ["*", "+"] {
            let r = super::tests::rule("r", scope, "service:orders", Access::Granted, 0);
            assert!(decide(&[r], Some(&app), "shop", &res).is_err(), "{scope}");
        }
        let named = super::tests::rule("r", APP_SCOPE, "service:orders", Access::Granted, 0);
        assert!(decide(std::slice::from_ref(&named), Some(&app), "shop", &res).is_ok());
        assert!(
            decide(&[named], Some(&super::tests::account("shop", &[])), "shop", &res).is_err(),
            "a team member is no app user"
        );
        assert!(check_namespace(Some(&app), "blog").is_err());
        // A product is told apart (it acts for any namespace only where a product's endpoint
        // lets it, see the framework's authorizer); a service of micro without the scope is not one.
        let product = Account {
            kind: AccountType::Service,
            scopes: vec![PLATFORM_SCOPE.into()],
            ..super::tests::account(crate::namespace::DEFAULT, &[])
        };
        assert!(product.is_product() && check_namespace(Some(&product), "shop").is_err());
        let plain = Account { kind: AccountType::Service, ..super::tests::account(crate::namespace::DEFAULT, &[]) };
        assert!(!plain.is_product());
        assert_eq!(AccountType::from_name("app"), AccountType::App);
        assert_eq!(AccountType::from_name("anything"), AccountType::User);
    }

    #[test]
    fn resource_parsing_never_panics_and_round_trips() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut parsed = 0;
        for _ in 0..50_000 {
            let s = rng.string();
            if let Ok(r) = parse_resource(&s) {
                parsed += 1;
                let again = parse_resource(&r.to_string()).expect("a parsed resource parses again");
                assert_eq!(again, r, "{s:?}");
                // Deciding with it as a rule never panics either.
                let rule = Rule {
                    id: "r".into(),
                    scope: rng.string(),
                    resource: r.clone(),
                    access: Access::Granted,
                    priority: 0,
                };
                let _ = decide(&[rule], None, "micro", &r);
            }
        }
        assert!(parsed > 100, "the generator reaches valid inputs ({parsed})");
    }
}
