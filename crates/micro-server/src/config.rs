//! The server's typed configuration: defaults, then a TOML file, then environment
//! variables (passed in as a lookup function, so tests never touch the process
//! environment), then flags (set by the caller on the returned value).

use crate::Error;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Configuration of `micro server`.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// HTTP API gateway address (`MICRO_API_ADDRESS`, default `127.0.0.1:8080`).
    pub api_address: String,
    /// gRPC proxy address (`MICRO_PROXY_ADDRESS`, default `127.0.0.1:8081`).
    pub proxy_address: String,
    /// Web dashboard address (`MICRO_WEB_ADDRESS`, default `127.0.0.1:8082`; `off` turns it off).
    pub web_address: Option<String>,
    /// Data directory (`MICRO_DATA_DIR`, default `~/.micro/data`).
    pub data_dir: PathBuf,
    /// Largest request body the gateway accepts, in bytes (`MICRO_API_BODY_LIMIT`, default 4 MiB).
    pub body_limit: usize,
    /// Allowed CORS origins (`MICRO_API_CORS`, comma-separated; default `*`).
    pub cors_origins: Vec<String>,
    /// Networks registered nodes may not point into (`MICRO_NODE_DENY`, comma-separated
    /// CIDRs; default link-local, unspecified and IPv6 unique-local), besides the server's
    /// own listeners, which they may never point at.
    pub node_deny: String,
    /// Registration lease of the core services.
    pub core_ttl: std::time::Duration,
    /// The products of `services/` this server hosts in-process (`MICRO_SERVICES`:
    /// `all`, the default; `off` for none; or a comma-separated list of names).
    pub services: Vec<String>,
    /// How the email product sends mail: `MICRO_SMTP`, `MICRO_SMTP_CA`,
    /// `MICRO_EMAIL_FROM`, `MICRO_EMAIL_DAILY_LIMIT`, `MICRO_EMAIL_RETRY` (see
    /// [`micro_email::Settings`]); by default it sends none.
    pub email: micro_email::Settings,
    /// Where the database product keeps its records: `MICRO_DB_PATH` (default `db.sqlite`
    /// in the data dir; an empty path here means that) and `MICRO_DB_CHANGES_RETENTION`
    /// (see [`micro_db::Settings`]).
    pub db: micro_db::Settings,
    /// The dashboard's public address (`MICRO_PLATFORM_URL`, like `https://m3o.example.com`),
    /// which the platform's mail links to.
    pub platform_url: Option<String>,
    /// The API gateway's public address (`MICRO_API_URL`, like `https://api.example.com`),
    /// which products' mails link to (a subscription's confirmation); default: its
    /// listener's address.
    pub api_url: Option<String>,
    /// Whether the push product may reach push services on private networks and over
    /// plain HTTP (`MICRO_PUSH_PRIVATE=1`; default: public HTTPS ones only).
    pub push_private: bool,
    /// Who sends the notifications, as push services are told (the VAPID `sub`:
    /// `MICRO_PUSH_CONTACT`, a `mailto:` or `https:` URL; default: `MICRO_API_URL`).
    pub push_contact: Option<String>,
    /// Stripe, the payment provider of the billing product (`MICRO_STRIPE_KEY`,
    /// `MICRO_STRIPE_WEBHOOK_SECRET`, `MICRO_STRIPE_URL`); none: the built-in manual
    /// provider (prepaid credit, transfers an operator marks paid).
    pub stripe: Option<micro_billing::stripe::StripeSettings>,
    /// Events older than this are dropped (`MICRO_EVENTS_MAX_AGE` in seconds; default: kept).
    pub events_max_age: Option<std::time::Duration>,
    /// At most this many events are kept per topic (`MICRO_EVENTS_MAX_EVENTS`; default: all).
    pub events_max_events: Option<u64>,
    /// Largest blob, in bytes (`MICRO_BLOB_MAX_SIZE`, default 64 MiB).
    pub blob_max_size: u64,
    /// The first admin's password (`MICRO_ADMIN_PASSWORD`); default: a random one written
    /// to `admin.password` in the data dir. Never read from the config file.
    pub admin_password: Option<Secret>,
    /// Shared backends that turn nodes into replicas (see [`Backends`]); default: all
    /// embedded in the data dir. Only from the environment: the URLs may hold passwords.
    pub backends: Backends,
    /// The runtime: `MICRO_RUNTIME_TARGET_DIR` (where the namespaces' cargo target dirs
    /// are), `MICRO_RUNTIME_PROFILE` (`release`), `MICRO_RUNTIME_REPO` (where short names
    /// are looked up), `MICRO_RUNTIME_MAX_SERVICES` (per namespace, 50),
    /// `MICRO_RUNTIME_BUILD_TIMEOUT` (the longest a build may take, in seconds: 1800),
    /// `MICRO_RUNTIME_SANDBOX` (`auto`, `bwrap`, `none`), `MICRO_RUNTIME_UID` (`uid[:gid]`
    /// all sandboxed code runs as under a root server; by default a user per namespace) and `MICRO_RUNTIME_ALLOW_HOSTS`
    /// (internal git hosts tenants may fetch from).
    pub runtime: crate::RuntimeConfig,
    /// TLS on every listener (`MICRO_TLS`): `off` (the default), `auto` (a local CA in the
    /// data dir issues the server's certificate) or `cert.pem,key.pem`.
    pub tls: crate::TlsMode,
    /// A plain HTTP listener that redirects every request to the gateway over HTTPS
    /// (`MICRO_HTTP_REDIRECT_ADDRESS`, like `:80`; with TLS on only; default none).
    pub redirect_address: Option<String>,
    /// How often the meter stores what it counted (`MICRO_USAGE_FLUSH` in seconds,
    /// default 2); `None` turns metering off (`MICRO_USAGE=off`).
    pub usage_flush: Option<std::time::Duration>,
    /// The most the gateway's response cache holds, in bytes (`MICRO_CACHE_SIZE`, default
    /// 64 MiB; 0 turns it off).
    pub cache_size: usize,
    /// The name server custom domains are verified with (`MICRO_DNS`, `ip:port`; default:
    /// the system's resolver).
    pub dns: Option<String>,
    /// The platform's hosting domain (`MICRO_HOSTING_DOMAIN`, like `apps.example.com`):
    /// the gateway serves `<service>.<namespace>.<domain>` and `<namespace>.<domain>`.
    pub hosting_domain: Option<String>,
    /// Where on this host tenants' nodes may be (`MICRO_NODE_LOCAL`: `any`, the default,
    /// or `runtime`: only the ports the runtime gave their instances).
    pub node_local: crate::targets::NodeLocal,
    /// Certificates for the verified custom domains from an ACME server
    /// (`MICRO_ACME_DIRECTORY`, `MICRO_ACME_EMAIL`, `MICRO_ACME_CA`,
    /// `MICRO_ACME_RENEW_DAYS`); needs TLS and `MICRO_HTTP_REDIRECT_ADDRESS`.
    pub acme: Option<crate::AcmeConfig>,
    /// Join a cluster through one of its nodes (`MICRO_JOIN`, its proxy's `host:port`)
    /// with a one-time token (`MICRO_JOIN_TOKEN`, from `micro cluster token`); once
    /// joined, the node keeps the cluster's backends and config key in its data dir and
    /// needs neither again.
    pub join: Option<Join>,
    /// The licence of the self-hosted platform: `MICRO_LICENSE` (its file; default
    /// `license` in the data dir) and `MICRO_LICENSE_KEYS` (issuer keys trusted besides
    /// the vendor's). See docs/licence.md.
    pub licence: crate::LicenceSettings,
    /// The network of clusters (docs/network.md): `MICRO_NETWORK_ADDRESS` (where other
    /// clusters' links arrive; unset: this cluster only dials out), `MICRO_NETWORK_NAME`
    /// (its name among them) and `MICRO_NETWORK_EXPORT` (the namespaces whose services
    /// it offers them, comma-separated; none by default).
    pub network: NetworkConfig,
}

/// How this cluster takes part in the network of clusters.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NetworkConfig {
    /// Where links from other clusters arrive, `host:port`.
    pub address: Option<String>,
    /// This cluster's name in the network (default: kept in the data dir, made once).
    pub name: Option<String>,
    /// The namespaces whose services other clusters may call.
    pub export: Vec<String>,
    /// The event topics shared with the peers (`MICRO_NETWORK_EVENTS`: `namespace/topic`,
    /// comma-separated): each event published here goes to every peer that shares the
    /// topic too, at least once.
    pub events: Vec<(String, String)>,
    /// The namespaces that are the same tenant's in every peer (`MICRO_NETWORK_TRUST`,
    /// comma-separated): a caller of one of them at a peer counts as a member of it here.
    /// Elsewhere an imported caller belongs to `<namespace>@<its clusters>`, nobody's.
    pub trust: Vec<String>,
}

/// Where and how a node joins a cluster.
#[derive(Clone, Debug, PartialEq)]
pub struct Join {
    /// A node's proxy address, `host:port`.
    pub address: String,
    /// The one-time join token.
    pub token: Secret,
}

/// A secret value: shown as `***` by `Debug`, so it never reaches a log.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl Default for Config {
    fn default() -> Self {
        let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
        Config {
            api_address: "127.0.0.1:8080".into(),
            proxy_address: "127.0.0.1:8081".into(),
            web_address: Some("127.0.0.1:8082".into()),
            data_dir: home.join(".micro").join("data"),
            body_limit: 4 * 1024 * 1024,
            cors_origins: vec!["*".into()],
            node_deny: crate::targets::DEFAULT_DENY.to_string(),
            core_ttl: std::time::Duration::from_secs(60),
            services: crate::products::NAMES.iter().map(|s| s.to_string()).collect(),
            email: micro_email::Settings::default(),
            db: micro_db::Settings {
                path: PathBuf::new(),
                retention: std::time::Duration::from_secs(86_400),
                max_subscriptions: 20_000,
                url: None,
                scan_limit: micro_db::service::DEFAULT_SCAN_LIMIT,
            },
            platform_url: None,
            api_url: None,
            push_private: false,
            push_contact: None,
            stripe: None,
            events_max_age: None,
            events_max_events: None,
            blob_max_size: micro_core::blob::DEFAULT_MAX_SIZE,
            admin_password: None,
            runtime: crate::RuntimeConfig::default(),
            backends: Backends::default(),
            tls: crate::TlsMode::Off,
            redirect_address: None,
            usage_flush: Some(std::time::Duration::from_secs(2)),
            cache_size: 64 << 20,
            dns: None,
            hosting_domain: None,
            node_local: crate::targets::NodeLocal::Any,
            acme: None,
            join: None,
            licence: crate::LicenceSettings::default(),
            network: NetworkConfig::default(),
        }
    }
}

/// Where each part of the data plane lives when nodes share it. Each is a URL; unset
/// parts stay embedded in the node's data dir.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Backends {
    /// PostgreSQL for the shared state: the registry, accounts, rules and tokens' keys,
    /// the store, blobs and locks (`postgres://…` in `MICRO_BACKEND`, or `MICRO_STORE`
    /// when that is PostgreSQL).
    pub database: Option<Secret>,
    /// The store alone (`MICRO_STORE`): `postgres://…` or `redis://…`; default: the database.
    pub store: Option<Secret>,
    /// The registry alone (`MICRO_REGISTRY`, `postgres://…`); default: the database.
    pub registry: Option<Secret>,
    /// Locks alone (`MICRO_SYNC`): `postgres://…` or `redis://…`; default: Redis when the
    /// profile names one, else the database.
    pub sync: Option<Secret>,
    /// Events (`MICRO_EVENTS`, `nats://…`, JetStream); default: the profile's NATS.
    pub events: Option<Secret>,
    /// The broker (`MICRO_BROKER`, `nats://…`); default: the profile's NATS.
    pub broker: Option<Secret>,
    /// The key config secrets are sealed under, the same on every node
    /// (`MICRO_CONFIG_KEY`: 32 bytes in base64). With it and a database, the config is
    /// shared; without, each node keeps its own config (and its own key) in its data dir.
    pub config_key: Option<[u8; 32]>,
}

/// Which system a backend URL names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `postgres://` or `postgresql://`.
    Postgres,
    /// `nats://` or `tls://`.
    Nats,
    /// `redis://` or `rediss://`.
    Redis,
}

impl Kind {
    /// The kind of `url`, if it is one of ours.
    pub(crate) fn of(url: &str) -> Option<Kind> {
        if micro_postgres::is_url(url) {
            Some(Kind::Postgres)
        } else if micro_nats::is_url(url) {
            Some(Kind::Nats)
        } else if micro_redis::is_url(url) {
            Some(Kind::Redis)
        } else {
            None
        }
    }
}

impl Backends {
    /// Reads `MICRO_BACKEND` (URLs separated by commas or spaces: at most one each of
    /// PostgreSQL, NATS and Redis) and the per-part variables, which win.
    fn from_env(env: &impl Fn(&str) -> Option<String>) -> Result<Backends, Error> {
        let mut b = Backends::default();
        let mut redis = None;
        if let Some(profile) = env("MICRO_BACKEND") {
            for url in profile.split([',', ' ', '\n', '\t']).filter(|u| !u.is_empty()) {
                let slot = match Kind::of(url) {
                    Some(Kind::Postgres) => &mut b.database,
                    Some(Kind::Nats) => &mut b.events,
                    Some(Kind::Redis) => &mut redis,
                    None => {
                        return Err(Error::Config(format!(
                            "MICRO_BACKEND: {} is not a postgres://, nats:// or redis:// URL",
                            scheme(url)
                        )));
                    }
                };
                if slot.is_some() {
                    return Err(Error::Config("MICRO_BACKEND: give at most one URL of each kind".into()));
                }
                *slot = Some(Secret(url.to_string()));
            }
        }
        b.broker = b.events.clone();
        b.sync = redis.clone();
        let part = |var: &str, kinds: &[Kind]| -> Result<Option<Secret>, Error> {
            let Some(url) = env(var).filter(|v| !v.is_empty()) else { return Ok(None) };
            match Kind::of(&url) {
                Some(k) if kinds.contains(&k) => Ok(Some(Secret(url))),
                _ => {
                    let names: Vec<String> = kinds.iter().map(|k| format!("{k:?}").to_lowercase()).collect();
                    Err(Error::Config(format!("{var}: {} is not a {} URL", scheme(&url), names.join(" or "))))
                }
            }
        };
        if let Some(url) = part("MICRO_STORE", &[Kind::Postgres, Kind::Redis])? {
            if Kind::of(&url.0) == Some(Kind::Postgres) && b.database.is_none() {
                b.database = Some(url.clone());
            }
            b.store = Some(url);
        }
        for (var, slot, kinds) in [
            ("MICRO_REGISTRY", &mut b.registry, &[Kind::Postgres][..]),
            ("MICRO_SYNC", &mut b.sync, &[Kind::Postgres, Kind::Redis][..]),
            ("MICRO_EVENTS", &mut b.events, &[Kind::Nats][..]),
            ("MICRO_BROKER", &mut b.broker, &[Kind::Nats][..]),
        ] {
            if let Some(url) = part(var, kinds)? {
                *slot = Some(url);
            }
        }
        if let Some(v) = env("MICRO_CONFIG_KEY").filter(|v| !v.is_empty()) {
            use base64::Engine;
            let bytes = base64::engine::general_purpose::STANDARD.decode(v.trim()).ok();
            let key = bytes.and_then(|b| <[u8; 32]>::try_from(b).ok()).ok_or_else(|| {
                Error::Config("MICRO_CONFIG_KEY must be 32 bytes in base64 (head -c32 /dev/urandom | base64)".into())
            })?;
            b.config_key = Some(key);
        }
        Ok(b)
    }

    /// The variables that make these backends (what a joining node is given).
    pub(crate) fn to_env(&self) -> std::collections::BTreeMap<String, String> {
        let mut env = std::collections::BTreeMap::new();
        for (var, v) in [
            ("MICRO_BACKEND", &self.database),
            ("MICRO_STORE", &self.store),
            ("MICRO_REGISTRY", &self.registry),
            ("MICRO_SYNC", &self.sync),
            ("MICRO_EVENTS", &self.events),
            ("MICRO_BROKER", &self.broker),
        ] {
            if let Some(s) = v {
                env.insert(var.to_string(), s.0.clone());
            }
        }
        if let Some(k) = self.config_key {
            use base64::Engine;
            env.insert("MICRO_CONFIG_KEY".to_string(), base64::engine::general_purpose::STANDARD.encode(k));
        }
        env
    }

    /// The backends of variables `env` (as [`Backends::to_env`] makes them).
    pub(crate) fn from_map(env: &std::collections::BTreeMap<String, String>) -> Result<Backends, Error> {
        Backends::from_env(&|k: &str| env.get(k).cloned())
    }

    /// The URL each part uses: its own, else the shared database's (NATS parts have no fallback).
    pub fn store(&self) -> Option<&str> {
        self.store.as_ref().or(self.database.as_ref()).map(|s| s.0.as_str())
    }

    /// See [`Backends::store`].
    pub fn registry(&self) -> Option<&str> {
        self.registry.as_ref().or(self.database.as_ref()).map(|s| s.0.as_str())
    }

    /// See [`Backends::store`].
    pub fn sync(&self) -> Option<&str> {
        self.sync.as_ref().or(self.database.as_ref()).map(|s| s.0.as_str())
    }
}

/// The scheme of a URL, for error messages that must not show a password.
fn scheme(url: &str) -> String {
    match url.find("://") {
        Some(i) => format!("{}://…", &url[..i]),
        None => "the value".into(),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct File {
    api_address: Option<String>,
    proxy_address: Option<String>,
    web_address: Option<String>,
    data_dir: Option<PathBuf>,
    body_limit: Option<usize>,
    cors_origins: Option<Vec<String>>,
    events_max_age: Option<u64>,
    events_max_events: Option<u64>,
    blob_max_size: Option<u64>,
    runtime_target_dir: Option<PathBuf>,
    runtime_profile: Option<String>,
    runtime_repo: Option<String>,
    runtime_max_services: Option<usize>,
    runtime_sandbox: Option<String>,
    runtime_uid: Option<String>,
    runtime_allow_hosts: Option<Vec<String>>,
    tls: Option<String>,
}

/// `uid` or `uid:gid` (the gid defaults to the uid).
fn user(name: &str, v: &str) -> Result<(u32, u32), Error> {
    let bad = || Error::Config(format!("{name}={v:?}: give uid or uid:gid, numbers other than 0"));
    let (u, g) = v.split_once(':').unwrap_or((v, v));
    let (u, g) = (u.trim().parse::<u32>().map_err(|_| bad())?, g.trim().parse::<u32>().map_err(|_| bad())?);
    if u == 0 || g == 0 { Err(bad()) } else { Ok((u, g)) }
}

fn sandbox_mode(name: &str, v: &str) -> Result<crate::SandboxMode, Error> {
    v.trim().parse().map_err(|e| Error::Config(format!("{name}: {e}")))
}

fn number(name: &str, v: &str) -> Result<u64, Error> {
    v.parse().map_err(|_| Error::Config(format!("{name}={v:?} is not a whole number")))
}

/// `:8080` means every interface; anything else is taken as given.
pub(crate) fn normalize_address(a: &str) -> String {
    if a.starts_with(':') { format!("0.0.0.0{a}") } else { a.to_string() }
}

impl Config {
    /// Defaults, overlaid with the TOML `file` (if any), then the variables `env` finds
    /// (`MICRO_CONFIG` names a file when `file` is `None`).
    pub fn from_env(env: impl Fn(&str) -> Option<String>, file: Option<&Path>) -> Result<Config, Error> {
        let mut c = Config::default();
        let file = file.map(Path::to_path_buf).or_else(|| env("MICRO_CONFIG").map(PathBuf::from));
        if let Some(path) = file {
            let text = std::fs::read_to_string(&path).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
            let f: File = toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
            if let Some(v) = f.api_address {
                c.api_address = v;
            }
            if let Some(v) = f.proxy_address {
                c.proxy_address = v;
            }
            if let Some(v) = f.web_address {
                c.web_address = (v != "off").then_some(v);
            }
            if let Some(v) = f.data_dir {
                c.data_dir = v;
            }
            if let Some(v) = f.body_limit {
                c.body_limit = v;
            }
            if let Some(v) = f.cors_origins {
                c.cors_origins = v;
            }
            if let Some(v) = f.events_max_age {
                c.events_max_age = Some(std::time::Duration::from_secs(v));
            }
            if let Some(v) = f.events_max_events {
                c.events_max_events = Some(v);
            }
            if let Some(v) = f.blob_max_size {
                c.blob_max_size = v;
            }
            if let Some(v) = f.runtime_target_dir {
                c.runtime.target_dir = Some(v);
            }
            if let Some(v) = f.runtime_profile {
                c.runtime.profile = v;
            }
            if let Some(v) = f.runtime_repo {
                c.runtime.repo = Some(v);
            }
            if let Some(v) = f.runtime_max_services {
                c.runtime.max_services = v;
            }
            if let Some(v) = f.runtime_sandbox {
                c.runtime.sandbox = sandbox_mode("runtime_sandbox", &v)?;
            }
            if let Some(v) = f.runtime_uid {
                c.runtime.sandbox_user = Some(user("runtime_uid", &v)?);
            }
            if let Some(v) = f.runtime_allow_hosts {
                c.runtime.allow_hosts = v;
            }
            if let Some(v) = f.tls {
                c.tls = v.parse().map_err(|e| Error::Config(format!("tls: {e}")))?;
            }
        }
        if let Some(v) = env("MICRO_API_ADDRESS") {
            c.api_address = v;
        }
        if let Some(v) = env("MICRO_PROXY_ADDRESS") {
            c.proxy_address = v;
        }
        if let Some(v) = env("MICRO_WEB_ADDRESS") {
            c.web_address = (v != "off").then_some(v);
        }
        if let Some(v) = env("MICRO_DATA_DIR") {
            c.data_dir = PathBuf::from(v);
        }
        if let Some(v) = env("MICRO_API_BODY_LIMIT") {
            c.body_limit =
                v.parse().map_err(|_| Error::Config(format!("MICRO_API_BODY_LIMIT={v:?} is not a number of bytes")))?;
        }
        if let Some(v) = env("MICRO_API_CORS") {
            c.cors_origins = v.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
        }
        if let Some(v) = env("MICRO_TLS") {
            c.tls = v.parse().map_err(|e| Error::Config(format!("MICRO_TLS: {e}")))?;
        }
        if let Some(v) = env("MICRO_HTTP_REDIRECT_ADDRESS").filter(|v| !v.is_empty() && v != "off") {
            c.redirect_address = Some(v);
        }
        c.email = micro_email::Settings::from_vars(&env).map_err(Error::Config)?;
        c.db = micro_db::Settings::from_vars(PathBuf::new(), &env).map_err(Error::Config)?;
        if let Some(v) = env("MICRO_PLATFORM_URL").filter(|v| !v.is_empty()) {
            if !(v.starts_with("https://") || v.starts_with("http://")) {
                return Err(Error::Config(format!("MICRO_PLATFORM_URL: {v:?} is not an http(s):// address")));
            }
            c.platform_url = Some(v);
        }
        if let Some(v) = env("MICRO_API_URL").filter(|v| !v.is_empty()) {
            if !(v.starts_with("https://") || v.starts_with("http://")) || v.contains(char::is_whitespace) {
                return Err(Error::Config(format!("MICRO_API_URL: {v:?} is not an http(s):// address")));
            }
            c.api_url = Some(v.trim_end_matches('/').to_string());
        }
        if let Some(v) = env("MICRO_PUSH_PRIVATE") {
            c.push_private = match v.as_str() {
                "1" | "true" => true,
                "" | "0" | "false" => false,
                _ => return Err(Error::Config(format!("MICRO_PUSH_PRIVATE: {v:?} is not 1 or 0"))),
            };
        }
        if let Some(v) = env("MICRO_PUSH_CONTACT").filter(|v| !v.is_empty()) {
            if !(v.starts_with("mailto:") || v.starts_with("https://")) || v.contains(char::is_whitespace) {
                return Err(Error::Config(format!("MICRO_PUSH_CONTACT: {v:?} is not a mailto: or https:// URL")));
            }
            c.push_contact = Some(v);
        }
        if let Some(stripe) = micro_billing::stripe::StripeSettings::from_vars(&env) {
            micro_billing::stripe::Stripe::new(stripe.clone()).map_err(|e| Error::Config(e.to_string()))?;
            c.stripe = Some(stripe);
        }
        if let Some(v) = env("MICRO_SERVICES") {
            c.services = crate::products::select(&v).map_err(|e| Error::Config(format!("MICRO_SERVICES: {e}")))?;
        }
        if let Some(v) = env("MICRO_NODE_DENY") {
            crate::targets::parse_list(&v).map_err(|e| Error::Config(format!("MICRO_NODE_DENY: {e}")))?;
            c.node_deny = v;
        }
        if let Some(v) = env("MICRO_EVENTS_MAX_AGE") {
            c.events_max_age = Some(std::time::Duration::from_secs(number("MICRO_EVENTS_MAX_AGE", &v)?));
        }
        if let Some(v) = env("MICRO_EVENTS_MAX_EVENTS") {
            c.events_max_events = Some(number("MICRO_EVENTS_MAX_EVENTS", &v)?);
        }
        if let Some(v) = env("MICRO_ADMIN_PASSWORD").filter(|v| !v.is_empty()) {
            c.admin_password = Some(Secret(v));
        }
        if let Some(v) = env("MICRO_USAGE_FLUSH") {
            let secs = number("MICRO_USAGE_FLUSH", &v)?;
            if !(1..=300).contains(&secs) {
                return Err(Error::Config(format!("MICRO_USAGE_FLUSH={v:?}: give 1 to 300 seconds")));
            }
            c.usage_flush = Some(std::time::Duration::from_secs(secs));
        }
        match env("MICRO_USAGE").as_deref().map(str::trim) {
            None | Some("" | "on") => {}
            Some("off") => c.usage_flush = None,
            Some(v) => return Err(Error::Config(format!("MICRO_USAGE={v:?}: give on or off"))),
        }
        if let Some(v) = env("MICRO_DNS").filter(|v| !v.is_empty()) {
            if v.parse::<std::net::SocketAddr>().is_err() {
                return Err(Error::Config(format!("MICRO_DNS={v:?}: give the name server as ip:port")));
            }
            c.dns = Some(v);
        }
        if let Some(v) = env("MICRO_NETWORK_ADDRESS").filter(|v| !v.trim().is_empty()) {
            c.network.address = Some(v.trim().to_string());
        }
        if let Some(v) = env("MICRO_NETWORK_NAME").filter(|v| !v.trim().is_empty()) {
            let name = v.trim().to_string();
            crate::network::validate_name(&name).map_err(|e| Error::Config(format!("MICRO_NETWORK_NAME: {e}")))?;
            c.network.name = Some(name);
        }
        if let Some(v) = env("MICRO_NETWORK_EXPORT") {
            for ns in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                micro_core::namespace::validate(ns)
                    .map_err(|e| Error::Config(format!("MICRO_NETWORK_EXPORT: {ns:?}: {}", e.detail())))?;
                c.network.export.push(ns.to_string());
            }
        }
        if let Some(v) = env("MICRO_NETWORK_TRUST") {
            for ns in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                micro_core::namespace::validate(ns)
                    .map_err(|e| Error::Config(format!("MICRO_NETWORK_TRUST: {ns:?}: {}", e.detail())))?;
                c.network.trust.push(ns.to_string());
            }
        }
        if let Some(v) = env("MICRO_NETWORK_EVENTS") {
            for item in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                let bad = |why: String| Error::Config(format!("MICRO_NETWORK_EVENTS: {item:?}: {why}"));
                let (ns, topic) = item.split_once('/').ok_or_else(|| bad("give namespace/topic".into()))?;
                micro_core::namespace::validate(ns).map_err(|e| bad(e.detail().to_string()))?;
                micro_core::events::validate_topic(topic).map_err(|e| bad(e.detail().to_string()))?;
                c.network.events.push((ns.to_string(), topic.to_string()));
            }
        }
        if let Some(v) = env("MICRO_NODE_LOCAL").filter(|v| !v.trim().is_empty()) {
            c.node_local = v.trim().parse().map_err(|e: String| Error::Config(format!("MICRO_NODE_LOCAL: {e}")))?;
        }
        if let Some(v) = env("MICRO_HOSTING_DOMAIN").filter(|v| !v.trim().is_empty()) {
            // `localhost` (and names under it) for a developer's machine: browsers send
            // `<app>.<namespace>.localhost` to it. A tenant never claims such a name.
            let name = v.trim().trim_end_matches('.').to_ascii_lowercase();
            let local = name == "localhost" || name.ends_with(".localhost");
            let checked = if local { format!("{name}.test") } else { v.clone() };
            let d = crate::domains::validate_domain(&checked)
                .map_err(|e| Error::Config(format!("MICRO_HOSTING_DOMAIN: {}", e.detail())))?;
            c.hosting_domain = Some(if local { name } else { d });
        }
        if let Some(directory) = env("MICRO_ACME_DIRECTORY").filter(|v| !v.is_empty()) {
            if !directory.starts_with("https://") {
                return Err(Error::Config(format!("MICRO_ACME_DIRECTORY={directory:?}: an https:// URL")));
            }
            let days = match env("MICRO_ACME_RENEW_DAYS") {
                Some(v) => number("MICRO_ACME_RENEW_DAYS", &v)?,
                None => 30,
            };
            let challenge = match env("MICRO_ACME_CHALLENGE").as_deref().map(str::trim) {
                None | Some("") if c.redirect_address.is_some() => crate::AcmeChallenge::Http01,
                None | Some("") => crate::AcmeChallenge::TlsAlpn01,
                Some("http-01") => crate::AcmeChallenge::Http01,
                Some("tls-alpn-01") => crate::AcmeChallenge::TlsAlpn01,
                Some(v) => {
                    return Err(Error::Config(format!("MICRO_ACME_CHALLENGE={v:?}: give http-01 or tls-alpn-01")));
                }
            };
            c.acme = Some(crate::AcmeConfig {
                challenge,
                directory,
                email: env("MICRO_ACME_EMAIL").filter(|v| !v.is_empty()),
                ca: env("MICRO_ACME_CA").filter(|v| !v.is_empty()).map(PathBuf::from),
                renew_before: std::time::Duration::from_secs(days * 86_400),
            });
        }
        if let Some(v) = env("MICRO_CACHE_SIZE") {
            c.cache_size = number("MICRO_CACHE_SIZE", &v)? as usize;
        }
        if let Some(v) = env("MICRO_BLOB_MAX_SIZE") {
            c.blob_max_size = number("MICRO_BLOB_MAX_SIZE", &v)?;
        }
        c.backends = Backends::from_env(&env)?;
        c.licence = crate::LicenceSettings::from_env(&env)?;
        match (env("MICRO_JOIN").filter(|v| !v.is_empty()), env("MICRO_JOIN_TOKEN").filter(|v| !v.is_empty())) {
            (Some(address), Some(token)) => c.join = Some(Join { address, token: Secret(token) }),
            (None, None) => {}
            _ => {
                return Err(Error::Config(
                    "MICRO_JOIN (--join) and MICRO_JOIN_TOKEN go together: a node's proxy address and a token from micro cluster token"
                        .into(),
                ));
            }
        }
        if let Some(v) = env("MICRO_ADVERTISE_HOST").filter(|v| !v.is_empty()) {
            if v.contains([':', '/', ' ']) && !v.starts_with('[') {
                return Err(Error::Config(format!("MICRO_ADVERTISE_HOST={v:?}: give a host name or IP, no port")));
            }
            c.runtime.host = v;
        }
        if let Some(v) = env("MICRO_RUNTIME_TARGET_DIR").filter(|v| !v.is_empty()) {
            c.runtime.target_dir = Some(PathBuf::from(v));
        }
        if let Some(v) = env("MICRO_RUNTIME_PROFILE").filter(|v| !v.is_empty()) {
            c.runtime.profile = v;
        }
        if let Some(v) = env("MICRO_RUNTIME_REPO").filter(|v| !v.is_empty()) {
            c.runtime.repo = Some(v);
        }
        if let Some(v) = env("MICRO_RUNTIME_BUILD_TIMEOUT").filter(|v| !v.is_empty()) {
            match number("MICRO_RUNTIME_BUILD_TIMEOUT", &v)? {
                0 => return Err(Error::Config("MICRO_RUNTIME_BUILD_TIMEOUT=0: give seconds, at least 1".into())),
                secs => c.runtime.build_timeout = std::time::Duration::from_secs(secs),
            }
        }
        if let Some(v) = env("MICRO_RUNTIME_MAX_SERVICES") {
            c.runtime.max_services = number("MICRO_RUNTIME_MAX_SERVICES", &v)? as usize;
        }
        if let Some(v) = env("MICRO_RUNTIME_SANDBOX").filter(|v| !v.is_empty()) {
            c.runtime.sandbox = sandbox_mode("MICRO_RUNTIME_SANDBOX", &v)?;
        }
        if let Some(v) = env("MICRO_RUNTIME_UID").filter(|v| !v.is_empty()) {
            c.runtime.sandbox_user = Some(user("MICRO_RUNTIME_UID", &v)?);
        }
        if let Some(v) = env("MICRO_RUNTIME_EGRESS").filter(|v| !v.is_empty()) {
            c.runtime.egress =
                v.trim().parse().map_err(|e: String| Error::Config(format!("MICRO_RUNTIME_EGRESS: {e}")))?;
        }
        if let Some(v) = env("MICRO_RUNTIME_ALLOW_HOSTS") {
            c.runtime.allow_hosts = v.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
        }
        if c.redirect_address.is_some() && c.tls == crate::TlsMode::Off {
            return Err(Error::Config(
                "MICRO_HTTP_REDIRECT_ADDRESS redirects to HTTPS: turn TLS on (MICRO_TLS)".into(),
            ));
        }
        if !["release", "dev"].contains(&c.runtime.profile.as_str())
            && !c.runtime.profile.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(Error::Config(format!("invalid cargo profile {:?}", c.runtime.profile)));
        }
        Ok(c)
    }

    /// A configuration for tests: every port 0, data in `dir`.
    pub fn ephemeral(dir: &Path) -> Config {
        Config {
            api_address: "127.0.0.1:0".into(),
            proxy_address: "127.0.0.1:0".into(),
            web_address: Some("127.0.0.1:0".into()),
            data_dir: dir.to_path_buf(),
            ..Config::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn layers_file_then_env() {
        let dir = std::env::temp_dir().join(format!("micro-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("micro.toml");
        std::fs::write(&file, "api_address = \"127.0.0.1:9000\"\nproxy_address = \"127.0.0.1:9001\"\n").unwrap();
        let env: HashMap<&str, &str> = [("MICRO_PROXY_ADDRESS", ":7001")].into();
        let c = Config::from_env(|k| env.get(k).map(|v| v.to_string()), Some(&file)).unwrap();
        assert_eq!(c.api_address, "127.0.0.1:9000");
        assert_eq!(c.proxy_address, ":7001");
        assert_eq!(normalize_address(&c.proxy_address), "0.0.0.0:7001");
        std::fs::write(&file, "bogus = 1\n").unwrap();
        let err = Config::from_env(|_| None, Some(&file)).unwrap_err().to_string();
        assert!(err.contains("bogus"), "{err}");
        let err = Config::from_env(|k| (k == "MICRO_API_BODY_LIMIT").then(|| "lots".to_string()), None).unwrap_err();
        assert!(err.to_string().contains("MICRO_API_BODY_LIMIT"));
        let env: HashMap<&str, &str> =
            [("MICRO_EVENTS_MAX_AGE", "3600"), ("MICRO_EVENTS_MAX_EVENTS", "1000"), ("MICRO_BLOB_MAX_SIZE", "1024")]
                .into();
        let c = Config::from_env(|k| env.get(k).map(|v| v.to_string()), None).unwrap();
        assert_eq!(c.events_max_age, Some(std::time::Duration::from_secs(3600)));
        assert_eq!((c.events_max_events, c.blob_max_size), (Some(1000), 1024));
        assert!(Config::from_env(|k| (k == "MICRO_BLOB_MAX_SIZE").then(|| "-1".to_string()), None).is_err());
        let env: HashMap<&str, &str> = [
            ("MICRO_RUNTIME_SANDBOX", "none"),
            ("MICRO_RUNTIME_UID", "1000:1001"),
            ("MICRO_RUNTIME_ALLOW_HOSTS", "git.internal, 10.0.0.0/8"),
        ]
        .into();
        let c = Config::from_env(|k| env.get(k).map(|v| v.to_string()), None).unwrap();
        assert_eq!(c.runtime.sandbox, crate::SandboxMode::Off);
        assert_eq!(c.runtime.sandbox_user, Some((1000, 1001)));
        assert_eq!(c.runtime.allow_hosts, ["git.internal", "10.0.0.0/8"]);
        for (k, v) in [("MICRO_RUNTIME_UID", "0"), ("MICRO_RUNTIME_UID", "x"), ("MICRO_RUNTIME_SANDBOX", "maybe")] {
            let err = Config::from_env(|n| (n == k).then(|| v.to_string()), None).unwrap_err().to_string();
            assert!(err.contains(k), "{err}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn backends(vars: &[(&str, &str)]) -> Result<Backends, Error> {
        let env: HashMap<&str, &str> = vars.iter().copied().collect();
        Config::from_env(|k| env.get(k).map(|v| v.to_string()), None).map(|c| c.backends)
    }

    #[test]
    fn backend_profile_and_parts() {
        let pg = "postgres://u:pw@db/micro";
        let b = backends(&[("MICRO_BACKEND", "postgres://u:pw@db/micro, nats://n:4222 redis://r:6379")]).unwrap();
        assert_eq!(b.database, Some(Secret(pg.into())));
        assert_eq!((b.store(), b.registry()), (Some(pg), Some(pg)));
        assert_eq!(b.sync(), Some("redis://r:6379"), "locks go to Redis when the profile has it");
        assert_eq!(
            (b.events.clone(), b.broker.clone()),
            (Some(Secret("nats://n:4222".into())), Some(Secret("nats://n:4222".into())))
        );
        // Parts override the profile.
        let b = backends(&[("MICRO_BACKEND", pg), ("MICRO_STORE", "redis://r"), ("MICRO_SYNC", pg)]).unwrap();
        assert_eq!(
            (b.store(), b.sync(), b.database.as_ref().map(|s| s.0.as_str())),
            (Some("redis://r"), Some(pg), Some(pg))
        );
        // MICRO_STORE=postgres alone shares everything stateful, as before.
        let b = backends(&[("MICRO_STORE", pg)]).unwrap();
        assert_eq!((b.database.clone(), b.events.clone()), (Some(Secret(pg.into())), None));
        assert_eq!(backends(&[]).unwrap(), Backends::default());
        let host = |v: &str| {
            let env: HashMap<&str, &str> = [("MICRO_ADVERTISE_HOST", v)].into();
            Config::from_env(|k| env.get(k).map(|v| v.to_string()), None).map(|c| c.runtime.host)
        };
        assert_eq!(host("10.1.2.3").unwrap(), "10.1.2.3");
        assert!(host("10.1.2.3:8081").unwrap_err().to_string().contains("MICRO_ADVERTISE_HOST"));
        let key = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
        assert_eq!(backends(&[("MICRO_CONFIG_KEY", key)]).unwrap().config_key.map(|k| k[31]), Some(31));
        for bad in ["short", "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwd", "not base64 at all!"] {
            let err = backends(&[("MICRO_CONFIG_KEY", bad)]).unwrap_err().to_string();
            assert!(err.contains("MICRO_CONFIG_KEY") && !err.contains(bad), "{err}");
        }
        // Bad values: one line naming the variable, never the password.
        for (var, value) in [
            ("MICRO_BACKEND", "mysql://u:secretpw@h/db"),
            ("MICRO_BACKEND", "nats://a:1,nats://b:2"),
            ("MICRO_EVENTS", "postgres://u:secretpw@h/db"),
            ("MICRO_STORE", "nats://u:secretpw@h"),
            ("MICRO_REGISTRY", "redis://u:secretpw@h"),
        ] {
            let err = backends(&[(var, value)]).unwrap_err().to_string();
            assert!(err.contains(var) && !err.contains("secretpw"), "{var}={value}: {err}");
        }
    }
}
