//! The embedded config: each namespace's JSON document in SQLite (`config.db`), one row
//! per top-level key, so a write rewrites only the key it changes (a document stored
//! whole by an earlier version moves to rows on its namespace's next write).
//!
//! Secrets are encrypted with AES-256-GCM under a random key per namespace; those keys
//! are stored in `config.db` encrypted (AES-256-GCM) under the server key, 32 random
//! bytes in `<data dir>/server.key` (mode 0600, created on first open). In the stored
//! document a secret is the marker `{"$secret": base64(nonce ‖ ciphertext)}`, which
//! reads as [`MASK`](micro_core::config::MASK) unless secrets are asked for (the format, merging and sealing are
//! [`micro_core::config::doc`], shared with the other backends). Writes are serialised
//! on the writer connection, so concurrent sets of one namespace never lose each other;
//! watchers are fed by an in-process broadcast of committed documents.
//!
//! A secret is a leaf: setting anything at or under it replaces it, and deleting
//! inside it is refused. Setting under a value that is not an object (a string, a
//! number, a secret) replaces that value with an object.

use crate::DataDir;
use crate::db::{Db, internal};
use crate::files::{sync_dir, write_private};
use futures::StreamExt;
use micro_core::config::doc::{
    self, AesKey, Committed, DataKeys, KEY_LEN, apply_delete, apply_set, check_set, random, seal_secret, segments,
};
use micro_core::config::{Change, Config};
use micro_core::{BoxStream, Code, Status};
use rusqlite::{OptionalExtension, params};
use serde_json::Value;
use std::path::Path;
use std::sync::{Arc, Weak};
use tokio::sync::broadcast;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS documents (
    namespace TEXT PRIMARY KEY,
    doc TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS entries (
    namespace TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (namespace, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS keys (
    namespace TEXT PRIMARY KEY,
    sealed BLOB NOT NULL
) WITHOUT ROWID;
";

/// The file holding the server key, in the data directory.
const SERVER_KEY_FILE: &str = "server.key";
/// Changes a slow watcher may fall behind before it is resynchronised.
const WATCH_BUFFER: usize = 1024;

/// The embedded config. Cheap to clone.
#[derive(Clone)]
pub struct EmbeddedConfig {
    inner: Arc<Inner>,
}

struct Inner {
    db: Db,
    /// The per-namespace data keys, sealed under the server key.
    keys: DataKeys,
    changes: broadcast::Sender<Arc<Committed>>,
}

impl EmbeddedConfig {
    /// Opens the config in `dir`, creating `server.key` there on first use (in memory
    /// for [`DataDir::memory`]). Fails if `server.key` exists but is not 32 bytes.
    pub fn open(dir: &DataDir) -> Result<EmbeddedConfig, Status> {
        let db = dir.open("config", SCHEMA)?;
        let key = server_key(dir)?;
        let (changes, _) = broadcast::channel(WATCH_BUFFER);
        let keys = DataKeys::new(&key, "was server.key replaced?");
        Ok(EmbeddedConfig { inner: Arc::new(Inner { db, keys, changes }) })
    }
}

#[async_trait::async_trait]
impl Config for EmbeddedConfig {
    async fn get(&self, namespace: &str, path: &str, secrets: bool) -> Result<Option<Value>, Status> {
        let segs = segments(path)?;
        let (inner, ns) = (self.inner.clone(), namespace.to_string());
        self.inner
            .db
            .read(move |c| {
                let doc = load_part(c, &ns, &segs)?;
                doc::read(&doc, &ns, &segs, secrets, || inner.load_key(c, &ns))
            })
            .await
    }

    async fn set(&self, namespace: &str, path: &str, value: &Value, secret: bool) -> Result<(), Status> {
        let segs = segments(path)?;
        let plain = check_set(path, &segs, value, secret)?;
        let (inner, ns, path, value) = (self.inner.clone(), namespace.to_string(), path.to_string(), value.clone());
        self.inner
            .db
            .write(move |c| {
                let tx = c.transaction().map_err(internal)?;
                migrate(&tx, &ns)?;
                let mut doc = load_part(&tx, &ns, &segs)?;
                let before = top_keys(&doc);
                let mut created = None;
                let value = if secret {
                    let (key, new) = inner.data_key_for_write(&tx, &ns)?;
                    created = new.then_some(key);
                    seal_secret(&key, &ns, &segs, &plain)?
                } else {
                    value
                };
                apply_set(&mut doc, &segs, value, !secret);
                save_part(&tx, &ns, &doc, before)?;
                tx.commit().map_err(internal)?;
                if let Some(key) = created {
                    inner.keys.remember(&ns, key);
                }
                let _ = inner.changes.send(Arc::new(Committed { namespace: ns, path, segs, doc }));
                Ok(())
            })
            .await
    }

    async fn delete(&self, namespace: &str, path: &str) -> Result<(), Status> {
        let segs = segments(path)?;
        let (inner, ns, path) = (self.inner.clone(), namespace.to_string(), path.to_string());
        self.inner
            .db
            .write(move |c| {
                let tx = c.transaction().map_err(internal)?;
                migrate(&tx, &ns)?;
                let mut doc = load_part(&tx, &ns, &segs)?;
                let before = top_keys(&doc);
                apply_delete(&mut doc, &segs, &path)?;
                save_part(&tx, &ns, &doc, before)?;
                tx.commit().map_err(internal)?;
                let _ = inner.changes.send(Arc::new(Committed { namespace: ns, path, segs, doc }));
                Ok(())
            })
            .await
    }

    async fn watch(&self, namespace: &str, path: &str) -> Result<BoxStream<Result<Change, Status>>, Status> {
        let segs = segments(path)?;
        // Subscribe before reading, so no change between the two is missed.
        let rx = self.inner.changes.subscribe();
        let current = self.get(namespace, path, false).await?.unwrap_or(Value::Null);
        let first = Change { path: path.to_string(), value: current };
        let state = Watcher {
            rx,
            config: Arc::downgrade(&self.inner),
            namespace: namespace.to_string(),
            path: path.to_string(),
            segs,
        };
        let rest = futures::stream::unfold(state, |mut w| async move {
            let next = w.next().await?;
            Some((next, w))
        });
        Ok(futures::stream::once(async move { Ok(first) }).chain(rest).boxed())
    }
}

/// The state of one watch stream.
struct Watcher {
    rx: broadcast::Receiver<Arc<Committed>>,
    config: Weak<Inner>,
    namespace: String,
    path: String,
    segs: Vec<String>,
}

impl Watcher {
    /// The next change under the watched path; `None` once the config is gone.
    async fn next(&mut self) -> Option<Result<Change, Status>> {
        loop {
            match self.rx.recv().await {
                // A write under one top-level key carries only that key's part of the
                // document: a watch of the whole document reads it afresh.
                Ok(c) if self.segs.is_empty() && !c.segs.is_empty() && c.namespace == self.namespace => {
                    let inner = self.config.upgrade()?;
                    let config = EmbeddedConfig { inner };
                    let value = config.get(&self.namespace, "", false).await;
                    return Some(value.map(|v| Change { path: c.path.clone(), value: v.unwrap_or(Value::Null) }));
                }
                Ok(c) => match c.change_for(&self.namespace, &self.segs) {
                    Some(change) => return Some(Ok(change)),
                    None => continue,
                },
                // Fell behind: the skipped changes are lost, so report the current value.
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    let inner = self.config.upgrade()?;
                    let config = EmbeddedConfig { inner };
                    let value = config.get(&self.namespace, &self.path, false).await;
                    return Some(value.map(|v| Change { path: self.path.clone(), value: v.unwrap_or(Value::Null) }));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

impl Inner {
    /// The data key of `namespace` for a write inside `tx`, creating it if needed;
    /// `true` when it was created (remember it only once the transaction commits).
    fn data_key_for_write(&self, tx: &rusqlite::Connection, ns: &str) -> Result<(AesKey, bool), Status> {
        if let Some(key) = self.load_key(tx, ns)? {
            return Ok((key, false));
        }
        let (key, sealed) = self.keys.create(ns)?;
        tx.execute("INSERT INTO keys (namespace, sealed) VALUES (?1, ?2)", params![ns, sealed]).map_err(internal)?;
        Ok((key, true))
    }

    /// The committed data key of `namespace`, if it has one.
    fn load_key(&self, c: &rusqlite::Connection, ns: &str) -> Result<Option<AesKey>, Status> {
        if let Some(key) = self.keys.cached(ns) {
            return Ok(Some(key));
        }
        let sealed: Option<Vec<u8>> = c
            .query_row("SELECT sealed FROM keys WHERE namespace = ?1", [ns], |r| r.get(0))
            .optional()
            .map_err(internal)?;
        sealed.map(|s| self.keys.unseal(ns, &s)).transpose()
    }
}

// --- Documents -------------------------------------------------------------------

/// A document of `ns` stored whole by an earlier version, until its next write.
fn legacy(c: &rusqlite::Connection, ns: &str) -> Result<Option<Value>, Status> {
    let text: Option<String> = c
        .query_row("SELECT doc FROM documents WHERE namespace = ?1", [ns], |r| r.get(0))
        .optional()
        .map_err(internal)?;
    text.map(|t| doc::parse_doc(ns, &t)).transpose()
}

/// The part of the document of `ns` that a path of `segs` reads or writes: the top-level
/// key it starts with (as `{key: value}`), or the whole document for the root.
fn load_part(c: &rusqlite::Connection, ns: &str, segs: &[String]) -> Result<Value, Status> {
    let mut doc = match legacy(c, ns)? {
        Some(Value::Object(mut whole)) => match segs.first() {
            Some(key) => whole.remove(key).map(|v| [(key.clone(), v)].into_iter().collect()).unwrap_or_default(),
            None => whole,
        },
        _ => serde_json::Map::new(),
    };
    let rows: Vec<(String, String)> = match segs.first() {
        Some(key) => c
            .query_row("SELECT key, value FROM entries WHERE namespace = ?1 AND key = ?2", params![ns, key], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()
            .map_err(internal)?
            .into_iter()
            .collect(),
        None => {
            let mut stmt = c.prepare_cached("SELECT key, value FROM entries WHERE namespace = ?1").map_err(internal)?;
            let rows = stmt.query_map([ns], |r| Ok((r.get(0)?, r.get(1)?))).map_err(internal)?;
            rows.collect::<Result<_, _>>().map_err(internal)?
        }
    };
    for (key, text) in rows {
        doc.insert(key, doc::parse_doc(ns, &text)?);
    }
    Ok(Value::Object(doc))
}

/// The top-level keys of a part.
fn top_keys(doc: &Value) -> Vec<String> {
    doc.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default()
}

/// Writes a part of the document of `ns` (its top-level keys, and deletes those of
/// `before` it no longer has).
fn save_part(c: &rusqlite::Connection, ns: &str, doc: &Value, before: Vec<String>) -> Result<(), Status> {
    let empty = serde_json::Map::new();
    let part = doc.as_object().unwrap_or(&empty);
    for key in before.iter().filter(|k| !part.contains_key(*k)) {
        c.execute("DELETE FROM entries WHERE namespace = ?1 AND key = ?2", params![ns, key]).map_err(internal)?;
    }
    for (key, value) in part {
        c.execute(
            "INSERT INTO entries (namespace, key, value) VALUES (?1, ?2, ?3) \
             ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value",
            params![ns, key, doc::doc_text(value)?],
        )
        .map_err(internal)?;
    }
    Ok(())
}

/// Moves a document of `ns` stored whole by an earlier version into rows (in a write).
fn migrate(c: &rusqlite::Connection, ns: &str) -> Result<(), Status> {
    let Some(doc) = legacy(c, ns)? else { return Ok(()) };
    c.execute("DELETE FROM documents WHERE namespace = ?1", [ns]).map_err(internal)?;
    if let Some(whole) = doc.as_object() {
        for (key, value) in whole {
            // Rows written since (none, as every write migrates first) would win.
            c.execute(
                "INSERT OR IGNORE INTO entries (namespace, key, value) VALUES (?1, ?2, ?3)",
                params![ns, key, doc::doc_text(value)?],
            )
            .map_err(internal)?;
        }
    }
    Ok(())
}

/// The server key of `dir` (`server.key`, created on first use; a random one in memory
/// for [`DataDir::memory`]): for other parts of a server that seal what they store the
/// way the config seals secrets.
pub fn server_key(dir: &DataDir) -> Result<[u8; KEY_LEN], Status> {
    match &dir.path {
        Some(path) => load_or_create_server_key(&path.join(SERVER_KEY_FILE)),
        None => random::<KEY_LEN>(),
    }
}

/// Reads the server key at `path`, creating it (32 random bytes, mode 0600) if absent.
fn load_or_create_server_key(path: &Path) -> Result<[u8; KEY_LEN], Status> {
    let io = |what: &str, e: std::io::Error| Status::internal("config", format!("{what} {}: {e}", path.display()));
    match std::fs::read(path) {
        Ok(bytes) => {
            let len = bytes.len();
            let key: [u8; KEY_LEN] = bytes.try_into().map_err(|_| {
                Status::new(
                    Code::FailedPrecondition,
                    "config",
                    format!(
                        "{} is {len} bytes, not {KEY_LEN}: restore the original key (secrets are unreadable without it) \
                         or remove the file and the config database to start afresh",
                        path.display()
                    ),
                )
            })?;
            warn_if_readable(path);
            return Ok(key);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("reading", e)),
    }
    let key = random::<KEY_LEN>()?;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| io("creating the directory of", e))?;
    // Write a private temporary file, then link it into place: the key appears whole
    // or not at all, and a concurrent first open keeps whichever key won.
    let tmp = dir.join(format!(".{SERVER_KEY_FILE}.{}.tmp", uuid::Uuid::new_v4().simple()));
    let written = write_private(&tmp, &key).and_then(|()| std::fs::hard_link(&tmp, path));
    let _ = std::fs::remove_file(&tmp);
    match written {
        Ok(()) => {
            sync_dir(dir);
            tracing::info!(path = %path.display(), "created the server key");
            Ok(key)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => load_or_create_server_key(path),
        Err(e) => Err(io("creating", e)),
    }
}

fn warn_if_readable(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path)
            && meta.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(path = %path.display(), "the server key is readable by others; chmod 600 it");
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

#[cfg(test)]
mod tests {
    use super::*;
    use micro_core::config::MASK;
    use serde_json::json;

    #[tokio::test]
    async fn conformance_in_memory() {
        micro_conformance::config::config(Arc::new(EmbeddedConfig::open(&DataDir::memory()).unwrap())).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conformance_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let config = Arc::new(EmbeddedConfig::open(&DataDir::new(dir.path())).unwrap());
        micro_conformance::config::config(config.clone()).await;
        // Repeatable against one backend.
        micro_conformance::config::config(config).await;
    }

    /// Every file under `dir` (recursively) that contains `needle`.
    fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                found.extend(files_containing(&path, needle));
            } else if std::fs::read(&path).unwrap().windows(needle.len()).any(|w| w == needle) {
                found.push(path.display().to_string());
            }
        }
        found
    }

    fn file_names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn secrets_never_reach_the_disk_in_plaintext_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::new(dir.path());
        let plaintext = format!("pl41ntext-{}", uuid::Uuid::new_v4().simple());
        let config = EmbeddedConfig::open(&data).unwrap();
        config.set("app", "db.password", &json!(plaintext), true).await.unwrap();
        config.set("app", "db.creds", &json!({"user": "u", "token": plaintext}), true).await.unwrap();
        config.set("app", "db.url", &json!("postgres://db"), false).await.unwrap();
        assert!(file_names(dir.path()).contains(&"config.db-wal".to_string()), "{:?}", file_names(dir.path()));
        assert_eq!(files_containing(dir.path(), plaintext.as_bytes()), Vec::<String>::new(), "after a write");
        assert!(!files_containing(dir.path(), b"postgres://db").is_empty(), "the scan finds non-secret values");

        config.inner.db.write(|c| c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)").map_err(internal)).await.unwrap();
        assert_eq!(files_containing(dir.path(), plaintext.as_bytes()), Vec::<String>::new(), "after a checkpoint");
        drop(config);
        assert_eq!(files_containing(dir.path(), plaintext.as_bytes()), Vec::<String>::new(), "after close");

        let config = EmbeddedConfig::open(&data).unwrap();
        assert_eq!(config.get("app", "db.password", false).await.unwrap(), Some(json!(MASK)));
        assert_eq!(config.get("app", "db.password", true).await.unwrap(), Some(json!(plaintext)));
        assert_eq!(
            config.get("app", "db", true).await.unwrap(),
            Some(json!({"password": plaintext, "creds": {"user": "u", "token": plaintext}, "url": "postgres://db"}))
        );
        assert_eq!(config.get("app", "db.creds.user", true).await.unwrap(), Some(json!("u")), "inside a secret");
        assert_eq!(config.get("app", "db.creds.user", false).await.unwrap(), Some(json!(MASK)));
        assert_eq!(config.get("app", "db.creds.nope", true).await.unwrap(), None);
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn server_key_is_private_and_checked() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join(SERVER_KEY_FILE);
        EmbeddedConfig::open(&DataDir::new(dir.path())).unwrap();
        let meta = std::fs::metadata(&key).unwrap();
        assert_eq!(meta.len(), KEY_LEN as u64);
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let leftovers: Vec<String> = file_names(dir.path()).into_iter().filter(|n| n.ends_with(".tmp")).collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");

        std::fs::write(&key, b"short").unwrap();
        let err = EmbeddedConfig::open(&DataDir::new(dir.path())).err().unwrap();
        assert_eq!(err.code(), Code::FailedPrecondition);
        assert!(err.detail().contains("server.key is 5 bytes"), "{}", err.detail());
    }

    #[tokio::test]
    async fn another_server_key_cannot_read_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let config = EmbeddedConfig::open(&DataDir::new(dir.path())).unwrap();
        config.set("app", "token", &json!("t"), true).await.unwrap();
        drop(config);
        std::fs::write(dir.path().join(SERVER_KEY_FILE), [7u8; KEY_LEN]).unwrap();
        let config = EmbeddedConfig::open(&DataDir::new(dir.path())).unwrap();
        assert_eq!(config.get("app", "token", false).await.unwrap(), Some(json!(MASK)), "masking needs no key");
        let err = config.get("app", "token", true).await.unwrap_err();
        assert_eq!(err.code(), Code::DataLoss);
        assert!(err.detail().contains("server.key replaced"), "{}", err.detail());
    }

    #[tokio::test]
    async fn secrets_are_leaves() {
        let config = EmbeddedConfig::open(&DataDir::memory()).unwrap();
        config.set("n", "s", &json!({"a": 1}), true).await.unwrap();
        let err = config.delete("n", "s.a").await.unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition);
        config.set("n", "s", &json!({"b": 2}), false).await.unwrap();
        assert_eq!(config.get("n", "s", true).await.unwrap(), Some(json!({"b": 2})), "a plain set replaces a secret");
        config.set("n", "t", &json!("x"), true).await.unwrap();
        config.set("n", "t.u", &json!(1), false).await.unwrap();
        assert_eq!(
            config.get("n", "t", true).await.unwrap(),
            Some(json!({"u": 1})),
            "setting under a secret replaces it"
        );
        let err = config.set("n", "x", &json!({"$secret": "forged"}), false).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        let err = config.set("n", "", &json!({"a": 1}), true).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        let err = config.set("n", "", &json!(1), false).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
    }

    #[tokio::test]
    async fn secrets_are_bound_to_their_path() {
        let config = EmbeddedConfig::open(&DataDir::memory()).unwrap();
        config.set("n", "a", &json!("secret-a"), true).await.unwrap();
        // Copy the sealed value of `a` to `b` behind the config's back.
        let ns = "n".to_string();
        config
            .inner
            .db
            .write(move |c| {
                let mut doc = load_part(c, &ns, &[])?;
                let a = doc["a"].clone();
                doc["b"] = a;
                save_part(c, &ns, &doc, Vec::new())
            })
            .await
            .unwrap();
        assert_eq!(config.get("n", "a", true).await.unwrap(), Some(json!("secret-a")));
        assert_eq!(config.get("n", "b", true).await.unwrap_err().code(), Code::DataLoss);
    }

    /// The size of the write-ahead log of `dir`'s config database.
    fn wal_size(dir: &Path) -> u64 {
        std::fs::metadata(dir.join("config.db-wal")).map(|m| m.len()).unwrap_or(0)
    }

    #[tokio::test]
    async fn a_set_rewrites_only_the_top_level_key_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let config = EmbeddedConfig::open(&DataDir::new(dir.path())).unwrap();
        // A namespace of 100 services' settings, 2 KB each: 200 KB in all.
        let big: serde_json::Map<String, Value> =
            (0..100).map(|i| (format!("svc{i}"), json!({ "blob": "x".repeat(2048), "n": i }))).collect();
        config.set("n", "", &Value::Object(big), false).await.unwrap();
        let before = wal_size(dir.path());
        // Values of growing length near the document's start (keys are sorted), so a
        // document written whole would differ from that point on, page after page.
        for i in 0..5 {
            config.set("n", "svc0.n", &json!("y".repeat(10 * (i + 1))), false).await.unwrap();
        }
        let grown = wal_size(dir.path()).saturating_sub(before);
        assert!(grown < 100 * 1024, "five small sets wrote {grown} bytes to the log (the whole document is 200 KB)");
        assert_eq!(config.get("n", "svc0.n", false).await.unwrap(), Some(json!("y".repeat(50))));
        assert_eq!(config.get("n", "svc8.n", false).await.unwrap(), Some(json!(8)));
        let whole = config.get("n", "", false).await.unwrap().unwrap();
        assert_eq!(whole.as_object().map(|o| o.len()), Some(100));
    }

    #[tokio::test]
    async fn a_document_stored_whole_reads_and_moves_to_rows_on_its_next_write() {
        let dir = tempfile::tempdir().unwrap();
        let config = EmbeddedConfig::open(&DataDir::new(dir.path())).unwrap();
        // As an earlier version stored it: one row per namespace.
        config
            .inner
            .db
            .write(|c| {
                let text = doc::doc_text(&json!({"app": {"port": 8080}, "db": {"host": "h"}}))?;
                c.execute("INSERT INTO documents (namespace, doc) VALUES ('n', ?1)", [text]).map_err(internal)?;
                Ok(())
            })
            .await
            .unwrap();
        assert_eq!(config.get("n", "app.port", false).await.unwrap(), Some(json!(8080)));
        assert_eq!(
            config.get("n", "", false).await.unwrap(),
            Some(json!({"app": {"port": 8080}, "db": {"host": "h"}}))
        );
        config.set("n", "db.host", &json!("h2"), false).await.unwrap();
        assert_eq!(
            config.get("n", "", false).await.unwrap(),
            Some(json!({"app": {"port": 8080}, "db": {"host": "h2"}}))
        );
        let left: i64 = config
            .inner
            .db
            .read(|c| c.query_row("SELECT count(*) FROM documents", [], |r| r.get(0)).map_err(internal))
            .await
            .unwrap();
        assert_eq!(left, 0, "moved to rows");
        config.delete("n", "app").await.unwrap();
        assert_eq!(config.get("n", "", false).await.unwrap(), Some(json!({"db": {"host": "h2"}})));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_sets_of_one_namespace_are_all_kept() {
        let dir = tempfile::tempdir().unwrap();
        let config = EmbeddedConfig::open(&DataDir::new(dir.path())).unwrap();
        let tasks: Vec<_> = (0..32)
            .map(|i| {
                let config = config.clone();
                tokio::spawn(async move { config.set("n", &format!("k{}.v{i}", i % 4), &json!(i), i % 3 == 0).await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let doc = config.get("n", "", true).await.unwrap().unwrap();
        for i in 0..32 {
            assert_eq!(doc[format!("k{}", i % 4)][format!("v{i}")], json!(i), "{doc}");
        }
    }

    #[tokio::test]
    async fn watchers_see_deletes_and_whole_document_changes() {
        let config = EmbeddedConfig::open(&DataDir::memory()).unwrap();
        config.set("n", "a.b", &json!(1), false).await.unwrap();
        let mut w = config.watch("n", "a").await.unwrap();
        let mut root = config.watch("n", "").await.unwrap();
        assert_eq!(w.next().await.unwrap().unwrap().value, json!({"b": 1}));
        assert_eq!(root.next().await.unwrap().unwrap().value, json!({"a": {"b": 1}}));
        config.set("n", "", &json!({"a": {"c": 2}}), false).await.unwrap();
        assert_eq!(w.next().await.unwrap().unwrap(), Change { path: String::new(), value: json!({"b": 1, "c": 2}) });
        root.next().await.unwrap().unwrap();
        config.delete("n", "").await.unwrap();
        assert_eq!(w.next().await.unwrap().unwrap(), Change { path: String::new(), value: Value::Null });
        assert_eq!(root.next().await.unwrap().unwrap().value, Value::Null);
        assert_eq!(config.get("n", "", false).await.unwrap(), None);
        assert_eq!(config.delete("n", "").await.unwrap_err().code(), Code::NotFound);
    }

    #[tokio::test]
    async fn a_lagging_watcher_catches_up_with_the_current_value() {
        let config = EmbeddedConfig::open(&DataDir::memory()).unwrap();
        let mut w = config.watch("n", "x").await.unwrap();
        assert_eq!(w.next().await.unwrap().unwrap().value, Value::Null);
        for i in 0..(WATCH_BUFFER + 10) {
            config.set("n", "x", &json!(i), false).await.unwrap();
        }
        let caught_up = w.next().await.unwrap().unwrap();
        assert_eq!(caught_up, Change { path: "x".into(), value: json!(WATCH_BUFFER + 9) });
    }

    #[tokio::test]
    async fn watch_ends_when_the_config_is_dropped() {
        let config = EmbeddedConfig::open(&DataDir::memory()).unwrap();
        let mut w = config.watch("n", "").await.unwrap();
        w.next().await.unwrap().unwrap();
        drop(config);
        assert!(w.next().await.is_none());
    }
}
