//! The auth service's signing keys: a [`Signer`] holds the current private key and the
//! retired keys still trusted; it signs [`Claims`] into tokens whose header names the key
//! (`kid`), and makes the [`Verifier`] and the [`PublicKeys`] services verify with.
//! Rotation ([`Signer::rotate`]) makes a new current key and keeps the old ones trusted
//! until their `not_after`, so tokens they signed stay valid until they expire.
//!
//! On disk ([`Signer::open`]), everything is mode 0600 and written atomically:
//!
//! | File | Content |
//! |---|---|
//! | `<dir>/<kid>.key` | the private key, PKCS#8 PEM (`openssl pkey -in <kid>.key -text` reads it) |
//! | `<dir>/keys.json` | `{"current":"<kid>","keys":[{"kid":"…","created":<unix s>,"not_after":<unix s or null>}]}` |
//!
//! Neither tokens nor keys are ever put in an error or a log line.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _};
use ed25519_dalek::{SigningKey, VerifyingKey};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use micro::auth::token::{Claims, PublicKey, PublicKeys, Verifier, now, valid_kid};
use micro_core::{Code, Status};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::fs;
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

/// The status id of every error of this module.
const ID: &str = "auth";

/// The index file of a key directory.
const INDEX: &str = "keys.json";

/// One key pair; the private half only as the PKCS#8 DER that `jsonwebtoken` signs with
/// (zeroized on drop).
struct KeyPair {
    kid: String,
    encoding: EncodingKey,
    public: VerifyingKey,
    created: u64,
}

impl KeyPair {
    fn from_signing(signing: &SigningKey, created: u64) -> KeyPair {
        // PKCS#8 v1 (RFC 8410) of an Ed25519 key is a fixed prefix and the 32-byte seed.
        const PREFIX: [u8; 16] =
            [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];
        let mut der = [0u8; 48];
        der[..16].copy_from_slice(&PREFIX);
        der[16..].copy_from_slice(signing.as_bytes());
        let encoding = EncodingKey::from_ed_der(&der);
        wipe(&mut der);
        let public = signing.verifying_key();
        KeyPair { kid: kid_of(&public), encoding, public, created }
    }
}

/// A fresh signing key from the OS RNG.
fn generate() -> Result<SigningKey, Status> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| Status::internal(ID, format!("no randomness for a signing key: {e}")))?;
    let signing = SigningKey::from_bytes(&seed);
    wipe(&mut seed);
    Ok(signing)
}

/// Overwrites secret bytes before they go out of scope.
fn wipe(bytes: &mut [u8]) {
    bytes.fill(0);
    std::hint::black_box(bytes);
}

/// The key id of a public key: the hex of its first 8 bytes (filename- and shell-safe).
fn kid_of(public: &VerifyingKey) -> String {
    crate::hex(&public.as_bytes()[..8])
}

/// A key as the signer holds it: the pair plus when it stops being trusted.
#[derive(Clone)]
struct Entry {
    pair: Arc<KeyPair>,
    not_after: Option<u64>,
}

/// What a signer holds: the current key and the retired keys still trusted.
#[derive(Clone)]
struct State {
    current: Entry,
    retired: Vec<Entry>,
}

impl State {
    fn all(&self) -> impl Iterator<Item = &Entry> {
        std::iter::once(&self.current).chain(&self.retired)
    }

    /// Splits off the retired keys whose `not_after` is before `now`.
    fn without_expired(&self, now: u64) -> (State, Vec<String>) {
        let (keep, drop): (Vec<Entry>, Vec<Entry>) =
            self.retired.iter().cloned().partition(|e| e.not_after.is_none_or(|t| t >= now));
        (State { current: self.current.clone(), retired: keep }, drop.into_iter().map(|e| e.pair.kid.clone()).collect())
    }

    fn index(&self) -> Index {
        Index {
            current: self.current.pair.kid.clone(),
            keys: self
                .all()
                .map(|e| IndexEntry { kid: e.pair.kid.clone(), created: e.pair.created, not_after: e.not_after })
                .collect(),
        }
    }
}

/// `keys.json`.
#[derive(Serialize, Deserialize)]
struct Index {
    current: String,
    keys: Vec<IndexEntry>,
}

#[derive(Serialize, Deserialize)]
struct IndexEntry {
    kid: String,
    created: u64,
    not_after: Option<u64>,
}

/// A private signing key plus the public keys still trusted (for rotation).
///
/// Shared by many tasks at once: signing takes a read lock just long enough to clone the
/// current key; rotation is serialized and swaps the state only after it is on disk.
pub struct Signer {
    dir: Option<PathBuf>,
    state: RwLock<State>,
    rotation: Mutex<()>,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state();
        let kids: Vec<&str> = state.all().map(|e| e.pair.kid.as_str()).collect();
        f.debug_struct("Signer").field("dir", &self.dir).field("kids", &kids).finish()
    }
}

impl Signer {
    /// Loads the keys under `dir` (creating the dir and a first key on first use: files with
    /// mode 0600), or fails with a clear Status.
    ///
    /// Retired keys past their `not_after` are dropped, from disk too. A malformed file is an
    /// error naming the file; a file readable by others than the owner is a warning.
    pub fn open(dir: &Path) -> Result<Signer, Status> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| io_error("creating the key directory", dir, &e))?;
        let index_path = dir.join(INDEX);
        let state = match fs::read(&index_path) {
            Ok(bytes) => {
                warn_if_open(&index_path);
                load(dir, &index_path, &bytes)?
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let signing = generate()?;
                let pair = KeyPair::from_signing(&signing, now());
                write_key(dir, &pair.kid, &signing)?;
                let state = State { current: Entry { pair: Arc::new(pair), not_after: None }, retired: Vec::new() };
                write_index(dir, &state.index())?;
                tracing::info!(dir = %dir.display(), kid = %state.current.pair.kid, "created the first token signing key");
                state
            }
            Err(e) => return Err(io_error("reading", &index_path, &e)),
        };
        let signer = Signer { dir: Some(dir.to_path_buf()), state: RwLock::new(state), rotation: Mutex::new(()) };
        signer.prune()?;
        Ok(signer)
    }

    /// Keys only in memory (tests, in-memory servers).
    pub fn ephemeral() -> Signer {
        let signing = generate().unwrap_or_else(|_| {
            // Only without a usable getrandom: two v4 UUIDs come from the OS RNG another way.
            let mut seed = [0u8; 32];
            seed[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
            seed[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
            let signing = SigningKey::from_bytes(&seed);
            wipe(&mut seed);
            signing
        });
        let current = Entry { pair: Arc::new(KeyPair::from_signing(&signing, now())), not_after: None };
        Signer { dir: None, state: RwLock::new(State { current, retired: Vec::new() }), rotation: Mutex::new(()) }
    }

    /// The id of the current signing key.
    pub fn current_kid(&self) -> String {
        self.state().current.pair.kid.clone()
    }

    /// Signs claims (EdDSA, header `kid` = the current key id).
    pub fn sign(&self, claims: &Claims) -> Result<String, Status> {
        let pair = self.state().current.pair.clone();
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(pair.kid.clone());
        jsonwebtoken::encode(&header, claims, &pair.encoding)
            .map_err(|e| Status::internal(ID, format!("signing a token: {e}")))
    }

    /// Makes a new current key; older keys stay trusted for verification for `keep` (enough
    /// for tokens they signed to expire, plus [`micro::auth::token::LEEWAY`]), then are dropped (from disk too).
    /// Returns the new kid.
    ///
    /// Keys already retired keep their own `not_after`. Servers rebuild their
    /// [`Verifier`] afterwards.
    pub fn rotate(&self, keep: Duration) -> Result<String, Status> {
        let _serial = self.rotation.lock().unwrap_or_else(PoisonError::into_inner);
        let old = self.state().clone();
        let at = now();
        let mut signing = generate()?;
        let mut pair = KeyPair::from_signing(&signing, at);
        // A kid is 64 bits of the public key: a clash is all but impossible, but would be fatal.
        while old.all().any(|e| e.pair.kid == pair.kid) {
            signing = generate()?;
            pair = KeyPair::from_signing(&signing, at);
        }
        let keep_secs = keep.as_secs().saturating_add(u64::from(keep.subsec_nanos() > 0));
        let mut retired = vec![Entry { pair: old.current.pair.clone(), not_after: Some(at.saturating_add(keep_secs)) }];
        retired.extend(old.retired.iter().cloned());
        let (next, dropped) =
            State { current: Entry { pair: Arc::new(pair), not_after: None }, retired }.without_expired(at);
        if let Some(dir) = &self.dir {
            write_key(dir, &next.current.pair.kid, &signing)?;
            write_index(dir, &next.index())?;
        }
        let kid = next.current.pair.kid.clone();
        *self.state.write().unwrap_or_else(PoisonError::into_inner) = next;
        self.remove_key_files(&dropped);
        tracing::info!(kid = %kid, retired = %old.current.pair.kid, keep_secs, "rotated the token signing key");
        Ok(kid)
    }

    /// Drops the retired keys whose `not_after` has passed (from disk too); returns their kids.
    /// [`Signer::open`] and [`Signer::rotate`] do this too.
    pub fn prune(&self) -> Result<Vec<String>, Status> {
        self.prune_at(now())
    }

    /// [`Signer::prune`] as if the time were `now` (unix seconds).
    pub fn prune_at(&self, now: u64) -> Result<Vec<String>, Status> {
        let _serial = self.rotation.lock().unwrap_or_else(PoisonError::into_inner);
        let (next, dropped) = self.state().without_expired(now);
        if dropped.is_empty() {
            return Ok(dropped);
        }
        if let Some(dir) = &self.dir {
            write_index(dir, &next.index())?;
        }
        *self.state.write().unwrap_or_else(PoisonError::into_inner) = next;
        self.remove_key_files(&dropped);
        tracing::info!(kids = ?dropped, "dropped expired token signing keys");
        Ok(dropped)
    }

    /// The verifier for the currently trusted public keys.
    pub fn verifier(&self) -> Verifier {
        let state = self.state();
        Verifier::trusting(state.all().map(|e| (e.pair.kid.clone(), e.pair.public, e.not_after)))
    }

    /// Public keys as JSON (a JWKS-like document services fetch to verify locally); the
    /// current key first.
    pub fn public_keys(&self) -> PublicKeys {
        let state = self.state();
        PublicKeys {
            keys: state
                .all()
                .map(|e| PublicKey {
                    kid: e.pair.kid.clone(),
                    x: URL_SAFE_NO_PAD.encode(e.pair.public.as_bytes()),
                    not_after: e.not_after,
                })
                .collect(),
        }
    }

    fn state(&self) -> std::sync::RwLockReadGuard<'_, State> {
        // The state is replaced whole, so a panic elsewhere cannot leave it half-written.
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn remove_key_files(&self, kids: &[String]) {
        let Some(dir) = &self.dir else { return };
        for kid in kids {
            let path = dir.join(format!("{kid}.key"));
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(path = %path.display(), error = %e, "could not remove an expired key file"),
            }
        }
    }
}

/// Reads `keys.json` and the key files it names.
fn load(dir: &Path, index_path: &Path, bytes: &[u8]) -> Result<State, Status> {
    let malformed =
        |why: &str| Status::new(Code::DataLoss, ID, format!("{} is malformed: {why}", index_path.display()));
    let index: Index = serde_json::from_slice(bytes).map_err(|_| malformed("not a key index"))?;
    let mut current = None;
    let mut retired = Vec::new();
    for entry in index.keys {
        if !valid_kid(&entry.kid) {
            return Err(malformed("bad key id"));
        }
        if entry.kid == index.current {
            if current.is_some() || entry.not_after.is_some() {
                return Err(malformed("the current key is listed twice or retired"));
            }
        } else if entry.not_after.is_none() || retired.iter().any(|e: &Entry| e.pair.kid == entry.kid) {
            return Err(malformed("a retired key has no not_after or is listed twice"));
        }
        let pair = Arc::new(load_key(dir, &entry.kid, entry.created)?);
        let is_current = entry.kid == index.current;
        let e = Entry { pair, not_after: entry.not_after };
        if is_current {
            current = Some(e);
        } else {
            retired.push(e);
        }
    }
    let current = current.ok_or_else(|| malformed("the current key is not listed"))?;
    Ok(State { current, retired })
}

/// Reads `<dir>/<kid>.key`; errors name the file, never its content.
fn load_key(dir: &Path, kid: &str, created: u64) -> Result<KeyPair, Status> {
    let path = dir.join(format!("{kid}.key"));
    let malformed =
        |why: &str| Status::new(Code::DataLoss, ID, format!("key file {} is malformed: {why}", path.display()));
    let text = fs::read_to_string(&path).map_err(|e| match e.kind() {
        io::ErrorKind::InvalidData => malformed("not PEM text"),
        _ => io_error("reading", &path, &e),
    })?;
    warn_if_open(&path);
    let signing = SigningKey::from_pkcs8_pem(&text).map_err(|_| malformed("not a PKCS#8 Ed25519 private key"))?;
    let pair = KeyPair::from_signing(&signing, created);
    if pair.kid != kid {
        return Err(malformed("the key does not match its key id"));
    }
    Ok(pair)
}

fn write_key(dir: &Path, kid: &str, signing: &SigningKey) -> Result<(), Status> {
    let pem = signing
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| Status::internal(ID, format!("encoding a signing key: {e}")))?;
    write_private(&dir.join(format!("{kid}.key")), pem.as_bytes())
}

fn write_index(dir: &Path, index: &Index) -> Result<(), Status> {
    let mut json =
        serde_json::to_vec_pretty(index).map_err(|e| Status::internal(ID, format!("encoding {INDEX}: {e}")))?;
    json.push(b'\n');
    write_private(&dir.join(INDEX), &json)
}

/// Writes a file with mode 0600 atomically: a temporary file in the same directory, synced,
/// then renamed over the target.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), Status> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", uuid::Uuid::new_v4().simple()));
    let written = (|| {
        let mut file = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        // Makes the rename durable; not every file system supports syncing a directory.
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok::<(), io::Error>(())
    })();
    written.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io_error("writing", path, &e)
    })
}

fn warn_if_open(path: &Path) {
    if let Ok(meta) = fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(path = %path.display(), mode = %format!("{mode:o}"), "key file is accessible to others than its owner; expected mode 600");
        }
    }
}

fn io_error(what: &str, path: &Path, e: &io::Error) -> Status {
    Status::internal(ID, format!("{what} {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use micro::auth::token::{ISSUER, LEEWAY};

    fn claims(ttl: u64) -> Claims {
        let iat = now();
        Claims {
            sub: "acc-1".into(),
            name: "alice".into(),
            ns: "micro".into(),
            typ: "user".into(),
            scopes: vec!["admin".into()],
            iat,
            exp: iat + ttl,
            iss: ISSUER.into(),
            aud: None,
            verified: false,
        }
    }

    fn b64(json: &serde_json::Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(json).unwrap())
    }

    fn assert_denied(r: Result<Claims, Status>, detail: &str) {
        let e = r.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
        assert_eq!(e.detail(), detail);
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn sign_verify_roundtrip() {
        let signer = Signer::ephemeral();
        let c = claims(300);
        let token = signer.sign(&c).unwrap();
        assert_eq!(signer.verifier().verify(&token).unwrap(), c);
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.alg, Algorithm::EdDSA);
        assert_eq!(header.kid.as_deref(), Some(signer.current_kid().as_str()));
    }

    #[test]
    fn expired_refused_beyond_leeway() {
        let signer = Signer::ephemeral();
        let mut c = claims(0);
        c.exp = now() - 10;
        let token = signer.sign(&c).unwrap();
        // Within the leeway it passes; past it, not (also once the verifier has seen it).
        let v = signer.verifier();
        assert!(v.verify(&token).is_ok());
        assert_denied(v.verify_at(&token, c.exp + LEEWAY + 1), "token expired");
        // A token it has seen, altered, is checked whole again.
        let mut altered = token.clone();
        let last = altered.pop().unwrap();
        altered.push(if last == 'A' { 'B' } else { 'A' });
        assert!(v.verify(&altered).is_err());
        c.exp = now() - LEEWAY - 1;
        assert_denied(signer.verifier().verify(&signer.sign(&c).unwrap()), "token expired");
    }

    #[test]
    fn other_signer_refused() {
        let a = Signer::ephemeral();
        let b = Signer::ephemeral();
        let token = b.sign(&claims(300)).unwrap();
        assert_denied(a.verifier().verify(&token), "token signed by an unknown key");
    }

    #[test]
    fn same_kid_other_key_refused() {
        // A forger who reuses the kid of a trusted key still fails the signature check.
        let a = Signer::ephemeral();
        let b = Signer::ephemeral();
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(a.current_kid());
        let pair = b.state().current.pair.clone();
        let token = jsonwebtoken::encode(&header, &claims(300), &pair.encoding).unwrap();
        assert_denied(a.verifier().verify(&token), "invalid token signature");
    }

    #[test]
    fn tampered_payload_refused() {
        let signer = Signer::ephemeral();
        let token = signer.sign(&claims(300)).unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        let mut c = claims(300);
        c.scopes = vec!["admin".into(), "root".into()];
        let forged = format!("{}.{}.{}", parts[0], b64(&serde_json::to_value(&c).unwrap()), parts[2]);
        assert_denied(signer.verifier().verify(&forged), "invalid token signature");
        let mut sig = parts[2].to_string();
        sig.replace_range(0..1, if sig.starts_with('A') { "B" } else { "A" });
        assert_denied(signer.verifier().verify(&format!("{}.{}.{sig}", parts[0], parts[1])), "invalid token signature");
    }

    #[test]
    fn other_algorithms_refused() {
        let signer = Signer::ephemeral();
        let kid = signer.current_kid();
        let payload = b64(&serde_json::to_value(claims(300)).unwrap());
        for alg in ["none", "None", "HS256", "RS256", "ES256", ""] {
            let header = b64(&serde_json::json!({"alg": alg, "typ": "JWT", "kid": kid}));
            for sig in ["", "c2lnbmF0dXJl"] {
                let token = format!("{header}.{payload}.{sig}");
                assert_denied(signer.verifier().verify(&token), "token algorithm not accepted");
            }
        }
        // Key confusion: HS256 with the public key as the HMAC secret.
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(kid);
        let public = signer.state().current.pair.public;
        let token = jsonwebtoken::encode(&header, &claims(300), &EncodingKey::from_secret(public.as_bytes())).unwrap();
        assert_denied(signer.verifier().verify(&token), "token algorithm not accepted");
        let x = signer.public_keys().keys[0].x.clone();
        let token = jsonwebtoken::encode(&header, &claims(300), &EncodingKey::from_secret(x.as_bytes())).unwrap();
        assert_denied(signer.verifier().verify(&token), "token algorithm not accepted");
    }

    #[test]
    fn unknown_or_missing_kid_refused() {
        let signer = Signer::ephemeral();
        let token = signer.sign(&claims(300)).unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        let body = format!("{}.{}", parts[1], parts[2]);
        let h = b64(&serde_json::json!({"alg": "EdDSA", "kid": "0011223344556677"}));
        assert_denied(signer.verifier().verify(&format!("{h}.{body}")), "token signed by an unknown key");
        let h = b64(&serde_json::json!({"alg": "EdDSA"}));
        assert_denied(signer.verifier().verify(&format!("{h}.{body}")), "token has no key id");
        let h = b64(&serde_json::json!({"alg": "EdDSA", "kid": signer.current_kid(), "crit": ["exp"]}));
        assert_denied(signer.verifier().verify(&format!("{h}.{body}")), "token has critical header extensions");
    }

    #[test]
    fn garbage_refused_without_echo() {
        let signer = Signer::ephemeral();
        let v = signer.verifier();
        let secretish = "not-a-token-SECRET";
        for t in [secretish, "a.b.c", "..", "e30.e30.e30", &"x".repeat(8 * 1024 + 1)] {
            let e = v.verify(t).unwrap_err();
            assert_eq!(e.code(), Code::Unauthenticated);
            assert!(!e.detail().contains("SECRET") && e.detail().len() < 60, "{e:?}");
        }
        assert_denied(v.verify(""), "missing token");
        let token = signer.sign(&claims(300)).unwrap();
        let mut c = claims(300);
        c.iss = "evil".into();
        assert_denied(v.verify(&signer.sign(&c).unwrap()), "token from another issuer");
        assert!(!format!("{signer:?}{v:?}").contains(&token));
    }

    #[test]
    fn rotation_keeps_old_tokens_until_not_after() {
        let signer = Signer::ephemeral();
        let old_kid = signer.current_kid();
        let old = signer.sign(&claims(3600)).unwrap();
        let new_kid = signer.rotate(Duration::from_secs(600)).unwrap();
        assert_ne!(old_kid, new_kid);
        assert_eq!(signer.current_kid(), new_kid);
        let fresh = signer.sign(&claims(3600)).unwrap();
        assert_eq!(jsonwebtoken::decode_header(&fresh).unwrap().kid, Some(new_kid.clone()));

        let keys = signer.public_keys();
        assert_eq!(keys.keys.len(), 2);
        assert_eq!((keys.keys[0].kid.as_str(), keys.keys[0].not_after), (new_kid.as_str(), None));
        let not_after = keys.keys[1].not_after.unwrap();
        assert!(not_after >= now() + 599 && not_after <= now() + 601);

        let v = signer.verifier();
        assert!(v.verify(&old).is_ok());
        assert!(v.verify_at(&old, not_after).is_ok());
        assert_denied(v.verify_at(&old, not_after + 1), "token signed by a retired key");
        assert!(v.verify_at(&fresh, not_after + 1).is_ok());
        // The same through the published document.
        let published = Verifier::new(&keys).unwrap();
        assert!(published.verify(&old).is_ok());
        assert_denied(published.verify_at(&old, not_after + 1), "token signed by a retired key");

        // After not_after the signer drops the key; verifiers built then no longer know it.
        assert!(signer.prune().unwrap().is_empty());
        assert_eq!(signer.prune_at(not_after + 1).unwrap(), vec![old_kid]);
        assert_eq!(signer.public_keys().keys.len(), 1);
        assert_denied(signer.verifier().verify(&old), "token signed by an unknown key");
        assert!(signer.verifier().verify(&fresh).is_ok());
    }

    #[test]
    fn rotate_zero_retires_at_once() {
        let signer = Signer::ephemeral();
        let old = signer.sign(&claims(3600)).unwrap();
        signer.rotate(Duration::ZERO).unwrap();
        let not_after = signer.public_keys().keys[1].not_after.unwrap();
        assert!(not_after <= now());
        assert!(signer.verifier().verify_at(&old, not_after).is_ok());
        assert_denied(signer.verifier().verify_at(&old, not_after + 1), "token signed by a retired key");
    }

    #[test]
    fn rotation_on_disk_drops_expired_key_files() {
        let dir = TempDir::new();
        let signer = Signer::open(dir.path()).unwrap();
        let first = signer.current_kid();
        let old = signer.sign(&claims(3600)).unwrap();
        let second = signer.rotate(Duration::from_secs(100)).unwrap();
        let third = signer.rotate(Duration::from_secs(3600)).unwrap();
        assert_eq!(mode(&dir.path().join(format!("{third}.key"))), 0o600);
        assert_eq!(mode(&dir.path().join(INDEX)), 0o600);

        // Reopening keeps the rotation state.
        let reopened = Signer::open(dir.path()).unwrap();
        assert_eq!(reopened.current_kid(), third);
        assert_eq!(reopened.public_keys(), signer.public_keys());
        assert!(reopened.verifier().verify(&old).is_ok());

        // `first` is gone once its not_after has passed, from disk too.
        let t = signer.public_keys().keys.iter().find(|k| k.kid == first).unwrap().not_after.unwrap();
        assert_eq!(signer.prune_at(t + 1).unwrap(), vec![first.clone()]);
        assert!(!dir.path().join(format!("{first}.key")).exists());
        assert!(dir.path().join(format!("{second}.key")).exists());
        let reopened = Signer::open(dir.path()).unwrap();
        let kids: Vec<String> = reopened.public_keys().keys.into_iter().map(|k| k.kid).collect();
        assert_eq!(kids, vec![third, second]);
        assert_denied(reopened.verifier().verify(&old), "token signed by an unknown key");
    }

    #[test]
    fn open_twice_same_keys_and_mode_0600() {
        let dir = TempDir::new();
        let keys_dir = dir.path().join("data/keys");
        let a = Signer::open(&keys_dir).unwrap();
        let token = a.sign(&claims(300)).unwrap();
        let b = Signer::open(&keys_dir).unwrap();
        assert_eq!(a.current_kid(), b.current_kid());
        assert_eq!(a.public_keys(), b.public_keys());
        assert!(b.verifier().verify(&token).is_ok());
        assert_eq!(b.sign(&claims(300)).unwrap().split('.').next(), token.split('.').next());

        let key = keys_dir.join(format!("{}.key", a.current_kid()));
        assert_eq!(mode(&key), 0o600);
        assert_eq!(mode(&keys_dir.join(INDEX)), 0o600);
        assert_eq!(mode(&keys_dir), 0o700);
        assert!(fs::read_to_string(&key).unwrap().starts_with("-----BEGIN PRIVATE KEY-----"));
        // No temporary files left behind.
        let names: Vec<String> =
            fs::read_dir(&keys_dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn wide_permissions_only_warn() {
        let dir = TempDir::new();
        let signer = Signer::open(dir.path()).unwrap();
        let key = dir.path().join(format!("{}.key", signer.current_kid()));
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(Signer::open(dir.path()).unwrap().public_keys(), signer.public_keys());
    }

    #[test]
    fn malformed_files_give_clear_errors() {
        let dir = TempDir::new();
        let signer = Signer::open(dir.path()).unwrap();
        let key = dir.path().join(format!("{}.key", signer.current_kid()));

        fs::write(&key, "SECRET-GARBAGE").unwrap();
        let e = Signer::open(dir.path()).unwrap_err();
        assert_eq!(e.code(), Code::DataLoss);
        assert!(e.detail().contains(&key.display().to_string()), "{e:?}");
        assert!(e.detail().contains("malformed") && !e.detail().contains("SECRET"), "{e:?}");

        // A valid key that is not the one its name says.
        let other = TempDir::new();
        let o = Signer::open(other.path()).unwrap();
        fs::copy(other.path().join(format!("{}.key", o.current_kid())), &key).unwrap();
        let e = Signer::open(dir.path()).unwrap_err();
        assert!(e.detail().contains("does not match its key id"), "{e:?}");

        fs::remove_file(&key).unwrap();
        let e = Signer::open(dir.path()).unwrap_err();
        assert!(e.detail().contains(&key.display().to_string()), "{e:?}");

        let index = dir.path().join(INDEX);
        fs::write(&index, "{not json").unwrap();
        let e = Signer::open(dir.path()).unwrap_err();
        assert_eq!(e.code(), Code::DataLoss);
        assert!(e.detail().contains(&index.display().to_string()), "{e:?}");

        fs::write(&index, r#"{"current":"../x","keys":[{"kid":"../x","created":0,"not_after":null}]}"#).unwrap();
        assert!(Signer::open(dir.path()).unwrap_err().detail().contains("bad key id"));
    }

    #[test]
    fn public_keys_json_roundtrip() {
        let signer = Signer::ephemeral();
        signer.rotate(Duration::from_secs(60)).unwrap();
        let keys = signer.public_keys();
        let json = serde_json::to_string(&keys).unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["keys"][0]["not_after"], serde_json::Value::Null);
        assert!(v["keys"][1]["not_after"].is_u64());
        assert_eq!(URL_SAFE_NO_PAD.decode(v["keys"][0]["x"].as_str().unwrap()).unwrap().len(), 32);
        let back: PublicKeys = serde_json::from_str(&json).unwrap();
        assert_eq!(back, keys);
        let c = claims(300);
        assert_eq!(Verifier::new(&back).unwrap().verify(&signer.sign(&c).unwrap()).unwrap(), c);
    }

    #[test]
    fn bad_public_keys_refused() {
        let good = Signer::ephemeral().public_keys().keys.remove(0);
        for (kid, x) in [("a/b", good.x.as_str()), ("k", "short"), ("k", "!!!"), ("k", &"A".repeat(44))] {
            let keys = PublicKeys { keys: vec![PublicKey { kid: kid.into(), x: x.into(), not_after: None }] };
            assert_eq!(Verifier::new(&keys).unwrap_err().code(), Code::InvalidArgument, "{kid} {x}");
        }
        let twice = PublicKeys { keys: vec![good.clone(), good] };
        assert!(Verifier::new(&twice).is_err());
        assert!(Verifier::new(&PublicKeys { keys: vec![] }).unwrap().verify("a.b.c").is_err());
    }

    #[test]
    fn concurrent_sign_and_rotate() {
        let signer = Signer::ephemeral();
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..50 {
                        let token = signer.sign(&claims(300)).unwrap();
                        // Every token verifies with a verifier taken after it was signed.
                        assert!(signer.verifier().verify(&token).is_ok());
                    }
                });
            }
            s.spawn(|| {
                for _ in 0..5 {
                    signer.rotate(Duration::from_secs(600)).unwrap();
                }
            });
        });
        assert_eq!(signer.public_keys().keys.len(), 6);
    }

    fn _assert_send_sync() {
        fn is<T: Send + Sync>() {}
        is::<Signer>();
        is::<Verifier>();
    }

    /// A temporary directory removed on drop (no extra dev-dependency).
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> TempDir {
            let p = std::env::temp_dir().join(format!("micro-token-{}", uuid::Uuid::new_v4().simple()));
            fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

#[cfg(test)]
mod fuzz {
    //! Randomised token strings (a stable-toolchain complement to `fuzz/`): verification
    //! never panics and never accepts anything it did not sign.
    use super::*;

    #[test]
    fn arbitrary_tokens_are_refused_without_panicking() {
        let signer = Signer::ephemeral();
        let verifier = signer.verifier();
        let claims = Claims {
            sub: "a".into(),
            name: "a".into(),
            ns: "micro".into(),
            typ: "user".into(),
            scopes: vec![],
            iat: now(),
            exp: now() + 60,
            iss: "micro".into(),
            aud: None,
            verified: false,
        };
        let good = signer.sign(&claims).expect("signs");
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        const PIECES: [&str; 10] = [".", "e", "yJ", "A", "-", "_", "=", "\u{0}", "é", "eyJhbGciOiJub25lIn0"];
        for i in 0..3_000 {
            let token: String = if i % 2 == 0 {
                // Mutate the good token: flip, cut or splice one place.
                let mut b = good.clone().into_bytes();
                let at = (next() % b.len() as u64) as usize;
                match next() % 3 {
                    0 => b[at] = b"AQ.-_x"[(next() % 6) as usize],
                    1 => b.truncate(at),
                    _ => b.insert(at, b'.'),
                }
                String::from_utf8_lossy(&b).into_owned()
            } else {
                (0..(next() % 16)).map(|_| PIECES[(next() % PIECES.len() as u64) as usize]).collect()
            };
            if token == good {
                continue;
            }
            if let Ok(c) = verifier.verify(&token) {
                // Only a change that leaves the signed bytes intact may pass.
                assert_eq!(c, claims, "accepted a different token: {token:?}");
            }
        }
    }
}
