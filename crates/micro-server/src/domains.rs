//! Custom domains: a namespace (or one of its services) claims a domain, proves it holds
//! the domain's DNS with a TXT record, and the gateway then routes requests whose `Host`
//! is that domain to it, before any path rule.
//!
//! Claims are kept in the server's own `domains` store (shared by a cluster's nodes). A
//! claim holds a random token; it is pending (`pending/<domain>/<namespace>`, for a
//! week) until `_micro-challenge.<domain>` has a TXT record `micro-verify=<token>` and
//! `micro domain verify` (Domains.Verify) saw it; the first namespace to verify holds the
//! domain (key `<domain>`) until it removes it. Several namespaces may have pending claims
//! of a domain, so a claim nobody can prove blocks nobody. The check goes
//! through a [`TxtResolver`]: the system's resolver, or the name server `MICRO_DNS` names
//! (tests run one of their own). Every node rereads the verified claims every second.
//!
//! Public hosting: with a hosting domain (`MICRO_HOSTING_DOMAIN`), every namespace is
//! reached at `<namespace>.<domain>` and each of its services at
//! `<service>.<namespace>.<domain>`, like a verified claim; no custom domain may be at or
//! under it. A namespace makes its services private (by default, or one by one): the
//! gateway and the proxy then serve them to the namespace's accounts and operators only.

use micro::proto::domains as pb;
use micro_core::store::{Query, Record, Store, Table};
use micro_core::{Code, Status};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long the verified claims are used before they are read again.
const REREAD: Duration = Duration::from_secs(1);

/// The TXT record's name prefix: `_micro-challenge.<domain>`.
pub const CHALLENGE_PREFIX: &str = "_micro-challenge.";

/// The TXT record's value prefix: `micro-verify=<token>`.
pub const TOKEN_PREFIX: &str = "micro-verify=";

/// At most this many domains (pending or verified) per namespace.
const MAX_PER_NAMESPACE: usize = 100;

/// At most this many services' hosting set per namespace.
const MAX_HOSTED_SETTINGS: usize = 1000;

/// How long a pending claim is kept.
const PENDING_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Looks TXT records up.
#[tonic::async_trait]
pub trait TxtResolver: Send + Sync + 'static {
    /// The TXT strings at `name` (none when there are none).
    async fn txt(&self, name: &str) -> Result<Vec<String>, Status>;
}

/// The system's resolver, or one name server (`host:port`, `MICRO_DNS`).
pub struct DnsResolver {
    resolver: hickory_resolver::TokioResolver,
}

impl DnsResolver {
    /// The system's resolver (`/etc/resolv.conf`), or the name server at `server`.
    pub fn new(server: Option<&str>) -> Result<DnsResolver, crate::Error> {
        use hickory_resolver::config::{NameServerConfig, ResolverConfig};
        use hickory_resolver::net::runtime::TokioRuntimeProvider;
        let bad = |e: String| crate::Error::Config(format!("MICRO_DNS: {e}"));
        let mut builder = match server {
            Some(s) => {
                let addr: std::net::SocketAddr =
                    s.parse().map_err(|_| bad(format!("{s:?}: give the name server as ip:port")))?;
                let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
                for c in &mut ns.connections {
                    c.port = addr.port();
                }
                hickory_resolver::Resolver::builder_with_config(
                    ResolverConfig::from_name_servers(vec![ns]),
                    TokioRuntimeProvider::new(),
                )
            }
            None => hickory_resolver::Resolver::builder_tokio().map_err(|e| bad(e.to_string()))?,
        };
        // Nothing is remembered: a record just added is seen by the next check.
        builder.options_mut().cache_size = 0;
        builder.options_mut().negative_max_ttl = Some(Duration::ZERO);
        let resolver = builder.build().map_err(|e| bad(e.to_string()))?;
        Ok(DnsResolver { resolver })
    }
}

#[tonic::async_trait]
impl TxtResolver for DnsResolver {
    async fn txt(&self, name: &str) -> Result<Vec<String>, Status> {
        use hickory_resolver::proto::rr::RData;
        let fqdn = if name.ends_with('.') { name.to_string() } else { format!("{name}.") };
        match self.resolver.txt_lookup(fqdn).await {
            Ok(lookup) => Ok(lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::TXT(txt) => {
                        Some(txt.txt_data.iter().map(|d| String::from_utf8_lossy(d)).collect::<String>())
                    }
                    _ => None,
                })
                .collect()),
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => Ok(Vec::new()),
            Err(e) => Err(Status::unavailable("domains", format!("looking up TXT {name}: {e}"))),
        }
    }
}

/// A claim of a domain.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Claim {
    pub(crate) domain: String,
    pub(crate) namespace: String,
    /// The service its requests go to ("" for the whole namespace).
    #[serde(default)]
    pub(crate) service: String,
    token: String,
    #[serde(default)]
    pub(crate) verified: bool,
    #[serde(default)]
    created: u64,
}

/// Checks a domain name: lowercase letters, digits and `-` in dot-separated labels of 1
/// to 63 (no `-` at either end), at least two labels, at most 253 in all; not an address,
/// not `localhost`. Returns it lowercased, without a trailing dot.
pub fn validate_domain(domain: &str) -> Result<String, Status> {
    let d = domain.trim().trim_end_matches('.').to_ascii_lowercase();
    let bad = |why: &str| Status::bad_request("domains", format!("{domain:?} is not a domain name: {why}"));
    if d.is_empty() || d.len() > 253 {
        return Err(bad("1 to 253 characters"));
    }
    if d.parse::<std::net::IpAddr>().is_ok() || d.trim_matches(['[', ']']).parse::<std::net::Ipv6Addr>().is_ok() {
        return Err(bad("an address, not a name"));
    }
    let labels: Vec<&str> = d.split('.').collect();
    if labels.len() < 2 {
        return Err(bad("it needs a dot, like shop.example.com"));
    }
    for l in &labels {
        let ok = !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !ok {
            return Err(bad("labels of letters, digits and -, 1 to 63 long"));
        }
    }
    if labels.last() == Some(&"localhost") || labels.iter().all(|l| l.bytes().all(|b| b.is_ascii_digit())) {
        return Err(bad("not a public name"));
    }
    Ok(d)
}

/// The verified claims, by domain.
type Verified = Arc<HashMap<String, Arc<Claim>>>;

/// Whether a namespace's services are private: its default and its services' own
/// settings (kept in the `hosting` table under the namespace's name).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Hosting {
    /// Services are private unless set public.
    #[serde(default)]
    private: bool,
    /// Services set one way or the other (`true`: private).
    #[serde(default)]
    services: std::collections::BTreeMap<String, bool>,
}

impl Hosting {
    /// Whether `service` is private.
    pub(crate) fn is_private(&self, service: &str) -> bool {
        self.services.get(service).copied().unwrap_or(self.private)
    }
}

/// The namespaces' hosting settings, by namespace.
type Hostings = Arc<HashMap<String, Hosting>>;

/// The platform's own names: `<service>.<namespace>.<domain>` and `<namespace>.<domain>`
/// (`MICRO_HOSTING_DOMAIN`), and the address they are reached at.
#[derive(Clone, Debug)]
pub(crate) struct HostingDomain {
    /// The domain, validated and lowercased.
    pub(crate) domain: String,
    /// `https` with TLS on, else `http`.
    pub(crate) scheme: &'static str,
    /// The gateway's port, when not the scheme's own.
    pub(crate) port: Option<u16>,
}

impl HostingDomain {
    /// The namespace and service a host under the domain names (service "" for a
    /// namespace's name), if it is one.
    fn route(&self, host: &str) -> Option<(String, String)> {
        let rest = host.strip_suffix(self.domain.as_str())?.strip_suffix('.')?;
        let (service, ns) = match rest.split_once('.') {
            Some((service, ns)) => (service, ns),
            None => ("", rest),
        };
        micro_core::namespace::validate(ns).ok()?;
        if !service.is_empty() {
            micro_core::registry::validate_name(service).ok()?;
        }
        Some((ns.to_string(), service.to_string()))
    }

    /// The public address of `service` of `ns`.
    pub(crate) fn url(&self, ns: &str, service: &str) -> String {
        let port = self.port.map(|p| format!(":{p}")).unwrap_or_default();
        format!("{}://{service}.{ns}.{}{port}", self.scheme, self.domain)
    }

    /// Whether `domain` is the hosting domain or under it (no custom domain may be).
    fn covers(&self, domain: &str) -> bool {
        domain == self.domain || domain.strip_suffix(self.domain.as_str()).is_some_and(|r| r.ends_with('.'))
    }
}

/// The claims. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Domains {
    store: Arc<dyn Store>,
    table: Table,
    resolver: Arc<dyn TxtResolver>,
    /// When the verified claims were last read.
    read_at: Arc<Mutex<Option<Instant>>>,
    verified: Arc<Mutex<Verified>>,
    /// The platform's hosting domain, if any.
    hosting_domain: Option<HostingDomain>,
    hosting_table: Table,
    hostings: Arc<Mutex<Hostings>>,
    /// Whether the hosting settings were read at least once.
    hostings_read: Arc<std::sync::atomic::AtomicBool>,
}

impl Domains {
    pub(crate) fn new(
        store: Arc<dyn Store>,
        resolver: Arc<dyn TxtResolver>,
        hosting_domain: Option<HostingDomain>,
    ) -> Domains {
        Domains {
            store,
            table: Table::new(micro_core::namespace::DEFAULT, "domains"),
            resolver,
            read_at: Arc::default(),
            verified: Arc::default(),
            hosting_domain,
            hosting_table: Table::new(micro_core::namespace::DEFAULT, "hosting"),
            hostings: Arc::default(),
            hostings_read: Arc::default(),
        }
    }

    /// `ns`'s hosting settings, read now.
    async fn hosting(&self, ns: &str) -> Result<Hosting, Status> {
        match self.store.read(&self.hosting_table, ns, &Query::default()).await {
            Ok(r) => Ok(r.first().and_then(|r| serde_json::from_slice(&r.value).ok()).unwrap_or_default()),
            Err(e) if e.code() == Code::NotFound => Ok(Hosting::default()),
            Err(e) => Err(e),
        }
    }

    /// Rereads the verified claims and the hosting settings when a second has passed
    /// since they were last read (one caller a second waits on the read).
    async fn refresh(&self) {
        let due = {
            let mut at = self.read_at.lock().unwrap_or_else(|e| e.into_inner());
            let due = at.is_none_or(|t| t.elapsed() >= REREAD);
            if due {
                *at = Some(Instant::now());
            }
            due
        };
        if !due {
            return;
        }
        match self.all().await {
            Ok(claims) => {
                let verified = claims.into_iter().filter(|c| c.verified).map(|c| (c.domain.clone(), Arc::new(c)));
                *self.verified.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(verified.collect());
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the domains; keeping the last ones"),
        }
        let all = Query { prefix: true, ..Default::default() };
        match self.store.read(&self.hosting_table, "", &all).await {
            Ok(records) => {
                let read = records.iter().filter_map(|r| Some((r.key.clone(), serde_json::from_slice(&r.value).ok()?)));
                *self.hostings.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(read.collect());
                self.hostings_read.store(true, std::sync::atomic::Ordering::Release);
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the hosting settings; keeping the last ones"),
        }
    }

    /// Whether `service` of `ns` is private (answers its namespace's accounts and
    /// operators only): from the settings read at most about a second ago.
    pub(crate) async fn is_private(&self, ns: &str, service: &str) -> bool {
        self.refresh().await;
        if !self.hostings_read.load(std::sync::atomic::Ordering::Acquire) {
            // Not read yet (a node just started, or the store is failing): this
            // namespace's own, read now; private when it cannot be read.
            return self.hosting(ns).await.map_or(true, |h| h.is_private(service));
        }
        let hostings = self.hostings.lock().unwrap_or_else(|e| e.into_inner()).clone();
        hostings.get(ns).is_some_and(|h| h.is_private(service))
    }

    /// Refused when `service` of `ns` is private and `caller` is neither an account of
    /// `ns` nor an operator: 401 for an anonymous caller, 403 for another namespace's.
    pub(crate) async fn admit(&self, caller: &micro::auth::Caller, ns: &str, service: &str) -> Result<(), Status> {
        if member(caller, ns) || !self.is_private(ns, service).await {
            return Ok(());
        }
        let (code, who) = match &caller.account {
            None => (Code::Unauthenticated, "sign in with an account of the namespace"),
            Some(_) => (Code::PermissionDenied, "it answers the namespace's own accounts only"),
        };
        Err(Status::new(code, "api", format!("service {service} of namespace {ns} is private: {who}")))
    }

    async fn read(&self, key: &str) -> Result<Option<Claim>, Status> {
        match self.store.read(&self.table, key, &Query::default()).await {
            Ok(r) => Ok(r.first().and_then(|r| serde_json::from_slice(&r.value).ok())),
            Err(e) if e.code() == Code::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes a claim: a verified one under its domain, a pending one under
    /// `pending/<domain>/<namespace>` for a week.
    async fn write(&self, claim: &Claim) -> Result<(), Status> {
        let value = serde_json::to_vec(claim).map_err(|e| Status::internal("domains", e.to_string()))?;
        let (key, ttl) = if claim.verified {
            (claim.domain.clone(), None)
        } else {
            (pending_key(&claim.domain, &claim.namespace), Some(PENDING_TTL))
        };
        self.store.write(&self.table, &Record::new(key, value), ttl).await
    }

    async fn all(&self) -> Result<Vec<Claim>, Status> {
        let records = self.store.read(&self.table, "", &Query { prefix: true, ..Default::default() }).await?;
        Ok(records.iter().filter_map(|r| serde_json::from_slice(&r.value).ok()).collect())
    }

    /// The verified domains, read now.
    pub(crate) async fn verified(&self) -> Result<std::collections::HashSet<String>, Status> {
        Ok(self.all().await?.into_iter().filter(|c| c.verified).map(|c| c.domain).collect())
    }

    /// The claim of `domain` by `ns`, verified or pending; not found when it has none
    /// (another namespace's claim is not its business).
    async fn own(&self, ns: &str, domain: &str) -> Result<Claim, Status> {
        let domain = validate_domain(domain)?;
        if let Some(c) = self.read(&domain).await?.filter(|c| c.namespace == ns) {
            return Ok(c);
        }
        match self.read(&pending_key(&domain, ns)).await? {
            Some(c) => Ok(c),
            None => Err(Status::not_found("domains", format!("namespace {ns} has no domain {domain}"))),
        }
    }

    /// The verified claim of the host a request names, if any: from the claims read at
    /// most about a second ago (one request a second rereads them; whatever `Host` a
    /// request sends, it costs no read of its own).
    ///
    /// A host under the hosting domain is routed as the namespace's (`<namespace>.<domain>`)
    /// or its service's (`<service>.<namespace>.<domain>`) domain.
    pub(crate) async fn route(&self, host: &str) -> Option<Arc<Claim>> {
        let host =
            host.rsplit_once(':').filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit())).map_or(host, |(h, _)| h);
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if let Some((namespace, service)) = self.hosting_domain.as_ref().and_then(|d| d.route(&host)) {
            let claim = Claim { domain: host, namespace, service, token: String::new(), verified: true, created: 0 };
            return Some(Arc::new(claim));
        }
        self.refresh().await;
        let verified = self.verified.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if verified.is_empty() {
            return None;
        }
        verified.get(&host).cloned()
    }

    fn reply(c: &Claim) -> pb::Domain {
        pb::Domain {
            domain: c.domain.clone(),
            namespace: c.namespace.clone(),
            service: c.service.clone(),
            verified: c.verified,
            txt_name: format!("{CHALLENGE_PREFIX}{}", c.domain),
            txt_value: format!("{TOKEN_PREFIX}{}", c.token),
            created: c.created as i64,
            certificate_expires: 0,
        }
    }
}

fn t(s: Status) -> tonic::Status {
    micro::status::to_tonic(&s)
}

/// Whether `caller` acts with an account of namespace `ns` (not an app user's: they are
/// the public of its apps), or is an operator: whom a private service answers and the
/// month's quota refusal names the plan to.
pub(crate) fn member(caller: &micro::auth::Caller, ns: &str) -> bool {
    caller.is_operator()
        || caller.account.as_ref().is_some_and(|a| a.namespace == ns && a.kind != micro_core::auth::AccountType::App)
}

/// Where `ns`'s pending claim of `domain` is kept.
fn pending_key(domain: &str, ns: &str) -> String {
    format!("pending/{domain}/{ns}")
}

fn taken(domain: &str) -> Status {
    Status::new(Code::AlreadyExists, "domains", format!("{domain} is claimed by another namespace"))
}

/// The `domains` core service.
pub(crate) struct DomainsService {
    pub(crate) domains: Domains,
    /// Certificates for the domains, when ACME is on.
    pub(crate) acme: Option<crate::acme::Acme>,
    /// The namespaces' services, for their hosting.
    pub(crate) registry: Arc<dyn micro_core::registry::Registry>,
}

impl DomainsService {
    /// `ns`'s hosting as the service answers it: every service it runs or has set.
    async fn hosting_reply(&self, ns: &str, h: &Hosting) -> Result<pb::HostingResponse, tonic::Status> {
        // (The core's own services are no one's to host.)
        let running: std::collections::BTreeSet<String> = self
            .registry
            .list_services(ns)
            .await
            .map_err(t)?
            .into_iter()
            .map(|s| s.name)
            .filter(|n| !crate::app::CORE_SERVICES.contains(&n.as_str()))
            .collect();
        let names: std::collections::BTreeSet<&String> = running.iter().chain(h.services.keys()).collect();
        let domain = self.domains.hosting_domain.as_ref();
        let services = names
            .into_iter()
            .map(|name| pb::HostedService {
                name: name.clone(),
                private: h.is_private(name),
                explicit: h.services.contains_key(name),
                // A name with dots is no host label: it is reached by path only.
                url: domain.filter(|_| !name.contains('.')).map(|d| d.url(ns, name)).unwrap_or_default(),
                running: running.contains(name),
            })
            .collect();
        Ok(pb::HostingResponse {
            namespace: ns.to_string(),
            domain: domain.map(|d| d.domain.clone()).unwrap_or_default(),
            private: h.private,
            services,
        })
    }

    /// A claim as the service answers it, with its certificate's expiry.
    async fn reply(&self, c: &Claim) -> pb::Domain {
        let mut d = Domains::reply(c);
        if let Some(a) = &self.acme {
            d.certificate_expires = a.expiry(&c.domain).await.unwrap_or(0);
        }
        d
    }
}

#[tonic::async_trait]
impl pb::domains_server::Domains for DomainsService {
    async fn add(&self, req: tonic::Request<pb::AddRequest>) -> Result<tonic::Response<pb::Domain>, tonic::Status> {
        let ns = micro::namespace(&req);
        let r = req.into_inner();
        let domain = validate_domain(&r.domain).map_err(t)?;
        if !r.service.is_empty() {
            micro_core::registry::validate_name(&r.service).map_err(t)?;
        }
        let d = &self.domains;
        if let Some(h) = d.hosting_domain.as_ref().filter(|h| h.covers(&domain)) {
            return Err(t(Status::bad_request(
                "domains",
                format!("{domain} is the platform's own ({}): its names are the namespaces'", h.domain),
            )));
        }
        if let Some(c) = d.read(&domain).await.map_err(t)?
            && c.namespace != ns
        {
            return Err(t(taken(&domain)));
        }
        if let Ok(c) = d.own(&ns, &domain).await {
            // Claimed again: the same token (a pending claim's week starts again); the
            // service may change.
            let c = Claim { service: r.service, ..c };
            d.write(&c).await.map_err(t)?;
            return Ok(tonic::Response::new(self.reply(&c).await));
        }
        let mine = d.all().await.map_err(t)?.into_iter().filter(|c| c.namespace == ns).count();
        if mine >= MAX_PER_NAMESPACE {
            return Err(t(Status::new(
                Code::ResourceExhausted,
                "domains",
                format!("namespace {ns} has {mine} domains, the most it may"),
            )));
        }
        let token = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
        let c = Claim {
            domain,
            namespace: ns,
            service: r.service,
            token,
            verified: false,
            created: micro_core::store::now_ms() / 1000,
        };
        d.write(&c).await.map_err(t)?;
        Ok(tonic::Response::new(self.reply(&c).await))
    }

    async fn verify(
        &self,
        req: tonic::Request<pb::VerifyRequest>,
    ) -> Result<tonic::Response<pb::Domain>, tonic::Status> {
        let ns = micro::namespace(&req);
        let d = &self.domains;
        let mut c = d.own(&ns, &req.get_ref().domain).await.map_err(t)?;
        if !c.verified {
            let name = format!("{CHALLENGE_PREFIX}{}", c.domain);
            let want = format!("{TOKEN_PREFIX}{}", c.token);
            let found = d.resolver.txt(&name).await.map_err(t)?;
            // The first namespace to prove the claim holds the domain.
            if d.read(&c.domain).await.map_err(t)?.is_some_and(|v| v.namespace != ns) {
                return Err(t(taken(&c.domain)));
            }
            if !found.iter().any(|v| v.trim() == want) {
                return Err(t(Status::new(
                    Code::FailedPrecondition,
                    "domains",
                    format!(
                        "no TXT record {name} = {want} yet (found {}): add it at your DNS provider, then verify again",
                        found.len()
                    ),
                )));
            }
            c.verified = true;
            d.write(&c).await.map_err(t)?;
            let _ = d.store.delete(&d.table, &pending_key(&c.domain, &ns)).await;
        }
        Ok(tonic::Response::new(self.reply(&c).await))
    }

    async fn list(
        &self,
        req: tonic::Request<pb::ListRequest>,
    ) -> Result<tonic::Response<pb::ListResponse>, tonic::Status> {
        let ns = micro::namespace(&req);
        let mut mine: Vec<Claim> =
            self.domains.all().await.map_err(t)?.into_iter().filter(|c| c.namespace == ns).collect();
        mine.sort_by(|a, b| a.domain.cmp(&b.domain));
        let mut domains = Vec::with_capacity(mine.len());
        for c in &mine {
            domains.push(self.reply(c).await);
        }
        Ok(tonic::Response::new(pb::ListResponse { domains }))
    }

    async fn remove(
        &self,
        req: tonic::Request<pb::RemoveRequest>,
    ) -> Result<tonic::Response<pb::RemoveResponse>, tonic::Status> {
        let ns = micro::namespace(&req);
        let d = &self.domains;
        let c = d.own(&ns, &req.get_ref().domain).await.map_err(t)?;
        if c.verified {
            d.store.delete(&d.table, &c.domain).await.map_err(t)?;
        }
        match d.store.delete(&d.table, &pending_key(&c.domain, &ns)).await {
            Err(e) if e.code() != Code::NotFound => return Err(t(e)),
            _ => {}
        }
        Ok(tonic::Response::new(pb::RemoveResponse {}))
    }

    async fn hosting(
        &self,
        req: tonic::Request<pb::HostingRequest>,
    ) -> Result<tonic::Response<pb::HostingResponse>, tonic::Status> {
        let ns = micro::namespace(&req);
        let h = self.domains.hosting(&ns).await.map_err(t)?;
        Ok(tonic::Response::new(self.hosting_reply(&ns, &h).await?))
    }

    async fn set_hosting(
        &self,
        req: tonic::Request<pb::SetHostingRequest>,
    ) -> Result<tonic::Response<pb::HostingResponse>, tonic::Status> {
        let ns = micro::namespace(&req);
        let r = req.into_inner();
        if !r.service.is_empty() {
            micro_core::registry::validate_name(&r.service).map_err(t)?;
        }
        let d = &self.domains;
        let mut h = d.hosting(&ns).await.map_err(t)?;
        let private = match (r.visibility.as_str(), r.service.is_empty()) {
            ("private", _) => Some(true),
            ("public", _) => Some(false),
            ("default", false) => None,
            (v, _) => {
                let also = if r.service.is_empty() { "" } else { ", or default (the namespace's)" };
                return Err(t(Status::bad_request(
                    "domains",
                    format!("visibility {v:?}: give public or private{also}"),
                )));
            }
        };
        match (r.service.is_empty(), private) {
            (true, Some(p)) => h.private = p,
            (false, Some(p)) => {
                if !h.services.contains_key(&r.service) && h.services.len() >= MAX_HOSTED_SETTINGS {
                    return Err(t(Status::new(
                        Code::ResourceExhausted,
                        "domains",
                        format!("namespace {ns} sets {} services' hosting, the most it may", h.services.len()),
                    )));
                }
                h.services.insert(r.service.clone(), p);
            }
            (_, None) => {
                h.services.remove(&r.service);
            }
        }
        let value = serde_json::to_vec(&h).map_err(|e| t(Status::internal("domains", e.to_string())))?;
        d.store.write(&d.hosting_table, &Record::new(ns.clone(), value), None).await.map_err(t)?;
        // Read again at the next request on this node (others within a second).
        *d.read_at.lock().unwrap_or_else(|e| e.into_inner()) = None;
        Ok(tonic::Response::new(self.hosting_reply(&ns, &h).await?))
    }

    async fn renew(&self, req: tonic::Request<pb::RenewRequest>) -> Result<tonic::Response<pb::Domain>, tonic::Status> {
        let ns = micro::namespace(&req);
        let c = self.domains.own(&ns, &req.get_ref().domain).await.map_err(t)?;
        let Some(acme) = &self.acme else {
            return Err(t(Status::new(
                Code::FailedPrecondition,
                "domains",
                "this server obtains no certificates: set MICRO_ACME_DIRECTORY",
            )));
        };
        if !c.verified {
            return Err(t(Status::new(
                Code::FailedPrecondition,
                "domains",
                format!("{} is not verified yet", c.domain),
            )));
        }
        acme.renew(&c.domain).await.map_err(t)?;
        Ok(tonic::Response::new(self.reply(&c).await))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_names() {
        assert_eq!(validate_domain("Shop.Example.COM.").unwrap(), "shop.example.com");
        assert_eq!(validate_domain("a-b.example").unwrap(), "a-b.example");
        for (bad, why) in [
            ("", "1 to 253"),
            ("localhost", "needs a dot"),
            ("shop.localhost", "not a public name"),
            ("127.0.0.1", "address"),
            ("::1", "address"),
            ("-shop.example.com", "labels"),
            ("shop..example.com", "labels"),
            ("sh_op.example.com", "labels"),
            ("*.example.com", "labels"),
            ("shop.example.com/x", "labels"),
        ] {
            let e = validate_domain(bad).unwrap_err();
            assert!(e.detail().contains(why), "{bad}: {}", e.detail());
        }
    }
}
