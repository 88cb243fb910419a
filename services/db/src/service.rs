//! The `db` service: the endpoints of the database product, on the gateway under
//! `/db/v1/…` (see the crate's docs), over gRPC and on the CLI (`micro db …`).

use crate::collections::{Rule, Spec};
use crate::filter::Expr;
use crate::records::{Change, DbError, Expect, Guard, ListQuery, Record, Records, Write};
use crate::sql::{self, Param};
use crate::store::Store;
use micro::{Code, Context, Service, Status};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The service's name.
pub const NAME: &str = "db";

/// The most records an unindexed list may read ([`Settings::scan_limit`]).
pub const DEFAULT_SCAN_LIMIT: u64 = 100_000;

/// How the database is kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// The SQLite file (`MICRO_DB_PATH`; `micro server` keeps `db.sqlite` in its data dir).
    pub path: PathBuf,
    /// How long changes are kept for subscribers resuming from a cursor
    /// (`MICRO_DB_CHANGES_RETENTION`, seconds, default 86400).
    pub retention: Duration,
    /// The most subscriptions a namespace may have open (`MICRO_DB_MAX_SUBSCRIPTIONS`,
    /// default 20000).
    pub max_subscriptions: usize,
    /// A PostgreSQL database to keep the records in instead (`MICRO_DB_URL`,
    /// `postgres://…`): nodes sharing it share the records. `micro server` in a cluster
    /// uses the cluster's database (its PostgreSQL in `MICRO_BACKEND`) unless this names another.
    pub url: Option<String>,
    /// The most records a list or an aggregate may read when no index serves its filter,
    /// rule or sort (`MICRO_DB_SCAN_LIMIT`, default 100000; 0: no limit): past it, the
    /// call is refused with a hint to add an index.
    pub scan_limit: u64,
}

impl Settings {
    /// The settings from environment-style variables, the file at `path` unless
    /// `MICRO_DB_PATH` names another.
    pub fn from_vars(path: PathBuf, get: impl Fn(&str) -> Option<String>) -> Result<Settings, String> {
        let path = get("MICRO_DB_PATH").filter(|p| !p.trim().is_empty()).map(PathBuf::from).unwrap_or(path);
        let retention = match get("MICRO_DB_CHANGES_RETENTION").filter(|v| !v.trim().is_empty()) {
            Some(v) => Duration::from_secs(
                v.trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|s| *s >= 60)
                    .ok_or_else(|| format!("MICRO_DB_CHANGES_RETENTION: {v:?} is not a number of seconds ≥ 60"))?,
            ),
            None => Duration::from_secs(86_400),
        };
        let max_subscriptions = match get("MICRO_DB_MAX_SUBSCRIPTIONS").filter(|v| !v.trim().is_empty()) {
            Some(v) => v
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("MICRO_DB_MAX_SUBSCRIPTIONS: {v:?} is not a whole number above 0"))?,
            None => 20_000,
        };
        let url = get("MICRO_DB_URL").map(|u| u.trim().to_string()).filter(|u| !u.is_empty());
        if let Some(u) = &url
            && !micro_postgres::is_url(u)
        {
            return Err("MICRO_DB_URL: not a PostgreSQL URL (postgres://user@host:port/database)".into());
        }
        let scan_limit = match get("MICRO_DB_SCAN_LIMIT").filter(|v| !v.trim().is_empty()) {
            Some(v) => v
                .trim()
                .parse::<u64>()
                .map_err(|_| format!("MICRO_DB_SCAN_LIMIT: {v:?} is not a whole number (0: no limit)"))?,
            None => DEFAULT_SCAN_LIMIT,
        };
        Ok(Settings { path, retention, max_subscriptions, url, scan_limit })
    }
}

/// The database: its records and a signal that fires at every commit (of any node
/// sharing the records).
pub struct Db {
    records: Arc<Store>,
    /// Collections' specs (and when each changed; none: no such collection) as last read,
    /// by namespace and name.
    #[allow(clippy::type_complexity)]
    specs: std::sync::Mutex<
        std::collections::HashMap<(String, String), (std::time::Instant, Option<Arc<(Spec, String)>>)>,
    >,
    /// The recent changes of collections with subscribers.
    tails: crate::tail::Tails,
    changed: tokio::sync::watch::Sender<u64>,
    /// Set when the service stops: subscriptions end then.
    closing: tokio::sync::watch::Sender<bool>,
    /// Open subscriptions per namespace.
    subscriptions: std::sync::Mutex<std::collections::HashMap<String, usize>>,
    /// The most a namespace may have open.
    max_subscriptions: usize,
    retention: Duration,
    scan_limit: u64,
    /// Called with each record deleted (namespace, collection, id; no id: the whole
    /// collection) once the delete is committed: what is attached to records goes too.
    on_delete: std::sync::OnceLock<DeleteHook>,
}

/// What [`Db::on_delete`] calls.
pub type DeleteHook = Arc<dyn Fn(&str, &str, Option<&str>) + Send + Sync>;

/// An operation on a record that the collection's rules decide, for [`Db::allows`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Seeing it (the view rule).
    View,
    /// Changing it (the update rule).
    Update,
}

impl Db {
    /// Sets what is called with each record deleted, once it is committed (one hook; a
    /// second call changes nothing).
    pub fn on_delete(&self, hook: DeleteHook) {
        let _ = self.on_delete.set(hook);
    }

    /// When record `id` of `collection` was made, if `caller` (acting in its namespace)
    /// may do `access` to it by the collection's rules: `None` for a record that does not
    /// exist or that the caller may not see. (The time tells a record from a later one
    /// made with the same id.)
    pub async fn allows(
        self: &Arc<Self>,
        caller: &micro::auth::Caller,
        collection: &str,
        id: &str,
        access: Access,
    ) -> Result<Option<String>, Status> {
        let who = who_of(caller);
        let c = match self::collection(self, &who, collection).await {
            Ok(c) if c.updated.is_some() => c,
            Ok(_) => return Ok(None),
            Err(e) if e.code() == Code::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut rules = Vec::new();
        for op in [Some(Op::View), (access == Access::Update).then_some(Op::Update)].into_iter().flatten() {
            match c.rule(&who, op) {
                Ok(r) => rules.extend(r),
                Err(e) if e.code() == Code::PermissionDenied => return Ok(None),
                Err(e) => return Err(e),
            }
        }
        let rule = match rules.len() {
            0 => None,
            1 => rules.pop(),
            _ => Some(Expr::And(rules)),
        };
        let (d, ns, name, id, request) = (self.clone(), who.ns.clone(), c.name.clone(), id.to_string(), who.request);
        match blocking(move || d.records.get_as(&ns, &name, &id, rule.as_ref(), &request)).await {
            Ok(r) => Ok(Some(r.created)),
            Err(e) if e.code() == Code::NotFound || e.code() == Code::InvalidArgument => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn deleted(&self, ns: &str, collection: &str, id: Option<&str>) {
        if let Some(hook) = self.on_delete.get() {
            hook(ns, collection, id);
        }
    }

    /// Opens (or makes) the database `settings` name.
    pub fn open(settings: &Settings) -> Result<Arc<Db>, DbError> {
        if let Some(dir) = settings.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| DbError::Storage(format!("{}: {e}", dir.display())))?;
        }
        Ok(Self::with(Store::Sqlite(Records::open(&settings.path)?), settings))
    }

    /// Opens the database `settings` name: in PostgreSQL when they give a URL (or
    /// `shared`, the node's shared database, is given), else in the SQLite file. Call it
    /// in the runtime the service will run in.
    pub async fn connect(settings: &Settings, shared: Option<&str>) -> Result<Arc<Db>, DbError> {
        let Some(url) = settings.url.as_deref().or(shared) else { return Self::open(settings) };
        // A pool of its own, each statement stopped after the longest a query may run.
        let database = micro_postgres::Database::connect_limited(url, crate::records::MAX_QUERY_TIME)
            .map_err(|e| DbError::Storage(e.detail().to_string()))?;
        let records = crate::pg::PgRecords::open(database.clone()).await?;
        let db = Self::with(Store::Postgres(records), settings);
        // Every node's commits wake this node's subscribers.
        tokio::spawn(listen(Arc::downgrade(&db), database));
        Ok(db)
    }

    fn with(records: Store, settings: &Settings) -> Arc<Db> {
        Arc::new(Db {
            records: Arc::new(records),
            specs: Default::default(),
            tails: Default::default(),
            changed: tokio::sync::watch::channel(0).0,
            closing: tokio::sync::watch::channel(false).0,
            subscriptions: Default::default(),
            max_subscriptions: settings.max_subscriptions,
            retention: settings.retention,
            scan_limit: settings.scan_limit,
            on_delete: std::sync::OnceLock::new(),
        })
    }

    /// Wakes every subscriber: each looks at its collection's tail.
    fn wake(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Whether the records are in a database other nodes share.
    pub fn shared(&self) -> bool {
        self.records.shared()
    }

    /// Deletes everything of namespace `ns` (it is being deleted).
    pub async fn delete_namespace(self: &Arc<Self>, ns: &str) -> Result<(), Status> {
        let (db, ns) = (self.clone(), ns.to_string());
        blocking(move || db.records.delete_namespace(&ns)).await?;
        self.touched(None);
        Ok(())
    }

    /// Wakes the subscribers of `collection` (of every collection without one): its spec
    /// or its log changed.
    fn touched(&self, collection: Option<(&str, &str)>) {
        self.forget_spec(collection);
        match collection {
            Some((ns, name)) => self.tails.bump(ns, name),
            None => self.tails.bump_all(),
        }
        self.wake();
    }

    /// Whether namespace `ns` keeps anything here.
    pub async fn holds_namespace(self: &Arc<Self>, ns: &str) -> Result<bool, Status> {
        let (db, ns) = (self.clone(), ns.to_string());
        blocking(move || db.records.holds_namespace(&ns)).await
    }

    /// Forgets the spec of `collection` (every spec without one) read before.
    fn forget_spec(&self, collection: Option<(&str, &str)>) {
        let mut specs = self.specs.lock().unwrap_or_else(|e| e.into_inner());
        match collection {
            Some((ns, name)) => {
                specs.remove(&(ns.to_string(), name.to_string()));
            }
            None => specs.clear(),
        }
    }

    fn committed(&self, ns: &str, collection: &str) {
        self.tails.bump(ns, collection);
        self.wake();
    }
}

/// Listens for the commits of every node sharing the records (their notifications on
/// [`crate::pg::CHANNEL`]) and wakes the subscribers; connects again when the connection
/// is lost (waking everyone then, as commits may have been missed). Ends with the
/// database.
async fn listen(db: std::sync::Weak<Db>, database: micro_postgres::Database) {
    use futures::StreamExt;
    let mut backoff = Duration::from_millis(200);
    loop {
        match database.listen(crate::pg::CHANNEL, "micro-db-listener").await {
            Ok((_client, mut messages, _)) => {
                backoff = Duration::from_millis(200);
                let Some(d) = db.upgrade() else { return };
                // What was committed while no one listened: every tail reads on.
                d.forget_spec(None);
                d.tails.bump_all();
                d.wake();
                drop(d);
                loop {
                    let message = tokio::select! {
                        m = messages.next() => m,
                        // Checks now and then whether the database is still open.
                        _ = tokio::time::sleep(Duration::from_secs(5)) => {
                            if db.strong_count() == 0 { return }
                            continue;
                        }
                    };
                    match message {
                        Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) => {
                            let Some(d) = db.upgrade() else { return };
                            // `seq namespace collection`: that collection's tail reads on.
                            let mut parts = n.payload().splitn(3, ' ').skip(1);
                            if let (Some(ns), Some(collection)) = (parts.next(), parts.next()) {
                                // (A spec saved there is read again here.)
                                d.forget_spec(Some((ns, collection)));
                                d.tails.bump(ns, collection);
                            }
                            d.wake();
                        }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => {
                            tracing::warn!(service = NAME, error = %e, "the database's notifications stopped; listening again");
                            break;
                        }
                        None => break,
                    }
                }
            }
            Err(e) => tracing::warn!(service = NAME, error = %e.detail(), "cannot listen for the database's commits"),
        }
        if db.strong_count() == 0 {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// Runs a call on the records off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, DbError> + Send + 'static) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(NAME, format!("a database call failed: {e}")))?
        .map_err(status)
}

fn status(e: DbError) -> Status {
    match &e {
        DbError::Invalid(_) | DbError::Filter(_) => Status::bad_request(NAME, e.to_string()),
        DbError::NotFound(_) => Status::not_found(NAME, e.to_string()),
        DbError::Conflict { .. } | DbError::Stale => Status::new(Code::Aborted, NAME, e.to_string()),
        DbError::Taken(_) => Status::new(Code::AlreadyExists, NAME, e.to_string()),
        DbError::Denied(_) => Status::new(Code::PermissionDenied, NAME, e.to_string()),
        // Its words may quote a record (a value a cast refused): they go to the log only.
        DbError::Storage(_) => {
            tracing::error!(service = NAME, error = %e, "database failure");
            Status::internal(NAME, "the database failed: the server's log says why")
        }
    }
}

fn bad(msg: impl Into<String>) -> Status {
    Status::bad_request(NAME, msg)
}

/// Who calls: the namespace, whether the rules bind them, and the macros' values.
struct Who {
    ns: String,
    /// Admins and accounts with the data or developer scope: every rule lets them.
    manager: bool,
    /// Viewers besides: they read everything.
    reader: bool,
    request: sql::Request,
}

fn who(ctx: &Context) -> Result<Who, Status> {
    let caller = ctx.caller().ok_or_else(|| Status::internal(NAME, "the service runs without an authorizer"))?;
    Ok(who_of(caller))
}

fn who_of(caller: &micro::auth::Caller) -> Who {
    let ns = caller.namespace.clone();
    let mut request = sql::Request { now: now_text(0), today: today(), ..Default::default() };
    let (mut manager, mut reader) = (false, false);
    if let Some(a) = &caller.account {
        manager = a.may_use_data_of(&ns);
        reader = a.may_read_in(&ns);
        // Only an account of the namespace is somebody to its rules (an operator acting
        // in it manages it, but is nobody's `owner`).
        if a.namespace == ns {
            request.auth.insert("id".into(), Param::Text(a.id.clone()));
            request.auth.insert("name".into(), Param::Text(a.name.clone()));
            request.auth.insert("type".into(), Param::Text(a.kind.as_str().into()));
            // An app user who confirmed their email address (`@request.auth.verified = true`).
            request.auth.insert("verified".into(), Param::Int(i64::from(a.verified)));
        }
    }
    Who { ns, manager, reader, request }
}

fn now_text(offset_ms: i64) -> String {
    let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    format!("{}Z", micro_core::time::utc((ms + offset_ms).max(0) as u64))
}

fn today() -> (String, String) {
    let now = now_text(0);
    let day = &now[..10];
    (format!("{day} 00:00:00.000Z"), format!("{day} 23:59:59.999Z"))
}

/// The operations rules decide.
#[derive(Clone, Copy)]
enum Op {
    List,
    View,
    Create,
    Update,
    Delete,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::List => "list",
            Op::View => "view",
            Op::Create => "create",
            Op::Update => "update",
            Op::Delete => "delete",
        }
    }
}

/// A collection as the caller meets it: its spec (default for one not made yet).
struct Collection {
    name: String,
    spec: Spec,
    /// When its spec last changed (none: it is not made yet).
    updated: Option<String>,
}

impl Collection {
    /// The rule of `op` for `who`: `None` when it lets every record through.
    fn rule(&self, who: &Who, op: Op) -> Result<Option<Expr>, Status> {
        if who.manager || (who.reader && matches!(op, Op::List | Op::View)) {
            return Ok(None);
        }
        let r = &self.spec.rules;
        let text = match op {
            Op::List => &r.list,
            Op::View => &r.view,
            Op::Create => &r.create,
            Op::Update => &r.update,
            Op::Delete => &r.delete,
        };
        match Rule::parse(op.name(), text).map_err(status)? {
            Rule::Public => Ok(None),
            Rule::Filter(e) => Ok(Some(e)),
            Rule::Locked => Err(Status::new(
                Code::PermissionDenied,
                NAME,
                format!(
                    "the {} rule of {} is locked: only the namespace's admins and developers may {} its records",
                    op.name(),
                    self.name,
                    op.name()
                ),
            )),
        }
    }
}

/// The collection `name` of `who`'s namespace: managers meet one not made yet (their
/// first write makes it); others are told it does not exist.
async fn collection(db: &Arc<Db>, who: &Who, name: &str) -> Result<Collection, Status> {
    let key = (who.ns.clone(), name.to_string());
    let cached = {
        let specs = db.specs.lock().unwrap_or_else(|e| e.into_inner());
        specs.get(&key).filter(|(at, _)| at.elapsed() < SPEC_FRESH).map(|(_, found)| found.clone())
    };
    let found = match cached {
        Some(found) => found,
        None => {
            let (d, ns, n) = (db.clone(), who.ns.clone(), name.to_string());
            let found = match blocking(move || d.records.collection(&ns, &n)).await? {
                Some((spec, _, updated)) => {
                    let spec: Spec = serde_json::from_value(spec)
                        .map_err(|e| Status::internal(NAME, format!("collection {name} is unreadable: {e}")))?;
                    Some(Arc::new((spec, updated)))
                }
                None => None,
            };
            let mut specs = db.specs.lock().unwrap_or_else(|e| e.into_inner());
            if specs.len() >= MAX_SPECS {
                specs.clear();
            }
            specs.insert(key, (std::time::Instant::now(), found.clone()));
            found
        }
    };
    match found {
        Some(f) => Ok(Collection { name: name.to_string(), spec: f.0.clone(), updated: Some(f.1.clone()) }),
        None if who.manager => Ok(Collection { name: name.to_string(), spec: Spec::default(), updated: None }),
        None => Err(Status::not_found(NAME, format!("no collection {name}"))),
    }
}

/// How long a collection's spec read is used before it is read again (a save on this
/// node, and on another sharing PostgreSQL when its notification arrives, forgets it
/// at once; a batch checks the spec it was given in its transaction anyway).
const SPEC_FRESH: Duration = Duration::from_secs(2);
/// The most specs remembered.
const MAX_SPECS: usize = 10_000;

/// A collection as the API shows it.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct CollectionInfo {
    /// Its name.
    pub name: String,
    /// Its schema (`null`: any object).
    pub schema: Option<Vec<crate::collections::Field>>,
    /// Its rules.
    pub rules: crate::collections::Rules,
    /// Its indexes.
    pub indexes: Vec<crate::collections::Index>,
    /// The fields full-text search covers.
    pub search: Vec<String>,
    /// Each rule in words.
    pub explained: Vec<String>,
    /// When it was made.
    pub created: String,
    /// When its spec last changed.
    pub updated: String,
}

fn info(name: String, spec: Spec, created: String, updated: String) -> CollectionInfo {
    let explained = spec
        .rule_texts()
        .iter()
        .map(|(what, text)| {
            let verb = match *what {
                "list" => "list records",
                "view" => "read a record (and receive its changes live)",
                "create" => "create records",
                "update" => "change records",
                _ => "delete records",
            };
            format!("{}: {}", what, Rule::explain(verb, text))
        })
        .collect();
    CollectionInfo {
        name,
        schema: spec.schema,
        rules: spec.rules,
        indexes: spec.indexes,
        search: spec.search,
        explained,
        created,
        updated,
    }
}

/// `Db.SaveCollection`: makes or changes a collection.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SaveCollectionRequest {
    /// Its name: letters, digits and `_`, not starting with a digit, at most 64.
    pub name: String,
    /// Its fields (`null` or absent: any JSON object).
    #[serde(default)]
    pub schema: Option<Vec<crate::collections::Field>>,
    /// Its rules (each locked unless given).
    #[serde(default)]
    pub rules: crate::collections::Rules,
    /// Fields to rename in every record, old name to new (the schema names the new).
    #[serde(default)]
    pub rename: std::collections::BTreeMap<String, String>,
    /// Fields to remove from every record.
    #[serde(default)]
    pub drop: Vec<String>,
    /// Indexes for the collection's queries (those no longer named are dropped).
    #[serde(default)]
    pub indexes: Vec<crate::collections::Index>,
    /// The fields full-text search covers (none: no search).
    #[serde(default)]
    pub search: Vec<String>,
    /// Only make it: refused (409) when it exists already.
    #[serde(default)]
    pub create_only: bool,
}

/// A request naming a collection.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NameRequest {
    /// The collection.
    pub name: String,
}

/// `Db.Collections` reply.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
pub struct CollectionsReply {
    /// By name.
    pub collections: Vec<CollectionInfo>,
}

/// An empty request or reply.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

/// `Db.Create`: makes a record.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    /// The collection.
    pub collection: String,
    /// Its id (default: a new one, sorting by time).
    #[serde(default)]
    pub id: Option<String>,
    /// The record's fields, a JSON object.
    pub data: Map<String, Json>,
}

/// A request naming a record.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GetRequest {
    /// The collection.
    pub collection: String,
    /// The record.
    pub id: String,
    /// Only these fields (comma separated; the record's own always come).
    #[serde(default)]
    pub fields: Option<String>,
    /// Relations to expand (`author,comments.post`), under the record's `expand`.
    #[serde(default)]
    pub expand: Option<String>,
}

/// `Db.Update` (merge: fields not named stay, a `null` removes one) and `Db.Replace`.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateRequest {
    /// The collection.
    pub collection: String,
    /// The record.
    pub id: String,
    /// The fields, a JSON object.
    pub data: Map<String, Json>,
    /// The version the record must be at (compare-and-set).
    #[serde(default)]
    pub version: Option<u64>,
}

/// `Db.Delete`.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeleteRequest {
    /// The collection.
    pub collection: String,
    /// The record.
    pub id: String,
    /// The version the record must be at (compare-and-set).
    #[serde(default)]
    pub version: Option<u64>,
}

/// `Db.List`.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListRequest {
    /// The collection.
    pub collection: String,
    /// A filter, like `done = false && owner = @request.auth.id`.
    #[serde(default)]
    pub filter: Option<String>,
    /// Fields to sort by, comma separated, `-` first for descending (`-created,title`).
    #[serde(default)]
    pub sort: Option<String>,
    /// The page, from 1.
    #[serde(default)]
    pub page: Option<u32>,
    /// Records a page (default 30, at most 500).
    #[serde(default, alias = "perPage")]
    pub per_page: Option<u32>,
    /// Count every match too.
    #[serde(default)]
    pub total: Option<bool>,
    /// Only these fields (comma separated; the record's own always come).
    #[serde(default)]
    pub fields: Option<String>,
    /// Relations to expand (`author,comments.post`), under each record's `expand`.
    #[serde(default)]
    pub expand: Option<String>,
}

/// `Db.List` reply.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
pub struct ListReply {
    /// The page's records.
    pub items: Vec<Json>,
    /// The page.
    pub page: u32,
    /// Records a page.
    pub per_page: u32,
    /// Every match, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
}

/// `Db.Search`: records whose searched fields hold words, best first.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchRequest {
    /// The collection.
    pub collection: String,
    /// The words (each record has all of them).
    pub text: String,
    /// Each word may begin a longer one (`data` finds `database`).
    #[serde(default)]
    pub prefix: Option<bool>,
    /// Only records that hold this filter too.
    #[serde(default)]
    pub filter: Option<String>,
    /// The page, from 1.
    #[serde(default)]
    pub page: Option<u32>,
    /// Records a page (default 30, at most 500).
    #[serde(default, alias = "perPage")]
    pub per_page: Option<u32>,
    /// Only these fields (comma separated; the record's own always come).
    #[serde(default)]
    pub fields: Option<String>,
}

/// `Db.Explain`: how a list would run.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExplainRequest {
    /// The collection.
    pub collection: String,
    /// The list's filter.
    #[serde(default)]
    pub filter: Option<String>,
    /// The list's sort.
    #[serde(default)]
    pub sort: Option<String>,
}

/// `Db.Explain` reply.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
pub struct ExplainReply {
    /// The database's plan, a step a line.
    pub plan: Vec<String>,
    /// The collection's indexes the plan uses (their fields).
    pub indexes: Vec<Vec<String>>,
    /// Whether it reads the whole collection (no index narrows the filter).
    pub scan: bool,
}

/// An aggregate of `Db.Aggregate`.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Aggregate {
    /// `count`, `sum`, `avg`, `min` or `max`.
    pub op: String,
    /// The field (none for `count`: the records).
    #[serde(default)]
    pub field: Option<String>,
}

/// `Db.Aggregate`: figures over the records a filter (and the list rule) selects.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AggregateRequest {
    /// The collection.
    pub collection: String,
    /// Only records that hold this filter.
    #[serde(default)]
    pub filter: Option<String>,
    /// Fields to group by (none: one row over every record).
    #[serde(default)]
    pub group_by: Vec<String>,
    /// The figures (default: a count).
    #[serde(default)]
    pub aggregates: Vec<Aggregate>,
    /// At most this many groups, the largest first (default 100, at most 1000).
    #[serde(default)]
    pub limit: Option<u32>,
}

/// `Db.Aggregate` reply.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
pub struct AggregateReply {
    /// A row a group: the group's fields, then each figure named `op` or `op_field`
    /// (`sum_price`).
    pub rows: Vec<Map<String, Json>>,
}

/// One write of a batch.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchWrite {
    /// `create`, `update` (merge), `replace` or `delete`.
    pub action: String,
    /// The record (for a create: its id, default a new one).
    #[serde(default)]
    pub id: Option<String>,
    /// The fields (create, update, replace).
    #[serde(default)]
    pub data: Option<Map<String, Json>>,
    /// The version the record must be at (update, replace, delete).
    #[serde(default)]
    pub version: Option<u64>,
}

/// `Db.Batch`: writes all or none.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// The collection.
    pub collection: String,
    /// The writes, in order (at most 1000).
    pub writes: Vec<BatchWrite>,
}

/// `Db.Batch` reply.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
pub struct BatchReply {
    /// Each write's record, in order (a deleted one as it was).
    pub records: Vec<Json>,
}

/// `Db.Subscribe`: the changes of a collection (or one record) as they commit.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SubscribeRequest {
    /// The collection.
    pub collection: String,
    /// Only this record's changes.
    #[serde(default)]
    pub id: Option<String>,
    /// Only records that hold this filter.
    #[serde(default)]
    pub filter: Option<String>,
    /// Resume after this cursor (the last event's): nothing between is lost.
    #[serde(default)]
    pub cursor: Option<u64>,
}

/// An event of a subscription.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
pub struct ChangeEvent {
    /// `subscribed` first, then `create`, `update` or `delete`; `reset` (the last) when
    /// the collection is deleted.
    pub action: String,
    /// Where the subscription is: resume after it.
    pub cursor: u64,
    /// The record (as it is after, or as it was before a delete).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record: Option<Json>,
}

/// The record with only `fields` of its own (and its `id`, `created`, `updated`, `version`).
fn shown(r: &Record, fields: &Option<String>) -> Json {
    let mut j = r.to_json();
    if let (Some(fields), Json::Object(m)) = (fields.as_deref().filter(|f| !f.trim().is_empty()), &mut j) {
        let keep: Vec<&str> = fields.split(',').map(str::trim).collect();
        m.retain(|k, _| ["id", "created", "updated", "version"].contains(&k.as_str()) || keep.contains(&k.as_str()));
    }
    j
}

/// The most relations one request expands, and how deep.
const MAX_EXPAND: usize = 10;
const MAX_EXPAND_DEPTH: usize = 3;
/// The most bytes of expanded records one reply holds.
const MAX_EXPAND_BYTES: usize = 16 << 20;

/// Puts the records that `items`' relation fields name under their `expand` (`expand`
/// is `author,comments.post`: a path goes a relation further at each dot), each as its
/// collection's view rule lets `who` see it (one it may not is left out).
fn expand<'a>(
    db: &'a Arc<Db>,
    who: &'a Who,
    spec: &'a Spec,
    items: &'a mut [Json],
    paths: &'a [Vec<String>],
    depth: usize,
    budget: &'a std::sync::atomic::AtomicUsize,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), Status>> + Send + 'a>> {
    Box::pin(async move {
        if paths.is_empty() || items.is_empty() {
            return Ok(());
        }
        if depth >= MAX_EXPAND_DEPTH {
            return Err(bad(format!("expand at most {MAX_EXPAND_DEPTH} relations deep")));
        }
        let mut firsts: Vec<&str> = paths.iter().filter_map(|p| p.first().map(String::as_str)).collect();
        firsts.sort();
        firsts.dedup();
        for field in firsts {
            let Some(target) = spec
                .schema
                .iter()
                .flatten()
                .find(|f| f.name == field && f.kind == Some(crate::collections::FieldType::Relation))
                .and_then(|f| f.collection.clone())
            else {
                return Err(bad(format!("expand {field}: it is not a relation of the collection's schema")));
            };
            let rest: Vec<Vec<String>> = paths
                .iter()
                .filter(|p| p.first().map(String::as_str) == Some(field) && p.len() > 1)
                .map(|p| p[1..].to_vec())
                .collect();
            // What the caller may not see of the related collection stays out.
            let Ok(related) = collection(db, who, &target).await else { continue };
            let Ok(rule) = related.rule(who, Op::View) else { continue };
            // Each related record is read once a reply, however many point at it.
            let mut seen: std::collections::HashMap<String, Option<Json>> = std::collections::HashMap::new();
            for item in items.iter_mut() {
                let ids: Vec<String> = match item.get(field) {
                    Some(Json::String(id)) => vec![id.clone()],
                    Some(Json::Array(a)) => a.iter().filter_map(|v| v.as_str().map(str::to_string)).take(100).collect(),
                    _ => continue,
                };
                let many = matches!(item.get(field), Some(Json::Array(_)));
                let mut found = Vec::new();
                for id in ids {
                    if let Some(known) = seen.get(&id) {
                        found.extend(known.clone());
                        continue;
                    }
                    let (d, ns, name, rule, request) =
                        (db.clone(), who.ns.clone(), target.clone(), rule.clone(), who.request.clone());
                    let key = id.clone();
                    let got = match blocking(move || d.records.get_as(&ns, &name, &id, rule.as_ref(), &request)).await {
                        Ok(r) => Some(r.to_json()),
                        Err(e) if e.code() == Code::NotFound || e.code() == Code::InvalidArgument => None,
                        Err(e) => return Err(e),
                    };
                    seen.insert(key, got.clone());
                    found.extend(got);
                }
                let size: usize = found.iter().map(|r| r.to_string().len()).sum();
                if budget.fetch_add(size, std::sync::atomic::Ordering::Relaxed) + size > MAX_EXPAND_BYTES {
                    return Err(bad(format!(
                        "the expanded records are more than {} MiB: ask for fewer records a page",
                        MAX_EXPAND_BYTES >> 20
                    )));
                }
                expand(db, who, &related.spec, &mut found, &rest, depth + 1, budget).await?;
                let value = if many { Json::Array(found) } else { found.pop().unwrap_or(Json::Null) };
                if let Json::Object(m) = item {
                    let slot = m.entry("expand").or_insert_with(|| Json::Object(Map::new()));
                    if let Json::Object(e) = slot {
                        e.insert(field.to_string(), value);
                    }
                }
            }
        }
        Ok(())
    })
}

/// The paths of an `expand` parameter, checked.
fn expand_paths(expand: &Option<String>) -> Result<Vec<Vec<String>>, Status> {
    let Some(text) = expand.as_deref().filter(|t| !t.trim().is_empty()) else { return Ok(Vec::new()) };
    let paths: Vec<Vec<String>> = text.split(',').map(|p| p.trim().split('.').map(str::to_string).collect()).collect();
    if paths.len() > MAX_EXPAND {
        return Err(bad(format!("expand at most {MAX_EXPAND} relations")));
    }
    Ok(paths)
}

/// Runs `writes` on `collection` for `who`: each held by its rule and the schema, all or
/// none; makes the collection on a manager's first write.
async fn write(db: &Arc<Db>, who: Who, collection: &str, writes: Vec<(Op, Write)>) -> Result<Vec<Change>, Status> {
    // The rules are read, then the batch checks in its transaction that the spec is still
    // the one read: a save in between makes it read them again.
    let mut tries = 0;
    loop {
        match write_once(db, &who, collection, writes.clone()).await {
            Err(e) if e.code() == Code::Aborted && e.detail().contains("changed meanwhile") && tries < 3 => {
                db.forget_spec(Some((&who.ns, collection)));
                tries += 1
            }
            done => return done,
        }
    }
}

async fn write_once(
    db: &Arc<Db>,
    who: &Who,
    collection: &str,
    writes: Vec<(Op, Write)>,
) -> Result<Vec<Change>, Status> {
    let c = self::collection(db, who, collection).await?;
    let expect = match &c.updated {
        Some(when) => Expect::Updated(when.clone()),
        // A manager's first write makes the collection, locked and schemaless.
        None => Expect::Make(serde_json::to_value(&c.spec).map_err(|e| Status::internal(NAME, e.to_string()))?),
    };
    let mut guard = Guard { request: who.request.clone(), expect: Some(expect), ..Default::default() };
    for (op, _) in &writes {
        match op {
            Op::Create => guard.create = c.rule(who, Op::Create)?,
            Op::Update => guard.update = c.rule(who, Op::Update)?,
            _ => guard.delete = c.rule(who, Op::Delete)?,
        }
    }
    if writes.iter().any(|(op, _)| !matches!(op, Op::Create)) {
        // A record the caller may not see does not exist for it.
        guard.view = c.rule(who, Op::View).unwrap_or(Some(Expr::Or(Vec::new())));
    }
    let (d, ns, name, spec) = (db.clone(), who.ns.clone(), c.name.clone(), c.spec.clone());
    let changes = blocking(move || {
        let validate = |doc: &Map<String, Json>| spec.validate(doc);
        let Guard { view, create, update, delete, request, expect, .. } = guard;
        let guard = Guard { view, create, update, delete, request, expect, validate: Some(&validate) };
        d.records.batch(&ns, &name, writes.into_iter().map(|(_, w)| w).collect(), &guard)
    })
    .await?;
    if c.updated.is_none() {
        // The write made the collection.
        db.forget_spec(Some((&who.ns, &c.name)));
    }
    db.committed(&who.ns, &c.name);
    for ch in changes.iter().filter(|ch| ch.action == crate::records::Action::Delete) {
        db.deleted(&who.ns, &c.name, Some(&ch.record.id));
    }
    Ok(changes)
}

fn one(mut changes: Vec<Change>) -> Result<Json, Status> {
    changes.pop().map(|c| c.record.to_json()).ok_or_else(|| Status::internal(NAME, "no record written"))
}

/// Streams one connection to the service may hold: the subscriptions of every namespace
/// (at most [`MAX_OPEN`] of them) and room for every other call beside them.
const MAX_STREAMS: u32 = 65_536;
/// Subscriptions open at once, every namespace's together: below the streams of one
/// connection, so calls still pass beside them.
const MAX_OPEN: usize = 60_000;

/// Counts a namespace's open subscriptions while held.
struct Subscribed {
    db: Arc<Db>,
    ns: String,
}

impl Subscribed {
    fn new(db: &Arc<Db>, ns: &str) -> Result<Subscribed, Status> {
        let mut open = db.subscriptions.lock().unwrap_or_else(|e| e.into_inner());
        let total: usize = open.values().sum();
        if total >= MAX_OPEN {
            return Err(Status::new(
                Code::ResourceExhausted,
                NAME,
                "the server has as many subscriptions open as it may: try again later",
            ));
        }
        let n = open.entry(ns.to_string()).or_insert(0);
        if *n >= db.max_subscriptions {
            return Err(Status::new(
                Code::ResourceExhausted,
                NAME,
                format!("namespace {ns} has {} open subscriptions, the most it may have", db.max_subscriptions),
            ));
        }
        *n += 1;
        Ok(Subscribed { db: db.clone(), ns: ns.to_string() })
    }
}

impl Drop for Subscribed {
    fn drop(&mut self) {
        let mut open = self.db.subscriptions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.ns) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.ns);
            }
        }
    }
}

/// The collection `name` as a subscriber meets it now, and the rules of what it is
/// delivered: the view rule (and for a whole collection the list rule too) and its
/// filter. Ends the subscription when the collection is gone or the rules lock it out.
async fn delivering(
    db: &Arc<Db>,
    who: &Who,
    name: &str,
    one: bool,
    filter: &Option<Expr>,
) -> Result<Vec<Expr>, Status> {
    let c = collection(db, who, name).await?;
    delivered_under(&c, who, one, filter)
}

/// [`delivering`] under a spec already read (`spec` and when it changed; none: no such
/// collection).
fn delivering_under(
    who: &Who,
    name: &str,
    spec: Option<(Json, String)>,
    one: bool,
    filter: &Option<Expr>,
) -> Result<Vec<Expr>, Status> {
    let Some((spec, updated)) = spec else {
        return Err(Status::not_found(NAME, format!("no collection {name}")));
    };
    let spec: Spec = serde_json::from_value(spec)
        .map_err(|e| Status::internal(NAME, format!("collection {name} is unreadable: {e}")))?;
    delivered_under(&Collection { name: name.to_string(), spec, updated: Some(updated) }, who, one, filter)
}

/// The rules a change must hold for `who` to be delivered it (the view rule, the list
/// rule unless one record is followed, the subscriber's filter).
fn delivered_under(c: &Collection, who: &Who, one: bool, filter: &Option<Expr>) -> Result<Vec<Expr>, Status> {
    if c.updated.is_none() {
        return Err(Status::not_found(NAME, format!("no collection {}", c.name)));
    }
    let mut exprs: Vec<Expr> = c.rule(who, Op::View)?.into_iter().collect();
    if !one {
        exprs.extend(c.rule(who, Op::List)?);
    }
    exprs.extend(filter.clone());
    Ok(exprs)
}

/// The changes of a subscription, each checked as it is delivered against the
/// subscriber's rules and filter as they are then. It ends when the subscriber's token
/// expires (subscribe again with a fresh one, from the last cursor), when the collection
/// is deleted, and when a cursor it holds can no longer resume.
fn subscription(
    db: Arc<Db>,
    ctx: Context,
    req: SubscribeRequest,
) -> impl futures::Stream<Item = Result<ChangeEvent, Status>> + Send {
    async_stream::try_stream! {
        let who = who(&ctx)?;
        let expires = ctx.caller().and_then(|c| c.expires);
        let _open = Subscribed::new(&db, &who.ns)?;
        let filter = match req.filter.as_deref().filter(|f| !f.trim().is_empty()) {
            Some(f) => Some(crate::filter::parse(f).map_err(|e| status(DbError::Filter(e)))?),
            None => None,
        };
        if let Some(id) = &req.id && (id.is_empty() || id.len() > 64) {
            Err(bad(format!("invalid record id {id:?}")))?;
        }
        let one = req.id.is_some();
        // Refused up front when the caller may see nothing of it.
        delivering(&db, &who, &req.collection, one, &filter).await?;
        let (d, ns, name) = (db.clone(), who.ns.clone(), req.collection.clone());
        let (newest, oldest, floor) = blocking(move || d.records.start(&ns, &name)).await?;
        let gone = |c: u64| Status::new(
            Code::FailedPrecondition,
            NAME,
            format!("cursor {c} can no longer resume (the changes after it are gone): read the collection again and subscribe anew"),
        );
        let mut cursor = match req.cursor {
            Some(c) if c > newest => Err(bad(format!("cursor {c} is ahead of the newest change")))?,
            Some(c) if c + 1 < oldest || c < floor => Err(gone(c))?,
            Some(c) => c,
            None => newest,
        };
        yield ChangeEvent { action: "subscribed".into(), cursor, record: None };
        let mut changed = db.changed.subscribe();
        let mut closing = db.closing.subscribe();
        // The collection's recent changes, read once for all its subscribers.
        let tail = db.tails.of(&who.ns, &req.collection, newest);
        let mut idle = 0u32;
        loop {
            if *closing.borrow_and_update() {
                break;
            }
            // At the token's expiry the subscription ends (cleanly: the client subscribes
            // again from its cursor, with its token, refreshed if need be).
            if expires.is_some_and(|at| at <= now_secs()) {
                break;
            }
            changed.borrow_and_update();
            let view = tail.after(&db.records, cursor, req.id.as_deref()).await.map_err(status)?;
            if cursor < view.floor {
                Err(gone(cursor))?;
            }
            let changes: Vec<Arc<Change>> = match view.changes {
                Some(c) => c,
                // Behind what the tail holds: caught up from the log.
                None => {
                    let (d, ns, name, id) = (db.clone(), who.ns.clone(), req.collection.clone(), req.id.clone());
                    blocking(move || d.records.changes(&ns, &name, id.as_deref(), cursor, 500))
                        .await?
                        .into_iter()
                        .map(Arc::new)
                        .collect()
                }
            };
            if changes.is_empty() {
                // Woken by a commit here; another node's commits are found within a
                // second. The collection and its rules are looked at again every few
                // seconds even when nothing changes.
                let ticked = tokio::select! {
                    _ = changed.changed() => false,
                    _ = closing.changed() => false,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => true,
                };
                idle += u32::from(ticked);
                if ticked && idle.is_multiple_of(5) {
                    delivering_under(&who, &req.collection, view.spec, one, &filter)?;
                }
                continue;
            }
            // The rules as they are now (as of the tail's last read): a rule changed since
            // the subscription began holds for what is delivered next.
            let reset = changes.iter().position(|c| c.action == crate::records::Action::Reset);
            let before = &changes[..reset.unwrap_or(changes.len())];
            if !before.is_empty() {
                let exprs = delivering_under(&who, &req.collection, view.spec, one, &filter)?;
                let verdicts = tail.verdicts(&db.records, &exprs, &who.request, before).await;
                for (ch, visible) in before.iter().zip(verdicts) {
                    cursor = ch.seq;
                    if visible {
                        yield ChangeEvent { action: ch.action.as_str().into(), cursor, record: Some(ch.record.to_json()) };
                    }
                }
            }
            if let Some(i) = reset {
                // The collection is gone (perhaps with its namespace): so is what the
                // subscriber holds, and the subscription ends.
                yield ChangeEvent { action: "reset".into(), cursor: changes[i].seq, record: None };
                return;
            }
        }
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The database's handlers on `service` (named [`NAME`], configured by its host), as a
/// platform service keeping its records in `db`. Record endpoints are open to anyone
/// (the collections' rules decide); collections are managed by the namespace's admins
/// and developers.
pub fn service_with(service: Service, db: Arc<Db>) -> Service {
    let s = |d: &Arc<Db>| d.clone();
    let (explain, aggregate, search) = (db.clone(), db.clone(), db.clone());
    let (save, list_c, get_c, del_c, create, get, update, replace, delete, list, batch, sub, trim) =
        (s(&db), s(&db), s(&db), s(&db), s(&db), s(&db), s(&db), s(&db), s(&db), s(&db), s(&db), s(&db), s(&db));
    let manager_only = |who: &Who| {
        if who.manager {
            Ok(())
        } else {
            Err(Status::new(
                Code::PermissionDenied,
                NAME,
                "collections are managed by the namespace's admins and developers",
            ))
        }
    };
    service
        .platform()
        // Every subscriber through the gateway is a stream of its connection to here.
        .max_streams(MAX_STREAMS)
        .version(env!("CARGO_PKG_VERSION"))
        .handle("Db.SaveCollection", move |ctx: Context, req: SaveCollectionRequest| {
            let db = save.clone();
            async move {
                let who = who(&ctx)?;
                manager_only(&who)?;
                let spec = Spec { schema: req.schema, rules: req.rules, indexes: req.indexes, search: req.search };
                spec.check().map_err(status)?;
                if req.name == "collections" {
                    return Err(bad("collections is the name of the collections' route: choose another"));
                }
                if req.create_only {
                    let (d, ns, name) = (db.clone(), who.ns.clone(), req.name.clone());
                    if blocking(move || d.records.collection(&ns, &name)).await?.is_some() {
                        return Err(Status::new(
                            Code::AlreadyExists,
                            NAME,
                            format!("collection {} exists already", req.name),
                        ));
                    }
                }
                let renames: Vec<(String, String)> = req.rename.into_iter().collect();
                let value = serde_json::to_value(&spec).map_err(|e| Status::internal(NAME, e.to_string()))?;
                let (ns, name) = (who.ns.clone(), req.name.clone());
                let (indexes, search) = (spec.index_specs(), spec.search.clone());
                let d = db.clone();
                let (created, updated) = blocking(move || {
                    d.records.save_collection(&ns, &name, &value, &renames, &req.drop, &indexes, &search)
                })
                .await?;
                db.touched(Some((&who.ns, &req.name)));
                Ok(info(req.name, spec, created, updated))
            }
        })
        .handle("Db.Collections", move |ctx: Context, _: Empty| {
            let db = list_c.clone();
            async move {
                let who = who(&ctx)?;
                if !who.reader {
                    return Err(Status::new(
                        Code::PermissionDenied,
                        NAME,
                        "the namespace's collections are for its members to see",
                    ));
                }
                let ns = who.ns.clone();
                let all = blocking(move || db.records.collections(&ns)).await?;
                let collections = all
                    .into_iter()
                    .map(|(name, spec, c, u)| info(name, serde_json::from_value(spec).unwrap_or_default(), c, u))
                    .collect();
                Ok(CollectionsReply { collections })
            }
        })
        .handle("Db.Collection", move |ctx: Context, req: NameRequest| {
            let db = get_c.clone();
            async move {
                let who = who(&ctx)?;
                if !who.reader {
                    return Err(Status::new(
                        Code::PermissionDenied,
                        NAME,
                        "the namespace's collections are for its members to see",
                    ));
                }
                let (ns, name) = (who.ns.clone(), req.name.clone());
                match blocking(move || db.records.collection(&ns, &name)).await? {
                    Some((spec, c, u)) => Ok(info(req.name, serde_json::from_value(spec).unwrap_or_default(), c, u)),
                    None => Err(Status::not_found(NAME, format!("no collection {}", req.name))),
                }
            }
        })
        .handle("Db.DeleteCollection", move |ctx: Context, req: NameRequest| {
            let db = del_c.clone();
            async move {
                let who = who(&ctx)?;
                manager_only(&who)?;
                let (ns, name) = (who.ns.clone(), req.name.clone());
                let d = db.clone();
                if blocking(move || d.records.delete_collection(&ns, &name)).await? {
                    db.touched(Some((&who.ns, &req.name)));
                    db.deleted(&who.ns, &req.name, None);
                    Ok(Empty {})
                } else {
                    Err(Status::not_found(NAME, format!("no collection {}", req.name)))
                }
            }
        })
        .handle("Db.Create", move |ctx: Context, req: CreateRequest| {
            let db = create.clone();
            async move {
                let w = Write::Create { id: req.id, data: Json::Object(req.data) };
                one(write(&db, who(&ctx)?, &req.collection, vec![(Op::Create, w)]).await?)
            }
        })
        .handle("Db.Get", move |ctx: Context, req: GetRequest| {
            let db = get.clone();
            async move {
                let who = who(&ctx)?;
                let c = collection(&db, &who, &req.collection).await?;
                let rule = c.rule(&who, Op::View)?;
                let paths = expand_paths(&req.expand)?;
                let (d, ns, name, id, request) =
                    (db.clone(), who.ns.clone(), c.name.clone(), req.id, who.request.clone());
                let r = blocking(move || d.records.get_as(&ns, &name, &id, rule.as_ref(), &request)).await?;
                let mut items = [shown(&r, &req.fields)];
                expand(&db, &who, &c.spec, &mut items, &paths, 0, &Default::default()).await?;
                let [item] = items;
                Ok(item)
            }
        })
        .handle("Db.Update", move |ctx: Context, req: UpdateRequest| {
            let db = update.clone();
            async move {
                let w = Write::Update { id: req.id, data: Json::Object(req.data), merge: true, expected: req.version };
                one(write(&db, who(&ctx)?, &req.collection, vec![(Op::Update, w)]).await?)
            }
        })
        .handle("Db.Replace", move |ctx: Context, req: UpdateRequest| {
            let db = replace.clone();
            async move {
                let w = Write::Update { id: req.id, data: Json::Object(req.data), merge: false, expected: req.version };
                one(write(&db, who(&ctx)?, &req.collection, vec![(Op::Update, w)]).await?)
            }
        })
        .handle("Db.Delete", move |ctx: Context, req: DeleteRequest| {
            let db = delete.clone();
            async move {
                let w = Write::Delete { id: req.id, expected: req.version };
                write(&db, who(&ctx)?, &req.collection, vec![(Op::Delete, w)]).await?;
                Ok(Empty {})
            }
        })
        .handle("Db.List", move |ctx: Context, req: ListRequest| {
            let db = list.clone();
            async move {
                let who = who(&ctx)?;
                let c = collection(&db, &who, &req.collection).await?;
                let rule = c.rule(&who, Op::List)?;
                let q = ListQuery {
                    filter: req.filter.unwrap_or_default(),
                    sort: req.sort.unwrap_or_default(),
                    page: req.page.unwrap_or(1),
                    per_page: req.per_page.unwrap_or(0),
                    total: req.total.unwrap_or(false),
                };
                let paths = expand_paths(&req.expand)?;
                let (d, ns, name, request) = (db.clone(), who.ns.clone(), c.name.clone(), who.request.clone());
                let page = blocking(move || {
                    d.records.refuse_scan(&ns, &name, &q, rule.as_ref(), &request, d.scan_limit)?;
                    d.records.list_as(&ns, &name, &q, rule.as_ref(), &request)
                })
                .await?;
                let mut items: Vec<Json> = page.items.iter().map(|r| shown(r, &req.fields)).collect();
                expand(&db, &who, &c.spec, &mut items, &paths, 0, &Default::default()).await?;
                Ok(ListReply { items, page: page.page, per_page: page.per_page, total: page.total })
            }
        })
        .handle("Db.Batch", move |ctx: Context, req: BatchRequest| {
            let db = batch.clone();
            async move {
                if req.writes.len() > crate::records::MAX_BATCH {
                    return Err(bad(format!(
                        "a batch of {} writes; at most {}",
                        req.writes.len(),
                        crate::records::MAX_BATCH
                    )));
                }
                let mut writes = Vec::with_capacity(req.writes.len());
                for (i, w) in req.writes.into_iter().enumerate() {
                    let need_id = || w.id.clone().ok_or_else(|| bad(format!("write {i}: {} needs an id", w.action)));
                    let data = || {
                        w.data
                            .clone()
                            .map(Json::Object)
                            .ok_or_else(|| bad(format!("write {i}: {} needs data", w.action)))
                    };
                    writes.push(match w.action.as_str() {
                        "create" => (Op::Create, Write::Create { id: w.id.clone(), data: data()? }),
                        "update" | "replace" => (
                            Op::Update,
                            Write::Update {
                                id: need_id()?,
                                data: data()?,
                                merge: w.action == "update",
                                expected: w.version,
                            },
                        ),
                        "delete" => (Op::Delete, Write::Delete { id: need_id()?, expected: w.version }),
                        other => {
                            return Err(bad(format!(
                                "write {i}: unknown action {other:?}: create, update, replace or delete"
                            )));
                        }
                    });
                }
                let changes = write(&db, who(&ctx)?, &req.collection, writes).await?;
                Ok(BatchReply { records: changes.into_iter().map(|c| c.record.to_json()).collect() })
            }
        })
        .handle("Db.Explain", move |ctx: Context, req: ExplainRequest| {
            let db = explain.clone();
            async move {
                let who = who(&ctx)?;
                if !who.reader {
                    return Err(Status::new(
                        Code::PermissionDenied,
                        NAME,
                        "query plans are for the namespace's members",
                    ));
                }
                let c = collection(&db, &who, &req.collection).await?;
                let q = ListQuery {
                    filter: req.filter.unwrap_or_default(),
                    sort: req.sort.unwrap_or_default(),
                    ..Default::default()
                };
                let (ns, name, request) = (who.ns.clone(), c.name.clone(), who.request);
                let explained = db.clone();
                let plan = blocking(move || db.records.explain(&ns, &name, &q, None, &request)).await?;
                let explained = &explained.records;
                let indexes = c
                    .spec
                    .index_specs()
                    .into_iter()
                    .filter(|ix| plan.iter().any(|p| p.contains(&explained.index_name(ix, &who.ns, &c.name))))
                    .map(|ix| ix.fields)
                    .collect();
                let scan = explained.scans(&plan);
                Ok(ExplainReply { plan, indexes, scan })
            }
        })
        .handle("Db.Search", move |ctx: Context, req: SearchRequest| {
            let db = search.clone();
            async move {
                let who = who(&ctx)?;
                let c = collection(&db, &who, &req.collection).await?;
                let rule = c.rule(&who, Op::List)?;
                let q = ListQuery {
                    filter: req.filter.unwrap_or_default(),
                    page: req.page.unwrap_or(1),
                    per_page: req.per_page.unwrap_or(0),
                    ..Default::default()
                };
                let (ns, name, request, prefix) = (who.ns, c.name, who.request, req.prefix.unwrap_or(false));
                let text = req.text;
                let page =
                    blocking(move || db.records.search(&ns, &name, &text, prefix, &q, rule.as_ref(), &request)).await?;
                Ok(ListReply {
                    items: page.items.iter().map(|r| shown(r, &req.fields)).collect(),
                    page: page.page,
                    per_page: page.per_page,
                    total: None,
                })
            }
        })
        .handle("Db.Aggregate", move |ctx: Context, req: AggregateRequest| {
            let db = aggregate.clone();
            async move {
                let who = who(&ctx)?;
                let c = collection(&db, &who, &req.collection).await?;
                let rule = c.rule(&who, Op::List)?;
                let mut ops = Vec::new();
                let mut names = Vec::new();
                let aggregates = if req.aggregates.is_empty() {
                    vec![Aggregate { op: "count".into(), field: None }]
                } else {
                    req.aggregates
                };
                for a in aggregates {
                    let op = crate::records::AggregateOp::parse(&a.op)
                        .ok_or_else(|| bad(format!("unknown aggregate {:?}: count, sum, avg, min or max", a.op)))?;
                    names.push(match &a.field {
                        Some(f) => format!("{}_{}", a.op, f.replace('.', "_")),
                        None => a.op.clone(),
                    });
                    ops.push((op, a.field));
                }
                let q = ListQuery { filter: req.filter.unwrap_or_default(), ..Default::default() };
                let (ns, name, request, group) = (who.ns, c.name, who.request, req.group_by.clone());
                let limit = req.limit.unwrap_or(100);
                let rows = blocking(move || {
                    // Grouping reads every record unless an index serves the filter.
                    let whole = ListQuery { sort: group.join(","), ..q.clone() };
                    db.records.refuse_scan(&ns, &name, &whole, rule.as_ref(), &request, db.scan_limit)?;
                    db.records.aggregate(&ns, &name, &q, rule.as_ref(), &request, &group, &ops, limit)
                })
                .await?;
                let rows = rows
                    .into_iter()
                    .map(|row| req.group_by.iter().chain(names.iter()).cloned().zip(row).collect())
                    .collect();
                Ok(AggregateReply { rows })
            }
        })
        .stream("Db.Subscribe", move |ctx: Context, req: SubscribeRequest| subscription(sub.clone(), ctx, req))
        .open("Db.Create")
        .open("Db.Get")
        .open("Db.Update")
        .open("Db.Replace")
        .open("Db.Delete")
        .open("Db.List")
        .open("Db.Batch")
        .open("Db.Subscribe")
        .open("Db.Aggregate")
        .open("Db.Search")
        .route("GET /db/v1/collections", "Db.Collections")
        .route("POST /db/v1/collections", "Db.SaveCollection")
        .route("GET /db/v1/collections/{name}", "Db.Collection")
        .route("DELETE /db/v1/collections/{name}", "Db.DeleteCollection")
        .route("GET /db/v1/{collection}/records", "Db.List")
        .route("POST /db/v1/{collection}/records", "Db.Create")
        .route("GET /db/v1/{collection}/records/{id}", "Db.Get")
        .route("PATCH /db/v1/{collection}/records/{id}", "Db.Update")
        .route("PUT /db/v1/{collection}/records/{id}", "Db.Replace")
        .route("DELETE /db/v1/{collection}/records/{id}", "Db.Delete")
        .route("POST /db/v1/{collection}/batch", "Db.Batch")
        .route("GET /db/v1/{collection}/subscribe", "Db.Subscribe")
        .route("GET /db/v1/{collection}/explain", "Db.Explain")
        .route("GET /db/v1/{collection}/search", "Db.Search")
        .route("POST /db/v1/{collection}/aggregate", "Db.Aggregate")
        .background(move |mut stopping| async move {
            // Changes past the retention are dropped hourly.
            let d = trim;
            loop {
                let (t, age) = (d.clone(), d.retention);
                if let Err(e) = blocking(move || t.records.trim_changes(age)).await {
                    tracing::warn!(service = NAME, error = %e, "cannot trim the change log");
                }
                tokio::select! {
                    _ = stopping.stopped() => {
                        d.closing.send_replace(true);
                        return;
                    }
                    _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
                }
            }
        })
}
