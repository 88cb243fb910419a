//! The one authorizer: every call that reaches the server's core services, a service of
//! the framework, or the gateway is decided here. A token is taken from the request,
//! verified with a [`KeySource`], the namespace the call acts in is resolved, and a
//! [`Policy`] and the namespace's rules (from a [`RuleSource`]) decide; the verified
//! [`Caller`] is put in the request's extensions, where handlers read it
//! ([`Caller::of`], [`crate::Context::caller`]) instead of verifying tokens again.

use super::token::Claims;
use micro_core::auth::{Access, Account, Resource, Rule, check_namespace, decide, resolve_namespace};
use micro_core::metadata::NAMESPACE;
use micro_core::{Code, Status};
use std::sync::Arc;

/// Headers that once carried the caller's identity: a client-sent one is dropped before
/// any handler runs, so nothing downstream can be fooled by them.
pub const IDENTITY_HEADERS: [&str; 2] = ["micro-account", "micro-account-admin"];

/// Who calls: the verified account (none: anonymous) and the namespace the call acts in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The caller's account, from its verified token; `None` for an anonymous call.
    pub account: Option<Account>,
    /// The namespace the call acts in.
    pub namespace: String,
    /// When the caller's token expires (Unix seconds); `None` for an anonymous call.
    pub expires: Option<u64>,
}

impl Caller {
    /// The caller of a tonic request, as the authorizer put it there.
    pub fn of<T>(req: &tonic::Request<T>) -> Option<&Caller> {
        req.extensions().get::<Caller>()
    }

    /// The caller's account id, when it has one.
    pub fn id(&self) -> Option<&str> {
        self.account.as_ref().map(|a| a.id.as_str())
    }

    /// Whether the caller administers the namespace the call acts in.
    pub fn is_admin(&self) -> bool {
        self.account.as_ref().is_some_and(|a| a.is_admin_of(&self.namespace))
    }

    /// Whether the caller administers the whole server (the `micro` namespace's admins).
    pub fn is_operator(&self) -> bool {
        self.account.as_ref().is_some_and(|a| a.is_admin_of(micro_core::namespace::DEFAULT))
    }
}

/// Where the [`Authorizer`] leaves the caller it identified, for whoever handed the
/// request in (the server's proxy meters calls to the core by it): put one in the
/// request's extensions before the call. Extensions never cross the wire, so only this
/// process can ask for it.
#[derive(Clone, Debug, Default)]
pub struct CallerSlot(pub Arc<std::sync::OnceLock<Caller>>);

/// Verifies tokens.
#[async_trait::async_trait]
pub trait KeySource: Send + Sync + 'static {
    /// Verifies `token`; with `audience`, a token delegated to that audience is accepted
    /// too (one delegated to any other never is).
    fn verify(&self, token: &str, audience: Option<&str>) -> Result<Claims, Status>;

    /// Called when `token` failed to verify: perhaps it is signed by a key not seen yet.
    /// Returns whether the keys may have changed (the token is then verified again).
    async fn refresh(&self, token: &str) -> bool;
}

/// The rules of namespaces.
#[async_trait::async_trait]
pub trait RuleSource: Send + Sync + 'static {
    /// The current rules of `namespace`.
    async fn rules(&self, namespace: &str) -> Result<Arc<Vec<Rule>>, Status>;
}

/// How an endpoint is protected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protection {
    /// Anyone (health, reflection, debug, …).
    Public,
    /// Anyone, but a token that comes along is verified and must be of the namespace the
    /// call acts in (or administer it); the handler then sees that caller, else an
    /// anonymous one in the namespace asked for. For products whose own rules decide (the
    /// database's per-collection rules).
    Open,
    /// The namespace's admin scope (or the micro namespace's), whatever the rules say.
    Admin,
    /// Its admin, or an account of the namespace with the `data` or `developer` scope.
    Data,
    /// Reading data, services and logs: whoever [`Protection::Data`] lets in, and the
    /// namespace's viewers.
    Read,
    /// Running, updating and killing services: the namespace's admins and developers.
    Deploy,
    /// Seeing the namespace's services, their status and logs: its admins, developers and
    /// viewers (not accounts that only use data, like the services' own).
    Observe,
    /// Like [`Protection::Members`], but not for an account that may only read (a
    /// viewer): registering services, locks, publishing on the broker.
    Contribute,
    /// The server's admins (the `micro` namespace's), whatever namespace the call names.
    Operator,
    /// Any account of the namespace (or its admin), unless the namespace's rules say
    /// otherwise in a rule naming the service (the catch-all public rule does not open it).
    Members,
    /// Like [`Protection::Members`], and the products' accounts too, acting for any
    /// namespace: an endpoint of a product that other products call for the namespaces
    /// they serve (the users product mails its users' codes with `Email.Send`).
    Products,
    /// The namespace's rules.
    Rules,
}

/// Says how each endpoint is protected.
pub trait Policy: Send + Sync + 'static {
    /// The protection of `endpoint` (`Handler.Method`) of `service`.
    fn protection(&self, service: &str, endpoint: &str) -> Protection;
}

/// The policy of a service of the framework: health, reflection and `Debug.*` are public,
/// everything else is protected alike.
pub struct ServicePolicy {
    /// How the service's own endpoints are protected.
    pub endpoints: Protection,
}

impl ServicePolicy {
    /// A user's service: its endpoints decided by the namespace's rules.
    pub const RULES: ServicePolicy = ServicePolicy { endpoints: Protection::Rules };
    /// A platform service: its endpoints for the namespace's accounts, unless a rule
    /// naming the service says otherwise.
    pub const MEMBERS: ServicePolicy = ServicePolicy { endpoints: Protection::Members };
}

impl Policy for ServicePolicy {
    fn protection(&self, service: &str, endpoint: &str) -> Protection {
        if service.starts_with("grpc.") || endpoint.starts_with("Debug.") { Protection::Public } else { self.endpoints }
    }
}

/// The policy of a platform service: the endpoints it names are public, the others are
/// for the namespace's members ([`ServicePolicy::MEMBERS`]).
pub struct PlatformPolicy {
    /// `Handler.Method`s anyone may call.
    pub public: Vec<String>,
    /// `Handler.Method`s anyone may call, identified when a token comes along
    /// ([`Protection::Open`]).
    pub open: Vec<String>,
    /// `Handler.Method`s the other products may call for any namespace
    /// ([`Protection::Products`]).
    pub products: Vec<String>,
}

impl Policy for PlatformPolicy {
    fn protection(&self, service: &str, endpoint: &str) -> Protection {
        if self.public.iter().any(|p| p == endpoint) {
            Protection::Public
        } else if self.open.iter().any(|p| p == endpoint) {
            Protection::Open
        } else if self.products.iter().any(|p| p == endpoint) {
            Protection::Products
        } else {
            ServicePolicy::MEMBERS.protection(service, endpoint)
        }
    }
}

/// Where the namespace of a call comes from.
#[derive(Clone, Debug)]
pub enum Scope {
    /// The server's core (and its gateway): the namespace asked for (`micro-namespace`),
    /// else the caller's account's, else the fallback; an account of another namespace
    /// is refused (unless it administers this one).
    Core {
        /// The namespace of a call that names none and carries no token.
        fallback: String,
    },
    /// A service: it acts in its own namespace only (a call asking for another is
    /// refused); tokens delegated to it are accepted; an account of another namespace
    /// gets what the rules grant any account (scope `+`) or the public.
    Service {
        /// The service's namespace.
        namespace: String,
        /// The service's name.
        service: String,
    },
    /// A platform service (a product of `services/`): registered in `micro` and serving
    /// every namespace. The namespace is resolved as at the core (fallback `micro`) and
    /// an account of another namespace refused; tokens delegated to the service in the
    /// namespace asked for (`<namespace>/<service>`) are accepted. Anonymous callers are
    /// refused before any rule is read (a product follows the rules of the namespaces
    /// its accounts call it from, not of any name a stranger sends).
    Platform {
        /// The service's name.
        service: String,
    },
}

impl Scope {
    /// The audience a token delegated to this service names, for a call asking for
    /// namespace `asked`; none at the core.
    fn audience(&self, asked: Option<&str>) -> Option<String> {
        match self {
            Scope::Core { .. } => None,
            Scope::Service { namespace, service } => Some(format!("{namespace}/{service}")),
            // Without a namespace asked for, an account's own token only: a delegated one
            // names the namespace it was delegated in, which must be asked for.
            Scope::Platform { service } => asked.map(|ns| format!("{ns}/{service}")),
        }
    }

    /// The service a resource names: the path's at the core, else the service's own.
    fn service<'a>(&'a self, from_path: &'a str) -> &'a str {
        match self {
            Scope::Core { .. } => from_path,
            Scope::Service { service, .. } | Scope::Platform { service } => service,
        }
    }
}

/// Verifies, resolves and decides (see the module docs).
pub struct Authorizer {
    keys: Arc<dyn KeySource>,
    rules: Arc<dyn RuleSource>,
    policy: Arc<dyn Policy>,
    scope: Scope,
}

impl Authorizer {
    /// An authorizer over a key source, a rule source and a policy.
    pub fn new(keys: Arc<dyn KeySource>, rules: Arc<dyn RuleSource>, policy: Arc<dyn Policy>, scope: Scope) -> Self {
        Authorizer { keys, rules, policy, scope }
    }

    /// Verifies `token` for `audience` (looking for new keys once when it names one not
    /// seen yet).
    async fn verify(&self, token: &str, audience: Option<&str>) -> Result<Claims, Status> {
        match self.keys.verify(token, audience) {
            Ok(c) => Ok(c),
            Err(e) => {
                if self.keys.refresh(token).await {
                    self.keys.verify(token, audience)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// The caller of a request carrying `token` and `headers`: the token verified and
    /// the namespace resolved ([`Scope`]); `fallback` replaces the core's fallback
    /// namespace (the gateway's comes from the host name). Decides nothing.
    pub async fn identify(
        &self,
        headers: &http::HeaderMap,
        token: Option<&str>,
        fallback: Option<&str>,
    ) -> Result<Caller, Status> {
        let asked = headers.get(NAMESPACE).and_then(|v| v.to_str().ok()).filter(|v| !v.is_empty());
        // A service refuses another namespace before it looks at the token.
        if let Scope::Service { namespace, service } = &self.scope
            && let Some(asked) = asked
            && asked != namespace
        {
            return Err(Status::new(
                Code::PermissionDenied,
                "auth",
                format!("{service} serves namespace {namespace}, not {asked}"),
            ));
        }
        let audience = self.scope.audience(asked);
        let claims = match token {
            Some(t) => Some(self.verify(t, audience.as_deref()).await?),
            None => None,
        };
        let expires = claims.as_ref().map(|c| c.exp);
        let account = claims.map(|c| c.account());
        let namespace = match &self.scope {
            Scope::Core { fallback: f } => resolve_namespace(asked, account.as_ref(), fallback.unwrap_or(f)),
            Scope::Platform { .. } => resolve_namespace(asked, account.as_ref(), micro_core::namespace::DEFAULT),
            Scope::Service { namespace, .. } => namespace.clone(),
        };
        micro_core::namespace::validate(&namespace)?;
        Ok(Caller { account, namespace, expires })
    }

    /// Decides a call by `caller` on `resource`, protected as `protection`.
    pub async fn decide(&self, caller: &Caller, protection: Protection, resource: &Resource) -> Result<(), Status> {
        let account = caller.account.as_ref();
        let ns = &caller.namespace;
        // A product calling a product's endpoint open to the products, for a namespace.
        let product_call = protection == Protection::Products
            && matches!(self.scope, Scope::Platform { .. })
            && account.is_some_and(Account::is_product);
        if product_call {
            return Ok(());
        }
        // The core passes a product's call for a namespace on to the service it names
        // (whose own authorizer decides: a product's endpoint open to the products), and
        // answers its public lookups there (the registry's), but lets no product act in
        // another namespace at the core itself.
        let passing_on = matches!(protection, Protection::Rules | Protection::Public)
            && matches!(self.scope, Scope::Core { .. })
            && account.is_some_and(Account::is_product);
        if !matches!(self.scope, Scope::Service { .. }) && !passing_on {
            check_namespace(account, ns)?;
        }
        if matches!(self.scope, Scope::Platform { .. })
            && account.is_none()
            && !matches!(protection, Protection::Public | Protection::Open)
        {
            return Err(Status::new(
                Code::Unauthenticated,
                "auth",
                format!("{} needs an account of the namespace: log in first", resource.name),
            ));
        }
        // A viewer changes nothing, not even what any member may change.
        let protection = match protection {
            Protection::Contribute if account.is_some_and(|a| a.may_observe_in(ns) && !a.may_use_data_of(ns)) => {
                return Err(Status::new(
                    Code::PermissionDenied,
                    "auth",
                    format!("{} {}: a viewer of {ns} changes nothing", resource.name, resource.endpoint),
                ));
            }
            Protection::Contribute | Protection::Products => Protection::Members,
            p => p,
        };
        match protection {
            Protection::Public | Protection::Open => Ok(()),
            Protection::Operator => match account {
                Some(a) if a.is_admin_of(micro_core::namespace::DEFAULT) => Ok(()),
                Some(_) => Err(Status::new(
                    Code::PermissionDenied,
                    "auth",
                    format!("{} {} is for the server's admins", resource.name, resource.endpoint),
                )),
                None => Err(Status::new(
                    Code::Unauthenticated,
                    "auth",
                    format!("{} needs credentials: log in first", resource.name),
                )),
            },
            Protection::Admin | Protection::Data | Protection::Read | Protection::Deploy | Protection::Observe => {
                match account {
                    Some(a)
                        if match protection {
                            Protection::Data => a.may_use_data_of(ns),
                            Protection::Read => a.may_read_in(ns),
                            Protection::Deploy => a.may_deploy_in(ns),
                            Protection::Observe => a.may_observe_in(ns),
                            _ => a.is_admin_of(ns),
                        } =>
                    {
                        Ok(())
                    }
                    Some(_) => Err(Status::new(
                        Code::PermissionDenied,
                        "auth",
                        format!(
                            "{} {} needs {} of {ns}",
                            resource.name,
                            resource.endpoint,
                            match protection {
                                Protection::Data => "the data scope (or developer, or admin)",
                                Protection::Read => "the viewer scope (or data, developer, or admin)",
                                Protection::Deploy => "the developer scope (or admin)",
                                Protection::Observe => "the viewer scope (or developer, or admin)",
                                _ => "the admin scope",
                            }
                        ),
                    )),
                    None => Err(Status::new(
                        Code::Unauthenticated,
                        "auth",
                        format!("{} needs credentials: log in first", resource.name),
                    )),
                }
            }
            Protection::Members | Protection::Contribute | Protection::Products if caller.is_admin() => Ok(()),
            Protection::Members | Protection::Contribute | Protection::Products => {
                let rules = self.rules.rules(ns).await?;
                let mut effective = vec![Rule {
                    id: "members".into(),
                    scope: "*".into(),
                    resource: Resource::new(&resource.kind, &resource.name, "*"),
                    access: Access::Granted,
                    priority: 0,
                }];
                effective.extend(rules.iter().filter(|r| r.resource.name != "*").cloned());
                decide(&effective, account, ns, resource)
            }
            Protection::Rules => decide(&self.rules.rules(ns).await?, account, ns, resource),
        }
    }
}

/// The service and the endpoint a request's path names: `/{package.Service}/{Method}`
/// for gRPC, `/{service}/{Handler.Method}` for HTTP JSON.
fn service_and_endpoint(path: &str) -> (String, String) {
    match crate::split_grpc_path(path) {
        Some((s, e)) => (s.to_string(), e),
        None => {
            let mut parts = path.trim_start_matches('/').splitn(2, '/');
            (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("").to_string())
        }
    }
}

#[async_trait::async_trait]
impl crate::layer::Authorize for Authorizer {
    async fn authorize(&self, req: &mut http::request::Parts) -> Result<(), Status> {
        for h in IDENTITY_HEADERS {
            req.headers.remove(h);
        }
        req.extensions.remove::<Caller>();
        let (service, endpoint) = service_and_endpoint(req.uri.path());
        let protection = self.policy.protection(&service, &endpoint);
        let service = self.scope.service(&service).to_string();
        // A service answers its public endpoints (health) whatever token comes along.
        if protection == Protection::Public && !matches!(self.scope, Scope::Core { .. }) {
            return Ok(());
        }
        let token = super::bearer(&req.headers);
        let caller = self.identify(&req.headers, token.as_deref(), None).await?;
        if let Some(slot) = req.extensions.get::<CallerSlot>() {
            let _ = slot.0.set(caller.clone());
        }
        self.decide(&caller, protection, &Resource::new("service", &service, &endpoint)).await?;
        if let Ok(v) = caller.namespace.parse() {
            req.headers.insert(NAMESPACE, v);
        }
        req.extensions.insert(caller);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(service_and_endpoint("/helloworld/Greeter.Hello"), ("helloworld".into(), "Greeter.Hello".into()));
        assert_eq!(service_and_endpoint("/registry"), ("registry".into(), "".into()));
    }

    #[test]
    fn service_policy() {
        let p = ServicePolicy::RULES;
        assert_eq!(p.protection("grpc.health.v1", "Health.Check"), Protection::Public);
        assert_eq!(p.protection("helloworld", "Debug.Stats"), Protection::Public);
        assert_eq!(p.protection("helloworld", "Greeter.Hello"), Protection::Rules);
        assert_eq!(ServicePolicy::MEMBERS.protection("distributed", "Notes.List"), Protection::Members);
    }
}
