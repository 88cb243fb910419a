//! Locks in PostgreSQL: one lease row per lock, taken with a conditional upsert. Lease
//! times are the database's clock, so nodes with skewed clocks still agree.

use crate::{Database, db_error};
use micro_core::sync::{Lock, Sync};
use micro_core::{Code, Status};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

const ID: &str = "sync";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS micro_locks (
    ns TEXT NOT NULL,
    id TEXT NOT NULL,
    token TEXT NOT NULL,
    expires BIGINT NOT NULL,
    PRIMARY KEY (ns, id)
);
";

/// The database's clock in Unix milliseconds, as SQL.
const NOW: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

/// How often a waiter looks again (another node may release at any time).
const POLL: Duration = Duration::from_millis(50);

/// Locks in PostgreSQL. Cheap to clone.
#[derive(Clone)]
pub struct PostgresSync {
    db: Database,
    released: Arc<Notify>,
}

impl PostgresSync {
    /// Connects to the database at `url` and creates the lock table when missing.
    pub async fn connect(url: &str) -> Result<PostgresSync, Status> {
        PostgresSync::open(&Database::connect(url)?).await
    }

    /// Locks in `db`, creating the lock table when missing.
    pub async fn open(db: &Database) -> Result<PostgresSync, Status> {
        db.migrate(ID, SCHEMA).await?;
        Ok(PostgresSync { db: db.clone(), released: Arc::new(Notify::new()) })
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, Status> {
        self.db.client(ID).await
    }

    async fn try_lock(&self, ns: &str, id: &str, token: &str, ttl: Duration) -> Result<bool, Status> {
        let c = self.client().await?;
        let sql = format!(
            "INSERT INTO micro_locks (ns, id, token, expires) VALUES ($1, $2, $3, {NOW} + $4) \
             ON CONFLICT (ns, id) DO UPDATE SET token = excluded.token, expires = excluded.expires \
             WHERE micro_locks.expires <= {NOW}"
        );
        let ttl = ttl.as_millis() as i64;
        let n = c.execute(&sql, &[&ns, &id, &token, &ttl]).await.map_err(|e| db_error(ID, e))?;
        Ok(n == 1)
    }
}

fn not_held(lock: &Lock) -> Status {
    Status::new(Code::FailedPrecondition, ID, format!("lock {:?} is no longer held (its TTL ran out?)", lock.id))
}

#[async_trait::async_trait]
impl Sync for PostgresSync {
    async fn lock(&self, namespace: &str, id: &str, ttl: Duration, wait: Duration) -> Result<Lock, Status> {
        micro_core::sync::acquire(namespace, id, ttl, wait, &self.released, POLL, |token| async move {
            self.try_lock(namespace, id, &token, ttl).await
        })
        .await
    }

    async fn refresh(&self, namespace: &str, lock: &Lock) -> Result<(), Status> {
        let c = self.client().await?;
        let sql = format!(
            "UPDATE micro_locks SET expires = {NOW} + $1 WHERE ns = $2 AND id = $3 AND token = $4 AND expires > {NOW}"
        );
        let ttl = lock.ttl.as_millis() as i64;
        let n = c.execute(&sql, &[&ttl, &namespace, &lock.id, &lock.token]).await.map_err(|e| db_error(ID, e))?;
        if n == 1 { Ok(()) } else { Err(not_held(lock)) }
    }

    async fn unlock(&self, namespace: &str, lock: &Lock) -> Result<(), Status> {
        let c = self.client().await?;
        let sql = format!("DELETE FROM micro_locks WHERE ns = $1 AND id = $2 AND token = $3 AND expires > {NOW}");
        let n = c.execute(&sql, &[&namespace, &lock.id, &lock.token]).await.map_err(|e| db_error(ID, e))?;
        self.released.notify_waiters();
        if n == 1 { Ok(()) } else { Err(not_held(lock)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conformance() {
        let Some(url) = crate::test_url() else { return };
        let sync = PostgresSync::connect(&url).await.expect("connects");
        micro_conformance::sync::sync(Arc::new(sync.clone())).await;
        // Two nodes: a lock held through one is held for the other.
        let other = PostgresSync::connect(&url).await.expect("a second node");
        let ns = format!("pg-sync-{}", std::process::id());
        let held = sync.lock(&ns, "shared", Duration::from_secs(5), Duration::ZERO).await.unwrap();
        let err = other.lock(&ns, "shared", Duration::from_secs(5), Duration::from_millis(100)).await.unwrap_err();
        assert_eq!(err.code(), Code::DeadlineExceeded);
        sync.unlock(&ns, &held).await.unwrap();
        let taken = other.lock(&ns, "shared", Duration::from_secs(5), Duration::from_secs(1)).await.unwrap();
        other.unlock(&ns, &taken).await.unwrap();
    }
}
