//! Config: one JSON document per namespace, addressed by dot paths
//! (`helloworld.db.url`). Getting a parent returns its subtree; setting an object merges
//! it; secrets are encrypted at rest and read back as `"[secret]"` unless asked for.
//! [`doc`] is the half of a backend that does not depend on its storage.

pub mod doc;

use crate::{BoxStream, Status};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What a secret reads as without the secret option.
pub const MASK: &str = "[secret]";
/// The largest value (serialised JSON), in bytes.
pub const MAX_VALUE: usize = 1024 * 1024;

/// One change, as seen by a watcher.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// The path that was set or deleted.
    pub path: String,
    /// The watched subtree after the change (`null` when gone), secrets masked.
    pub value: Value,
}

/// The config interface.
#[async_trait::async_trait]
pub trait Config: Send + Sync + 'static {
    /// The value at `path` (`""` is the whole document); `None` when absent. Secrets
    /// read as [`MASK`] unless `secrets` is true.
    async fn get(&self, namespace: &str, path: &str, secrets: bool) -> Result<Option<Value>, Status>;
    /// Sets `path`: an object merges into an existing object, anything else replaces.
    /// With `secret`, the value is encrypted at rest.
    async fn set(&self, namespace: &str, path: &str, value: &Value, secret: bool) -> Result<(), Status>;
    /// Deletes a leaf or a subtree; `NotFound` when absent.
    async fn delete(&self, namespace: &str, path: &str) -> Result<(), Status>;
    /// Changes under `path` (`""`: any), starting with the current value.
    async fn watch(&self, namespace: &str, path: &str) -> Result<BoxStream<Result<Change, Status>>, Status>;
}

/// Turns any text (an account id, a host name) into one path segment, reversibly:
/// letters, digits and `-` stay, every other byte becomes `_` and two hex digits.
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("_{b:02x}"));
        }
    }
    if out.is_empty() { "_".into() } else { out }
}

/// Splits a dot path into its segments; `""` is the root. Segments are 1–128 characters
/// of `a-z A-Z 0-9 _ -`.
pub fn parse_path(path: &str) -> Result<Vec<&str>, Status> {
    if path.is_empty() {
        return Ok(Vec::new());
    }
    let segs: Vec<&str> = path.split('.').collect();
    let ok = path.len() <= 1024
        && segs.iter().all(|s| {
            !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b))
        });
    if ok {
        Ok(segs)
    } else {
        Err(Status::bad_request("config", format!("malformed path {path:?}: use dot-separated names like app.db.url")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_encode() {
        assert_eq!(encode_segment("a.b_c@d"), "a_2eb_5fc_40d");
        assert!(parse_path(&format!("x.{}", encode_segment("alice@example.com"))).is_ok());
    }
}
