//! The runtime: services run from source. Each service's desired state (source,
//! instances, env, limits, the build it runs) is kept in `runtime.db`; builds are kept
//! under `runtime/builds`, so a restart of the server brings every service back without
//! building it again. Every service runs as its own service account, and its code
//! (builds included) in a sandbox ([`sandbox`]): without one, the runtime runs code only
//! for the admins of the default namespace.
//!
//! When nodes share a database ([`Cluster`]), the desired state and the uploaded sources
//! are shared too, and one node, elected through the shared locks, runs every service:
//! the others forward runtime calls to it (see [`Runtime::route`]). When the leader dies,
//! another node is elected within the lock's TTL and brings every service back.

mod build;
mod cgroup;
mod egress;
mod firewall;
mod logs;
mod process;
mod quota;
pub(crate) mod rpc;
mod sandbox;
mod source;

pub use firewall::EgressMode;
pub use sandbox::SandboxMode;

use crate::auth::AuthService;
use build::{Artifact, Builder, Job};
use logs::LogSink;
use micro::proto::runtime as pb;
use micro_core::registry::Registry;
use micro_core::store::{Query, Record, Store, Table};
use micro_core::{Code, Status};
use process::{Instance, Launch};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const ID: &str = "runtime";
/// How long a runtime leader's lock lasts without a refresh: the longest a dead leader's
/// services stay down before another node runs them.
const LEADER_TTL: Duration = Duration::from_secs(6);
/// Where the leader's address is kept, for the other nodes.
const LEADER_KEY: &str = "leader";
/// The blob bucket (in the `micro` namespace) of shared uploads.
const UPLOADS_BUCKET: &str = "runtime-uploads";
/// The header marking a runtime call forwarded to the leader (never forwarded again).
pub(crate) const FORWARDED: &str = "micro-runtime-forwarded";

/// What nodes sharing a database share for the runtime.
pub(crate) struct Cluster {
    /// The locks the leader is elected with.
    pub(crate) sync: Arc<dyn micro_core::sync::Sync>,
    /// Where uploaded sources are kept for whichever node builds them.
    pub(crate) uploads: Arc<dyn micro_core::blob::Blob>,
}

struct ClusterState {
    shared: Cluster,
    leader: std::sync::atomic::AtomicBool,
    /// The leader's proxy address, and when it was read.
    known: Mutex<Option<(String, std::time::Instant)>>,
}

/// Where a runtime call is served.
pub(crate) enum Route {
    /// Here.
    Local,
    /// At the leader's proxy, at this address.
    Leader(String),
}

/// How the runtime is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// The host other nodes reach this node's services at (`MICRO_ADVERTISE_HOST`;
    /// default `127.0.0.1`, for one machine). Instances listen on it and register it.
    pub host: String,
    /// The cargo target dir shared by every build (default `<data>/runtime/target`).
    pub target_dir: Option<PathBuf>,
    /// The cargo profile of builds (`release` by default).
    pub profile: String,
    /// Where short names are looked up (like `github.com/micro/services`).
    pub repo: Option<String>,
    /// Services per namespace.
    pub max_services: usize,
    /// Size at which a service's log file rotates.
    pub log_max: u64,
    /// The largest source upload.
    pub upload_max: u64,
    /// The longest a build may take (`MICRO_RUNTIME_BUILD_TIMEOUT`, in seconds; 30
    /// minutes): it is stopped then, so no build holds the others up for ever.
    pub build_timeout: Duration,
    /// How code is isolated (`MICRO_RUNTIME_SANDBOX`: `auto`, `bwrap` or `none`).
    pub sandbox: SandboxMode,
    /// The user and group all sandboxed code runs as when the server runs as root
    /// (`MICRO_RUNTIME_UID`, `uid[:gid]`); by default each namespace's code runs as a
    /// user of its own.
    pub sandbox_user: Option<(u32, u32)>,
    /// Hosts tenants' git sources may come from although they are internal
    /// (`MICRO_RUNTIME_ALLOW_HOSTS`: host names, addresses and CIDRs, comma-separated).
    pub allow_hosts: Vec<String>,
    /// Whether tenants' connections are filtered by their plan's egress
    /// (`MICRO_RUNTIME_EGRESS`: `auto`, `on` or `off`).
    pub egress: EgressMode,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            host: "127.0.0.1".into(),
            target_dir: None,
            profile: "release".into(),
            repo: None,
            max_services: 50,
            log_max: 8 << 20,
            upload_max: 512 << 20,
            build_timeout: Duration::from_secs(30 * 60),
            sandbox: SandboxMode::Auto,
            egress: EgressMode::Auto,
            sandbox_user: None,
            allow_hosts: Vec::new(),
        }
    }
}

/// The runtime. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Runtime {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    config: RuntimeConfig,
    builder: Builder,
    server: String,
    tls: bool,
    ca: Option<String>,
    registry: Arc<dyn Registry>,
    auth: AuthService,
    db: Arc<dyn Store>,
    /// Seals the services' `--env` values in `db`.
    env_sealer: crate::sealed::Sealer,
    /// The namespaces' config, where `--secret` values are read from.
    secrets: Arc<dyn micro_core::config::Config>,
    services: Mutex<HashMap<(String, String), Arc<Managed>>>,
    /// One build at a time: builds are what the machine is slow at.
    building: tokio::sync::Mutex<()>,
    cluster: Option<ClusterState>,
    /// Set when the server stops (ends the campaign for leadership).
    stopping: tokio::sync::watch::Sender<bool>,
    /// Where code runs.
    sandbox: Arc<sandbox::Sandbox>,
    /// How instances' resources are held.
    cgroups: Arc<cgroup::Cgroups>,
    /// Where tenants' code may connect.
    firewall: Arc<firewall::Firewall>,
    /// The host's ports given to instances.
    local_nodes: crate::targets::LocalNodes,
    /// Internal hosts tenants' git sources may come from.
    allowed: Vec<egress::Allowed>,
}

/// Who asks the runtime to run something, from the caller's verified token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Caller {
    /// The account's namespace.
    pub(crate) namespace: String,
    /// The account's id.
    pub(crate) id: String,
    /// An admin of the default namespace: the operator, who may run code without a
    /// sandbox and from the server's own disk.
    pub(crate) operator: bool,
}

impl Caller {
    /// The caller an owner kept with a service stands for (the runtime's calls need the
    /// admin scope, so an owner of the default namespace was one of its admins).
    fn of_owner(owner: &Option<(String, String)>) -> Option<Caller> {
        owner.as_ref().map(|(ns, id)| Caller {
            namespace: ns.clone(),
            id: id.clone(),
            operator: ns == micro_core::namespace::DEFAULT,
        })
    }
}

/// A service the runtime manages.
struct Managed {
    namespace: String,
    name: String,
    /// The desired state, and the build it runs.
    spec: Mutex<pb::Service>,
    /// Who created or last updated it (namespace, account id): whose git credentials
    /// (the account's own settings, kept by the auth service) its clones use.
    owner: Mutex<Option<(String, String)>>,
    /// A status of its own while building or rolling (else the instances decide).
    phase: Mutex<Option<(String, String)>>,
    instances: Mutex<Vec<Arc<Instance>>>,
    log: LogSink,
    build_log: LogSink,
    /// Serialises deploys.
    ops: tokio::sync::Mutex<()>,
    /// The deploys under way (a kill cancels them, builds included).
    deploys: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// The service account's secret, made when the service first starts here.
    secret: tokio::sync::Mutex<Option<String>>,
    deleted: std::sync::atomic::AtomicBool,
    /// What each of its instances may use, as of its last start.
    limits: Mutex<cgroup::Limits>,
    /// When its current run began (clock seconds), as billing counts service-hours.
    since: std::sync::atomic::AtomicU64,
}

/// What the runtime works with, from the rest of the server.
pub(crate) struct Wiring {
    /// This node's proxy address (what services are told to use, and the leader's address).
    pub(crate) server: String,
    /// The addresses the proxy and the gateway listen on: tenants' code may connect to
    /// them (and to nothing else of the host's).
    pub(crate) listeners: Vec<std::net::SocketAddr>,
    /// The host's ports given to instances, by namespace.
    pub(crate) local_nodes: crate::targets::LocalNodes,
    /// Whether the proxy speaks TLS (services are told `https://…`).
    pub(crate) tls: bool,
    /// The local CA services trust the proxy's certificate by (PEM), with `MICRO_TLS=auto`.
    pub(crate) ca: Option<String>,
    /// Where services are registered.
    pub(crate) registry: Arc<dyn Registry>,
    /// Makes the services' accounts.
    pub(crate) auth: AuthService,
    /// The desired state of every service.
    pub(crate) db: Arc<dyn Store>,
    /// Seals the services' `--env` values in `db`.
    pub(crate) env_sealer: crate::sealed::Sealer,
    /// The namespaces' config, where `--secret` values are read from.
    pub(crate) secrets: Arc<dyn micro_core::config::Config>,
    /// Set when nodes share the runtime.
    pub(crate) cluster: Option<Cluster>,
}

impl Runtime {
    /// Opens the runtime in `data_dir`: stops what a previous server left running and
    /// brings every service back to its desired state (or, in a cluster, campaigns to
    /// be the node that runs them).
    pub(crate) async fn open(data_dir: &Path, config: RuntimeConfig, wiring: Wiring) -> Result<Runtime, Status> {
        let Wiring { server, listeners, local_nodes, tls, ca, registry, auth, db, env_sealer, secrets, cluster } =
            wiring;
        let dir = data_dir.join("runtime");
        std::fs::create_dir_all(&dir).map_err(|e| Status::internal(ID, format!("{}: {e}", dir.display())))?;
        // Canonical: the sandbox binds these paths as they are.
        let dir = dir.canonicalize().map_err(|e| Status::internal(ID, format!("{}: {e}", dir.display())))?;
        process::reap(&dir.join("run"));
        let target_dir = config.target_dir.clone().unwrap_or_else(|| dir.join("target"));
        let target_dir = std::fs::create_dir_all(&target_dir)
            .and_then(|()| target_dir.canonicalize())
            .map_err(|e| Status::internal(ID, format!("{}: {e}", target_dir.display())))?;
        let allowed = egress::parse_allowed(&config.allow_hosts)
            .map_err(|e| Status::bad_request(ID, format!("MICRO_RUNTIME_ALLOW_HOSTS: {e}")))?;
        let toolchain = sandbox::toolchain().await;
        let layout = sandbox::Layout {
            data_dir: data_dir.canonicalize().unwrap_or_else(|_| data_dir.to_path_buf()),
            target_dir: target_dir.clone(),
            toolchain: toolchain.clone(),
            uids: dir.join("uids.json"),
        };
        let sandbox =
            Arc::new(sandbox::Sandbox::probe(config.sandbox, config.sandbox_user, &layout).await.map_err(|e| {
                Status::unavailable(ID, format!("no sandbox for the runtime (MICRO_RUNTIME_SANDBOX=bwrap): {e}"))
            })?);
        match sandbox.missing() {
            None => tracing::info!(isolation = %sandbox.describe(micro_core::namespace::DEFAULT), "runtime"),
            Some(why) => tracing::warn!(
                "the runtime has no sandbox ({why}): it runs services only for admins of namespace micro"
            ),
        }
        let tag = {
            use sha2::Digest;
            let digest = sha2::Sha256::digest(dir.to_string_lossy().as_bytes());
            digest[..4].iter().map(|b| format!("{b:02x}")).collect::<String>()
        };
        let cgroups = Arc::new(cgroup::Cgroups::probe(&tag));
        tracing::info!(limits = %cgroups.describe(), "runtime");
        let firewall = {
            // The proxy as services are told it, and the listeners themselves.
            let bare = server.trim_start_matches("https://").trim_start_matches("http://").to_string();
            let mut reach: Vec<std::net::SocketAddr> =
                tokio::net::lookup_host(bare.as_str()).await.map(|a| a.collect()).unwrap_or_default();
            reach.extend(listeners);
            reach.sort();
            reach.dedup();
            let fw = if !sandbox.available() {
                firewall::Firewall::off("there is no sandbox")
            } else {
                firewall::Firewall::setup(config.egress, &tag, &reach, &allowed, sandbox.per_namespace_users())
                    .await
                    .map_err(|e| Status::unavailable(ID, format!("no egress filter (MICRO_RUNTIME_EGRESS=on): {e}")))?
            };
            tracing::info!(egress = %fw.describe(None), "runtime");
            Arc::new(fw)
        };
        let builder = Builder {
            target_dir,
            cargo_home: dir.join("cargo"),
            profile: config.profile.clone(),
            toolchain,
            sandbox: sandbox.clone(),
        };
        let rt = Runtime {
            inner: Arc::new(Inner {
                dir,
                config,
                builder,
                server,
                tls,
                ca,
                registry,
                auth,
                db,
                env_sealer,
                secrets,
                services: Mutex::new(HashMap::new()),
                building: tokio::sync::Mutex::new(()),
                cluster: cluster.map(|shared| ClusterState {
                    shared,
                    leader: Default::default(),
                    known: Mutex::new(None),
                }),
                stopping: tokio::sync::watch::channel(false).0,
                sandbox,
                cgroups,
                firewall,
                local_nodes,
                allowed,
            }),
        };
        if rt.inner.cluster.is_some() {
            rt.campaign();
        } else {
            rt.restore().await?;
        }
        Ok(rt)
    }

    /// Brings every recorded service back to its desired state.
    async fn restore(&self) -> Result<(), Status> {
        let table = Self::table();
        for key in self.inner.db.list(&table, "", &Query::default()).await? {
            let Some(r) = self.inner.db.read(&table, &key, &Query::default()).await?.into_iter().next() else {
                continue;
            };
            let Ok(mut spec) = serde_json::from_slice::<Stored>(&r.value) else {
                tracing::warn!(%key, "skipping an unreadable runtime record");
                continue;
            };
            let ns = key.split_once('/').map(|(ns, _)| ns.to_string()).unwrap_or_default();
            if let Err(e) = self.open_env(&ns, &mut spec).await {
                tracing::warn!(%key, error = %e.detail(), "skipping a runtime record whose --env cannot be decrypted");
                continue;
            }
            let owner = spec.owner.clone();
            if let Some(reason) = self.suspended(&ns).await? {
                let spec = spec.into_pb();
                let name = spec.name.clone();
                let m = self.managed(&ns, &name, spec);
                *m.owner.lock().unwrap_or_else(|e| e.into_inner()) = owner;
                Self::set_phase(&m, "suspended", &reason);
                continue;
            }
            // A service kept from before runs were recorded starts its run now.
            let since = if spec.since == 0 { micro_core::time::clock() } else { spec.since };
            let spec = spec.into_pb();
            let m = self.managed(&ns, &spec.name, spec.clone());
            m.since.store(since, std::sync::atomic::Ordering::SeqCst);
            self.run_started(&ns, &spec.name, since).await;
            *m.owner.lock().unwrap_or_else(|e| e.into_inner()) = owner.clone();
            // Admitted when it was asked for; the sandbox may be gone since.
            if let Err(e) = self.admit_unsandboxed(Caller::of_owner(&owner).as_ref()) {
                tracing::warn!(service = %m.name, namespace = %m.namespace, error = %e.detail(), "not restoring");
                Self::set_phase(&m, "error", &format!("not started: {}", e.detail()));
                continue;
            }
            tracing::info!(service = %m.name, namespace = %m.namespace, version = %spec.version, "restoring");
            self.spawn_deploy(m, spec, false);
        }
        Ok(())
    }

    /// Campaigns for leadership until the server stops: while elected, this node runs
    /// every service; when leadership is lost, it stops them (the new leader runs them).
    fn campaign(&self) {
        let rt = self.clone();
        let mut stopping = self.inner.stopping.subscribe();
        tokio::spawn(async move {
            let Some(c) = rt.inner.cluster.as_ref() else { return };
            loop {
                let elected = tokio::select! {
                    r = micro_core::sync::elect(c.shared.sync.clone(), micro_core::namespace::DEFAULT, "runtime", LEADER_TTL) => r,
                    () = stopped(&mut stopping) => return,
                };
                let mut leadership = match elected {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::warn!(error = %e, "campaigning for runtime leadership failed; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                tracing::info!(node = %rt.inner.server, "elected runtime leader");
                c.leader.store(true, std::sync::atomic::Ordering::SeqCst);
                let record = Record::new(LEADER_KEY, rt.inner.server.clone().into_bytes());
                let announced = async {
                    while let Err(e) = rt.inner.db.write(&Self::cluster_table(), &record, None).await {
                        tracing::warn!(error = %e, "announcing the runtime leader failed; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    if let Err(e) = rt.restore().await {
                        tracing::warn!(error = %e, "restoring the services failed");
                    }
                };
                tokio::select! {
                    () = announced => {}
                    _ = leadership.lost() => {}
                }
                tokio::select! {
                    _ = leadership.lost() => {}
                    () = stopped(&mut stopping) => {
                        leadership.resign().await;
                        return;
                    }
                }
                c.leader.store(false, std::sync::atomic::Ordering::SeqCst);
                tracing::warn!("runtime leadership lost: stopping the services here");
                rt.stop_local().await;
            }
        });
    }

    /// Where runtime calls are served: here without a cluster or when this node leads;
    /// else at the leader; `Unavailable` while no leader is known.
    pub(crate) async fn route(&self) -> Result<Route, Status> {
        let Some(c) = &self.inner.cluster else { return Ok(Route::Local) };
        if c.leader.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(Route::Local);
        }
        let cached = c
            .known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .filter(|(_, at)| at.elapsed() < Duration::from_secs(1));
        let address = match cached {
            Some((a, _)) => Some(a),
            None => {
                let read = self.inner.db.read(&Self::cluster_table(), LEADER_KEY, &Query::default()).await;
                let address = match read {
                    Ok(r) => r.into_iter().next().map(|r| String::from_utf8_lossy(&r.value).to_string()),
                    Err(e) if e.code() == Code::NotFound => None,
                    Err(e) => return Err(e),
                };
                if let Some(a) = &address {
                    *c.known.lock().unwrap_or_else(|e| e.into_inner()) = Some((a.clone(), std::time::Instant::now()));
                }
                address
            }
        };
        match address {
            Some(a) if a != self.inner.server => Ok(Route::Leader(a)),
            _ => Err(Status::unavailable(ID, "no runtime leader is elected yet; try again in a few seconds")),
        }
    }

    /// Stops and forgets every service here (their desired state stays).
    async fn stop_local(&self) {
        self.stop_instances().await;
        let all: Vec<_> =
            self.inner.services.lock().unwrap_or_else(|e| e.into_inner()).drain().map(|(_, m)| m).collect();
        for m in all {
            let deploys = std::mem::take(&mut *m.deploys.lock().unwrap_or_else(|e| e.into_inner()));
            for d in deploys {
                d.abort();
            }
        }
    }

    fn cluster_table() -> Table {
        Table::new("runtime", "cluster")
    }

    /// Makes sure upload `id` is on this node's disk, fetching it from the shared
    /// uploads when another node received it.
    async fn fetch_upload(&self, id: &str) -> Result<(), Status> {
        let Some(c) = &self.inner.cluster else { return Ok(()) };
        if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) || self.upload_path(id).exists() {
            return Ok(());
        }
        let (_, mut chunks) = match c.shared.uploads.get(micro_core::namespace::DEFAULT, UPLOADS_BUCKET, id).await {
            Ok(got) => got,
            Err(e) if e.code() == Code::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let dir = self.upload_dir();
        tokio::fs::create_dir_all(&dir).await.map_err(|e| Status::internal(ID, e.to_string()))?;
        let tmp = dir.join(format!(".{}.part", uuid::Uuid::new_v4()));
        let written = async {
            use futures::StreamExt;
            use tokio::io::AsyncWriteExt;
            let mut file = tokio::fs::File::create(&tmp).await.map_err(|e| Status::internal(ID, e.to_string()))?;
            while let Some(chunk) = chunks.next().await {
                file.write_all(&chunk?).await.map_err(|e| Status::internal(ID, e.to_string()))?;
            }
            file.sync_all().await.map_err(|e| Status::internal(ID, e.to_string()))?;
            tokio::fs::rename(&tmp, self.upload_path(id)).await.map_err(|e| Status::internal(ID, e.to_string()))
        }
        .await;
        let _ = tokio::fs::remove_file(&tmp).await;
        written
    }

    /// Shares a new upload with the other nodes.
    async fn share_upload(&self, id: &str) -> Result<(), Status> {
        let Some(c) = &self.inner.cluster else { return Ok(()) };
        let data = tokio::fs::read(self.upload_path(id)).await.map_err(|e| Status::internal(ID, e.to_string()))?;
        let chunks = futures::stream::iter(
            data.chunks(1 << 20).map(|c| Ok(bytes::Bytes::copy_from_slice(c))).collect::<Vec<_>>(),
        );
        let chunks: micro_core::blob::Chunks = Box::pin(chunks);
        c.shared
            .uploads
            .put(micro_core::namespace::DEFAULT, UPLOADS_BUCKET, id, "application/gzip", chunks)
            .await
            .map(drop)
    }

    fn table() -> Table {
        Table::new("runtime", "services")
    }

    fn managed(&self, ns: &str, name: &str, spec: pb::Service) -> Arc<Managed> {
        let m = self.new_managed(ns, name, spec);
        self.inner.services.lock().unwrap_or_else(|e| e.into_inner()).insert((ns.into(), name.into()), m.clone());
        m
    }

    /// A service's state, not yet among the runtime's.
    fn new_managed(&self, ns: &str, name: &str, spec: pb::Service) -> Arc<Managed> {
        let logs = self.inner.dir.join("logs").join(ns).join(name);
        Arc::new(Managed {
            namespace: ns.to_string(),
            name: name.to_string(),
            spec: Mutex::new(spec),
            owner: Mutex::new(None),
            phase: Mutex::new(Some(("pending".into(), String::new()))),
            instances: Mutex::new(Vec::new()),
            log: LogSink::new(logs.join("service.log"), self.inner.config.log_max),
            build_log: LogSink::new(logs.join("build.log"), self.inner.config.log_max),
            ops: tokio::sync::Mutex::new(()),
            deploys: Mutex::new(Vec::new()),
            secret: tokio::sync::Mutex::new(None),
            deleted: Default::default(),
            limits: Default::default(),
            since: Default::default(),
        })
    }

    fn get(&self, ns: &str, name: &str) -> Result<Arc<Managed>, Status> {
        self.inner
            .services
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(ns.to_string(), name.to_string()))
            .cloned()
            .ok_or_else(|| Status::not_found(ID, format!("no service {name} in {ns}: see micro status")))
    }

    /// Checks a request's service and fills its defaults.
    fn check(&self, mut spec: pb::Service) -> Result<pb::Service, Status> {
        spec.entrypoint = source::check_entry(&spec.entrypoint)?.to_string_lossy().to_string();
        source::parse(&spec.source, &spec.upload, self.inner.config.repo.as_deref())?;
        if !spec.upload.is_empty() && !self.upload_path(&spec.upload).exists() {
            return Err(Status::bad_request(ID, format!("no upload {}: upload the source first", spec.upload)));
        }
        if spec.name.is_empty() {
            let from = if spec.entrypoint.is_empty() { spec.source.trim_end_matches('/') } else { &spec.entrypoint };
            let from = from.rsplit(['/', ':']).next().unwrap_or("");
            spec.name = from.split('@').next().unwrap_or("").trim_end_matches(".git").to_lowercase();
        }
        micro_core::registry::validate_name(&spec.name)
            .map_err(|_| Status::bad_request(ID, format!("invalid service name {:?}: use --name", spec.name)))?;
        if spec.instances == 0 {
            spec.instances = 1;
        }
        if spec.instances > 64 {
            return Err(Status::bad_request(ID, "at most 64 instances"));
        }
        for k in spec.env.keys().chain(spec.secrets.keys()) {
            if k.is_empty() || k.contains(['=', '\0']) {
                return Err(Status::bad_request(ID, format!("invalid environment variable name {k:?}")));
            }
        }
        if let Some((k, _)) = spec.env.iter().find(|(_, v)| v.contains('\0')) {
            return Err(Status::bad_request(ID, format!("the value of {k} holds a NUL byte")));
        }
        for path in spec.secrets.values() {
            micro_core::config::parse_path(path)
                .map_err(|e| Status::bad_request(ID, format!("secret: {}", e.detail())))?;
        }
        // Status fields are the runtime's.
        spec.version.clear();
        spec.status.clear();
        spec.error.clear();
        spec.build.clear();
        spec.nodes.clear();
        spec.restarts = 0;
        Ok(spec)
    }

    /// Whether code may run for `caller` without a sandbox: only for the operator.
    fn admit_unsandboxed(&self, caller: Option<&Caller>) -> Result<(), Status> {
        match self.inner.sandbox.missing() {
            Some(why) if !caller.is_some_and(|c| c.operator) => Err(Status::new(
                Code::PermissionDenied,
                ID,
                format!(
                    "this server's runtime has no sandbox ({why}), so it runs code only for admins of namespace {}",
                    micro_core::namespace::DEFAULT
                ),
            )),
            _ => Ok(()),
        }
    }

    /// Whether the runtime may run `spec` for `caller`: the operator anything; others
    /// only in a sandbox, from an upload, the services repository or a public git host
    /// over HTTP(S) (never from the server's own disk or network).
    async fn admit(&self, spec: &pb::Service, caller: Option<&Caller>) -> Result<(), Status> {
        self.admit_unsandboxed(caller)?;
        if caller.is_some_and(|c| c.operator) {
            return Ok(());
        }
        match source::parse(&spec.source, &spec.upload, self.inner.config.repo.as_deref())? {
            source::Source::Upload(_) | source::Source::Git { configured: true, .. } => Ok(()),
            source::Source::Git { url, .. } => egress::check(&url, &self.inner.allowed).await.map(drop),
        }
    }

    /// Starts a new service.
    pub(crate) async fn create(
        &self,
        ns: &str,
        spec: pb::Service,
        caller: Option<Caller>,
    ) -> Result<pb::Service, Status> {
        self.not_suspended(ns).await?;
        self.fetch_upload(&spec.upload).await?;
        let mut spec = self.check(spec)?;
        self.admit(&spec, caller.as_ref()).await?;
        let quota = quota::Quota::of(self.inner.secrets.as_ref(), ns).await?;
        quota.admit(ns, &mut spec)?;
        let owner = caller.map(|c| (c.namespace, c.id));
        let m = {
            // Counted and taken under one lock: parallel runs cannot race past the quota.
            let mut services = self.inner.services.lock().unwrap_or_else(|e| e.into_inner());
            if services.contains_key(&(ns.to_string(), spec.name.clone())) {
                return Err(Status::new(
                    Code::AlreadyExists,
                    ID,
                    format!("{} already runs in {ns}: use micro update, or micro kill first", spec.name),
                ));
            }
            let count = services.keys().filter(|(n, _)| n == ns).count();
            if count >= self.inner.config.max_services {
                return Err(Status::new(
                    Code::ResourceExhausted,
                    ID,
                    format!("namespace {ns} runs {count} services, this server's most (MICRO_RUNTIME_MAX_SERVICES)"),
                ));
            }
            quota.admit_another(ns, count)?;
            let m = self.new_managed(ns, &spec.name, spec.clone());
            services.insert((ns.to_string(), spec.name.clone()), m.clone());
            m
        };
        *m.owner.lock().unwrap_or_else(|e| e.into_inner()) = owner;
        // Asked again after the awaits above: a suspension may have landed meanwhile.
        if let Err(e) = self.not_suspended(ns).await {
            self.inner.services.lock().unwrap_or_else(|e| e.into_inner()).remove(&(ns.to_string(), spec.name.clone()));
            return Err(e);
        }
        let since = micro_core::time::clock();
        m.since.store(since, std::sync::atomic::Ordering::SeqCst);
        self.persist(&m, &spec).await?;
        self.run_started(ns, &spec.name, since).await;
        self.spawn_deploy(m.clone(), spec, false);
        Ok(self.describe(&m))
    }

    /// Rebuilds and rolls a service.
    pub(crate) async fn update(
        &self,
        ns: &str,
        spec: pb::Service,
        caller: Option<Caller>,
    ) -> Result<pb::Service, Status> {
        let mut spec = spec;
        let m = self.get(ns, &spec.name)?;
        self.not_suspended(ns).await?;
        {
            // Unset fields keep their values.
            let old = m.spec.lock().unwrap_or_else(|e| e.into_inner()).clone();
            if spec.source.is_empty() && spec.upload.is_empty() {
                spec.source = old.source.clone();
                spec.upload = old.upload.clone();
                if spec.entrypoint.is_empty() {
                    spec.entrypoint = old.entrypoint.clone();
                }
            }
            if spec.instances == 0 {
                spec.instances = old.instances;
            }
            if spec.env.is_empty() {
                spec.env = old.env.clone();
            }
            if spec.secrets.is_empty() {
                spec.secrets = old.secrets.clone();
            }
            if spec.memory == 0 {
                spec.memory = old.memory;
            }
            if spec.metadata.is_empty() {
                spec.metadata = old.metadata.clone();
            }
        }
        self.fetch_upload(&spec.upload).await?;
        let mut spec = self.check(spec)?;
        // The updater's rights decide, whoever created it; and the namespace's quota now
        // (more instances or memory through an update is no way round it).
        self.admit(&spec, caller.as_ref()).await?;
        quota::Quota::of(self.inner.secrets.as_ref(), ns).await?.admit(ns, &mut spec)?;
        if let Some(c) = caller {
            *m.owner.lock().unwrap_or_else(|e| e.into_inner()) = Some((c.namespace, c.id));
        }
        self.not_suspended(ns).await?;
        self.persist(&m, &spec).await?;
        self.spawn_deploy(m.clone(), spec, true);
        Ok(self.describe(&m))
    }

    /// Stops a service and forgets it.
    pub(crate) async fn delete(&self, ns: &str, name: &str) -> Result<(), Status> {
        let m = self.get(ns, name)?;
        m.deleted.store(true, std::sync::atomic::Ordering::SeqCst);
        self.inner.services.lock().unwrap_or_else(|e| e.into_inner()).remove(&(ns.to_string(), name.to_string()));
        // The run ends before the record goes: killed in between, the service is still
        // there when the server comes back, and its run is opened again (the same one).
        self.run_ended(ns, name, micro_core::time::clock()).await;
        let _ = self.inner.db.delete(&Self::table(), &format!("{ns}/{name}")).await;
        Self::halt(&m).await;
        tracing::info!(service = %name, namespace = %ns, "killed");
        Ok(())
    }

    /// Stops whatever of `m` is being built or rolled (a build's process dies with it) and
    /// every instance it runs.
    async fn halt(m: &Managed) {
        let deploys = std::mem::take(&mut *m.deploys.lock().unwrap_or_else(|e| e.into_inner()));
        for d in deploys {
            d.abort();
            let _ = d.await;
        }
        let instances = std::mem::take(&mut *m.instances.lock().unwrap_or_else(|e| e.into_inner()));
        futures::future::join_all(instances.iter().map(|i| i.stop())).await;
    }

    /// How many services this node keeps, and how many of their instances it runs.
    pub(crate) fn counts(&self) -> (usize, usize) {
        let services = self.inner.services.lock().unwrap_or_else(|e| e.into_inner());
        let instances = services.values().map(|m| m.instances.lock().unwrap_or_else(|e| e.into_inner()).len()).sum();
        (services.len(), instances)
    }

    /// The services of a namespace (or one).
    pub(crate) fn read(&self, ns: &str, name: &str) -> Result<Vec<pb::Service>, Status> {
        if !name.is_empty() {
            return Ok(vec![self.describe(self.get(ns, name)?.as_ref())]);
        }
        let services = self.inner.services.lock().unwrap_or_else(|e| e.into_inner());
        let mut list: Vec<_> = services.values().filter(|m| m.namespace == ns).cloned().collect();
        drop(services);
        list.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(list.iter().map(|m| self.describe(m)).collect())
    }

    /// A service's log: the last `count` lines, and the live ones with `follow`.
    pub(crate) fn logs(
        &self,
        ns: &str,
        name: &str,
        build: bool,
        count: usize,
    ) -> Result<(Vec<String>, tokio::sync::broadcast::Receiver<pb::LogRecord>), Status> {
        let m = self.get(ns, name)?;
        let log = if build { &m.build_log } else { &m.log };
        let rx = log.follow();
        Ok((log.tail(count), rx))
    }

    /// Stops every instance (the desired state stays, for the next start).
    pub(crate) async fn shutdown(&self) {
        self.inner.stopping.send_replace(true);
        self.stop_instances().await;
    }

    async fn stop_instances(&self) {
        let all: Vec<_> = self.inner.services.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        let mut stops = Vec::new();
        for m in &all {
            stops.extend(std::mem::take(&mut *m.instances.lock().unwrap_or_else(|e| e.into_inner())));
        }
        futures::future::join_all(stops.iter().map(|i| i.stop())).await;
    }

    fn upload_path(&self, id: &str) -> PathBuf {
        self.inner.dir.join("uploads").join(format!("{id}.tar.gz"))
    }

    fn upload_dir(&self) -> PathBuf {
        self.inner.dir.join("uploads")
    }

    async fn persist(&self, m: &Managed, spec: &pb::Service) -> Result<(), Status> {
        let ns = &m.namespace;
        let mut stored = Stored::from_pb(ns, spec);
        stored.owner = m.owner.lock().unwrap_or_else(|e| e.into_inner()).clone();
        stored.since = m.since.load(std::sync::atomic::Ordering::SeqCst);
        // `--env` values are sealed at rest, like the config's secrets.
        let env = std::mem::take(&mut stored.env);
        if !env.is_empty() {
            let env = serde_json::to_value(env).map_err(|e| Status::internal(ID, e.to_string()))?;
            stored.sealed_env = Some(self.inner.env_sealer.seal(ns, &Self::env_path(&spec.name), &env).await?);
        }
        let value = serde_json::to_vec(&stored).map_err(|e| Status::internal(ID, e.to_string()))?;
        self.inner.db.write(&Self::table(), &Record::new(format!("{ns}/{}", spec.name), value), None).await
    }

    /// What a service's sealed `--env` is bound to.
    fn env_path(name: &str) -> Vec<String> {
        vec!["runtime".into(), "env".into(), micro_core::config::encode_segment(name)]
    }

    /// Decrypts a stored service's `--env` into `stored.env` (a record from before they
    /// were sealed keeps them in plain text until it is next saved).
    async fn open_env(&self, ns: &str, stored: &mut Stored) -> Result<(), Status> {
        let Some(sealed) = stored.sealed_env.take() else { return Ok(()) };
        let env = self.inner.env_sealer.open(ns, &Self::env_path(&stored.name), &sealed).await?;
        stored.env = serde_json::from_value(env).map_err(|e| Status::internal(ID, format!("sealed --env: {e}")))?;
        Ok(())
    }

    /// The service as `micro status` shows it.
    fn describe(&self, m: &Managed) -> pb::Service {
        let mut s = m.spec.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let instances = m.instances.lock().unwrap_or_else(|e| e.into_inner()).clone();
        s.nodes = instances
            .iter()
            .map(|i| pb::Instance { id: i.id.clone(), pid: i.pid(), status: i.state().0, restarts: i.restarts() })
            .collect();
        s.restarts = instances.iter().map(|i| i.restarts()).sum();
        let phase = m.phase.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let (status, error) = match phase {
            Some(p) => p,
            None => {
                let states: Vec<(String, String)> = instances.iter().map(|i| i.state()).collect();
                if states.is_empty() {
                    ("stopped".into(), String::new())
                } else if let Some((_, e)) = states.iter().find(|(s, _)| s == "error") {
                    ("error".into(), e.clone())
                } else if states.iter().all(|(s, _)| s == "running") {
                    ("running".into(), String::new())
                } else {
                    ("starting".into(), String::new())
                }
            }
        };
        s.status = status;
        s.error = error;
        s.limits = m.limits.lock().unwrap_or_else(|e| e.into_inner()).describe(&self.inner.cgroups);
        s.isolation = self.isolation(&m.namespace);
        s
    }

    /// The isolation in force, as `micro status` shows it.
    pub(crate) fn isolation(&self, ns: &str) -> String {
        let egress = if ns == micro_core::namespace::DEFAULT && self.inner.firewall.is_on() {
            "egress: not filtered (namespace micro's code is the operators')".to_string()
        } else {
            self.inner.firewall.describe(self.inner.sandbox.known_uid(ns))
        };
        format!("{}; limits: {}; {egress}", self.inner.sandbox.describe(ns), self.inner.cgroups.describe())
    }

    /// Whether namespace `ns`'s connections are filtered: tenants' are where the filter
    /// works; the operators' (namespace micro's code, trusted as the server is) never.
    fn filtered(&self, ns: &str) -> bool {
        self.inner.firewall.is_on() && ns != micro_core::namespace::DEFAULT
    }

    /// Gives namespace `ns`'s user egress `egress` (nothing to do without a filter).
    async fn egress(&self, ns: &str, egress: firewall::Egress) -> Result<(), Status> {
        if !self.filtered(ns) {
            return Ok(());
        }
        match self.inner.sandbox.owner(ns) {
            Ok(Some((uid, _))) => self.inner.firewall.apply(uid, egress).await,
            Ok(None) => Ok(()),
            Err(e) => Err(Status::internal(ID, format!("no user for namespace {ns}: {e}"))),
        }
    }

    fn set_phase(m: &Managed, status: &str, error: &str) {
        *m.phase.lock().unwrap_or_else(|e| e.into_inner()) = Some((status.to_string(), error.to_string()));
        m.spec.lock().unwrap_or_else(|e| e.into_inner()).updated = micro_core::store::now_ms() as i64;
    }

    fn spawn_deploy(&self, m: Arc<Managed>, spec: pb::Service, rolling: bool) {
        let rt = self.clone();
        let m2 = m.clone();
        let task = tokio::spawn(async move { rt.deploy(m2, spec, rolling).await });
        let mut deploys = m.deploys.lock().unwrap_or_else(|e| e.into_inner());
        deploys.retain(|d| !d.is_finished());
        deploys.push(task);
    }

    /// Builds `spec` (or finds its build) and brings the instances to it: fresh ones
    /// for a new service, a rolling replacement for an update.
    async fn deploy(&self, m: Arc<Managed>, spec: pb::Service, rolling: bool) {
        let _ops = m.ops.lock().await;
        if m.deleted.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let built = self.build(&m, &spec).await;
        let (version, root, artifact, build_note) = match built {
            Ok(b) => b,
            Err(e) => {
                m.build_log.line("build", &format!("[runtime] {}", e.detail()));
                tracing::warn!(service = %m.name, namespace = %m.namespace, error = %e.detail(), "build failed");
                Self::set_phase(&m, "error", e.detail());
                let mut s = m.spec.lock().unwrap_or_else(|e| e.into_inner());
                s.build = "failed".into();
                return;
            }
        };
        if m.deleted.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let mut spec = spec;
        spec.version = version.clone();
        spec.build = build_note;
        spec.updated = micro_core::store::now_ms() as i64;
        let _ = self.persist(&m, &spec).await;
        {
            let mut s = m.spec.lock().unwrap_or_else(|e| e.into_inner());
            *s = spec.clone();
        }
        // A deploy begun before its namespace was suspended starts nothing after.
        if let Ok(Some(reason)) = self.suspended(&m.namespace).await {
            Self::set_phase(&m, "suspended", &reason);
            return;
        }
        Self::set_phase(&m, "starting", "");
        let secret = {
            let mut guard = m.secret.lock().await;
            match guard.as_ref() {
                Some(s) => s.clone(),
                None => match self.inner.auth.service_account(&m.namespace, &account_id(&m.name)).await {
                    Ok(s) => {
                        *guard = Some(s.clone());
                        s
                    }
                    Err(e) => {
                        Self::set_phase(&m, "error", &format!("creating its service account: {}", e.detail()));
                        return;
                    }
                },
            }
        };
        let mut env: Vec<(String, String)> = spec.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        for (var, path) in &spec.secrets {
            match self.inner.secrets.get(&m.namespace, path, true).await {
                Ok(Some(serde_json::Value::String(v))) => env.push((var.clone(), v)),
                Ok(Some(v)) => env.push((var.clone(), v.to_string())),
                Ok(None) => {
                    Self::set_phase(
                        &m,
                        "error",
                        &format!("secret {var}: no config value at {path} in {}", m.namespace),
                    );
                    return;
                }
                Err(e) => {
                    Self::set_phase(&m, "error", &format!("secret {var}: {}", e.detail()));
                    return;
                }
            }
        }
        // Over TLS, services trust the server's CA (the PEM itself: the sandbox hides the data dir).
        let server = if self.inner.tls {
            if let Some(ca) = &self.inner.ca {
                env.push((micro::tls::CA_ENV.to_string(), ca.clone()));
            }
            format!("https://{}", self.inner.server)
        } else {
            self.inner.server.clone()
        };
        env.extend([
            ("MICRO_SERVER".to_string(), server),
            ("MICRO_NAMESPACE".to_string(), m.namespace.clone()),
            ("MICRO_AUTH_ID".to_string(), account_id(&m.name)),
            ("MICRO_AUTH_SECRET".to_string(), secret),
        ]);
        if self.inner.config.host != "127.0.0.1" {
            // Reachable from the other nodes: framework services listen on the host.
            env.push(("MICRO_SERVICE_ADDRESS".to_string(), format!("{}:0", self.inner.config.host)));
        }
        // Calls to other services go through the proxy: the packet filter lets the code
        // reach nothing else of the host's.
        if self.filtered(&m.namespace) {
            env.push(("MICRO_CALLS".to_string(), "proxy".to_string()));
        }
        // The namespace's quota as it is now (a plan changed since holds from this start).
        let quota = match quota::Quota::of(self.inner.secrets.as_ref(), &m.namespace).await {
            Ok(q) => q,
            Err(e) => {
                Self::set_phase(&m, "error", e.detail());
                return;
            }
        };
        let limits = quota.limits(spec.memory);
        if let Err(e) = self.egress(&m.namespace, quota.egress()).await {
            Self::set_phase(&m, "error", e.detail());
            return;
        }
        *m.limits.lock().unwrap_or_else(|e| e.into_inner()) = limits;
        let launch = Arc::new(Launch {
            namespace: m.namespace.clone(),
            name: m.name.clone(),
            version,
            root,
            artifact,
            env,
            limits,
            cgroups: self.inner.cgroups.clone(),
            metadata: spec.metadata.clone().into_iter().collect(),
            registry: self.inner.registry.clone(),
            log: m.log.clone(),
            run_dir: self.inner.dir.join("run").join(&m.namespace).join(&m.name),
            host: self.inner.config.host.clone(),
            local_nodes: self.inner.local_nodes.clone(),
            sandbox: self.inner.sandbox.clone(),
        });
        let old = m.instances.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let want = spec.instances.max(1) as usize;
        if !rolling || old.is_empty() {
            let fresh: Vec<_> = (0..want).map(|_| Instance::start(launch.clone())).collect();
            *m.instances.lock().unwrap_or_else(|e| e.into_inner()) = fresh;
            *m.phase.lock().unwrap_or_else(|e| e.into_inner()) = None;
            futures::future::join_all(old.iter().map(|i| i.stop())).await;
            tracing::info!(service = %m.name, namespace = %m.namespace, instances = want, "started");
            return;
        }
        // Rolling: each new instance is ready before an old one goes.
        Self::set_phase(&m, "updating", "");
        let mut old = old;
        for n in 0..want {
            let new = Instance::start(launch.clone());
            m.instances.lock().unwrap_or_else(|e| e.into_inner()).push(new.clone());
            if let Err(reason) = new.wait_ready(Duration::from_secs(120)).await {
                new.stop().await;
                m.instances.lock().unwrap_or_else(|e| e.into_inner()).retain(|i| !Arc::ptr_eq(i, &new));
                Self::set_phase(&m, "error", &format!("update failed, the previous version keeps running: {reason}"));
                return;
            }
            if n < old.len() {
                let gone = old.remove(0);
                m.instances.lock().unwrap_or_else(|e| e.into_inner()).retain(|i| !Arc::ptr_eq(i, &gone));
                gone.stop().await;
            }
        }
        for gone in old {
            m.instances.lock().unwrap_or_else(|e| e.into_inner()).retain(|i| !Arc::ptr_eq(i, &gone));
            gone.stop().await;
        }
        *m.phase.lock().unwrap_or_else(|e| e.into_inner()) = None;
        tracing::info!(service = %m.name, namespace = %m.namespace, "updated");
        self.prune_builds(&m, &launch.version);
    }

    /// The build of `spec`: kept from before when there is one, else made now.
    async fn build(&self, m: &Managed, spec: &pb::Service) -> Result<(String, PathBuf, Artifact, String), Status> {
        let builds = self.inner.dir.join("builds").join(&m.namespace).join(&m.name);
        // A known version (a restart) or an upload names its build before any work.
        let known = if !spec.version.is_empty() {
            Some(spec.version.clone())
        } else if !spec.upload.is_empty() {
            Some(spec.upload[..16].to_string())
        } else {
            None
        };
        if let Some(v) = &known
            && let Some(a) = read_artifact(&builds.join(v))
        {
            self.adopt(&builds.join(v), &m.namespace);
            return Ok((v.clone(), builds.join(v), a, "cached".into()));
        }
        Self::set_phase(m, "building", "");
        m.build_log.clear();
        let _one = self.inner.building.lock().await;
        let work = self.inner.dir.join("work").join(&m.namespace).join(&m.name);
        let entry = source::check_entry(&spec.entrypoint)?;
        let src = work.join("src");
        let caller = Caller::of_owner(&m.owner.lock().unwrap_or_else(|e| e.into_inner()).clone());
        // The work dir is the sandbox's to change; no sandboxed process runs now (builds
        // run one at a time and die with their sandbox), so handing it over is safe.
        let hand_over = |dir: &Path| {
            self.inner
                .sandbox
                .hand_over(dir, &m.namespace)
                .map_err(|e| Status::internal(ID, format!("handing {} to the sandbox: {e}", dir.display())))
        };
        std::fs::create_dir_all(&work).map_err(|e| Status::internal(ID, format!("{}: {e}", work.display())))?;
        clear_dir(&src)?;
        hand_over(&work)?;
        // Fetches and builds connect as the namespace's code does.
        let egress = quota::Quota::of(self.inner.secrets.as_ref(), &m.namespace).await?.egress();
        self.egress(&m.namespace, egress).await?;
        let version = match source::parse(&spec.source, &spec.upload, self.inner.config.repo.as_deref())? {
            source::Source::Upload(id) => {
                m.build_log.line("build", &format!("[runtime] unpacking {}", spec.source));
                self.fetch_upload(&id).await?;
                let archive = self.upload_path(&id);
                let dest = src.clone();
                tokio::task::spawn_blocking(move || source::unpack(&archive, &dest))
                    .await
                    .map_err(|e| Status::internal(ID, e.to_string()))??;
                hand_over(&src)?;
                id[..16].to_string()
            }
            source::Source::Git { url, reference, path, configured } => {
                m.build_log.line(
                    "build",
                    &format!(
                        "[runtime] cloning {url}{}",
                        reference.as_deref().map(|r| format!(" at {r}")).unwrap_or_default()
                    ),
                );
                let token = self.git_token(m, &url).await;
                let commit = if configured || caller.as_ref().is_some_and(|c| c.operator) {
                    let commit =
                        source::clone(&url, reference.as_deref(), &src, token.as_deref(), source::Confine::Server)
                            .await?;
                    hand_over(&src)?;
                    commit
                } else {
                    // Checked again: the host's addresses may have changed since.
                    let remote = egress::check(&url, &self.inner.allowed).await?;
                    let confine = source::Confine::Sandbox {
                        sandbox: &self.inner.sandbox,
                        namespace: &m.namespace,
                        remote: &remote,
                        work: &work,
                    };
                    source::clone(&url, reference.as_deref(), &src, token.as_deref(), confine).await?
                };
                if !path.is_empty() && spec.entrypoint.is_empty() {
                    // The sub-folder named in the URL.
                    let dir = src.join(source::check_entry(&path)?);
                    return self.finish_build(m, &builds, &commit[..12], &dir, &work).await;
                }
                commit[..12].to_string()
            }
        };
        let dir = src.join(entry);
        self.finish_build(m, &builds, &version, &dir, &work).await
    }

    /// Where each namespace's build time is counted, by month (`<namespace>/<YYYY-MM>`:
    /// milliseconds).
    fn suspended_table() -> Table {
        Table::new("runtime", "suspended")
    }

    /// Why namespace `ns` is suspended, if it is.
    async fn suspended(&self, ns: &str) -> Result<Option<String>, Status> {
        match self.inner.db.read(&Self::suspended_table(), ns, &Query::default()).await {
            Ok(r) => Ok(r.first().map(|r| String::from_utf8_lossy(&r.value).into_owned())),
            Err(e) if e.code() == Code::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Refuses to start anything in a suspended namespace.
    async fn not_suspended(&self, ns: &str) -> Result<(), Status> {
        match self.suspended(ns).await? {
            Some(reason) => Err(Status::new(
                Code::FailedPrecondition,
                ID,
                format!("namespace {ns} is suspended ({reason}): its services start again once that is settled"),
            )),
            None => Ok(()),
        }
    }

    /// Stops every service of `ns` without forgetting them (`on`), or brings them back:
    /// a namespace whose bill is unpaid. Their runs end and begin again with it. Returns
    /// the services.
    pub(crate) async fn suspend(&self, ns: &str, on: bool, reason: &str) -> Result<Vec<String>, Status> {
        micro_core::namespace::validate(ns)?;
        let list: Vec<Arc<Managed>> = {
            let services = self.inner.services.lock().unwrap_or_else(|e| e.into_inner());
            services.values().filter(|m| m.namespace == ns).cloned().collect()
        };
        let was = self.suspended(ns).await?;
        if on {
            let reason = if reason.is_empty() { "suspended by the platform's operators" } else { reason };
            // Kept first: a restart in between keeps them stopped.
            let record = Record::new(ns, reason.as_bytes().to_vec());
            self.inner.db.write(&Self::suspended_table(), &record, None).await?;
            for m in &list {
                Self::halt(m).await;
                self.run_ended(ns, &m.name, micro_core::time::clock()).await;
                Self::set_phase(m, "suspended", reason);
            }
            tracing::warn!(namespace = ns, reason, services = list.len(), "namespace suspended");
        } else if was.is_some() {
            for m in &list {
                let since = micro_core::time::clock();
                m.since.store(since, std::sync::atomic::Ordering::SeqCst);
                let spec = m.spec.lock().unwrap_or_else(|e| e.into_inner()).clone();
                self.persist(m, &spec).await?;
                self.run_started(ns, &m.name, since).await;
                Self::set_phase(m, "pending", "");
                self.spawn_deploy(m.clone(), spec, false);
            }
            self.inner.db.delete(&Self::suspended_table(), ns).await?;
            tracing::info!(namespace = ns, services = list.len(), "namespace brought back");
        }
        let mut names: Vec<String> = list.iter().map(|m| m.name.clone()).collect();
        names.sort();
        Ok(names)
    }

    /// Records that service `name` of `ns` runs since `from` (billing's service-hours);
    /// the same run recorded again is the same record.
    async fn run_started(&self, ns: &str, name: &str, from: u64) {
        let run = micro_core::meter::ServiceRun { service: name.to_string(), from, to: None };
        let key = micro_core::meter::run_key(ns, name, from);
        let write = match serde_json::to_vec(&run) {
            Ok(v) => self.inner.db.write(&micro_core::meter::runs_table(), &Record::new(key, v), None).await,
            Err(e) => Err(Status::internal(ID, e.to_string())),
        };
        if let Err(e) = write {
            tracing::error!(service = name, namespace = ns, error = %e, "recording the start of a run failed");
        }
    }

    /// Ends every open run of service `name` of `ns` at `at`.
    async fn run_ended(&self, ns: &str, name: &str, at: u64) {
        let table = micro_core::meter::runs_table();
        let prefix = micro_core::meter::runs_prefix(ns, Some(name));
        let runs = match self.inner.db.read(&table, &prefix, &Query { prefix: true, ..Query::default() }).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(service = name, namespace = ns, error = %e, "reading the runs to end failed");
                return;
            }
        };
        for r in runs {
            let Ok(mut run) = serde_json::from_slice::<micro_core::meter::ServiceRun>(&r.value) else { continue };
            if run.to.is_some() {
                continue;
            }
            run.to = Some(at.max(run.from));
            let write = match serde_json::to_vec(&run) {
                Ok(v) => self.inner.db.write(&table, &Record::new(r.key, v), None).await,
                Err(e) => Err(Status::internal(ID, e.to_string())),
            };
            if let Err(e) = write {
                tracing::error!(service = name, namespace = ns, error = %e, "recording the end of a run failed");
            }
        }
    }

    fn builds_table() -> Table {
        Table::new("runtime", "build-time")
    }

    /// The build time namespace `ns` used in `month` (`YYYY-MM`; none when it cannot be
    /// read).
    pub(crate) async fn build_time(&self, ns: &str, month: &str) -> Duration {
        let read = self.inner.db.read(&Self::builds_table(), &format!("{ns}/{month}"), &Query::default()).await;
        let ms = read.ok().and_then(|r| r.first().and_then(|r| std::str::from_utf8(&r.value).ok()?.parse().ok()));
        Duration::from_millis(ms.unwrap_or(0))
    }

    /// Counts `spent` more build time of namespace `ns` in `month` (which had `used`).
    /// Builds run one at a time (on one node of a cluster), so nothing counts in between.
    async fn add_build_time(&self, ns: &str, month: &str, used: Duration, spent: Duration) {
        let total = (used + spent).as_millis().to_string();
        let record = Record::new(format!("{ns}/{month}"), total.into_bytes());
        if let Err(e) = self.inner.db.write(&Self::builds_table(), &record, None).await {
            tracing::warn!(namespace = ns, error = %e, "counting build time failed");
        }
    }

    /// Hands a kept build made before the sandbox (the server's own) to the sandbox user,
    /// so its instances may write in their folder as new builds' do. Safe while its
    /// instances run: none can change the tree before the walk has left it (the walk
    /// hands a folder over after everything in it).
    fn adopt(&self, build: &Path, ns: &str) {
        if let Err(e) = sandbox::hand_over_once(&self.inner.sandbox, build, ns) {
            tracing::warn!(build = %build.display(), error = %e, "handing a kept build to the sandbox failed");
        }
    }

    /// The owner's own token for the URL's host (`micro user config set
    /// git.credentials.HOST`), if any: read server-side, from the account that created
    /// or last updated the service.
    async fn git_token(&self, m: &Managed, url: &str) -> Option<String> {
        let host = source::http_host(url)?;
        let (ns, account) = m.owner.lock().unwrap_or_else(|e| e.into_inner()).clone()?;
        match self.inner.auth.setting(&ns, &account, &format!("git.credentials.{host}")).await {
            Ok(token) => token,
            Err(e) => {
                tracing::warn!(service = %m.name, namespace = %m.namespace, error = %e.detail(), "reading git credentials");
                None
            }
        }
    }

    /// Keeps the running build and the newest other one (to go back to); removes older
    /// builds of the service, and uploads no service uses that are over an hour old.
    fn prune_builds(&self, m: &Managed, running: &str) {
        let dir = self.inner.dir.join("builds").join(&m.namespace).join(&m.name);
        let Ok(entries) = std::fs::read_dir(&dir) else { return };
        let mut builds: Vec<(std::time::SystemTime, PathBuf)> = entries
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.') && e.file_name() != *running)
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        builds.sort();
        builds.pop(); // the newest other build stays
        for (_, old) in builds {
            if let Err(e) = std::fs::remove_dir_all(&old) {
                tracing::warn!(path = %old.display(), error = %e, "removing an old build failed");
            }
        }
        let used: std::collections::HashSet<String> = self
            .inner
            .services
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|m| m.spec.lock().unwrap_or_else(|e| e.into_inner()).upload.clone())
            .collect();
        let Ok(uploads) = std::fs::read_dir(self.upload_dir()) else { return };
        for e in uploads.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let Some(id) = name.strip_suffix(".tar.gz") else { continue };
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > Duration::from_secs(3600)));
            if old && !used.contains(id) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    async fn finish_build(
        &self,
        m: &Managed,
        builds: &Path,
        version: &str,
        dir: &Path,
        work: &Path,
    ) -> Result<(String, PathBuf, Artifact, String), Status> {
        let out = builds.join(version);
        if let Some(a) = read_artifact(&out) {
            self.adopt(&out, &m.namespace);
            return Ok((version.to_string(), out, a, "cached".into()));
        }
        let tmp = builds.join(format!(".{version}.tmp"));
        clear_dir(&tmp)?;
        std::fs::create_dir_all(&tmp).map_err(|e| Status::internal(ID, e.to_string()))?;
        let job = Job {
            namespace: &m.namespace,
            dir,
            work,
            out: &tmp,
            log: &m.build_log,
            pidfile: self.inner.dir.join("run").join(&m.namespace).join(&m.name).join("build.pid"),
        };
        // Held to the namespace's build minutes (what is left of them this month) and to
        // the server's longest build; stopped (its processes killed) past either.
        let now = micro_core::store::now_ms();
        let month = micro_core::time::month(now);
        let used = self.build_time(&m.namespace, &month).await;
        let quota = quota::Quota::of(self.inner.secrets.as_ref(), &m.namespace).await?;
        let left = quota.builds_left(&m.namespace, used, now)?;
        let limit = left.map_or(self.inner.config.build_timeout, |l| l.min(self.inner.config.build_timeout));
        let started = std::time::Instant::now();
        let built = tokio::time::timeout(limit, self.inner.builder.build(&job)).await;
        self.add_build_time(&m.namespace, &month, used, started.elapsed()).await;
        let mut artifact = match built {
            Ok(built) => built?,
            Err(_) if left.is_some_and(|l| l <= self.inner.config.build_timeout) => {
                let refused = quota.builds_left(&m.namespace, used + limit, now).err();
                let why = refused.map(|e| e.detail().to_string()).unwrap_or_default();
                return Err(Status::new(
                    Code::ResourceExhausted,
                    ID,
                    format!("the build was stopped after {}s: {why}", limit.as_secs()),
                ));
            }
            Err(_) => {
                return Err(Status::new(
                    Code::DeadlineExceeded,
                    ID,
                    format!(
                        "the build was stopped after {}s, the longest a build may take here (MICRO_RUNTIME_BUILD_TIMEOUT)",
                        limit.as_secs()
                    ),
                ));
            }
        };
        // Runs from the build: cargo's binary is in bin/; others run in their tree, moved in.
        let rel_dir = dir.strip_prefix(work).unwrap_or(dir).to_path_buf();
        if artifact.kind != "cargo" {
            let moved = tmp.join("src");
            std::fs::rename(work.join("src"), &moved).map_err(|e| Status::internal(ID, e.to_string()))?;
            if artifact.kind == "binary" {
                let file = Path::new(&artifact.command[0]).file_name().unwrap_or_default().to_owned();
                artifact.command = vec![rel_dir.join(file).to_string_lossy().to_string()];
            }
            artifact.cwd = rel_dir;
        } else {
            let bin = Path::new(&artifact.command[0]).strip_prefix(&tmp).map(Path::to_path_buf).unwrap_or_default();
            artifact.command = vec![bin.to_string_lossy().to_string()];
            artifact.cwd = PathBuf::from(".");
        }
        // The build is the service's to change when it runs (apps write in their folder),
        // its description excepted (written after, the server's, shown read-only).
        self.inner
            .sandbox
            .hand_over(&tmp, &m.namespace)
            .map_err(|e| Status::internal(ID, format!("handing {} to the sandbox: {e}", tmp.display())))?;
        let json = serde_json::to_vec_pretty(&artifact).map_err(|e| Status::internal(ID, e.to_string()))?;
        // The folder is the tenant's now: never through a link it may have left there.
        let description = tmp.join("artifact.json");
        let written = match std::fs::remove_file(&description) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&description)
                .and_then(|mut f| std::io::Write::write_all(&mut f, &json)),
        };
        written.map_err(|e| Status::internal(ID, format!("{}: {e}", description.display())))?;
        clear_dir(&out)?;
        std::fs::rename(&tmp, &out).map_err(|e| Status::internal(ID, e.to_string()))?;
        let note = format!("{} {:.1}s", artifact.kind, artifact.build_ms as f64 / 1000.0);
        m.build_log.line("build", &format!("[runtime] built {version} ({note})"));
        Ok((version.to_string(), out, artifact, note))
    }
}

/// The service account a runtime service runs as.
/// Resolves once the server is stopping.
async fn stopped(rx: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

pub(crate) fn account_id(name: &str) -> String {
    format!("runtime-{name}")
}

fn read_artifact(dir: &Path) -> Option<Artifact> {
    serde_json::from_slice(&std::fs::read(dir.join("artifact.json")).ok()?).ok()
}

fn clear_dir(p: &Path) -> Result<(), Status> {
    match std::fs::remove_dir_all(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Status::internal(ID, format!("clearing {}: {e}", p.display()))),
    }
}

/// What is kept per service in `runtime.db`.
#[derive(serde::Serialize, serde::Deserialize)]
struct Stored {
    namespace: String,
    name: String,
    source: String,
    #[serde(default)]
    upload: String,
    #[serde(default)]
    entrypoint: String,
    /// `--env` in plain text: only in records from before they were sealed.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    env: std::collections::BTreeMap<String, String>,
    /// `--env`, sealed (see [`crate::sealed`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sealed_env: Option<serde_json::Value>,
    #[serde(default)]
    instances: u32,
    #[serde(default)]
    memory: u64,
    #[serde(default)]
    metadata: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    secrets: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    version: String,
    #[serde(default)]
    build: String,
    #[serde(default)]
    updated: i64,
    #[serde(default)]
    owner: Option<(String, String)>,
    /// When its current run began (clock seconds; see [`micro_core::meter`]).
    #[serde(default)]
    since: u64,
}

impl Stored {
    fn from_pb(ns: &str, s: &pb::Service) -> Stored {
        Stored {
            namespace: ns.to_string(),
            name: s.name.clone(),
            source: s.source.clone(),
            upload: s.upload.clone(),
            entrypoint: s.entrypoint.clone(),
            env: s.env.clone().into_iter().collect(),
            instances: s.instances,
            memory: s.memory,
            metadata: s.metadata.clone().into_iter().collect(),
            secrets: s.secrets.clone().into_iter().collect(),
            version: s.version.clone(),
            build: s.build.clone(),
            updated: s.updated,
            owner: None,
            sealed_env: None,
            since: 0,
        }
    }

    fn into_pb(self) -> pb::Service {
        pb::Service {
            name: self.name,
            source: self.source,
            upload: self.upload,
            entrypoint: self.entrypoint,
            env: self.env.into_iter().collect(),
            instances: self.instances,
            memory: self.memory,
            metadata: self.metadata.into_iter().collect(),
            secrets: self.secrets.into_iter().collect(),
            version: self.version,
            build: self.build,
            updated: self.updated,
            ..Default::default()
        }
    }
}
