//! The embedded config: one JSON document per namespace in SQLite (`config.db`).
//!
//! Secrets are encrypted with AES-256-GCM under a random key per namespace; those keys
//! are stored in `config.db` encrypted (AES-256-GCM) under the server key, 32 random
//! bytes in `<data dir>/server.key` (mode 0600, created on first open). In the stored
//! document a secret is the marker `{"$secret": base64(nonce ‖ ciphertext)}`, which
//! reads as [`MASK`] unless secrets are asked for. Writes are serialised on the writer
//! connection, so concurrent sets of one namespace never lose each other; watchers are
//! fed by an in-process broadcast of committed documents.
//!
//! A secret is a leaf: setting anything at or under it replaces it, and deleting
//! inside it is refused. Setting under a value that is not an object (a string, a
//! number, a secret) replaces that value with an object.

use crate::DataDir;
use crate::db::{Db, internal};
use crate::files::{sync_dir, write_private};
use aes_gcm::aead::{Aead, Generate, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures::StreamExt;
use micro_core::config::{Change, Config, MASK, MAX_VALUE, parse_path};
use micro_core::{BoxStream, Code, Status};
use rusqlite::{OptionalExtension, params};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};
use tokio::sync::broadcast;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS documents (
    namespace TEXT PRIMARY KEY,
    doc TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS keys (
    namespace TEXT PRIMARY KEY,
    sealed BLOB NOT NULL
) WITHOUT ROWID;
";

/// The key of the marker object that stands for a secret in a stored document.
const SECRET: &str = "$secret";
/// The file holding the server key, in the data directory.
const SERVER_KEY_FILE: &str = "server.key";
/// Bytes of an AES-256 key.
const KEY_LEN: usize = 32;
/// Bytes of an AES-GCM nonce.
const NONCE_LEN: usize = 12;
/// Changes a slow watcher may fall behind before it is resynchronised.
const WATCH_BUFFER: usize = 1024;

/// The embedded config. Cheap to clone.
#[derive(Clone)]
pub struct EmbeddedConfig {
    inner: Arc<Inner>,
}

struct Inner {
    db: Db,
    /// Encrypts the per-namespace data keys.
    server: Aes256Gcm,
    /// Data keys known to be committed, by namespace.
    keys: Mutex<HashMap<String, [u8; KEY_LEN]>>,
    changes: broadcast::Sender<Arc<Committed>>,
}

/// A committed write, as broadcast to watchers.
struct Committed {
    namespace: String,
    path: String,
    segs: Vec<String>,
    /// The whole document after the write (secrets sealed).
    doc: Value,
}

impl EmbeddedConfig {
    /// Opens the config in `dir`, creating `server.key` there on first use (in memory
    /// for [`DataDir::memory`]). Fails if `server.key` exists but is not 32 bytes.
    pub fn open(dir: &DataDir) -> Result<EmbeddedConfig, Status> {
        let db = dir.open("config", SCHEMA)?;
        let key = match &dir.path {
            Some(path) => load_or_create_server_key(&path.join(SERVER_KEY_FILE))?,
            None => random::<KEY_LEN>()?,
        };
        let (changes, _) = broadcast::channel(WATCH_BUFFER);
        let inner = Inner { db, server: cipher(&key), keys: Mutex::new(HashMap::new()), changes };
        Ok(EmbeddedConfig { inner: Arc::new(inner) })
    }
}

#[async_trait::async_trait]
impl Config for EmbeddedConfig {
    async fn get(&self, namespace: &str, path: &str, secrets: bool) -> Result<Option<Value>, Status> {
        let segs = owned(parse_path(path)?);
        let (inner, ns) = (self.inner.clone(), namespace.to_string());
        self.inner
            .db
            .read(move |c| {
                let doc = load_doc(c, &ns)?;
                if segs.is_empty() && is_empty(&doc) {
                    return Ok(None);
                }
                if !secrets {
                    return Ok(masked_at(&doc, &segs));
                }
                let mut key = LazyKey::default();
                match find(&doc, &segs) {
                    Found::Missing => Ok(None),
                    Found::Value(v) => {
                        reveal(v, &mut segs.clone(), &mut |p, s| key.open(&inner, c, &ns, p, s)).map(Some)
                    }
                    Found::Secret { sealed, depth } => {
                        let plain = key.open(&inner, c, &ns, &segs[..depth], sealed)?;
                        let rest: Vec<&str> = segs[depth..].iter().map(String::as_str).collect();
                        match find(&plain, &rest) {
                            Found::Value(v) => Ok(Some(v.clone())),
                            _ => Ok(None),
                        }
                    }
                }
            })
            .await
    }

    async fn set(&self, namespace: &str, path: &str, value: &Value, secret: bool) -> Result<(), Status> {
        let segs = owned(parse_path(path)?);
        let plain = serde_json::to_vec(value).map_err(|e| Status::bad_request("config", format!("value: {e}")))?;
        if plain.len() > MAX_VALUE {
            return Err(Status::bad_request(
                "config",
                format!("value of {path:?} is {} bytes; the limit is {MAX_VALUE}", plain.len()),
            ));
        }
        if has_marker_key(value) {
            return Err(Status::bad_request("config", format!("{SECRET:?} is reserved and cannot be an object key")));
        }
        if segs.is_empty() && (secret || !value.is_object()) {
            return Err(Status::bad_request(
                "config",
                "the whole document must be set to a plain object; set a path to store other values or secrets",
            ));
        }
        let (inner, ns, path, value) = (self.inner.clone(), namespace.to_string(), path.to_string(), value.clone());
        self.inner
            .db
            .write(move |c| {
                let tx = c.transaction().map_err(internal)?;
                let mut doc = load_doc(&tx, &ns)?;
                let mut created = None;
                let value = if secret {
                    let (key, new) = inner.data_key_for_write(&tx, &ns)?;
                    created = new.then_some(key);
                    let sealed = seal(&cipher(&key), &value_aad(&ns, &segs), &plain)?;
                    let mut m = Map::new();
                    m.insert(SECRET.to_string(), Value::String(BASE64.encode(sealed)));
                    Value::Object(m)
                } else {
                    value
                };
                apply_set(&mut doc, &segs, value, !secret);
                save_doc(&tx, &ns, &doc)?;
                tx.commit().map_err(internal)?;
                if let Some(key) = created {
                    inner.remember_key(&ns, key);
                }
                let _ = inner.changes.send(Arc::new(Committed { namespace: ns, path, segs, doc }));
                Ok(())
            })
            .await
    }

    async fn delete(&self, namespace: &str, path: &str) -> Result<(), Status> {
        let segs = owned(parse_path(path)?);
        let (inner, ns, path) = (self.inner.clone(), namespace.to_string(), path.to_string());
        self.inner
            .db
            .write(move |c| {
                let tx = c.transaction().map_err(internal)?;
                let mut doc = load_doc(&tx, &ns)?;
                apply_delete(&mut doc, &segs, &path)?;
                save_doc(&tx, &ns, &doc)?;
                tx.commit().map_err(internal)?;
                let _ = inner.changes.send(Arc::new(Committed { namespace: ns, path, segs, doc }));
                Ok(())
            })
            .await
    }

    async fn watch(&self, namespace: &str, path: &str) -> Result<BoxStream<Result<Change, Status>>, Status> {
        let segs = owned(parse_path(path)?);
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
                Ok(c) => {
                    if c.namespace != self.namespace || !overlaps(&c.segs, &self.segs) {
                        continue;
                    }
                    let value = masked_at(&c.doc, &self.segs).unwrap_or(Value::Null);
                    return Some(Ok(Change { path: c.path.clone(), value }));
                }
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
    fn data_key_for_write(&self, tx: &rusqlite::Connection, ns: &str) -> Result<([u8; KEY_LEN], bool), Status> {
        if let Some(key) = self.load_key(tx, ns)? {
            return Ok((key, false));
        }
        let key = random::<KEY_LEN>()?;
        let sealed = seal(&self.server, &key_aad(ns), &key)?;
        tx.execute("INSERT INTO keys (namespace, sealed) VALUES (?1, ?2)", params![ns, sealed]).map_err(internal)?;
        Ok((key, true))
    }

    /// The committed data key of `namespace`, if it has one.
    fn load_key(&self, c: &rusqlite::Connection, ns: &str) -> Result<Option<[u8; KEY_LEN]>, Status> {
        if let Some(key) = self.keys.lock().unwrap_or_else(|e| e.into_inner()).get(ns) {
            return Ok(Some(*key));
        }
        let sealed: Option<Vec<u8>> = c
            .query_row("SELECT sealed FROM keys WHERE namespace = ?1", [ns], |r| r.get(0))
            .optional()
            .map_err(internal)?;
        let Some(sealed) = sealed else { return Ok(None) };
        let plain = open(&self.server, &key_aad(ns), &sealed).map_err(|_| {
            Status::new(
                Code::DataLoss,
                "config",
                format!("cannot decrypt the secrets key of namespace {ns:?}: was {SERVER_KEY_FILE} replaced?"),
            )
        })?;
        let key: [u8; KEY_LEN] = plain.try_into().map_err(|_| {
            Status::new(Code::DataLoss, "config", format!("the secrets key of namespace {ns:?} is corrupt"))
        })?;
        self.remember_key(ns, key);
        Ok(Some(key))
    }

    fn remember_key(&self, ns: &str, key: [u8; KEY_LEN]) {
        self.keys.lock().unwrap_or_else(|e| e.into_inner()).insert(ns.to_string(), key);
    }
}

/// A data key loaded on first use while revealing secrets.
#[derive(Default)]
struct LazyKey(Option<Aes256Gcm>);

impl LazyKey {
    /// Decrypts the secret sealed at `path` of namespace `ns`.
    fn open(
        &mut self,
        inner: &Inner,
        c: &rusqlite::Connection,
        ns: &str,
        path: &[String],
        sealed: &str,
    ) -> Result<Value, Status> {
        let lost = |what: &str| {
            Status::new(Code::DataLoss, "config", format!("secret {:?} of namespace {ns:?}: {what}", path.join(".")))
        };
        if self.0.is_none() {
            let key = inner.load_key(c, ns)?.ok_or_else(|| lost("no key for this namespace"))?;
            self.0 = Some(cipher(&key));
        }
        let Some(cipher) = &self.0 else { return Err(lost("no key")) };
        let sealed = BASE64.decode(sealed).map_err(|_| lost("not base64"))?;
        let plain = open(cipher, &value_aad(ns, path), &sealed).map_err(|_| lost("cannot decrypt"))?;
        serde_json::from_slice(&plain).map_err(|_| lost("not JSON"))
    }
}

// --- Documents -------------------------------------------------------------------

fn owned(segs: Vec<&str>) -> Vec<String> {
    segs.into_iter().map(str::to_string).collect()
}

fn load_doc(c: &rusqlite::Connection, ns: &str) -> Result<Value, Status> {
    let text: Option<String> = c
        .query_row("SELECT doc FROM documents WHERE namespace = ?1", [ns], |r| r.get(0))
        .optional()
        .map_err(internal)?;
    match text {
        None => Ok(Value::Object(Map::new())),
        Some(t) => serde_json::from_str(&t)
            .map_err(|e| Status::new(Code::DataLoss, "config", format!("document of namespace {ns:?}: {e}"))),
    }
}

fn save_doc(c: &rusqlite::Connection, ns: &str, doc: &Value) -> Result<(), Status> {
    if is_empty(doc) {
        c.execute("DELETE FROM documents WHERE namespace = ?1", [ns]).map_err(internal)?;
        return Ok(());
    }
    let text = serde_json::to_string(doc).map_err(|e| Status::internal("config", format!("document: {e}")))?;
    c.execute(
        "INSERT INTO documents (namespace, doc) VALUES (?1, ?2) ON CONFLICT (namespace) DO UPDATE SET doc = excluded.doc",
        params![ns, text],
    )
    .map_err(internal)?;
    Ok(())
}

fn is_empty(doc: &Value) -> bool {
    doc.as_object().is_some_and(Map::is_empty)
}

/// The sealed secret if `v` is a secret marker.
fn marker(v: &Value) -> Option<&str> {
    match v {
        Value::Object(m) if m.len() == 1 => m.get(SECRET)?.as_str(),
        _ => None,
    }
}

/// An object that is not a secret marker (the only kind a set merges into).
fn is_plain_object(v: &Value) -> bool {
    v.is_object() && marker(v).is_none()
}

/// Whether `v` has an object key that would make it look like a secret marker.
fn has_marker_key(v: &Value) -> bool {
    match v {
        Value::Object(m) => m.contains_key(SECRET) || m.values().any(has_marker_key),
        Value::Array(a) => a.iter().any(has_marker_key),
        _ => false,
    }
}

/// What a path leads to.
enum Found<'a> {
    /// The value at the path.
    Value(&'a Value),
    /// A secret at the first `depth` segments, at or above the path.
    Secret { sealed: &'a str, depth: usize },
    /// Nothing.
    Missing,
}

fn find<'a, S: AsRef<str>>(doc: &'a Value, segs: &[S]) -> Found<'a> {
    let mut cur = doc;
    for (depth, seg) in segs.iter().enumerate() {
        if let Some(sealed) = marker(cur) {
            return Found::Secret { sealed, depth };
        }
        match cur.as_object().and_then(|m| m.get(seg.as_ref())) {
            Some(v) => cur = v,
            None => return Found::Missing,
        }
    }
    match marker(cur) {
        Some(sealed) => Found::Secret { sealed, depth: segs.len() },
        None => Found::Value(cur),
    }
}

/// The value at `segs` with secrets masked; `None` when absent.
fn masked_at(doc: &Value, segs: &[String]) -> Option<Value> {
    if segs.is_empty() && is_empty(doc) {
        return None;
    }
    match find(doc, segs) {
        Found::Value(v) => Some(mask(v)),
        Found::Secret { .. } => Some(Value::String(MASK.to_string())),
        Found::Missing => None,
    }
}

/// `v` with every secret replaced by [`MASK`].
fn mask(v: &Value) -> Value {
    if marker(v).is_some() {
        return Value::String(MASK.to_string());
    }
    match v {
        Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), mask(v))).collect()),
        other => other.clone(),
    }
}

/// Decrypts the secret sealed (second argument) at a path (first argument).
type Opener<'a> = dyn FnMut(&[String], &str) -> Result<Value, Status> + 'a;

/// `v` (found at `path`) with every secret decrypted by `open(path, sealed)`.
fn reveal(v: &Value, path: &mut Vec<String>, open: &mut Opener<'_>) -> Result<Value, Status> {
    if let Some(sealed) = marker(v) {
        return open(path, sealed);
    }
    match v {
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, child) in m {
                path.push(k.clone());
                let revealed = reveal(child, path, open);
                path.pop();
                out.insert(k.clone(), revealed?);
            }
            Ok(Value::Object(out))
        }
        other => Ok(other.clone()),
    }
}

/// `v` as a plain object, replacing it with an empty one if it is anything else.
fn object_mut(v: &mut Value) -> &mut Map<String, Value> {
    if !is_plain_object(v) {
        *v = Value::Object(Map::new());
    }
    match v {
        Value::Object(m) => m,
        _ => unreachable!("the value was just made an object"),
    }
}

/// Sets `segs` of `doc` to `value`, deep-merging an object into an existing plain
/// object when `merge`; non-object parents on the way are replaced by objects.
fn apply_set(doc: &mut Value, segs: &[String], value: Value, merge: bool) {
    let Some((last, parents)) = segs.split_last() else {
        if merge {
            deep_merge(doc, value)
        } else {
            *doc = value
        }
        return;
    };
    let mut cur = doc;
    for seg in parents {
        cur = object_mut(cur).entry(seg.clone()).or_insert_with(|| Value::Object(Map::new()));
    }
    let parent = object_mut(cur);
    match parent.get_mut(last) {
        Some(existing) if merge => deep_merge(existing, value),
        _ => {
            parent.insert(last.clone(), value);
        }
    }
}

/// Merges `value` into `target`: objects into plain objects key by key, anything else
/// replaces.
fn deep_merge(target: &mut Value, value: Value) {
    match value {
        Value::Object(src) if is_plain_object(target) => {
            let dst = object_mut(target);
            for (k, v) in src {
                match dst.get_mut(&k) {
                    Some(existing) => deep_merge(existing, v),
                    None => {
                        dst.insert(k, v);
                    }
                }
            }
        }
        other => *target = other,
    }
}

/// Removes `segs` from `doc`.
fn apply_delete(doc: &mut Value, segs: &[String], path: &str) -> Result<(), Status> {
    let absent = || Status::not_found("config", format!("no config at {path:?}"));
    let inside_secret = || {
        Status::new(
            Code::FailedPrecondition,
            "config",
            format!("{path:?} is inside a secret; set or delete the secret as a whole"),
        )
    };
    let Some((last, parents)) = segs.split_last() else {
        if is_empty(doc) {
            return Err(absent());
        }
        *doc = Value::Object(Map::new());
        return Ok(());
    };
    let mut cur = doc;
    for seg in parents {
        if marker(cur).is_some() {
            return Err(inside_secret());
        }
        cur = cur.as_object_mut().and_then(|m| m.get_mut(seg)).ok_or_else(absent)?;
    }
    if marker(cur).is_some() {
        return Err(inside_secret());
    }
    cur.as_object_mut().and_then(|m| m.remove(last)).map(|_| ()).ok_or_else(absent)
}

/// Whether a write at `a` touches a watch of `b`: one is a prefix of the other.
fn overlaps(a: &[String], b: &[String]) -> bool {
    a.iter().zip(b).all(|(x, y)| x == y)
}

// --- Crypto ----------------------------------------------------------------------

fn random<const N: usize>() -> Result<[u8; N], Status> {
    <[u8; N]>::try_generate().map_err(|e| Status::internal("config", format!("random bytes: {e}")))
}

fn cipher(key: &[u8; KEY_LEN]) -> Aes256Gcm {
    Aes256Gcm::new(&Key::<Aes256Gcm>::from(*key))
}

/// What a namespace's data key is bound to.
fn key_aad(ns: &str) -> Vec<u8> {
    format!("micro-config-key\0{ns}").into_bytes()
}

/// What a secret is bound to: its namespace and path, so it cannot be moved.
fn value_aad<S: AsRef<str>>(ns: &str, path: &[S]) -> Vec<u8> {
    let path: Vec<&str> = path.iter().map(AsRef::as_ref).collect();
    format!("micro-config-value\0{ns}\0{}", path.join(".")).into_bytes()
}

/// Encrypts `plain` under a fresh random nonce: `nonce ‖ ciphertext ‖ tag`.
fn seal(cipher: &Aes256Gcm, aad: &[u8], plain: &[u8]) -> Result<Vec<u8>, Status> {
    let nonce = random::<NONCE_LEN>()?;
    let ct = cipher
        .encrypt(&nonce.into(), Payload { msg: plain, aad })
        .map_err(|_| Status::internal("config", "encryption failed"))?;
    let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    Ok(out)
}

/// Decrypts what [`seal`] produced; `Err` when it is not authentic.
fn open(cipher: &Aes256Gcm, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, ()> {
    if sealed.len() < NONCE_LEN {
        return Err(());
    }
    let (nonce, ct) = sealed.split_at(NONCE_LEN);
    let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| ())?;
    cipher.decrypt(&nonce.into(), Payload { msg: ct, aad }).map_err(|_| ())
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
    use serde_json::json;

    #[tokio::test]
    async fn conformance_in_memory() {
        micro_test::conformance::config::config(Arc::new(EmbeddedConfig::open(&DataDir::memory()).unwrap())).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conformance_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let config = Arc::new(EmbeddedConfig::open(&DataDir::new(dir.path())).unwrap());
        micro_test::conformance::config::config(config.clone()).await;
        // Repeatable against one backend.
        micro_test::conformance::config::config(config).await;
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
                let mut doc = load_doc(c, &ns)?;
                let a = doc["a"].clone();
                doc["b"] = a;
                save_doc(c, &ns, &doc)
            })
            .await
            .unwrap();
        assert_eq!(config.get("n", "a", true).await.unwrap(), Some(json!("secret-a")));
        assert_eq!(config.get("n", "b", true).await.unwrap_err().code(), Code::DataLoss);
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
