//! Signed access tokens: Ed25519 JWTs that every service verifies locally, without a call.
//!
//! The server's auth service signs [`Claims`] into tokens whose header names the key
//! (`kid`); it holds the private keys (in `micro-server`, the only place they are). A
//! [`Verifier`] is a snapshot of the trusted public keys — built from the [`PublicKeys`]
//! document services fetch once — that checks signature, algorithm, issuer and expiry.
//! Neither tokens nor keys are ever put in an error or a log line.
//!
//! ```
//! use micro::auth::token::{PublicKeys, Verifier};
//!
//! let keys: PublicKeys = serde_json::from_str(r#"{"keys":[]}"#).unwrap();
//! let verifier = Verifier::new(&keys)?;
//! // Nothing is trusted, so nothing verifies.
//! assert!(verifier.verify("a.b.c").is_err());
//! # Ok::<(), micro::Status>(())
//! ```

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::VerifyingKey;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use micro_core::{Code, Status};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// The issuer (`iss`) of every token but app users'.
pub const ISSUER: &str = "micro";

/// The issuer of app users' tokens (type `app`): a verifier that predates app users
/// refuses them instead of taking them for team members' tokens.
pub const APP_ISSUER: &str = "micro/app";

/// How far past `exp` a token is still accepted, for clock skew between machines (seconds).
pub const LEEWAY: u64 = 30;

/// Longer tokens are refused before any parsing.
const MAX_TOKEN_LEN: usize = 8 * 1024;

/// The status id of every error of this module.
const ID: &str = "auth";

/// The current time in unix seconds.
pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl Claims {
    /// The account the claims stand for.
    pub fn account(&self) -> micro_core::auth::Account {
        micro_core::auth::Account {
            id: self.sub.clone(),
            name: self.name.clone(),
            kind: micro_core::auth::AccountType::from_name(&self.typ),
            namespace: self.ns.clone(),
            scopes: self.scopes.clone(),
            verified: self.verified,
            ..Default::default()
        }
    }
}

/// Claims of an access token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Account id.
    pub sub: String,
    /// Account name.
    pub name: String,
    /// Account namespace.
    pub ns: String,
    /// Account type: `"user"`, `"service"` or `"app"` (an app user).
    pub typ: String,
    /// Scopes of the account.
    pub scopes: Vec<String>,
    /// Issued at, unix seconds.
    pub iat: u64,
    /// Expires at, unix seconds.
    pub exp: u64,
    /// Issuer: [`ISSUER`], or [`APP_ISSUER`] for an app user's.
    pub iss: String,
    /// Audience: set on a token delegated to one service (`<namespace>/<service>`),
    /// which only that service accepts ([`Verifier::verify_for`]); absent on an
    /// account's own tokens, which every verifier accepts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    /// An app user's email address is confirmed (absent: not, or not an app user).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub verified: bool,
}

/// The trusted public keys, as services fetch them to verify tokens locally:
/// `{"keys":[{"kid":"…","x":"<base64url raw 32-byte Ed25519 public key>","not_after":<unix s or null>}]}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicKeys {
    /// The keys, the current one first.
    pub keys: Vec<PublicKey>,
}

/// One trusted public key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicKey {
    /// The key id, as in the `kid` header of the tokens it signed.
    pub kid: String,
    /// The raw 32-byte Ed25519 public key, base64url without padding.
    pub x: String,
    /// Unix seconds after which the key is no longer trusted; `None` for the current key.
    pub not_after: Option<u64>,
}

/// Key ids name files: only these characters are accepted from disk or the wire.
pub fn valid_kid(kid: &str) -> bool {
    !kid.is_empty() && kid.len() <= 64 && kid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// One trusted public key of a verifier.
#[derive(Clone)]
struct Trusted {
    key: DecodingKey,
    not_after: Option<u64>,
}

impl Trusted {
    fn new(public: &VerifyingKey, not_after: Option<u64>) -> Trusted {
        Trusted { key: DecodingKey::from_ed_der(public.as_bytes()), not_after }
    }
}

/// The header fields a verifier looks at, parsed before any key is chosen.
#[derive(Deserialize)]
struct RawHeader {
    alg: String,
    kid: Option<String>,
    crit: Option<serde_json::Value>,
}

/// Verifies tokens against a set of trusted public keys. Cheap to clone.
///
/// A snapshot: after a rotation, build a new one from the signer or fresh [`PublicKeys`].
#[derive(Clone)]
pub struct Verifier {
    keys: Arc<HashMap<String, Trusted>>,
    validation: Arc<Validation>,
    /// Tokens whose signature was checked, with their claims and key: a token seen again
    /// (a client's every request) has only its expiry and key checked again. A verifier
    /// made for new keys starts empty.
    checked: Arc<std::sync::Mutex<HashMap<String, (Claims, String)>>>,
}

/// The most tokens a verifier remembers (it forgets them all when full).
const CHECKED: usize = 1024;

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut kids: Vec<&String> = self.keys.keys().collect();
        kids.sort();
        f.debug_struct("Verifier").field("kids", &kids).finish()
    }
}

impl Verifier {
    /// A verifier trusting `keys`; refuses a malformed key (bad kid, or `x` not a base64url
    /// 32-byte Ed25519 public key).
    pub fn new(keys: &PublicKeys) -> Result<Verifier, Status> {
        let mut trusted = HashMap::with_capacity(keys.keys.len());
        for k in &keys.keys {
            let bad = |why: &str| Status::bad_request(ID, format!("public key {:?}: {why}", k.kid));
            if !valid_kid(&k.kid) {
                return Err(bad("bad key id"));
            }
            let bytes = URL_SAFE_NO_PAD.decode(k.x.trim_end_matches('=')).map_err(|_| bad("x is not base64url"))?;
            let bytes: [u8; 32] = bytes.try_into().map_err(|_| bad("x is not 32 bytes"))?;
            let public = VerifyingKey::from_bytes(&bytes).map_err(|_| bad("x is not an Ed25519 public key"))?;
            if trusted.insert(k.kid.clone(), Trusted::new(&public, k.not_after)).is_some() {
                return Err(bad("listed twice"));
            }
        }
        Ok(Verifier::from_keys(trusted))
    }

    /// A verifier trusting the given keys: `(kid, public key, not_after)` (how the signer
    /// that holds them makes one).
    pub fn trusting(keys: impl IntoIterator<Item = (String, VerifyingKey, Option<u64>)>) -> Verifier {
        Verifier::from_keys(
            keys.into_iter().map(|(kid, public, not_after)| (kid, Trusted::new(&public, not_after))).collect(),
        )
    }

    fn from_keys(keys: HashMap<String, Trusted>) -> Verifier {
        // Signature and algorithm only: expiry and issuer are checked here, against a clock
        // that tests can set.
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        validation.leeway = 0;
        Verifier { keys: Arc::new(keys), validation: Arc::new(validation), checked: Default::default() }
    }

    /// Checks signature (kid must be a trusted key; alg must be EdDSA — refuse "none" and
    /// everything else), issuer, and expiry (with at most 30 s leeway); returns the claims.
    /// Errors are Status with Code::Unauthenticated and a short detail that never contains
    /// the token.
    /// A token delegated to one service ([`Claims::aud`]) is refused here: it stands for
    /// its account only at that service ([`Verifier::verify_for`]).
    pub fn verify(&self, token: &str) -> Result<Claims, Status> {
        self.verify_at(token, now())
    }

    /// [`Verifier::verify`] for the service `audience` (`<namespace>/<service>`): accepts an
    /// account's own tokens and tokens delegated to that service, refuses tokens
    /// delegated to any other.
    pub fn verify_for(&self, token: &str, audience: &str) -> Result<Claims, Status> {
        let claims = self.check_at(token, now())?;
        match claims.aud.as_deref() {
            None => Ok(claims),
            Some(a) if a == audience => Ok(claims),
            Some(_) => Err(Status::new(Code::Unauthenticated, ID, "token delegated to another service")),
        }
    }

    /// [`Verifier::verify`] as if the time were `now` (unix seconds).
    pub fn verify_at(&self, token: &str, now: u64) -> Result<Claims, Status> {
        let claims = self.check_at(token, now)?;
        if claims.aud.is_some() {
            return Err(Status::new(Code::Unauthenticated, ID, "token delegated to a service"));
        }
        Ok(claims)
    }

    /// Signature, algorithm, issuer and expiry, whatever the audience.
    fn check_at(&self, token: &str, now: u64) -> Result<Claims, Status> {
        let deny = |detail: &str| Status::new(Code::Unauthenticated, ID, detail);
        let seen = self.checked.lock().unwrap_or_else(|e| e.into_inner()).get(token).cloned();
        if let Some((claims, kid)) = seen {
            // Its signature held; what time changes is checked again.
            let trusted = self.keys.get(&kid).ok_or_else(|| deny("token signed by an unknown key"))?;
            if trusted.not_after.is_some_and(|t| now > t) {
                return Err(deny("token signed by a retired key"));
            }
            if claims.exp.saturating_add(LEEWAY) < now {
                return Err(deny("token expired"));
            }
            return Ok(claims);
        }
        let (claims, kid) = self.check_signed_at(token, now)?;
        let mut checked = self.checked.lock().unwrap_or_else(|e| e.into_inner());
        if checked.len() >= CHECKED {
            checked.clear();
        }
        checked.insert(token.to_string(), (claims.clone(), kid));
        Ok(claims)
    }

    /// [`Verifier::check_at`] without what was remembered: the claims and the key's id.
    fn check_signed_at(&self, token: &str, now: u64) -> Result<(Claims, String), Status> {
        let deny = |detail: &str| Status::new(Code::Unauthenticated, ID, detail);
        if token.is_empty() {
            return Err(deny("missing token"));
        }
        if token.len() > MAX_TOKEN_LEN {
            return Err(deny("token too long"));
        }
        let header = token.split('.').next().unwrap_or_default();
        let header = URL_SAFE_NO_PAD.decode(header).map_err(|_| deny("malformed token"))?;
        let header: RawHeader = serde_json::from_slice(&header).map_err(|_| deny("malformed token header"))?;
        if header.alg != "EdDSA" {
            return Err(deny("token algorithm not accepted"));
        }
        if header.crit.is_some() {
            return Err(deny("token has critical header extensions"));
        }
        let kid = header.kid.ok_or_else(|| deny("token has no key id"))?;
        let trusted = self.keys.get(&kid).ok_or_else(|| deny("token signed by an unknown key"))?;
        if trusted.not_after.is_some_and(|t| now > t) {
            return Err(deny("token signed by a retired key"));
        }
        let data = jsonwebtoken::decode::<Claims>(token, &trusted.key, &self.validation).map_err(|e| {
            deny(match e.kind() {
                ErrorKind::InvalidSignature => "invalid token signature",
                ErrorKind::Json(_) => "malformed token claims",
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => "token algorithm not accepted",
                _ => "invalid token",
            })
        })?;
        let claims = data.claims;
        // An app user's token has its own issuer, and only theirs has it.
        let expected = if claims.typ == "app" { APP_ISSUER } else { ISSUER };
        if claims.iss != expected {
            return Err(deny("token from another issuer"));
        }
        if claims.exp.saturating_add(LEEWAY) < now {
            return Err(deny("token expired"));
        }
        Ok((claims, kid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_public_keys_and_tokens_refused() {
        let key =
            |kid: &str, x: &str| PublicKeys { keys: vec![PublicKey { kid: kid.into(), x: x.into(), not_after: None }] };
        let good_x = URL_SAFE_NO_PAD.encode([7u8; 32]);
        assert!(Verifier::new(&key("../etc", &good_x)).is_err(), "a kid that names a path");
        assert!(Verifier::new(&key("k1", "!!")).is_err(), "x not base64url");
        assert!(Verifier::new(&key("k1", &URL_SAFE_NO_PAD.encode([1u8; 31]))).is_err(), "x not 32 bytes");
        let v = Verifier::new(&PublicKeys { keys: vec![] }).unwrap();
        for bad in ["", "a.b.c", &"x".repeat(9000)] {
            assert_eq!(v.verify(bad).unwrap_err().code(), Code::Unauthenticated, "{bad:.20}");
        }
        assert!(valid_kid("0a1b-c_d") && !valid_kid("") && !valid_kid("a/b"));
    }
}
