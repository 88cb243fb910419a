//! What the gateways of a cluster share through Redis: rate-limit buckets and cached
//! answers.
//!
//! A bucket is one key, `micro:rl:<key>`, holding its theoretical arrival time (GCRA, the
//! algorithm governor uses on one node) in microseconds of the server's clock; one script
//! reads and advances it, so every node counts against the same bucket and clocks of the
//! nodes do not matter. A cached answer is one key, `micro:cache:<key>`, expiring with
//! its TTL.

use crate::{Redis, redis_error};
use micro_core::Status;
use redis::Script;
use std::sync::LazyLock;
use std::time::Duration;

const ID: &str = "api";

/// Takes one cell from the bucket KEYS[1]: ARGV[1] is the emission interval (µs per
/// cell), ARGV[2] the burst. Returns {1, cells left, 0} when it passed, {0, 0, µs until a
/// cell is free} when not.
static TAKE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local period = tonumber(ARGV[1])
local limit = period * tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local next = tat + period
local ahead = next - now
if ahead > limit then
  return {0, 0, ahead - limit}
end
redis.call('SET', KEYS[1], string.format('%d', next), 'PX', math.ceil(ahead / 1000) + 1)
return {1, math.floor((limit - ahead) / period), 0}
"#,
    )
});

/// Keeps ARGV[1] under KEYS[1] for ARGV[2] ms, unless the bytes kept under the counter
/// KEYS[2] (reset a day after it starts) would pass ARGV[4] with ARGV[3] more; 1 when kept.
static PUT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local size = tonumber(ARGV[3])
local used = redis.call('INCRBY', KEYS[2], size)
if used == size then redis.call('PEXPIRE', KEYS[2], 86400000) end
if used > tonumber(ARGV[4]) then
  redis.call('DECRBY', KEYS[2], size)
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"#,
    )
});

/// The outcome of taking a cell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Take {
    /// Whether the request passed.
    pub allowed: bool,
    /// Cells left after it (0 when refused).
    pub remaining: u32,
    /// How long until a cell is free (zero when it passed).
    pub retry_after: Duration,
}

/// Rate-limit buckets and cached answers in Redis, shared by the gateways of a cluster.
/// Cheap to clone.
#[derive(Clone)]
pub struct RedisEdge {
    redis: Redis,
}

impl RedisEdge {
    /// The edge's keys on `redis`.
    pub fn new(redis: &Redis) -> RedisEdge {
        RedisEdge { redis: redis.clone() }
    }

    /// Takes a cell from bucket `key`, which refills one cell every `period`, holding
    /// `burst` at most.
    pub async fn take(&self, key: &str, period: Duration, burst: u32) -> Result<Take, Status> {
        let period_us = (period.as_micros() as u64).max(1);
        let (allowed, remaining, wait_us): (i64, i64, i64) = TAKE
            .key(format!("micro:rl:{key}"))
            .arg(period_us)
            .arg(burst.max(1))
            .invoke_async(&mut self.redis.conn())
            .await
            .map_err(|e| redis_error(ID, e))?;
        Ok(Take {
            allowed: allowed == 1,
            remaining: u32::try_from(remaining.max(0)).unwrap_or(u32::MAX),
            retry_after: Duration::from_micros(wait_us.max(0) as u64),
        })
    }

    /// The cached answer `key`, if one is kept.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, Status> {
        redis::cmd("GET")
            .arg(format!("micro:cache:{key}"))
            .query_async(&mut self.redis.conn())
            .await
            .map_err(|e| redis_error(ID, e))
    }

    /// Keeps `value` as the cached answer `key` for `ttl`, counted against `budget`
    /// bytes a day for `owner` (a namespace); whether it was kept (not over budget).
    pub async fn put(&self, key: &str, value: &[u8], ttl: Duration, owner: &str, budget: u64) -> Result<bool, Status> {
        let kept: i64 = PUT
            .key(format!("micro:cache:{key}"))
            .key(format!("micro:cache-bytes:{owner}"))
            .arg(value)
            .arg((ttl.as_millis() as u64).max(1))
            .arg(value.len())
            .arg(budget)
            .invoke_async(&mut self.redis.conn())
            .await
            .map_err(|e| redis_error(ID, e))?;
        Ok(kept == 1)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_bucket_for_every_client_and_answers_expire() {
        let Some(url) = crate::test_url() else { return };
        let a = RedisEdge::new(&Redis::connect(&url).unwrap());
        let b = RedisEdge::new(&Redis::connect(&url).unwrap());
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let key = format!("test:{}:{nanos}", std::process::id());
        // Three a minute, burst three: the two "nodes" share them.
        let period = Duration::from_secs(20);
        let mut left = Vec::new();
        for edge in [&a, &b, &a] {
            let t = edge.take(&key, period, 3).await.unwrap();
            assert!(t.allowed, "{t:?}");
            left.push(t.remaining);
        }
        assert_eq!(left, vec![2, 1, 0]);
        let refused = b.take(&key, period, 3).await.unwrap();
        assert!(!refused.allowed);
        assert!(refused.retry_after > Duration::from_secs(15) && refused.retry_after <= period, "{refused:?}");
        // A fast bucket refills.
        let fast = format!("{key}:fast");
        assert!(a.take(&fast, Duration::from_millis(50), 1).await.unwrap().allowed);
        assert!(!b.take(&fast, Duration::from_millis(50), 1).await.unwrap().allowed);
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert!(b.take(&fast, Duration::from_millis(50), 1).await.unwrap().allowed);

        assert!(a.put(&key, b"answer", Duration::from_millis(200), &key, 10).await.unwrap());
        assert_eq!(b.get(&key).await.unwrap().as_deref(), Some(&b"answer"[..]));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(b.get(&key).await.unwrap(), None);
        // The owner's budget (10 bytes) is spent: nothing more is kept.
        assert!(!a.put(&format!("{key}:2"), b"answer", Duration::from_secs(5), &key, 10).await.unwrap());
        assert_eq!(b.get(&format!("{key}:2")).await.unwrap(), None);
    }
}
