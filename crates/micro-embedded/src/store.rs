//! The embedded store: records in SQLite (`store.db`), keyed by database, table and key.

use crate::DataDir;
use crate::db::{Db, internal};
use micro_core::Status;
use micro_core::store::{Order, Query, Record, Store, Table, now_ms, validate_key, validate_record};
use rusqlite::{OptionalExtension, params};
use std::collections::BTreeMap;
use std::time::Duration;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS records (
    db TEXT NOT NULL,
    tbl TEXT NOT NULL,
    key TEXT NOT NULL,
    value BLOB NOT NULL,
    metadata TEXT NOT NULL DEFAULT '{}',
    expiry INTEGER,
    PRIMARY KEY (db, tbl, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS records_expiry ON records(expiry) WHERE expiry IS NOT NULL;
";

/// How often expired records are purged.
const PURGE_EVERY: Duration = Duration::from_secs(10);

/// The embedded store. Cheap to clone.
#[derive(Clone)]
pub struct EmbeddedStore {
    db: Db,
}

impl EmbeddedStore {
    /// Opens the store in `dir` and starts purging expired records in the background
    /// (until the last clone is dropped).
    pub fn open(dir: &DataDir) -> Result<EmbeddedStore, Status> {
        EmbeddedStore::open_named(dir, "store")
    }

    /// A separate store in the file `<name>.db` of `dir` (for example for auth data,
    /// which must not be reachable through the store service).
    pub fn open_named(dir: &DataDir, name: &str) -> Result<EmbeddedStore, Status> {
        let db = dir.open(name, SCHEMA)?;
        let store = EmbeddedStore { db };
        let weak = store.db.downgrade();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(PURGE_EVERY).await;
                let Some(db) = weak.upgrade() else { return };
                let store = EmbeddedStore { db };
                if let Err(e) = store.purge().await {
                    tracing::warn!(error = %e, "purging expired records failed");
                }
            }
        });
        Ok(store)
    }

    /// Deletes expired records now; returns how many.
    pub async fn purge(&self) -> Result<usize, Status> {
        let now = now_ms() as i64;
        self.db
            .write(move |c| {
                c.execute("DELETE FROM records WHERE expiry IS NOT NULL AND expiry <= ?1", [now]).map_err(internal)
            })
            .await
    }
}

/// A GLOB pattern matching `s` literally.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '*' => out.push_str("[*]"),
            '?' => out.push_str("[?]"),
            '[' => out.push_str("[[]"),
            c => out.push(c),
        }
    }
    out
}

/// The WHERE clause (after db and table) and the key argument for a query.
fn matcher(key: &str, q: &Query) -> (&'static str, String) {
    match (q.prefix, q.suffix) {
        (false, false) if key.is_empty() => ("1", String::new()),
        (false, false) => ("key = ?3", key.to_string()),
        (true, false) => ("key GLOB ?3", format!("{}*", glob_escape(key))),
        (false, true) => ("key GLOB ?3", format!("*{}", glob_escape(key))),
        // Both: the key must start and end with it.
        (true, true) => ("key GLOB ?3", format!("{0}*{0}", glob_escape(key))),
    }
}

fn order_limit(q: &Query) -> String {
    let order = match q.order {
        Order::Asc => "ASC",
        Order::Desc => "DESC",
    };
    let limit = if q.limit == 0 { -1 } else { i64::from(q.limit) };
    format!("ORDER BY key {order} LIMIT {limit} OFFSET {}", q.offset)
}

#[async_trait::async_trait]
impl Store for EmbeddedStore {
    async fn read(&self, table: &Table, key: &str, query: &Query) -> Result<Vec<Record>, Status> {
        let exact = micro_core::store::check_query(table, key, query)?;
        let (cond, arg) = matcher(key, query);
        let sql = format!(
            "SELECT key, value, metadata, expiry FROM records WHERE db = ?1 AND tbl = ?2 AND {cond} \
             AND (expiry IS NULL OR expiry > ?4) {}",
            order_limit(query)
        );
        let (db, tbl, now) = (table.database.clone(), table.table.clone(), now_ms() as i64);
        let records = self
            .db
            .read(move |c| {
                let mut stmt = c.prepare_cached(&sql).map_err(internal)?;
                let rows = stmt
                    .query_map(params![db, tbl, arg, now], |r| {
                        let metadata: String = r.get(2)?;
                        Ok(Record {
                            key: r.get(0)?,
                            value: r.get(1)?,
                            metadata: serde_json::from_str::<BTreeMap<String, String>>(&metadata).unwrap_or_default(),
                            expiry: r.get::<_, Option<i64>>(3)?.map(|e| e as u64),
                        })
                    })
                    .map_err(internal)?;
                rows.collect::<Result<Vec<_>, _>>().map_err(internal)
            })
            .await?;
        if exact && records.is_empty() {
            return Err(micro_core::store::not_found(key, table));
        }
        Ok(records)
    }

    async fn write(&self, table: &Table, record: &Record, ttl: Option<Duration>) -> Result<(), Status> {
        table.validate()?;
        validate_record(record)?;
        let expiry = micro_core::store::expiry_of(record, ttl);
        let metadata = serde_json::to_string(&record.metadata).map_err(|e| Status::internal("store", e.to_string()))?;
        let (db, tbl, key, value) =
            (table.database.clone(), table.table.clone(), record.key.clone(), record.value.clone());
        self.db
            .write(move |c| {
                c.prepare_cached(
                    "INSERT INTO records (db, tbl, key, value, metadata, expiry) VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
                     ON CONFLICT (db, tbl, key) DO UPDATE SET value = excluded.value, \
                     metadata = excluded.metadata, expiry = excluded.expiry",
                )
                .and_then(|mut s| s.execute(params![db, tbl, key, value, metadata, expiry.map(|e| e as i64)]))
                .map_err(internal)
            })
            .await?;
        Ok(())
    }

    async fn delete(&self, table: &Table, key: &str) -> Result<(), Status> {
        table.validate()?;
        validate_key(key)?;
        let (db, tbl, k, now) = (table.database.clone(), table.table.clone(), key.to_string(), now_ms() as i64);
        let live = self
            .db
            .write(move |c| {
                let tx = c.transaction().map_err(internal)?;
                let expiry: Option<Option<i64>> = tx
                    .query_row(
                        "SELECT expiry FROM records WHERE db = ?1 AND tbl = ?2 AND key = ?3",
                        params![db, tbl, k],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(internal)?;
                tx.execute("DELETE FROM records WHERE db = ?1 AND tbl = ?2 AND key = ?3", params![db, tbl, k])
                    .map_err(internal)?;
                tx.commit().map_err(internal)?;
                Ok(matches!(expiry, Some(e) if e.is_none_or(|e| e > now)))
            })
            .await?;
        if live { Ok(()) } else { Err(micro_core::store::not_found(key, table)) }
    }

    async fn list(&self, table: &Table, key: &str, query: &Query) -> Result<Vec<String>, Status> {
        table.validate()?;
        if !key.is_empty() {
            validate_key(key)?;
        }
        let (cond, arg) = matcher(key, query);
        let sql = format!(
            "SELECT key FROM records WHERE db = ?1 AND tbl = ?2 AND {cond} AND (expiry IS NULL OR expiry > ?4) {}",
            order_limit(query)
        );
        let (db, tbl, now) = (table.database.clone(), table.table.clone(), now_ms() as i64);
        self.db
            .read(move |c| {
                let mut stmt = c.prepare_cached(&sql).map_err(internal)?;
                let rows = stmt.query_map(params![db, tbl, arg, now], |r| r.get(0)).map_err(internal)?;
                rows.collect::<Result<Vec<String>, _>>().map_err(internal)
            })
            .await
    }

    async fn databases(&self) -> Result<Vec<String>, Status> {
        let now = now_ms() as i64;
        self.db
            .read(move |c| {
                let mut stmt = c
                    .prepare_cached("SELECT DISTINCT db FROM records WHERE expiry IS NULL OR expiry > ?1 ORDER BY db")
                    .map_err(internal)?;
                let rows = stmt.query_map([now], |r| r.get(0)).map_err(internal)?;
                rows.collect::<Result<Vec<String>, _>>().map_err(internal)
            })
            .await
    }

    async fn size(&self, database: &str) -> Result<u64, Status> {
        let (db, now) = (database.to_string(), now_ms() as i64);
        self.db
            .read(move |c| {
                let mut stmt = c
                    .prepare_cached(
                        "SELECT COALESCE(SUM(length(CAST(key AS BLOB)) + length(value) + length(CAST(metadata AS BLOB))), 0) \
                         FROM records \
                         WHERE db = ?1 AND (expiry IS NULL OR expiry > ?2)",
                    )
                    .map_err(internal)?;
                let n: i64 = stmt.query_row(params![db, now], |r| r.get(0)).map_err(internal)?;
                Ok(n.max(0) as u64)
            })
            .await
    }

    async fn tables(&self, database: &str) -> Result<Vec<String>, Status> {
        micro_core::namespace::validate(database)
            .map_err(|_| Status::bad_request("store", format!("invalid database {database:?}")))?;
        let (db, now) = (database.to_string(), now_ms() as i64);
        self.db
            .read(move |c| {
                let mut stmt = c
                    .prepare_cached(
                        "SELECT DISTINCT tbl FROM records WHERE db = ?1 AND (expiry IS NULL OR expiry > ?2) ORDER BY tbl",
                    )
                    .map_err(internal)?;
                let rows = stmt.query_map(params![db, now], |r| r.get(0)).map_err(internal)?;
                rows.collect::<Result<Vec<String>, _>>().map_err(internal)
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn conformance_in_memory() {
        micro_conformance::store::store(Arc::new(EmbeddedStore::open(&DataDir::memory()).unwrap())).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conformance_on_disk_and_durable_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::new(dir.path());
        let store = EmbeddedStore::open(&data).unwrap();
        micro_conformance::store::store(Arc::new(store.clone())).await;
        let t = Table::new("reopen", "t");
        store.write(&t, &Record::new("k", "v"), None).await.unwrap();
        drop(store);
        let again = EmbeddedStore::open(&data).unwrap();
        assert_eq!(again.read(&t, "k", &Query::default()).await.unwrap()[0].value, b"v");
    }

    #[tokio::test]
    async fn purge_removes_expired_rows() {
        let store = EmbeddedStore::open(&DataDir::memory()).unwrap();
        let t = Table::new("purge", "t");
        let mut r = Record::new("old", "x");
        r.expiry = Some(now_ms() - 1);
        store.write(&t, &r, None).await.unwrap();
        store.write(&t, &Record::new("new", "y"), None).await.unwrap();
        assert_eq!(store.purge().await.unwrap(), 1);
    }
}
