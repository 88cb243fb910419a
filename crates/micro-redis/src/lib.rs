//! Redis backends of Micro, for `micro server` nodes that share their state.
//!
//! | Backend | Keeps |
//! |---|---|
//! | [`RedisStore`] | records as hashes that expire natively, indexed by sorted sets per table |
//! | [`RedisSync`] | locks as keys taken with `SET NX PX` and a token, refreshed and released by compare-and-set scripts |
//!
//! All of them share one [`Redis`]: a node keeps one multiplexed connection, however
//! many backends use it, and reconnects on its own when the server restarts. A call made
//! while Redis is unreachable fails quickly with `Unavailable` (503). Every key lives
//! under `micro:`, so the data of Micro is easy to tell apart from anything else on the
//! server. The backends need one Redis server (or a primary): the scripts touch keys of a
//! table together, which Redis Cluster does not allow across slots. Run Redis with
//! `maxmemory-policy noeviction` (the default): an evicted record is lost like any other.
//!
//! ```no_run
//! use micro_core::store::{Query, Record, Store, Table};
//! use micro_redis::{Redis, RedisStore, RedisSync};
//!
//! # async fn run() -> Result<(), micro_core::Status> {
//! let redis = Redis::connect("redis://127.0.0.1:6379")?;
//! let store = RedisStore::open(&redis, "store").await?;
//! let locks = RedisSync::open(&redis).await?;
//! let table = Table::new("micro", "notes");
//! store.write(&table, &Record::new("note/1", "hello"), None).await?;
//! let notes = store.read(&table, "note/", &Query { prefix: true, ..Default::default() }).await?;
//! assert_eq!(notes[0].value, b"hello");
//! # let _ = locks;
//! # Ok(())
//! # }
//! ```

mod edge;
mod store;
mod sync;

pub use edge::{RedisEdge, Take};
pub use store::RedisStore;
pub use sync::RedisSync;

use micro_core::Status;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ErrorKind, RedisError, ServerErrorKind};
use std::time::Duration;

/// How long connecting may take before a call fails `Unavailable`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a reply may take (a large prefix read of 1 MiB values takes a while).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether a URL names a Redis server (`redis://`, or `rediss://` with TLS).
pub fn is_url(url: &str) -> bool {
    url.starts_with("redis://") || url.starts_with("rediss://")
}

/// A Redis error as a status: the server being unreachable (or busy loading, or failing
/// over) is `Unavailable`, anything else is `Internal`.
pub(crate) fn redis_error(id: &str, e: RedisError) -> Status {
    let unreachable = e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(
            e.kind(),
            ErrorKind::Server(
                ServerErrorKind::BusyLoading
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::ClusterDown
            )
        );
    if unreachable {
        Status::unavailable(id, format!("Redis is unreachable: {e}")).with_source(e)
    } else {
        Status::internal(id, format!("Redis: {e}")).with_source(e)
    }
}

/// A Redis server shared by the backends of a node: one multiplexed connection that
/// reconnects on its own. Cheap to clone.
#[derive(Clone)]
pub struct Redis {
    conn: ConnectionManager,
}

impl Redis {
    /// The server at `url` (`redis://[user:password@]host[:port][/db]`, or `rediss://` for
    /// TLS). Connects lazily: the backends opened on it connect (and fail clearly when they
    /// cannot). Call it inside a Tokio runtime.
    pub fn connect(url: &str) -> Result<Redis, Status> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Status::internal("redis", "Redis::connect must be called inside a Tokio runtime"));
        }
        if url.starts_with("rediss://") {
            // The provider rustls uses when none is installed; fails harmlessly when the
            // process already chose one.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let client =
            redis::Client::open(url).map_err(|e| Status::bad_request("redis", format!("invalid Redis URL: {e}")))?;
        // One quick retry per call: an outage fails fast, and the next call tries again.
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(200))
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT));
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| Status::internal("redis", format!("a Redis connection manager: {e}")))?;
        Ok(Redis { conn })
    }

    /// Checks that the server answers; `Unavailable` when it does not.
    pub async fn ping(&self) -> Result<(), Status> {
        let _: String = redis::cmd("PING").query_async(&mut self.conn()).await.map_err(|e| redis_error("redis", e))?;
        Ok(())
    }

    /// A handle on the shared connection (cheap: the manager is reference-counted).
    pub(crate) fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }
}

/// The server for tests (`MICRO_TEST_REDIS`), or a notice and `None`.
#[cfg(test)]
pub(crate) fn test_url() -> Option<String> {
    micro_conformance::backend_url("MICRO_TEST_REDIS")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use micro_core::Code;

    #[test]
    fn urls() {
        assert!(is_url("redis://127.0.0.1:6379"));
        assert!(is_url("rediss://cache.example.com"));
        assert!(!is_url("postgres://x"));
        assert!(!is_url("redis.example.com:6379"));
    }

    #[test]
    fn connect_outside_a_runtime_is_an_error_not_a_panic() {
        let err = Redis::connect("redis://127.0.0.1:6379").err().expect("no runtime");
        assert_eq!(err.code(), Code::Internal, "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unreachable_server_is_unavailable_quickly() {
        let started = std::time::Instant::now();
        for url in ["redis://127.0.0.1:1", "rediss://127.0.0.1:1"] {
            let redis = Redis::connect(url).expect("connects lazily");
            let err = redis.ping().await.expect_err("no server there");
            assert_eq!(err.code(), Code::Unavailable, "{url}: {err}");
            let err = RedisStore::open(&redis, "store").await.err().expect("no server there");
            assert_eq!(err.code(), Code::Unavailable, "{url}: {err}");
            let err = RedisSync::open(&redis).await.err().expect("no server there");
            assert_eq!(err.code(), Code::Unavailable, "{url}: {err}");
        }
        let err = RedisStore::connect("redis://127.0.0.1:1").await.err().expect("no server there");
        assert_eq!(err.code(), Code::Unavailable, "{err}");
        assert!(err.detail().contains("unreachable"), "a clear message: {err}");
        let err = RedisSync::connect("redis://127.0.0.1:1").await.err().expect("no server there");
        assert_eq!(err.code(), Code::Unavailable, "{err}");
        assert!(started.elapsed() < Duration::from_secs(3), "fails fast: {:?}", started.elapsed());
        let err = Redis::connect("http://[bad").err().expect("a bad URL");
        assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reconnects_after_the_connection_is_killed() {
        let Some(url) = test_url() else { return };
        let redis = Redis::connect(&url).unwrap();
        redis.ping().await.unwrap();
        let id: i64 = redis::cmd("CLIENT").arg("ID").query_async(&mut redis.conn()).await.unwrap();
        // Kill only our own connection (others may share this server), from another one.
        let killer = Redis::connect(&url).unwrap();
        let _: i64 = redis::cmd("CLIENT").arg("KILL").arg("ID").arg(id).query_async(&mut killer.conn()).await.unwrap();
        // The next call may see the broken connection (as Unavailable); later ones work.
        if let Err(e) = redis.ping().await {
            assert_eq!(e.code(), Code::Unavailable, "{e}");
        }
        let back = micro_conformance::eventually(Duration::from_secs(5), || async { redis.ping().await.is_ok() }).await;
        assert!(back, "the connection manager reconnects on its own");
        let again: i64 = redis::cmd("CLIENT").arg("ID").query_async(&mut redis.conn()).await.unwrap();
        assert_ne!(again, id, "a new connection");
    }
}
