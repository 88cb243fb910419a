//! Embedded locks: leases in SQLite (`sync.db`), so they outlive a server restart.

use crate::DataDir;
use crate::db::{Db, internal};
use micro_core::store::now_ms;
use micro_core::sync::{Lock, Sync};
use micro_core::{Code, Status};
use rusqlite::params;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS locks (
    ns TEXT NOT NULL,
    id TEXT NOT NULL,
    token TEXT NOT NULL,
    expires INTEGER NOT NULL,
    PRIMARY KEY (ns, id)
) WITHOUT ROWID;
";

/// How often a waiter looks again when nobody released the lock (a TTL may have run out).
const POLL: Duration = Duration::from_millis(50);

/// Embedded locks. Cheap to clone.
#[derive(Clone)]
pub struct EmbeddedSync {
    db: Db,
    released: Arc<Notify>,
}

impl EmbeddedSync {
    /// Opens the lock table in `dir`.
    pub fn open(dir: &DataDir) -> Result<EmbeddedSync, Status> {
        Ok(EmbeddedSync { db: dir.open("sync", SCHEMA)?, released: Arc::new(Notify::new()) })
    }

    async fn try_lock(&self, ns: &str, id: &str, token: &str, ttl: Duration) -> Result<bool, Status> {
        let (ns, id, token) = (ns.to_string(), id.to_string(), token.to_string());
        let now = now_ms() as i64;
        let expires = now.saturating_add(ttl.as_millis() as i64);
        self.db
            .write(move |c| {
                let n = c
                    .prepare_cached(
                        "INSERT INTO locks (ns, id, token, expires) VALUES (?1, ?2, ?3, ?4) \
                         ON CONFLICT (ns, id) DO UPDATE SET token = excluded.token, expires = excluded.expires \
                         WHERE locks.expires <= ?5",
                    )
                    .and_then(|mut s| s.execute(params![ns, id, token, expires, now]))
                    .map_err(internal)?;
                Ok(n == 1)
            })
            .await
    }
}

fn not_held(lock: &Lock) -> Status {
    Status::new(Code::FailedPrecondition, "sync", format!("lock {:?} is no longer held (its TTL ran out?)", lock.id))
}

#[async_trait::async_trait]
impl Sync for EmbeddedSync {
    async fn lock(&self, namespace: &str, id: &str, ttl: Duration, wait: Duration) -> Result<Lock, Status> {
        micro_core::sync::acquire(namespace, id, ttl, wait, &self.released, POLL, |token| async move {
            self.try_lock(namespace, id, &token, ttl).await
        })
        .await
    }

    async fn refresh(&self, namespace: &str, lock: &Lock) -> Result<(), Status> {
        let (ns, id, token) = (namespace.to_string(), lock.id.clone(), lock.token.clone());
        let now = now_ms() as i64;
        let expires = now.saturating_add(lock.ttl.as_millis() as i64);
        let n = self
            .db
            .write(move |c| {
                c.execute(
                    "UPDATE locks SET expires = ?1 WHERE ns = ?2 AND id = ?3 AND token = ?4 AND expires > ?5",
                    params![expires, ns, id, token, now],
                )
                .map_err(internal)
            })
            .await?;
        if n == 1 { Ok(()) } else { Err(not_held(lock)) }
    }

    async fn unlock(&self, namespace: &str, lock: &Lock) -> Result<(), Status> {
        let (ns, id, token) = (namespace.to_string(), lock.id.clone(), lock.token.clone());
        let now = now_ms() as i64;
        let n = self
            .db
            .write(move |c| {
                c.execute(
                    "DELETE FROM locks WHERE ns = ?1 AND id = ?2 AND token = ?3 AND expires > ?4",
                    params![ns, id, token, now],
                )
                .map_err(internal)
            })
            .await?;
        self.released.notify_waiters();
        if n == 1 { Ok(()) } else { Err(not_held(lock)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conformance_in_memory_and_on_disk() {
        micro_conformance::sync::sync(Arc::new(EmbeddedSync::open(&DataDir::memory()).unwrap())).await;
        let dir = tempfile::tempdir().unwrap();
        micro_conformance::sync::sync(Arc::new(EmbeddedSync::open(&DataDir::new(dir.path())).unwrap())).await;
    }
}
