//! Auth in the framework: signed access tokens (verified locally, without a call) and the
//! rules that decide who may call what.

pub mod token;

use crate::data::TokenSource;
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
}

#[derive(Clone)]
struct Session {
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
}

impl Credentials {
    /// Credentials of account `id` (not logged in yet).
    pub fn new(id: impl Into<String>, secret: impl Into<String>) -> Arc<Credentials> {
        Arc::new(Credentials { id: id.into(), secret: secret.into(), session: RwLock::new(None) })
    }

    /// The account id.
    pub fn id(&self) -> &str {
        &self.id
    }

    async fn ask(address: &str, namespace: &str, req: pb::TokenRequest) -> Result<pb::TokenResponse, Status> {
        let mut client = pb::auth_client::AuthClient::new(crate::data::channel(address)?);
        let mut request = tonic::Request::new(req);
        request.metadata_mut().insert(
            micro_core::metadata::NAMESPACE,
            namespace.parse().map_err(|_| Status::bad_request("auth", "bad namespace"))?,
        );
        request.set_timeout(Duration::from_secs(10));
        client.token(request).await.map(tonic::Response::into_inner).map_err(|e| crate::status::from_tonic(&e))
    }

    /// Logs in to the server at `address` in `namespace`, then keeps the token fresh in
    /// the background (until the credentials are dropped).
    pub async fn login(self: &Arc<Self>, address: &str, namespace: &str) -> Result<(), Status> {
        let req = pb::TokenRequest { id: self.id.clone(), secret: self.secret.clone(), ..Default::default() };
        let res = Self::ask(address, namespace, req).await?;
        self.store(address, namespace, res);
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
                        Self::ask(&s.address, &s.namespace, req).await
                    }
                };
                match res {
                    Ok(r) => me.store(&s.address, &s.namespace, r),
                    Err(e) => {
                        tracing::warn!(account = %me.id, error = %e, "refreshing the service's token failed; retrying")
                    }
                }
            }
        });
        Ok(())
    }

    fn store(&self, address: &str, namespace: &str, res: pb::TokenResponse) {
        *self.session.write().unwrap_or_else(|e| e.into_inner()) = Some(Session {
            address: address.to_string(),
            namespace: namespace.to_string(),
            access: res.access_token,
            refresh: res.refresh_token,
            expiry: res.expiry,
        });
    }
}

/// Attaches the tokens of a [`TokenSource`] to a client's calls (a client-side
/// [`crate::layer::Authorize`] hook).
pub struct Bearer(pub Arc<dyn TokenSource>);

#[async_trait::async_trait]
impl crate::layer::Authorize for Bearer {
    async fn authorize(&self, req: &mut http::request::Parts) -> Result<(), Status> {
        if let Some(t) = self.0.token()
            && !req.headers.contains_key(http::header::AUTHORIZATION)
            && let Ok(v) = http::HeaderValue::from_str(&format!("Bearer {t}"))
        {
            req.headers.insert(http::header::AUTHORIZATION, v);
        }
        Ok(())
    }
}
