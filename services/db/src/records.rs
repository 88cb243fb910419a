//! Records of collections, kept in SQLite (one node; PostgreSQL comes with the cluster
//! part): JSON documents with a generated id, `created`/`updated` times and a version
//! that every write raises, listed by [`crate::filter`] filters, sorted and paged, and
//! written one at a time or in atomic batches with optional expected versions
//! (compare-and-set).
//!
//! One table holds every namespace's collections, keyed by `(namespace, collection,
//! id)`; a namespace sees only its own rows (every statement names it).

use crate::filter::{self, Expr, FilterError};
use crate::sql::{self, Param};
use rusqlite::{OptionalExtension, params_from_iter, types::Value};
use serde_json::{Map, Value as Json};
use std::path::Path;
use std::sync::Mutex;

/// The largest document, in bytes of JSON.
pub const MAX_DOCUMENT: usize = 1 << 20;
/// The most records a page holds.
pub const MAX_PER_PAGE: u32 = 500;
/// The most fields a sort names.
const MAX_SORT: usize = 8;
/// The longest sort, in bytes.
const MAX_SORT_LEN: usize = 512;
/// The most writes of a batch.
pub const MAX_BATCH: usize = 1000;
/// The longest one statement may run (a list's filter over big documents): it is
/// stopped then, so no query holds the others up.
pub const MAX_QUERY_TIME: std::time::Duration = std::time::Duration::from_secs(2);

/// Why a call was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum DbError {
    /// Bad input: the reason.
    Invalid(String),
    /// A filter that does not parse.
    Filter(FilterError),
    /// No such record.
    NotFound(String),
    /// The record's version is not the one expected.
    Conflict {
        /// The record.
        id: String,
        /// The version the write expected (0: that there was none).
        expected: u64,
        /// Its version (0: none).
        actual: u64,
    },
    /// A unique field's value is taken.
    Taken(String),
    /// The collection's rules do not allow it.
    Denied(String),
    /// The storage failed.
    Storage(String),
}

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DbError::Invalid(why) => write!(f, "{why}"),
            DbError::Filter(e) => write!(f, "filter {e}"),
            DbError::NotFound(id) => write!(f, "no record {id}"),
            DbError::Conflict { id, expected, actual } => {
                write!(f, "record {id} is at version {actual}, not {expected}: read it again and retry")
            }
            DbError::Taken(why) | DbError::Denied(why) => write!(f, "{why}"),
            DbError::Storage(e) => write!(f, "storage: {e}"),
        }
    }
}

impl std::error::Error for DbError {}

impl From<rusqlite::Error> for DbError {
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::OperationInterrupted) => DbError::Invalid(format!(
                "the query ran longer than {} s: narrow the filter (an indexed field, fewer contains tests)",
                MAX_QUERY_TIME.as_secs()
            )),
            _ => DbError::Storage(e.to_string()),
        }
    }
}

/// A stored record.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Its id.
    pub id: String,
    /// When it was made (`YYYY-MM-DD HH:MM:SS.mmmZ`, UTC).
    pub created: String,
    /// When it last changed.
    pub updated: String,
    /// 1 when made, one more at every write.
    pub version: u64,
    /// The document (an object).
    pub data: Map<String, Json>,
}

impl Record {
    /// The record as its API shows it: the document's fields with `id`, `created`,
    /// `updated` and `version`.
    pub fn to_json(&self) -> Json {
        let mut m = self.data.clone();
        m.insert("id".into(), Json::String(self.id.clone()));
        m.insert("created".into(), Json::String(self.created.clone()));
        m.insert("updated".into(), Json::String(self.updated.clone()));
        m.insert("version".into(), Json::from(self.version));
        Json::Object(m)
    }
}

/// A list's query.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    /// A filter ([`crate::filter`]); empty for every record.
    pub filter: String,
    /// Fields to sort by, comma separated, `-` first for descending (`-created,title`);
    /// ties go by id.
    pub sort: String,
    /// The page, from 1.
    pub page: u32,
    /// Records a page (default 30, at most [`MAX_PER_PAGE`]).
    pub per_page: u32,
    /// Whether to count every match too.
    pub total: bool,
}

/// A page of a list.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    /// Its records.
    pub items: Vec<Record>,
    /// The page.
    pub page: u32,
    /// Records a page.
    pub per_page: u32,
    /// Every match, when asked.
    pub total: Option<u64>,
}

/// One write of a batch.
#[derive(Debug, Clone)]
pub enum Write {
    /// Makes a record.
    Create {
        /// Its id (default: a new one).
        id: Option<String>,
        /// Its document (an object).
        data: Json,
    },
    /// Changes a record: `merge` keeps the fields `data` does not name (a `null` removes
    /// one); otherwise `data` replaces the document.
    Update {
        /// The record.
        id: String,
        /// The fields (an object).
        data: Json,
        /// Merge rather than replace.
        merge: bool,
        /// The version it must be at.
        expected: Option<u64>,
    },
    /// Deletes a record.
    Delete {
        /// The record.
        id: String,
        /// The version it must be at.
        expected: Option<u64>,
    },
}

/// The records of every namespace's collections.
pub struct Records {
    conn: Mutex<rusqlite::Connection>,
    /// An empty database in memory where records are tested against rules one at a time
    /// (realtime deliveries), so they hold up no write.
    eval: Mutex<rusqlite::Connection>,
    /// When the running statement must stop (milliseconds since `epoch`; `u64::MAX`:
    /// none runs).
    deadline: std::sync::Arc<std::sync::atomic::AtomicU64>,
    epoch: std::time::Instant,
    /// The longest a statement may run ([`MAX_QUERY_TIME`] unless set).
    query_time: std::time::Duration,
}

/// A statement deadline in force: cleared when dropped.
struct Deadline<'a>(&'a std::sync::atomic::AtomicU64);

impl Drop for Deadline<'_> {
    fn drop(&mut self) {
        self.0.store(u64::MAX, std::sync::atomic::Ordering::Relaxed);
    }
}

fn now() -> String {
    let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    format!("{}Z", micro_core::time::utc(ms))
}

fn check_name(what: &str, name: &str) -> Result<(), DbError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(DbError::Invalid(format!("{what} {name:?}: letters, digits and _, not starting with a digit, at most 64")))
    }
}

fn check_id(id: &str) -> Result<(), DbError> {
    let ok = !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok { Ok(()) } else { Err(DbError::Invalid(format!("id {id:?}: letters, digits, _ and -, at most 64"))) }
}

/// A document to store: an object without the record's own fields, within the size.
fn document(data: Json) -> Result<Map<String, Json>, DbError> {
    let Json::Object(mut m) = data else {
        return Err(DbError::Invalid("a record's data is a JSON object".into()));
    };
    for own in ["id", "created", "updated", "version"] {
        m.remove(own);
    }
    let size = serde_json::to_vec(&m).map_err(|e| DbError::Invalid(e.to_string()))?.len();
    if size > MAX_DOCUMENT {
        return Err(DbError::Invalid(format!("the record is {size} bytes; at most {MAX_DOCUMENT}")));
    }
    Ok(m)
}

fn to_value(p: &Param) -> Value {
    match p {
        Param::Null => Value::Null,
        Param::Int(i) => Value::Integer(*i),
        Param::Real(r) => Value::Real(*r),
        Param::Text(t) => Value::Text(t.clone()),
    }
}

/// `ORDER BY` of a sort: each field a column or a JSON path parameter.
fn order_by(sort: &str, params: &mut Vec<Value>) -> Result<String, DbError> {
    let mut parts = Vec::new();
    for item in sort.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (desc, field) = match item.strip_prefix('-') {
            Some(f) => (true, f),
            None => (false, item.strip_prefix('+').unwrap_or(item)),
        };
        let path: Vec<&str> = field.split('.').collect();
        for seg in &path {
            check_name("sort field", seg)?;
        }
        let expr = match path.as_slice() {
            [c] if ["id", "created", "updated", "version"].contains(c) => (*c).to_string(),
            _ => {
                let json_path: String = path.iter().map(|s| format!(".\"{s}\"")).collect();
                params.push(Value::Text(format!("${json_path}")));
                format!("json_extract(data, ?{})", params.len())
            }
        };
        parts.push(format!("{expr} {}", if desc { "DESC" } else { "ASC" }));
        if parts.len() > MAX_SORT {
            return Err(DbError::Invalid(format!("sort by at most {MAX_SORT} fields")));
        }
    }
    parts.push("id ASC".into());
    Ok(parts.join(", "))
}

fn record(row: &rusqlite::Row<'_>) -> rusqlite::Result<(String, String, String, i64, String)> {
    Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?))
}

fn decode((id, created, updated, version, data): (String, String, String, i64, String)) -> Result<Record, DbError> {
    let data = match serde_json::from_str(&data) {
        Ok(Json::Object(m)) => m,
        _ => return Err(DbError::Storage(format!("record {id} is not a JSON object"))),
    };
    Ok(Record { id, created, updated, version: version.max(0) as u64, data })
}

const COLUMNS: &str = "id, created, updated, version, data";

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A record from its API form ([`Record::to_json`]).
fn from_json(text: &str) -> Result<Record, DbError> {
    let bad = || DbError::Storage(format!("a change is unreadable: {text:.80}"));
    let Json::Object(mut m) = serde_json::from_str(text).map_err(|_| bad())? else { return Err(bad()) };
    let mut take = |k: &str| m.remove(k);
    let id = take("id").and_then(|v| v.as_str().map(str::to_string)).ok_or_else(bad)?;
    let created = take("created").and_then(|v| v.as_str().map(str::to_string)).ok_or_else(bad)?;
    let updated = take("updated").and_then(|v| v.as_str().map(str::to_string)).ok_or_else(bad)?;
    let version = take("version").and_then(|v| v.as_u64()).ok_or_else(bad)?;
    Ok(Record { id, created, updated, version, data: m })
}

/// Whether `record` holds every one of `exprs` for `request`, tested on `conn` as a row
/// of its own (the same SQL a list runs, so both agree).
fn holds(
    conn: &rusqlite::Connection,
    record: &Record,
    exprs: &[&Expr],
    request: &sql::Request,
) -> Result<bool, DbError> {
    if exprs.is_empty() {
        return Ok(true);
    }
    let all = Expr::And(exprs.iter().map(|e| (*e).clone()).collect());
    let c = sql::sqlite(&all, request);
    let mut params: Vec<Value> = c.params.iter().map(to_value).collect();
    let n = params.len();
    params.push(Value::Text(record.id.clone()));
    params.push(Value::Text(record.created.clone()));
    params.push(Value::Text(record.updated.clone()));
    params.push(Value::Integer(record.version as i64));
    params.push(Value::Text(Json::Object(record.data.clone()).to_string()));
    let q = format!(
        "SELECT 1 FROM (SELECT ?{} AS id, ?{} AS created, ?{} AS updated, ?{} AS version, ?{} AS data) AS records WHERE {}",
        n + 1,
        n + 2,
        n + 3,
        n + 4,
        n + 5,
        c.sql
    );
    let found: Option<i64> = conn.query_row(&q, params_from_iter(params.iter()), |r| r.get(0)).optional()?;
    Ok(found.is_some())
}

/// What a change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Made a record.
    Create,
    /// Changed one.
    Update,
    /// Deleted one.
    Delete,
}

impl Action {
    /// `create`, `update` or `delete`.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Update => "update",
            Action::Delete => "delete",
        }
    }

    fn parse(s: &str) -> Option<Action> {
        match s {
            "create" => Some(Action::Create),
            "update" => Some(Action::Update),
            "delete" => Some(Action::Delete),
            _ => None,
        }
    }
}

/// A committed write: its place in the change log, what it did and the record (as it
/// is after, or as it was before a delete).
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// Its place in the change log (increasing in commit order).
    pub seq: u64,
    /// What it did.
    pub action: Action,
    /// The record.
    pub record: Record,
}

/// A record's document as a schema sees it (the fields without the record's own).
pub type Validate<'a> = dyn Fn(&Map<String, Json>) -> Result<(), DbError> + Send + Sync + 'a;

/// What a batch's writes must satisfy, tested inside its transaction: the rules of the
/// caller (each `None` allows every record) and the collection's schema.
#[derive(Default)]
pub struct Guard<'a> {
    /// The records the caller may see: one it may not is "not found" to it.
    pub view: Option<Expr>,
    /// What a new record must hold.
    pub create: Option<Expr>,
    /// What a changed record must hold, before and after the change.
    pub update: Option<Expr>,
    /// What a deleted record must hold.
    pub delete: Option<Expr>,
    /// The caller, for the rules' macros.
    pub request: sql::Request,
    /// The schema's check of every document written.
    pub validate: Option<&'a Validate<'a>>,
    /// Fields no two records of the collection may share a value of.
    pub unique: Vec<String>,
}

impl Guard<'_> {
    fn visible(&self, conn: &rusqlite::Connection, record: &Record) -> Result<(), DbError> {
        match &self.view {
            Some(e) if !holds(conn, record, &[e], &self.request)? => Err(DbError::NotFound(record.id.clone())),
            _ => Ok(()),
        }
    }

    fn admit(
        &self,
        conn: &rusqlite::Connection,
        ns: &str,
        collection: &str,
        action: Action,
        old: Option<&Record>,
        new: Option<&Record>,
    ) -> Result<(), DbError> {
        let rule = match action {
            Action::Create => &self.create,
            Action::Update => &self.update,
            Action::Delete => &self.delete,
        };
        // What is malformed is told first (400), then what is not allowed (403).
        if let (Some(new), Some(validate)) = (new, self.validate) {
            validate(&new.data)?;
        }
        if let Some(rule) = rule {
            for r in [old, new].into_iter().flatten() {
                if !holds(conn, r, &[rule], &self.request)? {
                    return Err(DbError::Denied(format!(
                        "the {} rule of {collection} does not allow this {}",
                        action.as_str(),
                        if Some(r) == old { "record" } else { "write" }
                    )));
                }
            }
        }
        let Some(new) = new else { return Ok(()) };
        for field in &self.unique {
            let Some(v) = new.data.get(field).filter(|v| !v.is_null()) else { continue };
            let taken: Option<String> = conn
                .query_row(
                    "SELECT id FROM records WHERE namespace = ?1 AND collection = ?2 AND id != ?3
                     AND json_extract(data, ?4) = json_extract(?5, '$') LIMIT 1",
                    (ns, collection, &new.id, format!("$.\"{field}\""), v.to_string()),
                    |r| r.get(0),
                )
                .optional()?;
            if taken.is_some() {
                return Err(DbError::Taken(format!("{field} {v} is taken: it is unique in {collection}")));
            }
        }
        Ok(())
    }
}

impl Records {
    /// Opens (or makes) the records' database at `path` (`:memory:` for one in memory).
    pub fn open(path: &Path) -> Result<Records, DbError> {
        let conn = rusqlite::Connection::open(path)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             PRAGMA busy_timeout = 5000;
             CREATE TABLE IF NOT EXISTS records (
                 namespace TEXT NOT NULL,
                 collection TEXT NOT NULL,
                 id TEXT NOT NULL,
                 data TEXT NOT NULL,
                 created TEXT NOT NULL,
                 updated TEXT NOT NULL,
                 version INTEGER NOT NULL,
                 PRIMARY KEY (namespace, collection, id)
             ) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS collections (
                 namespace TEXT NOT NULL,
                 name TEXT NOT NULL,
                 spec TEXT NOT NULL,
                 created TEXT NOT NULL,
                 updated TEXT NOT NULL,
                 PRIMARY KEY (namespace, name)
             ) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS changes (
                 seq INTEGER PRIMARY KEY AUTOINCREMENT,
                 namespace TEXT NOT NULL,
                 collection TEXT NOT NULL,
                 id TEXT NOT NULL,
                 action TEXT NOT NULL,
                 record TEXT NOT NULL,
                 at INTEGER NOT NULL
             );
             CREATE INDEX IF NOT EXISTS changes_of ON changes (namespace, collection, seq);",
        )?;
        let eval = rusqlite::Connection::open_in_memory()?;
        let deadline = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(u64::MAX));
        let epoch = std::time::Instant::now();
        // A watchdog stops the running statement past its deadline (and ends with the
        // records).
        let (at, interrupt) = (std::sync::Arc::downgrade(&deadline), conn.get_interrupt_handle());
        std::thread::spawn(move || {
            while let Some(at) = at.upgrade() {
                let due = at.load(std::sync::atomic::Ordering::Relaxed);
                if due != u64::MAX && epoch.elapsed().as_millis() as u64 > due {
                    interrupt.interrupt();
                }
                drop(at);
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        });
        Ok(Records { conn: Mutex::new(conn), eval: Mutex::new(eval), deadline, epoch, query_time: MAX_QUERY_TIME })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, rusqlite::Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Statements stop after `limit` instead of [`MAX_QUERY_TIME`] (checked every 50 ms).
    pub fn query_time(mut self, limit: std::time::Duration) -> Records {
        self.query_time = limit;
        self
    }

    /// Statements from now on stop after the query time until the guard is dropped.
    fn deadline(&self) -> Deadline<'_> {
        let at = self.epoch.elapsed() + self.query_time;
        self.deadline.store(at.as_millis() as u64, std::sync::atomic::Ordering::Relaxed);
        Deadline(&self.deadline)
    }

    /// Record `id` of `collection` in `ns`.
    pub fn get(&self, ns: &str, collection: &str, id: &str) -> Result<Record, DbError> {
        check_name("collection", collection)?;
        let conn = self.conn();
        Self::read(&conn, ns, collection, id)?.ok_or_else(|| DbError::NotFound(id.to_string()))
    }

    /// Record `id` of `collection` in `ns` if the caller's `rule` (a view rule) lets it
    /// see it; else not found.
    pub fn get_as(
        &self,
        ns: &str,
        collection: &str,
        id: &str,
        rule: Option<&Expr>,
        request: &sql::Request,
    ) -> Result<Record, DbError> {
        check_name("collection", collection)?;
        let conn = self.conn();
        let _deadline = self.deadline();
        let record = Self::read(&conn, ns, collection, id)?.ok_or_else(|| DbError::NotFound(id.to_string()))?;
        match rule {
            Some(rule) if !holds(&conn, &record, &[rule], request)? => Err(DbError::NotFound(id.to_string())),
            _ => Ok(record),
        }
    }

    fn read(conn: &rusqlite::Connection, ns: &str, collection: &str, id: &str) -> Result<Option<Record>, DbError> {
        let row = conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM records WHERE namespace = ?1 AND collection = ?2 AND id = ?3"),
                (ns, collection, id),
                record,
            )
            .optional()?;
        row.map(decode).transpose()
    }

    /// Makes a record.
    pub fn create(&self, ns: &str, collection: &str, data: Json) -> Result<Record, DbError> {
        let mut out = self.batch(ns, collection, vec![Write::Create { id: None, data }], &Guard::default())?;
        out.pop().map(|c| c.record).ok_or_else(|| DbError::Storage("no record made".into()))
    }

    /// Changes a record (see [`Write::Update`]).
    pub fn update(
        &self,
        ns: &str,
        collection: &str,
        id: &str,
        data: Json,
        merge: bool,
        expected: Option<u64>,
    ) -> Result<Record, DbError> {
        let write = Write::Update { id: id.to_string(), data, merge, expected };
        let mut out = self.batch(ns, collection, vec![write], &Guard::default())?;
        out.pop().map(|c| c.record).ok_or_else(|| DbError::Storage("no record changed".into()))
    }

    /// Deletes a record.
    pub fn delete(&self, ns: &str, collection: &str, id: &str, expected: Option<u64>) -> Result<(), DbError> {
        let write = Write::Delete { id: id.to_string(), expected };
        self.batch(ns, collection, vec![write], &Guard::default()).map(drop)
    }

    /// Writes all of `writes` or none (one transaction), each allowed by `guard`: the
    /// changes, in order (a deleted record as it was), each also in the change log that
    /// realtime subscribers read.
    pub fn batch(&self, ns: &str, collection: &str, writes: Vec<Write>, guard: &Guard) -> Result<Vec<Change>, DbError> {
        check_name("collection", collection)?;
        if writes.is_empty() {
            return Err(DbError::Invalid("a batch of no writes".into()));
        }
        if writes.len() > MAX_BATCH {
            return Err(DbError::Invalid(format!("a batch of {} writes; at most {MAX_BATCH}", writes.len())));
        }
        let mut conn = self.conn();
        let _deadline = self.deadline();
        let tx = conn.transaction()?;
        let mut out = Vec::with_capacity(writes.len());
        for w in writes {
            let at = now();
            let (action, record) = match w {
                Write::Create { id, data } => {
                    // A new id sorts by time (UUIDv7, as 32 hex digits).
                    let id = id.unwrap_or_else(|| uuid::Uuid::now_v7().simple().to_string());
                    check_id(&id)?;
                    let data = document(data)?;
                    if Self::read(&tx, ns, collection, &id)?.is_some() {
                        return Err(DbError::Conflict { id, expected: 0, actual: 1 });
                    }
                    let record = Record { id, created: at.clone(), updated: at.clone(), version: 1, data };
                    guard.admit(&tx, ns, collection, Action::Create, None, Some(&record))?;
                    let text = Json::Object(record.data.clone()).to_string();
                    tx.execute(
                        "INSERT INTO records (namespace, collection, id, data, created, updated, version)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?5, 1)",
                        (ns, collection, &record.id, &text, &at),
                    )?;
                    (Action::Create, record)
                }
                Write::Update { id, data, merge, expected } => {
                    check_id(&id)?;
                    let old = Self::read(&tx, ns, collection, &id)?.ok_or_else(|| DbError::NotFound(id.clone()))?;
                    // Whom the rules hide a record from, it does not exist for.
                    guard.visible(&tx, &old)?;
                    if let Some(e) = expected.filter(|e| *e != old.version) {
                        return Err(DbError::Conflict { id, expected: e, actual: old.version });
                    }
                    let patch = document(data)?;
                    let data = if merge {
                        let mut m = old.data.clone();
                        for (k, v) in patch {
                            if v.is_null() {
                                m.remove(&k);
                            } else {
                                m.insert(k, v);
                            }
                        }
                        document(Json::Object(m))?
                    } else {
                        patch
                    };
                    let version = old.version + 1;
                    let record = Record { id, created: old.created.clone(), updated: at.clone(), version, data };
                    guard.admit(&tx, ns, collection, Action::Update, Some(&old), Some(&record))?;
                    let text = Json::Object(record.data.clone()).to_string();
                    tx.execute(
                        "UPDATE records SET data = ?4, updated = ?5, version = ?6
                         WHERE namespace = ?1 AND collection = ?2 AND id = ?3",
                        (ns, collection, &record.id, &text, &at, version as i64),
                    )?;
                    (Action::Update, record)
                }
                Write::Delete { id, expected } => {
                    check_id(&id)?;
                    let old = Self::read(&tx, ns, collection, &id)?.ok_or_else(|| DbError::NotFound(id.clone()))?;
                    guard.visible(&tx, &old)?;
                    if let Some(e) = expected.filter(|e| *e != old.version) {
                        return Err(DbError::Conflict { id, expected: e, actual: old.version });
                    }
                    guard.admit(&tx, ns, collection, Action::Delete, Some(&old), None)?;
                    tx.execute(
                        "DELETE FROM records WHERE namespace = ?1 AND collection = ?2 AND id = ?3",
                        (ns, collection, &id),
                    )?;
                    (Action::Delete, old)
                }
            };
            tx.execute(
                "INSERT INTO changes (namespace, collection, id, action, record, at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                (ns, collection, &record.id, action.as_str(), record.to_json().to_string(), now_ms() as i64),
            )?;
            out.push(Change { seq: tx.last_insert_rowid().max(0) as u64, action, record });
        }
        tx.commit()?;
        Ok(out)
    }

    /// Whether `record` holds every one of `exprs` for `request` (tested apart from the
    /// stored records, as realtime deliveries are).
    pub fn matches(&self, record: &Record, exprs: &[&Expr], request: &sql::Request) -> Result<bool, DbError> {
        let conn = self.eval.lock().unwrap_or_else(|e| e.into_inner());
        holds(&conn, record, exprs, request)
    }

    /// The changes of `collection` in `ns` after `after` (a change's `seq`), oldest first,
    /// at most `limit`; of record `id` alone when given.
    pub fn changes(
        &self,
        ns: &str,
        collection: &str,
        id: Option<&str>,
        after: u64,
        limit: u32,
    ) -> Result<Vec<Change>, DbError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT seq, action, record FROM changes
             WHERE namespace = ?1 AND collection = ?2 AND seq > ?3 AND (?4 IS NULL OR id = ?4)
             ORDER BY seq LIMIT ?5",
        )?;
        let rows = stmt.query_map((ns, collection, after as i64, id, i64::from(limit)), |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, action, record) = row?;
            let action = Action::parse(&action).ok_or_else(|| DbError::Storage(format!("change {seq}: {action}")))?;
            out.push(Change { seq: seq.max(0) as u64, action, record: from_json(&record)? });
        }
        Ok(out)
    }

    /// The newest change's `seq` (0: none yet) and the oldest one kept (what a cursor
    /// older than it has lost).
    pub fn change_bounds(&self) -> Result<(u64, u64), DbError> {
        let conn = self.conn();
        let (newest, oldest): (Option<i64>, Option<i64>) =
            conn.query_row("SELECT max(seq), min(seq) FROM changes", [], |r| Ok((r.get(0)?, r.get(1)?)))?;
        let newest = match newest {
            Some(n) => n.max(0) as u64,
            // An empty log after trimming still counts on from the last seq handed out.
            None => conn
                .query_row("SELECT seq FROM sqlite_sequence WHERE name = 'changes'", [], |r| r.get::<_, i64>(0))
                .optional()?
                .unwrap_or(0)
                .max(0) as u64,
        };
        Ok((newest, oldest.map_or(newest + 1, |o| o.max(0) as u64)))
    }

    /// Drops changes older than `age`: cursors before them can no longer resume.
    pub fn trim_changes(&self, age: std::time::Duration) -> Result<u64, DbError> {
        let before = now_ms().saturating_sub(age.as_millis() as u64);
        let n = self.conn().execute("DELETE FROM changes WHERE at < ?1", (before as i64,))?;
        Ok(n as u64)
    }

    /// Collection `name` of `ns`: its spec (as its owner saved it), made and changed times.
    pub fn collection(&self, ns: &str, name: &str) -> Result<Option<(Json, String, String)>, DbError> {
        let conn = self.conn();
        let row = conn
            .query_row(
                "SELECT spec, created, updated FROM collections WHERE namespace = ?1 AND name = ?2",
                (ns, name),
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?)),
            )
            .optional()?;
        row.map(|(spec, c, u)| Ok((serde_json::from_str(&spec).map_err(|e| DbError::Storage(e.to_string()))?, c, u)))
            .transpose()
    }

    /// Every collection of `ns`, by name: name, spec, made and changed times.
    pub fn collections(&self, ns: &str) -> Result<Vec<(String, Json, String, String)>, DbError> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare("SELECT name, spec, created, updated FROM collections WHERE namespace = ?1 ORDER BY name")?;
        let rows = stmt.query_map((ns,), |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, String>(3)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (name, spec, c, u) = row?;
            out.push((name, serde_json::from_str(&spec).map_err(|e| DbError::Storage(e.to_string()))?, c, u));
        }
        Ok(out)
    }

    /// Saves collection `name` of `ns` with `spec` (made or replaced), in the same
    /// transaction renaming fields of its records (`renames`, from and to) and removing
    /// others (`drops`): its made and changed times.
    pub fn save_collection(
        &self,
        ns: &str,
        name: &str,
        spec: &Json,
        renames: &[(String, String)],
        drops: &[String],
    ) -> Result<(String, String), DbError> {
        check_name("collection", name)?;
        for f in renames.iter().flat_map(|(a, b)| [a, b]).chain(drops) {
            check_name("field", f)?;
        }
        let at = now();
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO collections (namespace, name, spec, created, updated) VALUES (?1, ?2, ?3, ?4, ?4)
             ON CONFLICT (namespace, name) DO UPDATE SET spec = excluded.spec, updated = excluded.updated",
            (ns, name, spec.to_string(), &at),
        )?;
        let path = |f: &str| format!("$.\"{f}\"");
        for (from, to) in renames {
            tx.execute(
                "UPDATE records SET data = json_remove(json_set(data, ?4, json_extract(data, ?3)), ?3)
                 WHERE namespace = ?1 AND collection = ?2 AND json_type(data, ?3) IS NOT NULL",
                (ns, name, path(from), path(to)),
            )?;
        }
        for f in drops {
            tx.execute(
                "UPDATE records SET data = json_remove(data, ?3)
                 WHERE namespace = ?1 AND collection = ?2 AND json_type(data, ?3) IS NOT NULL",
                (ns, name, path(f)),
            )?;
        }
        let created: String =
            tx.query_row("SELECT created FROM collections WHERE namespace = ?1 AND name = ?2", (ns, name), |r| {
                r.get(0)
            })?;
        tx.commit()?;
        Ok((created, at))
    }

    /// Deletes collection `name` of `ns` with its records and changes; whether it was there.
    pub fn delete_collection(&self, ns: &str, name: &str) -> Result<bool, DbError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let n = tx.execute("DELETE FROM collections WHERE namespace = ?1 AND name = ?2", (ns, name))?;
        tx.execute("DELETE FROM records WHERE namespace = ?1 AND collection = ?2", (ns, name))?;
        tx.execute("DELETE FROM changes WHERE namespace = ?1 AND collection = ?2", (ns, name))?;
        tx.commit()?;
        Ok(n > 0)
    }

    /// Deletes everything of namespace `ns` (it is being deleted).
    pub fn delete_namespace(&self, ns: &str) -> Result<(), DbError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        for table in ["collections", "records", "changes"] {
            tx.execute(&format!("DELETE FROM {table} WHERE namespace = ?1"), (ns,))?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Whether namespace `ns` has anything here.
    pub fn holds_namespace(&self, ns: &str) -> Result<bool, DbError> {
        let conn = self.conn();
        let any: Option<i64> = conn
            .query_row(
                "SELECT 1 FROM collections WHERE namespace = ?1
                 UNION ALL SELECT 1 FROM records WHERE namespace = ?1 LIMIT 1",
                (ns,),
                |r| r.get(0),
            )
            .optional()?;
        Ok(any.is_some())
    }

    /// A page of `collection`'s records in `ns` that match `q`'s filter for `request`.
    pub fn list(&self, ns: &str, collection: &str, q: &ListQuery, request: &sql::Request) -> Result<Page, DbError> {
        self.list_as(ns, collection, q, None, request)
    }

    /// A page of the records of `collection` in `ns` that match `q`'s filter and the
    /// caller's `rule` (a list rule: what it may see) for `request`.
    pub fn list_as(
        &self,
        ns: &str,
        collection: &str,
        q: &ListQuery,
        rule: Option<&Expr>,
        request: &sql::Request,
    ) -> Result<Page, DbError> {
        check_name("collection", collection)?;
        let per_page = if q.per_page == 0 { 30 } else { q.per_page };
        if per_page > MAX_PER_PAGE {
            return Err(DbError::Invalid(format!("at most {MAX_PER_PAGE} records a page")));
        }
        let page = q.page.max(1);
        if q.sort.len() > MAX_SORT_LEN {
            return Err(DbError::Invalid(format!("a sort of at most {MAX_SORT_LEN} characters")));
        }
        // The sort is checked before anything runs.
        order_by(&q.sort, &mut Vec::new())?;
        let mut params: Vec<Value> = Vec::new();
        let mut clause = String::from("1");
        let mut exprs: Vec<Expr> = rule.into_iter().cloned().collect();
        if !q.filter.trim().is_empty() {
            exprs.push(filter::parse(&q.filter).map_err(DbError::Filter)?);
        }
        // The rule and the filter combine as parsed trees, never as text.
        if !exprs.is_empty() {
            let c = sql::sqlite(&Expr::And(exprs), request);
            params.extend(c.params.iter().map(to_value));
            clause = c.sql;
        }
        params.push(Value::Text(ns.to_string()));
        let ns_param = params.len();
        params.push(Value::Text(collection.to_string()));
        let coll_param = params.len();
        let where_ = format!("namespace = ?{ns_param} AND collection = ?{coll_param} AND ({clause})");
        let conn = self.conn();
        let _deadline = self.deadline();
        let total = if q.total {
            let n: i64 = conn.query_row(
                &format!("SELECT count(*) FROM records WHERE {where_}"),
                params_from_iter(params.iter()),
                |r| r.get(0),
            )?;
            Some(n.max(0) as u64)
        } else {
            None
        };
        let order = order_by(&q.sort, &mut params)?;
        params.push(Value::Integer(i64::from(per_page)));
        let limit = params.len();
        params.push(Value::Integer(i64::from(page - 1) * i64::from(per_page)));
        let offset = params.len();
        let mut stmt = conn.prepare(&format!(
            "SELECT {COLUMNS} FROM records WHERE {where_} ORDER BY {order} LIMIT ?{limit} OFFSET ?{offset}"
        ))?;
        let rows = stmt.query_map(params_from_iter(params.iter()), record)?;
        let mut items = Vec::new();
        for r in rows {
            items.push(decode(r?)?);
        }
        Ok(Page { items, page, per_page, total })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn records() -> Records {
        Records::open(Path::new(":memory:")).unwrap()
    }

    fn titles(p: &Page) -> Vec<String> {
        p.items.iter().map(|r| r.data["title"].as_str().unwrap_or_default().to_string()).collect()
    }

    #[test]
    fn records_are_made_read_changed_and_deleted() {
        let db = records();
        let r = db.create("shop", "todos", json!({"title": "milk", "done": false, "id": "ignored"})).unwrap();
        assert_eq!((r.version, r.data.get("id")), (1, None), "its own fields are the record's");
        assert_eq!(r.id.len(), 32);
        assert!(r.created.ends_with('Z') && r.created == r.updated);
        assert_eq!(db.get("shop", "todos", &r.id).unwrap(), r);
        // Another namespace sees nothing of it.
        assert_eq!(db.get("blog", "todos", &r.id), Err(DbError::NotFound(r.id.clone())));
        let merged = db.update("shop", "todos", &r.id, json!({"done": true, "note": "x"}), true, Some(1)).unwrap();
        assert_eq!((merged.version, &merged.data["title"], &merged.data["done"]), (2, &json!("milk"), &json!(true)));
        let removed = db.update("shop", "todos", &r.id, json!({"note": null}), true, None).unwrap();
        assert!(!removed.data.contains_key("note"), "null removes a field on merge");
        let replaced = db.update("shop", "todos", &r.id, json!({"title": "oat milk"}), false, None).unwrap();
        assert_eq!((replaced.version, replaced.data.len()), (4, 1), "replace keeps only what it gives");
        assert_eq!(replaced.to_json()["version"], 4);
        // Compare-and-set: a stale version is refused and changes nothing.
        let stale = db.update("shop", "todos", &r.id, json!({"title": "x"}), true, Some(2)).unwrap_err();
        assert_eq!(stale, DbError::Conflict { id: r.id.clone(), expected: 2, actual: 4 });
        assert_eq!(db.get("shop", "todos", &r.id).unwrap().data["title"], "oat milk");
        assert!(matches!(db.delete("shop", "todos", &r.id, Some(3)), Err(DbError::Conflict { .. })));
        db.delete("shop", "todos", &r.id, Some(4)).unwrap();
        assert_eq!(db.get("shop", "todos", &r.id), Err(DbError::NotFound(r.id.clone())));
        assert_eq!(db.delete("shop", "todos", &r.id, None), Err(DbError::NotFound(r.id)));
    }

    #[test]
    fn a_batch_writes_everything_or_nothing() {
        let db = records();
        let a = db.create("bank", "accounts", json!({"owner": "ann", "balance": 100})).unwrap();
        let b = db.create("bank", "accounts", json!({"owner": "bo", "balance": 0})).unwrap();
        let transfer = |from_v, to_v| {
            vec![
                Write::Update { id: a.id.clone(), data: json!({"balance": 70}), merge: true, expected: Some(from_v) },
                Write::Update { id: b.id.clone(), data: json!({"balance": 30}), merge: true, expected: Some(to_v) },
                Write::Create { id: Some("t1".into()), data: json!({"amount": 30}) },
            ]
        };
        // The second write's version is stale: nothing of the batch is written.
        let e = db.batch("bank", "accounts", transfer(1, 7), &Guard::default()).unwrap_err();
        assert!(matches!(e, DbError::Conflict { expected: 7, actual: 1, .. }), "{e:?}");
        assert_eq!(db.get("bank", "accounts", &a.id).unwrap().data["balance"], 100);
        assert!(db.get("bank", "accounts", "t1").is_err());
        let done = db.batch("bank", "accounts", transfer(1, 1), &Guard::default()).unwrap();
        assert_eq!(done.len(), 3);
        assert_eq!(db.get("bank", "accounts", &b.id).unwrap().data["balance"], 30);
        // The same id twice: refused, nothing written.
        let twice = vec![
            Write::Create { id: Some("t2".into()), data: json!({}) },
            Write::Create { id: Some("t2".into()), data: json!({}) },
        ];
        assert!(matches!(db.batch("bank", "accounts", twice, &Guard::default()), Err(DbError::Conflict { .. })));
        assert!(db.get("bank", "accounts", "t2").is_err());
    }

    #[test]
    fn lists_filter_sort_and_page() {
        let db = records();
        for (title, prio, owner) in [("a", 3, "ann"), ("b", 1, "bo"), ("c", 2, "ann"), ("d", 2, "ann"), ("e", 5, "bo")]
        {
            db.create("shop", "todos", json!({"title": title, "prio": prio, "owner": owner})).unwrap();
        }
        db.create("blog", "todos", json!({"title": "theirs", "prio": 1, "owner": "ann"})).unwrap();
        let ann = sql::Request { auth: [("id".to_string(), Param::Text("ann".into()))].into(), ..Default::default() };
        let q = |filter: &str, sort: &str, page, per_page| ListQuery {
            filter: filter.into(),
            sort: sort.into(),
            page,
            per_page,
            total: true,
        };
        let p = db.list("shop", "todos", &q("owner = @request.auth.id", "-prio,title", 1, 2), &ann).unwrap();
        assert_eq!((titles(&p), p.total), (vec!["a".to_string(), "c".into()], Some(3)));
        let p = db.list("shop", "todos", &q("owner = @request.auth.id", "-prio,title", 2, 2), &ann).unwrap();
        assert_eq!(titles(&p), vec!["d".to_string()]);
        let p = db.list("shop", "todos", &q("", "prio", 1, 10), &ann).unwrap();
        assert_eq!(titles(&p), ["b", "c", "d", "a", "e"].map(String::from).to_vec(), "ties by id (made in order)");
        assert_eq!(p.total, Some(5), "the blog's record is not the shop's");
        // Bad input: clear errors.
        let e = db.list("shop", "todos", &q("prio >", "", 1, 10), &ann).unwrap_err();
        assert!(e.to_string().contains("at 6: expected a field or a value"), "{e}");
        let e = db.list("shop", "todos", &q("", "prio; DROP TABLE records", 1, 10), &ann).unwrap_err();
        assert!(e.to_string().contains("sort field"), "{e}");
        assert!(db.list("shop", "todos", &q("", "", 1, MAX_PER_PAGE + 1), &ann).is_err());
        assert!(db.list("shop", "bad name", &q("", "", 1, 1), &ann).is_err());
        assert_eq!(db.list("shop", "todos", &q("", "", 1, 100), &ann).unwrap().items.len(), 5, "still there");
    }

    #[test]
    fn bad_documents_are_refused() {
        let db = records();
        assert!(db.create("shop", "todos", json!([1, 2])).is_err());
        let big = "x".repeat(MAX_DOCUMENT);
        assert!(db.create("shop", "todos", json!({"big": big})).unwrap_err().to_string().contains("at most"));
        let bad_id = vec![Write::Create { id: Some("../x".into()), data: json!({}) }];
        assert!(db.batch("shop", "todos", bad_id, &Guard::default()).is_err());
        assert!(db.batch("shop", "todos", Vec::new(), &Guard::default()).is_err());
    }

    #[test]
    fn a_slow_query_is_stopped_and_the_next_one_runs() {
        let db = records().query_time(std::time::Duration::from_millis(100));
        let long = "a".repeat(100_000);
        for _ in 0..20 {
            db.create("shop", "docs", json!({"t": long})).unwrap();
        }
        let slow = format!("t ~ '{}b'", "a".repeat(3000));
        let q = ListQuery { filter: slow, total: true, ..Default::default() };
        let started = std::time::Instant::now();
        let e = db.list("shop", "docs", &q, &sql::Request::default()).unwrap_err();
        assert!(e.to_string().contains("ran longer than"), "{e}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "{:?}", started.elapsed());
        let q = ListQuery { filter: "t ~ 'b'".into(), per_page: 5, ..Default::default() };
        assert_eq!(db.list("shop", "docs", &q, &sql::Request::default()).unwrap().items.len(), 0);
        let all = db.list("shop", "docs", &ListQuery { per_page: 50, ..Default::default() }, &Default::default());
        assert_eq!(all.unwrap().items.len(), 20);
    }

    #[test]
    fn big_batches_and_sorts_are_refused() {
        let db = records();
        let many = (0..=MAX_BATCH).map(|_| Write::Create { id: None, data: json!({}) }).collect();
        assert!(db.batch("shop", "todos", many, &Guard::default()).unwrap_err().to_string().contains("at most"));
        let sort = ["a"; 300].join(",");
        let q = ListQuery { sort, ..Default::default() };
        assert!(db.list("shop", "todos", &q, &Default::default()).unwrap_err().to_string().contains("sort"));
        let q = ListQuery { sort: ["a"; MAX_SORT + 1].join(","), ..Default::default() };
        assert!(db.list("shop", "todos", &q, &Default::default()).unwrap_err().to_string().contains("at most"));
    }

    #[test]
    fn records_survive_reopening() {
        let dir = std::env::temp_dir().join(format!("micro-db-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("records.db");
        let id = Records::open(&path).unwrap().create("shop", "todos", json!({"title": "kept"})).unwrap().id;
        assert_eq!(Records::open(&path).unwrap().get("shop", "todos", &id).unwrap().data["title"], "kept");
        let _ = std::fs::remove_dir_all(dir);
    }
}
