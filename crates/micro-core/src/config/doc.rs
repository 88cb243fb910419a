//! The storage-independent half of a config backend, shared so that every backend
//! stores documents and seals secrets byte for byte alike: path segments, merging and
//! deleting, masking, and the secrets envelope.
//!
//! A backend keeps, per namespace, one JSON document and (once a secret is set) one
//! data key. In the stored document a secret is the marker `{"$secret": base64(nonce ‖
//! ciphertext ‖ tag)}`: the value's JSON sealed with AES-256-GCM under the namespace's
//! data key, bound to its namespace and path. The data key is stored sealed the same
//! way under the server key (32 bytes that every node sharing the storage must have),
//! bound to its namespace. A backend's part is to load and save those two under a lock
//! per namespace and to feed watchers.
//!
//! A secret is a leaf: setting anything at or under it replaces it, and deleting inside
//! it is refused. Setting under a value that is not an object (a string, a number, a
//! secret) replaces that value with an object.

use super::{Change, MASK, MAX_VALUE, parse_path};
use crate::{Code, Status};
use aes_gcm::aead::{Aead, Generate, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::Mutex;

/// The key of the marker object that stands for a secret in a stored document.
pub const SECRET: &str = "$secret";
/// Bytes of an AES-256 key: the server key and every data key.
pub const KEY_LEN: usize = 32;
/// Bytes of an AES-GCM nonce.
const NONCE_LEN: usize = 12;
/// The service id of config errors.
const ID: &str = "config";

/// An AES-256 key.
pub type AesKey = [u8; KEY_LEN];

/// The segments of a dot path, as [`parse_path`] checks them.
pub fn segments(path: &str) -> Result<Vec<String>, Status> {
    Ok(parse_path(path)?.into_iter().map(str::to_string).collect())
}

/// Checks a set of `value` at `path` (`segs`): its size, no reserved key, and only a
/// plain object for the whole document. Returns the value as JSON, the plaintext of a
/// secret.
pub fn check_set(path: &str, segs: &[String], value: &Value, secret: bool) -> Result<Vec<u8>, Status> {
    let plain = serde_json::to_vec(value).map_err(|e| Status::bad_request(ID, format!("value: {e}")))?;
    if plain.len() > MAX_VALUE {
        return Err(Status::bad_request(
            ID,
            format!("value of {path:?} is {} bytes; the limit is {MAX_VALUE}", plain.len()),
        ));
    }
    if has_marker_key(value) {
        return Err(Status::bad_request(ID, format!("{SECRET:?} is reserved and cannot be an object key")));
    }
    if segs.is_empty() && (secret || !value.is_object()) {
        return Err(Status::bad_request(
            ID,
            "the whole document must be set to a plain object; set a path to store other values or secrets",
        ));
    }
    Ok(plain)
}

/// A stored document from its text; `DataLoss` when it is not JSON.
pub fn parse_doc(ns: &str, text: &str) -> Result<Value, Status> {
    serde_json::from_str(text)
        .map_err(|e| Status::new(Code::DataLoss, ID, format!("document of namespace {ns:?}: {e}")))
}

/// The text a document is stored as.
pub fn doc_text(doc: &Value) -> Result<String, Status> {
    serde_json::to_string(doc).map_err(|e| Status::internal(ID, format!("document: {e}")))
}

/// An empty document: the document of a namespace nothing was set in.
pub fn empty() -> Value {
    Value::Object(Map::new())
}

/// Whether `doc` is empty (reads as absent).
pub fn is_empty(doc: &Value) -> bool {
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
pub fn masked_at(doc: &Value, segs: &[String]) -> Option<Value> {
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

/// The value at `segs` of namespace `ns`'s document, as [`Config::get`](super::Config::get)
/// answers: secrets masked, or with `secrets` decrypted under the data key that
/// `data_key` loads (called at most once, and only when a secret is met).
pub fn read(
    doc: &Value,
    ns: &str,
    segs: &[String],
    secrets: bool,
    mut data_key: impl FnMut() -> Result<Option<AesKey>, Status>,
) -> Result<Option<Value>, Status> {
    if !secrets {
        return Ok(masked_at(doc, segs));
    }
    if segs.is_empty() && is_empty(doc) {
        return Ok(None);
    }
    let mut cipher = None;
    let mut open = |path: &[String], sealed: &str| -> Result<Value, Status> {
        let cipher = match &mut cipher {
            Some(c) => c,
            None => {
                let key = data_key()?.ok_or_else(|| lost(ns, path, "no key for this namespace"))?;
                cipher.insert(aes(&key))
            }
        };
        open_secret(cipher, ns, path, sealed)
    };
    match find(doc, segs) {
        Found::Missing => Ok(None),
        Found::Value(v) => reveal(v, &mut segs.to_vec(), &mut open).map(Some),
        Found::Secret { sealed, depth } => {
            let plain = open(&segs[..depth], sealed)?;
            match find(&plain, &segs[depth..]) {
                Found::Value(v) => Ok(Some(v.clone())),
                _ => Ok(None),
            }
        }
    }
}

/// A secret that cannot be read.
fn lost(ns: &str, path: &[String], what: &str) -> Status {
    Status::new(Code::DataLoss, ID, format!("secret {:?} of namespace {ns:?}: {what}", path.join(".")))
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
/// object when `merge` (every set but a secret's); non-object parents on the way are
/// replaced by objects.
pub fn apply_set(doc: &mut Value, segs: &[String], value: Value, merge: bool) {
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

/// Removes `segs` (written `path`) from `doc`: `NotFound` when absent,
/// `FailedPrecondition` inside a secret.
pub fn apply_delete(doc: &mut Value, segs: &[String], path: &str) -> Result<(), Status> {
    let absent = || Status::not_found(ID, format!("no config at {path:?}"));
    let inside_secret = || {
        Status::new(
            Code::FailedPrecondition,
            ID,
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
pub fn overlaps(a: &[String], b: &[String]) -> bool {
    a.iter().zip(b).all(|(x, y)| x == y)
}

/// A committed write, as a backend hands it to its watchers.
#[derive(Clone, Debug)]
pub struct Committed {
    /// The namespace written.
    pub namespace: String,
    /// The path written.
    pub path: String,
    /// The segments of `path`.
    pub segs: Vec<String>,
    /// The document after the write (secrets sealed): whole, or, for a write under one
    /// top-level key, at least that key's part (a watch of the root then reads afresh).
    pub doc: Value,
}

impl Committed {
    /// The change a watch of `segs` in `namespace` sees, if the write touches it.
    pub fn change_for(&self, namespace: &str, segs: &[String]) -> Option<Change> {
        if self.namespace != namespace || !overlaps(&self.segs, segs) {
            return None;
        }
        Some(Change { path: self.path.clone(), value: masked_at(&self.doc, segs).unwrap_or(Value::Null) })
    }
}

// --- Crypto ----------------------------------------------------------------------

/// `N` random bytes from the operating system.
pub fn random<const N: usize>() -> Result<[u8; N], Status> {
    <[u8; N]>::try_generate().map_err(|e| Status::internal(ID, format!("random bytes: {e}")))
}

fn aes(key: &AesKey) -> Aes256Gcm {
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
        .map_err(|_| Status::internal(ID, "encryption failed"))?;
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

/// The marker standing for `plain` (a value's JSON) as a secret at `segs` of
/// namespace `ns`, sealed under the namespace's data key.
pub fn seal_secret(data_key: &AesKey, ns: &str, segs: &[String], plain: &[u8]) -> Result<Value, Status> {
    let sealed = seal(&aes(data_key), &value_aad(ns, segs), plain)?;
    let mut m = Map::new();
    m.insert(SECRET.to_string(), Value::String(BASE64.encode(sealed)));
    Ok(Value::Object(m))
}

/// Decrypts a marker [`seal_secret`] made for `segs` of namespace `ns` under `data_key`:
/// for stores other than a config document that keep values sealed the same way.
pub fn open_sealed(data_key: &AesKey, ns: &str, segs: &[String], marker: &Value) -> Result<Value, Status> {
    let sealed = marker.get(SECRET).and_then(Value::as_str).ok_or_else(|| lost(ns, segs, "not a sealed value"))?;
    open_secret(&aes(data_key), ns, segs, sealed)
}

/// Decrypts the secret `sealed` (a marker's content) at `path` of namespace `ns`.
fn open_secret(cipher: &Aes256Gcm, ns: &str, path: &[String], sealed: &str) -> Result<Value, Status> {
    let sealed = BASE64.decode(sealed).map_err(|_| lost(ns, path, "not base64"))?;
    let plain = open(cipher, &value_aad(ns, path), &sealed).map_err(|_| lost(ns, path, "cannot decrypt"))?;
    serde_json::from_slice(&plain).map_err(|_| lost(ns, path, "not JSON"))
}

/// The data keys of the namespaces, sealed under the server key, with a cache of those
/// known to be committed (a namespace's data key never changes once stored).
pub struct DataKeys {
    server: Aes256Gcm,
    /// Says how the server key may have gone wrong, for the error when a data key
    /// cannot be decrypted.
    hint: &'static str,
    cache: Mutex<HashMap<String, AesKey>>,
}

impl DataKeys {
    /// Data keys sealed under `server_key`; `hint` ends the error when one cannot be
    /// decrypted (like "was server.key replaced?").
    pub fn new(server_key: &AesKey, hint: &'static str) -> DataKeys {
        DataKeys { server: aes(server_key), hint, cache: Mutex::new(HashMap::new()) }
    }

    /// The data key of `ns` if it is known to be committed.
    pub fn cached(&self, ns: &str) -> Option<AesKey> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).get(ns).copied()
    }

    /// Remembers the committed data key of `ns`.
    pub fn remember(&self, ns: &str, key: AesKey) {
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).insert(ns.to_string(), key);
    }

    /// A new random data key for `ns` and its sealed form, to store. Remember it only
    /// once stored.
    pub fn create(&self, ns: &str) -> Result<(AesKey, Vec<u8>), Status> {
        let key = random::<KEY_LEN>()?;
        let sealed = seal(&self.server, &key_aad(ns), &key)?;
        Ok((key, sealed))
    }

    /// The data key of `ns` from its stored, `sealed` form (and remembers it): `DataLoss`
    /// when it was sealed under another server key or is corrupt.
    pub fn unseal(&self, ns: &str, sealed: &[u8]) -> Result<AesKey, Status> {
        let plain = open(&self.server, &key_aad(ns), sealed).map_err(|()| {
            Status::new(
                Code::DataLoss,
                ID,
                format!("cannot decrypt the secrets key of namespace {ns:?}: {}", self.hint),
            )
        })?;
        let key: AesKey = plain
            .try_into()
            .map_err(|_| Status::new(Code::DataLoss, ID, format!("the secrets key of namespace {ns:?} is corrupt")))?;
        self.remember(ns, key);
        Ok(key)
    }
}

impl std::fmt::Debug for DataKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataKeys").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn segs(p: &str) -> Vec<String> {
        segments(p).unwrap_or_default()
    }

    #[test]
    fn secrets_round_trip_and_stay_bound() {
        let keys = DataKeys::new(&[1; KEY_LEN], "hint");
        let (key, sealed) = keys.create("ns").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(keys.unseal("ns", &sealed).ok(), Some(key));
        assert_eq!(keys.unseal("other", &sealed).map_err(|e| e.code()), Err(Code::DataLoss), "bound to its namespace");
        let err = DataKeys::new(&[2; KEY_LEN], "was it replaced?").unseal("ns", &sealed).err();
        assert!(err.is_some_and(|e| e.detail().contains("was it replaced?")));

        let marker = seal_secret(&key, "ns", &segs("a.b"), b"\"pw\"").unwrap_or_else(|e| panic!("{e}"));
        let mut doc = empty();
        apply_set(&mut doc, &segs("a.b"), marker.clone(), false);
        assert_eq!(masked_at(&doc, &segs("a")), Some(json!({"b": MASK})));
        let found = read(&doc, "ns", &segs("a"), true, || Ok(Some(key)));
        assert_eq!(found.ok(), Some(Some(json!({"b": "pw"}))));
        // Moved to another path, it no longer opens.
        apply_set(&mut doc, &segs("c"), marker, false);
        let err = read(&doc, "ns", &segs("c"), true, || Ok(Some(key))).err();
        assert_eq!(err.map(|e| e.code()), Some(Code::DataLoss));
    }
}
