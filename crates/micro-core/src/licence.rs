//! Signed licences for the self-hosted platform, verified offline.
//!
//! A licence names a customer and the paid features they may use (`team`, `billing`,
//! `multi-node`, `marketplace`, `sso`, …) until a date, plus a grace period after it. An
//! issuer signs it with an Ed25519 key; a server trusts the vendor's public key, built
//! into the binary ([`VENDOR_PUBLIC_KEY`]), and any others its operator lists in
//! `MICRO_LICENSE_KEYS` (for operators who run their own issuer, and for tests).
//!
//! The file is a small JSON document:
//!
//! ```json
//! {
//!   "format": "micro-licence-1",
//!   "issuer": "<key id: base64url of the first 9 bytes of SHA-256 of the public key>",
//!   "payload": "<base64url of the licence's JSON>",
//!   "signature": "<base64url of Ed25519 over \"micro-licence-1\\n\" followed by the payload's JSON>",
//!   "licence": { …a readable copy of the payload, which must match it… }
//! }
//! ```
//!
//! The signature covers the payload's exact bytes, so no canonical JSON is needed; the
//! readable copy is there for people and is checked against the payload, so editing it
//! is caught like editing the payload.
//!
//! The source is open: this is a commercial agreement an honest binary enforces, not DRM.
//!
//! ```
//! use micro_core::licence::{self, Licence, State};
//!
//! let (private, public) = licence::generate_key().unwrap();
//! let now = 1_800_000_000;
//! let lic = Licence::new("acme", "ops@acme.example", &["team"], now, now + 365 * 86_400);
//! let text = licence::issue(&private, &lic).unwrap();
//! let verified = licence::verify(&text, &[public], now).unwrap();
//! assert_eq!(verified.state, State::Valid);
//! assert!(verified.licence.includes("team"));
//! ```

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, RwLock};

use crate::{Code, Status};

/// The vendor's public key (base64 of the raw 32-byte Ed25519 key), trusted by every
/// binary. The vendor keeps the private key; it is not in this repository.
pub const VENDOR_PUBLIC_KEY: &str = "u36dKRUOtHRZ16YjzoQDKuI2FjYg2qhRllxcFeLhfko=";

/// The environment variable listing more trusted issuer keys (comma-separated base64).
pub const KEYS_ENV: &str = "MICRO_LICENSE_KEYS";

/// The environment variable naming the licence file (instead of `<data_dir>/license`).
pub const FILE_ENV: &str = "MICRO_LICENSE";

/// The file format's name, also the context the signature is made in.
pub const FORMAT: &str = "micro-licence-1";

/// The paid features a licence may unlock.
pub const FEATURES: [&str; 5] = ["team", "billing", "multi-node", "marketplace", "sso"];

/// The grace period after expiry, in days, unless a licence says otherwise.
pub const DEFAULT_GRACE_DAYS: u32 = 14;

/// How far ahead of the verifier's clock a licence's issue time may be (clock skew).
const SKEW_SECS: u64 = 600;

const DAY: u64 = 86_400;

/// What a licence grants.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Licence {
    /// The licence's id (random, for support and revocation lists).
    pub id: String,
    /// Who it is for.
    pub customer: String,
    /// Whom to contact about it.
    pub email: String,
    /// Accounts it covers (0: not limited).
    #[serde(default)]
    pub seats: u32,
    /// Nodes it covers (0: not limited).
    #[serde(default)]
    pub nodes: u32,
    /// The paid features it unlocks.
    pub features: Vec<String>,
    /// When it was issued (Unix seconds).
    pub issued: u64,
    /// When it expires (Unix seconds); it keeps working for `grace_days` more.
    pub expires: u64,
    /// Days it keeps working after it expires.
    #[serde(default = "default_grace")]
    pub grace_days: u32,
}

fn default_grace() -> u32 {
    DEFAULT_GRACE_DAYS
}

impl Licence {
    /// A licence with a random id, no seat or node limit and the default grace.
    pub fn new(customer: &str, email: &str, features: &[&str], issued: u64, expires: u64) -> Licence {
        let mut id = [0u8; 12];
        // A licence id need not be secret, only unique; fall back to the time.
        let id = match ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut id) {
            Ok(()) => URL_SAFE_NO_PAD.encode(id),
            Err(_) => format!("lic-{issued}"),
        };
        Licence {
            id,
            customer: customer.to_string(),
            email: email.to_string(),
            seats: 0,
            nodes: 0,
            features: features.iter().map(|f| f.to_string()).collect(),
            issued,
            expires,
            grace_days: DEFAULT_GRACE_DAYS,
        }
    }

    /// Whether it unlocks `feature`.
    pub fn includes(&self, feature: &str) -> bool {
        self.features.iter().any(|f| f == feature)
    }

    /// When its grace ends (Unix seconds): it stops working then.
    pub fn grace_ends(&self) -> u64 {
        self.expires.saturating_add(u64::from(self.grace_days) * DAY)
    }

    /// Its state at `now` (Unix seconds), judged by its dates alone.
    pub fn state_at(&self, now: u64) -> Result<State, LicenceError> {
        if now.saturating_add(SKEW_SECS) < self.issued {
            return Err(LicenceError::NotYetValid { issued: self.issued });
        }
        if now < self.expires {
            return Ok(State::Valid);
        }
        let end = self.grace_ends();
        if now < end {
            return Ok(State::InGrace { days_left: (end - now).div_ceil(DAY) as u32 });
        }
        Err(LicenceError::Expired { expires: self.expires, grace_ended: end })
    }

    fn check_fields(&self) -> Result<(), LicenceError> {
        let bad = |m: &str| Err(LicenceError::Malformed(m.to_string()));
        if self.id.is_empty() || self.customer.trim().is_empty() {
            return bad("the licence has no id or customer");
        }
        if self.expires <= self.issued {
            return bad("the licence expires before it is issued");
        }
        if let Some(f) = self.features.iter().find(|f| !valid_feature(f)) {
            return Err(LicenceError::Malformed(format!(
                "feature {f:?} is not a name (lowercase letters, digits and dashes)"
            )));
        }
        Ok(())
    }
}

/// Whether `f` is a feature's name: lowercase letters, digits and dashes.
pub fn valid_feature(f: &str) -> bool {
    !f.is_empty() && f.len() <= 64 && f.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Where a verified licence stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum State {
    /// Before its expiry.
    Valid,
    /// Expired, but within its grace period.
    InGrace {
        /// Days until it stops working (rounded up).
        days_left: u32,
    },
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            State::Valid => f.write_str("valid"),
            State::InGrace { days_left } => write!(f, "expired, in grace ({days_left} days left)"),
        }
    }
}

/// A licence whose signature and dates were checked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verified {
    /// What it grants.
    pub licence: Licence,
    /// Where it stood when it was verified.
    pub state: State,
    /// The key id of the issuer that signed it.
    pub issuer: String,
}

/// Why a licence was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LicenceError {
    /// The text is not a licence file.
    #[error("not a licence file: {0}")]
    Malformed(String),
    /// The signature does not match: altered, or signed with another key claiming the id.
    #[error("the licence's signature does not match: it was signed by another issuer or altered")]
    BadSignature,
    /// Signed by a key this binary does not trust.
    #[error(
        "the licence's issuer {0:?} is not trusted: it is not the vendor's, nor a key listed in MICRO_LICENSE_KEYS"
    )]
    UnknownIssuer(String),
    /// Past its expiry and its grace.
    #[error("the licence expired on {} and its grace period ended on {}", date(*expires), date(*grace_ended))]
    Expired {
        /// When it expired (Unix seconds).
        expires: u64,
        /// When its grace ended (Unix seconds).
        grace_ended: u64,
    },
    /// Issued after now (a clock or the licence is wrong).
    #[error("the licence is not valid yet: it is issued from {}", date(*issued))]
    NotYetValid {
        /// When it starts (Unix seconds).
        issued: u64,
    },
    /// A key is not a key.
    #[error("bad key: {0}")]
    Key(String),
}

/// `secs` (Unix) as `YYYY-MM-DD` (UTC).
pub fn date(secs: u64) -> String {
    let (y, m, d) = crate::time::civil((secs / DAY) as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

/// The start (Unix seconds, UTC) of a `YYYY-MM-DD` date.
pub fn parse_date(s: &str) -> Option<u64> {
    let mut parts = s.trim().splitn(3, '-');
    let y: i64 = parts.next()?.parse().ok()?;
    let m: u32 = parts.next()?.parse().ok()?;
    let d: u32 = parts.next()?.parse().ok()?;
    if !(1970..=9999).contains(&y) || !(1..=12).contains(&m) || d == 0 {
        return None;
    }
    let days = crate::time::days_from_civil(y, m, d);
    // Reject days past the month's end (2027-02-30).
    (crate::time::civil(days) == (y, m, d)).then_some(days as u64 * DAY)
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    format: String,
    issuer: String,
    payload: String,
    signature: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    licence: Option<serde_json::Value>,
}

/// A new issuer key: (the private key, PKCS#8 in base64; the public key, base64).
pub fn generate_key() -> Result<(String, String), LicenceError> {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| LicenceError::Key("no randomness".into()))?;
    let pair =
        Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|_| LicenceError::Key("generated a bad key".into()))?;
    Ok((STANDARD.encode(pkcs8.as_ref()), STANDARD.encode(pair.public_key().as_ref())))
}

/// The public key (base64) of a private key (PKCS#8, base64).
pub fn public_key(private: &str) -> Result<String, LicenceError> {
    Ok(STANDARD.encode(key_pair(private)?.public_key().as_ref()))
}

fn key_pair(private: &str) -> Result<Ed25519KeyPair, LicenceError> {
    let der = STANDARD.decode(private.trim()).map_err(|_| {
        LicenceError::Key("the private key is not base64 (give the file `micro license keygen` wrote)".into())
    })?;
    Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der)
        .map_err(|_| LicenceError::Key("the private key is not an Ed25519 PKCS#8 key".into()))
}

fn decode_public(public: &str) -> Result<[u8; 32], LicenceError> {
    let bytes = STANDARD
        .decode(public.trim())
        .or_else(|_| URL_SAFE_NO_PAD.decode(public.trim()))
        .map_err(|_| LicenceError::Key(format!("the public key {public:?} is not base64")))?;
    bytes.try_into().map_err(|_| LicenceError::Key(format!("the public key {public:?} is not 32 bytes")))
}

/// The id of a public key (base64): base64url of the first 9 bytes of its SHA-256.
pub fn key_id(public: &str) -> Result<String, LicenceError> {
    Ok(id_of(&decode_public(public)?))
}

fn id_of(raw: &[u8; 32]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, raw);
    URL_SAFE_NO_PAD.encode(&digest.as_ref()[..9])
}

fn signed_bytes(payload: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(FORMAT.len() + 1 + payload.len());
    msg.extend_from_slice(FORMAT.as_bytes());
    msg.push(b'\n');
    msg.extend_from_slice(payload);
    msg
}

/// Signs `licence` with `private` (PKCS#8, base64): the text of a licence file.
pub fn issue(private: &str, licence: &Licence) -> Result<String, LicenceError> {
    licence.check_fields()?;
    let pair = key_pair(private)?;
    let raw: [u8; 32] =
        pair.public_key().as_ref().try_into().map_err(|_| LicenceError::Key("not an Ed25519 key".into()))?;
    let payload = serde_json::to_vec(licence).map_err(|e| LicenceError::Malformed(e.to_string()))?;
    let signature = pair.sign(&signed_bytes(&payload));
    let file = File {
        format: FORMAT.to_string(),
        issuer: id_of(&raw),
        payload: URL_SAFE_NO_PAD.encode(&payload),
        signature: URL_SAFE_NO_PAD.encode(signature.as_ref()),
        licence: serde_json::to_value(licence).ok(),
    };
    let mut text = serde_json::to_string_pretty(&file).map_err(|e| LicenceError::Malformed(e.to_string()))?;
    text.push('\n');
    Ok(text)
}

/// Checks a licence file's text against the `trusted` public keys (base64) and its dates
/// at `now` (Unix seconds).
pub fn verify(text: &str, trusted: &[String], now: u64) -> Result<Verified, LicenceError> {
    let file: File = serde_json::from_str(text.trim()).map_err(|e| LicenceError::Malformed(e.to_string()))?;
    if file.format != FORMAT {
        return Err(LicenceError::Malformed(format!("format {:?}, expected {FORMAT:?}", file.format)));
    }
    let payload = URL_SAFE_NO_PAD
        .decode(file.payload.trim())
        .map_err(|_| LicenceError::Malformed("the payload is not base64url".into()))?;
    let signature = URL_SAFE_NO_PAD.decode(file.signature.trim()).map_err(|_| LicenceError::BadSignature)?;
    // A key that does not parse is the operator's mistake, reported where it is read
    // (see `trusted_keys`); here it cannot match.
    let key = trusted
        .iter()
        .filter_map(|k| decode_public(k).ok())
        .find(|k| id_of(k) == file.issuer)
        .ok_or_else(|| LicenceError::UnknownIssuer(file.issuer.clone()))?;
    UnparsedPublicKey::new(&ED25519, key)
        .verify(&signed_bytes(&payload), &signature)
        .map_err(|_| LicenceError::BadSignature)?;
    let licence: Licence = serde_json::from_slice(&payload)
        .map_err(|e| LicenceError::Malformed(format!("the signed licence does not read: {e}")))?;
    if let Some(copy) = &file.licence
        && serde_json::from_value::<Licence>(copy.clone()).ok().as_ref() != Some(&licence)
    {
        // The signature holds, so the readable copy was edited.
        return Err(LicenceError::BadSignature);
    }
    licence.check_fields()?;
    let state = licence.state_at(now)?;
    Ok(Verified { licence, state, issuer: file.issuer })
}

/// Reads and verifies the licence file at `path` (none: there is no such file).
pub fn load(path: &std::path::Path, trusted: &[String], now: u64) -> Result<Option<Verified>, LicenceError> {
    match std::fs::read_to_string(path) {
        Ok(text) => verify(&text, trusted, now).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(LicenceError::Malformed(format!("cannot read {}: {e}", path.display()))),
    }
}

/// The keys a binary trusts: the vendor's and those of `MICRO_LICENSE_KEYS` (`extra`,
/// comma-separated base64). A listed key that is not a key is an error.
pub fn trusted_keys(extra: Option<&str>) -> Result<Vec<String>, LicenceError> {
    let mut keys = vec![VENDOR_PUBLIC_KEY.to_string()];
    for k in extra.unwrap_or_default().split(',').map(str::trim).filter(|k| !k.is_empty()) {
        decode_public(k).map_err(|e| LicenceError::Key(format!("{KEYS_ENV}: {e}")))?;
        keys.push(k.to_string());
    }
    Ok(keys)
}

/// The current Unix time in seconds.
pub fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// How a paid feature is named to people.
fn describe(feature: &str) -> String {
    match feature {
        "team" => "the team plan".into(),
        "billing" => "billing".into(),
        "multi-node" => "running more than one node".into(),
        "marketplace" => "the marketplace".into(),
        "sso" => "single sign-on".into(),
        other => format!("the {other:?} feature"),
    }
}

#[derive(Debug)]
enum Mode {
    Open,
    Governed(Option<Verified>),
}

/// What the installed licence allows: a cheap handle the server and its products share,
/// which installing a licence updates for all of them at once.
///
/// A refusal is `FailedPrecondition`: the caller may be entitled to the action; this
/// installation is not in a state that allows it until an operator installs a licence
/// (`PermissionDenied` would tell the caller their own rights are lacking).
#[derive(Clone, Debug)]
pub struct Gate {
    mode: Arc<RwLock<Mode>>,
}

impl Default for Gate {
    /// Unlicensed: paid features are refused.
    fn default() -> Gate {
        Gate::unlicensed()
    }
}

impl Gate {
    /// Everything allowed, for tests of products and builds that are not the platform.
    pub fn open() -> Gate {
        Gate { mode: Arc::new(RwLock::new(Mode::Open)) }
    }

    /// Governed by a licence, none installed yet: paid features are refused.
    pub fn unlicensed() -> Gate {
        Gate { mode: Arc::new(RwLock::new(Mode::Governed(None))) }
    }

    /// Governed by `verified`.
    pub fn licensed(verified: Verified) -> Gate {
        Gate { mode: Arc::new(RwLock::new(Mode::Governed(Some(verified)))) }
    }

    /// Installs `verified` (none: removes the licence), for every holder of this gate.
    /// An open gate stays open.
    pub fn set(&self, verified: Option<Verified>) {
        let mut mode = self.mode.write().unwrap_or_else(|e| e.into_inner());
        if let Mode::Governed(current) = &mut *mode {
            *current = verified;
        }
    }

    /// Whether everything is allowed regardless of licence.
    pub fn is_open(&self) -> bool {
        matches!(*self.mode.read().unwrap_or_else(|e| e.into_inner()), Mode::Open)
    }

    /// The installed licence, with its state as of now (none: unlicensed or open).
    pub fn state(&self) -> Option<Verified> {
        self.state_at(now())
    }

    /// The installed licence with its state at `now`; none if it lapsed since.
    pub fn state_at(&self, now: u64) -> Option<Verified> {
        match &*self.mode.read().unwrap_or_else(|e| e.into_inner()) {
            Mode::Governed(Some(v)) => v.licence.state_at(now).ok().map(|state| Verified { state, ..v.clone() }),
            _ => None,
        }
    }

    /// Allows `feature`, or refuses it with what to do.
    pub fn check(&self, feature: &str) -> Result<(), Status> {
        self.check_at(feature, now())
    }

    /// [`Gate::check`] at `now` (Unix seconds).
    pub fn check_at(&self, feature: &str, now: u64) -> Result<(), Status> {
        let what = describe(feature);
        let install = format!("install a licence that includes {feature:?} (micro license install FILE)");
        let detail = match &*self.mode.read().unwrap_or_else(|e| e.into_inner()) {
            Mode::Open => return Ok(()),
            Mode::Governed(None) => format!("{what} is a paid feature of the self-hosted platform: {install}"),
            Mode::Governed(Some(v)) => match v.licence.state_at(now) {
                Ok(_) if v.licence.includes(feature) => return Ok(()),
                Ok(_) => format!(
                    "{what} is a paid feature of the self-hosted platform and the installed licence ({}) does not include it: {install}",
                    v.licence.id
                ),
                Err(e) => format!("{what} is a paid feature of the self-hosted platform and {e}: {install}"),
            },
        };
        Err(Status::new(Code::FailedPrecondition, "license", detail))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn keys() -> (String, String) {
        generate_key().unwrap()
    }

    fn lic(features: &[&str], issued: u64, expires: u64) -> Licence {
        Licence::new("Acme", "ops@acme.example", features, issued, expires)
    }

    fn file(text: &str) -> serde_json::Value {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn valid_round_trip() {
        let (private, public) = keys();
        let l = lic(&["team", "billing"], NOW - 10, NOW + 30 * DAY);
        let text = issue(&private, &l).unwrap();
        let v = verify(&text, std::slice::from_ref(&public), NOW).unwrap();
        assert_eq!(v.licence, l);
        assert_eq!(v.state, State::Valid);
        assert_eq!(v.issuer, key_id(&public).unwrap());
        assert_eq!(public_key(&private).unwrap(), public);
    }

    #[test]
    fn tampered_payload() {
        let (private, public) = keys();
        let text = issue(&private, &lic(&["team"], NOW, NOW + DAY)).unwrap();
        let mut f = file(&text);
        let mut other = lic(&["team", "billing"], NOW, NOW + 3650 * DAY);
        other.id = f["licence"]["id"].as_str().unwrap().to_string();
        f["payload"] = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&other).unwrap()).into();
        let err = verify(&f.to_string(), std::slice::from_ref(&public), NOW).unwrap_err();
        assert_eq!(err, LicenceError::BadSignature);
        assert!(err.to_string().contains("signed by another issuer or altered"), "{err}");

        // Editing the readable copy is caught too.
        let mut f = file(&text);
        f["licence"]["features"] = serde_json::json!(["team", "billing"]);
        assert_eq!(verify(&f.to_string(), &[public], NOW).unwrap_err(), LicenceError::BadSignature);
    }

    #[test]
    fn tampered_signature() {
        let (private, public) = keys();
        let text = issue(&private, &lic(&["team"], NOW, NOW + DAY)).unwrap();
        let mut f = file(&text);
        let mut sig = URL_SAFE_NO_PAD.decode(f["signature"].as_str().unwrap()).unwrap();
        sig[5] ^= 1;
        f["signature"] = URL_SAFE_NO_PAD.encode(sig).into();
        assert_eq!(verify(&f.to_string(), std::slice::from_ref(&public), NOW).unwrap_err(), LicenceError::BadSignature);
        f["signature"] = "!!".into();
        assert_eq!(verify(&f.to_string(), &[public], NOW).unwrap_err(), LicenceError::BadSignature);
    }

    #[test]
    fn wrong_issuer() {
        let (private, _) = keys();
        let (_, trusted) = keys();
        let text = issue(&private, &lic(&["team"], NOW, NOW + DAY)).unwrap();
        let err = verify(&text, std::slice::from_ref(&trusted), NOW).unwrap_err();
        assert!(matches!(err, LicenceError::UnknownIssuer(_)), "{err}");
        assert!(err.to_string().contains("not trusted"), "{err}");

        // Another key claiming a trusted key's id fails its signature.
        let mut f = file(&text);
        f["issuer"] = key_id(&trusted).unwrap().into();
        assert_eq!(verify(&f.to_string(), &[trusted], NOW).unwrap_err(), LicenceError::BadSignature);
    }

    #[test]
    fn expiry_and_grace() {
        let (private, public) = keys();
        let expires = NOW - 3 * DAY;
        let text = issue(&private, &lic(&["team"], NOW - 100 * DAY, expires)).unwrap();
        let v = verify(&text, std::slice::from_ref(&public), NOW).unwrap();
        assert_eq!(v.state, State::InGrace { days_left: 11 });
        assert!(v.state.to_string().contains("11 days left"));

        let err = verify(&text, std::slice::from_ref(&public), expires + 14 * DAY).unwrap_err();
        assert_eq!(err, LicenceError::Expired { expires, grace_ended: expires + 14 * DAY });
        assert!(err.to_string().contains(&format!("expired on {}", date(expires))), "{err}");

        let mut no_grace = lic(&["team"], NOW - 100 * DAY, expires);
        no_grace.grace_days = 0;
        let text = issue(&private, &no_grace).unwrap();
        assert!(matches!(verify(&text, &[public], NOW).unwrap_err(), LicenceError::Expired { .. }));
    }

    #[test]
    fn not_yet_valid() {
        let (private, public) = keys();
        let text = issue(&private, &lic(&["team"], NOW + 2 * DAY, NOW + 30 * DAY)).unwrap();
        let err = verify(&text, std::slice::from_ref(&public), NOW).unwrap_err();
        assert_eq!(err, LicenceError::NotYetValid { issued: NOW + 2 * DAY });
        assert!(err.to_string().contains("not valid yet"));
        // A few minutes of clock skew are fine.
        let text = issue(&private, &lic(&["team"], NOW + 60, NOW + 30 * DAY)).unwrap();
        assert!(verify(&text, &[public], NOW).is_ok());
    }

    #[test]
    fn malformed() {
        let (private, public) = keys();
        let trusted = [public];
        for text in ["", "hello", "{}", "[1]", r#"{"format":"x","issuer":"a","payload":"b","signature":"c"}"#] {
            let err = verify(text, &trusted, NOW).unwrap_err();
            assert!(matches!(err, LicenceError::Malformed(_)), "{text}: {err}");
            assert!(err.to_string().starts_with("not a licence file"), "{err}");
        }
        assert!(issue(&private, &lic(&["Team!"], NOW, NOW + DAY)).is_err());
        assert!(issue(&private, &lic(&["team"], NOW, NOW)).is_err());
        assert!(matches!(issue("not a key", &lic(&["team"], NOW, NOW + DAY)), Err(LicenceError::Key(_))));
    }

    #[test]
    fn trusted_key_list() {
        let (_, public) = keys();
        let list = trusted_keys(Some(&format!(" {public} ,"))).unwrap();
        assert_eq!(list, vec![VENDOR_PUBLIC_KEY.to_string(), public]);
        assert!(trusted_keys(Some("nope")).is_err());
        assert_eq!(trusted_keys(None).unwrap().len(), 1);
        key_id(VENDOR_PUBLIC_KEY).expect("the vendor's key is a key");
    }

    #[test]
    fn dates() {
        assert_eq!(parse_date("2027-12-31"), Some(1_830_211_200));
        assert_eq!(date(1_830_211_200), "2027-12-31");
        assert_eq!(parse_date("2027-02-30"), None);
        assert_eq!(parse_date("31/12/2027"), None);
    }

    #[test]
    fn gates() {
        assert!(Gate::open().check("team").is_ok());
        let gate = Gate::unlicensed();
        let err = gate.check("team").unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition);
        assert_eq!(
            err.detail(),
            "the team plan is a paid feature of the self-hosted platform: install a licence that includes \"team\" (micro license install FILE)"
        );
        let l = lic(&["team"], NOW - DAY, NOW + DAY);
        let shared = gate.clone();
        gate.set(Some(Verified { licence: l.clone(), state: State::Valid, issuer: "x".into() }));
        assert!(shared.check_at("team", NOW).is_ok());
        assert!(shared.check_at("billing", NOW).unwrap_err().detail().contains("does not include"));
        assert_eq!(shared.state_at(NOW + 2 * DAY).unwrap().state, State::InGrace { days_left: 13 });
        let err = shared.check_at("team", NOW + 20 * DAY).unwrap_err();
        assert!(err.detail().contains("expired on"), "{}", err.detail());
        assert!(shared.state_at(NOW + 20 * DAY).is_none());
    }
}
