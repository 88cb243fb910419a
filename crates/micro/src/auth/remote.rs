//! The key and rule sources of a service that talks to a server: the server's public
//! keys (tokens are verified locally) and its namespace's rules, followed through the
//! auth service's `WatchRules` stream (a change reaches the service as soon as the
//! server makes it, without polling).

use super::authorizer::{Authorizer, KeySource, RuleSource, Scope, ServicePolicy};
use super::token::{self, Claims};
use super::{Credentials, TokenSource};
use crate::proto::auth as pb;
use micro_core::auth::Rule;
use micro_core::{Code, Status};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// How often a service looks for new keys at most, when a token names one it does not know.
const KEY_LOOKUP_EVERY: Duration = Duration::from_secs(1);

/// Where a service reaches the server's auth service.
struct Server {
    transport: crate::Transport,
    address: String,
    namespace: String,
    credentials: Option<Arc<Credentials>>,
}

impl Server {
    fn client(&self) -> Result<pb::auth_client::AuthClient<crate::data::Ch>, Status> {
        let source = self.credentials.clone().map(|c| c as Arc<dyn TokenSource>);
        Ok(pb::auth_client::AuthClient::new(crate::Channel::on(&self.transport, &self.address, source)?))
    }

    fn request<T>(&self, msg: T, timeout: Option<Duration>) -> Result<tonic::Request<T>, Status> {
        crate::data::request(&self.namespace, msg, timeout)
    }
}

/// The server's public keys, read at start and again when a token names a key not seen.
pub struct ServerKeys {
    server: Arc<Server>,
    verifier: RwLock<Option<token::Verifier>>,
    looked_up: std::sync::Mutex<Option<Instant>>,
}

impl ServerKeys {
    /// Reads the server's public keys.
    pub async fn load(&self) -> Result<(), Status> {
        let json = self
            .server
            .client()?
            .public_keys(self.server.request(pb::PublicKeysRequest {}, Some(Duration::from_secs(5)))?)
            .await
            .map_err(|e| crate::status::from_tonic(&e))?
            .into_inner()
            .json;
        let keys: token::PublicKeys =
            serde_json::from_str(&json).map_err(|e| Status::internal("auth", format!("public keys: {e}")))?;
        *self.verifier.write().unwrap_or_else(|e| e.into_inner()) = Some(token::Verifier::new(&keys)?);
        Ok(())
    }
}

#[async_trait::async_trait]
impl KeySource for ServerKeys {
    fn verify(&self, token: &str, audience: Option<&str>) -> Result<Claims, Status> {
        match (self.verifier.read().unwrap_or_else(|e| e.into_inner()).as_ref(), audience) {
            (Some(v), Some(a)) => v.verify_for(token, a),
            (Some(v), None) => v.verify(token),
            (None, _) => Err(Status::new(Code::Unauthenticated, "auth", "tokens cannot be verified yet")),
        }
    }

    async fn refresh(&self, _token: &str) -> bool {
        {
            let mut last = self.looked_up.lock().unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|l| l.elapsed() < KEY_LOOKUP_EVERY) {
                return false;
            }
            *last = Some(Instant::now());
        }
        self.load().await.is_ok()
    }
}

/// The rules of a namespace as the server last sent them.
#[derive(Clone)]
enum Known {
    /// Not read yet.
    Unknown,
    /// The rules in force.
    Rules(Arc<Vec<Rule>>),
    /// Never read: why (the follower keeps trying).
    Failed(String),
}

/// One namespace's rules, followed in the background until dropped.
struct Follower {
    known: Arc<RwLock<Known>>,
    changed: tokio::sync::watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Follower {
    /// Waits (up to `timeout`) until the rules have been read once (or failed to be).
    async fn first(&self, timeout: Duration) -> Option<Result<Arc<Vec<Rule>>, String>> {
        let mut rx = self.changed.subscribe();
        let wait = async {
            loop {
                match &*self.known.read().unwrap_or_else(|e| e.into_inner()) {
                    Known::Rules(r) => return Ok(r.clone()),
                    Known::Failed(why) => return Err(why.clone()),
                    Known::Unknown => {}
                }
                if rx.changed().await.is_err() {
                    // The follower stopped: nothing more will come.
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.ok()
    }
}

/// How many namespaces' rules a platform service follows at once (the first followed
/// go first).
const MAX_FOLLOWED: usize = 1_000;

/// Followers by namespace, and the order they were added in.
type Followers = (std::collections::HashMap<String, Arc<Follower>>, std::collections::VecDeque<String>);

/// The rules of namespaces, each followed through `WatchRules` in the background from
/// the first call in it (until dropped): a service follows its own namespace's, a
/// platform service those of every namespace it is called in. A service without an
/// account cannot read them: it keeps the default rule (its services public).
pub struct WatchedRules {
    server: Arc<Server>,
    followers: std::sync::Mutex<Followers>,
}

impl WatchedRules {
    fn new(server: Arc<Server>) -> Arc<WatchedRules> {
        Arc::new(WatchedRules { server, followers: Default::default() })
    }

    fn follower(&self, namespace: &str) -> Arc<Follower> {
        let mut guard = self.followers.lock().unwrap_or_else(|e| e.into_inner());
        let (followers, order) = &mut *guard;
        if let Some(f) = followers.get(namespace) {
            return f.clone();
        }
        while followers.len() >= MAX_FOLLOWED {
            let Some(oldest) = order.pop_front() else { break };
            followers.remove(&oldest);
        }
        let known = Arc::new(RwLock::new(Known::Unknown));
        let changed = tokio::sync::watch::channel(0).0;
        let task = tokio::spawn(follow(self.server.clone(), namespace.to_string(), known.clone(), changed.clone()));
        let f = Arc::new(Follower { known, changed, task });
        followers.insert(namespace.to_string(), f.clone());
        order.push_back(namespace.to_string());
        f
    }
}

/// Follows the namespace's rules: the stream's first message is the rules now, each
/// later one the rules after a change; a broken stream is opened again (backing off up
/// to 5 s), and the last rules stay in force meanwhile.
async fn follow(
    server: Arc<Server>,
    namespace: String,
    known: Arc<RwLock<Known>>,
    changed: tokio::sync::watch::Sender<u64>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let opened = async {
            let mut client = server.client()?;
            let req = server.request(pb::WatchRulesRequest { namespace: namespace.clone() }, None)?;
            client.watch_rules(req).await.map_err(|e| crate::status::from_tonic(&e)).map(|r| r.into_inner())
        };
        match opened.await {
            Ok(mut stream) => loop {
                match stream.message().await {
                    Ok(Some(msg)) => {
                        backoff = Duration::from_millis(100);
                        match msg.rules.into_iter().map(crate::proto::rule_of).collect::<Result<Vec<_>, _>>() {
                            Ok(rules) => {
                                *known.write().unwrap_or_else(|e| e.into_inner()) = Known::Rules(Arc::new(rules));
                                changed.send_modify(|n| *n += 1);
                            }
                            Err(e) => tracing::warn!(error = %e, "the server sent a rule this service cannot read"),
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(error = %e, "the rules stream broke; opening it again");
                        break;
                    }
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "following the namespace's rules failed; retrying");
                let mut k = known.write().unwrap_or_else(|e| e.into_inner());
                if !matches!(*k, Known::Rules(_)) {
                    *k = Known::Failed(e.to_string());
                    drop(k);
                    changed.send_modify(|n| *n += 1);
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

#[async_trait::async_trait]
impl RuleSource for WatchedRules {
    async fn rules(&self, namespace: &str) -> Result<Arc<Vec<Rule>>, Status> {
        if self.server.credentials.is_none() {
            return Ok(Arc::new(vec![micro_core::auth::default_rule()]));
        }
        let follower = self.follower(namespace);
        if let Known::Rules(r) = &*follower.known.read().unwrap_or_else(|e| e.into_inner()) {
            return Ok(r.clone());
        }
        // Before the rules are known nothing is decided: an unknown rule could deny.
        match follower.first(Duration::from_secs(5)).await {
            Some(Ok(rules)) => Ok(rules),
            Some(Err(why)) => Err(Status::new(
                Code::Unavailable,
                "auth",
                format!("the rules of {namespace} could not be read ({why}); try again"),
            )),
            None => Err(Status::new(
                Code::Unavailable,
                "auth",
                format!("the rules of {namespace} could not be read yet; try again"),
            )),
        }
    }
}

/// The authorizer of `service` (a platform service when `platform` is given, its
/// endpoints protected as that says; else one of `namespace`), verifying tokens with the keys of the server at `address` and deciding by
/// the rules it follows there (read with `credentials`, when the service has an account),
/// reaching the server on `transport`.
/// The keys are read before it returns (a failure is logged: tokens are refused until
/// they can be read).
pub async fn service_authorizer(
    service: &str,
    namespace: &str,
    platform: Option<super::authorizer::PlatformPolicy>,
    address: &str,
    credentials: Option<Arc<Credentials>>,
    transport: &crate::Transport,
) -> Arc<Authorizer> {
    let server = Arc::new(Server {
        transport: transport.clone(),
        address: address.to_string(),
        namespace: namespace.to_string(),
        credentials,
    });
    let keys =
        Arc::new(ServerKeys { server: server.clone(), verifier: RwLock::new(None), looked_up: Default::default() });
    if let Err(e) = keys.load().await {
        tracing::warn!(service = %service, error = %e, "cannot read the server's public keys yet; tokens are refused until then");
    }
    let rules = WatchedRules::new(server);
    let (scope, policy): (_, Arc<dyn super::authorizer::Policy>) = match platform {
        Some(policy) => (Scope::Platform { service: service.to_string() }, Arc::new(policy)),
        None => (
            Scope::Service { namespace: namespace.to_string(), service: service.to_string() },
            Arc::new(ServicePolicy::RULES),
        ),
    };
    Arc::new(Authorizer::new(keys, rules, policy, scope))
}
