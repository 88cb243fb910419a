//! Auth in the framework: signed access tokens (verified locally, without a call) and the
//! rules that decide who may call what.

pub mod authorizer;
pub mod remote;
pub mod token;

pub use authorizer::{Authorizer, Caller, CallerSlot, KeySource, Policy, Protection, RuleSource, Scope};

use crate::data::TokenSource;

/// The bearer token of a request: `authorization: Bearer …`. Cookies never count here:
/// a browser sends them with requests other sites make it send (see [`cookie_token`]).
pub fn bearer(headers: &http::HeaderMap) -> Option<String> {
    let v = headers.get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok())?;
    let t = v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")).unwrap_or(v).trim();
    Some(t.to_string()).filter(|t| !t.is_empty())
}

/// The name of the cookie a browser keeps its token in.
pub const TOKEN_COOKIE: &str = "micro-token";

/// The `micro-token` cookie of a request, for the gateway alone, which accepts it only on
/// requests another site cannot make a browser send (a CORS-preflighted request).
pub fn cookie_token(headers: &http::HeaderMap) -> Option<String> {
    cookie(headers, TOKEN_COOKIE).filter(|t| !t.is_empty())
}

/// The cookies of a request's `Cookie` headers, in order (malformed pairs skipped): the
/// one cookie parser of the project.
pub fn cookies(headers: &http::HeaderMap) -> impl Iterator<Item = cookie::Cookie<'_>> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(cookie::Cookie::split_parse)
        .filter_map(Result::ok)
}

/// The value of the request's cookie `name`, if it sent one.
pub fn cookie(headers: &http::HeaderMap, name: &str) -> Option<String> {
    cookies(headers).find(|c| c.name() == name).map(|c| c.value().to_string())
}

use crate::proto::auth as pb;
use micro_core::Status;
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

/// A service's own account: it logs in with its id and secret and keeps a fresh access
/// token for every call the service makes (see [`crate::Service::credentials`]).
pub struct Credentials {
    id: String,
    secret: String,
    session: RwLock<Option<Session>>,
    /// Tokens delegated to one service each, by audience, with their expiry.
    delegated: std::sync::Mutex<std::collections::HashMap<String, (String, u64)>>,
}

#[derive(Clone)]
struct Session {
    transport: crate::Transport,
    address: String,
    namespace: String,
    access: String,
    refresh: String,
    expiry: u64,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("id", &self.id).field("secret", &"***").finish()
    }
}

impl TokenSource for Credentials {
    fn token(&self) -> Option<String> {
        self.session.read().unwrap_or_else(|e| e.into_inner()).as_ref().map(|s| s.access.clone())
    }

    fn credentials(&self) -> Option<&Credentials> {
        Some(self)
    }
}

impl Credentials {
    /// Credentials of account `id` (not logged in yet).
    pub fn new(id: impl Into<String>, secret: impl Into<String>) -> Arc<Credentials> {
        Arc::new(Credentials {
            id: id.into(),
            secret: secret.into(),
            session: RwLock::new(None),
            delegated: std::sync::Mutex::new(std::collections::HashMap::new()),
        })
    }

    /// The server these credentials logged in to (`host:port`), once logged in.
    pub fn server(&self) -> Option<String> {
        self.session.read().unwrap_or_else(|e| e.into_inner()).as_ref().map(|s| s.address.clone())
    }

    /// A token standing for this account at the service `audience` (`namespace/service`)
    /// only, from the server (cached until shortly before it expires): what a client
    /// sends to another service's node, which must not get a token it could use at the
    /// core or at any other service.
    pub async fn token_for(&self, audience: &str) -> Result<String, Status> {
        if let Some((t, exp)) = self.delegated.lock().unwrap_or_else(|e| e.into_inner()).get(audience)
            && *exp > token::now() + 30
        {
            return Ok(t.clone());
        }
        let session =
            self.session.read().unwrap_or_else(|e| e.into_inner()).clone().ok_or_else(|| {
                Status::new(micro_core::Code::Unauthenticated, "auth", "the service is not logged in")
            })?;
        let token = Arc::new(crate::data::StaticToken(session.access.clone()));
        let channel = crate::Channel::on(&session.transport, &session.address, Some(token))?;
        let mut client = pb::auth_client::AuthClient::new(channel);
        let request = crate::data::request(
            &session.namespace,
            pb::TokenRequest { audience: audience.to_string(), ..Default::default() },
            Some(Duration::from_secs(5)),
        )?;
        let res = client.token(request).await.map_err(|e| crate::status::from_tonic(&e))?.into_inner();
        let mut cache = self.delegated.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() > 1_000 {
            cache.clear();
        }
        cache.insert(audience.to_string(), (res.access_token.clone(), res.expiry));
        Ok(res.access_token)
    }

    /// The account id.
    pub fn id(&self) -> &str {
        &self.id
    }

    async fn ask(
        transport: &crate::Transport,
        address: &str,
        namespace: &str,
        req: pb::TokenRequest,
    ) -> Result<pb::TokenResponse, Status> {
        let mut client = pb::auth_client::AuthClient::new(crate::Channel::on(transport, address, None)?);
        let request = crate::data::request(namespace, req, Some(Duration::from_secs(10)))?;
        client.token(request).await.map(tonic::Response::into_inner).map_err(|e| crate::status::from_tonic(&e))
    }

    /// Logs in to the server at `address` in `namespace`, then keeps the token fresh in
    /// the background (until the credentials are dropped).
    pub async fn login(self: &Arc<Self>, address: &str, namespace: &str) -> Result<(), Status> {
        self.login_on(&crate::Transport::new(), address, namespace).await
    }

    /// Like [`Credentials::login`], reaching the server on `transport`.
    pub async fn login_on(
        self: &Arc<Self>,
        transport: &crate::Transport,
        address: &str,
        namespace: &str,
    ) -> Result<(), Status> {
        let req = pb::TokenRequest { id: self.id.clone(), secret: self.secret.clone(), ..Default::default() };
        let res = Self::ask(transport, address, namespace, req).await?;
        self.store(transport, address, namespace, res);
        let weak: Weak<Credentials> = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(me) = weak.upgrade() else { return };
                let Some(s) = me.session.read().unwrap_or_else(|e| e.into_inner()).clone() else { return };
                drop(me);
                // Refresh a minute before expiry (at least every 5 s when already late).
                let wait = s.expiry.saturating_sub(token::now() + 60).max(5);
                tokio::time::sleep(Duration::from_secs(wait)).await;
                let Some(me) = weak.upgrade() else { return };
                let refreshed = Self::ask(
                    &s.transport,
                    &s.address,
                    &s.namespace,
                    pb::TokenRequest { refresh_token: s.refresh.clone(), ..Default::default() },
                )
                .await;
                let res = match refreshed {
                    Ok(r) => Ok(r),
                    // A lost refresh token: log in again.
                    Err(_) => {
                        let req =
                            pb::TokenRequest { id: me.id.clone(), secret: me.secret.clone(), ..Default::default() };
                        Self::ask(&s.transport, &s.address, &s.namespace, req).await
                    }
                };
                match res {
                    Ok(r) => me.store(&s.transport, &s.address, &s.namespace, r),
                    Err(e) => {
                        tracing::warn!(account = %me.id, error = %e, "refreshing the service's token failed; retrying")
                    }
                }
            }
        });
        Ok(())
    }

    fn store(&self, transport: &crate::Transport, address: &str, namespace: &str, res: pb::TokenResponse) {
        *self.session.write().unwrap_or_else(|e| e.into_inner()) = Some(Session {
            transport: transport.clone(),
            address: address.to_string(),
            namespace: namespace.to_string(),
            access: res.access_token,
            refresh: res.refresh_token,
            expiry: res.expiry,
        });
    }
}

/// The `host:port` of an address given as `host:port` or `scheme://host:port`.
fn authority(address: &str) -> &str {
    address.split_once("://").map(|(_, a)| a).unwrap_or(address)
}

/// Attaches the tokens of a [`TokenSource`] to a client's calls (a client-side
/// [`crate::layer::Authorize`] hook). The source's own token goes only to the server
/// (through its proxy, or a node at the server's address); a node found in the registry
/// is whatever its registrant says it is, so it gets a token delegated to its service
/// alone ([`Credentials::token_for`]), or none when the source cannot delegate.
pub struct Bearer(pub Arc<dyn TokenSource>);

#[async_trait::async_trait]
impl crate::layer::Authorize for Bearer {
    async fn authorize(&self, req: &mut http::request::Parts) -> Result<(), Status> {
        if req.headers.contains_key(http::header::AUTHORIZATION) {
            return Ok(());
        }
        let node = req.uri.authority().map(|a| a.as_str().to_string());
        let server = self.0.credentials().and_then(|c| c.server()).map(|s| authority(&s).to_string());
        let token = match req.extensions.get::<crate::client::Target>() {
            Some(crate::client::Target::Node { service, namespace }) => match self.0.credentials() {
                Some(_) if node.is_some() && node == server => self.0.token(),
                Some(c) => Some(c.token_for(&format!("{namespace}/{service}")).await?),
                None => None,
            },
            // A channel meant for the server, pointed elsewhere, carries no token of a
            // logged-in account (a fixed token cannot tell, and goes as given).
            _ if server.is_some() && node != server => None,
            _ => self.0.token(),
        };
        if let Some(t) = token
            && let Ok(v) = http::HeaderValue::from_str(&format!("Bearer {t}"))
        {
            req.headers.insert(http::header::AUTHORIZATION, v);
        }
        Ok(())
    }
}
