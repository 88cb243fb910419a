//! Locks in Redis: one key per lock, `micro:sync:lock:<namespace>:<id>` (a namespace
//! holds no `:`), whose value is the holder's token. It is taken with `SET NX PX`, so the
//! lease is timed by the server's clock and nodes with skewed clocks still agree;
//! refreshing and releasing compare the token first, in one script, so a holder whose
//! lease ran out cannot touch the lock someone else took since.

use crate::{Redis, redis_error};
use micro_core::sync::{Lock, Sync};
use micro_core::{Code, Status};
use redis::Script;
use std::sync::{Arc, LazyLock};
use std::time::Duration;
use tokio::sync::Notify;

const ID: &str = "sync";

/// How often a waiter looks again (another node may release at any time).
const POLL: Duration = Duration::from_millis(50);

/// Extends the lease of KEYS[1] to ARGV[2] ms if ARGV[1] still holds it; 1 when it did.
static REFRESH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"#,
    )
});

/// Deletes KEYS[1] if ARGV[1] still holds it; 1 when it did.
static UNLOCK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#,
    )
});

/// Locks in Redis: the key `micro:sync:lock:<namespace>:<id>` holds the holder's token and
/// expires with the lease, timed by the server. Cheap to clone.
#[derive(Clone)]
pub struct RedisSync {
    redis: Redis,
    released: Arc<Notify>,
}

impl RedisSync {
    /// Connects to the server at `url` (`redis://host:port`) and checks that it answers.
    pub async fn connect(url: &str) -> Result<RedisSync, Status> {
        RedisSync::open(&Redis::connect(url)?).await
    }

    /// Locks on `redis`; checks that the server answers (`Unavailable` when it does not).
    pub async fn open(redis: &Redis) -> Result<RedisSync, Status> {
        redis.ping().await.map_err(|e| Status::new(e.code(), ID, e.detail()))?;
        Ok(RedisSync { redis: redis.clone(), released: Arc::new(Notify::new()) })
    }

    async fn try_lock(&self, key: &str, token: &str, ttl: Duration) -> Result<bool, Status> {
        let taken: Option<String> = redis::cmd("SET")
            .arg(key)
            .arg(token)
            .arg("NX")
            .arg("PX")
            .arg(millis(ttl))
            .query_async(&mut self.redis.conn())
            .await
            .map_err(|e| redis_error(ID, e))?;
        Ok(taken.is_some())
    }
}

/// The Redis key of lock `id` in `namespace`.
fn lock_key(namespace: &str, id: &str) -> String {
    format!("micro:sync:lock:{namespace}:{id}")
}

/// A TTL in whole milliseconds, at least 1 (`PX 0` is an error).
fn millis(ttl: Duration) -> u64 {
    (ttl.as_millis() as u64).max(1)
}

fn not_held(lock: &Lock) -> Status {
    Status::new(Code::FailedPrecondition, ID, format!("lock {:?} is no longer held (its TTL ran out?)", lock.id))
}

#[async_trait::async_trait]
impl Sync for RedisSync {
    async fn lock(&self, namespace: &str, id: &str, ttl: Duration, wait: Duration) -> Result<Lock, Status> {
        let key = lock_key(namespace, id);
        let key = &key;
        micro_core::sync::acquire(namespace, id, ttl, wait, &self.released, POLL, |token| async move {
            self.try_lock(key, &token, ttl).await
        })
        .await
    }

    async fn refresh(&self, namespace: &str, lock: &Lock) -> Result<(), Status> {
        micro_core::namespace::validate(namespace)?;
        let n: i64 = REFRESH
            .key(lock_key(namespace, &lock.id))
            .arg(&lock.token)
            .arg(millis(lock.ttl))
            .invoke_async(&mut self.redis.conn())
            .await
            .map_err(|e| redis_error(ID, e))?;
        if n == 1 { Ok(()) } else { Err(not_held(lock)) }
    }

    async fn unlock(&self, namespace: &str, lock: &Lock) -> Result<(), Status> {
        micro_core::namespace::validate(namespace)?;
        let n: i64 = UNLOCK
            .key(lock_key(namespace, &lock.id))
            .arg(&lock.token)
            .invoke_async(&mut self.redis.conn())
            .await
            .map_err(|e| redis_error(ID, e))?;
        self.released.notify_waiters();
        if n == 1 { Ok(()) } else { Err(not_held(lock)) }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conformance() {
        let Some(url) = crate::test_url() else { return };
        let sync = RedisSync::connect(&url).await.expect("connects");
        micro_conformance::sync::sync(Arc::new(sync.clone())).await;
        // Two nodes: a lock held through one is held for the other.
        let other = RedisSync::connect(&url).await.expect("a second node");
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let ns = format!("redis-sync-{}", t % 1_000_000_000_000);
        let held = sync.lock(&ns, "shared", Duration::from_secs(5), Duration::ZERO).await.unwrap();
        let err = other.lock(&ns, "shared", Duration::from_secs(5), Duration::from_millis(100)).await.unwrap_err();
        assert_eq!(err.code(), Code::DeadlineExceeded);
        // The lease is the server's: the key expires by itself.
        let pttl: i64 =
            redis::cmd("PTTL").arg(lock_key(&ns, "shared")).query_async(&mut sync.redis.conn()).await.unwrap();
        assert!(pttl > 0 && pttl <= 5000, "{pttl}");
        sync.unlock(&ns, &held).await.unwrap();
        let taken = other.lock(&ns, "shared", Duration::from_secs(5), Duration::from_secs(1)).await.unwrap();
        // The first node's stale token can neither refresh nor release the new holder's lock.
        assert_eq!(sync.refresh(&ns, &held).await.unwrap_err().code(), Code::FailedPrecondition);
        assert_eq!(sync.unlock(&ns, &held).await.unwrap_err().code(), Code::FailedPrecondition);
        other.unlock(&ns, &taken).await.unwrap();
        let n: i64 =
            redis::cmd("EXISTS").arg(lock_key(&ns, "shared")).query_async(&mut sync.redis.conn()).await.unwrap();
        assert_eq!(n, 0, "an unlocked lock leaves no key behind");
    }
}
