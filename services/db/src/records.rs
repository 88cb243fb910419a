//! Records of collections, kept in SQLite (one node; PostgreSQL comes with the cluster
//! part): JSON documents with a generated id, `created`/`updated` times and a version
//! that every write raises, listed by [`crate::filter`] filters, sorted and paged, and
//! written one at a time or in atomic batches with optional expected versions
//! (compare-and-set).
//!
//! One table holds every namespace's collections, keyed by `(namespace, collection,
//! id)`; a namespace sees only its own rows (every statement names it).

use crate::filter::{self, FilterError};
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
             ) WITHOUT ROWID;",
        )?;
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
        Ok(Records { conn: Mutex::new(conn), deadline, epoch, query_time: MAX_QUERY_TIME })
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
        let mut out = self.batch(ns, collection, vec![Write::Create { id: None, data }])?;
        out.pop().ok_or_else(|| DbError::Storage("no record made".into()))
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
        let mut out = self.batch(ns, collection, vec![write])?;
        out.pop().ok_or_else(|| DbError::Storage("no record changed".into()))
    }

    /// Deletes a record.
    pub fn delete(&self, ns: &str, collection: &str, id: &str, expected: Option<u64>) -> Result<(), DbError> {
        self.batch(ns, collection, vec![Write::Delete { id: id.to_string(), expected }]).map(drop)
    }

    /// Writes all of `writes` or none (one transaction): the records made or changed,
    /// in order (a deleted one as it was).
    pub fn batch(&self, ns: &str, collection: &str, writes: Vec<Write>) -> Result<Vec<Record>, DbError> {
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
            match w {
                Write::Create { id, data } => {
                    // A new id sorts by time (UUIDv7, as 32 hex digits).
                    let id = id.unwrap_or_else(|| uuid::Uuid::now_v7().simple().to_string());
                    check_id(&id)?;
                    let data = document(data)?;
                    if Self::read(&tx, ns, collection, &id)?.is_some() {
                        return Err(DbError::Conflict { id, expected: 0, actual: 1 });
                    }
                    let text = Json::Object(data.clone()).to_string();
                    tx.execute(
                        "INSERT INTO records (namespace, collection, id, data, created, updated, version)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?5, 1)",
                        (ns, collection, &id, &text, &at),
                    )?;
                    out.push(Record { id, created: at.clone(), updated: at, version: 1, data });
                }
                Write::Update { id, data, merge, expected } => {
                    check_id(&id)?;
                    let old = Self::read(&tx, ns, collection, &id)?.ok_or_else(|| DbError::NotFound(id.clone()))?;
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
                    let text = Json::Object(data.clone()).to_string();
                    tx.execute(
                        "UPDATE records SET data = ?4, updated = ?5, version = ?6
                         WHERE namespace = ?1 AND collection = ?2 AND id = ?3",
                        (ns, collection, &id, &text, &at, version as i64),
                    )?;
                    out.push(Record { id, created: old.created, updated: at, version, data });
                }
                Write::Delete { id, expected } => {
                    check_id(&id)?;
                    let old = Self::read(&tx, ns, collection, &id)?.ok_or_else(|| DbError::NotFound(id.clone()))?;
                    if let Some(e) = expected.filter(|e| *e != old.version) {
                        return Err(DbError::Conflict { id, expected: e, actual: old.version });
                    }
                    tx.execute(
                        "DELETE FROM records WHERE namespace = ?1 AND collection = ?2 AND id = ?3",
                        (ns, collection, &id),
                    )?;
                    out.push(old);
                }
            }
        }
        tx.commit()?;
        Ok(out)
    }

    /// A page of `collection`'s records in `ns` that match `q`'s filter for `request`.
    pub fn list(&self, ns: &str, collection: &str, q: &ListQuery, request: &sql::Request) -> Result<Page, DbError> {
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
        if !q.filter.trim().is_empty() {
            let expr = filter::parse(&q.filter).map_err(DbError::Filter)?;
            let c = sql::sqlite(&expr, request);
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
        let e = db.batch("bank", "accounts", transfer(1, 7)).unwrap_err();
        assert!(matches!(e, DbError::Conflict { expected: 7, actual: 1, .. }), "{e:?}");
        assert_eq!(db.get("bank", "accounts", &a.id).unwrap().data["balance"], 100);
        assert!(db.get("bank", "accounts", "t1").is_err());
        let done = db.batch("bank", "accounts", transfer(1, 1)).unwrap();
        assert_eq!(done.len(), 3);
        assert_eq!(db.get("bank", "accounts", &b.id).unwrap().data["balance"], 30);
        // The same id twice: refused, nothing written.
        let twice = vec![
            Write::Create { id: Some("t2".into()), data: json!({}) },
            Write::Create { id: Some("t2".into()), data: json!({}) },
        ];
        assert!(matches!(db.batch("bank", "accounts", twice), Err(DbError::Conflict { .. })));
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
        assert!(db.batch("shop", "todos", bad_id).is_err());
        assert!(db.batch("shop", "todos", Vec::new()).is_err());
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
        assert!(db.batch("shop", "todos", many).unwrap_err().to_string().contains("at most"));
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
