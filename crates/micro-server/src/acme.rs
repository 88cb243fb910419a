//! ACME: a certificate for every verified custom domain, obtained and renewed from the
//! ACME server `MICRO_ACME_DIRECTORY` names (Let's Encrypt, or Debian's `pebble` in the
//! tests) with HTTP-01 or TLS-ALPN-01 challenges, and served by SNI on every TLS
//! listener.
//!
//! The account, the certificates (chain and key) and the pending challenges live in the
//! server's `domains` store (table `acme`), so every node serves the certificates and
//! answers the challenges (`/.well-known/acme-challenge/<token>` on the plain HTTP
//! listener, `MICRO_HTTP_REDIRECT_ADDRESS`; or, for TLS-ALPN-01, a certificate for the
//! domain carrying the answer, served on the gateway's TLS port to a client asking for
//! `acme-tls/1`), whichever node the ACME server reaches. Each
//! node looks every few seconds for verified domains without a certificate, or with one
//! due for renewal (less than `MICRO_ACME_RENEW_DAYS` left, default 30, or asked for with
//! `micro domain renew`), and loads the certificates into its SNI table.

use micro_core::store::{Query, Record, Store, Table};
use micro_core::{Code, Status};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::watch;

/// How often the certificates are looked at.
const CHECK: Duration = Duration::from_secs(2);

/// How long a challenge's answer is kept.
const CHALLENGE_TTL: Duration = Duration::from_secs(600);

/// The path prefix of HTTP-01 challenges.
pub(crate) const CHALLENGE_PATH: &str = "/.well-known/acme-challenge/";

/// The ALPN protocol of TLS-ALPN-01 validation (RFC 8737).
pub(crate) const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// How a domain's control is proved to the ACME server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Challenge {
    /// HTTP-01: an answer at `/.well-known/acme-challenge/` on port 80 (the plain HTTP
    /// listener).
    Http01,
    /// TLS-ALPN-01: a certificate carrying the answer on port 443 (the gateway's TLS
    /// port), for clients asking for `acme-tls/1`.
    TlsAlpn01,
}

/// ACME settings.
#[derive(Clone, Debug, PartialEq)]
pub struct AcmeConfig {
    /// The challenge (`MICRO_ACME_CHALLENGE`: `http-01` or `tls-alpn-01`; default HTTP-01
    /// with a plain HTTP listener, else TLS-ALPN-01).
    pub challenge: Challenge,
    /// The ACME server's directory URL (`MICRO_ACME_DIRECTORY`).
    pub directory: String,
    /// The account's contact address (`MICRO_ACME_EMAIL`).
    pub email: Option<String>,
    /// A CA certificate (PEM file) to trust for the directory, besides the system's
    /// (`MICRO_ACME_CA`; a test server's, like pebble's).
    pub ca: Option<PathBuf>,
    /// Certificates with less than this left are renewed (`MICRO_ACME_RENEW_DAYS`, 30).
    pub renew_before: Duration,
}

/// The plain HTTP listener's answer to an HTTP-01 challenge: the key authorization, or 404.
pub(crate) fn challenge_response(answer: Option<String>) -> http::Response<tonic::body::Body> {
    let mut res = http::Response::new(tonic::body::Body::empty());
    match answer {
        Some(a) => {
            *res.body_mut() = tonic::body::Body::new(http_body_util::Full::new(bytes::Bytes::from(a)));
            res.headers_mut()
                .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/octet-stream"));
        }
        None => *res.status_mut() = http::StatusCode::NOT_FOUND,
    }
    res
}

/// A certificate as stored.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Stored {
    chain: String,
    key: String,
    /// Unix seconds.
    not_after: i64,
    issued: i64,
}

/// The certificates served by SNI, besides the server's own.
#[derive(Clone, Default, Debug)]
pub(crate) struct DomainCerts(Arc<RwLock<HashMap<String, Arc<CertifiedKey>>>>);

/// Serves a domain's certificate when a client names it (SNI), else the server's.
#[derive(Debug)]
pub(crate) struct Sni {
    pub(crate) default: Arc<dyn ResolvesServerCert>,
    pub(crate) domains: DomainCerts,
    /// TLS-ALPN-01 answers, by domain, for clients asking for `acme-tls/1`.
    pub(crate) challenges: DomainCerts,
    /// In a cluster: this node's certificate, for the other nodes (who ask for
    /// [`crate::cluster::NODE_NAME`]).
    pub(crate) node: Option<Arc<micro::tls::Certificates>>,
}

impl ResolvesServerCert for Sni {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // A validation connection gets the challenge's certificate or nothing.
        if hello.alpn().is_some_and(|mut p| p.any(|p| p == ACME_TLS_ALPN)) {
            let name = hello.server_name()?.to_ascii_lowercase();
            return self.challenges.0.read().unwrap_or_else(|e| e.into_inner()).get(&name).cloned();
        }
        if let Some(node) = &self.node
            && hello.server_name() == Some(crate::cluster::NODE_NAME)
        {
            return Some(node.current());
        }
        if let Some(name) = hello.server_name() {
            let found =
                self.domains.0.read().unwrap_or_else(|e| e.into_inner()).get(&name.to_ascii_lowercase()).cloned();
            if found.is_some() {
                return found;
            }
        }
        self.default.resolve(hello)
    }
}

/// The ACME client of this node. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Acme {
    config: AcmeConfig,
    store: Arc<dyn Store>,
    table: Table,
    domains: crate::domains::Domains,
    certs: DomainCerts,
    challenges: DomainCerts,
    /// One node at a time orders a domain's certificate.
    sync: Arc<dyn micro_core::sync::Sync>,
    /// Domains whose last order failed: when, and how many times in a row (orders back
    /// off, as an ACME server limits failed validations).
    failures: Arc<std::sync::Mutex<HashMap<String, (std::time::Instant, u32)>>>,
}

/// The self-signed certificate of a TLS-ALPN-01 answer (RFC 8737): for `domain`, with the
/// key authorization's SHA-256 `digest` in its critical acmeIdentifier extension; (chain,
/// key) as PEM.
fn alpn_certificate(domain: &str, digest: &[u8]) -> Result<(String, String), Status> {
    let bad = |e: rcgen::Error| Status::internal("acme", format!("the TLS-ALPN-01 certificate: {e}"));
    let mut p = rcgen::CertificateParams::new(vec![domain.to_string()]).map_err(bad)?;
    p.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let key = rcgen::KeyPair::generate().map_err(bad)?;
    let cert = p.self_signed(&key).map_err(bad)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A TLS-ALPN-01 answer as served. Not checked the way served certificates are
/// ([`micro::tls::certified_pem`]): the verifier behind that check refuses the critical
/// acmeIdentifier extension this certificate must carry.
fn alpn_key(s: &Stored) -> Result<CertifiedKey, String> {
    use rustls::pki_types::PrivateKeyDer;
    use rustls::pki_types::pem::PemObject;
    let chain = micro::tls::certificates_pem(s.chain.as_bytes(), "the answer").map_err(|e| e.to_string())?;
    let key = PrivateKeyDer::from_pem_slice(s.key.as_bytes()).map_err(|e| e.to_string())?;
    let signing = micro::tls::provider().key_provider.load_private_key(key).map_err(|e| e.to_string())?;
    Ok(CertifiedKey::new(chain, signing))
}

/// How long after `failures` failed orders in a row the next is tried: a minute,
/// doubling, at most a day.
pub(crate) fn backoff(failures: u32) -> Duration {
    Duration::from_secs(60u64.saturating_mul(1u64 << failures.saturating_sub(1).min(11)).min(86_400))
}

fn now() -> i64 {
    (micro_core::store::now_ms() / 1000) as i64
}

fn acme_err(what: &str, e: impl std::fmt::Display) -> Status {
    Status::unavailable("acme", format!("{what}: {e}"))
}

/// The expiry (Unix seconds) of the first certificate of a PEM chain.
fn not_after(chain: &str) -> Result<i64, Status> {
    let der = micro::tls::certificates_pem(chain.as_bytes(), "the issued chain")?;
    let first = der.first().ok_or_else(|| Status::internal("acme", "the issued chain is empty"))?;
    let (_, cert) = x509_parser::parse_x509_certificate(first.as_ref())
        .map_err(|e| Status::internal("acme", format!("the issued certificate does not parse: {e}")))?;
    Ok(cert.validity().not_after.timestamp())
}

/// Whether a certificate issued at `issued`, valid until `not_after`, is due at `now`:
/// less than `before` left, or past a third of its life left when that is shorter.
pub(crate) fn due(issued: i64, not_after: i64, now: i64, before: Duration) -> bool {
    let left = not_after - now;
    let third = (not_after - issued) / 3;
    left < (before.as_secs() as i64).min(third.max(0)) || left <= 0
}

impl Acme {
    pub(crate) fn new(
        config: AcmeConfig,
        store: Arc<dyn Store>,
        domains: crate::domains::Domains,
        certs: DomainCerts,
        challenges: DomainCerts,
        sync: Arc<dyn micro_core::sync::Sync>,
    ) -> Acme {
        let table = Table::new(micro_core::namespace::DEFAULT, "acme");
        Acme { config, store, table, domains, certs, challenges, sync, failures: Arc::default() }
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, Status> {
        match self.store.read(&self.table, key, &Query::default()).await {
            Ok(r) => Ok(r.into_iter().next().map(|r| r.value)),
            Err(e) if e.code() == Code::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The answer to the HTTP-01 challenge `token`, if one is pending.
    pub(crate) async fn answer(&self, token: &str) -> Option<String> {
        if token.is_empty()
            || token.len() > 256
            || !token.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
        {
            return None;
        }
        self.get(&format!("challenge/{token}")).await.ok().flatten().and_then(|v| String::from_utf8(v).ok())
    }

    /// Asks for `domain`'s certificate to be renewed at the next check.
    pub(crate) async fn renew(&self, domain: &str) -> Result<(), Status> {
        self.store.write(&self.table, &Record::new(format!("renew/{domain}"), b"1".to_vec()), None).await
    }

    /// When `domain`'s certificate expires (Unix seconds), if it has one.
    pub(crate) async fn expiry(&self, domain: &str) -> Option<i64> {
        let v = self.get(&format!("cert/{domain}")).await.ok().flatten()?;
        serde_json::from_slice::<Stored>(&v).ok().map(|s| s.not_after)
    }

    async fn account(&self) -> Result<instant_acme::Account, Status> {
        let builder = || match &self.config.ca {
            Some(ca) => instant_acme::Account::builder_with_root(ca),
            None => instant_acme::Account::builder(),
        };
        if let Some(v) = self.get("account").await? {
            let creds: instant_acme::AccountCredentials =
                serde_json::from_slice(&v).map_err(|e| Status::internal("acme", format!("the stored account: {e}")))?;
            return builder()
                .map_err(|e| acme_err("the ACME client", e))?
                .from_credentials(creds)
                .await
                .map_err(|e| acme_err("the ACME account", e));
        }
        let contact: Vec<String> = self.config.email.iter().map(|e| format!("mailto:{e}")).collect();
        let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
        let new =
            instant_acme::NewAccount { contact: &contact, terms_of_service_agreed: true, only_return_existing: false };
        let (account, creds) = builder()
            .map_err(|e| acme_err("the ACME client", e))?
            .create(&new, self.config.directory.clone(), None)
            .await
            .map_err(|e| acme_err("creating the ACME account", e))?;
        let v = serde_json::to_vec(&creds).map_err(|e| Status::internal("acme", e.to_string()))?;
        self.store.write(&self.table, &Record::new("account", v), None).await?;
        tracing::info!(directory = %self.config.directory, "ACME account created");
        Ok(account)
    }

    /// Obtains a certificate for `domain` and stores it.
    async fn issue(&self, domain: &str) -> Result<(), Status> {
        use instant_acme::{AuthorizationStatus, ChallengeType, Identifier, NewOrder, OrderStatus, RetryPolicy};
        let account = self.account().await?;
        let ids = [Identifier::Dns(domain.to_string())];
        let mut order = account.new_order(&NewOrder::new(&ids)).await.map_err(|e| acme_err("a new order", e))?;
        let mut tokens = Vec::new();
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz.map_err(|e| acme_err("an authorization", e))?;
            if authz.status == AuthorizationStatus::Valid {
                continue;
            }
            let kind = match self.config.challenge {
                Challenge::Http01 => ChallengeType::Http01,
                Challenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
            };
            let mut challenge = authz.challenge(kind.clone()).ok_or_else(|| {
                Status::unavailable("acme", format!("the ACME server offers no {kind:?} challenge for {domain}"))
            })?;
            let (key, answer) = match self.config.challenge {
                Challenge::Http01 => (
                    format!("challenge/{}", challenge.token),
                    challenge.key_authorization().as_str().as_bytes().to_vec(),
                ),
                Challenge::TlsAlpn01 => {
                    let (chain, key) = alpn_certificate(domain, challenge.key_authorization().digest().as_ref())?;
                    let stored = Stored { chain, key, not_after: 0, issued: 0 };
                    let v = serde_json::to_vec(&stored).map_err(|e| Status::internal("acme", e.to_string()))?;
                    (format!("alpn/{domain}"), v)
                }
            };
            self.store.write(&self.table, &Record::new(&key, answer), Some(CHALLENGE_TTL)).await?;
            tokens.push(key);
            if self.config.challenge == Challenge::TlsAlpn01 {
                // Every node serves the answer from its next check on.
                self.load_challenges().await?;
                tokio::time::sleep(CHECK + Duration::from_millis(500)).await;
            }
            challenge.set_ready().await.map_err(|e| acme_err("answering the challenge", e))?;
        }
        let retries = RetryPolicy::default();
        let status = order.poll_ready(&retries).await.map_err(|e| acme_err("waiting for validation", e));
        for key in &tokens {
            let _ = self.store.delete(&self.table, key).await;
        }
        if self.config.challenge == Challenge::TlsAlpn01 {
            let _ = self.load_challenges().await;
        }
        match status? {
            OrderStatus::Ready => {}
            other => return Err(Status::unavailable("acme", format!("the order for {domain} is {other:?}"))),
        }
        let key = order.finalize().await.map_err(|e| acme_err("finalizing the order", e))?;
        let chain = order.poll_certificate(&retries).await.map_err(|e| acme_err("downloading the certificate", e))?;
        let stored = Stored { not_after: not_after(&chain)?, chain, key, issued: now() };
        let v = serde_json::to_vec(&stored).map_err(|e| Status::internal("acme", e.to_string()))?;
        self.store.write(&self.table, &Record::new(format!("cert/{domain}"), v), None).await?;
        let _ = self.store.delete(&self.table, &format!("renew/{domain}")).await;
        tracing::info!(domain, not_after = stored.not_after, "certificate obtained");
        Ok(())
    }

    /// Loads the pending TLS-ALPN-01 answers into the SNI table.
    async fn load_challenges(&self) -> Result<(), Status> {
        let pending = self.store.read(&self.table, "alpn/", &Query { prefix: true, ..Default::default() }).await;
        let pending = match pending {
            Ok(p) => p,
            Err(e) if e.code() == Code::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        let mut loaded = HashMap::new();
        for r in pending {
            let Some(domain) = r.key.strip_prefix("alpn/") else { continue };
            let k = serde_json::from_slice::<Stored>(&r.value).map_err(|e| e.to_string()).and_then(|s| alpn_key(&s));
            match k {
                Ok(k) => {
                    loaded.insert(domain.to_string(), Arc::new(k));
                }
                Err(e) => tracing::warn!(domain, error = %e, "a TLS-ALPN-01 answer does not load"),
            }
        }
        *self.challenges.0.write().unwrap_or_else(|e| e.into_inner()) = loaded;
        Ok(())
    }

    /// Loads the stored certificates of the verified domains into the SNI table, and
    /// obtains those missing or due.
    async fn check(&self) -> Result<(), Status> {
        if self.config.challenge == Challenge::TlsAlpn01 {
            self.load_challenges().await?;
        }
        let verified = self.domains.verified().await?;
        let stored = self.store.read(&self.table, "cert/", &Query { prefix: true, ..Default::default() }).await?;
        let renew: Vec<String> =
            self.store.list(&self.table, "renew/", &Query { prefix: true, ..Default::default() }).await?;
        let mut loaded = HashMap::new();
        let mut have = HashMap::new();
        for r in stored {
            let Some(domain) = r.key.strip_prefix("cert/") else { continue };
            let Ok(s) = serde_json::from_slice::<Stored>(&r.value) else { continue };
            if !verified.contains(domain) {
                continue;
            }
            match certified(&s) {
                Ok(k) => {
                    loaded.insert(domain.to_string(), Arc::new(k));
                }
                Err(e) => tracing::warn!(domain, error = %e, "a stored certificate does not load"),
            }
            have.insert(domain.to_string(), s);
        }
        *self.certs.0.write().unwrap_or_else(|e| e.into_inner()) = loaded;
        for domain in &verified {
            let asked = renew.iter().any(|k| k.strip_prefix("renew/") == Some(domain.as_str()));
            let needed = match have.get(domain) {
                None => true,
                Some(s) => asked || due(s.issued, s.not_after, now(), self.config.renew_before),
            };
            if needed {
                self.order(domain).await;
            }
        }
        Ok(())
    }

    /// Orders `domain`'s certificate unless its last order failed too recently or another
    /// node is ordering it.
    async fn order(&self, domain: &str) {
        let waiting = self.failures.lock().unwrap_or_else(|e| e.into_inner()).get(domain).copied();
        if let Some((at, n)) = waiting
            && at.elapsed() < backoff(n)
        {
            return;
        }
        let ns = micro_core::namespace::DEFAULT;
        let Ok(lock) =
            self.sync.lock(ns, &format!("server/acme/{domain}"), Duration::from_secs(300), Duration::ZERO).await
        else {
            return;
        };
        let result = self.issue(domain).await;
        let _ = self.sync.unlock(ns, &lock).await;
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(()) => {
                failures.remove(domain);
            }
            Err(e) => {
                let n = failures.get(domain).map_or(1, |(_, n)| n + 1);
                tracing::warn!(domain, error = %e, retry_in = ?backoff(n), "obtaining a certificate failed");
                failures.insert(domain.to_string(), (std::time::Instant::now(), n));
            }
        }
    }

    /// Checks every few seconds until `stop`.
    pub(crate) async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(CHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|v| *v) => return,
            }
            if let Err(e) = self.check().await {
                tracing::warn!(error = %e, "checking the certificates failed");
            }
        }
    }
}

/// A stored certificate as rustls serves it.
fn certified(s: &Stored) -> Result<CertifiedKey, Status> {
    micro::tls::certified_pem(s.chain.as_bytes(), s.key.as_bytes(), "the stored certificate")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_orders_back_off() {
        assert_eq!(backoff(1), Duration::from_secs(60));
        assert_eq!(backoff(2), Duration::from_secs(120));
        assert_eq!(backoff(40), Duration::from_secs(86_400));
    }

    #[test]
    fn renewal_is_due_near_the_end() {
        let day = 86_400;
        let before = Duration::from_secs(30 * day as u64);
        // 90 days: due with 30 days left, not with 31.
        assert!(!due(0, 90 * day, 59 * day, before));
        assert!(due(0, 90 * day, 61 * day, before));
        // 5 years: due only with 30 days left.
        assert!(!due(0, 1825 * day, 1000 * day, before));
        // 1 day: due once a third is left.
        assert!(!due(0, day, day / 2, before));
        assert!(due(0, day, day - day / 4, before));
        assert!(due(0, day, day + 1, before));
    }
}
