//! Enforcement at the server's core services: every call's token is verified, its
//! namespace resolved (the `micro-namespace` header, else the caller's account, else
//! `micro`), a foreign namespace refused, and the call decided — by the admin scope for
//! endpoints that read or change a namespace's state, else by the namespace's rules.

use crate::auth::AuthService;
use micro::auth::bearer;
use micro::split_grpc_path;
use micro_core::auth::{Access, Account, Resource, Rule, check_namespace, decide, resolve_namespace};
use micro_core::metadata::NAMESPACE;
use micro_core::{Code, Status};

/// The header a verified caller's account id is put in (a client-sent one is dropped).
pub(crate) const ACCOUNT: &str = "micro-account";

/// Set (to `true`) when the verified caller administers the namespace the call acts in
/// (a client-sent one is dropped).
pub(crate) const ADMIN: &str = "micro-account-admin";

/// How a core endpoint is protected.
#[derive(Debug, PartialEq, Eq)]
enum Policy {
    /// Anyone (health, reflection, debug, token issuance, registry lookups).
    Public,
    /// The namespace's admin scope (or the micro namespace's), whatever the rules say.
    Admin,
    /// Its admin, or an account of the namespace with the `data` scope (the service
    /// accounts of runtime services).
    Data,
    /// Any account of the namespace (or its admin), unless the namespace's rules say
    /// otherwise in a rule that names the service: registering, locks and the broker
    /// are not open to the public by default (the catch-all public rule does not open
    /// them; a rule like `service:registry:*` with scope `""` does).
    Members,
    /// The namespace's rules.
    Rules,
}

fn policy(service: &str, endpoint: &str) -> Policy {
    if service.starts_with("grpc.") || endpoint.starts_with("Debug.") {
        return Policy::Public;
    }
    match service {
        // The auth service checks admin itself where it matters.
        "auth" => Policy::Public,
        // Registry lookups are always public; registering needs an account.
        "registry" if !matches!(endpoint, "Registry.Register" | "Registry.Deregister") => Policy::Public,
        "registry" | "sync" | "broker" => Policy::Members,
        "store" | "config" | "events" => Policy::Data,
        "runtime" => Policy::Admin,
        _ => Policy::Rules,
    }
}

/// The caller's account (verified) and the namespace the call acts in.
pub(crate) fn identify(auth: &AuthService, headers: &http::HeaderMap) -> Result<(Option<Account>, String), Status> {
    let account = match bearer(headers) {
        Some(t) => Some(auth.verify(&t)?.account()),
        None => None,
    };
    let asked = headers.get(NAMESPACE).and_then(|v| v.to_str().ok());
    let ns = resolve_namespace(asked, account.as_ref(), micro_core::namespace::DEFAULT);
    check_namespace(account.as_ref(), &ns)?;
    Ok((account, ns))
}

/// The enforcement hook of the core router.
pub(crate) struct Guard {
    pub(crate) auth: AuthService,
}

#[tonic::async_trait]
impl micro::layer::Authorize for Guard {
    async fn authorize(&self, req: &mut http::request::Parts) -> Result<(), Status> {
        req.headers.remove(ACCOUNT);
        req.headers.remove(ADMIN);
        let path = req.uri.path().to_string();
        let (service, endpoint) = match split_grpc_path(&path) {
            Some((s, e)) => (s.to_string(), e),
            None => {
                // HTTP JSON: /{service}/{Handler.Method}
                let mut parts = path.trim_start_matches('/').splitn(2, '/');
                (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("").to_string())
            }
        };
        if let Some(t) = bearer(&req.headers) {
            self.auth.learn_signer_of(&t).await;
        }
        let (account, ns) = identify(&self.auth, &req.headers)?;
        if let Ok(v) = ns.parse() {
            req.headers.insert(NAMESPACE, v);
        }
        if let Some(a) = &account
            && let Ok(v) = a.id.parse()
        {
            req.headers.insert(ACCOUNT, v);
            if a.is_admin_of(&ns) {
                req.headers.insert(ADMIN, http::HeaderValue::from_static("true"));
            }
        }
        match policy(&service, &endpoint) {
            Policy::Public => Ok(()),
            p @ (Policy::Admin | Policy::Data) => match &account {
                Some(a) if a.is_admin_of(&ns) || (p == Policy::Data && a.may_use_data_of(&ns)) => Ok(()),
                Some(_) => Err(Status::new(
                    Code::PermissionDenied,
                    "auth",
                    format!("{service} {endpoint} needs the admin scope of {ns}"),
                )),
                None => Err(Status::new(
                    Code::Unauthenticated,
                    "auth",
                    format!("{service} needs credentials: log in first"),
                )),
            },
            Policy::Members if account.as_ref().is_some_and(|a| a.is_admin_of(&ns)) => Ok(()),
            Policy::Members => {
                let rules = self.auth.cached_rules(&ns).await?;
                let mut effective = vec![Rule {
                    id: "members".into(),
                    scope: "*".into(),
                    resource: Resource::new("service", &service, "*"),
                    access: Access::Granted,
                    priority: 0,
                }];
                effective.extend(rules.iter().filter(|r| r.resource.name != "*").cloned());
                decide(&effective, account.as_ref(), &ns, &Resource::new("service", &service, &endpoint))
            }
            Policy::Rules => {
                let rules = self.auth.cached_rules(&ns).await?;
                decide(&rules, account.as_ref(), &ns, &Resource::new("service", &service, &endpoint))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies() {
        assert_eq!(policy("grpc.health.v1", "Health.Check"), Policy::Public);
        assert_eq!(policy("registry", "Registry.GetService"), Policy::Public);
        assert_eq!(policy("registry", "Registry.Watch"), Policy::Public);
        assert_eq!(policy("registry", "Registry.Register"), Policy::Members);
        assert_eq!(policy("broker", "Broker.Subscribe"), Policy::Members);
        assert_eq!(policy("store", "Store.Read"), Policy::Data);
        assert_eq!(policy("store", "Blob.Put"), Policy::Data);
        assert_eq!(policy("config", "Config.Get"), Policy::Data);
        assert_eq!(policy("runtime", "Runtime.Create"), Policy::Admin);
        assert_eq!(policy("store", "Debug.Health"), Policy::Public);
        assert_eq!(policy("sync", "Sync.Lock"), Policy::Members);
        assert_eq!(policy("helloworld", "Greeter.Hello"), Policy::Rules);
    }

    #[test]
    fn tokens_from_the_header_never_the_cookie() {
        let mut h = http::HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert("cookie", "a=b; micro-token=xyz".parse().unwrap());
        assert_eq!(bearer(&h), None);
        h.insert("authorization", "Bearer abc".parse().unwrap());
        assert_eq!(bearer(&h).as_deref(), Some("abc"));
    }
}
