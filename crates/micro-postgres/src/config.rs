//! The config in PostgreSQL, shared by every node on the database.
//!
//! Documents, merging and secrets are [`micro_core::config::doc`], byte for byte as in
//! the embedded config: the table `micro_config` holds one document (JSON text) per
//! namespace with a version counting its writes, and `micro_config_keys` the
//! namespace's data key sealed under the server key, which every node must be given
//! alike. A write reads the document `FOR UPDATE` (inserting an empty one first when
//! the namespace has none), so writes of one namespace from any node take turns and
//! none is lost. A document emptied by deletes keeps its row, so the lock and the
//! version survive.
//!
//! Watching uses `LISTEN`/`NOTIFY` rather than polling: a write notifies the channel
//! with its namespace, path and version in the same transaction (so the notice goes out
//! on commit, in commit order), and every `PostgresConfig` keeps one connection outside
//! the pool listening to it. Notifications reach the whole database, whatever the
//! schema, so the channel is named after the table's OID (`micro_config_<oid>`):
//! clusters in separate schemas of one database do not hear each other (a notice of
//! another cluster's write would make a watcher read its own document needlessly, and
//! its higher version would make the watcher skip its own cluster's later writes). On a notice for a namespace someone
//! watches, the listener reads the document once and hands it to the watchers, which
//! is the document at that version or a later one: a watcher may see a burst of writes
//! merged into their last value, but always ends on the latest one. When the listening
//! connection drops, it reconnects with backoff (100 ms doubling to 5 s), and every
//! watcher then reads its value again and reports it if it changed meanwhile.

use crate::{Database, Heard, Listening, db_error};
use futures::StreamExt;
use micro_core::config::doc::{
    self, AesKey, Committed, DataKeys, apply_delete, apply_set, check_set, seal_secret, segments,
};
use micro_core::config::{Change, Config};
use micro_core::{BoxStream, Status};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use tokio::sync::broadcast;

const ID: &str = "config";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS micro_config (
    namespace TEXT PRIMARY KEY,
    doc TEXT NOT NULL,
    version BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS micro_config_keys (
    namespace TEXT PRIMARY KEY,
    sealed BYTEA NOT NULL
);
";

/// The table whose OID names the notification channel of config writes.
const TABLE: &str = "micro_config";
/// The largest `NOTIFY` payload PostgreSQL takes; a longer notice is sent empty,
/// which tells listeners to look at everything again.
const MAX_PAYLOAD: usize = 7999;
/// Ends the error when a data key cannot be decrypted.
const WRONG_KEY: &str =
    "was it sealed under another server key? Every node sharing the database needs the same server key";
/// Changes a slow watcher may fall behind before it is resynchronised.
const WATCH_BUFFER: usize = 1024;

/// The config in PostgreSQL. Cheap to clone; the listening connection closes when the
/// last clone is dropped, and the watch streams then end.
#[derive(Clone)]
pub struct PostgresConfig {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    /// The notification channel of config writes (`micro_config_<oid>`).
    channel: String,
    /// The per-namespace data keys, sealed under the server key.
    keys: DataKeys,
    /// Only subscribed to here; the listener and this are the senders.
    events: broadcast::Sender<Event>,
    watched: Arc<Watched>,
    listener: tokio::task::AbortHandle,
    /// The backend process of the listening connection (0 while there is none).
    #[cfg(test)]
    listener_pid: Arc<std::sync::atomic::AtomicI32>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

/// What the listener tells the watchers.
#[derive(Clone)]
enum Event {
    /// A write (the document's `version` it made), with the document at that version
    /// or a later one.
    Committed { write: Arc<Committed>, version: i64 },
    /// Writes may have gone unseen: read the current value.
    Resync,
}

/// How many watchers each namespace has, so the listener reads only watched documents.
type Watched = Mutex<HashMap<String, usize>>;

impl PostgresConfig {
    /// The config in `db`, with secrets sealed under `server_key`: creates the tables
    /// when missing and starts listening for changes (failing when the database is
    /// unreachable).
    pub async fn open(db: &Database, server_key: [u8; 32]) -> Result<PostgresConfig, Status> {
        db.migrate(ID, SCHEMA).await?;
        let channel = db.table_channel(ID, TABLE).await?;
        let listening = Listening::open(db, &channel, "micro-config-listener").await?;
        #[cfg(test)]
        let pid = listening.pid();
        let (events, _) = broadcast::channel(WATCH_BUFFER);
        let watched = Arc::new(Watched::default());
        let listener = Listener { db: db.clone(), events: events.clone(), watched: watched.clone() };
        let task = tokio::spawn(listener.run(listening));
        let inner = Inner {
            db: db.clone(),
            channel,
            keys: DataKeys::new(&server_key, WRONG_KEY),
            events,
            watched,
            listener: task.abort_handle(),
            #[cfg(test)]
            listener_pid: pid,
        };
        Ok(PostgresConfig { inner: Arc::new(inner) })
    }

    /// The data key of `ns` for a write inside `tx`, creating it if needed; `true` when
    /// it was created (remember it only once the transaction commits).
    async fn data_key_for_write(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        ns: &str,
    ) -> Result<(AesKey, bool), Status> {
        if let Some(key) = self.inner.keys.cached(ns) {
            return Ok((key, false));
        }
        let select = "SELECT sealed FROM micro_config_keys WHERE namespace = $1";
        if let Some(row) = tx.query_opt(select, &[&ns]).await.map_err(|e| db_error(ID, e))? {
            return Ok((self.inner.keys.unseal(ns, row.get(0))?, false));
        }
        let (key, sealed) = self.inner.keys.create(ns)?;
        let inserted = tx
            .execute(
                "INSERT INTO micro_config_keys (namespace, sealed) VALUES ($1, $2) ON CONFLICT (namespace) DO NOTHING",
                &[&ns, &sealed],
            )
            .await
            .map_err(|e| db_error(ID, e))?;
        if inserted == 1 {
            return Ok((key, true));
        }
        // Only reachable if a key was stored without the document's lock; use that one.
        let row = tx.query_one(select, &[&ns]).await.map_err(|e| db_error(ID, e))?;
        Ok((self.inner.keys.unseal(ns, row.get(0))?, false))
    }

    /// The value at `segs` of `ns` with secrets masked (`null` when absent), and the
    /// version of the document it was read from.
    async fn masked(&self, ns: &str, segs: &[String]) -> Result<(Value, i64), Status> {
        let (version, doc, _) = load(&self.inner.db, ns, false).await?;
        Ok((doc::masked_at(&doc, segs).unwrap_or(Value::Null), version))
    }
}

/// The version (0 when there is none) and document of `ns`, and with `key` its sealed
/// data key, in one round trip.
async fn load(db: &Database, ns: &str, key: bool) -> Result<(i64, Value, Option<Vec<u8>>), Status> {
    let c = db.client(ID).await?;
    let stmt = c
        .prepare_cached(if key {
            "SELECT d.version, d.doc, k.sealed FROM (SELECT $1::text AS namespace) n \
             LEFT JOIN micro_config d USING (namespace) LEFT JOIN micro_config_keys k USING (namespace)"
        } else {
            "SELECT d.version, d.doc, NULL::bytea FROM (SELECT $1::text AS namespace) n \
             LEFT JOIN micro_config d USING (namespace)"
        })
        .await
        .map_err(|e| db_error(ID, e))?;
    let row = c.query_one(&stmt, &[&ns]).await.map_err(|e| db_error(ID, e))?;
    let doc = match row.get::<_, Option<&str>>(1) {
        Some(text) => doc::parse_doc(ns, text)?,
        None => doc::empty(),
    };
    Ok((row.get::<_, Option<i64>>(0).unwrap_or(0), doc, row.get(2)))
}

/// The document of `ns`, locked until `tx` ends; with `create`, a missing one is
/// inserted empty first so that it can be locked (`None` otherwise).
async fn lock_doc(tx: &deadpool_postgres::Transaction<'_>, ns: &str, create: bool) -> Result<Option<Value>, Status> {
    let select = tx
        .prepare_cached("SELECT doc FROM micro_config WHERE namespace = $1 FOR UPDATE")
        .await
        .map_err(|e| db_error(ID, e))?;
    if let Some(row) = tx.query_opt(&select, &[&ns]).await.map_err(|e| db_error(ID, e))? {
        return doc::parse_doc(ns, row.get(0)).map(Some);
    }
    if !create {
        return Ok(None);
    }
    tx.execute(
        "INSERT INTO micro_config (namespace, doc) VALUES ($1, '{}') ON CONFLICT (namespace) DO NOTHING",
        &[&ns],
    )
    .await
    .map_err(|e| db_error(ID, e))?;
    let row = tx.query_one(&select, &[&ns]).await.map_err(|e| db_error(ID, e))?;
    doc::parse_doc(ns, row.get(0)).map(Some)
}

/// Stores `doc` as the document of `ns` (locked by [`lock_doc`]) and notifies the
/// listeners on `channel` of the write of `path` when `tx` commits.
async fn save_doc(
    tx: &deadpool_postgres::Transaction<'_>,
    channel: &str,
    ns: &str,
    path: &str,
    doc: &Value,
) -> Result<(), Status> {
    let text = doc::doc_text(doc)?;
    let update = tx
        .prepare_cached(
            "UPDATE micro_config SET doc = $2, version = version + 1 WHERE namespace = $1 RETURNING version",
        )
        .await
        .map_err(|e| db_error(ID, e))?;
    let row = tx.query_one(&update, &[&ns, &text]).await.map_err(|e| db_error(ID, e))?;
    let version: i64 = row.get(0);
    let mut notice = json!({"ns": ns, "path": path, "version": version}).to_string();
    if notice.len() > MAX_PAYLOAD {
        notice.clear();
    }
    let notify = tx.prepare_cached("SELECT pg_notify($1, $2)").await.map_err(|e| db_error(ID, e))?;
    tx.execute(&notify, &[&channel, &notice]).await.map_err(|e| db_error(ID, e))?;
    Ok(())
}

#[async_trait::async_trait]
impl Config for PostgresConfig {
    async fn get(&self, namespace: &str, path: &str, secrets: bool) -> Result<Option<Value>, Status> {
        let segs = segments(path)?;
        let cached = if secrets { self.inner.keys.cached(namespace) } else { None };
        let (_, doc, sealed) = load(&self.inner.db, namespace, secrets && cached.is_none()).await?;
        doc::read(&doc, namespace, &segs, secrets, || match cached {
            Some(key) => Ok(Some(key)),
            None => sealed.as_deref().map(|s| self.inner.keys.unseal(namespace, s)).transpose(),
        })
    }

    async fn set(&self, namespace: &str, path: &str, value: &Value, secret: bool) -> Result<(), Status> {
        let segs = segments(path)?;
        let plain = check_set(path, &segs, value, secret)?;
        let mut c = self.inner.db.client(ID).await?;
        let tx = c.transaction().await.map_err(|e| db_error(ID, e))?;
        let mut doc = lock_doc(&tx, namespace, true).await?.unwrap_or_else(doc::empty);
        let mut created = None;
        let value = if secret {
            let (key, new) = self.data_key_for_write(&tx, namespace).await?;
            created = new.then_some(key);
            seal_secret(&key, namespace, &segs, &plain)?
        } else {
            value.clone()
        };
        apply_set(&mut doc, &segs, value, !secret);
        save_doc(&tx, &self.inner.channel, namespace, path, &doc).await?;
        tx.commit().await.map_err(|e| db_error(ID, e))?;
        if let Some(key) = created {
            self.inner.keys.remember(namespace, key);
        }
        Ok(())
    }

    async fn delete(&self, namespace: &str, path: &str) -> Result<(), Status> {
        let segs = segments(path)?;
        let mut c = self.inner.db.client(ID).await?;
        let tx = c.transaction().await.map_err(|e| db_error(ID, e))?;
        let mut doc = lock_doc(&tx, namespace, false).await?.unwrap_or_else(doc::empty);
        apply_delete(&mut doc, &segs, path)?;
        save_doc(&tx, &self.inner.channel, namespace, path, &doc).await?;
        tx.commit().await.map_err(|e| db_error(ID, e))
    }

    async fn watch(&self, namespace: &str, path: &str) -> Result<BoxStream<Result<Change, Status>>, Status> {
        let segs = segments(path)?;
        // Count and subscribe before reading, so no change between the two is missed.
        let watching = Watching::new(&self.inner.watched, namespace);
        let rx = self.inner.events.subscribe();
        let (current, seen) = self.masked(namespace, &segs).await?;
        let first = Change { path: path.to_string(), value: current.clone() };
        let state = Watcher {
            rx,
            config: Arc::downgrade(&self.inner),
            namespace: namespace.to_string(),
            path: path.to_string(),
            segs,
            last: current,
            seen,
            _watching: watching,
        };
        let rest = futures::stream::unfold(state, |mut w| async move {
            let next = w.next().await?;
            Some((next, w))
        });
        Ok(futures::stream::once(async move { Ok(first) }).chain(rest).boxed())
    }
}

/// Counts one watcher of a namespace while it lives.
struct Watching {
    watched: Arc<Watched>,
    namespace: String,
}

impl Watching {
    fn new(watched: &Arc<Watched>, namespace: &str) -> Watching {
        *watched.lock().unwrap_or_else(|e| e.into_inner()).entry(namespace.to_string()).or_default() += 1;
        Watching { watched: watched.clone(), namespace: namespace.to_string() }
    }
}

impl Drop for Watching {
    fn drop(&mut self) {
        let mut watched = self.watched.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = watched.get_mut(&self.namespace) {
            *n -= 1;
            if *n == 0 {
                watched.remove(&self.namespace);
            }
        }
    }
}

/// The state of one watch stream.
struct Watcher {
    rx: broadcast::Receiver<Event>,
    config: Weak<Inner>,
    namespace: String,
    path: String,
    segs: Vec<String>,
    /// The value last reported, so that a resynchronisation reports only a change.
    last: Value,
    /// The version of the document that `last` was read from: later notices of writes
    /// it already includes are not reported again.
    seen: i64,
    _watching: Watching,
}

impl Watcher {
    /// The next change under the watched path; `None` once the config is gone.
    async fn next(&mut self) -> Option<Result<Change, Status>> {
        loop {
            let change = match self.rx.recv().await {
                Ok(Event::Committed { write, version }) => {
                    if write.namespace != self.namespace || version <= self.seen {
                        continue;
                    }
                    self.seen = version;
                    match write.change_for(&self.namespace, &self.segs) {
                        Some(change) => change,
                        None => continue,
                    }
                }
                // Changes may have been missed: report the current value if it differs.
                Ok(Event::Resync) | Err(broadcast::error::RecvError::Lagged(_)) => {
                    let config = PostgresConfig { inner: self.config.upgrade()? };
                    let value = match config.masked(&self.namespace, &self.segs).await {
                        Ok((value, version)) => {
                            self.seen = self.seen.max(version);
                            value
                        }
                        Err(e) => return Some(Err(e)),
                    };
                    if value == self.last {
                        continue;
                    }
                    Change { path: self.path.clone(), value }
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            };
            self.last = change.value.clone();
            return Some(Ok(change));
        }
    }
}

// --- Listening -------------------------------------------------------------------

/// The task that listens for the writes of every node and tells the watchers.
struct Listener {
    db: Database,
    events: broadcast::Sender<Event>,
    watched: Arc<Watched>,
}

impl Listener {
    /// Listens (again and again whenever the connection is lost) until aborted.
    async fn run(self, mut listening: Listening) {
        // The last document read: a burst of writes to one namespace is read once.
        let mut last: Option<(String, i64, Value)> = None;
        loop {
            match listening.next().await {
                Heard::Notification(n) => self.notified(n.payload(), &mut last).await,
                Heard::Reconnected => {
                    last = None;
                    // Whatever was written while no one listened, watchers read afresh.
                    let _ = self.events.send(Event::Resync);
                }
            }
        }
    }

    /// Hands the write announced by `payload` to the watchers of its namespace.
    async fn notified(&self, payload: &str, last: &mut Option<(String, i64, Value)>) {
        let notice: Value = serde_json::from_str(payload).unwrap_or(Value::Null);
        let (Some(ns), Some(path), Some(version)) =
            (notice["ns"].as_str(), notice["path"].as_str(), notice["version"].as_i64())
        else {
            // Too long to send, or not ours: look at everything again.
            let _ = self.events.send(Event::Resync);
            return;
        };
        if !self.watched.lock().unwrap_or_else(|e| e.into_inner()).contains_key(ns) {
            return;
        }
        let Ok(segs) = segments(path) else {
            let _ = self.events.send(Event::Resync);
            return;
        };
        let doc = match last {
            Some((n, v, doc)) if n == ns && *v >= version => doc.clone(),
            _ => match load(&self.db, ns, false).await {
                Ok((v, doc, _)) => {
                    *last = Some((ns.to_string(), v, doc.clone()));
                    doc
                }
                Err(e) => {
                    tracing::warn!(error = %e, namespace = ns, "config: cannot read a changed document");
                    let _ = self.events.send(Event::Resync);
                    return;
                }
            },
        };
        let committed = Committed { namespace: ns.to_string(), path: path.to_string(), segs, doc };
        let _ = self.events.send(Event::Committed { write: Arc::new(committed), version });
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use micro_core::Code;
    use micro_core::config::MASK;
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    async fn open(url: &str, key: [u8; 32]) -> PostgresConfig {
        // A pool of its own, as on another node.
        let db = Database::connect(url).unwrap();
        PostgresConfig::open(&db, key).await.unwrap()
    }

    fn namespace(what: &str) -> String {
        format!("pg-config-{what}-{}", uuid::Uuid::new_v4().simple())
    }

    async fn next_change(w: &mut BoxStream<Result<Change, Status>>) -> Change {
        match tokio::time::timeout(Duration::from_secs(10), w.next()).await {
            Ok(Some(Ok(c))) => c,
            other => panic!("no change: {other:?}"),
        }
    }

    const KEY: [u8; 32] = [42; 32];

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conformance() {
        let Some(url) = crate::test_url() else { return };
        let config = Arc::new(open(&url, KEY).await);
        micro_conformance::config::config(config.clone()).await;
        // Repeatable against one database.
        micro_conformance::config::config(config).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_nodes_share_values_secrets_and_watches() {
        let Some(url) = crate::test_url() else { return };
        let (a, b) = (open(&url, KEY).await, open(&url, KEY).await);
        let ns = namespace("shared");
        let mut watch = b.watch(&ns, "app").await.unwrap();
        assert_eq!(next_change(&mut watch).await.value, Value::Null);

        a.set(&ns, "app.url", &json!("postgres://db"), false).await.unwrap();
        assert_eq!(
            next_change(&mut watch).await,
            Change { path: "app.url".into(), value: json!({"url": "postgres://db"}) },
            "a watch on b sees a write through a"
        );
        a.set(&ns, "app.password", &json!("hunter2"), true).await.unwrap();
        let change = next_change(&mut watch).await;
        assert_eq!(change.value, json!({"url": "postgres://db", "password": MASK}), "{change:?}");

        assert_eq!(b.get(&ns, "app.url", false).await.unwrap(), Some(json!("postgres://db")));
        assert_eq!(b.get(&ns, "app.password", false).await.unwrap(), Some(json!(MASK)));
        assert_eq!(b.get(&ns, "app.password", true).await.unwrap(), Some(json!("hunter2")), "b reveals a's secret");
        // And the other way, under the data key a created.
        b.set(&ns, "app.token", &json!({"t": 1}), true).await.unwrap();
        next_change(&mut watch).await;
        assert_eq!(a.get(&ns, "app.token", true).await.unwrap(), Some(json!({"t": 1})));
        assert_eq!(
            a.get(&ns, "app", true).await.unwrap(),
            Some(json!({"url": "postgres://db", "password": "hunter2", "token": {"t": 1}}))
        );

        a.delete(&ns, "app").await.unwrap();
        assert_eq!(next_change(&mut watch).await, Change { path: "app".into(), value: Value::Null });
        assert_eq!(b.get(&ns, "", false).await.unwrap(), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn another_server_key_cannot_reveal_secrets() {
        let Some(url) = crate::test_url() else { return };
        let (a, other) = (open(&url, KEY).await, open(&url, [7; 32]).await);
        let ns = namespace("wrong-key");
        a.set(&ns, "token", &json!("t0k"), true).await.unwrap();
        assert_eq!(other.get(&ns, "token", false).await.unwrap(), Some(json!(MASK)), "masking needs no key");
        let err = other.get(&ns, "token", true).await.unwrap_err();
        assert_eq!(err.code(), Code::DataLoss, "{err}");
        assert!(err.detail().contains("another server key"), "{}", err.detail());
        let err = other.set(&ns, "more", &json!("x"), true).await.unwrap_err();
        assert_eq!(err.code(), Code::DataLoss, "no secret is written under a key that cannot be opened: {err}");
        other.set(&ns, "plain", &json!(1), false).await.unwrap();
        assert_eq!(a.get(&ns, "", true).await.unwrap(), Some(json!({"token": "t0k", "plain": 1})));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_sets_from_two_nodes_are_all_kept() {
        let Some(url) = crate::test_url() else { return };
        let nodes = [open(&url, KEY).await, open(&url, KEY).await];
        let ns = namespace("concurrent");
        let tasks: Vec<_> = (0..32)
            .map(|i| {
                let config = nodes[i % 2].clone();
                let ns = ns.clone();
                tokio::spawn(async move { config.set(&ns, &format!("k{}.v{i}", i % 4), &json!(i), i % 3 == 0).await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        for node in &nodes {
            let doc = node.get(&ns, "", true).await.unwrap().unwrap();
            for i in 0..32 {
                assert_eq!(doc[format!("k{}", i % 4)][format!("v{i}")], json!(i), "{doc}");
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn watchers_catch_up_after_the_listening_connection_is_lost() {
        let Some(url) = crate::test_url() else { return };
        let (a, b) = (open(&url, KEY).await, open(&url, KEY).await);
        let ns = namespace("reconnect");
        let mut watch = a.watch(&ns, "x").await.unwrap();
        assert_eq!(next_change(&mut watch).await.value, Value::Null);

        let pid = a.inner.listener_pid.load(Ordering::Relaxed);
        assert_ne!(pid, 0);
        let c = a.inner.db.client(ID).await.unwrap();
        c.execute("SELECT pg_terminate_backend($1)", &[&pid]).await.unwrap();
        // Written while a may not be listening: seen by a notice or by the resync.
        b.set(&ns, "x", &json!(1), false).await.unwrap();
        assert_eq!(next_change(&mut watch).await.value, json!(1));

        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !matches!(a.inner.listener_pid.load(Ordering::Relaxed), p if p != 0 && p != pid) {
            assert!(tokio::time::Instant::now() < deadline, "a listens again");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        b.set(&ns, "x", &json!(2), false).await.unwrap();
        assert_eq!(next_change(&mut watch).await, Change { path: "x".into(), value: json!(2) });
    }

    /// Schema `name` created afresh in the database at `url`, and a URL whose
    /// connections use it (as a cluster kept in a schema of its own does).
    async fn schema(url: &str, name: &str) -> String {
        let c = Database::connect(url).unwrap().client(ID).await.unwrap();
        c.batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE; CREATE SCHEMA {name}")).await.unwrap();
        let sep = if url.contains('?') { '&' } else { '?' };
        format!("{url}{sep}options=-csearch_path%3D{name}")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn clusters_in_separate_schemas_do_not_hear_each_other() {
        let Some(url) = crate::test_url() else { return };
        let id = uuid::Uuid::new_v4().simple();
        let names = [format!("micro_cfg_a_{id}"), format!("micro_cfg_b_{id}")];
        let a = open(&schema(&url, &names[0]).await, KEY).await;
        let b = open(&schema(&url, &names[1]).await, KEY).await;
        assert_ne!(a.inner.channel, b.inner.channel, "each schema's table has a channel of its own");
        assert!(a.inner.channel.starts_with("micro_config_"), "{}", a.inner.channel);
        // The same namespace in both clusters: only the schema tells them apart.
        let ns = namespace("schemas");
        let mut watch_a = a.watch(&ns, "x").await.unwrap();
        assert_eq!(next_change(&mut watch_a).await.value, Value::Null);
        let mut watch_b = b.watch(&ns, "x").await.unwrap();
        assert_eq!(next_change(&mut watch_b).await.value, Value::Null);

        // B's writes push B's version well past A's.
        for i in 1..=5 {
            b.set(&ns, "x", &json!(format!("b{i}")), false).await.unwrap();
        }
        let mut last = Value::Null;
        while last != json!("b5") {
            last = next_change(&mut watch_b).await.value;
        }
        assert_eq!(a.get(&ns, "x", false).await.unwrap(), None, "B's writes stay in B's schema");
        let heard = tokio::time::timeout(Duration::from_millis(500), watch_a.next()).await;
        assert!(heard.is_err(), "a watcher in A hears nothing of B's writes: {heard:?}");

        // A's own later write (its version 1, below B's 5) still reaches A's watcher.
        a.set(&ns, "x", &json!("a1"), false).await.unwrap();
        assert_eq!(next_change(&mut watch_a).await, Change { path: "x".into(), value: json!("a1") });
        let heard = tokio::time::timeout(Duration::from_millis(500), watch_b.next()).await;
        assert!(heard.is_err(), "a watcher in B hears nothing of A's write: {heard:?}");
        assert_eq!(b.get(&ns, "x", false).await.unwrap(), Some(json!("b5")));

        drop((watch_a, watch_b, a, b));
        let c = Database::connect(&url).unwrap().client(ID).await.unwrap();
        for name in &names {
            c.batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE")).await.unwrap();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn watch_ends_when_the_config_is_dropped() {
        let Some(url) = crate::test_url() else { return };
        let config = open(&url, KEY).await;
        let mut w = config.watch(&namespace("dropped"), "").await.unwrap();
        next_change(&mut w).await;
        drop(config);
        let end = tokio::time::timeout(Duration::from_secs(5), w.next()).await.unwrap();
        assert!(end.is_none(), "{end:?}");
    }
}
