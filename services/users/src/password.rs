//! Passwords: a namespace's policy, and argon2id hashes computed off the async threads,
//! a few at a time (each takes 19 MiB and tens of milliseconds, so a flood of logins
//! waits its turn instead of exhausting the node's memory).

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use micro::Status;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, LazyLock};
use tokio::sync::Semaphore;

/// The longest password, in bytes: hashing is bounded whatever is sent.
pub const MAX_LEN: usize = 256;

/// Passwords so common that a policy forbidding common ones refuses them (lowercased
/// before the comparison; those shorter than a policy's minimum are refused anyway).
const COMMON: &[&str] = &[
    "password",
    "password1",
    "password12",
    "password123",
    "password1234",
    "passw0rd",
    "p@ssw0rd",
    "p@ssword",
    "12345678",
    "123456789",
    "1234567890",
    "123123123",
    "12341234",
    "11111111",
    "00000000",
    "87654321",
    "qwertyuiop",
    "qwerty123",
    "qwerty12",
    "qwertyui",
    "1q2w3e4r",
    "1q2w3e4r5t",
    "1qaz2wsx",
    "zaq12wsx",
    "asdfghjkl",
    "asdfasdf",
    "zxcvbnm1",
    "iloveyou",
    "iloveyou1",
    "sunshine",
    "princess",
    "football",
    "baseball",
    "welcome1",
    "welcome123",
    "letmein1",
    "letmein123",
    "trustno1",
    "superman",
    "starwars",
    "dragon123",
    "monkey123",
    "master123",
    "shadow123",
    "michael1",
    "jennifer",
    "computer",
    "whatever",
    "freedom1",
    "abcd1234",
    "abc12345",
    "abcdefgh",
    "aa123456",
    "changeme",
    "changeme1",
    "secret123",
    "admin123",
    "administrator",
    "root1234",
    "default1",
    "passport",
    "internet",
    "access14",
    "mustang1",
];

/// What a namespace asks of its users' passwords.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    /// The fewest characters, 6 to 128 (default 8).
    pub min_length: u32,
    /// How many kinds of character among lowercase, uppercase, digits and others a
    /// password mixes, 1 to 4 (default 1).
    pub classes: u32,
    /// Whether the most common passwords (and the user's own email address) are refused
    /// (default true).
    pub forbid_common: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Policy { min_length: 8, classes: 1, forbid_common: true }
    }
}

impl Policy {
    /// Checks the policy itself.
    pub fn validate(&self) -> Result<(), String> {
        if !(6..=128).contains(&self.min_length) {
            return Err("password.min_length must be 6 to 128".into());
        }
        if !(1..=4).contains(&self.classes) {
            return Err("password.classes must be 1 to 4".into());
        }
        Ok(())
    }

    /// Why `password` (of the user with `email`) is refused, if it is.
    pub fn refuse(&self, password: &str, email: &str) -> Option<String> {
        let n = password.chars().count();
        if n < self.min_length as usize {
            return Some(format!("the password is too short: use at least {} characters", self.min_length));
        }
        if password.len() > MAX_LEN {
            return Some(format!("the password is too long: at most {MAX_LEN} bytes"));
        }
        if password.chars().any(char::is_control) {
            return Some("the password has control characters".into());
        }
        let kinds = [
            password.chars().any(|c| c.is_lowercase()),
            password.chars().any(|c| c.is_uppercase()),
            password.chars().any(|c| c.is_ascii_digit()),
            password.chars().any(|c| !c.is_alphanumeric()),
        ]
        .iter()
        .filter(|k| **k)
        .count();
        if kinds < self.classes as usize {
            return Some(format!(
                "the password must mix {} kinds of character (lowercase, uppercase, digits, others)",
                self.classes
            ));
        }
        if self.forbid_common {
            let lower = password.to_lowercase();
            let local = email.split('@').next().unwrap_or("").to_lowercase();
            let repeated = password.chars().all(|c| password.starts_with(c));
            if COMMON.contains(&lower.as_str())
                || lower == email.to_lowercase()
                || (!local.is_empty() && lower == local)
            {
                return Some("the password is too common (or is your email address): choose another".into());
            }
            if repeated {
                return Some("the password is one character repeated: choose another".into());
            }
        }
        None
    }
}

/// How many hashes are computed at once on a node.
static HASHING: LazyLock<Arc<Semaphore>> = LazyLock::new(|| {
    let n = std::thread::available_parallelism().map_or(2, |n| n.get());
    Arc::new(Semaphore::new(n))
});

fn argon2() -> Argon2<'static> {
    // OWASP's argon2id: 19 MiB, 2 passes, 1 lane (the crate's defaults, stated here).
    let params = Params::new(19 * 1024, 2, 1, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Status> {
    let _permit = HASHING.clone().acquire_owned().await.map_err(|_| Status::internal(crate::NAME, "closed"))?;
    tokio::task::spawn_blocking(f).await.map_err(|e| Status::internal(crate::NAME, format!("hashing failed: {e}")))
}

/// The argon2id hash of `password` (a PHC string).
pub async fn hash(password: &str) -> Result<String, Status> {
    let password = password.to_string();
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| Status::internal(crate::NAME, format!("no randomness: {e}")))?;
    blocking(move || {
        let salt = SaltString::encode_b64(&salt).map_err(|e| Status::internal(crate::NAME, e.to_string()))?;
        argon2()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| Status::internal(crate::NAME, format!("hashing failed: {e}")))
    })
    .await?
}

/// A hash of a password nobody has: checked against when there is no user, so a login
/// for an unknown address takes as long as one for a known address.
static DECOY: LazyLock<Option<String>> = LazyLock::new(|| {
    let salt = SaltString::encode_b64(b"micro-users-decoy").ok()?;
    argon2().hash_password(b"decoy password of nobody", &salt).ok().map(|h| h.to_string())
});

/// Whether `password` matches `hash` (with `None`, the decoy's: false, after as long).
pub async fn verify(password: &str, hash: Option<&str>) -> Result<bool, Status> {
    let password = password.to_string();
    let hash = hash.map(str::to_string);
    blocking(move || {
        let stored = hash.as_deref().or(DECOY.as_deref()).unwrap_or_default();
        let known = hash.is_some();
        match PasswordHash::new(stored) {
            Ok(parsed) => known && argon2().verify_password(password.as_bytes(), &parsed).is_ok(),
            Err(_) => false,
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_refuses_weak_passwords() {
        let p = Policy::default();
        assert!(p.refuse("short", "a@b.c").unwrap().contains("too short"));
        assert!(p.refuse("password123", "a@b.c").unwrap().contains("too common"));
        assert!(p.refuse("PassWord123", "a@b.c").unwrap().contains("too common"));
        assert!(p.refuse("aaaaaaaaaaaa", "a@b.c").unwrap().contains("repeated"));
        assert!(p.refuse("alice@example.com", "alice@example.com").unwrap().contains("email"));
        assert!(p.refuse("alicealice", "alicealice@example.com").unwrap().contains("email"));
        assert!(p.refuse(&"x".repeat(300), "a@b.c").unwrap().contains("too long"));
        assert!(p.refuse("tab\there-ok", "a@b.c").unwrap().contains("control"));
        assert_eq!(p.refuse("correct horse battery", "a@b.c"), None);
        let strict = Policy { min_length: 10, classes: 3, forbid_common: false };
        assert!(strict.refuse("alllowercase", "a@b.c").unwrap().contains("3 kinds"));
        assert_eq!(strict.refuse("Mixed-case-1", "a@b.c"), None);
        assert!(Policy { min_length: 5, ..Policy::default() }.validate().is_err());
        assert!(Policy { classes: 0, ..Policy::default() }.validate().is_err());
    }

    #[tokio::test]
    async fn hashes_verify_and_the_decoy_never_does() {
        let h = hash("correct horse battery").await.unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(verify("correct horse battery", Some(&h)).await.unwrap());
        assert!(!verify("wrong horse battery", Some(&h)).await.unwrap());
        assert!(!verify("decoy password of nobody", None).await.unwrap());
        assert!(!verify("x", Some("not a hash")).await.unwrap());
    }
}
