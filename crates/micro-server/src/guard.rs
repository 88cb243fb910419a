//! Enforcement at the server's core services, its gateway and its proxy: the one
//! [`micro::auth::Authorizer`] over this node's keys and rules ([`AuthService`]) with the
//! core's policy. Every call's token is verified, its namespace resolved (the
//! `micro-namespace` header, else the caller's account, else `micro`), a foreign
//! namespace refused, and the call decided — by the caller's scopes for endpoints that
//! read or change a namespace's state (admin; developer to deploy and write data; data to
//! use data; viewer to read), else by the namespace's rules. Handlers read the
//! verified [`micro::auth::Caller`] from the request.

use crate::auth::AuthService;
use micro::auth::token::Claims;
use micro::auth::{Authorizer, KeySource, Policy, Protection, RuleSource, Scope};
use micro_core::Status;
use micro_core::auth::Rule;
use std::sync::Arc;

/// How the core's endpoints are protected.
pub(crate) struct CorePolicy;

impl Policy for CorePolicy {
    fn protection(&self, service: &str, endpoint: &str) -> Protection {
        // The server's recent spans are every namespace's: its admins' alone.
        if endpoint == "Debug.Trace" {
            return Protection::Operator;
        }
        if service.starts_with("grpc.") || endpoint.starts_with("Debug.") {
            return Protection::Public;
        }
        match service {
            // The auth service checks admin itself where it matters.
            "auth" => Protection::Public,
            // A join token is its own credential; making one is the operators'.
            "cluster" if endpoint == "Cluster.Join" => Protection::Public,
            "cluster" => Protection::Operator,
            // The server's licence: its admins see and install it.
            "license" => Protection::Operator,
            // Links, peers and routes are the operators' (the links themselves are not
            // served here: see the network listener).
            "network" => Protection::Operator,
            // Registry lookups are always public; registering needs an account (a rule
            // like `service:registry:*` with scope `""` opens it).
            "registry" if !matches!(endpoint, "Registry.Register" | "Registry.Deregister") => Protection::Public,
            // Any account of the namespace; a viewer only listens.
            "broker" if endpoint == "Broker.Subscribe" => Protection::Members,
            "registry" | "sync" | "broker" => Protection::Contribute,
            // Viewers read data; developers (and data accounts) also write it.
            "store"
                if matches!(endpoint, "Store.Read" | "Store.List" | "Store.Databases" | "Store.Tables")
                    || matches!(endpoint, "Blob.Get" | "Blob.List") =>
            {
                Protection::Read
            }
            "events" if matches!(endpoint, "Events.Read" | "Events.Topics" | "Events.Groups") => Protection::Read,
            "store" | "config" | "events" => Protection::Data,
            // Viewers see services and their logs; developers run, update and kill them.
            "runtime" if matches!(endpoint, "Runtime.Read" | "Runtime.Logs") => Protection::Observe,
            "runtime" => Protection::Deploy,
            // Viewers see where the services are hosted; admins set it.
            "domains" if endpoint == "Domains.Hosting" => Protection::Observe,
            "usage" | "domains" => Protection::Admin,
            _ => Protection::Rules,
        }
    }
}

#[tonic::async_trait]
impl KeySource for AuthService {
    fn verify(&self, token: &str, audience: Option<&str>) -> Result<Claims, Status> {
        match audience {
            Some(a) => self.verify_audience(token, a),
            None => AuthService::verify(self, token),
        }
    }

    async fn refresh(&self, token: &str) -> bool {
        self.learn_signer_of(token).await
    }
}

#[tonic::async_trait]
impl RuleSource for AuthService {
    async fn rules(&self, namespace: &str) -> Result<Arc<Vec<Rule>>, Status> {
        self.cached_rules(namespace).await
    }
}

/// The core's authorizer over `auth` (the router's hook; the gateway and the proxy
/// identify callers with it too).
pub(crate) fn authorizer(auth: &AuthService) -> Arc<Authorizer> {
    let scope = Scope::Core { fallback: micro_core::namespace::DEFAULT.to_string() };
    Arc::new(Authorizer::new(Arc::new(auth.clone()), Arc::new(auth.clone()), Arc::new(CorePolicy), scope))
}

#[cfg(test)]
mod tests {
    use super::*;
    use micro::auth::bearer;

    #[test]
    fn policies() {
        let p = |s, e| CorePolicy.protection(s, e);
        assert_eq!(p("grpc.health.v1", "Health.Check"), Protection::Public);
        assert_eq!(p("registry", "Registry.GetService"), Protection::Public);
        assert_eq!(p("registry", "Registry.Watch"), Protection::Public);
        assert_eq!(p("registry", "Registry.Register"), Protection::Contribute);
        assert_eq!(p("broker", "Broker.Publish"), Protection::Contribute);
        assert_eq!(p("broker", "Broker.Subscribe"), Protection::Members);
        assert_eq!(p("store", "Store.Read"), Protection::Read);
        assert_eq!(p("store", "Blob.Put"), Protection::Data);
        assert_eq!(p("config", "Config.Get"), Protection::Data);
        assert_eq!(p("runtime", "Runtime.Create"), Protection::Deploy);
        assert_eq!(p("network", "Network.Token"), Protection::Operator);
        assert_eq!(p("network", "Network.Routes"), Protection::Operator);
        assert_eq!(p("runtime", "Runtime.Upload"), Protection::Deploy);
        assert_eq!(p("runtime", "Runtime.Download"), Protection::Deploy);
        assert_eq!(p("runtime", "Runtime.Logs"), Protection::Observe);
        assert_eq!(p("runtime", "Runtime.Read"), Protection::Observe);
        assert_eq!(p("store", "Store.Write"), Protection::Data);
        assert_eq!(p("store", "Blob.Get"), Protection::Read);
        assert_eq!(p("events", "Events.Publish"), Protection::Data);
        assert_eq!(p("events", "Events.Read"), Protection::Read);
        assert_eq!(p("config", "Config.Get"), Protection::Data);
        assert_eq!(p("store", "Debug.Health"), Protection::Public);
        assert_eq!(p("registry", "Debug.Trace"), Protection::Operator);
        assert_eq!(p("cluster", "Cluster.Join"), Protection::Public);
        assert_eq!(p("cluster", "Cluster.Token"), Protection::Operator);
        assert_eq!(p("license", "License.Show"), Protection::Operator);
        assert_eq!(p("license", "License.Install"), Protection::Operator);
        assert_eq!(p("sync", "Sync.Lock"), Protection::Contribute);
        assert_eq!(p("helloworld", "Greeter.Hello"), Protection::Rules);
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
