//! Web app hosting, a product of the platform: a namespace's static sites (a single-page
//! app's `dist/`), deployed as a tar archive (`micro app deploy ./dist --name shop`),
//! served on their own host — `<name>.<namespace>.<hosting domain>` and any custom domain
//! claimed for the name — and, sandboxed, under `/apps/<name>/` of the gateway.
//!
//! A deploy is atomic: its files are stored first (blobs of the namespace, bucket `apps`,
//! under `<name>/<deploy>/`), then the app's record names it in one write. Rolling back
//! names a previous deploy again, at once. A preview deploy is stored but not made
//! current: it is served at `<name>--<deploy>` (host or path) until deleted. The last
//! [`KEEP`] deploys of an app are kept.

mod service;

use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderValue, Method, Response, StatusCode, header};
use micro::auth::Caller;
use micro_core::auth::AccountType;
use micro_core::blob::Blob;
use micro_core::store::{Query, Store, Table};
use micro_core::{Code, Status};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use micro::json_error as error;
pub use micro::web::Body;
use micro::web::reply;
pub use service::{
    DeployReply, DeployRequest, Empty, GetReply, ListReply, NameRequest, RollbackRequest, UPLOADS, service_with,
};

/// The product's name: its table, and the first segment of its paths.
pub const NAME: &str = "apps";

/// The blob bucket of a namespace that holds its sites.
pub const BUCKET: &str = "apps";

/// Where the product keeps namespace `ns`'s data in its table.
pub fn tenant_prefix(ns: &str) -> String {
    format!("{ns}/")
}

/// The most bytes a deploy's files hold together.
pub const MAX_SITE: u64 = 100 << 20;

/// The most files a deploy has.
pub const MAX_FILES: usize = 5000;

/// How many deploys of an app are kept (the current one, the previews and the ones to roll
/// back to).
pub const KEEP: usize = 10;

/// How long a node serves an app's current deploy before looking again (a deploy or a
/// rollback on another node shows within it).
const FRESH: Duration = Duration::from_secs(1);

/// An app: its current deploy, and the ones before it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct App {
    /// Its name (its host's first label).
    pub name: String,
    /// The deploy it serves.
    pub current: Option<String>,
    /// The deploys it served before, the latest last (what a rollback goes back to).
    #[serde(default)]
    pub history: Vec<String>,
    /// When it was made (Unix seconds).
    pub created: u64,
    /// When its current deploy last changed.
    pub updated: u64,
}

/// A deploy of an app.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct Deploy {
    /// Its id.
    pub id: String,
    /// The app.
    pub app: String,
    /// How many files it has.
    pub files: usize,
    /// The bytes they hold.
    pub size: u64,
    /// Whether it is a preview (never made current by its deploy).
    pub preview: bool,
    /// Who deployed it.
    pub by: String,
    /// When (Unix seconds).
    pub created: u64,
}

/// A file of a deploy.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
struct Entry {
    size: u64,
    #[serde(rename = "type")]
    content_type: String,
    sha256: String,
}

type Manifest = BTreeMap<String, Entry>;

/// Apps as last read, by namespace and name, with when.
type AppCache = HashMap<(String, String), (Instant, Option<App>)>;

/// Deploys' manifests, by namespace, app and deploy.
type ManifestCache = HashMap<(String, String, String), Arc<Manifest>>;

/// Small files of deploys (they never change), by namespace, app, deploy and path; and
/// how many bytes they hold.
#[derive(Default)]
struct ContentCache {
    files: HashMap<(String, String, String, String), Bytes>,
    bytes: usize,
}

/// The largest file kept in memory, and the most bytes kept in all.
const CACHED_FILE: u64 = 256 * 1024;
const CACHED_BYTES: usize = 64 * 1024 * 1024;

fn bad(detail: impl Into<String>) -> Status {
    Status::new(Code::InvalidArgument, NAME, detail)
}

fn denied(detail: impl Into<String>) -> Status {
    Status::new(Code::PermissionDenied, NAME, detail)
}

fn no_app(name: &str) -> Status {
    Status::new(Code::NotFound, NAME, format!("no app {name}"))
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn random_id() -> Result<String, Status> {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut bytes = [0u8; 10];
    getrandom::fill(&mut bytes).map_err(|e| Status::internal(NAME, format!("randomness: {e}")))?;
    Ok(bytes.iter().map(|b| ALPHABET[(*b as usize) % ALPHABET.len()] as char).collect())
}

/// An app's name: 1 to 40 lowercase letters, digits and single hyphens inside (it is a
/// host's label; `--` separates a preview's deploy).
pub fn valid_name(name: &str) -> bool {
    (1..=40).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--")
}

fn check_name(name: &str) -> Result<(), Status> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(bad(format!("{name:?} is not an app name: 1 to 40 lowercase letters, digits and single hyphens")))
    }
}

fn valid_deploy(id: &str) -> bool {
    id.len() == 10 && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// An app and, for a preview, its deploy: `shop` or `shop--k3q9x0abcd`.
pub fn site_of(label: &str) -> Option<(&str, Option<&str>)> {
    match label.split_once("--") {
        Some((name, deploy)) if valid_name(name) && valid_deploy(deploy) => Some((name, Some(deploy))),
        Some(_) => None,
        None if valid_name(label) => Some((label, None)),
        None => None,
    }
}

/// The path of an archive's entry as a site's file (`assets/app.js`), refused when it is
/// not plainly inside the site.
fn site_path(raw: &[u8]) -> Result<Option<String>, Status> {
    let text = std::str::from_utf8(raw).map_err(|_| bad("an archive's paths are UTF-8"))?;
    let trimmed = text.strip_prefix("./").unwrap_or(text);
    if trimmed.is_empty() || trimmed == "." {
        return Ok(None);
    }
    if trimmed.starts_with('/') || trimmed.contains('\\') || trimmed.chars().any(char::is_control) {
        return Err(bad(format!("{text:?}: an archive's paths are relative, without backslashes")));
    }
    let mut parts = Vec::new();
    for part in trimmed.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(bad(format!("{text:?}: an archive's paths stay inside it (no ..)"))),
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return Ok(None);
    }
    let path = parts.join("/");
    if path.len() > 512 {
        return Err(bad(format!("{text:?}: a path is at most 512 bytes")));
    }
    Ok(Some(path))
}

/// A site's files from a tar archive (gzipped or not), refused whole when any entry is
/// a link, a device, a path outside the site, or past the limits.
fn unpack(archive: &[u8]) -> Result<BTreeMap<String, Vec<u8>>, Status> {
    let gz = archive.starts_with(&[0x1f, 0x8b]);
    let reader: Box<dyn std::io::Read> = if gz {
        // A bound on what it inflates to: a small bomb stops at the site's limit.
        Box::new(std::io::Read::take(flate2::read::GzDecoder::new(archive), MAX_SITE + (MAX_FILES as u64 + 2) * 1024))
    } else {
        Box::new(archive)
    };
    let mut tar = tar::Archive::new(reader);
    let mut files = BTreeMap::new();
    let mut total = 0u64;
    let entries = tar.entries().map_err(|e| bad(format!("not a tar archive: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(format!("the archive is damaged: {e}")))?;
        let kind = entry.header().entry_type();
        let raw = entry.path_bytes().into_owned();
        let path = site_path(&raw)?;
        if kind.is_dir() {
            continue;
        }
        if !kind.is_file() {
            let shown = String::from_utf8_lossy(&raw);
            return Err(bad(format!("{shown:?}: a site's archive holds files and directories only (no links)")));
        }
        let Some(path) = path else { continue };
        let size = entry.header().size().map_err(|e| bad(format!("the archive is damaged: {e}")))?;
        total += size;
        if total > MAX_SITE {
            return Err(Status::new(Code::ResourceExhausted, NAME, format!("a site is at most {MAX_SITE} bytes"))
                .with_http_status(413));
        }
        if files.len() >= MAX_FILES {
            return Err(bad(format!("a site has at most {MAX_FILES} files")));
        }
        let mut data = Vec::with_capacity(size as usize);
        std::io::Read::read_to_end(&mut entry, &mut data).map_err(|e| bad(format!("the archive is damaged: {e}")))?;
        if files.insert(path.clone(), data).is_some() {
            return Err(bad(format!("{path:?} is in the archive twice")));
        }
    }
    if files.is_empty() {
        return Err(bad("the archive holds no files"));
    }
    Ok(files)
}

/// A file's content type by its name.
fn content_type(path: &str) -> String {
    let guess = mime_guess::from_path(path).first_raw().unwrap_or("application/octet-stream");
    let text = guess.starts_with("text/") || guess == "application/javascript" || guess == "application/json";
    if text { format!("{guess}; charset=utf-8") } else { guess.to_string() }
}

/// Whether a file's name carries a hash of its content (`index-DjK3s9aB.js`,
/// `app.3f2a9c1e.css`): such a file never changes, so it is cached for a year.
fn hashed(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    let stem = name.rsplit_once('.').map_or(name, |(s, _)| s);
    let Some(part) = stem.rsplit(['.', '-']).next() else { return false };
    part.len() >= 8
        && part.len() <= 32
        && part != stem
        && part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && part.bytes().any(|b| b.is_ascii_digit())
}

/// Who calls, as far as apps go.
struct Who<'a> {
    caller: &'a Caller,
    ns: &'a str,
}

impl Who<'_> {
    /// The team's accounts that deploy: its admins and accounts with the data or
    /// developer scope.
    fn deployer(&self) -> Result<String, Status> {
        match &self.caller.account {
            Some(a) if a.kind != AccountType::App && a.may_use_data_of(self.ns) => Ok(a.id.clone()),
            None => Err(Status::new(Code::Unauthenticated, NAME, "sign in to deploy apps")),
            Some(_) => {
                Err(denied(format!("deploying the apps of namespace {} needs its data or developer scope", self.ns)))
            }
        }
    }

    /// Anybody of the namespace's team (viewers too).
    fn team(&self) -> Result<(), Status> {
        let ok = self.caller.is_operator()
            || self.caller.account.as_ref().is_some_and(|a| a.namespace == self.ns && a.kind != AccountType::App);
        if ok { Ok(()) } else { Err(denied("the namespace's apps are its team's to see")) }
    }
}

/// The apps product.
#[derive(Clone)]
pub struct Apps {
    store: Arc<dyn Store>,
    blob: Arc<dyn Blob>,
    table: Table,
    /// Apps as last read, by namespace and name, with when.
    apps: Arc<Mutex<AppCache>>,
    /// Deploys' manifests (they never change), by namespace, app and deploy.
    manifests: Arc<Mutex<ManifestCache>>,
    /// Deploys' small files, served from memory.
    contents: Arc<Mutex<ContentCache>>,
    /// Deploys under way on this node at once (each holds its archive and files).
    deploying: Arc<tokio::sync::Semaphore>,
}

impl Apps {
    /// Apps kept in `store` (the product's table of the `micro` namespace) and `blob`
    /// (each namespace's `apps` bucket).
    pub fn new(store: Arc<dyn Store>, blob: Arc<dyn Blob>) -> Apps {
        Apps {
            store,
            blob,
            table: Table::new(micro_core::namespace::DEFAULT, NAME),
            apps: Default::default(),
            manifests: Default::default(),
            contents: Default::default(),
            deploying: Arc::new(tokio::sync::Semaphore::new(2)),
        }
    }

    async fn read_json<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>, Status> {
        micro_core::store::read_json(self.store.as_ref(), &self.table, key).await
    }

    async fn write_json<T: Serialize>(&self, key: String, v: &T) -> Result<(), Status> {
        micro_core::store::write_json(self.store.as_ref(), &self.table, &key, v, None).await
    }

    async fn app(&self, ns: &str, name: &str) -> Result<Option<App>, Status> {
        let app = self.read_json::<App>(&format!("{ns}/app/{name}")).await?;
        self.apps
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((ns.to_string(), name.to_string()), (Instant::now(), app.clone()));
        Ok(app)
    }

    /// The app `name` of `ns` as read within the last second.
    async fn app_fresh(&self, ns: &str, name: &str) -> Result<Option<App>, Status> {
        if let Some(app) = self.cached(ns, name) {
            return Ok(app);
        }
        self.app(ns, name).await
    }

    /// The app as read within the last second, if it was.
    fn cached(&self, ns: &str, name: &str) -> Option<Option<App>> {
        let mut apps = self.apps.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, app)) = apps.get(&(ns.to_string(), name.to_string()))
            && at.elapsed() < FRESH
        {
            return Some(app.clone());
        }
        if apps.len() > 10_000 {
            apps.clear();
        }
        None
    }

    /// Whether namespace `ns` has an app `label` names (`shop`, or a preview's
    /// `shop--<deploy>`): what a host routes to.
    pub async fn hosts(&self, ns: &str, label: &str) -> bool {
        match site_of(label) {
            Some((name, _)) => matches!(self.app_fresh(ns, name).await, Ok(Some(_))),
            None => false,
        }
    }

    async fn deploy_of(&self, ns: &str, app: &str, id: &str) -> Result<Option<Deploy>, Status> {
        self.read_json(&format!("{ns}/deploy/{app}/{id}")).await
    }

    async fn deploys(&self, ns: &str, app: &str) -> Result<Vec<Deploy>, Status> {
        let keys = self
            .store
            .list(&self.table, &format!("{ns}/deploy/{app}/"), &Query { prefix: true, ..Default::default() })
            .await?;
        let mut all = Vec::new();
        for k in keys {
            if let Some(d) = self.read_json::<Deploy>(&k).await? {
                all.push(d);
            }
        }
        all.sort_by(|a, b| b.created.cmp(&a.created).then_with(|| b.id.cmp(&a.id)));
        Ok(all)
    }

    async fn manifest(&self, ns: &str, app: &str, deploy: &str) -> Result<Arc<Manifest>, Status> {
        let key = (ns.to_string(), app.to_string(), deploy.to_string());
        let known = self.manifests.lock().unwrap_or_else(|e| e.into_inner()).get(&key).cloned();
        if let Some(m) = known {
            return Ok(m);
        }
        let (_, chunks) = self.blob.get(ns, BUCKET, &format!("{app}.manifest/{deploy}")).await?;
        let parts: Vec<Bytes> = chunks.collect::<Vec<_>>().await.into_iter().collect::<Result<_, _>>()?;
        let m: Manifest = serde_json::from_slice(&parts.concat()).map_err(|e| Status::internal(NAME, e.to_string()))?;
        let m = Arc::new(m);
        let mut cache = self.manifests.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() > 256 {
            cache.clear();
        }
        cache.insert(key, m.clone());
        Ok(m)
    }

    /// Deploys a site from a tar archive to app `name` of the caller's namespace: made
    /// current unless `preview`.
    async fn deploy(&self, who: &Who<'_>, name: &str, archive: Bytes, preview: bool) -> Result<(Deploy, App), Status> {
        check_name(name)?;
        let by = who.deployer()?;
        let _turn = self.deploying.acquire().await.map_err(|e| Status::internal(NAME, e.to_string()))?;
        let files = tokio::task::spawn_blocking(move || unpack(&archive))
            .await
            .map_err(|e| Status::internal(NAME, e.to_string()))??;
        let id = random_id()?;
        let ns = who.ns;
        let mut manifest = Manifest::new();
        let mut size = 0u64;
        // The files first: nothing names the deploy until all are stored.
        for (path, data) in files {
            let sha: String =
                <sha2::Sha256 as sha2::Digest>::digest(&data).iter().map(|b| format!("{b:02x}")).collect();
            let entry = Entry { size: data.len() as u64, content_type: content_type(&path), sha256: sha };
            size += entry.size;
            let key = format!("{name}/{id}/{path}");
            let data = Bytes::from(data);
            let stored = self
                .blob
                .put(ns, BUCKET, &key, &entry.content_type, Box::pin(futures::stream::once(async move { Ok(data) })))
                .await;
            if let Err(e) = stored {
                self.forget_deploy(ns, name, &id).await;
                return Err(e);
            }
            manifest.insert(path, entry);
        }
        let m = Bytes::from(serde_json::to_vec(&manifest).map_err(|e| Status::internal(NAME, e.to_string()))?);
        let key = format!("{name}.manifest/{id}");
        if let Err(e) = self
            .blob
            .put(ns, BUCKET, &key, "application/json", Box::pin(futures::stream::once(async move { Ok(m) })))
            .await
        {
            self.forget_deploy(ns, name, &id).await;
            return Err(e);
        }
        let deploy =
            Deploy { id: id.clone(), app: name.to_string(), files: manifest.len(), size, preview, by, created: now() };
        self.write_json(format!("{ns}/deploy/{name}/{id}"), &deploy).await?;
        let t = now();
        let mut app =
            self.app(ns, name).await?.unwrap_or(App { name: name.to_string(), created: t, ..Default::default() });
        if !preview {
            // The one write that makes it live.
            if let Some(old) = app.current.replace(id.clone()) {
                app.history.push(old);
            }
            app.updated = t;
            self.write_json(format!("{ns}/app/{name}"), &app).await?;
            self.apps.lock().unwrap_or_else(|e| e.into_inner()).remove(&(ns.to_string(), name.to_string()));
        } else if app.current.is_none() && app.history.is_empty() {
            // A first deploy that is a preview still makes the app (serving nothing yet).
            self.write_json(format!("{ns}/app/{name}"), &app).await?;
        }
        self.prune(ns, name, &app).await?;
        tracing::info!(service = NAME, namespace = %ns, app = %name, deploy = %id, preview, "an app was deployed");
        Ok((deploy, app))
    }

    /// Deletes the deploys past the last [`KEEP`], but never the current one.
    async fn prune(&self, ns: &str, name: &str, app: &App) -> Result<(), Status> {
        let all = self.deploys(ns, name).await?;
        for d in all.iter().skip(KEEP).filter(|d| app.current.as_deref() != Some(d.id.as_str())) {
            self.forget_deploy(ns, name, &d.id).await;
        }
        Ok(())
    }

    /// Deletes a deploy's files, manifest and record (best effort: what fails stays
    /// unreferenced).
    async fn forget_deploy(&self, ns: &str, name: &str, id: &str) {
        for prefix in [format!("{name}/{id}/"), format!("{name}.manifest/{id}")] {
            if let Ok(objects) = self.blob.list(ns, BUCKET, &prefix).await {
                for o in objects {
                    let _ = self.blob.delete(ns, BUCKET, &o.key).await;
                }
            }
        }
        let _ = self.store.delete(&self.table, &format!("{ns}/deploy/{name}/{id}")).await;
    }

    /// Makes deploy `to` (else the one before the current) current again.
    async fn rollback(&self, who: &Who<'_>, name: &str, to: Option<String>) -> Result<App, Status> {
        check_name(name)?;
        who.deployer()?;
        let mut app = self.app(who.ns, name).await?.ok_or_else(|| no_app(name))?;
        let target = match to.filter(|t| !t.is_empty()) {
            Some(t) => t,
            None => app.history.last().cloned().ok_or_else(|| {
                Status::new(Code::FailedPrecondition, NAME, format!("app {name} has no earlier deploy to roll back to"))
            })?,
        };
        if !valid_deploy(&target) || self.deploy_of(who.ns, name, &target).await?.is_none() {
            return Err(Status::new(Code::NotFound, NAME, format!("app {name} has no deploy {target}")));
        }
        if app.current.as_deref() == Some(target.as_str()) {
            return Ok(app);
        }
        app.history.retain(|h| *h != target);
        if let Some(old) = app.current.replace(target) {
            app.history.push(old);
        }
        app.updated = now();
        self.write_json(format!("{}/app/{name}", who.ns), &app).await?;
        self.apps.lock().unwrap_or_else(|e| e.into_inner()).remove(&(who.ns.to_string(), name.to_string()));
        Ok(app)
    }

    /// Deletes app `name` with every deploy.
    async fn delete(&self, who: &Who<'_>, name: &str) -> Result<(), Status> {
        check_name(name)?;
        who.deployer()?;
        if self.app(who.ns, name).await?.is_none() {
            return Err(no_app(name));
        }
        for d in self.deploys(who.ns, name).await? {
            self.forget_deploy(who.ns, name, &d.id).await;
        }
        match self.store.delete(&self.table, &format!("{}/app/{name}", who.ns)).await {
            Err(e) if e.code() != Code::NotFound => return Err(e),
            _ => {}
        }
        self.apps.lock().unwrap_or_else(|e| e.into_inner()).remove(&(who.ns.to_string(), name.to_string()));
        Ok(())
    }

    async fn list(&self, who: &Who<'_>) -> Result<Vec<App>, Status> {
        who.team()?;
        let keys = self
            .store
            .list(&self.table, &format!("{}/app/", who.ns), &Query { prefix: true, ..Default::default() })
            .await?;
        let mut apps = Vec::new();
        for k in keys {
            if let Some(a) = self.read_json::<App>(&k).await? {
                apps.push(a);
            }
        }
        Ok(apps)
    }

    /// Serves the API under `/apps/v1/` for `caller`.
    pub async fn serve_api<B>(&self, req: http::Request<B>, caller: &Caller) -> Response<Body>
    where
        B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: std::fmt::Display + Send + Sync + 'static,
    {
        match self.api(req, caller).await {
            Ok(r) => r,
            Err(e) => error(&e),
        }
    }

    async fn api<B>(&self, req: http::Request<B>, caller: &Caller) -> Result<Response<Body>, Status>
    where
        B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: std::fmt::Display + Send + Sync + 'static,
    {
        let path = req.uri().path().to_string();
        let rest = path.strip_prefix("/apps/v1/").unwrap_or("");
        let segs: Vec<&str> = rest.split('/').collect();
        let who = Who { caller, ns: &caller.namespace };
        let method = req.method().clone();
        let to_json = |v: &serde_json::Value| reply(StatusCode::OK, v);
        match (&method, segs.as_slice()) {
            (&Method::GET, ["apps"]) => Ok(to_json(&json!({"apps": self.list(&who).await?}))),
            (&Method::GET, ["apps", name]) => {
                who.team()?;
                let app = self.app(who.ns, name).await?.ok_or_else(|| no_app(name))?;
                Ok(to_json(&json!({"app": app, "deploys": self.deploys(who.ns, name).await?})))
            }
            (&Method::DELETE, ["apps", name]) => {
                self.delete(&who, name).await?;
                Ok(micro::web::empty(StatusCode::NO_CONTENT))
            }
            (&Method::POST, ["apps", name, "deploys"]) => {
                let name = name.to_string();
                let preview =
                    micro::web::query_param(req.uri().query(), "preview").is_some_and(|v| v == "true" || v == "1");
                who.deployer()?;
                let archive =
                    micro::web::collect_limited(req.into_body(), MAX_SITE + (MAX_FILES as u64) * 1024, NAME).await?;
                let (deploy, app) = self.deploy(&who, &name, archive, preview).await?;
                Ok(to_json(&json!({"deploy": deploy, "app": app})))
            }
            (&Method::POST, ["apps", name, "rollback"]) => {
                let name = name.to_string();
                let body = micro::web::json_body(req.into_body(), 4096, NAME).await?;
                let to = body.get("to").and_then(|v| v.as_str()).map(str::to_string);
                if let Some(k) = body.as_object().and_then(|o| o.keys().find(|k| *k != "to")) {
                    return Err(bad(format!("unknown field {k:?}: to is")));
                }
                Ok(to_json(&json!({"app": self.rollback(&who, &name, to).await?})))
            }
            _ => Err(Status::new(Code::NotFound, NAME, format!("no route {method} {path}"))),
        }
    }

    /// Serves a site: app `label` (`shop`, or a preview's `shop--<deploy>`) of `ns`, its
    /// file at `path`. `sandboxed`: the page runs in an origin of its own (served under
    /// `/apps/` of the gateway, whose origin it must not act in).
    pub async fn serve_site(
        &self,
        ns: &str,
        label: &str,
        path: &str,
        method: &Method,
        headers: &http::HeaderMap,
        sandboxed: bool,
    ) -> Response<Body> {
        match self.site(ns, label, path, method, headers, sandboxed).await {
            Ok(r) => r,
            Err(e) => error(&e),
        }
    }

    async fn site(
        &self,
        ns: &str,
        label: &str,
        path: &str,
        method: &Method,
        headers: &http::HeaderMap,
        sandboxed: bool,
    ) -> Result<Response<Body>, Status> {
        if method != Method::GET && method != Method::HEAD {
            return Err(Status::new(Code::Unimplemented, NAME, "a site answers GET and HEAD").with_http_status(405));
        }
        let Some((name, preview)) = site_of(label) else { return Err(no_app(label)) };
        let app = self.app_fresh(ns, name).await?.ok_or_else(|| no_app(name))?;
        let deploy = match preview {
            Some(d) => {
                if self.deploy_of(ns, name, d).await?.is_none() {
                    return Err(Status::new(Code::NotFound, NAME, format!("app {name} has no deploy {d}")));
                }
                d.to_string()
            }
            None => app
                .current
                .clone()
                .ok_or_else(|| Status::new(Code::NotFound, NAME, format!("app {name} has no deploy yet")))?,
        };
        let manifest = self.manifest(ns, name, &deploy).await?;
        let decoded =
            percent_encoding::percent_decode_str(path).decode_utf8().map_err(|_| bad("the path is not UTF-8"))?;
        let mut rel = Vec::new();
        for part in decoded.split('/') {
            match part {
                "" | "." => {}
                ".." => return Err(bad("no .. in a site's paths")),
                p => rel.push(p),
            }
        }
        let mut file = rel.join("/");
        let dir = decoded.ends_with('/') || file.is_empty();
        let mut status = StatusCode::OK;
        if dir {
            file = if file.is_empty() { "index.html".into() } else { format!("{file}/index.html") };
        }
        if !manifest.contains_key(&file) {
            let index = format!("{file}/index.html");
            let last = rel.last().copied().unwrap_or("");
            if manifest.contains_key(&index) {
                file = index;
            } else if !last.contains('.') && manifest.contains_key("index.html") {
                // A single-page app's route: its page, which reads the address itself.
                file = "index.html".into();
            } else if manifest.contains_key("404.html") {
                file = "404.html".into();
                status = StatusCode::NOT_FOUND;
            } else {
                return Err(Status::new(Code::NotFound, NAME, format!("no file {decoded} in app {name}")));
            }
        }
        let entry = manifest.get(&file).ok_or_else(|| no_app(name))?;
        let etag = format!("\"{}\"", &entry.sha256[..32.min(entry.sha256.len())]);
        let mut res = if status == StatusCode::OK
            && headers
                .get(header::IF_NONE_MATCH)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"))
        {
            micro::web::empty(StatusCode::NOT_MODIFIED)
        } else if method == Method::HEAD {
            let mut r = micro::web::empty(status);
            r.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(entry.size));
            r
        } else if entry.size <= CACHED_FILE {
            // A small file from memory: a deploy's files never change, and its id is new
            // for every deploy (a namespace made again never meets another's).
            let key = (ns.to_string(), name.to_string(), deploy.clone(), file.clone());
            let cached = self.contents.lock().unwrap_or_else(|e| e.into_inner()).files.get(&key).cloned();
            let body = match cached {
                Some(b) => b,
                None => {
                    let (_, chunks) = self.blob.get(ns, BUCKET, &format!("{name}/{deploy}/{file}")).await?;
                    let parts: Vec<Bytes> = chunks.collect::<Vec<_>>().await.into_iter().collect::<Result<_, _>>()?;
                    let b = Bytes::from(parts.concat());
                    let mut cache = self.contents.lock().unwrap_or_else(|e| e.into_inner());
                    if cache.bytes + b.len() > CACHED_BYTES {
                        *cache = ContentCache::default();
                    }
                    cache.bytes += b.len();
                    cache.files.insert(key, b.clone());
                    b
                }
            };
            let mut r = Response::new(Body::new(http_body_util::Full::new(body)));
            *r.status_mut() = status;
            r.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(entry.size));
            r
        } else {
            let (_, chunks) = self.blob.get(ns, BUCKET, &format!("{name}/{deploy}/{file}")).await?;
            let mut r = Response::new(micro::web::stream_body(chunks));
            *r.status_mut() = status;
            r.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(entry.size));
            r
        };
        let h = res.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&entry.content_type) {
            h.insert(header::CONTENT_TYPE, v);
        }
        if let Ok(v) = HeaderValue::from_str(&etag) {
            h.insert(header::ETAG, v);
        }
        let cache =
            if hashed(&file) && status == StatusCode::OK { "public, max-age=31536000, immutable" } else { "no-cache" };
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
        h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
        h.insert(header::REFERRER_POLICY, HeaderValue::from_static("strict-origin-when-cross-origin"));
        if sandboxed {
            // Which namespace's site this is depends on the request, not the address:
            // a shared cache must tell them apart.
            h.insert(header::VARY, HeaderValue::from_static("micro-namespace, authorization, cookie"));
            // Under the gateway's origin the page gets one of its own: it reads none of the
            // origin's storage and sends none of its cookies.
            h.insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static("sandbox allow-scripts allow-forms allow-popups allow-modals allow-downloads"),
            );
        }
        Ok(res)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_paths_and_hashes() {
        assert!(valid_name("shop") && valid_name("my-shop-2"));
        for bad in ["", "Shop", "-shop", "shop-", "sh--op", "a.b", "a/b", &"x".repeat(41)] {
            assert!(!valid_name(bad), "{bad}");
        }
        assert_eq!(site_of("shop"), Some(("shop", None)));
        assert_eq!(site_of("shop--abcde12345"), Some(("shop", Some("abcde12345"))));
        assert_eq!(site_of("shop--x"), None);
        assert_eq!(site_path(b"./assets/app.js").unwrap(), Some("assets/app.js".into()));
        assert_eq!(site_path(b"a//b/./c").unwrap(), Some("a/b/c".into()));
        assert_eq!(site_path(b"./").unwrap(), None);
        for bad in [&b"../x"[..], b"a/../../x", b"/etc/passwd", b"a\\b", b"a\nb"] {
            assert!(site_path(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        assert!(hashed("assets/index-DjK3s9aB.js"));
        assert!(hashed("app.3f2a9c1e.css"));
        assert!(!hashed("index.html"));
        assert!(!hashed("assets/logo.png"));
        assert!(!hashed("favicon-large.ico"));
        assert_eq!(content_type("index.html"), "text/html; charset=utf-8");
        assert_eq!(content_type("a/b.js"), "text/javascript; charset=utf-8");
        assert_eq!(content_type("x.wasm"), "application/wasm");
    }
}
