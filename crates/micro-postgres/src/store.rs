//! The store in PostgreSQL: one keyed table for every database and table.

use crate::{Database, db_error, like_escape};
use micro_core::Status;
use micro_core::store::{Order, Query, Record, Store, Table, now_ms, validate_key, validate_record};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio_postgres::types::ToSql;

const ID: &str = "store";

/// The table `name` (with its expiry index).
fn schema(name: &str) -> String {
    format!(
        r#"
CREATE TABLE IF NOT EXISTS {name} (
    db TEXT NOT NULL,
    tbl TEXT NOT NULL,
    key TEXT COLLATE "C" NOT NULL,
    value BYTEA NOT NULL,
    metadata TEXT NOT NULL DEFAULT '{{}}',
    expiry BIGINT,
    PRIMARY KEY (db, tbl, key)
);
CREATE INDEX IF NOT EXISTS {name}_expiry ON {name} (expiry) WHERE expiry IS NOT NULL;
"#
    )
}

/// How often expired records are purged.
const PURGE_EVERY: Duration = Duration::from_secs(10);

/// The store in PostgreSQL. Cheap to clone.
#[derive(Clone)]
pub struct PostgresStore {
    db: Database,
    /// The SQL table: `micro_store`, or `micro_<name>` for a separate store.
    name: std::sync::Arc<str>,
}

impl PostgresStore {
    /// Connects to the database at `url` (`postgres://user@host:port/db`), creates the
    /// table when missing, and purges expired records in the background.
    pub async fn connect(url: &str) -> Result<PostgresStore, Status> {
        PostgresStore::open(&Database::connect(url)?, "store").await
    }

    /// The store in the table `micro_<name>` of `db` (`store` for the store service; a
    /// separate one for example for auth data, which must not be reachable through the
    /// store service). `name` is lowercase letters, digits and `_`.
    pub async fn open(db: &Database, name: &str) -> Result<PostgresStore, Status> {
        micro_core::store::validate_store_name(name)?;
        let store = PostgresStore { db: db.clone(), name: format!("micro_{name}").into() };
        db.migrate(ID, &schema(&store.name)).await?;
        // Purges until the pool is gone.
        let weak = db.pool.weak();
        let name = store.name.clone();
        let config = db.config.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(PURGE_EVERY).await;
                let Some(pool) = weak.upgrade() else { return };
                if let Err(e) =
                    (PostgresStore { db: Database { pool, config: config.clone() }, name: name.clone() }).purge().await
                {
                    tracing::warn!(error = %e, "purging expired records failed");
                }
            }
        });
        Ok(store)
    }

    /// Deletes expired records now; returns how many.
    pub async fn purge(&self) -> Result<u64, Status> {
        let c = self.client().await?;
        let sql = format!("DELETE FROM {} WHERE expiry IS NOT NULL AND expiry <= $1", self.name);
        c.execute(&sql, &[&(now_ms() as i64)]).await.map_err(|e| db_error(ID, e))
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, Status> {
        self.db.client(ID).await
    }

    /// The live rows of `columns` matching a read or list.
    async fn select(
        &self,
        columns: &str,
        table: &Table,
        key: &str,
        query: &Query,
    ) -> Result<Vec<tokio_postgres::Row>, Status> {
        let (cond, arg) = matcher(key, query);
        let sql = format!(
            "SELECT {columns} FROM {} WHERE db = $1 AND tbl = $2 AND {cond} \
             AND (expiry IS NULL OR expiry > $4) {}",
            self.name,
            order_limit(query)
        );
        let now = now_ms() as i64;
        let params: [&(dyn ToSql + Sync); 4] = [&table.database, &table.table, &arg, &now];
        let c = self.client().await?;
        let stmt = c.prepare_cached(&sql).await.map_err(|e| db_error(ID, e))?;
        c.query(&stmt, &params).await.map_err(|e| db_error(ID, e))
    }
}

/// The condition on the key (parameter $3) and its argument.
fn matcher(key: &str, q: &Query) -> (&'static str, String) {
    let k = like_escape(key);
    match (q.prefix, q.suffix) {
        (false, false) if key.is_empty() => ("($3::text IS NULL OR TRUE)", String::new()),
        (false, false) => ("key = $3", key.to_string()),
        (true, false) => ("key LIKE $3", format!("{k}%")),
        (false, true) => ("key LIKE $3", format!("%{k}")),
        // Both: the key must start and end with it.
        (true, true) => ("key LIKE $3", format!("{k}%{k}")),
    }
}

fn order_limit(q: &Query) -> String {
    let order = match q.order {
        Order::Asc => "ASC",
        Order::Desc => "DESC",
    };
    let limit = if q.limit == 0 { "ALL".to_string() } else { q.limit.to_string() };
    format!("ORDER BY key {order} LIMIT {limit} OFFSET {}", q.offset)
}

#[async_trait::async_trait]
impl Store for PostgresStore {
    async fn read(&self, table: &Table, key: &str, query: &Query) -> Result<Vec<Record>, Status> {
        let exact = micro_core::store::check_query(table, key, query)?;
        let rows = self.select("key, value, metadata, expiry", table, key, query).await?;
        let records: Vec<Record> = rows
            .iter()
            .map(|r| {
                let metadata: String = r.get(2);
                Record {
                    key: r.get(0),
                    value: r.get(1),
                    metadata: serde_json::from_str::<BTreeMap<String, String>>(&metadata).unwrap_or_default(),
                    expiry: r.get::<_, Option<i64>>(3).map(|e| e as u64),
                }
            })
            .collect();
        if exact && records.is_empty() {
            return Err(micro_core::store::not_found(key, table));
        }
        Ok(records)
    }

    async fn write(&self, table: &Table, record: &Record, ttl: Option<Duration>) -> Result<(), Status> {
        table.validate()?;
        validate_record(record)?;
        let expiry = micro_core::store::expiry_of(record, ttl).map(|e| e as i64);
        let metadata = serde_json::to_string(&record.metadata).map_err(|e| Status::internal(ID, e.to_string()))?;
        let c = self.client().await?;
        let sql = format!(
            "INSERT INTO {} (db, tbl, key, value, metadata, expiry) VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (db, tbl, key) DO UPDATE SET value = excluded.value, \
             metadata = excluded.metadata, expiry = excluded.expiry",
            self.name
        );
        let stmt = c.prepare_cached(&sql).await.map_err(|e| db_error(ID, e))?;
        c.execute(&stmt, &[&table.database, &table.table, &record.key, &record.value, &metadata, &expiry])
            .await
            .map_err(|e| db_error(ID, e))?;
        Ok(())
    }

    async fn delete(&self, table: &Table, key: &str) -> Result<(), Status> {
        table.validate()?;
        validate_key(key)?;
        let c = self.client().await?;
        // Deleted only counts when the record was live (an expired one is already gone).
        let sql = format!(
            "DELETE FROM {} WHERE db = $1 AND tbl = $2 AND key = $3 RETURNING (expiry IS NULL OR expiry > $4)",
            self.name
        );
        let stmt = c.prepare_cached(&sql).await.map_err(|e| db_error(ID, e))?;
        let now = now_ms() as i64;
        let rows = c.query(&stmt, &[&table.database, &table.table, &key, &now]).await.map_err(|e| db_error(ID, e))?;
        if rows.first().is_some_and(|r| r.get::<_, bool>(0)) {
            Ok(())
        } else {
            Err(micro_core::store::not_found(key, table))
        }
    }

    async fn list(&self, table: &Table, key: &str, query: &Query) -> Result<Vec<String>, Status> {
        table.validate()?;
        if !key.is_empty() {
            validate_key(key)?;
        }
        let rows = self.select("key", table, key, query).await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    async fn databases(&self) -> Result<Vec<String>, Status> {
        let c = self.client().await?;
        let sql = format!("SELECT DISTINCT db FROM {} WHERE expiry IS NULL OR expiry > $1 ORDER BY db", self.name);
        let rows = c.query(&sql, &[&(now_ms() as i64)]).await.map_err(|e| db_error(ID, e))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    async fn size(&self, database: &str) -> Result<u64, Status> {
        let c = self.client().await?;
        let sql = format!(
            "SELECT COALESCE(SUM(octet_length(key) + octet_length(value) + octet_length(metadata)), 0)::BIGINT FROM {} \
             WHERE db = $1 AND (expiry IS NULL OR expiry > $2)",
            self.name
        );
        let row = c.query_one(&sql, &[&database, &(now_ms() as i64)]).await.map_err(|e| db_error(ID, e))?;
        Ok(row.get::<_, i64>(0).max(0) as u64)
    }

    async fn tables(&self, database: &str) -> Result<Vec<String>, Status> {
        micro_core::namespace::validate(database)
            .map_err(|_| Status::bad_request(ID, format!("invalid database {database:?}")))?;
        let c = self.client().await?;
        let sql = format!(
            "SELECT DISTINCT tbl FROM {} WHERE db = $1 AND (expiry IS NULL OR expiry > $2) ORDER BY tbl",
            self.name
        );
        let rows = c.query(&sql, &[&database, &(now_ms() as i64)]).await.map_err(|e| db_error(ID, e))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn url() -> Option<String> {
        crate::test_url()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conformance() {
        let Some(url) = url() else { return };
        let store = PostgresStore::connect(&url).await.expect("connects");
        micro_conformance::store::store(Arc::new(store.clone())).await;
        // Two nodes on one database see each other's writes.
        let other = PostgresStore::connect(&url).await.expect("a second node connects");
        let t = Table::new("pg-shared", "t");
        store.write(&t, &Record::new("k", b"from a".to_vec()), None).await.unwrap();
        assert_eq!(other.read(&t, "k", &Query::default()).await.unwrap()[0].value, b"from a");
        other.delete(&t, "k").await.unwrap();
        // A named store is separate.
        let db = Database::connect(&url).unwrap();
        let auth = PostgresStore::open(&db, "test_separate").await.expect("a named store");
        store.write(&t, &Record::new("k", b"x".to_vec()), None).await.unwrap();
        assert!(auth.list(&t, "", &Query::default()).await.unwrap().is_empty());
        assert!(PostgresStore::open(&db, "Bad; DROP").await.is_err());
    }

    #[tokio::test]
    async fn an_unreachable_database_is_unavailable() {
        let err = PostgresStore::connect("postgres://nobody@127.0.0.1:1/none").await.err().expect("no database there");
        assert_eq!(err.code(), micro_core::Code::Unavailable, "{err}");
        let err = PostgresStore::connect("postgres://[bad").await.err().expect("a bad URL");
        assert_eq!(err.code(), micro_core::Code::InvalidArgument, "{err}");
    }

    #[test]
    fn patterns_are_literal() {
        assert_eq!(like_escape("a%b_c\\"), "a\\%b\\_c\\\\");
    }
}
