//! Records of collections in PostgreSQL, for nodes that share one database (a cluster):
//! the same records, rules, batches, indexes, search and change log as
//! [`crate::records`]' SQLite, so a write on one node is read, listed and delivered to
//! subscribers on every other.
//!
//! - Documents are `jsonb`; a filter is [`crate::pgsql`]'s `WHERE` clause; a declared
//!   index is a partial expression index on the same expressions.
//! - Full-text search is a `tsvector` column (the `simple` configuration: words as
//!   written, lower-cased) with a GIN index, ranked by `ts_rank`.
//! - The change log's `seq` is in commit order per collection: every transaction that
//!   writes a collection first takes the collection's advisory lock, so no change of it
//!   is numbered before an earlier one commits. A commit notifies channel
//!   [`CHANNEL`], which every node listens to, to wake its subscribers.
//! - Rules are tested on single records (a batch's, a delivery's) by the same SQLite
//!   evaluator the embedded backend uses, so both backends agree on them.
//!
//! The calls are blocking, like [`crate::records::Records`]' (the service runs them off
//! its async threads): each waits on the runtime it was opened in.

use crate::filter::Expr;
use crate::records::{
    self, Action, AggregateOp, Change, DbError, Guard, IndexSpec, ListQuery, MAINTENANCE_TIME, MAX_CHANGES_BYTES,
    MAX_COLLECTIONS, MAX_INDEXES, Page, Record, Records, Txn, Write,
};
use crate::{pgsql, sql};
use serde_json::{Map, Value as Json};
use tokio_postgres::types::ToSql;

/// The channel a commit notifies (its payload: the newest change's `seq`).
pub const CHANNEL: &str = "micro_db_changes";

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS db_records (
    namespace text COLLATE "C" NOT NULL,
    collection text COLLATE "C" NOT NULL,
    id text COLLATE "C" NOT NULL,
    data jsonb NOT NULL,
    created text COLLATE "C" NOT NULL,
    updated text COLLATE "C" NOT NULL,
    version bigint NOT NULL,
    search tsvector,
    PRIMARY KEY (namespace, collection, id)
);
CREATE INDEX IF NOT EXISTS db_records_search ON db_records USING gin (search) WHERE search IS NOT NULL;
CREATE TABLE IF NOT EXISTS db_collections (
    namespace text COLLATE "C" NOT NULL,
    name text COLLATE "C" NOT NULL,
    spec text NOT NULL,
    created text NOT NULL,
    updated text NOT NULL,
    PRIMARY KEY (namespace, name)
);
CREATE TABLE IF NOT EXISTS db_changes (
    seq bigserial PRIMARY KEY,
    namespace text COLLATE "C" NOT NULL,
    collection text COLLATE "C" NOT NULL,
    id text COLLATE "C" NOT NULL,
    action text NOT NULL,
    record text NOT NULL,
    at bigint NOT NULL
);
CREATE INDEX IF NOT EXISTS db_changes_of ON db_changes (namespace, collection, seq);
CREATE INDEX IF NOT EXISTS db_changes_at ON db_changes (at);
CREATE TABLE IF NOT EXISTS db_tombstones (
    namespace text COLLATE "C" NOT NULL,
    collection text COLLATE "C" NOT NULL,
    id text COLLATE "C" NOT NULL,
    version bigint NOT NULL,
    at bigint NOT NULL,
    PRIMARY KEY (namespace, collection, id)
);
CREATE TABLE IF NOT EXISTS db_floors (
    namespace text COLLATE "C" NOT NULL,
    collection text COLLATE "C" NOT NULL,
    seq bigint NOT NULL,
    PRIMARY KEY (namespace, collection)
);
CREATE TABLE IF NOT EXISTS db_searches (
    namespace text COLLATE "C" NOT NULL,
    collection text COLLATE "C" NOT NULL,
    fields text NOT NULL,
    PRIMARY KEY (namespace, collection)
);
CREATE TABLE IF NOT EXISTS db_locks (
    namespace text COLLATE "C" NOT NULL,
    collection text COLLATE "C" NOT NULL,
    PRIMARY KEY (namespace, collection)
);
CREATE TABLE IF NOT EXISTS db_indexes (
    namespace text COLLATE "C" NOT NULL,
    collection text COLLATE "C" NOT NULL,
    name text NOT NULL,
    PRIMARY KEY (namespace, collection, name)
);
"#;

const COLUMNS: &str = "records.id, records.created, records.updated, records.version, records.data::text";

/// Record `$3` of collection `$2` in namespace `$1`.
const ONE: &str = "SELECT records.id, records.created, records.updated, records.version, records.data::text
     FROM db_records AS records WHERE records.namespace = $1 AND records.collection = $2 AND records.id = $3";

/// Every record of collection `$2` in namespace `$1`.
const ALL: &str = "SELECT records.id, records.created, records.updated, records.version, records.data::text
     FROM db_records AS records WHERE records.namespace = $1 AND records.collection = $2";

/// A statement's failure as the API tells it.
fn pg(e: tokio_postgres::Error) -> DbError {
    use tokio_postgres::error::SqlState;
    match e.code() {
        Some(c) if *c == SqlState::UNIQUE_VIOLATION => {
            DbError::Taken("another record has these values of a unique index".into())
        }
        Some(c) if *c == SqlState::QUERY_CANCELED => DbError::Invalid(format!(
            "the query ran longer than {} s: narrow the filter (an indexed field, fewer contains tests)",
            records::MAX_QUERY_TIME.as_secs()
        )),
        // (The database's own words, for the log: the service does not show them.)
        _ => match e.as_db_error() {
            Some(d) => DbError::Storage(format!("PostgreSQL {}: {}", d.code().code(), d.message())),
            None => DbError::Storage(micro_postgres::db_error("db", e).detail().to_string()),
        },
    }
}

fn status(e: micro_core::Status) -> DbError {
    DbError::Storage(e.detail().to_string())
}

type Row5 = (String, String, String, i64, String);

/// A list's `WHERE` clause, its parameters, the page size and the page.
type Where = (String, Vec<Option<String>>, u32, u32);

fn row5(r: &tokio_postgres::Row) -> Row5 {
    (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4))
}

/// Parameters as tokio-postgres takes them.
fn refs(params: &[Option<String>]) -> Vec<&(dyn ToSql + Sync)> {
    params.iter().map(|p| p as &(dyn ToSql + Sync)).collect()
}

/// `ORDER BY` of a sort (`NULL`s first ascending, as SQLite's); ties by id.
fn order_by(sort: &str) -> Result<String, DbError> {
    let mut parts: Vec<String> = records::sort_fields(sort)?
        .iter()
        .map(|(path, desc)| {
            format!("{} {}", pgsql::field_expr(path), if *desc { "DESC NULLS LAST" } else { "ASC NULLS FIRST" })
        })
        .collect();
    parts.push("records.id ASC".into());
    Ok(parts.join(", "))
}

/// An index's PostgreSQL name (at most 63 bytes): a digest (SHA-256, 128 bits) of the
/// namespace, the collection and the definition, so that no tenant can make another's.
pub(crate) fn index_name(ix: &IndexSpec, ns: &str, collection: &str) -> String {
    format!("ix_{}", ix.digest(ns, collection))
}

fn index_sql(ix: &IndexSpec, ns: &str, collection: &str) -> Result<String, DbError> {
    let mut exprs = Vec::new();
    for f in &ix.fields {
        let path = records::field_path("index field", f)?;
        exprs.push(format!("({}) NULLS FIRST", pgsql::field_expr(&path).replace("records.", "")));
    }
    Ok(format!(
        "CREATE {}INDEX IF NOT EXISTS \"{}\" ON db_records ({}) WHERE {}",
        if ix.unique { "UNIQUE " } else { "" },
        index_name(ix, ns, collection),
        exprs.join(", "),
        records::scope(ns, collection)?.replace("records.", "")
    ))
}

/// The words of a search as a `tsquery` (each word quoted, a prefix with `prefix`).
fn tsquery(text: &str, prefix: bool) -> Result<String, DbError> {
    let words: Vec<String> = text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| format!("'{w}'{}", if prefix { ":*" } else { "" }))
        .collect();
    if words.is_empty() || words.len() > 32 || text.len() > 1024 {
        return Err(DbError::Invalid("search for 1 to 32 words (letters and digits), at most 1024 characters".into()));
    }
    Ok(words.join(" & "))
}

/// The records of every namespace's collections in a PostgreSQL database.
pub struct PgRecords {
    db: micro_postgres::Database,
    rt: tokio::runtime::Handle,
    /// Rules are tested on single records here (SQLite in memory).
    eval: Records,
}

/// A transaction of the PostgreSQL records, as a batch writes through it.
struct PgTxn<'a, 'b> {
    tx: &'a tokio_postgres::Transaction<'b>,
    rt: &'a tokio::runtime::Handle,
    eval: &'a Records,
}

impl PgTxn<'_, '_> {
    fn query(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<tokio_postgres::Row>, DbError> {
        self.rt.block_on(self.tx.query(sql, params)).map_err(pg)
    }

    fn one(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Option<tokio_postgres::Row>, DbError> {
        self.rt.block_on(self.tx.query_opt(sql, params)).map_err(pg)
    }

    fn exec(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, DbError> {
        self.rt.block_on(self.tx.execute(sql, params)).map_err(pg)
    }

    /// Takes the lock of `collection` in `ns` (its row of `db_locks`) until the
    /// transaction ends: writers of a collection go one at a time, so its changes are
    /// numbered in commit order.
    fn lock(&self, ns: &str, collection: &str) -> Result<(), DbError> {
        self.exec(
            "INSERT INTO db_locks (namespace, collection) VALUES ($1, $2)
             ON CONFLICT (namespace, collection) DO UPDATE SET namespace = excluded.namespace",
            &[&ns, &collection],
        )
        .map(drop)
    }

    /// Wakes every node's subscribers of `collection` at commit (the payload: the
    /// change's `seq`, the namespace and the collection).
    fn notify(&self, seq: u64, ns: &str, collection: &str) -> Result<(), DbError> {
        self.exec("SELECT pg_notify($1, $2)", &[&CHANNEL, &format!("{seq} {ns} {collection}")]).map(drop)
    }

    fn last_change(&self, ns: &str, collection: &str) -> Result<u64, DbError> {
        let row = self.one(
            "SELECT coalesce((SELECT max(seq) FROM db_changes WHERE namespace = $1 AND collection = $2),
                             (SELECT seq FROM db_floors WHERE namespace = $1 AND collection = $2), 0)",
            &[&ns, &collection],
        )?;
        Ok(row.map_or(0, |r| r.get::<_, i64>(0)).max(0) as u64)
    }

    fn set_floor(&self, ns: &str, collection: &str, seq: u64) -> Result<(), DbError> {
        self.exec(
            "INSERT INTO db_floors (namespace, collection, seq) VALUES ($1, $2, $3)
             ON CONFLICT (namespace, collection) DO UPDATE SET seq = greatest(db_floors.seq, excluded.seq)",
            &[&ns, &collection, &(seq as i64)],
        )
        .map(drop)
    }

    /// Ends the change log of `collection` (it is deleted): see the SQLite records'.
    fn reset(&self, ns: &str, collection: &str) -> Result<u64, DbError> {
        let last = self.last_change(ns, collection)?;
        self.exec("DELETE FROM db_changes WHERE namespace = $1 AND collection = $2", &[&ns, &collection])?;
        self.set_floor(ns, collection, last)?;
        let at = records::now();
        let empty = Record { id: String::new(), created: at.clone(), updated: at, version: 0, data: Map::new() };
        self.log(ns, collection, Action::Reset, &empty)
    }

    /// Forgets the indexes of `collection` in `ns` (of all its collections without one):
    /// their names, to drop once the transaction commits.
    fn forget_indexes(&self, ns: &str, collection: Option<&str>) -> Result<Vec<String>, DbError> {
        let rows = self.query(
            "DELETE FROM db_indexes WHERE namespace = $1 AND ($2::text IS NULL OR collection = $2) RETURNING name",
            &[&ns, &collection],
        )?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Makes the search of `collection` cover `fields` (none: no search), indexing
    /// every record again when they changed.
    fn set_search(&self, ns: &str, collection: &str, fields: &[String]) -> Result<(), DbError> {
        for f in fields {
            records::field_path("search field", f)?;
        }
        if fields.len() > 32 {
            return Err(DbError::Invalid("search at most 32 fields".into()));
        }
        let had = self.search_fields(ns, collection)?;
        if had.as_deref() == Some(fields) || (had.is_none() && fields.is_empty()) {
            return Ok(());
        }
        self.exec(
            "UPDATE db_records SET search = NULL WHERE namespace = $1 AND collection = $2 AND search IS NOT NULL",
            &[&ns, &collection],
        )?;
        self.exec("DELETE FROM db_searches WHERE namespace = $1 AND collection = $2", &[&ns, &collection])?;
        if fields.is_empty() {
            return Ok(());
        }
        let text = serde_json::to_string(fields).map_err(|e| DbError::Storage(e.to_string()))?;
        self.exec(
            "INSERT INTO db_searches (namespace, collection, fields) VALUES ($1, $2, $3)",
            &[&ns, &collection, &text],
        )?;
        let rows = self.query(ALL, &[&ns, &collection])?;
        for row in rows {
            let r = records::decode(row5(&row))?;
            self.index_text(ns, collection, fields, &r.id, Some(&r))?;
        }
        Ok(())
    }

    /// Renames and removes fields of every record (see the SQLite records').
    fn reshape(
        &self,
        ns: &str,
        collection: &str,
        renames: &[(String, String)],
        drops: &[String],
        at: &str,
    ) -> Result<(), DbError> {
        records::check_renames(renames, drops)?;
        let before = self.last_change(ns, collection)?;
        let rows = self.query(ALL, &[&ns, &collection])?;
        for row in rows {
            let mut r = records::decode(row5(&row))?;
            if !records::reshape_record(&mut r, renames, drops, at)? {
                continue;
            }
            self.put(ns, collection, &r)?;
            self.log(ns, collection, Action::Update, &r)?;
        }
        if !drops.is_empty() {
            self.exec(
                "DELETE FROM db_changes WHERE namespace = $1 AND collection = $2 AND seq <= $3",
                &[&ns, &collection, &(before as i64)],
            )?;
            self.set_floor(ns, collection, before)?;
        }
        Ok(())
    }
}

impl Txn for PgTxn<'_, '_> {
    fn spec_updated(&self, ns: &str, collection: &str) -> Result<Option<String>, DbError> {
        let row =
            self.one("SELECT updated FROM db_collections WHERE namespace = $1 AND name = $2", &[&ns, &collection])?;
        Ok(row.map(|r| r.get(0)))
    }

    fn make_collection(&self, ns: &str, collection: &str, spec: &Json, at: &str) -> Result<bool, DbError> {
        let made = self.exec(
            "INSERT INTO db_collections (namespace, name, spec, created, updated) VALUES ($1, $2, $3, $4, $4)
             ON CONFLICT (namespace, name) DO NOTHING",
            &[&ns, &collection, &spec.to_string(), &at],
        )?;
        Ok(made > 0)
    }

    fn search_fields(&self, ns: &str, collection: &str) -> Result<Option<Vec<String>>, DbError> {
        let row =
            self.one("SELECT fields FROM db_searches WHERE namespace = $1 AND collection = $2", &[&ns, &collection])?;
        Ok(row.and_then(|r| serde_json::from_str(&r.get::<_, String>(0)).ok()))
    }

    fn read(&self, ns: &str, collection: &str, id: &str) -> Result<Option<Record>, DbError> {
        let row = self.one(ONE, &[&ns, &collection, &id])?;
        row.map(|r| records::decode(row5(&r))).transpose()
    }

    fn buried(&self, ns: &str, collection: &str, id: &str) -> Result<Option<u64>, DbError> {
        let row = self.one(
            "SELECT version FROM db_tombstones WHERE namespace = $1 AND collection = $2 AND id = $3",
            &[&ns, &collection, &id],
        )?;
        Ok(row.map(|r| r.get::<_, i64>(0).max(0) as u64))
    }

    fn insert(&self, ns: &str, collection: &str, record: &Record, buried: bool) -> Result<(), DbError> {
        let text = Json::Object(record.data.clone()).to_string();
        self.exec(
            "INSERT INTO db_records (namespace, collection, id, data, created, updated, version)
             VALUES ($1, $2, $3, $4::text::jsonb, $5, $6, $7)",
            &[&ns, &collection, &record.id, &text, &record.created, &record.updated, &(record.version as i64)],
        )?;
        if buried {
            self.exec(
                "DELETE FROM db_tombstones WHERE namespace = $1 AND collection = $2 AND id = $3",
                &[&ns, &collection, &record.id],
            )?;
        }
        Ok(())
    }

    fn put(&self, ns: &str, collection: &str, record: &Record) -> Result<(), DbError> {
        let text = Json::Object(record.data.clone()).to_string();
        self.exec(
            "UPDATE db_records SET data = $4::text::jsonb, updated = $5, version = $6
             WHERE namespace = $1 AND collection = $2 AND id = $3",
            &[&ns, &collection, &record.id, &text, &record.updated, &(record.version as i64)],
        )
        .map(drop)
    }

    fn remove(&self, ns: &str, collection: &str, old: &Record) -> Result<(), DbError> {
        self.exec(
            "DELETE FROM db_records WHERE namespace = $1 AND collection = $2 AND id = $3",
            &[&ns, &collection, &old.id],
        )?;
        self.exec(
            "INSERT INTO db_tombstones (namespace, collection, id, version, at) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (namespace, collection, id) DO UPDATE SET version = excluded.version, at = excluded.at",
            &[&ns, &collection, &old.id, &(old.version as i64), &(records::now_ms() as i64)],
        )
        .map(drop)
    }

    fn log(&self, ns: &str, collection: &str, action: Action, record: &Record) -> Result<u64, DbError> {
        let row = self.one(
            "INSERT INTO db_changes (namespace, collection, id, action, record, at)
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING seq",
            &[
                &ns,
                &collection,
                &record.id,
                &action.as_str(),
                &record.to_json().to_string(),
                &(records::now_ms() as i64),
            ],
        )?;
        Ok(row.map_or(0, |r| r.get::<_, i64>(0)).max(0) as u64)
    }

    fn index_text(
        &self,
        ns: &str,
        collection: &str,
        fields: &[String],
        id: &str,
        record: Option<&Record>,
    ) -> Result<(), DbError> {
        // A deleted record's row (and its text) is gone already.
        let Some(record) = record else { return Ok(()) };
        self.exec(
            "UPDATE db_records SET search = to_tsvector('simple', $4)
             WHERE namespace = $1 AND collection = $2 AND id = $3",
            &[&ns, &collection, &id, &records::text_of(&record.data, fields)],
        )
        .map(drop)
    }

    fn holds(&self, record: &Record, exprs: &[&Expr], request: &sql::Request) -> Result<bool, DbError> {
        self.eval.matches(record, exprs, request)
    }
}

impl PgRecords {
    /// Opens the records in `db` (making their tables when need be). Call it inside the
    /// runtime whose threads will run the calls' blocking waits.
    pub async fn open(db: micro_postgres::Database) -> Result<PgRecords, DbError> {
        db.migrate("db", SCHEMA).await.map_err(status)?;
        let eval = Records::open(std::path::Path::new(":memory:"))?;
        Ok(PgRecords { db, rt: tokio::runtime::Handle::current(), eval })
    }

    /// The database the records are in.
    pub fn database(&self) -> &micro_postgres::Database {
        &self.db
    }

    /// Runs `f` in a transaction (committed when it succeeds), its statements stopping
    /// after `limit` when given.
    fn transact<T>(
        &self,
        limit: Option<std::time::Duration>,
        f: impl FnOnce(&PgTxn<'_, '_>) -> Result<T, DbError>,
    ) -> Result<T, DbError> {
        let mut client = self.rt.block_on(self.db.client("db")).map_err(status)?;
        let tx = self.rt.block_on(client.transaction()).map_err(pg)?;
        // A transaction left waiting (its caller stuck) ends, and its locks with it.
        self.rt.block_on(tx.batch_execute("SET LOCAL idle_in_transaction_session_timeout = 30000")).map_err(pg)?;
        if let Some(limit) = limit {
            self.rt
                .block_on(tx.batch_execute(&format!("SET LOCAL statement_timeout = {}", limit.as_millis())))
                .map_err(pg)?;
        }
        let out = f(&PgTxn { tx: &tx, rt: &self.rt, eval: &self.eval })?;
        self.rt.block_on(tx.commit()).map_err(pg)?;
        Ok(out)
    }

    fn query(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<tokio_postgres::Row>, DbError> {
        self.rt.block_on(async {
            let client = self.db.client("db").await.map_err(status)?;
            client.query(sql, params).await.map_err(pg)
        })
    }

    fn one(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Option<tokio_postgres::Row>, DbError> {
        self.rt.block_on(async {
            let client = self.db.client("db").await.map_err(status)?;
            client.query_opt(sql, params).await.map_err(pg)
        })
    }

    fn read(&self, ns: &str, collection: &str, id: &str) -> Result<Option<Record>, DbError> {
        let row = self.rt.block_on(async {
            let client = self.db.client("db").await.map_err(status)?;
            let stmt = client.prepare_cached(ONE).await.map_err(pg)?;
            client.query_opt(&stmt, &[&ns, &collection, &id]).await.map_err(pg)
        })?;
        row.map(|r| records::decode(row5(&r))).transpose()
    }

    /// Record `id` of `collection` in `ns` if the caller's view `rule` lets it see it.
    pub fn get_as(
        &self,
        ns: &str,
        collection: &str,
        id: &str,
        rule: Option<&Expr>,
        request: &sql::Request,
    ) -> Result<Record, DbError> {
        records::check_name("collection", collection)?;
        let record = self.read(ns, collection, id)?.ok_or_else(|| DbError::NotFound(id.to_string()))?;
        match rule {
            Some(rule) if !self.eval.matches(&record, &[rule], request)? => Err(DbError::NotFound(id.to_string())),
            _ => Ok(record),
        }
    }

    /// Writes all of `writes` or none (see [`Records::batch`]).
    pub fn batch(&self, ns: &str, collection: &str, writes: Vec<Write>, guard: &Guard) -> Result<Vec<Change>, DbError> {
        records::check_batch(collection, &writes)?;
        records::scope(ns, collection)?;
        self.transact(None, |tx| {
            tx.lock(ns, collection)?;
            let out = records::apply(tx, ns, collection, writes, guard)?;
            if let Some(last) = out.last() {
                tx.notify(last.seq, ns, collection)?;
            }
            Ok(out)
        })
    }

    /// Whether `record` holds every one of `exprs` for `request`.
    pub fn matches(&self, record: &Record, exprs: &[&Expr], request: &sql::Request) -> Result<bool, DbError> {
        self.eval.matches(record, exprs, request)
    }

    /// The changes of `collection` in `ns` after `after` (see [`Records::changes`]).
    pub fn changes(
        &self,
        ns: &str,
        collection: &str,
        id: Option<&str>,
        after: u64,
        limit: u32,
    ) -> Result<Vec<Change>, DbError> {
        // The byte budget is kept by the database: past it, no record is sent.
        let rows = self.query(
            "SELECT seq, action, record FROM (
                 SELECT seq, action, record, sum(octet_length(record)) OVER (ORDER BY seq) - octet_length(record) AS before
                 FROM db_changes
                 WHERE namespace = $1 AND collection = $2 AND seq > $3 AND ($4::text IS NULL OR id = $4 OR action = 'reset')
                 ORDER BY seq LIMIT $5) AS page
             WHERE before < $6 ORDER BY seq",
            &[&ns, &collection, &(after as i64), &id, &i64::from(limit), &(MAX_CHANGES_BYTES as i64)],
        )?;
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for row in rows {
            let (seq, action, record): (i64, String, String) = (row.get(0), row.get(1), row.get(2));
            bytes += record.len();
            if bytes > MAX_CHANGES_BYTES && !out.is_empty() {
                break;
            }
            let action = Action::parse(&action).ok_or_else(|| DbError::Storage(format!("change {seq}: {action}")))?;
            out.push(Change { seq: seq.max(0) as u64, action, record: records::from_json(&record)? });
        }
        Ok(out)
    }

    /// Where a subscription to `collection` of `ns` starts (see [`Records::start`]): the
    /// collection's newest change, as numbers of other collections' uncommitted changes
    /// may be below the log's newest.
    pub fn start(&self, ns: &str, collection: &str) -> Result<(u64, u64, u64), DbError> {
        let row = self.one(
            "SELECT coalesce((SELECT max(seq) FROM db_changes WHERE namespace = $1 AND collection = $2),
                             (SELECT seq FROM db_floors WHERE namespace = $1 AND collection = $2), 0),
                    greatest((SELECT min(seq) FROM db_changes),
                             (SELECT seq + 1 FROM db_floors WHERE namespace = '' AND collection = '')),
                    coalesce((SELECT seq FROM db_floors WHERE namespace = $1 AND collection = $2), 0)",
            &[&ns, &collection],
        )?;
        let (newest, oldest, floor): (i64, Option<i64>, i64) =
            row.map_or((0, None, 0), |r| (r.get(0), r.get(1), r.get(2)));
        let newest = newest.max(0) as u64;
        Ok((newest, oldest.map_or(newest + 1, |o| o.max(0) as u64), floor.max(0) as u64))
    }

    /// The cursor below which a subscription to `collection` cannot resume.
    pub fn floor(&self, ns: &str, collection: &str) -> Result<u64, DbError> {
        let row =
            self.one("SELECT seq FROM db_floors WHERE namespace = $1 AND collection = $2", &[&ns, &collection])?;
        Ok(row.map_or(0, |r| r.get::<_, i64>(0)).max(0) as u64)
    }

    /// How many records `collection` of `ns` has, counting no further than `most`.
    pub fn count_upto(&self, ns: &str, collection: &str, most: u64) -> Result<u64, DbError> {
        let row = self.one(
            "SELECT count(*) FROM (SELECT 1 FROM db_records WHERE namespace = $1 AND collection = $2 LIMIT $3) AS n",
            &[&ns, &collection, &(most.min(i64::MAX as u64) as i64)],
        )?;
        Ok(row.map_or(0, |r| r.get::<_, i64>(0)).max(0) as u64)
    }

    /// Drops changes older than `age`.
    pub fn trim_changes(&self, age: std::time::Duration) -> Result<u64, DbError> {
        let before = records::now_ms().saturating_sub(age.as_millis() as u64) as i64;
        self.transact(Some(MAINTENANCE_TIME), |tx| {
            // Nodes' clocks differ: the highest change trimmed is kept, and no cursor below
            // it resumes (as though everything below it were gone).
            let row = tx.one(
                "WITH gone AS (DELETE FROM db_changes WHERE at < $1 RETURNING seq) SELECT count(*), max(seq) FROM gone",
                &[&before],
            )?;
            let (n, last): (i64, Option<i64>) = row.map_or((0, None), |r| (r.get(0), r.get(1)));
            if let Some(last) = last {
                tx.set_floor("", "", last.max(0) as u64)?;
            }
            tx.exec("DELETE FROM db_tombstones WHERE at < $1", &[&before])?;
            Ok(n.max(0) as u64)
        })
    }

    /// Collection `name` of `ns`: its spec, made and changed times.
    pub fn collection(&self, ns: &str, name: &str) -> Result<Option<(Json, String, String)>, DbError> {
        let row = self.one(
            "SELECT spec, created, updated FROM db_collections WHERE namespace = $1 AND name = $2",
            &[&ns, &name],
        )?;
        row.map(|r| {
            let spec: String = r.get(0);
            Ok((serde_json::from_str(&spec).map_err(|e| DbError::Storage(e.to_string()))?, r.get(1), r.get(2)))
        })
        .transpose()
    }

    /// Every collection of `ns`, by name.
    pub fn collections(&self, ns: &str) -> Result<Vec<(String, Json, String, String)>, DbError> {
        let rows = self.query(
            "SELECT name, spec, created, updated FROM db_collections WHERE namespace = $1 ORDER BY name",
            &[&ns],
        )?;
        let mut out = Vec::new();
        for r in rows {
            let spec: String = r.get(1);
            out.push((
                r.get(0),
                serde_json::from_str(&spec).map_err(|e| DbError::Storage(e.to_string()))?,
                r.get(2),
                r.get(3),
            ));
        }
        Ok(out)
    }

    /// Runs maintenance statements that may not run in a transaction (`CREATE INDEX
    /// CONCURRENTLY`, which takes no lock that stops other tenants' reads or writes),
    /// each stopping after [`MAINTENANCE_TIME`].
    fn maintain(&self, statements: &[String]) -> Result<(), DbError> {
        if statements.is_empty() {
            return Ok(());
        }
        self.rt.block_on(async {
            let client = self.db.client("db").await.map_err(status)?;
            let limit = format!("SET statement_timeout = {}", MAINTENANCE_TIME.as_millis());
            client.batch_execute(&limit).await.map_err(pg)?;
            let mut out = Ok(());
            for sql in statements {
                if let Err(e) = client.execute(sql.as_str(), &[]).await {
                    out = Err(pg(e));
                    break;
                }
            }
            // The pool's connections keep the pool's limit.
            client.batch_execute("RESET statement_timeout").await.map_err(pg)?;
            out
        })
    }

    /// Drops indexes no collection declares any more (after the transaction that forgot
    /// them), without stopping other tenants' reads or writes.
    fn drop_indexes(&self, names: &[String]) {
        let drops: Vec<String> =
            names.iter().map(|n| format!("DROP INDEX CONCURRENTLY IF EXISTS \"{}\"", n.replace('"', ""))).collect();
        if let Err(e) = self.maintain(&drops) {
            tracing::warn!(service = crate::NAME, error = %e, "an index no longer declared was not dropped");
        }
    }

    /// Saves collection `name` of `ns` (see [`Records::save_collection`]). New indexes are
    /// built first, concurrently (a unique one over shared values is refused, and nothing
    /// of the save is kept); indexes no longer declared are dropped after the save.
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
        records::scope(ns, name)?;
        if indexes.len() > MAX_INDEXES {
            return Err(DbError::Invalid(format!("at most {MAX_INDEXES} indexes a collection")));
        }
        let mut wanted: Vec<(String, String, &IndexSpec)> = Vec::new();
        for ix in indexes {
            ix.check()?;
            if wanted.iter().any(|(_, _, other)| other.fields == ix.fields) {
                return Err(DbError::Invalid(format!("two indexes of ({})", ix.fields.join(", "))));
            }
            wanted.push((index_name(ix, ns, name), index_sql(ix, ns, name)?, ix));
        }
        for f in renames.iter().flat_map(|(a, b)| [a, b]).chain(drops) {
            records::check_name("field", f)?;
        }
        let had: Vec<String> = self
            .query("SELECT name FROM db_indexes WHERE namespace = $1 AND collection = $2", &[&ns, &name])?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let others = self
            .one("SELECT count(*) FROM db_indexes WHERE namespace = $1 AND collection != $2", &[&ns, &name])?
            .map_or(0, |r| r.get::<_, i64>(0));
        records::check_namespace_indexes(ns, others as usize + wanted.len())?;
        // The new indexes, built before anything else changes. One left invalid by an
        // earlier failed build is dropped first.
        let mut made = Vec::new();
        for (index, create, ix) in wanted.iter().filter(|(n, _, _)| !had.contains(n)) {
            let invalid = self
                .one("SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname = $1 AND NOT i.indisvalid", &[index])?
                .is_some();
            if invalid {
                self.drop_indexes(std::slice::from_ref(index));
            }
            let concurrent = create.replacen("INDEX IF NOT EXISTS", "INDEX CONCURRENTLY IF NOT EXISTS", 1);
            if let Err(e) = self.maintain(&[concurrent]) {
                self.drop_indexes(std::slice::from_ref(index));
                self.drop_indexes(&made);
                return Err(match e {
                    DbError::Taken(_) => DbError::Taken(format!(
                        "records of {name} share values of {}: a unique index cannot be made until they do not",
                        ix.fields.join(", ")
                    )),
                    e => e,
                });
            }
            made.push(index.clone());
        }
        let at = records::now();
        let saved = self.transact(Some(MAINTENANCE_TIME), |tx| {
            tx.lock(ns, name)?;
            let row = tx.one(
                "SELECT count(*), coalesce(bool_or(name = $2), false) FROM db_collections WHERE namespace = $1",
                &[&ns, &name],
            )?;
            let (count, exists): (i64, bool) = row.map_or((0, false), |r| (r.get(0), r.get(1)));
            if !exists && count as usize >= MAX_COLLECTIONS {
                return Err(DbError::Invalid(format!("namespace {ns} has {count} collections, the most it may have")));
            }
            tx.exec(
                "INSERT INTO db_collections (namespace, name, spec, created, updated) VALUES ($1, $2, $3, $4, $4)
                 ON CONFLICT (namespace, name) DO UPDATE SET spec = excluded.spec, updated = excluded.updated",
                &[&ns, &name, &spec.to_string(), &at],
            )?;
            if !renames.is_empty() || !drops.is_empty() {
                tx.reshape(ns, name, renames, drops, &at)?;
                tx.set_search(ns, name, &[])?;
            }
            tx.set_search(ns, name, search)?;
            let gone = tx.forget_indexes(ns, Some(name))?;
            for (index, _, _) in &wanted {
                tx.exec(
                    "INSERT INTO db_indexes (namespace, collection, name) VALUES ($1, $2, $3)",
                    &[&ns, &name, index],
                )?;
            }
            let created: String = tx
                .one("SELECT created FROM db_collections WHERE namespace = $1 AND name = $2", &[&ns, &name])?
                .map(|r| r.get(0))
                .unwrap_or_else(|| at.clone());
            let last = tx.last_change(ns, name)?;
            tx.notify(last, ns, name)?;
            Ok((created, gone))
        });
        let (created, gone) = match saved {
            Ok(s) => s,
            Err(e) => {
                self.drop_indexes(&made);
                return Err(e);
            }
        };
        let unwanted: Vec<String> = gone.into_iter().filter(|g| !wanted.iter().any(|(n, _, _)| n == g)).collect();
        self.drop_indexes(&unwanted);
        if !made.is_empty() {
            // Figures for the planner (sampled; no lock that stops reads or writes).
            if let Err(e) = self.maintain(&["ANALYZE db_records".to_string()]) {
                tracing::warn!(service = crate::NAME, error = %e, "the planner's figures were not gathered");
            }
        }
        Ok((created, at))
    }

    /// Deletes collection `name` of `ns` with its records and changes; whether it was there.
    pub fn delete_collection(&self, ns: &str, name: &str) -> Result<bool, DbError> {
        records::scope(ns, name)?;
        let (found, gone) = self.transact(Some(MAINTENANCE_TIME), |tx| {
            tx.lock(ns, name)?;
            let gone = tx.forget_indexes(ns, Some(name))?;
            tx.exec("DELETE FROM db_searches WHERE namespace = $1 AND collection = $2", &[&ns, &name])?;
            let n = tx.exec("DELETE FROM db_collections WHERE namespace = $1 AND name = $2", &[&ns, &name])?;
            tx.exec("DELETE FROM db_records WHERE namespace = $1 AND collection = $2", &[&ns, &name])?;
            tx.exec("DELETE FROM db_tombstones WHERE namespace = $1 AND collection = $2", &[&ns, &name])?;
            let seq = tx.reset(ns, name)?;
            tx.notify(seq, ns, name)?;
            Ok((n > 0, gone))
        })?;
        self.drop_indexes(&gone);
        Ok(found)
    }

    /// Deletes everything of namespace `ns` (it is being deleted).
    pub fn delete_namespace(&self, ns: &str) -> Result<(), DbError> {
        let gone = self.transact(Some(MAINTENANCE_TIME), |tx| {
            let mut names: Vec<String> = tx
                .query(
                    "SELECT name FROM db_collections WHERE namespace = $1
                     UNION SELECT DISTINCT collection FROM db_changes WHERE namespace = $1",
                    &[&ns],
                )?
                .iter()
                .map(|r| r.get(0))
                .collect();
            names.sort();
            // In one order, so no two deletions wait on each other.
            for c in &names {
                tx.lock(ns, c)?;
            }
            let gone = tx.forget_indexes(ns, None)?;
            for table in ["db_searches", "db_collections", "db_records", "db_tombstones"] {
                tx.exec(&format!("DELETE FROM {table} WHERE namespace = $1"), &[&ns])?;
            }
            for c in &names {
                let seq = tx.reset(ns, c)?;
                tx.notify(seq, ns, c)?;
            }
            // Its names leave with it (its floors stay, so old cursors cannot resume).
            tx.exec("DELETE FROM db_locks WHERE namespace = $1", &[&ns])?;
            Ok(gone)
        })?;
        self.drop_indexes(&gone);
        Ok(())
    }

    /// Whether namespace `ns` has anything here.
    pub fn holds_namespace(&self, ns: &str) -> Result<bool, DbError> {
        let row = self.one(
            "SELECT 1 FROM db_collections WHERE namespace = $1
             UNION ALL SELECT 1 FROM db_records WHERE namespace = $1 LIMIT 1",
            &[&ns],
        )?;
        Ok(row.is_some())
    }

    /// The `WHERE` clause of a list and its parameters, with the page size and page.
    fn query_of(
        ns: &str,
        collection: &str,
        q: &ListQuery,
        rule: Option<&Expr>,
        request: &sql::Request,
    ) -> Result<Where, DbError> {
        let (scope, all, per_page, page) = records::list_terms(ns, collection, q, rule)?;
        let (clause, params) = match all {
            None => ("TRUE".to_string(), Vec::new()),
            Some(e) => {
                let c = pgsql::postgres(&e, request, 1);
                (c.sql, c.params)
            }
        };
        Ok((format!("{scope} AND ({clause})"), params, per_page, page))
    }

    /// A page of the records of `collection` in `ns` that match `q` and `rule`.
    pub fn list_as(
        &self,
        ns: &str,
        collection: &str,
        q: &ListQuery,
        rule: Option<&Expr>,
        request: &sql::Request,
    ) -> Result<Page, DbError> {
        let (where_, params, per_page, page) = Self::query_of(ns, collection, q, rule, request)?;
        let order = order_by(&q.sort)?;
        let offset = u64::from(page - 1) * u64::from(per_page);
        let params = refs(&params);
        self.rt.block_on(async {
            let client = self.db.client("db").await.map_err(status)?;
            let total = if q.total {
                let sql = format!("SELECT count(*) FROM db_records AS records WHERE {where_}");
                let n: i64 = client.query_one(&sql, &params).await.map_err(pg)?.get(0);
                Some(n.max(0) as u64)
            } else {
                None
            };
            let sql = format!(
                "SELECT {COLUMNS} FROM db_records AS records WHERE {where_} ORDER BY {order} LIMIT {per_page} OFFSET {offset}"
            );
            let rows = client.query(&sql, &params).await.map_err(pg)?;
            let items = rows.iter().map(|r| records::decode(row5(r))).collect::<Result<_, _>>()?;
            Ok(Page { items, page, per_page, total })
        })
    }

    /// How PostgreSQL would run a list: its plan, one line each (`Index Scan using
    /// ix_…` when an index serves).
    pub fn explain(
        &self,
        ns: &str,
        collection: &str,
        q: &ListQuery,
        rule: Option<&Expr>,
        request: &sql::Request,
    ) -> Result<Vec<String>, DbError> {
        self.plan(ns, collection, q, rule, request, false)
    }

    /// The plan PostgreSQL would choose for a list were the collection big: reading the
    /// table whole is priced out (`enable_seqscan` off), so the plan reads the whole
    /// collection only when no index can serve.
    pub fn explain_big(
        &self,
        ns: &str,
        collection: &str,
        q: &ListQuery,
        rule: Option<&Expr>,
        request: &sql::Request,
    ) -> Result<Vec<String>, DbError> {
        self.plan(ns, collection, q, rule, request, true)
    }

    fn plan(
        &self,
        ns: &str,
        collection: &str,
        q: &ListQuery,
        rule: Option<&Expr>,
        request: &sql::Request,
        big: bool,
    ) -> Result<Vec<String>, DbError> {
        let (where_, params, _, _) = Self::query_of(ns, collection, q, rule, request)?;
        let order = order_by(&q.sort)?;
        let sql =
            format!("EXPLAIN SELECT {COLUMNS} FROM db_records AS records WHERE {where_} ORDER BY {order} LIMIT 30");
        self.transact(None, |tx| {
            if big {
                tx.exec("SET LOCAL enable_seqscan = off", &[])?;
            }
            let rows = tx.query(&sql, &refs(&params))?;
            Ok(rows.iter().map(|r| r.get::<_, String>(0).trim().to_string()).collect())
        })
    }

    /// The records whose searched fields hold the words of `text` (see
    /// [`Records::search`]).
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
        let (where_, mut params, per_page, page) = Self::query_of(ns, collection, q, rule, request)?;
        let words = tsquery(text, prefix)?;
        let searched =
            self.one("SELECT 1 FROM db_searches WHERE namespace = $1 AND collection = $2", &[&ns, &collection])?;
        if searched.is_none() {
            return Err(DbError::Invalid(format!(
                "{collection} has no full-text search: name the fields to search in its spec (search)"
            )));
        }
        params.push(Some(words));
        let n = params.len();
        let offset = u64::from(page - 1) * u64::from(per_page);
        let sql = format!(
            "SELECT {COLUMNS} FROM db_records AS records
             WHERE records.search @@ to_tsquery('simple', ${n}) AND {where_}
             ORDER BY ts_rank(records.search, to_tsquery('simple', ${n})) DESC, records.id
             LIMIT {per_page} OFFSET {offset}"
        );
        let rows = self.query(&sql, &refs(&params))?;
        let items = rows.iter().map(|r| records::decode(row5(r))).collect::<Result<_, _>>()?;
        Ok(Page { items, page, per_page, total: None })
    }

    /// Counts, sums, averages, minimums and maximums in groups (see
    /// [`Records::aggregate`]); sums, averages, minimums and maximums are of numbers.
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
        let (where_, params, _, _) = Self::query_of(ns, collection, q, rule, request)?;
        if group.len() > records::MAX_INDEX_FIELDS || ops.is_empty() || ops.len() > 16 {
            return Err(DbError::Invalid(format!(
                "group by at most {} fields, with 1 to 16 aggregates",
                records::MAX_INDEX_FIELDS
            )));
        }
        let json_of = |path: &[String]| {
            let e = pgsql::field_expr(path);
            if e.starts_with("nullif(") { e } else { format!("to_jsonb({e})") }
        };
        let mut groups = Vec::new();
        for g in group {
            let e = json_of(&records::field_path("group field", g)?);
            if groups.contains(&e) {
                return Err(DbError::Invalid(format!("group by {g} twice")));
            }
            groups.push(e);
        }
        let mut cols: Vec<String> = groups.iter().map(|g| format!("({g})::text")).collect();
        for (op, field) in ops {
            let expr = match (op, field) {
                (AggregateOp::Count, None) => "count(*)".to_string(),
                (AggregateOp::Count, Some(f)) => {
                    format!("count({})", json_of(&records::field_path("aggregate field", f)?))
                }
                (op, Some(f)) => {
                    let e = json_of(&records::field_path("aggregate field", f)?);
                    format!("{}(CASE WHEN jsonb_typeof({e}) = 'number' THEN ({e})::numeric END)", op.sql())
                }
                (op, None) => return Err(DbError::Invalid(format!("{} needs a field", op.sql()))),
            };
            cols.push(format!("({expr})::text"));
        }
        let group_by = if groups.is_empty() { String::new() } else { format!(" GROUP BY {}", groups.join(", ")) };
        let order = if groups.is_empty() { String::new() } else { " ORDER BY count(*) DESC".to_string() };
        let sql = format!(
            "SELECT {} FROM db_records AS records WHERE {where_}{group_by}{order} LIMIT {}",
            cols.join(", "),
            limit.clamp(1, 1000)
        );
        let rows = self.query(&sql, &refs(&params))?;
        let n = cols.len();
        Ok(rows
            .iter()
            .map(|r| {
                (0..n)
                    .map(|i| {
                        r.get::<_, Option<String>>(i)
                            .map_or(Json::Null, |t| serde_json::from_str(&t).unwrap_or(Json::String(t)))
                    })
                    .collect()
            })
            .collect())
    }
}
