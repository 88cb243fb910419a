//! The `auth` core service: accounts (secrets hashed with argon2id), access tokens
//! (Ed25519-signed, verified locally by anyone holding the public keys), refresh tokens
//! (stored hashed, rotated on use, revoked with their account), rules, and the
//! bootstrap of the first admin.
//!
//! Auth data lives in its own database (`auth.db`), never reachable through the store
//! service.

mod grpc;
pub(crate) mod keys;
mod limiter;
mod settings;

use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use base64::Engine;
use keys::Signer;
use micro::auth::token::now;
use micro::auth::token::{Claims, Verifier};
use micro::proto::auth as pb;
use micro::status::to_tonic;
use micro_core::auth::{Account, AccountType, Rule, default_rule};
use micro_core::store::{Query, Record, Store, Table};
use micro_core::{Code, Status as MicroStatus};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tonic::{Request, Response, Status};

/// How long an access token lives.
pub const ACCESS_TTL: Duration = Duration::from_secs(15 * 60);
/// How long a refresh token lives.
pub const REFRESH_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// The file the generated admin password is written to, in the data dir.
pub const ADMIN_PASSWORD_FILE: &str = "admin.password";

fn t(e: MicroStatus) -> Status {
    to_tonic(&e)
}

/// What is stored per account.
#[derive(Serialize, Deserialize)]
struct StoredAccount {
    account: Account,
    hash: String,
}

/// What is stored per refresh token (keyed by the account id and the token's hash).
#[derive(Serialize, Deserialize)]
struct StoredRefresh {
    expires: u64,
}

/// The auth service's state. Cheap to clone.
#[derive(Clone)]
pub(crate) struct AuthService {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    signer: Signer,
    verifier: RwLock<Verifier>,
    /// Every node's public keys (its own first), as shared through the auth store.
    trusted: RwLock<micro::auth::token::PublicKeys>,
    /// Failed logins per account and client address, and per client address.
    failures: limiter::Limiter,
    /// Bumped on every rule change (here or, followed, on another node), so cached rules
    /// are dropped and `WatchRules` streams send the new rules.
    generation: tokio::sync::watch::Sender<u64>,
    /// Rules by namespace, with the generation they were read at.
    cache: Mutex<HashMap<String, CachedRules>>,
    /// Tokens already verified, until they expire.
    verified: Mutex<HashMap<String, Claims>>,
    /// When the other nodes' keys were last read because a token named an unknown one.
    looked_up: Mutex<Option<Instant>>,
    /// The shared rules version this node's cache follows (see [`AuthService::follow_rules`]).
    rules_version: Mutex<Option<String>>,
    /// Delegated tokens by `audience token`, with their expiry.
    delegated: Mutex<HashMap<String, (String, u64)>>,
    /// Tokens voided by deleting their account or namespace.
    revocations: crate::revoke::Revocations,
    /// The other backends, so deleting a namespace deletes its data (set once wired).
    namespace_data: std::sync::OnceLock<crate::namespace_data::NamespaceData>,
    /// Seals accounts' own settings.
    settings: crate::sealed::Sealer,
}

pub(crate) use micro_core::auth::PLATFORM_SCOPE;

/// How long a delegated token lives (at most; never past the token it stands for).
const DELEGATED_TTL: u64 = 300;

/// Rules of a namespace with the generation they were read at.
type CachedRules = (u64, Arc<Vec<Rule>>);

/// 256 random bits, as letters and digits only (so no shell or flag parser trips on a
/// leading `-`).
/// The caller's address (as the edge stamped it), for the limit on failed logins.
fn client_address<T>(req: &Request<T>) -> Option<String> {
    req.metadata()
        .get(micro::server::CLIENT_ADDRESS)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.remote_addr().map(|a| a.ip().to_string()))
}

fn random_secret() -> String {
    let mut bytes = uuid::Uuid::new_v4().as_bytes().to_vec();
    bytes.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    crate::hex(&bytes)
}

fn hash_secret(secret: &str) -> Result<String, MicroStatus> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| MicroStatus::internal("auth", format!("hashing: {e}")))
}

fn secret_matches(secret: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| Argon2::default().verify_password(secret.as_bytes(), &h).is_ok())
}

fn sha256_hex(s: &str) -> String {
    crate::sha256_hex(s.as_bytes())
}

fn validate_id(id: &str) -> Result<(), MicroStatus> {
    let ok = !id.is_empty() && id.len() <= 256 && id.chars().all(|c| !c.is_control() && !c.is_whitespace() && c != '/');
    if ok { Ok(()) } else { Err(MicroStatus::bad_request("auth", format!("invalid account id {id:?}"))) }
}

fn validate_secret(secret: &str) -> Result<(), MicroStatus> {
    if secret.len() < 8 || secret.len() > 1024 {
        return Err(MicroStatus::bad_request("auth", "the secret must be 8 to 1024 characters"));
    }
    Ok(())
}

impl AuthService {
    /// Opens the auth database and signing keys under `data_dir`; accounts' own settings
    /// are sealed under `server_key`.
    pub(crate) fn open(
        store: Arc<dyn Store>,
        data_dir: &Path,
        server_key: &micro_core::config::doc::AesKey,
    ) -> Result<AuthService, MicroStatus> {
        let signer = Signer::open(&data_dir.join("keys"))?;
        let verifier = signer.verifier();
        let trusted = signer.public_keys();
        Ok(AuthService {
            inner: Arc::new(Inner {
                store: store.clone(),
                signer,
                verifier: RwLock::new(verifier),
                trusted: RwLock::new(trusted),
                failures: limiter::Limiter::default(),
                generation: tokio::sync::watch::channel(0).0,
                cache: Mutex::new(HashMap::new()),
                verified: Mutex::new(HashMap::new()),
                looked_up: Mutex::new(None),
                rules_version: Mutex::new(None),
                delegated: Mutex::new(HashMap::new()),
                revocations: crate::revoke::Revocations::new(store.clone()),
                namespace_data: std::sync::OnceLock::new(),
                settings: crate::sealed::Sealer::new(server_key, store.clone(), "settings-key", "settings"),
            }),
        })
    }

    /// Gives deleting a namespace the backends holding its data (the server does this
    /// once, after building them; without it only auth's own records are deleted).
    pub(crate) fn hold_namespace_data(&self, data: crate::namespace_data::NamespaceData) {
        if self.inner.namespace_data.set(data).is_err() {
            tracing::warn!("the namespace data was wired twice; the first wiring stays");
        }
    }

    /// Verifies an access token; the account it stands for. A verified token is
    /// remembered until it expires, so repeated calls skip the signature check.
    pub(crate) fn verify(&self, token: &str) -> Result<Claims, MicroStatus> {
        let cached = self.inner.verified.lock().unwrap_or_else(|e| e.into_inner()).get(token).cloned();
        if let Some(c) = cached
            && c.exp > now()
        {
            self.inner.revocations.check(&c)?;
            return Ok(c);
        }
        let claims = self.inner.verifier.read().unwrap_or_else(|e| e.into_inner()).verify(token)?;
        self.inner.revocations.check(&claims)?;
        let mut cache = self.inner.verified.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= 10_000 {
            let t = now();
            cache.retain(|_, c| c.exp > t);
            if cache.len() >= 10_000 {
                cache.clear();
            }
        }
        cache.insert(token.to_string(), claims.clone());
        Ok(claims)
    }

    /// A token standing for the account of `token` at the service `audience`
    /// (`<namespace>/<service>`) only: what the proxy, the gateway and services' clients
    /// send to a service's node instead of the caller's own token, so that a node
    /// captures nothing it could use at the core or at any other service. Cached until
    /// shortly before it expires.
    pub(crate) fn delegate(&self, token: &str, audience: &str) -> Result<String, MicroStatus> {
        // The caller's token is checked every time (a revoked one delegates nothing).
        let mut claims = self.verify(token)?;
        let key = format!("{audience} {token}");
        let t = now();
        if let Some((d, exp)) = self.inner.delegated.lock().unwrap_or_else(|e| e.into_inner()).get(&key)
            && *exp > t + 30
        {
            return Ok(d.clone());
        }
        let ok = audience.split_once('/').is_some_and(|(ns, svc)| {
            micro_core::namespace::validate(ns).is_ok()
                && !svc.is_empty()
                && svc.len() <= 256
                && svc.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        });
        if !ok {
            return Err(MicroStatus::bad_request(
                "auth",
                format!("invalid audience {audience:?}: use namespace/service"),
            ));
        }
        // The issue time stays the account's token's, so revoking it voids this one too.
        claims.aud = Some(audience.to_string());
        claims.exp = claims.exp.min(t + DELEGATED_TTL);
        let signed = self.inner.signer.sign(&claims)?;
        self.remember(key, &signed, claims.exp, t);
        Ok(signed)
    }

    /// Keeps a token signed for `key` until `exp` (at most 10,000, the expiring first out).
    fn remember(&self, key: String, token: &str, exp: u64, now: u64) {
        let mut cache = self.inner.delegated.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= 10_000 {
            cache.retain(|_, (_, exp)| *exp > now + 30);
            if cache.len() >= 10_000 {
                cache.clear();
            }
        }
        cache.insert(key, (token.to_string(), exp));
    }

    /// A token for `account`, a caller another cluster of the network vouches for, to
    /// the service `audience` alone (`namespace/service`), briefly, without scopes: an
    /// `authorization` header value.
    pub(crate) fn imported_header(
        &self,
        account: &micro_core::auth::Account,
        audience: &str,
    ) -> Result<http::HeaderValue, MicroStatus> {
        let t = now();
        // Signed once a while per caller and service, like delegated tokens.
        let key = format!("imported {audience} {} {} {}", account.namespace, account.kind.as_str(), account.id);
        if let Some((token, exp)) = self.inner.delegated.lock().unwrap_or_else(|e| e.into_inner()).get(&key)
            && *exp > t + 30
            && let Ok(v) = http::HeaderValue::from_str(&format!("Bearer {token}"))
        {
            return Ok(v);
        }
        let claims = Claims {
            sub: account.id.clone(),
            name: account.name.clone(),
            ns: account.namespace.clone(),
            typ: account.kind.as_str().to_string(),
            scopes: Vec::new(),
            iat: t,
            exp: t + DELEGATED_TTL,
            iss: micro::auth::token::ISSUER.to_string(),
            aud: Some(audience.to_string()),
            verified: false,
        };
        let signed = self.inner.signer.sign(&claims)?;
        self.remember(key, &signed, claims.exp, t);
        http::HeaderValue::from_str(&format!("Bearer {signed}"))
            .map_err(|_| MicroStatus::internal("auth", "a token is not a header value"))
    }

    /// [`AuthService::delegate`] as an `authorization` header value.
    pub(crate) fn delegated_header(&self, token: &str, audience: &str) -> Result<http::HeaderValue, MicroStatus> {
        let delegated = self.delegate(token, audience)?;
        http::HeaderValue::from_str(&format!("Bearer {delegated}"))
            .map_err(|_| MicroStatus::internal("auth", "a delegated token is not a header value"))
    }

    /// [`AuthService::verify`] for the service `audience`: also accepts tokens delegated to it.
    pub(crate) fn verify_audience(&self, token: &str, audience: &str) -> Result<Claims, MicroStatus> {
        let claims = self.inner.verifier.read().unwrap_or_else(|e| e.into_inner()).verify_for(token, audience)?;
        self.inner.revocations.check(&claims)?;
        Ok(claims)
    }

    fn keys_table() -> Table {
        Table::new(micro_core::namespace::DEFAULT, "keys")
    }

    /// Publishes this node's public keys to the auth store and trusts every node's:
    /// nodes sharing the store accept each other's tokens, and no private key leaves
    /// its node. Done at start; [`AuthService::keep_sharing_keys`] then reloads the others'
    /// every few seconds (a new node is trusted soon after it starts; a retired key stops
    /// being trusted when it expires).
    pub(crate) async fn share_keys(&self) -> Result<(), MicroStatus> {
        for k in &self.inner.signer.public_keys().keys {
            let value = serde_json::to_vec(k).map_err(|e| MicroStatus::internal("auth", e.to_string()))?;
            let ttl = k.not_after.map(|t| Duration::from_secs(t.saturating_sub(now()).max(1)));
            self.inner.store.write(&Self::keys_table(), &Record::new(&k.kid, value), ttl).await?;
        }
        // The revocations in force, before the first token is verified.
        self.inner.revocations.follow().await?;
        self.reload_keys().await
    }

    /// After a token failed to verify: when it is signed by a key this node does not
    /// know (a node that started a moment ago), reads the shared keys at once instead of
    /// waiting for the next reload. At most every 200 ms, so bad tokens cost little.
    /// Returns whether the token may verify now.
    pub(crate) async fn learn_signer_of(&self, token: &str) -> bool {
        let Err(e) = self.verify(token) else { return true };
        if !e.detail().contains("unknown key") {
            return false;
        }
        self.reload_keys_at_most_every_200ms().await
    }

    /// Reads the shared keys now unless that was done in the last 200 ms; whether it was.
    pub(crate) async fn reload_keys_at_most_every_200ms(&self) -> bool {
        {
            let mut last = self.inner.looked_up.lock().unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|t| t.elapsed() < Duration::from_millis(200)) {
                return false;
            }
            *last = Some(Instant::now());
        }
        match self.reload_keys().await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "reading the other nodes' token keys failed");
                false
            }
        }
    }

    /// Trusts this node's keys and every other node's in the auth store.
    async fn reload_keys(&self) -> Result<(), MicroStatus> {
        let mut keys = self.inner.signer.public_keys().keys;
        let all = Query { prefix: true, ..Default::default() };
        for r in self.inner.store.read(&Self::keys_table(), "", &all).await? {
            if let Ok(k) = serde_json::from_slice::<micro::auth::token::PublicKey>(&r.value)
                && !keys.iter().any(|o| o.kid == k.kid)
                && k.not_after.is_none_or(|t| t > now())
            {
                keys.push(k);
            }
        }
        let trusted = micro::auth::token::PublicKeys { keys };
        if *self.inner.trusted.read().unwrap_or_else(|e| e.into_inner()) != trusted {
            let verifier = Verifier::new(&trusted)?;
            *self.inner.verifier.write().unwrap_or_else(|e| e.into_inner()) = verifier;
            *self.inner.trusted.write().unwrap_or_else(|e| e.into_inner()) = trusted;
        }
        Ok(())
    }

    /// Follows the other nodes in the background until the service is dropped: their
    /// rule changes every second ([`AuthService::follow_rules`]), their token keys every
    /// 3 s ([`AuthService::reload_keys`]).
    pub(crate) fn keep_sharing_keys(&self) {
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            for tick in 1u64.. {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let Some(inner) = weak.upgrade() else { return };
                let auth = AuthService { inner };
                if let Err(e) = auth.follow_rules().await {
                    tracing::warn!(error = %e, "reading the shared rules version failed; will retry");
                }
                if let Err(e) = auth.inner.revocations.follow().await {
                    tracing::warn!(error = %e, "reading the shared revocations failed; will retry");
                }
                if tick % 3 == 0
                    && let Err(e) = auth.reload_keys().await
                {
                    tracing::warn!(error = %e, "reading the other nodes' token keys failed; will retry");
                }
            }
        });
    }

    fn accounts(ns: &str) -> Table {
        Table::new(ns, "accounts")
    }

    fn refresh_table(ns: &str) -> Table {
        Table::new(ns, "refresh")
    }

    fn namespaces() -> Table {
        Table::new(micro_core::namespace::DEFAULT, "namespaces")
    }

    /// Names of deleted namespaces whose data may remain (see [`AuthService::reuse`]).
    fn deleted_namespaces() -> Table {
        Table::new(micro_core::namespace::DEFAULT, "deleted_namespaces")
    }

    /// Lets the name `ns` be used again (a namespace created, an account made in it):
    /// refused while data of a deleted namespace of that name remains, so nobody new
    /// inherits it; once it is gone, the name is free and no longer checked.
    async fn reuse(&self, ns: &str) -> Result<(), MicroStatus> {
        let table = Self::deleted_namespaces();
        match self.inner.store.read(&table, ns, &Query::default()).await {
            Ok(_) => {}
            Err(e) if e.code() == Code::NotFound => return Ok(()),
            Err(e) => return Err(e),
        }
        if let Some(data) = self.inner.namespace_data.get() {
            data.check_empty(ns).await?;
        }
        match self.inner.store.delete(&table, ns).await {
            Err(e) if e.code() != Code::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    fn rules_table(ns: &str) -> Table {
        Table::new(ns, "rules")
    }

    async fn load(&self, ns: &str, id: &str) -> Result<Option<StoredAccount>, MicroStatus> {
        match self.inner.store.read(&Self::accounts(ns), id, &Query::default()).await {
            Ok(mut r) => match r.pop() {
                Some(rec) => serde_json::from_slice(&rec.value)
                    .map(Some)
                    .map_err(|e| MicroStatus::internal("auth", format!("stored account: {e}"))),
                None => Ok(None),
            },
            Err(e) if e.code() == Code::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn save(&self, stored: &StoredAccount) -> Result<(), MicroStatus> {
        let value = serde_json::to_vec(stored).map_err(|e| MicroStatus::internal("auth", e.to_string()))?;
        let record = Record::new(&stored.account.id, value);
        self.inner.store.write(&Self::accounts(&stored.account.namespace), &record, None).await
    }

    /// Creates an account; `secret` empty makes one, returned once.
    pub(crate) async fn create(&self, mut account: Account, secret: &str) -> Result<(Account, String), MicroStatus> {
        validate_id(&account.id)?;
        micro_core::namespace::validate(&account.namespace)?;
        self.reuse(&account.namespace).await?;
        if self.load(&account.namespace, &account.id).await?.is_some() {
            return Err(MicroStatus::new(
                Code::AlreadyExists,
                "auth",
                format!("account {} already exists in {}", account.id, account.namespace),
            ));
        }
        let (secret, generated) = if secret.is_empty() { (random_secret(), true) } else { (secret.to_string(), false) };
        validate_secret(&secret)?;
        account.created = now();
        if account.name.is_empty() {
            account.name = account.id.clone();
        }
        self.save(&StoredAccount { account: account.clone(), hash: hash_secret(&secret)? }).await?;
        Ok((account, if generated { secret } else { String::new() }))
    }

    /// Deletes every refresh token of an account.
    async fn revoke_refresh_tokens(&self, ns: &str, id: &str) -> Result<(), MicroStatus> {
        let table = Self::refresh_table(ns);
        let q = Query { prefix: true, ..Default::default() };
        for key in self.inner.store.list(&table, &format!("{id}/"), &q).await? {
            let _ = self.inner.store.delete(&table, &key).await;
        }
        Ok(())
    }

    /// The account a runtime service runs as (type service, scope `data`): made when
    /// missing, and given a fresh secret, returned (it lives only in the instances'
    /// environment).
    pub(crate) async fn service_account(&self, ns: &str, id: &str) -> Result<String, MicroStatus> {
        self.fresh_service_account(ns, id, &[micro_core::auth::DATA_SCOPE], ("runtime", "true")).await
    }

    /// The account a product of `services/` hosted by this server runs as: `product-<name>`
    /// in `micro`, type service, with the `data` scope (its own data) and the `platform`
    /// scope (it follows the rules of every namespace it serves); made when missing and
    /// given a fresh secret at every start, which lives only in this process.
    pub(crate) async fn product_account(&self, name: &str, extra: &[&str]) -> Result<(String, String), MicroStatus> {
        let id = format!("product-{name}");
        let mut scopes = vec![micro_core::auth::DATA_SCOPE, PLATFORM_SCOPE];
        scopes.extend_from_slice(extra);
        let secret =
            self.fresh_service_account(micro_core::namespace::DEFAULT, &id, &scopes, ("product", name)).await?;
        Ok((id, secret))
    }

    async fn fresh_service_account(
        &self,
        ns: &str,
        id: &str,
        scopes: &[&str],
        mark: (&str, &str),
    ) -> Result<String, MicroStatus> {
        let secret = random_secret();
        let account = match self.load(ns, id).await? {
            // The server decides what its own accounts may do, whatever was changed.
            Some(s) => Account { scopes: scopes.iter().map(|s| s.to_string()).collect(), ..s.account },
            None => Account {
                id: id.to_string(),
                name: id.to_string(),
                kind: micro_core::auth::AccountType::Service,
                namespace: ns.to_string(),
                scopes: scopes.iter().map(|s| s.to_string()).collect(),
                metadata: [(mark.0.to_string(), mark.1.to_string())].into(),
                created: now(),
                verified: false,
            },
        };
        self.save(&StoredAccount { account, hash: hash_secret(&secret)? }).await?;
        Ok(secret)
    }

    /// The first admin: `admin` in `micro` with the given password, or a random one
    /// written to `<data_dir>/admin.password` (mode 0600). Does nothing when it exists.
    pub(crate) async fn bootstrap(&self, data_dir: &Path, password: Option<String>) -> Result<(), MicroStatus> {
        let ns = micro_core::namespace::DEFAULT;
        if self.load(ns, "admin").await?.is_some() {
            return Ok(());
        }
        let generated = password.is_none();
        let secret = password.unwrap_or_else(random_secret);
        let admin = Account {
            id: "admin".into(),
            name: "admin".into(),
            kind: AccountType::User,
            namespace: ns.into(),
            scopes: vec![micro_core::auth::ADMIN_SCOPE.into()],
            ..Default::default()
        };
        self.create(admin, &secret).await?;
        if generated {
            let path = data_dir.join(ADMIN_PASSWORD_FILE);
            micro_embedded::files::write_private(&path, secret.as_bytes())
                .map_err(|e| MicroStatus::internal("auth", format!("writing {}: {e}", path.display())))?;
            tracing::info!(file = %path.display(), "created the admin account; its password is in this file");
        } else {
            tracing::info!("created the admin account with the password from MICRO_ADMIN_PASSWORD");
        }
        Ok(())
    }

    /// Signs an access token for `account`: the token and when it expires.
    fn sign(&self, account: &Account) -> Result<(String, u64), MicroStatus> {
        let iat = now().max(self.inner.revocations.first_valid_iat(&account.namespace, &account.id));
        let exp = iat + ACCESS_TTL.as_secs();
        let claims = Claims {
            sub: account.id.clone(),
            name: account.name.clone(),
            ns: account.namespace.clone(),
            typ: account.kind.as_str().into(),
            scopes: account.scopes.clone(),
            iat,
            exp,
            iss: if account.kind == AccountType::App {
                micro::auth::token::APP_ISSUER
            } else {
                micro::auth::token::ISSUER
            }
            .into(),
            aud: None,
            verified: account.verified,
        };
        Ok((self.inner.signer.sign(&claims)?, exp))
    }

    /// Issues an access token and a new refresh token for `account`.
    async fn issue(&self, account: &Account) -> Result<pb::TokenResponse, MicroStatus> {
        let (access_token, exp) = self.sign(account)?;
        let iat = now();
        let random = random_secret();
        let id64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(account.id.as_bytes());
        let refresh_token = format!("{id64}.{random}");
        let stored = StoredRefresh { expires: iat + REFRESH_TTL.as_secs() };
        let key = format!("{}/{}", account.id, sha256_hex(&random));
        let value = serde_json::to_vec(&stored).map_err(|e| MicroStatus::internal("auth", e.to_string()))?;
        self.inner
            .store
            .write(&Self::refresh_table(&account.namespace), &Record::new(key, value), Some(REFRESH_TTL))
            .await?;
        Ok(pb::TokenResponse { access_token, refresh_token, expiry: exp, account: Some(account.into()) })
    }

    /// Id and secret → tokens, failures limited per account and client address, and per
    /// client address (see [`limiter`]).
    async fn login(
        &self,
        ns: &str,
        id: &str,
        secret: &str,
        client: Option<&str>,
    ) -> Result<pb::TokenResponse, MicroStatus> {
        let keys = limiter::Keys::new(ns, id, client);
        let attempt = self.inner.failures.begin(&keys).map_err(limiter::too_many)?;
        let stored = self.load(ns, id).await?;
        match stored {
            Some(s) if secret_matches(secret, &s.hash) => {
                self.inner.failures.succeeded(&keys, attempt);
                self.issue(&s.account).await
            }
            _ => Err(MicroStatus::new(Code::Unauthenticated, "auth", "wrong account id or secret")),
        }
    }

    /// Tokens for account `id` of `ns`, for an operator (`by`), without its secret.
    async fn impersonate(&self, ns: &str, id: &str, by: &str) -> Result<pb::TokenResponse, MicroStatus> {
        let account = self
            .load(ns, id)
            .await?
            .ok_or_else(|| MicroStatus::not_found("auth", format!("no account {id} in {ns}")))?
            .account;
        tracing::info!(namespace = ns, account = id, by, "an operator took tokens for an account");
        self.issue(&account).await
    }

    /// Refresh token → new tokens; the old refresh token is used up.
    async fn refresh(&self, ns: &str, token: &str) -> Result<pb::TokenResponse, MicroStatus> {
        let bad = || MicroStatus::new(Code::Unauthenticated, "auth", "invalid or expired refresh token");
        let (id64, random) = token.split_once('.').ok_or_else(bad)?;
        let id = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(id64)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(bad)?;
        let key = format!("{id}/{}", sha256_hex(random));
        let table = Self::refresh_table(ns);
        match self.inner.store.delete(&table, &key).await {
            Ok(()) => {}
            Err(e) if e.code() == Code::NotFound => return Err(bad()),
            Err(e) => return Err(e),
        }
        let account = self.load(ns, &id).await?.ok_or_else(bad)?.account;
        self.issue(&account).await
    }

    /// The rules of a namespace (the default public rule until an admin changes them).
    pub(crate) async fn rules(&self, ns: &str) -> Result<Vec<Rule>, MicroStatus> {
        let table = Self::rules_table(ns);
        let q = Query { prefix: true, ..Default::default() };
        let records = self.inner.store.read(&table, "r/", &q).await?;
        let initialised = self.inner.store.read(&table, "_init", &Query::default()).await.is_ok();
        if !initialised {
            return Ok(vec![default_rule()]);
        }
        records
            .iter()
            .map(|r| {
                serde_json::from_slice(&r.value).map_err(|e| MicroStatus::internal("auth", format!("stored rule: {e}")))
            })
            .collect()
    }

    async fn init_rules(&self, ns: &str) -> Result<(), MicroStatus> {
        let table = Self::rules_table(ns);
        if self.inner.store.read(&table, "_init", &Query::default()).await.is_ok() {
            return Ok(());
        }
        for r in self.rules(ns).await? {
            self.put_rule(ns, &r).await?;
        }
        self.inner.store.write(&table, &Record::new("_init", b"1".to_vec()), None).await
    }

    /// The rules of a namespace, cached until they change.
    pub(crate) async fn cached_rules(&self, ns: &str) -> Result<Arc<Vec<Rule>>, MicroStatus> {
        let generation = *self.inner.generation.borrow();
        if let Some((g, r)) = self.inner.cache.lock().unwrap_or_else(|e| e.into_inner()).get(ns)
            && *g == generation
        {
            return Ok(r.clone());
        }
        let rules = Arc::new(self.rules(ns).await?);
        let mut cache = self.inner.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() > 10_000 {
            cache.clear();
        }
        cache.insert(ns.to_string(), (generation, rules.clone()));
        Ok(rules)
    }

    fn versions_table() -> Table {
        Table::new(micro_core::namespace::DEFAULT, "versions")
    }

    /// Drops the cached rules here, and (through a version record in the auth store,
    /// which every node follows) on every node sharing it.
    async fn rules_changed(&self) {
        self.inner.generation.send_modify(|g| *g += 1);
        let version = uuid::Uuid::new_v4().to_string();
        *self.inner.rules_version.lock().unwrap_or_else(|e| e.into_inner()) = Some(version.clone());
        let record = Record::new("rules", version.into_bytes());
        if let Err(e) = self.inner.store.write(&Self::versions_table(), &record, None).await {
            tracing::warn!(error = %e, "telling the other nodes about a rule change failed");
        }
    }

    /// Drops the cached rules when another node changed some (the shared version moved).
    async fn follow_rules(&self) -> Result<(), MicroStatus> {
        let seen = match self.inner.store.read(&Self::versions_table(), "rules", &Query::default()).await {
            Ok(r) => r.into_iter().next().map(|r| String::from_utf8_lossy(&r.value).to_string()),
            Err(e) if e.code() == Code::NotFound => None,
            Err(e) => return Err(e),
        };
        let mut last = self.inner.rules_version.lock().unwrap_or_else(|e| e.into_inner());
        if *last != seen {
            *last = seen;
            self.inner.generation.send_modify(|g| *g += 1);
        }
        Ok(())
    }

    async fn put_rule(&self, ns: &str, rule: &Rule) -> Result<(), MicroStatus> {
        let value = serde_json::to_vec(rule).map_err(|e| MicroStatus::internal("auth", e.to_string()))?;
        self.inner.store.write(&Self::rules_table(ns), &Record::new(format!("r/{}", rule.id), value), None).await?;
        self.rules_changed().await;
        Ok(())
    }

    /// The caller's verified account, as the core's authorizer put it on the request.
    pub(super) fn caller<T>(req: &Request<T>) -> Option<&Account> {
        micro::auth::Caller::of(req).and_then(|c| c.account.as_ref())
    }

    /// Requires an admin of `ns`.
    fn require_admin<T>(&self, req: &Request<T>, ns: &str) -> Result<(), MicroStatus> {
        let account = Self::caller(req)
            .ok_or_else(|| MicroStatus::new(Code::Unauthenticated, "auth", "log in as an admin first"))?;
        if !account.is_admin_of(ns) {
            return Err(MicroStatus::new(Code::PermissionDenied, "auth", format!("needs the admin scope of {ns}")));
        }
        Ok(())
    }
}
