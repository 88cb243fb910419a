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
pub(crate) const MAX_SORT_LEN: usize = 512;
/// The most bytes of records one read of the change log returns (at least one change).
pub(crate) const MAX_CHANGES_BYTES: usize = 4 << 20;
/// The most collections a namespace may have.
pub const MAX_COLLECTIONS: usize = 500;
/// How long maintenance (saving a collection's spec, deleting one or a namespace,
/// trimming the change log) may hold the writer.
pub(crate) const MAINTENANCE_TIME: std::time::Duration = std::time::Duration::from_secs(120);
/// The most writes of a batch.
pub const MAX_BATCH: usize = 1000;
/// The longest a batch may take before it is given up (nothing of it written).
pub const MAX_BATCH_TIME: std::time::Duration = std::time::Duration::from_secs(10);
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
    /// The collection's spec changed since the batch's rules were read: read them again.
    Stale,
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
            DbError::Stale => write!(f, "the collection changed meanwhile: try again"),
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
            Some(rusqlite::ErrorCode::ConstraintViolation) => {
                DbError::Taken("another record has these values of a unique index".into())
            }
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
    /// The one connection that writes.
    writer: Slot,
    /// Connections that only read (WAL lets them read while the writer writes); none for
    /// a database in memory, whose reads go to the writer.
    readers: Vec<Slot>,
    /// The reader tried first next.
    next: std::sync::atomic::AtomicUsize,
    /// Bumped when the writer gathered new figures for the planner (`ANALYZE`): a reader
    /// loads them before its next statement (a connection does not on its own).
    figures: std::sync::atomic::AtomicU64,
    /// An empty database in memory where records are tested against rules one at a time
    /// (realtime deliveries), so they hold up no write.
    eval: Slot,
    epoch: std::time::Instant,
    /// The longest a statement may run ([`MAX_QUERY_TIME`] unless set).
    query_time: std::time::Duration,
}

/// A connection and when its running statement must stop (milliseconds since the
/// records' epoch; `u64::MAX`: none runs), which a watchdog enforces.
struct Slot {
    conn: Mutex<rusqlite::Connection>,
    deadline: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// The planner's figures this connection has loaded (see `Records::figures`).
    figures: std::sync::atomic::AtomicU64,
}

impl Slot {
    fn new(conn: rusqlite::Connection) -> Slot {
        Slot {
            conn: Mutex::new(conn),
            deadline: std::sync::Arc::new(std::sync::atomic::AtomicU64::new(u64::MAX)),
            figures: Default::default(),
        }
    }
}

/// A connection held: its statements stop at its deadline until it is dropped.
struct Held<'a> {
    conn: std::sync::MutexGuard<'a, rusqlite::Connection>,
    deadline: &'a std::sync::atomic::AtomicU64,
}

impl std::ops::Deref for Held<'_> {
    type Target = rusqlite::Connection;
    fn deref(&self) -> &rusqlite::Connection {
        &self.conn
    }
}

impl std::ops::DerefMut for Held<'_> {
    fn deref_mut(&mut self) -> &mut rusqlite::Connection {
        &mut self.conn
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.deadline.store(u64::MAX, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Connections that only read, besides the writer.
const READERS: usize = 4;

pub(crate) fn now() -> String {
    let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    format!("{}Z", micro_core::time::utc(ms))
}

pub(crate) fn check_name(what: &str, name: &str) -> Result<(), DbError> {
    if what == "collection" && name.eq_ignore_ascii_case("collections") {
        return Err(DbError::Invalid("collections is the name of the collections' route: choose another".into()));
    }
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

pub(crate) fn check_id(id: &str) -> Result<(), DbError> {
    let ok = !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok { Ok(()) } else { Err(DbError::Invalid(format!("id {id:?}: letters, digits, _ and -, at most 64"))) }
}

/// A document to store: an object without the record's own fields, within the size.
pub(crate) fn document(data: Json) -> Result<Map<String, Json>, DbError> {
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

/// The fields of a sort (`-created,title`), in order: each path and whether descending.
pub(crate) fn sort_fields(sort: &str) -> Result<Vec<(Vec<String>, bool)>, DbError> {
    if sort.len() > MAX_SORT_LEN {
        return Err(DbError::Invalid(format!("a sort of at most {MAX_SORT_LEN} characters")));
    }
    let mut out = Vec::new();
    for item in sort.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (desc, field) = match item.strip_prefix('-') {
            Some(f) => (true, f),
            None => (false, item.strip_prefix('+').unwrap_or(item)),
        };
        out.push((field_path("sort field", field)?, desc));
        if out.len() > MAX_SORT {
            return Err(DbError::Invalid(format!("sort by at most {MAX_SORT} fields")));
        }
    }
    Ok(out)
}

/// `ORDER BY` of a sort: each field a column or a JSON path; ties by id.
pub(crate) fn order_by(sort: &str) -> Result<String, DbError> {
    let mut parts: Vec<String> = sort_fields(sort)?
        .iter()
        .map(|(path, desc)| format!("{} {}", sql::field_expr(path), if *desc { "DESC" } else { "ASC" }))
        .collect();
    parts.push("records.id ASC".into());
    Ok(parts.join(", "))
}

/// What every list checks before anything runs, on either backend: the collection's rows
/// (as [`scope`]), the rule and the filter as one parsed tree (none: every record), the
/// page size and the page; the sort is checked too.
pub(crate) fn list_terms(
    ns: &str,
    collection: &str,
    q: &ListQuery,
    rule: Option<&Expr>,
) -> Result<(String, Option<Expr>, u32, u32), DbError> {
    let scope = scope(ns, collection)?;
    let per_page = if q.per_page == 0 { 30 } else { q.per_page };
    if per_page > MAX_PER_PAGE {
        return Err(DbError::Invalid(format!("at most {MAX_PER_PAGE} records a page")));
    }
    sort_fields(&q.sort)?;
    let mut exprs: Vec<Expr> = rule.into_iter().cloned().collect();
    if !q.filter.trim().is_empty() {
        exprs.push(filter::parse(&q.filter).map_err(DbError::Filter)?);
    }
    let all = (!exprs.is_empty()).then_some(Expr::And(exprs));
    Ok((scope, all, per_page, q.page.max(1)))
}

/// A field's path (`a.b.c`), each part a name.
pub(crate) fn field_path(what: &str, field: &str) -> Result<Vec<String>, DbError> {
    let path: Vec<String> = field.split('.').map(str::to_string).collect();
    if path.len() > crate::filter::MAX_PATH {
        return Err(DbError::Invalid(format!("{what} {field:?}: at most {} parts", crate::filter::MAX_PATH)));
    }
    for seg in &path {
        check_name(what, seg)?;
    }
    Ok(path)
}

/// The rows of `collection` in `ns` as SQL text: both written into the query (checked
/// names only) so that the collection's indexes, partial on them, are used.
pub(crate) fn scope(ns: &str, collection: &str) -> Result<String, DbError> {
    check_name("collection", collection)?;
    if ns.is_empty() || ns.len() > 63 || !ns.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Err(DbError::Invalid(format!("invalid namespace {ns:?}")));
    }
    Ok(format!("records.namespace = '{ns}' AND records.collection = '{collection}'"))
}

/// An index of a collection: its fields, in order, and whether no two records may share
/// their values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexSpec {
    /// The fields (paths like `a.b`; `id`, `created`, `updated` and `version` too).
    pub fields: Vec<String>,
    /// No two records share the fields' values.
    pub unique: bool,
}

/// The most indexes of a collection, and fields of one index.
pub const MAX_INDEXES: usize = 16;
/// The most indexes of all a namespace's collections: every index is a partial index of
/// the one records table all namespaces share, which every write and plan looks at.
pub const MAX_NAMESPACE_INDEXES: usize = 64;

/// Refuses a namespace `n` indexes in all.
pub(crate) fn check_namespace_indexes(ns: &str, n: usize) -> Result<(), DbError> {
    if n > MAX_NAMESPACE_INDEXES {
        return Err(DbError::Invalid(format!(
            "namespace {ns} would have {n} indexes over its collections; at most {MAX_NAMESPACE_INDEXES}"
        )));
    }
    Ok(())
}
pub(crate) const MAX_INDEX_FIELDS: usize = 8;

impl IndexSpec {
    /// Its SQLite name: the namespace, the collection and a digest of the definition.
    pub fn name(&self, ns: &str, collection: &str) -> String {
        format!("ix_{ns}_{collection}_{}", self.digest(ns, collection))
    }

    /// A digest of the index with its namespace and collection (SHA-256, 128 bits in
    /// hex): the exact names are in it (SQLite's names ignore case, collections' do not),
    /// and no tenant can choose a definition whose digest is another's.
    pub fn digest(&self, ns: &str, collection: &str) -> String {
        use sha2::Digest;
        let definition = format!("{ns}\n{collection}\n{}\n{}", self.fields.join(","), self.unique);
        let hash = sha2::Sha256::digest(definition.as_bytes());
        hash[..16].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Checks the fields: how many, none twice.
    pub(crate) fn check(&self) -> Result<(), DbError> {
        if self.fields.is_empty() || self.fields.len() > MAX_INDEX_FIELDS {
            return Err(DbError::Invalid(format!("an index of 1 to {MAX_INDEX_FIELDS} fields")));
        }
        let mut seen = std::collections::BTreeSet::new();
        if !self.fields.iter().all(|f| seen.insert(f)) {
            return Err(DbError::Invalid(format!("index ({}) names a field twice", self.fields.join(", "))));
        }
        for f in &self.fields {
            field_path("index field", f)?;
        }
        Ok(())
    }

    fn create_sql(&self, ns: &str, collection: &str) -> Result<String, DbError> {
        let mut exprs = Vec::new();
        for f in &self.fields {
            exprs.push(sql::field_expr(&field_path("index field", f)?).replace("records.", ""));
        }
        // The namespace and the collection lead, so that SQLite's planner (which does not
        // count the partial index's own terms) prefers it to the primary key.
        Ok(format!(
            "CREATE {}INDEX IF NOT EXISTS \"{}\" ON records (namespace, collection, {}) WHERE {}",
            if self.unique { "UNIQUE " } else { "" },
            self.name(ns, collection),
            exprs.join(", "),
            scope(ns, collection)?.replace("records.", "")
        ))
    }
}

fn record(row: &rusqlite::Row<'_>) -> rusqlite::Result<(String, String, String, i64, String)> {
    Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?))
}

pub(crate) fn decode(
    (id, created, updated, version, data): (String, String, String, i64, String),
) -> Result<Record, DbError> {
    let data = match serde_json::from_str(&data) {
        Ok(Json::Object(m)) => m,
        _ => return Err(DbError::Storage(format!("record {id} is not a JSON object"))),
    };
    Ok(Record { id, created, updated, version: version.max(0) as u64, data })
}

/// Replaces SQLite's `LIKE … ESCAPE …` on `conn` with a contains-test in time linear in
/// the text: the filters' `~` is `x LIKE '%text%' ESCAPE '\'` (the text's `%`, `_` and `\`
/// escaped), which SQLite's own LIKE matches in time of the text times the pattern, and
/// no interrupt stops one call of it (a 1 MiB record and a long pattern would hold the
/// connection for seconds). ASCII letters match either case, as SQLite's do.
fn contains_as_like(conn: &rusqlite::Connection) -> Result<(), DbError> {
    use rusqlite::functions::FunctionFlags;
    use rusqlite::types::ValueRef;
    let flags = FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC;
    conn.create_scalar_function("like", 3, flags, |ctx| {
        let text = |i: usize| -> rusqlite::Result<Option<Vec<u8>>> {
            Ok(match ctx.get_raw(i) {
                ValueRef::Null => None,
                ValueRef::Integer(n) => Some(n.to_string().into_bytes()),
                ValueRef::Real(r) => Some(r.to_string().into_bytes()),
                ValueRef::Text(t) | ValueRef::Blob(t) => Some(t.to_vec()),
            })
        };
        let (Some(pattern), Some(haystack)) = (text(0)?, text(1)?) else { return Ok(None) };
        let inner = pattern
            .strip_prefix(b"%")
            .and_then(|p| p.strip_suffix(b"%"))
            .ok_or_else(|| rusqlite::Error::UserFunctionError("a contains pattern is %text%".into()))?;
        let mut needle = Vec::with_capacity(inner.len());
        let mut bytes = inner.iter();
        while let Some(b) = bytes.next() {
            match b {
                b'\\' => needle.push(*bytes.next().unwrap_or(&b'\\')),
                b'%' | b'_' => {
                    return Err(rusqlite::Error::UserFunctionError(
                        "a contains pattern has no wildcards inside".into(),
                    ));
                }
                b => needle.push(*b),
            }
        }
        needle.make_ascii_lowercase();
        let haystack = haystack.to_ascii_lowercase();
        Ok(Some(memchr::memmem::find(&haystack, &needle).is_some()))
    })?;
    Ok(())
}

/// FNV-1a of `bytes`: stable across builds and platforms.
pub(crate) fn fnv(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in bytes {
        h = (h ^ u64::from(*b)).wrapping_mul(0x100000001b3);
    }
    h
}

/// The full-text index of `collection` in `ns`, as SQL text (checked names only).
fn fts_table(ns: &str, collection: &str) -> Result<String, DbError> {
    scope(ns, collection)?;
    Ok(format!("\"fts_{ns}_{collection}_{:08x}\"", fnv(collection.as_bytes()) as u32))
}

/// The text of `fields` of a document, for its full-text index: strings, numbers and
/// lists of them.
pub(crate) fn text_of(data: &Map<String, Json>, fields: &[String]) -> String {
    fn add(v: &Json, out: &mut String) {
        match v {
            Json::String(s) => {
                out.push_str(s);
                out.push('\n');
            }
            Json::Number(n) => {
                out.push_str(&n.to_string());
                out.push('\n');
            }
            Json::Array(a) => a.iter().for_each(|v| add(v, out)),
            _ => {}
        }
    }
    let mut out = String::new();
    for f in fields {
        let mut v = data.get(f.split('.').next().unwrap_or_default());
        for seg in f.split('.').skip(1) {
            v = v.and_then(|v| v.get(seg));
        }
        if let Some(v) = v {
            add(v, &mut out);
        }
    }
    out
}

/// An aggregate of [`Records::aggregate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggregateOp {
    /// How many records (of a field: how many have it).
    Count,
    /// The sum of a field.
    Sum,
    /// The average of a field.
    Avg,
    /// The least value of a field.
    Min,
    /// The greatest value of a field.
    Max,
}

impl AggregateOp {
    pub(crate) fn sql(self) -> &'static str {
        match self {
            AggregateOp::Count => "count",
            AggregateOp::Sum => "sum",
            AggregateOp::Avg => "avg",
            AggregateOp::Min => "min",
            AggregateOp::Max => "max",
        }
    }

    /// `count`, `sum`, `avg`, `min` or `max`.
    pub fn parse(s: &str) -> Option<AggregateOp> {
        match s {
            "count" => Some(AggregateOp::Count),
            "sum" => Some(AggregateOp::Sum),
            "avg" => Some(AggregateOp::Avg),
            "min" => Some(AggregateOp::Min),
            "max" => Some(AggregateOp::Max),
            _ => None,
        }
    }
}

const COLUMNS: &str = "records.id, records.created, records.updated, records.version, records.data";

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A record from its API form ([`Record::to_json`]).
pub(crate) fn from_json(text: &str) -> Result<Record, DbError> {
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
    // (The text depends on the rules' shape only: the statement is kept between calls.)
    let found: Option<i64> =
        conn.prepare_cached(&q)?.query_row(params_from_iter(params.iter()), |r| r.get(0)).optional()?;
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
    /// Deleted the collection (and every record of it).
    Reset,
}

impl Action {
    /// `create`, `update` or `delete`.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Update => "update",
            Action::Delete => "delete",
            Action::Reset => "reset",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Action> {
        match s {
            "create" => Some(Action::Create),
            "update" => Some(Action::Update),
            "delete" => Some(Action::Delete),
            "reset" => Some(Action::Reset),
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
    /// What the collection's spec must be: the rules and schema above are of it.
    pub expect: Option<Expect>,
}

/// The collection's spec a batch's guard was made of, checked in its transaction.
#[derive(Debug, Clone)]
pub enum Expect {
    /// It last changed at this time.
    Updated(String),
    /// There is none: the batch makes it with this spec (no indexes, no search).
    Make(Json),
}

impl Guard<'_> {
    fn visible(&self, tx: &dyn Txn, record: &Record) -> Result<(), DbError> {
        match &self.view {
            Some(e) if !tx.holds(record, &[e], &self.request)? => Err(DbError::NotFound(record.id.clone())),
            _ => Ok(()),
        }
    }

    fn admit(
        &self,
        tx: &dyn Txn,
        collection: &str,
        action: Action,
        old: Option<&Record>,
        new: Option<&Record>,
    ) -> Result<(), DbError> {
        let rule = match action {
            Action::Create => &self.create,
            Action::Update => &self.update,
            Action::Delete | Action::Reset => &self.delete,
        };
        // What is malformed is told first (400), then what is not allowed (403).
        if let (Some(new), Some(validate)) = (new, self.validate) {
            validate(&new.data)?;
        }
        if let Some(rule) = rule {
            for r in [old, new].into_iter().flatten() {
                if !tx.holds(r, &[rule], &self.request)? {
                    return Err(DbError::Denied(format!(
                        "the {} rule of {collection} does not allow this {}",
                        action.as_str(),
                        if Some(r) == old { "record" } else { "write" }
                    )));
                }
            }
        }
        Ok(())
    }
}

/// One transaction of a backend, as a batch writes through it ([`apply`]): whatever the
/// storage, a batch checks and writes the same way.
pub(crate) trait Txn {
    /// When collection `collection` of `ns` last changed (none: there is none).
    fn spec_updated(&self, ns: &str, collection: &str) -> Result<Option<String>, DbError>;
    /// Makes the collection with `spec` unless it exists: whether it made it.
    fn make_collection(&self, ns: &str, collection: &str, spec: &Json, at: &str) -> Result<bool, DbError>;
    /// The fields its full-text search covers (none: no search).
    fn search_fields(&self, ns: &str, collection: &str) -> Result<Option<Vec<String>>, DbError>;
    /// Record `id`.
    fn read(&self, ns: &str, collection: &str, id: &str) -> Result<Option<Record>, DbError>;
    /// The version a deleted record `id` had (none: no such deleted record).
    fn buried(&self, ns: &str, collection: &str, id: &str) -> Result<Option<u64>, DbError>;
    /// Stores a new record (forgetting its deleted namesake when `buried`).
    fn insert(&self, ns: &str, collection: &str, record: &Record, buried: bool) -> Result<(), DbError>;
    /// Stores a record's new version.
    fn put(&self, ns: &str, collection: &str, record: &Record) -> Result<(), DbError>;
    /// Deletes a record, remembering its version.
    fn remove(&self, ns: &str, collection: &str, old: &Record) -> Result<(), DbError>;
    /// Appends a change to the change log: its `seq`.
    fn log(&self, ns: &str, collection: &str, action: Action, record: &Record) -> Result<u64, DbError>;
    /// Puts record `id`'s text (the `fields` of `record`; none: it is gone) in the
    /// collection's full-text index.
    fn index_text(
        &self,
        ns: &str,
        collection: &str,
        fields: &[String],
        id: &str,
        record: Option<&Record>,
    ) -> Result<(), DbError>;
    /// Whether `record` holds every one of `exprs` for `request`.
    fn holds(&self, record: &Record, exprs: &[&Expr], request: &sql::Request) -> Result<bool, DbError>;
}

/// What every batch must be, checked before any storage is touched.
pub(crate) fn check_batch(collection: &str, writes: &[Write]) -> Result<(), DbError> {
    check_name("collection", collection)?;
    if writes.is_empty() {
        return Err(DbError::Invalid("a batch of no writes".into()));
    }
    if writes.len() > MAX_BATCH {
        return Err(DbError::Invalid(format!("a batch of {} writes; at most {MAX_BATCH}", writes.len())));
    }
    Ok(())
}

/// Writes `writes` through `tx`, each allowed by `guard`: the changes, in order (a
/// deleted record as it was), each also in the change log. The caller commits.
pub(crate) fn apply(
    tx: &dyn Txn,
    ns: &str,
    collection: &str,
    writes: Vec<Write>,
    guard: &Guard,
) -> Result<Vec<Change>, DbError> {
    let fresh = match &guard.expect {
        Some(Expect::Updated(when)) => tx.spec_updated(ns, collection)?.as_deref() == Some(when.as_str()),
        Some(Expect::Make(spec)) => tx.make_collection(ns, collection, spec, &now())?,
        None => true,
    };
    if !fresh {
        return Err(DbError::Stale);
    }
    let search = tx.search_fields(ns, collection)?;
    let mut out = Vec::with_capacity(writes.len());
    let started = std::time::Instant::now();
    for w in writes {
        // The collection's writers wait for this one: it may not take long.
        if started.elapsed() > MAX_BATCH_TIME {
            return Err(DbError::Invalid(format!(
                "the batch took longer than {} s (its rules, its size): write fewer records at once",
                MAX_BATCH_TIME.as_secs()
            )));
        }
        let at = now();
        let (action, record) = match w {
            Write::Create { id, data } => {
                // A new id sorts by time (UUIDv7, as 32 hex digits).
                let id = id.unwrap_or_else(|| uuid::Uuid::now_v7().simple().to_string());
                check_id(&id)?;
                let data = document(data)?;
                // A record made again after a delete goes on from the deleted one's
                // version, so no stale compare-and-set matches it.
                let buried = tx.buried(ns, collection, &id)?;
                let version = buried.map_or(1, |v| v + 1);
                let record = Record { id, created: at.clone(), updated: at.clone(), version, data };
                // The rule first: whether a hidden record has an id is not told to
                // whom the rule refuses.
                guard.admit(tx, collection, Action::Create, None, Some(&record))?;
                if tx.read(ns, collection, &record.id)?.is_some() {
                    return Err(DbError::Conflict { id: record.id, expected: 0, actual: 1 });
                }
                tx.insert(ns, collection, &record, buried.is_some())?;
                (Action::Create, record)
            }
            Write::Update { id, data, merge, expected } => {
                check_id(&id)?;
                let old = tx.read(ns, collection, &id)?.ok_or_else(|| DbError::NotFound(id.clone()))?;
                // Whom the rules hide a record from, it does not exist for.
                guard.visible(tx, &old)?;
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
                guard.admit(tx, collection, Action::Update, Some(&old), Some(&record))?;
                tx.put(ns, collection, &record)?;
                (Action::Update, record)
            }
            Write::Delete { id, expected } => {
                check_id(&id)?;
                let old = tx.read(ns, collection, &id)?.ok_or_else(|| DbError::NotFound(id.clone()))?;
                guard.visible(tx, &old)?;
                if let Some(e) = expected.filter(|e| *e != old.version) {
                    return Err(DbError::Conflict { id, expected: e, actual: old.version });
                }
                guard.admit(tx, collection, Action::Delete, Some(&old), None)?;
                tx.remove(ns, collection, &old)?;
                (Action::Delete, old)
            }
        };
        let seq = tx.log(ns, collection, action, &record)?;
        if let Some(fields) = &search {
            let now = (action != Action::Delete).then_some(&record);
            tx.index_text(ns, collection, fields, &record.id, now)?;
        }
        out.push(Change { seq, action, record });
    }
    Ok(out)
}

/// Refuses renames that would lose a field: each field once, each to a new name.
pub(crate) fn check_renames(renames: &[(String, String)], drops: &[String]) -> Result<(), DbError> {
    let mut targets = std::collections::BTreeSet::new();
    for (from, to) in renames {
        if from == to || !targets.insert(to.as_str()) || renames.iter().any(|(f, _)| f == to) || drops.contains(to) {
            return Err(DbError::Invalid(format!("renaming {from} to {to}: each field once, to a new name")));
        }
    }
    Ok(())
}

/// Renames and removes fields of `r` (a new version, changed at `at`): whether it changed.
pub(crate) fn reshape_record(
    r: &mut Record,
    renames: &[(String, String)],
    drops: &[String],
    at: &str,
) -> Result<bool, DbError> {
    let mut changed = false;
    for (from, to) in renames {
        if let Some(v) = r.data.remove(from) {
            if r.data.contains_key(to) {
                return Err(DbError::Invalid(format!(
                    "record {} has both {from} and {to}: renaming would lose one",
                    r.id
                )));
            }
            r.data.insert(to.clone(), v);
            changed = true;
        }
    }
    for f in drops {
        changed |= r.data.remove(f).is_some();
    }
    if changed {
        r.version += 1;
        r.updated = at.to_string();
    }
    Ok(changed)
}

/// A transaction of the SQLite records.
struct Lite<'a>(&'a rusqlite::Connection);

impl Txn for Lite<'_> {
    fn spec_updated(&self, ns: &str, collection: &str) -> Result<Option<String>, DbError> {
        Ok(self
            .0
            .query_row("SELECT updated FROM collections WHERE namespace = ?1 AND name = ?2", (ns, collection), |r| {
                r.get(0)
            })
            .optional()?)
    }

    fn make_collection(&self, ns: &str, collection: &str, spec: &Json, at: &str) -> Result<bool, DbError> {
        let made = self.0.execute(
            "INSERT INTO collections (namespace, name, spec, created, updated) VALUES (?1, ?2, ?3, ?4, ?4)
             ON CONFLICT (namespace, name) DO NOTHING",
            (ns, collection, spec.to_string(), at),
        )?;
        Ok(made > 0)
    }

    fn search_fields(&self, ns: &str, collection: &str) -> Result<Option<Vec<String>>, DbError> {
        Records::search_fields(self.0, ns, collection)
    }

    fn read(&self, ns: &str, collection: &str, id: &str) -> Result<Option<Record>, DbError> {
        Records::read(self.0, ns, collection, id)
    }

    fn buried(&self, ns: &str, collection: &str, id: &str) -> Result<Option<u64>, DbError> {
        let v: Option<i64> = self
            .0
            .query_row(
                "SELECT version FROM tombstones WHERE namespace = ?1 AND collection = ?2 AND id = ?3",
                (ns, collection, id),
                |r| r.get(0),
            )
            .optional()?;
        Ok(v.map(|v| v.max(0) as u64))
    }

    fn insert(&self, ns: &str, collection: &str, record: &Record, buried: bool) -> Result<(), DbError> {
        let text = Json::Object(record.data.clone()).to_string();
        self.0.execute(
            "INSERT INTO records (namespace, collection, id, data, created, updated, version)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            (ns, collection, &record.id, &text, &record.created, &record.updated, record.version as i64),
        )?;
        if buried {
            self.0.execute(
                "DELETE FROM tombstones WHERE namespace = ?1 AND collection = ?2 AND id = ?3",
                (ns, collection, &record.id),
            )?;
        }
        Ok(())
    }

    fn put(&self, ns: &str, collection: &str, record: &Record) -> Result<(), DbError> {
        let text = Json::Object(record.data.clone()).to_string();
        self.0.execute(
            "UPDATE records SET data = ?4, updated = ?5, version = ?6
             WHERE namespace = ?1 AND collection = ?2 AND id = ?3",
            (ns, collection, &record.id, &text, &record.updated, record.version as i64),
        )?;
        Ok(())
    }

    fn remove(&self, ns: &str, collection: &str, old: &Record) -> Result<(), DbError> {
        self.0.execute(
            "DELETE FROM records WHERE namespace = ?1 AND collection = ?2 AND id = ?3",
            (ns, collection, &old.id),
        )?;
        self.0.execute(
            "INSERT OR REPLACE INTO tombstones (namespace, collection, id, version, at) VALUES (?1, ?2, ?3, ?4, ?5)",
            (ns, collection, &old.id, old.version as i64, now_ms() as i64),
        )?;
        Ok(())
    }

    fn log(&self, ns: &str, collection: &str, action: Action, record: &Record) -> Result<u64, DbError> {
        self.0.execute(
            "INSERT INTO changes (namespace, collection, id, action, record, at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            (ns, collection, &record.id, action.as_str(), record.to_json().to_string(), now_ms() as i64),
        )?;
        Ok(self.0.last_insert_rowid().max(0) as u64)
    }

    fn index_text(
        &self,
        ns: &str,
        collection: &str,
        fields: &[String],
        id: &str,
        record: Option<&Record>,
    ) -> Result<(), DbError> {
        Records::index_text(self.0, ns, collection, fields, id, record)
    }

    fn holds(&self, record: &Record, exprs: &[&Expr], request: &sql::Request) -> Result<bool, DbError> {
        holds(self.0, record, exprs, request)
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
             PRAGMA analysis_limit = 1000;
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
             CREATE INDEX IF NOT EXISTS changes_of ON changes (namespace, collection, seq);
             CREATE INDEX IF NOT EXISTS changes_at ON changes (at);
             CREATE TABLE IF NOT EXISTS tombstones (
                 namespace TEXT NOT NULL,
                 collection TEXT NOT NULL,
                 id TEXT NOT NULL,
                 version INTEGER NOT NULL,
                 at INTEGER NOT NULL,
                 PRIMARY KEY (namespace, collection, id)
             ) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS floors (
                 namespace TEXT NOT NULL,
                 collection TEXT NOT NULL,
                 seq INTEGER NOT NULL,
                 PRIMARY KEY (namespace, collection)
             ) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS searches (
                 namespace TEXT NOT NULL,
                 collection TEXT NOT NULL,
                 fields TEXT NOT NULL,
                 PRIMARY KEY (namespace, collection)
             ) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS search_ids (
                 rid INTEGER PRIMARY KEY AUTOINCREMENT,
                 namespace TEXT NOT NULL,
                 collection TEXT NOT NULL,
                 id TEXT NOT NULL,
                 UNIQUE (namespace, collection, id)
             );
             CREATE TABLE IF NOT EXISTS indexes (
                 namespace TEXT NOT NULL,
                 collection TEXT NOT NULL,
                 name TEXT NOT NULL,
                 PRIMARY KEY (namespace, collection, name)
             ) WITHOUT ROWID;",
        )?;
        contains_as_like(&conn)?;
        let eval = rusqlite::Connection::open_in_memory()?;
        contains_as_like(&eval)?;
        let mut readers = Vec::new();
        if path != Path::new(":memory:") {
            for _ in 0..READERS {
                let r = rusqlite::Connection::open(path)?;
                r.execute_batch("PRAGMA busy_timeout = 5000;")?;
                contains_as_like(&r)?;
                readers.push(Slot::new(r));
            }
        }
        let (writer, eval) = (Slot::new(conn), Slot::new(eval));
        let epoch = std::time::Instant::now();
        // A watchdog stops the running statement of any connection past its deadline (and
        // ends with the records).
        let watched: Vec<_> = std::iter::once(&writer)
            .chain(std::iter::once(&eval))
            .chain(readers.iter())
            .map(|slot| {
                let interrupt = slot.conn.lock().unwrap_or_else(|e| e.into_inner()).get_interrupt_handle();
                (std::sync::Arc::downgrade(&slot.deadline), interrupt)
            })
            .collect();
        std::thread::spawn(move || {
            loop {
                for (at, interrupt) in &watched {
                    let Some(at) = at.upgrade() else { return };
                    let due = at.load(std::sync::atomic::Ordering::Relaxed);
                    if due != u64::MAX && epoch.elapsed().as_millis() as u64 > due {
                        interrupt.interrupt();
                    }
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        });
        Ok(Records {
            writer,
            readers,
            next: Default::default(),
            figures: Default::default(),
            eval,
            epoch,
            query_time: MAX_QUERY_TIME,
        })
    }

    /// `slot`'s connection, its statements stopping after `limit` from now.
    fn hold<'a>(
        &'a self,
        slot: &'a Slot,
        conn: std::sync::MutexGuard<'a, rusqlite::Connection>,
        limit: std::time::Duration,
    ) -> Held<'a> {
        let at = self.epoch.elapsed() + limit;
        slot.deadline.store(at.as_millis() as u64, std::sync::atomic::Ordering::Relaxed);
        Held { conn, deadline: &slot.deadline }
    }

    /// The writer.
    fn write(&self) -> Held<'_> {
        self.write_for(self.query_time)
    }

    /// The writer, its statements stopping after `limit`.
    fn write_for(&self, limit: std::time::Duration) -> Held<'_> {
        let conn = self.writer.conn.lock().unwrap_or_else(|e| e.into_inner());
        self.hold(&self.writer, conn, limit.max(self.query_time))
    }

    /// A reader: the first one free from the next in turn, else the next in turn once free
    /// (the writer for a database in memory).
    fn reader(&self) -> Held<'_> {
        if self.readers.is_empty() {
            return self.write();
        }
        let n = self.readers.len();
        let first = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % n;
        let (slot, conn) = (0..n)
            .map(|i| &self.readers[(first + i) % n])
            .find_map(|slot| slot.conn.try_lock().ok().map(|conn| (slot, conn)))
            .unwrap_or_else(|| {
                let slot = &self.readers[first];
                (slot, slot.conn.lock().unwrap_or_else(|e| e.into_inner()))
            });
        let now = self.figures.load(std::sync::atomic::Ordering::Acquire);
        if slot.figures.load(std::sync::atomic::Ordering::Relaxed) != now {
            // Loads the planner's figures the writer gathered (cheap: it reads them only).
            if let Err(e) = conn.execute_batch("ANALYZE sqlite_schema") {
                tracing::warn!(error = %e, "a reader could not load the planner's figures");
            }
            slot.figures.store(now, std::sync::atomic::Ordering::Relaxed);
        }
        self.hold(slot, conn, self.query_time)
    }

    /// The rules' connection (a tenth of the query time: a delivery's test is of one
    /// record).
    fn evaluator(&self) -> Held<'_> {
        let conn = self.eval.conn.lock().unwrap_or_else(|e| e.into_inner());
        self.hold(&self.eval, conn, self.query_time / 10)
    }

    /// Statements stop after `limit` instead of [`MAX_QUERY_TIME`] (checked every 50 ms).
    pub fn query_time(mut self, limit: std::time::Duration) -> Records {
        self.query_time = limit;
        self
    }

    /// Record `id` of `collection` in `ns`.
    pub fn get(&self, ns: &str, collection: &str, id: &str) -> Result<Record, DbError> {
        check_name("collection", collection)?;
        let conn = self.reader();
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
        let conn = self.reader();
        let record = Self::read(&conn, ns, collection, id)?.ok_or_else(|| DbError::NotFound(id.to_string()))?;
        match rule {
            Some(rule) if !holds(&conn, &record, &[rule], request)? => Err(DbError::NotFound(id.to_string())),
            _ => Ok(record),
        }
    }

    fn read(conn: &rusqlite::Connection, ns: &str, collection: &str, id: &str) -> Result<Option<Record>, DbError> {
        let row = conn
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM records WHERE namespace = ?1 AND collection = ?2 AND id = ?3"
            ))?
            .query_row((ns, collection, id), record)
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
        check_batch(collection, &writes)?;
        let mut conn = self.write();
        let tx = conn.transaction()?;
        let out = apply(&Lite(&tx), ns, collection, writes, guard)?;
        tx.commit()?;
        Ok(out)
    }

    /// Whether `record` holds every one of `exprs` for `request` (tested apart from the
    /// stored records, as realtime deliveries are).
    pub fn matches(&self, record: &Record, exprs: &[&Expr], request: &sql::Request) -> Result<bool, DbError> {
        if exprs.is_empty() {
            return Ok(true);
        }
        let conn = self.evaluator();
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
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(
            "SELECT seq, action, record FROM changes
             WHERE namespace = ?1 AND collection = ?2 AND seq > ?3 AND (?4 IS NULL OR id = ?4 OR action = 'reset')
             ORDER BY seq LIMIT ?5",
        )?;
        let rows = stmt.query_map((ns, collection, after as i64, id, i64::from(limit)), |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?))
        })?;
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for row in rows {
            let (seq, action, record) = row?;
            // A reader of big records gets them a few at a time.
            bytes += record.len();
            if bytes > MAX_CHANGES_BYTES && !out.is_empty() {
                break;
            }
            let action = Action::parse(&action).ok_or_else(|| DbError::Storage(format!("change {seq}: {action}")))?;
            out.push(Change { seq: seq.max(0) as u64, action, record: from_json(&record)? });
        }
        Ok(out)
    }

    /// The newest change's `seq` (0: none yet) and the oldest one kept (what a cursor
    /// older than it has lost).
    pub fn change_bounds(&self) -> Result<(u64, u64), DbError> {
        let conn = self.reader();
        let (newest, oldest): (Option<i64>, Option<i64>) =
            // (Two subqueries: SQLite reads a min or a max off the key only when it is alone.)
            conn.query_row("SELECT (SELECT max(seq) FROM changes), (SELECT min(seq) FROM changes)", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?;
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

    /// Where a subscription to `collection` of `ns` starts: the newest change's `seq`,
    /// the oldest kept (a cursor older than it has lost changes) and the collection's
    /// floor ([`Records::floor`]).
    pub fn start(&self, ns: &str, collection: &str) -> Result<(u64, u64, u64), DbError> {
        let (newest, oldest) = self.change_bounds()?;
        Ok((newest, oldest, self.floor(ns, collection)?))
    }

    /// How many records `collection` of `ns` has, counting no further than `most`.
    pub fn count_upto(&self, ns: &str, collection: &str, most: u64) -> Result<u64, DbError> {
        let n: i64 = self.reader().query_row(
            "SELECT count(*) FROM (SELECT 1 FROM records WHERE namespace = ?1 AND collection = ?2 LIMIT ?3)",
            (ns, collection, most.min(i64::MAX as u64) as i64),
            |r| r.get(0),
        )?;
        Ok(n.max(0) as u64)
    }

    /// Drops changes older than `age`: cursors before them can no longer resume.
    pub fn trim_changes(&self, age: std::time::Duration) -> Result<u64, DbError> {
        let before = now_ms().saturating_sub(age.as_millis() as u64);
        let conn = self.write_for(MAINTENANCE_TIME);
        let n = conn.execute("DELETE FROM changes WHERE at < ?1", (before as i64,))?;
        conn.execute("DELETE FROM tombstones WHERE at < ?1", (before as i64,))?;
        // The planner's figures, kept current as collections grow.
        conn.execute_batch("PRAGMA optimize")?;
        self.figures.fetch_add(1, std::sync::atomic::Ordering::Release);
        Ok(n as u64)
    }

    /// Collection `name` of `ns`: its spec (as its owner saved it), made and changed times.
    pub fn collection(&self, ns: &str, name: &str) -> Result<Option<(Json, String, String)>, DbError> {
        let conn = self.reader();
        let row = conn
            .prepare_cached("SELECT spec, created, updated FROM collections WHERE namespace = ?1 AND name = ?2")?
            .query_row((ns, name), |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?)))
            .optional()?;
        row.map(|(spec, c, u)| Ok((serde_json::from_str(&spec).map_err(|e| DbError::Storage(e.to_string()))?, c, u)))
            .transpose()
    }

    /// Every collection of `ns`, by name: name, spec, made and changed times.
    pub fn collections(&self, ns: &str) -> Result<Vec<(String, Json, String, String)>, DbError> {
        let conn = self.reader();
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
    // The collection, the caller and what is asked: each a different thing.
    #[allow(clippy::too_many_arguments)]
    pub fn save_collection(
        &self,
        ns: &str,
        name: &str,
        spec: &Json,
        renames: &[(String, String)],
        drops: &[String],
        indexes: &[IndexSpec],
        search: &[String],
    ) -> Result<(String, String), DbError> {
        scope(ns, name)?;
        if indexes.len() > MAX_INDEXES {
            return Err(DbError::Invalid(format!("at most {MAX_INDEXES} indexes a collection")));
        }
        let mut wanted = Vec::new();
        for ix in indexes {
            ix.check()?;
            if wanted.iter().any(|(_, _, other): &(String, String, &IndexSpec)| other.fields == ix.fields) {
                return Err(DbError::Invalid(format!("two indexes of ({})", ix.fields.join(", "))));
            }
            wanted.push((ix.name(ns, name), ix.create_sql(ns, name)?, ix));
        }
        for f in renames.iter().flat_map(|(a, b)| [a, b]).chain(drops) {
            check_name("field", f)?;
        }
        let at = now();
        let mut conn = self.write_for(MAINTENANCE_TIME);
        let tx = conn.transaction()?;
        let (count, exists): (i64, bool) = tx.query_row(
            "SELECT count(*), coalesce(sum(name = ?2), 0) > 0 FROM collections WHERE namespace = ?1",
            (ns, name),
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        if !exists && count as usize >= MAX_COLLECTIONS {
            return Err(DbError::Invalid(format!("namespace {ns} has {count} collections, the most it may have")));
        }
        let others: i64 =
            tx.query_row("SELECT count(*) FROM indexes WHERE namespace = ?1 AND collection != ?2", (ns, name), |r| {
                r.get(0)
            })?;
        check_namespace_indexes(ns, others as usize + wanted.len())?;
        tx.execute(
            "INSERT INTO collections (namespace, name, spec, created, updated) VALUES (?1, ?2, ?3, ?4, ?4)
             ON CONFLICT (namespace, name) DO UPDATE SET spec = excluded.spec, updated = excluded.updated",
            (ns, name, spec.to_string(), &at),
        )?;
        if !renames.is_empty() || !drops.is_empty() {
            Self::reshape(&tx, ns, name, renames, drops, &at)?;
            // The searched text moves with the fields: index it all again.
            Self::set_search(&tx, ns, name, &[])?;
        }
        Self::set_search(&tx, ns, name, search)?;
        // The indexes: those no longer declared dropped, the new ones built (a unique one
        // over values already shared is refused, and nothing of the save is kept).
        let had: Vec<String> = {
            let mut stmt = tx.prepare("SELECT name FROM indexes WHERE namespace = ?1 AND collection = ?2")?;
            let rows = stmt.query_map((ns, name), |r| r.get::<_, String>(0))?;
            rows.collect::<Result<_, _>>()?
        };
        for old in had.iter().filter(|h| !wanted.iter().any(|(n, _, _)| n == *h)) {
            tx.execute(&format!("DROP INDEX IF EXISTS \"{old}\""), [])?;
            tx.execute("DELETE FROM indexes WHERE namespace = ?1 AND collection = ?2 AND name = ?3", (ns, name, old))?;
        }
        let mut analyze = false;
        for (index, create, ix) in &wanted {
            if let Err(e) = tx.execute(create, []) {
                return Err(match e.sqlite_error_code() {
                    Some(rusqlite::ErrorCode::ConstraintViolation) => DbError::Taken(format!(
                        "records of {name} share values of {}: a unique index cannot be made until they do not",
                        ix.fields.join(", ")
                    )),
                    _ => e.into(),
                });
            }
            let made = tx.execute(
                "INSERT OR IGNORE INTO indexes (namespace, collection, name) VALUES (?1, ?2, ?3)",
                (ns, name, index),
            )?;
            analyze |= made > 0;
        }
        if analyze {
            // Figures of the table and its indexes for the planner (sampled: see
            // `analysis_limit` at open), without which it prefers the primary key.
            tx.execute("ANALYZE records", [])?;
        }
        let created: String =
            tx.query_row("SELECT created FROM collections WHERE namespace = ?1 AND name = ?2", (ns, name), |r| {
                r.get(0)
            })?;
        tx.commit()?;
        if analyze {
            self.figures.fetch_add(1, std::sync::atomic::Ordering::Release);
        }
        Ok((created, at))
    }

    /// Renames and removes fields of every record of `collection` in `ns`, each such
    /// record a write of its own (a new version, in the change log). After a removal the
    /// older changes (which still hold the removed fields) are dropped, and cursors from
    /// before it cannot resume.
    fn reshape(
        tx: &rusqlite::Connection,
        ns: &str,
        collection: &str,
        renames: &[(String, String)],
        drops: &[String],
        at: &str,
    ) -> Result<(), DbError> {
        check_renames(renames, drops)?;
        let before = Self::last_change(tx, ns, collection)?;
        let scope = scope(ns, collection)?;
        let all: Vec<(String, String, String, i64, String)> = {
            let mut stmt = tx.prepare(&format!("SELECT {COLUMNS} FROM records WHERE {scope}"))?;
            let rows = stmt.query_map([], record)?;
            rows.collect::<Result<_, _>>()?
        };
        for row in all {
            let mut r = decode(row)?;
            if !reshape_record(&mut r, renames, drops, at)? {
                continue;
            }
            let lite = Lite(tx);
            lite.put(ns, collection, &r)?;
            lite.log(ns, collection, Action::Update, &r)?;
        }
        if !drops.is_empty() {
            tx.execute(
                "DELETE FROM changes WHERE namespace = ?1 AND collection = ?2 AND seq <= ?3",
                (ns, collection, before as i64),
            )?;
            Self::set_floor(tx, ns, collection, before)?;
        }
        Ok(())
    }

    /// Ends the change log of `collection` in `ns` (it is deleted): its changes are
    /// dropped (they hold its records), cursors before now cannot resume, and a `reset`
    /// tells subscribers at the newest change that everything they hold is gone.
    fn reset(tx: &rusqlite::Connection, ns: &str, collection: &str) -> Result<(), DbError> {
        let last = Self::last_change(tx, ns, collection)?;
        tx.execute("DELETE FROM changes WHERE namespace = ?1 AND collection = ?2", (ns, collection))?;
        Self::set_floor(tx, ns, collection, last)?;
        let empty = Record { id: String::new(), created: now(), updated: now(), version: 0, data: Map::new() };
        tx.execute(
            "INSERT INTO changes (namespace, collection, id, action, record, at) VALUES (?1, ?2, '', 'reset', ?3, ?4)",
            (ns, collection, empty.to_json().to_string(), now_ms() as i64),
        )?;
        Ok(())
    }

    /// The last change of `collection` in `ns` (its floor when it has none left): a
    /// subscriber at it has seen everything of the collection so far.
    fn last_change(tx: &rusqlite::Connection, ns: &str, collection: &str) -> Result<u64, DbError> {
        let last: Option<i64> = tx.query_row(
            "SELECT max(seq) FROM changes WHERE namespace = ?1 AND collection = ?2",
            (ns, collection),
            |r| r.get(0),
        )?;
        let floor: Option<i64> = tx
            .query_row("SELECT seq FROM floors WHERE namespace = ?1 AND collection = ?2", (ns, collection), |r| {
                r.get(0)
            })
            .optional()?;
        Ok(last.or(floor).unwrap_or(0).max(0) as u64)
    }

    /// Cursors of `collection` in `ns` at or before `seq` can no longer resume.
    fn set_floor(tx: &rusqlite::Connection, ns: &str, collection: &str, seq: u64) -> Result<(), DbError> {
        tx.execute(
            "INSERT INTO floors (namespace, collection, seq) VALUES (?1, ?2, ?3)
             ON CONFLICT (namespace, collection) DO UPDATE SET seq = max(seq, excluded.seq)",
            (ns, collection, seq as i64),
        )?;
        Ok(())
    }

    /// The cursor of `collection` in `ns` below which a subscription cannot resume: the
    /// last change before the collection was deleted, or fields of it removed.
    pub fn floor(&self, ns: &str, collection: &str) -> Result<u64, DbError> {
        let n: Option<i64> = self
            .reader()
            .query_row("SELECT seq FROM floors WHERE namespace = ?1 AND collection = ?2", (ns, collection), |r| {
                r.get(0)
            })
            .optional()?;
        Ok(n.unwrap_or(0).max(0) as u64)
    }

    /// Deletes collection `name` of `ns` with its records and changes; whether it was there.
    pub fn delete_collection(&self, ns: &str, name: &str) -> Result<bool, DbError> {
        let mut conn = self.write_for(MAINTENANCE_TIME);
        let tx = conn.transaction()?;
        Self::drop_indexes(&tx, ns, Some(name))?;
        Self::set_search(&tx, ns, name, &[])?;
        let n = tx.execute("DELETE FROM collections WHERE namespace = ?1 AND name = ?2", (ns, name))?;
        tx.execute("DELETE FROM records WHERE namespace = ?1 AND collection = ?2", (ns, name))?;
        tx.execute("DELETE FROM tombstones WHERE namespace = ?1 AND collection = ?2", (ns, name))?;
        Self::reset(&tx, ns, name)?;
        tx.commit()?;
        Ok(n > 0)
    }

    /// The fields of `collection` in `ns` its full-text search covers (none: no search).
    fn search_fields(tx: &rusqlite::Connection, ns: &str, collection: &str) -> Result<Option<Vec<String>>, DbError> {
        let text: Option<String> = tx
            .query_row("SELECT fields FROM searches WHERE namespace = ?1 AND collection = ?2", (ns, collection), |r| {
                r.get(0)
            })
            .optional()?;
        Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
    }

    /// Puts record `id`'s text (the `fields` of `record`; none: it is gone) in the
    /// collection's full-text index.
    fn index_text(
        tx: &rusqlite::Connection,
        ns: &str,
        collection: &str,
        fields: &[String],
        id: &str,
        record: Option<&Record>,
    ) -> Result<(), DbError> {
        let table = fts_table(ns, collection)?;
        let rid: Option<i64> = tx
            .query_row(
                "SELECT rid FROM search_ids WHERE namespace = ?1 AND collection = ?2 AND id = ?3",
                (ns, collection, id),
                |r| r.get(0),
            )
            .optional()?;
        if let Some(rid) = rid {
            tx.execute(&format!("DELETE FROM {table} WHERE rowid = ?1"), (rid,))?;
        }
        let Some(record) = record else {
            tx.execute("DELETE FROM search_ids WHERE rid = ?1", (rid,))?;
            return Ok(());
        };
        let rid = match rid {
            Some(r) => r,
            None => {
                tx.execute(
                    "INSERT INTO search_ids (namespace, collection, id) VALUES (?1, ?2, ?3)",
                    (ns, collection, id),
                )?;
                tx.last_insert_rowid()
            }
        };
        tx.execute(
            &format!("INSERT INTO {table} (rowid, body) VALUES (?1, ?2)"),
            (rid, text_of(&record.data, fields)),
        )?;
        Ok(())
    }

    /// Makes the full-text index of `collection` in `ns` cover `fields` (none: drops
    /// it), indexing every record again when they changed.
    fn set_search(tx: &rusqlite::Connection, ns: &str, collection: &str, fields: &[String]) -> Result<(), DbError> {
        for f in fields {
            field_path("search field", f)?;
        }
        if fields.len() > 32 {
            return Err(DbError::Invalid("search at most 32 fields".into()));
        }
        let had = Self::search_fields(tx, ns, collection)?;
        if had.as_deref() == Some(fields) || (had.is_none() && fields.is_empty()) {
            return Ok(());
        }
        let table = fts_table(ns, collection)?;
        tx.execute(&format!("DROP TABLE IF EXISTS {table}"), [])?;
        tx.execute("DELETE FROM search_ids WHERE namespace = ?1 AND collection = ?2", (ns, collection))?;
        tx.execute("DELETE FROM searches WHERE namespace = ?1 AND collection = ?2", (ns, collection))?;
        if fields.is_empty() {
            return Ok(());
        }
        tx.execute(
            &format!("CREATE VIRTUAL TABLE {table} USING fts5(body, tokenize = 'unicode61 remove_diacritics 2')"),
            [],
        )?;
        let text = serde_json::to_string(fields).map_err(|e| DbError::Storage(e.to_string()))?;
        tx.execute("INSERT INTO searches (namespace, collection, fields) VALUES (?1, ?2, ?3)", (ns, collection, text))?;
        let all: Vec<(String, String, String, i64, String)> = {
            let mut stmt = tx.prepare(&format!(
                "SELECT {COLUMNS} FROM records WHERE records.namespace = ?1 AND records.collection = ?2"
            ))?;
            let rows = stmt.query_map((ns, collection), record)?;
            rows.collect::<Result<_, _>>()?
        };
        for row in all {
            let r = decode(row)?;
            Self::index_text(tx, ns, collection, fields, &r.id, Some(&r))?;
        }
        Ok(())
    }

    /// The records of `collection` in `ns` whose searched fields hold the words of
    /// `text` (each word a prefix with `prefix`), best first, that match `q`'s filter
    /// and `rule`.
    // The collection, the caller and what is asked: each a different thing.
    #[allow(clippy::too_many_arguments)]
    pub fn search(
        &self,
        ns: &str,
        collection: &str,
        text: &str,
        prefix: bool,
        q: &ListQuery,
        rule: Option<&Expr>,
        request: &sql::Request,
    ) -> Result<Page, DbError> {
        let (where_, mut params, per_page, page) = Self::query(ns, collection, q, rule, request)?;
        let words: Vec<String> = text
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(|w| format!("\"{w}\"{}", if prefix { "*" } else { "" }))
            .collect();
        if words.is_empty() || words.len() > 32 || text.len() > 1024 {
            return Err(DbError::Invalid(
                "search for 1 to 32 words (letters and digits), at most 1024 characters".into(),
            ));
        }
        let conn = self.reader();
        if Self::search_fields(&conn, ns, collection)?.is_none() {
            return Err(DbError::Invalid(format!(
                "{collection} has no full-text search: name the fields to search in its spec (search)"
            )));
        }
        let table = fts_table(ns, collection)?;
        params.push(Value::Text(words.join(" ")));
        let matching = params.len();
        params.push(Value::Integer(i64::from(per_page)));
        let limit = params.len();
        params.push(Value::Integer(i64::from(page - 1) * i64::from(per_page)));
        let offset = params.len();
        let mut stmt = conn.prepare_cached(&format!(
            // The words first (CROSS JOIN keeps SQLite to this order): the matches are
            // looked up, not every record of the collection tested.
            "SELECT {COLUMNS} FROM {table} AS f
             CROSS JOIN search_ids AS s ON s.rid = f.rowid
             CROSS JOIN records ON records.namespace = s.namespace AND records.collection = s.collection AND records.id = s.id
             WHERE {table} MATCH ?{matching} AND {where_}
             ORDER BY f.rank, records.id LIMIT ?{limit} OFFSET ?{offset}"
        ))?;
        let rows = stmt.query_map(params_from_iter(params.iter()), record)?;
        let mut items = Vec::new();
        for r in rows {
            items.push(decode(r?)?);
        }
        Ok(Page { items, page, per_page, total: None })
    }

    /// Drops the indexes of `collection` in `ns` (of all its collections without one).
    fn drop_indexes(tx: &rusqlite::Transaction<'_>, ns: &str, collection: Option<&str>) -> Result<(), DbError> {
        let names: Vec<String> = {
            let mut stmt =
                tx.prepare("SELECT name FROM indexes WHERE namespace = ?1 AND (?2 IS NULL OR collection = ?2)")?;
            let rows = stmt.query_map((ns, collection), |r| r.get::<_, String>(0))?;
            rows.collect::<Result<_, _>>()?
        };
        for n in names {
            tx.execute(&format!("DROP INDEX IF EXISTS \"{n}\""), [])?;
        }
        tx.execute("DELETE FROM indexes WHERE namespace = ?1 AND (?2 IS NULL OR collection = ?2)", (ns, collection))?;
        Ok(())
    }

    /// Deletes everything of namespace `ns` (it is being deleted).
    pub fn delete_namespace(&self, ns: &str) -> Result<(), DbError> {
        let mut conn = self.write_for(MAINTENANCE_TIME);
        let tx = conn.transaction()?;
        Self::drop_indexes(&tx, ns, None)?;
        let searched: Vec<String> = {
            let mut stmt = tx.prepare("SELECT collection FROM searches WHERE namespace = ?1")?;
            let rows = stmt.query_map((ns,), |r| r.get::<_, String>(0))?;
            rows.collect::<Result<_, _>>()?
        };
        for c in searched {
            Self::set_search(&tx, ns, &c, &[])?;
        }
        // Cursors into the namespace's collections cannot resume (should its name be
        // taken again).
        let names: Vec<String> = {
            let mut stmt = tx.prepare(
                "SELECT name FROM collections WHERE namespace = ?1 UNION SELECT collection FROM changes WHERE namespace = ?1",
            )?;
            let rows = stmt.query_map((ns,), |r| r.get::<_, String>(0))?;
            rows.collect::<Result<_, _>>()?
        };
        for table in ["collections", "records", "tombstones"] {
            tx.execute(&format!("DELETE FROM {table} WHERE namespace = ?1"), (ns,))?;
        }
        for c in names {
            Self::reset(&tx, ns, &c)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Whether namespace `ns` has anything here.
    pub fn holds_namespace(&self, ns: &str) -> Result<bool, DbError> {
        let conn = self.reader();
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

    /// The `WHERE` clause of a list and its parameters, with the page size and page:
    /// everything checked before anything runs.
    fn query(
        ns: &str,
        collection: &str,
        q: &ListQuery,
        rule: Option<&Expr>,
        request: &sql::Request,
    ) -> Result<(String, Vec<Value>, u32, u32), DbError> {
        let (scope, all, per_page, page) = list_terms(ns, collection, q, rule)?;
        // The rule and the filter combine as parsed trees, never as text.
        let (clause, params) = match all {
            None => ("1".to_string(), Vec::new()),
            Some(e) => {
                let c = sql::sqlite(&e, request);
                (c.sql, c.params.iter().map(to_value).collect())
            }
        };
        Ok((format!("{scope} AND ({clause})"), params, per_page, page))
    }

    /// How SQLite would run a list: the steps of its plan, one a line (`SEARCH records
    /// USING INDEX …` when an index serves the filter or the sort).
    pub fn explain(
        &self,
        ns: &str,
        collection: &str,
        q: &ListQuery,
        rule: Option<&Expr>,
        request: &sql::Request,
    ) -> Result<Vec<String>, DbError> {
        let (where_, params, _, _) = Self::query(ns, collection, q, rule, request)?;
        let order = order_by(&q.sort)?;
        let conn = self.reader();
        let mut stmt = conn.prepare(&format!(
            "EXPLAIN QUERY PLAN SELECT {COLUMNS} FROM records WHERE {where_} ORDER BY {order} LIMIT 30"
        ))?;
        let rows = stmt.query_map(params_from_iter(params.iter()), |r| r.get::<_, String>(3))?;
        let mut out = Vec::new();
        for r in rows {
            out.push(r?);
        }
        Ok(out)
    }

    /// Counts, sums, averages, minimums and maximums of the records of `collection` in
    /// `ns` that match `q`'s filter and `rule`, in groups of the `group` fields' values:
    /// each row the group's values, then each of `ops`' result, at most `limit` groups,
    /// the largest count first.
    // The collection, the caller and what is asked: each a different thing.
    #[allow(clippy::too_many_arguments)]
    pub fn aggregate(
        &self,
        ns: &str,
        collection: &str,
        q: &ListQuery,
        rule: Option<&Expr>,
        request: &sql::Request,
        group: &[String],
        ops: &[(AggregateOp, Option<String>)],
        limit: u32,
    ) -> Result<Vec<Vec<Json>>, DbError> {
        let (where_, mut params, _, _) = Self::query(ns, collection, q, rule, request)?;
        if group.len() > MAX_INDEX_FIELDS || ops.is_empty() || ops.len() > 16 {
            return Err(DbError::Invalid(format!(
                "group by at most {MAX_INDEX_FIELDS} fields, with 1 to 16 aggregates"
            )));
        }
        let mut cols = Vec::new();
        for g in group {
            let col = sql::field_expr(&field_path("group field", g)?);
            if cols.contains(&col) {
                return Err(DbError::Invalid(format!("group by {g} twice")));
            }
            cols.push(col);
        }
        let groups = cols.clone();
        for (op, field) in ops {
            let expr = match (op, field) {
                (AggregateOp::Count, None) => "count(*)".to_string(),
                (op, Some(f)) => format!("{}({})", op.sql(), sql::field_expr(&field_path("aggregate field", f)?)),
                (op, None) => return Err(DbError::Invalid(format!("{} needs a field", op.sql()))),
            };
            cols.push(expr);
        }
        params.push(Value::Integer(i64::from(limit.clamp(1, 1000))));
        let limit_param = params.len();
        let group_by = if groups.is_empty() { String::new() } else { format!(" GROUP BY {}", groups.join(", ")) };
        let order = if groups.is_empty() { String::new() } else { " ORDER BY count(*) DESC".to_string() };
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {} FROM records WHERE {where_}{group_by}{order} LIMIT ?{limit_param}",
            cols.join(", ")
        ))?;
        let n = cols.len();
        let rows = stmt.query_map(params_from_iter(params.iter()), |r| {
            let mut row = Vec::with_capacity(n);
            for i in 0..n {
                row.push(match r.get::<_, Value>(i)? {
                    Value::Null => Json::Null,
                    Value::Integer(i) => Json::from(i),
                    Value::Real(f) => serde_json::Number::from_f64(f).map_or(Json::Null, Json::Number),
                    Value::Text(t) => Json::String(t),
                    Value::Blob(_) => Json::Null,
                });
            }
            Ok(row)
        })?;
        let mut out = Vec::new();
        for r in rows {
            out.push(r?);
        }
        Ok(out)
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
        let (where_, mut params, per_page, page) = Self::query(ns, collection, q, rule, request)?;
        let order = order_by(&q.sort)?;
        let conn = self.reader();
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
        params.push(Value::Integer(i64::from(per_page)));
        let limit = params.len();
        params.push(Value::Integer(i64::from(page - 1) * i64::from(per_page)));
        let offset = params.len();
        let mut stmt = conn.prepare_cached(&format!(
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
        let many: Vec<String> = (0..20_000).map(|i| format!("tag{i}")).collect();
        for _ in 0..20 {
            db.create("shop", "docs", json!({"t": long})).unwrap();
            db.create("shop", "lists", json!({"tags": many})).unwrap();
        }
        // A contains-test over a big text is linear (not text times pattern) …
        let started = std::time::Instant::now();
        let q = ListQuery { filter: format!("t ~ '{}b'", "a".repeat(3000)), total: true, ..Default::default() };
        assert_eq!(db.list("shop", "docs", &q, &sql::Request::default()).unwrap().total, Some(0));
        assert!(started.elapsed() < std::time::Duration::from_secs(2), "{:?}", started.elapsed());
        // … and a filter over many list items is stopped at the query time.
        let slow = ["tags ?~ 'zz'"; 40].join(" || ");
        let q = ListQuery { filter: slow, total: true, ..Default::default() };
        let started = std::time::Instant::now();
        let e = db.list("shop", "lists", &q, &sql::Request::default()).unwrap_err();
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
    fn indexes_serve_lists_and_unique_ones_hold() {
        // In a file: lists run on the readers, which must see the writer's new indexes
        // and their figures.
        let dir = std::env::temp_dir().join(format!("micro-db-ix-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let db = Records::open(&dir.join("records.db")).unwrap();
        for i in 0..50 {
            db.create("shop", "todos", json!({"owner": format!("u{}", i % 5), "prio": i, "code": format!("c{i}")}))
                .unwrap();
        }
        db.create("blog", "todos", json!({"owner": "u1", "code": "c1"})).unwrap();
        let q = ListQuery { filter: "owner = 'u1'".into(), sort: "-prio".into(), ..Default::default() };
        let plan = db.explain("shop", "todos", &q, None, &Default::default()).unwrap();
        assert!(!plan.iter().any(|p| p.contains("ix_")), "{plan:?}");
        let owner = IndexSpec { fields: vec!["owner".into(), "prio".into()], unique: false };
        let code = IndexSpec { fields: vec!["code".into()], unique: true };
        db.save_collection("shop", "todos", &json!({}), &[], &[], &[owner.clone(), code.clone()], &[]).unwrap();
        let plan = db.explain("shop", "todos", &q, None, &Default::default()).unwrap();
        assert!(plan.iter().any(|p| p.contains(&owner.name("shop", "todos"))), "{plan:?}");
        let page = db.list("shop", "todos", &ListQuery { per_page: 3, ..q.clone() }, &Default::default()).unwrap();
        let prios: Vec<i64> = page.items.iter().map(|r| r.data["prio"].as_i64().unwrap()).collect();
        assert_eq!(prios, vec![46, 41, 36]);
        // The unique index holds in this collection only.
        let dup = db.create("shop", "todos", json!({"code": "c3"})).unwrap_err();
        assert!(matches!(dup, DbError::Taken(_)), "{dup:?}");
        db.create("shop", "other", json!({"code": "c3"})).unwrap();
        // Shared values keep a unique index from being made, and the save changes nothing.
        let prio_unique = IndexSpec { fields: vec!["owner".into()], unique: true };
        let e = db.save_collection("shop", "todos", &json!({"v": 2}), &[], &[], &[prio_unique], &[]).unwrap_err();
        assert!(matches!(e, DbError::Taken(_)), "{e:?}");
        assert_eq!(db.collection("shop", "todos").unwrap().unwrap().0, json!({}));
        // Dropped from the spec, dropped from the database; and with the namespace.
        db.save_collection("shop", "todos", &json!({}), &[], &[], std::slice::from_ref(&code), &[]).unwrap();
        let plan = db.explain("shop", "todos", &q, None, &Default::default()).unwrap();
        assert!(!plan.iter().any(|p| p.contains("ix_")), "{plan:?}");
        db.delete_namespace("shop").unwrap();
        let left: i64 = db
            .write()
            .query_row("SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name LIKE 'ix_shop_%'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(left, 0);
        // Bad index fields are refused before anything changes.
        let bad = IndexSpec { fields: vec!["a\"); DROP TABLE records; --".into()], unique: false };
        assert!(db.save_collection("shop", "x", &json!({}), &[], &[], &[bad], &[]).is_err());
        assert!(db.save_collection("bad'ns", "x", &json!({}), &[], &[], &[], &[]).is_err());
    }

    #[test]
    fn full_text_search_ranks_and_follows_filters() {
        let db = records();
        for (title, body, owner) in [
            ("Rust databases", "embedded SQLite and PostgreSQL", "ann"),
            ("Gardening", "tomatoes and basil", "ann"),
            ("Databases at scale", "PostgreSQL replicas, databases everywhere", "bo"),
        ] {
            db.create("shop", "posts", json!({"title": title, "body": body, "owner": owner})).unwrap();
        }
        let q = ListQuery::default();
        let e = db.search("shop", "posts", "databases", false, &q, None, &Default::default()).unwrap_err();
        assert!(e.to_string().contains("no full-text search"), "{e}");
        let fields = ["title".to_string(), "body".to_string()];
        db.save_collection("shop", "posts", &json!({}), &[], &[], &[], &fields).unwrap();
        let hits = |text: &str, prefix, filter: &str| {
            let q = ListQuery { filter: filter.into(), ..Default::default() };
            let p = db.search("shop", "posts", text, prefix, &q, None, &Default::default()).unwrap();
            p.items.iter().map(|r| r.data["title"].as_str().unwrap().to_string()).collect::<Vec<_>>()
        };
        assert_eq!(hits("databases", false, ""), ["Databases at scale", "Rust databases"], "more mentions first");
        assert_eq!(hits("postgre", true, "owner = 'ann'"), ["Rust databases"]);
        assert!(hits("postgre", false, "").is_empty(), "whole words without prefix");
        assert_eq!(hits("TOMATO", true, ""), ["Gardening"]);
        // Writes keep the index current; quotes and operators are words, not syntax.
        let r = db.create("shop", "posts", json!({"title": "Basil pesto", "body": "\" OR title:* NEAR("})).unwrap();
        let mut both = hits("basil", false, "");
        both.sort();
        assert_eq!(both, ["Basil pesto", "Gardening"]);
        assert_eq!(hits("\" OR *", false, ""), ["Basil pesto"], "OR is a word it holds, not an operator");
        assert!(db.search("shop", "posts", "* ( ) : \"", false, &q, None, &Default::default()).is_err(), "no words");
        db.delete("shop", "posts", &r.id, None).unwrap();
        assert_eq!(hits("basil", false, ""), ["Gardening"]);
        // Another namespace's collection of the same name has its own index.
        db.create("blog", "posts", json!({"title": "basil"})).unwrap();
        assert_eq!(hits("basil", false, ""), ["Gardening"]);
        db.delete_namespace("shop").unwrap();
        assert!(db.search("shop", "posts", "basil", false, &q, None, &Default::default()).is_err());
    }

    #[test]
    fn aggregates_group_and_follow_the_rule() {
        let db = records();
        for (owner, total) in [("ann", 10.0), ("ann", 5.5), ("bo", 2.0), ("cy", 1.0)] {
            db.create("shop", "orders", json!({"owner": owner, "total": total})).unwrap();
        }
        let q = ListQuery::default();
        let ops = [(AggregateOp::Count, None), (AggregateOp::Sum, Some("total".to_string()))];
        let rows = db.aggregate("shop", "orders", &q, None, &Default::default(), &["owner".into()], &ops, 10).unwrap();
        assert_eq!(rows[0], vec![json!("ann"), json!(2), json!(15.5)]);
        assert_eq!(rows.len(), 3);
        let rule = filter::parse("owner != 'ann'").unwrap();
        let ops = [(AggregateOp::Max, Some("total".to_string())), (AggregateOp::Avg, Some("total".to_string()))];
        let rows = db.aggregate("shop", "orders", &q, Some(&rule), &Default::default(), &[], &ops, 10).unwrap();
        assert_eq!(rows, vec![vec![json!(2.0), json!(1.5)]]);
        let none: [(AggregateOp, Option<String>); 1] = [(AggregateOp::Sum, None)];
        assert!(db.aggregate("shop", "orders", &q, None, &Default::default(), &[], &none, 10).is_err());
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
