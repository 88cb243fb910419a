//! Starting and stopping the whole server.

use crate::config::normalize_address;
use crate::data;
use crate::gateway::Gateway;
use crate::proxy::Proxy;
use crate::reflection::Reflection;
use crate::registry::RegistryService;
use crate::{Config, Error};
use http::Request;
use hyper::body::Incoming;
use micro::layer::TraceLayer;
use micro::proto as pb;
use micro::registry::{MemoryRegistry, Node, Registry, Service};
use micro::{Client, RouterBuilder};
use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::body::Body;
use tower::{Layer, ServiceExt};

/// The core services registered by the server, all served through the proxy.
pub const CORE_SERVICES: [&str; 15] = [
    "api", "auth", "broker", "cluster", "config", "domains", "events", "proxy", "registry", "runtime", "store", "sync",
    "usage", "license", "network",
];

/// A running server.
pub struct Running {
    api: SocketAddr,
    proxy: SocketAddr,
    web: Option<SocketAddr>,
    network: Option<SocketAddr>,
    registry: Arc<dyn Registry>,
    runtime: crate::runtime::Runtime,
    products: Vec<micro::Running>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    tls: bool,
    ca: Option<std::path::PathBuf>,
}

async fn bind(address: &str) -> Result<TcpListener, Error> {
    let address = normalize_address(address);
    TcpListener::bind(&address).await.map_err(|source| Error::Bind { address, source })
}

/// Starts the server: binds its listeners, registers the core services and serves
/// until [`Running::stop`].
pub async fn start(mut config: Config) -> Result<Running, Error> {
    // As many connections (live subscribers among them) as the system allows.
    micro::server::raise_descriptor_limit();
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|source| Error::DataDir { path: config.data_dir.display().to_string(), source })?;
    // The data dir is private to its owner, new or not: it holds hashes, keys and
    // everyone's data, so nobody else may even look inside, whatever its files' modes
    // (`micro server` also creates them 0600 and its dirs 0700: see its umask).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&config.data_dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|source| Error::DataDir { path: config.data_dir.display().to_string(), source })?;
    }
    // A node that joined a cluster (or joins now, with a token) has the cluster's
    // backends and config key in its data dir; the environment's win.
    if config.join.is_some() && config.tls == crate::TlsMode::Off {
        return Err(Error::Config("joining a cluster needs TLS on (MICRO_TLS=auto or cert.pem,key.pem)".into()));
    }
    let joined = match (crate::cluster::joined(&config.data_dir)?, &config.join) {
        (Some(env), _) => Some(env),
        (None, Some(j)) => Some(crate::cluster::join(&config.data_dir, &j.address, &j.token.0).await?),
        (None, None) => None,
    };
    if let Some(env) = joined {
        if config.backends == crate::Backends::default() {
            config.backends = crate::Backends::from_map(&env)?;
        } else {
            tracing::info!(
                file = crate::cluster::JOINED_FILE,
                "the environment's backends win over the joined cluster's"
            );
        }
    }
    let api_listener = bind(&config.api_address).await?;
    let proxy_listener = bind(&config.proxy_address).await?;
    let api =
        api_listener.local_addr().map_err(|source| Error::Bind { address: config.api_address.clone(), source })?;
    let proxy =
        proxy_listener.local_addr().map_err(|source| Error::Bind { address: config.proxy_address.clone(), source })?;
    let web_listener = match &config.web_address {
        Some(a) => Some(bind(a).await?),
        None => None,
    };
    let listen_hosts: Vec<String> =
        [Some(&config.api_address), Some(&config.proxy_address), config.web_address.as_ref()]
            .into_iter()
            .flatten()
            .filter_map(|a| a.rsplit_once(':').map(|(h, _)| h.trim_matches(['[', ']']).to_string()))
            .chain([config.runtime.host.clone()])
            .collect();
    let web = match &web_listener {
        Some(l) => Some(
            l.local_addr()
                .map_err(|source| Error::Bind { address: config.web_address.clone().unwrap_or_default(), source })?,
        ),
        None => None,
    };

    // The data plane: embedded, durable backends in the data directory by default; the
    // parts named in `config.backends` live in PostgreSQL (one pool per node and URL),
    // NATS JetStream or Redis instead, shared with the other nodes. The runtime's desired
    // state stays with the node that runs the services (and holds their builds).
    let dir = micro_embedded::DataDir::new(&config.data_dir);
    let shared = crate::backends::Shared::connect(&config.backends).await?;
    let registry = shared.registry().await?.unwrap_or_else(|| Arc::new(MemoryRegistry::new()));
    type StoreArc = Arc<dyn micro_core::store::Store>;
    let store = match shared.store().await? {
        Some(s) => s,
        None => Arc::new(micro_embedded::store::EmbeddedStore::open(&dir)?),
    };
    let auth_store: StoreArc = match shared.named_store("auth").await? {
        Some(s) => s,
        None => Arc::new(micro_embedded::store::EmbeddedStore::open_named(&dir, "auth")?),
    };
    let blob: Arc<dyn micro_core::blob::Blob> = match shared.blob(config.blob_max_size).await? {
        Some(b) => b,
        None => Arc::new(micro_embedded::blob::EmbeddedBlob::open(&dir)?.max_size(config.blob_max_size)),
    };
    let sync: Arc<dyn micro_core::sync::Sync> = match shared.sync().await? {
        Some(s) => s,
        None => Arc::new(micro_embedded::sync::EmbeddedSync::open(&dir)?),
    };
    // With a shared database, the runtime's records and uploads are shared, and one
    // elected node runs the services.
    let (runtime_db, cluster): (StoreArc, _) = match shared.named_store("runtime").await? {
        Some(db) => {
            let uploads =
                shared.blob(config.runtime.upload_max).await?.ok_or_else(|| Error::Config("no shared blobs".into()))?;
            (db, Some(crate::runtime::Cluster { sync: sync.clone(), uploads }))
        }
        None => (Arc::new(micro_embedded::store::EmbeddedStore::open_named(&dir, "runtime")?), None),
    };
    let clustered = cluster.is_some();
    let events: Arc<dyn micro_core::events::Events> =
        match shared.events(config.events_max_age, config.events_max_events).await? {
            Some(e) => e,
            None => Arc::new(
                micro_embedded::events::EmbeddedEvents::open(&dir)?
                    .retention(config.events_max_age, config.events_max_events),
            ),
        };
    let broker: Arc<dyn micro_core::broker::Broker> = match shared.broker().await? {
        Some(b) => b,
        None => Arc::new(micro_embedded::broker::EmbeddedBroker::new()),
    };
    let config_backend: Arc<dyn micro_core::config::Config> = match shared.config().await? {
        Some(c) => c,
        None => Arc::new(micro_embedded::config::EmbeddedConfig::open(&dir)?),
    };

    // Auth: its own database, signing keys under the data dir, and the first admin.
    // What is sealed outside the config is sealed under the config's server key.
    let server_key = match config.backends.config_key {
        Some(key) => key,
        None => micro_embedded::config::server_key(&dir)?,
    };
    // TLS. In a cluster, every node's certificate comes from the cluster's CA, kept in
    // the shared auth database sealed under the config key.
    let cluster_ca = match (&config.tls, &cluster, config.backends.config_key) {
        (crate::TlsMode::Off, _, _) | (_, None, _) => None,
        (_, Some(_), None) => {
            return Err(Error::Config(
                "a cluster with TLS needs MICRO_CONFIG_KEY (the same on every node): its CA is sealed under it".into(),
            ));
        }
        (_, Some(_), Some(_)) => {
            let sealer = crate::sealed::Sealer::new(&server_key, auth_store.clone(), "cluster-key", "cluster-ca");
            let local = crate::tls::local_ca(&config.data_dir)?;
            Some(crate::cluster::ca(&auth_store, &sealer, &sync, local).await?)
        }
    };
    let tls = crate::tls::setup(&config.tls, &config.data_dir, &listen_hosts, cluster_ca.as_ref())?;
    let redirect_listener = match (&config.redirect_address, &tls) {
        (Some(a), Some(_)) => Some(bind(a).await?),
        (Some(_), None) => return Err(Error::Config("a redirect to HTTPS needs TLS on (MICRO_TLS)".into())),
        (None, _) => None,
    };
    let ca_pem = match tls.as_ref().and_then(|t| t.ca.as_ref()) {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|source| Error::DataDir { path: path.display().to_string(), source })?,
        ),
        None => None,
    };
    let node_tls = tls.as_ref().and_then(|t| t.node.as_ref());
    let ca_fingerprint = node_tls.map(|n| crate::cluster::fingerprint(&n.ca));
    let node_transport = match node_tls {
        Some(n) => Some(crate::cluster::node_transport(n)?),
        None => None,
    };
    let cluster_service =
        crate::cluster::ClusterService { store: auth_store.clone(), ca_fingerprint, backends: config.backends.clone() };
    // The network of clusters: its identity and peers are kept in the auth database.
    let network_listener = match &config.network.address {
        Some(a) => Some(bind(a).await?),
        None => None,
    };
    let network_address =
        match &network_listener {
            Some(l) => Some(l.local_addr().map_err(|source| Error::Bind {
                address: config.network.address.clone().unwrap_or_default(),
                source,
            })?),
            None => None,
        };
    let network = crate::network::Network::open(
        &crate::NetworkConfig { address: network_address.map(|a| a.to_string()), ..config.network.clone() },
        &config.data_dir,
        auth_store.clone(),
        &crate::sealed::Sealer::new(&server_key, auth_store.clone(), "network-key", "network-ca"),
        &sync,
        registry.clone(),
        events.clone(),
    )
    .await?;
    let auth = crate::auth::AuthService::open(auth_store, &config.data_dir, &server_key)?;
    auth.bootstrap(&config.data_dir, config.admin_password.clone().map(|s| s.0)).await?;
    auth.share_keys().await?;
    auth.keep_sharing_keys();

    // The runtime: what it runs is kept in its own database, and brought back now.
    // How this node's proxy is reached by its services and the other nodes.
    let proxy_node = if config.runtime.host != "127.0.0.1" {
        format!("{}:{}", config.runtime.host, proxy.port())
    } else if proxy.ip().is_unspecified() {
        format!("127.0.0.1:{}", proxy.port())
    } else {
        proxy.to_string()
    };
    // Where on this host tenants' nodes may be (MICRO_NODE_LOCAL).
    let local_nodes = crate::targets::LocalNodes::new(config.node_local);
    let wiring = crate::runtime::Wiring {
        server: proxy_node.clone(),
        listeners: vec![proxy, api],
        local_nodes: local_nodes.clone(),
        tls: tls.is_some(),
        ca: ca_pem,
        registry: registry.clone(),
        auth: auth.clone(),
        env_sealer: crate::sealed::Sealer::new(&server_key, runtime_db.clone(), "env-key", "runtime-env"),
        db: runtime_db.clone(),
        secrets: config_backend.clone(),
        cluster,
    };
    let runtime = crate::runtime::Runtime::open(&config.data_dir, config.runtime.clone(), wiring).await?;
    let shared_db = if clustered { config.backends.database.as_ref().map(|s| s.0.clone()) } else { None };
    let mut hosted = crate::products::Hosted::open(&config, shared_db.as_deref()).await.map_err(Error::Config)?;
    // The licence, verified offline: the products check their paid features with its gate.
    let licensing = crate::licence::Licensing::load(&config);
    hosted.licence = licensing.gate();
    if config.services.iter().any(|s| s == micro_files::NAME) {
        let files = micro_files::Files::new(store.clone(), blob.clone());
        // Files attach to the database's records, and go with them.
        let files = match &hosted.db {
            Some(db) => files.with_db(db.clone()),
            None => files,
        };
        hosted.files = Some(Arc::new(files));
    }
    if config.services.iter().any(|s| s == micro_apps::NAME) {
        hosted.apps = Some(Arc::new(micro_apps::Apps::new(store.clone(), blob.clone())));
    }
    if config.services.iter().any(|s| s == micro_subscribe::NAME) {
        // Its mails link to the gateway: its public address, else its listener's.
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = config.api_url.clone().unwrap_or_else(|| format!("{scheme}://{api}"));
        hosted.subscribe = Some(Arc::new(micro_subscribe::Subscribe::new(store.clone(), url)));
    }
    if config.services.iter().any(|s| s == micro_push::NAME) {
        let contact =
            config.push_contact.clone().or_else(|| config.api_url.clone().filter(|u| u.starts_with("https://")));
        hosted.push =
            Some(Arc::new(micro_push::Push::new(store.clone(), broker.clone(), config.push_private, contact)));
    }
    if config.services.iter().any(|s| s == micro_billing::NAME) {
        let provider: Arc<dyn micro_billing::provider::PaymentProvider> = match &config.stripe {
            Some(stripe) => {
                Arc::new(micro_billing::stripe::Stripe::new(stripe.clone()).map_err(|e| Error::Config(e.to_string()))?)
            }
            None => Arc::new(micro_billing::provider::Manual),
        };
        hosted.billing = Some(Arc::new(micro_billing::Billing::new(
            store.clone(),
            runtime_db,
            sync.clone(),
            provider,
            hosted.licence.clone(),
        )));
    }
    // Deleting a namespace deletes its data in each of these.
    auth.hold_namespace_data(crate::namespace_data::NamespaceData {
        store: store.clone(),
        config: config_backend.clone(),
        blob: blob.clone(),
        events: events.clone(),
        registry: registry.clone(),
        runtime: runtime.clone(),
        hosted: hosted.clone(),
    });

    // Nodes may point neither at this server's listeners nor into the denied networks.
    let deny = crate::targets::parse_list(&config.node_deny).map_err(Error::Config)?;
    let targets = crate::targets::Targets::new([Some(api), Some(proxy), web].into_iter().flatten().collect(), deny)
        .naming(vec![proxy_node.clone()])
        .local(local_nodes.clone());

    // The meter: its own store (shared in a cluster), out of the tenants' reach.
    let (meter, flusher) = match config.usage_flush {
        Some(interval) => {
            let usage_store: StoreArc = match shared.named_store("usage").await? {
                Some(s) => s,
                None => Arc::new(micro_embedded::store::EmbeddedStore::open_named(&dir, "usage")?),
            };
            let (meter, flusher) = crate::usage::Meter::open(&config.data_dir, usage_store, interval)?;
            (meter, Some(flusher))
        }
        None => (crate::usage::Meter::off(), None),
    };

    // Custom domains: the claims in their own store (shared in a cluster), verified
    // through the system's resolver or MICRO_DNS.
    let domains_store: StoreArc = match shared.named_store("domains").await? {
        Some(s) => s,
        None => Arc::new(micro_embedded::store::EmbeddedStore::open_named(&dir, "domains")?),
    };
    let resolver = Arc::new(crate::domains::DnsResolver::new(config.dns.as_deref())?);
    let hosting_domain = config.hosting_domain.clone().map(|domain| {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let port = Some(api.port()).filter(|p| *p != if tls.is_some() { 443 } else { 80 });
        crate::domains::HostingDomain { domain, scheme, port }
    });
    let domains = crate::domains::Domains::new(domains_store.clone(), resolver, hosting_domain);
    // ACME: certificates for the verified domains, served by SNI.
    let domain_certs = crate::acme::DomainCerts::default();
    let challenge_certs = crate::acme::DomainCerts::default();
    let acme = match &config.acme {
        Some(_) if tls.is_none() => {
            return Err(Error::Config(
                "ACME (MICRO_ACME_DIRECTORY) serves certificates over TLS: turn TLS on (MICRO_TLS)".into(),
            ));
        }
        Some(a) if a.challenge == crate::AcmeChallenge::Http01 && redirect_listener.is_none() => {
            return Err(Error::Config(
                "ACME's HTTP-01 challenges need a plain HTTP listener: set MICRO_HTTP_REDIRECT_ADDRESS (like :80)"
                    .into(),
            ));
        }
        Some(a) => Some(crate::acme::Acme::new(
            a.clone(),
            domains_store,
            domains.clone(),
            domain_certs.clone(),
            challenge_certs.clone(),
            sync.clone(),
        )),
        None => None,
    };

    let metrics = micro::metrics::Metrics::default();
    let core_grpc = [
        "registry.Registry",
        "store.Store",
        "store.Blob",
        "events.Events",
        "broker.Broker",
        "config.Config",
        "sync.Sync",
        "auth.Auth",
        "runtime.Runtime",
        "usage.Usage",
        "domains.Domains",
        "cluster.Cluster",
        "license.License",
        "network.Network",
    ]
    .map(String::from);
    let storage = crate::storage::StorageQuota::new(config_backend.clone(), store.clone(), blob.clone());
    let storage_for_usage = storage.clone();
    let mut core = RouterBuilder::new("micro")
        .metrics(metrics.clone())
        .descriptors(micro::proto::DESCRIPTOR)?
        .grpc_service(micro::proto::registry::registry_server::RegistryServer::new(RegistryService {
            registry: registry.clone(),
            targets: targets.clone(),
        }))
        .grpc_service(pb::store::store_server::StoreServer::new(data::StoreService { store, storage: storage.clone() }))
        .grpc_service(pb::store::blob_server::BlobServer::new(data::BlobService { blob, storage }))
        .grpc_service(pb::events::events_server::EventsServer::new(data::EventsService { events }))
        .grpc_service(pb::broker::broker_server::BrokerServer::new(data::BrokerService { broker }))
        .grpc_service(pb::config::config_server::ConfigServer::new(data::ConfigService {
            config: config_backend.clone(),
        }))
        .grpc_service(pb::sync::sync_server::SyncServer::new(data::SyncService { sync }))
        .grpc_service(pb::auth::auth_server::AuthServer::new(auth.clone()))
        .grpc_service(pb::runtime::runtime_server::RuntimeServer::new(runtime.clone()))
        .grpc_service(pb::usage::usage_server::UsageServer::new(crate::usage::UsageService {
            meter: meter.clone(),
            storage: storage_for_usage,
            runtime: runtime.clone(),
        }))
        .grpc_service(pb::domains::domains_server::DomainsServer::new(crate::domains::DomainsService {
            domains: domains.clone(),
            acme: acme.clone(),
            registry: registry.clone(),
        }))
        .grpc_service(pb::cluster::cluster_server::ClusterServer::new(cluster_service))
        .grpc_service(pb::license::license_server::LicenseServer::new(crate::licence::LicenseService {
            licensing: licensing.clone(),
        }))
        .grpc_service(pb::network::network_server::NetworkServer::new(crate::network::NetworkService {
            network: network.clone(),
        }))
        .standard_services(&[micro::proto::DESCRIPTOR.to_vec()], &core_grpc)?;
    // Reflection on the proxy answers for every registered service, not just the core.
    let reflection = Reflection::new(
        &[
            micro::proto::DESCRIPTOR,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ],
        registry.clone(),
    )?;
    core = core.grpc_service(reflection.v1()).grpc_service(reflection.v1alpha());
    // Health on the proxy answers for every registered service too.
    let health = crate::grpc_health::Health::new(&core_grpc, registry.clone()).await;
    core = core.grpc_service(health.server());
    for name in CORE_SERVICES {
        core = core.debug(name, metrics.clone());
    }
    let core = core.build();

    // Core services are reached through the proxy, which serves them in-process.
    let node_id = uuid::Uuid::new_v4().simple().to_string();
    let mut records = Vec::new();
    for name in CORE_SERVICES {
        let mut metadata = std::collections::BTreeMap::new();
        metadata.insert("core".to_string(), "true".to_string());
        match name {
            "api" => metadata.insert("address".to_string(), api.to_string()),
            "proxy" => metadata.insert("address".to_string(), proxy.to_string()),
            _ => None,
        };
        let svc = Service {
            name: name.to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            metadata,
            endpoints: core.endpoints(name),
            nodes: vec![Node {
                id: format!("{name}-{}", &node_id[..12]),
                address: proxy_node.clone(),
                metadata: [("protocol".to_string(), "grpc".to_string())].into(),
            }],
        };
        registry.register(micro_core::namespace::DEFAULT, &svc, config.core_ttl).await?;
        records.push(svc);
    }

    // The gateway and the server's client find the core services from every namespace.
    // ... and the services of other clusters this one reaches through the network.
    let routing: Arc<dyn Registry> = Arc::new(crate::registry::CoreRegistry {
        inner: registry.clone(),
        local: records.clone(),
        network: Some(network.clone()),
    });
    let local: HashSet<String> = CORE_SERVICES.iter().map(|s| s.to_string()).collect();
    let guard: Arc<dyn micro::layer::Authorize> = crate::guard::authorizer(&auth);
    let client = Client::new(routing.clone());
    let proxy_svc = Proxy::new(
        core.layered(Some(guard)),
        local,
        client.clone(),
        runtime.clone(),
        auth.clone(),
        meter.clone(),
        node_transport,
        domains.clone(),
        local_nodes.clone(),
        network.clone(),
    );
    // The dashboard and the gateway vouch for their clients' addresses with this key when
    // they call the core through the proxy (see micro::edge).
    let edge_key = micro::edge::EdgeKey::random();
    // The edges give every request its id and trace context before anything else; the
    // proxy stamps the client's address from the connection (or keeps one vouched for).
    let proxy_key = edge_key.clone();
    let proxy_edge = TraceLayer::new("proxy").layer(tower::service_fn(move |mut req: Request<Body>| {
        let vouched = proxy_key.stamp(&mut req);
        let p = proxy_svc.clone();
        async move { Ok::<_, Infallible>(p.handle(req, vouched).await) }
    }));
    // This process's own calls to its proxy (the gateway's and the dashboard's) go
    // straight in: the same layers and checks, no loopback connection.
    let transport = micro::Transport::new().local(proxy_node.clone(), micro::LocalService::new(proxy_edge.clone()));
    let client = client.transport(transport.clone());
    // Calls from other clusters go in through the proxy too.
    network.set_proxy(transport.clone(), proxy_node.clone());
    network.gauges(&metrics);
    // With Redis, the gateways of a cluster share rate-limit buckets and cached answers.
    let edge = shared.edge().await?;
    let limits = crate::ratelimit::RateLimits::new(config_backend.clone(), edge.clone(), meter.clone());
    let cache = crate::cache::Cache::new(config_backend.clone(), config.cache_size, edge.map(|e| (e, server_key)));
    // Gauges, read at each scrape of the gateway's /metrics.
    {
        let (runtime, cache) = (runtime.clone(), cache.clone());
        let services = metrics.gauges("micro_runtime_services", "Services the runtime keeps on this node");
        let instances = metrics.gauges("micro_runtime_instances", "Instances of them this node runs");
        let entries = metrics.gauges("micro_cache_entries", "Answers in this node's response cache");
        let bytes = metrics.gauges("micro_cache_bytes", "Bytes of the answers in this node's response cache");
        metrics.on_scrape(move || {
            let (s, i) = runtime.counts();
            services.get_or_create(&Vec::new()).set(s as f64);
            instances.get_or_create(&Vec::new()).set(i as f64);
            let (e, b) = cache.held();
            entries.get_or_create(&Vec::new()).set(e as f64);
            bytes.get_or_create(&Vec::new()).set(b as f64);
        });
        shared.gauges(&metrics).await;
    }
    let gateway = Gateway::new(
        &config,
        routing,
        client,
        metrics.clone(),
        auth.clone(),
        targets,
        edge_key.clone(),
        limits,
        meter,
        cache,
        domains,
        &hosted,
    );

    let (tx, rx) = watch::channel(false);
    let until = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    let mut tasks = Vec::new();
    if let Some(f) = flusher {
        tasks.push(tokio::spawn(f.run(rx.clone())));
    }
    tasks.push(tokio::spawn(licensing.watch(rx.clone())));
    tasks.push(tokio::spawn(network.clone().run(rx.clone())));
    if let Some(listener) = network_listener {
        tasks.push(tokio::spawn(crate::network::serve(network.clone(), listener, rx.clone())));
    }
    // Replies of 1 KiB and more are compressed for clients that accept it.
    let compression = tower_http::compression::CompressionLayer::new()
        .quality(tower_http::CompressionLevel::Fastest)
        .compress_when(crate::gateway::Compressible(1024));
    let api_svc = TraceLayer::new("api").layer(
        compression
            .layer(tower::service_fn(move |mut req: Request<Incoming>| {
                micro::server::stamp_client_address(&mut req);
                let g = gateway.clone();
                async move { Ok::<_, Infallible>(g.handle(req).await) }
            }))
            .map_response(|r: http::Response<_>| r.map(Body::new)),
    );
    // Every TLS listener serves the custom domains' certificates by SNI, else the server's.
    let config_acme_alpn = config.acme.as_ref().is_some_and(|a| a.challenge == crate::AcmeChallenge::TlsAlpn01);
    let (tls_config, proxy_tls) = match &tls {
        Some(t) => {
            let sni = |node: Option<Arc<micro::tls::Certificates>>| {
                Arc::new(crate::acme::Sni {
                    default: t.certs.clone(),
                    domains: domain_certs.clone(),
                    challenges: challenge_certs.clone(),
                    node,
                })
            };
            let mut config = micro::tls::server_config_with(sni(None)).map_err(Error::Service)?;
            // TLS-ALPN-01 validation connections ask for acme-tls/1 alone.
            if config_acme_alpn {
                let mut c = (*config).clone();
                c.alpn_protocols.push(crate::acme::ACME_TLS_ALPN.to_vec());
                config = Arc::new(c);
            }
            // In a cluster, the proxy shows its node certificate to the other nodes (who ask
            // for the node name) and lets them show theirs; the public listeners never show it.
            let proxy = match &t.node {
                Some(n) => micro::tls::server_config_verifying_clients(
                    sni(Some(n.certs.clone())),
                    std::slice::from_ref(&n.ca),
                )?,
                None => config.clone(),
            };
            (Some(config), Some(proxy))
        }
        None => (None, None),
    };
    tasks.push(tokio::spawn(micro::server::serve_tls(
        proxy_listener,
        proxy_tls,
        move |req: Request<Incoming>| {
            let s = proxy_edge.clone();
            async move { s.oneshot(req.map(Body::new)).await.unwrap_or_else(|e| match e {}) }
        },
        until(rx.clone()),
    )));
    tasks.push(tokio::spawn(micro::server::serve_tls(
        api_listener,
        tls_config.clone(),
        move |req| {
            let s = api_svc.clone();
            async move { s.oneshot(req).await.unwrap_or_else(|e| match e {}) }
        },
        until(rx.clone()),
    )));
    if let Some(listener) = redirect_listener {
        let port = api.port();
        let acme = acme.clone();
        tasks.push(tokio::spawn(micro::server::serve(
            listener,
            move |req: Request<Incoming>| {
                let acme = acme.clone();
                async move {
                    // ACME's HTTP-01 challenges are answered here; everything else goes to HTTPS.
                    match (req.uri().path().strip_prefix(crate::acme::CHALLENGE_PATH), &acme) {
                        (Some(token), Some(acme)) => crate::acme::challenge_response(acme.answer(token).await),
                        _ => crate::tls::redirect(&req, port),
                    }
                }
            },
            until(rx.clone()),
        )));
    }
    if let Some(a) = acme {
        tasks.push(tokio::spawn(a.run(rx.clone())));
    }
    if let Some(listener) = web_listener {
        let dashboard = micro_web::Web::new(proxy_node.clone(), transport.clone(), rx.clone(), edge_key);
        tasks.push(tokio::spawn(micro_web::serve_tls(listener, dashboard, tls_config.clone(), until(rx.clone()))));
    }
    // Keep the core registrations alive.
    let reg = registry.clone();
    let ttl = config.core_ttl;
    let mut hb_rx = rx.clone();
    tasks.push(tokio::spawn(async move {
        let mut tick = tokio::time::interval(ttl / 3);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = hb_rx.wait_for(|v| *v) => return,
            }
            for svc in &records {
                if let Err(e) = reg.register(micro_core::namespace::DEFAULT, svc, ttl).await {
                    tracing::warn!(error = %e, "refreshing a core registration failed");
                }
            }
        }
    }));
    // The products, once everything they reach is listening.
    let products = match crate::products::start(&auth, &proxy_node, &transport, &config, &hosted).await {
        Ok(p) => p,
        Err(e) => {
            let _ = tx.send(true);
            return Err(e.into());
        }
    };
    tracing::info!(api = %api, proxy = %proxy, web = ?web, data_dir = %config.data_dir.display(), "micro server started");
    let ca = tls.and_then(|t| t.ca);
    Ok(Running {
        api,
        proxy,
        web,
        network: network_address,
        registry,
        runtime,
        products,
        shutdown: tx,
        tasks,
        tls: tls_config.is_some(),
        ca,
    })
}

impl Running {
    /// Whether every listener speaks TLS.
    pub fn tls(&self) -> bool {
        self.tls
    }

    /// The local CA's certificate (PEM file) clients trust the server by, with
    /// `MICRO_TLS=auto`.
    pub fn ca_path(&self) -> Option<&std::path::Path> {
        self.ca.as_deref()
    }

    /// The bound address of the HTTP API gateway.
    pub fn api_address(&self) -> SocketAddr {
        self.api
    }

    /// The bound address of the gRPC proxy (what `MICRO_SERVER` points at).
    pub fn proxy_address(&self) -> SocketAddr {
        self.proxy
    }

    /// The bound address of the web dashboard, if it is on.
    pub fn web_address(&self) -> Option<SocketAddr> {
        self.web
    }

    /// The bound address of the network listener, where other clusters' links arrive,
    /// if it is on (`MICRO_NETWORK_ADDRESS`).
    pub fn network_address(&self) -> Option<SocketAddr> {
        self.network
    }

    /// The registry.
    pub fn registry(&self) -> Arc<dyn Registry> {
        self.registry.clone()
    }

    /// Stops accepting, drains in-flight requests, and returns when done.
    pub async fn stop(self) {
        // The services the runtime runs and the products stop first, while they can
        // still deregister.
        self.runtime.shutdown().await;
        for p in self.products {
            p.stop().await;
        }
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        tracing::info!("micro server stopped");
    }
}
