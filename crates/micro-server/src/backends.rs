//! The shared backends of a node: one connection (pool) per URL, handed to each part of
//! the data plane that [`Backends`] places there.

use crate::Error;
use crate::config::{Backends, Kind};
use micro::registry::Registry;
use micro_core::{blob::Blob, broker::Broker, events::Events, store::Store, sync::Sync};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;

/// The connections of one node, opened on first use.
pub(crate) struct Shared {
    backends: Backends,
    postgres: Mutex<HashMap<String, micro_postgres::Database>>,
    nats: Mutex<HashMap<String, micro_nats::Nats>>,
    redis: Mutex<HashMap<String, micro_redis::Redis>>,
}

impl Shared {
    /// Checks the configuration; connections open when a part asks for them.
    pub(crate) async fn connect(backends: &Backends) -> Result<Shared, Error> {
        Ok(Shared {
            backends: backends.clone(),
            postgres: Mutex::default(),
            nats: Mutex::default(),
            redis: Mutex::default(),
        })
    }

    async fn database(&self, url: &str) -> Result<micro_postgres::Database, Error> {
        cached(&self.postgres, url, || async { Ok(micro_postgres::Database::connect(url)?) }).await
    }

    async fn nats(&self, url: &str) -> Result<micro_nats::Nats, Error> {
        cached(&self.nats, url, || async { Ok(micro_nats::Nats::connect(url).await?) }).await
    }

    async fn redis(&self, url: &str) -> Result<micro_redis::Redis, Error> {
        cached(&self.redis, url, || async { Ok(micro_redis::Redis::connect(url)?) }).await
    }

    fn database_url(&self) -> Option<&str> {
        self.backends.database.as_ref().map(|s| s.0.as_str())
    }

    /// The shared registry (PostgreSQL), if any.
    pub(crate) async fn registry(&self) -> Result<Option<Arc<dyn Registry>>, Error> {
        let Some(url) = self.backends.registry() else { return Ok(None) };
        let store = micro_postgres::PostgresStore::open(&self.database(url).await?, "registry").await?;
        Ok(Some(Arc::new(micro::registry::SharedRegistry::new(Arc::new(store)))))
    }

    /// The store (PostgreSQL or Redis), if shared.
    pub(crate) async fn store(&self) -> Result<Option<Arc<dyn Store>>, Error> {
        let Some(url) = self.backends.store() else { return Ok(None) };
        match Kind::of(url) {
            Some(Kind::Redis) => {
                Ok(Some(Arc::new(micro_redis::RedisStore::open(&self.redis(url).await?, "store").await?)))
            }
            _ => Ok(Some(Arc::new(micro_postgres::PostgresStore::open(&self.database(url).await?, "store").await?))),
        }
    }

    /// A named store of the server's own (`auth`), in the shared database if there is one.
    pub(crate) async fn named_store(&self, name: &str) -> Result<Option<Arc<dyn Store>>, Error> {
        let Some(url) = self.database_url() else { return Ok(None) };
        Ok(Some(Arc::new(micro_postgres::PostgresStore::open(&self.database(url).await?, name).await?)))
    }

    /// Blobs, in the shared database if there is one.
    pub(crate) async fn blob(&self, max_size: u64) -> Result<Option<Arc<dyn Blob>>, Error> {
        let Some(url) = self.database_url() else { return Ok(None) };
        let blob = micro_postgres::PostgresBlob::open(&self.database(url).await?).await?.max_size(max_size);
        Ok(Some(Arc::new(blob)))
    }

    /// Locks (PostgreSQL or Redis), if shared.
    pub(crate) async fn sync(&self) -> Result<Option<Arc<dyn Sync>>, Error> {
        let Some(url) = self.backends.sync() else { return Ok(None) };
        match Kind::of(url) {
            Some(Kind::Redis) => Ok(Some(Arc::new(micro_redis::RedisSync::open(&self.redis(url).await?).await?))),
            _ => Ok(Some(Arc::new(micro_postgres::PostgresSync::open(&self.database(url).await?).await?))),
        }
    }

    /// Sets the backends' gauges before every scrape of `metrics`: the PostgreSQL pools'
    /// connections and whether NATS is connected (the connections opened so far: call it
    /// once the server has opened what it uses).
    pub(crate) async fn gauges(&self, metrics: &micro::metrics::Metrics) {
        let databases: Vec<micro_postgres::Database> = self.postgres.lock().await.values().cloned().collect();
        let nats: Vec<micro_nats::Nats> = self.nats.lock().await.values().cloned().collect();
        if !databases.is_empty() {
            let pools = metrics.gauges("micro_postgres_connections", "PostgreSQL pool connections, by state");
            metrics.on_scrape(move || {
                let (mut open, mut idle, mut waiting) = (0, 0, 0);
                for d in &databases {
                    let (o, i, w) = d.pool_status();
                    (open, idle, waiting) = (open + o, idle + i, waiting + w);
                }
                for (state, n) in [("open", open), ("idle", idle), ("waiting", waiting)] {
                    pools.get_or_create(&vec![("state".to_string(), state.to_string())]).set(n as f64);
                }
            });
        }
        if !nats.is_empty() {
            let up = metrics.gauges("micro_nats_connected", "Whether the NATS connections are up (1) or not (0)");
            metrics.on_scrape(move || {
                let connected = nats.iter().all(micro_nats::Nats::is_connected);
                up.get_or_create(&Vec::new()).set(if connected { 1.0 } else { 0.0 });
            });
        }
    }

    /// Rate-limit buckets and cached answers shared by the gateways, on the Redis the
    /// backends name (for locks, else for the store), if any.
    pub(crate) async fn edge(&self) -> Result<Option<micro_redis::RedisEdge>, Error> {
        let redis = [self.backends.sync(), self.backends.store()]
            .into_iter()
            .flatten()
            .find(|u| Kind::of(u) == Some(Kind::Redis));
        let Some(url) = redis else { return Ok(None) };
        let redis = self.redis(url).await?;
        redis.ping().await?;
        Ok(Some(micro_redis::RedisEdge::new(&redis)))
    }

    /// The config in the shared database, when nodes share a key to seal its secrets.
    pub(crate) async fn config(&self) -> Result<Option<Arc<dyn micro_core::config::Config>>, Error> {
        let Some(url) = self.database_url() else { return Ok(None) };
        let Some(key) = self.backends.config_key else {
            tracing::warn!("the config is kept per node: set MICRO_CONFIG_KEY (the same on every node) to share it");
            return Ok(None);
        };
        Ok(Some(Arc::new(micro_postgres::PostgresConfig::open(&self.database(url).await?, key).await?)))
    }

    /// Events on NATS JetStream, if configured.
    pub(crate) async fn events(
        &self,
        max_age: Option<Duration>,
        max_events: Option<u64>,
    ) -> Result<Option<Arc<dyn Events>>, Error> {
        let Some(url) = &self.backends.events else { return Ok(None) };
        let nats = self.nats(&url.0).await?;
        Ok(Some(Arc::new(micro_nats::NatsEvents::new(&nats).retention(max_age, max_events))))
    }

    /// The broker on NATS if configured, else in the shared database if there is one.
    pub(crate) async fn broker(&self) -> Result<Option<Arc<dyn Broker>>, Error> {
        if let Some(url) = &self.backends.broker {
            return Ok(Some(Arc::new(micro_nats::NatsBroker::new(&self.nats(&url.0).await?))));
        }
        let Some(url) = self.database_url() else { return Ok(None) };
        Ok(Some(Arc::new(micro_postgres::PostgresBroker::open(&self.database(url).await?).await?)))
    }
}

/// The connection for `url` in `conns`, made by `connect` the first time.
async fn cached<T, F, Fut>(conns: &Mutex<HashMap<String, T>>, url: &str, connect: F) -> Result<T, Error>
where
    T: Clone,
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    let mut conns = conns.lock().await;
    if let Some(c) = conns.get(url) {
        return Ok(c.clone());
    }
    let c = connect().await?;
    conns.insert(url.to_string(), c.clone());
    Ok(c)
}
