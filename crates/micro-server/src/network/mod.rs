//! The network of clusters (docs/network.md): links to other clusters, the routes they
//! advertise, and calls through them.
//!
//! Each cluster has its own network CA (made once, kept sealed in the auth database) and
//! a certificate from it. A cluster joins another with a join token: it dials the other's
//! network listener, checks it against the CA fingerprint in the token, and trades the
//! token for the other's CA certificate while showing its own; from then on both trust
//! each other's CA alone, for that link alone. The joining cluster does all the dialling
//! (two TLS 1.3 connections per link: one it sends calls on, one the other sends calls
//! on), so it needs no open port. Over the link each side sends, as JSON lines, the routes
//! it offers (the services of the namespaces its operator exports, or that it reaches
//! through others, with the path and a metric: the round trips on the way plus the load)
//! and pings that measure the link's round trip; a link that stays silent for
//! [`DEAD_AFTER`] is dropped with its routes.
//!
//! A call the proxy cannot serve locally goes to the route with the best metric; a
//! unary call that a cluster could not deliver (no healthy node) moves on to the next
//! route within the caller's deadline. The caller's identity crosses as an assertion the
//! next cluster checks against the link it came by, and maps to an account of its own
//! (`<id>@<cluster>`, without scopes); the caller's token never leaves its cluster.

mod events;
mod link;
mod service;

pub(crate) use link::serve;
pub(crate) use service::NetworkService;

use micro_core::Status;
use micro_core::registry::{Endpoint, Service};
use micro_core::store::{Query, Record, Store, Table};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, mpsc};

/// How often each side of a link pings the other.
const PING_EVERY: Duration = Duration::from_millis(500);
/// A link silent this long is dead: its routes are withdrawn.
const DEAD_AFTER: Duration = Duration::from_millis(1500);
/// How often local services are looked at (and their nodes probed).
const SCAN_EVERY: Duration = Duration::from_millis(500);
/// The most clusters a call or a route passes through.
pub(crate) const MAX_HOPS: usize = 4;
/// The most connections one peer may hold at once.
const MAX_PEER_CONNS: usize = 16;
/// The most routes one peer may advertise.
const MAX_ROUTES_PER_PEER: usize = 10_000;
/// The most endpoints one advertised service may have.
const MAX_ENDPOINTS: usize = 256;
/// The largest advertised route (its endpoints' schemas, mostly), in bytes.
const MAX_ROUTE_BYTES: usize = 256 << 10;
/// The most bytes of routes kept from one peer.
const MAX_PEER_BYTES: usize = 64 << 20;
/// The most bytes of routes sent in one line (well under the longest line a peer takes).
const BATCH_BYTES: usize = 1 << 20;
/// The largest unary request that is kept to be sent again on another route.
const REPLAY_LIMIT: usize = 4 << 20;

/// Which clusters a call passed through, the sender last (a header on calls over links).
pub(crate) const HDR_PATH: &str = "micro-network-path";
/// Who called, as the sending cluster asserts it (JSON).
pub(crate) const HDR_CALLER: &str = "micro-network-caller";
/// On an answer: the call reached no service, so another route may be tried.
pub(crate) const HDR_UNDELIVERED: &str = "micro-network-undelivered";

/// The name of a cluster: 1–63 of `a-z 0-9 -`, not starting or ending with `-`.
pub(crate) fn validate_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok { Ok(()) } else { Err(format!("{name:?}: give 1-63 of a-z, 0-9 and - (not first or last)")) }
}

fn valid_service(name: &str) -> bool {
    !name.is_empty() && name.len() <= 256 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// A service in a namespace: what a route is for.
type Key = (String, String);

/// A route as it is advertised over a link.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Advert {
    ns: String,
    svc: String,
    /// The clusters on the way, the sender first, the one running the service last.
    path: Vec<String>,
    /// Microseconds: the round trips on the way plus the load.
    metric: u64,
    #[serde(default)]
    versions: Vec<String>,
    #[serde(default)]
    endpoints: Vec<Endpoint>,
}

/// A message on a link.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "lowercase")]
enum Message {
    /// Routes added or changed.
    Add {
        routes: Vec<Advert>,
    },
    /// Routes withdrawn.
    Del {
        keys: Vec<Key>,
    },
    Ping {
        n: u64,
        at: u64,
    },
    Pong {
        n: u64,
        at: u64,
    },
}

/// A peer as it is kept in the auth database.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct PeerRecord {
    name: String,
    /// Its network CA's certificate, PEM.
    ca: String,
    fingerprint: String,
    /// Where this cluster dials it; `None`: it dials this one.
    address: Option<String>,
    added: u64,
}

/// A link's counters.
#[derive(Default)]
struct Stats {
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    calls: AtomicU64,
    errors: AtomicU64,
}

/// A live link.
struct LinkHandle {
    id: u64,
    out: mpsc::Sender<bytes::Bytes>,
    rtt_us: Arc<AtomicU64>,
    /// The last round trips measured; the link's is their least (queueing behind calls
    /// makes a sample longer, never shorter, than the path).
    samples: Mutex<std::collections::VecDeque<u64>>,
    /// When the pings not answered yet left (a pong must answer one of them).
    pings: Mutex<std::collections::VecDeque<u64>>,
    stop: Arc<Notify>,
}

/// How many round trips the link's is the least of (one a ping, every 500 ms).
const RTT_SAMPLES: usize = 10;

struct PeerState {
    record: PeerRecord,
    verifier: Arc<dyn rustls::server::danger::ClientCertVerifier>,
    link: Option<LinkHandle>,
    /// Where calls to the peer are sent.
    send: Option<(u64, hyper::client::conn::http2::SendRequest<tonic::body::Body>)>,
    /// The connections this side holds with the peer, cut when it is removed.
    conns: Vec<(u64, tokio::task::AbortHandle)>,
    learned: HashMap<Key, Advert>,
    /// The size of each learnt route, and their sum.
    learned_bytes: (HashMap<Key, usize>, usize),
    sent: HashMap<Key, Advert>,
    /// Since when the link is up or down, Unix seconds.
    since: u64,
    stats: Arc<Stats>,
    /// The dialler of an outbound peer.
    dialler: Option<tokio::task::AbortHandle>,
    /// What sends the shared topics' events to it, while its link is up.
    forwarders: Vec<tokio::task::AbortHandle>,
}

/// A local service the network offers.
#[derive(Clone, PartialEq)]
struct Local {
    versions: Vec<String>,
    endpoints: Vec<Endpoint>,
}

#[derive(Default)]
struct State {
    peers: BTreeMap<String, PeerState>,
    local: BTreeMap<Key, Local>,
    /// Local services whose every node failed its probe.
    unhealthy: BTreeSet<Key>,
}

/// A route a call may take.
#[derive(Clone)]
struct Candidate {
    via: String,
    metric: u64,
    path: Vec<String>,
    send: hyper::client::conn::http2::SendRequest<tonic::body::Body>,
    stats: Arc<Stats>,
    /// Whether the call's endpoint is unary, as the route says.
    unary: bool,
}

/// On a request the network hands to this cluster's proxy: the call came over a link.
#[derive(Clone)]
pub(crate) struct FromNetwork {
    /// The clusters it passed through, the peer it came from last.
    pub(crate) visited: Vec<String>,
    /// Whether a service of this cluster may answer it (its namespace is exported);
    /// else it can only go on to another cluster.
    pub(crate) local: bool,
    /// The caller as this cluster sees it.
    pub(crate) caller: micro::auth::Caller,
}

/// On an answer: the call reached no service (another route may be tried).
#[derive(Clone, Copy)]
pub(crate) struct Undelivered;

/// This cluster's identity in the network.
struct Identity {
    ca_pem: String,
    fingerprint: String,
    key: Arc<rustls::sign::CertifiedKey>,
}

/// The network. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Network {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    exports: Vec<String>,
    address: Option<String>,
    identity: Identity,
    store: Arc<dyn Store>,
    /// Which node of the cluster dials each outbound peer (one at a time).
    sync: Arc<dyn micro_core::sync::Sync>,
    /// The events, and the topics shared with the peers.
    events: Arc<dyn micro_core::events::Events>,
    shared: Vec<(String, String)>,
    /// The namespaces whose callers at peers are members here.
    trusted: Vec<String>,
    registry: Arc<dyn micro_core::registry::Registry>,
    state: Mutex<State>,
    changed: Notify,
    next_id: AtomicU64,
    /// This cluster's proxy, where calls from links go in, and its address.
    proxy: OnceLock<(micro::Transport, String)>,
    started: Instant,
    /// Calls from links being served.
    inflight: AtomicU64,
    /// Connections of no peer (joins) at once, at most.
    strangers: Arc<tokio::sync::Semaphore>,
    /// Events from peers being published at once, at most.
    event_slots: Arc<tokio::sync::Semaphore>,
    /// Reloads and changes of the peers, one at a time.
    changing: tokio::sync::Mutex<()>,
}

fn table() -> Table {
    Table::new(micro_core::namespace::DEFAULT, "network")
}

fn now() -> u64 {
    micro_core::store::now_ms() / 1000
}

impl Network {
    /// The network of this cluster: its identity (made on first start), its peers (as
    /// remembered), and the tasks that keep the links and the routes.
    pub(crate) async fn open(
        config: &crate::NetworkConfig,
        data_dir: &std::path::Path,
        store: Arc<dyn Store>,
        sealer: &crate::sealed::Sealer,
        sync: &Arc<dyn micro_core::sync::Sync>,
        registry: Arc<dyn micro_core::registry::Registry>,
        events: Arc<dyn micro_core::events::Events>,
    ) -> Result<Network, crate::Error> {
        let name = match &config.name {
            Some(n) => n.clone(),
            None => default_name(data_dir)?,
        };
        // Sealed under the config key: nodes sharing the auth database without sharing
        // MICRO_CONFIG_KEY cannot open each other's. Such a node starts all the same, with
        // a CA of its own for this run, which the cluster's peers do not know.
        let ca = match crate::cluster::sealed_ca(&store, sealer, sync, &table(), "server/network-ca").await {
            Ok(ca) => ca,
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    "the network's CA is sealed under another node's key: this node's links will be refused \
                     until every node has the same MICRO_CONFIG_KEY"
                );
                crate::tls::Ca::new()?
            }
        };
        let identity = link::identity(&ca)?;
        let net = Network {
            inner: Arc::new(Inner {
                name,
                exports: config.export.clone(),
                address: config.address.clone(),
                identity,
                store,
                sync: sync.clone(),
                events,
                shared: config.events.clone(),
                trusted: config.trust.clone(),
                registry,
                state: Mutex::default(),
                changed: Notify::new(),
                next_id: AtomicU64::new(1),
                proxy: OnceLock::new(),
                started: Instant::now(),
                inflight: AtomicU64::new(0),
                strangers: Arc::new(tokio::sync::Semaphore::new(64)),
                event_slots: Arc::new(tokio::sync::Semaphore::new(64)),
                changing: tokio::sync::Mutex::new(()),
            }),
        };
        net.reload().await?;
        Ok(net)
    }

    /// Where calls arriving over links go in: this cluster's proxy.
    pub(crate) fn set_proxy(&self, transport: micro::Transport, proxy_node: String) {
        let _ = self.inner.proxy.set((transport, proxy_node));
    }

    /// This cluster's name.
    pub(crate) fn name(&self) -> &str {
        &self.inner.name
    }

    fn id(&self) -> u64 {
        self.inner.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `node` is the address the network's services resolve to (this proxy's).
    pub(crate) fn is_virtual(&self, node: &str) -> bool {
        self.inner.proxy.get().is_some_and(|(_, p)| p == node)
    }

    /// Reads the peers from the auth database: new ones are added (and dialled, when
    /// this cluster dials them), removed ones cut.
    async fn reload(&self) -> Result<(), Status> {
        let _changing = self.inner.changing.lock().await;
        self.reload_locked().await
    }

    /// [`Network::reload`], with `changing` held.
    async fn reload_locked(&self) -> Result<(), Status> {
        let records =
            match self.inner.store.read(&table(), "peer/", &Query { prefix: true, ..Default::default() }).await {
                Ok(r) => r,
                Err(e) if e.code() == micro_core::Code::NotFound => Vec::new(),
                Err(e) => return Err(e),
            };
        let mut kept = BTreeMap::new();
        for r in records {
            match serde_json::from_slice::<PeerRecord>(&r.value) {
                Ok(p) => {
                    kept.insert(p.name.clone(), p);
                }
                Err(e) => tracing::warn!(key = %r.key, error = %e, "an unreadable network peer record; skipped"),
            }
        }
        let mut dial = Vec::new();
        {
            let mut state = self.lock();
            let gone: Vec<String> = state.peers.keys().filter(|n| !kept.contains_key(*n)).cloned().collect();
            for name in gone {
                if let Some(p) = state.peers.remove(&name) {
                    cut(p);
                    tracing::info!(peer = %name, "network peer removed: its links are cut");
                }
            }
            for (name, record) in kept {
                if let Some(p) = state.peers.get(&name) {
                    if p.record.fingerprint == record.fingerprint {
                        continue;
                    }
                    if let Some(p) = state.peers.remove(&name) {
                        cut(p);
                    }
                }
                let verifier = match link::peer_verifier(&record.ca) {
                    Ok(v) => v,
                    Err(e) => {
                        tracing::warn!(peer = %name, error = %e, "a network peer's CA is unusable; skipped");
                        continue;
                    }
                };
                if record.address.is_some() {
                    dial.push(name.clone());
                }
                state.peers.insert(
                    name,
                    PeerState {
                        record,
                        verifier,
                        link: None,
                        send: None,
                        conns: Vec::new(),
                        learned: HashMap::new(),
                        learned_bytes: Default::default(),
                        sent: HashMap::new(),
                        since: now(),
                        stats: Arc::default(),
                        dialler: None,
                        forwarders: Vec::new(),
                    },
                );
            }
        }
        for name in dial {
            let task = tokio::spawn(link::dial(self.clone(), name.clone()));
            if let Some(p) = self.lock().peers.get_mut(&name) {
                p.dialler = Some(task.abort_handle());
            } else {
                task.abort();
            }
        }
        self.inner.changed.notify_one();
        Ok(())
    }

    /// Keeps the network going until `stop`: the peers reloaded, local services scanned,
    /// routes recomputed and advertised.
    pub(crate) async fn run(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut scan = tokio::time::interval(SCAN_EVERY);
        let mut reload = tokio::time::interval(Duration::from_secs(2));
        let stopped = async move {
            let _ = stop.wait_for(|v| *v).await;
        };
        tokio::pin!(stopped);
        loop {
            tokio::select! {
                _ = &mut stopped => break,
                _ = scan.tick() => self.scan().await,
                _ = reload.tick() => {
                    if let Err(e) = self.reload().await {
                        tracing::warn!(error = %e, "reading the network's peers failed");
                    }
                }
                _ = self.inner.changed.notified() => {}
            }
            self.advertise();
            // Changes that come in bursts go out together.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let peers = std::mem::take(&mut self.lock().peers);
        for (_, p) in peers {
            cut(p);
        }
    }

    /// Looks at the services of the exported namespaces: those with a node that answers
    /// a connection are offered, the others withdrawn.
    async fn scan(&self) {
        let mut local = BTreeMap::new();
        let mut unhealthy = BTreeSet::new();
        for ns in &self.inner.exports {
            let services = match self.inner.registry.list_services(ns).await {
                Ok(s) => s,
                Err(e) if e.code() == micro_core::Code::NotFound => continue,
                Err(e) => {
                    tracing::debug!(namespace = %ns, error = %e, "listing services for the network failed");
                    // Keep offering what was offered: a registry hiccup is no withdrawal.
                    let state = self.lock();
                    for (k, v) in state.local.iter().filter(|(k, _)| &k.0 == ns) {
                        local.insert(k.clone(), v.clone());
                    }
                    continue;
                }
            };
            let mut names: Vec<String> = services.iter().map(|s| s.name.clone()).collect();
            names.sort();
            names.dedup();
            for name in names {
                if !offerable(&name) {
                    continue;
                }
                let mut versions = Vec::new();
                let mut endpoints: Vec<Endpoint> = Vec::new();
                let mut nodes = Vec::new();
                // (The listing has every record whole: no lookup per service.)
                for s in services.iter().filter(|s| s.name == name) {
                    if s.metadata.get("core").is_some_and(|v| v == "true") {
                        continue;
                    }
                    versions.push(s.version.clone());
                    for e in &s.endpoints {
                        if endpoints.len() < MAX_ENDPOINTS && !endpoints.iter().any(|x| x.name == e.name) {
                            endpoints.push(e.clone());
                        }
                    }
                    for n in &s.nodes {
                        if n.metadata.get("protocol").is_none_or(|p| p == "grpc") {
                            nodes.push(n.address.clone());
                        }
                    }
                }
                if nodes.is_empty() {
                    continue;
                }
                versions.sort();
                versions.dedup();
                let key = (ns.clone(), name);
                let size = serde_json::to_vec(&endpoints).map(|v| v.len()).unwrap_or(usize::MAX);
                if size > MAX_ROUTE_BYTES - 4096 {
                    tracing::warn!(ns = %key.0, service = %key.1, size, "a service's endpoints are too large to offer to the network; not offered");
                    continue;
                }
                if alive(&nodes).await {
                    local.insert(key, Local { versions, endpoints });
                } else {
                    unhealthy.insert(key);
                }
            }
        }
        let mut state = self.lock();
        if state.local != local {
            state.local = local;
            self.inner.changed.notify_one();
        }
        state.unhealthy = unhealthy;
    }

    /// The best route of each service for each peer (never one through the peer itself),
    /// sent as the changes since the last.
    fn advertise(&self) {
        let me = self.inner.name.clone();
        let mut state = self.lock();
        let rtts: BTreeMap<String, u64> = state
            .peers
            .iter()
            .filter_map(|(n, p)| p.link.as_ref().map(|l| (n.clone(), l.rtt_us.load(Ordering::Relaxed))))
            .collect();
        // The load: the calls from links in flight here, 0.2 ms each.
        let load = self.inner.inflight.load(Ordering::Relaxed).min(1000) * 200;
        // Every route: where it goes (`None`: here) and how it is advertised.
        let mut all: BTreeMap<Key, Vec<(Option<String>, Advert)>> = BTreeMap::new();
        for (key, l) in &state.local {
            let advert = Advert {
                ns: key.0.clone(),
                svc: key.1.clone(),
                path: vec![me.clone()],
                metric: load,
                versions: l.versions.clone(),
                endpoints: l.endpoints.clone(),
            };
            all.entry(key.clone()).or_default().push((None, advert));
        }
        for (peer, p) in &state.peers {
            let Some(rtt) = rtts.get(peer) else { continue };
            for (key, a) in &p.learned {
                if a.path.len() >= MAX_HOPS || a.path.contains(&me) {
                    continue;
                }
                let mut path = vec![me.clone()];
                path.extend(a.path.iter().cloned());
                let advert = Advert { path, metric: a.metric.saturating_add(*rtt), ..a.clone() };
                all.entry(key.clone()).or_default().push((Some(peer.clone()), advert));
            }
        }
        let names: Vec<String> = state.peers.keys().cloned().collect();
        for peer in names {
            let Some(p) = state.peers.get_mut(&peer) else { continue };
            let Some(link) = &p.link else { continue };
            let mut want: HashMap<Key, Advert> = HashMap::new();
            for (key, routes) in &all {
                let best = routes
                    .iter()
                    .filter(|(via, a)| via.as_deref() != Some(peer.as_str()) && !a.path.contains(&peer))
                    .min_by_key(|(_, a)| a.metric);
                if let Some((_, a)) = best {
                    want.insert(key.clone(), a.clone());
                }
            }
            let mut add = Vec::new();
            for (key, a) in &want {
                match p.sent.get(key) {
                    Some(old) if !differs(old, a) => {}
                    _ => add.push(a.clone()),
                }
            }
            let del: Vec<Key> = p.sent.keys().filter(|k| !want.contains_key(*k)).cloned().collect();
            let mut ok = true;
            // Lines of at most about 1 MiB (a route is at most MAX_ROUTE_BYTES).
            let mut batch: Vec<Advert> = Vec::new();
            let mut bytes = 0;
            for a in &add {
                let size = serde_json::to_vec(a).map(|v| v.len()).unwrap_or(MAX_ROUTE_BYTES);
                if !batch.is_empty() && bytes + size > BATCH_BYTES {
                    ok &= send(&link.out, &Message::Add { routes: std::mem::take(&mut batch) });
                    bytes = 0;
                }
                bytes += size;
                batch.push(a.clone());
            }
            if !batch.is_empty() {
                ok &= send(&link.out, &Message::Add { routes: batch });
            }
            if !del.is_empty() {
                ok &= send(&link.out, &Message::Del { keys: del.clone() });
            }
            if ok {
                for a in add {
                    p.sent.insert((a.ns.clone(), a.svc.clone()), a);
                }
                for k in del {
                    p.sent.remove(&k);
                }
            } else {
                // The link's queue is full: start over once it drains.
                p.sent.clear();
                self.inner.changed.notify_one();
            }
        }
    }

    /// The routes to `service` in `ns` that a call of `endpoint` may take, best first
    /// (none through the clusters it already passed).
    fn candidates(&self, ns: &str, service: &str, visited: &[String], endpoint: Option<&str>) -> Vec<Candidate> {
        let key = (ns.to_string(), service.to_string());
        let state = self.lock();
        let mut out: Vec<Candidate> = state
            .peers
            .iter()
            .filter(|(name, _)| !visited.contains(name))
            .filter_map(|(name, p)| {
                let link = p.link.as_ref()?;
                let (_, send) = p.send.as_ref()?;
                let a = p.learned.get(&key)?;
                if a.path.iter().any(|c| visited.contains(c) || *c == self.inner.name) {
                    return None;
                }
                Some(Candidate {
                    via: name.clone(),
                    metric: a.metric.saturating_add(link.rtt_us.load(Ordering::Relaxed)),
                    path: a.path.clone(),
                    send: send.clone(),
                    stats: p.stats.clone(),
                    unary: endpoint.is_some_and(|ep| a.endpoints.iter().any(|e| e.name == ep && e.stream().is_none())),
                })
            })
            .collect();
        out.sort_by_key(|c| c.metric);
        out
    }

    /// Whether the network has a route to `service` in `ns`.
    pub(crate) fn reaches(&self, ns: &str, service: &str) -> bool {
        let key = (ns.to_string(), service.to_string());
        self.lock().peers.values().any(|p| p.link.is_some() && p.send.is_some() && p.learned.contains_key(&key))
    }

    /// Whether every node of this local service failed its last probe.
    pub(crate) fn unhealthy(&self, ns: &str, service: &str) -> bool {
        self.lock().unhealthy.contains(&(ns.to_string(), service.to_string()))
    }

    /// The registration of a service this cluster reaches through the network (none
    /// when it has no route): its endpoints, and one node, this proxy, which routes it.
    pub(crate) fn imported(&self, ns: &str, service: &str) -> Option<Vec<Service>> {
        let (_, proxy_node) = self.inner.proxy.get()?;
        let c = self.candidates(ns, service, &[], None).into_iter().next()?;
        let (versions, endpoints) = {
            let key = (ns.to_string(), service.to_string());
            let state = self.lock();
            let a = state.peers.get(&c.via).and_then(|p| p.learned.get(&key))?;
            (a.versions.clone(), a.endpoints.clone())
        };
        let node = micro_core::registry::Node {
            id: format!("network-{}", c.via),
            address: proxy_node.clone(),
            metadata: [("protocol".to_string(), "grpc".to_string()), ("network".to_string(), c.via.clone())].into(),
        };
        Some(vec![Service {
            name: service.to_string(),
            version: versions.last().cloned().unwrap_or_default(),
            metadata: [("network".to_string(), c.path.last().cloned().unwrap_or_default())].into(),
            endpoints,
            nodes: vec![node],
        }])
    }

    /// A link is up: it replaces any other with the peer, and the peer is sent every route.
    fn link_up(
        &self,
        peer: &str,
        out: mpsc::Sender<bytes::Bytes>,
        rtt_us: Arc<AtomicU64>,
    ) -> Option<(u64, Arc<Notify>)> {
        let id = self.id();
        let stop = Arc::new(Notify::new());
        let mut state = self.lock();
        let p = state.peers.get_mut(peer)?;
        if let Some(old) = p.link.take() {
            old.stop.notify_one();
        }
        p.link = Some(LinkHandle {
            id,
            out,
            rtt_us,
            samples: Mutex::default(),
            pings: Mutex::default(),
            stop: stop.clone(),
        });
        for f in p.forwarders.drain(..) {
            f.abort();
        }
        p.forwarders = events::start(self, peer);
        p.sent.clear();
        p.learned.clear();
        p.learned_bytes = Default::default();
        p.since = now();
        tracing::info!(peer, "network link up");
        self.inner.changed.notify_one();
        Some((id, stop))
    }

    /// The link `id` is down: the peer's routes go (unless another link replaced it).
    fn link_down(&self, peer: &str, id: u64) {
        let mut state = self.lock();
        let Some(p) = state.peers.get_mut(peer) else { return };
        if p.link.as_ref().is_none_or(|l| l.id != id) {
            return;
        }
        p.link = None;
        p.learned.clear();
        p.learned_bytes = Default::default();
        p.sent.clear();
        p.since = now();
        // Its connections go too: calls in flight on them end now, with an error,
        // rather than wait on a path that is gone (the dialling side dials again).
        p.send = None;
        for (_, c) in p.conns.drain(..) {
            c.abort();
        }
        for f in p.forwarders.drain(..) {
            f.abort();
        }
        tracing::info!(peer, "network link down: its routes are withdrawn");
        self.inner.changed.notify_one();
    }

    /// A message from `peer` on its link.
    fn receive(&self, peer: &str, msg: Message) -> Result<Option<Message>, String> {
        match msg {
            Message::Ping { n, at } => Ok(Some(Message::Pong { n, at })),
            Message::Pong { at, .. } => {
                let now = self.clock();
                let rtt = now.saturating_sub(at).max(1);
                let state = self.lock();
                if let Some(l) = state.peers.get(peer).and_then(|p| p.link.as_ref()) {
                    // Only this side's own pings come back: a made-up pong measures nothing.
                    let mut pings = l.pings.lock().unwrap_or_else(|e| e.into_inner());
                    let Some(i) = pings.iter().position(|p| *p == at) else { return Ok(None) };
                    pings.drain(..=i);
                    drop(pings);
                    let mut samples = l.samples.lock().unwrap_or_else(|e| e.into_inner());
                    if samples.len() == RTT_SAMPLES {
                        samples.pop_front();
                    }
                    samples.push_back(rtt);
                    l.rtt_us.store(samples.iter().copied().min().unwrap_or(rtt), Ordering::Relaxed);
                }
                Ok(None)
            }
            Message::Add { routes } => {
                let mut state = self.lock();
                let Some(p) = state.peers.get_mut(peer) else { return Err("not a peer".into()) };
                let mut ignored = 0usize;
                for a in routes {
                    // The sender is authenticated: it can only speak for the first hop.
                    let valid = a.path.first().map(String::as_str) == Some(peer)
                        && a.path.len() <= MAX_HOPS
                        && a.path.iter().all(|c| validate_name(c).is_ok())
                        && micro_core::namespace::validate(&a.ns).is_ok()
                        && valid_service(&a.svc)
                        && offerable(&a.svc)
                        && a.endpoints.len() <= MAX_ENDPOINTS
                        && a.versions.len() <= 64;
                    if !valid {
                        return Err(format!("an invalid route for {}/{}", a.ns, a.svc));
                    }
                    let key = (a.ns.clone(), a.svc.clone());
                    if !p.learned.contains_key(&key) && p.learned.len() >= MAX_ROUTES_PER_PEER {
                        ignored += 1;
                        continue;
                    }
                    let size = serde_json::to_vec(&a).map(|v| v.len()).unwrap_or(usize::MAX);
                    let (sizes, total) = &mut p.learned_bytes;
                    let before = sizes.get(&key).copied().unwrap_or(0);
                    if size > MAX_ROUTE_BYTES || *total - before + size > MAX_PEER_BYTES {
                        ignored += 1;
                        continue;
                    }
                    *total = *total - before + size;
                    sizes.insert(key.clone(), size);
                    p.learned.insert(key, a);
                }
                if ignored > 0 {
                    tracing::warn!(
                        peer,
                        ignored,
                        "a network peer advertises more than {MAX_ROUTES_PER_PEER} routes or {MAX_PEER_BYTES} bytes of them (or a route over {MAX_ROUTE_BYTES}); the rest are ignored"
                    );
                }
                self.inner.changed.notify_one();
                Ok(None)
            }
            Message::Del { keys } => {
                let mut state = self.lock();
                let Some(p) = state.peers.get_mut(peer) else { return Err("not a peer".into()) };
                for k in keys {
                    p.learned.remove(&k);
                    let (sizes, total) = &mut p.learned_bytes;
                    *total -= sizes.remove(&k).unwrap_or(0);
                }
                self.inner.changed.notify_one();
                Ok(None)
            }
        }
    }

    /// A ping left for `peer` at `at` (kept until answered; the last few).
    fn pinged(&self, peer: &str, at: u64) {
        let state = self.lock();
        if let Some(l) = state.peers.get(peer).and_then(|p| p.link.as_ref()) {
            let mut pings = l.pings.lock().unwrap_or_else(|e| e.into_inner());
            if pings.len() == RTT_SAMPLES {
                pings.pop_front();
            }
            pings.push_back(at);
        }
    }

    /// Microseconds since this network started (what pings carry).
    fn clock(&self) -> u64 {
        self.inner.started.elapsed().as_micros() as u64
    }

    /// Which peer a client certificate belongs to: the one whose CA issued it.
    fn identify(&self, certs: Option<&[rustls::pki_types::CertificateDer<'static>]>) -> Option<String> {
        let leaf = certs?.first()?;
        let now = rustls::pki_types::UnixTime::now();
        let state = self.lock();
        state.peers.iter().find(|(_, p)| p.verifier.verify_client_cert(leaf, &[], now).is_ok()).map(|(n, _)| n.clone())
    }

    /// Keeps `task`, a connection with `peer`, to cut when the peer is removed.
    fn hold(&self, peer: &str, id: u64, task: tokio::task::AbortHandle) {
        let mut state = self.lock();
        match state.peers.get_mut(peer) {
            Some(p) => {
                p.conns.retain(|(_, t)| !t.is_finished());
                // A peer needs two; a few more while it reconnects.
                if p.conns.len() >= MAX_PEER_CONNS {
                    tracing::info!(peer, "too many connections of a network peer; the new one is cut");
                    task.abort();
                    return;
                }
                p.conns.push((id, task));
            }
            None => task.abort(),
        }
    }

    /// Calls to `peer` go on `send` (the connection `id`).
    fn set_send(&self, peer: &str, id: u64, send: hyper::client::conn::http2::SendRequest<tonic::body::Body>) {
        let mut state = self.lock();
        if let Some(p) = state.peers.get_mut(peer) {
            p.send = Some((id, send));
        }
    }

    /// The connection `id` to `peer` is closed: calls no longer go on it.
    fn drop_send(&self, peer: &str, id: u64) {
        let mut state = self.lock();
        if let Some(p) = state.peers.get_mut(peer)
            && p.send.as_ref().is_some_and(|(i, _)| *i == id)
        {
            p.send = None;
        }
    }

    /// Adds a peer (after a join, either side) and keeps it in the auth database.
    async fn add_peer(&self, record: PeerRecord) -> Result<(), Status> {
        let _changing = self.inner.changing.lock().await;
        let value = serde_json::to_vec(&record).map_err(|e| Status::internal("network", e.to_string()))?;
        self.inner.store.write(&table(), &Record::new(format!("peer/{}", record.name), value), None).await?;
        self.reload_locked().await
    }

    /// Removes a peer: forgotten, its links cut.
    async fn remove_peer(&self, name: &str) -> Result<(), Status> {
        let _changing = self.inner.changing.lock().await;
        match self.inner.store.delete(&table(), &format!("peer/{name}")).await {
            Ok(()) => {}
            Err(e) if e.code() == micro_core::Code::NotFound => {
                return Err(Status::not_found("network", format!("no peer named {name}")));
            }
            Err(e) => return Err(e),
        }
        if let Some(p) = self.lock().peers.remove(name) {
            cut(p);
        }
        self.inner.changed.notify_one();
        tracing::info!(peer = name, "network peer removed: its links are cut");
        Ok(())
    }

    fn has_peer(&self, name: &str, fingerprint: &str) -> bool {
        self.lock().peers.values().any(|p| p.record.name == name || p.record.fingerprint == fingerprint)
    }

    /// Registers the network's gauges on `metrics`.
    pub(crate) fn gauges(&self, metrics: &micro::metrics::Metrics) {
        let up = metrics.gauges("micro_network_link_up", "Whether the link to a peer cluster is up");
        let rtt = metrics.gauges("micro_network_link_rtt_seconds", "The measured round trip of a link");
        let bytes = metrics.gauges("micro_network_link_bytes", "Bytes of calls over a link, by direction");
        let calls = metrics.gauges("micro_network_link_calls", "Calls sent over a link");
        let errors = metrics.gauges("micro_network_link_errors", "Calls over a link that failed on it");
        let routes = metrics.gauges("micro_network_routes", "Routes learnt from a peer");
        let net = self.clone();
        metrics.on_scrape(move || {
            let state = net.lock();
            for (name, p) in &state.peers {
                let l = vec![("peer".to_string(), name.clone())];
                up.get_or_create(&l).set(if p.link.is_some() { 1.0 } else { 0.0 });
                let us = p.link.as_ref().map(|l| l.rtt_us.load(Ordering::Relaxed)).unwrap_or(0);
                rtt.get_or_create(&l).set(us as f64 / 1e6);
                calls.get_or_create(&l).set(p.stats.calls.load(Ordering::Relaxed) as f64);
                errors.get_or_create(&l).set(p.stats.errors.load(Ordering::Relaxed) as f64);
                routes.get_or_create(&l).set(p.learned.len() as f64);
                for (dir, v) in [("in", &p.stats.bytes_in), ("out", &p.stats.bytes_out)] {
                    let l = vec![("peer".to_string(), name.clone()), ("direction".to_string(), dir.to_string())];
                    bytes.get_or_create(&l).set(v.load(Ordering::Relaxed) as f64);
                }
            }
        });
    }
}

/// Whether a service may be offered to (or taken from) other clusters: never the core's
/// or the products'.
fn offerable(name: &str) -> bool {
    !crate::CORE_SERVICES.contains(&name) && !crate::products::NAMES.contains(&name) && !name.starts_with("grpc.")
}

/// Whether a route changed enough to be sent again: another path or endpoints, or a
/// metric off by more than a fifth (and a millisecond), so jitter is no news.
fn differs(old: &Advert, new: &Advert) -> bool {
    if old.path != new.path || old.versions != new.versions || old.endpoints != new.endpoints {
        return true;
    }
    let (a, b) = (old.metric, new.metric);
    let d = a.abs_diff(b);
    d > 1000 && d * 5 > a.max(b)
}

/// Queues `msg` on a link; false when its queue is full or it is gone.
fn send(out: &mpsc::Sender<bytes::Bytes>, msg: &Message) -> bool {
    let Ok(mut line) = serde_json::to_vec(msg) else { return false };
    line.push(b'\n');
    out.try_send(bytes::Bytes::from(line)).is_ok()
}

/// Cuts everything of a removed peer.
fn cut(p: PeerState) {
    if let Some(l) = p.link {
        l.stop.notify_one();
    }
    if let Some(d) = p.dialler {
        d.abort();
    }
    for f in p.forwarders {
        f.abort();
    }
    for (_, c) in p.conns {
        c.abort();
    }
}

/// Whether one of `nodes` accepts a connection.
async fn alive(nodes: &[String]) -> bool {
    let probes = nodes.iter().take(16).map(|n| async move {
        matches!(
            tokio::time::timeout(Duration::from_millis(300), tokio::net::TcpStream::connect(n.as_str())).await,
            Ok(Ok(_))
        )
    });
    futures::future::join_all(probes).await.into_iter().any(|ok| ok)
}

/// The cluster's name when none is configured: made once (`cluster-<random>`) and kept
/// in the data dir.
fn default_name(dir: &std::path::Path) -> Result<String, crate::Error> {
    let path = dir.join("network-name");
    match std::fs::read_to_string(&path) {
        Ok(n) if validate_name(n.trim()).is_ok() => Ok(n.trim().to_string()),
        Ok(_) => Err(crate::Error::Config(format!("{}: not a cluster name; remove it", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let name = format!("cluster-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
            crate::tls::write(&path, &name)?;
            Ok(name)
        }
        Err(source) => Err(crate::Error::DataDir { path: path.display().to_string(), source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "region-a", "eu-west-1", &"x".repeat(63)] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a.b", "a b", "a,b", &"x".repeat(64)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn jitter_is_no_news() {
        let a = Advert {
            ns: "n".into(),
            svc: "s".into(),
            path: vec!["a".into()],
            metric: 4000,
            versions: vec![],
            endpoints: vec![],
        };
        let b = Advert { metric: 4400, ..a.clone() };
        assert!(!differs(&a, &b));
        let c = Advert { metric: 40_000, ..a.clone() };
        assert!(differs(&a, &c));
        let d = Advert { path: vec!["a".into(), "b".into()], ..a.clone() };
        assert!(differs(&a, &d));
    }

    #[test]
    fn core_services_are_never_offered() {
        for s in ["store", "auth", "runtime", "registry", "db", "users", "grpc.health.v1"] {
            assert!(!offerable(s), "{s}");
        }
        assert!(offerable("helloworld"));
    }
}
