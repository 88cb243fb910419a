//! PostgreSQL backends of Micro, for `micro server` nodes that share their state.
//!
//! [`PostgresConfig`] keeps one config document per namespace, its secrets sealed under
//! the server key every node must share, and tells every node's watchers about changes
//! through `LISTEN`/`NOTIFY`.
//! [`PostgresBlob`] keeps objects as versioned chunk rows.
//! [`PostgresSync`] keeps locks as lease rows timed by the database's clock.
//! [`PostgresStore`] keeps every record in one keyed table (`micro_store`, primary key
//! database + table + key, keys in the `C` collation so order is bytewise like the
//! embedded store's).
//! [`PostgresBroker`] carries the ephemeral publish/subscribe broker between nodes that
//! share no NATS: messages in a short-lived table, announced with `NOTIFY`, queue groups
//! decided by claim rows. All of them share one [`Database`]: a node keeps one pool of
//! connections, however many backends use it. A call made while the database is
//! unreachable fails at once with `Unavailable` (503) and the pool reconnects on its own
//! when the database is back.

mod blob;
mod broker;
mod config;
mod store;
mod sync;

pub use blob::PostgresBlob;
pub use broker::PostgresBroker;
pub use config::PostgresConfig;
pub use store::PostgresStore;
pub use sync::PostgresSync;

use futures::StreamExt;
use micro_core::{Code, Status};
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;
use tokio_postgres::{AsyncMessage, Notification};

/// The messages of a connection listening to a channel ([`Database::listen`]).
pub type Messages = micro_core::BoxStream<Result<tokio_postgres::AsyncMessage, tokio_postgres::Error>>;

/// Whether a URL names a PostgreSQL database.
pub fn is_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// A database error as a status: the database being unreachable (or restarting) is
/// `Unavailable`, a bad statement is `Internal`.
pub fn db_error(id: &str, e: tokio_postgres::Error) -> Status {
    // Classes 08 (connection exception), 53 (insufficient resources: too many
    // connections) and 57 (operator intervention: shutting down, starting up) are the
    // database being away, not a bad statement.
    let away = e.as_db_error().is_some_and(|d| ["08", "53", "57"].iter().any(|c| d.code().code().starts_with(c)));
    if away || e.is_closed() || e.as_db_error().is_none() {
        Status::new(Code::Unavailable, id, format!("the database is unreachable: {e}")).with_source(e)
    } else {
        Status::internal(id, format!("database: {e}")).with_source(e)
    }
}

/// A pool error as a status (every one of them means no connection now).
pub(crate) fn pool_error(id: &str, e: deadpool_postgres::PoolError) -> Status {
    match e {
        deadpool_postgres::PoolError::Backend(e) => db_error(id, e),
        e => Status::new(Code::Unavailable, id, format!("the database is unreachable: {e}")).with_source(e),
    }
}

/// A PostgreSQL database shared by the backends of a node: one pool (a few connections,
/// short timeouts so an outage fails fast). Cheap to clone.
#[derive(Clone)]
pub struct Database {
    pool: deadpool_postgres::Pool,
    /// Where the pool connects, for the connections kept out of it (like a listener).
    config: std::sync::Arc<tokio_postgres::Config>,
}

impl Database {
    /// The database at `url` (`postgres://user@host:port/db`). Connects lazily: the
    /// backends opened on it connect (and fail clearly when they cannot).
    pub fn connect(url: &str) -> Result<Database, Status> {
        let config: tokio_postgres::Config =
            url.parse().map_err(|e| Status::bad_request("postgres", format!("invalid PostgreSQL URL: {e}")))?;
        Self::with_config(config)
    }

    /// The database at `url`, in a pool of its own whose statements stop after `limit`
    /// (PostgreSQL's `statement_timeout`; a transaction may set another with `SET LOCAL`).
    pub fn connect_limited(url: &str, limit: std::time::Duration) -> Result<Database, Status> {
        let mut config: tokio_postgres::Config =
            url.parse().map_err(|e| Status::bad_request("postgres", format!("invalid PostgreSQL URL: {e}")))?;
        let options =
            format!("{} -c statement_timeout={}", config.get_options().unwrap_or_default(), limit.as_millis());
        config.options(options.trim());
        Self::with_config(config)
    }

    fn with_config(config: tokio_postgres::Config) -> Result<Database, Status> {
        let manager = deadpool_postgres::Manager::from_config(
            config.clone(),
            tokio_postgres::NoTls,
            deadpool_postgres::ManagerConfig { recycling_method: deadpool_postgres::RecyclingMethod::Fast },
        );
        let timeout = Some(std::time::Duration::from_secs(5));
        let pool = deadpool_postgres::Pool::builder(manager)
            .max_size(32)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(timeout)
            .create_timeout(timeout)
            .recycle_timeout(timeout)
            .build()
            .map_err(|e| Status::internal("postgres", format!("a PostgreSQL pool: {e}")))?;
        Ok(Database { pool, config: std::sync::Arc::new(config) })
    }

    /// The pool's connections: (open, idle, callers waiting for one).
    pub fn pool_status(&self) -> (usize, usize, usize) {
        let s = self.pool.status();
        (s.size, s.available, s.waiting)
    }

    /// Opens a connection outside the pool (as `application`) and listens to `channel`
    /// on it (a name: letters, digits and `_`): the client (keep it, or the connection
    /// closes), the connection's messages (notifications among them; they come only
    /// while it is polled) and the connection's backend process id.
    pub async fn listen(
        &self,
        channel: &str,
        application: &str,
    ) -> Result<(tokio_postgres::Client, Messages, i32), Status> {
        const ID: &str = "postgres";
        if channel.is_empty() || !channel.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(Status::bad_request(ID, format!("invalid channel {channel:?}")));
        }
        let mut config = (*self.config).clone();
        // Fail fast, and notice a peer that vanished without closing the connection.
        config
            .application_name(application)
            .connect_timeout(std::time::Duration::from_secs(5))
            .keepalives_idle(std::time::Duration::from_secs(30))
            .keepalives_interval(std::time::Duration::from_secs(5))
            .keepalives_retries(3);
        let (client, mut connection) = config.connect(tokio_postgres::NoTls).await.map_err(|e| db_error(ID, e))?;
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx)).boxed();
        let sql = format!("LISTEN {channel}; SELECT pg_backend_pid()");
        let answer = {
            let listening = client.simple_query(&sql);
            tokio::pin!(listening);
            // The connection makes progress only while its messages are polled.
            loop {
                tokio::select! {
                    answer = &mut listening => break answer.map_err(|e| db_error(ID, e))?,
                    message = messages.next() => match message {
                        // A notice that came before the answer; the caller reads everything afresh.
                        Some(Ok(_)) => {}
                        Some(Err(e)) => return Err(db_error(ID, e)),
                        None => return Err(Status::new(Code::Unavailable, ID, "the listening connection closed")),
                    },
                }
            }
        };
        let backend = answer.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).and_then(|p| p.parse().ok()),
            _ => None,
        });
        Ok((client, messages, backend.unwrap_or(0)))
    }

    /// A connection from the pool, for backend `id`'s errors.
    pub async fn client(&self, id: &str) -> Result<deadpool_postgres::Object, Status> {
        self.pool.get().await.map_err(|e| pool_error(id, e))
    }

    /// The notification channel of table `table` (as the search path finds it), for
    /// backend `id`: `<table>_<oid>`. `NOTIFY` reaches the whole database whatever the
    /// schema, so a channel named after the table's OID keeps clusters in separate
    /// schemas of one database from hearing each other.
    pub(crate) async fn table_channel(&self, id: &str, table: &str) -> Result<String, Status> {
        let c = self.client(id).await?;
        let row = c.query_one("SELECT $1::text::regclass::oid", &[&table]).await.map_err(|e| db_error(id, e))?;
        let oid: u32 = row.get(0);
        Ok(format!("{table}_{oid}"))
    }

    /// Runs `schema` once, under an advisory lock, so nodes starting together do not race
    /// to create the same tables.
    pub async fn migrate(&self, id: &str, schema: &str) -> Result<(), Status> {
        let mut c = self.client(id).await?;
        let tx = c.transaction().await.map_err(|e| db_error(id, e))?;
        tx.execute("SELECT pg_advisory_xact_lock(7469010)", &[]).await.map_err(|e| db_error(id, e))?;
        tx.batch_execute(schema).await.map_err(|e| db_error(id, e))?;
        tx.commit().await.map_err(|e| db_error(id, e))
    }
}

/// The first and the longest wait before a lost listening connection is opened again.
const LISTEN_BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));

/// What a [`Listening`] connection heard.
pub(crate) enum Heard {
    /// A notification on its channel.
    Notification(Notification),
    /// The connection was lost and is back: the notifications sent meanwhile are gone.
    Reconnected,
}

/// A connection outside the pool listening to one channel ([`Database::listen`]), opened
/// again with backoff (100 ms doubling to 5 s) whenever it is lost. Its notifications
/// come only while [`Listening::next`] is awaited.
pub(crate) struct Listening {
    db: Database,
    channel: String,
    application: &'static str,
    /// The client (kept, or the connection closes) and the connection's messages; `None`
    /// while the connection is lost.
    connection: Option<(tokio_postgres::Client, Messages)>,
    /// The wait before the next attempt to listen again.
    backoff: Duration,
    /// When the current connection was opened.
    since: tokio::time::Instant,
    /// The backend process of the connection (0 while there is none).
    pid: Arc<AtomicI32>,
}

impl Listening {
    /// Listens to `channel` on a new connection named `application`, failing when the
    /// database is unreachable.
    pub(crate) async fn open(db: &Database, channel: &str, application: &'static str) -> Result<Listening, Status> {
        let mut listening = Listening {
            db: db.clone(),
            channel: channel.to_string(),
            application,
            connection: None,
            backoff: LISTEN_BACKOFF.0,
            since: tokio::time::Instant::now(),
            pid: Arc::new(AtomicI32::new(0)),
        };
        listening.connect().await?;
        Ok(listening)
    }

    /// The backend process of the connection, kept up to date (0 while there is none).
    #[cfg(test)]
    pub(crate) fn pid(&self) -> Arc<AtomicI32> {
        self.pid.clone()
    }

    async fn connect(&mut self) -> Result<(), Status> {
        let (client, messages, backend) = self.db.listen(&self.channel, self.application).await?;
        self.pid.store(backend, Ordering::Relaxed);
        self.connection = Some((client, messages));
        self.since = tokio::time::Instant::now();
        Ok(())
    }

    /// The next notification, or [`Heard::Reconnected`] once a lost connection is back.
    /// Waits (for ever, while the database is away) until there is one.
    pub(crate) async fn next(&mut self) -> Heard {
        loop {
            if let Some((_, messages)) = &mut self.connection {
                match messages.next().await {
                    Some(Ok(AsyncMessage::Notification(n))) => return Heard::Notification(n),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => self.lost(Some(e)),
                    None => self.lost(None),
                }
                continue;
            }
            tokio::time::sleep(self.backoff).await;
            match self.connect().await {
                Ok(()) => {
                    let pid = self.pid.load(Ordering::Relaxed);
                    tracing::info!(channel = %self.channel, pid, "listening again");
                    return Heard::Reconnected;
                }
                Err(e) => {
                    self.backoff = (self.backoff * 2).min(LISTEN_BACKOFF.1);
                    tracing::warn!(channel = %self.channel, error = %e, retry_in = ?self.backoff, "cannot listen");
                }
            }
        }
    }

    /// A notification already received, without waiting (to handle a burst at once).
    pub(crate) fn ready(&mut self) -> Option<Notification> {
        use futures::FutureExt;
        loop {
            let (_, messages) = self.connection.as_mut()?;
            match messages.next().now_or_never()? {
                Some(Ok(AsyncMessage::Notification(n))) => return Some(n),
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    self.lost(Some(e));
                    return None;
                }
                None => {
                    self.lost(None);
                    return None;
                }
            }
        }
    }

    fn lost(&mut self, error: Option<tokio_postgres::Error>) {
        match error {
            Some(e) => tracing::warn!(channel = %self.channel, error = %e, "lost the listening connection"),
            None => tracing::warn!(channel = %self.channel, "the listening connection closed"),
        }
        self.connection = None;
        self.pid.store(0, Ordering::Relaxed);
        // A connection that keeps dropping at once is opened again ever more slowly.
        self.backoff = if self.since.elapsed() > LISTEN_BACKOFF.1 {
            LISTEN_BACKOFF.0
        } else {
            (self.backoff * 2).min(LISTEN_BACKOFF.1)
        };
    }
}

/// A LIKE pattern matching `s` literally (before any wildcard is added).
pub(crate) fn like_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The database for tests (`MICRO_TEST_POSTGRES`), or a notice and `None`.
#[cfg(test)]
pub(crate) fn test_url() -> Option<String> {
    micro_conformance::backend_url("MICRO_TEST_POSTGRES")
}
